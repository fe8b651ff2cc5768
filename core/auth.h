/* auth: JWT verification (libjwt) -> identity.
 * Owns: the verification keys and the pinned algorithms. HS256 uses the
 * shared secret only; RS256/ES256 use the public key only (the key type pins
 * the algorithm: RSA -> RS256, EC P-256 -> ES256). The token header's alg is
 * read and checked BEFORE any signature check, so "none" and algorithm
 * confusion (HS256 signed with the public key as secret) are refused.
 * Required claims: sub (string of 1..127 bytes, no NUL), exp (number).
 * Optional: name (absent, null or "": the sub; longer than 127 bytes: cut
 * at a UTF-8 character boundary), nbf, iat. */
#ifndef CHATD_AUTH_H
#define CHATD_AUTH_H
#include <stddef.h>
#include <stdint.h>

typedef struct auth_ctx auth_ctx;

/* A verified token's identity. Its three strings live in one allocation
 * (strs), each sized to fit: an idle connection holds a few dozen bytes of
 * identity, not two 128-byte arrays and a separate claims copy. A cleared
 * identity has user and name "" and claims_json NULL. */
#define AUTH_TOKEN_MAX 16384   /* longer tokens are refused (401 "token too long") */
#define AUTH_CLAIM_MAX 127     /* sub: 1..AUTH_CLAIM_MAX bytes; a longer name is cut to it */
typedef struct identity {
    const char *user;        /* sub, 1..127 bytes */
    const char *name;        /* name claim (cut to 127 bytes), or sub when absent/null/"" */
    const char *claims_json; /* the whole claims object as compact JSON */
    int64_t exp;             /* seconds since epoch */
    int64_t nbf;             /* 0 when absent */
    char *strs;              /* the allocation the three point into */
} identity;

/* Either or both of secret / pubkey_path. Returns NULL with err filled when
 * neither is given, the key file cannot be read, or the key type is not RSA
 * or EC P-256. */
auth_ctx *auth_new(const char *hs256_secret, const char *pubkey_path, char *err, size_t errlen);
void auth_free(auth_ctx *a);

/* Verifies token at time now_s (seconds). 0 and *out filled on success
 * (call identity_clear later). -1 on failure with a one-line human reason in
 * reason (e.g. "token expired", "bad signature", "algorithm not allowed",
 * "malformed token", "token not yet valid", "missing sub claim"). Never logs
 * the token. leeway: none (exp <= now is expired, nbf > now is not yet valid). */
int auth_verify(const auth_ctx *a, const char *token, int64_t now_s, identity *out,
                char *reason, size_t rlen);
void identity_clear(identity *id);   /* frees strs; leaves it cleared */

/* Mints an HS256 token (dev tokens; needs the secret). Returns malloc'd
 * string or NULL. extra_claims_json may be NULL or a JSON object whose members
 * are added to the claims. */
char *auth_mint(const auth_ctx *a, const char *sub, const char *name, int64_t exp_s,
                const char *extra_claims_json);

#endif
