#include "dataplane/snapshot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/route.h"

#define ARENA_CHUNK (64 * 1024)

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} arena_chunk_t;

typedef struct arena_cleanup {
    struct arena_cleanup *next;
    void (*fn)(void *p);
    void *p;
} arena_cleanup_t;

struct dp_arena {
    arena_chunk_t *head;
    size_t bytes;
    arena_cleanup_t *cleanups; /* newest first; records live in the arena */
};

static atomic_uint_fast64_t freed_count;

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL) {
        fputs("skiff: out of memory\n", stderr);
        abort();
    }
    return p;
}

dp_arena_t *dp_arena_new(void)
{
    return xcalloc(1, sizeof(dp_arena_t));
}

void *dp_arena_alloc(dp_arena_t *a, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    arena_chunk_t *c = a->head;
    if (c == NULL || c->cap - c->used < size) {
        size_t cap = size > ARENA_CHUNK ? size : ARENA_CHUNK;
        c = xcalloc(1, sizeof(*c) + cap);
        c->cap = cap;
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += size;
    a->bytes += size;
    return p;
}

char *dp_arena_strdup(dp_arena_t *a, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = dp_arena_alloc(a, n);
    memcpy(p, s, n);
    return p;
}

size_t dp_arena_bytes(const dp_arena_t *a)
{
    return a->bytes;
}

void dp_arena_add_cleanup(dp_arena_t *a, void (*fn)(void *p), void *p)
{
    arena_cleanup_t *c = dp_arena_alloc(a, sizeof(*c));
    c->fn = fn;
    c->p = p;
    c->next = a->cleanups;
    a->cleanups = c;
}

void dp_arena_free(dp_arena_t *a)
{
    if (a == NULL)
        return;
    for (arena_cleanup_t *c = a->cleanups; c; c = c->next)
        c->fn(c->p);
    for (arena_chunk_t *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(a);
}

dp_snapshot_t *dp_snapshot_new(uint64_t generation)
{
    dp_snapshot_t *s = xcalloc(1, sizeof(*s));
    atomic_init(&s->refs, 1);
    s->generation = generation;
    s->arena = dp_arena_new();
    return s;
}

/* Grows an array kept outside the arena while building (so growth does not waste arena
 * space); sealing moves nothing, the arrays are freed with the snapshot. */
static void *grow(void *v, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return v;
    *cap = *cap ? *cap * 2 : 16;
    void *p = realloc(v, *cap * size);
    if (p == NULL)
        abort();
    memset((char *)p + n * size, 0, (*cap - n) * size);
    return p;
}

dp_cluster_t *dp_snapshot_add_cluster(dp_snapshot_t *s)
{
    s->clusters = grow(s->clusters, &s->cap_clusters, s->n_clusters, sizeof(dp_cluster_t));
    return &s->clusters[s->n_clusters++];
}

dp_listener_t *dp_snapshot_add_listener(dp_snapshot_t *s)
{
    s->listeners = grow(s->listeners, &s->cap_listeners, s->n_listeners, sizeof(dp_listener_t));
    return &s->listeners[s->n_listeners++];
}

void dp_snapshot_add_route(dp_snapshot_t *s, struct dp_route_config *rc)
{
    s->routes = grow(s->routes, &s->cap_routes, s->n_routes, sizeof(*s->routes));
    s->routes[s->n_routes++] = rc;
}

struct dp_snapshot_cleanup {
    struct dp_snapshot_cleanup *next;
    void (*fn)(void *p);
    void *p;
};

void dp_snapshot_add_cleanup(dp_snapshot_t *s, void (*fn)(void *p), void *p)
{
    struct dp_snapshot_cleanup *c = dp_arena_alloc(s->arena, sizeof(*c));
    c->fn = fn;
    c->p = p;
    c->next = s->cleanups;
    s->cleanups = c;
}

static int route_cmp(const void *a, const void *b)
{
    const dp_route_config_t *x = *(dp_route_config_t *const *)a;
    const dp_route_config_t *y = *(dp_route_config_t *const *)b;
    return strcmp(x->name, y->name);
}

static int cluster_cmp(const void *a, const void *b)
{
    return strcmp(((const dp_cluster_t *)a)->name, ((const dp_cluster_t *)b)->name);
}

int dp_snapshot_seal(dp_snapshot_t *s)
{
    if (s->n_clusters)
        qsort(s->clusters, s->n_clusters, sizeof(dp_cluster_t), cluster_cmp);
    for (size_t i = 1; i < s->n_clusters; i++) {
        if (strcmp(s->clusters[i - 1].name, s->clusters[i].name) == 0)
            return -EEXIST;
    }
    if (s->n_routes)
        qsort(s->routes, s->n_routes, sizeof(*s->routes), route_cmp);
    s->sealed = true;
    return 0;
}

const dp_cluster_t *dp_snapshot_find_cluster(const dp_snapshot_t *s, const char *name)
{
    size_t lo = 0, hi = s->n_clusters;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, s->clusters[mid].name);
        if (c == 0)
            return &s->clusters[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const struct dp_route_config *dp_snapshot_find_route(const dp_snapshot_t *s, const char *name)
{
    if (!s->sealed) {
        for (size_t i = 0; i < s->n_routes; i++) {
            if (strcmp(s->routes[i]->name, name) == 0)
                return s->routes[i];
        }
        return NULL;
    }
    size_t lo = 0, hi = s->n_routes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, s->routes[mid]->name);
        if (c == 0)
            return s->routes[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

dp_snapshot_t *dp_snapshot_ref(dp_snapshot_t *s)
{
    if (s)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

dp_snapshot_t *dp_snapshot_unref(dp_snapshot_t *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        for (struct dp_snapshot_cleanup *c = s->cleanups; c; c = c->next)
            c->fn(c->p);
        free(s->clusters);
        free(s->listeners);
        free(s->routes);
        dp_arena_free(s->arena);
        free(s);
        atomic_fetch_add(&freed_count, 1);
    }
    return NULL;
}

uint64_t dp_snapshot_freed_count(void)
{
    return atomic_load(&freed_count);
}

/* ---- per-status-code counters ---- */

#define CODE_MIN 100
#define CODE_MAX 599

static void code_counters_free(void *p)
{
    dp_code_counters_t *cc = p;
    free((void *)atomic_load(&cc->table));
}

dp_code_counters_t *dp_code_counters_new(dp_arena_t *arena, dp_stats_t *stats, const char *prefix)
{
    dp_code_counters_t *cc = dp_arena_alloc(arena, sizeof(*cc));
    atomic_init(&cc->table, NULL);
    cc->prefix = dp_arena_strdup(arena, prefix);
    cc->stats = stats;
    dp_arena_add_cleanup(arena, code_counters_free, cc);
    return cc;
}

dp_counter_t *dp_code_counter(dp_code_counters_t *cc, int code)
{
    if (cc == NULL || cc->stats == NULL || code < CODE_MIN || code > CODE_MAX)
        return NULL;
    dp_counter_t *_Atomic *t = atomic_load_explicit(&cc->table, memory_order_acquire);
    if (t == NULL) {
        dp_counter_t *_Atomic *fresh = calloc(CODE_MAX - CODE_MIN + 1, sizeof(*fresh));
        if (fresh == NULL)
            return NULL;
        dp_counter_t *_Atomic *expected = NULL;
        if (atomic_compare_exchange_strong(&cc->table, &expected, fresh)) {
            t = fresh;
        } else {
            free((void *)fresh);
            t = expected;
        }
    }
    dp_counter_t *c = atomic_load_explicit(&t[code - CODE_MIN], memory_order_acquire);
    if (c == NULL) {
        /* The store finds or creates it under its lock: racing workers get the same one. */
        char name[512];
        snprintf(name, sizeof(name), "%s%d", cc->prefix, code);
        c = dp_stats_counter(cc->stats, name);
        atomic_store_explicit(&t[code - CODE_MIN], c, memory_order_release);
    }
    return c;
}
