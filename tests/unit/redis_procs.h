/* redis_procs: redis-server processes for the C unit tests (test_redis,
 * test_bus, test_bus_backfill, test_bus_seed, test_presence cluster
 * cases): start one on a free port of
 * 23000-23999, or of CHATD_TEST_UNIT_PORT_LO..HI (ports.h), wait for
 * PING, stop/kill/pause it, and build a 3-master Redis Cluster with
 * redis-cli --cluster create. Every process dies with the test
 * (PR_SET_PDEATHSIG) and its directory is removed at rp_cleanup.
 * Header-only: static functions, one copy per test executable. */
#ifndef CHATD_TEST_REDIS_PROCS_H
#define CHATD_TEST_REDIS_PROCS_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include "ports.h"
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RP_MAX 16
#define RP_PORT_LO 23000
#define RP_PORT_HI 23999

typedef struct rp_server {
    pid_t pid;
    int port, cport;         /* cport: cluster bus port (cluster nodes) */
    char dir[96];
    char *args[32];          /* extra args, kept for restarts */
    int nargs;
} rp_server;

static rp_server rp_all[RP_MAX];
static int rp_n;
static char rp_root[64];

static inline int rp_pick_port(void)
{
    return test_port_pick(RP_PORT_LO, RP_PORT_HI);
}

static inline redisContext *rp_connect(int port, int timeout_ms)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        redisContext *c = redisConnect("127.0.0.1", port);
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            if (r) freeReplyObject(r);
            if (ok) return c;
        }
        if (c) redisFree(c);
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > timeout_ms)
            return NULL;
        usleep(20000);
    }
}

static inline int rp_exec(rp_server *s)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) { dup2(fd, 1); dup2(fd, 2); }
        char *argv[48];
        int n = 0;
        argv[n++] = "redis-server";
        argv[n++] = "--port";
        argv[n++] = port;
        argv[n++] = "--bind";
        argv[n++] = "127.0.0.1";
        argv[n++] = "--dir";
        argv[n++] = s->dir;
        argv[n++] = "--save";
        argv[n++] = "";
        argv[n++] = "--appendonly";
        argv[n++] = "no";
        argv[n++] = "--daemonize";
        argv[n++] = "no";
        argv[n++] = "--loglevel";
        argv[n++] = "warning";
        for (int i = 0; i < s->nargs; i++) argv[n++] = s->args[i];
        argv[n] = NULL;
        execvp("redis-server", argv);
        _exit(127);
    }
    s->pid = pid;
    return 0;
}

/* Starts a server with extra args (NULL-terminated; "%P" in an arg becomes
 * the port, "%C" the cluster bus port). Returns its index or -1. Waits for
 * PING unless the server speaks TLS only (port_is_tls). */
static inline int rp_start_v(int wait_ping, const char *arg, va_list ap)
{
    if (rp_n == RP_MAX) return -1;
    if (!rp_root[0]) {
        snprintf(rp_root, sizeof rp_root, "/tmp/chatd-test-redis-XXXXXX");
        if (!mkdtemp(rp_root)) return -1;
    }
    rp_server *s = &rp_all[rp_n];
    memset(s, 0, sizeof *s);
    s->port = rp_pick_port();
    if (s->port < 0) return -1;
    /* the cluster bus port: another free port of the range */
    do s->cport = rp_pick_port(); while (s->cport == s->port);
    snprintf(s->dir, sizeof s->dir, "%s/%d", rp_root, s->port);
    mkdir(s->dir, 0700);
    for (; arg && s->nargs < 31; arg = va_arg(ap, const char *)) {
        char buf[256];
        const char *p = strstr(arg, "%P"), *q = strstr(arg, "%C");
        if (p) snprintf(buf, sizeof buf, "%.*s%d%s", (int)(p - arg), arg, s->port, p + 2);
        else if (q) snprintf(buf, sizeof buf, "%.*s%d%s", (int)(q - arg), arg, s->cport, q + 2);
        else snprintf(buf, sizeof buf, "%s", arg);
        s->args[s->nargs++] = strdup(buf);
    }
    if (rp_exec(s) != 0) return -1;
    rp_n++;
    if (wait_ping) {
        redisContext *c = rp_connect(s->port, 5000);
        if (!c) return -1;
        redisFree(c);
    }
    return rp_n - 1;
}

static inline int rp_start(const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    int i = rp_start_v(1, arg, ap);
    va_end(ap);
    return i;
}

static inline int rp_start_nowait(const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    int i = rp_start_v(0, arg, ap);
    va_end(ap);
    return i;
}

static inline void rp_signal(int i, int sig)
{
    if (i < 0 || i >= rp_n || rp_all[i].pid <= 0) return;
    kill(rp_all[i].pid, sig);
    if (sig == SIGKILL || sig == SIGTERM) {
        waitpid(rp_all[i].pid, NULL, 0);
        rp_all[i].pid = -1;
    }
}

/* Starts server i again (same port, args and directory). */
static inline int rp_restart(int i)
{
    if (i < 0 || i >= rp_n) return -1;
    if (rp_all[i].pid > 0) rp_signal(i, SIGKILL);
    if (rp_exec(&rp_all[i]) != 0) return -1;
    redisContext *c = rp_connect(rp_all[i].port, 5000);
    if (!c) return -1;
    redisFree(c);
    return 0;
}

static inline void rp_cleanup(void)
{
    for (int i = 0; i < rp_n; i++) {
        if (rp_all[i].pid > 0) {
            kill(rp_all[i].pid, SIGKILL);
            waitpid(rp_all[i].pid, NULL, 0);
        }
        for (int k = 0; k < rp_all[i].nargs; k++) free(rp_all[i].args[k]);
    }
    rp_n = 0;
    if (rp_root[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", rp_root);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", rp_root);
        rp_root[0] = 0;
    }
}

static inline int rp_have_server(void)
{
    return system("command -v redis-server >/dev/null 2>&1 && command -v redis-cli "
                  ">/dev/null 2>&1") == 0;
}

/* One command on server i (synchronous hiredis); the reply or NULL. */
static inline redisReply *rp_cmd(int i, const char *fmt, ...)
{
    redisContext *c = redisConnect("127.0.0.1", rp_all[i].port);
    if (!c || c->err) {
        if (c) redisFree(c);
        return NULL;
    }
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

/* Three masters (no replicas, or one replica each with replicas=1) on
 * fresh servers; returns the index of the first or -1. Full coverage is not
 * required, so one master down leaves the others serving. */
static inline int rp_cluster(int replicas, int node_timeout_ms)
{
    int n = replicas ? 6 : 3, first = rp_n;
    char nt[16];
    snprintf(nt, sizeof nt, "%d", node_timeout_ms);
    for (int i = 0; i < n; i++)
        if (rp_start("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-port", "%C", "--cluster-node-timeout", nt,
                     "--cluster-require-full-coverage", "no", "--cluster-allow-reads-when-down",
                     "yes", NULL) < 0)
            return -1;
    char cmd[1024];
    int o = snprintf(cmd, sizeof cmd, "redis-cli --cluster create");
    for (int i = 0; i < n; i++)
        o += snprintf(cmd + o, sizeof cmd - (size_t)o, " 127.0.0.1:%d", rp_all[first + i].port);
    snprintf(cmd + o, sizeof cmd - (size_t)o, " --cluster-replicas %d --cluster-yes >/dev/null 2>&1",
             replicas);
    if (system(cmd) != 0) return -1;
    /* wait until every node agrees the cluster is ok */
    for (int tries = 0; tries < 200; tries++) {
        int ok = 1;
        for (int i = 0; i < n && ok; i++) {
            redisReply *r = rp_cmd(first + i, "CLUSTER INFO");
            ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok");
            if (r) freeReplyObject(r);
        }
        if (ok) return first;
        usleep(50000);
    }
    return -1;
}

/* ---- cluster helpers (first = index of the first master of rp_cluster) ---- */

/* the node id of server i into out (empty on failure) */
static inline void rp_myid(int i, char *out, size_t n)
{
    redisReply *r = rp_cmd(i, "CLUSTER MYID");
    out[0] = 0;
    if (r && r->type == REDIS_REPLY_STRING) snprintf(out, n, "%s", r->str);
    if (r) freeReplyObject(r);
}

/* index (first..first+nmasters-1) of the master serving slot, as server
 * first sees it, or -1 */
static inline int rp_slot_owner(int first, int nmasters, int slot)
{
    redisReply *s = rp_cmd(first, "CLUSTER SLOTS");
    int port = -1;
    for (size_t k = 0; s && s->type == REDIS_REPLY_ARRAY && k < s->elements; k++) {
        redisReply *e = s->element[k];
        if (e->elements >= 3 && e->element[0]->integer <= slot && slot <= e->element[1]->integer)
            port = (int)e->element[2]->element[1]->integer;
    }
    if (s) freeReplyObject(s);
    for (int i = first; i < first + nmasters; i++)
        if (rp_all[i].port == port) return i;
    return -1;
}

static inline void rp_setslot_all(int first, int nservers, int slot, const char *id)
{
    for (int i = first; i < first + nservers; i++) {
        redisReply *r = rp_cmd(i, "CLUSTER SETSLOT %d NODE %s", slot, id);
        if (r) freeReplyObject(r);
    }
}

/* The steps of moving slot from server src to dst (the way redis-cli
 * --cluster reshard does): 1 marks it importing/migrating, 2 moves one of
 * its keys (MIGRATE; call it until it answers 0: no key left), 3 gives the
 * slot to dst on every server. Step 2 answers how many keys were left
 * before it ran; the others 0; -1 on failure. */
static inline int rp_move_slot_step(int first, int nservers, int slot, int src, int dst, int step)
{
    char sid[64], did[64];
    rp_myid(src, sid, sizeof sid);
    rp_myid(dst, did, sizeof did);
    redisReply *r;
    if (step == 1) {
        r = rp_cmd(dst, "CLUSTER SETSLOT %d IMPORTING %s", slot, sid);
        int ok = r && r->type == REDIS_REPLY_STATUS;
        if (r) freeReplyObject(r);
        r = rp_cmd(src, "CLUSTER SETSLOT %d MIGRATING %s", slot, did);
        ok = ok && r && r->type == REDIS_REPLY_STATUS;
        if (r) freeReplyObject(r);
        return ok ? 0 : -1;
    }
    if (step == 2) {
        r = rp_cmd(src, "CLUSTER COUNTKEYSINSLOT %d", slot);
        int left = r && r->type == REDIS_REPLY_INTEGER ? (int)r->integer : -1;
        if (r) freeReplyObject(r);
        if (left <= 0) return left;
        r = rp_cmd(src, "CLUSTER GETKEYSINSLOT %d 1", slot);
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
            redisReply *m = rp_cmd(src, "MIGRATE 127.0.0.1 %d %s 0 5000 KEYS %s",
                                   rp_all[dst].port, "", r->element[0]->str);
            if (m) freeReplyObject(m);
        }
        if (r) freeReplyObject(r);
        return left;
    }
    rp_setslot_all(first, nservers, slot, did);
    return 0;
}

#endif
