/* connlimit: connection limits per client IP and per user on this node
 * (CHAT_MAX_CONNS_PER_IP, CHAT_MAX_CONNS_PER_USER; 0: no limit). A loopback
 * client address (client_ip.h ip_is_loopback: a local tool, a benchmark,
 * or a local proxy not listed in CHAT_TRUSTED_PROXIES, whose clients would
 * all share its address) is not limited per IP; the per-user limit holds
 * for every connection. A slot is
 * taken at the upgrade gate (refused: HTTP 429 before the upgrade; 503 when
 * the count cannot be stored) and given back when the connection, or the
 * upgrade that never completed, goes away (ws.c).
 * The per-user count is also kept across nodes (uconns.h, with Redis):
 * this node's count is what it writes there.
 * Owns: the counts (hmap: key -> count). */
#ifndef CHATD_CONNLIMIT_H
#define CHATD_CONNLIMIT_H
#include <stddef.h>
#include <stdint.h>

typedef enum { LIMIT_OK = 0, LIMIT_IP = 1, LIMIT_USER = 2, LIMIT_OOM = 3 } limit_result;

void connlimit_init(int64_t max_per_ip, int64_t max_per_user);
void connlimit_free(void);
/* Takes one slot for ip and one for user (both, or neither). */
limit_result connlimit_acquire(const char *ip, const char *user);
void connlimit_release(const char *ip, const char *user);
/* Current counts (tests, metrics). */
int64_t connlimit_count_ip(const char *ip);
int64_t connlimit_count_user(const char *user);
/* Calls fn for every user with connections here whose entry is in the
 * slots [from, to) of the user map, with the count (a walk in parts: see
 * uconns.c); returns the map's slot count (to is clamped to it). fn must
 * not change the counts. */
size_t connlimit_each_user(size_t from, size_t to,
                           void (*fn)(void *ud, const char *user, int64_t n), void *ud);

#endif
