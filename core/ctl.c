/* ctl: see ctl.h. */
#define _GNU_SOURCE
#include "ctl.h"
#include "hmap.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "ctl"
#define CTL_TICK_MS 20
#define CTL_HANDLERS_MAX 16

struct ctl_wait {
    char id[160];
    ctl_done_cb cb;          /* NULL once cancelled */
    void *ud;
    long expected;           /* -1 until the channel said how many it reached */
    long answers, total;
    uint64_t deadline_ms;    /* mono */
    int in_bus;              /* bus_control's callback still to come */
    int finished;
};

static struct {
    uv_loop_t *loop;
    bus *bus;
    char node[128];
    uint64_t counter;
    hmap waits;              /* id -> ctl_wait, not finished */
    uv_timer_t timer;
    int timer_on, inited;
    struct { char op[32]; ctl_handler fn; void *ud; } h[CTL_HANDLERS_MAX];
    int nh;
    void (*resync)(void *ud);
    void *resync_ud;
    metric_counter *m_in, *m_out, *m_bad, *m_late;
} C;

void ctl_on_resync(void (*fn)(void *ud), void *ud)
{
    C.resync = fn;
    C.resync_ud = ud;
}

void ctl_init(uv_loop_t *loop, bus *b, const char *node_id)
{
    C.loop = loop;
    C.bus = b;
    snprintf(C.node, sizeof C.node, "%s", node_id);
    hmap_init(&C.waits);
    uv_timer_init(loop, &C.timer);
    C.inited = 1;
    C.m_in = metrics_counter("chat_ctl_messages_total", "Control channel messages, by direction",
                             "dir=\"in\"");
    C.m_out = metrics_counter("chat_ctl_messages_total", NULL, "dir=\"out\"");
    C.m_bad = metrics_counter("chat_ctl_messages_total", NULL, "dir=\"bad\"");
    C.m_late = metrics_counter("chat_ctl_late_answers_total",
                               "Answers that came after their request's deadline", NULL);
}

static void wait_free(ctl_wait *w) { free(w); }

static int free_wait(void *ud, const char *key, void *val)
{
    ctl_wait *w = val;
    if (!w->in_bus) wait_free(w);
    else w->cb = NULL, w->finished = 1; /* the bus answers it (bus_free does) */
    return 1;
}

void ctl_shutdown(void)
{
    if (!C.inited) return;
    hmap_each(&C.waits, free_wait, NULL);
    hmap_free(&C.waits);
    uv_timer_stop(&C.timer);
    uv_close((uv_handle_t *)&C.timer, NULL);
    C.inited = 0;
    C.bus = NULL;
}

void ctl_on(const char *op, ctl_handler fn, void *ud)
{
    for (int i = 0; i < C.nh; i++)
        if (strcmp(C.h[i].op, op) == 0) { C.h[i].fn = fn; C.h[i].ud = ud; return; }
    if (C.nh == CTL_HANDLERS_MAX) { LOGE(MOD, "too many control ops (%s)", op); return; }
    snprintf(C.h[C.nh].op, sizeof C.h[0].op, "%s", op);
    C.h[C.nh].fn = fn;
    C.h[C.nh].ud = ud;
    C.nh++;
}

/* ---- sending ---------------------------------------------------------- */

static int send_json(json_t *msg, bus_control_cb cb, void *ud)
{
    char *s = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!s || !C.bus) { free(s); return -1; }
    int r = bus_control(C.bus, s, strlen(s), cb, ud);
    free(s);
    if (r == 0) metric_inc(C.m_out);
    return r;
}

int ctl_send(json_t *msg)
{
    if (!msg) return -1;
    json_object_set_new(msg, "from", json_string(C.node));
    return send_json(msg, NULL, NULL);
}

/* ---- requests --------------------------------------------------------- */

static void on_tick(uv_timer_t *t);

static void finish(ctl_wait *w, int status)
{
    if (w->finished) return;
    w->finished = 1;
    if (hmap_get(&C.waits, w->id) == w) hmap_del(&C.waits, w->id);
    ctl_done_cb cb = w->cb;
    w->cb = NULL;
    if (cb) cb(w->ud, status, w->total, w->answers, w->expected < 0 ? 0 : w->expected);
    if (!w->in_bus) wait_free(w);
    if (C.inited && C.waits.count == 0 && C.timer_on) {
        uv_timer_stop(&C.timer);
        C.timer_on = 0;
    }
}

static void check_done(ctl_wait *w)
{
    if (w->expected >= 0 && w->answers >= w->expected) finish(w, 0);
}

static void on_sent(void *ud, long receivers)
{
    ctl_wait *w = ud;
    w->in_bus = 0;
    if (w->finished) { wait_free(w); return; }
    if (receivers < 0) { finish(w, -1); return; }
    w->expected = receivers;
    check_done(w);
}

ctl_wait *ctl_request(json_t *msg, uint32_t timeout_ms, ctl_done_cb cb, void *ud)
{
    if (!msg || !C.inited) { json_decref(msg); return NULL; }
    ctl_wait *w = calloc(1, sizeof *w);
    if (!w) { json_decref(msg); return NULL; }
    snprintf(w->id, sizeof w->id, "%s:%" PRIu64, C.node, ++C.counter);
    w->cb = cb;
    w->ud = ud;
    w->expected = -1;
    w->deadline_ms = mono_ms() + timeout_ms;
    if (hmap_put(&C.waits, w->id, w) != 0) { free(w); json_decref(msg); return NULL; }
    json_object_set_new(msg, "from", json_string(C.node));
    json_object_set_new(msg, "req", json_string(w->id));
    w->in_bus = 1;
    if (send_json(msg, on_sent, w) != 0) {
        hmap_del(&C.waits, w->id);
        free(w);
        return NULL;
    }
    if (!C.timer_on) {
        uv_timer_start(&C.timer, on_tick, CTL_TICK_MS, CTL_TICK_MS);
        C.timer_on = 1;
    }
    return w;
}

void ctl_cancel(ctl_wait *w)
{
    if (!w || w->finished) return;
    w->cb = NULL;
    finish(w, 0);
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
    uint64_t now = mono_ms();
    /* by id: a callback may cancel another due request */
    char due[64][160];
    size_t n = 0;
    for (size_t i = 0; i < C.waits.cap && n < 64; i++) {
        if (!hmap_live(&C.waits, i)) continue;
        ctl_wait *w = C.waits.slots[i].val;
        if (w->deadline_ms <= now) memcpy(due[n++], w->id, sizeof w->id);
    }
    for (size_t i = 0; i < n; i++) {
        ctl_wait *w = hmap_get(&C.waits, due[i]);
        if (w) finish(w, 0); /* a lower bound */
    }
}

/* ---- receiving -------------------------------------------------------- */

static void on_reply(json_t *msg)
{
    const char *to = json_string_value(json_object_get(msg, "to"));
    const char *req = json_string_value(json_object_get(msg, "req"));
    json_t *n = json_object_get(msg, "n");
    if (!to || strcmp(to, C.node) != 0) return;  /* another node's answer */
    ctl_wait *w = req ? hmap_get(&C.waits, req) : NULL;
    if (!w) { metric_inc(C.m_late); return; }
    w->answers++;
    if (json_is_integer(n) && json_integer_value(n) > 0) w->total += (long)json_integer_value(n);
    check_done(w);
}

void ctl_bus_message(void *ud, const char *data, size_t len)
{
    (void)ud;
    if (!data) {
        if (C.resync) C.resync(C.resync_ud);
        return;
    }
    metric_inc(C.m_in);
    json_error_t je;
    json_t *msg = json_loadb(data, len, 0, &je);
    const char *op = msg ? json_string_value(json_object_get(msg, "op")) : NULL;
    if (!op) {
        metric_inc(C.m_bad);
        LOGW(MOD, "malformed control message ignored (%zu bytes)", len);
        json_decref(msg);
        return;
    }
    if (strcmp(op, "reply") == 0) {
        on_reply(msg);
        json_decref(msg);
        return;
    }
    int i;
    for (i = 0; i < C.nh; i++)
        if (strcmp(C.h[i].op, op) == 0) break;
    if (i == C.nh) {
        LOGD(MOD, "control op %s has no handler on this node", op);
        json_decref(msg);
        return;
    }
    long count = C.h[i].fn(C.h[i].ud, msg);
    const char *from = json_string_value(json_object_get(msg, "from"));
    const char *req = json_string_value(json_object_get(msg, "req"));
    if (count >= 0 && from && req && C.inited) {
        json_t *r = json_pack("{s:s, s:s, s:s, s:I}", "op", "reply", "to", from, "req", req,
                              "n", (json_int_t)count);
        if (r) send_json(r, NULL, NULL);
    }
    json_decref(msg);
}
