/* uconns: see uconns.h. The counts themselves are connlimit's; Redis
 * holds a copy per node (adminstore_conns, one script: set this node's
 * count, sum the live ones, take the newcomer back out when over). */
#define _GNU_SOURCE
#include "uconns.h"
#include "adminstore.h"
#include "connlimit.h"
#include "log.h"
#include "metrics.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "uconns"

struct uconns_req {
    uconns_cb cb;           /* NULL once cancelled */
    void *ud;
};

static adminstore *g_store;
static char g_node[96];
static int64_t g_max;
static uint64_t g_ttl, g_last, g_passes;
static size_t g_slot;   /* where the pass under way has reached in the user map */
static size_t g_cap;    /* the map's slot count when that pass began */
static int g_was_ready, g_down;
static metric_counter *m_unchecked, *m_refused;

/* The renewals of one tick, sent together (adminstore_conns_renew: one
 * script call per 128 users, not one each). The names point into
 * connlimit's map, which nothing changes before the tick sends them. */
static const char **g_bu;
static int64_t *g_bn;
static size_t g_blen, g_bcap;

void uconns_init(adminstore *a, const char *node, int64_t max, uint64_t ttl_ms)
{
    g_store = max > 0 ? a : NULL;
    snprintf(g_node, sizeof g_node, "%s", node ? node : "");
    g_max = max;
    g_ttl = ttl_ms < 300 ? 300 : ttl_ms;
    g_last = 0;
    g_slot = 0;
    g_was_ready = 0;
    g_down = 0;
    m_unchecked = metrics_counter("chat_conn_limit_unchecked_total",
                                  "New connections let through without the cluster-wide per-user count "
                                  "(Redis unreachable); the per-node limit still applied", NULL);
    m_refused = metrics_counter("chat_refused_total",
                                "Connections refused at the edge, by reason (before the upgrade; per_user_cluster: right after it)",
                                "reason=\"per_user_cluster\"");
}

void uconns_stop(void)
{
    g_store = NULL;
    free(g_bu);
    free(g_bn);
    g_bu = NULL;
    g_bn = NULL;
    g_blen = g_bcap = 0;
}

int uconns_enabled(void) { return g_store != NULL; }

uint64_t uconns_passes(void) { return g_passes; }

/* Redis could not answer: let through, say so once per outage */
static void unchecked(const char *why)
{
    metric_inc(m_unchecked);
    if (g_down) return;
    g_down = 1;
    LOGW(MOD, "connections per user are counted on this node only until Redis answers again (%s)", why);
}

static void on_admit(void *ud, int allowed, int64_t total)
{
    uconns_req *r = ud;
    if (allowed < 0) {
        if (r->cb) unchecked("no answer");
    } else if (g_down) {
        g_down = 0;
        LOGI(MOD, "connections per user are counted across nodes again");
    }
    if (r->cb) {
        if (allowed == 0) metric_inc(m_refused);
        r->cb(r->ud, allowed != 0, allowed < 0 ? -1 : total);
    }
    free(r);
}

int uconns_admit(const char *user, uconns_cb cb, void *ud, uconns_req **req)
{
    *req = NULL;
    if (!g_store) return UCONNS_ALLOW;
    if (!adminstore_ready(g_store)) {
        unchecked("not connected");
        return UCONNS_ALLOW;
    }
    uconns_req *r = calloc(1, sizeof *r);
    if (!r) return UCONNS_ALLOW;
    r->cb = cb;
    r->ud = ud;
    if (adminstore_conns(g_store, user, g_node, connlimit_count_user(user), g_ttl, g_max, on_admit, r) != 0) {
        free(r);
        unchecked("not connected");
        return UCONNS_ALLOW;
    }
    *req = r;
    return UCONNS_PENDING;
}

void uconns_cancel(uconns_req *r)
{
    if (r) r->cb = NULL;
}

void uconns_changed(const char *user)
{
    if (!g_store || !adminstore_ready(g_store)) return;   /* the next pass repairs it */
    LOGD(MOD, "user %s: %lld here", user, (long long)connlimit_count_user(user));
    adminstore_conns(g_store, user, g_node, connlimit_count_user(user), g_ttl, 0, NULL, NULL);
}

static void write_one(void *ud, const char *user, int64_t n)
{
    (void)ud;
    if (g_blen == g_bcap) {
        size_t nc = g_bcap ? g_bcap * 2 : 64;
        const char **nu = realloc(g_bu, nc * sizeof *nu);
        if (nu) g_bu = nu;
        int64_t *nn = nu ? realloc(g_bn, nc * sizeof *nn) : NULL;
        if (nn) g_bn = nn;
        if (!nu || !nn) {   /* out of memory: this one on its own */
            adminstore_conns(g_store, user, g_node, n, g_ttl, 0, NULL, NULL);
            return;
        }
        g_bcap = nc;
    }
    g_bu[g_blen] = user;
    g_bn[g_blen++] = n;
}

static void write_batch(void)
{
    if (g_blen && adminstore_conns_renew(g_store, g_node, g_ttl, g_blen, g_bu, g_bn) != 0)
        LOGD(MOD, "%zu renewals: some not sent (the next pass writes them)", g_blen);
    g_blen = 0;
}

/* A pass renews every count of this node once per third of the TTL, spread
 * over that time (each tick writes the part of the user map that is due),
 * so 19k users are not 19k Redis calls in one loop turn. After Redis comes
 * back the whole pass runs at once (the counts may be gone). */
void uconns_tick(uint64_t now)
{
    if (!g_store) return;
    int ready = adminstore_ready(g_store);
    if (ready && !g_was_ready) {
        connlimit_each_user(0, SIZE_MAX, write_one, NULL);
        g_last = now;
        g_slot = 0;
        g_passes++;
    } else if (ready) {
        uint64_t period = g_ttl / 3, done = now - g_last;
        if (done > period) done = period;
        size_t cap = connlimit_each_user(0, 0, write_one, NULL);
        if (g_slot == 0) g_cap = cap;
        else if (cap != g_cap) {
            /* the user map was resized during the pass: its users moved to
             * other slots, some below the part already written. Start the
             * pass again (a user's gap is then at most two periods, under
             * the TTL of three). */
            g_last = now;
            g_slot = 0;
            g_cap = cap;
            done = 0;
        }
        size_t due = period ? (size_t)((double)cap * (double)done / (double)period) : cap;
        if (due > g_slot) {
            connlimit_each_user(g_slot, due, write_one, NULL);
            g_slot = due;
        }
        if (now - g_last >= period) {
            connlimit_each_user(g_slot, SIZE_MAX, write_one, NULL);
            g_last = now;
            g_slot = 0;
            g_passes++;
            LOGD(MOD, "pass %llu", (unsigned long long)g_passes);
        }
    }
    write_batch();
    g_was_ready = ready;
}
