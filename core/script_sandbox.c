/* script_sandbox: the Lua environment a policy runs in (script_int.h).
 * Owns: the state's allocator and the budget hook (a wall-clock deadline
 * and a memory cap checked every HOOK_COUNT instructions; once tripped,
 * every instruction, and the sandbox's pcall/xpcall re-raise so a script
 * cannot swallow it), the sandbox (an allow-listed global table used as the
 * environment of every chunk; text chunks only), the module loader
 * restricted to the scripts folder, print -> log, and the chat.* host API
 * with its per-phase permissions. The call in progress (g_running) is the
 * host's (script.c): this file reads it, never starts a call. */
#define _GNU_SOURCE
#include "script_int.h"
#include "log.h"
#include "util.h"
#include <lauxlib.h>
#include <lualib.h>
#include <luajit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODULE_MAX_BYTES (1u << 20)

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

char script_reg[9];
script_host *g_running;

/* ---------- small helpers ---------- */

/* First line of s[0..n) as printable UTF-8 text: control characters become
 * spaces, ill-formed UTF-8 bytes '?' (the line ends up in error frames and
 * HTTP answers, which must be valid text). */
void script_copy_line(char *dst, size_t cap, const char *s, size_t n)
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

const char *script_phase_name(const script_host *h)
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

size_t script_mem_used(lstate *s)
{
    if (!s->gccount_mode) return s->mem;
    return (size_t)lua_gc(s->L, LUA_GCCOUNT, 0) * 1024u + (size_t)lua_gc(s->L, LUA_GCCOUNTB, 0);
}

/* ---------- allocator and budget hook ---------- */

void *script_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
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
        else if (h->in->limit && h->in->gccount_mode && script_mem_used(h->in) > h->in->limit)
            h->tripped = TRIP_MEM;
        else return;
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);   /* from now on, every instruction */
    }
    if (h->tripped == TRIP_TIME)
        luaL_error(L, "hook budget exceeded (%d ms)", (int)(h->in->budget_ns / 1000000u));
    luaL_error(L, "memory limit exceeded (%d MiB)", (int)(h->in->limit >> 20));
}

void script_arm_hook(lstate *s)
{
    /* without our allocator, memory is only seen in the hook: look more often */
    lua_sethook(s->L, count_hook, LUA_MASKCOUNT, s->gccount_mode ? HOOK_COUNT / 10 : HOOK_COUNT);
}

int script_at_panic(lua_State *L)
{
    const char *m = lua_tostring(L, -1);
    log_msg(LOG_ERROR, "script", "unprotected Lua error: %s", m ? m : "?");
    abort();
}

/* Traceback message handler of script_call. */
int script_msgh(lua_State *L)
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
    script_copy_line(line, sizeof line, s, l);
    log_msg(LOG_INFO, "script", "[%s] %s", script_phase_name(g_running), line);
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
int script_require(lua_State *L)
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
        luaL_error(L, "%s is not allowed %s", fn, script_phase_name(h));
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
    script_copy_line(line, sizeof line, m, l);
    log_msg((log_level_t)lvl, "script", "[%s] %s", script_phase_name(g_running), line);
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

/* A metatable with __index and __newindex and a hidden metatable
 * (getmetatable answers false, setmetatable refuses): the chat.config proxy's
 * and the policy ctx's. */
void script_push_guard_mt(lua_State *L, lua_CFunction index, lua_CFunction newindex)
{
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
}

void script_open_sandbox(lua_State *L)
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
        {"load", sb_loadstring}, {"require", script_require}, {"print", sb_print}};
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
    script_push_guard_mt(L, api_config_index, api_config_newindex);
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
