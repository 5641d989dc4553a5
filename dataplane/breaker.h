/* Circuit breakers of a cluster (Envoy's cluster.circuit_breakers), counted across every worker
 * thread, and the process-wide registry that keeps them across snapshot rebuilds (STYLE.md §8:
 * mutable state lives outside the immutable snapshot).
 *
 * A cluster has one set of breakers per routing priority (DEFAULT, HIGH; the data plane sends
 * every request at DEFAULT). Each breaker is a resource with a count and a threshold:
 *
 *   DP_BR_CX       open connections          max_connections
 *   DP_BR_PENDING  requests waiting for one  max_pending_requests
 *   DP_BR_RQ       requests in flight        max_requests
 *   DP_BR_RETRY    retries in flight         max_retries
 *   DP_BR_POOLS    connection pools          max_connection_pools
 *
 * With a retry_budget the retry threshold is instead budget_percent of the requests in flight
 * and pending (DP_BR_RQ + DP_BR_PENDING counts), at least min_retry_concurrency.
 *
 * The counts are C11 atomics, updated lock-free from any thread (dp_breakers_try is a
 * compare-and-swap loop, so of N concurrent takers of a breaker with k left exactly min(N, k)
 * succeed). Thresholds are up to 2^32-1 (Istio's "unlimited" 4294967295), and a count never
 * wraps. After each change the breaker's gauges are set: cluster.<name>.circuit_breakers.
 * <default|high>.{cx_open,rq_pending_open,rq_open,rq_retry_open,cx_pool_open} (1 while the
 * count is at or over the threshold) and, with track_remaining,
 * remaining_{cx,pending,rq,retries,cx_pools} (threshold minus count, at least 0).
 *
 * The registry. The snapshot builder (main thread) asks for the breakers of a cluster by name
 * with the cluster's thresholds: it gets the live object when there is one (its thresholds
 * updated: the counts stay) or a new one. The snapshot keeps that reference and drops it from
 * a cleanup of its arena; the connection pools of every worker hold their own reference while
 * they have state for the cluster (their connections release counts after the snapshot that
 * made them is gone). An object is freed with its last reference. */
#ifndef SKIFF_DATAPLANE_BREAKER_H
#define SKIFF_DATAPLANE_BREAKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/snapshot.h"
#include "dataplane/stats.h"

typedef enum dp_breaker_res {
    DP_BR_CX,
    DP_BR_PENDING,
    DP_BR_RQ,
    DP_BR_RETRY,
    DP_BR_POOLS,
    DP_BR_NRES,
} dp_breaker_res_t;

typedef enum dp_breaker_prio {
    DP_BR_DEFAULT,
    DP_BR_HIGH,
    DP_BR_NPRIO,
} dp_breaker_prio_t;

typedef struct dp_breakers dp_breakers_t;

/* Envoy's default thresholds (1024 connections, pending requests and requests, 3 retries,
 * unlimited pools, no remaining_* gauges). */
dp_circuit_breakers_t dp_circuit_breakers_default(void);

/* The registry's object for cluster `name` (one more reference), created when there is none,
 * with thresholds th[DP_BR_NPRIO] (DEFAULT, HIGH) applied either way. Its gauges are made in
 * stats (NULL: none) under "cluster.<stat_name>." (stat_name NULL: name). Main thread (the
 * registry itself is locked; the gauges are created here only). */
dp_breakers_t *dp_breakers_get(const char *name, const char *stat_name, dp_stats_t *stats,
                               const dp_circuit_breakers_t th[DP_BR_NPRIO]);

/* A private object with thresholds th (both priorities), in no registry and without gauges:
 * for clusters built by hand (tests) that carry no breakers. Zero thresholds of
 * max_connections, max_pending_requests, max_requests and max_retries take Envoy's defaults,
 * and a zero max_connection_pools means unlimited. */
dp_breakers_t *dp_breakers_new_private(const dp_circuit_breakers_t *th);

dp_breakers_t *dp_breakers_ref(dp_breakers_t *b); /* any thread; accepts NULL */
void dp_breakers_unref(dp_breakers_t *b);         /* any thread; accepts NULL */
void dp_breakers_unref_cb(void *b);               /* the same, for dp_arena_add_cleanup */

/* Takes one of resource r at priority p when its count is below the threshold: true (then
 * release it once), or false and nothing taken. Any thread. */
bool dp_breakers_try(dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r);
/* Takes one regardless of the threshold (Envoy lets a pool without any connection make one). */
void dp_breakers_take(dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r);
void dp_breakers_release(dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r);
/* Whether the count is at or over the threshold (what dp_breakers_try would refuse now). */
bool dp_breakers_open(const dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r);
uint64_t dp_breakers_count(const dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r);
uint32_t dp_breakers_max(const dp_breakers_t *b, dp_breaker_prio_t p, dp_breaker_res_t r);

/* Test hook: objects in the registry. */
size_t dp_breakers_registry_size(void);

#endif
