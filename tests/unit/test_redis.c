/* test_redis: the Redis connection layer (core/redis_*.c).
 * Pure parts: the URL parser (every form, percent-decoding, IPv6, TLS
 * options, errors), CRC16 and key slots, slot tags, the reply interpreters
 * (errors and redirects, pushes, integers, CLUSTER SHARDS), the reply
 * objects of chatd's readers (redis_alloc.c: every type, nesting, replies
 * in pieces across two readers, a reply larger than the arena).
 * Against real redis-servers started here (ports 23000-23999): commands,
 * pipelining, large values, scripts (EVALSHA of up to 32 words built on
 * the stack, more on the heap) and NOSCRIPT, SUBSCRIBE and SSUBSCRIBE
 * pushes (hiredis' async layer aborts on the latter), AUTH with a user,
 * SELECT, a server killed and restarted (readiness sentence, backoff without
 * a tight loop), a stalled server (reply deadline), a standalone URL
 * pointed at a cluster node (MOVED: no reconnect loop, readiness says why),
 * TLS (rediss:// with a CA, with verification off, a wrong CA, a client
 * certificate), and a 3-master cluster: slots against CLUSTER KEYSLOT,
 * routing to every shard, ASK during a slot migration, MOVED after it,
 * SSUBSCRIBE moved by the server (sunsubscribe) and resubscribed at the new
 * owner, one master killed (the others keep serving; readiness names the
 * shard) and back.
 * Exit 0 pass, 1 fail, 77 skip (no redis-server: pure parts only ran). */
#define _GNU_SOURCE
#include "redis_client.h"
#include "redis_conn.h"
#include "redis_alloc.h"
#include "redis_reply.h"
#include "redis_slot.h"
#include "redis_url.h"
#include "log.h"
#include "util.h"
#include "redis_procs.h"
#include "check.h"
#include "resp_text.h"
#include "uvwait.h"
#include <inttypes.h>

static uv_loop_t *loop;


#define WAIT(cond, ms) WAIT_ON(loop, cond, ms)

static void spin(int ms) { run_on(loop, ms); }

/* ---------------- pure: URL ---------------- */

static void test_url(void)
{
    redis_url u;
    char err[200];
    CHECK(redis_url_parse("redis://127.0.0.1:6380/2", &u, err, sizeof err) == 0, "%s", err);
    CHECK(!u.tls && !u.cluster && u.nseeds == 1 && !strcmp(u.seeds[0].host, "127.0.0.1") &&
          u.seeds[0].port == 6380 && u.db == 2, "plain");
    /* defect 10: one parser, percent-decoding of both parts */
    CHECK(redis_url_parse("redis://alice:s3cr%40t@host", &u, err, sizeof err) == 0, "%s", err);
    CHECK(!strcmp(u.user, "alice") && !strcmp(u.pass, "s3cr@t") && !strcmp(u.seeds[0].host, "host") &&
          u.seeds[0].port == 6379, "user/pass decoded: '%s' '%s'", u.user, u.pass);
    CHECK(redis_url_parse("redis://:s%40cret%3a%2F@h:7000", &u, err, sizeof err) == 0, "%s", err);
    CHECK(!u.user[0] && !strcmp(u.pass, "s@cret:/"), "password only: '%s'", u.pass);
    CHECK(redis_url_parse("redis://[::1]:6390/", &u, err, sizeof err) == 0 &&
          !strcmp(u.seeds[0].host, "::1") && u.seeds[0].port == 6390 && u.db == 0, "ipv6");
    CHECK(redis_url_parse("redis://[::1]", &u, err, sizeof err) == 0 && u.seeds[0].port == 6379,
          "ipv6 default port");
    CHECK(redis_url_parse("redis://u:p@[fe80::1:2]:1/9", &u, err, sizeof err) == 0 &&
          !strcmp(u.seeds[0].host, "fe80::1:2") && u.db == 9, "ipv6 + creds + db");
    CHECK(redis_url_parse("rediss://h.example:6380?ssl_ca_certs=/tmp/ca%20x.pem&ssl_cert_reqs=none",
                          &u, err, sizeof err) == 0, "%s", err);
    CHECK(u.tls && !u.cluster && !strcmp(u.ca_file, "/tmp/ca x.pem") && u.verify == 0, "tls opts");
    CHECK(redis_url_parse("rediss://h?ssl_certfile=c.pem&ssl_keyfile=k.pem&ssl_cert_reqs=required",
                          &u, err, sizeof err) == 0 && u.verify == 1 &&
          !strcmp(u.cert_file, "c.pem") && !strcmp(u.key_file, "k.pem"), "client cert opts");
    CHECK(redis_url_parse("redis+cluster://a:7000,b.example:7001,[::1]:7002", &u, err,
                          sizeof err) == 0, "%s", err);
    CHECK(u.cluster && !u.tls && u.nseeds == 3 && !strcmp(u.seeds[1].host, "b.example") &&
          u.seeds[1].port == 7001 && !strcmp(u.seeds[2].host, "::1"), "cluster seeds");
    CHECK(redis_url_parse("rediss+cluster://u:p%25@a:7000/", &u, err, sizeof err) == 0 &&
          u.cluster && u.tls && !strcmp(u.pass, "p%"), "tls cluster");
    CHECK(redis_url_parse("redis+cluster://a:7000/0", &u, err, sizeof err) == 0, "db 0 in cluster");
    static const char *bad[] = {
        "http://x", "redis:/x", "redis://", "redis://h:0", "redis://h:99999", "redis://h:12a",
        "redis://h:", "redis://h/x", "redis://h/1x", "redis://h:1,h2:2", "redis+cluster://h/1",
        "redis://u@h", "redis://u:@h", "redis://h?ssl_ca_certs=x", "rediss://h?foo=1",
        "rediss://h?ssl_cert_reqs=maybe", "rediss://h?ssl_ca_certs", "redis://:p%4@h",
        "redis://:p%zz@h", "redis://:p%00@h", "redis://[::1", "redis://[]:1", "redis://[::g]",
        "redis+cluster://a,", "redis+cluster://a:1,,b:2", "redis://h#frag", "redis://ho st",
        "redis://h\n", NULL};
    for (int i = 0; bad[i]; i++) {
        err[0] = 0;
        CHECK(redis_url_parse(bad[i], &u, err, sizeof err) != 0, "accepted %s", bad[i]);
        CHECK(!strncmp(err, "redis url: ", 11), "message for %s: '%s'", bad[i], err);
    }
    char many[400] = "redis+cluster://";
    for (int i = 0; i < 17; i++) strcat(many, i ? ",h:1" : "h:1");
    CHECK(redis_url_parse(many, &u, err, sizeof err) != 0 && strstr(err, "too many"), "17 seeds");
    CHECK(redis_url_parse(NULL, &u, err, sizeof err) != 0, "NULL");
    redis_addr a = {"::1", 7000};
    char out[64];
    redis_addr_format(&a, out, sizeof out);
    CHECK(!strcmp(out, "[::1]:7000"), "%s", out);
}

/* ---------------- pure: CRC16, slots, tags ---------------- */

static void test_slots_pure(void)
{
    CHECK(redis_crc16("123456789", 9) == 0x31C3, "crc16 check value %04x",
          redis_crc16("123456789", 9));
    CHECK(redis_key_slot("{user1000}.following", 20) == redis_key_slot("{user1000}.followers", 20),
          "same tag, same slot");
    CHECK(redis_key_slot("foo{}{bar}", 10) == (redis_crc16("foo{}{bar}", 10) & 16383),
          "empty tag: whole key");
    CHECK(redis_key_slot("foo{{bar}}zap", 13) == (redis_crc16("{bar", 4) & 16383), "{{bar}}");
    CHECK(redis_key_slot("foo{bar}{zap}", 13) == (redis_crc16("bar", 3) & 16383), "first tag");
    CHECK(redis_room_slot("lobby") == redis_key_slot("chat:{lobby}:seq", 16), "room slot");
    int ok = 1, maxlen = 0;
    for (int s = 0; s < REDIS_SLOTS; s++) {
        const char *t = redis_slot_tag(s);
        if (!t || t[0] != '~' || redis_key_slot(t, strlen(t)) != s) { ok = 0; break; }
        if ((int)strlen(t) > maxlen) maxlen = (int)strlen(t);
        char k[32];
        int n = snprintf(k, sizeof k, "chat:{%s}:unstored", t);
        if (redis_key_slot(k, (size_t)n) != s) { ok = 0; break; }
    }
    CHECK(ok, "every slot has a tag that hashes to it");
    CHECK(maxlen <= REDIS_SLOT_TAG_MAX - 1, "tag length %d", maxlen);
    CHECK(redis_slot_tag(-1) == NULL && redis_slot_tag(16384) == NULL, "range");

    /* the per-slot copies of a global key, for a master's ranges */
    size_t n = 99;
    char **k = redis_slot_keys(0, NULL, 0, "unstored", &n);
    CHECK(k && n == 1 && !strcmp(k[0], "chat:unstored"), "one Redis: the one key");
    free(k);
    const uint16_t ranges[2][2] = {{0, 2}, {16383, 16383}};
    k = redis_slot_keys(1, ranges, 2, "presence:rooms", &n);
    CHECK(k && n == 4, "4 slots, got %zu", n);
    const int want[4] = {0, 1, 2, 16383};
    for (size_t i = 0; k && i < n && i < 4; i++) {
        char e[48];
        snprintf(e, sizeof e, "chat:{%s}:presence:rooms", redis_slot_tag(want[i]));
        CHECK(!strcmp(k[i], e), "key %zu: %s", i, k[i]);
        CHECK(redis_key_slot(k[i], strlen(k[i])) == want[i], "key %zu on slot %d", i, want[i]);
    }
    free(k);
    k = redis_slot_keys(1, ranges, 0, "unstored", &n);
    CHECK(k == NULL && n == 0, "a master with no slot has no key");
}

/* ---------------- pure: replies ---------------- */

static void test_replies(void)
{
    redis_redirect rd;
    redisReply *r = RESP("-MOVED 3999 127.0.0.1:6381\r\n");
    CHECK(redis_reply_error(r, &rd) == REDIS_E_MOVED && rd.slot == 3999 &&
          !strcmp(rd.addr.host, "127.0.0.1") && rd.addr.port == 6381, "moved");
    freeReplyObject(r);
    r = RESP("-ASK 1 ::1:7000\r\n");
    CHECK(redis_reply_error(r, &rd) == REDIS_E_ASK && rd.slot == 1 && !strcmp(rd.addr.host, "::1") &&
          rd.addr.port == 7000, "ask ipv6");
    freeReplyObject(r);
    r = RESP("-MOVED 16383 ?:6381\r\n");
    CHECK(redis_reply_error(r, &rd) == REDIS_E_MOVED && !strcmp(rd.addr.host, "?"), "unknown endpoint");
    freeReplyObject(r);
    static const struct { const char *resp; redis_err_kind k; } cases[] = {
        {"-MOVED 16384 h:1\r\n", REDIS_E_OTHER}, {"-MOVED x h:1\r\n", REDIS_E_OTHER},
        {"-MOVED 1 h\r\n", REDIS_E_OTHER}, {"-MOVED 1 h:0\r\n", REDIS_E_OTHER},
        {"-MOVED 1 :1\r\n", REDIS_E_OTHER}, {"-MOVEDX 1 h:1\r\n", REDIS_E_OTHER},
        {"-MOVED\r\n", REDIS_E_OTHER},
        {"-TRYAGAIN Multiple keys request during rehashing of slot\r\n", REDIS_E_TRYAGAIN},
        {"-CLUSTERDOWN The cluster is down\r\n", REDIS_E_CLUSTERDOWN},
        {"-NOSCRIPT No matching script.\r\n", REDIS_E_NOSCRIPT},
        {"-LOADING Redis is loading the dataset in memory\r\n", REDIS_E_LOADING},
        {"-MASTERDOWN Link with MASTER is down\r\n", REDIS_E_MASTERDOWN},
        {"-READONLY You can't write against a read only replica.\r\n", REDIS_E_READONLY},
        {"-ERR wrong\r\n", REDIS_E_OTHER}, {"+OK\r\n", REDIS_E_NONE}, {":1\r\n", REDIS_E_NONE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        r = resp_str(cases[i].resp);
        CHECK(r && redis_reply_error(r, &rd) == cases[i].k, "%s -> %s", cases[i].resp,
              r ? redis_err_name(redis_reply_error(r, &rd)) : "unparsed");
        if (r) freeReplyObject(r);
    }
    CHECK(redis_reply_error(NULL, NULL) == REDIS_E_NONE, "NULL");

    redis_push p;
    r = RESP("*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\nda\nt\r\n");
    CHECK(redis_reply_push(r, &p) == REDIS_PUSH_MESSAGE && p.channel_len == 2 &&
          !memcmp(p.channel, "ch", 2) && p.data_len == 4 && !memcmp(p.data, "da\nt", 4), "message");
    freeReplyObject(r);
    r = RESP("*3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$0\r\n\r\n");
    CHECK(redis_reply_push(r, &p) == REDIS_PUSH_SMESSAGE && p.data_len == 0, "smessage");
    freeReplyObject(r);
    r = RESP("*3\r\n$10\r\nssubscribe\r\n$2\r\nch\r\n:3\r\n");
    CHECK(redis_reply_push(r, &p) == REDIS_PUSH_SSUBSCRIBE && p.count == 3, "ssubscribe");
    freeReplyObject(r);
    r = RESP("*3\r\n$12\r\nsunsubscribe\r\n$2\r\nch\r\n:0\r\n");
    CHECK(redis_reply_push(r, &p) == REDIS_PUSH_SUNSUBSCRIBE, "sunsubscribe");
    freeReplyObject(r);
    r = RESP("*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    CHECK(redis_reply_push(r, &p) == REDIS_PUSH_PONG, "pong");
    freeReplyObject(r);
    static const char *notpush[] = {
        "*3\r\n$7\r\nmessage\r\n:1\r\n$1\r\nx\r\n", "*4\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n",
        "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n$1\r\nb\r\n", "*3\r\n$4\r\nnope\r\n$1\r\na\r\n$1\r\nb\r\n",
        "*1\r\n$7\r\nmessage\r\n", "*3\r\n:1\r\n$1\r\na\r\n$1\r\nb\r\n", "$7\r\nmessage\r\n",
        "*3\r\n$7\r\nmessage\r\n$1\r\na\r\n*0\r\n", "*0\r\n", NULL};
    for (int i = 0; notpush[i]; i++) {
        r = resp_str(notpush[i]);
        CHECK(r && redis_reply_push(r, &p) == REDIS_PUSH_NONE, "not a push: %d", i);
        if (r) freeReplyObject(r);
    }
    uint64_t v;
    static const struct { const char *resp; int ok; uint64_t v; } ints[] = {
        {":5\r\n", 0, 5}, {"$2\r\n42\r\n", 0, 42}, {"$-1\r\n", 0, 0}, {":-1\r\n", -1, 0},
        {"$3\r\n4x2\r\n", -1, 0}, {"$0\r\n\r\n", -1, 0}, {"$20\r\n18446744073709551615\r\n", 0, UINT64_MAX},
        {"$20\r\n18446744073709551616\r\n", -1, 0}, {"*0\r\n", -1, 0}, {"-ERR\r\n", -1, 0}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        r = resp_str(ints[i].resp);
        v = 0;
        CHECK(r && redis_reply_u64(r, &v) == ints[i].ok && (ints[i].ok || v == ints[i].v), "u64 %zu", i);
        if (r) freeReplyObject(r);
    }

    /* CLUSTER SHARDS: two shards (given out of order), tls-port, a replica */
    redis_shards sh;
    char err[200];
    r = RESP("*2\r\n"
              "*4\r\n$5\r\nslots\r\n*4\r\n:100\r\n:200\r\n:0\r\n:10\r\n$5\r\nnodes\r\n*2\r\n"
              "*10\r\n$2\r\nid\r\n$1\r\na\r\n$4\r\nport\r\n:7001\r\n$8\r\ntls-port\r\n:8001\r\n"
              "$2\r\nip\r\n$8\r\n10.0.0.1\r\n$4\r\nrole\r\n$7\r\nreplica\r\n"
              "*14\r\n$2\r\nid\r\n$1\r\nb\r\n$4\r\nport\r\n:7000\r\n$8\r\ntls-port\r\n:8000\r\n"
              "$2\r\nip\r\n$8\r\n10.0.0.2\r\n$8\r\nendpoint\r\n$6\r\nhost-b\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
              "$6\r\nhealth\r\n$6\r\nonline\r\n"
              "*4\r\n$5\r\nslots\r\n*2\r\n:11\r\n:99\r\n$5\r\nnodes\r\n*1\r\n"
              "*8\r\n$4\r\nport\r\n:7005\r\n$2\r\nip\r\n$8\r\n10.0.0.5\r\n$8\r\nendpoint\r\n$1\r\n?\r\n"
              "$4\r\nrole\r\n$6\r\nmaster\r\n");
    CHECK(redis_reply_shards(r, 0, &sh, err, sizeof err) == 0, "%s", err);
    CHECK(sh.n == 2 && sh.s[0].nranges == 2 && sh.s[0].ranges[0][0] == 0 &&
          sh.s[0].ranges[0][1] == 10 && !strcmp(sh.s[0].master.host, "host-b") &&
          sh.s[0].master.port == 7000 && sh.s[0].master_online, "shard 1");
    CHECK(sh.n == 2 && !strcmp(sh.s[1].master.host, "10.0.0.5") && sh.s[1].master.port == 7005 &&
          !sh.s[1].master_online, "shard 2 (endpoint ? -> ip)");
    redis_shards_free(&sh);
    CHECK(redis_reply_shards(r, 1, &sh, err, sizeof err) == 0 && sh.s[0].master.port == 8000 &&
          sh.s[1].master.port == 7005, "tls-port when tls");
    redis_shards_free(&sh);
    freeReplyObject(r);
    /* after a failover: the old master (failed) is still listed first */
    r = RESP("*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*2\r\n"
              "*8\r\n$4\r\nport\r\n:7000\r\n$2\r\nip\r\n$1\r\nh\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
              "$6\r\nhealth\r\n$4\r\nfail\r\n"
              "*8\r\n$4\r\nport\r\n:7003\r\n$2\r\nip\r\n$1\r\nh\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
              "$6\r\nhealth\r\n$6\r\nonline\r\n");
    CHECK(redis_reply_shards(r, 0, &sh, err, sizeof err) == 0 && sh.n == 1 &&
          sh.s[0].master.port == 7003 && sh.s[0].master_online, "the online master of two: %s", err);
    if (sh.s) redis_shards_free(&sh);
    freeReplyObject(r);
    static const char *badmaps[] = {
        "*0\r\n", "-ERR This instance has cluster support disabled\r\n", ":1\r\n",
        "*1\r\n*4\r\n$5\r\nslots\r\n*1\r\n:1\r\n$5\r\nnodes\r\n*0\r\n",
        "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:5\r\n:1\r\n$5\r\nnodes\r\n*1\r\n*4\r\n$4\r\nport\r\n:1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n",
        "*2\r\n*4\r\n$5\r\nslots\r\n*2\r\n:1\r\n:5\r\n$5\r\nnodes\r\n*1\r\n*6\r\n$4\r\nport\r\n:1\r\n$2\r\nip\r\n$1\r\nh\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
        "*4\r\n$5\r\nslots\r\n*2\r\n:5\r\n:9\r\n$5\r\nnodes\r\n*1\r\n*6\r\n$4\r\nport\r\n:2\r\n$2\r\nip\r\n$1\r\nh\r\n$4\r\nrole\r\n$6\r\nmaster\r\n",
        "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:1\r\n:20000\r\n$5\r\nnodes\r\n*1\r\n*6\r\n$4\r\nport\r\n:1\r\n$2\r\nip\r\n$1\r\nh\r\n$4\r\nrole\r\n$6\r\nmaster\r\n",
        NULL};
    for (int i = 0; badmaps[i]; i++) {
        r = resp_str(badmaps[i]);
        err[0] = 0;
        CHECK(r && redis_reply_shards(r, 0, &sh, err, sizeof err) != 0 && err[0], "bad map %d", i);
        if (r) freeReplyObject(r);
    }
}

/* ---------------- a recording client ---------------- */

typedef struct rec {
    redis_client *c;
    int nodes_up, nodes_down, maps;
    int pushes, messages, sunsubs;
    char last_ch[128], last_data[256];
    uint64_t last_push_node;
} rec;

static void on_node(void *ud, uint64_t node, int up)
{
    rec *r = ud;
    if (up) r->nodes_up++; else r->nodes_down++;
}

static void on_map(void *ud) { ((rec *)ud)->maps++; }

static void on_push(void *ud, uint64_t node, const redis_push *p)
{
    rec *r = ud;
    r->pushes++;
    r->last_push_node = node;
    snprintf(r->last_ch, sizeof r->last_ch, "%.*s", (int)p->channel_len, p->channel);
    if (p->kind == REDIS_PUSH_MESSAGE || p->kind == REDIS_PUSH_SMESSAGE) {
        r->messages++;
        snprintf(r->last_data, sizeof r->last_data, "%.*s", (int)p->data_len, p->data);
    }
    if (p->kind == REDIS_PUSH_SUNSUBSCRIBE || p->kind == REDIS_PUSH_UNSUBSCRIBE) r->sunsubs++;
}

static const redis_client_handlers RH = {on_node, on_map, on_push};
static const char *SCRIPTS[] = {"return ARGV[1]", "return redis.call('GET', KEYS[1])",
                                "return #KEYS .. ':' .. table.concat(KEYS, ',') .. '|' .. table.concat(ARGV, ',')"};
#define NSCRIPTS (int)(sizeof SCRIPTS / sizeof SCRIPTS[0])

static redis_client *client_run(rec *r, const char *url, int want_sub, int want_run_id)
{
    char err[256];
    memset(r, 0, sizeof *r);
    redis_client_opts o = {url, "test", SCRIPTS, NSCRIPTS, want_sub, want_run_id, 0};
    r->c = redis_client_new(loop, &o, &RH, r, err, sizeof err);
    CHECK(r->c, "client %s: %s", url, err);
    return r->c;
}

static redis_client *client(rec *r, const char *url, int want_sub) { return client_run(r, url, want_sub, 1); }

/* one reply, copied */
typedef struct ans {
    int done, type, null;
    long long integer;
    char str[256];
    size_t len;
    uint64_t node;
} ans;

static void ans_cb(void *ud, const redisReply *r)
{
    ans *a = ud;
    a->done++;
    if (!r) { a->null = 1; return; }
    a->type = r->type;
    a->integer = r->integer;
    a->len = r->len;
    if (r->str) snprintf(a->str, sizeof a->str, "%.*s", (int)r->len, r->str);
}

static void sub_cb(void *ud, uint64_t node, const redisReply *r)
{
    ans *a = ud;
    a->node = node;
    ans_cb(ud, r);
}

static int call(redis_client *c, int slot, int script, ans *a, int argc, ...)
{
    const char *argv[16];
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc; i++) argv[i] = va_arg(ap, const char *);
    va_end(ap);
    memset(a, 0, sizeof *a);
    redis_call how = {.slot = slot, .node = 0, .script = script};
    return redis_client_call(c, &how, argc, argv, NULL, ans_cb, a);
}

/* synchronous call: waits for the answer */
static ans sync_call(redis_client *c, int slot, int script, int argc, ...)
{
    const char *argv[16];
    ans a;
    memset(&a, 0, sizeof a);
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc; i++) argv[i] = va_arg(ap, const char *);
    va_end(ap);
    redis_call how = {.slot = slot, .node = 0, .script = script};
    if (redis_client_call(c, &how, argc, argv, NULL, ans_cb, &a) != 0) {
        a.done = -1;
        return a;
    }
    WAIT(a.done, 8000);
    return a;
}

static int key_slot(const char *k) { return redis_key_slot(k, strlen(k)); }

/* the server's run_id, asked directly (INFO server) */
static void server_run_id(int srv, char out[41])
{
    out[0] = 0;
    redisReply *r = rp_cmd(srv, "INFO server");
    const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "run_id:") : NULL;
    if (p) snprintf(out, 41, "%.40s", p + 7);
    if (r) freeReplyObject(r);
}

/* SET key to a word whose placeholder becomes the run_id of the server the
 * SET went to (through ASK or MOVED in a cluster) */
static ans run_set(redis_client *c, int slot, const char *key)
{
    ans a;
    memset(&a, 0, sizeof a);
    const char *argv[] = {"SET", key, "x----------------------------------------"};
    redis_call how = {.slot = slot, .node = 0, .script = -1, .run_arg = 2};
    if (redis_client_call(c, &how, 3, argv, NULL, ans_cb, &a) != 0) {
        a.done = -1;
        return a;
    }
    WAIT(a.done, 8000);
    return a;
}

/* the value of key on server srv, asked directly, compared with "x" + its run_id */
static int holds_own_run_id(int srv, const char *key)
{
    char rid[41], want[42];
    server_run_id(srv, rid);
    snprintf(want, sizeof want, "x%s", rid);
    redisReply *r = rp_cmd(srv, "GET %s", key);
    int ok = strlen(rid) == 40 && r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, want);
    if (r) freeReplyObject(r);
    return ok;
}

/* a call with redis_call.run_arg: its placeholder reaches the server as the
 * run_id of the server it went to (script 0 echoes ARGV[1]; ECHO the word) */
static ans run_call(redis_client *c, int script, const char *word)
{
    ans a;
    memset(&a, 0, sizeof a);
    const char *sargv[] = {"0", word}, *pargv[] = {"ECHO", word};
    redis_call how = {.slot = -1, .node = 0, .script = script, .run_arg = 1};
    if (redis_client_call(c, &how, 2, script >= 0 ? sargv : pargv, NULL, ans_cb, &a) != 0) {
        a.done = -1;
        return a;
    }
    WAIT(a.done, 8000);
    return a;
}

/* EVALSHA with n arguments after numkeys (2 keys, the rest ARGV): up to
 * 30 the command is built on the stack, from 31 (33 with EVALSHA and the
 * sha) on the heap (redis_client_call). Script 2 echoes its keys and
 * arguments in order. */
static void script_args(redis_client *c, int n)
{
    const char *argv[80];
    size_t lens[80];
    char bufs[80][16];
    char want[1024];
    size_t w = (size_t)snprintf(want, sizeof want, "2:");
    argv[0] = "2";
    lens[0] = 1;
    for (int i = 1; i <= n; i++) {
        /* keys {t}k1,{t}k2 (one slot), then a0,a1,... of varying lengths */
        int l = i <= 2 ? snprintf(bufs[i], sizeof bufs[i], "{t}k%d", i)
                       : snprintf(bufs[i], sizeof bufs[i], "a%d%.*s", i - 3, (i * 7) % 5, "xxxxx");
        argv[i] = bufs[i];
        lens[i] = (size_t)l;
        w += (size_t)snprintf(want + w, sizeof want - w, "%s%s", i == 3 ? "|" : i > 1 ? "," : "", bufs[i]);
    }
    ans a;
    memset(&a, 0, sizeof a);
    redis_call how = {.slot = key_slot("{t}k1"), .node = 0, .script = 2};
    int rc = redis_client_call(c, &how, n + 1, argv, lens, ans_cb, &a);
    CHECK(rc == 0, "EVALSHA with %d arguments queued", n + 1);
    if (rc != 0) return;
    WAIT(a.done, 8000);
    /* a.str holds the first 255 bytes; a.len is the whole length */
    CHECK(a.done == 1 && a.type == REDIS_REPLY_STRING && a.len == w &&
          !strncmp(a.str, want, sizeof a.str - 1),
          "EVALSHA with %d arguments (%d words): %s, want %s", n + 1, n + 3, a.str, want);
}

/* ---------------- standalone ---------------- */

typedef struct seqcheck { int n, bad; } seqcheck;
static void incr_cb(void *ud, const redisReply *r)
{
    seqcheck *s = ud;
    s->n++;
    if (!r || r->type != REDIS_REPLY_INTEGER || r->integer != s->n) s->bad++;
}

static void test_standalone(void)
{
    int srv = rp_start(NULL);
    CHECK(srv >= 0, "redis-server");
    if (srv < 0) return;
    char url[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", rp_all[srv].port);
    rec R;
    redis_client *c = client(&R, url, 1);
    if (!c) return;
    CHECK(!redis_client_is_cluster(c), "standalone");
    WAIT(redis_client_ready(c), 3000);
    CHECK(redis_client_ready(c) && R.nodes_up == 1, "ready");
    char why[300];
    CHECK(redis_client_health(c, why, sizeof why) == 1, "health: %s", why);

    ans a = sync_call(c, key_slot("k1"), -1, 3, "SET", "k1", "v1");
    CHECK(a.done == 1 && a.type == REDIS_REPLY_STATUS, "SET");
    a = sync_call(c, -1, -1, 2, "GET", "k1");
    CHECK(a.done == 1 && !strcmp(a.str, "v1"), "GET: %s", a.str);
    a = sync_call(c, 0, 0, 2, "0", "echoed");
    CHECK(a.done == 1 && !strcmp(a.str, "echoed"), "script 0: %s", a.str);
    a = sync_call(c, key_slot("k1"), 1, 2, "1", "k1");
    CHECK(a.done == 1 && !strcmp(a.str, "v1"), "script 1: %s", a.str);
    /* EVALSHA on the stack (up to 32 words) and on the heap (more) */
    for (int n = 28; n <= 32; n++) script_args(c, n);
    script_args(c, 60);

    /* pipelining: replies in order, one callback each */
    seqcheck sq = {0, 0};
    redis_call any = {.slot = -1, .node = 0, .script = -1};
    const char *incr[] = {"INCR", "ctr"};
    int queued = 0;
    for (int i = 0; i < 5000; i++)
        queued += redis_client_call(c, &any, 2, incr, NULL, incr_cb, &sq) == 0;
    WAIT(sq.n == queued, 10000);
    CHECK(queued == 5000 && sq.n == 5000 && sq.bad == 0, "pipeline %d/%d bad %d", sq.n, queued, sq.bad);

    /* large values cross many reads and writes */
    size_t big = 3u << 20;
    char *v = malloc(big + 1);
    for (size_t i = 0; i < big; i++) v[i] = (char)('a' + i % 26);
    v[big] = 0;
    a = sync_call(c, -1, -1, 3, "SET", "big", v);
    CHECK(a.type == REDIS_REPLY_STATUS, "SET big");
    a = sync_call(c, -1, -1, 2, "STRLEN", "big");
    CHECK(a.integer == (long long)big, "STRLEN %lld", a.integer);
    free(v);

    /* redis_call.run_arg: the last 40 bytes of that word become the run_id
     * of the server the call went to, in a script call and a plain command;
     * a word shorter than 40 bytes is refused */
    char rid1[41], want1[42];
    server_run_id(srv, rid1);
    snprintf(want1, sizeof want1, "x%s", rid1);
    a = run_call(c, 0, "x----------------------------------------");
    CHECK(a.done == 1 && strlen(rid1) == 40 && !strcmp(a.str, want1), "run_id in a script call: %s (%s)",
          a.str, rid1);
    a = run_call(c, -1, "x----------------------------------------");
    CHECK(a.done == 1 && !strcmp(a.str, want1), "run_id in a command: %s", a.str);
    a = run_call(c, 0, "too short");
    CHECK(a.done == -1, "a run_arg word under 40 bytes is refused (%d)", a.done);

    /* NOSCRIPT after a flush: loaded again and resent */
    redisReply *fr = rp_cmd(srv, "SCRIPT FLUSH");
    if (fr) freeReplyObject(fr);
    a = sync_call(c, 0, 0, 2, "0", "again");
    CHECK(a.done == 1 && !strcmp(a.str, "again"), "after SCRIPT FLUSH: %s (%d)", a.str, a.type);

    /* subscriptions */
    ans s;
    memset(&s, 0, sizeof s);
    const char *chs[] = {"chan:a", "chan:b", "chan:c"};
    CHECK(redis_client_subscribe(c, 7, 3, chs, NULL, sub_cb, &s) == 0, "subscribe");
    WAIT(s.done, 3000);
    CHECK(s.done == 1 && !s.null && s.node == redis_client_slot_node(c, 7), "subscribed");
    fr = rp_cmd(srv, "PUBLISH chan:b %s", "hello\nworld");
    if (fr) freeReplyObject(fr);
    WAIT(R.messages == 1, 3000);
    CHECK(R.messages == 1 && !strcmp(R.last_ch, "chan:b") && !strcmp(R.last_data, "hello\nworld"),
          "message: %s %s", R.last_ch, R.last_data);
    /* commands still work on the command connection meanwhile */
    a = sync_call(c, -1, -1, 2, "GET", "k1");
    CHECK(!strcmp(a.str, "v1"), "GET while subscribed");
    memset(&s, 0, sizeof s);
    CHECK(redis_client_unsubscribe(c, redis_client_slot_node(c, 7), 3, chs, NULL, sub_cb, &s) == 0,
          "unsubscribe");
    WAIT(s.done, 3000);
    CHECK(s.done == 1 && !s.null, "unsubscribed");
    fr = rp_cmd(srv, "PUBLISH chan:b x");
    CHECK(fr && fr->integer == 0, "no subscriber left");
    if (fr) freeReplyObject(fr);

    /* the server dies: pending commands answer NULL, readiness says why,
     * the node retries with a growing delay (no tight loop) */
    int down0 = R.nodes_down;
    CHECK(call(c, -1, -1, &a, 3, "BLPOP", "nothing", "0") == 0, "blpop");
    spin(50);
    rp_signal(srv, SIGKILL);
    WAIT(R.nodes_down > down0 && a.done, 3000);
    CHECK(a.done == 1 && a.null, "pending command answered NULL");
    CHECK(!redis_client_ready(c) && !redis_client_slot_ready(c, 0), "not ready");
    ans b;
    CHECK(call(c, -1, -1, &b, 1, "PING") == -1, "call while down refused");
    spin(2500);
    CHECK(redis_client_health(c, why, sizeof why) == 0 && strstr(why, "unreachable") &&
          strstr(why, url + 8) && strstr(why, "refused"), "health: %s", why);
    int attempts_logged = R.nodes_down;
    CHECK(attempts_logged == down0 + 1, "on_node(down) once: %d", attempts_logged - down0);
    CHECK(rp_restart(srv) == 0, "restart");
    WAIT(redis_client_ready(c), 5000);
    CHECK(redis_client_ready(c) && R.nodes_up == 2, "back (%d)", R.nodes_up);
    a = sync_call(c, -1, -1, 1, "PING");
    CHECK(!strcmp(a.str, "PONG"), "PING after restart");
    /* the run_id written into a call is the restarted server's */
    char rid2[41], want2[42];
    server_run_id(srv, rid2);
    snprintf(want2, sizeof want2, "x%s", rid2);
    a = run_call(c, 0, "x----------------------------------------");
    CHECK(a.done == 1 && strlen(rid2) == 40 && strcmp(rid1, rid2) != 0 && !strcmp(a.str, want2),
          "run_id after the restart: %s (was %s, now %s)", a.str, rid1, rid2);

    /* a stalled server: the reply deadline fails the node */
    down0 = R.nodes_down;
    call(c, -1, -1, &a, 1, "PING");
    rp_signal(srv, SIGSTOP);
    WAIT(R.nodes_down > down0, 8000);
    CHECK(R.nodes_down > down0 && a.null, "stall detected");
    CHECK(redis_client_health(c, why, sizeof why) == 0 && strstr(why, "no reply"), "health: %s", why);
    rp_signal(srv, SIGCONT);
    WAIT(redis_client_ready(c), 6000);
    CHECK(redis_client_ready(c), "back after the stall");

    /* freed with a command pending: NULL inside free */
    call(c, -1, -1, &a, 3, "BLPOP", "nothing", "0");
    spin(20);
    redis_client_free(c);
    CHECK(a.done == 1 && a.null, "NULL on free");
    spin(50);

    /* AUTH with a user, SELECT */
    fr = rp_cmd(srv, "ACL SETUSER alice on >s3cr@t ~* &* +@all");
    CHECK(fr && fr->type == REDIS_REPLY_STATUS, "ACL");
    if (fr) freeReplyObject(fr);
    snprintf(url, sizeof url, "redis://alice:s3cr%%40t@127.0.0.1:%d/3", rp_all[srv].port);
    c = client(&R, url, 1);
    WAIT(redis_client_ready(c), 3000);
    CHECK(redis_client_ready(c), "ready with user + db");
    a = sync_call(c, -1, -1, 3, "SET", "indb3", "yes");
    fr = rp_cmd(srv, "GET indb3");
    CHECK(fr && fr->type == REDIS_REPLY_NIL, "not in db 0");
    if (fr) freeReplyObject(fr);
    a = sync_call(c, -1, -1, 2, "GET", "indb3");
    CHECK(!strcmp(a.str, "yes"), "in db 3");
    redis_client_free(c);
    snprintf(url, sizeof url, "redis://alice:wrong@127.0.0.1:%d", rp_all[srv].port);
    c = client(&R, url, 0);
    spin(600);
    CHECK(!redis_client_ready(c) && redis_client_health(c, why, sizeof why) == 0 &&
          strstr(why, "AUTH") && strstr(why, "WRONGPASS"), "wrong password: %s", why);
    redis_client_free(c);

    /* a user that may not run INFO: the node never comes up, and says why
     * (chatd needs the run_id; it does not run without the check) */
    fr = rp_cmd(srv, "ACL SETUSER noinfo on >pw ~* &* +@all -info");
    CHECK(fr && fr->type == REDIS_REPLY_STATUS, "ACL noinfo");
    if (fr) freeReplyObject(fr);
    snprintf(url, sizeof url, "redis://noinfo:pw@127.0.0.1:%d", rp_all[srv].port);
    c = client(&R, url, 0);
    spin(600);
    CHECK(!redis_client_ready(c) && redis_client_health(c, why, sizeof why) == 0 &&
          strstr(why, "INFO") && strstr(why, "run_id"), "INFO refused: %s", why);
    redis_client_free(c);
    /* a client that does not ask for the run_id (no database: presence,
     * the admin store, a bus without a seed provider) works without INFO;
     * a run_arg call through it is refused at once, never sent with the
     * placeholder */
    c = client_run(&R, url, 0, 0);
    WAIT(redis_client_ready(c), 3000);
    CHECK(redis_client_ready(c), "up without INFO when the run_id is not wanted");
    a = sync_call(c, -1, -1, 1, "PING");
    CHECK(!strcmp(a.str, "PONG"), "PING without the run_id");
    a = run_call(c, 0, "x----------------------------------------");
    CHECK(a.done == -1, "a run_arg call without a run_id is refused, not sent (%d)", a.done);
    redis_client_free(c);

    rp_signal(srv, SIGKILL);
}

/* redis_conn directly: SSUBSCRIBE and smessage pushes on a standalone 7.x */
typedef struct cstate { int up, down, pushes; char why[200]; char data[64]; } cstate;
static void c_up(redis_conn *c, void *ud) { ((cstate *)ud)->up++; }
static void c_down(redis_conn *c, void *ud, const char *why)
{
    cstate *s = ud;
    s->down++;
    snprintf(s->why, sizeof s->why, "%s", why);
}
static void c_push(redis_conn *c, void *ud, const redis_push *p)
{
    cstate *s = ud;
    s->pushes++;
    snprintf(s->data, sizeof s->data, "%.*s", (int)p->data_len, p->data);
}
static void conn_cb(redis_conn *c, const redisReply *r, void *ud) { ans_cb(ud, r); }

static void test_conn_ssubscribe(void)
{
    int srv = rp_start(NULL);
    if (srv < 0) { check_fail("server"); return; }
    redis_conn_opts o = {.addr = {"127.0.0.1", rp_all[srv].port}};
    cstate st = {0};
    redis_conn_handlers h = {c_up, c_down, c_push};
    redis_conn *c = redis_conn_new(loop, &o, &h, &st);
    WAIT(st.up, 3000);
    CHECK(st.up == 1 && redis_conn_up(c), "conn up");
    ans a;
    memset(&a, 0, sizeof a);
    const char *ch[] = {"{r}msg", "{r}typing"};
    CHECK(redis_conn_subscribe(c, REDIS_PUSH_SSUBSCRIBE, 2, ch, NULL, conn_cb, &a) == 0, "ssub");
    WAIT(a.done, 3000);
    CHECK(a.done == 1 && a.type == REDIS_REPLY_ARRAY, "ssubscribe confirmed");
    redisReply *r = rp_cmd(srv, "SPUBLISH {r}typing hi");
    CHECK(r && r->integer == 1, "spublish reached 1");
    if (r) freeReplyObject(r);
    WAIT(st.pushes == 1, 3000);
    CHECK(st.pushes == 1 && !strcmp(st.data, "hi"), "smessage pushed: %s", st.data);
    /* PING on a subscribed connection answers ["pong", ""]: a reply */
    memset(&a, 0, sizeof a);
    const char *ping[] = {"PING"};
    CHECK(redis_conn_command(c, 1, ping, NULL, conn_cb, &a) == 0, "ping");
    WAIT(a.done, 3000);
    CHECK(a.done == 1 && a.type == REDIS_REPLY_ARRAY, "pong while subscribed");
    /* a command refused in subscribed mode is an error reply, not a desync */
    memset(&a, 0, sizeof a);
    const char *get[] = {"GET", "x"};
    redis_conn_command(c, 2, get, NULL, conn_cb, &a);
    WAIT(a.done, 3000);
    CHECK(a.done == 1 && a.type == REDIS_REPLY_ERROR && redis_conn_up(c), "error: %s", a.str);
    /* CROSSSLOT: channels of two slots in one SSUBSCRIBE, in cluster mode
     * only; standalone accepts it. The server closing the connection: */
    r = rp_cmd(srv, "CLIENT KILL TYPE pubsub");
    if (r) freeReplyObject(r);
    WAIT(st.down, 3000);
    CHECK(st.down == 1 && strstr(st.why, "closed"), "down: %s", st.why);
    spin(20);
    /* refused connect, reported by the poll error path */
    rp_signal(srv, SIGKILL);
    cstate st2 = {0};
    c = redis_conn_new(loop, &o, &h, &st2);
    WAIT(st2.down, 3000);
    CHECK(st2.down == 1 && strstr(st2.why, "refused"), "refused: %s", st2.why);
    /* a name that does not resolve (resolved off the loop) */
    cstate st3 = {0};
    redis_conn_opts o3 = {.addr = {"no-such-host.invalid", 6379}};
    c = redis_conn_new(loop, &o3, &h, &st3);
    WAIT(st3.down, 6000);
    CHECK(st3.down == 1 && strstr(st3.why, "resolve"), "resolve: %s", st3.why);
    spin(20);
}

/* Redis' read count (INFO stats total_reads_processed, every client) */
static long long reads_processed(int srv)
{
    long long n = -1;
    redisReply *r = rp_cmd(srv, "INFO stats");
    const char *p = r && r->type == REDIS_REPLY_STRING ? r->str : NULL;
    if (p && (p = strstr(p, "total_reads_processed:"))) n = atoll(p + 22);
    if (r) freeReplyObject(r);
    return n;
}

/* CHAT_REDIS_LINGER_MS: at most one write per linger. The same pattern on
 * both connections: A on a quiet connection, 100 ms of loop, B, 100 ms, C,
 * their answers, at once E, E's answer, then 600 ms of quiet and D. Without
 * a linger each turn's command leaves at its end (A, B, E and D each
 * answered within 100 ms, in five Redis reads with C's). With 400 ms: A and
 * D (a quiet connection) leave at once as well, B waits for the window A's
 * write opened and C joins it (B and C in one write, which Redis reads
 * once), and E, queued right after that write, waits for the end of the
 * window it opened (four reads). */
typedef struct linger_seen {
    int a_early, b_early, e_early, d_early; /* answered within 100 ms of being sent */
    long long reads;                        /* Redis reads for A..E */
} linger_seen;

static int linger_pattern(int srv, uint32_t linger_ms, linger_seen *out)
{
    redis_conn_opts o = {.addr = {"127.0.0.1", rp_all[srv].port}, .ping_every_ms = 60000,
                         .linger_ms = linger_ms};
    cstate st = {0};
    redis_conn_handlers h = {c_up, c_down, c_push};
    redis_conn *c = redis_conn_new(loop, &o, &h, &st);
    WAIT(st.up, 3000);
    if (!st.up) return -1;
    spin(linger_ms + 100);   /* past the window of the handshake's writes */
    long long r0 = reads_processed(srv);
    long long own = reads_processed(srv) - r0;   /* what reading the count costs */
    r0 += own;
    ans a, b, cc, d, e;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&cc, 0, sizeof cc);
    memset(&d, 0, sizeof d);
    memset(&e, 0, sizeof e);
    const char *ca[] = {"INCR", "linger:a"}, *cb[] = {"INCR", "linger:b"};
    const char *cc_[] = {"INCR", "linger:c"}, *cd[] = {"INCR", "linger:d"};
    const char *ce[] = {"INCR", "linger:e"};
    redis_conn_command(c, 2, ca, NULL, conn_cb, &a);
    spin(100);
    out->a_early = a.done;
    redis_conn_command(c, 2, cb, NULL, conn_cb, &b);
    spin(100);
    out->b_early = b.done;
    redis_conn_command(c, 2, cc_, NULL, conn_cb, &cc);
    WAIT(a.done && b.done && cc.done, 3000);
    redis_conn_command(c, 2, ce, NULL, conn_cb, &e);
    spin(100);
    out->e_early = e.done;
    WAIT(e.done, 3000);
    long long reads = reads_processed(srv) - r0 - own;
    spin(linger_ms + 200);
    r0 = reads_processed(srv);
    redis_conn_command(c, 2, cd, NULL, conn_cb, &d);
    spin(100);
    out->d_early = d.done;
    WAIT(d.done, 3000);
    int ok = a.done == 1 && b.done == 1 && cc.done == 1 && d.done == 1 && e.done == 1 &&
             a.type == REDIS_REPLY_INTEGER && b.type == REDIS_REPLY_INTEGER &&
             cc.type == REDIS_REPLY_INTEGER && d.type == REDIS_REPLY_INTEGER &&
             e.type == REDIS_REPLY_INTEGER;
    out->reads = reads + reads_processed(srv) - r0 - own;
    redis_conn_close(c);
    spin(20);
    return ok ? 0 : -1;
}

static void test_conn_linger(void)
{
    int srv = rp_start(NULL);
    if (srv < 0) { check_fail("server"); return; }
    linger_seen s;
    CHECK(linger_pattern(srv, 0, &s) == 0, "no linger: all answered");
    CHECK(s.a_early && s.b_early && s.e_early && s.d_early,
          "no linger: A, B, E, D answered within 100 ms (%d %d %d %d)", s.a_early, s.b_early,
          s.e_early, s.d_early);
    CHECK(s.reads == 5, "no linger: A, B, C, E, D in five reads (%lld)", s.reads);
    CHECK(linger_pattern(srv, 400, &s) == 0, "linger 400 ms: all answered");
    CHECK(s.a_early == 1, "linger 400 ms: A, on a quiet connection, left at once (%d)", s.a_early);
    CHECK(s.b_early == 0, "linger 400 ms: B, 100 ms after A's write, held back (%d)", s.b_early);
    CHECK(s.e_early == 0, "linger 400 ms: E, right after B and C's write, held back (%d)", s.e_early);
    CHECK(s.d_early == 1, "linger 400 ms: D, after 600 ms of quiet, left at once (%d)", s.d_early);
    CHECK(s.reads == 4, "linger 400 ms: B and C in one read, A, E and D alone (%lld)", s.reads);
    rp_signal(srv, SIGKILL);
    spin(20);
}

/* standalone URL at a cluster node: MOVED is an answer, not a reason to
 * reconnect (defect 9); readiness says what is wrong */
static void test_standalone_at_cluster(int first)
{
    char url[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", rp_all[first].port);
    rec R;
    redis_client *c = client(&R, url, 1);
    WAIT(redis_client_ready(c), 3000);
    int moved = 0, ok = 0;
    for (int i = 0; i < 20; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        ans a = sync_call(c, key_slot(k), -1, 2, "GET", k);
        if (a.type == REDIS_REPLY_ERROR && !strncmp(a.str, "MOVED", 5)) moved++;
        else if (a.done == 1) ok++;
    }
    CHECK(moved > 0 && moved + ok == 20, "MOVED answers delivered: %d", moved);
    spin(1000);
    char why[400];
    CHECK(R.nodes_down == 0 && R.nodes_up == 1, "no reconnect (%d downs)", R.nodes_down);
    CHECK(redis_client_health(c, why, sizeof why) == 0 && strstr(why, "redis+cluster://"),
          "health: %s", why);
    redis_client_free(c);
    spin(20);
}

/* ---------------- TLS ---------------- */

static void test_tls(void)
{
    char dir[96];
    snprintf(dir, sizeof dir, "/tmp/chatd-test-tls-XXXXXX");
    if (!mkdtemp(dir)) { check_fail("mkdtemp"); return; }
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "(cd %s && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=testca "
             "-keyout ca.key -out ca.pem && "
             "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout srv.key -out srv.csr && "
             "printf 'subjectAltName=IP:127.0.0.1' > ext && "
             "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
             "-extfile ext -out srv.pem && "
             "openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout cli.key -out cli.csr && "
             "openssl x509 -req -in cli.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out cli.pem && "
             "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=other -keyout o.key -out other.pem"
             ") >/dev/null 2>&1",
             dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "SKIP tls: openssl could not make certificates\n");
        return;
    }
    char cert[160], key[160], ca[160];
    snprintf(cert, sizeof cert, "%s/srv.pem", dir);
    snprintf(key, sizeof key, "%s/srv.key", dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    int srv = rp_start_nowait("--port", "0", "--tls-port", "%P", "--tls-cert-file", cert,
                              "--tls-key-file", key, "--tls-ca-cert-file", ca,
                              "--tls-auth-clients", "optional", NULL);
    if (srv < 0) { check_fail("tls server"); return; }
    char url[512];
    snprintf(url, sizeof url, "rediss://127.0.0.1:%d?ssl_ca_certs=%s", rp_all[srv].port, ca);
    rec R;
    redis_client *c = client(&R, url, 1);
    WAIT(redis_client_ready(c), 5000);
    if (!redis_client_ready(c)) {
        char why[300];
        redis_client_health(c, why, sizeof why);
        fprintf(stderr, "SKIP tls: redis-server with --tls-port did not come up (%s)\n", why);
        redis_client_free(c);
        return;
    }
    ans a = sync_call(c, -1, -1, 3, "SET", "tk", "over tls");
    a = sync_call(c, -1, -1, 2, "GET", "tk");
    CHECK(!strcmp(a.str, "over tls"), "GET over TLS: %s", a.str);
    size_t big = 1u << 20;
    char *v = malloc(big + 1);
    memset(v, 'x', big);
    v[big] = 0;
    a = sync_call(c, -1, -1, 3, "SET", "tbig", v);
    a = sync_call(c, -1, -1, 2, "STRLEN", "tbig");
    CHECK(a.integer == (long long)big, "1 MB over TLS: %lld", a.integer);
    free(v);
    ans s;
    memset(&s, 0, sizeof s);
    const char *chs[] = {"tchan"};
    redis_client_subscribe(c, 0, 1, chs, NULL, sub_cb, &s);
    WAIT(s.done, 3000);
    a = sync_call(c, -1, -1, 3, "PUBLISH", "tchan", "pushed over tls");
    WAIT(R.messages == 1, 3000);
    CHECK(R.messages == 1 && !strcmp(R.last_data, "pushed over tls"), "message over TLS");
    redis_client_free(c);

    char why[400];
    /* wrong CA: verification fails, readiness says so */
    snprintf(url, sizeof url, "rediss://127.0.0.1:%d?ssl_ca_certs=%s/other.pem", rp_all[srv].port, dir);
    c = client(&R, url, 0);
    spin(800);
    CHECK(!redis_client_ready(c) && redis_client_health(c, why, sizeof why) == 0 &&
          strstr(why, "certificate"), "wrong CA: %s", why);
    redis_client_free(c);
    /* verification off */
    snprintf(url, sizeof url, "rediss://127.0.0.1:%d?ssl_cert_reqs=none", rp_all[srv].port);
    c = client(&R, url, 0);
    WAIT(redis_client_ready(c), 3000);
    CHECK(redis_client_ready(c), "ssl_cert_reqs=none");
    redis_client_free(c);
    /* plain TCP to a TLS port: the handshake never completes */
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", rp_all[srv].port);
    c = client(&R, url, 0);
    spin(300);
    CHECK(!redis_client_ready(c), "plain to TLS port not ready");
    redis_client_free(c);
    /* a client certificate */
    snprintf(url, sizeof url, "rediss://127.0.0.1:%d?ssl_ca_certs=%s&ssl_certfile=%s/cli.pem&"
             "ssl_keyfile=%s/cli.key", rp_all[srv].port, ca, dir, dir);
    c = client(&R, url, 0);
    WAIT(redis_client_ready(c), 3000);
    CHECK(redis_client_ready(c), "client certificate");
    redis_client_free(c);
    char err[200];
    redis_client_opts o = {"rediss://h?ssl_certfile=/nonexistent.pem&ssl_keyfile=/x", "t", NULL, 0, 0, 0, 0};
    CHECK(redis_client_new(loop, &o, &RH, &R, err, sizeof err) == NULL && strstr(err, "certificate"),
          "bad cert file: %s", err);
    spin(20);
    rp_signal(srv, SIGKILL);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* ---------------- cluster ---------------- */

static int owner_of(int first, int slot) { return rp_slot_owner(first, 3, slot); }

static void test_cluster(void)
{
    int first = rp_cluster(0, 2000);
    CHECK(first >= 0, "3-master cluster");
    if (first < 0) return;

    /* CRC16 slots against the server's CLUSTER KEYSLOT */
    int bad = 0;
    unsigned rs = 12345;
    for (int i = 0; i < 2000; i++) {
        char k[40];
        int n = 1 + (int)((rs = rs * 1103515245 + 12345) >> 16) % 30;
        for (int j = 0; j < n; j++) {
            static const char al[] = "ab{}c:de~-_.9XYZ";
            k[j] = al[(rs = rs * 1103515245 + 12345) >> 16 & 15];
        }
        k[n] = 0;
        redisReply *r = rp_cmd(first, "CLUSTER KEYSLOT %s", k);
        if (!r || r->integer != key_slot(k)) bad++;
        if (r) freeReplyObject(r);
    }
    CHECK(bad == 0, "%d keys differ from CLUSTER KEYSLOT", bad);
    int badtag = 0;
    for (int s = 0; s < REDIS_SLOTS; s += 97) {
        redisReply *r = rp_cmd(first, "CLUSTER KEYSLOT chat:{%s}:unstored", redis_slot_tag(s));
        if (!r || r->integer != s) badtag++;
        if (r) freeReplyObject(r);
    }
    CHECK(badtag == 0, "slot tags against CLUSTER KEYSLOT: %d wrong", badtag);

    test_standalone_at_cluster(first);

    char url[128];
    snprintf(url, sizeof url, "redis+cluster://127.0.0.1:%d,127.0.0.1:1", rp_all[first + 1].port);
    rec R;
    redis_client *c = client(&R, url, 1);
    CHECK(redis_client_is_cluster(c), "cluster mode");
    WAIT(redis_client_ready(c) && R.nodes_up == 3, 5000);
    char why[400];
    CHECK(redis_client_ready(c) && R.nodes_up == 3 && R.maps >= 1, "ready, 3 nodes up (%d)", R.nodes_up);
    CHECK(redis_client_health(c, why, sizeof why) == 1, "health: %s", why);

    /* routing: keys of every shard, scripts on every node */
    int okset = 0, okget = 0, okscript = 0;
    uint64_t seen[3] = {0};
    int nseen = 0;
    for (int i = 0; i < 300; i++) {
        char k[16], v[16];
        snprintf(k, sizeof k, "key%d", i);
        snprintf(v, sizeof v, "val%d", i);
        int slot = key_slot(k);
        uint64_t n = redis_client_slot_node(c, slot);
        int known = 0;
        for (int j = 0; j < nseen; j++) known |= seen[j] == n;
        if (!known && nseen < 3) seen[nseen++] = n;
        ans a = sync_call(c, slot, -1, 3, "SET", k, v);
        okset += a.type == REDIS_REPLY_STATUS;
        a = sync_call(c, slot, -1, 2, "GET", k);
        okget += !strcmp(a.str, v);
        a = sync_call(c, slot, 1, 2, "1", k);
        okscript += !strcmp(a.str, v);
    }
    CHECK(okset == 300 && okget == 300 && okscript == 300 && nseen == 3,
          "routed %d/%d/%d over %d nodes", okset, okget, okscript, nseen);

    /* a slot migration: ASK while it migrates, MOVED after */
    const char *K = "key7";
    int slot = key_slot(K);
    int src = owner_of(first, slot);
    int dst = src == first ? first + 1 : first;
    int third = 3 * first + 3 - src - dst;
    char sid[64], did[64];
    rp_myid(src, sid, sizeof sid);
    rp_myid(dst, did, sizeof did);
    /* a subscription on the slot, at its owner */
    ans s;
    memset(&s, 0, sizeof s);
    const char *chs[] = {"chat:{key7}:msg"};
    CHECK(redis_client_subscribe(c, slot, 1, chs, NULL, sub_cb, &s) == 0, "ssubscribe");
    WAIT(s.done, 3000);
    CHECK(s.done == 1 && !s.null && s.type == REDIS_REPLY_ARRAY &&
          s.node == redis_client_slot_node(c, slot), "ssubscribed at the owner");
    uint64_t old_node = s.node;
    redisReply *r = rp_cmd(dst, "CLUSTER SETSLOT %d IMPORTING %s", slot, sid);
    if (r) freeReplyObject(r);
    r = rp_cmd(src, "CLUSTER SETSLOT %d MIGRATING %s", slot, did);
    if (r) freeReplyObject(r);
    /* a key that is not on the source: ASK -> ASKING + SET on the target */
    char newk[32];
    snprintf(newk, sizeof newk, "{key7}new");
    ans a = sync_call(c, slot, -1, 3, "SET", newk, "asked");
    CHECK(a.type == REDIS_REPLY_STATUS, "SET during migration: %s", a.str);
    r = rp_cmd(dst, "CLUSTER COUNTKEYSINSLOT %d", slot);
    CHECK(r && r->integer == 1, "new key created on the target (ASK followed)");
    if (r) freeReplyObject(r);
    a = sync_call(c, slot, -1, 2, "GET", K);
    CHECK(!strcmp(a.str, "val7"), "existing key still served by the source");
    /* redis_call.run_arg follows the ASK: the target's run_id, not the source's */
    ans ra = run_set(c, slot, "{key7}run1");   /* checked once the slot moved */
    r = rp_cmd(src, "MIGRATE 127.0.0.1 %d %s 0 5000", rp_all[dst].port, K);
    CHECK(r && r->type == REDIS_REPLY_STATUS, "MIGRATE: %s", r && r->str ? r->str : "?");
    if (r) freeReplyObject(r);
    rp_setslot_all(first, 3, slot, did);
    CHECK(ra.type == REDIS_REPLY_STATUS && holds_own_run_id(dst, "{key7}run1"),
          "run_id of the ASK target written (%s)", ra.str);
    /* the server drops the subscription of the moved slot */
    WAIT(R.sunsubs >= 1, 3000);
    CHECK(R.sunsubs >= 1 && !strcmp(R.last_ch, chs[0]) && R.last_push_node == old_node,
          "sunsubscribe pushed by the old owner (%d)", R.sunsubs);
    /* the client still maps the slot to the source: MOVED, followed, and
     * the run_id written is the new owner's */
    uint64_t before_moved = redis_client_slot_node(c, slot);
    a = run_set(c, slot, "{key7}run2");
    CHECK(before_moved == old_node && a.type == REDIS_REPLY_STATUS &&
          holds_own_run_id(dst, "{key7}run2"), "run_id after MOVED is the new owner's (%s)", a.str);
    a = sync_call(c, slot, -1, 2, "GET", K);
    CHECK(!strcmp(a.str, "val7"), "GET after the move: %s", a.str);
    a = sync_call(c, slot, -1, 2, "GET", newk);
    CHECK(!strcmp(a.str, "asked"), "GET new key after the move: %s", a.str);
    CHECK(redis_client_slot_node(c, slot) != old_node, "owner updated");
    a = run_set(c, slot, "{key7}run3");
    CHECK(a.type == REDIS_REPLY_STATUS && holds_own_run_id(dst, "{key7}run3"),
          "run_id of the new owner, from the map (%s)", a.str);
    /* resubscribe: lands on the new owner */
    memset(&s, 0, sizeof s);
    CHECK(redis_client_subscribe(c, slot, 1, chs, NULL, sub_cb, &s) == 0, "resubscribe");
    WAIT(s.done, 3000);
    CHECK(s.done == 1 && !s.null && s.node != old_node && s.node == redis_client_slot_node(c, slot),
          "resubscribed at the new owner");
    int m0 = R.messages;
    r = rp_cmd(dst, "SPUBLISH %s after-move", chs[0]);
    CHECK(r && r->integer == 1, "one shard subscriber");
    if (r) freeReplyObject(r);
    WAIT(R.messages > m0, 3000);
    CHECK(R.messages == m0 + 1 && !strcmp(R.last_data, "after-move"), "smessage after the move");
    /* a stale subscribe (map not yet refreshed) follows MOVED too */
    r = rp_cmd(src, "CLUSTER SETSLOT %d IMPORTING %s", slot, did);
    if (r) freeReplyObject(r);
    r = rp_cmd(dst, "CLUSTER SETSLOT %d MIGRATING %s", slot, sid);
    if (r) freeReplyObject(r);
    r = rp_cmd(dst, "MIGRATE 127.0.0.1 %d %s 0 5000 KEYS %s %s {key7}run1 {key7}run2 {key7}run3",
               rp_all[src].port, "", K, newk);
    CHECK(r && r->type == REDIS_REPLY_STATUS, "MIGRATE back: %s", r && r->str ? r->str : "?");
    if (r) freeReplyObject(r);
    rp_setslot_all(first, 3, slot, sid);
    memset(&s, 0, sizeof s);
    const char *chs2[] = {"chat:{key7}:typing"};
    CHECK(redis_client_subscribe(c, slot, 1, chs2, NULL, sub_cb, &s) == 0, "stale subscribe");
    WAIT(s.done, 3000);
    CHECK(s.done == 1 && s.type == REDIS_REPLY_ARRAY && s.node == old_node,
          "SSUBSCRIBE followed MOVED back to the source: done %d null %d type %d %s node %" PRIu64
          " old %" PRIu64, s.done, s.null, s.type, s.str, s.node, old_node);

    /* one master dies: the other shards keep serving, readiness names it */
    int third_slot = -1;
    for (int i = 0; i < 1000 && third_slot < 0; i++) {
        char k[16];
        snprintf(k, sizeof k, "key%d", i);
        if (owner_of(first, key_slot(k)) == third) third_slot = key_slot(k);
    }
    rp_signal(third, SIGKILL);
    WAIT(!redis_client_slot_ready(c, third_slot), 3000);
    CHECK(!redis_client_slot_ready(c, third_slot) && redis_client_ready(c), "one shard down");
    CHECK(redis_client_health(c, why, sizeof why) == 0 && strstr(why, "unreachable") &&
          strstr(why, "shard") && strstr(why, "slots"), "health: %s", why);
    int served = 0, refused = 0;
    for (int i = 0; i < 60; i++) {
        char k[16];
        snprintf(k, sizeof k, "key%d", i);
        int sl = key_slot(k);
        ans x;
        if (call(c, sl, -1, &x, 2, "GET", k) != 0) { refused++; continue; }
        WAIT(x.done, 6000);
        served += x.done == 1 && !x.null && x.type == REDIS_REPLY_STRING;
    }
    CHECK(served > 0 && refused > 0 && served + refused == 60, "served %d refused %d", served, refused);
    CHECK(rp_restart(third) == 0, "master back");
    WAIT(redis_client_health(c, why, sizeof why), 15000);
    CHECK(redis_client_health(c, why, sizeof why) == 1, "healthy again: %s", why);
    a = sync_call(c, third_slot, -1, 1, "PING");
    redis_client_free(c);
    spin(50);
    for (int i = first; i < first + 3; i++) rp_signal(i, SIGKILL);
}

/* The next reply of rd (NULL when incomplete or on error). */
static redisReply *next_reply(redisReader *rd)
{
    void *r = NULL;
    if (redisReaderGetReply(rd, &r) != REDIS_OK) return NULL;
    return r;
}

static int str_is(const redisReply *r, int type, const char *s)
{
    return r && r->type == type && r->str && r->len == strlen(s) && !memcmp(r->str, s, r->len) &&
           r->str[r->len] == 0;
}

static void test_reply_alloc(void)
{
    size_t arenas0 = redis_alloc_arenas();
    redisReader *a = redis_reader_new(), *b = redis_reader_new();
    CHECK(a && b, "readers");
    if (!a || !b) return;
    CHECK(redis_alloc_arenas() == arenas0 + 2, "one arena per reader");
    /* every type, nested, a binary string with a NUL */
    static const char all[] = "*7\r\n$5\r\nhello\r\n:-42\r\n$-1\r\n+OK\r\n-ERR no\r\n"
                              "*2\r\n$3\r\na\0b\r\n*0\r\n*-1\r\n";
    redisReaderFeed(a, all, sizeof all - 1);
    redisReply *r = next_reply(a);
    CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 7, "array of 7");
    if (r && r->elements == 7) {
        CHECK(str_is(r->element[0], REDIS_REPLY_STRING, "hello"), "bulk");
        CHECK(r->element[1]->type == REDIS_REPLY_INTEGER && r->element[1]->integer == -42, "integer");
        CHECK(r->element[2]->type == REDIS_REPLY_NIL, "nil bulk");
        CHECK(str_is(r->element[3], REDIS_REPLY_STATUS, "OK"), "status");
        CHECK(str_is(r->element[4], REDIS_REPLY_ERROR, "ERR no"), "error");
        redisReply *n = r->element[5];
        CHECK(n->type == REDIS_REPLY_ARRAY && n->elements == 2 && n->element[0]->len == 3 &&
              !memcmp(n->element[0]->str, "a\0b", 3), "nested, binary");
        CHECK(n->element[1]->type == REDIS_REPLY_ARRAY && n->element[1]->elements == 0 &&
              n->element[1]->element == NULL, "empty array");
        CHECK(r->element[6]->type == REDIS_REPLY_NIL, "nil array");
        redis_push p;
        CHECK(redis_reply_push(r, &p) == REDIS_PUSH_NONE, "the interpreters read it");
    }
    CHECK(redis_reader_in_use(a) > 0 && redis_reader_in_use(b) == 0, "in a's arena");
    redis_reply_free(r);
    CHECK(redis_reader_in_use(a) == 0, "a's arena empty once the reply is freed");

    /* a reply in pieces in a, many whole ones in b meanwhile: b's arena is
     * reused (never more than one reply in it), a's objects stay intact */
    static const char push[] = "*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$";
    redisReaderFeed(a, push, sizeof push - 1);
    CHECK(next_reply(a) == NULL, "incomplete");
    size_t held = redis_reader_in_use(a);
    CHECK(held > 0, "a's partial reply holds its arena");
    size_t most = 0;
    for (int i = 0; i < 1000; i++) {
        char cmd[64];
        int n = snprintf(cmd, sizeof cmd, "*2\r\n:%d\r\n$2\r\nxy\r\n", i);
        redisReaderFeed(b, cmd, (size_t)n);
        redisReply *x = next_reply(b);
        CHECK(x && x->elements == 2 && x->element[0]->integer == i && str_is(x->element[1], REDIS_REPLY_STRING, "xy"),
              "b reply %d", i);
        if (redis_reader_in_use(b) > most) most = redis_reader_in_use(b);
        redis_reply_free(x);
    }
    CHECK(most > 0 && most < 512 && redis_reader_in_use(b) == 0, "b's arena reused: at most %zu bytes", most);
    CHECK(redis_reader_in_use(a) == held, "a untouched");
    static const char rest[] = "7\r\npayload\r\n";
    redisReaderFeed(a, rest, sizeof rest - 1);
    r = next_reply(a);
    redis_push p;
    CHECK(r && redis_reply_push(r, &p) == REDIS_PUSH_MESSAGE && p.channel_len == 4 &&
          !memcmp(p.channel, "chan", 4) && p.data_len == 7 && !memcmp(p.data, "payload", 7),
          "the push completed across feeds");
    redis_reply_free(r);
    CHECK(redis_reader_in_use(a) == 0, "a's arena empty after the pieces");

    /* larger than the arena: malloc'd, same content */
    size_t big = 200000;
    char *buf = malloc(big + 64);
    if (buf) {
        int o = snprintf(buf, 64, "*2\r\n$%zu\r\n", big);
        memset(buf + o, 'z', big);
        memcpy(buf + o + big, "\r\n:7\r\n", 6);
        redisReaderFeed(a, buf, (size_t)o + big + 6);
        r = next_reply(a);
        int ok = r && r->elements == 2 && r->element[0]->len == big && r->element[1]->integer == 7;
        for (size_t i = 0; ok && i < big; i++) ok = r->element[0]->str[i] == 'z';
        CHECK(ok, "big reply intact");
        redis_reply_free(r);
        free(buf);
    }
    CHECK(redis_reader_in_use(a) == 0, "a's arena empty after the big reply");

    /* a reader freed with a reply in pieces gives its objects back */
    static const char part[] = "*2\r\n$1\r\nq\r\n";
    redisReaderFeed(b, part, sizeof part - 1);
    CHECK(next_reply(b) == NULL && redis_reader_in_use(b) > 0, "b holds a partial reply");
    redis_reader_free(b);
    CHECK(redis_alloc_arenas() == arenas0 + 1, "b's arena freed with it");
    /* a protocol error frees the partial reply too */
    static const char bad_resp[] = "*2\r\n$1\r\nq\r\n!bad\r\n";
    redisReaderFeed(a, bad_resp, sizeof bad_resp - 1);
    void *bad = NULL;
    CHECK(redisReaderGetReply(a, &bad) != REDIS_OK && bad == NULL, "protocol error");
    CHECK(redis_reader_in_use(a) == 0, "freed on a protocol error");
    redis_reader_free(a);
    CHECK(redis_alloc_arenas() == arenas0, "every arena freed");

    /* a reply outlives its reader (a connection torn down in the reply's
     * dispatch): the arena goes with the reply */
    a = redis_reader_new();
    static const char one[] = "*2\r\n$5\r\nstill\r\n:1\r\n";
    redisReaderFeed(a, one, sizeof one - 1);
    r = next_reply(a);
    redis_reader_free(a);
    CHECK(redis_alloc_arenas() == arenas0 + 1, "the arena waits for its reply");
    CHECK(r && str_is(r->element[0], REDIS_REPLY_STRING, "still") && r->element[1]->integer == 1,
          "the reply is intact after its reader is gone");
    redis_reply_free(r);
    CHECK(redis_alloc_arenas() == arenas0, "freed with the reply");
}

/* The test servers' ports come from CHATD_TEST_UNIT_PORT_LO..HI when set
 * (ports.h): a run given a port range stays in it. Without the variables,
 * from a few ports at the top of redis_procs.h's default range. */
static void test_port_range_env(void)
{
    const char *el = getenv("CHATD_TEST_UNIT_PORT_LO"), *eh = getenv("CHATD_TEST_UNIT_PORT_HI");
    int lo = el && eh ? atoi(el) : RP_PORT_HI - 9, hi = el && eh ? atoi(eh) : RP_PORT_HI;
    char l[16], h[16];
    snprintf(l, sizeof l, "%d", lo);
    snprintf(h, sizeof h, "%d", hi);
    setenv("CHATD_TEST_UNIT_PORT_LO", l, 1);
    setenv("CHATD_TEST_UNIT_PORT_HI", h, 1);
    for (int i = 0; i < 20; i++) {
        int p = rp_pick_port();
        CHECK(p == -1 || (p >= lo && p <= hi), "port %d of %d-%d", p, lo, hi);
    }
    if (!el || !eh) {
        unsetenv("CHATD_TEST_UNIT_PORT_LO");
        unsetenv("CHATD_TEST_UNIT_PORT_HI");
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_set_level(getenv("CHATD_TEST_VERBOSE") ? LOG_DEBUG : LOG_ERROR);
    loop = uv_default_loop();
    uvwait_init(loop);
    test_url();
    test_slots_pure();
    test_replies();
    test_reply_alloc();
    test_port_range_env();
    if (!rp_have_server()) {
        fprintf(stderr, "SKIP: no redis-server/redis-cli (pure tests: %d failures)\n",
                check_failures());
        return check_failures() ? 1 : 77;
    }
    atexit(rp_cleanup);
    test_conn_ssubscribe();
    test_conn_linger();
    test_standalone();
    test_tls();
    test_cluster();
    uvwait_close();
    uv_run(loop, UV_RUN_DEFAULT);
    return check_summary("test_redis");
}
