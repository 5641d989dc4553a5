#include "xds/snapshot_build.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "dataplane/log.h"
#include "xds/listener_build.h"
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

static void add_cluster(void *ud, const Envoy__Config__Cluster__V3__Cluster *c,
                        const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla,
                        bool added_via_api)
{
    build_ctx_t *ctx = ud;
    dp_snapshot_t *s = ctx->snap;
    dp_cluster_t *dc = dp_snapshot_add_cluster(s);
    if (ctx->stats) {
        char name[512];
        const char *obs = c->alt_stat_name[0] ? c->alt_stat_name : c->name;
        snprintf(name, sizeof(name), "cluster.%s.upstream_cx_total", obs);
        dc->cx_total = dp_stats_counter(ctx->stats, name);
        snprintf(name, sizeof(name), "cluster.%s.upstream_cx_connect_fail", obs);
        dc->cx_connect_fail = dp_stats_counter(ctx->stats, name);
        snprintf(name, sizeof(name), "cluster.%s.upstream_cx_active", obs);
        dc->cx_active = dp_stats_gauge(ctx->stats, name);
    }
    dc->name = dp_arena_strdup(s->arena, c->name);
    dc->type = cluster_type(c);
    dc->lb_policy = lb_policy(c);
    /* Envoy's default connect_timeout is 5 s. */
    dc->connect_timeout_ms =
        c->connect_timeout ? (uint64_t)c->connect_timeout->seconds * 1000 +
                                 (uint64_t)c->connect_timeout->nanos / 1000000
                           : 5000;
    size_t n = 0;
    for (size_t e = 0; cla && e < cla->n_endpoints; e++)
        n += cla->endpoints[e]->n_lb_endpoints;
    dp_endpoint_t *eps = n ? dp_arena_alloc(s->arena, n * sizeof(*eps)) : NULL;
    size_t k = 0;
    for (size_t e = 0; cla && e < cla->n_endpoints; e++) {
        const Envoy__Config__Endpoint__V3__LocalityLbEndpoints *lle = cla->endpoints[e];
        for (size_t i = 0; i < lle->n_lb_endpoints; i++) {
            const Envoy__Config__Endpoint__V3__LbEndpoint *lb = lle->lb_endpoints[i];
            if (lb->host_identifier_case !=
                    ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT ||
                !to_addr(s->arena, lb->endpoint->address, &eps[k].addr))
                continue;
            eps[k].weight = lb->load_balancing_weight ? lb->load_balancing_weight->value : 1;
            eps[k].priority = lle->priority;
            eps[k].health = (dp_health_t)lb->health_status;
            k++;
        }
    }
    dc->endpoints = eps;
    dc->n_endpoints = k;
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
