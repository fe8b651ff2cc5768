/* wsframe: the server side of RFC 6455 framing for client -> server bytes,
 * written for chatd rather than left to libwebsockets (whose 4.1 parser
 * accepts unmasked frames, waits for the payload of a frame declared over
 * the limit, and drops oversized control frames without a close frame).
 * A pure incremental parser: bytes in, unmasked message chunks and control
 * frames out through callbacks; on the first violation it answers the close
 * code to send (1002 protocol error, 1007 invalid UTF-8, 1009 too big, 1011
 * when the control-frame buffer cannot be allocated) and
 * ignores everything after it, as it does after the peer's close frame.
 * Owns: the parse state of one connection, and the buffer of a control
 * frame split over reads while it lasts (wsf_free). */
#ifndef CHATD_WSFRAME_H
#define CHATD_WSFRAME_H
#include <stddef.h>
#include <stdint.h>

enum { WSF_CONT = 0, WSF_TEXT = 1, WSF_BINARY = 2, WSF_CLOSE = 8, WSF_PING = 9, WSF_PONG = 10 };

typedef struct wsf_handlers {
    /* A chunk of a data message (already unmasked; text chunks are valid
     * UTF-8 so far). final = 1 on the message's last chunk (possibly empty).
     * Return 0 to go on, -1 to stop parsing (the caller closes). */
    int (*data)(void *ud, const unsigned char *p, size_t n, int final, int binary);
    /* A complete, valid control frame: ping, pong or close (a close payload
     * is empty or a valid code + UTF-8 reason). Same return values. */
    int (*control)(void *ud, int opcode, const unsigned char *p, size_t n);
} wsf_handlers;

typedef struct wsf_parser {
    uint64_t max_message;     /* a data message over this closes with 1009 */
    uint64_t left;            /* payload bytes left in the current frame */
    uint64_t msg_len;
    const char *reason;       /* why, for the close frame */
    /* a control frame's payload that came in more than one read, malloc'd
     * (125 bytes) for that frame only; NULL otherwise: a payload read whole
     * is handed over in place (one connection holds no 125-byte buffer) */
    unsigned char *ctl;
    uint32_t utf8;            /* text validation state across fragments */
    unsigned char hdr[14];
    uint8_t hlen, hneed;      /* header bytes held / needed */
    uint8_t opcode, fin;
    uint8_t mask[4], midx;
    uint8_t ctl_len;
    uint8_t in_payload;
    uint8_t in_message;       /* a fragmented data message is open */
    uint8_t msg_binary;
    uint8_t done;             /* failed, stopped or close received */
} wsf_parser;

void wsf_init(wsf_parser *p, uint64_t max_message);
/* Frees what the parser holds (a split control frame's payload). */
void wsf_free(wsf_parser *p);

/* Parses len bytes (unmasked in place). Returns 0 when everything was
 * consumed (or ignored after the end), a close code >= 1000 on a violation
 * (p->reason says why), or -1 when a handler asked to stop. */
int wsf_feed(wsf_parser *p, unsigned char *buf, size_t len, const wsf_handlers *h, void *ud);

/* Close payload check (RFC 6455 5.5.1, 7.4): 0 valid, else the close code
 * to answer (1002 bad length or code, 1007 reason not UTF-8). */
int wsf_close_payload_check(const unsigned char *p, size_t n);

/* Incremental UTF-8 validation: *state 0 at the start; returns -1 on an
 * invalid sequence. Complete when it returns 0 and *state is 0. */
int wsf_utf8(uint32_t *state, const unsigned char *p, size_t n);

#endif
