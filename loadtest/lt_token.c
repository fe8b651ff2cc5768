/* lt_token: HS256 JWT minting and base64 helpers, see lt_token.h. */
#include "lt_token.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

size_t lt_b64(const unsigned char *in, size_t n, char *out, int url)
{
    static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char web[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const char *a = url ? web : std;
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        out[o++] = a[v >> 6 & 63];
        out[o++] = a[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        if (!url) { out[o++] = '='; out[o++] = '='; }
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        out[o++] = a[v >> 6 & 63];
        if (!url) out[o++] = '=';
    }
    out[o] = 0;
    return o;
}

int lt_jwt_mint(const char *secret, const char *sub, const char *name, long exp,
                char *out, size_t outsz, const char **err)
{
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    char payload[256], p64[360];
    int pl = snprintf(payload, sizeof payload, "{\"sub\":\"%s\",\"name\":\"%s\",\"exp\":%ld}",
                      sub, name, exp);
    if (pl < 0 || (size_t)pl >= sizeof payload) {
        *err = "jwt claims too long";
        return -1;
    }
    char h64[64];
    lt_b64((const unsigned char *)hdr, sizeof hdr - 1, h64, 1);
    lt_b64((const unsigned char *)payload, (size_t)pl, p64, 1);
    char signing[448];
    int sl = snprintf(signing, sizeof signing, "%s.%s", h64, p64);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)signing,
              (size_t)sl, mac, &maclen)) {
        *err = "HMAC failed";
        return -1;
    }
    char s64[64];
    lt_b64(mac, maclen, s64, 1);
    int n = snprintf(out, outsz, "%s.%s", signing, s64);
    if (n < 0 || (size_t)n >= outsz) {
        *err = "jwt buffer too small";
        return -1;
    }
    return 0;
}

void lt_ws_accept(const char *key, char *out)
{
    char cat[128];
    int n = snprintf(cat, sizeof cat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    unsigned char dig[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)cat, (size_t)n, dig);
    lt_b64(dig, sizeof dig, out, 0);
}
