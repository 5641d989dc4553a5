/* envoy.filters.network.local_ratelimit: one token per accepted connection from a token bucket
 * shared by every worker; a connection that finds none is closed at once, before any filter
 * after it runs (no byte is relayed, no request is read) and counted in
 * local_ratelimit.<stat_prefix>.rate_limited (Envoy's name).
 *
 * The bucket comes from the process-wide registry (dataplane/tokenbucket.h) under an identity
 * naming the filter's place (listener, chain, position, stat_prefix) or its share_key, so a
 * rebuilt snapshot keeps the tokens; the snapshot's arena drops the reference when freed.
 * runtime_enabled is its default_value (true when unset): runtime overrides are not read. */
#ifndef SKIFF_DATAPLANE_NET_RATELIMIT_H
#define SKIFF_DATAPLANE_NET_RATELIMIT_H

#include <stdbool.h>

#include "dataplane/snapshot.h"
#include "dataplane/stats.h"
#include "dataplane/tokenbucket.h"

typedef struct dp_net_ratelimit {
    const char *stat_prefix;
    dp_tokenbucket_t *bucket;            /* from the registry */
    bool enabled;                        /* false: every connection passes */
    dp_counter_t *rate_limited;          /* NULL without stats */
    const struct dp_net_ratelimit *next; /* the chain's next one, in filter order */
} dp_net_ratelimit_t;

/* Builds a filter in s's arena with the bucket (id, p) from the registry and its counter in st
 * (NULL: none). Returns NULL with errno EINVAL (bad params, id too long) or ENOSPC (too many
 * buckets). Main thread, while s is built. */
dp_net_ratelimit_t *dp_net_ratelimit_new(dp_snapshot_t *s, dp_stats_t *st, const char *stat_prefix,
                                         const char *id, const dp_tokenbucket_params_t *p,
                                         bool enabled);

/* Takes one token from each filter of the list rl (NULL: none) in order. Returns false, after
 * counting rate_limited of the filter that had none, when the connection must be closed. Any
 * worker thread; lock-free. */
bool dp_net_ratelimit_allow(const dp_net_ratelimit_t *rl);

#endif
