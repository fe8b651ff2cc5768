/* server: see server.h. Start-up order: config -> auth (refuse to start
 * without a key) -> scripts -> bus -> store -> presence -> lws on the libuv
 * loop. The loop is libuv (epoll): lws runs on it as a foreign loop, hiredis
 * through its libuv adapter, libpq through uv_poll on its socket; timers are
 * uv timers. Signals only set flags (uv_signal callbacks), the 100 ms tick
 * acts on them. Output is flushed in a uv_prepare handle, i.e. once per loop
 * iteration right before the loop sleeps (Redis' beforeSleep habit). */
#define _GNU_SOURCE
#include "server.h"
#include "api.h"
#include "bans.h"
#include "chat.h"
#include "chat_admin.h"
#include "adminstore.h"
#include "climit.h"
#include "uconns.h"
#include "ctl.h"
#include "chat_fanout.h"
#include "lag.h"
#include "publish.h"
#include "client_ip.h"
#include "readstate.h"
#include "retention.h"
#include "conn.h"
#include "connlimit.h"
#include "listener.h"
#include "memtrim.h"
#include "log.h"
#include "metrics.h"
#include "room.h"
#include "util.h"
#include "ws.h"
#include "wsread.h"
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

void (*server_on_listening)(void);

static uv_prepare_t g_flush;
static uv_timer_t g_tick;
static uv_signal_t g_sighup, g_sigterm, g_sigint;
static uint64_t g_drain_started;
static climit *g_limits;          /* the cluster-wide rate limits (API keys, users) */
static adminstore *g_admin;       /* with Redis: bans and cluster-wide buckets there */
static int g_store_drained, g_stopping;

/* The policy settings the core reads (script_setting: M.config, else env
 * CHAT_<KEY>, else the default here). Every one of them applies on reload
 * (SIGHUP); `applies` says from when. None is start-only, so what `welcome`
 * announces is what the node does. The settings of config.c (flags and env:
 * listen, Redis, Postgres, queues, store batching...) are read once at
 * start. docs/scripting.md has the same table. */
static const struct policy_setting {
    const char *key;
    int64_t dflt;
    int64_t *value;
    const char *applies;
} POLICY_SETTINGS[] = {
    {"heartbeat_ms", 10000, &g_srv.heartbeat_ms, "in the welcome of later connections"},
    {"presence_ttl_ms", 30000, &g_srv.presence_ttl_ms,
     "in later welcomes and to every later presence upsert (join, heartbeat) of this node"},
    {"typing_ttl_ms", 5000, &g_srv.typing_ttl_ms, "to the next typing frame"},
    {"max_rooms_per_conn", 32, &g_srv.max_rooms,
     "to the next join (memberships over a lowered limit are kept)"},
};

void server_refresh_settings(void)
{
    for (size_t i = 0; i < sizeof POLICY_SETTINGS / sizeof POLICY_SETTINGS[0]; i++) {
        const struct policy_setting *s = &POLICY_SETTINGS[i];
        int64_t v = script_setting(g_srv.script, s->key, s->dflt);
        if (v < 1) v = 1;   /* the host refuses non-positive values in M.config; env-only ones too */
        if (*s->value && v != *s->value)
            LOGI("server", "policy setting %s: %lld -> %lld, applies %s", s->key,
                 (long long)*s->value, (long long)v, s->applies);
        *s->value = v;
    }
    if (g_srv.presence) presence_set_ttl(g_srv.presence, (uint32_t)g_srv.presence_ttl_ms);
    if (g_srv.presence_ttl_ms <= g_srv.heartbeat_ms)
        LOGW("server", "presence_ttl_ms (%lld) <= heartbeat_ms (%lld): users will flicker out of "
             "presence between heartbeats", (long long)g_srv.presence_ttl_ms,
             (long long)g_srv.heartbeat_ms);
}

static double g_rss(void *ud)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) { if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0; fclose(f); }
    return (double)rss * (double)sysconf(_SC_PAGESIZE);
}

static double g_cpu(void *ud)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static double g_fds(void *ud)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return 0;
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n > 2 ? n - 3 : 0;   /* ., .. and the dir's own fd */
}

static double g_rooms(void *ud) { return (double)room_count(); }

static void on_flush(uv_prepare_t *h) { conn_flush_all(); }

static void lws_emit(int level, const char *line)
{
    size_t n = strlen(line);
    char b[1024];
    snprintf(b, sizeof b, "%.*s", (int)(n && line[n - 1] == '\n' ? n - 1 : n), line);
    log_msg(level == LLL_ERR ? LOG_ERROR : LOG_WARN, "lws", "%s", b);
}

static void on_signal(uv_signal_t *h, int signum)
{
    if (signum == SIGHUP) g_srv.sig_hup = 1;
    else g_srv.sig_term = 1;
}

static void on_store_drained(void *ud) { g_store_drained = 1; }

static void close_cb(uv_handle_t *h) { (void)h; }

static void stop_everything(void)
{
    if (g_stopping) return;
    g_stopping = 1;
    LOGI("server", "drained; stopping");
    uv_timer_stop(&g_tick);
    uv_close((uv_handle_t *)&g_tick, close_cb);
    uv_prepare_stop(&g_flush);
    uv_close((uv_handle_t *)&g_flush, close_cb);
    uv_close((uv_handle_t *)&g_sighup, close_cb);
    uv_close((uv_handle_t *)&g_sigterm, close_cb);
    uv_close((uv_handle_t *)&g_sigint, close_cb);
    listener_close();
    lws_context_destroy(g_srv.lws);
    g_srv.lws = NULL;
    wsread_shutdown();
    presence_free(g_srv.presence);
    g_srv.presence = NULL;
    readstate_shutdown();      /* before the store: its statements then answer nobody */
    retention_shutdown();
    publish_store_gone();      /* the bus answers its reads below: nothing writes to it */
    if (g_srv.store) { store_free(g_srv.store); g_srv.store = NULL; }
    /* before the bus: what waits on it (a publish's user rate) goes on */
    climit_set_store(g_limits, NULL);
    uconns_stop();
    api_set_store(NULL);
    chat_admin_set_store(NULL);
    adminstore_free(g_admin);
    g_admin = NULL;
    bus_free(g_srv.bus);
    g_srv.bus = NULL;
    ctl_shutdown();   /* after the bus answered what it held */
}

static void on_tick(uv_timer_t *h)
{
    static uint64_t last_expiry;
    if (g_srv.sig_hup) {
        g_srv.sig_hup = 0;
        char err[512];
        uint64_t t0 = mono_ns();
        if (script_reload(g_srv.script, err, sizeof err) == 0) {
            server_refresh_settings();
            LOGI("server", "SIGHUP: scripts reloaded (version %llu) in %.2f ms",
                 (unsigned long long)script_version(g_srv.script), (double)(mono_ns() - t0) / 1e6);
        } else {
            LOGE("server", "SIGHUP: reload failed, keeping the running policy: %s", err);
        }
    }
    if (g_srv.sig_term && !g_srv.draining) {
        g_srv.draining = 1;
        g_drain_started = mono_ms();
        LOGI("server", "SIGTERM: draining %zu connections", conn_count());
        listener_close_shared();
        chat_drain_all();
        if (g_srv.store) store_drain(g_srv.store, on_store_drained, NULL);
        else g_store_drained = 1;
    }
    if (g_srv.draining) {
        int timed_out = mono_ms() - g_drain_started > (uint64_t)g_srv.cfg.drain_ms;
        static uint64_t idle_since;
        /* once the last connection is gone, give presence a few ticks to
         * send its batched removes (graceful close = immediate leave) */
        if (conn_count() == 0 && g_store_drained && !idle_since) idle_since = mono_ms();
        if ((idle_since && mono_ms() - idle_since >= 300) || timed_out) {
            if (timed_out) LOGW("server", "drain timed out with %zu connections left", conn_count());
            stop_everything();
            return;
        }
    }
    uint64_t now = mono_ms();
    static uint64_t last_trim;
    api_tick();
    uconns_tick(now);
    if (now - last_trim >= 1000) {   /* rings of queues empty for 1-2 s */
        last_trim = now;
        conn_trim_queues();
    }
    memtrim_tick(now);           /* after the queues gave back their rings */
    if (now - last_expiry >= 500) {
        last_expiry = now;
        chat_expire_tokens((int64_t)(now_ms() / 1000));
        bans_prune(now_ms());
        lag_expire(mono_ns(), 10ull * 1000000000ull); /* deliveries that never came */
    }
}

int server_run(int argc, char **argv)
{
    char err[512];
    int r = config_load(&g_srv.cfg, argc, argv, err, sizeof err);
    if (r == 1) return 0;
    if (r < 0) { fprintf(stderr, "chatd: %s\n", err); return 2; }
    int lvl = log_level_parse(g_srv.cfg.log_level);
    if (lvl < 0) { fprintf(stderr, "chatd: CHAT_LOG_LEVEL: unknown level '%s'\n", g_srv.cfg.log_level); return 2; }
    log_set_level((log_level_t)lvl);
    signal(SIGPIPE, SIG_IGN);

    if (!g_srv.cfg.jwt_secret && !g_srv.cfg.jwt_public_key) {
        fprintf(stderr, "chatd: refusing to start without CHAT_JWT_SECRET or CHAT_JWT_PUBLIC_KEY\n");
        return 2;
    }
    g_srv.auth = auth_new(g_srv.cfg.jwt_secret, g_srv.cfg.jwt_public_key, err, sizeof err);
    if (!g_srv.auth) { fprintf(stderr, "chatd: %s\n", err); return 2; }
    if (g_srv.cfg.dev_tokens) {
        if (!g_srv.cfg.jwt_secret) { fprintf(stderr, "chatd: --dev-tokens needs CHAT_JWT_SECRET\n"); return 2; }
        LOGW("server", "!!! DEV TOKENS ENABLED: anyone can mint a token at /dev/token. Never in production. !!!");
    }

    g_srv.script = script_new(g_srv.cfg.scripts_dir, g_srv.cfg.node_id, err, sizeof err);
    if (!g_srv.script) { fprintf(stderr, "chatd: scripts: %s\n", err); return 2; }
    server_refresh_settings();

    g_limits = climit_new(100000);
    if (!g_limits) { fprintf(stderr, "chatd: out of memory\n"); return 2; }
    if (api_init(g_srv.cfg.api_keys, (double)g_srv.cfg.api_rate, (double)g_srv.cfg.api_burst, g_limits,
                 (uint64_t)g_srv.cfg.api_timeout_ms, err, sizeof err) < 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }

    g_srv.loop = uv_default_loop();
    chat_init();
    room_registry_init();
    metrics_gauge_fn("process_resident_memory_bytes", "Resident memory size in bytes", NULL, g_rss, NULL);
    metrics_counter_fn("process_cpu_seconds_total", "User and system CPU time in seconds", NULL, g_cpu, NULL);
    metrics_gauge_fn("process_open_fds", "Open file descriptors", NULL, g_fds, NULL);
    metrics_gauge_fn("chat_rooms_local", "Rooms with members on this node", NULL, g_rooms, NULL);
    metrics_counter("chat_drops_total", NULL, "reason=\"slow_consumer\"");
    conn_metrics_init();
    ws_metrics_init();
    {
        char l[256];
        snprintf(l, sizeof l, "node=\"%.100s\",redis=\"%s\",postgres=\"%s\"", g_srv.cfg.node_id,
                 g_srv.cfg.redis_url ? "on" : "off", g_srv.cfg.database_url ? "on" : "off");
        metric_set(metrics_gauge("chat_node_info", "This node's id and modes (value 1)", l), 1);
    }

    /* with a database, publishes stay "unstored" in Redis until committed,
     * so a surviving node stores those of a node that died in between */
    bus_opts bo = {g_srv.cfg.redis_url, (size_t)g_srv.cfg.recent_max, (uint32_t)g_srv.cfg.idempotency_ttl_s,
                   g_srv.cfg.database_url != NULL, (uint32_t)g_srv.cfg.backfill_grace_ms,
                   (uint32_t)g_srv.cfg.backfill_check_rooms, (uint32_t)g_srv.cfg.backfill_check_per_room,
                   (uint32_t)g_srv.cfg.redis_linger_ms, (uint32_t)srv_read_deadline_ms()};
    bus_handlers bh = {chat_bus_message, chat_bus_gap, chat_bus_emit, chat_bus_ready,
                       publish_bus_unstored, g_srv.cfg.database_url ? publish_bus_seed : NULL,
                       ctl_bus_message, g_srv.cfg.database_url ? publish_bus_check : NULL};
    g_srv.bus = bus_new(g_srv.loop, &bo, &bh, NULL, err, sizeof err);
    if (!g_srv.bus) { fprintf(stderr, "chatd: bus: %s\n", err); return 2; }
    ctl_init(g_srv.loop, g_srv.bus, g_srv.cfg.node_id);
    chat_admin_init();
    if (g_srv.cfg.redis_url) {
        g_admin = adminstore_new(g_srv.loop, g_srv.cfg.redis_url, chat_admin_resync, NULL, err, sizeof err);
        if (!g_admin) { fprintf(stderr, "chatd: redis (server API state): %s\n", err); return 2; }
        climit_set_store(g_limits, g_admin);
        api_set_store(g_admin);
        chat_admin_set_store(g_admin);
    }
    if (!g_srv.cfg.redis_url) LOGI("server", "single-node mode (no CHAT_REDIS_URL): in-process fan-out");

    if (g_srv.cfg.database_url) {
        store_opts so = {g_srv.cfg.database_url, (int)g_srv.cfg.batch_max, (int)g_srv.cfg.batch_ms,
                         (int)g_srv.cfg.pending_max};
        g_srv.store = store_new(g_srv.loop, &so, err, sizeof err);
        if (!g_srv.store) { fprintf(stderr, "chatd: store: %s\n", err); return 2; }
    } else {
        LOGW("server", "!!! NO CHAT_DATABASE_URL: messages are NOT stored; acks are not durable and history is off !!!");
    }
    publish_attach(g_srv.bus, g_srv.store, (size_t)g_srv.cfg.pending_max);
    readstate_opts rso = {(int)g_srv.cfg.read_batch_ms, (int)g_srv.cfg.batch_max,
                          (int)g_srv.cfg.read_lookup_timeout_ms};
    readstate_init(g_srv.loop, g_srv.store, g_srv.bus, &rso);
    retention_opts rto = {g_srv.cfg.retention_interval_ms, g_srv.cfg.retention_batch,
                          g_srv.cfg.retention_batch_ms};
    retention_init(g_srv.loop, g_srv.store, g_srv.script, &rto);
    {
        double r = (double)g_srv.cfg.user_msg_rate, b = (double)g_srv.cfg.user_msg_burst;
        publish_set_user_rate(g_limits, r, b >= 1 ? b : 2 * r);
    }

    presence_opts po = {g_srv.cfg.redis_url, g_srv.cfg.node_id, (uint32_t)g_srv.presence_ttl_ms, 0,
                        (uint32_t)g_srv.cfg.redis_linger_ms};
    presence_handlers ph = {chat_presence_transition};
    g_srv.presence = presence_new(g_srv.loop, &po, &ph, NULL, err, sizeof err);
    if (!g_srv.presence) { fprintf(stderr, "chatd: presence: %s\n", err); return 2; }

    if (client_ip_set_trusted(g_srv.cfg.trusted_proxies, err, sizeof err) < 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    connlimit_init(g_srv.cfg.max_conns_per_ip, g_srv.cfg.max_conns_per_user);
    /* with Redis the per-user limit holds across nodes too */
    uconns_init(g_admin, g_srv.cfg.node_id, g_srv.cfg.max_conns_per_user,
                (uint64_t)g_srv.cfg.user_conns_ttl_ms);
    if (wsread_init(g_srv.loop, err, sizeof err) < 0) { fprintf(stderr, "chatd: %s\n", err); return 2; }
    /* a worker of chatd --workers (core/workers.h) accepts on the shared
     * port and alone on its own port (its /metrics, /readyz) */
    int worker = g_srv.cfg.workers > 1 && g_srv.cfg.worker_port;
    listener_opts lo = {4096, (uint32_t)g_srv.cfg.accept_pause_ms,
                        (uint32_t)g_srv.cfg.handshake_timeout_ms, (uint32_t)g_srv.cfg.max_header_bytes};
    if (listener_init(g_srv.loop, &lo, err, sizeof err) < 0 ||
        (worker && listener_add(g_srv.cfg.listen_host, g_srv.cfg.listen_port, 1, err, sizeof err) < 0) ||
        listener_add(g_srv.cfg.listen_host, worker ? (int)g_srv.cfg.worker_port : g_srv.cfg.listen_port, 0,
                     err, sizeof err) < 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_emit);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    void *loops[1] = {g_srv.loop};
    /* chatd accepts (listener.c) and hands sockets to lws */
    info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    info.protocols = ws_protocols;
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_VALIDATE_UTF8 |
                   LWS_SERVER_OPTION_DISABLE_IPV6;
    info.foreign_loops = loops;
    /* No lws "validity" pings: lws keeps one sorted timer list for them and
     * inserts linearly (O(connections) per connect and per ping/pong; at 15k
     * connections the 300 s ping storm took 66% of a core). Liveness is the
     * protocol's heartbeat (presence) plus TCP keepalive for dead peers. */
    static const lws_retry_bo_t no_validity = {.secs_since_valid_ping = 0, .secs_since_valid_hangup = 0};
    info.retry_and_idle_policy = &no_validity;
    info.ka_time = 60;
    info.ka_probes = 3;
    info.ka_interval = 10;
    /* above CHAT_MAX_HEADER_BYTES: the listener answers 431 before lws,
     * which would drop an overflowing head silently */
    info.max_http_header_data = (unsigned short)(g_srv.cfg.max_header_bytes + 4096 > 65535
                                                 ? 65535 : g_srv.cfg.max_header_bytes + 4096);
    info.timeout_secs = 10;
    info.pt_serv_buf_size = 32768;
    info.vhost_name = "chatd";
    g_srv.lws = lws_create_context(&info);
    struct lws_vhost *vh = g_srv.lws ? lws_get_vhost_by_name(g_srv.lws, info.vhost_name) : NULL;
    if (!vh) {
        fprintf(stderr, "chatd: cannot start the HTTP/WebSocket server\n");
        return 2;
    }
    listener_start(vh);
    if (server_on_listening) server_on_listening();

    uv_prepare_init(g_srv.loop, &g_flush);
    uv_prepare_start(&g_flush, on_flush);
    memtrim_init((uint64_t)g_srv.cfg.malloc_trim_ms);
    uv_timer_init(g_srv.loop, &g_tick);
    uv_timer_start(&g_tick, on_tick, 100, 100);
    uv_signal_init(g_srv.loop, &g_sighup);
    uv_signal_start(&g_sighup, on_signal, SIGHUP);
    uv_signal_init(g_srv.loop, &g_sigterm);
    uv_signal_start(&g_sigterm, on_signal, SIGTERM);
    uv_signal_init(g_srv.loop, &g_sigint);
    uv_signal_start(&g_sigint, on_signal, SIGINT);

    LOGI("server", "chatd node %s listening on http://%s (scripts %s, redis %s, postgres %s)",
         g_srv.cfg.node_id, g_srv.cfg.listen, g_srv.cfg.scripts_dir,
         g_srv.cfg.redis_url ? "on" : "off", g_srv.cfg.database_url ? "on" : "off");

    uv_run(g_srv.loop, UV_RUN_DEFAULT);

    /* everything is closed; release what remains */
    script_free(g_srv.script);
    auth_free(g_srv.auth);
    api_shutdown();
    bans_free();
    climit_free(g_limits);
    room_registry_free();
    chat_shutdown();
    connlimit_free();
    client_ip_free();
    uv_loop_close(g_srv.loop);
    metrics_free_all();
    LOGI("server", "bye");
    return g_srv.exit_code;
}
