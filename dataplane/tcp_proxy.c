/* tcp_proxy (envoy.filters.network.tcp_proxy): relays an accepted connection to an endpoint of
 * its chain's cluster. Bytes go both ways with one fixed buffer per direction, and reading is
 * paused while a write is in flight (back-pressure, no allocation per read). A half-close is
 * passed on; the connection ends when both directions have. Upstream hosts are chosen round
 * robin over the cluster's endpoints; weighted_clusters are split by weight with the worker's
 * counter. Worker thread. */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dataplane/access_log.h"
#include "dataplane/conn.h"
#include "dataplane/filter_chain.h"
#include "dataplane/log.h"
#include "dataplane/stream.h"

#define RELAY_BUF (16 * 1024)

typedef struct tcp_conn tcp_conn_t;

/* One direction of a relay. */
typedef struct relay {
    uv_tcp_t *from, *to;
    char buf[RELAY_BUF];
    uv_write_t wr;
    bool eof;
} relay_t;

struct tcp_conn {
    dp_conn_link_t link;
    dp_wctx_t *w;
    uv_tcp_t down, up;
    uv_timer_t idle; /* tcp_proxy idle_timeout: reset by traffic either way */
    uint64_t idle_ms;
    uv_connect_t connect;
    dp_snapshot_t *snap;           /* pinned for the connection's life */
    const dp_listener_t *listener; /* in snap: its stats */
    const dp_cluster_t *cluster;   /* in snap */
    bool upstream_up;
    relay_t d2u, u2d;
    int open_handles;
    bool closing;
    /* The access log's view of the connection (no request: the HTTP operators print "-"). */
    const dp_tcp_proxy_t *tp; /* in snap */
    dp_accepted_t a;
    dp_stream_t info;
};

static void conn_on_close(uv_handle_t *h)
{
    tcp_conn_t *c = h->data;
    if (--c->open_handles > 0)
        return;
    if (c->listener && c->listener->cx_active)
        dp_gauge_dec(c->listener->cx_active);
    dp_accepted_release(&c->a);
    if (c->upstream_up && c->cluster->cx_active)
        dp_gauge_dec(c->cluster->cx_active);
    dp_wctx_unlink(c->w, &c->link);
    dp_snapshot_unref(c->snap);
    free(c);
}

static void conn_close(tcp_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->tp && c->tp->n_access_logs)
        dp_access_log_write(c->tp->access_logs, c->tp->n_access_logs, &c->info, uv_now(c->w->loop));
    uv_close((uv_handle_t *)&c->down, conn_on_close);
    uv_close((uv_handle_t *)&c->up, conn_on_close);
    uv_close((uv_handle_t *)&c->idle, conn_on_close);
}

static void link_close(dp_conn_link_t *l)
{
    conn_close((tcp_conn_t *)((char *)l - offsetof(tcp_conn_t, link)));
}

static void relay_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    tcp_conn_t *c = h->data;
    relay_t *r = h == (uv_handle_t *)&c->down ? &c->d2u : &c->u2d;
    buf->base = r->buf;
    buf->len = sizeof(r->buf);
}

static void relay_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void relay_written(uv_write_t *wr, int status)
{
    relay_t *r = wr->data;
    tcp_conn_t *c = r->from->data;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    /* The buffer is free again: read on. */
    uv_read_start((uv_stream_t *)r->from, relay_alloc, relay_read);
}

static void shutdown_done(uv_shutdown_t *req, int status)
{
    tcp_conn_t *c = req->data;
    free(req);
    if (!c->closing && c->d2u.eof && c->u2d.eof)
        conn_close(c);
}

static void relay_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    tcp_conn_t *c = s->data;
    relay_t *r = s == (uv_stream_t *)&c->down ? &c->d2u : &c->u2d;
    if (n == 0)
        return;
    if (n == UV_EOF) {
        /* Half-close: pass the FIN on, close when both sides are done. */
        r->eof = true;
        uv_read_stop(s);
        uv_shutdown_t *req = malloc(sizeof(*req));
        if (req == NULL || uv_shutdown(req, (uv_stream_t *)r->to, shutdown_done) < 0) {
            free(req);
            conn_close(c);
            return;
        }
        req->data = c;
        return;
    }
    if (n < 0) {
        conn_close(c);
        return;
    }
    if (c->idle_ms)
        uv_timer_again(&c->idle);
    if (r == &c->d2u)
        c->info.bytes_received += (uint64_t)n;
    else
        c->info.bytes_sent += (uint64_t)n;
    /* What the other side takes at once goes on without a write request, and reading goes on
     * (no poll change). The rest is one write in flight per direction: reading stops until it
     * completes (back-pressure), and the buffer holds it meanwhile. */
    uv_buf_t out = uv_buf_init(buf->base, (unsigned)n);
    int done = dp_try_send((uv_stream_t *)r->to, buf->base, n);
    if (done == (int)n)
        return;
    if (done < 0 && done != UV_EAGAIN) {
        conn_close(c);
        return;
    }
    if (done > 0) {
        out.base += done;
        out.len -= (unsigned)done;
    }
    uv_read_stop(s);
    r->wr.data = r;
    if (uv_write(&r->wr, (uv_stream_t *)r->to, &out, 1, relay_written) < 0)
        conn_close(c);
}

static void on_upstream_connected(uv_connect_t *req, int status)
{
    tcp_conn_t *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        DP_LOG(DP_LOG_UPSTREAM, DP_LOG_DEBUG, "tcp_proxy: upstream connect failed: %s",
               uv_strerror(status));
        if (c->cluster->cx_connect_fail)
            dp_counter_inc(c->cluster->cx_connect_fail);
        c->info.response_flags |= DP_RF(UF);
        conn_close(c);
        return;
    }
    c->upstream_up = true;
    if (c->cluster->cx_active)
        dp_gauge_inc(c->cluster->cx_active);
    c->d2u.from = &c->down;
    c->d2u.to = &c->up;
    c->u2d.from = &c->up;
    c->u2d.to = &c->down;
    uv_read_start((uv_stream_t *)&c->down, relay_alloc, relay_read);
    uv_read_start((uv_stream_t *)&c->up, relay_alloc, relay_read);
}

static void on_idle(uv_timer_t *t)
{
    tcp_conn_t *c = t->data;
    DP_LOG(DP_LOG_CONNECTION, DP_LOG_DEBUG, "tcp_proxy: idle timeout");
    conn_close(c);
}

/* The cluster (the only one, or one of weighted_clusters in proportion to the weights,
 * spread evenly with the worker's counter) and the endpoint, round robin with the same
 * counter: x picks the cluster by x mod the total weight and the endpoint by the quotient. */
static const dp_cluster_t *pick(dp_wctx_t *w, const dp_snapshot_t *snap, const dp_tcp_proxy_t *tp,
                                const dp_endpoint_t **ep)
{
    uint64_t x = w->rr++;
    const dp_cluster_t *cl = NULL;
    if (tp->n_weighted == 0 || tp->total_weight == 0) {
        cl = dp_snapshot_find_cluster(snap, tp->cluster);
    } else {
        uint32_t y = (uint32_t)(x % tp->total_weight);
        x /= tp->total_weight;
        for (size_t i = 0; i < tp->n_weighted && cl == NULL; i++) {
            if (y < tp->weighted[i].weight)
                cl = dp_snapshot_find_cluster(snap, tp->weighted[i].name);
            else
                y -= tp->weighted[i].weight;
        }
    }
    if (cl == NULL || cl->n_endpoints == 0)
        return cl;
    *ep = &cl->endpoints[x % cl->n_endpoints];
    return cl;
}

void dp_tcp_proxy_start(dp_wctx_t *w, dp_accepted_t *a)
{
    const dp_tcp_proxy_t *tp = a->chain ? a->chain->tcp : NULL;
    tcp_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->w = w;
    c->snap = a->snap;
    c->listener = a->listener;
    c->tp = tp;
    c->a = *a;
    c->info.conn = &c->a;
    c->info.w = w;
    c->info.snap = a->snap;
    c->info.start_ms = uv_now(w->loop);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    c->info.start_wall_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    uv_tcp_init(w->loop, &c->down);
    uv_tcp_init(w->loop, &c->up);
    uv_timer_init(w->loop, &c->idle);
    c->down.data = c->up.data = c->idle.data = c;
    c->open_handles = 3;
    c->link.close = link_close;
    dp_wctx_link(w, &c->link);
    if (uv_tcp_open(&c->down, a->fd) < 0) {
        close(a->fd);
        conn_close(c);
        return;
    }
    const dp_endpoint_t *ep = NULL;
    const dp_cluster_t *cl = tp ? pick(w, c->snap, tp, &ep) : NULL;
    if (cl == NULL || ep == NULL) {
        /* No route to an upstream: close, as tcp_proxy does (UH / NR). */
        DP_LOG(DP_LOG_CONNECTION, DP_LOG_DEBUG, "tcp_proxy: no upstream for %s",
               tp && tp->cluster ? tp->cluster : "(none)");
        if (cl)
            c->info.upstream_cluster = cl->name;
        c->info.response_flags |= cl ? DP_RF(UH) : DP_RF(NC);
        conn_close(c);
        return;
    }
    c->cluster = cl;
    c->info.upstream_cluster = cl->name;
    c->info.upstream_host = ep->addr;
    c->info.has_upstream_host = true;
    c->idle_ms = tp->idle_timeout_ms;
    if (c->idle_ms)
        uv_timer_start(&c->idle, on_idle, c->idle_ms, c->idle_ms);
    if (cl->cx_total)
        dp_counter_inc(cl->cx_total);
    if (ep->addr.sa.sa_family != AF_INET && ep->addr.sa.sa_family != AF_INET6) {
        conn_close(c);
        return;
    }
    c->connect.data = c;
    uv_tcp_nodelay(&c->down, 1);
    uv_tcp_nodelay(&c->up, 1);
    if (uv_tcp_connect(&c->connect, &c->up, &ep->addr.sa, on_upstream_connected) < 0)
        conn_close(c);
}
