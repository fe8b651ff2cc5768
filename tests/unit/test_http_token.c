/* test_http_token: where the token of a plain HTTP request comes from
 * (http_token: the Authorization header, else ?token=) and how httpd_arg
 * reports what it could not read. lws' header reads are faked (--wrap of
 * lws_hdr_total_length, lws_hdr_copy, lws_hdr_fragment_length,
 * lws_hdr_copy_fragment): the request is the Authorization value and the
 * query fragments set below. Allocation failures come from allocfail.h.
 * Also /dev/token's arguments (http_dev_token_args), read the same way. */
#define _GNU_SOURCE
#include "allocfail.h"
#include "auth.h"
#include "check.h"
#include "http.h"
#include "httpd.h"
#include <stdlib.h>
#include <string.h>

static const char *g_auth;        /* the Authorization header, NULL: none */
static const char *g_args[4];     /* the query fragments, NULL-terminated */

int __wrap_lws_hdr_total_length(struct lws *wsi, enum lws_token_indexes h);
int __wrap_lws_hdr_total_length(struct lws *wsi, enum lws_token_indexes h)
{
    (void)wsi;
    return h == WSI_TOKEN_HTTP_AUTHORIZATION && g_auth ? (int)strlen(g_auth) : 0;
}

int __wrap_lws_hdr_copy(struct lws *wsi, char *dst, int len, enum lws_token_indexes h);
int __wrap_lws_hdr_copy(struct lws *wsi, char *dst, int len, enum lws_token_indexes h)
{
    (void)wsi;
    if (h != WSI_TOKEN_HTTP_AUTHORIZATION || !g_auth) return 0;
    int n = (int)strlen(g_auth);
    if (n >= len) return -1;   /* lws: it does not fit */
    memcpy(dst, g_auth, (size_t)n + 1);
    return n;
}

int __wrap_lws_hdr_fragment_length(struct lws *wsi, enum lws_token_indexes h, int idx);
int __wrap_lws_hdr_fragment_length(struct lws *wsi, enum lws_token_indexes h, int idx)
{
    (void)wsi;
    if (h != WSI_TOKEN_HTTP_URI_ARGS || idx < 0 || idx >= 4 || !g_args[idx]) return 0;
    for (int i = 0; i < idx; i++)
        if (!g_args[i]) return 0;
    return (int)strlen(g_args[idx]);
}

int __wrap_lws_hdr_copy_fragment(struct lws *wsi, char *dst, int len, enum lws_token_indexes h, int idx);
int __wrap_lws_hdr_copy_fragment(struct lws *wsi, char *dst, int len, enum lws_token_indexes h, int idx)
{
    int n = __wrap_lws_hdr_fragment_length(wsi, h, idx);
    if (!n || n >= len) return -1;
    memcpy(dst, g_args[idx], (size_t)n + 1);
    return n;
}

/* "name=" and n bytes of c, malloc'd */
static char *long_value(const char *name, char c, size_t n)
{
    size_t nl = strlen(name);
    char *s = malloc(nl + n + 1);
    memcpy(s, name, nl);
    memset(s + nl, c, n);
    s[nl + n] = 0;
    return s;
}

static void test_token_sources(void)
{
    static char out[AUTH_TOKEN_MAX + 1];
    struct lws *wsi = (struct lws *)&g_auth;   /* never read: the reads are faked */
    g_args[0] = "token=q.t.s";
    g_args[1] = NULL;
    g_auth = "Bearer h.t.s";
    CHECK(http_token(wsi, out, sizeof out) == 1 && !strcmp(out, "h.t.s"), "the header first: %s", out);
    g_auth = "Basic dXNlcjpwYXNz";
    CHECK(http_token(wsi, out, sizeof out) == 1 && !strcmp(out, "q.t.s"), "another scheme: ?token=: %s", out);
    /* a long header of another scheme is no token either (it answered "token too long") */
    char *basic = long_value("Basic ", 'x', AUTH_TOKEN_MAX + 1000);
    g_auth = basic;
    CHECK(http_token(wsi, out, sizeof out) == 1 && !strcmp(out, "q.t.s"), "a long Basic header: ?token=");
    g_args[0] = NULL;
    CHECK(http_token(wsi, out, sizeof out) == 0, "a long Basic header and no ?token=: missing");
    /* a long Bearer token is too long, whatever the query says */
    char *bearer = long_value("Bearer ", 'y', AUTH_TOKEN_MAX + 1);
    g_auth = bearer;
    g_args[0] = "token=q.t.s";
    CHECK(http_token(wsi, out, sizeof out) == -1, "a Bearer token over AUTH_TOKEN_MAX: too long");
    /* the long header cannot be copied: out of memory, not the client's doing */
    g_auth = basic;
    af_fail_malloc = 1;
    CHECK(http_token(wsi, out, sizeof out) == HTTPD_ARG_NOMEM, "no memory for a long header");
    af_fail_malloc = 0;
    free(basic);
    free(bearer);
    g_auth = NULL;
}

static void test_arg_results(void)
{
    char out[64];
    struct lws *wsi = (struct lws *)&g_auth;
    char *big = long_value("token=", 'z', 2000);     /* over httpd_arg's stack buffer */
    g_args[0] = "a=1";
    g_args[1] = big;
    g_args[2] = NULL;
    CHECK(httpd_arg(wsi, "a", out, sizeof out) == 1 && !strcmp(out, "1"), "found");
    CHECK(httpd_arg(wsi, "b", out, sizeof out) == 0, "absent");
    CHECK(httpd_arg(wsi, "token", out, sizeof out) == -1 && !out[0], "longer than out");
    af_fail_malloc = 1;
    /* it said -1, "too long": a ?token= answered 401 "token too long" */
    CHECK(httpd_arg(wsi, "token", out, sizeof out) == HTTPD_ARG_NOMEM && !out[0],
          "no memory for a long fragment");
    af_fail_malloc = 0;
    g_args[0] = NULL;
    g_auth = NULL;
    static char tok[AUTH_TOKEN_MAX + 1];
    g_args[0] = big;
    g_args[1] = NULL;
    af_fail_malloc = 1;
    CHECK(http_token(wsi, tok, sizeof tok) == HTTPD_ARG_NOMEM, "no memory for a long ?token=");
    af_fail_malloc = 0;
    g_args[0] = NULL;
    free(big);
}

/* /dev/token's arguments: a long name= that cannot be copied is 503 (out of
 * memory), not 400 "name must be 1-32 characters" as an empty name would be */
static void test_dev_token_args(void)
{
    char name[128];
    long ttl = 0;
    const char *err = "";
    struct lws *wsi = (struct lws *)&g_auth;
    g_auth = NULL;
    g_args[0] = "name=Alice";
    g_args[1] = "ttl=60";
    g_args[2] = NULL;
    CHECK(http_dev_token_args(wsi, name, sizeof name, &ttl, &err) == 0 && !strcmp(name, "Alice") && ttl == 60,
          "name and ttl: %s %ld", name, ttl);
    g_args[1] = NULL;
    CHECK(http_dev_token_args(wsi, name, sizeof name, &ttl, &err) == 0 && ttl == 3600, "default ttl %ld", ttl);
    g_args[1] = "ttl=0";
    CHECK(http_dev_token_args(wsi, name, sizeof name, &ttl, &err) == 400 && strstr(err, "ttl"), "ttl 0: %s", err);
    char *big = long_value("name=", 'n', 2000);   /* over httpd_arg's stack buffer */
    g_args[0] = big;
    g_args[1] = NULL;
    CHECK(http_dev_token_args(wsi, name, sizeof name, &ttl, &err) == 400 && strstr(err, "name"),
          "a long name: %s", err);
    af_fail_malloc = 1;
    int st = http_dev_token_args(wsi, name, sizeof name, &ttl, &err);
    af_fail_malloc = 0;
    CHECK(st == 503 && !strcmp(err, "out of memory"), "no memory for a long name: %d %s", st, err);
    /* a long ttl= likewise */
    char *bigttl = long_value("ttl=", '1', 2000);
    g_args[0] = "name=a";
    g_args[1] = bigttl;
    g_args[2] = NULL;
    af_fail_malloc = 1;
    st = http_dev_token_args(wsi, name, sizeof name, &ttl, &err);
    af_fail_malloc = 0;
    CHECK(st == 503, "no memory for a long ttl: %d %s", st, err);
    g_args[0] = NULL;
    free(big);
    free(bigttl);
}

int main(void)
{
    test_token_sources();
    test_arg_results();
    test_dev_token_args();
    return check_summary("test_http_token");
}
