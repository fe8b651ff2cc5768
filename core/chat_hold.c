/* chat_hold: see chat_hold.h. Until a join has finished, the room's bus
 * subscription may not be live yet: a message published in that window
 * would be folded into the welcome/presence_state seq and never reach its
 * own sender. Frames are kept per connection in arrival order, under the
 * connection id in one hmap (only connections that hold frames are in it);
 * input is paused (conn_rx_pause, a reason bit of its own) so the kernel
 * buffers the rest. */
#define _GNU_SOURCE
#include "chat_hold.h"
#include "hmap.h"
#include "log.h"
#include "metrics.h"
#include "srv.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct held_frame {
    struct held_frame *next;
    size_t len;
    char data[];
} held_frame;

static hmap g_holds;        /* conn id (hex) -> conn_hold, only while holding */
static uv_timer_t g_resume; /* resumes held frames from the loop */
static int g_resume_init;
static metric_counter *m_held;
static void (*g_process)(conn *c, const char *data, size_t len);
static int (*g_waiting)(const conn *c);  /* e.g. the admission (chat.c gives it) */

typedef struct conn_hold {
    conn *c;
    held_frame *head, *tail;
    size_t n, bytes;
    int paused;             /* input paused (conn_rx_pause) */
} conn_hold;


static void hold_key(const conn *c, char key[24])
{
    snprintf(key, 24, "%" PRIx64, c->id);
}

static conn_hold *hold_of(const conn *c)
{
    if (!g_holds.count) return NULL;
    char key[24];
    hold_key(c, key);
    return hmap_get(&g_holds, key);
}

/* a join in progress, or what else holds the frames (the admission before
 * the URL room's join) */
static int joining(const conn *c)
{
    if (g_waiting && g_waiting(c)) return 1;
    for (uint32_t i = 0; i < c->nrooms; i++)
        if (!c->rooms[i]->live) return 1;
    return 0;
}

static void hold_free(conn *c, conn_hold *h)
{
    char key[24];
    hold_key(c, key);
    hmap_del(&g_holds, key);
    while (h->head) {
        held_frame *f = h->head;
        h->head = f->next;
        free(f);
    }
    if (h->paused) conn_rx_pause(c, CONN_RX_JOIN, 0);   /* a no-op once the socket is gone */
    free(h);
}

static void resume_cb(uv_timer_t *t);

static void resume_soon(void)
{
    if (!g_resume_init) return;
    if (!uv_is_active((uv_handle_t *)&g_resume)) uv_timer_start(&g_resume, resume_cb, 0, 0);
}

/* Held frames of connections whose joins are done, in order; a frame that
 * starts another join stops its connection's run until that one is done. */
static void resume_cb(uv_timer_t *t)
{
    (void)t;
    size_t n = g_holds.count;
    conn_hold **hs = n ? malloc(n * sizeof *hs) : NULL;
    n = hs ? hmap_values(&g_holds, (void **)hs, n) : 0;
    conn **cs = n ? malloc(n * sizeof *cs) : NULL;
    for (size_t i = 0; cs && i < n; i++) cs[i] = hs[i]->c;
    free(hs);
    if (!cs && n) { resume_soon(); return; } /* out of memory: try again */
    for (size_t i = 0; i < n; i++) {
        conn *c = cs[i];
        conn_hold *h = hold_of(c);
        while (h && h->head && !joining(c) && !conn_is_closing(c)) {
            held_frame *f = h->head;
            h->head = f->next;
            if (!h->head) h->tail = NULL;
            h->n--;
            h->bytes -= f->len;
            g_process(c, f->data, f->len);
            free(f);
            h = hold_of(c); /* the frame may have closed the connection */
        }
        if (h && (!h->head || conn_is_closing(c))) hold_free(c, h);
    }
    free(cs);
}

void chat_hold_init(void (*process)(conn *c, const char *data, size_t len),
                    int (*waiting)(const conn *c))
{
    g_process = process;
    g_waiting = waiting;
    m_held = metrics_counter("chat_frames_held_total",
                             "Client frames held until a join of their connection finished", NULL);
}

void chat_hold_shutdown(void)
{
    if (g_resume_init) {
        uv_close((uv_handle_t *)&g_resume, NULL);
        uv_run(g_srv.loop, UV_RUN_NOWAIT);
        g_resume_init = 0;
    }
    hmap_free(&g_holds);
}

void chat_hold_conn_closed(conn *c)
{
    conn_hold *h = hold_of(c);
    if (h) hold_free(c, h);
}

void chat_hold_join_done(conn *c)
{
    conn_hold *h = hold_of(c);
    if (h && !joining(c)) resume_soon();
}

int chat_hold_frame(conn *c, const char *data, size_t len)
{
    conn_hold *h = hold_of(c);
    if (!h && !joining(c)) return 0;
    if (!g_resume_init) {
        uv_timer_init(g_srv.loop, &g_resume);
        g_resume_init = 1;
    }
    if (!h) {
        char key[24];
        hold_key(c, key);
        h = calloc(1, sizeof *h);
        if (!h || hmap_put(&g_holds, key, h) < 0) {
            free(h);
            conn_close_oom(c);
            return 1;
        }
        h->c = c;
    }
    if (h->n + 1 > (size_t)g_srv.cfg.max_queue || h->bytes + len > (size_t)g_srv.cfg.max_queue_bytes) {
        LOGI("chat", "conn %" PRIu64 " user %s: too many frames while joining, closing 1008", c->id,
             c->ident.user);
        hold_free(c, h);
        conn_close(c, 1008, "too many frames while joining");
        return 1;
    }
    held_frame *f = malloc(sizeof *f + len);
    if (!f) {
        conn_close_oom(c);
        return 1;
    }
    f->next = NULL;
    f->len = len;
    memcpy(f->data, data, len);
    if (h->tail) h->tail->next = f; else h->head = f;
    h->tail = f;
    h->n++;
    h->bytes += len;
    metric_inc(m_held);
    if (!h->paused) {
        h->paused = 1;
        conn_rx_pause(c, CONN_RX_JOIN, 1);
    }
    if (!joining(c)) resume_soon();
    return 1;
}
