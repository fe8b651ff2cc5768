/* script: see script.h. The LuaJIT policy host.
 * Owns: the live policy state (lstate), its sandbox (an allow-listed global
 * table used as the environment of every policy chunk), the module loader
 * restricted to the scripts folder, the chat.* host API with its per-phase
 * permissions, the per-call budgets and the reload/swap.
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
 * Exactly one function enters Lua: script_call(). It runs a C trampoline
 * under lua_pcall (with a traceback handler); the trampoline does the state
 * setup, the load, the selftest or a hook call, so even building ctx tables
 * is protected. */
#define _GNU_SOURCE
#include "script.h"
#include "log.h"
#include "metrics.h"
#include "ratelimit.h"
#include "util.h"
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <luajit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOOK_COUNT 1000                         /* instructions between deadline checks */
#define LOAD_BUDGET_NS (2000ull * 1000000ull)   /* load + selftest */
#define DEFAULT_BUDGET_MS 50
#define DEFAULT_MEMORY_MB 64
#define MODULE_MAX_BYTES (1u << 20)
#define RL_MAX_KEYS 100000

enum { H_CONNECT, H_JOIN, H_LEAVE, H_MESSAGE, H_TYPING, H_PRESENCE, H_HISTORY, H_DISCONNECT,
       H_READ, H_RETENTION, H_EDIT, H_DELETE, H_REACT, H_N };
static const char *const HOOK_NAMES[H_N] = {
    "on_connect", "on_join", "on_leave", "on_message",
    "on_typing", "on_presence", "on_history", "on_disconnect",
    "on_read", "on_retention", "on_edit", "on_delete", "on_react"};
/* notification hooks: errors are logged, nothing is refused. on_retention
 * is a query (it returns days), handled apart from the verdict hooks. */
static const int HOOK_NOTIFY[H_N] = {0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0};

/* Permission bits: where a chat.* call may be made (docs/scripting.md). */
#define P_LOAD     (1u << 0)
#define P_SELFTEST (1u << 1)
#define P_HOOK(i)  (1u << (2 + (i)))
#define P_NOTIFY   (P_HOOK(H_LEAVE) | P_HOOK(H_DISCONNECT))
#define P_VALIDATE (P_HOOK(H_CONNECT) | P_HOOK(H_JOIN) | P_HOOK(H_MESSAGE) | P_HOOK(H_TYPING) | \
                    P_HOOK(H_PRESENCE) | P_HOOK(H_HISTORY) | P_HOOK(H_READ) | \
                    P_HOOK(H_EDIT) | P_HOOK(H_DELETE) | P_HOOK(H_REACT))
/* on_retention runs in the background pass, for no user: no rate limits */
#define P_QUERY    (P_HOOK(H_RETENTION))
#define P_HOOKS    (P_VALIDATE | P_NOTIFY | P_QUERY)
#define P_ANY      (P_LOAD | P_SELFTEST | P_HOOKS)

/* Sandbox allow-list (docs/scripting.md lists it; spec/01-unit/05-sandbox_spec.lua
 * checks the sandbox's globals against that list through the real host). */
static const char *const SB_BASE[] = {
    "assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget", "rawset",
    "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type", "unpack",
    "_VERSION", NULL};
static const char *const SB_STRING[] = {
    "byte", "char", "find", "format", "gmatch", "gsub", "len", "lower", "match",
    "rep", "reverse", "sub", "upper", NULL};
static const char *const SB_TABLE[] = {
    "concat", "insert", "maxn", "remove", "sort", NULL};
static const char *const SB_MATH[] = {
    "abs", "acos", "asin", "atan", "atan2", "ceil", "cos", "cosh", "deg", "exp", "floor",
    "fmod", "frexp", "huge", "ldexp", "log", "log10", "max", "min", "modf", "pi", "pow",
    "rad", "random", "randomseed", "sin", "sinh", "sqrt", "tan", "tanh", NULL};
static const char *const SB_OS[] = {"clock", "date", "time", NULL};
static const char *const SB_BIT[] = {
    "tobit", "tohex", "bnot", "band", "bor", "bxor", "lshift", "rshift", "arshift",
    "rol", "ror", "bswap", NULL};
/* Also provided by the host: pcall, xpcall (budget-aware), load/loadstring
 * (text only, sandbox env), require (scripts folder only), print (-> log),
 * chat, _G (the sandbox itself). */

/* Config keys the core reads: must be positive integers. */
static const char *const INT_KEYS[] = {
    "max_body", "heartbeat_ms", "presence_ttl_ms", "typing_ttl_ms", "max_rooms_per_conn",
    "hook_budget_ms", "memory_limit_mb", NULL};

/* registry keys (addresses are unique) */
static char REG_POLICY, REG_ENV, REG_JSON, REG_LOADED;

enum { OP_INIT, OP_LOAD, OP_SELFTEST, OP_HOOK };
enum { TRIP_NONE, TRIP_TIME, TRIP_MEM };

typedef struct cfg_num { char *key; double v; } cfg_num;

typedef struct lstate {
    lua_State *L;
    script_host *h;
    size_t mem;         /* bytes through our allocator */
    size_t limit;       /* cap in bytes (0 = none) */
    int enforce;        /* allocator refuses growth past limit */
    int gccount_mode;   /* no custom allocator: cap checked with LUA_GCCOUNT */
    int broken;         /* left bloated by a memory trip: rebuild */
    int has_hook[H_N];
    cfg_num *cfg;
    size_t ncfg;
    uint64_t budget_ns;
} lstate;

struct script_host {
    char *dir, *node;
    lstate *cur;
    uint64_t version;
    ratelimit *rl;
    /* the call in progress (between calls: in == NULL, mask == 0) */
    lstate *in;
    unsigned mask;
    int hook;           /* H_* or -1 */
    int op;
    const script_ctx *ctx;
    uint64_t deadline_ns;
    int tripped;
    /* error log throttling */
    uint64_t log_sec;
    unsigned log_n, log_dropped;
    /* metrics */
    metric_hist *m_dur[H_N];
    metric_counter *m_err[H_N];
    metric_counter *m_reload_ok, *m_reload_err, *m_rebuilds;
    metric_gauge *m_mem;
};

typedef struct call_spec {
    int op, hook;
    const script_ctx *ctx;
    const char *a1; size_t a1len;  /* message body / presence event */
    const char *a2; size_t a2len;  /* message id / presence user */
    const char *a3; size_t a3len;  /* presence name */
    uint64_t num;                  /* on_read: the seq */
    const script_update *upd;      /* on_edit, on_delete, on_react */
} call_spec;

static script_host *g_running;  /* host whose script_call is on the C stack */

static const double SCRIPT_BUCKETS[] = {
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1};

/* ---------- small helpers ---------- */

/* First line of s[0..n) as printable UTF-8 text: control characters become
 * spaces, ill-formed UTF-8 bytes '?' (the line ends up in error frames and
 * HTTP answers, which must be valid text). */
static void copy_line(char *dst, size_t cap, const char *s, size_t n)
{
    if (!cap) return;
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') break;
        size_t k = c < 0x80 ? 1 : utf8_seq(s + i, n - i);
        if (k > 1) {   /* a whole sequence, or nothing of it */
            if (o + k >= cap) break;
            memcpy(dst + o, s + i, k);
            o += k;
            i += k - 1;
            continue;
        }
        dst[o++] = !k ? '?' : (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    dst[o] = 0;
}

static void env_name(char *out, size_t cap, const char *key)
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

static int parse_num(const char *s, double *out)
{
    char *end;
    if (!s || !*s) return -1;
    double v = strtod(s, &end);
    while (*end == ' ' || *end == '\t') end++;
    if (*end) return -1;
    *out = v;
    return 0;
}

static const char *phase_name(const script_host *h)
{
    if (!h) return "outside the policy host";
    switch (h->op) {
    case OP_LOAD: return "at load time";
    case OP_SELFTEST: return "in selftest";
    case OP_HOOK: {
        static const char *const in_hook[H_N] = {
            "in on_connect", "in on_join", "in on_leave", "in on_message",
            "in on_typing", "in on_presence", "in on_history", "in on_disconnect",
            "in on_read", "in on_retention", "in on_edit", "in on_delete", "in on_react"};
        return h->hook >= 0 ? in_hook[h->hook] : "here";
    }
    default: return "here";
    }
}

static size_t mem_used(lstate *s)
{
    if (!s->gccount_mode) return s->mem;
    return (size_t)lua_gc(s->L, LUA_GCCOUNT, 0) * 1024u + (size_t)lua_gc(s->L, LUA_GCCOUNTB, 0);
}

/* ---------- allocator and budget hook ---------- */

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    lstate *s = ud;
    if (nsize == 0) {
        free(ptr);
        s->mem -= osize;
        return NULL;
    }
    if (nsize > osize && s->enforce && s->limit && s->mem + (nsize - osize) > s->limit) {
        if (s->h && s->h->in == s) s->h->tripped = TRIP_MEM;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (!p) return NULL;
    s->mem = s->mem - osize + nsize;
    return p;
}

static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    script_host *h = g_running;
    if (!h || !h->in) return;
    if (!h->tripped) {
        if (mono_ns() > h->deadline_ns) h->tripped = TRIP_TIME;
        else if (h->in->limit && h->in->gccount_mode && mem_used(h->in) > h->in->limit)
            h->tripped = TRIP_MEM;
        else return;
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);   /* from now on, every instruction */
    }
    if (h->tripped == TRIP_TIME)
        luaL_error(L, "hook budget exceeded (%d ms)", (int)(h->in->budget_ns / 1000000u));
    luaL_error(L, "memory limit exceeded (%d MiB)", (int)(h->in->limit >> 20));
}

static void arm_hook(lstate *s)
{
    /* without our allocator, memory is only seen in the hook: look more often */
    lua_sethook(s->L, count_hook, LUA_MASKCOUNT, s->gccount_mode ? HOOK_COUNT / 10 : HOOK_COUNT);
}

static int at_panic(lua_State *L)
{
    const char *m = lua_tostring(L, -1);
    log_msg(LOG_ERROR, "script", "unprotected Lua error: %s", m ? m : "?");
    abort();
}

/* Traceback message handler of script_call. */
static int msgh(lua_State *L)
{
    script_host *h = g_running;
    if (h && h->in) h->in->enforce = 0;   /* room to build the message */
    const char *m = lua_tostring(L, 1);
    if (!m) m = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, m, 1);
    return 1;
}

/* ---------- sandbox builtins ---------- */

static int sb_pcall(lua_State *L)
{
    luaL_checkany(L, 1);
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    if (st != 0 && g_running && g_running->tripped) return lua_error(L);
    luaL_checkstack(L, 1, "pcall");
    lua_pushboolean(L, st == 0);
    lua_insert(L, 1);
    return lua_gettop(L);
}

/* xpcall(f, handler, ...): LuaJIT runs error handlers with hooks off, so a
 * looping handler could never be stopped; the sandbox calls the handler
 * after the unwinding instead, as an ordinary (budgeted) call. */
static int sb_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checkany(L, 2);
    luaL_checkstack(L, n + 2, "xpcall");
    lua_pushvalue(L, 1);
    for (int i = 3; i <= n; i++) lua_pushvalue(L, i);
    int st = lua_pcall(L, n > 2 ? n - 2 : 0, LUA_MULTRET, 0);
    if (st != 0 && g_running && g_running->tripped) return lua_error(L);
    if (st == 0) {
        lua_pushboolean(L, 1);
        lua_insert(L, n + 1);
        return lua_gettop(L) - n;
    }
    lua_pushvalue(L, 2);
    lua_insert(L, -2);
    st = lua_pcall(L, 1, 1, 0);
    if (st != 0 && g_running && g_running->tripped) return lua_error(L);
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
}

static void push_env(lua_State *L)
{
    lua_pushlightuserdata(L, &REG_ENV);
    lua_rawget(L, LUA_REGISTRYINDEX);
}

/* loadstring(s [, name]) / load(s [, name]): text chunks only, sandbox env. */
static int sb_loadstring(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *name = luaL_optstring(L, 2, "=(load)");
    if (n > 0 && s[0] == LUA_SIGNATURE[0]) {
        lua_pushnil(L);
        lua_pushliteral(L, "attempt to load a binary chunk (refused by the sandbox)");
        return 2;
    }
    if (luaL_loadbufferx(L, s, n, name, "t") != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    push_env(L);
    lua_setfenv(L, -2);
    return 1;
}

static int sb_print(lua_State *L)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int n = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, '\t');
        int t = lua_type(L, i);
        if (t == LUA_TSTRING || t == LUA_TNUMBER) {
            size_t l;
            const char *s = lua_tolstring(L, i, &l);
            luaL_addlstring(&b, s, l);
        } else if (t == LUA_TBOOLEAN) {
            luaL_addstring(&b, lua_toboolean(L, i) ? "true" : "false");
        } else {
            luaL_addstring(&b, lua_typename(L, t));
        }
    }
    luaL_pushresult(&b);
    size_t l;
    const char *s = lua_tolstring(L, -1, &l);
    char line[1024];
    copy_line(line, sizeof line, s, l);
    log_msg(LOG_INFO, "script", "[%s] %s", phase_name(g_running), line);
    return 0;
}

static int module_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > 64 || s[0] == '.' || s[n - 1] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '.' && s[i + 1] == '.') return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

/* require(name): modules of the scripts folder only ("a.b" -> dir/a/b.lua),
 * plus "cjson" (the same encode/decode as chat.json). Cached per state. */
static int sb_require(lua_State *L)
{
    size_t n;
    const char *name = luaL_checklstring(L, 1, &n);
    lua_settop(L, 1);
    lua_pushlightuserdata(L, &REG_LOADED);
    lua_rawget(L, LUA_REGISTRYINDEX);                 /* 2: loaded */
    lua_pushvalue(L, 1);
    lua_rawget(L, 2);
    if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1))
        return luaL_error(L, "require \"%s\": loop while loading the module", name);
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
    if (strcmp(name, "cjson") == 0) {
        lua_pushlightuserdata(L, &REG_JSON);
        lua_rawget(L, LUA_REGISTRYINDEX);
        return 1;
    }
    script_host *h = g_running;
    if (!h || !h->in || !module_name_ok(name, n))
        return luaL_error(L, "require \"%s\": only modules of the scripts folder can be required", name);
    char rel[80], path[4200];
    size_t i;
    for (i = 0; i < n; i++) rel[i] = name[i] == '.' ? '/' : name[i];
    rel[i] = 0;
    snprintf(path, sizeof path, "%s/%s.lua", h->dir, rel);
    FILE *f = fopen(path, "rb");
    if (!f) return luaL_error(L, "require \"%s\": no %s.lua in the scripts folder", name, rel);
    char *buf = malloc(MODULE_MAX_BYTES + 1);
    size_t got = buf ? fread(buf, 1, MODULE_MAX_BYTES + 1, f) : 0;
    fclose(f);
    if (!buf) return luaL_error(L, "require \"%s\": out of memory", name);
    if (got > MODULE_MAX_BYTES) {
        free(buf);
        return luaL_error(L, "require \"%s\": file larger than 1 MiB", name);
    }
    if (got > 0 && buf[0] == LUA_SIGNATURE[0]) {
        free(buf);
        return luaL_error(L, "require \"%s\": binary chunks are refused", name);
    }
    char chunk[96];
    snprintf(chunk, sizeof chunk, "@%s.lua", rel);
    int st = luaL_loadbufferx(L, buf, got, chunk, "t");
    free(buf);
    if (st != 0) return lua_error(L);                 /* "file:line: msg" */
    push_env(L);
    lua_setfenv(L, -2);
    lua_pushvalue(L, 1);
    lua_pushboolean(L, 0);
    lua_rawset(L, 2);                                 /* loading sentinel */
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    if (lua_isnil(L, -1)) { lua_pop(L, 1); lua_pushboolean(L, 1); }
    lua_pushvalue(L, 1);
    lua_pushvalue(L, -2);
    lua_rawset(L, 2);
    return 1;
}

/* ---------- chat.* host API ---------- */

static script_host *api_check(lua_State *L, unsigned need, const char *fn)
{
    script_host *h = g_running;
    if (!h || !h->in || !(h->mask & need))
        luaL_error(L, "%s is not allowed %s", fn, phase_name(h));
    return h;
}

static int api_log(lua_State *L)
{
    api_check(L, P_ANY, "chat.log");
    const char *lv = luaL_checkstring(L, 1);
    size_t l;
    const char *m = luaL_checklstring(L, 2, &l);
    int lvl = log_level_parse(lv);
    if (lvl < 0) return luaL_error(L, "chat.log: unknown level \"%s\" (debug, info, warn, error)", lv);
    if ((log_level_t)lvl < log_get_level()) return 0;
    char line[1024];
    copy_line(line, sizeof line, m, l);
    log_msg((log_level_t)lvl, "script", "[%s] %s", phase_name(g_running), line);
    return 0;
}

static int api_now(lua_State *L)
{
    script_host *h = api_check(L, P_ANY, "chat.now");
    lua_pushnumber(L, (double)(h->ctx ? h->ctx->now_ms : now_ms()));
    return 1;
}

static int api_ratelimit(lua_State *L)
{
    script_host *h = api_check(L, P_VALIDATE, "chat.ratelimit");
    size_t kl;
    const char *key = luaL_checklstring(L, 1, &kl);
    double rate = luaL_checknumber(L, 2);
    double burst = luaL_optnumber(L, 3, rate < 1 ? 1 : rate);
    int r = rl_take(h->rl, key, kl, rate, burst, h->ctx ? h->ctx->now_ms : now_ms());
    if (r < 0)
        return luaL_error(L, "chat.ratelimit: bad arguments (key of 1..%d bytes, rate > 0, burst >= 1)",
                          RL_KEY_MAX);
    lua_pushboolean(L, r);
    return 1;
}

static int api_config_index(lua_State *L)
{
    api_check(L, P_SELFTEST | P_HOOKS, "chat.config");
    lua_pushlightuserdata(L, &REG_POLICY);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (!lua_istable(L, -1)) return 0;
    lua_getfield(L, -1, "config");
    if (!lua_istable(L, -1)) return 0;
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

static int api_config_newindex(lua_State *L)
{
    return luaL_error(L, "chat.config is read-only (set M.config or CHAT_* env vars)");
}

static void copy_fields(lua_State *L, int src, const char *const *names)
{
    /* table on top receives src[name] for each name */
    for (int i = 0; names[i]; i++) {
        lua_getfield(L, src, names[i]);
        lua_setfield(L, -2, names[i]);
    }
}

static void open_lib(lua_State *L, lua_CFunction f, const char *name)
{
    lua_pushcfunction(L, f);
    lua_pushstring(L, name);
    lua_call(L, 1, 0);
}

static void op_init(lua_State *L)
{
    open_lib(L, luaopen_base, "");
    open_lib(L, luaopen_package, LUA_LOADLIBNAME);
    open_lib(L, luaopen_string, LUA_STRLIBNAME);
    open_lib(L, luaopen_table, LUA_TABLIBNAME);
    open_lib(L, luaopen_math, LUA_MATHLIBNAME);
    open_lib(L, luaopen_os, LUA_OSLIBNAME);
    open_lib(L, luaopen_bit, LUA_BITLIBNAME);

    /* lua-cjson through the normal C module path, loaded by the host */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    int cj = lua_gettop(L);
    lua_pushlightuserdata(L, &REG_JSON);
    lua_newtable(L);
    lua_getfield(L, cj, "encode");
    lua_setfield(L, -2, "encode");
    lua_getfield(L, cj, "decode");
    lua_setfield(L, -2, "decode");
    lua_getfield(L, cj, "null");
    lua_setfield(L, -2, "null");
    lua_rawset(L, LUA_REGISTRYINDEX);

    int G = LUA_GLOBALSINDEX;
    lua_newtable(L);                                  /* the sandbox env */
    int E = lua_gettop(L);
    lua_pushvalue(L, E);
    copy_fields(L, G, SB_BASE);
    lua_pop(L, 1);
    static const struct { const char *name; lua_CFunction f; } fns[] = {
        {"pcall", sb_pcall}, {"xpcall", sb_xpcall}, {"loadstring", sb_loadstring},
        {"load", sb_loadstring}, {"require", sb_require}, {"print", sb_print}};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        lua_pushcfunction(L, fns[i].f);
        lua_setfield(L, E, fns[i].name);
    }
    static const struct { const char *lib; const char *const *names; } libs[] = {
        {"string", SB_STRING}, {"table", SB_TABLE}, {"math", SB_MATH},
        {"os", SB_OS}, {"bit", SB_BIT}};
    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) {
        lua_getglobal(L, libs[i].lib);
        int src = lua_gettop(L);
        lua_newtable(L);
        copy_fields(L, src, libs[i].names);
        lua_setfield(L, E, libs[i].lib);
        lua_pop(L, 1);
    }
    /* string methods ("x"):upper() resolve in the sandbox copy (no dump) */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_getfield(L, E, "string");
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);

    /* chat.* */
    lua_newtable(L);
    int C = lua_gettop(L);
    static const struct { const char *name; lua_CFunction f; } api[] = {
        {"log", api_log}, {"now", api_now}, {"ratelimit", api_ratelimit}};
    for (size_t i = 0; i < sizeof api / sizeof api[0]; i++) {
        lua_pushcfunction(L, api[i].f);
        lua_setfield(L, C, api[i].name);
    }
    lua_pushlightuserdata(L, &REG_JSON);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_setfield(L, C, "json");
    lua_newtable(L);                                  /* chat.config proxy */
    lua_newtable(L);
    lua_pushcfunction(L, api_config_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, api_config_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_setfield(L, C, "config");
    lua_setfield(L, E, "chat");
    lua_pushvalue(L, E);
    lua_setfield(L, E, "_G");

    lua_pushlightuserdata(L, &REG_ENV);
    lua_pushvalue(L, E);
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_pushlightuserdata(L, &REG_LOADED);
    lua_newtable(L);
    lua_rawset(L, LUA_REGISTRYINDEX);

    /* nothing in the real globals is reachable from the sandbox, but drop
     * the loaders anyway */
    static const char *const drop[] = {"require", "package", "module", "load", "loadstring",
                                       "loadfile", "dofile", "getfenv", "setfenv", NULL};
    for (int i = 0; drop[i]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, drop[i]);
    }
}

static int is_int_key(const char *k)
{
    for (int i = 0; INT_KEYS[i]; i++)
        if (strcmp(INT_KEYS[i], k) == 0) return 1;
    return 0;
}

static void op_load(lua_State *L, lstate *s)
{
    lua_pushcfunction(L, sb_require);
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
        env_name(en, sizeof en, k);
        const char *ev = getenv(en);
        if (ev) {                                   /* env override, same type */
            lua_pushvalue(L, -2);
            if (t == LUA_TNUMBER) {
                double v;
                if (parse_num(ev, &v) != 0) luaL_error(L, "%s=\"%s\": not a number", en, ev);
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
        if (is_int_key(k)) {
            double v = lua_tonumber(L, -1);
            if (t != LUA_TNUMBER || v != (double)(int64_t)v || v <= 0 || v > 1e12)
                luaL_error(L, "policy.lua: config.%s must be a positive integer", k);
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

static void op_selftest(lua_State *L)
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

static void set_str(lua_State *L, const char *k, const char *v, size_t n)
{
    if (!v) return;
    lua_pushlstring(L, v, n);
    lua_setfield(L, -2, k);
}

static int op_hook(lua_State *L, const call_spec *cs)
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
    lua_createtable(L, 0, 6);
    if (c) {
        if (c->user) set_str(L, "user", c->user, strlen(c->user));
        if (c->name) set_str(L, "name", c->name, strlen(c->name));
        if (c->room) set_str(L, "room", c->room, strlen(c->room));
        if (c->node) set_str(L, "node", c->node, strlen(c->node));
        if (c->source) set_str(L, "source", c->source, strlen(c->source));
        lua_pushnumber(L, (double)c->now_ms);
        lua_setfield(L, -2, "now");
    }
    if (c && c->claims_json && *c->claims_json) {
        lua_pushlightuserdata(L, &REG_JSON);
        lua_rawget(L, LUA_REGISTRYINDEX);
        lua_getfield(L, -1, "decode");
        lua_remove(L, -2);
        lua_pushstring(L, c->claims_json);
        lua_call(L, 1, 1);
        if (!lua_istable(L, -1)) { lua_pop(L, 1); lua_newtable(L); }
    } else {
        lua_newtable(L);
    }
    lua_setfield(L, -2, "claims");
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

/* Runs inside lua_pcall (see script_call). */
static int trampoline(lua_State *L)
{
    const call_spec *cs = lua_touserdata(L, 1);
    script_host *h = g_running;
    lua_settop(L, 0);
    h->in->enforce = 1;
    switch (cs->op) {
    case OP_INIT: op_init(L); return 0;
    case OP_LOAD: op_load(L, h->in); return 0;
    case OP_SELFTEST: op_selftest(L); return 0;
    default: return op_hook(L, cs);
    }
}

/* ---------- the one call path into Lua ---------- */

static void log_script_error(script_host *h, const char *what, const char *msg)
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

static void set_reject(script_result *res, const char *code, const char *reason)
{
    res->verdict = SCRIPT_REJECT;
    snprintf(res->code, sizeof res->code, "%s", code);
    snprintf(res->reason, sizeof res->reason, "%s", reason);
}

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
    lua_pushcfunction(L, msgh);
    lua_pushcfunction(L, trampoline);
    lua_pushlightuserdata(L, (void *)cs);
    /* the count hook stays installed between calls (lua_sethook rewrites
     * LuaJIT's dispatch table: too slow to do twice per call); it is reset
     * only after a trip switched it to every instruction */
    int st = lua_pcall(L, 1, cs->op == OP_HOOK ? 3 : 0, 1);
    if (h->tripped) arm_hook(s);
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
        copy_line(line, sizeof line, m, ml);
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
            log_script_error(h, what, tb);
            if (res && !HOOK_NOTIFY[cs->hook])
                set_reject(res, "script_error", tripped == TRIP_TIME ? "policy script too slow"
                                              : "policy script failed");
        }
        rc = -1;
    } else if (cs->op == OP_HOOK && res && cs->hook == H_RETENTION) {
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
            log_script_error(h, HOOK_NAMES[cs->hook], m);
            set_reject(res, "script_error", "policy script failed");
            rc = -1;
        }
    } else if (cs->op == OP_HOOK && res) {
        int t1 = lua_type(L, 2);
        if (t1 == LUA_TNIL || (t1 == LUA_TBOOLEAN && lua_toboolean(L, 2))) {
            res->verdict = SCRIPT_ACCEPT;
        } else if (t1 == LUA_TBOOLEAN) {
            size_t n = 0;
            const char *code = lua_type(L, 3) == LUA_TSTRING ? lua_tolstring(L, 3, &n) : NULL;
            sanitize_code(res->code, sizeof res->code, code ? code : "", n);
            if (!res->code[0]) snprintf(res->code, sizeof res->code, "rejected");
            const char *why = lua_type(L, 4) == LUA_TSTRING ? lua_tolstring(L, 4, &n) : NULL;
            if (why) copy_line(res->reason, sizeof res->reason, why, n);
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
                log_script_error(h, HOOK_NAMES[cs->hook],
                                 "returned a body that is not UTF-8 text (NUL or ill-formed UTF-8)");
                set_reject(res, "script_error", "policy script failed");
            } else if ((res->body = malloc(n + 1))) {
                memcpy(res->body, b, n);
                res->body[n] = 0;
                res->body_len = n;
                res->verdict = SCRIPT_REPLACE;
            } else {
                set_reject(res, "script_error", "out of memory");
            }
        } else if (!HOOK_NOTIFY[cs->hook]) {
            char m[128];
            snprintf(m, sizeof m, cs->hook == H_MESSAGE || cs->hook == H_EDIT
                                      ? "returned a %s (nil, true, false or a string expected)"
                                                        : "returned a %s (nil, true or false expected)",
                     lua_typename(L, t1));
            metric_inc(h->m_err[cs->hook]);
            log_script_error(h, HOOK_NAMES[cs->hook], m);
            set_reject(res, "script_error", "policy script failed");
        }
    }
    lua_settop(L, 0);
    if (cs->op == OP_HOOK) {
        metric_observe(h->m_dur[cs->hook], (double)dt / 1e9);
        /* after a memory trip (or when the state grew close to its cap)
         * collect; if it stays bloated, have the caller rebuild it */
        if (s->limit && (tripped == TRIP_MEM || mem_used(s) > s->limit / 4 * 3)) {
            lua_gc(L, LUA_GCCOLLECT, 0);
            if (mem_used(s) > s->limit / 4 * 3) s->broken = 1;
        }
        metric_set(h->m_mem, (double)mem_used(s));
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
    free(s);
}

static int cfg_get(const lstate *s, const char *key, double *v)
{
    for (size_t i = 0; s && i < s->ncfg; i++)
        if (strcmp(s->cfg[i].key, key) == 0) { *v = s->cfg[i].v; return 1; }
    return 0;
}

static lstate *lstate_build(script_host *h, char *err, size_t errlen)
{
    lstate *s = calloc(1, sizeof *s);
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    s->h = h;
    double mb = DEFAULT_MEMORY_MB, v;
    if (h->cur && cfg_get(h->cur, "memory_limit_mb", &v)) mb = v;
    if (parse_num(getenv("CHAT_MEMORY_LIMIT_MB"), &v) == 0 && v > 0) mb = v;
    s->limit = (size_t)(mb * 1048576.0);
    s->budget_ns = (uint64_t)DEFAULT_BUDGET_MS * 1000000u;
    /* CHATD_TEST_GCCOUNT forces the fallback path (for tests) */
    s->L = getenv("CHATD_TEST_GCCOUNT") ? NULL : lua_newstate(l_alloc, s);
    if (!s->L) {                          /* non-GC64 x86_64: no custom allocator */
        s->gccount_mode = 1;
        s->L = luaL_newstate();
    }
    if (!s->L) { free(s); snprintf(err, errlen, "cannot create a Lua state"); return NULL; }
    lua_atpanic(s->L, at_panic);
    luaJIT_setmode(s->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    arm_hook(s);
    call_spec cs = {.op = OP_INIT, .hook = -1};
    char e[512];
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
        if (mem_used(s) > lim / 2) {
            snprintf(err, errlen, "policy.lua: memory_limit_mb=%g is too small (the policy uses %zu KiB)",
                     v, mem_used(s) >> 10);
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
    metric_set(h->m_mem, (double)mem_used(h->cur));
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
    metric_set(h->m_mem, (double)mem_used(n));
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
    env_name(en, sizeof en, key);
    if (parse_num(getenv(en), &v) == 0) return (int64_t)v;
    return dflt;
}

double script_setting_num(const script_host *h, const char *key, double dflt)
{
    double v;
    if (h && cfg_get(h->cur, key, &v)) return v;
    char en[96];
    env_name(en, sizeof en, key);
    if (parse_num(getenv(en), &v) == 0) return v;
    return dflt;
}

int script_has_hook(const script_host *h, const char *hook)
{
    if (!h || !h->cur || !hook) return 0;
    for (int i = 0; i < H_N; i++)
        if (strcmp(HOOK_NAMES[i], hook) == 0) return h->cur->has_hook[i];
    return 0;
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
    metric_set(h->m_mem, (double)mem_used(n));
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
        if (!HOOK_NOTIFY[hook]) set_reject(res, "script_error", "policy busy");
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
