/* fuzz_jwt_hs256: JWT verification (core/auth.c auth_verify) with an HS256
 * secret. Input layout and oracle: see fuzz_jwt.h. Structured inputs are
 * signed (mode bits 1-2) with the right secret, a wrong one, the right MAC
 * with one bit flipped, or not at all. */
#include "fuzz_jwt.h"

static auth_ctx *g_ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    char err[256];
    g_ctx = auth_new(FUZZ_SECRET, NULL, err, sizeof err);
    FUZZ_CHECK(g_ctx, "auth_new: %s", err);
    return 0;
}

static int verify_hs(const char *alg, const char *in, size_t n, const unsigned char *sig, size_t sl)
{
    unsigned char mac[32];
    if (strcmp(alg, "HS256") != 0) return 0;
    size_t ml = hs256(FUZZ_SECRET, strlen(FUZZ_SECRET), in, n, mac);
    return sl == ml && CRYPTO_memcmp(mac, sig, ml) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t mode = data[0];
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    char *tok;
    if (!(mode & 1)) {
        tok = fuzz_cstr(p, n);
    } else {
        size_t o = 0;
        tok = signing_input(p, n, &o);
        if (!tok) return 0;
        unsigned char mac[32];
        size_t ml = 0;
        switch ((mode >> 1) & 3) {
        case 0: ml = hs256(FUZZ_SECRET, strlen(FUZZ_SECRET), tok, o, mac); break;
        case 1: ml = hs256("another-secret-0123456789abcdef", 31, tok, o, mac); break;
        case 2:
            ml = hs256(FUZZ_SECRET, strlen(FUZZ_SECRET), tok, o, mac);
            mac[(mode >> 3) % ml] ^= (unsigned char)(1u << (mode >> 5));
            break;
        default: break;   /* "h.p." */
        }
        tok[o++] = '.';
        b64url_put(tok, &o, mac, ml);
        tok[o] = 0;
    }
    identity id;
    char reason[160];
    memset(&id, 0x5a, sizeof id);   /* auth_verify must set every field */
    reason[0] = 0;
    int rc = auth_verify(g_ctx, tok, FUZZ_NOW, &id, reason, sizeof reason);
    check_verdict(rc, tok, &id, reason, verify_hs);
    identity_clear(&id);
    free(tok);
    return 0;
}
