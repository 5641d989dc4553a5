/* Logging (dataplane/log.h): level parsing, --component-log-level, runtime changes, the line
 * format, and reopening the file. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataplane/log.h"
#include "tests/unit/check_run.h"

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return strdup("");
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

START_TEST(test_levels)
{
    dp_log_level_t l;
    ck_assert_int_eq(dp_log_level_parse("warning", &l), 0);
    ck_assert_int_eq(l, DP_LOG_WARN);
    ck_assert_int_eq(dp_log_level_parse("warn", &l), 0);
    ck_assert_int_eq(l, DP_LOG_WARN);
    ck_assert_int_eq(dp_log_level_parse("off", &l), 0);
    ck_assert_int_eq(dp_log_level_parse("verbose", &l), -EINVAL);
    ck_assert_str_eq(dp_log_level_name(DP_LOG_CRITICAL), "critical");
}
END_TEST

START_TEST(test_configure)
{
    char err[256];
    ck_assert_int_eq(dp_log_configure("warning", "misc:error,upstream:trace", err, sizeof(err)),
                     0);
    ck_assert_int_eq(dp_log_component_level(DP_LOG_MISC), DP_LOG_ERROR);
    ck_assert_int_eq(dp_log_component_level(DP_LOG_UPSTREAM), DP_LOG_TRACE);
    ck_assert_int_eq(dp_log_component_level(DP_LOG_ROUTER), DP_LOG_WARN);
    ck_assert_int_eq(dp_log_configure("bogus", "", err, sizeof(err)), -EINVAL);
    ck_assert(strstr(err, "--log-level") && strstr(err, "bogus"));
    ck_assert_int_eq(dp_log_configure("info", "nosuch:debug", err, sizeof(err)), -EINVAL);
    ck_assert(strstr(err, "--component-log-level") && strstr(err, "nosuch"));
    ck_assert_int_eq(dp_log_configure("info", "upstream", err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(dp_log_configure("info", "upstream:loud", err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(dp_log_set_component("http2", DP_LOG_DEBUG), 0);
    ck_assert_int_eq(dp_log_component_level(DP_LOG_HTTP2), DP_LOG_DEBUG);
    ck_assert_int_eq(dp_log_set_component("http3", DP_LOG_DEBUG), -ENOENT);
}
END_TEST

START_TEST(test_lines_and_reopen)
{
    char dir[] = "/tmp/skiff-log-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[128], moved[128];
    snprintf(path, sizeof(path), "%s/a.log", dir);
    snprintf(moved, sizeof(moved), "%s/a.log.1", dir);
    ck_assert_int_eq(dp_log_set_path(path), 0);
    dp_log_set_all(DP_LOG_INFO);
    DP_LOG(DP_LOG_MAIN, DP_LOG_INFO, "hello %d", 42);
    DP_LOG(DP_LOG_MAIN, DP_LOG_DEBUG, "hidden");
    char *text = slurp(path);
    ck_assert_msg(strstr(text, "][info][main] [tests/unit/dataplane/test_log.c:") != NULL, "%s",
                  text);
    ck_assert(strstr(text, "] hello 42\n") != NULL);
    ck_assert(strstr(text, "hidden") == NULL);
    ck_assert(text[0] == '[' && text[5] == '-' && text[11] == ' ');
    free(text);

    ck_assert_int_eq(rename(path, moved), 0);
    ck_assert_int_eq(dp_log_reopen(), 0);
    DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "after");
    text = slurp(path);
    ck_assert(strstr(text, "[warning][config]") && strstr(text, "after"));
    free(text);

    dp_log_set_json(true);
    DP_LOG(DP_LOG_ADMIN, DP_LOG_ERROR, "quote \" here");
    dp_log_set_json(false);

    /* Istio's text format (its bootstrap's application_log_config) */
    char err[256];
    ck_assert_int_eq(dp_log_set_format("%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t", err,
                                       sizeof(err)),
                     0);
    DP_LOG(DP_LOG_UPSTREAM, DP_LOG_WARN, "istio style");
    ck_assert_int_eq(dp_log_set_format("%Y %q", err, sizeof(err)), -EINVAL);
    ck_assert(strstr(err, "%q") != NULL);
    ck_assert_int_eq(dp_log_set_format(NULL, err, sizeof(err)), 0);
    const char *keys[] = {"level", "msg", "scope"};
    const char *vals[] = {"%l", "%v", "envoy %n"};
    ck_assert_int_eq(dp_log_set_json_format(keys, vals, 3, err, sizeof(err)), 0);
    DP_LOG(DP_LOG_ROUTER, DP_LOG_INFO, "in json");
    ck_assert_int_eq(dp_log_set_json_format(NULL, NULL, 0, err, sizeof(err)), 0);
    text = slurp(path);
    ck_assert_msg(strstr(text, "\twarning\tenvoy upstream tests/unit/dataplane/test_log.c:") != NULL,
                  "%s", text);
    ck_assert(strstr(text, "\tistio style\tthread=") != NULL);
    ck_assert(strstr(text, "{\"level\":\"info\",\"msg\":\"in json\",\"scope\":\"envoy router\"}\n") != NULL);
    free(text);
    text = slurp(path);
    ck_assert_msg(strstr(text, "\"level\":\"error\",\"scope\":\"envoy admin\",\"msg\":\"quote \\\" here\"") != NULL, "%s", text);
    free(text);
    unlink(path);
    unlink(moved);
    rmdir(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("log");
    tcase_add_test(tc, test_levels);
    tcase_add_test(tc, test_configure);
    tcase_add_test(tc, test_lines_and_reopen);
    suite_add_tcase(s, tc);
    return check_run(s);
}
