/* listener: see listener.h. */
#define _GNU_SOURCE
#include "listener.h"
#include "http.h"
#include "httpd.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* A connection whose first request head has not fully arrived yet. */
typedef struct pending {
    int fd;
    uint64_t deadline_ms;
    struct pending *prev, *next;
} pending;

static pending *g_pending;
static size_t g_npending;
static int g_hs_ep = -1;
static uv_poll_t g_hs_poll;
static uv_timer_t g_hs_timer;
static uint32_t g_head_timeout_ms, g_head_max;
static char *g_peek;

/* A listening socket: the node's port, or with chatd --workers the port
 * shared by the workers (SO_REUSEPORT; closed first at a drain so new
 * connections go to the other workers) plus the worker's own port. */
typedef struct lsock {
    int fd;
    int shared;
    int polling;
    uv_poll_t poll;
} lsock;

#define MAX_LSOCKS 2
static lsock g_ls[MAX_LSOCKS];
static int g_nls;
static uv_loop_t *g_loop;
static int g_reserve = -1;
static uv_timer_t g_pause;
static int g_open, g_started, g_paused;
static uint32_t g_backlog;
static struct lws_vhost *g_vh;
static uint32_t g_pause_ms;
static uint64_t g_last_log_ms, g_unlogged;

static metric_counter *m_emfile, *m_other, *m_shed, *m_timeout, *m_big, *m_early, *m_shared;
static metric_counter *m_ws_bad, *m_http_4xx;   /* ws.c's and http.c's series */
static metric_gauge *m_paused;

void listener_metrics_init(void)
{
    static unsigned seen;
    if (!metrics_register_due(&seen)) return;
    const char *h = "accept() failures, by reason (emfile: out of file descriptors)";
    m_emfile = metrics_counter("chat_accept_errors_total", h, "reason=\"emfile\"");
    m_other = metrics_counter("chat_accept_errors_total", h, "reason=\"other\"");
    m_shed = metrics_counter("chat_accept_shed_total",
                             "Connections accepted and closed at once because file descriptors ran out", NULL);
    m_paused = metrics_gauge("chat_accept_paused", "1 while accepting is paused (out of file descriptors)", NULL);
    const char *r = "Connections refused at the edge before the upgrade, by reason";
    m_timeout = metrics_counter("chat_refused_total", r, "reason=\"handshake_timeout\"");
    m_big = metrics_counter("chat_refused_total", r, "reason=\"header_too_large\"");
    m_early = metrics_counter("chat_refused_total", r, "reason=\"early_data\"");
    m_ws_bad = metrics_counter("chat_connections_total", "WebSocket upgrade attempts, by outcome",
                               "result=\"bad_request\"");
    m_http_4xx = metrics_counter("chat_http_requests_total", "HTTP responses, by status class", "code=\"4xx\"");
}

static void reserve_open(void)
{
    if (g_reserve < 0) g_reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void on_readable(uv_poll_t *h, int status, int events);

static void poll_all(int on)
{
    for (int i = 0; i < g_nls; i++) {
        lsock *l = &g_ls[i];
        if (l->fd < 0 || l->polling == on) continue;
        if (on && uv_poll_start(&l->poll, UV_READABLE, on_readable) < 0) continue;
        if (!on) uv_poll_stop(&l->poll);
        l->polling = on;
    }
}

static void resume(uv_timer_t *t)
{
    reserve_open();
    metric_set(m_paused, 0);
    g_paused = 0;
    if (g_open && g_started) poll_all(1);
}

/* accept() failed for a reason that would repeat at once. Out of
 * descriptors: shed the connection at the head of the queue with the
 * reserve fd. Either way: stop accepting for a while, count it, log at most
 * once a second (with how many were not logged). */
static void exhausted(lsock *l, int err)
{
    int fds = err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
    metric_inc(fds ? m_emfile : m_other);
    if (fds && g_reserve >= 0) {
        close(g_reserve);
        g_reserve = -1;
        int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
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
    poll_all(0);
    g_paused = 1;
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

/* ---- pending request heads ------------------------------------------- */

static void pending_drop(pending *p, int close_fd)
{
    if (p->prev) p->prev->next = p->next; else g_pending = p->next;
    if (p->next) p->next->prev = p->prev;
    g_npending--;
    epoll_ctl(g_hs_ep, EPOLL_CTL_DEL, p->fd, NULL);
    if (close_fd) close(p->fd);
    free(p);
    if (!g_npending) uv_timer_stop(&g_hs_timer);
}

/* Answers a refused head and closes: what the client sent is read and
 * dropped first, so the close is a FIN after the answer, not a reset. */
static void answer_and_close_as(pending *p, const char *status, const char *ctype, const char *extra,
                                const char *body, int no_body)
{
    for (int i = 0; i < 16; i++)
        if (recv(p->fd, g_peek, (size_t)g_head_max + 1, MSG_DONTWAIT) <= 0) break;
    char b[512];
    int n = snprintf(b, sizeof b, "HTTP/1.1 %s\r\ncontent-type: %s\r\n"
                     "content-length: %zu\r\nconnection: close\r\ncache-control: no-store\r\n%s\r\n%s",
                     status, ctype, strlen(body), extra, no_body ? "" : body);
    if (n > 0 && (size_t)n < sizeof b &&
        send(p->fd, b, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) { /* gone: nothing to tell */ }
    shutdown(p->fd, SHUT_WR);
    pending_drop(p, 1);
}

static void answer_and_close(pending *p, const char *status, const char *text)
{
    char body[256];
    snprintf(body, sizeof body, "%s\n", text);
    answer_and_close_as(p, status, "text/plain; charset=utf-8", "", body, 0);
}

/* The room in the path as sent (util.h room_target_verdict): lws would
 * percent-decode it and remove dot-segments first (/ws/a%2F..%2Fb was room
 * "b"; /ws/a%00b a dropped connection), so the first request head of a
 * connection is judged here. The answers are those of ws.c and http.c. */
static int room_gate(pending *p, const char *head, size_t hl)
{
    int route, is_head;
    int v = room_target_verdict(head, hl, &route, &is_head);
    if (!v) return 0;
    metric_inc(route == 1 && v == 400 ? m_ws_bad : m_http_4xx);
    if (v == 414)
        answer_and_close_as(p, "414 URI Too Long", "text/plain; charset=utf-8", "",
                            "request path too long to judge\n", is_head);
    else if (v == 404)   /* a /rooms/ route: CORS like http.c's answers */
        answer_and_close_as(p, "404 Not Found", "text/plain; charset=utf-8",
                            "access-control-allow-origin: *\r\n", "not found\n", is_head);
    else if (route == 2) {   /* http.c's error shape */
        char b[320];
        b[http_error_json(b, sizeof b, "invalid room name")] = 0;
        answer_and_close_as(p, "400 Bad Request", "application/json", "access-control-allow-origin: *\r\n",
                            b, is_head);
    } else if (route == 3) {   /* the server API's error shape */
        size_t len;
        char *b = httpd_error_body("bad_request", "invalid room name", &len);
        if (b) answer_and_close_as(p, "400 Bad Request", "application/json", "", b, is_head);
        else answer_and_close(p, "503 Service Unavailable", "out of memory");
        free(b);
    } else
        answer_and_close_as(p, "400 Bad Request", "text/plain; charset=utf-8", "", "invalid room name\n", is_head);
    return 1;
}

/* Length of the request head (through its empty line), 0 while incomplete. */
static size_t head_len(const char *b, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (b[i] != '\n') continue;
        if (b[i + 1] == '\n') return i + 2;
        if (i + 2 < n && b[i + 1] == '\r' && b[i + 2] == '\n') return i + 3;
    }
    return 0;
}

/* A WebSocket upgrade request (an "Upgrade: websocket" header line). */
static int is_upgrade(const char *b, size_t n)
{
    for (size_t i = 0; i + 9 < n; i++) {
        if ((i == 0 || b[i - 1] == '\n') && strncasecmp(b + i, "upgrade:", 8) == 0) {
            size_t j = i + 8;
            while (j < n && (b[j] == ' ' || b[j] == '\t')) j++;
            if (n - j >= 9 && strncasecmp(b + j, "websocket", 9) == 0) return 1;
        }
    }
    return 0;
}

static void pending_check(pending *p)
{
    ssize_t n = recv(p->fd, g_peek, (size_t)g_head_max + 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) { pending_drop(p, 1); return; }          /* EOF or reset before a request */
    size_t hl = head_len(g_peek, (size_t)n);
    if (hl && hl < (size_t)n && is_upgrade(g_peek, hl)) {
        /* frames before our 101: RFC 6455 4.1 says the client must wait.
         * lws would read them with the head and keep them where chatd's
         * frame reader never sees them: refuse instead of losing them */
        metric_inc(m_early);
        answer_and_close(p, "400 Bad Request", "data sent before the handshake completed");
        return;
    }
    if (hl && room_gate(p, g_peek, hl)) return;
    if (hl) {
        int fd = p->fd;
        pending_drop(p, 0);
        /* lws reads the head itself; on failure it closes the socket */
        if (!lws_adopt_socket_vhost(g_vh, fd))
            LOGW("listener", "lws did not adopt a new connection (fd %d)", fd);
        return;
    }
    if ((size_t)n > g_head_max) {
        metric_inc(m_big);
        /* a HEAD's answer is the GET's head alone (RFC 9110 9.3.2) */
        answer_and_close_as(p, "431 Request Header Fields Too Large", "text/plain; charset=utf-8", "",
                            "request header fields too large\n", n >= 5 && !memcmp(g_peek, "HEAD ", 5));
    }
}

static void on_hs_events(uv_poll_t *h, int status, int events)
{
    struct epoll_event ev[64];
    int n = epoll_wait(g_hs_ep, ev, 64, 0);
    for (int i = 0; i < n; i++) pending_check(ev[i].data.ptr);
}

static void on_hs_timer(uv_timer_t *t)
{
    uint64_t now = mono_ms();
    for (pending *p = g_pending, *next; p; p = next) {
        next = p->next;
        if (now >= p->deadline_ms) {
            metric_inc(m_timeout);
            /* the method as sent so far: a HEAD gets the head alone here too */
            ssize_t r = recv(p->fd, g_peek, 5, MSG_PEEK | MSG_DONTWAIT);
            answer_and_close_as(p, "408 Request Timeout", "text/plain; charset=utf-8", "",
                                "request head not complete in time\n",
                                r == 5 && !memcmp(g_peek, "HEAD ", 5));
        }
    }
}

static void pending_add(int fd)
{
    pending *p = calloc(1, sizeof *p);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET};
    ev.data.ptr = p;
    if (!p || epoll_ctl(g_hs_ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        free(p);
        close(fd);
        return;
    }
    p->fd = fd;
    p->deadline_ms = mono_ms() + g_head_timeout_ms;
    p->next = g_pending;
    if (g_pending) g_pending->prev = p;
    g_pending = p;
    if (!g_npending++) uv_timer_start(&g_hs_timer, on_hs_timer, 100, 100);
    /* the edge for data already there is reported on ADD; on_hs_events runs it */
}

/* ---- accept ------------------------------------------------------------ */

static void on_readable(uv_poll_t *h, int status, int events)
{
    lsock *l = h->data;
    /* a bounded batch per wake-up keeps the loop fair to live connections */
    for (int i = 0; i < 64 && l->polling; i++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK) return;
            if (e == EINTR || e == ECONNABORTED || e == EPROTO) continue;
            /* out of fds, or anything else that would repeat: never spin */
            exhausted(l, e);
            return;
        }
        if (l->shared) metric_inc(m_shared);
        tune(fd);
        pending_add(fd);
    }
}

int listener_init(uv_loop_t *loop, const listener_opts *o, char *err, size_t errlen)
{
    listener_metrics_init();
    g_loop = loop;
    g_backlog = o->backlog ? o->backlog : 511;
    g_pause_ms = o->pause_ms ? o->pause_ms : 250;
    g_head_timeout_ms = o->head_timeout_ms ? o->head_timeout_ms : 10000;
    g_head_max = o->head_max ? o->head_max : 16384;
    g_peek = malloc((size_t)g_head_max + 1);
    g_hs_ep = epoll_create1(EPOLL_CLOEXEC);
    if (!g_peek || g_hs_ep < 0 || uv_poll_init(loop, &g_hs_poll, g_hs_ep) < 0 ||
        uv_poll_start(&g_hs_poll, UV_READABLE, on_hs_events) < 0) {
        snprintf(err, errlen, "cannot set up the handshake watcher: %s", strerror(errno));
        return -1;
    }
    uv_timer_init(loop, &g_hs_timer);
    uv_timer_init(loop, &g_pause);
    g_open = 1;
    reserve_open();
    return 0;
}

int listener_add(const char *host_in, int port_n, int shared, char *err, size_t errlen)
{
    if (!g_open || g_nls >= MAX_LSOCKS) {
        snprintf(err, errlen, "listener: no room for another listening socket");
        return -1;
    }
    char host[128];
    snprintf(host, sizeof host, "%s", host_in ? host_in : "");
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = 0;
    }
    char port[16];
    snprintf(port, sizeof port, "%d", port_n);
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int gr = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (gr) {
        snprintf(err, errlen, "listen address %s: %s", host_in ? host_in : "", gai_strerror(gr));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        (shared && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, (int)g_backlog) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d%s: %s", host_in ? host_in : "", port_n,
                 shared ? " shared with the other workers" : "", strerror(errno));
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    lsock *l = &g_ls[g_nls];
    memset(l, 0, sizeof *l);
    if (uv_poll_init(g_loop, &l->poll, fd) < 0) {
        snprintf(err, errlen, "uv_poll_init on the listening socket failed");
        close(fd);
        return -1;
    }
    l->poll.data = l;
    l->fd = fd;
    l->shared = shared;
    static unsigned seen_shared;
    if (shared && metrics_register_due(&seen_shared))
        m_shared = metrics_counter("chat_shared_listener_accepts_total",
                                   "Connections accepted on the port shared by the workers (chatd --workers)", NULL);
    g_nls++;
    return 0;
}

void listener_start(struct lws_vhost *vh)
{
    g_vh = vh;
    g_started = 1;
    if (g_open && !g_paused) poll_all(1);
}

static void closed_cb(uv_handle_t *h) { (void)h; }

static void lsock_close(lsock *l)
{
    if (l->fd < 0) return;
    uv_close((uv_handle_t *)&l->poll, closed_cb);
    close(l->fd);
    l->fd = -1;
    l->polling = 0;
}

void listener_close_shared(void)
{
    for (int i = 0; i < g_nls; i++)
        if (g_ls[i].shared && g_ls[i].fd >= 0) {
            lsock_close(&g_ls[i]);
            LOGI("listener", "shared port closed: new connections go to the other workers");
        }
}

void listener_close(void)
{
    if (!g_open) return;
    g_open = 0;
    for (int i = 0; i < g_nls; i++) lsock_close(&g_ls[i]);
    uv_timer_stop(&g_pause);
    uv_close((uv_handle_t *)&g_pause, closed_cb);
    if (g_reserve >= 0) { close(g_reserve); g_reserve = -1; }
    while (g_pending) pending_drop(g_pending, 1);
    uv_timer_stop(&g_hs_timer);
    uv_close((uv_handle_t *)&g_hs_timer, closed_cb);
    uv_close((uv_handle_t *)&g_hs_poll, closed_cb);
    close(g_hs_ep);
    g_hs_ep = -1;
    free(g_peek);
    g_peek = NULL;
}
