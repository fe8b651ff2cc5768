/* fuzz_api: the server API's request parsing before any I/O (issue 13):
 * the route split and its path parameters (api_route_match,
 * api_route_name, api_user_valid: core/api_parse.c; httpd_allow_header), the
 * bearer key (apikey_from_header, apikeys_check: core/apikey.c), the head
 * values (httpd_parse_content_length), the body read in
 * pieces up to a limit (httpd_body_add) and the JSON error answer
 * (httpd_error_body: core/httpd.c), and each route's body
 * (api_parse_publish, api_parse_ban, api_parse_disconnect, api_parse_delete).
 * Input: an HTTP/1.1 request as a backend sends it: "METHOD target
 * HTTP/1.1", header lines, a blank line, the body (LF or CRLF). The harness
 * stands in for lws only where lws does the work (the request line, the
 * header table, percent-decoding the path) and calls the real functions
 * for the rest, in the order of checks docs/api.md documents.
 * Oracles (checked independently, with jansson and OpenSSL): an accepted
 * route re-prints to the path given (modulo leading zeros of a seq), its
 * room is 1-64 of [A-Za-z0-9_.-] (not "." or ".."), its user 1-127 bytes of UTF-8 without
 * control characters, its seq 1..2^63-1, its Allow header the route's
 * documented methods, HEAD with GET (and it parses back to them); a refused route really
 * is outside that grammar; a key is accepted exactly when it is one of the
 * configured keys, with the SHA-256 fingerprint; Content-Length and
 * Content-Type are what the text says; the body reader keeps every byte up
 * to its limit and refuses the piece that crosses it; an accepted body's
 * fields are exactly the JSON's (re-parsed), meta is a JSON object of at
 * most 4096 bytes equal to the one sent; a refused body really breaks a
 * rule; ban and disconnect fields survive a JSON round trip; every refusal
 * has a status and code of the documented set and its error answer is
 * JSON of the contract's shape carrying that code and message. */
#include "fuzz.h"
#include "api_parse.h"
#include "apikey.h"
#include "http.h"
#include "httpd.h"
#include "util.h"
#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/sha.h>
#include <strings.h>

#define MAX_FRAME 65536   /* CHAT_MAX_FRAME's default: the body limit */
static const char *KEYS[2] = {"k-0123456789abcdef", "second-key-fedcba9876543210"};
static apikeys *g_keys;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    char err[128];
    g_keys = apikeys_new(" k-0123456789abcdef ,second-key-fedcba9876543210", err, sizeof err);
    if (!g_keys || apikeys_count(g_keys) != 2) {
        fprintf(stderr, "fuzz_api: apikeys_new: %s\n", err);
        abort();
    }
    return 0;
}

/* ---- independent rules ------------------------------------------------- */

static int room_ok(const char *s, size_t n)
{
    if (n < 1 || n > CHAT_ROOM_MAX) return 0;
    /* "." and "..": path dot-segments, no room (README: room names) */
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-') return 0;
    return 1;
}

/* UTF-8 per jansson (json_stringn refuses ill-formed text), no C0, DEL or
 * C1 (U+0080..U+009F, "\xC2\x80".."\xC2\x9F") */
/* a client id: 1-64 characters (code points: the bytes that do not
 * continue a sequence) of well-formed UTF-8 (json_stringn checks it)
 * without NUL */
static int id_ok(const char *s, size_t n)
{
    if (n < 1 || memchr(s, 0, n)) return 0;
    json_t *j = json_stringn(s, n);
    if (!j) return 0;
    json_decref(j);
    size_t chars = 0;
    for (size_t i = 0; i < n; i++) chars += ((unsigned char)s[i] & 0xC0) != 0x80;
    return chars <= 64;
}

static int text_ok(const char *s, size_t n, size_t max)
{
    if (n < 1 || n > max) return 0;
    json_t *j = json_stringn(s, n);
    if (!j) return 0;
    json_decref(j);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) return 0;
        if (c == 0xC2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 && (unsigned char)s[i + 1] <= 0x9F)
            return 0;
    }
    return 1;
}

static int printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return 0;
    return 1;
}

/* seq text (the seq rule, util.h seq_parse): 1-19 digits, no leading
 * zero, value 1..INT64_MAX */
static int seq_ok(const char *s, uint64_t *v)
{
    size_t n = strlen(s);
    if (n < 1 || n > 19 || strspn(s, "0123456789") != n || s[0] == '0') return 0;
    *v = strtoull(s, NULL, 10);
    return *v >= 1 && *v <= INT64_MAX;
}

/* ---- the route ----------------------------------------------------------- */

static const unsigned ALLOW[AR_N] = {
    [AR_PUBLISH] = 1u << HM_POST, [AR_ROOM] = 1u << HM_GET, [AR_DELETE_MSG] = 1u << HM_DELETE,
    [AR_DISCONNECT] = 1u << HM_POST, [AR_BAN] = (1u << HM_PUT) | (1u << HM_DELETE)};
static const char *NAMES[AR_N] = {"none", "publish", "room", "delete", "disconnect", "ban"};

/* "GET, PUT" -> bits (0xffffffff on a name that is not a method) */
static unsigned allow_bits(const char *h)
{
    unsigned bits = 0;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", h);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ') t++;
        int m;
        for (m = 0; m < HM_N && strcmp(httpd_method_name(m), t); m++) {}
        if (m >= HM_OTHER) return 0xffffffffu;
        bits |= 1u << m;
    }
    return bits;
}

/* What the grammar of docs/api.md says of path (after "/api/"): the route,
 * and whether its parameter is valid. */
static int grammar(const char *path, int *valid)
{
    size_t n = strlen(path);
    *valid = 0;
    if (!strncmp(path, "rooms/", 6)) {
        const char *room = path + 6, *s1 = strchr(room, '/');
        if (!s1) { *valid = room_ok(room, strlen(room)); return AR_ROOM; }
        int rv = room_ok(room, (size_t)(s1 - room));
        if (!strcmp(s1, "/messages")) { *valid = rv; return AR_PUBLISH; }
        /* messages/{seq}; "messages/" with no seq is no route (404) */
        if (!strncmp(s1, "/messages/", 10) && s1[10] && !strchr(s1 + 10, '/')) {
            uint64_t v;
            *valid = rv && seq_ok(s1 + 10, &v);
            return AR_DELETE_MSG;
        }
        return AR_NONE;
    }
    if (!strncmp(path, "users/", 6)) {
        int r = AR_NONE;
        size_t sl = 0;
        if (n >= 6 + 11 && !strcmp(path + n - 11, "/disconnect")) { r = AR_DISCONNECT; sl = 11; }
        else if (n >= 6 + 4 && !strcmp(path + n - 4, "/ban")) { r = AR_BAN; sl = 4; }
        if (r) *valid = text_ok(path + 6, n - 6 - sl, API_USER_MAX);
        return r;
    }
    return AR_NONE;
}

static void check_route(const char *path, int m, const api_route *rt, const char *err)
{
    int valid;
    int g = grammar(path, &valid);
    FUZZ_CHECK(m == 0 || m == -1 || m == -2, "api_route_match returned %d", m);
    FUZZ_CHECK(!strcmp(api_route_name(rt->route), NAMES[rt->route >= 0 && rt->route < AR_N ? rt->route : 0]),
               "route name %s", api_route_name(rt->route));
    if (m == -1) {
        FUZZ_CHECK(g == AR_NONE, "path '%s' of route %s refused as no route", path, NAMES[g]);
        FUZZ_CHECK(rt->route == AR_NONE, "no route but route %d", rt->route);
        return;
    }
    FUZZ_CHECK(rt->route == g, "path '%s': route %s, the grammar says %s", path, NAMES[rt->route], NAMES[g]);
    FUZZ_CHECK(rt->allow == ALLOW[g], "route %s allows 0x%x", NAMES[g], rt->allow);
    char allow[64];
    httpd_allow_header(rt->allow, allow, sizeof allow);
    /* a GET route also answers HEAD (a GET without its body): Allow names both */
    unsigned want = rt->allow | ((rt->allow & (1u << HM_GET)) ? 1u << HM_HEAD : 0u);
    FUZZ_CHECK(allow_bits(allow) == want, "Allow '%s' for 0x%x", allow, rt->allow);
    if (m == -2) {
        FUZZ_CHECK(!valid, "path '%s' refused (%s) but its parameter is valid", path, err);
        FUZZ_CHECK(err[0] && printable(err), "a 400 without a printable reason");
        return;
    }
    FUZZ_CHECK(valid, "path '%s' accepted as %s", path, NAMES[g]);
    /* re-print */
    char again[512];
    switch (g) {
    case AR_ROOM: snprintf(again, sizeof again, "rooms/%s", rt->room); break;
    case AR_PUBLISH: snprintf(again, sizeof again, "rooms/%s/messages", rt->room); break;
    case AR_DELETE_MSG: {
        FUZZ_CHECK(rt->seq >= 1 && rt->seq <= INT64_MAX, "seq %" PRIu64, rt->seq);
        const char *digits = strrchr(path, '/') + 1;
        snprintf(again, sizeof again, "rooms/%s/messages/%" PRIu64, rt->room, rt->seq);
        char want[512];
        snprintf(want, sizeof want, "%.*s%s", (int)(strrchr(path, '/') + 1 - path), path, digits);
        FUZZ_CHECK(!strcmp(again, want), "'%s' re-prints as '%s'", want, again);
        return;
    }
    case AR_DISCONNECT: snprintf(again, sizeof again, "users/%s/disconnect", rt->user); break;
    default: snprintf(again, sizeof again, "users/%s/ban", rt->user); break;
    }
    FUZZ_CHECK(!strcmp(again, path), "'%s' re-prints as '%s'", path, again);
    if (g == AR_DISCONNECT || g == AR_BAN)
        FUZZ_CHECK(text_ok(rt->user, strlen(rt->user), API_USER_MAX) && api_user_valid(rt->user, strlen(rt->user)),
                   "user '%s'", rt->user);
    else
        FUZZ_CHECK(room_ok(rt->room, strlen(rt->room)), "room '%s'", rt->room);
}

/* ---- bodies -------------------------------------------------------------- */

/* member k of o as a string without NUL: 1, 0 absent/null, -1 otherwise */
static int jstr(json_t *o, const char *k, const char **s, size_t *n)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return -1;
    *s = json_string_value(v);
    *n = json_string_length(v);
    return memchr(*s, 0, *n) ? -1 : 1;
}

/* JSON with an integer beyond 64 bits is JSON (docs/api.md, meta): the
 * model reads it with integers as doubles, a whole "seconds" below 2^53
 * an integer again (the one member a route reads as an integer) */
static json_t *model_loadb(const char *b, size_t len, size_t flags)
{
    json_error_t je;
    json_t *o = json_loadb(b, len, flags, &je);
    if (o || json_error_code(&je) != json_error_numeric_overflow) return o;
    o = json_loadb(b, len, flags | JSON_DECODE_INT_AS_REAL, &je);
    json_t *s = json_is_object(o) ? json_object_get(o, "seconds") : NULL;
    if (json_is_real(s)) {
        double d = json_real_value(s);
        if (d > -9007199254740992.0 && d < 9007199254740992.0 && d == (double)(long long)d)
            json_object_set_new(o, "seconds", json_integer((json_int_t)d));
    }
    return o;
}

/* jansson (2.14) skips a raw NUL byte after a literal or a number; a raw
 * NUL is never JSON */
static json_t *reload(const char *body, size_t len)
{
    if (memchr(body, 0, len)) return NULL;
    json_t *o = model_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL);
    if (o && !json_is_object(o)) { json_decref(o); o = NULL; }
    return o;
}

static int reason_ok(json_t *o, const char **s, size_t *n)
{
    *s = "";
    *n = 0;
    int r = jstr(o, "reason", s, n);
    if (r < 0) return 0;
    if (r == 0) { *s = ""; *n = 0; return 1; }
    if (*n > API_REASON_MAX) return 0;
    for (size_t i = 0; i < *n; i++)
        if ((unsigned char)(*s)[i] < 0x20 || (*s)[i] == 0x7f) return 0;
    return 1;
}

/* the model's own walk: 1 when any key or string of v holds U+0000 */
static int model_nul(json_t *v)
{
    size_t i;
    json_t *x;
    const char *k;
    if (json_is_string(v)) return strlen(json_string_value(v)) != json_string_length(v);
    if (json_is_array(v)) {
        json_array_foreach(v, i, x) if (model_nul(x)) return 1;
    } else if (json_is_object(v)) {
        size_t kl;
        json_object_keylen_foreach(v, k, kl, x) if (strlen(k) != kl || model_nul(x)) return 1;
    }
    return 0;
}

static void check_publish(const char *body, size_t len)
{
    api_publish p;
    char err[200];
    int r = api_parse_publish(body, len, &p, err, sizeof err);
    json_t *o = len ? reload(body, len) : NULL;
    const char *id = NULL, *user = NULL, *name = NULL, *text = NULL;
    size_t idl = 0, ul = 0, nl = 0, tl = 0;
    int ok = o != NULL;
    int ri = ok ? jstr(o, "id", &id, &idl) : 0;
    ok = ok && ri == 1 && id_ok(id, idl);
    ok = ok && jstr(o, "user", &user, &ul) == 1 && text_ok(user, ul, API_USER_MAX);
    int rn = ok ? jstr(o, "name", &name, &nl) : 0;
    ok = ok && rn >= 0 && (rn == 0 || text_ok(name, nl, API_USER_MAX));
    json_t *b = o ? json_object_get(o, "body") : NULL;
    ok = ok && json_is_string(b);
    if (ok) {
        text = json_string_value(b);
        tl = json_string_length(b);
        ok = !memchr(text, 0, tl);
    }
    json_t *meta = o ? json_object_get(o, "meta") : NULL;
    if (meta && json_is_null(meta)) meta = NULL;
    ok = ok && (!meta || json_is_object(meta));
    ok = ok && (!meta || !model_nul(meta)); /* no U+0000 anywhere in meta, as in a body */
    if (r < 0) {
        FUZZ_CHECK(err[0], "publish refused without a reason");
        FUZZ_SAY("publish refused: %s", err);
        /* the only rule the model does not measure: meta's own text size */
        FUZZ_CHECK(!ok || (meta && len > API_META_MAX && !strcmp(err, "meta is larger than 4096 bytes")),
                   "a valid publish body refused: %s", err);
        FUZZ_CHECK(p.root == NULL && p.meta == NULL, "a refusal left the parse allocated");
        json_decref(o);
        return;
    }
    FUZZ_CHECK(ok, "an invalid publish body accepted (id %d, user %s)", ri, p.user ? p.user : "-");
    FUZZ_CHECK(strlen(p.id) == idl && !memcmp(p.id, id, idl), "id differs");
    FUZZ_CHECK(strlen(p.user) == ul && !memcmp(p.user, user, ul), "user differs");
    FUZZ_CHECK(api_user_valid(p.user, ul), "user not valid for api_user_valid");
    if (rn == 1) FUZZ_CHECK(strlen(p.name) == nl && !memcmp(p.name, name, nl), "name differs");
    else FUZZ_CHECK(!strcmp(p.name, p.user), "name '%s' is not the user's", p.name);
    FUZZ_CHECK(p.body_len == tl && !memcmp(p.body, text, tl) && !memchr(p.body, 0, p.body_len), "body differs");
    if (!meta) {
        FUZZ_CHECK(p.meta == NULL && p.meta_len == 0, "meta without a meta member");
    } else {
        FUZZ_CHECK(p.meta && p.meta_len == strlen(p.meta) && p.meta_len <= API_META_MAX,
                   "meta of %zu bytes", p.meta_len);
        json_t *m = model_loadb(p.meta, p.meta_len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL);
        FUZZ_CHECK(m && json_is_object(m), "meta '%s' is not a JSON object", p.meta);
        FUZZ_CHECK(json_equal(m, meta), "meta '%s' is not the object sent", p.meta);
        json_decref(m);
    }
    api_publish_clear(&p);
    FUZZ_CHECK(p.root == NULL && p.meta == NULL, "api_publish_clear left pointers");
    json_decref(o);
}

static void check_ban(const char *body, size_t len, int lift)
{
    api_ban bn;
    char err[200];
    int r = api_parse_ban(body, len, lift, &bn, err, sizeof err);
    json_t *o = len ? reload(body, len) : NULL;
    int ok = o != NULL || (!len && lift);
    const char *room = NULL, *reason = "";
    size_t rl = 0, sl = 0;
    if (o) {
        int rr = jstr(o, "room", &room, &rl);
        ok = rr == 0 || (rr == 1 && room_ok(room, rl));
        if (rr != 1) room = NULL;
        if (!lift) {
            json_t *s = json_object_get(o, "seconds");
            ok = ok && json_is_integer(s) && json_integer_value(s) >= 1 &&
                 json_integer_value(s) <= API_BAN_MAX_S;
            ok = ok && reason_ok(o, &reason, &sl);
        }
    }
    if (r < 0) {
        FUZZ_CHECK(err[0] && !ok, "a valid %s body refused: %s", lift ? "unban" : "ban", err);
        json_decref(o);
        return;
    }
    FUZZ_CHECK(r == 0 && ok, "an invalid %s body accepted", lift ? "unban" : "ban");
    FUZZ_CHECK(room ? strlen(bn.room) == rl && !memcmp(bn.room, room, rl) : bn.room[0] == 0, "room '%s'", bn.room);
    if (!lift) {
        FUZZ_CHECK(bn.seconds == json_integer_value(json_object_get(o, "seconds")), "seconds %" PRId64, bn.seconds);
        FUZZ_CHECK(strlen(bn.reason) == sl && !memcmp(bn.reason, reason, sl), "reason '%s'", bn.reason);
        /* round trip: the fields as a body parse to the same fields */
        json_t *j = json_pack("{s:I, s:s}", "seconds", (json_int_t)bn.seconds, "reason", bn.reason);
        FUZZ_CHECK(j, "reason '%s' is not UTF-8", bn.reason);
        if (bn.room[0]) json_object_set_new(j, "room", json_string(bn.room));
        char *t = json_dumps(j, JSON_COMPACT);
        api_ban again;
        FUZZ_CHECK(t && api_parse_ban(t, strlen(t), 0, &again, err, sizeof err) == 0 &&
                       again.seconds == bn.seconds && !strcmp(again.room, bn.room) &&
                       !strcmp(again.reason, bn.reason),
                   "ban fields do not round-trip through '%s'", t ? t : "?");
        free(t);
        json_decref(j);
    } else {
        FUZZ_CHECK(bn.seconds == 0 && bn.reason[0] == 0, "an unban with seconds or reason");
    }
    json_decref(o);
}

static void check_disconnect(const char *body, size_t len)
{
    char reason[API_REASON_MAX + 1], err[200];
    int r = api_parse_disconnect(body, len, reason, err, sizeof err);
    json_t *o = len ? reload(body, len) : NULL;
    const char *want = "";
    size_t wl = 0;
    int ok = !len || (o && reason_ok(o, &want, &wl));
    if (r < 0) {
        FUZZ_CHECK(err[0] && !ok, "a valid disconnect body refused: %s", err);
    } else {
        FUZZ_CHECK(ok, "an invalid disconnect body accepted");
        FUZZ_CHECK(strlen(reason) == wl && !memcmp(reason, want, wl), "reason '%s'", reason);
        json_t *j = json_pack("{s:s}", "reason", reason);
        FUZZ_CHECK(j, "reason '%s' is not UTF-8", reason);
        char *t = json_dumps(j, JSON_COMPACT), again[API_REASON_MAX + 1];
        FUZZ_CHECK(t && api_parse_disconnect(t, strlen(t), again, err, sizeof err) == 0 && !strcmp(again, reason),
                   "reason does not round-trip");
        free(t);
        json_decref(j);
    }
    json_decref(o);
}

/* member k: absent, or 1..max bytes of text without controls */
static int opt_text_ok(json_t *o, const char *k, size_t max, const char **out)
{
    json_t *v = json_object_get(o, k);
    if (!v) return 1;
    if (!json_is_string(v) || !text_ok(json_string_value(v), json_string_length(v), max)) return 0;
    *out = json_string_value(v);
    return 1;
}

static void check_delete(const char *body, size_t len)
{
    api_delete d;
    char err[200];
    int r = api_parse_delete(body, len, &d, err, sizeof err);
    json_t *o = len && !memchr(body, 0, len) ? model_loadb(body, len, JSON_REJECT_DUPLICATES) : NULL;
    const char *user = "moderator", *name = "Moderator", *id = NULL, *reason = NULL;
    int ok = !len;
    if (json_is_object(o)) {
        json_t *rs = json_object_get(o, "reason");
        ok = opt_text_ok(o, "user", API_USER_MAX, &user) && opt_text_ok(o, "name", API_USER_MAX, &name) &&
             (!json_object_get(o, "id") || (json_is_string(json_object_get(o, "id")) &&
                                            id_ok(json_string_value(json_object_get(o, "id")),
                                                  json_string_length(json_object_get(o, "id"))))) &&
             (!rs || json_is_string(rs));
        if (ok && json_object_get(o, "id")) id = json_string_value(json_object_get(o, "id"));
        if (json_is_string(rs)) reason = json_string_value(rs);
    }
    if (r < 0) {
        FUZZ_CHECK(err[0] && !ok, "a valid delete body refused: %s", err);
        FUZZ_CHECK(d.root == NULL, "a refusal left the parse allocated");
    } else {
        FUZZ_CHECK(r == 0 && ok, "an invalid delete body accepted (duplicate keys are refused)");
        FUZZ_CHECK(!strcmp(d.user, user) && !strcmp(d.name, name), "author %s / %s", d.user, d.name);
        FUZZ_CHECK(id ? d.id && !strcmp(d.id, id) : !d.id, "id");
        FUZZ_CHECK(reason ? d.reason && !strcmp(d.reason, reason) : !d.reason, "reason");
        FUZZ_CHECK(api_user_valid(d.user, strlen(d.user)) && api_user_valid(d.name, strlen(d.name)) &&
                       (!d.id || id_ok(d.id, strlen(d.id))),
                   "author or id not text");
        api_delete_clear(&d);
    }
    json_decref(o);
}

/* ---- the error answer ------------------------------------------------------ */

static const struct { unsigned status; const char *code; } DOC[] = {
    {400, "bad_request"}, {401, "unauthorized"}, {404, "not_found"}, {405, "method_not_allowed"},
    {411, "length_required"}, {413, "too_large"}};

static void check_error(unsigned status, const char *code, const char *message)
{
    size_t i, n = sizeof DOC / sizeof DOC[0];
    for (i = 0; i < n && !(DOC[i].status == status && !strcmp(DOC[i].code, code)); i++) {}
    FUZZ_CHECK(i < n, "%u %s is not in docs/api.md's table", status, code);
    size_t len = 0;
    char *b = httpd_error_body(code, message, &len);
    FUZZ_CHECK(b, "httpd_error_body");
    json_error_t je;
    json_t *o = json_loadb(b, len, 0, &je);
    FUZZ_CHECK(o, "error body '%.*s' is not JSON: %s", (int)len, b, je.text);
    json_t *e = json_object_get(o, "error");
    FUZZ_CHECK(json_object_size(o) == 1 && json_object_size(e) == 2, "error body shape '%.*s'", (int)len, b);
    FUZZ_CHECK(!strcmp(json_string_value(json_object_get(e, "code")), code), "code");
    json_t *m = json_object_get(e, "message");
    FUZZ_CHECK(json_is_string(m), "message");
    json_t *valid = json_string(message);   /* UTF-8: the same text back */
    if (valid) FUZZ_CHECK(json_equal(valid, m), "message '%s' came back as '%s'", message, json_string_value(m));
    json_decref(valid);
    json_decref(o);
    free(b);
}

/* ---- the request ------------------------------------------------------------ */

static size_t urldecode(char *s)
{
    size_t o = 0, n = strlen(s);
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
            char h[3] = {s[i + 1], s[i + 2], 0};
            c = (char)strtol(h, NULL, 16);
            i += 2;
        }
        s[o++] = c;
    }
    s[o] = 0;
    return o;
}

static int method_of(const char *m)
{
    for (int i = 0; i < HM_OTHER; i++)
        if (!strcmp(httpd_method_name(i), m)) return i;
    return HM_OTHER;
}

/* the next line of s[*i..n), without its CR LF / LF */
static char *line(const char *s, size_t n, size_t *i)
{
    if (*i > n) return NULL;
    const char *e = memchr(s + *i, '\n', n - *i);
    size_t end = e ? (size_t)(e - s) : n;
    size_t l = end - *i;
    char *out = fuzz_cstr((const uint8_t *)s + *i, l);
    if (l && out[l - 1] == '\r') out[l - 1] = 0;
    *i = end + 1;
    return out;
}

typedef struct head {
    char *auth, *clen, *ctype;
    int chunked;
} head;

static void check_body_reader(const char *body, size_t len, size_t max)
{
    httpd_body b = {NULL, 0, 0, max};
    size_t kept = 0, step = 1 + len % 61;
    for (size_t i = 0; i < len; i += step) {
        size_t k = len - i < step ? len - i : step;
        int r = httpd_body_add(&b, body + i, k);
        int fits = kept + k <= max;
        FUZZ_CHECK(r == (fits ? 0 : -1), "httpd_body_add %d at %zu+%zu of max %zu", r, kept, k, max);
        if (r == 0) kept += k;
        else break;
    }
    FUZZ_CHECK(b.len == kept && (!kept || (!memcmp(b.buf, body, kept) && b.buf[kept] == 0)),
               "the body reader kept %zu bytes, not the %zu given", b.len, kept);
    httpd_body_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    size_t i = 0;
    char *rl = line(s, size, &i);
    /* METHOD SP target [SP version] */
    char *sp = strchr(rl, ' ');
    if (!sp) { free(rl); return 0; }
    *sp = 0;
    char *target = sp + 1, *sp2 = strchr(target, ' ');
    if (sp2) *sp2 = 0;
    int method = method_of(rl);
    char *q = strchr(target, '?');
    if (q) *q++ = 0;
    urldecode(target);

    head h = {0};
    char *l;
    while ((l = line(s, size, &i))) {
        if (!l[0]) { free(l); break; }
        char *c = strchr(l, ':');
        if (c) {
            *c = 0;
            char *v = c + 1;
            while (*v == ' ' || *v == '\t') v++;
            size_t vl = strlen(v);
            while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) v[--vl] = 0;
            char **slot = !strcasecmp(l, "authorization") ? &h.auth
                        : !strcasecmp(l, "content-length") ? &h.clen
                        : !strcasecmp(l, "content-type") ? &h.ctype : NULL;
            if (!strcasecmp(l, "transfer-encoding")) h.chunked = 1;
            if (slot && !*slot) *slot = strdup(v);
        }
        free(l);
    }
    const char *body = i <= size ? s + i : "";
    size_t blen = i <= size ? size - i : 0;

    /* the route: "/api/..." as api_http sees it; other targets are still
     * given to the matcher (its input is any decoded path) */
    const char *path = !strncmp(target, "/api/", 5) ? target + 5 : target[0] == '/' ? target + 1 : target;
    api_route rt;
    char err[160];
    memset(err, 0, sizeof err);
    int m = api_route_match(path, &rt, err, sizeof err);
    check_route(path, m, &rt, err);

    /* the key */
    const char *key = NULL;
    size_t klen = 0;
    char fp[APIKEY_FP_LEN + 1] = "";
    int bearer = h.auth && apikey_from_header(h.auth, &key, &klen);
    if (h.auth) {
        int want = strncasecmp(h.auth, "bearer", 6) == 0 && (h.auth[6] == ' ' || h.auth[6] == '\t') &&
                   h.auth[6 + strspn(h.auth + 6, " \t")] != 0;
        FUZZ_CHECK(bearer == want, "apikey_from_header %d on '%s'", bearer, h.auth);
    }
    int key_ok = 0;
    if (bearer) {
        FUZZ_CHECK(klen >= 1 && key >= h.auth && key + klen <= h.auth + strlen(h.auth) && key[0] != ' ' &&
                       key[0] != '\t' && key[klen - 1] != ' ' && key[klen - 1] != '\t',
                   "bearer key span");
        key_ok = apikeys_check(g_keys, key, klen, fp);
        int is = 0;
        for (int k = 0; k < 2; k++) is |= strlen(KEYS[k]) == klen && !memcmp(KEYS[k], key, klen);
        FUZZ_CHECK(key_ok == is, "apikeys_check %d for a key that %s configured", key_ok, is ? "is" : "is not");
        if (key_ok) {
            unsigned char d[SHA256_DIGEST_LENGTH];
            SHA256((const unsigned char *)key, klen, d);
            char want[APIKEY_FP_LEN + 1];
            for (int k = 0; k < APIKEY_FP_LEN / 2; k++) snprintf(want + 2 * k, 3, "%02x", d[k]);
            FUZZ_CHECK(!strcmp(fp, want), "fingerprint %s, want %s", fp, want);
        }
    }

    /* Content-Length / Content-Type as lws copies them (32 and 128 bytes) */
    int64_t cl = -1;
    if (h.clen && h.clen[0]) {
        size_t n = strlen(h.clen);
        cl = n < 32 ? httpd_parse_content_length(h.clen, n) : -2;
        int digits = strspn(h.clen, "0123456789") == n;
        if (n < 32 && cl >= 0) FUZZ_CHECK(digits && (uint64_t)cl == strtoull(h.clen, NULL, 10), "Content-Length %s -> %" PRId64, h.clen, cl);
        if (n < 32 && cl == -2) FUZZ_CHECK(!digits || strtoull(h.clen, NULL, 10) > INT64_MAX / 10,
                                           "Content-Length '%s' refused", h.clen);
        FUZZ_CHECK(cl >= 0 || cl == -2, "Content-Length %" PRId64, cl);
    }
    /* Content-Type plays no part: a body is parsed as JSON whatever it says */
    check_body_reader(body, blen, MAX_FRAME);
    check_body_reader(body, blen, blen / 2);

    /* every body parser sees the body, whatever the route */
    check_publish(body, blen);
    check_ban(body, blen, 0);
    check_ban(body, blen, 1);
    check_disconnect(body, blen);
    check_delete(body, blen);
    if (q) {   /* ?room= of an unban: the fragment as httpd_arg gives it */
        char qr[CHAT_ROOM_MAX + 2];
        if (httpd_arg_match(q, strlen(q), "room", qr, sizeof qr) == 1 && room_name_valid(qr, strlen(qr)))
            FUZZ_CHECK(room_ok(qr, strlen(qr)), "?room=%s", qr);
    }

    /* the server's method judge (httpd_method_allowed: api.c and http.c):
     * the route's methods, HEAD with GET, never OPTIONS (the server API
     * answers no CORS preflight: docs/api.md) */
    if (m != -1)
        FUZZ_CHECK(httpd_method_allowed(rt.allow, method) ==
                           ((rt.allow & (1u << method)) != 0 || (method == HM_HEAD && (rt.allow & (1u << HM_GET)))) &&
                       !httpd_method_allowed(rt.allow, HM_OPTIONS),
                   "method %s of route 0x%x", httpd_method_name(method), rt.allow);

    /* the answer, in docs/api.md's order of checks */
    unsigned status = 0;
    const char *code = NULL, *msg = err;
    char e2[200] = "";
    if (m == -1) { status = 404; code = "not_found"; msg = "no such route"; }
    else if (!(rt.allow & (1u << method))) { status = 405; code = "method_not_allowed"; msg = "method not allowed"; }
    else if (!key_ok) { status = 401; code = "unauthorized"; msg = "invalid key"; }
    else if (cl == -2) { status = 400; code = "bad_request"; msg = "malformed Content-Length"; }
    else if (h.chunked) { status = 411; code = "length_required"; msg = "send a Content-Length"; }
    else if (cl > MAX_FRAME) { status = 413; code = "too_large"; msg = "too large"; }
    else if (m == -2) { status = 400; code = "bad_request"; }
    else {
        int bad = 0;
        if (rt.route == AR_PUBLISH) {
            api_publish p;
            bad = api_parse_publish(body, blen, &p, e2, sizeof e2) < 0;
            if (!bad) api_publish_clear(&p);
        } else if (rt.route == AR_BAN) {
            api_ban bn;
            bad = api_parse_ban(body, blen, method == HM_DELETE, &bn, e2, sizeof e2) < 0;
        } else if (rt.route == AR_DISCONNECT) {
            char r[API_REASON_MAX + 1];
            bad = api_parse_disconnect(body, blen, r, e2, sizeof e2) < 0;
        } else if (rt.route == AR_DELETE_MSG) {
            api_delete d;
            bad = api_parse_delete(body, blen, &d, e2, sizeof e2) < 0;
            if (!bad) api_delete_clear(&d);
        }
        FUZZ_SAY("%s %s: %s", httpd_method_name(method), api_route_name(rt.route), bad ? e2 : "accepted");
        if (bad) { status = 400; code = "bad_request"; msg = e2; }
    }
    if (code) {
        FUZZ_SAY("%s %s: %u %s", httpd_method_name(method), path, status, code);
        check_error(status, code, msg);
    }
    free(h.auth);
    free(h.clen);
    free(h.ctype);
    free(rl);
    return 0;
}
