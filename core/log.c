/* log: see log.h. Records are "ts level module: text", one per line: the
 * text is redacted, then escaped (log_escape), so no logged value can end a
 * record early or start a forged one. */
#define _GNU_SOURCE
#include "log.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static log_level_t g_level = LOG_INFO;
static const char *g_names[] = {"debug", "info", "warn", "error"};

void log_set_level(log_level_t lvl) { g_level = lvl; }
log_level_t log_get_level(void) { return g_level; }

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (s && strcasecmp(s, g_names[i]) == 0) return i;
    return -1;
}

/* Appends src[0..len) to out at *o, keeping one byte for the NUL. */
static void put(char *out, size_t n, size_t *o, const char *src, size_t len)
{
    while (len-- && *o + 1 < n) out[(*o)++] = *src++;
}

void log_redact(const char *s, char *out, size_t n)
{
    size_t o = 0;
    if (!n) return;
    if (!s) s = "";
    while (*s) {
        int hit = 0;
        size_t klen = 0;
        if (strncasecmp(s, "token=", 6) == 0) { hit = 1; klen = 6; }
        else if (strncasecmp(s, "bearer ", 7) == 0) { hit = 1; klen = 7; }
        else if (strncasecmp(s, "\"token\":\"", 9) == 0) { hit = 2; klen = 9; }
        if (hit) {
            put(out, n, &o, s, klen);
            put(out, n, &o, "[redacted]", 10);
            s += klen;
            if (hit == 2) { while (*s && *s != '"') s++; }
            else { while (*s && *s != '&' && *s != ' ' && *s != '"' && *s != '\n') s++; }
            continue;
        }
        put(out, n, &o, s, 1);
        s++;
    }
    out[o] = 0;
}

void log_escape(const char *s, char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (!n) return;
    if (!s) s = "";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char e[8];
        size_t el = 0, skip = 0;
        unsigned c = *p;
        if (c == '\n' || c == '\r' || c == '\t') {
            e[0] = '\\';
            e[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
            el = 2;
        } else if (c < 0x20 || c == 0x7f) {
            e[0] = '\\'; e[1] = 'x'; e[2] = hex[c >> 4]; e[3] = hex[c & 15];
            el = 4;
        } else if (c == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
            memcpy(e, "\\u00", 4); e[4] = hex[p[1] >> 4]; e[5] = hex[p[1] & 15];
            el = 6; skip = 1;
        } else if (c == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9)) {
            memcpy(e, p[2] == 0xa8 ? "\\u2028" : "\\u2029", 6);
            el = 6; skip = 2;
        } else {
            e[0] = (char)c;
            el = 1;
        }
        if (o + el + 1 > n) break;
        memcpy(out + o, e, el);
        o += el;
        p += skip;
    }
    out[o] = 0;
}

void log_msg(log_level_t lvl, const char *module, const char *fmt, ...)
{
    if (lvl < g_level) return;
    char raw[2048], red[2048], safe[4096], ts[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    log_redact(raw, red, sizeof red);
    log_escape(red, safe, sizeof safe);
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    struct tm tm;
    gmtime_r(&t.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %-5s %s: %s\n", ts, t.tv_nsec / 1000000L,
            g_names[lvl], module ? module : "-", safe);
}
