/* Cluster translation (xds_snapshot_build's add_cluster) from JSON bootstraps: the upstream
 * protocol and connection options of HttpProtocolOptions (typed_extension_protocol_options)
 * and the legacy fields, upstream_bind_config, circuit breakers, DNS hosts and options,
 * ORIGINAL_DST, the per-cluster HTTP stats with alt_stat_name, the shared breakers and
 * outlier detector a DestinationRule's connectionPool and outlierDetection give, and
 * upstream_connection_options.tcp_keepalive. */
#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/breaker.h"
#include "dataplane/outlier.h"
#include "dataplane/upstream.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"
#include "protos/registry.h"
#include "tests/unit/check_run.h"
#include "xds/pbjson.h"
#include "xds/pbwire.h"
#include "xds/snapshot_build.h"

static dp_snapshot_t *build(const char *json, dp_stats_t *st)
{
    pbjson_opts_t o = {.resolve = pb_registry_find_type_url};
    ProtobufCMessage *m = NULL;
    pbjson_diag_t *d = pbjson_diag_new();
    int rc = pbjson_parse(json, strlen(json), "test.json",
                          &envoy__config__bootstrap__v3__bootstrap__descriptor, &o, &m, d);
    ck_assert_msg(rc == 0, "parse: %s", pbjson_diag_at(d, 0, NULL));
    pbjson_diag_free(d);
    char *err = NULL;
    dp_snapshot_t *s = xds_snapshot_build((void *)m, NULL, st, 1, &err);
    ck_assert_msg(s != NULL, "build: %s", err ? err : "?");
    protobuf_c_message_free_unpacked(m, NULL);
    return s;
}

static const char *const bootstrap =
    "{\"static_resources\": {\"clusters\": ["
    /* Istio's inbound cluster: bound to 127.0.0.6, HTTP/1.1 explicitly, common options */
    "{\"name\": \"inbound|8080||\", \"type\": \"ORIGINAL_DST\", \"lb_policy\": "
    "\"CLUSTER_PROVIDED\","
    " \"connect_timeout\": \"10s\","
    " \"upstream_bind_config\": {\"source_address\": {\"address\": \"127.0.0.6\", \"port_value\": "
    "0}},"
    " \"circuit_breakers\": {\"thresholds\": [{\"max_connections\": 4294967295,"
    "   \"max_pending_requests\": 7, \"max_requests\": 8, \"max_retries\": 9}]},"
    " \"typed_extension_protocol_options\": "
    "{\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\":"
    "   {\"@type\": \"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\","
    "    \"common_http_protocol_options\": {\"idle_timeout\": \"300s\","
    "      \"max_requests_per_connection\": 100, \"max_connection_duration\": \"60s\"},"
    "    \"explicit_http_config\": {\"http_protocol_options\": {}}}}},"
    /* HTTP/2 with a stream limit; alt_stat_name names its stats */
    "{\"name\": \"outbound|9090||grpc.svc\", \"alt_stat_name\": \"grpc_alt\", \"type\": \"EDS\","
    " \"eds_cluster_config\": {\"service_name\": \"x\"},"
    " \"typed_extension_protocol_options\": "
    "{\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\":"
    "   {\"@type\": \"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\","
    "    \"explicit_http_config\": {\"http2_protocol_options\": {\"max_concurrent_streams\": "
    "33}}}}},"
    "{\"name\": \"downstream\", \"type\": \"STATIC\","
    " \"typed_extension_protocol_options\": "
    "{\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\":"
    "   {\"@type\": \"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\","
    "    \"use_downstream_protocol_config\": {}}}},"
    "{\"name\": \"auto\", \"type\": \"STATIC\","
    " \"typed_extension_protocol_options\": "
    "{\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\":"
    "   {\"@type\": \"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\","
    "    \"auto_config\": {}}}},"
    "{\"name\": \"legacy_h2\", \"type\": \"STATIC\", \"http2_protocol_options\": {},"
    " \"load_assignment\": {\"cluster_name\": \"legacy_h2\", \"endpoints\": [{\"lb_endpoints\": ["
    "   {\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"127.0.0.1\", "
    "\"port_value\": 81}}},"
    "    \"load_balancing_weight\": 3, \"health_status\": \"DRAINING\"}]}]}},"
    "{\"name\": \"dns\", \"type\": \"STRICT_DNS\", \"dns_lookup_family\": \"V4_ONLY\","
    " \"dns_refresh_rate\": \"2s\", \"respect_dns_ttl\": true,"
    " \"load_assignment\": {\"cluster_name\": \"dns\", \"endpoints\": [{\"priority\": 1, "
    "\"lb_endpoints\": ["
    "   {\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"example.svc\", "
    "\"port_value\": 443}}}},"
    "   {\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"other.svc\", "
    "\"port_value\": 80}}}}]}]}},"
    "{\"name\": \"logical\", \"type\": \"LOGICAL_DNS\","
    " \"load_assignment\": {\"cluster_name\": \"logical\", \"endpoints\": [{\"lb_endpoints\": ["
    "   {\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"one.svc\", "
    "\"port_value\": 8443}}}}]}]}},"
    "{\"name\": \"odst_header\", \"type\": \"ORIGINAL_DST\","
    " \"original_dst_lb_config\": {\"use_http_header\": true}}"
    "]}}";

START_TEST(test_http_protocol_options_and_bind)
{
    dp_stats_t *st = dp_stats_new();
    dp_snapshot_t *s = build(bootstrap, st);

    const dp_cluster_t *in = dp_snapshot_find_cluster(s, "inbound|8080||");
    ck_assert_ptr_nonnull(in);
    ck_assert_int_eq(in->type, DP_CLUSTER_ORIGINAL_DST);
    ck_assert_int_eq(in->lb_policy, DP_LB_CLUSTER_PROVIDED);
    ck_assert_uint_eq(in->connect_timeout_ms, 10000);
    ck_assert(in->has_source_addr);
    ck_assert_int_eq(in->source_addr.sa.sa_family, AF_INET);
    ck_assert_uint_eq(ntohl(in->source_addr.in.sin_addr.s_addr), 0x7f000006);
    ck_assert_uint_eq(ntohs(in->source_addr.in.sin_port), 0);
    ck_assert_int_eq(in->proto, DP_CLUSTER_PROTO_HTTP1);
    ck_assert_int_eq(dp_upstream_proto_for(in, DP_HTTP_2), DP_UPSTREAM_HTTP1);
    ck_assert_uint_eq(in->idle_timeout_ms, 300000);
    ck_assert_uint_eq(in->max_requests_per_connection, 100);
    ck_assert_uint_eq(in->max_connection_duration_ms, 60000);
    ck_assert_uint_eq(in->circuit_breakers.max_connections, 4294967295u);
    ck_assert_uint_eq(in->circuit_breakers.max_pending_requests, 7);
    ck_assert_uint_eq(in->circuit_breakers.max_requests, 8);
    ck_assert_uint_eq(in->circuit_breakers.max_retries, 9);
    ck_assert(!in->original_dst_use_header);
    ck_assert_str_eq(in->stats.rq_total->base.name, "cluster.inbound|8080||.upstream_rq_total");

    const dp_cluster_t *g = dp_snapshot_find_cluster(s, "outbound|9090||grpc.svc");
    ck_assert_int_eq(g->proto, DP_CLUSTER_PROTO_HTTP2);
    ck_assert_int_eq(dp_upstream_proto_for(g, DP_HTTP_11), DP_UPSTREAM_HTTP2);
    ck_assert_uint_eq(g->h2_max_concurrent_streams, 33);
    ck_assert_uint_eq(g->idle_timeout_ms, 3600 * 1000); /* Envoy's default */
    ck_assert_uint_eq(g->circuit_breakers.max_connections, 1024);
    ck_assert_uint_eq(g->circuit_breakers.max_pending_requests, 1024);
    ck_assert_uint_eq(g->circuit_breakers.max_retries, 3);
    ck_assert(!g->has_source_addr);
    ck_assert_str_eq(g->stats.rq_pending_overflow->base.name,
                     "cluster.grpc_alt.upstream_rq_pending_overflow");
    ck_assert_str_eq(g->stats.rq_active->base.name, "cluster.grpc_alt.upstream_rq_active");
    ck_assert_str_eq(g->cx_total->base.name, "cluster.grpc_alt.upstream_cx_total");
    ck_assert_ptr_nonnull(g->stats.cx_tx_bytes_total);

    const dp_cluster_t *d = dp_snapshot_find_cluster(s, "downstream");
    ck_assert_int_eq(d->proto, DP_CLUSTER_PROTO_DOWNSTREAM);
    ck_assert_int_eq(dp_upstream_proto_for(d, DP_HTTP_2), DP_UPSTREAM_HTTP2);
    ck_assert_int_eq(dp_upstream_proto_for(d, DP_HTTP_11), DP_UPSTREAM_HTTP1);
    ck_assert_int_eq(dp_upstream_proto_for(d, DP_HTTP_10), DP_UPSTREAM_HTTP1);
    ck_assert_int_eq(dp_snapshot_find_cluster(s, "auto")->proto, DP_CLUSTER_PROTO_HTTP1);

    const dp_cluster_t *l = dp_snapshot_find_cluster(s, "legacy_h2");
    ck_assert_int_eq(l->proto, DP_CLUSTER_PROTO_HTTP2);
    ck_assert_uint_eq(l->n_endpoints, 1);
    ck_assert_uint_eq(l->endpoints[0].weight, 3);
    ck_assert_int_eq(l->endpoints[0].health, DP_HEALTH_DRAINING);
    ck_assert_ptr_null(l->endpoints[0].hostname);

    dp_snapshot_unref(s);
    dp_stats_free(st);
}
END_TEST

START_TEST(test_dns_and_original_dst)
{
    dp_snapshot_t *s = build(bootstrap, NULL);
    const dp_cluster_t *d = dp_snapshot_find_cluster(s, "dns");
    ck_assert_int_eq(d->type, DP_CLUSTER_STRICT_DNS);
    ck_assert_int_eq(d->dns_family, DP_DNS_V4_ONLY);
    ck_assert_uint_eq(d->dns_refresh_ms, 2000);
    ck_assert(d->respect_dns_ttl);
    ck_assert_uint_eq(d->n_endpoints, 0);
    ck_assert_uint_eq(d->n_dns_hosts, 2);
    ck_assert_str_eq(d->dns_hosts[0].hostname, "example.svc");
    ck_assert_uint_eq(d->dns_hosts[0].port, 443);
    ck_assert_uint_eq(d->dns_hosts[0].priority, 1);
    ck_assert_uint_eq(d->dns_hosts[0].weight, 1);
    ck_assert_str_eq(d->dns_hosts[1].hostname, "other.svc");
    ck_assert_ptr_null(d->stats.rq_total); /* built without a stats store */

    const dp_cluster_t *l = dp_snapshot_find_cluster(s, "logical");
    ck_assert_int_eq(l->type, DP_CLUSTER_LOGICAL_DNS);
    ck_assert_int_eq(l->dns_family, DP_DNS_AUTO);
    ck_assert_uint_eq(l->dns_refresh_ms, 5000); /* Envoy's default */
    ck_assert_uint_eq(l->n_dns_hosts, 1);
    ck_assert_uint_eq(l->dns_hosts[0].port, 8443);

    const dp_cluster_t *o = dp_snapshot_find_cluster(s, "odst_header");
    ck_assert_int_eq(o->type, DP_CLUSTER_ORIGINAL_DST);
    ck_assert_int_eq(o->lb_policy, DP_LB_CLUSTER_PROVIDED);
    ck_assert(o->original_dst_use_header);
    ck_assert_str_eq(o->original_dst_header, "x-envoy-original-dst-host");
    ck_assert_uint_eq(o->connect_timeout_ms, 5000);
    dp_snapshot_unref(s);
}
END_TEST

/* The clusters of a real Istio sidecar dump (the xds fuzz corpus' cluster seeds). */
START_TEST(test_real_istio_clusters)
{
    const char *dir = getenv("CORPUS");
    ck_assert_ptr_nonnull(dir);
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    Envoy__Config__Cluster__V3__Cluster *cl[128];
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL && n < 128;) {
        if (e->d_name[0] != '0' || e->d_name[1] != '-')
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        ck_assert_ptr_nonnull(f);
        static uint8_t buf[1 << 20];
        size_t len = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        if (len < 1 || buf[0] % 4 != 0)
            continue;
        const char *why;
        cl[n] = (void *)xds_pb_unpack(&envoy__config__cluster__v3__cluster__descriptor, buf + 1,
                                      len - 1, &why);
        ck_assert_msg(cl[n] != NULL, "%s: %s", e->d_name, why);
        n++;
    }
    closedir(d);
    ck_assert_uint_ge(n, 15);
    Envoy__Config__Bootstrap__V3__Bootstrap b = ENVOY__CONFIG__BOOTSTRAP__V3__BOOTSTRAP__INIT;
    Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources sr =
        ENVOY__CONFIG__BOOTSTRAP__V3__BOOTSTRAP__STATIC_RESOURCES__INIT;
    b.static_resources = &sr;
    sr.clusters = cl;
    sr.n_clusters = n;
    char *err = NULL;
    dp_snapshot_t *s = xds_snapshot_build(&b, NULL, NULL, 1, &err);
    ck_assert_msg(s != NULL, "%s", err ? err : "?");
    size_t h2 = 0, bound = 0;
    for (size_t i = 0; i < s->n_clusters; i++) {
        const dp_cluster_t *c = &s->clusters[i];
        if (getenv("VERBOSE"))
            printf("%s type=%d proto=%d idle=%llu src=%d maxconn=%u\n", c->name, c->type, c->proto,
                   (unsigned long long)c->idle_timeout_ms, c->has_source_addr,
                   c->circuit_breakers.max_connections);
        h2 += c->proto == DP_CLUSTER_PROTO_HTTP2;
        bound += c->has_source_addr;
    }
    /* Istio binds its inbound cluster to 127.0.0.6 */
    const dp_cluster_t *in = dp_snapshot_find_cluster(s, "inbound|8080||");
    ck_assert_ptr_nonnull(in);
    ck_assert(in->has_source_addr);
    ck_assert_uint_eq(ntohl(in->source_addr.in.sin_addr.s_addr), 0x7f000006);
    ck_assert_int_eq(in->type, DP_CLUSTER_ORIGINAL_DST);
    ck_assert_uint_ge(h2, 3);
    ck_assert_uint_ge(bound, 2);
    /* gRPC ports speak HTTP/2, HTTP ports the downstream's protocol */
    ck_assert_int_eq(dp_snapshot_find_cluster(s, "xds-grpc")->proto, DP_CLUSTER_PROTO_HTTP2);
    ck_assert_uint_eq(dp_snapshot_find_cluster(s, "xds-grpc")->circuit_breakers.max_connections,
                      100000);
    const dp_cluster_t *hp = dp_snapshot_find_cluster(
        s, "outbound|8080||curl-test.vanilla-playground.svc.cluster.local");
    ck_assert_ptr_nonnull(hp);
    ck_assert_int_eq(hp->proto, DP_CLUSTER_PROTO_DOWNSTREAM);
    ck_assert_uint_eq(hp->circuit_breakers.max_connections, 4294967295u);
    /* Istio's default thresholds, with remaining_* tracked */
    ck_assert(hp->circuit_breakers.track_remaining);
    ck_assert_uint_eq(hp->circuit_breakers.max_retries, 4294967295u);
    ck_assert_ptr_nonnull(hp->breakers);
    ck_assert_uint_eq(dp_breakers_max(hp->breakers, DP_BR_DEFAULT, DP_BR_PENDING), 4294967295u);
    const dp_cluster_t *ip = dp_snapshot_find_cluster(s, "InboundPassthroughClusterIpv4");
    ck_assert(ip->has_source_addr);
    ck_assert_uint_eq(ip->idle_timeout_ms, 300000);
    dp_snapshot_unref(s);
    for (size_t i = 0; i < n; i++)
        protobuf_c_message_free_unpacked(&cl[i]->base, NULL);
}
END_TEST

/* bookinfo's DestinationRule of Istio's circuit-breaking task, as istiod translates it
 * (cluster_traffic_policy.go): connectionPool {tcp.maxConnections 1, http.http1MaxPendingRequests
 * 1, http.maxRequestsPerConnection 1, tcp.tcpKeepalive}, outlierDetection {consecutive5xxErrors
 * 1, interval 1s, baseEjectionTime 3m, maxEjectionPercent 100}. */
static const char *const dr_bootstrap =
    "{\"static_resources\": {\"clusters\": ["
    "{\"name\": \"outbound|8000||httpbin.default.svc.cluster.local\", \"type\": \"STATIC\","
    " \"circuit_breakers\": {\"thresholds\": ["
    "   {\"max_connections\": 1, \"max_pending_requests\": 1, \"max_requests\": 4294967295,"
    "    \"max_retries\": 4294967295, \"track_remaining\": true},"
    "   {\"priority\": \"HIGH\", \"max_requests\": 7, \"max_connection_pools\": 9,"
    "    \"retry_budget\": {\"budget_percent\": {\"value\": 25}, \"min_retry_concurrency\": 4}}]},"
    " \"outlier_detection\": {\"consecutive_5xx\": 1, \"interval\": \"1s\","
    "   \"base_ejection_time\": \"180s\", \"max_ejection_percent\": 100,"
    "   \"enforcing_consecutive_5xx\": 100, \"enforcing_success_rate\": 0},"
    " \"upstream_connection_options\": {\"tcp_keepalive\": {\"keepalive_probes\": 3,"
    "   \"keepalive_time\": 60, \"keepalive_interval\": 10}},"
    " \"typed_extension_protocol_options\": "
    "{\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\":"
    "   {\"@type\": \"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\","
    "    \"common_http_protocol_options\": {\"max_requests_per_connection\": 1},"
    "    \"use_downstream_protocol_config\": {\"http_protocol_options\": {},"
    "      \"http2_protocol_options\": {}}}},"
    " \"load_assignment\": {\"cluster_name\": \"x\", \"endpoints\": [{\"lb_endpoints\": ["
    "   {\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"127.0.0.1\","
    "    \"port_value\": 81}}}},"
    "   {\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"127.0.0.1\","
    "    \"port_value\": 82}}}}]}]}},"
    "{\"name\": \"plain\", \"type\": \"STATIC\"}"
    "]}}";

START_TEST(test_destination_rule_resilience)
{
    dp_stats_t *st = dp_stats_new();
    dp_snapshot_t *s = build(dr_bootstrap, st);
    const char *name = "outbound|8000||httpbin.default.svc.cluster.local";
    const dp_cluster_t *c = dp_snapshot_find_cluster(s, name);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(c->circuit_breakers.max_connections, 1);
    ck_assert_uint_eq(c->circuit_breakers.max_pending_requests, 1);
    ck_assert_uint_eq(c->circuit_breakers.max_requests, 4294967295u);
    ck_assert_uint_eq(c->circuit_breakers.max_connection_pools, UINT32_MAX);
    ck_assert(c->circuit_breakers.track_remaining);
    ck_assert_uint_eq(c->circuit_breakers_high.max_requests, 7);
    ck_assert_uint_eq(c->circuit_breakers_high.max_connection_pools, 9);
    ck_assert_uint_eq(c->circuit_breakers_high.max_connections, 1024);
    ck_assert(!c->circuit_breakers_high.track_remaining);
    ck_assert(!c->circuit_breakers.has_retry_budget);
    ck_assert(c->circuit_breakers_high.has_retry_budget);
    ck_assert(c->circuit_breakers_high.retry_budget_percent == 25.0);
    ck_assert_uint_eq(c->circuit_breakers_high.min_retry_concurrency, 4);
    ck_assert_uint_eq(dp_breakers_max(c->breakers, DP_BR_HIGH, DP_BR_RETRY), 4);
    ck_assert_uint_eq(c->max_requests_per_connection, 1);
    ck_assert_uint_eq(dp_breakers_max(c->breakers, DP_BR_DEFAULT, DP_BR_CX), 1);
    ck_assert_uint_eq(dp_breakers_max(c->breakers, DP_BR_HIGH, DP_BR_RQ), 7);
    /* the gauges, under the cluster's stat name */
    char g[256];
    snprintf(g, sizeof(g), "cluster.%s.circuit_breakers.default.remaining_pending", name);
    ck_assert_uint_eq(dp_gauge_value(dp_stats_gauge(st, g)), 1);
    snprintf(g, sizeof(g), "cluster.%s.circuit_breakers.default.cx_open", name);
    ck_assert_uint_eq(dp_gauge_value(dp_stats_gauge(st, g)), 0);
    snprintf(g, sizeof(g), "cluster.%s.circuit_breakers.high.rq_open", name);
    ck_assert_uint_eq(dp_gauge_value(dp_stats_gauge(st, g)), 0);
    /* keepalive */
    ck_assert(c->tcp_keepalive);
    ck_assert_uint_eq(c->keepalive_probes, 3);
    ck_assert_uint_eq(c->keepalive_time_s, 60);
    ck_assert_uint_eq(c->keepalive_interval_s, 10);
    /* outlier detection: Envoy's defaults for what the rule leaves out */
    ck_assert(c->has_outlier_detection);
    const dp_outlier_config_t *o = &c->outlier_detection;
    ck_assert_uint_eq(o->consecutive_5xx, 1);
    ck_assert_uint_eq(o->interval_ms, 1000);
    ck_assert_uint_eq(o->base_ejection_time_ms, 180000);
    ck_assert_uint_eq(o->max_ejection_time_ms, 300000);
    ck_assert_uint_eq(o->max_ejection_percent, 100);
    ck_assert_uint_eq(o->enforcing_consecutive_5xx, 100);
    ck_assert_uint_eq(o->enforcing_success_rate, 0);
    ck_assert_uint_eq(o->consecutive_gateway_failure, 5);
    ck_assert_uint_eq(o->enforcing_consecutive_gateway_failure, 0);
    ck_assert_uint_eq(o->success_rate_stdev_factor, 1900);
    ck_assert_uint_eq(o->failure_percentage_threshold, 85);
    ck_assert(!o->split_external_local_origin_errors);
    ck_assert_ptr_nonnull(c->outlier);
    ck_assert_uint_eq(dp_outlier_host_count(c->outlier), 2);
    ck_assert_ptr_nonnull(c->endpoints[0].outlier);
    ck_assert_ptr_nonnull(c->endpoints[1].outlier);
    snprintf(g, sizeof(g), "cluster.%s.outlier_detection.ejections_active", name);
    dp_gauge_t *active = dp_stats_gauge(st, g);
    /* a rebuild shares the counts and the hosts' state */
    ck_assert(dp_breakers_try(c->breakers, DP_BR_DEFAULT, DP_BR_CX));
    dp_outlier_result(c->endpoints[1].outlier, DP_OUTLIER_EXTERNAL, 503, false, 0);
    ck_assert_uint_eq(dp_gauge_value(active), 1);
    dp_snapshot_t *s2 = build(dr_bootstrap, st);
    const dp_cluster_t *c2 = dp_snapshot_find_cluster(s2, name);
    ck_assert_ptr_eq(c2->breakers, c->breakers);
    ck_assert_ptr_eq(c2->outlier, c->outlier);
    ck_assert_ptr_eq(c2->endpoints[1].outlier, c->endpoints[1].outlier);
    ck_assert(dp_outlier_host_ejected(c2->endpoints[1].outlier));
    ck_assert(!dp_breakers_try(c2->breakers, DP_BR_DEFAULT, DP_BR_CX));
    dp_breakers_release(c2->breakers, DP_BR_DEFAULT, DP_BR_CX);
    /* a cluster without outlier_detection has no detector, and Envoy's default breakers */
    const dp_cluster_t *p = dp_snapshot_find_cluster(s2, "plain");
    ck_assert(!p->has_outlier_detection);
    ck_assert_ptr_null(p->outlier);
    ck_assert(!p->tcp_keepalive);
    ck_assert_ptr_nonnull(p->breakers);
    ck_assert_uint_eq(dp_breakers_max(p->breakers, DP_BR_DEFAULT, DP_BR_RETRY), 3);
    ck_assert_uint_eq(dp_breakers_registry_size(), 2);
    ck_assert_uint_eq(dp_outlier_registry_size(), 1);
    dp_snapshot_unref(s);
    dp_snapshot_unref(s2);
    ck_assert_uint_eq(dp_breakers_registry_size(), 0);
    ck_assert_uint_eq(dp_outlier_registry_size(), 0);
    dp_stats_free(st);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cluster-build");
    TCase *tc = tcase_create("clusters");
    tcase_add_test(tc, test_http_protocol_options_and_bind);
    tcase_add_test(tc, test_dns_and_original_dst);
    tcase_add_test(tc, test_real_istio_clusters);
    tcase_add_test(tc, test_destination_rule_resilience);
    suite_add_tcase(s, tc);
    return check_run(s);
}
