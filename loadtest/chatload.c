/* chatload: load generator for chatd (protocol.md). Owns the connection
 * life cycle of many RFC 6455 clients on one epoll loop per worker process,
 * the publish / heartbeat / churn / history-request schedules, per-receiver
 * lag and seq-contiguity checks, and the merge of worker results (pipes) into
 * one summary, a JSON file and a per-second timeline.
 *
 * Process layout: the parent forks P workers, each owning connections
 * i with i % P == worker. Workers report READY after their ramp, wait for GO,
 * run the steady phase, drain, and send a FINAL record. The parent samples the
 * server's /proc at begin / GO / end of steady and prints the summary. */
#define _GNU_SOURCE
#include "lt_hist.h"
#include "lt_token.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* ------------------------------------------------------------ options */

struct opts {
    char host[64];
    int port;
    int conns, rooms, publishers;
    double rate, duration, ramp, churn, http_rate, drain, ramp_timeout, settle;
    int heartbeat_ms, src_addrs, procs, slow, body_bytes, max_inflight, slow_rcvbuf;
    int handshake_timeout_ms;
    char secret[256], room_prefix[64], http_path[256];
    char json[512], timeline[512];
    int server_pids[8], n_server_pids;
    int quiet;
    char tags[4][32];           /* --tag-count: body prefixes to count */
    int ntags;
    int nchan;                  /* --proto nchan: Nchan pub/sub WebSocket (no welcome/seq/ack) */
    char ws_path[256];          /* --ws-path: upgrade path template, {room} {token} */
    char hook[512];             /* --hook CMD: run "CMD go" / "CMD end" around the steady phase */
    struct { char name[24]; int pid; } pgrp[8]; /* --proc NAME=PID: CPU/RSS of PID + descendants */
    int n_pgrp;
};
static struct opts O;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_self(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ------------------------------------------------------------ results */

#define N_ERRS 8
struct stats {
    uint64_t attempted, opened, welcomed, failed_connect, failed_timeout, failed_handshake,
        failed_http, failed_local;
    uint64_t upgrade_status[600];
    uint64_t closed_by_server, eof_no_close, resets;
    uint64_t tag_counts[4], tag_none, tag_multi; /* summed with the prefix above */
    uint32_t close_codes[5000];
    uint64_t deliveries, deliveries_steady, foreign, losses, dups, reorders;
    uint64_t acks, errors, other_frames, pings;
    struct { char code[32]; uint64_t n; } errs[N_ERRS];
    uint64_t hb_sent, hb_acks, msgs_sent, msgs_skipped, bytes_in, bytes_out;
    uint64_t churn_closes, slow_backlog_frames, slow_closed;
    uint64_t http_sent, http_done, http_fail, http_status[600];
    uint64_t open_at_go, open_at_end;
    double cpu_steady, cpu_total, runq_wait_steady;
    struct lt_hist lag, connect, http, ack;
};

struct secrow {
    uint32_t conns_open;
    uint64_t deliveries, sent;
    struct lt_hist lag;
};

enum { REC_READY = 1, REC_SEC, REC_FINAL };
struct rec_hdr {
    uint32_t kind, worker, sec, size;
};

/* ------------------------------------------------------------ buffers */

struct buf {
    char *p;
    uint32_t len, cap;
};

static int buf_append(struct buf *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        size_t nc = b->cap ? b->cap : 512;
        while (nc < b->len + n)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np)
            return -1;
        b->p = np;
        b->cap = (uint32_t)nc;
    }
    memcpy(b->p + b->len, d, n);
    b->len += (uint32_t)n;
    return 0;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------ connections */

/* contiguity of one sequence: highest seen, and which of the 64 below it came */
struct seqwin {
    int64_t last;
    uint64_t bits;              /* bit k: last-1-k was received */
    uint8_t have;
};

enum cstate { C_IDLE, C_CONNECTING, C_HANDSHAKE, C_OPEN, C_DONE };
enum ckind { K_WS, K_HTTP };

struct conn {
    int fd;
    uint8_t state, kind, slow, publisher, welcomed, muted, in_frag;
    uint32_t idx, room;
    struct seqwin sw;           /* the room's seq (chatd) */
    struct seqwin *pw;          /* --proto nchan: one window per publisher of the room */
    uint32_t pub_n;             /* messages this connection published (the body's counter) */
    uint32_t ack_k[8];          /* send times of the last 8 messages (ack latency): counter, */
    uint64_t ack_t[8];          /* mono ns (indexed by counter % 8) */
    uint64_t t_start;
    uint32_t frag_op;
    char key[32];
    struct buf in, out, frag;
};

/* worker state */
static int W_id, W_up = -1, W_down = -1, W_ep = -1;
static struct conn *W_c;        /* local connections */
static int W_n;                 /* local count */
static struct conn **W_pubs;
static int W_npubs;
static struct stats S;
static struct secrow R;
static uint64_t T_begin;
static unsigned long RUN_ID;    /* makes client message ids unique across runs (idempotent publish) */
static uint32_t W_pub_counter;
static unsigned char W_scratch[65536];
static uint64_t W_rng = 88172645463325252ull;
static int W_inflight, W_open_now;
static enum { P_RAMP, P_WAIT, P_STEADY, P_DRAIN, P_END } W_phase;

static uint64_t rnd(void)
{
    W_rng ^= W_rng << 13;
    W_rng ^= W_rng >> 7;
    W_rng ^= W_rng << 17;
    return W_rng;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            die("pipe write");
        }
        c += w;
        n -= (size_t)w;
    }
}

static int read_all(int fd, void *p, size_t n)
{
    char *c = p;
    while (n) {
        ssize_t r = read(fd, c, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

static void send_rec(uint32_t kind, uint32_t sec, const void *p, uint32_t size)
{
    struct rec_hdr h = {kind, (uint32_t)W_id, sec, size};
    write_all(W_up, &h, sizeof h);
    if (size)
        write_all(W_up, p, size);
}

static void ep_set(struct conn *c, uint32_t ev, int op)
{
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(W_ep, op, c->fd, &e) < 0 && op != EPOLL_CTL_DEL)
        die("epoll_ctl");
}

static void conn_events(struct conn *c)
{
    uint32_t ev = 0;
    if (!c->muted)
        ev |= EPOLLIN;
    if (c->out.len || c->state == C_CONNECTING)
        ev |= EPOLLOUT;
    ep_set(c, ev, EPOLL_CTL_MOD);
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(W_ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    if (c->state == C_CONNECTING || c->state == C_HANDSHAKE)
        W_inflight--;
    if (c->state == C_OPEN)
        W_open_now--;
    c->fd = -1;
    c->state = C_DONE;
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->frag);
}

/* queue bytes and try to write them now */
static void conn_write(struct conn *c, const void *d, size_t n)
{
    if (c->fd < 0)
        return;
    if (c->out.len == 0) {
        ssize_t w = send(c->fd, d, n, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return; /* the read side will see the error */
        if (w < 0)
            w = 0;
        S.bytes_out += (uint64_t)w;
        if ((size_t)w == n)
            return;
        buf_append(&c->out, (const char *)d + w, n - (size_t)w);
        conn_events(c);
        return;
    }
    buf_append(&c->out, d, n);
}

static void conn_flush(struct conn *c)
{
    while (c->out.len) {
        ssize_t w = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            return;
        }
        S.bytes_out += (uint64_t)w;
        memmove(c->out.p, c->out.p + w, c->out.len - (size_t)w);
        c->out.len -= (uint32_t)w;
    }
    conn_events(c);
}

/* masked client frame */
static void ws_send(struct conn *c, int op, const char *p, size_t n)
{
    unsigned char f[16 + 2048];
    unsigned char *h = f, *dyn = NULL;
    size_t hl;
    if (n + 14 > sizeof f) {
        dyn = malloc(n + 14);
        if (!dyn)
            return;
        h = dyn;
    }
    h[0] = (unsigned char)(0x80 | op);
    if (n < 126) {
        h[1] = (unsigned char)(0x80 | n);
        hl = 2;
    } else if (n < 65536) {
        h[1] = 0x80 | 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    uint32_t m = (uint32_t)rnd();
    unsigned char mk[4] = {(unsigned char)m, (unsigned char)(m >> 8), (unsigned char)(m >> 16),
                           (unsigned char)(m >> 24)};
    memcpy(h + hl, mk, 4);
    hl += 4;
    for (size_t i = 0; i < n; i++)
        h[hl + i] = (unsigned char)p[i] ^ mk[i & 3];
    conn_write(c, h, hl + n);
    free(dyn);
}

static void record_err(const char *code, size_t n)
{
    S.errors++;
    if (n >= sizeof S.errs[0].code)
        n = sizeof S.errs[0].code - 1;
    for (int i = 0; i < N_ERRS; i++) {
        if (S.errs[i].n == 0) {
            memcpy(S.errs[i].code, code, n);
            S.errs[i].code[n] = 0;
            S.errs[i].n = 1;
            return;
        }
        if (strlen(S.errs[i].code) == n && memcmp(S.errs[i].code, code, n) == 0) {
            S.errs[i].n++;
            return;
        }
    }
}

/* naive JSON field lookup (our frames are flat; bodies carry no quotes) */
static const char *jfind(const char *p, size_t n, const char *key, const char **end)
{
    char pat[40];
    int kl = snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *e = p + n, *s = memmem(p, n, pat, (size_t)kl);
    if (!s)
        return NULL;
    s += kl;
    while (s < e && (*s == ' ' || *s == ':' || *s == '\t'))
        s++;
    if (s >= e)
        return NULL;
    if (*s == '"') {
        const char *q = memchr(s + 1, '"', (size_t)(e - s - 1));
        if (!q)
            return NULL;
        *end = q;
        return s + 1;
    }
    const char *q = s;
    while (q < e && *q != ',' && *q != '}')
        q++;
    *end = q;
    return s;
}

static int64_t jnum(const char *s, const char *e)
{
    int64_t v = 0;
    int neg = 0;
    if (s < e && *s == '-') {
        neg = 1;
        s++;
    }
    while (s < e && *s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return neg ? -v : v;
}

static int jis(const char *s, const char *e, const char *lit)
{
    size_t l = strlen(lit);
    return (size_t)(e - s) == l && memcmp(s, lit, l) == 0;
}

static void seq_check(struct seqwin *w, int64_t seq)
{
    if (!w->have) {
        w->have = 1;
        w->last = seq;
        w->bits = ~0ull;
        return;
    }
    if (seq > w->last) {
        uint64_t shift = (uint64_t)(seq - w->last);
        S.losses += shift - 1;
        if (shift > 64)
            w->bits = 0;
        else
            w->bits = (shift == 64 ? 0 : w->bits << shift) | 1ull << (shift - 1);
        w->last = seq;
        return;
    }
    if (seq == w->last) {
        S.dups++;
        return;
    }
    int64_t k = w->last - 1 - seq;
    if (k < 64) {
        if (w->bits & (1ull << k)) {
            S.dups++;
        } else {
            w->bits |= 1ull << k;
            S.reorders++;
            if (S.losses)
                S.losses--; /* the gap it left was filled late */
        }
    } else {
        S.reorders++;
    }
}

/* --proto nchan has no seq: every publisher numbers its own messages 1, 2, ...
 * (the body's counter), and each receiver checks each publisher of its room.
 * Publisher p is connection p < publishers in room p % rooms, window p / rooms. */
static void pub_seq_check(struct conn *c, unsigned pub, int64_t n)
{
    uint32_t per_room = (uint32_t)((O.publishers + O.rooms - 1) / O.rooms);
    if ((int)pub >= O.publishers || pub % (uint32_t)O.rooms != c->room) {
        S.foreign++;
        return;
    }
    if (!c->pw) {
        c->pw = calloc(per_room, sizeof *c->pw);
        if (!c->pw)
            return;
        for (uint32_t i = 0; i < per_room; i++) /* nothing published before: 1 comes first */
            c->pw[i] = (struct seqwin){.last = 0, .bits = ~0ull, .have = 1};
    }
    seq_check(&c->pw[pub / (uint32_t)O.rooms], n);
}

/* --tag-count: which prefix the body carries (none / exactly one / a tag
 * again further on); returns the body after the prefix */
static const char *count_tags(const char *bv, const char *be)
{
    int hit = -1;
    for (int i = 0; i < O.ntags && hit < 0; i++) {
        size_t l = strlen(O.tags[i]);
        if ((size_t)(be - bv) >= l && memcmp(bv, O.tags[i], l) == 0)
            hit = i;
    }
    if (hit < 0) {
        S.tag_none++;
        return bv;
    }
    bv += strlen(O.tags[hit]);
    for (int i = 0; i < O.ntags; i++)
        if (memmem(bv, (size_t)(be - bv), O.tags[i], strlen(O.tags[i]))) {
            S.tag_multi++;
            return bv;
        }
    S.tag_counts[hit]++;
    return bv;
}

static void on_text(struct conn *c, const char *p, size_t n, uint64_t now)
{
    const char *e, *t = jfind(p, n, "type", &e);
    if (!t) {
        S.other_frames++;
        return;
    }
    if (jis(t, e, "message")) {
        if (c->muted) {
            S.slow_backlog_frames++;
            return;
        }
        S.deliveries++;
        R.deliveries++;
        if (W_phase == P_STEADY)
            S.deliveries_steady++;
        if (!O.nchan) {
            const char *se, *sv = jfind(p, n, "seq", &se);
            if (sv)
                seq_check(&c->sw, jnum(sv, se));
        }
        const char *be, *bv = jfind(p, n, "body", &be);
        if (bv && O.ntags)
            bv = count_tags(bv, be);
        unsigned pub;
        unsigned long long k, ts;
        if (bv && be - bv > 4 && memcmp(bv, "lt1 ", 4) == 0) {
            char tmp[96];
            size_t l = (size_t)(be - bv) < sizeof tmp - 1 ? (size_t)(be - bv) : sizeof tmp - 1;
            memcpy(tmp, bv, l);
            tmp[l] = 0;
            if (sscanf(tmp, "lt1 %u %llu %llu", &pub, &k, &ts) == 3 && ts <= now) {
                if (O.nchan)
                    pub_seq_check(c, pub, (int64_t)k);
                lt_hist_add(&S.lag, now - ts);
                lt_hist_add(&R.lag, now - ts);
                return;
            }
        }
        S.foreign++;
    } else if (jis(t, e, "welcome")) {
        const char *se, *sv = jfind(p, n, "seq", &se);
        if (sv) {
            c->sw.have = 1;
            c->sw.last = jnum(sv, se);
            c->sw.bits = ~0ull;
        }
        if (!c->welcomed) {
            c->welcomed = 1;
            S.welcomed++;
            lt_hist_add(&S.connect, now - c->t_start);
        }
        if (c->slow) {
            c->muted = 1;
            conn_events(c);
        }
    } else if (jis(t, e, "heartbeat_ack")) {
        S.hb_acks++;
    } else if (jis(t, e, "ack")) {
        S.acks++;
        /* the id is "<run>-<conn>-<counter>": send -> ack latency */
        const char *ie, *iv = jfind(p, n, "id", &ie);
        const char *dash = NULL;
        for (const char *q = iv; q && q < ie; q++)
            if (*q == '-')
                dash = q;
        if (dash) {
            uint32_t k = (uint32_t)strtoul(dash + 1, NULL, 10);
            if (k && c->ack_k[k % 8] == k && c->ack_t[k % 8] <= now) {
                lt_hist_add(&S.ack, now - c->ack_t[k % 8]);
                c->ack_k[k % 8] = 0;
            }
        }
    } else if (jis(t, e, "error")) {
        const char *ce, *cv = jfind(p, n, "code", &ce);
        if (cv)
            record_err(cv, (size_t)(ce - cv));
        else
            record_err("?", 1);
    } else {
        S.other_frames++;
    }
}

/* returns 1 when the connection got closed */
static int on_frame(struct conn *c, int fin, int op, char *p, size_t n, uint64_t now)
{
    switch (op) {
    case 0x1:
    case 0x2:
        if (fin) {
            on_text(c, p, n, now);
        } else {
            c->in_frag = 1;
            c->frag.len = 0;
            buf_append(&c->frag, p, n);
        }
        return 0;
    case 0x0:
        if (!c->in_frag)
            return 0;
        buf_append(&c->frag, p, n);
        if (fin) {
            c->in_frag = 0;
            on_text(c, c->frag.p, c->frag.len, now);
            c->frag.len = 0;
        }
        return 0;
    case 0x8: {
        int code = n >= 2 ? ((unsigned char)p[0] << 8 | (unsigned char)p[1]) : 1005;
        if (code > 0 && code < 5000)
            S.close_codes[code]++;
        S.closed_by_server++;
        if (c->slow)
            S.slow_closed++;
        char echo[2] = {(char)(code >> 8), (char)code};
        ws_send(c, 0x8, echo, n >= 2 ? 2 : 0);
        conn_close(c);
        return 1;
    }
    case 0x9:
        S.pings++;
        ws_send(c, 0xA, p, n);
        return 0;
    case 0xA: /* --proto nchan: the answer to our heartbeat ping */
        S.hb_acks++;
        return 0;
    default:
        return 0;
    }
}

/* parse as many complete frames as p holds; returns bytes used or -1 when closed */
static long parse_frames(struct conn *c, char *p, size_t len, uint64_t now)
{
    size_t off = 0;
    while (len - off >= 2) {
        unsigned char b0 = (unsigned char)p[off], b1 = (unsigned char)p[off + 1];
        uint64_t pl = b1 & 0x7f;
        size_t hl = 2;
        if (pl == 126) {
            if (len - off < 4)
                break;
            pl = (uint64_t)(unsigned char)p[off + 2] << 8 | (unsigned char)p[off + 3];
            hl = 4;
        } else if (pl == 127) {
            if (len - off < 10)
                break;
            pl = 0;
            for (int i = 0; i < 8; i++)
                pl = pl << 8 | (unsigned char)p[off + 2 + i];
            hl = 10;
        }
        int masked = b1 & 0x80;
        if (masked)
            hl += 4;
        if (pl > (64u << 20)) {
            S.close_codes[1009]++;
            conn_close(c);
            return -1;
        }
        if (len - off < hl + pl)
            break;
        char *pay = p + off + hl;
        if (masked) {
            unsigned char *mk = (unsigned char *)p + off + hl - 4;
            for (uint64_t i = 0; i < pl; i++)
                pay[i] ^= (char)mk[i & 3];
        }
        if (on_frame(c, b0 & 0x80, b0 & 0x0f, pay, (size_t)pl, now))
            return -1;
        off += hl + (size_t)pl;
    }
    return (long)off;
}

static const char *conn_room(uint32_t room, char *out, size_t n)
{
    snprintf(out, n, "%s%u", O.room_prefix, room);
    return out;
}

static struct sockaddr_in SRV[8];
static int N_SRV = 1;

static int conn_socket(struct conn *c, uint32_t idx)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        S.failed_local++;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (c && c->slow && O.slow_rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &O.slow_rcvbuf, sizeof O.slow_rcvbuf);
    if (O.src_addrs > 0) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        a.sin_addr.s_addr = htonl(0x7f000002u + idx % (uint32_t)O.src_addrs);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            close(fd);
            S.failed_local++;
            return -1;
        }
    }
    /* members of one room are spread over the nodes: node = (idx / rooms) % nodes */
    const struct sockaddr_in *srv = &SRV[(idx / (uint32_t)O.rooms) % (uint32_t)N_SRV];
    if (connect(fd, (const struct sockaddr *)srv, sizeof *srv) < 0 && errno != EINPROGRESS) {
        close(fd);
        S.failed_connect++;
        return -1;
    }
    return fd;
}

static void conn_start(struct conn *c)
{
    S.attempted++;
    c->t_start = mono_ns();
    c->welcomed = c->sw.have = c->muted = c->in_frag = 0;
    free(c->pw);
    c->pw = NULL;
    c->fd = conn_socket(c, c->idx);
    if (c->fd < 0) {
        c->state = C_DONE;
        return;
    }
    c->state = C_CONNECTING;
    W_inflight++;
    ep_set(c, EPOLLOUT | EPOLLIN, EPOLL_CTL_ADD);
}

static void conn_send_upgrade(struct conn *c)
{
    unsigned char kb[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = rnd();
        memcpy(kb + i, &r, 8);
    }
    lt_b64(kb, 16, c->key, 0);
    char sub[32], name[48], tok[512] = "", room[96], path[768], req[1024];
    if (strstr(O.ws_path, "{token}")) {
        snprintf(sub, sizeof sub, "lt%u", c->idx);
        snprintf(name, sizeof name, "load %u", c->idx);
        const char *err;
        if (lt_jwt_mint(O.secret, sub, name, (long)time(NULL) + 86400, tok, sizeof tok, &err) < 0) {
            fprintf(stderr, "chatload: %s\n", err);
            exit(2);
        }
    }
    conn_room(c->room, room, sizeof room);
    /* --ws-path: substitute {room} and {token} */
    size_t o = 0;
    for (const char *t = O.ws_path; *t && o < sizeof path - 1;) {
        const char *v = NULL;
        if (strncmp(t, "{room}", 6) == 0) {
            v = room;
            t += 6;
        } else if (strncmp(t, "{token}", 7) == 0) {
            v = tok;
            t += 7;
        }
        if (v)
            o += (size_t)snprintf(path + o, sizeof path - o, "%s", v);
        else
            path[o++] = *t++;
        if (o >= sizeof path)
            o = sizeof path - 1;
    }
    path[o] = 0;
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, O.host, O.port, c->key);
    c->state = C_HANDSHAKE;
    conn_write(c, req, (size_t)n);
    conn_events(c);
}

static void conn_fail(struct conn *c, uint64_t *counter)
{
    (*counter)++;
    conn_close(c);
}

/* handshake response; returns bytes of p consumed by the header, 0 if incomplete, -1 closed */
static long on_handshake(struct conn *c, const char *p, size_t n)
{
    const char *e = memmem(p, n, "\r\n\r\n", 4);
    if (!e)
        return n > 16384 ? (conn_fail(c, &S.failed_handshake), -1) : 0;
    int status = 0;
    if (sscanf(p, "HTTP/1.%*d %d", &status) != 1) {
        conn_fail(c, &S.failed_handshake);
        return -1;
    }
    if (status != 101) {
        if (status > 0 && status < 600)
            S.upgrade_status[status]++;
        conn_fail(c, &S.failed_http);
        return -1;
    }
    char want[40];
    lt_ws_accept(c->key, want);
    int ok = 0;
    for (const char *l = p; l < e;) {
        const char *nl = memmem(l, (size_t)(e - l) + 2, "\r\n", 2);
        if (!nl)
            break;
        if ((size_t)(nl - l) > 21 && strncasecmp(l, "Sec-WebSocket-Accept:", 21) == 0) {
            const char *v = l + 21;
            while (*v == ' ')
                v++;
            ok = (size_t)(nl - v) == strlen(want) && memcmp(v, want, strlen(want)) == 0;
        }
        l = nl + 2;
    }
    if (!ok) {
        conn_fail(c, &S.failed_handshake);
        return -1;
    }
    c->state = C_OPEN;
    W_inflight--;
    W_open_now++;
    S.opened++;
    if (O.nchan) { /* no welcome frame: the upgrade is the subscription */
        c->welcomed = 1;
        S.welcomed++;
        lt_hist_add(&S.connect, mono_ns() - c->t_start);
    }
    return (long)(e + 4 - p);
}

static void on_readable(struct conn *c, uint64_t now)
{
    ssize_t r = recv(c->fd, W_scratch, sizeof W_scratch, 0);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        if (c->state == C_OPEN) {
            S.resets++;
            S.close_codes[1006]++;
            if (c->slow)
                S.slow_closed++;
            conn_close(c);
        } else {
            conn_fail(c, &S.failed_connect);
        }
        return;
    }
    if (r == 0) {
        if (c->state == C_OPEN) {
            S.eof_no_close++;
            S.close_codes[1006]++;
            if (c->slow)
                S.slow_closed++;
            conn_close(c);
        } else {
            conn_fail(c, &S.failed_handshake);
        }
        return;
    }
    S.bytes_in += (uint64_t)r;
    char *p;
    size_t len;
    int own = c->in.len > 0;
    if (own) {
        buf_append(&c->in, W_scratch, (size_t)r);
        p = c->in.p;
        len = c->in.len;
    } else {
        p = (char *)W_scratch;
        len = (size_t)r;
    }
    size_t off = 0;
    if (c->state == C_HANDSHAKE) {
        long h = on_handshake(c, p, len);
        if (h < 0)
            return;
        if (h == 0) {
            if (!own)
                buf_append(&c->in, p, len);
            return;
        }
        off = (size_t)h;
    }
    long used = parse_frames(c, p + off, len - off, now);
    if (used < 0)
        return;
    off += (size_t)used;
    size_t rem = len - off;
    if (own) {
        memmove(c->in.p, c->in.p + off, rem);
        c->in.len = (uint32_t)rem;
    } else if (rem) {
        buf_append(&c->in, p + off, rem);
    }
}

/* ------------------------------------------------------------ HTTP history requests */

struct hreq {
    struct conn c;              /* kind = K_HTTP; fd, in, out reused */
    uint64_t t0;
};

static void http_start(uint64_t now)
{
    struct hreq *h = calloc(1, sizeof *h);
    if (!h)
        return;
    h->c.kind = K_HTTP;
    h->t0 = now;
    uint32_t idx = (uint32_t)(rnd() % (uint64_t)O.conns);
    h->c.fd = conn_socket(NULL, idx);
    if (h->c.fd < 0) {
        free(h);
        S.http_fail++;
        return;
    }
    S.http_sent++;
    char sub[32], tok[512], room[96], path[512], req[1200];
    snprintf(sub, sizeof sub, "lt%u", idx);
    const char *err;
    if (lt_jwt_mint(O.secret, sub, "load http", (long)time(NULL) + 3600, tok, sizeof tok, &err))
        exit(2);
    conn_room(idx % (uint32_t)O.rooms, room, sizeof room);
    /* substitute {room} in the path template */
    const char *t = strstr(O.http_path, "{room}");
    if (t)
        snprintf(path, sizeof path, "%.*s%s%s", (int)(t - O.http_path), O.http_path, room, t + 6);
    else
        snprintf(path, sizeof path, "%s", O.http_path);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                     "Connection: close\r\n\r\n",
                     path, O.host, O.port, tok);
    buf_append(&h->c.out, req, (size_t)n);
    h->c.state = C_CONNECTING;
    ep_set(&h->c, EPOLLOUT | EPOLLIN, EPOLL_CTL_ADD);
}

static void http_finish(struct hreq *h, int ok, uint64_t now)
{
    if (ok) {
        int status = 0;
        if (h->c.in.len >= 12)
            sscanf(h->c.in.p, "HTTP/1.%*d %d", &status);
        if (status > 0 && status < 600)
            S.http_status[status]++;
        if (status == 200) {
            S.http_done++;
            lt_hist_add(&S.http, now - h->t0);
        } else {
            S.http_fail++;
        }
    } else {
        S.http_fail++;
    }
    epoll_ctl(W_ep, EPOLL_CTL_DEL, h->c.fd, NULL);
    close(h->c.fd);
    buf_free(&h->c.in);
    buf_free(&h->c.out);
    free(h);
}

static void http_event(struct hreq *h, uint32_t ev, uint64_t now)
{
    if (ev & EPOLLOUT && h->c.out.len) {
        ssize_t w = send(h->c.fd, h->c.out.p, h->c.out.len, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) {
            http_finish(h, 0, now);
            return;
        }
        if (w > 0) {
            memmove(h->c.out.p, h->c.out.p + w, h->c.out.len - (size_t)w);
            h->c.out.len -= (uint32_t)w;
        }
        if (h->c.out.len == 0)
            ep_set(&h->c, EPOLLIN, EPOLL_CTL_MOD);
    }
    if (!(ev & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    for (;;) {
        ssize_t r = recv(h->c.fd, W_scratch, sizeof W_scratch, 0);
        if (r < 0) {
            if (errno == EAGAIN)
                return;
            http_finish(h, h->c.in.len > 0, now);
            return;
        }
        if (r == 0) {
            http_finish(h, h->c.in.len > 0, now);
            return;
        }
        buf_append(&h->c.in, W_scratch, (size_t)r);
        const char *e = memmem(h->c.in.p, h->c.in.len, "\r\n\r\n", 4);
        if (e) {
            const char *cl = memmem(h->c.in.p, (size_t)(e - h->c.in.p), "ontent-Length:", 14);
            if (cl) {
                long want = strtol(cl + 14, NULL, 10);
                if ((long)h->c.in.len - (long)(e + 4 - h->c.in.p) >= want) {
                    http_finish(h, 1, now);
                    return;
                }
            }
        }
    }
}

/* ------------------------------------------------------------ worker schedules */

static void publish_one(uint64_t now)
{
    if (W_npubs == 0)
        return;
    struct conn *c = W_pubs[W_pub_counter++ % (uint32_t)W_npubs];
    if (c->state != C_OPEN || !c->welcomed) {
        S.msgs_skipped++;
        return;
    }
    static char *body, *frame;
    static size_t cap;
    if (!body) {
        cap = (size_t)O.body_bytes + 256;
        body = malloc(cap);
        frame = malloc(cap + 256);
        if (!body || !frame)
            die("malloc");
    }
    uint64_t k = ++c->pub_n; /* per publisher: --proto nchan checks it as a seq */
    int bl = snprintf(body, cap, "lt1 %u %llu %llu ", c->idx, (unsigned long long)k,
                      (unsigned long long)mono_ns());
    while (bl < O.body_bytes && bl < (int)cap - 1)
        body[bl++] = 'x';
    body[bl] = 0;
    int n = snprintf(frame, cap + 256, "{\"type\":\"message\",\"body\":\"%s\",\"id\":\"%lx-%u-%llu\"}",
                     body, RUN_ID, c->idx, (unsigned long long)k);
    (void)now;
    c->ack_k[k % 8] = (uint32_t)k;
    c->ack_t[k % 8] = mono_ns();
    ws_send(c, 0x1, frame, (size_t)n);
    S.msgs_sent++;
    R.sent++;
}

static void churn_one(void)
{
    for (int tries = 0; tries < 16; tries++) {
        struct conn *c = &W_c[rnd() % (uint64_t)W_n];
        if (c->state != C_OPEN || c->publisher || c->slow)
            continue;
        ws_send(c, 0x8, "\x03\xe8", 2);
        conn_close(c);
        S.churn_closes++;
        conn_start(c);
        return;
    }
}

static void check_timeouts(uint64_t now)
{
    uint64_t lim = (uint64_t)O.handshake_timeout_ms * 1000000ull;
    for (int i = 0; i < W_n; i++) {
        struct conn *c = &W_c[i];
        if ((c->state == C_CONNECTING || c->state == C_HANDSHAKE) && now > c->t_start &&
            now - c->t_start > lim)
            conn_fail(c, &S.failed_timeout);
    }
}

static void emit_secs(uint64_t now, uint32_t *cur_sec)
{
    uint32_t sec = (uint32_t)((now - T_begin) / 1000000000ull);
    while (*cur_sec < sec) {
        R.conns_open = (uint32_t)W_open_now;
        send_rec(REC_SEC, *cur_sec, &R, sizeof R);
        memset(&R, 0, sizeof R);
        (*cur_sec)++;
    }
}

/* seconds a task spent runnable but not running (2nd field of schedstat) */
static double runq_wait_of(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    unsigned long long run = 0, wait = 0;
    int n = fscanf(f, "%llu %llu", &run, &wait);
    fclose(f);
    return n == 2 ? (double)wait / 1e9 : 0;
}

static void worker_run(void)
{
    W_rng ^= (uint64_t)(W_id + 1) * 0x9E3779B97F4A7C15ull ^ mono_ns();
    W_ep = epoll_create1(EPOLL_CLOEXEC);
    if (W_ep < 0)
        die("epoll_create1");
    /* the control pipe from the parent */
    static struct conn ctl;
    ctl.kind = 255;
    ctl.fd = W_down;
    struct epoll_event ce = {.events = EPOLLIN, .data.ptr = &ctl};
    epoll_ctl(W_ep, EPOLL_CTL_ADD, W_down, &ce);

    int local = 0;
    for (int i = W_id; i < O.conns; i += O.procs)
        local++;
    W_c = calloc((size_t)local ? (size_t)local : 1, sizeof *W_c);
    W_pubs = calloc((size_t)local ? (size_t)local : 1, sizeof *W_pubs);
    if (!W_c || !W_pubs)
        die("calloc");
    W_n = 0;
    for (int i = W_id; i < O.conns; i += O.procs) {
        struct conn *c = &W_c[W_n++];
        c->fd = -1;
        c->idx = (uint32_t)i;
        c->room = (uint32_t)i % (uint32_t)O.rooms;
        c->publisher = i < O.publishers;
        c->slow = i >= O.conns - O.slow;
        if (c->publisher)
            W_pubs[W_npubs++] = c;
    }
    double share = O.publishers > 0 ? O.rate * W_npubs / O.publishers : 0;
    double ramp_local = O.ramp / O.procs;
    double churn_local = O.churn / O.procs, http_local = O.http_rate / O.procs;

    uint64_t now = mono_ns(), t_ramp = now, t_go = 0, t_drain = 0, last = now;
    uint64_t last_timeout_scan = now, ramp_deadline =
        now + (uint64_t)((W_n / (ramp_local > 0 ? ramp_local : 1e9)) * 1e9) + (uint64_t)(O.ramp_timeout * 1e9);
    double hb_due = 0, pub_due = 0, churn_due = 0, http_due = 0;
    int started = 0, hb_pos = 0, ready_sent = 0;
    uint32_t cur_sec = 0;
    double cpu_go = 0, rq_go = 0;
    struct epoll_event evs[512];

    while (W_phase != P_END) {
        int timeout = (W_phase == P_STEADY || W_phase == P_RAMP) ? 1 : 10;
        int n = epoll_wait(W_ep, evs, 512, timeout);
        now = mono_ns();
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == &ctl) {
                char b;
                if (read(W_down, &b, 1) != 1 || b == 'q') {
                    W_phase = P_END;
                    break;
                }
                if (b == 'g' && W_phase == P_WAIT) {
                    W_phase = P_STEADY;
                    t_go = now;
                    cpu_go = cpu_self();
                    rq_go = runq_wait_of("/proc/self/schedstat");
                    S.open_at_go = (uint64_t)W_open_now;
                }
                continue;
            }
            if (c->kind == K_HTTP) {
                http_event((struct hreq *)c, evs[i].events, now);
                continue;
            }
            if (c->state == C_DONE || c->fd < 0)
                continue;
            if (c->state == C_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    conn_fail(c, &S.failed_connect);
                    continue;
                }
                if (evs[i].events & EPOLLOUT)
                    conn_send_upgrade(c);
                continue;
            }
            if (evs[i].events & EPOLLOUT)
                conn_flush(c);
            if (c->state != C_DONE && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                on_readable(c, now);
        }
        double dt = (double)(now - last) / 1e9;
        last = now;

        if (W_phase == P_RAMP) {
            uint64_t target = ramp_local > 0 ? (uint64_t)(ramp_local * (double)(now - t_ramp) / 1e9) + 1
                                             : (uint64_t)W_n;
            while (started < W_n && (uint64_t)started < target && W_inflight < O.max_inflight)
                conn_start(&W_c[started++]);
            if (!ready_sent && ((started == W_n && W_inflight == 0) || now > ramp_deadline)) {
                uint32_t open = (uint32_t)W_open_now;
                if (!O.quiet) {
                    int st[5] = {0};
                    for (int i = 0; i < W_n; i++)
                        st[W_c[i].state]++;
                    fprintf(stderr, "chatload: worker %d ramp: idle %d connecting %d handshake %d open %d done %d (inflight %d)\n",
                            W_id, st[C_IDLE], st[C_CONNECTING], st[C_HANDSHAKE], st[C_OPEN], st[C_DONE], W_inflight);
                }
                send_rec(REC_READY, 0, &open, sizeof open);
                ready_sent = 1;
                W_phase = P_WAIT;
            }
        }
        if (O.heartbeat_ms > 0 && W_n > 0) {
            hb_due += dt * 1000.0 * W_n / O.heartbeat_ms;
            while (hb_due >= 1) {
                hb_due -= 1;
                struct conn *c = &W_c[hb_pos++ % W_n];
                if (c->state == C_OPEN && c->welcomed) {
                    if (O.nchan) /* a text frame would be published: keepalive is a ping */
                        ws_send(c, 0x9, "", 0);
                    else
                        ws_send(c, 0x1, "{\"type\":\"heartbeat\"}", 20);
                    S.hb_sent++;
                }
            }
        }
        if (W_phase == P_STEADY) {
            pub_due += dt * share;
            while (pub_due >= 1) {
                pub_due -= 1;
                publish_one(now);
            }
            churn_due += dt * churn_local;
            while (churn_due >= 1) {
                churn_due -= 1;
                churn_one();
            }
            http_due += dt * http_local;
            while (http_due >= 1) {
                http_due -= 1;
                http_start(now);
            }
            if (now - t_go >= (uint64_t)(O.duration * 1e9)) {
                S.cpu_steady = cpu_self() - cpu_go;
                S.runq_wait_steady = runq_wait_of("/proc/self/schedstat") - rq_go;
                S.open_at_end = (uint64_t)W_open_now;
                W_phase = P_DRAIN;
                t_drain = now;
                for (int i = 0; i < W_n; i++) {
                    struct conn *c = &W_c[i];
                    if (c->slow && c->muted && c->state == C_OPEN)
                        ep_set(c, EPOLLIN | (c->out.len ? EPOLLOUT : 0), EPOLL_CTL_MOD);
                }
            }
        }
        if (W_phase == P_DRAIN && now - t_drain >= (uint64_t)(O.drain * 1e9))
            W_phase = P_END;
        if (now - last_timeout_scan > 1000000000ull) {
            check_timeouts(now);
            last_timeout_scan = now;
        }
        emit_secs(now, &cur_sec);
    }
    /* leave politely */
    for (int i = 0; i < W_n; i++) {
        struct conn *c = &W_c[i];
        if (c->state == C_OPEN) {
            ws_send(c, 0x8, "\x03\xe8", 2);
            W_open_now--;
            c->state = C_DONE;
            close(c->fd);
        } else if (c->fd >= 0) {
            conn_close(c);
        }
    }
    emit_secs(mono_ns() + 1000000000ull, &cur_sec);
    S.cpu_total = cpu_self();
    send_rec(REC_FINAL, 0, &S, sizeof S);
    exit(0);
}

/* ------------------------------------------------------------ parent */

struct srv_sample {
    double cpu, runq_wait;      /* CPU seconds; seconds runnable but waiting for a CPU */
    long rss_kib;
    int ok;
};


static struct srv_sample server_sample(void)
{
    struct srv_sample s = {0, 0, 0, 0};
    long tck = sysconf(_SC_CLK_TCK);
    for (int i = 0; i < O.n_server_pids; i++) {
        char path[64], b[4096];
        snprintf(path, sizeof path, "/proc/%d/stat", O.server_pids[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            return s;
        size_t n = fread(b, 1, sizeof b - 1, f);
        fclose(f);
        b[n] = 0;
        char *p = strrchr(b, ')');
        unsigned long ut = 0, st = 0;
        if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
            return s;
        s.cpu += (double)(ut + st) / (double)tck;
        snprintf(path, sizeof path, "/proc/%d/schedstat", O.server_pids[i]);
        s.runq_wait += runq_wait_of(path);
        snprintf(path, sizeof path, "/proc/%d/status", O.server_pids[i]);
        f = fopen(path, "r");
        if (!f)
            return s;
        while (fgets(b, sizeof b, f)) {
            long v;
            if (sscanf(b, "VmRSS: %ld", &v) == 1)
                s.rss_kib += v;
        }
        fclose(f);
    }
    s.ok = O.n_server_pids > 0;
    return s;
}

/* --proc NAME=PID: CPU seconds (user + system, threads included, plus the
 * children already reaped: cutime + cstime) and RSS of PID and all its
 * descendants now, e.g. the postmaster and every backend, or nginx's master
 * and workers. One pass over /proc. */
struct tree_sample {
    double cpu;
    long rss_kib;
    int nproc;
};

static void tree_sample(struct tree_sample *out, int n)
{
    enum { MAXP = 32768 };
    static int pid[MAXP], ppid[MAXP];
    static double cpu[MAXP];
    static long rss[MAXP];
    static char in[MAXP];
    int np = 0;
    long tck = sysconf(_SC_CLK_TCK), pg_kib = sysconf(_SC_PAGESIZE) / 1024;
    memset(out, 0, sizeof *out * (size_t)n);
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) && np < MAXP) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        char path[300], b[1024];
        snprintf(path, sizeof path, "/proc/%s/stat", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t r = read(fd, b, sizeof b - 1);
        close(fd);
        if (r <= 0)
            continue;
        b[r] = 0;
        char *q = strrchr(b, ')');
        int pp;
        unsigned long ut, st;
        long cut, cst, rs;
        if (!q || sscanf(q + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %ld %ld %*d %*d %*d %*d %*u %*u %ld",
                         &pp, &ut, &st, &cut, &cst, &rs) != 6)
            continue;
        pid[np] = atoi(de->d_name);
        ppid[np] = pp;
        cpu[np] = (double)(ut + st + (unsigned long)cut + (unsigned long)cst) / (double)tck;
        rss[np] = rs * pg_kib;
        np++;
    }
    closedir(d);
    for (int g = 0; g < n; g++) {
        memset(in, 0, (size_t)np);
        int grew = 1;
        for (int i = 0; i < np; i++)
            if (pid[i] == O.pgrp[g].pid)
                in[i] = 1;
        while (grew) { /* descendants: a few passes, the trees are shallow */
            grew = 0;
            for (int i = 0; i < np; i++) {
                if (in[i])
                    continue;
                for (int j = 0; j < np; j++)
                    if (in[j] && pid[j] == ppid[i]) {
                        in[i] = 1;
                        grew = 1;
                        break;
                    }
            }
        }
        for (int i = 0; i < np; i++)
            if (in[i]) {
                out[g].cpu += cpu[i];
                out[g].rss_kib += rss[i];
                out[g].nproc++;
            }
    }
}

static void run_hook(const char *phase)
{
    if (!O.hook[0])
        return;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "%s %s", O.hook, phase);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "chatload: hook \"%s\" exited with %d\n", cmd, rc);
}

/* machine-wide busy CPU seconds (all cores) from /proc/stat */
static double machine_busy(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                   &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8)
        return -1;
    /* user nice system [idle iowait] irq softirq steal */
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    return (double)busy / (double)sysconf(_SC_CLK_TCK);
}

static void merge_stats(struct stats *d, const struct stats *s)
{
    const uint64_t *a = (const uint64_t *)s;
    uint64_t *b = (uint64_t *)d;
    /* sum the plain counter prefix up to the close_codes array */
    size_t nprefix = offsetof(struct stats, close_codes) / sizeof(uint64_t);
    for (size_t i = 0; i < nprefix; i++)
        b[i] += a[i];
    for (int i = 0; i < 5000; i++)
        d->close_codes[i] += s->close_codes[i];
#define ADD(f) d->f += s->f
    ADD(deliveries); ADD(deliveries_steady); ADD(foreign); ADD(losses); ADD(dups); ADD(reorders);
    ADD(acks); ADD(errors); ADD(other_frames); ADD(pings); ADD(hb_sent); ADD(hb_acks);
    ADD(msgs_sent); ADD(msgs_skipped); ADD(bytes_in); ADD(bytes_out); ADD(churn_closes);
    ADD(slow_backlog_frames); ADD(slow_closed); ADD(http_sent); ADD(http_done); ADD(http_fail);
    ADD(open_at_go); ADD(open_at_end); ADD(cpu_steady); ADD(cpu_total); ADD(runq_wait_steady);
#undef ADD
    for (int i = 0; i < 600; i++)
        d->http_status[i] += s->http_status[i];
    for (int i = 0; i < N_ERRS && s->errs[i].n; i++) {
        int j = 0;
        for (; j < N_ERRS && d->errs[j].n; j++)
            if (strcmp(d->errs[j].code, s->errs[i].code) == 0)
                break;
        if (j == N_ERRS)
            continue;
        if (!d->errs[j].n)
            strcpy(d->errs[j].code, s->errs[i].code);
        d->errs[j].n += s->errs[i].n;
    }
    lt_hist_merge(&d->lag, &s->lag);
    lt_hist_merge(&d->connect, &s->connect);
    lt_hist_merge(&d->http, &s->http);
    lt_hist_merge(&d->ack, &s->ack);
}

static double ms(uint64_t ns) { return (double)ns / 1e6; }

static void usage(void)
{
    fprintf(stderr,
            "usage: chatload --url HOST:PORT[,HOST:PORT...] --secret S [options]\n"
            "  (several urls: the members of each room are spread over the nodes)\n"
            "  --conns N          connections (default 100)\n"
            "  --rooms R          rooms; connection i joins room i %% R (default 1)\n"
            "  --rate M           messages/s in total (default 10)\n"
            "  --publishers N     connections 0..N-1 publish (default: one per room)\n"
            "  --duration S       steady phase seconds (default 10)\n"
            "  --ramp C           new connections/s (0 = as fast as allowed; default 2000)\n"
            "  --max-inflight N   handshakes in flight per worker (default 256)\n"
            "  --settle S         idle seconds between the ramp and the steady phase (default 2)\n"
            "  --ramp-timeout S   extra seconds the ramp may take before the steady phase starts anyway (default 60)\n"
            "  --heartbeat-ms MS  heartbeat period per connection (0 = none; default 10000)\n"
            "  --src-addrs K      bind to 127.0.0.2..127.0.0.(K+1) (default 0 = kernel's choice)\n"
            "  --procs P          worker processes (default ceil(conns/19000))\n"
            "  --server-pid PID   chatd pid(s), comma separated, for CPU/RSS\n"
            "  --json FILE        results as JSON\n"
            "  --timeline FILE    per-second rows: t conns deliveries/s lag_p50_ms lag_p99_ms sent/s\n"
            "  --slow K           the last K connections stop reading after welcome\n"
            "  --slow-rcvbuf B    SO_RCVBUF of slow connections (default 4096)\n"
            "  --churn C          close+reconnect C connections/s during the steady phase\n"
            "  --http-rate H      GET history requests/s during the steady phase\n"
            "  --http-path P      path template (default /rooms/{room}/messages?limit=50)\n"
            "  --body-bytes B     message body size (default 80)\n"
            "  --room-prefix P    room name prefix (default lt)\n"
            "  --drain S          seconds to wait for in-flight deliveries (default 2)\n"
            "  --tag-count T,T..  count delivered bodies by prefix (up to 4; exactly one expected)\n"
            "  --proto P          chatd (default) or nchan: Nchan pub/sub WebSocket (the upgrade subscribes,\n"
            "                     a text frame publishes verbatim, no welcome/seq/ack; heartbeats are pings;\n"
            "                     order is checked per publisher from the body's counter; no --churn/--slow)\n"
            "  --ws-path T        upgrade path, {room} and {token} substituted\n"
            "                     (default /ws/{room}?token={token}; nchan: /ps/{room})\n"
            "  --proc NAME=PID    CPU and RSS of PID and its descendants in the steady phase, per message\n"
            "                     and per delivery (repeatable, up to 8; list the server too: the\n"
            "                     machine line then counts every group as measured, not as other load)\n"
            "  --hook CMD         runs \"CMD go\" before the steady phase and \"CMD end\" after it\n"
            "  --quiet            no progress lines\n");
    exit(2);
}

static void parse_opts(int argc, char **argv)
{
    O.port = 8080;
    snprintf(O.host, sizeof O.host, "127.0.0.1");
    O.conns = 100;
    O.rooms = 1;
    O.publishers = -1;
    O.rate = 10;
    O.duration = 10;
    O.ramp = 2000;
    O.heartbeat_ms = 10000;
    O.procs = 0;
    O.body_bytes = 80;
    O.max_inflight = 256;
    O.slow_rcvbuf = 4096;
    O.drain = 2;
    O.ramp_timeout = 60;
    O.settle = 2;
    O.handshake_timeout_ms = 10000;
    snprintf(O.room_prefix, sizeof O.room_prefix, "lt");
    snprintf(O.http_path, sizeof O.http_path, "/rooms/{room}/messages?limit=50");
    static struct option lo[] = {
        {"url", 1, 0, 'u'}, {"secret", 1, 0, 's'}, {"conns", 1, 0, 'c'}, {"rooms", 1, 0, 'r'},
        {"rate", 1, 0, 'm'}, {"publishers", 1, 0, 'P'}, {"duration", 1, 0, 'd'},
        {"ramp", 1, 0, 'R'}, {"heartbeat-ms", 1, 0, 'h'}, {"src-addrs", 1, 0, 'a'},
        {"procs", 1, 0, 'p'}, {"server-pid", 1, 0, 'S'}, {"json", 1, 0, 'j'},
        {"timeline", 1, 0, 't'}, {"slow", 1, 0, 'w'}, {"churn", 1, 0, 'C'},
        {"http-rate", 1, 0, 'H'}, {"http-path", 1, 0, 'T'}, {"body-bytes", 1, 0, 'b'},
        {"room-prefix", 1, 0, 'x'}, {"drain", 1, 0, 'D'}, {"max-inflight", 1, 0, 'i'},
        {"slow-rcvbuf", 1, 0, 'B'}, {"ramp-timeout", 1, 0, 'M'},
        {"settle", 1, 0, 'L'}, {"quiet", 0, 0, 'q'}, {"tag-count", 1, 0, 'G'},
        {"proto", 1, 0, 'o'}, {"ws-path", 1, 0, 'W'}, {"proc", 1, 0, 'g'}, {"hook", 1, 0, 'k'},
        {"help", 0, 0, '?'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'u': {
            char *list = optarg, *u;
            N_SRV = 0;
            while ((u = strsep(&list, ",")) && N_SRV < 8) {
                if (strncmp(u, "ws://", 5) == 0)
                    u += 5;
                char *colon = strrchr(u, ':');
                if (!colon)
                    usage();
                *colon = 0;
                if (N_SRV == 0) {
                    snprintf(O.host, sizeof O.host, "%s", u);
                    O.port = atoi(colon + 1);
                }
                memset(&SRV[N_SRV], 0, sizeof SRV[N_SRV]);
                SRV[N_SRV].sin_family = AF_INET;
                SRV[N_SRV].sin_port = htons((uint16_t)atoi(colon + 1));
                if (inet_pton(AF_INET, u, &SRV[N_SRV].sin_addr) != 1) {
                    fprintf(stderr, "chatload: --url host must be a numeric IPv4 address\n");
                    exit(2);
                }
                N_SRV++;
            }
            break;
        }
        case 's': snprintf(O.secret, sizeof O.secret, "%s", optarg); break;
        case 'c': O.conns = atoi(optarg); break;
        case 'r': O.rooms = atoi(optarg); break;
        case 'm': O.rate = atof(optarg); break;
        case 'P': O.publishers = atoi(optarg); break;
        case 'd': O.duration = atof(optarg); break;
        case 'R': O.ramp = atof(optarg); break;
        case 'h': O.heartbeat_ms = atoi(optarg); break;
        case 'a': O.src_addrs = atoi(optarg); break;
        case 'p': O.procs = atoi(optarg); break;
        case 'S': {
            char *s = optarg, *tok;
            while ((tok = strsep(&s, ",")) && O.n_server_pids < 8)
                if (*tok)
                    O.server_pids[O.n_server_pids++] = atoi(tok);
            break;
        }
        case 'j': snprintf(O.json, sizeof O.json, "%s", optarg); break;
        case 't': snprintf(O.timeline, sizeof O.timeline, "%s", optarg); break;
        case 'w': O.slow = atoi(optarg); break;
        case 'C': O.churn = atof(optarg); break;
        case 'H': O.http_rate = atof(optarg); break;
        case 'T': snprintf(O.http_path, sizeof O.http_path, "%s", optarg); break;
        case 'b': O.body_bytes = atoi(optarg); break;
        case 'x': snprintf(O.room_prefix, sizeof O.room_prefix, "%s", optarg); break;
        case 'D': O.drain = atof(optarg); break;
        case 'i': O.max_inflight = atoi(optarg); break;
        case 'B': O.slow_rcvbuf = atoi(optarg); break;
        case 'M': O.ramp_timeout = atof(optarg); break;
        case 'L': O.settle = atof(optarg); break;
        case 'q': O.quiet = 1; break;
        case 'o':
            if (strcmp(optarg, "nchan") == 0)
                O.nchan = 1;
            else if (strcmp(optarg, "chatd") != 0)
                usage();
            break;
        case 'W': snprintf(O.ws_path, sizeof O.ws_path, "%s", optarg); break;
        case 'k': snprintf(O.hook, sizeof O.hook, "%s", optarg); break;
        case 'g': {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || (size_t)(eq - optarg) >= sizeof O.pgrp[0].name || atoi(eq + 1) <= 0 ||
                O.n_pgrp == 8) {
                fprintf(stderr, "chatload: --proc NAME=PID (name up to 23 bytes, up to 8 groups)\n");
                exit(2);
            }
            snprintf(O.pgrp[O.n_pgrp].name, sizeof O.pgrp[0].name, "%.*s", (int)(eq - optarg), optarg);
            O.pgrp[O.n_pgrp++].pid = atoi(eq + 1);
            break;
        }
        case 'G': {
            char *list = optarg, *tok;
            while ((tok = strsep(&list, ",")) && O.ntags < 4) {
                if (!*tok || strlen(tok) >= sizeof O.tags[0] || strpbrk(tok, "\"\\")) {
                    fprintf(stderr, "chatload: --tag-count: tags are 1..31 bytes without quotes or backslashes\n");
                    exit(2);
                }
                snprintf(O.tags[O.ntags++], sizeof O.tags[0], "%s", tok);
            }
            break;
        }
        default: usage();
        }
    }
    if (!O.secret[0] || O.conns <= 0 || O.rooms <= 0)
        usage();
    if (O.rooms > O.conns)
        O.rooms = O.conns;
    if (O.publishers < 0)
        O.publishers = O.rooms;
    if (O.publishers > O.conns)
        O.publishers = O.conns;
    if (O.slow > O.conns - O.publishers)
        O.slow = O.conns - O.publishers;
    if (O.procs <= 0)
        O.procs = (O.conns + 18999) / 19000;
    if (O.body_bytes > 1 << 20)
        O.body_bytes = 1 << 20;
    if (!O.ws_path[0])
        snprintf(O.ws_path, sizeof O.ws_path, "%s", O.nchan ? "/ps/{room}" : "/ws/{room}?token={token}");
    if (O.nchan && (O.churn > 0 || O.slow > 0)) {
        fprintf(stderr, "chatload: --proto nchan supports neither --churn nor --slow\n");
        exit(2);
    }
    if (N_SRV == 1 && SRV[0].sin_family == 0) {
        SRV[0].sin_family = AF_INET;
        SRV[0].sin_port = htons((uint16_t)O.port);
        inet_pton(AF_INET, O.host, &SRV[0].sin_addr);
    }
}

struct secagg {
    uint32_t conns;
    uint64_t deliveries, sent;
    struct lt_hist lag;
};

int main(int argc, char **argv)
{
    parse_opts(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int per = (O.conns + O.procs - 1) / O.procs;
    if ((rlim_t)per + 64 > rl.rlim_cur)
        fprintf(stderr, "chatload: warning: %d sockets per worker but RLIMIT_NOFILE is %lu; use --procs\n",
                per, (unsigned long)rl.rlim_cur);
    cpu_set_t cs;
    int ncpu = 1;
    if (sched_getaffinity(0, sizeof cs, &cs) == 0)
        ncpu = CPU_COUNT(&cs);

    struct srv_sample s_begin = server_sample(), s_go = {0}, s_end = {0};
    struct tree_sample g_begin[8], g_go[8], g_end[8];
    tree_sample(g_begin, O.n_pgrp);
    memset(g_go, 0, sizeof g_go);
    memset(g_end, 0, sizeof g_end);
    T_begin = mono_ns();
    RUN_ID = (unsigned long)(time(NULL) ^ ((uint64_t)getpid() << 20) ^ (T_begin & 0xfffff));
    int P = O.procs;
    int *up = calloc((size_t)P, sizeof *up), *down = calloc((size_t)P, sizeof *down);
    pid_t *pids = calloc((size_t)P, sizeof *pids);
    for (int w = 0; w < P; w++) {
        int u[2], d[2];
        if (pipe(u) < 0 || pipe(d) < 0)
            die("pipe");
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            for (int j = 0; j < w; j++) {
                close(up[j]);
                close(down[j]);
            }
            close(u[0]);
            close(d[1]);
            W_id = w;
            W_up = u[1];
            W_down = d[0];
            worker_run();
        }
        close(u[1]);
        close(d[0]);
        up[w] = u[0];
        down[w] = d[1];
        pids[w] = pid;
    }

    struct stats *tot = calloc(1, sizeof *tot), *one = calloc(1, sizeof *one);
    struct secrow *row = calloc(1, sizeof *row);
    size_t nsec = 0, capsec = 64;
    struct secagg *secs = calloc(capsec, sizeof *secs);
    int ready = 0, finals = 0, go_sent = 0, end_sampled = 0;
    double busy_go = -1, busy_end = -1;
    uint32_t open_ready = 0;
    uint64_t t_go = 0, t_ready = 0;
    struct pollfd *pf = calloc((size_t)P, sizeof *pf);
    for (int w = 0; w < P; w++)
        pf[w] = (struct pollfd){.fd = up[w], .events = POLLIN};
    while (finals < P) {
        int n = poll(pf, (nfds_t)P, 50);
        uint64_t now = mono_ns();
        if (ready == P && !go_sent && now - t_ready >= (uint64_t)(O.settle * 1e9)) {
            run_hook("go");
            tree_sample(g_go, O.n_pgrp);
            s_go = server_sample();
            busy_go = machine_busy();
            t_go = now;
            for (int j = 0; j < P; j++)
                write_all(down[j], "g", 1);
            go_sent = 1;
        }
        if (go_sent && !end_sampled && now > t_go && now - t_go >= (uint64_t)(O.duration * 1e9)) {
            s_end = server_sample();
            tree_sample(g_end, O.n_pgrp);
            busy_end = machine_busy();
            end_sampled = 1;
            run_hook("end");
        }
        if (n <= 0)
            continue;
        for (int w = 0; w < P; w++) {
            if (!(pf[w].revents & (POLLIN | POLLHUP)))
                continue;
            struct rec_hdr h;
            if (read_all(up[w], &h, sizeof h) < 0) {
                fprintf(stderr, "chatload: worker %d died\n", w);
                pf[w].fd = -1;
                finals++;
                continue;
            }
            if (h.kind == REC_READY) {
                uint32_t open;
                read_all(up[w], &open, sizeof open);
                open_ready += open;
                if (++ready == P) {
                    t_ready = now;
                    if (!O.quiet)
                        fprintf(stderr, "chatload: ramp done, %u connections open after %.1fs; settle %.1fs, then steady phase %.0fs\n",
                                open_ready, (double)(now - T_begin) / 1e9, O.settle, O.duration);
                }
            } else if (h.kind == REC_SEC) {
                read_all(up[w], row, sizeof *row);
                if (h.sec >= capsec) {
                    size_t nc = capsec;
                    while (nc <= h.sec)
                        nc *= 2;
                    secs = realloc(secs, nc * sizeof *secs);
                    memset(secs + capsec, 0, (nc - capsec) * sizeof *secs);
                    capsec = nc;
                }
                struct secagg *a = &secs[h.sec];
                a->conns += row->conns_open;
                a->deliveries += row->deliveries;
                a->sent += row->sent;
                lt_hist_merge(&a->lag, &row->lag);
                if (h.sec + 1 > nsec)
                    nsec = h.sec + 1;
                if (!O.quiet && w == 0 && h.sec % 5 == 4)
                    fprintf(stderr, "chatload: t=%us conns(w0)=%u deliveries/s(w0)=%llu\n", h.sec + 1,
                            row->conns_open, (unsigned long long)row->deliveries);
            } else if (h.kind == REC_FINAL) {
                read_all(up[w], one, sizeof *one);
                merge_stats(tot, one);
                finals++;
                pf[w].fd = -1;
            }
        }
    }
    for (int w = 0; w < P; w++)
        waitpid(pids[w], NULL, 0);
    if (!end_sampled) {
        s_end = server_sample();
        tree_sample(g_end, O.n_pgrp);
        busy_end = machine_busy();
        run_hook("end");
    }
    long ncores = sysconf(_SC_NPROCESSORS_ONLN);

    /* ---- summary */
    struct stats *t = tot;
    double dur = O.duration;
    double dps = (double)t->deliveries_steady / dur;
    double srv_cpu = s_end.ok && s_go.ok ? s_end.cpu - s_go.cpu : -1;
    double cpu_per_del_us = srv_cpu >= 0 && t->deliveries_steady ? srv_cpu * 1e6 / (double)t->deliveries_steady : -1;
    double rss_per_conn = s_go.ok && t->open_at_go ? (double)(s_go.rss_kib - s_begin.rss_kib) / (double)t->open_at_go : -1;
    double gen_util = t->cpu_steady / dur;
    int gen_limited = gen_util > 0.85 * ncpu || gen_util > 0.85 * P;
    /* CPU used by every other process on the machine during the steady phase */
    double grp_cpu[8], grp_sum = 0;
    for (int g = 0; g < O.n_pgrp; g++) {
        grp_cpu[g] = g_end[g].cpu - g_go[g].cpu;
        grp_sum += grp_cpu[g];
    }
    double measured = O.n_pgrp ? grp_sum : (srv_cpu > 0 ? srv_cpu : 0);
    double other = busy_go >= 0 && busy_end >= 0 ? (busy_end - busy_go) - measured - t->cpu_steady : -1;
    double other_util = other >= 0 ? other / dur : -1;
    uint64_t failed = t->failed_connect + t->failed_timeout + t->failed_handshake + t->failed_http + t->failed_local;
    printf("chatload: %d conns, %d rooms, %d publishers, %.0f msg/s, %.0fs steady, %d worker(s)\n",
           O.conns, O.rooms, O.publishers, O.rate, dur, P);
    printf("connections: held %llu at start, %llu at end of steady; attempted %llu, failed %llu "
           "(connect %llu, timeout %llu, handshake %llu, http %llu, local %llu)\n",
           (unsigned long long)t->open_at_go, (unsigned long long)t->open_at_end,
           (unsigned long long)t->attempted, (unsigned long long)failed,
           (unsigned long long)t->failed_connect, (unsigned long long)t->failed_timeout,
           (unsigned long long)t->failed_handshake, (unsigned long long)t->failed_http,
           (unsigned long long)t->failed_local);
    for (int i = 0; i < 600; i++)
        if (t->upgrade_status[i])
            printf("  upgrade refused with HTTP %d: %llu\n", i, (unsigned long long)t->upgrade_status[i]);
    printf("closed by server: %llu close frames, %llu EOF without close, %llu resets\n",
           (unsigned long long)t->closed_by_server, (unsigned long long)t->eof_no_close,
           (unsigned long long)t->resets);
    for (int i = 0; i < 5000; i++)
        if (t->close_codes[i])
            printf("  close code %d: %u\n", i, t->close_codes[i]);
    printf("connect (to welcome): p50 %.2f ms p99 %.2f ms max %.2f ms\n", ms(lt_hist_quantile(&t->connect, .5)),
           ms(lt_hist_quantile(&t->connect, .99)), ms(t->connect.max));
    printf("sent %llu messages (%.1f/s), skipped %llu; acks %llu; errors %llu\n",
           (unsigned long long)t->msgs_sent, (double)t->msgs_sent / dur,
           (unsigned long long)t->msgs_skipped, (unsigned long long)t->acks, (unsigned long long)t->errors);
    for (int i = 0; i < N_ERRS && t->errs[i].n; i++) {
        printf("  error %s: %llu\n", t->errs[i].code, (unsigned long long)t->errs[i].n);
        if (strcmp(t->errs[i].code, "rate_limited") == 0)
            printf("  (each publisher sends %.1f msgs/s: raise --publishers if the policy limits users)\n",
                   O.rate / (O.publishers ? O.publishers : 1));
    }
    printf("deliveries: %llu total, %.0f/s in steady; heartbeats %llu sent / %llu acked; server pings %llu\n",
           (unsigned long long)t->deliveries, dps, (unsigned long long)t->hb_sent,
           (unsigned long long)t->hb_acks, (unsigned long long)t->pings);
    printf("lag: p50 %.3f ms  p99 %.3f ms  p999 %.3f ms  max %.3f ms  (%llu samples)\n",
           ms(lt_hist_quantile(&t->lag, .5)), ms(lt_hist_quantile(&t->lag, .99)),
           ms(lt_hist_quantile(&t->lag, .999)), ms(t->lag.max), (unsigned long long)t->lag.n);
    if (t->ack.n)
        printf("ack (send -> ack): p50 %.3f ms  p99 %.3f ms  p999 %.3f ms  max %.3f ms  (%llu samples)\n",
               ms(lt_hist_quantile(&t->ack, .5)), ms(lt_hist_quantile(&t->ack, .99)),
               ms(lt_hist_quantile(&t->ack, .999)), ms(t->ack.max), (unsigned long long)t->ack.n);
    printf("seq check: losses %llu, duplicates %llu, reorders %llu\n", (unsigned long long)t->losses,
           (unsigned long long)t->dups, (unsigned long long)t->reorders);
    if (O.slow)
        printf("slow consumers: %d, closed by server %llu, backlog frames read at drain %llu\n", O.slow,
               (unsigned long long)t->slow_closed, (unsigned long long)t->slow_backlog_frames);
    if (O.churn > 0)
        printf("churn: %llu close+reconnect cycles\n", (unsigned long long)t->churn_closes);
    if (O.ntags) {
        printf("tags:");
        for (int i = 0; i < O.ntags; i++)
            printf(" \"%s\" %llu,", O.tags[i], (unsigned long long)t->tag_counts[i]);
        printf(" none %llu, more than one %llu\n", (unsigned long long)t->tag_none,
               (unsigned long long)t->tag_multi);
    }
    if (O.http_rate > 0)
        printf("history GETs: %llu sent, %llu ok, %llu failed; latency p50 %.2f ms p99 %.2f ms max %.2f ms\n",
               (unsigned long long)t->http_sent, (unsigned long long)t->http_done,
               (unsigned long long)t->http_fail, ms(lt_hist_quantile(&t->http, .5)),
               ms(lt_hist_quantile(&t->http, .99)), ms(t->http.max));
    if (s_go.ok)
        printf("server: CPU %.2f s during the ramp (%.2f ms per connection), %.2f s in steady (%.0f%% of a core), %.2f us per delivery; "
               "RSS %ld KiB -> %ld KiB -> %ld KiB, %.1f KiB per connection\n",
               s_go.cpu - s_begin.cpu, t->open_at_go ? (s_go.cpu - s_begin.cpu) * 1e3 / (double)t->open_at_go : 0.0,
               srv_cpu, 100 * srv_cpu / dur, cpu_per_del_us, s_begin.rss_kib, s_go.rss_kib, s_end.rss_kib,
               rss_per_conn);
    double msgs = (double)t->msgs_sent, dels = (double)t->deliveries_steady;
    for (int g = 0; g < O.n_pgrp; g++)
        printf("process %s (pid %d, %d procs): CPU %.2f s in steady (%.1f%% of a core), %.1f us per message, "
               "%.2f us per delivery; RSS %ld -> %ld KiB (%.2f KiB per connection)\n",
               O.pgrp[g].name, O.pgrp[g].pid, g_end[g].nproc, grp_cpu[g], 100 * grp_cpu[g] / dur,
               msgs > 0 ? grp_cpu[g] * 1e6 / msgs : -1.0, dels > 0 ? grp_cpu[g] * 1e6 / dels : -1.0,
               g_begin[g].rss_kib, g_go[g].rss_kib,
               t->open_at_go ? (double)(g_go[g].rss_kib - g_begin[g].rss_kib) / (double)t->open_at_go : -1.0);
    if (O.n_pgrp)
        printf("system (every --proc): CPU %.2f s in steady, %.1f us per message, %.2f us per delivery\n", grp_sum,
               msgs > 0 ? grp_sum * 1e6 / msgs : -1.0, dels > 0 ? grp_sum * 1e6 / dels : -1.0);
    printf("generator: CPU %.2f s in steady (%.0f%% of one core, %d cpu(s) allowed)%s\n", t->cpu_steady,
           100 * gen_util, ncpu, gen_limited ? "  ** GENERATOR-LIMITED: figures are a floor **" : "");

    double srv_rq = s_go.ok && s_end.ok ? s_end.runq_wait - s_go.runq_wait : -1;
    if (other_util >= 0)
        printf("machine: other processes used %.0f%% of one core on average during steady (%ld cores); "
               "runnable-but-waiting for a CPU: server %.0f ms, generator %.0f ms%s\n",
               100 * other_util, ncores, srv_rq * 1e3, t->runq_wait_steady * 1e3,
               other_util > 0.25 ? "  ** NOISY MACHINE: other load competes with chatd/generator **" : "");

    if (O.timeline[0]) {
        FILE *f = fopen(O.timeline, "w");
        if (f) {
            fprintf(f, "# t conns deliveries_per_s lag_p50_ms lag_p99_ms sent_per_s\n");
            for (size_t i = 0; i < nsec; i++)
                fprintf(f, "%zu %u %llu %.3f %.3f %llu\n", i, secs[i].conns,
                        (unsigned long long)secs[i].deliveries, ms(lt_hist_quantile(&secs[i].lag, .5)),
                        ms(lt_hist_quantile(&secs[i].lag, .99)), (unsigned long long)secs[i].sent);
            fclose(f);
        }
    }
    if (O.json[0]) {
        FILE *f = fopen(O.json, "w");
        if (f) {
            fprintf(f, "{\n  \"config\": {\"url\": \"%s:%d\", \"conns\": %d, \"rooms\": %d, \"publishers\": %d, "
                       "\"rate\": %.1f, \"duration_s\": %.1f, \"ramp\": %.0f, \"heartbeat_ms\": %d, "
                       "\"settle_s\": %.1f, \"procs\": %d, \"slow\": %d, \"churn\": %.1f, \"http_rate\": %.1f, \"body_bytes\": %d, "
                       "\"proto\": \"%s\", \"ws_path\": \"%s\"},\n",
                    O.host, O.port, O.conns, O.rooms, O.publishers, O.rate, O.duration, O.ramp,
                    O.heartbeat_ms, O.settle, P, O.slow, O.churn, O.http_rate, O.body_bytes,
                    O.nchan ? "nchan" : "chatd", O.ws_path);
            fprintf(f, "  \"connections\": {\"held_at_start\": %llu, \"held_at_end\": %llu, \"attempted\": %llu, "
                       "\"failed\": %llu, \"failed_connect\": %llu, \"failed_timeout\": %llu, "
                       "\"failed_handshake\": %llu, \"failed_http\": %llu, \"closed_by_server\": %llu, "
                       "\"eof_without_close\": %llu, \"resets\": %llu, \"close_codes\": {",
                    (unsigned long long)t->open_at_go, (unsigned long long)t->open_at_end,
                    (unsigned long long)t->attempted, (unsigned long long)failed,
                    (unsigned long long)t->failed_connect, (unsigned long long)t->failed_timeout,
                    (unsigned long long)t->failed_handshake, (unsigned long long)t->failed_http,
                    (unsigned long long)t->closed_by_server, (unsigned long long)t->eof_no_close,
                    (unsigned long long)t->resets);
            const char *sep = "";
            for (int i = 0; i < 5000; i++)
                if (t->close_codes[i]) {
                    fprintf(f, "%s\"%d\": %u", sep, i, t->close_codes[i]);
                    sep = ", ";
                }
            fprintf(f, "}, \"upgrade_status\": {");
            sep = "";
            for (int i = 0; i < 600; i++)
                if (t->upgrade_status[i]) {
                    fprintf(f, "%s\"%d\": %llu", sep, i, (unsigned long long)t->upgrade_status[i]);
                    sep = ", ";
                }
            fprintf(f, "}, \"connect_p50_ms\": %.3f, \"connect_p99_ms\": %.3f},\n",
                    ms(lt_hist_quantile(&t->connect, .5)), ms(lt_hist_quantile(&t->connect, .99)));
            fprintf(f, "  \"messages\": {\"sent\": %llu, \"skipped\": %llu, \"acks\": %llu, \"errors\": %llu, \"error_codes\": {",
                    (unsigned long long)t->msgs_sent, (unsigned long long)t->msgs_skipped,
                    (unsigned long long)t->acks, (unsigned long long)t->errors);
            for (int i = 0; i < N_ERRS && t->errs[i].n; i++)
                fprintf(f, "%s\"%s\": %llu", i ? ", " : "", t->errs[i].code, (unsigned long long)t->errs[i].n);
            fprintf(f, "}},\n  \"deliveries\": {\"total\": %llu, \"steady\": %llu, \"per_s\": %.1f, \"foreign\": %llu, "
                       "\"losses\": %llu, \"duplicates\": %llu, \"reorders\": %llu},\n",
                    (unsigned long long)t->deliveries, (unsigned long long)t->deliveries_steady, dps,
                    (unsigned long long)t->foreign, (unsigned long long)t->losses,
                    (unsigned long long)t->dups, (unsigned long long)t->reorders);
            fprintf(f, "  \"lag_ms\": {\"samples\": %llu, \"p50\": %.3f, \"p99\": %.3f, \"p999\": %.3f, \"max\": %.3f, \"mean\": %.3f},\n",
                    (unsigned long long)t->lag.n, ms(lt_hist_quantile(&t->lag, .5)),
                    ms(lt_hist_quantile(&t->lag, .99)), ms(lt_hist_quantile(&t->lag, .999)), ms(t->lag.max),
                    t->lag.n ? ms(t->lag.sum / t->lag.n) : 0.0);
            fprintf(f, "  \"ack_ms\": {\"samples\": %llu, \"p50\": %.3f, \"p99\": %.3f, \"p999\": %.3f, \"max\": %.3f},\n",
                    (unsigned long long)t->ack.n, ms(lt_hist_quantile(&t->ack, .5)),
                    ms(lt_hist_quantile(&t->ack, .99)), ms(lt_hist_quantile(&t->ack, .999)), ms(t->ack.max));
            fprintf(f, "  \"heartbeats\": {\"sent\": %llu, \"acked\": %llu, \"server_pings\": %llu},\n",
                    (unsigned long long)t->hb_sent, (unsigned long long)t->hb_acks, (unsigned long long)t->pings);
            fprintf(f, "  \"slow\": {\"count\": %d, \"closed_by_server\": %llu, \"backlog_frames\": %llu},\n", O.slow,
                    (unsigned long long)t->slow_closed, (unsigned long long)t->slow_backlog_frames);
            fprintf(f, "  \"churn\": {\"cycles\": %llu},\n", (unsigned long long)t->churn_closes);
            fprintf(f, "  \"tags\": {\"counts\": {");
            for (int i = 0; i < O.ntags; i++)
                fprintf(f, "%s\"%s\": %llu", i ? ", " : "", O.tags[i], (unsigned long long)t->tag_counts[i]);
            fprintf(f, "}, \"none\": %llu, \"multiple\": %llu},\n", (unsigned long long)t->tag_none,
                    (unsigned long long)t->tag_multi);
            fprintf(f, "  \"history\": {\"sent\": %llu, \"ok\": %llu, \"failed\": %llu, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f},\n",
                    (unsigned long long)t->http_sent, (unsigned long long)t->http_done,
                    (unsigned long long)t->http_fail, ms(lt_hist_quantile(&t->http, .5)),
                    ms(lt_hist_quantile(&t->http, .99)), ms(t->http.max));
            fprintf(f, "  \"server\": {\"sampled\": %s, \"cpu_ramp_s\": %.3f, \"cpu_steady_s\": %.3f, \"cpu_util\": %.3f, \"cpu_per_delivery_us\": %.3f, "
                       "\"rss_begin_kib\": %ld, \"rss_go_kib\": %ld, \"rss_end_kib\": %ld, \"rss_per_conn_kib\": %.2f},\n",
                    s_go.ok ? "true" : "false", s_go.cpu - s_begin.cpu, srv_cpu, srv_cpu / dur, cpu_per_del_us, s_begin.rss_kib,
                    s_go.rss_kib, s_end.rss_kib, rss_per_conn);
            fprintf(f, "  \"processes\": [");
            for (int g = 0; g < O.n_pgrp; g++)
                fprintf(f, "%s\n    {\"name\": \"%s\", \"pid\": %d, \"nproc\": %d, \"cpu_steady_s\": %.3f, "
                           "\"cpu_util\": %.4f, \"us_per_message\": %.2f, \"us_per_delivery\": %.3f, "
                           "\"rss_begin_kib\": %ld, \"rss_go_kib\": %ld, \"rss_end_kib\": %ld, \"rss_per_conn_kib\": %.3f}",
                        g ? "," : "", O.pgrp[g].name, O.pgrp[g].pid, g_end[g].nproc, grp_cpu[g], grp_cpu[g] / dur,
                        msgs > 0 ? grp_cpu[g] * 1e6 / msgs : -1.0, dels > 0 ? grp_cpu[g] * 1e6 / dels : -1.0,
                        g_begin[g].rss_kib, g_go[g].rss_kib, g_end[g].rss_kib,
                        t->open_at_go ? (double)(g_go[g].rss_kib - g_begin[g].rss_kib) / (double)t->open_at_go : -1.0);
            fprintf(f, "],\n  \"system\": {\"cpu_steady_s\": %.3f, \"us_per_message\": %.2f, \"us_per_delivery\": %.3f},\n",
                    grp_sum, msgs > 0 ? grp_sum * 1e6 / msgs : -1.0, dels > 0 ? grp_sum * 1e6 / dels : -1.0);
            fprintf(f, "  \"machine\": {\"cores\": %ld, \"other_cpu_util\": %.3f, \"server_runq_wait_ms\": %.1f, "
                       "\"generator_runq_wait_ms\": %.1f, \"noisy\": %s},\n", ncores, other_util, srv_rq * 1e3,
                    t->runq_wait_steady * 1e3, other_util > 0.25 ? "true" : "false");
            fprintf(f, "  \"generator\": {\"cpu_steady_s\": %.3f, \"cpu_util\": %.3f, \"cpus_allowed\": %d, \"limited\": %s}\n}\n",
                    t->cpu_steady, gen_util, ncpu, gen_limited ? "true" : "false");
            fclose(f);
        }
    }
    return failed && !t->open_at_go ? 1 : 0;
}
