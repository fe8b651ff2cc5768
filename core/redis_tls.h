/* redis_tls: TLS for the Redis connection layer (rediss://), on OpenSSL.
 * Owns: one client SSL_CTX per redis_client (trust store: the system's or
 * ssl_ca_certs; optional client certificate ssl_certfile/ssl_keyfile;
 * verification of the certificate and of the host name or IP unless
 * ssl_cert_reqs=none), and the SSL object of each connection it starts.
 * All calls are non-blocking: they say whether the socket must become
 * readable or writable before the call is tried again. */
#ifndef CHATD_REDIS_TLS_H
#define CHATD_REDIS_TLS_H
#include "redis_url.h"
#include <stddef.h>
#include <sys/types.h>

typedef struct redis_tls redis_tls;
typedef struct ssl_st SSL;

redis_tls *redis_tls_new(const redis_url *u, char *err, size_t errlen);
void redis_tls_free(redis_tls *t);

/* A client session on the connected socket fd for host (SNI and the name or
 * IP checked against the certificate). NULL with err on failure. */
SSL *redis_tls_session(redis_tls *t, int fd, const char *host, char *err, size_t errlen);
void redis_tls_session_free(SSL *s);

enum { REDIS_TLS_OK = 0, REDIS_TLS_WANT_READ, REDIS_TLS_WANT_WRITE, REDIS_TLS_ERROR,
       REDIS_TLS_EOF };

/* Each returns one of the REDIS_TLS_* codes; on REDIS_TLS_ERROR err says why. */
int redis_tls_handshake(SSL *s, char *err, size_t errlen);
/* *n: bytes read (REDIS_TLS_OK) */
int redis_tls_read(SSL *s, char *buf, size_t cap, size_t *n, char *err, size_t errlen);
/* *n: bytes written (REDIS_TLS_OK, may be less than len) */
int redis_tls_write(SSL *s, const char *buf, size_t len, size_t *n, char *err, size_t errlen);

#endif
