#include "xds/snapshot_build.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "dataplane/breaker.h"
#include "dataplane/health_check.h"
#include "dataplane/lb.h"
#include "dataplane/log.h"
#include "dataplane/outlier.h"
#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb-c.h"
#include "xds/listener_build.h"
#include "xds/pbwire.h"
#include "xds/route_build.h"

/* Fills addr from an Envoy address: an IP socket_address or a pipe. Returns false for names
 * that need resolving (STRICT_DNS and LOGICAL_DNS hosts, resolved by the data plane). */
static bool to_addr(dp_arena_t *arena, const Envoy__Config__Core__V3__Address *a, dp_addr_t *out)
{
    memset(out, 0, sizeof(*out));
    if (a == NULL)
        return false;
    if (a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS) {
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
    if (a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_PIPE) {
        if (strlen(a->pipe->path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            return false;
        out->sa.sa_family = AF_UNIX;
        out->unix_path = dp_arena_strdup(arena, a->pipe->path);
        return true;
    }
    return false;
}

static dp_cluster_type_t cluster_type(const Envoy__Config__Cluster__V3__Cluster *c)
{
    if (c->cluster_discovery_type_case !=
        ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_DISCOVERY_TYPE_TYPE)
        return DP_CLUSTER_STATIC;
    switch (c->type) {
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STRICT_DNS:
        return DP_CLUSTER_STRICT_DNS;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__LOGICAL_DNS:
        return DP_CLUSTER_LOGICAL_DNS;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__EDS:
        return DP_CLUSTER_EDS;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__ORIGINAL_DST:
        return DP_CLUSTER_ORIGINAL_DST;
    default:
        return DP_CLUSTER_STATIC;
    }
}

static dp_lb_policy_t lb_policy(const Envoy__Config__Cluster__V3__Cluster *c)
{
    switch (c->lb_policy) {
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__LEAST_REQUEST:
        return DP_LB_LEAST_REQUEST;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__RANDOM:
        return DP_LB_RANDOM;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__RING_HASH:
        return DP_LB_RING_HASH;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__MAGLEV:
        return DP_LB_MAGLEV;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__CLUSTER_PROVIDED:
        return DP_LB_CLUSTER_PROVIDED;
    default:
        return DP_LB_ROUND_ROBIN;
    }
}

typedef struct build_ctx {
    dp_snapshot_t *snap;
    dp_stats_t *stats;
} build_ctx_t;

static uint64_t duration_ms(const Google__Protobuf__Duration *d)
{
    if (d == NULL || d->seconds < 0)
        return 0;
    return (uint64_t)d->seconds * 1000 + (uint64_t)(d->nanos > 0 ? d->nanos : 0) / 1000000;
}

/* Envoy's cluster.<name>.* stats for HTTP traffic (the pools' and the router's). */
static void cluster_stats(dp_stats_t *st, const char *obs, dp_cluster_t *dc)
{
    char name[512];
#define CSTAT_C(field, suffix)                                \
    (snprintf(name, sizeof(name), "cluster.%s." suffix, obs), \
     dc->field = dp_stats_counter(st, name))
#define CSTAT_G(field, suffix) \
    (snprintf(name, sizeof(name), "cluster.%s." suffix, obs), dc->field = dp_stats_gauge(st, name))
    CSTAT_C(cx_total, "upstream_cx_total");
    CSTAT_C(cx_connect_fail, "upstream_cx_connect_fail");
    CSTAT_G(cx_active, "upstream_cx_active");
    CSTAT_C(stats.rq_total, "upstream_rq_total");
    CSTAT_G(stats.rq_active, "upstream_rq_active");
    CSTAT_C(stats.rq_pending_total, "upstream_rq_pending_total");
    CSTAT_G(stats.rq_pending_active, "upstream_rq_pending_active");
    CSTAT_C(stats.rq_pending_overflow, "upstream_rq_pending_overflow");
    CSTAT_C(stats.rq_completed, "upstream_rq_completed");
    CSTAT_C(stats.rq_2xx, "upstream_rq_2xx");
    CSTAT_C(stats.rq_3xx, "upstream_rq_3xx");
    CSTAT_C(stats.rq_4xx, "upstream_rq_4xx");
    CSTAT_C(stats.rq_5xx, "upstream_rq_5xx");
    CSTAT_C(stats.rq_timeout, "upstream_rq_timeout");
    CSTAT_C(stats.rq_retry, "upstream_rq_retry");
    CSTAT_C(stats.cx_http1_total, "upstream_cx_http1_total");
    CSTAT_C(stats.cx_http2_total, "upstream_cx_http2_total");
    CSTAT_C(stats.cx_connect_timeout, "upstream_cx_connect_timeout");
    CSTAT_C(stats.cx_destroy, "upstream_cx_destroy");
    CSTAT_C(stats.cx_idle_timeout, "upstream_cx_idle_timeout");
    CSTAT_C(stats.cx_none_healthy, "upstream_cx_none_healthy");
    CSTAT_C(stats.cx_overflow, "upstream_cx_overflow");
    CSTAT_C(stats.cx_pool_overflow, "upstream_cx_pool_overflow");
    CSTAT_C(stats.rq_retry_overflow, "upstream_rq_retry_overflow");
    CSTAT_C(stats.cx_rx_bytes_total, "upstream_cx_rx_bytes_total");
    CSTAT_C(stats.cx_tx_bytes_total, "upstream_cx_tx_bytes_total");
#undef CSTAT_C
#undef CSTAT_G
}

/* circuit_breakers.thresholds of the DEFAULT and HIGH priorities (the first entry of each
 * priority counts, as in Envoy; an unset field keeps Envoy's default), and the shared counts
 * from the registry (dataplane/breaker.h), held until the snapshot goes. */
static void circuit_breakers(const Envoy__Config__Cluster__V3__Cluster *c, dp_cluster_t *dc,
                             dp_snapshot_t *s, dp_stats_t *stats, const char *obs)
{
    dp_circuit_breakers_t th[DP_BR_NPRIO];
    bool seen[DP_BR_NPRIO] = {false, false};
    th[DP_BR_DEFAULT] = th[DP_BR_HIGH] = dp_circuit_breakers_default();
    for (size_t i = 0; c->circuit_breakers && i < c->circuit_breakers->n_thresholds; i++) {
        const Envoy__Config__Cluster__V3__CircuitBreakers__Thresholds *t =
            c->circuit_breakers->thresholds[i];
        int p = t->priority == ENVOY__CONFIG__CORE__V3__ROUTING_PRIORITY__HIGH ? DP_BR_HIGH
                                                                               : DP_BR_DEFAULT;
        if (seen[p])
            continue;
        seen[p] = true;
        dp_circuit_breakers_t *cb = &th[p];
        if (t->max_connections)
            cb->max_connections = t->max_connections->value;
        if (t->max_pending_requests)
            cb->max_pending_requests = t->max_pending_requests->value;
        if (t->max_requests)
            cb->max_requests = t->max_requests->value;
        if (t->max_retries)
            cb->max_retries = t->max_retries->value;
        if (t->max_connection_pools)
            cb->max_connection_pools = t->max_connection_pools->value;
        cb->track_remaining = t->track_remaining;
        if (t->retry_budget) {
            cb->has_retry_budget = true;
            cb->retry_budget_percent =
                t->retry_budget->budget_percent ? t->retry_budget->budget_percent->value : 20.0;
            if (!(cb->retry_budget_percent >= 0)) /* NaN too */
                cb->retry_budget_percent = 0;
            if (cb->retry_budget_percent > 100)
                cb->retry_budget_percent = 100;
            cb->min_retry_concurrency = t->retry_budget->min_retry_concurrency
                                            ? t->retry_budget->min_retry_concurrency->value
                                            : 3;
        }
    }
    dc->circuit_breakers = th[DP_BR_DEFAULT];
    dc->circuit_breakers_high = th[DP_BR_HIGH];
    dc->breakers = dp_breakers_get(c->name, obs, stats, th);
    dp_arena_add_cleanup(s->arena, dp_breakers_unref_cb, dc->breakers);
}

/* cluster.outlier_detection with Envoy's defaults for what is unset. */
static void outlier_config(const Envoy__Config__Cluster__V3__OutlierDetection *o,
                           dp_outlier_config_t *oc)
{
    *oc = dp_outlier_config_default();
#define OD_U32(field) \
    if (o->field)     \
        oc->field = o->field->value;
#define OD_MS(field) \
    if (o->field)    \
        oc->field##_ms = duration_ms(o->field);
    OD_U32(consecutive_5xx);
    OD_U32(consecutive_gateway_failure);
    OD_U32(consecutive_local_origin_failure);
    oc->split_external_local_origin_errors = o->split_external_local_origin_errors;
    OD_MS(interval);
    OD_MS(base_ejection_time);
    OD_MS(max_ejection_time);
    OD_MS(max_ejection_time_jitter);
    OD_U32(max_ejection_percent);
    OD_U32(always_eject_one_host);
    OD_U32(enforcing_consecutive_5xx);
    OD_U32(enforcing_consecutive_gateway_failure);
    OD_U32(enforcing_consecutive_local_origin_failure);
    OD_U32(enforcing_success_rate);
    OD_U32(enforcing_local_origin_success_rate);
    OD_U32(enforcing_failure_percentage);
    OD_U32(enforcing_failure_percentage_local_origin);
    OD_U32(success_rate_minimum_hosts);
    OD_U32(success_rate_request_volume);
    OD_U32(success_rate_stdev_factor);
    OD_U32(failure_percentage_threshold);
    OD_U32(failure_percentage_minimum_hosts);
    OD_U32(failure_percentage_request_volume);
#undef OD_U32
#undef OD_MS
    if (oc->interval_ms == 0)
        oc->interval_ms = 10000;
    /* Envoy refuses a max_ejection_time below base_ejection_time; the base wins here. */
    if (oc->max_ejection_time_ms < oc->base_ejection_time_ms)
        oc->max_ejection_time_ms = oc->base_ejection_time_ms;
}

/* The cluster's endpoints' references to their outlier state, dropped with the snapshot. */
typedef struct od_hosts {
    dp_endpoint_t *eps;
    size_t n;
} od_hosts_t;

static void od_hosts_cleanup(void *p)
{
    od_hosts_t *h = p;
    dp_outlier_hosts_unref(h->eps, h->n);
}

/* outlier_detection: the shared detector, and each endpoint's host state in it. */
static void outlier_detection(const Envoy__Config__Cluster__V3__Cluster *c, dp_cluster_t *dc,
                              dp_endpoint_t *eps, size_t n, dp_snapshot_t *s, dp_stats_t *stats,
                              const char *obs)
{
    if (c->outlier_detection == NULL)
        return;
    dc->has_outlier_detection = true;
    outlier_config(c->outlier_detection, &dc->outlier_detection);
    /* ORIGINAL_DST and DNS hosts are the pools' own: no outlier state for them. */
    if (dc->type == DP_CLUSTER_ORIGINAL_DST || dc->type == DP_CLUSTER_STRICT_DNS ||
        dc->type == DP_CLUSTER_LOGICAL_DNS)
        return;
    dc->outlier = dp_outlier_get(c->name, obs, stats, &dc->outlier_detection);
    /* Cleanups run newest first: the hosts' references go before the detector's. */
    dp_arena_add_cleanup(s->arena, dp_outlier_unref_cb, dc->outlier);
    dp_outlier_set_hosts(dc->outlier, eps, n);
    od_hosts_t *h = dp_arena_alloc(s->arena, sizeof(*h));
    h->eps = eps;
    h->n = n;
    dp_arena_add_cleanup(s->arena, od_hosts_cleanup, h);
}

/* upstream_connection_options.tcp_keepalive */
static void tcp_keepalive(const Envoy__Config__Cluster__V3__Cluster *c, dp_cluster_t *dc)
{
    const Envoy__Config__Core__V3__TcpKeepalive *k =
        c->upstream_connection_options ? c->upstream_connection_options->tcp_keepalive : NULL;
    if (k == NULL)
        return;
    dc->tcp_keepalive = true;
    dc->keepalive_probes = k->keepalive_probes ? k->keepalive_probes->value : 0;
    dc->keepalive_time_s = k->keepalive_time ? k->keepalive_time->value : 0;
    dc->keepalive_interval_s = k->keepalive_interval ? k->keepalive_interval->value : 0;
}

static void common_http_options(const Envoy__Config__Core__V3__HttpProtocolOptions *o,
                                dp_cluster_t *dc)
{
    if (o == NULL)
        return;
    if (o->idle_timeout)
        dc->idle_timeout_ms = duration_ms(o->idle_timeout);
    if (o->max_connection_duration)
        dc->max_connection_duration_ms = duration_ms(o->max_connection_duration);
    if (o->max_requests_per_connection)
        dc->max_requests_per_connection = o->max_requests_per_connection->value;
}

static void h2_options(const Envoy__Config__Core__V3__Http2ProtocolOptions *o, dp_cluster_t *dc)
{
    if (o && o->max_concurrent_streams)
        dc->h2_max_concurrent_streams = o->max_concurrent_streams->value;
}

#define HTTP_PROTOCOL_OPTIONS_KEY "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#define HTTP_PROTOCOL_OPTIONS_URL "type.googleapis.com/" HTTP_PROTOCOL_OPTIONS_KEY

/* The upstream HTTP protocol and its connection options: the legacy cluster fields first, then
 * typed_extension_protocol_options' HttpProtocolOptions, which Envoy prefers. */
static void http_protocol(const Envoy__Config__Cluster__V3__Cluster *c, dp_cluster_t *dc)
{
    dc->proto = DP_CLUSTER_PROTO_HTTP1;
    dc->idle_timeout_ms = 3600 * 1000; /* Envoy's default idle_timeout: 1 h */
    if (c->http2_protocol_options) {
        dc->proto = DP_CLUSTER_PROTO_HTTP2;
        h2_options(c->http2_protocol_options, dc);
    }
    if (c->protocol_selection ==
        ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_PROTOCOL_SELECTION__USE_DOWNSTREAM_PROTOCOL)
        dc->proto = DP_CLUSTER_PROTO_DOWNSTREAM;
    common_http_options(c->common_http_protocol_options, dc);
    if (c->max_requests_per_connection)
        dc->max_requests_per_connection = c->max_requests_per_connection->value;
    for (size_t i = 0; i < c->n_typed_extension_protocol_options; i++) {
        const Envoy__Config__Cluster__V3__Cluster__TypedExtensionProtocolOptionsEntry *e =
            c->typed_extension_protocol_options[i];
        if (strcmp(e->key, HTTP_PROTOCOL_OPTIONS_KEY) != 0 || e->value == NULL ||
            strcmp(e->value->type_url, HTTP_PROTOCOL_OPTIONS_URL) != 0)
            continue;
        const char *why;
        Envoy__Extensions__Upstreams__Http__V3__HttpProtocolOptions *o = (void *)xds_pb_unpack(
            &envoy__extensions__upstreams__http__v3__http_protocol_options__descriptor,
            e->value->value.data, e->value->value.len, &why);
        if (o == NULL)
            continue;
        common_http_options(o->common_http_protocol_options, dc);
        switch (o->upstream_protocol_options_case) {
        case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__UPSTREAM_PROTOCOL_OPTIONS_EXPLICIT_HTTP_CONFIG:
            if (o->explicit_http_config->protocol_config_case ==
                ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__EXPLICIT_HTTP_CONFIG__PROTOCOL_CONFIG_HTTP2_PROTOCOL_OPTIONS) {
                dc->proto = DP_CLUSTER_PROTO_HTTP2;
                h2_options(o->explicit_http_config->http2_protocol_options, dc);
            } else {
                dc->proto = DP_CLUSTER_PROTO_HTTP1;
            }
            break;
        case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__UPSTREAM_PROTOCOL_OPTIONS_USE_DOWNSTREAM_PROTOCOL_CONFIG:
            dc->proto = DP_CLUSTER_PROTO_DOWNSTREAM;
            h2_options(o->use_downstream_protocol_config->http2_protocol_options, dc);
            break;
        case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__UPSTREAM_PROTOCOL_OPTIONS_AUTO_CONFIG:
            /* ALPN picks the protocol over TLS; without TLS (all there is for now) Envoy's
             * auto_config speaks HTTP/1.1. */
            dc->proto = DP_CLUSTER_PROTO_HTTP1;
            break;
        default:
            break;
        }
        protobuf_c_message_free_unpacked(&o->base, NULL);
    }
}

/* upstream_bind_config.source_address: an IP address (a name is not resolved). */
static void bind_config(const Envoy__Config__Cluster__V3__Cluster *c, dp_cluster_t *dc)
{
    const Envoy__Config__Core__V3__SocketAddress *sa =
        c->upstream_bind_config ? c->upstream_bind_config->source_address : NULL;
    if (sa == NULL || sa->address == NULL)
        return;
    dp_addr_t *a = &dc->source_addr;
    uint16_t port = sa->port_specifier_case ==
                            ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PORT_SPECIFIER_PORT_VALUE
                        ? (uint16_t)sa->port_value
                        : 0;
    if (inet_pton(AF_INET, sa->address, &a->in.sin_addr) == 1) {
        a->in.sin_family = AF_INET;
        a->in.sin_port = htons(port);
        dc->has_source_addr = true;
    } else if (inet_pton(AF_INET6, sa->address, &a->in6.sin6_addr) == 1) {
        a->in6.sin6_family = AF_INET6;
        a->in6.sin6_port = htons(port);
        dc->has_source_addr = true;
    }
}

static bool is_prime(uint64_t n)
{
    if (n < 2)
        return false;
    for (uint64_t d = 2; d * d <= n; d++) {
        if (n % d == 0)
            return false;
    }
    return true;
}

/* The load-balancing settings (dataplane/lb.h): ring_hash_lb_config, maglev_lb_config,
 * least_request_lb_config, common_lb_config's healthy_panic_threshold and
 * locality_weighted_lb_config, and the load assignment's policy. A value Envoy's validation
 * refuses is replaced by Envoy's default, with a warning. */
static void lb_settings(const Envoy__Config__Cluster__V3__Cluster *c,
                        const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla,
                        dp_cluster_t *dc)
{
    if (c->lb_config_case == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_CONFIG_RING_HASH_LB_CONFIG &&
        c->ring_hash_lb_config) {
        const Envoy__Config__Cluster__V3__Cluster__RingHashLbConfig *r = c->ring_hash_lb_config;
        uint64_t min = r->minimum_ring_size ? r->minimum_ring_size->value : DP_LB_RING_MIN_DEFAULT;
        uint64_t max = r->maximum_ring_size ? r->maximum_ring_size->value : DP_LB_RING_MAX_DEFAULT;
        if (min > DP_LB_RING_MAX_LIMIT || max > DP_LB_RING_MAX_LIMIT || min > max || min == 0) {
            DP_LOG(DP_LOG_UPSTREAM, DP_LOG_WARN,
                   "cluster '%s': ring hash minimum_ring_size %llu / maximum_ring_size %llu "
                   "refused, using 1024 / 8388608",
                   c->name, (unsigned long long)min, (unsigned long long)max);
            min = DP_LB_RING_MIN_DEFAULT;
            max = DP_LB_RING_MAX_DEFAULT;
        }
        dc->lb_ring_min = min;
        dc->lb_ring_max = max;
        dc->lb_ring_murmur =
            r->hash_function ==
            ENVOY__CONFIG__CLUSTER__V3__CLUSTER__RING_HASH_LB_CONFIG__HASH_FUNCTION__MURMUR_HASH_2;
    }
    if (c->lb_config_case == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_CONFIG_MAGLEV_LB_CONFIG &&
        c->maglev_lb_config && c->maglev_lb_config->table_size) {
        uint64_t size = c->maglev_lb_config->table_size->value;
        if (size > DP_LB_MAGLEV_SIZE_LIMIT || !is_prime(size)) {
            DP_LOG(DP_LOG_UPSTREAM, DP_LOG_WARN,
                   "cluster '%s': maglev table_size %llu is not a prime up to 5000011, using "
                   "65537",
                   c->name, (unsigned long long)size);
            size = DP_LB_MAGLEV_SIZE_DEFAULT;
        }
        dc->lb_maglev_size = size;
    }
    if (c->lb_config_case ==
            ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_CONFIG_LEAST_REQUEST_LB_CONFIG &&
        c->least_request_lb_config) {
        const Envoy__Config__Cluster__V3__Cluster__LeastRequestLbConfig *l =
            c->least_request_lb_config;
        if (l->choice_count) {
            uint32_t n = l->choice_count->value;
            if (n < 2) {
                DP_LOG(DP_LOG_UPSTREAM, DP_LOG_WARN,
                       "cluster '%s': least request choice_count %u refused, using 2", c->name, n);
                n = DP_LB_CHOICE_COUNT_DEFAULT;
            }
            dc->lb_choice_count = n;
        }
        if (l->active_request_bias) {
            /* the runtime key is not read: skiff has no runtime layer */
            dc->lb_has_bias = true;
            dc->lb_active_request_bias = l->active_request_bias->default_value;
        }
    }
    const Envoy__Config__Cluster__V3__Cluster__CommonLbConfig *common = c->common_lb_config;
    if (common && common->healthy_panic_threshold) {
        double v = common->healthy_panic_threshold->value;
        /* PROTOBUF_PERCENT_TO_ROUNDED_INTEGER_OR_DEFAULT(.., 100, 50) */
        dc->lb_has_panic_threshold = true;
        dc->lb_panic_threshold = v <= 0 ? 0 : v >= 100 ? 100 : (uint32_t)(v + 0.5);
    }
    dc->lb_locality_weighted =
        common &&
        common->locality_config_specifier_case ==
            ENVOY__CONFIG__CLUSTER__V3__CLUSTER__COMMON_LB_CONFIG__LOCALITY_CONFIG_SPECIFIER_LOCALITY_WEIGHTED_LB_CONFIG;
    const Envoy__Config__Endpoint__V3__ClusterLoadAssignment__Policy *pol =
        cla ? cla->policy : NULL;
    if (pol && pol->overprovisioning_factor)
        dc->lb_overprovisioning = pol->overprovisioning_factor->value;
    dc->lb_weighted_priority_health = pol && pol->weighted_priority_health;
}

/* The locality of a LocalityLbEndpoints into endpoint e (strings shared by its endpoints). */
typedef struct loc_strs {
    const char *region, *zone, *sub_zone;
    uint32_t weight;
} loc_strs_t;

static loc_strs_t loc_strs(dp_arena_t *arena,
                           const Envoy__Config__Endpoint__V3__LocalityLbEndpoints *lle)
{
    loc_strs_t l = {NULL, NULL, NULL, 0};
    const Envoy__Config__Core__V3__Locality *loc = lle->locality;
    if (loc) {
        l.region = loc->region && loc->region[0] ? dp_arena_strdup(arena, loc->region) : NULL;
        l.zone = loc->zone && loc->zone[0] ? dp_arena_strdup(arena, loc->zone) : NULL;
        l.sub_zone =
            loc->sub_zone && loc->sub_zone[0] ? dp_arena_strdup(arena, loc->sub_zone) : NULL;
    }
    l.weight = lle->load_balancing_weight ? lle->load_balancing_weight->value : 0;
    return l;
}

static void set_locality(dp_endpoint_t *e, const loc_strs_t *l)
{
    e->region = l->region;
    e->zone = l->zone;
    e->sub_zone = l->sub_zone;
    e->locality_weight = l->weight;
}

/* STRICT_DNS / LOGICAL_DNS: the hosts of load_assignment by name and port. */
static void dns_hosts(dp_arena_t *arena, const Envoy__Config__Cluster__V3__Cluster *c,
                      const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla,
                      dp_cluster_t *dc)
{
    /* Envoy's default dns_refresh_rate is 5 s. */
    dc->dns_refresh_ms = c->dns_refresh_rate ? duration_ms(c->dns_refresh_rate) : 5000;
    if (dc->dns_refresh_ms == 0)
        dc->dns_refresh_ms = 5000;
    dc->respect_dns_ttl = c->respect_dns_ttl;
    dc->dns_family =
        c->dns_lookup_family <= 4 ? (dp_dns_family_t)c->dns_lookup_family : DP_DNS_AUTO;
    size_t n = 0;
    for (size_t e = 0; cla && e < cla->n_endpoints; e++)
        n += cla->endpoints[e]->n_lb_endpoints;
    dp_endpoint_t *hosts = n ? dp_arena_alloc(arena, n * sizeof(*hosts)) : NULL;
    size_t k = 0;
    for (size_t e = 0; cla && e < cla->n_endpoints; e++) {
        const Envoy__Config__Endpoint__V3__LocalityLbEndpoints *lle = cla->endpoints[e];
        const loc_strs_t ls = loc_strs(arena, lle);
        for (size_t i = 0; i < lle->n_lb_endpoints; i++) {
            const Envoy__Config__Endpoint__V3__LbEndpoint *lb = lle->lb_endpoints[i];
            if (lb->host_identifier_case !=
                    ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT ||
                lb->endpoint->address == NULL ||
                lb->endpoint->address->address_case !=
                    ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS)
                continue;
            const Envoy__Config__Core__V3__SocketAddress *sa =
                lb->endpoint->address->socket_address;
            if (sa->address == NULL || sa->address[0] == '\0')
                continue;
            hosts[k].hostname = dp_arena_strdup(arena, sa->address);
            hosts[k].port = (uint16_t)sa->port_value;
            hosts[k].weight = lb->load_balancing_weight ? lb->load_balancing_weight->value : 1;
            hosts[k].priority = lle->priority;
            hosts[k].health = (dp_health_t)lb->health_status;
            set_locality(&hosts[k], &ls);
            k++;
        }
    }
    dc->dns_hosts = hosts;
    dc->n_dns_hosts = k;
}

/* ---- health_checks (the first HTTP or TCP one; dataplane/health_check.h) ---- */

/* Appends a HealthCheck.Payload (text: hex, as in Envoy; binary: raw) to buf[*len..cap).
 * Returns false when it is not valid hex or does not fit. */
static bool hc_payload(const Envoy__Config__Core__V3__HealthCheck__Payload *pl, uint8_t *buf,
                       size_t *len, size_t cap)
{
    if (pl == NULL)
        return true;
    if (pl->payload_case == ENVOY__CONFIG__CORE__V3__HEALTH_CHECK__PAYLOAD__PAYLOAD_BINARY) {
        if (pl->binary.len > cap - *len)
            return false;
        if (pl->binary.len)
            memcpy(buf + *len, pl->binary.data, pl->binary.len);
        *len += pl->binary.len;
        return true;
    }
    if (pl->payload_case != ENVOY__CONFIG__CORE__V3__HEALTH_CHECK__PAYLOAD__PAYLOAD_TEXT)
        return true;
    size_t n = strlen(pl->text);
    if (n % 2 || n / 2 > cap - *len)
        return false;
    for (size_t i = 0; i < n; i += 2) {
        if (!isxdigit((unsigned char)pl->text[i]) || !isxdigit((unsigned char)pl->text[i + 1]))
            return false;
        char hex[3] = {pl->text[i], pl->text[i + 1], 0};
        buf[(*len)++] = (uint8_t)strtoul(hex, NULL, 16);
    }
    return true;
}

static void health_checks(dp_snapshot_t *s, dp_stats_t *stats, const char *obs,
                          const Envoy__Config__Cluster__V3__Cluster *c, dp_cluster_t *dc)
{
    const Envoy__Config__Core__V3__HealthCheck *h = NULL;
    for (size_t i = 0; i < c->n_health_checks && h == NULL; i++) {
        int k = c->health_checks[i]->health_checker_case;
        if (k == ENVOY__CONFIG__CORE__V3__HEALTH_CHECK__HEALTH_CHECKER_HTTP_HEALTH_CHECK ||
            k == ENVOY__CONFIG__CORE__V3__HEALTH_CHECK__HEALTH_CHECKER_TCP_HEALTH_CHECK)
            h = c->health_checks[i];
    }
    if (h == NULL)
        return;
    dp_health_check_t hc = {
        .timeout_ms = duration_ms(h->timeout),
        .interval_ms = duration_ms(h->interval),
        .unhealthy_interval_ms = duration_ms(h->unhealthy_interval),
        .unhealthy_edge_interval_ms = duration_ms(h->unhealthy_edge_interval),
        .healthy_edge_interval_ms = duration_ms(h->healthy_edge_interval),
        /* Envoy's default no_traffic_interval is 60 s */
        .no_traffic_interval_ms =
            h->no_traffic_interval ? duration_ms(h->no_traffic_interval) : 60000,
        .no_traffic_healthy_interval_ms = duration_ms(h->no_traffic_healthy_interval),
        .interval_jitter_ms = duration_ms(h->interval_jitter),
        .interval_jitter_percent = h->interval_jitter_percent,
        .initial_jitter_ms = duration_ms(h->initial_jitter),
        .unhealthy_threshold = h->unhealthy_threshold ? h->unhealthy_threshold->value : 0,
        .healthy_threshold = h->healthy_threshold ? h->healthy_threshold->value : 0,
    };
    dp_hc_range_t ranges[16];
    dp_hc_header_t headers[32];
    uint8_t send[DP_HC_MAX_PAYLOAD], recv[DP_HC_MAX_PAYLOAD];
    if (h->health_checker_case ==
        ENVOY__CONFIG__CORE__V3__HEALTH_CHECK__HEALTH_CHECKER_HTTP_HEALTH_CHECK) {
        const Envoy__Config__Core__V3__HealthCheck__HttpHealthCheck *hh = h->http_health_check;
        hc.kind = DP_HC_HTTP;
        hc.path = hh->path;
        hc.host = hh->host;
        for (size_t i = 0; i < hh->n_expected_statuses && hc.n_expected < 16; i++) {
            ranges[hc.n_expected].start = hh->expected_statuses[i]->start;
            ranges[hc.n_expected++].end = hh->expected_statuses[i]->end;
        }
        hc.expected = ranges;
        for (size_t i = 0; i < hh->n_request_headers_to_add && hc.n_headers < 32; i++) {
            const Envoy__Config__Core__V3__HeaderValue *hv = hh->request_headers_to_add[i]->header;
            if (hv == NULL || hv->key == NULL || hv->key[0] == '\0' || strpbrk(hv->key, "\r\n:") ||
                strpbrk(hv->value ? hv->value : "", "\r\n"))
                continue;
            headers[hc.n_headers].name = hv->key;
            headers[hc.n_headers++].value = hv->value ? hv->value : "";
        }
        hc.headers = headers;
        if (hc.path && strpbrk(hc.path, "\r\n "))
            hc.path = NULL; /* an unusable path: the check is left out below */
        if (hc.path == NULL || (hc.host && strpbrk(hc.host, "\r\n"))) {
            DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "cluster %s: http_health_check: bad path or host",
                   c->name);
            return;
        }
    } else {
        const Envoy__Config__Core__V3__HealthCheck__TcpHealthCheck *th = h->tcp_health_check;
        hc.kind = DP_HC_TCP;
        bool ok = hc_payload(th->send, send, &hc.send_len, sizeof(send));
        for (size_t i = 0; ok && i < th->n_receive; i++)
            ok = hc_payload(th->receive[i], recv, &hc.receive_len, sizeof(recv));
        if (!ok) {
            DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "cluster %s: tcp_health_check: bad payload",
                   c->name);
            return;
        }
        hc.send = send;
        hc.receive = recv;
    }
    dc->health =
        dp_health_cluster_new(s, stats, dc->name, obs, &hc, dc->endpoints, dc->n_endpoints);
    if (dc->health == NULL)
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN,
               "cluster %s: health check left out (timeout, interval and thresholds must be set)",
               c->name);
}

static void add_cluster(void *ud, const Envoy__Config__Cluster__V3__Cluster *c,
                        const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla,
                        bool added_via_api)
{
    build_ctx_t *ctx = ud;
    dp_snapshot_t *s = ctx->snap;
    dp_cluster_t *dc = dp_snapshot_add_cluster(s);
    const char *obs = c->alt_stat_name[0] ? c->alt_stat_name : c->name;
    if (ctx->stats) {
        cluster_stats(ctx->stats, obs, dc);
        char prefix[512];
        snprintf(prefix, sizeof(prefix), "cluster.%s.upstream_rq_", obs);
        dc->stats.rq_code = dp_code_counters_new(s->arena, ctx->stats, prefix);
    }
    dc->name = dp_arena_strdup(s->arena, c->name);
    dc->type = cluster_type(c);
    dc->lb_policy = lb_policy(c);
    /* Envoy's default connect_timeout is 5 s. */
    dc->connect_timeout_ms = c->connect_timeout ? duration_ms(c->connect_timeout) : 5000;
    circuit_breakers(c, dc, s, ctx->stats, obs);
    lb_settings(c, cla, dc);
    http_protocol(c, dc);
    bind_config(c, dc);
    tcp_keepalive(c, dc);
    if (dc->type == DP_CLUSTER_ORIGINAL_DST) {
        dc->lb_policy = DP_LB_CLUSTER_PROVIDED;
        const Envoy__Config__Cluster__V3__Cluster__OriginalDstLbConfig *od =
            c->lb_config_case ==
                    ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_CONFIG_ORIGINAL_DST_LB_CONFIG
                ? c->original_dst_lb_config
                : NULL;
        dc->original_dst_use_header = od && od->use_http_header;
        dc->original_dst_header = od && od->http_header_name && od->http_header_name[0]
                                      ? dp_arena_strdup(s->arena, od->http_header_name)
                                      : "x-envoy-original-dst-host";
    }
    /* DNS clusters also keep the hosts given as IP literals in endpoints (what tcp_proxy
     * uses); their pools use what each worker resolves. */
    if (dc->type == DP_CLUSTER_STRICT_DNS || dc->type == DP_CLUSTER_LOGICAL_DNS)
        dns_hosts(s->arena, c, cla, dc);
    size_t n = 0;
    for (size_t e = 0; cla && e < cla->n_endpoints; e++)
        n += cla->endpoints[e]->n_lb_endpoints;
    dp_endpoint_t *eps = n ? dp_arena_alloc(s->arena, n * sizeof(*eps)) : NULL;
    size_t k = 0;
    for (size_t e = 0; cla && e < cla->n_endpoints; e++) {
        const Envoy__Config__Endpoint__V3__LocalityLbEndpoints *lle = cla->endpoints[e];
        const loc_strs_t ls = loc_strs(s->arena, lle);
        for (size_t i = 0; i < lle->n_lb_endpoints; i++) {
            const Envoy__Config__Endpoint__V3__LbEndpoint *lb = lle->lb_endpoints[i];
            if (lb->host_identifier_case !=
                    ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT ||
                !to_addr(s->arena, lb->endpoint->address, &eps[k].addr))
                continue;
            eps[k].weight = lb->load_balancing_weight ? lb->load_balancing_weight->value : 1;
            eps[k].priority = lle->priority;
            eps[k].health = (dp_health_t)lb->health_status;
            set_locality(&eps[k], &ls);
            k++;
        }
    }
    dc->endpoints = eps;
    dc->n_endpoints = k;
    health_checks(s, ctx->stats, c->alt_stat_name[0] ? c->alt_stat_name : c->name, c, dc);
    outlier_detection(c, dc, eps, k, s, ctx->stats, obs);
}

/* An RDS route configuration; one Envoy would refuse is left out (the listeners naming it then
 * answer 404 until a good version arrives). */
static void add_route(void *ud, const Envoy__Config__Route__V3__RouteConfiguration *rc)
{
    build_ctx_t *ctx = ud;
    char *err = NULL;
    dp_route_config_t *r = xds_route_build(ctx->snap, rc, &err);
    if (r == NULL) {
        DP_LOG(DP_LOG_RDS, DP_LOG_WARN, "route config '%s' left out: %s", rc->name,
               err ? err : "out of memory");
        free(err);
        return;
    }
    dp_snapshot_add_route(ctx->snap, r);
}

static void add_listener(void *ud, const Envoy__Config__Listener__V3__Listener *l)
{
    build_ctx_t *ctx = ud;
    xds_listener_build(ctx->snap, ctx->stats, l);
}

dp_snapshot_t *xds_snapshot_build(const Envoy__Config__Bootstrap__V3__Bootstrap *bootstrap,
                                  const xds_client_t *client, dp_stats_t *stats,
                                  uint64_t generation, char **reterr_msg)
{
    dp_snapshot_t *s = dp_snapshot_new(generation);
    s->stats = stats;
    build_ctx_t ctx = {.snap = s, .stats = stats};
    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr = bootstrap->static_resources;
    for (size_t i = 0; sr && i < sr->n_clusters; i++)
        add_cluster(&ctx, sr->clusters[i], sr->clusters[i]->load_assignment, false);
    /* Route configurations first: connection managers look theirs up by name. */
    if (client)
        xds_client_foreach_route(client, add_route, &ctx);
    for (size_t i = 0; sr && i < sr->n_listeners; i++)
        add_listener(&ctx, sr->listeners[i]);
    if (client) {
        xds_client_foreach_cluster(client, add_cluster, &ctx);
        xds_client_foreach_listener(client, add_listener, &ctx);
    }
    if (dp_snapshot_seal(s) < 0) {
        /* CDS may not reuse a static cluster's name (Envoy refuses it too). */
        if (asprintf(reterr_msg, "a cluster name is both static and from CDS") < 0)
            *reterr_msg = NULL;
        return dp_snapshot_unref(s);
    }
    return s;
}

void xds_snapshot_mark_drained(dp_snapshot_t *s, xds_drained_t which)
{
    for (size_t i = 0; i < s->n_listeners; i++) {
        dp_listener_t *l = &s->listeners[i];
        l->drained = which == XDS_DRAINED_ALL || (which == XDS_DRAINED_INBOUND && l->inbound);
    }
}
