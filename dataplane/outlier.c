/* Outlier detection shared by every worker (dataplane/outlier.h). */
#include "dataplane/outlier.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "dataplane/log.h"

/* What detected an outlier (Envoy's OutlierEjectionType), with its stat name. */
enum {
    K_5XX,
    K_GW,
    K_LO,
    K_SR,
    K_FP,
    K_LO_SR,
    K_LO_FP,
    K_N,
};
static const char *const kind_names[K_N] = {
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
    "success_rate",
    "failure_percentage",
    "local_origin_success_rate",
    "local_origin_failure_percentage",
};

#define CINC(c)                \
    do {                       \
        if (c)                 \
            dp_counter_inc(c); \
    } while (0)

typedef struct host host_t;

struct host {
    dp_outlier_host_t pub; /* first: a dp_outlier_host_t * is a host_t * */
    dp_outlier_t *od;
    atomic_uint refs;                /* one per snapshot endpoint that points here */
    _Atomic uint32_t c5xx, cgw, clo; /* consecutive failures */
    /* this interval's results: external and local-origin, total and failed */
    _Atomic uint64_t ext_n, ext_fail, lo_n, lo_fail;
    /* immutable once made */
    dp_addr_t addr;
    uint64_t hash;
    /* under od->lock */
    host_t *hnext;
    bool in_set;
    uint64_t ejected_at;
    uint64_t jitter_ms; /* added to this ejection's time */
    uint32_t backoff;   /* the ejection time's multiplier */
};

typedef struct od_stats {
    dp_gauge_t *active;
    dp_counter_t *total, *overflow, *enforced_total, *consecutive_5xx;
    dp_counter_t *detected[K_N], *enforced[K_N];
} od_stats_t;

struct dp_outlier {
    pthread_mutex_t lock;
    atomic_uint refs;
    char *name;
    dp_outlier_t *next; /* in the registry */
    /* read without the lock on the result path */
    _Atomic uint32_t th_5xx, th_gw, th_lo;
    atomic_bool split;
    _Atomic uint64_t next_eval_ms, interval_ms;
    /* under lock */
    dp_outlier_config_t cfg;
    host_t **tab;
    size_t cap, n_hosts;
    uint32_t n_set, n_ejected;
    uint64_t rng;
    _Atomic bool stats_made;
    od_stats_t st;
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static dp_outlier_t *reg_head;
static size_t reg_n;

dp_outlier_config_t dp_outlier_config_default(void)
{
    dp_outlier_config_t c = {
        .consecutive_5xx = 5,
        .consecutive_gateway_failure = 5,
        .consecutive_local_origin_failure = 5,
        .split_external_local_origin_errors = false,
        .interval_ms = 10000,
        .base_ejection_time_ms = 30000,
        .max_ejection_time_ms = 300000,
        .max_ejection_percent = 10,
        .always_eject_one_host = false,
        .enforcing_consecutive_5xx = 100,
        .enforcing_consecutive_gateway_failure = 0,
        .enforcing_consecutive_local_origin_failure = 100,
        .enforcing_success_rate = 100,
        .enforcing_local_origin_success_rate = 100,
        .enforcing_failure_percentage = 0,
        .enforcing_failure_percentage_local_origin = 0,
        .success_rate_minimum_hosts = 5,
        .success_rate_request_volume = 100,
        .success_rate_stdev_factor = 1900,
        .failure_percentage_threshold = 85,
        .failure_percentage_minimum_hosts = 5,
        .failure_percentage_request_volume = 50,
    };
    return c;
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* ---- addresses ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t addr_hash(const dp_addr_t *a)
{
    uint64_t h = 14695981039346656037ull;
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

static bool addr_eq(const dp_addr_t *a, const dp_addr_t *b)
{
    if (a->sa.sa_family != b->sa.sa_family)
        return false;
    switch (a->sa.sa_family) {
    case AF_INET:
        return a->in.sin_port == b->in.sin_port && a->in.sin_addr.s_addr == b->in.sin_addr.s_addr;
    case AF_INET6:
        return a->in6.sin6_port == b->in6.sin6_port &&
               memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, sizeof(a->in6.sin6_addr)) == 0;
    case AF_UNIX:
        return a->unix_path && b->unix_path && strcmp(a->unix_path, b->unix_path) == 0;
    default:
        return false;
    }
}

/* ---- the host table (under od->lock) ---- */

static host_t *tab_find(dp_outlier_t *od, const dp_addr_t *a, uint64_t h)
{
    if (od->cap == 0)
        return NULL;
    for (host_t *x = od->tab[h & (od->cap - 1)]; x; x = x->hnext) {
        if (x->hash == h && addr_eq(&x->addr, a))
            return x;
    }
    return NULL;
}

static void tab_grow(dp_outlier_t *od)
{
    size_t cap = od->cap ? od->cap * 2 : 16;
    host_t **t = calloc(cap, sizeof(*t));
    if (t == NULL)
        abort();
    for (size_t i = 0; i < od->cap; i++) {
        for (host_t *x = od->tab[i], *next; x; x = next) {
            next = x->hnext;
            x->hnext = t[x->hash & (cap - 1)];
            t[x->hash & (cap - 1)] = x;
        }
    }
    free(od->tab);
    od->tab = t;
    od->cap = cap;
}

static void host_free(host_t *x)
{
    free((char *)x->addr.unix_path);
    free(x);
}

static host_t *tab_get(dp_outlier_t *od, const dp_addr_t *a)
{
    uint64_t h = addr_hash(a);
    host_t *x = tab_find(od, a, h);
    if (x)
        return x;
    if (od->n_hosts + 1 > od->cap)
        tab_grow(od);
    x = calloc(1, sizeof(*x));
    if (x == NULL)
        abort();
    x->od = od;
    x->addr = *a;
    x->addr.unix_path = NULL;
    if (a->sa.sa_family == AF_UNIX && a->unix_path &&
        (x->addr.unix_path = strdup(a->unix_path)) == NULL)
        abort();
    x->hash = h;
    x->hnext = od->tab[h & (od->cap - 1)];
    od->tab[h & (od->cap - 1)] = x;
    od->n_hosts++;
    return x;
}

static void tab_remove(dp_outlier_t *od, host_t *x)
{
    for (host_t **pp = &od->tab[x->hash & (od->cap - 1)]; *pp; pp = &(*pp)->hnext) {
        if (*pp == x) {
            *pp = x->hnext;
            od->n_hosts--;
            return;
        }
    }
}

/* ---- ejection (under od->lock) ---- */

static uint64_t od_random(dp_outlier_t *od)
{
    uint64_t x = od->rng; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    od->rng = x;
    return x * 2685821657736338717ull;
}

static uint32_t enforcing(const dp_outlier_config_t *c, int kind)
{
    switch (kind) {
    case K_5XX:
        return c->enforcing_consecutive_5xx;
    case K_GW:
        return c->enforcing_consecutive_gateway_failure;
    case K_LO:
        return c->enforcing_consecutive_local_origin_failure;
    case K_SR:
        return c->enforcing_success_rate;
    case K_FP:
        return c->enforcing_failure_percentage;
    case K_LO_SR:
        return c->enforcing_local_origin_success_rate;
    default:
        return c->enforcing_failure_percentage_local_origin;
    }
}

static void set_active(dp_outlier_t *od)
{
    if (od->st.active)
        dp_gauge_set(od->st.active, od->n_ejected);
}

static void eject(dp_outlier_t *od, host_t *x, int kind, uint64_t now)
{
    const dp_outlier_config_t *c = &od->cfg;
    uint32_t max_pct = c->max_ejection_percent > 100 ? 100 : c->max_ejection_percent;
    double pct = od->n_set ? 100.0 * od->n_ejected / od->n_set : 100.0;
    if (!(pct < max_pct || (c->always_eject_one_host && od->n_ejected == 0))) {
        CINC(od->st.overflow);
        return;
    }
    if (kind == K_5XX || kind == K_SR)
        CINC(od->st.total); /* Envoy's deprecated ejections_total counts only these */
    if (od_random(od) % 100 >= enforcing(c, kind))
        return;
    atomic_store_explicit(&x->pub.ejected, true, memory_order_relaxed);
    x->ejected_at = now;
    x->jitter_ms =
        c->max_ejection_time_jitter_ms ? od_random(od) % (c->max_ejection_time_jitter_ms + 1) : 0;
    if ((uint64_t)x->backoff * c->base_ejection_time_ms <
        c->max_ejection_time_ms + c->base_ejection_time_ms)
        x->backoff++;
    od->n_ejected++;
    set_active(od);
    CINC(od->st.enforced_total);
    CINC(od->st.enforced[kind]);
    DP_LOG(DP_LOG_POOL, DP_LOG_DEBUG, "cluster %s: host ejected (%s), %u of %u ejected", od->name,
           kind_names[kind], od->n_ejected, od->n_set);
}

static void uneject(dp_outlier_t *od, host_t *x)
{
    atomic_store_explicit(&x->pub.ejected, false, memory_order_relaxed);
    atomic_store_explicit(&x->c5xx, 0, memory_order_relaxed);
    atomic_store_explicit(&x->cgw, 0, memory_order_relaxed);
    atomic_store_explicit(&x->clo, 0, memory_order_relaxed);
    od->n_ejected--;
    set_active(od);
}

/* A consecutive-failure counter reached its threshold. */
static void detect_consecutive(dp_outlier_t *od, host_t *x, int kind, uint64_t now)
{
    pthread_mutex_lock(&od->lock);
    if (x->in_set && !atomic_load_explicit(&x->pub.ejected, memory_order_relaxed)) {
        CINC(od->st.detected[kind]);
        eject(od, x, kind, now);
        _Atomic uint32_t *ctr = kind == K_5XX ? &x->c5xx : kind == K_GW ? &x->cgw : &x->clo;
        atomic_store_explicit(ctr, 0, memory_order_relaxed);
        if (kind == K_5XX)
            CINC(od->st.consecutive_5xx);
    }
    pthread_mutex_unlock(&od->lock);
}

/* ---- the interval (under od->lock) ---- */

typedef struct sample {
    host_t *x;
    double rate; /* success rate, percent */
} sample_t;

/* Success-rate and failure-percentage detection over one kind of result (external or local
 * origin) of the interval: s[i] holds each host's counts. */
static void rate_ejections(dp_outlier_t *od, host_t **hs, const uint64_t *n, const uint64_t *fail,
                           size_t k, bool local, uint64_t now, sample_t *buf)
{
    const dp_outlier_config_t *c = &od->cfg;
    if (k < c->success_rate_minimum_hosts && k < c->failure_percentage_minimum_hosts)
        return;
    /* success rate */
    size_t m = 0;
    double sum = 0;
    for (size_t i = 0; i < k; i++) {
        if (atomic_load_explicit(&hs[i]->pub.ejected, memory_order_relaxed) || n[i] == 0 ||
            n[i] < c->success_rate_request_volume)
            continue;
        buf[m].x = hs[i];
        buf[m].rate = 100.0 * (double)(n[i] - fail[i]) / (double)n[i];
        sum += buf[m].rate;
        m++;
    }
    if (m > 0 && m >= c->success_rate_minimum_hosts) {
        double mean = sum / (double)m, var = 0;
        for (size_t i = 0; i < m; i++)
            var += (buf[i].rate - mean) * (buf[i].rate - mean);
        double stdev = sqrt(var / (double)m);
        double threshold = mean - stdev * (c->success_rate_stdev_factor / 1000.0);
        for (size_t i = 0; i < m; i++) {
            if (buf[i].rate < threshold &&
                !atomic_load_explicit(&buf[i].x->pub.ejected, memory_order_relaxed)) {
                int kind = local ? K_LO_SR : K_SR;
                CINC(od->st.detected[kind]);
                eject(od, buf[i].x, kind, now);
            }
        }
    }
    /* failure percentage */
    m = 0;
    for (size_t i = 0; i < k; i++) {
        if (atomic_load_explicit(&hs[i]->pub.ejected, memory_order_relaxed) || n[i] == 0 ||
            n[i] < c->failure_percentage_request_volume)
            continue;
        buf[m].x = hs[i];
        buf[m].rate = 100.0 * (double)(n[i] - fail[i]) / (double)n[i];
        m++;
    }
    if (m > 0 && m >= c->failure_percentage_minimum_hosts) {
        for (size_t i = 0; i < m; i++) {
            if (100.0 - buf[i].rate >= c->failure_percentage_threshold &&
                !atomic_load_explicit(&buf[i].x->pub.ejected, memory_order_relaxed)) {
                int kind = local ? K_LO_FP : K_FP;
                CINC(od->st.detected[kind]);
                eject(od, buf[i].x, kind, now);
            }
        }
    }
}

static void evaluate(dp_outlier_t *od, uint64_t now)
{
    const dp_outlier_config_t *c = &od->cfg;
    size_t k = 0, cap = od->n_set;
    host_t **hs = cap ? calloc(cap, sizeof(*hs)) : NULL;
    uint64_t *v = cap ? calloc(cap * 4, sizeof(*v)) : NULL;
    sample_t *buf = cap ? calloc(cap, sizeof(*buf)) : NULL;
    if (cap && (hs == NULL || v == NULL || buf == NULL))
        abort();
    for (size_t i = 0; i < od->cap; i++) {
        for (host_t *x = od->tab[i]; x; x = x->hnext) {
            if (!x->in_set)
                continue;
            if (atomic_load_explicit(&x->pub.ejected, memory_order_relaxed)) {
                uint64_t t = (uint64_t)x->backoff * c->base_ejection_time_ms;
                if (t > c->max_ejection_time_ms)
                    t = c->max_ejection_time_ms;
                if (now - x->ejected_at >= t + x->jitter_ms)
                    uneject(od, x);
            } else if (x->backoff > 0) {
                x->backoff--;
            }
            uint64_t en = atomic_exchange_explicit(&x->ext_n, 0, memory_order_relaxed);
            uint64_t ef = atomic_exchange_explicit(&x->ext_fail, 0, memory_order_relaxed);
            uint64_t ln = atomic_exchange_explicit(&x->lo_n, 0, memory_order_relaxed);
            uint64_t lf = atomic_exchange_explicit(&x->lo_fail, 0, memory_order_relaxed);
            if (k < cap) {
                hs[k] = x;
                v[k] = en;
                v[cap + k] = ef > en ? en : ef;
                v[2 * cap + k] = ln;
                v[3 * cap + k] = lf > ln ? ln : lf;
                k++;
            }
        }
    }
    if (k > 0) {
        rate_ejections(od, hs, v, v + cap, k, false, now, buf);
        if (c->split_external_local_origin_errors)
            rate_ejections(od, hs, v + 2 * cap, v + 3 * cap, k, true, now, buf);
    }
    free(hs);
    free(v);
    free(buf);
}

void dp_outlier_tick(dp_outlier_t *od, uint64_t now)
{
    uint64_t next = atomic_load_explicit(&od->next_eval_ms, memory_order_relaxed);
    if (now < next)
        return;
    uint64_t interval = atomic_load_explicit(&od->interval_ms, memory_order_relaxed);
    /* One thread wins the boundary; the others go on. */
    if (!atomic_compare_exchange_strong_explicit(&od->next_eval_ms, &next, now + interval,
                                                 memory_order_relaxed, memory_order_relaxed))
        return;
    pthread_mutex_lock(&od->lock);
    evaluate(od, now);
    pthread_mutex_unlock(&od->lock);
}

/* ---- results ---- */

static void bump(host_t *x, _Atomic uint32_t *ctr, uint32_t th, int kind, uint64_t now)
{
    if (th == 0)
        return;
    if (atomic_fetch_add_explicit(ctr, 1, memory_order_relaxed) + 1 == th)
        detect_consecutive(x->od, x, kind, now);
}

static void clear(_Atomic uint32_t *ctr)
{
    if (atomic_load_explicit(ctr, memory_order_relaxed) != 0)
        atomic_store_explicit(ctr, 0, memory_order_relaxed);
}

void dp_outlier_result(dp_outlier_host_t *h, dp_outlier_origin_t origin, int status, bool timeout,
                       uint64_t now)
{
    if (h == NULL)
        return;
    host_t *x = (host_t *)h;
    dp_outlier_t *od = x->od;
    bool split = atomic_load_explicit(&od->split, memory_order_relaxed);
    if (origin == DP_OUTLIER_LOCAL_FAILURE) {
        if (split) {
            atomic_fetch_add_explicit(&x->lo_n, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&x->lo_fail, 1, memory_order_relaxed);
            bump(x, &x->clo, atomic_load_explicit(&od->th_lo, memory_order_relaxed), K_LO, now);
            dp_outlier_tick(od, now);
            return;
        }
        /* Without split a local failure is the 5xx the router answers for it. */
        status = timeout ? 504 : 503;
    } else if (split) {
        /* The connection was made and carried the request: a local-origin success. */
        atomic_fetch_add_explicit(&x->lo_n, 1, memory_order_relaxed);
        clear(&x->clo);
    }
    atomic_fetch_add_explicit(&x->ext_n, 1, memory_order_relaxed);
    if (status >= 500 && status <= 599) {
        atomic_fetch_add_explicit(&x->ext_fail, 1, memory_order_relaxed);
        if (status == 502 || status == 503 || status == 504)
            bump(x, &x->cgw, atomic_load_explicit(&od->th_gw, memory_order_relaxed), K_GW, now);
        else
            clear(&x->cgw);
        bump(x, &x->c5xx, atomic_load_explicit(&od->th_5xx, memory_order_relaxed), K_5XX, now);
    } else {
        clear(&x->c5xx);
        clear(&x->cgw);
    }
    dp_outlier_tick(od, now);
}

/* ---- the registry ---- */

static void make_stats(dp_outlier_t *od, dp_stats_t *st, const char *stat_name)
{
    char name[512];
#define OD_NAME(suffix) \
    (snprintf(name, sizeof(name), "cluster.%s.outlier_detection.%s", stat_name, suffix), name)
    od->st.active = dp_stats_gauge(st, OD_NAME("ejections_active"));
    od->st.total = dp_stats_counter(st, OD_NAME("ejections_total"));
    od->st.overflow = dp_stats_counter(st, OD_NAME("ejections_overflow"));
    od->st.enforced_total = dp_stats_counter(st, OD_NAME("ejections_enforced_total"));
    od->st.consecutive_5xx = dp_stats_counter(st, OD_NAME("ejections_consecutive_5xx"));
    for (int k = 0; k < K_N; k++) {
        char suffix[96];
        snprintf(suffix, sizeof(suffix), "ejections_detected_%s", kind_names[k]);
        od->st.detected[k] = dp_stats_counter(st, OD_NAME(suffix));
        snprintf(suffix, sizeof(suffix), "ejections_enforced_%s", kind_names[k]);
        od->st.enforced[k] = dp_stats_counter(st, OD_NAME(suffix));
    }
#undef OD_NAME
}

dp_outlier_t *dp_outlier_get(const char *name, const char *stat_name, dp_stats_t *stats,
                             const dp_outlier_config_t *cfg)
{
    if (stat_name == NULL)
        stat_name = name;
    pthread_mutex_lock(&reg_lock);
    dp_outlier_t *od = reg_head;
    while (od && strcmp(od->name, name) != 0)
        od = od->next;
    if (od) {
        atomic_fetch_add_explicit(&od->refs, 1, memory_order_relaxed);
    } else {
        od = calloc(1, sizeof(*od));
        if (od == NULL || (od->name = strdup(name)) == NULL)
            abort();
        pthread_mutex_init(&od->lock, NULL);
        atomic_init(&od->refs, 1);
        od->rng = (uint64_t)(uintptr_t)od ^ uv_hrtime() ^ 0x9e3779b97f4a7c15ull;
        if (od->rng == 0)
            od->rng = 1;
        uint64_t interval = cfg->interval_ms ? cfg->interval_ms : 10000;
        atomic_init(&od->next_eval_ms, now_ms() + interval);
        od->next = reg_head;
        reg_head = od;
        reg_n++;
    }
    pthread_mutex_unlock(&reg_lock);
    pthread_mutex_lock(&od->lock);
    od->cfg = *cfg;
    if (od->cfg.interval_ms == 0)
        od->cfg.interval_ms = 10000;
    if (od->cfg.max_ejection_time_ms < od->cfg.base_ejection_time_ms)
        od->cfg.max_ejection_time_ms = od->cfg.base_ejection_time_ms;
    atomic_store_explicit(&od->th_5xx, cfg->consecutive_5xx, memory_order_relaxed);
    atomic_store_explicit(&od->th_gw, cfg->consecutive_gateway_failure, memory_order_relaxed);
    atomic_store_explicit(
        &od->th_lo,
        cfg->split_external_local_origin_errors ? cfg->consecutive_local_origin_failure : 0,
        memory_order_relaxed);
    atomic_store_explicit(&od->split, cfg->split_external_local_origin_errors,
                          memory_order_relaxed);
    atomic_store_explicit(&od->interval_ms, od->cfg.interval_ms, memory_order_relaxed);
    if (stats && !atomic_load_explicit(&od->stats_made, memory_order_relaxed)) {
        make_stats(od, stats, stat_name);
        atomic_store_explicit(&od->stats_made, true, memory_order_relaxed);
        set_active(od);
    }
    pthread_mutex_unlock(&od->lock);
    return od;
}

void dp_outlier_unref(dp_outlier_t *od)
{
    if (od == NULL)
        return;
    pthread_mutex_lock(&reg_lock);
    if (atomic_fetch_sub_explicit(&od->refs, 1, memory_order_acq_rel) != 1) {
        pthread_mutex_unlock(&reg_lock);
        return;
    }
    for (dp_outlier_t **pp = &reg_head; *pp; pp = &(*pp)->next) {
        if (*pp == od) {
            *pp = od->next;
            reg_n--;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    /* Every host reference came from a snapshot that also held od and dropped its hosts
     * first; any host left is freed with it. */
    for (size_t i = 0; i < od->cap; i++) {
        for (host_t *x = od->tab[i], *next; x; x = next) {
            next = x->hnext;
            host_free(x);
        }
    }
    free(od->tab);
    pthread_mutex_destroy(&od->lock);
    free(od->name);
    free(od);
}

void dp_outlier_unref_cb(void *od)
{
    dp_outlier_unref(od);
}

void dp_outlier_set_hosts(dp_outlier_t *od, dp_endpoint_t *eps, size_t n)
{
    pthread_mutex_lock(&od->lock);
    for (size_t i = 0; i < od->cap; i++) {
        for (host_t *x = od->tab[i]; x; x = x->hnext)
            x->in_set = false;
    }
    uint32_t n_set = 0;
    for (size_t i = 0; i < n; i++) {
        if (eps[i].addr.sa.sa_family == AF_UNSPEC) {
            eps[i].outlier = NULL;
            continue;
        }
        host_t *x = tab_get(od, &eps[i].addr);
        atomic_fetch_add_explicit(&x->refs, 1, memory_order_relaxed);
        if (!x->in_set)
            n_set++;
        x->in_set = true;
        eps[i].outlier = &x->pub;
    }
    od->n_set = n_set;
    for (size_t i = 0; i < od->cap; i++) {
        for (host_t *x = od->tab[i]; x; x = x->hnext) {
            if (!x->in_set && atomic_load_explicit(&x->pub.ejected, memory_order_relaxed))
                uneject(od, x);
        }
    }
    pthread_mutex_unlock(&od->lock);
}

void dp_outlier_hosts_unref(dp_endpoint_t *eps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        host_t *x = (host_t *)eps[i].outlier;
        if (x == NULL)
            continue;
        eps[i].outlier = NULL;
        if (atomic_fetch_sub_explicit(&x->refs, 1, memory_order_acq_rel) != 1)
            continue;
        dp_outlier_t *od = x->od;
        pthread_mutex_lock(&od->lock);
        /* A snapshot being built may have found it meanwhile (refs back above 0). */
        if (atomic_load_explicit(&x->refs, memory_order_acquire) == 0) {
            if (x->in_set && atomic_load_explicit(&x->pub.ejected, memory_order_relaxed))
                uneject(od, x);
            if (x->in_set)
                od->n_set--;
            tab_remove(od, x);
            host_free(x);
        }
        pthread_mutex_unlock(&od->lock);
    }
}

uint32_t dp_outlier_ejected_count(dp_outlier_t *od)
{
    pthread_mutex_lock(&od->lock);
    uint32_t n = od->n_ejected;
    pthread_mutex_unlock(&od->lock);
    return n;
}

uint32_t dp_outlier_host_count(dp_outlier_t *od)
{
    pthread_mutex_lock(&od->lock);
    uint32_t n = od->n_set;
    pthread_mutex_unlock(&od->lock);
    return n;
}

size_t dp_outlier_registry_size(void)
{
    pthread_mutex_lock(&reg_lock);
    size_t n = reg_n;
    pthread_mutex_unlock(&reg_lock);
    return n;
}
