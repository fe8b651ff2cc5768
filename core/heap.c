/* heap: see heap.h. Positions are kept 1-based in the nodes so that 0 means
 * "in no heap" (a zeroed owner is out of every heap). */
#include "heap.h"
#include <stdlib.h>

static void place(heap *h, uint32_t i, heap_node *x)
{
    h->a[i] = x;
    x->pos = i + 1;
}

static void sift_up(heap *h, uint32_t i)
{
    heap_node *x = h->a[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (h->a[p]->key <= x->key) break;
        place(h, i, h->a[p]);
        i = p;
    }
    place(h, i, x);
}

static void sift_down(heap *h, uint32_t i)
{
    heap_node *x = h->a[i];
    for (;;) {
        uint32_t l = 2 * i + 1;
        if (l >= h->n) break;
        uint32_t m = l + 1 < h->n && h->a[l + 1]->key < h->a[l]->key ? l + 1 : l;
        if (x->key <= h->a[m]->key) break;
        place(h, i, h->a[m]);
        i = m;
    }
    place(h, i, x);
}

int heap_push(heap *h, heap_node *x, int64_t key)
{
    if (x->pos) return 0;
    if (h->n == h->cap) {
        uint32_t nc = h->cap ? h->cap * 2 : 64;
        heap_node **na = realloc(h->a, sizeof *na * nc);
        if (!na) return -1;
        h->a = na;
        h->cap = nc;
    }
    x->key = key;
    place(h, h->n++, x);
    sift_up(h, h->n - 1);
    return 0;
}

void heap_update(heap *h, heap_node *x, int64_t key)
{
    if (!x->pos) return;
    int64_t old = x->key;
    x->key = key;
    if (key < old) sift_up(h, x->pos - 1);
    else if (key > old) sift_down(h, x->pos - 1);
}

void heap_remove(heap *h, heap_node *x)
{
    if (!x->pos) return;
    uint32_t i = x->pos - 1;
    x->pos = 0;
    heap_node *last = h->a[--h->n];
    if (i == h->n) return;             /* it was the last one */
    place(h, i, last);
    /* the moved node may belong above or below its new place */
    if (i > 0 && h->a[(i - 1) / 2]->key > last->key) sift_up(h, i);
    else sift_down(h, i);
}

heap_node *heap_pop(heap *h)
{
    heap_node *x = heap_min(h);
    if (x) heap_remove(h, x);
    return x;
}

void heap_free(heap *h)
{
    for (uint32_t i = 0; i < h->n; i++) h->a[i]->pos = 0;
    free(h->a);
    h->a = NULL;
    h->n = h->cap = 0;
}
