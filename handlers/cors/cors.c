/* The CORS filter's runtime: finds the route's CorsPolicy, counts the origin, answers
 * preflights and decorates responses, with the decisions of cors_policy.c. */
#include "handlers/cors/cors.h"

typedef struct cors_ctx {
    const dp_cors_policy_t *policy;
    dp_cors_state_t st;
} cors_ctx_t;

static dp_filter_status_t cors_on_request_headers(dp_stream_t *s, void *ctx, const void *conf,
                                                  bool end_stream)
{
    cors_ctx_t *c = ctx;
    const dp_cors_conf_t *lc = conf;
    if (lc && lc->magic != DP_CORS_MAGIC_CONF)
        lc = NULL;
    const char *name = lc && lc->filter_name ? lc->filter_name : DP_CORS_FILTER_NAME;
    const dp_cors_policy_t *p = dp_stream_route_config(s, name);
    if (p == NULL || p->magic != DP_CORS_MAGIC_POLICY || s->req == NULL)
        return DP_FILTER_CONTINUE;
    uint64_t r1 = p->has_filter_enabled ? dp_wctx_random(s->w) : 0;
    uint64_t r2 = p->has_shadow_enabled ? dp_wctx_random(s->w) : 0;
    c->policy = p;
    c->st = dp_cors_decide(p, s->req, r1, r2);
    if (c->st.has_origin && lc) {
        dp_counter_t *k = c->st.origin_allowed ? lc->origin_valid : lc->origin_invalid;
        if (k)
            dp_counter_inc(k);
    }
    if (c->st.verdict != DP_CORS_PREFLIGHT)
        return DP_FILTER_CONTINUE;
    dp_stream_encode_headers(s, dp_cors_preflight_head(p, &c->st, s->req, s->pool), true);
    return DP_FILTER_STOP;
}

static void cors_on_response_headers(dp_stream_t *s, void *ctx, const void *conf, dp_http_head_t *h,
                                     bool end_stream)
{
    cors_ctx_t *c = ctx;
    if (c->policy)
        dp_cors_decorate_response(c->policy, &c->st, h, s->pool);
}

const dp_http_filter_type_t dp_cors_filter = {
    .name = DP_CORS_FILTER_NAME,
    .type_url = DP_CORS_TYPE_URL,
    .ctx_size = sizeof(cors_ctx_t),
    .on_request_headers = cors_on_request_headers,
    .on_response_headers = cors_on_response_headers,
};
