/* http: see http.h. */
#define _GNU_SOURCE
#include "http.h"
#include "bans.h"
#include "chat.h"
#include "httpd.h"
#include "wire.h"
#include "log.h"
#include "metrics.h"
#include "readstate.h"
#include "srv.h"
#include "util.h"
#include <inttypes.h>
#include <uv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct http_req {
    struct lws *wsi;        /* NULL once the connection went away or was answered */
    int done;
    int waiting;            /* the store's / presence's callback has not come yet */
    uv_timer_t *deadline;   /* answers 503 when that callback is late (req_wait) */
    const char *late;       /* ... with this error */
    unsigned status;
    char *body;
    size_t len;
    char room[CHAT_ROOM_MAX + 1];
    int limit;
    int head;               /* a HEAD request: the answer has no body */
} http_req;

static metric_counter *m_http[6];

static void metrics_once(void)
{
    static unsigned seen;
    if (!metrics_register_due(&seen)) return;
    static const char *codes[] = {"2xx", "3xx", "4xx", "5xx", "other", "other"};
    for (int i = 0; i < 5; i++) {
        char l[32];
        snprintf(l, sizeof l, "code=\"%s\"", codes[i]);
        m_http[i] = metrics_counter("chat_http_requests_total", "HTTP responses, by status class", l);
    }
}

/* The answer to a request (head: a HEAD, no body sent) with one more
 * header (xname NULL: none) */
static int reply_x(struct lws *wsi, int head, unsigned status, const char *ctype, const char *body,
                   size_t len, const char *xname, const char *xval)
{
    if (head) {
        /* lws' header helpers know no HEAD: the head by hand, counted there */
        const char *h[] = {"access-control-allow-origin", "*", xname, xval, NULL};
        return httpd_reply_ex(wsi, status, ctype, body, len, h, 0, 1);
    }
    metrics_once();
    metric_inc(m_http[status >= 200 && status < 600 ? status / 100 - 2 : 4]);
    unsigned char hdr[LWS_PRE + 1024], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr - 1;
    if (lws_add_http_common_headers(wsi, status, ctype, (lws_filepos_t)len, &p, end))
        return -1;
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end))
        return -1;
    /* the browser client of one node may page history / mint dev tokens on
     * another node after a failover: allow cross-origin reads (auth is by
     * bearer token, never by cookie, so this opens nothing) */
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)"access-control-allow-origin:",
                                    (const unsigned char *)"*", 1, &p, end))
        return -1;
    if (xname) {
        char hn[64];
        snprintf(hn, sizeof hn, "%s:", xname);
        if (lws_add_http_header_by_name(wsi, (const unsigned char *)hn, (const unsigned char *)xval,
                                        (int)strlen(xval), &p, end))
            return -1;
    }
    if (lws_finalize_write_http_header(wsi, start, &p, end)) return -1;
    unsigned char *b = malloc(LWS_PRE + len + 1);
    if (!b) return -1;
    memcpy(b + LWS_PRE, body, len);
    int w = lws_write(wsi, b + LWS_PRE, len, LWS_WRITE_HTTP_FINAL);
    free(b);
    if (w < 0) return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* A one-line text/plain answer (text and a newline) with one more header
 * (xname NULL: none) */
static int reply_text(struct lws *wsi, int head, unsigned status, const char *text, const char *xname,
                      const char *xval)
{
    char b[512];
    int n = snprintf(b, sizeof b, "%s\n", text);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof b) { n = (int)sizeof b - 1; b[n - 1] = '\n'; } /* cut, still one line */
    return reply_x(wsi, head, status, "text/plain; charset=utf-8", b, (size_t)n, xname, xval);
}

size_t http_error_json(char *b, size_t cap, const char *text)
{
    int n = snprintf(b, cap, "{\"error\":");
    long w = json_escape(b + n, cap - (size_t)n - 2, text, strnlen(text, 300));
    if (w < 0) w = json_escape(b + n, cap - (size_t)n - 2, "error", 5);
    n += (int)w;
    b[n++] = '}';
    return (size_t)n;
}

static int reply_json_error(struct lws *wsi, int head, unsigned status, const char *text)
{
    char b[512];
    size_t n = http_error_json(b, sizeof b, text);
    return reply_x(wsi, head, status, "application/json", b, n, NULL, NULL);
}

int http_token(struct lws *wsi, char *out, size_t outlen)
{
    /* the whole header, whatever length the head allowed: a long one of
     * another scheme is not a token, and ?token= is read after it */
    char small[AUTH_TOKEN_MAX + 64];
    int total = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION), r = 0;
    if (total > 0) {
        char *h = (size_t)total < sizeof small ? small : malloc((size_t)total + 1);
        if (!h) return HTTPD_ARG_NOMEM;
        int n = lws_hdr_copy(wsi, h, total + 1, WSI_TOKEN_HTTP_AUTHORIZATION);
        r = n > 0 ? httpd_bearer(h, (size_t)n, out, outlen) : 0;
        if (h != small) free(h);
    }
    return r ? r : httpd_arg(wsi, "token", out, outlen);
}

/* Authenticates the request; on failure answers 401 and returns -1 with
 * *ret set to the callback's return value. */
static int require_auth(struct lws *wsi, int head, identity *id, int *ret)
{
    char tok[AUTH_TOKEN_MAX + 1], reason[160];
    /* RFC 6750 3: a 401 names the scheme; 3.1: and the error of a token
     * that was sent */
    int got = http_token(wsi, tok, sizeof tok);
    if (got == HTTPD_ARG_NOMEM) {
        *ret = reply_text(wsi, head, 503, "out of memory", NULL, NULL);
        return -1;
    }
    if (got <= 0) {
        *ret = reply_text(wsi, head, 401, got < 0 ? "token too long" : "missing token", "www-authenticate",
                          got < 0 ? "Bearer realm=\"chatd\", error=\"invalid_token\"" : "Bearer realm=\"chatd\"");
        return -1;
    }
    if (auth_verify(g_srv.auth, tok, (int64_t)(now_ms() / 1000), id, reason, sizeof reason) < 0) {
        *ret = reply_text(wsi, head, 401, reason, "www-authenticate", "Bearer realm=\"chatd\", error=\"invalid_token\"");
        return -1;
    }
    return 0;
}

/* ---- async answers --------------------------------------------------- */

/* An async read answers within srv_read_deadline_ms() (5 s, at most half
 * the handshake timeout, which would close the connection with no status):
 * a stalled Postgres, or reads queued behind a stuck one on the store's
 * connection, is a 503 then, not a request left hanging. The late callback
 * still comes (store and presence own their queries) and frees what the
 * connection no longer holds. A request is freed when neither the
 * connection (wsi) nor a pending callback (waiting) holds it; its timer is
 * closed by whichever ends the wait first. */

static void req_answer(http_req *r, unsigned status, char *body, size_t len)
{
    r->status = status;
    r->body = body;
    r->len = len;
    r->done = 1;
    lws_callback_on_writable(r->wsi);
}

static void deadline_closed(uv_handle_t *h) { free(h); }

static void req_stop_deadline(http_req *r)
{
    if (!r->deadline) return;
    r->deadline->data = NULL;
    uv_close((uv_handle_t *)r->deadline, deadline_closed);
    r->deadline = NULL;
}

static void on_read_deadline(uv_timer_t *t)
{
    http_req *r = t->data;
    if (!r) return;
    req_stop_deadline(r);
    if (r->done || !r->wsi) return;
    char b[96];
    int n = snprintf(b, sizeof b, "{\"error\":\"%s\"}", r->late);
    LOGW("http", "%s: 503", r->late);
    req_answer(r, 503, strdup(b), (size_t)n);
}

/* Before the async call: the callback is awaited, within the deadline. */
static void req_wait(http_req *r, const char *late)
{
    r->waiting = 1;
    r->late = late;
    uint64_t ms = srv_read_deadline_ms();
    uv_timer_t *t = malloc(sizeof *t);
    if (!t) return;             /* no deadline: the answer comes when it comes */
    uv_timer_init(g_srv.loop, t);
    t->data = r;
    uv_timer_start(t, on_read_deadline, ms, 0);
    r->deadline = t;
}

/* The async call refused at once: nothing awaited, the caller answers. */
static void req_abandon(http_req *r)
{
    req_stop_deadline(r);
    free(r);
}

static void req_finish(http_req *r, unsigned status, char *body, size_t len)
{
    r->waiting = 0;
    req_stop_deadline(r);
    if (!r->wsi || r->done) {   /* gone, or answered 503 at the deadline */
        free(body);
        if (!r->wsi) free(r);
        return;
    }
    req_answer(r, status, body, len);
}

/* A history message in its current state (message updates, v2): the
 * message tail's fields (meta after body, as in the frame), then "edited_ts" when edited, "deleted":true with
 * no body when deleted, else "reactions" ({"emoji":count}, {} when none:
 * protocol.md lists it with the current state, a client may index it). */
static size_t http_message_state(char *b, size_t cap, const store_row *m)
{
    size_t o = 0;
    if (m->client_id) {
        memcpy(b, "\"id\":", 5); o = 5;
        o += (size_t)json_escape(b + o, cap - o, m->client_id, strlen(m->client_id));
        b[o++] = ',';
    }
    memcpy(b + o, "\"user\":", 7); o += 7;
    o += (size_t)json_escape(b + o, cap - o, m->user, strlen(m->user));
    memcpy(b + o, ",\"name\":", 8); o += 8;
    o += (size_t)json_escape(b + o, cap - o, m->name, strlen(m->name));
    if (m->deleted) {
        o += (size_t)snprintf(b + o, cap - o, ",\"deleted\":true");
    } else {
        memcpy(b + o, ",\"body\":", 8); o += 8;
        o += (size_t)json_escape(b + o, cap - o, m->body, m->body_len);
        if (m->meta && m->meta_len + 8 < cap - o) {  /* server API meta, as stored */
            memcpy(b + o, ",\"meta\":", 8); o += 8;
            memcpy(b + o, m->meta, m->meta_len); o += m->meta_len;
        }
        if (m->edited_ts) o += (size_t)snprintf(b + o, cap - o, ",\"edited_ts\":%" PRIu64, m->edited_ts);
        o += (size_t)snprintf(b + o, cap - o, ",\"reactions\":%s", m->reactions ? m->reactions : "{}");
    }
    o += (size_t)snprintf(b + o, cap - o, ",\"ts\":%" PRIu64 "}", m->ts);
    return o;
}

static void on_history_rows(void *ud, int status, const store_row *rows, size_t n)
{
    http_req *r = ud;
    if (status < 0) {
        const char *e = "{\"error\":\"history store unavailable\"}";
        req_finish(r, 503, strdup(e), strlen(e));
        return;
    }
    /* we asked for limit+1 newest rows: one more than the page means older
     * messages exist, and the page starts after the extra one */
    size_t first = n > (size_t)r->limit ? n - (size_t)r->limit : 0;
    size_t cap = 64;
    for (size_t i = first; i < n; i++)
        cap += 6 * (rows[i].body_len + strlen(rows[i].user) + strlen(rows[i].name) +
                    (rows[i].client_id ? strlen(rows[i].client_id) : 0)) + 300 + rows[i].meta_len +
               (rows[i].reactions ? strlen(rows[i].reactions) : 0);
    char *b = malloc(cap);
    if (!b) { req_finish(r, 503, NULL, 0); return; }
    size_t o = (size_t)snprintf(b, cap, "{\"messages\":[");
    for (size_t i = first; i < n; i++) {
        o += (size_t)snprintf(b + o, cap - o, "%s{\"type\":\"message\",\"room\":\"%s\",\"seq\":%" PRIu64 ",",
                              i > first ? "," : "", r->room, rows[i].seq);
        o += http_message_state(b + o, cap - o, &rows[i]);
    }
    if (first > 0 && n > first)
        o += (size_t)snprintf(b + o, cap - o, "],\"next_cursor\":\"c%" PRIx64 "\"}", rows[first].seq);
    else
        o += (size_t)snprintf(b + o, cap - o, "],\"next_cursor\":null}");
    req_finish(r, 200, b, o);
}

static void on_presence_users(void *ud, int status, const presence_user *u, size_t n)
{
    http_req *r = ud;
    if (status < 0) {
        const char *e = "{\"error\":\"presence unavailable\"}";
        req_finish(r, 503, strdup(e), strlen(e));
        return;
    }
    char prefix[128];
    snprintf(prefix, sizeof prefix, "{\"room\":\"%s\",", r->room);
    size_t len;
    char *b = wire_users_json(prefix, u, n, &len);
    if (!b) { req_finish(r, 503, NULL, 0); return; }
    req_finish(r, 200, b, len);
}

int http_writeable(struct lws *wsi, http_req **slot)
{
    http_req *r = *slot;
    if (!r || !r->done) return 0;
    *slot = NULL;
    int ret = r->body ? reply_x(wsi, r->head, r->status, "application/json", r->body, r->len, NULL, NULL)
                      : reply_text(wsi, r->head, 503, "out of memory", NULL, NULL);
    free(r->body);
    r->body = NULL;
    r->wsi = NULL;
    if (!r->waiting) free(r);   /* else the late callback frees it */
    return ret;
}

void http_cancel(http_req **slot)
{
    http_req *r = *slot;
    if (!r) return;
    *slot = NULL;
    req_stop_deadline(r);
    free(r->body);
    r->body = NULL;
    r->wsi = NULL;
    if (!r->waiting) free(r);   /* else the pending callback frees it */
}

/* ---- request parsing (pure, see http.h) ----------------------------- */

int http_parse_room_path(const char *rest, char *room, http_room_route *route)
{
    const char *slash = strchr(rest, '/');
    if (!slash) return 404;
    const char *what = slash + 1;
    if (strcmp(what, "messages") == 0) *route = HTTP_ROOM_MESSAGES;
    else if (strcmp(what, "presence") == 0) *route = HTTP_ROOM_PRESENCE;
    else return 404;
    size_t rl = (size_t)(slash - rest);
    if (!room_name_valid(rest, rl)) return 400;
    memcpy(room, rest, rl);
    room[rl] = 0;
    return 0;
}

int http_parse_cursor(const char *s, uint64_t *seq)
{
    if (s[0] != 'c' || !s[1] || strlen(s) > 17) return -1;
    uint64_t v = 0;
    for (const char *p = s + 1; *p; p++) {
        int d;
        if (*p >= '0' && *p <= '9') d = *p - '0';
        else if (*p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
        else return -1;
        v = v * 16 + (uint64_t)d;
    }
    if (v < 1 || v > SEQ_MAX) return -1;
    *seq = v;
    return 0;
}

int http_parse_limit(const char *s, int *limit)
{
    int v = 0;
    if (!s[0]) return -1;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
        if (v > 200) return -1;
    }
    if (v < 1) return -1;
    *limit = v;
    return 0;
}

int http_parse_since(const char *s, uint64_t *since)
{
    return seq_parse(s, strlen(s), since);
}

/* ---- routes ---------------------------------------------------------- */

static int route_room(struct lws *wsi, int head, const char *rest, http_req **slot)
{
    /* rest = "{room}/messages" or "{room}/presence" */
    char room[CHAT_ROOM_MAX + 1];
    http_room_route route;
    int st = http_parse_room_path(rest, room, &route);
    if (st == 404) return reply_text(wsi, head, 404, "not found", NULL, NULL);
    if (st != 0) return reply_json_error(wsi, head, 400, "invalid room name");
    int is_pres = route == HTTP_ROOM_PRESENCE;
    identity id;
    int ret;
    if (require_auth(wsi, head, &id, &ret) < 0) return ret;
    /* a user the server API banned from the room (or every room) reads
     * neither its history nor its presence: 403 as at the upgrade (ws.c) */
    const ban *b = bans_match(id.user, room, now_ms());
    if (b) {
        char text[BAN_REASON_MAX + 16];
        snprintf(text, sizeof text, "banned%s%s", b->reason[0] ? ": " : "", b->reason);
        identity_clear(&id);
        return reply_json_error(wsi, head, 403, text);
    }
    http_req *r = calloc(1, sizeof *r);
    if (!r) { identity_clear(&id); return reply_text(wsi, head, 503, "out of memory", NULL, NULL); }
    memcpy(r->room, room, strlen(room) + 1);
    r->wsi = wsi;
    r->head = head;
    script_ctx x = {id.user, id.name, id.claims_json, r->room, g_srv.cfg.node_id, now_ms(), "http"};
    script_result res;
    memset(&res, 0, sizeof res);
    script_verdict v = script_on_history(g_srv.script, &x, &res);
    identity_clear(&id);
    if (v == SCRIPT_REJECT) {
        free(r);
        ret = reply_json_error(wsi, head, 403, res.reason[0] ? res.reason : "refused by policy");
        script_result_clear(&res);
        return ret;
    }
    script_result_clear(&res);
    if (is_pres) {
        *slot = r;
        req_wait(r, "presence unavailable (no answer in time)");
        if (presence_list(g_srv.presence, r->room, on_presence_users, r) < 0) {
            *slot = NULL;
            req_abandon(r);
            return reply_json_error(wsi, head, 503, "presence unavailable");
        }
        return 0;
    }
    char a[64];
    uint64_t before = UINT64_MAX;
    r->limit = 50;
    /* an empty before= is "no cursor" (the first page) */
    int got = httpd_arg(wsi, "before", a, sizeof a);
    if (got == HTTPD_ARG_NOMEM) {
        free(r);
        return reply_text(wsi, head, 503, "out of memory", NULL, NULL);
    }
    if (got < 0 || (got > 0 && a[0] && http_parse_cursor(a, &before) < 0)) {
        free(r);
        return reply_json_error(wsi, head, 400, "invalid cursor");
    }
    if (httpd_arg(wsi, "limit", a, sizeof a) && http_parse_limit(a, &r->limit) < 0) {
        free(r);
        return reply_json_error(wsi, head, 400, "limit must be an integer from 1 to 200");
    }
    if (!g_srv.store) {
        free(r);
        return reply_json_error(wsi, head, 503, "history is disabled: chatd runs without CHAT_DATABASE_URL");
    }
    *slot = r;
    req_wait(r, "history store unavailable (no answer in time)");
    if (store_history(g_srv.store, r->room, before, r->limit + 1, on_history_rows, r) < 0) {
        *slot = NULL;
        req_abandon(r);
        return reply_json_error(wsi, head, 503, "history store unavailable");
    }
    return 0;
}

/* ---- GET /rooms/unread: the token's user's unread counts -------------- */

static void on_unread(void *ud, int status, char *json, size_t len)
{
    http_req *r = ud;
    if (status < 0) {
        const char *e = "{\"error\":\"read state store unavailable\"}";
        req_finish(r, 503, strdup(e), strlen(e));
        return;
    }
    req_finish(r, 200, json, len);
}

static int route_unread(struct lws *wsi, int head, http_req **slot)
{
    identity id;
    int ret;
    if (require_auth(wsi, head, &id, &ret) < 0) return ret;
    if (!g_srv.store) {
        identity_clear(&id);
        return reply_json_error(wsi, head, 503, "read state is disabled: chatd runs without CHAT_DATABASE_URL");
    }
    http_req *r = calloc(1, sizeof *r);
    if (!r) { identity_clear(&id); return reply_text(wsi, head, 503, "out of memory", NULL, NULL); }
    r->wsi = wsi;
    r->head = head;
    *slot = r;
    req_wait(r, "read state store unavailable (no answer in time)");
    int rc = readstate_unread(id.user, on_unread, r);
    identity_clear(&id);
    if (rc < 0) {
        *slot = NULL;
        req_abandon(r);
        return reply_json_error(wsi, head, 503, "read state store unavailable");
    }
    return 0;
}

int http_dev_token_args(struct lws *wsi, char *name, size_t namelen, long *ttl, const char **err)
{
    char t[32];
    /* a long name= that could not be copied is our lack of memory, not a
     * name the client got wrong */
    int got = httpd_arg(wsi, "name", name, namelen);
    if (got == HTTPD_ARG_NOMEM) { *err = "out of memory"; return 503; }
    size_t nl = strlen(name);
    if (nl < 1 || nl > 32) { *err = "name must be 1-32 characters"; return 400; }
    *ttl = 3600;
    got = httpd_arg(wsi, "ttl", t, sizeof t);
    if (got == HTTPD_ARG_NOMEM) { *err = "out of memory"; return 503; }
    if (got) {
        *ttl = strtol(t, NULL, 10);
        if (*ttl < 1 || *ttl > 86400) { *err = "ttl must be 1-86400 seconds"; return 400; }
    }
    return 0;
}

static int route_dev_token(struct lws *wsi, int head)
{
    if (!g_srv.cfg.dev_tokens) return reply_text(wsi, head, 404, "not found", NULL, NULL);
    char name[128] = "";
    long t;
    const char *err;
    int st = http_dev_token_args(wsi, name, sizeof name, &t, &err);
    if (st == 503) return reply_text(wsi, head, 503, err, NULL, NULL);
    if (st) return reply_json_error(wsi, head, st, err);
    size_t nl = strlen(name);
    char sub[40];
    size_t k = 0;
    for (size_t i = 0; i < nl && k < sizeof sub - 1; i++) {
        char ch = name[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-')
            sub[k++] = ch;
        else if (ch >= 'A' && ch <= 'Z') sub[k++] = (char)(ch - 'A' + 'a');
        else sub[k++] = '_';
    }
    sub[k] = 0;
    int64_t exp = (int64_t)(now_ms() / 1000) + t;
    char *tok = auth_mint(g_srv.auth, sub, name, exp, NULL);
    if (!tok) return reply_json_error(wsi, head, 500, "cannot mint tokens (HS256 secret needed)");
    char b[4096];
    int n = snprintf(b, sizeof b, "{\"token\":\"%s\",\"user\":\"%s\",\"name\":", tok, sub);
    n += (int)json_escape(b + n, sizeof b - (size_t)n - 64, name, nl);
    n += snprintf(b + n, sizeof b - (size_t)n, ",\"exp\":%lld}", (long long)exp);
    free(tok);
    return reply_x(wsi, head, 200, "application/json", b, (size_t)n, NULL, NULL);
}

static const char *mime_of(const char *path)
{
    const char *dot = strrchr(path, '.');
    if (!dot) return "application/octet-stream";
    if (!strcmp(dot, ".html")) return "text/html; charset=utf-8";
    if (!strcmp(dot, ".js") || !strcmp(dot, ".mjs")) return "text/javascript; charset=utf-8";
    if (!strcmp(dot, ".css")) return "text/css; charset=utf-8";
    if (!strcmp(dot, ".svg")) return "image/svg+xml";
    if (!strcmp(dot, ".png")) return "image/png";
    if (!strcmp(dot, ".json")) return "application/json";
    if (!strcmp(dot, ".ico")) return "image/x-icon";
    return "application/octet-stream";
}

static int route_static(struct lws *wsi, int head, const char *uri)
{
    if (strstr(uri, "..") || strchr(uri, '\\')) return reply_text(wsi, head, 400, "bad path", NULL, NULL);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_srv.cfg.web_dir, strcmp(uri, "/") == 0 ? "index.html" : uri + 1);
    FILE *f = fopen(path, "rb");
    if (!f) return reply_text(wsi, head, 404, "not found", NULL, NULL);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (sz < 0 || sz > 8 * 1024 * 1024) { fclose(f); return reply_text(wsi, head, 404, "not found", NULL, NULL); }
    char *b = malloc((size_t)sz + 1);
    size_t got = b ? fread(b, 1, (size_t)sz, f) : 0;
    fclose(f);
    if (!b) return reply_text(wsi, head, 503, "out of memory", NULL, NULL);
    int ret = reply_x(wsi, head, 200, mime_of(path), b, got, NULL, NULL);
    free(b);
    return ret;
}

/* ---- the routes and their methods ------------------------------------- */

/* The plain routes and the methods each answers: the one place that knows
 * them (bit 1 << HM_*; HEAD wherever GET is, httpd_method_allowed).
 * http_handle judges a request's method here (405 with the Allow made from
 * it), answers OPTIONS where a route allows it and dispatches the rest.
 * OPTIONS is a CORS preflight (Fetch standard): the read routes take
 * `Authorization: Bearer`, a header that is not CORS-safelisted, so a page
 * on another origin asks first; the answer needs no token (a browser never
 * sends one on the preflight). Under /rooms/ for any path, so that the
 * actual request's 400 / 404 (which carry ACAO) reach the page instead of
 * a failed preflight. /healthz, /readyz, /metrics (probes and scrapers,
 * which never preflight), /dev/token and the static client take no
 * credentials: a browser's GET of them is a simple request, no preflight;
 * OPTIONS there stays a 405. */
enum { HR_HEALTHZ, HR_READYZ, HR_METRICS, HR_UNREAD, HR_ROOM, HR_DEV_TOKEN, HR_WS, HR_STATIC };
#define HR_GET (1u << HM_GET)
#define HR_PREFLIGHT (1u << HM_OPTIONS)
static const struct {
    const char *path;
    int prefix;                 /* path is a prefix of the request path */
    int route;
    unsigned allow;
} ROUTES[] = {
    {"/healthz", 0, HR_HEALTHZ, HR_GET},
    {"/readyz", 0, HR_READYZ, HR_GET},
    {"/metrics", 0, HR_METRICS, HR_GET},
    {"/rooms/unread", 0, HR_UNREAD, HR_GET | HR_PREFLIGHT},
    {"/rooms/", 1, HR_ROOM, HR_GET | HR_PREFLIGHT},
    {"/dev/token", 0, HR_DEV_TOKEN, HR_GET},
    {"/ws/", 1, HR_WS, HR_GET},
    {"", 1, HR_STATIC, HR_GET},          /* the browser client, or a 404 */
};

/* The row of uri (the last one matches everything) */
static size_t route_index(const char *uri)
{
    size_t i = 0;
    for (; i + 1 < sizeof ROUTES / sizeof ROUTES[0]; i++) {
        size_t l = strlen(ROUTES[i].path);
        if (ROUTES[i].prefix ? !strncmp(uri, ROUTES[i].path, l) : !strcmp(uri, ROUTES[i].path)) break;
    }
    return i;
}

unsigned http_route_methods(const char *uri)
{
    return ROUTES[route_index(uri)].allow;
}

/* The preflight's max-age: browsers cache the answer per origin and URL
 * this long (Chromium caps it at 2 h, Firefox at 24 h) */
#define HTTP_PREFLIGHT_MAX_AGE "600"

/* OPTIONS on a route that allows it: a CORS preflight (or a plain OPTIONS,
 * which gets the same answer). Allow-Methods: what the route allows besides
 * OPTIONS; Allow-Headers: Authorization, the one request header these
 * routes read (Fetch: a "*" there would not cover Authorization).
 * Constant, whatever Origin or Access-Control-Request-* asked: nothing to
 * Vary on; the browser checks its request against it. */
static int preflight(struct lws *wsi, unsigned allow, int close)
{
    char all[64], methods[64];
    httpd_allow_header(allow, all, sizeof all);
    httpd_allow_header(allow & ~(1u << HM_OPTIONS), methods, sizeof methods);
    const char *const h[] = {"allow", all,
                             "access-control-allow-origin", "*",
                             "access-control-allow-methods", methods,
                             "access-control-allow-headers", "Authorization",
                             "access-control-max-age", HTTP_PREFLIGHT_MAX_AGE,
                             NULL};
    return httpd_reply(wsi, 204, "", "", 0, h, close);
}

static int route(struct lws *wsi, int head, int r, const char *uri, http_req **slot);

int http_handle(struct lws *wsi, const char *uri, http_req **slot)
{
    int m = httpd_method(wsi);
    size_t i = route_index(uri);
    /* a request body is never read here (closed after the answer) */
    int body = httpd_content_length(wsi) != -1 || httpd_chunked(wsi);
    if (!httpd_method_allowed(ROUTES[i].allow, m)) {
        char allow[64];
        httpd_allow_header(ROUTES[i].allow, allow, sizeof allow);
        const char *const h[] = {"allow", allow, NULL};
        return httpd_reply(wsi, 405, "text/plain; charset=utf-8", "method not allowed\n", 19, h, body);
    }
    if (m == HM_OPTIONS) return preflight(wsi, ROUTES[i].allow, body);
    return route(wsi, m == HM_HEAD, ROUTES[i].route, uri, slot);
}

static int route(struct lws *wsi, int head, int r, const char *uri, http_req **slot)
{
    switch (r) {
    case HR_HEALTHZ: return reply_text(wsi, head, 200, "ok", NULL, NULL);
    case HR_READYZ: {
        if (g_srv.draining) return reply_text(wsi, head, 503, "draining", NULL, NULL);
        char why[400];
        /* the bus says what does not work: which Redis, shard and slots */
        if (!bus_health(g_srv.bus, why, sizeof why)) return reply_text(wsi, head, 503, why, NULL, NULL);
        if (g_srv.store && !store_ready(g_srv.store)) return reply_text(wsi, head, 503, "postgres unreachable", NULL, NULL);
        return reply_text(wsi, head, 200, "ready", NULL, NULL);
    }
    case HR_METRICS: {
        size_t len;
        char *m = metrics_render(&len);
        int ret = reply_x(wsi, head, 200, "text/plain; version=0.0.4; charset=utf-8", m, len, NULL, NULL);
        free(m);
        return ret;
    }
    case HR_UNREAD: return route_unread(wsi, head, slot);
    case HR_ROOM: return route_room(wsi, head, uri + 7, slot);
    case HR_DEV_TOKEN: return route_dev_token(wsi, head);
    case HR_WS: return reply_text(wsi, head, 400, "WebSocket upgrade required", NULL, NULL);
    default: return route_static(wsi, head, uri);
    }
}
