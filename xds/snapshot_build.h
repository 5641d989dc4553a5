/* Translation of the accepted resources into a dataplane snapshot (dataplane/snapshot.h): the
 * bootstrap's static clusters and listeners and those of the xDS client, as plain const C
 * structs in the snapshot's arena. Main thread. */
#ifndef SKIFF_XDS_SNAPSHOT_BUILD_H
#define SKIFF_XDS_SNAPSHOT_BUILD_H

#include "dataplane/snapshot.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"
#include "xds/client.h"

/* Builds and seals generation `generation`. client may be NULL (static configuration only).
 * Returns the snapshot (one reference), or NULL with a malloc'd reason in *reterr_msg; the
 * caller then keeps the previous snapshot. */
/* stats (may be NULL) gets the clusters' and listeners' connection stats, created here on the
 * main thread so that workers only update them. */
dp_snapshot_t *xds_snapshot_build(const Envoy__Config__Bootstrap__V3__Bootstrap *bootstrap,
                                  const xds_client_t *client, dp_stats_t *stats,
                                  uint64_t generation, char **reterr_msg);

/* Which listeners /drain_listeners has drained: none, the inbound ones, or all. */
typedef enum xds_drained {
    XDS_DRAINED_NONE,
    XDS_DRAINED_INBOUND,
    XDS_DRAINED_ALL,
} xds_drained_t;

/* Marks the snapshot's listeners drained (before publishing it). */
void xds_snapshot_mark_drained(dp_snapshot_t *s, xds_drained_t which);

#endif
