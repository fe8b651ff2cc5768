/* script: the LuaJIT host for operator policy in CHAT_SCRIPTS.
 * Owns: the live lua_State (and, during reload, the candidate one), the
 * sandbox, the per-call budgets (time deadline + memory cap), the chat.* host
 * API and its per-key token buckets (kept in C so they survive reloads).
 * Three files (script.c, script_policy.c, script_sandbox.c; script_int.h).
 * Exactly one C function calls into Lua (script_call in script.c); every hook
 * below goes through it, so a script error can never crash the core.
 *
 * Return conventions seen from C (Lua side documented in docs/scripting.md):
 *   SCRIPT_ACCEPT  - go ahead (hook absent, returned nil/true)
 *   SCRIPT_REPLACE - go ahead with res->body instead (on_message, on_edit)
 *   SCRIPT_REJECT  - refuse: res->code (e.g. "rejected", "rate_limited",
 *                    "forbidden") and res->reason (one line)
 * A validation hook (connect, join, message, typing, history, presence, read,
 * edit, delete, react) that errors or blows its budget -> SCRIPT_REJECT with
 * code "script_error". on_retention is a query hook: it returns days
 * (script_on_retention).
 * A notification hook (leave, disconnect) that errors is logged and counted. */
#ifndef CHATD_SCRIPT_H
#define CHATD_SCRIPT_H
#include "script_types.h"
#include <stddef.h>
#include <stdint.h>

/* Loads the .lua files of dir (main entry: dir/policy.lua, which may require sibling
 * modules through the sandboxed loader). NULL + err ("file:line: msg") when
 * the folder does not load. */
script_host *script_new(const char *dir, const char *node_id, char *err, size_t errlen);
void script_free(script_host *h);

/* Build a new state from the folder, run its self-checks, swap it in. On any
 * failure keep the old one, fill err, return -1. Counted in
 * chat_script_reloads_total{result="ok"|"error"}. Call between events only. */
int script_reload(script_host *h, char *err, size_t errlen);
uint64_t script_version(const script_host *h);   /* increments on each swap */

/* Policy settings: the script's config table (e.g. config.max_body = 4000)
 * overridden by env CHAT_<UPPER_KEY> when set. Known keys used by the core:
 * heartbeat_ms, presence_ttl_ms, typing_ttl_ms, max_rooms_per_conn. */
int64_t script_setting(const script_host *h, const char *key, int64_t dflt);

/* Hooks. Each fills *res (call script_result_clear after) and returns the
 * verdict. msg hooks get the body and the client id (may be NULL). */
script_verdict script_on_connect(script_host *h, const script_ctx *c, script_result *res);
script_verdict script_on_join(script_host *h, const script_ctx *c, script_result *res);
void           script_on_leave(script_host *h, const script_ctx *c);
script_verdict script_on_message(script_host *h, const script_ctx *c, const char *body,
                                 size_t body_len, const char *id, script_result *res);
script_verdict script_on_typing(script_host *h, const script_ctx *c, script_result *res);
/* event: "join" or "leave" about (user,name); REJECT = suppress the event */
script_verdict script_on_presence(script_host *h, const script_ctx *c, const char *event,
                                  const char *user, const char *name, script_result *res);
script_verdict script_on_history(script_host *h, const script_ctx *c, script_result *res);
void           script_on_disconnect(script_host *h, const script_ctx *c);

/* Read receipts: on_read(ctx, {seq = N}) after a user read a room up to N;
 * REJECT = no receipt to the other members for this read (the read itself
 * is stored and acked). */
script_verdict script_on_read(script_host *h, const script_ctx *c, uint64_t seq, script_result *res);
/* Retention of c->room (c->user NULL): 1 with *days (>= 0; 0 = keep
 * forever) when the policy's on_retention returned a number, 0 when it is
 * absent or returned nil (the caller uses config history_days), -1 when it
 * failed (error, budget, or a value that is not days >= 0: logged, counted;
 * the caller keeps the room's history). */
int script_on_retention(script_host *h, const script_ctx *c, double *days);
/* script_setting for fractional values (history_days). */
double script_setting_num(const script_host *h, const char *key, double dflt);
/* 1 when the running policy defines M.<hook> (e.g. "on_retention"). */
int script_has_hook(const script_host *h, const char *hook);
/* The role claim of an admin (protocol.md "Message updates": "a token with
 * the policy's admin role deletes any"): the running policy's
 * config.admin_role when it is a string (CHAT_ADMIN_ROLE overrides it, as
 * any config key), else SCRIPT_ADMIN_ROLE. Valid until the next reload. */
#define SCRIPT_ADMIN_ROLE "admin"
const char *script_admin_role(const script_host *h);
/* on_edit may REPLACE the body (like on_message); on_delete and on_react
 * accept or refuse. A missing hook accepts here: the contract's default for
 * a policy without on_edit / on_delete is the caller's (chat_update.c). */
script_verdict script_on_edit(script_host *h, const script_ctx *c, const script_update *u,
                              script_result *res);
script_verdict script_on_delete(script_host *h, const script_ctx *c, const script_update *u,
                                script_result *res);
script_verdict script_on_react(script_host *h, const script_ctx *c, const script_update *u,
                               script_result *res);

void script_result_clear(script_result *res);
/* The error code a refusal answers the client with: the policy's code, or
 * "rejected" for none or a script error (the client is not told the
 * policy failed). Every caller of a verdict hook uses it. */
const char *script_reject_code(const script_result *res);

#endif
