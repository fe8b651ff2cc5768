/* bus_reply: what the Redis replies of the bus mean, beyond what the
 * connection layer reads (core/redis_reply.c: errors, pushes, integers) and
 * the two script answers read next to their calls (bus_redis_publish_reply,
 * bus_rhead_parse): range reads of the recent buffer (replay since N, gap
 * fill), pub/sub channel names and the backfill sweep, check and settle
 * scripts' answers.
 * Pure functions over a hiredis redisReply (no I/O, no state); the Redis
 * backend calls them from its reply callbacks and tests/fuzz/fuzz_resp.c
 * feeds them arbitrary replies. Whatever Redis (or a proxy in front of it)
 * answers, they only hand out well-formed values: a seq is decimal without
 * sign, a room is a valid room name, an entry is "<seq>\n<tail>".
 * Owns nothing: entries point into the reply. */
#define _GNU_SOURCE
#include "bus_int.h"
#include <hiredis/hiredis.h>
#include <string.h>

static int entry_of(const redisReply *el, bus_entry *e)
{
    return el && el->type == REDIS_REPLY_STRING && el->str &&
                   bus_parse_entry(el->str, el->len, e) == 0 ? 0 : -1;
}

size_t bus_reply_entries(const redisReply *rp, bus_entry *e, size_t cap)
{
    size_t n = 0;
    if (!rp || rp->type != REDIS_REPLY_ARRAY || !rp->element) return 0;
    for (size_t i = 0; i < rp->elements && n < cap; i++)
        if (entry_of(rp->element[i], &e[n]) == 0) n++;
    return n;
}

size_t bus_reply_replay(const redisReply *rp, uint64_t since, size_t want, bus_entry *e)
{
    size_t n = 0;
    if (!rp || rp->type != REDIS_REPLY_ARRAY || !rp->element) return 0;
    for (size_t i = 0; i < rp->elements && n < want; i++) {
        bus_entry x;
        if (entry_of(rp->element[i], &x) != 0 || x.seq != since + 1 + n) break;
        e[n++] = x;
    }
    return n;
}

int bus_reply_channel(const char *ns, const char *s, size_t len, char *room, char *kind, size_t kn)
{
    size_t nl = strlen(ns);
    if (!s || len < nl + 4 || memcmp(s, ns, nl) != 0 || s[nl] != '{') return -1;
    const char *r0 = s + nl + 1;
    const char *rb = memchr(r0, '}', len - nl - 1);
    if (!rb) return -1;
    size_t rl = (size_t)(rb - r0);
    if (!room_name_valid(r0, rl) || rb + 1 >= s + len || rb[1] != ':') return -1;
    size_t kl = len - (size_t)(rb + 2 - s);
    if (kl == 0 || kl >= kn || memchr(rb + 2, 0, kl)) return -1;
    memcpy(room, r0, rl);
    room[rl] = 0;
    memcpy(kind, rb + 2, kl);
    kind[kl] = 0;
    return 0;
}

int bus_reply_room_control(const char *s, size_t len, char tag[BUS_TAG_LEN + 1])
{
    static const char ask[] = "!seed ";
    const size_t al = sizeof ask - 1;
    if (!s || len < 1 || s[0] != '!') return -1;
    if (len != al + BUS_TAG_LEN || memcmp(s, ask, al) != 0) return BUS_CTL_UNKNOWN;
    for (size_t i = 0; i < BUS_TAG_LEN; i++) {
        char c = s[al + i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return BUS_CTL_UNKNOWN;
        tag[i] = c;
    }
    tag[BUS_TAG_LEN] = 0;
    return BUS_CTL_SEED_ASK;
}

/* {room, seq, entry} triple k from element `from` on */
static int triple(const redisReply *rp, size_t from, size_t k, char *room, uint64_t *seq,
                  bus_entry *e)
{
    if (!rp || rp->type != REDIS_REPLY_ARRAY || rp->elements < from || !rp->element ||
        k >= (rp->elements - from) / 3)
        return -1;
    size_t i = from + 3 * k;
    const redisReply *rr = rp->element[i], *sr = rp->element[i + 1], *er = rp->element[i + 2];
    if (rr->type != REDIS_REPLY_STRING || sr->type != REDIS_REPLY_STRING ||
        er->type != REDIS_REPLY_STRING || !rr->str || !sr->str ||
        !room_name_valid(rr->str, rr->len) || seq_parse(sr->str, sr->len, seq) != 0 || *seq < 1)
        return -1;
    memcpy(room, rr->str, rr->len);
    room[rr->len] = 0;
    if (er->len == 0) return 0;                   /* no longer in the recent buffer */
    if (entry_of(er, e) != 0 || e->seq != *seq) return -1;
    return 1;
}

size_t bus_reply_settle_items(const redisReply *rp)
{
    if (!rp || rp->type != REDIS_REPLY_ARRAY || !rp->element) return 0;
    return rp->elements / 3;
}

int bus_reply_settle_item(const redisReply *rp, size_t k, char *room, uint64_t *seq,
                          bus_entry *e)
{
    return triple(rp, 0, k, room, seq, e);
}

int bus_reply_check_round(const redisReply *rp, int *more, uint64_t *cut, size_t *items)
{
    *items = 0;
    *more = 0;
    *cut = 0;
    if (!rp || rp->type != REDIS_REPLY_ARRAY || rp->elements < 1 || !rp->element ||
        rp->element[0]->type != REDIS_REPLY_INTEGER)
        return -1;
    if (rp->element[0]->integer != 1) return 0;   /* another node holds this round */
    if (rp->elements < 3 || rp->element[1]->type != REDIS_REPLY_INTEGER ||
        rp->element[2]->type != REDIS_REPLY_INTEGER || rp->element[2]->integer < 0)
        return -1;
    if (rp->element[1]->integer < 0 || rp->element[1]->integer > 3) return -1;
    *more = (int)rp->element[1]->integer;
    *cut = (uint64_t)rp->element[2]->integer;
    *items = (rp->elements - 3) / 2;
    return 1;
}

int bus_reply_check_item(const redisReply *rp, size_t k, char *room, uint64_t *seq)
{
    if (!rp || rp->type != REDIS_REPLY_ARRAY || rp->elements < 3 || !rp->element ||
        k >= (rp->elements - 3) / 2)
        return -1;
    const redisReply *rr = rp->element[3 + 2 * k], *sr = rp->element[4 + 2 * k];
    if (rr->type != REDIS_REPLY_STRING || sr->type != REDIS_REPLY_STRING || !rr->str ||
        !sr->str || !room_name_valid(rr->str, rr->len) || seq_parse(sr->str, sr->len, seq) != 0 || *seq < 1)
        return -1;
    memcpy(room, rr->str, rr->len);
    room[rr->len] = 0;
    return 0;
}
