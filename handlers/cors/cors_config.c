/* Cors and CorsPolicy (envoy.extensions.filters.http.cors.v3) into the CORS filter's
 * configs. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "handlers/cors/cors.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/route.h"
#include "envoy/extensions/filters/http/cors/v3/cors.pb-c.h"
#include "handlers/config.h"
#include "xds/pbwire.h"
#include "xds/route_build.h"

#define MAX_ORIGINS 1024

typedef Envoy__Extensions__Filters__Http__Cors__V3__CorsPolicy pb_policy_t;

static int percent_of(const Envoy__Config__Core__V3__RuntimeFractionalPercent *rp,
                      dp_cors_percent_t *out, const char *field, char **reterr_msg)
{
    /* skiff has no runtime layer: the default_value is the value (unset: 0 of 100). */
    const Envoy__Type__V3__FractionalPercent *p = rp->default_value;
    out->numerator = p ? p->numerator : 0;
    out->denominator = 100;
    if (p == NULL)
        return 0;
    switch (p->denominator) {
    case ENVOY__TYPE__V3__FRACTIONAL_PERCENT__DENOMINATOR_TYPE__HUNDRED:
        break;
    case ENVOY__TYPE__V3__FRACTIONAL_PERCENT__DENOMINATOR_TYPE__TEN_THOUSAND:
        out->denominator = 10000;
        break;
    case ENVOY__TYPE__V3__FRACTIONAL_PERCENT__DENOMINATOR_TYPE__MILLION:
        out->denominator = 1000000;
        break;
    default:
        return handlers_config_fail(reterr_msg, "%s.default_value.denominator: unknown value %d",
                                    field, (int)p->denominator);
    }
    return 0;
}

static dp_str_t str_of(dp_arena_t *a, const char *s)
{
    if (s == NULL || s[0] == '\0')
        return DP_STR_NULL;
    char *d = dp_arena_strdup(a, s);
    return (dp_str_t){d, strlen(d)};
}

static int policy_build(dp_arena_t *a, const pb_policy_t *pb, dp_cors_policy_t *p,
                        char **reterr_msg)
{
    int r;
    if (pb->n_allow_origin_string_match > MAX_ORIGINS)
        return handlers_config_fail(reterr_msg, "allow_origin_string_match: more than %d",
                                    MAX_ORIGINS);
    if (pb->n_allow_origin_string_match) {
        dp_str_match_t *m = dp_arena_alloc(a, pb->n_allow_origin_string_match * sizeof(*m));
        for (size_t i = 0; i < pb->n_allow_origin_string_match; i++) {
            char field[64];
            snprintf(field, sizeof(field), "allow_origin_string_match[%zu]", i);
            if ((r = xds_str_match_build(a, pb->allow_origin_string_match[i], field, &m[i],
                                         reterr_msg)))
                return r;
        }
        p->origins = m;
        p->n_origins = pb->n_allow_origin_string_match;
    }
    p->allow_methods = str_of(a, pb->allow_methods);
    p->allow_headers = str_of(a, pb->allow_headers);
    p->expose_headers = str_of(a, pb->expose_headers);
    p->max_age = str_of(a, pb->max_age);
    p->allow_credentials = pb->allow_credentials && pb->allow_credentials->value;
    p->allow_private_network_access =
        pb->allow_private_network_access && pb->allow_private_network_access->value;
    p->forward_not_matching_preflights =
        pb->forward_not_matching_preflights == NULL || pb->forward_not_matching_preflights->value;
    if (pb->filter_enabled) {
        p->has_filter_enabled = true;
        if ((r = percent_of(pb->filter_enabled, &p->filter_enabled, "filter_enabled", reterr_msg)))
            return r;
    }
    if (pb->shadow_enabled) {
        p->has_shadow_enabled = true;
        if ((r = percent_of(pb->shadow_enabled, &p->shadow_enabled, "shadow_enabled", reterr_msg)))
            return r;
    }
    return 0;
}

int dp_cors_policy_config_new(const handlers_config_ctx_t *ctx, const uint8_t *buf, size_t len,
                              const void **ret_conf, char **reterr_msg)
{
    if (!ctx->per_route)
        return handlers_config_fail(reterr_msg,
                                    "CorsPolicy: a route-level config, not an http_filters one");
    const char *why = NULL;
    if (buf == NULL)
        buf = (const uint8_t *)"", len = 0;
    pb_policy_t *pb = (pb_policy_t *)xds_pb_unpack(
        &envoy__extensions__filters__http__cors__v3__cors_policy__descriptor, buf, len, &why);
    if (pb == NULL)
        return handlers_config_fail(reterr_msg, "CorsPolicy: %s", why ? why : "malformed");
    dp_cors_policy_t *p = dp_arena_alloc(ctx->arena, sizeof(*p));
    int r = policy_build(ctx->arena, pb, p, reterr_msg);
    protobuf_c_message_free_unpacked(&pb->base, NULL);
    if (r)
        return r;
    p->magic = DP_CORS_MAGIC_POLICY;
    *ret_conf = p;
    return 0;
}

int dp_cors_config_new(const handlers_config_ctx_t *ctx, const uint8_t *buf, size_t len,
                       const void **ret_conf, char **reterr_msg)
{
    if (ctx->per_route)
        return handlers_config_fail(reterr_msg,
                                    "Cors: an http_filters config; routes take a CorsPolicy");
    const char *why = NULL;
    if (buf == NULL)
        buf = (const uint8_t *)"", len = 0;
    ProtobufCMessage *pb = xds_pb_unpack(
        &envoy__extensions__filters__http__cors__v3__cors__descriptor, buf, len, &why);
    if (pb == NULL)
        return handlers_config_fail(reterr_msg, "Cors: %s", why ? why : "malformed");
    protobuf_c_message_free_unpacked(pb, NULL);
    dp_cors_conf_t *c = dp_arena_alloc(ctx->arena, sizeof(*c));
    c->magic = DP_CORS_MAGIC_CONF;
    c->filter_name =
        dp_arena_strdup(ctx->arena, ctx->filter_name ? ctx->filter_name : DP_CORS_FILTER_NAME);
    if (ctx->stats && ctx->stat_prefix) {
        char name[512];
        snprintf(name, sizeof(name), "http.%s.cors.origin_valid", ctx->stat_prefix);
        c->origin_valid = dp_stats_counter(ctx->stats, name);
        snprintf(name, sizeof(name), "http.%s.cors.origin_invalid", ctx->stat_prefix);
        c->origin_invalid = dp_stats_counter(ctx->stats, name);
    }
    *ret_conf = c;
    return 0;
}
