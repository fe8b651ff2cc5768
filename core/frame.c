/* frame: see frame.h. One client frame: JSON text -> validated client_frame.
 * Owns: the jansson tree of the frame (root_) until frame_free(). Strings are
 * measured with json_string_length, so an embedded NUL never shortens a
 * field silently; a NUL (U+0000, "\u0000" in the JSON) in a body, room, id
 * or token is refused with bad_request: a body must be storable in a
 * Postgres text column, and it is refused here, before any seq exists.
 * Also owns the frame arena (below): the memory jansson builds a frame's
 * tree in. */
#define _GNU_SOURCE
#include "frame.h"
#include "arena.h"
#include "emoji.h"
#include "log.h"
#include "util.h"

#include <assert.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the frame arena -----------------------------------------------------
 * jansson makes ~20 allocations for a typical message frame (the object, its
 * hash table, a pair per key, each string twice: the lexer's buffer and the
 * value) and frees them all once the frame is handled. While json_loadb
 * parses a frame they come from one static block instead (arena.h).
 * jansson's allocator is process-wide (json_set_alloc_funcs): outside a
 * frame's parse, and for what does not fit in the block, it is malloc, and
 * the free function tells the two apart by address. A tree's span is taken
 * back at frame_free() when it is the topmost one, and the whole block when
 * no parsed frame is left (frames nest: one held during a join is processed
 * inside another frame's handling; tests free in any order); a span freed
 * below the top is poisoned under ASan at once (arena_forget). A tree
 * wholly in the arena is not walked by json_decref at all (its every free
 * would do nothing): nothing refers to it past frame_free and it is never
 * modified, so dropping the span is the whole free. jansson's alloc
 * functions must still be ours when a tree is built and freed (asserted):
 * an arena block handed to another free() would be an invalid free. */
#define ARENA_SIZE (64 * 1024)
static _Alignas(16) unsigned char arena_block[ARENA_SIZE];
static arena fa;
static unsigned arena_live;   /* parsed frames with a span in the arena */
static int arena_on;          /* inside a frame's json_loadb */
static unsigned arena_spills; /* allocations of that parse that did not fit */

static void *frame_malloc(size_t n)
{
    if (arena_on) {
        void *p = arena_alloc(&fa, n);
        if (p) return p;
        arena_spills++;
    }
    return malloc(n);
}

static void frame_mfree(void *p)
{
    if (!arena_owns(&fa, p)) free(p);
}

static void arena_install(void)
{
    if (fa.buf) return;
    arena_init(&fa, arena_block, sizeof arena_block);
    json_set_alloc_funcs(frame_malloc, frame_mfree);
}

static int alloc_funcs_ours(void)
{
    json_malloc_t m;
    json_free_t f;
    json_get_alloc_funcs(&m, &f);
    return m == frame_malloc && f == frame_mfree;
}

/* Frees a tree built by frame_parse: a walk only when part of it was
 * malloc'd (a spill); then the caller gives the span back. */
static void tree_free(json_t *root, int arena_only)
{
    assert(alloc_funcs_ours());
    if (!arena_only) json_decref(root);
}

static int fail(char code[32], char *msg, size_t msglen, const char *f, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char code[32], char *msg, size_t msglen, const char *f, ...)
{
    if (code) snprintf(code, 32, "%s", "bad_request");
    if (msg && msglen) {
        va_list ap;
        va_start(ap, f);
        vsnprintf(msg, msglen, f, ap);
        va_end(ap);
    }
    return -1;
}

/* Field lookup results. */
enum { F_ABSENT = 0, F_OK = 1, F_BAD = -1 };

/* A string field; NUL-free unless allow_nul. */
static int get_str(json_t *o, const char *key, int allow_nul, const char **s, size_t *len)
{
    json_t *v = json_object_get(o, key);
    if (!v) return F_ABSENT;
    if (!json_is_string(v)) return F_BAD;
    *s = json_string_value(v);
    *len = json_string_length(v);
    if (!allow_nul && memchr(*s, 0, *len)) return F_BAD;
    return F_OK;
}

/* "room": absent, or a valid room name. required makes absence an error. */
static int get_room(json_t *o, client_frame *f, int required, const char *tname,
                    char code[32], char *msg, size_t msglen)
{
    int r = get_str(o, "room", 0, &f->room, &f->room_len);
    if (r == F_ABSENT) {
        f->room = NULL;
        f->room_len = 0;
        if (required) return fail(code, msg, msglen, "%s needs a room", tname);
        return 0;
    }
    if (r == F_BAD) {
        f->room = NULL;
        f->room_len = 0;
        return fail(code, msg, msglen, "room must be a string");
    }
    if (!room_name_valid(f->room, f->room_len)) {
        f->room = NULL;
        f->room_len = 0;
        return fail(code, msg, msglen, "invalid room name");
    }
    return 0;
}

static const struct { const char *name; frame_type t; } TYPES[] = {
    {"message", FT_MESSAGE}, {"typing", FT_TYPING}, {"heartbeat", FT_HEARTBEAT},
    {"join", FT_JOIN},       {"leave", FT_LEAVE},   {"refresh", FT_REFRESH},
    {"read", FT_READ},
    {"edit", FT_EDIT},       {"delete", FT_DELETE}, {"react", FT_REACT},
};

/* Copies at most 32 bytes of an unknown type name, printable ASCII only,
 * so the error message stays short and safe to show. */
static void printable(char *dst, size_t n, const char *s, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < n && i < 32; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[o++] = (c >= 0x20 && c < 0x7f && c != '\'') ? (char)c : '?';
    }
    if (n) dst[o] = 0;
}

_Static_assert(FRAME_ID_MAX == CLIENT_ID_BYTES, "an id is 1-64 characters (util.h)");
_Static_assert(FRAME_ROOM_MAX == CHAT_ROOM_MAX, "a room name is at most CHAT_ROOM_MAX bytes (util.h)");

/* "id": absent, or 1..64 characters without NUL (client_id_valid, the
 * server API's rule too). */
static int get_id(json_t *root, client_frame *out, char code[32], char *msg, size_t msglen)
{
    int r = get_str(root, "id", 0, &out->id, &out->id_len);
    if (r == F_BAD || (r == F_OK && !client_id_valid(out->id, out->id_len))) {
        out->id = NULL;
        out->id_len = 0;
        return fail(code, msg, msglen, "id must be a string of 1-%d characters", CLIENT_ID_CHARS);
    }
    return 0;
}

/* join, leave: "id" is not one of their fields, but a client that sends
 * one gets it echoed by the errors answering the frame; one that is not a
 * valid id is ignored (no error for a field the frame does not have). */
static void join_id(json_t *root, client_frame *out)
{
    if (get_str(root, "id", 0, &out->id, &out->id_len) != F_OK ||
        !client_id_valid(out->id, out->id_len)) {
        out->id = NULL;
        out->id_len = 0;
    }
}

/* The fields of edit, delete and react (message updates, v2). */
static int parse_update(json_t *root, client_frame *out, const char *tname, char code[32],
                        char *msg, size_t msglen)
{
    if (get_id(root, out, code, msg, msglen) != 0) return -1;
    json_t *t = json_object_get(root, "target");
    if (!json_is_integer(t) || json_integer_value(t) < 1)
        return fail(code, msg, msglen, "%s needs a target: the seq of a message (integer >= 1)", tname);
    out->target = (uint64_t)json_integer_value(t);
    if (out->type == FT_EDIT) {
        if (get_str(root, "body", 1, &out->body, &out->body_len) != F_OK)
            return fail(code, msg, msglen, "edit needs a string body");
        if (memchr(out->body, 0, out->body_len))
            return fail(code, msg, msglen, "body must not contain U+0000");
    } else if (out->type == FT_REACT) {
        if (get_str(root, "emoji", 1, &out->emoji, &out->emoji_len) != F_OK ||
            !emoji_valid(out->emoji, out->emoji_len)) {
            out->emoji = NULL;
            out->emoji_len = 0;
            return fail(code, msg, msglen,
                        "emoji must be one emoji (one grapheme) or a :name:, 1-%d bytes",
                        EMOJI_MAX_BYTES);
        }
        json_t *on = json_object_get(root, "on");
        if (on && !json_is_boolean(on)) return fail(code, msg, msglen, "on must be true or false");
        out->on = on ? json_is_true(on) : 1;
    }
    return get_room(root, out, 0, tname, code, msg, msglen);
}

static int parse_fields(json_t *root, client_frame *out, char code[32], char *msg, size_t msglen)
{
    const char *ts = NULL;
    size_t tlen = 0;
    int r = get_str(root, "type", 1, &ts, &tlen);
    if (r == F_ABSENT) return fail(code, msg, msglen, "missing type");
    if (r == F_BAD) return fail(code, msg, msglen, "type must be a string");
    out->type = 0;
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
        if (strlen(TYPES[i].name) == tlen && memcmp(TYPES[i].name, ts, tlen) == 0)
            out->type = TYPES[i].t;
    if (!out->type) {
        char shown[40];
        printable(shown, sizeof shown, ts, tlen);
        return fail(code, msg, msglen, "unknown type '%s'", shown);
    }

    switch (out->type) {
    case FT_MESSAGE:
        if (get_str(root, "body", 1, &out->body, &out->body_len) != F_OK)
            return fail(code, msg, msglen, "message needs a string body");
        if (memchr(out->body, 0, out->body_len))
            return fail(code, msg, msglen, "body must not contain U+0000");
        if (get_id(root, out, code, msg, msglen) != 0) return -1;
        return get_room(root, out, 0, "message", code, msg, msglen);
    case FT_TYPING:
        return get_room(root, out, 0, "typing", code, msg, msglen);
    case FT_HEARTBEAT:
        return 0;
    case FT_JOIN: {
        join_id(root, out);
        if (get_room(root, out, 1, "join", code, msg, msglen) != 0) return -1;
        /* "since": null is no since (a client's `lastSeq ?? null`) */
        json_t *since = json_object_get(root, "since");
        if (since && !json_is_null(since)) {
            if (!json_is_integer(since) || json_integer_value(since) < 0)
                return fail(code, msg, msglen, "since must be a non-negative integer");
            out->has_since = 1;
            out->since = (uint64_t)json_integer_value(since);
        }
        r = get_str(root, "epoch", 0, &out->epoch, &out->epoch_len);
        if (r == F_BAD || (r == F_OK && (out->epoch_len < 1 || out->epoch_len > FRAME_EPOCH_MAX))) {
            out->epoch = NULL;
            out->epoch_len = 0;
            return fail(code, msg, msglen, "epoch must be a string of 1-%d bytes", FRAME_EPOCH_MAX);
        }
        return 0;
    }
    case FT_LEAVE:
        join_id(root, out);
        return get_room(root, out, 1, "leave", code, msg, msglen);
    case FT_EDIT: return parse_update(root, out, "edit", code, msg, msglen);
    case FT_DELETE: return parse_update(root, out, "delete", code, msg, msglen);
    case FT_REACT: return parse_update(root, out, "react", code, msg, msglen);
    case FT_REFRESH:
        if (get_str(root, "token", 0, &out->token, &out->token_len) != F_OK || out->token_len == 0)
            return fail(code, msg, msglen, "refresh needs a string token");
        return 0;
    case FT_READ: {
        /* room optional (the URL's), like message and typing */
        json_t *seq = json_object_get(root, "seq");
        if (!json_is_integer(seq) || json_integer_value(seq) < 0)
            return fail(code, msg, msglen, "read needs seq, a non-negative integer");
        out->seq = (uint64_t)json_integer_value(seq);
        return get_room(root, out, 0, "read", code, msg, msglen);
    }
    }
    return fail(code, msg, msglen, "unknown type");
}

int frame_whole_ints(json_t *obj, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_object_get(obj, keys[i]);
        if (!json_is_real(v)) continue;
        double d = json_real_value(v);
        /* below 2^53 in magnitude: the real is the integer given (2^53 + 1
         * reads as the double 2^53, so 2^53 itself says nothing) */
        if (!(d > -9007199254740992.0 && d < 9007199254740992.0)) return -1;
        if (d != (double)(int64_t)d) continue;   /* a fraction */
        if (json_object_set_new(obj, keys[i], json_integer((json_int_t)d)) != 0) return -1;
    }
    return 0;
}

json_t *frame_json_load(const char *buf, size_t len, size_t flags, const char *const *ints, size_t n,
                        json_error_t *je)
{
    json_error_t own, *e = je ? je : &own;
    json_t *o = json_loadb(buf, len, flags, e);
    if (o || json_error_code(e) != json_error_numeric_overflow) return o;
    o = json_loadb(buf, len, flags | JSON_DECODE_INT_AS_REAL, e);
    if (o && json_is_object(o)) (void)frame_whole_ints(o, ints, n);
    return o;
}

/* A frame read again with every integer as a real (an integer beyond 64
 * bits somewhere in it): the protocol's integers (since, target, read's
 * seq) are taken back (frame_whole_ints; in such a frame, and only there,
 * 3.0 passes for 3), or the frame is "out of range" as before. Runs inside
 * the parse's arena (arena_on): the replaced values are the tree's like
 * the others. */
static int big_ints(json_t *root, char code[32], char *msg, size_t msglen)
{
    static const char *const keys[] = {"since", "target", "seq"};
    if (frame_whole_ints(root, keys, sizeof keys / sizeof *keys) < 0)
        return fail(code, msg, msglen, "integer out of range: seqs are 0 to %" PRIu64, SEQ_MAX);
    return 0;
}

int frame_parse(const char *data, size_t len, client_frame *out,
                char code[32], char *msg, size_t msglen, char **id_out)
{
    if (id_out) *id_out = NULL;
    if (code) code[0] = 0;
    if (msg && msglen) msg[0] = 0;
    if (!out) return fail(code, msg, msglen, "internal error");
    memset(out, 0, sizeof *out);
    if (!data) return fail(code, msg, msglen, "invalid JSON");

    /* JSON_ALLOW_NUL: "\u0000" is legal JSON; lengths come from the tree.
     * Duplicate keys are accepted (the last one wins). JSON_DECODE_ANY lets
     * a bare scalar parse, so it gets the clearer "must be an object". */
    arena_install();
    /* someone else's functions: nothing goes to the arena, and the tree
     * must be walked (freed by their free); a bug, loud in a debug build */
    int ours = alloc_funcs_ours();
    assert(ours);
    if (!ours) {
        static int told;
        if (!told++) LOGE("frame", "jansson's alloc functions were replaced: the frame arena is unused");
    }
    size_t mark = fa.top;
    arena_spills = 0;
    arena_on = 1;
    json_error_t jerr;
    json_t *root = json_loadb(data, len, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    int big = 0;
    if (!root && json_error_code(&jerr) == json_error_numeric_overflow) {
        /* an integer beyond 64 bits: in a field chatd does not read it must
         * not cost the frame (protocol.md: unknown fields are ignored), so
         * read it again with every integer as a real; big_ints() then
         * takes the protocol's integers back (or refuses them) */
        arena_release(&fa, mark);   /* json_loadb freed its partial tree */
        root = json_loadb(data, len, JSON_ALLOW_NUL | JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, &jerr);
        big = 1;
    }
    int big_rc = root && big && json_is_object(root) ? big_ints(root, code, msg, msglen) : 0;
    arena_on = 0;
    /* a spill freed during the parse (a lexer buffer) also counts: a walk
     * then, which is only slower */
    int arena_only = ours && arena_spills == 0;
    if (!root) {
        arena_release(&fa, mark);   /* json_loadb freed its partial tree */
        /* every integer of the protocol (seqs: since, target, read's seq)
         * is at most 9223372036854775807 (util.h SEQ_MAX): say so rather
         * than "invalid JSON" for a number jansson cannot hold */
        if (json_error_code(&jerr) == json_error_numeric_overflow)
            return fail(code, msg, msglen, "integer out of range: seqs are 0 to %" PRIu64, SEQ_MAX);
        return fail(code, msg, msglen, "invalid JSON");
    }
    if (!json_is_object(root)) {
        tree_free(root, arena_only);
        arena_release(&fa, mark);
        return fail(code, msg, msglen, "frame must be a JSON object");
    }
    if (big_rc != 0 || parse_fields(root, out, code, msg, msglen) != 0) {
        /* a refused join/leave of a valid room: its error names the room */
        char err_room[sizeof out->err_room] = "";
        if ((out->type == FT_JOIN || out->type == FT_LEAVE) && out->room &&
            out->room_len < sizeof err_room) {
            memcpy(err_room, out->room, out->room_len);
            err_room[out->room_len] = 0;
        }
        if (id_out) {
            json_t *id = json_object_get(root, "id");
            if (json_is_string(id)) {
                size_t n = json_string_length(id);
                char *c = malloc(n + 1);
                if (c) {
                    memcpy(c, json_string_value(id), n);
                    c[n] = 0;
                }
                *id_out = c;
            }
        }
        tree_free(root, arena_only);
        arena_release(&fa, mark);
        memset(out, 0, sizeof *out);
        memcpy(out->err_room, err_room, sizeof err_room);
        return -1;
    }
    out->root_ = root;
    out->arena_only_ = arena_only;
    out->arena_mark_ = mark;
    out->arena_end_ = fa.top;
    if (fa.top > mark) arena_live++;
    return 0;
}

void frame_free(client_frame *f)
{
    if (!f) return;
    if (f->root_) tree_free((json_t *)f->root_, f->arena_only_);
    if (f->arena_end_ > f->arena_mark_) {
        if (f->arena_end_ == fa.top) arena_release(&fa, f->arena_mark_);
        else arena_forget(&fa, f->arena_mark_, f->arena_end_);   /* below the top */
        if (arena_live && --arena_live == 0) arena_release(&fa, 0);
    }
    memset(f, 0, sizeof *f);
}

size_t frame_arena_in_use(void) { return fa.top; }
