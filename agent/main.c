/* skiff: a data-plane agent that runs under Istio in place of Envoy. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/bootstrap.h"
#include "google/protobuf/struct.pb-c.h"
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

/* --log-format, or the bootstrap's application_log_config (only one of them, as Envoy). */
static int apply_log_format(const agent_options_t *opts, const agent_bootstrap_t *b,
                            pbjson_diag_t *diag)
{
    char err[512];
    const Envoy__Config__Bootstrap__V3__Bootstrap__ApplicationLogConfig__LogFormat *lf =
        b->application_log_config ? b->application_log_config->log_format : NULL;
    if (lf && lf->log_format_case ==
                  ENVOY__CONFIG__BOOTSTRAP__V3__BOOTSTRAP__APPLICATION_LOG_CONFIG__LOG_FORMAT__LOG_FORMAT__NOT_SET)
        lf = NULL;
    if (opts->log_format[0] && lf) {
        pbjson_diag_add(diag, PBJSON_ERROR, "%s: only one of application_log_config.log_format "
                        "and --log-format can be given", opts->config_path);
        return -EINVAL;
    }
    int rc = 0;
    if (opts->log_format[0]) {
        rc = dp_log_set_format(opts->log_format, err, sizeof(err));
    } else if (lf && lf->log_format_case ==
                         ENVOY__CONFIG__BOOTSTRAP__V3__BOOTSTRAP__APPLICATION_LOG_CONFIG__LOG_FORMAT__LOG_FORMAT_TEXT_FORMAT) {
        rc = dp_log_set_format(lf->text_format, err, sizeof(err));
    } else if (lf && lf->json_format) {
        const Google__Protobuf__Struct *st = lf->json_format;
        const char **keys = calloc(st->n_fields + 1, sizeof(*keys));
        const char **vals = calloc(st->n_fields + 1, sizeof(*vals));
        size_t n = 0;
        for (size_t i = 0; keys && vals && i < st->n_fields; i++) {
            const Google__Protobuf__Value *v = st->fields[i]->value;
            if (v && v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE) {
                keys[n] = st->fields[i]->key;
                vals[n++] = v->string_value;
            }
        }
        rc = dp_log_set_json_format(keys, vals, n, err, sizeof(err));
        free(keys);
        free(vals);
    }
    if (rc < 0) {
        pbjson_diag_add(diag, PBJSON_ERROR, "%s: %s",
                        opts->log_format[0] ? "--log-format" : "application_log_config", err);
        return -EINVAL;
    }
    return 0;
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

    if (rc == 0 && apply_log_format(&opts, bootstrap, diag) < 0)
        rc = -EINVAL;

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
