/* msg: see msg.h. */
#include "msg.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

msg *msg_alloc(size_t cap)
{
    msg *m = malloc(sizeof *m + LWS_PRE + cap);
    if (!m) return NULL;
    m->refs = 1;
    m->hdr = 0;
    m->kind = MSG_OTHER;
    m->len = 0;
    m->seq = 0;
    m->born_ns = mono_ns();
    return m;
}

void msg_seal(msg *m, size_t len)
{
    unsigned char *p = m->buf + LWS_PRE;
    m->len = len;
    if (len < 126) {
        p[-2] = 0x81;
        p[-1] = (unsigned char)len;
        m->hdr = 2;
    } else if (len <= 0xffff) {
        p[-4] = 0x81;
        p[-3] = 126;
        p[-2] = (unsigned char)(len >> 8);
        p[-1] = (unsigned char)len;
        m->hdr = 4;
    } else {
        p[-10] = 0x81;
        p[-9] = 127;
        for (int i = 0; i < 8; i++) p[-1 - i] = (unsigned char)((uint64_t)len >> (8 * i));
        m->hdr = 10;
    }
}

msg *msg_new(const char *payload, size_t len)
{
    msg *m = msg_alloc(len);
    if (!m) return NULL;
    memcpy(msg_payload(m), payload, len);
    msg_seal(m, len);
    return m;
}

void msg_unref(msg *m)
{
    if (m && --m->refs == 0) free(m);
}
