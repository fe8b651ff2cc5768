/* test_bus_idback: a client id committed after a Redis loss is written back
 * (bus.h bus_id_committed, core/bus_redis_ids.c; docs/redis.md "A commit
 * after the loss"), against a real redis-server restarted empty:
 *  - a commit under the run that answered the publish writes nothing (the
 *    id key deleted on purpose stays absent; no write sent);
 *  - a commit after Redis restarted empty writes the id key back with the
 *    seq and what is left of its window, and the resend of that id is then
 *    answered as a duplicate of its first seq; an update's id keeps the
 *    update's longer ttl; an id whose window has passed is not written;
 *  - a commit while Redis is down waits, and is written once Redis is back
 *    with a new run; a commit while it is down and back with the SAME run
 *    (a stall) is dropped without a write;
 *  - the bus freed with ids waiting, and with a write in flight: nothing
 *    leaks (ASan), nothing runs later. */
#include "bus_harness.h"

/* kills our redis-server, empties its directory and starts it again */
static int restart_empty(node *const *nds, int n)
{
    sc_close();
    rp_signal(rsrv, SIGKILL);
    for (int i = 0; i < n; i++) WAIT(!bus_ready(nds[i]->b), 3000);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'/* 2>/dev/null", rp_all[rsrv].dir);
    if (system(cmd) != 0) return -1;
    return redis_start();
}

static void commit_as(node *nd, const char *room, const char *user, const char *id, const pubres *p,
                      int update)
{
    in_call = 1;
    bus_id_committed(nd->b, room, user, id, p->seq, p->mark, p->at_ns, update);
    in_call = 0;
}

static void commit(node *nd, const char *room, const char *id, const pubres *p, int update)
{
    commit_as(nd, room, PUB_USER, id, p, update);
}

static void test_idback_restart_empty(void)
{
    char room[80];
    mkroom(room, sizeof room, "idback");
    node *a = node_new_seeded("WA", rurl, 0, "ep-w");
    wait_ready(a);
    pubres p[4];
    pub(a, room, "x1", "one", &p[0]);
    WAIT(p[0].done, 3000);
    pub(a, room, "x2", "two", &p[1]);
    WAIT(p[1].done, 3000);
    pub(a, room, "u3", "an update's id", &p[2]);
    WAIT(p[2].done, 3000);
    pub_as(a, room, "bob", "x2", "bob's two", &p[3]); /* another sender's x2: another message */
    WAIT(p[3].done, 3000);
    CHECK(p[0].status == 0 && p[0].seq == 1 && p[1].seq == 2 && p[2].seq == 3 && p[3].seq == 4 &&
          !p[3].dup, "1, 2, 3, 4 (%d %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 ")", p[0].status,
          p[0].seq, p[1].seq, p[2].seq, p[3].seq);
    CHECK(p[0].mark != 0 && p[0].mark == p[1].mark, "a run mark, the same for both (%" PRIu64
          " %" PRIu64 ")", p[0].mark, p[1].mark);
    /* committed under the same run: nothing is written (the key deleted on
     * purpose stays absent) */
    CHECK(rc_int("DEL chat:{%s}:sid:1:u:x1", room) == 1, "x1's key deleted on purpose");
    uint64_t w0 = bus_idback_writes(a->b);
    commit(a, room, "x1", &p[0], 0);
    spin(200);
    CHECK(bus_idback_writes(a->b) == w0 && bus_idback_waiting(a->b) == 0,
          "same run: no write, nothing waits (%" PRIu64 ")", bus_idback_writes(a->b) - w0);
    CHECK(rc_int("EXISTS chat:{%s}:sid:1:u:x1", room) == 0, "same run: x1's key not written");

    /* Redis restarted empty: x2 and u3 (published before) commit after */
    uint64_t written0 = counter("chat_bus_ids_written_back_total");
    CHECK(restart_empty(&a, 1) == 0, "redis restarted empty");
    WAIT(bus_ready(a->b), 8000);
    CHECK(bus_ready(a->b), "ready again");
    CHECK(bus_run_mark(a->b, room) != p[1].mark, "another run, another mark");
    CHECK(rc_int("EXISTS chat:{%s}:sid:1:u:x2", room) == 0, "x2's key is gone with the data");
    spin(1500); /* its ttl must count the time since the publish */
    commit(a, room, "x2", &p[1], 0);
    commit(a, room, "u3", &p[2], 1);
    commit_as(a, room, "bob", "x2", &p[3], 0);
    WAIT(rc_int("EXISTS chat:{%s}:sid:1:u:u3", room) == 1, 3000);
    WAIT(rc_int("EXISTS chat:{%s}:sid:3:bob:x2", room) == 1, 3000);
    CHECK(rc_int("GET chat:{%s}:sid:3:bob:x2", room) == 4, "bob's x2 written back under bob: 4 (%lld)",
          rc_int("GET chat:{%s}:sid:3:bob:x2", room));
    CHECK(rc_int("GET chat:{%s}:sid:1:u:x2", room) == 2, "x2's key holds its seq 2 (%lld)",
          rc_int("GET chat:{%s}:sid:1:u:x2", room));
    long long ttl = rc_int("TTL chat:{%s}:sid:1:u:x2", room);
    CHECK(ttl >= 50 && ttl <= 59, "x2's key lives the rest of its 60 s window (%lld)", ttl);
    ttl = rc_int("TTL chat:{%s}:sid:1:u:u3", room);
    CHECK(ttl > 86000 && ttl <= 86399, "an update's id keeps its day (%lld)", ttl);
    WAIT(counter("chat_bus_ids_written_back_total") == written0 + 3, 3000);
    CHECK(counter("chat_bus_ids_written_back_total") == written0 + 3, "3 counted written back");
    /* the resend of x2: a duplicate of 2, nothing published again; bob's of 4 */
    a->seed_max = 4; /* what history holds */
    pubres q;
    pub(a, room, "x2", "two", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.dup && q.seq == 2, "the resend of x2 is a duplicate of 2 (%d dup %d %"
          PRIu64 ")", q.status, q.dup, q.seq);
    pub_as(a, room, "bob", "x2", "bob's two", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.dup && q.seq == 4, "bob's resend of x2 is a duplicate of 4 (%d dup %d %"
          PRIu64 ")", q.status, q.dup, q.seq);
    /* NX: a key written meanwhile is kept */
    redisReply *r = rc("SET chat:{%s}:sid:1:u:x1 77 EX 60", room);
    if (r) freeReplyObject(r);
    commit(a, room, "x1", &p[0], 0);
    spin(200);
    CHECK(rc_int("GET chat:{%s}:sid:1:u:x1", room) == 77, "NX keeps a key written meanwhile");
    /* a window that has passed: nothing written, nothing waits */
    pubres old = p[0];
    old.at_ns = mono_ns() - 61ull * 1000000000ull;
    uint64_t w1 = bus_idback_writes(a->b);
    commit(a, room, "x9", &old, 0);
    spin(100);
    CHECK(bus_idback_writes(a->b) == w1 && bus_idback_waiting(a->b) == 0 &&
          rc_int("EXISTS chat:{%s}:sid:1:u:x9", room) == 0, "a window passed: nothing written");
    node_free(a);
    settle();
}

/* committed while Redis is down: written once it is back with a new run */
static void test_idback_down(void)
{
    char room[80];
    mkroom(room, sizeof room, "idbackdown");
    node *a = node_new_seeded("WD", rurl, 0, "ep-d");
    wait_ready(a);
    pubres p;
    pub(a, room, "y1", "y", &p);
    WAIT(p.done, 3000);
    CHECK(p.status == 0 && p.seq == 1, "y1 is 1 (%d %" PRIu64 ")", p.status, p.seq);
    a->seed_max = 1; /* what history holds from now on */
    sc_close();
    rp_signal(rsrv, SIGKILL);
    WAIT(!bus_ready(a->b), 3000);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'/* 2>/dev/null", rp_all[rsrv].dir);
    CHECK(system(cmd) == 0, "redis data removed");
    uint64_t w0 = bus_idback_writes(a->b);
    commit(a, room, "y1", &p, 0);
    CHECK(bus_idback_waiting(a->b) == 1 && bus_idback_writes(a->b) == w0,
          "committed while down: it waits (%zu)", bus_idback_waiting(a->b));
    spin(300);
    CHECK(bus_idback_waiting(a->b) == 1, "still waiting while down");
    CHECK(redis_start() == 0, "redis restarted empty");
    WAIT(rc_int("EXISTS chat:{%s}:sid:1:u:y1", room) == 1, 8000);
    CHECK(rc_int("GET chat:{%s}:sid:1:u:y1", room) == 1, "y1 written back once Redis is up (%lld)",
          rc_int("GET chat:{%s}:sid:1:u:y1", room));
    CHECK(bus_idback_waiting(a->b) == 0 && bus_idback_writes(a->b) == w0 + 1,
          "one write, nothing waits (%zu %" PRIu64 ")", bus_idback_waiting(a->b),
          bus_idback_writes(a->b) - w0);

    /* a stall (the same run comes back): what waited is dropped unwritten */
    WAIT(bus_ready(a->b), 5000);
    pubres s;
    pub(a, room, "y2", "y", &s);
    WAIT(s.done, 3000);
    CHECK(s.status == 0 && s.seq == 2, "y2 is 2 (%d %" PRIu64 ")", s.status, s.seq);
    CHECK(rc_int("DEL chat:{%s}:sid:1:u:y2", room) == 1, "y2's key deleted on purpose");
    sc_close();
    rp_signal(rsrv, SIGSTOP);
    WAIT(!bus_ready(a->b), 12000);
    CHECK(!bus_ready(a->b), "stall detected");
    uint64_t w1 = bus_idback_writes(a->b);
    commit(a, room, "y2", &s, 0);
    CHECK(bus_idback_waiting(a->b) == 1, "committed during the stall: it waits");
    rp_signal(rsrv, SIGCONT);
    CHECK(sc_connect(3000) == 0, "sync client back");
    WAIT(bus_ready(a->b), 8000);
    WAIT(bus_idback_waiting(a->b) == 0, 3000);
    spin(200);
    CHECK(bus_idback_waiting(a->b) == 0 && bus_idback_writes(a->b) == w1,
          "the same run: dropped without a write (%zu %" PRIu64 ")", bus_idback_waiting(a->b),
          bus_idback_writes(a->b) - w1);
    CHECK(rc_int("EXISTS chat:{%s}:sid:1:u:y2", room) == 0, "y2's key not written");
    node_free(a);
    settle();
}

/* the bus freed with an id waiting (Redis down) and one in flight (Redis
 * paused): nothing leaks, nothing runs later */
static void test_idback_free(void)
{
    char room[80];
    mkroom(room, sizeof room, "idbackfree");
    node *a = node_new_seeded("WF", rurl, 0, "ep-f");
    wait_ready(a);
    pubres p[2];
    pub(a, room, "z1", "z", &p[0]);
    WAIT(p[0].done, 3000);
    pub(a, room, "z2", "z", &p[1]);
    WAIT(p[1].done, 3000);
    CHECK(restart_empty(&a, 1) == 0, "redis restarted empty");
    WAIT(bus_ready(a->b), 8000);
    redisReply *r = rc("CLIENT PAUSE 400 ALL");
    CHECK(r && r->type == REDIS_REPLY_STATUS, "Redis paused");
    if (r) freeReplyObject(r);
    uint64_t w0 = bus_idback_writes(a->b);
    commit(a, room, "z1", &p[0], 0);
    CHECK(bus_idback_writes(a->b) == w0 + 1, "z1's write is in flight");
    node_free(a);
    settle();

    node *b = node_new_seeded("WG", rurl, 0, "ep-g");
    wait_ready(b);
    pubres q;
    pub(b, room, "z3", "z", &q);
    WAIT(q.done, 3000);
    CHECK(q.status == 0, "z3 published");
    sc_close();
    rp_signal(rsrv, SIGKILL);
    WAIT(!bus_ready(b->b), 3000);
    commit(b, room, "z3", &q, 0);
    CHECK(bus_idback_waiting(b->b) == 1, "z3 waits while Redis is down");
    node_free(b); /* freed with it waiting */
    settle();
    CHECK(redis_start() == 0, "redis back");
}

int main(void)
{
    harness_begin("test_bus_idback");
    int have_redis = harness_redis();
    if (have_redis && own_redis) {
        test_idback_restart_empty();
        test_idback_down();
        test_idback_free();
    }
    return harness_end("test_bus_idback", have_redis);
}
