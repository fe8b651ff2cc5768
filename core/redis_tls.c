/* redis_tls: see redis_tls.h. */
#define _GNU_SOURCE
#include "redis_tls.h"
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct redis_tls {
    SSL_CTX *ctx;
    int verify;
};

static void ossl_err(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[200] = "";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    if (err && errlen) snprintf(err, errlen, "%s%s%s", what, buf[0] ? ": " : "", buf);
}

redis_tls *redis_tls_new(const redis_url *u, char *err, size_t errlen)
{
    redis_tls *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->verify = u->verify;
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (!t->ctx) {
        ossl_err(err, errlen, "TLS context");
        free(t);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int ok = u->ca_file[0] ? SSL_CTX_load_verify_locations(t->ctx, u->ca_file, NULL)
                           : SSL_CTX_set_default_verify_paths(t->ctx);
    if (ok != 1) {
        ossl_err(err, errlen, u->ca_file[0] ? "ssl_ca_certs" : "system trust store");
        redis_tls_free(t);
        return NULL;
    }
    if (u->cert_file[0] || u->key_file[0]) {
        if (!u->cert_file[0] || !u->key_file[0]) {
            snprintf(err, errlen, "redis url: ssl_certfile and ssl_keyfile go together");
            redis_tls_free(t);
            return NULL;
        }
        if (SSL_CTX_use_certificate_chain_file(t->ctx, u->cert_file) != 1 ||
            SSL_CTX_use_PrivateKey_file(t->ctx, u->key_file, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(t->ctx) != 1) {
            ossl_err(err, errlen, "client certificate");
            redis_tls_free(t);
            return NULL;
        }
    }
    SSL_CTX_set_verify(t->ctx, t->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    return t;
}

void redis_tls_free(redis_tls *t)
{
    if (!t) return;
    if (t->ctx) SSL_CTX_free(t->ctx);
    free(t);
}

SSL *redis_tls_session(redis_tls *t, int fd, const char *host, char *err, size_t errlen)
{
    SSL *s = SSL_new(t->ctx);
    if (!s) {
        ossl_err(err, errlen, "TLS session");
        return NULL;
    }
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    int ok = SSL_set_fd(s, fd) == 1;
    if (ok && !is_ip) ok = SSL_set_tlsext_host_name(s, host) == 1;
    if (ok && t->verify) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(s);
        ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, host) == 1 : SSL_set1_host(s, host) == 1;
    }
    if (!ok) {
        ossl_err(err, errlen, "TLS session setup");
        SSL_free(s);
        return NULL;
    }
    SSL_set_connect_state(s);
    return s;
}

void redis_tls_session_free(SSL *s)
{
    if (s) SSL_free(s);
}

/* maps the result of an SSL_* call */
static int status_of(SSL *s, int rc, const char *what, char *err, size_t errlen)
{
    int e = SSL_get_error(s, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ: return REDIS_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return REDIS_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        if (err && errlen) snprintf(err, errlen, "closed by the server (TLS)");
        return REDIS_TLS_EOF;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) {
            if (err && errlen) snprintf(err, errlen, "connection closed during TLS %s", what);
            return REDIS_TLS_EOF;
        }
        /* fall through */
    default: {
        long vr = SSL_get_verify_result(s);
        if (vr != X509_V_OK) {
            ERR_clear_error();
            if (err && errlen)
                snprintf(err, errlen, "TLS %s: certificate verification failed: %s", what,
                         X509_verify_cert_error_string(vr));
        } else {
            char m[40];
            snprintf(m, sizeof m, "TLS %s", what);
            ossl_err(err, errlen, m);
        }
        return REDIS_TLS_ERROR;
    }
    }
}

int redis_tls_handshake(SSL *s, char *err, size_t errlen)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(s);
    return rc == 1 ? REDIS_TLS_OK : status_of(s, rc, "handshake", err, errlen);
}

int redis_tls_read(SSL *s, char *buf, size_t cap, size_t *n, char *err, size_t errlen)
{
    ERR_clear_error();
    int rc = SSL_read(s, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);
    if (rc > 0) {
        *n = (size_t)rc;
        return REDIS_TLS_OK;
    }
    *n = 0;
    return status_of(s, rc, "read", err, errlen);
}

int redis_tls_write(SSL *s, const char *buf, size_t len, size_t *n, char *err, size_t errlen)
{
    ERR_clear_error();
    int rc = SSL_write(s, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    if (rc > 0) {
        *n = (size_t)rc;
        return REDIS_TLS_OK;
    }
    *n = 0;
    return status_of(s, rc, "write", err, errlen);
}
