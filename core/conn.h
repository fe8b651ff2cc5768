/* conn: one authenticated WebSocket connection.
 * Owns: its identity, its memberships (conn_room) and their pending join
 * work, its bounded outbound queue, its partial inbound frame, and the list
 * of its pending publishes (which it cancels when it goes away).
 * Output: frames are queued (conn_send) and written by the loop's flush
 * step (conn_flush_all, before the loop sleeps) with one writev() per
 * connection for everything queued, straight from the shared frames. Only a
 * partly written frame is handed to lws (its remainder), after which output
 * resumes in the WRITEABLE callback. Closing never frees on the caller's
 * stack: conn_close marks the connection and asks lws for a WRITEABLE
 * callback, in which the close happens (lws frees it in CLOSED).
 * Close path (RFC 6455 7.1): exactly one close frame, written by us at a
 * frame boundary; nothing is queued or written after it (conn_send refuses,
 * the queue is cleared); then our side is shut (FIN) and we wait for the
 * peer's close frame or EOF (or a timeout) before lws drops the socket. A
 * close the peer started is answered with its code and dropped at once.
 * Input after the upgrade is read by wsread.c, never by lws. */
#ifndef CHATD_CONN_H
#define CHATD_CONN_H
#include <stddef.h>
#include <stdint.h>
#include <libwebsockets.h>
#include "auth.h"
#include "msg.h"
#include "outq.h"
#include "publish.h"
#include "room.h"
#include "wsframe.h"

struct join_op;

typedef struct conn_room {
    struct conn *c;
    room *r;
    uint32_t midx;          /* index in r->members */
    int live;               /* 0 while the join/replay is in progress */
    uint64_t last_seq;      /* last seq delivered to this connection */
    msg **held;             /* live frames that arrived while joining */
    uint32_t nheld, capheld;
    struct join_op *op;     /* pending join work, cancelled on leave */
} conn_room;

typedef struct conn {
    uint64_t id;
    struct lws *wsi;
    int fd;
    identity ident;
    char url_room[CHAT_ROOM_MAX + 1];
    char ip[46];            /* client address (client_ip.h), for limits and logs */
    int has_since;
    uint64_t since;
    conn_room **rooms;
    uint32_t nrooms, caprooms;
    outq q;
    unsigned char *rx;      /* partial inbound message */
    size_t rx_len, rx_cap;
    int welcomed;
    int closing;            /* 1: close requested */
    int close_after_flush;  /* close once the queue is empty (drain) */
    uint16_t close_code;
    char close_reason[64];
    int in_flush_list;
    int lws_has_tail;       /* lws holds the rest of a partly written frame */
    int closed;             /* CLOSED seen: wsi gone */
    int close_sent;         /* our close frame is out; waiting for the peer */
    int peer_closed;        /* the peer's close frame arrived: drop once ours is out */
    int killed;             /* drop without a frame at the next WRITEABLE */
    int reading;            /* registered with wsread (its epoll set) */
    unsigned rx_paused;     /* reasons (bits) not to read input now */
    wsf_parser rxp;         /* client frame parser (wsread.c) */
    unsigned char close_frame[128];
    size_t close_len, close_off;
    struct conn *flush_next;
    publish_owner pubs;     /* pending publishes (detached on close) */
    struct conn *all_prev, *all_next;
    uint64_t opened_ms;
} conn;

/* Registers the connection metrics (so they exist before the first one). */
void conn_metrics_init(void);
conn *conn_new(struct lws *wsi, identity *ident /* moved */, const char *room);
/* Called from lws CLOSED: leaves every room, cancels pending work, frees. */
void conn_destroy(conn *c);

/* Queues a frame; on a full queue closes the connection with 1008 (slow
 * consumer). Returns 0 queued, -1 dropped. */
int conn_send(conn *c, msg *m);
int conn_send_text(conn *c, const char *s, size_t len);
/* Error frame {"type":"error","code":...,"message":...,"id"?} */
void conn_send_error(conn *c, const char *code, const char *message, const char *id);

void conn_close(conn *c, uint16_t code, const char *reason);
/* Closes with this code even while a drain (1001 after the queue) is
 * pending: protocol errors and the answer to the peer's close. */
void conn_close_now(conn *c, uint16_t code, const char *reason);
/* Input pause (a join in progress...): while any reason bit is set the
 * socket is not read (the kernel buffers, TCP slows the peer). */
enum { CONN_RX_JOIN = 1 };
void conn_rx_pause(conn *c, unsigned reason, int paused);
/* Set by the input reader (wsread): called when rx_paused changes. */
extern void (*conn_rx_changed)(conn *c);
/* Drops the TCP connection without a close frame (EOF, socket error, the
 * peer's answer to our close): lws closes it at its next timeout check. */
void conn_kill(conn *c);
/* Called from WRITEABLE: writes what it can, performs a requested close.
 * Returns -1 when lws should close the connection now. */
int conn_on_writeable(conn *c);
/* Flush every connection with queued output (before the loop sleeps). */
void conn_flush_all(void);

conn_room *conn_find_room(conn *c, const char *room);
/* Iteration over all live connections (drain, expiry). */
conn *conn_first(void);
size_t conn_count(void);

#endif
