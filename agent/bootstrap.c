#include "agent/bootstrap.h"

#include <arpa/inet.h>
#include <errno.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envoy/extensions/resource_monitors/downstream_connections/v3/downstream_connections.pb-c.h"
#include "protos/registry.h"
#include "xds/pbwire.h"

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
    __attribute__((format(printf, 3, 4)));

static void check_error(pbjson_diag_t *diag, const char *source, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pbjson_diag_add(diag, PBJSON_ERROR, "%s: %s", source, msg);
}

static ProtobufCMessage *copy_message(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL)
        abort();
    protobuf_c_message_pack(m, buf);
    ProtobufCMessage *c = protobuf_c_message_unpack(m->descriptor, NULL, n, buf);
    free(buf);
    if (c == NULL)
        abort();
    return c;
}

static void free_field(const ProtobufCFieldDescriptor *f, void *at)
{
    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        ProtobufCMessage **mp = at;
        if (*mp)
            protobuf_c_message_free_unpacked(*mp, NULL);
        *mp = NULL;
    } else if (f->type == PROTOBUF_C_TYPE_STRING) {
        char **sp = at;
        if (*sp && *sp != (char *)f->default_value && *sp != protobuf_c_empty_string)
            free(*sp);
        *sp = NULL;
    } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
        ProtobufCBinaryData *b = at;
        const ProtobufCBinaryData *def = f->default_value;
        if (b->data && (def == NULL || b->data != def->data))
            free(b->data);
        b->data = NULL;
        b->len = 0;
    }
}

static size_t field_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    default:
        return 4;
    }
}

/* Copies one singular value from src to dst (both point at the field), owning the copy. */
static void copy_value(const ProtobufCFieldDescriptor *f, void *dst, const void *src)
{
    free_field(f, dst);
    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        *(ProtobufCMessage **)dst = copy_message(*(ProtobufCMessage *const *)src);
    } else if (f->type == PROTOBUF_C_TYPE_STRING) {
        *(char **)dst = strdup(*(char *const *)src);
        if (*(char **)dst == NULL)
            abort();
    } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
        const ProtobufCBinaryData *b = src;
        ProtobufCBinaryData *d = dst;
        d->data = malloc(b->len ? b->len : 1);
        if (d->data == NULL)
            abort();
        memcpy(d->data, b->data, b->len);
        d->len = b->len;
    } else {
        memcpy(dst, src, field_size(f));
    }
}

static bool value_is_default(const ProtobufCFieldDescriptor *f, const void *at)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(ProtobufCMessage *const *)at == NULL;
    case PROTOBUF_C_TYPE_STRING: {
        const char *str = *(char *const *)at;
        return str == NULL || str[0] == '\0';
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)at)->len == 0;
    default: {
        static const uint8_t zero[8];
        return memcmp(at, zero, field_size(f)) == 0;
    }
    }
}

/* Protobuf's MergeFrom over protobuf-c messages, as Envoy merges --config-yaml over the file:
 * set scalars replace, messages merge (a oneof member merges when the same member is set on
 * both sides, and replaces the other members otherwise), repeated fields append. */
static void merge_message(ProtobufCMessage *dst, const ProtobufCMessage *src)
{
    const ProtobufCMessageDescriptor *d = src->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        char *db = (char *)dst;
        const char *sb = (const char *)src;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t ns = *(const size_t *)(sb + f->quantifier_offset);
            if (ns == 0)
                continue;
            size_t *nd = (size_t *)(db + f->quantifier_offset);
            size_t sz = field_size(f);
            char *arr = realloc(*(char **)(db + f->offset), (*nd + ns) * sz);
            if (arr == NULL)
                abort();
            const char *sarr = *(char *const *)(sb + f->offset);
            for (size_t k = 0; k < ns; k++) {
                memset(arr + (*nd + k) * sz, 0, sz);
                copy_value(f, arr + (*nd + k) * sz, sarr + k * sz);
            }
            *(char **)(db + f->offset) = arr;
            *nd += ns;
            continue;
        }
        void *dat = db + f->offset;
        const void *sat = sb + f->offset;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t scase = *(const uint32_t *)(sb + f->quantifier_offset);
            uint32_t *dcase = (uint32_t *)(db + f->quantifier_offset);
            if (scase != f->id)
                continue;
            if (*dcase == f->id && f->type == PROTOBUF_C_TYPE_MESSAGE && *(void **)dat) {
                merge_message(*(ProtobufCMessage **)dat, *(ProtobufCMessage *const *)sat);
                continue;
            }
            /* another member was set: it goes */
            for (unsigned j = 0; j < d->n_fields; j++) {
                const ProtobufCFieldDescriptor *o = &d->fields[j];
                if (o->quantifier_offset == f->quantifier_offset && o->id == *dcase &&
                    (o->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
                    free_field(o, db + o->offset);
            }
            memset(dat, 0, field_size(f));
            copy_value(f, dat, sat);
            *dcase = f->id;
            continue;
        }
        if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset &&
            f->type != PROTOBUF_C_TYPE_MESSAGE && f->type != PROTOBUF_C_TYPE_STRING) {
            if (!*(const protobuf_c_boolean *)(sb + f->quantifier_offset))
                continue;
            *(protobuf_c_boolean *)(db + f->quantifier_offset) = 1;
            copy_value(f, dat, sat);
            continue;
        }
        if (value_is_default(f, sat))
            continue;
        if (f->type == PROTOBUF_C_TYPE_MESSAGE && *(void **)dat)
            merge_message(*(ProtobufCMessage **)dat, *(ProtobufCMessage *const *)sat);
        else
            copy_value(f, dat, sat);
    }
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
#define GLOBAL_CX_MONITOR "envoy.resource_monitors.global_downstream_max_connections"
#define GLOBAL_CX_TYPE                                                                  \
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3." \
    "DownstreamConnectionsConfig"

/* overload_manager.resource_monitors[i] when it is the global connection limit's: its
 * max_active_downstream_connections, -1 when its typed_config is not that type or does not
 * decode; 0 when the monitor is another one. */
static int64_t global_cx_monitor(const Envoy__Config__Overload__V3__ResourceMonitor *m)
{
    if (strcmp(m->name, GLOBAL_CX_MONITOR) != 0)
        return 0;
    if (m->config_type_case !=
            ENVOY__CONFIG__OVERLOAD__V3__RESOURCE_MONITOR__CONFIG_TYPE_TYPED_CONFIG ||
        m->typed_config == NULL || strcmp(m->typed_config->type_url, GLOBAL_CX_TYPE) != 0)
        return -1;
    const char *why;
    Envoy__Extensions__ResourceMonitors__DownstreamConnections__V3__DownstreamConnectionsConfig *c =
        (void *)xds_pb_unpack(
            &envoy__extensions__resource_monitors__downstream_connections__v3__downstream_connections_config__descriptor,
            m->typed_config->value.data, m->typed_config->value.len, &why);
    if (c == NULL)
        return -1;
    int64_t v =
        c->max_active_downstream_connections > 0 ? c->max_active_downstream_connections : -1;
    protobuf_c_message_free_unpacked(&c->base, NULL);
    return v;
}

uint64_t agent_bootstrap_global_max_connections(const agent_bootstrap_t *b)
{
    const Envoy__Config__Overload__V3__OverloadManager *om = b->overload_manager;
    for (size_t i = 0; om && i < om->n_resource_monitors; i++) {
        int64_t v = global_cx_monitor(om->resource_monitors[i]);
        if (v > 0)
            return (uint64_t)v;
    }
    return 0;
}

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

    const Envoy__Config__Overload__V3__OverloadManager *om = b->overload_manager;
    for (size_t i = 0; om && i < om->n_resource_monitors; i++) {
        if (global_cx_monitor(om->resource_monitors[i]) < 0)
            check_error(diag, src,
                        "overload_manager.resource_monitors[%zu] (" GLOBAL_CX_MONITOR
                        "): typed_config: must be a " GLOBAL_CX_TYPE
                        " with max_active_downstream_connections above 0",
                        i);
    }

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
            merge_message(&b->base, m);
            agent_bootstrap_free((agent_bootstrap_t *)m);
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
