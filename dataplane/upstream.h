/* Upstream connection pools of one worker: host choice within a cluster, and per host a pool
 * of HTTP/1.1 connections (one stream each, reused with keep-alive) and of HTTP/2 connections
 * (multiplexed up to the peer's concurrent-stream limit), plus the resolution of STRICT_DNS
 * and LOGICAL_DNS clusters and ORIGINAL_DST's hosts.
 *
 * Connections are made here (non-blocking connect with the cluster's connect_timeout, bound to
 * its upstream source address when it has one) and handed to the codec (dp_h1_conn_new /
 * dp_h2_conn_new from dataplane/http.h) once connected. Worker thread only. */
#ifndef SKIFF_DATAPLANE_UPSTREAM_H
#define SKIFF_DATAPLANE_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "dataplane/http.h"
#include "dataplane/snapshot.h"

typedef struct dp_upstreams dp_upstreams_t;
typedef struct dp_upstream_wait dp_upstream_wait_t;

/* The codec constructors the pools use (dp_h1_conn_new and dp_h2_conn_new in the data plane;
 * tests may pass their own). */
typedef dp_codec_conn_t *(*dp_codec_new_fn)(uv_loop_t *loop, int fd, bool server,
                                            const dp_http_limits_t *limits, const dp_codec_cb_t *cb,
                                            void *ud);

dp_upstreams_t *dp_upstreams_new(uv_loop_t *loop, dp_codec_new_fn h1_new, dp_codec_new_fn h2_new);

/* A new snapshot is current: pools of hosts and clusters it no longer has are drained (their
 * connections finish their streams, then close); DNS clusters it adds start resolving. */
void dp_upstreams_apply(dp_upstreams_t *u, const dp_snapshot_t *snap);

/* Closes every connection and pending request; frees u once the last handle has closed. */
void dp_upstreams_close(dp_upstreams_t *u);

/* The protocol a request goes upstream with. */
typedef enum dp_upstream_proto {
    DP_UPSTREAM_HTTP1,
    DP_UPSTREAM_HTTP2,
} dp_upstream_proto_t;

/* The protocol for a request to cluster c that arrived downstream as `downstream`: the
 * cluster's explicit_http_config, or with use_downstream_protocol_config the downstream one,
 * else HTTP/1.1 (Envoy's default). */
dp_upstream_proto_t dp_upstream_proto_for(const dp_cluster_t *c, dp_http_version_t downstream);

/* What a pool request reports back. Exactly one of the two is called, unless cancelled. */
typedef struct dp_upstream_cb {
    /* A connection to host can take a stream now: call conn->ops->new_stream() before
     * returning (the slot is yours only during this call). host lives in the snapshot the
     * caller pinned, or (ORIGINAL_DST, DNS) as long as the pool has it. */
    void (*on_ready)(void *ud, dp_codec_conn_t *conn, const dp_addr_t *host);
    /* No stream can be had: DP_RESET_CONNECT_FAIL, DP_RESET_CONNECT_TIMEOUT,
     * DP_RESET_NO_HEALTHY_HOST when the cluster has no host to send to (no endpoint, none
     * healthy, DNS not resolved, no original destination: Envoy's 503 UH), or
     * DP_RESET_OVERFLOW when a circuit breaker refused it (max_pending_requests,
     * max_connections: 503 UO with x-envoy-overloaded). host is the one tried, or NULL. */
    void (*on_failure)(void *ud, dp_reset_reason_t why, const dp_addr_t *host);
} dp_upstream_cb_t;

/* Per-request inputs to host choice. */
typedef struct dp_lb_ctx {
    const struct sockaddr *original_dst; /* ORIGINAL_DST clusters: the downstream's original
                                          * destination (or x-envoy-original-dst-host) */
    uint64_t hash; /* for hash-based policies; has_hash false when the route gave none */
    bool has_hash;
    /* Retries with retry_host_predicate previous_hosts: hosts to avoid (tried again only when
     * host_selection_retry_max_attempts picks found nothing else). */
    const dp_addr_t *const *exclude;
    size_t n_exclude;
    uint32_t host_selection_max_attempts; /* 0: Envoy's default, 1 */
} dp_lb_ctx_t;

/* Asks for a stream to a host of cluster c (in a snapshot the caller has pinned). May call
 * cb->on_ready or cb->on_failure before returning (then returns NULL); otherwise returns a
 * handle that stays valid until one of them is called or dp_upstream_cancel(). */
dp_upstream_wait_t *dp_upstream_request(dp_upstreams_t *u, const dp_cluster_t *c,
                                        dp_upstream_proto_t proto, const dp_lb_ctx_t *lb,
                                        const dp_upstream_cb_t *cb, void *ud);

/* Withdraws a pending request; its callbacks will not be called. */
void dp_upstream_cancel(dp_upstream_wait_t *w);

/* ---- what the router tells the pools (outlier detection, circuit breakers) ---- */

/* The outcome of one request on host: status is the upstream response's status, or 0 for a
 * local-origin failure (connect failure or timeout, reset before a response: why says which).
 * Feeds outlier detection. */
void dp_upstream_host_result(dp_upstreams_t *u, const dp_cluster_t *c, const dp_addr_t *host,
                             int status, dp_reset_reason_t why);

/* The cluster's max_requests and max_retries circuit breakers, counted across all workers:
 * admit returns false (and counts the overflow) when the breaker is open; every admitted one
 * is released once. */
bool dp_upstream_rq_admit(dp_upstreams_t *u, const dp_cluster_t *c);
void dp_upstream_rq_release(dp_upstreams_t *u, const dp_cluster_t *c);
bool dp_upstream_retry_admit(dp_upstreams_t *u, const dp_cluster_t *c);
void dp_upstream_retry_release(dp_upstreams_t *u, const dp_cluster_t *c);

#endif
