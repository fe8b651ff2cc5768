/* apikey: the server API's keys (CHAT_API_KEYS, comma-separated secrets)
 * and the check of a presented bearer key. Each key is kept only as its
 * SHA-256 digest; a presented key is hashed and compared with every
 * configured digest in constant time (CRYPTO_memcmp, no early exit), so
 * neither a key's bytes nor its length nor which key matched shows in the
 * timing. A key's fingerprint (hex of the first 8 digest bytes) names it
 * where a name is needed (its rate-limit bucket); the key itself never
 * appears in a log, a metric or Redis.
 * Owns: the digests. */
#ifndef CHATD_APIKEY_H
#define CHATD_APIKEY_H
#include <stddef.h>

#define APIKEY_MIN 16       /* a shorter key is accepted with a warning at start */
#define APIKEY_FP_LEN 16    /* fingerprint: hex characters */

typedef struct apikeys apikeys;

/* Parses "k1,k2,..." (blanks around keys ignored, empty entries skipped).
 * NULL with err when no non-empty key is given. A key shorter than
 * APIKEY_MIN bytes is kept, with a warning logged. */
apikeys *apikeys_new(const char *list, char *err, size_t errlen);
void apikeys_free(apikeys *k);
size_t apikeys_count(const apikeys *k);
/* 1 when key[0..len) is one of the keys (fp, if not NULL, gets its
 * fingerprint, NUL-terminated), 0 otherwise. */
int apikeys_check(const apikeys *k, const char *key, size_t len, char fp[APIKEY_FP_LEN + 1]);
/* "Authorization: Bearer <key>" value -> the key's bytes (scheme
 * case-insensitive, one or more spaces). 1 found, 0 not a bearer value. */
int apikey_from_header(const char *value, const char **key, size_t *len);

#endif
