/* Request mirroring (RouteAction.request_mirror_policies): a fire-and-forget copy of a request
 * to a shadow cluster. The copy has its own pool and pins the snapshot, so it may outlive the
 * request it copies; its response is read and dropped; it never holds the main request back
 * (past the body limit, or when the shadow's queue passes it, the copy is abandoned) and is
 * bounded in time by timeout_ms. Worker thread. */
#ifndef SKIFF_HANDLERS_ROUTER_MIRROR_H
#define SKIFF_HANDLERS_ROUTER_MIRROR_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "dataplane/http.h"
#include "dataplane/snapshot.h"
#include "dataplane/upstream.h"

typedef struct dp_mirror dp_mirror_t;

/* Starts a shadow of req (copied now: head after the route's rewrites, :authority with
 * "-shadow" appended when shadow_suffix) to cluster c. end_stream: req has no body. Returns
 * the handle the body goes through (dp_mirror_data until its end, or dp_mirror_abort), or
 * NULL when the request had no body and the shadow needs nothing more. */
dp_mirror_t *dp_mirror_start(dp_upstreams_t *u, uv_loop_t *loop, dp_snapshot_t *snap,
                             const dp_cluster_t *c, const dp_http_head_t *req, bool shadow_suffix,
                             bool end_stream, uint64_t timeout_ms, uint32_t body_limit,
                             dp_upstream_proto_t proto);

/* Body bytes of the main request (copied). After end_stream the handle is no longer the
 * caller's. */
void dp_mirror_data(dp_mirror_t *m, const uint8_t *p, size_t n, bool end_stream);

/* The main request ended before its body did: the shadow is dropped. The handle is no longer
 * the caller's. */
void dp_mirror_abort(dp_mirror_t *m);

#endif
