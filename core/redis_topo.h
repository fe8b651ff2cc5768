/* redis_topo: the topology of one redis_client: its nodes (redis_node.c,
 * one per server: the standalone one, or each master of a Cluster) and the
 * slot map (which node owns each of the 16384 slots, and each master's
 * shard number and slot ranges), built from a CLUSTER SHARDS answer.
 * Applying a map creates the nodes of new masters and frees the ones that
 * left it (whoever uses them hears it first through on_gone); readiness is
 * read from it (which shards are down and why, in one sentence).
 * Owns: the nodes and the owner table. It never sends anything itself: the
 * client (redis_client.c) asks for the map and routes commands; events of
 * the nodes go to the handlers the client gave (ud = the redis_tnode). */
#ifndef CHATD_REDIS_TOPO_H
#define CHATD_REDIS_TOPO_H
#include "redis_node.h"
#include "redis_slot.h"

typedef struct redis_tnode {
    struct redis_topo *t;
    redis_node *n;
    uint64_t id;                 /* redis_node_id */
    int in_map;                  /* a master of the current map */
    int keep;                    /* (while applying a map) */
    int shard;                   /* 1-based position in the map (messages) */
    uint16_t (*ranges)[2];       /* slots it owns, [lo, hi] inclusive */
    int nranges;
    int logged_down;             /* (the client's log state) */
    char run_id[41];             /* (the client's: the run_id last learned, "" before) */
    struct redis_tnode *next;
} redis_tnode;

typedef struct redis_topo {
    uv_loop_t *loop;
    redis_node_opts tmpl;        /* options of every node (addr set per node) */
    redis_node_handlers h;       /* node events, ud = the redis_tnode */
    int cluster, tls;
    redis_tnode *nodes;
    redis_tnode **owner;         /* REDIS_SLOTS entries */
    int map_known, nshards;
    unsigned rr;                 /* round robin of redis_topo_any_up */
    char map_err[300];           /* why the last map could not be used */
    /* a node that was up leaves the topology (called before it is freed) */
    void (*on_gone)(void *ud, redis_tnode *tn);
    void *ud;
    int freeing;
} redis_topo;

/* tmpl: the options of every node (its addr is ignored); its strings and
 * scripts must outlive the topology. 0 or -1 (out of memory). */
int redis_topo_init(redis_topo *t, uv_loop_t *loop, const redis_node_opts *tmpl,
                    const redis_node_handlers *h, int cluster, int tls);
/* Frees every node (their pending callbacks get NULL inside this call;
 * on_gone is not called). */
void redis_topo_free(redis_topo *t);

/* One Redis: a single node at a that owns every slot. */
redis_tnode *redis_topo_standalone(redis_topo *t, const redis_addr *a);
/* The node at a, created (and connecting) when there is none. */
redis_tnode *redis_topo_get(redis_topo *t, const redis_addr *a);
redis_tnode *redis_topo_find(const redis_topo *t, const redis_addr *a);
redis_tnode *redis_topo_by_id(const redis_topo *t, uint64_t id);
/* A master of the map that is up (round robin), else NULL. */
redis_tnode *redis_topo_any_up(redis_topo *t);
/* Applies a CLUSTER SHARDS answer: 1 when slots changed owner, 0 when not,
 * -1 when it could not be used (map_err says why; the map is kept). */
int redis_topo_apply(redis_topo *t, const redisReply *r);

/* "127.0.0.1:7001 (shard 2 of 3, slots 10923-16383)" */
void redis_topo_describe(const redis_tnode *tn, char *out, size_t n);
/* 1 when the map is known and every master in it is up and every slot has
 * one; else 0 and a sentence naming every shard that is down. */
int redis_topo_health(const redis_topo *t, const redis_addr *seeds, int nseeds, char *why,
                      size_t n);

#endif
