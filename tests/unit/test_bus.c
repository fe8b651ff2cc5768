/* test_bus: the bus against a real redis-server (started here with
 * redis_procs.h, or CHATD_TEST_REDIS_URL) and in in-process mode.
 * Proves: order across nodes, idempotent resend, recent buffer trim, replay,
 * gap fill and gap loss, replay then live with no hole, refcounted
 * subscriptions (PUBSUB CHANNELS), NOSCRIPT recovery, emit, the control
 * channel, cancellation on bus_free, Redis Cluster slot moves, and that no
 * callback runs inside a bus_* call. The backfill of unstored messages is
 * in test_bus_backfill.c; seeds, epochs and Redis restarts in
 * test_bus_seed.c; the harness in bus_harness.h. Randomised parts print
 * their seed (CHATD_TEST_SEED reuses one). Exit 0 pass, 1 fail, 77 skip
 * (no redis-server: in-process only). */
#include "bus_harness.h"

/* ---------------- tests: helpers ---------------- */

/* the URL parser itself is tested in test_redis.c; the bus refuses a bad one */
static void test_url(void)
{
    char err[128];
    bus_opts o = {"nope://", 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK(bus_new(loop, &o, &handlers, NULL, err, sizeof err) == NULL && strstr(err, "redis url"),
          "bad url refused: %s", err);
}

/* ---------------- tests: in-process mode ---------------- */

typedef struct ctlres { int calls; long receivers; int seen_before; node *nd; } ctlres;

static void ctl_cb(void *ud, long receivers)
{
    ctlres *c = ud;
    CHECK(!in_call, "control cb inside a bus_* call");
    c->calls++;
    c->receivers = receivers;
    c->seen_before = c->nd ? c->nd->nctl : 0;
}

/* the control channel of the one node: every message reaches on_control
 * once, in order, after the call; then the sender learns 1 receiver; a
 * bus freed with one queued answers -1 */
static void test_local_control(void)
{
    node *a = node_new("ctl", NULL, 5, 0);
    ctlres r[3];
    memset(r, 0, sizeof r);
    const char *msgs[3] = {"{\"op\":\"a\"}", "{\"op\":\"b\"}", "{\"op\":\"c\"}"};
    for (int i = 0; i < 3; i++) {
        r[i].nd = a;
        in_call = 1;
        CHECK(bus_control(a->b, msgs[i], strlen(msgs[i]), ctl_cb, &r[i]) == 0, "control %d", i);
        in_call = 0;
    }
    CHECK(a->nctl == 0 && r[0].calls == 0, "nothing inside bus_control");
    WAIT(r[2].calls == 1, 2000);
    CHECK(a->nctl == 3 && strcmp(a->ctl_last, msgs[2]) == 0, "3 control messages, in order");
    for (int i = 0; i < 3; i++)
        CHECK(r[i].calls == 1 && r[i].receivers == 1 && r[i].seen_before >= i + 1,
              "control %d: one receiver, after its delivery", i);
    CHECK(bus_control(a->b, NULL, 3, NULL, NULL) == -1, "data NULL with a length refused");
    ctlres last = {0};
    in_call = 1;
    CHECK(bus_control(a->b, "{}", 2, ctl_cb, &last) == 0, "queued");
    in_call = 0;
    bus_free(a->b); /* answers inside, by contract */
    a->b = NULL;
    CHECK(last.calls == 1 && last.receivers == -1, "freed: answered -1");
    node_free(a);
    settle();
}

/* bus_replay_upto on a room of head `head` whose buffer keeps its last 5
 * entries (recent_max 5), on either backend: one seq's entry however far
 * the head, a range, and the answers 1 (beyond the buffer, above the head)
 * and -1 (upto <= since). Seqs relative to the head. */
static void check_replay_upto(node *a, const char *room, uint64_t head)
{
    static const struct {
        int since, upto;        /* head + these */
        int rc, status;
        size_t n;
        int first, last;        /* head + these (n > 0) */
        const char *what;
    } C[] = {
        {-4, -3, 0, 0, 1, -3, -3, "one entry"},
        {-5, -2, 0, 0, 3, -4, -2, "a range"},
        {-10, -9, 0, 1, 0, 0, 0, "beyond the buffer -> 1"},
        {0, 1, 0, 1, 0, 0, 0, "above the head -> 1"},
        {-8, -8, -1, 0, 0, 0, 0, "upto <= since refused"},
    };
    for (size_t i = 0; i < sizeof C / sizeof C[0]; i++) {
        repres r;
        int rc = replay_to(a, room, head + (uint64_t)(int64_t)C[i].since, 0,
                           head + (uint64_t)(int64_t)C[i].upto, &r);
        CHECK(rc == C[i].rc, "upto %s: rc %d", C[i].what, rc);
        if (rc != 0) continue;
        WAIT(r.done, 3000);
        CHECK(r.status == C[i].status && r.n == C[i].n && r.head == head, "upto %s: st=%d n=%zu head=%" PRIu64,
              C[i].what, r.status, r.n, r.head);
        if (C[i].n)
            CHECK(r.contiguous && r.first == head + (uint64_t)(int64_t)C[i].first &&
                  r.last == head + (uint64_t)(int64_t)C[i].last, "upto %s: %" PRIu64 "..%" PRIu64,
                  C[i].what, r.first, r.last);
    }
}

static void test_local_basic(void)
{
    node *a = node_new("local", NULL, 5, 0);
    char room[80];
    mkroom(room, sizeof room, "lb");
    snprintf(a->room, sizeof a->room, "%s", room);
    CHECK(bus_ready(a->b) == 1 && bus_is_redis(a->b) == 0, "local ready");
    sub(a, room);
    pubres p[12];
    for (int i = 0; i < 12; i++) CHECK(pub(a, room, NULL, "x", &p[i]) == 0, "publish %d", i);
    CHECK(!p[0].done && a->n == 0, "nothing delivered inside bus_publish");
    WAIT(p[11].done && a->n == 12, 2000);
    for (int i = 0; i < 12; i++)
        CHECK(p[i].done && p[i].status == 0 && p[i].seq == (uint64_t)i + 1, "seq %d", i);
    CHECK(contiguous(a, 1, 12), "delivered 1..12 (n=%zu)", a->n);
    /* idempotency */
    pubres d1, d2;
    pub(a, room, "cid-1", "once", &d1);
    pub(a, room, "cid-1", "once", &d2);
    WAIT(d1.done && d2.done, 2000);
    CHECK(d1.status == 0 && !d1.dup && d1.seq == 13, "first id publish");
    CHECK(d2.status == 0 && d2.dup && d2.seq == 13, "resend gives the same seq");
    spin(20);
    CHECK(a->n == 13, "one delivery for the id (n=%zu)", a->n);
    /* replay with recent_max 5: buffer holds 9..13 */
    repres r;
    replay(a, room, 8, 100, &r);
    CHECK(!r.done, "replay deferred");
    WAIT(r.done, 2000);
    CHECK(r.status == 0 && r.n == 5 && r.first == 9 && r.last == 13 && r.contiguous && r.head == 13,
          "replay complete st=%d n=%zu", r.status, r.n);
    replay(a, room, 2, 100, &r);
    WAIT(r.done, 2000);
    CHECK(r.status == 1 && r.n == 0 && r.head == 13, "replay beyond the buffer -> 1");
    replay(a, room, 10, 2, &r);
    WAIT(r.done, 2000);
    CHECK(r.status == 1, "replay over max -> 1");
    replay(a, room, UINT64_MAX, 0, &r);
    WAIT(r.done, 2000);
    CHECK(r.status == 0 && r.n == 0 && r.head == 13, "head only");
    replay(a, room, 13, 10, &r);
    WAIT(r.done, 2000);
    CHECK(r.status == 0 && r.n == 0 && r.head == 13, "nothing new");
    check_replay_upto(a, room, 13);
    /* emit */
    in_call = 1;
    CHECK(bus_emit(a->b, room, "typing", "{\"t\":1}", 7) == 0, "emit");
    CHECK(bus_emit(a->b, room, "bogus", "x", 1) != 0, "emit kind checked");
    in_call = 0;
    WAIT(a->emits == 1, 2000);
    CHECK(a->emits == 1 && strcmp(a->emit_kind, "typing") == 0 &&
              strcmp(a->emit_data, "{\"t\":1}") == 0, "emit delivered");
    /* refcount */
    sub(a, room);
    unsub(a, room);
    pub(a, room, NULL, "still", &p[0]);
    WAIT(p[0].done && a->n == 14, 2000);
    CHECK(a->n == 14, "still subscribed after one unsubscribe");
    unsub(a, room);
    pub(a, room, NULL, "gone", &p[0]);
    WAIT(p[0].done, 2000);
    spin(10);
    CHECK(a->n == 14 && p[0].seq == 15, "no delivery after the last unsubscribe");
    CHECK(a->dup_or_disorder == 0 && a->ngaps == 0, "no disorder");
    /* resubscribe: continues from the head */
    sub(a, room);
    pub(a, room, NULL, "back", &p[0]);
    WAIT(a->n == 15, 2000);
    CHECK(a->n == 15 && a->seqs[14] == 16, "delivery after resubscribe");
    node_free(a);
    settle();
}

static void test_local_free_and_ttl(void)
{
    node *a = node_new("local2", NULL, 100, 1);
    char room[80];
    mkroom(room, sizeof room, "lf");
    pubres p1, p2, p3;
    pub(a, room, "id-x", "a", &p1);
    WAIT(p1.done, 2000);
    pub(a, room, "id-x", "a", &p2);
    WAIT(p2.done, 2000);
    CHECK(p2.dup && p2.seq == p1.seq, "dup within ttl");
    spin(1100);
    pub(a, room, "id-x", "a", &p3);
    WAIT(p3.done, 2000);
    CHECK(p3.status == 0 && !p3.dup && p3.seq == p1.seq + 1, "id expired after ttl");
    /* pending callbacks get -1 on bus_free */
    pubres q[3];
    repres r;
    for (int i = 0; i < 3; i++) pub(a, room, NULL, "q", &q[i]);
    replay(a, room, 0, 10, &r);
    node_free(a);
    for (int i = 0; i < 3; i++) CHECK(q[i].done == 1 && q[i].status == -1, "cancelled publish");
    CHECK(r.done == 1 && r.status == -1, "cancelled replay");
    settle();
}

/* ---------------- tests: Redis mode ---------------- */

static void test_two_nodes(void)
{
    char room[80];
    mkroom(room, sizeof room, "two");
    node *a = node_new("A", rurl, 1000, 60), *b = node_new("B", rurl, 1000, 60);
    CHECK(bus_is_redis(a->b) && !bus_ready(a->b), "redis mode, not ready before connect");
    snprintf(a->room, sizeof a->room, "%s", room);
    snprintf(b->room, sizeof b->room, "%s", room);
    wait_ready(a);
    wait_ready(b);
    CHECK(a->nready == 1 && a->ready_log[0] == 1, "on_ready(1) once");
    sub(a, room);
    sub(b, room);
    synced(a, room);
    synced(b, room);
    pubres p[100];
    for (int i = 0; i < 100; i++) CHECK(pub(i % 2 ? a : b, room, NULL, "m", &p[i]) == 0, "pub");
    WAIT(a->n == 100 && b->n == 100, 5000);
    CHECK(contiguous(a, 1, 100) && contiguous(b, 1, 100), "A n=%zu B n=%zu", a->n, b->n);
    int seen[101] = {0};
    for (int i = 0; i < 100; i++) {
        CHECK(p[i].done && p[i].status == 0 && p[i].seq >= 1 && p[i].seq <= 100, "pub %d", i);
        if (p[i].seq <= 100) seen[p[i].seq]++;
    }
    for (int i = 1; i <= 100; i++) CHECK(seen[i] == 1, "seq %d assigned once", i);
    for (size_t i = 0; i < 100; i++)
        CHECK(strcmp(a->tails[i], b->tails[i]) == 0, "same tail for seq %zu", i + 1);
    /* emit reaches both nodes */
    in_call = 1;
    CHECK(bus_emit(a->b, room, "presence", "{\"p\":1}", 7) == 0, "emit");
    in_call = 0;
    WAIT(a->emits == 1 && b->emits == 1, 3000);
    CHECK(a->emits == 1 && b->emits == 1 && strcmp(b->emit_kind, "presence") == 0 &&
              strcmp(b->emit_data, "{\"p\":1}") == 0, "emit on both nodes");
    /* idempotent resend: same id -> same seq, one delivery */
    pubres d1, d2, d3;
    pub(a, room, "c-77", "hello", &d1);
    pub(b, room, "c-77", "hello", &d2);
    WAIT(d1.done && d2.done, 3000);
    CHECK(d1.status == 0 && d2.status == 0 && d1.seq == d2.seq && d1.dup + d2.dup == 1,
          "concurrent resend: seq %" PRIu64 "/%" PRIu64 " dup %d/%d", d1.seq, d2.seq, d1.dup, d2.dup);
    pub(a, room, "c-77", "hello", &d3);
    WAIT(d3.done, 3000);
    CHECK(d3.status == 0 && d3.dup == 1 && d3.seq == d1.seq, "later resend");
    CHECK(rc_int("TTL chat:{%s}:sid:1:u:c-77", room) > 0, "id key has a ttl");
    spin(50);
    CHECK(a->n == 101 && b->n == 101, "one delivery of the id (A %zu B %zu)", a->n, b->n);
    CHECK(counter("chat_messages_published_total") >= 101, "published metric");
    CHECK(a->dup_or_disorder == 0 && b->dup_or_disorder == 0, "no disorder");
    node_free(a);
    node_free(b);
    settle();
}

static void test_trim_replay(void)
{
    char room[80];
    mkroom(room, sizeof room, "trim");
    node *a = node_new("T", rurl, 5, 60);
    wait_ready(a);
    pubres p[12];
    for (int i = 0; i < 12; i++) pub(a, room, NULL, "t", &p[i]);
    WAIT(p[11].done, 3000);
    CHECK(rc_int("ZCARD chat:{%s}:recent", room) == 5, "recent trimmed to 5");
    CHECK(rc_int("GET chat:{%s}:seq", room) == 12, "seq 12");
    repres r;
    CHECK(replay(a, room, 7, 100, &r) == 0, "replay queued");
    WAIT(r.done, 3000);
    CHECK(r.status == 0 && r.n == 5 && r.first == 8 && r.last == 12 && r.contiguous && r.head == 12,
          "complete replay st=%d n=%zu first=%" PRIu64, r.status, r.n, r.first);
    replay(a, room, 3, 100, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 1 && r.n == 0 && r.head == 12, "beyond the buffer -> 1");
    replay(a, room, 8, 3, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 1 && r.head == 12, "more than max -> 1");
    replay(a, room, 9, 3, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 0 && r.n == 3 && r.first == 10, "exactly max");
    replay(a, room, UINT64_MAX, 0, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 0 && r.n == 0 && r.head == 12, "head only");
    replay(a, room, 12, 10, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 0 && r.n == 0 && r.head == 12, "up to date");
    check_replay_upto(a, room, 12);
    char empty[80];
    mkroom(empty, sizeof empty, "never");
    replay(a, empty, 0, 10, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 0 && r.n == 0 && r.head == 0, "unknown room");
    node_free(a);
    settle();
}

static void test_gap_fill(void)
{
    char room[80];
    mkroom(room, sizeof room, "gap");
    node *a = node_new("G", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    pubres p;
    pub(a, room, NULL, "1", &p);
    WAIT(a->n == 1, 3000);
    uint64_t filled0 = counter("chat_bus_gaps_filled_total");
    uint64_t lost0 = counter("chat_bus_gaps_lost_total");
    /* seq 2 and 3 stored but never published (the node missed them) */
    for (int s = 2; s <= 3; s++) {
        CHECK(rc_int("INCR chat:{%s}:seq", room) == s, "incr");
        rc_int("ZADD chat:{%s}:recent %d %d\n\"id\":\"\",\"body\":\"missed\"}", room, s, s);
    }
    pub(a, room, NULL, "4", &p);
    WAIT(a->n == 4, 3000);
    CHECK(contiguous(a, 1, 4), "gap filled in order (n=%zu)", a->n);
    CHECK(a->n >= 2 && strstr(a->tails[1], "missed"), "filled from the buffer");
    CHECK(counter("chat_bus_gaps_filled_total") == filled0 + 1, "gaps filled metric");
    /* seq 5 never stored: lost, reported, delivery continues */
    CHECK(rc_int("INCR chat:{%s}:seq", room) == 5, "incr");
    pub(a, room, NULL, "6", &p);
    WAIT(a->n == 5, 3000);
    CHECK(a->ngaps == 1 && a->gap_from[0] == 5 && a->gap_to[0] == 5, "on_gap(5,5) (%d)", a->ngaps);
    CHECK(a->n == 5 && a->seqs[4] == 6, "continues after the gap");
    CHECK(counter("chat_bus_gaps_lost_total") == lost0 + 1, "gaps lost metric");
    /* a duplicate publish on the channel is dropped */
    rc_int("PUBLISH chat:{%s}:msg %s", room, "6\n\"dup\"}");
    pub(a, room, NULL, "7", &p);
    WAIT(a->n == 6, 3000);
    CHECK(a->n == 6 && a->seqs[5] == 7 && a->dup_or_disorder == 0, "duplicate dropped");
    node_free(a);
    settle();
}

static int channels(const char *room)
{
    return (int)rc_int("PUBSUB CHANNELS chat:{%s}:*", room);
}

static void test_refcount(void)
{
    char room[80];
    mkroom(room, sizeof room, "ref");
    node *a = node_new("R", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    sub(a, room);
    synced(a, room);
    CHECK(channels(room) == 3, "3 channels (%d)", channels(room));
    unsub(a, room);
    spin(50);
    CHECK(channels(room) == 3, "still 3 after one unsubscribe");
    unsub(a, room);
    WAIT(channels(room) == 0, 2000);
    CHECK(channels(room) == 0, "none after the last (%d)", channels(room));
    /* flapping: the end state wins and delivery works */
    for (int i = 0; i < 5; i++) { sub(a, room); unsub(a, room); }
    sub(a, room);
    synced(a, room);
    CHECK(channels(room) == 3, "3 after flapping (%d)", channels(room));
    size_t n0 = a->n;
    pubres p;
    pub(a, room, NULL, "after", &p);
    WAIT(a->n == n0 + 1, 3000);
    CHECK(a->n == n0 + 1, "delivery after flapping");
    unsub(a, room);
    WAIT(channels(room) == 0, 2000);
    CHECK(channels(room) == 0, "none at the end");
    node_free(a);
    settle();
}

/* random subscribe/unsubscribe over several rooms: Redis ends with exactly
 * the channels of the rooms that still have subscribers */
static void test_sub_churn(void)
{
    node *a = node_new("C", rurl, 1000, 60);
    wait_ready(a);
    char rooms[8][80];
    int refs[8] = {0};
    for (int i = 0; i < 8; i++) {
        char w[16];
        snprintf(w, sizeof w, "churn%d", i);
        mkroom(rooms[i], sizeof rooms[i], w);
    }
    unsigned s = seed ^ 0x5bd1e995u;
    fprintf(stderr, "sub churn: seed %u\n", seed);
    for (int k = 0; k < 400; k++) {
        s = s * 1103515245u + 12345u;
        int i = (int)((s >> 16) % 8);
        if (((s >> 8) & 1) && refs[i] < 3) { sub(a, rooms[i]); refs[i]++; }
        else if (refs[i] > 0) { unsub(a, rooms[i]); refs[i]--; }
        if ((s >> 4) % 5 == 0) uv_run(loop, UV_RUN_NOWAIT);
        if ((s >> 4) % 37 == 0) spin(2);
    }
    for (int i = 0; i < 8; i++)
        if (refs[i]) synced(a, rooms[i]);
    int want = 0;
    for (int i = 0; i < 8; i++) want += refs[i] ? 3 : 0;
    char pat[64];
    snprintf(pat, sizeof pat, "chat:{churn*-%s}:*", nonce);
    WAIT(rc_int("PUBSUB CHANNELS %s", pat) == want, 3000);
    CHECK(rc_int("PUBSUB CHANNELS %s", pat) == want, "channels %lld want %d",
          rc_int("PUBSUB CHANNELS %s", pat), want);
    for (int i = 0; i < 8; i++) {
        if (!refs[i]) continue;
        snprintf(a->room, sizeof a->room, "%.70s", rooms[i]);
        size_t n0 = a->n;
        pubres p;
        pub(a, rooms[i], NULL, "c", &p);
        WAIT(a->n == n0 + 1, 3000);
        CHECK(a->n == n0 + 1, "delivery in %s", rooms[i]);
    }
    node_free(a);
    settle();
}

static void test_noscript(void)
{
    char room[80];
    mkroom(room, sizeof room, "nos");
    node *a = node_new("N", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    redisReply *r = rc("SCRIPT FLUSH");
    CHECK(r && r->type == REDIS_REPLY_STATUS, "script flush");
    if (r) freeReplyObject(r);
    pubres p[3];
    for (int i = 0; i < 3; i++) pub(a, room, NULL, "n", &p[i]);
    WAIT(p[0].done && p[1].done && p[2].done, 3000);
    for (int i = 0; i < 3; i++) CHECK(p[i].status == 0, "publish after SCRIPT FLUSH %d", i);
    WAIT(a->n == 3, 3000);
    CHECK(contiguous(a, 1, 3), "delivered after reload");
    node_free(a);
    settle();
}

static void test_three_nodes(void)
{
    char room[80];
    mkroom(room, sizeof room, "three");
    node *n[3];
    const char *names[3] = {"N1", "N2", "N3"};
    for (int i = 0; i < 3; i++) {
        n[i] = node_new(names[i], rurl, 2000, 60);
        snprintf(n[i]->room, sizeof n[i]->room, "%s", room);
    }
    for (int i = 0; i < 3; i++) wait_ready(n[i]);
    for (int i = 0; i < 3; i++) { sub(n[i], room); synced(n[i], room); }
    unsigned s = seed;
    fprintf(stderr, "three nodes: seed %u\n", seed);
    static pubres p[600];
    int total = 600;
    for (int i = 0; i < total; i++) {
        s = s * 1103515245u + 12345u;
        pub(n[(s >> 16) % 3], room, NULL, "c", &p[i]);
        if ((s >> 8) % 7 == 0) uv_run(loop, UV_RUN_NOWAIT);
    }
    WAIT(n[0]->n == (size_t)total && n[1]->n == (size_t)total && n[2]->n == (size_t)total, 10000);
    for (int i = 0; i < 3; i++)
        CHECK(contiguous(n[i], 1, (uint64_t)total), "%s sees 1..%d (n=%zu)", names[i], total, n[i]->n);
    for (int i = 0; i < total; i++) CHECK(p[i].status == 0, "publish %d", i);
    for (int i = 0; i < 3; i++) node_free(n[i]);
    settle();
}

/* The core's recovery contract: a replay on a room this node subscribed
 * answers only once the subscription is confirmed and its head read, so
 * every seq after the replay's head reaches on_message (no hole between
 * replay and live), while another node keeps publishing. */
/* (recent buffers large enough that the replay from 0 is always served by
 * the buffer however slow the machine: the streamer may pass 1000 seqs) */
static void test_replay_then_live(void)
{
    node *b = node_new("LB", rurl, 1000000, 60);
    wait_ready(b);
    srand(seed);
    for (int round = 0; round < 6; round++) {
        char room[80], what[16];
        snprintf(what, sizeof what, "rtl%d", round);
        mkroom(room, sizeof room, what);
        static streamer st;
        memset(&st, 0, sizeof st);
        st.nd = b;
        st.room = room;
        uv_timer_init(loop, &st.t);
        st.t.data = &st;
        uv_timer_start(&st.t, stream_burst, 1, 1);
        spin(20 + rand() % 80);
        node *a = node_new("LA", rurl, 1000000, 60);
        snprintf(a->room, sizeof a->room, "%s", room);
        wait_ready(a);
        spin(rand() % 30);
        sub(a, room);
        repres r;
        CHECK(replay(a, room, 0, 100000, &r) == 0, "replay queued");
        WAIT(r.done, 5000);
        spin(30 + rand() % 50);
        st.stop = 1;
        uv_timer_stop(&st.t);
        streamer *ss[1] = {&st};
        WAIT(all_answered(ss, 1), 5000);
        uint64_t head = (uint64_t)rc_int("GET chat:{%s}:seq", room);
        WAIT(a->n && a->seqs[a->n - 1] == head, 3000);
        CHECK(r.done == 1 && r.status == 0 && r.contiguous && r.head >= 1 &&
                  (r.n == 0 || (r.first == 1 && r.last == r.head)),
              "replay 1..head (status %d n %zu first %" PRIu64 " last %" PRIu64 " head %" PRIu64
              ")", r.status, r.n, r.first, r.last, r.head);
        CHECK(head > r.head, "publishing went on after the replay (%" PRIu64 " > %" PRIu64 ")",
              head, r.head);
        CHECK(a->n && a->seqs[0] <= r.head + 1 && contiguous(a, a->seqs[0], head) &&
                  a->ngaps == 0,
              "round %d: live %" PRIu64 "..%" PRIu64 " covers %" PRIu64 "..%" PRIu64 " (n=%zu)",
              round, a->n ? a->seqs[0] : 0, a->n ? a->seqs[a->n - 1] : 0, r.head + 1, head, a->n);
        uv_close((uv_handle_t *)&st.t, NULL);
        node_free(a);
        spin(30); /* b stays up: settle() would wait for it */
    }
    node_free(b);
    settle();
}

/* the last unsubscribe of a room with a replay waiting for its sync: the
 * replay is answered from the loop, never inside bus_unsubscribe */
static void test_unsub_waiting_replay(void)
{
    char room[80];
    mkroom(room, sizeof room, "unsubw");
    node *a = node_new("U", rurl, 1000, 60);
    wait_ready(a);
    sub(a, room);
    repres w;
    CHECK(replay(a, room, 0, 10, &w) == 0, "replay queued");
    unsub(a, room); /* in_call is set: a callback here fails the test */
    WAIT(w.done, 3000);
    CHECK(w.done == 1 && w.status == 0 && w.n == 0, "waiting replay answered (%d, %d)", w.done,
          w.status);
    node_free(a);
    settle();
}

static void test_free_pending(void)
{
    char room[80];
    mkroom(room, sizeof room, "free");
    node *a = node_new("F", rurl, 1000, 60);
    wait_ready(a);
    sub(a, room);
    pubres p[5];
    repres r, w;
    for (int i = 0; i < 5; i++) pub(a, room, NULL, "f", &p[i]);
    replay(a, room, 0, 10, &w); /* waits for the room's sync */
    replay(a, "other", 0, 10, &r);
    node_free(a);
    for (int i = 0; i < 5; i++) CHECK(p[i].done == 1 && p[i].status == -1, "publish %d cancelled", i);
    CHECK(r.done == 1 && r.status == -1 && w.done == 1 && w.status == -1, "replays cancelled");
    settle();
    /* a bus that never reached Redis frees cleanly too */
    char url[64];
    int dead = rp_pick_port();   /* free: nothing listens there */
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", dead);
    node *d = node_new("D", url, 0, 0);
    spin(200);
    CHECK(!bus_ready(d->b) && d->nready == 0, "never ready");
    in_call = 1;
    CHECK(bus_publish(d->b, room, NULL, NULL, "x", 1, pub_cb, &p[0]) == -1, "refused");
    in_call = 0;
    node_free(d);
    settle();
}

/* bus_free called from inside on_message, with publishes pending */
static void test_free_in_callback(const char *url)
{
    char room[80];
    mkroom(room, sizeof room, url ? "fcb" : "lfcb");
    node *a = node_new("FC", url, 100, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    if (url) wait_ready(a);
    sub(a, room);
    if (url) synced(a, room);
    a->free_on_message = 1;
    pubres p[4];
    for (int i = 0; i < 4; i++) pub(a, room, NULL, "x", &p[i]);
    WAIT(a->b == NULL, 3000);
    CHECK(a->b == NULL && a->n == 1, "freed from on_message");
    settle();
    for (int i = 0; i < 4; i++) CHECK(p[i].done == 1, "publish %d answered once", i);
    node_free(a);
}

/* ---------------- Redis Cluster (3 masters started here) ---------------- */

static int cl_first = -1;
static char cl_url[128];

/* A room's slot moves to another master while a node publishes into it:
 * the old owner drops the subscriptions (sunsubscribe), the buses
 * resubscribe at the new owner, publishes follow ASK/TRYAGAIN/MOVED; both
 * subscribers see every acked seq once, in order, with no gap. */
static void test_cluster_slot_move(int seeded)
{
    /* seeded (as with a database): the scripts also read and write the
     * room's run key, which must move with the room like its other keys */
    node *a = seeded ? node_new_seeded("CA", cl_url, 0, "ep-move") : node_new("CA", cl_url, 1000, 60);
    node *b = seeded ? node_new_seeded("CB", cl_url, 0, "ep-move") : node_new("CB", cl_url, 1000, 60);
    wait_ready(a);
    wait_ready(b);
    char room[80];
    mkroom(room, sizeof room, seeded ? "moveseeded" : "move");
    snprintf(a->room, sizeof a->room, "%s", room);
    snprintf(b->room, sizeof b->room, "%s", room);
    sub(a, room);
    sub(b, room);
    synced(a, room);
    synced(b, room);
    int slot = redis_room_slot(room);
    int src = rp_slot_owner(cl_first, 3, slot);
    int dst = src == cl_first ? cl_first + 1 : cl_first;
    static streamer st;
    memset(&st, 0, sizeof st);
    st.nd = a;
    st.room = room;
    uv_timer_init(loop, &st.t);
    st.t.data = &st;
    uv_timer_start(&st.t, stream_tick, 1, 1);
    spin(200);
    CHECK(rp_move_slot_step(cl_first, 3, slot, src, dst, 1) == 0, "importing/migrating");
    spin(150);
    if (seeded) {
        /* the run key first: every other key of the room is still on the
         * source, so only a script that declares it gets ASK/TRYAGAIN
         * from Redis (an undeclared one fails: "non local key") */
        redisReply *m = rp_cmd(src, "MIGRATE 127.0.0.1 %d chat:{%s}:run 0 5000", rp_all[dst].port, room);
        CHECK(m && m->type == REDIS_REPLY_STATUS, "run key moved first: %s", m && m->str ? m->str : "?");
        if (m) freeReplyObject(m);
        spin(100);
    }
    int keys = 0;
    while (rp_move_slot_step(cl_first, 3, slot, src, dst, 2) > 0 && keys < 100) {
        keys++;
        spin(20); /* publishes meet a room split between two masters */
    }
    spin(100);
    rp_move_slot_step(cl_first, 3, slot, src, dst, 3);
    spin(400);
    st.stop = 1;
    uv_timer_stop(&st.t);
    streamer *ss[1] = {&st};
    WAIT(all_answered(ss, 1), 8000);
    uint64_t maxseq = 0;
    int acked = 0;
    for (int i = 0; i < st.sent; i++)
        if (st.res[i].done && st.res[i].status == 0) {
            acked++;
            if (st.res[i].seq > maxseq) maxseq = st.res[i].seq;
        }
    WAIT(a->n >= maxseq && b->n >= maxseq, 8000);
    fprintf(stderr, "cluster slot move%s: slot %d %d->%d, %d keys moved, %d sent, %d acked, "
            "%d refused, B got %zu\n", seeded ? " (seeded)" : "", slot, rp_all[src].port,
            rp_all[dst].port, keys, st.sent, acked, st.refused, b->n);
    CHECK(keys >= 2 && st.sent > 200, "the room had keys and traffic (%d keys, %d sent)", keys,
          st.sent);
    CHECK(acked == st.sent, "every publish acked across the move (%d of %d)", acked, st.sent);
    CHECK(maxseq == (uint64_t)acked, "seqs 1..%d (max %" PRIu64 ")", acked, maxseq);
    for (node *nd = a; nd; nd = nd == a ? b : NULL) {
        CHECK(nd->n == maxseq && contiguous(nd, 1, maxseq) && nd->ngaps == 0 &&
              nd->dup_or_disorder == 0,
              "%s: %zu messages, contiguous 1..%" PRIu64 ", %d gaps, %d dup/disorder", nd->name,
              nd->n, maxseq, nd->ngaps, nd->dup_or_disorder);
    }
    char why[300];
    CHECK(bus_health(a->b, why, sizeof why) == 1, "healthy after the move: %s", why);
    uv_close((uv_handle_t *)&st.t, NULL);
    node_free(a);
    node_free(b);
    settle();
}

/* Issue 11 defect 9: a redis:// URL at a Cluster node. Rooms of other
 * slots answer MOVED: the bus retries them with a growing delay, never
 * reconnects, and says what is wrong. */
static void test_cluster_node_as_standalone(void)
{
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", rp_all[cl_first].port);
    uint64_t rc0 = counter("chat_redis_reconnects_total");
    node *a = node_new("SA", url, 1000, 60);
    WAIT(bus_ready(a->b), 3000);
    char room[80], elsewhere[80] = "";
    for (int i = 0; i < 50 && !elsewhere[0]; i++) {
        char what[16];
        snprintf(what, sizeof what, "mv%d", i);
        mkroom(room, sizeof room, what);
        sub(a, room);
        if (rp_slot_owner(cl_first, 3, redis_room_slot(room)) != cl_first)
            snprintf(elsewhere, sizeof elsewhere, "%s", room);
    }
    pubres p;
    if (pub(a, elsewhere, NULL, "x", &p) == 0) WAIT(p.done, 3000); /* or refused at once */
    spin(1500);
    CHECK(!p.done || p.status == -1, "a publish to a room of another node fails (%d)", p.status);
    CHECK(counter("chat_redis_reconnects_total") == rc0, "no reconnect (%" PRIu64 ")",
          counter("chat_redis_reconnects_total") - rc0);
    char why[400];
    CHECK(bus_health(a->b, why, sizeof why) == 0 && strstr(why, "MOVED") &&
          strstr(why, "redis+cluster://"), "health: %s", why);
    node_free(a);
    settle();
}

/* The key part of a client id (bus_types.h bus_id_part): sender and id,
 * unambiguous whatever bytes they hold; NULL, empty or too long refused. */
static void test_id_part(void)
{
    char a[BUS_IDKEY_MAX + 1], b[BUS_IDKEY_MAX + 1];
    CHECK(bus_id_part(a, sizeof a, "alice", "1") == 9 && strcmp(a, "5:alice:1") == 0, "%s", a);
    CHECK(bus_id_part(a, sizeof a, "a:1", "x") > 0 && bus_id_part(b, sizeof b, "a", "1:x") > 0 &&
          strcmp(a, b) != 0, "user a:1 id x (%s) is not user a id 1:x (%s)", a, b);
    CHECK(bus_id_part(a, sizeof a, "bob", "1") > 0 && bus_id_part(b, sizeof b, "alice", "1") > 0 &&
          strcmp(a, b) != 0, "two senders, one id: two parts");
    char user[BUS_USER_MAX + 2], id[BUS_ID_MAX + 2];
    memset(user, 'u', sizeof user - 1);
    user[sizeof user - 1] = 0;
    memset(id, 'i', sizeof id - 1);
    id[sizeof id - 1] = 0;
    CHECK(bus_id_part(a, sizeof a, user, "1") == -1, "a user of 128 bytes refused");
    CHECK(bus_id_part(a, sizeof a, "u", id) == -1, "an id of 257 bytes refused");
    user[BUS_USER_MAX] = 0;
    id[BUS_ID_MAX] = 0;
    CHECK(bus_id_part(a, sizeof a, user, id) == (int)(4 + BUS_USER_MAX + 1 + BUS_ID_MAX),
          "the longest user and id fit BUS_IDKEY_MAX");
    CHECK(bus_id_part(a, 8, "alice", "1") == -1, "too small a buffer refused");
    CHECK(bus_id_part(a, sizeof a, NULL, "1") == -1 && bus_id_part(a, sizeof a, "", "1") == -1 &&
          bus_id_part(a, sizeof a, "u", NULL) == -1 && bus_id_part(a, sizeof a, "u", "") == -1,
          "NULL or empty refused");
}

/* Ids are per sender (protocol.md: a sender may resend with the same id):
 * alice's and bob's id "1" are two messages, each resend the duplicate of
 * its own sender's seq; forgetting bob's leaves alice's; users "a:1" id
 * "x" and "a" id "1:x" are two messages. In-process (url NULL) and Redis. */
static void test_ids_per_sender(const char *url)
{
    node *a = node_new("ids", url, 1000, 60);
    char room[80];
    mkroom(room, sizeof room, "idsnd");
    snprintf(a->room, sizeof a->room, "%s", room);
    if (url) wait_ready(a);
    sub(a, room);
    if (url) synced(a, room);
    pubres al, bo, al2, bo2, x1, x2, bo3;
    pub_as(a, room, "alice", "1", "from alice", &al);
    WAIT(al.done, 3000);
    pub_as(a, room, "bob", "1", "from bob", &bo);
    WAIT(bo.done, 3000);
    CHECK(al.status == 0 && !al.dup && bo.status == 0 && !bo.dup && bo.seq == al.seq + 1,
          "bob's id 1 is a new message (alice %" PRIu64 " bob %" PRIu64 " dup %d)", al.seq, bo.seq, bo.dup);
    pub_as(a, room, "alice", "1", "from alice", &al2);
    pub_as(a, room, "bob", "1", "from bob", &bo2);
    WAIT(al2.done && bo2.done, 3000);
    CHECK(al2.dup && al2.seq == al.seq && bo2.dup && bo2.seq == bo.seq, "each resend is its sender's");
    in_call = 1;
    bus_forget_id(a->b, room, "bob", "1", bo.seq);
    in_call = 0;
    spin(50);
    pub_as(a, room, "alice", "1", "from alice", &al2);
    WAIT(al2.done, 3000);
    CHECK(al2.dup && al2.seq == al.seq, "forgetting bob's id 1 keeps alice's");
    pub_as(a, room, "bob", "1", "from bob", &bo3);
    WAIT(bo3.done, 3000);
    CHECK(!bo3.dup && bo3.seq > bo.seq, "bob's forgotten id gets a new seq");
    pub_as(a, room, "a:1", "x", "m", &x1);
    pub_as(a, room, "a", "1:x", "m", &x2);
    WAIT(x1.done && x2.done, 3000);
    CHECK(!x1.dup && !x2.dup && x1.seq != x2.seq, "user a:1 id x and user a id 1:x: two messages");
    spin(50);
    CHECK(a->n == 5, "5 deliveries (%zu)", a->n);
    /* the longest id (64 characters of 4 bytes) is taken, one byte more is not */
    char id[BUS_ID_MAX + 2];
    for (int i = 0; i < 64; i++) memcpy(id + 4 * i, "\xf0\x9f\x98\x80", 4);
    id[BUS_ID_MAX] = 0;
    CHECK(pub_as(a, room, "alice", id, "m", &x1) == 0, "a 256-byte id");
    WAIT(x1.done, 3000);
    strcat(id, "x");
    CHECK(pub_as(a, room, "alice", id, "m", &x2) == -1, "a 257-byte id refused");
    CHECK(pub_as(a, room, NULL, "1", "m", &x2) == -1, "an id without a sender refused");
    node_free(a);
    settle();
}

int main(void)
{
    harness_begin("test_bus");

    test_url();
    test_id_part();
    test_ids_per_sender(NULL);
    test_local_basic();
    test_local_control();
    test_local_free_and_ttl();
    test_free_in_callback(NULL);
    int have_redis = harness_redis();
    if (have_redis) {
        test_ids_per_sender(rurl);
        test_two_nodes();
        test_trim_replay();
        test_gap_fill();
        test_refcount();
        test_noscript();
        test_sub_churn();
        test_three_nodes();
        test_free_pending();
        test_free_in_callback(rurl);
        test_replay_then_live();
        test_unsub_waiting_replay();
        if (rp_have_server() && (cl_first = rp_cluster(0, 2000)) >= 0) {
            snprintf(cl_url, sizeof cl_url, "redis+cluster://127.0.0.1:%d", rp_all[cl_first].port);
            test_cluster_slot_move(0);
            test_cluster_slot_move(1);
            test_cluster_node_as_standalone();
        } else {
            fprintf(stderr, "no Redis Cluster (redis-cli --cluster): cluster tests skipped\n");
        }
    }
    return harness_end("test_bus", have_redis);
}
