/* Translation of RouteConfiguration and HttpConnectionManager resources (xds/route_build.h,
 * xds/hcm_build.h) from their proto3 JSON form: every route config and connection manager of
 * real Istio config dumps builds, the fields land where the router reads them, Envoy's
 * refusals (duplicate domains, oversized direct responses, bad regexes) name the field, and
 * end-to-end selection on what was built. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/route.h"
#include "dataplane/snapshot.h"
#include "protos/registry.h"
#include "tests/unit/check_run.h"
#include "xds/hcm_build.h"
#include "xds/pbjson.h"
#include "xds/route_build.h"

typedef Envoy__Config__Route__V3__RouteConfiguration pb_rc_t;
typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager
    pb_hcm_t;

static const pbjson_opts_t opts = {.resolve = pb_registry_find_type_url, .allow_unknown = true};

static ProtobufCMessage *parse_json(const json_t *j, const ProtobufCMessageDescriptor *d)
{
    json_t *copy = json_deep_copy(j);
    json_object_del(copy, "@type");
    pbjson_diag_t *diag = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    int rc = pbjson_parse_json(copy, "json", d, &opts, &m, diag);
    ck_assert_msg(rc == 0, "%s", pbjson_diag_size(diag) ? pbjson_diag_at(diag, 0, NULL) : "?");
    pbjson_diag_free(diag);
    json_decref(copy);
    return m;
}

static pb_rc_t *parse_rc(const char *text)
{
    pbjson_diag_t *diag = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    int rc =
        pbjson_parse(text, strlen(text), "test",
                     &envoy__config__route__v3__route_configuration__descriptor, &opts, &m, diag);
    ck_assert_msg(rc == 0, "%s", pbjson_diag_size(diag) ? pbjson_diag_at(diag, 0, NULL) : "?");
    pbjson_diag_free(diag);
    return (pb_rc_t *)m;
}

/* Builds text into s; NULL with *err on a refusal. */
static const dp_route_config_t *build(dp_snapshot_t *s, const char *text, char **err)
{
    pb_rc_t *m = parse_rc(text);
    const dp_route_config_t *rc = xds_route_build(s, m, err);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return rc;
}

static dp_pool_t *pool;

static dp_http_head_t req(const char *method, const char *authority, const char *path)
{
    dp_http_head_t h;
    memset(&h, 0, sizeof(h));
    h.method = (dp_str_t){method, strlen(method)};
    h.authority = (dp_str_t){authority, strlen(authority)};
    h.path = (dp_str_t){path, strlen(path)};
    h.scheme = DP_STR("http");
    return h;
}

/* ---- real dumps ---- */

typedef struct walk {
    dp_snapshot_t *s;
    dp_stats_t *stats;
    size_t n_routes, n_hcm, n_inline;
    const char *file;
} walk_t;

static void build_routes_of(walk_t *w, json_t *dump)
{
    json_t *configs = json_object_get(dump, "configs"), *c;
    size_t i;
    json_array_foreach(configs, i, c)
    {
        const char *t = json_string_value(json_object_get(c, "@type"));
        if (t == NULL || strstr(t, "RoutesConfigDump") == NULL)
            continue;
        static const char *const keys[] = {"static_route_configs", "dynamic_route_configs"};
        for (int k = 0; k < 2; k++) {
            json_t *arr = json_object_get(c, keys[k]), *e;
            size_t j;
            json_array_foreach(arr, j, e)
            {
                json_t *rcj = json_object_get(e, "route_config");
                pb_rc_t *m = (pb_rc_t *)parse_json(
                    rcj, &envoy__config__route__v3__route_configuration__descriptor);
                char *err = NULL;
                dp_route_config_t *rc = xds_route_build(w->s, m, &err);
                ck_assert_msg(rc != NULL, "%s: route config '%s': %s", w->file, m->name,
                              err ? err : "?");
                ck_assert_uint_eq(rc->n_vhosts, m->n_virtual_hosts);
                /* every vhost is reachable through one of its domains */
                for (size_t v = 0; v < rc->n_vhosts; v++) {
                    const dp_vhost_t *vh = &rc->vhosts[v];
                    const char *d = vh->domains[0];
                    char host[512];
                    snprintf(host, sizeof(host), "%s", d);
                    if (d[0] == '*' && d[1])
                        host[0] = 'x';
                    else if (d[0] && d[strlen(d) - 1] == '*')
                        host[strlen(d) - 1] = 'x';
                    ck_assert_ptr_eq(dp_route_vhost(rc, (dp_str_t){host, strlen(host)}), vh);
                }
                if (keys[k][0] == 'd')
                    dp_snapshot_add_route(w->s, rc);
                protobuf_c_message_free_unpacked(&m->base, NULL);
                w->n_routes++;
            }
        }
    }
}

static void build_hcms_in(walk_t *w, json_t *j)
{
    if (json_is_array(j)) {
        size_t i;
        json_t *e;
        json_array_foreach(j, i, e) build_hcms_in(w, e);
        return;
    }
    if (!json_is_object(j))
        return;
    const char *t = json_string_value(json_object_get(j, "@type"));
    if (t && strcmp(t, "type.googleapis.com/envoy.extensions.filters.network."
                       "http_connection_manager.v3.HttpConnectionManager") == 0) {
        pb_hcm_t *m = (pb_hcm_t *)parse_json(
            j,
            &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor);
        char *err = NULL;
        const dp_hcm_config_t *c = xds_hcm_build(w->s, w->stats, m, false, &err);
        ck_assert_msg(c != NULL, "%s: hcm '%s': %s", w->file, m->stat_prefix, err ? err : "?");
        ck_assert_uint_eq(c->n_filters, m->n_http_filters);
        if (m->n_http_filters)
            ck_assert_str_eq(c->filters[c->n_filters - 1].name, "envoy.filters.http.router");
        if (c->rds_name == NULL) {
            ck_assert_ptr_nonnull(c->routes);
            w->n_inline++;
        } else {
            /* RDS from the same dump: found by name (when the dump has route configs) */
            ck_assert_msg(c->routes != NULL || w->n_routes == 0, "%s: rds %s", w->file,
                          c->rds_name);
        }
        ck_assert_ptr_nonnull(c->stats.rq_total);
        protobuf_c_message_free_unpacked(&m->base, NULL);
        w->n_hcm++;
        return;
    }
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) build_hcms_in(w, v);
}

static void dump_file(const char *rel, size_t min_routes, size_t min_hcm)
{
    char path[1024];
    const char *shared = getenv("SHARED");
    snprintf(path, sizeof(path), "%s/istio/%s", shared ? shared : "../shared", rel);
    json_error_t je;
    json_t *dump = json_load_file(path, 0, &je);
    ck_assert_msg(dump != NULL, "%s: %s", path, je.text);
    walk_t w = {.s = dp_snapshot_new(1), .stats = dp_stats_new(), .file = rel};
    build_routes_of(&w, dump);
    build_hcms_in(&w, dump);
    ck_assert_int_eq(dp_snapshot_seal(w.s), 0);
    ck_assert_uint_ge(w.n_routes, min_routes);
    ck_assert_uint_ge(w.n_hcm, min_hcm);
    /* Istio's inbound connection managers carry their route_config inline */
    if (min_hcm)
        ck_assert_uint_gt(w.n_inline, 0);
    json_decref(dump);
    dp_snapshot_unref(w.s);
    dp_stats_free(w.stats);
}

START_TEST(test_istio_dumps_build)
{
    dump_file("01-ossm-sidecar-config-dump/hello-openshift-sidecar-config_dump.json", 15, 17);
    dump_file("01-ossm-sidecar-config-dump/ingressgateway-config_dump.json", 3, 5);
    dump_file("03-istio-testdata-sidecar-listeners-rbac/"
              "describe-testdata-bookinfo-productpage-http_config.json",
              1, 0);
    dump_file("03-istio-testdata-sidecar-listeners-rbac/"
              "authz-testdata-sidecar-listeners-configdump.json",
              0, 20);
    dump_file("02-upstream-istio-1.18-sidecar-config-dump/"
              "geo-hr2-sidecar-config_dump_include_eds.json",
              90, 100);
}
END_TEST

/* Selection on a real outbound route table: Istio's "80" with its short-name domains, the port
 * ignored, the allow_any catch-all. */
static const char *cluster_for(const dp_route_config_t *rc, const char *authority, const char *path)
{
    dp_http_head_t h = req("GET", authority, path);
    const dp_route_t *r = dp_route_select(rc, &h, 0, NULL);
    return r ? dp_route_cluster(r, &h, 0, NULL) : NULL;
}

START_TEST(test_istio_outbound_selection)
{
    char path[1024];
    const char *shared = getenv("SHARED");
    snprintf(path, sizeof(path),
             "%s/istio/01-ossm-sidecar-config-dump/hello-openshift-sidecar-config_dump.json",
             shared ? shared : "../shared");
    json_error_t je;
    json_t *dump = json_load_file(path, 0, &je);
    ck_assert_ptr_nonnull(dump);
    json_t *configs = json_object_get(dump, "configs"), *c, *rcj = NULL;
    size_t i;
    json_array_foreach(configs, i, c)
    {
        json_t *arr = json_object_get(c, "dynamic_route_configs"), *e;
        size_t j;
        json_array_foreach(arr, j, e)
        {
            json_t *r = json_object_get(e, "route_config");
            if (strcmp(json_string_value(json_object_get(r, "name")), "80") == 0)
                rcj = r;
        }
    }
    ck_assert_ptr_nonnull(rcj);
    pb_rc_t *m =
        (pb_rc_t *)parse_json(rcj, &envoy__config__route__v3__route_configuration__descriptor);
    dp_snapshot_t *s = dp_snapshot_new(1);
    char *err = NULL;
    const dp_route_config_t *rc = xds_route_build(s, m, &err);
    ck_assert_msg(rc != NULL, "%s", err);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    json_decref(dump);

    const char *hello = "outbound|8080||hello-openshift.vanilla-playground.svc.cluster.local";
    const char *egress = "outbound|80||istio-egressgateway.istio-system.svc.cluster.local";
    ck_assert_str_eq(cluster_for(rc, "hello-openshift.vanilla-playground.svc.cluster.local", "/"),
                     hello);
    ck_assert_str_eq(
        cluster_for(rc, "Hello-OpenShift.vanilla-playground.svc.cluster.local:80", "/?a=1"), hello);
    /* its only route is the exact path "/": anything else is a 404 (no route) */
    ck_assert_ptr_null(
        cluster_for(rc, "hello-openshift.vanilla-playground.svc.cluster.local", "/x"));
    ck_assert_str_eq(cluster_for(rc, "istio-egressgateway.istio-system:80", "/x"), egress);
    ck_assert_str_eq(cluster_for(rc, "istio-egressgateway.istio-system.svc", "/"), egress);
    ck_assert_str_eq(cluster_for(rc, "172.30.22.177:80", "/y"), egress);
    ck_assert_str_eq(cluster_for(rc, "example.org", "/"), "PassthroughCluster");
    ck_assert_str_eq(cluster_for(rc, "istio-egressgateway", "/"), "PassthroughCluster");
    dp_http_head_t h = req("GET", "example.org", "/");
    const dp_vhost_t *vh;
    const dp_route_t *r = dp_route_select(rc, &h, 0, &vh);
    ck_assert_str_eq(vh->name, "allow_any");
    ck_assert_uint_eq(r->timeout_ms, 0);
    ck_assert_ptr_null(r->retry);
    dp_snapshot_unref(s);
}
END_TEST

/* The VirtualService golden pair: exact "/" + a request header set, Istio's default retry. */
START_TEST(test_istio_route_fields)
{
    dp_snapshot_t *s = dp_snapshot_new(1);
    char *err = NULL;
    const dp_route_config_t *rc = build(
        s,
        "{"
        "\"name\": \"hello:8080\", \"ignore_port_in_host_matching\": true,"
        "\"max_direct_response_body_size_bytes\": 1048576,"
        "\"virtual_hosts\": [{\"name\": \"hello:8080\", \"domains\": [\"*\"],"
        "  \"include_request_attempt_count\": true,"
        "  \"routes\": [{\"name\": \"r1\", \"match\": {\"path\": \"/\", \"case_sensitive\": true},"
        "    \"route\": {\"cluster\": \"outbound|8080||hello\", \"timeout\": \"0s\","
        "      \"max_grpc_timeout\": \"0s\","
        "      \"retry_policy\": {\"retry_on\": \"connect-failure,refused-stream,unavailable,"
        "cancelled,retriable-status-codes\", \"num_retries\": 2,"
        "        \"retry_host_predicate\": [{\"name\": "
        "\"envoy.retry_host_predicates.previous_hosts\"}],"
        "        \"host_selection_retry_max_attempts\": \"5\", \"retriable_status_codes\": [503],"
        "        \"retry_back_off\": {\"base_interval\": \"0.1s\"}},"
        "      \"hash_policy\": [{\"header\": {\"header_name\": \"X-User\"}},"
        "        {\"cookie\": {\"name\": \"sess\", \"ttl\": \"10s\", \"path\": \"/\"}, "
        "\"terminal\": true},"
        "        {\"connection_properties\": {\"source_ip\": true}},"
        "        {\"query_parameter\": {\"name\": \"u\"}}]},"
        "    \"decorator\": {\"operation\": \"hello:8080/\"},"
        "    \"request_headers_to_add\": [{\"header\": {\"key\": \"x-internal-mesh-route\","
        "      \"value\": \"applied\"}, \"append_action\": \"OVERWRITE_IF_EXISTS_OR_ADD\"},"
        "      {\"header\": {\"key\": \"x-pct\", \"value\": \"100%%\"}, \"append\": false}],"
        "    \"typed_per_filter_config\": {\"envoy.filters.http.fault\": {"
        "      \"@type\": \"type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\","
        "      \"abort\": {\"http_status\": 503, \"percentage\": {\"numerator\": 10}}}}},"
        "   {\"match\": {\"prefix\": \"/\"}, \"route\": {\"cluster\": \"dflt\"}}]}]}",
        &err);
    ck_assert_msg(rc != NULL, "%s", err);
    ck_assert(rc->ignore_port_in_host_matching);
    ck_assert_uint_eq(rc->max_direct_response_body_size, 1048576);
    const dp_vhost_t *vh = &rc->vhosts[0];
    ck_assert(vh->include_request_attempt_count);
    const dp_route_t *r = &vh->routes[0];
    ck_assert_str_eq(r->name, "r1");
    ck_assert_int_eq(r->kind, DP_ROUTE_CLUSTER);
    ck_assert_str_eq(r->cluster, "outbound|8080||hello");
    ck_assert_uint_eq(r->timeout_ms, 0);
    ck_assert(r->has_max_grpc_timeout);
    ck_assert_uint_eq(r->max_grpc_timeout_ms, 0);
    ck_assert_ptr_nonnull(r->retry);
    ck_assert_uint_eq(r->retry->num_retries, 2);
    ck_assert_uint_eq(r->retry->retry_on, DP_RETRY_CONNECT_FAILURE | DP_RETRY_REFUSED_STREAM |
                                              DP_RETRY_GRPC_UNAVAILABLE | DP_RETRY_GRPC_CANCELLED |
                                              DP_RETRY_RETRIABLE_STATUS_CODES);
    ck_assert(r->retry->previous_hosts);
    ck_assert_int_eq(r->retry->host_selection_retry_max_attempts, 5);
    ck_assert_uint_eq(r->retry->n_retriable_status_codes, 1);
    ck_assert_uint_eq(r->retry->retriable_status_codes[0], 503);
    ck_assert_uint_eq(r->retry->backoff_base_ms, 100);
    ck_assert_uint_eq(r->retry->backoff_max_ms, 1000);
    ck_assert_uint_eq(r->n_hash, 4);
    ck_assert_int_eq(r->hash[0].kind, DP_HASH_HEADER);
    ck_assert_str_eq(r->hash[0].name, "x-user");
    ck_assert_int_eq(r->hash[1].kind, DP_HASH_COOKIE);
    ck_assert_str_eq(r->hash[1].name, "sess");
    ck_assert_uint_eq(r->hash[1].cookie_ttl_ms, 10000);
    ck_assert_str_eq(r->hash[1].cookie_path, "/");
    ck_assert(r->hash[1].terminal);
    ck_assert_int_eq(r->hash[2].kind, DP_HASH_SOURCE_IP);
    ck_assert_int_eq(r->hash[3].kind, DP_HASH_QUERY_PARAMETER);
    ck_assert_str_eq(r->decorator_operation, "hello:8080/");
    ck_assert_uint_eq(r->req.n_add, 2);
    ck_assert_int_eq(r->req.add[0].action, DP_HDR_OVERWRITE_IF_EXISTS_OR_ADD);
    ck_assert_int_eq(r->req.add[1].action, DP_HDR_OVERWRITE_IF_EXISTS_OR_ADD);
    ck_assert(dp_str_eq(r->req.add[1].value, "100%", 4));
    const dp_route_filter_conf_t *fc = dp_route_filter_conf(vh, r, "envoy.filters.http.fault");
    ck_assert_ptr_nonnull(fc);
    ck_assert_str_eq(fc->type_url,
                     "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault");
    ck_assert_uint_gt(fc->len, 0);
    /* built by the fault filter's config half */
    ck_assert_ptr_nonnull(fc->conf);
    /* the second route: Envoy's defaults */
    const dp_route_t *d = &vh->routes[1];
    ck_assert_uint_eq(d->timeout_ms, 15000);
    ck_assert(!d->has_max_grpc_timeout);
    ck_assert_ptr_null(d->retry);
    ck_assert(d->match.case_sensitive);

    dp_http_head_t h = req("GET", "hello:8080", "/");
    const dp_vhost_t *got;
    ck_assert_ptr_eq(dp_route_select(rc, &h, 0, &got), r);
    dp_route_apply_request(rc, got, r, NULL, &h, pool, NULL);
    const dp_header_t *x = DP_HDR_GET(&h.headers, "x-internal-mesh-route");
    ck_assert(x && DP_STR_EQ(x->value, "applied"));
    h = req("GET", "hello", "/x");
    ck_assert_ptr_eq(dp_route_select(rc, &h, 0, &got), d);
    dp_snapshot_unref(s);
}
END_TEST

START_TEST(test_actions)
{
    dp_snapshot_t *s = dp_snapshot_new(1);
    char *err = NULL;
    const dp_route_config_t *rc = build(
        s,
        "{\"name\": \"acts\", \"virtual_hosts\": [{"
        "\"name\": \"v\", \"domains\": [\"a.com\", \"*.b.com\", \"c.*\", \"*\"], \"routes\": ["
        " {\"match\": {\"prefix\": \"/w\"}, \"route\": {\"weighted_clusters\": {\"clusters\": ["
        "   {\"name\": \"one\", \"weight\": 25, \"host_rewrite_literal\": \"one.internal\","
        "    \"request_headers_to_add\": [{\"header\": {\"key\": \"x-w\", \"value\": \"1\"}}]},"
        "   {\"name\": \"zero\", \"weight\": 0},"
        "   {\"name\": \"three\", \"weight\": 75}]}}},"
        " {\"match\": {\"prefix\": \"/h\"}, \"route\": {\"cluster_header\": \"X-Cluster\","
        "   \"cluster_not_found_response_code\": \"NOT_FOUND\"}},"
        " {\"match\": {\"prefix\": \"/r\"}, \"redirect\": {\"https_redirect\": true,"
        "   \"host_redirect\": \"new.com\", \"response_code\": \"TEMPORARY_REDIRECT\","
        "   \"prefix_rewrite\": \"/n\"}},"
        " {\"match\": {\"prefix\": \"/d\"}, \"direct_response\": {\"status\": 418, "
        "   \"body\": {\"inline_string\": \"teapot\"}}},"
        " {\"match\": {\"prefix\": \"/b\"}, \"direct_response\": {\"status\": 200, "
        "   \"body\": {\"inline_bytes\": \"AAEC\"}}},"
        " {\"match\": {\"safe_regex\": {\"regex\": \"/x/[0-9]+\"}}, \"route\": {\"cluster\": "
        "\"rx\","
        "   \"regex_rewrite\": {\"pattern\": {\"regex\": \"^/x/([0-9]+)$\"}, "
        "\"substitution\": \"/y/\\\\1\"},"
        "   \"request_mirror_policies\": [{\"cluster\": \"shadow\", \"runtime_fraction\": "
        "{\"default_value\": {\"numerator\": 250, \"denominator\": \"TEN_THOUSAND\"}},"
        "     \"trace_sampled\": false}, {\"cluster_header\": \"X-Mirror\"}],"
        "   \"timeout\": \"2.5s\", \"idle_timeout\": \"1s\", \"auto_host_rewrite\": true,"
        "   \"max_stream_duration\": {\"max_stream_duration\": \"0s\", "
        "\"grpc_timeout_header_max\": \"3s\"}}},"
        " {\"match\": {\"path_separated_prefix\": \"/sep\", \"case_sensitive\": false,"
        "   \"headers\": [{\"name\": \":method\", \"string_match\": {\"exact\": \"GET\"}},"
        "     {\"name\": \"x-absent\", \"present_match\": true, \"invert_match\": true},"
        "     {\"name\": \"x-v\", \"exact_match\": \"1\"}],"
        "   \"query_parameters\": [{\"name\": \"q\", \"string_match\": {\"prefix\": \"a\"}}],"
        "   \"grpc\": {}}, \"route\": {\"cluster\": \"sep\", \"prefix_rewrite\": \"/s\"}}"
        "]}]}",
        &err);
    ck_assert_msg(rc != NULL, "%s", err);
    ck_assert_uint_eq(rc->max_direct_response_body_size, 4096);
    ck_assert_uint_eq(rc->n_exact, 1);
    ck_assert_uint_eq(rc->n_suffix, 1);
    ck_assert_uint_eq(rc->n_prefix, 1);
    ck_assert_ptr_nonnull(rc->any);
    const dp_route_t *r = rc->vhosts[0].routes;

    ck_assert_int_eq(r[0].kind, DP_ROUTE_WEIGHTED);
    ck_assert_uint_eq(r[0].total_weight, 100);
    dp_http_head_t h = req("GET", "a.com", "/w");
    const dp_route_weighted_t *wc;
    ck_assert_str_eq(dp_route_cluster(&r[0], &h, 24, &wc), "one");
    dp_route_apply_request(rc, &rc->vhosts[0], &r[0], wc, &h, pool, NULL);
    ck_assert(DP_STR_EQ(h.authority, "one.internal"));
    ck_assert_ptr_nonnull(DP_HDR_GET(&h.headers, "x-w"));
    ck_assert_str_eq(dp_route_cluster(&r[0], &h, 25, &wc), "three");

    ck_assert_int_eq(r[1].kind, DP_ROUTE_CLUSTER_HEADER);
    ck_assert_str_eq(r[1].cluster_header, "x-cluster");
    ck_assert_uint_eq(r[1].cluster_not_found_code, 404);

    ck_assert_int_eq(r[2].kind, DP_ROUTE_REDIRECT);
    int st;
    h = req("GET", "a.com", "/r/x?k=v");
    dp_str_t loc = dp_route_redirect(&r[2], &h, pool, &st);
    ck_assert_int_eq(st, 307);
    ck_assert(DP_STR_EQ(loc, "https://new.com/n/x?k=v"));

    ck_assert_int_eq(r[3].kind, DP_ROUTE_DIRECT);
    ck_assert_int_eq(r[3].direct_status, 418);
    ck_assert(DP_STR_EQ(r[3].direct_body, "teapot"));
    ck_assert_uint_eq(r[4].direct_body.n, 3);
    ck_assert(memcmp(r[4].direct_body.p, "\0\1\2", 3) == 0);

    ck_assert_int_eq(r[5].match.kind, DP_PM_REGEX);
    ck_assert_uint_eq(r[5].timeout_ms, 2500);
    ck_assert_uint_eq(r[5].idle_timeout_ms, 1000);
    ck_assert(r[5].auto_host_rewrite);
    ck_assert_uint_eq(r[5].max_stream_duration_ms, 0);
    ck_assert(r[5].has_grpc_timeout_header_max);
    ck_assert_uint_eq(r[5].grpc_timeout_header_max_ms, 3000);
    ck_assert(!r[5].has_max_grpc_timeout);
    ck_assert_uint_eq(r[5].n_mirrors, 2);
    ck_assert_str_eq(r[5].mirrors[0].cluster, "shadow");
    ck_assert_uint_eq(r[5].mirrors[0].numerator, 250);
    ck_assert_uint_eq(r[5].mirrors[0].denominator, 10000);
    ck_assert(r[5].mirrors[0].has_trace_sampled && !r[5].mirrors[0].trace_sampled);
    ck_assert_str_eq(r[5].mirrors[1].cluster_header, "x-mirror");
    ck_assert_uint_eq(r[5].mirrors[1].numerator, 100);
    ck_assert_uint_eq(r[5].mirrors[1].denominator, 100);
    h = req("GET", "x.b.com", "/x/42?z");
    ck_assert_ptr_eq(dp_route_select(rc, &h, 0, NULL), &r[5]);
    dp_route_apply_request(rc, &rc->vhosts[0], &r[5], NULL, &h, pool, NULL);
    ck_assert(DP_STR_EQ(h.path, "/y/42?z"));

    const dp_route_t *sep = &r[6];
    ck_assert(!sep->match.case_sensitive);
    ck_assert(sep->match.grpc);
    ck_assert_uint_eq(sep->match.n_headers, 3);
    ck_assert_int_eq(sep->match.headers[1].kind, DP_HM_PRESENT);
    h = req("GET", "c.org", "/SEP/x?q=abc");
    dp_headers_add(&h.headers, pool, "content-type", 12, "application/grpc", 16);
    dp_headers_add(&h.headers, pool, "x-v", 3, "1", 1);
    ck_assert_ptr_eq(dp_route_select(rc, &h, 0, NULL), sep);
    dp_route_apply_request(rc, &rc->vhosts[0], sep, NULL, &h, pool, NULL);
    ck_assert(DP_STR_EQ(h.path, "/s/x?q=abc"));
    h = req("GET", "c.org", "/sepx?q=abc");
    dp_headers_add(&h.headers, pool, "content-type", 12, "application/grpc", 16);
    dp_headers_add(&h.headers, pool, "x-v", 3, "1", 1);
    ck_assert_ptr_null(dp_route_select(rc, &h, 0, NULL));
    dp_snapshot_unref(s);
}
END_TEST

static void refused(const char *json, const char *want)
{
    dp_snapshot_t *s = dp_snapshot_new(1);
    char *err = NULL;
    ck_assert_ptr_null(build(s, json, &err));
    ck_assert_msg(err && strstr(err, want), "'%s' lacks '%s'", err ? err : "", want);
    free(err);
    dp_snapshot_unref(s);
}

START_TEST(test_refusals)
{
    refused("{\"name\": \"dup\", \"virtual_hosts\": ["
            "{\"name\": \"first\", \"domains\": [\"a.com\", \"B.com\"]},"
            "{\"name\": \"second\", \"domains\": [\"c.com\", \"b.COM\"]}]}",
            "route config 'dup': virtual_hosts[1] ('second').domains[1]: Only unique values for "
            "domains are permitted. Duplicate entry of domain b.COM (also in virtual_hosts[0] "
            "('first'))");
    refused("{\"name\": \"dupwild\", \"virtual_hosts\": ["
            "{\"name\": \"a\", \"domains\": [\"*.x.com\"]},"
            "{\"name\": \"b\", \"domains\": [\"*.X.com\"]}]}",
            "virtual_hosts[1] ('b').domains[0]: Only unique values for domains");
    refused("{\"name\": \"twostars\", \"virtual_hosts\": ["
            "{\"name\": \"a\", \"domains\": [\"*\"]}, {\"name\": \"b\", \"domains\": [\"*\"]}]}",
            "virtual_hosts[1] ('b').domains[0]: Only a single wildcard domain is permitted");
    refused("{\"name\": \"big\", \"max_direct_response_body_size_bytes\": 4,"
            "\"virtual_hosts\": [{\"name\": \"v\", \"domains\": [\"*\"], \"routes\": ["
            "{\"name\": \"dr\", \"match\": {\"prefix\": \"/\"}, \"direct_response\": "
            "{\"status\": 200, \"body\": {\"inline_string\": \"12345\"}}}]}]}",
            "route config 'big': virtual_hosts[0] ('v').routes[0] ('dr').direct_response.body: "
            "5 bytes is over the limit of 4");
    char big[6000];
    int n = snprintf(big, sizeof(big),
                     "{\"name\": \"default-limit\", \"virtual_hosts\": [{"
                     "\"name\": \"v\", \"domains\": [\"*\"], \"routes\": [{\"match\": {\"prefix\":"
                     " \"/\"}, \"direct_response\": {\"status\": 200, \"body\": {\"inline_string\":"
                     " \"");
    memset(big + n, 'x', 4097);
    strcpy(big + n + 4097, "\"}}}]}]}");
    refused(big, "4097 bytes is over the limit of 4096");
    refused("{\"name\": \"rx\", \"virtual_hosts\": [{\"name\": \"v\", \"domains\": [\"*\"], "
            "\"routes\": [{\"match\": {\"safe_regex\": {\"regex\": \"(\"}}, \"route\": "
            "{\"cluster\": \"c\"}}]}]}",
            "virtual_hosts[0] ('v').routes[0].match.safe_regex.regex: '(': ");
    refused("{\"name\": \"hdr\", \"virtual_hosts\": [{\"name\": \"v\", \"domains\": [\"*\"], "
            "\"request_headers_to_add\": [{\"header\": {\"key\": \"Host\", \"value\": \"x\"}}]}]}",
            "virtual_hosts[0] ('v').request_headers_to_add[0]: ':-prefixed or host headers");
    refused("{\"name\": \"w0\", \"virtual_hosts\": [{\"name\": \"v\", \"domains\": [\"*\"], "
            "\"routes\": [{\"match\": {\"prefix\": \"/\"}, \"route\": {\"weighted_clusters\": "
            "{\"clusters\": [{\"name\": \"a\", \"weight\": 0}]}}}]}]}",
            "route.weighted_clusters: the sum of the weights must be in 1..4294967295");
    refused("{\"name\": \"tw\", \"virtual_hosts\": [{\"name\": \"v\", \"domains\": [\"*\"], "
            "\"routes\": [{\"match\": {\"prefix\": \"/\"}, \"route\": {\"weighted_clusters\": "
            "{\"total_weight\": 10, \"clusters\": [{\"name\": \"a\", \"weight\": 3}]}}}]}]}",
            "route.weighted_clusters.total_weight: 10 is not the sum of the weights (3)");
    refused("{\"name\": \"nodom\", \"virtual_hosts\": [{\"name\": \"v\"}]}",
            "virtual_hosts[0] ('v').domains: must not be empty");
    refused("{\"name\": \"fmt\", \"virtual_hosts\": [{\"name\": \"v\", \"domains\": [\"*\"], "
            "\"response_headers_to_add\": [{\"header\": {\"key\": \"x-a\", \"value\": "
            "\"%NO_SUCH_THING%\"}}]}]}",
            "virtual_hosts[0] ('v').response_headers_to_add[0] ('x-a').value: ");
    refused("{\"name\": \"fmt2\", \"virtual_hosts\": [{\"name\": \"v\", \"domains\": [\"*\"], "
            "\"request_headers_to_add\": [{\"header\": {\"key\": \"x-a\", \"value\": "
            "\"50%\"}}]}]}",
            "virtual_hosts[0] ('v').request_headers_to_add[0] ('x-a').value: ");
    /* "%%" alone stays a literal value; an operator gets a format */
    char *err = NULL;
    dp_snapshot_t *s = dp_snapshot_new(1);
    const dp_route_config_t *rc =
        build(s,
              "{\"name\": \"lit\", \"virtual_hosts\": [{\"name\": \"v\", \"domains\": [\"*\"], "
              "\"request_headers_to_add\": [{\"header\": {\"key\": \"x-a\", \"value\": "
              "\"100%%\"}}, {\"header\": {\"key\": \"x-b\", \"value\": "
              "\"%START_TIME%\"}}]}]}",
              &err);
    ck_assert_msg(rc != NULL, "%s", err);
    ck_assert(DP_STR_EQ(rc->vhosts[0].req.add[0].value, "100%"));
    ck_assert_ptr_null(rc->vhosts[0].req.add[0].fmt);
    ck_assert_ptr_nonnull(rc->vhosts[0].req.add[1].fmt);
    dp_snapshot_unref(s);
}
END_TEST

static void regex_cleanup_counter(void *p)
{
    (*(int *)p)++;
}

START_TEST(test_snapshot_routes_and_hcm)
{
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_stats_t *st = dp_stats_new();
    char *err = NULL;
    static const char *const names[] = {"b", "a", "c"};
    for (int i = 0; i < 3; i++) {
        char json[256];
        snprintf(json, sizeof(json),
                 "{\"name\": \"%s\", \"virtual_hosts\": [{\"name\": \"v\", "
                 "\"domains\": [\"*\"], \"routes\": [{\"match\": {\"safe_regex\": {\"regex\": "
                 "\".*\"}}, \"route\": {\"cluster\": \"c\"}}]}]}",
                 names[i]);
        dp_route_config_t *rc = (dp_route_config_t *)build(s, json, &err);
        ck_assert_ptr_nonnull(rc);
        dp_snapshot_add_route(s, rc);
    }
    /* found before the seal (connection managers are built first), and after */
    ck_assert_str_eq(dp_snapshot_find_route(s, "a")->name, "a");
    ck_assert_ptr_null(dp_snapshot_find_route(s, "z"));

    const char *hcm_json =
        "{\"stat_prefix\": \"outbound_0.0.0.0_80\", \"codec_type\": \"AUTO\","
        "\"rds\": {\"route_config_name\": \"c\", \"config_source\": {\"ads\": {}}},"
        "\"http_filters\": [{\"name\": \"envoy.filters.http.fault\", \"disabled\": true},"
        "  {\"name\": \"envoy.filters.http.router\"}],"
        "\"stream_idle_timeout\": \"0s\", \"normalize_path\": true, \"merge_slashes\": true,"
        "\"use_remote_address\": false, \"xff_num_trusted_hops\": 1,"
        "\"upgrade_configs\": [{\"upgrade_type\": \"WebSocket\"}],"
        "\"max_request_headers_kb\": 96,"
        "\"common_http_protocol_options\": {\"idle_timeout\": \"30s\", \"max_headers_count\": 50,"
        "  \"max_stream_duration\": \"7s\"},"
        "\"http2_protocol_options\": {\"max_concurrent_streams\": 7, "
        "  \"initial_stream_window_size\": 65536, \"initial_connection_window_size\": 1048576},"
        "\"request_timeout\": \"3s\", \"request_headers_timeout\": \"0s\","
        "\"preserve_external_request_id\": true,"
        "\"generate_request_id\": false, \"server_name\": \"istio-envoy\"}";
    json_error_t je;
    json_t *j = json_loads(hcm_json, 0, &je);
    ck_assert_ptr_nonnull(j);
    pb_hcm_t *m = (pb_hcm_t *)parse_json(
        j,
        &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor);
    const dp_hcm_config_t *c = xds_hcm_build(s, st, m, true, &err);
    ck_assert_msg(c != NULL, "%s", err);
    ck_assert_str_eq(c->stat_prefix, "outbound_0.0.0.0_80");
    ck_assert_int_eq(c->codec_type, DP_CODEC_AUTO);
    ck_assert_str_eq(c->rds_name, "c");
    ck_assert_ptr_eq(c->routes, dp_snapshot_find_route(s, "c"));
    ck_assert_uint_eq(c->n_filters, 2);
    ck_assert(c->filters[0].disabled);
    ck_assert_ptr_null(c->filters[0].type);
    ck_assert_str_eq(c->filters[1].name, "envoy.filters.http.router");
    ck_assert_uint_eq(c->stream_idle_timeout_ms, 0);
    ck_assert_uint_eq(c->request_timeout_ms, 3000);
    ck_assert_uint_eq(c->request_headers_timeout_ms, 0); /* set to 0: none, as in Envoy */
    ck_assert_uint_eq(c->idle_timeout_ms, 30000);
    ck_assert_uint_eq(c->max_stream_duration_ms, 7000);
    ck_assert(c->normalize_path && c->merge_slashes && c->websocket && c->inbound);
    ck_assert(!c->use_remote_address);
    ck_assert_uint_eq(c->xff_num_trusted_hops, 1);
    ck_assert(!c->generate_request_id);
    ck_assert(c->preserve_external_request_id);
    ck_assert_str_eq(c->server_name, "istio-envoy");
    ck_assert_uint_eq(c->limits.max_header_bytes, 96 * 1024);
    ck_assert_uint_eq(c->limits.max_headers, 50);
    ck_assert_uint_eq(c->limits.h2_max_concurrent_streams, 7);
    ck_assert_uint_eq(c->limits.h2_initial_stream_window, 65536);
    ck_assert_uint_eq(c->limits.h2_initial_connection_window, 1048576);
    ck_assert_uint_eq(c->limits.buffer_limit, dp_http_limits_default().buffer_limit);
    ck_assert_ptr_eq(c->stats.rq_total,
                     dp_stats_counter(st, "http.outbound_0.0.0.0_80.downstream_rq_total"));
    ck_assert_ptr_eq(c->stats.rq_xx[4],
                     dp_stats_counter(st, "http.outbound_0.0.0.0_80.downstream_rq_5xx"));
    ck_assert_ptr_eq(c->stats.cx_active,
                     dp_stats_gauge(st, "http.outbound_0.0.0.0_80.downstream_cx_active"));
    ck_assert_ptr_eq(c->stats.no_route, dp_stats_counter(st, "http.outbound_0.0.0.0_80.no_route"));
    ck_assert_ptr_eq(c->stats.rq_header_timeout,
                     dp_stats_counter(st, "http.outbound_0.0.0.0_80.downstream_rq_header_timeout"));
    protobuf_c_message_free_unpacked(&m->base, NULL);
    json_decref(j);

    /* defaults, no stats, an RDS name not there yet, an inline route_config */
    j = json_loads("{\"stat_prefix\": \"p\", \"rds\": {\"route_config_name\": \"later\"}}", 0, &je);
    m = (pb_hcm_t *)parse_json(
        j,
        &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor);
    c = xds_hcm_build(s, NULL, m, false, &err);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_null(c->routes);
    ck_assert_uint_eq(c->stream_idle_timeout_ms, 300000);
    ck_assert_uint_eq(c->idle_timeout_ms, 3600000);
    ck_assert_uint_eq(c->request_timeout_ms, 0);
    ck_assert_uint_eq(c->request_headers_timeout_ms, 60000); /* unset: skiff's 60 s */
    ck_assert(c->generate_request_id && !c->normalize_path && !c->websocket);
    ck_assert_str_eq(c->server_name, "envoy");
    ck_assert_uint_eq(c->limits.max_header_bytes, 60 * 1024);
    ck_assert_ptr_null(c->stats.rq_total);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    json_decref(j);

    j = json_loads("{\"stat_prefix\": \"in\", \"route_config\": {\"name\": \"inbound|80||\", "
                   "\"virtual_hosts\": [{\"name\": \"a\", \"domains\": [\"x\", \"X\"]}]}}",
                   0, &je);
    m = (pb_hcm_t *)parse_json(
        j,
        &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor);
    ck_assert_ptr_null(xds_hcm_build(s, NULL, m, true, &err));
    ck_assert_ptr_nonnull(strstr(err, "http_connection_manager in: route_config: route config "
                                      "'inbound|80||': virtual_hosts[0] ('a').domains[1]"));
    free(err);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    json_decref(j);

    j = json_loads("{\"stat_prefix\": \"bad\", \"rds\": {\"route_config_name\": \"x\"}, "
                   "\"max_request_headers_kb\": 9000}",
                   0, &je);
    m = (pb_hcm_t *)parse_json(
        j,
        &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor);
    err = NULL;
    ck_assert_ptr_null(xds_hcm_build(s, NULL, m, true, &err));
    ck_assert_ptr_nonnull(strstr(err, "max_request_headers_kb: 9000"));
    free(err);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    json_decref(j);

    ck_assert_int_eq(dp_snapshot_seal(s), 0);
    ck_assert_str_eq(s->routes[0]->name, "a");
    ck_assert_str_eq(s->routes[2]->name, "c");
    ck_assert_str_eq(dp_snapshot_find_route(s, "b")->name, "b");
    ck_assert_ptr_null(dp_snapshot_find_route(s, "bb"));

    /* cleanups run when the snapshot goes */
    int ran = 0;
    dp_snapshot_add_cleanup(s, regex_cleanup_counter, &ran);
    dp_snapshot_unref(s);
    ck_assert_int_eq(ran, 1);
    dp_stats_free(st);
}
END_TEST

static void setup(void)
{
    pool = dp_pool_new();
}

static void teardown(void)
{
    dp_pool_free(pool);
}

int main(void)
{
    Suite *s = suite_create("route_build");
    TCase *tc = tcase_create("route_build");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_istio_dumps_build);
    tcase_add_test(tc, test_istio_outbound_selection);
    tcase_add_test(tc, test_istio_route_fields);
    tcase_add_test(tc, test_actions);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_snapshot_routes_and_hcm);
    suite_add_tcase(s, tc);
    return check_run(s);
}
