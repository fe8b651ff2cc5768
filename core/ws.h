/* ws: the libwebsockets protocol callback, the transport's entry points.
 * - the upgrade gate (CONFIRM_UPGRADE), answered in plain HTTP/1.1 before
 *   any WebSocket exists: 503 while draining, 426 (version), 400 (key,
 *   room name, since), 403 (Origin, policy), 404 (path), 401 (JWT), 429
 *   (per-IP / per-user connection limit, connlimit.h; 503 out of memory);
 * - ESTABLISHED: the connection (conn_new) takes the ticket's identity and
 *   connlimit slot, its input goes to wsread.c, chat_conn_open joins its
 *   URL room;
 * - RECEIVE: only frames lws parsed itself before wsread took over (sent
 *   before our 101), with the same message limit (1009, conn_fail);
 * - WRITEABLE: conn_on_writeable (output and the close path);
 * - CLOSED: conn_mark_closed, wsread_detach, the slot back,
 *   chat_conn_closed (which leaves the rooms and frees the connection);
 * - HTTP requests: http.c.
 * Owns: the per-wsi upgrade ticket between CONFIRM_UPGRADE and ESTABLISHED
 * (freed with its connlimit slot at WSI_DESTROY if the upgrade never
 * completes), then the wsi -> conn reference. */
#ifndef CHATD_WS_H
#define CHATD_WS_H
#include <libwebsockets.h>

extern const struct lws_protocols ws_protocols[];
/* Registers the upgrade metrics (so they exist before the first upgrade). */
void ws_metrics_init(void);

#endif
