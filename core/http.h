/* http: the plain HTTP routes of protocol.md: /healthz, /readyz, /metrics,
 * /rooms/{room}/messages (history), /rooms/{room}/presence, /dev/token
 * (only with --dev-tokens) and the static browser client under /.
 * Owns: pending HTTP requests waiting for Postgres or presence; a request
 * whose connection closes first is cancelled (its callback only frees it). */
#ifndef CHATD_HTTP_H
#define CHATD_HTTP_H
#include <stddef.h>
#include <libwebsockets.h>

struct http_req;

/* LWS_CALLBACK_HTTP: serve uri; returns what the lws callback returns. */
int http_handle(struct lws *wsi, const char *uri, struct http_req **slot);
/* LWS_CALLBACK_HTTP_WRITEABLE for a request answered asynchronously. */
int http_writeable(struct lws *wsi, struct http_req **slot);
/* The HTTP connection closed or its transaction ended. */
void http_cancel(struct http_req **slot);

/* Writes a complete response. Returns the value the lws callback should
 * return (-1 to close, 0 to keep the connection). */
int http_reply(struct lws *wsi, unsigned status, const char *ctype, const char *body, size_t len);

/* Query argument "name" (without '='), URL-decoded by lws. 1 when found. */
int http_arg(struct lws *wsi, const char *name, char *out, size_t outlen);
/* Bearer token from Authorization, else ?token=. 1 when found. */
int http_token(struct lws *wsi, char *out, size_t outlen);

#endif
