/* ws: the libwebsockets protocol callback: the upgrade gate (room name,
 * JWT, policy -> 400/401/403 before any WebSocket exists), inbound frame
 * assembly with the size limit (1009), WRITEABLE and CLOSED, and HTTP
 * dispatch to http.c.
 * Owns: the per-wsi upgrade ticket between CONFIRM_UPGRADE and
 * ESTABLISHED (freed at WSI_DESTROY if the upgrade never completes). */
#ifndef CHATD_WS_H
#define CHATD_WS_H
#include <libwebsockets.h>

extern const struct lws_protocols ws_protocols[];
/* Registers the upgrade metrics (so they exist before the first upgrade). */
void ws_metrics_init(void);

#endif
