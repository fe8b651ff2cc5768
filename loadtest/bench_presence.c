/* bench_presence: cost of presence heartbeats. N connections (one user
 * each, spread over R rooms, split over K presence instances on one loop)
 * touch once per heartbeat period, evenly spread in time, for D seconds.
 * Reports the CPU of this process (presence + hiredis + libuv; the driver
 * itself only calls presence_touch) as % of one core, and Redis commands/s
 * and Redis CPU from INFO commandstats / INFO cpu taken before and after.
 * Usage: bench_presence [-u redis://127.0.0.1:6379] [-n 10000] [-r 100]
 *          [-k 1] [-b heartbeat_ms 10000] [-t ttl_ms 30000] [-d seconds 60]
 *          [-j results.json]
 * Without -u the memory store is measured (no Redis figures). -j also writes
 * the figures as JSON (read by loadtest/capacity.py). */
#define _GNU_SOURCE
#include "presence.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static uv_loop_t *L;
static presence *P[16];
static int K = 1, NCONN = 10000, NROOMS = 100;
static uint32_t HB = 10000, TTL = 30000;
static long joins, leaves;
static size_t pos;
static uint64_t touches;
static int tick_ms = 10;

static void on_tr(void *ud, const char *room, const char *event, const char *user,
                  const char *name)
{
    if (event[0] == 'j') joins++; else leaves++;
}

static void room_of(int i, char *out, size_t n) { snprintf(out, n, "bench-%d", i % NROOMS); }

/* Touch the next slice so every connection is touched once per HB. */
static double carry;
static uint64_t last_tick_ns;
static void tick_cb(uv_timer_t *t)
{
    uint64_t now = mono_ns();
    if (!last_tick_ns) last_tick_ns = now - (uint64_t)tick_ms * 1000000u;
    carry += (double)NCONN * ((now - last_tick_ns) / 1e6) / HB;
    last_tick_ns = now;
    int m = (int)carry;
    carry -= m;
    char room[32];
    for (int k = 0; k < m; k++) {
        int i = (int)(pos++ % (size_t)NCONN);
        room_of(i, room, sizeof room);
        presence_touch(P[i % K], room, (uint64_t)i + 1);
        touches++;
    }
}

static void stop_cb(uv_timer_t *t) { uv_stop(t->loop); }
static void run_for(uint64_t ms)
{
    uv_timer_t t;
    uv_timer_init(L, &t);
    uv_timer_start(&t, stop_cb, ms, 0);
    uv_run(L, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(L, UV_RUN_NOWAIT);
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

typedef struct rstats { double calls, evalsha, cpu; } rstats;

static int redis_stats(const char *url, rstats *s)
{
    char host[128] = "127.0.0.1";
    int port = 6379;
    const char *u = strncmp(url, "redis://", 8) ? url : url + 8;
    sscanf(u, "%127[^:/]:%d", host, &port);
    redisContext *c = redisConnect(host, port);
    if (!c || c->err) { if (c) redisFree(c); return -1; }
    memset(s, 0, sizeof *s);
    redisReply *r = redisCommand(c, "INFO commandstats");
    if (r && r->type == REDIS_REPLY_STRING) {
        for (char *l = strtok(r->str, "\r\n"); l; l = strtok(NULL, "\r\n")) {
            char name[64];
            double calls;
            if (sscanf(l, "cmdstat_%63[^:]:calls=%lf", name, &calls) != 2) continue;
            if (!strcmp(name, "info")) continue;    /* our own probes */
            s->calls += calls;
            if (!strcmp(name, "evalsha")) s->evalsha += calls;
        }
    }
    freeReplyObject(r);
    r = redisCommand(c, "INFO cpu");
    if (r && r->type == REDIS_REPLY_STRING) {
        char *p = strstr(r->str, "used_cpu_sys:");
        if (p) s->cpu += atof(p + 13);
        p = strstr(r->str, "used_cpu_user:");
        if (p) s->cpu += atof(p + 14);
    }
    freeReplyObject(r);
    redisFree(c);
    return 0;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *json = NULL;
    double secs = 60;
    int opt;
    while ((opt = getopt(argc, argv, "u:n:r:k:b:t:d:j:")) != -1) {
        switch (opt) {
        case 'u': url = optarg; break;
        case 'n': NCONN = atoi(optarg); break;
        case 'r': NROOMS = atoi(optarg); break;
        case 'k': K = atoi(optarg); break;
        case 'b': HB = (uint32_t)atoi(optarg); break;
        case 't': TTL = (uint32_t)atoi(optarg); break;
        case 'd': secs = atof(optarg); break;
        case 'j': json = optarg; break;
        default:
            fprintf(stderr, "usage: %s [-u url] [-n conns] [-r rooms] [-k nodes] [-b hb_ms] "
                            "[-t ttl_ms] [-d seconds] [-j json]\n", argv[0]);
            return 2;
        }
    }
    if (K < 1 || K > 16 || NCONN < 1 || NROOMS < 1) return 2;
    log_set_level(LOG_WARN);
    L = uv_default_loop();
    for (int k = 0; k < K; k++) {
        char id[32], err[256];
        snprintf(id, sizeof id, "bench%d-%d", k, (int)getpid());
        presence_opts o = { url, id, TTL, 0, 0 };
        presence_handlers h = { on_tr };
        P[k] = presence_new(L, &o, &h, NULL, err, sizeof err);
        if (!P[k]) { fprintf(stderr, "presence_new: %s\n", err); return 1; }
    }
    run_for(300);
    char room[32], user[32];
    for (int i = 0; i < NCONN; i++) {
        room_of(i, room, sizeof room);
        snprintf(user, sizeof user, "user%d", i);
        presence_add(P[i % K], room, (uint64_t)i + 1, user, user);
    }
    for (int w = 0; w < 200 && joins < NCONN; w++) run_for(50);
    if (joins != NCONN) fprintf(stderr, "warning: %ld joins for %d conns\n", joins, NCONN);

    rstats r0 = { 0 }, r1 = { 0 };
    int have_redis = url && redis_stats(url, &r0) == 0;
    uv_timer_t tick;
    uv_timer_init(L, &tick);
    uv_timer_start(&tick, tick_cb, tick_ms, tick_ms);
    double c0 = cpu_s();
    uint64_t t0 = mono_ns();
    long l0 = leaves;
    run_for((uint64_t)(secs * 1000));
    double wall = (mono_ns() - t0) / 1e9, cpu = cpu_s() - c0;
    uv_timer_stop(&tick);
    if (have_redis) redis_stats(url, &r1);

    printf("store=%s conns=%d rooms=%d nodes=%d heartbeat_ms=%u ttl_ms=%u window_s=%.1f\n",
           url ? "redis" : "memory", NCONN, NROOMS, K, HB, TTL, wall);
    printf("touches/s=%.0f presence_cpu=%.2f%% (of one core) leaves_in_window=%ld\n",
           touches / wall, 100.0 * cpu / wall, leaves - l0);
    if (have_redis)
        printf("redis_cmds/s=%.0f (incl. calls inside scripts) evalsha/s=%.0f redis_cpu=%.2f%%\n",
               (r1.calls - r0.calls) / wall, (r1.evalsha - r0.evalsha) / wall,
               100.0 * (r1.cpu - r0.cpu) / wall);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) { perror(json); return 1; }
        fprintf(f, "{\"store\": \"%s\", \"conns\": %d, \"rooms\": %d, \"nodes\": %d, "
                   "\"heartbeat_ms\": %u, \"ttl_ms\": %u, \"window_s\": %.3f, "
                   "\"touches_per_s\": %.1f, \"presence_cpu_util\": %.5f, \"leaves_in_window\": %ld",
                url ? "redis" : "memory", NCONN, NROOMS, K, HB, TTL, wall, touches / wall,
                cpu / wall, leaves - l0);
        if (have_redis)
            fprintf(f, ", \"redis_cmds_per_s\": %.1f, \"redis_evalsha_per_s\": %.1f, "
                       "\"redis_cpu_util\": %.5f",
                    (r1.calls - r0.calls) / wall, (r1.evalsha - r0.evalsha) / wall,
                    (r1.cpu - r0.cpu) / wall);
        fprintf(f, "}\n");
        fclose(f);
    }
    size_t len;
    char *m = metrics_render(&len);
    for (char *l = strtok(m, "\n"); l; l = strtok(NULL, "\n"))
        if (!strncmp(l, "chat_presence", 13)) printf("  %s\n", l);
    free(m);

    /* graceful end: everyone leaves */
    for (int i = 0; i < NCONN; i++) {
        room_of(i, room, sizeof room);
        presence_remove(P[i % K], room, (uint64_t)i + 1);
    }
    for (int w = 0; w < 200 && leaves < NCONN; w++) run_for(50);
    printf("final: joins=%ld leaves=%ld\n", joins, leaves);
    for (int k = 0; k < K; k++) presence_free(P[k]);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(L, UV_RUN_DEFAULT);
    uv_loop_close(L);
    metrics_free_all();
    return 0;
}
