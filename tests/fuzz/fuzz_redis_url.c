/* fuzz_redis_url: the Redis URL parser (CHAT_REDIS_URL, --redis).
 * Today that is core/bus_url.c bus_url_parse; issue 11 item 10 replaces it
 * (and presence_redis.c's own copy) by one redis_url parser: then only
 * parse_redis_url() below changes (one line) plus the field names.
 * Oracles: a refusal says why ("redis url: ..."); %00 in the credentials
 * is refused (it would cut the password sent to AUTH); an accepted URL has a
 * host of 1..255 bytes without NUL, a port 1..65535 and a db 0..1000000, and
 * printing it back canonically (percent-encoded credentials, bracketed IPv6)
 * and parsing that again gives the same fields (the parser and its
 * documentation agree on what a URL means). */
#include "fuzz.h"
#include "bus_int.h"

typedef bus_url redis_url;
static int parse_redis_url(const char *s, redis_url *u, char *err, size_t errlen)
{
    return bus_url_parse(s, u, err, errlen);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

/* percent-encodes everything but unreserved characters */
static size_t enc(char *o, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            o[n++] = (char)c;
        } else {
            o[n++] = '%';
            o[n++] = hex[c >> 4];
            o[n++] = hex[c & 15];
        }
    }
    o[n] = 0;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_cstr(data, size);
    redis_url u;
    char err[160] = "";
    int rc = parse_redis_url(s, &u, err, sizeof err);
    FUZZ_SAY("'%s' -> %d %s host '%s' port %d db %d user '%s'", s, rc, err, rc ? "" : u.host,
             u.port, u.db, u.user);
    /* a NUL in the credentials would cut the password sent to AUTH */
    if (strncmp(s, "redis://", 8) == 0) {
        size_t auth_len = strcspn(s + 8, "/?#");
        const char *at = memrchr(s + 8, '@', auth_len);
        if (at && memmem(s + 8, (size_t)(at - (s + 8)), "%00", 3))
            FUZZ_CHECK(rc != 0, "'%s': %%00 in the credentials accepted", s);
    }
    if (rc != 0) {
        FUZZ_CHECK(rc == -1 && strncmp(err, "redis url: ", 11) == 0, "refusal without a reason");
        free(s);
        return 0;
    }
    size_t hl = strnlen(u.host, sizeof u.host);
    FUZZ_CHECK(hl >= 1 && hl < sizeof u.host, "host length %zu", hl);
    FUZZ_CHECK(u.port >= 1 && u.port <= 65535, "port %d", u.port);
    FUZZ_CHECK(u.db >= 0 && u.db <= 1000000, "db %d", u.db);
    FUZZ_CHECK(strnlen(u.user, sizeof u.user) < sizeof u.user &&
               strnlen(u.pass, sizeof u.pass) < sizeof u.pass, "credentials unterminated");

    /* print it back and parse again: same meaning */
    char *again = malloc(4 * (sizeof u.host + sizeof u.user + sizeof u.pass) + 64);
    FUZZ_CHECK(again, "oom");
    size_t o = (size_t)sprintf(again, "redis://");
    if (u.user[0] || u.pass[0]) {
        o += enc(again + o, u.user);
        again[o++] = ':';
        o += enc(again + o, u.pass);
        again[o++] = '@';
    }
    int v6 = strchr(u.host, ':') != NULL;
    o += (size_t)sprintf(again + o, v6 ? "[%s]:%d/%d" : "%s:%d/%d", u.host, u.port, u.db);
    redis_url w;
    char err2[160] = "";
    if (parse_redis_url(again, &w, err2, sizeof err2) == 0) {
        FUZZ_CHECK(strcmp(u.host, w.host) == 0 && u.port == w.port && u.db == w.db &&
                   strcmp(u.user, w.user) == 0 && strcmp(u.pass, w.pass) == 0,
                   "'%s' and its canonical form '%s' differ", s, again);
    } else {
        /* the only canonical forms that may not parse: hosts with characters
         * a URL authority cannot carry unencoded */
        FUZZ_CHECK(strpbrk(u.host, "/?#@[]") != NULL || (!v6 && strchr(u.host, ':')),
                   "'%s' parses but its canonical form '%s' does not: %s", s, again, err2);
    }
    free(again);
    free(s);
    return 0;
}
