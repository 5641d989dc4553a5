/* The CORS filter's decisions and response headers as pure functions. */
#include "handlers/cors/cors.h"

#include <ctype.h>
#include <string.h>

#include "dataplane/route.h"

bool dp_cors_origin_allowed(const dp_cors_policy_t *p, dp_str_t origin)
{
    for (size_t i = 0; i < p->n_origins; i++) {
        if (dp_str_match(&p->origins[i], DP_STR("*")) ||
            dp_str_match(&p->origins[i], origin.p ? origin : DP_STR("")))
            return true;
    }
    return false;
}

static bool percent_hit(dp_cors_percent_t p, uint64_t random)
{
    return p.denominator && random % p.denominator < p.numerator;
}

bool dp_cors_enabled(const dp_cors_policy_t *p, uint64_t random)
{
    return !p->has_filter_enabled || percent_hit(p->filter_enabled, random);
}

bool dp_cors_shadow_enabled(const dp_cors_policy_t *p, uint64_t random)
{
    return p->has_shadow_enabled && percent_hit(p->shadow_enabled, random);
}

dp_cors_state_t dp_cors_decide(const dp_cors_policy_t *p, const dp_http_head_t *req,
                               uint64_t r_enabled, uint64_t r_shadow)
{
    dp_cors_state_t st = {.verdict = DP_CORS_PASS};
    if (p == NULL || req == NULL)
        return st;
    bool enabled = dp_cors_enabled(p, r_enabled);
    bool shadow = dp_cors_shadow_enabled(p, r_shadow);
    if (!enabled && !shadow)
        return st;
    const dp_header_t *o = DP_HDR_GET(&req->headers, "origin");
    if (o == NULL || o->value.n == 0)
        return st;
    st.has_origin = true;
    st.origin_allowed = dp_cors_origin_allowed(p, o->value);
    if (st.origin_allowed)
        st.origin = o->value;
    /* filter_enabled takes precedence over shadow_enabled (Envoy's docs). */
    if (!enabled)
        return st;
    st.verdict = DP_CORS_SIMPLE;
    if (!DP_STR_EQ(req->method, "OPTIONS"))
        return st;
    const dp_header_t *m = DP_HDR_GET(&req->headers, "access-control-request-method");
    if (m == NULL || m->value.n == 0)
        return st;
    if (!st.origin_allowed && p->forward_not_matching_preflights)
        return st;
    st.verdict = DP_CORS_PREFLIGHT;
    return st;
}

static void set(dp_http_head_t *h, dp_pool_t *pool, const char *name, dp_str_t v)
{
    dp_headers_set(&h->headers, pool, name, strlen(name), v.p ? v.p : "", v.n);
}

dp_http_head_t *dp_cors_preflight_head(const dp_cors_policy_t *p, const dp_cors_state_t *st,
                                       const dp_http_head_t *req, dp_pool_t *pool)
{
    dp_http_head_t *h = dp_pool_calloc(pool, sizeof(*h));
    h->status = 200;
    h->content_length = 0;
    if (st->origin_allowed)
        set(h, pool, "access-control-allow-origin", st->origin);
    if (p->allow_credentials)
        set(h, pool, "access-control-allow-credentials", DP_STR("true"));
    if (p->allow_methods.n) {
        dp_str_t v = p->allow_methods;
        if (DP_STR_EQ(v, "*")) {
            const dp_header_t *e = DP_HDR_GET(&req->headers, "access-control-request-method");
            v = e ? e->value : DP_STR("");
        }
        set(h, pool, "access-control-allow-methods", v);
    }
    if (p->allow_headers.n) {
        dp_str_t v = p->allow_headers;
        if (DP_STR_EQ(v, "*")) {
            const dp_header_t *e = DP_HDR_GET(&req->headers, "access-control-request-headers");
            v = e ? e->value : DP_STR("");
        }
        set(h, pool, "access-control-allow-headers", v);
    }
    if (p->max_age.n)
        set(h, pool, "access-control-max-age", p->max_age);
    if (p->allow_private_network_access) {
        const dp_header_t *e = DP_HDR_GET(&req->headers, "access-control-request-private-network");
        if (e && DP_STR_EQ(e->value, "true"))
            set(h, pool, "access-control-allow-private-network", DP_STR("true"));
    }
    dp_headers_add_ref(&h->headers, pool, DP_STR("content-length"), DP_STR("0"));
    return h;
}

void dp_cors_decorate_response(const dp_cors_policy_t *p, const dp_cors_state_t *st,
                               dp_http_head_t *resp, dp_pool_t *pool)
{
    if (st->verdict != DP_CORS_SIMPLE || !st->origin_allowed)
        return;
    set(resp, pool, "access-control-allow-origin", st->origin);
    if (p->allow_credentials)
        set(resp, pool, "access-control-allow-credentials", DP_STR("true"));
    if (p->expose_headers.n)
        set(resp, pool, "access-control-expose-headers", p->expose_headers);
}
