/* HTTPFault (envoy.extensions.filters.http.fault.v3) into a dp_fault_conf_t. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "handlers/fault/fault.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/route.h"
#include "envoy/extensions/filters/http/fault/v3/fault.pb-c.h"
#include "handlers/config.h"
#include "xds/pbwire.h"
#include "xds/route_build.h"

/* Bounds on what a config may ask for. */
#define MAX_DELAY_MS (365ull * 24 * 3600 * 1000) /* a year: far past any stream timeout */
#define MAX_MATCHERS 1024

typedef Envoy__Extensions__Filters__Http__Fault__V3__HTTPFault pb_fault_t;
typedef Envoy__Config__Route__V3__HeaderMatcher pb_hm_t;
typedef Envoy__Type__Matcher__V3__StringMatcher pb_sm_t;

static int percent_of(const Envoy__Type__V3__FractionalPercent *p, dp_fault_percent_t *out,
                      const char *field, char **reterr_msg)
{
    /* Unset: 0 of 100, as a default FractionalPercent in Envoy. */
    out->numerator = p ? p->numerator : 0;
    out->denominator = 100;
    if (p == NULL)
        return 0;
    switch (p->denominator) {
    case ENVOY__TYPE__V3__FRACTIONAL_PERCENT__DENOMINATOR_TYPE__HUNDRED:
        out->denominator = 100;
        break;
    case ENVOY__TYPE__V3__FRACTIONAL_PERCENT__DENOMINATOR_TYPE__TEN_THOUSAND:
        out->denominator = 10000;
        break;
    case ENVOY__TYPE__V3__FRACTIONAL_PERCENT__DENOMINATOR_TYPE__MILLION:
        out->denominator = 1000000;
        break;
    default:
        return handlers_config_fail(reterr_msg, "%s.denominator: unknown value %d", field,
                                    (int)p->denominator);
    }
    return 0;
}

static int fault_build(const handlers_config_ctx_t *ctx, const pb_fault_t *pb, dp_fault_conf_t *c,
                       char **reterr_msg)
{
    dp_arena_t *a = ctx->arena;
    int r;
    if (pb->delay) {
        const Envoy__Extensions__Filters__Common__Fault__V3__FaultDelay *d = pb->delay;
        c->has_delay = true;
        switch (d->fault_delay_secifier_case) {
        case ENVOY__EXTENSIONS__FILTERS__COMMON__FAULT__V3__FAULT_DELAY__FAULT_DELAY_SECIFIER_FIXED_DELAY: {
            const Google__Protobuf__Duration *du = d->fixed_delay;
            int64_t sec = du ? du->seconds : 0;
            int32_t ns = du ? du->nanos : 0;
            if (sec < 0 || ns < 0 || ns > 999999999)
                return handlers_config_fail(reterr_msg,
                                            "delay.fixed_delay: negative or malformed duration");
            if ((uint64_t)sec > MAX_DELAY_MS / 1000)
                return handlers_config_fail(reterr_msg, "delay.fixed_delay: longer than a year");
            c->delay_ms = (uint64_t)sec * 1000 + (uint64_t)ns / 1000000;
            break;
        }
        case ENVOY__EXTENSIONS__FILTERS__COMMON__FAULT__V3__FAULT_DELAY__FAULT_DELAY_SECIFIER_HEADER_DELAY:
            c->delay_from_header = true;
            break;
        default:
            return handlers_config_fail(reterr_msg,
                                        "delay: fixed_delay or header_delay is required");
        }
        if ((r = percent_of(d->percentage, &c->delay_percent, "delay.percentage", reterr_msg)))
            return r;
    }
    if (pb->abort) {
        const Envoy__Extensions__Filters__Http__Fault__V3__FaultAbort *ab = pb->abort;
        switch (ab->error_type_case) {
        case ENVOY__EXTENSIONS__FILTERS__HTTP__FAULT__V3__FAULT_ABORT__ERROR_TYPE_HTTP_STATUS:
            if (ab->http_status < 200 || ab->http_status >= 600)
                return handlers_config_fail(
                    reterr_msg, "abort.http_status: %u is not in [200, 600)", ab->http_status);
            c->abort_kind = DP_FAULT_ABORT_HTTP;
            c->abort_http_status = ab->http_status;
            break;
        case ENVOY__EXTENSIONS__FILTERS__HTTP__FAULT__V3__FAULT_ABORT__ERROR_TYPE_GRPC_STATUS:
            c->abort_kind = DP_FAULT_ABORT_GRPC;
            c->abort_grpc_status = ab->grpc_status;
            break;
        case ENVOY__EXTENSIONS__FILTERS__HTTP__FAULT__V3__FAULT_ABORT__ERROR_TYPE_HEADER_ABORT:
            c->abort_kind = DP_FAULT_ABORT_HEADER;
            break;
        default:
            return handlers_config_fail(
                reterr_msg, "abort: http_status, grpc_status or header_abort is required");
        }
        if ((r = percent_of(ab->percentage, &c->abort_percent, "abort.percentage", reterr_msg)))
            return r;
    }
    if (pb->upstream_cluster && pb->upstream_cluster[0])
        return handlers_config_fail(reterr_msg,
                                    "upstream_cluster: not supported (faults per cluster)");
    if (pb->response_rate_limit)
        return handlers_config_fail(reterr_msg, "response_rate_limit: not supported");
    if (pb->n_headers > MAX_MATCHERS)
        return handlers_config_fail(reterr_msg, "headers: more than %d matchers", MAX_MATCHERS);
    if (pb->n_headers) {
        dp_header_match_t *hm = dp_arena_alloc(a, pb->n_headers * sizeof(*hm));
        for (size_t i = 0; i < pb->n_headers; i++) {
            char field[48];
            snprintf(field, sizeof(field), "headers[%zu]", i);
            if ((r = xds_header_match_build(a, pb->headers[i], field, &hm[i], reterr_msg)))
                return r;
        }
        c->headers = hm;
        c->n_headers = pb->n_headers;
    }
    if (pb->n_downstream_nodes) {
        const char **nodes = dp_arena_alloc(a, pb->n_downstream_nodes * sizeof(*nodes));
        for (size_t i = 0; i < pb->n_downstream_nodes; i++)
            nodes[i] = dp_arena_strdup(a, pb->downstream_nodes[i] ? pb->downstream_nodes[i] : "");
        c->downstream_nodes = nodes;
        c->n_downstream_nodes = pb->n_downstream_nodes;
    }
    if (pb->max_active_faults) {
        c->has_max_active_faults = true;
        c->max_active_faults = pb->max_active_faults->value;
    }
    return 0;
}

static dp_counter_t *counter(const handlers_config_ctx_t *ctx, const char *name)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "http.%s.fault.%s", ctx->stat_prefix, name);
    return dp_stats_counter(ctx->stats, buf);
}

int dp_fault_config_new(const handlers_config_ctx_t *ctx, const uint8_t *buf, size_t len,
                        const void **ret_conf, char **reterr_msg)
{
    const char *why = NULL;
    if (buf == NULL)
        buf = (const uint8_t *)"", len = 0;
    pb_fault_t *pb = (pb_fault_t *)xds_pb_unpack(
        &envoy__extensions__filters__http__fault__v3__httpfault__descriptor, buf, len, &why);
    if (pb == NULL)
        return handlers_config_fail(reterr_msg, "HTTPFault: %s", why ? why : "malformed");
    dp_fault_conf_t *c = dp_arena_alloc(ctx->arena, sizeof(*c));
    int r = fault_build(ctx, pb, c, reterr_msg);
    protobuf_c_message_free_unpacked(&pb->base, NULL);
    if (r)
        return r;
    c->magic = DP_FAULT_MAGIC;
    c->filter_name =
        dp_arena_strdup(ctx->arena, ctx->filter_name ? ctx->filter_name : DP_FAULT_FILTER_NAME);
    c->per_route = ctx->per_route;
    if (!ctx->per_route) {
        if (ctx->stats && ctx->stat_prefix) {
            c->stats.delays_injected = counter(ctx, "delays_injected");
            c->stats.aborts_injected = counter(ctx, "aborts_injected");
            c->stats.faults_overflow = counter(ctx, "faults_overflow");
            char name[512];
            snprintf(name, sizeof(name), "http.%s.fault.active_faults", ctx->stat_prefix);
            c->stats.active_faults = dp_stats_gauge(ctx->stats, name);
        }
        c->active = dp_arena_alloc(ctx->arena, sizeof(*c->active));
    }
    *ret_conf = c;
    return 0;
}
