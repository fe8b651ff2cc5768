/* test_drain: SIGTERM's drain (chat_drain_all) closes every connection
 * 1001 "server restart" (protocol.md "Running"), with the server_restart
 * hint queued first when the queue has room for it, and 1001 all the same
 * when it has none (the hint pushed over a full queue closed it 1008
 * "slow consumer"). lws is faked as in test_conn_oom (no socket: what is
 * queued stays queued); the connections are real conn.c objects. */
#define _GNU_SOURCE
#include "chat.h"
#include "check.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "srv.h"
#include <stdio.h>
#include <string.h>

#include "lws_fake.h"

#define QMAX 4

static conn *new_conn(identity *id)
{
    conn *c = conn_new((struct lws *)id /* never used: lws is faked */, id, "lobby", "127.0.0.1");
    if (c) outq_init(&c->q, QMAX, 1 << 20);
    return c;
}

static int queued_hint(const conn *c)
{
    for (uint32_t i = 0; i < c->q.count; i++) {
        const msg *m = c->q.ring[(c->q.head + i) % c->q.cap];
        if (memmem(m->buf + LWS_PRE, m->len, "server_restart", 14)) return 1;
    }
    return 0;
}

int main(void)
{
    log_set_level(LOG_ERROR);
    g_srv.loop = uv_default_loop();
    g_srv.cfg.max_queue = QMAX;
    g_srv.cfg.max_queue_bytes = 1 << 20;
    conn_metrics_init();
    identity ia = {.user = "alice", .name = "Alice", .exp = 4102444800};
    identity ib = {.user = "bob", .name = "Bob", .exp = 4102444800};
    conn *roomy = new_conn(&ia), *full = new_conn(&ib);
    CHECK(roomy && full, "connections");
    if (!roomy || !full) return check_summary("test_drain");
    CHECK(conn_send_text(roomy, "{\"type\":\"x\"}", 12) == 0, "one frame queued");
    for (int i = 0; i < QMAX; i++)
        CHECK(conn_send_text(full, "{\"type\":\"x\"}", 12) == 0, "frame %d queued", i);
    CHECK(full->q.count == QMAX && !conn_is_closing(full), "a full queue, still open");
    chat_drain_all();
    CHECK(conn_is_closing(roomy) && roomy->close_code == 1001, "room left: closes 1001 (%u)",
          roomy->close_code);
    CHECK(queued_hint(roomy) && roomy->q.count == 2, "room left: the hint is queued after the frame");
    CHECK(conn_is_closing(full) && full->close_code == 1001,
          "full queue: closes 1001 after what it holds, not 1008 (%u %s)", full->close_code,
          full->close_reason ? full->close_reason : "");
    CHECK(!queued_hint(full) && full->q.count == QMAX, "full queue: no hint over the bounds");
    conn_mark_closed(roomy);
    conn_destroy(roomy);
    conn_mark_closed(full);
    conn_destroy(full);
    uv_loop_close(g_srv.loop);
    metrics_free_all();
    return check_summary("test_drain");
}
