#include "xds/hcm_build.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dataplane/path.h"
#include "dataplane/route.h"
#include "handlers/config.h"
#include "handlers/registry.h"
#include "xds/access_log_build.h"
#include "xds/route_build.h"
#include "xds/typed_struct.h"

typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager hcm_t;

#define HCM(x) \
    ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__##x

static void *fail(char **reterr_msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void *fail(char **reterr_msg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(reterr_msg, fmt, ap) < 0)
        *reterr_msg = NULL;
    va_end(ap);
    return NULL;
}

/* A Duration in ms; def when absent. Returns false for a negative one (Envoy's validation
 * refuses those). */
static bool duration_ms(const Google__Protobuf__Duration *d, uint64_t def, uint64_t *ret_ms)
{
    if (d == NULL) {
        *ret_ms = def;
        return true;
    }
    if (d->seconds < 0 || d->nanos < 0)
        return false;
    *ret_ms = (uint64_t)d->seconds * 1000 + (uint64_t)d->nanos / 1000000;
    return true;
}

static void make_stats(dp_stats_t *st, const char *prefix, dp_hcm_stats_t *out)
{
    char name[600];
#define C(field, stat)                                            \
    do {                                                          \
        snprintf(name, sizeof(name), "http.%s.%s", prefix, stat); \
        out->field = dp_stats_counter(st, name);                  \
    } while (0)
#define G(field, stat)                                            \
    do {                                                          \
        snprintf(name, sizeof(name), "http.%s.%s", prefix, stat); \
        out->field = dp_stats_gauge(st, name);                    \
    } while (0)
    C(cx_total, "downstream_cx_total");
    C(cx_http1_total, "downstream_cx_http1_total");
    C(cx_http2_total, "downstream_cx_http2_total");
    C(cx_protocol_error, "downstream_cx_protocol_error");
    G(cx_active, "downstream_cx_active");
    G(rq_active, "downstream_rq_active");
    C(rq_total, "downstream_rq_total");
    C(rq_http1_total, "downstream_rq_http1_total");
    C(rq_http2_total, "downstream_rq_http2_total");
    C(rq_xx[0], "downstream_rq_1xx");
    C(rq_xx[1], "downstream_rq_2xx");
    C(rq_xx[2], "downstream_rq_3xx");
    C(rq_xx[3], "downstream_rq_4xx");
    C(rq_xx[4], "downstream_rq_5xx");
    C(rq_completed, "downstream_rq_completed");
    C(rq_timeout, "downstream_rq_timeout");
    C(rq_idle_timeout, "downstream_rq_idle_timeout");
    C(rq_header_timeout, "downstream_rq_header_timeout");
    C(rq_failed_path_normalization, "downstream_rq_failed_path_normalization");
    C(rq_redirected_with_normalized_path, "downstream_rq_redirected_with_normalized_path");
    out->underscores_dropped[0] = dp_stats_counter(st, "http1.dropped_headers_with_underscores");
    out->underscores_dropped[1] = dp_stats_counter(st, "http2.dropped_headers_with_underscores");
    out->underscores_rejected[0] =
        dp_stats_counter(st, "http1.requests_rejected_with_underscores_in_headers");
    out->underscores_rejected[1] =
        dp_stats_counter(st, "http2.requests_rejected_with_underscores_in_headers");
    C(rq_rx_reset, "downstream_rq_rx_reset");
    C(rq_tx_reset, "downstream_rq_tx_reset");
    C(no_route, "no_route");
    C(no_cluster, "no_cluster");
    C(rq_too_large, "downstream_rq_too_large");
    /* rq_header_overflow stays NULL: Envoy has no http.<prefix>.* stat of that meaning (its
     * HTTP/2 codec counts http2.header_overflow, outside the connection manager's tree). */
#undef C
#undef G
}

const dp_hcm_config_t *xds_hcm_build(dp_snapshot_t *s, dp_stats_t *stats, const hcm_t *hcm,
                                     bool inbound, char **reterr_msg)
{
    dp_arena_t *a = s->arena;
    const char *sp = hcm->stat_prefix ? hcm->stat_prefix : "";
    dp_hcm_config_t *c = dp_arena_alloc(a, sizeof(*c));
    c->stat_prefix = dp_arena_strdup(a, sp);
    c->inbound = inbound;

    switch (hcm->codec_type) {
    case HCM(CODEC_TYPE__AUTO):
        c->codec_type = DP_CODEC_AUTO;
        break;
    case HCM(CODEC_TYPE__HTTP1):
        c->codec_type = DP_CODEC_HTTP1;
        break;
    case HCM(CODEC_TYPE__HTTP2):
        c->codec_type = DP_CODEC_HTTP2;
        break;
    default:
        return fail(reterr_msg, "http_connection_manager %s: codec_type: %d is not supported", sp,
                    (int)hcm->codec_type);
    }

    switch (hcm->route_specifier_case) {
    case HCM(ROUTE_SPECIFIER_RDS):
        if (hcm->rds == NULL || hcm->rds->route_config_name == NULL ||
            hcm->rds->route_config_name[0] == '\0')
            return fail(reterr_msg,
                        "http_connection_manager %s: rds.route_config_name: must not "
                        "be empty",
                        sp);
        c->rds_name = dp_arena_strdup(a, hcm->rds->route_config_name);
        c->routes = dp_snapshot_find_route(s, c->rds_name);
        break;
    case HCM(ROUTE_SPECIFIER_ROUTE_CONFIG): {
        char *err = NULL;
        dp_route_config_t *rc = xds_route_build(s, hcm->route_config, &err);
        if (rc == NULL) {
            fail(reterr_msg, "http_connection_manager %s: route_config: %s", sp,
                 err ? err : "out of memory");
            free(err);
            return NULL;
        }
        c->routes = rc;
        break;
    }
    case HCM(ROUTE_SPECIFIER_SCOPED_ROUTES):
        return fail(reterr_msg, "http_connection_manager %s: scoped_routes: not supported", sp);
    default:
        return fail(reterr_msg,
                    "http_connection_manager %s: one of rds or route_config is "
                    "required",
                    sp);
    }

    if (hcm->n_http_filters) {
        dp_http_filter_t *f = dp_arena_alloc(a, hcm->n_http_filters * sizeof(*f));
        for (size_t i = 0; i < hcm->n_http_filters; i++) {
            const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpFilter *hf =
                hcm->http_filters[i];
            if (hf->name == NULL || hf->name[0] == '\0')
                return fail(reterr_msg,
                            "http_connection_manager %s: http_filters[%zu].name: "
                            "must not be empty",
                            sp, i);
            f[i].name = dp_arena_strdup(a, hf->name);
            f[i].disabled = hf->disabled;
            f[i].type = NULL;
            f[i].conf = NULL;
            /* A filter skiff implements gets its type and config; any other the xDS client
             * accepted passes requests through. */
            const char *type_url =
                hf->config_type_case ==
                            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_FILTER__CONFIG_TYPE_TYPED_CONFIG &&
                        hf->typed_config
                    ? hf->typed_config->type_url
                    : NULL;
            const uint8_t *cbuf = type_url ? hf->typed_config->value.data : NULL;
            size_t clen = type_url ? hf->typed_config->value.len : 0;
            char *ts_type = NULL, *ts_err = NULL;
            uint8_t *ts_buf = NULL;
            int ts =
                xds_typed_struct_unwrap(type_url, cbuf, clen, &ts_type, &ts_buf, &clen, &ts_err);
            if (ts == -EINVAL) {
                /* Only a config skiff reads must convert; others pass through as they are. */
                if (handlers_config_known(ts_type)) {
                    const dp_hcm_config_t *r =
                        fail(reterr_msg, "http_connection_manager %s: http_filters[%zu] (%s): %s",
                             sp, i, f[i].name, ts_err ? ts_err : "TypedStruct");
                    free(ts_err);
                    free(ts_type);
                    return r;
                }
                free(ts_err);
                free(ts_type);
                ts_type = NULL;
            }
            if (ts == 0) {
                type_url = ts_type;
                cbuf = ts_buf;
            }
            f[i].type = handlers_http_filter_find(type_url);
            if (type_url) {
                handlers_config_ctx_t cctx = {
                    .arena = a, .stats = stats, .stat_prefix = sp, .filter_name = f[i].name};
                char *err = NULL;
                int rc = handlers_config_new(&cctx, type_url, cbuf, clen, &f[i].conf, &err);
                free(ts_type);
                free(ts_buf);
                if (rc == -EINVAL) {
                    const dp_hcm_config_t *r =
                        fail(reterr_msg, "http_connection_manager %s: http_filters[%zu] (%s): %s",
                             sp, i, f[i].name, err ? err : "invalid config");
                    free(err);
                    return r;
                }
            }
        }
        c->filters = f;
        c->n_filters = hcm->n_http_filters;
    }

    const Envoy__Config__Core__V3__HttpProtocolOptions *cpo = hcm->common_http_protocol_options;
    /* Envoy's defaults: stream_idle_timeout 5 min, request_timeout none, the connection's
     * idle_timeout 1 h, max_stream_duration none; request_headers_timeout 60 s (Envoy: none). */
    if (!duration_ms(hcm->stream_idle_timeout, 5 * 60 * 1000, &c->stream_idle_timeout_ms))
        return fail(reterr_msg, "http_connection_manager %s: stream_idle_timeout: negative", sp);
    if (!duration_ms(hcm->request_timeout, 0, &c->request_timeout_ms))
        return fail(reterr_msg, "http_connection_manager %s: request_timeout: negative", sp);
    if (!duration_ms(hcm->request_headers_timeout, 60 * 1000, &c->request_headers_timeout_ms))
        return fail(reterr_msg, "http_connection_manager %s: request_headers_timeout: negative",
                    sp);
    if (!duration_ms(cpo ? cpo->idle_timeout : NULL, 3600 * 1000, &c->idle_timeout_ms))
        return fail(reterr_msg,
                    "http_connection_manager %s: "
                    "common_http_protocol_options.idle_timeout: negative",
                    sp);
    if (!duration_ms(cpo ? cpo->max_stream_duration : NULL, 0, &c->max_stream_duration_ms))
        return fail(reterr_msg,
                    "http_connection_manager %s: "
                    "common_http_protocol_options.max_stream_duration: negative",
                    sp);

    if (cpo &&
        cpo->headers_with_underscores_action ==
            ENVOY__CONFIG__CORE__V3__HTTP_PROTOCOL_OPTIONS__HEADERS_WITH_UNDERSCORES_ACTION__REJECT_REQUEST)
        c->underscores = DP_UNDERSCORES_REJECT;
    else if (
        cpo &&
        cpo->headers_with_underscores_action ==
            ENVOY__CONFIG__CORE__V3__HTTP_PROTOCOL_OPTIONS__HEADERS_WITH_UNDERSCORES_ACTION__DROP_HEADER)
        c->underscores = DP_UNDERSCORES_DROP;

    c->use_remote_address = hcm->use_remote_address && hcm->use_remote_address->value;
    c->xff_num_trusted_hops = hcm->xff_num_trusted_hops;
    c->server_name =
        dp_arena_strdup(a, hcm->server_name && hcm->server_name[0] ? hcm->server_name : "envoy");
    c->normalize_path = hcm->normalize_path && hcm->normalize_path->value;
    c->merge_slashes = hcm->merge_slashes;
    switch (hcm->path_with_escaped_slashes_action) {
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__PATH_WITH_ESCAPED_SLASHES_ACTION__REJECT_REQUEST:
        c->escaped_slashes = DP_SLASHES_REJECT;
        break;
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__PATH_WITH_ESCAPED_SLASHES_ACTION__UNESCAPE_AND_REDIRECT:
        c->escaped_slashes = DP_SLASHES_REDIRECT;
        break;
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__PATH_WITH_ESCAPED_SLASHES_ACTION__UNESCAPE_AND_FORWARD:
        c->escaped_slashes = DP_SLASHES_FORWARD;
        break;
    default: /* KEEP_UNCHANGED, and Envoy's default for IMPLEMENTATION_SPECIFIC_DEFAULT */
        c->escaped_slashes = DP_SLASHES_KEEP;
        break;
    }
    c->generate_request_id = hcm->generate_request_id == NULL || hcm->generate_request_id->value;
    c->xfcc_always_forward =
        hcm->forward_client_cert_details ==
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__FORWARD_CLIENT_CERT_DETAILS__ALWAYS_FORWARD_ONLY;
    c->preserve_external_request_id = hcm->preserve_external_request_id;
    for (size_t i = 0; i < hcm->n_upgrade_configs; i++) {
        const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager__UpgradeConfig
            *u = hcm->upgrade_configs[i];
        /* Upgrade types compare case-insensitively; enabled defaults to true. */
        if (u->upgrade_type && strcasecmp(u->upgrade_type, "websocket") == 0)
            c->websocket = u->enabled == NULL || u->enabled->value;
    }

    /* What each stream and each request would otherwise derive from the fields above. */
    uint64_t tv[] = {c->request_headers_timeout_ms, c->request_timeout_ms,
                     c->stream_idle_timeout_ms, c->max_stream_duration_ms};
    for (size_t i = 0; i < sizeof(tv) / sizeof(tv[0]); i++) {
        if (tv[i] && (c->stream_timeout_min_ms == 0 || tv[i] < c->stream_timeout_min_ms))
            c->stream_timeout_min_ms = tv[i];
    }
    c->sweep_ms = c->stream_timeout_min_ms == 0  ? 0
                  : c->stream_timeout_min_ms / 4 ? c->stream_timeout_min_ms / 4
                                                 : 1;
    c->path_flags = (c->normalize_path ? DP_PATH_NORMALIZE : 0) |
                    (c->merge_slashes ? DP_PATH_MERGE_SLASHES : 0) |
                    (c->escaped_slashes != DP_SLASHES_KEEP ? DP_PATH_UNESCAPE_SLASHES : 0);

    c->limits = dp_http_limits_default();
    if (hcm->max_request_headers_kb) {
        uint32_t kb = hcm->max_request_headers_kb->value;
        if (kb == 0 || kb > 8192) /* Envoy's bounds: (0, 8192] */
            return fail(reterr_msg,
                        "http_connection_manager %s: max_request_headers_kb: %u is "
                        "not in 1..8192",
                        sp, kb);
        c->limits.max_header_bytes = kb * 1024;
    }
    if (cpo && cpo->max_headers_count) {
        if (cpo->max_headers_count->value == 0)
            return fail(reterr_msg,
                        "http_connection_manager %s: "
                        "common_http_protocol_options.max_headers_count: must be "
                        "at least 1",
                        sp);
        c->limits.max_headers = cpo->max_headers_count->value;
    }
    const Envoy__Config__Core__V3__Http2ProtocolOptions *h2 = hcm->http2_protocol_options;
    if (h2 && h2->max_concurrent_streams) {
        uint32_t v = h2->max_concurrent_streams->value;
        if (v == 0 || v > 2147483647u)
            return fail(reterr_msg,
                        "http_connection_manager %s: http2_protocol_options."
                        "max_concurrent_streams: %u is not in 1..2147483647",
                        sp, v);
        c->limits.h2_max_concurrent_streams = v;
    }
    if (h2 && h2->initial_stream_window_size) {
        uint32_t v = h2->initial_stream_window_size->value;
        if (v < 65535 || v > 2147483647u)
            return fail(reterr_msg,
                        "http_connection_manager %s: http2_protocol_options."
                        "initial_stream_window_size: %u is not in 65535..2147483647",
                        sp, v);
        c->limits.h2_initial_stream_window = v;
    }
    if (h2 && h2->initial_connection_window_size) {
        uint32_t v = h2->initial_connection_window_size->value;
        if (v < 65535 || v > 2147483647u)
            return fail(reterr_msg,
                        "http_connection_manager %s: http2_protocol_options."
                        "initial_connection_window_size: %u is not in "
                        "65535..2147483647",
                        sp, v);
        c->limits.h2_initial_connection_window = v;
    }

    char *alerr = NULL;
    if (xds_access_logs_build(a, hcm->access_log, hcm->n_access_log, &c->access_logs,
                              &c->n_access_logs, &alerr) < 0) {
        fail(reterr_msg, "http_connection_manager %s: %s", sp, alerr ? alerr : "access_log");
        free(alerr);
        return NULL;
    }

    if (stats)
        make_stats(stats, sp, &c->stats);
    return c;
}
