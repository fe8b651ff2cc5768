/* script_policy: the shape of a policy, between C and Lua (script_int.h).
 * Owns: what policy.lua must return (a table of hooks, M.selftest,
 * M.config: its types, the positive-integer keys the core reads, CHAT_<KEY>
 * env overrides, the numeric snapshot script_setting reads without Lua),
 * the ctx and arguments each hook is called with, and the reading of a
 * hook's return values into a verdict (accept, refuse with a code and a
 * reason, replace the body; on_retention's days), with the throttled log
 * of a policy's errors. No state of its own. */
#define _GNU_SOURCE
#include "script_int.h"
#include "config.h"
#include "log.h"
#include "util.h"
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const HOOK_NAMES[H_N] = {
    "on_connect", "on_join", "on_leave", "on_message",
    "on_typing", "on_presence", "on_history", "on_disconnect",
    "on_read", "on_retention", "on_edit", "on_delete", "on_react"};
const int HOOK_NOTIFY[H_N] = {0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0};

/* Config keys the core reads: must be positive integers. */
static const char *const INT_KEYS[] = {
    "max_body", "heartbeat_ms", "presence_ttl_ms", "typing_ttl_ms", "max_rooms_per_conn",
    "hook_budget_ms", "memory_limit_mb", NULL};

void script_env_name(char *out, size_t cap, const char *key)
{
    size_t o = (size_t)snprintf(out, cap, "CHAT_");
    for (const char *p = key; *p && o + 1 < cap; p++) {
        char c = *p;
        if (c >= 'a' && c <= 'z') c = (char)(c - 'a' + 'A');
        else if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) c = '_';
        out[o++] = c;
    }
    out[o] = 0;
}

int script_parse_num(const char *s, double *out)
{
    char *end;
    if (!s || !*s) return -1;
    double v = strtod(s, &end);
    while (*end == ' ' || *end == '\t') end++;
    if (*end) return -1;
    *out = v;
    return 0;
}

void script_log_error(script_host *h, const char *what, const char *msg)
{
    uint64_t sec = mono_ns() / 1000000000ull;
    if (sec != h->log_sec) {
        if (h->log_dropped)
            log_msg(LOG_WARN, "script", "%u more script errors not logged", h->log_dropped);
        h->log_sec = sec;
        h->log_n = h->log_dropped = 0;
    }
    if (h->log_n++ < 10) log_msg(LOG_WARN, "script", "%s: %s", what, msg);
    else h->log_dropped++;
}

static void sanitize_code(char *dst, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        char c = s[i];
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_') dst[o++] = c;
        else if (c >= 'A' && c <= 'Z') dst[o++] = (char)(c - 'A' + 'a');
    }
    dst[o] = 0;
}

void script_set_reject(script_result *res, const char *code, const char *reason)
{
    res->verdict = SCRIPT_REJECT;
    snprintf(res->code, sizeof res->code, "%s", code);
    snprintf(res->reason, sizeof res->reason, "%s", reason);
}

/* ---------- policy.lua and M.config (OP_LOAD, OP_SELFTEST) ---------- */

static int is_int_key(const char *k)
{
    for (int i = 0; INT_KEYS[i]; i++)
        if (strcmp(INT_KEYS[i], k) == 0) return 1;
    return 0;
}

void script_load_policy(lua_State *L, lstate *s)
{
    lua_pushcfunction(L, script_require);
    lua_pushliteral(L, "policy");
    lua_call(L, 1, 1);
    if (!lua_istable(L, -1))
        luaL_error(L, "policy.lua: must return a table (got %s)", luaL_typename(L, -1));
    int M = lua_gettop(L);
    for (int i = 0; i < H_N; i++) {
        lua_getfield(L, M, HOOK_NAMES[i]);
        int t = lua_type(L, -1);
        if (t != LUA_TNIL && t != LUA_TFUNCTION)
            luaL_error(L, "policy.lua: M.%s must be a function (got %s)", HOOK_NAMES[i], lua_typename(L, t));
        s->has_hook[i] = (t == LUA_TFUNCTION);
        lua_pop(L, 1);
    }
    lua_getfield(L, M, "selftest");
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
        luaL_error(L, "policy.lua: M.selftest must be a function (got %s)", luaL_typename(L, -1));
    lua_pop(L, 1);

    lua_getfield(L, M, "config");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, M, "config");
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "policy.lua: M.config must be a table (got %s)", luaL_typename(L, -1));
    int CF = lua_gettop(L);
    size_t nkeys = 0;
    lua_pushnil(L);
    while (lua_next(L, CF)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "policy.lua: M.config keys must be strings (got %s)", luaL_typename(L, -2));
        const char *k = lua_tostring(L, -2);
        int t = lua_type(L, -1);
        if (t != LUA_TNUMBER && t != LUA_TSTRING && t != LUA_TBOOLEAN)
            luaL_error(L, "policy.lua: config.%s is a %s (number, string or boolean expected)",
                       k, lua_typename(L, t));
        char en[96];
        script_env_name(en, sizeof en, k);
        const char *ev = getenv(en);
        if (ev) {                                   /* env override, same type */
            lua_pushvalue(L, -2);
            if (t == LUA_TNUMBER) {
                double v;
                if (script_parse_num(ev, &v) != 0) luaL_error(L, "%s=\"%s\": not a number", en, ev);
                lua_pushnumber(L, v);
            } else if (t == LUA_TBOOLEAN) {
                int b = -1;
                if (!strcmp(ev, "1") || !strcmp(ev, "true") || !strcmp(ev, "yes") || !strcmp(ev, "on")) b = 1;
                if (!strcmp(ev, "0") || !strcmp(ev, "false") || !strcmp(ev, "no") || !strcmp(ev, "off")) b = 0;
                if (b < 0) luaL_error(L, "%s=\"%s\": not a boolean", en, ev);
                lua_pushboolean(L, b);
            } else {
                lua_pushstring(L, ev);
            }
            lua_rawset(L, CF);
            lua_pushvalue(L, -2);
            lua_rawget(L, CF);
            lua_replace(L, -2);
            t = lua_type(L, -1);
        }
        if (strcmp(k, "history_days") == 0 &&
            (t != LUA_TNUMBER || !(lua_tonumber(L, -1) >= 0) || lua_tonumber(L, -1) >= 1e9))
            luaL_error(L, "policy.lua: config.history_days must be a number of days >= 0 (0 keeps forever)");
        if (strcmp(k, "read_receipts") == 0 && t != LUA_TBOOLEAN)
            luaL_error(L, "policy.lua: config.read_receipts must be true or false");
        if (strcmp(k, "admin_role") == 0 && t == LUA_TSTRING) {
            free(s->admin_role);
            s->admin_role = strdup(lua_tostring(L, -1));
            if (!s->admin_role) luaL_error(L, "out of memory");
        }
        if (is_int_key(k)) {
            double v = lua_tonumber(L, -1);
            /* at most 2^31-1: the core keeps presence_ttl_ms in 32 bits (a larger
             * TTL wrapped: 4294967297 ms became 1 ms) */
            if (t != LUA_TNUMBER || v != (double)(int64_t)v || v <= 0 || v > CONFIG_INT_MAX)
                luaL_error(L, "policy.lua: config.%s must be a positive integer (at most %d)", k,
                           CONFIG_INT_MAX);
        }
        if (t == LUA_TNUMBER || t == LUA_TBOOLEAN) nkeys++;
        lua_pop(L, 1);
    }
    /* numeric snapshot for script_setting() (no Lua on that path) */
    cfg_num *cfg = calloc(nkeys ? nkeys : 1, sizeof *cfg);
    if (!cfg) luaL_error(L, "out of memory");
    s->cfg = cfg;
    s->ncfg = 0;
    lua_pushnil(L);
    while (lua_next(L, CF) && s->ncfg < nkeys) {
        int t = lua_type(L, -1);
        if (t == LUA_TNUMBER || t == LUA_TBOOLEAN) {
            char *k = strdup(lua_tostring(L, -2));
            if (!k) luaL_error(L, "out of memory");
            cfg[s->ncfg].key = k;
            cfg[s->ncfg].v = t == LUA_TNUMBER ? lua_tonumber(L, -1) : lua_toboolean(L, -1);
            s->ncfg++;
        }
        lua_pop(L, 1);
    }
    lua_pushlightuserdata(L, &REG_POLICY);
    lua_pushvalue(L, M);
    lua_rawset(L, LUA_REGISTRYINDEX);
}

void script_selftest(lua_State *L)
{
    lua_pushlightuserdata(L, &REG_POLICY);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "selftest");
    if (!lua_isfunction(L, -1)) return;
    lua_call(L, 0, 2);
    if (lua_type(L, -2) == LUA_TBOOLEAN && lua_toboolean(L, -2)) return;
    const char *why = lua_tostring(L, -1);
    luaL_error(L, "policy.lua: selftest failed: %s", why ? why : "did not return true");
}

/* ---------- a hook's call and its return (OP_HOOK) ---------- */

/* Every call gets a fresh ctx table (a policy may keep or change it), but
 * its claims are decoded on first read: most hooks (the default
 * on_message) never look at them, and decoding them costs a JSON parse and
 * a table per call. The claims JSON of a ctx waits in a weak-keyed table
 * (REG_CLAIMS: ctx -> JSON text; false once read or written, so that a
 * policy setting ctx.claims, read first or not, reads what it set); the ctx metatable's __index
 * decodes it (chat.json.decode; {} when there are none or they are not an
 * object) and stores it in the ctx. The metatable is protected
 * (__metatable = false). The strings every call uses (field names, the
 * sources, the node id) are kept alive in REG_PINNED, so that pushing them
 * never allocates after a garbage collection. */
static int ctx_index(lua_State *L)
{
    size_t kl;
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &kl) : NULL;
    if (!k || kl != 6 || memcmp(k, "claims", 6) != 0) return 0;
    lua_pushlightuserdata(L, &REG_CLAIMS);
    lua_rawget(L, LUA_REGISTRYINDEX);          /* 3: pending */
    lua_pushvalue(L, 1);
    lua_rawget(L, 3);                          /* 4: JSON text, false (read) or nil (none) */
    if (lua_type(L, 4) == LUA_TBOOLEAN) return 0;
    int decoded = 0;
    if (lua_type(L, 4) == LUA_TSTRING) {
        lua_pushlightuserdata(L, &REG_JSON);
        lua_rawget(L, LUA_REGISTRYINDEX);
        lua_getfield(L, -1, "decode");
        lua_remove(L, -2);
        lua_pushvalue(L, 4);
        lua_call(L, 1, 1);
        decoded = lua_istable(L, -1);
        if (!decoded) lua_pop(L, 1);
    }
    if (!decoded) lua_newtable(L);
    lua_pushvalue(L, 1);                       /* pending[ctx] = false */
    lua_pushboolean(L, 0);
    lua_rawset(L, 3);
    lua_pushvalue(L, -1);
    lua_setfield(L, 1, "claims");              /* via ctx_newindex: a raw set */
    return 1;
}

/* A write to a key the ctx does not hold yet. Writing claims before reading
 * them replaces them for good: the pending JSON is dropped (else a later
 * read would decode the originals again). */
static int ctx_newindex(lua_State *L)
{
    size_t kl;
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &kl) : NULL;
    if (k && kl == 6 && memcmp(k, "claims", 6) == 0) {
        lua_pushlightuserdata(L, &REG_CLAIMS);
        lua_rawget(L, LUA_REGISTRYINDEX);
        lua_pushvalue(L, 1);
        lua_pushboolean(L, 0);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 0;
}

static const char *const PINNED[] = {"user", "name", "room", "node", "source", "now", "claims",
                                     "body", "id", "ws", "http", "api", "event", "seq", "target",
                                     "author", "emoji", "on", NULL};

void script_open_policy(lua_State *L, const char *node)
{
    lua_pushlightuserdata(L, &REG_CTXMT);
    script_push_guard_mt(L, ctx_index, ctx_newindex);
    lua_rawset(L, LUA_REGISTRYINDEX);

    lua_pushlightuserdata(L, &REG_CLAIMS);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);

    lua_pushlightuserdata(L, &REG_PINNED);
    lua_newtable(L);
    int i;
    for (i = 0; PINNED[i]; i++) {
        lua_pushstring(L, PINNED[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushstring(L, node ? node : "");
    lua_rawseti(L, -2, i + 1);
    lua_rawset(L, LUA_REGISTRYINDEX);
}

static void set_str(lua_State *L, const char *k, const char *v, size_t n)
{
    if (!v) return;
    lua_pushlstring(L, v, n);
    lua_setfield(L, -2, k);
}

int script_push_hook(lua_State *L, const call_spec *cs)
{
    lua_pushlightuserdata(L, &REG_POLICY);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, HOOK_NAMES[cs->hook]);
    if (!lua_isfunction(L, -1)) return 0;
    const script_ctx *c = cs->ctx;
    if (cs->hook == H_RETENTION) {   /* on_retention(room, ctx) */
        if (c && c->room) lua_pushstring(L, c->room);
        else lua_pushnil(L);
    }
    lua_createtable(L, 0, 7);
    int ctx = lua_gettop(L);
    if (c) {
        if (c->user) set_str(L, "user", c->user, strlen(c->user));
        if (c->name) set_str(L, "name", c->name, strlen(c->name));
        if (c->room) set_str(L, "room", c->room, strlen(c->room));
        if (c->node) set_str(L, "node", c->node, strlen(c->node));
        if (c->source) set_str(L, "source", c->source, strlen(c->source));
        lua_pushnumber(L, (double)c->now_ms);
        lua_setfield(L, -2, "now");
    }
    if (c && c->claims_json && *c->claims_json) {   /* decoded on first read */
        lua_pushlightuserdata(L, &REG_CLAIMS);
        lua_rawget(L, LUA_REGISTRYINDEX);
        lua_pushvalue(L, ctx);
        lua_pushstring(L, c->claims_json);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
    lua_pushlightuserdata(L, &REG_CTXMT);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_setmetatable(L, ctx);
    int nargs = cs->hook == H_RETENTION ? 2 : 1;
    if (cs->hook == H_MESSAGE) {
        lua_createtable(L, 0, 2);
        set_str(L, "body", cs->a1 ? cs->a1 : "", cs->a1 ? cs->a1len : 0);
        set_str(L, "id", cs->a2, cs->a2len);
        nargs = 2;
    } else if (cs->hook == H_PRESENCE) {
        lua_createtable(L, 0, 3);
        set_str(L, "event", cs->a1, cs->a1len);
        set_str(L, "user", cs->a2, cs->a2len);
        set_str(L, "name", cs->a3, cs->a3len);
        nargs = 2;
    } else if (cs->hook == H_READ) {
        lua_createtable(L, 0, 1);
        lua_pushnumber(L, (double)cs->num);
        lua_setfield(L, -2, "seq");
        nargs = 2;
    } else if (cs->upd) {
        /* message updates: { target, author, id, body (edit), emoji, on (react) } */
        const script_update *u = cs->upd;
        lua_createtable(L, 0, 6);
        lua_pushnumber(L, (double)u->target);
        lua_setfield(L, -2, "target");
        if (u->author) set_str(L, "author", u->author, strlen(u->author));
        if (u->id) set_str(L, "id", u->id, strlen(u->id));
        if (cs->hook == H_EDIT) set_str(L, "body", cs->a1 ? cs->a1 : "", cs->a1 ? cs->a1len : 0);
        if (cs->hook == H_REACT) {
            if (u->emoji) set_str(L, "emoji", u->emoji, strlen(u->emoji));
            lua_pushboolean(L, u->on);
            lua_setfield(L, -2, "on");
        }
        nargs = 2;
    }
    lua_call(L, nargs, 3);
    return 3;
}

/* The values a hook returned (stack 2..4) as a verdict in *res. */
int script_read_result(script_host *h, lua_State *L, const call_spec *cs, script_result *res)
{
    int rc = 0;
    if (cs->hook == H_RETENTION) {
        /* a query: nil (the config's history_days) or days >= 0 */
        int t1 = lua_type(L, 2);
        double d = t1 == LUA_TNUMBER ? lua_tonumber(L, 2) : 0;
        if (t1 == LUA_TNIL) {
            res->verdict = SCRIPT_ACCEPT;
        } else if (t1 == LUA_TNUMBER && d >= 0 && d < 1e9) {
            res->verdict = SCRIPT_ACCEPT;
            res->has_number = 1;
            res->number = d;
        } else {
            char m[128];
            if (t1 == LUA_TNUMBER) snprintf(m, sizeof m, "returned %g (days >= 0 or nil expected)", d);
            else snprintf(m, sizeof m, "returned a %s (days >= 0 or nil expected)", lua_typename(L, t1));
            metric_inc(h->m_err[cs->hook]);
            script_log_error(h, HOOK_NAMES[cs->hook], m);
            script_set_reject(res, "script_error", "policy script failed");
            rc = -1;
        }
    } else {
        int t1 = lua_type(L, 2);
        if (t1 == LUA_TNIL || (t1 == LUA_TBOOLEAN && lua_toboolean(L, 2))) {
            res->verdict = SCRIPT_ACCEPT;
        } else if (t1 == LUA_TBOOLEAN) {
            size_t n = 0;
            const char *code = lua_type(L, 3) == LUA_TSTRING ? lua_tolstring(L, 3, &n) : NULL;
            sanitize_code(res->code, sizeof res->code, code ? code : "", n);
            if (!res->code[0]) snprintf(res->code, sizeof res->code, "rejected");
            const char *why = lua_type(L, 4) == LUA_TSTRING ? lua_tolstring(L, 4, &n) : NULL;
            if (why) script_copy_line(res->reason, sizeof res->reason, why, n);
            else snprintf(res->reason, sizeof res->reason, "refused by policy");
            res->verdict = SCRIPT_REJECT;
        } else if (t1 == LUA_TSTRING && (cs->hook == H_MESSAGE || cs->hook == H_EDIT)) {
            size_t n;
            const char *b = lua_tolstring(L, 2, &n);
            if (n == cs->a1len && (n == 0 || memcmp(b, cs->a1, n) == 0)) {
                res->verdict = SCRIPT_ACCEPT;
            } else if (!utf8_valid(b, n)) {
                /* it would be broadcast and stored as the message: a NUL or
                 * a byte string cut mid-character (body:sub(1, n)) is neither
                 * WebSocket text nor Postgres text */
                metric_inc(h->m_err[cs->hook]);
                script_log_error(h, HOOK_NAMES[cs->hook],
                                 "returned a body that is not UTF-8 text (NUL or ill-formed UTF-8)");
                script_set_reject(res, "script_error", "policy script failed");
            } else if ((res->body = malloc(n + 1))) {
                memcpy(res->body, b, n);
                res->body[n] = 0;
                res->body_len = n;
                res->verdict = SCRIPT_REPLACE;
            } else {
                script_set_reject(res, "script_error", "out of memory");
            }
        } else if (!HOOK_NOTIFY[cs->hook]) {
            char m[128];
            snprintf(m, sizeof m, cs->hook == H_MESSAGE || cs->hook == H_EDIT
                                      ? "returned a %s (nil, true, false or a string expected)"
                                                        : "returned a %s (nil, true or false expected)",
                     lua_typename(L, t1));
            metric_inc(h->m_err[cs->hook]);
            script_log_error(h, HOOK_NAMES[cs->hook], m);
            script_set_reject(res, "script_error", "policy script failed");
        }
    }
    return rc;
}
