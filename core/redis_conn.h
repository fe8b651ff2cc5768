/* redis_conn: one connection to one Redis server, on the caller's libuv
 * loop. The socket is ours (non-blocking TCP on a uv_poll, TLS through
 * redis_tls when asked): commands are encoded with hiredis'
 * redisFormatCommandArgv, replies parsed with hiredis' redisReader (RESP2),
 * and hiredis' async layer is not used (see docs/redis.md, "Why the layer
 * reads RESP itself").
 * Owns: the socket and its poll, the name resolution request, the TLS
 * session, the write buffer, the reader, the FIFO of reply callbacks, and a
 * timer for the connect/handshake deadline, the reply deadline and the
 * idle health PING.
 * Lifecycle: connecting (resolve, connect, TLS, AUTH, SELECT) -> up
 * (on_up) -> failed (on_down once, then every pending callback with a NULL
 * reply) or closed by the owner (redis_conn_close: pending callbacks get
 * NULL, on_down is not called). Either way the memory is released after
 * the uv handles are closed; the owner forgets the pointer at on_down or
 * at redis_conn_close and never uses it again.
 * Replies: every reply goes to the callback at the head of the FIFO, except
 * pushes of a subscription connection: message/smessage and (s)unsubscribe
 * notices that answer no command of ours (a slot moved) go to on_push;
 * (s)subscribe/(s)unsubscribe confirmations that answer a
 * redis_conn_subscribe are matched to it channel by channel.
 * Callbacks run from the loop (never inside the call that queued the
 * command), except the NULL replies of redis_conn_close, which run inside
 * it. */
#ifndef CHATD_REDIS_CONN_H
#define CHATD_REDIS_CONN_H
#include "redis_reply.h"
#include "redis_tls.h"
#include "redis_url.h"
#include <stdint.h>
#include <uv.h>

typedef struct redis_conn redis_conn;

/* r NULL: no reply will come (the connection failed or was closed) */
typedef void (*redis_conn_cb)(redis_conn *c, const redisReply *r, void *ud);

typedef struct redis_conn_handlers {
    void (*on_up)(redis_conn *c, void *ud);
    void (*on_down)(redis_conn *c, void *ud, const char *why);
    /* (may be NULL) an unsolicited push (message, smessage, or an
     * (s)unsubscribe the server decided) */
    void (*on_push)(redis_conn *c, void *ud, const redis_push *p);
} redis_conn_handlers;

typedef struct redis_conn_opts {
    redis_addr addr;
    const char *user, *pass;      /* AUTH when pass is set (user may be "") */
    int db;                       /* SELECT when > 0 */
    redis_tls *tls;               /* NULL: plain TCP */
    uint32_t connect_timeout_ms;  /* resolve + connect + TLS + AUTH/SELECT (default 3000) */
    uint32_t reply_timeout_ms;    /* a pending reply older than this fails the connection (5000) */
    uint32_t ping_every_ms;       /* PING when idle this long (1000) */
    uint32_t linger_ms;           /* 0: what a loop turn queued leaves at its end; else
                                   * at most one write per linger_ms: output queued within
                                   * it after a write waits for its end, to share one
                                   * write (a connection quiet that long writes at once) */
} redis_conn_opts;

redis_conn *redis_conn_new(uv_loop_t *loop, const redis_conn_opts *o, const redis_conn_handlers *h,
                           void *ud);
/* Pending callbacks get NULL (inside this call); on_down is not called. */
void redis_conn_close(redis_conn *c);
int redis_conn_up(const redis_conn *c);
const redis_addr *redis_conn_addr(const redis_conn *c);

/* Queues a preformatted RESP command (copied). 0, or -1 when the
 * connection is not up (cb not called). */
int redis_conn_send(redis_conn *c, const char *cmd, size_t len, redis_conn_cb cb, void *ud);
/* Formats argv (lens NULL: strlen) and queues it. */
int redis_conn_command(redis_conn *c, int argc, const char **argv, const size_t *lens,
                       redis_conn_cb cb, void *ud);
/* SUBSCRIBE/SSUBSCRIBE (kind REDIS_PUSH_SUBSCRIBE/SSUBSCRIBE) or
 * UNSUBSCRIBE/SUNSUBSCRIBE of n channels. cb once: r is the last
 * confirmation when every channel was confirmed, an error reply (e.g.
 * MOVED, CROSSSLOT), or NULL. */
int redis_conn_subscribe(redis_conn *c, redis_push_kind kind, int n, const char *const *ch,
                         const size_t *lens, redis_conn_cb cb, void *ud);

#endif
