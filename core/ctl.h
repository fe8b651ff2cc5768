/* ctl: the protocol of the control channel between nodes (docs/api.md
 * "Control channel"): JSON objects {"op":..,"from":<node>,"req":<id>,...}
 * on the bus's control channel (bus_control / on_control), received by
 * every node, this one included. A node acts on an op through the handler
 * the layer above registered (ctl_on) and, when the message carries a
 * "req", answers the asking node with {"op":"reply","to":<node>,
 * "req":<id>,"n":<count>} on the same channel. A request (ctl_request)
 * gathers those answers until as many nodes as the channel reported have
 * answered or its deadline passes: the sum is then a lower bound.
 * Owns: the registered handlers, the requests waiting for answers (each
 * callback called exactly once unless cancelled first) and the timer of
 * their deadlines. Layer: above bus, below chat and the server API. */
#ifndef CHATD_CTL_H
#define CHATD_CTL_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <uv.h>
#include "bus.h"

/* What this node answers for msg (a count >= 0), or -1 for no answer. */
typedef long (*ctl_handler)(void *ud, json_t *msg);

void ctl_init(uv_loop_t *loop, bus *b, const char *node_id);
/* After bus_free: frees what is left, closes the timer. */
void ctl_shutdown(void);
/* Registers the handler of op (one per op; a later call replaces it). */
void ctl_on(const char *op, ctl_handler fn, void *ud);
/* The bus's on_control handler (data NULL: the channel was subscribed
 * again; the resync handlers run). */
void ctl_bus_message(void *ud, const char *data, size_t len);
/* Called when the channel was (re)subscribed: what was sent meanwhile
 * was missed (one handler; a later call replaces it). */
void ctl_on_resync(void (*fn)(void *ud), void *ud);

typedef struct ctl_wait ctl_wait;
/* status 0: total = the sum of the answers, answers = how many nodes
 * answered, expected = how many the channel reached (answers < expected:
 * the deadline passed first); status -1: the message was not sent. */
typedef void (*ctl_done_cb)(void *ud, int status, long total, long answers, long expected);
/* Sends msg (an object with "op"; "from" and "req" are added; the
 * reference is taken) to every node and gathers the answers for at most
 * timeout_ms. NULL when it cannot be sent now (cb not called); else cb
 * later, never from inside this call. */
ctl_wait *ctl_request(json_t *msg, uint32_t timeout_ms, ctl_done_cb cb, void *ud);
/* The asker goes away: its callback will not be called. */
void ctl_cancel(ctl_wait *w);
/* Sends msg (reference taken) to every node, no answers. 0 or -1. */
int ctl_send(json_t *msg);

#endif
