/* test_join: the join's timers (chat_join.c).
 * - The wait for rows not stored yet (store_wait: a since older than the
 *   recent buffer while the seqs after it are broadcast but not in Postgres
 *   yet; the join reads the range again every 100 ms for up to 2 s, then
 *   answers unavailable). The op owns one step timer: a leave or a close
 *   during the wait stops it and frees the op at once (before, the step
 *   stayed armed and fired for a member that was gone).
 * - The replay's Postgres part within the read deadline (the HTTP reads'
 *   bound: half CHAT_HANDSHAKE_TIMEOUT_MS, at most 5 s), in time: a range
 *   read or a head read (Redis down) that never answers, as when the
 *   store's connection is stuck behind a blocked statement, ends the join
 *   as unavailable at the deadline, and its late answer only frees the op
 *   (before: no welcome, ever); the 2 s wait counts elapsed time, reads
 *   included (before: its 100 ms steps alone, 20 slow reads made it 20 x
 *   their time).
 * - A close while the replay's end waits for the read state lookup: the
 *   op is freed once the lookup answers (before: leaked; ASan's check).
 * - The read state lookup that did not answer in time: welcome says
 *   "read_seq":0,"read_seq_pending":true (an integer for strictly typed
 *   clients; before: null, and before that the field was left out) and the
 *   join looks it up again until it answers, then sends the user's own read receipt to
 *   the connection (before: never told); a close stops the retries.
 * The bus's replay, the store's range and head reads and the read state
 * lookup are the test's (--wrap): it answers them by hand. lws is faked as in
 * test_drain (what is queued stays queued); the connection is a real
 * conn.c object. */
#define _GNU_SOURCE
#include "chat.h"
#include "chat_join.h"
#include "check.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "readstate.h"
#include "srv.h"
#include "store.h"
#include "uvwait.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lws_fake.h"

/* the bus: one replay pending at a time, answered by the test */
static bus_replay_cb g_replay_cb;
static void *g_replay_ud;
int __wrap_bus_replay(bus *b, const char *room, uint64_t since, size_t max, bus_replay_cb cb,
                      void *ud);
int __wrap_bus_replay(bus *b, const char *room, uint64_t since, size_t max, bus_replay_cb cb,
                      void *ud)
{
    (void)b; (void)room; (void)since; (void)max;
    g_replay_cb = cb;
    g_replay_ud = ud;
    return 0;
}

/* the store: range reads counted, one pending at a time */
static store_rows_cb g_rows_cb;
static void *g_rows_ud;
static int g_ranges;
int __wrap_store_range(store *s, const char *room, uint64_t after, uint64_t before, int limit,
                       int newest, store_rows_cb cb, void *ud);
int __wrap_store_range(store *s, const char *room, uint64_t after, uint64_t before, int limit,
                       int newest, store_rows_cb cb, void *ud)
{
    (void)s; (void)room; (void)after; (void)before; (void)limit; (void)newest;
    g_rows_cb = cb;
    g_rows_ud = ud;
    g_ranges++;
    return 0;
}

/* the store's head (the join's fallback while Redis is down): one pending */
static store_head_cb g_head_cb;
static void *g_head_ud;
int __wrap_store_head(store *s, const char *room, store_head_cb cb, void *ud);
int __wrap_store_head(store *s, const char *room, store_head_cb cb, void *ud)
{
    (void)s; (void)room;
    g_head_cb = cb;
    g_head_ud = ud;
    return 0;
}

/* the read state: lookups counted, one pending at a time */
static readstate_lookup_cb g_rs_cb;
static void *g_rs_ud;
static int g_lookups;
int __wrap_readstate_lookup(const char *user, const char *room, readstate_lookup_cb cb, void *ud);
int __wrap_readstate_lookup(const char *user, const char *room, readstate_lookup_cb cb, void *ud)
{
    (void)user; (void)room;
    g_rs_cb = cb;
    g_rs_ud = ud;
    g_lookups++;
    return 0;
}

/* answers the pending lookup: status 0 with read_seq, or -1 (no answer in time) */
static void answer_lookup(int status, uint64_t read_seq)
{
    readstate_lookup_cb cb = g_rs_cb;
    void *ud = g_rs_ud;
    g_rs_cb = NULL;
    g_rs_ud = NULL;   /* nothing of the op's kept here (ASan's leak check) */
    if (cb) cb(ud, status, status == 0 ? read_seq : 0, 0);
}

/* answers the pending range read: no rows (the seqs are not stored yet) */
static void answer_no_rows(void)
{
    store_rows_cb cb = g_rows_cb;
    g_rows_cb = NULL;
    if (cb) cb(g_rows_ud, 0, NULL, 0);
}

static void count_timer(uv_handle_t *h, void *arg)
{
    if (h->type == UV_TIMER && uv_is_active(h) && h != (uv_handle_t *)&uvwait_ticker)
        ++*(int *)arg;
}

/* armed timers on the loop besides the test's own */
static int armed_timers(void)
{
    int n = 0;
    uv_walk(g_srv.loop, count_timer, &n);
    return n;
}

static int queued(const conn *c, const char *what)
{
    for (uint32_t i = 0; i < c->q.count; i++) {
        const msg *m = c->q.ring[(c->q.head + i) % c->q.cap];
        if (memmem(m->buf + LWS_PRE, m->len, what, strlen(what))) return 1;
    }
    return 0;
}

static conn *new_conn(const char *user)
{
    identity id = {0};
    id.strs = malloc(64);
    if (!id.strs) return NULL;
    snprintf(id.strs, 64, "%s", user);
    id.user = id.name = id.strs;
    id.exp = 4102444800;
    conn *c = conn_new((struct lws *)&id /* never used: lws is faked */, &id, "lobby", "127.0.0.1");
    if (c) outq_init(&c->q, 64, 1 << 20);
    else identity_clear(&id);
    return c;
}

/* a join with since=5 of a room at head 30 whose buffer no longer reaches
 * 6, Postgres without those rows: it waits (a step armed) */
static conn *join_waiting(const char *user)
{
    conn *c = new_conn(user);
    CHECK(c != NULL, "connection");
    if (!c) return NULL;
    g_ranges = 0;
    CHECK(chat_join(c, "lobby", 1, 5, NULL, 1, NULL) == 0, "join started");
    CHECK(g_replay_cb != NULL, "the bus was asked to replay");
    if (!g_replay_cb) return c;
    bus_replay_cb cb = g_replay_cb;
    g_replay_cb = NULL;
    answer_lookup(0, 3);
    cb(g_replay_ud, 1, NULL, 0, 30, "ep1");   /* the buffer does not reach since */
    CHECK(g_ranges == 1 && g_rows_cb, "Postgres asked for the range (%d)", g_ranges);
    answer_no_rows();
    CHECK(armed_timers() == 1, "one step armed while waiting (%d)", armed_timers());
    return c;
}

/* a join with since=5 whose buffer no longer reaches 6 (head 30): the
 * range read asked of Postgres, pending */
static conn *join_reading(const char *user)
{
    conn *c = new_conn(user);
    CHECK(c != NULL, "connection");
    if (!c) return NULL;
    g_ranges = 0;
    CHECK(chat_join(c, "lobby", 1, 5, NULL, 1, NULL) == 0, "join started");
    bus_replay_cb cb = g_replay_cb;
    g_replay_cb = NULL;
    answer_lookup(0, 3);
    if (cb) cb(g_replay_ud, 1, NULL, 0, 30, "ep1");
    CHECK(g_ranges == 1 && g_rows_cb, "Postgres asked for the range (%d)", g_ranges);
    return c;
}

/* waits up to ms for the join's answer: how long it took */
static uint64_t wait_answer(conn *c, uint64_t ms)
{
    uint64_t t0 = mono_ms();
    WAIT_ON(g_srv.loop, queued(c, "\"type\":\"presence_state\""), ms);
    return mono_ms() - t0;
}

/* The replay's Postgres part within the read deadline (500 ms here) */
static void read_deadline_cases(void)
{
    g_srv.cfg.handshake_timeout_ms = 1000;   /* the read deadline: half, 500 ms */

    /* the range read never answers: unavailable at the deadline */
    conn *c = join_reading("hank");
    if (c) {
        uint64_t took = wait_answer(c, 3000);
        CHECK(queued(c, "\"type\":\"welcome\"") && queued(c, "\"code\":\"unavailable\""),
              "welcome and unavailable when Postgres does not answer");
        CHECK(!queued(c, "gap_too_large"), "never gap_too_large");
        CHECK(queued(c, "\"read_seq\":3}") && !queued(c, "read_seq_pending"),
              "the read_seq looked up in time, not pending");
        CHECK(took >= 400 && took < 1500, "answered at the deadline (%llu ms)",
              (unsigned long long)took);
        CHECK(armed_timers() == 0, "nothing armed once answered (%d)", armed_timers());
        answer_no_rows();   /* the late answer: only frees the op (ASan: no leak) */
        run_on(g_srv.loop, 150);
        CHECK(g_ranges == 1, "no read after the deadline (%d)", g_ranges);
        chat_conn_closed(c);
    }

    /* the late answer after the connection closed */
    c = join_reading("ivan");
    if (c) {
        wait_answer(c, 3000);
        CHECK(queued(c, "\"code\":\"unavailable\""), "unavailable (ivan)");
        chat_conn_closed(c);
        answer_no_rows();
    }

    /* a close while the read is in flight: its deadline stopped at once */
    c = join_reading("jack");
    if (c) {
        chat_conn_closed(c);
        CHECK(armed_timers() == 0, "no deadline armed after the close (%d)", armed_timers());
        answer_no_rows();
        run_on(g_srv.loop, 100);
    }

    /* a read of the wait's steps never answers: the same deadline */
    c = join_reading("kate");
    if (c) {
        answer_no_rows();   /* not stored yet: the wait's steps */
        WAIT_ON(g_srv.loop, g_ranges == 2, 1000);
        CHECK(g_ranges == 2 && g_rows_cb, "a step read Postgres again (%d)", g_ranges);
        uint64_t took = wait_answer(c, 3000);
        CHECK(queued(c, "\"code\":\"unavailable\"") && queued(c, "\"type\":\"welcome\""),
              "unavailable when a step's read does not answer");
        CHECK(took < 1000, "answered at the deadline (%llu ms more)", (unsigned long long)took);
        CHECK(armed_timers() == 0, "nothing armed once answered (%d)", armed_timers());
        answer_no_rows();
        run_on(g_srv.loop, 150);
        CHECK(g_ranges == 2, "no read after the deadline (%d)", g_ranges);
        chat_conn_closed(c);
    }

    /* Redis down (the replay fails): the head read never answers */
    c = new_conn("liam");
    if (c) {
        CHECK(chat_join(c, "lobby", 1, 5, NULL, 1, NULL) == 0, "join started");
        bus_replay_cb cb = g_replay_cb;
        g_replay_cb = NULL;
        answer_lookup(0, 3);
        if (cb) cb(g_replay_ud, -1, NULL, 0, 0, NULL);
        CHECK(g_head_cb != NULL, "Postgres asked for the head");
        uint64_t took = wait_answer(c, 3000);
        CHECK(queued(c, "\"code\":\"unavailable\""), "unavailable when the head read does not answer");
        CHECK(took >= 400 && took < 1500, "answered at the deadline (%llu ms)",
              (unsigned long long)took);
        CHECK(armed_timers() == 0, "nothing armed once answered (%d)", armed_timers());
        store_head_cb hcb = g_head_cb;
        g_head_cb = NULL;
        if (hcb) hcb(g_head_ud, 0, 30, "ep1");   /* late: only frees */
        chat_conn_closed(c);
    }

    g_srv.cfg.handshake_timeout_ms = 10000;   /* 5 s */

    /* the wait's 2 s are elapsed time: reads that take 300 ms each end it
     * after about 2 s (before: 20 steps of 100 ms, each plus its read) */
    c = join_reading("mia");
    if (c) {
        uint64_t t0 = mono_ms();
        while (mono_ms() - t0 < 6000 && !queued(c, "unavailable")) {
            WAIT_ON(g_srv.loop, g_rows_cb != NULL || queued(c, "unavailable"), 1000);
            run_on(g_srv.loop, 300);
            answer_no_rows();
        }
        uint64_t took = mono_ms() - t0;
        CHECK(queued(c, "\"code\":\"unavailable\""), "unavailable after the wait (mia)");
        CHECK(took >= 1800 && took < 3500, "the wait ended after about 2 s (%llu ms)",
              (unsigned long long)took);
        CHECK(armed_timers() == 0, "nothing armed once answered (%d)", armed_timers());
        chat_conn_closed(c);
    }
}

int main(void)
{
    log_set_level(LOG_ERROR);
    g_srv.loop = uv_default_loop();
    g_srv.store = (store *)&g_ranges;   /* never used as a store: store_range is the test's */
    g_srv.cfg.replay_max = 100;
    g_srv.cfg.max_queue = 64;
    g_srv.cfg.max_queue_bytes = 1 << 20;
    g_srv.cfg.handshake_timeout_ms = 10000;   /* the replay's read deadline: 5 s */
    g_srv.max_rooms = 10;
    conn_metrics_init();
    uvwait_init(g_srv.loop);

    /* a close during the wait: nothing is left pending */
    conn *c = join_waiting("alice");
    if (c) {
        chat_conn_closed(c);
        CHECK(armed_timers() == 0, "no step armed after the close (%d)", armed_timers());
        run_on(g_srv.loop, 250);
        CHECK(g_ranges == 1, "no read of Postgres after the close (%d)", g_ranges);
    }

    /* a leave during the wait: the same */
    c = join_waiting("bob");
    if (c) {
        chat_leave(c, 0);
        CHECK(armed_timers() == 0, "no step armed after the leave (%d)", armed_timers());
        run_on(g_srv.loop, 250);
        CHECK(g_ranges == 1, "no read of Postgres after the leave (%d)", g_ranges);
        chat_conn_closed(c);
    }

    /* a close while a read of the wait is in flight: its answer frees the op */
    c = join_waiting("carol");
    if (c) {
        WAIT_ON(g_srv.loop, g_ranges == 2, 1000);
        CHECK(g_ranges == 2 && g_rows_cb, "the step read Postgres again (%d)", g_ranges);
        chat_conn_closed(c);
        answer_no_rows();
        CHECK(armed_timers() == 0, "no step armed after the answer (%d)", armed_timers());
        run_on(g_srv.loop, 250);
        CHECK(g_ranges == 2, "no read of Postgres after the close (%d)", g_ranges);
    }

    /* the whole wait on one timer: 2 s of steps, then unavailable */
    c = join_waiting("dave");
    if (c) {
        int most = 0;
        uint64_t t0 = now_ms();
        while (now_ms() - t0 < 5000 && !queued(c, "unavailable")) {
            WAIT_ON(g_srv.loop, g_rows_cb != NULL || queued(c, "unavailable"), 500);
            int n = armed_timers();
            if (n > most) most = n;
            answer_no_rows();
        }
        uint64_t took = now_ms() - t0;
        CHECK(queued(c, "unavailable"), "unavailable after the wait");
        CHECK(queued(c, "welcome") && !queued(c, "gap_too_large"), "welcome, never gap_too_large");
        CHECK(took >= 1800 && took < 4000, "answered after the wait (%llu ms)",
              (unsigned long long)took);
        CHECK(g_ranges >= 15 && g_ranges <= 21, "Postgres read every step (%d reads)", g_ranges);
        CHECK(most <= 1, "one step armed at a time (%d)", most);
        CHECK(armed_timers() == 0, "nothing armed once answered (%d)", armed_timers());
        chat_conn_closed(c);
    }

    /* the read state lookup does not answer in time: read_seq 0, pending, then
     * looked up again until it answers, then told as the own receipt */
    c = new_conn("erin");
    if (c) {
        g_lookups = 0;
        CHECK(chat_join(c, "lobby", 0, 0, NULL, 1, NULL) == 0, "join started");
        bus_replay_cb cb = g_replay_cb;
        g_replay_cb = NULL;
        if (cb) cb(g_replay_ud, 0, NULL, 0, 12, "ep1");
        answer_lookup(-1, 0);
        CHECK(queued(c, "\"type\":\"welcome\"") && queued(c, "\"read_seq\":0,\"read_seq_pending\":true")
              && !queued(c, ":null"), "welcome with read_seq 0, pending");
        CHECK(queued(c, "{\"type\":\"presence_state\",\"room\":\"lobby\",\"seq\":12,\"epoch\":\"ep1\",\"read_seq\":0,\"read_seq_pending\":true,"),
              "the join answer with read_seq 0, pending");
        CHECK(armed_timers() == 1, "a retry armed (%d)", armed_timers());
        WAIT_ON(g_srv.loop, g_lookups == 2, 3000);
        CHECK(g_lookups == 2 && g_rs_cb, "looked up again (%d)", g_lookups);
        answer_lookup(-1, 0);
        CHECK(armed_timers() == 1, "another retry armed (%d)", armed_timers());
        WAIT_ON(g_srv.loop, g_lookups == 3, 5000);
        CHECK(g_lookups == 3 && g_rs_cb, "looked up a third time (%d)", g_lookups);
        answer_lookup(0, 7);
        CHECK(queued(c, "{\"type\":\"read\",\"room\":\"lobby\",\"user\":\"erin\",\"name\":\"erin\",\"seq\":7}"),
              "the read state told as the own receipt");
        CHECK(armed_timers() == 0, "nothing armed once told (%d)", armed_timers());
        run_on(g_srv.loop, 100);
        CHECK(g_lookups == 3, "no lookup after (%d)", g_lookups);
        chat_conn_closed(c);
    }

    /* a close while a retry is armed, then while one is in flight */
    for (int inflight = 0; inflight < 2; inflight++) {
        c = new_conn(inflight ? "gina" : "fred");
        if (!c) break;
        g_lookups = 0;
        chat_join(c, "lobby", 0, 0, NULL, 1, NULL);
        bus_replay_cb cb = g_replay_cb;
        g_replay_cb = NULL;
        if (cb) cb(g_replay_ud, 0, NULL, 0, 12, "ep1");
        answer_lookup(-1, 0);
        if (inflight) WAIT_ON(g_srv.loop, g_lookups == 2, 3000);
        chat_conn_closed(c);
        if (inflight) answer_lookup(-1, 0);
        CHECK(armed_timers() == 0, "nothing armed after the close (%s; %d)",
              inflight ? "lookup in flight" : "retry armed", armed_timers());
        int n = g_lookups;
        run_on(g_srv.loop, 1200);
        CHECK(g_lookups == n, "no lookup after the close (%d then %d)", n, g_lookups);
    }

    read_deadline_cases();

    /* a close while the replay waits for the read state lookup (its
     * reference is dropped: ASan's leak check; before, the op leaked) */
    c = new_conn("nora");
    if (c) {
        chat_join(c, "lobby", 0, 0, NULL, 1, NULL);
        bus_replay_cb cb = g_replay_cb;
        void *ud = g_replay_ud;
        g_replay_cb = NULL;
        g_replay_ud = NULL;   /* nothing of the op's kept here */
        if (cb) cb(ud, 0, NULL, 0, 12, "ep1");
        CHECK(!queued(c, "\"type\":\"welcome\""), "welcome waits for the lookup");
        chat_conn_closed(c);
        answer_lookup(0, 3);
        CHECK(armed_timers() == 0, "nothing armed after the close (%d)", armed_timers());
    }

    run_on(g_srv.loop, 20);   /* the ops' timers close */
    uvwait_close();
    uv_run(g_srv.loop, UV_RUN_NOWAIT);
    room_registry_free();
    uv_loop_close(g_srv.loop);
    metrics_free_all();
    return check_summary("test_join");
}
