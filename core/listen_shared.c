/* listen_shared: see listen_shared.h. */
#define _GNU_SOURCE
#include "listen_shared.h"
#include "log.h"
#include "metrics.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MOD "listen"
#define ACCEPT_BURST 64        /* accepts per wakeup, then let the loop run */
#define FD_PAUSE_MS 100        /* out of descriptors: stop accepting this long */

static int g_fd = -1;
static int g_polling, g_timer_on;
static uv_poll_t g_poll;
static uv_timer_t g_pause;
static struct lws_vhost *g_vhost;
static listen_shared_opts g_opts;
static metric_counter *m_accepted, *m_paused, *m_refused;

int listen_shared_open(const char *host, int port, char *err, size_t errlen)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (!host || !*host || !strcmp(host, "0.0.0.0")) a.sin_addr.s_addr = htonl(INADDR_ANY);
    else if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        snprintf(err, errlen, "CHAT_LISTEN: --workers needs an IPv4 address, got '%s'", host);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, SOMAXCONN) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d shared with the other workers: %s",
                 host && *host ? host : "0.0.0.0", port, strerror(errno));
        close(fd);
        return -1;
    }
    g_fd = fd;
    return 0;
}

static void tune(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (g_opts.ka_time > 0) {
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &g_opts.ka_time, sizeof g_opts.ka_time);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &g_opts.ka_interval, sizeof g_opts.ka_interval);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &g_opts.ka_probes, sizeof g_opts.ka_probes);
    }
}

static void on_readable(uv_poll_t *h, int status, int events);

static void on_resume(uv_timer_t *t)
{
    if (g_fd >= 0 && !g_polling) {
        g_polling = 1;
        uv_poll_start(&g_poll, UV_READABLE, on_readable);
    }
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    if (status < 0) {
        LOGW(MOD, "shared listener: %s", uv_strerror(status));
        return;
    }
    for (int i = 0; i < ACCEPT_BURST && g_fd >= 0; i++) {
        int c = accept4(g_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* the kernel keeps the connection queued; stop spinning on it */
                metric_inc(m_paused);
                if (m_paused->v == 1 || m_paused->v % 100 == 0)
                    LOGW(MOD, "accept: %s; pausing the shared listener %d ms (%llu times)",
                         strerror(errno), FD_PAUSE_MS, (unsigned long long)m_paused->v);
                uv_poll_stop(&g_poll);
                g_polling = 0;
                uv_timer_start(&g_pause, on_resume, FD_PAUSE_MS, 0);
                return;
            }
            LOGW(MOD, "accept: %s", strerror(errno));
            return;
        }
        tune(c);
        metric_inc(m_accepted);
        /* on failure lws closes the descriptor itself */
        if (!lws_adopt_socket_vhost(g_vhost, c)) metric_inc(m_refused);
    }
}

void listen_shared_start(uv_loop_t *loop, struct lws_vhost *vhost, const listen_shared_opts *o)
{
    if (g_fd < 0) return;
    g_vhost = vhost;
    g_opts = *o;
    m_accepted = metrics_counter("chat_shared_listener_accepts_total",
                                 "Connections accepted on the port shared by the workers (chatd --workers)", NULL);
    m_paused = metrics_counter("chat_shared_listener_pauses_total",
                               "Times the shared listener paused because the process ran out of file descriptors", NULL);
    m_refused = metrics_counter("chat_shared_listener_refused_total",
                                "Accepted connections libwebsockets could not adopt (closed at once)", NULL);
    uv_poll_init(loop, &g_poll, g_fd);
    uv_timer_init(loop, &g_pause);
    g_timer_on = 1;
    g_polling = 1;
    uv_poll_start(&g_poll, UV_READABLE, on_readable);
}

static void closed(uv_handle_t *h) { (void)h; }

void listen_shared_close(void)
{
    if (g_fd < 0) return;
    if (g_timer_on) {   /* started: the handles exist */
        uv_poll_stop(&g_poll);
        uv_close((uv_handle_t *)&g_poll, closed);
        uv_timer_stop(&g_pause);
        uv_close((uv_handle_t *)&g_pause, closed);
        g_timer_on = 0;
    }
    g_polling = 0;
    close(g_fd);
    g_fd = -1;
    LOGI(MOD, "shared listener closed: new connections go to the other workers");
}
