/* Outlier detection (Envoy's cluster.outlier_detection): passive health checking of a cluster's
 * hosts from the results of real requests, shared by every worker thread.
 *
 * One detector per cluster name, in a process-wide registry that keeps it (and its hosts'
 * state: failure counts, ejections and their back-off) across snapshot rebuilds, as
 * dataplane/breaker.h does for the circuit breakers. The snapshot builder (main thread) gets
 * the detector with the cluster's config and gives it the cluster's hosts
 * (dp_outlier_set_hosts): each endpoint then points at its host state (dp_endpoint_t.outlier),
 * shared by every snapshot that has the host, refcounted by them.
 *
 * Results (dp_outlier_result, any thread) are a few relaxed atomic increments: the consecutive
 * counters and the interval's request and failure counts. A consecutive counter reaching its
 * threshold ejects the host at once (under the detector's lock), as Envoy does:
 *
 *   consecutive_5xx              any 5xx (and, without split_external_local_origin_errors,
 *                                every local-origin failure: connect failure, timeout, reset)
 *   consecutive_gateway_failure  502, 503, 504 (and, without split, local-origin failures)
 *   consecutive_local_origin_failure  with split only: local-origin failures
 *
 * each ejecting with probability enforcing_<kind>% (ejections_detected_<kind> counts every
 * detection, ejections_enforced_<kind> the ejections), and only while fewer than
 * max_ejection_percent of the hosts are ejected (ejections_overflow otherwise;
 * always_eject_one_host lets the first through regardless).
 *
 * The interval. No timer runs: the first result or host choice at or after the next interval
 * boundary runs the interval's evaluation on that thread (dp_outlier_tick, under the lock; one
 * thread wins a compare-and-swap of the boundary). That is Envoy's interval timer as seen by
 * traffic: a host's ejection ends at the first interval boundary after base_ejection_time x
 * its back-off (capped by max_ejection_time, plus a random 0..max_ejection_time_jitter), which
 * is noticed by the next request. The
 * evaluation un-ejects those hosts, lowers the back-off of hosts that stayed in, and runs
 * success-rate (mean - stdev x success_rate_stdev_factor/1000 over the hosts with at least
 * success_rate_request_volume requests, when there are success_rate_minimum_hosts of them)
 * and failure-percentage (failure_percentage_threshold over the hosts with
 * failure_percentage_request_volume requests, when there are failure_percentage_minimum_hosts)
 * detection on the counts since the previous evaluation (with split, the same again for
 * local-origin results). A detector left without traffic is evaluated when traffic comes back,
 * over the counts of the whole quiet time.
 *
 * Stats (cluster.<name>.outlier_detection.): ejections_active, ejections_total (the deprecated
 * count of consecutive-5xx and success-rate ejections), ejections_overflow,
 * ejections_enforced_total, ejections_consecutive_5xx, and ejections_detected_<kind> and
 * ejections_enforced_<kind> for consecutive_5xx, consecutive_gateway_failure,
 * consecutive_local_origin_failure, success_rate, failure_percentage,
 * local_origin_success_rate and local_origin_failure_percentage. */
#ifndef SKIFF_DATAPLANE_OUTLIER_H
#define SKIFF_DATAPLANE_OUTLIER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/http.h"
#include "dataplane/snapshot.h"
#include "dataplane/stats.h"

typedef struct dp_outlier dp_outlier_t;

/* A host's state: the part host choice reads (it skips an ejected host unless every host is
 * ejected); outlier.c keeps the rest after it. */
typedef struct dp_outlier_host {
    atomic_bool ejected;
} dp_outlier_host_t;

static inline bool dp_outlier_host_ejected(const dp_outlier_host_t *h)
{
    return h && atomic_load_explicit(&h->ejected, memory_order_relaxed);
}

dp_outlier_config_t dp_outlier_config_default(void);

/* The registry's detector for cluster `name` (one more reference), created when there is none;
 * cfg applies either way (the hosts' state stays). Stats in stats (NULL: none) under
 * "cluster.<stat_name>.outlier_detection." (stat_name NULL: name). Main thread. */
dp_outlier_t *dp_outlier_get(const char *name, const char *stat_name, dp_stats_t *stats,
                             const dp_outlier_config_t *cfg);
void dp_outlier_unref(dp_outlier_t *od); /* any thread; accepts NULL */
void dp_outlier_unref_cb(void *od);      /* the same, for dp_arena_add_cleanup */

/* The cluster's hosts are now eps[0..n): each gets its state (eps[i].outlier, one reference
 * each, dropped by dp_outlier_hosts_unref), existing hosts keep theirs; hosts not in eps leave
 * the set the statistics and max_ejection_percent count (an ejected one is un-ejected). Main
 * thread, while building the snapshot that owns eps. */
void dp_outlier_set_hosts(dp_outlier_t *od, dp_endpoint_t *eps, size_t n);
/* Drops the references dp_outlier_set_hosts gave eps[0..n). */
void dp_outlier_hosts_unref(dp_endpoint_t *eps, size_t n);

/* Where a result came from. */
typedef enum dp_outlier_origin {
    DP_OUTLIER_EXTERNAL,      /* the host answered: status is its response's */
    DP_OUTLIER_LOCAL_FAILURE, /* connect failure, timeout, reset: no response */
} dp_outlier_origin_t;

/* One request's outcome on host h at now_ms (uv_now's or uv_hrtime's millisecond scale, the
 * same for every caller). status: the response's status (EXTERNAL); timeout: a LOCAL_FAILURE
 * that was a timeout (without split it counts as a 504, other local failures as a 503). Runs
 * the interval's evaluation when one is due. Any thread. */
void dp_outlier_result(dp_outlier_host_t *h, dp_outlier_origin_t origin, int status, bool timeout,
                       uint64_t now_ms);

/* Runs the interval's evaluation when one is due at now_ms (cheap otherwise: one atomic load).
 * Any thread. */
void dp_outlier_tick(dp_outlier_t *od, uint64_t now_ms);

/* Hosts ejected now, and in the current set. */
uint32_t dp_outlier_ejected_count(dp_outlier_t *od);
uint32_t dp_outlier_host_count(dp_outlier_t *od);

/* Test hook: detectors in the registry. */
size_t dp_outlier_registry_size(void);

#endif
