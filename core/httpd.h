/* httpd: the HTTP/1.1 mechanics under the routes of the server API: the
 * request's method, its Content-Length / Transfer-Encoding / Content-Type,
 * the body read incrementally (LWS_CALLBACK_HTTP_BODY) up to a limit, and
 * complete answers: status, content-type, content-length always,
 * cache-control: no-store, extra headers (Allow, Retry-After,
 * WWW-Authenticate), JSON errors {"error":{"code","message"}}, and
 * "connection: close" when the rest of a request will not be read (a
 * refused body), so keep-alive never parses a body as the next request.
 * Owns: nothing across calls (a body buffer belongs to its request).
 * Also the query arguments of a request (the WebSocket upgrade's too).
 * Layer: transport helpers (lws), below http, api, ws and chat. */
#ifndef CHATD_HTTPD_H
#define CHATD_HTTPD_H
#include <stddef.h>
#include <stdint.h>
#include <libwebsockets.h>

enum { HM_GET = 0, HM_POST, HM_PUT, HM_DELETE, HM_PATCH, HM_HEAD, HM_OPTIONS, HM_OTHER, HM_N };

/* The request method (HM_*), from the lws header table. */
int httpd_method(struct lws *wsi);
const char *httpd_method_name(int m);
/* Pure: the method m (HM_*) is allowed by allow (bit 1 << HM_* per
 * method; HEAD is allowed wherever GET is: RFC 9110 9.3.2). How the server
 * API and the plain routes judge a request's method. */
int httpd_method_allowed(unsigned allow, int m);
/* Pure: the Allow header of allow ("GET, HEAD, OPTIONS"; HEAD wherever
 * GET is), in HM_* order, into out. */
void httpd_allow_header(unsigned allow, char *out, size_t n);
/* Content-Length: the value, -1 when absent, -2 when malformed. */
int64_t httpd_content_length(struct lws *wsi);
/* 1 when the request has a Transfer-Encoding (its body length is not
 * known up front). */
int httpd_chunked(struct lws *wsi);
/* "Expect: 100-continue": the client waits for "HTTP/1.1 100 Continue"
 * before it sends the body (curl for bodies over 1 KiB, PHP's curl, .NET),
 * and stalls a second without it (RFC 9110 10.1.1; lws does not answer
 * it). httpd_expects_continue: 1 when the request asks for it. A request
 * whose body will be read is sent the interim answer (httpd_continue: 0,
 * or -1 when it could not be written); one refused before its body gets
 * its final status at once (and its connection closes after). */
int httpd_expects_continue(struct lws *wsi);
int httpd_continue(struct lws *wsi);
/* The pure half of httpd_content_length (fuzzed by tests/fuzz/fuzz_api.c),
 * on a header value v[0..n) as lws copied it: Content-Length digits -> the
 * value, or -2 when malformed (not only digits, or too large). */
int64_t httpd_parse_content_length(const char *v, size_t n);

/* The query argument name (without '='), URL-decoded by lws: 1 when found
 * (its value in out), 0 when absent, -1 when longer than outlen - 1 (out is
 * then "": no truncated value is ever used), HTTPD_ARG_NOMEM when a long
 * argument could not be copied (out of memory: not the client's fault). */
#define HTTPD_ARG_NOMEM (-2)
int httpd_arg(struct lws *wsi, const char *name, char *out, size_t outlen);
/* Pure (no socket; driven by tests/fuzz/fuzz_request.c): one URL-decoded
 * query fragment frag[0..n) as lws gives them: when it is "name=value",
 * the value into out: 1, or -1 (out "") when it does not fit in outlen; 0
 * for another fragment. httpd_arg's matching. */
int httpd_arg_match(const char *frag, size_t n, const char *name, char *out, size_t outlen);
/* Pure: an Authorization header h[0..n): "Bearer" (case-insensitive), one
 * or more blanks, the token (RFC 6750 2.1: "Bearer" 1*SP b64token) -> the
 * token into out as httpd_arg_match does; 0 otherwise. */
int httpd_bearer(const char *h, size_t n, char *out, size_t outlen);

/* A complete answer (a 204: no content-type, no content-length, no body).
 * hdrs: NULL or name/value pairs ("retry-after", "3"), NULL-terminated. close: send "connection: close" and end the connection
 * after it. Returns what the lws HTTP callback returns (-1: close). */
int httpd_reply(struct lws *wsi, unsigned status, const char *ctype, const char *body,
                size_t len, const char *const *hdrs, int close);
/* The same; no_body: the answer to a HEAD (RFC 9110 9.3.2: the head of the
 * GET answer, content-length included, and no body). */
int httpd_reply_ex(struct lws *wsi, unsigned status, const char *ctype, const char *body,
                   size_t len, const char *const *hdrs, int close, int no_body);
/* After an answer with close set whose request body will not be read:
 * stop sending (shutdown SHUT_WR) and let the client's bytes drain for at
 * most secs before lws closes, so the close is a FIN, not a reset that
 * could destroy the answer before the client read it (a lingering close).
 * The caller drops the body bytes lws still delivers. */
void httpd_linger(struct lws *wsi, int secs);
/* {"error":{"code":code,"message":message}} (JSON-escaped). */
int httpd_error(struct lws *wsi, unsigned status, const char *code, const char *message,
                const char *const *hdrs, int close);
/* The same JSON error body, malloc'd and NUL-terminated (*len set, the
 * NUL not counted); NULL when out of memory. */
char *httpd_error_body(const char *code, const char *message, size_t *len);

/* A request body read in pieces, bounded. */
typedef struct httpd_body {
    char *buf;
    size_t len, cap, max;
} httpd_body;
/* Appends; 0, -1 when it would exceed max (nothing appended), -2 out of
 * memory. buf stays NUL-terminated. */
int httpd_body_add(httpd_body *b, const void *in, size_t len);
void httpd_body_free(httpd_body *b);

#endif
