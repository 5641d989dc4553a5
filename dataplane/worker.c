#include "dataplane/worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/conn.h"
#include "dataplane/hcm.h"
#include "dataplane/health_check.h"
#include "dataplane/http.h"
#include "dataplane/listener.h"
#include "dataplane/upstream.h"

struct dp_worker {
    unsigned index;
    char name[32];
    uv_loop_t loop;
    uv_async_t wakeup;
    uv_timer_t grace; /* at stop: how long connections get to close themselves */
    uv_prepare_t turn; /* dp_http_turn_end() once per loop turn */
    bool stopping;    /* worker thread only */
    uv_thread_t thread;
    dp_worker_init_fn init;
    void *userdata;
    atomic_bool stop_requested;
    atomic_bool running;
    bool started;
    /* start handshake */
    uv_mutex_t mu;
    uv_cond_t cond;
    bool ready;
    int start_err;
    /* the snapshot mailbox: mu guards pending */
    dp_snapshot_t *pending;
    dp_snapshot_t *current; /* worker thread only */
    dp_wctx_t ctx;          /* worker thread only: the data plane's view of this worker */
    dp_listeners_t *listeners; /* worker thread only */
    _Atomic uint64_t generation;
};

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_grace(uv_timer_t *t)
{
    uv_walk(t->loop, close_walk_cb, NULL);
}

static void on_wakeup(uv_async_t *a)
{
    dp_worker_t *w = a->data;
    uv_mutex_lock(&w->mu);
    dp_snapshot_t *next = w->pending;
    w->pending = NULL;
    uv_mutex_unlock(&w->mu);
    if (next) {
        /* Streams in flight hold their own references: the old snapshot lives on until the
         * last of them ends. */
        dp_snapshot_unref(w->current);
        w->current = next;
        w->ctx.snap = next;
        if (w->listeners == NULL && !w->ctx.closing)
            w->listeners = dp_listeners_new(&w->ctx);
        if (w->ctx.up)
            dp_upstreams_apply(w->ctx.up, next);
        if (w->listeners)
            dp_listeners_apply(w->listeners, next);
        if (w->index == 0) /* the process's health checks run on worker 0 */
            dp_health_checks_apply(&w->loop, next);
        atomic_store(&w->generation, next->generation);
    }
    if (atomic_load(&w->stop_requested) && !w->stopping) {
        w->stopping = true;
        /* Listeners and connections free themselves from their close callbacks. */
        dp_listeners_close(w->listeners);
        w->listeners = NULL;
        dp_wctx_close_all(&w->ctx);
        dp_upstreams_close(w->ctx.up);
        w->ctx.up = NULL;
        if (w->index == 0)
            dp_health_checks_apply(&w->loop, NULL);
        /* Connections and pools close their own handles, through their close callbacks; the
         * loop ends once the last is gone. A handle something failed to close is closed by
         * worker_main's final walk, after a grace period. */
        uv_unref((uv_handle_t *)&w->wakeup);
        uv_timer_init(&w->loop, &w->grace);
        uv_timer_start(&w->grace, on_grace, 2000, 0);
        uv_unref((uv_handle_t *)&w->grace);
    }
}

static void on_turn(uv_prepare_t *p)
{
    (void)p;
    dp_http_turn_end();
}

static void worker_main(void *arg)
{
    dp_worker_t *w = arg;
    int rc = uv_loop_init(&w->loop);
    if (rc == 0) {
        rc = uv_async_init(&w->loop, &w->wakeup, on_wakeup);
        if (rc < 0)
            uv_loop_close(&w->loop);
    }
    w->wakeup.data = w;
    if (rc == 0) {
        uv_prepare_init(&w->loop, &w->turn);
        uv_prepare_start(&w->turn, on_turn);
        uv_unref((uv_handle_t *)&w->turn);
    }
    w->ctx.loop = &w->loop;
    w->ctx.index = w->index;
    w->ctx.tcp_proxy_start = dp_tcp_proxy_start;
    w->ctx.hcm_start = dp_hcm_start;
    if (rc == 0)
        w->ctx.up = dp_upstreams_new(&w->loop, dp_h1_conn_new, dp_h2_conn_new);
    uv_mutex_lock(&w->mu);
    w->start_err = rc;
    w->ready = true;
    uv_cond_signal(&w->cond);
    uv_mutex_unlock(&w->mu);
    if (rc < 0)
        return;

    atomic_store(&w->running, true);
    if (w->init)
        w->init(w, w->userdata);
    /* A stop that arrived before the handshake is honoured here. */
    if (atomic_load(&w->stop_requested))
        on_wakeup(&w->wakeup);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    atomic_store(&w->running, false);
    /* Every handle is closed by now; run once more for their close callbacks. */
    uv_walk(&w->loop, close_walk_cb, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    dp_http_thread_done();
    dp_h1_thread_done();
    dp_h2_thread_done();
}

dp_worker_t *dp_worker_new(unsigned index, dp_worker_init_fn init, void *userdata)
{
    dp_worker_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->index = index;
    snprintf(w->name, sizeof(w->name), "worker_%u", index);
    w->init = init;
    w->userdata = userdata;
    if (uv_mutex_init(&w->mu) < 0) {
        free(w);
        return NULL;
    }
    if (uv_cond_init(&w->cond) < 0) {
        uv_mutex_destroy(&w->mu);
        free(w);
        return NULL;
    }
    return w;
}

int dp_worker_start(dp_worker_t *w)
{
    int rc = uv_thread_create(&w->thread, worker_main, w);
    if (rc < 0)
        return rc;
    w->started = true;
    uv_mutex_lock(&w->mu);
    while (!w->ready)
        uv_cond_wait(&w->cond, &w->mu);
    rc = w->start_err;
    uv_mutex_unlock(&w->mu);
    return rc;
}

void dp_worker_stop(dp_worker_t *w)
{
    if (w == NULL || atomic_exchange(&w->stop_requested, true))
        return;
    if (w->started && w->start_err == 0)
        uv_async_send(&w->wakeup);
}

void dp_worker_publish(dp_worker_t *w, dp_snapshot_t *s)
{
    dp_snapshot_ref(s);
    uv_mutex_lock(&w->mu);
    dp_snapshot_t *dropped = w->pending;
    w->pending = s;
    uv_mutex_unlock(&w->mu);
    dp_snapshot_unref(dropped);
    if (w->started && w->start_err == 0)
        uv_async_send(&w->wakeup);
}

dp_snapshot_t *dp_worker_snapshot(dp_worker_t *w)
{
    return w->current;
}

uint64_t dp_worker_generation(const dp_worker_t *w)
{
    return atomic_load(&w->generation);
}

void dp_worker_join_free(dp_worker_t *w)
{
    if (w == NULL)
        return;
    if (w->started) {
        dp_worker_stop(w);
        uv_thread_join(&w->thread);
    }
    dp_snapshot_unref(w->pending);
    dp_snapshot_unref(w->current);
    uv_cond_destroy(&w->cond);
    uv_mutex_destroy(&w->mu);
    free(w);
}

unsigned dp_worker_index(const dp_worker_t *w)
{
    return w->index;
}

const char *dp_worker_name(const dp_worker_t *w)
{
    return w->name;
}

uv_loop_t *dp_worker_loop(dp_worker_t *w)
{
    return &w->loop;
}

bool dp_worker_running(const dp_worker_t *w)
{
    return atomic_load(&w->running);
}
