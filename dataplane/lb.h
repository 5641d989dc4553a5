/* Host choice within a cluster, as Envoy makes it (source/extensions/load_balancing_policies/).
 *
 * Pure: a host set and a request context in, the index of one host out; no I/O, no clock.
 * One dp_lb_t per cluster per worker (worker thread only); it keeps what Envoy keeps per
 * worker: the priority loads, panic flags, EDF schedulers, round-robin positions, the
 * locality scheduler, and for RING_HASH / MAGLEV the ring or table of each priority. They are
 * rebuilt (allocation happens there only) when the host set changes: another endpoint array,
 * another ejection flag, dp_lb_configure() or dp_lb_invalidate(); round-robin positions
 * survive a rebuild, as Envoy's rr_indexes_ do. A pick allocates nothing.
 *
 * Health (Envoy's coarse health): UNKNOWN and HEALTHY hosts are healthy, DEGRADED ones
 * degraded, UNHEALTHY and TIMEOUT ones unhealthy, and so is any host the caller marks ejected
 * (outlier detection: Envoy's FAILED_OUTLIER_CHECK). DRAINING hosts are Envoy's excluded hosts
 * (EDS_STATUS_DRAINING): not counted in a priority's health, never picked but in panic. Hosts
 * without an address (AF_UNSPEC) are left out altogether.
 *
 * Priorities (LoadBalancerBase::recalculatePerPriorityState): each priority's health is
 * min(100, overprovisioning_factor * healthy / total) (counts, or weights with
 * weighted_priority_health); the load of 100 goes to the priorities in order, each taking its
 * share health * 100 / min(100, sum of health and degraded availability); what is left goes
 * to degraded hosts the same way. A priority is in panic when the cluster's normalised
 * availability is under 100 and its healthy plus degraded share of hosts is under
 * healthy_panic_threshold; it then picks among all its hosts, unhealthy ones too (threshold 0
 * turns this off: no healthy host, no host). When every priority is in panic,
 * the load follows the number of hosts per priority. A request draws a number (the request's
 * hash for RING_HASH / MAGLEV, otherwise a random one) and takes priority p where
 * (number % 100 + 1) falls in p's cumulative load.
 *
 * Policies:
 *   ROUND_ROBIN    equal weights: plain round robin from a random start; otherwise Envoy's EDF
 *                  scheduler (each pick takes the earliest deadline and re-adds the host at
 *                  now + 1 / weight), started with a random number of emulated picks.
 *   LEAST_REQUEST  equal weights: choice_count random draws (with replacement), the one with
 *                  the fewest active requests; otherwise (or when active_request_bias is set)
 *                  EDF with weight / (active + 1) ^ active_request_bias.
 *   RANDOM         a uniformly random host of the chosen set (weights are not used, as in
 *                  Envoy's RandomLoadBalancer).
 *   RING_HASH      Envoy's ketama ring: per host, scale * normalised weight entries
 *                  XXH64("<address>_<i>", 0) (or MurmurHash2), sorted; a hash takes the first
 *                  entry >= it, wrapping.
 *   MAGLEV         Envoy's weighted Maglev table (offset XXH64(address, 0) % size, skip
 *                  XXH64(address, 1) % (size - 1) + 1); a hash takes table[hash % size].
 * With locality_weighted_lb_config, ROUND_ROBIN, LEAST_REQUEST and RANDOM first pick a
 * locality of the priority by EDF over its effective weight (locality weight times
 * min(1, overprovisioning * eligible / hosts)), RING_HASH and MAGLEV weigh each host by its
 * locality's weight share. "<address>" is Envoy's Address::asString(): "127.0.0.1:8080",
 * "[::1]:8080", or the unix socket path. */
#ifndef SKIFF_DATAPLANE_LB_H
#define SKIFF_DATAPLANE_LB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/snapshot.h"
#include "dataplane/upstream.h"

/* Envoy's defaults and limits. */
#define DP_LB_RING_MIN_DEFAULT         1024u
#define DP_LB_RING_MAX_DEFAULT         (8u * 1024 * 1024)
#define DP_LB_RING_MAX_LIMIT           (8u * 1024 * 1024) /* maximum_ring_size's validation bound */
#define DP_LB_MAGLEV_SIZE_DEFAULT      65537u
#define DP_LB_MAGLEV_SIZE_LIMIT        5000011u /* Envoy's table_size validation bound */
#define DP_LB_CHOICE_COUNT_DEFAULT     2u
#define DP_LB_PANIC_DEFAULT            50u
#define DP_LB_OVERPROVISIONING_DEFAULT 140u
/* Host selection re-picks honoured per request (a bound on a route-controlled loop). */
#define DP_LB_MAX_SELECTION_RETRIES 1000u

/* A cluster's load-balancing settings with Envoy's defaults filled in. */
typedef struct dp_lb_config {
    dp_lb_policy_t policy;
    uint64_t ring_min, ring_max; /* ring_hash_lb_config minimum / maximum_ring_size */
    bool ring_murmur;            /* hash_function MURMUR_HASH_2 (else XX_HASH) */
    uint64_t maglev_size;        /* maglev_lb_config table_size (a prime) */
    uint32_t choice_count;       /* least_request_lb_config choice_count */
    bool has_bias;               /* active_request_bias given */
    double active_request_bias;  /* 1.0 unless given */
    uint32_t panic_threshold;    /* healthy_panic_threshold, percent 0..100 */
    bool locality_weighted;      /* common_lb_config.locality_weighted_lb_config */
    uint32_t overprovisioning;   /* ClusterLoadAssignment.policy.overprovisioning_factor */
    bool weighted_priority_health;
} dp_lb_config_t;

/* Fills cfg from c's lb fields, 0 / unset meaning Envoy's default. */
void dp_lb_config_from_cluster(dp_lb_config_t *cfg, const dp_cluster_t *c);

typedef struct dp_lb dp_lb_t;

/* A balancer with cfg (copied); seed feeds its random numbers (xorshift64*) and so the EDF
 * start and round-robin start, as Envoy's per-worker seed_. Aborts on out of memory. */
dp_lb_t *dp_lb_new(const dp_lb_config_t *cfg, uint64_t seed);
void dp_lb_free(dp_lb_t *lb); /* accepts NULL */

/* New settings (rebuilds at the next pick). */
void dp_lb_configure(dp_lb_t *lb, const dp_lb_config_t *cfg);
/* Forget the host set: the next pick rebuilds even if the endpoint array is the same. */
void dp_lb_invalidate(dp_lb_t *lb);
/* Tests: the random numbers come from fn(ud) instead, starting with a new seed (Envoy's seed_,
 * drawn at once, as Envoy draws it when the balancer is made); NULL: back to the built-in
 * generator. */
void dp_lb_set_random(dp_lb_t *lb, uint64_t (*fn)(void *ud), void *ud);

/* The hosts to choose from. */
typedef struct dp_lb_hosts {
    const dp_endpoint_t *eps;
    size_t n;
    /* NULL, or n flags: true for a host outlier detection has ejected (counted unhealthy). */
    const bool *ejected;
    /* LEAST_REQUEST: requests active on eps[i] (Envoy counts pending ones too); NULL: 0. */
    uint64_t (*active)(void *ud, size_t i);
    void *active_ud;
} dp_lb_hosts_t;

#define DP_LB_NONE SIZE_MAX

/* The index in hs->eps of the host for one request, or DP_LB_NONE when there is none (no
 * host, or none healthy with panic disabled). ctx may be NULL; ctx->original_dst is not used
 * here. With ctx->exclude, a host in it is re-picked up to host_selection_max_attempts times
 * (0: once, Envoy's default), and the last pick is returned if all were excluded. */
size_t dp_lb_pick(dp_lb_t *lb, const dp_lb_hosts_t *hs, const dp_lb_ctx_t *ctx);

/* Envoy's host hash key: the address as Address::asString() writes it, into buf (NUL ended);
 * returns its length, 0 when it has no address. */
size_t dp_lb_host_key(const dp_addr_t *a, char *buf, size_t size);

/* Envoy's MurmurHash::murmurHash2 (64-bit, libstdc++'s _Hash_bytes) with seed. */
uint64_t dp_lb_murmur2(const void *data, size_t len, uint64_t seed);

#endif
