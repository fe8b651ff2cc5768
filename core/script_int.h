/* script_int: what the three files of the policy host share (script.c,
 * script_policy.c, script_sandbox.c; never included elsewhere). Owns
 * nothing; declares the host and state structs, the call in progress, the
 * hook table and the functions one file offers the others, whose calls run
 * one way:
 *   script.c (the host: states, reload, the one call path, the hooks' C
 *   entry points) -> script_policy.c (the policy's shape: policy.lua's
 *   table and M.config, the ctx a hook gets, the verdict its return makes)
 *   -> script_sandbox.c (the Lua environment: allocator and budget hook,
 *   the sandbox's builtins, the module loader, the chat.* API). */
#ifndef CHATD_SCRIPT_INT_H
#define CHATD_SCRIPT_INT_H
#include "script_types.h"
#include "metrics.h"
#include "ratelimit.h"
#include <lua.h>
#include <stddef.h>
#include <stdint.h>

#define HOOK_COUNT 1000                         /* instructions between deadline checks */

enum { H_CONNECT, H_JOIN, H_LEAVE, H_MESSAGE, H_TYPING, H_PRESENCE, H_HISTORY, H_DISCONNECT,
       H_READ, H_RETENTION, H_EDIT, H_DELETE, H_REACT, H_N };
extern const char *const HOOK_NAMES[H_N];
/* notification hooks: errors are logged, nothing is refused. on_retention
 * is a query (it returns days), handled apart from the verdict hooks. */
extern const int HOOK_NOTIFY[H_N];

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

/* registry keys (their addresses are unique): the policy table, the
 * sandbox env, chat.json, the modules loaded (script_sandbox.c); script_call's
 * two C functions, made once per state (script.c); the ctx metatable, the
 * claims not yet decoded and the strings kept alive (script_policy.c) */
extern char script_reg[9];
#define REG_POLICY (script_reg[0])
#define REG_ENV    (script_reg[1])
#define REG_JSON   (script_reg[2])
#define REG_LOADED (script_reg[3])
#define REG_MSGH   (script_reg[4])
#define REG_TRAMP  (script_reg[5])
#define REG_CTXMT  (script_reg[6])
#define REG_CLAIMS (script_reg[7])
#define REG_PINNED (script_reg[8])

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
    char *admin_role;   /* config.admin_role when a string, else NULL */
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

/* the host whose script_call is on the C stack (script_sandbox.c) */
extern script_host *g_running;

/* script_sandbox.c */
void script_copy_line(char *dst, size_t cap, const char *s, size_t n);
const char *script_phase_name(const script_host *h);
size_t script_mem_used(lstate *s);
void *script_alloc(void *ud, void *ptr, size_t osize, size_t nsize);  /* lua_newstate's */
void script_arm_hook(lstate *s);        /* the budget's count hook */
int script_at_panic(lua_State *L);
int script_msgh(lua_State *L);          /* script_call's traceback handler */
int script_require(lua_State *L);       /* the sandbox's require */
void script_open_sandbox(lua_State *L); /* OP_INIT: the env, chat.*, the loader */
/* pushes a metatable: __index, __newindex, __metatable = false */
void script_push_guard_mt(lua_State *L, lua_CFunction index, lua_CFunction newindex);

/* script_policy.c */
void script_env_name(char *out, size_t cap, const char *key);  /* key -> CHAT_KEY */
int script_parse_num(const char *s, double *out);
void script_log_error(script_host *h, const char *what, const char *msg);
void script_set_reject(script_result *res, const char *code, const char *reason);
void script_open_policy(lua_State *L, const char *node);  /* OP_INIT, after the sandbox */
void script_load_policy(lua_State *L, lstate *s);        /* OP_LOAD */
void script_selftest(lua_State *L);                      /* OP_SELFTEST */
int script_push_hook(lua_State *L, const call_spec *cs); /* OP_HOOK: calls the hook */
/* A hook's return values (stack 2..4) -> *res; -1 when the return is not
 * one the hook may give (logged, and refused for a verdict hook). */
int script_read_result(script_host *h, lua_State *L, const call_spec *cs, script_result *res);

#endif
