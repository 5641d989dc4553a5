/* envoy.filters.http.local_ratelimit: Envoy's HTTP local rate limit
 * (envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit).
 *
 * Each request the filter is enabled for (filter_enabled, a fraction; absent means 0%, so a
 * config without it does nothing, as in Envoy) takes a token from its token bucket, shared by
 * every worker (dataplane/tokenbucket.h) or, with local_rate_limit_per_downstream_connection,
 * one per downstream connection. Without a token the request is rate limited: when
 * filter_enforced also selects it, the filter answers status (429 by default) with the body
 * "local_rate_limited", response flag RL, x-envoy-ratelimited: true and response_headers_to_add;
 * otherwise the request goes on with request_headers_to_add_when_not_enforced added.
 * enable_x_ratelimit_headers DRAFT_VERSION_03 adds x-ratelimit-limit, x-ratelimit-remaining and
 * x-ratelimit-reset to every response of a request the filter checked.
 *
 * Config: the listener's http_filters entry, or a route's typed_per_filter_config entry (route,
 * then virtual host, then route configuration), which replaces the listener's for requests on
 * that route. Stats: <stat_prefix>.http_local_rate_limit.{enabled,enforced,rate_limited,ok}.
 *
 * Descriptors: descriptors (LocalRateLimitDescriptor, each with its own bucket) are matched
 * against the request's descriptors, which the filter builds from the LocalRateLimit's own
 * rate_limits (field 17, Envoy 1.33's override of the route's rate_limits) with the actions
 * request_headers, generic_key and remote_address. The route's and virtual host's rate_limits
 * are not read (the route table does not carry them). Matched descriptors are taken most
 * restrictive first (lowest fill rate); with always_consume_default_token_bucket (default
 * true) the default bucket is also taken.
 *
 * Buckets survive snapshot rebuilds: each config names its buckets by stat_prefix, filter name,
 * level (listener, with the connection manager's stat_prefix, or route) and descriptor
 * entries, plus the bucket parameters; an unchanged config keeps its buckets and their tokens.
 * Two route-level configs with the same stat_prefix and parameters share their buckets (the
 * config half is not told which route it belongs to).
 *
 * Trusts: the request head as the connection manager left it. Header values from the request
 * become descriptor values only for comparison (never copied into responses). Worker thread
 * (runtime), main thread (config). */
#ifndef SKIFF_HANDLERS_LOCAL_RATELIMIT_H
#define SKIFF_HANDLERS_LOCAL_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/stats.h"
#include "dataplane/stream.h"
#include "dataplane/tokenbucket.h"

#define DP_LRL_NAME "envoy.filters.http.local_ratelimit"
#define DP_LRL_TYPE_URL \
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"

/* Limits on a config (NACKed beyond them). */
#define DP_LRL_MAX_DESCRIPTORS      64 /* descriptors */
#define DP_LRL_MAX_ENTRIES          16 /* entries of a descriptor, actions of a rate limit */
#define DP_LRL_MAX_RATE_LIMITS      16 /* rate_limits */
#define DP_LRL_MAX_HEADERS          32 /* response_headers_to_add, request_headers_to_add... */
#define DP_LRL_MAX_CONN_DESCRIPTORS 4  /* descriptors with per-connection buckets */

/* HeaderValueOption.append_action (with the deprecated append mapped onto it). */
typedef enum dp_lrl_append {
    DP_LRL_APPEND_IF_EXISTS_OR_ADD = 0,
    DP_LRL_ADD_IF_ABSENT = 1,
    DP_LRL_OVERWRITE_IF_EXISTS_OR_ADD = 2,
    DP_LRL_OVERWRITE_IF_EXISTS = 3,
} dp_lrl_append_t;

typedef struct dp_lrl_header {
    dp_str_t name; /* lower case */
    dp_str_t value;
    dp_lrl_append_t action;
    bool keep_empty_value;
} dp_lrl_header_t;

/* One key/value of a descriptor. */
typedef struct dp_lrl_entry {
    dp_str_t key, value;
} dp_lrl_entry_t;

typedef struct dp_lrl_descriptor {
    const dp_lrl_entry_t *entries;
    size_t n_entries;
    dp_tokenbucket_params_t params;
    dp_tokenbucket_t *bucket; /* registry bucket (the per-connection table's key otherwise) */
} dp_lrl_descriptor_t;

typedef enum dp_lrl_action_kind {
    DP_LRL_ACTION_REQUEST_HEADERS,
    DP_LRL_ACTION_GENERIC_KEY,
    DP_LRL_ACTION_REMOTE_ADDRESS,
} dp_lrl_action_kind_t;

/* A RateLimit.Action. */
typedef struct dp_lrl_action {
    dp_lrl_action_kind_t kind;
    dp_str_t key;         /* descriptor_key ("generic_key", "remote_address" by default) */
    dp_str_t header_name; /* request_headers: lower case */
    dp_str_t value;       /* generic_key: descriptor_value */
    bool skip_if_absent;  /* request_headers */
} dp_lrl_action_t;

/* A RateLimit: its actions make one request descriptor (or none, when one fails). */
typedef struct dp_lrl_rate_limit {
    const dp_lrl_action_t *actions;
    size_t n_actions;
} dp_lrl_rate_limit_t;

/* The filter's config, in the snapshot's arena; const once built. */
typedef struct dp_lrl_conf {
    const char *filter_name; /* the name dp_stream_route_config() looks the route's config by */
    bool per_route;
    uint32_t enabled_ppm, enforced_ppm; /* parts per million: filter_enabled, filter_enforced */
    int status;                         /* 429 unless status.code >= 400 */
    bool has_bucket;                    /* token_bucket was given */
    dp_tokenbucket_params_t params;
    dp_tokenbucket_t *bucket; /* registry bucket (the per-connection table's key) */
    bool per_connection;
    bool always_consume_default;
    bool x_ratelimit_headers;
    bool resource_exhausted; /* rate_limited_as_resource_exhausted: gRPC status 8, not 14 */
    const dp_lrl_header_t *response_headers;
    size_t n_response_headers;
    const dp_lrl_header_t *request_headers; /* request_headers_to_add_when_not_enforced */
    size_t n_request_headers;
    const dp_lrl_descriptor_t *descriptors;
    size_t n_descriptors;
    const dp_lrl_rate_limit_t *rate_limits;
    size_t n_rate_limits;
    dp_counter_t *st_enabled, *st_enforced, *st_rate_limited, *st_ok; /* NULL without stats */
} dp_lrl_conf_t;

/* The runtime half (local_ratelimit.c). Its conf is a dp_lrl_conf_t. */
extern const dp_http_filter_type_t dp_local_ratelimit_filter;

/* The config half (local_ratelimit_config.c), a handlers_config_new_fn (handlers/config.h):
 * decodes the LocalRateLimit in buf into a dp_lrl_conf_t in ctx->arena, acquires its buckets
 * from the registry (released when the arena is freed) and creates its stats in ctx->stats.
 * Returns 0, or -EINVAL with a malloc'd message naming the field. */
struct handlers_config_ctx;
int dp_local_ratelimit_config_new(const struct handlers_config_ctx *ctx, const uint8_t *buf,
                                  size_t len, const void **ret_conf, char **reterr_msg);

#endif
