/* test_parse: the pure parsers the fuzz targets of tests/fuzz drive, with the
 * regressions they found: parse_u64 (util.h), the HTTP request parsers
 * (http.h: room path, cursor, limit, since; the routes' methods), the bus reply interpreters
 * (bus_reply.c), the presence reply interpreters (presence_redis.c), UTF-8
 * and json_escape (util.h) and the policy's return conversion (script.c,
 * with the fuzz policy tests/fixtures/policies/fuzz).
 * Replies are built by hiredis' own reader from RESP bytes, exactly as the
 * connection would deliver them. */
#define _GNU_SOURCE
#include "check.h"
#include "resp_text.h"
#include "bus_int.h"
#include "http.h"
#include "httpd.h"
#include "presence_store.h"
#include "redis_reply.h"
#include "script.h"
#include "util.h"

#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>


static void test_u64(void)
{
    uint64_t v = 7;
    CHECK(parse_u64("0", 1, &v) == 0 && v == 0, "0");
    CHECK(parse_u64("18446744073709551615", 20, &v) == 0 && v == UINT64_MAX, "max");
    CHECK(parse_u64("18446744073709551616", 20, &v) < 0, "max + 1");
    CHECK(parse_u64("99999999999999999999", 20, &v) < 0, "20 nines");
    CHECK(parse_u64("000000000000000000001", 21, &v) < 0, "21 digits");
    CHECK(parse_u64("", 0, &v) < 0 && parse_u64(NULL, 3, &v) < 0, "empty");
    CHECK(parse_u64("+5", 2, &v) < 0 && parse_u64(" 5", 2, &v) < 0 && parse_u64("-5", 2, &v) < 0,
          "sign or blank");
    CHECK(parse_u64("5 ", 2, &v) < 0 && parse_u64("5\0", 2, &v) < 0, "trailing junk");
    CHECK(parse_u64("123", 2, &v) == 0 && v == 12, "length is honoured");
}

/* seq_parse: the one seq rule (util.h) of client input, Redis replies and
 * Postgres rows: 1-19 digits, no leading zero, at most INT64_MAX */
static void test_seq(void)
{
    uint64_t v = 7;
    CHECK(seq_parse("0", 1, &v) == 0 && v == 0, "0 (callers where 0 is not a seq refuse it)");
    CHECK(seq_parse("1", 1, &v) == 0 && v == 1, "1");
    CHECK(seq_parse("9223372036854775807", 19, &v) == 0 && v == 9223372036854775807ull &&
          v == SEQ_MAX, "INT64_MAX is a seq");
    v = 7;
    CHECK(seq_parse("9223372036854775808", 19, &v) < 0 && v == 7, "INT64_MAX + 1 refused, *out untouched");
    CHECK(seq_parse("9999999999999999999", 19, &v) < 0, "19 nines refused");
    CHECK(seq_parse("18446744073709551615", 20, &v) < 0, "UINT64_MAX (20 digits) refused");
    CHECK(seq_parse("10000000000000000000", 20, &v) < 0, "20 digits refused");
    CHECK(seq_parse("01", 2, &v) < 0 && seq_parse("00", 2, &v) < 0 &&
          seq_parse("0000000000000000005", 19, &v) < 0, "leading zeros refused");
    CHECK(seq_parse("", 0, &v) < 0 && seq_parse(NULL, 1, &v) < 0, "empty");
    CHECK(seq_parse("+5", 2, &v) < 0 && seq_parse("-5", 2, &v) < 0 && seq_parse(" 5", 2, &v) < 0 &&
          seq_parse("5 ", 2, &v) < 0 && seq_parse("5\n", 2, &v) < 0, "sign, blank, junk");
    CHECK(seq_parse("123", 2, &v) == 0 && v == 12, "length is honoured");
}

static void test_http(void)
{
    char room[CHAT_ROOM_MAX + 1];
    http_room_route rt = 0;
    CHECK(http_parse_room_path("lobby/messages", room, &rt) == 0 && rt == HTTP_ROOM_MESSAGES &&
          strcmp(room, "lobby") == 0, "messages");
    CHECK(http_parse_room_path("a.b-c_d/presence", room, &rt) == 0 && rt == HTTP_ROOM_PRESENCE &&
          strcmp(room, "a.b-c_d") == 0, "presence");
    CHECK(http_parse_room_path("lobby", room, &rt) == 404, "no slash");
    CHECK(http_parse_room_path("lobby/messages/", room, &rt) == 404, "trailing slash");
    CHECK(http_parse_room_path("lobby/other", room, &rt) == 404, "unknown sub-route");
    CHECK(http_parse_room_path("/messages", room, &rt) == 400, "empty room");
    CHECK(http_parse_room_path("a b/messages", room, &rt) == 400, "bad room");
    CHECK(http_parse_room_path("../messages", room, &rt) == 400 &&
          http_parse_room_path("./presence", room, &rt) == 400, "dot-segments are no rooms");
    CHECK(http_parse_room_path(".../messages", room, &rt) == 0 && !strcmp(room, "..."), "... is a room");
    char big[100];
    memset(big, 'r', 65);
    strcpy(big + 65, "/messages");
    CHECK(http_parse_room_path(big, room, &rt) == 400, "65-char room");
    big[64] = '/';
    strcpy(big + 64, "/messages");
    CHECK(http_parse_room_path(big, room, &rt) == 0 && strlen(room) == 64, "64-char room");

    /* the methods of the plain routes (one table): OPTIONS, a CORS
     * preflight, under /rooms/ only; HEAD wherever GET is */
    unsigned g = 1u << HM_GET, o = 1u << HM_OPTIONS;
    CHECK(http_route_methods("/rooms/lobby/messages") == (g | o) && http_route_methods("/rooms/unread") == (g | o) &&
          http_route_methods("/rooms/lobby/nope") == (g | o), "/rooms/: GET and the preflight");
    CHECK(http_route_methods("/healthz") == g && http_route_methods("/readyz") == g &&
          http_route_methods("/metrics") == g && http_route_methods("/dev/token") == g &&
          http_route_methods("/ws/lobby") == g && http_route_methods("/") == g &&
          http_route_methods("/rooms") == g && http_route_methods("/healthz/x") == g, "the others: GET");
    CHECK(httpd_method_allowed(g, HM_GET) && httpd_method_allowed(g, HM_HEAD) &&
          !httpd_method_allowed(g, HM_OPTIONS) && !httpd_method_allowed(g, HM_POST) &&
          !httpd_method_allowed(g, HM_OTHER) && httpd_method_allowed(g | o, HM_OPTIONS) &&
          !httpd_method_allowed(1u << HM_POST, HM_HEAD), "HEAD where GET is");
    char allow[64];
    httpd_allow_header(g | o, allow, sizeof allow);
    CHECK(!strcmp(allow, "GET, HEAD, OPTIONS"), "Allow with the preflight: %s", allow);
    httpd_allow_header((1u << HM_PUT) | (1u << HM_DELETE), allow, sizeof allow);
    CHECK(!strcmp(allow, "PUT, DELETE"), "Allow: %s", allow);

    uint64_t s = 0;
    CHECK(http_parse_cursor("c1", &s) == 0 && s == 1, "c1");
    CHECK(http_parse_cursor("c7fffffffffffffff", &s) == 0 && s == SEQ_MAX, "max cursor: INT64_MAX");
    CHECK(http_parse_cursor("c8000000000000000", &s) < 0 && http_parse_cursor("cffffffffffffffff", &s) < 0,
          "a cursor beyond INT64_MAX is no seq");
    CHECK(http_parse_cursor("c10000000000000000", &s) < 0, "17 hex digits");
    CHECK(http_parse_cursor("c0", &s) < 0 && http_parse_cursor("c", &s) < 0 &&
          http_parse_cursor("", &s) < 0 && http_parse_cursor("cA", &s) < 0 &&
          http_parse_cursor("1", &s) < 0, "bad cursors");

    int l = 0;
    CHECK(http_parse_limit("1", &l) == 0 && l == 1, "1");
    CHECK(http_parse_limit("200", &l) == 0 && l == 200, "200");
    CHECK(http_parse_limit("0200", &l) == 0 && l == 200, "leading zero");
    CHECK(http_parse_limit("201", &l) < 0 && http_parse_limit("0", &l) < 0, "range");
    CHECK(http_parse_limit("", &l) < 0 && http_parse_limit("+5", &l) < 0 &&
          http_parse_limit(" 5", &l) < 0 && http_parse_limit("5x", &l) < 0 &&
          http_parse_limit("99999999999999999999999", &l) < 0, "junk");

    /* since= used to go through strtoull: "+5", " 5" and an overflowing
     * value (read as UINT64_MAX) were accepted */
    CHECK(http_parse_since("0", &s) == 0 && s == 0, "since 0");
    CHECK(http_parse_since("42", &s) == 0 && s == 42, "since 42");
    CHECK(http_parse_since("+5", &s) < 0 && http_parse_since(" 5", &s) < 0 &&
          http_parse_since("-1", &s) < 0 && http_parse_since("", &s) < 0, "since sign/blank");
    CHECK(http_parse_since("18446744073709551616", &s) < 0, "since overflow");
    /* the seq rule: UINT64_MAX (the bus' "no since") and anything above
     * INT64_MAX were accepted and wrapped */
    CHECK(http_parse_since("9223372036854775807", &s) == 0 && s == SEQ_MAX, "since INT64_MAX");
    CHECK(http_parse_since("9223372036854775808", &s) < 0 &&
          http_parse_since("18446744073709551615", &s) < 0, "since beyond INT64_MAX");
    CHECK(http_parse_since("007", &s) < 0, "since with a leading zero");
}

/* httpd_bearer: RFC 6750 2.1 "Bearer" 1*SP b64token */
static void bearer(const char *h, int want, const char *tok)
{
    char out[64];
    int r = httpd_bearer(h, strlen(h), out, sizeof out);
    CHECK(r == want && (want != 1 || !strcmp(out, tok)), "'%s' -> %d '%s', want %d '%s'", h, r,
          r == 1 ? out : "", want, tok ? tok : "");
}

static void test_bearer(void)
{
    bearer("Bearer abc.def", 1, "abc.def");
    bearer("bearer abc", 1, "abc");
    bearer("BEARER abc", 1, "abc");
    bearer("Bearer   abc", 1, "abc");       /* several spaces: was 0 (a 401) */
    bearer("Bearer\tabc", 1, "abc");
    bearer("Bearer abc  ", 1, "abc");
    bearer("Bearer ", 0, NULL);
    bearer("Bearer    ", 0, NULL);
    bearer("Bearerabc", 0, NULL);
    bearer("Basic abc", 0, NULL);
    bearer("Bear abc", 0, NULL);
    char big[100];
    snprintf(big, sizeof big, "Bearer %070d", 0);
    bearer(big, -1, NULL);                  /* does not fit: refused, not cut */
}

static void test_bus_replies(void)
{
    bus_entry e[4];
    uint64_t seq = 0;
    redisReply *r = RESP("*4\r\n$4\r\n3\nab\r\n:4\r\n$2\r\nxx\r\n$3\r\n5\n}\r\n");
    size_t n = bus_reply_entries(r, e, 4);
    CHECK(n == 2 && e[0].seq == 3 && e[0].len == 2 && memcmp(e[0].tail, "ab", 2) == 0 &&
          e[1].seq == 5, "entries skip malformed elements (n=%zu)", n);
    CHECK(bus_reply_replay(r, 2, 3, e) == 1, "replay stops at the first break");
    CHECK(bus_reply_replay(r, 3, 3, e) == 0, "replay must start at since+1");
    freeReplyObject(r);
    /* entries follow the seq rule (util.h seq_parse): no 0, no leading
     * zero, nothing above INT64_MAX (the last was read as a 20-digit u64) */
    r = RESP("*5\r\n$3\r\n0\na\r\n$4\r\n07\na\r\n$21\r\n9223372036854775808\na\r\n"
             "$22\r\n18446744073709551615\na\r\n$21\r\n9223372036854775807\na\r\n");
    n = bus_reply_entries(r, e, 4);
    CHECK(n == 1 && e[0].seq == SEQ_MAX, "only the INT64_MAX entry is a seq (n=%zu)", n);
    freeReplyObject(r);
    CHECK(bus_parse_entry("\nx", 2, e) < 0 && bus_parse_entry("5", 1, e) < 0 &&
          bus_parse_entry("5\n", 2, e) == 0 && e[0].seq == 5 && e[0].len == 0, "entry edges");
    /* a room's control message: "!seed <16 hex>" is a seed ask, other
     * "!..." unknown (ignored), anything else (an entry) none */
    char tag[BUS_TAG_LEN + 1];
    CHECK(bus_reply_room_control("!seed 0123456789abcdef", 22, tag) == BUS_CTL_SEED_ASK &&
          !strcmp(tag, "0123456789abcdef"), "seed ask");
    CHECK(bus_reply_room_control("!seed 0123456789abcdeF", 22, tag) == BUS_CTL_UNKNOWN &&
          bus_reply_room_control("!seed 0123456789abcde", 21, tag) == BUS_CTL_UNKNOWN &&
          bus_reply_room_control("!seed 0123456789abcdef0", 23, tag) == BUS_CTL_UNKNOWN &&
          bus_reply_room_control("!seed 0123456789abc\0ef", 22, tag) == BUS_CTL_UNKNOWN &&
          bus_reply_room_control("!resync 3", 9, tag) == BUS_CTL_UNKNOWN &&
          bus_reply_room_control("!", 1, tag) == BUS_CTL_UNKNOWN, "unknown control messages");
    CHECK(bus_reply_room_control("4\n!seed", 7, tag) == -1 && bus_reply_room_control("", 0, tag) == -1 &&
          bus_reply_room_control(NULL, 0, tag) == -1, "not control messages");

    char room[CHAT_ROOM_MAX + 1], kind[16];
    CHECK(bus_reply_channel("chat:", "chat:{lobby}:msg", 16, room, kind, sizeof kind) == 0 &&
          !strcmp(room, "lobby") && !strcmp(kind, "msg"), "channel");
    /* before: any bytes between the braces were taken as a room name */
    CHECK(bus_reply_channel("chat:", "chat:{lo by}:msg", 16, room, kind, sizeof kind) < 0, "invalid room");
    CHECK(bus_reply_channel("chat:", "chat:{lo\"y}:msg", 16, room, kind, sizeof kind) < 0, "quote in room");
    CHECK(bus_reply_channel("chat:", "chat:{lobby}:", 13, room, kind, sizeof kind) < 0, "no kind");
    CHECK(bus_reply_channel("chat:", "chat:{lobby}:m\0g", 16, room, kind, sizeof kind) < 0, "NUL in kind");
    /* a database's namespace: its own channels only */
    CHECK(bus_reply_channel("chat:db3:", "chat:db3:{lobby}:msg", 20, room, kind, sizeof kind) == 0 &&
          !strcmp(room, "lobby") && !strcmp(kind, "msg"), "channel of database 3");
    CHECK(bus_reply_channel("chat:db3:", "chat:{lobby}:msg", 16, room, kind, sizeof kind) < 0 &&
          bus_reply_channel("chat:", "chat:db3:{lobby}:msg", 20, room, kind, sizeof kind) < 0 &&
          bus_reply_channel("chat:db3:", "chat:db31:{lobby}:msg", 21, room, kind, sizeof kind) < 0,
          "another database's channel is not ours");

    size_t items = 0;
    /* the sweep: {1, more, cut, room, seq, ...}, then the settle's triples */
    int more = -1;
    uint64_t cut = 0;
    r = RESP("*7\r\n:1\r\n:1\r\n:1700000000000\r\n$5\r\nlobby\r\n$1\r\n4\r\n$5\r\nlo by\r\n$1\r\n5\r\n");
    CHECK(bus_reply_check_round(r, &more, &cut, &items) == 1 && more == 1 && items == 2 &&
          cut == 1700000000000ULL, "check round");
    CHECK(bus_reply_check_item(r, 0, room, &seq) == 0 && seq == 4 && !strcmp(room, "lobby"), "pair");
    CHECK(bus_reply_check_item(r, 1, room, &seq) < 0, "invalid room in a pair refused");
    CHECK(bus_reply_check_item(r, 2, room, &seq) < 0, "past the end");
    freeReplyObject(r);
    r = RESP("*5\r\n:1\r\n:0\r\n:5\r\n$5\r\nlobby\r\n$2\r\n4x\r\n");
    CHECK(bus_reply_check_round(r, &more, &cut, &items) == 1 && more == 0 && items == 1 && cut == 5,
          "round, no more");
    CHECK(bus_reply_check_item(r, 0, room, &seq) < 0, "seq \"4x\" refused in a pair");
    freeReplyObject(r);
    r = RESP("*7\r\n:1\r\n:0\r\n:5\r\n$5\r\nlobby\r\n$19\r\n9223372036854775808\r\n"
             "$5\r\nlobby\r\n$1\r\n0\r\n");
    CHECK(bus_reply_check_round(r, &more, &cut, &items) == 1 && items == 2, "round of two");
    CHECK(bus_reply_check_item(r, 0, room, &seq) < 0, "a seq above INT64_MAX refused in a pair");
    CHECK(bus_reply_check_item(r, 1, room, &seq) < 0, "seq 0 refused in a pair");
    freeReplyObject(r);
    r = RESP("*1\r\n:1\r\n");
    CHECK(bus_reply_check_round(r, &more, &cut, &items) < 0, "a round without its more flag");
    freeReplyObject(r);
    r = RESP("*4\r\n:1\r\n:0\r\n$5\r\nlobby\r\n$1\r\n4\r\n");
    CHECK(bus_reply_check_round(r, &more, &cut, &items) < 0, "a round without its cut");
    freeReplyObject(r);
    r = RESP("*3\r\n:1\r\n:0\r\n:-1\r\n");
    CHECK(bus_reply_check_round(r, &more, &cut, &items) < 0, "a negative cut");
    freeReplyObject(r);
    r = RESP("*3\r\n:1\r\n:3\r\n:5\r\n");
    CHECK(bus_reply_check_round(r, &more, &cut, &items) == 1 && more == 3 && items == 0,
          "both limits met");
    freeReplyObject(r);
    r = RESP("*3\r\n:1\r\n:4\r\n:5\r\n");
    CHECK(bus_reply_check_round(r, &more, &cut, &items) < 0, "unknown more flags");
    freeReplyObject(r);
    r = RESP("*1\r\n:0\r\n");
    CHECK(bus_reply_check_round(r, &more, &cut, &items) == 0, "another node's check round");
    freeReplyObject(r);
    r = RESP("*6\r\n$5\r\nlobby\r\n$1\r\n4\r\n$4\r\n4\nhi\r\n$5\r\nlobby\r\n$1\r\n6\r\n$0\r\n\r\n");
    CHECK(bus_reply_settle_items(r) == 2, "settle items");
    CHECK(bus_reply_settle_item(r, 0, room, &seq, e) == 1 && seq == 4 && e[0].len == 2, "settle entry");
    CHECK(bus_reply_settle_item(r, 1, room, &seq, e) == 0 && seq == 6, "settle: lost");
    CHECK(bus_reply_settle_item(r, 2, room, &seq, e) < 0, "settle: past the end");
    freeReplyObject(r);
    r = RESP("*3\r\n$5\r\nlobby\r\n$1\r\n5\r\n$4\r\n4\nhi\r\n");
    CHECK(bus_reply_settle_item(r, 0, room, &seq, e) < 0, "settle entry of another seq refused");
    freeReplyObject(r);
}

static void test_redis_url(void)
{
    redis_url u;
    char err[128];
    CHECK(redis_url_parse("redis://alice:s3cr%40t@[::1]:6380/2", &u, err, sizeof err) == 0 &&
          !strcmp(u.user, "alice") && !strcmp(u.pass, "s3cr@t") && !strcmp(u.seeds[0].host, "::1") &&
          u.seeds[0].port == 6380 && u.db == 2, "full URL");
    /* found by fuzz_redis_url (in the old bus_url.c): %00 cut what AUTH sends */
    CHECK(redis_url_parse("redis://:a%00b@h", &u, err, sizeof err) < 0, "%%00 in the password");
    CHECK(redis_url_parse("redis://%00:x@h", &u, err, sizeof err) < 0, "%%00 in the user");
    /* a unix socket: the path in host, port 0, db as an option */
    CHECK(redis_url_parse("unix:///run/redis/redis.sock", &u, err, sizeof err) == 0 && u.nseeds == 1 &&
          !strcmp(u.seeds[0].host, "/run/redis/redis.sock") && u.seeds[0].port == 0 && u.db == 0 &&
          !u.tls && !u.cluster, "unix socket: %s", err);
    CHECK(redis_url_parse("unix://:pw%40x@/tmp/r%20s.sock?db=3", &u, err, sizeof err) == 0 &&
          !strcmp(u.pass, "pw@x") && !u.user[0] && !strcmp(u.seeds[0].host, "/tmp/r s.sock") &&
          u.db == 3, "unix socket with a password and a db: %s", err);
    char fmt[300];
    redis_addr_format(&u.seeds[0], fmt, sizeof fmt);
    CHECK(!strcmp(fmt, "unix:/tmp/r s.sock"), "a socket's address reads %s", fmt);
    static const char *bad_unix[] = {
        "unix://",                          /* no path */
        "unix://run/redis.sock",            /* not absolute */
        "unix:///r.sock?db=x",              /* bad db */
        "unix:///r.sock?db=",
        "unix:///r.sock?ssl_ca_certs=/ca",  /* no TLS over a socket */
        "unix:///r.sock?timeout=1",         /* unknown option */
        "unix:///r.sock#frag",
        "unix:///a%00b",                    /* NUL cuts the path */
        "redis://h?db=2",                   /* db as an option is the socket's form only */
    };
    for (size_t i = 0; i < sizeof bad_unix / sizeof *bad_unix; i++)
        CHECK(redis_url_parse(bad_unix[i], &u, err, sizeof err) < 0, "refused: %s", bad_unix[i]);
    char longp[160] = "unix:///";
    memset(longp + 8, 'a', 107);            /* "/" + 107 = 108 bytes: one too many */
    CHECK(redis_url_parse(longp, &u, err, sizeof err) < 0, "a path longer than sun_path");
    longp[8 + 106] = 0;                     /* 107 bytes with its "/" */
    CHECK(redis_url_parse(longp, &u, err, sizeof err) == 0 && strlen(u.seeds[0].host) == 107,
          "a path of 107 bytes: %s", err);
}

static void test_redis_replies(void)
{
    redis_redirect rd;
    redisReply *r = RESP("-MOVED 3999 127.0.0.1:6381\r\n");
    CHECK(redis_reply_error(r, &rd) == REDIS_E_MOVED && rd.slot == 3999 && rd.addr.port == 6381 &&
          !strcmp(rd.addr.host, "127.0.0.1"), "MOVED");
    freeReplyObject(r);
    /* found by fuzz_resp: a NUL in the redirect's host cut it to "" */
    r = RESP("-MOVED 1 \0\0l1:7000\r\n");
    CHECK(redis_reply_error(r, &rd) == REDIS_E_OTHER, "NUL in a redirect host");
    freeReplyObject(r);
    uint64_t v = 0;
    r = RESP("$5\r\n12abc\r\n");
    CHECK(redis_reply_u64(r, &v) < 0, "12abc");
    freeReplyObject(r);
}

/* INFO memory (the eviction warning, redis_client.c): only a Redis that
 * says it evicts is named; a malformed reply is no warning */
static void test_info_evicts(void)
{
    static const struct { const char *body; int evicts; } cases[] = {
        {"# Memory\r\nused_memory:1000\r\nmaxmemory:104857600\r\nmaxmemory_human:100.00M\r\n"
         "maxmemory_policy:volatile-lru\r\nallocator_frag_ratio:1.0\r\n", 1},
        {"# Memory\r\nmaxmemory:1\r\nmaxmemory_policy:allkeys-lfu", 1},          /* last line, no CRLF */
        {"# Memory\r\nmaxmemory:0\r\nmaxmemory_policy:volatile-lru\r\n", 0},    /* no limit */
        {"# Memory\r\nmaxmemory:100\r\nmaxmemory_policy:noeviction\r\n", 0},
        {"# Memory\r\nmaxmemory_policy:volatile-lru\r\n", 0},                    /* no maxmemory */
        {"# Memory\r\nmaxmemory:100\r\n", 0},                                    /* no policy */
        {"# Memory\r\nmaxmemory:100mb\r\nmaxmemory_policy:volatile-lru\r\n", 0},
        {"# Memory\r\nmaxmemory:99999999999999999999999\r\nmaxmemory_policy:allkeys-lru\r\n", 0},
        {"# Memory\r\nmaxmemory:\r\nmaxmemory_policy:allkeys-lru\r\n", 0},
        {"# Memory\r\nmaxmemory:100\r\nmaxmemory_policy:\r\n", 0},              /* empty policy */
        {"# Memory\r\nmaxmemory:100\r\nmaxmemory_policy:", 0},                    /* cut short */
        /* LF alone ends a line too: "noeviction" then more lines */
        {"# Memory\nmaxmemory:100\nmaxmemory_policy:noeviction\nused_memory:1\n", 0},
        {"# Memory\r\nmaxmemory:100\r\nmaxmemory_policy:\x01\xff\r\n", 0},      /* binary */
        {"maxmemory:100\r\nmaxmemory_policy:allkeys-lru\r\n", 0},                 /* not "\nname:" */
        {"", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char buf[512];
        size_t bl = strlen(cases[i].body);
        int n = snprintf(buf, sizeof buf, "$%zu\r\n%s\r\n", bl, cases[i].body);
        redisReply *r = resp(buf, (size_t)n);
        uint64_t max = 0;
        const char *pol = NULL;
        size_t pl = 0;
        int got = r ? redis_reply_info_evicts(r, &max, &pol, &pl) : -1;
        CHECK(got == cases[i].evicts, "INFO case %zu: %d, want %d", i, got, cases[i].evicts);
        if (got == 1)
            CHECK(max >= 1 && pol && pl >= 1 && pol >= r->str && pol + pl <= r->str + r->len,
                  "INFO case %zu: maxmemory %llu, policy %.*s", i, (unsigned long long)max, (int)pl, pol);
        if (r) freeReplyObject(r);
    }
    /* not a string: an error, an array, nothing */
    redisReply *r = RESP("-ERR unknown\r\n");
    uint64_t max = 0;
    const char *pol = NULL;
    size_t pl = 0;
    CHECK(redis_reply_info_evicts(r, &max, &pol, &pl) == 0, "an error reply");
    freeReplyObject(r);
    r = RESP("*1\r\n$12\r\nmaxmemory:10\r\n");
    CHECK(redis_reply_info_evicts(r, &max, &pol, &pl) == 0, "an array");
    freeReplyObject(r);
    CHECK(redis_reply_info_evicts(NULL, &max, &pol, &pl) == 0, "NULL");
}

static int g_calls;
static int each(void *ud, const char *room, const char *ev, const char *user, const char *name)
{
    (void)ud;
    CHECK(room && ev && user && name && room_name_valid(room, strlen(room)) &&
          (!strcmp(ev, "join") || !strcmp(ev, "leave")), "well-formed transition");
    g_calls++;
    return 0;
}

static void test_presence_replies(void)
{
    const char *bad = NULL;
    int more = -1;
    g_calls = 0;
    redisReply *r = RESP("*8\r\n$1\r\nr\r\n$4\r\njoin\r\n$1\r\nu\r\n$1\r\nU\r\n"
                         "$1\r\nq\r\n$3\r\nbad\r\n$0\r\n\r\n$0\r\n\r\n");
    CHECK(pstore_redis_apply_reply(r, each, NULL, &bad) == 1 && g_calls == 1 && bad &&
          !strcmp(bad, "q"), "apply: one join, one bad room");
    freeReplyObject(r);
    /* before: a room or an event from the reply went as it was into the
     * presence frame's JSON ("room":"%s", "event":"%s") */
    g_calls = 0;
    r = RESP("*8\r\n$3\r\na\"b\r\n$4\r\njoin\r\n$1\r\nu\r\n$1\r\nU\r\n"
             "$1\r\nr\r\n$6\r\njoin\"x\r\n$1\r\nu\r\n$1\r\nU\r\n");
    CHECK(pstore_redis_apply_reply(r, each, NULL, &bad) == 0 && g_calls == 0, "apply: bad room/event");
    freeReplyObject(r);
    g_calls = 0;
    r = RESP("*4\r\n$1\r\nr\r\n$4\r\njoin\r\n:1\r\n:2\r\n");
    CHECK(pstore_redis_apply_reply(r, each, NULL, &bad) == 0 && g_calls == 0, "apply: integers");
    freeReplyObject(r);
    g_calls = 0;
    r = RESP("*4\r\n:3\r\n:5\r\n$1\r\nu\r\n$1\r\nU\r\n");
    CHECK(pstore_redis_sweep_reply(r, each, NULL, &more) == 0 && more == 1 && g_calls == 0,
          "sweep: integer room");
    freeReplyObject(r);
    g_calls = 0;
    r = RESP("*4\r\n:2\r\n$1\r\nr\r\n$1\r\nu\r\n$1\r\nU\r\n");
    CHECK(pstore_redis_sweep_reply(r, each, NULL, &more) == 1 && more == 0 && g_calls == 1,
          "sweep: one leave");
    freeReplyObject(r);
    r = RESP("*1\r\n:0\r\n");
    CHECK(pstore_redis_sweep_reply(r, each, NULL, &more) < 0, "sweep: another node's round");
    freeReplyObject(r);
    presence_user u[3];
    r = RESP("*5\r\n$1\r\nu\r\n$1\r\nU\r\n:3\r\n$1\r\nV\r\n$1\r\nx\r\n");
    CHECK(pstore_redis_list_reply(r, u) == 1 && !strcmp(u[0].user, "u") && !strcmp(u[0].name, "U"),
          "list: only string pairs");
    freeReplyObject(r);
}

static void test_utf8(void)
{
    CHECK(utf8_valid("", 0) && utf8_valid("caf\xc3\xa9 \xf0\x9f\x98\x80", 10), "valid");
    CHECK(!utf8_valid("a\0b", 3), "NUL");
    CHECK(!utf8_valid("caf\xc3", 4), "cut sequence");
    CHECK(!utf8_valid("\xc0\xaf", 2) && !utf8_valid("\xe0\x80\xaf", 3), "overlong");
    CHECK(!utf8_valid("\xed\xa0\x80", 3), "surrogate");
    CHECK(!utf8_valid("\xf4\x90\x80\x80", 4) && !utf8_valid("\xff", 1), "beyond U+10FFFF");
    CHECK(utf8_seq("\xf0\x9f\x98\x80", 4) == 4 && utf8_seq("\xf0\x9f\x98", 3) == 0, "seq");
    /* utf8_cut: at most max bytes, never inside a character */
    CHECK(utf8_cut("abc", 5) == 3 && utf8_cut("abc", 3) == 3 && utf8_cut("abcd", 3) == 3, "cut ascii");
    CHECK(utf8_cut("a\xc3\xa9", 2) == 1, "cut before a 2-byte character, not inside it");
    CHECK(utf8_cut("\xf0\x9f\x98\x80\xf0\x9f\x98\x80", 6) == 4, "cut after a whole emoji");
    CHECK(utf8_cut("\xf0\x9f\x98\x80", 3) == 0 && utf8_cut("", 0) == 0, "nothing fits");
    /* found by fuzz_script: ill-formed bytes went into frames as they were */
    char out[64];
    long w = json_escape(out, sizeof out, "a\xc3" "b\xff\xe2\x82\xac", 7);
    CHECK(w == 19 && memcmp(out, "\"a\\ufffdb\\ufffd\xe2\x82\xac\"", 19) == 0,
          "ill-formed -> \\ufffd (%ld '%.*s')", w, (int)(w > 0 ? w : 0), out);
    CHECK(json_escape(out, 8, "\xff", 1) == 8 && json_escape(out, 7, "\xff", 1) < 0, "\\ufffd fits");
}

static void test_script_return(void)
{
    char err[512];
    script_host *h = script_new(CHATD_FIXTURES "/policies/fuzz", "n", err, sizeof err);
    CHECK(h, "fuzz policy: %s", err);
    if (!h) return;
    /* program (see policy.lua): 1 value, a string of n bytes */
    struct { const char *hex, *what; script_verdict v; const char *body_or_reason; } T[] = {
        {"010305636166c3a9", "valid replacement", SCRIPT_REPLACE, "caf\xc3\xa9"},
        {"010304636166c3", "cut replacement", SCRIPT_REJECT, "policy script failed"},
        {"01030361006200", "replacement with NUL", SCRIPT_REJECT, "policy script failed"},
        {"030203016e0306ff6f6be282ac", "reason with a bad byte", SCRIPT_REJECT, "?ok\xe2\x82\xac"},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        script_ctx c = {.user = "u", .name = T[i].hex, .room = "lobby", .node = "n", .now_ms = 1,
                        .source = "ws"};
        script_result r;
        script_verdict v = script_on_message(h, &c, "x", 1, NULL, &r);
        const char *got = v == SCRIPT_REPLACE ? r.body : r.reason;
        CHECK(v == T[i].v && got && strcmp(got, T[i].body_or_reason) == 0, "%s: verdict %d '%s'",
              T[i].what, v, got ? got : "");
        script_result_clear(&r);
    }
    script_free(h);
}

/* The error bodies the listener sends as strings (listener.c room_gate):
 * each a C string of its length, also in a reused heap block (before: the
 * server API's was not NUL-terminated, and the listener's strlen() ran on
 * into the heap: another answer's token went out after the JSON) */
static void test_error_bodies(void)
{
    size_t len;
    for (int i = 0; i < 4; i++) {
        /* the block httpd_error_body gets next, full of 'x' (volatile: a
         * store before free() is not optimized away) */
        volatile char *junk = malloc(6 * (11 + 17) + 48);
        for (size_t k = 0; junk && k < 6 * (11 + 17) + 48; k++) junk[k] = 'x';
        free((void *)junk);
        char *b = httpd_error_body("bad_request", "invalid room name", &len);
        CHECK(b && strlen(b) == len, "API error body: strlen %zu, length %zu", b ? strlen(b) : 0, len);
        CHECK(b && !memcmp(b, "{\"error\":{\"code\":\"bad_request\",\"message\":\"invalid room name\"}}", len));
        free(b);
    }
    char j[320];
    len = http_error_json(j, sizeof j, "invalid room name");
    CHECK(len == 29 && !memcmp(j, "{\"error\":\"invalid room name\"}", 29));
}

int main(void)
{
    test_error_bodies();
    test_u64();
    test_seq();
    test_http();
    test_bearer();
    test_bus_replies();
    test_redis_replies();
    test_info_evicts();
    test_redis_url();
    test_presence_replies();
    test_utf8();
    test_script_return();
    return check_summary("test_parse");
}
