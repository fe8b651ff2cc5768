/* fuzz_frame: a client text frame as chatd receives it (core/frame.c
 * frame_parse: JSON + the contract's validation), then what the server does
 * with it that needs no network: a message becomes the tail and the message
 * frame every member receives (wire_message_tail, wire_message_frame), an
 * error echoes the client id (json_escape, as conn_send_error does).
 * Oracles: a refused frame has code bad_request, a short printable reason
 * and no parse tree; an accepted frame has fields of the right shape; the
 * broadcast frame is valid JSON whose room, seq, id and body are exactly the
 * client's; a body with U+0000 is refused (the decision in BRIEF.md). */
#include "fuzz.h"
#include "wire.h"
#include "frame.h"
#include "msg.h"
#include "util.h"
#include <jansson.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

/* s[0..n) escaped by json_escape must decode back to the same bytes */
static void check_escape(const char *s, size_t n)
{
    size_t cap = 6 * n + 3;
    char *b = malloc(cap);
    FUZZ_CHECK(b, "oom");
    long w = json_escape(b, cap, s, n);
    FUZZ_CHECK(w >= 2, "json_escape failed with a %zu-byte buffer for %zu bytes", cap, n);
    json_error_t je;
    json_t *j = json_loadb(b, (size_t)w, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    FUZZ_CHECK(json_is_string(j), "json_escape output is not a JSON string: %s", je.text);
    FUZZ_CHECK(json_string_length(j) == n && memcmp(json_string_value(j), s, n) == 0,
               "json_escape does not round-trip");
    json_decref(j);
    /* one byte short must be refused, never overflow */
    if (w > 0) FUZZ_CHECK(json_escape(b, (size_t)w - 1, s, n) < 0, "short buffer accepted");
    free(b);
}

static void check_message(const client_frame *f)
{
    char id[FRAME_ID_MAX + 1];
    const char *idp = NULL;
    if (f->id) {
        memcpy(id, f->id, f->id_len);
        id[f->id_len] = 0;
        idp = id;
    }
    char room[CHAT_ROOM_MAX + 1] = "lobby";
    if (f->room) {
        memcpy(room, f->room, f->room_len);
        room[f->room_len] = 0;
    }
    const uint64_t seq = 4611686018427387905ull, ts = 1700000000123ull;
    size_t tl = 0;
    char *tail = wire_message_tail(idp, "user-1", "Name \"1\"", f->body, f->body_len, ts, &tl);
    FUZZ_CHECK(tail, "wire_message_tail failed");
    msg *m = wire_message_frame(room, seq, tail, tl);
    FUZZ_CHECK(m, "wire_message_frame failed");
    json_error_t je;
    json_t *j = json_loadb((const char *)msg_payload(m), m->len, 0, &je);
    FUZZ_CHECK(json_is_object(j), "broadcast frame is not a JSON object: %s", je.text);
    json_t *b = json_object_get(j, "body"), *r = json_object_get(j, "room"),
           *s = json_object_get(j, "seq"), *i = json_object_get(j, "id");
    FUZZ_CHECK(json_is_string(b) && json_string_length(b) == f->body_len &&
               (f->body_len == 0 || memcmp(json_string_value(b), f->body, f->body_len) == 0),
               "body does not round-trip");
    FUZZ_CHECK(json_is_string(r) && strcmp(json_string_value(r), room) == 0, "room");
    FUZZ_CHECK(json_is_integer(s) && (uint64_t)json_integer_value(s) == seq, "seq");
    if (idp)
        FUZZ_CHECK(json_is_string(i) && strcmp(json_string_value(i), idp) == 0, "id");
    else
        FUZZ_CHECK(!i, "id without a client id");
    FUZZ_CHECK(json_object_size(j) == 8 - (idp ? 0 : 1), "unexpected fields");
    json_decref(j);
    msg_unref(m);
    free(tail);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    client_frame f;
    char code[32], emsg[160];
    char *eid = NULL;
    int rc = frame_parse((const char *)data, size, &f, code, emsg, sizeof emsg, &eid);
    if (rc != 0) {
        FUZZ_CHECK(rc == -1, "rc %d", rc);
        FUZZ_CHECK(strcmp(code, "bad_request") == 0, "code '%s'", code);
        FUZZ_CHECK(emsg[0], "empty reason");
        for (const char *p = emsg; *p; p++)
            FUZZ_CHECK(*p >= 0x20 && *p < 0x7f, "reason with byte 0x%02x", (unsigned char)*p);
        FUZZ_CHECK(!f.root_ && !f.room && !f.body && !f.id && !f.token, "fields left after a refusal");
        check_escape(emsg, strlen(emsg));
        if (eid) check_escape(eid, strlen(eid));
        free(eid);
        return 0;
    }
    FUZZ_CHECK(!eid, "id copy on success");
    FUZZ_CHECK(f.root_, "no parse tree");
    FUZZ_CHECK(!f.room || room_name_valid(f.room, f.room_len), "invalid room accepted");
    switch (f.type) {
    case FT_MESSAGE:
        FUZZ_CHECK(f.body, "message without body");
        /* decision (BRIEF): a body with U+0000 is refused before any seq */
        FUZZ_CHECK(!memchr(f.body, 0, f.body_len), "body with U+0000 accepted");
        FUZZ_CHECK(!f.id || (f.id_len >= 1 && f.id_len <= FRAME_ID_MAX && !memchr(f.id, 0, f.id_len)),
                   "bad id accepted");
        if (f.id) { /* 1-64 characters: the bytes that do not continue a UTF-8 sequence */
            size_t chars = 0;
            for (size_t i = 0; i < f.id_len; i++) chars += ((unsigned char)f.id[i] & 0xC0) != 0x80;
            FUZZ_CHECK(chars >= 1 && chars <= 64, "an id of %zu characters accepted", chars);
        }
        check_message(&f);
        break;
    case FT_JOIN:
        FUZZ_CHECK(f.room, "join without room");
        FUZZ_CHECK(!f.has_since || f.since <= (uint64_t)INT64_MAX, "since");
        FUZZ_CHECK(!f.epoch || (f.epoch_len >= 1 && f.epoch_len <= 64), "epoch of %zu bytes",
                   f.epoch_len);
        break;
    case FT_LEAVE:
        FUZZ_CHECK(f.room, "leave without room");
        break;
    case FT_REFRESH:
        FUZZ_CHECK(f.token && f.token_len > 0 && !memchr(f.token, 0, f.token_len), "bad token accepted");
        break;
    case FT_EDIT:
        FUZZ_CHECK(f.body && !memchr(f.body, 0, f.body_len), "edit body");
        FUZZ_CHECK(f.target >= 1 && f.target <= (uint64_t)INT64_MAX, "edit target");
        break;
    case FT_DELETE:
        FUZZ_CHECK(f.target >= 1 && f.target <= (uint64_t)INT64_MAX, "delete target");
        break;
    case FT_REACT:
        FUZZ_CHECK(f.target >= 1 && f.target <= (uint64_t)INT64_MAX, "react target");
        FUZZ_CHECK(f.emoji && f.emoji_len >= 1 && f.emoji_len <= 32 && (f.on == 0 || f.on == 1) &&
                   utf8_valid(f.emoji, f.emoji_len), "react emoji/on");
        break;
    case FT_READ:
        FUZZ_CHECK(f.seq <= (uint64_t)INT64_MAX, "read seq");
        break;
    case FT_TYPING:
    case FT_HEARTBEAT:
        break;
    default:
        FUZZ_CHECK(0, "type %d", (int)f.type);
    }
    frame_free(&f);
    FUZZ_CHECK(!f.root_, "frame_free left the tree");
    FUZZ_CHECK(frame_arena_in_use() == 0, "frame_free left a span in the frame arena");
    return 0;
}
