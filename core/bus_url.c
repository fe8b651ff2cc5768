/* bus_url: parses the Redis URL of the bus (CHAT_REDIS_URL):
 *   redis://[[user]:password@]host[:port][/db]
 * host may be a bracketed IPv6 literal; user and password may be
 * percent-encoded. Owns nothing. */
#define _GNU_SOURCE
#include "bus_int.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* percent-decodes s[0..n) into out (size cap); -1 when it does not fit */
static int decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n) return -1;
            int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
            if (h < 0 || l < 0) return -1;
            c = (char)(h * 16 + l);
            i += 2;
        }
        if (o + 1 >= cap) return -1;
        out[o++] = c;
    }
    out[o] = 0;
    return 0;
}

static int fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen) snprintf(err, errlen, "redis url: %s", msg);
    return -1;
}

int bus_url_parse(const char *url, bus_url *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    u->port = 6379;
    if (!url || strncmp(url, "redis://", 8) != 0)
        return fail(err, errlen, "must start with redis://");
    const char *p = url + 8;
    const char *end = p + strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@') at = q;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon) return fail(err, errlen, "credentials need user:password or :password");
        if (decode(p, (size_t)(colon - p), u->user, sizeof u->user) != 0 ||
            decode(colon + 1, (size_t)(at - colon - 1), u->pass, sizeof u->pass) != 0)
            return fail(err, errlen, "bad credentials");
        p = at + 1;
    }
    const char *hend;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb) return fail(err, errlen, "unterminated [");
        if ((size_t)(rb - p - 1) >= sizeof u->host || rb == p + 1)
            return fail(err, errlen, "bad host");
        memcpy(u->host, p + 1, (size_t)(rb - p - 1));
        hend = rb + 1;
    } else {
        hend = p;
        while (hend < end && *hend != ':') hend++;
        if (hend == p || (size_t)(hend - p) >= sizeof u->host)
            return fail(err, errlen, "missing host");
        memcpy(u->host, p, (size_t)(hend - p));
    }
    if (hend < end) {
        if (*hend != ':') return fail(err, errlen, "bad host");
        char *e;
        long port = strtol(hend + 1, &e, 10);
        if (e == hend + 1 || e != end || port < 1 || port > 65535)
            return fail(err, errlen, "bad port");
        u->port = (int)port;
    }
    if (*end == '/' && end[1]) {
        char *e;
        long db = strtol(end + 1, &e, 10);
        if (e == end + 1 || (*e && *e != '?' && *e != '#') || db < 0 || db > 1000000)
            return fail(err, errlen, "bad db number");
        u->db = (int)db;
    }
    return 0;
}
