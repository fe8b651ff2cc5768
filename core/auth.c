/* auth: see auth.h. JWT verification with a pinned algorithm.
 * Owns: the HS256 secret and the normalised PEM public key (RS256 or ES256).
 * The token header is decoded here (base64url + jansson) and its alg is
 * checked against the configured keys before libjwt sees the token; libjwt
 * then gets exactly one key: the secret for HS256, the public key for
 * RS256/ES256, never the public key for an HS* token. */
#define _GNU_SOURCE
#include "auth.h"
#include "api_parse.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <jwt.h>
#include <math.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AUTH_KEYFILE_MAX 65536 /* a PEM public key is a few hundred bytes */

struct auth_ctx {
    unsigned char *secret;  /* HS256 key, NULL when HS256 is disabled */
    size_t secret_len;
    unsigned char *pem;     /* SubjectPublicKeyInfo PEM, NUL-terminated */
    size_t pem_len;
    jwt_alg_t pub_alg;      /* JWT_ALG_RS256, JWT_ALG_ES256 or JWT_ALG_NONE */
};

static void fmt(char *dst, size_t n, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *dst, size_t n, const char *f, ...)
{
    if (!dst || !n) return;
    va_list ap;
    va_start(ap, f);
    vsnprintf(dst, n, f, ap);
    va_end(ap);
}

/* ---- key loading ------------------------------------------------------ */

static unsigned char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fmt(err, errlen, "cannot read public key %s: %s", path, strerror(errno));
        return NULL;
    }
    unsigned char *buf = malloc(AUTH_KEYFILE_MAX + 1);
    if (!buf) { fclose(fp); fmt(err, errlen, "out of memory"); return NULL; }
    size_t n = fread(buf, 1, AUTH_KEYFILE_MAX + 1, fp);
    int bad = ferror(fp);
    fclose(fp);
    if (bad || n > AUTH_KEYFILE_MAX) {
        free(buf);
        fmt(err, errlen, "cannot read public key %s: %s", path, bad ? "read error" : "file too large");
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Parses the PEM, pins the algorithm from the key type and stores a clean
 * re-encoded copy of the key for libjwt. */
static int load_pubkey(auth_ctx *a, const char *path, char *err, size_t errlen)
{
    size_t flen = 0;
    unsigned char *file = read_file(path, &flen, err, errlen);
    if (!file) return -1;
    int rc = -1;
    BIO *in = BIO_new_mem_buf(file, (int)flen), *out = NULL;
    EVP_PKEY *pk = in ? PEM_read_bio_PUBKEY(in, NULL, NULL, NULL) : NULL;
    if (!pk) {
        fmt(err, errlen, "%s: not a PEM public key (expected \"-----BEGIN PUBLIC KEY-----\")", path);
        goto done;
    }
    int id = EVP_PKEY_get_base_id(pk);
    if (id == EVP_PKEY_RSA) {
        int bits = EVP_PKEY_get_bits(pk);
        if (bits < 2048) {
            fmt(err, errlen, "%s: RSA key of %d bits is too short (need >= 2048)", path, bits);
            goto done;
        }
        a->pub_alg = JWT_ALG_RS256;
    } else if (id == EVP_PKEY_EC) {
        char group[64] = "";
        size_t glen = 0;
        if (!EVP_PKEY_get_group_name(pk, group, sizeof group, &glen) ||
            OBJ_sn2nid(group) != NID_X9_62_prime256v1) {
            fmt(err, errlen, "%s: EC key on curve '%s' is not supported (need P-256)", path,
                group[0] ? group : "?");
            goto done;
        }
        a->pub_alg = JWT_ALG_ES256;
    } else {
        fmt(err, errlen, "%s: unsupported key type (need RSA or EC P-256)", path);
        goto done;
    }
    out = BIO_new(BIO_s_mem());
    char *p = NULL;
    long plen;
    if (!out || !PEM_write_bio_PUBKEY(out, pk) || (plen = BIO_get_mem_data(out, &p)) <= 0) {
        fmt(err, errlen, "%s: cannot re-encode public key", path);
        goto done;
    }
    a->pem = malloc((size_t)plen + 1);
    if (!a->pem) { fmt(err, errlen, "out of memory"); goto done; }
    memcpy(a->pem, p, (size_t)plen);
    a->pem[plen] = 0;
    a->pem_len = (size_t)plen;
    rc = 0;
done:
    if (rc != 0) a->pub_alg = JWT_ALG_NONE;
    EVP_PKEY_free(pk);
    BIO_free(in);
    BIO_free(out);
    free(file);
    ERR_clear_error();
    return rc;
}

auth_ctx *auth_new(const char *hs256_secret, const char *pubkey_path, char *err, size_t errlen)
{
    int has_secret = hs256_secret && hs256_secret[0];
    int has_key = pubkey_path && pubkey_path[0];
    if (!has_secret && !has_key) {
        fmt(err, errlen, "no JWT secret or public key configured");
        return NULL;
    }
    auth_ctx *a = calloc(1, sizeof *a);
    if (!a) { fmt(err, errlen, "out of memory"); return NULL; }
    a->pub_alg = JWT_ALG_NONE;
    if (has_secret) {
        a->secret_len = strlen(hs256_secret);
        a->secret = malloc(a->secret_len + 1);
        if (!a->secret) { fmt(err, errlen, "out of memory"); auth_free(a); return NULL; }
        memcpy(a->secret, hs256_secret, a->secret_len + 1);
        if (a->secret_len < 32)
            LOGW("auth", "HS256 secret is shorter than 32 bytes; use a longer random secret");
    }
    if (has_key && load_pubkey(a, pubkey_path, err, errlen) != 0) {
        auth_free(a);
        return NULL;
    }
    LOGI("auth", "accepting %s%s%s", has_secret ? "HS256" : "", has_secret && has_key ? ", " : "",
         !has_key ? "" : a->pub_alg == JWT_ALG_RS256 ? "RS256" : "ES256");
    return a;
}

void auth_free(auth_ctx *a)
{
    if (!a) return;
    if (a->secret) { memset(a->secret, 0, a->secret_len); free(a->secret); }
    free(a->pem);
    free(a);
}

void identity_clear(identity *id)
{
    if (!id) return;
    free(id->strs);
    memset(id, 0, sizeof *id);
    id->user = id->name = "";
}

/* ---- token structure -------------------------------------------------- */

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Strict unpadded base64url. Returns a malloc'd buffer (NUL-terminated for
 * convenience) or NULL on bad input. */
static unsigned char *b64url_decode(const char *s, size_t len, size_t *outlen)
{
    if (len % 4 == 1) return NULL;
    unsigned char *out = malloc(len / 4 * 3 + 3);
    if (!out) return NULL;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_val((unsigned char)s[i]);
        if (v < 0) { free(out); return NULL; }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) { free(out); return NULL; } /* non-canonical trailing bits */
    out[o] = 0;
    *outlen = o;
    return out;
}

/* Decodes one segment into a JSON object; NULL when it is not one, with
 * *big set when it is JSON but holds an integer beyond 64 bits. */
static json_t *segment_object(const char *s, size_t len, int *big)
{
    size_t n = 0;
    *big = 0;
    unsigned char *raw = b64url_decode(s, len, &n);
    if (!raw) return NULL;
    json_error_t e;
    json_t *j = json_loadb((const char *)raw, n, 0, &e);
    if (!j && json_error_code(&e) == json_error_numeric_overflow) *big = 1;
    free(raw);
    if (j && !json_is_object(j)) { json_decref(j); j = NULL; }
    return j;
}

/* The alg the header asks for, if the configured keys allow it. */
static jwt_alg_t pinned_alg(const auth_ctx *a, const json_t *hdr)
{
    const json_t *alg = json_object_get(hdr, "alg");
    if (!json_is_string(alg) || json_string_length(alg) != strlen(json_string_value(alg)))
        return JWT_ALG_INVAL;
    const char *s = json_string_value(alg);
    if (strcmp(s, "HS256") == 0 && a->secret) return JWT_ALG_HS256;
    if (strcmp(s, "RS256") == 0 && a->pub_alg == JWT_ALG_RS256) return JWT_ALG_RS256;
    if (strcmp(s, "ES256") == 0 && a->pub_alg == JWT_ALG_ES256) return JWT_ALG_ES256;
    return JWT_ALG_INVAL; /* "none", HS* with only a public key, anything else */
}

/* ---- claims ----------------------------------------------------------- */

/* Time claim as seconds; reals are rounded up so that a consumer comparing
 * integers never accepts the token earlier than the claim says. */
static int time_claim(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) { *out = (int64_t)json_integer_value(v); return 0; }
    if (!json_is_real(v)) return -1;
    double d = ceil(json_real_value(v));
    if (d > 4e18) d = 4e18;
    if (d < -4e18) d = -4e18;
    *out = (int64_t)d;
    return 0;
}

/* A string claim copied into dst[AUTH_CLAIM_MAX + 1]: 0, or -1 with why
 * (the 401's reason) when it is not a string, empty, holds a NUL, or (cut
 * == 0) is longer than AUTH_CLAIM_MAX bytes. With cut, a longer one is cut
 * to AUTH_CLAIM_MAX bytes at a UTF-8 character boundary (a display name
 * is cosmetic: the token is not refused for it). */
static int string_claim(const json_t *v, char dst[AUTH_CLAIM_MAX + 1], int cut, const char **why)
{
    if (!json_is_string(v)) { *why = "not a string"; return -1; }
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n == 0) { *why = "empty"; return -1; }
    if (memchr(s, 0, n)) { *why = "contains U+0000"; return -1; }
    if (n > AUTH_CLAIM_MAX) {
        if (!cut) { *why = "too long"; return -1; }
        n = utf8_cut(s, AUTH_CLAIM_MAX);
    }
    memcpy(dst, s, n);
    dst[n] = 0;
    return 0;
}

static int check_claims(json_t *claims, int64_t now_s, identity *out, char *reason, size_t rlen)
{
    const json_t *exp = json_object_get(claims, "exp");
    if (!exp) { fmt(reason, rlen, "missing exp claim"); return -1; }
    if (time_claim(exp, &out->exp) != 0) { fmt(reason, rlen, "invalid exp claim"); return -1; }
    if (out->exp <= now_s) { fmt(reason, rlen, "token expired"); return -1; }
    const json_t *nbf = json_object_get(claims, "nbf");
    if (nbf) {
        if (time_claim(nbf, &out->nbf) != 0) { fmt(reason, rlen, "invalid nbf claim"); return -1; }
        if (out->nbf > now_s) { fmt(reason, rlen, "token not yet valid"); return -1; }
    }
    char user[AUTH_CLAIM_MAX + 1], name[AUTH_CLAIM_MAX + 1];
    const char *why = "";
    const json_t *sub = json_object_get(claims, "sub");
    if (!sub) { fmt(reason, rlen, "missing sub claim"); return -1; }
    if (string_claim(sub, user, 0, &why) != 0) {
        fmt(reason, rlen, "invalid sub claim: %s (a string of 1-%d bytes)", why, AUTH_CLAIM_MAX);
        return -1;
    }
    /* a user id is the same text everywhere: the server API addresses
     * users (disconnect, ban) and authors by this rule (api_parse.h) */
    if (!api_user_valid(user, strlen(user))) {
        fmt(reason, rlen, "invalid sub claim: contains a control character");
        return -1;
    }
    /* name: absent, null or "" all mean the sub; a longer one is cut */
    const json_t *nm = json_object_get(claims, "name");
    if (nm && !json_is_null(nm) && !(json_is_string(nm) && json_string_length(nm) == 0)) {
        if (string_claim(nm, name, 1, &why) != 0) {
            fmt(reason, rlen, "invalid name claim: %s", why);
            return -1;
        }
    } else {
        memcpy(name, user, sizeof name);
    }
    /* one allocation: user \0 [name \0] claims \0 (name shares user's
     * bytes when they are equal, e.g. no name claim) */
    size_t cl = json_dumpb(claims, NULL, 0, JSON_COMPACT);
    size_t ul = strlen(user), nl = strcmp(name, user) == 0 ? 0 : strlen(name) + 1;
    char *b = cl ? malloc(ul + 1 + nl + cl + 1) : NULL;
    if (!b) { fmt(reason, rlen, "out of memory"); return -1; }
    memcpy(b, user, ul + 1);
    if (nl) memcpy(b + ul + 1, name, nl);
    char *cj = b + ul + 1 + nl;
    if (json_dumpb(claims, cj, cl, JSON_COMPACT) != cl) { free(b); fmt(reason, rlen, "out of memory"); return -1; }
    cj[cl] = 0;
    out->strs = b;
    out->user = b;
    out->name = nl ? b + ul + 1 : b;
    out->claims_json = cj;
    return 0;
}

/* ---- verification ----------------------------------------------------- */

int auth_verify(const auth_ctx *a, const char *token, int64_t now_s, identity *out,
                char *reason, size_t rlen)
{
    identity tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.user = tmp.name = "";
    if (out) { memset(out, 0, sizeof *out); out->user = out->name = ""; }
    if (!a || !out) { fmt(reason, rlen, "auth not configured"); return -1; }
    size_t len = token ? strlen(token) : 0;
    if (len == 0) { fmt(reason, rlen, "missing token"); return -1; }
    if (len > AUTH_TOKEN_MAX) { fmt(reason, rlen, "token too long"); return -1; }

    /* exactly three segments: header.payload.signature */
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token))) {
        fmt(reason, rlen, "malformed token");
        return -1;
    }
    size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1);
    size_t slen = len - (size_t)(d2 + 1 - token);

    int big;
    json_t *hdr = segment_object(token, hlen, &big);
    if (!hdr) { fmt(reason, rlen, "malformed token"); return -1; }
    jwt_alg_t alg = pinned_alg(a, hdr);
    int has_crit = json_object_get(hdr, "crit") != NULL;
    json_decref(hdr);
    if (alg == JWT_ALG_INVAL) { fmt(reason, rlen, "algorithm not allowed"); return -1; }
    if (has_crit) { fmt(reason, rlen, "unsupported critical header"); return -1; }

    /* libjwt (jwt_decode, which checks the signature) reads the claims with
     * jansson's default flags: an integer beyond 64 bits anywhere in them,
     * even in a claim chatd never reads, makes it refuse the token. Such a
     * token cannot be verified without bypassing libjwt: refused, and
     * said so (docs/operations.md "Tokens"). */
    json_t *payload = segment_object(d1 + 1, plen, &big);
    if (!payload) {
        fmt(reason, rlen, big ? "unsupported token: a claim holds an integer beyond 64 bits" : "malformed token");
        return -1;
    }
    json_decref(payload);
    size_t siglen = 0;
    unsigned char *sig = slen ? b64url_decode(d2 + 1, slen, &siglen) : NULL;
    if (!sig || siglen == 0) { free(sig); fmt(reason, rlen, "malformed token"); return -1; }
    free(sig);

    /* One key, chosen by the pinned alg, never the public key for HS256. */
    const unsigned char *key = alg == JWT_ALG_HS256 ? a->secret : a->pem;
    size_t klen = alg == JWT_ALG_HS256 ? a->secret_len : a->pem_len;
    jwt_t *jwt = NULL;
    if (jwt_decode(&jwt, token, key, (int)klen) != 0 || !jwt) {
        if (jwt) jwt_free(jwt);
        fmt(reason, rlen, "bad signature");
        return -1;
    }
    if (jwt_get_alg(jwt) != alg) { /* belt and braces: libjwt saw the same header */
        jwt_free(jwt);
        fmt(reason, rlen, "algorithm not allowed");
        return -1;
    }
    char *cj = jwt_get_grants_json(jwt, NULL);
    jwt_free(jwt);
    json_t *claims = cj ? json_loads(cj, 0, NULL) : NULL;
    free(cj);
    if (!json_is_object(claims)) {
        json_decref(claims);
        fmt(reason, rlen, "malformed token");
        return -1;
    }
    int rc = check_claims(claims, now_s, &tmp, reason, rlen);
    json_decref(claims);
    if (rc != 0) { identity_clear(&tmp); return -1; }
    *out = tmp;
    return 0;
}

/* ---- minting ---------------------------------------------------------- */

char *auth_mint(const auth_ctx *a, const char *sub, const char *name, int64_t exp_s,
                const char *extra_claims_json)
{
    if (!a || !a->secret || !sub || !sub[0]) return NULL;
    jwt_t *jwt = NULL;
    char *tok = NULL;
    if (jwt_new(&jwt) != 0) return NULL;
    if (extra_claims_json) {
        json_t *extra = json_loads(extra_claims_json, 0, NULL);
        char *dump = NULL;
        if (json_is_object(extra)) {
            /* the explicit arguments win over extra members */
            json_object_del(extra, "sub");
            json_object_del(extra, "name");
            json_object_del(extra, "exp");
            dump = json_dumps(extra, JSON_COMPACT);
        }
        json_decref(extra);
        int bad = !dump || jwt_add_grants_json(jwt, dump) != 0;
        free(dump);
        if (bad) goto done;
    }
    if (jwt_add_grant(jwt, "sub", sub) != 0) goto done;
    if (name && name[0] && jwt_add_grant(jwt, "name", name) != 0) goto done;
    if (jwt_add_grant_int(jwt, "exp", (long)exp_s) != 0) goto done;
    if (jwt_set_alg(jwt, JWT_ALG_HS256, a->secret, (int)a->secret_len) != 0) goto done;
    tok = jwt_encode_str(jwt);
done:
    jwt_free(jwt);
    return tok;
}
