/* http: the plain HTTP routes of protocol.md: /healthz, /readyz, /metrics,
 * /rooms/{room}/messages (history), /rooms/{room}/presence, /dev/token
 * (only with --dev-tokens) and the static browser client under /; their
 * methods (one table) and the CORS preflight (OPTIONS) under /rooms/.
 * Owns: pending HTTP requests waiting for Postgres or presence; a request
 * whose connection closes first is cancelled (its callback only frees it). */
#ifndef CHATD_HTTP_H
#define CHATD_HTTP_H
#include <stddef.h>
#include <stdint.h>
#include <libwebsockets.h>

struct http_req;

/* LWS_CALLBACK_HTTP: serve uri; returns what the lws callback returns. */
int http_handle(struct lws *wsi, const char *uri, struct http_req **slot);
/* LWS_CALLBACK_HTTP_WRITEABLE for a request answered asynchronously. */
int http_writeable(struct lws *wsi, struct http_req **slot);
/* The HTTP connection closed or its transaction ended. */
void http_cancel(struct http_req **slot);

/* Bearer token from Authorization, else ?token= (also after an
 * Authorization header of another scheme, of any length). 1 when found, 0
 * when neither is there, -1 when too long for out, HTTPD_ARG_NOMEM when out
 * of memory. */
int http_token(struct lws *wsi, char *out, size_t outlen);

/* The arguments of /dev/token: name= (1-32 bytes, into name) and ttl=
 * (1-86400 s, default 3600). 0 when usable; else the status to answer (400:
 * the client's mistake, 503: out of memory) and *err its text. */
int http_dev_token_args(struct lws *wsi, char *name, size_t namelen, long *ttl, const char **err);

/* Pure: the plain routes' JSON error body {"error":text} (text
 * JSON-escaped, at most 300 bytes of it) into b (cap >= 320); its length. */
size_t http_error_json(char *b, size_t cap, const char *text);

/* Pure: the methods the plain route of uri answers (bit 1 << HM_*; HEAD
 * wherever GET is): GET everywhere, OPTIONS (a CORS preflight) under
 * /rooms/. The table http_handle judges methods by. */
unsigned http_route_methods(const char *uri);

/* ---- request parsing: pure functions (no socket), driven by the fuzz
 * target tests/fuzz/fuzz_request.c ---- */
typedef enum { HTTP_ROOM_MESSAGES = 1, HTTP_ROOM_PRESENCE = 2 } http_room_route;
/* rest: the path after "/rooms/", i.e. "{room}/messages" or "{room}/presence".
 * 0 with room (NUL-terminated, CHAT_ROOM_MAX + 1 bytes) and *route set;
 * 404 for any other path; 400 when the room name is invalid. */
int http_parse_room_path(const char *rest, char *room, http_room_route *route);
/* History cursor "c<hex seq>" (as written in next_cursor): 0 and *seq
 * (>= 1), or -1. */
int http_parse_cursor(const char *s, uint64_t *seq);
/* History page size: decimal 1..200, nothing else. 0 and *limit, or -1. */
int http_parse_limit(const char *s, int *limit);
/* since= of /ws/{room}: 1-20 decimal digits that fit in 64 bits (no sign,
 * no blanks). 0 and *since, or -1. */
int http_parse_since(const char *s, uint64_t *since);

#endif
