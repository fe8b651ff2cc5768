/* redis_alloc: the reply objects of chatd's Redis readers. hiredis' default
 * reader makes two allocations per string (the reply and its copy of the
 * bytes) and two per array (the reply and its element vector); a publish
 * reply and a subscription push cost ~8 mallocs and frees. A reader made
 * here builds each object in one piece (the bytes or the element vector
 * right after the redisReply) inside a static arena (arena.h), malloc when
 * it does not fit; the arena is taken back whole whenever no object of it is
 * alive (replies are freed right after their dispatch; a reply arriving in
 * pieces stays alive in its reader until it is complete, and holds the
 * arena until then, so other replies then go to malloc).
 * Owns: the arena and the count of its live objects. */
#ifndef CHATD_REDIS_ALLOC_H
#define CHATD_REDIS_ALLOC_H
#include <hiredis/hiredis.h>
#include <stddef.h>

/* A reader whose replies come from here (free it with redisReaderFree). */
redisReader *redis_reader_new(void);
/* Frees a reply of such a reader (never freeReplyObject: the layout differs). */
void redis_reply_free(void *reply);
/* Bytes of the arena handed out to live objects (tests: 0 when none). */
size_t redis_alloc_in_use(void);

#endif
