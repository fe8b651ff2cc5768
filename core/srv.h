/* srv: the process-wide context, g_srv: the config, the libuv loop, the
 * lws context, the modules (auth, script, bus, store, presence), the drain
 * flag and the policy timings. Owns nothing it points to: server.c (the top
 * floor) fills it in at start and on reload and frees the modules; the
 * handlers below it (ws, wsread, http, api, chat*) read it to reach the
 * modules. It sits above the modules it names and below every handler, so a
 * handler reaches a module without including server.h. */
#ifndef CHATD_SRV_H
#define CHATD_SRV_H
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

/* How long a read that a client awaits (HTTP history, presence, unread; a
 * join's replay from Postgres) waits for the store or presence: 5 s, at
 * most half CHAT_HANDSHAKE_TIMEOUT_MS (which would close an HTTP connection
 * with no status). Past it the reader answers without it (503, or the
 * join's "unavailable"): a stalled Postgres, or a read queued behind a
 * stuck statement on the store's connection, never leaves a client
 * waiting. */
uint64_t srv_read_deadline_ms(void);

#endif
