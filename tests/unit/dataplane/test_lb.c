/* Host choice (dataplane/lb.h) against Envoy: the ring hash and Maglev placements of Envoy's
 * own tests (test/extensions/load_balancing_policies/ring_hash/ring_hash_lb_test.cc and
 * maglev/maglev_lb_test.cc, ported where the hosts are keyed by address), a ring re-derived
 * here with XXH64, and distributions with tolerances that can fail: weighted round robin,
 * least request, random, priority failover with the overprovisioning factor, panic, degraded
 * hosts, locality weights, ejected hosts and the retry host predicate. */
#include <arpa/inet.h>
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "dataplane/lb.h"
#include "tests/unit/check_run.h"

/* ---- helpers ---- */

static dp_endpoint_t ep(uint16_t port, uint32_t weight, uint32_t prio, dp_health_t h)
{
    dp_endpoint_t e;
    memset(&e, 0, sizeof(e));
    e.addr.in.sin_family = AF_INET;
    e.addr.in.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &e.addr.in.sin_addr);
    e.weight = weight;
    e.priority = prio;
    e.health = h;
    return e;
}

static dp_lb_config_t config(dp_lb_policy_t policy)
{
    dp_cluster_t c;
    memset(&c, 0, sizeof(c));
    c.lb_policy = policy;
    dp_lb_config_t cfg;
    dp_lb_config_from_cluster(&cfg, &c);
    return cfg;
}

static size_t pick(dp_lb_t *lb, const dp_endpoint_t *eps, size_t n, const dp_lb_ctx_t *ctx)
{
    dp_lb_hosts_t hs = {.eps = eps, .n = n};
    return dp_lb_pick(lb, &hs, ctx);
}

static size_t pick_hash(dp_lb_t *lb, const dp_endpoint_t *eps, size_t n, uint64_t hash)
{
    dp_lb_ctx_t ctx = {.hash = hash, .has_hash = true};
    return pick(lb, eps, n, &ctx);
}

/* A random source returning the next of a list of values. */
typedef struct fixed_rand {
    const uint64_t *v;
    size_t n, i;
} fixed_rand_t;

static uint64_t fixed_next(void *ud)
{
    fixed_rand_t *f = ud;
    uint64_t x = f->v[f->i % f->n];
    f->i++;
    return x;
}

static uint64_t xs_state = 88172645463325252ull;

static uint64_t xs(void)
{
    xs_state ^= xs_state << 13;
    xs_state ^= xs_state >> 7;
    xs_state ^= xs_state << 17;
    return xs_state;
}

/* Envoy's six hosts 127.0.0.1:90..95 */
static void six_hosts(dp_endpoint_t *eps, uint16_t base)
{
    for (int i = 0; i < 6; i++)
        eps[i] = ep((uint16_t)(base + i), 1, 0, DP_HEALTH_HEALTHY);
}

/* ---- ring hash: Envoy's expectations ---- */

START_TEST(test_ring_envoy_basic)
{
    dp_endpoint_t eps[6];
    six_hosts(eps, 90);
    dp_lb_config_t cfg = config(DP_LB_RING_HASH);
    cfg.ring_min = 12;
    dp_lb_t *lb = dp_lb_new(&cfg, 1);
    /* ring: :94 833437586790550860, :92 928266305478181108, :90 1033482794131418490,
     * :95 3551244743356806947, :93 3851675632748031481, ... :90 16117243373044804889 */
    ck_assert_uint_eq(pick_hash(lb, eps, 6, 0), 4);
    ck_assert_uint_eq(pick_hash(lb, eps, 6, UINT64_MAX), 4);
    ck_assert_uint_eq(pick_hash(lb, eps, 6, 3551244743356806947ull), 5);
    ck_assert_uint_eq(pick_hash(lb, eps, 6, 3551244743356806948ull), 3);
    /* without a hash, a random one (here the one Envoy's test injects) */
    const uint64_t r[] = {16117243373044804880ull};
    fixed_rand_t fr = {r, 1, 0};
    dp_lb_set_random(lb, fixed_next, &fr);
    ck_assert_uint_eq(pick(lb, eps, 6, NULL), 0);
    dp_lb_set_random(lb, NULL, NULL);
    /* no healthy host: panic, the ring of all hosts */
    for (int i = 0; i < 6; i++)
        eps[i].health = DP_HEALTH_UNHEALTHY;
    dp_lb_invalidate(lb);
    ck_assert_uint_eq(pick_hash(lb, eps, 6, 0), 4);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_ring_envoy_retry_predicate)
{
    dp_endpoint_t eps[6];
    six_hosts(eps, 90);
    dp_lb_config_t cfg = config(DP_LB_RING_HASH);
    cfg.ring_min = 12;
    dp_lb_t *lb = dp_lb_new(&cfg, 1);
    const dp_addr_t *ex4[] = {&eps[4].addr};
    dp_lb_ctx_t ctx = {.hash = 0,
                       .has_hash = true,
                       .exclude = ex4,
                       .n_exclude = 1,
                       .host_selection_max_attempts = 2};
    /* the second attempt takes the next entry of the ring */
    ck_assert_uint_eq(pick(lb, eps, 6, &ctx), 2);
    /* every host excluded: the last one tried */
    const dp_addr_t *all[6];
    for (int i = 0; i < 6; i++)
        all[i] = &eps[i].addr;
    ctx.exclude = all;
    ctx.n_exclude = 6;
    ck_assert_uint_eq(pick(lb, eps, 6, &ctx), 0);
    /* retries wrap around the ring */
    ctx.host_selection_max_attempts = 13;
    ck_assert_uint_eq(pick(lb, eps, 6, &ctx), 2);
    /* not excluded: the first attempt */
    const dp_addr_t *ex1[] = {&eps[1].addr};
    ctx.exclude = ex1;
    ctx.n_exclude = 1;
    ck_assert_uint_eq(pick(lb, eps, 6, &ctx), 4);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_ring_envoy_failover)
{
    /* P0 :80 with no healthy host, P1 :82 healthy */
    dp_endpoint_t eps[3] = {ep(80, 1, 0, DP_HEALTH_UNHEALTHY), ep(82, 1, 1, DP_HEALTH_HEALTHY),
                            ep(81, 1, 0, DP_HEALTH_UNHEALTHY)};
    dp_lb_config_t cfg = config(DP_LB_RING_HASH);
    cfg.ring_min = 12;
    dp_lb_t *lb = dp_lb_new(&cfg, 7);
    ck_assert_uint_eq(pick(lb, eps, 2, NULL), 1);
    /* P0 healthy: it is chosen */
    eps[0].health = DP_HEALTH_HEALTHY;
    dp_lb_invalidate(lb);
    ck_assert_uint_eq(pick(lb, eps, 2, NULL), 0);
    /* P0 with 1 of 2 healthy: 70% (1.4 * 50%) to P0, 30% to P1 */
    const uint64_t r[] = {0, 69, 71}; /* the seed, then the draws */
    fixed_rand_t fr = {r, 3, 0};
    dp_lb_set_random(lb, fixed_next, &fr);
    ck_assert_uint_eq(pick(lb, eps, 3, NULL), 0);
    ck_assert_uint_eq(pick(lb, eps, 3, NULL), 1);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_ring_envoy_uneven_and_weighted)
{
    /* two hosts, minimum ring size 3: four entries; hash 0 to :80 */
    dp_endpoint_t two[2] = {ep(80, 1, 0, DP_HEALTH_HEALTHY), ep(81, 1, 0, DP_HEALTH_HEALTHY)};
    dp_lb_config_t cfg = config(DP_LB_RING_HASH);
    cfg.ring_min = 3;
    dp_lb_t *lb = dp_lb_new(&cfg, 1);
    ck_assert_uint_eq(pick_hash(lb, two, 2, 0), 0);
    two[0] = ep(82, 1, 0, DP_HEALTH_HEALTHY);
    two[0] = two[1];
    two[1] = ep(82, 1, 0, DP_HEALTH_HEALTHY);
    dp_lb_invalidate(lb);
    ck_assert_uint_eq(pick_hash(lb, two, 2, 0), 0); /* :81 */
    dp_lb_free(lb);

    /* weights 1, 2, 3 on a ring of exactly six entries */
    dp_endpoint_t eps[3] = {ep(90, 1, 0, DP_HEALTH_HEALTHY), ep(91, 2, 0, DP_HEALTH_HEALTHY),
                            ep(92, 3, 0, DP_HEALTH_HEALTHY)};
    cfg.ring_min = 6;
    cfg.ring_max = 6;
    lb = dp_lb_new(&cfg, 1);
    const struct {
        uint64_t h;
        size_t host;
    } tiny[] = {{928266305478181108ull, 2},   {4443673547860492590ull, 2},
                {5583722120771150861ull, 1},  {6311230543546372928ull, 1},
                {13444792449719432967ull, 2}, {16117243373044804889ull, 0}};
    for (size_t i = 0; i < sizeof(tiny) / sizeof(tiny[0]); i++)
        ck_assert_uint_eq(pick_hash(lb, eps, 3, tiny[i].h), tiny[i].host);
    dp_lb_free(lb);

    /* the same on a ring of 6144: Envoy's counts over 6000 evenly spaced hashes */
    cfg.ring_min = 6144;
    cfg.ring_max = DP_LB_RING_MAX_DEFAULT;
    lb = dp_lb_new(&cfg, 1);
    uint32_t counts[3] = {0};
    for (uint64_t i = 0; i < 6000; i++)
        counts[pick_hash(lb, eps, 3, i * (UINT64_MAX / 6000))]++;
    ck_assert_uint_eq(counts[0], 987);
    ck_assert_uint_eq(counts[1], 1932);
    ck_assert_uint_eq(counts[2], 3081);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_ring_envoy_locality_weighted)
{
    /* zones A..D with locality weights 1, 2, 3, 0 */
    dp_endpoint_t eps[4];
    const char *zones[4] = {"A", "B", "C", "D"};
    const uint32_t lw[4] = {1, 2, 3, 0};
    for (int i = 0; i < 4; i++) {
        eps[i] = ep((uint16_t)(90 + i), 1, 0, DP_HEALTH_HEALTHY);
        eps[i].zone = zones[i];
        eps[i].locality_weight = lw[i];
    }
    dp_lb_config_t cfg = config(DP_LB_RING_HASH);
    cfg.locality_weighted = true;
    cfg.ring_min = 6;
    cfg.ring_max = 6;
    dp_lb_t *lb = dp_lb_new(&cfg, 1);
    const struct {
        uint64_t h;
        size_t host;
    } tiny[] = {{928266305478181108ull, 2},   {4443673547860492590ull, 2},
                {5583722120771150861ull, 1},  {6311230543546372928ull, 1},
                {13444792449719432967ull, 2}, {16117243373044804889ull, 0}};
    for (size_t i = 0; i < sizeof(tiny) / sizeof(tiny[0]); i++)
        ck_assert_uint_eq(pick_hash(lb, eps, 4, tiny[i].h), tiny[i].host);
    dp_lb_free(lb);
    cfg.ring_min = 6144;
    cfg.ring_max = DP_LB_RING_MAX_DEFAULT;
    lb = dp_lb_new(&cfg, 1);
    uint32_t counts[4] = {0};
    for (uint64_t i = 0; i < 6000; i++)
        counts[pick_hash(lb, eps, 4, i * (UINT64_MAX / 6000))]++;
    ck_assert_uint_eq(counts[0], 987);
    ck_assert_uint_eq(counts[1], 1932);
    ck_assert_uint_eq(counts[2], 3081);
    ck_assert_uint_eq(counts[3], 0);
    dp_lb_free(lb);

    /* host weights 1:2 within each of two localities weighted 1:2; a ring of nine */
    dp_endpoint_t hl[4] = {ep(90, 1, 0, DP_HEALTH_HEALTHY), ep(91, 2, 0, DP_HEALTH_HEALTHY),
                           ep(92, 1, 0, DP_HEALTH_HEALTHY), ep(93, 2, 0, DP_HEALTH_HEALTHY)};
    for (int i = 0; i < 4; i++) {
        hl[i].zone = i < 2 ? "A" : "B";
        hl[i].locality_weight = i < 2 ? 1 : 2;
    }
    cfg.ring_min = 9;
    cfg.ring_max = 9;
    lb = dp_lb_new(&cfg, 1);
    const struct {
        uint64_t h;
        size_t host;
    } nine[] = {
        {928266305478181108ull, 2},   {3851675632748031481ull, 3},  {5583722120771150861ull, 1},
        {6311230543546372928ull, 1},  {7700377290971790572ull, 3},  {12559126875973811811ull, 3},
        {13444792449719432967ull, 2}, {13784988426630141778ull, 3}, {16117243373044804889ull, 0}};
    for (size_t i = 0; i < sizeof(nine) / sizeof(nine[0]); i++)
        ck_assert_uint_eq(pick_hash(lb, hl, 4, nine[i].h), nine[i].host);
    dp_lb_free(lb);
    /* all locality weights 0: no host */
    for (int i = 0; i < 4; i++)
        hl[i].locality_weight = 0;
    lb = dp_lb_new(&cfg, 1);
    ck_assert_uint_eq(pick_hash(lb, hl, 4, 1), DP_LB_NONE);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_ring_envoy_murmur)
{
    dp_endpoint_t eps[6];
    six_hosts(eps, 80);
    dp_lb_config_t cfg = config(DP_LB_RING_HASH);
    cfg.ring_min = 12;
    cfg.ring_murmur = true;
    dp_lb_t *lb = dp_lb_new(&cfg, 1);
    ck_assert_uint_eq(pick_hash(lb, eps, 6, 0), 5);
    ck_assert_uint_eq(pick_hash(lb, eps, 6, UINT64_MAX), 5);
    ck_assert_uint_eq(pick_hash(lb, eps, 6, 1358027074129602068ull), 5);
    ck_assert_uint_eq(pick_hash(lb, eps, 6, 1358027074129602069ull), 3);
    ck_assert_uint_eq(pick_hash(lb, eps, 6, 10150910876324007730ull), 2);
    dp_lb_free(lb);
}
END_TEST

/* ---- ring hash: re-derived here ---- */

typedef struct tent {
    uint64_t h;
    size_t host;
} tent_t;

static int tent_cmp(const void *a, const void *b)
{
    const tent_t *x = a, *y = b;
    return x->h < y->h ? -1 : x->h > y->h;
}

START_TEST(test_ring_rederived)
{
    /* Three hosts of weight 1, minimum ring 1024: scale ceil(1024 / 3) * 3 = 1026, 342 entries
     * per host keyed "127.0.0.1:808<k>_<i>". */
    dp_endpoint_t eps[3];
    for (int i = 0; i < 3; i++)
        eps[i] = ep((uint16_t)(8080 + i), 1, 0, DP_HEALTH_HEALTHY);
    static tent_t ring[3 * 342];
    size_t n = 0;
    for (size_t k = 0; k < 3; k++) {
        for (int i = 0; i < 342; i++) {
            char key[64];
            int len = snprintf(key, sizeof(key), "127.0.0.1:%zu_%d", 8080 + k, i);
            ring[n++] = (tent_t){XXH64(key, (size_t)len, 0), k};
        }
    }
    qsort(ring, n, sizeof(ring[0]), tent_cmp);
    char key[64];
    ck_assert_uint_eq(dp_lb_host_key(&eps[1].addr, key, sizeof(key)), strlen("127.0.0.1:8081"));
    ck_assert_str_eq(key, "127.0.0.1:8081");
    dp_lb_config_t cfg = config(DP_LB_RING_HASH);
    dp_lb_t *lb = dp_lb_new(&cfg, 3);
    /* each ring point itself, the one after it, and random hashes: the first entry >= h */
    for (size_t i = 0; i < n; i += 17) {
        ck_assert_uint_eq(pick_hash(lb, eps, 3, ring[i].h), ring[i].host);
        ck_assert_uint_eq(pick_hash(lb, eps, 3, ring[i].h + 1), ring[(i + 1) % n].host);
    }
    ck_assert_uint_eq(pick_hash(lb, eps, 3, ring[n - 1].h + 1), ring[0].host);
    for (int t = 0; t < 2000; t++) {
        uint64_t h = xs();
        size_t lo = 0, hi = n;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (ring[mid].h < h)
                lo = mid + 1;
            else
                hi = mid;
        }
        ck_assert_uint_eq(pick_hash(lb, eps, 3, h), ring[lo % n].host);
    }
    /* spread: 30,000 random hashes within 15% of a third each */
    uint32_t counts[3] = {0};
    for (int t = 0; t < 30000; t++)
        counts[pick_hash(lb, eps, 3, xs())]++;
    for (int k = 0; k < 3; k++) {
        ck_assert_uint_gt(counts[k], 8500);
        ck_assert_uint_lt(counts[k], 11500);
    }
    dp_lb_free(lb);
}
END_TEST

/* ---- Maglev: Envoy's expectations ---- */

START_TEST(test_maglev_envoy)
{
    dp_endpoint_t eps[6];
    six_hosts(eps, 90);
    dp_lb_config_t cfg = config(DP_LB_MAGLEV);
    cfg.maglev_size = 7;
    dp_lb_t *lb = dp_lb_new(&cfg, 1);
    const size_t basic[7] = {2, 4, 0, 1, 5, 0, 3};
    for (uint64_t i = 0; i < 21; i++)
        ck_assert_uint_eq(pick_hash(lb, eps, 6, i), basic[i % 7]);
    /* the retry host predicate */
    const dp_addr_t *ex1[] = {&eps[1].addr};
    dp_lb_ctx_t ctx = {.hash = 10,
                       .has_hash = true,
                       .exclude = ex1,
                       .n_exclude = 1,
                       .host_selection_max_attempts = 2};
    ck_assert_uint_eq(pick_hash(lb, eps, 6, 10), 1);
    ck_assert_uint_eq(pick(lb, eps, 6, &ctx), 0);
    const dp_addr_t *all[6];
    for (int i = 0; i < 6; i++)
        all[i] = &eps[i].addr;
    ctx.exclude = all;
    ctx.n_exclude = 6;
    ck_assert_uint_eq(pick(lb, eps, 6, &ctx), 5);
    /* stability: the same table whatever the order of the hosts */
    dp_endpoint_t rev[6];
    for (int i = 0; i < 6; i++)
        rev[i] = eps[5 - i];
    for (uint64_t i = 0; i < 7; i++)
        ck_assert_uint_eq(pick_hash(lb, rev, 6, i), 5 - basic[i]);
    dp_lb_free(lb);

    /* weights 1 and 2, table 17 */
    dp_endpoint_t w[2] = {ep(90, 1, 0, DP_HEALTH_HEALTHY), ep(91, 2, 0, DP_HEALTH_HEALTHY)};
    cfg.maglev_size = 17;
    lb = dp_lb_new(&cfg, 1);
    const size_t weighted[17] = {1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1};
    for (uint64_t i = 0; i < 51; i++)
        ck_assert_uint_eq(pick_hash(lb, w, 2, i), weighted[i % 17]);
    dp_lb_free(lb);

    /* localities of equal weight: host weights do not matter across them */
    w[0].zone = "A";
    w[1].zone = "B";
    w[0].locality_weight = w[1].locality_weight = 1;
    cfg.locality_weighted = true;
    lb = dp_lb_new(&cfg, 1);
    const size_t same[17] = {1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1};
    for (uint64_t i = 0; i < 51; i++)
        ck_assert_uint_eq(pick_hash(lb, w, 2, i), same[i % 17]);
    dp_lb_free(lb);

    /* zones A (8), B (0), C (2) */
    dp_endpoint_t d[3] = {ep(90, 1, 0, DP_HEALTH_HEALTHY), ep(91, 2, 0, DP_HEALTH_HEALTHY),
                          ep(92, 3, 0, DP_HEALTH_HEALTHY)};
    d[0].zone = "A";
    d[0].locality_weight = 8;
    d[1].zone = "C";
    d[1].locality_weight = 2;
    d[2].zone = "B";
    d[2].locality_weight = 0;
    lb = dp_lb_new(&cfg, 1);
    const size_t diff[17] = {1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0};
    for (uint64_t i = 0; i < 51; i++)
        ck_assert_uint_eq(pick_hash(lb, d, 3, i), diff[i % 17]);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_maglev_spread)
{
    /* the default table of 65537 over three equal hosts: each owns a third, to one entry */
    dp_endpoint_t eps[3];
    for (int i = 0; i < 3; i++)
        eps[i] = ep((uint16_t)(8080 + i), 1, 0, DP_HEALTH_HEALTHY);
    dp_lb_config_t cfg = config(DP_LB_MAGLEV);
    ck_assert_uint_eq(cfg.maglev_size, 65537);
    dp_lb_t *lb = dp_lb_new(&cfg, 1);
    uint32_t counts[3] = {0};
    for (uint64_t h = 0; h < 65537; h++)
        counts[pick_hash(lb, eps, 3, h)]++;
    for (int k = 0; k < 3; k++) {
        ck_assert_uint_ge(counts[k], 21845);
        ck_assert_uint_le(counts[k], 21846);
    }
    /* weights 1:2:3: a table in proportion, within 1% */
    for (int i = 0; i < 3; i++)
        eps[i].weight = (uint32_t)i + 1;
    dp_lb_invalidate(lb);
    memset(counts, 0, sizeof(counts));
    for (uint64_t h = 0; h < 65537; h++)
        counts[pick_hash(lb, eps, 3, h)]++;
    for (int k = 0; k < 3; k++) {
        double want = 65537.0 * (k + 1) / 6;
        ck_assert_double_le(counts[k] > want ? counts[k] - want : want - counts[k], want / 100);
    }
    /* a host that goes moves only its own keys */
    static size_t before[65537];
    for (uint64_t h = 0; h < 65537; h++)
        before[h] = pick_hash(lb, eps, 3, h);
    dp_lb_free(lb);
    lb = dp_lb_new(&cfg, 1);
    size_t moved = 0;
    for (uint64_t h = 0; h < 65537; h++) {
        size_t now = pick_hash(lb, eps, 2, h);
        if (before[h] != 2)
            moved += now != before[h];
    }
    ck_assert_uint_lt(moved, 65537 / 10);
    dp_lb_free(lb);
}
END_TEST

/* ---- round robin, least request, random ---- */

START_TEST(test_round_robin)
{
    dp_endpoint_t eps[3] = {ep(1, 1, 0, DP_HEALTH_HEALTHY), ep(2, 2, 0, DP_HEALTH_HEALTHY),
                            ep(3, 3, 0, DP_HEALTH_HEALTHY)};
    dp_lb_config_t cfg = config(DP_LB_ROUND_ROBIN);
    for (uint64_t seed = 1; seed < 20; seed++) {
        dp_lb_t *lb = dp_lb_new(&cfg, seed);
        uint32_t counts[3] = {0};
        for (int i = 0; i < 6000; i++)
            counts[pick(lb, eps, 3, NULL)]++;
        /* EDF: exact (one period is six picks) up to the start */
        for (int k = 0; k < 3; k++) {
            ck_assert_uint_ge(counts[k], 1000u * (k + 1) - 1);
            ck_assert_uint_le(counts[k], 1000u * (k + 1) + 1);
        }
        /* no host twice in a row but the heaviest */
        dp_lb_free(lb);
    }
    /* Envoy's WeightedSeed: every random number 1 (the seed too), weights 1 and 2 */
    {
        dp_endpoint_t two[2] = {ep(80, 1, 0, DP_HEALTH_HEALTHY), ep(81, 2, 0, DP_HEALTH_HEALTHY)};
        const uint64_t one[] = {1};
        fixed_rand_t fr = {one, 1, 0};
        dp_lb_t *lb = dp_lb_new(&cfg, 1);
        dp_lb_set_random(lb, fixed_next, &fr);
        const size_t want[6] = {0, 1, 1, 0, 1, 1};
        for (int i = 0; i < 6; i++)
            ck_assert_uint_eq(pick(lb, two, 2, NULL), want[i]);
        dp_lb_free(lb);
    }
    /* equal weights: plain round robin, every host once per cycle */
    for (int i = 0; i < 3; i++)
        eps[i].weight = 1;
    dp_lb_t *lb = dp_lb_new(&cfg, 5);
    size_t first = pick(lb, eps, 3, NULL);
    for (int i = 1; i < 30; i++)
        ck_assert_uint_eq(pick(lb, eps, 3, NULL), (first + (size_t)i) % 3);
    /* a rebuild (new snapshot, health change) keeps the position, as Envoy's rr_indexes_ */
    dp_lb_invalidate(lb);
    ck_assert_uint_eq(pick(lb, eps, 3, NULL), (first + 30) % 3);
    dp_lb_free(lb);
}
END_TEST

static uint64_t active_of(void *ud, size_t i)
{
    const uint64_t *a = ud;
    return a[i];
}

START_TEST(test_least_request)
{
    dp_endpoint_t eps[3] = {ep(1, 1, 0, DP_HEALTH_HEALTHY), ep(2, 1, 0, DP_HEALTH_HEALTHY),
                            ep(3, 1, 0, DP_HEALTH_HEALTHY)};
    uint64_t active[3] = {5, 0, 5};
    dp_lb_hosts_t hs = {.eps = eps, .n = 3, .active = active_of, .active_ud = active};
    dp_lb_config_t cfg = config(DP_LB_LEAST_REQUEST);
    ck_assert_uint_eq(cfg.choice_count, 2);
    dp_lb_t *lb = dp_lb_new(&cfg, 11);
    /* two draws with replacement: the idle host unless both miss it, 1 - (2/3)^2 = 5/9 */
    uint32_t idle = 0;
    for (int i = 0; i < 9000; i++)
        idle += dp_lb_pick(lb, &hs, NULL) == 1;
    ck_assert_uint_gt(idle, 5000 - 300);
    ck_assert_uint_lt(idle, 5000 + 300);
    dp_lb_free(lb);
    /* more choices: the idle host nearly always */
    cfg.choice_count = 10;
    lb = dp_lb_new(&cfg, 11);
    idle = 0;
    for (int i = 0; i < 1000; i++)
        idle += dp_lb_pick(lb, &hs, NULL) == 1;
    ck_assert_uint_gt(idle, 960);
    dp_lb_free(lb);

    /* unequal weights: EDF with weight / (active + 1): weights 1 and 2, the second with three
     * active requests: 1 against 0.5 */
    dp_endpoint_t w[2] = {ep(1, 1, 0, DP_HEALTH_HEALTHY), ep(2, 2, 0, DP_HEALTH_HEALTHY)};
    uint64_t act[2] = {0, 0};
    dp_lb_hosts_t hw = {.eps = w, .n = 2, .active = active_of, .active_ud = act};
    cfg.choice_count = 2;
    lb = dp_lb_new(&cfg, 3);
    uint32_t c[2] = {0};
    for (int i = 0; i < 3000; i++)
        c[dp_lb_pick(lb, &hw, NULL)]++;
    ck_assert_uint_ge(c[1], 2000 - 30);
    ck_assert_uint_le(c[1], 2000 + 30);
    act[1] = 3;
    c[0] = c[1] = 0;
    for (int i = 0; i < 3000; i++)
        c[dp_lb_pick(lb, &hw, NULL)]++;
    ck_assert_uint_ge(c[0], 2000 - 30);
    ck_assert_uint_le(c[0], 2000 + 30);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_least_request_envoy)
{
    dp_lb_config_t cfg = config(DP_LB_LEAST_REQUEST);
    /* Normal: draws 0 (the priority), 2 and 3 (hosts 0 and 1): the one with fewer requests */
    dp_endpoint_t two[2] = {ep(80, 1, 0, DP_HEALTH_HEALTHY), ep(81, 1, 0, DP_HEALTH_HEALTHY)};
    uint64_t act[4] = {1, 2, 0, 0};
    dp_lb_hosts_t hs = {.eps = two, .n = 2, .active = active_of, .active_ud = act};
    const uint64_t r1[] = {0, 0, 2, 3}; /* the seed, then the draws */
    fixed_rand_t fr = {r1, 4, 0};
    dp_lb_t *lb = dp_lb_new(&cfg, 1);
    dp_lb_set_random(lb, fixed_next, &fr);
    ck_assert_uint_eq(dp_lb_pick(lb, &hs, NULL), 0);
    act[0] = 2;
    act[1] = 1;
    fr.i = 1;
    ck_assert_uint_eq(dp_lb_pick(lb, &hs, NULL), 1);
    dp_lb_free(lb);

    /* PNC: five choices over hosts with 4, 3, 2, 1 requests; draws 0 3 0 3 2 1 */
    dp_endpoint_t four[4];
    for (int i = 0; i < 4; i++)
        four[i] = ep((uint16_t)(80 + i), 1, 0, DP_HEALTH_HEALTHY);
    uint64_t act4[4] = {4, 3, 2, 1};
    dp_lb_hosts_t h4 = {.eps = four, .n = 4, .active = active_of, .active_ud = act4};
    cfg.choice_count = 5;
    const uint64_t zero[] = {0};
    fixed_rand_t fz = {zero, 1, 0};
    lb = dp_lb_new(&cfg, 1);
    dp_lb_set_random(lb, fixed_next, &fz);
    ck_assert_uint_eq(dp_lb_pick(lb, &h4, NULL), 0);
    const uint64_t r5[] = {0, 0, 3, 0, 3, 2, 1};
    fixed_rand_t f5 = {r5, 7, 0};
    dp_lb_set_random(lb, fixed_next, &f5);
    ck_assert_uint_eq(dp_lb_pick(lb, &h4, NULL), 3);
    dp_lb_free(lb);

    /* WeightImbalance: weights 1 and 2, every draw 0: EDF over weight / (active + 1) */
    cfg.choice_count = 2;
    two[1].weight = 2;
    act[0] = act[1] = 0;
    fz.i = 0;
    lb = dp_lb_new(&cfg, 1);
    dp_lb_set_random(lb, fixed_next, &fz);
    const size_t w1[6] = {1, 0, 1, 1, 0, 1};
    for (int i = 0; i < 6; i++)
        ck_assert_uint_eq(dp_lb_pick(lb, &hs, NULL), w1[i]);
    act[1] = 1; /* 1:1 */
    const size_t w2[5] = {1, 0, 1, 0, 1};
    for (int i = 0; i < 5; i++)
        ck_assert_uint_eq(dp_lb_pick(lb, &hs, NULL), w2[i]);
    act[0] = 1; /* 1:4 */
    act[1] = 0;
    const size_t w3[10] = {0, 1, 1, 1, 0, 1, 1, 1, 1, 0};
    for (int i = 0; i < 10; i++)
        ck_assert_uint_eq(dp_lb_pick(lb, &hs, NULL), w3[i]);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_random)
{
    /* Envoy's RANDOM does not weigh hosts */
    dp_endpoint_t eps[3] = {ep(1, 1, 0, DP_HEALTH_HEALTHY), ep(2, 0, 0, DP_HEALTH_HEALTHY),
                            ep(3, 3, 0, DP_HEALTH_HEALTHY)};
    dp_lb_config_t cfg = config(DP_LB_RANDOM);
    dp_lb_t *lb = dp_lb_new(&cfg, 9);
    uint32_t counts[3] = {0};
    for (int i = 0; i < 30000; i++)
        counts[pick(lb, eps, 3, NULL)]++;
    for (int k = 0; k < 3; k++) {
        ck_assert_uint_gt(counts[k], 10000 - 500);
        ck_assert_uint_lt(counts[k], 10000 + 500);
    }
    dp_lb_free(lb);
}
END_TEST

/* ---- priorities, panic, degraded hosts ---- */

START_TEST(test_priority_failover)
{
    /* P0: one of three healthy: health 140 * 1 / 3 = 46 (integer, as Envoy), P1 the rest */
    dp_endpoint_t eps[6] = {ep(1, 1, 0, DP_HEALTH_HEALTHY), ep(2, 1, 0, DP_HEALTH_UNHEALTHY),
                            ep(3, 1, 0, DP_HEALTH_TIMEOUT), ep(4, 1, 1, DP_HEALTH_HEALTHY),
                            ep(5, 1, 1, DP_HEALTH_HEALTHY), ep(6, 1, 1, DP_HEALTH_HEALTHY)};
    dp_lb_config_t cfg = config(DP_LB_ROUND_ROBIN);
    dp_lb_t *lb = dp_lb_new(&cfg, 21);
    uint32_t counts[6] = {0};
    for (int i = 0; i < 30000; i++)
        counts[pick(lb, eps, 6, NULL)]++;
    ck_assert_uint_eq(counts[1] + counts[2], 0);
    ck_assert_uint_gt(counts[0], 13800 - 600);
    ck_assert_uint_lt(counts[0], 13800 + 600);
    /* P1's three hosts share the rest evenly (round robin) */
    for (int k = 3; k < 6; k++) {
        ck_assert_uint_gt(counts[k], 5400 - 400);
        ck_assert_uint_lt(counts[k], 5400 + 400);
    }
    /* the boundary: draws 45 (-> 46) to P0, 46 (-> 47) to P1 */
    const uint64_t r[] = {0, 45, 46}; /* the seed, then the draws */
    fixed_rand_t fr = {r, 3, 0};
    dp_lb_set_random(lb, fixed_next, &fr);
    ck_assert_uint_eq(pick(lb, eps, 6, NULL), 0);
    ck_assert_uint_ge(pick(lb, eps, 6, NULL), 3);
    dp_lb_set_random(lb, NULL, NULL);
    /* a smaller overprovisioning factor: 100 * 1 / 3 = 33 */
    cfg.overprovisioning = 100;
    dp_lb_configure(lb, &cfg);
    memset(counts, 0, sizeof(counts));
    for (int i = 0; i < 30000; i++)
        counts[pick(lb, eps, 6, NULL)]++;
    ck_assert_uint_gt(counts[0], 9900 - 600);
    ck_assert_uint_lt(counts[0], 9900 + 600);
    /* 80% healthy is still 100% with 1.4 */
    dp_lb_free(lb);
    dp_endpoint_t five[6];
    for (int i = 0; i < 5; i++)
        five[i] = ep((uint16_t)(10 + i), 1, 0, i == 0 ? DP_HEALTH_UNHEALTHY : DP_HEALTH_HEALTHY);
    five[5] = ep(20, 1, 1, DP_HEALTH_HEALTHY);
    cfg = config(DP_LB_ROUND_ROBIN);
    lb = dp_lb_new(&cfg, 2);
    for (int i = 0; i < 1000; i++) {
        size_t h = pick(lb, five, 6, NULL);
        ck_assert(h >= 1 && h <= 4);
    }
    dp_lb_free(lb);
}
END_TEST

/* The tables of Envoy's "Priority levels" page: 100 hosts per priority, `healthy` of them
 * healthy; the load of each priority, counted over the draws 0..99. */
static void priority_loads(const uint32_t *healthy, size_t n_prio, uint32_t *load)
{
    static dp_endpoint_t eps[300];
    size_t n = 0;
    for (size_t p = 0; p < n_prio; p++) {
        for (uint32_t i = 0; i < 100; i++, n++)
            eps[n] = ep((uint16_t)(1000 + n), 1, (uint32_t)p,
                        i < healthy[p] ? DP_HEALTH_HEALTHY : DP_HEALTH_UNHEALTHY);
    }
    dp_lb_config_t cfg = config(DP_LB_RANDOM);
    cfg.panic_threshold = 0; /* the page leaves panic aside */
    dp_lb_t *lb = dp_lb_new(&cfg, 1);
    static uint64_t draws[101];
    for (uint64_t i = 0; i < 101; i++)
        draws[i] = i == 0 ? 0 : i - 1; /* the seed, then 0..99 */
    fixed_rand_t fr = {draws, 101, 0};
    dp_lb_set_random(lb, fixed_next, &fr);
    memset(load, 0, n_prio * sizeof(*load));
    for (int i = 0; i < 100; i++)
        load[eps[pick(lb, eps, n, NULL)].priority]++;
    dp_lb_free(lb);
}

START_TEST(test_priority_tables)
{
    const struct {
        uint32_t healthy[3];
        size_t n;
        uint32_t load[3];
    } rows[] = {
        {{100, 100}, 2, {100, 0}},         {{72, 100}, 2, {100, 0}},
        {{71, 100}, 2, {99, 1}},           {{50, 100}, 2, {70, 30}},
        {{25, 100}, 2, {35, 65}},          {{0, 100}, 2, {0, 100}},
        {{72, 72}, 2, {100, 0}},           {{71, 71}, 2, {99, 1}},
        {{50, 50}, 2, {70, 30}},           {{25, 25}, 2, {50, 50}},
        {{100, 100, 100}, 3, {100, 0, 0}}, {{71, 71, 100}, 3, {99, 1, 0}},
        {{50, 50, 100}, 3, {70, 30, 0}},   {{25, 100, 100}, 3, {35, 65, 0}},
        {{25, 25, 100}, 3, {35, 35, 30}}, /* the page says 36, 36, 28; recalculatePerPriorityState
                                           * gives the rounding remainder to the first healthy
                                           * priority: 35 + 2, 35, 28 */
        {{25, 25, 20}, 3, {37, 35, 28}},
    };
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        uint32_t load[3];
        priority_loads(rows[r].healthy, rows[r].n, load);
        for (size_t p = 0; p < rows[r].n; p++)
            ck_assert_msg(load[p] == rows[r].load[p], "row %zu P%zu: %u, want %u", r, p, load[p],
                          rows[r].load[p]);
    }
}
END_TEST

START_TEST(test_panic)
{
    /* one of four healthy: 25% < 50%, 140 * 1 / 4 = 35% availability: panic, all four used */
    dp_endpoint_t eps[4] = {ep(1, 1, 0, DP_HEALTH_HEALTHY), ep(2, 1, 0, DP_HEALTH_UNHEALTHY),
                            ep(3, 1, 0, DP_HEALTH_DRAINING), ep(4, 1, 0, DP_HEALTH_TIMEOUT)};
    dp_lb_config_t cfg = config(DP_LB_ROUND_ROBIN);
    dp_lb_t *lb = dp_lb_new(&cfg, 4);
    uint32_t counts[4] = {0};
    for (int i = 0; i < 400; i++)
        counts[pick(lb, eps, 4, NULL)]++;
    for (int k = 0; k < 4; k++)
        ck_assert_uint_eq(counts[k], 100);
    /* threshold 25%: no panic, only the healthy host */
    cfg.panic_threshold = 25;
    dp_lb_configure(lb, &cfg);
    for (int i = 0; i < 100; i++)
        ck_assert_uint_eq(pick(lb, eps, 4, NULL), 0);
    /* nothing healthy and panic off: no host */
    eps[0].health = DP_HEALTH_UNHEALTHY;
    cfg.panic_threshold = 0;
    dp_lb_configure(lb, &cfg);
    ck_assert_uint_eq(pick(lb, eps, 4, NULL), DP_LB_NONE);
    /* nothing healthy with the default threshold: total panic, by host count per priority */
    cfg = config(DP_LB_ROUND_ROBIN);
    dp_lb_configure(lb, &cfg);
    eps[3].priority = 1;
    memset(counts, 0, sizeof(counts));
    for (int i = 0; i < 8000; i++)
        counts[pick(lb, eps, 4, NULL)]++;
    /* P0 has 3 of 4 hosts: 75% */
    ck_assert_uint_gt(counts[3], 2000 - 200);
    ck_assert_uint_lt(counts[3], 2000 + 200);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_draining_excluded)
{
    /* a DRAINING host is excluded: the other one is the whole priority's health */
    dp_endpoint_t eps[3] = {ep(1, 1, 0, DP_HEALTH_HEALTHY), ep(2, 1, 0, DP_HEALTH_DRAINING),
                            ep(3, 1, 1, DP_HEALTH_HEALTHY)};
    dp_lb_config_t cfg = config(DP_LB_ROUND_ROBIN);
    dp_lb_t *lb = dp_lb_new(&cfg, 8);
    for (int i = 0; i < 200; i++)
        ck_assert_uint_eq(pick(lb, eps, 3, NULL), 0);
    /* nothing healthy: panic uses all hosts, the excluded one too (Envoy's hosts()) */
    eps[0].health = DP_HEALTH_UNHEALTHY;
    uint32_t counts[2] = {0};
    dp_lb_invalidate(lb);
    for (int i = 0; i < 100; i++)
        counts[pick(lb, eps, 2, NULL)]++;
    ck_assert_uint_eq(counts[0], 50);
    ck_assert_uint_eq(counts[1], 50);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_degraded)
{
    /* one degraded, one unknown (healthy): health 70, degraded 70: 70% healthy, 30% degraded */
    dp_endpoint_t eps[2] = {ep(1, 1, 0, DP_HEALTH_DEGRADED), ep(2, 1, 0, DP_HEALTH_UNKNOWN)};
    dp_lb_config_t cfg = config(DP_LB_ROUND_ROBIN);
    dp_lb_t *lb = dp_lb_new(&cfg, 8);
    uint32_t counts[2] = {0};
    for (int i = 0; i < 20000; i++)
        counts[pick(lb, eps, 2, NULL)]++;
    ck_assert_uint_gt(counts[0], 6000 - 400);
    ck_assert_uint_lt(counts[0], 6000 + 400);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_locality_weights)
{
    /* zone a weight 1, zone b weight 3, two hosts each */
    dp_endpoint_t eps[4];
    for (int i = 0; i < 4; i++) {
        eps[i] = ep((uint16_t)(1 + i), 1, 0, DP_HEALTH_HEALTHY);
        eps[i].region = "r";
        eps[i].zone = i < 2 ? "b" : "a";
        eps[i].locality_weight = i < 2 ? 3 : 1;
    }
    dp_lb_config_t cfg = config(DP_LB_ROUND_ROBIN);
    cfg.locality_weighted = true;
    dp_lb_t *lb = dp_lb_new(&cfg, 6);
    uint32_t counts[4] = {0};
    for (int i = 0; i < 4000; i++)
        counts[pick(lb, eps, 4, NULL)]++;
    ck_assert_uint_ge(counts[0] + counts[1], 3000 - 30);
    ck_assert_uint_le(counts[0] + counts[1], 3000 + 30);
    /* round robin within a locality */
    ck_assert_uint_ge(counts[2], 500 - 5);
    ck_assert_uint_le(counts[2], 500 + 5);
    /* half of b unhealthy: its effective weight 3 * min(1, 1.4 * 0.5) = 2.1 */
    eps[0].health = DP_HEALTH_UNHEALTHY;
    dp_lb_invalidate(lb);
    memset(counts, 0, sizeof(counts));
    for (int i = 0; i < 3100; i++)
        counts[pick(lb, eps, 4, NULL)]++;
    ck_assert_uint_eq(counts[0], 0);
    ck_assert_uint_ge(counts[1], 2100 - 30);
    ck_assert_uint_le(counts[1], 2100 + 30);
    /* without locality_weighted_lb_config the weights are ignored */
    cfg.locality_weighted = false;
    dp_lb_configure(lb, &cfg);
    memset(counts, 0, sizeof(counts));
    for (int i = 0; i < 300; i++)
        counts[pick(lb, eps, 4, NULL)]++;
    ck_assert_uint_eq(counts[1], 100);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_locality_table)
{
    /* Envoy's "Locality weighted load balancing" page: X weighs 1, Y 2 (Y fully healthy);
     * X's share as its healthy hosts go, with the overprovisioning factor 1.4 */
    const struct {
        uint32_t healthy; /* of X's 100 */
        double share;     /* percent */
    } rows[] = {{100, 33.3}, {70, 33.0}, {69, 32.6}, {50, 25.9}, {25, 14.9}, {0, 0}};
    static dp_endpoint_t eps[200];
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        for (uint32_t i = 0; i < 200; i++) {
            bool x = i < 100;
            eps[i] = ep((uint16_t)(2000 + i), 1, 0,
                        !x || i < rows[r].healthy ? DP_HEALTH_HEALTHY : DP_HEALTH_UNHEALTHY);
            eps[i].zone = x ? "x" : "y";
            eps[i].locality_weight = x ? 1 : 2;
        }
        dp_lb_config_t cfg = config(DP_LB_ROUND_ROBIN);
        cfg.locality_weighted = true;
        dp_lb_t *lb = dp_lb_new(&cfg, 1 + r);
        uint32_t to_x = 0;
        for (int i = 0; i < 30000; i++)
            to_x += pick(lb, eps, 200, NULL) < 100;
        double pct = to_x / 300.0;
        ck_assert_msg(pct > rows[r].share - 0.5 && pct < rows[r].share + 0.5,
                      "X healthy %u%%: %.2f%% of traffic, want %.1f%%", rows[r].healthy, pct,
                      rows[r].share);
        dp_lb_free(lb);
    }
}
END_TEST

/* ---- ejected hosts, excluded hosts, keys, configuration ---- */

START_TEST(test_ejected_and_excluded)
{
    dp_endpoint_t eps[3] = {ep(1, 1, 0, DP_HEALTH_HEALTHY), ep(2, 1, 0, DP_HEALTH_HEALTHY),
                            ep(3, 1, 0, DP_HEALTH_HEALTHY)};
    bool ej[3] = {false, true, false};
    dp_lb_hosts_t hs = {.eps = eps, .n = 3, .ejected = ej};
    dp_lb_config_t cfg = config(DP_LB_ROUND_ROBIN);
    dp_lb_t *lb = dp_lb_new(&cfg, 5);
    for (int i = 0; i < 30; i++)
        ck_assert_uint_ne(dp_lb_pick(lb, &hs, NULL), 1);
    /* a change of the flags is seen at the next pick */
    ej[1] = false;
    ej[2] = true;
    for (int i = 0; i < 30; i++)
        ck_assert_uint_ne(dp_lb_pick(lb, &hs, NULL), 2);
    /* two of three ejected: 33% < 50%, panic uses all three */
    ej[0] = true;
    uint32_t counts[3] = {0};
    for (int i = 0; i < 30; i++)
        counts[dp_lb_pick(lb, &hs, NULL)]++;
    ck_assert_uint_eq(counts[0], 10);
    ck_assert_uint_eq(counts[2], 10);
    /* the retry host predicate: hosts tried before are re-picked */
    memset(ej, 0, sizeof(ej));
    const dp_addr_t *ex[] = {&eps[0].addr};
    dp_lb_ctx_t ctx = {.exclude = ex, .n_exclude = 1};
    for (int i = 0; i < 30; i++)
        ck_assert_uint_ne(dp_lb_pick(lb, &hs, &ctx), 0);
    /* a host with no address is left out; none at all: no host */
    dp_endpoint_t none[1] = {ep(1, 1, 0, DP_HEALTH_HEALTHY)};
    none[0].addr.sa.sa_family = AF_UNSPEC;
    ck_assert_uint_eq(pick(lb, none, 1, NULL), DP_LB_NONE);
    ck_assert_uint_eq(pick(lb, NULL, 0, NULL), DP_LB_NONE);
    dp_lb_free(lb);
}
END_TEST

START_TEST(test_keys_and_config)
{
    char buf[128];
    dp_addr_t a;
    memset(&a, 0, sizeof(a));
    a.in6.sin6_family = AF_INET6;
    a.in6.sin6_port = htons(8080);
    inet_pton(AF_INET6, "::1", &a.in6.sin6_addr);
    ck_assert_uint_eq(dp_lb_host_key(&a, buf, sizeof(buf)), 10);
    ck_assert_str_eq(buf, "[::1]:8080");
    memset(&a, 0, sizeof(a));
    a.sa.sa_family = AF_UNIX;
    a.unix_path = "/tmp/x.sock";
    dp_lb_host_key(&a, buf, sizeof(buf));
    ck_assert_str_eq(buf, "/tmp/x.sock");
    /* Envoy's murmurHash2 of "" with its seed, and a value its ring test lists */
    ck_assert_uint_ne(dp_lb_murmur2("", 0, 0xc70f6907ull), 0);

    dp_lb_config_t cfg = config(DP_LB_LEAST_REQUEST);
    ck_assert_uint_eq(cfg.ring_min, 1024);
    ck_assert_uint_eq(cfg.ring_max, 8u * 1024 * 1024);
    ck_assert_uint_eq(cfg.maglev_size, 65537);
    ck_assert_uint_eq(cfg.choice_count, 2);
    ck_assert_double_eq(cfg.active_request_bias, 1.0);
    ck_assert(!cfg.has_bias);
    ck_assert_uint_eq(cfg.panic_threshold, 50);
    ck_assert_uint_eq(cfg.overprovisioning, 140);
    dp_cluster_t c;
    memset(&c, 0, sizeof(c));
    c.lb_has_panic_threshold = true;
    c.lb_panic_threshold = 0;
    c.lb_has_bias = true;
    c.lb_active_request_bias = -1;
    c.lb_maglev_size = 65536; /* not a prime: Envoy's default instead */
    dp_lb_config_from_cluster(&cfg, &c);
    ck_assert_uint_eq(cfg.maglev_size, 65537);
    ck_assert_uint_eq(cfg.panic_threshold, 0);
    ck_assert_double_eq(cfg.active_request_bias, 1.0);
}
END_TEST

/* Random host sets under every policy: each pick is an index of a host with an address, or
 * none only when no host can be had; a healthy host is picked whenever every host is
 * healthy. */
START_TEST(test_random_host_sets)
{
    const dp_lb_policy_t policies[] = {DP_LB_ROUND_ROBIN, DP_LB_LEAST_REQUEST, DP_LB_RANDOM,
                                       DP_LB_RING_HASH, DP_LB_MAGLEV};
    const dp_health_t healths[] = {DP_HEALTH_UNKNOWN,  DP_HEALTH_HEALTHY, DP_HEALTH_UNHEALTHY,
                                   DP_HEALTH_DRAINING, DP_HEALTH_TIMEOUT, DP_HEALTH_DEGRADED};
    const char *zones[] = {NULL, "a", "b"};
    static dp_endpoint_t eps[40];
    static bool ej[40];
    static uint64_t act[40];
    for (int round = 0; round < 300; round++) {
        size_t n = xs() % 40;
        for (size_t i = 0; i < n; i++) {
            eps[i] = ep((uint16_t)(3000 + i), (uint32_t)(xs() % 4), (uint32_t)(xs() % 3),
                        healths[xs() % 6]);
            eps[i].zone = zones[xs() % 3];
            eps[i].locality_weight = (uint32_t)(xs() % 3);
            if (xs() % 10 == 0)
                eps[i].addr.sa.sa_family = AF_UNSPEC;
            ej[i] = xs() % 5 == 0;
            act[i] = xs() % 4;
        }
        dp_lb_config_t cfg = config(policies[round % 5]);
        cfg.locality_weighted = xs() % 2;
        cfg.panic_threshold = (uint32_t)(xs() % 101);
        cfg.ring_min = 64;
        cfg.maglev_size = 251;
        cfg.has_bias = xs() % 2;
        cfg.weighted_priority_health = xs() % 2;
        dp_lb_t *lb = dp_lb_new(&cfg, xs());
        dp_lb_hosts_t hs = {
            .eps = eps, .n = n, .ejected = ej, .active = active_of, .active_ud = act};
        const dp_addr_t *ex[2] = {n ? &eps[0].addr : NULL, n > 1 ? &eps[1].addr : NULL};
        for (int k = 0; k < 50; k++) {
            dp_lb_ctx_t ctx = {.hash = xs(),
                               .has_hash = xs() % 2,
                               .exclude = ex,
                               .n_exclude = xs() % 3,
                               .host_selection_max_attempts = xs() % 3};
            size_t h = dp_lb_pick(lb, &hs, xs() % 4 ? &ctx : NULL);
            if (h != DP_LB_NONE) {
                ck_assert_uint_lt(h, n);
                ck_assert_int_ne(eps[h].addr.sa.sa_family, AF_UNSPEC);
            }
            if (k == 25)
                ej[xs() % (n ? n : 1)] ^= true;
        }
        dp_lb_free(lb);
    }
    /* all healthy: always a host */
    for (size_t i = 0; i < 10; i++)
        eps[i] =
            ep((uint16_t)(4000 + i), (uint32_t)(1 + i % 3), (uint32_t)(i % 2), DP_HEALTH_HEALTHY);
    for (int p = 0; p < 5; p++) {
        dp_lb_config_t cfg = config(policies[p]);
        dp_lb_t *lb = dp_lb_new(&cfg, 1);
        for (int k = 0; k < 200; k++)
            ck_assert_uint_eq(eps[pick_hash(lb, eps, 10, xs())].priority, 0);
        dp_lb_free(lb);
    }
}
END_TEST

static Suite *lb_suite(void)
{
    Suite *s = suite_create("lb");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ring_envoy_basic);
    tcase_add_test(tc, test_ring_envoy_retry_predicate);
    tcase_add_test(tc, test_ring_envoy_failover);
    tcase_add_test(tc, test_ring_envoy_uneven_and_weighted);
    tcase_add_test(tc, test_ring_envoy_locality_weighted);
    tcase_add_test(tc, test_ring_envoy_murmur);
    tcase_add_test(tc, test_ring_rederived);
    tcase_add_test(tc, test_maglev_envoy);
    tcase_add_test(tc, test_maglev_spread);
    tcase_add_test(tc, test_round_robin);
    tcase_add_test(tc, test_least_request);
    tcase_add_test(tc, test_least_request_envoy);
    tcase_add_test(tc, test_random);
    tcase_add_test(tc, test_priority_failover);
    tcase_add_test(tc, test_priority_tables);
    tcase_add_test(tc, test_panic);
    tcase_add_test(tc, test_draining_excluded);
    tcase_add_test(tc, test_degraded);
    tcase_add_test(tc, test_locality_weights);
    tcase_add_test(tc, test_locality_table);
    tcase_add_test(tc, test_ejected_and_excluded);
    tcase_add_test(tc, test_keys_and_config);
    tcase_add_test(tc, test_random_host_sets);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(lb_suite());
}
