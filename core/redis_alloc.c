/* redis_alloc: see redis_alloc.h. The create functions follow hiredis
 * 0.14's own (read.c: create*Object): a zeroed redisReply of the task's
 * type, linked into its parent array at the task's index. The reader's
 * arena reaches them as the task's privdata (hiredis copies the reader's
 * privdata into every task; without it an object is simply malloc'd). Each
 * object is preceded by a 16-byte header naming its arena (NULL: malloc'd),
 * so a free needs no search. */
#include "redis_alloc.h"
#include "arena.h"

#include <hiredis/read.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK (16 * 1024)   /* per reader: a few hundred pushes and publish replies */
#define HDR 16

typedef struct rarena {
    arena a;
    size_t live;        /* objects in the arena not yet freed */
    int orphan;         /* its reader is gone: freed with its last object */
    _Alignas(16) unsigned char block[BLOCK];
} rarena;

static size_t n_arenas;

/* One redisReply followed by `extra` bytes, zeroed header and reply. */
static redisReply *obj_new(const redisReadTask *task, int type, size_t extra)
{
    size_t n = HDR + sizeof(redisReply) + extra;
    if (n < extra) return NULL;
    rarena *ra = task->privdata;
    unsigned char *p = ra ? arena_alloc(&ra->a, n) : NULL;
    if (p) ra->live++;
    else if ((p = malloc(n))) ra = NULL;
    else return NULL;
    memcpy(p, &ra, sizeof ra);
    redisReply *r = (redisReply *)(p + HDR);
    memset(r, 0, sizeof *r);
    r->type = type;
    return r;
}

static void *link_parent(const redisReadTask *task, redisReply *r)
{
    if (task->parent) {
        redisReply *p = task->parent->obj;
        p->element[task->idx] = r;
    }
    return r;
}

static void *create_string(const redisReadTask *task, char *str, size_t len)
{
    if (len + 1 == 0) return NULL;
    redisReply *r = obj_new(task, task->type, len + 1);
    if (!r) return NULL;
    r->str = (char *)(r + 1);
    memcpy(r->str, str, len);
    r->str[len] = 0;
    r->len = len;
    return link_parent(task, r);
}

static void *create_array(const redisReadTask *task, int elements)
{
    size_t n = elements > 0 ? (size_t)elements : 0;
    if (n > (SIZE_MAX - HDR - sizeof(redisReply)) / sizeof(redisReply *)) return NULL;
    redisReply *r = obj_new(task, REDIS_REPLY_ARRAY, n * sizeof(redisReply *));
    if (!r) return NULL;
    if (n) {
        r->element = (redisReply **)(r + 1);
        memset(r->element, 0, n * sizeof(redisReply *));
    }
    r->elements = n;
    return link_parent(task, r);
}

static void *create_integer(const redisReadTask *task, long long value)
{
    redisReply *r = obj_new(task, REDIS_REPLY_INTEGER, 0);
    if (!r) return NULL;
    r->integer = value;
    return link_parent(task, r);
}

static void *create_nil(const redisReadTask *task)
{
    redisReply *r = obj_new(task, REDIS_REPLY_NIL, 0);
    if (!r) return NULL;
    return link_parent(task, r);
}

static void arena_gone(rarena *ra)
{
    free(ra);
    n_arenas--;
}

void redis_reply_free(void *reply)
{
    redisReply *r = reply;
    if (!r) return;
    if (r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->elements; i++) redis_reply_free(r->element[i]);
    unsigned char *p = (unsigned char *)r - HDR;
    rarena *ra;
    memcpy(&ra, p, sizeof ra);
    if (!ra) {
        free(p);
        return;
    }
    if (--ra->live) return;
    if (ra->orphan) arena_gone(ra);
    else arena_release(&ra->a, 0);
}

/* hiredis 0.14's five reply functions (Debian 12). hiredis 1.x adds reply
 * types (double, bool, ...) whose objects these functions do not build. */
#if HIREDIS_MAJOR != 0
#error "redis_alloc.c builds hiredis 0.x replies; hiredis 1.x has more reply types"
#endif
static redisReplyObjectFunctions FNS = {
    .createString = create_string, .createArray = create_array, .createInteger = create_integer,
    .createNil = create_nil, .freeObject = redis_reply_free};

redisReader *redis_reader_new(void)
{
    rarena *ra = malloc(sizeof *ra);
    if (!ra) return NULL;
    redisReader *r = redisReaderCreateWithFunctions(&FNS);
    if (!r) {
        free(ra);
        return NULL;
    }
    arena_init(&ra->a, ra->block, sizeof ra->block);
    ra->live = 0;
    ra->orphan = 0;
    r->privdata = ra;
    n_arenas++;
    return r;
}

void redis_reader_free(redisReader *r)
{
    if (!r) return;
    rarena *ra = r->privdata;
    redisReaderFree(r);   /* frees a reply in pieces */
    if (!ra) return;
    if (ra->live) ra->orphan = 1;   /* a reply of it is being dispatched */
    else arena_gone(ra);
}

size_t redis_reader_in_use(const redisReader *r)
{
    const rarena *ra = r ? r->privdata : NULL;
    return ra ? ra->a.top : 0;
}

size_t redis_alloc_arenas(void) { return n_arenas; }
