/* log: see log.h. Records are "ts level module: text", one per line. */
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

void log_msg(log_level_t lvl, const char *module, const char *fmt, ...)
{
    if (lvl < g_level) return;
    char raw[2048], safe[2048], ts[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    log_redact(raw, safe, sizeof safe);
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    struct tm tm;
    gmtime_r(&t.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %-5s %s: %s\n", ts, t.tv_nsec / 1000000L,
            g_names[lvl], module ? module : "-", safe);
}
