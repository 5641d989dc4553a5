/* The fault filter's runtime: picks the config (route over listener), decides with
 * fault_policy.c, holds the request on a timer for a delay, and answers an abort. */
#include "handlers/fault/fault.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fault_ctx fault_ctx_t;

/* The delay's timer lives apart from the stream: the stream's pool may be freed while the
 * timer's close is still pending. */
typedef struct fault_timer {
    uv_timer_t t;
    fault_ctx_t *f;
} fault_timer_t;

struct fault_ctx {
    dp_stream_t *s;
    const dp_fault_conf_t *conf;   /* the config in effect (route or listener level) */
    const dp_fault_stats_t *stats; /* the listener-level config's */
    _Atomic uint64_t *active;      /* where this stream counts as an active fault */
    dp_gauge_t *active_gauge;
    fault_timer_t *timer;
    bool counted; /* counted once as an active fault, whatever was injected */
    bool finished;
};

static void timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void timer_stop(fault_ctx_t *f)
{
    if (f->timer == NULL)
        return;
    f->timer->f = NULL;
    f->timer->t.data = f->timer;
    uv_timer_stop(&f->timer->t);
    uv_close((uv_handle_t *)&f->timer->t, timer_closed);
    f->timer = NULL;
}

static uint64_t active_count(const fault_ctx_t *f)
{
    if (f->active_gauge)
        return dp_gauge_value(f->active_gauge);
    return f->active ? atomic_load_explicit(f->active, memory_order_relaxed) : 0;
}

/* Envoy's maybeIncActiveFaults: one active fault per stream. */
static void active_inc(fault_ctx_t *f)
{
    if (f->counted)
        return;
    f->counted = true;
    if (f->active_gauge)
        dp_gauge_inc(f->active_gauge);
    else if (f->active)
        atomic_fetch_add_explicit(f->active, 1, memory_order_relaxed);
}

static void active_dec(fault_ctx_t *f)
{
    if (!f->counted)
        return;
    f->counted = false;
    if (f->active_gauge)
        dp_gauge_dec(f->active_gauge);
    else if (f->active)
        atomic_fetch_sub_explicit(f->active, 1, memory_order_relaxed);
}

/* A trailers-only gRPC response with the configured status (dp_stream_local_reply maps HTTP
 * statuses only). */
static void reply_grpc(dp_stream_t *s, int grpc_status)
{
    dp_http_head_t *h = dp_pool_calloc(s->pool, sizeof(*h));
    h->status = 200;
    h->content_length = -1;
    char code[16];
    int n = snprintf(code, sizeof(code), "%d", grpc_status);
    dp_headers_add_ref(&h->headers, s->pool, DP_STR("content-type"), DP_STR("application/grpc"));
    dp_headers_add(&h->headers, s->pool, "grpc-status", 11, code, (size_t)n);
    dp_headers_add_ref(&h->headers, s->pool, DP_STR("grpc-message"), DP_STR("fault filter abort"));
    s->response_flags |= DP_RF(FI);
    dp_stream_encode_headers(s, h, true);
}

/* Draws the abort; true when the stream was answered. */
static bool maybe_abort(fault_ctx_t *f)
{
    dp_stream_t *s = f->s;
    int http, grpc;
    if (!dp_fault_abort_status(f->conf, &s->req->headers, dp_wctx_random(s->w), &http, &grpc))
        return false;
    active_inc(f);
    if (f->stats->aborts_injected)
        dp_counter_inc(f->stats->aborts_injected);
    if (grpc >= 0 && s->grpc)
        reply_grpc(s, grpc);
    else
        dp_stream_local_reply(s, http, "fault filter abort", DP_RF(FI));
    return true;
}

static void on_delay_done(uv_timer_t *t)
{
    fault_timer_t *ft = (fault_timer_t *)t;
    fault_ctx_t *f = ft->f;
    if (f == NULL)
        return;
    timer_stop(f);
    if (f->finished)
        return;
    /* Delays can be followed by aborts, drawn afresh (Envoy's postDelayInjection). */
    if (!maybe_abort(f))
        dp_stream_continue(f->s);
}

static const dp_fault_stats_t no_stats;

static dp_filter_status_t fault_on_request_headers(dp_stream_t *s, void *ctx, const void *conf,
                                                   bool end_stream)
{
    fault_ctx_t *f = ctx;
    const dp_fault_conf_t *lc = conf;
    if (lc && lc->magic != DP_FAULT_MAGIC)
        lc = NULL;
    const char *name = lc && lc->filter_name ? lc->filter_name : DP_FAULT_FILTER_NAME;
    const dp_fault_conf_t *rc = dp_stream_route_config(s, name);
    if (rc && rc->magic != DP_FAULT_MAGIC)
        rc = NULL;
    const dp_fault_conf_t *c = rc ? rc : lc;
    f->s = s;
    if (c == NULL || s->req == NULL)
        return DP_FILTER_CONTINUE;
    f->conf = c;
    f->stats = lc ? &lc->stats : &no_stats;
    f->active_gauge = lc ? lc->stats.active_faults : NULL;
    f->active = lc ? lc->active : NULL;

    if (!dp_fault_request_matches(c, s->req, s->pool))
        return DP_FILTER_CONTINUE;
    if (c->has_max_active_faults && active_count(f) >= c->max_active_faults) {
        if (f->stats->faults_overflow)
            dp_counter_inc(f->stats->faults_overflow);
        return DP_FILTER_CONTINUE;
    }
    uint64_t ms = dp_fault_delay_ms(c, &s->req->headers, dp_wctx_random(s->w));
    if (ms > 0) {
        fault_timer_t *ft = malloc(sizeof(*ft));
        if (ft == NULL)
            abort();
        uv_timer_init(s->w->loop, &ft->t);
        ft->f = f;
        f->timer = ft;
        uv_timer_start(&ft->t, on_delay_done, ms, 0);
        s->response_flags |= DP_RF(DI);
        active_inc(f);
        if (f->stats->delays_injected)
            dp_counter_inc(f->stats->delays_injected);
        return DP_FILTER_STOP;
    }
    if (maybe_abort(f))
        return DP_FILTER_STOP;
    return DP_FILTER_CONTINUE;
}

static void fault_on_stream_done(dp_stream_t *s, void *ctx, const void *conf)
{
    fault_ctx_t *f = ctx;
    f->finished = true;
    timer_stop(f);
    active_dec(f);
}

const dp_http_filter_type_t dp_fault_filter = {
    .name = DP_FAULT_FILTER_NAME,
    .type_url = DP_FAULT_TYPE_URL,
    .ctx_size = sizeof(fault_ctx_t),
    .on_request_headers = fault_on_request_headers,
    .on_stream_done = fault_on_stream_done,
};
