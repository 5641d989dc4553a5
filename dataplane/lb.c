/* Host choice within a cluster (dataplane/lb.h), following Envoy's load balancers:
 * LoadBalancerBase (priority loads and panic), ZoneAwareLoadBalancerBase::hostSourceToUse,
 * EdfLoadBalancerBase with the RoundRobin and LeastRequest pickers, RandomLoadBalancer,
 * ThreadAwareLoadBalancerBase with RingHashLoadBalancer::Ring and the Maglev table, LocalityWrr
 * and EdfScheduler::createWithPicks. */
#include "dataplane/lb.h"

#include <arpa/inet.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* ---- small helpers ---- */

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        abort();
    return p;
}

static const char *nz(const char *s)
{
    return s ? s : "";
}

static uint32_t host_weight(const dp_endpoint_t *e)
{
    return e->weight ? e->weight : 1;
}

/* ---- EDF scheduler (Envoy's EdfScheduler) ---- */

typedef struct edf_ent {
    double deadline;
    uint64_t order; /* FIFO among equal deadlines */
    uint32_t item;
} edf_ent_t;

typedef struct edf {
    edf_ent_t *heap;
    size_t n, cap;
    double now;
    uint64_t order;
} edf_t;

static bool edf_less(const edf_ent_t *a, const edf_ent_t *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->order < b->order);
}

static void edf_push(edf_t *q, double deadline, uint64_t order, uint32_t item)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 8;
        edf_ent_t *h = realloc(q->heap, cap * sizeof(*h));
        if (h == NULL)
            abort();
        q->heap = h;
        q->cap = cap;
    }
    size_t i = q->n++;
    q->heap[i] = (edf_ent_t){deadline, order, item};
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!edf_less(&q->heap[i], &q->heap[p]))
            break;
        edf_ent_t t = q->heap[i];
        q->heap[i] = q->heap[p];
        q->heap[p] = t;
        i = p;
    }
}

static edf_ent_t edf_pop(edf_t *q)
{
    edf_ent_t top = q->heap[0];
    q->heap[0] = q->heap[--q->n];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < q->n && edf_less(&q->heap[l], &q->heap[m]))
            m = l;
        if (r < q->n && edf_less(&q->heap[r], &q->heap[m]))
            m = r;
        if (m == i)
            break;
        edf_ent_t t = q->heap[i];
        q->heap[i] = q->heap[m];
        q->heap[m] = t;
        i = m;
    }
    return top;
}

static void edf_add(edf_t *q, double weight, uint32_t item)
{
    edf_push(q, q->now + 1.0 / weight, q->order++, item);
}

/* Envoy's pickAndAdd: the earliest deadline, re-added with its weight now. */
typedef double (*weight_fn)(void *ud, uint32_t item);

static uint32_t edf_pick(edf_t *q, weight_fn wf, void *ud)
{
    edf_ent_t e = edf_pop(q);
    q->now = e.deadline;
    edf_add(q, wf(ud, e.item), e.item);
    return e.item;
}

static void edf_clear(edf_t *q)
{
    free(q->heap);
    memset(q, 0, sizeof(*q));
}

/* Envoy's createWithPicks: the state after `picks` picks from a fresh scheduler, made by
 * emulating floor(picks * w / W) picks per entry, then picking the rest one by one. */
static void edf_build(edf_t *q, size_t n, const double *w, uint32_t picks, weight_fn wf, void *ud)
{
    edf_clear(q);
    if (n == 0)
        return;
    picks = picks % 429496729u;
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += w[i] + 1e-13;
    uint32_t so_far = 0;
    double max_pick_time = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double weight = w[i] + 1e-13;
        uint32_t floor_picks = (uint32_t)(weight * picks / sum);
        if (floor_picks > 0 && floor_picks / weight >= picks / sum)
            floor_picks--;
        const double pick_time = floor_picks / weight;
        edf_push(q, (floor_picks + 1) / weight, i, (uint32_t)i);
        if (pick_time > max_pick_time)
            max_pick_time = pick_time;
        so_far += floor_picks;
    }
    q->now = max_pick_time;
    q->order = n;
    while (so_far < picks) {
        edf_pick(q, wf, ud);
        so_far++;
    }
}

/* ---- the per-priority state ---- */

/* A host source (Envoy's HostsSource): a list of host indices with its EDF scheduler (when
 * weights differ) or its round-robin position. */
typedef struct src {
    uint32_t *hosts;
    size_t n;
    bool has_edf;
    edf_t edf;
    uint64_t rr;
} src_t;

typedef struct loc {
    const char *region, *zone, *sub_zone;
    uint32_t weight;
    size_t n_all, n_excluded;
    src_t all, healthy, degraded;
} loc_t;

typedef struct ring_ent {
    uint64_t hash;
    uint32_t host;
} ring_ent_t;

typedef struct level {
    uint32_t priority;
    src_t all, healthy, degraded;
    loc_t *locs; /* sorted as Envoy's LocalityLess: region, zone, sub_zone */
    size_t n_locs;
    bool has_loc_edf[2]; /* healthy, degraded */
    edf_t loc_edf[2];
    double *loc_eff[2];   /* effective weight per scheduler item */
    uint32_t *loc_idx[2]; /* locality index per scheduler item */
    size_t n_excluded;
    uint64_t w_excluded;
    uint32_t health, degraded_avail; /* 0..100 */
    bool panic;
    uint32_t load_healthy, load_degraded;
    /* RING_HASH / MAGLEV */
    ring_ent_t *ring;
    size_t ring_n;
    uint32_t *table;
    size_t table_n;
} level_t;

struct dp_lb {
    dp_lb_config_t cfg;
    uint64_t rng;
    uint64_t seed; /* Envoy's seed_: EDF pre-picks and round-robin start */
    uint64_t (*rand_fn)(void *ud);
    void *rand_ud;
    /* what the state was built for */
    bool valid;
    const dp_endpoint_t *eps;
    size_t n;
    bool *ejected; /* a copy, n flags */
    /* the levels, by ascending priority (empty priorities left out) */
    level_t *levels;
    size_t n_levels;
    /* host keys (address strings), for the hash policies */
    char **keys;
    size_t *key_len;
    /* LEAST_REQUEST's active counts during one pick */
    const dp_lb_hosts_t *cur;
};

static uint64_t lb_random(dp_lb_t *lb)
{
    if (lb->rand_fn)
        return lb->rand_fn(lb->rand_ud);
    /* xorshift64* */
    uint64_t x = lb->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    lb->rng = x;
    return x * 2685821657736338717ull;
}

static void src_free(src_t *s)
{
    free(s->hosts);
    edf_clear(&s->edf);
    memset(s, 0, sizeof(*s));
}

static void levels_free(dp_lb_t *lb)
{
    for (size_t i = 0; i < lb->n_levels; i++) {
        level_t *l = &lb->levels[i];
        src_free(&l->all);
        src_free(&l->healthy);
        src_free(&l->degraded);
        for (size_t k = 0; k < l->n_locs; k++) {
            src_free(&l->locs[k].all);
            src_free(&l->locs[k].healthy);
            src_free(&l->locs[k].degraded);
        }
        free(l->locs);
        for (int a = 0; a < 2; a++) {
            edf_clear(&l->loc_edf[a]);
            free(l->loc_eff[a]);
            free(l->loc_idx[a]);
        }
        free(l->ring);
        free(l->table);
    }
    free(lb->levels);
    lb->levels = NULL;
    lb->n_levels = 0;
    if (lb->keys) {
        for (size_t i = 0; i < lb->n; i++)
            free(lb->keys[i]);
    }
    free(lb->keys);
    free(lb->key_len);
    lb->keys = NULL;
    lb->key_len = NULL;
    free(lb->ejected);
    lb->ejected = NULL;
    lb->valid = false;
}

/* ---- configuration ---- */

static bool is_prime(uint64_t n)
{
    if (n < 2)
        return false;
    for (uint64_t d = 2; d * d <= n; d++) {
        if (n % d == 0)
            return false;
    }
    return true;
}

void dp_lb_config_from_cluster(dp_lb_config_t *cfg, const dp_cluster_t *c)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->policy = c->lb_policy;
    cfg->ring_min = c->lb_ring_min ? c->lb_ring_min : DP_LB_RING_MIN_DEFAULT;
    cfg->ring_max = c->lb_ring_max ? c->lb_ring_max : DP_LB_RING_MAX_DEFAULT;
    if (cfg->ring_max > DP_LB_RING_MAX_LIMIT)
        cfg->ring_max = DP_LB_RING_MAX_LIMIT;
    if (cfg->ring_min > cfg->ring_max)
        cfg->ring_min = cfg->ring_max;
    cfg->ring_murmur = c->lb_ring_murmur;
    cfg->maglev_size = c->lb_maglev_size ? c->lb_maglev_size : DP_LB_MAGLEV_SIZE_DEFAULT;
    /* Envoy refuses a table size that is not prime (the fill relies on it) */
    if (cfg->maglev_size > DP_LB_MAGLEV_SIZE_LIMIT || !is_prime(cfg->maglev_size))
        cfg->maglev_size = DP_LB_MAGLEV_SIZE_DEFAULT;
    cfg->choice_count = c->lb_choice_count ? c->lb_choice_count : DP_LB_CHOICE_COUNT_DEFAULT;
    cfg->has_bias = c->lb_has_bias;
    cfg->active_request_bias = c->lb_has_bias ? c->lb_active_request_bias : 1.0;
    /* Envoy: a negative or NaN bias is taken as 1.0 */
    if (!(cfg->active_request_bias >= 0.0))
        cfg->active_request_bias = 1.0;
    cfg->panic_threshold = c->lb_has_panic_threshold ? c->lb_panic_threshold : DP_LB_PANIC_DEFAULT;
    if (cfg->panic_threshold > 100)
        cfg->panic_threshold = 100;
    cfg->locality_weighted = c->lb_locality_weighted;
    cfg->overprovisioning =
        c->lb_overprovisioning ? c->lb_overprovisioning : DP_LB_OVERPROVISIONING_DEFAULT;
    cfg->weighted_priority_health = c->lb_weighted_priority_health;
}

dp_lb_t *dp_lb_new(const dp_lb_config_t *cfg, uint64_t seed)
{
    dp_lb_t *lb = xcalloc(1, sizeof(*lb));
    lb->cfg = *cfg;
    lb->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
    lb->seed = lb_random(lb);
    return lb;
}

void dp_lb_free(dp_lb_t *lb)
{
    if (lb == NULL)
        return;
    levels_free(lb);
    free(lb);
}

void dp_lb_configure(dp_lb_t *lb, const dp_lb_config_t *cfg)
{
    lb->cfg = *cfg;
    lb->valid = false;
}

void dp_lb_invalidate(dp_lb_t *lb)
{
    lb->valid = false;
}

void dp_lb_set_random(dp_lb_t *lb, uint64_t (*fn)(void *ud), void *ud)
{
    lb->rand_fn = fn;
    lb->rand_ud = ud;
    if (fn) {
        lb->seed = fn(ud);
        lb->valid = false;
    }
}

/* ---- host keys and hashes ---- */

size_t dp_lb_host_key(const dp_addr_t *a, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN];
    int n = 0;
    switch (a->sa.sa_family) {
    case AF_INET:
        if (inet_ntop(AF_INET, &a->in.sin_addr, ip, sizeof(ip)) == NULL)
            return 0;
        n = snprintf(buf, size, "%s:%u", ip, (unsigned)ntohs(a->in.sin_port));
        break;
    case AF_INET6:
        if (inet_ntop(AF_INET6, &a->in6.sin6_addr, ip, sizeof(ip)) == NULL)
            return 0;
        n = snprintf(buf, size, "[%s]:%u", ip, (unsigned)ntohs(a->in6.sin6_port));
        break;
    case AF_UNIX:
        n = snprintf(buf, size, "%s", nz(a->unix_path));
        break;
    default:
        return 0;
    }
    if (n < 0 || (size_t)n >= size)
        return 0;
    return (size_t)n;
}

static uint64_t shift_mix(uint64_t v)
{
    return v ^ (v >> 47);
}

uint64_t dp_lb_murmur2(const void *data, size_t len, uint64_t seed)
{
    const uint64_t mul = 0xc6a4a7935bd1e995ull;
    const unsigned char *buf = data;
    const size_t aligned = len & ~(size_t)7;
    uint64_t hash = seed ^ ((uint64_t)len * mul);
    for (size_t i = 0; i < aligned; i += 8) {
        uint64_t v;
        memcpy(&v, buf + i, 8);
        hash ^= shift_mix(v * mul) * mul;
        hash *= mul;
    }
    if (len & 7) {
        uint64_t v = 0;
        for (size_t k = len & 7; k > 0; k--)
            v = (v << 8) + buf[aligned + k - 1];
        hash ^= v;
        hash *= mul;
    }
    hash = shift_mix(hash) * mul;
    return shift_mix(hash);
}

/* Envoy's MurmurHash::STD_HASH_SEED */
#define MURMUR_SEED 0xc70f6907ull

/* ---- building ---- */

/* Envoy's coarse health, and its excluded hosts: EDS DRAINING ones (EDS_STATUS_DRAINING) stay
 * in the host set (and so in panic's "all hosts") but are not counted in its health. */
enum {
    H_HEALTHY,
    H_DEGRADED,
    H_UNHEALTHY,
    H_EXCLUDED
};

static int host_health(const dp_lb_t *lb, size_t i)
{
    if (lb->eps[i].health == DP_HEALTH_DRAINING)
        return H_EXCLUDED;
    if (lb->ejected && lb->ejected[i])
        return H_UNHEALTHY;
    switch (lb->eps[i].health) {
    case DP_HEALTH_UNKNOWN:
    case DP_HEALTH_HEALTHY:
        return H_HEALTHY;
    case DP_HEALTH_DEGRADED:
        return H_DEGRADED;
    default:
        return H_UNHEALTHY;
    }
}

static void src_push(src_t *s, uint32_t host)
{
    s->hosts[s->n++] = host;
}

static int loc_cmp(const char *r1, const char *z1, const char *s1, const loc_t *b)
{
    int c = strcmp(r1, b->region);
    if (c == 0)
        c = strcmp(z1, b->zone);
    if (c == 0)
        c = strcmp(s1, b->sub_zone);
    return c;
}

static double rr_weight(void *ud, uint32_t host)
{
    dp_lb_t *lb = ud;
    return host_weight(&lb->eps[host]);
}

/* LeastRequestLoadBalancer::hostWeight: weight / (active + 1) ^ bias */
static double lr_weight(void *ud, uint32_t host)
{
    dp_lb_t *lb = ud;
    double w = host_weight(&lb->eps[host]);
    const dp_lb_hosts_t *hs = lb->cur;
    uint64_t active = hs && hs->active ? hs->active(hs->active_ud, host) : 0;
    uint64_t v = active != UINT64_MAX ? active + 1 : active;
    double bias = lb->cfg.active_request_bias;
    if (bias == 1.0)
        return w / (double)v;
    if (bias != 0.0)
        return w / pow((double)v, bias);
    return w;
}

static weight_fn policy_weight(const dp_lb_t *lb)
{
    return lb->cfg.policy == DP_LB_LEAST_REQUEST ? lr_weight : rr_weight;
}

/* edf_build with items that are positions in a source: the leftover picks need weights. */
typedef struct src_wctx {
    dp_lb_t *lb;
    const src_t *s;
} src_wctx_t;

static double src_item_weight(void *ud, uint32_t item)
{
    src_wctx_t *c = ud;
    return policy_weight(c->lb)(c->lb, c->s->hosts[item]);
}

static double loc_item_weight(void *ud, uint32_t item)
{
    const double *eff = ud;
    return eff[item];
}

/* EdfLoadBalancerBase::refresh for one host source: an EDF scheduler only when weights differ
 * (or LEAST_REQUEST has an explicit active_request_bias) and there are two hosts or more. */
static void src_schedule(dp_lb_t *lb, src_t *s)
{
    s->rr = lb->seed;
    s->has_edf = false;
    if (lb->cfg.policy != DP_LB_ROUND_ROBIN && lb->cfg.policy != DP_LB_LEAST_REQUEST)
        return;
    bool equal = true;
    for (size_t i = 1; i < s->n && equal; i++)
        equal = host_weight(&lb->eps[s->hosts[i]]) == host_weight(&lb->eps[s->hosts[0]]);
    bool always = lb->cfg.policy == DP_LB_LEAST_REQUEST && lb->cfg.has_bias;
    if ((equal && !always) || s->n <= 1)
        return;
    double *w = xcalloc(s->n, sizeof(*w));
    src_wctx_t c = {lb, s};
    for (size_t i = 0; i < s->n; i++)
        w[i] = src_item_weight(&c, (uint32_t)i);
    edf_build(&s->edf, s->n, w, (uint32_t)lb->seed, src_item_weight, &c);
    free(w);
    s->has_edf = true;
}

/* LocalityWrr::effectiveLocalityWeight */
static double loc_effective(const dp_lb_t *lb, const loc_t *l, size_t eligible)
{
    const size_t count = l->n_all - l->n_excluded;
    if (count == 0)
        return 0.0;
    double ratio = 1.0 * (double)eligible / (double)count;
    double eff = (lb->cfg.overprovisioning / 100.0) * ratio;
    if (eff > 1.0)
        eff = 1.0;
    return l->weight * eff;
}

static void level_localities(dp_lb_t *lb, level_t *l)
{
    for (int a = 0; a < 2; a++) {
        const size_t eligible_total = a == 0 ? l->healthy.n : l->degraded.n;
        if (eligible_total == 0 || l->n_locs == 0)
            continue;
        /* entries are the localities with a positive effective weight */
        double *eff = xcalloc(l->n_locs, sizeof(*eff));
        uint32_t *idx = xcalloc(l->n_locs, sizeof(*idx));
        size_t k = 0;
        for (size_t i = 0; i < l->n_locs; i++) {
            const loc_t *lc = &l->locs[i];
            double e = loc_effective(lb, lc, a == 0 ? lc->healthy.n : lc->degraded.n);
            if (e > 0) {
                eff[k] = e;
                idx[k] = (uint32_t)i;
                k++;
            }
        }
        if (k > 0) {
            edf_build(&l->loc_edf[a], k, eff, (uint32_t)lb->seed, loc_item_weight, eff);
            l->loc_eff[a] = eff;
            l->loc_idx[a] = idx;
            l->has_loc_edf[a] = true;
        } else {
            free(eff);
            free(idx);
        }
    }
}

/* Normalised host weights of a level (ThreadAwareLoadBalancerBase normalizeWeights). */
typedef struct nhw {
    uint32_t host;
    double w;
} nhw_t;

static size_t level_normalized(const dp_lb_t *lb, const level_t *l, nhw_t *out, double *min_w,
                               double *max_w)
{
    size_t k = 0;
    *min_w = 1.0;
    *max_w = 0.0;
    if (!lb->cfg.locality_weighted || l->n_locs == 0) {
        const src_t *s = l->panic ? &l->all : &l->healthy;
        uint64_t sum = 0;
        for (size_t i = 0; i < s->n; i++)
            sum += host_weight(&lb->eps[s->hosts[i]]);
        for (size_t i = 0; i < s->n; i++) {
            double w = host_weight(&lb->eps[s->hosts[i]]) * 1.0 / (double)sum;
            out[k++] = (nhw_t){s->hosts[i], w};
            *min_w = w < *min_w ? w : *min_w;
            *max_w = w > *max_w ? w : *max_w;
        }
        return k;
    }
    uint64_t lsum = 0;
    for (size_t i = 0; i < l->n_locs; i++)
        lsum += l->locs[i].weight;
    if (lsum == 0)
        return 0;
    for (size_t i = 0; i < l->n_locs; i++) {
        const loc_t *lc = &l->locs[i];
        if (lc->weight == 0)
            continue;
        const src_t *s = l->panic ? &lc->all : &lc->healthy;
        double lw = (double)lc->weight / (double)lsum;
        uint64_t sum = 0;
        for (size_t j = 0; j < s->n; j++)
            sum += host_weight(&lb->eps[s->hosts[j]]);
        for (size_t j = 0; j < s->n; j++) {
            double w = host_weight(&lb->eps[s->hosts[j]]) * lw / (double)sum;
            out[k++] = (nhw_t){s->hosts[j], w};
            *min_w = w < *min_w ? w : *min_w;
            *max_w = w > *max_w ? w : *max_w;
        }
    }
    return k;
}

static int ring_cmp(const void *a, const void *b)
{
    const ring_ent_t *x = a, *y = b;
    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

/* RingHashLoadBalancer::Ring */
static void level_ring(dp_lb_t *lb, level_t *l, const nhw_t *hw, size_t n, double min_w)
{
    if (n == 0)
        return;
    double scale = ceil(min_w * (double)lb->cfg.ring_min) / min_w;
    if (scale > (double)lb->cfg.ring_max)
        scale = (double)lb->cfg.ring_max;
    const uint64_t size = (uint64_t)ceil(scale);
    /* the running sums can give one entry more than ceil(scale) through rounding */
    size_t cap = (size_t)size + n + 1;
    l->ring = xcalloc(cap, sizeof(*l->ring));
    char buf[INET6_ADDRSTRLEN + 64 + 32];
    double current = 0.0, target = 0.0;
    size_t k = 0;
    for (size_t h = 0; h < n; h++) {
        const char *key = lb->keys[hw[h].host];
        size_t klen = lb->key_len[hw[h].host];
        target += scale * hw[h].w;
        for (uint64_t i = 0; current < target && k < cap; i++) {
            int m = snprintf(buf, sizeof(buf), "%.*s_%llu", (int)klen, key, (unsigned long long)i);
            size_t len = m > 0 && (size_t)m < sizeof(buf) ? (size_t)m : 0;
            uint64_t hash =
                lb->cfg.ring_murmur ? dp_lb_murmur2(buf, len, MURMUR_SEED) : XXH64(buf, len, 0);
            l->ring[k++] = (ring_ent_t){hash, hw[h].host};
            current += 1.0;
        }
    }
    /* std::sort is not stable; entries with equal hashes are vanishingly rare */
    qsort(l->ring, k, sizeof(*l->ring), ring_cmp);
    l->ring_n = k;
}

typedef struct mag_ent {
    uint32_t host;
    uint64_t offset, skip, next;
    double weight, target;
} mag_ent_t;

static int mag_cmp(const void *a, const void *b, void *arg)
{
    const nhw_t *x = a, *y = b;
    const dp_lb_t *lb = arg;
    size_t lx = lb->key_len[x->host], ly = lb->key_len[y->host];
    int c = memcmp(lb->keys[x->host], lb->keys[y->host], lx < ly ? lx : ly);
    if (c == 0)
        c = lx < ly ? -1 : lx > ly;
    if (c == 0)
        c = x->host < y->host ? -1 : x->host > y->host;
    return c;
}

/* MaglevTable::constructMaglevTableInternal and OriginalMaglevTable's fill */
static void level_maglev(dp_lb_t *lb, level_t *l, nhw_t *hw, size_t n, double max_w)
{
    if (n == 0)
        return;
    const uint64_t size = lb->cfg.maglev_size;
    qsort_r(hw, n, sizeof(*hw), mag_cmp, lb);
    mag_ent_t *e = xcalloc(n, sizeof(*e));
    for (size_t i = 0; i < n; i++) {
        const char *key = lb->keys[hw[i].host];
        size_t klen = lb->key_len[hw[i].host];
        e[i].host = hw[i].host;
        e[i].offset = XXH64(key, klen, 0) % size;
        e[i].skip = XXH64(key, klen, 1) % (size - 1) + 1;
        e[i].weight = hw[i].w;
    }
    l->table = xcalloc(size, sizeof(*l->table));
    bool *used = xcalloc(size, sizeof(*used));
    uint64_t filled = 0;
    for (uint32_t iteration = 1; filled < size; ++iteration) {
        for (size_t i = 0; i < n && filled < size; i++) {
            mag_ent_t *m = &e[i];
            if (iteration * m->weight < m->target)
                continue;
            m->target += max_w;
            uint64_t c = (m->offset + m->skip * m->next) % size;
            /* skip < size, size prime: the permutation visits every slot */
            for (uint64_t guard = 0; used[c] && guard < size; guard++) {
                m->next++;
                c = (m->offset + m->skip * m->next) % size;
            }
            l->table[c] = m->host;
            used[c] = true;
            m->next++;
            filled++;
        }
    }
    free(used);
    free(e);
    l->table_n = size;
}

static void build_hashing(dp_lb_t *lb)
{
    bool ring = lb->cfg.policy == DP_LB_RING_HASH, mag = lb->cfg.policy == DP_LB_MAGLEV;
    if (!ring && !mag)
        return;
    lb->keys = xcalloc(lb->n, sizeof(*lb->keys));
    lb->key_len = xcalloc(lb->n, sizeof(*lb->key_len));
    for (size_t i = 0; i < lb->n; i++) {
        char buf[INET6_ADDRSTRLEN + 64 + 110];
        size_t len = dp_lb_host_key(&lb->eps[i].addr, buf, sizeof(buf));
        lb->keys[i] = xcalloc(len + 1, 1);
        memcpy(lb->keys[i], buf, len);
        lb->key_len[i] = len;
    }
    for (size_t i = 0; i < lb->n_levels; i++) {
        level_t *l = &lb->levels[i];
        nhw_t *hw = xcalloc(l->all.n, sizeof(*hw));
        double min_w, max_w;
        size_t n = level_normalized(lb, l, hw, &min_w, &max_w);
        if (ring)
            level_ring(lb, l, hw, n, min_w);
        else
            level_maglev(lb, l, hw, n, max_w);
        free(hw);
    }
}

/* recalculatePerPriorityState / recalculatePerPriorityPanic / recalculateLoadInTotalPanic */
static void compute_loads(dp_lb_t *lb)
{
    const uint32_t factor = lb->cfg.overprovisioning;
    uint64_t sum = 0;
    for (size_t i = 0; i < lb->n_levels; i++) {
        level_t *l = &lb->levels[i];
        uint64_t hw = 0, dw = 0, tw = 0;
        if (lb->cfg.weighted_priority_health) {
            for (size_t k = 0; k < l->healthy.n; k++)
                hw += host_weight(&lb->eps[l->healthy.hosts[k]]);
            for (size_t k = 0; k < l->degraded.n; k++)
                dw += host_weight(&lb->eps[l->degraded.hosts[k]]);
            for (size_t k = 0; k < l->all.n; k++)
                tw += host_weight(&lb->eps[l->all.hosts[k]]);
            tw -= l->w_excluded;
        } else {
            hw = l->healthy.n;
            dw = l->degraded.n;
            tw = l->all.n - l->n_excluded;
        }
        uint64_t h = tw ? factor * hw / tw : 0, d = tw ? factor * dw / tw : 0;
        l->health = h > 100 ? 100 : (uint32_t)h;
        l->degraded_avail = d > 100 ? 100 : (uint32_t)d;
        l->load_healthy = l->load_degraded = 0;
        l->panic = false;
        sum += l->health + l->degraded_avail;
    }
    const uint32_t total = sum > 100 ? 100 : (uint32_t)sum;
    if (total > 0) {
        uint32_t left = 100;
        long first_h = -1, first_d = -1;
        for (size_t i = 0; i < lb->n_levels; i++) {
            level_t *l = &lb->levels[i];
            if (first_h < 0 && l->health > 0)
                first_h = (long)i;
            uint32_t share = l->health * 100 / total;
            l->load_healthy = share < left ? share : left;
            left -= l->load_healthy;
        }
        for (size_t i = 0; i < lb->n_levels; i++) {
            level_t *l = &lb->levels[i];
            if (first_d < 0 && l->degraded_avail > 0)
                first_d = (long)i;
            uint32_t share = l->degraded_avail * 100 / total;
            l->load_degraded = share < left ? share : left;
            left -= l->load_degraded;
        }
        if (left > 0) {
            if (first_h >= 0)
                lb->levels[first_h].load_healthy += left;
            else if (first_d >= 0)
                lb->levels[first_d].load_degraded += left;
        }
    }
    const uint32_t threshold = lb->cfg.panic_threshold;
    if (threshold == 0 && total == 0) {
        lb->levels[0].load_healthy = 100;
        return;
    }
    bool total_panic = true;
    for (size_t i = 0; i < lb->n_levels; i++) {
        level_t *l = &lb->levels[i];
        const size_t count = l->all.n - l->n_excluded;
        double hp = count ? 100.0 * (double)l->healthy.n / (double)count : 0.0;
        double dp = count ? 100.0 * (double)l->degraded.n / (double)count : 0.0;
        l->panic = total == 100 ? false : (hp + dp) < (double)threshold;
        total_panic = total_panic && l->panic;
    }
    if (!total_panic)
        return;
    size_t hosts = 0;
    for (size_t i = 0; i < lb->n_levels; i++)
        hosts += lb->levels[i].all.n;
    uint32_t left = 100;
    for (size_t i = 0; i < lb->n_levels; i++) {
        level_t *l = &lb->levels[i];
        l->load_healthy = (uint32_t)(100 * l->all.n / hosts);
        l->load_degraded = 0;
        left -= l->load_healthy;
    }
    lb->levels[0].load_healthy += left;
}

static int prio_cmp(const void *a, const void *b)
{
    const level_t *x = a, *y = b;
    return x->priority < y->priority ? -1 : x->priority > y->priority;
}

/* Round-robin positions kept across rebuilds, as Envoy keeps rr_indexes_ per host source
 * (priority, kind, locality index) when the host set changes. */
typedef struct rr_keep {
    uint32_t priority;
    uint64_t all, healthy, degraded;
    size_t n_locs;
    uint64_t *loc; /* healthy, degraded per locality index */
} rr_keep_t;

static rr_keep_t *rr_save(const dp_lb_t *lb, size_t *ret_n)
{
    *ret_n = lb->n_levels;
    if (lb->n_levels == 0)
        return NULL;
    rr_keep_t *k = xcalloc(lb->n_levels, sizeof(*k));
    for (size_t i = 0; i < lb->n_levels; i++) {
        const level_t *l = &lb->levels[i];
        k[i].priority = l->priority;
        k[i].all = l->all.rr;
        k[i].healthy = l->healthy.rr;
        k[i].degraded = l->degraded.rr;
        k[i].n_locs = l->n_locs;
        k[i].loc = xcalloc(2 * l->n_locs, sizeof(uint64_t));
        for (size_t j = 0; j < l->n_locs; j++) {
            k[i].loc[2 * j] = l->locs[j].healthy.rr;
            k[i].loc[2 * j + 1] = l->locs[j].degraded.rr;
        }
    }
    return k;
}

static void rr_restore(dp_lb_t *lb, rr_keep_t *k, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t x = 0; x < lb->n_levels; x++) {
            level_t *l = &lb->levels[x];
            if (l->priority != k[i].priority)
                continue;
            l->all.rr = k[i].all;
            l->healthy.rr = k[i].healthy;
            l->degraded.rr = k[i].degraded;
            for (size_t j = 0; j < l->n_locs && j < k[i].n_locs; j++) {
                l->locs[j].healthy.rr = k[i].loc[2 * j];
                l->locs[j].degraded.rr = k[i].loc[2 * j + 1];
            }
        }
        free(k[i].loc);
    }
    free(k);
}

static void rebuild_levels(dp_lb_t *lb, const dp_lb_hosts_t *hs);

static void rebuild(dp_lb_t *lb, const dp_lb_hosts_t *hs)
{
    size_t n_keep;
    rr_keep_t *keep = rr_save(lb, &n_keep);
    rebuild_levels(lb, hs);
    rr_restore(lb, keep, n_keep);
}

static void rebuild_levels(dp_lb_t *lb, const dp_lb_hosts_t *hs)
{
    levels_free(lb);
    lb->eps = hs->eps;
    lb->n = hs->n;
    if (hs->ejected && hs->n) {
        lb->ejected = xcalloc(hs->n, sizeof(*lb->ejected));
        memcpy(lb->ejected, hs->ejected, hs->n * sizeof(*lb->ejected));
    }
    lb->valid = true;
    if (hs->n == 0)
        return;
    /* the levels: distinct priorities of hosts with an address */
    lb->levels = xcalloc(hs->n, sizeof(*lb->levels));
    for (size_t i = 0; i < hs->n; i++) {
        const dp_endpoint_t *e = &hs->eps[i];
        if (e->addr.sa.sa_family == AF_UNSPEC)
            continue;
        size_t k = 0;
        while (k < lb->n_levels && lb->levels[k].priority != e->priority)
            k++;
        if (k == lb->n_levels)
            lb->levels[lb->n_levels++].priority = e->priority;
        lb->levels[k].all.n++;
    }
    if (lb->n_levels == 0)
        return;
    qsort(lb->levels, lb->n_levels, sizeof(*lb->levels), prio_cmp);
    for (size_t k = 0; k < lb->n_levels; k++) {
        level_t *l = &lb->levels[k];
        size_t n = l->all.n;
        l->all.hosts = xcalloc(n, sizeof(uint32_t));
        l->healthy.hosts = xcalloc(n, sizeof(uint32_t));
        l->degraded.hosts = xcalloc(n, sizeof(uint32_t));
        l->all.n = 0;
        l->locs = xcalloc(n, sizeof(*l->locs));
    }
    for (size_t i = 0; i < hs->n; i++) {
        const dp_endpoint_t *e = &hs->eps[i];
        if (e->addr.sa.sa_family == AF_UNSPEC)
            continue;
        level_t key = {.priority = e->priority};
        level_t *l = bsearch(&key, lb->levels, lb->n_levels, sizeof(*lb->levels), prio_cmp);
        int h = host_health(lb, i);
        src_push(&l->all, (uint32_t)i);
        if (h == H_HEALTHY)
            src_push(&l->healthy, (uint32_t)i);
        else if (h == H_DEGRADED)
            src_push(&l->degraded, (uint32_t)i);
        else if (h == H_EXCLUDED) {
            l->n_excluded++;
            l->w_excluded += host_weight(e);
        }
        /* its locality, kept sorted (insertion: localities are few) */
        const char *r = nz(e->region), *z = nz(e->zone), *sz = nz(e->sub_zone);
        size_t pos = 0;
        int c = 1;
        while (pos < l->n_locs && (c = loc_cmp(r, z, sz, &l->locs[pos])) > 0)
            pos++;
        if (pos == l->n_locs || c != 0) {
            memmove(&l->locs[pos + 1], &l->locs[pos], (l->n_locs - pos) * sizeof(*l->locs));
            memset(&l->locs[pos], 0, sizeof(*l->locs));
            l->locs[pos].region = r;
            l->locs[pos].zone = z;
            l->locs[pos].sub_zone = sz;
            l->n_locs++;
        }
        /* as Envoy's locality weight map, the last host of a locality sets its weight */
        l->locs[pos].weight = e->locality_weight;
        l->locs[pos].n_all++;
    }
    for (size_t k = 0; k < lb->n_levels; k++) {
        level_t *l = &lb->levels[k];
        for (size_t j = 0; j < l->n_locs; j++) {
            loc_t *lc = &l->locs[j];
            lc->all.hosts = xcalloc(lc->n_all, sizeof(uint32_t));
            lc->healthy.hosts = xcalloc(lc->n_all, sizeof(uint32_t));
            lc->degraded.hosts = xcalloc(lc->n_all, sizeof(uint32_t));
        }
        for (size_t x = 0; x < l->all.n; x++) {
            uint32_t i = l->all.hosts[x];
            const dp_endpoint_t *e = &hs->eps[i];
            const char *r = nz(e->region), *z = nz(e->zone), *sz = nz(e->sub_zone);
            size_t j = 0;
            while (j + 1 < l->n_locs && loc_cmp(r, z, sz, &l->locs[j]) != 0)
                j++;
            loc_t *lc = &l->locs[j];
            int h = host_health(lb, i);
            src_push(&lc->all, i);
            if (h == H_HEALTHY)
                src_push(&lc->healthy, i);
            else if (h == H_DEGRADED)
                src_push(&lc->degraded, i);
            else if (h == H_EXCLUDED)
                lc->n_excluded++;
        }
    }
    compute_loads(lb);
    const dp_lb_hosts_t *saved = lb->cur;
    lb->cur = hs;
    for (size_t k = 0; k < lb->n_levels; k++) {
        level_t *l = &lb->levels[k];
        src_schedule(lb, &l->all);
        src_schedule(lb, &l->healthy);
        src_schedule(lb, &l->degraded);
        for (size_t j = 0; j < l->n_locs; j++) {
            src_schedule(lb, &l->locs[j].healthy);
            src_schedule(lb, &l->locs[j].degraded);
        }
        if (lb->cfg.locality_weighted)
            level_localities(lb, l);
    }
    lb->cur = saved;
    build_hashing(lb);
}

/* ---- picking ---- */

static bool addr_same(const dp_addr_t *a, const dp_addr_t *b)
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

static bool excluded(const dp_lb_t *lb, const dp_lb_ctx_t *ctx, size_t host)
{
    if (ctx == NULL)
        return false;
    for (size_t k = 0; k < ctx->n_exclude; k++) {
        if (ctx->exclude[k] && addr_same(ctx->exclude[k], &lb->eps[host].addr))
            return true;
    }
    return false;
}

/* LoadBalancerBase::choosePriority: the level, and whether its degraded hosts are meant. */
static level_t *choose_priority(dp_lb_t *lb, uint64_t hash, bool *degraded)
{
    uint64_t h = hash % 100 + 1;
    uint32_t agg = 0;
    *degraded = false;
    for (size_t i = 0; i < lb->n_levels; i++) {
        agg += lb->levels[i].load_healthy;
        if (h <= agg)
            return &lb->levels[i];
    }
    for (size_t i = 0; i < lb->n_levels; i++) {
        agg += lb->levels[i].load_degraded;
        if (h <= agg) {
            *degraded = true;
            return &lb->levels[i];
        }
    }
    return &lb->levels[0];
}

/* RingHashLoadBalancer::Ring::chooseHost (ketama's search, with its signed indices) */
static size_t ring_pick(const level_t *l, uint64_t h, uint32_t attempt)
{
    if (l->ring_n == 0)
        return DP_LB_NONE;
    int64_t lowp = 0, highp = (int64_t)l->ring_n, midp = 0;
    for (size_t guard = 0; guard < 128; guard++) {
        midp = (lowp + highp) / 2;
        if (midp == (int64_t)l->ring_n) {
            midp = 0;
            break;
        }
        uint64_t midval = l->ring[midp].hash;
        uint64_t midval1 = midp == 0 ? 0 : l->ring[midp - 1].hash;
        if (h <= midval && h > midval1)
            break;
        if (midval < h)
            lowp = midp + 1;
        else
            highp = midp - 1;
        if (lowp > highp) {
            midp = 0;
            break;
        }
    }
    if (attempt > 0)
        midp = (int64_t)(((uint64_t)midp + attempt) % l->ring_n);
    return l->ring[midp].host;
}

/* OriginalMaglevTable::chooseHost */
static size_t maglev_pick(const level_t *l, uint64_t h, uint32_t attempt)
{
    if (l->table_n == 0)
        return DP_LB_NONE;
    if (attempt > 0)
        h ^= ~0ull - attempt + 1;
    return l->table[h % l->table_n];
}

static uint32_t retries_of(const dp_lb_ctx_t *ctx)
{
    if (ctx == NULL || ctx->n_exclude == 0)
        return 0;
    uint32_t r = ctx->host_selection_max_attempts ? ctx->host_selection_max_attempts : 1;
    return r > DP_LB_MAX_SELECTION_RETRIES ? DP_LB_MAX_SELECTION_RETRIES : r;
}

/* ThreadAwareLoadBalancerBase::LoadBalancerImpl::chooseHost */
static size_t pick_hashing(dp_lb_t *lb, const dp_lb_ctx_t *ctx)
{
    const uint64_t h = ctx && ctx->has_hash ? ctx->hash : lb_random(lb);
    bool degraded;
    const level_t *l = choose_priority(lb, h, &degraded);
    const uint32_t attempts = retries_of(ctx) + 1;
    size_t host = DP_LB_NONE;
    for (uint32_t i = 0; i < attempts; i++) {
        host = lb->cfg.policy == DP_LB_RING_HASH ? ring_pick(l, h, i) : maglev_pick(l, h, i);
        if (host == DP_LB_NONE || !excluded(lb, ctx, host))
            return host;
    }
    return host;
}

/* LeastRequestLoadBalancer::unweightedHostPickNChoices */
static size_t pick_n_choices(dp_lb_t *lb, const src_t *s)
{
    const dp_lb_hosts_t *hs = lb->cur;
    size_t cand = DP_LB_NONE;
    uint64_t cand_active = 0;
    for (uint32_t c = 0; c < lb->cfg.choice_count; c++) {
        uint32_t host = s->hosts[lb_random(lb) % s->n];
        uint64_t active = hs && hs->active ? hs->active(hs->active_ud, host) : 0;
        if (cand == DP_LB_NONE || active < cand_active) {
            cand = host;
            cand_active = active;
        }
    }
    return cand;
}

/* ZoneAwareLoadBalancerBase::hostSourceToUse, then the policy's pick (chooseHostOnce). */
static size_t pick_once(dp_lb_t *lb)
{
    const uint64_t r = lb_random(lb);
    bool degraded;
    level_t *l = choose_priority(lb, r, &degraded);
    src_t *s;
    if (l->panic) {
        s = &l->all;
    } else if (lb->cfg.locality_weighted && l->has_loc_edf[degraded]) {
        uint32_t item = edf_pick(&l->loc_edf[degraded], loc_item_weight, l->loc_eff[degraded]);
        loc_t *lc = &l->locs[l->loc_idx[degraded][item]];
        s = degraded ? &lc->degraded : &lc->healthy;
    } else {
        s = degraded ? &l->degraded : &l->healthy;
    }
    if (s->has_edf) {
        src_wctx_t c = {lb, s};
        return s->hosts[edf_pick(&s->edf, src_item_weight, &c)];
    }
    if (s->n == 0)
        return DP_LB_NONE;
    switch (lb->cfg.policy) {
    case DP_LB_LEAST_REQUEST:
        return pick_n_choices(lb, s);
    case DP_LB_RANDOM:
        return s->hosts[r % s->n];
    default:
        return s->hosts[s->rr++ % s->n];
    }
}

static bool any_set(const bool *f, size_t n)
{
    for (size_t i = 0; f && i < n; i++) {
        if (f[i])
            return true;
    }
    return false;
}

static bool same_hosts(const dp_lb_t *lb, const dp_lb_hosts_t *hs)
{
    if (!lb->valid || lb->eps != hs->eps || lb->n != hs->n)
        return false;
    if (hs->ejected == NULL || lb->ejected == NULL)
        return !any_set(hs->ejected, hs->n) && !any_set(lb->ejected, lb->n);
    return memcmp(lb->ejected, hs->ejected, hs->n * sizeof(bool)) == 0;
}

size_t dp_lb_pick(dp_lb_t *lb, const dp_lb_hosts_t *hs, const dp_lb_ctx_t *ctx)
{
    if (!same_hosts(lb, hs))
        rebuild(lb, hs);
    if (lb->n_levels == 0)
        return DP_LB_NONE;
    if (lb->cfg.policy == DP_LB_RING_HASH || lb->cfg.policy == DP_LB_MAGLEV)
        return pick_hashing(lb, ctx);
    lb->cur = hs;
    const uint32_t attempts = retries_of(ctx) + 1;
    size_t host = DP_LB_NONE;
    for (uint32_t i = 0; i < attempts; i++) {
        host = pick_once(lb);
        if (host == DP_LB_NONE || !excluded(lb, ctx, host))
            break;
    }
    lb->cur = NULL;
    return host;
}
