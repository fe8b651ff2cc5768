/* chat_admin: the server API's actions on this node's connections, as the
 * control channel delivers them to every node (ctl.h ops): "disconnect"
 * (close a user's connections with 4003 and the reason), "ban" (record
 * it in bans.h, then close the user's connections with 4003, or remove
 * them from the banned room with {"type":"error","code":"banned","room"}),
 * "unban" and "count" (a room's connections here). Each answers its
 * count. Also the ban checks of connections: at open (a ban that came
 * between the upgrade gate and ESTABLISHED) and at join.
 * Owns nothing across calls. Layer: with chat. */
#ifndef CHATD_CHAT_ADMIN_H
#define CHATD_CHAT_ADMIN_H
#include "conn.h"

/* Registers the control-channel handlers (after ctl_init). */
void chat_admin_init(void);
struct adminstore;
/* With Redis: where bans are stored; they are read again (replacing this
 * node's copy, then enforced on its connections) whenever the control
 * channel was subscribed again or the store's link came up. */
void chat_admin_set_store(struct adminstore *a);
/* Reads the bans again now (the store's link came up). */
void chat_admin_resync(void *ud);
/* 1 when c's user is banned from room: the client got the `banned` error
 * (join) — the caller stops there. */
int chat_admin_join_banned(conn *c, const char *room, const char *id);
/* 1 when c's user is banned from its URL room (a ban that arrived after
 * the upgrade gate): c is being closed with 4003. */
int chat_admin_open_banned(conn *c);
/* Close code and reason length of the API's closes. */
#define CHAT_ADMIN_CLOSE 4003

#endif
