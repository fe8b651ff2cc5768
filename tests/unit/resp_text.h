/* resp_text: one hiredis reply from RESP bytes, built by hiredis' own
 * reader exactly as a connection would deliver it: the one RESP reader of
 * the C unit tests (test_parse, test_redis). The caller frees the reply
 * with freeReplyObject; NULL when the bytes are not one whole reply. */
#ifndef CHATD_TEST_RESP_TEXT_H
#define CHATD_TEST_RESP_TEXT_H
#include <hiredis/hiredis.h>
#include <stddef.h>
#include <string.h>

static inline redisReply *resp(const char *s, size_t n)
{
    redisReader *r = redisReaderCreate();
    void *rep = NULL;
    if (!r) return NULL;
    if (redisReaderFeed(r, s, n) != REDIS_OK || redisReaderGetReply(r, &rep) != REDIS_OK) rep = NULL;
    redisReaderFree(r);
    return rep;
}
/* From a C string. */
static inline redisReply *resp_str(const char *s) { return resp(s, strlen(s)); }
/* From a string literal (embedded NULs kept). */
#define RESP(lit) resp(lit, sizeof(lit) - 1)

#endif
