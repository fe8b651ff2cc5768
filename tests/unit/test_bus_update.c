/* test_bus_update: the in-process state step of message updates
 * (bus_update.c): a delete refuses every later update, a react's count is
 * the number of users with that emoji after it, a react that changes
 * nothing is refused, a missing state is asked for (seed 'S'), seeded
 * ('Y') or started empty ('N'), a state expires after its ttl, and the
 * per-room bound drops the least recently touched states. */
#include "check.h"
#include "bus_int.h"
#include <stdlib.h>
#include <string.h>

static bus_req *req(uint64_t target, int op, const char *emoji, const char *user, int seed)
{
    bus_update u = {target, op, emoji, user, seed, 0, NULL, NULL, 0};
    bus_req *r = calloc(1, sizeof *r);
    r->upd = bus_upd_copy(&u);
    return r;
}

static void req_drop(bus_req *r)
{
    bus_upd_free(r->upd);
    free(r);
}

/* one step; returns the status, *count the count */
static int step(bus_upd_states *s, uint64_t target, int op, const char *emoji, const char *user,
                int seed, int64_t *count)
{
    bus_req *r = req(target, op, emoji, user, seed);
    if (!r->upd) { check_fail("copy of update %llu failed", (unsigned long long)target); free(r); return -9; }
    int64_t c = -2;
    int st = bus_upd_local_apply(s, r, 60000, &c);
    if (count) *count = c;
    req_drop(r);
    return st;
}

#define TU "\xF0\x9F\x91\x8D"

static void test_counts_and_refusals(void)
{
    bus_upd_states *s = bus_upd_states_new();
    int64_t c;
    CHECK(step(s, 5, BUS_UPD_REACT_ON, TU, "a", BUS_UPD_SEED_NONE, &c) == 0 && c == 1);
    CHECK(step(s, 5, BUS_UPD_REACT_ON, TU, "b", BUS_UPD_SEED_NONE, &c) == 0 && c == 2);
    CHECK(step(s, 5, BUS_UPD_REACT_ON, TU, "a", BUS_UPD_SEED_NONE, &c) == BUS_UPD_NOOP, "twice");
    CHECK(step(s, 5, BUS_UPD_REACT_ON, ":x:", "a", BUS_UPD_SEED_NONE, &c) == 0 && c == 1, "per emoji");
    CHECK(step(s, 5, BUS_UPD_REACT_OFF, TU, "c", BUS_UPD_SEED_NONE, &c) == BUS_UPD_NOOP, "not on");
    CHECK(step(s, 5, BUS_UPD_REACT_OFF, TU, "a", BUS_UPD_SEED_NONE, &c) == 0 && c == 1);
    /* a user whose id extends another's is another user */
    CHECK(step(s, 5, BUS_UPD_REACT_ON, TU, "bb", BUS_UPD_SEED_NONE, &c) == 0 && c == 2);
    CHECK(step(s, 5, BUS_UPD_EDIT, NULL, NULL, BUS_UPD_SEED_NONE, &c) == 0 && c == -1);
    CHECK(step(s, 6, BUS_UPD_REACT_ON, TU, "a", BUS_UPD_SEED_NONE, &c) == 0 && c == 1, "per target");
    CHECK(step(s, 5, BUS_UPD_DELETE, NULL, NULL, BUS_UPD_SEED_NONE, &c) == 0);
    CHECK(step(s, 5, BUS_UPD_EDIT, NULL, NULL, BUS_UPD_SEED_NONE, &c) == BUS_UPD_GONE);
    CHECK(step(s, 5, BUS_UPD_DELETE, NULL, NULL, BUS_UPD_SEED_NONE, &c) == BUS_UPD_GONE);
    CHECK(step(s, 5, BUS_UPD_REACT_OFF, TU, "b", BUS_UPD_SEED_NONE, &c) == BUS_UPD_GONE);
    CHECK(step(s, 6, BUS_UPD_REACT_ON, TU, "b", BUS_UPD_SEED_NONE, &c) == 0 && c == 2);
    bus_upd_states_free(s);
}

static void test_seeds(void)
{
    bus_upd_states *s = bus_upd_states_new();
    int64_t c;
    CHECK(step(s, 9, BUS_UPD_REACT_ON, TU, "a", BUS_UPD_SEED_ASK, &c) == BUS_UPD_NEED_STATE);
    CHECK(step(s, 9, BUS_UPD_EDIT, NULL, NULL, BUS_UPD_SEED_ASK, &c) == BUS_UPD_NEED_STATE,
          "asking changed nothing");
    const char *em[] = {TU, TU, ":x:"}, *us[] = {"b", "c", "b"};
    bus_update u = {9, BUS_UPD_REACT_ON, TU, "a", BUS_UPD_SEED_GIVEN, 0, em, us, 3};
    bus_req r = {0};
    r.upd = bus_upd_copy(&u);
    REQUIRE(r.upd != NULL);
    CHECK(bus_upd_local_apply(s, &r, 60000, &c) == 0 && c == 3, "seeded: b, c, then a: %lld", (long long)c);
    bus_upd_free(r.upd);
    /* a seed is used only when the state is missing */
    u.user = "d";
    u.nseed = 0;
    r.upd = bus_upd_copy(&u);
    CHECK(bus_upd_local_apply(s, &r, 60000, &c) == 0 && c == 4);
    bus_upd_free(r.upd);
    /* a seed that says deleted */
    bus_update d = {10, BUS_UPD_EDIT, NULL, NULL, BUS_UPD_SEED_GIVEN, 1, NULL, NULL, 0};
    r.upd = bus_upd_copy(&d);
    CHECK(bus_upd_local_apply(s, &r, 60000, &c) == BUS_UPD_GONE);
    bus_upd_free(r.upd);
    /* bad updates are not copied */
    bus_update bad = {0, BUS_UPD_EDIT, NULL, NULL, 0, 0, NULL, NULL, 0};
    CHECK(bus_upd_copy(&bad) == NULL, "target 0");
    bad.target = 1;
    bad.op = BUS_UPD_REACT_ON;
    CHECK(bus_upd_copy(&bad) == NULL, "react without emoji");
    bad.emoji = "a\nb";
    bad.user = "u";
    CHECK(bus_upd_copy(&bad) == NULL, "emoji with a newline");
    bad.op = 'x';
    bad.emoji = TU;
    CHECK(bus_upd_copy(&bad) == NULL, "unknown op");
    bus_upd_states_free(s);
}

static void test_expiry_and_bound(void)
{
    bus_upd_states *s = bus_upd_states_new();
    int64_t c;
    CHECK(step(s, 1, BUS_UPD_REACT_ON, TU, "a", BUS_UPD_SEED_NONE, &c) == 0);
    bus_req *r = req(1, BUS_UPD_REACT_ON, TU, "b", BUS_UPD_SEED_ASK);
    CHECK(bus_upd_local_apply(s, r, 60000, &c) == 0 && c == 2, "within the ttl");
    req_drop(r);
    r = req(1, BUS_UPD_REACT_ON, TU, "c", BUS_UPD_SEED_ASK);
    CHECK(bus_upd_local_apply(s, r, 0, &c) == BUS_UPD_NEED_STATE || c == 3,
          "a ttl of 0 forgets (unless in the same ms)");
    req_drop(r);
    /* 10001 states: the bound keeps at most 10000, the newest kept */
    for (uint64_t t = 100; t < 100 + 10001; t++)
        step(s, t, BUS_UPD_DELETE, NULL, NULL, BUS_UPD_SEED_NONE, NULL);
    size_t n = bus_upd_states_count(s);
    CHECK(n <= 10000 && n >= 9000, "%zu states kept", n);
    CHECK(step(s, 100 + 10000, BUS_UPD_EDIT, NULL, NULL, BUS_UPD_SEED_ASK, &c) == BUS_UPD_GONE,
          "the newest state is kept");
    bus_upd_states_free(s);
}

static void undo(bus_upd_states *s, uint64_t target, int op, const char *emoji, const char *user)
{
    bus_update u = {target, op, emoji, user, 0, 0, NULL, NULL, 0};
    struct bus_upd *c = bus_upd_copy(&u);
    REQUIRE(c != NULL);
    bus_upd_states_undo(s, c);
    bus_upd_free(c);
}

/* bus_undo_update in process: one refused update's own change comes off,
 * the others the state holds stay */
static void test_undo(void)
{
    bus_upd_states *s = bus_upd_states_new();
    int64_t c;
    CHECK(step(s, 7, BUS_UPD_REACT_ON, TU, "a", BUS_UPD_SEED_NONE, &c) == 0 && c == 1);
    CHECK(step(s, 7, BUS_UPD_REACT_ON, TU, "b", BUS_UPD_SEED_NONE, &c) == 0 && c == 2);
    undo(s, 7, BUS_UPD_REACT_ON, TU, "b");        /* b's react refused by history */
    CHECK(step(s, 7, BUS_UPD_REACT_ON, TU, "c", BUS_UPD_SEED_NONE, &c) == 0 && c == 2,
          "a's react stays, b's is gone: %lld", (long long)c);
    CHECK(step(s, 7, BUS_UPD_REACT_ON, TU, "b", BUS_UPD_SEED_NONE, &c) == 0 && c == 3, "b may react again");
    CHECK(step(s, 7, BUS_UPD_REACT_OFF, TU, "a", BUS_UPD_SEED_NONE, &c) == 0 && c == 2);
    undo(s, 7, BUS_UPD_REACT_OFF, TU, "a");       /* a's un-react refused */
    CHECK(step(s, 7, BUS_UPD_REACT_OFF, TU, "a", BUS_UPD_SEED_NONE, &c) == 0 && c == 2,
          "a's react is back: %lld", (long long)c);
    CHECK(step(s, 7, BUS_UPD_DELETE, NULL, NULL, BUS_UPD_SEED_NONE, &c) == 0);
    undo(s, 7, BUS_UPD_DELETE, NULL, NULL);       /* the delete refused */
    CHECK(step(s, 7, BUS_UPD_EDIT, NULL, NULL, BUS_UPD_SEED_NONE, &c) == 0, "not deleted after all");
    undo(s, 99, BUS_UPD_REACT_ON, TU, "a");       /* no state: nothing */
    CHECK(step(s, 99, BUS_UPD_REACT_ON, TU, "a", BUS_UPD_SEED_ASK, &c) == BUS_UPD_NEED_STATE,
          "an undo creates no state");
    bus_upd_states_free(s);
}

int main(void)
{
    test_counts_and_refusals();
    test_undo();
    test_seeds();
    test_expiry_and_bound();
    return check_summary("test_bus_update");
}
