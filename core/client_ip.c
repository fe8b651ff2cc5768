/* client_ip: see client_ip.h. */
#define _GNU_SOURCE
#include "client_ip.h"
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ip_net *g_trusted;
static size_t g_ntrusted;

static const uint8_t V4MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static void trim(const char **s, size_t *len)
{
    while (*len && (**s == ' ' || **s == '\t')) { (*s)++; (*len)--; }
    while (*len && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t')) (*len)--;
}

int ip_parse(const char *s, size_t len, ip_net *out)
{
    char b[64];
    trim(&s, &len);
    if (!len || len >= sizeof b) return -1;
    memcpy(b, s, len);
    b[len] = 0;
    char *a = b;
    if (a[0] == '[') {                      /* [v6] or [v6]:port */
        char *end = strchr(a, ']');
        if (!end || (end[1] && end[1] != ':')) return -1;
        *end = 0;
        a++;
    } else {
        char *colon = strchr(a, ':');
        if (colon && !strchr(colon + 1, ':')) *colon = 0;   /* v4:port */
    }
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, a, out->addr) == 1) {
        out->family = 4;
        out->prefix = 32;
        return 0;
    }
    if (inet_pton(AF_INET6, a, out->addr) == 1) {
        if (!memcmp(out->addr, V4MAPPED, 12)) {
            memmove(out->addr, out->addr + 12, 4);
            memset(out->addr + 4, 0, 12);
            out->family = 4;
            out->prefix = 32;
        } else {
            out->family = 6;
            out->prefix = 128;
        }
        return 0;
    }
    return -1;
}

int cidr_parse(const char *s, size_t len, ip_net *out)
{
    trim(&s, &len);
    const char *slash = memchr(s, '/', len);
    if (!slash) return ip_parse(s, len, out);
    if (ip_parse(s, (size_t)(slash - s), out) < 0) return -1;
    const char *p = slash + 1, *end = s + len;
    if (p == end || end - p > 3) return -1;
    int bits = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') return -1;
        bits = bits * 10 + (*p - '0');
    }
    if (bits > (out->family == 4 ? 32 : 128)) return -1;
    out->prefix = bits;
    return 0;
}

int cidr_match(const ip_net *net, const ip_net *ip)
{
    if (net->family != ip->family) return 0;
    int full = net->prefix / 8, rest = net->prefix % 8;
    if (memcmp(net->addr, ip->addr, (size_t)full)) return 0;
    if (!rest) return 1;
    uint8_t mask = (uint8_t)(0xFF << (8 - rest));
    return (net->addr[full] & mask) == (ip->addr[full] & mask);
}

int ip_is_loopback(const char *s)
{
    ip_net ip;
    if (!s || ip_parse(s, strlen(s), &ip) != 0) return 0;
    if (ip.family == 4) return ip.addr[0] == 127;
    static const uint8_t one[16] = {[15] = 1};
    return memcmp(ip.addr, one, 16) == 0;
}

void ip_format(const ip_net *ip, char out[CLIENT_IP_MAX])
{
    if (!inet_ntop(ip->family == 4 ? AF_INET : AF_INET6, ip->addr, out, CLIENT_IP_MAX))
        snprintf(out, CLIENT_IP_MAX, "?");
}

static int trusted(const ip_net *ip)
{
    for (size_t i = 0; i < g_ntrusted; i++)
        if (cidr_match(&g_trusted[i], ip)) return 1;
    return 0;
}

int client_ip_set_trusted(const char *list, char *err, size_t errlen)
{
    client_ip_free();
    if (!list || !*list) return 0;
    size_t n = 1;
    for (const char *p = list; *p; p++) n += *p == ',';
    g_trusted = calloc(n, sizeof *g_trusted);
    if (!g_trusted) { snprintf(err, errlen, "out of memory"); return -1; }
    const char *p = list;
    for (;;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        const char *q = p;
        size_t ql = len;
        trim(&q, &ql);
        if (ql) {
            if (cidr_parse(q, ql, &g_trusted[g_ntrusted]) < 0) {
                snprintf(err, errlen, "CHAT_TRUSTED_PROXIES: '%.*s' is not an IP address or CIDR", (int)ql, q);
                client_ip_free();
                return -1;
            }
            /* keep the network part only, so 10.1.2.3/8 means 10.0.0.0/8 */
            ip_net *t = &g_trusted[g_ntrusted];
            for (int bit = t->prefix; bit < (t->family == 4 ? 32 : 128); bit++)
                t->addr[bit / 8] &= (uint8_t)~(0x80 >> (bit % 8));
            g_ntrusted++;
        }
        if (!c) break;
        p = c + 1;
    }
    return 0;
}

void client_ip_free(void)
{
    free(g_trusted);
    g_trusted = NULL;
    g_ntrusted = 0;
}

void client_ip_resolve(const ip_net *peer, const char *xff, char out[CLIENT_IP_MAX])
{
    ip_net best = *peer;
    if (xff && trusted(peer)) {
        /* walk from the right: each trusted hop vouches for the one left of it */
        const char *end = xff + strlen(xff);
        while (end > xff) {
            const char *start = end;
            while (start > xff && start[-1] != ',') start--;
            ip_net hop;
            if (ip_parse(start, (size_t)(end - start), &hop) < 0) break;  /* garbage: stop at the last good hop */
            best = hop;
            if (!trusted(&hop)) break;
            end = start > xff ? start - 1 : xff;
        }
    }
    ip_format(&best, out);
}
