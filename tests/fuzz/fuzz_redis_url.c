/* fuzz_redis_url: the one Redis URL parser (CHAT_REDIS_URL, --redis):
 * core/redis_url.c redis_url_parse (redis://, rediss://, redis+cluster://,
 * rediss+cluster://, unix://, credentials, seeds, db, ssl_* options).
 * Oracles: a refusal says why ("redis url: ..."); a NUL decoded into the
 * credentials is refused (it would cut what AUTH sends); an accepted URL has
 * 1..16 seeds of a host of 1..255 bytes without NUL and a port 1..65535 (a
 * unix socket: one seed, port 0, an absolute path of at most 107 bytes), a
 * db below 10^7 (0 on a Cluster), a user only with a password, ssl_* only
 * with TLS; printing it back canonically (percent-encoded credentials and
 * option values, bracketed IPv6) and parsing that again gives the same
 * fields: the parser and its documentation agree on what a URL means. */
#include "fuzz.h"
#include "redis_url.h"

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

static int same(const redis_url *a, const redis_url *b)
{
    if (a->tls != b->tls || a->cluster != b->cluster || a->nseeds != b->nseeds || a->db != b->db ||
        a->verify != b->verify || strcmp(a->user, b->user) || strcmp(a->pass, b->pass) ||
        strcmp(a->ca_file, b->ca_file) || strcmp(a->cert_file, b->cert_file) ||
        strcmp(a->key_file, b->key_file))
        return 0;
    for (int i = 0; i < a->nseeds; i++)
        if (strcmp(a->seeds[i].host, b->seeds[i].host) || a->seeds[i].port != b->seeds[i].port)
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_cstr(data, size);
    redis_url *u = calloc(2, sizeof *u);
    FUZZ_CHECK(u, "oom");
    char err[160] = "";
    int rc = redis_url_parse(s, u, err, sizeof err);
    FUZZ_SAY("'%s' -> %d %s seeds %d", s, rc, err, u->nseeds);
    /* a NUL in the credentials would cut the password sent to AUTH */
    const char *sch = strstr(s, "://");
    if (sch) {
        const char *auth = sch + 3;
        size_t al = strcspn(auth, "/?#");
        const char *at = memrchr(auth, '@', al);
        if (at && memmem(auth, (size_t)(at - auth), "%00", 3))
            FUZZ_CHECK(rc != 0, "'%s': %%00 in the credentials accepted", s);
    }
    if (rc != 0) {
        FUZZ_CHECK(rc == -1 && strncmp(err, "redis url: ", 11) == 0, "refusal without a reason");
        free(u);
        free(s);
        return 0;
    }
    FUZZ_CHECK(u->nseeds >= 1 && u->nseeds <= REDIS_URL_MAX_SEEDS && (u->cluster || u->nseeds == 1),
               "%d seeds", u->nseeds);
    int unix_ = u->seeds[0].port == 0;
    if (unix_)
        FUZZ_CHECK(strncmp(s, "unix://", 7) == 0 && u->nseeds == 1 && !u->tls && !u->cluster &&
                   u->seeds[0].host[0] == '/' && strlen(u->seeds[0].host) <= REDIS_UNIX_PATH_MAX,
                   "'%s': a unix socket of another form: %s", s, u->seeds[0].host);
    for (int i = 0; i < u->nseeds; i++) {
        size_t hl = strnlen(u->seeds[i].host, sizeof u->seeds[i].host);
        FUZZ_CHECK(hl >= 1 && hl < sizeof u->seeds[i].host, "host length %zu", hl);
        FUZZ_CHECK(unix_ || (u->seeds[i].port >= 1 && u->seeds[i].port <= 65535), "port %d",
                   u->seeds[i].port);
    }
    FUZZ_CHECK(u->db >= 0 && u->db < 10000000 && (!u->cluster || u->db == 0), "db %d", u->db);
    FUZZ_CHECK(!u->user[0] || u->pass[0], "a user without a password");
    FUZZ_CHECK(u->tls || (!u->ca_file[0] && !u->cert_file[0] && !u->key_file[0] && u->verify),
               "ssl options without TLS");

    /* print it back and parse again: same meaning */
    char *again = malloc(16384);
    FUZZ_CHECK(again, "oom");
    size_t o = (size_t)sprintf(again, "%s%s://", unix_ ? "unix" : u->tls ? "rediss" : "redis",
                               u->cluster ? "+cluster" : "");
    if (u->user[0] || u->pass[0]) {
        o += enc(again + o, u->user);
        again[o++] = ':';
        o += enc(again + o, u->pass);
        again[o++] = '@';
    }
    int odd_host = 0;
    if (unix_) {
        again[o++] = '/';
        o += enc(again + o, u->seeds[0].host + 1);
        o += (size_t)sprintf(again + o, "?db=%d", u->db);
    }
    for (int i = 0; i < u->nseeds && !unix_; i++) {
        const redis_addr *a = &u->seeds[i];
        if (strpbrk(a->host, "/?#@[],")) odd_host = 1;
        o += (size_t)sprintf(again + o, strchr(a->host, ':') ? "%s[%s]:%d" : "%s%s:%d", i ? "," : "",
                             a->host, a->port);
    }
    if (!unix_) o += (size_t)sprintf(again + o, "/%d", u->db);
    const char *sep = unix_ ? "&" : "?";
    const struct { const char *k, *v; } opt[] = {
        {"ssl_ca_certs", u->ca_file}, {"ssl_certfile", u->cert_file}, {"ssl_keyfile", u->key_file}};
    for (int i = 0; i < 3; i++) {
        if (!opt[i].v[0]) continue;
        o += (size_t)sprintf(again + o, "%s%s=", sep, opt[i].k);
        o += enc(again + o, opt[i].v);
        sep = "&";
    }
    if (!u->verify) o += (size_t)sprintf(again + o, "%sssl_cert_reqs=none", sep);
    redis_url *w = u + 1;
    char err2[160] = "";
    if (redis_url_parse(again, w, err2, sizeof err2) == 0)
        FUZZ_CHECK(same(u, w), "'%s' and its canonical form '%s' differ", s, again);
    else
        /* the only canonical forms that may not parse: hosts with characters
         * a URL authority cannot carry unencoded */
        FUZZ_CHECK(odd_host, "'%s' parses but its canonical form '%s' does not: %s", s, again, err2);
    free(again);
    free(u);
    free(s);
    return 0;
}
