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

static conn *g_all;
static size_t g_count;
static conn *g_flush_head;
static uint64_t g_next_id = 1;

static metric_counter *m_deliveries, *m_slow, *m_writev;
static metric_hist *m_lag, *m_qwait;
static metric_gauge *m_open;

void conn_metrics_init(void)
{
    if (m_deliveries) return;
    m_deliveries = metrics_counter("chat_deliveries_total", "Message frames written to client sockets", NULL);
    m_slow = metrics_counter("chat_drops_total", "Connections dropped or frames refused, by reason", "reason=\"slow_consumer\"");
    metrics_counter("chat_slow_consumer_closes_total", "Connections closed with 1008 because their queue filled", NULL);
    m_writev = metrics_counter("chat_socket_writes_total", "writev() calls on client sockets", NULL);
    m_lag = metrics_histogram("chat_broadcast_lag_seconds",
                              "Message entered this node's delivery path -> written to the recipient socket",
                              NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    m_qwait = metrics_histogram("chat_queue_wait_seconds",
                                "Any frame: queued for a connection -> written to its socket",
                                NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    m_open = metrics_gauge("chat_connections_open", "Open WebSocket connections", NULL);
}

conn *conn_first(void) { return g_all; }
size_t conn_count(void) { return g_count; }

conn *conn_new(struct lws *wsi, identity *ident, const char *room)
{
    conn_metrics_init();
    conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->id = g_next_id++;
    c->wsi = wsi;
    c->fd = lws_get_socket_fd(wsi);
    c->ident = *ident;
    memset(ident, 0, sizeof *ident);
    snprintf(c->url_room, sizeof c->url_room, "%s", room);
    c->opened_ms = now_ms();
    c->all_next = g_all;
    if (g_all) g_all->all_prev = c;
    g_all = c;
    g_count++;
    metric_set(m_open, (double)g_count);
    return c;
}

static void flush_list_remove(conn *c)
{
    if (!c->in_flush_list) return;
    for (conn **p = &g_flush_head; *p; p = &(*p)->flush_next)
        if (*p == c) { *p = c->flush_next; break; }
    c->in_flush_list = 0;
}

void conn_destroy(conn *c)
{
    flush_list_remove(c);
    if (c->all_prev) c->all_prev->all_next = c->all_next; else g_all = c->all_next;
    if (c->all_next) c->all_next->all_prev = c->all_prev;
    g_count--;
    metric_set(m_open, (double)g_count);
    outq_clear(&c->q);
    free(c->rooms);
    free(c->rx);
    identity_clear(&c->ident);
    free(c);
}

conn_room *conn_find_room(conn *c, const char *room)
{
    for (uint32_t i = 0; i < c->nrooms; i++)
        if (strcmp(c->rooms[i]->r->name, room) == 0) return c->rooms[i];
    return NULL;
}

static void want_flush(conn *c)
{
    if (c->in_flush_list || c->lws_has_tail || c->closed) return;
    c->in_flush_list = 1;
    c->flush_next = g_flush_head;
    g_flush_head = c;
}

int conn_send(conn *c, msg *m)
{
    if (c->closing && !c->close_after_flush) return -1;
    if (c->closed) return -1;
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
    char buf[1024];
    size_t o = 0;
    o += (size_t)snprintf(buf, sizeof buf, "{\"type\":\"error\",\"code\":\"%s\",\"message\":", code);
    long n = json_escape(buf + o, sizeof buf - o - 128, message, strlen(message));
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

static void close_start(conn *c, uint16_t code, const char *reason)
{
    c->closing = 1;
    c->close_after_flush = 0;
    c->close_code = code;
    snprintf(c->close_reason, sizeof c->close_reason, "%s", reason);
    if (code != 1001) outq_clear(&c->q);   /* nothing more for this client */
    flush_list_remove(c);
    /* a peer that never reads cannot hold the connection open for long */
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_SEND, 5);
    lws_callback_on_writable(c->wsi);
}

void conn_close(conn *c, uint16_t code, const char *reason)
{
    if (c->closed || (c->closing && !c->close_after_flush)) return;
    close_start(c, code, reason);
}

void conn_close_now(conn *c, uint16_t code, const char *reason)
{
    if (c->closed || c->close_sent || c->close_len) return;   /* ours is (partly) out */
    if (c->closing && !c->close_after_flush && c->close_code == code) return;
    close_start(c, code, reason);
}

void (*conn_rx_changed)(conn *c);

void conn_rx_pause(conn *c, unsigned reason, int paused)
{
    unsigned was = c->rx_paused;
    if (paused) c->rx_paused |= reason;
    else c->rx_paused &= ~reason;
    if ((!was) != (!c->rx_paused) && conn_rx_changed && !c->closed) conn_rx_changed(c);
}

void conn_kill(conn *c)
{
    if (c->closed) return;
    c->closing = 1;
    c->close_after_flush = 0;
    c->killed = 1;
    outq_clear(&c->q);
    flush_list_remove(c);
    /* WRITEABLE returns -1 and lws closes the socket (without a frame: we
     * never give lws a close reason). A timeout of 0 (LWS_TO_KILL_ASYNC)
     * does not re-arm lws' timer on the foreign loop: it would wait for
     * whatever timeout was pending. The 1 s one is a backstop. */
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_ACK, 1);
    lws_callback_on_writable(c->wsi);
}

/* Writes our close frame (code + reason) straight to the socket: we are at
 * a frame boundary (lws flushed anything it held before WRITEABLE). Then the
 * peer answers with its close frame, which lws handles, or the timeout
 * ends it. Returns 0 sent, 1 socket full (WRITEABLE requested), -1 error. */
static int send_close_frame(conn *c)
{
    if (!c->close_len) {
        size_t rl = strlen(c->close_reason);
        if (rl > 123) rl = 123;
        c->close_frame[0] = 0x88;
        c->close_frame[1] = (unsigned char)(2 + rl);
        c->close_frame[2] = (unsigned char)(c->close_code >> 8);
        c->close_frame[3] = (unsigned char)(c->close_code & 0xff);
        memcpy(c->close_frame + 4, c->close_reason, rl);
        c->close_len = 4 + rl;
        c->close_off = 0;
    }
    while (c->close_off < c->close_len) {
        ssize_t w = send(c->fd, c->close_frame + c->close_off, c->close_len - c->close_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                lws_callback_on_writable(c->wsi);
                return 1;
            }
            return -1;
        }
        c->close_off += (size_t)w;
    }
    c->close_sent = 1;
    /* FIN after the close frame: the peer reads it and EOF, and may still
     * send its own close, which wsread reads (then lws drops the socket) */
    shutdown(c->fd, SHUT_WR);
    if (c->peer_closed) return -1;
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

/* Writes as much as the socket takes. Returns 0 when everything went out,
 * 1 when the socket is full (a WRITEABLE callback was requested), -1 on a
 * socket error. */
static int write_some(conn *c)
{
    struct iovec iov[64];
    while (!outq_empty(&c->q)) {
        size_t total;
        int n = outq_iov(&c->q, iov, 64, &total);
        ssize_t w = writev(c->fd, iov, n);
        metric_inc(m_writev);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                lws_callback_on_writable(c->wsi);
                return 1;
            }
            return -1;
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
                c->lws_has_tail = 1;
            }
            lws_callback_on_writable(c->wsi);
            return 1;
        }
    }
    return 0;
}

int conn_on_writeable(conn *c)
{
    c->lws_has_tail = 0;
    if (c->killed) return -1;
    if (c->close_sent) return c->peer_closed ? -1 : 0;
    if (c->closing && !c->close_after_flush) return send_close_frame(c) < 0 ? -1 : 0;
    int r = write_some(c);
    if (r < 0) return -1;
    if (r == 0 && c->close_after_flush) return send_close_frame(c) < 0 ? -1 : 0;
    return 0;
}

void conn_flush_all(void)
{
    while (g_flush_head) {
        conn *c = g_flush_head;
        g_flush_head = c->flush_next;
        c->in_flush_list = 0;
        if (c->closed || c->lws_has_tail) continue;
        if (c->closing && !c->close_after_flush) continue;
        int r = write_some(c);
        if (r < 0) {
            /* socket error: let lws notice and close; stop writing */
            c->closing = 1;
            outq_clear(&c->q);
            lws_callback_on_writable(c->wsi);
        } else if (r == 0 && c->close_after_flush) {
            lws_callback_on_writable(c->wsi);
        }
    }
}
