/* skiff: a data-plane agent that runs under Istio in place of Envoy. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/bootstrap.h"
#include "agent/options.h"
#include "agent/server.h"
#include "dataplane/log.h"
#include "xds/grpc_stream.h"

static void print_diag(const pbjson_diag_t *diag, FILE *out)
{
    for (size_t i = 0; i < pbjson_diag_size(diag); i++) {
        pbjson_severity_t sev;
        const char *text = pbjson_diag_at(diag, i, &sev);
        fprintf(out, "%s%s\n", sev == PBJSON_WARNING ? "warning: " : "", text);
    }
}

int main(int argc, char **argv)
{
    agent_options_t opts;
    char err[512];
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    if (agent_options_parse(argc, argv, ncpu > 0 ? (uint32_t)ncpu : 1, &opts, err, sizeof(err)) <
        0) {
        fprintf(stderr, "skiff: %s\n", err);
        return 1;
    }
    if (opts.show_help) {
        fputs(agent_options_usage(), stdout);
        return 0;
    }
    if (opts.show_version) {
        printf("skiff  version: %s\n", agent_version_string());
        return 0;
    }
    if (dp_log_configure(opts.log_level, opts.component_log_level, err, sizeof(err)) < 0) {
        fprintf(stderr, "skiff: %s\n", err);
        return 1;
    }
    if (opts.log_path[0] && dp_log_set_path(opts.log_path) < 0) {
        fprintf(stderr, "skiff: cannot open --log-path '%s': %s\n", opts.log_path,
                strerror(errno));
        return 1;
    }

    pbjson_diag_t *diag = pbjson_diag_new();
    agent_bootstrap_t *bootstrap = NULL;
    int rc = agent_bootstrap_load(&opts, &bootstrap, diag);

    if (opts.mode == AGENT_MODE_VALIDATE) {
        print_diag(diag, rc < 0 ? stderr : stdout);
        pbjson_diag_free(diag);
        agent_bootstrap_free(bootstrap);
        if (rc < 0) {
            fprintf(stderr, "configuration '%s' is invalid\n",
                    opts.config_path[0] ? opts.config_path : "--config-yaml");
            return 1;
        }
        printf("configuration '%s' OK\n", opts.config_path[0] ? opts.config_path : "--config-yaml");
        return 0;
    }
    /* Unknown-field warnings and errors reach the log before anything starts. */
    for (size_t i = 0; i < pbjson_diag_size(diag); i++) {
        pbjson_severity_t sev;
        const char *text = pbjson_diag_at(diag, i, &sev);
        if (sev == PBJSON_ERROR)
            DP_LOG(DP_LOG_CONFIG, DP_LOG_CRITICAL, "%s", text);
        else
            DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "%s", text);
    }
    pbjson_diag_free(diag);
    if (rc < 0)
        return 1;

    DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "initializing skiff version: %s", agent_version_string());
    xds_grpc_global_init();
    rc = agent_server_run(&opts, bootstrap);
    xds_grpc_global_shutdown();
    return rc;
}
