/* config: see config.h. One table lists every setting once: flag, env,
 * type, default, help and, for an integer, its range: set() checks every
 * value of every source (default, env, flag) against it. */
#define _GNU_SOURCE
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* K_OVERRIDE: an integer that overrides the policy's M.config (0: unset,
 * also when set but empty), put back into the environment at the end,
 * where the policy layer reads it (script_setting, the M.config env
 * override): so a flag wins over the env. */
enum ktype { K_STR, K_INT, K_BOOL, K_OVERRIDE };

typedef struct opt {
    const char *flag, *env;
    enum ktype type;
    size_t off;
    const char *dflt;
    const char *help;
    int64_t min, max;   /* K_INT, K_OVERRIDE: the values it takes */
} opt;

#define O(f) offsetof(config, f)
#define STR_(x) #x
#define STR(x) STR_(x) /* a default from its config.h constant */
#define NO_RANGE 0, 0  /* a string or a boolean */
static const opt OPTS[] = {
    {"--listen", "CHAT_LISTEN", K_STR, O(listen), "127.0.0.1:8080", "address:port for HTTP and WebSocket", NO_RANGE},
    {"--redis", "CHAT_REDIS_URL", K_STR, O(redis_url), NULL, "redis://[user:pass@]host:port[/db], rediss://..., redis+cluster://host:port[,host:port...], unix:///path/redis.sock (unset: single-node mode)", NO_RANGE},
    {"--database", "CHAT_DATABASE_URL", K_STR, O(database_url), NULL, "libpq conninfo or postgresql:// URL (unset: no durable history)", NO_RANGE},
    {"--jwt-secret", "CHAT_JWT_SECRET", K_STR, O(jwt_secret), NULL, "HS256 secret", NO_RANGE},
    {"--jwt-public-key", "CHAT_JWT_PUBLIC_KEY", K_STR, O(jwt_public_key), NULL, "PEM public key file (RS256/ES256)", NO_RANGE},
    {"--scripts", "CHAT_SCRIPTS", K_STR, O(scripts_dir), "scripts/", "folder of the Lua room policy (re-read on SIGHUP; unset and no ./scripts: found next to the binary)", NO_RANGE},
    {"--node-id", "CHAT_NODE_ID", K_STR, O(node_id), NULL, "node id (default hostname-pid)", NO_RANGE},
    {"--web", "CHAT_WEB_DIR", K_STR, O(web_dir), "web/", "folder served at / (unset and no ./web: found next to the binary)", NO_RANGE},
    {"--log-level", "CHAT_LOG_LEVEL", K_STR, O(log_level), "info", "debug|info|warn|error", NO_RANGE},
    {"--heartbeat-ms", "CHAT_HEARTBEAT_MS", K_OVERRIDE, O(heartbeat_ms), NULL, "heartbeat interval (ms) announced in welcome; overrides the policy's config.heartbeat_ms (unset: the policy's, else 10000)", 1, CONFIG_INT_MAX},
    {"--presence-ttl-ms", "CHAT_PRESENCE_TTL_MS", K_OVERRIDE, O(presence_ttl_ms), NULL, "presence TTL (ms): a user without a heartbeat for this long leaves; overrides config.presence_ttl_ms (unset: the policy's, else 30000)", 1, CONFIG_INT_MAX},
    {"--typing-ttl-ms", "CHAT_TYPING_TTL_MS", K_OVERRIDE, O(typing_ttl_ms), NULL, "ttl_ms of typing frames; overrides config.typing_ttl_ms (unset: the policy's, else 5000)", 1, CONFIG_INT_MAX},
    {"--max-queue", "CHAT_MAX_QUEUE", K_INT, O(max_queue), "1024", "outbound queue bound per connection (frames)", 1, CONFIG_INT_MAX},
    {"--max-queue-bytes", "CHAT_MAX_QUEUE_BYTES", K_INT, O(max_queue_bytes), "1048576", "outbound queue bound per connection (bytes)", 1024, INT64_MAX},
    {"--max-frame", "CHAT_MAX_FRAME", K_INT, O(max_frame), "65536", "largest client frame (bytes, 128 to 1 GiB); larger closes with 1009", 128, CONFIG_MAX_FRAME_MAX},
    {"--recent-max", "CHAT_RECENT_MAX", K_INT, O(recent_max), "1000", "recent buffer per room (messages) for recovery", 0, CONFIG_INT_MAX},
    {"--replay-max", "CHAT_REPLAY_MAX", K_INT, O(replay_max), "1000", "most messages replayed for since= before gap_too_large", 0, CONFIG_INT_MAX},
    {"--batch-max", "CHAT_BATCH_MAX", K_INT, O(batch_max), "500", "Postgres rows per batch", 0, CONFIG_INT_MAX},
    {"--redis-linger-ms", "CHAT_REDIS_LINGER_MS", K_INT, O(redis_linger_ms), "0", "Redis: the bus's and presence's command connections (not subscriptions) write at most once per this many ms: a command queued sooner after a write waits for the window's end, to share one write and one Redis round; one queued on a connection quiet that long leaves at once (0: every loop turn's commands leave at its end)", 0, CONFIG_REDIS_LINGER_MAX_MS},
    {"--batch-ms", "CHAT_BATCH_MS", K_INT, O(batch_ms), "4", "Postgres batch window (ms): a batch leaves this long after its first row (or when full)", 0, CONFIG_INT_MAX},
    {"--pending-max", "CHAT_PENDING_MAX", K_INT, O(pending_max), "100000", "Postgres pending writes bound", 0, CONFIG_INT_MAX},
    {"--drain-ms", "CHAT_DRAIN_MS", K_INT, O(drain_ms), "5000", "SIGTERM: longest wait for queues and history writes", 0, CONFIG_INT_MAX},
    {"--idempotency-ttl-s", "CHAT_IDEMPOTENCY_TTL_S", K_INT, O(idempotency_ttl_s), "600", "how long (s) a client message id is remembered: a resend with the same id within it is never stored or broadcast twice (1 to 604800)", 1, 604800},
    {"--backfill-grace-ms", "CHAT_BACKFILL_GRACE_MS", K_INT, O(backfill_grace_ms), "3000", "age (ms) after which a published but unstored message is stored by a surviving node (100 to 3600000)", 100, 3600000},
    {"--backfill-check-rooms", "CHAT_BACKFILL_CHECK_ROOMS", K_INT, O(backfill_check_rooms), STR(CONFIG_BACKFILL_CHECK_ROOMS), "backfill sweeper: most rooms one round lists per Redis node (1 to " STR(CONFIG_BACKFILL_CHECK_MAX) "); a round that leaves old rooms unlisted is followed by another as soon as it settled", 1, CONFIG_BACKFILL_CHECK_MAX},
    {"--backfill-check-per-room", "CHAT_BACKFILL_CHECK_PER_ROOM", K_INT, O(backfill_check_per_room), STR(CONFIG_BACKFILL_CHECK_PER_ROOM), "backfill sweeper: most old seqs of one room one round lists (1 to " STR(CONFIG_BACKFILL_CHECK_MAX) "; rooms x this at most " STR(CONFIG_BACKFILL_CHECK_PAIRS_MAX) ")", 1, CONFIG_BACKFILL_CHECK_MAX},
    {"--workers", "CHAT_WORKERS", K_INT, O(workers), "1", "worker processes sharing the port (SO_REUSEPORT), each a node <node-id>-w<i>; >1 needs CHAT_REDIS_URL", 1, CONFIG_WORKERS_MAX},
    {"--worker-port", "CHAT_WORKER_PORT", K_INT, O(worker_port), "0", "with --workers: worker i also listens alone on this port + i (its /metrics); 0 = listen port + 1", 0, CONFIG_INT_MAX},
    {"--read-batch-ms", "CHAT_READ_BATCH_MS", K_INT, O(read_batch_ms), "5", "read state: wait (ms) for more read marks before one batched write", 0, CONFIG_INT_MAX},
    {"--read-lookup-timeout-ms", "CHAT_READ_LOOKUP_TIMEOUT_MS", K_INT, O(read_lookup_timeout_ms), "2000", "a join waits this long for its read_seq (then answers read_seq 0 with read_seq_pending true and tells it later)", 0, CONFIG_INT_MAX},
    {"--retention-interval-ms", "CHAT_RETENTION_INTERVAL_MS", K_INT, O(retention_interval_ms), "60000", "history retention: time between the starts of two passes", 0, CONFIG_INT_MAX},
    {"--retention-batch", "CHAT_RETENTION_BATCH", K_INT, O(retention_batch), "500", "history retention: most rows deleted per statement", 0, CONFIG_INT_MAX},
    {"--retention-batch-ms", "CHAT_RETENTION_BATCH_MS", K_INT, O(retention_batch_ms), "100", "history retention: pause (ms) between two statements of a pass", 0, CONFIG_INT_MAX},
    {"--api-keys", "CHAT_API_KEYS", K_STR, O(api_keys), NULL, "server API keys, comma-separated (a key under 16 bytes works, with a warning at start; unset: /api/ answers 404)", NO_RANGE},
    {"--api-rate", "CHAT_API_RATE", K_INT, O(api_rate), "0", "server API requests per second per key, across nodes (0 = no limit)", 0, CONFIG_INT_MAX},
    {"--api-burst", "CHAT_API_BURST", K_INT, O(api_burst), "0", "server API request burst per key (0 = the rate)", 0, CONFIG_INT_MAX},
    {"--api-timeout-ms", "CHAT_API_TIMEOUT_MS", K_INT, O(api_timeout_ms), "10000", "server API publish: answer 503 when not durable within this time (0 = wait)", 0, CONFIG_INT_MAX},
    {"--user-msg-rate", "CHAT_USER_MSG_RATE", K_INT, O(user_msg_rate), "0", "messages per second per user, across nodes (0 = no limit; the policy's own limit is per node)", 0, CONFIG_INT_MAX},
    {"--user-msg-burst", "CHAT_USER_MSG_BURST", K_INT, O(user_msg_burst), "0", "message burst per user (0 = twice the rate)", 0, CONFIG_INT_MAX},
    {"--dev-tokens", "CHAT_DEV_TOKENS", K_BOOL, O(dev_tokens), "0", "serve /dev/token (development only)", NO_RANGE},
    {"--max-conns-per-ip", "CHAT_MAX_CONNS_PER_IP", K_INT, O(max_conns_per_ip), "1000", "WebSocket connections per client IP on this node; more get HTTP 429 (0: unlimited; loopback addresses are not limited)", 0, CONFIG_INT_MAX},
    {"--max-conns-per-user", "CHAT_MAX_CONNS_PER_USER", K_INT, O(max_conns_per_user), "32", "WebSocket connections per user (JWT sub): on this node HTTP 429; with Redis also on all nodes together, closed 1008 right after the upgrade (0: unlimited)", 0, CONFIG_INT_MAX},
    {"--user-conns-ttl-ms", "CHAT_USER_CONNS_TTL_MS", K_INT, O(user_conns_ttl_ms), "30000", "with Redis: a node's count of a user's connections expires after this (renewed every third of it), so a dead node's connections stop counting", 600, 3600000},
    {"--trusted-proxies", "CHAT_TRUSTED_PROXIES", K_STR, O(trusted_proxies), NULL, "comma-separated IPs/CIDRs of proxies whose X-Forwarded-For is believed", NO_RANGE},
    {"--allowed-origins", "CHAT_ALLOWED_ORIGINS", K_STR, O(allowed_origins), NULL, "comma-separated Origins allowed to upgrade (exact, or https://*.example.com); unset: any", NO_RANGE},
    {"--handshake-timeout-ms", "CHAT_HANDSHAKE_TIMEOUT_MS", K_INT, O(handshake_timeout_ms), "10000", "a connection must finish its HTTP request / upgrade within this time", 100, 600000},
    {"--max-header-bytes", "CHAT_MAX_HEADER_BYTES", K_INT, O(max_header_bytes), "16384", "largest HTTP request head (request line + headers) of a new connection; larger: HTTP 431", 1024, 60000},
    {"--accept-pause-ms", "CHAT_ACCEPT_PAUSE_MS", K_INT, O(accept_pause_ms), "250", "pause of accept() after running out of file descriptors", 10, 60000},
    {"--malloc-trim-ms", "CHAT_MALLOC_TRIM_MS", K_INT, O(malloc_trim_ms), "1000", "how often (ms) to check whether to give free heap pages back to the kernel (malloc_trim: when malloc's free space grew by 256 KiB, or every 30 checks; 0: never)", 0, 3600000},
};
#define NOPTS (sizeof OPTS / sizeof OPTS[0])

static int set(config *c, const opt *o, const char *v, char *err, size_t errlen)
{
    char *base = (char *)c + o->off;
    if (o->type == K_STR) {
        *(const char **)base = (v && *v) ? v : NULL;
        return 0;
    }
    if (o->type == K_BOOL) {
        *(int *)base = v && (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0);
        return 0;
    }
    if (o->type == K_OVERRIDE && (!v || !*v)) {
        *(int64_t *)base = 0;
        return 0;
    }
    /* the core keeps most of these in int / uint32_t: a value beyond the
     * range used to wrap (CHAT_MAX_QUEUE=4294967296 became a 1-frame queue:
     * every client closed 1008) */
    char *end;
    errno = 0;
    long long n = strtoll(v ? v : "", &end, 10);
    if (errno || !v || !*v || *end || n < o->min || n > o->max) {
        snprintf(err, errlen, "%s: expected an integer from %lld to %lld, got '%s'", o->env,
                 (long long)o->min, (long long)o->max, v ? v : "");
        return -1;
    }
    *(int64_t *)base = n;
    return 0;
}

void config_usage(void)
{
    printf("usage: chatd [flags]\nEvery flag has an environment variable; the flag wins.\n\n");
    for (size_t i = 0; i < NOPTS; i++)
        printf("  %-18s %-22s %s%s%s%s\n", OPTS[i].flag, OPTS[i].env, OPTS[i].help,
               OPTS[i].dflt ? " (default " : "", OPTS[i].dflt ? OPTS[i].dflt : "",
               OPTS[i].dflt ? ")" : "");
}

/* argv[*a] as a flag: its option and value (the next word unless given
 * with '=' or a boolean). 1: --help; -1: err set. */
static int flag_at(int argc, char **argv, int *a, const opt **op, const char **valp, char *err, size_t errlen)
{
    if (strcmp(argv[*a], "--help") == 0 || strcmp(argv[*a], "-h") == 0) return 1;
    const opt *o = NULL;
    const char *val = NULL;
    for (size_t i = 0; i < NOPTS; i++) {
        size_t fl = strlen(OPTS[i].flag);
        if (strncmp(argv[*a], OPTS[i].flag, fl) == 0 && (argv[*a][fl] == 0 || argv[*a][fl] == '=')) {
            o = &OPTS[i];
            if (argv[*a][fl] == '=') val = argv[*a] + fl + 1;
            break;
        }
    }
    if (!o) { snprintf(err, errlen, "unknown flag '%s' (see --help)", argv[*a]); return -1; }
    if (!val) {
        if (o->type == K_BOOL) val = "1";
        else if (*a + 1 < argc) val = argv[++*a];
        else { snprintf(err, errlen, "%s needs a value", o->flag); return -1; }
    }
    *op = o;
    *valp = val;
    return 0;
}

int config_load(config *c, int argc, char **argv, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    /* the flag wins: a setting given by a flag ignores its env variable
     * (whatever it holds), so flags are read first, applied last */
    unsigned char by_flag[NOPTS] = {0};
    for (int a = 1; a < argc; a++) {
        const opt *o;
        const char *val;
        int r = flag_at(argc, argv, &a, &o, &val, err, errlen);
        if (r == 1) { config_usage(); return 1; }
        if (r < 0) return -1;
        by_flag[o - OPTS] = 1;
    }
    for (size_t i = 0; i < NOPTS; i++)
        if (OPTS[i].dflt && set(c, &OPTS[i], OPTS[i].dflt, err, errlen) < 0) return -1;
    for (size_t i = 0; i < NOPTS; i++) {
        const char *v = by_flag[i] ? NULL : getenv(OPTS[i].env);
        if (v && set(c, &OPTS[i], v, err, errlen) < 0) return -1;
    }
    for (int a = 1; a < argc; a++) {
        const opt *o;
        const char *val;
        if (flag_at(argc, argv, &a, &o, &val, err, errlen) != 0) return -1;   /* read above */
        if (set(c, o, val, err, errlen) < 0) return -1;
    }
    const char *colon = c->listen ? strrchr(c->listen, ':') : NULL;
    long port = colon ? strtol(colon + 1, NULL, 10) : -1;
    if (!colon || port <= 0 || port > 65535 || (size_t)(colon - c->listen) >= sizeof c->listen_host) {
        snprintf(err, errlen, "CHAT_LISTEN: expected address:port, got '%s'", c->listen ? c->listen : "");
        return -1;
    }
    memcpy(c->listen_host, c->listen, (size_t)(colon - c->listen));
    c->listen_host[colon - c->listen] = 0;
    c->listen_port = (int)port;
    if (!c->node_id) {
        char host[64] = "chatd";
        gethostname(host, sizeof host - 1);
        snprintf(c->node_id_buf, sizeof c->node_id_buf, "%s-%d", host, (int)getpid());
        c->node_id = c->node_id_buf;
    }
    /* the node id goes into JSON frames and metric labels unescaped */
    size_t nl = strlen(c->node_id);
    int bad_id = nl < 1 || nl > 64;
    for (size_t i = 0; i < nl && !bad_id; i++) {
        char ch = c->node_id[i];
        bad_id = !((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                   ch == '-' || ch == '_' || ch == '.' || ch == ':');
    }
    if (bad_id) {
        snprintf(err, errlen, "CHAT_NODE_ID: 1-64 characters of [A-Za-z0-9_.:-], got '%s'", c->node_id);
        return -1;
    }
    if (c->backfill_check_rooms * c->backfill_check_per_room > CONFIG_BACKFILL_CHECK_PAIRS_MAX) {
        snprintf(err, errlen, "CHAT_BACKFILL_CHECK_ROOMS x CHAT_BACKFILL_CHECK_PER_ROOM: at most %d "
                 "(pairs one sweep round may list), got %lld", CONFIG_BACKFILL_CHECK_PAIRS_MAX,
                 (long long)(c->backfill_check_rooms * c->backfill_check_per_room));
        return -1;
    }
    for (size_t i = 0; i < NOPTS; i++) {
        if (OPTS[i].type != K_OVERRIDE) continue;
        int64_t v = *(int64_t *)((char *)c + OPTS[i].off);
        char num[24];
        snprintf(num, sizeof num, "%lld", (long long)v);
        if (v ? setenv(OPTS[i].env, num, 1) : unsetenv(OPTS[i].env)) {
            snprintf(err, errlen, "%s: setenv: %s", OPTS[i].env, strerror(errno));
            return -1;
        }
    }
    if (c->replay_max < 1) c->replay_max = 1;
    if (c->read_batch_ms < 1) c->read_batch_ms = 1;
    if (c->read_lookup_timeout_ms < 10) c->read_lookup_timeout_ms = 10;
    if (c->retention_interval_ms < 100) c->retention_interval_ms = 100;
    if (c->retention_batch < 1) c->retention_batch = 1;
    return 0;
}
