/* config: every operator setting, from defaults, CHAT_* environment
 * variables and --flags (the flag wins), per protocol.md "Running".
 * Owns: the config struct (strings point into argv/environ or static). */
#ifndef CHATD_CONFIG_H
#define CHATD_CONFIG_H
#include <stddef.h>
#include <stdint.h>

/* CHAT_MAX_FRAME ceiling: a partial message and its doubling buffer stay
 * below 2^31 bytes (conn.h: rx_len, rx_cap are 32-bit). */
#define CONFIG_MAX_FRAME_MAX (1 << 30)

/* The backfill sweep round's limits (CHAT_BACKFILL_CHECK_ROOMS,
 * CHAT_BACKFILL_CHECK_PER_ROOM): defaults (every room with old entries each
 * round; a dm room has ~1 entry), the ceiling of each, and of their
 * product: the pairs one round may list, which size its reply, its check
 * and its settles. The bus takes the defaults when given 0. */
#define CONFIG_BACKFILL_CHECK_ROOMS 2000
#define CONFIG_BACKFILL_CHECK_PER_ROOM 500
#define CONFIG_BACKFILL_CHECK_MAX 100000
#define CONFIG_REDIS_LINGER_MAX_MS 100   /* CHAT_REDIS_LINGER_MS: more is a lag, not a batch */
#define CONFIG_BACKFILL_CHECK_PAIRS_MAX 1000000
#define CONFIG_WORKERS_MAX 64          /* CHAT_WORKERS: the supervisor's table (workers.c) */

typedef struct config {
    const char *listen;        /* host:port */
    char listen_host[64];
    int listen_port;
    const char *redis_url;     /* NULL: single-node mode */
    const char *database_url;  /* NULL: no durable history */
    const char *jwt_secret;
    const char *jwt_public_key;
    const char *scripts_dir;
    const char *node_id;
    char node_id_buf[128];
    const char *web_dir;
    const char *log_level;
    int64_t max_queue;         /* frames */
    int64_t max_queue_bytes;
    int64_t max_frame;         /* at most CONFIG_MAX_FRAME_MAX (conn.h keeps message lengths in 32 bits) */
    int64_t recent_max;        /* recent buffer per room */
    int64_t replay_max;        /* most messages replayed for since= */
    int64_t batch_max, batch_ms, pending_max;  /* Postgres group commit */
    int64_t redis_linger_ms;   /* Redis group commit: commands wait this long to share a write */
    int64_t drain_ms;          /* SIGTERM: longest wait for queues to flush */
    int64_t backfill_grace_ms; /* age before another node stores an unstored message */
    int64_t backfill_check_rooms, backfill_check_per_room; /* a sweep round's limits */
    int64_t read_batch_ms;     /* read state: wait for company before a batch */
    int64_t read_lookup_timeout_ms; /* a join waits this long for its read_seq */
    int64_t retention_interval_ms, retention_batch, retention_batch_ms; /* history retention */
    int64_t idempotency_ttl_s; /* how long a client message id is remembered */
    int dev_tokens;
    const char *api_keys;      /* server API keys (NULL: /api/ is off) */
    int64_t api_rate, api_burst;          /* per key, across nodes (0: off) */
    int64_t api_timeout_ms;    /* a publish waits this long for its durable commit */
    int64_t user_msg_rate, user_msg_burst; /* per user, across nodes (0: off) */
    int64_t workers;           /* --workers: 1 = this process is the node (core/workers.h) */
    int64_t worker_port;       /* a worker's own port (the supervisor: the first one; 0 = listen port + 1) */
    /* the network edge (listener.c, limits.c, client_ip.c, ws.c) */
    int64_t accept_pause_ms;   /* pause after running out of fds */
    int64_t malloc_trim_ms;    /* memtrim.h: trim interval, 0 off */
    int64_t max_conns_per_ip;  /* 0: unlimited */
    int64_t max_conns_per_user;/* per node, and across nodes with Redis; 0: unlimited */
    int64_t user_conns_ttl_ms; /* a node's per-user counts in Redis expire after this */
    int64_t handshake_timeout_ms;
    int64_t max_header_bytes;  /* first request head; larger: 431 */
    const char *trusted_proxies;  /* IPs/CIDRs whose X-Forwarded-For is believed */
    const char *allowed_origins;  /* NULL: any Origin */
    /* protocol.md "Running": CHAT_HEARTBEAT_MS / CHAT_PRESENCE_TTL_MS /
     * CHAT_TYPING_TTL_MS (and their flags) override the policy's timing
     * defaults. 0: unset (M.config, else 10000 / 30000 / 5000). Checked
     * here (1 to CONFIG_INT_MAX) and put back into the environment, where
     * the policy layer (script_setting, the M.config env override) reads
     * them: so a flag wins over the env. */
    int64_t heartbeat_ms, presence_ttl_ms, typing_ttl_ms;
} config;

/* the largest value of an integer setting (but CHAT_MAX_QUEUE_BYTES, a
 * size_t) and of an integer the policy's M.config gives the core: the core
 * keeps them in int / uint32_t */
#define CONFIG_INT_MAX 2147483647

/* 0 ok; -1 with err (unknown flag, bad number, bad listen address). A
 * --help prints usage to stdout and returns 1. */
int config_load(config *c, int argc, char **argv, char *err, size_t errlen);
void config_usage(void);

#endif
