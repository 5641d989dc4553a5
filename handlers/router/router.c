#include "handlers/router/router.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/log.h"
#include "dataplane/route.h"
#include "dataplane/upstream.h"

typedef struct router router_t;

/* The route timeout's timer lives apart from the stream, so that the stream can end while
 * the timer's close is still pending. */
typedef struct router_timer {
    uv_timer_t t;
    router_t *r;
} router_timer_t;

struct router {
    dp_stream_t *s;
    const dp_cluster_t *cluster;
    const dp_route_weighted_t *wc;
    dp_upstream_wait_t *wait;
    dp_enc_t *up; /* the upstream stream, once open */
    dp_bufq_t body; /* request body that arrived before the upstream stream was open */
    bool body_end;
    dp_headers_t *trailers; /* request trailers held likewise */
    bool resp_headers;      /* the final upstream response head has arrived */
    bool finished;          /* on_stream_done ran: touch nothing of the stream */
    bool down_disabled;     /* we are holding the downstream back */
    bool up_disabled;       /* we are holding the upstream back */
    router_timer_t *timer;
    uint64_t up_start_ms;
    uint64_t timeout_ms;
};

static const dp_sink_ops_t upstream_sink;

static uint32_t limit_of(const router_t *r)
{
    return r->s->hcm->limits.buffer_limit;
}

/* ---- the route timeout ---- */

static void timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void timer_stop(router_t *r)
{
    if (r->timer == NULL)
        return;
    r->timer->r = NULL;
    r->timer->t.data = r->timer;
    uv_close((uv_handle_t *)&r->timer->t, timer_closed);
    r->timer = NULL;
}

static void upstream_abort(router_t *r)
{
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
}

static void on_timeout(uv_timer_t *t)
{
    router_timer_t *rt = (router_timer_t *)t;
    router_t *r = rt->r;
    if (r == NULL)
        return;
    timer_stop(r);
    const dp_cluster_t *c = r->cluster;
    if (c && c->stats.rq_timeout)
        dp_counter_inc(c->stats.rq_timeout);
    upstream_abort(r);
    /* Before the response started: 504 UT; after, the stream is reset (in local_reply). */
    dp_stream_local_reply(r->s, 504, "upstream request timeout", DP_RF(UT));
}

/* The route timeout runs from the end of the downstream request (Envoy's semantics). */
static void timer_start(router_t *r)
{
    if (r->timeout_ms == 0 || r->timer || r->finished || r->s->response_started)
        return;
    router_timer_t *rt = malloc(sizeof(*rt));
    if (rt == NULL)
        abort();
    uv_timer_init(r->s->w->loop, &rt->t);
    rt->r = r;
    r->timer = rt;
    uv_timer_start(&rt->t, on_timeout, r->timeout_ms, 0);
}

/* ---- failures before a response ---- */

static void fail_before_headers(router_t *r, dp_reset_reason_t why)
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
        flag = DP_RF(UR);
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
             "upstream connect error or disconnect/reset before headers. reset reason: %s",
             reason);
    timer_stop(r);
    if (why == DP_RESET_OVERFLOW) {
        static const dp_header_t overloaded = {{"x-envoy-overloaded", 18}, {"true", 4}};
        dp_stream_local_reply_headers(r->s, 503, body, flag, &overloaded, 1);
        return;
    }
    dp_stream_local_reply(r->s, 503, body, flag);
}

/* ---- the upstream stream's events ---- */

static void up_on_headers(void *ud, dp_http_head_t *h, bool end_stream)
{
    router_t *r = ud;
    if (h->status < 200 && h->status != 101)
        return; /* 100 Continue and the like: the downstream codec handles its own */
    r->resp_headers = true;
    dp_stream_t *s = r->s;
    if (s->route)
        dp_route_apply_response(s->rc, s->vh, s->route, r->wc, h, s->pool);
    /* Envoy's x-envoy-upstream-service-time: ms from sending upstream to the response head. */
    char ms[24];
    int n = snprintf(ms, sizeof(ms), "%llu",
                     (unsigned long long)(dp_stream_now_ms(s) - r->up_start_ms));
    dp_headers_add(&h->headers, s->pool, "x-envoy-upstream-service-time", 29, ms, (size_t)n);
    const dp_cluster_stats_t *cs = &r->cluster->stats;
    dp_counter_t *xx[] = {NULL, NULL, cs->rq_2xx, cs->rq_3xx, cs->rq_4xx, cs->rq_5xx};
    int k = h->status / 100;
    if (k >= 2 && k <= 5 && xx[k])
        dp_counter_inc(xx[k]);
    dp_counter_t *code = dp_code_counter(cs->rq_code, h->status);
    if (code)
        dp_counter_inc(code);
    if (end_stream)
        timer_stop(r);
    dp_stream_encode_headers(s, h, end_stream);
}

static void up_on_data(void *ud, const uint8_t *p, size_t n, bool end_stream)
{
    router_t *r = ud;
    if (end_stream)
        timer_stop(r);
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
    timer_stop(r);
    dp_stream_encode_trailers(r->s, t);
}

static void up_on_drained(void *ud)
{
    router_t *r = ud;
    if (r->down_disabled) {
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
    if (why == DP_RESET_NONE)
        return;
    DP_LOG(DP_LOG_ROUTER, DP_LOG_DEBUG, "upstream stream to %s reset: %s", c->name,
           dp_reset_reason_str(why));
    if (!r->resp_headers)
        fail_before_headers(r, why);
    else
        dp_stream_reset(r->s, DP_RF(UR));
}

static const dp_sink_ops_t upstream_sink = {
    .on_headers = up_on_headers,
    .on_data = up_on_data,
    .on_trailers = up_on_trailers,
    .on_drained = up_on_drained,
    .on_done = up_on_done,
};

/* ---- sending the request upstream ---- */

static void send_data(router_t *r, const uint8_t *p, size_t n, bool end_stream)
{
    if (r->up->ops->data(r->up, p, n, end_stream) < 0 || r->finished || r->up == NULL)
        return;
    if (!r->down_disabled && r->up->ops->buffered(r->up) > limit_of(r)) {
        r->down_disabled = true;
        dp_stream_read_disable(r->s, true);
    }
}

static void pool_on_ready(void *ud, dp_codec_conn_t *conn, const dp_addr_t *host)
{
    router_t *r = ud;
    r->wait = NULL;
    dp_stream_t *s = r->s;
    r->up = conn->ops->new_stream(conn, &upstream_sink, r, s->pool);
    if (r->up == NULL) {
        fail_before_headers(r, DP_RESET_CONN_TERMINATED);
        return;
    }
    const dp_cluster_stats_t *cs = &r->cluster->stats;
    if (cs->rq_total)
        dp_counter_inc(cs->rq_total);
    if (cs->rq_active)
        dp_gauge_inc(cs->rq_active);
    r->up_start_ms = dp_stream_now_ms(s);
    bool end = s->request_ended && r->body.bytes == 0 && r->trailers == NULL && r->body_end;
    if (s->request_ended && r->body.head == NULL && r->trailers == NULL)
        end = true;
    if (r->up->ops->headers(r->up, s->req, end) < 0 || r->finished || r->up == NULL)
        return;
    /* What arrived while the connection was being found. */
    while (r->body.head && r->up && !r->finished) {
        dp_bufq_chunk_t *ch = r->body.head;
        r->body.head = ch->next;
        if (r->body.head == NULL)
            r->body.tail = NULL;
        r->body.bytes -= ch->len;
        bool last = r->body.head == NULL && r->body_end && r->trailers == NULL;
        send_data(r, ch->data, ch->len, last);
        free(ch);
    }
    if (r->finished || r->up == NULL)
        return;
    if (r->trailers) {
        dp_headers_t *t = r->trailers;
        r->trailers = NULL;
        r->up->ops->trailers(r->up, t);
    }
    if (r->down_disabled && r->up && r->up->ops->buffered(r->up) <= limit_of(r)) {
        r->down_disabled = false;
        dp_stream_read_disable(s, false);
    }
}

static void pool_on_failure(void *ud, dp_reset_reason_t why, const dp_addr_t *host)
{
    router_t *r = ud;
    r->wait = NULL;
    if (why == DP_RESET_NO_HEALTHY_HOST) {
        timer_stop(r);
        dp_stream_local_reply(r->s, 503, "no healthy upstream", DP_RF(UH));
        return;
    }
    fail_before_headers(r, why);
}

static const dp_upstream_cb_t pool_cb = {
    .on_ready = pool_on_ready,
    .on_failure = pool_on_failure,
};

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
    if (s->route)
        dp_route_apply_response(s->rc, s->vh, route, NULL, h, s->pool);
    bool head = DP_STR_EQ(s->req->method, "HEAD");
    if (dp_stream_encode_headers(s, h, blen == 0 || head) == 0 && blen && !head)
        dp_stream_encode_data(s, (const uint8_t *)route->direct_body.p, blen, true);
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
    dp_str_t original_path = s->req->path;
    dp_route_apply_request(rc, vh, route, r->wc, s->req, s->pool);
    /* Envoy keeps the path a rewrite replaced in x-envoy-original-path. */
    if (s->req->path.p != original_path.p && original_path.p)
        dp_headers_set(&s->req->headers, s->pool, "x-envoy-original-path", 21, original_path.p,
                       original_path.n);
    r->timeout_ms = route->timeout_ms;
    /* A trusted peer may set the timeout (the connection manager removed x-envoy-* headers of
     * untrusted ones); Envoy does not pass the header on. */
    const dp_header_t *th = DP_HDR_GET(&s->req->headers, "x-envoy-upstream-rq-timeout-ms");
    if (th) {
        uint64_t v = 0;
        bool ok = th->value.n > 0 && th->value.n < 16;
        for (size_t i = 0; ok && i < th->value.n; i++) {
            ok = th->value.p[i] >= '0' && th->value.p[i] <= '9';
            v = v * 10 + (uint64_t)(th->value.p[i] - '0');
        }
        if (ok)
            r->timeout_ms = v;
        DP_HDR_REMOVE(&s->req->headers, "x-envoy-upstream-rq-timeout-ms");
    }
    if (r->timeout_ms) {
        char ms[24];
        int n = snprintf(ms, sizeof(ms), "%llu", (unsigned long long)r->timeout_ms);
        dp_headers_set(&s->req->headers, s->pool, "x-envoy-expected-rq-timeout-ms", 30, ms,
                       (size_t)n);
    }
    if (vh && vh->include_request_attempt_count)
        dp_headers_set(&s->req->headers, s->pool, "x-envoy-attempt-count", 21, "1", 1);
    dp_upstream_proto_t proto = dp_upstream_proto_for(c, s->req->version);
    if (s->req->upgrade)
        proto = DP_UPSTREAM_HTTP1; /* an HTTP/1.1 Upgrade goes upstream as one */
    r->body_end = end_stream;
    dp_lb_ctx_t lb = {.original_dst = (const struct sockaddr *)&s->conn->local};
    if (end_stream)
        timer_start(r);
    r->wait = dp_upstream_request(s->w->up, c, proto, &lb, &pool_cb, r);
    return DP_FILTER_STOP;
}

static void router_on_request_data(dp_stream_t *s, void *ctx, const void *conf, const uint8_t *p,
                                   size_t n, bool end_stream)
{
    router_t *r = ctx;
    if (r->finished || r->cluster == NULL)
        return;
    if (end_stream) {
        r->body_end = true;
        timer_start(r);
    }
    if (r->up) {
        send_data(r, p, n, end_stream);
        return;
    }
    dp_bufq_push(&r->body, p, n);
    if (!r->down_disabled && r->body.bytes > limit_of(r)) {
        r->down_disabled = true;
        dp_stream_read_disable(s, true);
    }
}

static void router_on_request_trailers(dp_stream_t *s, void *ctx, const void *conf,
                                       dp_headers_t *t)
{
    router_t *r = ctx;
    if (r->finished || r->cluster == NULL)
        return;
    r->body_end = true;
    timer_start(r);
    if (r->up)
        r->up->ops->trailers(r->up, t);
    else
        r->trailers = t;
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
    timer_stop(r);
    upstream_abort(r);
    dp_bufq_clear(&r->body);
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
