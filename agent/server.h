/* The server: the main thread's loop (admin, signals, stats flush, and later the xDS client)
 * and the worker threads. agent/ is the only place the modules are wired together. */
#ifndef SKIFF_AGENT_SERVER_H
#define SKIFF_AGENT_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "agent/admin.h"
#include "agent/bootstrap.h"
#include "agent/options.h"
#include "dataplane/stats.h"
#include "dataplane/worker.h"
#include "xds/client.h"

/* Envoy's server states, with the numbers of its server.state gauge. */
typedef enum {
    AGENT_STATE_LIVE = 0,
    AGENT_STATE_DRAINING = 1,
    AGENT_STATE_PRE_INITIALIZING = 2,
    AGENT_STATE_INITIALIZING = 3,
} agent_state_t;

typedef struct agent_server {
    agent_options_t opts;
    agent_bootstrap_t *bootstrap; /* owned; node fields completed from --service-* */
    uv_loop_t loop;
    dp_stats_t *stats;
    agent_admin_t *admin;
    xds_client_t *xds; /* NULL when the bootstrap names no ADS source */
    dp_worker_t **workers;
    uint32_t n_workers;
    uv_signal_t sig_term, sig_int, sig_usr1, sig_hup;
    uv_timer_t flush_timer;
    uv_timer_t publish_timer; /* coalesces snapshot builds within one loop turn */
    dp_snapshot_t *snapshot;  /* the latest published */
    uint64_t generation;
    int drained;           /* xds_drained_t: what /drain_listeners has drained so far */
    int draining;          /* xds_drained_t: what the running drain will drain */
    uv_timer_t drain_timer; /* graceful drains end after --drain-time-s */
    dp_gauge_t *g_listeners_draining;
    uint64_t start_ms;       /* uv_now at start */
    int64_t start_unix_ms;   /* wall clock at start, for last_updated */
    agent_state_t state;
    bool healthcheck_failed; /* POST /healthcheck/fail */
    bool workers_started;
    bool shutting_down;
    int exit_code;

    /* Envoy's server.* and listener_manager.* stats (names in Envoy's server.h) */
    dp_gauge_t *g_state, *g_live, *g_uptime, *g_concurrency, *g_mem_allocated, *g_mem_heap,
        *g_mem_physical, *g_hot_restart_epoch, *g_total_connections, *g_parent_connections,
        *g_workers_started, *g_days_until_cert, *g_version;
    dp_histogram_t *h_init_time;
    dp_counter_t *c_admin_rq_total;
} agent_server_t;

/* Builds the server from parsed options and a loaded bootstrap (taking ownership of it), binds
 * the admin address, starts the workers and runs the main loop until SIGTERM, SIGINT or
 * POST /quitquitquit. With mode init_only it stops after initialization. Returns the process
 * exit code (0 after a clean shutdown, 1 when start-up failed, with the reason logged). */
int agent_server_run(const agent_options_t *opts, agent_bootstrap_t *bootstrap);

/* Refreshes the gauges that are sampled rather than counted (uptime, memory). Main thread. */
void agent_server_refresh_stats(agent_server_t *s);

/* POST /drain_listeners: with graceful, listeners keep accepting for --drain-time-s (the
 * server reports DRAINING meanwhile), then stop; without it they stop now. inbound_only
 * limits it to INBOUND listeners, as pilot-agent asks on SIGTERM. Main thread. */
void agent_server_drain_listeners(agent_server_t *s, bool inbound_only, bool graceful);

/* Begins a graceful shutdown: stops workers and admin, and lets the loop end. Main thread. */
void agent_server_shutdown(agent_server_t *s, int exit_code);

/* Registers the admin endpoints: agent/admin_handlers.c, and the stats and logging ones in
 * agent/admin_stats.c. */
void agent_admin_handlers_register(agent_server_t *s);
void agent_admin_stats_handlers_register(agent_server_t *s);

/* Envoy's name for a state ("LIVE", "PRE_INITIALIZING", ...). */
const char *agent_state_name(agent_state_t st);

/* The version line --version prints and /server_info reports: "<sha>/<ver>/<Clean|Modified>/
 * <RELEASE|DEBUG>/OpenSSL", the shape Envoy's version has. */
const char *agent_version_string(void);

#endif
