/* api: see api.h. Sections: the request's lifetime and answers, the routes
 * (publish, room info, disconnect / ban / unban, moderator delete), the
 * dispatch (key, body, rate), the lws side.
 * Why one file of ~770 lines: it is one concept, a server API request.
 * Every route is a short chain of callbacks over the same request object,
 * its answer and its cancellation (a connection that closes cancels it);
 * the parsing of bodies is apart (api_parse.c), and so are the keys
 * (apikey.c), the HTTP mechanics (httpd.c), the control channel (ctl.c) and
 * what every node does (chat_admin.c). A split of the routes from the
 * request would export the request struct and its answer helpers; do it
 * (routes over a request file) when a route is added. */
#define _GNU_SOURCE
#include "api.h"
#include "adminstore.h"
#include "api_parse.h"
#include "apikey.h"
#include "bans.h"
#include "climit.h"
#include "ctl.h"
#include "httpd.h"
#include "log.h"
#include "metrics.h"
#include "publish.h"
#include "srv.h"
#include "util.h"
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* every user the API publishes as is a sender the bus keys an id under
 * (bus_id_part): a longer one would answer "unavailable" for ever */
_Static_assert(API_USER_MAX <= BUS_USER_MAX, "an API user fits the bus's sender (bus_types.h)");

#define MOD "api"
/* how long a cluster-wide action waits for the nodes' answers */
#define API_CTL_TIMEOUT_MS 1000

typedef struct api_req {
    struct lws *wsi;        /* NULL once the connection went away */
    int refs;               /* the connection + each callback still to come */
    int method;
    api_route rt;
    char fp[APIKEY_FP_LEN + 1];
    httpd_body body;
    int reading;            /* waiting for the body */
    int answered;           /* the answer waits for WRITEABLE */
    unsigned status;
    char *resp;
    size_t resp_len;
    char hname[24], hval[96];       /* one extra header (Retry-After...) */
    int discard, linger;    /* refused: the body is dropped (then closed) */
    size_t lingered;
    unsigned pending_status; /* refused: answered once the body is read */
    char pending_code[32], pending_msg[192];
    uint64_t t0;
    publish_owner pubs;     /* the publish of this request */
    ctl_wait *wait;         /* the control-channel wait of this request */
    int parts, part_failed; /* room info: answers still to come */
    uint64_t head;
    size_t users;
    long conns;
    uint64_t until;         /* ban */
    int lifted;             /* unban: a ban in force was lifted */
    char reason[API_REASON_MAX + 1];
    uint64_t deadline_ms;   /* publish: 503 when not durable by then (mono) */
    struct api_req *tprev, *tnext;  /* the publishes waiting (api_tick) */
} api_req;

static struct {
    apikeys *keys;
    climit *limits;
    double rate, burst;
    metric_counter *m_req[AR_N][14];
    metric_counter *m_limited, *m_auth_fail;
    metric_hist *m_dur[AR_N];
    metric_counter *m_timeouts;
    uint64_t timeout_ms;
    api_req *timed;         /* publishes in flight, oldest first */
    adminstore *store;      /* with Redis: where bans are stored */
} A;

static const unsigned CODES[14] = {200, 400, 401, 404, 405, 411, 413, 422, 429, 500, 503, 0, 0, 0};

static metric_counter *req_metric(int route, unsigned status)
{
    int i;
    for (i = 0; CODES[i] && CODES[i] != status; i++) {}
    return A.m_req[route >= 0 && route < AR_N ? route : 0][i];
}

int api_init(const char *keys, double rate, double burst, climit *limits, uint64_t timeout_ms,
             char *err, size_t errlen)
{
    A.timeout_ms = timeout_ms;
    A.m_timeouts = metrics_counter("chat_api_publish_timeouts_total",
                                   "Server API publishes answered 503 before their durable commit", NULL);
    for (int r = 0; r < AR_N; r++) {
        for (int i = 0; i < 14; i++) {
            char l[64];
            if (CODES[i]) snprintf(l, sizeof l, "route=\"%s\",code=\"%u\"", api_route_name(r), CODES[i]);
            else snprintf(l, sizeof l, "route=\"%s\",code=\"other\"", api_route_name(r));
            A.m_req[r][i] = metrics_counter("chat_api_requests_total",
                                            "Server API answers, by route and status", l);
        }
        char l[48];
        snprintf(l, sizeof l, "route=\"%s\"", api_route_name(r));
        A.m_dur[r] = metrics_histogram("chat_api_duration_seconds",
                                       "Server API request (body read) -> answer ready", l,
                                       METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    }
    A.m_limited = metrics_counter("chat_rate_limited_total",
                                  "Requests refused by a cluster-wide rate limit, by limit",
                                  "limit=\"api_key\"");
    A.m_auth_fail = metrics_counter("chat_api_auth_failures_total",
                                    "Server API requests without a valid key (401)", NULL);
    A.limits = limits;
    A.rate = rate;
    A.burst = burst >= 1 ? burst : rate;
    if (!keys || !*keys) return 0;
    A.keys = apikeys_new(keys, err, errlen);
    if (!A.keys) return -1;
    LOGI(MOD, "server API on /api/ with %zu key(s)%s", apikeys_count(A.keys),
         rate > 0 ? "" : ", no per-key request rate (CHAT_API_RATE)");
    return 0;
}

void api_set_store(adminstore *a) { A.store = a; }

void api_shutdown(void)
{
    apikeys_free(A.keys);
    A.keys = NULL;
}

int api_is_api_uri(const char *uri)
{
    return !strncmp(uri, "/api/", 5) || !strcmp(uri, "/api");
}

/* ---- request lifetime and answers ------------------------------------- */

static void timed_unlink(api_req *r)
{
    if (!r->deadline_ms) return;
    if (r->tprev) r->tprev->tnext = r->tnext; else A.timed = r->tnext;
    if (r->tnext) r->tnext->tprev = r->tprev;
    r->tprev = r->tnext = NULL;
    r->deadline_ms = 0;
}

static void req_unref(api_req *r)
{
    if (--r->refs > 0) return;
    httpd_body_free(&r->body);
    free(r->resp);
    free(r);
}

/* The answer is ready: written at the next WRITEABLE. */
static void answer(api_req *r, unsigned status, char *body, size_t len)
{
    timed_unlink(r);
    if (r->answered || !r->wsi) { free(body); return; }
    metric_inc(req_metric(r->rt.route, status));
    metric_observe(A.m_dur[r->rt.route], (double)(mono_ns() - r->t0) / 1e9);
    r->answered = 1;
    r->status = status;
    r->resp = body;
    r->resp_len = len;
    lws_callback_on_writable(r->wsi);
}

static void answer_error(api_req *r, unsigned status, const char *code, const char *message)
{
    size_t len = 0;
    char *b = httpd_error_body(code, message, &len);
    answer(r, b ? status : 500, b, len);
}

/* printf into a fresh buffer */
static char *fmt(size_t *len, const char *f, ...) __attribute__((format(printf, 2, 3)));
static char *fmt(size_t *len, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    int n = vasprintf(&s, f, ap);
    va_end(ap);
    if (n < 0) return NULL;
    *len = (size_t)n;
    return s;
}

/* A JSON string value (quoted, escaped) into a fresh buffer. */
static char *jstr(const char *s)
{
    size_t l = strlen(s), cap = 6 * l + 3;
    char *b = malloc(cap);
    if (!b) return NULL;
    long n = json_escape(b, cap, s, l);
    if (n < 0) { free(b); return NULL; }
    b[n] = 0;
    return b;
}

static void answer_json(api_req *r, char *body, size_t len)
{
    if (!body) { answer_error(r, 503, "unavailable", "out of memory"); return; }
    answer(r, 200, body, len);
}

/* ---- publish ------------------------------------------------------------ */

static void on_published(void *ud, const publish_result *res)
{
    api_req *r = ud;
    if (res->status == PUBLISH_UNSTORABLE) {
        answer_error(r, 400, "bad_request", "the message cannot be stored in history; do not retry");
        return;
    }
    if (res->status == PUBLISH_ID_REUSED) {
        answer_error(r, 409, "conflict", res->reason ? res->reason : "id already used");
        return;
    }
    if (res->status != PUBLISH_OK) {
        const char *why = res->status == PUBLISH_BUS_DOWN ? "message bus unavailable"
                        : res->status == PUBLISH_BACKLOG ? "history store backlog full"
                        : res->status == PUBLISH_CONFLICT ? "seq conflict in history"
                        : "history store unavailable";
        char m[128];
        snprintf(m, sizeof m, "%s; retry with the same id", why);
        answer_error(r, 503, "unavailable", m);
        return;
    }
    char *id = jstr(res->id ? res->id : "");
    size_t len = 0;
    char *b = id ? fmt(&len, "{\"room\":\"%s\",\"seq\":%" PRIu64 ",\"id\":%s,\"duplicate\":%s}", res->room,
                       res->seq, id, res->duplicate ? "true" : "false")
                 : NULL;
    free(id);
    answer_json(r, b, len);
}

static void run_publish(api_req *r)
{
    api_publish p;
    char err[200];
    if (api_parse_publish(r->body.buf ? r->body.buf : "", r->body.len, &p, err, sizeof err) < 0) {
        answer_error(r, 400, "bad_request", err);
        return;
    }
    if (!publish_ready()) {
        api_publish_clear(&p);
        answer_error(r, 503, "unavailable", "temporarily unavailable; retry with the same id");
        return;
    }
    script_ctx x = {p.user, p.name, NULL, r->rt.room, g_srv.cfg.node_id, now_ms(), "api"};
    script_result res;
    memset(&res, 0, sizeof res);
    script_verdict v = script_on_message(g_srv.script, &x, p.body, p.body_len, p.id, &res);
    const char *body = p.body;
    size_t body_len = p.body_len;
    if (v == SCRIPT_REJECT) {
        answer_error(r, 422, "rejected", res.reason[0] ? res.reason : "rejected by policy");
        script_result_clear(&res);
        api_publish_clear(&p);
        return;
    }
    if (v == SCRIPT_REPLACE && res.body) { body = res.body; body_len = res.body_len; }
    if (memchr(body, 0, body_len)) {
        answer_error(r, 422, "rejected", "the policy produced a body that cannot be stored");
    } else {
        publish_msg pm = {r->rt.room, p.id, p.user, p.name, body, body_len, r->t0, p.meta,
                          p.meta_len, 0};
        if (publish_start(&pm, &r->pubs, on_published, r) < 0) {
            answer_error(r, 503, "unavailable", "message bus unavailable; retry with the same id");
        } else if (A.timeout_ms) {
            /* answered 503 if not durable in time (api_tick); the publish
             * itself goes on: a retry with the same id finds it */
            r->deadline_ms = mono_ms() + A.timeout_ms;
            api_req **pp = &A.timed;
            r->tprev = NULL;
            while (*pp) { r->tprev = *pp; pp = &(*pp)->tnext; }
            *pp = r;
        }
    }
    script_result_clear(&res);
    api_publish_clear(&p);
}

/* ---- room info ---------------------------------------------------------- */

static void room_part_done(api_req *r)
{
    if (--r->parts > 0) return;
    if (r->part_failed) { answer_error(r, 503, "unavailable", "room state unavailable; retry"); return; }
    size_t len = 0;
    char *b = fmt(&len, "{\"room\":\"%s\",\"seq\":%" PRIu64 ",\"users\":%zu,\"connections\":%ld}",
                  r->rt.room, r->head, r->users, r->conns);
    answer_json(r, b, len);
}

static void on_room_head(void *ud, int status, const bus_entry *e, size_t n, uint64_t head,
                         const char *epoch)
{
    api_req *r = ud;
    if (status < 0) r->part_failed = 1;
    else r->head = head;
    room_part_done(r);
    req_unref(r);
}

static void on_room_users(void *ud, int status, const presence_user *u, size_t n)
{
    api_req *r = ud;
    if (status < 0) r->part_failed = 1;
    else r->users = n;
    room_part_done(r);
    req_unref(r);
}

static void on_room_conns(void *ud, int status, long total, long answers, long expected)
{
    api_req *r = ud;
    r->wait = NULL;
    if (status < 0) r->part_failed = 1;
    else r->conns = total;
    room_part_done(r);
}

/* The head (bus), the present users (presence) and the connections of
 * every node (control channel) at once; answered when all three are in.
 * None of them calls back from inside its call. */
static void run_room(api_req *r)
{
    r->parts = 1;            /* this function's own, until all are started */
    r->parts++;
    r->refs++;
    if (bus_replay(g_srv.bus, r->rt.room, UINT64_MAX, 0, on_room_head, r) < 0) {
        r->part_failed = 1;
        r->parts--;
        r->refs--;
    }
    r->parts++;
    r->refs++;
    if (presence_list(g_srv.presence, r->rt.room, on_room_users, r) < 0) {
        r->part_failed = 1;
        r->parts--;
        r->refs--;
    }
    r->parts++;
    json_t *m = json_pack("{s:s, s:s}", "op", "count", "room", r->rt.room);
    r->wait = m ? ctl_request(m, API_CTL_TIMEOUT_MS, on_room_conns, r) : NULL;
    if (!r->wait) {
        r->part_failed = 1;
        r->parts--;
    }
    room_part_done(r);
}

/* ---- disconnect, ban, unban ---------------------------------------------- */

static void on_disconnected(void *ud, int status, long total, long answers, long expected)
{
    api_req *r = ud;
    r->wait = NULL;
    if (status < 0) { answer_error(r, 503, "unavailable", "control channel unavailable; retry"); return; }
    char *u = jstr(r->rt.user);
    size_t len = 0;
    char *b = u ? fmt(&len, "{\"user\":%s,\"closed\":%ld}", u, total) : NULL;
    free(u);
    answer_json(r, b, len);
    LOGI(MOD, "disconnect user %s: %ld connection(s) closed, %ld of %ld node(s) answered",
         r->rt.user, total, answers, expected);
}

static void run_disconnect(api_req *r)
{
    char reason[API_REASON_MAX + 1], err[200];
    if (api_parse_disconnect(r->body.buf ? r->body.buf : "", r->body.len, reason, err, sizeof err) < 0) {
        answer_error(r, 400, "bad_request", err);
        return;
    }
    json_t *m = json_pack("{s:s, s:s, s:s}", "op", "disconnect", "user", r->rt.user, "reason", reason);
    r->wait = m ? ctl_request(m, API_CTL_TIMEOUT_MS, on_disconnected, r) : NULL;
    if (!r->wait) answer_error(r, 503, "unavailable", "control channel unavailable; retry");
}

static void on_banned(void *ud, int status, long total, long answers, long expected)
{
    api_req *r = ud;
    r->wait = NULL;
    if (status < 0) { answer_error(r, 503, "unavailable", "control channel unavailable; retry"); return; }
    char *u = jstr(r->rt.user);
    size_t len = 0;
    char room[CHAT_ROOM_MAX + 3];
    if (r->rt.room[0]) snprintf(room, sizeof room, "\"%s\"", r->rt.room);
    else snprintf(room, sizeof room, "null");
    char *b = NULL;
    if (u && r->method == HM_PUT)
        b = fmt(&len, "{\"user\":%s,\"room\":%s,\"until\":%" PRIu64 ",\"closed\":%ld}", u, room,
                r->until, total);
    else if (u)
        b = fmt(&len, "{\"user\":%s,\"room\":%s,\"lifted\":%s}", u, room,
                r->lifted ? "true" : "false");
    free(u);
    answer_json(r, b, len);
}

/* The ban (or its lift) is stored (or there is no store): this node
 * acts at once, then every node (this one too) from the control channel. */
static void ban_announce(api_req *r)
{
    int lift = r->method == HM_DELETE;
    const char *room = r->rt.room;
    json_t *m;
    if (!lift) {
        bans_put(r->rt.user, room, r->until, r->reason);
        m = json_pack("{s:s, s:s, s:I, s:s}", "op", "ban", "user", r->rt.user, "until",
                      (json_int_t)r->until, "reason", r->reason);
    } else {
        /* lifted: a ban in force was, as the shared store counted it
         * (on_ban_stored), else as this node's own copy does */
        int n = bans_lift(r->rt.user, room[0] ? room : NULL, now_ms());
        if (!A.store) r->lifted = n > 0;
        m = json_pack("{s:s, s:s}", "op", "unban", "user", r->rt.user);
    }
    if (m && room[0]) json_object_set_new(m, "room", json_string(room));
    r->wait = m ? ctl_request(m, API_CTL_TIMEOUT_MS, on_banned, r) : NULL;
    if (!r->wait) answer_error(r, 503, "unavailable", "control channel unavailable; retry");
}

static void on_ban_stored(void *ud, int status)
{
    api_req *r = ud;
    if (r->wsi) {
        if (status < 0) answer_error(r, 503, "unavailable", "ban store (Redis) unavailable; retry");
        else {
            r->lifted = status > 0;
            ban_announce(r);
        }
    }
    req_unref(r);
}

static void run_ban(api_req *r)
{
    api_ban b;
    char err[200];
    int lift = r->method == HM_DELETE;
    if (api_parse_ban(r->body.buf ? r->body.buf : "", r->body.len, lift, &b, err, sizeof err) < 0) {
        answer_error(r, 400, "bad_request", err);
        return;
    }
    if (lift && !b.room[0]) { /* also ?room= on a DELETE without a body */
        char q[CHAT_ROOM_MAX + 2] = "";
        if (httpd_arg(r->wsi, "room", q, sizeof q) && q[0]) {
            if (!room_name_valid(q, strlen(q))) {
                answer_error(r, 400, "bad_request", "room: 1-64 characters of [A-Za-z0-9_.-]");
                return;
            }
            memcpy(b.room, q, strlen(q) + 1); /* valid: at most CHAT_ROOM_MAX */
        }
    }
    snprintf(r->rt.room, sizeof r->rt.room, "%s", b.room);
    memcpy(r->reason, b.reason, sizeof r->reason);
    if (!lift) {
        r->until = now_ms() + (uint64_t)b.seconds * 1000u;
        LOGI(MOD, "ban user %s from %s for %lld s", r->rt.user, b.room[0] ? b.room : "every room",
             (long long)b.seconds);
    } else {
        LOGI(MOD, "unban user %s from %s", r->rt.user, b.room[0] ? b.room : "every ban");
    }
    if (!A.store) { ban_announce(r); return; }
    /* stored first (with its expiry), so a node that starts or reconnects
     * later reads it; then announced */
    int sent = lift ? adminstore_ban_lift(A.store, r->rt.user, b.room[0] ? b.room : NULL, on_ban_stored, r)
                    : adminstore_ban_put(A.store, r->rt.user, b.room, r->until, b.reason, on_ban_stored, r);
    if (sent != 0) { answer_error(r, 503, "unavailable", "ban store (Redis) unavailable; retry"); return; }
    r->refs++;
}

/* ---- moderator delete ----------------------------------------------------- */

/* DELETE /api/rooms/{room}/messages/{seq}: a delete of the message by a
 * moderator (the API key is the authority: no policy step), through the
 * same delete as the client frame (publish_delete: its own seq, broadcast,
 * stored, replayed). Optional body {"reason", "user", "name", "id"}: the
 * update's author (default "moderator") and an id that makes a retry
 * idempotent (default "api-delete-<seq>"). 200 {"room","target","seq",
 * "duplicate"} once durable; 404 for an unknown, update or already deleted
 * seq, except that a retry with the id given in the body answers 200 with
 * the first delete's seq ("duplicate":true) — deletes at once without one
 * share the default id: one answers 200, the others 404 (publish.c
 * finish), as one after the other; 409 when that id names
 * another of the user's messages or updates. */
static void on_deleted(void *ud, const publish_result *res)
{
    api_req *r = ud;
    if (res->status == PUBLISH_NOT_FOUND) {
        answer_error(r, 404, "not_found", "no such message (unknown seq, an update, or deleted)");
        return;
    }
    if (res->status == PUBLISH_UNSTORABLE) {
        answer_error(r, 400, "bad_request", "the delete cannot be stored in history; do not retry");
        return;
    }
    if (res->status == PUBLISH_ID_REUSED) {
        answer_error(r, 409, "conflict", res->reason ? res->reason : "id already used");
        return;
    }
    if (res->status != PUBLISH_OK) {
        answer_error(r, 503, "unavailable", "temporarily unavailable; retry with the same id");
        return;
    }
    size_t len = 0;
    char *b = fmt(&len, "{\"room\":\"%s\",\"target\":%" PRIu64 ",\"seq\":%" PRIu64
                  ",\"duplicate\":%s}", res->room, r->rt.seq, res->seq,
                  res->duplicate ? "true" : "false");
    answer_json(r, b, len);
}

static void run_delete_message(api_req *r)
{
    api_delete d;
    char err[200];
    if (api_parse_delete(r->body.buf ? r->body.buf : "", r->body.len, &d, err, sizeof err) < 0) {
        answer_error(r, 400, "bad_request", err);
        return;
    }
    const char *user = d.user, *name = d.name, *id = d.id, *reason = d.reason;
    char idbuf[48];
    if (!id) {
        snprintf(idbuf, sizeof idbuf, "api-delete-%" PRIu64, r->rt.seq);
        id = idbuf;
    }
    if (!publish_ready()) {
        api_delete_clear(&d);
        answer_error(r, 503, "unavailable", "temporarily unavailable; retry");
        return;
    }
    LOGI("api", "moderator delete of room %s seq %" PRIu64 " by %s%s%.200s", r->rt.room, r->rt.seq,
         user, reason ? ": " : "", reason ? reason : "");
    if (publish_delete(r->rt.room, r->rt.seq, user, name, id, id == idbuf, &r->pubs, on_deleted,
                       r) < 0)
        answer_error(r, 503, "unavailable", "message bus unavailable; retry");
    api_delete_clear(&d);
}

/* ---- dispatch ------------------------------------------------------------ */

static void run(api_req *r)
{
    switch (r->rt.route) {
    case AR_PUBLISH: run_publish(r); break;
    case AR_ROOM: run_room(r); break;
    case AR_DISCONNECT: run_disconnect(r); break;
    case AR_BAN: run_ban(r); break;
    case AR_DELETE_MSG: run_delete_message(r); break;
    default: answer_error(r, 404, "not_found", "no such route"); break;
    }
}

static void limited(api_req *r, uint64_t retry_ms)
{
    metric_inc(A.m_limited);
    snprintf(r->hname, sizeof r->hname, "retry-after");
    snprintf(r->hval, sizeof r->hval, "%" PRIu64, (retry_ms + 999) / 1000);
    answer_error(r, 429, "rate_limited", "too many requests for this key; retry after Retry-After seconds");
}

static void on_key_rate(void *ud, int allowed, uint64_t retry_ms)
{
    api_req *r = ud;
    if (r->wsi) {
        if (allowed == CLIMIT_DENY) limited(r, retry_ms);
        else run(r);
    }
    req_unref(r);
}

static void dispatch(api_req *r)
{
    r->t0 = mono_ns();
    if (A.rate > 0) {
        uint64_t retry = 0;
        int l = climit_take(A.limits, "api", r->fp, A.rate, A.burst, &retry, on_key_rate, r);
        if (l == CLIMIT_DENY) { limited(r, retry); return; }
        if (l == CLIMIT_PENDING) { r->refs++; return; }
    }
    run(r);
}

/* ---- the lws side ---------------------------------------------------------- */

/* How a refused request ends: answered now (no body pending; a HEAD is
 * closed after it), after its body was read and dropped (keep-alive), or
 * answered now and closed after a lingering read (a body that will not be
 * read: too large, no length, malformed length). */
enum { REFUSE_NOW, REFUSE_AFTER_BODY, REFUSE_LINGER };
/* bytes of a refused body drained before the close (the answer is out) */
#define API_LINGER_MAX (256u * 1024u)

static api_req *req_new(struct lws *wsi, int method, const api_route *rt)
{
    api_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->wsi = wsi;
    r->refs = 1;
    r->method = method;
    if (rt) r->rt = *rt;
    r->body.max = (size_t)g_srv.cfg.max_frame;
    return r;
}

static int refuse(struct lws *wsi, api_req **slot, int mode, int route, unsigned status,
                  const char *code, const char *message, const char *hname, const char *hval)
{
    const char *hdrs[] = {hname, hval, NULL};
    int method = httpd_method(wsi);
    if (mode == REFUSE_NOW) {
        metric_inc(req_metric(route, status));
        if (method == HM_HEAD) {   /* the head of the answer alone (RFC 9110 9.3.2) */
            size_t len;
            char *b = httpd_error_body(code, message, &len);
            if (!b) return -1;
            int ret = httpd_reply_ex(wsi, status, "application/json", b, len, hname ? hdrs : NULL, 0, 1);
            free(b);
            return ret;
        }
        return httpd_error(wsi, status, code, message, hname ? hdrs : NULL, 0);
    }
    api_req *r = req_new(wsi, method, NULL);
    if (!r) return -1;
    r->rt.route = route;
    r->reading = 1;
    r->discard = 1;
    *slot = r;
    if (mode == REFUSE_LINGER) {
        metric_inc(req_metric(route, status));
        r->linger = 1;
        httpd_error(wsi, status, code, message, hname ? hdrs : NULL, 1);
        httpd_linger(wsi, 2);
        return 0;
    }
    /* answered when the body is in (api_body_done) */
    r->t0 = mono_ns();
    if (hname) {
        snprintf(r->hname, sizeof r->hname, "%s", hname);
        snprintf(r->hval, sizeof r->hval, "%s", hval);
    }
    r->pending_status = status;
    snprintf(r->pending_code, sizeof r->pending_code, "%s", code);
    snprintf(r->pending_msg, sizeof r->pending_msg, "%s", message);
    return 0;
}

int api_http(struct lws *wsi, const char *uri, api_req **slot)
{
    int64_t cl = httpd_content_length(wsi);
    int chunked = httpd_chunked(wsi);
    int method = httpd_method(wsi);
    /* a body is pending (read it, or linger) unless there is none */
    int mode = (cl > 0 || chunked || cl == -2) && method != HM_HEAD ? REFUSE_AFTER_BODY : REFUSE_NOW;
    if (cl > g_srv.cfg.max_frame || chunked || cl == -2) mode = REFUSE_LINGER;
    /* a client that waits for "100 Continue" sends no body to read first:
     * a refusal answers now (httpd.h) */
    int expects = httpd_expects_continue(wsi);
    if (expects && mode == REFUSE_AFTER_BODY) mode = REFUSE_LINGER;
    if (!A.keys)
        return refuse(wsi, slot, mode, AR_NONE, 404, "not_found",
                      "the server API is off (no CHAT_API_KEYS)", NULL, NULL);
    api_route rt;
    char err[160];
    int m = api_route_match(uri[4] == '/' ? uri + 5 : "", &rt, err, sizeof err);
    if (m == -1) return refuse(wsi, slot, mode, AR_NONE, 404, "not_found", "no such route", NULL, NULL);
    /* HEAD where GET is allowed: the GET, answered without its body; no
     * OPTIONS (no CORS preflight on the server API: docs/api.md) */
    if (!httpd_method_allowed(rt.allow, method)) {
        char allow[64], msg[96];
        httpd_allow_header(rt.allow, allow, sizeof allow);
        snprintf(msg, sizeof msg, "method %s not allowed; allowed: %s", httpd_method_name(method), allow);
        return refuse(wsi, slot, mode, rt.route, 405, "method_not_allowed", msg, "allow", allow);
    }
    char auth[1024];
    const char *key = NULL;
    size_t klen = 0;
    char fp[APIKEY_FP_LEN + 1];
    int n = lws_hdr_copy(wsi, auth, sizeof auth, WSI_TOKEN_HTTP_AUTHORIZATION);
    int ok = n > 0 && apikey_from_header(auth, &key, &klen) && apikeys_check(A.keys, key, klen, fp);
    memset(auth, 0, sizeof auth);   /* no copy of a key outlives the check */
    if (!ok) {
        metric_inc(A.m_auth_fail);
        LOGD(MOD, "%s %s: no valid key (401)", httpd_method_name(method), api_route_name(rt.route));
        return refuse(wsi, slot, mode, rt.route, 401, "unauthorized",
                      n <= 0 ? "missing Authorization: Bearer <key>" : "invalid key",
                      "www-authenticate", "Bearer");
    }
    if (cl == -2)
        return refuse(wsi, slot, mode, rt.route, 400, "bad_request", "malformed Content-Length", NULL, NULL);
    /* lws (4.1) does not decode a chunked request body: a body needs its
     * length up front (what every HTTP client sends for a JSON body) */
    if (chunked)
        return refuse(wsi, slot, mode, rt.route, 411, "length_required",
                      "send the body with a Content-Length (no Transfer-Encoding)", NULL, NULL);
    if (cl > g_srv.cfg.max_frame) {
        snprintf(err, sizeof err, "the body is larger than %lld bytes", (long long)g_srv.cfg.max_frame);
        return refuse(wsi, slot, mode, rt.route, 413, "too_large", err, NULL, NULL);
    }
    if (m == -2) return refuse(wsi, slot, mode, rt.route, 400, "bad_request", err, NULL, NULL);
    /* a body is parsed as JSON whatever its Content-Type (or none): curl -d
     * and urllib send application/x-www-form-urlencoded by default, and the
     * contract has no 415; a body that is not JSON is a 400 */
    api_req *r = req_new(wsi, method, &rt);
    if (!r) return refuse(wsi, slot, REFUSE_NOW, rt.route, 503, "unavailable", "out of memory", NULL, NULL);
    memcpy(r->fp, fp, sizeof fp);
    *slot = r;
    if (mode != REFUSE_NOW) {
        r->reading = 1;   /* LWS_CALLBACK_HTTP_BODY follows */
        if (expects && httpd_continue(wsi) != 0) return -1;   /* the client waits for it */
        return 0;
    }
    dispatch(r);
    return 0;
}

int api_body(struct lws *wsi, api_req **slot, const void *in, size_t len)
{
    api_req *r = *slot;
    if (!r || !r->reading) return 0;
    if (r->linger) {
        r->lingered += len;
        return r->lingered > API_LINGER_MAX ? -1 : 0;
    }
    if (r->discard) return 0;  /* within CHAT_MAX_FRAME: read, not kept */
    int a = httpd_body_add(&r->body, in, len);
    if (a == 0) return 0;
    /* more than Content-Length announced: refused, not read further */
    r->discard = r->linger = 1;
    metric_inc(req_metric(r->rt.route, a == -1 ? 413 : 503));
    char err[96];
    snprintf(err, sizeof err, "the body is larger than %lld bytes", (long long)g_srv.cfg.max_frame);
    httpd_error(wsi, a == -1 ? 413 : 503, a == -1 ? "too_large" : "unavailable",
                a == -1 ? err : "out of memory", NULL, 1);
    httpd_linger(wsi, 2);
    return 0;
}

int api_body_done(struct lws *wsi, api_req **slot)
{
    api_req *r = *slot;
    if (!r || !r->reading) return 0;
    r->reading = 0;
    if (r->linger) return -1;      /* answered; everything read: close now */
    if (r->pending_status) {
        metric_inc(req_metric(r->rt.route, r->pending_status));
        size_t len = 0;
        char *b = httpd_error_body(r->pending_code, r->pending_msg, &len);
        r->answered = 1;
        r->status = b ? r->pending_status : 500;
        r->resp = b;
        r->resp_len = len;
        lws_callback_on_writable(wsi);
        return 0;
    }
    dispatch(r);
    return 0;
}

int api_writeable(struct lws *wsi, api_req **slot)
{
    api_req *r = *slot;
    if (!r || !r->answered) return 0;
    *slot = NULL;
    r->wsi = NULL;
    const char *hdrs[] = {r->hname, r->hval, NULL};
    int ret = httpd_reply_ex(wsi, r->status, "application/json", r->resp ? r->resp : "", r->resp_len,
                             r->hname[0] ? hdrs : NULL, 0, r->method == HM_HEAD);
    req_unref(r);
    return ret;
}

void api_tick(void)
{
    uint64_t now = mono_ms();
    while (A.timed && A.timed->deadline_ms <= now) {
        api_req *r = A.timed;
        timed_unlink(r);
        publish_owner_drop(&r->pubs);  /* it completes, unanswered */
        metric_inc(A.m_timeouts);
        answer_error(r, 503, "unavailable", "not durable in time; retry with the same id");
    }
}

void api_cancel(api_req **slot)
{
    api_req *r = *slot;
    if (!r) return;
    *slot = NULL;
    timed_unlink(r);
    r->wsi = NULL;
    publish_owner_drop(&r->pubs);  /* it completes (durably), unanswered */
    if (r->wait) { ctl_cancel(r->wait); r->wait = NULL; }
    req_unref(r);
}
