/* apiload: closed-loop publish benchmark of chatd's two publish paths, with
 * the same driver so the figures compare:
 *   --mode api  POST /api/rooms/{room}/messages on keep-alive HTTP/1.1
 *               connections; latency = request written -> 200 read (the
 *               server answers after the durable commit);
 *   --mode ws   WebSocket `message` frames with an id; latency = frame
 *               written -> its `ack` read (also after the durable commit).
 * Each connection has one request in flight and sends the next as soon as
 * the answer is in (closed loop): --conns is the concurrency. Connection i
 * publishes into room <prefix>-<i % rooms>. One epoll loop, one process (pin
 * it to a core other than chatd's). Prints requests/s and latency
 * percentiles over the measured window (after --warmup), and a JSON file;
 * with --server-pid, chatd's CPU over that window (utime + stime from
 * /proc) and so its CPU time per message, the figure that stays meaningful
 * on a shared machine.
 *
 *   apiload --url 127.0.0.1:8080 --mode api --conns 16 --duration 20   (key: env CHAT_API_KEY)
 *   apiload --url 127.0.0.1:8080 --mode ws --conns 16 --duration 20 --secret S
 */
#define _GNU_SOURCE
#include "lt_hist.h"
#include "lt_token.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct {
    char host[64];
    int port, conns, rooms, body_bytes, ws;
    double duration, warmup;
    char secret[256], key[512], prefix[64], json[512];
    int server_pid;
} O = {.port = 8080, .conns = 16, .rooms = 0, .body_bytes = 64, .duration = 20, .warmup = 3,
       .prefix = "apiload"};

enum { ST_CONNECTING, ST_UPGRADING, ST_READY, ST_WAITING, ST_DEAD };

typedef struct conn {
    int fd, st, idx;
    uint64_t sent_ns, n;
    char room[96];
    char in[65536];
    size_t inlen;
    char out[8192];
    size_t outlen, outoff;
} conn;

static struct lt_hist H;
static uint64_t g_ok, g_err, g_status[600], g_dead;
static int g_measuring, g_ep;
static char g_body[4096];

/* utime + stime of pid in seconds, -1 when unknown */
static double proc_cpu(int pid)
{
    if (pid <= 0) return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void die(const char *m)
{
    fprintf(stderr, "apiload: %s\n", m);
    exit(2);
}

static void arm(conn *c, uint32_t ev)
{
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &e) < 0) die("epoll_ctl");
}

static void kill_conn(conn *c, const char *why)
{
    if (c->st == ST_DEAD) return;
    fprintf(stderr, "apiload: connection %d: %s\n", c->idx, why);
    c->st = ST_DEAD;
    g_dead++;
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

/* writes what is queued; EPOLLOUT while some is left */
static void flush_out(conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) { arm(c, EPOLLIN | EPOLLOUT); return; }
            kill_conn(c, strerror(errno));
            return;
        }
        c->outoff += (size_t)w;
    }
    c->outlen = c->outoff = 0;
    arm(c, EPOLLIN);
}

/* the next message of c */
static void send_next(conn *c)
{
    char id[48];
    snprintf(id, sizeof id, "c%d-%llu", c->idx, (unsigned long long)++c->n);
    if (!O.ws) {
        char body[4400];
        int bl = snprintf(body, sizeof body, "{\"id\":\"%s\",\"user\":\"loadbot\",\"name\":\"Load bot\",\"body\":\"%s\"}",
                          id, g_body);
        c->outlen = (size_t)snprintf(c->out, sizeof c->out,
                                     "POST /api/rooms/%s/messages HTTP/1.1\r\nHost: %s\r\n"
                                     "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                                     "Content-Length: %d\r\n\r\n%s",
                                     c->room, O.host, O.key, bl, body);
    } else {
        char pl[4400];
        int n = snprintf(pl, sizeof pl, "{\"type\":\"message\",\"id\":\"%s\",\"body\":\"%s\"}", id, g_body);
        unsigned char *o = (unsigned char *)c->out;
        size_t h = 0;
        o[h++] = 0x81;
        if (n < 126) o[h++] = (unsigned char)(0x80 | n);
        else { o[h++] = 0x80 | 126; o[h++] = (unsigned char)(n >> 8); o[h++] = (unsigned char)n; }
        unsigned char mask[4] = {0x12, 0x34, 0x56, (unsigned char)c->n};
        memcpy(o + h, mask, 4);
        h += 4;
        for (int i = 0; i < n; i++) o[h + (size_t)i] = (unsigned char)pl[i] ^ mask[i & 3];
        c->outlen = h + (size_t)n;
    }
    c->outoff = 0;
    c->st = ST_WAITING;
    c->sent_ns = mono_ns();
    flush_out(c);
}

static void done_one(conn *c, int ok, int status)
{
    if (g_measuring) {
        if (ok) {
            g_ok++;
            lt_hist_add(&H, mono_ns() - c->sent_ns);
        } else {
            g_err++;
        }
        if (status > 0 && status < 600) g_status[status]++;
    }
    send_next(c);
}

static void start_ws_upgrade(conn *c)
{
    char tok[1024], sub[32];
    const char *err = NULL;
    snprintf(sub, sizeof sub, "load%d", c->idx);
    if (lt_jwt_mint(O.secret, sub, sub, (long)time(NULL) + 86400, tok, sizeof tok, &err) < 0) die(err);
    c->outlen = (size_t)snprintf(c->out, sizeof c->out,
                                 "GET /ws/%s?token=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                 "Sec-WebSocket-Version: 13\r\n\r\n",
                                 c->room, tok, O.host);
    c->outoff = 0;
    c->st = ST_UPGRADING;
    flush_out(c);
}

/* HTTP answers: status + content-length body; returns 1 per answer consumed */
static void on_http(conn *c)
{
    for (;;) {
        char *e = memmem(c->in, c->inlen, "\r\n\r\n", 4);
        if (!e) return;
        size_t hl = (size_t)(e - c->in) + 4;
        int status = atoi(c->in + 9);
        const char *cl = memmem(c->in, hl, "content-length:", 15);
        size_t blen = cl ? (size_t)atol(cl + 15) : 0;
        if (c->inlen < hl + blen) return;
        int closes = memmem(c->in, hl, "connection: close", 17) != NULL;
        memmove(c->in, c->in + hl + blen, c->inlen - hl - blen);
        c->inlen -= hl + blen;
        if (c->st != ST_WAITING) { kill_conn(c, "an answer nobody asked for"); return; }
        if (closes) { kill_conn(c, "server closed the keep-alive connection"); return; }
        done_one(c, status == 200, status);
    }
}

/* WebSocket: the 101, then frames; an ack ends the wait */
static void on_ws(conn *c)
{
    if (c->st == ST_UPGRADING) {
        char *e = memmem(c->in, c->inlen, "\r\n\r\n", 4);
        if (!e) return;
        if (strncmp(c->in, "HTTP/1.1 101", 12) != 0) { kill_conn(c, "upgrade refused"); return; }
        size_t hl = (size_t)(e - c->in) + 4;
        memmove(c->in, c->in + hl, c->inlen - hl);
        c->inlen -= hl;
        c->st = ST_READY;
    }
    for (;;) {
        if (c->inlen < 2) return;
        unsigned char *p = (unsigned char *)c->in;
        int op = p[0] & 0x0f;
        size_t len = p[1] & 0x7f, h = 2;
        if (len == 126) { if (c->inlen < 4) return; len = (size_t)p[2] << 8 | p[3]; h = 4; }
        else if (len == 127) {
            if (c->inlen < 10) return;
            len = 0;
            for (int i = 2; i < 10; i++) len = len << 8 | p[i];
            h = 10;
        }
        if (len > sizeof c->in - 16) { kill_conn(c, "frame too large for the driver"); return; }
        if (c->inlen < h + len) return;
        int is_ack = op == 1 && len > 14 && memmem(p + h, len, "\"type\":\"ack\"", 12);
        int is_err = op == 1 && memmem(p + h, len, "\"type\":\"error\"", 14);
        int is_welcome = op == 1 && memmem(p + h, len, "\"type\":\"presence_state\"", 23);
        memmove(c->in, c->in + h + len, c->inlen - h - len);
        c->inlen -= h + len;
        if (op == 8) { kill_conn(c, "closed by the server"); return; }
        if (c->st == ST_READY && is_welcome) { send_next(c); continue; }
        if (c->st == ST_WAITING && (is_ack || is_err)) done_one(c, is_ack, is_ack ? 200 : 503);
    }
}

static void on_event(conn *c, uint32_t ev)
{
    if (c->st == ST_DEAD) return;
    if (c->st == ST_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { kill_conn(c, strerror(err)); return; }
        if (O.ws) start_ws_upgrade(c);
        else send_next(c);
        return;
    }
    if (ev & EPOLLOUT) flush_out(c);
    if (c->st == ST_DEAD || !(ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    for (;;) {
        ssize_t r = recv(c->fd, c->in + c->inlen, sizeof c->in - c->inlen, 0);
        if (r < 0 && errno == EAGAIN) break;
        if (r <= 0) { kill_conn(c, r == 0 ? "EOF" : strerror(errno)); return; }
        c->inlen += (size_t)r;
        if (O.ws) on_ws(c); else on_http(c);
        if (c->st == ST_DEAD) return;
        if (c->inlen == sizeof c->in) { kill_conn(c, "input buffer full"); return; }
    }
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"url", 1, 0, 'u'}, {"mode", 1, 0, 'm'}, {"conns", 1, 0, 'c'}, {"rooms", 1, 0, 'r'},
        {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'w'}, {"secret", 1, 0, 's'},
        {"body-bytes", 1, 0, 'b'}, {"room-prefix", 1, 0, 'x'}, {"json", 1, 0, 'j'},
        {"server-pid", 1, 0, 'S'}, {0, 0, 0, 0}};
    int o;
    const char *mode = "api";
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'u': {
            const char *colon = strrchr(optarg, ':');
            if (!colon) die("--url HOST:PORT");
            snprintf(O.host, sizeof O.host, "%.*s", (int)(colon - optarg), optarg);
            O.port = atoi(colon + 1);
            break;
        }
        case 'm': mode = optarg; break;
        case 'c': O.conns = atoi(optarg); break;
        case 'r': O.rooms = atoi(optarg); break;
        case 'd': O.duration = atof(optarg); break;
        case 'w': O.warmup = atof(optarg); break;
        case 's': snprintf(O.secret, sizeof O.secret, "%s", optarg); break;
        case 'b': O.body_bytes = atoi(optarg); break;
        case 'x': snprintf(O.prefix, sizeof O.prefix, "%s", optarg); break;
        case 'j': snprintf(O.json, sizeof O.json, "%s", optarg); break;
        case 'S': O.server_pid = atoi(optarg); break;
        default: die("see the header of apiload.c for the options");
        }
    }
    if (!O.host[0]) die("--url HOST:PORT");
    O.ws = strcmp(mode, "ws") == 0;
    if (!O.ws && strcmp(mode, "api") != 0) die("--mode api|ws");
    if (O.ws && !O.secret[0]) die("--mode ws needs --secret");
    if (!O.ws) {
        const char *k = getenv("CHAT_API_KEY");
        if (!k || !*k) die("--mode api needs CHAT_API_KEY in the environment");
        snprintf(O.key, sizeof O.key, "%s", k);
    }
    if (O.conns < 1) O.conns = 1;
    if (O.rooms < 1) O.rooms = O.conns;
    if (O.body_bytes < 1 || O.body_bytes > 4000) die("--body-bytes 1..4000");
    memset(g_body, 'x', (size_t)O.body_bytes);
    g_ep = epoll_create1(0);
    conn *cs = calloc((size_t)O.conns, sizeof *cs);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)O.port)};
    if (inet_pton(AF_INET, O.host, &sa.sin_addr) != 1) die("--url: an IPv4 address");
    for (int i = 0; i < O.conns; i++) {
        conn *c = &cs[i];
        c->idx = i;
        snprintf(c->room, sizeof c->room, "%s-%s-%d", O.prefix, mode, i % O.rooms);
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) die("connect");
        c->st = ST_CONNECTING;
        struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
        epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &e);
    }
    uint64_t t0 = mono_ns(), tw = t0 + (uint64_t)(O.warmup * 1e9), te = tw + (uint64_t)(O.duration * 1e9);
    uint64_t tm0 = 0, tm1 = 0;
    double cpu0 = -1, cpu1 = -1;
    struct epoll_event ev[256];
    for (;;) {
        uint64_t now = mono_ns();
        if (!g_measuring && !tm0 && now >= tw) { g_measuring = 1; tm0 = now; cpu0 = proc_cpu(O.server_pid); }
        if (now >= te) { tm1 = now; cpu1 = proc_cpu(O.server_pid); break; }
        if (g_dead == (uint64_t)O.conns) die("every connection died");
        int n = epoll_wait(g_ep, ev, 256, 50);
        for (int i = 0; i < n; i++) on_event(ev[i].data.ptr, ev[i].events);
    }
    double secs = (double)(tm1 - tm0) / 1e9;
    double rps = (double)g_ok / secs;
    double q[5] = {0.5, 0.9, 0.99, 0.999, 1.0};
    double ms[5];
    for (int i = 0; i < 5; i++) ms[i] = (i < 4 ? (double)lt_hist_quantile(&H, q[i]) : (double)H.max) / 1e6;
    printf("%s: %d connections (one in flight each), %d rooms, body %d bytes, %.1f s measured\n",
           O.ws ? "websocket message -> ack" : "POST /api/rooms/{room}/messages -> 200", O.conns,
           O.rooms, O.body_bytes, secs);
    printf("  %llu ok (%.0f/s), %llu errors, %llu connections died\n", (unsigned long long)g_ok, rps,
           (unsigned long long)g_err, (unsigned long long)g_dead);
    printf("  latency ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n", ms[0], ms[1], ms[2],
           ms[3], ms[4]);
    double cpu_pct = -1, cpu_us = -1;
    if (cpu0 >= 0 && cpu1 >= cpu0) {
        cpu_pct = 100.0 * (cpu1 - cpu0) / secs;
        cpu_us = g_ok ? 1e6 * (cpu1 - cpu0) / (double)g_ok : -1;
        printf("  chatd CPU: %.0f%% of a core, %.1f us per message\n", cpu_pct, cpu_us);
    }
    for (int s = 0; s < 600; s++)
        if (g_status[s] && s != 200) printf("  status %d: %llu\n", s, (unsigned long long)g_status[s]);
    if (O.json[0]) {
        FILE *f = fopen(O.json, "w");
        if (f) {
            fprintf(f, "{\"mode\": \"%s\", \"conns\": %d, \"rooms\": %d, \"body_bytes\": %d, \"seconds\": %.2f, "
                       "\"ok\": %llu, \"errors\": %llu, \"dead\": %llu, \"per_second\": %.1f, "
                       "\"chatd_cpu_pct\": %.1f, \"chatd_cpu_us_per_msg\": %.2f, "
                       "\"latency_ms\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p999\": %.3f, \"max\": %.3f}}\n",
                    O.ws ? "ws" : "api", O.conns, O.rooms, O.body_bytes, secs, (unsigned long long)g_ok,
                    (unsigned long long)g_err, (unsigned long long)g_dead, rps, cpu_pct, cpu_us, ms[0], ms[1],
                    ms[2], ms[3], ms[4]);
            fclose(f);
        }
    }
    return g_err || g_dead ? 1 : 0;
}
