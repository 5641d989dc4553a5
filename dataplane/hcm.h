/* The HTTP connection manager (envoy.filters.network.http_connection_manager): its
 * configuration as the snapshot holds it, and the runtime that turns an accepted connection
 * into request streams run through the HTTP filter chain, the router last.
 *
 * Config: built by xds/hcm_build.c on the main thread into the snapshot's arena; workers only
 * read it. Runtime: dataplane/hcm.c, worker thread. */
#ifndef SKIFF_DATAPLANE_HCM_H
#define SKIFF_DATAPLANE_HCM_H

#include <stdbool.h>
#include <stdint.h>

#include "dataplane/http.h"
#include "dataplane/stats.h"

struct dp_route_config;     /* dataplane/route.h */
struct dp_http_filter_type; /* dataplane/filter.h */
struct dp_accepted;         /* dataplane/conn.h */
struct dp_wctx;             /* dataplane/conn.h */
struct dp_access_log;       /* dataplane/access_log.h */

typedef enum dp_codec_type {
    DP_CODEC_AUTO, /* HTTP/2 when the connection starts with the preface, else HTTP/1.1 */
    DP_CODEC_HTTP1,
    DP_CODEC_HTTP2,
} dp_codec_type_t;

typedef enum dp_escaped_slashes {
    DP_SLASHES_KEEP,
    DP_SLASHES_REJECT,   /* 400 */
    DP_SLASHES_REDIRECT, /* 307 to the unescaped path (400 for gRPC) */
    DP_SLASHES_FORWARD,  /* unescaped, then normalised */
} dp_escaped_slashes_t;

typedef enum dp_underscores {
    DP_UNDERSCORES_ALLOW,
    DP_UNDERSCORES_REJECT, /* HTTP/1: 400 and close; HTTP/2: the stream reset */
    DP_UNDERSCORES_DROP,
} dp_underscores_t;

/* One entry of http_filters, in the listener's order (the router last). */
typedef struct dp_http_filter {
    const char *name;                       /* "envoy.filters.http.fault" */
    const struct dp_http_filter_type *type; /* NULL: accepted, passes every request through */
    const void *conf;                       /* type's config_new() result; NULL when none */
    bool disabled;                          /* HttpFilter.disabled: only routes enable it */
} dp_http_filter_t;

/* Envoy's http.<stat_prefix>.* connection-manager stats (created on the main thread). */
typedef struct dp_hcm_stats {
    dp_counter_t *cx_total, *cx_http1_total, *cx_http2_total, *cx_protocol_error;
    dp_gauge_t *cx_active, *rq_active;
    dp_counter_t *rq_total, *rq_http1_total, *rq_http2_total;
    dp_counter_t *rq_xx[5]; /* downstream_rq_1xx .. downstream_rq_5xx */
    dp_counter_t *rq_completed, *rq_timeout, *rq_idle_timeout, *rq_header_timeout;
    dp_counter_t *rq_rx_reset, *rq_tx_reset;
    dp_counter_t *no_route, *no_cluster; /* http.<prefix>.no_route, .no_cluster */
    dp_counter_t *rq_too_large, *rq_header_overflow;
    dp_counter_t *rq_failed_path_normalization, *rq_redirected_with_normalized_path;
    /* Envoy's codec stats http1.* and http2.* (no prefix): [0] HTTP/1, [1] HTTP/2 */
    dp_counter_t *underscores_dropped[2], *underscores_rejected[2];
} dp_hcm_stats_t;

typedef struct dp_hcm_config {
    const char *stat_prefix;
    dp_codec_type_t codec_type;
    /* The route table: RDS (rds_name set; routes NULL until it arrives: every request then
     * gets 404 NR) or the inline route_config. Resolved when the snapshot is built. */
    const char *rds_name;
    const struct dp_route_config *routes;
    const dp_http_filter_t *filters;
    size_t n_filters;
    /* Timeouts in ms, 0 meaning none: stream_idle_timeout (Envoy's default 5 min; Istio sends
     * 0), request_timeout, common_http_protocol_options.idle_timeout (connection idle, 1 h by
     * default), max_stream_duration, request_headers_timeout (from the first byte of a request
     * head to its last; 60 s when unset, where Envoy has none: with Istio's
     * stream_idle_timeout of 0 nothing else would end a head sent a byte at a time). */
    uint64_t stream_idle_timeout_ms, request_timeout_ms, idle_timeout_ms, max_stream_duration_ms;
    uint64_t request_headers_timeout_ms;
    /* Derived from the four stream timeouts above when built: the shortest (0: none), and how
     * often open streams are swept for them (a quarter of it). */
    uint64_t stream_timeout_min_ms, sweep_ms;
    bool use_remote_address;
    uint32_t xff_num_trusted_hops;
    const char *server_name; /* the server header on responses ("envoy" by default) */
    /* Path normalisation before routing (dataplane/path.h): normalize_path, merge_slashes,
     * path_with_escaped_slashes_action (KEEP_UNCHANGED, also for the unspecified default). */
    bool normalize_path, merge_slashes;
    dp_escaped_slashes_t escaped_slashes;
    unsigned path_flags; /* the three as dp_path_normalize()'s DP_PATH_* flags */
    /* common_http_protocol_options.headers_with_underscores_action */
    dp_underscores_t underscores;
    bool generate_request_id;          /* default true */
    /* forward_client_cert_details is ALWAYS_FORWARD_ONLY: a client's x-forwarded-client-cert
     * goes on; under every other value it is removed, as Envoy removes it from a connection
     * that is not mTLS (skiff terminates no TLS yet, so none is) */
    bool xfcc_always_forward;
    bool preserve_external_request_id; /* keep an x-request-id from an untrusted peer */
    bool websocket;                    /* upgrade_configs has websocket */
    bool inbound;                      /* the listener's traffic_direction is INBOUND */
    dp_http_limits_t limits; /* max_request_headers_kb, max_headers_count, HTTP/2 options */
    dp_hcm_stats_t stats;
    /* access_log: a line each when a stream ends (envoy.access_loggers.file). */
    const struct dp_access_log *access_logs;
    size_t n_access_logs;
} dp_hcm_config_t;

/* Takes over an accepted connection whose filter chain ends in this connection manager
 * (a->chain->hcm): picks the codec (AUTO: sniffs for the HTTP/2 preface), then serves request
 * streams until the connection closes. Takes ownership of a->fd and a->snap. Worker thread. */
void dp_hcm_start(struct dp_wctx *w, struct dp_accepted *a);

#endif
