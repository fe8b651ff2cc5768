/* listener: see listener.h. */
#define _GNU_SOURCE
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int g_fd = -1, g_reserve = -1;
static uv_poll_t g_poll;
static uv_timer_t g_pause;
static int g_open, g_polling;
static struct lws_vhost *g_vh;
static uint32_t g_pause_ms;
static uint64_t g_last_log_ms, g_unlogged;

static metric_counter *m_emfile, *m_other, *m_shed;
static metric_gauge *m_paused;

void listener_metrics_init(void)
{
    if (m_emfile) return;
    const char *h = "accept() failures, by reason (emfile: out of file descriptors)";
    m_emfile = metrics_counter("chat_accept_errors_total", h, "reason=\"emfile\"");
    m_other = metrics_counter("chat_accept_errors_total", h, "reason=\"other\"");
    m_shed = metrics_counter("chat_accept_shed_total",
                             "Connections accepted and closed at once because file descriptors ran out", NULL);
    m_paused = metrics_gauge("chat_accept_paused", "1 while accepting is paused (out of file descriptors)", NULL);
}

static void reserve_open(void)
{
    if (g_reserve < 0) g_reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void on_readable(uv_poll_t *h, int status, int events);

static void resume(uv_timer_t *t)
{
    reserve_open();
    metric_set(m_paused, 0);
    if (g_open && !g_polling && uv_poll_start(&g_poll, UV_READABLE, on_readable) == 0) g_polling = 1;
}

/* Out of descriptors: shed the connection at the head of the queue with the
 * reserve fd, stop accepting for a while, count it, log at most once a
 * second (with how many were not logged). */
static void exhausted(int err)
{
    metric_inc(m_emfile);
    if (g_reserve >= 0) {
        close(g_reserve);
        g_reserve = -1;
        int fd = accept4(g_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            close(fd);
            metric_inc(m_shed);
        }
        reserve_open();
    }
    g_unlogged++;
    uint64_t now = mono_ms();
    if (now - g_last_log_ms >= 1000) {
        LOGW("listener", "accept: %s; pausing accepts for %u ms (%llu times since the last report)",
             strerror(err), g_pause_ms, (unsigned long long)g_unlogged);
        g_last_log_ms = now;
        g_unlogged = 0;
    }
    if (g_polling) {
        uv_poll_stop(&g_poll);
        g_polling = 0;
    }
    metric_set(m_paused, 1);
    uv_timer_start(&g_pause, resume, g_pause_ms, 0);
}

static void tune(int fd)
{
    int one = 1, idle = 60, intvl = 10, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    /* a bounded batch per wake-up keeps the loop fair to live connections */
    for (int i = 0; i < 64 && g_polling; i++) {
        int fd = accept4(g_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK) return;
            if (e == EINTR || e == ECONNABORTED || e == EPROTO) continue;
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) { exhausted(e); return; }
            metric_inc(m_other);
            LOGW("listener", "accept: %s", strerror(e));
            return;
        }
        tune(fd);
        /* on failure lws closes the socket itself */
        if (!lws_adopt_socket_vhost(g_vh, fd))
            LOGW("listener", "lws did not adopt a new connection (fd %d)", fd);
    }
}

int listener_open(uv_loop_t *loop, const listener_opts *o, char *err, size_t errlen)
{
    listener_metrics_init();
    char host[128];
    snprintf(host, sizeof host, "%s", o->host ? o->host : "");
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = 0;
    }
    char port[16];
    snprintf(port, sizeof port, "%d", o->port);
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int gr = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (gr) {
        snprintf(err, errlen, "listen address %s: %s", o->host, gai_strerror(gr));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        (o->reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, o->backlog > 0 ? o->backlog : 511) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", o->host, o->port, strerror(errno));
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    if (uv_poll_init(loop, &g_poll, fd) < 0) {
        snprintf(err, errlen, "uv_poll_init on the listening socket failed");
        close(fd);
        return -1;
    }
    uv_timer_init(loop, &g_pause);
    g_fd = fd;
    g_open = 1;
    g_pause_ms = o->pause_ms ? o->pause_ms : 250;
    reserve_open();
    return 0;
}

void listener_start(struct lws_vhost *vh)
{
    g_vh = vh;
    if (g_open && !g_polling && uv_poll_start(&g_poll, UV_READABLE, on_readable) == 0) g_polling = 1;
}

static void closed_cb(uv_handle_t *h) { (void)h; }

void listener_close(void)
{
    if (!g_open) return;
    g_open = 0;
    g_polling = 0;
    uv_timer_stop(&g_pause);
    uv_close((uv_handle_t *)&g_pause, closed_cb);
    uv_close((uv_handle_t *)&g_poll, closed_cb);
    close(g_fd);
    g_fd = -1;
    if (g_reserve >= 0) { close(g_reserve); g_reserve = -1; }
}
