/* The HTTP/1.1 codec (dp_h1_conn_new): server and client mode over real sockets (socketpair and
 * loopback TCP) with a uv loop, recording sinks, the smuggling cases answered locally, and a
 * proxy round trip (server codec -> relay -> client codec -> server codec echo). */
#include <arpa/inet.h>
#include <check.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dataplane/http.h"
#include "dataplane/http1_parse.h"
#include "tests/unit/check_run.h"

/* ---- a recording sink ---- */

typedef struct rec {
    dp_pool_t *pool;
    dp_enc_t *enc;
    int heads;
    int status[4];
    dp_http_head_t *head[4];
    bool head_end[4];
    char *body;
    size_t body_n, body_cap;
    int data_calls;
    bool data_end;
    dp_headers_t *trailers;
    int done;
    dp_reset_reason_t why;
    int drained;
} rec_t;

static void rec_append(rec_t *r, const uint8_t *p, size_t n)
{
    if (r->body_n + n + 1 > r->body_cap) {
        r->body_cap = (r->body_n + n + 1) * 2;
        r->body = realloc(r->body, r->body_cap);
    }
    if (n)
        memcpy(r->body + r->body_n, p, n);
    r->body_n += n;
    r->body[r->body_n] = '\0';
}

/* ---- server fixture ---- */

typedef enum {
    RESP_NONE,
    RESP_AT_END,
    RESP_AT_HEAD
} resp_mode_t;

typedef struct srv {
    uv_loop_t loop;
    int peer; /* the raw client end */
    dp_codec_conn_t *conn;
    int streams;
    rec_t rec[4];
    bool refuse;
    resp_mode_t resp;
    const char *resp_body;
    bool resp_chunked;
    bool closed;
    dp_reset_reason_t close_why;
    char out[1 << 17];
    size_t out_n;
    bool peer_eof;
    bool no_auto_shut; /* the peer does not answer the codec's FIN with its own */
    bool peer_hold;    /* the peer reads nothing for now */
} srv_t;

static srv_t *cur;

static void respond(srv_t *t, rec_t *r)
{
    dp_http_head_t h = {0};
    h.status = 200;
    h.content_length = t->resp_chunked ? -1 : (int64_t)strlen(t->resp_body);
    dp_headers_add(&h.headers, r->pool, "x-test", 6, "yes", 3);
    ck_assert_int_eq(r->enc->ops->headers(r->enc, &h, false), 0);
    ck_assert_int_eq(
        r->enc->ops->data(r->enc, (const uint8_t *)t->resp_body, strlen(t->resp_body), true), 0);
}

static void s_on_headers(void *ud, dp_http_head_t *h, bool end)
{
    rec_t *r = ud;
    if (r->heads < 4) {
        r->head[r->heads] = h;
        r->status[r->heads] = h->status;
        r->head_end[r->heads] = end;
    }
    r->heads++;
    if (cur && ((end && cur->resp == RESP_AT_END) || cur->resp == RESP_AT_HEAD))
        respond(cur, r);
}

static void s_on_data(void *ud, const uint8_t *p, size_t n, bool end)
{
    rec_t *r = ud;
    r->data_calls++;
    rec_append(r, p, n);
    if (end) {
        r->data_end = true;
        if (cur && cur->resp == RESP_AT_END)
            respond(cur, r);
    }
}

static void s_on_trailers(void *ud, dp_headers_t *t)
{
    rec_t *r = ud;
    r->trailers = t;
    if (cur && cur->resp == RESP_AT_END)
        respond(cur, r);
}

static void s_on_drained(void *ud)
{
    ((rec_t *)ud)->drained++;
}

static void s_on_done(void *ud, dp_reset_reason_t why)
{
    rec_t *r = ud;
    r->done++;
    r->why = why;
}

static const dp_sink_ops_t rec_ops = {
    .on_headers = s_on_headers,
    .on_data = s_on_data,
    .on_trailers = s_on_trailers,
    .on_drained = s_on_drained,
    .on_done = s_on_done,
};

static const dp_sink_ops_t *srv_on_stream(void *ud, dp_enc_t *enc, void **ret_ud,
                                          dp_pool_t **ret_pool)
{
    srv_t *t = ud;
    t->streams++;
    if (t->refuse)
        return NULL;
    ck_assert_int_lt(t->streams, 5);
    rec_t *r = &t->rec[t->streams - 1];
    r->pool = dp_pool_new();
    r->enc = enc;
    *ret_ud = r;
    *ret_pool = r->pool;
    return &rec_ops;
}

static void srv_on_close(void *ud, dp_codec_conn_t *c, dp_reset_reason_t why)
{
    srv_t *t = ud;
    (void)c;
    t->closed = true;
    t->close_why = why;
}

static const dp_codec_cb_t srv_cb = {
    .on_stream = srv_on_stream,
    .on_close = srv_on_close,
};

static void peer_read(srv_t *t)
{
    while (!t->peer_hold) {
        if (t->out_n + 1 >= sizeof(t->out))
            return;
        ssize_t n = recv(t->peer, t->out + t->out_n, sizeof(t->out) - 1 - t->out_n, MSG_DONTWAIT);
        if (n > 0) {
            t->out_n += (size_t)n;
            t->out[t->out_n] = '\0';
            continue;
        }
        if (n == 0 && !t->peer_eof) {
            /* A well-behaved client closes its side once the server did. */
            t->peer_eof = true;
            if (!t->no_auto_shut)
                shutdown(t->peer, SHUT_WR);
        }
        return;
    }
}

/* Runs the loop for up to ms milliseconds, or until the codec closed and the peer saw EOF. */
static void spin(srv_t *t, int ms)
{
    for (int i = 0; i < ms; i++) {
        uv_run(&t->loop, UV_RUN_NOWAIT);
        peer_read(t);
        if (t->closed && t->peer_eof)
            return;
        poll(NULL, 0, 1);
    }
}

/* A loopback TCP connection: fds[0] connected to fds[1], both non-blocking; rcvbuf (0: the
 * default) is fds[1]'s receive buffer, set before the handshake so the window is small from
 * the start. */
static void tcp_pair(int fds[2], int rcvbuf)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf)
        setsockopt(l, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    ck_assert_int_eq(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(l, 1), 0);
    getsockname(l, (struct sockaddr *)&a, &al);
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_eq(connect(fds[0], (struct sockaddr *)&a, sizeof(a)), 0);
    fds[1] = accept(l, NULL, NULL);
    ck_assert_int_ge(fds[1], 0);
    close(l);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    fcntl(fds[1], F_SETFL, O_NONBLOCK);
}

/* The codec on sv[0] (non-blocking), the raw peer on sv[1]. */
static srv_t *srv_new_on(const dp_http_limits_t *lim, const int sv[2])
{
    srv_t *t = calloc(1, sizeof(*t));
    uv_loop_init(&t->loop);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    t->peer = sv[1];
    t->resp = RESP_AT_END;
    t->resp_body = "hello";
    dp_http_limits_t l = lim ? *lim : dp_http_limits_default();
    t->conn = dp_h1_conn_new(&t->loop, sv[0], true, &l, &srv_cb, t);
    ck_assert_ptr_nonnull(t->conn);
    cur = t;
    return t;
}

static srv_t *srv_new(const dp_http_limits_t *lim)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    return srv_new_on(lim, sv);
}

static void peer_send(srv_t *t, const char *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t k = send(t->peer, p + off, n - off, 0);
        ck_assert_int_gt(k, 0);
        off += (size_t)k;
    }
}

#define PEER_SEND(t, lit) peer_send((t), (lit), sizeof(lit) - 1)

static void srv_free(srv_t *t)
{
    if (!t->closed)
        t->conn->ops->close(t->conn);
    for (int i = 0; i < 50 && !t->closed; i++)
        uv_run(&t->loop, UV_RUN_NOWAIT);
    ck_assert(t->closed);
    close(t->peer);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&t->loop), 0);
    for (int i = 0; i < 4; i++) {
        dp_pool_free(t->rec[i].pool);
        free(t->rec[i].body);
    }
    free(t);
    cur = NULL;
}

static const char *hdr(const dp_http_head_t *h, const char *name)
{
    const dp_header_t *f = dp_headers_get(&h->headers, name, strlen(name));
    return f ? f->value.p : NULL;
}

static const char *reply_for(int status);

/* ---- server: basics ---- */

START_TEST(test_server_get_keepalive)
{
    srv_t *t = srv_new(NULL);
    PEER_SEND(t, "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nFoo: Bar \t\r\nUser-Agent: x\r\n"
                 "X-Empty:\r\n"
                 "Connection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: gzip\r\n\r\n");
    spin(t, 200);
    ck_assert_int_eq(t->streams, 1);
    rec_t *r = &t->rec[0];
    ck_assert_int_eq(r->heads, 1);
    dp_http_head_t *h = r->head[0];
    ck_assert(DP_STR_EQ(h->method, "GET"));
    ck_assert(DP_STR_EQ(h->path, "/a?b=1"));
    ck_assert(DP_STR_EQ(h->authority, "example.com"));
    ck_assert(DP_STR_EQ(h->scheme, "http"));
    ck_assert_int_eq(h->version, DP_HTTP_11);
    ck_assert_int_eq(h->content_length, -1);
    ck_assert(r->head_end[0]);
    ck_assert_str_eq(hdr(h, "foo"), "Bar");
    ck_assert_ptr_null(hdr(h, "host"));
    ck_assert_ptr_null(hdr(h, "connection"));
    ck_assert_ptr_null(hdr(h, "x-hop"));
    ck_assert_ptr_null(hdr(h, "keep-alive"));
    ck_assert_ptr_null(hdr(h, "te"));
    ck_assert_str_eq(hdr(h, "x-empty"), "");
    ck_assert_uint_eq(h->headers.n, 3);
    ck_assert_str_eq(t->out, "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\nhello");
    ck_assert_int_eq(r->done, 1);
    ck_assert_int_eq(r->why, DP_RESET_NONE);
    ck_assert(!t->closed);

    /* A second request on the same connection, with a body and te: trailers. */
    t->out_n = 0;
    PEER_SEND(t, "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTE: trailers\r\n\r\nabc");
    spin(t, 200);
    ck_assert_int_eq(t->streams, 2);
    r = &t->rec[1];
    ck_assert_int_eq(r->head[0]->content_length, 3);
    ck_assert(!r->head_end[0]);
    ck_assert_str_eq(hdr(r->head[0], "te"), "trailers");
    ck_assert_str_eq(hdr(r->head[0], "content-length"), "3");
    ck_assert_str_eq(r->body, "abc");
    ck_assert(r->data_end);
    ck_assert_int_eq(r->data_calls, 1);
    ck_assert_int_eq(r->done, 1);
    ck_assert_str_eq(t->out, "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\nhello");

    /* Idle EOF: an orderly close. */
    shutdown(t->peer, SHUT_WR);
    spin(t, 200);
    ck_assert(t->closed);
    ck_assert_int_eq(t->close_why, DP_RESET_NONE);
    srv_free(t);
}
END_TEST

START_TEST(test_server_pipelined)
{
    srv_t *t = srv_new(NULL);
    t->resp = RESP_NONE;
    PEER_SEND(t, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
                 "GET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    spin(t, 100);
    /* The second request waits for the first stream. */
    ck_assert_int_eq(t->streams, 1);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(t->streams, i + 1);
        char want[3] = {'/', (char)('1' + i), 0};
        ck_assert(dp_str_eq(t->rec[i].head[0]->path, want, 2));
        respond(t, &t->rec[i]);
        spin(t, 100);
        ck_assert_int_eq(t->rec[i].done, 1);
    }
    ck_assert_int_eq(t->streams, 3);
    ck_assert_str_eq(t->out,
                     "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\nhello"
                     "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\nhello"
                     "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\nconnection: close"
                     "\r\n\r\nhello");
    ck_assert(t->closed);
    ck_assert(t->peer_eof);
    srv_free(t);
}
END_TEST

/* A response written outside the loop is held until the loop's check phase (after the turn's
 * I/O callbacks), head and body in one buffer; a large body goes at once, after the head. */
START_TEST(test_server_writes_held_for_the_turn)
{
    srv_t *t = srv_new(NULL);
    t->resp = RESP_NONE;
    PEER_SEND(t, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n");
    spin(t, 50);
    ck_assert_int_eq(t->streams, 1);
    respond(t, &t->rec[0]);
    peer_read(t);
    ck_assert_uint_eq(t->out_n, 0);
    uv_run(&t->loop, UV_RUN_NOWAIT);
    peer_read(t);
    ck_assert_str_eq(t->out, "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\nhello");
    spin(t, 50);
    ck_assert_int_eq(t->streams, 2);
    static char big[8001];
    memset(big, 'b', 8000);
    t->resp_body = big;
    t->out_n = 0;
    respond(t, &t->rec[1]);
    peer_read(t);
    static const char head[] = "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 8000\r\n\r\n";
    ck_assert_uint_eq(t->out_n, sizeof(head) - 1 + 8000);
    ck_assert_int_eq(memcmp(t->out, head, sizeof(head) - 1), 0);
    ck_assert_int_eq(memcmp(t->out + sizeof(head) - 1, big, 8000), 0);
    srv_free(t);
}
END_TEST

/* A response head written from a timer callback (before the poll phase; its body not yet
 * known, so nothing else wakes the loop) leaves before the loop waits in poll: the peer's end
 * turns readable within the first poll, not only once a later event (here a 300 ms guard
 * timer) ends it. */
static uint64_t held_seen_ms;

static void held_on_timer(uv_timer_t *tm)
{
    srv_t *t = tm->data;
    rec_t *r = &t->rec[0];
    dp_http_head_t h = {0};
    h.status = 200;
    h.content_length = 5;
    dp_headers_add(&h.headers, r->pool, "x-test", 6, "yes", 3);
    ck_assert_int_eq(r->enc->ops->headers(r->enc, &h, false), 0);
}

static void held_on_peer(uv_poll_t *pl, int status, int events)
{
    (void)status;
    (void)events;
    held_seen_ms = uv_now(pl->loop);
    uv_poll_stop(pl);
}

static void held_on_guard(uv_timer_t *tm)
{
    (void)tm;
}

START_TEST(test_server_write_from_timer_not_held_through_poll)
{
    srv_t *t = srv_new(NULL);
    t->resp = RESP_NONE;
    PEER_SEND(t, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    spin(t, 50);
    ck_assert_int_eq(t->streams, 1);
    uv_timer_t now, guard;
    uv_poll_t pl;
    uv_timer_init(&t->loop, &now);
    uv_timer_init(&t->loop, &guard);
    now.data = t;
    uv_poll_init(&t->loop, &pl, t->peer);
    uv_update_time(&t->loop);
    uint64_t t0 = uv_now(&t->loop);
    held_seen_ms = 0;
    uv_timer_start(&now, held_on_timer, 0, 0);
    uv_timer_start(&guard, held_on_guard, 300, 0);
    uv_poll_start(&pl, UV_READABLE, held_on_peer);
    for (int i = 0; i < 10 && held_seen_ms == 0; i++)
        uv_run(&t->loop, UV_RUN_ONCE);
    ck_assert_uint_gt(held_seen_ms, 0);
    ck_assert_uint_lt(held_seen_ms - t0, 150);
    uv_close((uv_handle_t *)&now, NULL);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_close((uv_handle_t *)&pl, NULL);
    spin(t, 20);
    ck_assert_str_eq(t->out, "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\n");
    rec_t *r = &t->rec[0];
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"hello", 5, true), 0);
    spin(t, 20);
    ck_assert_str_eq(t->out, "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\nhello");
    srv_free(t);
}
END_TEST

/* After a quiet loop turn (fewer than DP_H1_BATCH_WRITES writes) a response leaves at once,
 * inside the owner's call, its body joined to its head; after a busy one it is held for the
 * end of the turn. */
START_TEST(test_server_batching_follows_the_load)
{
    srv_t *t = srv_new(NULL);
    t->resp = RESP_NONE;
    PEER_SEND(t, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
                 "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n");
    spin(t, 50);
    ck_assert_int_eq(t->streams, 1);
    static const char one[] = "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\nhello";
    dp_http_turn_end();
    dp_http_turn_end(); /* a turn without writes */
    for (int i = 0; i < 2; i++) {
        respond(t, &t->rec[i]);
        peer_read(t);
        ck_assert_uint_eq(t->out_n, (size_t)(i + 1) * (sizeof(one) - 1));
        spin(t, 50);
        ck_assert_int_eq(t->streams, i + 2);
    }
    /* Two responses, a head and a body each: a busy turn. */
    dp_http_turn_end();
    respond(t, &t->rec[2]);
    peer_read(t);
    ck_assert_uint_eq(t->out_n, 2 * (sizeof(one) - 1));
    uv_run(&t->loop, UV_RUN_NOWAIT);
    peer_read(t);
    ck_assert_uint_eq(t->out_n, 3 * (sizeof(one) - 1));
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(memcmp(t->out + (size_t)i * (sizeof(one) - 1), one, sizeof(one) - 1), 0);
    srv_free(t);
}
END_TEST

/* Over TCP a small body joins its head in one send. With the peer not reading, the socket
 * takes part of a response and the rest is queued (the pipeline stalls behind it); once the
 * peer reads, every response arrives whole and in order. */
START_TEST(test_server_tcp_body_joins_head)
{
    int sv[2];
    tcp_pair(sv, 2048);
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    srv_t *t = srv_new_on(NULL, sv);
    static char body[4001];
    for (size_t i = 0; i < 4000; i++)
        body[i] = (char)('a' + i % 26);
    t->resp_body = body;
    t->peer_hold = true;
    PEER_SEND(t, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
                 "GET /3 HTTP/1.1\r\nHost: h\r\n\r\nGET /4 HTTP/1.1\r\nHost: h\r\n"
                 "Connection: close\r\n\r\n");
    spin(t, 200);
    ck_assert_int_lt(t->streams, 4);
    t->peer_hold = false;
    spin(t, 2000);
    ck_assert_int_eq(t->streams, 4);
    char one[4200];
    int hn =
        snprintf(one, sizeof(one), "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 4000\r\n");
    ck_assert_uint_eq(t->out_n, 4 * ((size_t)hn + 2 + 4000) + 19);
    size_t o = 0;
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(memcmp(t->out + o, one, (size_t)hn), 0);
        o += (size_t)hn;
        if (i == 3) {
            ck_assert_int_eq(memcmp(t->out + o, "connection: close\r\n", 19), 0);
            o += 19;
        }
        ck_assert_int_eq(memcmp(t->out + o, "\r\n", 2), 0);
        ck_assert_int_eq(memcmp(t->out + o + 2, body, 4000), 0);
        o += 2 + 4000;
    }
    ck_assert(t->closed);
    srv_free(t);
}
END_TEST

/* Connection options in any case: "close" names itself (a "Close" field goes, as RFC 9110
 * §7.6.1 has the connection options dropped), a field it does not name stays, and a request
 * whose options are only close, keep-alive or upgrade keeps every other field. */
START_TEST(test_server_connection_options)
{
    srv_t *t = srv_new(NULL);
    PEER_SEND(t, "GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive\r\nX-Keep: 1\r\n"
                 "Proxy-Connection: x\r\nKeep-Alive: 5\r\nTE: Trailers\r\n\r\n");
    spin(t, 200);
    ck_assert_int_eq(t->streams, 1);
    dp_http_head_t *h = t->rec[0].head[0];
    ck_assert_str_eq(hdr(h, "x-keep"), "1");
    ck_assert_str_eq(hdr(h, "te"), "Trailers");
    ck_assert_uint_eq(h->headers.n, 2);
    ck_assert(!t->closed);
    PEER_SEND(t, "GET / HTTP/1.1\r\nHost: h\r\nClose: 1\r\nX-Keep: 2\r\nCONNECTION: CLOSE\r\n\r\n");
    spin(t, 200);
    ck_assert_int_eq(t->streams, 2);
    h = t->rec[1].head[0];
    ck_assert_ptr_null(hdr(h, "close"));
    ck_assert_str_eq(hdr(h, "x-keep"), "2");
    ck_assert_uint_eq(h->headers.n, 1);
    srv_free(t);
}
END_TEST

/* The eight-byte case folding against the byte-at-a-time definition: every byte value at every
 * position of strings up to 20 bytes (the eight-byte steps and the tail). */
START_TEST(test_ascii_case_every_byte)
{
    char a[21], b[21], want[21];
    for (size_t n = 1; n <= 20; n++) {
        for (size_t at = 0; at < n; at++) {
            for (int c = 0; c < 256; c++) {
                memset(a, 'Q', n);
                a[at] = (char)c;
                for (size_t i = 0; i < n; i++) {
                    unsigned char x = (unsigned char)a[i];
                    want[i] = (char)(x >= 'A' && x <= 'Z' ? x + 32 : x);
                }
                memcpy(b, a, n);
                dp_ascii_lower(b, n);
                ck_assert_msg(memcmp(b, want, n) == 0, "byte 0x%02x at %zu of %zu", c, at, n);
                ck_assert(dp_mem_ieq(a, want, n));
                /* A byte that differs from its counterpart other than by an ASCII letter's
                 * case makes the strings differ. */
                memcpy(b, want, n);
                b[at] = (char)(c ^ 0x20);
                bool letter = (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
                ck_assert_msg(dp_mem_ieq(a, b, n) == letter, "byte 0x%02x at %zu of %zu", c, at, n);
            }
        }
    }
}
END_TEST

/* Hex digits eight at a time against printf: every digit value at every position, and a run of
 * mixed values. */
START_TEST(test_hex_u64)
{
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 16 * 16 + 1000; i++) {
        uint64_t v =
            i < 256 ? (uint64_t)(i % 16) << (4 * (i / 16)) : (x = x * 6364136223846793005ull + 1);
        char got[17], want[17];
        dp_hex_u64(got, v);
        got[16] = '\0';
        snprintf(want, sizeof(want), "%016llx", (unsigned long long)v);
        ck_assert_str_eq(got, want);
    }
}
END_TEST

/* A head split across reads keeps its first part while another connection on the same loop
 * reads a whole request in between (reads share one buffer per thread; bytes left over move
 * to the connection's own). */
/* What the encoder checks before it writes a field: every byte value at every position of a
 * value of every length up to 20 (the eight-byte steps and the tail), against the definition
 * (RFC 9110 §5.5: VCHAR, obs-text, SP, HT), and names against tchar. */
START_TEST(test_field_ok_every_byte)
{
    char v[20];
    for (size_t n = 1; n <= sizeof(v); n++) {
        for (size_t at = 0; at < n; at++) {
            for (int b = 0; b < 256; b++) {
                memset(v, 'a', sizeof(v));
                v[at] = (char)b;
                bool want = b == '\t' || (b >= 0x20 && b != 0x7f);
                bool got = dp_h1_field_ok((dp_str_t){"x-a", 3}, (dp_str_t){v, n});
                ck_assert_msg(got == want, "byte 0x%02x at %zu of %zu", b, at, n);
            }
        }
    }
    const char *tchars = "!#$%&'*+-.^_`|~09azAZ";
    for (int b = 0; b < 256; b++) {
        char name[2] = {(char)b, 0};
        bool want = b != 0 && strchr(tchars, b) != NULL;
        want = want || (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z');
        ck_assert_msg(dp_h1_field_ok((dp_str_t){name, 1}, (dp_str_t){"v", 1}) == want,
                      "name byte 0x%02x", b);
    }
}
END_TEST

START_TEST(test_server_head_across_reads)
{
    srv_t *a = srv_new(NULL), *b = srv_new(NULL);
    a->resp = b->resp = RESP_NONE;
    PEER_SEND(a, "GET /first HTTP/1.1\r\nHo");
    spin(a, 50);
    ck_assert_int_eq(a->streams, 0);
    PEER_SEND(b, "GET /second HTTP/1.1\r\nHost: other\r\nX-K: from-b\r\n\r\n");
    spin(b, 50);
    ck_assert_int_eq(b->streams, 1);
    PEER_SEND(a, "st: h\r\nX-K: from-a\r\n\r\n");
    spin(a, 50);
    ck_assert_int_eq(a->streams, 1);
    ck_assert(dp_str_eq(a->rec[0].head[0]->path, "/first", 6));
    ck_assert(dp_str_eq(a->rec[0].head[0]->authority, "h", 1));
    const dp_header_t *k = DP_HDR_GET(&a->rec[0].head[0]->headers, "x-k");
    ck_assert(k != NULL && dp_str_eq(k->value, "from-a", 6));
    ck_assert(dp_str_eq(b->rec[0].head[0]->path, "/second", 7));
    k = DP_HDR_GET(&b->rec[0].head[0]->headers, "x-k");
    ck_assert(k != NULL && dp_str_eq(k->value, "from-b", 6));
    respond(a, &a->rec[0]);
    respond(b, &b->rec[0]);
    spin(a, 50);
    spin(b, 50);
    ck_assert_int_eq(a->rec[0].done, 1);
    ck_assert_int_eq(b->rec[0].done, 1);
    srv_free(a);
    srv_free(b);
}
END_TEST

START_TEST(test_server_chunked_in_out)
{
    srv_t *t = srv_new(NULL);
    t->resp_chunked = true;
    PEER_SEND(t, "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5;ext=1\r\nhello\r\n");
    spin(t, 50);
    ck_assert_int_eq(t->rec[0].heads, 1);
    ck_assert_ptr_null(hdr(t->rec[0].head[0], "transfer-encoding"));
    ck_assert_int_eq(t->rec[0].head[0]->content_length, -1);
    ck_assert_str_eq(t->rec[0].body, "hello");
    PEER_SEND(t, "6\r\n world\r\n0\r\nX-Sum: 42\r\nContent-Length: 9\r\n\r\n");
    spin(t, 100);
    rec_t *r = &t->rec[0];
    ck_assert_str_eq(r->body, "hello world");
    ck_assert_ptr_nonnull(r->trailers);
    ck_assert_uint_eq(r->trailers->n, 1);
    ck_assert(DP_STR_EQ(r->trailers->v[0].name, "x-sum"));
    ck_assert(DP_STR_EQ(r->trailers->v[0].value, "42"));
    ck_assert_str_eq(t->out, "HTTP/1.1 200 OK\r\nx-test: yes\r\ntransfer-encoding: chunked\r\n\r\n"
                             "5\r\nhello\r\n0\r\n\r\n");
    ck_assert_int_eq(r->done, 1);
    srv_free(t);
}
END_TEST

START_TEST(test_server_trailers_out_and_http10)
{
    srv_t *t = srv_new(NULL);
    t->resp = RESP_NONE;
    PEER_SEND(t, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    spin(t, 50);
    rec_t *r = &t->rec[0];
    dp_http_head_t h = {0};
    h.status = 404;
    h.content_length = -1;
    ck_assert_int_eq(r->enc->ops->headers(r->enc, &h, false), 0);
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"ab", 2, false), 0);
    dp_headers_t tr = {0};
    dp_headers_add(&tr, r->pool, "grpc-status", 11, "0", 1);
    ck_assert_int_eq(r->enc->ops->trailers(r->enc, &tr), 0);
    spin(t, 50);
    ck_assert_str_eq(t->out, "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
                             "2\r\nab\r\n0\r\ngrpc-status: 0\r\n\r\n");
    ck_assert_int_eq(r->done, 1);
    srv_free(t);

    /* HTTP/1.0 without keep-alive: no chunking, the close ends the body. */
    t = srv_new(NULL);
    t->resp_chunked = true;
    PEER_SEND(t, "GET / HTTP/1.0\r\n\r\n");
    spin(t, 200);
    ck_assert_int_eq(t->rec[0].head[0]->version, DP_HTTP_10);
    ck_assert_str_eq(t->out, "HTTP/1.1 200 OK\r\nx-test: yes\r\nconnection: close\r\n\r\nhello");
    ck_assert(t->closed && t->peer_eof);
    srv_free(t);

    /* HTTP/1.0 with keep-alive and a length stays open. */
    t = srv_new(NULL);
    PEER_SEND(t, "HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    spin(t, 100);
    ck_assert_str_eq(t->out, "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n"
                             "connection: keep-alive\r\n\r\n");
    ck_assert(!t->closed);
    srv_free(t);
}
END_TEST

START_TEST(test_server_expect_continue)
{
    srv_t *t = srv_new(NULL);
    PEER_SEND(t, "PUT /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    spin(t, 50);
    ck_assert_int_eq(t->rec[0].heads, 1);
    ck_assert_ptr_null(hdr(t->rec[0].head[0], "expect"));
    ck_assert_str_eq(t->out, "HTTP/1.1 100 Continue\r\n\r\n");
    PEER_SEND(t, "ok");
    spin(t, 50);
    ck_assert_str_eq(t->rec[0].body, "ok");
    ck_assert_str_eq(t->out, "HTTP/1.1 100 Continue\r\n\r\n"
                             "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\nhello");
    srv_free(t);
}
END_TEST

START_TEST(test_server_absolute_form_and_refuse)
{
    srv_t *t = srv_new(NULL);
    PEER_SEND(t, "GET http://up.example:8080/x/y?q HTTP/1.1\r\nHost: other\r\n\r\n");
    spin(t, 50);
    dp_http_head_t *h = t->rec[0].head[0];
    ck_assert(DP_STR_EQ(h->authority, "up.example:8080"));
    ck_assert(DP_STR_EQ(h->path, "/x/y?q"));
    ck_assert(DP_STR_EQ(h->scheme, "http"));
    ck_assert(DP_STR_EQ(h->method, "GET"));
    srv_free(t);

    /* No path: "/" (and the query after it). */
    t = srv_new(NULL);
    PEER_SEND(t, "OPTIONS https://h:1?a=b HTTP/1.1\r\nHost: h\r\n\r\n");
    spin(t, 50);
    PEER_SEND(t, "M-SEARCH http://h HTTP/1.1\r\n\r\n");
    spin(t, 50);
    ck_assert_msg(t->streams == 2, "streams %d, out [%s]", t->streams, t->out);
    h = t->rec[0].head[0];
    ck_assert(DP_STR_EQ(h->scheme, "https"));
    ck_assert(DP_STR_EQ(h->authority, "h:1"));
    ck_assert(DP_STR_EQ(h->path, "/?a=b"));
    ck_assert(DP_STR_EQ(h->method, "OPTIONS"));
    h = t->rec[1].head[0];
    ck_assert(DP_STR_EQ(h->authority, "h"));
    ck_assert(DP_STR_EQ(h->path, "/"));
    ck_assert(DP_STR_EQ(h->method, "M-SEARCH"));
    srv_free(t);

    t = srv_new(NULL);
    t->refuse = true;
    PEER_SEND(t, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    spin(t, 200);
    ck_assert_str_eq(t->out, "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 19\r\n"
                             "content-type: text/plain\r\nconnection: close\r\n\r\n"
                             "Service Unavailable");
    ck_assert(t->closed);
    srv_free(t);
}
END_TEST

START_TEST(test_server_early_response_and_eof)
{
    /* The response completes before the body: the connection closes after it. */
    srv_t *t = srv_new(NULL);
    t->resp = RESP_AT_HEAD;
    PEER_SEND(t, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nab");
    spin(t, 200);
    ck_assert_str_eq(t->out, "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\nhello");
    ck_assert_int_eq(t->rec[0].done, 1);
    ck_assert_int_eq(t->rec[0].why, DP_RESET_NONE);
    ck_assert(t->closed);
    srv_free(t);

    /* Bytes after a local reply are read and dropped while the connection lingers; a peer that
     * never sends its FIN is closed after the linger time. */
    t = srv_new(NULL);
    t->no_auto_shut = true;
    PEER_SEND(t, "GET / HTTP/1.1\r\nHost : h\r\n\r\n");
    spin(t, 100);
    ck_assert(t->peer_eof);
    ck_assert(!t->closed);
    PEER_SEND(t, "more bytes nobody reads");
    spin(t, 1500);
    ck_assert(t->closed);
    ck_assert_int_eq(t->close_why, DP_RESET_PROTOCOL);
    ck_assert_str_eq(t->out, reply_for(400));
    srv_free(t);

    /* Peer EOF in the middle of the body: a remote reset. */
    t = srv_new(NULL);
    t->resp = RESP_NONE;
    PEER_SEND(t, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nab");
    spin(t, 30);
    shutdown(t->peer, SHUT_WR);
    spin(t, 200);
    ck_assert_int_eq(t->rec[0].done, 1);
    ck_assert_int_eq(t->rec[0].why, DP_RESET_REMOTE);
    ck_assert(t->closed);
    ck_assert_int_eq(t->close_why, DP_RESET_REMOTE);
    srv_free(t);
}
END_TEST

START_TEST(test_server_upgrade)
{
    srv_t *t = srv_new(NULL);
    t->resp = RESP_NONE;
    t->no_auto_shut = true;
    PEER_SEND(t, "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                 "Sec-WebSocket-Key: k\r\n\r\nearly");
    spin(t, 50);
    rec_t *r = &t->rec[0];
    ck_assert(r->head[0]->upgrade);
    ck_assert(!r->head_end[0]);
    ck_assert_str_eq(hdr(r->head[0], "connection"), "upgrade");
    ck_assert_str_eq(hdr(r->head[0], "upgrade"), "websocket");
    ck_assert_int_eq(r->data_calls, 0);
    dp_http_head_t h = {0};
    h.status = 101;
    h.content_length = -1;
    dp_headers_add(&h.headers, r->pool, "upgrade", 7, "websocket", 9);
    dp_headers_add(&h.headers, r->pool, "connection", 10, "upgrade", 7);
    ck_assert_int_eq(r->enc->ops->headers(r->enc, &h, false), 0);
    spin(t, 50);
    ck_assert_str_eq(t->out, "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                             "connection: upgrade\r\n\r\n");
    ck_assert_str_eq(r->body, "early");
    PEER_SEND(t, "\x81\x02hi");
    spin(t, 50);
    ck_assert_str_eq(r->body, "early\x81\x02hi");
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"back", 4, true), 0);
    spin(t, 50);
    ck_assert(strstr(t->out, "\r\n\r\nback") != NULL);
    ck_assert(t->peer_eof);
    ck_assert_int_eq(r->done, 0);
    shutdown(t->peer, SHUT_WR);
    spin(t, 200);
    ck_assert(r->data_end);
    ck_assert_int_eq(r->done, 1);
    ck_assert_int_eq(r->why, DP_RESET_NONE);
    ck_assert(t->closed);
    srv_free(t);
}
END_TEST

/* ---- server: requests refused before any sink sees them ---- */

typedef struct bad_case {
    const char *name;
    const char *req;
    size_t len;
    int status;
} bad_case_t;

#define BAD(n, r, s)           \
    {                          \
        n, r, sizeof(r) - 1, s \
    }

static const bad_case_t bad_cases[] = {
    BAD("CL.TE",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked"
        "\r\n\r\n0\r\n\r\nG",
        400),
    BAD("TE.CL",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3"
        "\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        400),
    BAD("two different CL",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
        "Content-Length: 5\r\n\r\nabcde",
        400),
    BAD("two equal CL",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 4"
        "\r\n\r\nabcd",
        400),
    BAD("CL list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4, 4\r\n\r\nabcd", 400),
    BAD("CL non-numeric", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4a\r\n\r\nabcd", 400),
    BAD("CL sign", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +4\r\n\r\nabcd", 400),
    BAD("CL empty", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", 400),
    BAD("CL overflow",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n"
        "\r\n",
        400),
    BAD("TE chunked, identity",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, "
        "identity\r\n\r\n0\r\n\r\n",
        501),
    BAD("TE xchunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
    BAD("TE not last", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        501),
    BAD("TE gzip", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    BAD("TE ,chunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,chunked\r\n\r\n", 501),
    BAD("TE twice",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501),
    BAD("TE vtab",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \x0b"
        "chunked\r\n\r\n",
        400),
    BAD("obs-fold", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", 400),
    /* The empty coding is refused before the folded line is read. */
    BAD("obs-fold TE", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", 501),
    BAD("bare LF", "GET / HTTP/1.1\nHost: h\n\n", 400),
    BAD("bare LF header", "GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", 400),
    BAD("bare CR", "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 400),
    BAD("NUL in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n", 400),
    BAD("control in value",
        "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01"
        "b\r\n\r\n",
        400),
    BAD("DEL in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n", 400),
    BAD("control in name", "GET / HTTP/1.1\r\nHost: h\r\nX\x01Y: a\r\n\r\n", 400),
    BAD("space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
    BAD("space in name", "GET / HTTP/1.1\r\nHost: h\r\nX Y: a\r\n\r\n", 400),
    BAD("empty name", "GET / HTTP/1.1\r\nHost: h\r\n: a\r\n\r\n", 400),
    BAD("no colon", "GET / HTTP/1.1\r\nHost: h\r\nX-A\r\n\r\n", 400),
    BAD("separator in name", "GET / HTTP/1.1\r\nHost: h\r\nX(Y): a\r\n\r\n", 400),
    BAD("TE space before colon",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n"
        "\r\n",
        400),
    BAD("bad method", "G@T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    BAD("unknown method", "FROB / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    BAD("control in target", "GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    BAD("space in target", "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    BAD("HTTP/1.0 chunked", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    BAD("HTTP/0.9", "GET /\r\n\r\n", 400),
    BAD("HTTP/1.10", "GET / HTTP/1.10\r\nHost: h\r\n\r\n", 400),
    BAD("HTTP/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", 400),
    BAD("missing host", "GET / HTTP/1.1\r\n\r\n", 400),
    BAD("two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    BAD("CONNECT", "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 400),
    BAD("userinfo in target", "GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    BAD("empty authority", "GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    BAD("scheme starts with a digit", "GET 1http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    BAD("no scheme", "GET h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
};

static const char *reply_for(int status)
{
    switch (status) {
    case 400:
        return "HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\n"
               "connection: close\r\n\r\nBad Request";
    case 501:
        return "HTTP/1.1 501 Not Implemented\r\ncontent-length: 15\r\ncontent-type: "
               "text/plain\r\nconnection: close\r\n\r\nNot Implemented";
    case 431:
        return "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 31\r\n"
               "content-type: text/plain\r\nconnection: close\r\n\r\n"
               "Request Header Fields Too Large";
    }
    return "";
}

/* The scan and llhttp together accept a field line exactly when its name is made of tokens
 * (RFC 9110 §5.6.2) and its value of VCHAR, obs-text, SP and HT: every byte in both places,
 * in a request head and in a response head. */
static int parse_head(bool request, const char *buf, size_t n)
{
    dp_http_limits_t lim = dp_http_limits_default();
    dp_h1_head_parser_t hp;
    dp_h1_head_init(&hp, request, &lim);
    int r = dp_h1_head_scan(&hp, buf, n);
    if (r <= 0)
        return r < 0 ? -hp.err_status : 0;
    dp_pool_t *pool = dp_pool_new();
    dp_http_head_t *h = dp_h1_head_build(&hp, buf, pool);
    r = h != NULL ? 1 : -hp.err_status;
    dp_pool_free(pool);
    return r;
}

START_TEST(test_field_bytes)
{
    static const char tchars[] = "!#$%&'*+-.^_`|~";
    for (int req = 0; req < 2; req++) {
        const char *start = req ? "GET / HTTP/1.1\r\nHost: h\r\n" : "HTTP/1.1 200 OK\r\n";
        const char *what = req ? "request" : "response";
        int bad = req ? -400 : -502;
        for (int c = 0; c < 256; c++) {
            char b[128];
            int n;
            /* In a name (a ':' there ends it: "X:Y: a" is field X). */
            if (c != ':') {
                n = snprintf(b, sizeof(b), "%sX?Y: a\r\n\r\n", start);
                *strchr(b, '?') = (char)c;
                bool tchar = isalnum(c) || (c != 0 && strchr(tchars, c) != NULL);
                ck_assert_msg(parse_head(req, b, (size_t)n) == (tchar ? 1 : bad),
                              "name byte %02x (%s)", c, what);
            }
            n = snprintf(b, sizeof(b), "%sX: a?b\r\n\r\n", start);
            *strchr(b, '?') = (char)c;
            bool vchar = c == '\t' || (c >= 0x20 && c != 0x7f);
            ck_assert_msg(parse_head(req, b, (size_t)n) == (vchar ? 1 : bad),
                          "value byte %02x (%s)", c, what);
        }
    }
}
END_TEST

/* The encoder's field check (eight bytes at a time where it can) against a byte-by-byte
 * reading of RFC 9110, over random names and values of 0..40 bytes drawn mostly from the
 * bytes near the edges of each class. */
static bool ref_tchar(unsigned char c)
{
    return isalnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

START_TEST(test_field_ok_words)
{
    static const unsigned char edge[] = {'a',  'z',  '0',  '9',  '-',  'A',  'Z',  '_',  '~',  '`',
                                         '@',  '[',  '{',  '/',  ':',  ' ',  '\t', 0,    '\r', '\n',
                                         0x1f, 0x20, 0x21, 0x7e, 0x7f, 0x80, 0xff, 0x2c, 0x2e};
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int round = 0; round < 200000; round++) {
        unsigned char name[40], value[40];
        size_t nn, vn;
        for (int k = 0; k < 2; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            unsigned char *b = k ? value : name;
            size_t n = (size_t)(seed >> 58) % 41;
            /* One class mostly, with a rare odd byte: the words take the fast path often. */
            unsigned char base = k ? 'v' : 'n';
            for (size_t i = 0; i < n; i++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                unsigned r = (unsigned)(seed >> 40);
                b[i] = (r & 7)   ? (unsigned char)(base + (r >> 3) % 3 - 1)
                       : (r & 8) ? edge[(r >> 4) % sizeof(edge)]
                                 : (unsigned char)(r >> 4);
            }
            if (k)
                vn = n;
            else
                nn = n;
        }
        bool want = nn > 0;
        for (size_t i = 0; i < nn; i++)
            want = want && ref_tchar(name[i]);
        for (size_t i = 0; i < vn; i++)
            want = want && (value[i] == '\t' || (value[i] >= 0x20 && value[i] != 0x7f));
        dp_str_t n = {(const char *)name, nn}, v = {(const char *)value, vn};
        ck_assert_msg(dp_h1_field_ok(n, v) == want, "round %d: name %zu bytes, value %zu", round,
                      nn, vn);
    }
}
END_TEST

START_TEST(test_server_bad_requests)
{
    const bad_case_t *bc = &bad_cases[_i];
    srv_t *t = srv_new(NULL);
    peer_send(t, bc->req, bc->len);
    spin(t, 300);
    ck_assert_msg(strcmp(t->out, reply_for(bc->status)) == 0, "%s: got [%s]", bc->name, t->out);
    /* A head the scanner refuses opens no stream; one llhttp or the head build refuses has
     * asked for a stream (its pool holds the head), but no head reaches the sink. */
    for (int i = 0; i < t->streams; i++)
        ck_assert_msg(t->rec[i].head[0] == NULL, "%s: delivered to the sink", bc->name);
    ck_assert_msg(t->closed && t->peer_eof, "%s: not closed", bc->name);
    srv_free(t);
}
END_TEST

/* Body errors come after the head was delivered: the sink sees a protocol reset, the peer a
 * 400, and no body byte passes. */
static const bad_case_t bad_chunks[] = {
    BAD("non-hex size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400),
    BAD("size overflow",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "10000000000000000\r\nx",
        400),
    BAD("0x prefix", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n",
        400),
    BAD("leading space",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        " 5\r\nhello\r\n0\r\n\r\n",
        400),
    BAD("empty size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", 400),
    BAD("bare LF size",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\nhello\r\n0\r\n\r\n",
        400),
    BAD("bad data end",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhelloXY0\r\n\r\n",
        400),
    BAD("CR in ext",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5;a\rb\r\nhello\r\n0\r\n\r\n",
        400),
    BAD("bad trailer",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\nX : y\r\n\r\n",
        400),
};

START_TEST(test_server_bad_chunks)
{
    const bad_case_t *bc = &bad_chunks[_i];
    srv_t *t = srv_new(NULL);
    t->resp = RESP_NONE;
    peer_send(t, bc->req, bc->len);
    spin(t, 300);
    ck_assert_msg(strcmp(t->out, reply_for(bc->status)) == 0, "%s: got [%s]", bc->name, t->out);
    ck_assert_int_eq(t->streams, 1);
    ck_assert_msg(t->rec[0].done == 1 && t->rec[0].why == DP_RESET_PROTOCOL, "%s", bc->name);
    ck_assert_msg(t->rec[0].body_n == 0 || strcmp(bc->name, "bad data end") == 0, "%s", bc->name);
    ck_assert(!t->rec[0].data_end);
    ck_assert(t->closed);
    srv_free(t);
}
END_TEST

START_TEST(test_server_limits)
{
    dp_http_limits_t lim = dp_http_limits_default();
    /* A request line longer than the header limit. */
    srv_t *t = srv_new(&lim);
    char *big = malloc(70 * 1024 + 64);
    int n = sprintf(big, "GET /");
    memset(big + n, 'a', 70 * 1024);
    n += 70 * 1024;
    n += sprintf(big + n, " HTTP/1.1\r\nHost: h\r\n\r\n");
    /* The codec answers before all bytes are read; send what fits. */
    for (int off = 0; off < n;) {
        ssize_t k = send(t->peer, big + off, (size_t)(n - off), MSG_DONTWAIT);
        if (k > 0)
            off += (int)k;
        else if (t->closed || t->peer_eof)
            break;
        spin(t, 5);
        if (t->out_n)
            break;
    }
    spin(t, 300);
    ck_assert_str_eq(t->out, reply_for(431));
    ck_assert_int_eq(t->streams, 0);
    srv_free(t);

    /* Header bytes over a small limit. */
    lim.max_header_bytes = 1024;
    t = srv_new(&lim);
    n = sprintf(big, "GET / HTTP/1.1\r\nHost: h\r\nX-Big: ");
    memset(big + n, 'b', 1100);
    n += 1100;
    n += sprintf(big + n, "\r\n\r\n");
    peer_send(t, big, (size_t)n);
    spin(t, 300);
    ck_assert_str_eq(t->out, reply_for(431));
    ck_assert_int_eq(t->streams, 0);
    srv_free(t);

    /* Header count. */
    lim = dp_http_limits_default();
    lim.max_headers = 10;
    t = srv_new(&lim);
    n = sprintf(big, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 10; i++)
        n += sprintf(big + n, "X-%d: v\r\n", i);
    n += sprintf(big + n, "\r\n");
    peer_send(t, big, (size_t)n);
    spin(t, 300);
    ck_assert_str_eq(t->out, reply_for(431));
    ck_assert_int_eq(t->streams, 0);
    srv_free(t);

    /* Ten fields exactly is fine. */
    t = srv_new(&lim);
    n = sprintf(big, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 9; i++)
        n += sprintf(big + n, "X-%d: v\r\n", i);
    n += sprintf(big + n, "\r\n");
    peer_send(t, big, (size_t)n);
    spin(t, 100);
    ck_assert_int_eq(t->streams, 1);
    ck_assert_uint_eq(t->rec[0].head[0]->headers.n, 9);
    srv_free(t);

    /* The configured limit is the only one (llhttp has none; http-parser, before it, stopped at
     * 80 KiB): a 90 KiB header passes at 100 KiB. */
    lim = dp_http_limits_default();
    lim.max_header_bytes = 100 * 1024;
    t = srv_new(&lim);
    char *huge = malloc(100 * 1024);
    n = sprintf(huge, "GET / HTTP/1.1\r\nHost: h\r\nX-Big: ");
    memset(huge + n, 'h', 90 * 1024);
    n += 90 * 1024;
    n += sprintf(huge + n, "\r\n\r\n");
    for (int off = 0; off < n;) {
        ssize_t k = send(t->peer, huge + off, (size_t)(n - off), MSG_DONTWAIT);
        if (k > 0)
            off += (int)k;
        spin(t, 2);
    }
    spin(t, 100);
    ck_assert_int_eq(t->streams, 1);
    ck_assert_uint_eq(strlen(hdr(t->rec[0].head[0], "x-big")), 90 * 1024);
    free(huge);
    srv_free(t);
    free(big);
}
END_TEST

/* ---- client mode ---- */

typedef struct cli {
    uv_loop_t loop;
    int peer; /* the raw upstream end */
    dp_codec_conn_t *conn;
    rec_t rec[4];
    int ready;
    bool closed;
    dp_reset_reason_t close_why;
    char in[1 << 16];
    size_t in_n;
    bool peer_eof;
} cli_t;

static void cli_on_ready(void *ud, dp_codec_conn_t *c)
{
    (void)c;
    ((cli_t *)ud)->ready++;
}

static void cli_on_close(void *ud, dp_codec_conn_t *c, dp_reset_reason_t why)
{
    cli_t *t = ud;
    (void)c;
    t->closed = true;
    t->close_why = why;
}

static const dp_codec_cb_t cli_cb = {.on_ready = cli_on_ready, .on_close = cli_on_close};

static cli_t *cli_new(void)
{
    cli_t *t = calloc(1, sizeof(*t));
    uv_loop_init(&t->loop);
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    t->peer = sv[1];
    dp_http_limits_t l = dp_http_limits_default();
    t->conn = dp_h1_conn_new(&t->loop, sv[0], false, &l, &cli_cb, t);
    ck_assert_ptr_nonnull(t->conn);
    cur = NULL;
    return t;
}

static void cli_spin(cli_t *t, int ms)
{
    for (int i = 0; i < ms; i++) {
        uv_run(&t->loop, UV_RUN_NOWAIT);
        for (;;) {
            ssize_t n = recv(t->peer, t->in + t->in_n, sizeof(t->in) - 1 - t->in_n, MSG_DONTWAIT);
            if (n > 0) {
                t->in_n += (size_t)n;
                t->in[t->in_n] = '\0';
                continue;
            }
            if (n == 0)
                t->peer_eof = true;
            break;
        }
        if (t->closed)
            return;
        poll(NULL, 0, 1);
    }
}

static void cli_free(cli_t *t)
{
    if (!t->closed)
        t->conn->ops->close(t->conn);
    for (int i = 0; i < 50 && !t->closed; i++)
        uv_run(&t->loop, UV_RUN_NOWAIT);
    ck_assert(t->closed);
    close(t->peer);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&t->loop), 0);
    for (int i = 0; i < 4; i++) {
        dp_pool_free(t->rec[i].pool);
        free(t->rec[i].body);
    }
    free(t);
}

static dp_enc_t *cli_stream(cli_t *t, int i)
{
    t->rec[i].pool = dp_pool_new();
    dp_enc_t *e = t->conn->ops->new_stream(t->conn, &rec_ops, &t->rec[i], t->rec[i].pool);
    t->rec[i].enc = e;
    return e;
}

static void req_head(dp_http_head_t *h, dp_pool_t *p, const char *method, int64_t cl)
{
    memset(h, 0, sizeof(*h));
    h->method = (dp_str_t){method, strlen(method)};
    h->path = DP_STR("/r?x=1");
    h->authority = DP_STR("up.local");
    h->scheme = DP_STR("http");
    h->content_length = cl;
    dp_headers_add(&h->headers, p, "accept", 6, "*/*", 3);
    dp_headers_add(&h->headers, p, "connection", 10, "x", 1);
}

START_TEST(test_client_basic)
{
    cli_t *t = cli_new();
    ck_assert(t->conn->ops->can_take_stream(t->conn));
    dp_enc_t *e = cli_stream(t, 0);
    ck_assert_ptr_nonnull(e);
    ck_assert(!t->conn->ops->can_take_stream(t->conn));
    ck_assert_ptr_null(t->conn->ops->new_stream(t->conn, &rec_ops, &t->rec[1], t->rec[0].pool));
    ck_assert_uint_eq(t->conn->ops->active_streams(t->conn), 1);
    dp_http_head_t h;
    req_head(&h, t->rec[0].pool, "GET", -1);
    ck_assert_int_eq(e->ops->headers(e, &h, true), 0);
    cli_spin(t, 30);
    ck_assert_str_eq(t->in, "GET /r?x=1 HTTP/1.1\r\nhost: up.local\r\naccept: */*\r\n\r\n");
    const char resp[] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                        "Server: s\r\n\r\nhi";
    send(t->peer, resp, sizeof(resp) - 1, 0);
    cli_spin(t, 50);
    rec_t *r = &t->rec[0];
    ck_assert_int_eq(r->heads, 2);
    ck_assert_int_eq(r->status[0], 100);
    ck_assert_int_eq(r->status[1], 200);
    ck_assert_str_eq(hdr(r->head[1], "server"), "s");
    ck_assert_str_eq(r->body, "hi");
    ck_assert(r->data_end);
    ck_assert_int_eq(r->done, 1);
    ck_assert_int_eq(r->why, DP_RESET_NONE);
    ck_assert_int_eq(t->ready, 1);
    ck_assert(t->conn->ops->can_take_stream(t->conn));

    /* POST with a chunked body and trailers; a chunked response. */
    t->in_n = 0;
    e = cli_stream(t, 1);
    req_head(&h, t->rec[1].pool, "POST", -1);
    ck_assert_int_eq(e->ops->headers(e, &h, false), 0);
    ck_assert_int_eq(e->ops->data(e, (const uint8_t *)"abc", 3, false), 0);
    dp_headers_t tr = {0};
    dp_headers_add(&tr, t->rec[1].pool, "x-t", 3, "1", 1);
    ck_assert_int_eq(e->ops->trailers(e, &tr), 0);
    cli_spin(t, 30);
    ck_assert_str_eq(t->in, "POST /r?x=1 HTTP/1.1\r\nhost: up.local\r\naccept: */*\r\n"
                            "transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n");
    const char resp2[] = "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "4\r\nbody\r\n0\r\n\r\n";
    send(t->peer, resp2, sizeof(resp2) - 1, 0);
    cli_spin(t, 50);
    ck_assert_int_eq(t->rec[1].status[0], 201);
    ck_assert_str_eq(t->rec[1].body, "body");
    ck_assert_int_eq(t->rec[1].done, 1);
    ck_assert_int_eq(t->ready, 2);

    /* PUT without a body gets content-length: 0; HEAD's response has no body. */
    t->in_n = 0;
    e = cli_stream(t, 2);
    req_head(&h, t->rec[2].pool, "PUT", -1);
    ck_assert_int_eq(e->ops->headers(e, &h, true), 0);
    cli_spin(t, 30);
    ck_assert_str_eq(t->in, "PUT /r?x=1 HTTP/1.1\r\nhost: up.local\r\naccept: */*\r\n"
                            "content-length: 0\r\n\r\n");
    const char resp3[] = "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
    send(t->peer, resp3, sizeof(resp3) - 1, 0);
    cli_spin(t, 100);
    ck_assert_int_eq(t->rec[2].done, 1);
    ck_assert(t->rec[2].head_end[0]);
    ck_assert_int_eq(t->ready, 2);
    ck_assert(t->closed);
    ck_assert_int_eq(t->close_why, DP_RESET_NONE);
    cli_free(t);
}
END_TEST

START_TEST(test_client_head_eof_and_errors)
{
    cli_t *t = cli_new();
    dp_enc_t *e = cli_stream(t, 0);
    dp_http_head_t h;
    req_head(&h, t->rec[0].pool, "HEAD", -1);
    e->ops->headers(e, &h, true);
    const char r1[] = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    send(t->peer, r1, sizeof(r1) - 1, 0);
    cli_spin(t, 50);
    ck_assert_int_eq(t->rec[0].done, 1);
    ck_assert(t->rec[0].head_end[0]);
    ck_assert_int_eq(t->rec[0].head[0]->content_length, 1000);
    ck_assert_int_eq(t->ready, 1);

    /* A response without a length is read until close. */
    e = cli_stream(t, 1);
    req_head(&h, t->rec[1].pool, "GET", -1);
    e->ops->headers(e, &h, true);
    const char r2[] = "HTTP/1.1 200 OK\r\n\r\nuntil close";
    send(t->peer, r2, sizeof(r2) - 1, 0);
    cli_spin(t, 30);
    ck_assert_int_eq(t->rec[1].done, 0);
    shutdown(t->peer, SHUT_WR);
    cli_spin(t, 100);
    ck_assert_str_eq(t->rec[1].body, "until close");
    ck_assert_int_eq(t->rec[1].done, 1);
    ck_assert_int_eq(t->rec[1].why, DP_RESET_NONE);
    ck_assert(t->closed);
    cli_free(t);

    /* A bad response: protocol reset and the connection closes. */
    t = cli_new();
    e = cli_stream(t, 0);
    req_head(&h, t->rec[0].pool, "GET", -1);
    e->ops->headers(e, &h, true);
    const char r3[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    send(t->peer, r3, sizeof(r3) - 1, 0);
    cli_spin(t, 100);
    ck_assert_int_eq(t->rec[0].heads, 0);
    ck_assert_int_eq(t->rec[0].done, 1);
    ck_assert_int_eq(t->rec[0].why, DP_RESET_PROTOCOL);
    ck_assert(t->closed);
    ck_assert_int_eq(t->close_why, DP_RESET_PROTOCOL);
    cli_free(t);

    /* A 204 that carries a body anyway: the stream completes, the connection is not reused. */
    t = cli_new();
    e = cli_stream(t, 0);
    req_head(&h, t->rec[0].pool, "GET", -1);
    e->ops->headers(e, &h, true);
    const char r5[] = "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    send(t->peer, r5, sizeof(r5) - 1, 0);
    cli_spin(t, 100);
    ck_assert_int_eq(t->rec[0].done, 1);
    ck_assert_int_eq(t->rec[0].heads, 1);
    ck_assert_int_eq(t->ready, 0);
    ck_assert(t->closed);
    cli_free(t);

    /* EOF in the middle of a response: a remote reset. Idle EOF: an orderly close. */
    t = cli_new();
    e = cli_stream(t, 0);
    req_head(&h, t->rec[0].pool, "GET", -1);
    e->ops->headers(e, &h, true);
    const char r4[] = "HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\nshort";
    send(t->peer, r4, sizeof(r4) - 1, 0);
    shutdown(t->peer, SHUT_WR);
    cli_spin(t, 100);
    ck_assert_int_eq(t->rec[0].done, 1);
    ck_assert_int_eq(t->rec[0].why, DP_RESET_REMOTE);
    ck_assert(t->closed);
    cli_free(t);

    t = cli_new();
    shutdown(t->peer, SHUT_WR);
    cli_spin(t, 100);
    ck_assert(t->closed);
    ck_assert_int_eq(t->close_why, DP_RESET_NONE);
    cli_free(t);
}
END_TEST

START_TEST(test_client_upgrade)
{
    cli_t *t = cli_new();
    dp_enc_t *e = cli_stream(t, 0);
    dp_http_head_t h;
    req_head(&h, t->rec[0].pool, "GET", -1);
    h.upgrade = true;
    h.headers.n = 1;
    dp_headers_add(&h.headers, t->rec[0].pool, "upgrade", 7, "websocket", 9);
    e->ops->headers(e, &h, false);
    cli_spin(t, 30);
    ck_assert_str_eq(t->in, "GET /r?x=1 HTTP/1.1\r\nhost: up.local\r\naccept: */*\r\n"
                            "upgrade: websocket\r\nconnection: upgrade\r\n\r\n");
    const char r[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\n\r\nframe";
    send(t->peer, r, sizeof(r) - 1, 0);
    cli_spin(t, 50);
    ck_assert_int_eq(t->rec[0].status[0], 101);
    ck_assert_str_eq(t->rec[0].body, "frame");
    t->in_n = 0;
    e->ops->data(e, (const uint8_t *)"up", 2, true);
    cli_spin(t, 50);
    ck_assert_str_eq(t->in, "up");
    ck_assert(t->peer_eof);
    shutdown(t->peer, SHUT_WR);
    cli_spin(t, 100);
    ck_assert_int_eq(t->rec[0].done, 1);
    ck_assert_int_eq(t->rec[0].why, DP_RESET_NONE);
    ck_assert(t->closed);
    cli_free(t);
}
END_TEST

START_TEST(test_server_half_close_pipelined)
{
    srv_t *t = srv_new(NULL);
    PEER_SEND(t, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n");
    shutdown(t->peer, SHUT_WR);
    spin(t, 300);
    ck_assert_int_eq(t->streams, 2);
    ck_assert_str_eq(t->out, "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\nhello"
                             "HTTP/1.1 200 OK\r\nx-test: yes\r\ncontent-length: 5\r\n\r\nhello");
    ck_assert(t->closed);
    ck_assert_int_eq(t->close_why, DP_RESET_NONE);
    srv_free(t);
}
END_TEST

START_TEST(test_server_go_away_and_encode_checks)
{
    srv_t *t = srv_new(NULL);
    t->resp = RESP_NONE;
    PEER_SEND(t, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    spin(t, 50);
    rec_t *r = &t->rec[0];
    t->conn->ops->go_away(t->conn);
    ck_assert(!t->closed);
    dp_http_head_t h = {0};
    h.status = 200;
    h.content_length = 3;
    dp_headers_add(&h.headers, r->pool, "x-evil", 6, "a\r\nset-cookie: x", 16);
    dp_headers_add(&h.headers, r->pool, "bad name", 8, "v", 1);
    dp_headers_add(&h.headers, r->pool, "x-fine", 6, "ok", 2);
    ck_assert_int_eq(r->enc->ops->headers(r->enc, &h, false), 0);
    /* More than the announced length: cut, and the connection closes after. */
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"abcdef", 6, true), 0);
    ck_assert_int_eq(r->enc->ops->data(r->enc, (const uint8_t *)"x", 1, true), -EINVAL);
    spin(t, 200);
    ck_assert_str_eq(t->out, "HTTP/1.1 200 OK\r\nx-fine: ok\r\ncontent-length: 3\r\n"
                             "connection: close\r\n\r\nabc");
    ck_assert_int_eq(r->done, 1);
    ck_assert(t->closed);
    ck_assert_int_eq(t->close_why, DP_RESET_NONE);
    srv_free(t);
}
END_TEST

START_TEST(test_server_read_disable)
{
    srv_t *t = srv_new(NULL);
    t->resp = RESP_NONE;
    PEER_SEND(t, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n");
    spin(t, 50);
    rec_t *r = &t->rec[0];
    r->enc->ops->read_disable(r->enc, true);
    r->enc->ops->read_disable(r->enc, true);
    PEER_SEND(t, "0123456789");
    spin(t, 50);
    ck_assert_int_eq(r->data_calls, 0);
    r->enc->ops->read_disable(r->enc, false);
    spin(t, 50);
    ck_assert_int_eq(r->data_calls, 0);
    r->enc->ops->read_disable(r->enc, false);
    spin(t, 50);
    ck_assert_str_eq(r->body, "0123456789");
    ck_assert(r->data_end);
    ck_assert_uint_eq(r->enc->ops->buffered(r->enc), 0);
    /* The owner resets: the connection closes, the sink hears nothing more. */
    r->enc->ops->reset(r->enc, DP_RESET_LOCAL);
    spin(t, 100);
    ck_assert_int_eq(r->done, 0);
    ck_assert(t->closed);
    srv_free(t);
}
END_TEST

START_TEST(test_client_early_response)
{
    cli_t *t = cli_new();
    dp_enc_t *e = cli_stream(t, 0);
    dp_http_head_t h;
    req_head(&h, t->rec[0].pool, "POST", 100);
    ck_assert_int_eq(e->ops->headers(e, &h, false), 0);
    ck_assert_int_eq(e->ops->data(e, (const uint8_t *)"part", 4, false), 0);
    const char r[] = "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n";
    send(t->peer, r, sizeof(r) - 1, 0);
    cli_spin(t, 200);
    ck_assert_int_eq(t->rec[0].status[0], 413);
    ck_assert_int_eq(t->rec[0].done, 1);
    ck_assert_int_eq(t->rec[0].why, DP_RESET_NONE);
    ck_assert_int_eq(t->ready, 0);
    ck_assert(t->closed);
    /* A request line the owner built badly is refused. */
    cli_free(t);
    t = cli_new();
    e = cli_stream(t, 0);
    req_head(&h, t->rec[0].pool, "GET", -1);
    h.path = DP_STR("/a b");
    ck_assert_int_eq(e->ops->headers(e, &h, true), -EINVAL);
    cli_free(t);
}
END_TEST

/* ---- round trip: client -> [server codec] relay [client codec] -> [server codec] echo ---- */

typedef struct rt {
    uv_loop_t loop;
    dp_codec_conn_t *front, *back, *origin;
    int client; /* raw test client */
    dp_pool_t *pool_front, *pool_back, *pool_origin;
    dp_enc_t *front_enc, *back_enc, *origin_enc;
    int disables, enables, drained;
    bool front_done, back_done, origin_done;
    size_t origin_bytes;
    int closed;
} rt_t;

static const dp_sink_ops_t back_ops;

/* The front stream's sink: forwards to the back (client) codec. */
static void f_headers(void *ud, dp_http_head_t *h, bool end)
{
    rt_t *t = ud;
    t->back_enc = t->back->ops->new_stream(t->back, NULL, NULL, NULL);
    ck_assert_ptr_null(t->back_enc); /* NULL ops are refused */
    t->back_enc = t->back->ops->new_stream(t->back, &back_ops, t, t->pool_back);
    ck_assert_ptr_nonnull(t->back_enc);
    ck_assert_int_eq(t->back_enc->ops->headers(t->back_enc, h, end), 0);
}

static void f_data(void *ud, const uint8_t *p, size_t n, bool end)
{
    rt_t *t = ud;
    ck_assert_int_eq(t->back_enc->ops->data(t->back_enc, p, n, end), 0);
    if (t->back_enc->ops->buffered(t->back_enc) >= 64 * 1024 && !end) {
        t->disables++;
        t->front_enc->ops->read_disable(t->front_enc, true);
    }
}

static void f_drained(void *ud)
{
    rt_t *t = ud;
    t->drained++;
    if (t->back_enc)
        t->back_enc->ops->read_disable(t->back_enc, false);
}

static void f_done(void *ud, dp_reset_reason_t why)
{
    rt_t *t = ud;
    ck_assert_int_eq(why, DP_RESET_NONE);
    t->front_done = true;
}

static const dp_sink_ops_t front_ops = {
    .on_headers = f_headers, .on_data = f_data, .on_drained = f_drained, .on_done = f_done};

static void b_headers(void *ud, dp_http_head_t *h, bool end)
{
    rt_t *t = ud;
    ck_assert_int_eq(t->front_enc->ops->headers(t->front_enc, h, end), 0);
}

static void b_data(void *ud, const uint8_t *p, size_t n, bool end)
{
    rt_t *t = ud;
    ck_assert_int_eq(t->front_enc->ops->data(t->front_enc, p, n, end), 0);
    if (t->front_enc->ops->buffered(t->front_enc) >= 64 * 1024 && !end) {
        t->disables++;
        t->back_enc->ops->read_disable(t->back_enc, true);
    }
}

static void b_drained(void *ud)
{
    rt_t *t = ud;
    t->drained++;
    t->front_enc->ops->read_disable(t->front_enc, false);
    t->enables++;
}

static void b_done(void *ud, dp_reset_reason_t why)
{
    rt_t *t = ud;
    ck_assert_int_eq(why, DP_RESET_NONE);
    t->back_done = true;
}

static const dp_sink_ops_t back_ops = {
    .on_headers = b_headers, .on_data = b_data, .on_drained = b_drained, .on_done = b_done};

/* The origin echoes the request body in a chunked response. */
static void o_headers(void *ud, dp_http_head_t *h, bool end)
{
    rt_t *t = ud;
    ck_assert(DP_STR_EQ(h->path, "/echo"));
    ck_assert(DP_STR_EQ(h->authority, "rt.local"));
    ck_assert_int_eq(h->content_length, 1 << 20);
    dp_http_head_t r = {0};
    r.status = 200;
    r.content_length = -1;
    ck_assert_int_eq(t->origin_enc->ops->headers(t->origin_enc, &r, end), 0);
}

static void o_data(void *ud, const uint8_t *p, size_t n, bool end)
{
    rt_t *t = ud;
    t->origin_bytes += n;
    ck_assert_int_eq(t->origin_enc->ops->data(t->origin_enc, p, n, end), 0);
}

static void o_done(void *ud, dp_reset_reason_t why)
{
    rt_t *t = ud;
    ck_assert_int_eq(why, DP_RESET_NONE);
    t->origin_done = true;
}

static const dp_sink_ops_t origin_ops = {
    .on_headers = o_headers, .on_data = o_data, .on_done = o_done};

static const dp_sink_ops_t *rt_on_stream(void *ud, dp_enc_t *enc, void **ret_ud,
                                         dp_pool_t **ret_pool)
{
    rt_t *t = ud;
    *ret_ud = t;
    if (enc == NULL)
        return NULL;
    /* Both server codecs call this; tell them apart by which pool is still unused. */
    if (t->front_enc == NULL) {
        t->front_enc = enc;
        *ret_pool = t->pool_front;
        return &front_ops;
    }
    t->origin_enc = enc;
    *ret_pool = t->pool_origin;
    return &origin_ops;
}

static void rt_on_close(void *ud, dp_codec_conn_t *c, dp_reset_reason_t why)
{
    (void)c;
    (void)why;
    ((rt_t *)ud)->closed++;
}

static const dp_codec_cb_t rt_cb = {.on_stream = rt_on_stream, .on_close = rt_on_close};

START_TEST(test_round_trip_1mib)
{
    rt_t *t = calloc(1, sizeof(*t));
    uv_loop_init(&t->loop);
    t->pool_front = dp_pool_new();
    t->pool_back = dp_pool_new();
    t->pool_origin = dp_pool_new();
    dp_http_limits_t lim = dp_http_limits_default();
    lim.buffer_limit = 64 * 1024;
    int a[2], b[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    int small = 16 * 1024;
    setsockopt(a[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    setsockopt(a[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    fcntl(a[0], F_SETFL, O_NONBLOCK);
    fcntl(a[1], F_SETFL, O_NONBLOCK);
    tcp_pair(b, 0);
    t->client = a[1];
    t->front = dp_h1_conn_new(&t->loop, a[0], true, &lim, &rt_cb, t);
    t->back = dp_h1_conn_new(&t->loop, b[0], false, &lim, &rt_cb, t);
    t->origin = dp_h1_conn_new(&t->loop, b[1], true, &lim, &rt_cb, t);
    ck_assert(t->front && t->back && t->origin);

    size_t body = 1 << 20;
    char head[128];
    int hn = snprintf(head, sizeof(head),
                      "POST /echo HTTP/1.1\r\nHost: rt.local\r\nContent-Length: %zu\r\n\r\n", body);
    size_t total = (size_t)hn + body;
    char *req = malloc(total);
    memcpy(req, head, (size_t)hn);
    for (size_t i = 0; i < body; i++)
        req[hn + i] = (char)('a' + i % 26);
    size_t sent = 0;
    size_t cap = body + 4096, got = 0;
    char *resp = malloc(cap);
    /* Send everything first without reading, so that the response side backs up. */
    for (int i = 0; i < 20000 && !(t->front_done && got > body); i++) {
        if (sent < total) {
            ssize_t k = send(t->client, req + sent, total - sent, MSG_DONTWAIT);
            if (k > 0)
                sent += (size_t)k;
        }
        if (sent == total || i > 3000) {
            ssize_t k = recv(t->client, resp + got, cap - got, MSG_DONTWAIT);
            if (k > 0)
                got += (size_t)k;
        }
        uv_run(&t->loop, UV_RUN_NOWAIT);
        if (i % 16 == 0)
            poll(NULL, 0, 1);
    }
    /* The front codec may finish as its last bytes reach the socket: read what is still in
     * flight. */
    for (int i = 0; i < 50; i++) {
        ssize_t k = recv(t->client, resp + got, cap - got, MSG_DONTWAIT);
        if (k > 0)
            got += (size_t)k;
        else
            poll(NULL, 0, 2);
        uv_run(&t->loop, UV_RUN_NOWAIT);
    }
    ck_assert_uint_eq(sent, total);
    ck_assert_uint_eq(t->origin_bytes, body);
    ck_assert(t->front_done && t->back_done && t->origin_done);
    ck_assert_int_gt(t->disables, 0);
    ck_assert_int_gt(t->drained, 0);
    /* Decode the chunked response and compare. */
    resp[got < cap ? got : cap - 1] = '\0';
    const char *hdr_end = strstr(resp, "\r\n\r\n");
    ck_assert_ptr_nonnull(hdr_end);
    ck_assert_msg(strncmp(resp, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n", 45) == 0,
                  "%.200s", resp);
    const char *p = hdr_end + 4;
    size_t out = 0;
    bool ok = true;
    while (ok) {
        char *endp;
        unsigned long n = strtoul(p, &endp, 16);
        if (endp[0] != '\r' || endp[1] != '\n') {
            ok = false;
            break;
        }
        p = endp + 2;
        if (n == 0)
            break;
        for (unsigned long i = 0; i < n; i++) {
            if (p[i] != (char)('a' + (out + i) % 26))
                ok = false;
        }
        out += n;
        p += n + 2;
    }
    ck_assert(ok);
    ck_assert_uint_eq(out, body);
    ck_assert_ptr_eq(p + 2, resp + got);

    /* Everything is reusable: the back codec can take a new stream. */
    ck_assert(t->back->ops->can_take_stream(t->back));
    t->front->ops->close(t->front);
    t->back->ops->close(t->back);
    t->origin->ops->close(t->origin);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(t->closed, 3);
    ck_assert_int_eq(uv_loop_close(&t->loop), 0);
    close(t->client);
    dp_pool_free(t->pool_front);
    dp_pool_free(t->pool_back);
    dp_pool_free(t->pool_origin);
    free(req);
    free(resp);
    free(t);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("http1");
    TCase *tc = tcase_create("server");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_server_get_keepalive);
    tcase_add_test(tc, test_server_pipelined);
    tcase_add_test(tc, test_server_head_across_reads);
    tcase_add_test(tc, test_server_tcp_body_joins_head);
    tcase_add_test(tc, test_server_writes_held_for_the_turn);
    tcase_add_test(tc, test_server_write_from_timer_not_held_through_poll);
    tcase_add_test(tc, test_server_batching_follows_the_load);
    tcase_add_test(tc, test_field_ok_every_byte);
    tcase_add_test(tc, test_server_connection_options);
    tcase_add_test(tc, test_ascii_case_every_byte);
    tcase_add_test(tc, test_hex_u64);
    tcase_add_test(tc, test_server_chunked_in_out);
    tcase_add_test(tc, test_server_trailers_out_and_http10);
    tcase_add_test(tc, test_server_expect_continue);
    tcase_add_test(tc, test_server_absolute_form_and_refuse);
    tcase_add_test(tc, test_field_bytes);
    tcase_add_test(tc, test_field_ok_words);
    tcase_add_test(tc, test_server_early_response_and_eof);
    tcase_add_test(tc, test_server_upgrade);
    tcase_add_test(tc, test_server_half_close_pipelined);
    tcase_add_test(tc, test_server_go_away_and_encode_checks);
    tcase_add_test(tc, test_server_read_disable);
    tcase_add_loop_test(tc, test_server_bad_requests, 0,
                        (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
    tcase_add_loop_test(tc, test_server_bad_chunks, 0,
                        (int)(sizeof(bad_chunks) / sizeof(bad_chunks[0])));
    tcase_add_test(tc, test_server_limits);
    suite_add_tcase(s, tc);
    tc = tcase_create("client");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_client_basic);
    tcase_add_test(tc, test_client_head_eof_and_errors);
    tcase_add_test(tc, test_client_upgrade);
    tcase_add_test(tc, test_client_early_response);
    tcase_add_test(tc, test_round_trip_1mib);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(suite());
}
