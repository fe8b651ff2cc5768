/* heap: the core's one priority queue, a binary min-heap of nodes embedded
 * in their owners (intrusive, as a list node is): each node keeps its key
 * and its position, so an owner leaves the heap or changes its key in
 * O(log n) without a search. Used for deadlines (token expiry per
 * connection): the owner asks for the minimum and pops what is due, so a
 * tick costs O(due), not O(everything).
 * Owns: the array of node pointers (not the nodes). */
#ifndef CHATD_HEAP_H
#define CHATD_HEAP_H
#include <stddef.h>
#include <stdint.h>

typedef struct heap_node {
    int64_t key;
    uint32_t pos;           /* index + 1 in its heap; 0: in no heap */
} heap_node;

typedef struct heap {
    heap_node **a;
    uint32_t n, cap;
} heap;

/* The owner of an embedded node: HEAP_OWNER(node, conn, exp_node). */
#define HEAP_OWNER(node, type, member) ((type *)(void *)((char *)(node) - offsetof(type, member)))

static inline int heap_contains(const heap_node *x) { return x->pos != 0; }
static inline heap_node *heap_min(const heap *h) { return h->n ? h->a[0] : NULL; }
static inline uint32_t heap_count(const heap *h) { return h->n; }

/* Adds x (not in a heap) with key. 0, or -1 out of memory (x stays out). */
int heap_push(heap *h, heap_node *x, int64_t key);
/* Changes the key of x (in h): it moves up or down. */
void heap_update(heap *h, heap_node *x, int64_t key);
/* Takes x out of h; nothing when x is in no heap. */
void heap_remove(heap *h, heap_node *x);
/* Takes out and returns the node with the smallest key, NULL when empty. */
heap_node *heap_pop(heap *h);
/* Frees the array (the nodes are the owners'); h is empty afterwards. */
void heap_free(heap *h);

#endif
