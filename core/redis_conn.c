/* redis_conn: see redis_conn.h. */
#define _GNU_SOURCE
#include "redis_conn.h"
#include "redis_alloc.h"
#include "util.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define TICK_MS 100
#define READ_CHUNK 65536
#define READ_BUDGET (4u << 20)   /* bytes per poll event before yielding */

enum { ST_RESOLVING = 0, ST_CONNECTING, ST_TLS, ST_HANDSHAKE, ST_UP, ST_DEAD };

typedef struct rc_entry {
    redis_conn_cb cb;
    void *ud;
    redis_push_kind sub;     /* a (un)subscribe: confirmations expected */
    int nch, got;
    char **ch;
    size_t *chl;
    struct rc_entry *next;
} rc_entry;

struct redis_conn {
    uv_loop_t *loop;
    redis_conn_opts o;
    char *user, *pass;
    redis_conn_handlers h;
    void *ud;
    int state;
    int subscribed;          /* a (s)subscribe was sent: pushes may arrive */
    int fd;
    uv_poll_t poll;
    int poll_open, events;
    uv_timer_t timer;
    uv_prepare_t prep;       /* writes the output queued during a loop turn */
    uv_timer_t linger;       /* with o.linger_ms: holds output until linger_ms after the last write */
    int linger_armed;
    uint64_t last_flush;     /* with o.linger_ms: uv_now of the last write of queued output
                              * while up (0: none; the handshake's writes open no window) */
    int wblocked;            /* the last write found the socket full */
    uv_getaddrinfo_t gai;
    int gai_active;
    int open;                /* handles and requests not yet finished */
    SSL *ssl;
    int rd_wants_w, wr_wants_r;
    redisReader *reader;
    char *wbuf;
    size_t wlen, woff, wcap;
    rc_entry *head, *tail;
    size_t pending;
    int handshake_left;
    uint64_t started_ms, busy_since_ms, last_tx_ms;
    int constructing;        /* inside redis_conn_new: failures wait a tick */
    char deferred[200];      /* such a failure */
};

static void conn_fail(redis_conn *c, const char *why);
static void update_events(redis_conn *c);

static void maybe_release(redis_conn *c)
{
    if (c->state != ST_DEAD || c->open > 0) return;
    free(c->user);
    free(c->pass);
    free(c->wbuf);
    free(c);
}

static void handle_closed(uv_handle_t *h)
{
    redis_conn *c = h->data;
    c->open--;
    maybe_release(c);
}

static void entry_free(rc_entry *e)
{
    for (int i = 0; i < e->nch; i++) free(e->ch[i]);
    free(e->ch);
    free(e->chl);
    free(e);
}

static rc_entry *pop(redis_conn *c)
{
    rc_entry *e = c->head;
    if (!e) return NULL;
    c->head = e->next;
    if (!c->head) c->tail = NULL;
    c->pending--;
    return e;
}

/* state -> DEAD: stop I/O, close handles, answer every pending entry NULL */
static void teardown(redis_conn *c)
{
    c->state = ST_DEAD;
    if (c->gai_active) uv_cancel((uv_req_t *)&c->gai);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, handle_closed);
    uv_prepare_stop(&c->prep);
    uv_close((uv_handle_t *)&c->prep, handle_closed);
    uv_timer_stop(&c->linger);
    c->linger_armed = 0;
    uv_close((uv_handle_t *)&c->linger, handle_closed);
    if (c->poll_open) {
        uv_poll_stop(&c->poll);
        uv_close((uv_handle_t *)&c->poll, handle_closed);
        c->poll_open = 0;
    }
    if (c->ssl) {
        redis_tls_session_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    if (c->reader) {
        redis_reader_free(c->reader);   /* a reply being dispatched stays valid */
        c->reader = NULL;
    }
    /* handles close asynchronously: c stays valid through these calls */
    rc_entry *e;
    while ((e = pop(c))) {
        if (e->cb) e->cb(c, NULL, e->ud);
        entry_free(e);
    }
}

static void conn_fail(redis_conn *c, const char *why)
{
    if (c->state == ST_DEAD) return;
    if (c->constructing) {
        /* the owner does not hold the pointer yet: fail from the timer */
        if (!c->deferred[0]) snprintf(c->deferred, sizeof c->deferred, "%s", why);
        return;
    }
    c->open++; /* keep c while on_down runs */
    c->state = ST_DEAD;
    if (c->h.on_down) c->h.on_down(c, c->ud, why);
    teardown(c);
    c->open--;
    maybe_release(c);
}

void redis_conn_close(redis_conn *c)
{
    if (!c || c->state == ST_DEAD) return;
    c->open++;
    teardown(c);
    c->open--;
    maybe_release(c);
}

int redis_conn_up(const redis_conn *c) { return c && c->state == ST_UP; }
const redis_addr *redis_conn_addr(const redis_conn *c) { return &c->o.addr; }

/* ---- writing ---- */

static int wbuf_append(redis_conn *c, const char *s, size_t n)
{
    if (c->woff && c->woff == c->wlen) c->woff = c->wlen = 0;
    if (c->wlen + n > c->wcap) {
        if (c->woff) { /* compact first */
            memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
            c->wlen -= c->woff;
            c->woff = 0;
        }
        if (c->wlen + n > c->wcap) {
            size_t cap = c->wcap ? c->wcap : 4096;
            while (cap < c->wlen + n) cap *= 2;
            char *nb = realloc(c->wbuf, cap);
            if (!nb) return -1;
            c->wbuf = nb;
            c->wcap = cap;
        }
    }
    memcpy(c->wbuf + c->wlen, s, n);
    c->wlen += n;
    return 0;
}

/* send()/recv() rather than write()/read() without TLS: the socket calls
 * skip the file layer (as conn.c's write_some) */
static void do_write(redis_conn *c)
{
    char why[200];
    c->wblocked = 0;
    while (c->state != ST_DEAD && c->woff < c->wlen) {
        size_t n = 0;
        if (c->ssl) {
            c->wr_wants_r = 0;
            int st = redis_tls_write(c->ssl, c->wbuf + c->woff, c->wlen - c->woff, &n, why,
                                     sizeof why);
            if (st == REDIS_TLS_WANT_WRITE) { c->wblocked = 1; break; }
            if (st == REDIS_TLS_WANT_READ) { c->wr_wants_r = 1; break; }
            if (st != REDIS_TLS_OK) { conn_fail(c, why); return; }
        } else {
            ssize_t w = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) { c->wblocked = 1; break; }
                if (errno == EINTR) continue;
                snprintf(why, sizeof why, "send: %s", strerror(errno));
                conn_fail(c, why);
                return;
            }
            n = (size_t)w;
        }
        c->woff += n;
    }
    if (c->woff == c->wlen) c->woff = c->wlen = 0;
}

static rc_entry *enqueue(redis_conn *c, const char *cmd, size_t len, redis_conn_cb cb, void *ud)
{
    rc_entry *e = calloc(1, sizeof *e);
    if (!e || wbuf_append(c, cmd, len) != 0) {
        free(e);
        return NULL;
    }
    e->cb = cb;
    e->ud = ud;
    if (c->tail) c->tail->next = e; else c->head = e;
    c->tail = e;
    if (c->pending++ == 0) c->busy_since_ms = mono_ms();
    c->last_tx_ms = mono_ms();
    update_events(c);
    return e;
}

static int format_and_queue(redis_conn *c, int argc, const char **argv, const size_t *lens,
                            redis_conn_cb cb, void *ud, rc_entry **out)
{
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (len < 0 || !cmd) return -1;
    rc_entry *e = enqueue(c, cmd, (size_t)len, cb, ud);
    free(cmd);
    if (out) *out = e;
    return e ? 0 : -1;
}

int redis_conn_send(redis_conn *c, const char *cmd, size_t len, redis_conn_cb cb, void *ud)
{
    if (!c || c->state != ST_UP) return -1;
    return enqueue(c, cmd, len, cb, ud) ? 0 : -1;
}

int redis_conn_command(redis_conn *c, int argc, const char **argv, const size_t *lens,
                       redis_conn_cb cb, void *ud)
{
    if (!c || c->state != ST_UP) return -1;
    return format_and_queue(c, argc, argv, lens, cb, ud, NULL);
}

int redis_conn_subscribe(redis_conn *c, redis_push_kind kind, int n, const char *const *ch,
                         const size_t *lens, redis_conn_cb cb, void *ud)
{
    if (!c || c->state != ST_UP || n < 1 || n > 64 || !redis_push_is_subscription(kind))
        return -1;
    const char *name = kind == REDIS_PUSH_SUBSCRIBE ? "SUBSCRIBE"
                     : kind == REDIS_PUSH_SSUBSCRIBE ? "SSUBSCRIBE"
                     : kind == REDIS_PUSH_UNSUBSCRIBE ? "UNSUBSCRIBE" : "SUNSUBSCRIBE";
    const char *argv[65];
    size_t al[65];
    argv[0] = name;
    al[0] = strlen(name);
    for (int i = 0; i < n; i++) {
        argv[i + 1] = ch[i];
        al[i + 1] = lens ? lens[i] : strlen(ch[i]);
    }
    char **copies = calloc((size_t)n, sizeof *copies);
    size_t *cl = calloc((size_t)n, sizeof *cl);
    int ok = copies && cl;
    for (int i = 0; ok && i < n; i++) {
        copies[i] = malloc(al[i + 1] + 1);
        if (!copies[i]) { ok = 0; break; }
        memcpy(copies[i], argv[i + 1], al[i + 1]);
        copies[i][al[i + 1]] = 0;
        cl[i] = al[i + 1];
    }
    rc_entry *e = NULL;
    if (ok && format_and_queue(c, n + 1, argv, al, cb, ud, &e) != 0) ok = 0;
    if (!ok) {
        for (int i = 0; copies && i < n; i++) free(copies[i]);
        free(copies);
        free(cl);
        return -1;
    }
    e->sub = kind;
    e->nch = n;
    e->ch = copies;
    e->chl = cl;
    c->subscribed = 1;
    return 0;
}

/* ---- reading and dispatch ---- */

static void call_head(redis_conn *c, const redisReply *r)
{
    rc_entry *e = pop(c);
    if (c->pending == 0) c->busy_since_ms = 0;
    if (e->cb) e->cb(c, r, e->ud);
    entry_free(e);
}

static void dispatch(redis_conn *c, const redisReply *r)
{
    redis_push p;
    redis_push_kind k = c->subscribed ? redis_reply_push(r, &p) : REDIS_PUSH_NONE;
    if (k == REDIS_PUSH_MESSAGE || k == REDIS_PUSH_SMESSAGE) {
        if (c->h.on_push) c->h.on_push(c, c->ud, &p);
        return;
    }
    if (redis_push_is_subscription(k)) {
        rc_entry *e = c->head;
        if (e && e->sub == k && e->got < e->nch && e->chl[e->got] == p.channel_len &&
            memcmp(e->ch[e->got], p.channel, p.channel_len) == 0) {
            if (++e->got == e->nch) call_head(c, r);
            return;
        }
        if (c->h.on_push) c->h.on_push(c, c->ud, &p); /* the server's own decision */
        return;
    }
    if (!c->head) {
        conn_fail(c, "a reply that answers no command (protocol out of sync)");
        return;
    }
    if (c->head->sub && r->type != REDIS_REPLY_ERROR) {
        conn_fail(c, "unexpected reply to a (un)subscribe");
        return;
    }
    call_head(c, r);
}

static void do_read(redis_conn *c)
{
    char buf[READ_CHUNK], why[200];
    size_t budget = READ_BUDGET;
    while (c->state != ST_DEAD && budget) {
        size_t n = 0;
        if (c->ssl) {
            c->rd_wants_w = 0;
            int st = redis_tls_read(c->ssl, buf, sizeof buf, &n, why, sizeof why);
            if (st == REDIS_TLS_WANT_READ) break;
            if (st == REDIS_TLS_WANT_WRITE) { c->rd_wants_w = 1; break; }
            if (st != REDIS_TLS_OK) { conn_fail(c, why); return; }
        } else {
            ssize_t r = recv(c->fd, buf, sizeof buf, 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                if (errno == EINTR) continue;
                snprintf(why, sizeof why, "recv: %s", strerror(errno));
                conn_fail(c, why);
                return;
            }
            if (r == 0) {
                conn_fail(c, "connection closed by the server");
                return;
            }
            n = (size_t)r;
        }
        /* TLS may hold decrypted bytes the poll cannot see: read them all */
        if (!c->ssl) budget = n >= budget ? 0 : budget - n;
        if (c->pending) c->busy_since_ms = mono_ms();
        if (redisReaderFeed(c->reader, buf, n) != REDIS_OK) {
            snprintf(why, sizeof why, "protocol error: %s", c->reader->errstr);
            conn_fail(c, why);
            return;
        }
        for (;;) {
            void *reply = NULL;
            if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
                snprintf(why, sizeof why, "protocol error: %s", c->reader->errstr);
                conn_fail(c, why);
                return;
            }
            if (!reply) break;
            dispatch(c, reply);
            redis_reply_free(reply);
            if (c->state == ST_DEAD) return;
        }
        /* a short read took all the socket had: the poll is level-triggered
         * and reports what comes later, so no read that can only fail */
        if (!c->ssl && n < sizeof buf) break;
    }
}

/* ---- connecting ---- */

static void hs_cb(redis_conn *c, const redisReply *r, void *ud)
{
    const char *step = ud;
    if (!r || c->state == ST_DEAD) return;
    if (r->type == REDIS_REPLY_ERROR) {
        char why[300];
        snprintf(why, sizeof why, "%s: %.*s", step, (int)r->len, r->str ? r->str : "");
        conn_fail(c, why);
        return;
    }
    if (--c->handshake_left > 0) return;
    c->state = ST_UP;
    if (c->h.on_up) c->h.on_up(c, c->ud);
}

static void start_handshake(redis_conn *c)
{
    c->state = ST_HANDSHAKE;
    c->handshake_left = 0;
    if (c->pass) {
        const char *a[3] = {"AUTH", c->user, c->pass};
        int rc = c->user ? format_and_queue(c, 3, a, NULL, hs_cb, "AUTH", NULL)
                         : format_and_queue(c, 2, (const char *[]){"AUTH", c->pass}, NULL, hs_cb,
                                            "AUTH", NULL);
        if (rc != 0) { conn_fail(c, "out of memory"); return; }
        c->handshake_left++;
    }
    if (c->o.db > 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", c->o.db);
        if (format_and_queue(c, 2, (const char *[]){"SELECT", db}, NULL, hs_cb, "SELECT", NULL)) {
            conn_fail(c, "out of memory");
            return;
        }
        c->handshake_left++;
    }
    if (c->handshake_left == 0) {
        c->state = ST_UP;
        if (c->h.on_up) c->h.on_up(c, c->ud);
    }
}

static void tls_step(redis_conn *c)
{
    char why[300];
    int st = redis_tls_handshake(c->ssl, why, sizeof why);
    if (st == REDIS_TLS_OK) {
        c->rd_wants_w = c->wr_wants_r = 0;
        start_handshake(c);
    } else if (st == REDIS_TLS_WANT_READ) {
        c->rd_wants_w = 0;
    } else if (st == REDIS_TLS_WANT_WRITE) {
        c->rd_wants_w = 1;
    } else {
        conn_fail(c, why);
        return;
    }
    update_events(c);
}

static void connected(redis_conn *c)
{
    if (c->o.tls) {
        char why[300];
        c->ssl = redis_tls_session(c->o.tls, c->fd, c->o.addr.host, why, sizeof why);
        if (!c->ssl) { conn_fail(c, why); return; }
        c->state = ST_TLS;
        tls_step(c);
        return;
    }
    start_handshake(c);
    update_events(c);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    redis_conn *c = h->data;
    if (c->state == ST_DEAD) return;
    if (status < 0) {
        /* libuv stops this poll: the connection is unusable */
        char why[160];
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (c->fd >= 0 && getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr)
            snprintf(why, sizeof why, "%s", strerror(soerr));
        else
            snprintf(why, sizeof why, "%s", uv_strerror(status));
        conn_fail(c, why);
        return;
    }
    if (c->state == ST_CONNECTING) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) soerr = errno;
        if (soerr) {
            conn_fail(c, strerror(soerr));
            return;
        }
        connected(c);
        return;
    }
    if (c->state == ST_TLS) {
        tls_step(c);
        return;
    }
    if ((events & UV_READABLE) || (c->rd_wants_w && (events & UV_WRITABLE))) do_read(c);
    if (c->state != ST_DEAD && c->woff < c->wlen &&
        ((events & UV_WRITABLE) || (c->wr_wants_r && (events & UV_READABLE))))
        do_write(c);
    if (c->state != ST_DEAD) update_events(c);
}

/* The loop's prepare step: everything queued during the turn leaves in one
 * write (commands of one turn are pipelined), without watching the socket
 * for writability (an epoll_ctl pair and a wakeup per command burst). */
static void flush_queued(redis_conn *c)
{
    if (c->state != ST_HANDSHAKE && c->state != ST_UP) return;
    if (c->woff < c->wlen && !c->wr_wants_r) {
        if (c->o.linger_ms && c->state == ST_UP) {
            /* a window opens; a timer of the last one (a prepare that came
             * first) would write again inside it */
            c->last_flush = uv_now(c->loop);
            if (c->linger_armed) {
                uv_timer_stop(&c->linger);
                c->linger_armed = 0;
            }
        }
        do_write(c);
    }
    if (c->state != ST_DEAD) update_events(c);
}

static void prep_cb(uv_prepare_t *p)
{
    uv_prepare_stop(p);
    flush_queued(p->data);
}

/* With a linger, at most one write of queued output per o.linger_ms (as
 * rueidis' MaxFlushDelay): output queued on a connection that wrote longer
 * ago than that leaves at the end of its loop turn, as without a linger;
 * output queued sooner waits until o.linger_ms after that write, and
 * everything queued meanwhile leaves with it in one write (Redis then answers
 * it in one event-loop round, with one AOF flush). So a quiet connection adds
 * no lag, and a busy one sends one write per linger. */
static void linger_cb(uv_timer_t *t)
{
    redis_conn *c = t->data;
    c->linger_armed = 0;
    flush_queued(c);
}

static void update_events(redis_conn *c)
{
    if (!c->poll_open || c->state == ST_DEAD) return;
    int ev;
    int out = c->woff < c->wlen && !c->wr_wants_r;
    if (c->state == ST_CONNECTING) {
        ev = UV_WRITABLE;
    } else if (c->state == ST_TLS) {
        ev = UV_READABLE | (c->rd_wants_w ? UV_WRITABLE : 0);
    } else {
        /* writability is watched only after a write found the socket full */
        ev = UV_READABLE | ((out && c->wblocked) || c->rd_wants_w ? UV_WRITABLE : 0);
        if (out && !c->wblocked) {
            uint64_t now = uv_now(c->loop), due = c->last_flush + c->o.linger_ms;
            if (!c->o.linger_ms || c->state != ST_UP || !c->last_flush || now >= due) {
                uv_prepare_start(&c->prep, prep_cb);
            } else if (!c->linger_armed) {
                c->linger_armed = 1;
                uv_timer_start(&c->linger, linger_cb, due - now, 0);
            }
        }
    }
    if (ev == c->events) return;
    c->events = ev;
    uv_poll_start(&c->poll, ev, poll_cb);
}

static void start_connect(redis_conn *c, const struct sockaddr *sa, socklen_t salen)
{
    char why[200];
    c->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        snprintf(why, sizeof why, "socket: %s", strerror(errno));
        conn_fail(c, why);
        return;
    }
    if (sa->sa_family != AF_UNIX) {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        int idle = 30, intvl = 10, cnt = 3;
        setsockopt(c->fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
        setsockopt(c->fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
        setsockopt(c->fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    }
    if (connect(c->fd, sa, salen) != 0 && errno != EINPROGRESS) {
        snprintf(why, sizeof why, "connect: %s", strerror(errno));
        conn_fail(c, why);
        return;
    }
    if (uv_poll_init(c->loop, &c->poll, c->fd) != 0) {
        conn_fail(c, "cannot poll the socket");
        return;
    }
    c->poll.data = c;
    c->poll_open = 1;
    c->open++;
    c->state = ST_CONNECTING;
    c->events = 0;
    update_events(c);
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    redis_conn *c = req->data;
    c->gai_active = 0;
    c->open--;
    if (c->state == ST_DEAD) {
        uv_freeaddrinfo(res);
        maybe_release(c);
        return;
    }
    if (status != 0 || !res) {
        char why[300];
        snprintf(why, sizeof why, "cannot resolve %s: %s", c->o.addr.host, uv_strerror(status));
        uv_freeaddrinfo(res);
        conn_fail(c, why);
        return;
    }
    start_connect(c, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
}

static void tick(uv_timer_t *t)
{
    redis_conn *c = t->data;
    uint64_t now = mono_ms();
    if (c->state == ST_DEAD) return;
    if (c->deferred[0]) {
        conn_fail(c, c->deferred);
        return;
    }
    if (c->state != ST_UP) {
        if (now - c->started_ms > c->o.connect_timeout_ms) {
            char why[80];
            snprintf(why, sizeof why, "%s timed out after %u ms",
                     c->state == ST_HANDSHAKE ? "handshake"
                     : c->state == ST_TLS ? "TLS handshake" : "connect",
                     (unsigned)c->o.connect_timeout_ms);
            conn_fail(c, why);
        }
        return;
    }
    if (c->pending && now - c->busy_since_ms > c->o.reply_timeout_ms) {
        char why[80];
        snprintf(why, sizeof why, "no reply for %u ms", (unsigned)c->o.reply_timeout_ms);
        conn_fail(c, why);
        return;
    }
    if (!c->pending && now - c->last_tx_ms >= c->o.ping_every_ms) {
        const char *a[1] = {"PING"};
        format_and_queue(c, 1, a, NULL, NULL, NULL, NULL);
    }
}

redis_conn *redis_conn_new(uv_loop_t *loop, const redis_conn_opts *o, const redis_conn_handlers *h,
                           void *ud)
{
    redis_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->loop = loop;
    c->o = *o;
    if (!c->o.connect_timeout_ms) c->o.connect_timeout_ms = 3000;
    if (!c->o.reply_timeout_ms) c->o.reply_timeout_ms = 5000;
    if (!c->o.ping_every_ms) c->o.ping_every_ms = 1000;
    c->h = *h;
    c->ud = ud;
    c->fd = -1;
    c->reader = redis_reader_new();
    if (o->pass && o->pass[0]) {
        c->pass = strdup(o->pass);
        if (o->user && o->user[0]) c->user = strdup(o->user);
    }
    c->o.user = c->o.pass = NULL;
    if (!c->reader || (o->pass && o->pass[0] && !c->pass) ||
        (o->user && o->user[0] && o->pass && o->pass[0] && !c->user)) {
        if (c->reader) redis_reader_free(c->reader);
        free(c->user);
        free(c->pass);
        free(c);
        return NULL;
    }
    c->started_ms = c->last_tx_ms = mono_ms();
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    uv_prepare_init(loop, &c->prep);
    c->prep.data = c;
    uv_timer_init(loop, &c->linger);
    c->linger.data = c;
    c->open = 3;
    uv_timer_start(&c->timer, tick, TICK_MS, TICK_MS);
    c->state = ST_RESOLVING;
    c->constructing = 1;
    /* a unix socket and numeric hosts connect at once; names are resolved
     * off the loop */
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    struct sockaddr_un au;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    memset(&au, 0, sizeof au);
    if (o->addr.port == 0) {
        au.sun_family = AF_UNIX;
        snprintf(au.sun_path, sizeof au.sun_path, "%.*s", (int)sizeof au.sun_path - 1, o->addr.host); /* redis_url bounds it */
        start_connect(c, (struct sockaddr *)&au, sizeof au);
    } else if (inet_pton(AF_INET, o->addr.host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)o->addr.port);
        start_connect(c, (struct sockaddr *)&a4, sizeof a4);
    } else if (inet_pton(AF_INET6, o->addr.host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)o->addr.port);
        start_connect(c, (struct sockaddr *)&a6, sizeof a6);
    } else {
        char port[8];
        snprintf(port, sizeof port, "%d", o->addr.port);
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        c->gai.data = c;
        if (uv_getaddrinfo(loop, &c->gai, resolved, o->addr.host, port, &hints) == 0) {
            c->gai_active = 1;
            c->open++;
        } else {
            conn_fail(c, "cannot start name resolution");
        }
    }
    c->constructing = 0;
    return c;
}
