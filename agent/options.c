#include "agent/options.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    OPT_STRING,
    OPT_U32,
    OPT_BOOL,
    OPT_MODE,
    OPT_DRAIN,
    OPT_IPVER,
} opt_kind_t;

typedef struct opt_def {
    const char *long_name;
    char short_name;
    opt_kind_t kind;
    size_t offset;
    const char *help;
} opt_def_t;

#define O(f) offsetof(agent_options_t, f)

/* The table drives parsing and --help alike. */
static const opt_def_t opt_defs[] = {
    {"config-path", 'c', OPT_STRING, O(config_path), "bootstrap file (JSON or YAML)"},
    {"config-yaml", 0, OPT_STRING, O(config_yaml), "bootstrap text merged over --config-path"},
    {"mode", 0, OPT_MODE, O(mode), "serve | validate | init_only (default serve)"},
    {"log-level", 'l', OPT_STRING, O(log_level),
     "trace|debug|info|warning|error|critical|off (default info)"},
    {"component-log-level", 0, OPT_STRING, O(component_log_level), "per-logger levels: a:lvl,b:lvl"},
    {"log-format", 0, OPT_STRING, O(log_format), "log line format (spdlog-style)"},
    {"log-format-escaped", 0, OPT_BOOL, O(log_format_escaped), "escape control characters in logs"},
    {"log-path", 0, OPT_STRING, O(log_path), "log file (default stderr); SIGUSR1 reopens it"},
    {"concurrency", 0, OPT_U32, O(concurrency), "worker threads (default: the number of CPUs)"},
    {"drain-time-s", 0, OPT_U32, O(drain_time_s), "drain time in seconds (default 600)"},
    {"drain-strategy", 0, OPT_DRAIN, O(drain_strategy), "gradual | immediate (default gradual)"},
    {"parent-shutdown-time-s", 0, OPT_U32, O(parent_shutdown_time_s),
     "accepted for compatibility (default 900)"},
    {"local-address-ip-version", 0, OPT_IPVER, O(local_address_ip_version), "v4 | v6 (default v4)"},
    {"file-flush-interval-msec", 0, OPT_U32, O(file_flush_interval_msec),
     "access log flush interval (default 10000)"},
    {"file-flush-min-size-kb", 0, OPT_U32, O(file_flush_min_size_kb),
     "access log flush size (default 64)"},
    {"disable-hot-restart", 0, OPT_BOOL, O(disable_hot_restart), "accepted; skiff never hot-restarts"},
    {"allow-unknown-static-fields", 0, OPT_BOOL, O(allow_unknown_static_fields),
     "unknown bootstrap fields are warnings, not errors"},
    {"reject-unknown-dynamic-fields", 0, OPT_BOOL, O(reject_unknown_dynamic_fields),
     "reject xDS resources with unknown fields"},
    {"ignore-unknown-dynamic-fields", 0, OPT_BOOL, O(ignore_unknown_dynamic_fields),
     "ignore unknown fields in xDS resources silently"},
    {"service-node", 0, OPT_STRING, O(service_node), "node id when the bootstrap has none"},
    {"service-cluster", 0, OPT_STRING, O(service_cluster), "node cluster when the bootstrap has none"},
    {"service-zone", 0, OPT_STRING, O(service_zone), "node zone when the bootstrap has none"},
    {"admin-address-path", 0, OPT_STRING, O(admin_address_path), "write the admin address here"},
    {"xds-token-file", 0, OPT_STRING, O(xds_token_file),
     "bearer token for the ADS stream, re-read at every connect (Istio's istio-token)"},
    {"skip-deprecated-logs", 0, OPT_BOOL, O(skip_deprecated_logs), "do not log deprecated-field use"},
    {"enable-core-dump", 0, OPT_BOOL, O(enable_core_dump), "allow core dumps"},
    {"base-id", 0, OPT_U32, O(base_id), "accepted for compatibility"},
    {"use-dynamic-base-id", 0, OPT_BOOL, O(use_dynamic_base_id), "accepted for compatibility"},
    {"restart-epoch", 0, OPT_U32, O(restart_epoch), "accepted; must be 0"},
    {"version", 0, OPT_BOOL, O(show_version), "print the version and exit"},
    {"help", 'h', OPT_BOOL, O(show_help), "print this help and exit"},
};

static const opt_def_t *opt_find_long(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(opt_defs) / sizeof(opt_defs[0]); i++) {
        if (strlen(opt_defs[i].long_name) == len && memcmp(opt_defs[i].long_name, name, len) == 0)
            return &opt_defs[i];
    }
    return NULL;
}

static const opt_def_t *opt_find_short(char c)
{
    for (size_t i = 0; i < sizeof(opt_defs) / sizeof(opt_defs[0]); i++) {
        if (opt_defs[i].short_name == c)
            return &opt_defs[i];
    }
    return NULL;
}

static int parse_u32(const char *s, uint32_t *ret)
{
    char *end;
    if (*s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > UINT32_MAX)
        return -EINVAL;
    *ret = (uint32_t)v;
    return 0;
}

static int parse_bool(const char *s, bool *ret)
{
    if (strcmp(s, "true") == 0 || strcmp(s, "1") == 0) {
        *ret = true;
        return 0;
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "0") == 0) {
        *ret = false;
        return 0;
    }
    return -EINVAL;
}

static int opt_store(const opt_def_t *d, agent_options_t *o, const char *val)
{
    char *base = (char *)o + d->offset;
    switch (d->kind) {
    case OPT_STRING:
        *(const char **)(void *)base = val;
        return 0;
    case OPT_U32:
        return parse_u32(val, (uint32_t *)(void *)base);
    case OPT_BOOL:
        return parse_bool(val, (bool *)(void *)base);
    case OPT_MODE:
        if (strcmp(val, "serve") == 0)
            o->mode = AGENT_MODE_SERVE;
        else if (strcmp(val, "validate") == 0)
            o->mode = AGENT_MODE_VALIDATE;
        else if (strcmp(val, "init_only") == 0)
            o->mode = AGENT_MODE_INIT_ONLY;
        else
            return -EINVAL;
        return 0;
    case OPT_DRAIN:
        if (strcmp(val, "gradual") == 0)
            o->drain_strategy = AGENT_DRAIN_GRADUAL;
        else if (strcmp(val, "immediate") == 0)
            o->drain_strategy = AGENT_DRAIN_IMMEDIATE;
        else
            return -EINVAL;
        return 0;
    case OPT_IPVER:
        if (strcmp(val, "v4") == 0)
            o->local_address_ip_version = AGENT_IP_V4;
        else if (strcmp(val, "v6") == 0)
            o->local_address_ip_version = AGENT_IP_V6;
        else
            return -EINVAL;
        return 0;
    }
    return -EINVAL;
}

int agent_options_parse(int argc, char **argv, uint32_t ncpus, agent_options_t *ret_opts,
                        char *errbuf, size_t errlen)
{
    agent_options_t o = {
        .config_path = "",
        .config_yaml = "",
        .log_level = "info",
        .component_log_level = "",
        .log_format = "",
        .log_path = "",
        .service_node = "",
        .service_cluster = "",
        .service_zone = "",
        .admin_address_path = "",
        .xds_token_file = "",
        .concurrency = ncpus > 0 ? ncpus : 1,
        .drain_time_s = 600,
        .parent_shutdown_time_s = 900,
        .file_flush_interval_msec = 10000,
        .file_flush_min_size_kb = 64,
        .argc = argc,
        .argv = argv,
    };

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const opt_def_t *d = NULL;
        const char *val = NULL;
        const char *shown = arg;

        if (arg[0] == '-' && arg[1] == '-' && arg[2] != '\0') {
            const char *name = arg + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            d = opt_find_long(name, len);
            if (d && eq)
                val = eq + 1;
        } else if (arg[0] == '-' && arg[1] != '\0' && arg[1] != '-') {
            d = opt_find_short(arg[1]);
            if (d && arg[2] != '\0')
                val = arg + 2; /* "-lwarning", as TCLAP allows */
        }
        if (d == NULL) {
            if (arg[0] == '-')
                snprintf(errbuf, errlen, "unknown flag '%s' (see --help)", arg);
            else
                snprintf(errbuf, errlen, "unexpected argument '%s' (see --help)", arg);
            return -EINVAL;
        }
        if (val == NULL && d->kind == OPT_BOOL) {
            val = "true";
        } else if (val == NULL) {
            if (i + 1 >= argc) {
                snprintf(errbuf, errlen, "flag '%s' needs a value", shown);
                return -EINVAL;
            }
            val = argv[++i];
        }
        if (opt_store(d, &o, val) < 0) {
            snprintf(errbuf, errlen, "bad value '%s' for flag '--%s'", val, d->long_name);
            return -EINVAL;
        }
    }
    if (o.concurrency == 0) {
        snprintf(errbuf, errlen, "bad value '0' for flag '--concurrency'");
        return -EINVAL;
    }
    if (o.restart_epoch != 0) {
        snprintf(errbuf, errlen,
                 "bad value '%" PRIu32 "' for flag '--restart-epoch': hot restart is not supported",
                 o.restart_epoch);
        return -EINVAL;
    }
    *ret_opts = o;
    return 0;
}

const char *agent_options_usage(void)
{
    static char text[4096];
    if (text[0] != '\0')
        return text;
    size_t n = (size_t)snprintf(text, sizeof(text), "USAGE: skiff [flags]\n\nFlags:\n");
    for (size_t i = 0; i < sizeof(opt_defs) / sizeof(opt_defs[0]) && n < sizeof(text); i++) {
        const opt_def_t *d = &opt_defs[i];
        char left[64];
        const char *arg = d->kind == OPT_BOOL ? "" : " <value>";
        if (d->short_name)
            snprintf(left, sizeof(left), "-%c, --%s%s", d->short_name, d->long_name, arg);
        else
            snprintf(left, sizeof(left), "    --%s%s", d->long_name, arg);
        n += (size_t)snprintf(text + n, sizeof(text) - n, "  %-40s %s\n", left, d->help);
    }
    return text;
}

const char *agent_mode_name(agent_mode_t m)
{
    switch (m) {
    case AGENT_MODE_SERVE:
        return "Serve";
    case AGENT_MODE_VALIDATE:
        return "Validate";
    case AGENT_MODE_INIT_ONLY:
        return "InitOnly";
    }
    return "Serve";
}

const char *agent_drain_strategy_name(agent_drain_strategy_t s)
{
    return s == AGENT_DRAIN_IMMEDIATE ? "Immediate" : "Gradual";
}

const char *agent_ip_version_name(agent_ip_version_t v)
{
    return v == AGENT_IP_V6 ? "v6" : "v4";
}
