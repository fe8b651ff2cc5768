/* bus_redis_ctl: the control channel of the Redis backend (bus_control and
 * on_control; docs/api.md "Control channel", docs/redis.md).
 * Owns: the subscription of the one channel chat:ctl (SUBSCRIBE on one
 * Redis; on a Cluster the sharded SSUBSCRIBE at the owner of the channel's
 * slot, where every node subscribes), made again when its node went down,
 * the slot map changed or the server dropped it (slot moved), and retried
 * on the backend's retry tick when a subscribe got no usable answer; the
 * publishes (PUBLISH / SPUBLISH on the channel's slot, whose integer reply
 * is the number of subscribed nodes: the receivers the asker waits for).
 * After every (re)subscription on_control is called with data NULL: what
 * was published meanwhile was missed, the upper layer resynchronises. */
#define _GNU_SOURCE
#include "bus_redis_int.h"
#include "log.h"
#include "redis_slot.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "bus"
#define CTL_CHANNEL "chat:ctl"
#define CTL_RETRY_MIN_MS 100
#define CTL_RETRY_MAX_MS 5000

static int ctl_slot(void) { return redis_key_slot(CTL_CHANNEL, sizeof CTL_CHANNEL - 1); }

static void retry_later(busr *R)
{
    R->ctl_retry_ms = R->ctl_retry_ms ? R->ctl_retry_ms * 2 : CTL_RETRY_MIN_MS;
    if (R->ctl_retry_ms > CTL_RETRY_MAX_MS) R->ctl_retry_ms = CTL_RETRY_MAX_MS;
    if (!R->ctl_retry_at) R->retries++;
    R->ctl_retry_at = mono_ms() + R->ctl_retry_ms;
    bus_rsub_arm(R);
}

static void retry_clear(busr *R)
{
    if (R->ctl_retry_at) R->retries--;
    R->ctl_retry_at = 0;
}

static void sub_done(void *ud, uint64_t node, const redisReply *rp)
{
    busr *R = ud;
    bus *b = R->b;
    if (b->freeing || R->ctl_state != BUS_SUB_SUBSCRIBING) return;
    if (!rp || rp->type == REDIS_REPLY_ERROR) {
        if (rp) LOGW(MOD, "subscribe %s: %.*s", CTL_CHANNEL, (int)rp->len, rp->str ? rp->str : "");
        R->ctl_state = BUS_SUB_NONE;
        retry_later(R);
        return;
    }
    R->ctl_state = BUS_SUB_SUBSCRIBED;
    R->ctl_node = node;
    R->ctl_retry_ms = 0;
    LOGD(MOD, "control channel subscribed");
    /* whatever was sent while we were not subscribed is lost to us */
    if (b->h.on_control) b->h.on_control(b->ud, NULL, 0);
}

void bus_rctl_reconcile(busr *R)
{
    bus *b = R->b;
    if (b->freeing || !b->h.on_control || R->ctl_state != BUS_SUB_NONE) return;
    int slot = ctl_slot();
    if (!redis_client_slot_ready(R->rc, slot)) return; /* on_node / on_map come back */
    const char *ch[1] = {CTL_CHANNEL};
    if (redis_client_subscribe(R->rc, slot, 1, ch, NULL, sub_done, R) == 0) {
        R->ctl_state = BUS_SUB_SUBSCRIBING;
        retry_clear(R);
    } else {
        retry_later(R);
    }
}

void bus_rctl_retry(busr *R, uint64_t now_ms)
{
    if (!R->ctl_retry_at || R->ctl_retry_at > now_ms) return;
    retry_clear(R);
    bus_rctl_reconcile(R);
}

void bus_rctl_node(busr *R, uint64_t node, int up)
{
    if (!up && R->ctl_state == BUS_SUB_SUBSCRIBED && R->ctl_node == node) {
        R->ctl_state = BUS_SUB_NONE;
        R->ctl_node = 0;
    }
    bus_rctl_reconcile(R);
}

int bus_rctl_push(busr *R, uint64_t node, const redis_push *p)
{
    bus *b = R->b;
    if (p->channel_len != sizeof CTL_CHANNEL - 1 || memcmp(p->channel, CTL_CHANNEL, p->channel_len) != 0)
        return 0;
    if (p->kind == REDIS_PUSH_MESSAGE || p->kind == REDIS_PUSH_SMESSAGE) {
        if (b->h.on_control && p->data_len) b->h.on_control(b->ud, p->data, p->data_len);
    } else if ((p->kind == REDIS_PUSH_SUNSUBSCRIBE || p->kind == REDIS_PUSH_UNSUBSCRIBE) &&
               R->ctl_state == BUS_SUB_SUBSCRIBED && R->ctl_node == node) {
        /* the server dropped it: the channel's slot moved */
        LOGI(MOD, "Redis dropped the control channel subscription (slot moved): resubscribing");
        R->ctl_state = BUS_SUB_NONE;
        R->ctl_node = 0;
        redis_client_refresh(R->rc);
        bus_rctl_reconcile(R);
    }
    return 1;
}

typedef struct ctl_pub { bus_control_cb cb; void *ud; } ctl_pub;

static void pub_done(void *ud, const redisReply *rp)
{
    ctl_pub *c = ud;
    long n = -1;
    if (rp && rp->type == REDIS_REPLY_INTEGER && rp->integer >= 0) n = (long)rp->integer;
    else if (rp && rp->type == REDIS_REPLY_ERROR)
        LOGW(MOD, "publish on %s: %.*s", CTL_CHANNEL, (int)rp->len, rp->str ? rp->str : "");
    if (c->cb) c->cb(c->ud, n);
    free(c);
}

int bus_rctl_publish(bus *b, const char *data, size_t len, bus_control_cb cb, void *ud)
{
    busr *R = b->impl;
    ctl_pub *c = malloc(sizeof *c);
    if (!c) return -1;
    c->cb = cb;
    c->ud = ud;
    const char *argv[] = {R->cluster ? "SPUBLISH" : "PUBLISH", CTL_CHANNEL, data};
    size_t lens[] = {strlen(argv[0]), sizeof CTL_CHANNEL - 1, len};
    redis_call how = {ctl_slot(), 0, -1};
    if (redis_client_call(R->rc, &how, 3, argv, lens, pub_done, c) != 0) {
        free(c);
        return -1;
    }
    return 0;
}
