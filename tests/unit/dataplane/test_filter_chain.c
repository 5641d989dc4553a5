/* Filter-chain selection: on Istio's virtualInbound listener from a real sidecar config dump
 * (decoded with the JSON mapping, built by xds_listener_build), and Envoy's matching order on
 * hand-made chains; listener filter predicates; duplicate matching rules refused. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/filter_chain.h"
#include "dataplane/listener.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "protos/registry.h"
#include "tests/unit/check_run.h"
#include "xds/listener_build.h"
#include "xds/pbjson.h"

static struct sockaddr_storage addr(const char *ip, unsigned port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
    } else {
        ck_assert(inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
    }
    return ss;
}

/* Selects with local dst:dport, remote src:sport and the given TLS facts. */
static const dp_filter_chain_t *sel(const dp_listener_t *l, const char *dst, unsigned dport,
                                    const char *src, unsigned sport, const char *transport,
                                    const char *sni, const char *const *alpn, size_t n_alpn)
{
    struct sockaddr_storage lo = addr(dst, dport), re = addr(src, sport);
    dp_fc_input_t in = {
        .local = (struct sockaddr *)&lo,
        .remote = (struct sockaddr *)&re,
        .server_name = sni,
        .transport_protocol = transport,
        .alpn = alpn,
        .n_alpn = n_alpn,
    };
    return dp_filter_chain_select(l, &in);
}

/* ---- the Istio dump ---- */

static Envoy__Config__Listener__V3__Listener *dump_listener(const char *name)
{
    char path[1024];
    const char *shared = getenv("SHARED");
    snprintf(path, sizeof(path),
             "%s/istio/01-ossm-sidecar-config-dump/"
             "hello-openshift-sidecar-config_dump.json",
             shared ? shared : "../shared");
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    ck_assert_msg(root != NULL, "%s: %s", path, jerr.text);
    json_t *configs = json_object_get(root, "configs"), *c, *found = NULL;
    size_t i, j;
    json_array_foreach(configs, i, c)
    {
        json_t *dl = json_object_get(c, "dynamic_listeners"), *e;
        json_array_foreach(dl, j, e)
        {
            json_t *l = json_object_get(json_object_get(e, "active_state"), "listener");
            if (l && strcmp(json_string_value(json_object_get(l, "name")), name) == 0)
                found = l;
        }
    }
    ck_assert_msg(found != NULL, "no listener %s", name);
    json_object_del(found, "@type"); /* the dump's Any wrapper, not a Listener field */
    {
        {
        }
    }
    pbjson_opts_t opts = {.allow_unknown = true, .resolve = pb_registry_find_type_url};
    pbjson_diag_t *diag = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    int rc = pbjson_parse_json(found, name, &envoy__config__listener__v3__listener__descriptor,
                               &opts, &m, diag);
    ck_assert_msg(rc == 0, "%s", pbjson_diag_size(diag) ? pbjson_diag_at(diag, 0, NULL) : "?");
    pbjson_diag_free(diag);
    json_decref(root);
    return (Envoy__Config__Listener__V3__Listener *)m;
}

START_TEST(test_virtual_inbound)
{
    Envoy__Config__Listener__V3__Listener *pl = dump_listener("virtualInbound");
    char *err = NULL;
    ck_assert_msg(xds_listener_check(pl, &err) == 0, "%s", err);
    dp_snapshot_t *s = dp_snapshot_new(1);
    const dp_listener_t *l = xds_listener_build(s, NULL, pl);
    protobuf_c_message_free_unpacked(&pl->base, NULL);

    ck_assert_uint_eq(l->n_chains, 11);
    ck_assert_uint_eq(l->n_filters, 3);
    ck_assert_int_eq(l->filters[0].kind, DP_LF_ORIGINAL_DST);
    ck_assert_int_eq(l->filters[1].kind, DP_LF_TLS_INSPECTOR);
    ck_assert_int_eq(l->filters[2].kind, DP_LF_HTTP_INSPECTOR);
    ck_assert_ptr_null(l->filters[0].disabled);
    ck_assert(dp_lf_pred_match(l->filters[1].disabled, 15006));
    ck_assert(!dp_lf_pred_match(l->filters[1].disabled, 15007));
    ck_assert(!dp_lf_pred_match(l->filters[2].disabled, 8080));
    ck_assert_uint_eq(l->filters_timeout_ms, 0);
    ck_assert(l->continue_on_filters_timeout);
    ck_assert(l->inbound);

    static const char *const h11[] = {"http/1.1"};
    static const char *const ih11[] = {"istio-http/1.1"};
    static const char *const peer[] = {"istio-peer-exchange", "h2", "http/1.1"};
    const char *pod = "10.128.0.7", *client = "10.128.0.9";

    /* port 8080 in plain text, HTTP/1.1: the HCM chain of 0.0.0.0_8080 */
    const dp_filter_chain_t *fc = sel(l, pod, 8080, client, 40000, "raw_buffer", "", h11, 1);
    ck_assert_ptr_nonnull(fc);
    ck_assert_str_eq(fc->name, "0.0.0.0_8080");
    ck_assert_str_eq(fc->match.transport_protocol, "raw_buffer");
    ck_assert_uint_eq(fc->match.n_application_protocols, 2);
    ck_assert(!fc->tls);
    ck_assert_ptr_null(fc->tcp);
    ck_assert_ptr_nonnull(fc->hcm); /* built by xds_hcm_build */
    /* mTLS from a sidecar offering istio-http/1.1: the same port's TLS variant */
    fc = sel(l, pod, 8080, client, 40000, "tls", "outbound_.8080_._.hello", ih11, 1);
    ck_assert_str_eq(fc->name, "0.0.0.0_8080");
    ck_assert_str_eq(fc->match.transport_protocol, "tls");
    ck_assert_str_eq(fc->match.application_protocols[1], "istio-http/1.1");
    ck_assert(fc->tls);
    /* mTLS TCP with peer exchange */
    fc = sel(l, pod, 8080, client, 40000, "tls", "", peer, 3);
    ck_assert_str_eq(fc->name, "0.0.0.0_8080");
    ck_assert_str_eq(fc->match.application_protocols[0], "istio-peer-exchange");
    ck_assert_ptr_nonnull(fc->tcp);
    /* plain TCP to 8080 */
    fc = sel(l, pod, 8080, client, 40000, "raw_buffer", "", NULL, 0);
    ck_assert_str_eq(fc->name, "0.0.0.0_8080");
    ck_assert_uint_eq(fc->match.n_application_protocols, 0);
    ck_assert_ptr_nonnull(fc->tcp);
    ck_assert_str_eq(fc->tcp->cluster, "inbound|8080||");
    /* a port without chains of its own: the catch-alls */
    fc = sel(l, pod, 9999, client, 40000, "raw_buffer", "", NULL, 0);
    ck_assert_str_eq(fc->name, "virtualInbound");
    ck_assert_str_eq(fc->match.transport_protocol, "raw_buffer");
    ck_assert_str_eq(fc->tcp->cluster, "InboundPassthroughClusterIpv4");
    fc = sel(l, pod, 9999, client, 40000, "raw_buffer", "", h11, 1);
    ck_assert_str_eq(fc->name, "virtualInbound-catchall-http");
    fc = sel(l, pod, 9999, client, 40000, "tls", "", NULL, 0);
    ck_assert_str_eq(fc->name, "virtualInbound");
    ck_assert_uint_eq(fc->match.n_application_protocols, 0);
    ck_assert(!fc->tls); /* TLS from a client outside the mesh: passed through as bytes */
    ck_assert_ptr_nonnull(fc->tcp);
    fc = sel(l, pod, 9999, client, 40000, "tls", "", ih11, 1);
    ck_assert_str_eq(fc->name, "virtualInbound-catchall-http");
    ck_assert(fc->tls);
    /* straight to 15006 */
    fc = sel(l, pod, 15006, client, 40000, "raw_buffer", "", NULL, 0);
    ck_assert_str_eq(fc->name, "virtualInbound-blackhole");
    ck_assert_str_eq(fc->tcp->cluster, "BlackHoleCluster");
    /* the catch-alls are IPv4 prefixes: an IPv6 destination on another port matches none */
    ck_assert_ptr_null(sel(l, "fd00::7", 9999, "fd00::9", 40000, "raw_buffer", "", NULL, 0));
    dp_snapshot_unref(s);
}
END_TEST

/* Every listener of the three Istio dumps passes xds_listener_check (no false duplicates) and
 * builds with all its chains. */
START_TEST(test_every_dump_listener)
{
    static const char *const files[] = {
        "01-ossm-sidecar-config-dump/hello-openshift-sidecar-config_dump.json",
        "01-ossm-sidecar-config-dump/ingressgateway-config_dump.json",
        "02-upstream-istio-1.18-sidecar-config-dump/geo-hr2-sidecar-config_dump_include_eds.json",
        "03-istio-testdata-sidecar-listeners-rbac/authz-testdata-sidecar-listeners-configdump.json",
    };
    const char *shared = getenv("SHARED");
    pbjson_opts_t opts = {.allow_unknown = true, .resolve = pb_registry_find_type_url};
    size_t n = 0;
    for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/istio/%s", shared ? shared : "../shared", files[f]);
        json_error_t jerr;
        json_t *root = json_load_file(path, 0, &jerr);
        ck_assert_msg(root != NULL, "%s: %s", path, jerr.text);
        json_t *c, *e;
        size_t i, j;
        json_array_foreach(json_object_get(root, "configs"), i, c)
        {
            json_t *all[2] = {json_object_get(c, "dynamic_listeners"),
                              json_object_get(c, "static_listeners")};
            for (int k = 0; k < 2; k++) {
                json_array_foreach(all[k], j, e)
                {
                    json_t *l = json_object_get(json_object_get(e, "active_state"), "listener");
                    if (l == NULL)
                        l = json_object_get(e, "listener");
                    if (l == NULL)
                        continue;
                    json_object_del(l, "@type");
                    ProtobufCMessage *m = NULL;
                    pbjson_diag_t *diag = pbjson_diag_new();
                    int rc = pbjson_parse_json(l, files[f],
                                               &envoy__config__listener__v3__listener__descriptor,
                                               &opts, &m, diag);
                    ck_assert_msg(rc == 0, "%s",
                                  pbjson_diag_size(diag) ? pbjson_diag_at(diag, 0, NULL) : "?");
                    pbjson_diag_free(diag);
                    Envoy__Config__Listener__V3__Listener *pl = (void *)m;
                    char *err = NULL;
                    ck_assert_msg(xds_listener_check(pl, &err) == 0, "%s %s: %s", files[f],
                                  pl->name, err);
                    dp_snapshot_t *s = dp_snapshot_new(1);
                    const dp_listener_t *dl = xds_listener_build(s, NULL, pl);
                    ck_assert_uint_eq(dl->n_chains, pl->n_filter_chains);
                    dp_snapshot_unref(s);
                    protobuf_c_message_free_unpacked(m, NULL);
                    n++;
                }
            }
        }
        json_decref(root);
    }
    ck_assert_uint_gt(n, 50);
}
END_TEST

START_TEST(test_dump_listeners_have_no_duplicate_chains)
{
    static const char *const names[] = {"virtualOutbound", "0.0.0.0_8188", "172.30.32.106_8080",
                                        "0.0.0.0_80", "172.30.22.177_443"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        Envoy__Config__Listener__V3__Listener *pl = dump_listener(names[i]);
        char *err = NULL;
        ck_assert_msg(xds_listener_check(pl, &err) == 0, "%s: %s", names[i], err);
        dp_snapshot_t *s = dp_snapshot_new(1);
        const dp_listener_t *l = xds_listener_build(s, NULL, pl);
        ck_assert_uint_eq(l->n_chains, pl->n_filter_chains);
        if (strcmp(names[i], "virtualOutbound") == 0) {
            ck_assert(l->use_original_dst);
            ck_assert(l->bind_to_port);
            const dp_filter_chain_t *fc =
                sel(l, "10.0.0.1", 5432, "10.0.0.2", 1, NULL, "", NULL, 0);
            ck_assert_str_eq(fc->tcp->cluster, "PassthroughCluster");
            fc = sel(l, "10.0.0.1", 15001, "10.0.0.2", 1, NULL, "", NULL, 0);
            ck_assert_str_eq(fc->tcp->cluster, "BlackHoleCluster");
        } else {
            ck_assert(!l->bind_to_port);
        }
        protobuf_c_message_free_unpacked(&pl->base, NULL);
        dp_snapshot_unref(s);
    }
}
END_TEST

/* ---- Envoy's order on hand-made chains ---- */

static dp_filter_chain_t chains[8];
static dp_cidr_t cidr_pool[16];
static size_t n_cidr;
static dp_listener_t lis;

static void reset(size_t n)
{
    memset(chains, 0, sizeof(chains));
    memset(&lis, 0, sizeof(lis));
    n_cidr = 0;
    for (size_t i = 0; i < n; i++) {
        chains[i].name = "";
        chains[i].match.transport_protocol = "";
    }
    lis.name = "t";
    lis.chains = chains;
    lis.n_chains = n;
}

static void prefix(dp_filter_chain_t *c, const char *ip, unsigned len)
{
    ck_assert(dp_cidr_parse(ip, len, &cidr_pool[n_cidr]));
    if (c->match.n_prefix_ranges == 0)
        c->match.prefix_ranges = &cidr_pool[n_cidr];
    c->match.n_prefix_ranges++;
    n_cidr++;
}

#define NAMED(i, s) (chains[i].name = (s))

START_TEST(test_port_beats_ip)
{
    reset(2);
    NAMED(0, "port");
    chains[0].match.destination_port = 80;
    NAMED(1, "ip");
    prefix(&chains[1], "10.0.0.0", 8);
    ck_assert_str_eq(sel(&lis, "10.1.1.1", 80, "1.2.3.4", 5, NULL, "", NULL, 0)->name, "port");
    ck_assert_str_eq(sel(&lis, "10.1.1.1", 81, "1.2.3.4", 5, NULL, "", NULL, 0)->name, "ip");
    ck_assert_ptr_null(sel(&lis, "192.168.1.1", 81, "1.2.3.4", 5, NULL, "", NULL, 0));
    /* no backtracking: the port chain wins the first step, then fails on transport */
    chains[0].match.transport_protocol = "tls";
    ck_assert_ptr_null(sel(&lis, "10.1.1.1", 80, "1.2.3.4", 5, "raw_buffer", "", NULL, 0));
    dp_filter_chain_t def = {.name = "default", .match.transport_protocol = ""};
    lis.default_chain = &def;
    ck_assert_str_eq(sel(&lis, "10.1.1.1", 80, "1.2.3.4", 5, "raw_buffer", "", NULL, 0)->name,
                     "default");
}
END_TEST

START_TEST(test_longest_prefix)
{
    reset(4);
    NAMED(0, "/8");
    prefix(&chains[0], "10.0.0.0", 8);
    NAMED(1, "/16");
    prefix(&chains[1], "10.200.0.0", 16); /* two ranges: the one that matches counts */
    prefix(&chains[1], "10.1.0.0", 16);
    NAMED(2, "any");
    NAMED(3, "v6");
    prefix(&chains[3], "fd00::", 8);
    ck_assert_str_eq(sel(&lis, "10.1.2.3", 1, "1.1.1.1", 2, NULL, "", NULL, 0)->name, "/16");
    ck_assert_str_eq(sel(&lis, "10.200.9.9", 1, "1.1.1.1", 2, NULL, "", NULL, 0)->name, "/16");
    ck_assert_str_eq(sel(&lis, "10.2.0.1", 1, "1.1.1.1", 2, NULL, "", NULL, 0)->name, "/8");
    ck_assert_str_eq(sel(&lis, "11.0.0.1", 1, "1.1.1.1", 2, NULL, "", NULL, 0)->name, "any");
    ck_assert_str_eq(sel(&lis, "fd12::1", 1, "::1", 2, NULL, "", NULL, 0)->name, "v6");
    ck_assert_str_eq(sel(&lis, "2001:db8::1", 1, "::1", 2, NULL, "", NULL, 0)->name, "any");
    /* source prefixes likewise, after the destination */
    reset(2);
    static dp_cidr_t src[2];
    ck_assert(dp_cidr_parse("192.168.0.0", 16, &src[0]));
    ck_assert(dp_cidr_parse("192.168.7.0", 24, &src[1]));
    NAMED(0, "src16");
    chains[0].match.source_prefix_ranges = &src[0];
    chains[0].match.n_source_prefix_ranges = 1;
    NAMED(1, "src24");
    chains[1].match.source_prefix_ranges = &src[1];
    chains[1].match.n_source_prefix_ranges = 1;
    ck_assert_str_eq(sel(&lis, "10.0.0.1", 1, "192.168.7.7", 2, NULL, "", NULL, 0)->name, "src24");
    ck_assert_str_eq(sel(&lis, "10.0.0.1", 1, "192.168.8.7", 2, NULL, "", NULL, 0)->name, "src16");
    ck_assert_ptr_null(sel(&lis, "10.0.0.1", 1, "172.16.0.1", 2, NULL, "", NULL, 0));
}
END_TEST

START_TEST(test_server_names)
{
    static const char *const exact[] = {"www.example.com"}, *const wild[] = {"*.example.com"},
                             *const tld[] = {"*.com"};
    reset(4);
    NAMED(0, "exact");
    chains[0].match.server_names = exact;
    chains[0].match.n_server_names = 1;
    NAMED(1, "wild");
    chains[1].match.server_names = wild;
    chains[1].match.n_server_names = 1;
    NAMED(2, "tld");
    chains[2].match.server_names = tld;
    chains[2].match.n_server_names = 1;
    NAMED(3, "none");
    const char *t = "tls";
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 443, "2.2.2.2", 9, t, "www.example.com", NULL, 0)->name,
                     "exact");
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 443, "2.2.2.2", 9, t, "WWW.Example.COM", NULL, 0)->name,
                     "exact");
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 443, "2.2.2.2", 9, t, "api.example.com", NULL, 0)->name,
                     "wild");
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 443, "2.2.2.2", 9, t, "a.b.example.com", NULL, 0)->name,
                     "wild");
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 443, "2.2.2.2", 9, t, "example.com", NULL, 0)->name,
                     "tld");
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 443, "2.2.2.2", 9, t, "foo.org", NULL, 0)->name, "none");
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 443, "2.2.2.2", 9, t, "", NULL, 0)->name, "none");
}
END_TEST

START_TEST(test_transport_and_alpn)
{
    static const char *const h2[] = {"h2"}, *const h11[] = {"http/1.1"};
    reset(4);
    NAMED(0, "tls-h2");
    chains[0].match.transport_protocol = "tls";
    chains[0].match.application_protocols = h2;
    chains[0].match.n_application_protocols = 1;
    NAMED(1, "tls-h11");
    chains[1].match.transport_protocol = "tls";
    chains[1].match.application_protocols = h11;
    chains[1].match.n_application_protocols = 1;
    NAMED(2, "tls");
    chains[2].match.transport_protocol = "tls";
    NAMED(3, "any");
    static const char *const offer[] = {"http/1.1", "h2"}, *const other[] = {"spdy/3"};
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 1, "2.2.2.2", 2, "tls", "", offer, 2)->name, "tls-h11");
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 1, "2.2.2.2", 2, "tls", "", offer + 1, 1)->name,
                     "tls-h2");
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 1, "2.2.2.2", 2, "tls", "", other, 1)->name, "tls");
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 1, "2.2.2.2", 2, "raw_buffer", "", offer, 2)->name,
                     "any");
    ck_assert_str_eq(sel(&lis, "1.1.1.1", 1, "2.2.2.2", 2, NULL, "", NULL, 0)->name, "any");
}
END_TEST

START_TEST(test_source_type_and_ports)
{
    static const uint32_t ports[] = {1234};
    reset(3);
    NAMED(0, "local");
    chains[0].match.source_type = DP_SOURCE_SAME_IP_OR_LOOPBACK;
    NAMED(1, "external");
    chains[1].match.source_type = DP_SOURCE_EXTERNAL;
    chains[1].match.source_ports = ports;
    chains[1].match.n_source_ports = 1;
    NAMED(2, "external-any-port");
    chains[2].match.source_type = DP_SOURCE_EXTERNAL;
    ck_assert_str_eq(sel(&lis, "10.0.0.1", 1, "127.0.0.1", 1234, NULL, "", NULL, 0)->name, "local");
    ck_assert_str_eq(sel(&lis, "10.0.0.1", 1, "10.0.0.1", 1234, NULL, "", NULL, 0)->name, "local");
    ck_assert_str_eq(sel(&lis, "::1", 1, "::1", 9, NULL, "", NULL, 0)->name, "local");
    ck_assert_str_eq(sel(&lis, "10.0.0.1", 1, "10.0.0.2", 1234, NULL, "", NULL, 0)->name,
                     "external");
    ck_assert_str_eq(sel(&lis, "10.0.0.1", 1, "10.0.0.2", 999, NULL, "", NULL, 0)->name,
                     "external-any-port");
}
END_TEST

START_TEST(test_listener_filter_predicates)
{
    dp_lf_pred_t r1 = {.kind = DP_LF_PRED_DST_PORT_RANGE, .port_start = 100, .port_end = 200};
    dp_lf_pred_t r2 = {.kind = DP_LF_PRED_DST_PORT_RANGE, .port_start = 300, .port_end = 301};
    dp_lf_pred_t both[] = {r1, r2};
    dp_lf_pred_t or = {.kind = DP_LF_PRED_OR, .rules = both, .n_rules = 2};
    dp_lf_pred_t and = {.kind = DP_LF_PRED_AND, .rules = both, .n_rules = 2};
    dp_lf_pred_t not = {.kind = DP_LF_PRED_NOT, .rules = & or, .n_rules = 1};
    dp_lf_pred_t any = {.kind = DP_LF_PRED_ANY};
    ck_assert(dp_lf_pred_match(&r1, 100) && dp_lf_pred_match(&r1, 199) &&
              !dp_lf_pred_match(&r1, 200));
    ck_assert(dp_lf_pred_match(& or, 150) && dp_lf_pred_match(& or, 300) &&
              !dp_lf_pred_match(& or, 250));
    ck_assert(!dp_lf_pred_match(&and, 150) && !dp_lf_pred_match(&and, 300));
    ck_assert(!dp_lf_pred_match(&not, 150) && dp_lf_pred_match(&not, 250));
    ck_assert(dp_lf_pred_match(&any, 1));
}
END_TEST

START_TEST(test_duplicate_chains_refused)
{
    const char *text =
        "{\"name\":\"dup\",\"address\":{\"socket_address\":{\"address\":\"0.0.0.0\",\"port_value\":"
        "1}},"
        "\"filter_chains\":["
        "{\"filter_chain_match\":{\"destination_port\":80,\"server_names\":[\"a.com\",\"b.com\"]}},"
        "{\"filter_chain_match\":{\"destination_port\":80,\"server_names\":[\"c.com\"]}},"
        "{\"filter_chain_match\":{\"destination_port\":80,\"server_names\":[\"B.com\"]}}]}";
    pbjson_opts_t opts = {.resolve = pb_registry_find_type_url};
    ProtobufCMessage *m = NULL;
    ck_assert_int_eq(pbjson_parse(text, strlen(text), "dup",
                                  &envoy__config__listener__v3__listener__descriptor, &opts, &m,
                                  NULL),
                     0);
    Envoy__Config__Listener__V3__Listener *l = (void *)m;
    char *err = NULL;
    ck_assert_int_eq(xds_listener_check(l, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "filter_chains[0] and filter_chains[2]: multiple filter "
                                      "chains with the same matching rules"));
    free(err);
    /* without the third chain: distinct */
    l->n_filter_chains = 2;
    ck_assert_int_eq(xds_listener_check(l, &err), 0);
    l->n_filter_chains = 3;
    protobuf_c_message_free_unpacked(m, NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("filter_chain");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_virtual_inbound);
    tcase_add_test(tc, test_dump_listeners_have_no_duplicate_chains);
    tcase_add_test(tc, test_every_dump_listener);
    tcase_add_test(tc, test_port_beats_ip);
    tcase_add_test(tc, test_longest_prefix);
    tcase_add_test(tc, test_server_names);
    tcase_add_test(tc, test_transport_and_alpn);
    tcase_add_test(tc, test_source_type_and_ports);
    tcase_add_test(tc, test_listener_filter_predicates);
    tcase_add_test(tc, test_duplicate_chains_refused);
    suite_add_tcase(s, tc);
    return check_run(s);
}
