/* test_publish: publish.c's answer to what the store says about the row of
 * a published message or update, over the in-process bus and a fake store
 * (the test is linked with --wrap of store_write, store_target and
 * store_reactions: the store functions publish.c calls come here; no
 * Postgres). Covers: a row
 * the store can never hold (store_write -3) is answered
 * PUBLISH_UNSTORABLE, never "backlog full, resend" (a client would resend
 * for ever), for a message and for an edit; a full backlog (-1) is still
 * PUBLISH_BACKLOG; a committed row is PUBLISH_OK with its seq. */
#define _GNU_SOURCE
#include "publish.h"
#include "check.h"
#include "log.h"
#include "metrics.h"
#include "uvwait.h"
#include "wire.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uv_loop_t *L;

/* ---- the fake store ---- */
static int g_write_rc;              /* what store_write answers now */
static int g_writes;
static uint64_t g_write_seq;
static store_write_cb g_wcb;        /* a queued row's callback (rc 0) */
static void *g_wud;
static uv_timer_t g_later;

static void commit_cb(uv_timer_t *t)
{
    (void)t;
    store_write_cb cb = g_wcb;
    g_wcb = NULL;
    if (cb) cb(g_wud, 0);
}

int __wrap_store_write(store *s, const store_row *row, store_write_cb cb, void *ud);
int __wrap_store_write(store *s, const store_row *row, store_write_cb cb, void *ud)
{
    (void)s;
    g_writes++;
    g_write_seq = row->seq;
    if (g_write_rc < 0) return g_write_rc;
    g_wcb = cb;
    g_wud = ud;
    uv_timer_start(&g_later, commit_cb, 1, 0);   /* committed later, never from inside */
    return 0;
}

/* every target is a stored message of alice's, not deleted, unless a
 * test queued other rows (g_tq: the next calls' answers, in order) */
static store_target_cb g_tcb;
static void *g_tud;
static uv_timer_t g_target_t;
static struct {
    int kind; const char *author, *id; uint64_t target; int deleted;
    uint64_t id_seq; int id_kind;   /* the sender's update of the target with the asked id */
} g_tq[4];
static int g_tqn, g_targets;
static char g_tuser[64], g_tid[64];   /* the user and id the last lookup asked for */

static void target_cb(uv_timer_t *t)
{
    (void)t;
    store_target_cb cb = g_tcb;
    g_tcb = NULL;
    store_target_row row = {WIRE_MESSAGE, "alice", 0, NULL, 0, 0, 0};
    if (g_tqn) {
        row = (store_target_row){g_tq[0].kind, g_tq[0].author, g_tq[0].deleted, g_tq[0].id,
                                 g_tq[0].target, g_tq[0].id_seq, g_tq[0].id_kind};
        memmove(g_tq, g_tq + 1, (size_t)--g_tqn * sizeof g_tq[0]);
    }
    if (cb) cb(g_tud, STORE_TARGET_ROW, &row);
}

/* the next lookup's row: kind, author, client id (NULL: none), target (an
 * update's), deleted */
static void tq_push(int kind, const char *author, const char *id, uint64_t target, int deleted)
{
    g_tq[g_tqn].kind = kind;
    g_tq[g_tqn].author = author;
    g_tq[g_tqn].id = id;
    g_tq[g_tqn].target = target;
    g_tq[g_tqn].id_seq = 0;
    g_tq[g_tqn].id_kind = 0;
    g_tq[g_tqn++].deleted = deleted;
}

/* the last queued row also names the asked id's update of the target */
static void tq_id_row(uint64_t id_seq, int id_kind)
{
    g_tq[g_tqn - 1].id_seq = id_seq;
    g_tq[g_tqn - 1].id_kind = id_kind;
}

int __wrap_store_target(store *s, const char *room, uint64_t seq, const char *user,
                        const char *id, store_target_cb cb, void *ud);
int __wrap_store_target(store *s, const char *room, uint64_t seq, const char *user,
                        const char *id, store_target_cb cb, void *ud)
{
    (void)s; (void)room; (void)seq;
    snprintf(g_tuser, sizeof g_tuser, "%s", user ? user : "-");
    snprintf(g_tid, sizeof g_tid, "%s", id ? id : "-");
    g_tcb = cb;
    g_tud = ud;
    g_targets++;
    uv_timer_start(&g_target_t, target_cb, 1, 0);
    return 0;
}

/* every target has no reactions yet (the bus's seed of an update's state) */
static store_reactions_cb g_rcb;
static void *g_rud;
static uv_timer_t g_react_t;

static void reactions_cb(uv_timer_t *t)
{
    (void)t;
    store_reactions_cb cb = g_rcb;
    g_rcb = NULL;
    if (cb) cb(g_rud, 0, 0, NULL, NULL, 0);
}

int __wrap_store_reactions(store *s, const char *room, uint64_t target, store_reactions_cb cb, void *ud);
int __wrap_store_reactions(store *s, const char *room, uint64_t target, store_reactions_cb cb, void *ud)
{
    (void)s; (void)room; (void)target;
    g_rcb = cb;
    g_rud = ud;
    uv_timer_start(&g_react_t, reactions_cb, 1, 0);
    return 0;
}

/* ---- answers ---- */
typedef struct answer { int done, status; uint64_t seq; } answer;

static void on_done(void *ud, const publish_result *r)
{
    answer *a = ud;
    a->done++;
    a->status = r->status;
    a->seq = r->seq;
}

static int publish_msg_now(const char *id, answer *a)
{
    memset(a, 0, sizeof *a);
    publish_msg m = {.room = "lobby", .id = id, .user = "alice", .name = "Alice",
                     .body = "hello", .body_len = 5};
    int rc = publish_start(&m, NULL, on_done, a);
    if (rc == 0) WAIT_ON(L, a->done, 2000);
    return rc;
}

static void test_message_answers(void)
{
    answer a;
    int w0 = g_writes;
    g_write_rc = 0;
    CHECK(publish_msg_now("m1", &a) == 0 && a.done == 1, "committed: answered");
    CHECK(a.status == PUBLISH_OK && a.seq > 0, "ok with a seq (status %d)", a.status);
    uint64_t s1 = a.seq;

    g_write_rc = -3;     /* a row Postgres can never hold */
    CHECK(publish_msg_now("m2", &a) == 0 && a.done == 1, "unstorable: answered once");
    CHECK(a.status == PUBLISH_UNSTORABLE, "unstorable, not a resend status (status %d)", a.status);
    CHECK(a.status != PUBLISH_BACKLOG && a.status != PUBLISH_BUS_DOWN && a.status != PUBLISH_STORE_DOWN,
          "never answered as 'resend with the same id' (status %d)", a.status);
    CHECK(a.seq == s1 + 1 && g_write_seq == a.seq, "the seq it got is the one the store refused");

    g_write_rc = -1;     /* the backlog is full */
    CHECK(publish_msg_now("m3", &a) == 0 && a.done == 1 && a.status == PUBLISH_BACKLOG,
          "a full backlog: resend (status %d)", a.status);
    CHECK(g_writes == w0 + 3, "one write per publish (%d)", g_writes - w0);
}

static void test_edit_unstorable(void)
{
    answer a;
    memset(&a, 0, sizeof a);
    g_write_rc = 0;
    answer m;
    CHECK(publish_msg_now("e0", &m) == 0 && m.status == PUBLISH_OK, "the message to edit");
    g_write_rc = -3;
    publish_update u = {.room = "lobby", .id = "e1", .user = "alice", .name = "Alice",
                        .kind = WIRE_EDIT, .target = m.seq, .body = "hello again", .body_len = 11};
    int w0 = g_writes;
    CHECK(publish_update_start(&u, NULL, NULL, on_done, &a) == 0, "edit started");
    WAIT_ON(L, a.done, 2000);
    CHECK(a.done == 1 && g_writes == w0 + 1, "the edit's row was offered to the store");
    CHECK(a.status == PUBLISH_UNSTORABLE, "an unstorable edit: unstorable (status %d)", a.status);
}

static int edit_now(const char *id, uint64_t target, answer *a)
{
    memset(a, 0, sizeof *a);
    publish_update u = {.room = "lobby", .id = id, .user = "alice", .name = "Alice",
                        .kind = WIRE_EDIT, .target = target, .body = "again", .body_len = 5};
    int rc = publish_update_start(&u, NULL, NULL, on_done, a);
    if (rc == 0) WAIT_ON(L, a->done, 2000);
    return rc;
}

/* A resent update is acked only when the row at its seq is that update:
 * another row there (its seq lost to a conflict whose forget never
 * reached the bus) is a conflict, its id forgotten, so the next resend is
 * a new update */
static void test_resent_update_checks_its_row(void)
{
    answer m, a;
    g_write_rc = 0;
    CHECK(publish_msg_now("r0", &m) == 0 && m.status == PUBLISH_OK, "the message to edit");
    CHECK(edit_now("re1", m.seq, &a) == 0 && a.status == PUBLISH_OK, "the edit (status %d)", a.status);
    uint64_t se = a.seq;
    int t0 = g_targets;
    tq_push(WIRE_MESSAGE, "alice", "r0", 0, 0); /* its target, then the row at its seq: this edit */
    tq_push(WIRE_EDIT, "alice", "re1", m.seq, 0);
    CHECK(edit_now("re1", m.seq, &a) == 0 && a.status == PUBLISH_OK && a.seq == se,
          "its resend: acked with its seq (status %d, seq %llu)", a.status, (unsigned long long)a.seq);
    CHECK(g_targets == t0 + 2 && g_tqn == 0, "the target and the resend's row were looked at");
    tq_push(WIRE_MESSAGE, "alice", "r0", 0, 0); /* another row holds its seq: bob's message */
    tq_push(WIRE_MESSAGE, "bob", "re1", 0, 0);
    CHECK(edit_now("re1", m.seq, &a) == 0 && a.status == PUBLISH_CONFLICT,
          "a resend whose seq another row holds is not acked (status %d)", a.status);
    int w0 = g_writes;
    CHECK(edit_now("re1", m.seq, &a) == 0 && a.status == PUBLISH_OK && a.seq > se &&
          g_writes == w0 + 1, "its id was forgotten: the next resend is a new edit (status %d)",
          a.status);
}

/* One id used by one sender for two things (a message, then an edit with
 * the message's id): the second is refused as such (bad_request / 409) and
 * the id keeps naming the first: a resend of the message is still its
 * duplicate. (Answered as a conflict, the id was forgotten: the message's
 * resend was stored and broadcast a second time.) */
static void test_id_reused_keeps_the_id(void)
{
    answer m, a;
    g_write_rc = 0;
    CHECK(publish_msg_now("u0", &m) == 0 && m.status == PUBLISH_OK, "the message");
    tq_push(WIRE_MESSAGE, "alice", "u0", 0, 0);   /* the edit's target */
    tq_push(WIRE_MESSAGE, "alice", "u0", 0, 0);   /* the row its id names: the message */
    CHECK(edit_now("u0", m.seq, &a) == 0 && a.status == PUBLISH_ID_REUSED,
          "an edit with the message's id: id reused (status %d)", a.status);
    CHECK(g_tqn == 0, "the target and the id's row were looked at");
    int w0 = g_writes;
    CHECK(publish_msg_now("u0", &a) == 0 && a.status == PUBLISH_OK && a.seq == m.seq,
          "the message's resend is still its duplicate (status %d, seq %llu, first %llu)",
          a.status, (unsigned long long)a.seq, (unsigned long long)m.seq);
    CHECK(g_writes == w0 + 1, "its row was offered once (the duplicate check)");
    /* an edit id reused for an edit of another target: refused the same way */
    answer m2, e;
    CHECK(publish_msg_now("u1", &m2) == 0 && m2.status == PUBLISH_OK, "a second message");
    CHECK(edit_now("ue", m.seq, &e) == 0 && e.status == PUBLISH_OK, "an edit of the first");
    tq_push(WIRE_MESSAGE, "alice", "u1", 0, 0);
    tq_push(WIRE_EDIT, "alice", "ue", m.seq, 0);
    CHECK(edit_now("ue", m2.seq, &a) == 0 && a.status == PUBLISH_ID_REUSED,
          "its id for an edit of the second: id reused (status %d)", a.status);
}

static int edit_as(const char *user, const char *id, uint64_t target, answer *a)
{
    memset(a, 0, sizeof *a);
    publish_update u = {.room = "lobby", .id = id, .user = user, .name = user,
                        .kind = WIRE_EDIT, .target = target, .body = "again", .body_len = 5};
    int rc = publish_update_start(&u, NULL, NULL, on_done, a);
    if (rc == 0) WAIT_ON(L, a->done, 2000);
    return rc;
}

/* A deleted target: history is the authority, not the bus's state (which
 * can lack the deleted mark after a Redis loss). The resend of an edit made
 * before the delete (its first ack lost) is acked with its stored seq, read
 * with the target (the lookup asks for the sender and the id); a react with
 * that edit's id is id_reused; a new edit, also another user's, is
 * not_found. None of them reaches the bus or the store's writes (the
 * in-process bus here never saw the delete: it would publish them). */
static void test_resend_after_the_target_was_deleted(void)
{
    answer m, e, a;
    g_write_rc = 0;
    CHECK(publish_msg_now("x0", &m) == 0 && m.status == PUBLISH_OK, "the message");
    CHECK(edit_now("x1", m.seq, &e) == 0 && e.status == PUBLISH_OK, "its edit");
    int w0 = g_writes;
    tq_push(WIRE_MESSAGE, "alice", "x0", 0, 1);   /* the target: deleted (in history only) */
    tq_id_row(e.seq, WIRE_EDIT);                  /* alice's edit of it with id x1 */
    CHECK(edit_now("x1", m.seq, &a) == 0 && a.status == PUBLISH_OK && a.seq == e.seq,
          "the edit's resend: acked with its seq (status %d, seq %llu, first %llu)", a.status,
          (unsigned long long)a.seq, (unsigned long long)e.seq);
    CHECK(strcmp(g_tuser, "alice") == 0 && strcmp(g_tid, "x1") == 0,
          "the lookup asked for the sender and the id (%s %s)", g_tuser, g_tid);
    tq_push(WIRE_MESSAGE, "alice", "x0", 0, 1);
    tq_id_row(e.seq, WIRE_EDIT);
    answer r;
    memset(&r, 0, sizeof r);
    publish_update u = {.room = "lobby", .id = "x1", .user = "alice", .name = "Alice",
                        .kind = WIRE_REACT, .target = m.seq, .emoji = "\xF0\x9F\x91\x8D", .on = 1};
    CHECK(publish_update_start(&u, NULL, NULL, on_done, &r) == 0, "react started");
    WAIT_ON(L, r.done, 2000);
    CHECK(r.status == PUBLISH_ID_REUSED, "a react with the edit's id: id reused (status %d)", r.status);
    tq_push(WIRE_MESSAGE, "alice", "x0", 0, 1);
    CHECK(edit_now("x3", m.seq, &a) == 0 && a.status == PUBLISH_NOT_FOUND,
          "a new edit of the deleted message: not found (status %d)", a.status);
    tq_push(WIRE_MESSAGE, "alice", "x0", 0, 1);
    CHECK(edit_as("bob", "b1", m.seq, &a) == 0 && a.status == PUBLISH_NOT_FOUND,
          "bob's edit of alice's deleted message: not found (status %d)", a.status);
    CHECK(g_writes == w0 && g_tqn == 0, "nothing written, every lookup answered");
}

int main(void)
{
    log_set_level(LOG_ERROR);
    L = uv_default_loop();
    uvwait_init(L);
    uv_timer_init(L, &g_later);
    uv_timer_init(L, &g_target_t);
    uv_timer_init(L, &g_react_t);
    bus_opts o = {.redis_url = NULL};
    bus_handlers h = {0};
    char err[128] = "";
    bus *b = bus_new(L, &o, &h, NULL, err, sizeof err);
    if (!b) { fprintf(stderr, "bus_new: %s\n", err); return 1; }
    publish_init();
    static int fake_store;          /* never dereferenced: store_* are the fakes above */
    publish_attach(b, (store *)&fake_store, 100);
    WAIT_ON(L, bus_ready(b), 2000);
    CHECK(bus_ready(b), "the in-process bus is ready");
    test_message_answers();
    test_edit_unstorable();
    test_resent_update_checks_its_row();
    test_id_reused_keeps_the_id();
    test_resend_after_the_target_was_deleted();
    publish_attach(NULL, NULL, 0);
    bus_free(b);
    uv_close((uv_handle_t *)&g_later, NULL);
    uv_close((uv_handle_t *)&g_target_t, NULL);
    uv_close((uv_handle_t *)&g_react_t, NULL);
    uvwait_close();
    uv_run(L, UV_RUN_DEFAULT);
    uv_loop_close(L);
    metrics_free_all();
    return check_summary("test_publish");
}
