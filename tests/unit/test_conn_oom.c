/* test_conn_oom: every 1011 "out of memory" close goes through conn.c's
 * conn_close_oom and is counted in chat_ws_server_errors_total{reason=
 * "out_of_memory"}: a join's hold (chat_hold.c: its record, a held frame),
 * the admission record (chat_admit.c) and the reassembly buffer of a
 * fragmented message (wsread.c). Allocation failures come from allocfail.h
 * (--wrap of malloc/calloc/realloc/free); lws is faked (--wrap of
 * lws_get_socket_fd, lws_set_timeout, lws_callback_on_writable: no socket,
 * the close frame is never written) and uconns_enabled says 1 (the
 * admission runs); the connections are real conn.c objects. */
#define _GNU_SOURCE
#include "allocfail.h"
#include "chat_admit.h"
#include "chat_hold.h"
#include "check.h"
#include "series.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "srv.h"
#include "wsread.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lws_fake.h"
int __wrap_uconns_enabled(void);
int __wrap_uconns_enabled(void) { return 1; }

static double oom_count(void) { return series("chat_ws_server_errors_total{reason=\"out_of_memory\"}"); }

static conn *new_conn(void)
{
    identity id = {.user = "alice", .name = "Alice", .exp = 4102444800};
    return conn_new((struct lws *)&id /* never used: lws is faked */, &id, "lobby", "127.0.0.1");
}

static void free_conn(conn *c)
{
    chat_hold_conn_closed(c);
    chat_admit_conn_closed(c);
    conn_mark_closed(c);
    conn_destroy(c);
}

/* closed by us with 1011 "out of memory", counted once */
static void check_oom_close(conn *c, double before, const char *what)
{
    CHECK(conn_is_closing(c), "%s: the connection is closing", what);
    CHECK(c->close_code == 1011, "%s: close code %u", what, c->close_code);
    CHECK(c->close_reason && !strcmp(c->close_reason, "out of memory"), "%s: reason %s", what,
          c->close_reason ? c->close_reason : "(none)");
    CHECK(oom_count() == before + 1, "%s: counted once (%g -> %g)", what, before, oom_count());
}

static int always_waiting(const conn *c) { (void)c; return 1; }
static void no_process(conn *c, const char *d, size_t n) { (void)c; (void)d; (void)n; }

/* chat_hold_frame while a join runs, with the next call of *armed failing:
 * calloc (the connection's hold record) or malloc (the held frame, after
 * its record was made) */
static void hold_oom(int *armed, const char *what)
{
    conn *c = new_conn();
    double before = oom_count();
    *armed = 1;
    CHECK(chat_hold_frame(c, "{}", 2) == 1, "%s: the frame is taken (and dropped)", what);
    *armed = 0;
    check_oom_close(c, before, what);
    free_conn(c);
}

static void test_hold_record(void) { hold_oom(&af_fail_calloc, "hold record"); }
static void test_held_frame(void) { hold_oom(&af_fail_malloc, "held frame"); }

static void test_admit_record(void)
{
    conn *c = new_conn();
    double before = oom_count();
    af_fail_calloc = 1;
    chat_admit_start(c, NULL);
    af_fail_calloc = 0;
    CHECK(!chat_admit_pending(c), "no admission pending");
    check_oom_close(c, before, "admission");
    free_conn(c);
}

static void test_reassembly_buffer(void)
{
    conn *c = new_conn();
    double before = oom_count();
    af_fail_realloc = 1;
    int rc = wsread_data(c, (const unsigned char *)"{\"type\":", 8, 0, 0);   /* a first fragment */
    af_fail_realloc = 0;
    CHECK(rc == 0, "the parser goes on (input is moot once closing): %d", rc);
    check_oom_close(c, before, "reassembly");
    CHECK(wsread_data(c, (const unsigned char *)"1}", 2, 1, 0) == 0 && c->rx_len == 0,
          "later fragments are ignored");
    free_conn(c);
}

int main(void)
{
    log_set_level(LOG_ERROR);
    g_srv.loop = uv_default_loop();
    g_srv.cfg.max_queue = 16;
    g_srv.cfg.max_queue_bytes = 1 << 20;
    conn_metrics_init();
    wsread_metrics_init();
    chat_hold_init(no_process, always_waiting);
    CHECK(oom_count() == 0, "the series exists from the start (%g)", oom_count());
    test_hold_record();
    test_held_frame();
    test_admit_record();
    test_reassembly_buffer();
    chat_hold_shutdown();
    chat_admit_shutdown();
    uv_loop_close(g_srv.loop);
    metrics_free_all();
    return check_summary("test_conn_oom");
}
