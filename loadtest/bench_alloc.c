/* bench_alloc: the per-message pieces whose allocations docs/cost.md
 * section 10 cut, timed in one process (user CPU, no I/O: steadier than a
 * load test on a shared machine). For each: ns and libc allocations per
 * operation, the way main did it and the way chatd does it now:
 *  - a client's message frame (dm.sh's shape): jansson with malloc
 *    (json_loadb + the field reads + json_decref) vs frame_parse/frame_free
 *    (the frame arena);
 *  - the Redis replies of one message: the publish script's reply and the
 *    subscription push, with hiredis' default reader vs redis_reader_new;
 *  - a policy call: see bench_script.
 * Run: build/bench_alloc [iterations]. Prints the best of 5 rounds. */
#define _GNU_SOURCE
#include "frame.h"
#include "redis_alloc.h"
#include "util.h"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc_count.h"

static const char FRAME[] =
    "{\"type\":\"message\",\"body\":\"lt1 17 1765041234567 42 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\","
    "\"id\":\"5f3a-17-42\"}";
/* the publish script's answer {seq, dup} and a push of the message to the
 * room (made in main: the payload's length goes in its header) */
static const char PAYLOAD[] =
    "42|\"id\":\"5f3a-17-42\",\"user\":\"lt17\",\"name\":\"load 17\",\"body\":\"lt1 17 "
    "1765041234567 42 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\",\"ts\":1765041234567}";
static char REPLIES[512];
static size_t replies_len;

static volatile size_t sink;

static void jansson_malloc(int n)
{
    for (int i = 0; i < n; i++) {
        json_t *o = json_loadb(FRAME, sizeof FRAME - 1, JSON_ALLOW_NUL | JSON_DECODE_ANY, NULL);
        sink += json_string_length(json_object_get(o, "type")) +
                json_string_length(json_object_get(o, "body")) +
                json_string_length(json_object_get(o, "id")) + (json_object_get(o, "room") != NULL);
        json_decref(o);
    }
}

static void frame_arena(int n)
{
    char code[32], msg[160];
    for (int i = 0; i < n; i++) {
        client_frame f;
        if (frame_parse(FRAME, sizeof FRAME - 1, &f, code, msg, sizeof msg, NULL) == 0)
            sink += f.body_len + f.id_len;
        frame_free(&f);
    }
}

static void replies(int n, int ours)
{
    redisReader *r = ours ? redis_reader_new() : redisReaderCreate();
    for (int i = 0; i < n; i++) {
        redisReaderFeed(r, REPLIES, replies_len);
        for (int k = 0; k < 2; k++) {
            void *rep = NULL;
            if (redisReaderGetReply(r, &rep) != REDIS_OK || !rep) abort();
            sink += ((redisReply *)rep)->elements;
            if (ours) redis_reply_free(rep);
            else freeReplyObject(rep);
        }
    }
    if (ours) redis_reader_free(r);
    else redisReaderFree(r);
}

static void run(const char *what, void (*fn)(int), int n)
{
    double best = 1e300;
    unsigned long long a = 0;
    fn(n / 10);
    for (int round = 0; round < 5; round++) {
        unsigned long long a0 = n_alloc;
        double t0 = cpu_ns();
        fn(n);
        double dt = (cpu_ns() - t0) / n;
        if (dt < best) best = dt;
        a = n_alloc - a0;
    }
    printf("%-52s %8.1f ns  %6.2f allocations\n", what, best, (double)a / n);
}

static void replies_default(int n) { replies(n, 0); }
static void replies_ours(int n) { replies(n, 1); }

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200000;
    if (n < 100) n = 100;
    char code[32], msg[160];
    client_frame f;   /* installs the frame arena's allocator (jansson is process-wide) */
    frame_parse("{}", 2, &f, code, msg, sizeof msg, NULL);
    replies_len = (size_t)snprintf(REPLIES, sizeof REPLIES,
                                   "*2\r\n:42\r\n:0\r\n*3\r\n$7\r\nmessage\r\n$16\r\nchat:{dm-8}:live\r\n$%zu\r\n%s\r\n",
                                   sizeof PAYLOAD - 1, PAYLOAD);
    printf("per operation, best of 5 rounds of %d (user CPU):\n", n);
    run("client frame: jansson with malloc (main)", jansson_malloc, n);
    run("client frame: frame_parse in the frame arena", frame_arena, n);
    run("publish reply + push: hiredis default reader (main)", replies_default, n);
    run("publish reply + push: redis_reader_new", replies_ours, n);
    return 0;
}
