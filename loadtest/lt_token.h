/* lt_token: HS256 JWT minting and the base64 helpers the WebSocket
 * handshake needs (Sec-WebSocket-Key / Sec-WebSocket-Accept). */
#ifndef LT_TOKEN_H
#define LT_TOKEN_H
#include <stddef.h>
#include <stdint.h>

/* base64 (std alphabet, padded) or base64url (no padding) of n bytes into out;
 * returns the length written (out must hold 4*ceil(n/3)+1 bytes). */
size_t lt_b64(const unsigned char *in, size_t n, char *out, int url);

/* HS256 JWT with claims sub, name, exp into out; 0 or -1 with *err set. */
int lt_jwt_mint(const char *secret, const char *sub, const char *name, long exp,
                char *out, size_t outsz, const char **err);

/* Sec-WebSocket-Accept value for a Sec-WebSocket-Key (out >= 29 bytes). */
void lt_ws_accept(const char *key, char *out);

#endif
