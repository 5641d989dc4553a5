#include "handlers/router/mirror.h"

#include <stdlib.h>
#include <string.h>

#include "dataplane/log.h"

struct dp_mirror {
    dp_upstreams_t *u;
    dp_snapshot_t *snap;
    const dp_cluster_t *c;
    dp_pool_t *pool;
    dp_http_head_t *head;
    dp_upstream_wait_t *wait;
    dp_enc_t *up;
    dp_bufq_t body; /* not yet sent */
    uint32_t limit;
    bool body_end;
    bool attached; /* the router still feeds it */
    bool over;     /* the shadow's upstream side has ended (or was given up) */
    bool closing;
    uv_timer_t timer;
};

static void mirror_closed(uv_handle_t *h)
{
    dp_mirror_t *m = h->data;
    dp_bufq_clear(&m->body);
    dp_pool_free(m->pool);
    dp_snapshot_unref(m->snap);
    free(m);
}

/* Frees m once neither the router nor the upstream side needs it. */
static void mirror_maybe_free(dp_mirror_t *m)
{
    if (m->attached || !m->over || m->closing)
        return;
    m->closing = true;
    /* A worker that stops closes every handle it still has: then m stays (the process is
     * ending) rather than the handle being closed twice. */
    if (uv_is_closing((uv_handle_t *)&m->timer))
        return;
    uv_timer_stop(&m->timer);
    uv_close((uv_handle_t *)&m->timer, mirror_closed);
}

/* Gives up the upstream side. */
static void mirror_stop(dp_mirror_t *m)
{
    if (m->wait) {
        dp_upstream_cancel(m->wait);
        m->wait = NULL;
    }
    if (m->up) {
        dp_enc_t *e = m->up;
        m->up = NULL;
        if (m->c->stats.rq_active)
            dp_gauge_dec(m->c->stats.rq_active);
        e->ops->reset(e, DP_RESET_LOCAL);
    }
    m->over = true;
    dp_bufq_clear(&m->body);
}

static void on_timer(uv_timer_t *t)
{
    dp_mirror_t *m = t->data;
    DP_LOG(DP_LOG_ROUTER, DP_LOG_DEBUG, "shadow request to %s timed out", m->c->name);
    mirror_stop(m);
    mirror_maybe_free(m);
}

static void flush(dp_mirror_t *m)
{
    while (m->body.head && m->up) {
        if (m->up->ops->buffered(m->up) > m->limit) {
            /* A shadow never holds the main request back: a slow one is dropped. */
            mirror_stop(m);
            return;
        }
        dp_bufq_chunk_t *ch = m->body.head;
        m->body.head = ch->next;
        if (m->body.head == NULL)
            m->body.tail = NULL;
        m->body.bytes -= ch->len;
        bool last = m->body.head == NULL && m->body_end;
        dp_enc_t *e = m->up;
        int rc = e->ops->data(e, ch->data, ch->len, last);
        free(ch);
        if (rc < 0)
            return;
    }
}

static void up_headers(void *ud, dp_http_head_t *h, bool end_stream)
{
    (void)ud, (void)h, (void)end_stream;
}

static void up_data(void *ud, const uint8_t *p, size_t n, bool end_stream)
{
    (void)ud, (void)p, (void)n, (void)end_stream;
}

static void up_trailers(void *ud, dp_headers_t *t)
{
    (void)ud, (void)t;
}

static void up_drained(void *ud)
{
    dp_mirror_t *m = ud;
    flush(m);
}

static void up_done(void *ud, dp_reset_reason_t why)
{
    dp_mirror_t *m = ud;
    m->up = NULL;
    if (m->c->stats.rq_active)
        dp_gauge_dec(m->c->stats.rq_active);
    if (m->c->stats.rq_completed)
        dp_counter_inc(m->c->stats.rq_completed);
    (void)why;
    m->over = true;
    dp_bufq_clear(&m->body);
    mirror_maybe_free(m);
}

static const dp_sink_ops_t mirror_sink = {
    .on_headers = up_headers,
    .on_data = up_data,
    .on_trailers = up_trailers,
    .on_drained = up_drained,
    .on_done = up_done,
};

static void pool_ready(void *ud, dp_codec_conn_t *conn, const dp_addr_t *host)
{
    dp_mirror_t *m = ud;
    (void)host;
    m->wait = NULL;
    m->up = conn->ops->new_stream(conn, &mirror_sink, m, m->pool);
    if (m->up == NULL) {
        m->over = true;
        mirror_maybe_free(m);
        return;
    }
    if (m->c->stats.rq_total)
        dp_counter_inc(m->c->stats.rq_total);
    if (m->c->stats.rq_active)
        dp_gauge_inc(m->c->stats.rq_active);
    bool end = m->body_end && m->body.head == NULL;
    if (m->up->ops->headers(m->up, m->head, end) < 0 || m->up == NULL)
        return;
    if (!end && m->body_end && m->body.head == NULL)
        m->up->ops->data(m->up, NULL, 0, true);
    flush(m);
}

static void pool_failure(void *ud, dp_reset_reason_t why, const dp_addr_t *host)
{
    dp_mirror_t *m = ud;
    (void)host;
    m->wait = NULL;
    DP_LOG(DP_LOG_ROUTER, DP_LOG_DEBUG, "shadow request to %s failed: %s", m->c->name,
           dp_reset_reason_str(why));
    m->over = true;
    dp_bufq_clear(&m->body);
    mirror_maybe_free(m);
}

static const dp_upstream_cb_t mirror_pool_cb = {
    .on_ready = pool_ready,
    .on_failure = pool_failure,
};

static dp_str_t copy_str(dp_pool_t *pool, dp_str_t s)
{
    if (s.p == NULL)
        return s;
    return (dp_str_t){dp_pool_strndup(pool, s.p, s.n), s.n};
}

dp_mirror_t *dp_mirror_start(dp_upstreams_t *u, uv_loop_t *loop, dp_snapshot_t *snap,
                             const dp_cluster_t *c, const dp_http_head_t *req, bool shadow_suffix,
                             bool end_stream, uint64_t timeout_ms, uint32_t body_limit,
                             dp_upstream_proto_t proto)
{
    dp_mirror_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        abort();
    m->u = u;
    m->snap = dp_snapshot_ref(snap);
    m->c = c;
    m->pool = dp_pool_new();
    m->limit = body_limit;
    m->body_end = end_stream;
    m->attached = !end_stream;
    dp_http_head_t *h = dp_pool_calloc(m->pool, sizeof(*h));
    h->method = copy_str(m->pool, req->method);
    h->scheme = copy_str(m->pool, req->scheme);
    h->path = copy_str(m->pool, req->path);
    h->protocol = copy_str(m->pool, req->protocol);
    h->version = req->version;
    h->content_length = req->content_length;
    if (shadow_suffix && req->authority.p) {
        size_t n = req->authority.n + 7;
        char *a = dp_pool_alloc(m->pool, n + 1);
        memcpy(a, req->authority.p, req->authority.n);
        memcpy(a + req->authority.n, "-shadow", 8);
        h->authority = (dp_str_t){a, n};
    } else {
        h->authority = copy_str(m->pool, req->authority);
    }
    for (uint32_t i = 0; i < req->headers.n; i++) {
        const dp_header_t *e = &req->headers.v[i];
        dp_headers_add(&h->headers, m->pool, e->name.p, e->name.n, e->value.p ? e->value.p : "",
                       e->value.n);
    }
    m->head = h;
    uv_timer_init(loop, &m->timer);
    m->timer.data = m;
    uv_timer_start(&m->timer, on_timer, timeout_ms, 0);
    dp_lb_ctx_t lb = {0};
    dp_upstream_wait_t *w = dp_upstream_request(u, c, proto, &lb, &mirror_pool_cb, m);
    if (!m->over)
        m->wait = w;
    if (end_stream) {
        mirror_maybe_free(m);
        return NULL;
    }
    return m;
}

void dp_mirror_data(dp_mirror_t *m, const uint8_t *p, size_t n, bool end_stream)
{
    if (end_stream)
        m->attached = false;
    if (!m->over) {
        if (end_stream)
            m->body_end = true;
        if (n && m->body.bytes + n > m->limit) {
            mirror_stop(m);
        } else {
            if (n)
                dp_bufq_push(&m->body, p, n);
            if (m->up) {
                if (n == 0 && end_stream && m->body.head == NULL)
                    m->up->ops->data(m->up, NULL, 0, true);
                else
                    flush(m);
            }
        }
    }
    mirror_maybe_free(m);
}

void dp_mirror_abort(dp_mirror_t *m)
{
    m->attached = false;
    if (!m->body_end)
        mirror_stop(m);
    mirror_maybe_free(m);
}
