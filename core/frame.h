/* frame: parsing of client -> server JSON frames (jansson) with the
 * contract's validation; one parse per received frame.
 * Owns: the parse tree of one frame until frame_free(), and the frame arena
 * the trees are built in (jansson's allocator while a frame is parsed: see
 * frame.c). Field pointers in client_frame point into the tree; nothing may
 * keep a pointer into it (or a json_t of it) past frame_free(). */
#ifndef CHATD_FRAME_H
#define CHATD_FRAME_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

typedef enum {
    FT_MESSAGE = 1, FT_TYPING, FT_HEARTBEAT, FT_JOIN, FT_LEAVE, FT_REFRESH,
    FT_READ,                                  /* read state (v2) */
    FT_EDIT, FT_DELETE, FT_REACT              /* message updates (v2) */
} frame_type;
#define FT_COUNT 10

/* the bytes of an id: 1-64 characters (util.h client_id_valid, CLIENT_ID_BYTES) */
#define FRAME_ID_MAX 256
#define FRAME_EPOCH_MAX 64
#define FRAME_ROOM_MAX 64   /* util.h CHAT_ROOM_MAX */

typedef struct client_frame {
    frame_type type;
    const char *room;  size_t room_len;   /* NULL when absent */
    const char *body;  size_t body_len;   /* message, edit: required string (may be "", no NUL) */
    const char *id;    size_t id_len;     /* message, updates: optional, 1..64 chars;
                                           * join, leave: a valid one (else ignored),
                                           * echoed by the errors answering them */
    const char *token; size_t token_len;  /* refresh: required */
    int has_since;     uint64_t since;    /* join: optional integer >= 0 */
    uint64_t seq;                         /* read: required integer >= 0 */
    const char *epoch; size_t epoch_len;  /* join: optional, 1..64 bytes (with since) */
    uint64_t target;                      /* edit, delete, react: required integer >= 1 */
    const char *emoji; size_t emoji_len;  /* react: required, emoji_valid() */
    int on;                               /* react: optional boolean, default true */
    char err_room[FRAME_ROOM_MAX + 1];    /* after an error: a join's/leave's valid
                                           * room (its error names it), else "" */
    int arena_only_;                      /* private: the whole tree is in the arena */
    void *root_;                          /* private: jansson root */
    size_t arena_mark_, arena_end_;       /* private: the tree's span in the arena */
} client_frame;

/* 0 on success. -1 on error: code gets "bad_request" (invalid JSON, not an
 * object, missing/invalid "type", missing or wrongly typed field, invalid room
 * name, id not 1-64 characters, since not a non-negative integer, epoch not a string
 * of 1-64 bytes, a body containing U+0000, a read without a non-negative
 * integer seq, target not a positive integer, emoji not one grapheme or
 * :name: of 1-32 bytes, on not a boolean) and msg a short
 * human-readable reason, e.g. "invalid JSON", "unknown type 'foo'",
 * "message needs a string body", "invalid room name". When the frame had a
 * string "id", *id_out (if not NULL) gets a malloc'd copy so the error can
 * echo it (caller frees); a join or leave whose room was valid leaves it in
 * out->err_room (else ""). "since": null is no since. Unknown fields are
 * ignored. */
int frame_parse(const char *data, size_t len, client_frame *out,
                char code[32], char *msg, size_t msglen, char **id_out);
void frame_free(client_frame *f);
/* Bytes of the frame arena held by parsed frames not yet freed (tests: 0
 * once every frame is freed). */
size_t frame_arena_in_use(void);

/* JSON with an integer beyond 64 bits (jansson: json_error_numeric_overflow)
 * is still JSON, and such a number in a member nobody reads must not cost
 * the document (unknown fields are ignored): the caller loads it again with
 * JSON_DECODE_INT_AS_REAL, then takes the members it reads as integers back
 * with this (frame_json_load does both). obj's members named in keys that
 * are reals become integers when whole and below 2^53 in magnitude (such a
 * double is the integer given; 2^53 + 1 reads as 2^53); a fraction stays a
 * real (refused as any real is). 0, or -1 when one is 2^53 or more (it may
 * have lost digits: out of range) or out of memory. */
int frame_whole_ints(json_t *obj, const char *const *keys, size_t n);
/* json_loadb(buf, len, flags, je) that takes a document with an integer
 * beyond 64 bits too: loaded again with JSON_DECODE_INT_AS_REAL, and the
 * object's members named in ints (the ones the caller reads as integers)
 * taken back by frame_whole_ints (one it cannot take back stays a real:
 * the caller refuses it as any real). For JSON chatd reads but does not
 * own: the server API's bodies, the frames of the recent buffer (an API
 * message's meta is kept as given, whatever its numbers). je may be NULL. */
json_t *frame_json_load(const char *buf, size_t len, size_t flags, const char *const *ints, size_t n,
                        json_error_t *je);

#endif
