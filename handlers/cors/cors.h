/* envoy.filters.http.cors: Envoy's CORS filter. The listener-level config
 * (envoy.extensions.filters.http.cors.v3.Cors) is empty; the policy is a route's
 * typed_per_filter_config (CorsPolicy, Istio's VirtualService corsPolicy).
 *
 *   preflight (OPTIONS with origin and access-control-request-method): from an allowed origin
 *     a 200 answered here with access-control-allow-origin/-methods/-headers/-max-age/
 *     -allow-credentials (and -allow-private-network when asked and allowed); from another
 *     origin forwarded upstream (forward_not_matching_preflights, the default) or answered 200
 *     without access-control-allow-origin;
 *   other requests from an allowed origin: access-control-allow-origin (the request's origin),
 *     -allow-credentials and -expose-headers added to the response.
 *
 * Trusted input: the config. The request's origin and access-control-request-* headers are
 * compared or echoed (allow_methods/allow_headers "*" echo the request's), never parsed.
 *
 * The decisions are pure functions (cors_policy.c), testable without a running stream. */
#ifndef SKIFF_HANDLERS_CORS_CORS_H
#define SKIFF_HANDLERS_CORS_CORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/http.h"
#include "dataplane/route.h"
#include "dataplane/stats.h"
#include "dataplane/stream.h"

#define DP_CORS_FILTER_NAME "envoy.filters.http.cors"
#define DP_CORS_TYPE_URL    "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
#define DP_CORS_POLICY_TYPE_URL \
    "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"

typedef struct dp_cors_percent {
    uint32_t numerator, denominator;
} dp_cors_percent_t;

/* First field of both configs, so that a config of the wrong kind under the filter's name
 * is never misread. */
#define DP_CORS_MAGIC_POLICY 0x43505931u
#define DP_CORS_MAGIC_CONF   0x43434631u

/* A CorsPolicy (route level). Empty strings (n == 0) are unset. */
typedef struct dp_cors_policy {
    uint32_t magic;                /* DP_CORS_MAGIC_POLICY */
    const dp_str_match_t *origins; /* allow_origin_string_match (dataplane/route.h) */
    size_t n_origins;
    dp_str_t allow_methods, allow_headers, expose_headers, max_age;
    bool allow_credentials;
    bool allow_private_network_access;
    bool forward_not_matching_preflights; /* default true */
    bool has_filter_enabled;              /* unset: enabled */
    dp_cors_percent_t filter_enabled;     /* its default_value */
    bool has_shadow_enabled;              /* unset: no shadow mode */
    dp_cors_percent_t shadow_enabled;
} dp_cors_policy_t;

/* The listener-level config: where the policy is found and what to count. */
typedef struct dp_cors_conf {
    uint32_t magic; /* DP_CORS_MAGIC_CONF */
    const char *filter_name;
    dp_counter_t *origin_valid, *origin_invalid; /* http.<prefix>.cors.*; NULL when none */
} dp_cors_conf_t;

/* ---- pure functions (cors_policy.c) ---- */

/* Envoy's isOriginAllowed: a matcher matches the literal "*" or the origin. */
bool dp_cors_origin_allowed(const dp_cors_policy_t *p, dp_str_t origin);

/* filter_enabled / shadow_enabled drawn with random (random % denominator < numerator). */
bool dp_cors_enabled(const dp_cors_policy_t *p, uint64_t random);
bool dp_cors_shadow_enabled(const dp_cors_policy_t *p, uint64_t random);

/* What the request phase decided. */
typedef enum dp_cors_verdict {
    DP_CORS_PASS,      /* not a CORS request for this policy (or shadow only): do nothing */
    DP_CORS_SIMPLE,    /* forward; decorate the response (when the origin was allowed) */
    DP_CORS_PREFLIGHT, /* answer with dp_cors_preflight_head() */
} dp_cors_verdict_t;

typedef struct dp_cors_state {
    dp_cors_verdict_t verdict;
    bool has_origin;     /* a non-empty origin header: the stats count this request */
    bool origin_allowed; /* then: whether it was allowed */
    dp_str_t origin;     /* the allowed origin, for the response (NULL when not allowed) */
} dp_cors_state_t;

/* Envoy's decodeHeaders for one request head; p NULL (no policy for the route): PASS.
 * r_enabled and r_shadow are the random draws for filter_enabled and shadow_enabled. */
dp_cors_state_t dp_cors_decide(const dp_cors_policy_t *p, const dp_http_head_t *req,
                               uint64_t r_enabled, uint64_t r_shadow);

/* The preflight response: a head in pool with status 200, the CORS headers and
 * content-length: 0. */
dp_http_head_t *dp_cors_preflight_head(const dp_cors_policy_t *p, const dp_cors_state_t *st,
                                       const dp_http_head_t *req, dp_pool_t *pool);

/* Adds the simple request's headers to a response head (when the origin was allowed). */
void dp_cors_decorate_response(const dp_cors_policy_t *p, const dp_cors_state_t *st,
                               dp_http_head_t *resp, dp_pool_t *pool);

/* ---- the config half (cors_config.c, handlers_config library; main thread) ---- */

struct handlers_config_ctx;

/* Cors (listener level): any bytes that decode; creates http.<prefix>.cors.origin_valid and
 * .origin_invalid when there are a stats store and a stat prefix. */
int dp_cors_config_new(const struct handlers_config_ctx *ctx, const uint8_t *buf, size_t len,
                       const void **ret_conf, char **reterr_msg);

/* CorsPolicy (route level) into a dp_cors_policy_t. -EINVAL naming the field for a malformed
 * message, a string matcher without a pattern or a custom one, a regex PCRE2 refuses. */
int dp_cors_policy_config_new(const struct handlers_config_ctx *ctx, const uint8_t *buf, size_t len,
                              const void **ret_conf, char **reterr_msg);

/* ---- the filter (cors.c) ---- */

extern const dp_http_filter_type_t dp_cors_filter;

#endif
