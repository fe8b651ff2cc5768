/* script_types: the values that cross the policy host's face: the ctx a
 * hook is called with, a message update, the verdict and result a hook
 * answers (their meaning: script.h). Owns nothing; no code. Below the three
 * files of the host (script.c, script_policy.c, script_sandbox.c) and
 * everything that calls a hook. */
#ifndef CHATD_SCRIPT_TYPES_H
#define CHATD_SCRIPT_TYPES_H
#include <stddef.h>
#include <stdint.h>

typedef struct script_host script_host;

typedef struct script_ctx {
    const char *user;         /* sub */
    const char *name;         /* display name */
    const char *claims_json;  /* whole JWT claims object (JSON) or NULL */
    const char *room;         /* room the action is about, or NULL */
    const char *node;         /* node id */
    uint64_t now_ms;          /* wall clock ms */
    const char *source;       /* what asks: "ws" (a WebSocket connection),
                               * "http" (history/presence routes), "api"
                               * (the server API); NULL (ctx.source nil):
                               * not a request (presence transitions,
                               * retention) */
} script_ctx;

typedef enum { SCRIPT_ACCEPT = 0, SCRIPT_REPLACE = 1, SCRIPT_REJECT = 2 } script_verdict;

typedef struct script_result {
    script_verdict verdict;
    char code[32];
    char reason[256];
    char *body;        /* malloc'd replacement body for SCRIPT_REPLACE */
    size_t body_len;
    int has_number;    /* on_retention returned a number: */
    double number;     /* ... the days */
} script_result;

/* Message updates (v2): the update and its target (docs/scripting.md). */
typedef struct script_update {
    uint64_t target;          /* seq of the message */
    const char *author;       /* the message's author (sub) */
    const char *id;           /* client id, or NULL */
    const char *body; size_t body_len;   /* on_edit: the new body */
    const char *emoji;        /* on_react */
    int on;                   /* on_react: 1 adds, 0 removes */
} script_update;

#endif
