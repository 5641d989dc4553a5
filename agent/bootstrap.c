#include "agent/bootstrap.h"

#include <arpa/inet.h>
#include <errno.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protos/registry.h"

void agent_bootstrap_json_opts(pbjson_opts_t *ret_opts, bool allow_unknown)
{
    *ret_opts = (pbjson_opts_t){
        .allow_unknown = allow_unknown,
        .resolve = pb_registry_find_type_url,
    };
}

void agent_bootstrap_free(agent_bootstrap_t *b)
{
    if (b)
        protobuf_c_message_free_unpacked(&b->base, NULL);
}

static void check_error(pbjson_diag_t *diag, const char *source, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pbjson_diag_add(diag, PBJSON_ERROR, "%s: %s", source, msg);
}

/* Protobuf merge semantics through the wire format: the concatenation of two encodings decodes
 * as the first merged with the second (the MergeFrom Envoy applies to --config-yaml). */
static int merge_into(agent_bootstrap_t **base, agent_bootstrap_t *over)
{
    size_t n1 = protobuf_c_message_get_packed_size(&(*base)->base);
    size_t n2 = protobuf_c_message_get_packed_size(&over->base);
    uint8_t *buf = malloc(n1 + n2 + 1);
    if (buf == NULL)
        return -ENOMEM;
    protobuf_c_message_pack(&(*base)->base, buf);
    protobuf_c_message_pack(&over->base, buf + n1);
    agent_bootstrap_t *merged =
        envoy__config__bootstrap__v3__bootstrap__unpack(NULL, n1 + n2, buf);
    free(buf);
    if (merged == NULL)
        return -ENOMEM;
    agent_bootstrap_free(*base);
    *base = merged;
    return 0;
}

static bool address_ok(const Envoy__Config__Core__V3__Address *a, bool need_ip, char *why,
                       size_t whylen)
{
    if (a == NULL) {
        snprintf(why, whylen, "is missing");
        return false;
    }
    switch (a->address_case) {
    case ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS: {
        const Envoy__Config__Core__V3__SocketAddress *sa = a->socket_address;
        if (sa->address == NULL || sa->address[0] == '\0') {
            snprintf(why, whylen, ".socket_address.address is empty");
            return false;
        }
        if (need_ip && sa->resolver_name[0] == '\0') {
            unsigned char tmp[16];
            if (inet_pton(AF_INET, sa->address, tmp) != 1 &&
                inet_pton(AF_INET6, sa->address, tmp) != 1) {
                snprintf(why, whylen, ".socket_address.address: malformed IP address '%s'",
                         sa->address);
                return false;
            }
        }
        if (sa->port_specifier_case ==
                ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PORT_SPECIFIER_PORT_VALUE &&
            sa->port_value > 65535) {
            snprintf(why, whylen, ".socket_address.port_value %u is over 65535", sa->port_value);
            return false;
        }
        return true;
    }
    case ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_PIPE:
        if (a->pipe->path[0] == '\0') {
            snprintf(why, whylen, ".pipe.path is empty");
            return false;
        }
        return true;
    case ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_ENVOY_INTERNAL_ADDRESS:
        return true;
    default:
        snprintf(why, whylen, "has no socket_address or pipe");
        return false;
    }
}

static const Envoy__Config__Cluster__V3__Cluster *find_static_cluster(const agent_bootstrap_t *b,
                                                                      const char *name)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr = b->static_resources;
    for (size_t i = 0; sr && i < sr->n_clusters; i++) {
        if (strcmp(sr->clusters[i]->name, name) == 0)
            return sr->clusters[i];
    }
    return NULL;
}

static void check_grpc_services(const agent_bootstrap_t *b, const char *path,
                                Envoy__Config__Core__V3__GrpcService **svcs, size_t n,
                                pbjson_diag_t *diag, const char *src)
{
    for (size_t i = 0; i < n; i++) {
        const Envoy__Config__Core__V3__GrpcService *g = svcs[i];
        if (g->target_specifier_case ==
                ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__TARGET_SPECIFIER_ENVOY_GRPC &&
            find_static_cluster(b, g->envoy_grpc->cluster_name) == NULL)
            check_error(diag, src, "%s.grpc_services[%zu].envoy_grpc.cluster_name: unknown static "
                        "cluster '%s'", path, i, g->envoy_grpc->cluster_name);
    }
}

/* The start-up checks Envoy makes on a bootstrap, each naming the field path. */
static void bootstrap_check(const agent_bootstrap_t *b, pbjson_diag_t *diag, const char *src)
{
    char why[256];
    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr = b->static_resources;

    if (b->admin && b->admin->address && !address_ok(b->admin->address, true, why, sizeof(why)))
        check_error(diag, src, "admin.address%s", why);

    for (size_t i = 0; sr && i < sr->n_clusters; i++) {
        const Envoy__Config__Cluster__V3__Cluster *c = sr->clusters[i];
        if (c->name[0] == '\0') {
            check_error(diag, src, "static_resources.clusters[%zu].name: must not be empty", i);
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(sr->clusters[j]->name, c->name) == 0)
                check_error(diag, src,
                            "static_resources.clusters[%zu].name: duplicate cluster name '%s'", i,
                            c->name);
        }
        bool is_static = c->cluster_discovery_type_case ==
                             ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_DISCOVERY_TYPE_TYPE &&
                         c->type == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STATIC;
        const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *la = c->load_assignment;
        for (size_t e = 0; la && e < la->n_endpoints; e++) {
            const Envoy__Config__Endpoint__V3__LocalityLbEndpoints *lle = la->endpoints[e];
            for (size_t k = 0; k < lle->n_lb_endpoints; k++) {
                const Envoy__Config__Endpoint__V3__LbEndpoint *lb = lle->lb_endpoints[k];
                if (lb->host_identifier_case !=
                    ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT)
                    continue;
                if (!address_ok(lb->endpoint->address, is_static, why, sizeof(why)))
                    check_error(diag, src,
                                "static_resources.clusters[%zu] '%s': load_assignment.endpoints[%zu]"
                                ".lb_endpoints[%zu].endpoint.address%s",
                                i, c->name, e, k, why);
            }
        }
    }
    for (size_t i = 0; sr && i < sr->n_listeners; i++) {
        const Envoy__Config__Listener__V3__Listener *l = sr->listeners[i];
        for (size_t j = 0; j < i && l->name[0]; j++) {
            if (strcmp(sr->listeners[j]->name, l->name) == 0)
                check_error(diag, src,
                            "static_resources.listeners[%zu].name: duplicate listener name '%s'",
                            i, l->name);
        }
        if (l->address && !address_ok(l->address, true, why, sizeof(why)))
            check_error(diag, src, "static_resources.listeners[%zu] '%s': address%s", i, l->name,
                        why);
    }

    const Envoy__Config__Bootstrap__V3__Bootstrap__DynamicResources *dr = b->dynamic_resources;
    if (dr && dr->ads_config)
        check_grpc_services(b, "dynamic_resources.ads_config", dr->ads_config->grpc_services,
                            dr->ads_config->n_grpc_services, diag, src);

    const Envoy__Config__Metrics__V3__StatsConfig *sc = b->stats_config;
    for (size_t i = 0; sc && i < sc->n_stats_tags; i++) {
        const Envoy__Config__Metrics__V3__TagSpecifier *t = sc->stats_tags[i];
        if (t->tag_value_case != ENVOY__CONFIG__METRICS__V3__TAG_SPECIFIER__TAG_VALUE_REGEX)
            continue;
        int errcode;
        PCRE2_SIZE erroff;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)t->regex, PCRE2_ZERO_TERMINATED, 0, &errcode,
                                       &erroff, NULL);
        if (re == NULL) {
            PCRE2_UCHAR buf[160];
            pcre2_get_error_message(errcode, buf, sizeof(buf));
            check_error(diag, src, "stats_config.stats_tags[%zu].regex: %s at offset %zu", i,
                        (const char *)buf, (size_t)erroff);
        }
        pcre2_code_free(re);
    }
}

int agent_bootstrap_load(const agent_options_t *opts, agent_bootstrap_t **ret_bootstrap,
                         pbjson_diag_t *diag)
{
    pbjson_opts_t jo;
    agent_bootstrap_json_opts(&jo, opts->allow_unknown_static_fields);
    const ProtobufCMessageDescriptor *desc = &envoy__config__bootstrap__v3__bootstrap__descriptor;
    agent_bootstrap_t *b = NULL;
    const char *src = opts->config_path[0] ? opts->config_path : "--config-yaml";

    if (opts->config_path[0] == '\0' && opts->config_yaml[0] == '\0') {
        check_error(diag, "skiff", "no configuration: give -c/--config-path or --config-yaml");
        return -EINVAL;
    }
    if (opts->config_path[0]) {
        ProtobufCMessage *m = NULL;
        if (pbjson_parse_file(opts->config_path, desc, &jo, &m, diag) < 0)
            return -EINVAL;
        b = (agent_bootstrap_t *)m;
    }
    if (opts->config_yaml[0]) {
        ProtobufCMessage *m = NULL;
        if (pbjson_parse(opts->config_yaml, strlen(opts->config_yaml), "--config-yaml", desc, &jo,
                         &m, diag) < 0) {
            agent_bootstrap_free(b);
            return -EINVAL;
        }
        if (b == NULL) {
            b = (agent_bootstrap_t *)m;
        } else {
            int rc = merge_into(&b, (agent_bootstrap_t *)m);
            agent_bootstrap_free((agent_bootstrap_t *)m);
            if (rc < 0) {
                agent_bootstrap_free(b);
                check_error(diag, src, "out of memory merging --config-yaml");
                return rc;
            }
        }
    }

    bootstrap_check(b, diag, src);
    if (pbjson_diag_count(diag, PBJSON_ERROR) > 0) {
        agent_bootstrap_free(b);
        return -EINVAL;
    }
    *ret_bootstrap = b;
    return 0;
}
