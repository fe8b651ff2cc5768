/* uconns: CHAT_MAX_CONNS_PER_USER across every node sharing a Redis. The
 * per-node count (connlimit.h) stays the first gate, at the upgrade (429).
 * Each node writes its own count of a user's connections into the user's
 * hash in Redis (adminstore.h, the user's slot on a Cluster), valid for
 * CHAT_USER_CONNS_TTL_MS: at every admission, at every close, and every
 * user's count again once per third of the TTL (one pass per node, driven
 * by the server's tick), so a node that dies takes its counts with it
 * within the TTL, and a write lost while Redis was away is repaired by the
 * next pass. An admission is one round trip right after the upgrade (the
 * upgrade filter of lws cannot wait): the counts of every node, the
 * newcomer included, above the limit refuse it (the caller closes it).
 * Without Redis (or with no limit) it is off: one node is the cluster.
 * Redis unreachable: a newcomer is let through (the per-node limit still
 * holds), logged once per outage, counted in
 * chat_conn_limit_unchecked_total.
 * Owns: the pending admissions (uconns_req: the reply frees it; cancel
 * only detaches the caller) and the refresh schedule.
 * Layer: beside climit (over adminstore and connlimit). */
#ifndef CHATD_UCONNS_H
#define CHATD_UCONNS_H
#include <stdint.h>

struct adminstore;
typedef struct uconns_req uconns_req;

enum { UCONNS_ALLOW = 1, UCONNS_PENDING = 2 };

/* allowed 1 (total: the user's connections on every node, or -1 when it
 * could not be counted: let through) or 0 (refused, total over the limit). */
typedef void (*uconns_cb)(void *ud, int allowed, int64_t total);

/* a NULL or max <= 0: off. node: this node's id (its field in Redis). */
void uconns_init(struct adminstore *a, const char *node, int64_t max, uint64_t ttl_ms);
/* Before the store is freed: no more writes (the counts expire). */
void uconns_stop(void);
int uconns_enabled(void);
/* user's new connection, already counted by connlimit on this node:
 * UCONNS_ALLOW now (off, or Redis unreachable), or UCONNS_PENDING and
 * cb later (never from inside this call) with *req set until then. */
int uconns_admit(const char *user, uconns_cb cb, void *ud, uconns_req **req);
/* The caller goes away: cb is not called. */
void uconns_cancel(uconns_req *r);
/* user's count on this node changed (a close): writes it. */
void uconns_changed(const char *user);
/* The server's tick: every third of the TTL (and when Redis comes back),
 * this node's count of every user with connections here is written. */
void uconns_tick(uint64_t mono_ms);
/* Refresh passes so far (tests). */
uint64_t uconns_passes(void);

#endif
