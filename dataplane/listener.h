/* Listeners on a worker: each worker binds every snapshot listener that has bind_to_port with
 * SO_REUSEPORT, so the kernel spreads connections across workers and every connection lives
 * on the worker that accepted it. A connection pins the snapshot current at accept time.
 *
 * This first network filter is tcp_proxy to a single cluster: bytes are relayed both ways
 * with one fixed buffer per direction and reading paused while a write is in flight (no
 * allocation per read). Upstream hosts are chosen round robin over the cluster's endpoints.
 * Worker thread only. */
#ifndef SKIFF_DATAPLANE_LISTENER_H
#define SKIFF_DATAPLANE_LISTENER_H

#include <uv.h>

#include "dataplane/snapshot.h"

typedef struct dp_listeners dp_listeners_t;

dp_listeners_t *dp_listeners_new(uv_loop_t *loop);

/* Opens the listeners snap has that are not open yet and closes those it no longer has.
 * Connections in flight keep their own snapshot. */
void dp_listeners_apply(dp_listeners_t *ls, dp_snapshot_t *snap);

/* Closes every listener and connection; the object is freed from the last close callback. */
void dp_listeners_close(dp_listeners_t *ls);

#endif
