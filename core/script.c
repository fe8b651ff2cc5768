/* script: see script.h. The LuaJIT policy host.
 * Owns: the live policy state (lstate) and the reload/swap (a candidate
 * state is built, loaded and selftested before it replaces the live one; a
 * state left bloated by a memory trip is rebuilt), the one call path into
 * Lua, the per-call budgets' setup, the hooks' C entry points and their
 * metrics. The Lua environment (allocator, budget hook, sandbox, module
 * loader, chat.* API) is script_sandbox.c; the policy's shape (policy.lua's
 * table, M.config, the ctx a hook gets and the verdict its return makes)
 * is script_policy.c (script_int.h: the calls run script.c -> policy ->
 * sandbox).
 *
 * Budgets. The JIT compiler is switched off for the policy state
 * (luaJIT_setmode ENGINE|OFF), so the interpreter runs every instruction and
 * the count hook (every HOOK_COUNT instructions) really fires; it checks the
 * wall-clock deadline and the memory in use. Memory is capped by the state's
 * allocator (the GC64 build accepts lua_newstate with our allocator); when
 * lua_newstate refuses (non-GC64 x86_64 builds) the state is made by
 * luaL_newstate and the cap is checked with LUA_GCCOUNT in the hook and after
 * each call. Once a budget trips, the hook fires on every instruction and
 * the sandbox's pcall/xpcall re-raise, so a script cannot swallow it.
 *
 * Exactly one function enters Lua: script_call() (besides keep_fns, run
 * once under lua_cpcall when a state is made, which keeps the two C
 * functions below in the registry). It runs a C trampoline under lua_pcall
 * (with a traceback handler); the trampoline does the state setup, the
 * load, the selftest or a hook call, so even building ctx tables is
 * protected. */
#define _GNU_SOURCE
#include "script.h"
#include "script_int.h"
#include "log.h"
#include "util.h"
#include <lauxlib.h>
#include <lualib.h>
#include <luajit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOAD_BUDGET_NS (2000ull * 1000000ull)   /* load + selftest */
#define DEFAULT_BUDGET_MS 50
#define DEFAULT_MEMORY_MB 64
#define RL_MAX_KEYS 100000

static const double SCRIPT_BUCKETS[] = {
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1};

/* Runs inside lua_pcall (see script_call). */
static int trampoline(lua_State *L)
{
    const call_spec *cs = lua_touserdata(L, 1);
    script_host *h = g_running;
    lua_settop(L, 0);
    h->in->enforce = 1;
    switch (cs->op) {
    case OP_INIT:
        script_open_sandbox(L);
        script_open_policy(L, h->node);
        return 0;
    case OP_LOAD: script_load_policy(L, h->in); return 0;
    case OP_SELFTEST: script_selftest(L); return 0;
    default: return script_push_hook(L, cs);
    }
}

/* ---------- the one call path into Lua ---------- */

/* Returns 0 when the Lua side completed, -1 on error (err gets "file:line:
 * message"). For OP_HOOK, res gets the verdict. */
static int script_call(script_host *h, lstate *s, const call_spec *cs, script_result *res,
                       char *err, size_t errlen)
{
    lua_State *L = s->L;
    script_host *prev = g_running;
    lstate *prev_in = h->in;
    g_running = h;
    h->in = s;
    h->op = cs->op;
    h->hook = cs->op == OP_HOOK ? cs->hook : -1;
    h->ctx = cs->ctx;
    h->mask = cs->op == OP_LOAD ? P_LOAD : cs->op == OP_SELFTEST ? P_SELFTEST
            : cs->op == OP_HOOK ? P_HOOK(cs->hook) : 0;
    h->tripped = TRIP_NONE;
    uint64_t t0 = mono_ns();
    h->deadline_ns = t0 + (cs->op == OP_HOOK ? s->budget_ns : LOAD_BUDGET_NS);
    lua_settop(L, 0);
    /* the two C functions were made once (keep_fns): pushing a C function
     * makes a new closure, two allocations per call */
    lua_pushlightuserdata(L, &REG_MSGH);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_pushlightuserdata(L, &REG_TRAMP);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_pushlightuserdata(L, (void *)cs);
    /* the count hook stays installed between calls (lua_sethook rewrites
     * LuaJIT's dispatch table: too slow to do twice per call); it is reset
     * only after a trip switched it to every instruction */
    int st = lua_pcall(L, 1, cs->op == OP_HOOK ? 3 : 0, 1);
    if (h->tripped) script_arm_hook(s);
    s->enforce = 0;
    int tripped = h->tripped;
    uint64_t dt = mono_ns() - t0;
    int rc = 0;

    if (st != 0) {
        size_t ml = 0;
        const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &ml) : NULL;
        if (!m) { m = "not enough memory"; ml = strlen(m); }
        if (st == LUA_ERRMEM || tripped == TRIP_MEM) {
            m = "memory limit exceeded";
            ml = strlen(m);
        }
        char line[512];
        script_copy_line(line, sizeof line, m, ml);
        if (err) snprintf(err, errlen, "%s", line);
        const char *what = cs->op == OP_HOOK ? HOOK_NAMES[cs->hook]
                         : cs->op == OP_LOAD ? "load" : cs->op == OP_SELFTEST ? "selftest" : "init";
        if (cs->op == OP_HOOK) {
            metric_inc(h->m_err[cs->hook]);
            /* full traceback in the log, one line per frame joined */
            char tb[2048];
            size_t o = 0;
            for (size_t i = 0; i < ml && o + 1 < sizeof tb; i++)
                tb[o++] = (m[i] == '\n') ? ' ' : (m[i] == '\t' ? ' ' : m[i]);
            tb[o] = 0;
            script_log_error(h, what, tb);
            if (res && !HOOK_NOTIFY[cs->hook])
                script_set_reject(res, "script_error", tripped == TRIP_TIME ? "policy script too slow"
                                              : "policy script failed");
        }
        rc = -1;
    } else if (cs->op == OP_HOOK && res) {
        rc = script_read_result(h, L, cs, res);
    }
    lua_settop(L, 0);
    if (cs->op == OP_HOOK) {
        metric_observe(h->m_dur[cs->hook], (double)dt / 1e9);
        /* after a memory trip (or when the state grew close to its cap)
         * collect; if it stays bloated, have the caller rebuild it */
        if (s->limit && (tripped == TRIP_MEM || script_mem_used(s) > s->limit / 4 * 3)) {
            lua_gc(L, LUA_GCCOLLECT, 0);
            if (script_mem_used(s) > s->limit / 4 * 3) s->broken = 1;
        }
        metric_set(h->m_mem, (double)script_mem_used(s));
    }
    h->in = prev_in;
    h->ctx = NULL;
    h->mask = 0;
    h->hook = -1;
    h->tripped = TRIP_NONE;
    g_running = prev;
    return rc;
}

/* ---------- states, reload ---------- */

static void lstate_free(lstate *s)
{
    if (!s) return;
    if (s->L) lua_close(s->L);
    for (size_t i = 0; i < s->ncfg; i++) free(s->cfg[i].key);
    free(s->cfg);
    free(s->admin_role);
    free(s);
}

static int cfg_get(const lstate *s, const char *key, double *v)
{
    for (size_t i = 0; s && i < s->ncfg; i++)
        if (strcmp(s->cfg[i].key, key) == 0) { *v = s->cfg[i].v; return 1; }
    return 0;
}

/* Under lua_cpcall when a state is made: script_call's handler and
 * trampoline, kept in the registry. */
static int keep_fns(lua_State *L)
{
    lua_pushlightuserdata(L, &REG_MSGH);
    lua_pushcfunction(L, script_msgh);
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_pushlightuserdata(L, &REG_TRAMP);
    lua_pushcfunction(L, trampoline);
    lua_rawset(L, LUA_REGISTRYINDEX);
    return 0;
}

static lstate *lstate_build(script_host *h, char *err, size_t errlen)
{
    lstate *s = calloc(1, sizeof *s);
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    s->h = h;
    double mb = DEFAULT_MEMORY_MB, v;
    if (h->cur && cfg_get(h->cur, "memory_limit_mb", &v)) mb = v;
    if (script_parse_num(getenv("CHAT_MEMORY_LIMIT_MB"), &v) == 0 && v > 0) mb = v;
    s->limit = (size_t)(mb * 1048576.0);
    s->budget_ns = (uint64_t)DEFAULT_BUDGET_MS * 1000000u;
    /* CHATD_TEST_GCCOUNT forces the fallback path (for tests) */
    s->L = getenv("CHATD_TEST_GCCOUNT") ? NULL : lua_newstate(script_alloc, s);
    if (!s->L) {                          /* non-GC64 x86_64: no custom allocator */
        s->gccount_mode = 1;
        s->L = luaL_newstate();
    }
    if (!s->L) { free(s); snprintf(err, errlen, "cannot create a Lua state"); return NULL; }
    lua_atpanic(s->L, script_at_panic);
    luaJIT_setmode(s->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    script_arm_hook(s);
    call_spec cs = {.op = OP_INIT, .hook = -1};
    char e[512];
    if (lua_cpcall(s->L, keep_fns, NULL) != 0) {
        snprintf(err, errlen, "sandbox setup: out of memory");
        lstate_free(s);
        return NULL;
    }
    if (script_call(h, s, &cs, NULL, e, sizeof e) != 0) {
        snprintf(err, errlen, "sandbox setup: %s", e);
        lstate_free(s);
        return NULL;
    }
    cs.op = OP_LOAD;
    if (script_call(h, s, &cs, NULL, err, errlen) != 0) { lstate_free(s); return NULL; }
    cs.op = OP_SELFTEST;
    if (script_call(h, s, &cs, NULL, err, errlen) != 0) { lstate_free(s); return NULL; }
    if (cfg_get(s, "hook_budget_ms", &v)) s->budget_ns = (uint64_t)(v * 1e6);
    if (cfg_get(s, "memory_limit_mb", &v)) {
        size_t lim = (size_t)(v * 1048576.0);
        lua_gc(s->L, LUA_GCCOLLECT, 0);
        if (script_mem_used(s) > lim / 2) {
            snprintf(err, errlen, "policy.lua: memory_limit_mb=%g is too small (the policy uses %zu KiB)",
                     v, script_mem_used(s) >> 10);
            lstate_free(s);
            return NULL;
        }
        s->limit = lim;
    }
    return s;
}

static char *dup_or(const char *s, const char *dflt)
{
    return strdup(s ? s : dflt);
}

script_host *script_new(const char *dir, const char *node_id, char *err, size_t errlen)
{
    script_host *h = calloc(1, sizeof *h);
    if (!h) { snprintf(err, errlen, "out of memory"); return NULL; }
    h->dir = dup_or(dir, "scripts");
    h->node = dup_or(node_id, "");
    h->rl = rl_new(RL_MAX_KEYS);
    h->hook = -1;
    if (!h->dir || !h->node || !h->rl) {
        snprintf(err, errlen, "out of memory");
        script_free(h);
        return NULL;
    }
    for (int i = 0; i < H_N; i++) {
        char lab[64];
        snprintf(lab, sizeof lab, "hook=\"%s\"", HOOK_NAMES[i]);
        h->m_dur[i] = metrics_histogram("chat_script_hook_duration_seconds",
                                        "Time spent in one policy hook call", lab, SCRIPT_BUCKETS,
                                        (int)(sizeof SCRIPT_BUCKETS / sizeof SCRIPT_BUCKETS[0]));
        h->m_err[i] = metrics_counter("chat_script_errors_total",
                                      "Policy hook calls that raised an error or blew a budget", lab);
    }
    h->m_reload_ok = metrics_counter("chat_script_reloads_total", "Policy reloads by result",
                                     "result=\"ok\"");
    h->m_reload_err = metrics_counter("chat_script_reloads_total", NULL, "result=\"error\"");
    h->m_rebuilds = metrics_counter("chat_script_rebuilds_total",
                                    "Policy states rebuilt after a memory-limit trip", NULL);
    h->m_mem = metrics_gauge("chat_script_memory_bytes", "Memory used by the policy Lua state", NULL);
    h->cur = lstate_build(h, err, errlen);
    if (!h->cur) {
        log_msg(LOG_ERROR, "script", "loading %s failed: %s", h->dir, err);
        script_free(h);
        return NULL;
    }
    h->version = 1;
    metric_set(h->m_mem, (double)script_mem_used(h->cur));
    log_msg(LOG_INFO, "script", "policy loaded from %s (version 1)", h->dir);
    return h;
}

void script_free(script_host *h)
{
    if (!h) return;
    lstate_free(h->cur);
    rl_free(h->rl);
    free(h->dir);
    free(h->node);
    free(h);
}

int script_reload(script_host *h, char *err, size_t errlen)
{
    char e[512];
    lstate *n = lstate_build(h, e, sizeof e);
    if (!n) {
        if (err) snprintf(err, errlen, "%s", e);
        metric_inc(h->m_reload_err);
        log_msg(LOG_ERROR, "script", "reload of %s failed, keeping version %llu: %s", h->dir,
                (unsigned long long)h->version, e);
        return -1;
    }
    lstate *old = h->cur;
    h->cur = n;
    h->version++;
    lstate_free(old);
    metric_set(h->m_mem, (double)script_mem_used(n));
    metric_inc(h->m_reload_ok);
    log_msg(LOG_INFO, "script", "policy reloaded from %s (version %llu)", h->dir,
            (unsigned long long)h->version);
    return 0;
}

uint64_t script_version(const script_host *h) { return h ? h->version : 0; }

int64_t script_setting(const script_host *h, const char *key, int64_t dflt)
{
    double v;
    if (h && cfg_get(h->cur, key, &v)) return (int64_t)v;
    char en[96];
    script_env_name(en, sizeof en, key);
    if (script_parse_num(getenv(en), &v) == 0) return (int64_t)v;
    return dflt;
}

double script_setting_num(const script_host *h, const char *key, double dflt)
{
    double v;
    if (h && cfg_get(h->cur, key, &v)) return v;
    char en[96];
    script_env_name(en, sizeof en, key);
    if (script_parse_num(getenv(en), &v) == 0) return v;
    return dflt;
}

int script_has_hook(const script_host *h, const char *hook)
{
    if (!h || !h->cur || !hook) return 0;
    for (int i = 0; i < H_N; i++)
        if (strcmp(HOOK_NAMES[i], hook) == 0) return h->cur->has_hook[i];
    return 0;
}

const char *script_admin_role(const script_host *h)
{
    if (h && h->cur && h->cur->admin_role) return h->cur->admin_role;
    /* a policy without config.admin_role: the environment's, as for a key it declares */
    char en[64];
    script_env_name(en, sizeof en, "admin_role");
    const char *ev = getenv(en);
    return ev && *ev ? ev : SCRIPT_ADMIN_ROLE;
}

void script_result_clear(script_result *res)
{
    if (!res) return;
    free(res->body);
    memset(res, 0, sizeof *res);
}

const char *script_reject_code(const script_result *res)
{
    if (!res->code[0] || strcmp(res->code, "script_error") == 0) return "rejected";
    return res->code;
}

/* A state left bloated by a memory trip is replaced by a fresh one. */
static void rebuild_if_broken(script_host *h)
{
    if (!h->cur->broken) return;
    char e[512];
    lstate *n = lstate_build(h, e, sizeof e);
    metric_inc(h->m_rebuilds);
    if (!n) {
        log_msg(LOG_ERROR, "script", "rebuild after memory trip failed, keeping the old state: %s", e);
        h->cur->broken = 0;
        return;
    }
    lstate_free(h->cur);
    h->cur = n;
    h->version++;
    metric_set(h->m_mem, (double)script_mem_used(n));
    log_msg(LOG_WARN, "script", "policy state rebuilt after a memory trip (version %llu)",
            (unsigned long long)h->version);
}

/* The one hook runner: num is on_read's seq, upd the message update of
 * on_edit / on_delete / on_react (NULL otherwise). */
static script_verdict run_hook_full(script_host *h, int hook, const script_ctx *c, const char *a1,
                                    size_t a1len, const char *a2, const char *a3, uint64_t num,
                                    const script_update *upd, script_result *res)
{
    script_result tmp;
    if (!res) res = &tmp;
    memset(res, 0, sizeof *res);
    res->verdict = SCRIPT_ACCEPT;
    if (!h || !h->cur || !h->cur->has_hook[hook]) return SCRIPT_ACCEPT;
    if (g_running) {   /* re-entry from inside a script call: refuse, never nest */
        if (!HOOK_NOTIFY[hook]) script_set_reject(res, "script_error", "policy busy");
        return res->verdict;
    }
    call_spec cs = {.op = OP_HOOK, .hook = hook, .ctx = c,
                    .a1 = a1, .a1len = a1len,
                    .a2 = a2, .a2len = a2 ? strlen(a2) : 0,
                    .a3 = a3, .a3len = a3 ? strlen(a3) : 0, .num = num, .upd = upd};
    script_call(h, h->cur, &cs, res, NULL, 0);
    rebuild_if_broken(h);
    script_verdict v = res->verdict;
    if (res == &tmp) script_result_clear(&tmp);
    return v;
}

static script_verdict run_hook_n(script_host *h, int hook, const script_ctx *c, const char *a1,
                                 size_t a1len, const char *a2, const char *a3, uint64_t num,
                                 script_result *res)
{
    return run_hook_full(h, hook, c, a1, a1len, a2, a3, num, NULL, res);
}

static script_verdict run_hook_upd(script_host *h, int hook, const script_ctx *c, const char *a1,
                                   size_t a1len, const char *a2, const char *a3,
                                   const script_update *upd, script_result *res)
{
    return run_hook_full(h, hook, c, a1, a1len, a2, a3, 0, upd, res);
}

static script_verdict run_hook(script_host *h, int hook, const script_ctx *c, const char *a1,
                               size_t a1len, const char *a2, const char *a3, script_result *res)
{
    return run_hook_n(h, hook, c, a1, a1len, a2, a3, 0, res);
}

script_verdict script_on_connect(script_host *h, const script_ctx *c, script_result *res)
{
    return run_hook(h, H_CONNECT, c, NULL, 0, NULL, NULL, res);
}

script_verdict script_on_join(script_host *h, const script_ctx *c, script_result *res)
{
    return run_hook(h, H_JOIN, c, NULL, 0, NULL, NULL, res);
}

void script_on_leave(script_host *h, const script_ctx *c)
{
    run_hook(h, H_LEAVE, c, NULL, 0, NULL, NULL, NULL);
}

script_verdict script_on_message(script_host *h, const script_ctx *c, const char *body,
                                 size_t body_len, const char *id, script_result *res)
{
    return run_hook(h, H_MESSAGE, c, body ? body : "", body ? body_len : 0, id, NULL, res);
}

script_verdict script_on_typing(script_host *h, const script_ctx *c, script_result *res)
{
    return run_hook(h, H_TYPING, c, NULL, 0, NULL, NULL, res);
}

script_verdict script_on_presence(script_host *h, const script_ctx *c, const char *event,
                                  const char *user, const char *name, script_result *res)
{
    return run_hook(h, H_PRESENCE, c, event, event ? strlen(event) : 0, user, name, res);
}

script_verdict script_on_history(script_host *h, const script_ctx *c, script_result *res)
{
    return run_hook(h, H_HISTORY, c, NULL, 0, NULL, NULL, res);
}

void script_on_disconnect(script_host *h, const script_ctx *c)
{
    run_hook(h, H_DISCONNECT, c, NULL, 0, NULL, NULL, NULL);
}

/* ---- read state and retention (issue 14) ---- */

script_verdict script_on_read(script_host *h, const script_ctx *c, uint64_t seq, script_result *res)
{
    return run_hook_n(h, H_READ, c, NULL, 0, NULL, NULL, seq, res);
}

int script_on_retention(script_host *h, const script_ctx *c, double *days)
{
    script_result res;
    script_verdict v = run_hook_n(h, H_RETENTION, c, NULL, 0, NULL, NULL, 0, &res);
    int r = v == SCRIPT_REJECT ? -1 : res.has_number ? 1 : 0;
    if (r == 1 && days) *days = res.number;
    script_result_clear(&res);
    return r;
}

/* ---- message updates (v2) ---- */

script_verdict script_on_edit(script_host *h, const script_ctx *c, const script_update *u,
                              script_result *res)
{
    return run_hook_upd(h, H_EDIT, c, u->body ? u->body : "", u->body ? u->body_len : 0, NULL,
                        NULL, u, res);
}

script_verdict script_on_delete(script_host *h, const script_ctx *c, const script_update *u,
                                script_result *res)
{
    return run_hook_upd(h, H_DELETE, c, NULL, 0, NULL, NULL, u, res);
}

script_verdict script_on_react(script_host *h, const script_ctx *c, const script_update *u,
                               script_result *res)
{
    return run_hook_upd(h, H_REACT, c, NULL, 0, NULL, NULL, u, res);
}
