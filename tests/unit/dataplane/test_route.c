/* Route matching and the router's helpers (dataplane/route.h) over hand-built tables: virtual
 * host lookup in Envoy's order, every match kind, weighted picks, rewrites, header mutations
 * in level order, redirects. (xds/route_build.c fills the same structs from protobuf; its
 * test covers the translation.) */
#include <check.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/route.h"
#include "tests/unit/check_run.h"

static dp_pool_t *pool;

static void setup(void)
{
    pool = dp_pool_new();
}

static void teardown(void)
{
    dp_pool_free(pool);
    pool = NULL;
}

static dp_str_t S(const char *s)
{
    return (dp_str_t){s, strlen(s)};
}

/* A request: method, authority, path, then name/value pairs, NULL-terminated. */
static dp_http_head_t req(const char *method, const char *authority, const char *path, ...)
{
    dp_http_head_t h;
    memset(&h, 0, sizeof(h));
    h.method = method ? S(method) : DP_STR_NULL;
    h.authority = authority ? S(authority) : DP_STR_NULL;
    h.path = path ? S(path) : DP_STR_NULL;
    h.scheme = DP_STR("http");
    h.content_length = -1;
    va_list ap;
    va_start(ap, path);
    for (const char *n; (n = va_arg(ap, const char *)) != NULL;) {
        const char *v = va_arg(ap, const char *);
        dp_headers_add(&h.headers, pool, n, strlen(n), v, strlen(v));
    }
    va_end(ap);
    return h;
}

static bool hdr_is(const dp_headers_t *h, const char *name, const char *value)
{
    const dp_header_t *e = dp_headers_get(h, name, strlen(name));
    return e && e->value.n == strlen(value) && memcmp(e->value.p, value, e->value.n) == 0;
}

static size_t hdr_count(const dp_headers_t *h, const char *name)
{
    size_t n = 0;
    for (uint32_t i = 0; i < h->n; i++)
        n += h->v[i].name.n == strlen(name) && memcmp(h->v[i].name.p, name, h->v[i].name.n) == 0;
    return n;
}

static bool str_is(dp_str_t s, const char *want)
{
    return s.p && s.n == strlen(want) && memcmp(s.p, want, s.n) == 0;
}

/* ---- virtual hosts ---- */

static dp_vhost_t vh[6];
static dp_route_config_t rc;

static void make_domains(bool ignore_port)
{
    memset(vh, 0, sizeof(vh));
    memset(&rc, 0, sizeof(rc));
    static const char *const names[] = {"exact",  "suffix-long", "suffix-short",
                                        "prefix", "any",         "with-port"};
    for (int i = 0; i < 6; i++) {
        vh[i].name = names[i];
        vh[i].rc = &rc;
    }
    /* exact: sorted; suffix/prefix: longest first */
    static dp_domain_t exact[3], suffix[3], prefix[1];
    exact[0] = (dp_domain_t){DP_STR("api.example.com"), &vh[0]};
    exact[1] = (dp_domain_t){DP_STR("api.example.com:8080"), &vh[5]};
    exact[2] = (dp_domain_t){DP_STR("www.example.com"), &vh[0]};
    suffix[0] = (dp_domain_t){DP_STR(".api.example.com"), &vh[1]};
    suffix[1] = (dp_domain_t){DP_STR("-bar.example.com"), &vh[1]};
    suffix[2] = (dp_domain_t){DP_STR(".example.com"), &vh[2]};
    prefix[0] = (dp_domain_t){DP_STR("api."), &vh[3]};
    rc.exact = exact;
    rc.n_exact = 3;
    rc.suffix = suffix;
    rc.n_suffix = 3;
    rc.prefix = prefix;
    rc.n_prefix = 1;
    rc.any = &vh[4];
    rc.ignore_port_in_host_matching = ignore_port;
}

static const char *vh_of(const char *authority)
{
    const dp_vhost_t *v = dp_route_vhost(&rc, authority ? S(authority) : DP_STR_NULL);
    return v ? v->name : NULL;
}

START_TEST(test_domain_order)
{
    make_domains(false);
    ck_assert_str_eq(vh_of("api.example.com"), "exact");
    ck_assert_str_eq(vh_of("API.Example.COM"), "exact");
    ck_assert_str_eq(vh_of("www.example.com"), "exact");
    /* the longest suffix wins: *.api.example.com over *.example.com */
    ck_assert_str_eq(vh_of("v1.api.example.com"), "suffix-long");
    ck_assert_str_eq(vh_of("foo-bar.example.com"), "suffix-long");
    ck_assert_str_eq(vh_of("other.example.com"), "suffix-short");
    /* a wildcard needs at least one character for its '*' */
    ck_assert_str_eq(vh_of(".example.com"), "any");
    /* suffix wildcards before prefix wildcards */
    ck_assert_str_eq(vh_of("api.example.com.evil"), "prefix");
    ck_assert_str_eq(vh_of("api.internal"), "prefix");
    ck_assert_str_eq(vh_of("api."), "any");
    ck_assert_str_eq(vh_of("nothing.else"), "any");
    /* without ignore_port_in_host_matching the port is part of the host */
    ck_assert_str_eq(vh_of("api.example.com:8080"), "with-port");
    ck_assert_str_eq(vh_of("www.example.com:80"), "any");
    ck_assert_ptr_null(vh_of(NULL));
    rc.any = NULL;
    ck_assert_ptr_null(vh_of("nothing.else"));
}
END_TEST

START_TEST(test_domain_ignore_port)
{
    make_domains(true);
    ck_assert_str_eq(vh_of("api.example.com:8080"), "exact");
    ck_assert_str_eq(vh_of("www.example.com:80"), "exact");
    ck_assert_str_eq(vh_of("x.api.example.com:1"), "suffix-long");
    ck_assert_str_eq(vh_of("api.foo:443"), "prefix");
    /* IPv6 literals: only a port after ']' is stripped */
    ck_assert_str_eq(vh_of("[::1]:80"), "any");
    dp_domain_t v6[] = {{DP_STR("[::1]"), &vh[0]}};
    rc.exact = v6;
    rc.n_exact = 1;
    ck_assert_str_eq(vh_of("[::1]:80"), "exact");
    ck_assert_str_eq(vh_of("[::1]"), "exact");
    /* Envoy's getPortStart: whatever follows the last ':' after any ']' */
    ck_assert_str_eq(vh_of("[::1]:x"), "exact");
    ck_assert_str_eq(vh_of("[::1]:"), "exact");
}
END_TEST

START_TEST(test_only_default_vhost)
{
    memset(&rc, 0, sizeof(rc));
    dp_vhost_t any = {.name = "any", .rc = &rc};
    rc.any = &any;
    /* Envoy's fast path: a lone "*" serves even a request without authority */
    ck_assert_str_eq(vh_of(NULL), "any");
    ck_assert_str_eq(vh_of("whatever:1"), "any");
}
END_TEST

/* ---- route matching ---- */

static bool matches(const dp_route_match_t *m, dp_http_head_t r)
{
    return dp_route_match(m, &r);
}

START_TEST(test_path_kinds)
{
    dp_route_match_t m = {.kind = DP_PM_PREFIX, .path = DP_STR("/api"), .case_sensitive = true};
    ck_assert(matches(&m, req("GET", "h", "/api", NULL)));
    ck_assert(matches(&m, req("GET", "h", "/apix/y?q", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/API", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/ap?i", NULL)));
    ck_assert(!matches(&m, req("CONNECT", "h", NULL, NULL)));
    m.case_sensitive = false;
    ck_assert(matches(&m, req("GET", "h", "/APi/x", NULL)));

    dp_route_match_t p = {.kind = DP_PM_PATH, .path = DP_STR("/exact"), .case_sensitive = true};
    ck_assert(matches(&p, req("GET", "h", "/exact", NULL)));
    ck_assert(matches(&p, req("GET", "h", "/exact?a=1", NULL)));
    ck_assert(matches(&p, req("GET", "h", "/exact#frag", NULL)));
    ck_assert(!matches(&p, req("GET", "h", "/exact/", NULL)));
    ck_assert(!matches(&p, req("GET", "h", "/EXACT", NULL)));
    p.case_sensitive = false;
    ck_assert(matches(&p, req("GET", "h", "/EXACT?x", NULL)));

    dp_route_match_t sp = {
        .kind = DP_PM_SEPARATED_PREFIX, .path = DP_STR("/api"), .case_sensitive = true};
    ck_assert(matches(&sp, req("GET", "h", "/api", NULL)));
    ck_assert(matches(&sp, req("GET", "h", "/api/v1", NULL)));
    ck_assert(matches(&sp, req("GET", "h", "/api?x=1", NULL)));
    ck_assert(!matches(&sp, req("GET", "h", "/apiv1", NULL)));

    char *err = NULL;
    dp_regex_t *re = dp_regex_new("/v[0-9]+/.*", strlen("/v[0-9]+/.*"), &err);
    ck_assert_ptr_nonnull(re);
    dp_route_match_t rx = {.kind = DP_PM_REGEX, .re = re, .case_sensitive = true};
    ck_assert(matches(&rx, req("GET", "h", "/v12/users?id=3", NULL)));
    ck_assert(!matches(&rx, req("GET", "h", "/x/v12/users", NULL))); /* a full match */
    ck_assert(!matches(&rx, req("GET", "h", "/v/users", NULL)));
    dp_regex_free(re);

    ck_assert_ptr_null(dp_regex_new("(", 1, &err));
    ck_assert_ptr_nonnull(err);
    ck_assert_ptr_nonnull(strstr(err, "offset"));
    free(err);

    dp_route_match_t c = {.kind = DP_PM_CONNECT};
    ck_assert(matches(&c, req("CONNECT", "h:443", NULL, NULL)));
    ck_assert(!matches(&c, req("GET", "h", "/", NULL)));
    dp_route_match_t never = {.kind = DP_PM_NEVER};
    ck_assert(!matches(&never, req("GET", "h", "/", NULL)));
}
END_TEST

static dp_route_match_t with_header(const dp_header_match_t *h)
{
    return (dp_route_match_t){.kind = DP_PM_PREFIX,
                              .path = DP_STR("/"),
                              .case_sensitive = true,
                              .headers = h,
                              .n_headers = 1};
}

START_TEST(test_header_matchers)
{
    dp_header_match_t h = {.name = DP_STR("x-env"),
                           .kind = DP_HM_STRING,
                           .sm = {.kind = DP_SM_EXACT, .s = DP_STR("prod")}};
    dp_route_match_t m = with_header(&h);
    ck_assert(matches(&m, req("GET", "h", "/", "x-env", "prod", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", "x-env", "Prod", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", NULL)));
    /* several values are joined with "," */
    ck_assert(!matches(&m, req("GET", "h", "/", "x-env", "prod", "x-env", "dev", NULL)));
    h.sm.s = DP_STR("prod,dev");
    ck_assert(matches(&m, req("GET", "h", "/", "x-env", "prod", "x-env", "dev", NULL)));
    h.sm = (dp_str_match_t){.kind = DP_SM_EXACT, .s = DP_STR("PROD"), .ignore_case = true};
    ck_assert(matches(&m, req("GET", "h", "/", "x-env", "prod", NULL)));

    h.sm = (dp_str_match_t){.kind = DP_SM_PREFIX, .s = DP_STR("pr")};
    ck_assert(matches(&m, req("GET", "h", "/", "x-env", "prod", NULL)));
    h.sm = (dp_str_match_t){.kind = DP_SM_SUFFIX, .s = DP_STR("od")};
    ck_assert(matches(&m, req("GET", "h", "/", "x-env", "prod", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", "x-env", "prodx", NULL)));
    h.sm = (dp_str_match_t){.kind = DP_SM_CONTAINS, .s = DP_STR("ro")};
    ck_assert(matches(&m, req("GET", "h", "/", "x-env", "prod", NULL)));
    char *err = NULL;
    h.sm = (dp_str_match_t){.kind = DP_SM_REGEX, .re = dp_regex_new("p.*d", 4, &err)};
    ck_assert(matches(&m, req("GET", "h", "/", "x-env", "prod", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", "x-env", "prod2", NULL)));

    /* invert: a present non-matching value passes, a missing header does not... */
    h.invert = true;
    ck_assert(matches(&m, req("GET", "h", "/", "x-env", "prod2", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", "x-env", "prod", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", NULL)));
    /* ...unless missing is treated as empty (Istio's withoutHeaders) */
    h.treat_missing_as_empty = true;
    ck_assert(matches(&m, req("GET", "h", "/", NULL)));
    dp_regex_free(h.sm.re);

    dp_header_match_t pr = {.name = DP_STR("x-debug"), .kind = DP_HM_PRESENT, .present = true};
    m = with_header(&pr);
    ck_assert(matches(&m, req("GET", "h", "/", "x-debug", "", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", NULL)));
    pr.present = false;
    ck_assert(!matches(&m, req("GET", "h", "/", "x-debug", "1", NULL)));
    ck_assert(matches(&m, req("GET", "h", "/", NULL)));
    pr.present = true;
    pr.invert = true;
    ck_assert(matches(&m, req("GET", "h", "/", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", "x-debug", "1", NULL)));
    /* treated as empty, a missing header is present */
    pr.invert = false;
    pr.present = false;
    pr.treat_missing_as_empty = true;
    ck_assert(!matches(&m, req("GET", "h", "/", NULL)));

    dp_header_match_t rg = {
        .name = DP_STR("x-n"), .kind = DP_HM_RANGE, .range_start = -10, .range_end = 0};
    m = with_header(&rg);
    ck_assert(matches(&m, req("GET", "h", "/", "x-n", "-1", NULL)));
    ck_assert(matches(&m, req("GET", "h", "/", "x-n", "-10", NULL)));
    ck_assert(matches(&m, req("GET", "h", "/", "x-n", " -3 ", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", "x-n", "0", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", "x-n", "-1x", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", "x-n", "99999999999999999999", NULL)));
    rg.invert = true;
    ck_assert(matches(&m, req("GET", "h", "/", "x-n", "5", NULL)));

    /* pseudo-headers are the head's fields */
    dp_header_match_t me = {.name = DP_STR(":method"),
                            .kind = DP_HM_STRING,
                            .sm = {.kind = DP_SM_EXACT, .s = DP_STR("POST")}};
    m = with_header(&me);
    ck_assert(matches(&m, req("POST", "h", "/", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/", NULL)));
    dp_header_match_t au = {.name = DP_STR(":authority"),
                            .kind = DP_HM_STRING,
                            .sm = {.kind = DP_SM_SUFFIX, .s = DP_STR(".local")}};
    m = with_header(&au);
    ck_assert(matches(&m, req("GET", "a.local", "/", NULL)));
    dp_header_match_t sc = {.name = DP_STR(":scheme"),
                            .kind = DP_HM_STRING,
                            .sm = {.kind = DP_SM_EXACT, .s = DP_STR("http")}};
    m = with_header(&sc);
    ck_assert(matches(&m, req("GET", "h", "/", NULL)));
}
END_TEST

START_TEST(test_query_and_grpc)
{
    dp_query_match_t q[2] = {
        {.name = DP_STR("debug"), .present_only = true, .present = true},
        {.name = DP_STR("v"), .sm = {.kind = DP_SM_EXACT, .s = DP_STR("2")}},
    };
    dp_route_match_t m = {.kind = DP_PM_PREFIX,
                          .path = DP_STR("/"),
                          .case_sensitive = true,
                          .query = q,
                          .n_query = 2};
    ck_assert(matches(&m, req("GET", "h", "/x?debug&v=2", NULL)));
    ck_assert(matches(&m, req("GET", "h", "/x?v=2&debug=", NULL)));
    ck_assert(matches(&m, req("GET", "h", "/x?v=2&v=3&debug=1#f", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/x?v=3&v=2&debug=1", NULL))); /* the first v */
    ck_assert(!matches(&m, req("GET", "h", "/x?v=2", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/x?debugx&v=2", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/x#?debug&v=2", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/x", NULL)));
    /* present_match false: the parameter must be absent */
    q[0].present = false;
    ck_assert(matches(&m, req("GET", "h", "/x?v=2", NULL)));
    ck_assert(!matches(&m, req("GET", "h", "/x?v=2&debug", NULL)));

    dp_route_match_t g = {
        .kind = DP_PM_PREFIX, .path = DP_STR("/"), .case_sensitive = true, .grpc = true};
    ck_assert(matches(&g, req("POST", "h", "/svc/M", "content-type", "application/grpc", NULL)));
    ck_assert(
        matches(&g, req("POST", "h", "/svc/M", "content-type", "application/grpc+proto", NULL)));
    ck_assert(!matches(&g, req("POST", "h", "/", "content-type", "application/grpcx", NULL)));
    ck_assert(!matches(&g, req("POST", "h", "/", "content-type", "application/json", NULL)));
    ck_assert(!matches(&g, req("POST", "h", "/", NULL)));
}
END_TEST

START_TEST(test_select_first_match)
{
    dp_route_t routes[3];
    memset(routes, 0, sizeof(routes));
    routes[0] = (dp_route_t){
        .name = "api",
        .kind = DP_ROUTE_CLUSTER,
        .cluster = "api",
        .match = {.kind = DP_PM_PREFIX, .path = DP_STR("/api"), .case_sensitive = true}};
    routes[1] =
        (dp_route_t){.name = "root",
                     .kind = DP_ROUTE_CLUSTER,
                     .cluster = "root",
                     .match = {.kind = DP_PM_PREFIX, .path = DP_STR("/"), .case_sensitive = true}};
    routes[2] = (dp_route_t){
        .name = "never",
        .kind = DP_ROUTE_CLUSTER,
        .cluster = "never",
        .match = {.kind = DP_PM_PREFIX, .path = DP_STR("/api/x"), .case_sensitive = true}};
    memset(&rc, 0, sizeof(rc));
    dp_vhost_t v = {.name = "v", .routes = routes, .n_routes = 3, .rc = &rc};
    rc.any = &v;
    const dp_vhost_t *got = NULL;
    dp_http_head_t r = req("GET", "h", "/api/x", NULL);
    const dp_route_t *rt = dp_route_select(&rc, &r, 0, &got);
    ck_assert_ptr_eq(got, &v);
    ck_assert_str_eq(rt->name, "api");
    r = req("GET", "h", "/other", NULL);
    ck_assert_str_eq(dp_route_select(&rc, &r, 0, NULL)->name, "root");
    v.n_routes = 1;
    ck_assert_ptr_null(dp_route_select(&rc, &r, 0, &got));
    ck_assert_ptr_eq(got, &v);
    rc.any = NULL;
    dp_domain_t d[] = {{DP_STR("only"), &v}};
    rc.exact = d;
    rc.n_exact = 1;
    ck_assert_ptr_null(dp_route_select(&rc, &r, 0, &got));
    ck_assert_ptr_null(got);
}
END_TEST

/* ---- clusters ---- */

START_TEST(test_weighted_pick)
{
    dp_route_weighted_t w[3] = {
        {.name = "a", .weight = 10}, {.name = "zero", .weight = 0}, {.name = "b", .weight = 30}};
    dp_route_t r = {.kind = DP_ROUTE_WEIGHTED, .weighted = w, .n_weighted = 3, .total_weight = 40};
    dp_http_head_t h = req("GET", "x", "/", NULL);
    const dp_route_weighted_t *wc;
    ck_assert_str_eq(dp_route_cluster(&r, &h, 0, &wc), "a");
    ck_assert_ptr_eq(wc, &w[0]);
    ck_assert_str_eq(dp_route_cluster(&r, &h, 9, &wc), "a");
    ck_assert_str_eq(dp_route_cluster(&r, &h, 10, &wc), "b");
    ck_assert_ptr_eq(wc, &w[2]);
    ck_assert_str_eq(dp_route_cluster(&r, &h, 39, &wc), "b");
    ck_assert_str_eq(dp_route_cluster(&r, &h, 40, &wc), "a"); /* random % total */
    /* the distribution over every residue: exactly the weights */
    int n_a = 0, n_b = 0;
    for (uint64_t v = 0; v < 4000; v++) {
        const char *c = dp_route_cluster(&r, &h, v * 7919 + 3, NULL);
        n_a += strcmp(c, "a") == 0;
        n_b += strcmp(c, "b") == 0;
    }
    ck_assert_int_eq(n_a, 1000);
    ck_assert_int_eq(n_b, 3000);

    dp_route_t c = {.kind = DP_ROUTE_CLUSTER, .cluster = "one"};
    ck_assert_str_eq(dp_route_cluster(&c, &h, 5, &wc), "one");
    ck_assert_ptr_null(wc);

    dp_route_t ch = {.kind = DP_ROUTE_CLUSTER_HEADER, .cluster_header = "x-cluster"};
    dp_http_head_t hh = req("GET", "x", "/", "x-cluster", "picked", NULL);
    ck_assert_str_eq(dp_route_cluster(&ch, &hh, 0, &wc), "picked");
    ck_assert_ptr_null(dp_route_cluster(&ch, &h, 0, &wc));
    dp_http_head_t he = req("GET", "x", "/", "x-cluster", "", NULL);
    ck_assert_ptr_null(dp_route_cluster(&ch, &he, 0, &wc));
    dp_route_t d = {.kind = DP_ROUTE_DIRECT, .direct_status = 503};
    ck_assert_ptr_null(dp_route_cluster(&d, &h, 0, &wc));
}
END_TEST

/* ---- rewrites and header mutations ---- */

START_TEST(test_prefix_and_regex_rewrite)
{
    dp_route_t r = {
        .kind = DP_ROUTE_CLUSTER,
        .cluster = "c",
        .prefix_rewrite = "/v2",
        .match = {.kind = DP_PM_PREFIX, .path = DP_STR("/api"), .case_sensitive = true}};
    dp_http_head_t h = req("GET", "x", "/api/users?id=1", NULL);
    dp_route_apply_request(NULL, NULL, &r, NULL, &h, pool, NULL);
    ck_assert(str_is(h.path, "/v2/users?id=1"));
    r.prefix_rewrite = "/";
    h = req("GET", "x", "/api?q", NULL);
    dp_route_apply_request(NULL, NULL, &r, NULL, &h, pool, NULL);
    ck_assert(str_is(h.path, "/?q"));

    char *err = NULL;
    dp_regex_t *re = dp_regex_new("^/service/([^/]+)(/.*)$", 23, &err);
    ck_assert_ptr_nonnull(re);
    char *sub = dp_regex_sub_from_re2("\\2/instance/\\1");
    ck_assert_str_eq(sub, "$2/instance/$1");
    dp_route_t x = {.kind = DP_ROUTE_CLUSTER,
                    .cluster = "c",
                    .regex_rewrite = re,
                    .regex_sub = sub,
                    .match = {.kind = DP_PM_PREFIX, .path = DP_STR("/"), .case_sensitive = true}};
    h = req("GET", "x", "/service/foo/v1/api?x=1", NULL);
    dp_route_apply_request(NULL, NULL, &x, NULL, &h, pool, NULL);
    ck_assert(str_is(h.path, "/v1/api/instance/foo?x=1"));
    dp_regex_free(re);
    free(sub);

    /* global replacement, '$' in the substitution taken literally */
    re = dp_regex_new("o", 1, &err);
    sub = dp_regex_sub_from_re2("$0");
    x.regex_rewrite = re;
    x.regex_sub = sub;
    h = req("GET", "x", "/foo/boo", NULL);
    dp_route_apply_request(NULL, NULL, &x, NULL, &h, pool, NULL);
    ck_assert(str_is(h.path, "/f$0$0/b$0$0"));
    /* no match: the path is unchanged */
    h = req("GET", "x", "/bar", NULL);
    dp_route_apply_request(NULL, NULL, &x, NULL, &h, pool, NULL);
    ck_assert(str_is(h.path, "/bar"));
    /* a long result (buffer growth) */
    char longp[3001];
    memset(longp, 'o', 3000);
    longp[0] = '/';
    longp[3000] = 0;
    h = req("GET", "x", longp, NULL);
    dp_route_apply_request(NULL, NULL, &x, NULL, &h, pool, NULL);
    ck_assert_uint_eq(h.path.n, 1 + 2999 * 2);
    dp_regex_free(re);
    free(sub);

    /* host_rewrite_literal: the weighted entry's, then the route's wins */
    dp_route_weighted_t wc = {.name = "c", .weight = 1, .host_rewrite = "from-weighted"};
    dp_route_t hr = {.kind = DP_ROUTE_WEIGHTED,
                     .match = {.kind = DP_PM_PREFIX, .path = DP_STR("/"), .case_sensitive = true}};
    h = req("GET", "orig", "/", NULL);
    dp_route_apply_request(NULL, NULL, &hr, &wc, &h, pool, NULL);
    ck_assert(str_is(h.authority, "from-weighted"));
    hr.host_rewrite = "from-route";
    dp_route_apply_request(NULL, NULL, &hr, &wc, &h, pool, NULL);
    ck_assert(str_is(h.authority, "from-route"));
}
END_TEST

START_TEST(test_append_actions)
{
    dp_header_add_t adds[] = {
        {.name = DP_STR("x-a"), .value = DP_STR("1"), .action = DP_HDR_APPEND_IF_EXISTS_OR_ADD},
        {.name = DP_STR("x-b"), .value = DP_STR("2"), .action = DP_HDR_ADD_IF_ABSENT},
        {.name = DP_STR("x-c"), .value = DP_STR("3"), .action = DP_HDR_OVERWRITE_IF_EXISTS_OR_ADD},
        {.name = DP_STR("x-d"), .value = DP_STR("4"), .action = DP_HDR_OVERWRITE_IF_EXISTS},
        {.name = DP_STR("x-e"), .value = DP_STR(""), .action = DP_HDR_APPEND_IF_EXISTS_OR_ADD},
        {.name = DP_STR("x-f"),
         .value = DP_STR(""),
         .action = DP_HDR_APPEND_IF_EXISTS_OR_ADD,
         .keep_empty_value = true},
    };
    dp_str_t rm[] = {DP_STR("x-gone")};
    dp_header_ops_t ops = {.remove = rm, .n_remove = 1, .add = adds, .n_add = 6};

    dp_http_head_t h = req("GET", "x", "/", NULL);
    dp_header_ops_apply(&ops, &h.headers, pool, NULL);
    ck_assert(hdr_is(&h.headers, "x-a", "1"));
    ck_assert(hdr_is(&h.headers, "x-b", "2"));
    ck_assert(hdr_is(&h.headers, "x-c", "3"));
    ck_assert_uint_eq(hdr_count(&h.headers, "x-d"), 0); /* only if it exists */
    ck_assert_uint_eq(hdr_count(&h.headers, "x-e"), 0); /* empty values dropped */
    ck_assert(hdr_is(&h.headers, "x-f", ""));

    h = req("GET", "x", "/", "x-a", "0", "x-b", "old", "x-c", "old", "x-c", "old2", "x-d", "old",
            "x-gone", "bye", NULL);
    dp_header_ops_apply(&ops, &h.headers, pool, NULL);
    ck_assert_uint_eq(hdr_count(&h.headers, "x-a"), 2);
    ck_assert(hdr_is(&h.headers, "x-b", "old"));
    ck_assert_uint_eq(hdr_count(&h.headers, "x-b"), 1);
    ck_assert_uint_eq(hdr_count(&h.headers, "x-c"), 1);
    ck_assert(hdr_is(&h.headers, "x-c", "3"));
    ck_assert(hdr_is(&h.headers, "x-d", "4"));
    ck_assert_uint_eq(hdr_count(&h.headers, "x-gone"), 0);

    /* conditions are judged before this level's adds: ADD_IF_ABSENT after an overwrite of the
     * same name still adds (Envoy's HeaderParser does the same) */
    dp_header_add_t pair[] = {
        {.name = DP_STR("x-z"),
         .value = DP_STR("set"),
         .action = DP_HDR_OVERWRITE_IF_EXISTS_OR_ADD},
        {.name = DP_STR("x-z"), .value = DP_STR("maybe"), .action = DP_HDR_ADD_IF_ABSENT},
    };
    dp_header_ops_t p2 = {.add = pair, .n_add = 2};
    h = req("GET", "x", "/", NULL);
    dp_header_ops_apply(&p2, &h.headers, pool, NULL);
    ck_assert_uint_eq(hdr_count(&h.headers, "x-z"), 2);
    ck_assert(hdr_is(&h.headers, "x-z", "set")); /* overwrites go first */
}
END_TEST

START_TEST(test_level_order)
{
    dp_header_add_t wa[] = {{.name = DP_STR("x-lvl"),
                             .value = DP_STR("weighted"),
                             .action = DP_HDR_OVERWRITE_IF_EXISTS_OR_ADD}};
    dp_header_add_t ra[] = {{.name = DP_STR("x-lvl"),
                             .value = DP_STR("route"),
                             .action = DP_HDR_OVERWRITE_IF_EXISTS_OR_ADD},
                            {.name = DP_STR("x-trace"),
                             .value = DP_STR("route"),
                             .action = DP_HDR_APPEND_IF_EXISTS_OR_ADD}};
    dp_header_add_t va[] = {{.name = DP_STR("x-lvl"),
                             .value = DP_STR("vhost"),
                             .action = DP_HDR_OVERWRITE_IF_EXISTS_OR_ADD},
                            {.name = DP_STR("x-trace"),
                             .value = DP_STR("vhost"),
                             .action = DP_HDR_APPEND_IF_EXISTS_OR_ADD}};
    dp_header_add_t ca[] = {{.name = DP_STR("x-lvl"),
                             .value = DP_STR("config"),
                             .action = DP_HDR_OVERWRITE_IF_EXISTS_OR_ADD},
                            {.name = DP_STR("x-trace"),
                             .value = DP_STR("config"),
                             .action = DP_HDR_APPEND_IF_EXISTS_OR_ADD}};
    dp_str_t vrm[] = {DP_STR("x-weighted-only")};
    dp_header_add_t wonly[] = {{.name = DP_STR("x-weighted-only"),
                                .value = DP_STR("1"),
                                .action = DP_HDR_APPEND_IF_EXISTS_OR_ADD},
                               wa[0]};
    dp_route_weighted_t wc = {.name = "c",
                              .weight = 1,
                              .req = {.add = wonly, .n_add = 2},
                              .resp = {.add = wa, .n_add = 1}};
    dp_route_t r = {.kind = DP_ROUTE_WEIGHTED,
                    .req = {.add = ra, .n_add = 2},
                    .resp = {.add = ra, .n_add = 2},
                    .match = {.kind = DP_PM_PREFIX, .path = DP_STR("/"), .case_sensitive = true}};
    memset(&rc, 0, sizeof(rc));
    dp_vhost_t v = {.name = "v",
                    .rc = &rc,
                    .req = {.add = va, .n_add = 2, .remove = vrm, .n_remove = 1},
                    .resp = {.add = va, .n_add = 2}};
    rc.req = (dp_header_ops_t){.add = ca, .n_add = 2};
    rc.resp = (dp_header_ops_t){.add = ca, .n_add = 2};

    /* Envoy's default: route, vhost, config in turn; the last overwrite (config) wins, and
     * the weighted entry's go first (so the vhost's removal drops what it added) */
    dp_http_head_t h = req("GET", "x", "/", NULL);
    dp_route_apply_request(&rc, &v, &r, &wc, &h, pool, NULL);
    ck_assert(hdr_is(&h.headers, "x-lvl", "config"));
    ck_assert_uint_eq(hdr_count(&h.headers, "x-lvl"), 1);
    ck_assert_uint_eq(hdr_count(&h.headers, "x-weighted-only"), 0);
    ck_assert_uint_eq(hdr_count(&h.headers, "x-trace"), 3);
    const dp_header_t *t = DP_HDR_GET(&h.headers, "x-trace");
    ck_assert(str_is(t->value, "route"));

    dp_http_head_t resp = {.status = 200};
    dp_route_apply_response(&rc, &v, &r, &wc, &resp, pool, NULL);
    ck_assert(hdr_is(&resp.headers, "x-lvl", "config"));

    /* most_specific_header_mutations_wins: config, vhost, route: the route wins */
    rc.most_specific_header_mutations_wins = true;
    h = req("GET", "x", "/", NULL);
    dp_route_apply_request(&rc, &v, &r, NULL, &h, pool, NULL);
    ck_assert(hdr_is(&h.headers, "x-lvl", "route"));
    t = DP_HDR_GET(&h.headers, "x-trace");
    ck_assert(str_is(t->value, "config"));
    resp = (dp_http_head_t){.status = 200};
    dp_route_apply_response(&rc, &v, &r, NULL, &resp, pool, NULL);
    ck_assert(hdr_is(&resp.headers, "x-lvl", "route"));
}
END_TEST

/* ---- redirects ---- */

static const char *location(const dp_route_t *r, dp_http_head_t h, int *status)
{
    dp_str_t s = dp_route_redirect(r, &h, pool, status);
    return dp_pool_strndup(pool, s.p, s.n);
}

START_TEST(test_redirect)
{
    int st = 0;
    dp_route_t r = {
        .kind = DP_ROUTE_REDIRECT,
        .redirect_code = 301,
        .match = {.kind = DP_PM_PREFIX, .path = DP_STR("/old"), .case_sensitive = true}};
    ck_assert_str_eq(location(&r, req("GET", "a.com", "/old/x?q=1", NULL), &st),
                     "http://a.com/old/x?q=1");
    ck_assert_int_eq(st, 301);

    r.scheme_redirect = "https";
    r.redirect_code = 308;
    ck_assert_str_eq(location(&r, req("GET", "a.com:80", "/old", NULL), &st), "https://a.com/old");
    ck_assert_int_eq(st, 308);
    /* a non-default port stays when only the scheme changes */
    ck_assert_str_eq(location(&r, req("GET", "a.com:8080", "/old", NULL), &st),
                     "https://a.com:8080/old");

    r.host_redirect = "b.org";
    r.port_redirect = 8443;
    ck_assert_str_eq(location(&r, req("GET", "a.com:80", "/old", NULL), &st),
                     "https://b.org:8443/old");
    r.host_redirect = NULL;
    ck_assert_str_eq(location(&r, req("GET", "a.com:9999", "/old", NULL), &st),
                     "https://a.com:8443/old");
    r.port_redirect = 0;
    r.scheme_redirect = NULL;

    r.path_redirect = "/new";
    ck_assert_str_eq(location(&r, req("GET", "a.com", "/old/x?q=1", NULL), &st),
                     "http://a.com/new?q=1");
    /* the port goes by x-forwarded-proto: https :443 changed to http drops it */
    r.scheme_redirect = "http";
    ck_assert_str_eq(
        location(&r, req("GET", "a.com:443", "/old", "x-forwarded-proto", "https", NULL), &st),
        "http://a.com/new");
    r.scheme_redirect = NULL;
    r.strip_query = true;
    ck_assert_str_eq(location(&r, req("GET", "a.com", "/old/x?q=1", NULL), &st),
                     "http://a.com/new");
    /* a path_redirect with its own query keeps it, whatever strip_query says */
    r.path_redirect = "/new?from=redirect";
    r.path_redirect_has_query = true;
    ck_assert_str_eq(location(&r, req("GET", "a.com", "/old/x?q=1", NULL), &st),
                     "http://a.com/new?from=redirect");
    r.path_redirect = NULL;
    r.path_redirect_has_query = false;
    r.strip_query = false;

    r.prefix_rewrite = "/fresh";
    ck_assert_str_eq(location(&r, req("GET", "a.com", "/old/x?q=1", NULL), &st),
                     "http://a.com/fresh/x?q=1");
    r.strip_query = true;
    ck_assert_str_eq(location(&r, req("GET", "a.com", "/old/x?q=1", NULL), &st),
                     "http://a.com/fresh/x");
    r.prefix_rewrite = "";
    ck_assert_str_eq(location(&r, req("GET", "a.com", "/old", NULL), &st), "http://a.com/");

    r = (dp_route_t){.kind = DP_ROUTE_REDIRECT,
                     .redirect_code = 302,
                     .match = {.kind = DP_PM_PREFIX, .path = DP_STR("/"), .case_sensitive = true}};
    char *err = NULL;
    r.regex_rewrite = dp_regex_new("^/a/(.*)$", 9, &err);
    r.regex_sub = "/b/$1";
    ck_assert_str_eq(location(&r, req("GET", "[::1]:80", "/a/c?d", NULL), &st),
                     "http://[::1]:80/b/c?d");
    ck_assert_int_eq(st, 302);
    dp_regex_free(r.regex_rewrite);
}
END_TEST

START_TEST(test_filter_conf_and_retry_on)
{
    dp_route_filter_conf_t rcf[] = {{.filter_name = "envoy.filters.http.cors", .type_url = "c"},
                                    {.filter_name = "envoy.filters.http.fault", .type_url = "rc"}};
    dp_route_filter_conf_t vf[] = {{.filter_name = "envoy.filters.http.fault", .type_url = "vh"}};
    dp_route_filter_conf_t rf[] = {{.filter_name = "envoy.filters.http.fault", .type_url = "r"}};
    memset(&rc, 0, sizeof(rc));
    rc.filter_confs = (dp_filter_confs_t){rcf, 2};
    dp_vhost_t v = {.name = "v", .rc = &rc, .filter_confs = {vf, 1}};
    dp_route_t r = {.kind = DP_ROUTE_CLUSTER, .filter_confs = {rf, 1}};
    ck_assert_str_eq(dp_route_filter_conf(&v, &r, "envoy.filters.http.fault")->type_url, "r");
    ck_assert_str_eq(dp_route_filter_conf(&v, NULL, "envoy.filters.http.fault")->type_url, "vh");
    v.filter_confs.n = 0;
    ck_assert_str_eq(dp_route_filter_conf(&v, &r, "envoy.filters.http.cors")->type_url, "c");
    ck_assert_str_eq(dp_route_filter_conf(&v, NULL, "envoy.filters.http.fault")->type_url, "rc");
    ck_assert_ptr_null(dp_route_filter_conf(&v, &r, "envoy.filters.http.rbac"));
    ck_assert_ptr_null(dp_route_filter_conf(NULL, NULL, "x"));

    const char *s = "connect-failure,refused-stream, unavailable,cancelled,retriable-status-codes,"
                    "nonsense,5xx";
    uint32_t f = dp_retry_on_parse(s, strlen(s));
    ck_assert_uint_eq(f, DP_RETRY_CONNECT_FAILURE | DP_RETRY_REFUSED_STREAM |
                             DP_RETRY_GRPC_UNAVAILABLE | DP_RETRY_GRPC_CANCELLED |
                             DP_RETRY_RETRIABLE_STATUS_CODES | DP_RETRY_5XX);
    ck_assert_uint_eq(dp_retry_on_parse("", 0), 0);
}
END_TEST

START_TEST(test_regex_limits)
{
    /* catastrophic backtracking is cut off by the match limit: no match, and it returns */
    char *err = NULL;
    dp_regex_t *re = dp_regex_new("(a+)+$", 6, &err);
    ck_assert_ptr_nonnull(re);
    char s[64];
    memset(s, 'a', 40);
    s[40] = 'b';
    ck_assert(!dp_regex_full_match(re, s, 41));
    dp_regex_free(re);
    /* any byte, not only UTF-8 */
    re = dp_regex_new("/.*", 3, &err);
    ck_assert(dp_regex_full_match(re, "/\xff\xfe", 3));
    dp_regex_free(re);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("route");
    TCase *tc = tcase_create("route");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_domain_order);
    tcase_add_test(tc, test_domain_ignore_port);
    tcase_add_test(tc, test_only_default_vhost);
    tcase_add_test(tc, test_path_kinds);
    tcase_add_test(tc, test_header_matchers);
    tcase_add_test(tc, test_query_and_grpc);
    tcase_add_test(tc, test_select_first_match);
    tcase_add_test(tc, test_weighted_pick);
    tcase_add_test(tc, test_prefix_and_regex_rewrite);
    tcase_add_test(tc, test_append_actions);
    tcase_add_test(tc, test_level_order);
    tcase_add_test(tc, test_redirect);
    tcase_add_test(tc, test_filter_conf_and_retry_on);
    tcase_add_test(tc, test_regex_limits);
    suite_add_tcase(s, tc);
    return check_run(s);
}
