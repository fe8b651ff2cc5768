/* msg: a refcounted outbound WebSocket frame, encoded once and shared by
 * every recipient (Redis pubsub.c habit). The payload sits after LWS_PRE
 * bytes of headroom into which the server->client frame header (FIN|text,
 * unmasked, 2/4/10 bytes) is written once, so the wire bytes of the frame are
 * one contiguous range that can go straight into writev().
 * Owns: its buffer. Freed when the last reference is dropped. */
#ifndef CHATD_MSG_H
#define CHATD_MSG_H
#include <stddef.h>
#include <stdint.h>
#include <libwebsockets.h>

typedef struct msg {
    uint32_t refs;
    uint16_t hdr;          /* header bytes in front of the payload */
    uint16_t kind;         /* MSG_* below, for metrics */
    size_t len;            /* payload bytes */
    uint64_t seq;          /* room seq for message frames, else 0 */
    uint64_t born_ns;      /* mono time the frame entered delivery (lag) */
    unsigned char buf[];   /* LWS_PRE headroom + payload */
} msg;

enum { MSG_OTHER = 0, MSG_MESSAGE = 1 };

/* Allocates a frame with room for len payload bytes; fill msg_payload(m)
 * then call msg_seal(m, len). refs = 1. */
msg *msg_alloc(size_t cap);
static inline unsigned char *msg_payload(msg *m) { return m->buf + LWS_PRE; }
void msg_seal(msg *m, size_t len);
/* Copies payload into a new sealed frame. */
msg *msg_new(const char *payload, size_t len);

static inline msg *msg_ref(msg *m) { m->refs++; return m; }
void msg_unref(msg *m);

static inline const unsigned char *msg_wire(const msg *m) { return m->buf + LWS_PRE - m->hdr; }
static inline size_t msg_wire_len(const msg *m) { return m->hdr + m->len; }

#endif
