/* Active health checks (cluster.health_checks, config.core.v3.HealthCheck) and the process-wide
 * table of host health they publish.
 *
 *   Config  xds/ translates a cluster's first HTTP or TCP health check into dp_health_check_t
 *           and calls dp_health_cluster_new() while building a snapshot (main thread). That
 *           joins each endpoint of the cluster to its entry in the process-wide host table
 *           (key: cluster name + address), made on first sight and kept while any snapshot or
 *           checker refers to it: a rebuilt snapshot naming the same cluster and host finds the
 *           state the checks left. The snapshot's arena drops its references when it is freed.
 *   Checks  ONE checker for the whole process (Envoy runs them on its main thread; here on
 *           worker 0's loop: dp_health_checks_apply() on every snapshot it swaps in). It keeps
 *           a timer per (cluster, host) entry and runs one check at a time per host: a TCP
 *           connect, then for HTTP a GET of path over HTTP/1.1 (Connection: close) whose status
 *           must be in expected_statuses, for TCP the send payload written and the receive
 *           payloads expected in order; all within timeout.
 *   State   A host starts unhealthy (Envoy: hosts of a cluster with active health checks are
 *           failed until a check passes) and the first check decides. Later, a healthy host
 *           turns unhealthy after unhealthy_threshold consecutive network failures (refused,
 *           reset, timeout, a TCP payload not echoed), at once on an HTTP status outside
 *           expected_statuses (Envoy's "immediate" failure); an unhealthy host turns healthy
 *           after healthy_threshold consecutive successes. The state is one atomic per entry,
 *           written by the checker, read by every worker's host choice (dp_health_host_ok).
 *   Stats   cluster.<name>.health_check.attempt, success, failure (every failed check),
 *           network_failure (those not answered with a status), healthy (gauge: healthy hosts).
 *
 *   Pace    The next check of a host comes after interval (unhealthy_interval for an unhealthy
 *           host, the edge intervals right after a change), or no_traffic_interval while the
 *           cluster has never had an upstream connection, plus interval_jitter_percent of it
 *           and a random 0..interval_jitter, as Envoy computes it.
 *
 * Not done: gRPC and custom checkers, reuse_connection (each check connects anew), TLS to the host,
 * health checks of hosts a DNS cluster resolves by name (they count as healthy), alt_port. */
#ifndef SKIFF_DATAPLANE_HEALTH_CHECK_H
#define SKIFF_DATAPLANE_HEALTH_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "dataplane/snapshot.h"
#include "dataplane/stats.h"

typedef enum dp_hc_kind {
    DP_HC_HTTP,
    DP_HC_TCP,
} dp_hc_kind_t;

/* A status range [start, end) (envoy.type.v3.Int64Range). */
typedef struct dp_hc_range {
    int64_t start, end;
} dp_hc_range_t;

typedef struct dp_hc_header {
    const char *name, *value;
} dp_hc_header_t;

/* Limits on what a configuration may ask of a check. */
#define DP_HC_MAX_PAYLOAD 4096 /* bytes of a TCP send or of all receive payloads together */
#define DP_HC_MAX_REQUEST 8192 /* bytes of an HTTP check's request head */

typedef struct dp_health_check {
    dp_hc_kind_t kind;
    uint64_t timeout_ms;                 /* > 0 */
    uint64_t interval_ms;                /* > 0 */
    uint64_t unhealthy_interval_ms;      /* 0: interval_ms */
    uint64_t unhealthy_edge_interval_ms; /* after turning unhealthy; 0: unhealthy_interval */
    uint64_t healthy_edge_interval_ms;   /* after turning healthy; 0: interval_ms */
    /* While the cluster has had no traffic (its upstream_cx_total is 0): 0 means the intervals
     * above apply (xds/ sets Envoy's default, 60 s); no_traffic_healthy_interval_ms for a
     * healthy host (0: no_traffic_interval_ms). */
    uint64_t no_traffic_interval_ms;
    uint64_t no_traffic_healthy_interval_ms;
    uint64_t interval_jitter_ms; /* a random 0..jitter added to every interval */
    uint32_t interval_jitter_percent;
    uint64_t initial_jitter_ms;   /* a random 0..initial_jitter before the first check */
    uint32_t unhealthy_threshold; /* >= 1 */
    uint32_t healthy_threshold;   /* >= 1 */
    /* HTTP: path, the Host header (the cluster's name when empty), expected statuses
     * (none: [200, 300)) and request_headers_to_add. */
    const char *path;
    const char *host;
    const dp_hc_range_t *expected;
    size_t n_expected;
    const dp_hc_header_t *headers;
    size_t n_headers;
    /* TCP: bytes to send (none: connect only) and the bytes expected back, the receive payloads
     * concatenated (each at most DP_HC_MAX_PAYLOAD together). */
    const uint8_t *send;
    size_t send_len;
    const uint8_t *receive;
    size_t receive_len;
} dp_health_check_t;

typedef struct dp_health_stats {
    dp_counter_t *attempt, *success, *failure, *network_failure;
    dp_gauge_t *healthy;
} dp_health_stats_t;

typedef struct dp_hc_host dp_hc_host_t; /* an entry of the process-wide table */

/* What dp_cluster_t.health points to: the check and one table entry per endpoint. */
typedef struct dp_cluster_health {
    const char *cluster;
    const dp_health_check_t *check;
    const dp_endpoint_t *endpoints; /* the cluster's endpoints, hosts[i] is endpoints[i]'s */
    size_t n_hosts;
    dp_hc_host_t **hosts;
    dp_health_stats_t stats;      /* all NULL without a stats store */
    const dp_counter_t *cx_total; /* cluster.<name>.upstream_cx_total: traffic seen; NULL: yes */
} dp_cluster_health_t;

/* Builds the health state of a cluster in s's arena: copies hc (its strings and arrays too),
 * joins every endpoint to its table entry (new ones unhealthy) and creates the stats in st
 * (NULL: none) under "cluster.<stat_name>.health_check.". Returns NULL when hc is invalid
 * (timeout or interval 0, a threshold 0, a payload over the limits). Main thread, while s is
 * being built. */
dp_cluster_health_t *dp_health_cluster_new(dp_snapshot_t *s, dp_stats_t *st, const char *cluster,
                                           const char *stat_name, const dp_health_check_t *hc,
                                           const dp_endpoint_t *eps, size_t n_eps);

/* Whether host (an address of one of c's endpoints) may take traffic as far as active health
 * checks go: true when c has none, when host is not one of c->endpoints' addresses, or when
 * its entry is healthy. Lock-free, any thread. */
bool dp_health_host_ok(const dp_cluster_t *c, const dp_addr_t *host);

/* ---- the checker ---- */

typedef struct dp_health_checker dp_health_checker_t;

/* A checker on loop (the loop's thread calls everything below). */
dp_health_checker_t *dp_health_checker_new(uv_loop_t *loop);

/* Checks the hosts of snap's clusters from now on: hosts it checked already keep their timers
 * and state, new ones get a first check (after initial_jitter), those no longer named stop.
 * snap is referenced until the next apply; NULL stops every check. */
void dp_health_checker_apply(dp_health_checker_t *hc, dp_snapshot_t *snap);

/* Stops every check and frees the checker once its handles are closed (run the loop). */
void dp_health_checker_close(dp_health_checker_t *hc);

/* The number of checks finished so far (tests). */
uint64_t dp_health_checker_rounds(const dp_health_checker_t *hc);

/* The process's checker (worker 0): made on the first call with a snapshot, closed by a call
 * with NULL. Worker 0's thread. */
void dp_health_checks_apply(uv_loop_t *loop, dp_snapshot_t *snap);

/* ---- the table (tests, /clusters) ---- */

/* The state of (cluster, addr) in the table: 1 healthy, 0 unhealthy, -1 no entry. */
int dp_health_table_state(const char *cluster, const dp_addr_t *addr);
size_t dp_health_table_size(void);

#endif
