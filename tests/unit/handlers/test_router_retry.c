/* The router's pure decisions: retry_on conditions against statuses, grpc-status and resets,
 * the jittered exponential back-off's bounds, grpc-timeout parsing and formatting, and the
 * hash policies' keys (xxHash64 over Envoy's inputs). */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <string.h>
#include <xxhash.h>

#include "dataplane/route.h"
#include "handlers/router/hash.h"
#include "handlers/router/retry.h"
#include "tests/unit/check_run.h"

static dp_pool_t *pool;

static void setup(void)
{
    pool = dp_pool_new();
}

static void teardown(void)
{
    dp_pool_free(pool);
}

#define ON(s) dp_retry_on_parse((s), strlen(s))

START_TEST(status_conditions)
{
    uint32_t f = ON("5xx");
    ck_assert(dp_router_retry_status(f, NULL, 0, 500, -1, false));
    ck_assert(dp_router_retry_status(f, NULL, 0, 503, -1, false));
    ck_assert(!dp_router_retry_status(f, NULL, 0, 404, -1, false));
    ck_assert(!dp_router_retry_status(f, NULL, 0, 200, -1, false));
    /* an upstream Envoy's rate limit is never retried */
    ck_assert(!dp_router_retry_status(f, NULL, 0, 503, -1, true));
    f = ON("gateway-error");
    ck_assert(dp_router_retry_status(f, NULL, 0, 502, -1, false));
    ck_assert(dp_router_retry_status(f, NULL, 0, 504, -1, false));
    ck_assert(!dp_router_retry_status(f, NULL, 0, 500, -1, false));
    f = ON("retriable-4xx");
    ck_assert(dp_router_retry_status(f, NULL, 0, 409, -1, false));
    ck_assert(!dp_router_retry_status(f, NULL, 0, 429, -1, false));
    static const uint32_t codes[] = {418, 429};
    f = ON("retriable-status-codes");
    ck_assert(dp_router_retry_status(f, codes, 2, 429, -1, false));
    ck_assert(!dp_router_retry_status(f, codes, 2, 503, -1, false));
    /* the codes alone do nothing without the condition */
    ck_assert(!dp_router_retry_status(ON("5xx"), codes, 2, 429, -1, false));
    /* Istio's default */
    f = ON("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
    static const uint32_t c503[] = {503};
    ck_assert(dp_router_retry_status(f, c503, 1, 503, -1, false));
    ck_assert(!dp_router_retry_status(f, c503, 1, 500, -1, false));
    ck_assert(dp_router_retry_status(f, c503, 1, 200, DP_GRPC_UNAVAILABLE, false));
    ck_assert(dp_router_retry_status(f, c503, 1, 200, DP_GRPC_CANCELLED, false));
    ck_assert(!dp_router_retry_status(f, c503, 1, 200, DP_GRPC_INTERNAL, false));
    ck_assert(!dp_router_retry_status(f, c503, 1, 200, 0, false));
}
END_TEST

START_TEST(grpc_conditions)
{
    static const struct {
        const char *name;
        int code;
    } t[] = {{"cancelled", 1},
             {"deadline-exceeded", 4},
             {"resource-exhausted", 8},
             {"internal", 13},
             {"unavailable", 14}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        uint32_t f = ON(t[i].name);
        for (int code = 0; code <= 16; code++)
            ck_assert_int_eq(dp_router_retry_status(f, NULL, 0, 200, code, false),
                             code == t[i].code);
        ck_assert(!dp_router_retry_status(f, NULL, 0, 200, -1, false));
    }
}
END_TEST

START_TEST(reset_conditions)
{
    uint32_t f = ON("connect-failure");
    ck_assert(dp_router_retry_reset(f, DP_RESET_CONNECT_FAIL, false));
    ck_assert(dp_router_retry_reset(f, DP_RESET_CONNECT_TIMEOUT, false));
    ck_assert(!dp_router_retry_reset(f, DP_RESET_REMOTE, true));
    ck_assert(!dp_router_retry_reset(f, DP_RESET_LOCAL, true)); /* a per-try timeout */
    f = ON("reset");
    ck_assert(dp_router_retry_reset(f, DP_RESET_REMOTE, true));
    ck_assert(dp_router_retry_reset(f, DP_RESET_CONN_TERMINATED, true));
    ck_assert(dp_router_retry_reset(f, DP_RESET_CONNECT_FAIL, false));
    ck_assert(dp_router_retry_reset(f, DP_RESET_LOCAL, true));
    ck_assert(!dp_router_retry_reset(f, DP_RESET_OVERFLOW, false));
    ck_assert(!dp_router_retry_reset(f, DP_RESET_NO_HEALTHY_HOST, false));
    ck_assert(dp_router_retry_reset(ON("5xx"), DP_RESET_REMOTE, true));
    ck_assert(dp_router_retry_reset(ON("gateway-error"), DP_RESET_LOCAL, true));
    f = ON("refused-stream");
    ck_assert(dp_router_retry_reset(f, DP_RESET_REFUSED, true));
    ck_assert(!dp_router_retry_reset(f, DP_RESET_REMOTE, true));
    ck_assert(!dp_router_retry_reset(ON("retriable-4xx,unavailable"), DP_RESET_REMOTE, true));
    /* reset-before-request: only while nothing went upstream */
    f = ON("reset-before-request");
    ck_assert(dp_router_retry_reset(f, DP_RESET_CONN_TERMINATED, false));
    ck_assert(dp_router_retry_reset(f, DP_RESET_CONNECT_FAIL, false));
    ck_assert(!dp_router_retry_reset(f, DP_RESET_REMOTE, true));
}
END_TEST

/* A small deterministic generator for the draws. */
static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

START_TEST(backoff_bounds)
{
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int run = 0; run < 1000; run++) {
        uint64_t interval = 25, max = 250;
        uint64_t caps[] = {25, 50, 100, 200, 250, 250, 250};
        for (size_t k = 0; k < sizeof(caps) / sizeof(caps[0]); k++) {
            uint64_t v = dp_router_backoff_next(&interval, max, next_rand(&seed));
            ck_assert_uint_lt(v, caps[k]);
        }
        ck_assert_uint_eq(interval, 250);
    }
    /* the draws cover the range: over many first back-offs, both halves of [0, 25) */
    uint64_t lo = 0, hi = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t interval = 25;
        uint64_t v = dp_router_backoff_next(&interval, 250, next_rand(&seed));
        if (v < 12)
            lo++;
        else
            hi++;
        ck_assert_uint_eq(interval, 50);
    }
    ck_assert_uint_gt(lo, 300);
    ck_assert_uint_gt(hi, 300);
    /* base == max stays there */
    uint64_t interval = 100;
    for (int i = 0; i < 10; i++)
        ck_assert_uint_lt(dp_router_backoff_next(&interval, 100, next_rand(&seed)), 100);
    ck_assert_uint_eq(interval, 100);
}
END_TEST

#define S(lit) ((dp_str_t){(lit), sizeof(lit) - 1})

START_TEST(grpc_timeout)
{
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("300m")), 300);
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("10S")), 10000);
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("2M")), 120000);
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("1H")), 3600000);
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("1500u")), 2);
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("1n")), 1);
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("0m")), 0);
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("99999999S")), 99999999000LL);
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("123456789S")), -1); /* 9 digits */
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("m")), -1);
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("10x")), -1);
    ck_assert_int_eq(dp_router_grpc_timeout_parse(S("1 S")), -1);
    ck_assert_int_eq(dp_router_grpc_timeout_parse(DP_STR_NULL), -1);
    char b[32];
    ck_assert_uint_eq(dp_router_grpc_timeout_fmt(300, b, sizeof(b)), 4);
    ck_assert_str_eq(b, "300m");
    dp_router_grpc_timeout_fmt(100000000, b, sizeof(b));
    ck_assert_str_eq(b, "100000S");
    ck_assert_int_eq(dp_router_grpc_timeout_parse((dp_str_t){b, strlen(b)}), 100000000);
    ck_assert_int_eq(dp_router_parse_uint(S("250")), 250);
    ck_assert_int_eq(dp_router_parse_uint(S("-1")), -1);
    ck_assert_int_eq(dp_router_parse_uint(S("")), -1);
}
END_TEST

static dp_http_head_t *head(const char *path)
{
    dp_http_head_t *h = dp_pool_calloc(pool, sizeof(*h));
    h->method = DP_STR("GET");
    h->authority = DP_STR("svc.example");
    h->path = (dp_str_t){path, strlen(path)};
    return h;
}

static void add(dp_http_head_t *h, const char *n, const char *v)
{
    dp_headers_add(&h->headers, pool, n, strlen(n), v, strlen(v));
}

START_TEST(hash_values)
{
    /* xxHash64 seed 0 reference values */
    ck_assert_uint_eq(XXH64("", 0, 0), 0xef46db3751d8e999ull);
    ck_assert_uint_eq(XXH64("abc", 3, 0), 0x44bc2cf5ad770999ull);
    struct sockaddr_in rem = {.sin_family = AF_INET, .sin_port = htons(5555)};
    struct sockaddr_in loc = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, "10.0.0.7", &rem.sin_addr);
    inet_pton(AF_INET, "10.0.0.1", &loc.sin_addr);
    const struct sockaddr *r = (const struct sockaddr *)&rem, *l = (const struct sockaddr *)&loc;
    uint64_t h;
    dp_str_t ck;

    dp_hash_policy_t hp = {.kind = DP_HASH_HEADER, .name = "x-user", .cookie_path = ""};
    dp_http_head_t *q = head("/");
    ck_assert(!dp_router_hash(&hp, 1, q, r, l, pool, &h, &ck));
    add(q, "x-user", "abc");
    ck_assert(dp_router_hash(&hp, 1, q, r, l, pool, &h, &ck));
    ck_assert_uint_eq(h, 0x44bc2cf5ad770999ull);
    ck_assert_ptr_null(ck.p);
    /* several values: sorted, chained through the seed, whatever their order */
    add(q, "x-user", "ab");
    uint64_t h2;
    ck_assert(dp_router_hash(&hp, 1, q, r, l, pool, &h2, &ck));
    ck_assert_uint_eq(h2, XXH64("abc", 3, XXH64("ab", 2, 0)));
    /* a pseudo-header is the head's field */
    dp_hash_policy_t ha = {.kind = DP_HASH_HEADER, .name = ":authority", .cookie_path = ""};
    ck_assert(dp_router_hash(&ha, 1, q, r, l, pool, &h, &ck));
    ck_assert_uint_eq(h, XXH64("svc.example", 11, 0));

    /* source_ip: the address without its port */
    dp_hash_policy_t hs = {.kind = DP_HASH_SOURCE_IP, .cookie_path = ""};
    ck_assert(dp_router_hash(&hs, 1, q, r, l, pool, &h, &ck));
    ck_assert_uint_eq(h, XXH64("10.0.0.7", 8, 0));

    /* query_parameter: the first value, undecoded */
    dp_hash_policy_t hq = {.kind = DP_HASH_QUERY_PARAMETER, .name = "id", .cookie_path = ""};
    ck_assert(dp_router_hash(&hq, 1, head("/p?x=1&id=a%20b&id=c"), r, l, pool, &h, &ck));
    ck_assert_uint_eq(h, XXH64("a%20b", 5, 0));
    ck_assert(!dp_router_hash(&hq, 1, head("/p?idx=1"), r, l, pool, &h, &ck));

    /* cookie present (quotes stripped) */
    dp_hash_policy_t hc = {.kind = DP_HASH_COOKIE, .name = "sess", .cookie_path = "/"};
    dp_http_head_t *c = head("/");
    add(c, "cookie", "a=1; sess=\"xyz\"; b=2");
    ck_assert(dp_router_hash(&hc, 1, c, r, l, pool, &h, &ck));
    ck_assert_uint_eq(h, XXH64("xyz", 3, 0));
    ck_assert_ptr_null(ck.p);
    /* absent without a ttl: no hash; with one: generated as Envoy does, and set */
    ck_assert(!dp_router_hash(&hc, 1, head("/"), r, l, pool, &h, &ck));
    hc.has_cookie_ttl = true;
    hc.cookie_ttl_ms = 3600000;
    ck_assert(dp_router_hash(&hc, 1, head("/"), r, l, pool, &h, &ck));
    char hex[17];
    snprintf(hex, sizeof(hex), "%016llx",
             (unsigned long long)XXH64("10.0.0.7:555510.0.0.1:80", 24, 0));
    ck_assert_uint_eq(h, XXH64(hex, 16, 0));
    char want[128];
    snprintf(want, sizeof(want), "sess=\"%s\"; Max-Age=3600; Path=/; HttpOnly", hex);
    ck_assert_int_eq((int)ck.n, (int)strlen(want));
    ck_assert(memcmp(ck.p, want, ck.n) == 0);

    /* combination: rotate-left and xor; a terminal policy that hashed stops the rest */
    dp_hash_policy_t two[2] = {hp, hs};
    ck_assert(dp_router_hash(two, 2, q, r, l, pool, &h, &ck));
    uint64_t a = h2, b = XXH64("10.0.0.7", 8, 0);
    ck_assert_uint_eq(h, ((a << 1) | (a >> 63)) ^ b);
    two[0].terminal = true;
    ck_assert(dp_router_hash(two, 2, q, r, l, pool, &h, &ck));
    ck_assert_uint_eq(h, a);
    /* a terminal one that found nothing does not stop */
    ck_assert(dp_router_hash(two, 2, head("/"), r, l, pool, &h, &ck));
    ck_assert_uint_eq(h, b);

    /* IPv6 text as Envoy prints it */
    struct sockaddr_in6 r6 = {.sin6_family = AF_INET6, .sin6_port = htons(8080)};
    inet_pton(AF_INET6, "::1", &r6.sin6_addr);
    char buf[64];
    ck_assert_uint_gt(dp_router_addr_str((const struct sockaddr *)&r6, true, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "[::1]:8080");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("router_retry");
    TCase *tc = tcase_create("router_retry");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, status_conditions);
    tcase_add_test(tc, grpc_conditions);
    tcase_add_test(tc, reset_conditions);
    tcase_add_test(tc, backoff_bounds);
    tcase_add_test(tc, grpc_timeout);
    tcase_add_test(tc, hash_values);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(suite());
}
