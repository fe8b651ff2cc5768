/* wsread: input of WebSocket connections after the upgrade. lws does the
 * HTTP upgrade; then the connection's reads are ours (lws rx flow control
 * off), so every RFC 6455 rule is enforced by wsframe.c with the right close
 * code whatever lws would do. One epoll set holds every connection's socket
 * and one uv_poll watches that set (one extra fd for the process; libuv
 * allows one watcher per fd and lws already holds the socket's). One read
 * (32 KiB) per connection per loop iteration, so output is flushed between
 * bursts. What it reads becomes calls of conn.c and chat.c: a complete text
 * message -> chat_conn_frame (assembled in conn.rx; binary -> error
 * bad_request), ping -> pong, the peer's close -> conn_peer_close, a
 * framing error -> conn_fail (1002/1007/1009), a buffer for the input that
 * cannot be allocated -> conn_close_oom (1011 "out of memory"),
 * EOF or a socket error -> conn_kill. Input is ignored once the connection is closing. While a
 * connection's input is paused (conn_rx_pause) its socket is out of the
 * set: nothing is read and nothing spins.
 * Owns: the epoll set and its uv_poll handle; a connection's membership in
 * it (attach at ESTABLISHED, detach when it closes; conn_is_reading). */
#ifndef CHATD_WSREAD_H
#define CHATD_WSREAD_H
#include <uv.h>
#include "conn.h"

int wsread_init(uv_loop_t *loop, char *err, size_t errlen);
/* Stops watching and closes the epoll set (at shutdown). */
void wsread_shutdown(void);
/* Takes over the connection's input. Returns -1 (close it) on failure. */
int wsread_attach(conn *c);
/* Idempotent; called before the socket goes away. */
void wsread_detach(conn *c);
/* A chunk of a data message (the frame parser's callback; also used for
 * frames lws parsed before the connection was attached). Returns 0: a
 * buffer it cannot allocate closes the connection itself (conn_close_oom)
 * and what follows is ignored, as on any closing connection. */
int wsread_data(void *c, const unsigned char *p, size_t n, int final, int binary);
/* Registers the protocol error metrics. */
void wsread_metrics_init(void);
/* Counts a failed connection by the close code wsframe answered: 1002,
 * 1007, 1009 in chat_ws_protocol_errors_total (the client's framing; a
 * 1011 never comes here: conn_close_oom counts it in
 * chat_ws_server_errors_total). */
void wsread_count_failure(int code);

#endif
