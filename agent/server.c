#include "agent/server.h"

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "dataplane/access_log.h"
#include "dataplane/listener.h"
#include "dataplane/log.h"
#include "skiff_build.h"
#include "xds/snapshot_build.h"

/* Envoy flushes stats every 5 s (stats_flush_interval); sampled gauges follow that rhythm and are
 * also refreshed whenever the admin API renders them. */
#define STATS_FLUSH_MS 5000

const char *agent_state_name(agent_state_t st)
{
    switch (st) {
    case AGENT_STATE_LIVE:
        return "LIVE";
    case AGENT_STATE_DRAINING:
        return "DRAINING";
    case AGENT_STATE_PRE_INITIALIZING:
        return "PRE_INITIALIZING";
    case AGENT_STATE_INITIALIZING:
        return "INITIALIZING";
    }
    return "UNKNOWN";
}

const char *agent_version_string(void)
{
    return SKIFF_REVISION "/" SKIFF_VERSION "/" SKIFF_TREE_STATE "/" SKIFF_BUILD_TYPE "/OpenSSL";
}

static void set_state(agent_server_t *s, agent_state_t st)
{
    s->state = st;
    dp_gauge_set(s->g_state, (uint64_t)st);
}

void agent_server_refresh_stats(agent_server_t *s)
{
    uint64_t now = uv_now(&s->loop);
    dp_gauge_set(s->g_uptime, (now - s->start_ms) / 1000);
    dp_gauge_set(s->g_live, s->healthcheck_failed || s->state == AGENT_STATE_DRAINING ? 0 : 1);

    /* Envoy reports tcmalloc's figures; glibc's mallinfo2 gives the same two quantities: bytes
     * handed out to the program, and bytes the heap holds from the system. */
    struct mallinfo2 mi = mallinfo2();
    dp_gauge_set(s->g_mem_allocated, (uint64_t)(mi.uordblks + mi.hblkhd));
    dp_gauge_set(s->g_mem_heap, (uint64_t)(mi.arena + mi.hblkhd));
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        long size;
        if (fscanf(f, "%ld %ld", &size, &pages) != 2)
            pages = 0;
        fclose(f);
    }
    dp_gauge_set(s->g_mem_physical, (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE));
}

static void on_flush_timer(uv_timer_t *t)
{
    agent_server_refresh_stats(t->data);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void agent_server_shutdown(agent_server_t *s, int exit_code)
{
    if (s->shutting_down)
        return;
    s->shutting_down = true;
    s->exit_code = exit_code;
    DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "shutting down");
    for (uint32_t i = 0; i < s->n_workers; i++)
        dp_worker_stop(s->workers[i]);
    agent_admin_close(s->admin);
    s->admin = NULL;
    xds_client_free(s->xds);
    s->xds = NULL;
    uv_signal_stop(&s->sig_term);
    uv_signal_stop(&s->sig_int);
    uv_timer_stop(&s->flush_timer);
    /* Close the remaining handles of the main loop so uv_run returns. */
    uv_walk(&s->loop, close_walk, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    agent_server_t *s = h->data;
    switch (signum) {
    case SIGTERM:
    case SIGINT:
        DP_LOG(DP_LOG_MAIN, DP_LOG_WARN, "caught %s", signum == SIGTERM ? "SIGTERM" : "SIGINT");
        agent_server_shutdown(s, 0);
        break;
    case SIGUSR1:
        DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "caught SIGUSR1: reopening log files");
        if (dp_access_log_reopen() < 0)
            DP_LOG(DP_LOG_MAIN, DP_LOG_ERROR, "cannot reopen an access log file");
        if (dp_log_reopen() < 0)
            DP_LOG(DP_LOG_MAIN, DP_LOG_ERROR, "cannot reopen the log file: %s", strerror(errno));
        else
            DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "log file reopened");
        break;
    case SIGHUP:
        DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "caught and eating SIGHUP");
        break;
    }
}

static void server_stats_init(agent_server_t *s)
{
    dp_stats_t *st = s->stats;
    s->g_state = dp_stats_gauge(st, "server.state");
    s->g_live = dp_stats_gauge(st, "server.live");
    s->g_uptime = dp_stats_gauge(st, "server.uptime");
    s->g_concurrency = dp_stats_gauge(st, "server.concurrency");
    s->g_mem_allocated = dp_stats_gauge(st, "server.memory_allocated");
    s->g_mem_heap = dp_stats_gauge(st, "server.memory_heap_size");
    s->g_mem_physical = dp_stats_gauge(st, "server.memory_physical_size");
    s->g_hot_restart_epoch = dp_stats_gauge(st, "server.hot_restart_epoch");
    s->g_total_connections = dp_stats_gauge(st, "server.total_connections");
    s->g_parent_connections = dp_stats_gauge(st, "server.parent_connections");
    s->g_days_until_cert = dp_stats_gauge(st, "server.days_until_first_cert_expiring");
    s->g_version = dp_stats_gauge(st, "server.version");
    s->g_workers_started = dp_stats_gauge(st, "listener_manager.workers_started");
    s->g_listeners_draining = dp_stats_gauge(st, "listener_manager.total_listeners_draining");
    s->h_init_time =
        dp_stats_histogram(st, "server.initialization_time_ms", DP_HIST_UNIT_MILLISECONDS);

    dp_gauge_set(s->g_concurrency, s->opts.concurrency);
    dp_gauge_set(s->g_hot_restart_epoch, 0);
    dp_gauge_set(s->g_total_connections, 0);
    dp_gauge_set(s->g_parent_connections, 0);
    dp_gauge_set(s->g_workers_started, 0);
    /* Envoy's server.version is the first 6 hex digits of the revision as a number. */
    dp_gauge_set(s->g_version, strtoull((char[7]){SKIFF_REVISION[0], SKIFF_REVISION[1],
                                                  SKIFF_REVISION[2], SKIFF_REVISION[3],
                                                  SKIFF_REVISION[4], SKIFF_REVISION[5], 0},
                                        NULL, 16));
}

/* Installs the bootstrap's stats_config.stats_tags (and Envoy's default tags unless
 * use_all_default_tags is false) into the store. */
static int server_stats_tags(agent_server_t *s)
{
    const Envoy__Config__Metrics__V3__StatsConfig *sc = s->bootstrap->stats_config;
    bool defaults = true;
    if (sc && sc->use_all_default_tags)
        defaults = sc->use_all_default_tags->value;
    for (size_t i = 0; sc && i < sc->n_stats_tags; i++) {
        const Envoy__Config__Metrics__V3__TagSpecifier *t = sc->stats_tags[i];
        if (t->tag_value_case != ENVOY__CONFIG__METRICS__V3__TAG_SPECIFIER__TAG_VALUE_REGEX)
            continue; /* fixed_value tags apply to every stat; not emitted yet */
        char *err = NULL;
        if (dp_stats_add_tag_extractor(s->stats, t->tag_name, t->regex, &err) < 0) {
            DP_LOG(DP_LOG_MAIN, DP_LOG_CRITICAL, "stats_config.stats_tags[%zu]: %s", i,
                   err ? err : "invalid");
            free(err);
            return -EINVAL;
        }
    }
    if (defaults)
        dp_stats_add_default_tags(s->stats);
    return 0;
}

/* The node as Envoy completes it: --service-node/--service-cluster/--service-zone fill what the
 * bootstrap leaves empty. */
static void server_complete_node(agent_server_t *s)
{
    agent_bootstrap_t *b = s->bootstrap;
    if (b->node == NULL) {
        b->node = calloc(1, sizeof(*b->node));
        if (b->node == NULL)
            abort();
        envoy__config__core__v3__node__init(b->node);
    }
    Envoy__Config__Core__V3__Node *n = b->node;
    if (n->id[0] == '\0' && s->opts.service_node[0]) {
        n->id = strdup(s->opts.service_node);
    }
    if (n->cluster[0] == '\0' && s->opts.service_cluster[0]) {
        n->cluster = strdup(s->opts.service_cluster);
    }
    if (s->opts.service_zone[0] && (n->locality == NULL || n->locality->zone[0] == '\0')) {
        if (n->locality == NULL) {
            n->locality = calloc(1, sizeof(*n->locality));
            if (n->locality == NULL)
                abort();
            envoy__config__core__v3__locality__init(n->locality);
        }
        n->locality->zone = strdup(s->opts.service_zone);
    }
    if (n->id == NULL || n->cluster == NULL || (n->locality && n->locality->zone == NULL))
        abort();
}

static int server_listen_admin(agent_server_t *s)
{
    const Envoy__Config__Bootstrap__V3__Admin *adm = s->bootstrap->admin;
    if (adm == NULL || adm->address == NULL) {
        DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "no admin address given, so no admin HTTP server");
        return 0;
    }
    s->admin = agent_admin_new(&s->loop);
    agent_admin_handlers_register(s);
    const Envoy__Config__Core__V3__Address *a = adm->address;
    int rc;
    char where[300];
    if (a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_PIPE) {
        rc = agent_admin_listen_pipe(s->admin, a->pipe->path, (int)a->pipe->mode);
        snprintf(where, sizeof(where), "%s", a->pipe->path);
    } else {
        const Envoy__Config__Core__V3__SocketAddress *sa = a->socket_address;
        rc = agent_admin_listen_tcp(s->admin, sa->address, sa->port_value);
        unsigned port = rc == 0 ? agent_admin_port(s->admin) : sa->port_value;
        snprintf(where, sizeof(where), strchr(sa->address, ':') ? "[%s]:%u" : "%s:%u",
                 sa->address, port);
    }
    if (rc < 0) {
        DP_LOG(DP_LOG_MAIN, DP_LOG_CRITICAL, "cannot listen on admin address %s: %s", where,
               uv_strerror(rc));
        return rc;
    }
    DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "admin address: %s", where);
    if (s->opts.admin_address_path[0]) {
        FILE *f = fopen(s->opts.admin_address_path, "w");
        if (f == NULL || fprintf(f, "%s\n", where) < 0 || fclose(f) != 0) {
            DP_LOG(DP_LOG_MAIN, DP_LOG_CRITICAL, "cannot write --admin-address-path %s: %s",
                   s->opts.admin_address_path, strerror(errno));
            return -errno;
        }
    }
    return 0;
}

static int server_start_workers(agent_server_t *s)
{
    uint64_t max_cx = agent_bootstrap_global_max_connections(s->bootstrap);
    dp_listeners_set_global_limit(max_cx);
    if (max_cx)
        DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "global downstream connection limit: %" PRIu64, max_cx);
    s->workers = calloc(s->opts.concurrency, sizeof(*s->workers));
    if (s->workers == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < s->opts.concurrency; i++) {
        dp_worker_t *w = dp_worker_new(i, NULL, NULL);
        if (w == NULL)
            return -ENOMEM;
        s->workers[s->n_workers++] = w;
        int rc = dp_worker_start(w);
        if (rc < 0) {
            DP_LOG(DP_LOG_MAIN, DP_LOG_CRITICAL, "cannot start %s: %s", dp_worker_name(w),
                   uv_strerror(rc));
            return rc;
        }
    }
    s->workers_started = true;
    dp_gauge_set(s->g_workers_started, 1);
    DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "all %u workers started", s->n_workers);
    return 0;
}

/* Builds a snapshot of everything accepted so far and hands it to every worker. */
static void server_publish(agent_server_t *s)
{
    char *err = NULL;
    dp_snapshot_t *snap = xds_snapshot_build(s->bootstrap, s->xds, s->stats, s->generation + 1, &err);
    if (snap == NULL) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_ERROR, "keeping snapshot %llu: %s",
               (unsigned long long)s->generation, err ? err : "build failed");
        free(err);
        return;
    }
    s->generation++;
    xds_snapshot_mark_drained(snap, (xds_drained_t)s->drained);
    for (uint32_t i = 0; i < s->n_workers; i++)
        dp_worker_publish(s->workers[i], snap);
    dp_snapshot_unref(s->snapshot);
    s->snapshot = snap;
    DP_LOG(DP_LOG_CONFIG, DP_LOG_DEBUG, "published snapshot %llu: %zu clusters, %zu listeners, "
                                        "%zu bytes",
           (unsigned long long)snap->generation, snap->n_clusters, snap->n_listeners,
           dp_arena_bytes(snap->arena));
}

static void on_drain_done(uv_timer_t *t)
{
    agent_server_t *s = t->data;
    s->drained = s->draining;
    DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "drain over: %s listeners stop accepting",
           s->drained == XDS_DRAINED_ALL ? "all" : "inbound");
    server_publish(s);
    dp_gauge_set(s->g_listeners_draining, 0);
}

void agent_server_drain_listeners(agent_server_t *s, bool inbound_only, bool graceful)
{
    int which = inbound_only ? XDS_DRAINED_INBOUND : XDS_DRAINED_ALL;
    if (which > s->draining)
        s->draining = which;
    size_t n = 0;
    for (size_t i = 0; s->snapshot && i < s->snapshot->n_listeners; i++)
        n += !inbound_only || s->snapshot->listeners[i].inbound;
    dp_gauge_set(s->g_listeners_draining, n);
    set_state(s, AGENT_STATE_DRAINING);
    agent_server_refresh_stats(s);
    uint64_t ms = graceful ? (uint64_t)s->opts.drain_time_s * 1000 : 0;
    DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "draining %s listeners%s", inbound_only ? "inbound" : "all",
           graceful ? " gracefully" : "");
    uv_timer_start(&s->drain_timer, on_drain_done, ms, 0);
}

static void on_publish_timer(uv_timer_t *t)
{
    server_publish(t->data);
}

static void on_xds_changed(void *ud)
{
    agent_server_t *s = ud;
    if (s->workers_started && !uv_is_active((uv_handle_t *)&s->publish_timer))
        uv_timer_start(&s->publish_timer, on_publish_timer, 0, 0);
}

static void server_go_live(agent_server_t *s)
{
    if (s->state == AGENT_STATE_LIVE || s->state == AGENT_STATE_DRAINING || s->shutting_down)
        return;
    if (server_start_workers(s) < 0) {
        agent_server_shutdown(s, 1);
        return;
    }
    server_publish(s);
    set_state(s, AGENT_STATE_LIVE);
    dp_histogram_record(s->h_init_time, uv_now(&s->loop) - s->start_ms);
    agent_server_refresh_stats(s);
    DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "starting main dispatch loop");
}

static void on_xds_initialized(void *ud)
{
    server_go_live(ud);
}

/* Nothing is dynamic when the bootstrap has no dynamic_resources: initialization ends at once.
 * With an ADS source the server stays INITIALIZING until the first CDS and LDS (with their EDS
 * and RDS) are applied, as Envoy's init manager does. */
static bool server_needs_xds(const agent_server_t *s)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap__DynamicResources *dr =
        s->bootstrap->dynamic_resources;
    return dr && (dr->lds_config || dr->cds_config || dr->ads_config);
}

int agent_server_run(const agent_options_t *opts, agent_bootstrap_t *bootstrap)
{
    agent_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        agent_bootstrap_free(bootstrap);
        return 1;
    }
    s->opts = *opts;
    s->bootstrap = bootstrap;
    s->exit_code = 1;
    int rc = uv_loop_init(&s->loop);
    if (rc < 0) {
        DP_LOG(DP_LOG_MAIN, DP_LOG_CRITICAL, "uv_loop_init: %s", uv_strerror(rc));
        agent_bootstrap_free(bootstrap);
        free(s);
        return 1;
    }
    s->start_ms = uv_now(&s->loop);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    s->start_unix_ms = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;

    s->stats = dp_stats_new();
    server_complete_node(s);
    if (server_stats_tags(s) < 0)
        goto out;
    server_stats_init(s);
    set_state(s, AGENT_STATE_PRE_INITIALIZING);
    agent_server_refresh_stats(s);

    uv_signal_init(&s->loop, &s->sig_term);
    uv_signal_init(&s->loop, &s->sig_int);
    uv_signal_init(&s->loop, &s->sig_usr1);
    uv_signal_init(&s->loop, &s->sig_hup);
    s->sig_term.data = s->sig_int.data = s->sig_usr1.data = s->sig_hup.data = s;
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_usr1, on_signal, SIGUSR1);
    uv_signal_start(&s->sig_hup, on_signal, SIGHUP);
    signal(SIGPIPE, SIG_IGN);

    uv_timer_init(&s->loop, &s->flush_timer);
    s->flush_timer.data = s;
    uv_timer_init(&s->loop, &s->publish_timer);
    s->publish_timer.data = s;
    uv_timer_init(&s->loop, &s->drain_timer);
    s->drain_timer.data = s;
    uv_timer_start(&s->flush_timer, on_flush_timer, STATS_FLUSH_MS, STATS_FLUSH_MS);
    dp_access_log_start(&s->loop, opts->file_flush_interval_msec, opts->file_flush_min_size_kb);

    if (server_listen_admin(s) < 0)
        goto out;

    set_state(s, AGENT_STATE_INITIALIZING);
    if (server_needs_xds(s)) {
        static const xds_client_callbacks_t xcb = {.on_initialized = on_xds_initialized,
                                                   .on_changed = on_xds_changed};
        char *err = NULL;
        if (xds_client_new(&s->loop, s->bootstrap, s->stats, &xcb, s, &s->xds, &err) < 0) {
            DP_LOG(DP_LOG_MAIN, DP_LOG_CRITICAL, "%s", err);
            free(err);
            goto out;
        }
        if (s->opts.xds_token_file[0])
            xds_client_set_token_file(s->xds, s->opts.xds_token_file);
        xds_client_start(s->xds);
    } else {
        server_go_live(s);
        if (s->state != AGENT_STATE_LIVE)
            goto out;
    }
    agent_server_refresh_stats(s);
    s->exit_code = 0;
    if (opts->mode == AGENT_MODE_INIT_ONLY)
        agent_server_shutdown(s, 0);

    uv_run(&s->loop, UV_RUN_DEFAULT);

out:
    if (!s->shutting_down)
        agent_server_shutdown(s, s->exit_code == 0 ? 1 : s->exit_code);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    for (uint32_t i = 0; i < s->n_workers; i++)
        dp_worker_join_free(s->workers[i]);
    free(s->workers);
    dp_access_log_flush();
    dp_snapshot_unref(s->snapshot);
    rc = uv_loop_close(&s->loop);
    if (rc < 0)
        DP_LOG(DP_LOG_MAIN, DP_LOG_ERROR, "main loop closed with handles open: %s",
               uv_strerror(rc));
    int code = s->exit_code;
    dp_stats_free(s->stats);
    agent_bootstrap_free(s->bootstrap);
    free(s);
    DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "exiting");
    return code;
}
