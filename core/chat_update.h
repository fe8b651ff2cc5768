/* chat_update: a connection's message-update frames (edit, delete, react;
 * protocol v2): see chat_update.c. */
#ifndef CHATD_CHAT_UPDATE_H
#define CHATD_CHAT_UPDATE_H
#include "conn.h"
#include "frame.h"
#include "script.h"

/* Metrics (at start). */
void chat_update_init(void);
/* A parsed edit, delete or react frame of c. */
void chat_update_frame(conn *c, const client_frame *f);

#endif
