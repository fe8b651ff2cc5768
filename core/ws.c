/* ws: see ws.h. */
#define _GNU_SOURCE
#include "ws.h"
#include "api.h"
#include "bans.h"
#include "chat.h"
#include "client_ip.h"
#include "conn.h"
#include "connlimit.h"
#include "uconns.h"
#include "http.h"
#include "httpd.h"
#include "log.h"
#include "metrics.h"
#include "srv.h"
#include "util.h"
#include "wsread.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

enum { OPQ_TICKET = 1, OPQ_CONN = 2 };

typedef struct ticket {
    int kind;               /* OPQ_TICKET */
    identity ident;
    char room[CHAT_ROOM_MAX + 1];
    int has_since;
    uint64_t since;
    char ip[CLIENT_IP_MAX];
    int slot;               /* holds a connlimit slot (ip, user) */
    char proto[128];        /* the offered subprotocol to answer when "chat" was not offered */
} ticket;

/* lws' opaque pointer is a ticket or a conn: both begin with an int tag
 * (ticket.kind, conn.tag) */

typedef struct pss { struct http_req *req; struct api_req *api; } pss;

static metric_counter *m_acc[6];
static metric_counter *m_too_big;
enum { RF_PER_IP, RF_PER_USER, RF_ORIGIN, RF_VERSION, RF_KEY, RF_N };
static metric_counter *m_refused[RF_N];

void ws_metrics_init(void)
{
    static unsigned seen;
    if (!metrics_register_due(&seen)) return;
    static const char *r[] = {"accepted", "refused_auth", "refused_policy", "bad_request", "draining",
                              "refused_banned"};
    for (int i = 0; i < 6; i++) {
        char l[48];
        snprintf(l, sizeof l, "result=\"%s\"", r[i]);
        m_acc[i] = metrics_counter("chat_connections_total", "WebSocket upgrade attempts, by outcome", l);
    }
    m_too_big = metrics_counter("chat_drops_total", NULL, "reason=\"frame_too_large\"");
    static const char *rf[RF_N] = {"per_ip", "per_user", "origin", "bad_version", "no_key"};
    for (int i = 0; i < RF_N; i++) {
        char l[48];
        snprintf(l, sizeof l, "reason=\"%s\"", rf[i]);
        m_refused[i] = metrics_counter("chat_refused_total",
                                       "Connections refused at the edge, by reason (before the upgrade; per_user_cluster: right after it)", l);
    }
}

/* Refuses an upgrade with a plain HTTP/1.1 answer (lws would answer an
 * upgrade request with HTTP/1.0, which strict WebSocket clients refuse).
 * Returns 1: "we answered" for LWS_CALLBACK_HTTP_CONFIRM_UPGRADE. */
static int refuse_h(struct lws *wsi, unsigned status, const char *text, const char *extra)
{
    static const struct { unsigned code; const char *phrase; } P[] = {
        {400, "Bad Request"}, {401, "Unauthorized"}, {403, "Forbidden"},
        {404, "Not Found"}, {426, "Upgrade Required"}, {429, "Too Many Requests"},
        {503, "Service Unavailable"}};
    const char *phrase = "Error";
    for (size_t i = 0; i < sizeof P / sizeof P[0]; i++)
        if (P[i].code == status) phrase = P[i].phrase;
    unsigned char buf[LWS_PRE + 1024];
    char *p = (char *)buf + LWS_PRE;
    size_t tl = strlen(text);
    int n = snprintf(p, 1024, "HTTP/1.1 %u %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     "content-length: %zu\r\nconnection: close\r\ncache-control: no-store\r\n%s\r\n%s\n",
                     status, phrase, tl + 1, extra ? extra : "", text);
    if (n < 0 || n >= 1024) return -1;
    if (lws_write(wsi, (unsigned char *)p, (size_t)n, LWS_WRITE_HTTP_FINAL) < 0) return -1;
    return 1;
}

static int refuse(struct lws *wsi, unsigned status, const char *text)
{
    return refuse_h(wsi, status, text, NULL);
}

/* The client's address (client_ip.h): peer, or X-Forwarded-For from a
 * trusted proxy. */
static void client_ip_of(struct lws *wsi, char out[CLIENT_IP_MAX])
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    ip_net peer;
    memset(&peer, 0, sizeof peer);
    if (getpeername(lws_get_socket_fd(wsi), (struct sockaddr *)&ss, &sl) == 0) {
        char t[CLIENT_IP_MAX];
        const void *a = ss.ss_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                                                 : (const void *)&((struct sockaddr_in *)&ss)->sin_addr;
        if (inet_ntop(ss.ss_family, a, t, sizeof t)) ip_parse(t, strlen(t), &peer);
    }
    if (!peer.family) { snprintf(out, CLIENT_IP_MAX, "unknown"); return; }
    char xff[2048];
    int n = lws_hdr_copy(wsi, xff, sizeof xff, WSI_TOKEN_X_FORWARDED_FOR);
    client_ip_resolve(&peer, n > 0 ? xff : NULL, out);
}

/* CHAT_ALLOWED_ORIGINS: comma-separated exact origins ("https://a.b",
 * compared case-insensitively), a pattern "https://" "*" ".example.com"
 * (any subdomain of example.com, not example.com itself) or "*". */
static int origin_allowed(const char *list, const char *origin)
{
    size_t ol = strlen(origin);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        size_t l = (size_t)(e - p);
        while (l && p[l - 1] == ' ') l--;
        const char *star = memchr(p, '*', l);
        if (l == 1 && *p == '*') return 1;
        if (!star) {
            if (l == ol && strncasecmp(p, origin, l) == 0) return 1;
        } else {
            /* scheme + star + .suffix: origin = scheme, label(s), .suffix */
            size_t pre = (size_t)(star - p), suf = l - pre - 1;
            if (suf >= 2 && star[1] == '.' && ol > pre + suf && strncasecmp(p, origin, pre) == 0 &&
                strncasecmp(star + 1, origin + ol - suf, suf) == 0 &&
                !memchr(origin + pre, '/', ol - suf - pre))
                return 1;
        }
        p = e;
    }
    return 0;
}

/* A user banned from the room (or every room) by the server API: 403
 * before the upgrade, on every node (bans.h). 1 when refused (t freed). */
static int ban_gate(struct lws *wsi, ticket *t)
{
    const ban *b = bans_match(t->ident.user, t->room, now_ms());
    if (!b) return 0;
    char text[BAN_REASON_MAX + 16];
    snprintf(text, sizeof text, "banned%s%s", b->reason[0] ? ": " : "", b->reason);
    LOGD("ws", "upgrade of user %s to %s refused: banned", t->ident.user, t->room);
    identity_clear(&t->ident);
    free(t);
    metric_inc(m_acc[5]);
    int r = refuse(wsi, 403, text);
    return r < 0 ? -1 : 1;
}

/* ---- subprotocols (Sec-WebSocket-Protocol) ----------------------------
 * lws binds an upgrade to the first offered name that is one of its
 * protocols' names and drops the connection, with no HTTP answer, when none
 * is (or when its tokenizer refuses the list). chatd speaks one protocol
 * whatever the client calls it (protocol.md: the subprotocol is optional),
 * so: with "chat" offered lws selects "chat" as before; else the upgrade is
 * bound to a second protocol entry whose name (g_alias) is set here to the
 * first name as lws tokenizes the list, the name is blanked in
 * LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION so lws writes no header of its
 * own, and LWS_CALLBACK_ADD_HEADERS answers the client's first offered name
 * exactly as sent (a browser fails a 101 that selects none of its names).
 * One lws service thread: the gate, the binding and the 101 run in one
 * call, nothing can interleave. */

#define WS_PROTO_LIST_MAX 126   /* the longest list lws takes (its 128-byte buffer, less 2) */
#define WS_PROTO_NAME_MAX 63    /* and each name into 64 bytes */
/* the flags of lws' own pass over the list (roles/ws/server-ws.c) */
#define WS_PROTO_TOKENIZE (LWS_TOKENIZE_F_COMMA_SEP_LIST | LWS_TOKENIZE_F_MINUS_NONTERM | \
                           LWS_TOKENIZE_F_DOT_NONTERM | LWS_TOKENIZE_F_RFC7230_DELIMS)

static char g_alias[WS_PROTO_NAME_MAX + 1];

/* 0: nothing to do (no list, or "chat" offered); 1: alias set, *answer is
 * the name to select; -1: a list lws would refuse (answer 400). */
static int subprotocol_pick(struct lws *wsi, char *answer, size_t alen)
{
    g_alias[0] = 0;
    answer[0] = 0;
    int total = lws_hdr_total_length(wsi, WSI_TOKEN_PROTOCOL);
    if (total <= 0) return 0;
    if (total > WS_PROTO_LIST_MAX) return -1;
    char buf[WS_PROTO_LIST_MAX + 1], name[WS_PROTO_NAME_MAX + 1], first[WS_PROTO_NAME_MAX + 1] = "";
    int n = lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_PROTOCOL);
    if (n <= 0) return -1;
    struct lws_tokenize ts;
    lws_tokenize_init(&ts, buf, WS_PROTO_TOKENIZE);
    ts.len = (size_t)n;
    lws_tokenize_elem e;
    int odd = 0;             /* an element lws cannot read came after the first */
    do {
        e = lws_tokenize(&ts);
        /* an element lws cannot read as a name (a number such as 2 or 1.0,
         * a name over 63 bytes) first: no alias can be bound (-1). After
         * the first: harmless once the alias is bound, since lws stops at
         * its first match (the first element); but then a later "chat" may
         * not be reached by lws either, so the alias is bound instead */
        if (e == LWS_TOKZE_TOKEN) {
            if (lws_tokenize_cstr(&ts, name, sizeof name)) {
                if (!first[0]) return -1;
                odd = 1;
                continue;
            }
            if (!strcmp(name, "chat")) {
                if (!odd) return 0;
                break;
            }
            if (!first[0]) snprintf(first, sizeof first, "%s", name);
        } else if (e != LWS_TOKZE_DELIMITER && e != LWS_TOKZE_ENDED) {
            if (!first[0]) return -1;
            odd = 1;
            if (e < 0) break;
        }
    } while (e > 0);
    if (!first[0]) return -1;
    /* the name to answer: the first list element as sent (RFC 6455: a
     * token; the same as lws' first token unless lws split it) */
    const char *p = buf, *end = buf + n;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    const char *q = p;
    while (q < end && *q != ',') q++;
    while (q > p && (q[-1] == ' ' || q[-1] == '\t')) q--;
    size_t l = (size_t)(q - p);
    if (!l || l >= alen) return -1;
    for (size_t i = 0; i < l; i++)
        if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f) return -1;
    memcpy(answer, p, l);
    answer[l] = 0;
    snprintf(g_alias, sizeof g_alias, "%s", first);
    return 1;
}

static int upgrade_gate(struct lws *wsi)
{
    char uri[1024];
    ws_metrics_init();
    if (g_srv.draining) {
        metric_inc(m_acc[4]);
        return refuse(wsi, 503, "draining");
    }
    /* RFC 6455 4.2.1/4.4: version 13 only (426 names it), a key is required */
    char ver[16];
    if (lws_hdr_copy(wsi, ver, sizeof ver, WSI_TOKEN_VERSION) <= 0 || strcmp(ver, "13") != 0) {
        metric_inc(m_refused[RF_VERSION]);
        return refuse_h(wsi, 426, "unsupported Sec-WebSocket-Version (13 only)", "sec-websocket-version: 13\r\n");
    }
    if (lws_hdr_total_length(wsi, WSI_TOKEN_KEY) <= 0) {
        metric_inc(m_refused[RF_KEY]);
        return refuse(wsi, 400, "missing Sec-WebSocket-Key");
    }
    char proto[sizeof ((ticket *)0)->proto];
    if (subprotocol_pick(wsi, proto, sizeof proto) < 0) {
        metric_inc(m_acc[3]);
        return refuse(wsi, 400, "unsupported Sec-WebSocket-Protocol list");
    }
    char ip[CLIENT_IP_MAX];
    client_ip_of(wsi, ip);
    if (g_srv.cfg.allowed_origins) {
        char origin[512];
        int ol = lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN);
        /* no Origin: not a browser (tokens, not cookies, authenticate) */
        if (ol > 0 && !origin_allowed(g_srv.cfg.allowed_origins, origin)) {
            metric_inc(m_refused[RF_ORIGIN]);
            LOGD("ws", "upgrade from %s refused: origin not allowed", ip);
            return refuse(wsi, 403, "origin not allowed");
        }
    }
    int n = lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
    if (n < 4 || strncmp(uri, "/ws/", 4) != 0) {
        metric_inc(m_acc[3]);
        return refuse(wsi, 404, "not found");
    }
    const char *room = uri + 4;
    if (!room_name_valid(room, strlen(room))) {
        metric_inc(m_acc[3]);
        return refuse(wsi, 400, "invalid room name");
    }
    char tok[AUTH_TOKEN_MAX + 1], reason[192], since[32];
    int got = httpd_arg(wsi, "token", tok, sizeof tok);
    if (got == HTTPD_ARG_NOMEM) return refuse(wsi, 503, "out of memory");   /* not the client's fault */
    if (got < 0) {  /* there, but longer than any token auth_verify takes */
        metric_inc(m_acc[1]);
        return refuse_h(wsi, 401, "token too long",
                        "www-authenticate: Bearer realm=\"chatd\", error=\"invalid_token\"\r\n");
    }
    if (!got || !tok[0]) {
        metric_inc(m_acc[1]);
        return refuse_h(wsi, 401, "missing token", "www-authenticate: Bearer realm=\"chatd\"\r\n");
    }
    ticket *t = calloc(1, sizeof *t);
    if (!t) return -1;
    t->kind = OPQ_TICKET;
    snprintf(t->room, sizeof t->room, "%s", room);
    memcpy(t->proto, proto, sizeof t->proto);
    if (auth_verify(g_srv.auth, tok, (int64_t)(now_ms() / 1000), &t->ident, reason, sizeof reason) < 0) {
        free(t);
        metric_inc(m_acc[1]);
        return refuse_h(wsi, 401, reason, "www-authenticate: Bearer realm=\"chatd\", error=\"invalid_token\"\r\n");
    }
    if (httpd_arg(wsi, "since", since, sizeof since)) {
        uint64_t v = 0;
        if (http_parse_since(since, &v) < 0) {
            identity_clear(&t->ident);
            free(t);
            metric_inc(m_acc[3]);
            return refuse(wsi, 400, "since must be a seq: an integer from 0 to 9223372036854775807");
        }
        t->has_since = 1;
        t->since = v;
    }
    int banned = ban_gate(wsi, t);
    if (banned) return banned;
    script_ctx x = {t->ident.user, t->ident.name, t->ident.claims_json, t->room, g_srv.cfg.node_id, now_ms(), "ws"};
    script_result res;
    memset(&res, 0, sizeof res);
    script_verdict v = script_on_connect(g_srv.script, &x, &res);
    if (v != SCRIPT_REJECT) {
        script_result_clear(&res);
        v = script_on_join(g_srv.script, &x, &res);
    }
    if (v == SCRIPT_REJECT) {
        char b[300];
        snprintf(b, sizeof b, "%s", res.reason[0] ? res.reason : "refused by policy");
        script_result_clear(&res);
        identity_clear(&t->ident);
        free(t);
        metric_inc(m_acc[2]);
        return refuse(wsi, 403, b);
    }
    script_result_clear(&res);
    limit_result lr = connlimit_acquire(ip, t->ident.user);
    if (lr != LIMIT_OK) {
        const char *why = lr == LIMIT_IP ? "too many connections from this address"
                        : lr == LIMIT_USER ? "too many connections for this user" : "out of memory";
        if (lr != LIMIT_OOM) metric_inc(m_refused[lr == LIMIT_IP ? RF_PER_IP : RF_PER_USER]);
        LOGD("ws", "upgrade from %s user %s refused: %s", ip, t->ident.user, why);
        identity_clear(&t->ident);
        free(t);
        return refuse(wsi, lr == LIMIT_OOM ? 503 : 429, why);
    }
    snprintf(t->ip, sizeof t->ip, "%s", ip);
    t->slot = 1;
    lws_set_opaque_user_data(wsi, t);
    return 0;
}

static void opaque_free(struct lws *wsi)
{
    int *kind = lws_get_opaque_user_data(wsi);
    if (!kind) return;
    if (*kind == OPQ_TICKET) {
        ticket *t = (ticket *)kind;
        if (t->slot) {
            connlimit_release(t->ip, t->ident.user);
            uconns_changed(t->ident.user);
        }
        identity_clear(&t->ident);
        free(t);
    } else if (*kind == OPQ_CONN) {
        conn *c = (conn *)kind;
        lws_set_opaque_user_data(wsi, NULL);
        conn_mark_closed(c);
        wsread_detach(c);
        connlimit_release(c->ip, c->ident.user);
        uconns_changed(c->ident.user);   /* this node's count, across nodes */
        chat_conn_closed(c);
    }
    lws_set_opaque_user_data(wsi, NULL);
}

static conn *conn_of(struct lws *wsi)
{
    int *kind = lws_get_opaque_user_data(wsi);
    return kind && *kind == OPQ_CONN ? (conn *)kind : NULL;
}

/* Frames lws parsed itself: only those a client sent before it read our
 * 101 (RFC 6455 4.1 says it must wait), already in lws' buffer when the
 * connection was attached to wsread. Same assembly and limit. */
static int on_receive(struct lws *wsi, conn *c, const void *in, size_t len)
{
    size_t remaining = lws_remaining_packet_payload(wsi);
    if (c->rx_len + len + remaining > (size_t)g_srv.cfg.max_frame) {
        metric_inc(m_too_big);
        LOGI("ws", "conn %llu user %s: frame over %lld bytes, closing 1009",
             (unsigned long long)c->id, c->ident.user, (long long)g_srv.cfg.max_frame);
        conn_fail(c, 1009, "message too big");
        return 0;
    }
    int final = lws_is_final_fragment(wsi) && remaining == 0;
    return wsread_data(c, in, len, final, lws_frame_is_binary(wsi));
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    pss *ps = user;
    switch (reason) {
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return upgrade_gate(wsi);

    /* bound to the alias (see subprotocol_pick): no header from lws ... */
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        g_alias[0] = 0;
        return 0;

    /* ... ours instead, naming what the client offered */
    case LWS_CALLBACK_ADD_HEADERS: {
        int *kind = lws_get_opaque_user_data(wsi);
        if (!kind || *kind != OPQ_TICKET || !((ticket *)kind)->proto[0]) return 0;
        struct lws_process_html_args *a = in;
        const char *name = ((ticket *)kind)->proto;
        int w = snprintf(a->p, (size_t)(a->max_len > 0 ? a->max_len : 0), "Sec-WebSocket-Protocol: %s\r\n", name);
        if (w < 0 || w >= a->max_len) return 1;
        a->p += w;
        a->max_len -= w;
        return 0;
    }

    case LWS_CALLBACK_ESTABLISHED: {
        int *kind = lws_get_opaque_user_data(wsi);
        if (!kind || *kind != OPQ_TICKET) return -1;
        ticket *t = (ticket *)kind;
        conn *c = conn_new(wsi, &t->ident, t->room, t->ip);   /* the slot moves to the conn */
        if (!c) return -1;
        c->has_since = t->has_since;
        c->since = t->since;
        outq_init(&c->q, (uint32_t)g_srv.cfg.max_queue, (size_t)g_srv.cfg.max_queue_bytes);
        free(t);
        c->tag = OPQ_CONN;
        lws_set_opaque_user_data(wsi, c);
        if (wsread_attach(c) < 0) return -1;    /* CLOSED frees it */
        metric_inc(m_acc[0]);
        /* the handshake deadline is over: an open WebSocket has no timeout */
        lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0);
        LOGD("ws", "conn %llu user %s from %s joined %s", (unsigned long long)c->id, c->ident.user, c->ip,
             c->url_room);
        chat_conn_open(c);
        return 0;
    }

    case LWS_CALLBACK_RECEIVE: {
        conn *c = conn_of(wsi);
        if (!c) return -1;
        if (conn_is_closing(c)) return 0;   /* closing: the peer's frames are moot */
        return on_receive(wsi, c, in, len);
    }

    case LWS_CALLBACK_SERVER_WRITEABLE: {
        conn *c = conn_of(wsi);
        if (!c) return -1;
        return conn_on_writeable(c);
    }

    case LWS_CALLBACK_CLOSED:
        opaque_free(wsi);
        return 0;

    case LWS_CALLBACK_HTTP:
        if (ps && api_is_api_uri((const char *)in)) return api_http(wsi, (const char *)in, &ps->api);
        return http_handle(wsi, (const char *)in, ps ? &ps->req : NULL);

    /* request bodies: only the server API reads them (http.c refuses
     * methods with bodies and closes) */
    case LWS_CALLBACK_HTTP_BODY:
        return ps && ps->api ? api_body(wsi, &ps->api, in, len) : 0;

    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return ps && ps->api ? api_body_done(wsi, &ps->api) : 0;

    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (ps && ps->api) return api_writeable(wsi, &ps->api);
        return ps ? http_writeable(wsi, &ps->req) : 0;

    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (ps) { http_cancel(&ps->req); api_cancel(&ps->api); }
        return 0;

    case LWS_CALLBACK_WSI_DESTROY:
        if (ps) { http_cancel(&ps->req); api_cancel(&ps->api); }
        opaque_free(wsi);
        return 0;

    default:
        return 0;
    }
}

const struct lws_protocols ws_protocols[] = {
    /* rx_buffer_size: lws allocates it per connection at the upgrade and keeps
     * it, but reads into it only the frames a client sent before it read our
     * 101 (wsread.c reads everything after); those come in pieces of this
     * size and are assembled in on_receive. 128 instead of 1024: -0.9 KiB of
     * RSS per connection (docs/cost.md section 4).
     * tx_packet_size: the most one send() of an HTTP answer may carry (0
     * would clamp it to rx_buffer_size: a 413's body cut at 128 bytes when
     * the socket closes after it); WebSocket output does not go through lws */
    {"chat", callback, sizeof(pss), 128, 0, NULL, 32768},
    /* the same protocol under the name a client offered (subprotocol_pick) */
    {g_alias, callback, sizeof(pss), 128, 0, NULL, 32768},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};
