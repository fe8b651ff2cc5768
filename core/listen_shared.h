/* listen_shared: a worker's end of the port that `chatd --workers N` shares
 * (core/workers.h). Debian's libwebsockets 4.1 is built with LWS_MAX_SMP 1,
 * and it sets SO_REUSEPORT only for several service threads, so
 * LWS_SERVER_OPTION_ALLOW_LISTEN_SHARE does nothing here: this module owns
 * the SO_REUSEPORT listening socket instead, accepts on the libuv loop and
 * hands each connection to lws (lws_adopt_socket_vhost), where it is served
 * exactly like one lws accepted itself (same keepalive, no Nagle).
 * Owns: that socket, its uv_poll handle, the pause timer used when the
 * process runs out of file descriptors, and their metrics. */
#ifndef CHATD_LISTEN_SHARED_H
#define CHATD_LISTEN_SHARED_H
#include <stddef.h>
#include <uv.h>
#include <libwebsockets.h>

typedef struct listen_shared_opts {
    int ka_time, ka_interval, ka_probes;   /* TCP keepalive, as lws's own listener */
} listen_shared_opts;

/* Binds host:port with SO_REUSEPORT and listens (before the node starts, so
 * a taken port fails the start). 0 ok; -1 with err. */
int listen_shared_open(const char *host, int port, char *err, size_t errlen);
/* Starts accepting into vhost on loop. */
void listen_shared_start(uv_loop_t *loop, struct lws_vhost *vhost, const listen_shared_opts *o);
/* Stops accepting and closes the socket (drain; idempotent). New
 * connections go to the other workers from then on. */
void listen_shared_close(void);

#endif
