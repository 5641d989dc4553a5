#include "dataplane/listener.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dataplane/log.h"

#define RELAY_BUF (16 * 1024)

typedef struct open_listener open_listener_t;
typedef struct tcp_conn tcp_conn_t;

struct dp_listeners {
    uv_loop_t *loop;
    dp_snapshot_t *snap; /* the latest applied */
    open_listener_t *open;
    tcp_conn_t *conns;
    size_t rr;  /* round-robin position over endpoints */
    size_t wrr; /* position over weighted clusters */
    int pending_closes;
    bool closing;
};

struct open_listener {
    uv_tcp_t tcp;
    dp_listeners_t *ls;
    open_listener_t *next;
    char *name;
    bool keep; /* marked during apply */
};

/* One direction of a relay. */
typedef struct relay {
    uv_tcp_t *from, *to;
    char buf[RELAY_BUF];
    uv_write_t wr;
    bool eof;
} relay_t;

struct tcp_conn {
    uv_tcp_t down, up;
    uv_timer_t idle; /* tcp_proxy idle_timeout: reset by traffic either way */
    uint64_t idle_ms;
    uv_connect_t connect;
    dp_listeners_t *ls;
    tcp_conn_t *prev, *next;
    dp_snapshot_t *snap; /* pinned for the connection's life */
    const dp_listener_t *listener; /* in snap: its stats */
    const dp_cluster_t *cluster;   /* in snap */
    bool upstream_up;
    relay_t d2u, u2d;
    int open_handles;
    bool closing;
};

dp_listeners_t *dp_listeners_new(uv_loop_t *loop)
{
    dp_listeners_t *ls = calloc(1, sizeof(*ls));
    if (ls == NULL)
        abort();
    ls->loop = loop;
    return ls;
}

static void maybe_free(dp_listeners_t *ls)
{
    if (ls->closing && ls->pending_closes == 0 && ls->conns == NULL && ls->open == NULL) {
        dp_snapshot_unref(ls->snap);
        free(ls);
    }
}

/* ---- connections ---- */

static void conn_on_close(uv_handle_t *h)
{
    tcp_conn_t *c = h->data;
    if (--c->open_handles > 0)
        return;
    dp_listeners_t *ls = c->ls;
    if (c->listener && c->listener->cx_active)
        dp_gauge_dec(c->listener->cx_active);
    if (c->upstream_up && c->cluster->cx_active)
        dp_gauge_dec(c->cluster->cx_active);
    if (c->prev)
        c->prev->next = c->next;
    else
        ls->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    dp_snapshot_unref(c->snap);
    free(c);
    maybe_free(ls);
}

static void conn_close(tcp_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->down, conn_on_close);
    uv_close((uv_handle_t *)&c->up, conn_on_close);
    uv_close((uv_handle_t *)&c->idle, conn_on_close);
}

static void relay_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    tcp_conn_t *c = h->data;
    relay_t *r = h == (uv_handle_t *)&c->down ? &c->d2u : &c->u2d;
    buf->base = r->buf;
    buf->len = sizeof(r->buf);
}

static void relay_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void relay_written(uv_write_t *w, int status)
{
    relay_t *r = w->data;
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
    if (c->d2u.eof && c->u2d.eof)
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
    /* One write in flight per direction: stop reading until it completes (back-pressure). */
    uv_read_stop(s);
    uv_buf_t out = uv_buf_init(buf->base, (unsigned)n);
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

/* The cluster of a tcp_proxy: the only one, or one of weighted_clusters in proportion to the
 * weights (spread evenly with a per-worker counter rather than at random). */
static const dp_cluster_t *pick_cluster(dp_listeners_t *ls, const dp_snapshot_t *snap,
                                        const dp_listener_t *l)
{
    if (l->n_tcp_weighted == 0 || l->tcp_total_weight == 0)
        return dp_snapshot_find_cluster(snap, l->tcp_cluster);
    uint32_t x = (uint32_t)(ls->wrr++ % l->tcp_total_weight);
    for (size_t i = 0; i < l->n_tcp_weighted; i++) {
        if (x < l->tcp_weighted[i].weight)
            return dp_snapshot_find_cluster(snap, l->tcp_weighted[i].name);
        x -= l->tcp_weighted[i].weight;
    }
    return NULL;
}

static const dp_listener_t *find_listener(const dp_snapshot_t *s, const char *name)
{
    for (size_t i = 0; s && i < s->n_listeners; i++) {
        if (strcmp(s->listeners[i].name, name) == 0)
            return &s->listeners[i];
    }
    return NULL;
}

static void on_accept(uv_stream_t *server, int status)
{
    open_listener_t *ol = server->data;
    dp_listeners_t *ls = ol->ls;
    if (status < 0)
        return;
    tcp_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->ls = ls;
    uv_tcp_init(ls->loop, &c->down);
    uv_tcp_init(ls->loop, &c->up);
    uv_timer_init(ls->loop, &c->idle);
    c->down.data = c->up.data = c->idle.data = c;
    c->open_handles = 3;
    c->next = ls->conns;
    if (ls->conns)
        ls->conns->prev = c;
    ls->conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->down) < 0) {
        conn_close(c);
        return;
    }
    c->snap = dp_snapshot_ref(ls->snap);
    const dp_listener_t *l = find_listener(c->snap, ol->name);
    c->listener = l;
    if (l && l->cx_total) {
        dp_counter_inc(l->cx_total);
        dp_gauge_inc(l->cx_active);
    }
    const dp_cluster_t *cl = l && l->tcp_cluster ? pick_cluster(ls, c->snap, l) : NULL;
    if (cl == NULL || cl->n_endpoints == 0) {
        /* No route to a healthy upstream: close, as tcp_proxy does (UH / NR). */
        conn_close(c);
        return;
    }
    c->cluster = cl;
    c->idle_ms = l->tcp_idle_timeout_ms;
    if (c->idle_ms)
        uv_timer_start(&c->idle, on_idle, c->idle_ms, c->idle_ms);
    if (cl->cx_total)
        dp_counter_inc(cl->cx_total);
    const dp_endpoint_t *ep = &cl->endpoints[ls->rr++ % cl->n_endpoints];
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

/* ---- listeners ---- */

static void listener_on_close(uv_handle_t *h)
{
    open_listener_t *ol = h->data;
    dp_listeners_t *ls = ol->ls;
    free(ol->name);
    free(ol);
    ls->pending_closes--;
    maybe_free(ls);
}

static int open_listener(dp_listeners_t *ls, const dp_listener_t *l)
{
    int family = l->addr.sa.sa_family;
    if (family != AF_INET && family != AF_INET6)
        return -EAFNOSUPPORT;
    socklen_t len = family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    /* One socket per worker on the same address: the kernel balances accepts across them. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, &l->addr.sa, len) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    open_listener_t *ol = calloc(1, sizeof(*ol));
    if (ol == NULL)
        abort();
    ol->ls = ls;
    ol->name = strdup(l->name);
    uv_tcp_init(ls->loop, &ol->tcp);
    ol->tcp.data = ol;
    int rc = uv_tcp_open(&ol->tcp, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&ol->tcp, 1024, on_accept);
    ol->next = ls->open;
    ls->open = ol;
    ol->keep = true;
    return rc;
}

void dp_listeners_apply(dp_listeners_t *ls, dp_snapshot_t *snap)
{
    if (ls->closing)
        return;
    dp_snapshot_unref(ls->snap);
    ls->snap = dp_snapshot_ref(snap);
    for (open_listener_t *ol = ls->open; ol; ol = ol->next) {
        const dp_listener_t *l = find_listener(snap, ol->name);
        ol->keep = l != NULL && !l->drained;
    }
    for (size_t i = 0; snap && i < snap->n_listeners; i++) {
        const dp_listener_t *l = &snap->listeners[i];
        if (!l->bind_to_port || l->tcp_cluster == NULL || l->drained)
            continue;
        bool have = false;
        for (open_listener_t *ol = ls->open; ol && !have; ol = ol->next)
            have = strcmp(ol->name, l->name) == 0;
        if (have)
            continue;
        int rc = open_listener(ls, l);
        if (rc < 0)
            DP_LOG(DP_LOG_CONN_HANDLER, DP_LOG_ERROR, "listener %s: cannot listen: %s", l->name,
                   uv_strerror(rc));
    }
    /* Close the listeners the snapshot dropped; their connections live on. */
    for (open_listener_t **p = &ls->open; *p;) {
        open_listener_t *ol = *p;
        if (ol->keep) {
            p = &ol->next;
            continue;
        }
        *p = ol->next;
        ls->pending_closes++;
        uv_close((uv_handle_t *)&ol->tcp, listener_on_close);
    }
}

void dp_listeners_close(dp_listeners_t *ls)
{
    if (ls == NULL)
        return;
    ls->closing = true;
    while (ls->open) {
        open_listener_t *ol = ls->open;
        ls->open = ol->next;
        ls->pending_closes++;
        uv_close((uv_handle_t *)&ol->tcp, listener_on_close);
    }
    for (tcp_conn_t *c = ls->conns; c; c = c->next)
        conn_close(c);
    maybe_free(ls);
}
