#include "dataplane/health_check.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/log.h"

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL)
        abort();
    return p;
}

/* ---- the process-wide table ---- */

struct target;

struct dp_hc_host {
    dp_hc_host_t *next;
    uint64_t hash;
    char *cluster;
    dp_addr_t addr; /* unix_path is owned */
    unsigned refs;  /* under tab_mu */
    atomic_int healthy;
    struct target *target; /* the checker's, on the checker's thread */
};

#define TAB_BUCKETS 4096
static pthread_mutex_t tab_mu = PTHREAD_MUTEX_INITIALIZER;
static dp_hc_host_t *tab[TAB_BUCKETS];
static size_t tab_n;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t key_hash(const char *cluster, const dp_addr_t *a)
{
    uint64_t h = fnv(14695981039346656037ull, cluster, strlen(cluster) + 1);
    h = fnv(h, &a->sa.sa_family, sizeof(a->sa.sa_family));
    if (a->sa.sa_family == AF_INET) {
        h = fnv(h, &a->in.sin_addr, sizeof(a->in.sin_addr));
        h = fnv(h, &a->in.sin_port, sizeof(a->in.sin_port));
    } else if (a->sa.sa_family == AF_INET6) {
        h = fnv(h, &a->in6.sin6_addr, sizeof(a->in6.sin6_addr));
        h = fnv(h, &a->in6.sin6_port, sizeof(a->in6.sin6_port));
    } else if (a->unix_path) {
        h = fnv(h, a->unix_path, strlen(a->unix_path));
    }
    return h;
}

static bool addr_same(const dp_addr_t *a, const dp_addr_t *b)
{
    if (a->sa.sa_family != b->sa.sa_family)
        return false;
    switch (a->sa.sa_family) {
    case AF_INET:
        return a->in.sin_port == b->in.sin_port &&
               memcmp(&a->in.sin_addr, &b->in.sin_addr, sizeof(a->in.sin_addr)) == 0;
    case AF_INET6:
        return a->in6.sin6_port == b->in6.sin6_port &&
               memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, sizeof(a->in6.sin6_addr)) == 0;
    case AF_UNIX:
        return a->unix_path && b->unix_path && strcmp(a->unix_path, b->unix_path) == 0;
    default:
        return false;
    }
}

static dp_hc_host_t *tab_find_locked(const char *cluster, const dp_addr_t *a, uint64_t h)
{
    for (dp_hc_host_t *e = tab[h % TAB_BUCKETS]; e; e = e->next) {
        if (e->hash == h && strcmp(e->cluster, cluster) == 0 && addr_same(&e->addr, a))
            return e;
    }
    return NULL;
}

static dp_hc_host_t *host_acquire(const char *cluster, const dp_addr_t *a)
{
    uint64_t h = key_hash(cluster, a);
    pthread_mutex_lock(&tab_mu);
    dp_hc_host_t *e = tab_find_locked(cluster, a, h);
    if (e == NULL) {
        e = xcalloc(1, sizeof(*e));
        e->hash = h;
        e->cluster = strdup(cluster);
        e->addr = *a;
        e->addr.unix_path = a->unix_path ? strdup(a->unix_path) : NULL;
        if (e->cluster == NULL || (a->unix_path && e->addr.unix_path == NULL))
            abort();
        atomic_init(&e->healthy, 0); /* unhealthy until the first check passes */
        e->next = tab[h % TAB_BUCKETS];
        tab[h % TAB_BUCKETS] = e;
        tab_n++;
    }
    e->refs++;
    pthread_mutex_unlock(&tab_mu);
    return e;
}

static void host_unref(dp_hc_host_t *e)
{
    if (e == NULL)
        return;
    pthread_mutex_lock(&tab_mu);
    if (--e->refs > 0) {
        pthread_mutex_unlock(&tab_mu);
        return;
    }
    for (dp_hc_host_t **pp = &tab[e->hash % TAB_BUCKETS]; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    tab_n--;
    pthread_mutex_unlock(&tab_mu);
    free(e->cluster);
    free((char *)e->addr.unix_path);
    free(e);
}

int dp_health_table_state(const char *cluster, const dp_addr_t *addr)
{
    pthread_mutex_lock(&tab_mu);
    dp_hc_host_t *e = tab_find_locked(cluster, addr, key_hash(cluster, addr));
    int r = e ? atomic_load(&e->healthy) : -1;
    pthread_mutex_unlock(&tab_mu);
    return r;
}

size_t dp_health_table_size(void)
{
    pthread_mutex_lock(&tab_mu);
    size_t n = tab_n;
    pthread_mutex_unlock(&tab_mu);
    return n;
}

/* ---- config ---- */

static void cluster_health_cleanup(void *p)
{
    dp_cluster_health_t *ch = p;
    for (size_t i = 0; i < ch->n_hosts; i++)
        host_unref(ch->hosts[i]);
}

static bool check_valid(const dp_health_check_t *hc)
{
    if (hc->timeout_ms == 0 || hc->interval_ms == 0 || hc->unhealthy_threshold == 0 ||
        hc->healthy_threshold == 0)
        return false;
    if (hc->kind == DP_HC_TCP)
        return hc->send_len <= DP_HC_MAX_PAYLOAD && hc->receive_len <= DP_HC_MAX_PAYLOAD;
    size_t head = 64 + (hc->path ? strlen(hc->path) : 1) + (hc->host ? strlen(hc->host) : 0);
    for (size_t i = 0; i < hc->n_headers; i++)
        head += strlen(hc->headers[i].name) + strlen(hc->headers[i].value) + 4;
    return head <= DP_HC_MAX_REQUEST;
}

static const void *arena_copy(dp_arena_t *a, const void *p, size_t n)
{
    if (n == 0 || p == NULL)
        return NULL;
    void *q = dp_arena_alloc(a, n);
    memcpy(q, p, n);
    return q;
}

dp_cluster_health_t *dp_health_cluster_new(dp_snapshot_t *s, dp_stats_t *st, const char *cluster,
                                           const char *stat_name, const dp_health_check_t *hc,
                                           const dp_endpoint_t *eps, size_t n_eps)
{
    if (hc == NULL || !check_valid(hc))
        return NULL;
    dp_arena_t *a = s->arena;
    dp_health_check_t *c = dp_arena_alloc(a, sizeof(*c));
    *c = *hc;
    c->path = dp_arena_strdup(a, hc->path && hc->path[0] ? hc->path : "/");
    c->host = dp_arena_strdup(a, hc->host && hc->host[0] ? hc->host : cluster);
    c->expected = arena_copy(a, hc->expected, hc->n_expected * sizeof(*hc->expected));
    if (c->expected == NULL)
        c->n_expected = 0;
    dp_hc_header_t *hd = hc->n_headers ? dp_arena_alloc(a, hc->n_headers * sizeof(*hd)) : NULL;
    for (size_t i = 0; i < hc->n_headers; i++) {
        hd[i].name = dp_arena_strdup(a, hc->headers[i].name);
        hd[i].value = dp_arena_strdup(a, hc->headers[i].value);
    }
    c->headers = hd;
    c->send = arena_copy(a, hc->send, hc->send_len);
    c->send_len = c->send ? hc->send_len : 0;
    c->receive = arena_copy(a, hc->receive, hc->receive_len);
    c->receive_len = c->receive ? hc->receive_len : 0;

    dp_cluster_health_t *ch = dp_arena_alloc(a, sizeof(*ch));
    ch->cluster = dp_arena_strdup(a, cluster);
    ch->check = c;
    ch->endpoints = eps;
    ch->n_hosts = n_eps;
    ch->hosts = n_eps ? dp_arena_alloc(a, n_eps * sizeof(*ch->hosts)) : NULL;
    for (size_t i = 0; i < n_eps; i++) {
        int f = eps[i].addr.sa.sa_family;
        if (f == AF_INET || f == AF_INET6 || (f == AF_UNIX && eps[i].addr.unix_path))
            ch->hosts[i] = host_acquire(cluster, &eps[i].addr);
    }
    dp_arena_add_cleanup(a, cluster_health_cleanup, ch);
    if (st) {
        char name[512];
#define HC_STAT(kind, field, suffix)                                             \
    (snprintf(name, sizeof(name), "cluster.%s.health_check." suffix, stat_name), \
     ch->stats.field = dp_stats_##kind(st, name))
        HC_STAT(counter, attempt, "attempt");
        HC_STAT(counter, success, "success");
        HC_STAT(counter, failure, "failure");
        HC_STAT(counter, network_failure, "network_failure");
        HC_STAT(gauge, healthy, "healthy");
#undef HC_STAT
        dp_gauge_mark_used(ch->stats.healthy);
        snprintf(name, sizeof(name), "cluster.%s.upstream_cx_total", stat_name);
        ch->cx_total = dp_stats_counter(st, name);
    }
    return ch;
}

bool dp_health_host_ok(const dp_cluster_t *c, const dp_addr_t *host)
{
    const dp_cluster_health_t *ch = c ? c->health : NULL;
    if (ch == NULL || host == NULL || ch->n_hosts == 0)
        return true;
    uintptr_t base = (uintptr_t)ch->endpoints, p = (uintptr_t)host;
    if (p < base || p >= base + ch->n_hosts * sizeof(dp_endpoint_t))
        return true;
    size_t off = p - base;
    if (off % sizeof(dp_endpoint_t) != offsetof(dp_endpoint_t, addr))
        return true;
    const dp_hc_host_t *e = ch->hosts[off / sizeof(dp_endpoint_t)];
    return e == NULL || atomic_load_explicit(&e->healthy, memory_order_relaxed) != 0;
}

/* ---- the checker ---- */

typedef enum result {
    HC_PASS,
    HC_NETWORK, /* refused, reset, timed out, closed early, not echoed */
    HC_ACTIVE,  /* an HTTP answer outside expected_statuses: unhealthy at once */
} result_t;

typedef struct target target_t;

/* One check in flight: its socket outlives the check until its close callback. */
typedef struct probe {
    target_t *t; /* NULL once the check is over */
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } sock;
    uv_connect_t conn;
    uv_write_t wr;
    char *out;
    size_t out_len;
    size_t in_len;
    uint8_t in[DP_HC_MAX_PAYLOAD];
} probe_t;

struct target {
    dp_health_checker_t *hc;
    target_t *prev, *next;
    dp_hc_host_t *host;            /* referenced */
    const dp_cluster_health_t *ch; /* in the checker's snapshot */
    uv_timer_t timer;              /* the next check */
    uv_timer_t timeout;            /* the check in flight */
    int handles;
    probe_t *probe;
    uint32_t successes, failures;
    bool first; /* no check has finished yet */
    bool seen;
    bool dead;
};

struct dp_health_checker {
    uv_loop_t *loop;
    dp_snapshot_t *snap;
    target_t *targets;
    size_t n_targets; /* allocated, dead ones too */
    uint64_t rng;
    uint64_t rounds;
    bool closing;
};

static uint64_t hc_random(dp_health_checker_t *hc)
{
    uint64_t x = hc->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    hc->rng = x;
    return x * 2685821657736338717ull;
}

static void checker_maybe_free(dp_health_checker_t *hc)
{
    if (hc->closing && hc->n_targets == 0) {
        dp_snapshot_unref(hc->snap);
        free(hc);
    }
}

static void on_probe_closed(uv_handle_t *h)
{
    probe_t *p = h->data;
    free(p->out);
    free(p);
}

/* Ends the check in flight (if any) without a result. */
static void probe_abandon(target_t *t)
{
    probe_t *p = t->probe;
    if (p == NULL)
        return;
    t->probe = NULL;
    p->t = NULL;
    uv_close(&p->sock.handle, on_probe_closed);
    uv_timer_stop(&t->timeout);
}

static void on_target_closed(uv_handle_t *h)
{
    target_t *t = h->data;
    if (--t->handles > 0)
        return;
    dp_health_checker_t *hc = t->hc;
    host_unref(t->host);
    free(t);
    hc->n_targets--;
    checker_maybe_free(hc);
}

static void target_stop(target_t *t)
{
    dp_health_checker_t *hc = t->hc;
    probe_abandon(t);
    if (t->host->target == t)
        t->host->target = NULL;
    if (t->prev)
        t->prev->next = t->next;
    else
        hc->targets = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->dead = true;
    uv_close((uv_handle_t *)&t->timer, on_target_closed);
    uv_close((uv_handle_t *)&t->timeout, on_target_closed);
}

static void update_gauge(const dp_cluster_health_t *ch)
{
    if (ch->stats.healthy == NULL)
        return;
    uint64_t n = 0;
    for (size_t i = 0; i < ch->n_hosts; i++)
        n += ch->hosts[i] && atomic_load(&ch->hosts[i]->healthy);
    dp_gauge_set(ch->stats.healthy, n);
}

static void set_healthy(target_t *t, bool healthy)
{
    if ((atomic_load(&t->host->healthy) != 0) == healthy)
        return;
    atomic_store(&t->host->healthy, healthy ? 1 : 0);
    char buf[INET6_ADDRSTRLEN] = "";
    const dp_addr_t *a = &t->host->addr;
    if (a->sa.sa_family == AF_INET)
        uv_ip4_name(&a->in, buf, sizeof(buf));
    else if (a->sa.sa_family == AF_INET6)
        uv_ip6_name(&a->in6, buf, sizeof(buf));
    DP_LOG(DP_LOG_HEALTH_CHECKER, DP_LOG_DEBUG, "health check: cluster %s host %s:%u is now %s",
           t->host->cluster, a->unix_path ? a->unix_path : buf,
           a->sa.sa_family == AF_INET    ? ntohs(a->in.sin_port)
           : a->sa.sa_family == AF_INET6 ? ntohs(a->in6.sin6_port)
                                         : 0,
           healthy ? "healthy" : "unhealthy");
    update_gauge(t->ch);
}

static void check_start(target_t *t);

static void on_timer(uv_timer_t *h)
{
    check_start(h->data);
}

static void schedule_in(target_t *t, uint64_t ms)
{
    uv_timer_start(&t->timer, on_timer, ms, 0);
}

/* Envoy's choice of the next interval: edge is whether the last check changed the state. */
static uint64_t next_delay(target_t *t, bool edge)
{
    const dp_health_check_t *c = t->ch->check;
    bool healthy = atomic_load(&t->host->healthy) != 0;
    bool traffic = t->ch->cx_total == NULL || dp_counter_value(t->ch->cx_total) > 0;
    uint64_t ms;
    if (!traffic && c->no_traffic_interval_ms) {
        ms = healthy && c->no_traffic_healthy_interval_ms ? c->no_traffic_healthy_interval_ms
                                                          : c->no_traffic_interval_ms;
    } else if (healthy) {
        ms = edge && c->healthy_edge_interval_ms ? c->healthy_edge_interval_ms : c->interval_ms;
    } else {
        uint64_t unhealthy = c->unhealthy_interval_ms ? c->unhealthy_interval_ms : c->interval_ms;
        ms = edge && c->unhealthy_edge_interval_ms ? c->unhealthy_edge_interval_ms : unhealthy;
    }
    uint64_t jitter = c->interval_jitter_ms;
    if (c->interval_jitter_percent)
        jitter += ms * c->interval_jitter_percent / 100;
    if (jitter)
        ms += hc_random(t->hc) % (jitter + 1);
    return ms;
}

static void finish(target_t *t, result_t r)
{
    const dp_cluster_health_t *ch = t->ch;
    const dp_health_check_t *c = ch->check;
    probe_abandon(t);
    t->hc->rounds++;
    bool healthy = atomic_load(&t->host->healthy) != 0, was = healthy;
    if (r == HC_PASS) {
        if (ch->stats.success)
            dp_counter_inc(ch->stats.success);
        t->failures = 0;
        if (!healthy && (t->first || ++t->successes >= c->healthy_threshold)) {
            t->successes = 0;
            set_healthy(t, true);
        }
    } else {
        if (ch->stats.failure)
            dp_counter_inc(ch->stats.failure);
        if (r == HC_NETWORK && ch->stats.network_failure)
            dp_counter_inc(ch->stats.network_failure);
        t->successes = 0;
        if (healthy && (r == HC_ACTIVE || ++t->failures >= c->unhealthy_threshold)) {
            t->failures = 0;
            set_healthy(t, false);
        }
    }
    bool edge = !t->first && was != (atomic_load(&t->host->healthy) != 0);
    t->first = false;
    schedule_in(t, next_delay(t, edge));
}

static void on_timeout(uv_timer_t *h)
{
    target_t *t = h->data;
    if (t->probe)
        finish(t, HC_NETWORK);
}

static bool status_expected(const dp_health_check_t *c, long status)
{
    if (c->n_expected == 0)
        return status >= 200 && status < 300;
    for (size_t i = 0; i < c->n_expected; i++) {
        if (status >= c->expected[i].start && status < c->expected[i].end)
            return true;
    }
    return false;
}

/* The result the bytes read so far give, or -1 while more are needed. */
static int judge(const probe_t *p, const dp_health_check_t *c)
{
    if (c->kind == DP_HC_TCP) {
        if (c->receive_len == 0)
            return HC_PASS;
        if (p->in_len >= c->receive_len &&
            memmem(p->in, p->in_len, c->receive, c->receive_len) != NULL)
            return HC_PASS;
        return p->in_len == sizeof(p->in) ? HC_NETWORK : -1;
    }
    const uint8_t *eol = memchr(p->in, '\n', p->in_len);
    if (eol == NULL)
        return p->in_len == sizeof(p->in) ? HC_NETWORK : -1;
    /* "HTTP/1.x NNN ..." */
    if (p->in_len < 12 || memcmp(p->in, "HTTP/1.", 7) != 0 || p->in[8] != ' ')
        return HC_NETWORK;
    long status = 0;
    for (int i = 9; i < 12; i++) {
        if (p->in[i] < '0' || p->in[i] > '9')
            return HC_NETWORK;
        status = status * 10 + (p->in[i] - '0');
    }
    return status_expected(c, status) ? HC_PASS : HC_ACTIVE;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    probe_t *p = h->data;
    (void)suggested;
    buf->base = (char *)p->in + p->in_len;
    buf->len = sizeof(p->in) - p->in_len;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    probe_t *p = s->data;
    (void)buf;
    target_t *t = p->t;
    if (t == NULL || nread == 0)
        return;
    if (nread < 0) {
        finish(t, HC_NETWORK);
        return;
    }
    p->in_len += (size_t)nread;
    int r = judge(p, t->ch->check);
    if (r >= 0)
        finish(t, (result_t)r);
}

static void on_write(uv_write_t *w, int status)
{
    probe_t *p = w->data;
    if (p->t && status < 0)
        finish(p->t, HC_NETWORK);
}

static char *http_request(const dp_health_check_t *c, size_t *len)
{
    size_t cap = DP_HC_MAX_REQUEST + 128;
    char *b = xcalloc(1, cap);
    int n = snprintf(b, cap,
                     "GET %s HTTP/1.1\r\nhost: %s\r\nuser-agent: Envoy/HC\r\n"
                     "connection: close\r\n",
                     c->path, c->host);
    for (size_t i = 0; i < c->n_headers && n > 0 && (size_t)n < cap; i++)
        n +=
            snprintf(b + n, cap - (size_t)n, "%s: %s\r\n", c->headers[i].name, c->headers[i].value);
    if (n > 0 && (size_t)n < cap)
        n += snprintf(b + n, cap - (size_t)n, "\r\n");
    *len = n > 0 && (size_t)n < cap ? (size_t)n : 0;
    return b;
}

static void on_connect(uv_connect_t *req, int status)
{
    probe_t *p = req->data;
    target_t *t = p->t;
    if (t == NULL)
        return;
    if (status < 0) {
        finish(t, HC_NETWORK);
        return;
    }
    const dp_health_check_t *c = t->ch->check;
    if (c->kind == DP_HC_TCP && c->send_len == 0 && c->receive_len == 0) {
        finish(t, HC_PASS);
        return;
    }
    if (c->kind == DP_HC_HTTP) {
        p->out = http_request(c, &p->out_len);
    } else if (c->send_len) {
        p->out = xcalloc(1, c->send_len);
        memcpy(p->out, c->send, c->send_len);
        p->out_len = c->send_len;
    }
    if (p->out_len) {
        uv_buf_t b = uv_buf_init(p->out, (unsigned)p->out_len);
        p->wr.data = p;
        if (uv_write(&p->wr, &p->sock.stream, &b, 1, on_write) < 0) {
            finish(t, HC_NETWORK);
            return;
        }
    }
    if (c->kind == DP_HC_TCP && c->receive_len == 0) {
        /* send only: written is passed */
        finish(t, HC_PASS);
        return;
    }
    if (uv_read_start(&p->sock.stream, on_alloc, on_read) < 0)
        finish(t, HC_NETWORK);
}

static void check_start(target_t *t)
{
    dp_health_checker_t *hc = t->hc;
    const dp_health_check_t *c = t->ch->check;
    if (t->probe)
        return;
    if (t->ch->stats.attempt)
        dp_counter_inc(t->ch->stats.attempt);
    probe_t *p = xcalloc(1, sizeof(*p));
    p->t = t;
    p->conn.data = p;
    const dp_addr_t *a = &t->host->addr;
    int rc;
    if (a->sa.sa_family == AF_UNIX) {
        rc = uv_pipe_init(hc->loop, &p->sock.pipe, 0);
        p->sock.handle.data = p;
        t->probe = p;
        if (rc == 0)
            uv_pipe_connect(&p->conn, &p->sock.pipe, a->unix_path, on_connect);
    } else {
        rc = uv_tcp_init(hc->loop, &p->sock.tcp);
        p->sock.handle.data = p;
        t->probe = p;
        if (rc == 0)
            rc = uv_tcp_connect(&p->conn, &p->sock.tcp, &a->sa, on_connect);
    }
    if (rc < 0 && p->sock.handle.type == UV_UNKNOWN_HANDLE) {
        /* the handle never opened */
        t->probe = NULL;
        free(p);
        t->hc->rounds++;
        if (t->ch->stats.failure)
            dp_counter_inc(t->ch->stats.failure);
        if (t->ch->stats.network_failure)
            dp_counter_inc(t->ch->stats.network_failure);
        schedule_in(t, next_delay(t, false));
        return;
    }
    uv_timer_start(&t->timeout, on_timeout, c->timeout_ms, 0);
    if (rc < 0)
        finish(t, HC_NETWORK);
}

dp_health_checker_t *dp_health_checker_new(uv_loop_t *loop)
{
    dp_health_checker_t *hc = xcalloc(1, sizeof(*hc));
    hc->loop = loop;
    hc->rng = uv_hrtime() | 1;
    return hc;
}

static void target_add(dp_health_checker_t *hc, const dp_cluster_health_t *ch, dp_hc_host_t *e)
{
    target_t *t = xcalloc(1, sizeof(*t));
    t->hc = hc;
    t->ch = ch;
    pthread_mutex_lock(&tab_mu);
    e->refs++;
    pthread_mutex_unlock(&tab_mu);
    t->host = e;
    e->target = t;
    t->first = true;
    t->seen = true;
    uv_timer_init(hc->loop, &t->timer);
    uv_timer_init(hc->loop, &t->timeout);
    t->timer.data = t->timeout.data = t;
    t->handles = 2;
    t->next = hc->targets;
    if (hc->targets)
        hc->targets->prev = t;
    hc->targets = t;
    hc->n_targets++;
    const dp_health_check_t *c = ch->check;
    schedule_in(t, c->initial_jitter_ms ? hc_random(hc) % (c->initial_jitter_ms + 1) : 0);
}

void dp_health_checker_apply(dp_health_checker_t *hc, dp_snapshot_t *snap)
{
    for (target_t *t = hc->targets; t; t = t->next)
        t->seen = false;
    for (size_t i = 0; snap && i < snap->n_clusters; i++) {
        const dp_cluster_health_t *ch = snap->clusters[i].health;
        if (ch == NULL)
            continue;
        for (size_t j = 0; j < ch->n_hosts; j++) {
            dp_hc_host_t *e = ch->hosts[j];
            if (e == NULL)
                continue;
            target_t *t = e->target && e->target->hc == hc ? e->target : NULL;
            if (t == NULL) {
                target_add(hc, ch, e);
            } else if (!t->seen) {
                /* t->ch is still valid: hc->snap holds the previous snapshot */
                bool resched =
                    t->probe == NULL &&
                    (t->ch->check->interval_ms != ch->check->interval_ms ||
                     t->ch->check->no_traffic_interval_ms != ch->check->no_traffic_interval_ms ||
                     t->ch->check->unhealthy_interval_ms != ch->check->unhealthy_interval_ms);
                t->seen = true;
                t->ch = ch;
                if (resched)
                    schedule_in(t, next_delay(t, false));
            }
        }
    }
    for (target_t *t = hc->targets, *next; t; t = next) {
        next = t->next;
        if (!t->seen)
            target_stop(t);
    }
    dp_snapshot_t *old = hc->snap;
    hc->snap = dp_snapshot_ref(snap);
    dp_snapshot_unref(old);
    for (size_t i = 0; snap && i < snap->n_clusters; i++) {
        if (snap->clusters[i].health)
            update_gauge(snap->clusters[i].health);
    }
}

void dp_health_checker_close(dp_health_checker_t *hc)
{
    if (hc == NULL)
        return;
    dp_health_checker_apply(hc, NULL);
    hc->closing = true;
    checker_maybe_free(hc);
}

uint64_t dp_health_checker_rounds(const dp_health_checker_t *hc)
{
    return hc->rounds;
}

static dp_health_checker_t *process_checker;

void dp_health_checks_apply(uv_loop_t *loop, dp_snapshot_t *snap)
{
    if (snap == NULL) {
        dp_health_checker_close(process_checker);
        process_checker = NULL;
        return;
    }
    if (process_checker == NULL)
        process_checker = dp_health_checker_new(loop);
    dp_health_checker_apply(process_checker, snap);
}
