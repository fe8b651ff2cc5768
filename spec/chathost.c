/* chathost: the policy host of chatd (core/script*.c, with the ratelimit,
 * log, metrics and util modules it runs on) as a Lua C module, so the busted
 * specs exercise the code that runs in production (spec/helpers.lua wraps
 * it). Nothing here decides anything: every call goes to the script_*
 * function chatd calls, and what that returns is handed back as Lua values.
 *
 * The host makes its OWN lua_State (the sandboxed policy state, JIT off,
 * budget hook, capped allocator) exactly as in chatd. This module is not
 * linked against LuaJIT: its lua_* references bind to the interpreter that
 * loads it (Debian's luajit exports its LuaJIT), so one LuaJIT runs both
 * the spec and the policy state and no second copy is loaded.
 *
 *   chathost.new(dir, node, env)  -> host | nil, err    (script_new)
 *       env: { CHAT_X = "value" | false } set around every call into this
 *       host (false unsets), as if chatd had been started with it
 *   host:call(hook, ctx [, a1, a2, a3]) -> result, stats
 *       hook "on_connect" .. "on_disconnect"; ctx = { user, name, claims
 *       (JSON text), room, node, now (ms) }, absent fields are NULL in C;
 *       on_message: a1 = body (may hold NULs), a2 = client id;
 *       on_presence: a1 = event, a2 = user, a3 = name; on_read: a1 = the seq
 *       (decimal text); on_retention: the room is ctx.room;
 *       on_edit / on_delete / on_react: a1 = { target, author, id, body,
 *       emoji, on } (script_update).
 *       result = the script_result C gets: { verdict = "accept" | "replace"
 *       | "reject", code, reason (when set), body (replace) }; nil for the
 *       notification hooks (on_leave, on_disconnect return nothing in C);
 *       on_retention (script_on_retention): { verdict = "accept" | "reject"
 *       (the hook failed), days (when it returned a number) }.
 *       stats = { wall_ms, cpu_ms } of the call (thread CPU time).
 *   host:reload() -> version | nil, err           (script_reload)
 *   host:version() -> n                            (script_version)
 *   host:setting(key, default) -> n                (script_setting)
 *   host:setting_num(key) -> n | nil               (script_setting_num)
 *   host:close()                                   (script_free; also __gc)
 *   chathost.logs() -> { {level, module, msg, line}, ... } log records the
 *       host wrote (to stderr, captured during every call) since last asked
 *   chathost.log_level(name) -> previous level name (log_set_level)
 *   chathost.metrics() -> the Prometheus text of every series (metrics_render)
 *   chathost.watchdog(seconds): a call into the host that does not return
 *       within this (default 30 s) ends the process with a message naming
 *       it: a runaway the host fails to stop fails the run, never hangs it. */
#define _GNU_SOURCE
#include "log.h"
#include "metrics.h"
#include "script.h"
#include "util.h"
#include <lauxlib.h>
#include <lua.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HOST_MT "chathost.host"
#define ENV_MAX 64

typedef struct host_ud {
    script_host *h;
    int env_ref;        /* registry ref of the env table, or LUA_NOREF */
} host_ud;

/* ---------- stderr capture (the log) ---------- */

static FILE *cap_file;
static int cap_saved = -1;

static void capture_begin(void)
{
    fflush(stderr);
    if (!cap_file) cap_file = tmpfile();
    if (!cap_file) return;
    cap_saved = dup(2);
    if (cap_saved >= 0) dup2(fileno(cap_file), 2);
}

static void capture_end(void)
{
    fflush(stderr);
    if (cap_saved < 0) return;
    dup2(cap_saved, 2);
    close(cap_saved);
    cap_saved = -1;
}

/* ---------- watchdog ---------- */

static unsigned wd_seconds = 30;
static const char *volatile wd_what = "";

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "chathost: watchdog: the host did not return from ";
    const char *w = wd_what;
    if (cap_saved >= 0) dup2(cap_saved, 2);
    if (write(2, m, sizeof m - 1) < 0 || write(2, w, strlen(w)) < 0 || write(2, "\n", 1) < 0) _exit(1);
    _exit(1);
}

static void watchdog_arm(const char *what)
{
    static int installed;
    if (!installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        sigaction(SIGALRM, &sa, NULL);
        installed = 1;
    }
    wd_what = what;
    alarm(wd_seconds);
}

static void watchdog_disarm(void) { alarm(0); }

/* ---------- environment of one host ---------- */

typedef struct env_saved {
    int n;
    char *name[ENV_MAX];
    char *old[ENV_MAX];   /* NULL: was unset */
} env_saved;

/* Sets the variables of the env table at index idx (or none); saves the old values. */
static void env_apply(lua_State *L, int ref, env_saved *sv)
{
    sv->n = 0;
    if (ref == LUA_NOREF) return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_pushnil(L);
    while (lua_next(L, -2) && sv->n < ENV_MAX) {
        const char *k = lua_tostring(L, -2);
        const char *old = getenv(k);
        sv->name[sv->n] = strdup(k);
        sv->old[sv->n] = old ? strdup(old) : NULL;
        sv->n++;
        if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)
            setenv(k, lua_tostring(L, -1), 1);
        else
            unsetenv(k);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void env_restore(env_saved *sv)
{
    for (int i = sv->n - 1; i >= 0; i--) {
        if (sv->old[i]) setenv(sv->name[i], sv->old[i], 1);
        else unsetenv(sv->name[i]);
        free(sv->name[i]);
        free(sv->old[i]);
    }
    sv->n = 0;
}

/* Every call into the host runs between enter() and leave(). */
static void enter(lua_State *L, int env_ref, env_saved *sv, const char *what)
{
    env_apply(L, env_ref, sv);
    capture_begin();
    watchdog_arm(what);
}

static void leave(env_saved *sv)
{
    watchdog_disarm();
    capture_end();
    env_restore(sv);
}

/* ---------- host ---------- */

static host_ud *check_host(lua_State *L)
{
    host_ud *u = luaL_checkudata(L, 1, HOST_MT);
    if (!u->h) luaL_error(L, "chathost: the host is closed");
    return u;
}

static int l_new(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    const char *node = luaL_optstring(L, 2, "test-node");
    int env_ref = LUA_NOREF;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            int t = lua_type(L, -1);
            if (lua_type(L, -2) != LUA_TSTRING ||
                !(t == LUA_TSTRING || t == LUA_TNUMBER || (t == LUA_TBOOLEAN && !lua_toboolean(L, -1))))
                return luaL_error(L, "chathost.new: env maps names to strings (or false to unset)");
            lua_pop(L, 1);
        }
        lua_pushvalue(L, 3);
        env_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    char err[512] = "";
    env_saved sv;
    enter(L, env_ref, &sv, "script_new");
    script_host *h = script_new(dir, node, err, sizeof err);
    leave(&sv);
    if (!h) {
        if (env_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, env_ref);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    host_ud *u = lua_newuserdata(L, sizeof *u);
    u->h = h;
    u->env_ref = env_ref;
    luaL_getmetatable(L, HOST_MT);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_close(lua_State *L)
{
    host_ud *u = luaL_checkudata(L, 1, HOST_MT);
    if (u->h) {
        env_saved sv;
        enter(L, u->env_ref, &sv, "script_free");
        script_free(u->h);
        leave(&sv);
        u->h = NULL;
    }
    if (u->env_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, u->env_ref);
        u->env_ref = LUA_NOREF;
    }
    return 0;
}

static const char *opt_field(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, k);
    const char *s = NULL;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "chathost: ctx.%s must be a string", k);
        s = lua_tostring(L, -1);   /* stays alive: the ctx table holds it */
    }
    lua_pop(L, 1);
    return s;
}

static uint64_t cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static const char *const HOOKS[] = {
    "on_connect", "on_join", "on_leave", "on_message", "on_typing", "on_presence",
    "on_history", "on_disconnect", "on_read", "on_retention", "on_edit", "on_delete", "on_react",
    NULL};
enum { K_CONNECT, K_JOIN, K_LEAVE, K_MESSAGE, K_TYPING, K_PRESENCE, K_HISTORY, K_DISCONNECT,
       K_READ, K_RETENTION, K_EDIT, K_DELETE, K_REACT };

static int l_call(lua_State *L)
{
    host_ud *u = check_host(L);
    int hook = luaL_checkoption(L, 2, NULL, HOOKS);
    luaL_checktype(L, 3, LUA_TTABLE);
    script_ctx c = {
        .user = opt_field(L, 3, "user"),
        .name = opt_field(L, 3, "name"),
        .claims_json = opt_field(L, 3, "claims"),
        .room = opt_field(L, 3, "room"),
        .node = opt_field(L, 3, "node"),
        .source = opt_field(L, 3, "source"),
    };
    lua_getfield(L, 3, "now");
    c.now_ms = lua_isnil(L, -1) ? now_ms() : (uint64_t)luaL_checknumber(L, -1);
    lua_pop(L, 1);
    size_t a1len = 0;
    const char *a1 = NULL, *a2 = NULL, *a3 = NULL;
    script_update su;
    memset(&su, 0, sizeof su);
    if (hook >= K_EDIT) {
        /* message updates: the update as a table (strings stay alive in it) */
        luaL_checktype(L, 4, LUA_TTABLE);
        lua_getfield(L, 4, "target");
        su.target = (uint64_t)luaL_optnumber(L, -1, 1);
        lua_pop(L, 1);
        su.author = opt_field(L, 4, "author");
        su.id = opt_field(L, 4, "id");
        su.emoji = opt_field(L, 4, "emoji");
        lua_getfield(L, 4, "body");
        if (!lua_isnil(L, -1)) su.body = luaL_checklstring(L, -1, &su.body_len);
        lua_pop(L, 1);
        lua_getfield(L, 4, "on");
        su.on = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
        lua_pop(L, 1);
    } else {
        a1 = luaL_optlstring(L, 4, NULL, &a1len);
        a2 = luaL_optstring(L, 5, NULL);
        a3 = luaL_optstring(L, 6, NULL);
    }

    script_result r;
    memset(&r, 0, sizeof r);
    script_verdict v = SCRIPT_ACCEPT;
    int notify = 0, ret = -2;
    double days = 0;
    env_saved sv;
    enter(L, u->env_ref, &sv, HOOKS[hook]);
    uint64_t w0 = mono_ns(), c0 = cpu_ns();
    switch (hook) {
    case K_CONNECT: v = script_on_connect(u->h, &c, &r); break;
    case K_JOIN: v = script_on_join(u->h, &c, &r); break;
    case K_LEAVE: script_on_leave(u->h, &c); notify = 1; break;
    case K_MESSAGE: v = script_on_message(u->h, &c, a1, a1len, a2, &r); break;
    case K_TYPING: v = script_on_typing(u->h, &c, &r); break;
    case K_PRESENCE: v = script_on_presence(u->h, &c, a1, a2, a3, &r); break;
    case K_HISTORY: v = script_on_history(u->h, &c, &r); break;
    case K_READ: v = script_on_read(u->h, &c, a1 ? strtoull(a1, NULL, 10) : 0, &r); break;
    case K_RETENTION: ret = script_on_retention(u->h, &c, &days); break;
    case K_EDIT: v = script_on_edit(u->h, &c, &su, &r); break;
    case K_DELETE: v = script_on_delete(u->h, &c, &su, &r); break;
    case K_REACT: v = script_on_react(u->h, &c, &su, &r); break;
    default: script_on_disconnect(u->h, &c); notify = 1; break;
    }
    uint64_t w1 = mono_ns(), c1 = cpu_ns();
    leave(&sv);

    if (notify) {
        lua_pushnil(L);
    } else if (hook == K_RETENTION) {
        /* { verdict = "accept" | "reject", days = N (when the hook returned one) } */
        lua_createtable(L, 0, 2);
        lua_pushstring(L, ret < 0 ? "reject" : "accept");
        lua_setfield(L, -2, "verdict");
        if (ret == 1) { lua_pushnumber(L, days); lua_setfield(L, -2, "days"); }
    } else {
        if (v != r.verdict) {
            script_result_clear(&r);
            return luaL_error(L, "chathost: %s returned verdict %d but filled %d", HOOKS[hook], (int)v,
                              (int)r.verdict);
        }
        lua_createtable(L, 0, 4);
        static const char *const VERDICTS[] = {"accept", "replace", "reject"};
        lua_pushstring(L, (unsigned)v <= SCRIPT_REJECT ? VERDICTS[v] : "?");
        lua_setfield(L, -2, "verdict");
        if (r.code[0]) { lua_pushstring(L, r.code); lua_setfield(L, -2, "code"); }
        if (r.reason[0]) { lua_pushstring(L, r.reason); lua_setfield(L, -2, "reason"); }
        if (r.body) { lua_pushlstring(L, r.body, r.body_len); lua_setfield(L, -2, "body"); }
        script_result_clear(&r);
    }
    lua_createtable(L, 0, 2);
    lua_pushnumber(L, (double)(w1 - w0) / 1e6);
    lua_setfield(L, -2, "wall_ms");
    lua_pushnumber(L, (double)(c1 - c0) / 1e6);
    lua_setfield(L, -2, "cpu_ms");
    return 2;
}

static int l_reload(lua_State *L)
{
    host_ud *u = check_host(L);
    char err[512] = "";
    env_saved sv;
    enter(L, u->env_ref, &sv, "script_reload");
    int rc = script_reload(u->h, err, sizeof err);
    leave(&sv);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushnumber(L, (double)script_version(u->h));
    return 1;
}

static int l_version(lua_State *L)
{
    host_ud *u = check_host(L);
    lua_pushnumber(L, (double)script_version(u->h));
    return 1;
}

static int l_setting(lua_State *L)
{
    host_ud *u = check_host(L);
    const char *key = luaL_checkstring(L, 2);
    int64_t dflt = (int64_t)luaL_optnumber(L, 3, 0);
    env_saved sv;
    enter(L, u->env_ref, &sv, "script_setting");
    int64_t v = script_setting(u->h, key, dflt);
    leave(&sv);
    lua_pushnumber(L, (double)v);
    return 1;
}

/* host:setting_num(key) -> n | nil (script_setting_num; nil when unset) */
static int l_setting_num(lua_State *L)
{
    host_ud *u = check_host(L);
    const char *key = luaL_checkstring(L, 2);
    env_saved sv;
    enter(L, u->env_ref, &sv, "script_setting_num");
    double none = -4503599627370496.0;
    double v = script_setting_num(u->h, key, none);
    leave(&sv);
    if (v == none) lua_pushnil(L);
    else lua_pushnumber(L, v);
    return 1;
}

/* ---------- module functions ---------- */

/* Records are "2024-01-01T00:00:00.000Z level module: text". */
static int l_logs(lua_State *L)
{
    lua_newtable(L);
    if (!cap_file) return 1;
    int fd = fileno(cap_file);
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0) return 1;
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) return luaL_error(L, "chathost.logs: out of memory");
    ssize_t got = pread(fd, buf, n, 0);
    if (got < 0) got = 0;
    buf[got] = 0;
    if (ftruncate(fd, 0) != 0) { /* keep going: records are read again next time */ }
    lseek(fd, 0, SEEK_SET);
    int i = 0;
    for (char *line = buf, *nl; line < buf + got && *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl) nl = buf + got;
        *nl = 0;
        lua_createtable(L, 0, 4);
        lua_pushstring(L, line);
        lua_setfield(L, -2, "line");
        char *sp1 = strchr(line, ' ');
        char *lv = sp1 ? sp1 + 1 : NULL;
        while (lv && *lv == ' ') lv++;
        char *sp2 = lv ? strchr(lv, ' ') : NULL;
        char *mod = sp2 ? sp2 + 1 : NULL;
        while (mod && *mod == ' ') mod++;
        char *colon = mod ? strstr(mod, ": ") : NULL;
        if (lv && sp2 && colon) {
            lua_pushlstring(L, lv, (size_t)(sp2 - lv));
            lua_setfield(L, -2, "level");
            lua_pushlstring(L, mod, (size_t)(colon - mod));
            lua_setfield(L, -2, "module");
            lua_pushstring(L, colon + 2);
            lua_setfield(L, -2, "msg");
        }
        lua_rawseti(L, -2, ++i);
    }
    free(buf);
    return 1;
}

static int l_log_level(lua_State *L)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    log_level_t old = log_get_level();
    if (!lua_isnoneornil(L, 1)) {
        int lv = log_level_parse(luaL_checkstring(L, 1));
        if (lv < 0) return luaL_error(L, "chathost.log_level: debug, info, warn or error");
        log_set_level((log_level_t)lv);
    }
    lua_pushstring(L, names[old]);
    return 1;
}

static int l_metrics(lua_State *L)
{
    size_t n = 0;
    char *text = metrics_render(&n);
    if (!text) return luaL_error(L, "chathost.metrics: out of memory");
    lua_pushlstring(L, text, n);
    free(text);
    return 1;
}

static int l_watchdog(lua_State *L)
{
    lua_Integer s = luaL_checkinteger(L, 1);
    luaL_argcheck(L, s > 0, 1, "seconds > 0");
    wd_seconds = (unsigned)s;
    return 0;
}

__attribute__((visibility("default"))) int luaopen_chathost(lua_State *L)
{
    static const luaL_Reg host_methods[] = {
        {"call", l_call}, {"reload", l_reload}, {"version", l_version},
        {"setting", l_setting}, {"setting_num", l_setting_num}, {"close", l_close}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {
        {"new", l_new}, {"logs", l_logs}, {"log_level", l_log_level},
        {"metrics", l_metrics}, {"watchdog", l_watchdog}, {NULL, NULL}};
    if (luaL_newmetatable(L, HOST_MT)) {
        lua_newtable(L);
        luaL_register(L, NULL, host_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_register(L, NULL, funcs);
    return 1;
}
