/* test_bus_backfill: the backfill of unstored messages (bus_backfill.c)
 * against a real redis-server (bus_harness.h): tracking (refused without a
 * history check), marks, grace, lease, lost entries, the sweep lock, round
 * limits and their follow-up rounds, zero-pair and failed rounds, failed
 * checks and settles; and that in-process mode has no backfill. Exit 0
 * pass, 1 fail, 77 skip (no redis-server: in-process only). */
#include "bus_harness.h"

/* ---------------- backfill of unstored messages ---------------- */

static void stored_add(node *nd, const char *room, uint64_t seq)
{
    snprintf(nd->stored_room[nd->nstored], sizeof nd->stored_room[0], "%s", room);
    nd->stored_seq[nd->nstored++] = seq;
}

/* answers the held check: nothing of it stored (everything with
 * check_all_stored) */
static void check_answer_held(node *nd)
{
    unsigned char st[512] = {0};
    if (nd->check_all_stored) memset(st, 1, sizeof st);
    bus_check *req = nd->held_check;
    nd->held_check = NULL;
    nd->check_hold = 0;
    if (req) bus_check_done(req, 0, st);
}

static int asked_count(const node *nd, const char *room, uint64_t seq)
{
    int c = 0;
    for (size_t i = 0; i < nd->asked && i < 256; i++)
        if (nd->asked_seq[i] == seq && strcmp(nd->asked_room[i], room) == 0) c++;
    return c;
}

/* how many times nd got (room, seq) through on_unstored */
static int uns_count(const node *nd, const char *room, uint64_t seq)
{
    int c = 0;
    for (int i = 0; i < nd->nuns; i++)
        if (nd->uns_seq[i] == seq && strcmp(nd->uns_room[i], room) == 0) c++;
    return c;
}

static void mark(node *nd, const char *room, uint64_t seq)
{
    in_call = 1;
    bus_mark_stored(nd->b, room, seq);
    in_call = 0;
}

/* tracking unstored messages needs a history check: refused without one */
static void test_track_needs_check(void)
{
    bus_opts o = {rurl, 1000, 60, 1, 600, 0, 0, 0, 0};
    char err[128] = "";
    bus *b = bus_new(loop, &o, &handlers, NULL, err, sizeof err);
    CHECK(!b && strstr(err, "on_check"), "bus_new refused: %s", err);
    if (b) bus_free(b);
}

/* the backfill grace and limits have one default, the settings' (config.c):
 * the bus has none of its own and refuses a 0 (unset) when it tracks
 * unstored messages; the settings' values are accepted */
static void test_track_needs_settings(void)
{
    bus_opts cases[] = {
        {rurl, 1000, 60, 1, 0, CONFIG_BACKFILL_CHECK_ROOMS, CONFIG_BACKFILL_CHECK_PER_ROOM, 0, 0},
        {rurl, 1000, 60, 1, 3000, 0, CONFIG_BACKFILL_CHECK_PER_ROOM, 0, 0},
        {rurl, 1000, 60, 1, 3000, CONFIG_BACKFILL_CHECK_ROOMS, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[200] = "";
        bus *b = bus_new(loop, &cases[i], &handlers_checking, NULL, err, sizeof err);
        CHECK(!b && strstr(err, "CHAT_BACKFILL_"), "case %zu: bus_new refused: %s", i, err);
        if (b) bus_free(b);
    }
    /* the settings' defaults, as the server passes them */
    config c;
    char err[200] = "";
    char *argv[] = {"chatd", NULL};
    CHECK(config_load(&c, 1, argv, err, sizeof err) == 0, "config defaults: %s", err);
    CHECK(c.backfill_grace_ms == 3000, "CHAT_BACKFILL_GRACE_MS default 3000 (%lld)",
          (long long)c.backfill_grace_ms);
    bus_opts o = {rurl, 1000, 60, 1, (uint32_t)c.backfill_grace_ms, (uint32_t)c.backfill_check_rooms,
                  (uint32_t)c.backfill_check_per_room, 0, 0};
    bus *b = bus_new(loop, &o, &handlers_checking, NULL, err, sizeof err);
    CHECK(b != NULL, "bus_new with the settings' defaults: %s", err);
    if (b) bus_free(b);
}

static void test_backfill(void)
{
    char room[80], lost[80], locked[80];
    mkroom(room, sizeof room, "bf");
    mkroom(lost, sizeof lost, "bflost");
    mkroom(locked, sizeof locked, "bflock");
    /* A publishes (its own sweeper would only run after 30 s), B sweeps
     * with a 600 ms grace; C keeps a recent buffer of 2 */
    node *a = node_new_checking("A", rurl, 60000);
    node *b = node_new_checking("B", rurl, 600);
    node *c = node_new_checking_recent("C", rurl, 2, 60000);
    node *plain = node_new("P", rurl, 1000, 60);
    wait_ready(a);
    wait_ready(b);
    wait_ready(c);
    wait_ready(plain);
    pubres p1, p2, p3, pd, pp;
    uint64_t t0 = mono_ms();
    pub(a, room, "bf-1", "one", &p1);
    pub(a, room, NULL, "two", &p2);
    WAIT(p1.done && p2.done, 3000); /* two connections: no order between them */
    pub(plain, room, NULL, "untracked", &pp);
    WAIT(p1.done && p2.done && pp.done, 3000);
    CHECK(p1.status == 0 && p1.seq == 1 && p2.seq == 2 && pp.seq == 3, "seqs %" PRIu64 " %" PRIu64,
          p1.seq, p2.seq);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 2, "two unstored entries (not the untracked one)");
    CHECK(rc_int("ZSCORE chat:{%s}:unstored 1", room) > 1000000000000LL &&
              rc_int("ZSCORE chat:{%s}:unstored 2", room) > 1000000000000LL &&
              rc_int("ZSCORE chat:{%s}:unstored 3", room) == 0, "members 1, 2 scored by time");
    CHECK(rc_int("ZSCORE chat:unstored %s", room) > 1000000000000LL, "room indexed with a ms time");
    /* a duplicate is not recorded again */
    pub(a, room, "bf-1", "one", &pd);
    WAIT(pd.done, 3000);
    CHECK(pd.dup == 1 && rc_int("ZCARD chat:{%s}:unstored", room) == 2, "duplicate not recorded");
    /* marking seq 2 clears it, the room stays indexed (seq 1 is left) */
    mark(a, room, 2);
    WAIT(rc_int("ZCARD chat:{%s}:unstored", room) == 1, 2000);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 1 && rc_int("EXISTS chat:unstored") == 1,
          "mark cleared seq 2 only");
    /* seq 1 is now older than B's grace; seq 4 is new */
    while (mono_ms() - t0 < 700) spin(10);
    pub(a, room, NULL, "four", &p3);
    WAIT(p3.done, 3000);
    CHECK(p3.seq == 4, "seq 4");
    WAIT(uns_count(b, room, 1) >= 1, 3000);
    CHECK(uns_count(b, room, 1) == 1, "B backfills seq 1 (got %d)", uns_count(b, room, 1));
    CHECK(uns_count(b, room, 4) == 0, "seq 4 is younger than the grace: not offered yet");
    CHECK(uns_count(a, room, 1) == 0, "A's sweeper did not run");
    int k = 0;
    for (; k < b->nuns; k++) if (b->uns_seq[k] == 1 && strcmp(b->uns_room[k], room) == 0) break;
    CHECK(k < b->nuns && strstr(b->uns_tail[k], "\"body\":\"one\"") &&
              strstr(b->uns_tail[k], "\"id\":\"bf-1\""), "tail of seq 1: %s",
          k < b->nuns ? b->uns_tail[k] : "");
    /* the lease: not offered again within the grace */
    spin(350);
    CHECK(uns_count(b, room, 1) == 1, "seq 1 leased (offered %d times)", uns_count(b, room, 1));
    stored_add(b, room, 1); /* B stored it: its next check forgets it */
    WAIT(uns_count(b, room, 4) >= 1, 3000);
    CHECK(uns_count(b, room, 4) == 1 && uns_count(b, room, 1) == 1, "seq 4 offered once, 1 not again");
    stored_add(b, room, 4);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", room) == 0 &&
             rc_int("ZSCORE chat:unstored %s", room) == 0, 2000);
    CHECK(rc_int("EXISTS chat:{%s}:unstored", room) == 0, "set empty");
    CHECK(rc_int("ZSCORE chat:unstored %s", room) == 0, "room left the index");
    CHECK(counter("chat_bus_backfill_total") >= 2, "backfill metric");

    /* entries the recent buffer lost: removed and counted, the rest offered */
    uint64_t lost0 = counter("chat_bus_backfill_lost_total");
    pubres q[4];
    for (int i = 0; i < 4; i++) pub(c, lost, NULL, "x", &q[i]);
    WAIT(q[0].done && q[1].done && q[2].done && q[3].done, 3000);
    WAIT(uns_count(b, lost, 3) && uns_count(b, lost, 4), 3000);
    CHECK(uns_count(b, lost, 3) == 1 && uns_count(b, lost, 4) == 1 && uns_count(b, lost, 1) == 0 &&
              uns_count(b, lost, 2) == 0, "only 3 and 4 offered");
    CHECK(counter("chat_bus_backfill_lost_total") == lost0 + 2, "2 lost (%" PRIu64 ")",
          counter("chat_bus_backfill_lost_total") - lost0);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", lost) == 2, "lost ones removed");
    mark(c, lost, 3);
    mark(c, lost, 4);

    /* the lock: while another node holds the round, B does not sweep */
    node *d = node_new_checking("D", rurl, 600);
    wait_ready(d);
    redisReply *r = rc("SET chat:backfill:lock other PX 1800");
    if (r) freeReplyObject(r);
    uint64_t r0 = bus_backfill_rounds(b->b) + bus_backfill_rounds(d->b), t1 = mono_ms();
    pubres pl;
    pub(a, locked, NULL, "l", &pl);
    WAIT(pl.done, 3000);
    spin(1200);
    CHECK(uns_count(b, locked, 1) + uns_count(d, locked, 1) == 0 &&
              bus_backfill_rounds(b->b) + bus_backfill_rounds(d->b) == r0,
          "no sweep while another node holds the lock");
    WAIT(uns_count(b, locked, 1) + uns_count(d, locked, 1) >= 1, 3000);
    CHECK(mono_ms() - t1 >= 1700, "swept only after the lock expired");
    /* B and D tick every 300 ms; the lock lets one of them sweep a round */
    uint64_t r1 = bus_backfill_rounds(b->b) + bus_backfill_rounds(d->b), t2 = mono_ms();
    int o1 = uns_count(b, locked, 1) + uns_count(d, locked, 1);
    spin(1500);
    int offers = uns_count(b, locked, 1) + uns_count(d, locked, 1) - o1;
    uint64_t rounds = bus_backfill_rounds(b->b) + bus_backfill_rounds(d->b) - r1;
    uint64_t el = mono_ms() - t2;
    CHECK(rounds >= 2 && rounds <= el / 300 + 1, "%" PRIu64 " rounds in %" PRIu64 " ms", rounds, el);
    /* the lease: an offered seq waits another grace, whichever node sweeps */
    CHECK(offers >= 1 && (uint64_t)offers <= el / 600 + 1, "offered %d times in %" PRIu64 " ms",
          offers, el);
    stored_add(b, locked, 1);
    stored_add(d, locked, 1);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", locked) == 0, 3000);
    CHECK(rc_int("ZSCORE chat:unstored %s", locked) == 0, "locked room cleared");
    CHECK(a->dup_or_disorder == 0, "no disorder");
    node_free(a);
    node_free(b);
    node_free(c);
    node_free(d);
    node_free(plain);
    settle();
}

/* the sweeper asks history (on_check) instead of waiting for marks: stored
 * seqs leave the unstored set, the others are backfilled (leased), a failed
 * check changes nothing, a mark still forgets an entry at once */
static void test_backfill_check(void)
{
    char room[80], room2[80];
    mkroom(room, sizeof room, "bfc");
    mkroom(room2, sizeof room2, "bfc2");
    rc_int("DEL chat:backfill:lock");
    /* A publishes (its sweeper would run after 60 s); K checks with a 600 ms grace */
    node *a = ready(node_new_checking("A", rurl, 60000));
    node *k = ready(node_new_checking("K", rurl, 600));
    k->check_fail = 1;
    pubres p[4];
    pub(a, room, "bfc-1", "one", &p[0]);
    pub(a, room, NULL, "two", &p[1]);
    pub(a, room, NULL, "three", &p[2]);
    pub(a, room2, NULL, "other", &p[3]);
    WAIT(p[0].done && p[1].done && p[2].done && p[3].done, 3000);
    CHECK(p[2].seq == 3 && p[3].seq == 1, "seqs");
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 3, "three unstored");
    /* a failing check: asked, nothing changes, nothing offered */
    /* (a round may first ask about entries an earlier test left: wait for ours) */
    WAIT(asked_count(k, room, 1) >= 1 && asked_count(k, room, 2) >= 1 && asked_count(k, room, 3) >= 1 &&
             asked_count(k, room2, 1) >= 1, 3000);
    CHECK(k->nchecks >= 1 && asked_count(k, room, 1) >= 1 && asked_count(k, room, 2) >= 1 &&
              asked_count(k, room, 3) >= 1 && asked_count(k, room2, 1) >= 1, "all four asked");
    spin(100);
    CHECK(k->nuns == 0 && rc_int("ZCARD chat:{%s}:unstored", room) == 3, "nothing settled");
    /* history holds 1 and 3 of room and room2's 1: those leave, 2 is offered */
    stored_add(k, room, 1);
    stored_add(k, room, 3);
    stored_add(k, room2, 1);
    k->check_fail = 0;
    WAIT(uns_count(k, room, 2) >= 1, 3000);
    CHECK(uns_count(k, room, 2) == 1 && uns_count(k, room, 1) == 0 && uns_count(k, room, 3) == 0 &&
              uns_count(k, room2, 1) == 0, "only seq 2 offered");
    int kk = 0;
    for (; kk < k->nuns; kk++) if (k->uns_seq[kk] == 2 && strcmp(k->uns_room[kk], room) == 0) break;
    CHECK(kk < k->nuns && strstr(k->uns_tail[kk], "\"body\":\"two\""), "tail of seq 2");
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 1 && rc_int("ZSCORE chat:{%s}:unstored 2", room) > 0,
          "1 and 3 forgotten, 2 left");
    CHECK(rc_int("EXISTS chat:{%s}:unstored", room2) == 0 && rc_int("ZSCORE chat:unstored %s", room2) == 0,
          "room2 left the index");
    /* the lease: not offered again within the grace */
    spin(350);
    CHECK(uns_count(k, room, 2) == 1, "seq 2 leased (offered %d times)", uns_count(k, room, 2));
    /* stored now (the core stored the backfill): the next check forgets it */
    stored_add(k, room, 2);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", room) == 0, 3000);
    CHECK(rc_int("EXISTS chat:{%s}:unstored", room) == 0 && rc_int("ZSCORE chat:unstored %s", room) == 0,
          "set empty, room left the index");
    CHECK(uns_count(k, room, 2) == 1, "seq 2 offered once");
    /* a mark still forgets an entry at once (one that can never be stored) */
    pubres p5;
    pub(a, room, NULL, "five", &p5);
    WAIT(p5.done, 3000);
    CHECK(p5.seq == 4 && rc_int("ZCARD chat:{%s}:unstored", room) == 1, "seq 4 unstored");
    mark(k, room, 4);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", room) == 0, 2000);
    CHECK(rc_int("EXISTS chat:{%s}:unstored", room) == 0 && uns_count(k, room, 4) == 0,
          "marked without a check");
    node_free(a);
    node_free(k);
    settle();
}

/* a check slower than the round's lock: K holds its check while the lock
 * expires and K2 takes the next round (offers seq 1 of room, loses 1 and 2
 * of lost); K's late settle must neither offer the leased seq again nor
 * count the lost ones a second time */
static void test_backfill_slow_check(void)
{
    char room[80], lost[80];
    mkroom(room, sizeof room, "bfslow");
    mkroom(lost, sizeof lost, "bfslowl");
    rc_int("DEL chat:backfill:lock");
    node *a = ready(node_new_checking("A", rurl, 60000));
    node *c = ready(node_new_checking_recent("C", rurl, 2, 60000));
    pubres p, q[4];
    pub(a, room, NULL, "one", &p);
    for (int i = 0; i < 4; i++) pub(c, lost, NULL, "x", &q[i]);
    WAIT(p.done && q[0].done && q[1].done && q[2].done && q[3].done, 3000);
    CHECK(p.seq == 1 && q[3].seq == 4, "seqs");
    spin(650); /* older than a 600 ms grace */
    uint64_t lost0 = counter("chat_bus_backfill_lost_total");
    node *k = node_new_checking("K", rurl, 600);
    k->check_hold = 1;
    wait_ready(k);
    WAIT(k->held_check != NULL, 3000);
    CHECK(k->held_check && k->held_n >= 5, "K's round lists the 5 entries (%zu)", k->held_n);
    /* K's lock (270 ms) runs out while its check is slow: K2 sweeps */
    node *k2 = ready(node_new_checking("K2", rurl, 600));
    WAIT(uns_count(k2, room, 1) >= 1 && uns_count(k2, lost, 4) >= 1, 3000);
    CHECK(uns_count(k2, room, 1) == 1 && uns_count(k2, lost, 3) == 1 && uns_count(k2, lost, 4) == 1,
          "K2 offers seq 1, 3, 4");
    CHECK(counter("chat_bus_backfill_lost_total") == lost0 + 2, "K2 counts 2 lost");
    check_answer_held(k);
    spin(200); /* K's settle answers; within the lease K2 offers nothing again */
    CHECK(uns_count(k, room, 1) + uns_count(k2, room, 1) == 1,
          "seq 1 offered once (K %d, K2 %d)", uns_count(k, room, 1), uns_count(k2, room, 1));
    CHECK(uns_count(k, lost, 3) + uns_count(k, lost, 4) == 0, "K offers none of lost");
    CHECK(counter("chat_bus_backfill_lost_total") == lost0 + 2, "lost counted once (%" PRIu64 ")",
          counter("chat_bus_backfill_lost_total") - lost0);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 1 && rc_int("ZCARD chat:{%s}:unstored", lost) == 2,
          "the offered entries stay (leased) until history holds them");
    node_free(a);
    node_free(c);
    node_free(k);
    node_free(k2);
    settle();
}

/* publishes n messages to room from nd and waits for them */
static void pub_many(node *nd, const char *room, int n)
{
    static pubres p[BUS_SETTLE_CHUNK + 1];
    CHECK(n <= BUS_SETTLE_CHUNK + 1, "%d messages", n);
    int done = 0;
    for (int i = 0; i < n; i++) pub(nd, room, NULL, "m", &p[i]);
    for (uint64_t until = mono_ms() + 10000; mono_ms() < until;) {
        done = 0;
        for (int i = 0; i < n; i++) done += p[i].done && p[i].status == 0;
        if (done == n) break;
        spin(10);
    }
    CHECK(done == n, "%d of %d published", done, n);
}

/* a round's limits (rooms per round, seqs per room): K lists at most 2
 * rooms and 3 seqs of each per round; a round that met a limit is followed
 * by another one; every pair is listed once, counted, and so are the rounds
 * that met each limit */
static void test_backfill_limits(void)
{
    char rx[80], ry[80], rz[80];
    mkroom(rx, sizeof rx, "bflimx");
    mkroom(ry, sizeof ry, "bflimy");
    mkroom(rz, sizeof rz, "bflimz");
    /* this test counts what a round lists: other tests' entries go */
    rc_int("DEL chat:backfill:lock chat:unstored");
    node *a = ready(node_new_checking("A", rurl, 60000));
    pub_many(a, rx, 5);
    spin(5); /* the index lists rooms oldest first: x, y, z */
    pub_many(a, ry, 1);
    spin(5);
    pub_many(a, rz, 1);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", rx) == 5 && rc_int("ZCARD chat:{%s}:unstored", ry) == 1 &&
              rc_int("ZCARD chat:{%s}:unstored", rz) == 1, "5 + 1 + 1 unstored");
    spin(650); /* older than a 600 ms grace */
    uint64_t c0 = counter("chat_bus_backfill_checked_total");
    uint64_t lr0 = counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"");
    uint64_t lp0 = counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"");
    node *k = node_new_checking_opts("K", rurl, 1000, 600, 2, 3);
    k->check_all_stored = 1;
    wait_ready(k);
    WAIT(rc_int("EXISTS chat:unstored") == 0, 5000);
    CHECK(rc_int("EXISTS chat:unstored") == 0, "every entry checked and forgotten");
    CHECK(k->ncheck_sizes >= 2 && k->check_sizes[0] == 4 && k->check_sizes[1] == 3,
          "round 1: x 1-3 and y 1 (2 rooms, 3 per room), round 2: x 4-5 and z 1 (%d checks: %zu %zu)",
          k->ncheck_sizes, k->check_sizes[0], k->check_sizes[1]);
    for (uint64_t s = 1; s <= 5; s++)
        CHECK(asked_count(k, rx, s) == 1, "x seq %" PRIu64 " asked once", s);
    CHECK(asked_count(k, ry, 1) == 1 && asked_count(k, rz, 1) == 1, "y and z asked once");
    CHECK(asked_count(k, rx, 1) && k->asked_seq[0] == 1 && strcmp(k->asked_room[0], rx) == 0,
          "the oldest room first");
    CHECK(counter("chat_bus_backfill_checked_total") - c0 == 7, "7 pairs counted (%" PRIu64 ")",
          counter("chat_bus_backfill_checked_total") - c0);
    CHECK(counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") > lr0 &&
              counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"") > lp0,
          "rounds that met each limit counted");
    CHECK(k->nuns == 0, "nothing offered (all stored)");
    node_free(a);
    node_free(k);
    settle();
}

/* the settle is cut into calls of at most BUS_SETTLE_CHUNK pairs (bounded
 * ARGV): a round of exactly the chunk is one call, one more pair makes two;
 * a room cut between two calls is settled whole (its last seq, missing
 * from history, offered once with its tail) */
static void test_backfill_settle_chunks(void)
{
    char r1[80], r2[80];
    mkroom(r1, sizeof r1, "bfchunk1");
    mkroom(r2, sizeof r2, "bfchunk2");
    rc_int("DEL chat:backfill:lock chat:unstored");
    node *a = ready(node_new_checking("A", rurl, 60000));
    pub_many(a, r1, BUS_SETTLE_CHUNK);
    spin(650);
    node *k1 = node_new_checking_opts("K1", rurl, 1000, 600, 0, 1000);
    k1->check_all_stored = 1;
    wait_ready(k1);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", r1) == 0, 5000);
    CHECK(rc_int("EXISTS chat:{%s}:unstored", r1) == 0 && k1->ncheck_sizes >= 1 &&
              k1->check_sizes[0] == BUS_SETTLE_CHUNK, "one round of %d pairs forgotten (%zu)",
          BUS_SETTLE_CHUNK, k1->ncheck_sizes ? k1->check_sizes[0] : 0);
    CHECK(bus_backfill_settles(k1->b) == 1, "a round of the chunk: one settle (%" PRIu64 ")",
          bus_backfill_settles(k1->b));
    node_free(k1);
    rc_int("DEL chat:backfill:lock");
    pub_many(a, r2, BUS_SETTLE_CHUNK + 1);
    spin(650);
    node *k2 = node_new_checking_opts("K2", rurl, 1000, 600, 0, 1000);
    k2->check_all_stored = 1;
    k2->check_missing = BUS_SETTLE_CHUNK + 1;
    wait_ready(k2);
    WAIT(uns_count(k2, r2, BUS_SETTLE_CHUNK + 1) >= 1, 5000);
    CHECK(k2->ncheck_sizes >= 1 && k2->check_sizes[0] == BUS_SETTLE_CHUNK + 1, "one round of %d pairs",
          BUS_SETTLE_CHUNK + 1);
    CHECK(bus_backfill_settles(k2->b) == 2, "one pair more: two settles (%" PRIu64 ")",
          bus_backfill_settles(k2->b));
    CHECK(uns_count(k2, r2, BUS_SETTLE_CHUNK + 1) == 1 && k2->nuns == 1, "the missing seq offered once");
    CHECK(k2->nuns == 1 && strstr(k2->uns_tail[0], "\"body\":\"m\""), "with its tail");
    CHECK(rc_int("ZCARD chat:{%s}:unstored", r2) == 1 &&
              rc_int("ZSCORE chat:{%s}:unstored %d", r2, BUS_SETTLE_CHUNK + 1) > 0,
          "the stored ones forgotten, the missing one leased");
    node_free(a);
    node_free(k2);
    settle();
}

/* an entry of room recorded as unstored at score (ms since the epoch: 1 is
 * long ago), and the room indexed, without a publish (the recent buffer
 * does not have it: offered, it would be lost) */
static void uns_add(const char *room, long long score, const char *member)
{
    rc_int("ZADD chat:{%s}:unstored %lld %s", room, score, member);
    rc_int("ZADD chat:unstored NX %lld %s", score, room);
}

/* a round that met its room limit but listed no pair (two rooms indexed as
 * old whose sets hold nothing: stale index scores) sends no check and no
 * settle; the next round follows at once (not a tick later), and the
 * unlimited round after it is not followed at once (no "more" left over) */
static void test_backfill_zero_pair_round(void)
{
    char s1[80], s2[80], live[80];
    mkroom(s1, sizeof s1, "bfzero1");
    mkroom(s2, sizeof s2, "bfzero2");
    mkroom(live, sizeof live, "bfzerol");
    rc_int("DEL chat:backfill:lock chat:unstored");
    rc_int("ZADD chat:unstored 1 %s 1 %s", s1, s2);
    uns_add(live, 2, "1");
    /* grace 2000: a tick every 1000 ms; at most 2 rooms per round */
    uint64_t t0 = mono_ms();
    node *k = node_new_checking_opts("K", rurl, 1000, 2000, 2, 0);
    k->check_all_stored = 1;
    WAIT(k->nchecks >= 1, 4000);
    uint64_t el = mono_ms() - t0;
    CHECK(k->nchecks == 1 && k->check_sizes[0] == 1 && asked_count(k, live, 1) == 1,
          "one check, of the live pair only");
    CHECK(bus_backfill_rounds(k->b) == 2, "round 1 listed the stale rooms only (%" PRIu64 " rounds)",
          bus_backfill_rounds(k->b));
    CHECK(el < 1600, "round 2 right after round 1 (at the first tick, 1000 ms), not a tick later: "
          "%" PRIu64 " ms", el);
    WAIT(rc_int("EXISTS chat:unstored") == 0, 2000);
    CHECK(rc_int("EXISTS chat:unstored") == 0, "stale rooms dropped, the live pair forgotten");
    spin(500);
    CHECK(bus_backfill_rounds(k->b) == 2, "round 2 (not limited) not followed at once (%" PRIu64 ")",
          bus_backfill_rounds(k->b));
    node_free(k);
    settle();
}

/* a round that met its room limit and failed (its check failed, or its
 * settle got a Redis error reply) is followed at the next tick, not at
 * once, and leaves no "more" behind: the next round, unlimited and
 * settled, is not followed at once either */
static void test_backfill_failed_round(int settle_error)
{
    char x[80], y[80], z[80];
    mkroom(x, sizeof x, settle_error ? "bffailsx" : "bffailcx");
    mkroom(y, sizeof y, settle_error ? "bffailsy" : "bffailcy");
    mkroom(z, sizeof z, settle_error ? "bffailsz" : "bffailcz");
    rc_int("DEL chat:backfill:lock chat:unstored");
    uns_add(x, 1, "1");
    uns_add(y, 2, "1");
    uns_add(z, 3, "1");
    /* a tick every 1000 ms; 2 rooms per round: round 1 lists x and y, z is more */
    node *k = node_new_checking_opts("K", rurl, 1000, 2000, 2, 0);
    if (settle_error) k->check_hold = 1; else k->check_fail = 1;
    uint64_t lr0 = counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"");
    WAIT(k->nchecks >= 1, 4000);
    CHECK(k->nchecks == 1 && k->check_sizes[0] == 2, "round 1 checks x and y");
    if (settle_error) {
        CHECK(k->held_check != NULL, "check held");
        /* x's set is not a set any more: the settle script fails (WRONGTYPE) */
        rc_int("DEL chat:{%s}:unstored", x);
        rc_int("SET chat:{%s}:unstored garbage", x);
        check_answer_held(k);
        WAIT(bus_backfill_settles(k->b) >= 1, 2000);
        spin(50);
        CHECK(bus_backfill_settles(k->b) == 1 && k->nuns == 0, "the settle was sent and failed");
        rc_int("DEL chat:{%s}:unstored", x);
        uns_add(x, 1, "1");
    }
    uint64_t t1 = mono_ms();
    CHECK(counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") == lr0 + 1,
          "round 1 counted as limited");
    /* only x is left: the next round is not limited */
    rc_int("DEL chat:{%s}:unstored chat:{%s}:unstored", y, z);
    rc_int("ZREM chat:unstored %s %s", y, z);
    k->check_fail = 0;
    k->check_all_stored = 1;
    WAIT(k->nchecks >= 2, 3000);
    CHECK(k->nchecks == 2 && k->check_sizes[1] == 1, "round 2 checks x only");
    CHECK(bus_backfill_rounds(k->b) == 2 && mono_ms() - t1 >= 500,
          "the failed round is followed at the next tick (%" PRIu64 " ms later)", mono_ms() - t1);
    WAIT(rc_int("EXISTS chat:unstored") == 0, 2000);
    CHECK(rc_int("EXISTS chat:unstored") == 0, "x forgotten");
    spin(500);
    CHECK(bus_backfill_rounds(k->b) == 2, "round 2 (not limited) not followed at once (%" PRIu64
          " rounds)", bus_backfill_rounds(k->b));
    CHECK(counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") == lr0 + 1,
          "round 2 not counted as limited");
    node_free(k);
    settle();
}

/* a round is limited only when there really is more: exactly the limits
 * (2 rooms, 3 seqs in one) is one round, not counted as limited and not
 * followed at once; one more room and one more seq (3 rooms, 4 seqs in
 * one) is one limited round of each kind, then one more round for the rest */
static void test_backfill_limit_exact(void)
{
    char x[80], y[80], x2[80], y2[80], z2[80];
    mkroom(x, sizeof x, "bfexactx");
    mkroom(y, sizeof y, "bfexacty");
    mkroom(x2, sizeof x2, "bfexactx2");
    mkroom(y2, sizeof y2, "bfexacty2");
    mkroom(z2, sizeof z2, "bfexactz2");
    rc_int("DEL chat:backfill:lock chat:unstored");
    uns_add(x, 1, "1");
    uns_add(x, 1, "2");
    uns_add(x, 1, "3");
    uns_add(y, 2, "1");
    uint64_t c0 = counter("chat_bus_backfill_checked_total");
    uint64_t lr0 = counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"");
    uint64_t lp0 = counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"");
    node *k = node_new_checking_opts("K", rurl, 1000, 2000, 2, 3);
    k->check_all_stored = 1;
    WAIT(rc_int("EXISTS chat:unstored") == 0, 4000);
    CHECK(rc_int("EXISTS chat:unstored") == 0 && k->nchecks == 1 && k->check_sizes[0] == 4,
          "exactly the limits: one round of 4 pairs");
    spin(500);
    CHECK(bus_backfill_rounds(k->b) == 1, "not followed at once (%" PRIu64 " rounds)",
          bus_backfill_rounds(k->b));
    CHECK(counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") == lr0 &&
              counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"") == lp0,
          "not counted as limited (rooms +%" PRIu64 ", per_room +%" PRIu64 ")",
          counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") - lr0,
          counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"") - lp0);
    CHECK(counter("chat_bus_backfill_checked_total") - c0 == 4, "4 pairs counted");
    /* one more of each */
    for (int s = 1; s <= 4; s++) {
        char m[8];
        snprintf(m, sizeof m, "%d", s);
        uns_add(x2, 1, m);
    }
    uns_add(y2, 2, "1");
    uns_add(z2, 3, "1");
    WAIT(rc_int("EXISTS chat:unstored") == 0, 4000);
    CHECK(rc_int("EXISTS chat:unstored") == 0 && k->nchecks == 3 && k->check_sizes[1] == 4 &&
              k->check_sizes[2] == 2, "x2 1-3 and y2, then x2 4 and z2 (%d checks)", k->nchecks);
    spin(500);
    CHECK(bus_backfill_rounds(k->b) == 3, "3 rounds (%" PRIu64 ")", bus_backfill_rounds(k->b));
    CHECK(counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") == lr0 + 1 &&
              counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"") == lp0 + 1,
          "one limited round of each kind (rooms +%" PRIu64 ", per_room +%" PRIu64 ")",
          counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") - lr0,
          counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"") - lp0);
    CHECK(counter("chat_bus_backfill_checked_total") - c0 == 10, "10 pairs counted");
    node_free(k);
    settle();
}

/* chat_bus_backfill_checked_total counts the pairs asked of history: the
 * sweep drops malformed members (not a seq) itself, counts them in
 * chat_bus_backfill_dropped_total and never asks history about them; once
 * they are gone the rounds find nothing and go at the tick's pace (no loop) */
static void test_backfill_checked_wellformed(void)
{
    char m[80];
    mkroom(m, sizeof m, "bfmal");
    rc_int("DEL chat:backfill:lock chat:unstored");
    uns_add(m, 1, "1");
    uns_add(m, 1, "bogus");
    uns_add(m, 1, "bogus2");
    uns_add(m, 1, "9223372036854775808");   /* 2^63: past seq_parse's limit */
    uint64_t c0 = counter("chat_bus_backfill_checked_total");
    uint64_t d0 = counter("chat_bus_backfill_dropped_total");
    /* a tick every 300 ms, 1 seq per room and round */
    node *k = node_new_checking_opts("K", rurl, 1000, 600, 0, 1);
    k->check_all_stored = 1;
    /* the set is gone in Redis before this node has read the sweep's answer
     * that counts the drops (a race the ASan build lost in CI): wait for both */
    WAIT(rc_int("ZSCORE chat:{%s}:unstored 1", m) == 0 && rc_int("EXISTS chat:{%s}:unstored", m) == 0 &&
             counter("chat_bus_backfill_dropped_total") - d0 >= 3 && k->nchecks >= 1,
         3000);
    CHECK(rc_int("EXISTS chat:{%s}:unstored", m) == 0, "the malformed members dropped, the set gone");
    CHECK(k->nchecks == 1 && k->check_sizes[0] == 1 && asked_count(k, m, 1) == 1,
          "the well-formed pair asked");
    CHECK(counter("chat_bus_backfill_checked_total") - c0 == 1, "one pair counted (%" PRIu64 ")",
          counter("chat_bus_backfill_checked_total") - c0);
    CHECK(counter("chat_bus_backfill_dropped_total") - d0 == 3, "three dropped (%" PRIu64 ")",
          counter("chat_bus_backfill_dropped_total") - d0);
    uint64_t r0 = bus_backfill_rounds(k->b), t0 = mono_ms();
    spin(700);
    uint64_t rounds = bus_backfill_rounds(k->b) - r0, el = mono_ms() - t0;
    CHECK(rounds <= el / 300 + 2, "rounds with nothing left: one per tick (%" PRIu64 " in %" PRIu64
          " ms)", rounds, el);
    CHECK(k->nchecks == 1 && counter("chat_bus_backfill_checked_total") - c0 == 1,
          "no check of malformed members, none counted");
    node_free(k);
    rc_int("DEL chat:{%s}:unstored chat:unstored", m);
    settle();
}

/* a room whose unstored key holds another type (another program's data)
 * used to fail the sweep script, every round, for every room of its index:
 * now it leaves the index (its key left alone, counted as dropped) and the
 * other rooms' entries are checked */
static void test_backfill_foreign_key(void)
{
    char ok[80], bad[80];
    mkroom(ok, sizeof ok, "bfok");
    mkroom(bad, sizeof bad, "bfbad");
    rc_int("DEL chat:backfill:lock chat:unstored");
    rc_int("SET chat:{%s}:unstored not-a-zset", bad);
    rc_int("ZADD chat:unstored 1 %s", bad);
    uns_add(ok, 2, "1");
    uint64_t d0 = counter("chat_bus_backfill_dropped_total");
    node *k = node_new_checking_opts("K", rurl, 1000, 600, 0, 100);
    k->check_all_stored = 1;
    WAIT(k->nchecks >= 1 && rc_int("EXISTS chat:{%s}:unstored", ok) == 0, 3000);
    CHECK(asked_count(k, ok, 1) == 1, "the other room's entry checked");
    CHECK(rc_int("EXISTS chat:{%s}:unstored", ok) == 0, "and settled");
    CHECK(rc_int("ZSCORE chat:unstored %s", bad) == 0 && rc_int("ZCARD chat:unstored") == 0,
          "the room with the foreign key left the index");
    redisReply *r = rc("GET chat:{%s}:unstored", bad);
    CHECK(r && r->type == REDIS_REPLY_STRING && strcmp(r->str, "not-a-zset") == 0,
          "its key left as it was");
    if (r) freeReplyObject(r);
    CHECK(counter("chat_bus_backfill_dropped_total") - d0 == 1, "counted as dropped (%" PRIu64 ")",
          counter("chat_bus_backfill_dropped_total") - d0);
    node_free(k);
    rc_int("DEL chat:{%s}:unstored chat:unstored", bad);
    settle();
}

/* a settle of two calls (500 pairs of one room, 1 of another): the second
 * fails (a Redis error reply) while the first is applied; the failed one's
 * pair is asked again by the next round, and the sweeper goes on */
static void test_backfill_settle_chunk_fails(void)
{
    char r1[80], r2[80];
    mkroom(r1, sizeof r1, "bfcf1");
    mkroom(r2, sizeof r2, "bfcf2");
    rc_int("DEL chat:backfill:lock chat:unstored");
    for (int s = 1; s <= BUS_SETTLE_CHUNK; s++) {
        char mem[16];
        snprintf(mem, sizeof mem, "%d", s);
        uns_add(r1, 1, mem);
    }
    uns_add(r2, 2, "1");
    node *k = node_new_checking_opts("K", rurl, 1000, 600, 0, 1000);
    k->check_hold = 1;
    k->check_all_stored = 1;
    WAIT(k->held_check != NULL, 3000);
    CHECK(k->held_check && k->held_n == BUS_SETTLE_CHUNK + 1, "one round of %d pairs (%zu)",
          BUS_SETTLE_CHUNK + 1, k->held_n);
    rc_int("DEL chat:{%s}:unstored", r2);
    rc_int("SET chat:{%s}:unstored garbage", r2);
    check_answer_held(k);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", r1) == 0, 2000);
    CHECK(rc_int("EXISTS chat:{%s}:unstored", r1) == 0 && bus_backfill_settles(k->b) == 2,
          "two settles sent, the first applied (%" PRIu64 ")", bus_backfill_settles(k->b));
    spin(50);
    redisReply *g = rc("GET chat:{%s}:unstored", r2);
    CHECK(g && g->type == REDIS_REPLY_STRING && strcmp(g->str, "garbage") == 0,
          "the second failed (nothing changed)");
    if (g) freeReplyObject(g);
    /* r2 recorded again: the next round asks it and settles it */
    rc_int("DEL chat:{%s}:unstored", r2);
    uns_add(r2, 2, "1");
    WAIT(rc_int("EXISTS chat:unstored") == 0, 3000);
    CHECK(rc_int("EXISTS chat:unstored") == 0 && k->nchecks >= 2 && k->check_sizes[1] == 1,
          "the next round settles r2 (%d checks)", k->nchecks);
    CHECK(k->nuns == 0, "nothing offered");
    node_free(k);
    settle();
}

/* a mark that forgets a pair while the round's check is in flight: the
 * settle skips it (neither offered nor counted lost); the other missing
 * pair of the round is offered */
static void test_backfill_settle_after_mark(void)
{
    char room[80];
    mkroom(room, sizeof room, "bfmarked");
    rc_int("DEL chat:backfill:lock chat:unstored");
    node *a = ready(node_new_checking("A", rurl, 60000));
    pub_many(a, room, 2);
    spin(650);
    uint64_t lost0 = counter("chat_bus_backfill_lost_total");
    node *k = node_new_checking("K", rurl, 600);
    k->check_hold = 1;
    WAIT(k->held_check != NULL, 3000);
    CHECK(k->held_check && k->held_n == 2, "the round lists seqs 1 and 2 (%zu)", k->held_n);
    mark(a, room, 1);
    WAIT(rc_int("ZSCORE chat:{%s}:unstored 1", room) == 0, 2000);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 1, "seq 1 marked meanwhile");
    check_answer_held(k); /* history holds neither */
    WAIT(uns_count(k, room, 2) >= 1, 2000);
    spin(50);
    CHECK(uns_count(k, room, 2) == 1 && uns_count(k, room, 1) == 0 && k->nuns == 1,
          "seq 2 offered, seq 1 skipped");
    CHECK(counter("chat_bus_backfill_lost_total") == lost0, "nothing counted lost");
    mark(a, room, 2);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", room) == 0, 2000);
    node_free(a);
    node_free(k);
    settle();
}

/* in-process mode: no backfill (marks are no-ops, on_unstored never fires) */
static void test_local_backfill_off(void)
{
    node *l = node_new_checking_recent("L", NULL, 10, 200);
    snprintf(l->room, sizeof l->room, "lb");
    sub(l, "lb");
    pubres p;
    pub(l, "lb", NULL, "x", &p);
    WAIT(p.done, 1000);
    mark(l, "lb", p.seq);
    mark(l, "lb", 99);
    spin(300);
    CHECK(p.status == 0 && l->nuns == 0 && bus_backfill_rounds(l->b) == 0, "no backfill in-process");
    node_free(l);
    settle();
}

int main(void)
{
    harness_begin("test_bus_backfill");

    test_local_backfill_off();
    int have_redis = harness_redis();
    if (have_redis) {
        test_track_needs_check();
        test_track_needs_settings();
        test_backfill();
        test_backfill_check();
        test_backfill_slow_check();
        test_backfill_limits();
        test_backfill_settle_chunks();
        test_backfill_zero_pair_round();
        test_backfill_failed_round(0);
        test_backfill_failed_round(1);
        test_backfill_limit_exact();
        test_backfill_checked_wellformed();
        test_backfill_foreign_key();
        test_backfill_settle_chunk_fails();
        test_backfill_settle_after_mark();
    }
    return harness_end("test_bus_backfill", have_redis);
}
