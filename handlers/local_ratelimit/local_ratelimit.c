#include "handlers/local_ratelimit/local_ratelimit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

/* ---- per-connection buckets ----
 *
 * With local_rate_limit_per_downstream_connection each connection has its own buckets. The
 * stream interface has no per-connection filter state, so each worker keeps them in a table
 * of its own, keyed by the config's registry bucket (stable across snapshot rebuilds) and the
 * connection. A connection's slot is taken over by another one when its probe window is full
 * (the least recently used goes); the connection it belonged to then starts again with full
 * buckets, which can only let more requests through, never fewer. */

#define CONN_SLOTS 1024
#define CONN_PROBE 8

typedef struct conn_slot {
    const dp_tokenbucket_t *anchor; /* conf->bucket; NULL: free */
    const dp_accepted_t *conn;
    int fd;
    struct sockaddr_storage remote;
    uint64_t last_ns;
    dp_tokenbucket_t b[1 + DP_LRL_MAX_CONN_DESCRIPTORS]; /* default, then the descriptors */
} conn_slot_t;

static pthread_key_t conn_key;
static pthread_once_t conn_once = PTHREAD_ONCE_INIT;

static void conn_key_init(void)
{
    if (pthread_key_create(&conn_key, free) != 0)
        abort();
}

static conn_slot_t *conn_table(void)
{
    pthread_once(&conn_once, conn_key_init);
    conn_slot_t *t = pthread_getspecific(conn_key);
    if (t == NULL) {
        t = calloc(CONN_SLOTS, sizeof(*t));
        if (t == NULL || pthread_setspecific(conn_key, t) != 0)
            abort();
    }
    return t;
}

static bool same_peer(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET)
        return memcmp(a, b, sizeof(struct sockaddr_in)) == 0;
    if (a->ss_family == AF_INET6)
        return memcmp(a, b, sizeof(struct sockaddr_in6)) == 0;
    return true;
}

static bool params_eq(const dp_tokenbucket_params_t *a, const dp_tokenbucket_params_t *b)
{
    return a->max_tokens == b->max_tokens && a->tokens_per_fill == b->tokens_per_fill &&
           a->fill_interval_ns == b->fill_interval_ns;
}

/* The buckets of this connection under conf, made full on first use. */
static conn_slot_t *conn_slot(const dp_lrl_conf_t *conf, const dp_accepted_t *conn, uint64_t now)
{
    conn_slot_t *t = conn_table();
    uintptr_t h = ((uintptr_t)conf->bucket >> 4) * 31u + ((uintptr_t)conn >> 4);
    h ^= h >> 17;
    conn_slot_t *pick = NULL;
    for (unsigned i = 0; i < CONN_PROBE; i++) {
        conn_slot_t *sl = &t[(h + i) % CONN_SLOTS];
        if (sl->anchor == conf->bucket && sl->conn == conn && sl->fd == conn->fd &&
            same_peer(&sl->remote, &conn->remote)) {
            pick = sl;
            break;
        }
        if (pick == NULL ||
            (pick->anchor != NULL && (sl->anchor == NULL || sl->last_ns < pick->last_ns)))
            pick = sl;
    }
    bool fresh = pick->anchor != conf->bucket || pick->conn != conn || pick->fd != conn->fd ||
                 !same_peer(&pick->remote, &conn->remote);
    if (fresh) {
        pick->anchor = conf->bucket;
        pick->conn = conn;
        pick->fd = conn->fd;
        pick->remote = conn->remote;
    }
    /* A config change with other parameters under the same identity gets fresh buckets. */
    if (conf->has_bucket && (fresh || !params_eq(&pick->b[0].p, &conf->params)))
        dp_tokenbucket_init(&pick->b[0], &conf->params, now);
    for (size_t i = 0; i < conf->n_descriptors && i < DP_LRL_MAX_CONN_DESCRIPTORS; i++) {
        const dp_tokenbucket_params_t *p = &conf->descriptors[i].params;
        if (fresh || !params_eq(&pick->b[1 + i].p, p))
            dp_tokenbucket_init(&pick->b[1 + i], p, now);
    }
    pick->last_ns = now;
    return pick;
}

/* ---- request descriptors ---- */

typedef struct req_desc {
    dp_lrl_entry_t e[DP_LRL_MAX_ENTRIES];
    size_t n;
} req_desc_t;

/* Applies one RateLimit's actions; false when an action produces nothing (Envoy then drops
 * the whole descriptor). */
static bool desc_build(const dp_stream_t *s, const dp_lrl_rate_limit_t *rl, dp_str_t remote,
                       req_desc_t *d)
{
    d->n = 0;
    for (size_t i = 0; i < rl->n_actions && d->n < DP_LRL_MAX_ENTRIES; i++) {
        const dp_lrl_action_t *a = &rl->actions[i];
        switch (a->kind) {
        case DP_LRL_ACTION_REQUEST_HEADERS: {
            const dp_header_t *h =
                s->req ? dp_headers_get(&s->req->headers, a->header_name.p, a->header_name.n)
                       : NULL;
            if (h == NULL) {
                if (a->skip_if_absent)
                    continue;
                return false;
            }
            d->e[d->n++] = (dp_lrl_entry_t){a->key, h->value};
            break;
        }
        case DP_LRL_ACTION_GENERIC_KEY:
            d->e[d->n++] = (dp_lrl_entry_t){a->key, a->value};
            break;
        case DP_LRL_ACTION_REMOTE_ADDRESS:
            if (remote.n == 0)
                return false;
            d->e[d->n++] = (dp_lrl_entry_t){a->key, remote};
            break;
        }
    }
    return d->n > 0;
}

static bool str_same(dp_str_t a, dp_str_t b)
{
    return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

static bool desc_matches(const dp_lrl_descriptor_t *cd, const req_desc_t *rd)
{
    if (cd->n_entries != rd->n)
        return false;
    for (size_t i = 0; i < rd->n; i++) {
        if (!str_same(cd->entries[i].key, rd->e[i].key) ||
            !str_same(cd->entries[i].value, rd->e[i].value))
            return false;
    }
    return true;
}

/* Lower fill rate first: tokens_per_fill / fill_interval, compared without division. */
static bool more_restrictive(const dp_tokenbucket_params_t *a, const dp_tokenbucket_params_t *b)
{
    return (unsigned __int128)a->tokens_per_fill * b->fill_interval_ns <
           (unsigned __int128)b->tokens_per_fill * a->fill_interval_ns;
}

static dp_str_t remote_str(const dp_stream_t *s, char *buf, size_t len)
{
    if (s->conn == NULL)
        return DP_STR_NULL;
    const struct sockaddr_storage *ss = &s->conn->remote;
    const void *src = NULL;
    if (ss->ss_family == AF_INET)
        src = &((const struct sockaddr_in *)ss)->sin_addr;
    else if (ss->ss_family == AF_INET6)
        src = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    if (src == NULL || inet_ntop(ss->ss_family, src, buf, (socklen_t)len) == NULL)
        return DP_STR_NULL;
    return (dp_str_t){buf, strlen(buf)};
}

/* ---- the filter ---- */

typedef struct lrl_ctx {
    const dp_lrl_conf_t *conf; /* the config this request was checked with */
    bool checked;              /* the x-ratelimit headers are due */
    bool limited;              /* the filter answered this request */
    uint32_t limit, remaining;
    uint64_t reset_s;
} lrl_ctx_t;

/* filter_enabled / filter_enforced: a fraction of requests, drawn from a per-thread xorshift
 * generator (uniform enough for sampling; not for secrets). */
static bool fraction_hit(uint32_t ppm)
{
    if (ppm >= 1000000)
        return true;
    if (ppm == 0)
        return false;
    static _Thread_local uint64_t x;
    if (x == 0)
        x = uv_hrtime() | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x % 1000000 < ppm;
}

/* Takes one token from b; the bucket the x-ratelimit headers describe becomes b when it is the
 * first taken or it refused. */
static bool take(dp_tokenbucket_t *b, uint64_t now, dp_tokenbucket_t **report,
                 uint32_t *report_left)
{
    uint32_t left = 0;
    bool ok = dp_tokenbucket_consume_at(b, 1, now, &left);
    if (*report == NULL || !ok) {
        *report = b;
        *report_left = left;
    }
    return ok;
}

/* Takes a token from the buckets the request falls under (Envoy's requestAllowed): the matched
 * descriptors' buckets most restrictive first, then the default bucket when no descriptor
 * matched or always_consume_default_token_bucket. Records in ctx the bucket the x-ratelimit
 * headers describe: the one that refused, else the most restrictive one taken. */
static bool request_allowed(dp_stream_t *s, lrl_ctx_t *ctx, const dp_lrl_conf_t *conf)
{
    uint64_t now = uv_hrtime();
    conn_slot_t *slot = conf->per_connection && s->conn ? conn_slot(conf, s->conn, now) : NULL;

    size_t matched[DP_LRL_MAX_DESCRIPTORS];
    size_t n_matched = 0;
    if (conf->n_descriptors && conf->n_rate_limits) {
        char rbuf[INET6_ADDRSTRLEN];
        dp_str_t remote = remote_str(s, rbuf, sizeof(rbuf));
        for (size_t r = 0; r < conf->n_rate_limits; r++) {
            req_desc_t rd;
            if (!desc_build(s, &conf->rate_limits[r], remote, &rd))
                continue;
            for (size_t i = 0; i < conf->n_descriptors; i++) {
                if (!desc_matches(&conf->descriptors[i], &rd))
                    continue;
                bool dup = false;
                for (size_t k = 0; k < n_matched; k++)
                    dup |= matched[k] == i;
                if (!dup && n_matched < DP_LRL_MAX_DESCRIPTORS)
                    matched[n_matched++] = i;
            }
        }
        /* Insertion sort: a handful of entries at most. */
        for (size_t i = 1; i < n_matched; i++) {
            size_t v = matched[i], j = i;
            while (j > 0 && more_restrictive(&conf->descriptors[v].params,
                                             &conf->descriptors[matched[j - 1]].params)) {
                matched[j] = matched[j - 1];
                j--;
            }
            matched[j] = v;
        }
    }

    dp_tokenbucket_t *report = NULL;
    uint32_t report_left = 0;
    bool ok = true;
    for (size_t k = 0; ok && k < n_matched; k++) {
        size_t i = matched[k];
        ok = take(slot ? &slot->b[1 + i] : conf->descriptors[i].bucket, now, &report, &report_left);
    }
    if (ok && (n_matched == 0 || conf->always_consume_default) && conf->has_bucket)
        ok = take(slot ? &slot->b[0] : conf->bucket, now, &report, &report_left);
    if (report) {
        ctx->checked = true;
        ctx->limit = report->p.max_tokens;
        ctx->remaining = report_left;
        ctx->reset_s = (dp_tokenbucket_next_fill_ns(report, now) + 999999999ull) / 1000000000ull;
    }
    return ok;
}

static void headers_apply(dp_headers_t *hs, dp_pool_t *pool, const dp_lrl_header_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const dp_lrl_header_t *h = &v[i];
        if (h->value.n == 0 && !h->keep_empty_value)
            continue;
        bool exists = dp_headers_get(hs, h->name.p, h->name.n) != NULL;
        switch (h->action) {
        case DP_LRL_APPEND_IF_EXISTS_OR_ADD:
            break;
        case DP_LRL_ADD_IF_ABSENT:
            if (exists)
                continue;
            break;
        case DP_LRL_OVERWRITE_IF_EXISTS:
            if (!exists)
                continue;
            dp_headers_remove(hs, h->name.p, h->name.n);
            break;
        case DP_LRL_OVERWRITE_IF_EXISTS_OR_ADD:
            dp_headers_remove(hs, h->name.p, h->name.n);
            break;
        }
        dp_headers_add_ref(hs, pool, h->name, h->value);
    }
}

static void count(dp_counter_t *c)
{
    if (c)
        dp_counter_inc(c);
}

static dp_filter_status_t lrl_on_request_headers(dp_stream_t *s, void *vctx, const void *vconf,
                                                 bool end_stream)
{
    lrl_ctx_t *ctx = vctx;
    const dp_lrl_conf_t *lconf = vconf;
    const dp_lrl_conf_t *conf =
        dp_stream_route_config(s, lconf && lconf->filter_name ? lconf->filter_name : DP_LRL_NAME);
    if (conf == NULL)
        conf = lconf;
    if (conf == NULL || !fraction_hit(conf->enabled_ppm))
        return DP_FILTER_CONTINUE;
    ctx->conf = conf;
    count(conf->st_enabled);
    if (request_allowed(s, ctx, conf)) {
        count(conf->st_ok);
        return DP_FILTER_CONTINUE;
    }
    count(conf->st_rate_limited);
    if (!fraction_hit(conf->enforced_ppm)) {
        if (s->req)
            headers_apply(&s->req->headers, s->pool, conf->request_headers,
                          conf->n_request_headers);
        return DP_FILTER_CONTINUE;
    }
    count(conf->st_enforced);
    ctx->limited = true;
    dp_stream_local_reply(s, conf->status, "local_rate_limited", DP_RF(RL));
    return DP_FILTER_STOP;
}

static void put_number(dp_headers_t *hs, dp_pool_t *pool, const char *name, size_t nlen, uint64_t v)
{
    char buf[24];
    int n = snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
    dp_headers_set(hs, pool, name, nlen, buf, (size_t)n);
}

static void lrl_on_response_headers(dp_stream_t *s, void *vctx, const void *vconf,
                                    dp_http_head_t *h, bool end_stream)
{
    lrl_ctx_t *ctx = vctx;
    const dp_lrl_conf_t *conf = ctx->conf;
    if (conf == NULL)
        return;
    if (ctx->limited) {
        headers_apply(&h->headers, s->pool, conf->response_headers, conf->n_response_headers);
        dp_headers_set(&h->headers, s->pool, "x-envoy-ratelimited", 19, "true", 4);
        if (s->grpc && conf->resource_exhausted && DP_HDR_GET(&h->headers, "grpc-status") != NULL)
            dp_headers_set(&h->headers, s->pool, "grpc-status", 11, "8", 1);
    }
    if (ctx->checked && conf->x_ratelimit_headers) {
        /* RateLimit header fields draft 03, as Envoy's XRateLimitHeaderUtils sends them. */
        put_number(&h->headers, s->pool, "x-ratelimit-limit", 17, ctx->limit);
        put_number(&h->headers, s->pool, "x-ratelimit-remaining", 21, ctx->remaining);
        put_number(&h->headers, s->pool, "x-ratelimit-reset", 17, ctx->reset_s);
    }
}

const dp_http_filter_type_t dp_local_ratelimit_filter = {
    .name = DP_LRL_NAME,
    .type_url = DP_LRL_TYPE_URL,
    .terminal = false,
    .ctx_size = sizeof(lrl_ctx_t),
    .on_request_headers = lrl_on_request_headers,
    .on_response_headers = lrl_on_response_headers,
};
