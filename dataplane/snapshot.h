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
    /* A STRICT_DNS / LOGICAL_DNS host: the name to resolve and the port (addr is then unset,
     * AF_UNSPEC, unless the name is an IP literal). NULL for other clusters. */
    const char *hostname;
    uint16_t port;
    /* The LocalityLbEndpoints it came in: its locality (NULL parts read as "") and its
     * load_balancing_weight (0 when unset: no traffic under locality-weighted balancing, as in
     * Envoy). */
    const char *region, *zone, *sub_zone;
    uint32_t locality_weight;
    /* The host's outlier-detection state (dataplane/outlier.h), shared by every worker; NULL
     * when the cluster has no outlier detection. */
    struct dp_outlier_host *outlier;
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

/* dns_lookup_family (Envoy's numbering). */
typedef enum dp_dns_family {
    DP_DNS_AUTO = 0, /* IPv6 addresses when there are any, else IPv4 */
    DP_DNS_V4_ONLY = 1,
    DP_DNS_V6_ONLY = 2,
    DP_DNS_V4_PREFERRED = 3, /* IPv4 addresses when there are any, else IPv6 */
    DP_DNS_ALL = 4,
} dp_dns_family_t;

/* The protocol a cluster's upstream connections speak (typed_extension_protocol_options
 * "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", or the legacy cluster fields). */
typedef enum dp_cluster_proto {
    DP_CLUSTER_PROTO_HTTP1,      /* explicit http_protocol_options, auto_config, or nothing */
    DP_CLUSTER_PROTO_HTTP2,      /* explicit http2_protocol_options (or the legacy field) */
    DP_CLUSTER_PROTO_DOWNSTREAM, /* use_downstream_protocol_config */
} dp_cluster_proto_t;

/* circuit_breakers.thresholds of one routing priority. Envoy's defaults: 1024 connections,
 * pending requests and requests, 3 retries, unlimited pools (UINT32_MAX), no remaining_*
 * gauges (dp_circuit_breakers_default() in dataplane/breaker.h). */
typedef struct dp_circuit_breakers {
    uint32_t max_connections;
    uint32_t max_pending_requests;
    uint32_t max_requests;
    uint32_t max_retries;
    uint32_t max_connection_pools;
    bool track_remaining;
    /* retry_budget: when set, concurrent retries are limited to retry_budget_percent of the
     * requests in flight and pending (at least min_retry_concurrency) instead of max_retries.
     * Envoy's defaults: 20%, 3. */
    bool has_retry_budget;
    double retry_budget_percent;
    uint32_t min_retry_concurrency;
} dp_circuit_breakers_t;

/* cluster.outlier_detection with Envoy's defaults applied (dp_outlier_config_default() in
 * dataplane/outlier.h). Times in milliseconds, enforcing_* and percentages 0..100,
 * success_rate_stdev_factor in thousandths (1900: 1.9). */
typedef struct dp_outlier_config {
    uint32_t consecutive_5xx;                  /* 5 */
    uint32_t consecutive_gateway_failure;      /* 5 */
    uint32_t consecutive_local_origin_failure; /* 5 */
    bool split_external_local_origin_errors;   /* false */
    uint64_t interval_ms;                      /* 10 s */
    uint64_t base_ejection_time_ms;            /* 30 s */
    uint64_t max_ejection_time_ms;             /* 300 s */
    uint64_t max_ejection_time_jitter_ms;      /* 0: a random 0..jitter is added per ejection */
    uint32_t max_ejection_percent;             /* 10 */
    bool always_eject_one_host;                /* false */
    uint32_t enforcing_consecutive_5xx;        /* 100 */
    uint32_t enforcing_consecutive_gateway_failure;      /* 0 */
    uint32_t enforcing_consecutive_local_origin_failure; /* 100 */
    uint32_t enforcing_success_rate;                     /* 100 */
    uint32_t enforcing_local_origin_success_rate;        /* 100 */
    uint32_t enforcing_failure_percentage;               /* 0 */
    uint32_t enforcing_failure_percentage_local_origin;  /* 0 */
    uint32_t success_rate_minimum_hosts;                 /* 5 */
    uint32_t success_rate_request_volume;                /* 100 */
    uint32_t success_rate_stdev_factor;                  /* 1900 */
    uint32_t failure_percentage_threshold;               /* 85 */
    uint32_t failure_percentage_minimum_hosts;           /* 5 */
    uint32_t failure_percentage_request_volume;          /* 50 */
} dp_outlier_config_t;

/* Envoy's cluster.<name>.* HTTP stats, created on the main thread (they live in the stats
 * store, not the arena). Every pointer is NULL when the snapshot was built without a stats
 * store. The connection pools (dataplane/upstream.c) count the upstream_cx_* ones and
 * upstream_rq_pending_*; the router counts the other upstream_rq_* ones and the byte counts. */
typedef struct dp_cluster_stats {
    dp_counter_t *rq_total;
    dp_gauge_t *rq_active;
    dp_counter_t *rq_pending_total;
    dp_gauge_t *rq_pending_active;
    dp_counter_t *rq_pending_overflow;
    dp_counter_t *rq_completed;
    dp_counter_t *rq_2xx, *rq_3xx, *rq_4xx, *rq_5xx;
    dp_counter_t *rq_timeout;
    dp_counter_t *rq_retry;
    dp_counter_t *cx_http1_total, *cx_http2_total;
    dp_counter_t *cx_connect_timeout;
    dp_counter_t *cx_destroy;
    dp_counter_t *cx_idle_timeout;
    dp_counter_t *cx_none_healthy;
    dp_counter_t *cx_overflow;
    dp_counter_t *cx_pool_overflow;  /* max_connection_pools refused a pool */
    dp_counter_t *rq_retry_overflow; /* max_retries refused a retry (dp_upstream_retry_admit) */
    dp_counter_t *cx_rx_bytes_total, *cx_tx_bytes_total;
    struct dp_code_counters *rq_code; /* upstream_rq_<code>, made on first use */
} dp_cluster_stats_t;

/* Per-status-code counters (Envoy's cluster.<name>.upstream_rq_200 and the like), created by
 * the worker that first meets a code: a table of one slot per code 100..599, itself allocated
 * on first use (by compare-and-swap), freed with the snapshot's arena. */
typedef struct dp_code_counters {
    _Atomic(dp_counter_t *_Atomic *) table;
    const char *prefix; /* "cluster.<name>.upstream_rq_" */
    dp_stats_t *stats;
} dp_code_counters_t;

/* Sets up cc in arena for the counters named prefix<code>. */
dp_code_counters_t *dp_code_counters_new(dp_arena_t *arena, dp_stats_t *stats, const char *prefix);
/* The counter for code (100..599), or NULL for other codes. Any thread. */
dp_counter_t *dp_code_counter(dp_code_counters_t *cc, int code);

typedef struct dp_cluster {
    const char *name;
    dp_cluster_type_t type;
    dp_lb_policy_t lb_policy;
    uint64_t connect_timeout_ms;
    /* Hosts with an address (of a DNS cluster: the hosts given as IP literals, which the
     * upstream pools resolve like the others) */
    const dp_endpoint_t *endpoints;
    size_t n_endpoints;
    /* STRICT_DNS / LOGICAL_DNS: the hosts to resolve (hostname and port set), resolved by
     * each worker's pools every dns_refresh_ms (Envoy's default 5 s). respect_dns_ttl is kept
     * but the resolver (getaddrinfo) reports no TTL, so the refresh rate applies. */
    const dp_endpoint_t *dns_hosts;
    size_t n_dns_hosts;
    uint64_t dns_refresh_ms;
    bool respect_dns_ttl;
    dp_dns_family_t dns_family;
    /* ORIGINAL_DST: original_dst_lb_config.use_http_header; the host then comes from the
     * header named original_dst_header (x-envoy-original-dst-host unless http_header_name). */
    bool original_dst_use_header;
    const char *original_dst_header;
    /* upstream_bind_config.source_address (Istio binds inbound clusters to 127.0.0.6); the
     * port is 0 unless configured. */
    bool has_source_addr;
    dp_addr_t source_addr;
    /* HTTP protocol options. idle_timeout_ms 0 means none (Envoy's default is 1 h);
     * max_requests_per_connection and max_connection_duration_ms 0 mean unlimited;
     * h2_max_concurrent_streams 0 means the codec's default. */
    dp_cluster_proto_t proto;
    uint64_t idle_timeout_ms;
    uint32_t max_requests_per_connection;
    uint64_t max_connection_duration_ms;
    uint32_t h2_max_concurrent_streams;
    /* circuit_breakers.thresholds of the DEFAULT and HIGH priorities, and the counts shared by
     * every worker (dataplane/breaker.h; NULL in a cluster built by hand: the pools then keep
     * private ones with circuit_breakers' thresholds) */
    dp_circuit_breakers_t circuit_breakers;
    dp_circuit_breakers_t circuit_breakers_high;
    struct dp_breakers *breakers;
    /* outlier_detection (has_outlier_detection) and the process-wide detector fed by every
     * worker (dataplane/outlier.h); NULL without outlier_detection */
    bool has_outlier_detection;
    dp_outlier_config_t outlier_detection;
    struct dp_outlier *outlier;
    /* upstream_connection_options.tcp_keepalive: SO_KEEPALIVE on upstream sockets, with
     * TCP_KEEPCNT / TCP_KEEPIDLE / TCP_KEEPINTVL when non-zero (0: the system's value) */
    bool tcp_keepalive;
    uint32_t keepalive_probes, keepalive_time_s, keepalive_interval_s;
    /* Envoy's cluster.<name>.upstream_cx_* stats; live in the stats store, not the arena */
    dp_counter_t *cx_total, *cx_connect_fail;
    dp_gauge_t *cx_active;
    dp_cluster_stats_t stats;
    /* Active health checks (dataplane/health_check.h); NULL when the cluster has none. */
    const struct dp_cluster_health *health;
    /* Load balancing (dataplane/lb.h); 0 / false means Envoy's default. ring_hash_lb_config
     * minimum_ring_size / maximum_ring_size (1024 / 8M) and hash_function; maglev_lb_config
     * table_size (65537); least_request_lb_config choice_count (2) and active_request_bias
     * (1.0); common_lb_config healthy_panic_threshold (50%) and locality_weighted_lb_config;
     * the load assignment's policy overprovisioning_factor (140) and
     * weighted_priority_health. */
    uint64_t lb_ring_min, lb_ring_max;
    bool lb_ring_murmur;
    uint64_t lb_maglev_size;
    uint32_t lb_choice_count;
    bool lb_has_bias;
    double lb_active_request_bias;
    bool lb_has_panic_threshold;
    uint32_t lb_panic_threshold; /* percent, 0..100 */
    bool lb_locality_weighted;
    uint32_t lb_overprovisioning;
    bool lb_weighted_priority_health;
} dp_cluster_t;

/* A tcp_proxy target: one cluster of a weighted_clusters split (or the only one). */
typedef struct dp_weighted_cluster {
    const char *name;
    uint32_t weight;
} dp_weighted_cluster_t;

struct dp_filter_chain;    /* dataplane/filter_chain.h */
struct dp_listener_filter; /* dataplane/listener.h */

typedef struct dp_listener {
    const char *name;
    dp_addr_t addr;
    bool bind_to_port;     /* false: only reached by a use_original_dst hand-off */
    bool use_original_dst; /* hand connections to the listener of their original destination */
    bool transparent;
    /* filter_chains in configuration order, and default_filter_chain (NULL when none) */
    const struct dp_filter_chain *chains;
    size_t n_chains;
    const struct dp_filter_chain *default_chain;
    /* listener_filters in order (only the kinds skiff runs) */
    const struct dp_listener_filter *filters;
    size_t n_filters;
    uint64_t filters_timeout_ms;      /* listener_filters_timeout; 0: none (Envoy's default 15 s) */
    bool continue_on_filters_timeout; /* on the timeout: match with what was found, not close */
    bool inbound;            /* traffic_direction INBOUND (what /drain_listeners?inboundonly drains) */
    bool drained;            /* stop accepting: /drain_listeners has run its course */
    bool ignore_global_conn_limit; /* not counted against the global connection limit */
    /* Envoy's listener.<address>_<port>.downstream_cx_total / _active / no_filter_chain_match;
     * NULL without stats. downstream_cx_tls_unserved counts connections closed because their
     * chain terminates TLS, which skiff does not serve yet. */
    dp_counter_t *cx_total;
    dp_gauge_t *cx_active;
    dp_counter_t *no_filter_chain_match;
    dp_counter_t *cx_tls_unserved;
    /* downstream_global_cx_overflow: connections closed at accept because the process had no
     * descriptor for them (EMFILE, ENFILE) */
    dp_counter_t *cx_global_overflow;
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
    struct dp_route_config **routes; /* RDS route configs (dataplane/route.h), sorted once sealed */
    size_t n_routes, cap_routes;
    struct dp_snapshot_cleanup *cleanups; /* run when the snapshot is freed */
    /* The stats store the snapshot's stats live in (NULL when built without one): workers
     * create the per-status-code counters in it. */
    dp_stats_t *stats;
} dp_snapshot_t;

/* ---- building (one thread) ---- */

dp_snapshot_t *dp_snapshot_new(uint64_t generation); /* one reference; aborts on OOM */

/* Appends a cluster (its name and endpoints copied into the arena by the caller's use of
 * dp_arena_*); returns the slot to fill. Not after sealing. */
dp_cluster_t *dp_snapshot_add_cluster(dp_snapshot_t *s);
dp_listener_t *dp_snapshot_add_listener(dp_snapshot_t *s);

/* Adds an RDS route configuration built in s's arena (xds/route_build.c). Not after sealing. */
void dp_snapshot_add_route(dp_snapshot_t *s, struct dp_route_config *rc);

/* Registers fn(p) to run when the snapshot is freed (before its arena goes), for what the arena
 * cannot own, such as compiled regexes. Builder thread; the record lives in the arena. */
void dp_snapshot_add_cleanup(dp_snapshot_t *s, void (*fn)(void *p), void *p);

/* Sorts and freezes. Returns -EEXIST (and keeps it unsealed) when two clusters share a name. */
int dp_snapshot_seal(dp_snapshot_t *s);

/* ---- reading (any thread, on a sealed snapshot) ---- */

const dp_cluster_t *dp_snapshot_find_cluster(const dp_snapshot_t *s, const char *name);

/* The RDS route configuration of that name, or NULL. Also works while building (before
 * sealing, by a linear search), as connection managers are translated before the seal. */
const struct dp_route_config *dp_snapshot_find_route(const dp_snapshot_t *s, const char *name);

/* ---- lifetime (any thread) ---- */

dp_snapshot_t *dp_snapshot_ref(dp_snapshot_t *s); /* accepts NULL */

/* Drops one reference; frees the arena with the last one. Returns NULL. Accepts NULL. */
dp_snapshot_t *dp_snapshot_unref(dp_snapshot_t *s);

/* Test hook: the number of snapshots freed so far in this process. */
uint64_t dp_snapshot_freed_count(void);

#endif
