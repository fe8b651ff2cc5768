/* workers: `chatd --workers N` (CHAT_WORKERS), several nodes per machine.
 * With N > 1 this process becomes a supervisor that forks N workers, each a
 * full chatd node on the bus (node id <node-id>-w<i>) listening on the shared
 * port with SO_REUSEPORT (the kernel spreads new connections) and alone on
 * its own port (CHAT_WORKER_PORT + i: its /metrics, /readyz and direct
 * clients). With N = 1 (the default) there is no supervisor: the node runs
 * in this process, as before.
 * Owns: the worker processes (fork, start-up check through a readiness
 * pipe per worker: up once it says its listeners accept, restart after a
 * crash with a capped backoff, the crash-loop report), the signals of the
 * supervisor (SIGHUP passed on: reload; SIGTERM/SIGINT passed on as SIGTERM:
 * drain) and its exit status: 0 once every worker drained and exited, 2 when
 * the workers cannot start (bad settings, port taken), 1 when a worker had to
 * be killed after the drain deadline. */
#ifndef CHATD_WORKERS_H
#define CHATD_WORKERS_H
#include <stdint.h>
#include "backoff.h"

/* The entry point of the chatd binary: runs the supervisor when the
 * settings ask for several workers, else the node itself (server_run). */
int workers_main(int argc, char **argv);

/* Restart policy of one worker slot (pure, for tests). */
typedef struct worker_restarts {
    backoff delay;          /* the core's backoff: doubling, jittered, capped */
    uint32_t streak;        /* crashes without a stable run in between */
    uint64_t total;         /* restarts of this slot since the supervisor started */
} worker_restarts;

#define WORKERS_RESTART_MIN_MS 100
#define WORKERS_RESTART_MAX_MS 10000
#define WORKERS_STABLE_MS 30000     /* a run this long resets the backoff */
#define WORKERS_CRASH_LOOP 5        /* this many crashes in a row: reported */

void workers_restarts_init(worker_restarts *r);
/* A worker exited after running for ran_ms: the delay before its restart
 * (the k-th crash of a streak waits in [MIN * 2^(k-1) / 2, MIN * 2^(k-1)],
 * capped at MAX; a run of WORKERS_STABLE_MS starts a new streak).
 * Sets *report when this crash makes the slot a crash loop (once per streak,
 * then every WORKERS_CRASH_LOOP more crashes). */
uint32_t workers_next_restart(worker_restarts *r, uint64_t ran_ms, int *report);

#endif
