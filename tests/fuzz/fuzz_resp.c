/* fuzz_resp: arbitrary bytes on a Redis connection. hiredis' redisReader
 * with chatd's reply objects (core/redis_alloc.c, as redis_conn.c makes it)
 * turns them into replies (as on the bus' and presence's connections), and
 * every reply goes through every interpreter chatd has for what Redis says:
 *   connection layer (core/redis_reply.c): integers, error kinds with
 *     MOVED/ASK redirects, pub/sub pushes, the CLUSTER SHARDS slot map,
 *     INFO memory (whether the server evicts keys: redis_client.c's warning);
 *   bus: the head script {0, head, epoch, before} / {2} / {3}
 *     (bus_rhead_parse), the publish script {seq, dup|seed}
 *     (bus_redis_publish_reply), a message update's {0, 3|4|5} / {seq, 0,
 *     count} (bus_redis_update_reply), and core/bus_reply.c: recent-buffer ranges
 *     (gap fill, replay since N), channel names, a room's messages (an
 *     entry, or a control message such as a seed ask: never both), the backfill sweep
 *     {1, more, cut, room, seq...} and the settle {room, seq, entry...};
 *   presence (core/presence_redis.c): the apply script {room, event, user,
 *     name...}, the sweep script {2|3, room, user, name...}, HGETALL names.
 * Oracles: whatever the reply, interpreters only hand out what the contract
 * allows (seqs >= 1 where a seq is assigned, valid room names, events join
 * or leave, non-NULL strings, entries inside the reply's own bytes, replay
 * entries contiguous from since + 1) and never touch memory outside it; the
 * presence list becomes valid JSON (wire_users_json) whatever bytes it held.
 * hiredis 0.14 (Debian 12) allocates an array for the element count a
 * header declares before any element arrives; inputs declaring more
 * elements than they have bytes are skipped so that known limit of hiredis
 * (see README.md) does not hide our bugs. */
#include "fuzz.h"
#include "redis_alloc.h"
#include "bus_int.h"
#include "bus_redis_int.h"
#include "redis_reply.h"
#include "wire.h"
#include "presence_store.h"
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

/* 1 when s[0..n) contains p (a pointer range check, no comparison of
 * unrelated pointers: every reply string is checked by walking the tree) */
static int inside(const redisReply *r, const char *p, size_t len)
{
    if (!r) return 0;
    if (r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements; i++)
            if (inside(r->element[i], p, len)) return 1;
        return 0;
    }
    if (!r->str) return 0;
    uintptr_t a = (uintptr_t)r->str, b = a + r->len, x = (uintptr_t)p;
    return x >= a && x + len <= b;
}

static void check_entry(const redisReply *rp, const bus_entry *e)
{
    /* "<seq>\n<tail>": the tail starts after the newline, inside the reply */
    FUZZ_CHECK(e->tail && inside(rp, e->tail - 1, e->len + 1) && e->tail[-1] == '\n',
               "entry tail outside the reply");
}

static int each(void *ud, const char *room, const char *event, const char *user, const char *name)
{
    const redisReply *rp = ud;
    FUZZ_CHECK(room && event && user && name, "NULL handed to the presence sink");
    FUZZ_CHECK(room_name_valid(room, strlen(room)), "room '%s'", room);
    FUZZ_CHECK(!strcmp(event, "join") || !strcmp(event, "leave"), "event '%s'", event);
    FUZZ_CHECK(user[0], "empty user");
    FUZZ_CHECK(inside(rp, user, strlen(user)) && inside(rp, name, strlen(name)) &&
               inside(rp, room, strlen(room)), "strings outside the reply");
    return 0;
}

/* The items of a backfill sweep round or a settle answer (read alike): each
 * is an entry to store (its seq the item's, its tail inside the reply), lost
 * (room and seq only) or malformed; past the count there is none. */
typedef int (*item_fn)(const redisReply *rp, size_t k, char *room, uint64_t *seq, bus_entry *e);

static void check_items(const redisReply *rp, size_t items, item_fn item, const char *what)
{
    char room[CHAT_ROOM_MAX + 1];
    uint64_t seq = 0;
    for (size_t k = 0; k < items + 2; k++) {
        bus_entry x;
        int st = item(rp, k, room, &seq, &x);
        if (k >= items) { FUZZ_CHECK(st == -1, "%s item %zu past %zu", what, k, items); continue; }
        if (st < 0) continue;
        FUZZ_CHECK(room_name_valid(room, strlen(room)), "%s room '%s'", what, room);
        if (st == 1) {
            FUZZ_CHECK(x.seq == seq, "%s entry %" PRIu64 " for seq %" PRIu64, what, x.seq, seq);
            check_entry(rp, &x);
        }
    }
}

static void interpret(const redisReply *rp)
{
    uint64_t v = 0, seq = 0, dup = 9;
    if (redis_reply_u64(rp, &v) == 0) {
        FUZZ_CHECK(rp->type == REDIS_REPLY_NIL || rp->type == REDIS_REPLY_INTEGER ||
                   rp->type == REDIS_REPLY_STRING || rp->type == REDIS_REPLY_STATUS,
                   "u64 from type %d", rp->type);
        if (rp->type == REDIS_REPLY_INTEGER) FUZZ_CHECK(rp->integer >= 0 && v == (uint64_t)rp->integer, "int");
        if (rp->type == REDIS_REPLY_STRING) {
            char b[24];
            snprintf(b, sizeof b, "%" PRIu64, v);
            const char *s = rp->str;
            while (s[0] == '0' && s[1]) s++;
            FUZZ_CHECK(strlen(rp->str) == rp->len && strcmp(s, b) == 0, "'%s' read as %s", rp->str, b);
        }
    }
    redis_redirect rd;
    redis_err_kind ek = redis_reply_error(rp, &rd);
    FUZZ_CHECK((ek != REDIS_E_NONE) == (rp->type == REDIS_REPLY_ERROR), "error kind %d of type %d",
               ek, rp->type);
    if (ek == REDIS_E_MOVED || ek == REDIS_E_ASK)
        FUZZ_CHECK(rd.slot >= 0 && rd.slot < 16384 && rd.addr.port >= 1 && rd.addr.port <= 65535 &&
                   rd.addr.host[0] && strnlen(rd.addr.host, sizeof rd.addr.host) < sizeof rd.addr.host,
                   "redirect slot %d port %d", rd.slot, rd.addr.port);
    FUZZ_CHECK(redis_err_name(ek) != NULL, "no name for error kind %d", ek);
    /* INFO memory (the eviction warning): named only when the reply says
     * "\nmaxmemory:" a decimal >= 1 and "\nmaxmemory_policy:" a word other
     * than noeviction, the policy inside the reply */
    uint64_t mm = 0;
    const char *pol = NULL;
    size_t pl = 0;
    if (redis_reply_info_evicts(rp, &mm, &pol, &pl) == 1) {
        FUZZ_CHECK(rp->type == REDIS_REPLY_STRING && mm >= 1, "evicts: type %d maxmemory %" PRIu64, rp->type, mm);
        FUZZ_CHECK(pol && pl >= 1 && inside(rp, pol, pl) && (size_t)(pol - rp->str) >= 18 &&
                   memcmp(pol - 18, "\nmaxmemory_policy:", 18) == 0, "policy not a maxmemory_policy line's");
        FUZZ_CHECK(!(pl == 10 && !memcmp(pol, "noeviction", 10)), "noeviction read as evicting");
        for (size_t i = 0; i < pl; i++)
            FUZZ_CHECK((pol[i] >= 'a' && pol[i] <= 'z') || pol[i] == '-', "policy byte 0x%02x", (unsigned char)pol[i]);
        const char *m = memmem(rp->str, rp->len, "\nmaxmemory:", 11);
        FUZZ_CHECK(m, "evicts without a maxmemory line");
        char b[24];
        int bl = snprintf(b, sizeof b, "%" PRIu64, mm);
        m += 11;
        size_t left = (size_t)(rp->str + rp->len - m), z = 0;
        while (z < left && m[z] == '0') z++;   /* leading zeros read as such */
        FUZZ_CHECK(left - z >= (size_t)bl && !memcmp(m + z, b, (size_t)bl) &&
                   (left - z == (size_t)bl || m[z + bl] == '\r' || m[z + bl] == '\n'),
                   "maxmemory %s is not the line's", b);
    } else {
        FUZZ_CHECK(pol == NULL && mm == 0 && pl == 0, "outputs set without eviction");
    }
    redis_shards sh;
    char serr[128];
    if (redis_reply_shards(rp, rp->elements & 1, &sh, serr, sizeof serr) == 0) {
        int last = -1;
        for (int i = 0; i < sh.n; i++) {
            FUZZ_CHECK(sh.s[i].master.host[0] && sh.s[i].master.port >= 1 &&
                       sh.s[i].master.port <= 65535 && sh.s[i].nranges >= 1, "shard %d", i);
            for (int k = 0; k < sh.s[i].nranges; k++)
                FUZZ_CHECK(sh.s[i].ranges[k][0] <= sh.s[i].ranges[k][1] && sh.s[i].ranges[k][1] < 16384,
                           "range %d..%d", sh.s[i].ranges[k][0], sh.s[i].ranges[k][1]);
            FUZZ_CHECK(sh.s[i].ranges[0][0] >= last, "shards not sorted by first slot");
            last = sh.s[i].ranges[0][0];
        }
        redis_shards_free(&sh);
    }
    if (bus_redis_publish_reply(rp, &seq, &dup) == 0)
        FUZZ_CHECK(rp->type == REDIS_REPLY_ARRAY && rp->elements == 2 && dup <= 2 &&
                   (seq >= 1 || dup == 2) && seq <= SEQ_MAX, "publish seq %" PRIu64 " dup %" PRIu64, seq, dup);
    /* a message update's answer: {0, 3|4|5} refused, {seq, 0, count} a
     * react (count a number of users: 0..2^63-1), else a message's */
    bus_req ureq;
    memset(&ureq, 0, sizeof ureq);
    ureq.count = -7;
    seq = dup = 0;
    int upd = bus_redis_update_reply(&ureq, rp, &seq, &dup);
    FUZZ_CHECK(upd == 0 || upd == -1 || upd == -2 || (upd >= 3 && upd <= 5), "update status %d", upd);
    if (upd >= 3)
        FUZZ_CHECK(rp->type == REDIS_REPLY_ARRAY && rp->elements == 2, "update refusal of %zu elements",
                   rp->elements);
    if (upd == -2)
        FUZZ_CHECK(rp->elements == 3 && seq >= 1 && seq <= SEQ_MAX && dup == 0 && ureq.count >= 0,
                   "react seq %" PRIu64 " dup %" PRIu64 " count %" PRId64, seq, dup, ureq.count);
    else
        FUZZ_CHECK(ureq.count == -7, "count set on a status-%d answer", upd);
    head_res h;
    if (bus_rhead_parse(rp, &h) == 0) {
        FUZZ_CHECK(h.status == 0 || h.status == 2 || h.status == 3, "head status %d", h.status);
        size_t el = strnlen(h.epoch, sizeof h.epoch);
        FUZZ_CHECK(el < sizeof h.epoch && (h.status != 0 || el >= 1), "epoch of %zu bytes", el);
        if (h.status == 0)
            FUZZ_CHECK(rp->elements == 4 && rp->element[2]->len >= el &&
                       memcmp(rp->element[2]->str, h.epoch, el) == 0, "epoch is not the reply's");
    }

    size_t cap = rp->type == REDIS_REPLY_ARRAY ? rp->elements : 0;
    bus_entry *e = calloc(cap + 1, sizeof *e);
    FUZZ_CHECK(e, "oom");
    size_t n = bus_reply_entries(rp, e, cap);
    FUZZ_CHECK(n <= cap, "%zu entries from %zu elements", n, cap);
    for (size_t i = 0; i < n; i++) check_entry(rp, &e[i]);
    uint64_t since = n ? e[0].seq - 1 : 0;
    size_t r = bus_reply_replay(rp, since, cap, e);
    FUZZ_CHECK(r <= cap, "replay %zu > %zu", r, cap);
    for (size_t i = 0; i < r; i++) {
        check_entry(rp, &e[i]);
        FUZZ_CHECK(e[i].seq == since + 1 + i, "replay entry %zu has seq %" PRIu64, i, e[i].seq);
    }

    redis_push p;
    redis_push_kind pk = redis_reply_push(rp, &p);
    char room[CHAT_ROOM_MAX + 1], kind[32];
    if (pk != REDIS_PUSH_NONE && pk != REDIS_PUSH_PONG) {
        FUZZ_CHECK(p.channel && inside(rp, p.channel, p.channel_len), "channel outside the reply");
        if (bus_reply_channel("chat:", p.channel, p.channel_len, room, kind, sizeof kind) == 0) {
            FUZZ_CHECK(room_name_valid(room, strlen(room)), "push room '%s'", room);
            FUZZ_CHECK(kind[0] && strlen(kind) < sizeof kind, "channel kind");
        }
        if (pk == REDIS_PUSH_MESSAGE || pk == REDIS_PUSH_SMESSAGE) {
            FUZZ_CHECK(p.data && (p.data_len == 0 || inside(rp, p.data, p.data_len)),
                       "message data outside the reply");
            bus_entry x;
            char tag[BUS_TAG_LEN + 1];
            if (bus_parse_entry(p.data, p.data_len, &x) == 0) {
                check_entry(rp, &x);
                /* an entry is never a room's control message */
                FUZZ_CHECK(bus_reply_room_control(p.data, p.data_len, tag) == -1,
                           "an entry read as a control message");
            } else {
                int c = bus_reply_room_control(p.data, p.data_len, tag);
                FUZZ_CHECK(c == -1 || c == BUS_CTL_UNKNOWN || c == BUS_CTL_SEED_ASK, "control %d", c);
                FUZZ_CHECK(c != BUS_CTL_SEED_ASK || (strlen(tag) == BUS_TAG_LEN &&
                           strspn(tag, "0123456789abcdef") == BUS_TAG_LEN), "seed ask tag");
            }
        }
    }

    /* the backfill sweep and its settle */
    size_t items = 0;
    int cmore = -1;
    uint64_t ccut = 1;
    int round = bus_reply_check_round(rp, &cmore, &ccut, &items);
    FUZZ_CHECK(round >= -1 && round <= 1 && (round == 1 || (items == 0 && cmore == 0 && ccut == 0)) &&
               cmore >= 0 && cmore <= 3, "check round %d items %zu more %d", round, items, cmore);
    for (size_t k = 0; round == 1 && k < items + 2; k++) {
        int st = bus_reply_check_item(rp, k, room, &seq);
        if (k >= items) { FUZZ_CHECK(st == -1, "pair %zu past %zu", k, items); continue; }
        if (st == 0) FUZZ_CHECK(room_name_valid(room, strlen(room)), "check room '%s'", room);
    }
    items = bus_reply_settle_items(rp);
    FUZZ_CHECK(items <= cap / 3, "%zu settle items from %zu elements", items, cap);
    check_items(rp, items, bus_reply_settle_item, "settle");

    const char *bad = NULL;
    int t = pstore_redis_apply_reply(rp, each, (void *)rp, &bad);
    FUZZ_CHECK(t >= -1 && (t == -1) == (rp->type != REDIS_REPLY_ARRAY), "apply %d", t);
    if (bad) FUZZ_CHECK(room_name_valid(bad, strlen(bad)), "bad room '%s'", bad);
    int more = -1;
    int swept = pstore_redis_sweep_reply(rp, each, (void *)rp, &more);
    FUZZ_CHECK(swept >= -1 && (more == 0 || more == 1), "sweep %d more %d", swept, more);
    presence_user *u = calloc(cap / 2 + 1, sizeof *u);
    FUZZ_CHECK(u, "oom");
    size_t nu = pstore_redis_list_reply(rp, u);
    FUZZ_CHECK(nu <= cap / 2, "%zu users from %zu elements", nu, cap);
    for (size_t i = 0; i < nu; i++)
        FUZZ_CHECK(u[i].user && u[i].user[0] && u[i].name && inside(rp, u[i].user, strlen(u[i].user)) &&
                   inside(rp, u[i].name, strlen(u[i].name)), "user %zu", i);
    /* the users become a presence_state frame / the HTTP presence answer:
     * valid JSON whatever bytes Redis held, the same strings when they
     * were UTF-8 text */
    /* every user (regress-users-json-budget: user and name of 127 control
     * characters each, broken JSON before main's JSON_IDENT_MAX sizing) */
    size_t jl = 0;
    char *js = wire_users_json("{\"room\":\"r\",", u, nu, &jl);
    FUZZ_CHECK(js, "wire_users_json failed");
    json_error_t je;
    json_t *j = json_loadb(js, jl, 0, &je);
    json_t *arr = json_object_get(j, "users");
    FUZZ_CHECK(json_is_array(arr) && json_array_size(arr) == nu, "users JSON: %s", je.text);
    for (size_t i = 0; i < nu; i++) {
        const char *ju = json_string_value(json_object_get(json_array_get(arr, i), "user"));
        const char *jn = json_string_value(json_object_get(json_array_get(arr, i), "name"));
        FUZZ_CHECK(ju && jn, "user %zu without user/name", i);
        /* wire_users_json keeps 127 bytes of each */
        if (strlen(u[i].user) <= 127 && utf8_valid(u[i].user, strlen(u[i].user)))
            FUZZ_CHECK(!strcmp(ju, u[i].user), "user %zu", i);
        if (strlen(u[i].name) <= 127 && utf8_valid(u[i].name, strlen(u[i].name)))
            FUZZ_CHECK(!strcmp(jn, u[i].name), "name %zu", i);
    }
    json_decref(j);
    free(js);
    free(u);
    free(e);
}

/* Skip inputs whose array headers declare more elements than there are
 * bytes (hiredis 0.14 callocs the count up front). */
static int sane_counts(const uint8_t *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (d[i] != '*') continue;
        size_t j = i + 1;
        if (j < n && d[j] == '-') continue;
        uint64_t v = 0;
        for (; j < n && d[j] >= '0' && d[j] <= '9'; j++) {
            v = v * 10 + (d[j] - '0');
            if (v > n) return 0;
        }
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!sane_counts(data, size)) return 0;
    redisReader *rd = redis_reader_new();
    FUZZ_CHECK(rd, "oom");
    redisReaderFeed(rd, (const char *)data, size);
    for (int k = 0; k < 64; k++) {
        void *rep = NULL;
        if (redisReaderGetReply(rd, &rep) != REDIS_OK || !rep) break;
        interpret(rep);
        redis_reply_free(rep);
        FUZZ_CHECK(redis_reader_in_use(rd) == 0, "reply arena not empty after its reply was freed");
    }
    redis_reader_free(rd);
    FUZZ_CHECK(redis_alloc_arenas() == 0, "a reader's arena outlived its reader and replies");
    return 0;
}
