/* test_heap: the intrusive min-heap (core/heap.h) behind token expiry:
 * every operation against a brute-force model (the minimum, the count, each
 * node's recorded position), removal from the middle, key changes both
 * ways, duplicate keys, and popping what is due in key order. */
#include "heap.h"
#include "check.h"
#include <stdint.h>
#include <stdlib.h>

typedef struct item {
    int id;
    heap_node hn;
    int in;             /* the model: in the heap */
    int64_t key;        /* the model's key */
} item;

#define N 500
static item g_items[N];
static uint64_t g_rng = 88172645463325252ull;

static uint64_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

/* Every node's position points back at it, and every parent <= child. */
static int invariant(const heap *h)
{
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->a[i]->pos != i + 1) return 0;
        if (i && h->a[(i - 1) / 2]->key > h->a[i]->key) return 0;
    }
    return 1;
}

static void model_check(const heap *h, const char *step)
{
    uint32_t n = 0;
    int64_t min = INT64_MAX;
    for (int i = 0; i < N; i++) {
        if (g_items[i].in != heap_contains(&g_items[i].hn)) {
            check_fail("%s: item %d in model %d, in heap %d", step, i, g_items[i].in,
                       heap_contains(&g_items[i].hn));
            return;
        }
        if (!g_items[i].in) continue;
        n++;
        if (g_items[i].key < min) min = g_items[i].key;
    }
    CHECK(heap_count(h) == n, "%s: count %u, model %u", step, heap_count(h), n);
    CHECK(invariant(h), "%s: heap order or positions broken", step);
    heap_node *m = heap_min(h);
    CHECK(n ? m && m->key == min : m == NULL, "%s: min %lld, model %lld", step,
          m ? (long long)m->key : -1LL, (long long)min);
}

static void test_random_ops(void)
{
    heap h = {0};
    for (int i = 0; i < N; i++) g_items[i] = (item){.id = i};
    for (int step = 0; step < 20000; step++) {
        item *it = &g_items[rnd() % N];
        int64_t key = (int64_t)(rnd() % 1000) - 200;   /* duplicates, negatives */
        switch (rnd() % 4) {
        case 0:
        case 1:
            if (it->in) {
                heap_update(&h, &it->hn, key);
            } else {
                CHECK(heap_push(&h, &it->hn, key) == 0);
                it->in = 1;
            }
            it->key = key;
            break;
        case 2:
            heap_remove(&h, &it->hn);       /* also when not in: a no-op */
            it->in = 0;
            break;
        case 3: {
            heap_node *x = heap_pop(&h);
            if (x) {
                item *o = HEAP_OWNER(x, item, hn);
                CHECK(o->in, "popped item %d the model does not have", o->id);
                for (int i = 0; i < N; i++)
                    if (g_items[i].in && g_items[i].key < o->key)
                        check_fail("popped key %lld while item %d has %lld", (long long)o->key, i,
                                   (long long)g_items[i].key);
                o->in = 0;
            }
            break;
        }
        }
        if (step % 97 == 0) model_check(&h, "random ops");
        if (check_failures()) break;
    }
    model_check(&h, "random ops end");
    heap_free(&h);
    for (int i = 0; i < N; i++) CHECK(!heap_contains(&g_items[i].hn), "item %d still marked after free", i);
}

/* What a tick does: pop while the minimum is due; what is not due stays. */
static void test_pop_due_in_order(void)
{
    heap h = {0};
    item it[8];
    int64_t keys[8] = {50, 10, 30, 10, 70, 20, 60, 40};
    for (int i = 0; i < 8; i++) {
        it[i] = (item){.id = i};
        CHECK(heap_push(&h, &it[i].hn, keys[i]) == 0);
    }
    CHECK(heap_push(&h, &it[0].hn, 1) == 0 && it[0].hn.key == 50, "a second push is ignored");
    heap_update(&h, &it[4].hn, 5);      /* 70 -> 5: moves to the top */
    heap_update(&h, &it[1].hn, 45);     /* 10 -> 45: moves down */
    heap_remove(&h, &it[2].hn);         /* 30 goes */
    int64_t want[] = {5, 10, 20, 40};
    int got = 0;
    for (heap_node *m; (m = heap_min(&h)) && m->key <= 40; got++) {
        heap_node *p = heap_pop(&h);
        CHECK(p == m);
        if (got < 4) CHECK(p->key == want[got], "pop %d: key %lld, want %lld", got, (long long)p->key,
                           (long long)want[got]);
        CHECK(!heap_contains(p), "a popped node is out of the heap");
    }
    CHECK(got == 4, "due at 40: %d popped, want 4", got);
    CHECK(heap_count(&h) == 3, "left: %u, want 3 (45, 50, 60)", heap_count(&h));
    CHECK(heap_min(&h)->key == 45);
    heap_free(&h);
    CHECK(heap_min(&h) == NULL && heap_pop(&h) == NULL, "empty after free");
}

int main(void)
{
    test_random_ops();
    test_pop_due_in_order();
    return check_summary("test_heap");
}
