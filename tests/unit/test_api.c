/* test_api: the pure parts of the server API: API keys (parse, constant-time
 * check, fingerprints, the Authorization value), routes and methods, body
 * validation (publish with meta as given, ban, disconnect), the raw member
 * scanner behind meta, the ban table with expiry, the in-process
 * cluster limits, and the control channel over an in-process bus (a
 * request gathers this node's answer; cancel; a bus without a channel). */
#include "check.h"
#include "api_parse.h"
#include "apikey.h"
#include "bans.h"
#include "bus.h"
#include "climit.h"
#include "ctl.h"
#include "httpd.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static void test_keys(void)
{
    char err[128] = "";
    /* a short key is accepted (a warning is logged); an empty list is not */
    apikeys *s = apikeys_new("0123456789abcdef, test-key", err, sizeof err);
    REQUIRE(s != NULL, "%s", err);
    CHECK(apikeys_count(s) == 2);
    CHECK(apikeys_check(s, "test-key", 8, NULL) == 1);
    CHECK(apikeys_check(s, "test-ke", 7, NULL) == 0);
    apikeys_free(s);
    CHECK(apikeys_new(" , ,", err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "no key");
    CHECK(apikeys_new("", err, sizeof err) == NULL);
    apikeys *k = apikeys_new(" 0123456789abcdef , second-key-of-the-set ,", err, sizeof err);
    REQUIRE(k != NULL, "%s", err);
    CHECK(apikeys_count(k) == 2);
    char fp1[APIKEY_FP_LEN + 1] = "", fp2[APIKEY_FP_LEN + 1] = "", fp3[APIKEY_FP_LEN + 1] = "x";
    CHECK(apikeys_check(k, "0123456789abcdef", 16, fp1) == 1);
    CHECK(apikeys_check(k, "second-key-of-the-set", 21, fp2) == 1);
    CHECK(strlen(fp1) == APIKEY_FP_LEN && strlen(fp2) == APIKEY_FP_LEN && strcmp(fp1, fp2) != 0);
    /* the fingerprint is not the key, and is the same each time */
    CHECK(!strstr(fp1, "0123456789"));
    CHECK(apikeys_check(k, "0123456789abcdef", 16, fp3) == 1 && strcmp(fp1, fp3) == 0);
    /* near misses: one byte off, a prefix, longer, empty, with blanks */
    CHECK(apikeys_check(k, "0123456789abcdeF", 16, NULL) == 0);
    CHECK(apikeys_check(k, "0123456789abcde", 15, NULL) == 0);
    CHECK(apikeys_check(k, "0123456789abcdef0", 17, NULL) == 0);
    CHECK(apikeys_check(k, "", 0, NULL) == 0);
    CHECK(apikeys_check(k, " 0123456789abcdef", 17, NULL) == 0);
    CHECK(apikeys_check(NULL, "0123456789abcdef", 16, NULL) == 0);
    apikeys_free(k);
    /* the same key twice: one fingerprint */
    k = apikeys_new("0123456789abcdef,0123456789abcdef", err, sizeof err);
    REQUIRE(k != NULL);
    CHECK(apikeys_check(k, "0123456789abcdef", 16, fp3) == 1 && strcmp(fp1, fp3) == 0);
    apikeys_free(k);

    const char *key;
    size_t len;
    CHECK(apikey_from_header("Bearer abc", &key, &len) == 1 && len == 3 && !strncmp(key, "abc", 3));
    CHECK(apikey_from_header("bearer   abc  ", &key, &len) == 1 && len == 3);
    CHECK(apikey_from_header("Basic abc", &key, &len) == 0);
    CHECK(apikey_from_header("Bearer", &key, &len) == 0);
    CHECK(apikey_from_header("Bearer    ", &key, &len) == 0);
    CHECK(apikey_from_header("Bearerabc", &key, &len) == 0);
}

static void test_routes(void)
{
    api_route r;
    char err[128];
    CHECK(api_route_match("rooms/lobby/messages", &r, err, sizeof err) == 0);
    CHECK(r.route == AR_PUBLISH && !strcmp(r.room, "lobby") && r.allow == (1u << HM_POST));
    CHECK(api_route_match("rooms/a.b-c_d", &r, err, sizeof err) == 0);
    CHECK(r.route == AR_ROOM && !strcmp(r.room, "a.b-c_d") && r.allow == (1u << HM_GET));
    CHECK(api_route_match("rooms/lobby/messages/42", &r, err, sizeof err) == 0);
    CHECK(r.route == AR_DELETE_MSG && r.seq == 42 && r.allow == (1u << HM_DELETE));
    CHECK(api_route_match("rooms/lobby/messages/0", &r, err, sizeof err) == -2);
    CHECK_CONTAINS(err, "seq");
    CHECK(api_route_match("rooms/lobby/messages/-1", &r, err, sizeof err) == -2);
    CHECK(api_route_match("rooms/lobby/messages/99999999999999999999", &r, err, sizeof err) == -2);
    /* the seq rule (util.h seq_parse) */
    CHECK(api_route_match("rooms/lobby/messages/9223372036854775807", &r, err, sizeof err) == 0 &&
          r.seq == 9223372036854775807ull);
    CHECK(api_route_match("rooms/lobby/messages/9223372036854775808", &r, err, sizeof err) == -2);
    CHECK(api_route_match("rooms/lobby/messages/042", &r, err, sizeof err) == -2);
    CHECK(api_route_match("rooms/bad room/messages", &r, err, sizeof err) == -2);
    CHECK_CONTAINS(err, "room");
    CHECK(api_route_match("rooms//messages", &r, err, sizeof err) == -2);
    CHECK(api_route_match("rooms/lobby/other", &r, err, sizeof err) == -1);
    CHECK(api_route_match("rooms/lobby/messages/1/x", &r, err, sizeof err) == -1);
    /* messages/ with no seq is no route (404), not the DELETE one (was 405) */
    CHECK(api_route_match("rooms/lobby/messages/", &r, err, sizeof err) == -1);
    CHECK(api_route_match("users/alice/disconnect", &r, err, sizeof err) == 0);
    CHECK(r.route == AR_DISCONNECT && !strcmp(r.user, "alice"));
    CHECK(api_route_match("users/a/b@c.d/ban", &r, err, sizeof err) == 0);
    CHECK(r.route == AR_BAN && !strcmp(r.user, "a/b@c.d") && r.allow == ((1u << HM_PUT) | (1u << HM_DELETE)));
    CHECK(api_route_match("users/\xc3\xa9l\xc3\xa8ve/ban", &r, err, sizeof err) == 0);
    CHECK(api_route_match("users//ban", &r, err, sizeof err) == -2);
    CHECK(api_route_match("users/a\tb/ban", &r, err, sizeof err) == -2);
    CHECK(api_route_match("users/\xc3/ban", &r, err, sizeof err) == -2);
    char longu[200];
    memset(longu, 'u', 128);
    snprintf(longu + 128, sizeof longu - 128, "/ban");
    char path[220];
    snprintf(path, sizeof path, "users/%s", longu);
    CHECK(api_route_match(path, &r, err, sizeof err) == -2);
    CHECK(api_route_match("users/alice", &r, err, sizeof err) == -1);
    CHECK(api_route_match("users/alice/kick", &r, err, sizeof err) == -1);
    CHECK(api_route_match("", &r, err, sizeof err) == -1);
    CHECK(api_route_match("nope", &r, err, sizeof err) == -1);
    char allow[64];
    httpd_allow_header((1u << HM_PUT) | (1u << HM_DELETE), allow, sizeof allow);
    CHECK_STR(allow, "PUT, DELETE");
    httpd_allow_header(1u << HM_POST, allow, sizeof allow);
    CHECK_STR(allow, "POST");
    httpd_allow_header(1u << HM_GET, allow, sizeof allow);
    CHECK_STR(allow, "GET, HEAD");
    CHECK_STR(api_route_name(AR_BAN), "ban");
    CHECK_STR(api_route_name(99), "none");
}

static int pub(const char *text, api_publish *p, char *err)
{
    return api_parse_publish(text, strlen(text), p, err, 160);
}

static void test_publish_body(void)
{
    api_publish p;
    char err[160];
    const char *ok = "{\"id\":\"m1\",\"user\":\"bot\",\"name\":\"Bot\",\"body\":\"hi\","
                     "\"meta\" : {\"b\": [1, 2.50, \"x\"],  \"a\":{}} }";
    REQUIRE(pub(ok, &p, err) == 0, "%s", err);
    CHECK_STR(p.id, "m1");
    CHECK_STR(p.user, "bot");
    CHECK_STR(p.name, "Bot");
    CHECK(p.body_len == 2 && !memcmp(p.body, "hi", 2));
    /* meta is the text as given: key order, spacing and 2.50 kept */
    CHECK_STR(p.meta, "{\"b\": [1, 2.50, \"x\"],  \"a\":{}}");
    CHECK(p.meta_len == strlen(p.meta));
    api_publish_clear(&p);
    /* the id: 1-64 characters whatever their bytes (the WebSocket frame's rule) */
    char eid[400] = "{\"user\":\"u\",\"body\":\"b\",\"id\":\"";
    for (int i = 0; i < 64; i++) strcat(eid, "\xc3\xa9");
    strcat(eid, "\"}");
    REQUIRE(pub(eid, &p, err) == 0, "64 e-acutes: %s", err);
    CHECK(strlen(p.id) == 128);
    api_publish_clear(&p);
    eid[strlen(eid) - 2] = 0;
    strcat(eid, "\xc3\xa9\"}");
    CHECK(pub(eid, &p, err) == -1, "65 characters refused");
    CHECK_CONTAINS(err, "id must be a string of 1-64 characters");
    /* name defaults to user; no meta */
    REQUIRE(pub("{\"id\":\"m1\",\"user\":\"bot\",\"body\":\"\"}", &p, err) == 0, "%s", err);
    CHECK_STR(p.name, "bot");
    CHECK(p.meta == NULL && p.body_len == 0);
    api_publish_clear(&p);
    /* an escaped key: still found (jansson's compact text) */
    REQUIRE(pub("{\"id\":\"m\",\"user\":\"u\",\"body\":\"b\",\"m\\u0065ta\":{\"k\":1}}", &p, err) == 0);
    CHECK_STR(p.meta, "{\"k\":1}");
    api_publish_clear(&p);
    /* a body with U+0000 inside a string is refused with a reason */
    CHECK(pub("{\"id\":\"m\",\"user\":\"u\",\"body\":\"a\\u0000b\"}", &p, err) == -1);
    CHECK_CONTAINS(err, "U+0000");
    CHECK(pub("{\"id\":\"m\\u0000\",\"user\":\"u\",\"body\":\"b\"}", &p, err) == -1);
    struct { const char *text, *why; } bad[] = {
        {"", "required"},
        {"not json", "invalid JSON"},
        {"[1,2]", "JSON object"},
        {"{\"user\":\"u\",\"body\":\"b\"}", "id"},
        {"{\"id\":\"\",\"user\":\"u\",\"body\":\"b\"}", "id"},
        {"{\"id\":7,\"user\":\"u\",\"body\":\"b\"}", "id"},
        {"{\"id\":\"12345678901234567890123456789012345678901234567890123456789012345\",\"user\":\"u\",\"body\":\"b\"}", "id"},
        {"{\"id\":\"m\",\"body\":\"b\"}", "user"},
        {"{\"id\":\"m\",\"user\":\"\",\"body\":\"b\"}", "user"},
        {"{\"id\":\"m\",\"user\":\"a\\nb\",\"body\":\"b\"}", "user"},
        {"{\"id\":\"m\",\"user\":\"u\",\"name\":5,\"body\":\"b\"}", "name"},
        {"{\"id\":\"m\",\"user\":\"u\"}", "body"},
        {"{\"id\":\"m\",\"user\":\"u\",\"body\":null}", "body"},
        {"{\"id\":\"m\",\"user\":\"u\",\"body\":\"b\",\"meta\":[1]}", "meta"},
        {"{\"id\":\"m\",\"user\":\"u\",\"body\":\"b\",\"meta\":\"{}\"}", "meta"},
        {"{\"id\":\"m\",\"id\":\"n\",\"user\":\"u\",\"body\":\"b\"}", "duplicate"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        CHECK(pub(bad[i].text, &p, err) == -1, "case %zu accepted", i);
        CHECK(strstr(err, bad[i].why) != NULL, "case %zu: '%s' lacks '%s'", i, err, bad[i].why);
        CHECK(p.root == NULL && p.meta == NULL);
    }
    /* a raw NUL byte is not JSON, but jansson 2.14 skips one after a
     * literal: meta's raw text would carry it into frames and the store
     * (found by fuzz_api, tests/fuzz/corpus/api/regress-meta-raw-nul) */
    static const char nul[] = "{\"id\":\"m\",\"user\":\"u\",\"body\":\"b\",\"meta\":{\"ok\":true\0}}";
    CHECK(api_parse_publish(nul, sizeof nul - 1, &p, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "NUL");
    CHECK(p.root == NULL && p.meta == NULL);
    CHECK(api_parse_ban("{\"seconds\":5,\"x\":null\0}", 23, 0, &(api_ban){0}, err, sizeof err) == -1);
    /* meta: 4096 bytes pass, 4097 do not */
    char *big = malloc(5000);
    for (int sz = 4096; sz <= 4097; sz++) {
        int pre = snprintf(big, 5000, "{\"id\":\"m\",\"user\":\"u\",\"body\":\"b\",\"meta\":{\"k\":\"");
        int fill = sz - 8; /* {"k":"..."} = 8 + fill */
        memset(big + pre, 'x', (size_t)fill);
        snprintf(big + pre + fill, 5000 - (size_t)(pre + fill), "\"}}");
        int r = pub(big, &p, err);
        if (sz == 4096) { CHECK(r == 0 && p.meta_len == 4096, "%s %zu", err, p.meta_len); api_publish_clear(&p); }
        else { CHECK(r == -1); CHECK_CONTAINS(err, "4096"); }
    }
    free(big);
}

/* an integer beyond 64 bits is JSON: in meta (kept as given) and in a
 * member nobody reads it costs nothing; the ban's seconds is still judged */
static void test_big_integers(void)
{
    api_publish p;
    char err[160];
    const char *t = "{\"id\":\"m\",\"user\":\"u\",\"body\":\"b\",\"x\":18446744073709551616,"
                    "\"meta\":{\"hash\":18446744073709551615, \"n\":-99999999999999999999}}";
    CHECK(pub(t, &p, err) == 0, "%s", err);
    CHECK_STR(p.meta, "{\"hash\":18446744073709551615, \"n\":-99999999999999999999}");
    CHECK_STR(p.body, "b");
    api_publish_clear(&p);
    /* meta under an escaped name: still its raw text, never serialized
     * again from the tree read with integers as reals (5.0, 1.2e+29) */
    t = "{\"id\":\"m\",\"user\":\"u\",\"body\":\"b\",\"\\u006deta\":"
        "{\"a\":5,\"b\":123456789012345678901234567890,\"c\":1.5}}";
    CHECK(pub(t, &p, err) == 0, "%s", err);
    CHECK_STR(p.meta, "{\"a\":5,\"b\":123456789012345678901234567890,\"c\":1.5}");
    api_publish_clear(&p);
    api_ban b;
    t = "{\"seconds\":60,\"x\":99999999999999999999}";
    CHECK(api_parse_ban(t, strlen(t), 0, &b, err, sizeof err) == 0 && b.seconds == 60, "%s", err);
    const char *bad[] = {"{\"seconds\":99999999999999999999}", "{\"seconds\":60.5,\"x\":99999999999999999999}",
                         "{\"seconds\":315360001,\"x\":99999999999999999999}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK(api_parse_ban(bad[i], strlen(bad[i]), 0, &b, err, sizeof err) == -1, "%s", bad[i]);
        CHECK_CONTAINS(err, "seconds");
    }
    /* the moderator delete's body (found by fuzz_api) */
    api_delete d;
    t = "{\"reason\":\"spam\",\"ticket\":99999999999999999999}";
    CHECK(api_parse_delete(t, strlen(t), &d, err, sizeof err) == 0 && !strcmp(d.reason, "spam"), "%s", err);
    api_delete_clear(&d);
}

static void test_ban_body(void)
{
    api_ban b;
    char err[160], reason[API_REASON_MAX + 1];
    const char *t = "{\"seconds\":60,\"room\":\"lobby\",\"reason\":\"sp\\u00e4m\"}";
    CHECK(api_parse_ban(t, strlen(t), 0, &b, err, sizeof err) == 0);
    CHECK(b.seconds == 60 && !strcmp(b.room, "lobby") && !strcmp(b.reason, "sp\xc3\xa4m"));
    t = "{\"seconds\":1}";
    CHECK(api_parse_ban(t, strlen(t), 0, &b, err, sizeof err) == 0 && b.room[0] == 0 && b.reason[0] == 0);
    const char *bad[] = {"{\"seconds\":0}", "{\"seconds\":-5}", "{\"seconds\":1.5}", "{\"seconds\":\"60\"}",
                         "{}", "{\"seconds\":315360001}", "{\"seconds\":5,\"room\":\"a b\"}",
                         "{\"seconds\":5,\"reason\":\"a\\nb\"}", "{\"seconds\":5,\"room\":3}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(api_parse_ban(bad[i], strlen(bad[i]), 0, &b, err, sizeof err) == -1, "ban case %zu", i);
    CHECK(api_parse_ban("", 0, 0, &b, err, sizeof err) == -1);
    /* lift: the body is optional, seconds not needed */
    CHECK(api_parse_ban("", 0, 1, &b, err, sizeof err) == 0 && b.room[0] == 0);
    t = "{\"room\":\"r1\"}";
    CHECK(api_parse_ban(t, strlen(t), 1, &b, err, sizeof err) == 0 && !strcmp(b.room, "r1"));
    char longr[300];
    int n = snprintf(longr, sizeof longr, "{\"seconds\":5,\"reason\":\"");
    memset(longr + n, 'r', 201);
    snprintf(longr + n + 201, sizeof longr - (size_t)n - 201, "\"}");
    CHECK(api_parse_ban(longr, strlen(longr), 0, &b, err, sizeof err) == -1);
    CHECK(api_parse_disconnect("", 0, reason, err, sizeof err) == 0 && reason[0] == 0);
    t = "{\"reason\":\"bye\"}";
    CHECK(api_parse_disconnect(t, strlen(t), reason, err, sizeof err) == 0 && !strcmp(reason, "bye"));
    t = "{\"reason\":7}";
    CHECK(api_parse_disconnect(t, strlen(t), reason, err, sizeof err) == -1);
    CHECK(api_parse_disconnect("{", 1, reason, err, sizeof err) == -1);
}

/* the moderator delete's optional body */
static void test_delete_body(void)
{
    api_delete d;
    char err[200];
    CHECK(api_parse_delete("", 0, &d, err, sizeof err) == 0);
    CHECK(!strcmp(d.user, "moderator") && !strcmp(d.name, "Moderator") && !d.id && !d.reason && !d.root);
    api_delete_clear(&d);
    const char *t = "{\"reason\":\"spam\",\"user\":\"mod-7\",\"name\":\"Mod Seven\",\"id\":\"del-1\"}";
    CHECK(api_parse_delete(t, strlen(t), &d, err, sizeof err) == 0);
    CHECK(!strcmp(d.user, "mod-7") && !strcmp(d.name, "Mod Seven") && !strcmp(d.id, "del-1") &&
          !strcmp(d.reason, "spam"));
    api_delete_clear(&d);
    CHECK(d.root == NULL);
    t = "{\"user\":\"mod\"}";
    CHECK(api_parse_delete(t, strlen(t), &d, err, sizeof err) == 0 && !strcmp(d.name, "Moderator"));
    api_delete_clear(&d);
    char longid[128];
    snprintf(longid, sizeof longid, "{\"id\":\"%065d\"}", 0);
    /* an id of 64 characters is taken whatever its bytes (control characters too, as a
     * client's), 65 are not */
    char eid[300] = "{\"id\":\"";
    for (int i = 0; i < 64; i++) strcat(eid, "\xc3\xa9");
    strcat(eid, "\"}");
    CHECK(api_parse_delete(eid, strlen(eid), &d, err, sizeof err) == 0 && d.id && strlen(d.id) == 128, "%s", err);
    api_delete_clear(&d);
    t = "{\"id\":\"a\\tb\"}";
    CHECK(api_parse_delete(t, strlen(t), &d, err, sizeof err) == 0 && d.id && !strcmp(d.id, "a\tb"), "%s", err);
    api_delete_clear(&d);
    char e65[300] = "{\"id\":\"";
    for (int i = 0; i < 65; i++) strcat(e65, "\xc3\xa9");
    strcat(e65, "\"}");
    CHECK(api_parse_delete(e65, strlen(e65), &d, err, sizeof err) == -1 &&
          strstr(err, "id must be a string of 1-64 characters"), "65 characters: %s", err);
    const char *bad[] = {"[]", "{", "\"x\"", "{\"user\":\"\"}", "{\"user\":7}", "{\"user\":null}",
                         "{\"name\":\"a\\nb\"}", "{\"reason\":1}", "{\"id\":\"a\\u0000b\"}",
                         "{\"reason\":\"a\\u0000b\"}", longid,
                         /* duplicate keys are refused in every body (docs/api.md): the
                          * second user would have been the author */
                         "{\"user\":\"mod\",\"user\":\"eve\"}"};
    /* a raw NUL byte after a literal: jansson 2.14 skips it */
    CHECK(api_parse_delete("{\"a\":true\0}", 11, &d, err, sizeof err) == -1 && !d.root);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(api_parse_delete(bad[i], strlen(bad[i]), &d, err, sizeof err) == -1, "delete case %zu", i);
        CHECK(d.root == NULL && err[0], "delete case %zu: cleared, with a reason", i);
    }
}

static void test_user_valid(void)
{
    const char *good[] = {"u", "alice", "\xc3\xa9", "\xc2\xa0", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "a b"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK(api_user_valid(good[i], strlen(good[i])) == 1, "good[%zu]", i);
    const char *bad[] = {"a\nb", "\x7f", "\xc2\x85" /* C1 */, "\xc2\x9f", "\xe2\x82" /* cut */,
                         "\xed\xa0\x80" /* surrogate */, "\xc0\x80" /* overlong */, "\xff",
                         "\xf4\x90\x80\x80" /* over U+10FFFF */};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(api_user_valid(bad[i], strlen(bad[i])) == 0, "bad[%zu]", i);
    CHECK(api_user_valid("a\0b", 3) == 0, "NUL");
    CHECK(api_user_valid("", 0) == 0);
    char big[API_USER_MAX + 2];
    memset(big, 'x', sizeof big);
    CHECK(api_user_valid(big, API_USER_MAX) == 1);
    CHECK(api_user_valid(big, API_USER_MAX + 1) == 0);
}

static void test_raw_member(void)
{
    const char *o = " { \"a\" : \"x,}\\\"\" , \"m\":{\"k\":[1,{\"z\":\"}\"}]} ,\"n\":-1.5e3}";
    size_t off, len;
    CHECK(json_raw_member(o, strlen(o), "m", &off, &len) == 1);
    CHECK(len == strlen("{\"k\":[1,{\"z\":\"}\"}]}") && !strncmp(o + off, "{\"k\":[1,{\"z\":\"}\"}]}", len));
    CHECK(json_raw_member(o, strlen(o), "n", &off, &len) == 1 && len == 6 && !strncmp(o + off, "-1.5e3", 6));
    CHECK(json_raw_member(o, strlen(o), "a", &off, &len) == 1 && len == 7);
    CHECK(json_raw_member(o, strlen(o), "x", &off, &len) == 0);
    CHECK(json_raw_member("{}", 2, "x", &off, &len) == 0);
    CHECK(json_raw_member("[1]", 3, "x", &off, &len) == -1);
    CHECK(json_raw_member("{\"a\":", 5, "a", &off, &len) == -1);
    CHECK(json_raw_member("{\"a\":{", 6, "a", &off, &len) == -1);
    /* a member name is matched as a parser reads it (escapes decoded) */
    const char *e = "{\"\\u006de\\u0074a\":{\"k\":1},\"m\\\"\":2,\"\\u00e9\":3,\"x\\ty\":4}";
    CHECK(json_raw_member(e, strlen(e), "meta", &off, &len) == 1 && len == 7 && !strncmp(e + off, "{\"k\":1}", 7));
    CHECK(json_raw_member(e, strlen(e), "m\"", &off, &len) == 1 && len == 1 && e[off] == '2');
    CHECK(json_raw_member(e, strlen(e), "x\ty", &off, &len) == 1 && e[off] == '4');
    CHECK(json_raw_member(e, strlen(e), "m", &off, &len) == 0);
    CHECK(json_raw_member(e, strlen(e), "metax", &off, &len) == 0);
    CHECK(json_raw_member(e, strlen(e), "met", &off, &len) == 0);
}

static void test_bans(void)
{
    bans_init();
    uint64_t now = 1000000;
    CHECK(bans_match("eve", "lobby", now) == NULL);
    CHECK(bans_put("eve", "lobby", now + 5000, "spam") == 0);
    const ban *b = bans_match("eve", "lobby", now);
    CHECK(b && !strcmp(b->room, "lobby") && !strcmp(b->reason, "spam"));
    CHECK(bans_match("eve", "other", now) == NULL);
    CHECK(bans_match("eve", NULL, now) == NULL);
    CHECK(bans_match("eva", "lobby", now) == NULL);
    CHECK(bans_match("eve", "lobby", now + 5000) == NULL); /* expired at until */
    CHECK(bans_put("eve", "lobby", now + 5000, "spam") == 0);
    CHECK(bans_put("eve", NULL, now + 1000, "everywhere") == 0);
    b = bans_match("eve", "other", now);
    CHECK(b && b->room[0] == 0 && !strcmp(b->reason, "everywhere"));
    b = bans_match("eve", "lobby", now);
    CHECK(b && b->room[0] == 0);         /* the every-room ban first */
    CHECK(bans_prune(now) == 2);
    b = bans_match("eve", "lobby", now + 2000);
    CHECK(b && !strcmp(b->room, "lobby")); /* then the room's, still on */
    CHECK(bans_prune(now + 1500) == 1);
    CHECK(bans_put("eve", "lobby", now + 9000, "longer") == 0); /* replaces */
    CHECK(bans_prune(now) == 1);
    CHECK(bans_lift("eve", "other", now) == 0);
    CHECK(bans_lift("eve", "lobby", now) == 1);
    CHECK(bans_match("eve", "lobby", now) == NULL);
    CHECK(bans_put("eve", "r1", now + 100, "") == 0 && bans_put("eve", "r2", now + 100, "") == 0 &&
          bans_put("eve", NULL, now + 100, "") == 0);
    CHECK(bans_lift("eve", NULL, now) == 3);
    CHECK(bans_lift("nobody", NULL, now) == 0);              /* never banned */
    CHECK(bans_put("eve", "r1", now + 100, "") == 0);
    CHECK(bans_lift("eve", "r1", now + 100) == 0);           /* expired at until: none in force */
    CHECK(bans_match("eve", "r1", now) == NULL);             /* and dropped */
    CHECK(bans_prune(now) == 0);
    CHECK(bans_put("", "r", now + 1, "") == -1);
    CHECK(bans_put("x", "bad room", now + 1, "") == -1);
    /* a long reason is cut at a character boundary */
    char r[400];
    memset(r, 'a', 199);
    for (int i = 199; i < 399; i += 2) { r[i] = (char)0xc3; r[i + 1] = (char)0xa9; }
    r[399] = 0;
    CHECK(bans_put("u", NULL, now + 1, r) == 0);
    b = bans_match("u", NULL, now);
    CHECK(b && strlen(b->reason) == 199);
    bans_free();
}

/* a load from the shared store replaces this node's copy, except what
 * changed on the control channel while the load was in flight */
static void test_bans_load(void)
{
    bans_init();
    uint64_t now = 1000000, later = now + 60000;
    CHECK(bans_put("gone", NULL, later, "lifted elsewhere") == 0);   /* not in the store: dropped */
    CHECK(bans_put("kept", "r1", later, "old reason") == 0);         /* in the store: its version */
    bans_load_begin();
    /* while the load is in flight: a new ban, a lift */
    CHECK(bans_put("fresh", NULL, later, "new") == 0);
    CHECK(bans_put("lifted", "r2", later, "x") == 0);
    CHECK(bans_lift("lifted", NULL, now) == 1);
    ban_entry snap[] = {
        {"kept", "r1", later, "store reason"},
        {"lifted", "r2", later, "stale"},        /* lifted since: not re-added */
        {"remote", "", later, "from another node"},
        {"remote", "r3", later, "room too"},
    };
    bans_load_apply(snap, 4);
    CHECK(bans_match("gone", "any", now) == NULL);
    const ban *b = bans_match("kept", "r1", now);
    CHECK(b && !strcmp(b->reason, "store reason"));
    CHECK(bans_match("fresh", "x", now) != NULL);   /* put since: not removed */
    CHECK(bans_match("lifted", "r2", now) == NULL);
    b = bans_match("remote", "zz", now);
    CHECK(b && b->room[0] == 0);
    CHECK(bans_prune(now) == 4);
    /* after the load, changes are not remembered any more */
    bans_load_begin();
    bans_load_abort();
    CHECK(bans_lift("fresh", NULL, now) == 1);
    bans_load_begin();
    bans_load_apply(NULL, 0);                       /* the store is empty */
    CHECK(bans_prune(now) == 0);
    bans_free();
}

static void test_climit(void)
{
    climit *l = climit_new(100);
    REQUIRE(l != NULL);
    uint64_t retry = 0;
    for (int i = 0; i < 3; i++)
        CHECK(climit_take(l, "api", "k1", 1.0, 3, &retry, NULL, NULL) == CLIMIT_ALLOW, "take %d", i);
    CHECK(climit_take(l, "api", "k1", 1.0, 3, &retry, NULL, NULL) == CLIMIT_DENY);
    CHECK(retry >= 1 && retry <= 1000, "retry %llu", (unsigned long long)retry);
    /* other key, other scope: their own buckets */
    CHECK(climit_take(l, "api", "k2", 1.0, 3, &retry, NULL, NULL) == CLIMIT_ALLOW);
    CHECK(climit_take(l, "msg", "k1", 1.0, 3, &retry, NULL, NULL) == CLIMIT_ALLOW);
    CHECK(climit_take(l, "api", "k3", 0, 3, &retry, NULL, NULL) == CLIMIT_ERROR);
    CHECK(climit_take(l, "api", "k3", 4.0, 0.5, &retry, NULL, NULL) == CLIMIT_ALLOW); /* burst >= 1 */
    retry = 0;
    CHECK(climit_take(l, "api", "k3", 4.0, 0.5, &retry, NULL, NULL) == CLIMIT_DENY && retry == 250);
    climit_free(l);
}

/* ---- the control channel over an in-process bus ---- */

static uv_loop_t *loop;
static long g_done_total = -7, g_done_answers = -7, g_done_expected = -7;
static int g_done_calls, g_done_status = -7, g_handled;

static long op_echo(void *ud, json_t *msg)
{
    (void)ud;
    g_handled++;
    json_t *n = json_object_get(msg, "n");
    return json_is_integer(n) ? (long)json_integer_value(n) : -1;
}

static void on_done(void *ud, int status, long total, long answers, long expected)
{
    (void)ud;
    g_done_calls++;
    g_done_status = status;
    g_done_total = total;
    g_done_answers = answers;
    g_done_expected = expected;
}

static void run_until(int *flag, int want, int ms)
{
    uint64_t end = mono_ms() + (uint64_t)ms;
    while (*flag < want && mono_ms() < end) uv_run(loop, UV_RUN_NOWAIT);
}

static void test_ctl(void)
{
    loop = uv_default_loop();
    bus_handlers h = {0};
    h.on_control = ctl_bus_message;
    char err[128];
    bus_opts o = {NULL, 10, 60, 0, 0, 0, 0, 0, 0};
    bus *b = bus_new(loop, &o, &h, NULL, err, sizeof err);
    REQUIRE(b != NULL, "%s", err);
    ctl_init(loop, b, "node-x");
    ctl_on("echo", op_echo, NULL);
    /* a request: this node handles it and answers; gathered at once */
    json_t *m = json_pack("{s:s, s:i}", "op", "echo", "n", 5);
    ctl_wait *w = ctl_request(m, 2000, on_done, NULL);
    REQUIRE(w != NULL);
    CHECK(g_done_calls == 0 && g_handled == 0); /* nothing inside the call */
    uint64_t t0 = mono_ms();
    run_until(&g_done_calls, 1, 2000);
    CHECK(g_done_calls == 1 && g_done_status == 0 && g_done_total == 5 && g_done_answers == 1 &&
          g_done_expected == 1);
    CHECK(mono_ms() - t0 < 1000, "answered without waiting for the deadline");
    /* no answer (the handler returns -1): the deadline ends it */
    g_done_calls = 0;
    m = json_pack("{s:s}", "op", "echo");
    t0 = mono_ms();
    CHECK(ctl_request(m, 150, on_done, NULL) != NULL);
    run_until(&g_done_calls, 1, 2000);
    CHECK(g_done_calls == 1 && g_done_status == 0 && g_done_total == 0 && g_done_answers == 0 &&
          g_done_expected == 1);
    CHECK(mono_ms() - t0 >= 140);
    /* cancelled before the answer: never called; the handler still ran */
    g_done_calls = 0;
    int handled0 = g_handled;
    m = json_pack("{s:s, s:i}", "op", "echo", "n", 1);
    w = ctl_request(m, 500, on_done, NULL);
    ctl_cancel(w);
    run_until(&g_handled, handled0 + 1, 1000);
    uint64_t end = mono_ms() + 100;
    while (mono_ms() < end) uv_run(loop, UV_RUN_NOWAIT);
    CHECK(g_handled == handled0 + 1 && g_done_calls == 0);
    /* a fire-and-forget message, an unknown op and garbage: no harm */
    m = json_pack("{s:s, s:i}", "op", "echo", "n", 1);
    CHECK(ctl_send(m) == 0);
    m = json_pack("{s:s}", "op", "nobody");
    CHECK(ctl_send(m) == 0);
    ctl_bus_message(NULL, "{\"x\":", 5);
    run_until(&g_handled, handled0 + 2, 1000);
    CHECK(g_handled == handled0 + 2);
    /* freed with a request in flight: answered (-1) by the bus, then freed */
    g_done_calls = 0;
    m = json_pack("{s:s, s:i}", "op", "echo", "n", 1);
    CHECK(ctl_request(m, 500, on_done, NULL) != NULL);
    bus_free(b);
    CHECK(g_done_calls == 1 && g_done_status == -1);
    ctl_shutdown();
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(loop) == 0);
}

int main(void)
{
    log_set_level(LOG_ERROR);
    test_keys();
    test_routes();
    test_publish_body();
    test_ban_body();
    test_big_integers();
    test_delete_body();
    test_user_valid();
    test_raw_member();
    test_bans();
    test_bans_load();
    test_climit();
    test_ctl();
    metrics_free_all();
    return check_summary("test_api");
}
