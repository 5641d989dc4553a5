/* Upstream pools (dataplane/upstream.h).
 *
 * Per worker, one cstate per cluster name (a hash table: the snapshot is immutable, so the
 * balancer state, DNS answers and pools live here), and one pool per (cluster, host
 * address, protocol) in a second hash table. A pool's connections sit in one of four lists:
 * connecting, ready (HTTP/1: idle, most recently used first; HTTP/2: can open a stream),
 * busy, draining. Requests that find no ready connection wait in the pool's FIFO queue, at
 * most max_pending_requests per cluster, while connections are made for them (HTTP/1: one per
 * waiting request; HTTP/2: one at a time), at most max_connections per cluster (a pool with
 * no connection still makes one, as Envoy's do, counting upstream_cx_overflow), and at most
 * max_connection_pools pools. Those counts, and the router's max_requests and max_retries
 * (dp_upstream_rq_admit, dp_upstream_retry_admit), are the cluster's circuit breakers shared
 * by every worker (dataplane/breaker.h); a cstate holds a reference to them.
 *
 * Outlier detection (dataplane/outlier.h): dp_upstream_host_result feeds the cluster's
 * process-wide detector; the balancer counts the hosts it has ejected as unhealthy (lb_ejected),
 * so that Envoy's panic threshold sends to every host once too few are left. The detector's
 * interval runs lazily, from
 * the host choice of the first request after each interval boundary (no timer).
 *
 * Failures are reported from the loop, never from inside dp_upstream_request (except the
 * immediate OVERFLOW cases), so a caller never sees its callback before the call returns a
 * handle. A failed connect fails the waits the remaining connecting connections cannot take.
 * dp_upstreams_close fails every waiting request with DP_RESET_CONNECT_FAIL and closes every
 * connection (streams get the codec's on_done(DP_RESET_CONN_TERMINATED)).
 *
 * Counted here: upstream_cx_total, _active, _connect_fail, _connect_timeout, _destroy,
 * _idle_timeout, _none_healthy, _overflow, _pool_overflow, _http1_total, _http2_total and
 * upstream_rq_pending_total, _active, _overflow (with max_requests overflows, as Envoy), and
 * upstream_rq_retry_overflow. The router counts the other upstream_rq_* stats and the bytes.
 * Upstream sockets get TCP_NODELAY and, with upstream_connection_options.tcp_keepalive,
 * SO_KEEPALIVE and its TCP_KEEPCNT / TCP_KEEPIDLE / TCP_KEEPINTVL. */
#include "dataplane/upstream.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "dataplane/breaker.h"
#include "dataplane/health_check.h"
#include "dataplane/lb.h"
#include "dataplane/log.h"
#include "dataplane/outlier.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* At most this many addresses are kept per resolved host name. */
#define DNS_MAX_ADDRS 64
/* Freed wait handles kept for reuse. */
#define WAIT_FREE_MAX 256

#define CINC(c)                \
    do {                       \
        if (c)                 \
            dp_counter_inc(c); \
    } while (0)
#define GINC(g)              \
    do {                     \
        if (g)               \
            dp_gauge_inc(g); \
    } while (0)
#define GDEC(g)              \
    do {                     \
        if (g)               \
            dp_gauge_dec(g); \
    } while (0)

typedef struct cstate cstate_t;
typedef struct pool pool_t;
typedef struct pconn pconn_t;
typedef struct dns dns_t;

/* What the pools need of a cluster, copied from the latest snapshot that named it (so that
 * no pool depends on a snapshot's lifetime). */
typedef struct clcfg {
    dp_cluster_type_t type;
    dp_lb_policy_t lb_policy;
    uint64_t connect_timeout_ms, idle_timeout_ms, max_duration_ms;
    uint32_t max_requests_per_conn;
    bool has_source;
    dp_addr_t source;
    bool keepalive;
    uint32_t ka_probes, ka_time_s, ka_interval_s;
    dp_http_limits_t limits;
    dp_counter_t *cx_total, *cx_connect_fail;
    dp_gauge_t *cx_active;
    dp_cluster_stats_t st;
} clcfg_t;

/* Per-worker state of one cluster (by name): its balancer, its DNS results, its
 * pools. */
struct cstate {
    dp_upstreams_t *u;
    char *name;
    uint64_t hash;
    cstate_t *hnext;
    clcfg_t cfg;
    /* the balancer (made at the first pick) and its settings from the latest snapshot */
    dp_lb_t *lb;
    dp_lb_config_t lb_cfg;
    pool_t *pools; /* every pool of the cluster, draining ones too */
    /* the cluster's circuit breakers, shared with every worker (a reference) */
    dp_breakers_t *br;
    bool overflowed; /* a pool wanted a connection the breaker refused */
    dns_t *dns;
    bool *ej; /* lb_ejected's flags, ej_cap of them */
    size_t ej_cap;
    bool seen; /* marked during apply */
    bool dead; /* no longer in the snapshot: freed once its pools are gone */
};

enum {
    PC_CONNECTING, /* connecting, or handing its fd to the codec */
    PC_READY,      /* can take a stream (HTTP/1: idle) */
    PC_BUSY,       /* cannot now (HTTP/1: a stream is on it; HTTP/2: full) */
    PC_DRAINING,   /* takes no more streams; closes when its streams are done */
    PC_NLISTS,
    PC_CLOSED = PC_NLISTS,
};

struct pool {
    dp_upstreams_t *u;
    cstate_t *cs;
    pool_t *next;  /* in cs->pools */
    pool_t *hnext; /* in u's pool table */
    uint64_t hash;
    dp_addr_t addr;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dp_upstream_proto_t proto;
    bool in_table;
    bool draining;
    int busy; /* inside a loop of callbacks: not freed until it ends */
    pconn_t *lists[PC_NLISTS];
    uint32_t n_in[PC_NLISTS]; /* connections per list */
    uint32_t n_conns, n_connecting;
    dp_upstream_wait_t *wq, *wq_tail;
    uint32_t n_waits;
};

struct pconn {
    pool_t *pool; /* NULL once closed */
    dp_upstreams_t *u;
    pconn_t *prev, *next;
    int state;
    int fd;
    bool poll_open, handoff;
    uv_poll_t poll;
    uv_timer_t timer; /* connect timeout, then idle timeout */
    uv_timer_t life;  /* max_connection_duration */
    /* The idle timer is not moved per request: it runs while the connection is in use and,
     * when it fires, counts from idle_since (set as the last stream ends) and re-arms for the
     * rest, so a connection going idle and busy again costs no timer-heap work. */
    uint64_t idle_since; /* uv_now() as the last stream ended */
    bool idle_timing;    /* timer is the idle timer */
    int handles;         /* its libuv handles, and the codec until its on_close */
    dp_codec_conn_t *codec;
    uint32_t streams;
    dp_reset_reason_t fail;
};

struct dp_upstream_wait {
    dp_upstream_wait_t *prev, *next;
    pool_t *pool;
    const dp_upstream_cb_t *cb;
    void *ud;
    const dp_addr_t *host;
};

typedef struct dns_host {
    uv_getaddrinfo_t req;
    dns_t *d;
    char *name;
    char port[8];
    uint32_t weight, priority;
    dp_health_t health;
    dp_addr_t *addrs;
    size_t n;
    bool busy;
} dns_host_t;

struct dns {
    dp_upstreams_t *u;
    cstate_t *cs; /* NULL once stopped */
    uv_timer_t timer;
    bool timer_open;
    dp_dns_family_t family;
    bool logical;
    uint64_t refresh_ms;
    dns_host_t *hosts;
    size_t n_hosts, busy;
    dp_endpoint_t *eps;
    size_t n_eps;
};

struct dp_upstreams {
    uv_loop_t *loop;
    dp_codec_new_fn h1_new, h2_new;
    cstate_t **ctab;
    size_t ccap, n_cstates;
    pool_t **ptab;
    size_t pcap, n_pools;
    dp_upstream_wait_t *free_waits;
    size_t n_free_waits;
    size_t handles; /* connections and DNS states still closing */
    uint64_t rng;
    bool closing;
};

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL)
        abort();
    return p;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}
#define FNV_INIT 14695981039346656037ull

static void maybe_free_u(dp_upstreams_t *u);
static void pool_serve(pool_t *p);
static void pool_grow(pool_t *p);
static void pool_maybe_free(pool_t *p);
static void conn_place(pconn_t *pc);
static void dns_stop(cstate_t *cs);
static uint64_t host_load(cstate_t *cs, const dp_addr_t *a, dp_upstream_proto_t proto);

/* ---- addresses ---- */

static bool addr_eq(const dp_addr_t *a, const dp_addr_t *b)
{
    if (a->sa.sa_family != b->sa.sa_family)
        return false;
    switch (a->sa.sa_family) {
    case AF_INET:
        return a->in.sin_port == b->in.sin_port && a->in.sin_addr.s_addr == b->in.sin_addr.s_addr;
    case AF_INET6:
        return a->in6.sin6_port == b->in6.sin6_port &&
               a->in6.sin6_scope_id == b->in6.sin6_scope_id &&
               memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, sizeof(a->in6.sin6_addr)) == 0;
    case AF_UNIX:
        return a->unix_path && b->unix_path && strcmp(a->unix_path, b->unix_path) == 0;
    default:
        return false;
    }
}

static uint64_t addr_hash(uint64_t h, const dp_addr_t *a)
{
    switch (a->sa.sa_family) {
    case AF_INET:
        h = fnv(h, &a->in.sin_port, sizeof(a->in.sin_port));
        return fnv(h, &a->in.sin_addr, sizeof(a->in.sin_addr));
    case AF_INET6:
        h = fnv(h, &a->in6.sin6_port, sizeof(a->in6.sin6_port));
        return fnv(h, &a->in6.sin6_addr, sizeof(a->in6.sin6_addr));
    case AF_UNIX:
        return a->unix_path ? fnv(h, a->unix_path, strlen(a->unix_path)) : h;
    default:
        return h;
    }
}

/* ---- cluster states ---- */

static void cs_config(cstate_t *cs, const dp_cluster_t *c)
{
    clcfg_t *f = &cs->cfg;
    f->type = c->type;
    f->lb_policy = c->lb_policy;
    /* A new snapshot: the balancer rebuilds (its endpoint array may reuse a freed one's
     * address). */
    dp_lb_config_from_cluster(&cs->lb_cfg, c);
    /* The resolved hosts of DNS clusters carry no locality: one locality, unweighted. */
    if (c->type == DP_CLUSTER_STRICT_DNS || c->type == DP_CLUSTER_LOGICAL_DNS)
        cs->lb_cfg.locality_weighted = false;
    if (cs->lb)
        dp_lb_configure(cs->lb, &cs->lb_cfg);
    f->connect_timeout_ms = c->connect_timeout_ms;
    f->idle_timeout_ms = c->idle_timeout_ms;
    f->max_duration_ms = c->max_connection_duration_ms;
    f->max_requests_per_conn = c->max_requests_per_connection;
    f->has_source = c->has_source_addr;
    f->source = c->source_addr;
    f->source.unix_path = NULL;
    f->keepalive = c->tcp_keepalive;
    f->ka_probes = c->keepalive_probes;
    f->ka_time_s = c->keepalive_time_s;
    f->ka_interval_s = c->keepalive_interval_s;
    f->limits = dp_http_limits_default();
    if (c->h2_max_concurrent_streams)
        f->limits.h2_max_concurrent_streams = c->h2_max_concurrent_streams;
    f->cx_total = c->cx_total;
    f->cx_connect_fail = c->cx_connect_fail;
    f->cx_active = c->cx_active;
    f->st = c->stats;
}

static cstate_t *cs_find(dp_upstreams_t *u, const char *name, uint64_t *ret_hash)
{
    uint64_t h = fnv(FNV_INIT, name, strlen(name));
    if (ret_hash)
        *ret_hash = h;
    if (u->ccap == 0)
        return NULL;
    for (cstate_t *cs = u->ctab[h & (u->ccap - 1)]; cs; cs = cs->hnext) {
        if (cs->hash == h && strcmp(cs->name, name) == 0)
            return cs;
    }
    return NULL;
}

static void ctab_grow(dp_upstreams_t *u)
{
    size_t cap = u->ccap ? u->ccap * 2 : 64;
    cstate_t **t = xcalloc(cap, sizeof(*t));
    for (size_t i = 0; i < u->ccap; i++) {
        for (cstate_t *cs = u->ctab[i], *next; cs; cs = next) {
            next = cs->hnext;
            cs->hnext = t[cs->hash & (cap - 1)];
            t[cs->hash & (cap - 1)] = cs;
        }
    }
    free(u->ctab);
    u->ctab = t;
    u->ccap = cap;
}

static cstate_t *cs_get(dp_upstreams_t *u, const dp_cluster_t *c)
{
    uint64_t h;
    cstate_t *cs = cs_find(u, c->name, &h);
    if (cs) {
        cs->dead = false;
        return cs;
    }
    if (u->n_cstates + 1 > u->ccap)
        ctab_grow(u);
    cs = xcalloc(1, sizeof(*cs));
    cs->u = u;
    cs->name = strdup(c->name);
    if (cs->name == NULL)
        abort();
    cs->hash = h;
    /* A cluster built by hand carries no shared breakers: this worker keeps its own. */
    cs->br =
        c->breakers ? dp_breakers_ref(c->breakers) : dp_breakers_new_private(&c->circuit_breakers);
    cs_config(cs, c);
    cs->hnext = u->ctab[h & (u->ccap - 1)];
    u->ctab[h & (u->ccap - 1)] = cs;
    u->n_cstates++;
    return cs;
}

static void cs_maybe_free(cstate_t *cs)
{
    if (!cs->dead || cs->pools || cs->dns)
        return;
    dp_upstreams_t *u = cs->u;
    for (cstate_t **pp = &u->ctab[cs->hash & (u->ccap - 1)]; *pp; pp = &(*pp)->hnext) {
        if (*pp == cs) {
            *pp = cs->hnext;
            break;
        }
    }
    u->n_cstates--;
    dp_lb_free(cs->lb);
    free(cs->ej);
    dp_breakers_unref(cs->br);
    free(cs->name);
    free(cs);
    maybe_free_u(u);
}

/* ---- host choice (dataplane/lb.h) ---- */

/* The cluster of the host choice under way on this thread (for its active health checks). */
static _Thread_local const dp_cluster_t *pick_cluster;

static uint64_t u_random(dp_upstreams_t *u)
{
    /* xorshift64* */
    uint64_t x = u->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    u->rng = x;
    return x * 2685821657736338717ull;
}

/* Hosts of eps (n flags) that active health checks fail or outlier detection has ejected, or
 * NULL when none is: the balancer counts them unhealthy, as Envoy's FAILED_ACTIVE_HC and
 * FAILED_OUTLIER_CHECK. */
static const bool *lb_ejected(cstate_t *cs, const dp_endpoint_t *eps, size_t n)
{
    bool hc = pick_cluster && pick_cluster->health;
    bool od = pick_cluster && pick_cluster->outlier;
    if ((!hc && !od) || n == 0)
        return NULL;
    if (cs->ej_cap < n) {
        free(cs->ej);
        cs->ej = xcalloc(n, sizeof(*cs->ej));
        cs->ej_cap = n;
    }
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        cs->ej[i] = (hc && !dp_health_host_ok(pick_cluster, &eps[i].addr)) ||
                    (od && dp_outlier_host_ejected(eps[i].outlier));
        any |= cs->ej[i];
    }
    return any ? cs->ej : NULL;
}

typedef struct lb_load_ctx {
    cstate_t *cs;
    const dp_endpoint_t *eps;
    dp_upstream_proto_t proto;
} lb_load_ctx_t;

static uint64_t lb_active(void *ud, size_t i)
{
    const lb_load_ctx_t *c = ud;
    return host_load(c->cs, &c->eps[i].addr, c->proto);
}

/* The host for one request, chosen as Envoy does (dataplane/lb.h: priorities and panic,
 * locality weights, and the cluster's policy), or NULL when there is none. */
static const dp_endpoint_t *lb_pick(cstate_t *cs, const dp_endpoint_t *eps, size_t n,
                                    const dp_lb_ctx_t *lb, dp_upstream_proto_t proto)
{
    if (cs->lb == NULL)
        cs->lb = dp_lb_new(&cs->lb_cfg, u_random(cs->u));
    lb_load_ctx_t lc = {cs, eps, proto};
    dp_lb_hosts_t hs = {
        .eps = eps,
        .n = n,
        .ejected = lb_ejected(cs, eps, n),
        .active = lb_active,
        .active_ud = &lc,
    };
    size_t i = dp_lb_pick(cs->lb, &hs, lb);
    return i == DP_LB_NONE ? NULL : &eps[i];
}

/* ---- the pool table ---- */

static uint64_t pool_key(const cstate_t *cs, const dp_addr_t *a, dp_upstream_proto_t proto)
{
    uint64_t h = fnv(FNV_INIT, &cs, sizeof(cs));
    h = fnv(h, &proto, sizeof(proto));
    return addr_hash(h, a);
}

static void ptab_grow(dp_upstreams_t *u)
{
    size_t cap = u->pcap ? u->pcap * 2 : 64;
    pool_t **t = xcalloc(cap, sizeof(*t));
    for (size_t i = 0; i < u->pcap; i++) {
        for (pool_t *p = u->ptab[i], *next; p; p = next) {
            next = p->hnext;
            p->hnext = t[p->hash & (cap - 1)];
            t[p->hash & (cap - 1)] = p;
        }
    }
    free(u->ptab);
    u->ptab = t;
    u->pcap = cap;
}

static void ptab_remove(pool_t *p)
{
    if (!p->in_table)
        return;
    dp_upstreams_t *u = p->u;
    for (pool_t **pp = &u->ptab[p->hash & (u->pcap - 1)]; *pp; pp = &(*pp)->hnext) {
        if (*pp == p) {
            *pp = p->hnext;
            break;
        }
    }
    p->in_table = false;
    u->n_pools--;
}

static pool_t *pool_find(cstate_t *cs, const dp_addr_t *a, dp_upstream_proto_t proto, uint64_t h)
{
    dp_upstreams_t *u = cs->u;
    if (u->pcap == 0)
        return NULL;
    for (pool_t *p = u->ptab[h & (u->pcap - 1)]; p; p = p->hnext) {
        if (p->hash == h && p->cs == cs && p->proto == proto && addr_eq(&p->addr, a))
            return p;
    }
    return NULL;
}

static pool_t *pool_get(cstate_t *cs, const dp_addr_t *a, dp_upstream_proto_t proto)
{
    dp_upstreams_t *u = cs->u;
    uint64_t h = pool_key(cs, a, proto);
    pool_t *found = pool_find(cs, a, proto, h);
    if (found)
        return found;
    /* max_connection_pools, counted across workers */
    if (!dp_breakers_try(cs->br, DP_BR_DEFAULT, DP_BR_POOLS))
        return NULL;
    if (u->n_pools + 1 > u->pcap)
        ptab_grow(u);
    pool_t *p = xcalloc(1, sizeof(*p));
    p->u = u;
    p->cs = cs;
    p->hash = h;
    p->proto = proto;
    p->addr = *a;
    if (a->sa.sa_family == AF_UNIX) {
        snprintf(p->path, sizeof(p->path), "%s", a->unix_path ? a->unix_path : "");
        p->addr.unix_path = p->path;
    } else {
        p->addr.unix_path = NULL;
    }
    p->next = cs->pools;
    cs->pools = p;
    p->hnext = u->ptab[h & (u->pcap - 1)];
    u->ptab[h & (u->pcap - 1)] = p;
    p->in_table = true;
    u->n_pools++;
    return p;
}

/* ---- waits ---- */

static dp_upstream_wait_t *wait_new(dp_upstreams_t *u)
{
    dp_upstream_wait_t *w = u->free_waits;
    if (w) {
        u->free_waits = w->next;
        u->n_free_waits--;
        memset(w, 0, sizeof(*w));
        return w;
    }
    return xcalloc(1, sizeof(*w));
}

static void wait_free(dp_upstreams_t *u, dp_upstream_wait_t *w)
{
    if (u->n_free_waits >= WAIT_FREE_MAX || u->closing) {
        free(w);
        return;
    }
    w->next = u->free_waits;
    u->free_waits = w;
    u->n_free_waits++;
}

static void wait_unlink(dp_upstream_wait_t *w)
{
    pool_t *p = w->pool;
    if (w->prev)
        w->prev->next = w->next;
    else
        p->wq = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        p->wq_tail = w->prev;
    p->n_waits--;
    dp_breakers_release(p->cs->br, DP_BR_DEFAULT, DP_BR_PENDING);
    GDEC(p->cs->cfg.st.rq_pending_active);
}

/* Takes the oldest wait off the queue and reports why it cannot be served. */
static void wait_fail_head(pool_t *p, dp_reset_reason_t why)
{
    dp_upstream_wait_t *w = p->wq;
    wait_unlink(w);
    const dp_upstream_cb_t *cb = w->cb;
    void *ud = w->ud;
    const dp_addr_t *host = w->host;
    wait_free(p->u, w);
    cb->on_failure(ud, why, host);
}

void dp_upstream_cancel(dp_upstream_wait_t *w)
{
    if (w == NULL)
        return;
    pool_t *p = w->pool;
    wait_unlink(w);
    wait_free(p->u, w);
    pool_maybe_free(p);
}

/* ---- connections ---- */

/* Requests on a host's pool: waiting, and in flight (HTTP/1: its busy connections). */
static uint64_t host_load(cstate_t *cs, const dp_addr_t *a, dp_upstream_proto_t proto)
{
    pool_t *p = pool_find(cs, a, proto, pool_key(cs, a, proto));
    if (p == NULL)
        return 0;
    uint64_t n = p->n_waits;
    if (proto == DP_UPSTREAM_HTTP1)
        return n + p->n_in[PC_BUSY];
    for (int l = PC_READY; l <= PC_BUSY; l++) {
        for (const pconn_t *pc = p->lists[l]; pc; pc = pc->next)
            n += pc->codec ? pc->codec->ops->active_streams(pc->codec) : 0;
    }
    return n;
}

static void list_add(pconn_t *pc, int state)
{
    pool_t *p = pc->pool;
    p->n_in[state]++;
    pc->state = state;
    pc->prev = NULL;
    pc->next = p->lists[state];
    if (pc->next)
        pc->next->prev = pc;
    p->lists[state] = pc;
}

static void list_del(pconn_t *pc)
{
    pool_t *p = pc->pool;
    p->n_in[pc->state]--;
    if (pc->prev)
        pc->prev->next = pc->next;
    else
        p->lists[pc->state] = pc->next;
    if (pc->next)
        pc->next->prev = pc->prev;
    pc->prev = pc->next = NULL;
}

static void list_move(pconn_t *pc, int state)
{
    list_del(pc);
    list_add(pc, state);
}

static void conn_unref(pconn_t *pc)
{
    if (--pc->handles > 0)
        return;
    dp_upstreams_t *u = pc->u;
    free(pc);
    u->handles--;
    maybe_free_u(u);
}

static void conn_handle_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

/* Takes pc out of its pool (counting its end) and closes its handles; pc is freed from the
 * last close callback. The codec, if any, has closed or is closing on its own. */
static void conn_release(pconn_t *pc)
{
    pool_t *p = pc->pool;
    cstate_t *cs = p->cs;
    if (pc->state == PC_CONNECTING)
        p->n_connecting--;
    list_del(pc);
    pc->state = PC_CLOSED;
    pc->pool = NULL;
    p->n_conns--;
    dp_breakers_release(cs->br, DP_BR_DEFAULT, DP_BR_CX);
    GDEC(cs->cfg.cx_active);
    CINC(cs->cfg.st.cx_destroy);
    if (pc->poll_open && !pc->handoff) {
        uv_poll_stop(&pc->poll);
        uv_close((uv_handle_t *)&pc->poll, conn_handle_closed);
        pc->poll_open = false;
    }
    if (pc->fd >= 0 && !pc->handoff) {
        close(pc->fd);
        pc->fd = -1;
    }
    uv_close((uv_handle_t *)&pc->timer, conn_handle_closed);
    uv_close((uv_handle_t *)&pc->life, conn_handle_closed);
}

/* A connection of cs's went away: pools that wanted one the breaker refused try again. */
static void cs_kick(cstate_t *cs)
{
    if (!cs->overflowed)
        return;
    cs->overflowed = false;
    for (pool_t *p = cs->pools; p; p = p->next) {
        if (p->n_waits)
            pool_grow(p);
    }
}

/* The waits a pool's connecting connections cannot take fail: HTTP/1 needs one connection
 * per wait, HTTP/2 one for all of them. */
static void pool_fail_excess(pool_t *p, dp_reset_reason_t why)
{
    uint32_t guard = p->n_waits;
    p->busy++;
    while (p->wq && guard-- > 0) {
        bool covered =
            p->proto == DP_UPSTREAM_HTTP1 ? p->n_waits <= p->n_connecting : p->n_connecting > 0;
        if (covered)
            break;
        wait_fail_head(p, why);
    }
    p->busy--;
}

static void conn_fail(pconn_t *pc, dp_reset_reason_t why)
{
    pool_t *p = pc->pool;
    cstate_t *cs = p->cs;
    CINC(cs->cfg.cx_connect_fail);
    if (why == DP_RESET_CONNECT_TIMEOUT)
        CINC(cs->cfg.st.cx_connect_timeout);
    DP_LOG(DP_LOG_POOL, DP_LOG_DEBUG, "cluster %s: upstream connect %s", cs->name,
           why == DP_RESET_CONNECT_TIMEOUT ? "timed out" : "failed");
    conn_release(pc);
    pool_fail_excess(p, why);
    cs_kick(cs);
    pool_maybe_free(p);
}

static void on_fail_soon(uv_timer_t *t)
{
    pconn_t *pc = t->data;
    if (pc->state == PC_CONNECTING)
        conn_fail(pc, pc->fail);
}

static void on_connect_timeout(uv_timer_t *t)
{
    pconn_t *pc = t->data;
    if (pc->state == PC_CONNECTING && !pc->handoff)
        conn_fail(pc, DP_RESET_CONNECT_TIMEOUT);
}

/* Takes a stream slot out of service: no new streams; closes now when idle. */
static void conn_retire(pconn_t *pc)
{
    if (pc->state == PC_DRAINING || pc->state == PC_CLOSED || pc->codec == NULL)
        return;
    list_move(pc, PC_DRAINING);
    uv_timer_stop(&pc->timer);
    pc->idle_timing = false;
    uv_timer_stop(&pc->life);
    if (pc->codec->ops->active_streams(pc->codec) == 0)
        pc->codec->ops->close(pc->codec);
    else
        pc->codec->ops->go_away(pc->codec);
}

static void on_idle(uv_timer_t *t)
{
    pconn_t *pc = t->data;
    pc->idle_timing = false;
    if (pc->codec == NULL || pc->codec->ops->active_streams(pc->codec) != 0)
        return; /* in use: conn_put arms the timer again when it goes idle */
    uint64_t timeout = pc->pool->cs->cfg.idle_timeout_ms;
    uint64_t idle = uv_now(pc->u->loop) - pc->idle_since;
    if (idle < timeout) {
        pc->idle_timing = true;
        uv_timer_start(&pc->timer, on_idle, timeout - idle, 0);
        return;
    }
    CINC(pc->pool->cs->cfg.st.cx_idle_timeout);
    conn_retire(pc);
}

static void on_life_end(uv_timer_t *t)
{
    /* max_connection_duration: drain (Envoy: GOAWAY, or close once the stream is done). */
    conn_retire(t->data);
}

static void codec_on_ready(void *ud, dp_codec_conn_t *c)
{
    pconn_t *pc = ud;
    if (pc->state == PC_CLOSED || pc->state == PC_DRAINING)
        return;
    pool_t *p = pc->pool;
    conn_place(pc);
    pool_serve(p);
}

static void codec_on_close(void *ud, dp_codec_conn_t *c, dp_reset_reason_t why)
{
    pconn_t *pc = ud;
    pc->codec = NULL;
    if (pc->state == PC_CLOSED) {
        conn_unref(pc);
        return;
    }
    pool_t *p = pc->pool;
    cstate_t *cs = p->cs;
    bool carried = pc->streams > 0;
    conn_release(pc);
    /* Closed before it carried anything: the waits it was made for fail rather than loop on
     * new connections to a peer that closes them. */
    if (!carried && why != DP_RESET_NONE)
        pool_fail_excess(p, DP_RESET_CONNECT_FAIL);
    if (p->wq)
        pool_grow(p);
    cs_kick(cs);
    pool_maybe_free(p);
    conn_unref(pc);
}

static const dp_codec_cb_t codec_cb = {
    .on_stream = NULL,
    .on_ready = codec_on_ready,
    .on_close = codec_on_close,
};

/* The poll handle is closed: no one else watches the fd, the codec may take it. */
static void on_poll_closed(uv_handle_t *h)
{
    pconn_t *pc = h->data;
    pc->poll_open = false;
    if (pc->state != PC_CONNECTING) {
        /* Released while the handle closed. */
        if (pc->fd >= 0)
            close(pc->fd);
        pc->fd = -1;
        conn_handle_closed(h);
        return;
    }
    pool_t *p = pc->pool;
    const clcfg_t *f = &p->cs->cfg;
    int fd = pc->fd;
    pc->fd = -1;
    pc->handoff = false;
    pc->handles--; /* the poll handle's share; the timers still hold pc */
    if (p->addr.sa.sa_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    dp_codec_new_fn mk = p->proto == DP_UPSTREAM_HTTP2 ? p->u->h2_new : p->u->h1_new;
    if (mk == NULL) {
        /* No codec for that protocol in this build. */
        close(fd);
        conn_fail(pc, DP_RESET_CONNECT_FAIL);
        return;
    }
    pc->codec = mk(p->u->loop, fd, false, &f->limits, &codec_cb, pc);
    if (pc->codec == NULL) {
        conn_fail(pc, DP_RESET_CONNECT_FAIL);
        return;
    }
    pc->handles++; /* the codec's share, dropped by its on_close */
    p->n_connecting--;
    list_move(pc, PC_READY);
    if (f->max_duration_ms)
        uv_timer_start(&pc->life, on_life_end, f->max_duration_ms, 0);
    conn_place(pc);
    pool_serve(p);
}

static void on_writable(uv_poll_t *h, int status, int events)
{
    pconn_t *pc = h->data;
    if (pc->state != PC_CONNECTING || pc->handoff)
        return;
    int err = 0;
    socklen_t len = sizeof(err);
    if (status < 0)
        err = -status;
    else if (getsockopt(pc->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == EINPROGRESS)
        return;
    if (err) {
        conn_fail(pc, DP_RESET_CONNECT_FAIL);
        return;
    }
    uv_timer_stop(&pc->timer);
    uv_poll_stop(h);
    pc->handoff = true;
    uv_close((uv_handle_t *)h, on_poll_closed);
}

/* socket(), the source address, a non-blocking connect() and the poll for its end. */
static int conn_connect(pconn_t *pc)
{
    pool_t *p = pc->pool;
    const clcfg_t *f = &p->cs->cfg;
    const dp_addr_t *a = &p->addr;
    int family = a->sa.sa_family;
    struct sockaddr_un sun;
    const struct sockaddr *sa = &a->sa;
    socklen_t len;
    switch (family) {
    case AF_INET:
        len = sizeof(struct sockaddr_in);
        break;
    case AF_INET6:
        len = sizeof(struct sockaddr_in6);
        break;
    case AF_UNIX:
        memset(&sun, 0, sizeof(sun));
        sun.sun_family = AF_UNIX;
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", p->path);
        sa = (const struct sockaddr *)&sun;
        len = sizeof(sun);
        break;
    default:
        return -EAFNOSUPPORT;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    pc->fd = fd;
    if (f->keepalive && family != AF_UNIX) {
        /* upstream_connection_options.tcp_keepalive; an unset value keeps the system's. */
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
        int v;
        if (f->ka_probes && (v = (int)(f->ka_probes > INT32_MAX ? INT32_MAX : f->ka_probes)))
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &v, sizeof(v));
        if (f->ka_time_s && (v = (int)(f->ka_time_s > INT32_MAX ? INT32_MAX : f->ka_time_s)))
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, sizeof(v));
        if (f->ka_interval_s &&
            (v = (int)(f->ka_interval_s > INT32_MAX ? INT32_MAX : f->ka_interval_s)))
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &v, sizeof(v));
    }
    if (f->has_source && f->source.sa.sa_family == family) {
        /* Let connect() pick the port, so that many connections from one source address do
         * not exhaust the ephemeral ports bind() would reserve. */
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, &f->source.sa, len) < 0)
            return -errno;
    }
    if (connect(fd, sa, len) < 0 && errno != EINPROGRESS)
        return -errno;
    int rc = uv_poll_init_socket(p->u->loop, &pc->poll, fd);
    if (rc < 0)
        return rc;
    pc->poll.data = pc;
    pc->poll_open = true;
    pc->handles++;
    return uv_poll_start(&pc->poll, UV_WRITABLE, on_writable);
}

static void conn_start(pool_t *p)
{
    cstate_t *cs = p->cs;
    dp_upstreams_t *u = p->u;
    pconn_t *pc = xcalloc(1, sizeof(*pc));
    pc->pool = p;
    pc->u = u;
    pc->fd = -1;
    uv_timer_init(u->loop, &pc->timer);
    uv_timer_init(u->loop, &pc->life);
    pc->timer.data = pc->life.data = pc;
    pc->handles = 2;
    u->handles++;
    list_add(pc, PC_CONNECTING);
    p->n_connecting++;
    p->n_conns++;
    dp_breakers_take(cs->br, DP_BR_DEFAULT, DP_BR_CX);
    CINC(cs->cfg.cx_total);
    CINC(p->proto == DP_UPSTREAM_HTTP2 ? cs->cfg.st.cx_http2_total : cs->cfg.st.cx_http1_total);
    GINC(cs->cfg.cx_active);
    int rc = conn_connect(pc);
    if (rc < 0) {
        /* Reported from the loop, never from inside dp_upstream_request. */
        DP_LOG(DP_LOG_POOL, DP_LOG_DEBUG, "cluster %s: connect: %s", cs->name, uv_strerror(rc));
        pc->fail = DP_RESET_CONNECT_FAIL;
        uv_timer_start(&pc->timer, on_fail_soon, 0, 0);
        return;
    }
    if (cs->cfg.connect_timeout_ms)
        uv_timer_start(&pc->timer, on_connect_timeout, cs->cfg.connect_timeout_ms, 0);
}

/* Puts an open connection in the list its codec's state says, and times its idleness. */
static void conn_place(pconn_t *pc)
{
    if (pc->state == PC_CLOSED || pc->state == PC_DRAINING || pc->codec == NULL)
        return;
    pool_t *p = pc->pool;
    dp_codec_conn_t *c = pc->codec;
    uint32_t active = c->ops->active_streams(c);
    if (p->draining && p->n_waits == 0) {
        conn_retire(pc);
        return;
    }
    if (c->ops->can_take_stream(c)) {
        if (pc->state != PC_READY || p->lists[PC_READY] != pc)
            list_move(pc, PC_READY); /* at the head: the most recently used is reused first */
    } else if (active == 0) {
        /* connection: close or GOAWAY, nothing in flight: it will not take streams again. */
        conn_retire(pc);
        return;
    } else if (pc->state != PC_BUSY) {
        list_move(pc, PC_BUSY);
    }
    if (active == 0 && p->cs->cfg.idle_timeout_ms) {
        pc->idle_since = uv_now(pc->u->loop);
        if (!pc->idle_timing) {
            pc->idle_timing = true;
            uv_timer_start(&pc->timer, on_idle, p->cs->cfg.idle_timeout_ms, 0);
        }
    } else if (!pc->idle_timing) {
        uv_timer_stop(&pc->timer);
    }
}

/* Hands pc's stream slot to a caller. */
static void conn_give(pconn_t *pc, const dp_upstream_cb_t *cb, void *ud, const dp_addr_t *host)
{
    if (!pc->idle_timing)
        uv_timer_stop(&pc->timer);
    pc->streams++;
    cb->on_ready(ud, pc->codec, host);
    if (pc->state == PC_CLOSED || pc->state == PC_DRAINING || pc->codec == NULL)
        return;
    uint32_t max = pc->pool->cs->cfg.max_requests_per_conn;
    if (max && pc->streams >= max) {
        conn_retire(pc);
        return;
    }
    conn_place(pc);
}

static pconn_t *pick_ready(pool_t *p)
{
    for (uint32_t guard = p->n_conns + 1; p->lists[PC_READY] && guard > 0; guard--) {
        pconn_t *pc = p->lists[PC_READY];
        if (pc->codec->ops->can_take_stream(pc->codec))
            return pc;
        conn_place(pc);
        if (p->lists[PC_READY] == pc)
            list_move(pc, PC_BUSY);
    }
    return NULL;
}

/* Serves waits with the pool's ready connections, then connects for what is left. */
static void pool_serve(pool_t *p)
{
    p->busy++;
    for (uint32_t guard = p->n_waits; p->wq && guard > 0; guard--) {
        pconn_t *pc = pick_ready(p);
        if (pc == NULL)
            break;
        dp_upstream_wait_t *w = p->wq;
        wait_unlink(w);
        const dp_upstream_cb_t *cb = w->cb;
        void *ud = w->ud;
        const dp_addr_t *host = w->host;
        wait_free(p->u, w);
        conn_give(pc, cb, ud, host);
    }
    p->busy--;
    if (p->wq)
        pool_grow(p);
    else
        pool_maybe_free(p);
}

/* Starts the connections the queued waits need, within max_connections (Envoy lets a pool
 * with no connection at all make one regardless, so that no pool starves). */
static void pool_grow(pool_t *p)
{
    cstate_t *cs = p->cs;
    if (p->u->closing)
        return;
    for (;;) {
        uint32_t need =
            p->proto == DP_UPSTREAM_HTTP1 ? p->n_waits : (p->n_waits && p->n_connecting == 0);
        if (p->n_connecting >= need)
            return;
        if (p->n_conns > 0 && dp_breakers_open(cs->br, DP_BR_DEFAULT, DP_BR_CX)) {
            CINC(cs->cfg.st.cx_overflow);
            cs->overflowed = true;
            return;
        }
        conn_start(p);
    }
}

static void pool_maybe_free(pool_t *p)
{
    bool disposable =
        p->draining || p->cs->dead || p->u->closing || p->cs->cfg.type == DP_CLUSTER_ORIGINAL_DST;
    if (!disposable || p->n_conns || p->wq || p->busy)
        return;
    cstate_t *cs = p->cs;
    ptab_remove(p);
    for (pool_t **pp = &cs->pools; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    dp_breakers_release(cs->br, DP_BR_DEFAULT, DP_BR_POOLS);
    free(p);
    cs_maybe_free(cs);
}

/* No new requests reach the pool; its connections finish their streams and close. */
static void pool_drain(pool_t *p)
{
    if (p->draining)
        return;
    p->draining = true;
    ptab_remove(p);
    if (p->n_waits == 0) {
        for (int l = PC_READY; l <= PC_BUSY; l++) {
            for (uint32_t guard = p->n_conns + 1; p->lists[l] && guard > 0; guard--)
                conn_retire(p->lists[l]);
        }
    }
    pool_maybe_free(p);
}

/* ---- DNS ---- */

static void dns_maybe_free(dns_t *d)
{
    if (d->cs || d->timer_open || d->busy)
        return;
    for (size_t i = 0; i < d->n_hosts; i++) {
        free(d->hosts[i].name);
        free(d->hosts[i].addrs);
    }
    dp_upstreams_t *u = d->u;
    free(d->hosts);
    free(d->eps);
    free(d);
    u->handles--;
    maybe_free_u(u);
}

static bool eps_have(const dp_endpoint_t *eps, size_t n, const dp_addr_t *a)
{
    for (size_t i = 0; i < n; i++) {
        if (addr_eq(&eps[i].addr, a))
            return true;
    }
    return false;
}

/* The cluster's hosts from the latest answers: every address of every host (STRICT_DNS), or
 * the first address of the one host (LOGICAL_DNS). STRICT_DNS pools of addresses that went
 * away drain; LOGICAL_DNS keeps its connections, as Envoy does. */
static void dns_rebuild(dns_t *d)
{
    size_t n = 0;
    for (size_t i = 0; i < d->n_hosts; i++)
        n += d->logical ? (d->hosts[i].n > 0) : d->hosts[i].n;
    if (d->logical && n > 1)
        n = 1;
    dp_endpoint_t *eps = n ? xcalloc(n, sizeof(*eps)) : NULL;
    size_t k = 0;
    for (size_t i = 0; i < d->n_hosts && k < n; i++) {
        const dns_host_t *h = &d->hosts[i];
        for (size_t j = 0; j < h->n && k < n; j++) {
            eps[k].addr = h->addrs[j];
            eps[k].weight = h->weight;
            eps[k].priority = h->priority;
            eps[k].health = h->health;
            k++;
            if (d->logical)
                break;
        }
    }
    bool same = k == d->n_eps;
    for (size_t i = 0; same && i < k; i++) {
        same = addr_eq(&eps[i].addr, &d->eps[i].addr) && eps[i].weight == d->eps[i].weight &&
               eps[i].priority == d->eps[i].priority;
    }
    if (same) {
        /* The same answer: keep the array, and with it the balancer's state. */
        free(eps);
        return;
    }
    cstate_t *cs = d->cs;
    if (!d->logical) {
        for (pool_t *p = cs->pools, *next; p; p = next) {
            next = p->next;
            if (!p->draining && !eps_have(eps, k, &p->addr))
                pool_drain(p);
        }
    }
    free(d->eps);
    d->eps = eps;
    d->n_eps = k;
    if (cs->lb)
        dp_lb_invalidate(cs->lb);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    dns_host_t *h = req->data;
    dns_t *d = h->d;
    h->busy = false;
    d->busy--;
    if (d->cs == NULL) {
        uv_freeaddrinfo(res);
        dns_maybe_free(d);
        return;
    }
    if (status < 0) {
        /* Keep the last answer, as Envoy does. */
        DP_LOG(DP_LOG_DNS, DP_LOG_DEBUG, "cluster %s: resolving %s: %s", d->cs->name, h->name,
               uv_strerror(status));
        return;
    }
    bool have4 = false, have6 = false;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        have4 |= ai->ai_family == AF_INET;
        have6 |= ai->ai_family == AF_INET6;
    }
    int want = AF_UNSPEC; /* ALL */
    if (d->family == DP_DNS_AUTO)
        want = have6 ? AF_INET6 : AF_INET;
    else if (d->family == DP_DNS_V4_PREFERRED)
        want = have4 ? AF_INET : AF_INET6;
    else if (d->family == DP_DNS_V4_ONLY)
        want = AF_INET;
    else if (d->family == DP_DNS_V6_ONLY)
        want = AF_INET6;
    dp_addr_t *addrs = xcalloc(DNS_MAX_ADDRS, sizeof(*addrs));
    size_t n = 0;
    for (struct addrinfo *ai = res; ai && n < DNS_MAX_ADDRS; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (want != AF_UNSPEC && ai->ai_family != want)
            continue;
        dp_addr_t a;
        memset(&a, 0, sizeof(a));
        memcpy(&a.sa, ai->ai_addr, ai->ai_family == AF_INET ? sizeof(a.in) : sizeof(a.in6));
        bool dup = false;
        for (size_t i = 0; i < n && !dup; i++)
            dup = addr_eq(&addrs[i], &a);
        if (!dup)
            addrs[n++] = a;
    }
    uv_freeaddrinfo(res);
    free(h->addrs);
    h->addrs = addrs;
    h->n = n;
    dns_rebuild(d);
}

static void dns_query(dns_host_t *h)
{
    dns_t *d = h->d;
    if (h->busy)
        return;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = d->family == DP_DNS_V4_ONLY   ? AF_INET
                      : d->family == DP_DNS_V6_ONLY ? AF_INET6
                                                    : AF_UNSPEC;
    h->req.data = h;
    int rc = uv_getaddrinfo(d->u->loop, &h->req, on_resolved, h->name, h->port, &hints);
    if (rc < 0) {
        DP_LOG(DP_LOG_DNS, DP_LOG_DEBUG, "resolving %s: %s", h->name, uv_strerror(rc));
        return;
    }
    h->busy = true;
    d->busy++;
}

static void on_dns_refresh(uv_timer_t *t)
{
    dns_t *d = t->data;
    for (size_t i = 0; i < d->n_hosts; i++)
        dns_query(&d->hosts[i]);
}

static void on_dns_timer_closed(uv_handle_t *h)
{
    dns_t *d = h->data;
    d->timer_open = false;
    dns_maybe_free(d);
}

static void dns_stop(cstate_t *cs)
{
    dns_t *d = cs->dns;
    if (d == NULL)
        return;
    cs->dns = NULL;
    d->cs = NULL;
    uv_close((uv_handle_t *)&d->timer, on_dns_timer_closed);
    for (size_t i = 0; i < d->n_hosts; i++) {
        if (d->hosts[i].busy)
            uv_cancel((uv_req_t *)&d->hosts[i].req);
    }
}

static bool dns_same(const dns_t *d, const dp_cluster_t *c)
{
    size_t n = c->type == DP_CLUSTER_LOGICAL_DNS && c->n_dns_hosts ? 1 : c->n_dns_hosts;
    if (d->n_hosts != n || d->logical != (c->type == DP_CLUSTER_LOGICAL_DNS) ||
        d->family != c->dns_family || d->refresh_ms != c->dns_refresh_ms)
        return false;
    for (size_t i = 0; i < n; i++) {
        const dp_endpoint_t *e = &c->dns_hosts[i];
        const dns_host_t *h = &d->hosts[i];
        char port[8];
        snprintf(port, sizeof(port), "%u", e->port);
        if (strcmp(h->name, e->hostname) != 0 || strcmp(h->port, port) != 0 ||
            h->weight != (e->weight ? e->weight : 1) || h->priority != e->priority ||
            h->health != e->health)
            return false;
    }
    return true;
}

/* Starts resolving c's hosts now and every dns_refresh_ms. */
static void dns_start(cstate_t *cs, const dp_cluster_t *c)
{
    dp_upstreams_t *u = cs->u;
    dns_t *d = xcalloc(1, sizeof(*d));
    d->u = u;
    d->cs = cs;
    d->family = c->dns_family;
    d->logical = c->type == DP_CLUSTER_LOGICAL_DNS;
    d->refresh_ms = c->dns_refresh_ms ? c->dns_refresh_ms : 5000;
    d->n_hosts = d->logical && c->n_dns_hosts ? 1 : c->n_dns_hosts;
    d->hosts = d->n_hosts ? xcalloc(d->n_hosts, sizeof(*d->hosts)) : NULL;
    for (size_t i = 0; i < d->n_hosts; i++) {
        const dp_endpoint_t *e = &c->dns_hosts[i];
        dns_host_t *h = &d->hosts[i];
        h->d = d;
        h->name = strdup(e->hostname);
        if (h->name == NULL)
            abort();
        snprintf(h->port, sizeof(h->port), "%u", e->port);
        h->weight = e->weight ? e->weight : 1;
        h->priority = e->priority;
        h->health = e->health;
    }
    uv_timer_init(u->loop, &d->timer);
    d->timer.data = d;
    d->timer_open = true;
    u->handles++;
    cs->dns = d;
    uv_timer_start(&d->timer, on_dns_refresh, d->refresh_ms, d->refresh_ms);
    for (size_t i = 0; i < d->n_hosts; i++)
        dns_query(&d->hosts[i]);
}

/* ---- the public calls ---- */

dp_upstreams_t *dp_upstreams_new(uv_loop_t *loop, dp_codec_new_fn h1_new, dp_codec_new_fn h2_new)
{
    dp_upstreams_t *u = xcalloc(1, sizeof(*u));
    u->loop = loop;
    u->h1_new = h1_new;
    u->h2_new = h2_new;
    u->rng = (uint64_t)(uintptr_t)u ^ uv_hrtime() ^ 0x9e3779b97f4a7c15ull;
    if (u->rng == 0)
        u->rng = 1;
    return u;
}

dp_upstream_proto_t dp_upstream_proto_for(const dp_cluster_t *c, dp_http_version_t downstream)
{
    switch (c->proto) {
    case DP_CLUSTER_PROTO_HTTP2:
        return DP_UPSTREAM_HTTP2;
    case DP_CLUSTER_PROTO_DOWNSTREAM:
        return downstream == DP_HTTP_2 ? DP_UPSTREAM_HTTP2 : DP_UPSTREAM_HTTP1;
    default:
        return DP_UPSTREAM_HTTP1;
    }
}

static bool is_dns(dp_cluster_type_t t)
{
    return t == DP_CLUSTER_STRICT_DNS || t == DP_CLUSTER_LOGICAL_DNS;
}

void dp_upstreams_apply(dp_upstreams_t *u, const dp_snapshot_t *snap)
{
    if (u->closing || snap == NULL)
        return;
    for (size_t i = 0; i < u->ccap; i++) {
        for (cstate_t *cs = u->ctab[i]; cs; cs = cs->hnext)
            cs->seen = false;
    }
    for (size_t i = 0; i < snap->n_clusters; i++) {
        const dp_cluster_t *c = &snap->clusters[i];
        cstate_t *cs = cs_find(u, c->name, NULL);
        if (cs == NULL && !is_dns(c->type))
            continue;
        if (cs == NULL)
            cs = cs_get(u, c);
        cs->seen = true;
        cs->dead = false;
        cs_config(cs, c);
        if (is_dns(c->type)) {
            if (cs->dns && !dns_same(cs->dns, c)) {
                for (pool_t *p = cs->pools, *next; p; p = next) {
                    next = p->next;
                    pool_drain(p);
                }
                dns_stop(cs);
            }
            if (cs->dns == NULL)
                dns_start(cs, c);
        } else {
            dns_stop(cs);
        }
        for (pool_t *p = cs->pools, *next; p; p = next) {
            next = p->next;
            bool gone = c->proto == DP_CLUSTER_PROTO_HTTP1   ? p->proto != DP_UPSTREAM_HTTP1
                        : c->proto == DP_CLUSTER_PROTO_HTTP2 ? p->proto != DP_UPSTREAM_HTTP2
                                                             : false;
            if (c->type == DP_CLUSTER_STATIC || c->type == DP_CLUSTER_EDS)
                gone = gone || !eps_have(c->endpoints, c->n_endpoints, &p->addr);
            if (gone)
                pool_drain(p);
            else
                pool_maybe_free(p);
        }
    }
    for (size_t i = 0; i < u->ccap; i++) {
        for (cstate_t *cs = u->ctab[i], *next; cs; cs = next) {
            next = cs->hnext;
            if (cs->seen)
                continue;
            cs->dead = true;
            dns_stop(cs);
            for (pool_t *p = cs->pools, *pn; p; p = pn) {
                pn = p->next;
                pool_drain(p);
            }
            /* pool_drain frees cs with its last pool; a cluster without pools goes now. */
        }
    }
    for (size_t i = 0; i < u->ccap; i++) {
        for (cstate_t *cs = u->ctab[i], *next; cs; cs = next) {
            next = cs->hnext;
            cs_maybe_free(cs);
        }
    }
}

dp_upstream_wait_t *dp_upstream_request(dp_upstreams_t *u, const dp_cluster_t *c,
                                        dp_upstream_proto_t proto, const dp_lb_ctx_t *lb,
                                        const dp_upstream_cb_t *cb, void *ud)
{
    if (u->closing) {
        cb->on_failure(ud, DP_RESET_NO_HEALTHY_HOST, NULL);
        return NULL;
    }
    cstate_t *cs = cs_get(u, c);
    pick_cluster = c;
    const dp_addr_t *host = NULL;
    dp_addr_t odst;
    if (c->type == DP_CLUSTER_ORIGINAL_DST) {
        const struct sockaddr *sa = lb ? lb->original_dst : NULL;
        if (sa && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)) {
            memset(&odst, 0, sizeof(odst));
            memcpy(&odst.sa, sa, sa->sa_family == AF_INET ? sizeof(odst.in) : sizeof(odst.in6));
            host = &odst;
        }
    } else if (is_dns(c->type)) {
        if (cs->dns == NULL)
            dns_start(cs, c);
        const dp_endpoint_t *e = lb_pick(cs, cs->dns->eps, cs->dns->n_eps, lb, proto);
        host = e ? &e->addr : NULL;
    } else {
        if (c->outlier)
            dp_outlier_tick(c->outlier, uv_now(u->loop));
        const dp_endpoint_t *e = lb_pick(cs, c->endpoints, c->n_endpoints, lb, proto);
        host = e ? &e->addr : NULL;
    }
    if (host == NULL) {
        CINC(cs->cfg.st.cx_none_healthy);
        cb->on_failure(ud, DP_RESET_NO_HEALTHY_HOST, NULL);
        return NULL;
    }
    pool_t *p = pool_get(cs, host, proto);
    if (p == NULL) {
        CINC(cs->cfg.st.cx_pool_overflow);
        cb->on_failure(ud, DP_RESET_OVERFLOW, host == &odst ? NULL : host);
        return NULL;
    }
    /* DNS and ORIGINAL_DST hosts live in the pool; the others in the caller's snapshot. */
    if (host == &odst || is_dns(c->type))
        host = &p->addr;
    pconn_t *pc = p->wq ? NULL : pick_ready(p);
    if (pc) {
        conn_give(pc, cb, ud, host);
        return NULL;
    }
    if (!dp_breakers_try(cs->br, DP_BR_DEFAULT, DP_BR_PENDING)) {
        CINC(cs->cfg.st.rq_pending_overflow);
        cb->on_failure(ud, DP_RESET_OVERFLOW, host);
        pool_maybe_free(p);
        return NULL;
    }
    dp_upstream_wait_t *w = wait_new(u);
    w->pool = p;
    w->cb = cb;
    w->ud = ud;
    w->host = host;
    w->prev = p->wq_tail;
    if (p->wq_tail)
        p->wq_tail->next = w;
    else
        p->wq = w;
    p->wq_tail = w;
    p->n_waits++;
    CINC(cs->cfg.st.rq_pending_total);
    GINC(cs->cfg.st.rq_pending_active);
    pool_grow(p);
    return w;
}

static void maybe_free_u(dp_upstreams_t *u)
{
    if (!u->closing || u->n_cstates || u->handles)
        return;
    while (u->free_waits) {
        dp_upstream_wait_t *w = u->free_waits;
        u->free_waits = w->next;
        free(w);
    }
    free(u->ctab);
    free(u->ptab);
    free(u);
}

void dp_upstreams_close(dp_upstreams_t *u)
{
    if (u == NULL || u->closing)
        return;
    u->closing = true;
    u->handles++; /* holds u while the loop below frees what it can */
    for (size_t i = 0; i < u->ccap; i++) {
        for (cstate_t *cs = u->ctab[i], *next; cs; cs = next) {
            next = cs->hnext;
            cs->dead = true;
            dns_stop(cs);
            for (pool_t *p = cs->pools, *pn; p; p = pn) {
                pn = p->next;
                p->draining = true;
                p->busy++;
                ptab_remove(p);
                for (uint32_t guard = p->n_waits; p->wq && guard > 0; guard--)
                    wait_fail_head(p, DP_RESET_CONNECT_FAIL);
                for (int l = 0; l < PC_NLISTS; l++) {
                    for (uint32_t guard = p->n_conns + 1; p->lists[l] && guard > 0; guard--) {
                        pconn_t *pc = p->lists[l];
                        if (pc->codec)
                            pc->codec->ops->close(pc->codec); /* on_close releases it */
                        if (p->lists[l] == pc)
                            conn_release(pc);
                    }
                }
                p->busy--;
            }
        }
    }
    for (size_t i = 0; i < u->ccap; i++) {
        for (cstate_t *cs = u->ctab[i], *next; cs; cs = next) {
            next = cs->hnext;
            /* The last pool freed frees cs too. */
            if (cs->pools == NULL) {
                cs_maybe_free(cs);
                continue;
            }
            for (pool_t *p = cs->pools, *pn; p; p = pn) {
                pn = p->next;
                pool_maybe_free(p);
            }
        }
    }
    u->handles--;
    maybe_free_u(u);
}

/* ---- what the router tells the pools ---- */

static dp_breakers_t *breakers_of(dp_upstreams_t *u, const dp_cluster_t *c)
{
    return c->breakers ? c->breakers : cs_get(u, c)->br;
}

bool dp_upstream_rq_admit(dp_upstreams_t *u, const dp_cluster_t *c)
{
    if (dp_breakers_try(breakers_of(u, c), DP_BR_DEFAULT, DP_BR_RQ))
        return true;
    /* Envoy counts a max_requests overflow as upstream_rq_pending_overflow too. */
    CINC(c->stats.rq_pending_overflow);
    return false;
}

void dp_upstream_rq_release(dp_upstreams_t *u, const dp_cluster_t *c)
{
    dp_breakers_release(breakers_of(u, c), DP_BR_DEFAULT, DP_BR_RQ);
}

bool dp_upstream_retry_admit(dp_upstreams_t *u, const dp_cluster_t *c)
{
    if (dp_breakers_try(breakers_of(u, c), DP_BR_DEFAULT, DP_BR_RETRY))
        return true;
    CINC(c->stats.rq_retry_overflow);
    return false;
}

void dp_upstream_retry_release(dp_upstreams_t *u, const dp_cluster_t *c)
{
    dp_breakers_release(breakers_of(u, c), DP_BR_DEFAULT, DP_BR_RETRY);
}

/* Outlier detection of a static or EDS cluster: host is one of its endpoints' addresses (the
 * address is an endpoint's first member). The hosts the pools resolve (DNS) or take from the
 * request (ORIGINAL_DST) have no outlier state. */
void dp_upstream_host_result(dp_upstreams_t *u, const dp_cluster_t *c, const dp_addr_t *host,
                             int status, dp_reset_reason_t why)
{
    if (c->outlier == NULL || host == NULL || c->n_endpoints == 0)
        return;
    uintptr_t a = (uintptr_t)host, lo = (uintptr_t)c->endpoints;
    uintptr_t hi = (uintptr_t)(c->endpoints + c->n_endpoints);
    if (a < lo || a >= hi || (a - lo) % sizeof(dp_endpoint_t) != 0)
        return;
    const dp_endpoint_t *e = &c->endpoints[(a - lo) / sizeof(dp_endpoint_t)];
    if (status > 0) {
        dp_outlier_result(e->outlier, DP_OUTLIER_EXTERNAL, status, false, uv_now(u->loop));
        return;
    }
    switch (why) {
    case DP_RESET_OVERFLOW:
    case DP_RESET_NO_HEALTHY_HOST:
    case DP_RESET_NONE:
        return; /* not the host's doing */
    default:
        break;
    }
    bool timeout = why == DP_RESET_CONNECT_TIMEOUT || why == DP_RESET_LOCAL;
    dp_outlier_result(e->outlier, DP_OUTLIER_LOCAL_FAILURE, 0, timeout, uv_now(u->loop));
}
