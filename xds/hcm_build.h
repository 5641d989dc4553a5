/* Translation of an envoy.filters.network.http_connection_manager config into the snapshot's
 * dp_hcm_config_t (dataplane/hcm.h): codec, stat_prefix and its http.<prefix>.* stats, the
 * route table (the inline route_config, or the RDS route configuration of that name already
 * in the snapshot), http_filters in order, timeouts, limits. Main thread. */
#ifndef SKIFF_XDS_HCM_BUILD_H
#define SKIFF_XDS_HCM_BUILD_H

#include "dataplane/hcm.h"
#include "dataplane/snapshot.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"

/* Builds the config into s's arena. stats may be NULL (no stats). inbound: the listener's
 * traffic_direction. Returns NULL with a malloc'd reason in *reterr_msg when the config cannot
 * be served (the caller then leaves the chain without an HCM). RDS route configurations must
 * have been added to s before this is called. */
const dp_hcm_config_t *xds_hcm_build(
    dp_snapshot_t *s, dp_stats_t *stats,
    const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager
        *hcm,
    bool inbound, char **reterr_msg);

#endif
