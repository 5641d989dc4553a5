/* The access log (dataplane/access_log.h): format parsing, lines for a hand-built stream in
 * Envoy's default format, Istio's TEXT format and a JSON format, and the shared file (append,
 * flush, reopen). FileAccessLog translation (xds/access_log_build.h) is tested here too. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataplane/access_log.h"
#include "dataplane/route.h"
#include "dataplane/stream.h"
#include "envoy/extensions/access_loggers/file/v3/file.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "tests/unit/check_run.h"
#include "xds/access_log_build.h"

#define ISTIO_TEXT                                                                               \
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "           \
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% " \
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "          \
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" "    \
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% "  \
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "           \
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"

/* A finished stream as the connection manager and router leave it. */
typedef struct fixture {
    dp_pool_t *pool;
    dp_accepted_t conn;
    dp_http_head_t req, resp;
    dp_route_t route;
    dp_stream_t s;
} fixture_t;

static void sin_set(struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof(*ss));
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    inet_pton(AF_INET, ip, &in->sin_addr);
}

static void hdr(dp_headers_t *h, dp_pool_t *p, const char *n, const char *v)
{
    dp_headers_add(h, p, n, strlen(n), v, strlen(v));
}

static void fixture_init(fixture_t *f)
{
    memset(f, 0, sizeof(*f));
    f->pool = dp_pool_new();
    sin_set(&f->conn.local, "127.0.0.1", 15001);
    sin_set(&f->conn.remote, "127.0.0.1", 40000);
    f->req.method = DP_STR("GET");
    f->req.path = DP_STR("/api/x?y=1");
    f->req.authority = DP_STR("svc.ns:8080");
    f->req.scheme = DP_STR("http");
    f->req.version = DP_HTTP_11;
    hdr(&f->req.headers, f->pool, "x-forwarded-for", "10.0.0.1");
    hdr(&f->req.headers, f->pool, "user-agent", "curl/8");
    hdr(&f->req.headers, f->pool, "x-request-id", "abc-123");
    f->resp.status = 200;
    hdr(&f->resp.headers, f->pool, "x-envoy-upstream-service-time", "7");
    f->route.name = "default";
    f->s.pool = f->pool;
    f->s.conn = &f->conn;
    f->s.req = &f->req;
    f->s.resp = &f->resp;
    f->s.route = &f->route;
    f->s.response_started = true;
    f->s.response_status = 200;
    f->s.start_ms = 1000;
    f->s.request_end_ms = 1002;
    f->s.response_start_ms = 1009;
    f->s.start_wall_us = 1700000000123456LL; /* 2023-11-14T22:13:20.123456Z */
    f->s.bytes_received = 5;
    f->s.bytes_sent = 11;
    f->s.has_upstream_host = true;
    f->s.upstream_host.in.sin_family = AF_INET;
    f->s.upstream_host.in.sin_port = htons(9000);
    inet_pton(AF_INET, "127.0.0.1", &f->s.upstream_host.in.sin_addr);
    f->s.upstream_cluster = "outbound|80||svc.ns.svc.cluster.local";
    f->s.details = "via_upstream";
}

static void fixture_done(fixture_t *f)
{
    dp_pool_free(f->pool);
}

/* The line of format text for f at now_ms 1012. */
static char *line_of(dp_arena_t *a, const char *text, const fixture_t *f)
{
    const dp_access_format_t *fmt = NULL;
    char *err = NULL;
    int rc = dp_access_format_compile(a, text, &fmt, &err);
    ck_assert_msg(rc == 0, "%s: %s", text, err ? err : "");
    static char buf[4096];
    dp_access_format_line(fmt, &f->s, 1012, buf, sizeof(buf));
    return buf;
}

static char *compile_error(dp_arena_t *a, const char *text)
{
    const dp_access_format_t *fmt = NULL;
    char *err = NULL;
    ck_assert_int_eq(dp_access_format_compile(a, text, &fmt, &err), -EINVAL);
    ck_assert_ptr_nonnull(err);
    return err;
}

START_TEST(test_default_and_istio_lines)
{
    dp_arena_t *a = dp_arena_new();
    fixture_t f;
    fixture_init(&f);
    ck_assert_str_eq(line_of(a, DP_ACCESS_LOG_DEFAULT_FORMAT, &f),
                     "[2023-11-14T22:13:20.123Z] \"GET /api/x?y=1 HTTP/1.1\" 200 - 5 11 12 7 "
                     "\"10.0.0.1\" \"curl/8\" \"abc-123\" \"svc.ns:8080\" \"127.0.0.1:9000\"\n");
    ck_assert_str_eq(line_of(a, ISTIO_TEXT, &f),
                     "[2023-11-14T22:13:20.123Z] \"GET /api/x?y=1 HTTP/1.1\" 200 - via_upstream - "
                     "\"-\" 5 11 12 7 \"10.0.0.1\" \"curl/8\" \"abc-123\" \"svc.ns:8080\" "
                     "\"127.0.0.1:9000\" outbound|80||svc.ns.svc.cluster.local - "
                     "127.0.0.1:15001 127.0.0.1:40000 - default\n");

    /* A local 404 over HTTP/2: no upstream, no response service time, flags and details. */
    f.req.version = DP_HTTP_2;
    f.s.response_status = 404;
    f.s.response_flags = DP_RF(NR);
    f.s.details = NULL;
    f.s.has_upstream_host = false;
    f.s.upstream_cluster = NULL;
    f.s.route = NULL;
    f.resp.headers.n = 0;
    hdr(&f.req.headers, f.pool, "x-envoy-original-path", "/orig");
    ck_assert_str_eq(line_of(a, ISTIO_TEXT, &f),
                     "[2023-11-14T22:13:20.123Z] \"GET /orig HTTP/2\" 404 NR route_not_found - "
                     "\"-\" 5 11 12 - \"10.0.0.1\" \"curl/8\" \"abc-123\" \"svc.ns:8080\" "
                     "\"-\" - - 127.0.0.1:15001 127.0.0.1:40000 - -\n");
    f.s.response_flags = DP_RF(UF) | DP_RF(URX);
    ck_assert_str_eq(line_of(a, "%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%", &f),
                     "UF,URX upstream_reset_before_response_started{connection_failure}");
    f.s.response_flags = DP_RF(UPE);
    ck_assert(f.s.response_started);
    ck_assert_str_eq(line_of(a, "%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%", &f),
                     "UPE upstream_reset_after_response_started{protocol_error}");
    f.s.response_started = false;
    ck_assert_str_eq(line_of(a, "%RESPONSE_CODE_DETAILS%", &f),
                     "upstream_reset_before_response_started{protocol_error}");
    f.s.response_started = true;
    f.s.response_flags = DP_RF(UH);
    ck_assert_str_eq(line_of(a, "%RESPONSE_CODE_DETAILS%", &f), "no_healthy_upstream");
    f.s.response_flags = DP_RF(FI);
    ck_assert_str_eq(line_of(a, "%RESPONSE_CODE_DETAILS%", &f), "fault_filter_abort");
    fixture_done(&f);
    dp_arena_free(a);
}
END_TEST

START_TEST(test_operators)
{
    dp_arena_t *a = dp_arena_new();
    fixture_t f;
    fixture_init(&f);
    hdr(&f.req.headers, f.pool, "x-long", "abcdefghij");
    ck_assert_str_eq(line_of(a, "%REQ(X-LONG):4%|%REQ(X-MISSING?X-LONG):2%|%REQ(X-NONE)%", &f),
                     "abcd|ab|-");
    ck_assert_str_eq(line_of(a, "100%% %REQ(:PATH)% %REQ_WITHOUT_QUERY(:PATH)% %REQ(HOST)%", &f),
                     "100% /api/x?y=1 /api/x svc.ns:8080");
    ck_assert_str_eq(line_of(a,
                             "%REQ(:SCHEME)% %REQ(:METHOD)% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"
                             " %RESP(NOPE)%",
                             &f),
                     "http GET 7 -");
    ck_assert_str_eq(line_of(a,
                             "%START_TIME(%Y/%m/%d %H:%M:%S)% %START_TIME(%s.%3f)% "
                             "%START_TIME(%6f|%f)%",
                             &f),
                     "2023/11/14 22:13:20 1700000000.123 123456|123456000");
    ck_assert_str_eq(line_of(a,
                             "%DURATION% %REQUEST_DURATION% %RESPONSE_DURATION% "
                             "%RESPONSE_TX_DURATION% %BYTES_RECEIVED% %BYTES_SENT%",
                             &f),
                     "12 2 9 3 5 11");
    ck_assert_str_eq(line_of(a,
                             "%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW% "
                             "%UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_TRANSPORT_FAILURE_REASON% "
                             "%CONNECTION_TERMINATION_DETAILS%",
                             &f),
                     "127.0.0.1:9000 outbound|80||svc.ns.svc.cluster.local "
                     "outbound|80||svc.ns.svc.cluster.local - - -");
    ck_assert_str_eq(line_of(a,
                             "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
                             "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
                             "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_PORT%",
                             &f),
                     "127.0.0.1:15001 127.0.0.1:40000 127.0.0.1 127.0.0.1 40000");
    ck_assert_str_eq(line_of(a,
                             "%PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% "
                             "%RESPONSE_CODE_DETAILS% %ROUTE_NAME% %REQUESTED_SERVER_NAME%",
                             &f),
                     "HTTP/1.1 200 - via_upstream default -");
    snprintf(f.conn.sni, sizeof(f.conn.sni), "svc.example.com");
    ck_assert_str_eq(line_of(a, "%REQUESTED_SERVER_NAME%", &f), "svc.example.com");
    /* Accepted but not kept: "-". */
    ck_assert_str_eq(line_of(a,
                             "%METADATA(ROUTE:a:b)% %FILTER_STATE(upstream_peer)% "
                             "%CEL(request.path)% %DYNAMIC_METADATA(x)%",
                             &f),
                     "- - - -");
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    ck_assert_str_eq(line_of(a, "%HOSTNAME%", &f), host);
    /* Trailers. */
    dp_headers_t tr = {0};
    hdr(&tr, f.pool, "grpc-status", "0");
    f.s.resp_trailers = &tr;
    ck_assert_str_eq(line_of(a, "%TRAILER(GRPC-STATUS)% %TRAILER(GRPC-MESSAGE)%", &f), "0 -");
    /* Errors name the operator. */
    char *e = compile_error(a, "x %FOO_BAR% y");
    ck_assert_msg(strstr(e, "FOO_BAR") != NULL, "%s", e);
    free(e);
    e = compile_error(a, "%REQ%");
    ck_assert_msg(strstr(e, "REQ") && strstr(e, "header"), "%s", e);
    free(e);
    e = compile_error(a, "%REQ(A");
    ck_assert_msg(strstr(e, "REQ") != NULL, "%s", e);
    free(e);
    e = compile_error(a, "%PROTOCOL(x)%");
    ck_assert_msg(strstr(e, "PROTOCOL") != NULL, "%s", e);
    free(e);
    e = compile_error(a, "50% off");
    free(e);
    e = compile_error(a, "%DURATION");
    ck_assert_msg(strstr(e, "DURATION") != NULL, "%s", e);
    free(e);
    fixture_done(&f);
    dp_arena_free(a);
}
END_TEST

START_TEST(test_json)
{
    dp_arena_t *a = dp_arena_new();
    fixture_t f;
    fixture_init(&f);
    const char *keys[] = {"start_time",
                          "method",
                          "path",
                          "protocol",
                          "response_code",
                          "response_flags",
                          "bytes_received",
                          "duration",
                          "upstream_host",
                          "upstream_cluster",
                          "upstream_service_time",
                          "authority",
                          "upstream_transport_failure_reason",
                          "mixed"};
    const char *ops[] = {"%START_TIME%",
                         "%REQ(:METHOD)%",
                         "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                         "%PROTOCOL%",
                         "%RESPONSE_CODE%",
                         "%RESPONSE_FLAGS%",
                         "%BYTES_RECEIVED%",
                         "%DURATION%",
                         "%UPSTREAM_HOST%",
                         "%UPSTREAM_CLUSTER_RAW%",
                         "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
                         "%REQ(:AUTHORITY)%",
                         "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
                         "code=%RESPONSE_CODE% \"q\""};
    size_t n = sizeof(keys) / sizeof(keys[0]);
    dp_access_json_field_t fields[16];
    memset(fields, 0, sizeof(fields));
    for (size_t i = 0; i < n; i++) {
        char *err = NULL;
        fields[i].key = keys[i];
        fields[i].kind = DP_ACCESS_JSON_FORMAT;
        ck_assert_int_eq(dp_access_format_compile(a, ops[i], &fields[i].fmt, &err), 0);
    }
    fields[n].key = "static";
    fields[n].kind = DP_ACCESS_JSON_RAW;
    fields[n].raw = "42";
    const dp_access_format_t *fmt = dp_access_format_json(a, fields, n + 1);
    char buf[4096];
    size_t len = dp_access_format_line(fmt, &f.s, 1012, buf, sizeof(buf));
    ck_assert_uint_gt(len, 2);
    ck_assert_int_eq(buf[len - 1], '\n');
    json_error_t je;
    json_t *j = json_loads(buf, 0, &je);
    ck_assert_msg(j != NULL, "%s: %s", buf, je.text);
    ck_assert_str_eq(json_string_value(json_object_get(j, "start_time")),
                     "2023-11-14T22:13:20.123Z");
    ck_assert_str_eq(json_string_value(json_object_get(j, "method")), "GET");
    ck_assert_str_eq(json_string_value(json_object_get(j, "path")), "/api/x?y=1");
    ck_assert_str_eq(json_string_value(json_object_get(j, "protocol")), "HTTP/1.1");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "response_code")), 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "response_flags")), "-");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "bytes_received")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "duration")), 12);
    ck_assert_str_eq(json_string_value(json_object_get(j, "upstream_host")), "127.0.0.1:9000");
    ck_assert_str_eq(json_string_value(json_object_get(j, "upstream_cluster")),
                     "outbound|80||svc.ns.svc.cluster.local");
    ck_assert_str_eq(json_string_value(json_object_get(j, "upstream_service_time")), "7");
    ck_assert(json_is_null(json_object_get(j, "upstream_transport_failure_reason")));
    ck_assert_str_eq(json_string_value(json_object_get(j, "mixed")), "code=200 \"q\"");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "static")), 42);
    ck_assert_uint_eq(json_object_size(j), n + 1);
    json_decref(j);
    fixture_done(&f);
    dp_arena_free(a);
}
END_TEST

static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return strdup("");
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

START_TEST(test_file_flush_reopen)
{
    char dir[] = "/tmp/skiff-al-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[128], moved[128];
    snprintf(path, sizeof(path), "%s/access.log", dir);
    snprintf(moved, sizeof(moved), "%s/access.log.1", dir);
    char *err = NULL;
    dp_access_file_t *f = dp_access_file_get(path, &err);
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_eq(dp_access_file_get(path, &err), f); /* one per path */
    dp_access_file_append(f, "one\n", 4);
    char *t = slurp(path);
    ck_assert_str_eq(t, ""); /* buffered */
    free(t);
    dp_access_log_flush();
    t = slurp(path);
    ck_assert_str_eq(t, "one\n");
    free(t);
    ck_assert_int_eq(rename(path, moved), 0);
    dp_access_file_append(f, "two\n", 4);
    ck_assert_int_eq(dp_access_log_reopen(), 0); /* flushes into the old file first */
    dp_access_file_append(f, "three\n", 6);
    dp_access_log_flush();
    t = slurp(moved);
    ck_assert_str_eq(t, "one\ntwo\n");
    free(t);
    t = slurp(path);
    ck_assert_str_eq(t, "three\n");
    free(t);
    ck_assert_ptr_null(dp_access_file_get("/nonexistent-dir/x.log", &err));
    ck_assert_msg(strstr(err, "/nonexistent-dir/x.log") != NULL, "%s", err);
    free(err);
    unlink(path);
    unlink(moved);
    rmdir(dir);
}
END_TEST

/* Malformed and edge-case formats: refused or formatted, never read out of bounds. */
START_TEST(test_edges)
{
    dp_arena_t *a = dp_arena_new();
    fixture_t f;
    fixture_init(&f);
    static const char *const bad[] = {"%",          "%%%",          "%REQ()%",       "%REQ(?X)%",
                                      "%REQ(X?)%",  "%REQ(A?B?C)%", "%DURATION:%",   "%DURATION:x%",
                                      "%duration%", "%REQ(X)",      "%START_TIME(%Y"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        free(compile_error(a, bad[i]));
    char big[2048];
    snprintf(big, sizeof(big), "%%REQ(%0300d)%%", 0);
    free(compile_error(a, big));
    /* More parts than a format may have. */
    char many[4096] = "";
    for (int i = 0; i < 300; i++)
        strcat(many, "%DURATION%,");
    free(compile_error(a, many));
    /* Odd START_TIME formats still give a bounded line. */
    ck_assert_str_eq(line_of(a, "%START_TIME(%9f %1f %%)%", &f), "123456000 1 %");
    ck_assert_str_eq(line_of(a, "", &f), "");
    ck_assert_str_eq(line_of(a, "plain", &f), "plain");
    /* A line longer than the buffer is cut, NUL ended. */
    const dp_access_format_t *fmt;
    char *err = NULL;
    ck_assert_int_eq(dp_access_format_compile(a, "%REQ(USER-AGENT)%%REQ(USER-AGENT)%", &fmt, &err),
                     0);
    char small[8];
    ck_assert_uint_eq(dp_access_format_line(fmt, &f.s, 1012, small, sizeof(small)), 7);
    ck_assert_str_eq(small, "curl/8c");
    /* No request (a TCP connection): the HTTP operators print "-", the code 0. */
    f.s.req = NULL;
    f.s.resp = NULL;
    f.s.details = NULL;
    ck_assert_str_eq(line_of(a,
                             "\"%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%\" %RESPONSE_CODE% "
                             "%RESPONSE_CODE_DETAILS%",
                             &f),
                     "\"- - -\" 200 -");
    fixture_done(&f);
    dp_arena_free(a);
}
END_TEST

/* FileAccessLog translation: a packed FileAccessLog in an AccessLog. */
static int build_one(dp_arena_t *a, Envoy__Extensions__AccessLoggers__File__V3__FileAccessLog *fl,
                     const dp_access_log_t **ret, size_t *ret_n, char **err)
{
    size_t len = envoy__extensions__access_loggers__file__v3__file_access_log__get_packed_size(fl);
    uint8_t *buf = malloc(len ? len : 1);
    envoy__extensions__access_loggers__file__v3__file_access_log__pack(fl, buf);
    Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
    any.type_url = XDS_FILE_ACCESS_LOG_TYPE;
    any.value.data = buf;
    any.value.len = len;
    Envoy__Config__Accesslog__V3__AccessLog al = ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG__INIT;
    al.name = "envoy.access_loggers.file";
    al.config_type_case = ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG__CONFIG_TYPE_TYPED_CONFIG;
    al.typed_config = &any;
    Envoy__Config__Accesslog__V3__AccessLog *v[] = {&al};
    int rc = xds_access_logs_build(a, v, 1, ret, ret_n, err);
    free(buf);
    return rc;
}

START_TEST(test_build)
{
    dp_arena_t *a = dp_arena_new();
    char path[] = "/tmp/skiff-al-build-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    fixture_t f;
    fixture_init(&f);
    const dp_access_log_t *logs;
    size_t n;
    char *err = NULL;
    char line[4096];

    /* No format: Envoy's default. */
    Envoy__Extensions__AccessLoggers__File__V3__FileAccessLog fl =
        ENVOY__EXTENSIONS__ACCESS_LOGGERS__FILE__V3__FILE_ACCESS_LOG__INIT;
    fl.path = path;
    ck_assert_int_eq(build_one(a, &fl, &logs, &n, &err), 0);
    ck_assert_uint_eq(n, 1);
    dp_access_format_line(logs[0].format, &f.s, 1012, line, sizeof(line));
    ck_assert_str_eq(line, "[2023-11-14T22:13:20.123Z] \"GET /api/x?y=1 HTTP/1.1\" 200 - 5 11 12 "
                           "7 \"10.0.0.1\" \"curl/8\" \"abc-123\" \"svc.ns:8080\" "
                           "\"127.0.0.1:9000\"\n");

    /* log_format.text_format_source.inline_string, as istiod sends it. */
    Envoy__Config__Core__V3__DataSource ds = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__INIT;
    ds.specifier_case = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING;
    ds.inline_string = "%RESPONSE_CODE% %UPSTREAM_CLUSTER%\n";
    Envoy__Config__Core__V3__SubstitutionFormatString sfs =
        ENVOY__CONFIG__CORE__V3__SUBSTITUTION_FORMAT_STRING__INIT;
    sfs.format_case =
        ENVOY__CONFIG__CORE__V3__SUBSTITUTION_FORMAT_STRING__FORMAT_TEXT_FORMAT_SOURCE;
    sfs.text_format_source = &ds;
    fl.access_log_format_case =
        ENVOY__EXTENSIONS__ACCESS_LOGGERS__FILE__V3__FILE_ACCESS_LOG__ACCESS_LOG_FORMAT_LOG_FORMAT;
    fl.log_format = &sfs;
    ck_assert_int_eq(build_one(a, &fl, &logs, &n, &err), 0);
    dp_access_format_line(logs[0].format, &f.s, 1012, line, sizeof(line));
    ck_assert_str_eq(line, "200 outbound|80||svc.ns.svc.cluster.local\n");

    /* An unknown operator is refused with the field and its name. */
    ds.inline_string = "%RESPONSE_CODE% %NOT_AN_OPERATOR%";
    ck_assert_int_eq(build_one(a, &fl, &logs, &n, &err), -EINVAL);
    ck_assert_msg(strstr(err, "NOT_AN_OPERATOR") && strstr(err, "text_format_source"), "%s", err);
    free(err);
    err = NULL;

    /* json_format: typed values. */
    Google__Protobuf__Value v1 = GOOGLE__PROTOBUF__VALUE__INIT, v2 = GOOGLE__PROTOBUF__VALUE__INIT;
    v1.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    v1.string_value = "%RESPONSE_CODE%";
    v2.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    v2.string_value = "%REQ(:METHOD)%";
    Google__Protobuf__Struct__FieldsEntry e1 = GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT,
                                          e2 = GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT;
    e1.key = "response_code";
    e1.value = &v1;
    e2.key = "method";
    e2.value = &v2;
    Google__Protobuf__Struct__FieldsEntry *ev[] = {&e1, &e2};
    Google__Protobuf__Struct st = GOOGLE__PROTOBUF__STRUCT__INIT;
    st.n_fields = 2;
    st.fields = ev;
    sfs.format_case = ENVOY__CONFIG__CORE__V3__SUBSTITUTION_FORMAT_STRING__FORMAT_JSON_FORMAT;
    sfs.json_format = &st;
    ck_assert_int_eq(build_one(a, &fl, &logs, &n, &err), 0);
    dp_access_format_line(logs[0].format, &f.s, 1012, line, sizeof(line));
    ck_assert_str_eq(line, "{\"response_code\":200,\"method\":\"GET\"}\n");

    /* An empty path is refused. */
    fl.path = "";
    ck_assert_int_eq(build_one(a, &fl, &logs, &n, &err), -EINVAL);
    ck_assert_msg(strstr(err, "path") != NULL, "%s", err);
    free(err);
    unlink(path);
    fixture_done(&f);
    dp_arena_free(a);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("access_log");
    TCase *tc = tcase_create("access_log");
    tcase_add_test(tc, test_default_and_istio_lines);
    tcase_add_test(tc, test_operators);
    tcase_add_test(tc, test_json);
    tcase_add_test(tc, test_edges);
    tcase_add_test(tc, test_file_flush_reopen);
    tcase_add_test(tc, test_build);
    suite_add_tcase(s, tc);
    return check_run(s);
}
