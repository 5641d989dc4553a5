/* Token buckets for local rate limiting, shared by every worker thread, and the process-wide
 * registry that keeps them alive across snapshot rebuilds (STYLE.md §8: mutable state lives
 * outside the immutable snapshot).
 *
 * The bucket. A bucket holds at most max_tokens tokens and starts full. Every fill_interval,
 * counted from the bucket's creation, tokens_per_fill tokens are added (capped at max_tokens):
 * the schedule of Envoy's timer-driven TokenBucket (envoy.type.v3.TokenBucket), but computed
 * from the elapsed monotonic time (uv_hrtime) when a consumer looks at the bucket, so that no
 * timer runs. The whole state (the index of the last fill and the token count) is one 64-bit
 * atomic word updated by compare-and-swap: consuming is lock-free, and of N concurrent
 * consumers of a bucket holding k tokens exactly min(N, k) succeed.
 *
 * The registry. A snapshot is rebuilt on every xDS change; rate-limit tokens must not refill
 * because of that. So the config half of a filter (main thread, while a snapshot is being
 * built) asks the registry for the bucket of a given identity (what names the limit: the
 * stat_prefix, the filter name, the scope it applies to) and parameters, and gets the
 * existing bucket when one is live, a new full one otherwise. The snapshot's config keeps that
 * reference and drops it when the snapshot is freed (dp_tokenbucket_unref, from a cleanup of
 * the snapshot's arena, on whichever thread frees it). A bucket is freed when its last
 * reference goes. Changing a bucket's parameters gives a different bucket (a full one), as a
 * changed limit is a new limit.
 *
 * Users: envoy.filters.http.local_ratelimit (handlers/local_ratelimit/, one token per request)
 * and envoy.filters.network.local_ratelimit (one token per connection). */
#ifndef SKIFF_DATAPLANE_TOKENBUCKET_H
#define SKIFF_DATAPLANE_TOKENBUCKET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a bucket is: envoy.type.v3.TokenBucket with tokens_per_fill's default (1) applied. */
typedef struct dp_tokenbucket_params {
    uint32_t max_tokens;       /* > 0 */
    uint32_t tokens_per_fill;  /* > 0 */
    uint64_t fill_interval_ns; /* >= DP_TOKENBUCKET_MIN_INTERVAL_NS */
} dp_tokenbucket_params_t;

/* The shortest fill interval a bucket accepts: 50 ms, what Envoy requires of both local rate
 * limit filters. The fill index is kept mod 2^32, so only a bucket left untouched for 2^32
 * intervals (6.8 years at 50 ms) could miss a refill. */
#define DP_TOKENBUCKET_MIN_INTERVAL_NS 50000000ull

/* A bucket. Embeddable (per-connection buckets live in a worker's own table); the fields are
 * private to tokenbucket.c. */
typedef struct dp_tokenbucket {
    dp_tokenbucket_params_t p;
    uint64_t _epoch_ns; /* creation time: fills happen at epoch + k * interval */
    /* high 32 bits: the index k of the last fill applied (mod 2^32); low 32 bits: tokens */
    _Atomic uint64_t _state;
} dp_tokenbucket_t;

/* Returns 0 when p is a valid bucket (see the fields), else -EINVAL. */
int dp_tokenbucket_params_check(const dp_tokenbucket_params_t *p);

/* Initialises a full bucket whose fill schedule starts at now_ns (uv_hrtime() scale). p must
 * pass dp_tokenbucket_params_check. Not concurrent with any other use of b. */
void dp_tokenbucket_init(dp_tokenbucket_t *b, const dp_tokenbucket_params_t *p, uint64_t now_ns);

/* Takes n tokens at time now_ns, refilling first for the fill intervals that have passed.
 * Returns true when there were n tokens (then they are gone), false otherwise (nothing is
 * taken: a request asking for more than is there takes none). n == 0 always succeeds. The
 * tokens left afterwards are written to *ret_remaining when it is not NULL. Any thread; now_ns
 * may come from different threads' clocks as long as they share uv_hrtime's monotonic base
 * (a now_ns before the last fill seen counts as that fill's time). */
bool dp_tokenbucket_consume_at(dp_tokenbucket_t *b, uint32_t n, uint64_t now_ns,
                               uint32_t *ret_remaining);

/* dp_tokenbucket_consume_at(b, n, uv_hrtime(), NULL): the call for a filter that only needs a
 * yes or a no (the network filter takes one token per connection). */
bool dp_tokenbucket_try_consume(dp_tokenbucket_t *b, uint32_t n);

/* The tokens there would be at now_ns (refills counted, nothing taken, nothing written). */
uint32_t dp_tokenbucket_tokens_at(const dp_tokenbucket_t *b, uint64_t now_ns);

/* Nanoseconds from now_ns to the next fill (1 .. fill_interval_ns): what x-ratelimit-reset
 * reports, in seconds rounded up. */
uint64_t dp_tokenbucket_next_fill_ns(const dp_tokenbucket_t *b, uint64_t now_ns);

/* ---- the process-wide registry ---- */

/* Limits on what a configuration can make the registry hold. */
#define DP_TOKENBUCKET_MAX_ID   1024    /* bytes of an identity */
#define DP_TOKENBUCKET_MAX_LIVE 1000000 /* buckets live at once */

/* Returns a reference to the bucket named (id, p): the live one when there is one (its tokens
 * as they are), else a new full bucket whose schedule starts now. id is any NUL-terminated
 * string (copied); two acquisitions share a bucket exactly when their id strings and params
 * are equal. Returns NULL with errno EINVAL when p is invalid or id is longer than
 * DP_TOKENBUCKET_MAX_ID, ENOSPC when DP_TOKENBUCKET_MAX_LIVE buckets are live. Meant for the
 * main thread while a snapshot is built, but safe on any thread (a mutex guards the
 * registry). */
dp_tokenbucket_t *dp_tokenbucket_acquire(const char *id, const dp_tokenbucket_params_t *p);

/* Another reference to a bucket from dp_tokenbucket_acquire (accepts NULL). Any thread. */
dp_tokenbucket_t *dp_tokenbucket_ref(dp_tokenbucket_t *b);

/* Drops a reference from dp_tokenbucket_acquire/ref; the last one removes the bucket from the
 * registry and frees it. Returns NULL; accepts NULL. Any thread. Never on a bucket from
 * dp_tokenbucket_init. */
dp_tokenbucket_t *dp_tokenbucket_unref(dp_tokenbucket_t *b);

/* dp_tokenbucket_unref with the shape of a cleanup callback (void (*)(void *)). */
void dp_tokenbucket_unref_cb(void *b);

/* The number of live registry buckets (tests, /memory). */
size_t dp_tokenbucket_registry_size(void);

#endif
