/* The skiff command line: the flags pilot-agent passes to Envoy (pkg/envoy/proxy.go in Istio),
 * with Envoy's names, defaults and value syntax (docs/root/operations/cli.rst in Envoy).
 *
 * Parsing is pure: no I/O, no globals. Both "--flag value" and "--flag=value" are accepted, as
 * TCLAP accepts them for Envoy. An unknown flag or a bad value is an error naming it. */
#ifndef SKIFF_AGENT_OPTIONS_H
#define SKIFF_AGENT_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    AGENT_MODE_SERVE = 0,
    AGENT_MODE_VALIDATE,
    AGENT_MODE_INIT_ONLY,
} agent_mode_t;

typedef enum {
    AGENT_DRAIN_GRADUAL = 0,
    AGENT_DRAIN_IMMEDIATE,
} agent_drain_strategy_t;

typedef enum {
    AGENT_IP_V4 = 0,
    AGENT_IP_V6,
} agent_ip_version_t;

/* Every string points into argv (never freed); absent strings are "" (never NULL). */
typedef struct agent_options {
    const char *config_path;         /* -c, --config-path */
    const char *config_yaml;         /* --config-yaml: merged over the file */
    const char *log_level;           /* -l, --log-level (default "info") */
    const char *component_log_level; /* --component-log-level "a:lvl,b:lvl" */
    const char *log_format;          /* --log-format */
    const char *log_path;            /* --log-path: "" means stderr */
    const char *service_node;        /* --service-node */
    const char *service_cluster;     /* --service-cluster */
    const char *service_zone;        /* --service-zone */
    const char *admin_address_path;  /* --admin-address-path */
    const char *xds_token_file;      /* --xds-token-file: bearer token for ADS, re-read */
    uint32_t concurrency;            /* --concurrency (default: the number of CPUs) */
    uint32_t drain_time_s;           /* --drain-time-s (default 600) */
    uint32_t parent_shutdown_time_s; /* --parent-shutdown-time-s (default 900) */
    uint32_t file_flush_interval_msec;
    uint32_t file_flush_min_size_kb;
    uint32_t base_id;
    uint32_t restart_epoch;
    agent_drain_strategy_t drain_strategy;
    agent_ip_version_t local_address_ip_version;
    agent_mode_t mode;
    bool disable_hot_restart;
    bool allow_unknown_static_fields;
    bool reject_unknown_dynamic_fields;
    bool ignore_unknown_dynamic_fields;
    bool skip_deprecated_logs;
    bool enable_core_dump;
    bool use_dynamic_base_id;
    bool log_format_escaped;
    bool show_version; /* --version */
    bool show_help;    /* -h, --help */
    int argc;          /* the whole command line, for /server_info */
    char **argv;
} agent_options_t;

/* Parses argv into *ret_opts (defaults first). ncpus is the default for --concurrency.
 * Returns 0, or -EINVAL with a one-line message (naming the flag, and the value when it is the
 * value that is wrong) written into errbuf. Log level names are left to the caller, which checks
 * them against the logger (dataplane/log.h). */
int agent_options_parse(int argc, char **argv, uint32_t ncpus, agent_options_t *ret_opts,
                        char *errbuf, size_t errlen);

/* Text for --help (the flags, one per line, with their defaults). */
const char *agent_options_usage(void);

/* Envoy's spelling of the enums, as /server_info shows them ("Serve", "Immediate", "v4"). */
const char *agent_mode_name(agent_mode_t m);
const char *agent_drain_strategy_name(agent_drain_strategy_t s);
const char *agent_ip_version_name(agent_ip_version_t v);

#endif
