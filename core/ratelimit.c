/* ratelimit: see ratelimit.h. Chained hash table (FNV-1a from hash.h) plus an LRU list
 * (head = most recently used). No allocation on the hot path once a key
 * exists; a new key takes the memory of an idle bucket it evicts when the
 * key fits (key room is allocated in steps of 32 bytes), else one malloc:
 * users sending every few seconds evict each other's full buckets, which
 * used to be a malloc and a free per message. */
#include "ratelimit.h"
#include "hash.h"
#include "metrics.h"
#include <stdlib.h>
#include <string.h>

typedef struct bucket {
    struct bucket *hnext;        /* hash chain */
    struct bucket *prev, *next;  /* LRU list */
    uint32_t hash;
    double tokens, rate, burst;
    uint64_t last_ms;
    size_t klen, kcap;           /* key length, room for it */
    char key[];
} bucket;

struct ratelimit {
    bucket **tab;
    size_t nslots;               /* power of two */
    size_t count, max;
    bucket *head, *tail;
};

/* every table's evictions of a bucket not yet refilled (registered once) */
static metric_counter *m_evicted;

ratelimit *rl_new(size_t max_keys)
{
    if (max_keys < 16) max_keys = 16;
    ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl) return NULL;
    size_t n = 16;
    while (n < max_keys) n <<= 1;
    rl->tab = calloc(n, sizeof *rl->tab);
    if (!rl->tab) { free(rl); return NULL; }
    rl->nslots = n;
    rl->max = max_keys;
    static unsigned seen;
    if (metrics_register_due(&seen))
        m_evicted = metrics_counter("chat_ratelimit_evictions_total",
                                    "chat.ratelimit buckets evicted from a full table before they refilled",
                                    NULL);
    return rl;
}

void rl_free(ratelimit *rl)
{
    if (!rl) return;
    bucket *b = rl->head;
    while (b) { bucket *n = b->next; free(b); b = n; }
    free(rl->tab);
    free(rl);
}


static void lru_unlink(ratelimit *rl, bucket *b)
{
    if (b->prev) b->prev->next = b->next; else rl->head = b->next;
    if (b->next) b->next->prev = b->prev; else rl->tail = b->prev;
    b->prev = b->next = NULL;
}

static void lru_push_front(ratelimit *rl, bucket *b)
{
    b->prev = NULL;
    b->next = rl->head;
    if (rl->head) rl->head->prev = b; else rl->tail = b;
    rl->head = b;
}

/* Unlinks b; keeps it in *spare when that is empty and b has room for a
 * key of klen bytes, else frees it. */
static void drop(ratelimit *rl, bucket *b, bucket **spare, size_t klen)
{
    bucket **pp = &rl->tab[b->hash & (rl->nslots - 1)];
    while (*pp != b) pp = &(*pp)->hnext;
    *pp = b->hnext;
    lru_unlink(rl, b);
    rl->count--;
    if (!*spare && b->kcap >= klen) *spare = b;
    else free(b);
}

static double refilled(const bucket *b, uint64_t now_ms)
{
    double t = b->tokens;
    if (now_ms > b->last_ms) t += (double)(now_ms - b->last_ms) * b->rate / 1000.0;
    return t > b->burst ? b->burst : t;
}

int rl_take(ratelimit *rl, const char *key, size_t klen, double rate, double burst,
            uint64_t now_ms)
{
    if (!rl || !key || klen == 0 || klen > RL_KEY_MAX || !(rate > 0) || !(burst >= 1))
        return -1;
    uint32_t h = (uint32_t)hash_bytes(key, klen);
    bucket *b = rl->tab[h & (rl->nslots - 1)];
    while (b && !(b->hash == h && b->klen == klen && memcmp(b->key, key, klen) == 0))
        b = b->hnext;
    if (b) {
        b->tokens = refilled(b, now_ms);
        if (now_ms > b->last_ms) b->last_ms = now_ms; /* a clock step back refills nothing */
        b->rate = rate;
        if (burst < b->burst && b->tokens > burst) b->tokens = burst;
        b->burst = burst;
        if (rl->head != b) { lru_unlink(rl, b); lru_push_front(rl, b); }
    } else {
        /* drop up to two idle buckets from the cold end, then make room */
        bucket *spare = NULL;
        for (int i = 0; i < 2 && rl->tail && refilled(rl->tail, now_ms) >= rl->tail->burst; i++)
            drop(rl, rl->tail, &spare, klen);
        if (rl->count >= rl->max) {
            /* a bucket still short of tokens: its key's limit starts over */
            if (refilled(rl->tail, now_ms) < rl->tail->burst) metric_inc(m_evicted);
            drop(rl, rl->tail, &spare, klen);
        }
        b = spare;
        if (!b) {
            size_t cap = (klen + 31) & ~(size_t)31;
            if (!(b = malloc(sizeof *b + cap))) return -1;
            b->kcap = cap;
        }
        memcpy(b->key, key, klen);
        b->klen = klen;
        b->hash = h;
        b->tokens = burst;
        b->rate = rate;
        b->burst = burst;
        b->last_ms = now_ms;
        size_t slot = h & (rl->nslots - 1);
        b->hnext = rl->tab[slot];
        rl->tab[slot] = b;
        lru_push_front(rl, b);
        rl->count++;
    }
    if (b->tokens >= 1.0) { b->tokens -= 1.0; return 1; }
    return 0;
}
