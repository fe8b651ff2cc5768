/* chat_admit: see chat_admit.h. */
#define _GNU_SOURCE
#include "chat_admit.h"
#include "bus.h"
#include "chat_hold.h"
#include "chat_join.h"
#include "hmap.h"
#include "log.h"
#include "uconns.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct admit {
    conn *c;
    uconns_req *req;
    int has_epoch;
    char epoch[BUS_EPOCH_MAX + 1];
} admit;

static hmap g_admits;       /* conn id (hex) -> admit, only while pending */
static int g_init;

static void admit_key(const conn *c, char key[24])
{
    snprintf(key, 24, "%" PRIx64, c->id);
}

static void join_url_room(conn *c, const char *epoch)
{
    chat_join(c, c->url_room, c->has_since, c->since, epoch, 1, NULL);
}

static void on_answer(void *ud, int allowed, int64_t total)
{
    admit *a = ud;
    conn *c = a->c;
    char key[24];
    admit_key(c, key);
    hmap_del(&g_admits, key);
    if (conn_is_closing(c)) {
        /* a drain or a ban closed it meanwhile: nothing to join */
    } else if (!allowed) {
        LOGI("chat", "conn %" PRIu64 " user %s: %" PRId64 " connections on all nodes, over "
             "CHAT_MAX_CONNS_PER_USER: closing %d", c->id, c->ident.user, total, CHAT_ADMIT_CLOSE);
        conn_send_error(c, "rate_limited", CHAT_ADMIT_REASON " (on all nodes together)", NULL);
        conn_close_after_flush(c, CHAT_ADMIT_CLOSE, CHAT_ADMIT_REASON);
    } else {
        join_url_room(c, a->has_epoch ? a->epoch : NULL);
        free(a);
        return;
    }
    /* frames held meanwhile are dropped and input resumes (the peer's
     * close answer must be read) */
    chat_hold_join_done(c);
    free(a);
}

void chat_admit_start(conn *c, const char *epoch)
{
    if (!uconns_enabled()) { join_url_room(c, epoch); return; }
    if (!g_init) { hmap_init(&g_admits); g_init = 1; }
    admit *a = calloc(1, sizeof *a);
    char key[24];
    admit_key(c, key);
    if (!a || hmap_put(&g_admits, key, a) < 0) {
        free(a);
        conn_close_oom(c);
        return;
    }
    a->c = c;
    if (epoch) {
        a->has_epoch = 1;
        snprintf(a->epoch, sizeof a->epoch, "%s", epoch);
    }
    if (uconns_admit(c->ident.user, on_answer, a, &a->req) == UCONNS_ALLOW) {
        hmap_del(&g_admits, key);
        free(a);
        join_url_room(c, epoch);
    }
}

int chat_admit_pending(const conn *c)
{
    if (!g_init || !g_admits.count) return 0;
    char key[24];
    admit_key(c, key);
    return hmap_get(&g_admits, key) != NULL;
}

void chat_admit_conn_closed(conn *c)
{
    if (!g_init || !g_admits.count) return;
    char key[24];
    admit_key(c, key);
    admit *a = hmap_get(&g_admits, key);
    if (!a) return;
    hmap_del(&g_admits, key);
    uconns_cancel(a->req);
    free(a);
}

void chat_admit_shutdown(void)
{
    if (!g_init) return;
    hmap_free(&g_admits);
    g_init = 0;
}
