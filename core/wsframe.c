/* wsframe: see wsframe.h. */
#include "wsframe.h"
#include <stdlib.h>
#include <string.h>

void wsf_init(wsf_parser *p, uint64_t max_message)
{
    memset(p, 0, sizeof *p);
    p->max_message = max_message;
    p->hneed = 2;
}

void wsf_free(wsf_parser *p)
{
    free(p->ctl);
    p->ctl = NULL;
}

/* state: 0 between characters, else (bytes still needed << 16) |
 * (lowest allowed next byte << 8) | highest allowed next byte. The narrow
 * ranges after E0, ED, F0 and F4 refuse overlong forms, surrogates and
 * code points over U+10FFFF. */
int wsf_utf8(uint32_t *state, const unsigned char *p, size_t n)
{
    uint32_t s = *state;
    for (size_t i = 0; i < n; i++) {
        unsigned c = p[i];
        if (!s) {
            if (c < 0x80) continue;
            if (c >= 0xC2 && c <= 0xDF) s = (1u << 16) | (0x80u << 8) | 0xBF;
            else if (c == 0xE0) s = (2u << 16) | (0xA0u << 8) | 0xBF;
            else if (c == 0xED) s = (2u << 16) | (0x80u << 8) | 0x9F;
            else if (c >= 0xE1 && c <= 0xEF) s = (2u << 16) | (0x80u << 8) | 0xBF;
            else if (c == 0xF0) s = (3u << 16) | (0x90u << 8) | 0xBF;
            else if (c >= 0xF1 && c <= 0xF3) s = (3u << 16) | (0x80u << 8) | 0xBF;
            else if (c == 0xF4) s = (3u << 16) | (0x80u << 8) | 0x8F;
            else { *state = s; return -1; }
        } else {
            if (c < ((s >> 8) & 0xFF) || c > (s & 0xFF)) { *state = s; return -1; }
            uint32_t need = (s >> 16) - 1;
            s = need ? (need << 16) | (0x80u << 8) | 0xBF : 0;
        }
    }
    *state = s;
    return 0;
}

int wsf_close_payload_check(const unsigned char *p, size_t n)
{
    if (n == 0) return 0;
    if (n == 1) return 1002;
    unsigned code = (unsigned)p[0] << 8 | p[1];
    /* 1004-1006 and 1015 are reserved (never on the wire); 1016-2999 are
     * for future RFCs; 3000-4999 are registered / private use */
    int ok = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
             (code >= 3000 && code <= 4999);
    if (!ok) return 1002;
    uint32_t st = 0;
    if (wsf_utf8(&st, p + 2, n - 2) < 0 || st) return 1007;
    return 0;
}

static int fail(wsf_parser *p, int code, const char *why)
{
    p->done = 1;
    p->reason = why;
    return code;
}

/* Checks what the first two header bytes allow us to check, before the
 * extended length and the mask key arrive. */
static int check_start(wsf_parser *p)
{
    unsigned b0 = p->hdr[0], b1 = p->hdr[1];
    p->fin = (uint8_t)(b0 >> 7);
    p->opcode = (uint8_t)(b0 & 0x0F);
    if (b0 & 0x70) return fail(p, 1002, "reserved bits set without an extension");
    switch (p->opcode) {
    case WSF_CONT:
        if (!p->in_message) return fail(p, 1002, "continuation without a message");
        break;
    case WSF_TEXT:
    case WSF_BINARY:
        if (p->in_message) return fail(p, 1002, "new message inside a fragmented one");
        break;
    case WSF_CLOSE:
    case WSF_PING:
    case WSF_PONG:
        if (!p->fin) return fail(p, 1002, "fragmented control frame");
        if ((b1 & 0x7F) > 125) return fail(p, 1002, "control frame over 125 bytes");
        break;
    default:
        return fail(p, 1002, "reserved opcode");
    }
    if (!(b1 & 0x80)) return fail(p, 1002, "client frame not masked");
    unsigned l7 = b1 & 0x7F;
    p->hneed = (uint8_t)(2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + 4);
    return 0;
}

/* The whole header is here: length and mask key. */
static int check_length(wsf_parser *p)
{
    unsigned l7 = p->hdr[1] & 0x7F;
    uint64_t len = l7;
    size_t k = 2;
    if (l7 == 126) {
        len = (uint64_t)p->hdr[2] << 8 | p->hdr[3];
        k = 4;
    } else if (l7 == 127) {
        if (p->hdr[2] & 0x80) return fail(p, 1002, "frame length over 2^63");
        len = 0;
        for (int i = 0; i < 8; i++) len = len << 8 | p->hdr[2 + i];
        k = 10;
    }
    memcpy(p->mask, p->hdr + k, 4);
    p->midx = 0;
    p->left = len;
    if (!(p->opcode & 8)) {
        /* a new message starts from 0: msg_len still holds the last one's */
        uint64_t held = p->opcode == WSF_CONT ? p->msg_len : 0;
        if (len > p->max_message || held + len > p->max_message)
            return fail(p, 1009, "message too big");
        if (p->opcode != WSF_CONT) {
            p->in_message = 1;
            p->msg_binary = p->opcode == WSF_BINARY;
            p->msg_len = 0;
            p->utf8 = 0;
        }
        p->msg_len += len;
    } else {
        p->ctl_len = 0;
    }
    return 0;
}

/* Data chunk: validate text, hand over; at the end of a final frame the
 * message ends. */
static int data_chunk(wsf_parser *p, const unsigned char *d, size_t n, const wsf_handlers *h, void *ud)
{
    int last = p->left == 0;
    int final = last && p->fin;
    if (!p->msg_binary) {
        if (wsf_utf8(&p->utf8, d, n) < 0) return fail(p, 1007, "invalid UTF-8 in a text message");
        if (final && p->utf8) return fail(p, 1007, "text message ends inside a UTF-8 sequence");
    }
    if (final) p->in_message = 0;
    if (!n && !final) return 0;
    if (h->data(ud, d, n, final, p->msg_binary) < 0) { p->done = 1; return -1; }
    return 0;
}

static int control_done(wsf_parser *p, const unsigned char *d, size_t n, const wsf_handlers *h, void *ud)
{
    if (p->opcode == WSF_CLOSE) {
        int bad = wsf_close_payload_check(d, n);
        if (bad) return fail(p, bad, bad == 1007 ? "close reason not UTF-8" : "invalid close payload");
        p->done = 1;    /* nothing counts after the peer's close */
    }
    if (h->control(ud, p->opcode, d, n) < 0) { p->done = 1; return -1; }
    return 0;
}

/* A chunk of a control frame's payload: the whole payload in one chunk is
 * handed over in place; pieces are gathered in p->ctl, freed at the end. */
static int control_chunk(wsf_parser *p, const unsigned char *d, size_t n, const wsf_handlers *h, void *ud)
{
    if (!p->ctl_len && !p->left) return control_done(p, d, n, h, ud);
    if (!p->ctl && !(p->ctl = malloc(125))) return fail(p, 1011, "out of memory");
    memcpy(p->ctl + p->ctl_len, d, n);
    p->ctl_len = (uint8_t)(p->ctl_len + n);
    if (p->left) return 0;
    int r = control_done(p, p->ctl, p->ctl_len, h, ud);
    wsf_free(p);
    return r;
}

int wsf_feed(wsf_parser *p, unsigned char *buf, size_t len, const wsf_handlers *h, void *ud)
{
    size_t i = 0;
    while (i < len && !p->done) {
        if (!p->in_payload) {
            p->hdr[p->hlen++] = buf[i++];
            if (p->hlen == 2) {
                int r = check_start(p);
                if (r) return r;
            }
            if (p->hlen < p->hneed) continue;
            int r = check_length(p);
            if (r) return r;
            p->hlen = 0;
            p->hneed = 2;
            p->in_payload = 1;
            if (p->left) continue;
        }
        size_t n = len - i;
        if (n > p->left) n = (size_t)p->left;
        unsigned char *d = buf + i;
        for (size_t k = 0; k < n; k++) d[k] ^= p->mask[(p->midx + k) & 3];
        p->midx = (uint8_t)((p->midx + n) & 3);
        p->left -= n;
        i += n;
        int r;
        if (p->opcode & 8) {
            r = control_chunk(p, d, n, h, ud);
        } else {
            r = data_chunk(p, d, n, h, ud);
        }
        if (!p->left) p->in_payload = 0;
        if (r) return r;
    }
    return 0;
}
