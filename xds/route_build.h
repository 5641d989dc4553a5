/* Translation of an envoy.config.route.v3.RouteConfiguration (from RDS, or an HTTP connection
 * manager's inline route_config) into the snapshot's dp_route_config_t (dataplane/route.h).
 * Main thread. */
#ifndef SKIFF_XDS_ROUTE_BUILD_H
#define SKIFF_XDS_ROUTE_BUILD_H

#include "dataplane/route.h"
#include "dataplane/snapshot.h"
#include "envoy/config/route/v3/route.pb-c.h"

/* Builds rc into s's arena; compiled regexes are freed with the snapshot. Returns NULL with a
 * malloc'd message naming the route configuration, the virtual host and the field in
 * *reterr_msg when Envoy would refuse the configuration: a domain twice in one configuration
 * (case-insensitively) or a second "*", a regex that does not compile, a direct_response body
 * over max_direct_response_body_size_bytes (4 KiB by default), a body from a file or the
 * environment, a pseudo-header or host in headers_to_add/remove, a weighted_clusters total of
 * 0. Whatever was allocated stays in the arena (freed with the snapshot). Does not add the
 * config to s (dp_snapshot_add_route does). */
dp_route_config_t *xds_route_build(dp_snapshot_t *s,
                                   const Envoy__Config__Route__V3__RouteConfiguration *rc,
                                   char **reterr_msg);

/* The matchers other configs share with routes (the fault filter's headers, CORS origins):
 * a StringMatcher or a HeaderMatcher into *ret, in arena a (compiled regexes are freed with
 * it). Returns 0, or -EINVAL with a malloc'd message naming field in *reterr_msg. */
int xds_str_match_build(dp_arena_t *a, const Envoy__Type__Matcher__V3__StringMatcher *m,
                        const char *field, dp_str_match_t *ret, char **reterr_msg);
int xds_header_match_build(dp_arena_t *a, const Envoy__Config__Route__V3__HeaderMatcher *h,
                           const char *field, dp_header_match_t *ret, char **reterr_msg);

#endif
