/* redis_alloc: see redis_alloc.h. The functions follow hiredis 0.14's own
 * (read.c: create*Object): a zeroed redisReply of the task's type, linked
 * into its parent array at the task's index. */
#include "redis_alloc.h"
#include "arena.h"

#include <hiredis/read.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_SIZE (64 * 1024)
static _Alignas(16) unsigned char block[ARENA_SIZE];
static arena ra;
static size_t live;   /* objects in the arena not yet freed */

/* One redisReply followed by `extra` bytes, zeroed. */
static redisReply *obj_new(int type, size_t extra)
{
    if (!ra.buf) arena_init(&ra, block, sizeof block);
    size_t n = sizeof(redisReply) + extra;
    if (n < extra) return NULL;
    redisReply *r = arena_alloc(&ra, n);
    if (r) live++;
    else if (!(r = malloc(n))) return NULL;
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
    redisReply *r = obj_new(task->type, len + 1);
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
    if (n > (SIZE_MAX - sizeof(redisReply)) / sizeof(redisReply *)) return NULL;
    redisReply *r = obj_new(REDIS_REPLY_ARRAY, n * sizeof(redisReply *));
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
    redisReply *r = obj_new(REDIS_REPLY_INTEGER, 0);
    if (!r) return NULL;
    r->integer = value;
    return link_parent(task, r);
}

static void *create_nil(const redisReadTask *task)
{
    redisReply *r = obj_new(REDIS_REPLY_NIL, 0);
    if (!r) return NULL;
    return link_parent(task, r);
}

void redis_reply_free(void *reply)
{
    redisReply *r = reply;
    if (!r) return;
    if (r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->elements; i++) redis_reply_free(r->element[i]);
    if (!arena_owns(&ra, r)) {
        free(r);
        return;
    }
    if (live && --live == 0) arena_release(&ra, 0);
}

static redisReplyObjectFunctions FNS = {create_string, create_array, create_integer, create_nil,
                                        redis_reply_free};

redisReader *redis_reader_new(void)
{
    return redisReaderCreateWithFunctions(&FNS);
}

size_t redis_alloc_in_use(void) { return ra.top; }
