/* The CORS filter's config half and decisions: CorsPolicy written as Istio sends it (JSON,
 * packed, built by handlers_config_new), origin matching, and the preflight and simple
 * response headers as pure functions over request heads. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "envoy/extensions/filters/http/cors/v3/cors.pb-c.h"
#include "handlers/config.h"
#include "handlers/cors/cors.h"
#include "protos/registry.h"
#include "tests/unit/check_run.h"
#include "xds/pbjson.h"

static dp_arena_t *arena;
static dp_stats_t *stats;
static dp_pool_t *pool;

static void setup(void)
{
    arena = dp_arena_new();
    stats = dp_stats_new();
    pool = dp_pool_new();
}

static void teardown(void)
{
    dp_arena_free(arena);
    dp_stats_free(stats);
    dp_pool_free(pool);
}

static int build_ex(const char *type_url, const ProtobufCMessageDescriptor *d, const char *json,
                    bool per_route, const void **ret, char **reterr)
{
    const pbjson_opts_t opts = {.resolve = pb_registry_find_type_url};
    ProtobufCMessage *m = NULL;
    pbjson_diag_t *diag = pbjson_diag_new();
    int rc = pbjson_parse(json, strlen(json), "test", d, &opts, &m, diag);
    for (size_t i = 0; rc && i < pbjson_diag_size(diag); i++)
        fprintf(stderr, "%s\n", pbjson_diag_at(diag, i, NULL));
    pbjson_diag_free(diag);
    ck_assert_int_eq(rc, 0);
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    protobuf_c_message_pack(m, buf);
    protobuf_c_message_free_unpacked(m, NULL);
    handlers_config_ctx_t ctx = {
        .arena = arena,
        .stats = per_route ? NULL : stats,
        .stat_prefix = per_route ? NULL : "inbound_0.0.0.0_8080",
        .filter_name = "envoy.filters.http.cors",
        .per_route = per_route,
    };
    char *err = NULL;
    rc = handlers_config_new(&ctx, type_url, buf, len, ret, &err);
    free(buf);
    if (reterr)
        *reterr = err;
    else
        free(err);
    return rc;
}

static const dp_cors_policy_t *policy(const char *json)
{
    const void *c = NULL;
    char *err = NULL;
    int rc = build_ex(DP_CORS_POLICY_TYPE_URL,
                      &envoy__extensions__filters__http__cors__v3__cors_policy__descriptor, json,
                      true, &c, &err);
    if (rc)
        fprintf(stderr, "config error: %s\n", err);
    free(err);
    ck_assert_int_eq(rc, 0);
    return c;
}

/* Istio's corsPolicy translation (route.go translateCORSPolicy). */
static const char *istio_policy =
    "{\"allow_origin_string_match\": [{\"exact\": \"https://app.example.com\"},"
    " {\"prefix\": \"https://dev.\"}, {\"safe_regex\": {\"regex\": "
    "\"https://[a-z]+\\\\.corp\\\\.io\"}}],"
    " \"allow_methods\": \"GET,POST,PUT\", \"allow_headers\": \"x-custom,content-type\","
    " \"expose_headers\": \"x-reply,x-trace\", \"max_age\": \"86400\","
    " \"allow_credentials\": true,"
    " \"filter_enabled\": {\"default_value\": {\"numerator\": 100, \"denominator\": \"HUNDRED\"}},"
    " \"forward_not_matching_preflights\": true}";

static dp_http_head_t *request(const char *method, const char *const *kv)
{
    dp_http_head_t *h = dp_pool_calloc(pool, sizeof(*h));
    h->method = (dp_str_t){method, strlen(method)};
    h->path = DP_STR("/");
    h->authority = DP_STR("svc");
    h->content_length = -1;
    for (size_t i = 0; kv && kv[i]; i += 2)
        dp_headers_add(&h->headers, pool, kv[i], strlen(kv[i]), kv[i + 1], strlen(kv[i + 1]));
    return h;
}

static void expect_header(const dp_http_head_t *h, const char *name, const char *value)
{
    const dp_header_t *e = dp_headers_get(&h->headers, name, strlen(name));
    if (value == NULL) {
        ck_assert_msg(e == NULL, "%s present", name);
        return;
    }
    ck_assert_msg(e != NULL, "%s missing", name);
    ck_assert_msg(e->value.n == strlen(value) && memcmp(e->value.p, value, e->value.n) == 0,
                  "%s: '%.*s', expected '%s'", name, (int)e->value.n, e->value.p, value);
}

START_TEST(istio_policy_decodes)
{
    const dp_cors_policy_t *p = policy(istio_policy);
    ck_assert_uint_eq(p->magic, DP_CORS_MAGIC_POLICY);
    ck_assert_uint_eq(p->n_origins, 3);
    ck_assert_int_eq(p->origins[0].kind, DP_SM_EXACT);
    ck_assert_int_eq(p->origins[1].kind, DP_SM_PREFIX);
    ck_assert_int_eq(p->origins[2].kind, DP_SM_REGEX);
    ck_assert(DP_STR_EQ(p->allow_methods, "GET,POST,PUT"));
    ck_assert(DP_STR_EQ(p->allow_headers, "x-custom,content-type"));
    ck_assert(DP_STR_EQ(p->expose_headers, "x-reply,x-trace"));
    ck_assert(DP_STR_EQ(p->max_age, "86400"));
    ck_assert(p->allow_credentials);
    ck_assert(!p->allow_private_network_access);
    ck_assert(p->forward_not_matching_preflights);
    ck_assert(p->has_filter_enabled);
    ck_assert_uint_eq(p->filter_enabled.numerator, 100);
    ck_assert_uint_eq(p->filter_enabled.denominator, 100);
    ck_assert(!p->has_shadow_enabled);
    /* defaults */
    p = policy("{}");
    ck_assert(p->forward_not_matching_preflights);
    ck_assert(!p->allow_credentials);
    ck_assert(dp_cors_enabled(p, 12345));
    ck_assert(!dp_cors_shadow_enabled(p, 12345));
    ck_assert_uint_eq(p->allow_methods.n, 0);
}
END_TEST

START_TEST(listener_level)
{
    const void *c = NULL;
    ck_assert_int_eq(build_ex(DP_CORS_TYPE_URL,
                              &envoy__extensions__filters__http__cors__v3__cors__descriptor, "{}",
                              false, &c, NULL),
                     0);
    const dp_cors_conf_t *lc = c;
    ck_assert_uint_eq(lc->magic, DP_CORS_MAGIC_CONF);
    ck_assert_str_eq(lc->filter_name, "envoy.filters.http.cors");
    ck_assert_ptr_eq(lc->origin_valid,
                     dp_stats_counter(stats, "http.inbound_0.0.0.0_8080.cors.origin_valid"));
    ck_assert_ptr_eq(lc->origin_invalid,
                     dp_stats_counter(stats, "http.inbound_0.0.0.0_8080.cors.origin_invalid"));
    /* each message at its own level only */
    char *err = NULL;
    ck_assert_int_eq(build_ex(DP_CORS_POLICY_TYPE_URL,
                              &envoy__extensions__filters__http__cors__v3__cors_policy__descriptor,
                              "{}", false, &c, &err),
                     -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "CorsPolicy"));
    free(err);
    ck_assert_int_eq(build_ex(DP_CORS_TYPE_URL,
                              &envoy__extensions__filters__http__cors__v3__cors__descriptor, "{}",
                              true, &c, &err),
                     -EINVAL);
    free(err);
}
END_TEST

START_TEST(config_errors)
{
    const void *c = NULL;
    char *err = NULL;
    const ProtobufCMessageDescriptor *d =
        &envoy__extensions__filters__http__cors__v3__cors_policy__descriptor;
    ck_assert_int_eq(build_ex(DP_CORS_POLICY_TYPE_URL, d,
                              "{\"allow_origin_string_match\": [{\"ignore_case\": true}]}", true,
                              &c, &err),
                     -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "allow_origin_string_match[0]"));
    free(err);
    ck_assert_int_eq(build_ex(DP_CORS_POLICY_TYPE_URL, d,
                              "{\"allow_origin_string_match\": [{\"exact\": \"a\"}, "
                              "{\"safe_regex\": {\"regex\": \"[\"}}]}",
                              true, &c, &err),
                     -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "allow_origin_string_match[1]"));
    free(err);
}
END_TEST

START_TEST(origin_matching)
{
    const dp_cors_policy_t *p = policy(istio_policy);
    ck_assert(dp_cors_origin_allowed(p, DP_STR("https://app.example.com")));
    ck_assert(!dp_cors_origin_allowed(p, DP_STR("https://app.example.com.evil")));
    ck_assert(!dp_cors_origin_allowed(p, DP_STR("https://APP.example.com")));
    ck_assert(dp_cors_origin_allowed(p, DP_STR("https://dev.anything")));
    ck_assert(dp_cors_origin_allowed(p, DP_STR("https://team.corp.io")));
    /* regexes match the whole origin */
    ck_assert(!dp_cors_origin_allowed(p, DP_STR("https://team.corp.io.evil")));
    ck_assert(!dp_cors_origin_allowed(p, DP_STR("xhttps://team.corp.io")));
    ck_assert(!dp_cors_origin_allowed(p, DP_STR("https://Team.corp.io")));
    ck_assert(!dp_cors_origin_allowed(p, DP_STR("")));
    /* invalid UTF-8 never matches a regex */
    ck_assert(!dp_cors_origin_allowed(p, DP_STR("https://\xff.corp.io")));

    const dp_cors_policy_t *q =
        policy("{\"allow_origin_string_match\": [{\"suffix\": \".EXAMPLE.org\", \"ignore_case\": "
               "true}, {\"contains\": \"staging\"}]}");
    ck_assert(dp_cors_origin_allowed(q, DP_STR("https://a.example.ORG")));
    ck_assert(dp_cors_origin_allowed(q, DP_STR("http://my-staging-box")));
    ck_assert(!dp_cors_origin_allowed(q, DP_STR("https://example.org")));
    /* a matcher that takes "*" allows every origin (Envoy) */
    const dp_cors_policy_t *star = policy("{\"allow_origin_string_match\": [{\"exact\": \"*\"}]}");
    ck_assert(dp_cors_origin_allowed(star, DP_STR("https://whatever")));
    const dp_cors_policy_t *re_all =
        policy("{\"allow_origin_string_match\": [{\"safe_regex\": {\"regex\": \".*\"}}]}");
    ck_assert(dp_cors_origin_allowed(re_all, DP_STR("null")));
    /* no matchers: nothing is allowed */
    ck_assert(!dp_cors_origin_allowed(policy("{}"), DP_STR("https://app.example.com")));
}
END_TEST

START_TEST(preflight_allowed)
{
    const dp_cors_policy_t *p = policy(istio_policy);
    const char *kv[] = {"origin", "https://app.example.com",        "access-control-request-method",
                        "PUT",    "access-control-request-headers", "x-custom",
                        NULL};
    dp_http_head_t *req = request("OPTIONS", kv);
    dp_cors_state_t st = dp_cors_decide(p, req, 0, 0);
    ck_assert_int_eq(st.verdict, DP_CORS_PREFLIGHT);
    ck_assert(st.has_origin);
    ck_assert(st.origin_allowed);
    dp_http_head_t *h = dp_cors_preflight_head(p, &st, req, pool);
    ck_assert_int_eq(h->status, 200);
    expect_header(h, "access-control-allow-origin", "https://app.example.com");
    expect_header(h, "access-control-allow-methods", "GET,POST,PUT");
    expect_header(h, "access-control-allow-headers", "x-custom,content-type");
    expect_header(h, "access-control-max-age", "86400");
    expect_header(h, "access-control-allow-credentials", "true");
    expect_header(h, "access-control-expose-headers", NULL);
    expect_header(h, "content-length", "0");
    /* the preflight's own response is not decorated again */
    dp_cors_decorate_response(p, &st, h, pool);
    expect_header(h, "access-control-expose-headers", NULL);
}
END_TEST

START_TEST(preflight_star_and_private_network)
{
    const dp_cors_policy_t *p =
        policy("{\"allow_origin_string_match\": [{\"exact\": \"https://a\"}], \"allow_methods\":"
               " \"*\", \"allow_headers\": \"*\", \"allow_private_network_access\": true}");
    const char *kv[] = {"origin",
                        "https://a",
                        "access-control-request-method",
                        "DELETE",
                        "access-control-request-headers",
                        "x-one,x-two",
                        "access-control-request-private-network",
                        "true",
                        NULL};
    dp_http_head_t *req = request("OPTIONS", kv);
    dp_cors_state_t st = dp_cors_decide(p, req, 0, 0);
    ck_assert_int_eq(st.verdict, DP_CORS_PREFLIGHT);
    dp_http_head_t *h = dp_cors_preflight_head(p, &st, req, pool);
    expect_header(h, "access-control-allow-methods", "DELETE");
    expect_header(h, "access-control-allow-headers", "x-one,x-two");
    expect_header(h, "access-control-allow-private-network", "true");
    expect_header(h, "access-control-allow-credentials", NULL);
    expect_header(h, "access-control-max-age", NULL);
}
END_TEST

START_TEST(preflight_not_matching)
{
    const char *kv[] = {"origin", "https://evil", "access-control-request-method", "GET", NULL};
    /* forwarded by default */
    const dp_cors_policy_t *p = policy(istio_policy);
    dp_http_head_t *req = request("OPTIONS", kv);
    dp_cors_state_t st = dp_cors_decide(p, req, 0, 0);
    ck_assert_int_eq(st.verdict, DP_CORS_SIMPLE);
    ck_assert(st.has_origin);
    ck_assert(!st.origin_allowed);
    dp_http_head_t *resp = request("", NULL);
    resp->status = 204;
    dp_cors_decorate_response(p, &st, resp, pool);
    expect_header(resp, "access-control-allow-origin", NULL);
    /* answered here, without access-control-allow-origin, when not forwarded */
    const dp_cors_policy_t *q = policy(
        "{\"allow_origin_string_match\": [{\"exact\": \"https://a\"}], \"allow_methods\": \"GET\","
        " \"forward_not_matching_preflights\": false}");
    st = dp_cors_decide(q, req, 0, 0);
    ck_assert_int_eq(st.verdict, DP_CORS_PREFLIGHT);
    dp_http_head_t *h = dp_cors_preflight_head(q, &st, req, pool);
    ck_assert_int_eq(h->status, 200);
    expect_header(h, "access-control-allow-origin", NULL);
    expect_header(h, "access-control-allow-methods", "GET");
}
END_TEST

START_TEST(simple_requests)
{
    const dp_cors_policy_t *p = policy(istio_policy);
    const char *kv[] = {"origin", "https://dev.x", NULL};
    dp_http_head_t *req = request("GET", kv);
    dp_cors_state_t st = dp_cors_decide(p, req, 0, 0);
    ck_assert_int_eq(st.verdict, DP_CORS_SIMPLE);
    dp_http_head_t *resp = request("", NULL);
    resp->status = 200;
    dp_headers_add(&resp->headers, pool, "access-control-allow-origin", 27, "*", 1);
    dp_cors_decorate_response(p, &st, resp, pool);
    /* the upstream's value replaced by the request's origin */
    expect_header(resp, "access-control-allow-origin", "https://dev.x");
    ck_assert_uint_eq(dp_headers_remove(&resp->headers, "access-control-allow-origin", 27), 1);
    expect_header(resp, "access-control-allow-credentials", "true");
    expect_header(resp, "access-control-expose-headers", "x-reply,x-trace");
    expect_header(resp, "access-control-allow-methods", NULL);

    /* OPTIONS without access-control-request-method is no preflight */
    dp_http_head_t *opt = request("OPTIONS", kv);
    ck_assert_int_eq(dp_cors_decide(p, opt, 0, 0).verdict, DP_CORS_SIMPLE);
    /* no origin, or an empty one: not a CORS request, not counted */
    st = dp_cors_decide(p, request("GET", NULL), 0, 0);
    ck_assert_int_eq(st.verdict, DP_CORS_PASS);
    ck_assert(!st.has_origin);
    const char *empty[] = {"origin", "", NULL};
    ck_assert(!dp_cors_decide(p, request("GET", empty), 0, 0).has_origin);
    /* no policy for the route */
    ck_assert_int_eq(dp_cors_decide(NULL, req, 0, 0).verdict, DP_CORS_PASS);
}
END_TEST

START_TEST(enabled_and_shadow)
{
    const char *kv[] = {"origin", "https://a", "access-control-request-method", "GET", NULL};
    dp_http_head_t *req = request("OPTIONS", kv);
    /* filter_enabled 0%: nothing, unless shadow mode counts the origin */
    const dp_cors_policy_t *off =
        policy("{\"allow_origin_string_match\": [{\"exact\": \"https://a\"}], "
               "\"filter_enabled\": {\"default_value\": {\"numerator\": 0}}}");
    dp_cors_state_t st = dp_cors_decide(off, req, 5, 5);
    ck_assert_int_eq(st.verdict, DP_CORS_PASS);
    ck_assert(!st.has_origin);
    const dp_cors_policy_t *shadow =
        policy("{\"allow_origin_string_match\": [{\"exact\": \"https://a\"}], "
               "\"filter_enabled\": {\"default_value\": {\"numerator\": 0}},"
               "\"shadow_enabled\": {\"default_value\": {\"numerator\": 100}}}");
    st = dp_cors_decide(shadow, req, 5, 5);
    ck_assert_int_eq(st.verdict, DP_CORS_PASS);
    ck_assert(st.has_origin);
    ck_assert(st.origin_allowed);
    /* 50% of ten thousand over draws */
    const dp_cors_policy_t *half =
        policy("{\"allow_origin_string_match\": [{\"exact\": \"https://a\"}], "
               "\"filter_enabled\": {\"default_value\": {\"numerator\": 5000, \"denominator\": "
               "\"TEN_THOUSAND\"}}}");
    ck_assert_int_eq(dp_cors_decide(half, req, 4999, 0).verdict, DP_CORS_PREFLIGHT);
    ck_assert_int_eq(dp_cors_decide(half, req, 5000, 0).verdict, DP_CORS_PASS);
    ck_assert_int_eq(dp_cors_decide(half, req, 10000 + 4999, 0).verdict, DP_CORS_PREFLIGHT);
}
END_TEST

/* ---- the filter on hand-built streams ----
 *
 * A loopback harness in place of the connection manager (dataplane/hcm.c): the stream
 * functions the filter calls record what it did. */

static struct {
    const void *route_conf; /* what dp_stream_route_config answers for route_name */
    const char *route_name;
    dp_http_head_t *sent;
    bool sent_end;
} H;

int dp_stream_encode_headers(dp_stream_t *s, dp_http_head_t *h, bool end_stream)
{
    H.sent = h;
    H.sent_end = end_stream;
    return 0;
}

const void *dp_stream_route_config(const dp_stream_t *s, const char *filter_name)
{
    return H.route_name && strcmp(filter_name, H.route_name) == 0 ? H.route_conf : NULL;
}

uint64_t dp_wctx_random(dp_wctx_t *w)
{
    return ++w->rng;
}

static dp_wctx_t wctx;

static dp_stream_t *stream(const char *method, const char *const *kv)
{
    dp_stream_t *s = dp_pool_calloc(pool, sizeof(*s));
    s->pool = pool;
    s->w = &wctx;
    s->req = request(method, kv);
    return s;
}

static const dp_cors_conf_t *listener_conf(void)
{
    const void *c = NULL;
    ck_assert_int_eq(build_ex(DP_CORS_TYPE_URL,
                              &envoy__extensions__filters__http__cors__v3__cors__descriptor, "{}",
                              false, &c, NULL),
                     0);
    return c;
}

START_TEST(filter_preflight_and_simple)
{
    memset(&H, 0, sizeof(H));
    const dp_cors_conf_t *lc = listener_conf();
    H.route_name = "envoy.filters.http.cors";
    H.route_conf = policy(istio_policy);
    /* preflight: answered here */
    const char *pre[] = {"origin", "https://app.example.com", "access-control-request-method",
                         "GET", NULL};
    dp_stream_t *s = stream("OPTIONS", pre);
    void *ctx = dp_pool_calloc(pool, dp_cors_filter.ctx_size);
    ck_assert_int_eq(dp_cors_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_STOP);
    ck_assert_ptr_nonnull(H.sent);
    ck_assert(H.sent_end);
    ck_assert_int_eq(H.sent->status, 200);
    expect_header(H.sent, "access-control-allow-origin", "https://app.example.com");
    /* the connection manager runs on_response_headers over it: nothing more is added */
    dp_cors_filter.on_response_headers(s, ctx, lc, H.sent, true);
    expect_header(H.sent, "access-control-expose-headers", NULL);
    ck_assert_uint_eq(dp_counter_value(lc->origin_valid), 1);

    /* a simple request: forwarded, its response decorated */
    const char *simple[] = {"origin", "https://app.example.com", NULL};
    s = stream("GET", simple);
    ctx = dp_pool_calloc(pool, dp_cors_filter.ctx_size);
    H.sent = NULL;
    ck_assert_int_eq(dp_cors_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_CONTINUE);
    ck_assert_ptr_null(H.sent);
    dp_http_head_t *resp = request("", NULL);
    resp->status = 200;
    dp_cors_filter.on_response_headers(s, ctx, lc, resp, false);
    expect_header(resp, "access-control-allow-origin", "https://app.example.com");
    expect_header(resp, "access-control-expose-headers", "x-reply,x-trace");
    ck_assert_uint_eq(dp_counter_value(lc->origin_valid), 2);

    /* an origin not allowed: counted, forwarded, not decorated */
    const char *bad[] = {"origin", "https://evil", "access-control-request-method", "GET", NULL};
    s = stream("OPTIONS", bad);
    ctx = dp_pool_calloc(pool, dp_cors_filter.ctx_size);
    ck_assert_int_eq(dp_cors_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_CONTINUE);
    resp = request("", NULL);
    resp->status = 200;
    dp_cors_filter.on_response_headers(s, ctx, lc, resp, false);
    expect_header(resp, "access-control-allow-origin", NULL);
    ck_assert_uint_eq(dp_counter_value(lc->origin_invalid), 1);
}
END_TEST

START_TEST(filter_without_policy)
{
    memset(&H, 0, sizeof(H));
    const dp_cors_conf_t *lc = listener_conf();
    const char *pre[] = {"origin", "https://app.example.com", "access-control-request-method",
                         "GET", NULL};
    dp_stream_t *s = stream("OPTIONS", pre);
    void *ctx = dp_pool_calloc(pool, dp_cors_filter.ctx_size);
    ck_assert_int_eq(dp_cors_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_CONTINUE);
    dp_http_head_t *resp = request("", NULL);
    resp->status = 200;
    dp_cors_filter.on_response_headers(s, ctx, lc, resp, false);
    ck_assert_uint_eq(resp->headers.n, 0);
    ck_assert_uint_eq(dp_counter_value(lc->origin_valid), 0);
    /* a config of another kind under the filter's name is not read as a policy */
    static const uint32_t other[32] = {0x1};
    H.route_name = "envoy.filters.http.cors";
    H.route_conf = other;
    ctx = dp_pool_calloc(pool, dp_cors_filter.ctx_size);
    ck_assert_int_eq(dp_cors_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_CONTINUE);
    ck_assert_ptr_null(H.sent);
    /* no listener-level conf: the default name, no stats */
    H.route_conf = policy(istio_policy);
    ctx = dp_pool_calloc(pool, dp_cors_filter.ctx_size);
    ck_assert_int_eq(dp_cors_filter.on_request_headers(s, ctx, NULL, true), DP_FILTER_STOP);
    ck_assert_ptr_nonnull(H.sent);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("cors");
    TCase *tc = tcase_create("cors");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, istio_policy_decodes);
    tcase_add_test(tc, listener_level);
    tcase_add_test(tc, config_errors);
    tcase_add_test(tc, origin_matching);
    tcase_add_test(tc, preflight_allowed);
    tcase_add_test(tc, preflight_star_and_private_network);
    tcase_add_test(tc, preflight_not_matching);
    tcase_add_test(tc, simple_requests);
    tcase_add_test(tc, enabled_and_shadow);
    tcase_add_test(tc, filter_preflight_and_simple);
    tcase_add_test(tc, filter_without_policy);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(suite());
}
