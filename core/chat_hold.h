/* chat_hold: the frames of a connection that wait for its joins.
 * A frame that arrives while one of the connection's joins (the URL room's
 * at connect, or a `join` frame) or its admission (chat_admit.h, through
 * the waiting callback) is in progress is held, and processed in
 * order once no join of the connection is in progress (issue 11 defect 5:
 * otherwise a message sent right after connecting could be folded into the
 * join's head and never reach its sender). Reading the socket is paused
 * meanwhile (conn_rx_pause: wsread takes it out of its epoll set); beyond
 * CHAT_MAX_QUEUE frames or CHAT_MAX_QUEUE_BYTES bytes held the connection
 * is closed with 1008. Held frames of a connection that is closing are
 * dropped, not processed.
 * Owns: the held frames per connection and the zero timer that resumes
 * them (never inside the callback that finished a join). Layer: with chat. */
#ifndef CHATD_CHAT_HOLD_H
#define CHATD_CHAT_HOLD_H
#include <stddef.h>
#include "conn.h"

/* process: how a frame is handled once it may go on; waiting: 1 while
 * something besides a join holds c's frames (NULL: nothing). chat.c gives
 * both (its frame dispatch, and chat_admit_pending), so this file calls
 * nothing above it. */
void chat_hold_init(void (*process)(conn *c, const char *data, size_t len),
                    int (*waiting)(const conn *c));
/* 1 when the frame was held (or the connection was closed for holding too
 * much); 0 when it is to be processed now. */
int chat_hold_frame(conn *c, const char *data, size_t len);
/* A join of c finished: its held frames may go on. */
void chat_hold_join_done(conn *c);
/* c is gone (lws CLOSED): its held frames are dropped. */
void chat_hold_conn_closed(conn *c);
/* At exit: closes the timer (runs the loop once for it), frees the map. */
void chat_hold_shutdown(void);

#endif
