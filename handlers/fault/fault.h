/* envoy.filters.http.fault: Envoy's fault injection filter (HTTPFault). Delays a request by a
 * fixed or header-given time, and/or aborts it with an HTTP or gRPC status, for a fraction of
 * the requests that match the configured headers and downstream nodes.
 *
 * Config (fault_config.c, main thread): the HTTPFault typed_config at the listener level and
 * in typed_per_filter_config (Istio's VirtualService fault) become a dp_fault_conf_t in the
 * snapshot's arena. Runtime (fault.c, worker thread): a route-level config replaces the
 * listener-level one entirely; the stats are the listener-level config's.
 *
 * Trusted input: the config (it comes from the control plane). The request's
 * x-envoy-fault-* headers steer the filter only where the config says so (header_delay,
 * header_abort, and their percentages capped at the configured ones), as in Envoy; the
 * connection manager strips x-envoy-* headers from untrusted peers. A header value that is
 * not a plain decimal number in range is ignored.
 *
 * The decision logic is in fault_policy.c, pure functions over a head and a random number, so
 * that it is testable without a running stream. */
#ifndef SKIFF_HANDLERS_FAULT_FAULT_H
#define SKIFF_HANDLERS_FAULT_FAULT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/http.h"
#include "dataplane/route.h"
#include "dataplane/stats.h"
#include "dataplane/stream.h"

#define DP_FAULT_FILTER_NAME "envoy.filters.http.fault"
#define DP_FAULT_TYPE_URL    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"

/* Envoy's header controls (Filters::Common::Fault::HeaderNames). */
#define DP_FAULT_HDR_DELAY           "x-envoy-fault-delay-request"
#define DP_FAULT_HDR_DELAY_PERCENT   "x-envoy-fault-delay-request-percentage"
#define DP_FAULT_HDR_ABORT           "x-envoy-fault-abort-request"
#define DP_FAULT_HDR_ABORT_GRPC      "x-envoy-fault-abort-grpc-request"
#define DP_FAULT_HDR_ABORT_PERCENT   "x-envoy-fault-abort-request-percentage"
#define DP_FAULT_HDR_DOWNSTREAM_NODE "x-envoy-downstream-service-node"

/* A FractionalPercent: numerator over denominator (100, 10000 or 1000000). */
typedef struct dp_fault_percent {
    uint32_t numerator;
    uint32_t denominator;
} dp_fault_percent_t;

typedef enum dp_fault_abort_kind {
    DP_FAULT_ABORT_NONE,
    DP_FAULT_ABORT_HTTP,
    DP_FAULT_ABORT_GRPC,
    DP_FAULT_ABORT_HEADER, /* header_abort: the request's headers give the status */
} dp_fault_abort_kind_t;

/* Envoy's http.<stat_prefix>.fault.* stats; NULL pointers when the config has no stats
 * (route-level configs, or no stats store). */
typedef struct dp_fault_stats {
    dp_counter_t *delays_injected;
    dp_counter_t *aborts_injected;
    dp_counter_t *faults_overflow;
    dp_gauge_t *active_faults;
} dp_fault_stats_t;

/* First field of the config, so that another filter's config under this filter's name is
 * never misread. */
#define DP_FAULT_MAGIC 0x46415531u

typedef struct dp_fault_conf {
    uint32_t magic;          /* DP_FAULT_MAGIC */
    const char *filter_name; /* the http_filters name: the typed_per_filter_config key */
    bool per_route;

    bool has_delay;
    bool delay_from_header; /* header_delay: x-envoy-fault-delay-request, in ms */
    uint64_t delay_ms;      /* fixed_delay */
    dp_fault_percent_t delay_percent;

    dp_fault_abort_kind_t abort_kind;
    uint32_t abort_http_status; /* 200..599 */
    uint32_t abort_grpc_status;
    dp_fault_percent_t abort_percent;

    const dp_header_match_t *headers; /* all must match (dataplane/route.h) */
    size_t n_headers;
    const char *const *downstream_nodes; /* x-envoy-downstream-service-node must be one */
    size_t n_downstream_nodes;

    bool has_max_active_faults;
    uint64_t max_active_faults; /* unset: no limit */

    dp_fault_stats_t stats;
    /* The active faults when there is no active_faults gauge (listener-level configs only). */
    _Atomic uint64_t *active;
} dp_fault_conf_t;

/* ---- the decision functions (fault_policy.c; pure, any thread) ---- */

/* Envoy's ProtobufPercentHelper::evaluateFractionalPercent: random % denominator <
 * numerator. A zero denominator never hits. */
bool dp_fault_percent_hit(dp_fault_percent_t p, uint64_t random);

/* Envoy's HeaderPercentageProvider: the header's value (a decimal uint32) as the numerator,
 * capped at the configured one, over the configured denominator; the configured percentage
 * when the header is absent or not a number. */
dp_fault_percent_t dp_fault_percent_from_header(dp_fault_percent_t configured,
                                                const dp_headers_t *h, const char *name,
                                                size_t name_len);

/* Parses a decimal unsigned number (surrounding blanks allowed) no larger than max. Returns
 * false when it is not one. */
bool dp_fault_parse_uint(dp_str_t v, uint64_t max, uint64_t *ret);

/* Whether the request is one the config applies to: its downstream_nodes and headers
 * (repeated headers matched joined with ",", as Envoy does). pool is not used. */
bool dp_fault_request_matches(const dp_fault_conf_t *c, const dp_http_head_t *req, dp_pool_t *pool);

/* The delay to inject in ms, 0 for none: the delay's percentage (header-controlled for
 * header_delay) drawn with random, then fixed_delay or the x-envoy-fault-delay-request
 * header. */
uint64_t dp_fault_delay_ms(const dp_fault_conf_t *c, const dp_headers_t *h, uint64_t random);

/* Whether to abort, drawn with random (Envoy's abortStatus): true with the HTTP status in
 * *ret_http and, for a gRPC abort, the gRPC status in *ret_grpc (else -1). A gRPC abort has
 * HTTP status 200. header_abort: x-envoy-fault-abort-request (200..599) first, then
 * x-envoy-fault-abort-grpc-request; neither valid: no abort. */
bool dp_fault_abort_status(const dp_fault_conf_t *c, const dp_headers_t *h, uint64_t random,
                           int *ret_http, int *ret_grpc);

/* ---- the config half (fault_config.c, handlers_config library; main thread) ---- */

struct handlers_config_ctx;

/* handlers_config_new_fn for HTTPFault, at the listener level and per route: decodes the
 * HTTPFault bytes into a dp_fault_conf_t in ctx->arena. At the listener level with a stats
 * store and a stat prefix it creates http.<prefix>.fault.{delays_injected, aborts_injected,
 * faults_overflow, active_faults}. -EINVAL with a message naming the field for what the
 * filter cannot honour: a malformed message, a missing delay or abort type, an HTTP status
 * outside [200, 600), a negative or huge delay, a regex PCRE2 does not take, a custom string
 * matcher, upstream_cluster (the route's cluster is not known to the filter) and
 * response_rate_limit (not implemented). Runtime-key fields are ignored (skiff has no runtime
 * layer), as are filter_metadata and disable_downstream_cluster_stats. */
int dp_fault_config_new(const struct handlers_config_ctx *ctx, const uint8_t *buf, size_t len,
                        const void **ret_conf, char **reterr_msg);

/* ---- the filter (fault.c) ---- */

extern const dp_http_filter_type_t dp_fault_filter;

#endif
