/* Route tables (RouteConfiguration from RDS, or an HTTP connection manager's inline
 * route_config) as the snapshot holds them, and the pure functions the router calls on them:
 * virtual host and route selection, the cluster of a route, the request and response rewrites
 * and header mutations, redirects, and per-filter route config lookup.
 *
 * Build: xds/route_build.c fills these structs in the snapshot's arena on the main thread
 * (compiled regexes are freed with the snapshot through dp_snapshot_add_cleanup). Workers only
 * read them. Every function below is pure (no I/O, no global state, no locks) and may run on any
 * thread while the snapshot holding the config is pinned.
 *
 * Semantics follow Envoy's source/common/router/config_impl.cc and the field documentation of
 * envoy.config.route.v3; the header of each function says where it differs. */
#ifndef SKIFF_DATAPLANE_ROUTE_H
#define SKIFF_DATAPLANE_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/http.h"

/* ---- regular expressions (PCRE2 standing in for RE2) ---- */

/* A compiled pattern. Envoy's safe_regex is RE2; the common syntax (classes, groups,
 * alternation, repetition, anchors) means the same under PCRE2. Backreferences and lookaround,
 * which RE2 refuses, are accepted here. */
typedef struct dp_regex dp_regex_t;

/* Compiles pattern (UTF-8, n bytes). Returns NULL with a malloc'd message (the PCRE2 error and
 * its offset) in *reterr_msg when it does not compile. Main thread. */
dp_regex_t *dp_regex_new(const char *pattern, size_t n, char **reterr_msg);
void dp_regex_free(dp_regex_t *re); /* accepts NULL */
/* Whether the whole of s matches (RE2::FullMatch, as Envoy's safe_regex matchers use). */
bool dp_regex_full_match(const dp_regex_t *re, const char *s, size_t n);
/* Every non-overlapping match of re in s replaced by sub (RE2::GlobalReplace; sub is in PCRE2
 * syntax, $1 for a group: dp_regex_sub_from_re2() converts Envoy's \1 form). The result is in
 * pool; s itself (not a copy) when nothing matched. */
dp_str_t dp_regex_replace(const dp_regex_t *re, dp_str_t s, const char *sub, dp_pool_t *pool);
/* Converts an RE2 substitution ("\1-\\") into PCRE2's ("$1-\\" with '$' escaped as "$$").
 * Returns a malloc'd string. */
char *dp_regex_sub_from_re2(const char *sub);

/* ---- matchers ---- */

typedef enum dp_str_match_kind {
    DP_SM_EXACT,
    DP_SM_PREFIX,
    DP_SM_SUFFIX,
    DP_SM_CONTAINS,
    DP_SM_REGEX,
} dp_str_match_kind_t;

/* envoy.type.matcher.v3.StringMatcher. ignore_case does not apply to DP_SM_REGEX (as in Envoy). */
typedef struct dp_str_match {
    dp_str_match_kind_t kind;
    bool ignore_case;
    dp_str_t s;     /* the literal of EXACT/PREFIX/SUFFIX/CONTAINS */
    dp_regex_t *re; /* DP_SM_REGEX */
} dp_str_match_t;

bool dp_str_match(const dp_str_match_t *m, dp_str_t v);

typedef enum dp_header_match_kind {
    DP_HM_STRING,  /* string_match, or the deprecated exact/prefix/suffix/contains/safe_regex */
    DP_HM_PRESENT, /* present_match */
    DP_HM_RANGE,   /* range_match: [start, end) on the value as a decimal int64 */
} dp_header_match_kind_t;

/* envoy.config.route.v3.HeaderMatcher. The value matched is every value of the header joined
 * with "," (Envoy's getAllOfHeaderAsString); the pseudo-headers :method, :authority, :scheme,
 * :path and :protocol are the head's fields. A missing header fails the match (whatever
 * invert_match says) unless treat_missing_header_as_empty, in which case "" is matched.
 * present_match: passes when (the header is present, or treated as empty) == present, inverted
 * by invert_match. A matcher with no specifier is present_match: true. The deprecated
 * exact_match "" matches any value (Envoy's quirk). Range values parse as absl::SimpleAtoi
 * does (surrounding whitespace allowed). */
typedef struct dp_header_match {
    dp_str_t name; /* lower case */
    dp_header_match_kind_t kind;
    dp_str_match_t sm;
    bool present;
    int64_t range_start, range_end;
    bool invert, treat_missing_as_empty;
} dp_header_match_t;

/* Whether the request passes one header matcher. */
bool dp_header_match(const dp_header_match_t *m, const dp_http_head_t *req);

/* envoy.config.route.v3.QueryParameterMatcher: string_match on the (undecoded) value of the
 * first parameter of that name; or present_match (present_only: passes when the parameter's
 * presence equals present, so present_match false matches its absence, as current Envoy);
 * with neither, the parameter must be present (present_only, present true). */
typedef struct dp_query_match {
    dp_str_t name;
    bool present_only, present;
    dp_str_match_t sm;
} dp_query_match_t;

typedef enum dp_path_match_kind {
    DP_PM_PREFIX,
    DP_PM_PATH,
    DP_PM_REGEX,
    DP_PM_SEPARATED_PREFIX, /* path_separated_prefix: equal, or followed by '/' */
    DP_PM_CONNECT,          /* connect_matcher: CONNECT requests */
    DP_PM_NEVER,            /* path_match_policy extensions (not supported): never matches */
} dp_path_match_kind_t;

/* envoy.config.route.v3.RouteMatch. The path matched is :path without its query and fragment.
 * runtime_fraction is ignored; tls_context and dynamic_metadata matchers (which need the
 * connection and filter state) make the route never match. */
typedef struct dp_route_match {
    dp_path_match_kind_t kind;
    dp_str_t path;       /* prefix / path / separated prefix */
    dp_regex_t *re;      /* DP_PM_REGEX */
    bool case_sensitive; /* default true; not for regexes */
    bool grpc;           /* content-type application/grpc[+...|;...] */
    const dp_header_match_t *headers;
    size_t n_headers;
    const dp_query_match_t *query;
    size_t n_query;
} dp_route_match_t;

/* Whether the request passes the whole RouteMatch. */
bool dp_route_match(const dp_route_match_t *m, const dp_http_head_t *req);

/* ---- header mutations ---- */

/* envoy.config.core.v3.HeaderValueOption.HeaderAppendAction; the deprecated append BoolValue
 * maps true to APPEND_IF_EXISTS_OR_ADD and false to OVERWRITE_IF_EXISTS_OR_ADD. */
typedef enum dp_header_append {
    DP_HDR_APPEND_IF_EXISTS_OR_ADD = 0,
    DP_HDR_ADD_IF_ABSENT = 1,
    DP_HDR_OVERWRITE_IF_EXISTS_OR_ADD = 2,
    DP_HDR_OVERWRITE_IF_EXISTS = 3,
} dp_header_append_t;

/* One header to add. A value with a %COMMAND% (Envoy's substitution formatters, the access
 * log's command operators: %DOWNSTREAM_REMOTE_ADDRESS%, %REQ(x-foo)%, %START_TIME%...) is
 * formatted per request (fmt; a value absent then is empty), "%%" being a literal '%'; value
 * is the text with "%%" unescaped (what is sent without a stream to format for). A formatted
 * value with CR, LF or NUL in it counts as empty. An empty value is not added unless
 * keep_empty_value. */
struct dp_access_format;
typedef struct dp_header_add {
    dp_str_t name; /* lower case */
    dp_str_t value;
    const struct dp_access_format *fmt; /* NULL: value is literal */
    dp_header_append_t action;
    bool keep_empty_value;
} dp_header_add_t;

/* headers_to_remove then headers_to_add, for one direction at one level. */
typedef struct dp_header_ops {
    const dp_str_t *remove; /* lower case */
    size_t n_remove;
    const dp_header_add_t *add;
    size_t n_add;
} dp_header_ops_t;

/* Applies one level's mutations as Envoy's HeaderParser::evaluateHeaders does: the removals,
 * then the adds, where each add's condition is judged on the headers as they were before this
 * level's adds, the overwrites are applied first and the appends after them. Values refer to
 * snapshot memory (the stream pins the snapshot), formatted ones to pool; fmt formats them for
 * the stream at hand (NULL: the literal values are sent). */
typedef struct dp_header_fmt {
    /* f's value for ctx into buf (NUL ended), its length returned; the router's formats over
     * its stream (dp_access_format_value). */
    size_t (*fn)(const struct dp_access_format *f, const void *ctx, char *buf, size_t cap);
    const void *ctx;
} dp_header_fmt_t;
void dp_header_ops_apply(const dp_header_ops_t *ops, dp_headers_t *h, dp_pool_t *pool,
                         const dp_header_fmt_t *fmt);

/* ---- per-filter configs ---- */

/* One typed_per_filter_config entry. value/len: the Any's value bytes (in the arena); conf is
 * the handler's translated route config once handlers are wired (NULL for now). An
 * envoy.config.route.v3.FilterConfig wrapper is kept as it came (type_url and bytes of the
 * wrapper). */
typedef struct dp_route_filter_conf {
    const char *filter_name;
    const char *type_url;
    const uint8_t *value;
    size_t len;
    const void *conf;
} dp_route_filter_conf_t;

typedef struct dp_filter_confs {
    const dp_route_filter_conf_t *v; /* sorted by filter_name */
    size_t n;
} dp_filter_confs_t;

/* ---- routes ---- */

typedef enum dp_route_kind {
    DP_ROUTE_CLUSTER,
    DP_ROUTE_WEIGHTED,
    DP_ROUTE_CLUSTER_HEADER,
    DP_ROUTE_REDIRECT,
    DP_ROUTE_DIRECT,
    DP_ROUTE_NON_FORWARDING, /* non_forwarding_action / filter_action: filters reply */
} dp_route_kind_t;

/* One entry of weighted_clusters. */
typedef struct dp_route_weighted {
    const char *name;
    uint32_t weight;
    const char *host_rewrite; /* host_rewrite_literal, or NULL */
    dp_header_ops_t req, resp;
    dp_filter_confs_t filter_confs;
} dp_route_weighted_t;

/* retry_on (router's x-envoy-retry-on names) as flags. */
enum {
    DP_RETRY_5XX = 1u << 0,
    DP_RETRY_GATEWAY_ERROR = 1u << 1,
    DP_RETRY_RESET = 1u << 2,
    DP_RETRY_CONNECT_FAILURE = 1u << 3,
    DP_RETRY_RETRIABLE_4XX = 1u << 4,
    DP_RETRY_REFUSED_STREAM = 1u << 5,
    DP_RETRY_RETRIABLE_STATUS_CODES = 1u << 6,
    DP_RETRY_RETRIABLE_HEADERS = 1u << 7,
    DP_RETRY_RESET_BEFORE_REQUEST = 1u << 8,
    DP_RETRY_HTTP3_POST_CONNECT_FAILURE = 1u << 9,
    /* gRPC (x-envoy-retry-grpc-on) */
    DP_RETRY_GRPC_CANCELLED = 1u << 16,
    DP_RETRY_GRPC_DEADLINE_EXCEEDED = 1u << 17,
    DP_RETRY_GRPC_INTERNAL = 1u << 18,
    DP_RETRY_GRPC_RESOURCE_EXHAUSTED = 1u << 19,
    DP_RETRY_GRPC_UNAVAILABLE = 1u << 20,
};

/* Parses a retry_on string ("connect-failure,refused-stream,503"): the known names' flags;
 * unknown names are ignored (Envoy ignores them too). */
uint32_t dp_retry_on_parse(const char *s, size_t n);

/* envoy.config.route.v3.RetryPolicy (present when the route has one). */
typedef struct dp_retry_policy {
    uint32_t retry_on;                /* DP_RETRY_* */
    uint32_t num_retries;             /* 1 when unset */
    uint64_t per_try_timeout_ms;      /* 0: none (the route timeout applies) */
    uint64_t per_try_idle_timeout_ms; /* 0: none */
    const uint32_t *retriable_status_codes;
    size_t n_retriable_status_codes;
    bool previous_hosts;      /* retry_host_predicate envoy.retry_host_predicates.previous_hosts */
    bool previous_priorities; /* retry_priority envoy.retry_priorities.previous_priorities */
    int64_t host_selection_retry_max_attempts; /* 1 when unset (Envoy's default) */
    uint64_t backoff_base_ms, backoff_max_ms;  /* 25 ms and 10 x base when unset */
} dp_retry_policy_t;

typedef enum dp_hash_kind {
    DP_HASH_HEADER,
    DP_HASH_COOKIE,
    DP_HASH_SOURCE_IP,
    DP_HASH_QUERY_PARAMETER,
    DP_HASH_FILTER_STATE,
} dp_hash_kind_t;

/* envoy.config.route.v3.RouteAction.HashPolicy. */
typedef struct dp_hash_policy {
    dp_hash_kind_t kind;
    const char *name;       /* header name (lower case), cookie name, parameter, filter key */
    uint64_t cookie_ttl_ms; /* cookie: 0 with has_cookie_ttl means a session cookie */
    bool has_cookie_ttl;
    const char *cookie_path; /* "" when unset */
    bool terminal;
} dp_hash_policy_t;

/* envoy.config.route.v3.RouteAction.RequestMirrorPolicy: shadow a fraction of the requests to
 * another cluster (the router does the sending). */
typedef struct dp_mirror_policy {
    const char *cluster;        /* NULL when cluster_header is used */
    const char *cluster_header; /* lower case, or NULL */
    uint32_t numerator;         /* runtime_fraction.default_value; 100/100 when unset */
    uint32_t denominator;       /* 100, 10000 or 1000000 */
    bool has_trace_sampled, trace_sampled;
    bool disable_shadow_host_suffix_append;
} dp_mirror_policy_t;

typedef struct dp_route {
    const char *name; /* route.name, "" when unset */
    dp_route_match_t match;
    dp_route_kind_t kind;

    /* CLUSTER: cluster. CLUSTER_HEADER: cluster_header (lower case). WEIGHTED: weighted. */
    const char *cluster;
    const char *cluster_header;
    const dp_route_weighted_t *weighted;
    size_t n_weighted;
    uint32_t total_weight;           /* sum of the entries' weights (> 0) */
    uint32_t cluster_not_found_code; /* 503, 404 or 500 */

    /* Rewrites (CLUSTER/WEIGHTED/CLUSTER_HEADER; for REDIRECT, redirect.prefix_rewrite and
     * redirect.regex_rewrite land here too). */
    const char *prefix_rewrite; /* NULL: none */
    dp_regex_t *regex_rewrite;  /* NULL: none */
    const char *regex_sub;      /* PCRE2 substitution */
    const char *host_rewrite;   /* host_rewrite_literal, NULL: none */
    bool auto_host_rewrite;
    const char *host_rewrite_header; /* lower case, NULL: none */

    /* Timeouts in ms. timeout: 15000 when absent, 0 for none. idle_timeout: 0 none. */
    uint64_t timeout_ms, idle_timeout_ms;
    bool has_max_grpc_timeout; /* max_grpc_timeout given (0: the grpc-timeout header, unbounded) */
    uint64_t max_grpc_timeout_ms;
    uint64_t max_stream_duration_ms;  /* max_stream_duration.max_stream_duration, 0 none */
    bool has_grpc_timeout_header_max; /* max_stream_duration.grpc_timeout_header_max given */
    uint64_t grpc_timeout_header_max_ms;
    uint64_t grpc_timeout_header_offset_ms;
    const dp_retry_policy_t *retry; /* NULL: no retries */
    const dp_hash_policy_t *hash;
    size_t n_hash;
    bool websocket_enabled; /* upgrade_configs websocket enabled (HCM's setting otherwise) */
    bool websocket_set;
    const dp_mirror_policy_t *mirrors; /* request_mirror_policies */
    size_t n_mirrors;

    /* REDIRECT */
    const char *scheme_redirect; /* "https" for https_redirect; NULL keeps the scheme */
    const char *host_redirect;   /* NULL keeps the host */
    uint32_t port_redirect;      /* 0 keeps the port */
    const char *path_redirect;   /* NULL keeps the path */
    bool path_redirect_has_query;
    bool strip_query;
    int redirect_code; /* 301, 302, 303, 307, 308 */

    /* DIRECT */
    int direct_status;
    dp_str_t direct_body; /* DP_STR_NULL: no body */

    dp_header_ops_t req, resp;
    dp_filter_confs_t filter_confs;
    const char *decorator_operation; /* NULL when unset */
} dp_route_t;

/* ---- virtual hosts and the route configuration ---- */

typedef struct dp_vhost {
    const char *name;
    const char *const *domains; /* as configured */
    size_t n_domains;
    const dp_route_t *routes;
    size_t n_routes;
    dp_header_ops_t req, resp;
    bool include_request_attempt_count;
    bool include_attempt_count_in_response;
    const dp_retry_policy_t *retry; /* the vhost's retry_policy, used by routes without one */
    dp_filter_confs_t filter_confs;
    const struct dp_route_config *rc; /* the route config holding it */
} dp_vhost_t;

/* A domain of the lookup tables: lower case, without the '*' of a wildcard. */
typedef struct dp_domain {
    dp_str_t s;
    const dp_vhost_t *vh;
} dp_domain_t;

typedef struct dp_route_config {
    const char *name;
    const dp_vhost_t *vhosts;
    size_t n_vhosts;
    /* Lookup: exact domains sorted; suffix ("*.a.com" as ".a.com", "*-b.com" as "-b.com") and
     * prefix ("a.*" as "a.") wildcards longest first; "*" last. */
    const dp_domain_t *exact, *suffix, *prefix;
    size_t n_exact, n_suffix, n_prefix;
    const dp_vhost_t *any;
    dp_header_ops_t req, resp;
    bool most_specific_header_mutations_wins;
    bool ignore_port_in_host_matching;
    uint32_t max_direct_response_body_size; /* bytes; 4096 by default */
    dp_filter_confs_t filter_confs;
} dp_route_config_t;

/* ---- the router's calls ---- */

/* The virtual host for an :authority, as Envoy's RouteMatcher::findVirtualHost: lower-cased,
 * the port stripped first when ignore_port_in_host_matching (from the last ':' not followed by
 * a ']', as Envoy's getPortStart; Envoy does not strip it otherwise), then an exact domain, then
 * the longest suffix wildcard shorter than the host, then the longest prefix wildcard shorter than
 * the host, then "*". NULL when none applies. */
const dp_vhost_t *dp_route_vhost(const dp_route_config_t *rc, dp_str_t authority);

/* The virtual host (*ret_vh, NULL when none) and then the first of its routes whose match
 * passes. Returns NULL (Envoy's 404 with response flag NR) when no route matches, or when rc is
 * NULL (an RDS configuration that has not arrived). A request without :path only matches
 * connect_matcher routes. random is unused for now (runtime_fraction is ignored). */
const dp_route_t *dp_route_select(const dp_route_config_t *rc, const dp_http_head_t *req,
                                  uint64_t random, const dp_vhost_t **ret_vh);

/* The cluster of a CLUSTER, WEIGHTED (the entry covering random % total_weight, in
 * configuration order) or CLUSTER_HEADER (the header's first value) route. NULL when the route
 * has no cluster (REDIRECT, DIRECT) or the header is absent or empty. *ret_wc: the chosen
 * weighted entry, or NULL. The name is in the snapshot, or for CLUSTER_HEADER the header's value
 * in req's memory, which must be NUL-terminated (what the codecs decode and dp_headers_add
 * copies into the pool is). */
const char *dp_route_cluster(const dp_route_t *r, const dp_http_head_t *req, uint64_t random,
                             const dp_route_weighted_t **ret_wc);

/* Applies, to the request going upstream, in Envoy's order (RouteEntryImplBase::
 * finalizeRequestHeaders, WeightedClusterEntry's first):
 *   1. the weighted entry's headers (remove, then add) and its host_rewrite_literal;
 *   2. the route's, the vhost's and the route config's header mutations, in that order (the
 *      reverse when most_specific_header_mutations_wins), so later levels win an overwrite;
 *   3. host_rewrite_literal (authority), or host_rewrite_header's value;
 *   4. prefix_rewrite (the matched prefix or path replaced, query kept) or regex_rewrite (on
 *      the path without the query, query kept).
 * auto_host_rewrite is left to the router (it needs the upstream host). wc, vh and rc may be
 * NULL. Strings come from pool or the snapshot. */
void dp_route_apply_request(const dp_route_config_t *rc, const dp_vhost_t *vh, const dp_route_t *r,
                            const dp_route_weighted_t *wc, dp_http_head_t *req, dp_pool_t *pool,
                            const dp_header_fmt_t *fmt);

/* The response counterpart: the weighted entry's, then the route's, vhost's and route config's
 * response header mutations (reversed when most_specific_header_mutations_wins). */
void dp_route_apply_response(const dp_route_config_t *rc, const dp_vhost_t *vh, const dp_route_t *r,
                             const dp_route_weighted_t *wc, dp_http_head_t *resp, dp_pool_t *pool,
                             const dp_header_fmt_t *fmt);

/* For a REDIRECT route, the Location (Envoy's Http::Utility::newUri): scheme (scheme_redirect
 * or https, else the request's), host (host_redirect, else the request's authority, whose port
 * is dropped when a port_redirect is given or the scheme changes from x-forwarded-proto's (else
 * the request's scheme) http with :80 or https with :443), ":port_redirect", and the path:
 * path_redirect (everything from the request's '?' appended unless it has a query of its own),
 * or the request path after prefix_rewrite/regex_rewrite;
 * strip_query drops the query (not one path_redirect brings). *ret_status gets the code. The
 * string is in pool. */
dp_str_t dp_route_redirect(const dp_route_t *r, const dp_http_head_t *req, dp_pool_t *pool,
                           int *ret_status);

/* The typed_per_filter_config entry for a filter name, most specific first: route, then vhost,
 * then the vhost's route config (r and vh may be NULL). NULL when none. */
const struct dp_route_filter_conf *dp_route_filter_conf(const dp_vhost_t *vh, const dp_route_t *r,
                                                        const char *filter_name);

/* The path of a path (or :path value) without its query and fragment. */
dp_str_t dp_route_path_only(dp_str_t path);

#endif
