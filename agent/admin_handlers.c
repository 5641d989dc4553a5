/* The admin endpoints, answering as Envoy's admin API does (source/server/admin/ in Envoy):
 * the same paths, parameters, status codes and JSON shapes, since pilot-agent, istioctl,
 * Prometheus and Kiali read them. */
#include "agent/server.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "dataplane/access_log.h"
#include "dataplane/log.h"
#include "envoy/admin/v3/config_dump.pb-c.h"
#include "envoy/admin/v3/server_info.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "protos/registry.h"

#define CT_JSON "application/json"
#define CT_TEXT "text/plain; charset=UTF-8"
#define CT_PROM "text/plain; version=0.0.4; charset=UTF-8"

static void write_json(agent_admin_response_t *resp, json_t *j)
{
    if (j == NULL) {
        resp->status = 500;
        fputs("out of memory\n", resp->body);
        return;
    }
    resp->content_type = CT_JSON;
    char *text = json_dumps(j, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    json_decref(j);
    if (text == NULL) {
        resp->status = 500;
        return;
    }
    fputs(text, resp->body);
    fputc('\n', resp->body);
    free(text);
}

static json_t *message_json(const ProtobufCMessage *m)
{
    pbjson_opts_t jo;
    agent_bootstrap_json_opts(&jo, false);
    return pbjson_to_json(m, &jo);
}

/* ---- /ready ---- */

static void h_ready(const agent_admin_request_t *req, agent_admin_response_t *resp, void *ud)
{
    agent_server_t *s = ud;
    resp->status = s->state == AGENT_STATE_LIVE ? 200 : 503;
    fprintf(resp->body, "%s\n", agent_state_name(s->state));
}

/* ---- /server_info ---- */

static void set_duration(Google__Protobuf__Duration *d, uint64_t ms)
{
    google__protobuf__duration__init(d);
    d->seconds = (int64_t)(ms / 1000);
    d->nanos = (int32_t)(ms % 1000) * 1000000;
}

static void h_server_info(const agent_admin_request_t *req, agent_admin_response_t *resp,
                          void *ud)
{
    agent_server_t *s = ud;
    const agent_options_t *o = &s->opts;
    Envoy__Admin__V3__CommandLineOptions clo;
    Google__Protobuf__Duration flush, drain, parent, up_cur, up_all;
    envoy__admin__v3__command_line_options__init(&clo);
    set_duration(&flush, o->file_flush_interval_msec);
    set_duration(&drain, (uint64_t)o->drain_time_s * 1000);
    set_duration(&parent, (uint64_t)o->parent_shutdown_time_s * 1000);
    clo.base_id = o->base_id;
    clo.use_dynamic_base_id = o->use_dynamic_base_id;
    clo.concurrency = o->concurrency;
    clo.config_path = (char *)o->config_path;
    clo.config_yaml = (char *)o->config_yaml;
    clo.allow_unknown_static_fields = o->allow_unknown_static_fields;
    clo.reject_unknown_dynamic_fields = o->reject_unknown_dynamic_fields;
    clo.ignore_unknown_dynamic_fields = o->ignore_unknown_dynamic_fields;
    clo.admin_address_path = (char *)o->admin_address_path;
    clo.local_address_ip_version =
        (Envoy__Admin__V3__CommandLineOptions__IpVersion)o->local_address_ip_version;
    clo.log_level = (char *)o->log_level;
    clo.component_log_level = (char *)o->component_log_level;
    clo.log_format = (char *)o->log_format;
    clo.log_format_escaped = o->log_format_escaped;
    clo.log_path = (char *)o->log_path;
    clo.service_cluster = (char *)o->service_cluster;
    clo.service_node = (char *)o->service_node;
    clo.service_zone = (char *)o->service_zone;
    clo.file_flush_interval = &flush;
    clo.drain_time = &drain;
    clo.drain_strategy = (Envoy__Admin__V3__CommandLineOptions__DrainStrategy)o->drain_strategy;
    clo.parent_shutdown_time = &parent;
    clo.mode = (Envoy__Admin__V3__CommandLineOptions__Mode)o->mode;
    clo.disable_hot_restart = o->disable_hot_restart;
    clo.restart_epoch = o->restart_epoch;
    clo.enable_core_dump = o->enable_core_dump;

    uint64_t up = uv_now(&s->loop) - s->start_ms;
    set_duration(&up_cur, up - up % 1000);
    set_duration(&up_all, up - up % 1000);

    Envoy__Admin__V3__ServerInfo si;
    envoy__admin__v3__server_info__init(&si);
    si.version = (char *)agent_version_string();
    si.state = (Envoy__Admin__V3__ServerInfo__State)s->state;
    si.hot_restart_version = "disabled";
    si.uptime_current_epoch = &up_cur;
    si.uptime_all_epochs = &up_all;
    si.command_line_options = &clo;
    si.node = s->bootstrap->node;
    json_t *j = message_json(&si.base);
    /* Envoy prints /server_info with its default values too (state LIVE is enum 0, which the
     * proto3 mapping leaves out): put the state right after the version. */
    json_t *out = j ? json_object() : NULL;
    if (out) {
        json_object_set(out, "version", json_object_get(j, "version"));
        json_object_set_new(out, "state", json_string(agent_state_name(s->state)));
        json_object_update_missing(out, j);
        json_decref(j);
    }
    write_json(resp, out);
}

/* ---- /config_dump ---- */

/* Packs m into a freshly allocated Any. */
static Google__Protobuf__Any *pack_any(const ProtobufCMessage *m)
{
    Google__Protobuf__Any *any = calloc(1, sizeof(*any));
    if (any == NULL)
        return NULL;
    google__protobuf__any__init(any);
    size_t n = protobuf_c_message_get_packed_size(m);
    any->value.data = malloc(n ? n : 1);
    if (asprintf(&any->type_url, "type.googleapis.com/%s", m->descriptor->name) < 0 ||
        any->value.data == NULL) {
        free(any->value.data);
        free(any);
        return NULL;
    }
    any->value.len = protobuf_c_message_pack(m, any->value.data);
    return any;
}

static void free_any(Google__Protobuf__Any *any)
{
    if (any) {
        free(any->type_url);
        free(any->value.data);
        free(any);
    }
}

static void set_timestamp_ms(Google__Protobuf__Timestamp *ts, int64_t ms)
{
    google__protobuf__timestamp__init(ts);
    ts->seconds = ms / 1000;
    ts->nanos = (int32_t)(ms % 1000) * 1000000;
}

/* Keeps only the fields a FieldMask names ("a,b.c"), as Envoy trims each config with
 * ?mask=. A path "a.b" keeps field a, trimmed to its field b. */
static void json_apply_mask(json_t *obj, const char *mask)
{
    const char *key;
    json_t *val;
    void *tmp;
    json_object_foreach_safe(obj, tmp, key, val)
    {
        if (strcmp(key, "@type") == 0)
            continue;
        size_t klen = strlen(key);
        bool keep = false;
        json_t *sub_paths = NULL;
        const char *p = mask;
        while (*p) {
            const char *end = strchr(p, ',');
            size_t len = end ? (size_t)(end - p) : strlen(p);
            if (len == klen && strncmp(p, key, klen) == 0) {
                keep = true;
                json_decref(sub_paths);
                sub_paths = NULL;
                break;
            }
            if (len > klen && strncmp(p, key, klen) == 0 && p[klen] == '.') {
                keep = true;
                if (sub_paths == NULL)
                    sub_paths = json_array();
                json_array_append_new(sub_paths, json_stringn(p + klen + 1, len - klen - 1));
            }
            p += len + (end ? 1 : 0);
        }
        if (!keep) {
            json_object_del(obj, key);
            continue;
        }
        if (sub_paths) {
            /* Rebuild a sub-mask "x,y" for the nested object(s). */
            size_t i;
            json_t *sp;
            size_t total = 1;
            json_array_foreach(sub_paths, i, sp) total += json_string_length(sp) + 1;
            char *sub = calloc(1, total);
            if (sub) {
                json_array_foreach(sub_paths, i, sp)
                {
                    if (i)
                        strcat(sub, ",");
                    strcat(sub, json_string_value(sp));
                }
                if (json_is_object(val)) {
                    json_apply_mask(val, sub);
                } else if (json_is_array(val)) {
                    size_t ai;
                    json_t *el;
                    json_array_foreach(val, ai, el)
                    {
                        if (json_is_object(el))
                            json_apply_mask(el, sub);
                    }
                }
                free(sub);
            }
            json_decref(sub_paths);
        }
    }
}

/* ?resource=<field>: every element of that repeated field of each config, each as its own
 * entry typed with the element's message type, as Envoy answers it. */
static void config_dump_resource(json_t *configs, const char *resource, const char *mask,
                                 json_t *out)
{
    size_t i;
    json_t *cfg;
    json_array_foreach(configs, i, cfg)
    {
        const char *type_url = json_string_value(json_object_get(cfg, "@type"));
        const ProtobufCMessageDescriptor *d = type_url ? pb_registry_find_type_url(type_url) : NULL;
        const ProtobufCFieldDescriptor *f = d ? protobuf_c_message_descriptor_get_field_by_name(
                                                    d, resource)
                                              : NULL;
        json_t *arr = json_object_get(cfg, resource);
        if (f == NULL || f->label != PROTOBUF_C_LABEL_REPEATED ||
            f->type != PROTOBUF_C_TYPE_MESSAGE || !json_is_array(arr))
            continue;
        const ProtobufCMessageDescriptor *ed = f->descriptor;
        size_t ai;
        json_t *el;
        json_array_foreach(arr, ai, el)
        {
            json_t *entry = json_object();
            char *url = NULL;
            if (asprintf(&url, "type.googleapis.com/%s", ed->name) < 0)
                continue;
            json_object_set_new(entry, "@type", json_string(url));
            free(url);
            json_object_update(entry, el);
            if (mask)
                json_apply_mask(entry, mask);
            json_array_append_new(out, entry);
        }
    }
}

static json_t *section(const char *type)
{
    json_t *o = json_object();
    char url[160];
    snprintf(url, sizeof(url), "type.googleapis.com/envoy.admin.v3.%s", type);
    json_object_set_new(o, "@type", json_string(url));
    return o;
}

/* {"<field>": <message as JSON with its @type>, "last_updated": ...}: a static entry. */
static json_t *static_entry(const char *field, const ProtobufCMessage *m, int64_t ms)
{
    json_t *e = json_object();
    json_t *mj = message_json(m);
    json_t *typed = json_object();
    char url[200];
    snprintf(url, sizeof(url), "type.googleapis.com/%s", m->descriptor->name);
    json_object_set_new(typed, "@type", json_string(url));
    if (mj)
        json_object_update(typed, mj);
    json_decref(mj);
    json_object_set_new(e, field, typed);
    Google__Protobuf__Timestamp ts;
    set_timestamp_ms(&ts, ms);
    json_object_set_new(e, "last_updated", message_json(&ts.base));
    return e;
}

/* The sections after the bootstrap, in Envoy's order: clusters, endpoints (include_eds),
 * listeners, scoped routes, routes, secrets. Static resources come from the bootstrap. */
static void config_dump_sections(agent_server_t *s, bool include_eds, json_t *configs)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr =
        s->bootstrap->static_resources;
    json_t *clusters = section("ClustersConfigDump");
    json_t *endpoints = include_eds ? section("EndpointsConfigDump") : NULL;
    json_t *listeners = section("ListenersConfigDump");
    json_t *routes = section("RoutesConfigDump");
    json_t *secrets = section("SecretsConfigDump");
    json_t *sc = json_array(), *se = json_array(), *sl = json_array();
    for (size_t i = 0; sr && i < sr->n_clusters; i++) {
        json_array_append_new(sc, static_entry("cluster", &sr->clusters[i]->base,
                                               s->start_unix_ms));
        if (endpoints && sr->clusters[i]->load_assignment)
            json_array_append_new(se, static_entry("endpoint_config",
                                                   &sr->clusters[i]->load_assignment->base,
                                                   s->start_unix_ms));
    }
    for (size_t i = 0; sr && i < sr->n_listeners; i++)
        json_array_append_new(sl, static_entry("listener", &sr->listeners[i]->base,
                                               s->start_unix_ms));
    json_object_set_new(clusters, "static_clusters", sc);
    json_object_set_new(listeners, "static_listeners", sl);
    if (endpoints)
        json_object_set_new(endpoints, "static_endpoint_configs", se);
    else
        json_decref(se);
    if (s->xds)
        xds_client_config_dump(s->xds, clusters, endpoints, listeners, routes, secrets);
    json_array_append_new(configs, clusters);
    if (endpoints)
        json_array_append_new(configs, endpoints);
    json_array_append_new(configs, listeners);
    json_array_append_new(configs, section("ScopedRoutesConfigDump"));
    json_array_append_new(configs, routes);
    json_array_append_new(configs, secrets);
}

static void h_config_dump(const agent_admin_request_t *req, agent_admin_response_t *resp,
                          void *ud)
{
    agent_server_t *s = ud;
    const char *mask = NULL, *resource = NULL, *include_eds = NULL;
    agent_admin_param(req, "mask", &mask);
    agent_admin_param(req, "resource", &resource);
    bool eds = agent_admin_param(req, "include_eds", &include_eds) &&
               (include_eds == NULL || strcmp(include_eds, "false") != 0);

    Envoy__Admin__V3__BootstrapConfigDump bcd;
    Google__Protobuf__Timestamp ts;
    envoy__admin__v3__bootstrap_config_dump__init(&bcd);
    set_timestamp_ms(&ts, s->start_unix_ms);
    bcd.bootstrap = s->bootstrap;
    bcd.last_updated = &ts;

    Google__Protobuf__Any *anys[1] = {pack_any(&bcd.base)};
    Envoy__Admin__V3__ConfigDump cd;
    envoy__admin__v3__config_dump__init(&cd);
    cd.configs = anys;
    cd.n_configs = 1;
    json_t *j = anys[0] ? message_json(&cd.base) : NULL;
    free_any(anys[0]);
    if (j == NULL) {
        write_json(resp, NULL);
        return;
    }
    json_t *configs = json_object_get(j, "configs");
    if (!json_is_array(configs)) {
        json_object_set_new(j, "configs", json_array());
        configs = json_object_get(j, "configs");
    }
    config_dump_sections(s, eds, configs);
    if (resource && resource[0]) {
        json_t *out = json_array();
        config_dump_resource(configs, resource, mask, out);
        json_object_set_new(j, "configs", out);
    } else if (mask && mask[0]) {
        size_t i;
        json_t *cfg;
        json_array_foreach(configs, i, cfg) json_apply_mask(cfg, mask);
    }
    write_json(resp, j);
}

/* ---- /clusters and /listeners (the bootstrap's static resources) ---- */

static void sockaddr_text(const Envoy__Config__Core__V3__Address *a, char *buf, size_t len)
{
    buf[0] = '\0';
    if (a == NULL)
        return;
    if (a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS) {
        const Envoy__Config__Core__V3__SocketAddress *sa = a->socket_address;
        snprintf(buf, len, strchr(sa->address, ':') ? "[%s]:%u" : "%s:%u", sa->address,
                 sa->port_value);
    } else if (a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_PIPE) {
        snprintf(buf, len, "%s", a->pipe->path);
    }
}

static json_t *address_json(const Envoy__Config__Core__V3__Address *a)
{
    return a ? message_json(&a->base) : json_object();
}

/* Envoy's circuit-breaker defaults, shown per priority in /clusters. */
static void clusters_text_thresholds(FILE *out, const Envoy__Config__Cluster__V3__Cluster *c)
{
    static const char *prio[] = {"default_priority", "high_priority"};
    for (int p = 0; p < 2; p++) {
        uint32_t mc = 1024, mp = 1024, mr = 1024, rt = 3;
        const Envoy__Config__Cluster__V3__CircuitBreakers *cb = c->circuit_breakers;
        for (size_t i = 0; cb && i < cb->n_thresholds; i++) {
            const Envoy__Config__Cluster__V3__CircuitBreakers__Thresholds *t = cb->thresholds[i];
            if ((int)t->priority != p)
                continue;
            if (t->max_connections)
                mc = t->max_connections->value;
            if (t->max_pending_requests)
                mp = t->max_pending_requests->value;
            if (t->max_requests)
                mr = t->max_requests->value;
            if (t->max_retries)
                rt = t->max_retries->value;
        }
        fprintf(out, "%s::%s::max_connections::%u\n", c->name, prio[p], mc);
        fprintf(out, "%s::%s::max_pending_requests::%u\n", c->name, prio[p], mp);
        fprintf(out, "%s::%s::max_requests::%u\n", c->name, prio[p], mr);
        fprintf(out, "%s::%s::max_retries::%u\n", c->name, prio[p], rt);
    }
}

typedef struct cluster_out {
    FILE *text;     /* text format, or NULL */
    json_t *status; /* cluster_statuses array for ?format=json, or NULL */
} cluster_out_t;

/* One cluster of /clusters, with the hosts of its load assignment. */
static void write_cluster(void *ud, const Envoy__Config__Cluster__V3__Cluster *c,
                          const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *la,
                          bool added_via_api)
{
    cluster_out_t *o = ud;
    FILE *out = o->text;
    const char *obs = c->alt_stat_name[0] ? c->alt_stat_name : c->name;
    json_t *hosts = o->status ? json_array() : NULL;
    if (out) {
        fprintf(out, "%s::observability_name::%s\n", c->name, obs);
        clusters_text_thresholds(out, c);
        fprintf(out, "%s::added_via_api::%s\n", c->name, added_via_api ? "true" : "false");
    }
    for (size_t e = 0; la && e < la->n_endpoints; e++) {
        const Envoy__Config__Endpoint__V3__LocalityLbEndpoints *lle = la->endpoints[e];
        const Envoy__Config__Core__V3__Locality *loc = lle->locality;
        for (size_t k = 0; k < lle->n_lb_endpoints; k++) {
            const Envoy__Config__Endpoint__V3__LbEndpoint *lb = lle->lb_endpoints[k];
            if (lb->host_identifier_case !=
                ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT)
                continue;
            uint32_t weight = lb->load_balancing_weight ? lb->load_balancing_weight->value : 1;
            static const char *const health_names[] = {"UNKNOWN", "HEALTHY", "UNHEALTHY",
                                                       "DRAINING", "TIMEOUT", "DEGRADED"};
            unsigned hs = (unsigned)lb->health_status < 6 ? (unsigned)lb->health_status : 0;
            /* EDS UNKNOWN counts as healthy, as in Envoy. */
            const char *eds_health = hs == 0 ? "HEALTHY" : health_names[hs];
            if (hosts) {
                json_t *h = json_object();
                json_object_set_new(h, "address", address_json(lb->endpoint->address));
                json_object_set_new(h, "stats", json_array());
                json_t *hsj = json_object();
                json_object_set_new(hsj, "eds_health_status", json_string(eds_health));
                json_object_set_new(h, "health_status", hsj);
                json_object_set_new(h, "weight", json_integer(weight));
                json_object_set_new(h, "locality", loc ? message_json(&loc->base) : json_object());
                if (lb->endpoint->hostname[0])
                    json_object_set_new(h, "hostname", json_string(lb->endpoint->hostname));
                json_object_set_new(h, "priority", json_integer(lle->priority));
                json_array_append_new(hosts, h);
                continue;
            }
            char addr[300];
            sockaddr_text(lb->endpoint->address, addr, sizeof(addr));
            static const char *zero_stats[] = {
                "cx_active", "cx_connect_fail", "cx_total", "rq_active",
                "rq_error",  "rq_success",      "rq_timeout", "rq_total",
            };
            for (size_t z = 0; z < sizeof(zero_stats) / sizeof(zero_stats[0]); z++)
                fprintf(out, "%s::%s::%s::0\n", c->name, addr, zero_stats[z]);
            fprintf(out, "%s::%s::hostname::%s\n", c->name, addr, lb->endpoint->hostname);
            fprintf(out, "%s::%s::health_flags::%s\n", c->name, addr,
                    hs == 0 || hs == 1 ? "healthy" : "/failed_eds_health");
            fprintf(out, "%s::%s::weight::%u\n", c->name, addr, weight);
            fprintf(out, "%s::%s::region::%s\n", c->name, addr, loc ? loc->region : "");
            fprintf(out, "%s::%s::zone::%s\n", c->name, addr, loc ? loc->zone : "");
            fprintf(out, "%s::%s::sub_zone::%s\n", c->name, addr, loc ? loc->sub_zone : "");
            fprintf(out, "%s::%s::canary::false\n", c->name, addr);
            fprintf(out, "%s::%s::priority::%u\n", c->name, addr, lle->priority);
            fprintf(out, "%s::%s::success_rate::-1\n", c->name, addr);
            fprintf(out, "%s::%s::local_origin_success_rate::-1\n", c->name, addr);
        }
    }
    if (o->status) {
        json_t *cs = json_object();
        json_object_set_new(cs, "name", json_string(c->name));
        json_object_set_new(cs, "added_via_api", json_boolean(added_via_api));
        json_object_set_new(cs, "host_statuses", hosts);
        json_object_set_new(cs, "observability_name", json_string(obs));
        json_array_append_new(o->status, cs);
    }
}

/* /clusters: the bootstrap's static clusters, then those from CDS (with their EDS hosts). */
static void h_clusters(const agent_admin_request_t *req, agent_admin_response_t *resp, void *ud)
{
    agent_server_t *s = ud;
    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr =
        s->bootstrap->static_resources;
    const char *format = NULL;
    agent_admin_param(req, "format", &format);
    bool json = format && strcmp(format, "json") == 0;
    cluster_out_t o = {.text = json ? NULL : resp->body, .status = json ? json_array() : NULL};

    if (!json)
        fprintf(resp->body, "version_info::%s\n",
                s->xds ? xds_client_version(s->xds, XDS_TYPE_CLUSTER) : "static");
    for (size_t i = 0; sr && i < sr->n_clusters; i++)
        write_cluster(&o, sr->clusters[i], sr->clusters[i]->load_assignment, false);
    if (s->xds)
        xds_client_foreach_cluster(s->xds, write_cluster, &o);
    if (json) {
        json_t *j = json_object();
        json_object_set_new(j, "cluster_statuses", o.status);
        write_json(resp, j);
    }
}

typedef struct listener_out {
    FILE *text;
    json_t *status;
} listener_out_t;

static void write_listener(void *ud, const Envoy__Config__Listener__V3__Listener *l)
{
    listener_out_t *o = ud;
    if (o->status) {
        json_t *ls = json_object();
        json_object_set_new(ls, "name", json_string(l->name));
        json_object_set_new(ls, "local_address", address_json(l->address));
        json_array_append_new(o->status, ls);
    } else {
        char addr[300];
        sockaddr_text(l->address, addr, sizeof(addr));
        fprintf(o->text, "%s::%s\n", l->name, addr);
    }
}

/* /listeners: the bootstrap's static listeners, then the active ones from LDS. */
static void h_listeners(const agent_admin_request_t *req, agent_admin_response_t *resp, void *ud)
{
    agent_server_t *s = ud;
    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr =
        s->bootstrap->static_resources;
    const char *format = NULL;
    agent_admin_param(req, "format", &format);
    bool json = format && strcmp(format, "json") == 0;
    listener_out_t o = {.text = resp->body, .status = json ? json_array() : NULL};
    for (size_t i = 0; sr && i < sr->n_listeners; i++)
        write_listener(&o, sr->listeners[i]);
    if (s->xds)
        xds_client_foreach_listener(s->xds, write_listener, &o);
    if (json) {
        json_t *j = json_object();
        json_object_set_new(j, "listener_statuses", o.status);
        write_json(resp, j);
    }
}

/* ---- state changes ---- */

static void after_quit(void *ud)
{
    agent_server_shutdown(ud, 0);
}

static void h_quitquitquit(const agent_admin_request_t *req, agent_admin_response_t *resp,
                           void *ud)
{
    agent_server_t *s = ud;
    fputs("OK\n", resp->body);
    resp->close_after = true;
    DP_LOG(DP_LOG_ADMIN, DP_LOG_INFO, "shutting down from admin handle");
    agent_admin_after_response(s->admin, after_quit, s);
}

static void h_healthcheck_fail(const agent_admin_request_t *req, agent_admin_response_t *resp,
                               void *ud)
{
    agent_server_t *s = ud;
    s->healthcheck_failed = true;
    agent_server_refresh_stats(s);
    fputs("OK\n", resp->body);
}

static void h_healthcheck_ok(const agent_admin_request_t *req, agent_admin_response_t *resp,
                             void *ud)
{
    agent_server_t *s = ud;
    s->healthcheck_failed = false;
    agent_server_refresh_stats(s);
    fputs("OK\n", resp->body);
}

/* POST /drain_listeners[?inboundonly][&graceful][&skip_exit], as pilot-agent sends it on
 * SIGTERM. skiff never exits by itself after a drain, so skip_exit changes nothing. */
static void h_drain_listeners(const agent_admin_request_t *req, agent_admin_response_t *resp,
                              void *ud)
{
    agent_server_t *s = ud;
    agent_server_drain_listeners(s, agent_admin_param(req, "inboundonly", NULL),
                                 agent_admin_param(req, "graceful", NULL));
    fputs("OK\n", resp->body);
}

static void h_reopen_logs(const agent_admin_request_t *req, agent_admin_response_t *resp,
                          void *ud)
{
    dp_log_reopen();
    dp_access_log_reopen();
    fputs("OK\n", resp->body);
}

static void h_help(const agent_admin_request_t *req, agent_admin_response_t *resp, void *ud)
{
    agent_server_t *s = ud;
    agent_admin_write_help(s->admin, resp->body);
}

static void h_memory(const agent_admin_request_t *req, agent_admin_response_t *resp, void *ud)
{
    agent_server_t *s = ud;
    agent_server_refresh_stats(s);
    struct mallinfo2 mi = mallinfo2();
    json_t *j = json_object();
    char num[32];
    snprintf(num, sizeof(num), "%zu", mi.uordblks + mi.hblkhd);
    json_object_set_new(j, "allocated", json_string(num));
    snprintf(num, sizeof(num), "%zu", mi.arena + mi.hblkhd);
    json_object_set_new(j, "heap_size", json_string(num));
    snprintf(num, sizeof(num), "%zu", mi.fordblks);
    json_object_set_new(j, "pageheap_unmapped", json_string("0"));
    json_object_set_new(j, "pageheap_free", json_string(num));
    json_object_set_new(j, "total_thread_cache", json_string("0"));
    snprintf(num, sizeof(num), "%" PRIu64, dp_gauge_value(s->g_mem_physical));
    json_object_set_new(j, "total_physical_bytes", json_string(num));
    write_json(resp, j);
}

void agent_admin_handlers_register(agent_server_t *s)
{
    agent_admin_t *a = s->admin;
    agent_admin_add(a, "/", "this list of admin commands", false, false, h_help, s);
    agent_admin_add(a, "/help", "print out list of admin commands", false, false, h_help, s);
    agent_admin_add(a, "/ready", "print server state, return 200 if LIVE, otherwise return 503",
                    false, false, h_ready, s);
    agent_admin_add(a, "/server_info", "print server version/status information", false, false,
                    h_server_info, s);
    agent_admin_add(a, "/config_dump",
                    "dump current Envoy configs (experimental); params: resource, mask", false,
                    false, h_config_dump, s);
    agent_admin_add(a, "/clusters", "upstream cluster status; param: format=json", false, false,
                    h_clusters, s);
    agent_admin_add(a, "/listeners", "print listener info; param: format=json", false, false,
                    h_listeners, s);
    agent_admin_add(a, "/memory", "print current allocation/heap usage", false, false, h_memory,
                    s);
    agent_admin_add(a, "/quitquitquit", "exit the server", true, false, h_quitquitquit, s);
    agent_admin_add(a, "/healthcheck/fail", "cause the server to fail health checks", true, false,
                    h_healthcheck_fail, s);
    agent_admin_add(a, "/healthcheck/ok", "cause the server to pass health checks", true, false,
                    h_healthcheck_ok, s);
    agent_admin_add(a, "/reopen_logs", "reopen access logs", true, false, h_reopen_logs, s);
    agent_admin_add(a, "/drain_listeners",
                    "drain listeners; params: inboundonly, graceful, skip_exit", true, false,
                    h_drain_listeners, s);
    agent_admin_stats_handlers_register(s);
}
