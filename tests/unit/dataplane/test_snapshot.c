/* Snapshots (dataplane/snapshot.h) and their publication to worker threads
 * (dp_worker_publish): lookups, refcounting across threads, the one-slot mailbox keeping only
 * the latest, and every generation freed once its last reference goes. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataplane/snapshot.h"
#include "dataplane/worker.h"
#include "tests/unit/check_run.h"

static dp_snapshot_t *make(uint64_t gen, int n)
{
    dp_snapshot_t *s = dp_snapshot_new(gen);
    for (int i = n - 1; i >= 0; i--) {
        char name[32];
        snprintf(name, sizeof(name), "cluster-%03d", i);
        dp_cluster_t *c = dp_snapshot_add_cluster(s);
        c->name = dp_arena_strdup(s->arena, name);
        dp_endpoint_t *e = dp_arena_alloc(s->arena, sizeof(*e));
        e->weight = (uint32_t)i + 1;
        c->endpoints = e;
        c->n_endpoints = 1;
    }
    ck_assert_int_eq(dp_snapshot_seal(s), 0);
    return s;
}

START_TEST(test_lookup_and_seal)
{
    dp_snapshot_t *s = make(1, 300);
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, "cluster-123");
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(c->endpoints[0].weight, 124);
    ck_assert_ptr_null(dp_snapshot_find_cluster(s, "cluster-300"));
    ck_assert_ptr_null(dp_snapshot_find_cluster(s, ""));
    ck_assert_uint_gt(dp_arena_bytes(s->arena), 300 * sizeof(dp_endpoint_t));
    ck_assert_ptr_null(dp_snapshot_unref(s));

    dp_snapshot_t *d = dp_snapshot_new(2);
    dp_snapshot_add_cluster(d)->name = "same";
    dp_snapshot_add_cluster(d)->name = "same";
    ck_assert_int_eq(dp_snapshot_seal(d), -EEXIST);
    dp_snapshot_unref(d);
}
END_TEST

START_TEST(test_arena_large_and_aligned)
{
    dp_arena_t *a = dp_arena_new();
    for (int i = 0; i < 1000; i++) {
        void *p = dp_arena_alloc(a, (size_t)(i % 97) + 1);
        ck_assert_uint_eq((uintptr_t)p % 16, 0);
    }
    char *big = dp_arena_alloc(a, 1 << 20);
    memset(big, 1, 1 << 20);
    dp_arena_free(a);
    dp_arena_free(NULL);
}
END_TEST

static void wait_generation(dp_worker_t *w, uint64_t gen)
{
    for (int i = 0; i < 500 && dp_worker_generation(w) != gen; i++)
        usleep(2000);
    ck_assert_uint_eq(dp_worker_generation(w), gen);
}

START_TEST(test_publish_to_workers)
{
    uint64_t freed0 = dp_snapshot_freed_count();
    dp_worker_t *w[2] = {dp_worker_new(0, NULL, NULL), dp_worker_new(1, NULL, NULL)};
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(dp_worker_start(w[i]), 0);

    /* Many publishes in a row: the mailbox keeps the latest, the rest are dropped and freed. */
    for (uint64_t gen = 1; gen <= 50; gen++) {
        dp_snapshot_t *s = make(gen, 5);
        for (int i = 0; i < 2; i++)
            dp_worker_publish(w[i], s);
        dp_snapshot_unref(s); /* the workers hold their own references */
    }
    for (int i = 0; i < 2; i++)
        wait_generation(w[i], 50);
    /* All but the current generation are gone. */
    ck_assert_uint_eq(dp_snapshot_freed_count() - freed0, 49);

    /* A reader that pinned the current snapshot keeps it alive across a swap. */
    dp_snapshot_t *pinned = make(51, 1);
    dp_snapshot_ref(pinned);
    for (int i = 0; i < 2; i++)
        dp_worker_publish(w[i], pinned);
    for (int i = 0; i < 2; i++)
        wait_generation(w[i], 51);
    dp_snapshot_t *next = make(52, 1);
    for (int i = 0; i < 2; i++)
        dp_worker_publish(w[i], next);
    dp_snapshot_unref(next);
    for (int i = 0; i < 2; i++)
        wait_generation(w[i], 52);
    ck_assert_ptr_nonnull(dp_snapshot_find_cluster(pinned, "cluster-000"));
    uint64_t before = dp_snapshot_freed_count();
    dp_snapshot_unref(pinned); /* the creator's reference */
    dp_snapshot_unref(pinned); /* the pinning reader's */
    ck_assert_uint_eq(dp_snapshot_freed_count(), before + 1);

    for (int i = 0; i < 2; i++)
        dp_worker_join_free(w[i]);
    /* generations 1..52: every one freed once the workers are gone */
    ck_assert_uint_eq(dp_snapshot_freed_count() - freed0, 52);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("snapshot");
    TCase *tc = tcase_create("snapshot");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_lookup_and_seal);
    tcase_add_test(tc, test_arena_large_and_aligned);
    tcase_add_test(tc, test_publish_to_workers);
    suite_add_tcase(s, tc);
    return check_run(s);
}
