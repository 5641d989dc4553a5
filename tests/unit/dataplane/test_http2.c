/* The HTTP/2 codec (dataplane/http2.c) over real sockets: the server codec against the client
 * codec on a socketpair, the server against a raw nghttp2 client session the test drives, and
 * nghttp / h2load against the server on 127.0.0.1. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "dataplane/http.h"
#include "dataplane/log.h"
#include "tests/unit/check_run.h"

/* ---- recording sinks ---- */

typedef struct rec rec_t;

struct rec {
    dp_enc_t *enc;
    dp_pool_t *pool;
    dp_http_head_t *head;
    int n_heads;
    bool head_end;
    uint8_t *body;
    size_t body_len, body_cap;
    int n_data;
    bool data_end;
    dp_headers_t *trailers;
    bool done;
    dp_reset_reason_t why;
    int drained;
    bool server;
    bool echo; /* the server echoes this stream's data */
    void (*on_data_hook)(rec_t *r);
    rec_t *next_all;
};

typedef enum mode {
    MODE_ECHO,          /* when the request ends: 200, x-path, the request body echoed */
    MODE_GRPC,          /* on request trailers: headers, "reply", grpc trailers */
    MODE_TRAILERS_ONLY, /* on headers: 200 with grpc-status and END_STREAM */
    MODE_STREAM_ECHO,   /* 200 at once, every chunk echoed, trailers at the end */
    MODE_HOLD,          /* read_disable at once, nothing sent */
    MODE_RESET,         /* reset at once */
    MODE_MANUAL,        /* the test answers */
    MODE_FIXED,         /* 200 "ok\n" when the request ends; frees the record on done */
    MODE_GRPC_SERVER,   /* /pkg.Svc/Missing: trailers-only; anything else: stream echo */
} srv_mode_t;

static struct {
    uv_loop_t loop;
    dp_codec_conn_t *srv, *cli;
    bool srv_closed, cli_closed;
    dp_reset_reason_t srv_why, cli_why;
    srv_mode_t mode;
    bool refuse;
    rec_t *all;
    rec_t *srv_recs[256];
    int n_srv;
    int ready;
    int fixed_done;
    int conns_closed;
} T;

static rec_t *rec_new(bool server)
{
    rec_t *r = calloc(1, sizeof(*r));
    r->pool = dp_pool_new();
    r->server = server;
    r->next_all = T.all;
    T.all = r;
    return r;
}

static void body_add(rec_t *r, const uint8_t *p, size_t n)
{
    if (r->body_len + n > r->body_cap) {
        r->body_cap = (r->body_len + n) * 2 + 64;
        r->body = realloc(r->body, r->body_cap);
    }
    memcpy(r->body + r->body_len, p, n);
    r->body_len += n;
}

static void respond(rec_t *r, int status, const char *body, size_t n, bool trailers)
{
    dp_http_head_t h = {.status = status};
    dp_headers_add(&h.headers, r->pool, "x-path", 6, r->head ? r->head->path.p : "",
                   r->head ? r->head->path.n : 0);
    dp_headers_add(&h.headers, r->pool, "connection", 10, "close", 5); /* must be dropped */
    ck_assert_int_eq(r->enc->ops->headers(r->enc, &h, n == 0 && !trailers), 0);
    if (n > 0 || trailers)
        ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)body, n, !trailers), 0);
    if (trailers) {
        dp_headers_t t = {0};
        dp_headers_add(&t, r->pool, "grpc-status", 11, "0", 1);
        dp_headers_add(&t, r->pool, "grpc-message", 12, "ok", 2);
        ck_assert_int_eq(r->enc->ops->trailers(r->enc, &t), 0);
    }
}

static void srv_request_ended(rec_t *r)
{
    switch (T.mode) {
    case MODE_ECHO:
        respond(r, 200, (const char *)r->body, r->body_len, false);
        break;
    case MODE_FIXED:
        respond(r, 200, "ok\n", 3, false);
        break;
    case MODE_STREAM_ECHO:
    case MODE_GRPC_SERVER: {
        if (!r->echo)
            break;
        dp_headers_t t = {0};
        dp_headers_add(&t, r->pool, "grpc-status", 11, "0", 1);
        ck_assert_int_eq(r->enc->ops->trailers(r->enc, &t), 0);
        break;
    }
    default:
        break;
    }
}

static void s_on_headers(void *ud, dp_http_head_t *h, bool end)
{
    rec_t *r = ud;
    r->head = h;
    r->n_heads++;
    r->head_end = end;
    if (!r->server)
        return;
    srv_mode_t m = T.mode;
    if (m == MODE_GRPC_SERVER)
        m = DP_STR_EQ(h->path, "/pkg.Svc/Missing") ? MODE_TRAILERS_ONLY : MODE_STREAM_ECHO;
    switch (m) {
    case MODE_TRAILERS_ONLY: {
        dp_http_head_t rh = {.status = 200};
        dp_headers_add(&rh.headers, r->pool, "content-type", 12, "application/grpc", 16);
        dp_headers_add(&rh.headers, r->pool, "grpc-status", 11, "12", 2);
        dp_headers_add(&rh.headers, r->pool, "grpc-message", 12, "unimplemented", 13);
        ck_assert_int_eq(r->enc->ops->headers(r->enc, &rh, true), 0);
        return;
    }
    case MODE_STREAM_ECHO: {
        dp_http_head_t rh = {.status = 200};
        dp_headers_add(&rh.headers, r->pool, "content-type", 12, "application/grpc", 16);
        ck_assert_int_eq(r->enc->ops->headers(r->enc, &rh, false), 0);
        r->echo = true;
        break;
    }
    case MODE_HOLD:
        r->enc->ops->read_disable(r->enc, true);
        return;
    case MODE_RESET:
        r->enc->ops->reset(r->enc, DP_RESET_LOCAL);
        return;
    default:
        break;
    }
    if (end)
        srv_request_ended(r);
}

static void s_on_data(void *ud, const uint8_t *p, size_t n, bool end)
{
    rec_t *r = ud;
    ck_assert(!r->data_end);
    body_add(r, p, n);
    r->n_data++;
    r->data_end = end;
    if (r->server && r->echo && n > 0)
        ck_assert_int_eq(r->enc->ops->data(r->enc, p, n, false), 0);
    if (r->on_data_hook)
        r->on_data_hook(r);
    if (r->server && end)
        srv_request_ended(r);
}

static void s_on_trailers(void *ud, dp_headers_t *t)
{
    rec_t *r = ud;
    r->trailers = t;
    if (r->server && T.mode == MODE_GRPC) {
        respond(r, 200, "reply", 5, true);
        return;
    }
    if (r->server)
        srv_request_ended(r);
}

static void s_on_drained(void *ud)
{
    ((rec_t *)ud)->drained++;
}

static void s_on_done(void *ud, dp_reset_reason_t why)
{
    rec_t *r = ud;
    ck_assert(!r->done);
    r->done = true;
    r->why = why;
    if (r->server && T.mode == MODE_FIXED) {
        T.fixed_done += why == DP_RESET_NONE;
    }
}

static const dp_sink_ops_t sink = {
    .on_headers = s_on_headers,
    .on_data = s_on_data,
    .on_trailers = s_on_trailers,
    .on_drained = s_on_drained,
    .on_done = s_on_done,
};

static const dp_sink_ops_t *cb_on_stream(void *ud, dp_enc_t *enc, void **ret_ud,
                                         dp_pool_t **ret_pool)
{
    (void)ud;
    if (T.refuse)
        return NULL;
    rec_t *r = rec_new(true);
    r->enc = enc;
    if (T.n_srv < 256)
        T.srv_recs[T.n_srv++] = r;
    *ret_ud = r;
    *ret_pool = r->pool;
    return &sink;
}

static void cb_on_ready(void *ud, dp_codec_conn_t *c)
{
    (void)ud;
    (void)c;
    T.ready++;
}

static void cb_on_close(void *ud, dp_codec_conn_t *c, dp_reset_reason_t why)
{
    (void)c;
    T.conns_closed++;
    if (ud == (void *)1) {
        T.srv_closed = true;
        T.srv_why = why;
        T.srv = NULL;
    } else if (ud == (void *)2) {
        T.cli_closed = true;
        T.cli_why = why;
        T.cli = NULL;
    }
}

static const dp_codec_cb_t codec_cb = {
    .on_stream = cb_on_stream,
    .on_ready = cb_on_ready,
    .on_close = cb_on_close,
};

/* ---- the loop ---- */

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until cond() holds or ms pass; returns cond(). */
static bool run_until(bool (*cond)(void), uint64_t ms)
{
    uv_timer_t tick;
    uv_timer_init(&T.loop, &tick);
    uv_timer_start(&tick, tick_cb, 5, 5);
    uv_update_time(&T.loop);
    uint64_t end = uv_now(&T.loop) + ms;
    while (!(cond && cond()) && uv_now(&T.loop) < end)
        uv_run(&T.loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&T.loop, UV_RUN_NOWAIT);
    return cond ? cond() : true;
}

static void setup(void)
{
    memset(&T, 0, sizeof(T));
    ck_assert_int_eq(uv_loop_init(&T.loop), 0);
}

static void pair_with(const dp_http_limits_t *sl, const dp_http_limits_t *cl)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    T.srv = dp_h2_conn_new(&T.loop, sv[0], true, sl, &codec_cb, (void *)1);
    T.cli = dp_h2_conn_new(&T.loop, sv[1], false, cl, &codec_cb, (void *)2);
    ck_assert_ptr_nonnull(T.srv);
    ck_assert_ptr_nonnull(T.cli);
}

static void pair(void)
{
    dp_http_limits_t l = dp_http_limits_default();
    pair_with(&l, &l);
}

static bool both_closed(void)
{
    return (T.srv == NULL) && (T.cli == NULL);
}

static void teardown(void)
{
    if (T.cli)
        T.cli->ops->close(T.cli);
    if (T.srv)
        T.srv->ops->close(T.srv);
    run_until(both_closed, 2000);
    ck_assert(both_closed());
    uv_run(&T.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&T.loop), 0); /* every handle closed */
    rec_t *r = T.all;
    while (r) {
        rec_t *n = r->next_all;
        dp_pool_free(r->pool);
        free(r->body);
        free(r);
        r = n;
    }
}

static bool srv_closed(void)
{
    return T.srv_closed;
}

static rec_t *cli_request(const char *method, const char *path, bool end)
{
    rec_t *r = rec_new(false);
    r->enc = T.cli->ops->new_stream(T.cli, &sink, r, r->pool);
    ck_assert_ptr_nonnull(r->enc);
    dp_http_head_t h = {
        .method = {method, strlen(method)},
        .path = {path, strlen(path)},
        .authority = DP_STR("example.com"),
        .scheme = DP_STR("http"),
    };
    dp_headers_add(&h.headers, r->pool, "x-custom", 8, "v1", 2);
    dp_headers_add(&h.headers, r->pool, "cookie", 6, "a=1", 3);
    dp_headers_add(&h.headers, r->pool, "cookie", 6, "b=2", 3);
    dp_headers_add(&h.headers, r->pool, "keep-alive", 10, "300", 3); /* dropped */
    ck_assert_int_eq(r->enc->ops->headers(r->enc, &h, end), 0);
    return r;
}

static rec_t *g_r;
static bool g_done(void)
{
    return g_r->done;
}

static bool srv_has_one(void)
{
    return T.n_srv >= 1 && T.srv_recs[0]->head != NULL;
}

static bool hdr_is(const dp_headers_t *h, const char *name, const char *value)
{
    const dp_header_t *x = dp_headers_get(h, name, strlen(name));
    return x && x->value.n == strlen(value) && memcmp(x->value.p, value, x->value.n) == 0;
}

/* ---- codec against codec ---- */

START_TEST(test_get)
{
    setup();
    pair();
    T.mode = MODE_ECHO;
    rec_t *r = g_r = cli_request("GET", "/hello?x=1", true);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r->why, DP_RESET_NONE);
    ck_assert_int_eq(r->n_heads, 1);
    ck_assert_int_eq(r->head->status, 200);
    ck_assert_int_eq(r->head->version, DP_HTTP_2);
    ck_assert(hdr_is(&r->head->headers, "x-path", "/hello?x=1"));
    ck_assert_ptr_null(DP_HDR_GET(&r->head->headers, "connection"));
    ck_assert(r->head_end); /* empty echo: HEADERS with END_STREAM */

    ck_assert_int_eq(T.n_srv, 1);
    rec_t *s = T.srv_recs[0];
    run_until(NULL, 20);
    ck_assert(s->done);
    ck_assert_int_eq(s->why, DP_RESET_NONE);
    ck_assert(DP_STR_EQ(s->head->method, "GET"));
    ck_assert(DP_STR_EQ(s->head->path, "/hello?x=1"));
    ck_assert(DP_STR_EQ(s->head->scheme, "http"));
    ck_assert(DP_STR_EQ(s->head->authority, "example.com"));
    ck_assert_ptr_null(s->head->protocol.p);
    ck_assert_int_eq(s->head->version, DP_HTTP_2);
    ck_assert_int_eq(s->head->content_length, -1);
    ck_assert(s->head_end);
    ck_assert(hdr_is(&s->head->headers, "x-custom", "v1"));
    ck_assert_ptr_null(DP_HDR_GET(&s->head->headers, "keep-alive"));
    ck_assert_ptr_null(DP_HDR_GET(&s->head->headers, "host"));
    int cookies = 0;
    for (uint32_t i = 0; i < s->head->headers.n; i++)
        cookies += DP_STR_EQ(s->head->headers.v[i].name, "cookie");
    ck_assert_int_eq(cookies, 2);
    ck_assert_uint_eq(T.cli->ops->active_streams(T.cli), 0);
    ck_assert(T.cli->ops->can_take_stream(T.cli));
    ck_assert_int_ge(T.ready, 1);
    teardown();
}
END_TEST

static uint8_t pattern(size_t i)
{
    return (uint8_t)((i * 7 + i / 251) % 251);
}

START_TEST(test_post_1mib)
{
    setup();
    pair();
    T.mode = MODE_ECHO;
    const size_t total = 1024 * 1024;
    uint8_t *buf = malloc(total);
    for (size_t i = 0; i < total; i++)
        buf[i] = pattern(i);
    rec_t *r = g_r = cli_request("POST", "/upload", false);
    size_t off = 0, piece = 1000;
    while (off < total) {
        size_t n = piece < total - off ? piece : total - off;
        ck_assert_int_eq(r->enc->ops->data(r->enc, buf + off, n, off + n == total), 0);
        off += n;
        piece = piece * 3 % 17011 + 1;
    }
    ck_assert(run_until(g_done, 10000));
    ck_assert_int_eq(r->why, DP_RESET_NONE);
    rec_t *s = T.srv_recs[0];
    ck_assert_uint_eq(s->body_len, total);
    ck_assert(memcmp(s->body, buf, total) == 0);
    ck_assert(s->data_end);
    ck_assert_uint_eq(r->body_len, total);
    ck_assert(memcmp(r->body, buf, total) == 0);
    ck_assert(r->data_end);
    ck_assert_int_gt(r->n_data, 16);
    free(buf);
    teardown();
}
END_TEST

START_TEST(test_grpc_trailers)
{
    setup();
    pair();
    T.mode = MODE_GRPC;
    rec_t *r = rec_new(false);
    g_r = r;
    r->enc = T.cli->ops->new_stream(T.cli, &sink, r, r->pool);
    dp_http_head_t h = {.method = DP_STR("POST"),
                        .path = DP_STR("/pkg.Svc/Method"),
                        .authority = DP_STR("svc:50051")};
    dp_headers_add(&h.headers, r->pool, "content-type", 12, "application/grpc", 16);
    dp_headers_add(&h.headers, r->pool, "te", 2, "trailers", 8);
    ck_assert_int_eq(r->enc->ops->headers(r->enc, &h, false), 0);
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"msg1", 4, false), 0);
    dp_headers_t t = {0};
    dp_headers_add(&t, r->pool, "x-client-trailer", 16, "1", 1);
    ck_assert_int_eq(r->enc->ops->trailers(r->enc, &t), 0);
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"x", 1, false), -EINVAL);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r->why, DP_RESET_NONE);
    ck_assert_int_eq(r->head->status, 200);
    ck_assert(!r->head_end);
    ck_assert_uint_eq(r->body_len, 5);
    ck_assert(memcmp(r->body, "reply", 5) == 0);
    ck_assert_ptr_nonnull(r->trailers);
    ck_assert(hdr_is(r->trailers, "grpc-status", "0"));
    ck_assert(hdr_is(r->trailers, "grpc-message", "ok"));
    ck_assert(!r->data_end); /* trailers end it, not DATA */

    rec_t *s = T.srv_recs[0];
    ck_assert(DP_STR_EQ(s->head->scheme, "http")); /* the client's default */
    ck_assert(hdr_is(&s->head->headers, "te", "trailers"));
    ck_assert(hdr_is(&s->head->headers, "content-type", "application/grpc"));
    ck_assert_uint_eq(s->body_len, 4);
    ck_assert_ptr_nonnull(s->trailers);
    ck_assert(hdr_is(s->trailers, "x-client-trailer", "1"));
    run_until(NULL, 20);
    ck_assert(s->done);
    ck_assert_int_eq(s->why, DP_RESET_NONE);
    teardown();
}
END_TEST

START_TEST(test_grpc_trailers_only)
{
    setup();
    pair();
    T.mode = MODE_TRAILERS_ONLY;
    rec_t *r = g_r = cli_request("POST", "/pkg.Svc/Missing", true);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r->why, DP_RESET_NONE);
    ck_assert_int_eq(r->n_heads, 1);
    ck_assert(r->head_end);
    ck_assert(hdr_is(&r->head->headers, "grpc-status", "12"));
    ck_assert(hdr_is(&r->head->headers, "grpc-message", "unimplemented"));
    ck_assert_ptr_null(r->trailers);
    ck_assert_int_eq(r->n_data, 0);
    teardown();
}
END_TEST

static int bidi_sent, bidi_rounds;
static size_t bidi_bytes;

static void bidi_hook(rec_t *r)
{
    if (r->body_len != bidi_bytes || r->data_end)
        return;
    if (bidi_rounds == 100) {
        ck_assert_int_eq(r->enc->ops->data(r->enc, NULL, 0, true), 0);
        bidi_rounds++;
        return;
    }
    if (bidi_rounds > 100)
        return;
    char msg[64];
    int n = snprintf(msg, sizeof(msg), "message %d;", bidi_rounds++);
    bidi_bytes += (size_t)n;
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)msg, (size_t)n, false), 0);
}

START_TEST(test_bidi_streaming)
{
    setup();
    pair();
    T.mode = MODE_STREAM_ECHO;
    bidi_sent = bidi_rounds = 0;
    bidi_bytes = 0;
    rec_t *r = g_r = cli_request("POST", "/pkg.Svc/Chat", false);
    r->on_data_hook = bidi_hook;
    bidi_hook(r); /* the first message; the rest go as echoes come back */
    ck_assert(run_until(g_done, 10000));
    ck_assert_int_eq(r->why, DP_RESET_NONE);
    ck_assert_int_eq(bidi_rounds, 101);
    ck_assert_uint_eq(r->body_len, bidi_bytes);
    ck_assert(memcmp(r->body, "message 0;message 1;", 20) == 0);
    ck_assert_int_ge(r->n_data, 100);
    ck_assert(hdr_is(r->trailers, "grpc-status", "0"));
    ck_assert_uint_eq(T.srv_recs[0]->body_len, bidi_bytes);
    teardown();
}
END_TEST

static rec_t *many[50];
static bool many_done(void)
{
    for (int i = 0; i < 50; i++) {
        if (!many[i]->done)
            return false;
    }
    return true;
}

START_TEST(test_concurrent_50)
{
    setup();
    pair();
    T.mode = MODE_MANUAL;
    char paths[50][32];
    for (int i = 0; i < 50; i++) {
        snprintf(paths[i], sizeof(paths[i]), "/s/%d", i);
        many[i] = cli_request("GET", paths[i], true);
    }
    ck_assert_uint_eq(T.cli->ops->active_streams(T.cli), 50);
    /* All 50 are open at the server at once before any answer. */
    run_until(NULL, 100);
    ck_assert_int_eq(T.n_srv, 50);
    ck_assert_uint_eq(T.srv->ops->active_streams(T.srv), 50);
    for (int i = 49; i >= 0; i--) {
        rec_t *s = T.srv_recs[i];
        ck_assert_ptr_nonnull(s->head);
        respond(s, 200, s->head->path.p, s->head->path.n, false);
    }
    ck_assert(run_until(many_done, 5000));
    for (int i = 0; i < 50; i++) {
        ck_assert_int_eq(many[i]->why, DP_RESET_NONE);
        ck_assert_uint_eq(many[i]->body_len, strlen(paths[i]));
        ck_assert(memcmp(many[i]->body, paths[i], strlen(paths[i])) == 0);
    }
    run_until(NULL, 20);
    ck_assert_uint_eq(T.srv->ops->active_streams(T.srv), 0);
    teardown();
}
END_TEST

static rec_t *g_s;
static bool g_s_done(void)
{
    return g_s->done;
}

START_TEST(test_reset_by_client)
{
    setup();
    pair();
    T.mode = MODE_MANUAL;
    rec_t *r = cli_request("POST", "/r", false);
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"abc", 3, false), 0);
    ck_assert(run_until(srv_has_one, 5000));
    g_s = T.srv_recs[0];
    r->enc->ops->reset(r->enc, DP_RESET_LOCAL);
    ck_assert_uint_eq(T.cli->ops->active_streams(T.cli), 0);
    ck_assert(run_until(g_s_done, 5000));
    ck_assert_int_eq(g_s->why, DP_RESET_REMOTE);
    ck_assert(!r->done); /* no callbacks after reset */
    /* The connection lives on. */
    T.mode = MODE_ECHO;
    rec_t *r2 = g_r = cli_request("GET", "/after", true);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r2->why, DP_RESET_NONE);
    ck_assert(!r->done);
    teardown();
}
END_TEST

START_TEST(test_reset_by_server)
{
    setup();
    pair();
    T.mode = MODE_RESET;
    rec_t *r = g_r = cli_request("GET", "/r", true);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r->why, DP_RESET_REMOTE);
    ck_assert(!T.srv_recs[0]->done);
    /* REFUSED from the server's reset maps to DP_RESET_REFUSED at the client. */
    T.mode = MODE_MANUAL;
    rec_t *r2 = g_r = cli_request("GET", "/r2", true);
    run_until(NULL, 50);
    ck_assert_int_eq(T.n_srv, 2);
    T.srv_recs[1]->enc->ops->reset(T.srv_recs[1]->enc, DP_RESET_REFUSED);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r2->why, DP_RESET_REFUSED);
    teardown();
}
END_TEST

START_TEST(test_goaway)
{
    setup();
    pair();
    T.mode = MODE_MANUAL;
    rec_t *a = cli_request("GET", "/a", true);
    ck_assert(run_until(srv_has_one, 5000));
    T.srv->ops->go_away(T.srv);
    /* The GOAWAY is on the socket; the client has not read it and still opens a stream. */
    ck_assert(T.cli->ops->can_take_stream(T.cli));
    rec_t *b = g_r = cli_request("GET", "/b", true);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(b->why, DP_RESET_REFUSED);
    ck_assert(!T.cli->ops->can_take_stream(T.cli));
    ck_assert_ptr_null(T.cli->ops->new_stream(T.cli, &sink, b, b->pool));
    ck_assert_int_eq(T.n_srv, 1);
    ck_assert(!T.srv_closed);
    /* The stream in flight finishes, then both sides close in order. */
    respond(T.srv_recs[0], 200, "fine", 4, false);
    g_r = a;
    ck_assert(run_until(both_closed, 5000));
    ck_assert(a->done);
    ck_assert_int_eq(a->why, DP_RESET_NONE);
    ck_assert_uint_eq(a->body_len, 4);
    ck_assert_int_eq(T.srv_why, DP_RESET_NONE);
    ck_assert_int_eq(T.cli_why, DP_RESET_NONE);
    teardown();
}
END_TEST

START_TEST(test_close_terminates_streams)
{
    setup();
    pair();
    T.mode = MODE_MANUAL;
    rec_t *r = cli_request("GET", "/slow", true);
    ck_assert(run_until(srv_has_one, 5000));
    T.cli->ops->close(T.cli);
    ck_assert(r->done);
    ck_assert_int_eq(r->why, DP_RESET_CONN_TERMINATED);
    ck_assert(run_until(both_closed, 5000));
    ck_assert_int_eq(T.cli_why, DP_RESET_NONE);
    ck_assert_int_eq(T.srv_why, DP_RESET_CONN_TERMINATED);
    ck_assert(T.srv_recs[0]->done);
    ck_assert_int_eq(T.srv_recs[0]->why, DP_RESET_CONN_TERMINATED);
    teardown();
}
END_TEST

static size_t cli_buffered_target;
static rec_t *g_c;
static bool cli_stalled(void)
{
    return g_c->enc->ops->buffered(g_c->enc) == cli_buffered_target;
}

static bool srv_all_body(void)
{
    return T.n_srv >= 1 && T.srv_recs[0]->data_end;
}

START_TEST(test_read_disable_window)
{
    setup();
    dp_http_limits_t sl = dp_http_limits_default(), cl = dp_http_limits_default();
    sl.h2_initial_stream_window = 16384;
    cl.buffer_limit = 65536;
    pair_with(&sl, &cl);
    run_until(NULL, 50); /* SETTINGS exchanged: the client knows the 16 KiB window */
    T.mode = MODE_HOLD;
    rec_t *r = g_c = cli_request("POST", "/held", false);
    const size_t total = 100000;
    uint8_t *buf = malloc(total);
    for (size_t i = 0; i < total; i++)
        buf[i] = pattern(i);
    ck_assert_int_eq(r->enc->ops->data(r->enc, buf, total, true), 0);
    /* The peer sends one window's worth and stops. */
    cli_buffered_target = total - 16384;
    ck_assert(run_until(cli_stalled, 5000));
    run_until(NULL, 100);
    ck_assert_uint_eq(r->enc->ops->buffered(r->enc), total - 16384);
    rec_t *s = T.srv_recs[0];
    ck_assert_int_eq(s->n_data, 0); /* held: nothing reaches a disabled owner */
    ck_assert_int_eq(r->drained, 0);
    /* Counted: two disables need two enables. */
    s->enc->ops->read_disable(s->enc, true);
    s->enc->ops->read_disable(s->enc, false);
    run_until(NULL, 50);
    ck_assert_int_eq(s->n_data, 0);
    s->enc->ops->read_disable(s->enc, false);
    ck_assert(run_until(srv_all_body, 5000));
    ck_assert_uint_eq(s->body_len, total);
    ck_assert(memcmp(s->body, buf, total) == 0);
    ck_assert_uint_eq(r->enc->ops->buffered(r->enc), 0);
    ck_assert_int_eq(r->drained, 1); /* fell below 32 KiB after passing 64 KiB */
    respond(s, 204, NULL, 0, false);
    g_r = r;
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r->why, DP_RESET_NONE);
    free(buf);
    teardown();
}
END_TEST

START_TEST(test_header_limits)
{
    setup();
    dp_http_limits_t sl = dp_http_limits_default(), cl = dp_http_limits_default();
    cl.max_header_bytes = 256 * 1024;
    cl.max_headers = 1000;
    pair_with(&sl, &cl);
    T.mode = MODE_ECHO;
    /* 150 headers: over max_headers (100). */
    rec_t *r = g_r = rec_new(false);
    r->enc = T.cli->ops->new_stream(T.cli, &sink, r, r->pool);
    dp_http_head_t h = {.method = DP_STR("GET"), .path = DP_STR("/"), .authority = DP_STR("a")};
    for (int i = 0; i < 150; i++) {
        char n[16];
        int k = snprintf(n, sizeof(n), "x-h-%d", i);
        dp_headers_add(&h.headers, r->pool, n, (size_t)k, "v", 1);
    }
    ck_assert_int_eq(r->enc->ops->headers(r->enc, &h, true), 0);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r->why, DP_RESET_REMOTE);
    ck_assert_int_eq(T.n_srv, 1);
    run_until(NULL, 20);
    ck_assert(T.srv_recs[0]->done);
    ck_assert_int_eq(T.srv_recs[0]->why, DP_RESET_OVERFLOW);
    ck_assert_ptr_null(T.srv_recs[0]->head == NULL ? NULL : T.srv_recs[0]->head->method.p);

    /* 80 KB of header bytes: over max_header_bytes (60 KiB). */
    rec_t *r2 = g_r = rec_new(false);
    r2->enc = T.cli->ops->new_stream(T.cli, &sink, r2, r2->pool);
    dp_http_head_t h2 = {.method = DP_STR("GET"), .path = DP_STR("/"), .authority = DP_STR("a")};
    char *big = malloc(2000);
    memset(big, 'z', 2000);
    for (int i = 0; i < 40; i++) {
        char n[16];
        int k = snprintf(n, sizeof(n), "x-big-%d", i);
        dp_headers_add(&h2.headers, r2->pool, n, (size_t)k, big, 2000);
    }
    free(big);
    ck_assert_int_eq(r2->enc->ops->headers(r2->enc, &h2, true), 0);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r2->why, DP_RESET_REMOTE);
    run_until(NULL, 20);
    ck_assert_int_eq(T.srv_recs[1]->why, DP_RESET_OVERFLOW);

    /* What we send is bounded by our own limits: the server's 60 KiB. */
    rec_t *r3 = g_r = cli_request("GET", "/ok", true);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r3->why, DP_RESET_NONE);
    ck_assert(!T.srv_closed && !T.cli_closed);
    teardown();
}
END_TEST

START_TEST(test_informational_head)
{
    setup();
    pair();
    T.mode = MODE_MANUAL;
    rec_t *r = g_r = cli_request("POST", "/continue", false);
    ck_assert(run_until(srv_has_one, 5000));
    rec_t *s = T.srv_recs[0];
    dp_http_head_t h100 = {.status = 100};
    ck_assert_int_eq(s->enc->ops->headers(s->enc, &h100, false), 0);
    run_until(NULL, 30);
    ck_assert_int_eq(r->n_heads, 1);
    ck_assert_int_eq(r->head->status, 100);
    ck_assert(!r->head_end);
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"body", 4, true), 0);
    run_until(NULL, 30);
    ck_assert(s->data_end);
    respond(s, 201, "made", 4, false);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r->why, DP_RESET_NONE);
    ck_assert_int_eq(r->n_heads, 2);
    ck_assert_int_eq(r->head->status, 201);
    ck_assert_uint_eq(r->body_len, 4);
    teardown();
}
END_TEST

static int ready_seen;
static bool ready_again(void)
{
    return T.ready > ready_seen;
}

START_TEST(test_peer_stream_limit)
{
    setup();
    dp_http_limits_t sl = dp_http_limits_default(), cl = dp_http_limits_default();
    sl.h2_max_concurrent_streams = 2;
    pair_with(&sl, &cl);
    run_until(NULL, 50); /* the server's SETTINGS reached the client */
    T.mode = MODE_MANUAL;
    rec_t *a = cli_request("GET", "/1", true);
    cli_request("GET", "/2", true);
    ck_assert(!T.cli->ops->can_take_stream(T.cli));
    ck_assert_ptr_null(T.cli->ops->new_stream(T.cli, &sink, a, a->pool));
    run_until(NULL, 30);
    ck_assert_int_eq(T.n_srv, 2);
    ready_seen = T.ready;
    respond(T.srv_recs[0], 200, NULL, 0, false);
    ck_assert(run_until(ready_again, 5000));
    ck_assert(a->done);
    ck_assert(T.cli->ops->can_take_stream(T.cli));
    ck_assert_uint_eq(T.cli->ops->active_streams(T.cli), 1);
    teardown();
}
END_TEST

static bool srv_trailers_seen(void)
{
    return T.n_srv >= 1 && T.srv_recs[0]->trailers != NULL;
}

START_TEST(test_read_disable_holds_trailers)
{
    setup();
    pair();
    T.mode = MODE_HOLD;
    rec_t *r = cli_request("POST", "/t", false);
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"0123456789", 10, false), 0);
    dp_headers_t t = {0};
    dp_headers_add(&t, r->pool, "grpc-status", 11, "0", 1);
    ck_assert_int_eq(r->enc->ops->trailers(r->enc, &t), 0);
    run_until(NULL, 50);
    rec_t *s = T.srv_recs[0];
    ck_assert_int_eq(s->n_data, 0);
    ck_assert_ptr_null(s->trailers);
    /* The response ends the stream at the server while its input is still held: on_done
     * waits until that input has been delivered. */
    respond(s, 200, NULL, 0, false);
    g_r = r;
    ck_assert(run_until(g_done, 5000));
    run_until(NULL, 30);
    ck_assert(!s->done);
    s->enc->ops->read_disable(s->enc, false);
    ck_assert(run_until(srv_trailers_seen, 5000));
    ck_assert_uint_eq(s->body_len, 10);
    ck_assert(hdr_is(s->trailers, "grpc-status", "0"));
    run_until(NULL, 20);
    ck_assert(s->done);
    ck_assert_int_eq(s->why, DP_RESET_NONE);
    teardown();
}
END_TEST

START_TEST(test_connection_protocol_error)
{
    setup();
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    dp_http_limits_t l = dp_http_limits_default();
    T.srv = dp_h2_conn_new(&T.loop, sv[0], true, &l, &codec_cb, (void *)1);
    /* Preface, SETTINGS, then WINDOW_UPDATE with a zero increment on stream 0 (RFC 9113
     * §6.9: a connection error of type PROTOCOL_ERROR). */
    uint8_t b[DP_H2_PREFACE_LEN + 9 + 13] = {0};
    memcpy(b, DP_H2_PREFACE, DP_H2_PREFACE_LEN);
    b[DP_H2_PREFACE_LEN + 3] = NGHTTP2_SETTINGS;
    uint8_t *w = b + DP_H2_PREFACE_LEN + 9;
    w[2] = 4;
    w[3] = NGHTTP2_WINDOW_UPDATE;
    ck_assert_int_eq(write(sv[1], b, sizeof(b)), (ssize_t)sizeof(b));
    ck_assert(run_until(srv_closed, 5000));
    ck_assert_int_eq(T.srv_why, DP_RESET_PROTOCOL);
    /* What the server wrote ends with GOAWAY PROTOCOL_ERROR. */
    uint8_t in[4096];
    ssize_t n = read(sv[1], in, sizeof(in));
    ck_assert_int_ge(n, 17);
    ssize_t off = 0, last = -1;
    for (int i = 0; i < 64 && off + 9 <= n; i++) {
        last = off;
        off += 9 + ((size_t)in[off] << 16 | (size_t)in[off + 1] << 8 | in[off + 2]);
    }
    ck_assert_int_eq(off, n);
    ck_assert_int_eq(in[last + 3], NGHTTP2_GOAWAY);
    ck_assert_int_eq(in[last + 9 + 7], NGHTTP2_PROTOCOL_ERROR);
    close(sv[1]);
    teardown();
}
END_TEST

START_TEST(test_tcp_loopback_and_edges)
{
    setup();
    /* Both codecs on a TCP connection over 127.0.0.1 (uv_tcp_open rather than a pipe). */
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(l, 1), 0);
    socklen_t al = sizeof(a);
    getsockname(l, (struct sockaddr *)&a, &al);
    int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_eq(connect(cfd, (struct sockaddr *)&a, sizeof(a)), 0);
    int sfd = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    ck_assert_int_ge(sfd, 0);
    close(l);
    fcntl(cfd, F_SETFL, fcntl(cfd, F_GETFL) | O_NONBLOCK);
    dp_http_limits_t lim = dp_http_limits_default();
    T.srv = dp_h2_conn_new(&T.loop, sfd, true, &lim, &codec_cb, (void *)1);
    T.cli = dp_h2_conn_new(&T.loop, cfd, false, &lim, &codec_cb, (void *)2);
    T.mode = MODE_ECHO;

    /* The server side has no new_stream. */
    ck_assert_ptr_null(T.srv->ops->new_stream(T.srv, &sink, NULL, NULL));
    ck_assert(!T.srv->ops->can_take_stream(T.srv));

    /* A client stream reset before its head was sent: nothing reaches the server. */
    rec_t *z = rec_new(false);
    z->enc = T.cli->ops->new_stream(T.cli, &sink, z, z->pool);
    ck_assert_uint_eq(T.cli->ops->active_streams(T.cli), 1);
    z->enc->ops->reset(z->enc, DP_RESET_LOCAL);
    ck_assert_uint_eq(T.cli->ops->active_streams(T.cli), 0);

    /* A request head without an authority is refused by the encoder. */
    rec_t *bad = rec_new(false);
    bad->enc = T.cli->ops->new_stream(T.cli, &sink, bad, bad->pool);
    dp_http_head_t bh = {.method = DP_STR("GET"), .path = DP_STR("/")};
    ck_assert_int_eq(bad->enc->ops->headers(bad->enc, &bh, true), -EINVAL);
    ck_assert_int_eq(bad->enc->ops->data(bad->enc, (const uint8_t *)"x", 1, true), -EINVAL);
    bad->enc->ops->reset(bad->enc, DP_RESET_LOCAL);

    rec_t *r = g_r = cli_request("PUT", "/tcp", false);
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"over tcp", 8, true), 0);
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"late", 4, false), -EINVAL);
    ck_assert(run_until(g_done, 5000));
    ck_assert_int_eq(r->why, DP_RESET_NONE);
    ck_assert_uint_eq(r->body_len, 8);
    ck_assert(memcmp(r->body, "over tcp", 8) == 0);
    ck_assert_int_eq(T.n_srv, 1);
    ck_assert(!z->done && !bad->done);
    teardown();
}
END_TEST

/* ---- the server against a raw nghttp2 client ---- */

typedef struct raw {
    int fd;
    nghttp2_session *ses;
    int closed_streams;
    uint32_t last_error;
    int32_t last_closed;
    int status;
    char body[256];
    size_t body_len;
} raw_t;

static ssize_t raw_send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)s;
    (void)flags;
    raw_t *r = ud;
    size_t off = 0;
    for (int guard = 0; off < len && guard < 100000; guard++) {
        ssize_t n = write(r->fd, data + off, len - off);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && errno == EAGAIN) {
            uv_run(&T.loop, UV_RUN_NOWAIT);
        } else {
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
    }
    return (ssize_t)len;
}

static int raw_close_cb(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    (void)s;
    raw_t *r = ud;
    r->closed_streams++;
    r->last_error = code;
    r->last_closed = id;
    return 0;
}

static int raw_header_cb(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                         const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    (void)s;
    (void)f;
    (void)flags;
    raw_t *r = ud;
    if (nl == 7 && memcmp(name, ":status", 7) == 0)
        r->status = (int)strtol((const char *)value, NULL, 10) + 0 * (int)vl;
    return 0;
}

static int raw_data_cb(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *d, size_t len,
                       void *ud)
{
    (void)s;
    (void)flags;
    (void)id;
    raw_t *r = ud;
    if (r->body_len + len < sizeof(r->body)) {
        memcpy(r->body + r->body_len, d, len);
        r->body_len += len;
    }
    return 0;
}

static void raw_init(raw_t *r)
{
    memset(r, 0, sizeof(*r));
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    dp_http_limits_t l = dp_http_limits_default();
    T.srv = dp_h2_conn_new(&T.loop, sv[0], true, &l, &codec_cb, (void *)1);
    r->fd = sv[1];
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_send_callback(cbs, raw_send_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, raw_close_cb);
    nghttp2_session_callbacks_set_on_header_callback(cbs, raw_header_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, raw_data_cb);
    nghttp2_session_client_new(&r->ses, cbs, r);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(r->ses, NGHTTP2_FLAG_NONE, NULL, 0);
}

/* One turn of the raw client: send, run the loop, read. */
static void raw_turn(raw_t *r)
{
    nghttp2_session_send(r->ses);
    uv_run(&T.loop, UV_RUN_NOWAIT);
    uint8_t buf[16384];
    for (int i = 0; i < 64; i++) {
        ssize_t n = read(r->fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        ck_assert_int_eq(nghttp2_session_mem_recv(r->ses, buf, (size_t)n), n);
    }
    nghttp2_session_send(r->ses);
}

static bool raw_until_closed(raw_t *r, int want, int ms)
{
    for (int i = 0; i < ms && r->closed_streams < want; i++) {
        raw_turn(r);
        usleep(1000);
    }
    return r->closed_streams >= want;
}

static void raw_free(raw_t *r)
{
    nghttp2_session_del(r->ses);
    close(r->fd);
}

START_TEST(test_rapid_reset)
{
    setup();
    raw_t r;
    raw_init(&r);
    T.mode = MODE_MANUAL;
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"GET", 7, 3, 0},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
        {(uint8_t *)":path", (uint8_t *)"/", 5, 1, 0},
        {(uint8_t *)":authority", (uint8_t *)"a", 10, 1, 0},
    };
    /* HEADERS then RST_STREAM, over and over (CVE-2023-44487): past the reset budget the
     * server ends the connection. */
    for (int i = 0; i < 3000 && !T.srv_closed; i++) {
        int32_t id = nghttp2_submit_request(r.ses, NULL, nv, 4, NULL, NULL);
        ck_assert_int_gt(id, 0);
        nghttp2_session_send(r.ses); /* a RST_STREAM before its HEADERS left would cancel it */
        nghttp2_submit_rst_stream(r.ses, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
        nghttp2_session_send(r.ses);
        if (i % 50 == 0)
            raw_turn(&r);
    }
    for (int i = 0; i < 2000 && !T.srv_closed; i++) {
        raw_turn(&r);
        usleep(1000);
    }
    ck_assert(T.srv_closed);
    ck_assert_int_eq(T.srv_why, DP_RESET_PROTOCOL);
    ck_assert_int_gt(T.n_srv, 100);
    for (int i = 0; i < T.n_srv; i++)
        ck_assert(T.srv_recs[i]->done);
    raw_free(&r);
    teardown();
}
END_TEST

START_TEST(test_raw_host_and_refuse)
{
    setup();
    raw_t r;
    raw_init(&r);
    T.mode = MODE_FIXED;
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"GET", 7, 3, 0},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
        {(uint8_t *)":path", (uint8_t *)"/h", 5, 2, 0},
        {(uint8_t *)"host", (uint8_t *)"from-host:8080", 4, 14, 0},
        {(uint8_t *)"content-length", (uint8_t *)"0", 14, 1, 0},
    };
    ck_assert_int_gt(nghttp2_submit_request(r.ses, NULL, nv, 5, NULL, NULL), 0);
    ck_assert(raw_until_closed(&r, 1, 3000));
    ck_assert_uint_eq(r.last_error, NGHTTP2_NO_ERROR);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.body_len, 3);
    rec_t *s = T.srv_recs[0];
    ck_assert(DP_STR_EQ(s->head->authority, "from-host:8080"));
    ck_assert_ptr_null(DP_HDR_GET(&s->head->headers, "host"));
    ck_assert_int_eq(s->head->content_length, 0);

    /* A refused stream: RST_STREAM REFUSED_STREAM, the connection stays. */
    T.refuse = true;
    ck_assert_int_gt(nghttp2_submit_request(r.ses, NULL, nv, 4, NULL, NULL), 0);
    ck_assert(raw_until_closed(&r, 2, 3000));
    ck_assert_uint_eq(r.last_error, NGHTTP2_REFUSED_STREAM);
    T.refuse = false;
    r.status = 0;
    ck_assert_int_gt(nghttp2_submit_request(r.ses, NULL, nv, 4, NULL, NULL), 0);
    ck_assert(raw_until_closed(&r, 3, 3000));
    ck_assert_int_eq(r.status, 200);

    /* A malformed request (a connection-specific header): that stream is reset with
     * PROTOCOL_ERROR, the connection stays. */
    nghttp2_nv bad[] = {
        {(uint8_t *)":method", (uint8_t *)"GET", 7, 3, 0},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
        {(uint8_t *)":path", (uint8_t *)"/h", 5, 2, 0},
        {(uint8_t *)":authority", (uint8_t *)"a", 10, 1, 0},
        {(uint8_t *)"connection", (uint8_t *)"keep-alive", 10, 10, 0},
    };
    ck_assert_int_gt(nghttp2_submit_request(r.ses, NULL, bad, 5, NULL, NULL), 0);
    ck_assert(raw_until_closed(&r, 4, 3000));
    ck_assert_uint_eq(r.last_error, NGHTTP2_PROTOCOL_ERROR);
    run_until(NULL, 20);
    ck_assert_int_eq(T.n_srv, 3);
    ck_assert_int_eq(T.srv_recs[2]->why, DP_RESET_PROTOCOL);
    ck_assert_int_eq(T.fixed_done, 2);
    ck_assert(!T.srv_closed);
    raw_free(&r);
    ck_assert(run_until(both_closed, 3000));
    ck_assert_int_eq(T.srv_why, DP_RESET_NONE);
    teardown();
}
END_TEST

/* Writes as much of p as the socket takes, running the loop meanwhile. */
static void raw_write_all(int fd, const uint8_t *p, size_t n, int ms)
{
    size_t off = 0;
    uv_update_time(&T.loop);
    uint64_t end = uv_now(&T.loop) + (uint64_t)ms;
    while (off < n && !T.srv_closed && uv_now(&T.loop) < end) {
        ssize_t k = write(fd, p + off, n - off);
        if (k > 0)
            off += (size_t)k;
        else if (k < 0 && errno != EAGAIN)
            break;
        uv_run(&T.loop, UV_RUN_NOWAIT);
        uv_update_time(&T.loop);
    }
}

START_TEST(test_ping_flood)
{
    setup();
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    dp_http_limits_t l = dp_http_limits_default();
    T.srv = dp_h2_conn_new(&T.loop, sv[0], true, &l, &codec_cb, (void *)1);
    /* The preface, an empty SETTINGS, then 200000 PINGs; the ACKs are never read. */
    const size_t n_ping = 200000;
    size_t len = DP_H2_PREFACE_LEN + 9 + n_ping * 17;
    uint8_t *b = calloc(1, len);
    memcpy(b, DP_H2_PREFACE, DP_H2_PREFACE_LEN);
    uint8_t *p = b + DP_H2_PREFACE_LEN;
    p[3] = NGHTTP2_SETTINGS;
    p += 9;
    for (size_t i = 0; i < n_ping; i++, p += 17) {
        p[2] = 8;
        p[3] = NGHTTP2_PING;
        memcpy(p + 9, &i, sizeof(i));
    }
    raw_write_all(sv[1], b, len, 20000);
    ck_assert(run_until(srv_closed, 5000));
    ck_assert_int_eq(T.srv_why, DP_RESET_PROTOCOL);
    free(b);
    close(sv[1]);
    teardown();
}
END_TEST

START_TEST(test_settings_flood_and_garbage)
{
    setup();
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    dp_http_limits_t l = dp_http_limits_default();
    T.srv = dp_h2_conn_new(&T.loop, sv[0], true, &l, &codec_cb, (void *)1);
    const size_t n = 100000;
    size_t len = DP_H2_PREFACE_LEN + n * 9;
    uint8_t *b = calloc(1, len);
    memcpy(b, DP_H2_PREFACE, DP_H2_PREFACE_LEN);
    for (size_t i = 0; i < n; i++)
        b[DP_H2_PREFACE_LEN + i * 9 + 3] = NGHTTP2_SETTINGS;
    raw_write_all(sv[1], b, len, 20000);
    ck_assert(run_until(srv_closed, 5000));
    ck_assert_int_eq(T.srv_why, DP_RESET_PROTOCOL);
    close(sv[1]);
    free(b);

    /* Not HTTP/2 at all. */
    T.srv_closed = false;
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    T.srv = dp_h2_conn_new(&T.loop, sv[0], true, &l, &codec_cb, (void *)1);
    const char *h1 = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    ck_assert_int_eq(write(sv[1], h1, strlen(h1)), (ssize_t)strlen(h1));
    ck_assert(run_until(srv_closed, 5000));
    ck_assert_int_eq(T.srv_why, DP_RESET_PROTOCOL);
    close(sv[1]);
    teardown();
}
END_TEST

/* ---- nghttp and h2load against the server on 127.0.0.1 ---- */

static uv_poll_t lpoll;
static int lfd;

static void accept_cb(uv_poll_t *p, int status, int events)
{
    (void)p;
    (void)status;
    (void)events;
    for (int i = 0; i < 64; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        dp_http_limits_t l = dp_http_limits_default();
        ck_assert_ptr_nonnull(dp_h2_conn_new(&T.loop, fd, true, &l, &codec_cb, (void *)3));
    }
}

/* A listener on 127.0.0.1 whose connections get the server codec; its port in port. */
static void listen_loopback(char *port, size_t n)
{
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(lfd, 128), 0);
    socklen_t al = sizeof(a);
    getsockname(lfd, (struct sockaddr *)&a, &al);
    snprintf(port, n, "%d", ntohs(a.sin_port));
    uv_poll_init(&T.loop, &lpoll, lfd);
    uv_poll_start(&lpoll, UV_READABLE, accept_cb);
}

typedef struct child {
    uv_process_t proc;
    uv_timer_t kill;
    bool exited;
    int64_t status;
} child_t;

static void child_exit_cb(uv_process_t *p, int64_t status, int sig)
{
    child_t *c = p->data;
    c->exited = true;
    c->status = sig ? -sig : status;
    uv_timer_stop(&c->kill);
}

static void child_kill_cb(uv_timer_t *t)
{
    child_t *c = t->data;
    uv_process_kill(&c->proc, SIGKILL);
}

static child_t *g_child;
static bool child_exited(void)
{
    return g_child->exited;
}

/* Runs argv with stdout into out (a file), killed after 30 s; returns its exit status. */
static int64_t run_tool(char **argv, const char *out)
{
    child_t c = {0};
    int ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(ofd, 0);
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE},
        {.flags = UV_INHERIT_FD, .data.fd = ofd},
        {.flags = UV_INHERIT_FD, .data.fd = ofd},
    };
    uv_process_options_t o = {
        .exit_cb = child_exit_cb, .file = argv[0], .args = argv, .stdio_count = 3, .stdio = stdio};
    c.proc.data = &c;
    c.kill.data = &c;
    uv_timer_init(&T.loop, &c.kill);
    uv_timer_start(&c.kill, child_kill_cb, 30000, 0);
    int rv = uv_spawn(&T.loop, &c.proc, &o);
    close(ofd);
    ck_assert_msg(rv == 0, "spawn %s: %s", argv[0], uv_strerror(rv));
    g_child = &c;
    run_until(child_exited, 40000);
    ck_assert(c.exited);
    uv_close((uv_handle_t *)&c.proc, NULL);
    uv_close((uv_handle_t *)&c.kill, NULL);
    uv_run(&T.loop, UV_RUN_NOWAIT);
    return c.status;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static bool all_conns_closed(void)
{
    return T.conns_closed >= 11;
}

START_TEST(test_external_clients)
{
    setup();
    T.mode = MODE_FIXED;
    char port[16], url[64];
    listen_loopback(port, sizeof(port));
    snprintf(url, sizeof(url), "http://127.0.0.1:%s/", port);

    char out[] = "/tmp/skiff-h2-XXXXXX";
    int tfd = mkstemp(out);
    close(tfd);
    char *nghttp[] = {"/usr/bin/nghttp", "-nv", url, NULL};
    int64_t st = run_tool(nghttp, out);
    char *text = slurp(out);
    ck_assert_msg(st == 0, "nghttp exit %lld: %s", (long long)st, text);
    ck_assert_msg(strstr(text, ":status: 200") != NULL, "%s", text);
    free(text);

    char *h2load[] = {"/usr/bin/h2load", "-n", "1000", "-c", "10", "-m", "10", url, NULL};
    st = run_tool(h2load, out);
    text = slurp(out);
    ck_assert_msg(st == 0, "h2load exit %lld: %s", (long long)st, text);
    ck_assert_msg(strstr(text, "1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed, "
                               "0 errored") != NULL,
                  "%s", text);
    ck_assert_msg(strstr(text, "status codes: 1000 2xx") != NULL, "%s", text);
    if (getenv("H2_TEST_VERBOSE"))
        fprintf(stderr, "%s\n", text);
    free(text);
    unlink(out);
    ck_assert(run_until(all_conns_closed, 5000));
    ck_assert_int_eq(T.fixed_done, 1001);
    uv_close((uv_handle_t *)&lpoll, NULL);
    close(lfd);
    teardown();
}
END_TEST

/* A real gRPC client (grpcio): unary, a 1 MiB message, bidirectional streaming and a
 * trailers-only status, against the server codec echoing messages back. */
static const char grpc_client_py[] =
    "import grpc, sys\n"
    "ch = grpc.insecure_channel('127.0.0.1:' + sys.argv[1])\n"
    "echo = ch.unary_unary('/pkg.Svc/Echo')\n"
    "assert echo(b'hello', timeout=10) == b'hello'\n"
    "big = bytes(range(256)) * 4096\n"
    "assert echo(big, timeout=10) == big\n"
    "chat = ch.stream_stream('/pkg.Svc/Chat')\n"
    "msgs = [b'm%d' % i * 100 for i in range(50)]\n"
    "out = list(chat(iter(msgs), timeout=10))\n"
    "assert out == msgs, out[:3]\n"
    "try:\n"
    "    ch.unary_unary('/pkg.Svc/Missing')(b'x', timeout=10)\n"
    "    raise SystemExit('no error')\n"
    "except grpc.RpcError as e:\n"
    "    assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e.code()\n"
    "    assert e.details() == 'unimplemented', e.details()\n"
    "print('grpc ok')\n";

START_TEST(test_grpc_client)
{
    setup();
    T.mode = MODE_GRPC_SERVER;
    char port[16];
    listen_loopback(port, sizeof(port));
    char out[] = "/tmp/skiff-h2-XXXXXX";
    int tfd = mkstemp(out);
    close(tfd);
    char *argv[] = {"/usr/bin/python3", "-c", (char *)grpc_client_py, port, NULL};
    int64_t st = run_tool(argv, out);
    char *text = slurp(out);
    ck_assert_msg(st == 0 && strstr(text, "grpc ok") != NULL, "python exit %lld: %s", (long long)st,
                  text);
    free(text);
    unlink(out);
    ck_assert_int_ge(T.n_srv, 4);
    for (int i = 0; i < T.n_srv; i++)
        ck_assert_msg(T.srv_recs[i]->done && T.srv_recs[i]->why == DP_RESET_NONE,
                      "stream %d: done %d why %d", i, T.srv_recs[i]->done, T.srv_recs[i]->why);
    uv_close((uv_handle_t *)&lpoll, NULL);
    close(lfd);
    T.conns_closed = 0;
    teardown();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("http2");
    TCase *tc = tcase_create("codec");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_get);
    tcase_add_test(tc, test_post_1mib);
    tcase_add_test(tc, test_grpc_trailers);
    tcase_add_test(tc, test_grpc_trailers_only);
    tcase_add_test(tc, test_bidi_streaming);
    tcase_add_test(tc, test_concurrent_50);
    tcase_add_test(tc, test_reset_by_client);
    tcase_add_test(tc, test_reset_by_server);
    tcase_add_test(tc, test_goaway);
    tcase_add_test(tc, test_close_terminates_streams);
    tcase_add_test(tc, test_read_disable_window);
    tcase_add_test(tc, test_header_limits);
    tcase_add_test(tc, test_informational_head);
    tcase_add_test(tc, test_peer_stream_limit);
    tcase_add_test(tc, test_read_disable_holds_trailers);
    tcase_add_test(tc, test_tcp_loopback_and_edges);
    tcase_add_test(tc, test_raw_host_and_refuse);
    tcase_add_test(tc, test_rapid_reset);
    tcase_add_test(tc, test_connection_protocol_error);
    tcase_add_test(tc, test_ping_flood);
    tcase_add_test(tc, test_settings_flood_and_garbage);
    tcase_add_test(tc, test_external_clients);
    tcase_add_test(tc, test_grpc_client);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (getenv("H2_TEST_VERBOSE"))
        dp_log_set_all(DP_LOG_DEBUG);
    return check_run(suite());
}
