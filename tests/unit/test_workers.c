/* test_workers: the restart policy of chatd --workers (backoff, reset after
 * a stable run, crash-loop report) and the settings the supervisor refuses
 * before forking anything (workers.h). The processes themselves are tested
 * by tests/integration/workers.py. */
#define _GNU_SOURCE
#include "workers.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_backoff(void)
{
    worker_restarts r;
    workers_restarts_init(&r);
    int report;
    uint32_t base = WORKERS_RESTART_MIN_MS;
    int reports = 0;
    for (int i = 1; i <= 12; i++) {
        uint32_t d = workers_next_restart(&r, 50, &report);
        CHECK(d >= base / 2 && d <= base, "crash %d: delay %u, want [%u, %u]", i, d, base / 2, base);
        base = base * 2 > WORKERS_RESTART_MAX_MS ? WORKERS_RESTART_MAX_MS : base * 2;
        reports += report;
        if (i == WORKERS_CRASH_LOOP) CHECK(report, "crash %d of a streak is reported", i);
        else if (i == 2 * WORKERS_CRASH_LOOP) CHECK(report, "reported again after %d more", WORKERS_CRASH_LOOP);
        else CHECK(!report, "crash %d not reported", i);
    }
    CHECK(reports == 2, "two reports in 12 crashes, got %d", reports);
    CHECK(r.total == 12 && r.streak == 12, "total %llu streak %u", (unsigned long long)r.total, r.streak);
    uint32_t d = workers_next_restart(&r, 10, &report);
    CHECK(d >= WORKERS_RESTART_MAX_MS / 2 && d <= WORKERS_RESTART_MAX_MS, "capped: %u", d);
    /* a run longer than WORKERS_STABLE_MS starts over */
    d = workers_next_restart(&r, WORKERS_STABLE_MS, &report);
    CHECK(d <= WORKERS_RESTART_MIN_MS && r.streak == 1 && !report, "reset after a stable run: %u %u", d, r.streak);
    CHECK(r.total == 14, "total keeps counting: %llu", (unsigned long long)r.total);
    d = workers_next_restart(&r, WORKERS_STABLE_MS - 1, &report);
    CHECK(d >= WORKERS_RESTART_MIN_MS && d <= 2 * WORKERS_RESTART_MIN_MS, "just under stable: no reset (%u)", d);
}

/* Runs workers_main in a child with these args (and a clean CHAT_*
 * environment plus env), returns its exit status; stderr into err. */
static int run(const char *const *args, const char *env, char *err, size_t n)
{
    int pfd[2];
    if (pipe(pfd) < 0) return -1;
    pid_t p = fork();
    if (p == 0) {
        close(pfd[0]);
        dup2(pfd[1], 2);
        extern char **environ;
        for (;;) {   /* unsetenv reshuffles environ: look again from the start */
            char **e = environ;
            while (*e && strncmp(*e, "CHAT_", 5)) e++;
            if (!*e) break;
            char k[128];
            snprintf(k, sizeof k, "%.*s", (int)strcspn(*e, "="), *e);
            unsetenv(k);
        }
        if (env) putenv((char *)env);
        int argc = 0;
        char *argv[16];
        argv[argc++] = "chatd";
        for (; args[argc - 1] && argc < 15; argc++) argv[argc] = (char *)args[argc - 1];
        argv[argc] = NULL;
        _exit(workers_main(argc, argv));
    }
    close(pfd[1]);
    size_t o = 0;
    ssize_t k;
    while (o + 1 < n && (k = read(pfd[0], err + o, n - 1 - o)) > 0) o += (size_t)k;
    err[o] = 0;
    close(pfd[0]);
    int st;
    waitpid(p, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_refusals(void)
{
    char err[2048];
    const char *no_redis[] = {"--workers", "2", "--jwt-secret", "s", NULL};
    int rc = run(no_redis, NULL, err, sizeof err);
    CHECK(rc == 2 && strstr(err, "needs CHAT_REDIS_URL"), "--workers 2 without Redis: rc %d, %s", rc, err);
    rc = run((const char *[]){"--jwt-secret", "s", NULL}, "CHAT_WORKERS=3", err, sizeof err);
    CHECK(rc == 2 && strstr(err, "needs CHAT_REDIS_URL"), "CHAT_WORKERS=3 without Redis: rc %d, %s", rc, err);
    rc = run((const char *[]){"--workers", "0", NULL}, NULL, err, sizeof err);
    CHECK(rc == 2 && strstr(err, "CHAT_WORKERS: expected an integer from 1 to 64"), "0 workers: rc %d, %s", rc, err);
    rc = run((const char *[]){"--workers", "65", "--redis", "redis://127.0.0.1:1", NULL}, NULL, err, sizeof err);
    CHECK(rc == 2 && strstr(err, "CHAT_WORKERS: expected an integer from 1 to 64"), "65 workers: rc %d, %s", rc, err);
    rc = run((const char *[]){"--workers", "2", "--redis", "redis://127.0.0.1:1", "--listen",
                              "127.0.0.1:65535", NULL}, NULL, err, sizeof err);
    CHECK(rc == 2 && strstr(err, "CHAT_WORKER_PORT"), "own ports beyond 65535: rc %d, %s", rc, err);
    rc = run((const char *[]){"--workers", "3", "--redis", "redis://127.0.0.1:1", "--listen",
                              "127.0.0.1:9000", "--worker-port", "8999", NULL}, NULL, err, sizeof err);
    CHECK(rc == 2 && strstr(err, "must not include the listen port"), "own ports over the listen port: rc %d, %s", rc, err);
    char id[80];
    memset(id, 'n', 63);
    id[63] = 0;
    rc = run((const char *[]){"--workers", "2", "--redis", "redis://127.0.0.1:1", "--node-id", id, NULL},
             NULL, err, sizeof err);
    CHECK(rc == 2 && strstr(err, "too long for the worker ids"), "long node id: rc %d, %s", rc, err);
    rc = run((const char *[]){"--workers", "x", NULL}, NULL, err, sizeof err);
    CHECK(rc == 2 && strstr(err, "CHAT_WORKERS: expected an integer from 1 to 64"), "bad number: rc %d, %s", rc, err);
}

int main(void)
{
    test_backoff();
    test_refusals();
    return check_summary("test_workers");
}
