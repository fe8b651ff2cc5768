/* listener: the listening socket, accepted by chatd and handed to lws
 * (lws_adopt_socket_vhost) instead of lws' own listener, which on EMFILE
 * logs and returns with the socket still readable: a busy loop at 100% CPU
 * writing ~700k log lines/s. Here, when descriptors run out, a reserve
 * descriptor is released to accept the pending connection and close it at
 * once (the client gets a prompt close, not a hang), accepting pauses for
 * a while (CHAT_ACCEPT_PAUSE_MS), the event is counted
 * (chat_accept_errors_total) and logged at most once per second.
 * Before lws sees a connection, its first request head must arrive whole
 * (peeked, not consumed: lws reads it) within CHAT_HANDSHAKE_TIMEOUT_MS
 * (else 408, slowloris) and within CHAT_MAX_HEADER_BYTES (else 431); lws
 * would otherwise drop both silently. An upgrade request with bytes after
 * its head (frames sent before our 101) is answered 400: lws would read
 * them with the head where chatd's frame reader never sees them. Pending
 * heads are watched in an edge-triggered epoll set (one uv_poll), so a
 * partial head does not spin.
 * With chatd --workers it also owns the port the workers share (SO_REUSEPORT).
 * Owns: the listening sockets, their uv_polls, the pause timer, the reserve fd,
 * the pending connections (their fds until handed to lws), their epoll set
 * and deadline timer. */
#ifndef CHATD_LISTENER_H
#define CHATD_LISTENER_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <libwebsockets.h>

typedef struct listener_opts {
    uint32_t backlog;
    uint32_t pause_ms;      /* accept pause after running out of fds */
    uint32_t head_timeout_ms;  /* the first request head must arrive within this */
    uint32_t head_max;      /* bytes; a larger head is answered 431 */
} listener_opts;

/* Sets up the request-head watcher and the pause timer. */
int listener_init(uv_loop_t *loop, const listener_opts *o, char *err, size_t errlen);
/* Binds and listens on host:port ("127.0.0.1", "0.0.0.0", "::", "[::1]",
 * "" = any). shared: SO_REUSEPORT, the port every worker of chatd
 * --workers accepts on (chat_shared_listener_accepts_total counts it); at
 * most 2 sockets. -1 with err (a taken port fails the start). */
int listener_add(const char *host, int port, int shared, char *err, size_t errlen);
/* Starts accepting into vh. */
void listener_start(struct lws_vhost *vh);
/* Drain of a worker: closes the shared port (the worker's own stays). */
void listener_close_shared(void);
/* Stops accepting and closes everything it owns. */
void listener_close(void);
/* Registers the metrics. */
void listener_metrics_init(void);

#endif
