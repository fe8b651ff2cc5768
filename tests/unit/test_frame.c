/* test_frame: client frame parsing (frame.h): every type, every error path,
 * unknown fields, id echo, embedded NULs; the frame arena, and under ASan a
 * late read of a frame freed below the top of the arena (it must fault). */
#define _GNU_SOURCE
#include "check.h"
#include "frame.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

static int parse_n(const char *js, size_t n, client_frame *f, char *code, char *msg, char **id)
{
    return frame_parse(js, n, f, code, msg, 128, id);
}
static int parse(const char *js, client_frame *f, char *code, char *msg, char **id)
{
    return parse_n(js, strlen(js), f, code, msg, id);
}

static int eq(const char *p, size_t n, const char *want)
{
    return p && n == strlen(want) && memcmp(p, want, n) == 0;
}

/* Expects failure with bad_request and a message containing want. */
static void bad(const char *js, const char *want)
{
    client_frame f;
    char code[32] = "x", msg[128] = "";
    char *id = (char *)1;
    int rc = parse(js, &f, code, msg, &id);
    CHECK(rc == -1 && strcmp(code, "bad_request") == 0 && strstr(msg, want),
          "%s -> rc=%d code=%s msg='%s' (want '%s')", js, rc, code, msg, want);
    CHECK(f.root_ == NULL, "no tree kept on error for %s", js);
    frame_free(&f); /* safe after an error */
    free(id == (char *)1 ? NULL : id);
}

/* A refused join/leave of a valid room leaves the room in err_room (its
 * error names it); other refusals leave it "". */
static void test_err_room(void)
{
    client_frame f;
    char code[32], msg[128], *id = NULL;
    CHECK(parse("{\"type\":\"join\",\"room\":\"private-q\",\"since\":\"x\",\"id\":\"j1\"}", &f, code, msg,
                &id) == -1 && strcmp(f.err_room, "private-q") == 0 && id && strcmp(id, "j1") == 0,
          "bad since: err_room '%s' id %s", f.err_room, id ? id : "(null)");
    free(id); id = NULL;
    CHECK(parse("{\"type\":\"join\",\"room\":\"r\",\"epoch\":\"\"}", &f, code, msg, NULL) == -1 &&
          strcmp(f.err_room, "r") == 0, "bad epoch: err_room '%s'", f.err_room);
    CHECK(parse("{\"type\":\"join\",\"room\":\"r r\",\"since\":1}", &f, code, msg, NULL) == -1 &&
          f.err_room[0] == 0, "invalid room: no err_room ('%s')", f.err_room);
    CHECK(parse("{\"type\":\"leave\"}", &f, code, msg, NULL) == -1 && f.err_room[0] == 0,
          "leave without room: no err_room");
    CHECK(parse("{\"type\":\"message\",\"room\":\"r\"}", &f, code, msg, NULL) == -1 && f.err_room[0] == 0,
          "message: no err_room ('%s')", f.err_room);
    CHECK(parse("{\"type\":\"join\",\"room\":\"r2\"}", &f, code, msg, NULL) == 0 && f.err_room[0] == 0,
          "success: err_room empty");
    frame_free(&f);
}

static void test_valid(void)
{
    client_frame f;
    char code[32], msg[128], *id = NULL;

    CHECK(parse("{\"type\":\"message\",\"body\":\"hi\",\"id\":\"c1\",\"room\":\"lobby\"}", &f, code, msg, &id) == 0, "%s", msg);
    CHECK(f.type == FT_MESSAGE && eq(f.body, f.body_len, "hi") && eq(f.id, f.id_len, "c1") &&
          eq(f.room, f.room_len, "lobby") && f.token == NULL, "message fields");
    CHECK(id == NULL, "id_out untouched on success");
    frame_free(&f);
    CHECK(f.root_ == NULL && f.body == NULL, "frame_free clears");
    frame_free(&f); /* twice is harmless */

    CHECK(parse("{\"type\":\"message\",\"body\":\"\"}", &f, code, msg, &id) == 0, "empty body allowed: %s", msg);
    CHECK(f.body && f.body_len == 0 && f.room == NULL && f.id == NULL, "empty body, no room, no id");
    frame_free(&f);

    /* unknown fields ignored, unicode body, whitespace */
    CHECK(parse(" {\"foo\":[1,{\"x\":null}],\"type\":\"message\",\"body\":\"\\u00e9\\ud83d\\ude00\",\"extra\":true} \n",
                &f, code, msg, NULL) == 0, "%s", msg);
    CHECK(eq(f.body, f.body_len, "\xc3\xa9\xf0\x9f\x98\x80"), "utf-8 body");
    frame_free(&f);

    /* embedded NUL in body: refused before any seq (Postgres text cannot
     * hold it), the id echoed so the client knows which message */
    char *nid = NULL;
    CHECK(parse("{\"type\":\"message\",\"body\":\"a\\u0000b\",\"id\":\"m1\"}", &f, code, msg,
                &nid) == -1 && strcmp(code, "bad_request") == 0 && strstr(msg, "U+0000"),
          "NUL in body refused: %s %s", code, msg);
    CHECK(nid && strcmp(nid, "m1") == 0, "id echoed for the NUL body");
    free(nid);
    CHECK(parse("{\"type\":\"message\",\"body\":\"\\u0000\"}", &f, code, msg, NULL) == -1,
          "a lone NUL body refused");

    /* id boundaries */
    char buf[512], id64[65];
    memset(id64, 'i', 64); id64[64] = 0;
    snprintf(buf, sizeof buf, "{\"type\":\"message\",\"body\":\"x\",\"id\":\"%s\"}", id64);
    CHECK(parse(buf, &f, code, msg, NULL) == 0 && f.id_len == 64, "64-byte id: %s", msg);
    frame_free(&f);
    CHECK(parse("{\"type\":\"message\",\"body\":\"x\",\"id\":\"a\"}", &f, code, msg, NULL) == 0 && f.id_len == 1, "1-byte id");
    frame_free(&f);
    /* 64 characters, whatever their bytes (the contract counts characters) */
    char eid[64 * 4 + 1] = "";
    for (int i = 0; i < 64; i++) strcat(eid, "\xf0\x9f\x98\x80");
    snprintf(buf, sizeof buf, "{\"type\":\"message\",\"body\":\"x\",\"id\":\"%s\"}", eid);
    CHECK(parse(buf, &f, code, msg, NULL) == 0 && f.id_len == 256, "64 4-byte characters: %s", msg);
    frame_free(&f);
    char e33[33 * 2 + 1] = "";
    for (int i = 0; i < 33; i++) strcat(e33, "\xc3\xa9");
    snprintf(buf, sizeof buf, "{\"type\":\"edit\",\"target\":1,\"body\":\"x\",\"id\":\"%s\"}", e33);
    CHECK(parse(buf, &f, code, msg, NULL) == 0 && f.id_len == 66, "an edit's id of 33 e-acutes: %s", msg);
    frame_free(&f);

    CHECK(parse("{\"type\":\"typing\"}", &f, code, msg, NULL) == 0 && f.type == FT_TYPING && f.room == NULL, "typing");
    frame_free(&f);
    CHECK(parse("{\"type\":\"typing\",\"room\":\"a.b-c_D9\"}", &f, code, msg, NULL) == 0 &&
          eq(f.room, f.room_len, "a.b-c_D9"), "typing with room");
    frame_free(&f);
    CHECK(parse("{\"type\":\"heartbeat\"}", &f, code, msg, NULL) == 0 && f.type == FT_HEARTBEAT, "heartbeat");
    frame_free(&f);
    CHECK(parse("{\"type\":\"heartbeat\",\"room\":42}", &f, code, msg, NULL) == 0, "heartbeat ignores fields");
    frame_free(&f);
    CHECK(parse("{\"type\":\"join\",\"room\":\"r2\"}", &f, code, msg, NULL) == 0 && f.type == FT_JOIN &&
          eq(f.room, f.room_len, "r2") && !f.has_since, "join");
    frame_free(&f);
    CHECK(parse("{\"type\":\"join\",\"room\":\"r2\",\"since\":0}", &f, code, msg, NULL) == 0 &&
          f.has_since && f.since == 0, "join since 0");
    frame_free(&f);
    CHECK(parse("{\"type\":\"join\",\"room\":\"r2\",\"since\":9007199254740993}", &f, code, msg, NULL) == 0 &&
          f.has_since && f.since == 9007199254740993ull, "join large since (exact)");
    frame_free(&f);
    /* "since": null is no since (a JS client's `lastSeq ?? null`) */
    CHECK(parse("{\"type\":\"join\",\"room\":\"r2\",\"since\":null}", &f, code, msg, NULL) == 0 &&
          f.type == FT_JOIN && !f.has_since && f.since == 0, "join since null = no since: %s", msg);
    frame_free(&f);
    /* join/leave: a valid id is kept (their errors echo it), another ignored */
    CHECK(parse("{\"type\":\"join\",\"room\":\"r2\",\"id\":\"j1\"}", &f, code, msg, NULL) == 0 &&
          eq(f.id, f.id_len, "j1"), "join id kept");
    frame_free(&f);
    CHECK(parse("{\"type\":\"leave\",\"room\":\"r2\",\"id\":\"l1\"}", &f, code, msg, NULL) == 0 &&
          eq(f.id, f.id_len, "l1"), "leave id kept");
    frame_free(&f);
    CHECK(parse("{\"type\":\"join\",\"room\":\"r2\",\"id\":7}", &f, code, msg, NULL) == 0 &&
          f.id == NULL, "join: a non-string id is ignored, not refused");
    frame_free(&f);
    CHECK(parse("{\"type\":\"leave\",\"room\":\"r2\"}", &f, code, msg, NULL) == 0 && f.type == FT_LEAVE &&
          eq(f.room, f.room_len, "r2"), "leave");
    frame_free(&f);
    CHECK(parse("{\"type\":\"refresh\",\"token\":\"a.b.c\"}", &f, code, msg, NULL) == 0 && f.type == FT_REFRESH &&
          eq(f.token, f.token_len, "a.b.c"), "refresh");
    frame_free(&f);

    /* duplicate keys: accepted, the last one wins */
    CHECK(parse("{\"type\":\"message\",\"body\":\"one\",\"body\":\"two\"}", &f, code, msg, NULL) == 0 &&
          eq(f.body, f.body_len, "two"), "duplicate key: %s", msg);
    frame_free(&f);

    /* length is honoured: the buffer need not be NUL-terminated */
    const char *two = "{\"type\":\"heartbeat\"}{\"type\":\"x\"}";
    CHECK(parse_n(two, 20, &f, code, msg, NULL) == 0 && f.type == FT_HEARTBEAT, "explicit length: %s", msg);
    frame_free(&f);
}

static void test_errors(void)
{
    bad("", "invalid JSON");
    bad("{", "invalid JSON");
    /* an integer jansson cannot hold (beyond int64): every seq is at most
     * INT64_MAX, and the error says so */
    bad("{\"type\":\"join\",\"room\":\"r\",\"since\":9223372036854775808}", "integer out of range");
    bad("{\"type\":\"delete\",\"room\":\"r\",\"target\":99999999999999999999}", "0 to 9223372036854775807");
    bad("{\"type\":\"heartbeat\"} x", "invalid JSON");
    bad("{\"type\":\"heartbeat\"}{\"type\":\"heartbeat\"}", "invalid JSON");
    bad("{'type':'heartbeat'}", "invalid JSON");
    bad("{\"type\":\"message\",\"body\":\"\xff\xfe\"}", "invalid JSON"); /* invalid UTF-8 */
    bad("[]", "JSON object");
    bad("\"message\"", "JSON object");
    bad("42", "JSON object");
    bad("null", "JSON object");
    bad("{}", "missing type");
    bad("{\"body\":\"x\"}", "missing type");
    bad("{\"type\":7}", "type must be a string");
    bad("{\"type\":null}", "type must be a string");
    bad("{\"type\":[\"message\"]}", "type must be a string");
    bad("{\"type\":\"foo\"}", "unknown type 'foo'");
    bad("{\"type\":\"Message\"}", "unknown type 'Message'");
    bad("{\"type\":\"\"}", "unknown type ''");
    bad("{\"type\":\"message\\u0000\",\"body\":\"x\"}", "unknown type");
    bad("{\"type\":\"message \",\"body\":\"x\"}", "unknown type");
    /* message */
    bad("{\"type\":\"message\"}", "message needs a string body");
    bad("{\"type\":\"message\",\"body\":5}", "message needs a string body");
    bad("{\"type\":\"message\",\"body\":null}", "message needs a string body");
    bad("{\"type\":\"message\",\"body\":{\"t\":\"x\"}}", "message needs a string body");
    bad("{\"type\":\"message\",\"body\":\"x\",\"id\":\"\"}", "id must be");
    bad("{\"type\":\"message\",\"body\":\"x\",\"id\":17}", "id must be");
    bad("{\"type\":\"message\",\"body\":\"x\",\"id\":\"a\\u0000b\"}", "id must be");
    char buf[512], id65[66];
    memset(id65, 'i', 65); id65[65] = 0;
    snprintf(buf, sizeof buf, "{\"type\":\"message\",\"body\":\"x\",\"id\":\"%s\"}", id65);
    bad(buf, "id must be");
    char e65[65 * 2 + 1] = "";
    for (int i = 0; i < 65; i++) strcat(e65, "\xc3\xa9");
    snprintf(buf, sizeof buf, "{\"type\":\"message\",\"body\":\"x\",\"id\":\"%s\"}", e65);
    bad(buf, "id must be a string of 1-64 characters");
    bad("{\"type\":\"message\",\"body\":\"x\",\"room\":\"bad room\"}", "invalid room name");
    bad("{\"type\":\"message\",\"body\":\"x\",\"room\":\"\"}", "invalid room name");
    bad("{\"type\":\"message\",\"body\":\"x\",\"room\":5}", "room must be a string");
    bad("{\"type\":\"message\",\"body\":\"x\",\"room\":\"ok\\u0000\"}", "room must be a string");
    /* typing */
    bad("{\"type\":\"typing\",\"room\":\"a/b\"}", "invalid room name");
    bad("{\"type\":\"typing\",\"room\":null}", "room must be a string");
    /* join */
    bad("{\"type\":\"join\"}", "join needs a room");
    bad("{\"type\":\"join\",\"room\":\"\"}", "invalid room name");
    char r65[66];
    memset(r65, 'r', 65); r65[65] = 0;
    snprintf(buf, sizeof buf, "{\"type\":\"join\",\"room\":\"%s\"}", r65);
    bad(buf, "invalid room name");
    bad("{\"type\":\"join\",\"room\":\"r\",\"since\":-1}", "since must be a non-negative integer");
    bad("{\"type\":\"join\",\"room\":\"r\",\"since\":1.5}", "since must be a non-negative integer");
    bad("{\"type\":\"join\",\"room\":\"r\",\"since\":1.0}", "since must be a non-negative integer");
    bad("{\"type\":\"join\",\"room\":\"r\",\"since\":\"3\"}", "since must be a non-negative integer");
    bad("{\"type\":\"join\",\"room\":\"r\",\"since\":99999999999999999999999}", "integer out of range");
    /* ... but one in a field chatd does not read costs nothing (protocol.md:
     * unknown fields are ignored): the frame is taken, its integers intact */
    {
        client_frame f;
        char code[32], msg[128];
        const char *js = "{\"type\":\"join\",\"room\":\"r\",\"since\":7,\"x\":18446744073709551616,"
                         "\"y\":[-99999999999999999999]}";
        CHECK(parse(js, &f, code, msg, NULL) == 0 && f.type == FT_JOIN && f.since == 7, "%s: %s", js, msg);
        frame_free(&f);
        js = "{\"type\":\"edit\",\"room\":\"r\",\"target\":9007199254740991,\"body\":\"b\",\"n\":1e30,"
             "\"big\":123456789012345678901234567890}";
        CHECK(parse(js, &f, code, msg, NULL) == 0 && f.type == FT_EDIT && f.target == 9007199254740991ull,
              "%s: %s", js, msg);
        frame_free(&f);
        /* 2^53 + 1 reads as the double 2^53: from 2^53 on, a real no longer
         * says which integer was sent (never another seq than the one given) */
        bad("{\"type\":\"edit\",\"room\":\"r\",\"target\":9007199254740993,\"body\":\"b\","
            "\"big\":123456789012345678901234567890}", "integer out of range");
        bad("{\"type\":\"join\",\"room\":\"r\",\"since\":9007199254740992,\"x\":99999999999999999999}",
            "integer out of range");
        js = "{\"type\":\"read\",\"room\":\"r\",\"seq\":12,\"ts\":99999999999999999999}";
        CHECK(parse(js, &f, code, msg, NULL) == 0 && f.type == FT_READ && f.seq == 12, "%s: %s", js, msg);
        frame_free(&f);
        /* the protocol's own integers are judged as in any frame */
        bad("{\"type\":\"join\",\"room\":\"r\",\"since\":1.5,\"x\":99999999999999999999}",
            "since must be a non-negative integer");
        bad("{\"type\":\"join\",\"room\":\"r\",\"since\":-1,\"x\":99999999999999999999}",
            "since must be a non-negative integer");
        /* and the error of a refused one answers its id */
        char *id = NULL;
        js = "{\"type\":\"delete\",\"room\":\"r\",\"id\":\"d7\",\"target\":99999999999999999999}";
        CHECK(parse(js, &f, code, msg, &id) == -1 && strstr(msg, "out of range") && id && !strcmp(id, "d7"),
              "%s: %s id=%s", js, msg, id ? id : "(none)");
        free(id);
    }
    /* leave */
    bad("{\"type\":\"leave\"}", "leave needs a room");
    bad("{\"type\":\"leave\",\"room\":[\"r\"]}", "room must be a string");
    bad("{\"type\":\"leave\",\"room\":\"r r\"}", "invalid room name");
    /* refresh */
    bad("{\"type\":\"refresh\"}", "refresh needs a string token");
    bad("{\"type\":\"refresh\",\"token\":\"\"}", "refresh needs a string token");
    bad("{\"type\":\"refresh\",\"token\":42}", "refresh needs a string token");
    bad("{\"type\":\"refresh\",\"token\":\"a.b.c\\u0000x\"}", "refresh needs a string token");

    /* NULL data */
    client_frame f;
    char code[32], msg[128];
    CHECK(frame_parse(NULL, 0, &f, code, msg, sizeof msg, NULL) == -1 && strcmp(code, "bad_request") == 0, "NULL data");
    /* tiny msg buffer truncates safely */
    char small[8];
    CHECK(frame_parse("{\"type\":\"nope-nope-nope\"}", 24, &f, code, small, sizeof small, NULL) == -1 &&
          strlen(small) == 7, "msg truncated to buffer");
    /* long / odd unknown type is shown short and printable */
    char longtype[300] = "{\"type\":\"";
    memset(longtype + 9, 'z', 200);
    strcpy(longtype + 209, "\\n\"}");
    CHECK(parse(longtype, &f, code, msg, NULL) == -1 && strlen(msg) < 60 && !strchr(msg, '\n'),
          "unknown type message bounded: '%s'", msg);
}

static void test_id_echo(void)
{
    client_frame f;
    char code[32], msg[128], *id = NULL;
    /* error in a frame with a string id: id echoed */
    CHECK(parse("{\"type\":\"message\",\"id\":\"m-7\"}", &f, code, msg, &id) == -1, "no body");
    CHECK(id && strcmp(id, "m-7") == 0, "id echoed: %s", id ? id : "(null)");
    free(id); id = NULL;
    CHECK(parse("{\"type\":\"bogus\",\"id\":\"b1\"}", &f, code, msg, &id) == -1 && id && strcmp(id, "b1") == 0,
          "id echoed for unknown type");
    free(id); id = NULL;
    CHECK(parse("{\"type\":\"message\",\"body\":\"x\",\"id\":\"r1\",\"room\":\"bad!\"}", &f, code, msg, &id) == -1 &&
          id && strcmp(id, "r1") == 0, "id echoed for bad room");
    free(id); id = NULL;
    /* an over-long id is still echoed (it was a string) */
    char buf[256], id65[66];
    memset(id65, 'q', 65); id65[65] = 0;
    snprintf(buf, sizeof buf, "{\"type\":\"message\",\"body\":\"x\",\"id\":\"%s\"}", id65);
    CHECK(parse(buf, &f, code, msg, &id) == -1 && id && strlen(id) == 65, "long id echoed");
    free(id); id = NULL;
    /* non-string id: nothing to echo */
    CHECK(parse("{\"type\":\"message\",\"id\":5}", &f, code, msg, &id) == -1 && id == NULL, "numeric id not echoed");
    /* invalid JSON: nothing to echo */
    id = (char *)1;
    CHECK(parse("{\"id\":\"x\"", &f, code, msg, &id) == -1 && id == NULL, "id_out reset on invalid JSON");
    /* success: id_out stays NULL, id is in the frame */
    id = (char *)1;
    CHECK(parse("{\"type\":\"message\",\"body\":\"\",\"id\":\"ok\"}", &f, code, msg, &id) == 0 && id == NULL &&
          eq(f.id, f.id_len, "ok"), "success leaves id_out NULL");
    frame_free(&f);
}

/* message updates (v2): edit, delete, react */
static void test_updates(void)
{
    client_frame f;
    char code[32], msg[128];
    char *id = NULL;
    REQUIRE(parse("{\"type\":\"edit\",\"room\":\"r1\",\"target\":7,\"body\":\"fixed\",\"id\":\"e1\"}",
                  &f, code, msg, &id) == 0, "edit: %s", msg);
    CHECK(f.type == FT_EDIT && f.target == 7 && eq(f.body, f.body_len, "fixed") && eq(f.id, f.id_len, "e1") &&
          eq(f.room, f.room_len, "r1"));
    frame_free(&f);
    REQUIRE(parse("{\"type\":\"edit\",\"target\":7,\"body\":\"\"}", &f, code, msg, &id) == 0);
    CHECK(f.room == NULL && f.id == NULL && f.body_len == 0, "room defaults to the URL's");
    frame_free(&f);
    REQUIRE(parse("{\"type\":\"delete\",\"room\":\"r1\",\"target\":9007199254740991}", &f, code, msg,
                  &id) == 0);
    CHECK(f.type == FT_DELETE && f.target == 9007199254740991ull);
    frame_free(&f);
    REQUIRE(parse("{\"type\":\"react\",\"room\":\"r1\",\"target\":3,\"emoji\":\"\xF0\x9F\x91\x8D\",\"on\":false}",
                  &f, code, msg, &id) == 0, "react: %s", msg);
    CHECK(f.type == FT_REACT && f.target == 3 && f.on == 0 && eq(f.emoji, f.emoji_len, "\xF0\x9F\x91\x8D"));
    frame_free(&f);
    REQUIRE(parse("{\"type\":\"react\",\"target\":3,\"emoji\":\":tada:\"}", &f, code, msg, &id) == 0);
    CHECK(f.on == 1, "on defaults to true");
    frame_free(&f);

    bad("{\"type\":\"edit\",\"body\":\"x\"}", "needs a target");
    bad("{\"type\":\"edit\",\"target\":0,\"body\":\"x\"}", "needs a target");
    bad("{\"type\":\"edit\",\"target\":-3,\"body\":\"x\"}", "needs a target");
    bad("{\"type\":\"edit\",\"target\":1.5,\"body\":\"x\"}", "needs a target");
    bad("{\"type\":\"delete\",\"target\":\"4\"}", "needs a target");
    bad("{\"type\":\"edit\",\"target\":4}", "edit needs a string body");
    bad("{\"type\":\"edit\",\"target\":4,\"body\":\"a\\u0000b\"}", "U+0000");
    bad("{\"type\":\"edit\",\"target\":4,\"body\":\"x\",\"room\":\"bad room\"}", "invalid room");
    bad("{\"type\":\"edit\",\"target\":4,\"body\":\"x\",\"id\":\"\"}", "id must be");
    bad("{\"type\":\"react\",\"target\":4}", "emoji must be");
    bad("{\"type\":\"react\",\"target\":4,\"emoji\":\"ab\"}", "emoji must be");
    bad("{\"type\":\"react\",\"target\":4,\"emoji\":\"\"}", "emoji must be");
    bad("{\"type\":\"react\",\"target\":4,\"emoji\":\":abcdefghijklmnopqrstuvwxyz01234:\"}", "emoji must be");
    bad("{\"type\":\"react\",\"target\":4,\"emoji\":\"\xF0\x9F\x91\x8D\",\"on\":1}", "on must be");
    /* the id is echoed with the error */
    id = NULL;
    CHECK(parse("{\"type\":\"react\",\"target\":4,\"emoji\":\"xy\",\"id\":\"r9\"}", &f, code, msg, &id) == -1);
    CHECK(id && strcmp(id, "r9") == 0);
    free(id);
}

/* The frame arena (frame.c): trees freed in any order stay intact while
 * alive, a frame larger than the arena falls back to malloc, the arena is
 * empty once every frame is freed, and jansson outside frame_parse still
 * works (its values are malloc'd, not in the arena). */
static void test_arena(void)
{
    client_frame a, b, c;
    char code[32], msg[128];
    CHECK(frame_arena_in_use() == 0, "arena empty at start: %zu", frame_arena_in_use());
    CHECK(parse("{\"type\":\"message\",\"body\":\"first body\",\"id\":\"ida\",\"room\":\"dm-1\"}", &a, code, msg, NULL) == 0, "%s", msg);
    size_t one = frame_arena_in_use();
    CHECK(one > 0, "a frame's tree is in the arena");
    CHECK(parse("{\"type\":\"message\",\"body\":\"second body\",\"id\":\"idb\"}", &b, code, msg, NULL) == 0, "%s", msg);
    CHECK(frame_arena_in_use() > one, "a second live tree goes above the first");
    frame_free(&a);                              /* not the topmost: b stays */
    CHECK(parse("{\"type\":\"message\",\"body\":\"third body, longer than the others\"}", &c, code, msg, NULL) == 0, "%s", msg);
    CHECK(eq(b.body, b.body_len, "second body") && eq(b.id, b.id_len, "idb"), "b intact after a freed, c parsed");
    CHECK(eq(c.body, c.body_len, "third body, longer than the others"), "c intact");
    /* a refused frame takes nothing */
    size_t before = frame_arena_in_use();
    CHECK(parse("{\"type\":\"message\",\"body\":7}", &a, code, msg, NULL) == -1, "refused");
    CHECK(parse("{\"type\":\"message\",", &a, code, msg, NULL) == -1, "invalid JSON");
    CHECK(frame_arena_in_use() == before, "refused frames give their span back: %zu vs %zu",
          frame_arena_in_use(), before);
    frame_free(&b);
    frame_free(&c);
    CHECK(frame_arena_in_use() == 0, "arena empty after every frame is freed: %zu", frame_arena_in_use());

    /* bigger than the arena: the tree is (partly) malloc'd, still right */
    size_t n = 200000;
    char *big = malloc(n + 64);
    CHECK(big != NULL);
    if (big) {
        int o = snprintf(big, 64, "{\"type\":\"message\",\"body\":\"");
        memset(big + o, 'x', n);
        memcpy(big + o + n, "\"}", 3);
        CHECK(parse(big, &a, code, msg, NULL) == 0, "big frame: %s", msg);
        int ok = a.body_len == n;
        for (size_t i = 0; ok && i < n; i++) ok = a.body[i] == 'x';
        CHECK(ok, "big body intact (%zu bytes)", a.body_len);
        CHECK(parse("{\"type\":\"typing\",\"room\":\"r\"}", &b, code, msg, NULL) == 0, "%s", msg);
        CHECK(b.type == FT_TYPING && eq(b.room, b.room_len, "r"), "a frame after a big one");
        frame_free(&b);
        frame_free(&a);
        free(big);
    }
    CHECK(frame_arena_in_use() == 0, "arena empty after the big frame: %zu", frame_arena_in_use());

    /* many frames in a row reuse the same span */
    for (int i = 0; i < 10000; i++) {
        char js[128];
        snprintf(js, sizeof js, "{\"type\":\"message\",\"body\":\"m%d\",\"id\":\"c%d\"}", i, i);
        if (parse(js, &a, code, msg, NULL) != 0) { CHECK(0, "frame %d: %s", i, msg); break; }
        CHECK(frame_arena_in_use() <= one * 2, "frame %d uses %zu bytes", i, frame_arena_in_use());
        frame_free(&a);
    }

    /* jansson elsewhere (e.g. libjwt's claims): malloc'd, outlives frames */
    CHECK(parse("{\"type\":\"heartbeat\"}", &a, code, msg, NULL) == 0, "%s", msg);
    json_t *other = json_loads("{\"sub\":\"u1\",\"rooms\":[\"a\",\"b\"]}", 0, NULL);
    CHECK(other != NULL, "json_loads outside a frame");
    frame_free(&a);
    CHECK(parse("{\"type\":\"message\",\"body\":\"overwrite?\"}", &b, code, msg, NULL) == 0, "%s", msg);
    char *dump = other ? json_dumps(other, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    CHECK(dump && strcmp(dump, "{\"rooms\":[\"a\",\"b\"],\"sub\":\"u1\"}") == 0, "other tree intact: %s",
          dump ? dump : "(null)");
    free(dump);
    json_decref(other);
    frame_free(&b);
    CHECK(frame_arena_in_use() == 0, "arena empty at the end");
}

/* Under ASan: a frame freed below the top of the arena (another frame
 * parsed after it is still alive) is poisoned at once, so reading it after
 * frame_free faults. The read runs in a child process; the parent expects
 * ASan's report and a failed exit. Without ASan nothing is checked. */
static void test_arena_use_after_free(void)
{
#ifdef TEST_ASAN
    int pfd[2];
    CHECK(pipe(pfd) == 0, "pipe");
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        dup2(pfd[1], 2);
        close(pfd[0]);
        client_frame a, b;
        char code[32], msg[128];
        if (parse("{\"type\":\"message\",\"body\":\"kept too long\"}", &a, code, msg, NULL) != 0 ||
            parse("{\"type\":\"message\",\"body\":\"on top\"}", &b, code, msg, NULL) != 0)
            _exit(3);
        const volatile char *late = a.body;
        frame_free(&a);                     /* not the topmost: b is alive above it */
        char c = late[0];                   /* a use after free: ASan reports and exits */
        (void)c;
        frame_free(&b);
        _exit(0);
    }
    close(pfd[1]);
    char out[8192];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof out - 1 && (r = read(pfd[0], out + n, sizeof out - 1 - n)) > 0) n += (size_t)r;
    out[n] = 0;
    close(pfd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(!(WIFEXITED(st) && WEXITSTATUS(st) == 0), "the late read ran unnoticed");
    CHECK(strstr(out, "use-after-poison") != NULL, "ASan's report names it: %.300s", out);
#endif
}

int main(void)
{
    test_valid();
    test_err_room();
    test_errors();
    test_id_echo();
    test_updates();
    test_arena();
    test_arena_use_after_free();
    return check_summary("test_frame");
}
