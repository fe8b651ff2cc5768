/* server: the process-wide wiring: it makes the config, the libuv loop,
 * the lws context and the modules (auth, script, bus, store, presence) and
 * fills g_srv (srv.h, the context the handlers below read) with them.
 * Also owns the tick (expiry, signal flags, gauges) and the drain. */
#ifndef CHATD_SERVER_H
#define CHATD_SERVER_H
#include "srv.h"

int server_run(int argc, char **argv);
/* Re-reads the timing settings from the script host (after reload). */
void server_refresh_settings(void);
/* Called once server_run's listeners accept connections (NULL: nothing):
 * a worker of chatd --workers tells its supervisor (workers.c). */
extern void (*server_on_listening)(void);

#endif
