/* envoy.filters.http.local_ratelimit (handlers/local_ratelimit/): its config decoded from the
 * proto3 JSON of an Istio EnvoyFilter, then the filter run over requests on a loopback stream
 * (the connection manager's side of dp_stream_* is played by this file, the way hcm.c calls
 * the filters: on_request_headers, then on_response_headers for the reply): the limit, the
 * local reply and its headers, the stats, shadow mode, per-route configs replacing the
 * listener's, descriptors, x-ratelimit headers, per-connection buckets, tokens kept across
 * snapshot rebuilds, and the NACKs. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/snapshot.h"
#include "dataplane/stats.h"
#include "dataplane/tokenbucket.h"
#include "envoy/config/route/v3/route_components.pb-c.h"
#include "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.pb-c.h"
#include "handlers/config.h"
#include "handlers/local_ratelimit/local_ratelimit.h"
#include "tests/unit/check_run.h"
#include "xds/pbjson.h"

/* ---- the stream side, as dataplane/hcm.c provides it ---- */

typedef struct reply {
    int n; /* local replies sent */
    int status;
    const char *body;
    dp_http_head_t *head; /* what went downstream, after the filter's on_response_headers */
} reply_t;

static reply_t last_reply;
static const void *route_conf; /* what dp_stream_route_config answers */
static const char *route_conf_asked;

/* The filter's per-stream state, as the connection manager keeps it next to the stream. */
static void *stream_ctx;
static const void *stream_conf;

void dp_stream_local_reply(dp_stream_t *s, int status, const char *body, uint32_t flag)
{
    s->response_flags |= flag;
    dp_http_head_t *h = dp_pool_calloc(s->pool, sizeof(*h));
    h->status = s->grpc ? 200 : status;
    if (s->grpc)
        dp_headers_add(&h->headers, s->pool, "grpc-status", 11, "14", 2);
    dp_local_ratelimit_filter.on_response_headers(s, stream_ctx, stream_conf, h, true);
    s->response_started = true;
    s->response_status = h->status;
    last_reply.n++;
    last_reply.status = status;
    last_reply.body = body;
    last_reply.head = h;
}

const void *dp_stream_route_config(const dp_stream_t *s, const char *filter_name)
{
    route_conf_asked = filter_name;
    return route_conf;
}

uint64_t dp_stream_now_ms(const dp_stream_t *s)
{
    return 0;
}

typedef struct req {
    dp_stream_t s;
    dp_filter_status_t st;
    void *ctx;
} req_t;

/* Runs one request's head through the filter with the listener conf; the stream's pool is the
 * caller's to free (req_done). */
static req_t *req_run(const void *conf, const dp_accepted_t *conn, const char *hname,
                      const char *hvalue)
{
    dp_pool_t *p = dp_pool_new();
    req_t *r = dp_pool_calloc(p, sizeof(*r));
    r->s.pool = p;
    r->s.conn = conn;
    r->s.req = dp_pool_calloc(p, sizeof(*r->s.req));
    r->s.req->method = DP_STR("GET");
    r->s.req->path = DP_STR("/");
    r->s.req->authority = DP_STR("example.com");
    if (hname)
        dp_headers_add(&r->s.req->headers, p, hname, strlen(hname), hvalue, strlen(hvalue));
    r->ctx = dp_pool_calloc(p, dp_local_ratelimit_filter.ctx_size);
    stream_ctx = r->ctx;
    stream_conf = conf;
    memset(&last_reply, 0, sizeof(last_reply));
    r->st = dp_local_ratelimit_filter.on_request_headers(&r->s, r->ctx, conf, true);
    return r;
}

/* The upstream's response passing the filter (for a request that was let through). */
static dp_http_head_t *req_respond(req_t *r)
{
    dp_http_head_t *h = dp_pool_calloc(r->s.pool, sizeof(*h));
    h->status = 200;
    dp_local_ratelimit_filter.on_response_headers(&r->s, r->ctx, stream_conf, h, true);
    return h;
}

static void req_done(req_t *r)
{
    dp_pool_free(r->s.pool);
}

static const char *hdr(const dp_headers_t *h, const char *name)
{
    const dp_header_t *v = dp_headers_get(h, name, strlen(name));
    static char buf[256];
    if (v == NULL)
        return NULL;
    snprintf(buf, sizeof(buf), DP_STR_FMT, DP_STR_ARG(v->value));
    return buf;
}

/* Sends n requests; returns how many the filter let through. */
static int send_n(const void *conf, const dp_accepted_t *conn, int n, const char *hname,
                  const char *hvalue)
{
    int ok = 0;
    for (int i = 0; i < n; i++) {
        req_t *r = req_run(conf, conn, hname, hvalue);
        ok += r->st == DP_FILTER_CONTINUE;
        req_done(r);
    }
    return ok;
}

/* ---- building configs ---- */

static dp_stats_t *stats;
static const char *hcm_prefix = "inbound_0.0.0.0_8080"; /* the connection manager's */

static uint8_t *json_to_bytes(const char *json, size_t *ret_len)
{
    pbjson_diag_t *diag = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    int rc = pbjson_parse(
        json, strlen(json), "test",
        &envoy__extensions__filters__http__local_ratelimit__v3__local_rate_limit__descriptor, NULL,
        &m, diag);
    ck_assert_msg(rc == 0, "JSON: %s",
                  pbjson_diag_size(diag) ? pbjson_diag_at(diag, 0, NULL) : "?");
    pbjson_diag_free(diag);
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(n + 1);
    protobuf_c_message_pack(m, b);
    protobuf_c_message_free_unpacked(m, NULL);
    *ret_len = n;
    return b;
}

static int build_bytes(dp_arena_t *a, const uint8_t *b, size_t n, bool per_route,
                       const dp_lrl_conf_t **ret, char **reterr)
{
    handlers_config_ctx_t ctx = {
        .arena = a,
        .stats = stats,
        .stat_prefix = per_route ? NULL : hcm_prefix,
        .filter_name = DP_LRL_NAME,
        .per_route = per_route,
    };
    const void *conf = NULL;
    int rc = handlers_config_new(&ctx, DP_LRL_TYPE_URL, b, n, &conf, reterr);
    if (rc == 0)
        *ret = conf;
    return rc;
}

static const dp_lrl_conf_t *build(dp_arena_t *a, const char *json, bool per_route)
{
    size_t n;
    uint8_t *b = json_to_bytes(json, &n);
    const dp_lrl_conf_t *conf = NULL;
    char *err = NULL;
    int rc = build_bytes(a, b, n, per_route, &conf, &err);
    ck_assert_msg(rc == 0, "config: %s", err ? err : "?");
    free(b);
    return conf;
}

static char *build_err(const char *json)
{
    size_t n;
    uint8_t *b = json_to_bytes(json, &n);
    dp_arena_t *a = dp_arena_new();
    const dp_lrl_conf_t *conf = NULL;
    char *err = NULL;
    ck_assert_int_eq(build_bytes(a, b, n, false, &conf, &err), -EINVAL);
    ck_assert_ptr_nonnull(err);
    dp_arena_free(a);
    free(b);
    return err;
}

static uint64_t counter(const char *name)
{
    return dp_counter_value(dp_stats_counter(stats, name));
}

/* The typed_config of Istio's local rate limit example (EnvoyFilter, HTTP_FILTER patch). */
static const char *istio_json =
    "{\"stat_prefix\": \"http_local_rate_limiter\","
    " \"token_bucket\": {\"max_tokens\": 10, \"tokens_per_fill\": 10, \"fill_interval\": \"60s\"},"
    " \"filter_enabled\": {\"runtime_key\": \"local_rate_limit_enabled\","
    "   \"default_value\": {\"numerator\": 100, \"denominator\": \"HUNDRED\"}},"
    " \"filter_enforced\": {\"runtime_key\": \"local_rate_limit_enforced\","
    "   \"default_value\": {\"numerator\": 100, \"denominator\": \"HUNDRED\"}},"
    " \"response_headers_to_add\": [{\"append\": false,"
    "   \"header\": {\"key\": \"x-local-rate-limit\", \"value\": \"true\"}}]}";

static void setup(void)
{
    stats = dp_stats_new();
    route_conf = NULL;
    route_conf_asked = NULL;
}

static void teardown(void)
{
    dp_stats_free(stats);
    stats = NULL;
    ck_assert_uint_eq(dp_tokenbucket_registry_size(), 0);
}

/* ---- the tests ---- */

START_TEST(test_istio_config_decodes)
{
    dp_arena_t *a = dp_arena_new();
    const dp_lrl_conf_t *c = build(a, istio_json, false);
    ck_assert_str_eq(c->filter_name, DP_LRL_NAME);
    ck_assert_uint_eq(c->enabled_ppm, 1000000);
    ck_assert_uint_eq(c->enforced_ppm, 1000000);
    ck_assert_int_eq(c->status, 429);
    ck_assert(c->has_bucket);
    ck_assert_uint_eq(c->params.max_tokens, 10);
    ck_assert_uint_eq(c->params.tokens_per_fill, 10);
    ck_assert_uint_eq(c->params.fill_interval_ns, 60ull * 1000000000ull);
    ck_assert_ptr_nonnull(c->bucket);
    ck_assert(!c->per_connection);
    ck_assert(c->always_consume_default);
    ck_assert(!c->x_ratelimit_headers);
    ck_assert_uint_eq(c->n_response_headers, 1);
    ck_assert(DP_STR_EQ(c->response_headers[0].name, "x-local-rate-limit"));
    ck_assert(DP_STR_EQ(c->response_headers[0].value, "true"));
    ck_assert_int_eq(c->response_headers[0].action, DP_LRL_OVERWRITE_IF_EXISTS_OR_ADD);
    ck_assert_uint_eq(c->n_descriptors, 0);
    /* Envoy's stat names. */
    ck_assert_ptr_eq(
        c->st_enabled,
        dp_stats_counter(stats, "http_local_rate_limiter.http_local_rate_limit.enabled"));
    ck_assert_ptr_eq(
        c->st_enforced,
        dp_stats_counter(stats, "http_local_rate_limiter.http_local_rate_limit.enforced"));
    ck_assert_ptr_eq(
        c->st_rate_limited,
        dp_stats_counter(stats, "http_local_rate_limiter.http_local_rate_limit.rate_limited"));
    ck_assert_ptr_eq(c->st_ok,
                     dp_stats_counter(stats, "http_local_rate_limiter.http_local_rate_limit.ok"));
    dp_arena_free(a);
}
END_TEST

START_TEST(test_limit_and_local_reply)
{
    dp_arena_t *a = dp_arena_new();
    const dp_lrl_conf_t *c = build(a, istio_json, false);
    for (int i = 0; i < 10; i++) {
        req_t *r = req_run(c, NULL, NULL, NULL);
        ck_assert_int_eq(r->st, DP_FILTER_CONTINUE);
        ck_assert_int_eq(last_reply.n, 0);
        dp_http_head_t *h = req_respond(r);
        /* Passed responses carry neither the limited headers nor x-ratelimit-*. */
        ck_assert_ptr_null(hdr(&h->headers, "x-envoy-ratelimited"));
        ck_assert_ptr_null(hdr(&h->headers, "x-local-rate-limit"));
        ck_assert_ptr_null(hdr(&h->headers, "x-ratelimit-limit"));
        req_done(r);
    }
    ck_assert_str_eq(route_conf_asked, DP_LRL_NAME);
    req_t *r = req_run(c, NULL, NULL, NULL);
    ck_assert_int_eq(r->st, DP_FILTER_STOP);
    ck_assert_int_eq(last_reply.n, 1);
    ck_assert_int_eq(last_reply.status, 429);
    ck_assert_str_eq(last_reply.body, "local_rate_limited");
    ck_assert_uint_eq(r->s.response_flags, DP_RF(RL));
    ck_assert_str_eq(hdr(&last_reply.head->headers, "x-envoy-ratelimited"), "true");
    ck_assert_str_eq(hdr(&last_reply.head->headers, "x-local-rate-limit"), "true");
    req_done(r);
    ck_assert_uint_eq(counter("http_local_rate_limiter.http_local_rate_limit.enabled"), 11);
    ck_assert_uint_eq(counter("http_local_rate_limiter.http_local_rate_limit.ok"), 10);
    ck_assert_uint_eq(counter("http_local_rate_limiter.http_local_rate_limit.rate_limited"), 1);
    ck_assert_uint_eq(counter("http_local_rate_limiter.http_local_rate_limit.enforced"), 1);
    dp_arena_free(a);
}
END_TEST

START_TEST(test_not_enabled_does_nothing)
{
    dp_arena_t *a = dp_arena_new();
    /* Istio's listener-level half: a stat_prefix and nothing else. */
    const dp_lrl_conf_t *c = build(a, "{\"stat_prefix\": \"http_local_rate_limiter\"}", false);
    ck_assert_int_eq(send_n(c, NULL, 20, NULL, NULL), 20);
    /* A bucket without filter_enabled: still nothing (absent is 0%). */
    const dp_lrl_conf_t *d =
        build(a,
              "{\"stat_prefix\": \"p\", \"token_bucket\": {\"max_tokens\": 1, \"fill_interval\":"
              " \"60s\"}}",
              false);
    ck_assert_int_eq(send_n(d, NULL, 5, NULL, NULL), 5);
    ck_assert_uint_eq(counter("p.http_local_rate_limit.enabled"), 0);
    dp_arena_free(a);
}
END_TEST

START_TEST(test_shadow_mode)
{
    dp_arena_t *a = dp_arena_new();
    const dp_lrl_conf_t *c =
        build(a,
              "{\"stat_prefix\": \"shadow\","
              " \"token_bucket\": {\"max_tokens\": 2, \"fill_interval\": \"3600s\"},"
              " \"filter_enabled\": {\"default_value\": {\"numerator\": 1000000, \"denominator\": "
              "\"MILLION\"}},"
              " \"request_headers_to_add_when_not_enforced\": [{\"append_action\": "
              "\"OVERWRITE_IF_EXISTS_OR_ADD\", \"header\": {\"key\": \"X-Would-Limit\", \"value\": "
              "\"1\"}}]}",
              false);
    ck_assert_int_eq(c->enforced_ppm, 0);
    ck_assert_int_eq(send_n(c, NULL, 2, NULL, NULL), 2);
    req_t *r = req_run(c, NULL, "x-would-limit", "0");
    ck_assert_int_eq(r->st, DP_FILTER_CONTINUE);
    ck_assert_int_eq(last_reply.n, 0);
    ck_assert_uint_eq(r->s.req->headers.n, 1);
    ck_assert_str_eq(hdr(&r->s.req->headers, "x-would-limit"), "1");
    req_done(r);
    ck_assert_uint_eq(counter("shadow.http_local_rate_limit.rate_limited"), 1);
    ck_assert_uint_eq(counter("shadow.http_local_rate_limit.enforced"), 0);
    ck_assert_uint_eq(counter("shadow.http_local_rate_limit.ok"), 2);
    dp_arena_free(a);
}
END_TEST

START_TEST(test_route_config_replaces_listener)
{
    dp_arena_t *a = dp_arena_new();
    const dp_lrl_conf_t *listener =
        build(a, "{\"stat_prefix\": \"http_local_rate_limiter\"}", false);
    const dp_lrl_conf_t *route =
        build(a,
              "{\"stat_prefix\": \"route_limiter\", \"status\": {\"code\": \"ServiceUnavailable\"},"
              " \"token_bucket\": {\"max_tokens\": 3, \"tokens_per_fill\": 3, \"fill_interval\": "
              "\"60s\"},"
              " \"filter_enabled\": {\"default_value\": {\"numerator\": 100}},"
              " \"filter_enforced\": {\"default_value\": {\"numerator\": 100}}}",
              true);
    ck_assert(route->per_route);
    ck_assert_int_eq(route->status, 503);
    /* Another route: no per-route config, the listener's (which limits nothing) applies. */
    ck_assert_int_eq(send_n(listener, NULL, 5, NULL, NULL), 5);
    route_conf = route;
    ck_assert_int_eq(send_n(listener, NULL, 5, NULL, NULL), 3);
    ck_assert_int_eq(last_reply.status, 503);
    ck_assert_uint_eq(counter("route_limiter.http_local_rate_limit.rate_limited"), 2);
    route_conf = NULL;
    ck_assert_int_eq(send_n(listener, NULL, 5, NULL, NULL), 5);
    /* A status under 400 means 429. */
    const dp_lrl_conf_t *low =
        build(a, "{\"stat_prefix\": \"x\", \"status\": {\"code\": 302}}", true);
    ck_assert_int_eq(low->status, 429);
    dp_arena_free(a);
}
END_TEST

START_TEST(test_x_ratelimit_headers)
{
    dp_arena_t *a = dp_arena_new();
    const dp_lrl_conf_t *c =
        build(a,
              "{\"stat_prefix\": \"xrl\", \"enable_x_ratelimit_headers\": \"DRAFT_VERSION_03\","
              " \"token_bucket\": {\"max_tokens\": 2, \"tokens_per_fill\": 2, \"fill_interval\": "
              "\"60s\"},"
              " \"filter_enabled\": {\"default_value\": {\"numerator\": 100}},"
              " \"filter_enforced\": {\"default_value\": {\"numerator\": 100}}}",
              false);
    req_t *r = req_run(c, NULL, NULL, NULL);
    dp_http_head_t *h = req_respond(r);
    ck_assert_str_eq(hdr(&h->headers, "x-ratelimit-limit"), "2");
    ck_assert_str_eq(hdr(&h->headers, "x-ratelimit-remaining"), "1");
    int reset = atoi(hdr(&h->headers, "x-ratelimit-reset"));
    ck_assert_int_gt(reset, 0);
    ck_assert_int_le(reset, 60);
    req_done(r);
    r = req_run(c, NULL, NULL, NULL);
    h = req_respond(r);
    ck_assert_str_eq(hdr(&h->headers, "x-ratelimit-remaining"), "0");
    req_done(r);
    r = req_run(c, NULL, NULL, NULL);
    ck_assert_int_eq(r->st, DP_FILTER_STOP);
    ck_assert_str_eq(hdr(&last_reply.head->headers, "x-ratelimit-limit"), "2");
    ck_assert_str_eq(hdr(&last_reply.head->headers, "x-ratelimit-remaining"), "0");
    ck_assert_str_eq(hdr(&last_reply.head->headers, "x-envoy-ratelimited"), "true");
    req_done(r);
    dp_arena_free(a);
}
END_TEST

/* LocalRateLimit bytes with rate_limits (field 17) appended: one RateLimit whose only action is
 * request_headers x-user → user. */
static uint8_t *with_rate_limits(const char *json, size_t *ret_len)
{
    size_t n;
    uint8_t *base = json_to_bytes(json, &n);
    Envoy__Config__Route__V3__RateLimit rl = ENVOY__CONFIG__ROUTE__V3__RATE_LIMIT__INIT;
    Envoy__Config__Route__V3__RateLimit__Action act =
        ENVOY__CONFIG__ROUTE__V3__RATE_LIMIT__ACTION__INIT;
    Envoy__Config__Route__V3__RateLimit__Action__RequestHeaders rh =
        ENVOY__CONFIG__ROUTE__V3__RATE_LIMIT__ACTION__REQUEST_HEADERS__INIT;
    rh.header_name = "X-User";
    rh.descriptor_key = "user";
    act.action_specifier_case =
        ENVOY__CONFIG__ROUTE__V3__RATE_LIMIT__ACTION__ACTION_SPECIFIER_REQUEST_HEADERS;
    act.request_headers = &rh;
    Envoy__Config__Route__V3__RateLimit__Action *acts[] = {&act};
    rl.actions = acts;
    rl.n_actions = 1;
    size_t rn = protobuf_c_message_get_packed_size(&rl.base);
    ck_assert_uint_lt(rn, 128); /* a one-byte length */
    uint8_t *b = malloc(n + 3 + rn);
    memcpy(b, base, n);
    /* The key of field 17, length-delimited: (17 << 3) | 2 = 138, as a varint 0x8a 0x01. */
    b[n] = 0x8a;
    b[n + 1] = 0x01;
    b[n + 2] = (uint8_t)rn;
    protobuf_c_message_pack(&rl.base, b + n + 3);
    free(base);
    *ret_len = n + 3 + rn;
    return b;
}

START_TEST(test_descriptors)
{
    size_t n;
    uint8_t *bytes =
        with_rate_limits("{\"stat_prefix\": \"desc\","
                         " \"token_bucket\": {\"max_tokens\": 100, \"fill_interval\": \"60s\"},"
                         " \"filter_enabled\": {\"default_value\": {\"numerator\": 100}},"
                         " \"filter_enforced\": {\"default_value\": {\"numerator\": 100}},"
                         " \"descriptors\": ["
                         "   {\"entries\": [{\"key\": \"user\", \"value\": \"alice\"}],"
                         "    \"token_bucket\": {\"max_tokens\": 2, \"fill_interval\": \"60s\"}},"
                         "   {\"entries\": [{\"key\": \"user\", \"value\": \"carol\"}],"
                         "    \"token_bucket\": {\"max_tokens\": 5, \"fill_interval\": \"60s\"}}]}",
                         &n);
    dp_arena_t *a = dp_arena_new();
    const dp_lrl_conf_t *c = NULL;
    char *err = NULL;
    ck_assert_msg(build_bytes(a, bytes, n, false, &c, &err) == 0, "%s", err ? err : "?");
    ck_assert_uint_eq(c->n_rate_limits, 1);
    ck_assert_uint_eq(c->n_descriptors, 2);
    ck_assert(DP_STR_EQ(c->rate_limits[0].actions[0].header_name, "x-user"));
    ck_assert_int_eq(send_n(c, NULL, 4, "x-user", "alice"), 2);
    ck_assert_int_eq(send_n(c, NULL, 4, "x-user", "carol"), 4);
    ck_assert_int_eq(send_n(c, NULL, 4, "x-user", "bob"), 4);
    ck_assert_int_eq(send_n(c, NULL, 4, NULL, NULL), 4);
    /* Every request took a default token too (always_consume_default_token_bucket). */
    ck_assert_uint_eq(dp_tokenbucket_tokens_at(c->bucket, c->bucket->_epoch_ns), 100 - 16 + 2);
    dp_arena_free(a);
    free(bytes);

    /* Without always consuming the default bucket, a matched descriptor spares it. */
    bytes = with_rate_limits(
        "{\"stat_prefix\": \"desc2\", \"always_consume_default_token_bucket\": false,"
        " \"token_bucket\": {\"max_tokens\": 3, \"fill_interval\": \"60s\"},"
        " \"filter_enabled\": {\"default_value\": {\"numerator\": 100}},"
        " \"filter_enforced\": {\"default_value\": {\"numerator\": 100}},"
        " \"descriptors\": [{\"entries\": [{\"key\": \"user\", \"value\": \"alice\"}],"
        "    \"token_bucket\": {\"max_tokens\": 5, \"fill_interval\": \"60s\"}}]}",
        &n);
    a = dp_arena_new();
    ck_assert_msg(build_bytes(a, bytes, n, false, &c, &err) == 0, "%s", err ? err : "?");
    ck_assert_int_eq(send_n(c, NULL, 6, "x-user", "alice"), 5);
    ck_assert_int_eq(send_n(c, NULL, 6, "x-user", "bob"), 3);
    dp_arena_free(a);
    free(bytes);
}
END_TEST

START_TEST(test_per_connection)
{
    dp_arena_t *a = dp_arena_new();
    const dp_lrl_conf_t *c =
        build(a,
              "{\"stat_prefix\": \"perconn\", \"local_rate_limit_per_downstream_connection\": true,"
              " \"token_bucket\": {\"max_tokens\": 3, \"fill_interval\": \"60s\"},"
              " \"filter_enabled\": {\"default_value\": {\"numerator\": 100}},"
              " \"filter_enforced\": {\"default_value\": {\"numerator\": 100}}}",
              false);
    ck_assert(c->per_connection);
    dp_accepted_t c1, c2;
    memset(&c1, 0, sizeof(c1));
    memset(&c2, 0, sizeof(c2));
    struct sockaddr_in *in = (struct sockaddr_in *)&c1.remote;
    in->sin_family = AF_INET;
    in->sin_port = htons(40000);
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c2.remote = c1.remote;
    ((struct sockaddr_in *)&c2.remote)->sin_port = htons(40001);
    c1.fd = 7;
    c2.fd = 8;
    ck_assert_int_eq(send_n(c, &c1, 5, NULL, NULL), 3);
    ck_assert_int_eq(send_n(c, &c2, 5, NULL, NULL), 3);
    ck_assert_int_eq(send_n(c, &c1, 1, NULL, NULL), 0);
    /* A new connection that happens to reuse the old one's memory and fd, from another port,
     * starts full. */
    ((struct sockaddr_in *)&c1.remote)->sin_port = htons(40002);
    ck_assert_int_eq(send_n(c, &c1, 5, NULL, NULL), 3);
    dp_arena_free(a);
}
END_TEST

START_TEST(test_tokens_survive_rebuild)
{
    dp_snapshot_t *s1 = dp_snapshot_new(1);
    const dp_lrl_conf_t *c1 = build(s1->arena, istio_json, false);
    ck_assert_int_eq(send_n(c1, NULL, 7, NULL, NULL), 7);
    /* An xDS change elsewhere: the same filter config in a new snapshot. */
    dp_snapshot_t *s2 = dp_snapshot_new(2);
    const dp_lrl_conf_t *c2 = build(s2->arena, istio_json, false);
    ck_assert_ptr_ne(c1, c2);
    ck_assert_ptr_eq(c1->bucket, c2->bucket);
    dp_snapshot_unref(s1);
    ck_assert_int_eq(send_n(c2, NULL, 5, NULL, NULL), 3);
    /* The same config at route level is another limit. */
    const dp_lrl_conf_t *r = build(s2->arena, istio_json, true);
    ck_assert_ptr_ne(r->bucket, c2->bucket);
    ck_assert_int_eq(send_n(r, NULL, 11, NULL, NULL), 10);
    /* So is the same config in another connection manager (another inbound port). */
    hcm_prefix = "inbound_0.0.0.0_9090";
    const dp_lrl_conf_t *other = build(s2->arena, istio_json, false);
    hcm_prefix = "inbound_0.0.0.0_8080";
    ck_assert_ptr_ne(other->bucket, c2->bucket);
    ck_assert_int_eq(send_n(other, NULL, 11, NULL, NULL), 10);
    dp_snapshot_unref(s2);
}
END_TEST

START_TEST(test_nacks)
{
    char *e;
    e = build_err("{\"token_bucket\": {\"max_tokens\": 1, \"fill_interval\": \"1s\"}}");
    ck_assert_msg(strstr(e, "stat_prefix") != NULL, "%s", e);
    free(e);
    e = build_err("{\"stat_prefix\": \"p\", \"token_bucket\": {\"fill_interval\": \"1s\"}}");
    ck_assert_msg(strstr(e, "token_bucket.max_tokens") != NULL, "%s", e);
    free(e);
    e = build_err("{\"stat_prefix\": \"p\", \"token_bucket\": {\"max_tokens\": 1}}");
    ck_assert_msg(strstr(e, "token_bucket.fill_interval") != NULL, "%s", e);
    free(e);
    e = build_err("{\"stat_prefix\": \"p\", \"token_bucket\": {\"max_tokens\": 1, "
                  "\"fill_interval\": \"0.010s\"}}");
    ck_assert_msg(strstr(e, "50ms") != NULL, "%s", e);
    free(e);
    e = build_err("{\"stat_prefix\": \"p\", \"token_bucket\": {\"max_tokens\": 1, "
                  "\"tokens_per_fill\": 0, \"fill_interval\": \"1s\"}}");
    ck_assert_msg(strstr(e, "tokens_per_fill") != NULL, "%s", e);
    free(e);
    e = build_err("{\"stat_prefix\": \"p\", \"response_headers_to_add\": [{\"header\": "
                  "{\"key\": \"bad header\", \"value\": \"v\"}}]}");
    ck_assert_msg(strstr(e, "response_headers_to_add[0].header.key") != NULL, "%s", e);
    free(e);
    e = build_err("{\"stat_prefix\": \"p\", \"response_headers_to_add\": [{\"header\": "
                  "{\"key\": \"x\", \"value\": \"a\\r\\nb\"}}]}");
    ck_assert_msg(strstr(e, "CR, LF") != NULL, "%s", e);
    free(e);
    e = build_err("{\"stat_prefix\": \"p\", \"descriptors\": [{\"entries\": [{\"key\": \"k\", "
                  "\"value\": \"v\"}]}]}");
    ck_assert_msg(strstr(e, "descriptors[0].token_bucket") != NULL, "%s", e);
    free(e);
    e = build_err("{\"stat_prefix\": \"p\", \"response_headers_to_add\": [{\"append\": true, "
                  "\"append_action\": \"ADD_IF_ABSENT\", \"header\": {\"key\": \"x\", "
                  "\"value\": \"1\"}}]}");
    ck_assert_msg(strstr(e, "append and append_action") != NULL, "%s", e);
    free(e);
    /* Bytes that are no LocalRateLimit. */
    dp_arena_t *a = dp_arena_new();
    const dp_lrl_conf_t *c = NULL;
    char *err = NULL;
    const uint8_t junk[] = {0x0a, 0x7f, 'x'};
    ck_assert_int_eq(build_bytes(a, junk, sizeof(junk), false, &c, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "malformed"));
    free(err);
    dp_arena_free(a);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("local_ratelimit");
    TCase *tc = tcase_create("local_ratelimit");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_istio_config_decodes);
    tcase_add_test(tc, test_limit_and_local_reply);
    tcase_add_test(tc, test_not_enabled_does_nothing);
    tcase_add_test(tc, test_shadow_mode);
    tcase_add_test(tc, test_route_config_replaces_listener);
    tcase_add_test(tc, test_x_ratelimit_headers);
    tcase_add_test(tc, test_descriptors);
    tcase_add_test(tc, test_per_connection);
    tcase_add_test(tc, test_tokens_survive_rebuild);
    tcase_add_test(tc, test_nacks);
    suite_add_tcase(s, tc);
    return check_run(s);
}
