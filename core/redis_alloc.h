/* redis_alloc: the reply objects of chatd's Redis readers. hiredis' default
 * reader makes two allocations per string (the reply and its copy of the
 * bytes) and two per array (the reply and its element vector); a publish
 * reply and a subscription push cost ~8 mallocs and frees. A reader made
 * here builds each object in one piece (the bytes or the element vector
 * right after the redisReply) inside an arena of its own (arena.h), malloc
 * when it does not fit. A reader's arena is taken back whole whenever no
 * object of it is alive: replies are freed right after their dispatch, and
 * a reply arriving in pieces holds only its own reader's arena. An arena
 * outlives its reader while a reply of it is alive (a connection torn down
 * inside a reply's dispatch).
 * Owns: the arenas. */
#ifndef CHATD_REDIS_ALLOC_H
#define CHATD_REDIS_ALLOC_H
#include <hiredis/hiredis.h>
#include <stddef.h>

/* A reader whose replies come from here; NULL when out of memory. */
redisReader *redis_reader_new(void);
/* Frees such a reader (never redisReaderFree: the arena goes with it). */
void redis_reader_free(redisReader *r);
/* Frees a reply of such a reader (never freeReplyObject: the layout differs). */
void redis_reply_free(void *reply);
/* Tests: bytes of r's arena handed out to live objects; arenas not freed. */
size_t redis_reader_in_use(const redisReader *r);
size_t redis_alloc_arenas(void);

#endif
