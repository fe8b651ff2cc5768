/* fuzz_jwt_pubkey: JWT verification (core/auth.c auth_verify) with an RS256
 * or ES256 public key, alone or next to an HS256 secret (algorithm
 * confusion: an HS256 token "signed" with the public key's PEM as secret
 * must be refused). Input layout and oracle: see fuzz_jwt.h. Mode bits 1-2
 * pick the context (RSA key, EC key, secret + RSA key, secret + EC key),
 * bits 3-4 how a structured input is signed: RS256 with the RSA private
 * key, ES256 with the EC private key, HS256 with the public key file as the
 * secret, HS256 with the real secret. */
#include "fuzz_jwt.h"

static auth_ctx *g_ctx[4];
static EVP_PKEY *g_rsa_pub, *g_ec_pub, *g_rsa_priv, *g_ec_priv;
static char *g_rsa_pem;
static size_t g_rsa_pem_len;
static int g_has_secret, g_key_es;   /* of the context in use */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    char err[256], rsa[1024], ec[1024];
    snprintf(rsa, sizeof rsa, "%s", fuzz_path("tests/fixtures/jwt/rsa_public.pem"));
    snprintf(ec, sizeof ec, "%s", fuzz_path("tests/fixtures/jwt/ec_public.pem"));
    const char *secret[4] = {NULL, NULL, FUZZ_SECRET, FUZZ_SECRET};
    const char *key[4] = {rsa, ec, rsa, ec};
    for (int i = 0; i < 4; i++) {
        g_ctx[i] = auth_new(secret[i], key[i], err, sizeof err);
        FUZZ_CHECK(g_ctx[i], "auth_new %d: %s", i, err);
    }
    g_rsa_pub = load_pem("tests/fixtures/jwt/rsa_public.pem", 0);
    g_ec_pub = load_pem("tests/fixtures/jwt/ec_public.pem", 0);
    g_rsa_priv = load_pem("tests/fixtures/jwt/rsa_private.pem", 1);
    g_ec_priv = load_pem("tests/fixtures/jwt/ec_private.pem", 1);
    FILE *f = fopen(rsa, "rb");
    FUZZ_CHECK(f, "open %s", rsa);
    g_rsa_pem = calloc(1, 4096);
    g_rsa_pem_len = fread(g_rsa_pem, 1, 4095, f);
    fclose(f);
    return 0;
}

static int verify_pk(const char *alg, const char *in, size_t n, const unsigned char *sig, size_t sl)
{
    if (strcmp(alg, "RS256") == 0 && !g_key_es) return pk_verify(g_rsa_pub, 0, in, n, sig, sl);
    if (strcmp(alg, "ES256") == 0 && g_key_es) return pk_verify(g_ec_pub, 1, in, n, sig, sl);
    if (strcmp(alg, "HS256") == 0 && g_has_secret) {
        unsigned char mac[32];
        size_t ml = hs256(FUZZ_SECRET, strlen(FUZZ_SECRET), in, n, mac);
        return sl == ml && CRYPTO_memcmp(mac, sig, ml) == 0;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t mode = data[0];
    int ci = (mode >> 1) & 3;
    g_has_secret = ci >= 2;
    g_key_es = ci & 1;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    char *tok;
    if (!(mode & 1)) {
        tok = fuzz_cstr(p, n);
    } else {
        size_t o = 0;
        tok = signing_input(p, n, &o);
        if (!tok) return 0;
        unsigned char sig[512];
        size_t sl = 0;
        switch ((mode >> 3) & 3) {
        case 0: sl = pk_sign(g_rsa_priv, 0, tok, o, sig); break;
        case 1: sl = pk_sign(g_ec_priv, 1, tok, o, sig); break;
        case 2: sl = hs256(g_rsa_pem, g_rsa_pem_len, tok, o, sig); break;
        default: sl = hs256(FUZZ_SECRET, strlen(FUZZ_SECRET), tok, o, sig); break;
        }
        if (mode & 0x80) sig[(mode >> 5) % sl] ^= 1;   /* one bit off */
        tok[o++] = '.';
        b64url_put(tok, &o, sig, sl);
        tok[o] = 0;
    }
    identity id;
    char reason[160];
    memset(&id, 0x5a, sizeof id);
    reason[0] = 0;
    int rc = auth_verify(g_ctx[ci], tok, FUZZ_NOW, &id, reason, sizeof reason);
    check_verdict(rc, tok, &id, reason, verify_pk);
    identity_clear(&id);
    free(tok);
    return 0;
}
