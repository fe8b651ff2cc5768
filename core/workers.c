/* workers: see workers.h. The supervisor runs no event loop and holds no
 * socket: it blocks its signals and waits for them with sigtimedwait(), so a
 * signal, a child's exit or a due restart is handled in one plain loop. A
 * worker is a fork() of the supervisor before anything else was started;
 * it re-reads the same settings (argv + environment) with two flags
 * appended (its node id and its own port) and runs server_run().
 * A worker is up when it says so: it writes one byte to its readiness pipe
 * once its listeners accept (server_on_listening). A TCP probe of its port
 * could not tell the worker from whatever else listens there (a port taken
 * by another process answered the probe, and the worker that then failed
 * to listen was restarted in a loop instead of failing the start). */
#define _GNU_SOURCE
#include "workers.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "util.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MOD "workers"
#define START_TIMEOUT_MS 60000   /* every worker listening within this, or the start failed */
#define KILL_GRACE_MS 10000      /* after CHAT_DRAIN_MS: SIGKILL what is left */

typedef struct worker {
    int idx, port;
    pid_t pid;               /* 0: not running */
    int up;                  /* it said it listens (its readiness pipe) */
    int ready_fd;            /* read end of its readiness pipe, -1: none */
    uint64_t started_ms;
    uint64_t restart_at_ms;  /* 0: no restart pending */
    worker_restarts rs;
} worker;

static worker g_w[CONFIG_WORKERS_MAX];
static int g_n;
static config g_cfg;
static char g_base_id[128];
static sigset_t g_waitset, g_oldmask;
static pid_t g_self;

void workers_restarts_init(worker_restarts *r)
{
    backoff_init(&r->delay, WORKERS_RESTART_MIN_MS, WORKERS_RESTART_MAX_MS);
    r->streak = 0;
    r->total = 0;
}

uint32_t workers_next_restart(worker_restarts *r, uint64_t ran_ms, int *report)
{
    *report = 0;
    if (ran_ms >= WORKERS_STABLE_MS) {   /* it ran fine for a while: a fresh start */
        backoff_reset(&r->delay);
        r->streak = 0;
    }
    uint32_t d = backoff_next(&r->delay);
    r->streak++;
    r->total++;
    if (r->streak >= WORKERS_CRASH_LOOP && (r->streak - WORKERS_CRASH_LOOP) % WORKERS_CRASH_LOOP == 0)
        *report = 1;
    return d;
}

/* ---- one worker process ---- */

static int g_ready_fd = -1;      /* in a worker: the write end of its readiness pipe */

/* server_on_listening in a worker: one byte to the supervisor, once. */
static void tell_ready(void)
{
    if (g_ready_fd < 0) return;
    if (write(g_ready_fd, "r", 1) != 1)
        LOGW(MOD, "cannot tell the supervisor this worker listens: %s", strerror(errno));
    close(g_ready_fd);
    g_ready_fd = -1;
}

static void run_worker(worker *w, int ready_fd, int argc, char **argv)
{
    sigprocmask(SIG_SETMASK, &g_oldmask, NULL);
    /* the other workers' readiness pipes are the supervisor's */
    for (int i = 0; i < g_n; i++)
        if (g_w[i].ready_fd >= 0) { close(g_w[i].ready_fd); g_w[i].ready_fd = -1; }
    g_ready_fd = ready_fd;
    server_on_listening = tell_ready;
    /* the supervisor gone (even by SIGKILL): drain and exit, never linger
     * holding the port */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != g_self) _exit(1);
    char idarg[160], portarg[40], lbl[40];
    snprintf(idarg, sizeof idarg, "--node-id=%s-w%d", g_base_id, w->idx);
    snprintf(portarg, sizeof portarg, "--worker-port=%d", w->port);
    char **av = calloc((size_t)argc + 3, sizeof *av);
    if (!av) _exit(1);
    for (int i = 0; i < argc; i++) av[i] = argv[i];
    av[argc] = idarg;
    av[argc + 1] = portarg;
    snprintf(lbl, sizeof lbl, "worker=\"%d\"", w->idx);
    metric_add(metrics_counter("chat_worker_restarts_total",
                               "Times the supervisor restarted this worker slot (chatd --workers)", lbl),
               w->rs.total);
    int rc = server_run(argc + 2, av);
    free(av);
    exit(rc);
}

static int spawn(worker *w, int argc, char **argv)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
        LOGE(MOD, "pipe for worker w%d: %s", w->idx, strerror(errno));
        return -1;
    }
    pid_t p = fork();
    if (p < 0) {
        LOGE(MOD, "fork for worker w%d: %s", w->idx, strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (p == 0) {
        close(fds[0]);
        run_worker(w, fds[1], argc, argv);
    }
    close(fds[1]);
    if (w->ready_fd >= 0) close(w->ready_fd);
    w->ready_fd = fds[0];
    w->pid = p;
    w->up = 0;
    w->started_ms = mono_ms();
    w->restart_at_ms = 0;
    LOGI(MOD, "worker w%d started (pid %d, node %s-w%d, own port %d)", w->idx, (int)p, g_base_id,
         w->idx, w->port);
    return 0;
}

/* Sets w->up once the worker wrote its readiness byte: it got past its
 * whole start-up (settings, scripts, bus, store, both listeners accepting).
 * EOF without it: the worker is exiting (reap says how). */
static void check_ready(worker *w)
{
    if (w->up || w->ready_fd < 0) return;
    char b;
    ssize_t n = read(w->ready_fd, &b, 1);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n == 1) w->up = 1;
    close(w->ready_fd);
    w->ready_fd = -1;
}

static void describe(int st, char *out, size_t n)
{
    if (WIFEXITED(st)) snprintf(out, n, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) snprintf(out, n, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else snprintf(out, n, "stopped (status 0x%x)", st);
}

static int running(void)
{
    int n = 0;
    for (int i = 0; i < g_n; i++) n += g_w[i].pid != 0;
    return n;
}

static void signal_all(int sig)
{
    for (int i = 0; i < g_n; i++)
        if (g_w[i].pid) kill(g_w[i].pid, sig);
}

/* ---- the supervisor ---- */

typedef struct sup {
    int starting, stopping, rc;
    uint64_t start_deadline, stop_deadline;
} sup;

static void begin_stop(sup *s, const char *why, int rc)
{
    if (!s->stopping) {
        s->stopping = 1;
        s->rc = rc;
        s->stop_deadline = mono_ms() + (uint64_t)g_cfg.drain_ms + KILL_GRACE_MS;
        LOGI(MOD, "%s: draining %d workers", why, running());
    }
    for (int i = 0; i < g_n; i++) g_w[i].restart_at_ms = 0;
    signal_all(SIGTERM);
}

static void reap(sup *s)
{
    int st;
    pid_t p;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
        worker *w = NULL;
        for (int i = 0; i < g_n; i++)
            if (g_w[i].pid == p) w = &g_w[i];
        if (!w) continue;
        uint64_t now = mono_ms();
        uint64_t ran = now - w->started_ms;
        char how[96];
        describe(st, how, sizeof how);
        check_ready(w);     /* it may have said so just before it exited */
        if (w->ready_fd >= 0) { close(w->ready_fd); w->ready_fd = -1; }
        w->pid = 0;
        if (s->stopping) {
            int clean = (WIFEXITED(st) && WEXITSTATUS(st) == 0) ||
                        (WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);
            if (clean) LOGI(MOD, "worker w%d (pid %d) %s", w->idx, (int)p, how);
            else {
                LOGE(MOD, "worker w%d (pid %d) %s while draining", w->idx, (int)p, how);
                if (!s->rc) s->rc = 1;
            }
            continue;
        }
        /* a start-up error (settings, scripts, port) exits with a status;
         * a signal (a crash, a kill) is handled as a crash below */
        if (s->starting && !w->up && WIFEXITED(st)) {
            LOGE(MOD, "worker w%d (pid %d) could not start: %s; stopping the others", w->idx, (int)p, how);
            begin_stop(s, "start failed", WEXITSTATUS(st) ? WEXITSTATUS(st) : 1);
            continue;
        }
        int report;
        uint32_t d = workers_next_restart(&w->rs, ran, &report);
        LOGW(MOD, "worker w%d (pid %d) %s after %.1f s; restarting in %u ms", w->idx, (int)p, how,
             (double)ran / 1000.0, d);
        if (report)
            LOGE(MOD, "worker w%d is crash-looping: %u crashes in a row, the last one %s after %.1f s; "
                 "restarts go on with a backoff of up to %u ms (see the log above for its errors)",
                 w->idx, w->rs.streak, how, (double)ran / 1000.0, WORKERS_RESTART_MAX_MS);
        w->restart_at_ms = now + d;
    }
}

static int setup(void)
{
    char err[512];
    if (!g_cfg.redis_url) {
        fprintf(stderr, "chatd: --workers %lld needs CHAT_REDIS_URL: each worker is a separate "
                "node, and single-node mode's in-process fan-out cannot reach the clients of the "
                "other workers\n", (long long)g_cfg.workers);
        return -1;
    }
    int lvl = log_level_parse(g_cfg.log_level);
    if (lvl < 0) {
        fprintf(stderr, "chatd: CHAT_LOG_LEVEL: unknown level '%s'\n", g_cfg.log_level);
        return -1;
    }
    log_set_level((log_level_t)lvl);
    g_n = (int)g_cfg.workers;
    long base = g_cfg.worker_port ? (long)g_cfg.worker_port : (long)g_cfg.listen_port + 1;
    if (base + g_n - 1 > 65535 || (g_cfg.listen_port >= base && g_cfg.listen_port < base + g_n)) {
        fprintf(stderr, "chatd: CHAT_WORKER_PORT: the workers' own ports %ld-%ld must be valid and "
                "must not include the listen port %d\n", base, base + g_n - 1, g_cfg.listen_port);
        return -1;
    }
    snprintf(err, sizeof err, "%s-w%d", g_cfg.node_id, g_n - 1);
    if (strlen(err) > 64) {
        fprintf(stderr, "chatd: CHAT_NODE_ID: '%s' is too long for the worker ids (%s: over 64 "
                "characters)\n", g_cfg.node_id, err);
        return -1;
    }
    snprintf(g_base_id, sizeof g_base_id, "%s", g_cfg.node_id);
    for (int i = 0; i < g_n; i++) {
        memset(&g_w[i], 0, sizeof g_w[i]);
        g_w[i].ready_fd = -1;
        workers_restarts_init(&g_w[i].rs);
        g_w[i].idx = i;
        g_w[i].port = (int)base + i;
    }
    return 0;
}

static int supervise(int argc, char **argv)
{
    sigemptyset(&g_waitset);
    sigaddset(&g_waitset, SIGCHLD);
    sigaddset(&g_waitset, SIGHUP);
    sigaddset(&g_waitset, SIGTERM);
    sigaddset(&g_waitset, SIGINT);
    sigprocmask(SIG_BLOCK, &g_waitset, &g_oldmask);
    g_self = getpid();
    LOGI(MOD, "supervisor pid %d: %d workers %s-w0..w%d on the shared port %s (SO_REUSEPORT), "
         "own ports %d-%d", (int)g_self, g_n, g_base_id, g_n - 1, g_cfg.listen, g_w[0].port,
         g_w[g_n - 1].port);

    sup s = {.starting = 1, .start_deadline = mono_ms() + START_TIMEOUT_MS};
    for (int i = 0; i < g_n; i++)
        if (spawn(&g_w[i], argc, argv) < 0) { begin_stop(&s, "fork failed", 2); break; }

    for (;;) {
        reap(&s);
        uint64_t now = mono_ms();
        int pending_up = 0;
        for (int i = 0; i < g_n; i++) {
            worker *w = &g_w[i];
            if (!w->pid || w->up) continue;
            check_ready(w);
            if (w->up) {
                if (!s.starting) LOGI(MOD, "worker w%d (pid %d) is back", w->idx, (int)w->pid);
            } else {
                pending_up = 1;
            }
        }
        if (s.starting && !s.stopping && !pending_up && running() == g_n) {
            s.starting = 0;
            LOGI(MOD, "all %d workers are listening", g_n);
        }
        if (s.starting && !s.stopping && now > s.start_deadline) {
            LOGE(MOD, "the workers did not all listen within %d s", START_TIMEOUT_MS / 1000);
            begin_stop(&s, "start timed out", 2);
        }
        uint64_t next = now + 1000;
        if (!s.stopping) {
            for (int i = 0; i < g_n; i++) {
                worker *w = &g_w[i];
                if (w->pid || !w->restart_at_ms) continue;
                if (now >= w->restart_at_ms) {
                    if (spawn(w, argc, argv) < 0) {
                        int report;
                        w->restart_at_ms = now + workers_next_restart(&w->rs, 0, &report);
                    } else {
                        pending_up = 1;
                    }
                }
                if (w->restart_at_ms && w->restart_at_ms < next) next = w->restart_at_ms;
            }
        }
        if (s.stopping) {
            if (running() == 0) {
                LOGI(MOD, "every worker exited; supervisor exits %d", s.rc);
                return s.rc;
            }
            if (now >= s.stop_deadline) {
                LOGE(MOD, "%d workers still running %lld ms after SIGTERM; killing them", running(),
                     (long long)(g_cfg.drain_ms + KILL_GRACE_MS));
                signal_all(SIGKILL);
                if (!s.rc) s.rc = 1;
                s.stop_deadline = UINT64_MAX;
            }
        }
        if (pending_up && next > now + 50) next = now + 50;
        uint64_t wait = next > now ? next - now : 1;
        struct timespec ts = {(time_t)(wait / 1000), (long)(wait % 1000) * 1000000L};
        int sig = sigtimedwait(&g_waitset, NULL, &ts);
        if (sig == SIGHUP) {
            if (s.stopping) continue;
            LOGI(MOD, "SIGHUP: passed to %d workers (reload)", running());
            signal_all(SIGHUP);
        } else if (sig == SIGTERM || sig == SIGINT) {
            begin_stop(&s, sig == SIGTERM ? "SIGTERM" : "SIGINT", s.stopping ? s.rc : 0);
        }
    }
}

int workers_main(int argc, char **argv)
{
    char err[512];
    int r = config_load(&g_cfg, argc, argv, err, sizeof err);
    if (r == 1) return 0;
    if (r < 0) { fprintf(stderr, "chatd: %s\n", err); return 2; }
    if (g_cfg.workers == 1) return server_run(argc, argv);   /* the node, in this process */
    if (setup() < 0) return 2;
    return supervise(argc, argv);
}
