/* The xDS client: subscriptions as istiod expects them, validation of every resource, the
 * resource sets the server holds, warming and readiness as Envoy does them, and the stats
 * pilot-agent's readiness check reads.
 *
 * Subscriptions: CDS and LDS wildcard; EDS by the names EDS clusters reference
 * (eds_cluster_config.service_name, else the cluster name); RDS by the HttpConnectionManager
 * rds.route_config_name of the active listeners; each unsubscribed when nothing references it.
 *
 * Acceptance is per resource: a response's good resources apply, the bad ones are listed in
 * the NACK (resource name and field) and their last good version keeps serving.
 *
 * Main thread only. */
#ifndef SKIFF_XDS_CLIENT_H
#define SKIFF_XDS_CLIENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "dataplane/stats.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"
#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/endpoint/v3/endpoint.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "envoy/config/route/v3/route.pb-c.h"

#define XDS_TYPE_CLUSTER  "type.googleapis.com/envoy.config.cluster.v3.Cluster"
#define XDS_TYPE_ENDPOINT "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
#define XDS_TYPE_LISTENER "type.googleapis.com/envoy.config.listener.v3.Listener"
#define XDS_TYPE_ROUTE    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
#define XDS_TYPE_SECRET   "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

typedef struct xds_client xds_client_t;

typedef struct xds_client_callbacks {
    /* The first CDS (with its EDS) and LDS (with its RDS) have been applied, or their
     * initial_fetch_timeout passed: initialization is over. Called once. */
    void (*on_initialized)(void *userdata);
    /* Some resource was added, changed or removed: a new snapshot is due. */
    void (*on_changed)(void *userdata);
} xds_client_callbacks_t;

/* Creates the client from the bootstrap's dynamic_resources.ads_config. The gRPC target is the
 * static cluster named by envoy_grpc.cluster_name (its socket_address or pipe), or
 * google_grpc.target_uri. Returns 0 with *ret_client, or -EINVAL with *reterr_msg (malloc'd)
 * when the bootstrap names no usable ADS source. The bootstrap must outlive the client. */
int xds_client_new(uv_loop_t *loop, const Envoy__Config__Bootstrap__V3__Bootstrap *bootstrap,
                   dp_stats_t *stats, const xds_client_callbacks_t *cb, void *userdata,
                   xds_client_t **ret_client, char **reterr_msg);

/* A bearer token file for the ADS stream (skiff's --xds-token-file), read at every connect.
 * Call before xds_client_start. */
void xds_client_set_token_file(xds_client_t *c, const char *path);

void xds_client_start(xds_client_t *c);

/* Adds the dynamic parts of /config_dump, in Envoy's admin.v3 shapes, to the section objects
 * the caller built: version_info and dynamic_active_clusters/dynamic_warming_clusters to
 * ClustersConfigDump, dynamic_listeners (active, warming and error states) to
 * ListenersConfigDump, dynamic_route_configs to RoutesConfigDump, and dynamic_endpoint_configs
 * to EndpointsConfigDump when endpoints is not NULL, dynamic_active_secrets (private keys
 * "[redacted]", as Envoy shows them) to SecretsConfigDump. Resources are echoed as received. */
void xds_client_config_dump(const xds_client_t *c, json_t *clusters, json_t *endpoints,
                            json_t *listeners, json_t *routes, json_t *secrets);

/* The active and warming clusters from CDS, each with its endpoints (from EDS, or its own
 * load_assignment; NULL when none arrived yet), for /clusters. added_via_api is true. */
typedef void (*xds_cluster_fn)(void *userdata, const Envoy__Config__Cluster__V3__Cluster *cluster,
                               const Envoy__Config__Endpoint__V3__ClusterLoadAssignment *cla,
                               bool added_via_api);
void xds_client_foreach_cluster(const xds_client_t *c, xds_cluster_fn fn, void *userdata);

/* The active listeners from LDS, for /listeners. */
typedef void (*xds_listener_fn)(void *userdata, const Envoy__Config__Listener__V3__Listener *l);
void xds_client_foreach_listener(const xds_client_t *c, xds_listener_fn fn, void *userdata);

/* The accepted RDS route configurations. */
typedef void (*xds_route_fn)(void *userdata,
                             const Envoy__Config__Route__V3__RouteConfiguration *rc);
void xds_client_foreach_route(const xds_client_t *c, xds_route_fn fn, void *userdata);

/* The last accepted version_info of a type ("" before the first). */
const char *xds_client_version(const xds_client_t *c, const char *type_url);

size_t xds_client_cluster_count(const xds_client_t *c);

/* Decodes and validates one resource (the bytes of an Any of type_url, one of the four types
 * above) exactly as an update would, without applying it. Returns 0, or -EINVAL with a
 * malloc'd message naming the field in *reterr_msg. Any thread. */
int xds_resource_check(const char *type_url, const uint8_t *data, size_t len, char **reterr_msg);

void xds_client_free(xds_client_t *c);

#endif
