/* Fuzz target: route selection and the router's helpers (dataplane/route.h) over a fixed route
 * table built once through xds_route_build (domains of every kind, every match kind, weighted
 * clusters, rewrites, redirects, header mutations). The input is a request head as text lines:
 *   method \n authority \n path \n scheme \n name: value \n ...
 * A selected route must pass its own match; what the helpers return must be well formed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/route.h"
#include "protos/registry.h"
#include "xds/pbjson.h"
#include "xds/route_build.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char table[] =
    "{\"name\": \"fuzz\", \"ignore_port_in_host_matching\": true,"
    " \"request_headers_to_add\": [{\"header\": {\"key\": \"x-rc\", \"value\": \"1\"},"
    "   \"append_action\": \"ADD_IF_ABSENT\"}],"
    " \"response_headers_to_remove\": [\"server\"],"
    " \"virtual_hosts\": ["
    "  {\"name\": \"exact\", \"domains\": [\"a.com\", \"10.0.0.1\", \"[::1]\"], \"routes\": ["
    "    {\"match\": {\"path\": \"/exact\", \"case_sensitive\": false}, "
    "     \"route\": {\"cluster\": \"c1\", \"host_rewrite_literal\": \"h\"}},"
    "    {\"match\": {\"safe_regex\": {\"regex\": \"/r/([a-z]+)/(\\\\d+)\"}},"
    "     \"route\": {\"cluster\": \"c2\", \"regex_rewrite\": {\"pattern\": {\"regex\": "
    "\"([a-z]+)\"}, \"substitution\": \"<\\\\1>\"}}},"
    "    {\"match\": {\"prefix\": \"/w\", \"headers\": [{\"name\": \"x-h\", "
    "\"string_match\": {\"contains\": \"z\", \"ignore_case\": true}, \"invert_match\": true,"
    " \"treat_missing_header_as_empty\": true}]},"
    "     \"route\": {\"weighted_clusters\": {\"clusters\": ["
    "       {\"name\": \"w1\", \"weight\": 3, \"request_headers_to_add\": [{\"header\": "
    "{\"key\": \"x-w\", \"value\": \"1\"}, \"append_action\": \"OVERWRITE_IF_EXISTS\"}]},"
    "       {\"name\": \"w2\", \"weight\": 5, \"host_rewrite_literal\": \"w2.local\"}]},"
    "      \"prefix_rewrite\": \"/\"}},"
    "    {\"match\": {\"prefix\": \"/\", \"query_parameters\": [{\"name\": \"go\", "
    "\"present_match\": true}]},"
    "     \"redirect\": {\"https_redirect\": true, \"port_redirect\": 8443, \"strip_query\": true,"
    "       \"regex_rewrite\": {\"pattern\": {\"regex\": \"^/(.*)$\"}, \"substitution\": "
    "\"/moved/\\\\1\"}}}]},"
    "  {\"name\": \"wild\", \"domains\": [\"*.b.com\", \"*-c.b.com\", \"api.*\"], "
    "   \"request_headers_to_remove\": [\"x-drop\"], \"routes\": ["
    "    {\"match\": {\"path_separated_prefix\": \"/api\", \"grpc\": {}},"
    "     \"route\": {\"cluster_header\": \"x-cluster\"}},"
    "    {\"match\": {\"prefix\": \"/\", \"headers\": [{\"name\": \"x-n\", "
    "\"range_match\": {\"start\": \"-5\", \"end\": \"100\"}}, {\"name\": \":method\", "
    "\"exact_match\": \"POST\"}]},"
    "     \"direct_response\": {\"status\": 201, \"body\": {\"inline_string\": \"made\"}}},"
    "    {\"match\": {\"prefix\": \"/\", \"query_parameters\": [{\"name\": \"q\", "
    "\"string_match\": {\"safe_regex\": {\"regex\": \"[0-9]*\"}}}]},"
    "     \"redirect\": {\"host_redirect\": \"q.example\", \"path_redirect\": \"/p?x=1\"}},"
    "    {\"match\": {\"connect_matcher\": {}}, \"route\": {\"cluster\": \"tunnel\"}},"
    "    {\"match\": {\"prefix\": \"/\"}, \"redirect\": {\"prefix_rewrite\": \"/pre\", "
    "\"response_code\": \"SEE_OTHER\"}}]},"
    "  {\"name\": \"any\", \"domains\": [\"*\"], \"routes\": ["
    "    {\"match\": {\"prefix\": \"/\"}, \"route\": {\"cluster\": \"PassthroughCluster\"},"
    "     \"response_headers_to_add\": [{\"header\": {\"key\": \"x-any\", \"value\": \"y\"}}]}]}"
    "]}";

static dp_snapshot_t *snap;
static const dp_route_config_t *rc;

static void init(void)
{
    pbjson_opts_t o = {.resolve = pb_registry_find_type_url};
    ProtobufCMessage *m = NULL;
    if (pbjson_parse(table, sizeof(table) - 1, "table",
                     &envoy__config__route__v3__route_configuration__descriptor, &o, &m, NULL) != 0)
        abort();
    snap = dp_snapshot_new(1);
    char *err = NULL;
    rc = xds_route_build(snap, (void *)m, &err);
    if (rc == NULL)
        abort();
    protobuf_c_message_free_unpacked(m, NULL);
}

/* The next line of the input (without its '\n'); DP_STR_NULL at the end. */
static dp_str_t next_line(const uint8_t **p, const uint8_t *end)
{
    if (*p >= end)
        return DP_STR_NULL;
    const uint8_t *s = *p, *nl = memchr(s, '\n', (size_t)(end - s));
    const uint8_t *e = nl ? nl : end;
    *p = nl ? nl + 1 : end;
    return (dp_str_t){(const char *)s, (size_t)(e - s)};
}

static void check_str(dp_str_t s)
{
    /* touches every byte, so out-of-bounds results show under the sanitizers */
    volatile unsigned sum = 0;
    for (size_t i = 0; i < s.n; i++)
        sum += (unsigned char)s.p[i];
    (void)sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (rc == NULL)
        init();
    if (size > 1 << 16)
        return 0;
    dp_pool_t *pool = dp_pool_new();
    /* Lines are copied into the pool so that each is NUL-terminated, as the codecs' are. */
    const uint8_t *p = data, *end = data + size;
    dp_http_head_t h;
    memset(&h, 0, sizeof(h));
    dp_str_t *f[] = {&h.method, &h.authority, &h.path, &h.scheme};
    for (int i = 0; i < 4; i++) {
        dp_str_t l = next_line(&p, end);
        if (l.p)
            *f[i] = (dp_str_t){dp_pool_strndup(pool, l.p, l.n), l.n};
    }
    for (int i = 0; i < 64; i++) {
        dp_str_t l = next_line(&p, end);
        if (l.p == NULL)
            break;
        const char *colon = memchr(l.p, ':', l.n);
        if (colon == NULL || colon == l.p)
            continue;
        size_t nl = (size_t)(colon - l.p);
        char *name = dp_pool_strndup(pool, l.p, nl);
        for (size_t k = 0; k < nl; k++)
            name[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]);
        size_t vo = nl + 1;
        while (vo < l.n && l.p[vo] == ' ')
            vo++;
        dp_headers_add(&h.headers, pool, name, nl, l.p + vo, l.n - vo);
    }
    uint64_t random = 14695981039346656037u;
    for (size_t i = 0; i < size; i++)
        random = (random ^ data[i]) * 1099511628211u;

    const dp_vhost_t *vh = NULL;
    const dp_route_t *r = dp_route_select(rc, &h, random, &vh);
    if (r) {
        if (vh == NULL || !dp_route_match(&r->match, &h))
            abort();
        const dp_route_weighted_t *wc = NULL;
        const char *cluster = dp_route_cluster(r, &h, random, &wc);
        if ((r->kind == DP_ROUTE_CLUSTER || r->kind == DP_ROUTE_WEIGHTED) && cluster == NULL)
            abort();
        if (cluster)
            check_str((dp_str_t){cluster, strlen(cluster)});
        if (r->kind == DP_ROUTE_REDIRECT) {
            int st = 0;
            dp_str_t loc = dp_route_redirect(r, &h, pool, &st);
            if (loc.p == NULL || st < 300 || st > 308)
                abort();
            check_str(loc);
        }
        (void)dp_route_filter_conf(vh, r, "envoy.filters.http.fault");
        dp_route_apply_request(rc, vh, r, wc, &h, pool, NULL);
        check_str(h.path);
        check_str(h.authority);
        for (uint32_t i = 0; i < h.headers.n; i++) {
            check_str(h.headers.v[i].name);
            check_str(h.headers.v[i].value);
        }
        dp_http_head_t resp;
        memset(&resp, 0, sizeof(resp));
        resp.status = 200;
        dp_headers_add(&resp.headers, pool, "server", 6, "up", 2);
        dp_route_apply_response(rc, vh, r, wc, &resp, pool, NULL);
        if (DP_HDR_GET(&resp.headers, "server"))
            abort();
    }
    dp_pool_free(pool);
    return 0;
}
