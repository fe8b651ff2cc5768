/* fuzz_request: the HTTP request parsing chatd does before any I/O, for the
 * WebSocket upgrade GET /ws/{room}?token=&since= and the history/presence
 * routes GET /rooms/{room}/messages?before=&limit= and /rooms/{room}/presence
 * (core/httpd.c: httpd_arg_match, httpd_bearer; core/http.c: http_parse_room_path,
 * http_parse_cursor, http_parse_limit, http_parse_since; util.c
 * room_name_valid; log.c log_redact).
 * Input: a request target "path[?query]", optionally followed by "\n" and an
 * Authorization header value. The harness stands in for lws only where lws
 * does the work (percent-decoding the path and each '&'-separated query
 * fragment; values keep the sizes of the server's buffers) and calls the
 * real functions for everything else.
 * Oracles: every accepted value is exactly what the text says (re-printed
 * and compared), every refused one really is out of the contract; a value
 * too long for its buffer is refused, never truncated; log_redact never
 * leaves a token= value in the text it returns.
 * To extend for /api/ (issue 13): add a branch below for the new prefix and
 * call the API's pure parsers the same way (see README.md). */
#include "fuzz.h"
#include "http.h"
#include "httpd.h"
#include "util.h"
#include <ctype.h>
#include <inttypes.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

/* percent-decode in place as lws does ("%41" -> 'A'; '+' -> ' ' in query
 * fragments); returns the decoded length (a decoded NUL ends a C string) */
static size_t urldecode(char *s, size_t n, int plus)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
            isxdigit((unsigned char)s[i + 2])) {
            char h[3] = {s[i + 1], s[i + 2], 0};
            c = (char)strtol(h, NULL, 16);
            i += 2;
        } else if (plus && c == '+') {
            c = ' ';
        }
        s[o++] = c;
    }
    s[o] = 0;
    return o;
}

typedef struct query {
    char *frag[32];
    size_t len[32];
    int n;
} query;

static void split_query(char *q, query *out)
{
    out->n = 0;
    while (q && out->n < 32) {
        char *amp = strchr(q, '&');
        if (amp) *amp = 0;
        out->frag[out->n] = q;
        out->len[out->n] = urldecode(q, strlen(q), 1);
        out->n++;
        q = amp ? amp + 1 : NULL;
    }
}

/* httpd_arg over the fragments, checking httpd_arg_match on each */
static int arg(const query *q, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    for (int i = 0; i < q->n; i++) {
        int r = httpd_arg_match(q->frag[i], q->len[i], name, out, outlen);
        int is = q->len[i] > nl && strncmp(q->frag[i], name, nl) == 0 && q->frag[i][nl] == '=';
        FUZZ_CHECK(is == (r != 0), "httpd_arg_match %d on a fragment that %s '%s='", r,
                   is ? "starts with" : "does not start with", name);
        if (!r) continue;
        size_t vl = q->len[i] - nl - 1;
        if (r > 0)
            FUZZ_CHECK(r == 1 && vl < outlen && strlen(out) == strnlen(q->frag[i] + nl + 1, vl) &&
                       memcmp(out, q->frag[i] + nl + 1, strlen(out)) == 0, "value copy");
        else
            FUZZ_CHECK(vl >= outlen && out[0] == 0, "-1 for a value of %zu < %zu bytes", vl, outlen);
        return r;
    }
    return 0;
}

static int all_digits(const char *s, int hex)
{
    if (!*s) return 0;
    for (; *s; s++)
        if (!(isdigit((unsigned char)*s) || (hex && *s >= 'a' && *s <= 'f'))) return 0;
    return 1;
}

static const char *skip_zeros(const char *s)
{
    while (s[0] == '0' && s[1]) s++;
    return s;
}

static void check_since(const char *s)
{
    uint64_t v = 0;
    int rc = http_parse_since(s, &v);
    /* independent: the seq rule (util.h seq_parse): digits only, no leading
     * zero but "0", at most 19, not above 2^63-1 (compared as text) */
    int ok = all_digits(s, 0) && (s[0] != '0' || !s[1]) && strlen(s) <= 19 &&
             (strlen(s) < 19 || strcmp(s, "9223372036854775807") <= 0);
    FUZZ_CHECK((rc == 0) == ok, "since '%s' -> %d", s, rc);
    if (rc == 0) {
        char b[32];
        snprintf(b, sizeof b, "%" PRIu64, v);
        FUZZ_CHECK(strcmp(b, skip_zeros(s)) == 0, "since '%s' read as %s", s, b);
    }
}

static void check_cursor(const char *s)
{
    uint64_t v = 0;
    int rc = http_parse_cursor(s, &v);
    /* a seq: 1 to 2^63-1 (7fffffffffffffff, compared as text) */
    const char *z = s[0] ? skip_zeros(s + 1) : s;
    int ok = s[0] == 'c' && all_digits(s + 1, 1) && strlen(s) <= 17 && strcmp(z, "0") != 0 &&
             (strlen(z) < 16 || strcmp(z, "7fffffffffffffff") <= 0);
    FUZZ_CHECK((rc == 0) == ok, "cursor '%s' -> %d", s, rc);
    if (rc == 0) {
        char b[32];
        snprintf(b, sizeof b, "%" PRIx64, v);
        FUZZ_CHECK(v >= 1 && strcmp(b, skip_zeros(s + 1)) == 0, "cursor '%s' read as %s", s, b);
    }
}

static void check_limit(const char *s)
{
    int v = 0;
    int rc = http_parse_limit(s, &v);
    const char *z = skip_zeros(s);
    int ok = all_digits(s, 0) && strlen(z) <= 3 && atoi(z) >= 1 && atoi(z) <= 200;
    FUZZ_CHECK((rc == 0) == ok, "limit '%s' -> %d", s, rc);
    if (rc == 0) FUZZ_CHECK(v == atoi(z), "limit '%s' read as %d", s, v);
}

static void check_room_path(const char *rest)
{
    char room[CHAT_ROOM_MAX + 1];
    http_room_route rt = 0;
    int st = http_parse_room_path(rest, room, &rt);
    const char *slash = strchr(rest, '/');
    int known = slash && (strcmp(slash + 1, "messages") == 0 || strcmp(slash + 1, "presence") == 0);
    if (!known) { FUZZ_CHECK(st == 404, "'%s' -> %d, not 404", rest, st); return; }
    int valid = room_name_valid(rest, (size_t)(slash - rest));
    FUZZ_CHECK(st == (valid ? 0 : 400), "'%s' -> %d", rest, st);
    if (st == 0) {
        FUZZ_CHECK(strlen(room) == (size_t)(slash - rest) && memcmp(room, rest, strlen(room)) == 0,
                   "room '%s' of '%s'", room, rest);
        FUZZ_CHECK(rt == (slash[1] == 'm' ? HTTP_ROOM_MESSAGES : HTTP_ROOM_PRESENCE), "route");
    }
}

/* Every "token=" value (up to '&', ' ', '"' or the end) of 4+ bytes that
 * occurs once in the text must be gone after log_redact. */
static void check_redact(const char *text)
{
    size_t n = strlen(text);
    char *out = malloc(2 * n + 64);
    FUZZ_CHECK(out, "oom");
    log_redact(text, out, 2 * n + 64);
    FUZZ_CHECK(strlen(out) < 2 * n + 64, "unterminated");
    /* the marker itself must not count as a leak ("token=[" of
     * "token=[redacted]" is not the value "oken=[" of the input) */
    for (char *m = out; (m = strstr(m, "[redacted]"));) {
        *m = '\x01';
        memmove(m + 1, m + 10, strlen(m + 10) + 1);
    }
    for (const char *p = text; (p = strcasestr(p, "token=")); p++) {
        const char *v = p + 6;
        size_t vl = strcspn(v, "& \"\n");
        if (vl < 4) continue;
        char *val = strndup(v, vl);
        const char *first = strstr(text, val);
        if (first == v && !strstr(v + 1, val) && strcasestr(val, "token=") == NULL &&
            strcasestr(val, "bearer ") == NULL && !strchr(val, '\x01'))
            FUZZ_CHECK(!strstr(out, val), "token value '%s' left in the log text", val);
        free(val);
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = fuzz_cstr(data, size);
    char *nl = strchr(in, '\n');
    const char *authz = NULL;
    if (nl) { *nl = 0; authz = nl + 1; }
    check_redact(in);
    char *q = strchr(in, '?');
    if (q) *q++ = 0;
    urldecode(in, strlen(in), 0);
    query qs;
    split_query(q, &qs);

    char tok[8192], a[64], since[32];
    if (strncmp(in, "/ws/", 4) == 0) {
        const char *room = in + 4;
        int rv = room_name_valid(room, strlen(room));
        FUZZ_CHECK(rv == (strlen(room) >= 1 && strlen(room) <= 64 &&
                          strspn(room, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") ==
                              strlen(room) && strcmp(room, ".") != 0 && strcmp(room, "..") != 0),
                   "room_name_valid('%s') = %d", room, rv);
        arg(&qs, "token", tok, sizeof tok);
        if (arg(&qs, "since", since, sizeof since)) check_since(since);
    } else if (strncmp(in, "/rooms/", 7) == 0) {
        check_room_path(in + 7);
        if (authz) {
            /* "Bearer" 1*blank token (blanks around the token not part of it) */
            int r = httpd_bearer(authz, strlen(authz), tok, sizeof tok);
            size_t al = strlen(authz), b = 6, e = al;
            while (b < al && (authz[b] == ' ' || authz[b] == '\t')) b++;
            while (e > b && (authz[e - 1] == ' ' || authz[e - 1] == '\t')) e--;
            int is = al > 7 && strncasecmp(authz, "Bearer", 6) == 0 && b > 6 && e > b;
            FUZZ_CHECK(is == (r != 0), "httpd_bearer %d", r);
            if (r > 0) FUZZ_CHECK(strlen(tok) == e - b && memcmp(tok, authz + b, e - b) == 0, "bearer copy");
        }
        int got = arg(&qs, "before", a, sizeof a);
        if (got > 0 && a[0]) check_cursor(a);
        if (arg(&qs, "limit", a, sizeof a)) check_limit(a);
    } else {
        /* any other value goes through the same parsers too */
        check_since(in);
        check_cursor(in);
        check_limit(in);
    }
    free(in);
    return 0;
}
