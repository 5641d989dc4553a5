/* Token buckets (dataplane/tokenbucket.h): the refill arithmetic with injected times, exact
 * accounting under concurrent consumers, and the registry keeping a bucket (and its tokens)
 * across two snapshot builds, released with the last arena that used it. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/snapshot.h"
#include "dataplane/tokenbucket.h"
#include "tests/unit/check_run.h"

#define MS 1000000ull
#define S  (1000 * MS)

static const dp_tokenbucket_params_t ten_per_minute = {10, 10, 60 * S};

START_TEST(test_params_check)
{
    dp_tokenbucket_params_t p = {1, 1, 50 * MS};
    ck_assert_int_eq(dp_tokenbucket_params_check(&p), 0);
    p.fill_interval_ns = 49 * MS;
    ck_assert_int_eq(dp_tokenbucket_params_check(&p), -EINVAL);
    p = (dp_tokenbucket_params_t){0, 1, S};
    ck_assert_int_eq(dp_tokenbucket_params_check(&p), -EINVAL);
    p = (dp_tokenbucket_params_t){1, 0, S};
    ck_assert_int_eq(dp_tokenbucket_params_check(&p), -EINVAL);
    ck_assert_int_eq(dp_tokenbucket_params_check(NULL), -EINVAL);
}
END_TEST

START_TEST(test_refill_arithmetic)
{
    /* max 5, 2 per fill, every second, created at t0 (not 0: times are uv_hrtime's). */
    const uint64_t t0 = 123456789ull;
    dp_tokenbucket_params_t p = {5, 2, S};
    dp_tokenbucket_t b;
    dp_tokenbucket_init(&b, &p, t0);
    uint32_t left = 99;
    ck_assert_uint_eq(dp_tokenbucket_tokens_at(&b, t0), 5);
    for (int i = 0; i < 5; i++) {
        ck_assert(dp_tokenbucket_consume_at(&b, 1, t0 + (uint64_t)i * MS, &left));
        ck_assert_uint_eq(left, 4 - (uint32_t)i);
    }
    ck_assert(!dp_tokenbucket_consume_at(&b, 1, t0 + 999 * MS, &left));
    ck_assert_uint_eq(left, 0);
    /* The first fill is at t0 + 1 s exactly, not 1 s after the last consumption. */
    ck_assert_uint_eq(dp_tokenbucket_next_fill_ns(&b, t0 + 999 * MS), 1 * MS);
    ck_assert_uint_eq(dp_tokenbucket_tokens_at(&b, t0 + S), 2);
    ck_assert(dp_tokenbucket_consume_at(&b, 2, t0 + S, &left));
    ck_assert_uint_eq(left, 0);
    ck_assert(!dp_tokenbucket_consume_at(&b, 1, t0 + 2 * S - 1, NULL));
    ck_assert_uint_eq(dp_tokenbucket_next_fill_ns(&b, t0 + 2 * S - 1), 1);
    ck_assert_uint_eq(dp_tokenbucket_next_fill_ns(&b, t0 + 2 * S), S);
    /* Three intervals later: 6 tokens, capped at 5. */
    ck_assert_uint_eq(dp_tokenbucket_tokens_at(&b, t0 + 4 * S + 500 * MS), 5);
    /* Asking for more than is there takes nothing. */
    ck_assert(!dp_tokenbucket_consume_at(&b, 6, t0 + 4 * S + 500 * MS, &left));
    ck_assert_uint_eq(left, 5);
    ck_assert(dp_tokenbucket_consume_at(&b, 3, t0 + 4 * S + 500 * MS, &left));
    ck_assert_uint_eq(left, 2);
    /* A clock read on another thread slightly behind the stored fill adds and loses nothing. */
    ck_assert(dp_tokenbucket_consume_at(&b, 1, t0 + 3 * S, &left));
    ck_assert_uint_eq(left, 1);
    /* A time before the epoch counts as the epoch. */
    dp_tokenbucket_t c;
    dp_tokenbucket_init(&c, &p, t0);
    ck_assert(dp_tokenbucket_consume_at(&c, 5, 0, &left));
    ck_assert_uint_eq(dp_tokenbucket_next_fill_ns(&c, 0), S);
    ck_assert(!dp_tokenbucket_consume_at(&c, 1, t0 + S - 1, NULL));
    ck_assert(dp_tokenbucket_consume_at(&c, 2, t0 + S, NULL));
    /* n == 0 always succeeds. */
    ck_assert(dp_tokenbucket_consume_at(&c, 0, t0 + S, &left));
    ck_assert_uint_eq(left, 0);
}
END_TEST

START_TEST(test_long_idle_and_large_counts)
{
    /* max_tokens near 2^32 and a refill of many intervals at once do not overflow. */
    dp_tokenbucket_params_t p = {UINT32_MAX, UINT32_MAX, 50 * MS};
    dp_tokenbucket_t b;
    dp_tokenbucket_init(&b, &p, 0);
    ck_assert(dp_tokenbucket_consume_at(&b, UINT32_MAX, 0, NULL));
    ck_assert_uint_eq(dp_tokenbucket_tokens_at(&b, 1000 * 50 * MS), UINT32_MAX);
    /* A year untouched: full again. */
    dp_tokenbucket_params_t q = {3, 1, 60 * S};
    dp_tokenbucket_init(&b, &q, 0);
    ck_assert(dp_tokenbucket_consume_at(&b, 3, 0, NULL));
    ck_assert_uint_eq(dp_tokenbucket_tokens_at(&b, 365ull * 24 * 3600 * S), 3);
}
END_TEST

/* ---- concurrency ---- */

#define THREADS 4
#define TOKENS  10000

typedef struct race {
    dp_tokenbucket_t *b;
    atomic_int go;
    atomic_uint ok;
} race_t;

static void *racer(void *arg)
{
    race_t *r = arg;
    while (!atomic_load(&r->go))
        ;
    unsigned mine = 0;
    /* Three times as many attempts as tokens in all: most threads run dry. */
    for (int i = 0; i < 3 * TOKENS; i++)
        mine += dp_tokenbucket_consume_at(r->b, 1, 1000, NULL);
    atomic_fetch_add(&r->ok, mine);
    return NULL;
}

START_TEST(test_concurrent_exact)
{
    dp_tokenbucket_params_t p = {TOKENS, 1, 3600 * S};
    dp_tokenbucket_t b;
    dp_tokenbucket_init(&b, &p, 0);
    race_t r = {.b = &b};
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, racer, &r), 0);
    atomic_store(&r.go, 1);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    ck_assert_uint_eq(atomic_load(&r.ok), TOKENS);
    ck_assert_uint_eq(dp_tokenbucket_tokens_at(&b, 1000), 0);
}
END_TEST

/* The same through the real clock and the registry, with the network filter's call. */
static void *racer_live(void *arg)
{
    race_t *r = arg;
    while (!atomic_load(&r->go))
        ;
    unsigned mine = 0;
    for (int i = 0; i < 1000; i++)
        mine += dp_tokenbucket_try_consume(r->b, 1);
    atomic_fetch_add(&r->ok, mine);
    return NULL;
}

START_TEST(test_concurrent_registry_bucket)
{
    dp_tokenbucket_params_t p = {1000, 1000, 3600 * S};
    race_t r = {.b = dp_tokenbucket_acquire("race", &p)};
    ck_assert_ptr_nonnull(r.b);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, racer_live, &r), 0);
    atomic_store(&r.go, 1);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    ck_assert_uint_eq(atomic_load(&r.ok), 1000);
    ck_assert(!dp_tokenbucket_try_consume(r.b, 1));
    ck_assert_ptr_null(dp_tokenbucket_unref(r.b));
    ck_assert_uint_eq(dp_tokenbucket_registry_size(), 0);
}
END_TEST

/* ---- the registry across snapshot builds ---- */

/* What a config half does while a snapshot is built: acquire, and release with the arena. */
static dp_tokenbucket_t *build(dp_arena_t *arena, const char *id, const dp_tokenbucket_params_t *p)
{
    dp_tokenbucket_t *b = dp_tokenbucket_acquire(id, p);
    ck_assert_ptr_nonnull(b);
    dp_arena_add_cleanup(arena, dp_tokenbucket_unref_cb, b);
    return b;
}

START_TEST(test_registry_across_builds)
{
    ck_assert_uint_eq(dp_tokenbucket_registry_size(), 0);
    dp_snapshot_t *s1 = dp_snapshot_new(1);
    dp_tokenbucket_t *b1 = build(s1->arena,
                                 "http_local_rate_limiter|envoy.filters.http."
                                 "local_ratelimit|listener",
                                 &ten_per_minute);
    dp_tokenbucket_t *other = build(s1->arena, "other", &ten_per_minute);
    ck_assert_ptr_ne(b1, other);
    for (int i = 0; i < 7; i++)
        ck_assert(dp_tokenbucket_try_consume(b1, 1));
    ck_assert_uint_eq(dp_tokenbucket_registry_size(), 2);

    /* The next xDS change: a new snapshot built from the same config, the old one retired. */
    dp_snapshot_t *s2 = dp_snapshot_new(2);
    dp_tokenbucket_t *b2 = build(s2->arena,
                                 "http_local_rate_limiter|envoy.filters.http."
                                 "local_ratelimit|listener",
                                 &ten_per_minute);
    ck_assert_ptr_eq(b1, b2);
    /* Other parameters: another bucket. */
    dp_tokenbucket_params_t p = ten_per_minute;
    p.max_tokens = 11;
    dp_tokenbucket_t *b3 = build(s2->arena,
                                 "http_local_rate_limiter|envoy.filters.http."
                                 "local_ratelimit|listener",
                                 &p);
    ck_assert_ptr_ne(b3, b1);
    ck_assert_uint_eq(dp_tokenbucket_registry_size(), 3);
    dp_snapshot_unref(s1);
    /* "other" went with s1; b1 lives on in s2, its tokens not reset. */
    ck_assert_uint_eq(dp_tokenbucket_registry_size(), 2);
    uint32_t left = 0;
    ck_assert(dp_tokenbucket_consume_at(b2, 1, b2->_epoch_ns, &left));
    ck_assert_uint_eq(left, 2);
    ck_assert(dp_tokenbucket_try_consume(b2, 2));
    ck_assert(!dp_tokenbucket_try_consume(b2, 1));
    dp_snapshot_unref(s2);
    ck_assert_uint_eq(dp_tokenbucket_registry_size(), 0);

    /* Once no snapshot uses it, the same config starts afresh. */
    dp_arena_t *a = dp_arena_new();
    dp_tokenbucket_t *b4 = build(a, "other", &ten_per_minute);
    ck_assert_uint_eq(dp_tokenbucket_tokens_at(b4, b4->_epoch_ns), 10);
    ck_assert_ptr_eq(dp_tokenbucket_ref(b4), b4);
    dp_arena_free(a);
    ck_assert_uint_eq(dp_tokenbucket_registry_size(), 1);
    ck_assert_ptr_null(dp_tokenbucket_unref(b4));
    ck_assert_uint_eq(dp_tokenbucket_registry_size(), 0);
    ck_assert_ptr_null(dp_tokenbucket_unref(NULL));
    ck_assert_ptr_null(dp_tokenbucket_ref(NULL));
}
END_TEST

START_TEST(test_registry_limits)
{
    dp_tokenbucket_params_t bad = {0, 1, S};
    errno = 0;
    ck_assert_ptr_null(dp_tokenbucket_acquire("x", &bad));
    ck_assert_int_eq(errno, EINVAL);
    char *id = malloc(DP_TOKENBUCKET_MAX_ID + 2);
    memset(id, 'a', DP_TOKENBUCKET_MAX_ID + 1);
    id[DP_TOKENBUCKET_MAX_ID + 1] = '\0';
    errno = 0;
    ck_assert_ptr_null(dp_tokenbucket_acquire(id, &ten_per_minute));
    ck_assert_int_eq(errno, EINVAL);
    id[DP_TOKENBUCKET_MAX_ID] = '\0';
    dp_tokenbucket_t *b = dp_tokenbucket_acquire(id, &ten_per_minute);
    ck_assert_ptr_nonnull(b);
    dp_tokenbucket_unref(b);
    free(id);
    ck_assert_ptr_null(dp_tokenbucket_acquire(NULL, &ten_per_minute));
    ck_assert_uint_eq(dp_tokenbucket_registry_size(), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenbucket");
    TCase *tc = tcase_create("tokenbucket");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_params_check);
    tcase_add_test(tc, test_refill_arithmetic);
    tcase_add_test(tc, test_long_idle_and_large_counts);
    tcase_add_test(tc, test_concurrent_exact);
    tcase_add_test(tc, test_concurrent_registry_bucket);
    tcase_add_test(tc, test_registry_across_builds);
    tcase_add_test(tc, test_registry_limits);
    suite_add_tcase(s, tc);
    return check_run(s);
}
