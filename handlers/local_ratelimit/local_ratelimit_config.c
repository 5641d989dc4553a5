/* The config half of envoy.filters.http.local_ratelimit: LocalRateLimit bytes into a
 * dp_lrl_conf_t in the snapshot's arena, with its buckets from the registry. */
#include "handlers/local_ratelimit/local_ratelimit.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envoy/config/route/v3/route_components.pb-c.h"
#include "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.pb-c.h"
#include "handlers/config.h"

typedef Envoy__Extensions__Filters__Http__LocalRatelimit__V3__LocalRateLimit pb_lrl_t;
typedef Envoy__Config__Route__V3__RateLimit pb_rate_limit_t;
typedef Envoy__Config__Core__V3__HeaderValueOption pb_hvo_t;
typedef Envoy__Type__V3__TokenBucket pb_bucket_t;

/* LocalRateLimit.rate_limits (repeated envoy.config.route.v3.RateLimit, Envoy 1.34), which our
 * declaration of LocalRateLimit does not list: protobuf-c keeps it among the unknown fields. */
#define RATE_LIMITS_FIELD 17

/* Envoy's floor for the HTTP filter's fill interval (LocalRateLimiterImpl). */
#define MIN_FILL_INTERVAL_NS 50000000ull

typedef struct build {
    const handlers_config_ctx_t *ctx;
    dp_arena_t *arena;
    char **reterr;
    const char *id_base; /* stat_prefix|filter_name|level */
} build_t;

__attribute__((format(printf, 2, 3))) static int fail(build_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    if (b->reterr)
        *b->reterr = msg;
    else
        free(msg);
    return -EINVAL;
}

static dp_str_t arena_str(dp_arena_t *a, const char *s, size_t n)
{
    char *p = dp_arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return (dp_str_t){p, n};
}

/* A bucket from the registry, released with the arena. */
static int bucket_get(build_t *b, const char *what, const char *suffix,
                      const dp_tokenbucket_params_t *p, dp_tokenbucket_t **ret)
{
    char id[DP_TOKENBUCKET_MAX_ID + 1];
    int n = snprintf(id, sizeof(id), "%s|%s", b->id_base, suffix);
    if (n < 0 || (size_t)n >= sizeof(id))
        return fail(b, "%s: the rate limit's name is longer than %d bytes", what,
                    DP_TOKENBUCKET_MAX_ID);
    dp_tokenbucket_t *t = dp_tokenbucket_acquire(id, p);
    if (t == NULL)
        return fail(b, "%s: %s", what,
                    errno == ENOSPC ? "too many rate-limit buckets" : "invalid token bucket");
    dp_arena_add_cleanup(b->arena, dp_tokenbucket_unref_cb, t);
    *ret = t;
    return 0;
}

static int bucket_params(build_t *b, const char *what, const pb_bucket_t *tb,
                         dp_tokenbucket_params_t *ret)
{
    if (tb->max_tokens == 0)
        return fail(b, "%s.max_tokens: must be greater than 0", what);
    uint32_t per_fill = 1;
    if (tb->tokens_per_fill) {
        per_fill = tb->tokens_per_fill->value;
        if (per_fill == 0)
            return fail(b, "%s.tokens_per_fill: must be greater than 0", what);
    }
    if (tb->fill_interval == NULL)
        return fail(b, "%s.fill_interval: is required", what);
    int64_t sec = tb->fill_interval->seconds;
    int32_t nanos = tb->fill_interval->nanos;
    if (sec < 0 || nanos < 0 || nanos > 999999999 || sec > 315576000000)
        return fail(b, "%s.fill_interval: invalid duration", what);
    uint64_t ns = (uint64_t)sec * 1000000000ull + (uint64_t)nanos;
    if (ns < MIN_FILL_INTERVAL_NS)
        return fail(b, "%s.fill_interval: must be at least 50ms", what);
    *ret = (dp_tokenbucket_params_t){tb->max_tokens, per_fill, ns};
    return 0;
}

/* RuntimeFractionalPercent's default_value in parts per million (the runtime key is not
 * consulted: skiff has no runtime layer); absent is 0%, as in Envoy. */
static uint32_t fraction_ppm(const Envoy__Config__Core__V3__RuntimeFractionalPercent *f)
{
    if (f == NULL || f->default_value == NULL)
        return 0;
    uint64_t num = f->default_value->numerator;
    switch (f->default_value->denominator) {
    case ENVOY__TYPE__V3__FRACTIONAL_PERCENT__DENOMINATOR_TYPE__TEN_THOUSAND:
        num *= 100;
        break;
    case ENVOY__TYPE__V3__FRACTIONAL_PERCENT__DENOMINATOR_TYPE__MILLION:
        break;
    default: /* HUNDRED */
        num *= 10000;
        break;
    }
    return num > 1000000 ? 1000000 : (uint32_t)num;
}

static bool tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int headers_build(build_t *b, const char *what, pb_hvo_t *const *v, size_t n,
                         const dp_lrl_header_t **ret, size_t *ret_n)
{
    if (n > DP_LRL_MAX_HEADERS)
        return fail(b, "%s: more than %d headers", what, DP_LRL_MAX_HEADERS);
    dp_lrl_header_t *out = n ? dp_arena_alloc(b->arena, n * sizeof(*out)) : NULL;
    for (size_t i = 0; i < n; i++) {
        const pb_hvo_t *o = v[i];
        if (o->header == NULL || o->header->key == NULL || o->header->key[0] == '\0')
            return fail(b, "%s[%zu].header.key: is required", what, i);
        const char *key = o->header->key;
        size_t klen = strlen(key);
        for (size_t k = 0; k < klen; k++) {
            if (!tchar((unsigned char)key[k]))
                return fail(b, "%s[%zu].header.key: '%s' is not a valid header name", what, i, key);
        }
        if (strcasecmp(key, "host") == 0)
            return fail(b, "%s[%zu].header.key: host may not be modified", what, i);
        const char *val = o->header->value ? o->header->value : "";
        size_t vlen = strlen(val);
        if (vlen == 0 && o->header->raw_value.len) {
            val = (const char *)o->header->raw_value.data;
            vlen = o->header->raw_value.len;
        }
        for (size_t k = 0; k < vlen; k++) {
            if (val[k] == '\r' || val[k] == '\n' || val[k] == '\0')
                return fail(b, "%s[%zu].header.value: contains CR, LF or NUL", what, i);
        }
        dp_str_t name = arena_str(b->arena, key, klen);
        for (size_t k = 0; k < klen; k++) {
            char c = name.p[k];
            if (c >= 'A' && c <= 'Z')
                ((char *)name.p)[k] = (char)(c - 'A' + 'a');
        }
        out[i].name = name;
        out[i].value = arena_str(b->arena, val, vlen);
        out[i].keep_empty_value = o->keep_empty_value;
        /* The deprecated append maps onto append_action; both at once is an error, as in
         * Envoy's HeaderParser. */
        if (o->append &&
            o->append_action !=
                ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__APPEND_IF_EXISTS_OR_ADD)
            return fail(b, "%s[%zu]: append and append_action are both set", what, i);
        if (o->append)
            out[i].action = o->append->value ? DP_LRL_APPEND_IF_EXISTS_OR_ADD
                                             : DP_LRL_OVERWRITE_IF_EXISTS_OR_ADD;
        else if ((unsigned)o->append_action <= DP_LRL_OVERWRITE_IF_EXISTS)
            out[i].action = (dp_lrl_append_t)o->append_action;
        else
            return fail(b, "%s[%zu].append_action: unknown value %d", what, i,
                        (int)o->append_action);
    }
    *ret = out;
    *ret_n = n;
    return 0;
}

static int descriptors_build(build_t *b, const pb_lrl_t *m, dp_lrl_conf_t *conf)
{
    size_t n = m->n_descriptors;
    if (n > DP_LRL_MAX_DESCRIPTORS)
        return fail(b, "descriptors: more than %d", DP_LRL_MAX_DESCRIPTORS);
    if (conf->per_connection && n > DP_LRL_MAX_CONN_DESCRIPTORS)
        return fail(b, "descriptors: at most %d with local_rate_limit_per_downstream_connection",
                    DP_LRL_MAX_CONN_DESCRIPTORS);
    dp_lrl_descriptor_t *out = n ? dp_arena_alloc(b->arena, n * sizeof(*out)) : NULL;
    for (size_t i = 0; i < n; i++) {
        const Envoy__Extensions__Common__Ratelimit__V3__LocalRateLimitDescriptor *d =
            m->descriptors[i];
        char what[64];
        snprintf(what, sizeof(what), "descriptors[%zu]", i);
        if (d->n_entries == 0)
            return fail(b, "%s.entries: at least one is required", what);
        if (d->n_entries > DP_LRL_MAX_ENTRIES)
            return fail(b, "%s.entries: more than %d", what, DP_LRL_MAX_ENTRIES);
        if (d->token_bucket == NULL)
            return fail(b, "%s.token_bucket: is required", what);
        char tbwhat[80];
        snprintf(tbwhat, sizeof(tbwhat), "%s.token_bucket", what);
        int rc = bucket_params(b, tbwhat, d->token_bucket, &out[i].params);
        if (rc < 0)
            return rc;
        dp_lrl_entry_t *e = dp_arena_alloc(b->arena, d->n_entries * sizeof(*e));
        /* The bucket's name: the entries, each key=value, separated by NUL-free markers. */
        char suffix[DP_TOKENBUCKET_MAX_ID + 1];
        size_t off = (size_t)snprintf(suffix, sizeof(suffix), "d");
        for (size_t k = 0; k < d->n_entries; k++) {
            const char *key = d->entries[k]->key ? d->entries[k]->key : "";
            const char *val = d->entries[k]->value ? d->entries[k]->value : "";
            if (key[0] == '\0')
                return fail(b, "%s.entries[%zu].key: is required", what, k);
            e[k].key = arena_str(b->arena, key, strlen(key));
            e[k].value = arena_str(b->arena, val, strlen(val));
            if (off < sizeof(suffix)) {
                int w = snprintf(suffix + off, sizeof(suffix) - off, "|%zu:%s=%zu:%s", strlen(key),
                                 key, strlen(val), val);
                off = w < 0 ? sizeof(suffix) : off + (size_t)w;
            }
        }
        if (off >= sizeof(suffix))
            return fail(b, "%s.entries: longer than %d bytes", what, DP_TOKENBUCKET_MAX_ID / 2);
        out[i].entries = e;
        out[i].n_entries = d->n_entries;
        if (!conf->per_connection) {
            rc = bucket_get(b, what, suffix, &out[i].params, &out[i].bucket);
            if (rc < 0)
                return rc;
        }
    }
    conf->descriptors = out;
    conf->n_descriptors = n;
    return 0;
}

static int action_build(build_t *b, const char *what,
                        const Envoy__Config__Route__V3__RateLimit__Action *a, dp_lrl_action_t *out)
{
    switch (a->action_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__RATE_LIMIT__ACTION__ACTION_SPECIFIER_REQUEST_HEADERS: {
        const char *hn = a->request_headers->header_name;
        const char *dk = a->request_headers->descriptor_key;
        if (hn == NULL || hn[0] == '\0')
            return fail(b, "%s.request_headers.header_name: is required", what);
        if (dk == NULL || dk[0] == '\0')
            return fail(b, "%s.request_headers.descriptor_key: is required", what);
        out->kind = DP_LRL_ACTION_REQUEST_HEADERS;
        out->header_name = arena_str(b->arena, hn, strlen(hn));
        for (size_t k = 0; k < out->header_name.n; k++) {
            char c = out->header_name.p[k];
            if (c >= 'A' && c <= 'Z')
                ((char *)out->header_name.p)[k] = (char)(c - 'A' + 'a');
        }
        out->key = arena_str(b->arena, dk, strlen(dk));
        out->skip_if_absent = a->request_headers->skip_if_absent;
        return 0;
    }
    case ENVOY__CONFIG__ROUTE__V3__RATE_LIMIT__ACTION__ACTION_SPECIFIER_GENERIC_KEY: {
        const char *v = a->generic_key->descriptor_value;
        const char *k = a->generic_key->descriptor_key;
        if (v == NULL || v[0] == '\0')
            return fail(b, "%s.generic_key.descriptor_value: is required", what);
        out->kind = DP_LRL_ACTION_GENERIC_KEY;
        out->key = k && k[0] ? arena_str(b->arena, k, strlen(k)) : DP_STR("generic_key");
        out->value = arena_str(b->arena, v, strlen(v));
        return 0;
    }
    case ENVOY__CONFIG__ROUTE__V3__RATE_LIMIT__ACTION__ACTION_SPECIFIER_REMOTE_ADDRESS:
        out->kind = DP_LRL_ACTION_REMOTE_ADDRESS;
        out->key = DP_STR("remote_address");
        return 0;
    default:
        return fail(b,
                    "%s: action %d is not supported (request_headers, generic_key and "
                    "remote_address are)",
                    what, (int)a->action_specifier_case);
    }
}

static int rate_limits_build(build_t *b, const pb_lrl_t *m, dp_lrl_conf_t *conf)
{
    const ProtobufCMessage *base = &m->base;
    size_t n = 0;
    for (unsigned i = 0; i < base->n_unknown_fields; i++)
        n += base->unknown_fields[i].tag == RATE_LIMITS_FIELD;
    if (n == 0)
        return 0;
    if (n > DP_LRL_MAX_RATE_LIMITS)
        return fail(b, "rate_limits: more than %d", DP_LRL_MAX_RATE_LIMITS);
    dp_lrl_rate_limit_t *out = dp_arena_alloc(b->arena, n * sizeof(*out));
    size_t j = 0;
    for (unsigned i = 0; i < base->n_unknown_fields; i++) {
        const ProtobufCMessageUnknownField *u = &base->unknown_fields[i];
        if (u->tag != RATE_LIMITS_FIELD)
            continue;
        if (u->wire_type != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED)
            return fail(b, "rate_limits[%zu]: not a message", j);
        /* protobuf-c keeps an unknown length-delimited field with its length varint. */
        size_t off = 0;
        uint64_t flen = 0;
        for (unsigned shift = 0; off < u->len && off < 10; shift += 7) {
            uint8_t c = u->data[off++];
            flen |= (uint64_t)(c & 0x7f) << shift;
            if (!(c & 0x80))
                break;
        }
        /* RateLimit's schema has no recursive message, so its depth is bounded without the
         * depth check of xds/pbwire.h. */
        pb_rate_limit_t *rl = NULL;
        if (off > 0 && !(u->data[off - 1] & 0x80) && flen == u->len - off)
            rl = (pb_rate_limit_t *)protobuf_c_message_unpack(
                &envoy__config__route__v3__rate_limit__descriptor, NULL, u->len - off,
                u->data + off);
        if (rl == NULL)
            return fail(b, "rate_limits[%zu]: malformed RateLimit", j);
        int rc = 0;
        if (rl->n_actions == 0)
            rc = fail(b, "rate_limits[%zu].actions: at least one is required", j);
        else if (rl->n_actions > DP_LRL_MAX_ENTRIES)
            rc = fail(b, "rate_limits[%zu].actions: more than %d", j, DP_LRL_MAX_ENTRIES);
        dp_lrl_action_t *acts =
            rc == 0 ? dp_arena_alloc(b->arena, rl->n_actions * sizeof(*acts)) : NULL;
        for (size_t k = 0; rc == 0 && k < rl->n_actions; k++) {
            char what[64];
            snprintf(what, sizeof(what), "rate_limits[%zu].actions[%zu]", j, k);
            rc = action_build(b, what, rl->actions[k], &acts[k]);
        }
        if (rc == 0) {
            out[j].actions = acts;
            out[j].n_actions = rl->n_actions;
        }
        protobuf_c_message_free_unpacked(&rl->base, NULL);
        if (rc < 0)
            return rc;
        j++;
    }
    conf->rate_limits = out;
    conf->n_rate_limits = n;
    return 0;
}

static dp_counter_t *counter_new(const handlers_config_ctx_t *ctx, const char *prefix,
                                 const char *name)
{
    if (ctx->stats == NULL)
        return NULL;
    char full[512];
    snprintf(full, sizeof(full), "%s.http_local_rate_limit.%s", prefix, name);
    return dp_stats_counter(ctx->stats, full);
}

static int conf_build(build_t *b, const pb_lrl_t *m, dp_lrl_conf_t *conf)
{
    const handlers_config_ctx_t *ctx = b->ctx;
    if (m->stat_prefix == NULL || m->stat_prefix[0] == '\0')
        return fail(b, "stat_prefix: is required");
    if (strlen(m->stat_prefix) > 256)
        return fail(b, "stat_prefix: longer than 256 bytes");
    const char *fname = ctx->filter_name && ctx->filter_name[0] ? ctx->filter_name : DP_LRL_NAME;
    conf->filter_name = dp_arena_strdup(b->arena, fname);
    conf->per_route = ctx->per_route;
    conf->enabled_ppm = fraction_ppm(m->filter_enabled);
    conf->enforced_ppm = fraction_ppm(m->filter_enforced);
    conf->status = 429;
    if (m->status && (int)m->status->code >= 400)
        conf->status = (int)m->status->code;
    conf->per_connection = m->local_rate_limit_per_downstream_connection;
    conf->always_consume_default = m->always_consume_default_token_bucket
                                       ? m->always_consume_default_token_bucket->value
                                       : true;
    conf->x_ratelimit_headers =
        m->enable_x_ratelimit_headers ==
        ENVOY__EXTENSIONS__COMMON__RATELIMIT__V3__XRATE_LIMIT_HEADERS_RFCVERSION__DRAFT_VERSION_03;
    conf->resource_exhausted = m->rate_limited_as_resource_exhausted;

    /* The limit's name. At listener level it includes the connection manager's stat_prefix,
     * so that each connection manager (an Istio inbound port) has its own bucket, as each
     * has its own filter config in Envoy. */
    char id_base[DP_TOKENBUCKET_MAX_ID / 2];
    int n = snprintf(id_base, sizeof(id_base), "%s|%s|%s|%s", m->stat_prefix, fname,
                     ctx->per_route ? "route" : "listener",
                     !ctx->per_route && ctx->stat_prefix ? ctx->stat_prefix : "");
    if (n < 0 || (size_t)n >= sizeof(id_base))
        return fail(b, "stat_prefix: too long with the filter name");
    b->id_base = id_base;

    int rc;
    if (m->token_bucket) {
        rc = bucket_params(b, "token_bucket", m->token_bucket, &conf->params);
        if (rc < 0)
            return rc;
        conf->has_bucket = true;
    }
    /* The default bucket, or with per-connection buckets the name the worker's table keys
     * them by (its tokens then unused). */
    if (conf->has_bucket || conf->per_connection) {
        dp_tokenbucket_params_t p = conf->params;
        if (!conf->has_bucket)
            p = (dp_tokenbucket_params_t){1, 1, 60ull * 1000000000ull};
        rc = bucket_get(b, "token_bucket", conf->per_connection ? "conn" : "default", &p,
                        &conf->bucket);
        if (rc < 0)
            return rc;
    }
    if ((rc = headers_build(b, "response_headers_to_add", m->response_headers_to_add,
                            m->n_response_headers_to_add, &conf->response_headers,
                            &conf->n_response_headers)) < 0 ||
        (rc = headers_build(b, "request_headers_to_add_when_not_enforced",
                            m->request_headers_to_add_when_not_enforced,
                            m->n_request_headers_to_add_when_not_enforced, &conf->request_headers,
                            &conf->n_request_headers)) < 0 ||
        (rc = descriptors_build(b, m, conf)) < 0 || (rc = rate_limits_build(b, m, conf)) < 0)
        return rc;
    b->id_base = NULL;

    conf->st_enabled = counter_new(ctx, m->stat_prefix, "enabled");
    conf->st_enforced = counter_new(ctx, m->stat_prefix, "enforced");
    conf->st_rate_limited = counter_new(ctx, m->stat_prefix, "rate_limited");
    conf->st_ok = counter_new(ctx, m->stat_prefix, "ok");
    return 0;
}

int dp_local_ratelimit_config_new(const handlers_config_ctx_t *ctx, const uint8_t *buf, size_t len,
                                  const void **ret_conf, char **reterr_msg)
{
    build_t b = {.ctx = ctx, .arena = ctx->arena, .reterr = reterr_msg};
    /* LocalRateLimit's schema has no recursive message: protobuf-c's recursion is bounded. */
    pb_lrl_t *m = envoy__extensions__filters__http__local_ratelimit__v3__local_rate_limit__unpack(
        NULL, len, buf);
    if (m == NULL)
        return fail(&b, "LocalRateLimit: malformed message");
    dp_lrl_conf_t *conf = dp_arena_alloc(ctx->arena, sizeof(*conf));
    int rc = conf_build(&b, m, conf);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    if (rc < 0)
        return rc;
    *ret_conf = conf;
    return 0;
}
