/* Active health checks (dataplane/health_check.h) over real sockets on 127.0.0.1, with the
 * checker and small servers on one uv loop: HTTP checks against a server answering a scripted
 * sequence of statuses, threshold counting, TCP connect checks against an open and a closed
 * port, send/receive payloads, timeouts, and the host state surviving a snapshot rebuild. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "dataplane/health_check.h"
#include "dataplane/snapshot.h"
#include "dataplane/stats.h"
#include "tests/unit/check_run.h"

/* ---- a scripted HTTP server (and echo server) on the test's loop ---- */

typedef struct server {
    uv_tcp_t tcp;
    bool open;
    bool echo;    /* TCP: echo what arrives */
    int codes[8]; /* HTTP: the status of the n-th request (the last repeats) */
    int n_codes;
    int requests;
    char last_request[1024];
} server_t;

typedef struct client {
    uv_tcp_t tcp;
    server_t *s;
    char buf[1024];
    size_t len;
    uv_write_t wr;
    char out[256];
} client_t;

static void on_client_closed(uv_handle_t *h)
{
    free(h->data);
}

static void client_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    client_t *c = h->data;
    (void)sz;
    b->base = c->buf + c->len;
    b->len = sizeof(c->buf) - 1 - c->len;
}

static void on_client_written(uv_write_t *w, int status)
{
    client_t *c = w->data;
    (void)status;
    if (!c->s->echo)
        uv_close((uv_handle_t *)&c->tcp, on_client_closed);
}

static void on_client_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    client_t *c = st->data;
    (void)b;
    if (n < 0) {
        if (!uv_is_closing((uv_handle_t *)st))
            uv_close((uv_handle_t *)st, on_client_closed);
        return;
    }
    if (c->s->echo) {
        memcpy(c->out, c->buf, (size_t)n);
        uv_buf_t ob = uv_buf_init(c->out, (unsigned)n);
        c->wr.data = c;
        uv_write(&c->wr, st, &ob, 1, on_client_written);
        return;
    }
    c->len += (size_t)n;
    c->buf[c->len] = '\0';
    if (strstr(c->buf, "\r\n\r\n") == NULL)
        return;
    server_t *s = c->s;
    snprintf(s->last_request, sizeof(s->last_request), "%s", c->buf);
    int i = s->requests < s->n_codes ? s->requests : s->n_codes - 1;
    s->requests++;
    int len =
        snprintf(c->out, sizeof(c->out),
                 "HTTP/1.1 %d X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", s->codes[i]);
    uv_buf_t ob = uv_buf_init(c->out, (unsigned)len);
    c->wr.data = c;
    uv_read_stop(st);
    uv_write(&c->wr, st, &ob, 1, on_client_written);
}

static void on_connection(uv_stream_t *srv, int status)
{
    server_t *s = srv->data;
    ck_assert_int_eq(status, 0);
    client_t *c = calloc(1, sizeof(*c));
    c->s = s;
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    ck_assert_int_eq(uv_accept(srv, (uv_stream_t *)&c->tcp), 0);
    uv_read_start((uv_stream_t *)&c->tcp, client_alloc, on_client_read);
}

/* Listens on 127.0.0.1:port (0: any); returns the port. */
static int server_open(uv_loop_t *loop, server_t *s, int port)
{
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    ck_assert_int_eq(uv_tcp_init(loop, &s->tcp), 0);
    s->tcp.data = s;
    ck_assert_int_eq(uv_tcp_bind(&s->tcp, (struct sockaddr *)&a, 0), 0);
    ck_assert_int_eq(uv_listen((uv_stream_t *)&s->tcp, 16, on_connection), 0);
    int len = sizeof(a);
    uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&a, &len);
    s->open = true;
    return ntohs(a.sin_port);
}

static void server_close(server_t *s)
{
    if (s->open)
        uv_close((uv_handle_t *)&s->tcp, NULL);
    s->open = false;
}

/* A port with nothing listening on it (bound, then closed). */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- snapshots ---- */

static dp_endpoint_t ep(int port)
{
    dp_endpoint_t e = {.weight = 1};
    uv_ip4_addr("127.0.0.1", port, &e.addr.in);
    return e;
}

/* A sealed snapshot of one cluster "c" with the given endpoints and check. */
static dp_snapshot_t *snap_new(dp_stats_t *st, const dp_health_check_t *hc,
                               const dp_endpoint_t *eps, size_t n)
{
    static uint64_t gen;
    dp_snapshot_t *s = dp_snapshot_new(++gen);
    dp_cluster_t *c = dp_snapshot_add_cluster(s);
    c->name = dp_arena_strdup(s->arena, "c");
    dp_endpoint_t *e = dp_arena_alloc(s->arena, n * sizeof(*e));
    memcpy(e, eps, n * sizeof(*e));
    c->endpoints = e;
    c->n_endpoints = n;
    c->health = dp_health_cluster_new(s, st, "c", "c", hc, e, n);
    ck_assert_ptr_nonnull(c->health);
    ck_assert_int_eq(dp_snapshot_seal(s), 0);
    return s;
}

/* Runs loop until hc has finished `rounds` checks (at most 5 s). */
static void run_until(uv_loop_t *loop, dp_health_checker_t *hc, uint64_t rounds)
{
    uint64_t deadline = uv_hrtime() + 5000000000ull;
    while (dp_health_checker_rounds(hc) < rounds) {
        ck_assert_msg(uv_hrtime() < deadline, "only %llu of %llu checks done",
                      (unsigned long long)dp_health_checker_rounds(hc), (unsigned long long)rounds);
        uv_run(loop, UV_RUN_ONCE);
    }
}

static void finish_loop(uv_loop_t *loop, dp_health_checker_t *hc)
{
    dp_health_checker_close(hc);
    uv_run(loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(loop), 0);
}

static int state_of(int port)
{
    dp_endpoint_t e = ep(port);
    return dp_health_table_state("c", &e.addr);
}

static uint64_t counter(dp_stats_t *st, const char *suffix)
{
    char name[128];
    snprintf(name, sizeof(name), "cluster.c.health_check.%s", suffix);
    return dp_counter_value(dp_stats_counter(st, name));
}

static const dp_health_check_t http_check = {
    .kind = DP_HC_HTTP,
    .timeout_ms = 1000,
    .interval_ms = 20,
    .unhealthy_threshold = 1,
    .healthy_threshold = 1,
    .path = "/healthz",
};

START_TEST(test_http_200_503_200)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    server_t s = {.codes = {200, 503, 200}, .n_codes = 3};
    int port = server_open(&loop, &s, 0);
    dp_stats_t *st = dp_stats_new();
    dp_endpoint_t e = ep(port);
    dp_hc_header_t hdr = {"x-check", "yes"};
    dp_health_check_t c = http_check;
    c.host = "svc.local";
    c.headers = &hdr;
    c.n_headers = 1;
    dp_snapshot_t *snap = snap_new(st, &c, &e, 1);
    const dp_cluster_t *cl = dp_snapshot_find_cluster(snap, "c");
    /* unhealthy until the first check passes */
    ck_assert_int_eq(state_of(port), 0);
    ck_assert(!dp_health_host_ok(cl, &cl->endpoints[0].addr));
    dp_health_checker_t *hc = dp_health_checker_new(&loop);
    dp_health_checker_apply(hc, snap);
    run_until(&loop, hc, 1);
    ck_assert_int_eq(state_of(port), 1);
    ck_assert(dp_health_host_ok(cl, &cl->endpoints[0].addr));
    ck_assert_ptr_nonnull(strstr(s.last_request, "GET /healthz HTTP/1.1\r\n"));
    ck_assert_ptr_nonnull(strstr(s.last_request, "host: svc.local\r\n"));
    ck_assert_ptr_nonnull(strstr(s.last_request, "x-check: yes\r\n"));
    ck_assert_uint_eq(dp_gauge_value(dp_stats_gauge(st, "cluster.c.health_check.healthy")), 1);
    run_until(&loop, hc, 2); /* 503: unhealthy at once */
    ck_assert_int_eq(state_of(port), 0);
    ck_assert(!dp_health_host_ok(cl, &cl->endpoints[0].addr));
    ck_assert_uint_eq(dp_gauge_value(dp_stats_gauge(st, "cluster.c.health_check.healthy")), 0);
    run_until(&loop, hc, 3);
    ck_assert_int_eq(state_of(port), 1);
    ck_assert_uint_eq(counter(st, "attempt"), 3);
    ck_assert_uint_eq(counter(st, "success"), 2);
    ck_assert_uint_eq(counter(st, "failure"), 1);
    ck_assert_uint_eq(counter(st, "network_failure"), 0);
    server_close(&s);
    dp_snapshot_unref(snap);
    finish_loop(&loop, hc);
    ck_assert_uint_eq(dp_health_table_size(), 0);
    dp_stats_free(st);
}
END_TEST

START_TEST(test_expected_statuses)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    server_t s = {.codes = {204, 418}, .n_codes = 2};
    int port = server_open(&loop, &s, 0);
    dp_endpoint_t e = ep(port);
    dp_hc_range_t r = {418, 419};
    dp_health_check_t c = http_check;
    c.expected = &r;
    c.n_expected = 1;
    dp_snapshot_t *snap = snap_new(NULL, &c, &e, 1);
    dp_health_checker_t *hc = dp_health_checker_new(&loop);
    dp_health_checker_apply(hc, snap);
    run_until(&loop, hc, 1); /* 204 is not expected here */
    ck_assert_int_eq(state_of(port), 0);
    run_until(&loop, hc, 2);
    ck_assert_int_eq(state_of(port), 1);
    server_close(&s);
    dp_snapshot_unref(snap);
    finish_loop(&loop, hc);
}
END_TEST

/* unhealthy_threshold 2, healthy_threshold 2 on a TCP connect check: the listener goes away
 * and comes back on the same port. */
START_TEST(test_tcp_thresholds)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    server_t s = {0};
    int port = server_open(&loop, &s, 0);
    dp_stats_t *st = dp_stats_new();
    dp_endpoint_t e = ep(port);
    dp_health_check_t c = {.kind = DP_HC_TCP,
                           .timeout_ms = 1000,
                           .interval_ms = 20,
                           .unhealthy_threshold = 2,
                           .healthy_threshold = 2};
    dp_snapshot_t *snap = snap_new(st, &c, &e, 1);
    dp_health_checker_t *hc = dp_health_checker_new(&loop);
    dp_health_checker_apply(hc, snap);
    run_until(&loop, hc, 1);
    ck_assert_int_eq(state_of(port), 1); /* the first check decides */
    server_close(&s);
    run_until(&loop, hc, 2);
    ck_assert_int_eq(state_of(port), 1); /* one failure of two */
    run_until(&loop, hc, 3);
    ck_assert_int_eq(state_of(port), 0);
    ck_assert_uint_eq(counter(st, "network_failure"), 2);
    ck_assert_int_eq(server_open(&loop, &s, port), port);
    run_until(&loop, hc, 4);
    ck_assert_int_eq(state_of(port), 0); /* one success of two */
    run_until(&loop, hc, 5);
    ck_assert_int_eq(state_of(port), 1);
    ck_assert_uint_eq(counter(st, "attempt"), 5);
    ck_assert_uint_eq(counter(st, "success"), 3);
    server_close(&s);
    dp_snapshot_unref(snap);
    finish_loop(&loop, hc);
    dp_stats_free(st);
}
END_TEST

START_TEST(test_tcp_open_and_closed_port)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    server_t s = {0};
    int open_port = server_open(&loop, &s, 0), shut = closed_port();
    dp_stats_t *st = dp_stats_new();
    dp_endpoint_t e[2] = {ep(open_port), ep(shut)};
    dp_health_check_t c = {.kind = DP_HC_TCP,
                           .timeout_ms = 1000,
                           .interval_ms = 20,
                           .unhealthy_threshold = 1,
                           .healthy_threshold = 1};
    dp_snapshot_t *snap = snap_new(st, &c, e, 2);
    const dp_cluster_t *cl = dp_snapshot_find_cluster(snap, "c");
    dp_health_checker_t *hc = dp_health_checker_new(&loop);
    dp_health_checker_apply(hc, snap);
    run_until(&loop, hc, 4);
    ck_assert_int_eq(state_of(open_port), 1);
    ck_assert_int_eq(state_of(shut), 0);
    ck_assert(dp_health_host_ok(cl, &cl->endpoints[0].addr));
    ck_assert(!dp_health_host_ok(cl, &cl->endpoints[1].addr));
    /* an address that is not one of the cluster's endpoints is not filtered */
    dp_endpoint_t other = ep(shut);
    ck_assert(dp_health_host_ok(cl, &other.addr));
    ck_assert_uint_ge(counter(st, "network_failure"), 1);
    ck_assert_uint_eq(dp_gauge_value(dp_stats_gauge(st, "cluster.c.health_check.healthy")), 1);
    server_close(&s);
    dp_snapshot_unref(snap);
    finish_loop(&loop, hc);
    dp_stats_free(st);
}
END_TEST

START_TEST(test_tcp_send_receive)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    server_t s = {.echo = true};
    int port = server_open(&loop, &s, 0);
    dp_endpoint_t e = ep(port);
    dp_health_check_t c = {.kind = DP_HC_TCP,
                           .timeout_ms = 1000,
                           .interval_ms = 20,
                           .unhealthy_threshold = 1,
                           .healthy_threshold = 1,
                           .send = (const uint8_t *)"PING",
                           .send_len = 4,
                           .receive = (const uint8_t *)"PING",
                           .receive_len = 4};
    dp_snapshot_t *snap = snap_new(NULL, &c, &e, 1);
    dp_health_checker_t *hc = dp_health_checker_new(&loop);
    dp_health_checker_apply(hc, snap);
    run_until(&loop, hc, 1);
    ck_assert_int_eq(state_of(port), 1);
    dp_snapshot_unref(snap);
    /* expecting what the echo never sends: the check times out */
    c.receive = (const uint8_t *)"PONG";
    c.timeout_ms = 100;
    snap = snap_new(NULL, &c, &e, 1);
    dp_health_checker_apply(hc, snap);
    run_until(&loop, hc, 3);
    ck_assert_int_eq(state_of(port), 0);
    server_close(&s);
    dp_snapshot_unref(snap);
    finish_loop(&loop, hc);
}
END_TEST

/* A listener that never accepts: the HTTP check connects and times out. */
START_TEST(test_timeout)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(fd, 8), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    int port = ntohs(a.sin_port);
    uv_loop_t loop;
    uv_loop_init(&loop);
    dp_stats_t *st = dp_stats_new();
    dp_endpoint_t e = ep(port);
    dp_health_check_t c = http_check;
    c.timeout_ms = 100;
    dp_snapshot_t *snap = snap_new(st, &c, &e, 1);
    dp_health_checker_t *hc = dp_health_checker_new(&loop);
    uint64_t t0 = uv_hrtime();
    dp_health_checker_apply(hc, snap);
    run_until(&loop, hc, 1);
    ck_assert_uint_ge(uv_hrtime() - t0, 90000000ull);
    ck_assert_int_eq(state_of(port), 0);
    ck_assert_uint_eq(counter(st, "network_failure"), 1);
    ck_assert_uint_eq(counter(st, "failure"), 1);
    dp_snapshot_unref(snap);
    finish_loop(&loop, hc);
    close(fd);
    dp_stats_free(st);
}
END_TEST

/* A rebuilt snapshot naming the same cluster and host finds the state; a host that goes is
 * dropped from the table once no snapshot names it. */
START_TEST(test_state_survives_rebuild)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    server_t s = {.codes = {200}, .n_codes = 1};
    int port = server_open(&loop, &s, 0), other = closed_port();
    dp_endpoint_t e[2] = {ep(port), ep(other)};
    dp_health_check_t c = http_check;
    c.interval_ms = 60000;
    dp_snapshot_t *s1 = snap_new(NULL, &c, e, 1);
    dp_health_checker_t *hc = dp_health_checker_new(&loop);
    dp_health_checker_apply(hc, s1);
    run_until(&loop, hc, 1);
    ck_assert_int_eq(state_of(port), 1);
    dp_snapshot_t *s2 = snap_new(NULL, &c, e, 2);
    ck_assert_uint_eq(dp_health_table_size(), 2);
    const dp_cluster_t *cl = dp_snapshot_find_cluster(s2, "c");
    ck_assert(dp_health_host_ok(cl, &cl->endpoints[0].addr));  /* kept */
    ck_assert(!dp_health_host_ok(cl, &cl->endpoints[1].addr)); /* new: unhealthy */
    dp_health_checker_apply(hc, s2);
    dp_snapshot_unref(s1);
    run_until(&loop, hc, 2); /* the new host's first check, not the old one's again */
    ck_assert_int_eq(s.requests, 1);
    dp_snapshot_t *s3 = snap_new(NULL, &c, e, 1);
    dp_health_checker_apply(hc, s3);
    dp_snapshot_unref(s2);
    uv_run(&loop, UV_RUN_NOWAIT); /* the stopped check's handles close */
    ck_assert_int_eq(state_of(port), 1);
    ck_assert_int_eq(state_of(other), -1);
    server_close(&s);
    dp_snapshot_unref(s3);
    finish_loop(&loop, hc);
    ck_assert_uint_eq(dp_health_table_size(), 0);
}
END_TEST

/* no_traffic_interval paces the checks of a cluster without upstream connections; once its
 * upstream_cx_total moves, interval does. */
START_TEST(test_no_traffic_interval)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    server_t s = {.codes = {200}, .n_codes = 1};
    int port = server_open(&loop, &s, 0);
    dp_stats_t *st = dp_stats_new();
    dp_endpoint_t e = ep(port);
    dp_health_check_t c = http_check;
    c.no_traffic_interval_ms = 300;
    dp_snapshot_t *snap = snap_new(st, &c, &e, 1);
    dp_health_checker_t *hc = dp_health_checker_new(&loop);
    dp_health_checker_apply(hc, snap);
    run_until(&loop, hc, 1);
    uint64_t t1 = uv_hrtime();
    run_until(&loop, hc, 2);
    ck_assert_uint_ge(uv_hrtime() - t1, 250000000ull);
    dp_counter_inc(dp_stats_counter(st, "cluster.c.upstream_cx_total"));
    run_until(&loop, hc, 3); /* scheduled before the traffic */
    uint64_t t3 = uv_hrtime();
    run_until(&loop, hc, 4);
    ck_assert_uint_lt(uv_hrtime() - t3, 200000000ull);
    server_close(&s);
    dp_snapshot_unref(snap);
    finish_loop(&loop, hc);
    dp_stats_free(st);
}
END_TEST

START_TEST(test_invalid_config)
{
    dp_snapshot_t *s = dp_snapshot_new(1);
    dp_endpoint_t e = ep(1);
    dp_health_check_t c = http_check;
    c.interval_ms = 0;
    ck_assert_ptr_null(dp_health_cluster_new(s, NULL, "c", "c", &c, &e, 1));
    c = http_check;
    c.healthy_threshold = 0;
    ck_assert_ptr_null(dp_health_cluster_new(s, NULL, "c", "c", &c, &e, 1));
    c = (dp_health_check_t){.kind = DP_HC_TCP,
                            .timeout_ms = 1,
                            .interval_ms = 1,
                            .unhealthy_threshold = 1,
                            .healthy_threshold = 1,
                            .send_len = DP_HC_MAX_PAYLOAD + 1};
    ck_assert_ptr_null(dp_health_cluster_new(s, NULL, "c", "c", &c, &e, 1));
    /* a cluster without checks is never filtered */
    dp_cluster_t *cl = dp_snapshot_add_cluster(s);
    ck_assert(dp_health_host_ok(cl, &e.addr));
    ck_assert(dp_health_host_ok(NULL, &e.addr));
    dp_snapshot_unref(s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("health_check");
    TCase *tc = tcase_create("health_check");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_http_200_503_200);
    tcase_add_test(tc, test_expected_statuses);
    tcase_add_test(tc, test_tcp_thresholds);
    tcase_add_test(tc, test_tcp_open_and_closed_port);
    tcase_add_test(tc, test_tcp_send_receive);
    tcase_add_test(tc, test_timeout);
    tcase_add_test(tc, test_state_survives_rebuild);
    tcase_add_test(tc, test_no_traffic_interval);
    tcase_add_test(tc, test_invalid_config);
    suite_add_tcase(s, tc);
    return check_run(s);
}
