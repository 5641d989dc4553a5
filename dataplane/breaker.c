/* Circuit breakers shared by every worker (dataplane/breaker.h). */
#include "dataplane/breaker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct breaker {
    _Atomic uint64_t count;
    _Atomic uint32_t max;
    /* circuit_breakers.<prio>.<x>_open (NULL without stats) and remaining_<x> (NULL unless
     * track_remaining): set once by the main thread, read by every worker */
    _Atomic(dp_gauge_t *) open;
    _Atomic(dp_gauge_t *) remaining;
} breaker_t;

/* A retry budget: the retry breaker's threshold follows the requests in flight and pending. */
typedef struct budget {
    atomic_bool on;
    _Atomic uint32_t ppm; /* budget_percent in millionths of the whole */
    _Atomic uint32_t min;
} budget_t;

struct dp_breakers {
    breaker_t br[DP_BR_NPRIO][DP_BR_NRES];
    budget_t budget[DP_BR_NPRIO];
    atomic_uint refs;
    bool registered; /* in the registry (under reg_lock) */
    char *name;
    dp_breakers_t *next; /* in the registry */
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static dp_breakers_t *reg_head;
static size_t reg_n;

static const char *const open_names[DP_BR_NRES] = {"cx_open", "rq_pending_open", "rq_open",
                                                   "rq_retry_open", "cx_pool_open"};
static const char *const remaining_names[DP_BR_NRES] = {
    "remaining_cx", "remaining_pending", "remaining_rq", "remaining_retries", "remaining_cx_pools"};
static const char *const prio_names[DP_BR_NPRIO] = {"default", "high"};

dp_circuit_breakers_t dp_circuit_breakers_default(void)
{
    dp_circuit_breakers_t th = {
        .max_connections = 1024,
        .max_pending_requests = 1024,
        .max_requests = 1024,
        .max_retries = 3,
        .max_connection_pools = UINT32_MAX,
        .track_remaining = false,
    };
    return th;
}

static uint32_t th_of(const dp_circuit_breakers_t *th, dp_breaker_res_t r)
{
    switch (r) {
    case DP_BR_CX:
        return th->max_connections;
    case DP_BR_PENDING:
        return th->max_pending_requests;
    case DP_BR_RQ:
        return th->max_requests;
    case DP_BR_RETRY:
        return th->max_retries;
    default:
        return th->max_connection_pools;
    }
}

/* The threshold of resource r at priority p now. */
static uint64_t max_of(const dp_breakers_t *bs, int p, int r)
{
    const budget_t *bu = &bs->budget[p];
    if (r != DP_BR_RETRY || !atomic_load_explicit(&bu->on, memory_order_relaxed))
        return atomic_load_explicit(&bs->br[p][r].max, memory_order_relaxed);
    uint64_t base = atomic_load_explicit(&bs->br[p][DP_BR_RQ].count, memory_order_relaxed) +
                    atomic_load_explicit(&bs->br[p][DP_BR_PENDING].count, memory_order_relaxed);
    uint64_t n = base * atomic_load_explicit(&bu->ppm, memory_order_relaxed) / 1000000;
    uint64_t min = atomic_load_explicit(&bu->min, memory_order_relaxed);
    return n > min ? n : min;
}

/* The gauges after the count became `count`. Workers change a count at once and may store
 * their gauges in either order, so the last store could carry a count already gone (worker A
 * takes 1 -> 2, B releases 2 -> 1, A releases 1 -> 0, B's "1" lands after A's "0": cx_open
 * stays 1 with nothing open). So each updater reads the count again after its stores and
 * stores once more until the two agree. The count's changes, these stores and that read are
 * sequentially consistent, so whoever stores a gauge last read the count after every change
 * before its store, and stored what it read. */
static void br_gauges(const dp_breakers_t *bs, int p, int r, uint64_t count)
{
    const breaker_t *b = &bs->br[p][r];
    dp_gauge_t *open = atomic_load_explicit(&b->open, memory_order_acquire);
    dp_gauge_t *remaining = atomic_load_explicit(&b->remaining, memory_order_acquire);
    if (open == NULL && remaining == NULL)
        return;
    for (int guard = 0; guard < 64; guard++) {
        uint64_t max = max_of(bs, p, r);
        if (open)
            dp_gauge_set_seq_cst(open, count >= max);
        if (remaining)
            dp_gauge_set_seq_cst(remaining, count >= max ? 0 : max - count);
        uint64_t now = atomic_load_explicit(&b->count, memory_order_seq_cst);
        if (now == count)
            return;
        count = now;
    }
}

static void apply(dp_breakers_t *b, const dp_circuit_breakers_t th[DP_BR_NPRIO], dp_stats_t *st,
                  const char *stat_name)
{
    for (int p = 0; p < DP_BR_NPRIO; p++) {
        budget_t *bu = &b->budget[p];
        atomic_store_explicit(&bu->ppm, (uint32_t)(th[p].retry_budget_percent * 10000),
                              memory_order_relaxed);
        atomic_store_explicit(&bu->min, th[p].min_retry_concurrency, memory_order_relaxed);
        atomic_store_explicit(&bu->on, th[p].has_retry_budget, memory_order_relaxed);
        for (int r = 0; r < DP_BR_NRES; r++) {
            breaker_t *br = &b->br[p][r];
            atomic_store_explicit(&br->max, th_of(&th[p], (dp_breaker_res_t)r),
                                  memory_order_relaxed);
            if (st) {
                char name[512];
                if (atomic_load_explicit(&br->open, memory_order_relaxed) == NULL) {
                    snprintf(name, sizeof(name), "cluster.%s.circuit_breakers.%s.%s", stat_name,
                             prio_names[p], open_names[r]);
                    atomic_store_explicit(&br->open, dp_stats_gauge(st, name),
                                          memory_order_release);
                }
                if (th[p].track_remaining &&
                    atomic_load_explicit(&br->remaining, memory_order_relaxed) == NULL) {
                    snprintf(name, sizeof(name), "cluster.%s.circuit_breakers.%s.%s", stat_name,
                             prio_names[p], remaining_names[r]);
                    atomic_store_explicit(&br->remaining, dp_stats_gauge(st, name),
                                          memory_order_release);
                }
            }
            br_gauges(b, p, r, atomic_load_explicit(&br->count, memory_order_relaxed));
        }
    }
}

dp_breakers_t *dp_breakers_get(const char *name, const char *stat_name, dp_stats_t *stats,
                               const dp_circuit_breakers_t th[DP_BR_NPRIO])
{
    if (stat_name == NULL)
        stat_name = name;
    pthread_mutex_lock(&reg_lock);
    dp_breakers_t *b = reg_head;
    while (b && strcmp(b->name, name) != 0)
        b = b->next;
    if (b) {
        atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    } else {
        b = calloc(1, sizeof(*b));
        if (b == NULL || (b->name = strdup(name)) == NULL)
            abort();
        atomic_init(&b->refs, 1);
        b->registered = true;
        b->next = reg_head;
        reg_head = b;
        reg_n++;
    }
    pthread_mutex_unlock(&reg_lock);
    apply(b, th, stats, stat_name);
    return b;
}

dp_breakers_t *dp_breakers_new_private(const dp_circuit_breakers_t *th)
{
    dp_breakers_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        abort();
    atomic_init(&b->refs, 1);
    dp_circuit_breakers_t t = *th, d = dp_circuit_breakers_default();
    if (t.max_connections == 0)
        t.max_connections = d.max_connections;
    if (t.max_pending_requests == 0)
        t.max_pending_requests = d.max_pending_requests;
    if (t.max_requests == 0)
        t.max_requests = d.max_requests;
    if (t.max_retries == 0)
        t.max_retries = d.max_retries;
    if (t.max_connection_pools == 0)
        t.max_connection_pools = UINT32_MAX;
    dp_circuit_breakers_t both[DP_BR_NPRIO] = {t, t};
    apply(b, both, NULL, NULL);
    return b;
}

dp_breakers_t *dp_breakers_ref(dp_breakers_t *b)
{
    if (b)
        atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    return b;
}

void dp_breakers_unref(dp_breakers_t *b)
{
    if (b == NULL)
        return;
    if (!b->registered) {
        if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
            free(b);
        return;
    }
    /* Under the lock, so that dp_breakers_get never finds an object on its way out. */
    pthread_mutex_lock(&reg_lock);
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1) {
        pthread_mutex_unlock(&reg_lock);
        return;
    }
    for (dp_breakers_t **pp = &reg_head; *pp; pp = &(*pp)->next) {
        if (*pp == b) {
            *pp = b->next;
            reg_n--;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    free(b->name);
    free(b);
}

void dp_breakers_unref_cb(void *b)
{
    dp_breakers_unref(b);
}

bool dp_breakers_try(dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r)
{
    breaker_t *br = &b->br[p][r];
    uint64_t max = max_of(b, p, r);
    uint64_t cur = atomic_load_explicit(&br->count, memory_order_relaxed);
    for (;;) {
        if (cur >= max) {
            br_gauges(b, p, r, cur);
            return false;
        }
        if (atomic_compare_exchange_weak_explicit(&br->count, &cur, cur + 1, memory_order_seq_cst,
                                                  memory_order_relaxed))
            break;
    }
    br_gauges(b, p, r, cur + 1);
    return true;
}

void dp_breakers_take(dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r)
{
    breaker_t *br = &b->br[p][r];
    br_gauges(b, p, r, atomic_fetch_add_explicit(&br->count, 1, memory_order_seq_cst) + 1);
}

void dp_breakers_release(dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r)
{
    breaker_t *br = &b->br[p][r];
    uint64_t cur = atomic_load_explicit(&br->count, memory_order_relaxed);
    do {
        if (cur == 0)
            return; /* never below zero, whatever a caller does */
    } while (!atomic_compare_exchange_weak_explicit(&br->count, &cur, cur - 1, memory_order_seq_cst,
                                                    memory_order_relaxed));
    br_gauges(b, p, r, cur - 1);
}

bool dp_breakers_open(const dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r)
{
    return dp_breakers_count(b, p, r) >= max_of(b, p, r);
}

uint64_t dp_breakers_count(const dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r)
{
    return atomic_load_explicit(&b->br[p][r].count, memory_order_relaxed);
}

uint32_t dp_breakers_max(const dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r)
{
    uint64_t m = max_of(b, p, r);
    return m > UINT32_MAX ? UINT32_MAX : (uint32_t)m;
}

size_t dp_breakers_registry_size(void)
{
    pthread_mutex_lock(&reg_lock);
    size_t n = reg_n;
    pthread_mutex_unlock(&reg_lock);
    return n;
}
