/* Fuzz target: the HTTP/1 and HTTP/2 codecs (dataplane/http1.c, dataplane/http2.c), server and
 * client, as a connection sees them: the input is what the peer sends, written into a real
 * socketpair in pieces while the codec's loop runs, with an owner that answers the way the
 * connection manager and the router may (at once, at the end, streaming, reset, refused, read
 * disabled for a while, 1xx first, trailers). Then the peer's FIN, the codec's close, and
 * every handle and stream must be gone: a stream that never got on_done, on_done twice, a sink
 * event after on_done, or a handle left open aborts.
 *
 * Input: byte 0 picks the codec and the owner (bit 0: HTTP/2; bit 1: client; bits 2-4: the
 * owner's behaviour; bit 5: small limits and windows), byte 1 the write size (1 + 16 * b
 * bytes), the rest is the peer's bytes (for an HTTP/2 server, after the client preface, which
 * the harness sends). */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "dataplane/http.h"
#include "dataplane/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_STREAMS 512

enum {
    OWN_AT_HEAD,    /* server: 200 and a body as soon as the head arrives (before the body) */
    OWN_AT_END,     /* server: 200 and a body once the request ends */
    OWN_STREAM,     /* server: headers at once, each chunk echoed, trailers at the end */
    OWN_RESET,      /* server: reset at the head */
    OWN_HOLD,       /* read disabled at the head, enabled after the input, then answered */
    OWN_REFUSE,     /* server: every stream refused */
    OWN_INFO_FIRST, /* server: 100 Continue, then 200 and trailers at the end */
    OWN_NO_BODY,    /* server: 204 at the head */
};

typedef struct rec {
    dp_enc_t *enc;
    dp_pool_t *pool;
    bool ended, done, held, answered, echo;
} rec_t;

static struct {
    uv_loop_t loop;
    dp_codec_conn_t *conn;
    bool closed;
    int owner;
    rec_t *recs[MAX_STREAMS];
    int n_recs;
} F;

static rec_t *rec_new(void)
{
    if (F.n_recs >= MAX_STREAMS)
        return NULL;
    rec_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        abort();
    r->pool = dp_pool_new();
    F.recs[F.n_recs++] = r;
    return r;
}

/* Ends r's response with grpc-status 0 in trailers. */
static void send_trailers(rec_t *r)
{
    if (r->done)
        return;
    dp_headers_t t = {0};
    dp_headers_add(&t, r->pool, "grpc-status", 11, "0", 1);
    r->enc->ops->trailers(r->enc, &t);
}

static void answer(rec_t *r, int status, bool trailers)
{
    if (r->done || r->answered)
        return;
    r->answered = true;
    dp_http_head_t h = {.status = status, .content_length = -1};
    dp_headers_add(&h.headers, r->pool, "content-type", 12, "text/plain", 10);
    bool body = status != 204 && status != 304;
    if (r->enc->ops->headers(r->enc, &h, !body && !trailers) < 0 || r->done)
        return;
    if (body && r->enc->ops->data(r->enc, (const uint8_t *)"hello\n", 6, !trailers) < 0)
        return;
    if (trailers)
        send_trailers(r);
}

static void request_ended(rec_t *r)
{
    r->ended = true;
    if (r->done || r->held)
        return;
    switch (F.owner) {
    case OWN_AT_END:
        answer(r, 200, false);
        break;
    case OWN_STREAM:
    case OWN_INFO_FIRST:
        send_trailers(r);
        break;
    default:
        break;
    }
}

static void on_headers(void *ud, dp_http_head_t *h, bool end)
{
    rec_t *r = ud;
    if (r->done)
        abort(); /* an event after on_done */
    (void)h;
    if (F.conn == NULL || r->enc == NULL)
        return;
    switch (F.owner) {
    case OWN_AT_HEAD:
        answer(r, 200, false);
        break;
    case OWN_RESET:
        r->done = true; /* the codec calls nothing more on this sink */
        r->enc->ops->reset(r->enc, DP_RESET_LOCAL);
        return;
    case OWN_HOLD:
        if (!r->held) {
            r->held = true;
            r->enc->ops->read_disable(r->enc, true);
        }
        break;
    case OWN_STREAM:
    case OWN_INFO_FIRST: {
        if (r->answered)
            break;
        if (F.owner == OWN_INFO_FIRST) {
            dp_http_head_t c = {.status = 100, .content_length = -1};
            if (r->enc->ops->headers(r->enc, &c, false) < 0 || r->done)
                return;
        }
        r->answered = true;
        dp_http_head_t rh = {.status = 200, .content_length = -1};
        dp_headers_add(&rh.headers, r->pool, "content-type", 12, "application/grpc", 16);
        if (r->enc->ops->headers(r->enc, &rh, false) < 0 || r->done)
            return;
        r->echo = true;
        break;
    }
    case OWN_NO_BODY:
        answer(r, 204, false);
        break;
    default:
        break;
    }
    if (end && !r->done)
        request_ended(r);
}

static void on_data(void *ud, const uint8_t *p, size_t n, bool end)
{
    rec_t *r = ud;
    if (r->done || r->ended)
        abort();
    if (r->echo && n > 0 && r->enc->ops->data(r->enc, p, n, false) < 0)
        return;
    if (end && !r->done)
        request_ended(r);
}

static void on_trailers(void *ud, dp_headers_t *t)
{
    rec_t *r = ud;
    (void)t;
    if (r->done || r->ended)
        abort();
    request_ended(r);
}

static void on_drained(void *ud)
{
    if (((rec_t *)ud)->done)
        abort();
}

static void on_done(void *ud, dp_reset_reason_t why)
{
    rec_t *r = ud;
    (void)why;
    if (r->done)
        abort(); /* twice */
    r->done = true;
}

static const dp_sink_ops_t sink = {
    .on_headers = on_headers,
    .on_data = on_data,
    .on_trailers = on_trailers,
    .on_drained = on_drained,
    .on_done = on_done,
};

static const dp_sink_ops_t *on_stream(void *ud, dp_enc_t *enc, void **ret_ud, dp_pool_t **ret_pool)
{
    (void)ud;
    if (F.owner == OWN_REFUSE)
        return NULL;
    rec_t *r = rec_new();
    if (r == NULL)
        return NULL;
    r->enc = enc;
    *ret_ud = r;
    *ret_pool = r->pool;
    return &sink;
}

static void on_close(void *ud, dp_codec_conn_t *c, dp_reset_reason_t why)
{
    (void)ud;
    (void)c;
    (void)why;
    F.closed = true;
    F.conn = NULL;
}

static const dp_codec_cb_t cb = {
    .on_stream = on_stream,
    .on_close = on_close,
};

/* Client: the requests the peer's bytes answer: a GET, a POST with a body, and a request that
 * streams with trailers. */
static void open_requests(void)
{
    static const char *const methods[] = {"GET", "POST", "POST"};
    for (int i = 0; i < 3 && F.conn && F.conn->ops->can_take_stream(F.conn); i++) {
        rec_t *r = rec_new();
        if (r == NULL)
            return;
        r->enc = F.conn->ops->new_stream(F.conn, &sink, r, r->pool);
        if (r->enc == NULL) {
            r->done = true;
            return;
        }
        dp_http_head_t h = {0};
        h.method = (dp_str_t){methods[i], strlen(methods[i])};
        h.scheme = DP_STR("http");
        h.authority = DP_STR("fuzz.local");
        h.path = DP_STR("/p");
        h.content_length = i == 1 ? 5 : -1;
        if (i == 2)
            dp_headers_add(&h.headers, r->pool, "te", 2, "trailers", 8);
        if (r->enc->ops->headers(r->enc, &h, i == 0) < 0 || r->done)
            continue;
        if (i == 1)
            r->enc->ops->data(r->enc, (const uint8_t *)"hello", 5, true);
        else if (i == 2 && r->enc->ops->data(r->enc, (const uint8_t *)"x", 1, false) == 0 &&
                 !r->done) {
            dp_headers_t t = {0};
            dp_headers_add(&t, r->pool, "x-end", 5, "1", 1);
            r->enc->ops->trailers(r->enc, &t);
        }
    }
}

/* Reads and drops what the codec sent; false once the codec's side is closed. */
static bool drain(int fd)
{
    char buf[16384];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0)
            continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
    }
}

static void spin(int fd, int turns)
{
    for (int i = 0; i < turns; i++) {
        uv_run(&F.loop, UV_RUN_NOWAIT);
        drain(fd);
    }
}

/* Writes p[0..n) to fd in pieces of at most piece bytes, running the loop between them. */
static void feed(int fd, const uint8_t *p, size_t n, size_t piece)
{
    size_t off = 0;
    for (int stalls = 0; off < n && stalls < 64;) {
        size_t k = n - off < piece ? n - off : piece;
        ssize_t w = send(fd, p + off, k, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            stalls = 0;
        } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return; /* the codec closed its end */
        } else {
            stalls++;
        }
        spin(fd, 2);
    }
}

/* As a worker does, once per loop turn before the poll. */
static void on_turn(uv_prepare_t *p)
{
    (void)p;
    dp_http_turn_end();
}

static void walk_cb(uv_handle_t *h, void *arg)
{
    (void)h;
    ++*(int *)arg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool once;
    if (!once) {
        dp_log_set_all(DP_LOG_OFF);
        signal(SIGPIPE, SIG_IGN); /* as skiff does: a closed peer is an error return */
        once = true;
    }
    if (size < 2)
        return 0;
    memset(&F, 0, sizeof(F));
    bool h2 = data[0] & 1, client = data[0] & 2;
    F.owner = (data[0] >> 2) & 7;
    dp_http_limits_t lim = dp_http_limits_default();
    if (data[0] & 32) {
        lim.max_header_bytes = 2048;
        lim.max_headers = 16;
        lim.buffer_limit = 1024;
        lim.h2_max_concurrent_streams = 4;
        lim.h2_initial_stream_window = 1024;
        lim.h2_initial_connection_window = 65535;
    }
    size_t piece = 1 + 16 * (size_t)data[1];
    data += 2;
    size -= 2;
    if (uv_loop_init(&F.loop) != 0)
        abort();
    uv_prepare_t turn;
    uv_prepare_init(&F.loop, &turn);
    uv_prepare_start(&turn, on_turn);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0)
        abort();
    F.conn = (h2 ? dp_h2_conn_new : dp_h1_conn_new)(&F.loop, sv[0], !client, &lim, &cb, NULL);
    if (F.conn == NULL)
        abort();
    if (client)
        open_requests();
    else if (h2)
        feed(sv[1], (const uint8_t *)DP_H2_PREFACE, DP_H2_PREFACE_LEN, DP_H2_PREFACE_LEN);
    feed(sv[1], data, size, piece);
    spin(sv[1], 8);
    /* What was held is let go, and answered. */
    for (int i = 0; i < F.n_recs; i++) {
        rec_t *r = F.recs[i];
        if (r->held && !r->done && F.conn) {
            r->held = false;
            r->enc->ops->read_disable(r->enc, false);
            answer(r, 200, false);
        }
    }
    spin(sv[1], 4);
    /* The peer's FIN, then the codec's close, then the peer's end goes away. */
    shutdown(sv[1], SHUT_WR);
    spin(sv[1], 4);
    if (F.conn)
        F.conn->ops->close(F.conn);
    close(sv[1]);
    uv_close((uv_handle_t *)&turn, NULL);
    for (int i = 0; i < 1000 && uv_loop_alive(&F.loop); i++)
        uv_run(&F.loop, UV_RUN_NOWAIT);
    int open = 0;
    uv_walk(&F.loop, walk_cb, &open);
    if (!F.closed || open != 0 || uv_loop_close(&F.loop) != 0)
        abort(); /* the connection did not end, or left a handle open */
    for (int i = 0; i < F.n_recs; i++) {
        rec_t *r = F.recs[i];
        /* every stream the codec knew of ended once (a refused client stream never began) */
        if (r->enc != NULL && !r->done)
            abort();
        dp_pool_free(r->pool);
        free(r);
    }
    return 0;
}
