/* srv: the one instance of the process-wide context (see srv.h). */
#include "srv.h"

server g_srv;

#define SRV_READ_DEADLINE_MS 5000

uint64_t srv_read_deadline_ms(void)
{
    uint64_t ms = g_srv.cfg.handshake_timeout_ms > 0 ? (uint64_t)g_srv.cfg.handshake_timeout_ms / 2 : 0;
    return ms < SRV_READ_DEADLINE_MS ? ms : SRV_READ_DEADLINE_MS;
}
