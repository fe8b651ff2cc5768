/* util: see util.h. */
#define _GNU_SOURCE
#include "util.h"
#include <stdio.h>
#include <string.h>
#include <time.h>

uint64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int room_name_valid(const char *s, size_t len)
{
    if (!s || len < 1 || len > CHAT_ROOM_MAX) return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
            return 0;
    }
    if (s[0] == '.' && (len == 1 || (len == 2 && s[1] == '.'))) return 0;   /* dot-segments */
    return 1;
}

int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The path t[0..tl) as libwebsockets serves it: %XX decoded, then empty
 * and "." segments dropped and ".." removing the one before (RFC 3986
 * 5.2.4, as lws cleans a URI). Into out (NUL-terminated); its length, or
 * (size_t)-1 when it does not fit. */
static size_t path_canon(const char *t, size_t tl, char *out, size_t cap)
{
    char dec[1024];
    size_t dl = 0;
    for (size_t i = 0; i < tl; i++) {
        if (dl + 1 >= sizeof dec) return (size_t)-1;
        int h, l;
        if (t[i] == '%' && i + 2 < tl && (h = hex_value(t[i + 1])) >= 0 &&
            (l = hex_value(t[i + 2])) >= 0) {
            dec[dl++] = (char)(h * 16 + l);
            i += 2;
        } else {
            dec[dl++] = t[i];
        }
    }
    size_t o = 0;
    if (cap < 2) return (size_t)-1;
    out[o++] = '/';
    size_t i = 0;
    while (i < dl) {
        while (i < dl && dec[i] == '/') i++;
        size_t s = i;
        while (i < dl && dec[i] != '/') i++;
        size_t sl = i - s;
        if (!sl || (sl == 1 && dec[s] == '.')) continue;
        if (sl == 2 && dec[s] == '.' && dec[s + 1] == '.') {   /* back to the previous '/' */
            if (o > 1) {
                o--;
                while (o > 1 && out[o - 1] != '/') o--;
            }
            continue;
        }
        if (o + sl + 2 > cap) return (size_t)-1;
        memcpy(out + o, dec + s, sl);
        o += sl;
        out[o++] = '/';
    }
    /* a trailing '/' only where the path had one */
    if (o > 1 && !(dl && dec[dl - 1] == '/')) o--;
    out[o] = 0;
    return o;
}

static int has_prefix(const char *s, size_t l, const char *pre)
{
    size_t pl = strlen(pre);
    return l >= pl && !memcmp(s, pre, pl);
}

int room_target_verdict(const char *head, size_t len, int *route, int *is_head)
{
    *route = 0;
    *is_head = 0;
    const char *end = head + len, *p = head;
    /* the method: any token (the server API's POST, PUT, DELETE too) */
    const char *m = p;
    while (p < end && *p >= 'A' && *p <= 'Z') p++;
    if (p == m || p >= end || *p != ' ') return 0;
    int get = (p - m == 3 && !memcmp(m, "GET", 3)), hd = (p - m == 4 && !memcmp(m, "HEAD", 4));
    *is_head = hd;
    p++;
    const char *t = p;
    while (p < end && *p != ' ' && *p != '?' && *p != '#' && *p != '\r' && *p != '\n') p++;
    size_t tl = (size_t)(p - t);
    /* a path lws would rewrite (%XX, //, . and .. segments) into a room
     * route: judged as sent, it names no room (//ws/a%2F..%2Fb, /%77s/x,
     * /x/../ws/y, /api/rooms/a%2F..%2Fb were rooms "b", "x", "y", "b") */
    char canon[1024];
    size_t cl = path_canon(t, tl, canon, sizeof canon);
    if (cl == (size_t)-1) {
        /* too long to judge (over 1 KiB decoded): refused when lws would
         * rewrite it (a %, an empty, "." or ".." segment), whatever route it
         * would become (review: 1100 slashes then ws/a%2F..%2Fb was room b) */
        for (size_t i = 0; i < tl; i++) {
            int seg = i == 0 || t[i - 1] == '/';
            if (t[i] == '%' || (t[i] == '/' && i + 1 < tl && t[i + 1] == '/') ||
                (seg && t[i] == '.' && (i + 1 == tl || t[i + 1] == '/' ||
                                        (t[i + 1] == '.' && (i + 2 == tl || t[i + 2] == '/')))))
                return 414;
        }
    } else if (cl != tl || memcmp(canon, t, tl) != 0) {
        if (has_prefix(canon, cl, "/ws/")) { *route = 1; return 400; }
        if (has_prefix(canon, cl, "/rooms/")) { *route = 2; return 400; }
        if (has_prefix(canon, cl, "/api/rooms/")) { *route = 3; return 400; }
    }
    if (!get && !hd) return 0;
    if (tl >= 4 && !memcmp(t, "/ws/", 4)) {
        *route = 1;
        return room_name_valid(t + 4, tl - 4) ? 0 : 400;
    }
    if (tl < 7 || memcmp(t, "/rooms/", 7) != 0) return 0;
    const char *name = t + 7, *slash = memchr(name, '/', tl - 7);
    if (!slash) return 0;       /* /rooms/unread, or a 404 */
    *route = 2;
    if (!room_name_valid(name, (size_t)(slash - name))) return 400;
    size_t wl = (size_t)(p - slash - 1);
    if ((wl == 8 && !memcmp(slash + 1, "messages", 8)) || (wl == 8 && !memcmp(slash + 1, "presence", 8)))
        return 0;
    return 404;
}

int parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (!s || len < 1 || len > 20) return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int seq_parse(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (!s || len < 1 || len > 19 || (s[0] == '0' && len > 1)) return -1;
    if (parse_u64(s, len, &v) != 0 || v > SEQ_MAX) return -1;
    *out = v;
    return 0;
}

size_t utf8_cut(const char *s, size_t max)
{
    size_t l = strlen(s);
    if (l <= max) return l;
    l = max;
    while (l && ((unsigned char)s[l] & 0xC0) == 0x80) l--;
    return l;
}

size_t utf8_seq(const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t k;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) { k = 1; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { k = 2; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { k = 3; cp = c & 0x07; }
    else return 0;
    if (k >= n) return 0;   /* truncated */
    for (size_t j = 1; j <= k; j++) {
        if ((s[j] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[j] & 0x3F);
    }
    if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return k + 1;
}

int utf8_valid(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(s + i, n - i);
        if (!k || !s[i]) return 0;
        i += k;
    }
    return 1;
}

int client_id_valid(const char *s, size_t n)
{
    if (!s || n < 1 || n > CLIENT_ID_BYTES) return 0;
    size_t chars = 0;
    for (size_t i = 0; i < n; chars++) {
        size_t k = utf8_seq(s + i, n - i);
        if (!k || !s[i] || chars == CLIENT_ID_CHARS) return 0;
        i += k;
    }
    return 1;
}

long json_escape(char *dst, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
#define PUT(ch) do { if (o >= cap) return -1; dst[o++] = (char)(ch); } while (0)
    PUT('"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': PUT('\\'); PUT('"'); break;
        case '\\': PUT('\\'); PUT('\\'); break;
        case '\n': PUT('\\'); PUT('n'); break;
        case '\r': PUT('\\'); PUT('r'); break;
        case '\t': PUT('\\'); PUT('t'); break;
        default:
            if (c < 0x20) {
                PUT('\\'); PUT('u'); PUT('0'); PUT('0');
                PUT(hex[c >> 4]); PUT(hex[c & 15]);
            } else if (c < 0x80) {
                PUT(c);
            } else {
                size_t k = utf8_seq(s + i, len - i);
                if (!k) {   /* ill-formed: U+FFFD, never invalid text on the wire */
                    PUT('\\'); PUT('u'); PUT('f'); PUT('f'); PUT('f'); PUT('d');
                } else {
                    for (size_t j = 0; j < k; j++) PUT(s[i + j]);
                    i += k - 1;
                }
            }
        }
    }
    PUT('"');
#undef PUT
    return (long)o;
}

/* ---- json_raw_member: the bytes of one top-level member's value ---------- */

static size_t jr_ws(const char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

/* i at a '"': returns the index after the closing quote, or len + 1. */
static size_t jr_string(const char *s, size_t len, size_t i)
{
    for (i++; i < len; i++) {
        if (s[i] == '\\') i++;
        else if (s[i] == '"') return i + 1;
    }
    return len + 1;
}

/* Whether the raw text r[0..n) of a JSON string (no quotes) spells key, an
 * ASCII key: escapes are decoded ("\u006deta" is "meta", as a parser reads
 * it); an escape of a non-ASCII character never matches. */
static int jr_key_is(const char *r, size_t n, const char *key, size_t kl)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++, k++) {
        unsigned c = (unsigned char)r[i];
        if (c == '\\' && i + 1 < n) {
            static const char esc[] = "\"\"\\\\//b\bf\fn\nr\rt\t";
            const char *e = strchr(esc, r[++i]);
            if (r[i] == 'u' && i + 4 < n) {
                c = 0;
                for (int j = 1; j <= 4; j++) {
                    char h = r[i + j];
                    c = c * 16 + (unsigned)(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
                }
                i += 4;
                if (c >= 0x80) return 0;
            } else if (e && *e && (e - esc) % 2 == 0) {
                c = (unsigned char)e[1];
            } else {
                return 0;
            }
        }
        if (k >= kl || (unsigned char)key[k] != c) return 0;
    }
    return k == kl;
}

/* i at the start of a value: returns the index after it, or len + 1. */
static size_t jr_value(const char *s, size_t len, size_t i)
{
    if (i >= len) return len + 1;
    if (s[i] == '"') return jr_string(s, len, i);
    if (s[i] == '{' || s[i] == '[') {
        int depth = 0;
        for (; i < len; i++) {
            if (s[i] == '"') { i = jr_string(s, len, i) - 1; if (i >= len) return len + 1; }
            else if (s[i] == '{' || s[i] == '[') depth++;
            else if (s[i] == '}' || s[i] == ']') { if (--depth == 0) return i + 1; }
        }
        return len + 1;
    }
    while (i < len && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' &&
           s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
        i++;
    return i;
}

int json_raw_member(const char *obj, size_t len, const char *key, size_t *off, size_t *vlen)
{
    size_t kl = strlen(key);
    size_t i = jr_ws(obj, len, 0);
    if (i >= len || obj[i] != '{') return -1;
    i = jr_ws(obj, len, i + 1);
    if (i < len && obj[i] == '}') return 0;
    while (i < len) {
        if (obj[i] != '"') return -1;
        size_t ke = jr_string(obj, len, i);
        if (ke > len) return -1;
        int match = jr_key_is(obj + i + 1, ke - i - 2, key, kl);
        i = jr_ws(obj, len, ke);
        if (i >= len || obj[i] != ':') return -1;
        i = jr_ws(obj, len, i + 1);
        size_t ve = jr_value(obj, len, i);
        if (ve > len || ve == i) return -1;
        if (match) { *off = i; *vlen = ve - i; return 1; }
        i = jr_ws(obj, len, ve);
        if (i >= len) return -1;
        if (obj[i] == '}') return 0;
        if (obj[i] != ',') return -1;
        i = jr_ws(obj, len, i + 1);
    }
    return -1;
}
