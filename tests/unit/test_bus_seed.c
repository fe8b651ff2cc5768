/* test_bus_seed: a room's head across Redis faults, against a real
 * redis-server (bus_harness.h) and in in-process mode: publishes missed
 * while the subscription is down (recovered or reported lost), a Redis
 * killed and restarted (full, empty, behind: seqs never go back), a Redis
 * that stops answering, the seed provider (the durable head, as with
 * Postgres: atomic, shared, failing, freed while pending) and the epoch
 * that makes a lost head visible without one. Exit 0 pass, 1 fail, 77
 * skip (no redis-server: in-process only). */
#include "bus_harness.h"
#include "redis_reply.h"

/* ---------------- Redis faults: missed publishes, restarts, stalls ---------------- */

/* the node misses publishes while its subscription is down: they are
 * recovered from the buffer after the reconnect (or reported lost) */
static void test_missed_while_down(size_t recent_max, int npub)
{
    char room[80];
    mkroom(room, sizeof room, recent_max < 10 ? "lostdown" : "missdown");
    node *a = node_new("M", rurl, recent_max, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    pubres p;
    pub(a, room, NULL, "first", &p);
    WAIT(a->n == 1, 3000);
    uint64_t rec0 = counter("chat_redis_reconnects_total");
    CHECK(rc_int("CLIENT KILL TYPE pubsub") >= 1, "killed the subscription connection");
    WAIT(!bus_ready(a->b), 2000);
    CHECK(!bus_ready(a->b) && a->nready && a->ready_log[a->nready - 1] == 0, "on_ready(0)");
    in_call = 1;
    CHECK(bus_publish(a->b, room, NULL, NULL, "\"x\"}", 4, pub_cb, &p) == -1, "publish refused while down");
    CHECK(bus_emit(a->b, room, "typing", "x", 1) == -1, "emit dropped while down");
    in_call = 0;
    char tail[64];
    for (int i = 0; i < npub; i++) {
        /* use the bus script with recent_max of the node */
        char kseq[128], krec[128], kep[128], krun[128], ch[128];
        snprintf(kseq, sizeof kseq, "chat:{%s}:seq", room);
        snprintf(krec, sizeof krec, "chat:{%s}:recent", room);
        snprintf(kep, sizeof kep, "chat:{%s}:epoch", room);
        snprintf(krun, sizeof krun, "chat:{%s}:run", room);
        snprintf(ch, sizeof ch, "chat:{%s}:msg", room);
        snprintf(tail, sizeof tail, "\"id\":\"\",\"body\":\"oob%d\"}", i);
        char keep[24];
        snprintf(keep, sizeof keep, "%zu", recent_max);
        /* ARGV: tail, recent_max, ttl, channel, floor, track, room, has id,
         * seed mode, seed, epoch (bus_script.c) */
        redisReply *r = rc("EVAL %s 4 %s %s %s %s %s %s 60 %s 0 0 %s 0 N 0 oobepoch", BUS_PUBLISH_LUA,
                           kseq, krec, kep, krun, tail, keep, ch, room);
        CHECK(r && r->type == REDIS_REPLY_ARRAY, "oob publish: %s / %s", r && r->str ? r->str : "?", sc ? sc->errstr : "no sc");
        if (r) freeReplyObject(r);
    }
    WAIT(bus_ready(a->b), 5000);
    CHECK(bus_ready(a->b) && a->nready && a->ready_log[a->nready - 1] == 1, "on_ready(1) again");
    CHECK(counter("chat_redis_reconnects_total") == rec0 + 1, "reconnect counted");
    uint64_t head = (uint64_t)npub + 1;
    if ((size_t)npub <= recent_max) {
        /* ready means recovered: everything is there already */
        CHECK(contiguous(a, 1, head), "recovered 1..%" PRIu64 " (n=%zu)", head, a->n);
        CHECK(a->ngaps == 0, "no gap");
    } else {
        uint64_t lost_to = head - recent_max;
        CHECK(a->ngaps == 1 && a->gap_from[0] == 2 && a->gap_to[0] == lost_to,
              "gap 2..%" PRIu64 " reported (%d gaps, %" PRIu64 "..%" PRIu64 ")", lost_to, a->ngaps,
              a->ngaps ? a->gap_from[0] : 0, a->ngaps ? a->gap_to[0] : 0);
        CHECK(a->n == 1 + recent_max && a->seqs[a->n - 1] == head, "the buffer's part delivered");
    }
    pub(a, room, NULL, "after", &p);
    WAIT(a->n && a->seqs[a->n - 1] == head + 1, 3000);
    CHECK(p.status == 0 && a->seqs[a->n - 1] == head + 1, "live again");
    CHECK(a->dup_or_disorder == 0, "no disorder");
    node_free(a);
    settle();
}

static void test_restart(void)
{
    if (!own_redis) {
        fprintf(stderr, "skip restart test: CHATD_TEST_REDIS_URL is not ours to kill\n");
        return;
    }
    char room[80];
    mkroom(room, sizeof room, "restart");
    node *a = node_new("RA", rurl, 1000, 60), *b = node_new("RB", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    snprintf(b->room, sizeof b->room, "%s", room);
    wait_ready(a);
    wait_ready(b);
    sub(a, room);
    sub(b, room);
    synced(a, room);
    synced(b, room);
    static streamer sa, sb;
    memset(&sa, 0, sizeof sa);
    memset(&sb, 0, sizeof sb);
    streamer *ss[2] = {&sa, &sb};
    node *nn[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        ss[i]->nd = nn[i];
        ss[i]->room = room;
        uv_timer_init(loop, &ss[i]->t);
        ss[i]->t.data = ss[i];
        uv_timer_start(&ss[i]->t, stream_tick, 2, 2);
    }
    spin(150);
    sc_close();
    rp_signal(rsrv, SIGKILL);
    WAIT(!bus_ready(a->b) && !bus_ready(b->b), 3000);
    CHECK(!bus_ready(a->b) && !bus_ready(b->b), "both nodes down");
    spin(300);
    CHECK(redis_start() == 0, "redis restarted");
    WAIT(bus_ready(a->b) && bus_ready(b->b), 8000);
    CHECK(bus_ready(a->b) && bus_ready(b->b), "both nodes ready again");
    spin(150);
    sa.stop = sb.stop = 1;
    for (int i = 0; i < 2; i++) uv_timer_stop(&ss[i]->t);
    /* wait for every publish to be answered */
    WAIT(all_answered(ss, 2), 5000);
    uint64_t head = (uint64_t)rc_int("GET chat:{%s}:seq", room);
    WAIT(a->n && b->n && a->seqs[a->n - 1] == head && b->seqs[b->n - 1] == head, 5000);
    int ok = 0, failed = 0;
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < ss[k]->sent; j++) {
            CHECK(ss[k]->res[j].done == 1, "answered");
            if (ss[k]->res[j].status == 0) ok++; else failed++;
        }
    fprintf(stderr, "restart: %d ok, %d status -1, %d refused (-1), head %" PRIu64 ", A %zu B %zu\n",
            ok, failed, sa.refused + sb.refused, head, a->n, b->n);
    CHECK(sa.refused + sb.refused + failed > 0, "some publishes failed while down");
    CHECK(contiguous(a, 1, head) && contiguous(b, 1, head), "A and B see 1..%" PRIu64, head);
    CHECK(a->ngaps == 0 && b->ngaps == 0 && a->dup_or_disorder == 0 && b->dup_or_disorder == 0,
          "no gap, no duplicate, no disorder");
    CHECK((uint64_t)ok <= head, "every ok publish has its own seq");
    int seenready0 = 0;
    for (int i = 0; i < a->nready; i++) if (a->ready_log[i] == 0) seenready0 = 1;
    CHECK(seenready0 && a->nready && a->ready_log[a->nready - 1] == 1, "ready went 0 then 1");
    for (int i = 0; i < 2; i++) uv_close((uv_handle_t *)&ss[i]->t, NULL);
    node_free(a);
    node_free(b);
    settle();
}

/* Redis restarts EMPTY (data lost): seqs never go back. The subscribed node
 * raises the seq key to what it delivered at the resync, and a publish
 * carries the node's floor, so no acked seq is ever assigned again. */
static void test_restart_empty(void)
{
    if (!own_redis) return;
    char room[80];
    mkroom(room, sizeof room, "empty");
    node *a = node_new("EA", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    pubres p[5];
    for (int i = 0; i < 5; i++) pub(a, room, NULL, "before", &p[i]);
    WAIT(a->n == 5, 3000);
    CHECK(contiguous(a, 1, 5), "1..5 before (n=%zu)", a->n);
    sc_close();
    rp_signal(rsrv, SIGKILL);
    WAIT(!bus_ready(a->b), 3000);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'/* 2>/dev/null", rp_all[rsrv].dir);
    CHECK(system(cmd) == 0, "redis data removed");
    CHECK(redis_start() == 0, "redis restarted empty");
    WAIT(bus_ready(a->b), 8000);
    CHECK(bus_ready(a->b), "ready again");
    CHECK(rc_int("GET chat:{%s}:seq", room) == 5, "seq raised to 5 at the resync (%lld)",
          rc_int("GET chat:{%s}:seq", room));
    pubres r1;
    pub(a, room, NULL, "after", &r1);
    WAIT(r1.done && a->n == 6, 3000);
    CHECK(r1.status == 0 && r1.seq == 6, "seq 6 after the empty restart (%" PRIu64 ")", r1.seq);
    CHECK(contiguous(a, 1, 6) && a->ngaps == 0 && a->dup_or_disorder == 0,
          "A sees 1..6 once each (n=%zu)", a->n);
    /* a second node, subscribed after the restart, continues after 6 */
    node *b = node_new("EB", rurl, 1000, 60);
    snprintf(b->room, sizeof b->room, "%s", room);
    wait_ready(b);
    sub(b, room);
    synced(b, room);
    pub(b, room, NULL, "from-b", &r1);
    WAIT(r1.done && a->n == 7 && b->n == 1, 3000);
    CHECK(r1.seq == 7 && a->n == 7 && b->n == 1 && b->seqs[0] == 7, "B publishes 7, both see it");
    node_free(a);
    node_free(b);
    settle();
}

/* a Redis that stops answering (SIGSTOP) is detected by the health PING:
 * pending publishes answer -1, ready goes 0, and 1 again after SIGCONT */
static void test_stalled(void)
{
    if (!own_redis) return;
    char room[80];
    mkroom(room, sizeof room, "stall");
    node *a = node_new("S", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    rp_signal(rsrv, SIGSTOP);
    pubres p[3];
    for (int i = 0; i < 3; i++) CHECK(pub(a, room, NULL, "st", &p[i]) == 0, "queued");
    WAIT(!bus_ready(a->b) && p[0].done && p[1].done && p[2].done, 12000);
    CHECK(!bus_ready(a->b), "stall detected");
    for (int i = 0; i < 3; i++) CHECK(p[i].done == 1 && p[i].status == -1, "pending publish -1");
    rp_signal(rsrv, SIGCONT);
    WAIT(bus_ready(a->b), 8000);
    CHECK(bus_ready(a->b), "ready after SIGCONT");
    pubres q;
    pub(a, room, NULL, "after", &q);
    WAIT(q.done, 3000);
    WAIT(a->n && a->seqs[a->n - 1] == q.seq, 3000);
    /* the stalled publishes may have run once Redis woke up: delivered once */
    CHECK(q.status == 0 && a->n == q.seq && contiguous(a, 1, q.seq), "in order, n=%zu seq=%" PRIu64,
          a->n, q.seq);
    sc_close();
    CHECK(sc_connect(3000) == 0, "sync client back");
    node_free(a);
    settle();
}

/* ---------------- seeds and epochs ---------------- */

static int is_hex16(const char *s)
{
    if (strlen(s) != 16) return 0;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'))) return 0;
    return 1;
}

/* replay of the head only, synchronously */
static void head_of(node *nd, const char *room, repres *r)
{
    if (replay(nd, room, UINT64_MAX, 0, r) != 0) { CHECK(0, "head replay refused"); return; }
    WAIT(r->done, 5000);
}

/* With a seed provider (Postgres holds history): a room without a seq key
 * (first use, Redis lost its data) is seeded from the durable head before
 * any seq is handed out or any head reported, atomically; concurrent
 * publishes share one seed request; a failing provider makes publishes
 * answer -1 and creates nothing; a node subscribed to a room with no head
 * takes the first message as its start (no gap reported). */
static void test_seed_redis(void)
{
    char room[80], room2[80], room3[80];
    mkroom(room, sizeof room, "seed");
    mkroom(room2, sizeof room2, "seedsub");
    mkroom(room3, sizeof room3, "seedfail");
    node *a = node_new_seeded("SA", rurl, 41, "epoch-pg-1");
    snprintf(a->room, sizeof a->room, "%s", room2);
    wait_ready(a);
    sub(a, room); /* a publishing node holds the room (its floor counts) */
    /* 20 concurrent publishes to a room Redis knows nothing about */
    pubres p[20];
    for (int i = 0; i < 20; i++) CHECK(pub(a, room, NULL, "s", &p[i]) == 0, "publish queued");
    int done = 0;
    for (int k = 0; k < 300 && done < 20; k++) {
        spin(10);
        done = 0;
        for (int i = 0; i < 20; i++) done += p[i].done;
    }
    uint64_t seen = 0;
    for (int i = 0; i < 20; i++) {
        CHECK(p[i].done && p[i].status == 0 && p[i].seq >= 42 && p[i].seq <= 61,
              "publish %d after the seed: status %d seq %" PRIu64, i, p[i].status, p[i].seq);
        if (p[i].seq >= 42 && p[i].seq <= 61) seen |= 1ull << (p[i].seq - 42);
    }
    CHECK(seen == (1ull << 20) - 1, "seqs 42..61 once each");
    CHECK(a->nseeds == 1, "one seed request for 20 publishes (%d)", a->nseeds);
    char *ep = NULL;
    redisReply *rr = rc("GET chat:{%s}:epoch", room);
    if (rr && rr->type == REDIS_REPLY_STRING) ep = strdup(rr->str);
    freeReplyObject(rr);
    CHECK(ep && strcmp(ep, "epoch-pg-1") == 0, "epoch key from the provider (%s)", ep ? ep : "-");
    free(ep);
    repres r;
    head_of(a, room, &r);
    CHECK(r.status == 0 && r.head == 61 && strcmp(r.epoch, "epoch-pg-1") == 0,
          "head 61, provider epoch (%d %" PRIu64 " %s)", r.status, r.head, r.epoch);
    CHECK(a->nseeds == 1, "a head read with keys present asks nothing");
    /* Redis loses the room's keys: the next publish is seeded again, from
     * what is "stored" now (61), never reusing a seq */
    rc_int("DEL chat:{%s}:seq chat:{%s}:epoch", room, room);
    a->seed_max = 61;
    pubres q;
    pub(a, room, "id-x", "again", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.seq == 62 && !q.dup, "62 after the loss (%d %" PRIu64 ")", q.status, q.seq);
    CHECK(a->nseeds == 2, "seeded again");
    /* the provider's head is below the node's floor (this node was acked 62):
     * the floor wins */
    rc_int("DEL chat:{%s}:seq chat:{%s}:epoch", room, room);
    a->seed_max = 10;
    head_of(a, room, &r);
    CHECK(r.status == 0 && r.head >= 10, "head after a stale seed (%" PRIu64 ")", r.head);
    pub(a, room, NULL, "floor", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.seq > 62, "never below the node's acked 62 (%" PRIu64 ")", q.seq);
    /* a replay with since on a room without keys: seeded first, then the
     * range (empty buffer: status 1, the caller pages history) */
    rc_int("DEL chat:{%s}:seq chat:{%s}:epoch chat:{%s}:recent", room, room, room);
    a->seed_max = 100;
    if (replay(a, room, 90, 50, &r) == 0) WAIT(r.done, 5000);
    CHECK(r.done && r.status == 1 && r.head == 100 && strcmp(r.epoch, "epoch-pg-1") == 0,
          "replay since 90 after the loss: status %d head %" PRIu64, r.status, r.head);
    /* subscribe a room with no head: adopted at the first message */
    a->seed_max = 500;
    sub(a, room2);
    spin(300);
    CHECK(rc_int("EXISTS chat:{%s}:seq", room2) == 0, "the subscription created no key");
    synced(a, room2); /* a head read: seeds (500) */
    node *b = node_new_seeded("SB", rurl, 500, "epoch-pg-2");
    wait_ready(b);
    pub(b, room2, NULL, "first", &q);
    WAIT(q.done && a->n == 1, 5000);
    CHECK(q.status == 0 && q.seq == 501, "first seq of a seeded room (%" PRIu64 ")", q.seq);
    CHECK(a->n == 1 && a->seqs[0] == 501 && a->ngaps == 0,
          "subscriber got 501 with no gap (n=%zu gaps=%d)", a->n, a->ngaps);
    pub(b, room2, NULL, "second", &q);
    WAIT(a->n == 2, 3000);
    CHECK(contiguous(a, 501, 502), "then 502");
    /* a failing provider: -1, nothing created; later it works */
    b->seed_fail = 1;
    pub(b, room3, NULL, "x", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == -1, "publish without a head answers -1 (%d)", q.status);
    head_of(b, room3, &r);
    CHECK(r.status == -1, "head read without a head answers -1 (%d)", r.status);
    CHECK(rc_int("EXISTS chat:{%s}:seq", room3) == 0, "nothing created");
    b->seed_fail = 0;
    b->seed_max = 7;
    pub(b, room3, NULL, "x", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.seq == 8, "then 8 (%d %" PRIu64 ")", q.status, q.seq);
    node_free(a);
    node_free(b);
    settle();
}

/* Redis restarts empty under a subscribed node that has a seed provider:
 * the resync seeds the head from max(durable head, what the node delivered),
 * never from the node's floor alone (other nodes may have stored more), and
 * reports what the node missed as a gap. */
static void test_seed_resync(void)
{
    if (!own_redis) return;
    char room[80];
    mkroom(room, sizeof room, "seedresync");
    node *a = node_new_seeded("SR", rurl, 0, "ep-r");
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    pubres p[3];
    for (int i = 0; i < 3; i++) pub(a, room, NULL, "x", &p[i]);
    WAIT(a->n == 3, 3000);
    CHECK(contiguous(a, 1, 3), "1..3 before");
    sc_close();
    rp_signal(rsrv, SIGKILL);
    WAIT(!bus_ready(a->b), 3000);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'/* 2>/dev/null", rp_all[rsrv].dir);
    CHECK(system(cmd) == 0, "redis data removed");
    a->seed_max = 8; /* another node stored 4..8 before the loss */
    int seeds0 = a->nseeds;
    CHECK(redis_start() == 0, "redis restarted empty");
    WAIT(bus_ready(a->b), 8000);
    CHECK(bus_ready(a->b), "ready again");
    CHECK(a->nseeds == seeds0 + 1, "the resync asked for the durable head (%d)", a->nseeds - seeds0);
    CHECK(rc_int("GET chat:{%s}:seq", room) == 8, "head seeded to 8 (%lld)",
          rc_int("GET chat:{%s}:seq", room));
    pubres q;
    pub(a, room, NULL, "after", &q);
    WAIT(q.done && a->n == 4, 3000);
    CHECK(q.status == 0 && q.seq == 9, "next seq 9 (%" PRIu64 ")", q.seq);
    CHECK(a->n == 4 && a->seqs[3] == 9 && a->ngaps == 1 && a->gap_from[0] == 4 && a->gap_to[0] == 8,
          "delivered 9, gap 4..8 reported (n=%zu gaps=%d)", a->n, a->ngaps);
    node_free(a);
    settle();
}

/* Redis restarts BEHIND (an older snapshot, an AOF fsynced every second
 * and a host crash, a replica promoted before it had the last writes): the
 * seq key is present but below what Postgres stored. Every head written
 * under another Redis run counts as unknown: the next publish, head read or
 * resync asks the provider and raises the head to max(stored, floor) before
 * a seq is handed out. Node B never held the room (floor 0), so only the
 * run check stands between it and handing out seq 4 again. */
static void test_seed_behind(void)
{
    if (!own_redis) return;
    char room[80], url[64];
    mkroom(room, sizeof room, "behind");
    int snap = rp_start((char *)NULL); /* RDB only, saved when told */
    CHECK(snap >= 0, "second redis-server started");
    if (snap < 0) return;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", rp_all[snap].port);
    node *a = node_new_seeded("BA", url, 0, "ep-b");
    wait_ready(a);
    pubres p[6];
    for (int i = 0; i < 3; i++) { pub(a, room, NULL, "x", &p[i]); WAIT(p[i].done, 3000); }
    CHECK(p[2].status == 0 && p[2].seq == 3, "1..3 (%" PRIu64 ")", p[2].seq);
    redisReply *rr = rp_cmd(snap, "SAVE");
    CHECK(rr && rr->type == REDIS_REPLY_STATUS, "snapshot at seq 3");
    freeReplyObject(rr);
    for (int i = 3; i < 6; i++) { pub(a, room, NULL, "x", &p[i]); WAIT(p[i].done, 3000); }
    CHECK(p[5].status == 0 && p[5].seq == 6, "4..6 after the snapshot (%" PRIu64 ")", p[5].seq);
    node_free(a);
    CHECK(rp_restart(snap) == 0, "redis restarted from the snapshot");
    rr = rp_cmd(snap, "GET chat:{%s}:seq", room);
    CHECK(rr && rr->type == REDIS_REPLY_STRING && strcmp(rr->str, "3") == 0,
          "Redis is behind: its head is 3 (%s)", rr && rr->type == REDIS_REPLY_STRING ? rr->str : "-");
    freeReplyObject(rr);
    /* Postgres stored 1..6 */
    node *b = node_new_seeded("BB", url, 6, "ep-b");
    wait_ready(b);
    repres r;
    head_of(b, room, &r);
    CHECK(r.status == 0 && r.head == 6, "head read: 6, not the stale 3 (%d %" PRIu64 ")", r.status, r.head);
    pubres q;
    pub(b, room, "id-behind", "after", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.seq == 7 && !q.dup, "next seq 7, not 4 again (%d %" PRIu64 ")", q.status, q.seq);
    CHECK(b->nseeds == 1, "one seed for the restarted Redis (%d)", b->nseeds);
    pub(b, room, NULL, "more", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.seq == 8 && b->nseeds == 1, "8, no seed while the run stays (%" PRIu64 " %d)",
          q.seq, b->nseeds);
    node_free(b);
    rp_signal(snap, SIGKILL);
    settle();
}

/* rp_cmd's integer or string reply as a number (-1: missing or an error) */
static long long snap_int(int srv, const char *fmt, const char *room, const char *id)
{
    redisReply *rr = rp_cmd(srv, fmt, room, id);
    long long v = -1;
    if (rr && rr->type == REDIS_REPLY_INTEGER) v = rr->integer;
    else if (rr && rr->type == REDIS_REPLY_STRING) v = atoll(rr->str);
    if (rr) freeReplyObject(rr);
    return v;
}

/* Exactly-once across a Redis that lost its id keys (docs/redis.md "Heads,
 * seeds and epochs"): a message stored with client id X whose ack never
 * reached the client is resent after Redis restarted behind (a snapshot
 * taken before X): the seed writes the stored ids of the window back
 * before it seeds the head, so the resend is a duplicate with X's seq and
 * no new seq is used. An id published before the window is not restored
 * (a resend of it is new); a key that survived is kept (NX); more ids than
 * one restore call are written in chunks; a restore that fails fails the
 * seed (the publish answers -1, counted) and a retry succeeds. */
static void test_seed_ids(void)
{
    if (!own_redis) return;
    char room[80], big[80], url[64];
    mkroom(room, sizeof room, "seedids");
    mkroom(big, sizeof big, "seedidsbig");
    int snap = rp_start((char *)NULL); /* RDB only, saved when told */
    CHECK(snap >= 0, "second redis-server started");
    if (snap < 0) return;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", rp_all[snap].port);
    node *a = node_new_seeded("IA", url, 0, "ep-i");
    wait_ready(a);
    pubres p[4];
    pub(a, room, "id-old", "old", &p[0]);
    WAIT(p[0].done, 3000);
    CHECK(p[0].status == 0 && p[0].seq == 1, "seq 1 (%d %" PRIu64 ")", p[0].status, p[0].seq);
    redisReply *rr = rp_cmd(snap, "SAVE");
    CHECK(rr && rr->type == REDIS_REPLY_STATUS, "snapshot at seq 1");
    freeReplyObject(rr);
    pub(a, room, "id-x", "x", &p[1]);
    WAIT(p[1].done, 3000);
    pub(a, room, "id-y", "y", &p[2]);
    WAIT(p[2].done, 3000);
    CHECK(p[1].seq == 2 && p[2].seq == 3, "X is 2, Y is 3 (%" PRIu64 " %" PRIu64 ")", p[1].seq,
          p[2].seq);
    node_free(a);
    CHECK(rp_restart(snap) == 0, "redis restarted from the snapshot");
    CHECK(snap_int(snap, "EXISTS chat:{%s}:sid:1:u:%s", room, "id-x") == 0, "X's id key is gone");
    CHECK(snap_int(snap, "DEL chat:{%s}:sid:1:u:%s", room, "id-old") == 1, "the old id's key dropped too");
    /* Postgres stored 1..3: id-old (published before the window), X, Y */
    uint64_t now = now_ms();
    const char *ids[] = {"id-old", "id-x", "id-y"};
    const uint64_t seqs[] = {1, 2, 3};
    const uint64_t ts[] = {now - 61000, now - 20000, now - 1000};
    node *b = node_new_seeded("IB", url, 3, "ep-i");
    b->seed_ids = ids;
    b->seed_id_seq = seqs;
    b->seed_id_ts = ts;
    b->nseed_ids = 3;
    wait_ready(b);
    uint64_t calls0 = bus_restore_calls(b->b);
    pubres q;
    pub(b, room, "id-x", "x", &q); /* the resend of X */
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.dup && q.seq == 2, "the resend of X is a duplicate of 2 (%d dup %d %" PRIu64 ")",
          q.status, q.dup, q.seq);
    CHECK(b->nseeds == 1 && bus_restore_calls(b->b) == calls0 + 1, "one seed, one restore call (%d, %" PRIu64 ")",
          b->nseeds, bus_restore_calls(b->b) - calls0);
    CHECK(b->seed_since >= now - 61000 && b->seed_since <= now_ms() - 59000,
          "the window asked: the last 60 s (%" PRIu64 " ms ago)", now_ms() - b->seed_since);
    /* the seed call seeded the head before it answered the duplicate (the
     * stored max, 3: no seq used), so the next publish needs no seed */
    CHECK(snap_int(snap, "GET chat:{%s}:seq", room, "") == 3, "the head seeded to 3, no seq used");
    char runv[64] = "";
    redisReply *rv = rp_cmd(snap, "GET chat:{%s}:run", room);
    if (rv && rv->type == REDIS_REPLY_STRING) snprintf(runv, sizeof runv, "%s", rv->str);
    if (rv) freeReplyObject(rv);
    CHECK(strlen(runv) == REDIS_RUN_ID_LEN && runv[0] != 'i' && runv[0] != 'p',
          "the run key is this run (%s)", runv);
    long long ttl = snap_int(snap, "TTL chat:{%s}:sid:1:u:%s", room, "id-x");
    CHECK(ttl >= 35 && ttl <= 40, "X's key lives what is left of its window (%lld s of 40)", ttl);
    pub(b, room, "id-y", "y", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.dup && q.seq == 3, "Y too (%d %" PRIu64 ")", q.status, q.seq);
    CHECK(b->nseeds == 1, "no second seed for the room (%d)", b->nseeds);
    CHECK(snap_int(snap, "EXISTS chat:{%s}:sid:1:u:%s", room, "id-old") == 0, "the old id is not restored");
    pub(b, room, "id-old", "old", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && !q.dup && q.seq == 4, "a resend of the old id is new: 4 (%d %" PRIu64 ")",
          q.status, q.seq);
    node_free(b);

    /* more ids than one call: 1200 stored rows (3 calls); a key that
     * survived keeps its value (NX) */
    static char bigids[1200][16];
    static const char *bp[1200];
    static uint64_t bseq[1200], bts[1200];
    now = now_ms();
    for (int i = 0; i < 1200; i++) {
        snprintf(bigids[i], sizeof bigids[i], "c-%d", i + 1);
        bp[i] = bigids[i];
        bseq[i] = (uint64_t)i + 1;
        bts[i] = now - 5000;
    }
    rr = rp_cmd(snap, "SET chat:{%s}:sid:1:u:c-5 77", big);
    freeReplyObject(rr);
    node *c = node_new_seeded("IC", url, 1200, "ep-c");
    c->seed_ids = bp;
    c->seed_id_seq = bseq;
    c->seed_id_ts = bts;
    c->nseed_ids = 1200;
    wait_ready(c);
    calls0 = bus_restore_calls(c->b);
    pub(c, big, "c-1200", "z", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.dup && q.seq == 1200, "c-1200 is a duplicate of 1200 (%d %" PRIu64 ")",
          q.status, q.seq);
    CHECK(bus_restore_calls(c->b) == calls0 + (1200 + BUS_RESTORE_CHUNK - 1) / BUS_RESTORE_CHUNK,
          "1200 ids in %d calls (%" PRIu64 ")", (1200 + BUS_RESTORE_CHUNK - 1) / BUS_RESTORE_CHUNK,
          bus_restore_calls(c->b) - calls0);
    int restored = 0;
    for (int i = 0; i < 1200; i++) restored += snap_int(snap, "GET chat:{%s}:sid:1:u:%s", big, bigids[i]) == i + 1;
    CHECK(restored == 1199, "every id but the one that survived maps to its seq (%d)", restored);
    CHECK(snap_int(snap, "GET chat:{%s}:sid:1:u:%s", big, "c-5") == 77, "the key that survived is kept");
    pub(c, big, "c-1", "z", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.dup && q.seq == 1, "c-1 is a duplicate of 1");
    pub(c, big, "c-new", "z", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && !q.dup && q.seq == 1201, "a new id gets 1201 (%" PRIu64 ")", q.seq);
    node_free(c);

    /* a restore that fails (Redis refuses writes: maxmemory) fails the
     * seed: nothing is published, it is counted; once Redis takes writes
     * the retry restores and answers the duplicate */
    rr = rp_cmd(snap, "FLUSHALL");
    freeReplyObject(rr);
    node *d = node_new_seeded("ID", url, 3, "ep-i");
    d->seed_ids = ids;
    d->seed_id_seq = seqs;
    d->seed_id_ts = ts;
    d->nseed_ids = 3;
    wait_ready(d);
    rr = rp_cmd(snap, "CONFIG SET maxmemory 1");
    freeReplyObject(rr);
    uint64_t fails0 = counter("chat_bus_seed_failures_total");
    pub(d, room, "id-x", "x", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == -1, "the publish answers -1 while the ids cannot be written (%d)", q.status);
    CHECK(counter("chat_bus_seed_failures_total") == fails0 + 1, "the failed seed is counted");
    CHECK(snap_int(snap, "EXISTS chat:{%s}:seq", room, "") == 0, "no head was seeded");
    rr = rp_cmd(snap, "CONFIG SET maxmemory 0");
    freeReplyObject(rr);
    pub(d, room, "id-x", "x", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.dup && q.seq == 2, "the retry: a duplicate of 2 (%d %" PRIu64 ")", q.status,
          q.seq);
    node_free(d);
    rp_signal(snap, SIGKILL);
    settle();
}

/* bus_free while a seed's restore call is in Redis (paused): the waiting
 * publish answers -1 once, the call's late answer (none: the client is
 * freed) frees the seed; nothing leaks (ASan) and nothing runs later. */
static void test_seed_ids_free(void)
{
    if (!own_redis) return;
    char room[80];
    mkroom(room, sizeof room, "seedidsfree");
    static const char *ids[] = {"f1"};
    static uint64_t seqs[] = {1}, ts[1];
    ts[0] = now_ms();
    node *a = node_new_seeded("IF", rurl, 1, "ep-f");
    a->seed_ids = ids;
    a->seed_id_seq = seqs;
    a->seed_id_ts = ts;
    a->nseed_ids = 1;
    a->seed_hold = 1;
    wait_ready(a);
    pubres p;
    pub(a, room, "f1", "x", &p);
    WAIT(a->nheld == 1, 3000);
    spin(50); /* the ask of the room's holders answered (none) */
    CHECK(a->nheld == 1 && !p.done, "the publish waits for the seed");
    uint64_t calls0 = bus_restore_calls(a->b);
    redisReply *rr = rc("CLIENT PAUSE 400 ALL");
    CHECK(rr && rr->type == REDIS_REPLY_STATUS, "Redis paused");
    if (rr) freeReplyObject(rr);
    seed_answer(a); /* the restore call goes out and waits in Redis */
    CHECK(bus_restore_calls(a->b) == calls0 + 1, "the restore call was sent");
    spin(50);
    CHECK(!p.done, "still waiting for the restore");
    bus_free(a->b); /* answers inside, by contract */
    a->b = NULL;
    CHECK(p.done == 1 && p.status == -1, "answered -1 (%d %d)", p.done, p.status);
    spin(500);
    settle();
    CHECK(p.done == 1, "once");
    free(a);
}

/* The run key's "ids restored" mark (bus_script.c): mode 'Y' seeds only
 * after a restore call of this Redis run marked it (or the head is of this
 * run); a next restore call that finds no mark of its run fails. */
static void test_seed_ids_mark(void)
{
    char room[80], kseq[128], krec[128], kep[128], krun[128], ch[128], kid[160];
    mkroom(room, sizeof room, "seedmark");
    snprintf(kseq, sizeof kseq, "chat:{%s}:seq", room);
    snprintf(krec, sizeof krec, "chat:{%s}:recent", room);
    snprintf(kep, sizeof kep, "chat:{%s}:epoch", room);
    snprintf(krun, sizeof krun, "chat:{%s}:run", room);
    snprintf(ch, sizeof ch, "chat:{%s}:msg", room);
    snprintf(kid, sizeof kid, "chat:{%s}:sid:1:u:m1", room);
    const char *run = "abc123", *other = "def456";
    /* a head of another run, no mark: 'Y' answers "needs seed", changes nothing */
    rc_int("SET %s %s", krun, other);
    redisReply *r = rc("EVAL %s 4 %s %s %s %s t 100 60 %s 0 0 %s 0 Y%s 9 ep", BUS_PUBLISH_LUA, kseq,
                       krec, kep, krun, ch, room, run);
    CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->integer == 0 &&
              r->element[1]->integer == 2, "'Y' without the mark: needs seed");
    if (r) freeReplyObject(r);
    r = rc("EVAL %s 3 %s %s %s 0 Y%s 9 ep", BUS_HEAD_LUA, kseq, kep, krun, run);
    CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->integer == 2,
          "head 'Y' without the mark: needs seed");
    if (r) freeReplyObject(r);
    CHECK(rc_int("EXISTS %s", kseq) == 0, "nothing seeded");
    /* a next call ('C') without a mark of its run fails */
    r = rc("EVAL %s 2 %s %s C%s 5 30", BUS_RESTORE_LUA, krun, kid, run);
    CHECK(r && r->type == REDIS_REPLY_ERROR, "'C' without the mark: error");
    if (r) freeReplyObject(r);
    CHECK(rc_int("EXISTS %s", kid) == 0, "it wrote nothing");
    /* a restore in several calls: the first marks "p<run>" (partly back),
     * and no 'Y' passes before the last call made it "i<run>" (another
     * node's seed must not start the run on a restore still under way) */
    char kid2[160], kid3[160];
    snprintf(kid2, sizeof kid2, "chat:{%s}:sid:1:u:m2", room);
    snprintf(kid3, sizeof kid3, "chat:{%s}:sid:1:u:m3", room);
    r = rc("EVAL %s 2 %s %s F%s 6 30", BUS_RESTORE_LUA, krun, kid2, run);
    CHECK(r && r->type == REDIS_REPLY_INTEGER, "'F' restores");
    if (r) freeReplyObject(r);
    r = rc("GET %s", krun);
    CHECK(r && r->type == REDIS_REPLY_STRING && r->str[0] == 'p' && strcmp(r->str + 1, run) == 0,
          "'F' of several marks p<run>");
    if (r) freeReplyObject(r);
    r = rc("EVAL %s 4 %s %s %s %s t 100 60 %s 0 0 %s 0 Y%s 9 ep", BUS_PUBLISH_LUA, kseq, krec, kep,
           krun, ch, room, run);
    CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->integer == 0 &&
              r->element[1]->integer == 2, "'Y' while the restore is under way: needs seed");
    if (r) freeReplyObject(r);
    r = rc("EVAL %s 3 %s %s %s 0 Y%s 9 ep", BUS_HEAD_LUA, kseq, kep, krun, run);
    CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->integer == 2,
          "head 'Y' while the restore is under way: needs seed");
    if (r) freeReplyObject(r);
    r = rc("EVAL %s 2 %s %s C%s 7 30", BUS_RESTORE_LUA, krun, kid3, run);
    CHECK(r && r->type == REDIS_REPLY_INTEGER, "'C' after p<run>");
    if (r) freeReplyObject(r);
    r = rc("EVAL %s 2 %s %s C%s 7 30", BUS_RESTORE_LUA, krun, kid3, other);
    CHECK(r && r->type == REDIS_REPLY_ERROR, "'C' of another run: error");
    if (r) freeReplyObject(r);
    r = rc("GET %s", krun);
    CHECK(r && r->type == REDIS_REPLY_STRING && r->str[0] == 'p', "still p<run> after 'C'");
    if (r) freeReplyObject(r);
    r = rc("EVAL %s 2 %s %s L%s 5 30", BUS_RESTORE_LUA, krun, kid, run);
    CHECK(r && r->type == REDIS_REPLY_INTEGER, "'L' restores");
    if (r) freeReplyObject(r);
    r = rc("GET %s", krun);
    CHECK(r && r->type == REDIS_REPLY_STRING && r->str[0] == 'i' && strcmp(r->str + 1, run) == 0,
          "'L' turns p<run> into i<run>");
    if (r) freeReplyObject(r);
    CHECK(rc_int("GET %s", kid2) == 6 && rc_int("GET %s", kid3) == 7, "every chunk's ids written");
    CHECK(rc_int("GET %s", kid) == 5 && rc_int("TTL %s", kid) > 0 && rc_int("TTL %s", kid) <= 30,
          "id key 5 with its ttl");
    r = rc("EVAL %s 4 %s %s %s %s t 100 60 %s 0 0 %s 0 Y%s 9 ep", BUS_PUBLISH_LUA, kseq, krec, kep,
           krun, ch, room, run);
    CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->integer == 10,
          "'Y' after the mark: seeded to 9, seq 10");
    if (r) freeReplyObject(r);
    r = rc("GET %s", krun);
    CHECK(r && r->type == REDIS_REPLY_STRING && strcmp(r->str, run) == 0, "the run key is the run");
    if (r) freeReplyObject(r);
    /* a later restore of this run ('O' or 'F') leaves the run key as it is */
    r = rc("EVAL %s 1 %s O%s", BUS_RESTORE_LUA, krun, run);
    if (r) freeReplyObject(r);
    r = rc("EVAL %s 1 %s F%s", BUS_RESTORE_LUA, krun, run);
    if (r) freeReplyObject(r);
    r = rc("GET %s", krun);
    CHECK(r && r->type == REDIS_REPLY_STRING && strcmp(r->str, run) == 0, "not marked back");
    if (r) freeReplyObject(r);
    /* 'E' (a seed that had no id to write back): seeds whatever the run key
     * holds, another run's head or another node's restore under way */
    for (int i = 0; i < 2; i++) {
        char pm[64];
        snprintf(pm, sizeof pm, "%s%s", i ? "p" : "", i ? run : other);
        rc_int("DEL %s %s %s", kseq, kep, krun);
        rc_int("SET %s %s", krun, pm);
        r = rc("EVAL %s 4 %s %s %s %s t 100 60 %s 0 0 %s 0 E%s 20 ep", BUS_PUBLISH_LUA, kseq, krec,
               kep, krun, ch, room, run);
        CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->integer == 21,
              "'E' over %s: seeded to 20, seq 21", pm);
        if (r) freeReplyObject(r);
        r = rc("GET %s", krun);
        CHECK(r && r->type == REDIS_REPLY_STRING && strcmp(r->str, run) == 0, "'E': the run key is the run");
        if (r) freeReplyObject(r);
        rc_int("DEL %s %s %s", kseq, kep, krun);
        rc_int("SET %s %s", krun, pm);
        r = rc("EVAL %s 3 %s %s %s 0 E%s 30 ep", BUS_HEAD_LUA, kseq, kep, krun, run);
        CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 4 && r->element[1]->integer == 30,
              "head 'E' over %s: seeded to 30", pm);
        if (r) freeReplyObject(r);
    }
    /* the only call ('O') of a seed marks i<run> at once (its ids are all in it) */
    rc_int("SET %s %s", krun, other);
    r = rc("EVAL %s 1 %s O%s", BUS_RESTORE_LUA, krun, run);
    if (r) freeReplyObject(r);
    r = rc("GET %s", krun);
    CHECK(r && r->type == REDIS_REPLY_STRING && r->str[0] == 'i' && strcmp(r->str + 1, run) == 0,
          "'O' marks i<run>");
    if (r) freeReplyObject(r);
    rc_int("DEL %s %s %s %s %s %s %s", kseq, krec, kep, krun, kid, kid2, kid3);
}

/* A seed that found no client id to write back (a new room, or none in the
 * window) makes no restore call: the publish goes out in mode 'E' at once
 * (a brand-new room's first message costs no extra Redis round) */
static void test_seed_no_ids(void)
{
    char room[80];
    mkroom(room, sizeof room, "seednoids");
    node *a = node_new_seeded("NE", rurl, 5, "ep-n");
    wait_ready(a);
    uint64_t calls0 = bus_restore_calls(a->b);
    pubres p;
    pub(a, room, "n1", "x", &p);
    WAIT(p.done, 3000);
    CHECK(p.status == 0 && !p.dup && p.seq == 6, "seeded to 5, seq 6 (%d %" PRIu64 ")", p.status, p.seq);
    CHECK(a->nseeds == 1 && bus_restore_calls(a->b) == calls0, "one seed, no restore call (%" PRIu64 ")",
          bus_restore_calls(a->b) - calls0);
    node_free(a);
    rc_int("DEL chat:{%s}:seq chat:{%s}:epoch chat:{%s}:run chat:{%s}:recent chat:{%s}:sid:1:u:n1", room, room,
           room, room, room);
}

/* A seed restores each stored id under its sender (Postgres gives the
 * row's user with it, bus_seed_add_id): alice's and bob's id "1" at seqs
 * 1 and 2 are each the duplicate of their own seq, carol's "1" is new. */
static void test_seed_ids_senders(void)
{
    char room[80];
    mkroom(room, sizeof room, "seedsnd");
    uint64_t now = now_ms();
    const char *ids[] = {"1", "1"}, *users[] = {"alice", "bob"};
    const uint64_t seqs[] = {1, 2}, ts[] = {now - 2000, now - 1000};
    node *a = node_new_seeded("SS", rurl, 2, "ep-s");
    a->seed_ids = ids;
    a->seed_id_users = users;
    a->seed_id_seq = seqs;
    a->seed_id_ts = ts;
    a->nseed_ids = 2;
    wait_ready(a);
    pubres p, q, r;
    pub_as(a, room, "bob", "1", "b", &p);
    WAIT(p.done, 3000);
    CHECK(p.status == 0 && p.dup && p.seq == 2, "bob's resend: the duplicate of 2 (%d %d %" PRIu64 ")",
          p.status, p.dup, p.seq);
    pub_as(a, room, "alice", "1", "a", &q);
    WAIT(q.done, 3000);
    CHECK(q.status == 0 && q.dup && q.seq == 1, "alice's resend: the duplicate of 1 (%" PRIu64 ")", q.seq);
    pub_as(a, room, "carol", "1", "c", &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 0 && !r.dup && r.seq == 3, "carol's id 1 is new: 3 (%d %" PRIu64 ")", r.dup, r.seq);
    CHECK(rc_int("GET chat:{%s}:sid:5:alice:1", room) == 1 && rc_int("GET chat:{%s}:sid:3:bob:1", room) == 2,
          "the keys name their senders");
    node_free(a);
    rc_int("DEL chat:{%s}:seq chat:{%s}:epoch chat:{%s}:run chat:{%s}:recent chat:{%s}:sid:5:alice:1 "
           "chat:{%s}:sid:3:bob:1 chat:{%s}:sid:5:carol:1", room, room, room, room, room, room, room);
}

/* Redis loses a room's head without dropping the connections (FLUSHALL,
 * FLUSHDB, an evicted or deleted key: no resync) while node A holds the
 * room and has broadcast seq 4 that history does not hold yet (stored max
 * 3). Node B, which does not hold the room, publishes: before seeding from
 * history it asks the holders (a "!seed" message on the room's channel), A
 * raises the head to what it delivered (4) and B's message gets 5, which
 * A's subscribers receive: one seq order. */
static void del_room_keys(const char *room)
{
    rc_int("DEL chat:{%s}:seq chat:{%s}:epoch chat:{%s}:run chat:{%s}:recent", room, room, room, room);
}

static void test_seed_asks_holders(void)
{
    char room[80];
    mkroom(room, sizeof room, "askholders");
    node *a = node_new_seeded("HA", rurl, 0, "ep-h"), *b = node_new_seeded("HB", rurl, 0, "ep-h");
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    wait_ready(b);
    sub(a, room);
    synced(a, room);
    pubres p[4];
    for (int i = 0; i < 4; i++) pub(a, room, NULL, "a", &p[i]);
    WAIT(a->n == 4 && p[3].done, 3000);
    CHECK(contiguous(a, 1, 4) && p[3].seq == 4, "A broadcast 1..4");
    a->seed_max = b->seed_max = 3; /* seq 4 is not stored yet */
    del_room_keys(room);
    int sa = a->nseeds, sb = b->nseeds;
    uint64_t unraised = counter("chat_bus_seed_unraised_total");
    pubres q;
    pub(b, room, NULL, "b", &q);
    WAIT(q.done && a->n == 5, 5000);
    CHECK(q.status == 0 && q.seq == 5, "B's message after A's 4 gets 5 (%d %" PRIu64 ")", q.status, q.seq);
    CHECK(a->n == 5 && a->seqs[4] == 5 && a->ngaps == 0 && a->dup_or_disorder == 0,
          "A's subscriber got it as 5 (n=%zu)", a->n);
    CHECK(b->nseeds == sb + 1 && a->nseeds == sa + 1, "B asked history once, A raised (%d %d)",
          b->nseeds - sb, a->nseeds - sa);
    CHECK(counter("chat_bus_seed_unraised_total") == unraised, "no wait ran out");
    /* a replay of the head on B after another loss: the same */
    del_room_keys(room);
    repres r;
    head_of(b, room, &r);
    CHECK(r.status == 0 && r.head == 5, "B's head read after a loss: 5 (%d %" PRIu64 ")", r.status, r.head);
    /* A publishing itself after a loss (its own subscription got its ask,
     * nobody else holds the room): no wait, its floor counts */
    del_room_keys(room);
    uint64_t t0 = mono_ms();
    pub(a, room, NULL, "a", &q);
    WAIT(q.done && a->n == 6, 5000);
    CHECK(q.status == 0 && q.seq == 6 && a->n == 6, "A's next is 6 (%" PRIu64 ")", q.seq);
    CHECK(mono_ms() - t0 < 1000, "A did not wait for itself (%" PRIu64 " ms)", mono_ms() - t0);
    CHECK(counter("chat_bus_seed_unraised_total") == unraised, "no wait ran out");
    /* two holders publishing at once after a loss ask each other: each
     * one's raise (not waiting for the holders itself) answers the other's
     * ask, nobody waits out the bound */
    sub(b, room);
    synced(b, room);
    del_room_keys(room);
    pubres qa, qb;
    t0 = mono_ms();
    pub(a, room, NULL, "a", &qa);
    pub(b, room, NULL, "b", &qb);
    WAIT(qa.done && qb.done && a->n == 8, 5000);
    uint64_t took = mono_ms() - t0;
    CHECK(qa.status == 0 && qb.status == 0 && qa.seq + qb.seq == 15 && qa.seq != qb.seq,
          "7 and 8 (%" PRIu64 " %" PRIu64 ")", qa.seq, qb.seq);
    CHECK(contiguous(a, 1, 8) && a->dup_or_disorder == 0, "A delivered 1..8 (n=%zu)", a->n);
    CHECK(took < 1000, "two holders did not wait for each other (%" PRIu64 " ms)", took);
    CHECK(counter("chat_bus_seed_unraised_total") == unraised, "no wait ran out");
    node_free(a);
    node_free(b);
    settle();
}

/* A holder that never raises (frozen, or a node too old to know the ask;
 * here a bare subscriber of the room's channel): the seed waits for it a
 * bounded time, then goes on from history alone, counted. A bus freed
 * while its seed waits answers -1, leaves nothing behind (ASan). */
static void test_seed_holder_silent(void)
{
    char room[80], room2[80], ch[128];
    mkroom(room, sizeof room, "silent");
    mkroom(room2, sizeof room2, "silentfree");
    redisContext *mute = redisConnect(surl.seeds[0].host, surl.seeds[0].port);
    CHECK(mute && !mute->err, "a second connection");
    if (!mute || mute->err) { if (mute) redisFree(mute); return; }
    for (int i = 0; i < 2; i++) {
        snprintf(ch, sizeof ch, "chat:{%s}:msg", i ? room2 : room);
        redisReply *rr = redisCommand(mute, "SUBSCRIBE %s", ch);
        CHECK(rr && rr->type == REDIS_REPLY_ARRAY, "bare subscriber of %s", ch);
        if (rr) freeReplyObject(rr);
    }
    node *b = node_new_seeded("SB", rurl, 7, "ep-s");
    wait_ready(b);
    uint64_t unraised = counter("chat_bus_seed_unraised_total");
    uint64_t t0 = mono_ms();
    pubres q;
    pub(b, room, NULL, "b", &q);
    WAIT(q.done, 8000);
    uint64_t took = mono_ms() - t0;
    CHECK(q.done && q.status == 0 && q.seq == 8, "published from history after the wait (%d %" PRIu64 ")",
          q.status, q.seq);
    CHECK(took >= 1000, "it waited for the holder first (%" PRIu64 " ms)", took);
    CHECK(counter("chat_bus_seed_unraised_total") == unraised + 1, "the wait that ran out is counted");
    /* freed while waiting: with the provider's answer in (polling), and
     * with it still pending (answered after the bus is gone) */
    for (int hold = 0; hold < 2; hold++) {
        node *c = node_new_seeded("SC", rurl, 7, "ep-s");
        wait_ready(c);
        c->seed_hold = hold;
        pubres w;
        pub(c, room2, NULL, "c", &w);
        spin(120);
        CHECK(!w.done, "waiting for the holder (hold %d)", hold);
        bus_free(c->b);
        c->b = NULL;
        CHECK(w.done && w.status == -1, "answered -1 when freed (hold %d)", hold);
        spin(100);
        seed_answer(c); /* after the bus is gone */
        spin(100);
        CHECK(w.done == 1, "once");
        free(c);
    }
    redisFree(mute);
    node_free(b);
    settle();
}

/* bus_free while a seed request is with the provider: the waiting publish
 * and replay answer -1 once; answering afterwards only frees the request. */
static void test_seed_free_pending(const char *url)
{
    char room[80];
    mkroom(room, sizeof room, url ? "seedfree" : "seedfreel");
    node *a = node_new_seeded("SF", url, 5, "ep");
    if (url) wait_ready(a);
    a->seed_hold = 1;
    pubres p;
    repres r;
    pub(a, room, NULL, "x", &p);
    replay(a, room, 2, 10, &r);
    WAIT(a->nheld >= 1, 3000);
    CHECK(a->nheld == 1 && !p.done && !r.done, "both wait for one seed (%d)", a->nheld);
    bus_free(a->b); /* answers inside, by contract */
    a->b = NULL;
    CHECK(p.done == 1 && p.status == -1 && r.done == 1 && r.status == -1, "answered -1");
    seed_answer(a); /* after the bus is gone */
    settle();
    CHECK(p.done == 1 && r.done == 1, "once");
    free(a);
}

/* A node whose seed provider holds every query (Postgres stuck) and whose
 * seeds have a deadline of dl_ms: the setup of the deadline tests. */
static node *stuck_provider_node(const char *name, const char *url, const char *epoch, int dl_ms)
{
    node *a = node_new_seeded_dl(name, url, 5, epoch, dl_ms);
    if (url) wait_ready(a);
    a->seed_hold = 1;
    return a;
}

/* A provider that does not answer (Postgres stuck behind a lock): at the
 * deadline (bus_opts.seed_timeout_ms) the seed fails: the publish waiting
 * for it gets -1, the replay BUS_HEAD_LATE (-2: its caller does not read
 * the same head from Postgres again), never a hang; the late answer is
 * dropped and frees the request (ASan), also once the bus is gone; the
 * room seeds again at its next use after it. */
static void test_seed_deadline(const char *url)
{
    char room[80], room2[80];
    mkroom(room, sizeof room, url ? "seeddl" : "seeddll");
    mkroom(room2, sizeof room2, url ? "seeddlfree" : "seeddlfreel");
    node *a = stuck_provider_node("SD", url, "ep-d", 300);
    uint64_t t0 = mono_ms();
    pubres p;
    repres r;
    pub(a, room, NULL, "x", &p);
    replay(a, room, 2, 10, &r);
    WAIT(a->nheld >= 1, 3000);
    spin(100);
    CHECK(!p.done && !r.done, "waiting for the provider before the deadline");
    WAIT(p.done && r.done, 3000);
    uint64_t took = mono_ms() - t0;
    CHECK(p.done == 1 && p.status == -1 && r.done == 1 && r.status == BUS_HEAD_LATE,
          "publish -1, replay -2 at the deadline (%d %d)", p.status, r.status);
    CHECK(took >= 250 && took < 2000, "at the deadline (%" PRIu64 " ms)", took);
    CHECK(a->nseeds == 1 && a->nheld == 1, "one request, still with the provider (%d)", a->nheld);
    seed_answer(a); /* the late answer: dropped, the request freed */
    spin(50);
    CHECK(p.done == 1 && r.done == 1, "answered once");
    /* the next use asks again (answered at once now) */
    a->seed_hold = 0;
    pubres p2;
    pub(a, room, NULL, "y", &p2);
    WAIT(p2.done, 3000);
    CHECK(p2.status == 0 && p2.seq == 6 && a->nseeds == 2, "seeded again: seq 6 (%d %" PRIu64 ")",
          p2.status, p2.seq);
    /* timed out, then the bus freed, then the late answer */
    a->seed_hold = 1;
    pubres q;
    pub(a, room2, NULL, "q", &q);
    WAIT(q.done, 3000);
    CHECK(q.status == -1 && a->nheld == 1, "timed out (%d)", q.status);
    bus_free(a->b);
    a->b = NULL;
    seed_answer(a); /* after the bus is gone */
    settle();
    CHECK(q.done == 1, "once");
    free(a);
}

/* A provider stuck for longer than the deadline (Postgres behind a lock):
 * the room's uses after the deadline do not pile more queries on it (the
 * store queues thousands of reads): while the one that timed out is still
 * with the provider, they fail at once (publish -1, replay BUS_HEAD_LATE),
 * well within the deadline, and it gets no second query; once it answered
 * (late, dropped) the next use asks again and succeeds. */
static void test_seed_late_once(const char *url)
{
    char room[80];
    mkroom(room, sizeof room, url ? "seedlate" : "seedlatel");
    node *a = stuck_provider_node("SL", url, "ep-l", 500);
    pubres p;
    pub(a, room, NULL, "x", &p);
    WAIT(p.done, 3000);
    CHECK(p.status == -1 && a->nseeds == 1 && a->nheld == 1, "timed out (%d, %d queries)",
          p.status, a->nseeds);
    uint64_t late0 = counter("chat_bus_seed_late_uses_total");
    for (int i = 0; i < 3; i++) {
        uint64_t t0 = mono_ms();
        pubres q;
        repres r;
        pub(a, room, NULL, "y", &q);
        replay(a, room, 2, 10, &r);
        WAIT(q.done && r.done, 3000);
        uint64_t took = mono_ms() - t0;
        CHECK(q.status == -1 && r.status == BUS_HEAD_LATE && took < 400,
              "use %d after the deadline: unavailable at once (%d %d, %" PRIu64 " ms)", i, q.status,
              r.status, took);
    }
    CHECK(a->nseeds == 1 && a->nheld == 1, "one query to the provider (%d)", a->nseeds);
    /* one per request for the head: the in-process bus parks a room's
     * uses behind one, the Redis bus asks per use */
    CHECK(counter("chat_bus_seed_late_uses_total") - late0 >= 3, "the uses counted (%" PRIu64 ")",
          counter("chat_bus_seed_late_uses_total") - late0);
    seed_answer(a); /* Postgres answers again: the late answer is dropped */
    a->seed_hold = 0;
    pubres p2;
    pub(a, room, NULL, "z", &p2);
    WAIT(p2.done, 3000);
    CHECK(p2.status == 0 && p2.seq == 6 && a->nseeds == 2, "the next use seeds: seq 6 (%d %" PRIu64 ")",
          p2.status, p2.seq);
    node_free(a);
    settle();
}

/* Without a provider: a room's epoch is created with its seq key, stays,
 * and changes when Redis loses the keys (the head restarts). */
static void test_epoch_redis(void)
{
    char room[80];
    mkroom(room, sizeof room, "epoch");
    node *a = node_new("EP", rurl, 1000, 60);
    wait_ready(a);
    repres r, r2;
    head_of(a, room, &r);
    CHECK(r.status == 0 && r.head == 0 && is_hex16(r.epoch), "fresh room: head 0, epoch %s", r.epoch);
    pubres p;
    pub(a, room, NULL, "x", &p);
    WAIT(p.done, 3000);
    CHECK(p.seq == 1, "seq 1");
    head_of(a, room, &r2);
    CHECK(r2.head == 1 && strcmp(r.epoch, r2.epoch) == 0, "same epoch after a publish");
    rc_int("DEL chat:{%s}:seq chat:{%s}:epoch", room, room);
    head_of(a, room, &r2);
    CHECK(r2.status == 0 && is_hex16(r2.epoch) && strcmp(r.epoch, r2.epoch) != 0,
          "a lost head shows as a new epoch (%s -> %s)", r.epoch, r2.epoch);
    /* a publish on a room with no keys creates both */
    char room2[80];
    mkroom(room2, sizeof room2, "epoch2");
    pub(a, room2, NULL, "x", &p);
    WAIT(p.done, 3000);
    CHECK(p.seq == 1 && rc_int("EXISTS chat:{%s}:epoch", room2) == 1, "publish creates the epoch");
    node_free(a);
    settle();
}

/* In-process mode: with a provider a room starts at the durable head (its
 * publishes and replays wait for it, in order), a subscriber adopts the
 * first message; without one, every room has the process's epoch. */
static void test_local_seed(void)
{
    char room[80];
    mkroom(room, sizeof room, "lseed");
    node *a = node_new_seeded("LS", NULL, 30, "pg-epoch");
    snprintf(a->room, sizeof a->room, "%s", room);
    sub(a, room);
    repres r0;
    replay(a, room, 30, 10, &r0);
    pubres p[5];
    for (int i = 0; i < 5; i++) pub(a, room, NULL, "l", &p[i]);
    WAIT(p[4].done && a->n == 5, 3000);
    for (int i = 0; i < 5; i++)
        CHECK(p[i].status == 0 && p[i].seq == 31 + (uint64_t)i, "local seq %" PRIu64, p[i].seq);
    CHECK(contiguous(a, 31, 35) && a->ngaps == 0, "subscriber sees 31..35, no gap (n=%zu)", a->n);
    CHECK(a->nseeds == 1, "one seed (%d)", a->nseeds);
    CHECK(r0.done && r0.status == 0 && r0.head == 30 && r0.n == 0 &&
          strcmp(r0.epoch, "pg-epoch") == 0, "replay queued before the publishes: head 30 (%" PRIu64 ")",
          r0.head);
    repres r;
    head_of(a, room, &r);
    CHECK(r.head == 35 && strcmp(r.epoch, "pg-epoch") == 0, "head 35");
    node_free(a);
    node *b = node_new("LN", NULL, 100, 60);
    repres e1, e2;
    head_of(b, "any-room-1", &e1);
    head_of(b, "any-room-2", &e2);
    CHECK(is_hex16(e1.epoch) && strcmp(e1.epoch, e2.epoch) == 0, "one epoch per process start");
    node_free(b);
    node *c = node_new("LN2", NULL, 100, 60);
    head_of(c, "any-room-1", &e2);
    CHECK(strcmp(e1.epoch, e2.epoch) != 0, "a new bus (process) has a new epoch");
    node_free(c);
    settle();
}

/* A publish whose callback frees the bus, called when the bus fails it
 * (a room whose seed is past its deadline: the use fails at once, from the
 * loop). bus_free frees every request nobody holds; the failing request is
 * still being answered there: it must stay (ASan: bus_req_unhold read it
 * after bus_free had freed it). The other room's publish, queued behind,
 * is answered once, by bus_free. */
static node *cbfree_node;
static int cbfree_calls;

static void cbfree_cb(void *ud, int status, uint64_t seq, int dup)
{
    (void)ud;
    (void)seq;
    (void)dup;
    cbfree_calls++;
    CHECK(status == -1, "the failing publish: -1 (%d)", status);
    if (cbfree_node->b) {
        bus_free(cbfree_node->b);
        cbfree_node->b = NULL;
    }
}

static void test_seed_cb_frees_bus(const char *url)
{
    char room[80], other[80];
    mkroom(room, sizeof room, url ? "cbfree" : "cbfreel");
    mkroom(other, sizeof other, url ? "cbfree2" : "cbfree2l");
    node *a = stuck_provider_node("CF", url, "ep-c", 300);
    cbfree_node = a;
    cbfree_calls = 0;
    pubres p, p2;
    pub(a, room, NULL, "x", &p);
    pub(a, other, NULL, "x", &p2);
    WAIT(p.done && p2.done, 3000);
    CHECK(p.status == -1 && p2.status == -1, "both seeds timed out (%d %d)", p.status, p2.status);
    /* both rooms' seeds are still with the provider: uses fail at once */
    in_call = 1;
    bus_publish(a->b, room, PUB_USER, NULL, "\"body\":\"q\"}", 11, cbfree_cb, NULL);
    in_call = 0;
    pubres q;
    pub(a, other, NULL, "y", &q);
    WAIT(cbfree_calls == 1 && q.done, 3000);
    CHECK(cbfree_calls == 1 && q.done == 1 && q.status == -1, "each answered once (%d %d %d)",
          cbfree_calls, q.done, q.status);
    seed_answer(a); /* the late answers, after the bus is gone */
    settle();
    free(a);
}

int main(void)
{
    harness_begin("test_bus_seed");

    test_local_seed();
    test_seed_free_pending(NULL);
    test_seed_deadline(NULL);
    test_seed_late_once(NULL);
    test_seed_cb_frees_bus(NULL);
    int have_redis = harness_redis();
    if (have_redis) {
        test_missed_while_down(1000, 5);
        test_missed_while_down(3, 10);
        test_stalled();
        test_restart();
        test_restart_empty();
        test_seed_redis();
        test_seed_resync();
        test_seed_behind();
        test_seed_ids();
        test_seed_ids_mark();
        test_seed_no_ids();
        test_seed_ids_senders();
        test_seed_ids_free();
        test_seed_free_pending(rurl);
        test_seed_asks_holders();
        test_seed_holder_silent();
        test_seed_deadline(rurl);
        test_seed_late_once(rurl);
        test_seed_cb_frees_bus(rurl);
        test_epoch_redis();
    }
    return harness_end("test_bus_seed", have_redis);
}
