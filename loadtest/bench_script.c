/* bench_script: cost of the policy host. Prints the median and p99 of one
 * on_message call with the default policy (scripts/), the reload time of
 * that folder, and on_message calls/s with the default policy versus a
 * policy without hooks and one with an empty on_message, and the libc
 * allocations (malloc, calloc, realloc calls) per on_message call: this
 * binary wraps the allocator (the __libc_* entry points, as
 * loadtest/malloc_count.c does) and counts.
 * Run from the repo root: build/bench_script [iterations] */
#define _GNU_SOURCE
#include "log.h"
#include "metrics.h"
#include "script.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "alloc_count.h"

static double cpu_s(void) { return cpu_ns() / 1e9; }

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void write_policy(const char *dir, const char *text)
{
    char p[256];
    snprintf(p, sizeof p, "%s/policy.lua", dir);
    FILE *f = fopen(p, "w");
    if (!f) { perror(p); exit(1); }
    fputs(text, f);
    fclose(f);
}

/* n calls, each from one of 10000 users (so the rate limit does not
 * refuse) with their own name, claims and direct-message room, each message
 * with its own id (as in loadtest/scenarios/dm.sh), the now clock moving 1 ms
 * per call; returns calls/s of wall time; *cpu_us gets the CPU time per call
 * (steadier on a busy machine) */
typedef struct bench_user { char user[32], name[48], claims[128]; } bench_user;
static bench_user *users;   /* 10000, each with its own identity strings (as a connection has) */

static double run(script_host *h, int n, uint64_t *lat, int *rejected, double *cpu_us)
{
    double c0 = cpu_s();
    char room[32], id[32];
    if (!users && (users = calloc(10000, sizeof *users)))
        for (int u = 0; u < 10000; u++) {
            snprintf(users[u].user, sizeof users[u].user, "user%d", u);
            snprintf(users[u].name, sizeof users[u].name, "Bench User %d", u);
            snprintf(users[u].claims, sizeof users[u].claims,
                     "{\"sub\":\"user%d\",\"name\":\"Bench User %d\",\"exp\":9999999999}", u, u);
        }
    if (!users) exit(1);
    script_ctx c = {.room = room, .node = "bench", .now_ms = now_ms(), .source = "ws"};
    static const char body[] = "  hello, this is a typical chat message of moderate length  ";
    *rejected = 0;
    uint64_t t0 = mono_ns();
    for (int i = 0; i < n; i++) {
        int u = i % 10000;
        c.user = users[u].user;
        c.name = users[u].name;
        c.claims_json = users[u].claims;
        snprintf(room, sizeof room, "dm-%d", u / 2);
        snprintf(id, sizeof id, "c%d", i);
        c.now_ms++;
        script_result r;
        uint64_t a = lat ? mono_ns() : 0;
        if (script_on_message(h, &c, body, sizeof body - 1, id, &r) == SCRIPT_REJECT) (*rejected)++;
        if (lat) lat[i] = mono_ns() - a;
        script_result_clear(&r);
    }
    double wall = (double)(mono_ns() - t0) / 1e9;
    if (cpu_us) *cpu_us = (cpu_s() - c0) * 1e6 / n;
    return n / wall;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200000;
    if (n < 100) n = 100;
    log_set_level(LOG_WARN);
    char err[512];
    script_host *def = script_new("scripts", "bench", err, sizeof err);
    if (!def) { fprintf(stderr, "default policy: %s\n", err); return 1; }

    uint64_t *lat = malloc(sizeof *lat * (size_t)n);
    int rej;
    run(def, n / 10, NULL, &rej, NULL);                      /* warm up */
    double cpu_def, cpu_empty, cpu_none;
    unsigned long long a0 = n_alloc;
    double def_rate = run(def, n, lat, &rej, NULL);
    double allocs = (double)(n_alloc - a0) / n;
    qsort(lat, (size_t)n, sizeof *lat, cmp_u64);
    printf("on_message (default policy): median %.2f us, p99 %.2f us, max %.1f us, %d rejected of %d\n",
           lat[n / 2] / 1e3, lat[(size_t)(n * 0.99)] / 1e3, lat[n - 1] / 1e3, rej, n);
    printf("libc allocations per on_message call (default policy): %.2f\n", allocs);

    int reloads = 50;
    uint64_t rl[50];
    for (int i = 0; i < reloads; i++) {
        uint64_t a = mono_ns();
        if (script_reload(def, err, sizeof err) != 0) { fprintf(stderr, "reload: %s\n", err); return 1; }
        rl[i] = mono_ns() - a;
    }
    qsort(rl, (size_t)reloads, sizeof rl[0], cmp_u64);
    printf("reload of scripts/ (new state, load, selftest, swap): median %.2f ms, max %.2f ms\n",
           rl[reloads / 2] / 1e6, rl[reloads - 1] / 1e6);

    char dir[] = "/tmp/bench_script_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    write_policy(dir, "return {}\n");
    script_host *none = script_new(dir, "bench", err, sizeof err);
    write_policy(dir, "return { on_message = function(ctx, msg) end }\n");
    script_host *empty = script_new(dir, "bench", err, sizeof err);
    if (!none || !empty) { fprintf(stderr, "empty policy: %s\n", err); return 1; }
    run(empty, n / 10, NULL, &rej, NULL);
    unsigned long long b0 = n_alloc;
    double none_rate = run(none, n, NULL, &rej, &cpu_none);
    unsigned long long b1 = n_alloc;
    double empty_rate = run(empty, n, NULL, &rej, &cpu_empty);
    printf("libc allocations per call: empty on_message %.2f, no hooks %.2f\n",
           (double)(n_alloc - b1) / n, (double)(b1 - b0) / n);
    def_rate = run(def, n, NULL, &rej, &cpu_def);
    printf("on_message calls/s: default policy %.0f, empty on_message %.0f, no hooks %.0f\n",
           def_rate, empty_rate, none_rate);
    printf("CPU per call: default policy %.2f us (%.0f calls/s of CPU), empty on_message %.2f us (%.0f/s), no hooks %.3f us\n",
           cpu_def, 1e6 / cpu_def, cpu_empty, 1e6 / cpu_empty, cpu_none);

    char p[300];
    snprintf(p, sizeof p, "%s/policy.lua", dir);
    unlink(p);
    rmdir(dir);
    free(lat);
    free(users);
    script_free(def);
    script_free(none);
    script_free(empty);
    metrics_free_all();
    return 0;
}
