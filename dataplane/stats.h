/* The stats store: counters, gauges, histograms and text readouts with Envoy's names and
 * semantics, and the renderers of the admin API's /stats, /stats?format=json and
 * /stats/prometheus.
 *
 * Threads: stats are created (find-or-create by name, under a lock: workers create the
 * per-status-code counters they meet) and rendered on the main thread. Any thread may update a stat
 * through the pointer it was given: updates are relaxed atomics on memory that never moves, with no
 * lock and no allocation. Text readouts are set on the main thread only.
 *
 * Tags: each tag extractor is (tag name, regex), Envoy's TagExtractorImpl: the regex runs on
 * the full name; the first capture group is removed from the name, and the second capture
 * group (the first when there is only one) is the tag's value. The tag-extracted name and the
 * tags are computed once, when a stat is created. */
#ifndef SKIFF_DATAPLANE_STATS_H
#define SKIFF_DATAPLANE_STATS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct dp_stats dp_stats_t;

typedef enum dp_stat_kind {
    DP_STAT_COUNTER,
    DP_STAT_GAUGE,
    DP_STAT_HISTOGRAM,
    DP_STAT_TEXT,
} dp_stat_kind_t;

typedef enum dp_hist_unit {
    DP_HIST_UNIT_UNSPECIFIED,
    DP_HIST_UNIT_BYTES,
    DP_HIST_UNIT_MICROSECONDS,
    DP_HIST_UNIT_MILLISECONDS,
} dp_hist_unit_t;

typedef struct dp_tag {
    char *name;
    char *value;
} dp_tag_t;

/* What every stat has; the kind-specific structs below start with it. */
typedef struct dp_stat {
    dp_stat_kind_t kind;
    atomic_bool used; /* written at least once (Envoy's "used" for ?usedonly) */
    char *name;       /* the full name: "cluster.xds-grpc.upstream_cx_active" */
    char *tag_extracted_name; /* "cluster.upstream_cx_active" */
    dp_tag_t *tags;
    size_t n_tags;
} dp_stat_t;

typedef struct dp_counter {
    dp_stat_t base;
    _Atomic uint64_t value;
} dp_counter_t;

typedef struct dp_gauge {
    dp_stat_t base;
    _Atomic uint64_t value;
} dp_gauge_t;

/* Envoy's default bucket bounds (HistogramSettingsImpl::defaultBuckets). */
#define DP_HIST_DEFAULT_BUCKETS                                                                    \
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,   \
        1800000, 3600000
#define DP_HIST_MAX_BUCKETS 32

typedef struct dp_histogram {
    dp_stat_t base;
    dp_hist_unit_t unit;
    size_t n_bounds;
    double bounds[DP_HIST_MAX_BUCKETS];
    _Atomic uint64_t counts[DP_HIST_MAX_BUCKETS + 1]; /* per bucket; the last is over every bound */
    _Atomic uint64_t count;
    _Atomic uint64_t sum;
} dp_histogram_t;

typedef struct dp_textreadout dp_textreadout_t;

dp_stats_t *dp_stats_new(void); /* aborts on out of memory */
void dp_stats_free(dp_stats_t *st); /* accepts NULL */

/* Adds a tag extractor for stats created afterwards. Returns 0, or -EINVAL with a malloc'd
 * message in *reterr_msg when the regex does not compile. */
int dp_stats_add_tag_extractor(dp_stats_t *st, const char *tag_name, const char *regex,
                               char **reterr_msg);
/* Envoy's default tag extractors (use_all_default_tags). */
void dp_stats_add_default_tags(dp_stats_t *st);

/* Find or create, by full name; never NULL. Creating a name that exists with another kind
 * aborts: that is a programming error. Main thread. */
dp_counter_t *dp_stats_counter(dp_stats_t *st, const char *name);
dp_gauge_t *dp_stats_gauge(dp_stats_t *st, const char *name);
dp_histogram_t *dp_stats_histogram(dp_stats_t *st, const char *name, dp_hist_unit_t unit);
dp_textreadout_t *dp_stats_textreadout(dp_stats_t *st, const char *name);

static inline void dp_counter_add(dp_counter_t *c, uint64_t v)
{
    atomic_fetch_add_explicit(&c->value, v, memory_order_relaxed);
    if (!atomic_load_explicit(&c->base.used, memory_order_relaxed))
        atomic_store_explicit(&c->base.used, true, memory_order_relaxed);
}

static inline void dp_counter_inc(dp_counter_t *c)
{
    dp_counter_add(c, 1);
}

static inline uint64_t dp_counter_value(const dp_counter_t *c)
{
    return atomic_load_explicit(&c->value, memory_order_relaxed);
}

static inline void dp_gauge_mark_used(dp_gauge_t *g)
{
    if (!atomic_load_explicit(&g->base.used, memory_order_relaxed))
        atomic_store_explicit(&g->base.used, true, memory_order_relaxed);
}

static inline void dp_gauge_set(dp_gauge_t *g, uint64_t v)
{
    atomic_store_explicit(&g->value, v, memory_order_relaxed);
    dp_gauge_mark_used(g);
}

/* dp_gauge_set as a sequentially consistent store, for a writer that must re-read what the
 * value was derived from after storing it (the circuit breakers' gauges, dataplane/breaker.c). */
static inline void dp_gauge_set_seq_cst(dp_gauge_t *g, uint64_t v)
{
    atomic_store_explicit(&g->value, v, memory_order_seq_cst);
    dp_gauge_mark_used(g);
}

static inline void dp_gauge_add(dp_gauge_t *g, uint64_t v)
{
    atomic_fetch_add_explicit(&g->value, v, memory_order_relaxed);
    dp_gauge_mark_used(g);
}

static inline void dp_gauge_sub(dp_gauge_t *g, uint64_t v)
{
    atomic_fetch_sub_explicit(&g->value, v, memory_order_relaxed);
    dp_gauge_mark_used(g);
}

static inline void dp_gauge_inc(dp_gauge_t *g)
{
    dp_gauge_add(g, 1);
}

static inline void dp_gauge_dec(dp_gauge_t *g)
{
    dp_gauge_sub(g, 1);
}

static inline uint64_t dp_gauge_value(const dp_gauge_t *g)
{
    return atomic_load_explicit(&g->value, memory_order_relaxed);
}

/* Records one value (in the histogram's unit). Any thread. */
void dp_histogram_record(dp_histogram_t *h, uint64_t value);

/* The q-quantile (0..1) estimated from the buckets, NaN when nothing was recorded. */
double dp_histogram_quantile(const dp_histogram_t *h, double q);

void dp_textreadout_set(dp_textreadout_t *t, const char *value); /* main thread */

/* ---- rendering (main thread) ---- */

typedef struct dp_stats_query {
    bool used_only;     /* ?usedonly */
    const char *filter; /* ?filter=<regex>, searched anywhere in the full name; NULL: all */
    bool text_readouts; /* Prometheus: also export text readouts (?text_readouts) */
} dp_stats_query_t;

/* Envoy's /stats text: "name: value" lines sorted by name (text readouts as name: "value",
 * histograms as quantiles). Returns 0, or -EINVAL with a malloc'd message in *reterr_msg when
 * the filter regex does not compile (the admin API answers 400 with it). */
int dp_stats_render_text(dp_stats_t *st, const dp_stats_query_t *q, FILE *out,
                         char **reterr_msg);

/* Envoy's /stats?format=json. Same errors. */
int dp_stats_render_json(dp_stats_t *st, const dp_stats_query_t *q, FILE *out, char **reterr_msg);

/* Envoy's /stats/prometheus (text format 0.0.4). Same errors. */
int dp_stats_render_prometheus(dp_stats_t *st, const dp_stats_query_t *q, FILE *out,
                               char **reterr_msg);

/* Stats whose name starts with "<ns>." are exported to Prometheus without the "envoy_" prefix
 * and without that namespace (Istio's "istiocustom"). */
void dp_stats_add_custom_namespace(dp_stats_t *st, const char *ns);

#endif
