#include "xds/client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "dataplane/log.h"
#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/endpoint/v3/endpoint.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "envoy/config/route/v3/route.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/secret.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb-c.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "protos/registry.h"
#include "xds/ads.h"
#include "xds/file_source.h"
#include "xds/pbjson.h"
#include "xds/pbwire.h"

/* Istio's own extensions that skiff accepts and passes through until it implements them
 * (README.md lists them). Any other type skiff does not declare is NACKed, unless its HTTP
 * filter is marked is_optional. */
static const char *const passthrough_types[] = {
    /* HBONE (ambient and waypoint) listener and HTTP filters */
    "type.googleapis.com/istio.set_internal_dst_address.v1.Config",
    "type.googleapis.com/io.istio.http.connect_authority.Config",
    "type.googleapis.com/io.istio.http.connect_baggage.Config",
    "type.googleapis.com/io.istio.http.peer_metadata.Config",
    "type.googleapis.com/io.istio.network.authn.Config",
    "type.googleapis.com/istio.telemetry.metadataexchange.v1.MetadataExchange",
};

/* The largest xDS message accepted: far above gRPC's 4 MiB default (Istio's CDS alone can pass
 * it), still a bound on what a control plane can make skiff allocate. */
#define XDS_MAX_MESSAGE_BYTES (128u * 1024 * 1024)

enum { T_CDS, T_EDS, T_LDS, T_RDS, T_SDS, T_COUNT };

static const char *const type_urls[T_COUNT] = {XDS_TYPE_CLUSTER, XDS_TYPE_ENDPOINT,
                                               XDS_TYPE_LISTENER, XDS_TYPE_ROUTE,
                                               XDS_TYPE_SECRET};

/* A secret a cluster or listener needs: its name and where it comes from (the static cluster
 * of an SDS server, or "" for the ADS stream). */
typedef struct sds_ref {
    char *name;
    char *source;
} sds_ref_t;

/* An SDS server (Istio's sds-grpc unix socket): its own state-of-the-world stream. */
typedef struct sds_source {
    char *cluster;
    struct xds_ads *ads;
} sds_source_t;

typedef struct xds_res {
    char *name;
    char *version;
    uint8_t *bytes; /* the resource as received */
    size_t len;
    ProtobufCMessage *msg;
    int64_t last_updated_ms;
    bool warming; /* clusters waiting for endpoints, listeners waiting for routes and secrets */
    sds_ref_t *sds; /* the secrets it references */
    size_t n_sds;
} xds_res_t;

/* A listener whose last update was rejected: Envoy's error_state. */
typedef struct xds_rejected {
    char *name;
    uint8_t *bytes;
    size_t len;
    char *details;
    int64_t attempt_ms;
} xds_rejected_t;

typedef struct xds_store {
    xds_res_t *v;
    size_t n;
    char *version; /* the type's last accepted version_info */
    int64_t last_updated_ms;
    bool received; /* a first response has been applied */
    xds_rejected_t *rej;
    size_t n_rej;
    /* stats: <prefix>.update_attempt, ... */
    dp_counter_t *attempt, *success, *rejected, *failure, *empty;
    dp_gauge_t *version_hash, *update_time;
    dp_textreadout_t *version_text;
} xds_store_t;

struct xds_client {
    uv_loop_t *loop;
    const Envoy__Config__Bootstrap__V3__Bootstrap *bootstrap;
    dp_stats_t *stats;
    xds_client_callbacks_t cb;
    void *userdata;
    xds_ads_t *ads;
    xds_store_t store[T_COUNT];
    bool initialized;
    bool lds_subscribed;
    dp_gauge_t *connected_state;
    dp_gauge_t *active_clusters, *warming_clusters, *total_listeners_active,
        *total_listeners_warming;
    uv_timer_t init_timer;
    uint64_t init_timeout_ms;
    sds_source_t *sds_sources;
    size_t n_sds_sources;
    /* types from files (path_config_source): CDS and LDS from the bootstrap, EDS and RDS from
     * the clusters and listeners that name a file */
    struct file_entry {
        char *path;
        int type;
        xds_file_source_t *src;
    } *files;
    size_t n_files;
    bool started;
    bool sds_over_ads; /* the ADS stream has been asked for secrets */
    /* route configuration -> the stat_prefix of an HTTP connection manager using it, for
     * Envoy's http.<prefix>.rds.<route>.* stats */
    struct rds_prefix {
        char *route, *prefix;
    } *rds_prefix;
    size_t n_rds_prefix;
};

static int64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");
    if (p == NULL)
        abort();
    return p;
}

/* ---- errors: a growing "resource 'x': field: reason; ..." text ---- */

typedef struct errbuf {
    char *text;
    size_t len;
    unsigned count;
} errbuf_t;

static void err_add(errbuf_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void err_add(errbuf_t *e, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    size_t n = strlen(msg);
    char *t = realloc(e->text, e->len + n + 3);
    if (t == NULL)
        abort();
    e->text = t;
    if (e->len) {
        memcpy(e->text + e->len, "; ", 2);
        e->len += 2;
    }
    memcpy(e->text + e->len, msg, n + 1);
    e->len += n;
    e->count++;
}

/* ---- validation: every Any inside a resource must be a type skiff declares, a pass-through
 * Istio type, or the config of an optional HTTP filter ---- */

static bool is_passthrough(const char *type_url)
{
    for (size_t i = 0; i < sizeof(passthrough_types) / sizeof(passthrough_types[0]); i++) {
        if (strcmp(passthrough_types[i], type_url) == 0)
            return true;
    }
    return false;
}

static bool parent_is_optional_filter(const ProtobufCMessage *parent)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(parent->descriptor, "is_optional");
    if (f == NULL || f->type != PROTOBUF_C_TYPE_BOOL)
        return false;
    return *(const protobuf_c_boolean *)((const char *)parent + f->offset);
}

/* The type a failed check names goes into bad[badlen] (copied: it may lie in a nested message
 * that is freed before the check returns), empty when the path says it all. */
typedef struct {
    char *path;
    size_t pathlen;
    char *bad;
    size_t badlen;
} any_check_t;

static int check_anys(const ProtobufCMessage *m, any_check_t *ck, size_t pos, unsigned depth);

static int check_one_any(const ProtobufCMessage *parent, const Google__Protobuf__Any *any,
                         any_check_t *ck, size_t pos, unsigned depth)
{
    if (depth > XDS_PB_MAX_DEPTH)
        return -ELOOP;
    const ProtobufCMessageDescriptor *d = pb_registry_find_type_url(any->type_url);
    if (d == NULL) {
        if (is_passthrough(any->type_url) || parent_is_optional_filter(parent))
            return 0;
        snprintf(ck->bad, ck->badlen, "%s", any->type_url);
        return -ENOENT;
    }
    const char *why = NULL;
    ProtobufCMessage *inner = xds_pb_unpack(d, any->value.data, any->value.len, &why);
    if (inner == NULL) {
        snprintf(ck->bad, ck->badlen, "%s", any->type_url);
        return -EINVAL;
    }
    int rc = check_anys(inner, ck, pos, depth + 1);
    /* A TypedStruct names the real type in its own type_url. */
    if (rc == 0 && strstr(d->name, "TypedStruct") != NULL) {
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field_by_name(d, "type_url");
        const char *inner_url = f ? *(char *const *)((const char *)inner + f->offset) : NULL;
        if (inner_url && inner_url[0] && pb_registry_find_type_url(inner_url) == NULL &&
            !is_passthrough(inner_url) && !parent_is_optional_filter(parent)) {
            ck->bad[0] = '\0';
            rc = -ENOENT;
            snprintf(ck->path + pos, ck->pathlen - pos,
                     ".type_url (TypedStruct of unknown type %s)", inner_url);
        }
    }
    protobuf_c_message_free_unpacked(inner, NULL);
    return rc;
}

/* The sub-messages field f of m holds: *ret_items and the count (0 when the field is unset,
 * or a oneof member that is not the selected one). `one` is scratch space for a singular field. */
static size_t field_messages(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                             const ProtobufCMessage **one, const ProtobufCMessage *const **ret_items)
{
    const char *base = (const char *)m;
    if (f->type != PROTOBUF_C_TYPE_MESSAGE)
        return 0;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        *ret_items = *(const ProtobufCMessage *const *const *)(base + f->offset);
        return *(const size_t *)(base + f->quantifier_offset);
    }
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *(const uint32_t *)(base + f->quantifier_offset) != f->id)
        return 0;
    *one = *(const ProtobufCMessage *const *)(base + f->offset);
    *ret_items = one;
    return *one ? 1 : 0;
}

/* Walks every message field of m; path holds the field path so far (pos its length). */
static int check_anys(const ProtobufCMessage *m, any_check_t *ck, size_t pos, unsigned depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const ProtobufCMessage *one;
        const ProtobufCMessage *const *items;
        size_t count = field_messages(m, f, &one, &items);
        for (size_t k = 0; k < count; k++) {
            const ProtobufCMessage *sub = items[k];
            size_t np =
                pos + (size_t)snprintf(ck->path + pos, ck->pathlen - pos,
                                       f->label == PROTOBUF_C_LABEL_REPEATED ? ".%s[%zu]" : ".%s",
                                       f->name, k);
            if (np >= ck->pathlen)
                np = ck->pathlen - 1;
            int rc;
            if (f->descriptor == &google__protobuf__any__descriptor)
                rc = check_one_any(m, (const Google__Protobuf__Any *)sub, ck, np, depth);
            else
                rc = check_anys(sub, ck, np, depth + 1);
            if (rc < 0)
                return rc;
        }
        ck->path[pos] = '\0';
    }
    return 0;
}

/* Decodes and validates one resource of type t. Returns the message, or NULL with the reason
 * appended to err (naming the resource and the field). *ret_name gets a malloc'd copy of the
 * resource's name whenever it is known, even when the resource is rejected (its last good
 * version must then keep serving). */
static ProtobufCMessage *decode_resource(int t, const xds_ads_resource_t *r, errbuf_t *err,
                                         char **ret_name)
{
    static const ProtobufCMessageDescriptor *const descs[T_COUNT] = {
        &envoy__config__cluster__v3__cluster__descriptor,
        &envoy__config__endpoint__v3__cluster_load_assignment__descriptor,
        &envoy__config__listener__v3__listener__descriptor,
        &envoy__config__route__v3__route_configuration__descriptor,
        &envoy__extensions__transport_sockets__tls__v3__secret__descriptor,
    };
    const char *label = r->name[0] ? r->name : "(unnamed)";
    if (strcmp(r->type_url, type_urls[t]) != 0) {
        err_add(err, "resource '%s': type %s in a %s response", label, r->type_url, type_urls[t]);
        return NULL;
    }
    const char *why = NULL;
    ProtobufCMessage *m = xds_pb_unpack(descs[t], r->data, r->len, &why);
    if (m == NULL) {
        err_add(err, "resource '%s': %s", label, why);
        return NULL;
    }
    const char *name = "";
    switch (t) {
    case T_CDS:
        name = ((Envoy__Config__Cluster__V3__Cluster *)m)->name;
        break;
    case T_EDS:
        name = ((Envoy__Config__Endpoint__V3__ClusterLoadAssignment *)m)->cluster_name;
        break;
    case T_LDS:
        name = ((Envoy__Config__Listener__V3__Listener *)m)->name;
        break;
    case T_RDS:
        name = ((Envoy__Config__Route__V3__RouteConfiguration *)m)->name;
        break;
    case T_SDS:
        name = ((Envoy__Extensions__TransportSockets__Tls__V3__Secret *)m)->name;
        break;
    }
    *ret_name = xstrdup(name);
    if (name[0] == '\0') {
        err_add(err, "resource of type %s: name: must not be empty", type_urls[t]);
        protobuf_c_message_free_unpacked(m, NULL);
        return NULL;
    }
    if (r->name[0] && strcmp(r->name, name) != 0) {
        err_add(err, "resource '%s': name: the resource calls itself '%s'", r->name, name);
        protobuf_c_message_free_unpacked(m, NULL);
        return NULL;
    }
    char path[512] = "", bad[256] = "";
    any_check_t ck = {path, sizeof(path), bad, sizeof(bad)};
    int rc = check_anys(m, &ck, 0, 0);
    if (rc == -ENOENT && bad[0]) {
        err_add(err, "resource '%s': %s: unknown type %s", name, path[0] ? path + 1 : "(root)",
                bad);
    } else if (rc == -ENOENT) {
        err_add(err, "resource '%s': %s", name, path[0] ? path + 1 : "(root)");
    } else if (rc < 0) {
        err_add(err, "resource '%s': %s: cannot decode %s", name, path[0] ? path + 1 : "(root)",
                bad[0] ? bad : "nested message");
    }
    if (rc < 0) {
        protobuf_c_message_free_unpacked(m, NULL);
        return NULL;
    }
    if (t == T_CDS) {
        const Envoy__Config__Cluster__V3__Cluster *c = (void *)m;
        if (c->connect_timeout &&
            (c->connect_timeout->seconds < 0 || c->connect_timeout->nanos < 0)) {
            err_add(err, "resource '%s': connect_timeout: must not be negative", name);
            protobuf_c_message_free_unpacked(m, NULL);
            return NULL;
        }
    }
    return m;
}

int xds_resource_check(const char *type_url, const uint8_t *data, size_t len, char **reterr_msg)
{
    int t = -1;
    for (int i = 0; i < T_COUNT; i++) {
        if (strcmp(type_urls[i], type_url) == 0)
            t = i;
    }
    if (t < 0) {
        *reterr_msg = xstrdup("unknown type");
        return -EINVAL;
    }
    xds_ads_resource_t r = {.name = "", .version = "", .type_url = type_url, .data = data,
                            .len = len};
    errbuf_t err = {0};
    char *name = NULL;
    ProtobufCMessage *m = decode_resource(t, &r, &err, &name);
    free(name);
    if (m == NULL) {
        *reterr_msg = err.text;
        return -EINVAL;
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

/* ---- secrets a resource references (SdsSecretConfig anywhere inside it, through Anys) ---- */

static void sds_ref_add(xds_res_t *r, const char *name, const char *source)
{
    for (size_t i = 0; i < r->n_sds; i++) {
        if (strcmp(r->sds[i].name, name) == 0 && strcmp(r->sds[i].source, source) == 0)
            return;
    }
    sds_ref_t *v = realloc(r->sds, (r->n_sds + 1) * sizeof(*v));
    if (v == NULL)
        abort();
    r->sds = v;
    r->sds[r->n_sds++] = (sds_ref_t){xstrdup(name), xstrdup(source)};
}

static void collect_sds(const ProtobufCMessage *m, unsigned depth, xds_res_t *r)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (depth > XDS_PB_MAX_DEPTH)
        return;
    if (d == &envoy__extensions__transport_sockets__tls__v3__sds_secret_config__descriptor) {
        const Envoy__Extensions__TransportSockets__Tls__V3__SdsSecretConfig *sc = (const void *)m;
        const Envoy__Config__Core__V3__ConfigSource *cs = sc->sds_config;
        const char *source = NULL;
        if (cs == NULL || cs->config_source_specifier_case ==
                              ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_ADS)
            source = "";
        else if (cs->config_source_specifier_case ==
                     ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_API_CONFIG_SOURCE &&
                 cs->api_config_source->n_grpc_services &&
                 cs->api_config_source->grpc_services[0]->target_specifier_case ==
                     ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__TARGET_SPECIFIER_ENVOY_GRPC)
            source = cs->api_config_source->grpc_services[0]->envoy_grpc->cluster_name;
        if (source && sc->name[0])
            sds_ref_add(r, sc->name, source);
        return;
    }
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const ProtobufCMessage *one;
        const ProtobufCMessage *const *items;
        size_t count = field_messages(m, f, &one, &items);
        for (size_t k = 0; k < count; k++) {
            if (f->descriptor != &google__protobuf__any__descriptor) {
                collect_sds(items[k], depth + 1, r);
                continue;
            }
            const Google__Protobuf__Any *any = (const void *)items[k];
            const ProtobufCMessageDescriptor *ad = pb_registry_find_type_url(any->type_url);
            const char *why;
            ProtobufCMessage *inner =
                ad ? xds_pb_unpack(ad, any->value.data, any->value.len, &why) : NULL;
            if (inner) {
                collect_sds(inner, depth + 1, r);
                protobuf_c_message_free_unpacked(inner, NULL);
            }
        }
    }
}

/* ---- stores ---- */

static xds_res_t *store_find(xds_store_t *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->v[i].name, name) == 0)
            return &s->v[i];
    }
    return NULL;
}

static void res_clear(xds_res_t *r)
{
    for (size_t i = 0; i < r->n_sds; i++) {
        free(r->sds[i].name);
        free(r->sds[i].source);
    }
    free(r->sds);
    free(r->name);
    free(r->version);
    free(r->bytes);
    if (r->msg)
        protobuf_c_message_free_unpacked(r->msg, NULL);
}

static void store_remove_at(xds_store_t *s, size_t i)
{
    res_clear(&s->v[i]);
    s->v[i] = s->v[--s->n];
}

static void store_remove(xds_store_t *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->v[i].name, name) == 0) {
            store_remove_at(s, i);
            return;
        }
    }
}

/* Stores (or replaces) a resource, taking ownership of msg. */
static xds_res_t *store_put(xds_store_t *s, const char *name, const char *version,
                            const xds_ads_resource_t *r, ProtobufCMessage *msg)
{
    xds_res_t *e = store_find(s, name);
    if (e == NULL) {
        xds_res_t *v = realloc(s->v, (s->n + 1) * sizeof(*v));
        if (v == NULL)
            abort();
        s->v = v;
        e = &s->v[s->n++];
        memset(e, 0, sizeof(*e));
    } else {
        res_clear(e);
        memset(e, 0, sizeof(*e));
    }
    e->name = xstrdup(name);
    e->version = xstrdup(version);
    e->bytes = malloc(r->len ? r->len : 1);
    if (e->bytes == NULL)
        abort();
    memcpy(e->bytes, r->data, r->len);
    e->len = r->len;
    e->msg = msg;
    e->last_updated_ms = now_ms();
    return e;
}

static void rejected_set(xds_store_t *s, const char *name, const xds_ads_resource_t *r,
                         const char *details)
{
    xds_rejected_t *e = NULL;
    for (size_t i = 0; i < s->n_rej; i++) {
        if (strcmp(s->rej[i].name, name) == 0)
            e = &s->rej[i];
    }
    if (e == NULL) {
        xds_rejected_t *v = realloc(s->rej, (s->n_rej + 1) * sizeof(*v));
        if (v == NULL)
            abort();
        s->rej = v;
        e = &s->rej[s->n_rej++];
        e->name = xstrdup(name);
    } else {
        free(e->bytes);
        free(e->details);
    }
    e->bytes = malloc(r->len ? r->len : 1);
    if (e->bytes == NULL)
        abort();
    memcpy(e->bytes, r->data, r->len);
    e->len = r->len;
    e->details = xstrdup(details);
    e->attempt_ms = now_ms();
}

static void rejected_clear(xds_store_t *s, const char *name)
{
    for (size_t i = 0; i < s->n_rej; i++) {
        if (strcmp(s->rej[i].name, name) == 0) {
            free(s->rej[i].name);
            free(s->rej[i].bytes);
            free(s->rej[i].details);
            s->rej[i] = s->rej[--s->n_rej];
            return;
        }
    }
}

/* ---- references: which EDS and RDS names the active resources need ---- */

static const char *cluster_eds_name(const Envoy__Config__Cluster__V3__Cluster *c)
{
    if (c->cluster_discovery_type_case !=
            ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_DISCOVERY_TYPE_TYPE ||
        c->type != ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__EDS)
        return NULL;
    if (c->eds_cluster_config && c->eds_cluster_config->service_name[0])
        return c->eds_cluster_config->service_name;
    return c->name;
}

static void file_source(xds_client_t *c, int type, const char *path, const char *watch_dir);
static const char *config_file(const Envoy__Config__Core__V3__ConfigSource *cs,
                               const char **ret_watch_dir);

static void listener_rds_names_prefix(const Envoy__Config__Listener__V3__Listener *l,
                                      void (*fn)(void *ud, const char *name),
                                      void (*prefix_fn)(xds_client_t *c, const char *name,
                                                        const char *prefix),
                                      void *ud, xds_client_t *files);

/* Calls fn for every RDS route_config_name; with a client, prefix_fn learns the connection
 * manager's stat_prefix, and RDS sources that name a file get a file source. */
static void listener_rds_names_prefix(const Envoy__Config__Listener__V3__Listener *l,
                                      void (*fn)(void *ud, const char *name),
                                      void (*prefix_fn)(xds_client_t *c, const char *name,
                                                        const char *prefix),
                                      void *ud, xds_client_t *files)
{
    const ProtobufCMessageDescriptor *hcm_desc =
        &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor;
    size_t nchains = l->n_filter_chains + (l->default_filter_chain ? 1 : 0);
    for (size_t i = 0; i < nchains; i++) {
        const Envoy__Config__Listener__V3__FilterChain *fc =
            i < l->n_filter_chains ? l->filter_chains[i] : l->default_filter_chain;
        for (size_t k = 0; k < fc->n_filters; k++) {
            const Envoy__Config__Listener__V3__Filter *f = fc->filters[k];
            if (f->config_type_case !=
                    ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG ||
                f->typed_config == NULL ||
                strcmp(f->typed_config->type_url,
                       "type.googleapis.com/envoy.extensions.filters.network."
                       "http_connection_manager.v3.HttpConnectionManager") != 0)
                continue;
            const char *why;
            Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager
                *hcm = (void *)xds_pb_unpack(hcm_desc, f->typed_config->value.data,
                                             f->typed_config->value.len, &why);
            if (hcm == NULL)
                continue;
            if (hcm->route_specifier_case ==
                    ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_RDS &&
                hcm->rds->route_config_name[0]) {
                fn(ud, hcm->rds->route_config_name);
                if (prefix_fn && files)
                    prefix_fn(files, hcm->rds->route_config_name, hcm->stat_prefix);
                const char *wd, *path = config_file(hcm->rds->config_source, &wd);
                if (path && files)
                    file_source(files, T_RDS, path, wd);
            }
            protobuf_c_message_free_unpacked(&hcm->base, NULL);
        }
    }
}

/* A set of names, each copied (the messages they come from may be freed first). */
typedef struct name_set {
    const char **v;
    size_t n;
} name_set_t;

static void name_set_add(void *ud, const char *name)
{
    name_set_t *s = ud;
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->v[i], name) == 0)
            return;
    }
    const char **v = realloc(s->v, (s->n + 1) * sizeof(*v));
    if (v == NULL)
        abort();
    s->v = v;
    s->v[s->n++] = xstrdup(name);
}

static void name_set_clear(name_set_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        free((char *)s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static bool name_set_has(const name_set_t *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->v[i], name) == 0)
            return true;
    }
    return false;
}

static void update_gauges(xds_client_t *c)
{
    size_t warm = 0, lwarm = 0;
    for (size_t i = 0; i < c->store[T_CDS].n; i++)
        warm += c->store[T_CDS].v[i].warming;
    for (size_t i = 0; i < c->store[T_LDS].n; i++)
        lwarm += c->store[T_LDS].v[i].warming;
    dp_gauge_set(c->active_clusters, c->store[T_CDS].n - warm);
    dp_gauge_set(c->warming_clusters, warm);
    dp_gauge_set(c->total_listeners_active, c->store[T_LDS].n - lwarm);
    dp_gauge_set(c->total_listeners_warming, lwarm);
}

static void maybe_initialized(xds_client_t *c)
{
    if (c->initialized || !c->store[T_CDS].received || !c->store[T_LDS].received)
        return;
    for (size_t i = 0; i < c->store[T_CDS].n; i++) {
        if (c->store[T_CDS].v[i].warming)
            return;
    }
    for (size_t i = 0; i < c->store[T_LDS].n; i++) {
        if (c->store[T_LDS].v[i].warming)
            return;
    }
    c->initialized = true;
    uv_timer_stop(&c->init_timer);
    DP_LOG(DP_LOG_CONFIG, DP_LOG_INFO, "xds: initial configuration applied (%zu clusters, %zu "
                                       "listeners, %zu route configs)",
           c->store[T_CDS].n, c->store[T_LDS].n, c->store[T_RDS].n);
    if (c->cb.on_initialized)
        c->cb.on_initialized(c->userdata);
}

/* The resources that reference secrets: clusters (upstream TLS) and listeners (downstream). */
static const int secret_owners[2] = {T_CDS, T_LDS};

static bool secrets_ready(const xds_client_t *c, const xds_res_t *r)
{
    for (size_t i = 0; i < r->n_sds; i++) {
        if (store_find((xds_store_t *)&c->store[T_SDS], r->sds[i].name) == NULL)
            return false;
    }
    return true;
}

static int cluster_target(const Envoy__Config__Bootstrap__V3__Bootstrap *b, const char *cname,
                          char *buf, size_t len, char **reterr_msg);
static int on_update(void *ud, const xds_ads_update_t *u, char **reterr_msg);

/* The bootstrap's node, packed (as xds_ads_config_t carries it); free() it. */
static uint8_t *pack_node(const Envoy__Config__Bootstrap__V3__Bootstrap *b, size_t *ret_len)
{
    const Envoy__Config__Core__V3__Node *node = b->node;
    *ret_len = node ? protobuf_c_message_get_packed_size(&node->base) : 0;
    uint8_t *buf = malloc(*ret_len + 1);
    if (buf == NULL)
        abort();
    if (node)
        protobuf_c_message_pack(&node->base, buf);
    return buf;
}

/* The SDS stream to a static cluster, started on first use. NULL when the cluster is unknown. */
static sds_source_t *sds_source(xds_client_t *c, const char *cluster)
{
    for (size_t i = 0; i < c->n_sds_sources; i++) {
        if (strcmp(c->sds_sources[i].cluster, cluster) == 0)
            return &c->sds_sources[i];
    }
    char target[1024];
    char *err = NULL;
    if (cluster_target(c->bootstrap, cluster, target, sizeof(target), &err) < 0) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "sds: %s", err ? err : "no target");
        free(err);
        return NULL;
    }
    size_t nlen;
    uint8_t *nbuf = pack_node(c->bootstrap, &nlen);
    xds_ads_config_t cfg = {
        .target = {.target = target, .keepalive_time_ms = 300000, .keepalive_timeout_ms = 20000,
                   .max_receive_bytes = XDS_MAX_MESSAGE_BYTES},
        .delta = false,
        .node = nbuf,
        .node_len = nlen,
        .node_first_only = true,
        .method = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
    };
    static const xds_ads_callbacks_t cb = {.on_update = on_update};
    xds_ads_t *ads = xds_ads_new(c->loop, &cfg, &cb, c);
    free(nbuf);
    if (ads == NULL)
        abort();
    sds_source_t *v = realloc(c->sds_sources, (c->n_sds_sources + 1) * sizeof(*v));
    if (v == NULL)
        abort();
    c->sds_sources = v;
    c->sds_sources[c->n_sds_sources] = (sds_source_t){xstrdup(cluster), ads};
    xds_ads_start(ads);
    DP_LOG(DP_LOG_CONFIG, DP_LOG_INFO, "sds: secrets from cluster %s at %s", cluster, target);
    return &c->sds_sources[c->n_sds_sources++];
}

/* Asks every secret source for the secrets the clusters and listeners reference, and drops
 * the secrets nothing references any more. */
static void refresh_secrets(xds_client_t *c)
{
    name_set_t all = {0};
    for (size_t k = 0; k <= c->n_sds_sources; k++) {
        /* k < n: a dedicated SDS server; k == n: the ADS stream */
        const char *source = k < c->n_sds_sources ? c->sds_sources[k].cluster : "";
        name_set_t names = {0};
        for (size_t o = 0; o < 2; o++) {
            const xds_store_t *st = &c->store[secret_owners[o]];
            for (size_t i = 0; i < st->n; i++) {
                const xds_res_t *r = &st->v[i];
                for (size_t j = 0; j < r->n_sds; j++) {
                    if (strcmp(r->sds[j].source, source) == 0) {
                        name_set_add(&names, r->sds[j].name);
                        name_set_add(&all, r->sds[j].name);
                    }
                }
            }
        }
        if (k < c->n_sds_sources) {
            xds_ads_subscribe(c->sds_sources[k].ads, XDS_TYPE_SECRET, false, names.v, names.n);
        } else if (names.n || c->sds_over_ads) {
            c->sds_over_ads = true;
            xds_ads_subscribe(c->ads, XDS_TYPE_SECRET, false, names.v, names.n);
        }
        name_set_clear(&names);
    }
    for (size_t i = 0; i < c->store[T_SDS].n;) {
        if (!name_set_has(&all, c->store[T_SDS].v[i].name))
            store_remove_at(&c->store[T_SDS], i);
        else
            i++;
    }
    name_set_clear(&all);
}

/* Starts the SDS streams the resources need (before subscribing, so refresh_secrets sees
 * every source). */
static void open_sds_sources(xds_client_t *c)
{
    for (size_t o = 0; o < 2; o++) {
        const xds_store_t *st = &c->store[secret_owners[o]];
        for (size_t i = 0; i < st->n; i++) {
            const xds_res_t *r = &st->v[i];
            for (size_t j = 0; j < r->n_sds; j++) {
                if (r->sds[j].source[0])
                    sds_source(c, r->sds[j].source);
            }
        }
    }
}

static void on_file_error(void *ud, const char *type_url, const char *msg);

/* The file source of a type at path, created (and started, once the client runs) on first
 * use. */
static void file_source(xds_client_t *c, int type, const char *path, const char *watch_dir)
{
    for (size_t i = 0; i < c->n_files; i++) {
        if (c->files[i].type == type && strcmp(c->files[i].path, path) == 0)
            return;
    }
    static const xds_file_callbacks_t fcb = {.on_update = on_update, .on_error = on_file_error};
    struct file_entry *v = realloc(c->files, (c->n_files + 1) * sizeof(*v));
    if (v == NULL)
        abort();
    c->files = v;
    struct file_entry *e = &c->files[c->n_files++];
    e->path = xstrdup(path);
    e->type = type;
    e->src = xds_file_source_new(c->loop, type_urls[type], path, watch_dir, &fcb, c);
    if (c->started)
        xds_file_source_start(e->src);
}

static const char *config_file(const Envoy__Config__Core__V3__ConfigSource *cs,
                               const char **ret_watch_dir);

static void rds_prefix_note(xds_client_t *c, const char *route, const char *prefix)
{
    for (size_t i = 0; i < c->n_rds_prefix; i++) {
        if (strcmp(c->rds_prefix[i].route, route) == 0)
            return;
    }
    struct rds_prefix *v = realloc(c->rds_prefix, (c->n_rds_prefix + 1) * sizeof(*v));
    if (v == NULL)
        abort();
    c->rds_prefix = v;
    c->rds_prefix[c->n_rds_prefix++] = (struct rds_prefix){xstrdup(route), xstrdup(prefix)};
}

/* Envoy keeps EDS, RDS and SDS stats per resource: cluster.<name>.*, http.<stat_prefix>.rds.
 * <route>.* and sds.<secret>.*. */
static void resource_stats(xds_client_t *c, int t, const char *name, bool ok,
                           const char *version)
{
    char prefix[512];
    if (t == T_EDS) {
        snprintf(prefix, sizeof(prefix), "cluster.%s.", name);
    } else if (t == T_SDS) {
        snprintf(prefix, sizeof(prefix), "sds.%s.", name);
    } else if (t == T_RDS) {
        const char *hp = NULL;
        for (size_t i = 0; i < c->n_rds_prefix && !hp; i++) {
            if (strcmp(c->rds_prefix[i].route, name) == 0)
                hp = c->rds_prefix[i].prefix;
        }
        if (hp == NULL)
            return;
        snprintf(prefix, sizeof(prefix), "http.%s.rds.%s.", hp, name);
    } else {
        return;
    }
    char stat[600];
    snprintf(stat, sizeof(stat), "%supdate_attempt", prefix);
    dp_counter_inc(dp_stats_counter(c->stats, stat));
    snprintf(stat, sizeof(stat), "%s%s", prefix, ok ? "update_success" : "update_rejected");
    dp_counter_inc(dp_stats_counter(c->stats, stat));
    if (ok) {
        snprintf(stat, sizeof(stat), "%sversion_text", prefix);
        dp_textreadout_set(dp_stats_textreadout(c->stats, stat), version);
    }
}

static void cinc(dp_counter_t *k)
{
    if (k)
        dp_counter_inc(k);
}

/* Recomputes warming and the EDS/RDS subscriptions from the active clusters and listeners. */
static void refresh_dependencies(xds_client_t *c)
{
    name_set_t eds = {0}, rds = {0};
    open_sds_sources(c);
    refresh_secrets(c);
    for (size_t i = 0; i < c->store[T_CDS].n; i++) {
        xds_res_t *r = &c->store[T_CDS].v[i];
        const Envoy__Config__Cluster__V3__Cluster *cl = (const void *)r->msg;
        const char *en = cluster_eds_name(cl);
        if (en)
            name_set_add(&eds, en);
        const char *wd, *path = en && cl->eds_cluster_config
                                    ? config_file(cl->eds_cluster_config->eds_config, &wd)
                                    : NULL;
        if (path)
            file_source(c, T_EDS, path, wd);
        if (r->warming && (en == NULL || store_find(&c->store[T_EDS], en)) && secrets_ready(c, r))
            r->warming = false;
    }
    for (size_t i = 0; i < c->store[T_LDS].n; i++) {
        xds_res_t *r = &c->store[T_LDS].v[i];
        name_set_t mine = {0};
        listener_rds_names_prefix((const void *)r->msg, name_set_add, rds_prefix_note, &mine, c);
        bool ready = true;
        for (size_t k = 0; k < mine.n; k++) {
            name_set_add(&rds, mine.v[k]);
            if (!store_find(&c->store[T_RDS], mine.v[k]))
                ready = false;
        }
        if (ready && secrets_ready(c, r))
            r->warming = false;
        name_set_clear(&mine);
    }
    /* Drop endpoints and routes nothing references any more. */
    for (size_t i = 0; i < c->store[T_EDS].n;) {
        if (!name_set_has(&eds, c->store[T_EDS].v[i].name))
            store_remove_at(&c->store[T_EDS], i);
        else
            i++;
    }
    for (size_t i = 0; i < c->store[T_RDS].n;) {
        if (!name_set_has(&rds, c->store[T_RDS].v[i].name))
            store_remove_at(&c->store[T_RDS], i);
        else
            i++;
    }
    xds_ads_subscribe(c->ads, XDS_TYPE_ENDPOINT, false, eds.v, eds.n);
    /* LDS once the first CDS and its EDS are in (or their wait timed out), as Envoy does. */
    bool clusters_warm = c->store[T_CDS].received;
    for (size_t i = 0; clusters_warm && i < c->store[T_CDS].n; i++)
        clusters_warm = !c->store[T_CDS].v[i].warming;
    if (clusters_warm && !c->lds_subscribed && c->bootstrap->dynamic_resources->lds_config) {
        c->lds_subscribed = true;
        xds_ads_subscribe(c->ads, XDS_TYPE_LISTENER, true, NULL, 0);
    }
    xds_ads_subscribe(c->ads, XDS_TYPE_ROUTE, false, rds.v, rds.n);
    name_set_clear(&eds);
    name_set_clear(&rds);
    update_gauges(c);
    maybe_initialized(c);
}

/* ---- applying an update ---- */

static int type_index(const char *type_url)
{
    for (int i = 0; i < T_COUNT; i++) {
        if (strcmp(type_urls[i], type_url) == 0)
            return i;
    }
    return -1;
}

static uint64_t version_hash(const char *s)
{
    /* FNV-1a: Envoy's *.version gauge is a hash of version_info. */
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h & 0x7fffffffffffffffull;
}

static int on_update(void *ud, const xds_ads_update_t *u, char **reterr_msg)
{
    xds_client_t *c = ud;
    int t = type_index(u->type_url);
    if (t < 0) {
        *reterr_msg = xstrdup("type not subscribed");
        return -EINVAL;
    }
    xds_store_t *s = &c->store[t];
    cinc(s->attempt);
    uint64_t t0 = uv_hrtime();
    errbuf_t err = {0};
    name_set_t seen = {0};
    char **names = calloc(u->n_resources + 1, sizeof(*names));
    bool *ok = calloc(u->n_resources + 1, sizeof(*ok));
    if (names == NULL || ok == NULL)
        abort();

    for (size_t i = 0; i < u->n_resources; i++) {
        const xds_ads_resource_t *r = &u->resources[i];
        char *name = NULL;
        unsigned before = err.count;
        ProtobufCMessage *m = decode_resource(t, r, &err, &name);
        if (m && name_set_has(&seen, name)) {
            err_add(&err, "resource '%s': duplicate name in one response", name);
            protobuf_c_message_free_unpacked(m, NULL);
            m = NULL;
        }
        if (m == NULL) {
            if (t == T_LDS && name && err.count > before)
                rejected_set(s, name, r, err.text);
            names[i] = name;
            continue;
        }
        names[i] = name;
        ok[i] = true;
        name_set_add(&seen, names[i]);
        xds_res_t *e = store_find(s, name);
        bool same = e && e->len == r->len && memcmp(e->bytes, r->data, r->len) == 0;
        if (same) {
            protobuf_c_message_free_unpacked(m, NULL);
            free(e->version);
            e->version = xstrdup(u->version_info);
            continue;
        }
        e = store_put(s, name, u->version_info, r, m);
        e->warming = t == T_CDS || t == T_LDS; /* until refresh_dependencies clears it */
        if (t == T_CDS || t == T_LDS)
            collect_sds(e->msg, 0, e);
        if (t == T_LDS)
            rejected_clear(s, name);
    }
    /* State of the world for wildcard types: what the response does not name is gone. Named
     * types (EDS, RDS) keep what the response leaves out (istiod sends only new names). */
    if (u->state_of_the_world && (t == T_CDS || t == T_LDS)) {
        for (size_t i = 0; i < s->n;) {
            bool named = false;
            for (size_t k = 0; k < u->n_resources && !named; k++)
                named = names[k] && strcmp(names[k], s->v[i].name) == 0;
            if (!named)
                store_remove_at(s, i);
            else
                i++;
        }
    }
    for (size_t i = 0; i < u->n_removed; i++)
        store_remove(s, u->removed[i]);
    for (size_t i = 0; i < u->n_resources; i++) {
        if (names[i])
            resource_stats(c, t, names[i], ok[i], u->version_info);
        free(names[i]);
    }
    free(names);
    free(ok);
    name_set_clear(&seen);

    /* Dependent resources: a cluster is active once its endpoints are here, a listener once
     * its routes are. */
    if (t == T_EDS) {
        for (size_t i = 0; i < c->store[T_CDS].n; i++) {
            xds_res_t *cl = &c->store[T_CDS].v[i];
            const char *en = cluster_eds_name((const void *)cl->msg);
            if (en && store_find(s, en) && secrets_ready(c, cl))
                cl->warming = false;
        }
    }
    s->received = true;
    refresh_dependencies(c);

    if (c->cb.on_changed)
        c->cb.on_changed(c->userdata);
    if (s->update_time)
        dp_gauge_set(s->update_time, (uv_hrtime() - t0) / 1000000);
    if (u->n_resources == 0 && u->n_removed == 0)
        cinc(s->empty);
    if (err.count) {
        cinc(s->rejected);
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "xds: rejecting part of %s version %s: %s",
               u->type_url, u->version_info, err.text);
        *reterr_msg = err.text;
        return -EINVAL;
    }
    cinc(s->success);
    free(s->version);
    s->version = xstrdup(u->version_info);
    s->last_updated_ms = now_ms();
    if (s->version_hash) {
        dp_gauge_set(s->version_hash, version_hash(u->version_info));
        dp_textreadout_set(s->version_text, u->version_info);
    }
    return 0;
}

static void on_connection(void *ud, bool connected)
{
    xds_client_t *c = ud;
    dp_gauge_set(c->connected_state, connected ? 1 : 0);
    if (connected)
        return;
    /* Envoy's update_failure: fetches lost to a network error, per subscribed type. */
    for (int t = 0; t < T_COUNT; t++) {
        if (t == T_CDS || t == T_LDS ? c->store[t].received : c->store[t].n > 0)
            cinc(c->store[t].failure);
    }
}

static void on_init_timeout(uv_timer_t *t)
{
    xds_client_t *c = t->data;
    if (c->initialized)
        return;
    DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "xds: initial_fetch_timeout passed; going on with what "
                                       "has arrived");
    for (int k = 0; k < T_COUNT; k++) {
        for (size_t i = 0; i < c->store[k].n; i++)
            c->store[k].v[i].warming = false;
        c->store[k].received = true;
    }
    refresh_dependencies(c);
}

/* ---- construction ---- */

static void store_stats(xds_client_t *c, xds_store_t *s, const char *prefix)
{
    char name[256];
#define STAT(field, kind, suffix)                                                                  \
    snprintf(name, sizeof(name), "%s.%s", prefix, suffix);                                        \
    s->field = dp_stats_##kind(c->stats, name)
    STAT(attempt, counter, "update_attempt");
    STAT(success, counter, "update_success");
    STAT(rejected, counter, "update_rejected");
    STAT(failure, counter, "update_failure");
    STAT(empty, counter, "update_empty");
    STAT(version_hash, gauge, "version");
    STAT(update_time, gauge, "update_time");
    STAT(version_text, textreadout, "version_text");
#undef STAT
}

/* The text of an Envoy DataSource (filename, inline_string or inline_bytes), malloc'd, or
 * NULL (with *reterr_msg) when a file cannot be read. */
static char *data_source(const Envoy__Config__Core__V3__DataSource *d, char **reterr_msg)
{
    if (d == NULL)
        return NULL;
    switch (d->specifier_case) {
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING:
        return xstrdup(d->inline_string);
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES: {
        char *p = malloc(d->inline_bytes.len + 1);
        if (p == NULL)
            abort();
        memcpy(p, d->inline_bytes.data, d->inline_bytes.len);
        p[d->inline_bytes.len] = '\0';
        return p;
    }
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_FILENAME: {
        FILE *f = fopen(d->filename, "r");
        if (f == NULL) {
            if (asprintf(reterr_msg, "cannot read %s: %s", d->filename, strerror(errno)) < 0)
                abort();
            return NULL;
        }
        char *buf = NULL;
        size_t cap = 0, n = 0;
        for (;;) {
            if (n + 4096 + 1 > cap) {
                cap = cap ? cap * 2 : 8192;
                char *nb = realloc(buf, cap);
                if (nb == NULL)
                    abort();
                buf = nb;
            }
            size_t r = fread(buf + n, 1, 4096, f);
            n += r;
            if (r == 0 || n > (1 << 20))
                break;
        }
        fclose(f);
        buf[n] = '\0';
        return buf;
    }
    default:
        return NULL;
    }
}

/* The gRPC target of a static cluster: its first endpoint's socket address or pipe. */
static int cluster_target(const Envoy__Config__Bootstrap__V3__Bootstrap *b, const char *cname,
                          char *buf, size_t len, char **reterr_msg)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr = b->static_resources;
    for (size_t i = 0; sr && i < sr->n_clusters; i++) {
        const Envoy__Config__Cluster__V3__Cluster *cl = sr->clusters[i];
        if (strcmp(cl->name, cname) != 0)
            continue;
        const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *la = cl->load_assignment;
        if (la && la->n_endpoints && la->endpoints[0]->n_lb_endpoints) {
            const Envoy__Config__Endpoint__V3__LbEndpoint *lb =
                la->endpoints[0]->lb_endpoints[0];
            const Envoy__Config__Core__V3__Address *a =
                lb->host_identifier_case ==
                        ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT
                    ? lb->endpoint->address
                    : NULL;
            if (a && a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_PIPE) {
                snprintf(buf, len, "unix:%s", a->pipe->path);
                return 0;
            }
            if (a && a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS) {
                const Envoy__Config__Core__V3__SocketAddress *sa = a->socket_address;
                snprintf(buf, len, strchr(sa->address, ':') ? "ipv6:[%s]:%u" : "%s:%u",
                         sa->address, sa->port_value);
                return 0;
            }
        }
        if (asprintf(reterr_msg, "static cluster '%s' has no endpoint address", cname) < 0)
            abort();
        return -EINVAL;
    }
    if (asprintf(reterr_msg, "unknown static cluster '%s'", cname) < 0)
        abort();
    return -EINVAL;
}

/* TLS material and metadata for the ADS channel, owned here. */
typedef struct ads_channel {
    char *root_certs, *cert_chain, *private_key, *access_token;
    const char **metadata; /* key, value pairs pointing into the bootstrap */
    size_t n_metadata;
} ads_channel_t;

static void ads_channel_clear(ads_channel_t *ch)
{
    free(ch->root_certs);
    free(ch->cert_chain);
    free(ch->private_key);
    free(ch->access_token);
    free(ch->metadata);
}

static int ads_target(const Envoy__Config__Bootstrap__V3__Bootstrap *b, char *buf, size_t len,
                      ads_channel_t *ch, char **reterr_msg)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap__DynamicResources *dr = b->dynamic_resources;
    if (dr == NULL || dr->ads_config == NULL || dr->ads_config->n_grpc_services == 0) {
        *reterr_msg = xstrdup("dynamic_resources.ads_config.grpc_services is empty");
        return -EINVAL;
    }
    const Envoy__Config__Core__V3__GrpcService *g = dr->ads_config->grpc_services[0];
    /* initial_metadata: istiod wants ClusterID; pilot-agent adds XDS_HEADER_* ones. */
    ch->metadata = calloc(2 * g->n_initial_metadata + 1, sizeof(*ch->metadata));
    if (ch->metadata == NULL)
        abort();
    for (size_t i = 0; i < g->n_initial_metadata; i++) {
        ch->metadata[2 * i] = g->initial_metadata[i]->key;
        ch->metadata[2 * i + 1] = g->initial_metadata[i]->value;
    }
    ch->n_metadata = g->n_initial_metadata;
    if (g->target_specifier_case ==
        ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__TARGET_SPECIFIER_GOOGLE_GRPC) {
        const Envoy__Config__Core__V3__GrpcService__GoogleGrpc *gg = g->google_grpc;
        snprintf(buf, len, "%s", gg->target_uri);
        const Envoy__Config__Core__V3__GrpcService__GoogleGrpc__ChannelCredentials *cc =
            gg->channel_credentials;
        if (cc && cc->credential_specifier_case ==
                      ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__GOOGLE_GRPC__CHANNEL_CREDENTIALS__CREDENTIAL_SPECIFIER_SSL_CREDENTIALS) {
            const Envoy__Config__Core__V3__GrpcService__GoogleGrpc__SslCredentials *ssl =
                cc->ssl_credentials;
            *reterr_msg = NULL;
            ch->root_certs = data_source(ssl->root_certs, reterr_msg);
            if (ch->root_certs == NULL) {
                if (*reterr_msg == NULL)
                    *reterr_msg = xstrdup("ssl_credentials.root_certs is required");
                return -EINVAL;
            }
            ch->cert_chain = data_source(ssl->cert_chain, reterr_msg);
            ch->private_key = data_source(ssl->private_key, reterr_msg);
            if (*reterr_msg)
                return -EINVAL;
        }
        for (size_t i = 0; i < gg->n_call_credentials; i++) {
            const Envoy__Config__Core__V3__GrpcService__GoogleGrpc__CallCredentials *k =
                gg->call_credentials[i];
            if (k->credential_specifier_case ==
                ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__GOOGLE_GRPC__CALL_CREDENTIALS__CREDENTIAL_SPECIFIER_ACCESS_TOKEN)
                ch->access_token = xstrdup(k->access_token);
        }
        return 0;
    }
    if (g->target_specifier_case !=
        ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__TARGET_SPECIFIER_ENVOY_GRPC) {
        *reterr_msg = xstrdup("dynamic_resources.ads_config.grpc_services[0]: no target");
        return -EINVAL;
    }
    return cluster_target(b, g->envoy_grpc->cluster_name, buf, len, reterr_msg);
}

/* The file a ConfigSource names (path_config_source, or the older path), or NULL. */
static const char *config_file(const Envoy__Config__Core__V3__ConfigSource *cs,
                               const char **ret_watch_dir)
{
    *ret_watch_dir = NULL;
    if (cs == NULL)
        return NULL;
    if (cs->config_source_specifier_case ==
        ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_PATH_CONFIG_SOURCE) {
        if (cs->path_config_source->watched_directory)
            *ret_watch_dir = cs->path_config_source->watched_directory->path;
        return cs->path_config_source->path;
    }
    if (cs->config_source_specifier_case ==
        ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_PATH)
        return cs->path;
    return NULL;
}

static void on_file_error(void *ud, const char *type_url, const char *msg)
{
    xds_client_t *c = ud;
    for (int t = 0; t < T_COUNT; t++) {
        if (strcmp(type_urls[t], type_url) == 0) {
            cinc(c->store[t].attempt);
            cinc(c->store[t].rejected);
        }
    }
    DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "%s (the last good configuration keeps serving)", msg);
}

int xds_client_new(uv_loop_t *loop, const Envoy__Config__Bootstrap__V3__Bootstrap *bootstrap,
                   dp_stats_t *stats, const xds_client_callbacks_t *cb, void *userdata,
                   xds_client_t **ret_client, char **reterr_msg)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap__DynamicResources *dr =
        bootstrap->dynamic_resources;
    const char *cds_dir, *lds_dir;
    const char *cds_file = config_file(dr->cds_config, &cds_dir);
    const char *lds_file = config_file(dr->lds_config, &lds_dir);
    bool need_ads = (dr->cds_config && !cds_file) || (dr->lds_config && !lds_file) ||
                    (!dr->cds_config && !dr->lds_config);
    char target[1024] = "";
    ads_channel_t ch = {0};
    if (need_ads) {
        int rc = ads_target(bootstrap, target, sizeof(target), &ch, reterr_msg);
        if (rc < 0) {
            ads_channel_clear(&ch);
            return rc;
        }
    }

    xds_client_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->loop = loop;
    c->bootstrap = bootstrap;
    c->stats = stats;
    if (cb)
        c->cb = *cb;
    c->userdata = userdata;
    store_stats(c, &c->store[T_CDS], "cluster_manager.cds");
    store_stats(c, &c->store[T_LDS], "listener_manager.lds");
    c->connected_state = dp_stats_gauge(stats, "control_plane.connected_state");
    c->active_clusters = dp_stats_gauge(stats, "cluster_manager.active_clusters");
    c->warming_clusters = dp_stats_gauge(stats, "cluster_manager.warming_clusters");
    c->total_listeners_active = dp_stats_gauge(stats, "listener_manager.total_listeners_active");
    c->total_listeners_warming = dp_stats_gauge(stats, "listener_manager.total_listeners_warming");
    dp_gauge_set(c->connected_state, 0);

    /* initial_fetch_timeout of cds_config (Istio sends 0s: wait for ever). */
    if (dr->cds_config && dr->cds_config->initial_fetch_timeout) {
        c->init_timeout_ms = (uint64_t)dr->cds_config->initial_fetch_timeout->seconds * 1000 +
                             (uint64_t)dr->cds_config->initial_fetch_timeout->nanos / 1000000;
    } else if (dr->cds_config) {
        c->init_timeout_ms = 15000; /* Envoy's default */
    }
    uv_timer_init(loop, &c->init_timer);
    c->init_timer.data = c;

    if (cds_file)
        file_source(c, T_CDS, cds_file, cds_dir);
    if (lds_file) {
        file_source(c, T_LDS, lds_file, lds_dir);
        c->lds_subscribed = true; /* read at once, not after CDS */
    }
    if (!dr->cds_config)
        c->store[T_CDS].received = true;
    if (!dr->lds_config)
        c->store[T_LDS].received = true;

    if (need_ads) {
        const Envoy__Config__Core__V3__ApiConfigSource *ac = dr->ads_config;
        size_t nlen;
        uint8_t *nbuf = pack_node(bootstrap, &nlen);
        xds_ads_config_t acfg = {
            .target = {.target = target,
                       .keepalive_time_ms = 300000,
                       .keepalive_timeout_ms = 20000,
                       .max_receive_bytes = XDS_MAX_MESSAGE_BYTES,
                       .root_certs = ch.root_certs,
                       .cert_chain = ch.cert_chain,
                       .private_key = ch.private_key,
                       .access_token = ch.access_token,
                       .metadata = ch.metadata,
                       .n_metadata = ch.n_metadata},
            .delta =
                ac->api_type == ENVOY__CONFIG__CORE__V3__API_CONFIG_SOURCE__API_TYPE__DELTA_GRPC,
            .node = nbuf,
            .node_len = nlen,
            .node_first_only = ac->set_node_on_first_message_only,
        };
        static const xds_ads_callbacks_t acb = {.on_update = on_update,
                                                .on_connection = on_connection};
        c->ads = xds_ads_new(loop, &acfg, &acb, c);
        free(nbuf);
        if (c->ads == NULL)
            abort();
        /* Envoy's order: CDS first, then EDS for its clusters, LDS, then RDS. */
        if (!cds_file)
            xds_ads_subscribe(c->ads, XDS_TYPE_CLUSTER, true, NULL, 0);
        xds_ads_subscribe(c->ads, XDS_TYPE_ENDPOINT, false, NULL, 0);
        DP_LOG(DP_LOG_CONFIG, DP_LOG_INFO, "xds: ADS (%s) to %s%s",
               acfg.delta ? "delta" : "state of the world", target, ch.root_certs ? " over TLS" : "");
    }
    ads_channel_clear(&ch);
    *ret_client = c;
    return 0;
}

void xds_client_set_token_file(xds_client_t *c, const char *path)
{
    xds_ads_set_token_file(c->ads, path);
}

void xds_client_start(xds_client_t *c)
{
    if (c->init_timeout_ms)
        uv_timer_start(&c->init_timer, on_init_timeout, c->init_timeout_ms, 0);
    c->started = true;
    xds_ads_start(c->ads);
    for (size_t i = 0; i < c->n_files; i++)
        xds_file_source_start(c->files[i].src);
}

size_t xds_client_cluster_count(const xds_client_t *c)
{
    return c->store[T_CDS].n;
}

void xds_client_foreach_cluster(const xds_client_t *c, xds_cluster_fn fn, void *userdata)
{
    const xds_store_t *s = &c->store[T_CDS];
    for (size_t i = 0; i < s->n; i++) {
        const Envoy__Config__Cluster__V3__Cluster *cl = (const void *)s->v[i].msg;
        const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla = cl->load_assignment;
        const char *en = cluster_eds_name(cl);
        if (en) {
            xds_res_t *e = store_find((xds_store_t *)&c->store[T_EDS], en);
            cla = e ? (const void *)e->msg : NULL;
        }
        fn(userdata, cl, cla, true);
    }
}

void xds_client_foreach_listener(const xds_client_t *c, xds_listener_fn fn, void *userdata)
{
    const xds_store_t *s = &c->store[T_LDS];
    for (size_t i = 0; i < s->n; i++) {
        if (!s->v[i].warming)
            fn(userdata, (const void *)s->v[i].msg);
    }
}

void xds_client_foreach_route(const xds_client_t *c, xds_route_fn fn, void *userdata)
{
    const xds_store_t *s = &c->store[T_RDS];
    for (size_t i = 0; i < s->n; i++)
        fn(userdata, (const void *)s->v[i].msg);
}

const char *xds_client_version(const xds_client_t *c, const char *type_url)
{
    int t = type_index(type_url);
    return t >= 0 && c->store[t].version ? c->store[t].version : "";
}

/* ---- /config_dump ---- */

static json_t *any_json(const char *type_url, const uint8_t *bytes, size_t len)
{
    Google__Protobuf__Any any;
    google__protobuf__any__init(&any);
    any.type_url = (char *)type_url;
    any.value.data = (uint8_t *)bytes;
    any.value.len = len;
    pbjson_opts_t jo = {.resolve = pb_registry_find_type_url};
    return pbjson_to_json(&any.base, &jo);
}

static json_t *timestamp_json(int64_t ms)
{
    Google__Protobuf__Timestamp ts;
    google__protobuf__timestamp__init(&ts);
    ts.seconds = ms / 1000;
    ts.nanos = (int32_t)(ms % 1000) * 1000000;
    pbjson_opts_t jo = {0};
    return pbjson_to_json(&ts.base, &jo);
}

static json_t *dynamic_entry(const xds_res_t *r, const char *type_url, const char *field)
{
    json_t *e = json_object();
    json_object_set_new(e, "version_info", json_string(r->version));
    json_object_set_new(e, field, any_json(type_url, r->bytes, r->len));
    json_object_set_new(e, "last_updated", timestamp_json(r->last_updated_ms));
    return e;
}

/* Envoy's ListenersConfigDump error_state of a rejected listener. */
static json_t *error_state_json(const xds_rejected_t *r)
{
    json_t *es = json_object();
    json_object_set_new(es, "failed_configuration", any_json(XDS_TYPE_LISTENER, r->bytes, r->len));
    json_object_set_new(es, "last_update_attempt", timestamp_json(r->attempt_ms));
    json_object_set_new(es, "details", json_string(r->details));
    return es;
}

/* Envoy shows private keys as "[redacted]" (base64 W3JlZGFjdGVkXQ==) in config dumps. */
static void redact_secret(json_t *secret)
{
    static const char *const keys[] = {"private_key", "password"};
    json_t *cert = json_object_get(secret, "tls_certificate");
    for (size_t i = 0; cert && i < sizeof(keys) / sizeof(keys[0]); i++) {
        json_t *ds = json_object_get(cert, keys[i]);
        if (!json_is_object(ds))
            continue;
        json_object_clear(ds);
        json_object_set_new(ds, "inline_bytes", json_string("W3JlZGFjdGVkXQ=="));
    }
}

void xds_client_config_dump(const xds_client_t *c, json_t *clusters, json_t *endpoints,
                            json_t *listeners, json_t *routes, json_t *secrets)
{
    const xds_store_t *s = &c->store[T_CDS];
    if (s->version)
        json_object_set_new(clusters, "version_info", json_string(s->version));
    json_t *active = json_array(), *warming = json_array();
    for (size_t i = 0; i < s->n; i++)
        json_array_append_new(s->v[i].warming ? warming : active,
                              dynamic_entry(&s->v[i], XDS_TYPE_CLUSTER, "cluster"));
    json_object_set_new(clusters, "dynamic_active_clusters", active);
    if (json_array_size(warming))
        json_object_set_new(clusters, "dynamic_warming_clusters", warming);
    else
        json_decref(warming);

    s = &c->store[T_LDS];
    if (s->version)
        json_object_set_new(listeners, "version_info", json_string(s->version));
    json_t *dl = json_array();
    for (size_t i = 0; i < s->n; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(s->v[i].name));
        json_t *st = dynamic_entry(&s->v[i], XDS_TYPE_LISTENER, "listener");
        json_object_set_new(e, s->v[i].warming ? "warming_state" : "active_state", st);
        for (size_t k = 0; k < s->n_rej; k++) {
            if (strcmp(s->rej[k].name, s->v[i].name) == 0)
                json_object_set_new(e, "error_state", error_state_json(&s->rej[k]));
        }
        json_array_append_new(dl, e);
    }
    for (size_t k = 0; k < s->n_rej; k++) {
        bool known = false;
        for (size_t i = 0; i < s->n && !known; i++)
            known = strcmp(s->rej[k].name, s->v[i].name) == 0;
        if (known)
            continue;
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(s->rej[k].name));
        json_object_set_new(e, "error_state", error_state_json(&s->rej[k]));
        json_array_append_new(dl, e);
    }
    json_object_set_new(listeners, "dynamic_listeners", dl);

    s = &c->store[T_RDS];
    json_t *dr = json_array();
    for (size_t i = 0; i < s->n; i++)
        json_array_append_new(dr, dynamic_entry(&s->v[i], XDS_TYPE_ROUTE, "route_config"));
    json_object_set_new(routes, "dynamic_route_configs", dr);

    s = &c->store[T_SDS];
    json_t *ds = json_array();
    for (size_t i = 0; i < s->n; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(s->v[i].name));
        json_object_set_new(e, "version_info", json_string(s->v[i].version));
        json_object_set_new(e, "last_updated", timestamp_json(s->v[i].last_updated_ms));
        json_t *sj = any_json(XDS_TYPE_SECRET, s->v[i].bytes, s->v[i].len);
        redact_secret(sj);
        json_object_set_new(e, "secret", sj);
        json_array_append_new(ds, e);
    }
    json_object_set_new(secrets, "dynamic_active_secrets", ds);

    if (endpoints) {
        s = &c->store[T_EDS];
        json_t *de = json_array();
        for (size_t i = 0; i < s->n; i++)
            json_array_append_new(de,
                                  dynamic_entry(&s->v[i], XDS_TYPE_ENDPOINT, "endpoint_config"));
        json_object_set_new(endpoints, "dynamic_endpoint_configs", de);
    }
}

static void on_init_timer_closed(uv_handle_t *h)
{
    xds_client_t *c = h->data;
    for (int k = 0; k < T_COUNT; k++) {
        xds_store_t *s = &c->store[k];
        for (size_t i = 0; i < s->n; i++)
            res_clear(&s->v[i]);
        free(s->v);
        for (size_t i = 0; i < s->n_rej; i++) {
            free(s->rej[i].name);
            free(s->rej[i].bytes);
            free(s->rej[i].details);
        }
        free(s->rej);
        free(s->version);
    }
    free(c);
}

void xds_client_free(xds_client_t *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n_sds_sources; i++) {
        xds_ads_free(c->sds_sources[i].ads);
        free(c->sds_sources[i].cluster);
    }
    free(c->sds_sources);
    for (size_t i = 0; i < c->n_rds_prefix; i++) {
        free(c->rds_prefix[i].route);
        free(c->rds_prefix[i].prefix);
    }
    free(c->rds_prefix);
    for (size_t i = 0; i < c->n_files; i++) {
        xds_file_source_free(c->files[i].src);
        free(c->files[i].path);
    }
    free(c->files);
    xds_ads_free(c->ads);
    uv_close((uv_handle_t *)&c->init_timer, on_init_timer_closed);
}
