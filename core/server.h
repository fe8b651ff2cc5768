/* server: the process-wide wiring: config, the libuv loop, the lws context,
 * and the modules (auth, script, bus, store, presence). One instance,
 * g_srv, owned by server.c; every other module reaches the others here.
 * Also owns the tick (expiry, signal flags, gauges) and the drain. */
#ifndef CHATD_SERVER_H
#define CHATD_SERVER_H
#include <uv.h>
#include <libwebsockets.h>
#include "auth.h"
#include "bus.h"
#include "config.h"
#include "presence.h"
#include "script.h"
#include "store.h"

typedef struct server {
    config cfg;
    uv_loop_t *loop;
    struct lws_context *lws;
    auth_ctx *auth;
    script_host *script;
    bus *bus;
    store *store;           /* NULL: no durable history */
    presence *presence;
    int draining;
    int exit_code;
    volatile int sig_hup, sig_term;
    /* policy timings, refreshed on reload */
    int64_t heartbeat_ms, presence_ttl_ms, typing_ttl_ms, max_rooms;
} server;

extern server g_srv;

int server_run(int argc, char **argv);
/* Re-reads the timing settings from the script host (after reload). */
void server_refresh_settings(void);
/* Called once server_run's listeners accept connections (NULL: nothing):
 * a worker of chatd --workers tells its supervisor (workers.c). */
extern void (*server_on_listening)(void);

#endif
