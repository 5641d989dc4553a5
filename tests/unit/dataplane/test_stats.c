/* The stats store (dataplane/stats.h): lock-free updates, Envoy's usedonly and filter
 * semantics, tag extraction, and the three renderers. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dataplane/stats.h"
#include "tests/unit/check_run.h"

static char *render(dp_stats_t *st, int which, const dp_stats_query_t *q, int *rc)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    char *err = NULL;
    if (which == 0)
        *rc = dp_stats_render_text(st, q, f, &err);
    else if (which == 1)
        *rc = dp_stats_render_prometheus(st, q, f, &err);
    else
        *rc = dp_stats_render_json(st, q, f, &err);
    fclose(f);
    if (*rc < 0) {
        free(buf);
        return err;
    }
    return buf;
}

typedef struct {
    dp_counter_t *c;
    dp_gauge_t *g;
    dp_histogram_t *h;
} shared_t;

static void *hammer(void *arg)
{
    shared_t *s = arg;
    for (int i = 0; i < 100000; i++) {
        dp_counter_inc(s->c);
        dp_gauge_inc(s->g);
        dp_gauge_dec(s->g);
        dp_histogram_record(s->h, (uint64_t)(i % 100));
    }
    return NULL;
}

START_TEST(test_concurrent_updates_are_exact)
{
    dp_stats_t *st = dp_stats_new();
    shared_t s = {dp_stats_counter(st, "c"), dp_stats_gauge(st, "g"),
                  dp_stats_histogram(st, "h", DP_HIST_UNIT_MILLISECONDS)};
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, hammer, &s);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    ck_assert_uint_eq(dp_counter_value(s.c), 400000);
    ck_assert_uint_eq(dp_gauge_value(s.g), 0);
    ck_assert_uint_eq(atomic_load(&s.h->count), 400000);
    ck_assert_uint_eq(atomic_load(&s.h->sum), 4 * 1000 * 4950);
    dp_stats_free(st);
}
END_TEST

START_TEST(test_find_or_create_returns_the_same_stat)
{
    dp_stats_t *st = dp_stats_new();
    dp_counter_t *a = dp_stats_counter(st, "x.y");
    for (int i = 0; i < 2000; i++) {
        char name[32];
        snprintf(name, sizeof(name), "filler.%d", i);
        dp_stats_gauge(st, name);
    }
    ck_assert_ptr_eq(dp_stats_counter(st, "x.y"), a);
    dp_stats_free(st);
}
END_TEST

/* pilot-agent's readiness query: a gauge set to 0 is reported, an untouched counter is not. */
START_TEST(test_usedonly_and_pilot_agent_filter)
{
    dp_stats_t *st = dp_stats_new();
    dp_gauge_set(dp_stats_gauge(st, "server.state"), 0);
    dp_gauge_set(dp_stats_gauge(st, "listener_manager.workers_started"), 1);
    dp_stats_counter(st, "cluster_manager.cds.update_success");
    dp_gauge_set(dp_stats_gauge(st, "server.stateful"), 5);
    dp_stats_query_t q = {.used_only = true,
                          .filter = "^(server\\.state|listener_manager\\.workers_started)"};
    int rc;
    char *out = render(st, 0, &q, &rc);
    ck_assert_int_eq(rc, 0);
    /* RE2 PartialMatch semantics, as Envoy: "server.stateful" matches the unanchored tail. */
    ck_assert_str_eq(out, "listener_manager.workers_started: 1\nserver.state: 0\n"
                          "server.stateful: 5\n");
    free(out);
    q.filter = "^(cluster_manager\\.cds|listener_manager\\.lds)\\.(update_success|update_rejected)$";
    out = render(st, 0, &q, &rc);
    ck_assert_str_eq(out, "");
    free(out);
    q.used_only = false;
    out = render(st, 0, &q, &rc);
    ck_assert_str_eq(out, "cluster_manager.cds.update_success: 0\n");
    free(out);
    q.filter = "(unclosed";
    out = render(st, 0, &q, &rc);
    ck_assert_int_eq(rc, -EINVAL);
    ck_assert(strstr(out, "(unclosed") != NULL);
    free(out);
    dp_stats_free(st);
}
END_TEST

START_TEST(test_tag_extraction_and_prometheus)
{
    dp_stats_t *st = dp_stats_new();
    char *err = NULL;
    /* Istio's cluster_name regex, from its bootstrap's stats_tags */
    ck_assert_int_eq(dp_stats_add_tag_extractor(
                         st, "cluster_name",
                         "^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)", &err),
                     0);
    dp_stats_add_default_tags(st);
    ck_assert_int_eq(dp_stats_add_tag_extractor(st, "x", "(", &err), -EINVAL);
    ck_assert_ptr_nonnull(err);
    free(err);
    dp_gauge_set(dp_stats_gauge(st, "cluster.xds-grpc.upstream_cx_active"), 3);
    dp_gauge_set(
        dp_stats_gauge(st, "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_cx_active"),
        2);
    dp_counter_add(dp_stats_counter(st, "http.admin.downstream_rq_200"), 5);
    dp_counter_inc(dp_stats_counter(st, "server.x\"y"));
    dp_histogram_t *h = dp_stats_histogram(st, "cluster.xds-grpc.upstream_rq_time",
                                           DP_HIST_UNIT_MILLISECONDS);
    dp_histogram_record(h, 3);
    dp_histogram_record(h, 700);
    dp_histogram_record(h, 5000000);
    int rc;
    char *out = render(st, 1, NULL, &rc);
    ck_assert_int_eq(rc, 0);
    ck_assert_msg(strstr(out, "# TYPE envoy_cluster_upstream_cx_active gauge\n"
                              "envoy_cluster_upstream_cx_active{cluster_name=\"outbound|9080||reviews.default.svc.cluster.local\"} 2\n"
                              "envoy_cluster_upstream_cx_active{cluster_name=\"xds-grpc\"} 3\n\n") != NULL,
                  "%s", out);
    ck_assert_msg(strstr(out, "envoy_http_downstream_rq{envoy_http_conn_manager_prefix=\"admin\",envoy_response_code=\"200\"} 5\n") != NULL, "%s", out);
    ck_assert(strstr(out, "envoy_server_x_y{} 1\n") != NULL);
    ck_assert(strstr(out, "# TYPE envoy_cluster_upstream_rq_time histogram\n") != NULL);
    ck_assert(strstr(out, "envoy_cluster_upstream_rq_time_bucket{cluster_name=\"xds-grpc\",le=\"0.5\"} 0\n") != NULL);
    ck_assert(strstr(out, "envoy_cluster_upstream_rq_time_bucket{cluster_name=\"xds-grpc\",le=\"5\"} 1\n") != NULL);
    ck_assert(strstr(out, "envoy_cluster_upstream_rq_time_bucket{cluster_name=\"xds-grpc\",le=\"1000\"} 2\n") != NULL);
    ck_assert(strstr(out, "envoy_cluster_upstream_rq_time_bucket{cluster_name=\"xds-grpc\",le=\"3600000\"} 2\n") != NULL);
    ck_assert(strstr(out, "envoy_cluster_upstream_rq_time_bucket{cluster_name=\"xds-grpc\",le=\"+Inf\"} 3\n") != NULL);
    ck_assert(strstr(out, "envoy_cluster_upstream_rq_time_sum{cluster_name=\"xds-grpc\"} 5000703\n") != NULL);
    ck_assert(strstr(out, "envoy_cluster_upstream_rq_time_count{cluster_name=\"xds-grpc\"} 3\n") != NULL);

    /* promtool: no parse error (lints of Envoy's naming aside) */
    if (system("command -v promtool >/dev/null 2>&1") == 0) {
        char cmd[] = "/tmp/skiff-prom-XXXXXX";
        int fd = mkstemp(cmd);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, out, strlen(out)), (int)strlen(out));
        close(fd);
        char line[256];
        snprintf(line, sizeof(line), "promtool check metrics <%s >/dev/null 2>&1", cmd);
        int prc = system(line);
        unlink(cmd);
        ck_assert_msg(WEXITSTATUS(prc) == 0 || WEXITSTATUS(prc) == 3,
                      "promtool found errors (exit %d)", WEXITSTATUS(prc));
    }
    free(out);

    out = render(st, 0, NULL, &rc);
    ck_assert(strstr(out, "cluster.xds-grpc.upstream_cx_active: 3\n") != NULL);
    ck_assert(strstr(out, "cluster.xds-grpc.upstream_rq_time: P0(") != NULL);
    free(out);
    out = render(st, 2, NULL, &rc);
    ck_assert(strstr(out, "\"name\": \"cluster.xds-grpc.upstream_cx_active\"") != NULL);
    ck_assert(strstr(out, "\"computed_quantiles\"") != NULL);
    free(out);
    dp_stats_free(st);
}
END_TEST

START_TEST(test_quantiles)
{
    dp_stats_t *st = dp_stats_new();
    dp_histogram_t *h = dp_stats_histogram(st, "h", DP_HIST_UNIT_MILLISECONDS);
    ck_assert(isnan(dp_histogram_quantile(h, 0.5)));
    for (int i = 0; i < 100; i++)
        dp_histogram_record(h, 7); /* all in the (5, 10] bucket */
    double p50 = dp_histogram_quantile(h, 0.5);
    ck_assert(p50 > 5 && p50 <= 10);
    ck_assert(dp_histogram_quantile(h, 1.0) <= 10);
    dp_stats_free(st);
}
END_TEST

START_TEST(test_text_readout_and_custom_namespace)
{
    dp_stats_t *st = dp_stats_new();
    dp_stats_add_custom_namespace(st, "istiocustom");
    dp_textreadout_set(dp_stats_textreadout(st, "cluster_manager.cds.version_text"), "v1/2");
    dp_counter_inc(dp_stats_counter(st, "istiocustom.istio_requests_total"));
    int rc;
    char *out = render(st, 0, NULL, &rc);
    ck_assert(strstr(out, "cluster_manager.cds.version_text: \"v1/2\"\n") != NULL);
    free(out);
    out = render(st, 1, NULL, &rc);
    ck_assert_msg(strstr(out, "# TYPE istio_requests_total counter\nistio_requests_total{} 1\n") != NULL, "%s", out);
    ck_assert(strstr(out, "version_text") == NULL);
    free(out);
    dp_stats_query_t q = {.text_readouts = true};
    out = render(st, 1, &q, &rc);
    ck_assert(strstr(out, "envoy_cluster_manager_cds_version_text{text_value=\"v1/2\"} 0\n") != NULL);
    free(out);
    dp_stats_free(st);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("stats");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_concurrent_updates_are_exact);
    tcase_add_test(tc, test_find_or_create_returns_the_same_stat);
    tcase_add_test(tc, test_usedonly_and_pilot_agent_filter);
    tcase_add_test(tc, test_tag_extraction_and_prometheus);
    tcase_add_test(tc, test_quantiles);
    tcase_add_test(tc, test_text_readout_and_custom_namespace);
    suite_add_tcase(s, tc);
    return check_run(s);
}
