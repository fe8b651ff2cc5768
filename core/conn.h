/* conn: one WebSocket connection after its upgrade, and the one owner of
 * its transport state.
 * Owns: its identity (and its place in the heap of token deadlines), its
 * memberships (conn_room: the slots; what a join does is chat_join.c's),
 * its bounded outbound queue, its partial inbound message, its pending
 * publishes (publish_owner: chat.c detaches them when it closes), and its
 * state flags: one word of CONN_* bits (conn.c) that only conn.c writes.
 * Other files act through the verbs below and ask through conn_is_*().
 * Every list a connection is on (all connections, the flush list) and the
 * deadline heap keep their node in the connection: leaving is O(1)
 * (O(log n) for the heap), never a walk.
 * Output: frames are queued (conn_send) and written by the loop's flush
 * step (conn_flush_all, before the loop sleeps) with one writev() per
 * connection for everything queued, straight from the shared frames. Only a
 * partly written frame is handed to lws (its remainder), after which output
 * resumes in the WRITEABLE callback.
 * Close path (RFC 6455 7.1): closing never frees on the caller's stack: a
 * close verb marks the connection and asks lws for a WRITEABLE callback,
 * where exactly one close frame (code + reason) is written by us at a frame
 * boundary; nothing is queued or written after it (conn_send refuses, the
 * queue is cleared). Then our side is shut (FIN) and we wait for the peer's
 * close frame or EOF (read by wsread.c) or a timeout (3 s; 5 s while the
 * frame cannot be written) before lws drops the socket. A close the peer
 * started, or a protocol failure, is answered with its code and dropped at
 * once. The connection is freed in lws CLOSED: ws.c marks it closed
 * (conn_mark_closed), chat.c leaves its rooms and detaches its work
 * (chat_conn_closed), then conn_destroy frees it.
 * Input after the upgrade is read by wsread.c, never by lws. */
#ifndef CHATD_CONN_H
#define CHATD_CONN_H
#include <stddef.h>
#include <stdint.h>
#include <libwebsockets.h>
#include "auth.h"
#include "client_ip.h"
#include "heap.h"
#include "msg.h"
#include "outq.h"
#include "publish_owner.h"
#include "room.h"
#include "wsframe.h"

/* A node of a list of connections, kept in the connection (O(1) unlink). */
typedef struct conn_link { struct conn *prev, *next; } conn_link;

typedef struct conn {
    int tag;                /* ws.c's kind tag of lws' opaque pointer: first (ws.c) */
    int fd;
    uint64_t id;            /* unique per node across restarts (see conn_new) */
    struct lws *wsi;
    identity ident;         /* change it with conn_set_identity (the deadline follows) */
    const char *url_room;   /* in strs */
    const char *ip;         /* client address (client_ip.h), for limits and logs; in strs */
    uint64_t since;         /* with has_since: the URL's since= */
    conn_room **rooms;
    uint32_t nrooms, caprooms;
    outq q;
    unsigned char *rx;      /* partial inbound message (wsread.c) */
    uint32_t rx_len, rx_cap;/* < 2 * CHAT_MAX_FRAME, at most 1 GiB (config.c): 32 bits */
    wsf_parser rxp;         /* client frame parser (wsread.c) */
    publish_owner pubs;     /* pending publishes (detached on close) */
    /* ---- conn.c's alone: read through the functions below ---- */
    uint16_t flags;         /* CONN_* bits (conn.c; 10 so far, 16 fit) */
    uint16_t close_code;
    uint8_t rx_paused;      /* reasons (CONN_RX_*) not to read input now */
    uint8_t close_off;      /* bytes of our close frame written */
    uint8_t has_since;      /* the URL had since= (not conn.c's: here for the padding) */
    char *close_reason;     /* malloc'd when the close starts (< CONN_CLOSE_REASON_MAX) */
    conn_link all;          /* every connection (conn_first / conn_next) */
    conn_link flush;        /* connections with output to write */
    heap_node exp;          /* token deadline: ident.exp */
    char strs[];            /* url_room and ip, each sized to fit */
} conn;

/* A close reason is cut to CONN_CLOSE_REASON_MAX - 1 bytes: 123, the most a
 * close frame holds (RFC 6455 5.5: a control frame's payload is at most
 * 125 bytes, 2 of them the code), so a server API reason reaches the
 * client whole when it can. */
#define CONN_CLOSE_REASON_MAX 124

/* Registers the connection metrics (so they exist before the first one). */
void conn_metrics_init(void);
/* A new connection with its identity (moved), URL room and client address;
 * NULL when out of memory. Its id: a base taken from the wall clock at the process's first
 * connection (ms << 16) plus a counter, so a node restarted with the same
 * node id never reuses an id of its previous run (presence members are
 * "node|conn id|user"). */
conn *conn_new(struct lws *wsi, identity *ident /* moved */, const char *room, const char *ip);
/* lws CLOSED, first: the socket is gone. Nothing is sent or queued from now
 * on; the connection leaves the flush list and the deadline heap. */
void conn_mark_closed(conn *c);
/* lws CLOSED, last (after chat_conn_closed left the rooms): unlinks the
 * connection and frees it with its queue, buffers and identity. */
void conn_destroy(conn *c);

/* Queues a frame; on a full queue closes the connection with 1008 (slow
 * consumer). Returns 0 queued, -1 dropped (full, closing or closed). */
int conn_send(conn *c, msg *m);
int conn_send_text(conn *c, const char *s, size_t len);
/* Error frame {"type":"error","code":...,"message":...,"id"?} */
void conn_send_error(conn *c, const char *code, const char *message, const char *id);
/* The same with "room" (when room is not NULL/""): an error about one room,
 * e.g. answering a join or leave (id: the frame's, echoed when not NULL). */
void conn_send_error_room(conn *c, const char *code, const char *message, const char *id,
                          const char *room);

/* ---- closing: the verbs (conn.c alone changes the close state) ---- */
/* Closes with code/reason soon (4001, 1008, 1011...): the queue is dropped,
 * the close frame goes out at the next WRITEABLE. Replaces a pending
 * drain; nothing when a close is already under way. */
void conn_close(conn *c, uint16_t code, const char *reason);
/* Same, and also replaces a pending close of another code unless its frame
 * is (partly) out: protocol errors and the answer to the peer's close. */
void conn_close_now(conn *c, uint16_t code, const char *reason);
/* The drain (SIGTERM): what is queued goes out first, then the close frame.
 * Nothing when a close is already under way. */
void conn_close_after_flush(conn *c, uint16_t code, const char *reason);
/* Fails the connection (RFC 6455 7.1.7: a framing error or an oversized
 * message): closes now with code and drops the socket as soon as the close
 * frame is out, without waiting for the peer's answer. */
void conn_fail(conn *c, uint16_t code, const char *reason);
/* Our failure serving the connection (an allocation for it failed: its
 * input's buffers in wsread/wsframe, a join's hold or admission in chat):
 * fails it with 1011 "out of memory" (as conn_fail) and counts it in
 * chat_ws_server_errors_total{reason="out_of_memory"}, the one place that
 * counts a 1011. */
void conn_close_oom(conn *c);
/* The peer's close frame arrived (code: its code, 1000 when it gave none):
 * answered with the same code and dropped (or dropped at once when it
 * answers ours). Returns -1 when the connection is done (stop reading). */
int conn_peer_close(conn *c, uint16_t code);
/* Drops the TCP connection without a close frame (EOF, socket error):
 * lws closes it at its next WRITEABLE or timeout. */
void conn_kill(conn *c);
/* 1 once any close is under way (a drain too) or the socket is gone: its
 * input is moot and no new work should start for it. */
int conn_is_closing(const conn *c);

/* ---- lws and the loop ---- */
/* Called from WRITEABLE: writes what it can, performs a requested close.
 * Returns -1 when lws should close the connection now. */
int conn_on_writeable(conn *c);
/* Flush every connection with queued output (before the loop sleeps). */
void conn_flush_all(void);
/* Once a second (server tick): every queue that stayed empty since the
 * previous call gives its grown ring back (outq_trim); the queues still
 * holding one are the gauge chat_outq_rings. Returns how many were freed. */
size_t conn_trim_queues(void);

/* ---- input (wsread.c) ---- */
/* Input pause (a join in progress...): while any reason bit is set the
 * socket is not read (the kernel buffers, TCP slows the peer). */
enum { CONN_RX_JOIN = 1 };
void conn_rx_pause(conn *c, unsigned reason, int paused);
int conn_rx_paused(const conn *c);
/* Set by the input reader (wsread): called when the pause changes. */
extern void (*conn_rx_changed)(conn *c);
/* wsread's registration of the socket in its epoll set. */
void conn_set_reading(conn *c, int on);
int conn_is_reading(const conn *c);

/* ---- identity and its deadline ---- */
/* Replaces the identity (refresh; nid is moved); the token deadline moves
 * with ident.exp. */
void conn_set_identity(conn *c, identity *nid /* moved */);
/* Takes the next connection whose token expired at now_s (ident.exp <=
 * now_s) out of the deadline heap, NULL when none: O(log n) per expired
 * connection, O(1) when none. The caller closes it (4001). */
conn *conn_next_expired(int64_t now_s);

conn_room *conn_find_room(conn *c, const char *room);
/* Iteration over all connections (drain). */
conn *conn_first(void);
conn *conn_next(const conn *c);
size_t conn_count(void);

#endif
