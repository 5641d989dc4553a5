#include "dataplane/stats.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

struct dp_textreadout {
    dp_stat_t base;
    char *value; /* main thread only */
};

typedef struct tag_extractor {
    char *tag_name;
    pcre2_code *re;
} tag_extractor_t;

struct dp_stats {
    dp_stat_t **stats; /* creation order; each stat is its own allocation and never moves */
    size_t n, cap;
    /* open-addressing index name -> stat, for find-or-create */
    dp_stat_t **index;
    size_t index_cap;
    tag_extractor_t *tags;
    size_t n_tags;
    char **namespaces;
    size_t n_namespaces;
    /* Guards stats and index: a worker may create a stat (a per-status-code counter) while
     * the main thread renders. */
    pthread_mutex_t mu;
};

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n, sz);
    if (p == NULL) {
        fputs("skiff: out of memory\n", stderr);
        abort();
    }
    return p;
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (p == NULL) {
        fputs("skiff: out of memory\n", stderr);
        abort();
    }
    return p;
}

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

dp_stats_t *dp_stats_new(void)
{
    dp_stats_t *st = xcalloc(1, sizeof(*st));
    st->index_cap = 256;
    st->index = xcalloc(st->index_cap, sizeof(*st->index));
    pthread_mutex_init(&st->mu, NULL);
    return st;
}

static void stat_free(dp_stat_t *s)
{
    free(s->name);
    free(s->tag_extracted_name);
    for (size_t i = 0; i < s->n_tags; i++) {
        free(s->tags[i].name);
        free(s->tags[i].value);
    }
    free(s->tags);
    if (s->kind == DP_STAT_TEXT)
        free(((dp_textreadout_t *)s)->value);
    free(s);
}

void dp_stats_free(dp_stats_t *st)
{
    if (st == NULL)
        return;
    for (size_t i = 0; i < st->n; i++)
        stat_free(st->stats[i]);
    free(st->stats);
    pthread_mutex_destroy(&st->mu);
    free(st->index);
    for (size_t i = 0; i < st->n_tags; i++) {
        free(st->tags[i].tag_name);
        pcre2_code_free(st->tags[i].re);
    }
    free(st->tags);
    for (size_t i = 0; i < st->n_namespaces; i++)
        free(st->namespaces[i]);
    free(st->namespaces);
    free(st);
}

static pcre2_code *compile_regex(const char *regex, char **reterr_msg)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, 0, &code, &off, NULL);
    if (re == NULL && reterr_msg) {
        PCRE2_UCHAR buf[160];
        pcre2_get_error_message(code, buf, sizeof(buf));
        if (asprintf(reterr_msg, "invalid regex '%s': %s at offset %zu", regex, (char *)buf,
                     (size_t)off) < 0)
            *reterr_msg = NULL;
    }
    return re;
}

int dp_stats_add_tag_extractor(dp_stats_t *st, const char *tag_name, const char *regex,
                               char **reterr_msg)
{
    pcre2_code *re = compile_regex(regex, reterr_msg);
    if (re == NULL)
        return -EINVAL;
    uint32_t groups = 0;
    pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &groups);
    if (groups == 0) {
        pcre2_code_free(re);
        if (reterr_msg && asprintf(reterr_msg, "regex '%s' has no capture group", regex) < 0)
            *reterr_msg = NULL;
        return -EINVAL;
    }
    tag_extractor_t *v = realloc(st->tags, (st->n_tags + 1) * sizeof(*v));
    if (v == NULL)
        abort();
    st->tags = v;
    st->tags[st->n_tags++] = (tag_extractor_t){xstrdup(tag_name), re};
    return 0;
}

/* Envoy's default tags (source/common/config/well_known_names.cc), those that name parts of
 * the stats skiff emits. */
void dp_stats_add_default_tags(dp_stats_t *st)
{
    static const char *const defaults[][2] = {
        {"envoy.cluster_name", "^cluster\\.((.+?)\\.)"},
        {"envoy.listener_address",
         "^listener\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"},
        {"envoy.http_conn_manager_prefix", "^http\\.((.*?)\\.)"},
        {"envoy.response_code", "_rq(_(\\d{3}))$"},
        {"envoy.response_code_class", "_rq(_(\\dxx))$"},
        {"envoy.virtual_host", "^vhost\\.((.*?)\\.)"},
        {"envoy.virtual_cluster", "^vhost\\.[\\w\\.-]+\\.vcluster\\.((.*?)\\.)"},
        {"envoy.worker_id", "^(?:listener|server)\\..*?(worker_(\\d+)\\.)"},
    };
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
        int rc = dp_stats_add_tag_extractor(st, defaults[i][0], defaults[i][1], NULL);
        if (rc < 0)
            abort(); /* the table above is ours: it must compile */
    }
}

void dp_stats_add_custom_namespace(dp_stats_t *st, const char *ns)
{
    char **v = realloc(st->namespaces, (st->n_namespaces + 1) * sizeof(*v));
    if (v == NULL)
        abort();
    st->namespaces = v;
    st->namespaces[st->n_namespaces++] = xstrdup(ns);
}

/* Runs every extractor on the full name; removes the first capture group of each match. An
 * extractor whose part overlaps one an earlier extractor removed is skipped. */
static void extract_tags(const dp_stats_t *st, dp_stat_t *s)
{
    size_t len = strlen(s->name);
    char *keep = xcalloc(len + 1, 1); /* 1 = removed */
    pcre2_match_data *md = NULL;
    for (size_t i = 0; i < st->n_tags; i++) {
        const tag_extractor_t *t = &st->tags[i];
        bool dup = false;
        for (size_t k = 0; k < s->n_tags && !dup; k++)
            dup = strcmp(s->tags[k].name, t->tag_name) == 0;
        if (dup)
            continue;
        pcre2_match_data_free(md);
        md = pcre2_match_data_create_from_pattern(t->re, NULL);
        if (md == NULL)
            abort();
        if (pcre2_match(t->re, (PCRE2_SPTR)s->name, len, 0, 0, md, NULL) < 0)
            continue;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        uint32_t n = pcre2_get_ovector_count(md);
        if (n < 2 || ov[2] == PCRE2_UNSET)
            continue;
        /* A part of the name another extractor already took is not taken twice. */
        bool overlap = false;
        for (size_t k = ov[2]; k < ov[3] && !overlap; k++)
            overlap = keep[k];
        if (overlap)
            continue;
        size_t vs = n >= 3 && ov[4] != PCRE2_UNSET ? ov[4] : ov[2];
        size_t ve = n >= 3 && ov[4] != PCRE2_UNSET ? ov[5] : ov[3];
        dp_tag_t *tv = realloc(s->tags, (s->n_tags + 1) * sizeof(*tv));
        if (tv == NULL)
            abort();
        s->tags = tv;
        s->tags[s->n_tags].name = xstrdup(t->tag_name);
        s->tags[s->n_tags].value = strndup(s->name + vs, ve - vs);
        if (s->tags[s->n_tags].value == NULL)
            abort();
        s->n_tags++;
        memset(keep + ov[2], 1, ov[3] - ov[2]);
    }
    pcre2_match_data_free(md);
    s->tag_extracted_name = xcalloc(len + 1, 1);
    size_t w = 0;
    for (size_t i = 0; i < len; i++) {
        if (!keep[i])
            s->tag_extracted_name[w++] = s->name[i];
    }
    free(keep);
}

static dp_stat_t **index_slot(dp_stats_t *st, const char *name)
{
    size_t mask = st->index_cap - 1;
    for (size_t i = hash_name(name) & mask;; i = (i + 1) & mask) {
        if (st->index[i] == NULL || strcmp(st->index[i]->name, name) == 0)
            return &st->index[i];
    }
}

static void index_grow(dp_stats_t *st)
{
    dp_stat_t **old = st->index;
    size_t old_cap = st->index_cap;
    st->index_cap *= 2;
    st->index = xcalloc(st->index_cap, sizeof(*st->index));
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i])
            *index_slot(st, old[i]->name) = old[i];
    }
    free(old);
}

static dp_stat_t *find_or_create_locked(dp_stats_t *st, const char *name, dp_stat_kind_t kind,
                                        size_t size)
{
    dp_stat_t **slot = index_slot(st, name);
    if (*slot) {
        if ((*slot)->kind != kind) {
            fprintf(stderr, "skiff: stat %s created twice with different kinds\n", name);
            abort();
        }
        return *slot;
    }
    dp_stat_t *s = xcalloc(1, size);
    s->kind = kind;
    s->name = xstrdup(name);
    atomic_init(&s->used, false);
    extract_tags(st, s);
    *slot = s;
    if (st->n == st->cap) {
        st->cap = st->cap ? st->cap * 2 : 64;
        dp_stat_t **v = realloc(st->stats, st->cap * sizeof(*v));
        if (v == NULL)
            abort();
        st->stats = v;
    }
    st->stats[st->n++] = s;
    if (st->n * 2 > st->index_cap)
        index_grow(st);
    return s;
}

static dp_stat_t *find_or_create(dp_stats_t *st, const char *name, dp_stat_kind_t kind, size_t size)
{
    pthread_mutex_lock(&st->mu);
    dp_stat_t *s = find_or_create_locked(st, name, kind, size);
    pthread_mutex_unlock(&st->mu);
    return s;
}

dp_counter_t *dp_stats_counter(dp_stats_t *st, const char *name)
{
    return (dp_counter_t *)find_or_create(st, name, DP_STAT_COUNTER, sizeof(dp_counter_t));
}

dp_gauge_t *dp_stats_gauge(dp_stats_t *st, const char *name)
{
    return (dp_gauge_t *)find_or_create(st, name, DP_STAT_GAUGE, sizeof(dp_gauge_t));
}

dp_histogram_t *dp_stats_histogram(dp_stats_t *st, const char *name, dp_hist_unit_t unit)
{
    dp_histogram_t *h =
        (dp_histogram_t *)find_or_create(st, name, DP_STAT_HISTOGRAM, sizeof(dp_histogram_t));
    if (h->n_bounds == 0) {
        static const double def[] = {DP_HIST_DEFAULT_BUCKETS};
        h->unit = unit;
        h->n_bounds = sizeof(def) / sizeof(def[0]);
        memcpy(h->bounds, def, sizeof(def));
    }
    return h;
}

dp_textreadout_t *dp_stats_textreadout(dp_stats_t *st, const char *name)
{
    return (dp_textreadout_t *)find_or_create(st, name, DP_STAT_TEXT, sizeof(dp_textreadout_t));
}

void dp_textreadout_set(dp_textreadout_t *t, const char *value)
{
    char *v = xstrdup(value);
    free(t->value);
    t->value = v;
    atomic_store(&t->base.used, true);
}

void dp_histogram_record(dp_histogram_t *h, uint64_t value)
{
    size_t i = 0;
    while (i < h->n_bounds && (double)value > h->bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, value, memory_order_relaxed);
    if (!atomic_load_explicit(&h->base.used, memory_order_relaxed))
        atomic_store_explicit(&h->base.used, true, memory_order_relaxed);
}

double dp_histogram_quantile(const dp_histogram_t *h, double q)
{
    uint64_t total = atomic_load_explicit(&h->count, memory_order_relaxed);
    if (total == 0)
        return NAN;
    double rank = q * (double)total, seen = 0, lower = 0;
    for (size_t i = 0; i <= h->n_bounds; i++) {
        double c = (double)atomic_load_explicit(&h->counts[i], memory_order_relaxed);
        double upper = i < h->n_bounds ? h->bounds[i] : h->bounds[h->n_bounds - 1];
        if (c > 0 && seen + c >= rank) {
            /* Linear interpolation inside the bucket. */
            double frac = (rank - seen) / c;
            return lower + (upper - lower) * frac;
        }
        seen += c;
        lower = upper;
    }
    return h->n_bounds ? h->bounds[h->n_bounds - 1] : 0;
}

/* ---- rendering ---- */

typedef struct selection {
    dp_stat_t **v;
    size_t n;
} selection_t;

static int by_name(const void *a, const void *b)
{
    const dp_stat_t *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static int select_stats(dp_stats_t *st, const dp_stats_query_t *q, selection_t *ret,
                        char **reterr_msg)
{
    pcre2_code *re = NULL;
    pcre2_match_data *md = NULL;
    if (q && q->filter && q->filter[0]) {
        re = compile_regex(q->filter, reterr_msg);
        if (re == NULL)
            return -EINVAL;
        md = pcre2_match_data_create_from_pattern(re, NULL);
    }
    pthread_mutex_lock(&st->mu);
    ret->v = xcalloc(st->n + 1, sizeof(*ret->v));
    ret->n = 0;
    for (size_t i = 0; i < st->n; i++) {
        dp_stat_t *s = st->stats[i];
        if (q && q->used_only && !atomic_load(&s->used))
            continue;
        if (re && pcre2_match(re, (PCRE2_SPTR)s->name, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL) < 0)
            continue;
        ret->v[ret->n++] = s;
    }
    pthread_mutex_unlock(&st->mu);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    qsort(ret->v, ret->n, sizeof(*ret->v), by_name);
    return 0;
}

static const double text_quantiles[] = {0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1};

static void write_quantile(FILE *out, double v)
{
    if (isnan(v))
        fputs("nan", out);
    else
        fprintf(out, "%g", v);
}

int dp_stats_render_text(dp_stats_t *st, const dp_stats_query_t *q, FILE *out,
                         char **reterr_msg)
{
    selection_t sel;
    if (select_stats(st, q, &sel, reterr_msg) < 0)
        return -EINVAL;
    for (size_t i = 0; i < sel.n; i++) {
        dp_stat_t *s = sel.v[i];
        switch (s->kind) {
        case DP_STAT_COUNTER:
            fprintf(out, "%s: %llu\n", s->name,
                    (unsigned long long)dp_counter_value((dp_counter_t *)s));
            break;
        case DP_STAT_GAUGE:
            fprintf(out, "%s: %llu\n", s->name,
                    (unsigned long long)dp_gauge_value((dp_gauge_t *)s));
            break;
        case DP_STAT_TEXT: {
            const char *v = ((dp_textreadout_t *)s)->value;
            fprintf(out, "%s: \"%s\"\n", s->name, v ? v : "");
            break;
        }
        case DP_STAT_HISTOGRAM: {
            dp_histogram_t *h = (dp_histogram_t *)s;
            if (atomic_load(&h->count) == 0) {
                fprintf(out, "%s: No recorded values\n", s->name);
                break;
            }
            fprintf(out, "%s:", s->name);
            for (size_t k = 0; k < sizeof(text_quantiles) / sizeof(text_quantiles[0]); k++) {
                double v = dp_histogram_quantile(h, text_quantiles[k]);
                fprintf(out, " P%g(", text_quantiles[k] * 100);
                write_quantile(out, v);
                fputc(',', out);
                write_quantile(out, v);
                fputc(')', out);
            }
            fputc('\n', out);
            break;
        }
        }
    }
    free(sel.v);
    return 0;
}

int dp_stats_render_json(dp_stats_t *st, const dp_stats_query_t *q, FILE *out, char **reterr_msg)
{
    selection_t sel;
    if (select_stats(st, q, &sel, reterr_msg) < 0)
        return -EINVAL;
    json_t *stats = json_array();
    json_t *computed = json_array();
    for (size_t i = 0; i < sel.n; i++) {
        dp_stat_t *s = sel.v[i];
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(s->name));
        switch (s->kind) {
        case DP_STAT_COUNTER:
            json_object_set_new(e, "value",
                                json_integer((json_int_t)dp_counter_value((dp_counter_t *)s)));
            break;
        case DP_STAT_GAUGE:
            json_object_set_new(e, "value",
                                json_integer((json_int_t)dp_gauge_value((dp_gauge_t *)s)));
            break;
        case DP_STAT_TEXT: {
            const char *v = ((dp_textreadout_t *)s)->value;
            json_object_set_new(e, "value", json_string(v ? v : ""));
            break;
        }
        case DP_STAT_HISTOGRAM: {
            json_t *vals = json_array();
            for (size_t k = 0; k < sizeof(text_quantiles) / sizeof(text_quantiles[0]); k++) {
                double v = dp_histogram_quantile((dp_histogram_t *)s, text_quantiles[k]);
                json_t *qv = json_object();
                json_object_set_new(qv, "interval", isnan(v) ? json_null() : json_real(v));
                json_object_set_new(qv, "cumulative", isnan(v) ? json_null() : json_real(v));
                json_array_append_new(vals, qv);
            }
            json_object_set_new(e, "values", vals);
            json_array_append_new(computed, e);
            continue;
        }
        }
        json_array_append_new(stats, e);
    }
    if (json_array_size(computed)) {
        json_t *sq = json_array();
        for (size_t k = 0; k < sizeof(text_quantiles) / sizeof(text_quantiles[0]); k++)
            json_array_append_new(sq, json_real(text_quantiles[k] * 100));
        json_t *h = json_object();
        json_object_set_new(h, "supported_quantiles", sq);
        json_object_set_new(h, "computed_quantiles", computed);
        json_t *wrap = json_object();
        json_object_set_new(wrap, "histograms", h);
        json_array_append_new(stats, wrap);
    } else {
        json_decref(computed);
    }
    json_t *root = json_object();
    json_object_set_new(root, "stats", stats);
    json_dumpf(root, out, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    fputc('\n', out);
    json_decref(root);
    free(sel.v);
    return 0;
}

/* Prometheus metric name: "envoy_" + the tag-extracted name with [^a-zA-Z0-9_] as '_', or,
 * for a custom namespace, the name without it and without the prefix. */
static char *prom_name(const dp_stats_t *st, const dp_stat_t *s)
{
    const char *n = s->tag_extracted_name;
    const char *prefix = "envoy_";
    for (size_t i = 0; i < st->n_namespaces; i++) {
        size_t l = strlen(st->namespaces[i]);
        if (strncmp(n, st->namespaces[i], l) == 0 && n[l] == '.') {
            n += l + 1;
            prefix = "";
            break;
        }
    }
    size_t pl = strlen(prefix), nl = strlen(n);
    char *r = xcalloc(pl + nl + 1, 1);
    memcpy(r, prefix, pl);
    for (size_t i = 0; i < nl; i++) {
        char c = n[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_';
        r[pl + i] = ok ? c : '_';
    }
    return r;
}

static void prom_labels(FILE *out, const dp_stat_t *s, const char *extra_name,
                        const char *extra_value)
{
    fputc('{', out);
    bool first = true;
    for (size_t i = 0; i < s->n_tags; i++) {
        if (!first)
            fputc(',', out);
        first = false;
        for (const char *c = s->tags[i].name; *c; c++) {
            bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                      (*c >= '0' && *c <= '9') || *c == '_';
            fputc(ok ? *c : '_', out);
        }
        fputs("=\"", out);
        for (const char *c = s->tags[i].value; *c; c++) {
            if (*c == '\\' || *c == '"')
                fputc('\\', out);
            if (*c == '\n')
                fputs("\\n", out);
            else
                fputc(*c, out);
        }
        fputc('"', out);
    }
    if (extra_name) {
        fprintf(out, "%s%s=\"%s\"", first ? "" : ",", extra_name, extra_value);
    }
    fputc('}', out);
}

typedef struct prom_item {
    char *family;
    dp_stat_t *stat;
} prom_item_t;

static int by_family(const void *a, const void *b)
{
    const prom_item_t *x = a, *y = b;
    int c = strcmp(x->family, y->family);
    if (c)
        return c;
    /* series within a family: by their full name, which orders them by tag values */
    return strcmp(x->stat->name, y->stat->name);
}

int dp_stats_render_prometheus(dp_stats_t *st, const dp_stats_query_t *q, FILE *out,
                               char **reterr_msg)
{
    selection_t sel;
    if (select_stats(st, q, &sel, reterr_msg) < 0)
        return -EINVAL;
    prom_item_t *items = xcalloc(sel.n + 1, sizeof(*items));
    size_t n = 0;
    for (size_t i = 0; i < sel.n; i++) {
        if (sel.v[i]->kind == DP_STAT_TEXT && !(q && q->text_readouts))
            continue;
        items[n].family = prom_name(st, sel.v[i]);
        items[n].stat = sel.v[i];
        n++;
    }
    qsort(items, n, sizeof(*items), by_family);
    for (size_t i = 0; i < n; i++) {
        dp_stat_t *s = items[i].stat;
        const char *fam = items[i].family;
        bool new_family = i == 0 || strcmp(items[i - 1].family, fam) != 0;
        if (new_family) {
            const char *type = s->kind == DP_STAT_COUNTER     ? "counter"
                               : s->kind == DP_STAT_HISTOGRAM ? "histogram"
                                                              : "gauge";
            fprintf(out, "# TYPE %s %s\n", fam, type);
        }
        switch (s->kind) {
        case DP_STAT_COUNTER:
        case DP_STAT_GAUGE:
            fputs(fam, out);
            prom_labels(out, s, NULL, NULL);
            fprintf(out, " %llu\n",
                    (unsigned long long)(s->kind == DP_STAT_COUNTER
                                             ? dp_counter_value((dp_counter_t *)s)
                                             : dp_gauge_value((dp_gauge_t *)s)));
            break;
        case DP_STAT_TEXT:
            fputs(fam, out);
            prom_labels(out, s, "text_value", ((dp_textreadout_t *)s)->value
                                                  ? ((dp_textreadout_t *)s)->value
                                                  : "");
            fputs(" 0\n", out);
            break;
        case DP_STAT_HISTOGRAM: {
            dp_histogram_t *h = (dp_histogram_t *)s;
            uint64_t cum = 0;
            char le[64];
            for (size_t b = 0; b < h->n_bounds; b++) {
                cum += atomic_load_explicit(&h->counts[b], memory_order_relaxed);
                snprintf(le, sizeof(le), "%.32g", h->bounds[b]);
                fprintf(out, "%s_bucket", fam);
                prom_labels(out, s, "le", le);
                fprintf(out, " %llu\n", (unsigned long long)cum);
            }
            /* Count from the buckets themselves, so +Inf is never below the last bound even
             * while workers record. */
            uint64_t count = cum + atomic_load_explicit(&h->counts[h->n_bounds], memory_order_relaxed);
            fprintf(out, "%s_bucket", fam);
            prom_labels(out, s, "le", "+Inf");
            fprintf(out, " %llu\n", (unsigned long long)count);
            fprintf(out, "%s_sum", fam);
            prom_labels(out, s, NULL, NULL);
            fprintf(out, " %llu\n",
                    (unsigned long long)atomic_load_explicit(&h->sum, memory_order_relaxed));
            fprintf(out, "%s_count", fam);
            prom_labels(out, s, NULL, NULL);
            fprintf(out, " %llu\n", (unsigned long long)count);
            break;
        }
        }
        bool last_of_family = i + 1 == n || strcmp(items[i + 1].family, fam) != 0;
        if (last_of_family)
            fputc('\n', out);
    }
    for (size_t i = 0; i < n; i++)
        free(items[i].family);
    free(items);
    free(sel.v);
    return 0;
}
