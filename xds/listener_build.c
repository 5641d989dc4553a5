#include "xds/listener_build.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/filter_chain.h"
#include "dataplane/hcm.h"
#include "dataplane/listener.h"
#include "dataplane/log.h"
#include "dataplane/net_ratelimit.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"
#include "envoy/extensions/filters/network/local_ratelimit/v3/local_rate_limit.pb-c.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb-c.h"
#include "xds/access_log_build.h"
#include "xds/hcm_build.h"
#include "xds/pbwire.h"

#define TYPE_PREFIX    "type.googleapis.com/"
#define TCP_PROXY_TYPE TYPE_PREFIX "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
#define HCM_TYPE                                                               \
    TYPE_PREFIX "envoy.extensions.filters.network.http_connection_manager.v3." \
                "HttpConnectionManager"
#define NET_LRL_TYPE \
    TYPE_PREFIX "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"
#define PRED_MAX_DEPTH 16

static uint64_t duration_ms(const Google__Protobuf__Duration *d)
{
    if (d->seconds < 0 || d->nanos < 0)
        return 0;
    return (uint64_t)d->seconds * 1000 + (uint64_t)d->nanos / 1000000;
}

static bool listener_addr(const Envoy__Config__Core__V3__Address *a, dp_addr_t *out)
{
    memset(out, 0, sizeof(*out));
    if (a == NULL || a->address_case != ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS)
        return false;
    const Envoy__Config__Core__V3__SocketAddress *sa = a->socket_address;
    if (inet_pton(AF_INET, sa->address, &out->in.sin_addr) == 1) {
        out->in.sin_family = AF_INET;
        out->in.sin_port = htons((uint16_t)sa->port_value);
        return true;
    }
    if (inet_pton(AF_INET6, sa->address, &out->in6.sin6_addr) == 1) {
        out->in6.sin6_family = AF_INET6;
        out->in6.sin6_port = htons((uint16_t)sa->port_value);
        return true;
    }
    return false;
}

/* ---- FilterChainMatch ---- */

static const dp_cidr_t *cidrs(dp_arena_t *arena, Envoy__Config__Core__V3__CidrRange **r, size_t n,
                              size_t *ret_n, bool *bad)
{
    *ret_n = 0;
    if (n == 0)
        return NULL;
    dp_cidr_t *v = dp_arena_alloc(arena, n * sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        uint32_t len = r[i]->prefix_len ? r[i]->prefix_len->value : 0;
        if (dp_cidr_parse(r[i]->address_prefix, len, &v[*ret_n]))
            (*ret_n)++;
        else if (bad)
            *bad = true;
    }
    return v;
}

static const char *const *strs(dp_arena_t *arena, char **s, size_t n, bool lower)
{
    if (n == 0)
        return NULL;
    char **v = dp_arena_alloc(arena, n * sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        v[i] = dp_arena_strdup(arena, s[i]);
        for (char *c = v[i]; lower && *c; c++) {
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c + 32);
        }
    }
    return (const char *const *)v;
}

/* Fills m; *bad is set when a prefix range is not an IP prefix (it is left out). */
static void build_match(dp_arena_t *arena, const Envoy__Config__Listener__V3__FilterChainMatch *fm,
                        dp_fc_match_t *m, bool *bad)
{
    memset(m, 0, sizeof(*m));
    m->transport_protocol = "";
    if (fm == NULL)
        return;
    m->destination_port = fm->destination_port ? fm->destination_port->value : 0;
    m->prefix_ranges =
        cidrs(arena, fm->prefix_ranges, fm->n_prefix_ranges, &m->n_prefix_ranges, bad);
    m->server_names = strs(arena, fm->server_names, fm->n_server_names, true);
    m->n_server_names = fm->n_server_names;
    m->transport_protocol =
        dp_arena_strdup(arena, fm->transport_protocol ? fm->transport_protocol : "");
    m->application_protocols =
        strs(arena, fm->application_protocols, fm->n_application_protocols, false);
    m->n_application_protocols = fm->n_application_protocols;
    m->direct_source_prefix_ranges =
        cidrs(arena, fm->direct_source_prefix_ranges, fm->n_direct_source_prefix_ranges,
              &m->n_direct_source_prefix_ranges, bad);
    switch (fm->source_type) {
    case ENVOY__CONFIG__LISTENER__V3__FILTER_CHAIN_MATCH__CONNECTION_SOURCE_TYPE__SAME_IP_OR_LOOPBACK:
        m->source_type = DP_SOURCE_SAME_IP_OR_LOOPBACK;
        break;
    case ENVOY__CONFIG__LISTENER__V3__FILTER_CHAIN_MATCH__CONNECTION_SOURCE_TYPE__EXTERNAL:
        m->source_type = DP_SOURCE_EXTERNAL;
        break;
    default:
        m->source_type = DP_SOURCE_ANY;
    }
    m->source_prefix_ranges = cidrs(arena, fm->source_prefix_ranges, fm->n_source_prefix_ranges,
                                    &m->n_source_prefix_ranges, bad);
    if (fm->n_source_ports) {
        uint32_t *p = dp_arena_alloc(arena, fm->n_source_ports * sizeof(*p));
        memcpy(p, fm->source_ports, fm->n_source_ports * sizeof(*p));
        m->source_ports = p;
        m->n_source_ports = fm->n_source_ports;
    }
}

/* ---- network filters ---- */

static const dp_tcp_proxy_t *build_tcp_proxy(dp_arena_t *arena, const Google__Protobuf__Any *tc)
{
    const char *why;
    Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy *tp = (void *)xds_pb_unpack(
        &envoy__extensions__filters__network__tcp_proxy__v3__tcp_proxy__descriptor, tc->value.data,
        tc->value.len, &why);
    if (tp == NULL)
        return NULL;
    dp_tcp_proxy_t *t = dp_arena_alloc(arena, sizeof(*t));
    t->stat_prefix = dp_arena_strdup(arena, tp->stat_prefix ? tp->stat_prefix : "");
    if (tp->cluster_specifier_case ==
        ENVOY__EXTENSIONS__FILTERS__NETWORK__TCP_PROXY__V3__TCP_PROXY__CLUSTER_SPECIFIER_CLUSTER) {
        t->cluster = dp_arena_strdup(arena, tp->cluster);
    } else if (
        tp->cluster_specifier_case ==
            ENVOY__EXTENSIONS__FILTERS__NETWORK__TCP_PROXY__V3__TCP_PROXY__CLUSTER_SPECIFIER_WEIGHTED_CLUSTERS &&
        tp->weighted_clusters->n_clusters) {
        const Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy__WeightedCluster *wc =
            tp->weighted_clusters;
        dp_weighted_cluster_t *v = dp_arena_alloc(arena, wc->n_clusters * sizeof(*v));
        for (size_t i = 0; i < wc->n_clusters; i++) {
            v[i].name = dp_arena_strdup(arena, wc->clusters[i]->name);
            v[i].weight = wc->clusters[i]->weight;
            t->total_weight += v[i].weight;
        }
        t->weighted = v;
        t->n_weighted = wc->n_clusters;
        t->cluster = v[0].name;
    }
    /* Envoy's tcp_proxy idle_timeout defaults to 1 h; 0s disables it. */
    t->idle_timeout_ms = tp->idle_timeout ? duration_ms(tp->idle_timeout) : 3600 * 1000;
    char *err = NULL;
    int rc = xds_access_logs_build(arena, tp->access_log, tp->n_access_log, &t->access_logs,
                                   &t->n_access_logs, &err);
    if (rc < 0)
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "tcp_proxy %s: %s", t->stat_prefix,
               err ? err : "access_log");
    free(err);
    protobuf_c_message_free_unpacked(&tp->base, NULL);
    return rc < 0 ? NULL : t;
}

/* The HTTP connection manager ending a chain, through xds_hcm_build. NULL (the chain then
 * closes its connections) when it cannot be served. */
static const dp_hcm_config_t *build_hcm(dp_snapshot_t *s, dp_stats_t *stats,
                                        const Google__Protobuf__Any *tc, bool inbound,
                                        const char *listener)
{
    const char *why;
    Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager *hcm =
        (void *)xds_pb_unpack(
            &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor,
            tc->value.data, tc->value.len, &why);
    if (hcm == NULL) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "listener %s: http_connection_manager: %s", listener,
               why);
        return NULL;
    }
    char *err = NULL;
    const dp_hcm_config_t *c = xds_hcm_build(s, stats, hcm, inbound, &err);
    if (c == NULL)
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "listener %s: http_connection_manager: %s", listener,
               err ? err : "cannot be served");
    free(err);
    protobuf_c_message_free_unpacked(&hcm->base, NULL);
    return c;
}

/* envoy.filters.network.local_ratelimit: its bucket is named by share_key when set, else by
 * the listener, the chain (its name, or a digest of its match), the filter's position and
 * stat_prefix. Returns NULL (with a warning) when it cannot be built. */
static dp_net_ratelimit_t *build_net_ratelimit(dp_snapshot_t *s, dp_stats_t *stats,
                                               const Envoy__Config__Listener__V3__Listener *l,
                                               const Envoy__Config__Listener__V3__FilterChain *fc,
                                               size_t index, const Google__Protobuf__Any *tc)
{
    const char *why;
    Envoy__Extensions__Filters__Network__LocalRatelimit__V3__LocalRateLimit *m =
        (void *)xds_pb_unpack(
            &envoy__extensions__filters__network__local_ratelimit__v3__local_rate_limit__descriptor,
            tc->value.data, tc->value.len, &why);
    if (m == NULL) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "listener %s: local_ratelimit: %s", l->name, why);
        return NULL;
    }
    dp_net_ratelimit_t *rl = NULL;
    const Envoy__Type__V3__TokenBucket *tb = m->token_bucket;
    if (tb == NULL || tb->max_tokens == 0 || tb->fill_interval == NULL) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN,
               "listener %s: local_ratelimit: token_bucket needs max_tokens and fill_interval",
               l->name);
        goto out;
    }
    dp_tokenbucket_params_t p = {
        .max_tokens = tb->max_tokens,
        .tokens_per_fill = tb->tokens_per_fill ? tb->tokens_per_fill->value : 1,
        .fill_interval_ns =
            (uint64_t)(tb->fill_interval->seconds > 0 ? tb->fill_interval->seconds : 0) *
                1000000000ull +
            (uint64_t)(tb->fill_interval->nanos > 0 ? tb->fill_interval->nanos : 0),
    };
    char id[DP_TOKENBUCKET_MAX_ID + 1];
    const char *prefix = m->stat_prefix ? m->stat_prefix : "";
    int n;
    if (m->share_key && m->share_key[0]) {
        n = snprintf(id, sizeof(id), "network.local_ratelimit|share|%s", m->share_key);
    } else if (fc->name && fc->name[0]) {
        n = snprintf(id, sizeof(id), "network.local_ratelimit|%s|%s|%zu|%s", l->name, fc->name,
                     index, prefix);
    } else {
        /* an unnamed chain: the digest of its match, unique within the listener */
        uint64_t h = 14695981039346656037ull;
        if (fc->filter_chain_match) {
            size_t len = protobuf_c_message_get_packed_size(&fc->filter_chain_match->base);
            uint8_t *buf = malloc(len ? len : 1);
            if (buf == NULL)
                abort();
            protobuf_c_message_pack(&fc->filter_chain_match->base, buf);
            for (size_t i = 0; i < len; i++)
                h = (h ^ buf[i]) * 1099511628211ull;
            free(buf);
        }
        n = snprintf(id, sizeof(id), "network.local_ratelimit|%s|#%016llx|%zu|%s", l->name,
                     (unsigned long long)h, index, prefix);
    }
    bool enabled = m->runtime_enabled == NULL || m->runtime_enabled->default_value == NULL ||
                   m->runtime_enabled->default_value->value;
    if (n < 0 || (size_t)n >= sizeof(id) ||
        (rl = dp_net_ratelimit_new(s, stats, prefix, id, &p, enabled)) == NULL)
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "listener %s: local_ratelimit: %s", l->name,
               n < 0 || (size_t)n >= sizeof(id) ? "names too long"
               : errno == ENOSPC                ? "too many rate-limit buckets"
                                                : "invalid token_bucket (fill_interval >= 50ms)");
out:
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return rl;
}

static bool is_tls_socket(const Envoy__Config__Core__V3__TransportSocket *ts)
{
    if (ts == NULL)
        return false;
    if (ts->config_type_case ==
            ENVOY__CONFIG__CORE__V3__TRANSPORT_SOCKET__CONFIG_TYPE_TYPED_CONFIG &&
        ts->typed_config && ts->typed_config->type_url)
        return strstr(ts->typed_config->type_url, "RawBuffer") == NULL;
    return ts->name == NULL || strcmp(ts->name, "envoy.transport_sockets.raw_buffer") != 0;
}

static void build_chain(dp_snapshot_t *s, dp_stats_t *stats,
                        const Envoy__Config__Listener__V3__Listener *l,
                        const Envoy__Config__Listener__V3__FilterChain *fc, dp_filter_chain_t *out)
{
    dp_arena_t *arena = s->arena;
    out->name = dp_arena_strdup(arena, fc->name ? fc->name : "");
    build_match(arena, fc->filter_chain_match, &out->match, NULL);
    out->tls = is_tls_socket(fc->transport_socket);
    if (fc->n_filters == 0)
        return;
    /* Before the terminal filter: local_ratelimit filters run (one that cannot be built makes
     * the chain refuse its connections rather than pass them unlimited); the others are passed
     * over. */
    const dp_net_ratelimit_t **rl_tail = &out->rate_limit;
    for (size_t i = 0; i + 1 < fc->n_filters; i++) {
        const Envoy__Config__Listener__V3__Filter *nf = fc->filters[i];
        if (nf->config_type_case != ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG ||
            nf->typed_config == NULL || nf->typed_config->type_url == NULL ||
            strcmp(nf->typed_config->type_url, NET_LRL_TYPE) != 0)
            continue;
        dp_net_ratelimit_t *rl = build_net_ratelimit(s, stats, l, fc, i, nf->typed_config);
        if (rl == NULL)
            return;
        *rl_tail = rl;
        rl_tail = &rl->next;
    }
    /* The last network filter terminates the chain. */
    const Envoy__Config__Listener__V3__Filter *f = fc->filters[fc->n_filters - 1];
    if (f->config_type_case != ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG ||
        f->typed_config == NULL || f->typed_config->type_url == NULL) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_DEBUG, "listener %s: chain '%s': filter %s has no config",
               l->name, out->name, f->name);
        return;
    }
    const char *url = f->typed_config->type_url;
    if (strcmp(url, TCP_PROXY_TYPE) == 0)
        out->tcp = build_tcp_proxy(arena, f->typed_config);
    else if (strcmp(url, HCM_TYPE) == 0)
        out->hcm = build_hcm(
            s, stats, f->typed_config,
            l->traffic_direction == ENVOY__CONFIG__CORE__V3__TRAFFIC_DIRECTION__INBOUND, l->name);
    else
        DP_LOG(DP_LOG_CONFIG, DP_LOG_DEBUG, "listener %s: chain '%s': %s is not run", l->name,
               out->name, f->name);
}

/* ---- listener filters ---- */

static bool build_pred(dp_arena_t *arena,
                       const Envoy__Config__Listener__V3__ListenerFilterChainMatchPredicate *p,
                       dp_lf_pred_t *out, unsigned depth)
{
    memset(out, 0, sizeof(*out));
    if (p == NULL || depth > PRED_MAX_DEPTH)
        return false;
    const Envoy__Config__Listener__V3__ListenerFilterChainMatchPredicate__MatchSet *set = NULL;
    switch (p->rule_case) {
    case ENVOY__CONFIG__LISTENER__V3__LISTENER_FILTER_CHAIN_MATCH_PREDICATE__RULE_ANY_MATCH:
        out->kind = DP_LF_PRED_ANY;
        return true;
    case ENVOY__CONFIG__LISTENER__V3__LISTENER_FILTER_CHAIN_MATCH_PREDICATE__RULE_DESTINATION_PORT_RANGE:
        out->kind = DP_LF_PRED_DST_PORT_RANGE;
        out->port_start =
            p->destination_port_range->start < 0 ? 0 : (uint32_t)p->destination_port_range->start;
        out->port_end =
            p->destination_port_range->end < 0 ? 0 : (uint32_t)p->destination_port_range->end;
        return true;
    case ENVOY__CONFIG__LISTENER__V3__LISTENER_FILTER_CHAIN_MATCH_PREDICATE__RULE_NOT_MATCH: {
        out->kind = DP_LF_PRED_NOT;
        dp_lf_pred_t *r = dp_arena_alloc(arena, sizeof(*r));
        out->rules = r;
        out->n_rules = 1;
        return build_pred(arena, p->not_match, r, depth + 1);
    }
    case ENVOY__CONFIG__LISTENER__V3__LISTENER_FILTER_CHAIN_MATCH_PREDICATE__RULE_OR_MATCH:
        out->kind = DP_LF_PRED_OR;
        set = p->or_match;
        break;
    case ENVOY__CONFIG__LISTENER__V3__LISTENER_FILTER_CHAIN_MATCH_PREDICATE__RULE_AND_MATCH:
        out->kind = DP_LF_PRED_AND;
        set = p->and_match;
        break;
    default:
        return false;
    }
    if (set == NULL || set->n_rules == 0)
        return true;
    dp_lf_pred_t *r = dp_arena_alloc(arena, set->n_rules * sizeof(*r));
    for (size_t i = 0; i < set->n_rules; i++) {
        if (!build_pred(arena, set->rules[i], &r[i], depth + 1))
            return false;
    }
    out->rules = r;
    out->n_rules = set->n_rules;
    return true;
}

static bool filter_kind(const Envoy__Config__Listener__V3__ListenerFilter *f,
                        dp_listener_filter_kind_t *kind)
{
    static const struct {
        const char *name, *type;
        dp_listener_filter_kind_t kind;
    } known[] = {
        {"envoy.filters.listener.original_dst",
         TYPE_PREFIX "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
         DP_LF_ORIGINAL_DST},
        {"envoy.filters.listener.tls_inspector",
         TYPE_PREFIX "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
         DP_LF_TLS_INSPECTOR},
        {"envoy.filters.listener.http_inspector",
         TYPE_PREFIX "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
         DP_LF_HTTP_INSPECTOR},
    };
    const char *type =
        f->config_type_case ==
                    ENVOY__CONFIG__LISTENER__V3__LISTENER_FILTER__CONFIG_TYPE_TYPED_CONFIG &&
                f->typed_config
            ? f->typed_config->type_url
            : NULL;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if ((type && strcmp(type, known[i].type) == 0) ||
            (type == NULL && f->name && strcmp(f->name, known[i].name) == 0)) {
            *kind = known[i].kind;
            return true;
        }
    }
    return false;
}

static void build_filters(dp_arena_t *arena, const Envoy__Config__Listener__V3__Listener *l,
                          dp_listener_t *dl)
{
    if (l->n_listener_filters == 0)
        return;
    dp_listener_filter_t *v = dp_arena_alloc(arena, l->n_listener_filters * sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < l->n_listener_filters; i++) {
        const Envoy__Config__Listener__V3__ListenerFilter *f = l->listener_filters[i];
        if (!filter_kind(f, &v[n].kind)) {
            DP_LOG(DP_LOG_CONFIG, DP_LOG_DEBUG, "listener %s: listener filter %s is not run",
                   l->name, f->name);
            continue;
        }
        if (f->filter_disabled) {
            dp_lf_pred_t *p = dp_arena_alloc(arena, sizeof(*p));
            if (build_pred(arena, f->filter_disabled, p, 0)) {
                v[n].disabled = p;
            } else {
                /* A predicate skiff cannot evaluate: the filter runs everywhere. */
                DP_LOG(DP_LOG_CONFIG, DP_LOG_DEBUG,
                       "listener %s: %s: filter_disabled not understood, ignored", l->name,
                       f->name);
            }
        }
        n++;
    }
    dl->filters = v;
    dl->n_filters = n;
}

/* ---- the listener ---- */

dp_listener_t *xds_listener_build(dp_snapshot_t *s, dp_stats_t *stats,
                                  const Envoy__Config__Listener__V3__Listener *l)
{
    char *err = NULL;
    if (xds_listener_check(l, &err) < 0) {
        /* Resource validation should have refused it; the first of the duplicates wins. */
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "listener %s: %s", l->name, err ? err : "invalid");
        free(err);
    }
    dp_listener_t *dl = dp_snapshot_add_listener(s);
    dl->name = dp_arena_strdup(s->arena, l->name);
    dl->inbound = l->traffic_direction == ENVOY__CONFIG__CORE__V3__TRAFFIC_DIRECTION__INBOUND;
    listener_addr(l->address, &dl->addr);
    dl->bind_to_port = l->bind_to_port == NULL || l->bind_to_port->value;
    dl->use_original_dst = l->use_original_dst && l->use_original_dst->value;
    dl->transparent = l->transparent && l->transparent->value;
    dl->ignore_global_conn_limit = l->ignore_global_conn_limit;
    /* Envoy's listener_filters_timeout defaults to 15 s; 0s disables it. */
    dl->filters_timeout_ms =
        l->listener_filters_timeout ? duration_ms(l->listener_filters_timeout) : 15 * 1000;
    dl->continue_on_filters_timeout = l->continue_on_listener_filters_timeout;
    build_filters(s->arena, l, dl);
    if (l->n_filter_chains) {
        dp_filter_chain_t *v = dp_arena_alloc(s->arena, l->n_filter_chains * sizeof(*v));
        for (size_t i = 0; i < l->n_filter_chains; i++)
            build_chain(s, stats, l, l->filter_chains[i], &v[i]);
        dl->chains = v;
        dl->n_chains = l->n_filter_chains;
    }
    if (l->default_filter_chain) {
        dp_filter_chain_t *d = dp_arena_alloc(s->arena, sizeof(*d));
        build_chain(s, stats, l, l->default_filter_chain, d);
        dl->default_chain = d;
    }
    if (stats && l->address &&
        l->address->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS) {
        /* Envoy names listener stats by address: listener.0.0.0.0_15001.downstream_cx_total */
        const Envoy__Config__Core__V3__SocketAddress *sa = l->address->socket_address;
        char name[512];
#define LISTENER_STAT(suffix) \
    (snprintf(name, sizeof(name), "listener.%s_%u." suffix, sa->address, sa->port_value), name)
        dl->cx_total = dp_stats_counter(stats, LISTENER_STAT("downstream_cx_total"));
        dl->cx_active = dp_stats_gauge(stats, LISTENER_STAT("downstream_cx_active"));
        dl->no_filter_chain_match = dp_stats_counter(stats, LISTENER_STAT("no_filter_chain_match"));
        dl->cx_tls_unserved = dp_stats_counter(stats, LISTENER_STAT("downstream_cx_tls_unserved"));
        dl->cx_global_overflow =
            dp_stats_counter(stats, LISTENER_STAT("downstream_global_cx_overflow"));
#undef LISTENER_STAT
    }
    return dl;
}

int xds_listener_check(const Envoy__Config__Listener__V3__Listener *l, char **reterr_msg)
{
    if (l->n_filter_chains < 1)
        return 0;
    dp_arena_t *arena = dp_arena_new();
    dp_fc_match_t *m = dp_arena_alloc(arena, l->n_filter_chains * sizeof(*m));
    int rc = 0;
    *reterr_msg = NULL;
    for (size_t i = 0; i < l->n_filter_chains && rc == 0; i++) {
        bool bad = false;
        build_match(arena, l->filter_chains[i]->filter_chain_match, &m[i], &bad);
        if (bad) {
            rc = -EINVAL;
            if (asprintf(reterr_msg,
                         "filter_chains[%zu].filter_chain_match: a prefix range is "
                         "not an IP prefix",
                         i) < 0)
                *reterr_msg = NULL;
        }
        for (size_t j = 0; j < i && rc == 0; j++) {
            if (!dp_fc_match_overlaps(&m[j], &m[i]))
                continue;
            rc = -EINVAL;
            if (asprintf(reterr_msg,
                         "filter_chains[%zu] and filter_chains[%zu]: multiple filter chains "
                         "with the same matching rules are defined",
                         j, i) < 0)
                *reterr_msg = NULL;
        }
    }
    dp_arena_free(arena);
    return rc;
}
