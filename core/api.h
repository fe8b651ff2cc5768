/* api: the server API of protocol.md "Server API (v2)" on the HTTP
 * listener under /api/ (docs/api.md): publish a message (through
 * publish.c: the same seq order, durable ack and idempotency as a
 * WebSocket message, the policy's on_message with ctx.source = "api"),
 * disconnect a user, ban / unban, room info, moderator delete (a hook that
 * answers 404 until message updates land). Cluster-wide actions travel on
 * the control channel (ctl.h); every node acts (chat_admin.c) and answers.
 * Requests: the route and method are checked, then the key (apikey.h),
 * then the body is read (httpd.h, up to CHAT_MAX_FRAME), then the key's
 * rate (climit.h), then the route runs; the answer is written when ready
 * (HTTP_WRITEABLE) on a keep-alive connection.
 * Owns: the API requests in flight, one per HTTP connection; a connection
 * that closes cancels its request (its publish is detached and still
 * completes, its control-channel wait is cancelled). */
#ifndef CHATD_API_H
#define CHATD_API_H
#include <stddef.h>
#include <libwebsockets.h>

struct api_req;
struct climit;

/* At start: the keys (NULL: the API is off, every /api/ route 404s), the
 * per-key request rate (0: no limit) and the limiter, how long a publish
 * may wait for its durable commit before it is answered 503 (0: no
 * limit). 0, or -1 with err. */
int api_init(const char *keys, double rate, double burst, struct climit *limits,
             uint64_t timeout_ms, char *err, size_t errlen);
/* The server's tick: publishes past their deadline are answered 503. */
void api_tick(void);
void api_shutdown(void);
struct adminstore;
/* With Redis: bans are stored there before they are announced. */
void api_set_store(struct adminstore *a);
/* 1 when uri is under /api/. */
int api_is_api_uri(const char *uri);

/* The lws HTTP callbacks of an /api/ request; each returns what the lws
 * callback returns. */
int api_http(struct lws *wsi, const char *uri, struct api_req **slot);
int api_body(struct lws *wsi, struct api_req **slot, const void *in, size_t len);
int api_body_done(struct lws *wsi, struct api_req **slot);
int api_writeable(struct lws *wsi, struct api_req **slot);
/* The connection closed or its transaction ended. */
void api_cancel(struct api_req **slot);

#endif
