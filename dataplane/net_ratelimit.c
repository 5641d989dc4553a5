#include "dataplane/net_ratelimit.h"

#include <errno.h>
#include <stdio.h>

dp_net_ratelimit_t *dp_net_ratelimit_new(dp_snapshot_t *s, dp_stats_t *st, const char *stat_prefix,
                                         const char *id, const dp_tokenbucket_params_t *p,
                                         bool enabled)
{
    dp_tokenbucket_t *b = dp_tokenbucket_acquire(id, p);
    if (b == NULL)
        return NULL;
    dp_arena_add_cleanup(s->arena, dp_tokenbucket_unref_cb, b);
    dp_net_ratelimit_t *rl = dp_arena_alloc(s->arena, sizeof(*rl));
    rl->stat_prefix = dp_arena_strdup(s->arena, stat_prefix ? stat_prefix : "");
    rl->bucket = b;
    rl->enabled = enabled;
    if (st) {
        char name[512];
        snprintf(name, sizeof(name), "local_ratelimit.%s.rate_limited", rl->stat_prefix);
        rl->rate_limited = dp_stats_counter(st, name);
    }
    return rl;
}

bool dp_net_ratelimit_allow(const dp_net_ratelimit_t *rl)
{
    for (; rl; rl = rl->next) {
        if (!rl->enabled || dp_tokenbucket_try_consume(rl->bucket, 1))
            continue;
        if (rl->rate_limited)
            dp_counter_inc(rl->rate_limited);
        return false;
    }
    return true;
}
