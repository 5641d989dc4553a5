#include "dataplane/tokenbucket.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* Compare-and-swap attempts before a consumer gives up. Each failed attempt means another
 * consumer changed the bucket, so the loop makes progress; the bound only keeps it finite. A
 * consumer that gives up is refused, as if the bucket were empty. */
#define CAS_ATTEMPTS 100000

#define STATE(idx, tokens) (((uint64_t)(uint32_t)(idx) << 32) | (uint32_t)(tokens))
#define STATE_IDX(s)       ((uint32_t)((s) >> 32))
#define STATE_TOKENS(s)    ((uint32_t)(s))

int dp_tokenbucket_params_check(const dp_tokenbucket_params_t *p)
{
    if (p == NULL || p->max_tokens == 0 || p->tokens_per_fill == 0 ||
        p->fill_interval_ns < DP_TOKENBUCKET_MIN_INTERVAL_NS)
        return -EINVAL;
    return 0;
}

void dp_tokenbucket_init(dp_tokenbucket_t *b, const dp_tokenbucket_params_t *p, uint64_t now_ns)
{
    b->p = *p;
    b->_epoch_ns = now_ns;
    atomic_init(&b->_state, STATE(0, p->max_tokens));
}

/* The fill index of now_ns: how many whole intervals have passed since the epoch. */
static uint32_t fill_index(const dp_tokenbucket_t *b, uint64_t now_ns)
{
    if (now_ns <= b->_epoch_ns)
        return 0;
    return (uint32_t)((now_ns - b->_epoch_ns) / b->p.fill_interval_ns);
}

/* How far behind the stored fill index a caller's index may be: a clock read just before
 * another thread stored a later index. Such a caller adds nothing. */
#define BEHIND_WINDOW 1024u

/* The state with the fills between its index and idx applied (the difference is taken mod
 * 2^32). */
static uint64_t refilled(const dp_tokenbucket_t *b, uint64_t s, uint32_t idx)
{
    uint32_t last = STATE_IDX(s);
    uint32_t delta = idx - last;
    if (delta == 0 || delta > UINT32_MAX - BEHIND_WINDOW)
        return s;
    uint64_t tokens = STATE_TOKENS(s) + (uint64_t)delta * b->p.tokens_per_fill;
    if (tokens > b->p.max_tokens)
        tokens = b->p.max_tokens;
    return STATE(idx, tokens);
}

bool dp_tokenbucket_consume_at(dp_tokenbucket_t *b, uint32_t n, uint64_t now_ns,
                               uint32_t *ret_remaining)
{
    uint32_t idx = fill_index(b, now_ns);
    uint64_t s = atomic_load_explicit(&b->_state, memory_order_acquire);
    for (int i = 0; i < CAS_ATTEMPTS; i++) {
        uint64_t r = refilled(b, s, idx);
        uint32_t tokens = STATE_TOKENS(r);
        if (tokens < n) {
            /* Refused. The refill is stored when there was one, so that the stored index keeps
             * up with the clock; losing that race is harmless (another caller stored one). */
            if (r != s)
                atomic_compare_exchange_strong_explicit(&b->_state, &s, r, memory_order_acq_rel,
                                                        memory_order_relaxed);
            if (ret_remaining)
                *ret_remaining = tokens;
            return false;
        }
        uint64_t next = STATE(STATE_IDX(r), tokens - n);
        if (next == s || atomic_compare_exchange_weak_explicit(
                             &b->_state, &s, next, memory_order_acq_rel, memory_order_acquire)) {
            if (ret_remaining)
                *ret_remaining = tokens - n;
            return true;
        }
    }
    if (ret_remaining)
        *ret_remaining = 0;
    return false;
}

bool dp_tokenbucket_try_consume(dp_tokenbucket_t *b, uint32_t n)
{
    return dp_tokenbucket_consume_at(b, n, uv_hrtime(), NULL);
}

uint32_t dp_tokenbucket_tokens_at(const dp_tokenbucket_t *b, uint64_t now_ns)
{
    uint64_t s = atomic_load_explicit(&b->_state, memory_order_acquire);
    return STATE_TOKENS(refilled(b, s, fill_index(b, now_ns)));
}

uint64_t dp_tokenbucket_next_fill_ns(const dp_tokenbucket_t *b, uint64_t now_ns)
{
    uint64_t since = now_ns > b->_epoch_ns ? now_ns - b->_epoch_ns : 0;
    return b->p.fill_interval_ns - since % b->p.fill_interval_ns;
}

/* ---- the registry ---- */

/* A registry bucket: the bucket first, so that a dp_tokenbucket_t * of a registry bucket is
 * also its entry. */
typedef struct tb_entry {
    dp_tokenbucket_t b;
    struct tb_entry *next; /* hash chain */
    unsigned refs;         /* under reg_lock */
    uint64_t hash;
    char id[]; /* the identity and the params, as one string */
} tb_entry_t;

#define REG_SLOTS 1024

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static tb_entry_t *reg_slots[REG_SLOTS];
static size_t reg_live;

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

dp_tokenbucket_t *dp_tokenbucket_acquire(const char *id, const dp_tokenbucket_params_t *p)
{
    size_t idlen = id ? strnlen(id, DP_TOKENBUCKET_MAX_ID + 1) : DP_TOKENBUCKET_MAX_ID + 1;
    if (dp_tokenbucket_params_check(p) < 0 || idlen > DP_TOKENBUCKET_MAX_ID) {
        errno = EINVAL;
        return NULL;
    }
    /* The key is the identity with the params appended, so equal ids with other params are
     * other buckets. */
    char key[DP_TOKENBUCKET_MAX_ID + 64];
    snprintf(key, sizeof(key), "%s|%" PRIu32 "/%" PRIu32 "/%" PRIu64, id, p->max_tokens,
             p->tokens_per_fill, p->fill_interval_ns);
    uint64_t h = fnv1a(key);
    size_t slot = h % REG_SLOTS;
    pthread_mutex_lock(&reg_lock);
    for (tb_entry_t *e = reg_slots[slot]; e; e = e->next) {
        if (e->hash == h && strcmp(e->id, key) == 0) {
            e->refs++;
            pthread_mutex_unlock(&reg_lock);
            return &e->b;
        }
    }
    if (reg_live >= DP_TOKENBUCKET_MAX_LIVE) {
        pthread_mutex_unlock(&reg_lock);
        errno = ENOSPC;
        return NULL;
    }
    size_t klen = strlen(key) + 1;
    tb_entry_t *e = calloc(1, sizeof(*e) + klen);
    if (e == NULL) {
        fputs("skiff: out of memory\n", stderr);
        abort();
    }
    memcpy(e->id, key, klen);
    e->hash = h;
    e->refs = 1;
    dp_tokenbucket_init(&e->b, p, uv_hrtime());
    e->next = reg_slots[slot];
    reg_slots[slot] = e;
    reg_live++;
    pthread_mutex_unlock(&reg_lock);
    return &e->b;
}

dp_tokenbucket_t *dp_tokenbucket_ref(dp_tokenbucket_t *b)
{
    if (b == NULL)
        return NULL;
    pthread_mutex_lock(&reg_lock);
    ((tb_entry_t *)b)->refs++;
    pthread_mutex_unlock(&reg_lock);
    return b;
}

dp_tokenbucket_t *dp_tokenbucket_unref(dp_tokenbucket_t *b)
{
    if (b == NULL)
        return NULL;
    tb_entry_t *e = (tb_entry_t *)b;
    pthread_mutex_lock(&reg_lock);
    if (--e->refs > 0) {
        pthread_mutex_unlock(&reg_lock);
        return NULL;
    }
    for (tb_entry_t **pp = &reg_slots[e->hash % REG_SLOTS]; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    reg_live--;
    pthread_mutex_unlock(&reg_lock);
    free(e);
    return NULL;
}

void dp_tokenbucket_unref_cb(void *b)
{
    dp_tokenbucket_unref(b);
}

size_t dp_tokenbucket_registry_size(void)
{
    pthread_mutex_lock(&reg_lock);
    size_t n = reg_live;
    pthread_mutex_unlock(&reg_lock);
    return n;
}
