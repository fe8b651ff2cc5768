/* chat_admit: a new connection's cluster-wide admission (uconns.h:
 * CHAT_MAX_CONNS_PER_USER counted on every node), between the upgrade
 * (ESTABLISHED) and the join of its URL room. While it is pending, the
 * connection has joined nothing (no welcome, no presence) and its frames
 * are held (chat_hold.h), so nothing it sends is processed or published
 * before the answer. Admitted: the URL room's join starts. Refused: the
 * client gets {"type":"error","code":"rate_limited"} and the close 1008
 * "too many connections for this user" (docs/api.md "Connections per
 * user"); its held frames are dropped.
 * Owns: the pending admissions (conn id -> admit), cancelled when the
 * connection goes away. Layer: with chat. */
#ifndef CHATD_CHAT_ADMIT_H
#define CHATD_CHAT_ADMIT_H
#include "conn.h"

#define CHAT_ADMIT_CLOSE 1008
#define CHAT_ADMIT_REASON "too many connections for this user"

/* Admits c, then joins its URL room (epoch: the URL's, may be NULL). */
void chat_admit_start(conn *c, const char *epoch);
/* 1 while c's admission is pending (its frames wait). */
int chat_admit_pending(const conn *c);
/* c is gone: its pending admission is cancelled. */
void chat_admit_conn_closed(conn *c);
/* At exit. */
void chat_admit_shutdown(void);

#endif
