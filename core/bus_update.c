/* bus_update: the state step of message updates (bus.h "message updates"),
 * for both backends: the Redis script's extra key and arguments (the step
 * itself runs inside BUS_PUBLISH_LUA, see bus_script.c) and the in-process
 * equivalent. A target's state is a set of fields:
 *   "s"                  the state exists: in Redis with a database the run_id
 *                        of the Redis run that seeded it (another run's state is
 *                        seeded again, bus_script.c), else "1"
 *   "d"                  the target is deleted
 *   "r<emoji>\n<user>"   user reacted with emoji (an emoji never holds \n)
 *   "c<emoji>"           how many users reacted with emoji
 * Owns: the private copies of requests' bus_update (struct bus_upd) and, in
 * process, the per-room state maps (bus_upd_states). Layer: inside the bus. */
#define _GNU_SOURCE
#include "bus_int.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOCAL_STATES_MAX 10000   /* per room, in process; the least recently used go first */

struct bus_upd {
    uint64_t target;
    int op, seed, seed_deleted;
    char *rfield, *cfield;          /* react: "r<emoji>\n<user>", "c<emoji>" */
    size_t nseed;
    char **seed_r, **seed_c;        /* the seed's reactions, the same two fields each */
};

static char *field(char kind, const char *emoji, const char *user)
{
    size_t le = strlen(emoji), lu = user ? strlen(user) : 0;
    char *f = malloc(1 + le + (user ? 1 + lu : 0) + 1);
    if (!f) return NULL;
    f[0] = kind;
    memcpy(f + 1, emoji, le);
    if (user) {
        f[1 + le] = '\n';
        memcpy(f + 2 + le, user, lu);
    }
    f[1 + le + (user ? 1 + lu : 0)] = 0;
    return f;
}

void bus_upd_free(struct bus_upd *u)
{
    if (!u) return;
    free(u->rfield);
    free(u->cfield);
    for (size_t i = 0; i < u->nseed; i++) {
        if (u->seed_r) free(u->seed_r[i]);
        if (u->seed_c) free(u->seed_c[i]);
    }
    free(u->seed_r);
    free(u->seed_c);
    free(u);
}

struct bus_upd *bus_upd_copy(const bus_update *in)
{
    int react = in->op == BUS_UPD_REACT_ON || in->op == BUS_UPD_REACT_OFF;
    if (!in->target || (in->op != BUS_UPD_EDIT && in->op != BUS_UPD_DELETE && !react) ||
        (react && (!in->emoji || !*in->emoji || strchr(in->emoji, '\n') || !in->user)))
        return NULL;
    struct bus_upd *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->target = in->target;
    u->op = in->op;
    u->seed = in->seed ? in->seed : BUS_UPD_SEED_NONE;
    u->seed_deleted = in->seed_deleted;
    if (react && (!(u->rfield = field('r', in->emoji, in->user)) ||
                  !(u->cfield = field('c', in->emoji, NULL)))) {
        bus_upd_free(u);
        return NULL;
    }
    if (u->seed == BUS_UPD_SEED_GIVEN && in->nseed) {
        u->seed_r = calloc(in->nseed, sizeof *u->seed_r);
        u->seed_c = calloc(in->nseed, sizeof *u->seed_c);
        if (!u->seed_r || !u->seed_c) { bus_upd_free(u); return NULL; }
        for (size_t i = 0; i < in->nseed; i++) {
            const char *e = in->seed_emoji[i], *who = in->seed_user[i];
            u->nseed = i + 1;
            if (!e || !*e || strchr(e, '\n') || !who ||
                !(u->seed_r[i] = field('r', e, who)) || !(u->seed_c[i] = field('c', e, NULL))) {
                bus_upd_free(u);
                return NULL;
            }
        }
    }
    return u;
}

/* ---- Redis: the script's extra key and arguments (bus_script.c) ---------- */

void bus_upd_state_key(char *key, size_t cap, const char *room, uint64_t target)
{
    snprintf(key, cap, "chat:{%s}:t:%" PRIu64, room, target);
}

void bus_upd_undo_args(const char *room, const struct bus_upd *u, char *key, size_t cap,
                       const char *argv[3], char opbuf[2])
{
    bus_upd_state_key(key, cap, room, u->target);
    opbuf[0] = (char)u->op;
    opbuf[1] = 0;
    argv[0] = opbuf;
    argv[1] = u->rfield ? u->rfield : "";
    argv[2] = u->cfield ? u->cfield : "";
}

void bus_upd_key(const bus_req *r, char *key, size_t cap)
{
    bus_upd_state_key(key, cap, r->room, r->upd->target);
}

size_t bus_upd_nargs(const bus_req *r)
{
    return 7 + 2 * r->upd->nseed;
}

void bus_upd_args(const bus_req *r, const char *keyidx, const char **argv, size_t *lens,
                  int *argc, char bufs[][32])
{
    const struct bus_upd *u = r->upd;
    int n = *argc;
#define ARG(s, l) (argv[n] = (s), lens[n] = (l), n++)
    ARG(keyidx, strlen(keyidx));                                  /* ARGV[13] */
    snprintf(bufs[0], 32, "%c", u->op);
    ARG(bufs[0], 1);                                              /* ARGV[14] */
    ARG(u->rfield ? u->rfield : "", u->rfield ? strlen(u->rfield) : 0);
    ARG(u->cfield ? u->cfield : "", u->cfield ? strlen(u->cfield) : 0);
    snprintf(bufs[1], 32, "%c", u->seed);
    ARG(bufs[1], 1);                                              /* ARGV[17] */
    ARG(u->seed_deleted ? "1" : "0", 1);                          /* ARGV[18] */
    for (size_t i = 0; i < u->nseed; i++) {                       /* ARGV[19..] */
        ARG(u->seed_r[i], strlen(u->seed_r[i]));
        ARG(u->seed_c[i], strlen(u->seed_c[i]));
    }
#undef ARG
    *argc = n;
}

/* ---- in process ------------------------------------------------------------ */

typedef struct tstate {
    int deleted;
    uint64_t touched_ms;
    size_t n, cap;
    char **r;                /* reaction fields "r<emoji>\n<user>" */
} tstate;

struct bus_upd_states { hmap map; };   /* "<target>" -> tstate */

bus_upd_states *bus_upd_states_new(void)
{
    bus_upd_states *s = calloc(1, sizeof *s);
    if (s) hmap_init(&s->map);
    return s;
}

size_t bus_upd_states_count(const bus_upd_states *s)
{
    return s ? s->map.count : 0;
}

static void tstate_free(tstate *t)
{
    for (size_t i = 0; i < t->n; i++) free(t->r[i]);
    free(t->r);
    free(t);
}

static int free_each(void *ud, const char *key, void *val)
{
    tstate_free(val);
    return 1;
}

void bus_upd_states_free(bus_upd_states *s)
{
    if (!s) return;
    hmap_each(&s->map, free_each, NULL);
    hmap_free(&s->map);
    free(s);
}

static int tstate_find(const tstate *t, const char *f)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->r[i], f) == 0) return (int)i;
    return -1;
}

static int tstate_add(tstate *t, const char *f)
{
    if (tstate_find(t, f) >= 0) return 0;
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 4;
        char **nr = realloc(t->r, nc * sizeof *nr);
        if (!nr) return -1;
        t->r = nr;
        t->cap = nc;
    }
    if (!(t->r[t->n] = strdup(f))) return -1;
    t->n++;
    return 1;
}

/* users who reacted with the emoji of count field c ("c<emoji>") */
static int64_t tstate_count(const tstate *t, const char *c)
{
    size_t le = strlen(c + 1);
    int64_t k = 0;
    for (size_t i = 0; i < t->n; i++)
        if (strncmp(t->r[i] + 1, c + 1, le) == 0 && t->r[i][1 + le] == '\n') k++;
    return k;
}

typedef struct evict { uint64_t before; size_t left; } evict;

static int evict_each(void *ud, const char *key, void *val)
{
    evict *e = ud;
    tstate *t = val;
    if (e->left == 0 || t->touched_ms > e->before) return 0;
    tstate_free(t);
    e->left--;
    return 1;
}

/* Over the bound: forget the expired, then the least recently touched
 * tenth (they are seeded again from the durable history when needed). */
static void states_trim(bus_upd_states *s, uint64_t now, uint64_t ttl_ms)
{
    evict e = {now > ttl_ms ? now - ttl_ms : 0, SIZE_MAX};
    hmap_each(&s->map, evict_each, &e);
    if (s->map.count <= LOCAL_STATES_MAX) return;
    uint64_t *ts = malloc(s->map.count * sizeof *ts);
    if (!ts) return;
    size_t n = 0;
    for (size_t i = 0; i < s->map.cap; i++)
        if (hmap_live(&s->map, i)) ts[n++] = ((tstate *)s->map.slots[i].val)->touched_ms;
    uint64_t cut = 0;
    for (size_t k = 0; k <= n / 10 && n; k++) {       /* the tenth smallest, by selection */
        size_t m = k;
        for (size_t j = k + 1; j < n; j++) if (ts[j] < ts[m]) m = j;
        uint64_t t = ts[k]; ts[k] = ts[m]; ts[m] = t;
        cut = ts[k];
    }
    free(ts);
    e.before = cut;
    e.left = n / 10 + 1;
    hmap_each(&s->map, evict_each, &e);
}

void bus_upd_states_undo(bus_upd_states *s, const struct bus_upd *u)
{
    char key[24];
    snprintf(key, sizeof key, "%" PRIu64, u->target);
    tstate *t = s ? hmap_get(&s->map, key) : NULL;
    if (!t) return;   /* gone (expired, evicted): seeded from history again */
    if (u->op == BUS_UPD_DELETE) {
        t->deleted = 0;
    } else if (u->op == BUS_UPD_REACT_ON) {
        int i = tstate_find(t, u->rfield);
        if (i >= 0) {
            free(t->r[i]);
            t->r[i] = t->r[--t->n];
        }
    } else if (u->op == BUS_UPD_REACT_OFF) {
        if (tstate_add(t, u->rfield) < 0) {   /* out of memory: seeded from history again */
            hmap_del(&s->map, key);
            tstate_free(t);
        }
    }
}

int bus_upd_local_apply(bus_upd_states *s, const bus_req *r, uint64_t ttl_ms, int64_t *count)
{
    const struct bus_upd *u = r->upd;
    char key[24];
    snprintf(key, sizeof key, "%" PRIu64, u->target);
    uint64_t now = mono_ms();
    tstate *t = hmap_get(&s->map, key);
    if (t && now - t->touched_ms > ttl_ms) {
        hmap_del(&s->map, key);
        tstate_free(t);
        t = NULL;
    }
    if (!t) {
        if (u->seed == BUS_UPD_SEED_ASK) return BUS_UPD_NEED_STATE;
        t = calloc(1, sizeof *t);
        if (!t) return -1;
        t->deleted = u->seed == BUS_UPD_SEED_GIVEN && u->seed_deleted;
        for (size_t i = 0; i < u->nseed; i++)
            if (tstate_add(t, u->seed_r[i]) < 0) { tstate_free(t); return -1; }
        if (hmap_put(&s->map, key, t) != 0) { tstate_free(t); return -1; }
        if (s->map.count > LOCAL_STATES_MAX) {
            t->touched_ms = now;
            states_trim(s, now, ttl_ms);
            if (hmap_get(&s->map, key) != t) return -1;   /* cannot happen: it is the newest */
        }
    }
    t->touched_ms = now;
    *count = -1;
    if (t->deleted) return BUS_UPD_GONE;
    switch (u->op) {
    case BUS_UPD_DELETE:
        t->deleted = 1;
        break;
    case BUS_UPD_REACT_ON: {
        int a = tstate_add(t, u->rfield);
        if (a < 0) return -1;
        if (a == 0) return BUS_UPD_NOOP;
        *count = tstate_count(t, u->cfield);
        break;
    }
    case BUS_UPD_REACT_OFF: {
        int i = tstate_find(t, u->rfield);
        if (i < 0) return BUS_UPD_NOOP;
        free(t->r[i]);
        t->r[i] = t->r[--t->n];
        *count = tstate_count(t, u->cfield);
        break;
    }
    default:
        break;
    }
    return 0;
}
