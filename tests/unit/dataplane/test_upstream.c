/* Upstream pools (dataplane/upstream.h) against real sockets on 127.0.0.1: host choice
 * (weighted round robin, health, priority failover), connection reuse, the pending queue and
 * its overflow, connect failure and timeout, the source address, STRICT_DNS, ORIGINAL_DST, the
 * idle timeout, draining on a snapshot change, HTTP/2-style multiplexing and
 * max_requests_per_connection; the circuit breakers shared by every worker
 * (dataplane/breaker.h), outlier detection (dataplane/outlier.h) and TCP keepalive.
 *
 * The pools take their codecs as constructors; these tests give them a small line codec: a
 * request stream writes "Q <id>\n", the server answers "R <id>\n", and that completes the
 * stream. tc_h1_new allows one stream at a time, tc_h2_new two. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>

#include "dataplane/breaker.h"
#include "dataplane/outlier.h"
#include "dataplane/upstream.h"
#include "tests/unit/check_run.h"

static uv_loop_t loop;

/* ---- the test codec ---- */

#define TC_MAX_STREAMS 4

typedef struct tc_conn tc_conn_t;

typedef struct tc_stream {
    dp_enc_t enc;
    tc_conn_t *c;
    const dp_sink_ops_t *ops;
    void *ud;
    dp_pool_t *pool;
    uint32_t id;
    bool used;
} tc_stream_t;

struct tc_conn {
    dp_codec_conn_t base;
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    };
    const dp_codec_cb_t *cb;
    void *ud;
    uint32_t max_streams, active, next_id;
    tc_stream_t streams[TC_MAX_STREAMS];
    bool goaway, closing;
    char rbuf[512];
    size_t rlen;
    dp_reset_reason_t why;
};

static void tc_closed(uv_handle_t *h)
{
    tc_conn_t *c = h->data;
    c->cb->on_close(c->ud, &c->base, c->why);
    free(c);
}

static void tc_close_why(tc_conn_t *c, dp_reset_reason_t why)
{
    if (c->closing)
        return;
    c->closing = true;
    c->why = why;
    for (uint32_t i = 0; i < TC_MAX_STREAMS; i++) {
        tc_stream_t *s = &c->streams[i];
        if (s->used) {
            s->used = false;
            c->active--;
            s->ops->on_done(s->ud, DP_RESET_CONN_TERMINATED);
        }
    }
    uv_close((uv_handle_t *)&c->tcp, tc_closed);
}

static void tc_written(uv_write_t *w, int status)
{
    free(w->data);
    free(w);
}

static int tc_headers(dp_enc_t *e, const dp_http_head_t *h, bool end_stream)
{
    tc_stream_t *s = (tc_stream_t *)e;
    char *line = malloc(32);
    int n = snprintf(line, 32, "Q %u\n", s->id);
    uv_write_t *w = malloc(sizeof(*w));
    w->data = line;
    uv_buf_t b = uv_buf_init(line, (unsigned)n);
    if (uv_write(w, (uv_stream_t *)&s->c->tcp, &b, 1, tc_written) < 0) {
        free(line);
        free(w);
        return -EPIPE;
    }
    return 0;
}

static int tc_data(dp_enc_t *e, const uint8_t *p, size_t n, bool end_stream)
{
    return 0;
}

static int tc_trailers(dp_enc_t *e, const dp_headers_t *t)
{
    return 0;
}

static void tc_reset(dp_enc_t *e, dp_reset_reason_t why)
{
    tc_stream_t *s = (tc_stream_t *)e;
    s->used = false;
    s->c->active--;
    tc_close_why(s->c, DP_RESET_LOCAL);
}

static void tc_read_disable(dp_enc_t *e, bool disable)
{
}

static size_t tc_buffered(const dp_enc_t *e)
{
    return 0;
}

static const dp_enc_ops_t tc_enc_ops = {tc_headers, tc_data,         tc_trailers,
                                        tc_reset,   tc_read_disable, tc_buffered};

static bool tc_can_take(const dp_codec_conn_t *cc)
{
    const tc_conn_t *c = (const tc_conn_t *)cc;
    return !c->goaway && !c->closing && c->active < c->max_streams;
}

static dp_enc_t *tc_new_stream(dp_codec_conn_t *cc, const dp_sink_ops_t *ops, void *ud,
                               dp_pool_t *pool)
{
    tc_conn_t *c = (tc_conn_t *)cc;
    if (!tc_can_take(cc))
        return NULL;
    for (uint32_t i = 0; i < TC_MAX_STREAMS; i++) {
        tc_stream_t *s = &c->streams[i];
        if (s->used)
            continue;
        *s = (tc_stream_t){.enc.ops = &tc_enc_ops,
                           .c = c,
                           .ops = ops,
                           .ud = ud,
                           .pool = pool,
                           .id = ++c->next_id,
                           .used = true};
        c->active++;
        return &s->enc;
    }
    return NULL;
}

static uint32_t tc_active(const dp_codec_conn_t *cc)
{
    return ((const tc_conn_t *)cc)->active;
}

static void tc_go_away(dp_codec_conn_t *cc)
{
    tc_conn_t *c = (tc_conn_t *)cc;
    c->goaway = true;
    if (c->active == 0)
        tc_close_why(c, DP_RESET_NONE);
}

static void tc_close(dp_codec_conn_t *cc)
{
    tc_close_why((tc_conn_t *)cc, DP_RESET_NONE);
}

static const dp_codec_conn_ops_t tc_conn_ops = {.new_stream = tc_new_stream,
                                                .can_take_stream = tc_can_take,
                                                .active_streams = tc_active,
                                                .go_away = tc_go_away,
                                                .close = tc_close};

static void tc_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    tc_conn_t *c = h->data;
    b->base = c->rbuf + c->rlen;
    b->len = sizeof(c->rbuf) - c->rlen;
}

static void tc_line(tc_conn_t *c, const char *line)
{
    unsigned id;
    if (sscanf(line, "R %u", &id) != 1)
        return;
    for (uint32_t i = 0; i < TC_MAX_STREAMS; i++) {
        tc_stream_t *s = &c->streams[i];
        if (!s->used || s->id != id)
            continue;
        dp_http_head_t *h = dp_pool_calloc(s->pool, sizeof(*h));
        h->status = 200;
        h->version = DP_HTTP_11;
        s->ops->on_headers(s->ud, h, true);
        s->used = false;
        c->active--;
        s->ops->on_done(s->ud, DP_RESET_NONE);
        if (c->goaway && c->active == 0)
            tc_close_why(c, DP_RESET_NONE);
        else if (!c->closing && c->cb->on_ready)
            c->cb->on_ready(c->ud, &c->base);
        return;
    }
}

static void tc_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    tc_conn_t *c = st->data;
    if (n < 0) {
        tc_close_why(c, c->active ? DP_RESET_REMOTE : DP_RESET_NONE);
        return;
    }
    c->rlen += (size_t)n;
    char *nl;
    while (!c->closing && (nl = memchr(c->rbuf, '\n', c->rlen)) != NULL) {
        *nl = '\0';
        tc_line(c, c->rbuf);
        size_t used = (size_t)(nl + 1 - c->rbuf);
        memmove(c->rbuf, nl + 1, c->rlen - used);
        c->rlen -= used;
    }
}

static int codecs_made;
/* The keepalive options of the last TCP socket a codec was given. */
static int ka_on, ka_cnt, ka_idle, ka_intvl;

static dp_codec_conn_t *tc_new(uv_loop_t *l, int fd, const dp_codec_cb_t *cb, void *ud,
                               uint32_t max)
{
    tc_conn_t *c = calloc(1, sizeof(*c));
    c->base.ops = &tc_conn_ops;
    c->cb = cb;
    c->ud = ud;
    c->max_streams = max;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    bool unix_sock = getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_UNIX;
    if (!unix_sock) {
        socklen_t il = sizeof(int);
        getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &ka_on, &il);
        getsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &ka_cnt, &il);
        getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &ka_idle, &il);
        getsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &ka_intvl, &il);
    }
    if (unix_sock)
        uv_pipe_init(l, &c->pipe, 0);
    else
        uv_tcp_init(l, &c->tcp);
    c->tcp.data = c;
    if ((unix_sock ? uv_pipe_open(&c->pipe, fd) : uv_tcp_open(&c->tcp, fd)) < 0) {
        close(fd);
        uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        return NULL;
    }
    uv_read_start((uv_stream_t *)&c->tcp, tc_alloc, tc_read);
    codecs_made++;
    return &c->base;
}

static dp_codec_conn_t *tc_h1_new(uv_loop_t *l, int fd, bool server, const dp_http_limits_t *lim,
                                  const dp_codec_cb_t *cb, void *ud)
{
    return tc_new(l, fd, cb, ud, 1);
}

static dp_codec_conn_t *tc_h2_new(uv_loop_t *l, int fd, bool server, const dp_http_limits_t *lim,
                                  const dp_codec_cb_t *cb, void *ud)
{
    return tc_new(l, fd, cb, ud, 2);
}

/* ---- the test server: answers each "Q <id>" line with "R <id>" (or holds them) ---- */

typedef struct srv srv_t;

typedef struct srv_conn {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    };
    srv_t *s;
    char buf[512];
    size_t len;
    struct srv_conn *next;
    bool open;
} srv_conn_t;

struct srv {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    };
    bool unix_sock;
    bool http; /* answer HTTP/1.1 heads (requests without a body) instead of lines */
    uint16_t port;
    int accepts, closes, lines;
    bool hold;
    char held[64][16]; /* "R <id>\n" per held request */
    srv_conn_t *held_conn[64];
    int n_held;
    srv_conn_t *conns;
    char peer[64];
};

static void srv_written(uv_write_t *w, int status)
{
    free(w->data);
    free(w);
}

static void srv_send(srv_conn_t *sc, const char *text)
{
    if (!sc->open)
        return;
    size_t n = strlen(text);
    char *copy = malloc(n);
    memcpy(copy, text, n);
    uv_write_t *w = malloc(sizeof(*w));
    w->data = copy;
    uv_buf_t b = uv_buf_init(copy, (unsigned)n);
    if (uv_write(w, (uv_stream_t *)&sc->tcp, &b, 1, srv_written) < 0) {
        free(copy);
        free(w);
    }
}

static void srv_release(srv_t *s)
{
    s->hold = false;
    for (int i = 0; i < s->n_held; i++)
        srv_send(s->held_conn[i], s->held[i]);
    s->n_held = 0;
}

static void srv_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    srv_conn_t *sc = h->data;
    b->base = sc->buf + sc->len;
    b->len = sizeof(sc->buf) - sc->len;
}

static void srv_conn_closed(uv_handle_t *h)
{
    srv_conn_t *sc = h->data;
    sc->s->closes++;
}

static void srv_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    srv_conn_t *sc = st->data;
    srv_t *s = sc->s;
    if (n < 0) {
        sc->open = false;
        uv_close((uv_handle_t *)&sc->tcp, srv_conn_closed);
        return;
    }
    sc->len += (size_t)n;
    if (s->http) {
        char *end;
        while ((end = memmem(sc->buf, sc->len, "\r\n\r\n", 4)) != NULL) {
            s->lines++;
            srv_send(sc, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            size_t used = (size_t)(end + 4 - sc->buf);
            memmove(sc->buf, end + 4, sc->len - used);
            sc->len -= used;
        }
        return;
    }
    char *nl;
    while ((nl = memchr(sc->buf, '\n', sc->len)) != NULL) {
        *nl = '\0';
        unsigned id;
        if (sscanf(sc->buf, "Q %u", &id) == 1) {
            s->lines++;
            char reply[16];
            snprintf(reply, sizeof(reply), "R %u\n", id);
            if (s->hold && s->n_held < 64) {
                memcpy(s->held[s->n_held], reply, sizeof(reply));
                s->held_conn[s->n_held++] = sc;
            } else {
                srv_send(sc, reply);
            }
        }
        size_t used = (size_t)(nl + 1 - sc->buf);
        memmove(sc->buf, nl + 1, sc->len - used);
        sc->len -= used;
    }
}

static void srv_on_conn(uv_stream_t *server, int status)
{
    srv_t *s = server->data;
    srv_conn_t *sc = calloc(1, sizeof(*sc));
    sc->s = s;
    if (s->unix_sock)
        uv_pipe_init(&loop, &sc->pipe, 0);
    else
        uv_tcp_init(&loop, &sc->tcp);
    sc->tcp.data = sc;
    sc->next = s->conns;
    s->conns = sc;
    if (uv_accept(server, (uv_stream_t *)&sc->tcp) < 0) {
        uv_close((uv_handle_t *)&sc->tcp, srv_conn_closed);
        return;
    }
    sc->open = true;
    s->accepts++;
    if (!s->unix_sock) {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        uv_tcp_getpeername(&sc->tcp, (struct sockaddr *)&ss, &len);
        uv_ip4_name((struct sockaddr_in *)&ss, s->peer, sizeof(s->peer));
    }
    uv_read_start((uv_stream_t *)&sc->tcp, srv_alloc, srv_read);
}

static void srv_start(srv_t *s)
{
    memset(s, 0, sizeof(*s));
    uv_tcp_init(&loop, &s->tcp);
    s->tcp.data = s;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    ck_assert_int_eq(uv_tcp_bind(&s->tcp, (struct sockaddr *)&a, 0), 0);
    ck_assert_int_eq(uv_listen((uv_stream_t *)&s->tcp, 128, srv_on_conn), 0);
    int len = sizeof(a);
    uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&a, &len);
    s->port = ntohs(a.sin_port);
}

static void srv_start_unix(srv_t *s, const char *path)
{
    memset(s, 0, sizeof(*s));
    s->unix_sock = true;
    unlink(path);
    uv_pipe_init(&loop, &s->pipe, 0);
    s->pipe.data = s;
    ck_assert_int_eq(uv_pipe_bind(&s->pipe, path), 0);
    ck_assert_int_eq(uv_listen((uv_stream_t *)&s->pipe, 128, srv_on_conn), 0);
}

/* Closes the server's side of every accepted connection. */
static void srv_drop_conns(srv_t *s)
{
    for (srv_conn_t *sc = s->conns; sc; sc = sc->next) {
        if (sc->open) {
            sc->open = false;
            uv_close((uv_handle_t *)&sc->tcp, srv_conn_closed);
        }
    }
}

static void srv_stop(srv_t *s)
{
    srv_drop_conns(s);
    uv_close((uv_handle_t *)&s->tcp, NULL);
}

static void srv_free(srv_t *s)
{
    for (srv_conn_t *sc = s->conns, *next; sc; sc = next) {
        next = sc->next;
        free(sc);
    }
    s->conns = NULL;
}

/* ---- requests ---- */

typedef struct req {
    dp_upstream_wait_t *w;
    size_t body;
    int ready, failed, done, status;
    dp_reset_reason_t why, done_why;
    const dp_addr_t *host;
    uint16_t port; /* of host */
    dp_pool_t *pool;
    dp_enc_t *enc;
} req_t;

static void rq_on_headers(void *ud, dp_http_head_t *h, bool end)
{
    ((req_t *)ud)->status = h->status;
}

static void rq_on_data(void *ud, const uint8_t *p, size_t n, bool end)
{
    ((req_t *)ud)->body += n;
}

static void rq_on_trailers(void *ud, dp_headers_t *t)
{
}

static void rq_on_drained(void *ud)
{
}

static void rq_on_done(void *ud, dp_reset_reason_t why)
{
    req_t *r = ud;
    r->done++;
    r->done_why = why;
    r->enc = NULL;
}

static const dp_sink_ops_t rq_sink = {rq_on_headers, rq_on_data, rq_on_trailers, rq_on_drained,
                                      rq_on_done};

static void rq_on_ready(void *ud, dp_codec_conn_t *conn, const dp_addr_t *host)
{
    req_t *r = ud;
    r->ready++;
    r->w = NULL;
    r->host = host;
    r->port = ntohs(host->in.sin_port);
    if (r->pool == NULL)
        r->pool = dp_pool_new();
    r->enc = conn->ops->new_stream(conn, &rq_sink, r, r->pool);
    ck_assert_ptr_nonnull(r->enc);
    dp_http_head_t h = {.method = DP_STR("GET"), .path = DP_STR("/"), .authority = DP_STR("x")};
    ck_assert_int_eq(r->enc->ops->headers(r->enc, &h, true), 0);
}

static void rq_on_failure(void *ud, dp_reset_reason_t why, const dp_addr_t *host)
{
    req_t *r = ud;
    r->failed++;
    r->w = NULL;
    r->why = why;
    r->host = host;
}

static const dp_upstream_cb_t rq_cb = {rq_on_ready, rq_on_failure};

static void rq_clear(req_t *r)
{
    dp_pool_free(r->pool);
    memset(r, 0, sizeof(*r));
}

static void tick(uv_timer_t *t)
{
}

/* Runs the loop until cond holds or ms pass. */
#define RUN_UNTIL(cond, ms)                     \
    do {                                        \
        uv_timer_t tk_;                         \
        uv_timer_init(&loop, &tk_);             \
        uv_timer_start(&tk_, tick, 2, 2);       \
        uint64_t end_ = uv_now(&loop) + (ms);   \
        while (!(cond) && uv_now(&loop) < end_) \
            uv_run(&loop, UV_RUN_ONCE);         \
        uv_close((uv_handle_t *)&tk_, NULL);    \
        uv_run(&loop, UV_RUN_NOWAIT);           \
    } while (0)

static dp_stats_t *stats;

/* A cluster in snapshot s with the given endpoints (ports on 127.0.0.1). */
static dp_cluster_t *add_cluster(dp_snapshot_t *s, const char *name, size_t n,
                                 const uint16_t *ports, const uint32_t *weights,
                                 const uint32_t *prios, const dp_health_t *health)
{
    dp_cluster_t *c = dp_snapshot_add_cluster(s);
    c->name = dp_arena_strdup(s->arena, name);
    c->type = DP_CLUSTER_EDS;
    c->connect_timeout_ms = 1000;
    c->idle_timeout_ms = 3600 * 1000;
    c->circuit_breakers = (dp_circuit_breakers_t){.max_connections = 1024,
                                                  .max_pending_requests = 1024,
                                                  .max_requests = 1024,
                                                  .max_retries = 3};
    dp_endpoint_t *eps = n ? dp_arena_alloc(s->arena, n * sizeof(*eps)) : NULL;
    for (size_t i = 0; i < n; i++) {
        uv_ip4_addr("127.0.0.1", ports[i], &eps[i].addr.in);
        eps[i].weight = weights ? weights[i] : 1;
        eps[i].priority = prios ? prios[i] : 0;
        eps[i].health = health ? health[i] : DP_HEALTH_HEALTHY;
    }
    c->endpoints = eps;
    c->n_endpoints = n;
    char sn[256];
#define TSTAT_C(field, suffix) \
    (snprintf(sn, sizeof(sn), "cluster.%s." suffix, name), c->field = dp_stats_counter(stats, sn))
#define TSTAT_G(field, suffix) \
    (snprintf(sn, sizeof(sn), "cluster.%s." suffix, name), c->field = dp_stats_gauge(stats, sn))
    TSTAT_C(cx_total, "upstream_cx_total");
    TSTAT_C(cx_connect_fail, "upstream_cx_connect_fail");
    TSTAT_G(cx_active, "upstream_cx_active");
    TSTAT_C(stats.cx_connect_timeout, "upstream_cx_connect_timeout");
    TSTAT_C(stats.cx_destroy, "upstream_cx_destroy");
    TSTAT_C(stats.cx_idle_timeout, "upstream_cx_idle_timeout");
    TSTAT_C(stats.cx_none_healthy, "upstream_cx_none_healthy");
    TSTAT_C(stats.cx_http1_total, "upstream_cx_http1_total");
    TSTAT_C(stats.cx_http2_total, "upstream_cx_http2_total");
    TSTAT_C(stats.rq_pending_total, "upstream_rq_pending_total");
    TSTAT_G(stats.rq_pending_active, "upstream_rq_pending_active");
    TSTAT_C(stats.rq_pending_overflow, "upstream_rq_pending_overflow");
    TSTAT_C(stats.cx_overflow, "upstream_cx_overflow");
    TSTAT_C(stats.rq_retry_overflow, "upstream_rq_retry_overflow");
    TSTAT_C(stats.cx_pool_overflow, "upstream_cx_pool_overflow");
    return c;
}

static dp_snapshot_t *seal(dp_snapshot_t *s)
{
    ck_assert_int_eq(dp_snapshot_seal(s), 0);
    return s;
}

static dp_upstreams_t *ups;

static void setup(void)
{
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    stats = dp_stats_new();
    ups = dp_upstreams_new(&loop, tc_h1_new, tc_h2_new);
    codecs_made = 0;
}

static int walk_count;

static void count_open(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        walk_count++;
}

/* Closes the pools and the servers; every handle must have gone. */
static void teardown_with(srv_t *srvs, size_t n)
{
    dp_upstreams_close(ups);
    ups = NULL;
    for (size_t i = 0; i < n; i++)
        srv_stop(&srvs[i]);
    for (int i = 0; i < 100 && uv_loop_alive(&loop); i++)
        uv_run(&loop, UV_RUN_ONCE);
    walk_count = 0;
    uv_walk(&loop, count_open, NULL);
    ck_assert_int_eq(walk_count, 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    for (size_t i = 0; i < n; i++)
        srv_free(&srvs[i]);
    dp_stats_free(stats);
}

/* One request through the pool, run to completion. */
static void one_request(const dp_cluster_t *c, const dp_lb_ctx_t *lb, req_t *r)
{
    rq_clear(r);
    r->w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, lb, &rq_cb, r);
    RUN_UNTIL(r->done || r->failed, 3000);
}

/* ---- tests ---- */

START_TEST(test_weighted_round_robin_and_reuse)
{
    setup();
    srv_t srv[3];
    uint16_t ports[3];
    for (int i = 0; i < 3; i++) {
        srv_start(&srv[i]);
        ports[i] = srv[i].port;
    }
    dp_snapshot_t *s = dp_snapshot_new(1);
    const uint32_t weights[3] = {1, 2, 3};
    add_cluster(s, "c", 3, ports, weights, NULL, NULL);
    seal(s);
    dp_upstreams_apply(ups, s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "c");
    int per[3] = {0};
    req_t r = {0};
    for (int i = 0; i < 60; i++) {
        one_request(c, NULL, &r);
        ck_assert_int_eq(r.done, 1);
        ck_assert_int_eq(r.status, 200);
        ck_assert_int_eq(r.done_why, DP_RESET_NONE);
        for (int k = 0; k < 3; k++)
            per[k] += r.port == ports[k];
        /* the host given is the snapshot's endpoint */
        ck_assert_ptr_eq(r.host, &c->endpoints[r.port == ports[0]   ? 0
                                               : r.port == ports[1] ? 1
                                                                    : 2]
                                      .addr);
    }
    ck_assert_int_eq(per[0], 10);
    ck_assert_int_eq(per[1], 20);
    ck_assert_int_eq(per[2], 30);
    /* sequential requests reuse each host's one connection */
    for (int k = 0; k < 3; k++)
        ck_assert_int_eq(srv[k].accepts, 1);
    ck_assert_uint_eq(dp_counter_value(c->cx_total), 3);
    ck_assert_uint_eq(dp_counter_value(c->stats.cx_http1_total), 3);
    ck_assert_uint_eq(dp_gauge_value(c->cx_active), 3);
    rq_clear(&r);
    teardown_with(srv, 3);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_health_and_priority_failover)
{
    setup();
    srv_t srv[4];
    uint16_t ports[4];
    for (int i = 0; i < 4; i++) {
        srv_start(&srv[i]);
        ports[i] = srv[i].port;
    }
    dp_snapshot_t *s = dp_snapshot_new(1);
    /* priority 0 has nothing usable; priority 1's UNKNOWN host is healthy and its DEGRADED one
     * degraded (Envoy's priority loads: 70% healthy, the other 30% degraded, dataplane/lb.h) */
    const uint32_t prios[4] = {0, 0, 1, 1};
    const dp_health_t h1[4] = {DP_HEALTH_UNHEALTHY, DP_HEALTH_DRAINING, DP_HEALTH_DEGRADED,
                               DP_HEALTH_UNKNOWN};
    add_cluster(s, "failover", 4, ports, NULL, prios, h1);
    /* priority 0 has every host healthy: only it is used */
    const uint32_t prios2[4] = {0, 1, 1, 1};
    const dp_health_t h2[4] = {DP_HEALTH_HEALTHY, DP_HEALTH_TIMEOUT, DP_HEALTH_HEALTHY,
                               DP_HEALTH_HEALTHY};
    add_cluster(s, "primary", 4, ports, NULL, prios2, h2);
    /* nothing healthy, and healthy_panic_threshold 0: no host (with Envoy's default of 50% the
     * cluster would be in panic and use the unhealthy hosts) */
    const dp_health_t h3[2] = {DP_HEALTH_UNHEALTHY, DP_HEALTH_TIMEOUT};
    dp_cluster_t *nc = add_cluster(s, "none", 2, ports, NULL, NULL, h3);
    nc->lb_has_panic_threshold = true;
    nc->lb_panic_threshold = 0;
    seal(s);
    const dp_cluster_t *f = dp_snapshot_find_cluster(s, "failover");
    const dp_cluster_t *p = dp_snapshot_find_cluster(s, "primary");
    const dp_cluster_t *none = dp_snapshot_find_cluster(s, "none");
    int per[4] = {0};
    req_t r = {0};
    /* The priority is drawn at random: with 200 requests the healthy host's share (70%) is
     * above the degraded one's but for a chance of about 1e-9 (with 40 it was 0.3%, and a run
     * saw 19 against 21). */
    for (int i = 0; i < 200; i++) {
        one_request(f, NULL, &r);
        ck_assert_int_eq(r.done, 1);
        for (int k = 0; k < 4; k++)
            per[k] += r.port == ports[k];
    }
    ck_assert_int_eq(per[0], 0);
    ck_assert_int_eq(per[1], 0);
    ck_assert_int_gt(per[2], 0);
    ck_assert_int_gt(per[3], per[2]);
    ck_assert_int_eq(per[2] + per[3], 200);
    for (int i = 0; i < 4; i++) {
        one_request(p, NULL, &r);
        ck_assert_int_eq(r.done, 1);
        ck_assert_int_eq(r.port, ports[0]);
    }
    /* no usable host: NO_HEALTHY_HOST at once, counted as none_healthy */
    rq_clear(&r);
    ck_assert_ptr_null(dp_upstream_request(ups, none, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r));
    ck_assert_int_eq(r.failed, 1);
    ck_assert_int_eq(r.why, DP_RESET_NO_HEALTHY_HOST);
    ck_assert_ptr_null(r.host);
    ck_assert_uint_eq(dp_counter_value(none->stats.cx_none_healthy), 1);
    rq_clear(&r);
    teardown_with(srv, 4);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_pending_queue_and_overflow)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    srv[0].hold = true;
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "c", 1, &srv[0].port, NULL, NULL, NULL);
    cw->circuit_breakers.max_pending_requests = 2;
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "c");
    req_t r[3] = {{0}};
    r[0].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[0]);
    r[1].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[1]);
    ck_assert_ptr_nonnull(r[0].w);
    ck_assert_ptr_nonnull(r[1].w);
    ck_assert_uint_eq(dp_gauge_value(c->stats.rq_pending_active), 2);
    /* the third finds the queue full */
    ck_assert_ptr_null(dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[2]));
    ck_assert_int_eq(r[2].failed, 1);
    ck_assert_int_eq(r[2].why, DP_RESET_OVERFLOW);
    ck_assert_uint_eq(dp_counter_value(c->stats.rq_pending_overflow), 1);
    /* each waiting HTTP/1 request got its own connection */
    RUN_UNTIL(r[0].ready && r[1].ready && srv[0].lines == 2, 3000);
    ck_assert_int_eq(srv[0].accepts, 2);
    ck_assert_uint_eq(dp_gauge_value(c->stats.rq_pending_active), 0);
    ck_assert_uint_eq(dp_counter_value(c->stats.rq_pending_total), 2);
    /* a third request while both connections are busy waits, and takes whichever frees */
    rq_clear(&r[2]);
    r[2].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[2]);
    ck_assert_ptr_nonnull(r[2].w);
    /* a cancelled wait is never called */
    dp_upstream_cancel(r[2].w);
    ck_assert_uint_eq(dp_gauge_value(c->stats.rq_pending_active), 0);
    srv_release(&srv[0]);
    RUN_UNTIL(r[0].done && r[1].done && srv[0].accepts == 3, 3000);
    ck_assert_int_eq(r[0].done + r[1].done, 2);
    ck_assert_int_eq(r[2].ready + r[2].failed, 0);
    for (int i = 0; i < 3; i++)
        rq_clear(&r[i]);
    teardown_with(srv, 1);
    dp_snapshot_unref(s);
}
END_TEST

static uint16_t closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

START_TEST(test_connect_failure)
{
    setup();
    dp_snapshot_t *s = dp_snapshot_new(1);
    uint16_t port = closed_port();
    add_cluster(s, "c", 1, &port, NULL, NULL, NULL);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "c");
    req_t r = {0};
    r.w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r);
    ck_assert_ptr_nonnull(r.w);
    ck_assert_int_eq(r.failed, 0); /* reported from the loop */
    RUN_UNTIL(r.failed, 3000);
    ck_assert_int_eq(r.failed, 1);
    ck_assert_int_eq(r.why, DP_RESET_CONNECT_FAIL);
    ck_assert_ptr_eq(r.host, &c->endpoints[0].addr);
    ck_assert_uint_eq(dp_counter_value(c->cx_connect_fail), 1);
    ck_assert_uint_eq(dp_counter_value(c->stats.cx_destroy), 1);
    ck_assert_uint_eq(dp_gauge_value(c->cx_active), 0);
    ck_assert_uint_eq(dp_gauge_value(c->stats.rq_pending_active), 0);
    ck_assert_int_eq(codecs_made, 0);
    teardown_with(NULL, 0);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_connect_timeout)
{
    setup();
    /* A listener whose accept queue is full drops new SYNs: connect() neither succeeds nor
     * fails, so the connect timeout decides. */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    ck_assert_int_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(lfd, 0), 0);
    socklen_t len = sizeof(a);
    getsockname(lfd, (struct sockaddr *)&a, &len);
    int fill[3];
    for (int i = 0; i < 3; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&a, sizeof(a));
    }
    usleep(100 * 1000);
    uint16_t port = ntohs(a.sin_port);
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "c", 1, &port, NULL, NULL, NULL);
    cw->connect_timeout_ms = 100;
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "c");
    req_t r = {0};
    uint64_t t0 = uv_now(&loop);
    r.w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r);
    RUN_UNTIL(r.failed, 3000);
    ck_assert_int_eq(r.failed, 1);
    ck_assert_int_eq(r.why, DP_RESET_CONNECT_TIMEOUT);
    ck_assert_uint_ge(uv_now(&loop) - t0, 90);
    ck_assert_uint_eq(dp_counter_value(c->stats.cx_connect_timeout), 1);
    ck_assert_uint_eq(dp_counter_value(c->cx_connect_fail), 1);
    for (int i = 0; i < 3; i++)
        close(fill[i]);
    close(lfd);
    teardown_with(NULL, 0);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_source_address)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "inbound|8080||", 1, &srv[0].port, NULL, NULL, NULL);
    cw->has_source_addr = true;
    uv_ip4_addr("127.0.0.6", 0, &cw->source_addr.in);
    seal(s);
    req_t r = {0};
    one_request(dp_snapshot_find_cluster(s, "inbound|8080||"), NULL, &r);
    ck_assert_int_eq(r.done, 1);
    ck_assert_str_eq(srv[0].peer, "127.0.0.6");
    rq_clear(&r);
    teardown_with(srv, 1);
    dp_snapshot_unref(s);
}
END_TEST

static const dp_cluster_t *dns_cluster(dp_snapshot_t *s, dp_cluster_type_t type, uint16_t port)
{
    dp_cluster_t *cw = add_cluster(s, "dns", 0, NULL, NULL, NULL, NULL);
    cw->type = type;
    cw->dns_family = DP_DNS_V4_ONLY;
    cw->dns_refresh_ms = 5000;
    dp_endpoint_t *h = dp_arena_alloc(s->arena, sizeof(*h));
    h->hostname = "localhost";
    h->port = port;
    h->weight = 1;
    cw->dns_hosts = h;
    cw->n_dns_hosts = 1;
    seal(s);
    return dp_snapshot_find_cluster(s, "dns");
}

/* Requests until one gets through (the name resolves on the loop meanwhile). */
static void request_until_resolved(const dp_cluster_t *c, req_t *r)
{
    for (int i = 0; i < 200; i++) {
        RUN_UNTIL(false, 10);
        rq_clear(r);
        r->w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, r);
        if (r->failed)
            continue;
        RUN_UNTIL(r->done || r->failed, 3000);
        if (r->done)
            return;
    }
}

START_TEST(test_strict_dns)
{
    setup();
    srv_t srv[2];
    srv_start(&srv[0]);
    srv_start(&srv[1]);
    dp_snapshot_t *s = dp_snapshot_new(1);
    const dp_cluster_t *c = dns_cluster(s, DP_CLUSTER_STRICT_DNS, srv[0].port);
    dp_upstreams_apply(ups, s);
    /* not resolved yet: no host */
    req_t r = {0};
    ck_assert_ptr_null(dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r));
    ck_assert_int_eq(r.why, DP_RESET_NO_HEALTHY_HOST);
    request_until_resolved(c, &r);
    ck_assert_int_eq(r.done, 1);
    ck_assert_int_eq(r.host->sa.sa_family, AF_INET);
    ck_assert_uint_eq(ntohl(r.host->in.sin_addr.s_addr), 0x7f000001);
    ck_assert_int_eq(r.port, srv[0].port);
    ck_assert_int_eq(srv[0].accepts, 1);

    /* the host's port changes: resolution starts over, the old host's pool drains */
    dp_snapshot_t *s2 = dp_snapshot_new(2);
    const dp_cluster_t *c2 = dns_cluster(s2, DP_CLUSTER_STRICT_DNS, srv[1].port);
    dp_upstreams_apply(ups, s2);
    RUN_UNTIL(srv[0].closes == 1, 2000);
    ck_assert_int_eq(srv[0].closes, 1);
    request_until_resolved(c2, &r);
    ck_assert_int_eq(r.done, 1);
    ck_assert_int_eq(r.port, srv[1].port);
    rq_clear(&r);
    teardown_with(srv, 2);
    dp_snapshot_unref(s);
    dp_snapshot_unref(s2);
}
END_TEST

START_TEST(test_logical_dns)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    dp_snapshot_t *s = dp_snapshot_new(1);
    const dp_cluster_t *c = dns_cluster(s, DP_CLUSTER_LOGICAL_DNS, srv[0].port);
    /* a request before any apply starts the resolution too */
    req_t r = {0};
    ck_assert_ptr_null(dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r));
    request_until_resolved(c, &r);
    ck_assert_int_eq(r.done, 1);
    ck_assert_int_eq(r.port, srv[0].port);
    rq_clear(&r);
    teardown_with(srv, 1);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_original_dst)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "PassthroughCluster", 0, NULL, NULL, NULL, NULL);
    cw->type = DP_CLUSTER_ORIGINAL_DST;
    cw->lb_policy = DP_LB_CLUSTER_PROVIDED;
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "PassthroughCluster");
    struct sockaddr_in dst;
    uv_ip4_addr("127.0.0.1", srv[0].port, &dst);
    dp_lb_ctx_t lb = {.original_dst = (const struct sockaddr *)&dst};
    req_t r = {0};
    for (int i = 0; i < 3; i++) {
        one_request(c, &lb, &r);
        ck_assert_int_eq(r.done, 1);
        ck_assert_int_eq(r.port, srv[0].port);
    }
    ck_assert_int_eq(srv[0].accepts, 1);
    /* no original destination: no host */
    rq_clear(&r);
    ck_assert_ptr_null(dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r));
    ck_assert_int_eq(r.why, DP_RESET_NO_HEALTHY_HOST);
    rq_clear(&r);
    teardown_with(srv, 1);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_idle_timeout)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "c", 1, &srv[0].port, NULL, NULL, NULL);
    cw->idle_timeout_ms = 50;
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "c");
    req_t r = {0};
    one_request(c, NULL, &r);
    ck_assert_int_eq(r.done, 1);
    RUN_UNTIL(srv[0].closes == 1, 2000);
    ck_assert_int_eq(srv[0].closes, 1);
    ck_assert_uint_eq(dp_counter_value(c->stats.cx_idle_timeout), 1);
    ck_assert_uint_eq(dp_counter_value(c->stats.cx_destroy), 1);
    ck_assert_uint_eq(dp_gauge_value(c->cx_active), 0);
    one_request(c, NULL, &r);
    ck_assert_int_eq(r.done, 1);
    ck_assert_int_eq(srv[0].accepts, 2);
    rq_clear(&r);
    teardown_with(srv, 1);
    dp_snapshot_unref(s);
}
END_TEST

/* The idle timeout counts from the end of the last stream: a connection used more often than
 * that stays, however long it lives, and closes a full timeout after its last use. */
START_TEST(test_idle_timeout_counts_from_last_use)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "c", 1, &srv[0].port, NULL, NULL, NULL);
    cw->idle_timeout_ms = 150;
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "c");
    req_t r = {0};
    uint64_t start = uv_now(&loop);
    while (uv_now(&loop) - start < 400) {
        one_request(c, NULL, &r);
        ck_assert_int_eq(r.done, 1);
        RUN_UNTIL(false, 30);
    }
    rq_clear(&r);
    ck_assert_int_eq(srv[0].accepts, 1);
    ck_assert_int_eq(srv[0].closes, 0);
    ck_assert_uint_eq(dp_counter_value(c->stats.cx_idle_timeout), 0);
    uint64_t last = uv_now(&loop);
    RUN_UNTIL(srv[0].closes == 1, 2000);
    ck_assert_int_eq(srv[0].closes, 1);
    ck_assert_uint_ge(uv_now(&loop) - last, 100);
    ck_assert_uint_eq(dp_counter_value(c->stats.cx_idle_timeout), 1);
    teardown_with(srv, 1);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_snapshot_change_drains)
{
    setup();
    srv_t srv[2];
    srv_start(&srv[0]);
    srv_start(&srv[1]);
    dp_snapshot_t *s1 = dp_snapshot_new(1);
    add_cluster(s1, "c", 1, &srv[0].port, NULL, NULL, NULL);
    add_cluster(s1, "gone", 1, &srv[1].port, NULL, NULL, NULL);
    seal(s1);
    dp_upstreams_apply(ups, s1);
    req_t r = {0};
    one_request(dp_snapshot_find_cluster(s1, "c"), NULL, &r);
    ck_assert_int_eq(r.done, 1);
    one_request(dp_snapshot_find_cluster(s1, "gone"), NULL, &r);
    ck_assert_int_eq(r.done, 1);
    /* a request in flight on the host that goes away finishes first */
    srv[0].hold = true;
    rq_clear(&r);
    dp_upstream_request(ups, dp_snapshot_find_cluster(s1, "c"), DP_UPSTREAM_HTTP1, NULL, &rq_cb,
                        &r);
    ck_assert_int_eq(r.ready, 1);
    RUN_UNTIL(srv[0].lines == 3, 2000);

    /* c moves to srv[1]; "gone" is dropped */
    dp_snapshot_t *s2 = dp_snapshot_new(2);
    add_cluster(s2, "c", 1, &srv[1].port, NULL, NULL, NULL);
    seal(s2);
    dp_upstreams_apply(ups, s2);
    RUN_UNTIL(srv[1].closes == 1, 2000);
    ck_assert_int_eq(srv[1].closes, 1); /* "gone"'s idle connection */
    ck_assert_int_eq(srv[0].closes, 0); /* busy: drains after its response */
    srv_release(&srv[0]);
    RUN_UNTIL(r.done && srv[0].closes == 1, 2000);
    ck_assert_int_eq(r.done, 1);
    ck_assert_int_eq(r.done_why, DP_RESET_NONE);
    ck_assert_int_eq(srv[0].closes, 1);
    one_request(dp_snapshot_find_cluster(s2, "c"), NULL, &r);
    ck_assert_int_eq(r.done, 1);
    ck_assert_int_eq(r.port, srv[1].port);
    rq_clear(&r);
    teardown_with(srv, 2);
    dp_snapshot_unref(s1);
    dp_snapshot_unref(s2);
}
END_TEST

START_TEST(test_h2_multiplexing_and_max_requests)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    srv[0].hold = true;
    dp_snapshot_t *s = dp_snapshot_new(1);
    add_cluster(s, "h2", 1, &srv[0].port, NULL, NULL, NULL)->proto = DP_CLUSTER_PROTO_HTTP2;
    add_cluster(s, "h1", 1, &srv[0].port, NULL, NULL, NULL)->max_requests_per_connection = 2;
    seal(s);
    const dp_cluster_t *c2 = dp_snapshot_find_cluster(s, "h2");
    const dp_cluster_t *c1 = dp_snapshot_find_cluster(s, "h1");
    ck_assert_int_eq(dp_upstream_proto_for(c2, DP_HTTP_11), DP_UPSTREAM_HTTP2);
    ck_assert_int_eq(dp_upstream_proto_for(c1, DP_HTTP_2), DP_UPSTREAM_HTTP1);
    /* three concurrent streams, two per connection: two connections */
    req_t r[3] = {{0}};
    for (int i = 0; i < 3; i++)
        r[i].w = dp_upstream_request(ups, c2, DP_UPSTREAM_HTTP2, NULL, &rq_cb, &r[i]);
    RUN_UNTIL(srv[0].lines == 3, 3000);
    ck_assert_int_eq(srv[0].accepts, 2);
    ck_assert_uint_eq(dp_counter_value(c2->stats.cx_http2_total), 2);
    srv_release(&srv[0]);
    RUN_UNTIL(r[0].done && r[1].done && r[2].done, 3000);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(r[i].done, 1);
        rq_clear(&r[i]);
    }
    /* max_requests_per_connection 2: four sequential requests need two connections */
    int before = srv[0].accepts;
    for (int i = 0; i < 4; i++) {
        one_request(c1, NULL, &r[0]);
        ck_assert_int_eq(r[0].done, 1);
    }
    ck_assert_int_eq(srv[0].accepts - before, 2);
    rq_clear(&r[0]);
    teardown_with(srv, 1);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_close_with_pending)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    srv[0].hold = true;
    dp_snapshot_t *s = dp_snapshot_new(1);
    add_cluster(s, "c", 1, &srv[0].port, NULL, NULL, NULL);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "c");
    req_t r[2] = {{0}};
    r[0].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[0]);
    RUN_UNTIL(srv[0].lines == 1, 2000);
    r[1].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[1]);
    ck_assert_ptr_nonnull(r[1].w);
    /* closing fails the waiting request and terminates the open stream */
    dp_upstreams_close(ups);
    ups = NULL;
    ck_assert_int_eq(r[1].failed, 1);
    ck_assert_int_eq(r[0].done, 1);
    ck_assert_int_eq(r[0].done_why, DP_RESET_CONN_TERMINATED);
    srv_stop(&srv[0]);
    for (int i = 0; i < 100 && uv_loop_alive(&loop); i++)
        uv_run(&loop, UV_RUN_ONCE);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    srv_free(&srv[0]);
    dp_stats_free(stats);
    for (int i = 0; i < 2; i++)
        rq_clear(&r[i]);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_max_connections)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    srv[0].hold = true;
    dp_snapshot_t *s = dp_snapshot_new(1);
    add_cluster(s, "c", 1, &srv[0].port, NULL, NULL, NULL)->circuit_breakers.max_connections = 1;
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "c");
    /* the second request may not open a second connection: it waits for the first */
    req_t r[2] = {{0}};
    for (int i = 0; i < 2; i++)
        r[i].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[i]);
    ck_assert_uint_ge(dp_counter_value(c->stats.cx_overflow), 1);
    RUN_UNTIL(srv[0].lines == 1, 2000);
    ck_assert_int_eq(r[0].ready, 1);
    ck_assert_int_eq(r[1].ready, 0);
    srv_release(&srv[0]);
    srv[0].hold = false;
    RUN_UNTIL(r[0].done && r[1].done, 2000);
    ck_assert_int_eq(r[1].done, 1);
    ck_assert_int_eq(srv[0].accepts, 1);
    for (int i = 0; i < 2; i++)
        rq_clear(&r[i]);
    teardown_with(srv, 1);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_unix_socket_endpoint)
{
    setup();
    char path[64];
    snprintf(path, sizeof(path), "/tmp/skiff-test-upstream-%d.sock", (int)getpid());
    srv_t srv[1];
    srv_start_unix(&srv[0], path);
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *c = dp_snapshot_add_cluster(s);
    c->name = "uds";
    c->type = DP_CLUSTER_STATIC;
    c->connect_timeout_ms = 1000;
    dp_endpoint_t *e = dp_arena_alloc(s->arena, sizeof(*e));
    e->addr.sa.sa_family = AF_UNIX;
    e->addr.unix_path = dp_arena_strdup(s->arena, path);
    e->weight = 1;
    c->endpoints = e;
    c->n_endpoints = 1;
    seal(s);
    req_t r = {0};
    for (int i = 0; i < 3; i++) {
        one_request(dp_snapshot_find_cluster(s, "uds"), NULL, &r);
        ck_assert_int_eq(r.done, 1);
        ck_assert_int_eq(r.host->sa.sa_family, AF_UNIX);
        ck_assert_str_eq(r.host->unix_path, path);
    }
    ck_assert_int_eq(srv[0].accepts, 1);
    rq_clear(&r);
    teardown_with(srv, 1);
    unlink(path);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_hash_and_random_policies)
{
    setup();
    srv_t srv[3];
    uint16_t ports[3];
    for (int i = 0; i < 3; i++) {
        srv_start(&srv[i]);
        ports[i] = srv[i].port;
    }
    dp_snapshot_t *s = dp_snapshot_new(1);
    add_cluster(s, "ring", 3, ports, NULL, NULL, NULL)->lb_policy = DP_LB_RING_HASH;
    const uint32_t w[3] = {1, 0, 3}; /* not used by RANDOM */
    add_cluster(s, "random", 3, ports, w, NULL, NULL)->lb_policy = DP_LB_RANDOM;
    seal(s);
    const dp_cluster_t *ring = dp_snapshot_find_cluster(s, "ring");
    const dp_cluster_t *rnd = dp_snapshot_find_cluster(s, "random");
    req_t r = {0};
    /* one key, one host; many keys spread over all three */
    int seen[3] = {0};
    for (uint64_t key = 1; key <= 60; key++) {
        dp_lb_ctx_t lb = {.hash = key * 0x9e3779b97f4a7c15ull, .has_hash = true};
        one_request(ring, &lb, &r);
        ck_assert_int_eq(r.done, 1);
        uint16_t first = r.port;
        one_request(ring, &lb, &r);
        ck_assert_int_eq(r.port, first);
        for (int k = 0; k < 3; k++)
            seen[k] += first == ports[k];
    }
    for (int k = 0; k < 3; k++)
        ck_assert_int_gt(seen[k], 0);
    /* RANDOM reaches every host, ignoring weights as Envoy's RandomLoadBalancer does */
    int per[3] = {0};
    for (int i = 0; i < 200; i++) {
        one_request(rnd, NULL, &r);
        ck_assert_int_eq(r.done, 1);
        for (int k = 0; k < 3; k++)
            per[k] += r.port == ports[k];
    }
    /* expected about 67 each */
    for (int k = 0; k < 3; k++)
        ck_assert_int_gt(per[k], 30);
    rq_clear(&r);
    teardown_with(srv, 3);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_least_request)
{
    setup();
    srv_t srv[2];
    uint16_t ports[2];
    for (int i = 0; i < 2; i++) {
        srv_start(&srv[i]);
        srv[i].hold = true;
        ports[i] = srv[i].port;
    }
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *lrc = add_cluster(s, "lr", 2, ports, NULL, NULL, NULL);
    lrc->lb_policy = DP_LB_LEAST_REQUEST;
    /* Envoy's random draws are with replacement: with 30 of them the less loaded host is
     * (all but surely) among them, which makes the counts below exact */
    lrc->lb_choice_count = 30;
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "lr");
    /* ten requests held by both servers: five each */
    req_t r[14] = {{0}};
    for (int i = 0; i < 10; i++)
        r[i].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[i]);
    RUN_UNTIL(srv[0].lines + srv[1].lines == 10, 3000);
    ck_assert_int_eq(srv[0].lines, 5);
    ck_assert_int_eq(srv[1].lines, 5);
    /* the first host finishes its five: the next four go to it */
    srv_release(&srv[0]);
    RUN_UNTIL(r[0].done + r[1].done + r[2].done + r[3].done + r[4].done + r[5].done + r[6].done +
                      r[7].done + r[8].done + r[9].done ==
                  5,
              3000);
    for (int i = 10; i < 14; i++) {
        one_request(c, NULL, &r[i]);
        ck_assert_int_eq(r[i].done, 1);
        ck_assert_int_eq(r[i].port, ports[0]);
    }
    /* the second host's five are still held: closing terminates them */
    teardown_with(srv, 2);
    for (int i = 0; i < 14; i++)
        rq_clear(&r[i]);
    dp_snapshot_unref(s);
}
END_TEST

/* Random operations (requests, cancels, held and released responses, dropped connections,
 * snapshot changes) with a fixed seed: every request hears back at most once, a cancelled one
 * never, and closing leaves no handle and no memory behind. */
START_TEST(test_random_operations)
{
    setup();
    enum {
        NS = 3,
        NR = 400
    };
    srv_t srv[NS];
    uint16_t ports[NS];
    for (int i = 0; i < NS; i++) {
        srv_start(&srv[i]);
        ports[i] = srv[i].port;
    }
    dp_snapshot_t *snaps[4];
    for (int g = 0; g < 4; g++) {
        snaps[g] = dp_snapshot_new((uint64_t)g + 1);
        /* generation g drops endpoint g % NS from "a" and changes "b"'s protocol */
        uint16_t pa[NS - 1];
        for (int i = 0, k = 0; i < NS; i++) {
            if (i != g % NS)
                pa[k++] = ports[i];
        }
        dp_cluster_t *a = add_cluster(snaps[g], "a", NS - 1, pa, NULL, NULL, NULL);
        a->circuit_breakers.max_pending_requests = 20;
        a->circuit_breakers.max_connections = 6;
        a->idle_timeout_ms = 20;
        a->max_requests_per_connection = 3;
        dp_cluster_t *b = add_cluster(snaps[g], "b", NS, ports, NULL, NULL, NULL);
        b->proto = g % 2 ? DP_CLUSTER_PROTO_HTTP2 : DP_CLUSTER_PROTO_HTTP1;
        b->lb_policy = DP_LB_LEAST_REQUEST;
        seal(snaps[g]);
    }
    static req_t r[NR];
    memset(r, 0, sizeof(r));
    uint64_t x = getenv("SEED") ? strtoull(getenv("SEED"), NULL, 10) : 88172645463325252ull;
    int gen = 0;
    dp_upstreams_apply(ups, snaps[0]);
    for (int i = 0; i < NR; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int op = (int)(x % 10);
        if (op <= 4) {
            const dp_cluster_t *c = dp_snapshot_find_cluster(snaps[gen], op % 2 ? "a" : "b");
            dp_upstream_proto_t proto = dp_upstream_proto_for(c, DP_HTTP_11);
            r[i].w = dp_upstream_request(ups, c, proto, NULL, &rq_cb, &r[i]);
        } else if (op == 5) {
            int j = (int)((x >> 8) % (uint64_t)(i + 1));
            if (r[j].w) {
                dp_upstream_cancel(r[j].w);
                r[j].w = NULL;
                r[j].failed = 100; /* marks: must hear nothing more */
            }
        } else if (op == 6) {
            srv_t *sv = &srv[(x >> 8) % NS];
            if (sv->hold)
                srv_release(sv);
            else
                sv->hold = true;
        } else if (op == 7) {
            srv_drop_conns(&srv[(x >> 8) % NS]);
        } else if (op == 8) {
            gen = (gen + 1) % 4;
            dp_upstreams_apply(ups, snaps[gen]);
        }
        RUN_UNTIL(false, (x >> 16) % 4);
    }
    for (int i = 0; i < NS; i++)
        srv_release(&srv[i]);
    RUN_UNTIL(false, 100);
    dp_upstreams_close(ups);
    ups = NULL;
    int heard = 0;
    for (int i = 0; i < NR; i++) {
        ck_assert_int_le(r[i].ready + r[i].failed, r[i].failed >= 100 ? 100 : 1);
        ck_assert_int_le(r[i].done, 1);
        heard += r[i].ready;
    }
    ck_assert_int_gt(heard, 50);
    for (int i = 0; i < NS; i++)
        srv_stop(&srv[i]);
    for (int i = 0; i < 200 && uv_loop_alive(&loop); i++)
        uv_run(&loop, UV_RUN_ONCE);
    walk_count = 0;
    uv_walk(&loop, count_open, NULL);
    ck_assert_int_eq(walk_count, 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    for (int i = 0; i < NS; i++)
        srv_free(&srv[i]);
    dp_stats_free(stats);
    for (int i = 0; i < NR; i++)
        rq_clear(&r[i]);
    for (int g = 0; g < 4; g++)
        dp_snapshot_unref(snaps[g]);
}
END_TEST

START_TEST(test_max_connection_duration)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    srv[0].hold = true;
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "md", 1, &srv[0].port, NULL, NULL, NULL);
    cw->proto = DP_CLUSTER_PROTO_HTTP2;
    cw->max_connection_duration_ms = 80;
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "md");
    req_t r[2] = {{0}};
    r[0].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP2, NULL, &rq_cb, &r[0]);
    RUN_UNTIL(srv[0].lines == 1, 2000);
    /* past the duration the connection goes away (GOAWAY): its stream goes on, a new
     * request gets a new connection */
    RUN_UNTIL(false, 120);
    ck_assert_int_eq(r[0].done, 0);
    r[1].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP2, NULL, &rq_cb, &r[1]);
    RUN_UNTIL(srv[0].lines == 2, 2000);
    ck_assert_int_eq(srv[0].accepts, 2);
    srv[0].hold = false;
    srv_release(&srv[0]);
    RUN_UNTIL(r[0].done && r[1].done, 2000);
    ck_assert_int_eq(r[0].done_why, DP_RESET_NONE);
    ck_assert_int_eq(r[1].done, 1);
    /* the first closed once its stream was done; the second closes at its duration, idle */
    RUN_UNTIL(srv[0].closes == 2, 2000);
    ck_assert_int_eq(srv[0].closes, 2);
    for (int i = 0; i < 2; i++)
        rq_clear(&r[i]);
    dp_snapshot_unref(s);
    teardown_with(srv, 1);
}
END_TEST

/* ---- circuit breakers ---- */

/* Gives c the registry's shared breakers with thresholds th (both priorities), held by s. */
static void share_breakers(dp_snapshot_t *s, dp_cluster_t *c, dp_circuit_breakers_t th)
{
    dp_circuit_breakers_t both[DP_BR_NPRIO] = {th, th};
    c->circuit_breakers = th;
    c->breakers = dp_breakers_get(c->name, NULL, stats, both);
    dp_arena_add_cleanup(s->arena, dp_breakers_unref_cb, c->breakers);
}

static uint64_t gauge(const char *name)
{
    return dp_gauge_value(dp_stats_gauge(stats, name));
}

static uint64_t counter(const char *name)
{
    return dp_counter_value(dp_stats_counter(stats, name));
}

START_TEST(test_breaker_pending_overflow_at_one)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    srv[0].hold = true;
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "bp", 1, &srv[0].port, NULL, NULL, NULL);
    dp_circuit_breakers_t th = dp_circuit_breakers_default();
    th.max_connections = 1;
    th.max_pending_requests = 1;
    th.track_remaining = true;
    share_breakers(s, cw, th);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "bp");
    req_t r[3] = {{0}};
    /* the first takes the one connection, the second waits for it, the third overflows */
    r[0].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[0]);
    RUN_UNTIL(r[0].ready, 2000);
    ck_assert_int_eq(r[0].ready, 1);
    ck_assert_uint_eq(gauge("cluster.bp.circuit_breakers.default.cx_open"), 1);
    ck_assert_uint_eq(gauge("cluster.bp.circuit_breakers.default.remaining_cx"), 0);
    r[1].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[1]);
    ck_assert_ptr_nonnull(r[1].w);
    ck_assert_uint_eq(dp_counter_value(c->stats.cx_overflow), 1);
    ck_assert_uint_eq(gauge("cluster.bp.circuit_breakers.default.rq_pending_open"), 1);
    ck_assert_uint_eq(gauge("cluster.bp.circuit_breakers.default.remaining_pending"), 0);
    ck_assert_ptr_null(dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[2]));
    ck_assert_int_eq(r[2].failed, 1);
    ck_assert_int_eq(r[2].why, DP_RESET_OVERFLOW);
    ck_assert_uint_eq(dp_counter_value(c->stats.rq_pending_overflow), 1);
    /* the waiting one gets the connection when the first is done */
    srv[0].hold = false;
    srv_release(&srv[0]);
    RUN_UNTIL(r[0].done && r[1].done, 2000);
    ck_assert_int_eq(r[1].done, 1);
    ck_assert_int_eq(srv[0].accepts, 1);
    ck_assert_uint_eq(gauge("cluster.bp.circuit_breakers.default.rq_pending_open"), 0);
    ck_assert_uint_eq(gauge("cluster.bp.circuit_breakers.default.remaining_pending"), 1);
    for (int i = 0; i < 3; i++)
        rq_clear(&r[i]);
    dp_snapshot_unref(s);
    teardown_with(srv, 1);
    ck_assert_uint_eq(dp_breakers_registry_size(), 0);
}
END_TEST

START_TEST(test_breaker_requests_and_retries)
{
    setup();
    dp_snapshot_t *s = dp_snapshot_new(1);
    uint16_t port = 9;
    dp_cluster_t *cw = add_cluster(s, "br", 1, &port, NULL, NULL, NULL);
    dp_circuit_breakers_t th = dp_circuit_breakers_default();
    th.max_requests = 2;
    th.max_retries = 1;
    th.track_remaining = true;
    share_breakers(s, cw, th);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "br");
    ck_assert_uint_eq(gauge("cluster.br.circuit_breakers.default.remaining_rq"), 2);
    ck_assert(dp_upstream_rq_admit(ups, c));
    ck_assert(dp_upstream_rq_admit(ups, c));
    ck_assert_uint_eq(gauge("cluster.br.circuit_breakers.default.rq_open"), 1);
    ck_assert_uint_eq(gauge("cluster.br.circuit_breakers.default.remaining_rq"), 0);
    ck_assert(!dp_upstream_rq_admit(ups, c));
    /* Envoy counts a max_requests overflow as a pending overflow */
    ck_assert_uint_eq(dp_counter_value(c->stats.rq_pending_overflow), 1);
    dp_upstream_rq_release(ups, c);
    ck_assert_uint_eq(gauge("cluster.br.circuit_breakers.default.rq_open"), 0);
    ck_assert(dp_upstream_rq_admit(ups, c));
    dp_upstream_rq_release(ups, c);
    dp_upstream_rq_release(ups, c);
    ck_assert_uint_eq(gauge("cluster.br.circuit_breakers.default.remaining_rq"), 2);

    ck_assert(dp_upstream_retry_admit(ups, c));
    ck_assert_uint_eq(gauge("cluster.br.circuit_breakers.default.rq_retry_open"), 1);
    ck_assert_uint_eq(gauge("cluster.br.circuit_breakers.default.remaining_retries"), 0);
    ck_assert(!dp_upstream_retry_admit(ups, c));
    ck_assert_uint_eq(dp_counter_value(c->stats.rq_retry_overflow), 1);
    dp_upstream_retry_release(ups, c);
    ck_assert(dp_upstream_retry_admit(ups, c));
    dp_upstream_retry_release(ups, c);
    ck_assert_uint_eq(gauge("cluster.br.circuit_breakers.default.remaining_retries"), 1);
    /* the HIGH priority's gauges exist too, untouched */
    ck_assert_uint_eq(gauge("cluster.br.circuit_breakers.high.remaining_rq"), 2);

    /* a cluster built without shared breakers gets Envoy's defaults privately */
    dp_snapshot_t *s2 = dp_snapshot_new(2);
    add_cluster(s2, "priv", 1, &port, NULL, NULL, NULL);
    seal(s2);
    const dp_cluster_t *p = dp_snapshot_find_cluster(s2, "priv");
    int n = 0;
    while (n < 5000 && dp_upstream_rq_admit(ups, p))
        n++;
    ck_assert_int_eq(n, 1024);
    ck_assert_int_eq(dp_upstream_retry_admit(ups, p) + dp_upstream_retry_admit(ups, p) +
                         dp_upstream_retry_admit(ups, p) + dp_upstream_retry_admit(ups, p),
                     3);
    dp_snapshot_unref(s);
    dp_snapshot_unref(s2);
    teardown_with(NULL, 0);
}
END_TEST

START_TEST(test_breaker_istio_unlimited)
{
    setup();
    dp_snapshot_t *s = dp_snapshot_new(1);
    uint16_t port = 9;
    dp_cluster_t *cw = add_cluster(s, "outbound|9080||reviews.default.svc.cluster.local", 1, &port,
                                   NULL, NULL, NULL);
    /* getDefaultCircuitBreakerThresholds: 4294967295 everywhere, track_remaining */
    dp_circuit_breakers_t th = {.max_connections = 4294967295u,
                                .max_pending_requests = 4294967295u,
                                .max_requests = 4294967295u,
                                .max_retries = 4294967295u,
                                .max_connection_pools = UINT32_MAX,
                                .track_remaining = true};
    share_breakers(s, cw, th);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, cw->name);
    const char *pre = "cluster.outbound|9080||reviews.default.svc.cluster.local.circuit_breakers."
                      "default.";
    char name[256];
    snprintf(name, sizeof(name), "%sremaining_rq", pre);
    ck_assert_uint_eq(gauge(name), 4294967295u);
    for (int i = 0; i < 100000; i++)
        ck_assert(dp_upstream_rq_admit(ups, c));
    ck_assert_uint_eq(gauge(name), 4294967295u - 100000);
    snprintf(name, sizeof(name), "%srq_open", pre);
    ck_assert_uint_eq(gauge(name), 0);
    for (int i = 0; i < 100000; i++)
        dp_upstream_rq_release(ups, c);
    snprintf(name, sizeof(name), "%sremaining_rq", pre);
    ck_assert_uint_eq(gauge(name), 4294967295u);
    snprintf(name, sizeof(name), "%sremaining_cx", pre);
    ck_assert_uint_eq(gauge(name), 4294967295u);
    snprintf(name, sizeof(name), "%sremaining_retries", pre);
    ck_assert_uint_eq(gauge(name), 4294967295u);
    /* a release without an admit never takes a count below zero */
    dp_upstream_retry_release(ups, c);
    ck_assert_uint_eq(gauge(name), 4294967295u);
    dp_snapshot_unref(s);
    teardown_with(NULL, 0);
}
END_TEST

START_TEST(test_breaker_retry_budget)
{
    setup();
    dp_snapshot_t *s = dp_snapshot_new(1);
    uint16_t port = 9;
    dp_cluster_t *cw = add_cluster(s, "rbud", 1, &port, NULL, NULL, NULL);
    dp_circuit_breakers_t th = dp_circuit_breakers_default();
    th.has_retry_budget = true;
    th.retry_budget_percent = 50;
    th.min_retry_concurrency = 2;
    th.track_remaining = true;
    share_breakers(s, cw, th);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "rbud");
    /* nothing in flight: min_retry_concurrency */
    ck_assert(dp_upstream_retry_admit(ups, c));
    ck_assert(dp_upstream_retry_admit(ups, c));
    ck_assert(!dp_upstream_retry_admit(ups, c));
    /* ten requests in flight: 50% of them */
    for (int i = 0; i < 10; i++)
        ck_assert(dp_upstream_rq_admit(ups, c));
    int n = 0;
    while (n < 10 && dp_upstream_retry_admit(ups, c))
        n++;
    ck_assert_int_eq(n, 3); /* five in all */
    ck_assert_uint_eq(gauge("cluster.rbud.circuit_breakers.default.remaining_retries"), 0);
    ck_assert_uint_eq(dp_counter_value(c->stats.rq_retry_overflow), 2);
    for (int i = 0; i < 5; i++)
        dp_upstream_retry_release(ups, c);
    for (int i = 0; i < 10; i++)
        dp_upstream_rq_release(ups, c);
    dp_snapshot_unref(s);
    teardown_with(NULL, 0);
}
END_TEST

typedef struct admit_arg {
    const dp_cluster_t *c;
    int admitted;
} admit_arg_t;

static void *admit_thread(void *p)
{
    admit_arg_t *a = p;
    uv_loop_t l;
    uv_loop_init(&l);
    dp_upstreams_t *u = dp_upstreams_new(&l, tc_h1_new, tc_h2_new);
    /* churn: admit and release, then keep what can be had */
    for (int i = 0; i < 20000; i++) {
        if (dp_upstream_rq_admit(u, a->c))
            dp_upstream_rq_release(u, a->c);
    }
    for (int i = 0; i < 2000; i++)
        a->admitted += dp_upstream_rq_admit(u, a->c);
    dp_upstreams_close(u);
    uv_run(&l, UV_RUN_DEFAULT);
    uv_loop_close(&l);
    return NULL;
}

START_TEST(test_breaker_shared_across_workers)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    srv[0].hold = true;
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "bw", 1, &srv[0].port, NULL, NULL, NULL);
    dp_circuit_breakers_t th = dp_circuit_breakers_default();
    th.max_requests = 1500;
    th.max_pending_requests = 1;
    share_breakers(s, cw, th);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "bw");
    /* two workers' pools on two threads: of 4000 tries, exactly 1500 get in */
    admit_arg_t a[2] = {{c, 0}, {c, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, admit_thread, &a[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    ck_assert_int_eq(a[0].admitted + a[1].admitted, 1500);
    ck_assert_uint_eq(dp_breakers_count(c->breakers, DP_BR_DEFAULT, DP_BR_RQ), 1500);
    ck_assert_uint_ge(dp_counter_value(c->stats.rq_pending_overflow), 4000 - 1500);
    /* one worker's waiting request fills the other's pending breaker */
    uv_loop_t l2;
    uv_loop_init(&l2);
    dp_upstreams_t *u2 = dp_upstreams_new(&l2, tc_h1_new, tc_h2_new);
    req_t r[2] = {{0}};
    r[0].w = dp_upstream_request(ups, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[0]);
    ck_assert_ptr_nonnull(r[0].w);
    ck_assert_ptr_null(dp_upstream_request(u2, c, DP_UPSTREAM_HTTP1, NULL, &rq_cb, &r[1]));
    ck_assert_int_eq(r[1].why, DP_RESET_OVERFLOW);
    dp_upstreams_close(u2);
    uv_run(&l2, UV_RUN_DEFAULT);
    uv_loop_close(&l2);
    for (int i = 0; i < 2; i++)
        rq_clear(&r[i]);
    dp_snapshot_unref(s);
    teardown_with(srv, 1);
}
END_TEST

/* Two workers opening and closing connections on one breaker at once: each round ends with
 * nothing open, and the gauges must say so (a worker's stale store used to land last now and
 * then, leaving cx_open 1 and remaining_cx 0 until the next change). */
typedef struct {
    dp_breakers_t *b;
    _Atomic int *gate;
    int rounds, stale;
    bool checks;
} churn_arg_t;

/* Waits until both threads have passed the gate's step'th mark. */
static void churn_gate(_Atomic int *gate, int step)
{
    atomic_fetch_add(gate, 1);
    for (unsigned spins = 0; atomic_load(gate) < 2 * step; spins++) {
        if (spins > 2000)
            sched_yield(); /* the other may be waiting for this CPU */
    }
}

static void *churn_thread(void *arg)
{
    churn_arg_t *a = arg;
    for (int r = 0; r < a->rounds; r++) {
        churn_gate(a->gate, 3 * r + 1); /* both enter round r together */
        for (int i = 0; i < 32; i++) {
            dp_breakers_take(a->b, DP_BR_DEFAULT, DP_BR_CX);
            dp_breakers_release(a->b, DP_BR_DEFAULT, DP_BR_CX);
        }
        churn_gate(a->gate, 3 * r + 2); /* both are done: nothing is open */
        if (a->checks && (gauge("cluster.settle.circuit_breakers.default.cx_open") != 0 ||
                          gauge("cluster.settle.circuit_breakers.default.remaining_cx") != 1))
            a->stale++;
        churn_gate(a->gate, 3 * r + 3);
    }
    return NULL;
}

START_TEST(test_breaker_gauges_settle_across_workers)
{
    setup();
    dp_circuit_breakers_t th = dp_circuit_breakers_default();
    th.max_connections = 1;
    th.track_remaining = true;
    dp_circuit_breakers_t both[DP_BR_NPRIO] = {th, th};
    dp_breakers_t *b = dp_breakers_get("settle", NULL, stats, both);
    _Atomic int gate = 0;
    churn_arg_t a[2] = {{b, &gate, 5000, 0, true}, {b, &gate, 5000, 0, false}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, churn_thread, &a[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    ck_assert_uint_eq(dp_breakers_count(b, DP_BR_DEFAULT, DP_BR_CX), 0);
    ck_assert_int_eq(a[0].stale, 0);
    dp_breakers_unref(b);
    teardown_with(NULL, 0);
}
END_TEST

START_TEST(test_breaker_survives_rebuild)
{
    setup();
    uint16_t port = 9;
    dp_circuit_breakers_t th = dp_circuit_breakers_default();
    th.max_requests = 3;
    dp_snapshot_t *s1 = dp_snapshot_new(1);
    share_breakers(s1, add_cluster(s1, "rb", 1, &port, NULL, NULL, NULL), th);
    seal(s1);
    const dp_cluster_t *c1 = dp_snapshot_find_cluster(s1, "rb");
    ck_assert(dp_upstream_rq_admit(ups, c1));
    ck_assert(dp_upstream_rq_admit(ups, c1));
    /* the next generation shares the counts; its threshold applies */
    th.max_requests = 2;
    dp_snapshot_t *s2 = dp_snapshot_new(2);
    share_breakers(s2, add_cluster(s2, "rb", 1, &port, NULL, NULL, NULL), th);
    seal(s2);
    dp_snapshot_unref(s1);
    const dp_cluster_t *c2 = dp_snapshot_find_cluster(s2, "rb");
    ck_assert(!dp_upstream_rq_admit(ups, c2));
    dp_upstream_rq_release(ups, c2);
    ck_assert(dp_upstream_rq_admit(ups, c2));
    ck_assert_uint_eq(dp_breakers_registry_size(), 1);
    dp_snapshot_unref(s2);
    teardown_with(NULL, 0);
    ck_assert_uint_eq(dp_breakers_registry_size(), 0);
}
END_TEST

/* ---- outlier detection ---- */

typedef struct od_hold {
    dp_endpoint_t *eps;
    size_t n;
} od_hold_t;

static void od_hold_cleanup(void *p)
{
    od_hold_t *h = p;
    dp_outlier_hosts_unref(h->eps, h->n);
}

/* Gives c a detector with cfg, as xds/snapshot_build.c does. */
static void give_outlier(dp_snapshot_t *s, dp_cluster_t *c, const dp_outlier_config_t *cfg)
{
    c->has_outlier_detection = true;
    c->outlier_detection = *cfg;
    c->outlier = dp_outlier_get(c->name, NULL, stats, cfg);
    dp_arena_add_cleanup(s->arena, dp_outlier_unref_cb, c->outlier);
    od_hold_t *h = dp_arena_alloc(s->arena, sizeof(*h));
    h->eps = (dp_endpoint_t *)c->endpoints;
    h->n = c->n_endpoints;
    dp_outlier_set_hosts(c->outlier, h->eps, h->n);
    dp_arena_add_cleanup(s->arena, od_hold_cleanup, h);
}

static void results(const dp_cluster_t *c, size_t host, int n, int status, dp_reset_reason_t why)
{
    for (int i = 0; i < n; i++)
        dp_upstream_host_result(ups, c, &c->endpoints[host].addr, status, why);
}

/* The ports n requests went to: counts per endpoint index. */
static void spread(const dp_cluster_t *c, int n, int *per)
{
    req_t r = {0};
    for (int i = 0; i < n; i++) {
        one_request(c, NULL, &r);
        ck_assert_int_eq(r.done, 1);
        for (size_t k = 0; k < c->n_endpoints; k++) {
            if (ntohs(c->endpoints[k].addr.in.sin_port) == r.port)
                per[k]++;
        }
    }
    rq_clear(&r);
}

static uint64_t od_stat(const char *cl, const char *suffix)
{
    char name[256];
    snprintf(name, sizeof(name), "cluster.%s.outlier_detection.%s", cl, suffix);
    if (strcmp(suffix, "ejections_active") == 0)
        return gauge(name);
    return counter(name);
}

static dp_outlier_config_t fast_od(void)
{
    dp_outlier_config_t cfg = dp_outlier_config_default();
    cfg.interval_ms = 50;
    cfg.base_ejection_time_ms = 100;
    cfg.max_ejection_percent = 100;
    return cfg;
}

START_TEST(test_outlier_consecutive_5xx_and_back_off)
{
    setup();
    srv_t srv[2];
    uint16_t ports[2];
    for (int i = 0; i < 2; i++) {
        srv_start(&srv[i]);
        ports[i] = srv[i].port;
    }
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "od", 2, ports, NULL, NULL, NULL);
    dp_outlier_config_t cfg = fast_od();
    cfg.max_ejection_percent = 10; /* Envoy's default: the first of two may go */
    give_outlier(s, cw, &cfg);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "od");
    /* four 5xx and a success: nothing */
    results(c, 0, 4, 503, DP_RESET_NONE);
    results(c, 0, 1, 200, DP_RESET_NONE);
    results(c, 0, 4, 500, DP_RESET_NONE);
    ck_assert_uint_eq(od_stat("od", "ejections_active"), 0);
    /* the fifth in a row ejects at once */
    results(c, 0, 1, 500, DP_RESET_NONE);
    ck_assert_uint_eq(od_stat("od", "ejections_active"), 1);
    ck_assert_uint_eq(od_stat("od", "ejections_detected_consecutive_5xx"), 1);
    ck_assert_uint_eq(od_stat("od", "ejections_enforced_consecutive_5xx"), 1);
    ck_assert_uint_eq(od_stat("od", "ejections_enforced_total"), 1);
    ck_assert_uint_eq(od_stat("od", "ejections_total"), 1);
    ck_assert(dp_outlier_host_ejected(c->endpoints[0].outlier));
    int per[2] = {0, 0};
    spread(c, 6, per);
    ck_assert_int_eq(per[0], 0);
    ck_assert_int_eq(per[1], 6);
    /* the other host may not go too: 50% ejected is over 10% (both its consecutive-5xx and
     * its gateway-failure detection overflow, as in Envoy, which checks the percentage before
     * enforcing) */
    results(c, 1, 5, 502, DP_RESET_NONE);
    ck_assert_uint_eq(od_stat("od", "ejections_active"), 1);
    ck_assert_uint_eq(od_stat("od", "ejections_overflow"), 2);
    ck_assert_uint_eq(od_stat("od", "ejections_detected_consecutive_gateway_failure"), 1);
    results(c, 1, 1, 200, DP_RESET_NONE);
    /* after base_ejection_time (100 ms), the next interval brings it back */
    RUN_UNTIL(false, 60);
    dp_outlier_tick(c->outlier, uv_now(&loop));
    ck_assert(dp_outlier_host_ejected(c->endpoints[0].outlier));
    RUN_UNTIL(false, 60);
    memset(per, 0, sizeof(per));
    spread(c, 4, per);
    ck_assert_uint_eq(od_stat("od", "ejections_active"), 0);
    ck_assert_int_eq(per[0], 2);
    /* ejected again at once: twice as long this time (200 ms) */
    results(c, 0, 5, 503, DP_RESET_NONE);
    ck_assert_uint_eq(od_stat("od", "ejections_active"), 1);
    uint64_t t0 = uv_now(&loop);
    RUN_UNTIL(false, 130);
    dp_outlier_tick(c->outlier, uv_now(&loop));
    ck_assert(dp_outlier_host_ejected(c->endpoints[0].outlier));
    RUN_UNTIL(false, 100);
    ck_assert_uint_ge(uv_now(&loop) - t0, 200);
    dp_outlier_tick(c->outlier, uv_now(&loop));
    ck_assert(!dp_outlier_host_ejected(c->endpoints[0].outlier));
    ck_assert_uint_eq(od_stat("od", "ejections_enforced_consecutive_5xx"), 2);
    dp_snapshot_unref(s);
    teardown_with(srv, 2);
    ck_assert_uint_eq(dp_outlier_registry_size(), 0);
}
END_TEST

START_TEST(test_outlier_max_ejection_percent_and_panic)
{
    setup();
    srv_t srv[3];
    uint16_t ports[3];
    for (int i = 0; i < 3; i++) {
        srv_start(&srv[i]);
        ports[i] = srv[i].port;
    }
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "mp", 3, ports, NULL, NULL, NULL);
    /* Without a panic threshold the balancer skips the ejected hosts (with Envoy's 50%, one
     * healthy host of three is under it, and all three would take traffic). */
    cw->lb_has_panic_threshold = true;
    cw->lb_panic_threshold = 0;
    dp_outlier_config_t cfg = fast_od();
    cfg.base_ejection_time_ms = 60000;
    cfg.max_ejection_percent = 40;
    give_outlier(s, cw, &cfg);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "mp");
    results(c, 0, 5, 500, DP_RESET_NONE); /* 0% < 40%: ejected */
    results(c, 1, 5, 500, DP_RESET_NONE); /* 33% < 40%: ejected */
    results(c, 2, 5, 500, DP_RESET_NONE); /* 66%: no */
    ck_assert_uint_eq(od_stat("mp", "ejections_active"), 2);
    ck_assert_uint_eq(od_stat("mp", "ejections_overflow"), 1);
    ck_assert_uint_eq(od_stat("mp", "ejections_detected_consecutive_5xx"), 3);
    int per[3] = {0, 0, 0};
    spread(c, 3, per);
    ck_assert_int_eq(per[2], 3);
    dp_snapshot_unref(s);

    /* one host, 100%: ejected, and still sent to (panic) */
    s = dp_snapshot_new(2);
    cw = add_cluster(s, "pa", 1, ports, NULL, NULL, NULL);
    cfg.max_ejection_percent = 100;
    give_outlier(s, cw, &cfg);
    seal(s);
    c = dp_snapshot_find_cluster(s, "pa");
    results(c, 0, 5, 500, DP_RESET_NONE);
    ck_assert_uint_eq(od_stat("pa", "ejections_active"), 1);
    int one[1] = {0};
    spread(c, 2, one);
    ck_assert_int_eq(one[0], 2);
    dp_snapshot_unref(s);
    teardown_with(srv, 3);
}
END_TEST

START_TEST(test_outlier_gateway_failure_enforcing)
{
    setup();
    uint16_t ports[2] = {9, 10};
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "gw", 2, ports, NULL, NULL, NULL);
    dp_outlier_config_t cfg = fast_od();
    cfg.consecutive_5xx = 1000;
    cfg.consecutive_gateway_failure = 3;
    give_outlier(s, cw, &cfg); /* enforcing_consecutive_gateway_failure: Envoy's 0 */
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "gw");
    /* a 500 between gateway errors breaks the run */
    results(c, 0, 2, 502, DP_RESET_NONE);
    results(c, 0, 1, 500, DP_RESET_NONE);
    results(c, 0, 2, 504, DP_RESET_NONE);
    ck_assert_uint_eq(od_stat("gw", "ejections_detected_consecutive_gateway_failure"), 0);
    /* detected, not enforced */
    results(c, 0, 1, 503, DP_RESET_NONE);
    ck_assert_uint_eq(od_stat("gw", "ejections_detected_consecutive_gateway_failure"), 1);
    ck_assert_uint_eq(od_stat("gw", "ejections_enforced_consecutive_gateway_failure"), 0);
    ck_assert_uint_eq(od_stat("gw", "ejections_active"), 0);
    /* a connect failure counts as a gateway error without split */
    dp_snapshot_t *s2 = dp_snapshot_new(2);
    cw = add_cluster(s2, "gw", 2, ports, NULL, NULL, NULL);
    cfg.enforcing_consecutive_gateway_failure = 100;
    give_outlier(s2, cw, &cfg);
    seal(s2);
    dp_snapshot_unref(s);
    c = dp_snapshot_find_cluster(s2, "gw");
    results(c, 1, 2, 502, DP_RESET_NONE);
    results(c, 1, 1, 0, DP_RESET_CONNECT_FAIL);
    ck_assert_uint_eq(od_stat("gw", "ejections_enforced_consecutive_gateway_failure"), 1);
    ck_assert_uint_eq(od_stat("gw", "ejections_active"), 1);
    ck_assert(dp_outlier_host_ejected(c->endpoints[1].outlier));
    /* overflow and no-host failures are not the host's */
    results(c, 0, 10, 0, DP_RESET_OVERFLOW);
    ck_assert(!dp_outlier_host_ejected(c->endpoints[0].outlier));
    dp_snapshot_unref(s2);
    teardown_with(NULL, 0);
}
END_TEST

START_TEST(test_outlier_local_origin_split)
{
    setup();
    uint16_t ports[2] = {9, 10};
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "lo", 2, ports, NULL, NULL, NULL);
    dp_outlier_config_t cfg = fast_od();
    cfg.split_external_local_origin_errors = true;
    cfg.consecutive_5xx = 3;
    cfg.consecutive_local_origin_failure = 4;
    give_outlier(s, cw, &cfg);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "lo");
    /* with split, local failures do not count as 5xx, and a response resets their run */
    results(c, 0, 3, 0, DP_RESET_CONNECT_FAIL);
    results(c, 0, 1, 500, DP_RESET_NONE);
    results(c, 0, 3, 0, DP_RESET_CONNECT_TIMEOUT);
    ck_assert_uint_eq(od_stat("lo", "ejections_active"), 0);
    ck_assert_uint_eq(od_stat("lo", "ejections_detected_consecutive_5xx"), 0);
    results(c, 0, 1, 0, DP_RESET_REMOTE);
    ck_assert_uint_eq(od_stat("lo", "ejections_detected_consecutive_local_origin_failure"), 1);
    ck_assert_uint_eq(od_stat("lo", "ejections_enforced_consecutive_local_origin_failure"), 1);
    ck_assert_uint_eq(od_stat("lo", "ejections_active"), 1);
    /* without split, they are 5xx */
    dp_snapshot_t *s2 = dp_snapshot_new(2);
    cw = add_cluster(s2, "lo2", 2, ports, NULL, NULL, NULL);
    cfg.split_external_local_origin_errors = false;
    give_outlier(s2, cw, &cfg);
    seal(s2);
    c = dp_snapshot_find_cluster(s2, "lo2");
    results(c, 0, 2, 0, DP_RESET_CONNECT_FAIL);
    results(c, 0, 1, 0, DP_RESET_CONNECT_TIMEOUT);
    ck_assert_uint_eq(od_stat("lo2", "ejections_enforced_consecutive_5xx"), 1);
    ck_assert_uint_eq(od_stat("lo2", "ejections_detected_consecutive_local_origin_failure"), 0);
    dp_snapshot_unref(s);
    dp_snapshot_unref(s2);
    teardown_with(NULL, 0);
}
END_TEST

START_TEST(test_outlier_success_rate_and_failure_percentage)
{
    setup();
    uint16_t ports[5] = {9, 10, 11, 12, 13};
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "sr", 5, ports, NULL, NULL, NULL);
    dp_outlier_config_t cfg = fast_od();
    cfg.consecutive_5xx = 0; /* off */
    cfg.consecutive_gateway_failure = 0;
    cfg.success_rate_request_volume = 20;
    cfg.failure_percentage_request_volume = 20;
    cfg.enforcing_success_rate = 0;
    cfg.enforcing_failure_percentage = 100;
    give_outlier(s, cw, &cfg);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "sr");
    /* host 0 fails 90%, host 1 20% (below the 85% threshold), the others never; host 4 has
     * too few requests to count */
    for (int i = 0; i < 20; i++) {
        results(c, 0, 1, i < 18 ? 500 : 200, DP_RESET_NONE);
        results(c, 1, 1, i < 4 ? 500 : 200, DP_RESET_NONE);
        results(c, 2, 1, 200, DP_RESET_NONE);
        results(c, 3, 1, 200, DP_RESET_NONE);
    }
    results(c, 4, 5, 200, DP_RESET_NONE);
    ck_assert_uint_eq(od_stat("sr", "ejections_active"), 0);
    RUN_UNTIL(false, 60);
    dp_outlier_tick(c->outlier, uv_now(&loop));
    /* 4 hosts with the volume: fewer than success_rate_minimum_hosts (5), nothing */
    ck_assert_uint_eq(od_stat("sr", "ejections_detected_success_rate"), 0);
    ck_assert_uint_eq(od_stat("sr", "ejections_active"), 0);
    /* now five: success rate detects host 0 (not enforced), failure percentage ejects it */
    for (int i = 0; i < 20; i++) {
        results(c, 0, 1, i < 18 ? 500 : 200, DP_RESET_NONE);
        for (size_t h = 1; h < 5; h++)
            results(c, h, 1, 200, DP_RESET_NONE);
    }
    RUN_UNTIL(false, 60);
    dp_outlier_tick(c->outlier, uv_now(&loop));
    ck_assert_uint_eq(od_stat("sr", "ejections_detected_success_rate"), 1);
    ck_assert_uint_eq(od_stat("sr", "ejections_enforced_success_rate"), 0);
    ck_assert_uint_eq(od_stat("sr", "ejections_detected_failure_percentage"), 1);
    ck_assert_uint_eq(od_stat("sr", "ejections_enforced_failure_percentage"), 1);
    ck_assert_uint_eq(od_stat("sr", "ejections_active"), 1);
    ck_assert(dp_outlier_host_ejected(c->endpoints[0].outlier));
    ck_assert(!dp_outlier_host_ejected(c->endpoints[1].outlier));
    dp_snapshot_unref(s);
    teardown_with(NULL, 0);
}
END_TEST

START_TEST(test_outlier_host_set_changes)
{
    setup();
    uint16_t ports[3] = {9, 10, 11};
    dp_outlier_config_t cfg = fast_od();
    cfg.base_ejection_time_ms = 60000;
    dp_snapshot_t *s1 = dp_snapshot_new(1);
    give_outlier(s1, add_cluster(s1, "hs", 2, ports, NULL, NULL, NULL), &cfg);
    seal(s1);
    const dp_cluster_t *c1 = dp_snapshot_find_cluster(s1, "hs");
    results(c1, 1, 5, 500, DP_RESET_NONE);
    ck_assert_uint_eq(od_stat("hs", "ejections_active"), 1);
    /* the next generation keeps host 1 (and its ejection), adds host 2 */
    dp_snapshot_t *s2 = dp_snapshot_new(2);
    give_outlier(s2, add_cluster(s2, "hs", 3, ports, NULL, NULL, NULL), &cfg);
    seal(s2);
    const dp_cluster_t *c2 = dp_snapshot_find_cluster(s2, "hs");
    ck_assert_ptr_eq(c2->endpoints[1].outlier, c1->endpoints[1].outlier);
    ck_assert(dp_outlier_host_ejected(c2->endpoints[1].outlier));
    ck_assert_uint_eq(dp_outlier_host_count(c2->outlier), 3);
    dp_snapshot_unref(s1);
    /* one without host 1: its ejection ends with it */
    dp_snapshot_t *s3 = dp_snapshot_new(3);
    uint16_t p3[2] = {9, 11};
    give_outlier(s3, add_cluster(s3, "hs", 2, p3, NULL, NULL, NULL), &cfg);
    seal(s3);
    dp_snapshot_unref(s2);
    ck_assert_uint_eq(od_stat("hs", "ejections_active"), 0);
    ck_assert_uint_eq(dp_outlier_host_count(dp_snapshot_find_cluster(s3, "hs")->outlier), 2);
    dp_snapshot_unref(s3);
    teardown_with(NULL, 0);
    ck_assert_uint_eq(dp_outlier_registry_size(), 0);
}
END_TEST

typedef struct od_arg {
    const dp_cluster_t *c;
    uint64_t seed;
} od_arg_t;

static void *od_thread(void *p)
{
    od_arg_t *a = p;
    uint64_t x = a->seed;
    for (int i = 0; i < 30000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t h = x % a->c->n_endpoints;
        int status = (x >> 8) % 3 == 0 ? 200 : (x >> 8) % 3 == 1 ? 503 : 0;
        dp_outlier_result(a->c->endpoints[h].outlier,
                          status ? DP_OUTLIER_EXTERNAL : DP_OUTLIER_LOCAL_FAILURE, status,
                          (x >> 20) & 1, uv_hrtime() / 1000000);
    }
    return NULL;
}

START_TEST(test_outlier_concurrent_results)
{
    setup();
    uint16_t ports[3] = {9, 10, 11};
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "oc", 3, ports, NULL, NULL, NULL);
    dp_outlier_config_t cfg = fast_od();
    cfg.interval_ms = 1;
    cfg.base_ejection_time_ms = 1;
    cfg.max_ejection_time_ms = 3;
    cfg.consecutive_5xx = 2;
    cfg.enforcing_consecutive_gateway_failure = 100;
    cfg.success_rate_minimum_hosts = 1;
    cfg.success_rate_request_volume = 1;
    cfg.failure_percentage_minimum_hosts = 1;
    cfg.failure_percentage_request_volume = 1;
    cfg.enforcing_failure_percentage = 100;
    give_outlier(s, cw, &cfg);
    seal(s);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "oc");
    /* three threads feed results and run intervals at once: the detector stays consistent */
    od_arg_t a[3] = {{c, 88172645463325252ull}, {c, 1181783497276652981ull}, {c, 7ull}};
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, od_thread, &a[i]), 0);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    uint32_t n = dp_outlier_ejected_count(c->outlier);
    ck_assert_uint_le(n, 3);
    ck_assert_uint_eq(od_stat("oc", "ejections_active"), n);
    uint32_t flagged = 0;
    for (size_t i = 0; i < 3; i++)
        flagged += dp_outlier_host_ejected(c->endpoints[i].outlier);
    ck_assert_uint_eq(flagged, n);
    ck_assert_uint_gt(od_stat("oc", "ejections_enforced_total"), 0);
    dp_snapshot_unref(s);
    teardown_with(NULL, 0);
}
END_TEST

START_TEST(test_tcp_keepalive)
{
    setup();
    srv_t srv[1];
    srv_start(&srv[0]);
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_cluster_t *cw = add_cluster(s, "ka", 1, &srv[0].port, NULL, NULL, NULL);
    cw->tcp_keepalive = true;
    cw->keepalive_probes = 3;
    cw->keepalive_time_s = 17;
    cw->keepalive_interval_s = 5;
    add_cluster(s, "noka", 1, &srv[0].port, NULL, NULL, NULL);
    seal(s);
    req_t r = {0};
    one_request(dp_snapshot_find_cluster(s, "ka"), NULL, &r);
    ck_assert_int_eq(r.done, 1);
    ck_assert_int_ne(ka_on, 0);
    ck_assert_int_eq(ka_cnt, 3);
    ck_assert_int_eq(ka_idle, 17);
    ck_assert_int_eq(ka_intvl, 5);
    one_request(dp_snapshot_find_cluster(s, "noka"), NULL, &r);
    ck_assert_int_eq(r.done, 1);
    ck_assert_int_eq(ka_on, 0);
    rq_clear(&r);
    dp_snapshot_unref(s);
    teardown_with(srv, 1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("upstream");
    TCase *tc = tcase_create("pools");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_weighted_round_robin_and_reuse);
    tcase_add_test(tc, test_health_and_priority_failover);
    tcase_add_test(tc, test_pending_queue_and_overflow);
    tcase_add_test(tc, test_connect_failure);
    tcase_add_test(tc, test_connect_timeout);
    tcase_add_test(tc, test_source_address);
    tcase_add_test(tc, test_strict_dns);
    tcase_add_test(tc, test_logical_dns);
    tcase_add_test(tc, test_original_dst);
    tcase_add_test(tc, test_idle_timeout);
    tcase_add_test(tc, test_idle_timeout_counts_from_last_use);
    tcase_add_test(tc, test_snapshot_change_drains);
    tcase_add_test(tc, test_h2_multiplexing_and_max_requests);
    tcase_add_test(tc, test_close_with_pending);
    tcase_add_test(tc, test_max_connections);
    tcase_add_test(tc, test_unix_socket_endpoint);
    tcase_add_test(tc, test_hash_and_random_policies);
    tcase_add_test(tc, test_least_request);
    tcase_add_test(tc, test_random_operations);
    tcase_add_test(tc, test_breaker_pending_overflow_at_one);
    tcase_add_test(tc, test_breaker_requests_and_retries);
    tcase_add_test(tc, test_breaker_istio_unlimited);
    tcase_add_test(tc, test_breaker_retry_budget);
    tcase_add_test(tc, test_breaker_shared_across_workers);
    tcase_add_test(tc, test_breaker_gauges_settle_across_workers);
    tcase_add_test(tc, test_breaker_survives_rebuild);
    tcase_add_test(tc, test_outlier_consecutive_5xx_and_back_off);
    tcase_add_test(tc, test_outlier_max_ejection_percent_and_panic);
    tcase_add_test(tc, test_outlier_gateway_failure_enforcing);
    tcase_add_test(tc, test_outlier_local_origin_split);
    tcase_add_test(tc, test_outlier_success_rate_and_failure_percentage);
    tcase_add_test(tc, test_outlier_host_set_changes);
    tcase_add_test(tc, test_outlier_concurrent_results);
    tcase_add_test(tc, test_tcp_keepalive);
    tcase_add_test(tc, test_max_connection_duration);
    suite_add_tcase(s, tc);
    return check_run(s);
}
