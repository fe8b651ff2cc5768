/* fuzz_jwt.h: shared by fuzz_jwt_hs256.c and fuzz_jwt_pubkey.c.
 *
 * Input layout. Byte 0 is the mode, the rest the payload:
 *   mode bit 0 = 0: the payload is the token, as a client sends it;
 *   mode bit 0 = 1: the payload is "<header JSON>\0<claims JSON>"; the
 *     harness base64url-encodes both and signs them (how: the target's
 *     mode bits 1-3), so the fuzzer reaches the claim checks behind a
 *     valid signature.
 * The oracle is independent of auth.c and libjwt: a token auth_verify
 * accepts must have a header naming an algorithm the context allows and a
 * signature that OpenSSL verifies with the context's key; its identity must
 * satisfy the claim rules (sub 1..127 bytes without NUL, exp > now,
 * nbf <= now, claims_json an object with that sub). A refused token leaves
 * a zeroed identity and a one-line printable reason. */
#ifndef CHATD_FUZZ_JWT_H
#define CHATD_FUZZ_JWT_H
#include "fuzz.h"
#include "auth.h"
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#define FUZZ_NOW 1700000000           /* "now" for exp/nbf (2023-11-14) */
#define FUZZ_SECRET "fixture-secret-0123456789abcdef0123"

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* unpadded base64url of p[0..n) appended to out at *o */
static inline void b64url_put(char *out, size_t *o, const unsigned char *p, size_t n)
{
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        for (int k = 3; k >= 0; k--) out[(*o)++] = B64URL[(v >> (6 * k)) & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[(*o)++] = B64URL[v >> 18 & 63];
        out[(*o)++] = B64URL[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[(*o)++] = B64URL[v >> 18 & 63];
        out[(*o)++] = B64URL[v >> 12 & 63];
        out[(*o)++] = B64URL[v >> 6 & 63];
    }
}

/* lenient base64url decode (the oracle only needs the signature bytes of a
 * token auth already accepted); returns the length, -1 on a bad char */
static inline long b64url_get(const char *s, size_t n, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    long o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *c = memchr(B64URL, s[i], 64);
        if (!c || !s[i]) return -1;
        acc = acc << 6 | (uint32_t)(c - B64URL);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return o;
}

static inline EVP_PKEY *load_pem(const char *rel, int priv)
{
    FILE *f = fopen(fuzz_path(rel), "rb");
    FUZZ_CHECK(f, "cannot open %s", rel);
    EVP_PKEY *k = priv ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    FUZZ_CHECK(k, "cannot read %s", rel);
    return k;
}

/* the signing input "b64(header).b64(claims)" of a structured payload, or
 * NULL when the payload has no NUL separator; *n its length */
static inline char *signing_input(const uint8_t *p, size_t n, size_t *outlen)
{
    const uint8_t *sep = memchr(p, 0, n);
    if (!sep) return NULL;
    size_t hl = (size_t)(sep - p), cl = n - hl - 1;
    char *s = malloc((hl + cl) / 3 * 4 + 16 + 512);  /* + room for "." and a signature */
    FUZZ_CHECK(s, "oom");
    size_t o = 0;
    b64url_put(s, &o, p, hl);
    s[o++] = '.';
    b64url_put(s, &o, sep + 1, cl);
    *outlen = o;
    return s;
}

/* HS256 over the signing input with key */
static inline size_t hs256(const void *key, size_t klen, const char *in, size_t n, unsigned char out[32])
{
    unsigned int ml = 0;
    FUZZ_CHECK(HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)in, n, out, &ml), "hmac");
    return ml;
}

/* RS256 / ES256 (JOSE raw r||s) signature; returns its length */
static inline size_t pk_sign(EVP_PKEY *k, int es, const char *in, size_t n, unsigned char *out)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    size_t sl = 0;
    FUZZ_CHECK(c && EVP_DigestSignInit(c, NULL, EVP_sha256(), NULL, k) == 1 &&
               EVP_DigestSign(c, NULL, &sl, (const unsigned char *)in, n) == 1, "sign init");
    unsigned char *der = malloc(sl);
    FUZZ_CHECK(der && EVP_DigestSign(c, der, &sl, (const unsigned char *)in, n) == 1, "sign");
    EVP_MD_CTX_free(c);
    if (!es) {
        memcpy(out, der, sl);
        free(der);
        return sl;
    }
    const unsigned char *q = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &q, (long)sl);
    FUZZ_CHECK(sig, "ecdsa der");
    const BIGNUM *r, *s;
    ECDSA_SIG_get0(sig, &r, &s);
    BN_bn2binpad(r, out, 32);
    BN_bn2binpad(s, out + 32, 32);
    ECDSA_SIG_free(sig);
    free(der);
    return 64;
}

/* OpenSSL's verdict on an RS256 / ES256 signature of in */
static inline int pk_verify(EVP_PKEY *k, int es, const char *in, size_t n, const unsigned char *sig,
                     size_t sl)
{
    unsigned char der[128];
    const unsigned char *use = sig;
    size_t ul = sl;
    if (es) {
        if (sl != 64) return 0;
        ECDSA_SIG *s = ECDSA_SIG_new();
        ECDSA_SIG_set0(s, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
        unsigned char *p = der;
        int dl = i2d_ECDSA_SIG(s, &p);
        ECDSA_SIG_free(s);
        if (dl <= 0) return 0;
        use = der;
        ul = (size_t)dl;
    }
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c && EVP_DigestVerifyInit(c, NULL, EVP_sha256(), NULL, k) == 1 &&
             EVP_DigestVerify(c, use, ul, (const unsigned char *)in, n) == 1;
    EVP_MD_CTX_free(c);
    return ok;
}

/* The header's alg (decoded independently); "" when unreadable. */
static inline void header_alg(const char *tok, char alg[16])
{
    alg[0] = 0;
    const char *d = strchr(tok, '.');
    if (!d) return;
    unsigned char *h = malloc((size_t)(d - tok) + 4);
    long hl = b64url_get(tok, (size_t)(d - tok), h);
    json_t *j = hl >= 0 ? json_loadb((const char *)h, (size_t)hl, 0, NULL) : NULL;
    const char *a = json_string_value(json_object_get(j, "alg"));
    if (a) snprintf(alg, 16, "%s", a);
    json_decref(j);
    free(h);
}

/* The checks every auth_verify answer must pass. verify_sig(alg, signing
 * input, signature) is the independent verdict for an accepted token. */
static inline void check_verdict(int rc, const char *tok, const identity *id, const char *reason,
                          int (*verify_sig)(const char *alg, const char *in, size_t n,
                                            const unsigned char *sig, size_t sl))
{
    FUZZ_SAY("auth_verify -> %d %s (user '%s')", rc, rc ? reason : "accepted", rc ? "" : id->user);
    if (rc != 0) {
        FUZZ_CHECK(rc == -1, "rc %d", rc);
        FUZZ_CHECK(reason[0], "refused without a reason");
        for (const char *p = reason; *p; p++)
            FUZZ_CHECK(*p >= 0x20 && *p < 0x7f, "reason byte 0x%02x", (unsigned char)*p);
        FUZZ_CHECK(!id->claims_json && !id->user[0] && !id->name[0] && !id->exp && !id->nbf,
                   "identity not cleared after a refusal");
        return;
    }
    /* accepted: the signature must be genuine */
    const char *d2 = strrchr(tok, '.');
    FUZZ_CHECK(d2 && d2 != strchr(tok, '.'), "accepted a token without 3 segments");
    size_t sl = strlen(d2 + 1);
    unsigned char *sig = malloc(sl + 4);
    long n = b64url_get(d2 + 1, sl, sig);
    char alg[16];
    header_alg(tok, alg);
    FUZZ_CHECK(n > 0 && verify_sig(alg, tok, (size_t)(d2 - tok), sig, (size_t)n),
               "accepted a token whose %s signature OpenSSL does not verify", alg);
    free(sig);
    /* sub and name: 1..127 bytes each (identity keeps them sized to fit) */
    size_t ul = strnlen(id->user, 128);
    FUZZ_CHECK(ul >= 1 && ul <= 127, "user length %zu", ul);
    size_t nl = strnlen(id->name, 128);
    FUZZ_CHECK(nl >= 1 && nl <= 127, "name length %zu", nl);
    FUZZ_CHECK(id->exp > FUZZ_NOW && id->nbf <= FUZZ_NOW, "exp %lld nbf %lld",
               (long long)id->exp, (long long)id->nbf);
    json_t *c = id->claims_json ? json_loads(id->claims_json, 0, NULL) : NULL;
    FUZZ_CHECK(json_is_object(c), "claims_json is not an object");
    const char *sub = json_string_value(json_object_get(c, "sub"));
    FUZZ_CHECK(sub && strcmp(sub, id->user) == 0, "identity user is not the sub claim");
    json_decref(c);
}

#endif
