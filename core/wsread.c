/* wsread: see wsread.h. */
#define _GNU_SOURCE
#include "wsread.h"
#include "chat.h"
#include "log.h"
#include "metrics.h"
#include "srv.h"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static int g_ep = -1;
static uv_poll_t g_poll;
static int g_poll_on;
/* one read per connection per loop iteration, as lws did (its service
 * buffer): output is flushed once per iteration, and the queue bounds are
 * sized for what one iteration can add */
static unsigned char g_buf[32768];

static metric_counter *m_err[3];   /* 1002, 1007, 1009 */
static metric_counter *m_too_big;

void wsread_metrics_init(void)
{
    static unsigned seen;
    if (!metrics_register_due(&seen)) return;
    static const char *codes[] = {"1002", "1007", "1009"};
    for (int i = 0; i < 3; i++) {
        char l[32];
        snprintf(l, sizeof l, "code=\"%s\"", codes[i]);
        m_err[i] = metrics_counter("chat_ws_protocol_errors_total",
                                   "Connections failed for a client framing error, by close code", l);
    }
    m_too_big = metrics_counter("chat_drops_total", NULL, "reason=\"frame_too_large\"");
    conn_metrics_init();   /* chat_ws_server_errors_total (conn_close_oom) */
}

void wsread_count_failure(int code)
{
    metric_inc(m_err[code == 1007 ? 1 : code == 1009 ? 2 : 0]);
    if (code == 1009) metric_inc(m_too_big);
}

static void send_pong(conn *c, const unsigned char *p, size_t n)
{
    msg *m = msg_alloc(n);
    if (!m) return;
    memcpy(msg_payload(m), p, n);
    msg_seal(m, n);
    m->buf[LWS_PRE - m->hdr] = 0x8A;     /* FIN | pong */
    conn_send(c, m);
    msg_unref(m);
}

int wsread_data(void *ud, const unsigned char *p, size_t n, int final, int binary)
{
    conn *c = ud;
    if (conn_is_closing(c)) return 0;   /* closing: the peer's messages are moot */
    if (final && c->rx_len == 0) {
        if (binary) conn_send_error(c, "bad_request", "binary frames are not supported", NULL);
        else chat_conn_frame(c, (const char *)p, n);
        return 0;
    }
    if (c->rx_len + n > c->rx_cap) {
        size_t nc = c->rx_cap ? c->rx_cap : 1024;
        while (nc < c->rx_len + n) nc *= 2;
        /* (over 32 bits: not with CHAT_MAX_FRAME <= 1 GiB) out of memory:
         * 1011 like wsframe's control buffer; later input is moot */
        unsigned char *nb = nc > UINT32_MAX ? NULL : realloc(c->rx, nc);
        if (!nb) { conn_close_oom(c); return 0; }
        c->rx = nb;
        c->rx_cap = (uint32_t)nc;
    }
    memcpy(c->rx + c->rx_len, p, n);
    c->rx_len += (uint32_t)n;
    if (final) {
        if (binary) conn_send_error(c, "bad_request", "binary frames are not supported", NULL);
        else chat_conn_frame(c, (const char *)c->rx, c->rx_len);
        c->rx_len = 0;
        if (c->rx_cap > 16384) { free(c->rx); c->rx = NULL; c->rx_cap = 0; }
    }
    return 0;
}

static int on_control(void *ud, int op, const unsigned char *p, size_t n)
{
    conn *c = ud;
    if (op == WSF_PING) {
        if (!conn_is_closing(c)) send_pong(c, p, n);
        return 0;
    }
    if (op != WSF_CLOSE) return 0;
    /* answered with the peer's code (1000 when it gave none), then dropped */
    return conn_peer_close(c, n >= 2 ? (uint16_t)(p[0] << 8 | p[1]) : 1000);
}

static const wsf_handlers H = {wsread_data, on_control};

static void fail(conn *c, int code)
{
    if (code == 1011) { conn_close_oom(c); return; }   /* wsframe's control buffer */
    const char *why = c->rxp.reason ? c->rxp.reason : "protocol error";
    wsread_count_failure(code);
    LOGI("ws", "conn %llu user %s: %s, closing %d", (unsigned long long)c->id, c->ident.user, why, code);
    conn_fail(c, (uint16_t)code, why);
}

static void on_readable(conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, g_buf, sizeof g_buf, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            wsread_detach(c);
            conn_kill(c);
            return;
        }
        if (n == 0) {               /* EOF: the peer is gone (or answered our FIN) */
            wsread_detach(c);
            conn_kill(c);
            return;
        }
        if (c->rxp.done) return;    /* after a close or a failure: discard */
        int r = wsf_feed(&c->rxp, g_buf, (size_t)n, &H, c);
        /* r < 0: the peer's close answered ours and conn_peer_close
         * dropped the connection (wsread_data never stops the parser) */
        if (r >= 1000) fail(c, r);
        return;
    }
}

static void rx_changed(conn *c);

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct epoll_event ev[128];
    int n = epoll_wait(g_ep, ev, 128, 0);
    for (int i = 0; i < n; i++) {
        conn *c = ev[i].data.ptr;
        if (!conn_is_reading(c)) continue;  /* detached by an earlier event of this batch */
        on_readable(c);
    }
}

int wsread_init(uv_loop_t *loop, char *err, size_t errlen)
{
    wsread_metrics_init();
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) { snprintf(err, errlen, "epoll_create1: %s", strerror(errno)); return -1; }
    conn_rx_changed = rx_changed;
    if (uv_poll_init(loop, &g_poll, g_ep) < 0 || uv_poll_start(&g_poll, UV_READABLE, on_poll) < 0) {
        snprintf(err, errlen, "uv_poll on the WebSocket epoll set failed");
        close(g_ep);
        g_ep = -1;
        return -1;
    }
    g_poll_on = 1;
    return 0;
}

static void closed_cb(uv_handle_t *h) { (void)h; }

void wsread_shutdown(void)
{
    if (g_poll_on) {
        uv_poll_stop(&g_poll);
        uv_close((uv_handle_t *)&g_poll, closed_cb);
        g_poll_on = 0;
    }
    if (g_ep >= 0) { close(g_ep); g_ep = -1; }
}

/* conn_rx_pause: out of the epoll set while paused (no event at all, so
 * nothing spins on unread input), back in when resumed; level-triggered, so
 * what arrived meanwhile is read at once. */
static void rx_changed(conn *c)
{
    if (!conn_is_reading(c) || g_ep < 0) return;
    if (conn_rx_paused(c)) {
        epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &ev) < 0 && errno != EEXIST) {
        LOGW("ws", "conn %llu: epoll_ctl: %s", (unsigned long long)c->id, strerror(errno));
        conn_set_reading(c, 0);
        conn_kill(c);
    }
}

int wsread_attach(conn *c)
{
    wsf_init(&c->rxp, (uint64_t)g_srv.cfg.max_frame);
    if (g_ep < 0) return -1;
    /* lws stops reading this socket; its writes and timeouts go on */
    lws_rx_flow_control(c->wsi, 0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        LOGW("ws", "conn %llu: epoll_ctl: %s", (unsigned long long)c->id, strerror(errno));
        return -1;
    }
    conn_set_reading(c, 1);
    return 0;
}

void wsread_detach(conn *c)
{
    if (!conn_is_reading(c)) return;
    conn_set_reading(c, 0);
    if (g_ep >= 0 && !conn_rx_paused(c)) epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
}
