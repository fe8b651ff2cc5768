/* conn: see conn.h. */
#define _GNU_SOURCE
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* The state bits of conn.flags; only this file reads or writes them. */
enum {
    CONN_CLOSING = 1u << 0,      /* a close is under way: our close frame is due */
    CONN_DRAINING = 1u << 1,     /* ...once the queue is empty (conn_close_after_flush) */
    CONN_CLOSE_SENT = 1u << 2,   /* our close frame is out; waiting for the peer */
    CONN_PEER_CLOSED = 1u << 3,  /* the peer closed or failed: drop once ours is out */
    CONN_KILLED = 1u << 4,       /* drop without a frame at the next WRITEABLE */
    CONN_CLOSED = 1u << 5,       /* lws CLOSED: the socket is gone */
    CONN_IN_FLUSH = 1u << 6,     /* on the flush list */
    CONN_LWS_TAIL = 1u << 7,     /* lws holds the rest of a partly written frame */
    CONN_READING = 1u << 8,      /* in wsread's epoll set */
    CONN_CLOSE_BUILT = 1u << 9,  /* our close frame (code, reason) is fixed: writing began */
};

/* conn.flags is 16 bits, conn.rx_paused 8 (conn.h: the struct's size) */
_Static_assert(CONN_CLOSE_BUILT < (1u << 16), "a CONN_* bit beyond conn.flags");
_Static_assert(CONN_RX_JOIN < (1u << 8), "a CONN_RX_* reason beyond conn.rx_paused");

#define HAS(c, f) (((c)->flags & (f)) != 0)

static conn *g_all;             /* list through conn.all */
static conn *g_flush;           /* list through conn.flush */
static size_t g_count;
static heap g_deadlines;        /* conn.exp keyed by ident.exp */
static uint64_t g_next_id;

static metric_counter *m_deliveries, *m_slow, *m_writev;
static metric_hist *m_lag, *m_qwait;
static metric_gauge *m_open, *m_rings;
static metric_counter *m_oom;

void conn_metrics_init(void)
{
    static unsigned seen;
    if (!metrics_register_due(&seen)) return;
    m_deliveries = metrics_counter("chat_deliveries_total", "Message frames written to client sockets", NULL);
    m_slow = metrics_counter("chat_drops_total", "Connections dropped or frames refused, by reason", "reason=\"slow_consumer\"");
    metrics_counter("chat_slow_consumer_closes_total", "Connections closed with 1008 because their queue filled", NULL);
    m_writev = metrics_counter("chat_socket_writes_total", "sendmsg() calls on client sockets", NULL);
    m_lag = metrics_histogram("chat_broadcast_lag_seconds",
                              "Message entered this node's delivery path -> written to the recipient socket",
                              NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    m_qwait = metrics_histogram("chat_queue_wait_seconds",
                                "Any frame: queued for a connection -> written to its socket",
                                NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    m_open = metrics_gauge("chat_connections_open", "Open WebSocket connections", NULL);
    m_rings = metrics_gauge("chat_outq_rings", "Connections whose outbound queue holds a grown ring "
                            "(after the last once-a-second trim)", NULL);
    m_oom = metrics_counter("chat_ws_server_errors_total",
                            "Connections closed with 1011 for a failure of ours (not the client's)",
                            "reason=\"out_of_memory\"");
}

/* ---- the lists a connection is on: the node is in the connection ------- */

#define LINK(c, off) ((conn_link *)(void *)((char *)(c) + (off)))

static void list_push(conn **head, conn *c, size_t off)
{
    LINK(c, off)->prev = NULL;
    LINK(c, off)->next = *head;
    if (*head) LINK(*head, off)->prev = c;
    *head = c;
}

static void list_unlink(conn **head, conn *c, size_t off)
{
    conn_link *l = LINK(c, off);
    if (l->prev) LINK(l->prev, off)->next = l->next;
    else *head = l->next;
    if (l->next) LINK(l->next, off)->prev = l->prev;
    l->prev = l->next = NULL;
}

conn *conn_first(void) { return g_all; }
conn *conn_next(const conn *c) { return c->all.next; }
size_t conn_count(void) { return g_count; }

static void flush_list_remove(conn *c)
{
    if (!HAS(c, CONN_IN_FLUSH)) return;
    list_unlink(&g_flush, c, offsetof(conn, flush));
    c->flags &= ~CONN_IN_FLUSH;
}

static void want_flush(conn *c)
{
    if (HAS(c, CONN_IN_FLUSH | CONN_LWS_TAIL | CONN_CLOSED)) return;
    c->flags |= CONN_IN_FLUSH;
    list_push(&g_flush, c, offsetof(conn, flush));
}

/* ---- life ---------------------------------------------------------------- */

conn *conn_new(struct lws *wsi, identity *ident, const char *room, const char *ip)
{
    conn_metrics_init();
    /* ids of this run start above any id of an earlier run of this node
     * (same node id after a restart): 65536 ids per ms of wall clock
     * between the two starts; one run never connects that fast */
    if (!g_next_id) g_next_id = (now_ms() << 16) | 1;
    size_t rl = strlen(room), il = strlen(ip);
    conn *c = calloc(1, sizeof *c + rl + 1 + il + 1);
    if (!c) return NULL;
    memcpy(c->strs, room, rl + 1);
    memcpy(c->strs + rl + 1, ip, il + 1);
    c->url_room = c->strs;
    c->ip = c->strs + rl + 1;
    if (heap_push(&g_deadlines, &c->exp, ident->exp) < 0) {
        free(c);
        return NULL;
    }
    c->id = g_next_id++;
    c->wsi = wsi;
    c->fd = lws_get_socket_fd(wsi);
    c->ident = *ident;
    memset(ident, 0, sizeof *ident);
    list_push(&g_all, c, offsetof(conn, all));
    g_count++;
    metric_set(m_open, (double)g_count);
    return c;
}

void conn_mark_closed(conn *c)
{
    c->flags |= CONN_CLOSED | CONN_CLOSING;
    c->flags &= ~CONN_DRAINING;
    flush_list_remove(c);
    heap_remove(&g_deadlines, &c->exp);
    outq_clear(&c->q);
}

void conn_destroy(conn *c)
{
    flush_list_remove(c);
    heap_remove(&g_deadlines, &c->exp);
    list_unlink(&g_all, c, offsetof(conn, all));
    g_count--;
    if (!g_count) heap_free(&g_deadlines);   /* nothing left: give the array back */
    metric_set(m_open, (double)g_count);
    outq_clear(&c->q);
    free(c->rooms);
    free(c->rx);
    wsf_free(&c->rxp);
    free(c->close_reason);
    identity_clear(&c->ident);
    free(c);
}

void conn_set_identity(conn *c, identity *nid)
{
    identity_clear(&c->ident);
    c->ident = *nid;
    memset(nid, 0, sizeof *nid);
    heap_update(&g_deadlines, &c->exp, c->ident.exp);
}

conn *conn_next_expired(int64_t now_s)
{
    heap_node *m = heap_min(&g_deadlines);
    if (!m || m->key > now_s) return NULL;
    heap_pop(&g_deadlines);
    return HEAP_OWNER(m, conn, exp);
}

conn_room *conn_find_room(conn *c, const char *room)
{
    for (uint32_t i = 0; i < c->nrooms; i++)
        if (strcmp(c->rooms[i]->r->name, room) == 0) return c->rooms[i];
    return NULL;
}

/* ---- output -------------------------------------------------------------- */

int conn_send(conn *c, msg *m)
{
    if (HAS(c, CONN_CLOSING) && !HAS(c, CONN_DRAINING)) return -1;   /* also CLOSED */
    if (outq_push(&c->q, m) < 0) {
        metric_inc(m_slow);
        metric_inc(metrics_counter("chat_slow_consumer_closes_total", NULL, NULL));
        LOGI("conn", "conn %llu user %s: outbound queue full (%u frames, %zu bytes), closing 1008",
             (unsigned long long)c->id, c->ident.user, c->q.count, c->q.bytes);
        conn_close(c, 1008, "slow consumer");
        return -1;
    }
    want_flush(c);
    return 0;
}

int conn_send_text(conn *c, const char *s, size_t len)
{
    msg *m = msg_new(s, len);
    if (!m) return -1;
    int r = conn_send(c, m);
    msg_unref(m);
    return r;
}

void conn_send_error(conn *c, const char *code, const char *message, const char *id)
{
    conn_send_error_room(c, code, message, id, NULL);
}

void conn_send_error_room(conn *c, const char *code, const char *message, const char *id,
                          const char *room)
{
    /* the message, and any id and room a client may send */
    char buf[1024 + JSON_ESCAPED_MAX(CLIENT_ID_BYTES) + JSON_ESCAPED_MAX(CHAT_ROOM_MAX)];
    size_t o = 0;
    o += (size_t)snprintf(buf, sizeof buf, "{\"type\":\"error\",\"code\":\"%s\"", code);
    if (room && *room && strlen(room) <= CHAT_ROOM_MAX) {
        memcpy(buf + o, ",\"room\":", 8); o += 8;
        o += (size_t)json_escape(buf + o, sizeof buf - o, room, strlen(room));
    }
    memcpy(buf + o, ",\"message\":", 11); o += 11;
    long n = json_escape(buf + o, sizeof buf - o - JSON_ESCAPED_MAX(CLIENT_ID_BYTES) - 16, message,
                         strlen(message));
    if (n < 0) n = json_escape(buf + o, sizeof buf - o, "error", 5);
    o += (size_t)n;
    if (id) {
        o += (size_t)snprintf(buf + o, sizeof buf - o, ",\"id\":");
        n = json_escape(buf + o, sizeof buf - o - 2, id, strlen(id));
        if (n < 0) { o -= 6; n = 0; }
        o += (size_t)n;
    }
    buf[o++] = '}';
    conn_send_text(c, buf, o);
}

/* ---- closing --------------------------------------------------------------- */

int conn_is_closing(const conn *c) { return HAS(c, CONN_CLOSING); }

/* The code and reason of our close frame (the frame itself is built when it
 * is written): the reason is copied here, cut to CONN_CLOSE_REASON_MAX - 1
 * bytes at a UTF-8 character boundary; none when out of memory. Once the
 * frame began to go out, neither changes. */
static void set_close(conn *c, uint16_t code, const char *reason)
{
    if (HAS(c, CONN_CLOSE_BUILT)) return;   /* (part of) the frame is out: it stays */
    c->close_code = code;
    free(c->close_reason);
    c->close_reason = NULL;
    size_t n = reason ? utf8_cut(reason, CONN_CLOSE_REASON_MAX - 1) : 0;
    if (n) c->close_reason = strndup(reason, n);
}

static void close_start(conn *c, uint16_t code, const char *reason)
{
    c->flags |= CONN_CLOSING;
    c->flags &= ~CONN_DRAINING;
    set_close(c, code, reason);
    outq_clear(&c->q);      /* nothing more for this client */
    flush_list_remove(c);
    /* a peer that never reads cannot hold the connection open for long */
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_SEND, 5);
    lws_callback_on_writable(c->wsi);
}

void conn_close(conn *c, uint16_t code, const char *reason)
{
    if (HAS(c, CONN_CLOSING) && !HAS(c, CONN_DRAINING)) return;   /* also CLOSED */
    close_start(c, code, reason);
}

void conn_close_now(conn *c, uint16_t code, const char *reason)
{
    if (HAS(c, CONN_CLOSED | CONN_CLOSE_SENT | CONN_CLOSE_BUILT)) return;   /* ours is (partly) out */
    if (HAS(c, CONN_CLOSING) && !HAS(c, CONN_DRAINING) && c->close_code == code) return;
    close_start(c, code, reason);
}

void conn_close_after_flush(conn *c, uint16_t code, const char *reason)
{
    if (HAS(c, CONN_CLOSING)) return;
    c->flags |= CONN_CLOSING | CONN_DRAINING;
    set_close(c, code, reason);
    /* WRITEABLE flushes the queue, then sends the close frame */
    lws_callback_on_writable(c->wsi);
}

void conn_kill(conn *c)
{
    if (HAS(c, CONN_CLOSED)) return;
    c->flags |= CONN_CLOSING | CONN_KILLED;
    c->flags &= ~CONN_DRAINING;
    outq_clear(&c->q);
    flush_list_remove(c);
    /* WRITEABLE returns -1 and lws closes the socket (without a frame: we
     * never give lws a close reason). A timeout of 0 (LWS_TO_KILL_ASYNC)
     * does not re-arm lws' timer on the foreign loop: it would wait for
     * whatever timeout was pending. The 1 s one is a backstop. */
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_ACK, 1);
    lws_callback_on_writable(c->wsi);
}

void conn_fail(conn *c, uint16_t code, const char *reason)
{
    c->flags |= CONN_PEER_CLOSED;       /* drop once the close frame is out */
    if (HAS(c, CONN_CLOSE_SENT)) conn_kill(c);
    else conn_close_now(c, code, reason);
}

void conn_close_oom(conn *c)
{
    conn_metrics_init();
    metric_inc(m_oom);
    LOGW("conn", "conn %llu user %s: out of memory, closing 1011", (unsigned long long)c->id, c->ident.user);
    conn_fail(c, 1011, "out of memory");
}

int conn_peer_close(conn *c, uint16_t code)
{
    c->flags |= CONN_PEER_CLOSED;
    if (HAS(c, CONN_CLOSE_SENT)) {      /* the answer to ours: done */
        conn_kill(c);
        return -1;
    }
    if (HAS(c, CONN_CLOSING) && !HAS(c, CONN_DRAINING)) {
        lws_callback_on_writable(c->wsi);   /* ours goes out, then we drop */
        return 0;
    }
    conn_close_now(c, code, "");       /* answer with the peer's code, then drop */
    return 0;
}

/* ---- input ------------------------------------------------------------------ */

void (*conn_rx_changed)(conn *c);

void conn_rx_pause(conn *c, unsigned reason, int paused)
{
    unsigned was = c->rx_paused;
    if (paused) c->rx_paused |= reason;
    else c->rx_paused &= ~reason;
    if ((!was) != (!c->rx_paused) && conn_rx_changed && !HAS(c, CONN_CLOSED)) conn_rx_changed(c);
}

int conn_rx_paused(const conn *c) { return c->rx_paused != 0; }

void conn_set_reading(conn *c, int on)
{
    if (on) c->flags |= CONN_READING;
    else c->flags &= ~CONN_READING;
}

int conn_is_reading(const conn *c) { return HAS(c, CONN_READING); }

/* ---- writing ---------------------------------------------------------------- */

/* After a failed write to c's socket: 0 to try again (EINTR), 1 when the
 * socket is full (a WRITEABLE callback is asked for), -1 on an error. */
static int write_failed(conn *c)
{
    if (errno == EINTR) return 0;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        lws_callback_on_writable(c->wsi);
        return 1;
    }
    return -1;
}

/* Writes our close frame (code + reason) straight to the socket: we are at
 * a frame boundary (lws flushed anything it held before WRITEABLE). Then the
 * peer answers with its close frame or EOF, which wsread reads
 * (conn_peer_close, conn_kill), or the timeout ends it. Returns 0 sent, 1
 * socket full (WRITEABLE requested), -1 when lws should drop the socket
 * (an error, or the peer closed already). */
static int send_close_frame(conn *c)
{
    /* the frame is a function of (code, reason), both fixed from here on:
     * built again on each attempt, written from close_off */
    unsigned char f[4 + CONN_CLOSE_REASON_MAX];
    size_t rl = c->close_reason ? strlen(c->close_reason) : 0;
    f[0] = 0x88;
    f[1] = (unsigned char)(2 + rl);
    f[2] = (unsigned char)(c->close_code >> 8);
    f[3] = (unsigned char)(c->close_code & 0xff);
    if (rl) memcpy(f + 4, c->close_reason, rl);
    size_t len = 4 + rl;
    c->flags |= CONN_CLOSE_BUILT;
    while (c->close_off < len) {
        ssize_t w = send(c->fd, f + c->close_off, len - c->close_off, MSG_NOSIGNAL);
        if (w < 0) {
            int rc = write_failed(c);
            if (rc == 0) continue;
            return rc;
        }
        c->close_off = (uint8_t)(c->close_off + (size_t)w);
    }
    c->flags |= CONN_CLOSE_SENT;
    /* FIN after the close frame: the peer reads it and EOF, and may still
     * send its own close, which wsread reads (then lws drops the socket) */
    shutdown(c->fd, SHUT_WR);
    if (HAS(c, CONN_PEER_CLOSED)) return -1;
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_ACK, 3);
    return 0;
}

typedef struct { uint64_t now; uint64_t n; } done_ctx;

static void on_done(msg *m, void *ud)
{
    done_ctx *d = ud;
    double wait = (double)(d->now - m->born_ns) / 1e9;
    metric_observe(m_qwait, wait);
    if (m->kind == MSG_MESSAGE) {
        d->n++;
        metric_observe(m_lag, wait);
    }
}

/* Writes as much as the socket takes, with sendmsg() rather than writev():
 * the socket call goes straight to the socket, past the file layer's work
 * that writev() does on every call (the position lookup, the fsnotify
 * hook): 3-4% of chatd's CPU per delivery in rooms of 100 (docs/cost.md
 * section 21). Returns 0 when everything went out,
 * 1 when the socket is full (a WRITEABLE callback was requested), -1 on a
 * socket error. */
static int write_some(conn *c)
{
    struct iovec iov[64];
    while (!outq_empty(&c->q)) {
        size_t total;
        int n = outq_iov(&c->q, iov, 64, &total);
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = n};
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        metric_inc(m_writev);
        if (w < 0) {
            int rc = write_failed(c);
            if (rc == 0) continue;
            return rc;
        }
        done_ctx d = {mono_ns(), 0};
        outq_consume(&c->q, (size_t)w, on_done, &d);
        metric_add(m_deliveries, d.n);
        if ((size_t)w < total) {
            if (c->q.head_off) {
                /* hand the rest of the partly written frame to lws, which
                 * keeps it ahead of anything it writes itself (pong, close) */
                msg *h = outq_peek(&c->q);
                size_t rest = msg_wire_len(h) - c->q.head_off;
                unsigned char *tmp = malloc(LWS_PRE + rest);
                if (!tmp) return -1;
                memcpy(tmp + LWS_PRE, msg_wire(h) + c->q.head_off, rest);
                int lw = lws_write(c->wsi, tmp + LWS_PRE, rest, LWS_WRITE_RAW);
                free(tmp);
                if (lw < 0) return -1;
                done_ctx d2 = {mono_ns(), 0};
                outq_consume(&c->q, rest, on_done, &d2);
                metric_add(m_deliveries, d2.n);
                c->flags |= CONN_LWS_TAIL;
            }
            lws_callback_on_writable(c->wsi);
            return 1;
        }
    }
    return 0;
}

int conn_on_writeable(conn *c)
{
    c->flags &= ~CONN_LWS_TAIL;
    if (HAS(c, CONN_KILLED)) return -1;
    if (HAS(c, CONN_CLOSE_SENT)) return HAS(c, CONN_PEER_CLOSED) ? -1 : 0;
    int draining = HAS(c, CONN_DRAINING);
    if (HAS(c, CONN_CLOSING) && !draining) return send_close_frame(c) < 0 ? -1 : 0;
    int r = write_some(c);
    if (r < 0) return -1;
    if (r == 0 && draining) return send_close_frame(c) < 0 ? -1 : 0;
    return 0;
}

size_t conn_trim_queues(void)
{
    size_t n = 0, kept = 0;
    for (conn *c = g_all; c; c = c->all.next) {
        n += (size_t)outq_trim(&c->q);
        kept += (size_t)outq_has_ring(&c->q);
    }
    if (m_rings) metric_set(m_rings, (double)kept);
    return n;
}

void conn_flush_all(void)
{
    while (g_flush) {
        conn *c = g_flush;
        flush_list_remove(c);
        if (HAS(c, CONN_CLOSED | CONN_LWS_TAIL)) continue;
        int draining = HAS(c, CONN_DRAINING);
        if (HAS(c, CONN_CLOSING) && !draining) continue;
        int r = write_some(c);
        if (r < 0) conn_kill(c);    /* socket error: stop writing, lws closes it */
        else if (r == 0 && draining) lws_callback_on_writable(c->wsi);   /* the close frame */
    }
}
