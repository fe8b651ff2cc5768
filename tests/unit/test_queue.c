/* Unit tests of the outbound path's building blocks: msg (refcounted
 * frames with the WebSocket header pre-written in the headroom), outq (the
 * bounded per-connection queue: bounds by frames and bytes, iovecs, partial
 * writes), hmap (the core's one map) and backoff. */
#include "check.h"
#include "hmap.h"
#include <stddef.h>
#include "backoff.h"
#include "msg.h"
#include "outq.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Up to OUTQ_INLINE frames stay in the queue itself; a longer queue moves
 * to a malloc'd ring (order kept), keeps it when it drains (the next burst
 * reuses it) and comes back inline once it stayed empty between two trims. */
static void test_inline_ring(void)
{
    outq q;
    outq_init(&q, 100, 1 << 20);
    msg *f[5];
    char b[2] = "a";
    for (int i = 0; i < 5; i++) { b[0] = (char)('a' + i); f[i] = msg_new(b, 1); }
    outq_push(&q, f[0]); outq_push(&q, f[1]);
    CHECK(q.ring == q.inl && q.count == 2, "two frames: the inline ring");
    outq_consume(&q, msg_wire_len(f[0]), NULL, NULL);   /* head moves: the next push wraps */
    outq_push(&q, f[2]); outq_push(&q, f[3]); outq_push(&q, f[4]);
    CHECK(q.ring != q.inl && q.count == 4, "a longer queue moved to a malloc'd ring");
    int order = 1;
    for (int i = 1; i < 5; i++) { order &= outq_peek(&q) == f[i]; outq_consume(&q, msg_wire_len(f[i]), NULL, NULL); }
    CHECK(order, "frames kept their order across the move");
    msg **grown = q.ring;
    uint32_t cap = q.cap;
    CHECK(outq_empty(&q) && outq_has_ring(&q) && q.cap == cap, "drained: the grown ring is kept");
    /* the next burst reuses it: same ring, wrapping from where the head is */
    for (int i = 0; i < 4; i++) outq_push(&q, f[i]);
    CHECK(q.ring == grown && q.cap == cap && q.count == 4, "a second burst, no new ring");
    order = 1;
    for (int i = 0; i < 4; i++) { order &= outq_peek(&q) == f[i]; outq_consume(&q, msg_wire_len(f[i]), NULL, NULL); }
    CHECK(order, "order kept in the reused ring");
    /* trims: pushed since the last one -> kept; a queue that is not empty
     * -> kept; empty and untouched since the previous trim -> freed */
    CHECK(outq_trim(&q) == 0 && outq_has_ring(&q), "first trim after a burst keeps the ring");
    outq_push(&q, f[0]);
    CHECK(outq_trim(&q) == 0 && outq_has_ring(&q), "a non-empty queue keeps its ring");
    CHECK(outq_trim(&q) == 0 && outq_has_ring(&q), "still not empty");
    outq_consume(&q, msg_wire_len(f[0]), NULL, NULL);
    CHECK(outq_trim(&q) == 1 && q.ring == q.inl && q.cap == OUTQ_INLINE && q.head == 0,
          "empty since the last trim: back to the inline ring");
    CHECK(outq_trim(&q) == 0 && q.ring == q.inl, "nothing more to free");
    /* light traffic afterwards stays inline */
    outq_push(&q, f[1]);
    outq_consume(&q, msg_wire_len(f[1]), NULL, NULL);
    outq_push(&q, f[2]); outq_push(&q, f[3]);
    CHECK(q.ring == q.inl && !outq_has_ring(&q), "two frames after a trim: inline");
    outq_consume(&q, msg_wire_len(f[2]) + msg_wire_len(f[3]), NULL, NULL);
    outq_push(&q, f[0]);
    outq_clear(&q);
    int refs = 1;
    for (int i = 0; i < 5; i++) refs &= f[i]->refs == 1;
    CHECK(refs && q.ring == NULL, "clear drops every reference");
    for (int i = 0; i < 5; i++) msg_unref(f[i]);
}

/* A keyed map keeps no key copy: each value holds its key (under ASan a
 * copied key would leak, a freed one be read after free), and its slots are
 * the value pointers alone. */
typedef struct bval { int n; char key[16]; } bval;

static int free_bval(void *ud, const char *key, void *val)
{
    int *ok = ud;
    *ok &= key == ((bval *)val)->key;
    free(val);
    return 1;
}

static void test_hmap_keyed(void)
{
    hmap m;
    hmap_init_keyed(&m, offsetof(bval, key));
    bval *v[300];
    for (int i = 0; i < 300; i++) {
        v[i] = malloc(sizeof *v[i]);
        v[i]->n = i;
        snprintf(v[i]->key, sizeof v[i]->key, "m-%d", i);
        hmap_put(&m, v[i]->key, v[i]);
    }
    char k[16];
    int ok = 1;
    for (int i = 0; i < 300; i++) {
        snprintf(k, sizeof k, "m-%d", i);
        ok &= hmap_get(&m, k) == v[i];
    }
    CHECK(ok && m.count == 300, "keyed: every entry found after the resizes");
    bval *d = hmap_del(&m, "m-7");
    CHECK(d == v[7] && !hmap_get(&m, "m-7") && m.count == 299, "delete returns the value");
    free(d);
    bval *r = malloc(sizeof *r);
    r->n = 8;
    snprintf(r->key, sizeof r->key, "m-8");
    hmap_put(&m, r->key, r);      /* replace: the old value (and its key) may go */
    free(v[8]);
    CHECK(hmap_get(&m, "m-8") == r && m.count == 299, "a replace keeps the new value (and its key)");
    for (int i = 300; i < 310; i++) {       /* tombstones are reused */
        bval *b = malloc(sizeof *b);
        snprintf(b->key, sizeof b->key, "m-%d", i);
        hmap_put(&m, b->key, b);
    }
    CHECK(m.count == 309 && hmap_get(&m, "m-309") && !hmap_get(&m, "m-7"), "puts after a delete");
    void *vals[400];
    CHECK(hmap_values(&m, vals, 400) == 309, "values: every live entry");
    ok = 1;
    hmap_each(&m, free_bval, &ok);
    CHECK(ok && m.count == 0 && !hmap_get(&m, "m-1"), "each gives every value with its own key, removes them");
    hmap_free(&m);
    CHECK(m.keyed == 1 && m.key_off == offsetof(bval, key), "free keeps the map keyed");
    bval *again = malloc(sizeof *again);
    snprintf(again->key, sizeof again->key, "again");
    hmap_put(&m, again->key, again);
    CHECK(hmap_get(&m, "again") == again, "usable after free");
    hmap_del(&m, "again");
    free(again);
    hmap_free(&m);
}

/* A keyfn map: each value finds its key itself (here through a pointer). */
typedef struct pval { const char *key; int n; } pval;
static const char *pval_key(const void *v) { return ((const pval *)v)->key; }

static void test_hmap_keyfn(void)
{
    hmap m;
    hmap_init_keyfn(&m, pval_key);
    static char keys[200][16];
    pval v[200];
    for (int i = 0; i < 200; i++) {
        snprintf(keys[i], sizeof keys[i], "p-%d", i);
        v[i] = (pval){ keys[i], i };
        CHECK(hmap_put(&m, keys[i], &v[i]) == 0);
    }
    int ok = 1;
    char k[16];
    for (int i = 0; i < 200; i++) {
        snprintf(k, sizeof k, "p-%d", i);
        ok &= hmap_get(&m, k) == &v[i];
    }
    CHECK(ok && m.count == 200, "keyfn: every entry found after the resizes");
    pval w = { keys[5], 55 };
    hmap_put(&m, w.key, &w);
    CHECK(hmap_get(&m, "p-5") == &w && m.count == 200, "a replace (same key) keeps the count");
    CHECK(hmap_del(&m, "p-6") == &v[6] && !hmap_get(&m, "p-6") && m.count == 199, "delete");
    hmap_free(&m);
    CHECK(m.keyed && m.key_fn == pval_key && !hmap_get(&m, "p-1"), "free keeps the key function");
}

static int drop_even(void *ud, const char *key, void *val)
{
    int *seen = ud;
    (*seen)++;
    return ((long)val % 2) == 0; /* 1: remove */
}

static void range_sum(void *ud, const char *key, void *val)
{
    long *sum = ud;
    char k[32];
    snprintf(k, sizeof k, "k%ld", (long)val);
    if (strcmp(k, key) == 0) *sum += (long)val;   /* the value's own key */
}

static void test_hmap_each(void)
{
    hmap m;
    char k[32];
    hmap_init(&m);
    for (int i = 1; i <= 100; i++) { snprintf(k, sizeof k, "k%d", i); hmap_put(&m, k, (void *)(long)i); }
    int seen = 0;
    hmap_each(&m, drop_even, &seen);
    CHECK(seen == 100, "hmap_each visits every entry once");
    CHECK(m.count == 50 && !hmap_get(&m, "k2") && hmap_get(&m, "k3") == (void *)3L,
          "entries whose callback returned 1 are removed, the rest stay");
    void *vals[64];
    size_t n = hmap_values(&m, vals, 64);
    long sum = 0;
    for (size_t i = 0; i < n; i++) sum += (long)vals[i];
    CHECK(n == 50 && sum == 2500, "hmap_values collects every remaining value");
    CHECK(hmap_values(&m, vals, 10) == 10, "hmap_values stops at cap");
    /* a walk in three parts sees every entry once, with its key */
    long rsum = 0;
    size_t cap = hmap_range(&m, 0, 0, range_sum, &rsum), third = cap / 3;
    hmap_range(&m, 0, third, range_sum, &rsum);
    hmap_range(&m, third, 2 * third, range_sum, &rsum);
    CHECK(hmap_range(&m, 2 * third, cap + 100, range_sum, &rsum) == cap && cap == m.cap, "range returns the slot count");
    CHECK(rsum == 2500, "hmap_range in parts visits every entry once (sum %ld)", rsum);
    hmap_put(&m, "k2", (void *)2L);
    CHECK(hmap_get(&m, "k2") == (void *)2L && m.count == 51, "a removed key can be put again");
    hmap_free(&m);
    CHECK(m.count == 0 && !hmap_get(&m, "k3"), "free leaves an empty usable map");
    hmap_put(&m, "again", (void *)1L);
    CHECK(hmap_get(&m, "again") == (void *)1L, "reusable after free");
    hmap_free(&m);
}

static void test_backoff(void)
{
    backoff b;
    backoff_init(&b, 100, 2000);
    uint32_t prev_base = 0;
    int in_range = 1, capped = 1;
    for (int i = 0; i < 12; i++) {
        uint32_t base = b.base_ms;
        uint32_t d = backoff_next(&b);
        in_range &= d >= base / 2 && d <= base;
        capped &= b.base_ms <= 2000;
        prev_base = base;
    }
    CHECK(in_range, "every delay is in [base/2, base] (jitter)");
    CHECK(capped && prev_base == 2000, "the base doubles up to max and stays there");
    CHECK(b.attempts == 12, "failures counted");
    backoff_up(&b, 1000);
    CHECK(!backoff_stable(&b, 1500, 1000) && b.attempts == 12, "not reset before the session is stable");
    CHECK(backoff_stable(&b, 2000, 1000) && b.attempts == 0 && b.base_ms == 100,
          "reset once the session stayed up for stable_ms");
    backoff_next(&b);
    CHECK(!backoff_stable(&b, 99999, 1000), "a failure after coming up cancels the stable clock");
    backoff_reset(&b);
    CHECK(backoff_next(&b) <= 100, "reset returns to the minimum");
}

int main(void)
{
    test_msg_header();
    test_refcount_shared();
    test_bounds();
    test_iov_and_partial();
    test_inline_ring();
    test_hmap();
    test_hmap_each();
    test_hmap_keyed();
    test_hmap_keyfn();
    test_backoff();
    return check_summary("test_queue");
}
