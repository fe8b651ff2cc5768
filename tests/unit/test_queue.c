/* Unit tests of the outbound path's building blocks: msg (refcounted
 * frames with the WebSocket header pre-written in the headroom), outq (the
 * bounded per-connection queue: bounds by frames and bytes, iovecs, partial
 * writes) and hmap (the room registry's map). */
#include "hmap.h"
#include "msg.h"
#include "outq.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fails, checks;
#define CHECK(c, what) do { checks++; if (!(c)) { fails++; printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, what); } } while (0)

static void test_msg_header(void)
{
    /* 2-byte header below 126 bytes, 4 bytes to 65535, 10 beyond */
    size_t sizes[] = {0, 1, 125, 126, 65535, 65536, 200000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        char *p = malloc(n + 1);
        memset(p, 'x', n);
        msg *m = msg_new(p, n);
        const unsigned char *w = msg_wire(m);
        CHECK(w[0] == 0x81, "FIN + text opcode");
        if (n < 126) {
            CHECK(m->hdr == 2 && w[1] == n, "7-bit length, unmasked");
        } else if (n <= 65535) {
            CHECK(m->hdr == 4 && w[1] == 126 && (size_t)(w[2] << 8 | w[3]) == n, "16-bit length");
        } else {
            size_t got = 0;
            for (int k = 0; k < 8; k++) got = got << 8 | w[2 + k];
            CHECK(m->hdr == 10 && w[1] == 127 && got == n, "64-bit length");
        }
        CHECK(msg_wire_len(m) == m->hdr + n, "wire length = header + payload");
        CHECK(memcmp(w + m->hdr, p, n) == 0, "payload follows the header");
        msg_unref(m);
        free(p);
    }
}

static int g_done;
static void on_done(msg *m, void *ud) { (void)m; (void)ud; g_done++; }

static void test_refcount_shared(void)
{
    msg *m = msg_new("{\"a\":1}", 7);
    outq a, b;
    outq_init(&a, 8, 1 << 20);
    outq_init(&b, 8, 1 << 20);
    CHECK(outq_push(&a, m) == 0 && outq_push(&b, m) == 0, "one frame queued on two queues");
    CHECK(m->refs == 3, "each queue holds a reference");
    msg_unref(m);                          /* the producer lets go */
    CHECK(m->refs == 2, "queues keep it alive");
    g_done = 0;
    outq_consume(&a, msg_wire_len(m), on_done, NULL);
    CHECK(g_done == 1 && m->refs == 1, "written on a: one reference left");
    outq_clear(&b);                        /* frees the frame (ASan checks) */
    outq_clear(&a);
}

static void test_bounds(void)
{
    outq q;
    outq_init(&q, 3, 1 << 20);
    msg *m = msg_new("hello", 5);
    for (int i = 0; i < 3; i++) CHECK(outq_push(&q, m) == 0, "within the frame bound");
    CHECK(outq_push(&q, m) == -1, "the 4th frame is refused (CHAT_MAX_QUEUE)");
    CHECK(q.count == 3 && m->refs == 4, "a refused push takes no reference");
    outq_clear(&q);
    CHECK(m->refs == 1, "clear drops every reference");

    outq_init(&q, 1000, 20);                /* 7 wire bytes per frame */
    CHECK(outq_push(&q, m) == 0 && outq_push(&q, m) == 0, "14 bytes fit in 20");
    CHECK(outq_push(&q, m) == -1, "21 bytes do not (CHAT_MAX_QUEUE_BYTES)");
    CHECK(q.bytes == 14, "bytes accounted");
    outq_clear(&q);
    msg_unref(m);
}

static void test_iov_and_partial(void)
{
    outq q;
    outq_init(&q, 100, 1 << 20);
    msg *m1 = msg_new("aaaa", 4), *m2 = msg_new("bbbbbb", 6), *m3 = msg_new("c", 1);
    outq_push(&q, m1); outq_push(&q, m2); outq_push(&q, m3);
    struct iovec iov[8];
    size_t total;
    int n = outq_iov(&q, iov, 8, &total);
    CHECK(n == 3 && total == 6 + 8 + 3, "one iovec per frame, wire bytes summed");
    CHECK(iov[0].iov_base == (void *)msg_wire(m1), "zero copy: iovec points into the shared frame");
    n = outq_iov(&q, iov, 2, &total);
    CHECK(n == 2 && total == 14, "iovec count bounded by max");
    g_done = 0;
    outq_consume(&q, 6 + 3, on_done, NULL);  /* first frame and 3 bytes of the second */
    CHECK(g_done == 1 && q.count == 2 && q.head_off == 3, "partial write keeps an offset");
    CHECK(q.bytes == 5 + 3, "bytes left after a partial write");
    n = outq_iov(&q, iov, 8, &total);
    CHECK(n == 2 && iov[0].iov_len == 5 && iov[0].iov_base == (void *)(msg_wire(m2) + 3),
          "the next iovec resumes inside the frame");
    outq_consume(&q, 8, on_done, NULL);
    CHECK(outq_empty(&q) && g_done == 3 && q.bytes == 0 && q.head_off == 0, "all written");
    /* ring wrap-around and growth */
    int refused = 0;
    for (int round = 0; round < 60; round++) {
        for (int i = 0; i < 7; i++) refused += outq_push(&q, m3) < 0;
        outq_consume(&q, 5 * msg_wire_len(m3), NULL, NULL);
    }
    /* +2 per round until the 100-frame bound, then 5 pushes of 7 fit */
    CHECK(refused > 0 && q.count == 95 && m3->refs == 96, "ring grows to the bound and wraps");
    outq_clear(&q);
    msg_unref(m1); msg_unref(m2); msg_unref(m3);
}

static void test_hmap(void)
{
    hmap m;
    hmap_init(&m);
    char k[32];
    for (int i = 0; i < 1000; i++) { snprintf(k, sizeof k, "room-%d", i); hmap_put(&m, k, (void *)(long)(i + 1)); }
    CHECK(m.count == 1000, "1000 keys");
    int ok = 1;
    for (int i = 0; i < 1000; i++) { snprintf(k, sizeof k, "room-%d", i); ok &= hmap_get(&m, k) == (void *)(long)(i + 1); }
    CHECK(ok, "every key found");
    for (int i = 0; i < 1000; i += 2) { snprintf(k, sizeof k, "room-%d", i); hmap_del(&m, k); }
    CHECK(m.count == 500 && !hmap_get(&m, "room-0") && hmap_get(&m, "room-1"), "deletes leave the others");
    for (int i = 0; i < 1000; i += 2) { snprintf(k, sizeof k, "room-%d", i); hmap_put(&m, k, (void *)1); }
    CHECK(m.count == 1000, "tombstones reused");
    hmap_free(&m);
}

int main(void)
{
    test_msg_header();
    test_refcount_shared();
    test_bounds();
    test_iov_and_partial();
    test_hmap();
    printf("test_queue: %d checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
