/* The fault filter's config half and decisions: HTTPFault written in the proto3 JSON mapping
 * (as Istio sends it), packed, and built by dp_fault_config_new; the percentage draw over many
 * deterministic random numbers; the x-envoy-fault-* header controls; header matchers; and the
 * filter itself on hand-built streams with a real libuv loop for the delay. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "envoy/extensions/filters/http/fault/v3/fault.pb-c.h"
#include "handlers/config.h"
#include "handlers/fault/fault.h"
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

/* JSON → HTTPFault → wire bytes → dp_fault_config_new. */
static int build_ex(const char *json, bool per_route, const char *prefix,
                    const dp_fault_conf_t **ret, char **reterr)
{
    const pbjson_opts_t opts = {.resolve = pb_registry_find_type_url};
    pbjson_diag_t *diag = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    int rc = pbjson_parse(json, strlen(json), "test",
                          &envoy__extensions__filters__http__fault__v3__httpfault__descriptor,
                          &opts, &m, diag);
    if (rc != 0) {
        for (size_t i = 0; i < pbjson_diag_size(diag); i++)
            fprintf(stderr, "%s\n", pbjson_diag_at(diag, i, NULL));
    }
    pbjson_diag_free(diag);
    ck_assert_int_eq(rc, 0);
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    protobuf_c_message_pack(m, buf);
    protobuf_c_message_free_unpacked(m, NULL);
    handlers_config_ctx_t ctx = {
        .arena = arena,
        .stats = per_route ? NULL : stats,
        .stat_prefix = per_route ? NULL : prefix,
        .filter_name = "envoy.filters.http.fault",
        .per_route = per_route,
    };
    const void *conf = NULL;
    char *err = NULL;
    rc = handlers_config_new(&ctx, DP_FAULT_TYPE_URL, buf, len, &conf, &err);
    free(buf);
    if (rc == 0)
        *ret = conf;
    if (reterr)
        *reterr = err;
    else
        free(err);
    return rc;
}

static const dp_fault_conf_t *build(const char *json)
{
    const dp_fault_conf_t *c = NULL;
    char *err = NULL;
    int rc = build_ex(json, true, NULL, &c, &err);
    if (rc)
        fprintf(stderr, "config error: %s\n", err);
    free(err);
    ck_assert_int_eq(rc, 0);
    ck_assert_ptr_nonnull(c);
    return c;
}

static void expect_error(const char *json, const char *needle)
{
    const dp_fault_conf_t *c = NULL;
    char *err = NULL;
    ck_assert_int_eq(build_ex(json, false, "p", &c, &err), -EINVAL);
    ck_assert_ptr_nonnull(err);
    ck_assert_msg(strstr(err, needle) != NULL, "'%s' does not name '%s'", err, needle);
    free(err);
}

/* xorshift64*: deterministic draws (the worker's generator is the same kind). */
static uint64_t rng_state;
static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static dp_http_head_t *request(const char *const *kv)
{
    dp_http_head_t *h = dp_pool_calloc(pool, sizeof(*h));
    h->method = DP_STR("GET");
    h->path = DP_STR("/api/v1");
    h->authority = DP_STR("svc.local");
    h->scheme = DP_STR("http");
    h->content_length = -1;
    for (size_t i = 0; kv && kv[i]; i += 2)
        dp_headers_add(&h->headers, pool, kv[i], strlen(kv[i]), kv[i + 1], strlen(kv[i + 1]));
    return h;
}

/* ---- Istio's HTTPFault shapes ---- */

START_TEST(istio_delay)
{
    /* VirtualService fault.delay{fixedDelay: 5s, percentage: 50} */
    const dp_fault_conf_t *c = build("{\"delay\": {\"fixed_delay\": \"5s\", \"percentage\": "
                                     "{\"numerator\": 500000, \"denominator\": \"MILLION\"}}}");
    ck_assert(c->has_delay);
    ck_assert(!c->delay_from_header);
    ck_assert_uint_eq(c->delay_ms, 5000);
    ck_assert_uint_eq(c->delay_percent.numerator, 500000);
    ck_assert_uint_eq(c->delay_percent.denominator, 1000000);
    ck_assert_int_eq(c->abort_kind, DP_FAULT_ABORT_NONE);
    ck_assert_uint_eq(c->n_headers, 0);
    ck_assert(!c->has_max_active_faults);
    ck_assert_str_eq(c->filter_name, "envoy.filters.http.fault");
    ck_assert(c->per_route);
    ck_assert_ptr_null(c->stats.delays_injected);
    /* fractions of a second */
    c = build("{\"delay\": {\"fixed_delay\": \"0.200s\", \"percentage\": "
              "{\"numerator\": 1000000, \"denominator\": \"MILLION\"}}}");
    ck_assert_uint_eq(c->delay_ms, 200);
    ck_assert_uint_eq(dp_fault_delay_ms(c, NULL, 12345), 200);
}
END_TEST

START_TEST(istio_abort_http)
{
    const dp_fault_conf_t *c = build("{\"abort\": {\"http_status\": 503, \"percentage\": "
                                     "{\"numerator\": 1000000, \"denominator\": \"MILLION\"}}}");
    ck_assert(!c->has_delay);
    ck_assert_int_eq(c->abort_kind, DP_FAULT_ABORT_HTTP);
    ck_assert_uint_eq(c->abort_http_status, 503);
    ck_assert_uint_eq(c->abort_percent.numerator, 1000000);
    int http = 0, grpc = 0;
    ck_assert(dp_fault_abort_status(c, NULL, 987654321, &http, &grpc));
    ck_assert_int_eq(http, 503);
    ck_assert_int_eq(grpc, -1);
    ck_assert_uint_eq(dp_fault_delay_ms(c, NULL, 1), 0);
}
END_TEST

START_TEST(istio_abort_grpc)
{
    const dp_fault_conf_t *c = build("{\"abort\": {\"grpc_status\": 14, \"percentage\": "
                                     "{\"numerator\": 1000000, \"denominator\": \"MILLION\"}}}");
    ck_assert_int_eq(c->abort_kind, DP_FAULT_ABORT_GRPC);
    ck_assert_uint_eq(c->abort_grpc_status, 14);
    int http = 0, grpc = 0;
    ck_assert(dp_fault_abort_status(c, NULL, 42, &http, &grpc));
    ck_assert_int_eq(http, 200);
    ck_assert_int_eq(grpc, 14);
    /* grpc_status 0 (OK) is a value of the oneof, not unset */
    c = build("{\"abort\": {\"grpc_status\": 0, \"percentage\": {\"numerator\": 100}}}");
    ck_assert_int_eq(c->abort_kind, DP_FAULT_ABORT_GRPC);
    ck_assert(dp_fault_abort_status(c, NULL, 42, &http, &grpc));
    ck_assert_int_eq(grpc, 0);
}
END_TEST

START_TEST(istio_delay_and_abort)
{
    const dp_fault_conf_t *c =
        build("{\"delay\": {\"fixed_delay\": \"0.100s\", \"percentage\": {\"numerator\": 1000000,"
              " \"denominator\": \"MILLION\"}}, \"abort\": {\"http_status\": 418, \"percentage\": "
              "{\"numerator\": 250000, \"denominator\": \"MILLION\"}}}");
    ck_assert(c->has_delay);
    ck_assert_uint_eq(c->delay_ms, 100);
    ck_assert_int_eq(c->abort_kind, DP_FAULT_ABORT_HTTP);
    ck_assert_uint_eq(c->abort_http_status, 418);
    ck_assert_uint_eq(c->abort_percent.numerator, 250000);
    ck_assert_uint_eq(c->abort_percent.denominator, 1000000);
}
END_TEST

START_TEST(denominators_and_defaults)
{
    /* the deprecated integer percent becomes HUNDRED (the default denominator) */
    const dp_fault_conf_t *c =
        build("{\"abort\": {\"http_status\": 500, \"percentage\": {\"numerator\": 30}}}");
    ck_assert_uint_eq(c->abort_percent.numerator, 30);
    ck_assert_uint_eq(c->abort_percent.denominator, 100);
    c = build("{\"abort\": {\"http_status\": 500, \"percentage\": {\"numerator\": 30, "
              "\"denominator\": \"TEN_THOUSAND\"}}}");
    ck_assert_uint_eq(c->abort_percent.denominator, 10000);
    /* no percentage: 0%, as Envoy's default FractionalPercent */
    c = build("{\"abort\": {\"http_status\": 500}}");
    ck_assert_uint_eq(c->abort_percent.numerator, 0);
    int http, grpc;
    ck_assert(!dp_fault_abort_status(c, NULL, 0, &http, &grpc));
    /* an empty HTTPFault (the listener-level one Istio sends) does nothing */
    c = build("{}");
    ck_assert(!c->has_delay);
    ck_assert_int_eq(c->abort_kind, DP_FAULT_ABORT_NONE);
    ck_assert_uint_eq(dp_fault_delay_ms(c, NULL, 0), 0);
    ck_assert(!dp_fault_abort_status(c, NULL, 0, &http, &grpc));
}
END_TEST

START_TEST(listener_level_stats)
{
    const dp_fault_conf_t *c = NULL;
    ck_assert_int_eq(build_ex("{}", false, "outbound_0.0.0.0_80", &c, NULL), 0);
    ck_assert(!c->per_route);
    ck_assert_ptr_nonnull(c->active);
    ck_assert_ptr_eq(c->stats.delays_injected,
                     dp_stats_counter(stats, "http.outbound_0.0.0.0_80.fault.delays_injected"));
    ck_assert_ptr_eq(c->stats.aborts_injected,
                     dp_stats_counter(stats, "http.outbound_0.0.0.0_80.fault.aborts_injected"));
    ck_assert_ptr_eq(c->stats.faults_overflow,
                     dp_stats_counter(stats, "http.outbound_0.0.0.0_80.fault.faults_overflow"));
    ck_assert_ptr_eq(c->stats.active_faults,
                     dp_stats_gauge(stats, "http.outbound_0.0.0.0_80.fault.active_faults"));
    /* an empty typed_config (no bytes at all) is an empty HTTPFault */
    handlers_config_ctx_t ctx = {.arena = arena, .filter_name = "f", .per_route = false};
    const void *conf = NULL;
    char *err = NULL;
    ck_assert_int_eq(dp_fault_config_new(&ctx, NULL, 0, &conf, &err), 0);
    ck_assert_str_eq(((const dp_fault_conf_t *)conf)->filter_name, "f");
}
END_TEST

START_TEST(other_fields)
{
    const dp_fault_conf_t *c =
        build("{\"max_active_faults\": 3, \"downstream_nodes\": [\"a\", \"b\"], "
              "\"delay_percent_runtime\": \"x\", \"abort\": {\"header_abort\": {}, "
              "\"percentage\": {\"numerator\": 100}}, "
              "\"delay\": {\"header_delay\": {}, \"percentage\": {\"numerator\": 100}}}");
    ck_assert(c->has_max_active_faults);
    ck_assert_uint_eq(c->max_active_faults, 3);
    ck_assert_uint_eq(c->n_downstream_nodes, 2);
    ck_assert_str_eq(c->downstream_nodes[1], "b");
    ck_assert_int_eq(c->abort_kind, DP_FAULT_ABORT_HEADER);
    ck_assert(c->delay_from_header);
    /* downstream_nodes: only requests from those nodes */
    const char *from_a[] = {"x-envoy-downstream-service-node", "a", NULL};
    const char *from_c[] = {"x-envoy-downstream-service-node", "c", NULL};
    ck_assert(dp_fault_request_matches(c, request(from_a), pool));
    ck_assert(!dp_fault_request_matches(c, request(from_c), pool));
    ck_assert(!dp_fault_request_matches(c, request(NULL), pool));
}
END_TEST

START_TEST(errors)
{
    expect_error("{\"abort\": {\"http_status\": 100, \"percentage\": {\"numerator\": 1}}}",
                 "abort.http_status");
    expect_error("{\"abort\": {\"http_status\": 600}}", "abort.http_status");
    expect_error("{\"abort\": {\"percentage\": {\"numerator\": 1}}}", "abort");
    expect_error("{\"delay\": {\"percentage\": {\"numerator\": 1}}}", "delay");
    expect_error("{\"delay\": {\"fixed_delay\": \"-1s\"}}", "delay.fixed_delay");
    expect_error("{\"upstream_cluster\": \"c\"}", "upstream_cluster");
    expect_error("{\"response_rate_limit\": {\"fixed_limit\": {\"limit_kbps\": 1}}}",
                 "response_rate_limit");
    expect_error("{\"headers\": [{\"name\": \"x\", \"safe_regex_match\": {\"regex\": \"(\"}}]}",
                 "headers[0]");
    expect_error("{\"headers\": [{\"exact_match\": \"v\"}]}", "headers[0].name");
    /* bytes that are no HTTPFault */
    handlers_config_ctx_t ctx = {.arena = arena, .per_route = true};
    const void *conf = NULL;
    char *err = NULL;
    const uint8_t junk[] = {0x0a, 0x7f, 0x01};
    ck_assert_int_eq(dp_fault_config_new(&ctx, junk, sizeof(junk), &conf, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "HTTPFault"));
    free(err);
}
END_TEST

/* ---- the percentage draw ---- */

static unsigned hits(dp_fault_percent_t p, unsigned n)
{
    unsigned k = 0;
    for (unsigned i = 0; i < n; i++)
        k += dp_fault_percent_hit(p, rnd());
    return k;
}

START_TEST(percent_draws)
{
    enum {
        N = 100000
    };
    rng_state = 0x9e3779b97f4a7c15ULL;
    /* 50% of a million: the standard deviation over N draws is 158; 1000 is over 6 of them,
     * and a draw that ignored the denominator or the numerator would be far outside. */
    unsigned k = hits((dp_fault_percent_t){500000, 1000000}, N);
    ck_assert_msg(k > N / 2 - 1000 && k < N / 2 + 1000, "50%%: %u of %u", k, N);
    /* 25% of ten thousand */
    k = hits((dp_fault_percent_t){2500, 10000}, N);
    ck_assert_msg(k > N / 4 - 900 && k < N / 4 + 900, "25%%: %u of %u", k, N);
    /* 0.1% of a million: 100 expected, sd 10 */
    k = hits((dp_fault_percent_t){1000, 1000000}, N);
    ck_assert_msg(k > 50 && k < 150, "0.1%%: %u of %u", k, N);
    /* 7% of a hundred */
    k = hits((dp_fault_percent_t){7, 100}, N);
    ck_assert_msg(k > 7000 - 500 && k < 7000 + 500, "7%%: %u of %u", k, N);
    ck_assert_uint_eq(hits((dp_fault_percent_t){1000000, 1000000}, N), N);
    ck_assert_uint_eq(hits((dp_fault_percent_t){0, 1000000}, N), 0);
    ck_assert_uint_eq(hits((dp_fault_percent_t){200, 100}, 1000), 1000);
    ck_assert_uint_eq(hits((dp_fault_percent_t){5, 0}, 1000), 0);
    /* exactly Envoy's rule: random % denominator < numerator */
    ck_assert(dp_fault_percent_hit((dp_fault_percent_t){1, 100}, 100));
    ck_assert(!dp_fault_percent_hit((dp_fault_percent_t){1, 100}, 101));
    ck_assert(dp_fault_percent_hit((dp_fault_percent_t){500000, 1000000}, 1000000 + 499999));
    ck_assert(!dp_fault_percent_hit((dp_fault_percent_t){500000, 1000000}, 1000000 + 500000));
}
END_TEST

START_TEST(abort_draws_through_config)
{
    enum {
        N = 100000
    };
    rng_state = 12345;
    const dp_fault_conf_t *c = build("{\"abort\": {\"http_status\": 503, \"percentage\": "
                                     "{\"numerator\": 500000, \"denominator\": \"MILLION\"}}}");
    unsigned k = 0;
    for (unsigned i = 0; i < N; i++) {
        int http = 0, grpc = 0;
        if (dp_fault_abort_status(c, NULL, rnd(), &http, &grpc)) {
            ck_assert_int_eq(http, 503);
            k++;
        }
    }
    ck_assert_msg(k > N / 2 - 1000 && k < N / 2 + 1000, "%u of %u aborted", k, N);
    c = build("{\"delay\": {\"fixed_delay\": \"1s\", \"percentage\": {\"numerator\": 20}}}");
    k = 0;
    for (unsigned i = 0; i < N; i++)
        k += dp_fault_delay_ms(c, NULL, rnd()) == 1000;
    ck_assert_msg(k > N / 5 - 800 && k < N / 5 + 800, "%u of %u delayed", k, N);
}
END_TEST

/* ---- header controls ---- */

START_TEST(header_controls)
{
    const dp_fault_conf_t *c =
        build("{\"abort\": {\"header_abort\": {}, \"percentage\": {\"numerator\": 100}}, "
              "\"delay\": {\"header_delay\": {}, \"percentage\": {\"numerator\": 100}}}");
    int http = 0, grpc = 0;
    /* no headers: nothing */
    dp_http_head_t *r = request(NULL);
    ck_assert_uint_eq(dp_fault_delay_ms(c, &r->headers, 0), 0);
    ck_assert(!dp_fault_abort_status(c, &r->headers, 0, &http, &grpc));
    /* values given */
    const char *kv[] = {"x-envoy-fault-delay-request", "250", "x-envoy-fault-abort-request", "429",
                        NULL};
    r = request(kv);
    ck_assert_uint_eq(dp_fault_delay_ms(c, &r->headers, 0), 250);
    ck_assert(dp_fault_abort_status(c, &r->headers, 0, &http, &grpc));
    ck_assert_int_eq(http, 429);
    ck_assert_int_eq(grpc, -1);
    /* an HTTP status out of [200, 600) is ignored, then the gRPC header is read */
    const char *kv2[] = {"x-envoy-fault-abort-request", "199", "x-envoy-fault-abort-grpc-request",
                         "4", NULL};
    r = request(kv2);
    ck_assert(dp_fault_abort_status(c, &r->headers, 0, &http, &grpc));
    ck_assert_int_eq(http, 200);
    ck_assert_int_eq(grpc, 4);
    const char *kv3[] = {"x-envoy-fault-abort-request", "600", "x-envoy-fault-delay-request",
                         "12ms", NULL};
    r = request(kv3);
    ck_assert(!dp_fault_abort_status(c, &r->headers, 0, &http, &grpc));
    ck_assert_uint_eq(dp_fault_delay_ms(c, &r->headers, 0), 0);
    /* percentage headers: capped at the configured numerator */
    const char *kv4[] = {"x-envoy-fault-abort-request",
                         "503",
                         "x-envoy-fault-abort-request-percentage",
                         "0",
                         "x-envoy-fault-delay-request",
                         "10",
                         "x-envoy-fault-delay-request-percentage",
                         "1000",
                         NULL};
    r = request(kv4);
    ck_assert(!dp_fault_abort_status(c, &r->headers, 0, &http, &grpc));
    dp_fault_percent_t p =
        dp_fault_percent_from_header(c->delay_percent, &r->headers, DP_FAULT_HDR_DELAY_PERCENT,
                                     strlen(DP_FAULT_HDR_DELAY_PERCENT));
    ck_assert_uint_eq(p.numerator, 100); /* 1000 capped at 100 */
    ck_assert_uint_eq(p.denominator, 100);
    ck_assert_uint_eq(dp_fault_delay_ms(c, &r->headers, 99), 10);
    p = dp_fault_percent_from_header(c->abort_percent, &r->headers, DP_FAULT_HDR_ABORT_PERCENT,
                                     strlen(DP_FAULT_HDR_ABORT_PERCENT));
    ck_assert_uint_eq(p.numerator, 0);
    /* a percentage header of 40 over many draws gives about 40% */
    const char *kv5[] = {"x-envoy-fault-abort-request", "503",
                         "x-envoy-fault-abort-request-percentage", "40", NULL};
    r = request(kv5);
    rng_state = 777;
    unsigned k = 0;
    for (unsigned i = 0; i < 100000; i++)
        k += dp_fault_abort_status(c, &r->headers, rnd(), &http, &grpc);
    ck_assert_msg(k > 40000 - 900 && k < 40000 + 900, "%u", k);
    /* a fixed abort ignores the header controls */
    const dp_fault_conf_t *fixed = build("{\"abort\": {\"http_status\": 502, \"percentage\": "
                                         "{\"numerator\": 100}}}");
    ck_assert(dp_fault_abort_status(fixed, &r->headers, 0, &http, &grpc));
    ck_assert_int_eq(http, 502);
}
END_TEST

START_TEST(parse_uint)
{
    uint64_t v;
    ck_assert(dp_fault_parse_uint(DP_STR(" 42 "), 100, &v));
    ck_assert_uint_eq(v, 42);
    ck_assert(!dp_fault_parse_uint(DP_STR("101"), 100, &v));
    ck_assert(!dp_fault_parse_uint(DP_STR("-1"), 100, &v));
    ck_assert(!dp_fault_parse_uint(DP_STR(""), 100, &v));
    ck_assert(!dp_fault_parse_uint(DP_STR("1 2"), 100, &v));
    ck_assert(!dp_fault_parse_uint(DP_STR("99999999999999999999999"), UINT64_MAX, &v));
    ck_assert(dp_fault_parse_uint(DP_STR("18446744073709551615"), UINT64_MAX, &v));
    ck_assert(!dp_fault_parse_uint(DP_STR("18446744073709551616"), UINT64_MAX, &v));
}
END_TEST

/* ---- header matchers ---- */

START_TEST(header_matchers)
{
    const dp_fault_conf_t *c = build(
        "{\"headers\": [{\"name\": \"X-User\", \"exact_match\": \"alice\"},"
        " {\"name\": \":path\", \"prefix_match\": \"/api\"},"
        " {\"name\": \"x-trace\", \"present_match\": true},"
        " {\"name\": \"x-env\", \"string_match\": {\"suffix\": \"PROD\", \"ignore_case\": true}},"
        " {\"name\": \"x-id\", \"safe_regex_match\": {\"regex\": \"[0-9]+\"}},"
        " {\"name\": \"x-skip\", \"present_match\": true, \"invert_match\": true}]}");
    ck_assert_uint_eq(c->n_headers, 6);
    ck_assert_str_eq(c->headers[0].name.p, "x-user");
    const char *ok[] = {"x-user", "alice", "x-trace", "", "x-env", "eu-prod", "x-id", "123", NULL};
    ck_assert(dp_fault_request_matches(c, request(ok), pool));
    const char *bad_user[] = {"x-user",  "bob",  "x-trace", "",  "x-env",
                              "eu-prod", "x-id", "1",       NULL};
    ck_assert(!dp_fault_request_matches(c, request(bad_user), pool));
    const char *no_trace[] = {"x-user", "alice", "x-env", "prod", "x-id", "1", NULL};
    ck_assert(!dp_fault_request_matches(c, request(no_trace), pool));
    const char *bad_id[] = {"x-user", "alice", "x-trace", "1", "x-env",
                            "prod",   "x-id",  "12a",     NULL};
    ck_assert(!dp_fault_request_matches(c, request(bad_id), pool));
    const char *skip[] = {"x-user", "alice", "x-trace", "1", "x-env", "prod",
                          "x-id",   "1",     "x-skip",  "1", NULL};
    ck_assert(!dp_fault_request_matches(c, request(skip), pool));
    dp_http_head_t *r = request(ok);
    r->path = DP_STR("/web");
    ck_assert(!dp_fault_request_matches(c, r, pool));

    /* repeated headers are matched joined with "," */
    const dp_fault_conf_t *j =
        build("{\"headers\": [{\"name\": \"x-v\", \"exact_match\": \"a,b\"}]}");
    const char *rep[] = {"x-v", "a", "x-v", "b", NULL};
    ck_assert(dp_fault_request_matches(j, request(rep), pool));
    /* present_match false: matches an absent header only */
    const dp_fault_conf_t *absent =
        build("{\"headers\": [{\"name\": \"x-v\", \"present_match\": false}]}");
    ck_assert(dp_fault_request_matches(absent, request(NULL), pool));
    /* range [10, 20) */
    const dp_fault_conf_t *rg = build(
        "{\"headers\": [{\"name\": \"x-n\", \"range_match\": {\"start\": 10, \"end\": 20}}]}");
    const char *n15[] = {"x-n", "15", NULL}, *n20[] = {"x-n", "20", NULL},
               *nneg[] = {"x-n", "-5", NULL};
    ck_assert(dp_fault_request_matches(rg, request(n15), pool));
    ck_assert(!dp_fault_request_matches(rg, request(n20), pool));
    ck_assert(!dp_fault_request_matches(rg, request(nneg), pool));
    /* treat_missing_header_as_empty with an inverted exact match (Istio's withoutHeaders) */
    const dp_fault_conf_t *wo =
        build("{\"headers\": [{\"name\": \"x-v\", \"exact_match\": \"no\", \"invert_match\": "
              "true, \"treat_missing_header_as_empty\": true}]}");
    const char *no[] = {"x-v", "no", NULL};
    ck_assert(dp_fault_request_matches(wo, request(NULL), pool));
    ck_assert(!dp_fault_request_matches(wo, request(no), pool));
}
END_TEST

/* ---- the filter on a hand-built stream ----
 *
 * A loopback harness in place of the connection manager (dataplane/hcm.c): the stream
 * functions the filter calls record what it did; the delay runs on a real libuv loop. */

static struct {
    const char *route_name; /* dp_stream_route_config answers route_conf for this name */
    const void *route_conf;
    int continued;
    int replied;
    int reply_status;
    const char *reply_body;
    dp_http_head_t *sent;
    bool sent_end;
} H;

void dp_stream_continue(dp_stream_t *s)
{
    H.continued++;
}

void dp_stream_local_reply(dp_stream_t *s, int status, const char *body, uint32_t flag)
{
    s->response_flags |= flag;
    H.replied++;
    H.reply_status = status;
    H.reply_body = body;
}

int dp_stream_encode_headers(dp_stream_t *s, dp_http_head_t *h, bool end_stream)
{
    H.sent = h;
    H.sent_end = end_stream;
    s->response_started = true;
    return 0;
}

const void *dp_stream_route_config(const dp_stream_t *s, const char *filter_name)
{
    return H.route_name && strcmp(filter_name, H.route_name) == 0 ? H.route_conf : NULL;
}

uint64_t dp_wctx_random(dp_wctx_t *w)
{
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uv_loop_t loop;
static dp_wctx_t wctx;

static void loop_setup(void)
{
    setup();
    memset(&H, 0, sizeof(H));
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    wctx = (dp_wctx_t){.loop = &loop, .rng = 88172645463325252ULL};
}

static void loop_teardown(void)
{
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0); /* every handle closed */
    teardown();
}

static dp_stream_t *stream(const char *const *kv)
{
    dp_stream_t *s = dp_pool_calloc(pool, sizeof(*s));
    s->pool = pool;
    s->w = &wctx;
    s->req = request(kv);
    return s;
}

static const dp_fault_conf_t *listener_conf(const char *json)
{
    const dp_fault_conf_t *c = NULL;
    ck_assert_int_eq(build_ex(json, false, "l", &c, NULL), 0);
    return c;
}

static void *new_ctx(void)
{
    return dp_pool_calloc(pool, dp_fault_filter.ctx_size);
}

START_TEST(filter_delay)
{
    const dp_fault_conf_t *lc = listener_conf("{}");
    H.route_name = "envoy.filters.http.fault";
    H.route_conf = build("{\"delay\": {\"fixed_delay\": \"0.200s\", \"percentage\": "
                         "{\"numerator\": 1000000, \"denominator\": \"MILLION\"}}}");
    dp_stream_t *s = stream(NULL);
    void *ctx = new_ctx();
    uv_update_time(&loop);
    uint64_t t0 = uv_now(&loop);
    ck_assert_int_eq(dp_fault_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_STOP);
    ck_assert(s->response_flags & DP_RF(DI));
    ck_assert_uint_eq(dp_counter_value(lc->stats.delays_injected), 1);
    ck_assert_uint_eq(dp_gauge_value(lc->stats.active_faults), 1);
    ck_assert_int_eq(H.continued, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(H.continued, 1);
    ck_assert_int_eq(H.replied, 0);
    ck_assert_uint_ge(uv_now(&loop) - t0, 200);
    dp_fault_filter.on_stream_done(s, ctx, lc);
    ck_assert_uint_eq(dp_gauge_value(lc->stats.active_faults), 0);
}
END_TEST

START_TEST(filter_stream_ends_during_delay)
{
    const dp_fault_conf_t *lc = listener_conf(
        "{\"delay\": {\"fixed_delay\": \"10s\", \"percentage\": {\"numerator\": 100}}}");
    dp_stream_t *s = stream(NULL);
    void *ctx = new_ctx();
    ck_assert_int_eq(dp_fault_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_STOP);
    /* the listener-level config applies when the route has none */
    ck_assert_uint_eq(dp_counter_value(lc->stats.delays_injected), 1);
    dp_fault_filter.on_stream_done(s, ctx, lc);
    uv_run(&loop, UV_RUN_DEFAULT); /* the timer's close runs; nothing fires */
    ck_assert_int_eq(H.continued, 0);
    ck_assert_uint_eq(dp_gauge_value(lc->stats.active_faults), 0);
}
END_TEST

START_TEST(filter_delay_then_abort)
{
    const dp_fault_conf_t *lc = listener_conf("{}");
    H.route_name = "envoy.filters.http.fault";
    H.route_conf =
        build("{\"delay\": {\"fixed_delay\": \"0.020s\", \"percentage\": {\"numerator\": 100}},"
              " \"abort\": {\"http_status\": 502, \"percentage\": {\"numerator\": 100}}}");
    dp_stream_t *s = stream(NULL);
    void *ctx = new_ctx();
    ck_assert_int_eq(dp_fault_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_STOP);
    ck_assert_int_eq(H.replied, 0); /* not before the delay */
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(H.replied, 1);
    ck_assert_int_eq(H.reply_status, 502);
    ck_assert_str_eq(H.reply_body, "fault filter abort");
    ck_assert_int_eq(H.continued, 0);
    ck_assert(s->response_flags & DP_RF(DI));
    ck_assert(s->response_flags & DP_RF(FI));
    ck_assert_uint_eq(dp_counter_value(lc->stats.aborts_injected), 1);
    ck_assert_uint_eq(dp_gauge_value(lc->stats.active_faults), 1); /* one per stream */
    dp_fault_filter.on_stream_done(s, ctx, lc);
    ck_assert_uint_eq(dp_gauge_value(lc->stats.active_faults), 0);
}
END_TEST

START_TEST(filter_abort_http_and_grpc)
{
    const dp_fault_conf_t *lc = listener_conf("{}");
    H.route_name = "envoy.filters.http.fault";
    H.route_conf = build("{\"abort\": {\"http_status\": 503, \"percentage\": "
                         "{\"numerator\": 1000000, \"denominator\": \"MILLION\"}}}");
    dp_stream_t *s = stream(NULL);
    void *ctx = new_ctx();
    ck_assert_int_eq(dp_fault_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_STOP);
    ck_assert_int_eq(H.reply_status, 503);
    ck_assert(s->response_flags & DP_RF(FI));
    ck_assert(!(s->response_flags & DP_RF(DI)));
    dp_fault_filter.on_stream_done(s, ctx, lc);

    /* grpc_status to a gRPC request: a trailers-only response of its own */
    H.route_conf = build("{\"abort\": {\"grpc_status\": 8, \"percentage\": "
                         "{\"numerator\": 1000000, \"denominator\": \"MILLION\"}}}");
    s = stream(NULL);
    s->grpc = true;
    ctx = new_ctx();
    H.replied = 0;
    ck_assert_int_eq(dp_fault_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_STOP);
    ck_assert_int_eq(H.replied, 0);
    ck_assert_ptr_nonnull(H.sent);
    ck_assert(H.sent_end);
    ck_assert_int_eq(H.sent->status, 200);
    const dp_header_t *g = DP_HDR_GET(&H.sent->headers, "grpc-status");
    ck_assert_ptr_nonnull(g);
    ck_assert(DP_STR_EQ(g->value, "8"));
    ck_assert(DP_STR_EQ(DP_HDR_GET(&H.sent->headers, "content-type")->value, "application/grpc"));
    ck_assert(s->response_flags & DP_RF(FI));
    dp_fault_filter.on_stream_done(s, ctx, lc);

    /* grpc_status to a plain HTTP request: 200 with the text, as Envoy */
    s = stream(NULL);
    ctx = new_ctx();
    ck_assert_int_eq(dp_fault_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_STOP);
    ck_assert_int_eq(H.replied, 1);
    ck_assert_int_eq(H.reply_status, 200);
    dp_fault_filter.on_stream_done(s, ctx, lc);
    ck_assert_uint_eq(dp_counter_value(lc->stats.aborts_injected), 3);
    ck_assert_uint_eq(dp_gauge_value(lc->stats.active_faults), 0);
}
END_TEST

START_TEST(filter_route_replaces_listener)
{
    /* a listener-level abort, a route-level config without one: no abort */
    const dp_fault_conf_t *lc =
        listener_conf("{\"abort\": {\"http_status\": 500, \"percentage\": {\"numerator\": 100}}}");
    H.route_name = "envoy.filters.http.fault";
    H.route_conf =
        build("{\"headers\": [{\"name\": \"x-never\", \"present_match\": true}], "
              "\"abort\": {\"http_status\": 501, \"percentage\": {\"numerator\": 100}}}");
    dp_stream_t *s = stream(NULL);
    void *ctx = new_ctx();
    ck_assert_int_eq(dp_fault_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_CONTINUE);
    ck_assert_int_eq(H.replied, 0);
    dp_fault_filter.on_stream_done(s, ctx, lc);
    /* the route-level config is found under the listener config's filter name */
    handlers_config_ctx_t cx = {.arena = arena, .filter_name = "my-fault", .per_route = false};
    const void *named = NULL;
    ck_assert_int_eq(dp_fault_config_new(&cx, NULL, 0, &named, NULL), 0);
    H.route_name = "my-fault";
    H.route_conf =
        build("{\"abort\": {\"http_status\": 504, \"percentage\": {\"numerator\": 100}}}");
    s = stream(NULL);
    ctx = new_ctx();
    ck_assert_int_eq(dp_fault_filter.on_request_headers(s, ctx, named, true), DP_FILTER_STOP);
    ck_assert_int_eq(H.reply_status, 504);
    dp_fault_filter.on_stream_done(s, ctx, named);
    /* a config of another kind under the name is not read as a fault config */
    static const uint32_t not_fault[16] = {0x12345678};
    H.route_conf = not_fault;
    H.replied = 0;
    s = stream(NULL);
    ctx = new_ctx();
    ck_assert_int_eq(dp_fault_filter.on_request_headers(s, ctx, named, true), DP_FILTER_CONTINUE);
    ck_assert_int_eq(H.replied, 0);
    dp_fault_filter.on_stream_done(s, ctx, named);
}
END_TEST

START_TEST(filter_max_active_faults)
{
    const dp_fault_conf_t *lc = listener_conf("{}");
    H.route_name = "envoy.filters.http.fault";
    H.route_conf = build("{\"max_active_faults\": 1, \"delay\": {\"fixed_delay\": \"5s\", "
                         "\"percentage\": {\"numerator\": 100}}}");
    dp_stream_t *a = stream(NULL), *b = stream(NULL);
    void *ca = new_ctx(), *cb = new_ctx();
    ck_assert_int_eq(dp_fault_filter.on_request_headers(a, ca, lc, true), DP_FILTER_STOP);
    ck_assert_int_eq(dp_fault_filter.on_request_headers(b, cb, lc, true), DP_FILTER_CONTINUE);
    ck_assert_uint_eq(dp_counter_value(lc->stats.faults_overflow), 1);
    ck_assert_uint_eq(dp_counter_value(lc->stats.delays_injected), 1);
    ck_assert(!(b->response_flags & DP_RF(DI)));
    dp_fault_filter.on_stream_done(b, cb, lc);
    dp_fault_filter.on_stream_done(a, ca, lc);
    ck_assert_uint_eq(dp_gauge_value(lc->stats.active_faults), 0);
    /* without a stats store the limit still holds (counted in the config) */
    handlers_config_ctx_t cx = {.arena = arena, .filter_name = "envoy.filters.http.fault"};
    const void *bare = NULL;
    ck_assert_int_eq(dp_fault_config_new(&cx, NULL, 0, &bare, NULL), 0);
    a = stream(NULL);
    b = stream(NULL);
    ca = new_ctx();
    cb = new_ctx();
    ck_assert_int_eq(dp_fault_filter.on_request_headers(a, ca, bare, true), DP_FILTER_STOP);
    ck_assert_int_eq(dp_fault_filter.on_request_headers(b, cb, bare, true), DP_FILTER_CONTINUE);
    dp_fault_filter.on_stream_done(a, ca, bare);
    dp_fault_filter.on_stream_done(b, cb, bare);
    ck_assert_uint_eq(*((const dp_fault_conf_t *)bare)->active, 0);
}
END_TEST

START_TEST(filter_header_controlled)
{
    const dp_fault_conf_t *lc =
        listener_conf("{\"abort\": {\"header_abort\": {}, \"percentage\": {\"numerator\": 100}}}");
    const char *kv[] = {"x-envoy-fault-abort-request", "429", NULL};
    dp_stream_t *s = stream(kv);
    void *ctx = new_ctx();
    ck_assert_int_eq(dp_fault_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_STOP);
    ck_assert_int_eq(H.reply_status, 429);
    dp_fault_filter.on_stream_done(s, ctx, lc);
    s = stream(NULL);
    ctx = new_ctx();
    H.replied = 0;
    ck_assert_int_eq(dp_fault_filter.on_request_headers(s, ctx, lc, true), DP_FILTER_CONTINUE);
    ck_assert_int_eq(H.replied, 0);
    dp_fault_filter.on_stream_done(s, ctx, lc);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("fault");
    TCase *tc = tcase_create("config");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, istio_delay);
    tcase_add_test(tc, istio_abort_http);
    tcase_add_test(tc, istio_abort_grpc);
    tcase_add_test(tc, istio_delay_and_abort);
    tcase_add_test(tc, denominators_and_defaults);
    tcase_add_test(tc, listener_level_stats);
    tcase_add_test(tc, other_fields);
    tcase_add_test(tc, errors);
    tcase_add_test(tc, percent_draws);
    tcase_add_test(tc, abort_draws_through_config);
    tcase_add_test(tc, header_controls);
    tcase_add_test(tc, parse_uint);
    tcase_add_test(tc, header_matchers);
    suite_add_tcase(s, tc);
    TCase *tf = tcase_create("filter");
    tcase_add_checked_fixture(tf, loop_setup, loop_teardown);
    tcase_add_test(tf, filter_delay);
    tcase_add_test(tf, filter_stream_ends_during_delay);
    tcase_add_test(tf, filter_delay_then_abort);
    tcase_add_test(tf, filter_abort_http_and_grpc);
    tcase_add_test(tf, filter_route_replaces_listener);
    tcase_add_test(tf, filter_max_active_faults);
    tcase_add_test(tf, filter_header_controlled);
    suite_add_tcase(s, tf);
    return s;
}

int main(void)
{
    return check_run(suite());
}
