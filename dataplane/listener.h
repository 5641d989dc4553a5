/* Listeners on a worker.
 *
 * Accept: each worker binds every bind_to_port listener of its snapshot with SO_REUSEPORT, so
 * the kernel spreads connections across workers and a connection lives on the worker that
 * accepted it. The listening socket is watched with uv_poll and drained with accept4().
 *
 * use_original_dst: the connection's original destination (SO_ORIGINAL_DST from an iptables
 * REDIRECT, else getsockname) picks the listener that serves it: the one bound exactly to
 * that ip:port (bind_to_port false ones included; not the accepting one itself), else the
 * 0.0.0.0:port / [::]:port one, else the accepting listener itself (Istio's virtualOutbound
 * → PassthroughCluster).
 *
 * Listener filters of the serving listener then run in order: original_dst (the local address
 * becomes the original destination), tls_inspector and http_inspector (they peek at the first
 * bytes without consuming them). Waiting for bytes is bounded by listener_filters_timeout.
 * Then the filter chain is chosen (dataplane/filter_chain.h) and the connection handed, as a
 * raw connected fd with its own snapshot reference, to the network filter ending the chain
 * through the worker context (dataplane/conn.h). No chain: the connection is closed and
 * listener.<address>.no_filter_chain_match counted.
 *
 * Stats: the serving listener's downstream_cx_total is counted and downstream_cx_active
 * raised at the hand-off; the receiver of a dp_accepted_t lowers a->listener->cx_active when
 * the connection closes, and calls dp_accepted_release().
 *
 * The global connection limit (the bootstrap's overload_manager resource monitor
 * envoy.resource_monitors.global_downstream_max_connections): the connections accepted by
 * every worker on listeners without ignore_global_conn_limit are counted from accept to close;
 * one past the limit is closed at accept and counted in the accepting listener's
 * downstream_global_cx_overflow, as Envoy does.
 *
 * Worker thread only (the config types below are built on the main thread). */
#ifndef SKIFF_DATAPLANE_LISTENER_H
#define SKIFF_DATAPLANE_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/conn.h"
#include "dataplane/snapshot.h"

/* ---- configuration (in the snapshot) ---- */

typedef enum dp_listener_filter_kind {
    DP_LF_ORIGINAL_DST,   /* envoy.filters.listener.original_dst */
    DP_LF_TLS_INSPECTOR,  /* envoy.filters.listener.tls_inspector */
    DP_LF_HTTP_INSPECTOR, /* envoy.filters.listener.http_inspector */
} dp_listener_filter_kind_t;

/* ListenerFilterChainMatchPredicate */
typedef enum dp_lf_pred_kind {
    DP_LF_PRED_ANY,
    DP_LF_PRED_OR,
    DP_LF_PRED_AND,
    DP_LF_PRED_NOT,
    DP_LF_PRED_DST_PORT_RANGE,
} dp_lf_pred_kind_t;

typedef struct dp_lf_pred {
    dp_lf_pred_kind_t kind;
    const struct dp_lf_pred *rules; /* OR, AND: n_rules of them; NOT: one */
    size_t n_rules;
    uint32_t port_start, port_end; /* DST_PORT_RANGE: [start, end) */
} dp_lf_pred_t;

typedef struct dp_listener_filter {
    dp_listener_filter_kind_t kind;
    const dp_lf_pred_t *disabled; /* filter_disabled: skipped when it matches; NULL: never */
} dp_listener_filter_t;

/* Whether p matches a connection to local port `port`. */
bool dp_lf_pred_match(const dp_lf_pred_t *p, uint32_t port);

/* ---- runtime ---- */

typedef struct dp_listeners dp_listeners_t;

/* The global connection limit, for every worker; 0 (the default) is none. Set before the
 * workers start. */
void dp_listeners_set_global_limit(uint64_t max_connections);

/* The listeners of worker context w (which must outlive them). */
dp_listeners_t *dp_listeners_new(dp_wctx_t *w);

/* Opens the bind_to_port listeners snap has that are not open yet and closes those it no
 * longer has (or that are drained). Connections in flight keep their own snapshot. */
void dp_listeners_apply(dp_listeners_t *ls, dp_snapshot_t *snap);

/* Closes every listener and every connection still in its listener filters; the object is
 * freed from the last close callback. Connections handed off are the worker context's
 * (dp_wctx_close_all). Accepts NULL. */
void dp_listeners_close(dp_listeners_t *ls);

#endif
