/* redis_url: see redis_url.h. */
#define _GNU_SOURCE
#include "redis_url.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen) snprintf(err, errlen, "redis url: %s", msg);
    return -1;
}

/* percent-decodes s[0..n) into out (size cap); -1 when malformed, when it
 * does not fit, or when it would contain a NUL */
static int decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n) return -1;
            int h = hex_value(s[i + 1]), l = hex_value(s[i + 2]);
            if (h < 0 || l < 0) return -1;
            c = (char)(h * 16 + l);
            i += 2;
        }
        if (c == 0 || o + 1 >= cap) return -1;
        out[o++] = c;
    }
    out[o] = 0;
    return 0;
}

/* one "host[:port]" or "[v6][:port]" in s[0..n) */
static int parse_addr(const char *s, size_t n, redis_addr *a, char *err, size_t errlen)
{
    const char *end = s + n, *hend;
    a->port = 6379;
    if (n && *s == '[') {
        const char *rb = memchr(s, ']', n);
        if (!rb) return fail(err, errlen, "unterminated [ in an IPv6 host");
        size_t hl = (size_t)(rb - s - 1);
        if (hl == 0 || hl > REDIS_HOST_MAX) return fail(err, errlen, "bad IPv6 host");
        for (size_t i = 1; i <= hl; i++)
            if (!(hex_value(s[i]) >= 0 || s[i] == ':' || s[i] == '.'))
                return fail(err, errlen, "bad IPv6 host");
        memcpy(a->host, s + 1, hl);
        a->host[hl] = 0;
        hend = rb + 1;
    } else {
        hend = memchr(s, ':', n);
        if (!hend) hend = end;
        size_t hl = (size_t)(hend - s);
        if (hl == 0) return fail(err, errlen, "missing host");
        if (hl > REDIS_HOST_MAX) return fail(err, errlen, "host too long");
        for (size_t i = 0; i < hl; i++) {
            char c = s[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-' || c == '_'))
                return fail(err, errlen, "bad character in host");
        }
        memcpy(a->host, s, hl);
        a->host[hl] = 0;
    }
    if (hend < end) {
        if (*hend != ':' || hend + 1 == end) return fail(err, errlen, "bad port");
        long port = 0;
        for (const char *p = hend + 1; p < end; p++) {
            if (*p < '0' || *p > '9' || port > 65535) return fail(err, errlen, "bad port");
            port = port * 10 + (*p - '0');
        }
        if (port < 1 || port > 65535) return fail(err, errlen, "port out of range (1-65535)");
        a->port = (int)port;
    }
    return 0;
}

static int parse_option(redis_url *u, const char *s, size_t n, char *err, size_t errlen)
{
    const char *eq = memchr(s, '=', n);
    if (!eq) return fail(err, errlen, "option without '=' (name=value)");
    size_t kl = (size_t)(eq - s);
    const char *v = eq + 1;
    size_t vl = n - kl - 1;
    char val[256];
    if (decode(v, vl, val, sizeof val) != 0) return fail(err, errlen, "bad option value");
#define IS(name) (kl == strlen(name) && strncmp(s, name, kl) == 0)
    if (IS("ssl_ca_certs")) snprintf(u->ca_file, sizeof u->ca_file, "%s", val);
    else if (IS("ssl_certfile")) snprintf(u->cert_file, sizeof u->cert_file, "%s", val);
    else if (IS("ssl_keyfile")) snprintf(u->key_file, sizeof u->key_file, "%s", val);
    else if (IS("ssl_cert_reqs")) {
        if (strcmp(val, "required") == 0) u->verify = 1;
        else if (strcmp(val, "none") == 0) u->verify = 0;
        else return fail(err, errlen, "ssl_cert_reqs must be required or none");
    } else if (IS("db") && u->seeds[0].port == 0) {
        long db = 0;
        for (const char *q = val; *q; q++) {
            if (*q < '0' || *q > '9' || db > 100000) return fail(err, errlen, "bad db number");
            db = db * 10 + (*q - '0');
        }
        if (!val[0]) return fail(err, errlen, "bad db number");
        u->db = (int)db;
        return 0;
    } else {
        return fail(err, errlen, u->seeds[0].port == 0
                    ? "unknown option (a unix socket takes db=N only)"
                    : "unknown option (ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs)");
    }
#undef IS
    if (!u->tls) return fail(err, errlen, "ssl_* options need rediss://");
    return 0;
}

static int parse_options(redis_url *u, const char *p, char *err, size_t errlen)
{
    if (*p == '?') {
        p++;
        while (*p && *p != '#') {
            size_t l = strcspn(p, "&#");
            if (l && parse_option(u, p, l, err, errlen) != 0) return -1;
            p += l;
            if (*p == '&') p++;
        }
    }
    if (*p == '#') return fail(err, errlen, "a fragment (#) is not allowed");
    return 0;
}

/* credentials "[user]:password@" in p[0..end): p moves past them */
static int parse_credentials(const char **pp, const char *end, redis_url *u, char *err,
                             size_t errlen)
{
    const char *p = *pp, *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@') at = q;
    if (!at) return 0;
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (!colon) return fail(err, errlen, "credentials need user:password or :password");
    if (decode(p, (size_t)(colon - p), u->user, sizeof u->user) != 0)
        return fail(err, errlen, "bad user (percent-encoding or length)");
    if (decode(colon + 1, (size_t)(at - colon - 1), u->pass, sizeof u->pass) != 0)
        return fail(err, errlen, "bad password (percent-encoding or length)");
    if (u->user[0] && !u->pass[0]) return fail(err, errlen, "a user needs a password");
    *pp = at + 1;
    return 0;
}

/* after "unix://": [credentials@]/absolute/path[?db=N] */
static int parse_unix(const char *p, redis_url *u, char *err, size_t errlen)
{
    if (parse_credentials(&p, p + strcspn(p, "/?#"), u, err, errlen) != 0) return -1;
    if (*p != '/') return fail(err, errlen, "unix:// needs an absolute socket path (unix:///path)");
    size_t n = strcspn(p, "?#");
    if (decode(p, n, u->seeds[0].host, REDIS_UNIX_PATH_MAX + 1) != 0)
        return fail(err, errlen, "socket path too long (at most 107 bytes) or badly encoded");
    u->seeds[0].port = 0;
    u->nseeds = 1;
    return parse_options(u, p + n, err, errlen);
}

int redis_url_parse(const char *url, redis_url *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    u->verify = 1;
    if (!url) return fail(err, errlen, "missing");
    const char *p;
    if (strncmp(url, "redis://", 8) == 0) p = url + 8;
    else if (strncmp(url, "rediss://", 9) == 0) { p = url + 9; u->tls = 1; }
    else if (strncmp(url, "redis+cluster://", 16) == 0) { p = url + 16; u->cluster = 1; }
    else if (strncmp(url, "rediss+cluster://", 17) == 0) {
        p = url + 17;
        u->cluster = 1;
        u->tls = 1;
    } else if (strncmp(url, "unix://", 7) == 0) {
        return parse_unix(url + 7, u, err, errlen);
    } else {
        return fail(err, errlen, "must start with redis://, rediss://, redis+cluster://, "
                                 "rediss+cluster:// or unix://");
    }
    const char *end = p + strcspn(p, "/?#");
    if (parse_credentials(&p, end, u, err, errlen) != 0) return -1;
    /* hosts: one, or a comma-separated list of seeds in cluster mode */
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        if (u->nseeds == REDIS_URL_MAX_SEEDS) return fail(err, errlen, "too many seed nodes");
        if (parse_addr(p, (size_t)(e - p), &u->seeds[u->nseeds], err, errlen) != 0) return -1;
        u->nseeds++;
        if (!comma) break;
        if (!u->cluster) return fail(err, errlen, "several hosts need redis+cluster://");
        p = comma + 1;
        if (p == end) return fail(err, errlen, "empty host after ','");
    }
    if (u->nseeds == 0) return fail(err, errlen, "missing host");
    p = end;
    if (*p == '/') {
        p++;
        size_t dl = strcspn(p, "?#");
        if (dl) {
            long db = 0;
            for (size_t i = 0; i < dl; i++) {
                if (p[i] < '0' || p[i] > '9' || db > 100000) return fail(err, errlen, "bad db number");
                db = db * 10 + (p[i] - '0');
            }
            if (db && u->cluster) return fail(err, errlen, "a Redis Cluster has only db 0");
            u->db = (int)db;
        }
        p += dl;
    }
    return parse_options(u, p, err, errlen);
}

void redis_addr_format(const redis_addr *a, char *out, size_t n)
{
    if (a->port == 0) snprintf(out, n, "unix:%s", a->host);
    else if (strchr(a->host, ':')) snprintf(out, n, "[%s]:%d", a->host, a->port);
    else snprintf(out, n, "%s:%d", a->host, a->port);
}
