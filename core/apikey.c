/* apikey: see apikey.h. */
#define _GNU_SOURCE
#include "apikey.h"
#include "log.h"
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct apikeys {
    size_t n;
    unsigned char (*digest)[SHA256_DIGEST_LENGTH];
};

apikeys *apikeys_new(const char *list, char *err, size_t errlen)
{
    apikeys *k = calloc(1, sizeof *k);
    size_t cap = 1;
    for (const char *p = list ? list : ""; *p; p++) cap += *p == ',';
    if (k) k->digest = calloc(cap, sizeof *k->digest);
    if (!k || !k->digest) {
        if (k) free(k);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    const char *p = list ? list : "";
    size_t idx = 0;
    while (*p) {
        const char *e = strchr(p, ',');
        if (!e) e = p + strlen(p);
        const char *a = p, *b = e;
        while (a < b && (*a == ' ' || *a == '\t')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
        idx++;
        if (b > a) {
            /* the contract sets no length: a short key works, with a
             * warning (as a short CHAT_JWT_SECRET) */
            if ((size_t)(b - a) < APIKEY_MIN)
                LOGW("api", "CHAT_API_KEYS: key #%zu is shorter than %d bytes; use a longer random key",
                     idx, APIKEY_MIN);
            SHA256((const unsigned char *)a, (size_t)(b - a), k->digest[k->n++]);
        }
        p = *e ? e + 1 : e;
    }
    if (!k->n) {
        snprintf(err, errlen, "CHAT_API_KEYS: no key given");
        apikeys_free(k);
        return NULL;
    }
    return k;
}

void apikeys_free(apikeys *k)
{
    if (!k) return;
    OPENSSL_cleanse(k->digest, k->n * sizeof *k->digest);
    free(k->digest);
    free(k);
}

size_t apikeys_count(const apikeys *k) { return k ? k->n : 0; }

int apikeys_check(const apikeys *k, const char *key, size_t len, char fp[APIKEY_FP_LEN + 1])
{
    if (!k || !key) return 0;
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)key, len, d);
    int found = 0;
    size_t which = 0;
    for (size_t i = 0; i < k->n; i++) { /* every key, whatever matched */
        int eq = CRYPTO_memcmp(d, k->digest[i], sizeof d) == 0;
        size_t mask = (size_t)0 - (size_t)eq;
        which = (which & ~mask) | (i & mask);
        found |= eq;
    }
    if (found && fp) {
        static const char hex[] = "0123456789abcdef";
        for (int i = 0; i < APIKEY_FP_LEN / 2; i++) {
            fp[2 * i] = hex[k->digest[which][i] >> 4];
            fp[2 * i + 1] = hex[k->digest[which][i] & 15];
        }
        fp[APIKEY_FP_LEN] = 0;
    }
    OPENSSL_cleanse(d, sizeof d);
    return found;
}

int apikey_from_header(const char *value, const char **key, size_t *len)
{
    if (!value || strncasecmp(value, "Bearer", 6) != 0 || (value[6] != ' ' && value[6] != '\t'))
        return 0;
    const char *p = value + 6;
    while (*p == ' ' || *p == '\t') p++;
    size_t l = strlen(p);
    while (l && (p[l - 1] == ' ' || p[l - 1] == '\t')) l--;
    if (!l) return 0;
    *key = p;
    *len = l;
    return 1;
}
