/* Unit tests of the command line parser (agent/options.c), through its header. */
#include <check.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "agent/options.h"
#include "tests/unit/check_run.h"

static int parse(agent_options_t *o, char *err, size_t errlen, ...)
{
    char *argv[64] = {"skiff"};
    int argc = 1;
    va_list ap;
    va_start(ap, errlen);
    for (char *a = va_arg(ap, char *); a != NULL; a = va_arg(ap, char *))
        argv[argc++] = a;
    va_end(ap);
    static char *keep[64];
    memcpy(keep, argv, sizeof(argv));
    return agent_options_parse(argc, keep, 4, o, err, errlen);
}

START_TEST(test_defaults)
{
    agent_options_t o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, sizeof(err), NULL), 0);
    ck_assert_str_eq(o.config_path, "");
    ck_assert_str_eq(o.log_level, "info");
    ck_assert_uint_eq(o.concurrency, 4);
    ck_assert_uint_eq(o.drain_time_s, 600);
    ck_assert_uint_eq(o.parent_shutdown_time_s, 900);
    ck_assert_uint_eq(o.file_flush_interval_msec, 10000);
    ck_assert_int_eq(o.mode, AGENT_MODE_SERVE);
    ck_assert_int_eq(o.drain_strategy, AGENT_DRAIN_GRADUAL);
    ck_assert(!o.allow_unknown_static_fields);
}
END_TEST

/* The argv pilot-agent builds (pkg/envoy/proxy.go). */
START_TEST(test_pilot_agent_argv)
{
    agent_options_t o;
    char err[256];
    int rc = parse(&o, err, sizeof(err), "-c", "etc/istio/proxy/envoy-rev.json", "--drain-time-s",
                   "45", "--drain-strategy", "immediate", "--local-address-ip-version", "v6",
                   "--file-flush-interval-msec", "1000", "--disable-hot-restart",
                   "--allow-unknown-static-fields", "-l", "warning", "--component-log-level",
                   "misc:error", "--skip-deprecated-logs", "--config-yaml", "{}",
                   "--concurrency", "2", NULL);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_str_eq(o.config_path, "etc/istio/proxy/envoy-rev.json");
    ck_assert_uint_eq(o.drain_time_s, 45);
    ck_assert_int_eq(o.drain_strategy, AGENT_DRAIN_IMMEDIATE);
    ck_assert_int_eq(o.local_address_ip_version, AGENT_IP_V6);
    ck_assert_uint_eq(o.file_flush_interval_msec, 1000);
    ck_assert(o.disable_hot_restart);
    ck_assert(o.allow_unknown_static_fields);
    ck_assert_str_eq(o.log_level, "warning");
    ck_assert_str_eq(o.component_log_level, "misc:error");
    ck_assert(o.skip_deprecated_logs);
    ck_assert_str_eq(o.config_yaml, "{}");
    ck_assert_uint_eq(o.concurrency, 2);
}
END_TEST

START_TEST(test_equals_and_attached_forms)
{
    agent_options_t o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, sizeof(err), "--config-path=/x.yaml", "-ldebug",
                           "--mode=validate", "--concurrency=8", "--allow-unknown-static-fields=false",
                           NULL),
                     0);
    ck_assert_str_eq(o.config_path, "/x.yaml");
    ck_assert_str_eq(o.log_level, "debug");
    ck_assert_int_eq(o.mode, AGENT_MODE_VALIDATE);
    ck_assert_uint_eq(o.concurrency, 8);
    ck_assert(!o.allow_unknown_static_fields);
}
END_TEST

START_TEST(test_unknown_flag_named)
{
    agent_options_t o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, sizeof(err), "--drian-time-s", "5", NULL), -EINVAL);
    ck_assert_str_eq(err, "unknown flag '--drian-time-s' (see --help)");
    ck_assert_int_eq(parse(&o, err, sizeof(err), "-x", NULL), -EINVAL);
    ck_assert(strstr(err, "'-x'") != NULL);
    ck_assert_int_eq(parse(&o, err, sizeof(err), "stray", NULL), -EINVAL);
    ck_assert(strstr(err, "'stray'") != NULL);
}
END_TEST

START_TEST(test_bad_values_named)
{
    static const char *cases[][3] = {
        {"--concurrency", "two", "--concurrency"},
        {"--concurrency", "0", "--concurrency"},
        {"--drain-time-s", "-1", "--drain-time-s"},
        {"--drain-time-s", "99999999999", "--drain-time-s"},
        {"--mode", "serv", "--mode"},
        {"--drain-strategy", "sudden", "--drain-strategy"},
        {"--local-address-ip-version", "v5", "--local-address-ip-version"},
        {"--restart-epoch", "1", "--restart-epoch"},
        {"--disable-hot-restart=maybe", NULL, "--disable-hot-restart"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        agent_options_t o;
        char err[256];
        int rc = cases[i][1] ? parse(&o, err, sizeof(err), cases[i][0], cases[i][1], NULL)
                             : parse(&o, err, sizeof(err), cases[i][0], NULL);
        ck_assert_int_eq(rc, -EINVAL);
        ck_assert_msg(strstr(err, cases[i][2]) != NULL, "'%s' does not name %s", err,
                      cases[i][2]);
        ck_assert(strchr(err, '\n') == NULL);
    }
}
END_TEST

START_TEST(test_missing_value)
{
    agent_options_t o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, sizeof(err), "-c", NULL), -EINVAL);
    ck_assert_str_eq(err, "flag '-c' needs a value");
}
END_TEST

START_TEST(test_usage_lists_every_flag)
{
    const char *u = agent_options_usage();
    static const char *flags[] = {"--config-path", "--config-yaml", "--drain-time-s",
                                  "--drain-strategy", "--parent-shutdown-time-s",
                                  "--local-address-ip-version", "--file-flush-interval-msec",
                                  "--disable-hot-restart", "--allow-unknown-static-fields",
                                  "--log-level", "--component-log-level", "--log-format",
                                  "--concurrency", "--service-node", "--service-cluster",
                                  "--skip-deprecated-logs", "--mode", "--version", "--help"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        ck_assert_msg(strstr(u, flags[i]) != NULL, "usage lacks %s", flags[i]);
    ck_assert_str_eq(agent_mode_name(AGENT_MODE_VALIDATE), "Validate");
    ck_assert_str_eq(agent_drain_strategy_name(AGENT_DRAIN_IMMEDIATE), "Immediate");
    ck_assert_str_eq(agent_ip_version_name(AGENT_IP_V4), "v4");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("options");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_pilot_agent_argv);
    tcase_add_test(tc, test_equals_and_attached_forms);
    tcase_add_test(tc, test_unknown_flag_named);
    tcase_add_test(tc, test_bad_values_named);
    tcase_add_test(tc, test_missing_value);
    tcase_add_test(tc, test_usage_lists_every_flag);
    suite_add_tcase(s, tc);
    return check_run(s);
}
