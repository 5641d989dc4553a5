#include "handlers/router/router.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/access_log.h"
#include "dataplane/log.h"
#include "dataplane/route.h"
#include "dataplane/upstream.h"
#include "handlers/router/hash.h"
#include "handlers/router/mirror.h"
#include "handlers/router/retry.h"

typedef struct router router_t;

/* The router's timers live apart from the stream, so that the stream can end while a timer's
 * close is still pending. */
typedef struct router_timer {
    uv_timer_t t;
    router_t *r;
    void (*fn)(router_t *r);
} router_timer_t;

/* The hosts a request's previous attempts went to (retry_host_predicate previous_hosts);
 * past this many, the oldest are forgotten. */
#define MAX_TRIED 16

/* A route's header value with %COMMAND%s, formatted over the stream (dataplane/route.h). */
static size_t header_value_fmt(const struct dp_access_format *f, const void *ctx, char *buf,
                               size_t cap)
{
    const dp_stream_t *s = ctx;
    return dp_access_format_value(f, s, dp_stream_now_ms(s), buf, cap);
}

struct router {
    dp_stream_t *s;
    const dp_cluster_t *cluster;
    const dp_route_weighted_t *wc;
    dp_upstream_proto_t proto;
    dp_lb_ctx_t lb;
    dp_str_t set_cookie; /* from a cookie hash policy: added to the response */

    /* the current attempt */
    dp_upstream_wait_t *wait;
    dp_enc_t *up;          /* its upstream stream, once open */
    const dp_addr_t *host; /* its host, once known */
    bool rq_admitted;      /* holds the cluster's max_requests breaker */
    bool retry_admitted;   /* holds the cluster's max_retries breaker */
    bool trailers_sent;
    uint32_t attempts; /* started so far (x-envoy-attempt-count) */

    /* the retry policy in force (route's or vhost's, with the trusted request headers) */
    uint32_t retry_on;
    const uint32_t *retry_codes;
    size_t n_retry_codes;
    uint32_t retries_left;
    bool retry_exhausted; /* a retriable failure came with no retry left */
    bool previous_hosts;
    uint64_t backoff_interval, backoff_max;
    uint64_t per_try_ms, per_try_idle_ms;
    const dp_addr_t *tried[MAX_TRIED];
    size_t n_tried;

    /* the request body: chunks not yet sent to the current attempt start at `cursor`; while
     * `keep` (a retry may still need them) the sent ones stay for replay */
    dp_bufq_t body;
    dp_bufq_chunk_t *cursor;
    size_t unsent;
    bool keep;
    bool body_end;
    dp_headers_t *trailers; /* request trailers (the stream's pool) */

    bool resp_headers;  /* the final upstream response head went downstream */
    bool finished;      /* on_stream_done ran: touch nothing of the stream */
    bool down_disabled; /* we are holding the downstream back */
    bool up_disabled;   /* we are holding the upstream back */
    router_timer_t *t_global, *t_per_try, *t_backoff, *t_idle, *t_duration;
    uint64_t up_start_ms;
    uint64_t timeout_ms, idle_ms, duration_ms;

    dp_mirror_t *mirrors[4]; /* shadows still taking the request body */
    size_t n_mirrors;
};

static const dp_sink_ops_t upstream_sink;
static void attempt_start(router_t *r);

static uint32_t limit_of(const router_t *r)
{
    return r->s->hcm->limits.buffer_limit;
}

/* ---- the pools' breakers and outlier feedback ---- */

static void host_result(router_t *r, int status, dp_reset_reason_t why)
{
    if (r->host)
        dp_upstream_host_result(r->s->w->up, r->cluster, r->host, status, why);
}

/* The cluster's max_requests breaker, held for the length of one attempt (the pools count a
 * refusal). */
static bool rq_admit(router_t *r)
{
    r->rq_admitted = dp_upstream_rq_admit(r->s->w->up, r->cluster);
    return r->rq_admitted;
}

static void rq_release(router_t *r)
{
    if (r->rq_admitted)
        dp_upstream_rq_release(r->s->w->up, r->cluster);
    r->rq_admitted = false;
}

/* The max_retries breaker, held from a retry's scheduling until the next retry decision or
 * the stream's end (Envoy's RetryStateImpl); the pools count upstream_rq_retry_overflow. */
static bool retry_admit(router_t *r)
{
    r->retry_admitted = dp_upstream_retry_admit(r->s->w->up, r->cluster);
    return r->retry_admitted;
}

static void retry_release(router_t *r)
{
    if (r->retry_admitted)
        dp_upstream_retry_release(r->s->w->up, r->cluster);
    r->retry_admitted = false;
}

/* cluster.<name>.<suffix>, found or made in the snapshot's stats store (any worker may make
 * it; the store serialises creation). */
static void cluster_count(router_t *r, const char *suffix)
{
    if (r->s->snap->stats == NULL)
        return;
    char name[512];
    snprintf(name, sizeof(name), "cluster.%s.%s", r->cluster->name, suffix);
    dp_counter_t *c = dp_stats_counter(r->s->snap->stats, name);
    if (c)
        dp_counter_inc(c);
}

/* ---- timers ---- */

static void timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void timer_stop(router_timer_t **slot)
{
    router_timer_t *rt = *slot;
    if (rt == NULL)
        return;
    rt->r = NULL;
    rt->t.data = rt;
    uv_close((uv_handle_t *)&rt->t, timer_closed);
    *slot = NULL;
}

static void timer_fired(uv_timer_t *t)
{
    router_timer_t *rt = (router_timer_t *)t;
    router_t *r = rt->r;
    if (r == NULL)
        return;
    void (*fn)(router_t *) = rt->fn;
    fn(r);
}

/* (Re)starts the timer in *slot to call fn after ms. */
static void timer_arm(router_t *r, router_timer_t **slot, uint64_t ms, void (*fn)(router_t *))
{
    if (r->finished)
        return;
    router_timer_t *rt = *slot;
    if (rt == NULL) {
        rt = malloc(sizeof(*rt));
        if (rt == NULL)
            abort();
        uv_timer_init(r->s->w->loop, &rt->t);
        rt->r = r;
        rt->fn = fn;
        *slot = rt;
    }
    rt->fn = fn;
    uv_timer_start(&rt->t, timer_fired, ms, 0);
}

static void timers_stop_all(router_t *r)
{
    timer_stop(&r->t_global);
    timer_stop(&r->t_per_try);
    timer_stop(&r->t_backoff);
    timer_stop(&r->t_idle);
    timer_stop(&r->t_duration);
}

/* ---- the current attempt ---- */

/* Withdraws the current attempt (pending pool request or open stream). */
static void attempt_abort(router_t *r)
{
    timer_stop(&r->t_per_try);
    if (r->wait) {
        dp_upstream_cancel(r->wait);
        r->wait = NULL;
    }
    if (r->up) {
        dp_enc_t *e = r->up;
        r->up = NULL;
        if (r->cluster->stats.rq_active)
            dp_gauge_dec(r->cluster->stats.rq_active);
        e->ops->reset(e, DP_RESET_LOCAL);
    }
    r->up_disabled = false;
    rq_release(r);
}

static void fail_before_headers(router_t *r, dp_reset_reason_t why, uint32_t extra_flags)
{
    uint32_t flag = DP_RF(UF);
    const char *reason = "connection failure";
    switch (why) {
    case DP_RESET_CONNECT_TIMEOUT:
        reason = "connection timeout";
        break;
    case DP_RESET_REMOTE:
        flag = DP_RF(UR);
        reason = "remote reset";
        break;
    case DP_RESET_CONN_TERMINATED:
        flag = DP_RF(UC);
        reason = "connection termination";
        break;
    case DP_RESET_PROTOCOL:
        flag = DP_RF(UPE);
        reason = "protocol error";
        break;
    case DP_RESET_REFUSED:
        flag = DP_RF(UR);
        reason = "remote refused stream reset";
        break;
    case DP_RESET_OVERFLOW:
        flag = DP_RF(UO);
        reason = "overflow";
        break;
    default:
        break;
    }
    char body[160];
    snprintf(body, sizeof(body),
             "upstream connect error or disconnect/reset before headers. reset reason: %s", reason);
    timers_stop_all(r);
    if (why == DP_RESET_NO_HEALTHY_HOST) {
        dp_stream_local_reply(r->s, 503, "no healthy upstream", DP_RF(UH) | extra_flags);
        return;
    }
    if (why == DP_RESET_OVERFLOW) {
        static const dp_header_t overloaded = {{"x-envoy-overloaded", 18}, {"true", 4}};
        dp_stream_local_reply_headers(r->s, 503, body, flag | extra_flags, &overloaded, 1);
        return;
    }
    /* An upstream that broke the protocol is a bad gateway (Envoy 1.18+, 502 UPE). */
    dp_stream_local_reply(r->s, why == DP_RESET_PROTOCOL ? 502 : 503, body, flag | extra_flags);
}

/* Whether another attempt may follow the current one: retries left, the body intact, nothing
 * of the response sent downstream. */
static bool retry_possible(const router_t *r)
{
    return r->retry_on && r->keep && !r->finished && !r->s->response_started && !r->resp_headers;
}

static void remember_host(router_t *r)
{
    if (r->host == NULL)
        return;
    if (r->n_tried == MAX_TRIED) {
        memmove(r->tried, r->tried + 1, (MAX_TRIED - 1) * sizeof(r->tried[0]));
        r->n_tried--;
    }
    r->tried[r->n_tried++] = r->host;
}

static void on_backoff(router_t *r)
{
    timer_stop(&r->t_backoff);
    attempt_start(r);
}

/* A retriable outcome of the current attempt (which is over). Schedules the next one and
 * returns true, or returns false (no retry left, or the max_retries breaker refused: then
 * *overflow). */
static bool retry_schedule(router_t *r, bool *overflow)
{
    *overflow = false;
    retry_release(r);
    if (r->retries_left == 0) {
        r->retry_exhausted = true;
        cluster_count(r, "upstream_rq_retry_limit_exceeded");
        return false;
    }
    /* As Envoy: a retry the breaker refuses is used up all the same. */
    r->retries_left--;
    if (!retry_admit(r)) {
        *overflow = true;
        return false;
    }
    if (r->cluster->stats.rq_retry)
        dp_counter_inc(r->cluster->stats.rq_retry);
    remember_host(r);
    /* The body goes again from its start. */
    r->cursor = r->body.head;
    r->unsent = r->body.bytes;
    r->trailers_sent = false;
    r->host = NULL;
    uint64_t ms =
        dp_router_backoff_next(&r->backoff_interval, r->backoff_max, dp_wctx_random(r->s->w));
    DP_LOG(DP_LOG_ROUTER, DP_LOG_DEBUG, "retrying request to %s in %llu ms (attempt %u)",
           r->cluster->name, (unsigned long long)ms, r->attempts + 1);
    /* Always through the loop: never from inside a codec's or pool's callback. */
    timer_arm(r, &r->t_backoff, ms, on_backoff);
    return true;
}

/* The current attempt ended before a response head: why, or a per-try timeout. */
static void attempt_failed(router_t *r, dp_reset_reason_t why, bool started, bool per_try_timeout)
{
    timer_stop(&r->t_per_try);
    rq_release(r);
    bool retriable = dp_router_retry_reset(r->retry_on, per_try_timeout ? DP_RESET_LOCAL : why,
                                           started || per_try_timeout);
    if (retriable && retry_possible(r)) {
        bool overflow;
        if (retry_schedule(r, &overflow))
            return;
        if (overflow)
            r->s->response_flags |= DP_RF(UO);
    } else if (!retriable && r->attempts > 1) {
        cluster_count(r, "upstream_rq_retry_success");
    }
    uint32_t extra = r->retry_exhausted ? DP_RF(URX) : 0;
    if (per_try_timeout) {
        timers_stop_all(r);
        dp_stream_local_reply(r->s, 504, "upstream request timeout", DP_RF(UT) | extra);
        return;
    }
    fail_before_headers(r, why, extra);
}

static void on_per_try_timeout(router_t *r)
{
    timer_stop(&r->t_per_try);
    cluster_count(r, r->per_try_ms ? "upstream_rq_per_try_timeout"
                                   : "upstream_rq_per_try_idle_timeout");
    host_result(r, 0, DP_RESET_LOCAL);
    attempt_abort(r);
    attempt_failed(r, DP_RESET_LOCAL, true, true);
}

/* The per-try timeout runs once the request is complete and the attempt's stream is open (the
 * connect is the cluster's connect_timeout's, as in Envoy); without
 * one, per_try_idle_timeout runs from the attempt's stream opening, restarted by each of its
 * bytes. */
static void per_try_arm(router_t *r)
{
    if (r->t_per_try || r->up == NULL)
        return;
    if (r->per_try_ms && r->body_end)
        timer_arm(r, &r->t_per_try, r->per_try_ms, on_per_try_timeout);
    else if (r->per_try_ms == 0 && r->per_try_idle_ms && r->up)
        timer_arm(r, &r->t_per_try, r->per_try_idle_ms, on_per_try_timeout);
}

/* Any byte either way: the stream and per-try idle timers start again. */
static void activity(router_t *r, bool upstream)
{
    if (r->idle_ms && r->t_idle)
        uv_timer_start(&r->t_idle->t, timer_fired, r->idle_ms, 0);
    if (upstream && r->per_try_idle_ms && r->t_per_try && !r->per_try_ms)
        uv_timer_start(&r->t_per_try->t, timer_fired, r->per_try_idle_ms, 0);
}

/* ---- stream-wide timers ---- */

static void on_global_timeout(router_t *r)
{
    timer_stop(&r->t_global);
    const dp_cluster_t *c = r->cluster;
    if (c && c->stats.rq_timeout)
        dp_counter_inc(c->stats.rq_timeout);
    if (r->up || r->wait)
        host_result(r, 0, DP_RESET_LOCAL);
    attempt_abort(r);
    timers_stop_all(r);
    /* Before the response started: 504 UT; after, the stream is reset (in local_reply). */
    dp_stream_local_reply(r->s, 504, "upstream request timeout", DP_RF(UT));
}

/* The route timeout runs from the end of the downstream request (Envoy's semantics). */
static void global_timer_start(router_t *r)
{
    if (r->timeout_ms == 0 || r->t_global || r->finished || r->s->response_started)
        return;
    timer_arm(r, &r->t_global, r->timeout_ms, on_global_timeout);
}

/* Stream idle (route idle_timeout) and max_stream_duration, as Envoy's connection manager:
 * before the response, 504 once the request is complete, else 408; after it, a reset. */
static void stream_timed_out(router_t *r, const char *what)
{
    if (r->up || r->wait)
        host_result(r, 0, DP_RESET_LOCAL);
    attempt_abort(r);
    timers_stop_all(r);
    dp_stream_t *s = r->s;
    dp_stream_local_reply(s, s->request_ended ? 504 : 408, what, DP_RF(SI));
}

static void on_idle_timeout(router_t *r)
{
    stream_timed_out(r, "stream timeout");
}

static void on_duration_timeout(router_t *r)
{
    stream_timed_out(r, "downstream duration timeout");
}

/* ---- the upstream stream's events ---- */

static void up_on_headers(void *ud, dp_http_head_t *h, bool end_stream)
{
    router_t *r = ud;
    activity(r, true);
    if (h->status < 200 && h->status != 101)
        return; /* 100 Continue and the like: the downstream codec handles its own */
    dp_stream_t *s = r->s;
    host_result(r, h->status, DP_RESET_NONE);
    int grpc_status = -1;
    const dp_header_t *gs = DP_HDR_GET(&h->headers, "grpc-status");
    if (gs) {
        int64_t v = dp_router_parse_uint(gs->value);
        grpc_status = v >= 0 && v < 100 ? (int)v : -1;
    }
    bool ratelimited = DP_HDR_GET(&h->headers, "x-envoy-ratelimited") != NULL;
    bool retriable = r->retry_on && h->status != 101 &&
                     dp_router_retry_status(r->retry_on, r->retry_codes, r->n_retry_codes,
                                            h->status, grpc_status, ratelimited);
    if (retriable && retry_possible(r)) {
        bool overflow;
        if (retry_schedule(r, &overflow)) {
            /* This response is dropped: its stream goes (no callback of it follows). */
            timer_stop(&r->t_per_try);
            rq_release(r);
            dp_enc_t *e = r->up;
            r->up = NULL;
            if (e) {
                if (r->cluster->stats.rq_active)
                    dp_gauge_dec(r->cluster->stats.rq_active);
                e->ops->reset(e, DP_RESET_LOCAL);
            }
            return;
        }
        if (overflow)
            s->response_flags |= DP_RF(UO);
    }
    if (r->retry_exhausted)
        s->response_flags |= DP_RF(URX);
    else if (!retriable && r->attempts > 1)
        cluster_count(r, "upstream_rq_retry_success");
    r->resp_headers = true;
    timer_stop(&r->t_per_try);
    /* No more attempts: the replay copy of the body goes. */
    r->keep = false;
    while (r->body.head && r->body.head != r->cursor) {
        dp_bufq_chunk_t *ch = r->body.head;
        r->body.head = ch->next;
        if (r->body.head == NULL)
            r->body.tail = NULL;
        r->body.bytes -= ch->len;
        free(ch);
    }
    if (s->route) {
        s->response_status = h->status; /* for %RESPONSE_CODE% in the values added */
        dp_route_apply_response(s->rc, s->vh, s->route, r->wc, h, s->pool,
                                &(dp_header_fmt_t){header_value_fmt, s});
    }
    /* Envoy's x-envoy-upstream-service-time: ms from sending upstream to the response head. */
    char ms[24];
    int n = (int)dp_u64_fmt(ms, dp_stream_now_ms(s) - r->up_start_ms);
    dp_headers_add(&h->headers, s->pool, "x-envoy-upstream-service-time", 29, ms, (size_t)n);
    if (s->vh && s->vh->include_attempt_count_in_response) {
        n = snprintf(ms, sizeof(ms), "%u", r->attempts);
        dp_headers_set(&h->headers, s->pool, "x-envoy-attempt-count", 21, ms, (size_t)n);
    }
    if (r->set_cookie.p)
        dp_headers_add_ref(&h->headers, s->pool, DP_STR("set-cookie"), r->set_cookie);
    const dp_cluster_stats_t *cs = &r->cluster->stats;
    dp_counter_t *xx[] = {NULL, NULL, cs->rq_2xx, cs->rq_3xx, cs->rq_4xx, cs->rq_5xx};
    int k = h->status / 100;
    if (k >= 2 && k <= 5 && xx[k])
        dp_counter_inc(xx[k]);
    dp_counter_t *code = dp_code_counter(cs->rq_code, h->status);
    if (code)
        dp_counter_inc(code);
    if (end_stream)
        timers_stop_all(r);
    s->details = "via_upstream";
    dp_stream_encode_headers(s, h, end_stream);
}

static void up_on_data(void *ud, const uint8_t *p, size_t n, bool end_stream)
{
    router_t *r = ud;
    if (!r->resp_headers)
        return;
    activity(r, true);
    if (end_stream)
        timers_stop_all(r);
    if (dp_stream_encode_data(r->s, p, n, end_stream) < 0 || r->finished)
        return;
    if (!r->up_disabled && r->up && dp_stream_buffered(r->s) > limit_of(r)) {
        r->up_disabled = true;
        r->up->ops->read_disable(r->up, true);
    }
}

static void up_on_trailers(void *ud, dp_headers_t *t)
{
    router_t *r = ud;
    if (!r->resp_headers)
        return;
    timers_stop_all(r);
    dp_stream_encode_trailers(r->s, t);
}

static void flush_body(router_t *r);

static void up_on_drained(void *ud)
{
    router_t *r = ud;
    if (r->cursor && r->up)
        flush_body(r);
    if (r->down_disabled && r->up && r->unsent <= limit_of(r) &&
        r->up->ops->buffered(r->up) <= limit_of(r)) {
        r->down_disabled = false;
        dp_stream_read_disable(r->s, false);
    }
}

static void up_on_done(void *ud, dp_reset_reason_t why)
{
    router_t *r = ud;
    r->up = NULL;
    const dp_cluster_t *c = r->cluster;
    if (c->stats.rq_active)
        dp_gauge_dec(c->stats.rq_active);
    if (c->stats.rq_completed)
        dp_counter_inc(c->stats.rq_completed);
    rq_release(r);
    if (why == DP_RESET_NONE) {
        timer_stop(&r->t_per_try);
        return;
    }
    DP_LOG(DP_LOG_ROUTER, DP_LOG_DEBUG, "upstream stream to %s reset: %s", c->name,
           dp_reset_reason_str(why));
    if (!r->resp_headers) {
        host_result(r, 0, why);
        attempt_failed(r, why, true, false);
    } else {
        timers_stop_all(r);
        dp_stream_reset(r->s, why == DP_RESET_PROTOCOL ? DP_RF(UPE) : DP_RF(UR));
    }
}

static const dp_sink_ops_t upstream_sink = {
    .on_headers = up_on_headers,
    .on_data = up_on_data,
    .on_trailers = up_on_trailers,
    .on_drained = up_on_drained,
    .on_done = up_on_done,
};

/* ---- sending the request upstream ---- */

/* Sends the body from the cursor to the current attempt while its queue has room; sent
 * chunks are freed unless kept for a retry. Then the trailers, once the body is all out. */
static void flush_body(router_t *r)
{
    while (r->cursor && r->up && !r->finished) {
        if (r->up->ops->buffered(r->up) > limit_of(r))
            return; /* on_drained resumes */
        dp_bufq_chunk_t *ch = r->cursor;
        r->cursor = ch->next;
        r->unsent -= ch->len;
        bool last = r->cursor == NULL && r->body_end && r->trailers == NULL;
        dp_enc_t *e = r->up;
        if (!r->keep) {
            r->body.head = ch->next;
            if (r->body.head == NULL)
                r->body.tail = NULL;
            r->body.bytes -= ch->len;
        }
        int rc = e->ops->data(e, ch->data, ch->len, last);
        if (!r->keep)
            free(ch);
        if (rc < 0)
            return;
    }
    if (r->cursor == NULL && r->up && !r->finished && r->body_end && r->trailers &&
        !r->trailers_sent) {
        r->trailers_sent = true;
        r->up->ops->trailers(r->up, r->trailers);
    }
}

static void pool_on_ready(void *ud, dp_codec_conn_t *conn, const dp_addr_t *host)
{
    router_t *r = ud;
    r->wait = NULL;
    r->host = host;
    dp_stream_t *s = r->s;
    if (host) {
        s->upstream_host = *host;
        s->has_upstream_host = true;
    }
    r->up = conn->ops->new_stream(conn, &upstream_sink, r, s->pool);
    if (r->up == NULL) {
        attempt_failed(r, DP_RESET_CONN_TERMINATED, false, false);
        return;
    }
    const dp_cluster_stats_t *cs = &r->cluster->stats;
    if (cs->rq_total)
        dp_counter_inc(cs->rq_total);
    if (cs->rq_active)
        dp_gauge_inc(cs->rq_active);
    r->up_start_ms = dp_stream_now_ms(s);
    per_try_arm(r);
    bool end = r->body_end && r->cursor == NULL && r->trailers == NULL;
    if (r->up->ops->headers(r->up, s->req, end) < 0 || r->finished || r->up == NULL)
        return;
    if (end)
        return;
    flush_body(r);
    if (r->down_disabled && r->up && r->unsent <= limit_of(r) &&
        r->up->ops->buffered(r->up) <= limit_of(r)) {
        r->down_disabled = false;
        dp_stream_read_disable(s, false);
    }
}

static void pool_on_failure(void *ud, dp_reset_reason_t why, const dp_addr_t *host)
{
    router_t *r = ud;
    r->wait = NULL;
    r->host = host;
    if (host) {
        r->s->upstream_host = *host;
        r->s->has_upstream_host = true;
        host_result(r, 0, why);
    }
    attempt_failed(r, why, false, false);
}

static const dp_upstream_cb_t pool_cb = {
    .on_ready = pool_on_ready,
    .on_failure = pool_on_failure,
};

static void attempt_start(router_t *r)
{
    dp_stream_t *s = r->s;
    if (r->finished)
        return;
    if (!rq_admit(r)) {
        timers_stop_all(r);
        static const dp_header_t overloaded = {{"x-envoy-overloaded", 18}, {"true", 4}};
        dp_stream_local_reply_headers(s, 503, "upstream overflow", DP_RF(UO), &overloaded, 1);
        return;
    }
    r->attempts++;
    r->host = NULL;
    r->resp_headers = false;
    if (s->vh && s->vh->include_request_attempt_count) {
        char n[12];
        int k = snprintf(n, sizeof(n), "%u", r->attempts);
        dp_headers_set(&s->req->headers, s->pool, "x-envoy-attempt-count", 21, n, (size_t)k);
    }
    dp_lb_ctx_t lb = r->lb;
    if (r->previous_hosts && r->n_tried) {
        lb.exclude = r->tried;
        lb.n_exclude = r->n_tried;
    }
    r->wait = dp_upstream_request(s->w->up, r->cluster, r->proto, &lb, &pool_cb, r);
}

/* ---- the filter callbacks ---- */

static void reply_redirect(dp_stream_t *s, const dp_route_t *route)
{
    int status = 301;
    dp_str_t loc = dp_route_redirect(route, s->req, s->pool, &status);
    dp_http_head_t *h = dp_pool_calloc(s->pool, sizeof(*h));
    h->status = status;
    h->content_length = 0;
    dp_headers_add_ref(&h->headers, s->pool, DP_STR("location"), loc);
    dp_headers_add_ref(&h->headers, s->pool, DP_STR("content-length"), DP_STR("0"));
    s->details = "direct_response";
    dp_stream_encode_headers(s, h, true);
}

static void reply_direct(dp_stream_t *s, const dp_route_t *route)
{
    dp_http_head_t *h = dp_pool_calloc(s->pool, sizeof(*h));
    h->status = route->direct_status;
    h->content_length = -1;
    size_t blen = route->direct_body.n;
    char len[24];
    int n = snprintf(len, sizeof(len), "%zu", blen);
    dp_headers_add(&h->headers, s->pool, "content-length", 14, len, (size_t)n);
    if (blen)
        dp_headers_add_ref(&h->headers, s->pool, DP_STR("content-type"), DP_STR("text/plain"));
    if (s->route) {
        s->response_status = h->status;
        dp_route_apply_response(s->rc, s->vh, route, NULL, h, s->pool,
                                &(dp_header_fmt_t){header_value_fmt, s});
    }
    bool head = DP_STR_EQ(s->req->method, "HEAD");
    s->details = "direct_response";
    if (dp_stream_encode_headers(s, h, blen == 0 || head) == 0 && blen && !head)
        dp_stream_encode_data(s, (const uint8_t *)route->direct_body.p, blen, true);
}

/* A trusted peer's x-envoy-* header as a number (then removed: Envoy does not pass them on);
 * -1 when absent or malformed. */
static int64_t take_uint_header(dp_http_head_t *req, const char *name, size_t nlen)
{
    const dp_header_t *h = dp_headers_get(&req->headers, name, nlen);
    if (h == NULL)
        return -1;
    int64_t v = dp_router_parse_uint(h->value);
    dp_headers_remove(&req->headers, name, nlen);
    return v;
}

/* The retry policy: the route's (the vhost's is already folded into routes without one),
 * then x-envoy-retry-on / x-envoy-retry-grpc-on (added to it) and x-envoy-max-retries. */
static void retry_setup(router_t *r, const dp_route_t *route, dp_http_head_t *req)
{
    const dp_retry_policy_t *p = route->retry;
    uint32_t num = 1;
    r->backoff_interval = 25;
    r->backoff_max = 250;
    if (p) {
        r->retry_on = p->retry_on;
        r->retry_codes = p->retriable_status_codes;
        r->n_retry_codes = p->n_retriable_status_codes;
        num = p->num_retries;
        r->per_try_ms = p->per_try_timeout_ms;
        r->per_try_idle_ms = p->per_try_idle_timeout_ms;
        r->previous_hosts = p->previous_hosts;
        r->lb.host_selection_max_attempts =
            p->host_selection_retry_max_attempts > 0
                ? (uint32_t)(p->host_selection_retry_max_attempts > 100
                                 ? 100
                                 : p->host_selection_retry_max_attempts)
                : 1;
        if (p->backoff_base_ms) {
            r->backoff_interval = p->backoff_base_ms;
            r->backoff_max =
                p->backoff_max_ms >= p->backoff_base_ms ? p->backoff_max_ms : p->backoff_base_ms;
        }
    }
    const dp_header_t *h = DP_HDR_GET(&req->headers, "x-envoy-retry-on");
    if (h)
        r->retry_on |= dp_retry_on_parse(h->value.p, h->value.n) & 0xffffu;
    h = DP_HDR_GET(&req->headers, "x-envoy-retry-grpc-on");
    if (h)
        r->retry_on |= dp_retry_on_parse(h->value.p, h->value.n) & 0xffff0000u;
    DP_HDR_REMOVE(&req->headers, "x-envoy-retry-on");
    DP_HDR_REMOVE(&req->headers, "x-envoy-retry-grpc-on");
    int64_t v = take_uint_header(req, "x-envoy-max-retries", 19);
    if (v >= 0)
        num = (uint32_t)(v > 100 ? 100 : v);
    v = take_uint_header(req, "x-envoy-upstream-rq-per-try-timeout-ms", 38);
    if (v >= 0)
        r->per_try_ms = (uint64_t)v;
    r->retries_left = r->retry_on ? num : 0;
    r->keep = r->retries_left > 0;
}

/* The route timeout (Envoy's FilterUtility::finalTimeout): the route's, or for gRPC with
 * max_grpc_timeout the grpc-timeout header (less grpc_timeout_header_offset when that leaves
 * some) capped by max_grpc_timeout (0: no cap); then a trusted x-envoy-upstream-rq-timeout-ms.
 * The per-try timeout applies when shorter. */
static void timeouts_setup(router_t *r, const dp_route_t *route, dp_stream_t *s)
{
    dp_http_head_t *req = s->req;
    r->timeout_ms = route->timeout_ms;
    const dp_header_t *gt = DP_HDR_GET(&req->headers, "grpc-timeout");
    int64_t grpc_ms = gt ? dp_router_grpc_timeout_parse(gt->value) : -1;
    if (s->grpc && route->has_max_grpc_timeout) {
        uint64_t t = grpc_ms > 0 ? (uint64_t)grpc_ms : 0;
        if (route->grpc_timeout_header_offset_ms && route->grpc_timeout_header_offset_ms < t)
            t -= route->grpc_timeout_header_offset_ms;
        if (route->max_grpc_timeout_ms && (t == 0 || t > route->max_grpc_timeout_ms))
            t = route->max_grpc_timeout_ms;
        r->timeout_ms = t;
    }
    int64_t v = take_uint_header(req, "x-envoy-upstream-rq-timeout-ms", 30);
    if (v >= 0)
        r->timeout_ms = (uint64_t)v;
    /* A per-try timeout no shorter than the whole request's is none (Envoy's rule). */
    if (r->timeout_ms && r->per_try_ms >= r->timeout_ms)
        r->per_try_ms = 0;
    uint64_t expected = r->timeout_ms;
    if (r->per_try_ms && (expected == 0 || r->per_try_ms < expected))
        expected = r->per_try_ms;
    if (expected) {
        char ms[24];
        int n = (int)dp_u64_fmt(ms, expected);
        dp_headers_set(&req->headers, s->pool, "x-envoy-expected-rq-timeout-ms", 30, ms, (size_t)n);
        if (s->grpc && route->has_max_grpc_timeout) {
            char g[24];
            size_t gn = dp_router_grpc_timeout_fmt(expected, g, sizeof(g));
            if (gn)
                dp_headers_set(&req->headers, s->pool, "grpc-timeout", 12, g, gn);
        }
    }
    r->idle_ms = route->idle_timeout_ms;
    r->duration_ms = route->max_stream_duration_ms;
    if (s->grpc && route->has_grpc_timeout_header_max && grpc_ms >= 0) {
        uint64_t t = (uint64_t)grpc_ms;
        if (route->grpc_timeout_header_max_ms && (t == 0 || t > route->grpc_timeout_header_max_ms))
            t = route->grpc_timeout_header_max_ms;
        if (route->grpc_timeout_header_offset_ms && route->grpc_timeout_header_offset_ms < t)
            t -= route->grpc_timeout_header_offset_ms;
        if (t)
            r->duration_ms = t;
    }
}

static void mirrors_setup(router_t *r, const dp_route_t *route, dp_stream_t *s, bool end_stream)
{
    for (size_t i = 0; i < route->n_mirrors && r->n_mirrors < 4; i++) {
        const dp_mirror_policy_t *m = &route->mirrors[i];
        uint32_t den = m->denominator ? m->denominator : 100;
        if (m->numerator < den && dp_wctx_random(s->w) % den >= m->numerator)
            continue;
        const char *name = m->cluster;
        if (name == NULL && m->cluster_header) {
            const dp_header_t *h =
                dp_headers_get(&s->req->headers, m->cluster_header, strlen(m->cluster_header));
            if (h == NULL || h->value.n == 0 || h->value.n > 255)
                continue;
            char buf[256];
            memcpy(buf, h->value.p, h->value.n);
            buf[h->value.n] = '\0';
            const dp_cluster_t *c = dp_snapshot_find_cluster(s->snap, buf);
            if (c == NULL)
                continue;
            name = c->name;
        }
        const dp_cluster_t *c = name ? dp_snapshot_find_cluster(s->snap, name) : NULL;
        if (c == NULL)
            continue;
        dp_mirror_t *mi = dp_mirror_start(s->w->up, s->w->loop, s->snap, c, s->req,
                                          !m->disable_shadow_host_suffix_append, end_stream,
                                          r->timeout_ms ? r->timeout_ms : 15000, limit_of(r),
                                          dp_upstream_proto_for(c, s->req->version));
        if (mi && !end_stream)
            r->mirrors[r->n_mirrors++] = mi;
    }
}

static void mirrors_data(router_t *r, const uint8_t *p, size_t n, bool end_stream)
{
    for (size_t i = 0; i < r->n_mirrors; i++)
        dp_mirror_data(r->mirrors[i], p, n, end_stream);
    if (end_stream)
        r->n_mirrors = 0;
}

static dp_filter_status_t router_on_request_headers(dp_stream_t *s, void *ctx, const void *conf,
                                                    bool end_stream)
{
    router_t *r = ctx;
    r->s = s;
    const dp_hcm_stats_t *st = &s->hcm->stats;
    const dp_route_config_t *rc = s->rc;
    const dp_vhost_t *vh = s->vh;
    const dp_route_t *route = s->route;
    if (route == NULL) {
        if (st->no_route)
            dp_counter_inc(st->no_route);
        dp_stream_local_reply(s, 404, NULL, DP_RF(NR));
        return DP_FILTER_STOP;
    }
    if (route->kind == DP_ROUTE_DIRECT) {
        reply_direct(s, route);
        return DP_FILTER_STOP;
    }
    if (route->kind == DP_ROUTE_REDIRECT) {
        reply_redirect(s, route);
        return DP_FILTER_STOP;
    }
    const char *name = dp_route_cluster(route, s->req, dp_wctx_random(s->w), &r->wc);
    const dp_cluster_t *c = name ? dp_snapshot_find_cluster(s->snap, name) : NULL;
    if (c == NULL) {
        if (st->no_cluster)
            dp_counter_inc(st->no_cluster);
        dp_stream_local_reply(s, 503, NULL, DP_RF(NC));
        return DP_FILTER_STOP;
    }
    r->cluster = c;
    s->upstream_cluster = c->name;
    dp_str_t original_path = s->req->path;
    dp_route_apply_request(rc, vh, route, r->wc, s->req, s->pool,
                           &(dp_header_fmt_t){header_value_fmt, s});
    /* Envoy keeps the path a rewrite replaced in x-envoy-original-path. */
    if (s->req->path.p != original_path.p && original_path.p)
        dp_headers_set(&s->req->headers, s->pool, "x-envoy-original-path", 21, original_path.p,
                       original_path.n);
    retry_setup(r, route, s->req);
    timeouts_setup(r, route, s);
    r->proto = dp_upstream_proto_for(c, s->req->version);
    if (s->req->upgrade) {
        r->proto = DP_UPSTREAM_HTTP1; /* an HTTP/1.1 Upgrade goes upstream as one */
        r->retries_left = 0;
        r->keep = false;
    }
    r->body_end = end_stream;
    r->lb.original_dst = (const struct sockaddr *)&s->conn->local;
    if (route->n_hash)
        r->lb.has_hash = dp_router_hash(
            route->hash, route->n_hash, s->req, (const struct sockaddr *)&s->conn->remote,
            (const struct sockaddr *)&s->conn->local, s->pool, &r->lb.hash, &r->set_cookie);
    if (r->idle_ms)
        timer_arm(r, &r->t_idle, r->idle_ms, on_idle_timeout);
    if (r->duration_ms)
        timer_arm(r, &r->t_duration, r->duration_ms, on_duration_timeout);
    if (route->n_mirrors)
        mirrors_setup(r, route, s, end_stream);
    if (end_stream)
        global_timer_start(r);
    attempt_start(r);
    return DP_FILTER_STOP;
}

static void router_on_request_data(dp_stream_t *s, void *ctx, const void *conf, const uint8_t *p,
                                   size_t n, bool end_stream)
{
    router_t *r = ctx;
    if (r->finished || r->cluster == NULL)
        return;
    activity(r, false);
    if (r->n_mirrors)
        mirrors_data(r, p, n, end_stream);
    if (end_stream) {
        r->body_end = true;
        global_timer_start(r);
        per_try_arm(r);
    }
    /* Past the buffer limit the request can no longer be replayed: no more retries (Envoy's
     * per_request_buffer_limit_bytes). */
    if (r->keep && r->body.bytes + n > limit_of(r)) {
        r->keep = false;
        r->retries_left = 0;
        while (r->body.head && r->body.head != r->cursor) {
            dp_bufq_chunk_t *ch = r->body.head;
            r->body.head = ch->next;
            if (r->body.head == NULL)
                r->body.tail = NULL;
            r->body.bytes -= ch->len;
            free(ch);
        }
    }
    if (n || end_stream) {
        if (n == 0 && r->cursor == NULL && r->up) {
            /* an empty end of stream with nothing queued */
            if (r->trailers == NULL)
                r->up->ops->data(r->up, NULL, 0, true);
            return;
        }
        if (n) {
            dp_bufq_push(&r->body, p, n);
            r->unsent += n;
            if (r->cursor == NULL)
                r->cursor = r->body.tail;
        }
    }
    if (r->up)
        flush_body(r);
    if (!r->down_disabled && !r->finished &&
        (r->unsent > limit_of(r) || (r->up && r->up->ops->buffered(r->up) > limit_of(r)))) {
        r->down_disabled = true;
        dp_stream_read_disable(s, true);
    }
}

static void router_on_request_trailers(dp_stream_t *s, void *ctx, const void *conf, dp_headers_t *t)
{
    router_t *r = ctx;
    if (r->finished || r->cluster == NULL)
        return;
    activity(r, false);
    for (size_t i = 0; i < r->n_mirrors; i++)
        dp_mirror_data(r->mirrors[i], NULL, 0, true);
    r->n_mirrors = 0;
    r->body_end = true;
    r->trailers = t;
    global_timer_start(r);
    per_try_arm(r);
    if (r->up)
        flush_body(r);
}

static void router_on_downstream_drained(dp_stream_t *s, void *ctx, const void *conf)
{
    router_t *r = ctx;
    if (r->up_disabled && r->up) {
        r->up_disabled = false;
        r->up->ops->read_disable(r->up, false);
    }
}

static void router_on_stream_done(dp_stream_t *s, void *ctx, const void *conf)
{
    router_t *r = ctx;
    r->finished = true;
    timers_stop_all(r);
    if (r->cluster) {
        attempt_abort(r);
        retry_release(r);
    }
    /* Shadows still waiting for the body end with what they have. */
    for (size_t i = 0; i < r->n_mirrors; i++)
        dp_mirror_abort(r->mirrors[i]);
    r->n_mirrors = 0;
    dp_bufq_clear(&r->body);
    r->cursor = NULL;
}

const dp_http_filter_type_t dp_router_filter = {
    .name = "envoy.filters.http.router",
    .type_url = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
    .terminal = true,
    .ctx_size = sizeof(router_t),
    .on_request_headers = router_on_request_headers,
    .on_request_data = router_on_request_data,
    .on_request_trailers = router_on_request_trailers,
    .on_downstream_drained = router_on_downstream_drained,
    .on_stream_done = router_on_stream_done,
};
