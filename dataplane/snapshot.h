/* The configuration snapshot the workers read: plain const C structs in one arena, immutable
 * once published, reference-counted across threads (STYLE.md §8).
 *
 *   Build   xds/ fills a fresh snapshot through the builder calls below (main thread), then
 *           dp_snapshot_seal() freezes it. A failed build is dropped with dp_snapshot_unref();
 *           the previous snapshot keeps serving.
 *   Publish dp_worker_publish() puts a reference in each worker's one-slot mailbox (dropping
 *           any unread one) and wakes the worker with uv_async_send (calls coalesce, so the
 *           mailbox holds the latest, not a queue).
 *   Swap    The worker's wakeup replaces its current snapshot and unrefs the previous one.
 *   Pin     A stream takes a reference when it starts and keeps it to the end, so a request
 *           never sees two configurations.
 *   Retire  The arena is freed when the last reference goes, on whichever thread drops it. */
#ifndef SKIFF_DATAPLANE_SNAPSHOT_H
#define SKIFF_DATAPLANE_SNAPSHOT_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dataplane/stats.h"

/* A bump allocator: one lifetime, freed whole. Not thread-safe (one builder). */
typedef struct dp_arena dp_arena_t;

dp_arena_t *dp_arena_new(void);
void *dp_arena_alloc(dp_arena_t *a, size_t size); /* zeroed, 16-byte aligned; aborts on OOM */
char *dp_arena_strdup(dp_arena_t *a, const char *s);
size_t dp_arena_bytes(const dp_arena_t *a); /* bytes handed out */
void dp_arena_free(dp_arena_t *a);          /* accepts NULL */
/* Registers fn(p) to run when the arena is freed, before its memory goes (newest first): for
 * what a snapshot references but does not own, such as shared rate-limit buckets. The record
 * lives in the arena. Same thread as the other builder calls. */
void dp_arena_add_cleanup(dp_arena_t *a, void (*fn)(void *p), void *p);

typedef enum dp_health {
    DP_HEALTH_UNKNOWN = 0, /* Envoy's EDS health_status numbering */
    DP_HEALTH_HEALTHY = 1,
    DP_HEALTH_UNHEALTHY = 2,
    DP_HEALTH_DRAINING = 3,
    DP_HEALTH_TIMEOUT = 4,
    DP_HEALTH_DEGRADED = 5,
} dp_health_t;

/* An IP address and port, or a unix socket path (kept in the snapshot's arena): compact, as
 * a snapshot holds every endpoint of every cluster. */
typedef struct dp_addr {
    union {
        struct sockaddr sa; /* sa_family: AF_INET, AF_INET6, or AF_UNIX with unix_path */
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    };
    const char *unix_path;
} dp_addr_t;

typedef struct dp_endpoint {
    dp_addr_t addr;
    uint32_t weight; /* load_balancing_weight, 1 when unset */
    uint32_t priority;
    dp_health_t health;
} dp_endpoint_t;

typedef enum dp_cluster_type {
    DP_CLUSTER_STATIC,
    DP_CLUSTER_STRICT_DNS,
    DP_CLUSTER_LOGICAL_DNS,
    DP_CLUSTER_EDS,
    DP_CLUSTER_ORIGINAL_DST,
} dp_cluster_type_t;

typedef enum dp_lb_policy {
    DP_LB_ROUND_ROBIN,
    DP_LB_LEAST_REQUEST,
    DP_LB_RANDOM,
    DP_LB_RING_HASH,
    DP_LB_MAGLEV,
    DP_LB_CLUSTER_PROVIDED,
} dp_lb_policy_t;

typedef struct dp_cluster {
    const char *name;
    dp_cluster_type_t type;
    dp_lb_policy_t lb_policy;
    uint64_t connect_timeout_ms;
    const dp_endpoint_t *endpoints; /* hosts with a resolved address */
    size_t n_endpoints;
    /* Envoy's cluster.<name>.upstream_cx_* stats; live in the stats store, not the arena */
    dp_counter_t *cx_total, *cx_connect_fail;
    dp_gauge_t *cx_active;
} dp_cluster_t;

/* A tcp_proxy target: one cluster of a weighted_clusters split (or the only one). */
typedef struct dp_weighted_cluster {
    const char *name;
    uint32_t weight;
} dp_weighted_cluster_t;

typedef struct dp_listener {
    const char *name;
    dp_addr_t addr;
    bool bind_to_port;
    bool use_original_dst;
    const char *tcp_cluster; /* the tcp_proxy cluster of its filter chain, or NULL */
    const dp_weighted_cluster_t *tcp_weighted; /* tcp_proxy weighted_clusters, or NULL */
    size_t n_tcp_weighted;
    uint32_t tcp_total_weight;
    uint64_t tcp_idle_timeout_ms; /* 0: none; Envoy's default is 1 h */
    bool inbound;            /* traffic_direction INBOUND (what /drain_listeners?inboundonly drains) */
    bool drained;            /* stop accepting: /drain_listeners has run its course */
    /* Envoy's listener.<address>.downstream_cx_total / _active */
    dp_counter_t *cx_total;
    dp_gauge_t *cx_active;
} dp_listener_t;

typedef struct dp_snapshot {
    atomic_uint refs;
    bool sealed;
    uint64_t generation; /* increases with every published snapshot */
    dp_arena_t *arena;
    dp_cluster_t *clusters; /* sorted by name once sealed */
    size_t n_clusters, cap_clusters;
    dp_listener_t *listeners;
    size_t n_listeners, cap_listeners;
} dp_snapshot_t;

/* ---- building (one thread) ---- */

dp_snapshot_t *dp_snapshot_new(uint64_t generation); /* one reference; aborts on OOM */

/* Appends a cluster (its name and endpoints copied into the arena by the caller's use of
 * dp_arena_*); returns the slot to fill. Not after sealing. */
dp_cluster_t *dp_snapshot_add_cluster(dp_snapshot_t *s);
dp_listener_t *dp_snapshot_add_listener(dp_snapshot_t *s);

/* Sorts and freezes. Returns -EEXIST (and keeps it unsealed) when two clusters share a name. */
int dp_snapshot_seal(dp_snapshot_t *s);

/* ---- reading (any thread, on a sealed snapshot) ---- */

const dp_cluster_t *dp_snapshot_find_cluster(const dp_snapshot_t *s, const char *name);

/* ---- lifetime (any thread) ---- */

dp_snapshot_t *dp_snapshot_ref(dp_snapshot_t *s); /* accepts NULL */

/* Drops one reference; frees the arena with the last one. Returns NULL. Accepts NULL. */
dp_snapshot_t *dp_snapshot_unref(dp_snapshot_t *s);

/* Test hook: the number of snapshots freed so far in this process. */
uint64_t dp_snapshot_freed_count(void);

#endif
