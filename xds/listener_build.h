/* Translation of an envoy.config.listener.v3.Listener into the snapshot's dp_listener_t
 * (dataplane/snapshot.h): address, bind_to_port, use_original_dst, the listener filters skiff
 * runs (original_dst, tls_inspector, http_inspector, with filter_disabled predicates), every
 * filter chain with its FilterChainMatch and the network filter ending it (tcp_proxy, or the
 * HTTP connection manager through xds_hcm_build), default_filter_chain, and Envoy's
 * listener.<address>_<port>.* stats. Main thread. */
#ifndef SKIFF_XDS_LISTENER_BUILD_H
#define SKIFF_XDS_LISTENER_BUILD_H

#include "dataplane/snapshot.h"
#include "envoy/config/listener/v3/listener.pb-c.h"

/* Appends l to s (into its arena). stats may be NULL. What skiff cannot run is passed over
 * and logged at debug (unknown listener filters, network filters before the last one, a
 * last filter it does not know: the chain then closes its connections). Route configurations
 * named by RDS must have been added to s before. Never fails: what xds_listener_check finds
 * (a listener Envoy refuses, which resource validation should refuse before) is logged as a
 * warning, and the first of two chains with the same matching rules wins. */
dp_listener_t *xds_listener_build(dp_snapshot_t *s, dp_stats_t *stats,
                                  const Envoy__Config__Listener__V3__Listener *l);

/* Checks what Envoy refuses in a listener's filter chains: two chains with the same matching
 * rules ("multiple filter chains with the same matching rules are defined"), and prefix
 * ranges that are not IP prefixes. Returns 0, or -EINVAL with a malloc'd reason in
 * *reterr_msg. */
int xds_listener_check(const Envoy__Config__Listener__V3__Listener *l, char **reterr_msg);

#endif
