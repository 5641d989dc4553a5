/* The HTTP/1.1 codec connection (dp_h1_conn_new in dataplane/http.h): libuv I/O and the
 * one-stream-at-a-time state machine around the pure parser in dataplane/http1_parse.c.
 *
 * Behaviour worth knowing (see also http1_parse.h for what is rejected):
 *  - Reads go into one fixed buffer per connection (max_header_bytes + 8 KiB, at least 64 KiB).
 *    A pipelined request is not parsed until the stream before it is done; its bytes wait in
 *    that buffer, and reading stops when the buffer is full.
 *  - "expect: 100-continue" is answered by the codec with "HTTP/1.1 100 Continue" when the head
 *    is delivered (Envoy's default), and the header is stripped; a 100 head the owner sends
 *    after that is dropped.
 *  - Events for the owner are never called from inside its own calls on the encoder: stream
 *    completion (on_done) is reported from the write callback once the last bytes of the
 *    message were written, and resuming after read_disable(false) runs from a zero timer.
 *  - Server: a stream is done when its response was written; if the request body had not been
 *    read completely by then, the connection is closed afterwards. Client: a stream is done
 *    when the response was read (and the request written; an early response closes the
 *    connection after it). An upgraded (101) stream is done when both directions ended.
 *  - A local reply (400, 431, 501, 503; refuse_head's status) carries its reason phrase (or
 *    refuse_head's body) as a text/plain body and "connection: close"; the connection is shut
 *    down for writing after it, lingers (reads and drops) until the peer's FIN or one second,
 *    then closes. A parse error after the head was delivered gives the sink
 *    on_done(DP_RESET_PROTOCOL) and the peer a 400 when no response had started.
 *  - Encoding: the status line carries the reason phrase; the framing is the codec's (any
 *    content-length, transfer-encoding, connection, keep-alive, host header in the head is
 *    replaced): content-length when known, 0 when the head ends the stream (not for
 *    1xx/204/304 or HEAD), chunked for HTTP/1.1 otherwise, close-delimited for HTTP/1.0.
 *    Fields with CR, LF or other controls are dropped; bytes past the announced length are
 *    cut and the connection closes after the message. Requests: "host" first, from the
 *    authority; content-length: 0 for a body-less POST or PUT.
 *  - A client connection is not reused after "connection: close", an EOF-delimited response,
 *    a declined upgrade, an early response, or bytes left after a complete response.
 *  - on_close reasons: DP_RESET_NONE for orderly ends (idle EOF, connection: close, go_away),
 *    DP_RESET_PROTOCOL after a malformed message, DP_RESET_REMOTE for a peer EOF or error in
 *    the middle of a message, DP_RESET_LOCAL after close() or the owner's reset(). */
#include "dataplane/conn.h"
#include "dataplane/http1_parse.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef enum {
    IN_HEAD,
    IN_BODY,
    IN_WAIT,
    IN_TUNNEL
} in_state_t;
typedef enum {
    OUT_NONE,
    OUT_LENGTH,
    OUT_CHUNKED,
    OUT_RAW
} out_mode_t;

typedef struct h1_conn h1_conn_t;

typedef struct h1_stream {
    dp_enc_t enc;
    h1_conn_t *c;
    const dp_sink_ops_t *sink;
    void *sink_ud;
    dp_pool_t *pool;
    bool in_done;        /* the inbound message ended */
    bool in_end_sent;    /* the sink was told */
    bool pending_in_end; /* tell the sink from the timer */
    bool out_started;    /* the final head was queued */
    bool out_final;      /* the last byte of the outbound message was queued */
    bool out_done;       /* ... and written */
    out_mode_t out_mode;
    int64_t out_remaining; /* OUT_LENGTH with a length: bytes still to send; else -1 */
    bool req_head;         /* the request is HEAD */
    bool req_upgrade;      /* the request asked for an upgrade */
    bool http10;           /* server: the request was HTTP/1.0 */
    bool tunnel;
    bool continue_sent;
} h1_stream_t;

struct h1_conn {
    dp_codec_conn_t base;
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_idle_t kick;         /* deferred work, in the idle phase of the next loop turn */
    dp_turn_work_t flusher; /* writes c->pending at the end of the loop turn */
    uv_timer_t linger;      /* after our FIN: how long the peer's last bytes are awaited */
    uv_shutdown_t shut;
    uv_loop_t *loop;
    bool server;
    dp_http_limits_t lim;
    dp_codec_cb_t cb;
    void *ud;
    char *rbuf; /* the thread's read buffer (rbuf_shared) during a read, else own or NULL */
    size_t rcap, rlen;
    bool rbuf_shared;
    dp_h1_head_parser_t head;
    dp_h1_body_parser_t body;
    in_state_t in;
    h1_stream_t s;
    bool active;
    unsigned read_disabled;
    bool reading, eof, eof_handled, closing, shutting, shut_issued, close_after, going_away;
    bool write_failed, over, again, lingering;
    bool head_begun; /* server: on_head_begin announced the head being read */
    int depth;
    size_t queued;
    size_t ppos;          /* during process(): bytes of rbuf consumed so far; else 0 */
    struct wreq *pending; /* small writes held for the flusher (see out_write) */
    int handles_open;
    dp_reset_reason_t close_why;
};

typedef struct wreq {
    uv_write_t req;
    h1_conn_t *c;
    size_t len, cap;
    char data[];
} wreq_t;

static void process(h1_conn_t *c);
static void wreq_free(wreq_t *w);
static void on_kick(uv_idle_t *h);
static void on_linger(uv_timer_t *t);
static void check_done(h1_conn_t *c);
static void conn_close(h1_conn_t *c, dp_reset_reason_t stream_why, dp_reset_reason_t why);
static void conn_shutdown(h1_conn_t *c);
static void update_reading(h1_conn_t *c);

static void schedule(h1_conn_t *c)
{
    if (!c->closing)
        uv_idle_start(&c->kick, on_kick);
}

/* ---- output ---- */

/* Counts (p == NULL) or writes the bytes of a message head. */
typedef struct wb {
    char *p;
    size_t n;
} wb_t;

static void put(wb_t *b, const char *s, size_t n)
{
    if (b->p)
        memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void puts_(wb_t *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_str(wb_t *b, dp_str_t s)
{
    put(b, s.p, s.n);
}

static void put_header(wb_t *b, const char *name, size_t nn, const char *v, size_t vn)
{
    put(b, name, nn);
    put(b, ": ", 2);
    put(b, v, vn);
    put(b, "\r\n", 2);
}

static void on_write(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    h1_conn_t *c = w->c;
    c->queued -= w->len;
    wreq_free(w);
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c, DP_RESET_REMOTE, DP_RESET_REMOTE);
        return;
    }
    if (c->over && c->queued < c->lim.buffer_limit / 2) {
        c->over = false;
        if (c->active && c->s.sink && c->s.sink->on_drained)
            c->s.sink->on_drained(c->s.sink_ud);
        if (c->closing)
            return;
    }
    check_done(c);
}

/* Writes up to HOLD_MAX bytes are held for the flusher; a held buffer has room for at least
 * HOLD_MIN, and a head for a body of up to HOLD_MAX after it. */
#define HOLD_MAX 4096
#define HOLD_MIN 512

/* Whether this thread's loop is busy enough for small writes to wait for the end of the
 * turn (dp_http_turn_end), and the writes of the turn so far. */
static _Thread_local bool turn_batch = true;
static _Thread_local unsigned turn_writes;

void dp_http_turn_end(void)
{
    turn_batch = turn_writes >= DP_H1_BATCH_WRITES;
    turn_writes = 0;
}

/* Write requests with room for up to WREQ_SMALL bytes come from a per-thread cache: a request
 * takes two (its head upstream, its response downstream), and the held ones are freed
 * together at the end of a turn, in bursts longer than glibc's cache of seven per size
 * (callgrind: 1.4 _int_malloc and 2.2 _int_free calls per request without it). */
#define WREQ_SMALL 1024
static _Thread_local dp_block_cache_t wreqs = DP_BLOCK_CACHE(sizeof(wreq_t) + WREQ_SMALL, 128);

void dp_h1_thread_done(void)
{
    dp_block_drain(&wreqs);
}

/* A write request for len bytes, with room for cap (>= len). */
static wreq_t *wreq_new_cap(h1_conn_t *c, size_t len, size_t cap)
{
    wreq_t *w = cap <= WREQ_SMALL ? dp_block_get(&wreqs) : malloc(sizeof(*w) + cap);
    if (w == NULL)
        abort();
    w->c = c;
    w->len = len;
    w->cap = cap;
    return w;
}

static wreq_t *wreq_new(h1_conn_t *c, size_t len)
{
    return wreq_new_cap(c, len, len);
}

static void wreq_free(wreq_t *w)
{
    if (w && w->cap <= WREQ_SMALL)
        dp_block_put(&wreqs, w);
    else
        free(w);
}

static void wreq_queue(h1_conn_t *c, wreq_t *w)
{
    uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
    c->queued += w->len;
    if (uv_write(&w->req, &c->h.stream, &b, 1, on_write) < 0) {
        c->queued -= w->len;
        wreq_free(w);
        c->write_failed = true;
        schedule(c);
        return;
    }
    if (c->queued >= c->lim.buffer_limit)
        c->over = true;
}

/* The held bytes: what was not written of them (done bytes were) is queued, ahead of
 * anything else. */
static void pending_settle(h1_conn_t *c, size_t done)
{
    wreq_t *h = c->pending;
    if (h == NULL)
        return;
    c->pending = NULL;
    dp_turn_work_stop(&c->flusher);
    if (done == h->len || c->closing) {
        wreq_free(h);
        return;
    }
    if (done) {
        memmove(h->data, h->data + done, h->len - done);
        h->len -= done;
    }
    wreq_queue(c, h);
}

/* A final message's completion is noticed by the kick mark_final starts; other writes that
 * leave nothing queued need no follow-up. */
static void written_all(h1_conn_t *c)
{
    if (!c->active || c->s.out_final || c->shutting)
        schedule(c);
}

/* Writes the held bytes now: what the socket takes at once (no write request, no poll
 * change), the rest queued. */
static void pending_flush(h1_conn_t *c)
{
    wreq_t *h = c->pending;
    if (h == NULL)
        return;
    size_t done = 0;
    if (c->queued == 0 && !c->closing && !c->shut_issued && !c->write_failed) {
        int r = dp_try_send(&c->h.stream, h->data, h->len);
        done = r > 0 ? (size_t)r : 0; /* else EAGAIN, or an error uv_write will report */
        if (done == h->len)
            written_all(c);
    }
    pending_settle(c, done);
}

static void on_flush(void *ud)
{
    pending_flush(ud);
}

/* Holds w (len bytes, room for cap) for the flush at the end of this loop turn's I/O. */
static void pending_hold(h1_conn_t *c, wreq_t *w)
{
    c->pending = w;
    dp_turn_work_start(&c->flusher);
}

/* Writes p[0..n): own is the write request holding p (reused for what stays), or NULL when p
 * is the caller's (the rest is copied). In a busy loop (turn_batch) small writes are held in
 * c->pending, which the check phase flushes after every connection of the loop turn had its
 * I/O callbacks: the responses and requests that one turn produces leave in a burst, so the
 * peers on the other side (a backend, the clients) are woken once for several, not once each
 * (measured with an nginx backend under load: its worker's epoll_waits and context switches
 * a third of what sending each at once cost it). In a quiet loop a write goes at once, a held
 * head's body joining it first. A write that does not fit goes at once, after the held
 * bytes, in one writev. What completes is noticed from the kick, never inside the owner's
 * call. */
static void out_write(h1_conn_t *c, const char *p, size_t n, wreq_t *own)
{
    if (c->closing || c->shut_issued || c->write_failed || n == 0) {
        wreq_free(own);
        return;
    }
    turn_writes++;
    wreq_t *h = c->pending;
    if (!turn_batch && c->queued == 0 && h && n <= h->cap - h->len) {
        memcpy(h->data + h->len, p, n);
        h->len += n;
        wreq_free(own);
        pending_flush(c);
        return;
    }
    if (turn_batch && c->queued == 0 && n <= HOLD_MAX && (h == NULL || n <= h->cap - h->len)) {
        if (h == NULL && own) {
            pending_hold(c, own);
            return;
        }
        if (h == NULL) {
            h = wreq_new_cap(c, 0, n > HOLD_MIN ? n : HOLD_MIN);
            pending_hold(c, h);
        }
        memcpy(h->data + h->len, p, n);
        h->len += n;
        wreq_free(own);
        return;
    }
    size_t head = h ? h->len : 0, head_done = 0, done = 0;
    if (c->queued == 0) {
        int r;
        if (head) {
            uv_buf_t b[2] = {uv_buf_init(h->data, (unsigned)head),
                             uv_buf_init((char *)p, (unsigned)n)};
            r = uv_try_write(&c->h.stream, b, 2);
        } else {
            r = dp_try_send(&c->h.stream, p, n);
        }
        if (r > 0) {
            head_done = (size_t)r < head ? (size_t)r : head;
            done = (size_t)r - head_done;
        }
        if (done == n)
            written_all(c);
    }
    pending_settle(c, head_done);
    if (done == n) {
        wreq_free(own);
        return;
    }
    if (own) {
        memmove(own->data, own->data + done, n - done);
        own->len = n - done;
    } else {
        own = wreq_new(c, n - done);
        memcpy(own->data, p + done, n - done);
    }
    wreq_queue(c, own);
}

static void wreq_send(h1_conn_t *c, wreq_t *w)
{
    out_write(c, w->data, w->len, w);
}

static void send_bytes(h1_conn_t *c, const char *p, size_t n)
{
    out_write(c, p, n, NULL);
}

/* A head is held like any small write (out_write), and in a quiet loop too when a body
 * follows: its room takes the body's first bytes, and both leave in one send. */
static void head_send(h1_conn_t *c, wreq_t *w)
{
    h1_stream_t *s = &c->s;
    bool body = s->out_started && (s->out_mode == OUT_LENGTH || s->out_mode == OUT_CHUNKED);
    if ((turn_batch || body) && c->pending == NULL && c->queued == 0 && !c->closing &&
        !c->shut_issued && !c->write_failed) {
        turn_writes++;
        pending_hold(c, w);
        return;
    }
    wreq_send(c, w);
}

/* ---- closing ---- */

static void on_handle_closed(uv_handle_t *h)
{
    h1_conn_t *c = h->data;
    if (--c->handles_open > 0)
        return;
    if (c->cb.on_close)
        c->cb.on_close(c->ud, &c->base, c->close_why);
    wreq_free(c->pending);
    free(c->rbuf);
    free(c);
}

static void conn_close(h1_conn_t *c, dp_reset_reason_t stream_why, dp_reset_reason_t why)
{
    if (c->closing)
        return;
    c->closing = true;
    c->close_why = why;
    if (c->active) {
        c->active = false;
        if (c->s.sink)
            c->s.sink->on_done(c->s.sink_ud, stream_why);
    }
    uv_idle_stop(&c->kick);
    uv_close((uv_handle_t *)&c->kick, on_handle_closed);
    dp_turn_work_close(&c->flusher, on_handle_closed);
    uv_timer_stop(&c->linger);
    uv_close((uv_handle_t *)&c->linger, on_handle_closed);
    uv_close(&c->h.handle, on_handle_closed);
}

/* After the FIN the connection lingers: what the peer still sends is read and dropped until
 * its own FIN or LINGER_MS, so that closing with unread bytes does not turn into a RST that
 * could destroy the response before the peer read it. */
#define LINGER_MS 1000

static void on_shutdown(uv_shutdown_t *req, int status)
{
    h1_conn_t *c = req->data;
    if (c->closing || !c->shutting)
        return;
    /* Only a server lingers: its last response must survive; a client has nothing left to
     * deliver. */
    if (status < 0 || c->eof || !c->server) {
        conn_close(c, DP_RESET_CONN_TERMINATED, c->close_why);
        return;
    }
    c->lingering = true;
    uv_timer_start(&c->linger, on_linger, LINGER_MS, 0);
}

/* Sends our FIN after every byte written so far (the held ones go to the socket first). */
static int shut_send(h1_conn_t *c)
{
    pending_flush(c);
    c->shut.data = c;
    c->shut_issued = true;
    return uv_shutdown(&c->shut, &c->h.stream, on_shutdown);
}

/* Orderly close: flush what is queued, send FIN, then close. */
static void conn_shutdown(h1_conn_t *c)
{
    if (c->closing || c->shutting)
        return;
    c->shutting = true;
    update_reading(c);
    if (c->shut_issued) {
        conn_close(c, DP_RESET_CONN_TERMINATED, c->close_why);
        return;
    }
    if (shut_send(c) < 0)
        conn_close(c, DP_RESET_CONN_TERMINATED, c->close_why);
}

/* A server's own answer to the request being read (a malformed one, or one refused): the
 * body is the reason phrase unless given; the connection closes after it. */
static void local_reply_body(h1_conn_t *c, int status, const char *body)
{
    if (c->active) {
        bool started = c->s.out_started;
        c->active = false;
        if (c->s.sink)
            c->s.sink->on_done(c->s.sink_ud, DP_RESET_PROTOCOL);
        if (c->closing)
            return;
        if (started) {
            conn_close(c, DP_RESET_PROTOCOL, DP_RESET_PROTOCOL);
            return;
        }
    }
    const char *reason = dp_h1_reason(status);
    if (body == NULL)
        body = reason;
    char buf[256];
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\ncontent-length: %zu\r\ncontent-type: text/plain\r\n"
                     "connection: close\r\n\r\n%s",
                     status, reason, strlen(body), body);
    send_bytes(c, buf, n < (int)sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
    c->close_why = DP_RESET_PROTOCOL;
    conn_shutdown(c);
}

static void local_reply(h1_conn_t *c, int status)
{
    local_reply_body(c, status, NULL);
}

/* ---- stream completion ---- */

static void finish_stream(h1_conn_t *c, bool reuse)
{
    h1_stream_t *s = &c->s;
    c->active = false;
    s->sink->on_done(s->sink_ud, DP_RESET_NONE);
    if (c->closing)
        return;
    /* A server whose peer half-closed still answers the requests already buffered; the idle
     * EOF closes it afterwards. */
    if (!reuse || c->close_after || c->going_away || (c->eof && !c->server)) {
        c->close_why = DP_RESET_NONE;
        if (s->tunnel)
            conn_close(c, DP_RESET_NONE, DP_RESET_NONE);
        else
            conn_shutdown(c);
        return;
    }
    c->in = IN_HEAD;
    dp_h1_head_init(&c->head, c->server, &c->lim);
    if (c->server) {
        process(c);
    } else if (c->cb.on_ready) {
        c->cb.on_ready(c->ud, &c->base);
    }
}

static void check_done(h1_conn_t *c)
{
    if (!c->active || c->closing)
        return;
    h1_stream_t *s = &c->s;
    if (s->out_final && !s->out_done && c->queued == 0 && c->pending == NULL)
        s->out_done = true;
    if (s->tunnel) {
        if (s->in_done && s->in_end_sent && s->out_done)
            finish_stream(c, false);
        return;
    }
    if (c->server && s->out_done)
        finish_stream(c, s->in_done && s->in_end_sent);
    else if (!c->server && s->in_done && s->in_end_sent)
        /* Bytes after a complete response (a body on a HEAD or 204 answer, say) mean the
         * upstream's framing cannot be trusted: do not reuse the connection. */
        finish_stream(c, s->out_final && c->rlen == c->ppos);
}

/* ---- input ---- */

static bool on_piece(void *ud, const uint8_t *p, size_t n)
{
    h1_conn_t *c = ud;
    h1_stream_t *s = &c->s;
    if (!c->active || c->closing)
        return false;
    bool end = c->body.done;
    if (end) {
        s->in_done = true;
        s->in_end_sent = true;
    }
    if (n || end)
        s->sink->on_data(s->sink_ud, p, n, end);
    return !c->closing && c->read_disabled == 0;
}

/* The inbound message ended: trailers or an empty end for the sink. */
static void message_in_done(h1_conn_t *c)
{
    h1_stream_t *s = &c->s;
    s->in_done = true;
    c->in = IN_WAIT;
    if (!s->in_end_sent) {
        s->in_end_sent = true;
        if (c->body.trailers && s->sink->on_trailers)
            s->sink->on_trailers(s->sink_ud, c->body.trailers);
        else
            s->sink->on_data(s->sink_ud, NULL, 0, true);
    }
}

static void stream_init(h1_conn_t *c, const dp_sink_ops_t *ops, void *ud, dp_pool_t *pool);

static bool discard_piece(void *ud, const uint8_t *p, size_t n)
{
    return true;
}

/* Whether the chunked body bytes already read after the head are well framed: a request whose
 * framing is broken within what arrived with its head is refused before anything of it is
 * handed on (and so before any byte of it can reach an upstream). */
static bool chunked_prefix_ok(h1_conn_t *c, const char *body, size_t n)
{
    if (c->head.framing != DP_H1_BODY_CHUNKED || n == 0)
        return true;
    dp_pool_t *scratch = dp_pool_new();
    dp_h1_body_parser_t bp;
    dp_h1_body_init(&bp, c->head.framing, c->head.content_length, &c->lim, scratch);
    bool ok = true;
    size_t off = 0;
    while (off < n && !bp.done) {
        long k = dp_h1_body_feed(&bp, body + off, n - off, discard_piece, NULL);
        if (k < 0) {
            ok = false;
            c->body.err_status = bp.err_status;
            break;
        }
        if (k == 0)
            break; /* an incomplete line: the rest comes later */
        off += (size_t)k;
    }
    dp_pool_free(scratch);
    return ok;
}

/* A valid head is at b, avail bytes read from there; returns the bytes consumed, 0 when the
 * connection is closing. */
static size_t server_head(h1_conn_t *c, const char *b, size_t avail)
{
    h1_stream_t *s = &c->s;
    size_t len = c->head.head_len;
    c->head_begun = false;
    stream_init(c, NULL, NULL, NULL);
    void *sud = NULL;
    dp_pool_t *pool = NULL;
    const dp_sink_ops_t *ops = c->cb.on_stream(c->ud, &s->enc, &sud, &pool);
    if (ops == NULL || pool == NULL) {
        c->active = false;
        local_reply(c, 503);
        return 0;
    }
    s->sink = ops;
    s->sink_ud = sud;
    s->pool = pool;
    dp_http_head_t *h = dp_h1_head_build(&c->head, b, pool);
    if (h == NULL) {
        local_reply(c, c->head.err_status);
        return 0;
    }
    if (!chunked_prefix_ok(c, b + len, avail - len)) {
        local_reply(c, c->body.err_status ? c->body.err_status : 400);
        return 0;
    }
    s->req_head = DP_STR_EQ(h->method, "HEAD");
    s->req_upgrade = c->head.upgrade;
    s->http10 = c->head.http10;
    if (!c->head.keep_alive)
        c->close_after = true;
    dp_h1_body_init(&c->body, c->head.framing, c->head.content_length, &c->lim, pool);
    bool end = c->body.done && !s->req_upgrade;
    if (end) {
        s->in_done = s->in_end_sent = true;
        c->in = IN_WAIT;
    } else {
        c->in = s->req_upgrade ? IN_WAIT : IN_BODY;
    }
    if (c->head.expect_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        send_bytes(c, cont, sizeof(cont) - 1);
        s->continue_sent = true;
    }
    s->sink->on_headers(s->sink_ud, h, end);
    return c->closing ? 0 : len;
}

static void protocol_error(h1_conn_t *c)
{
    conn_close(c, DP_RESET_PROTOCOL, DP_RESET_PROTOCOL);
}

static size_t client_head(h1_conn_t *c, const char *b)
{
    h1_stream_t *s = &c->s;
    size_t len = c->head.head_len;
    bool was_head = c->head.req_was_head;
    dp_http_head_t *h = dp_h1_head_build(&c->head, b, s->pool);
    if (h == NULL) {
        protocol_error(c);
        return 0;
    }
    int st = h->status;
    if (st == 101) {
        if (!s->req_upgrade || !c->head.upgrade) {
            protocol_error(c);
            return 0;
        }
        s->tunnel = true;
        c->in = IN_TUNNEL;
        s->sink->on_headers(s->sink_ud, h, false);
        return c->closing ? 0 : len;
    }
    if (st < 200) {
        /* 1xx: the final head follows (RFC 9110 §15.2). */
        dp_h1_head_init(&c->head, false, &c->lim);
        c->head.req_was_head = was_head;
        s->sink->on_headers(s->sink_ud, h, false);
        return c->closing ? 0 : len;
    }
    if (!c->head.keep_alive || s->req_upgrade)
        c->close_after = true;
    dp_h1_body_init(&c->body, c->head.framing, c->head.content_length, &c->lim, s->pool);
    bool end = c->body.done;
    if (end)
        s->in_done = s->in_end_sent = true;
    c->in = end ? IN_WAIT : IN_BODY;
    s->sink->on_headers(s->sink_ud, h, end);
    return c->closing ? 0 : len;
}

static void handle_eof(h1_conn_t *c)
{
    h1_stream_t *s = &c->s;
    switch (c->in) {
    case IN_HEAD:
        c->eof_handled = true;
        if (c->active)
            conn_close(c, DP_RESET_REMOTE, DP_RESET_REMOTE);
        else
            conn_close(c, DP_RESET_NONE, c->rlen ? DP_RESET_REMOTE : DP_RESET_NONE);
        return;
    case IN_BODY:
        if (c->read_disabled)
            return;
        c->eof_handled = true;
        if (dp_h1_body_eof(&c->body) == 0) {
            message_in_done(c);
            check_done(c);
        } else {
            conn_close(c, DP_RESET_REMOTE, DP_RESET_REMOTE);
        }
        return;
    case IN_WAIT:
        /* Half-closed after a complete request: answer it; the EOF is acted on once the
         * connection is back between messages. */
        if (!c->active) {
            c->eof_handled = true;
            conn_close(c, DP_RESET_NONE, DP_RESET_NONE);
        }
        return;
    case IN_TUNNEL:
        if (c->read_disabled)
            return;
        c->eof_handled = true;
        if (!s->in_done) {
            s->in_done = s->in_end_sent = true;
            s->sink->on_data(s->sink_ud, NULL, 0, true);
        }
        check_done(c);
        return;
    }
}

static void process(h1_conn_t *c)
{
    if (c->depth) {
        c->again = true;
        return;
    }
    c->depth++;
    size_t pos = 0;
    do {
        c->again = false;
        while (!c->closing && !c->shutting) {
            char *b = c->rbuf != NULL ? c->rbuf + pos : NULL;
            size_t n = c->rlen - pos;
            if (c->in == IN_HEAD) {
                if (n == 0)
                    break;
                if (!c->server && !c->active) {
                    /* Bytes from the upstream with no request outstanding. */
                    protocol_error(c);
                    break;
                }
                int r = dp_h1_head_scan(&c->head, b, n);
                if (r == 0) {
                    if (c->server && !c->head_begun && c->cb.on_head_begin) {
                        c->head_begun = true;
                        c->cb.on_head_begin(c->ud);
                    }
                    break;
                }
                if (r < 0) {
                    if (c->server)
                        local_reply(c, c->head.err_status);
                    else
                        protocol_error(c);
                    break;
                }
                size_t k = c->server ? server_head(c, b, n) : client_head(c, b);
                if (k == 0)
                    break;
                pos += k;
                c->ppos = pos;
                check_done(c);
            } else if (c->in == IN_BODY) {
                if (c->read_disabled || n == 0)
                    break;
                long k = dp_h1_body_feed(&c->body, b, n, on_piece, c);
                if (c->closing)
                    break;
                if (k < 0) {
                    if (c->server)
                        local_reply(c, c->body.err_status);
                    else
                        protocol_error(c);
                    break;
                }
                pos += (size_t)k;
                c->ppos = pos;
                if (c->body.done) {
                    c->in = IN_WAIT;
                    if (c->active) {
                        message_in_done(c);
                        check_done(c);
                    }
                } else if (k == 0) {
                    break;
                }
            } else if (c->in == IN_TUNNEL) {
                if (c->read_disabled || n == 0)
                    break;
                pos += n;
                c->ppos = pos;
                if (c->active && !c->s.in_done)
                    c->s.sink->on_data(c->s.sink_ud, (const uint8_t *)b, n, false);
            } else {
                break;
            }
        }
    } while (c->again && !c->closing && !c->shutting);
    c->depth--;
    c->ppos = 0;
    if (c->closing)
        return;
    if (pos) {
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
        /* The head scan keeps offsets from the start of the unconsumed bytes, which only moved
         * when the head had not begun yet (pos covers whole messages). */
    }
    if (c->eof && !c->eof_handled && !c->shutting)
        handle_eof(c);
    if (!c->closing)
        update_reading(c);
}

/* Reads land in the thread's read buffer (dp_read_buf) while the connection holds no
 * unparsed bytes (the usual case between keep-alive messages); only bytes left over after a
 * read (a part of a head, body held back by read_disable) get a buffer of the connection's
 * own, freed once they are consumed. An idle connection so holds no read buffer. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    h1_conn_t *c = h->data;
    (void)suggested;
    if (c->rbuf == NULL) {
        size_t cap;
        c->rbuf = dp_read_buf(c->rcap, &cap);
        c->rbuf_shared = true;
    }
    if (c->shutting) {
        /* Lingering reads are dropped; the unparsed bytes no longer matter. */
        buf->base = c->rbuf;
        buf->len = c->rcap;
        return;
    }
    buf->base = c->rbuf + c->rlen;
    buf->len = c->rcap - c->rlen;
}

/* After a read: the shared buffer goes back, what is left moves to the connection's own. */
static void rbuf_settle(h1_conn_t *c)
{
    if (c->rbuf == NULL)
        return;
    if (c->rbuf_shared) {
        char *shared = c->rbuf;
        c->rbuf = NULL;
        c->rbuf_shared = false;
        if (c->rlen > 0 && !c->closing) {
            c->rbuf = malloc(c->rcap);
            if (c->rbuf == NULL)
                abort();
            memcpy(c->rbuf, shared, c->rlen);
        }
    } else if (c->rlen == 0 || c->closing) {
        free(c->rbuf);
        c->rbuf = NULL;
    }
}

static void on_read_bytes(h1_conn_t *c, ssize_t nread);

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    h1_conn_t *c = st->data;
    (void)buf;
    on_read_bytes(c, nread);
    rbuf_settle(c);
}

static void on_read_bytes(h1_conn_t *c, ssize_t nread)
{
    if (c->closing)
        return;
    if (nread == UV_ENOBUFS) {
        update_reading(c);
        return;
    }
    if (c->shutting) {
        /* Lingering: drop what arrives, close at the peer's FIN. */
        if (nread < 0) {
            c->eof = true;
            update_reading(c);
            if (c->lingering)
                conn_close(c, DP_RESET_CONN_TERMINATED, c->close_why);
        }
        return;
    }
    if (nread < 0) {
        if (nread != UV_EOF) {
            conn_close(c, DP_RESET_REMOTE, DP_RESET_REMOTE);
            return;
        }
        c->eof = true;
        update_reading(c);
        process(c);
        return;
    }
    c->rlen += (size_t)nread;
    process(c);
}

static void update_reading(h1_conn_t *c)
{
    bool want =
        !c->closing && !c->eof && (c->shutting || (c->read_disabled == 0 && c->rlen < c->rcap));
    if (want && !c->reading) {
        if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
            c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop(&c->h.stream);
        c->reading = false;
    }
}

static void kick_run(h1_conn_t *c);

static void on_kick(uv_idle_t *h)
{
    uv_idle_stop(h);
    kick_run(h->data);
}

static void on_linger(uv_timer_t *t)
{
    h1_conn_t *c = t->data;
    if (!c->closing && c->lingering)
        conn_close(c, DP_RESET_CONN_TERMINATED, c->close_why);
}

static void kick_run(h1_conn_t *c)
{
    if (c->closing)
        return;
    pending_flush(c);
    if (c->shutting)
        return; /* the FIN is on its way; the linger timer or the peer's FIN ends it */
    if (c->write_failed) {
        conn_close(c, DP_RESET_REMOTE, DP_RESET_REMOTE);
        return;
    }
    if (c->active && c->s.pending_in_end) {
        c->s.pending_in_end = false;
        c->s.in_end_sent = true;
        c->s.sink->on_data(c->s.sink_ud, NULL, 0, true);
        if (c->closing)
            return;
    }
    process(c);
    check_done(c);
}

/* ---- encoding ---- */

static bool skip_out_header(dp_str_t n, bool keep_upgrade)
{
    if (DP_STR_EQ(n, "connection") || DP_STR_EQ(n, "keep-alive") ||
        DP_STR_EQ(n, "proxy-connection") || DP_STR_EQ(n, "transfer-encoding") ||
        DP_STR_EQ(n, "content-length") || DP_STR_EQ(n, "host"))
        return true;
    if (DP_STR_EQ(n, "upgrade"))
        return !keep_upgrade;
    return n.n == 0 || n.p[0] == ':';
}

static int64_t head_length(const dp_http_head_t *h)
{
    if (h->content_length >= 0)
        return h->content_length;
    const dp_header_t *f = DP_HDR_GET(&h->headers, "content-length");
    if (f == NULL || f->value.n == 0 || f->value.n > 18)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < f->value.n; i++) {
        if (f->value.p[i] < '0' || f->value.p[i] > '9')
            return -1;
        v = v * 10 + (f->value.p[i] - '0');
    }
    return v;
}

static bool header_has_token(const dp_headers_t *hs, const char *name, const char *tok)
{
    for (uint32_t i = 0; i < hs->n; i++) {
        if (dp_str_eq(hs->v[i].name, name, strlen(name))) {
            dp_str_t v = hs->v[i].value;
            size_t tl = strlen(tok);
            for (size_t k = 0; k + tl <= v.n; k++) {
                if (dp_str_ieq((dp_str_t){v.p + k, tl}, tok, tl))
                    return true;
            }
        }
    }
    return false;
}

/* Writes the head into b, in one pass: send_head sizes the buffer by a bound. */
static void write_head(wb_t *b, h1_conn_t *c, const dp_http_head_t *h, const char *framing,
                       bool keep_upgrade, const char *conn_value)
{
    char num[32];
    if (c->server) {
        put(b, "HTTP/1.1 ", 9);
        size_t n = dp_u64_fmt(num, (uint64_t)h->status);
        num[n++] = ' ';
        put(b, num, n);
        puts_(b, dp_h1_reason(h->status));
        put(b, "\r\n", 2);
    } else {
        put_str(b, h->method);
        put(b, " ", 1);
        put_str(b, h->path.n ? h->path : DP_STR("/"));
        put(b, " HTTP/1.1\r\nhost: ", 17);
        put_str(b, h->authority);
        put(b, "\r\n", 2);
    }
    for (uint32_t i = 0; i < h->headers.n; i++) {
        const dp_header_t *f = &h->headers.v[i];
        if (skip_out_header(f->name, keep_upgrade))
            continue;
        if (!c->server && DP_STR_EQ(f->name, "te") && !dp_str_ieq(f->value, "trailers", 8))
            continue;
        if (!dp_h1_field_ok(f->name, f->value))
            continue;
        put_header(b, f->name.p, f->name.n, f->value.p, f->value.n);
    }
    if (framing)
        puts_(b, framing);
    if (conn_value) {
        puts_(b, "connection: ");
        puts_(b, conn_value);
        put(b, "\r\n", 2);
    }
    put(b, "\r\n", 2);
}

static void send_head(h1_conn_t *c, const dp_http_head_t *h, const char *framing, bool keep_upgrade,
                      const char *conn_value)
{
    /* write_head only leaves fields out, so this bounds what it writes: one pass. */
    size_t bound = 64 + (framing ? strlen(framing) : 0) + (conn_value ? strlen(conn_value) : 0);
    if (c->server)
        bound += strlen(dp_h1_reason(h->status));
    else
        bound += h->method.n + h->path.n + h->authority.n;
    for (uint32_t i = 0; i < h->headers.n; i++)
        bound += h->headers.v[i].name.n + h->headers.v[i].value.n + 4;
    const h1_stream_t *s = &c->s;
    size_t room = 0;
    if (s->out_started && s->out_mode == OUT_LENGTH && s->out_remaining > 0 &&
        s->out_remaining <= HOLD_MAX)
        room = (size_t)s->out_remaining;
    wreq_t *w = wreq_new_cap(c, 0, bound + room);
    wb_t out = {w->data, 0};
    write_head(&out, c, h, framing, keep_upgrade, conn_value);
    assert(out.n <= bound);
    w->len = out.n;
    head_send(c, w);
}

static void mark_final(h1_conn_t *c)
{
    c->s.out_final = true;
    if (c->queued == 0)
        schedule(c);
}

/* "content-length: <cl>\r\n" into buf (64 bytes). */
static void framing_length(char *buf, int64_t cl)
{
    memcpy(buf, "content-length: ", 16);
    size_t n = 16 + dp_u64_fmt(buf + 16, (uint64_t)cl);
    memcpy(buf + n, "\r\n", 3);
}

static int enc_headers(dp_enc_t *e, const dp_http_head_t *h, bool end)
{
    h1_stream_t *s = (h1_stream_t *)e;
    h1_conn_t *c = s->c;
    if (!c->active || c->closing || c->shutting)
        return -EPIPE;
    if (s->out_started)
        return -EINVAL;
    char framing[64];
    framing[0] = '\0';
    s->out_remaining = -1;
    if (!c->server) {
        /* Nothing the owner gives may break the request line. */
        if (!dp_h1_visible(h->method) || (h->path.n && !dp_h1_visible(h->path)) ||
            (h->authority.n && !dp_h1_visible(h->authority)))
            return -EINVAL;
        s->req_head = DP_STR_EQ(h->method, "HEAD");
        c->head.req_was_head = s->req_head;
        s->out_started = true;
        bool upgrade = h->upgrade || (DP_HDR_GET(&h->headers, "upgrade") != NULL &&
                                      header_has_token(&h->headers, "connection", "upgrade"));
        if (upgrade) {
            s->req_upgrade = true;
            s->out_mode = OUT_RAW;
            send_head(c, h, NULL, true, "upgrade");
            return 0;
        }
        int64_t cl = head_length(h);
        if (end) {
            s->out_mode = OUT_NONE;
            if (DP_STR_EQ(h->method, "POST") || DP_STR_EQ(h->method, "PUT"))
                snprintf(framing, sizeof(framing), "content-length: 0\r\n");
        } else if (cl >= 0) {
            s->out_mode = OUT_LENGTH;
            s->out_remaining = cl;
            framing_length(framing, cl);
        } else {
            s->out_mode = OUT_CHUNKED;
            snprintf(framing, sizeof(framing), "transfer-encoding: chunked\r\n");
        }
        send_head(c, h, framing[0] ? framing : NULL, false, NULL);
        if (end)
            mark_final(c);
        return 0;
    }
    int st = h->status;
    if (st < 100 || st > 999)
        return -EINVAL;
    if (st < 200 && st != 101) {
        if (st == 100 && s->continue_sent)
            return 0;
        send_head(c, h, NULL, false, NULL);
        return 0;
    }
    s->out_started = true;
    if (st == 101) {
        if (!s->req_upgrade)
            return -EINVAL;
        s->tunnel = true;
        s->out_mode = OUT_RAW;
        c->in = IN_TUNNEL;
        send_head(c, h, NULL, true, "upgrade");
        schedule(c);
        return 0;
    }
    if (s->req_upgrade && !s->in_done) {
        /* The upgrade was declined: the request ended with its head. */
        s->in_done = true;
        s->pending_in_end = true;
        c->close_after = true;
        schedule(c);
    }
    bool keep =
        !c->close_after && !c->going_away && !header_has_token(&h->headers, "connection", "close");
    int64_t cl = head_length(h);
    bool no_body = st == 204 || st == 304 || s->req_head;
    if (no_body) {
        s->out_mode = OUT_NONE;
        if (cl >= 0 && st != 204)
            framing_length(framing, cl);
    } else if (end) {
        s->out_mode = OUT_NONE;
        snprintf(framing, sizeof(framing), "content-length: 0\r\n");
    } else if (cl >= 0) {
        s->out_mode = OUT_LENGTH;
        s->out_remaining = cl;
        framing_length(framing, cl);
    } else if (!s->http10) {
        s->out_mode = OUT_CHUNKED;
        snprintf(framing, sizeof(framing), "transfer-encoding: chunked\r\n");
    } else {
        /* HTTP/1.0 without a length: the end of the body is the close. */
        s->out_mode = OUT_LENGTH;
        keep = false;
    }
    if (!keep)
        c->close_after = true;
    const char *cv = !keep ? "close" : (s->http10 ? "keep-alive" : NULL);
    send_head(c, h, framing[0] ? framing : NULL, false, cv);
    if (end)
        mark_final(c);
    return 0;
}

static int enc_data(dp_enc_t *e, const uint8_t *p, size_t n, bool end)
{
    h1_stream_t *s = (h1_stream_t *)e;
    h1_conn_t *c = s->c;
    if (!c->active || c->closing)
        return -EPIPE;
    if (!s->out_started || s->out_final)
        return -EINVAL;
    switch (s->out_mode) {
    case OUT_NONE:
        break;
    case OUT_LENGTH:
        if (s->out_remaining >= 0) {
            /* Bytes past the announced length would be read as the next message. */
            if ((uint64_t)n > (uint64_t)s->out_remaining) {
                n = (size_t)s->out_remaining;
                c->close_after = true;
            }
            s->out_remaining -= (int64_t)n;
            if (end && s->out_remaining > 0)
                c->close_after = true; /* short body: the peer cannot find the next message */
        }
        send_bytes(c, (const char *)p, n);
        break;
    case OUT_RAW:
        send_bytes(c, (const char *)p, n);
        if (end && s->tunnel && !c->shut_issued && shut_send(c) < 0)
            c->write_failed = true;
        break;
    case OUT_CHUNKED: {
        char sz[24];
        int sn = n ? snprintf(sz, sizeof(sz), "%zx\r\n", n) : 0;
        size_t len = (size_t)sn + n + (n ? 2 : 0) + (end ? 5 : 0);
        if (len == 0)
            break;
        wreq_t *w = wreq_new(c, len);
        size_t o = 0;
        if (n) {
            memcpy(w->data, sz, (size_t)sn);
            o += (size_t)sn;
            memcpy(w->data + o, p, n);
            o += n;
            memcpy(w->data + o, "\r\n", 2);
            o += 2;
        }
        if (end)
            memcpy(w->data + o, "0\r\n\r\n", 5);
        wreq_send(c, w);
        break;
    }
    }
    if (end)
        mark_final(c);
    return 0;
}

static int enc_trailers(dp_enc_t *e, const dp_headers_t *t)
{
    h1_stream_t *s = (h1_stream_t *)e;
    h1_conn_t *c = s->c;
    if (!c->active || c->closing)
        return -EPIPE;
    if (!s->out_started || s->out_final)
        return -EINVAL;
    if (s->out_mode != OUT_CHUNKED)
        return enc_data(e, NULL, 0, true);
    wb_t b[2] = {{NULL, 0}, {NULL, 0}};
    wreq_t *w = NULL;
    for (int pass = 0; pass < 2; pass++) {
        wb_t *x = &b[pass];
        if (pass == 1) {
            w = wreq_new(c, b[0].n);
            x->p = w->data;
        }
        put(x, "0\r\n", 3);
        for (uint32_t i = 0; t && i < t->n; i++) {
            if (skip_out_header(t->v[i].name, false) ||
                !dp_h1_field_ok(t->v[i].name, t->v[i].value))
                continue;
            put_header(x, t->v[i].name.p, t->v[i].name.n, t->v[i].value.p, t->v[i].value.n);
        }
        put(x, "\r\n", 2);
    }
    wreq_send(c, w);
    mark_final(c);
    return 0;
}

static void quiet_headers(void *ud, dp_http_head_t *h, bool end)
{
}

static void quiet_data(void *ud, const uint8_t *p, size_t n, bool end)
{
}

static void quiet_trailers(void *ud, dp_headers_t *t)
{
}

static void quiet_event(void *ud)
{
}

static void quiet_done(void *ud, dp_reset_reason_t why)
{
}

/* Where a client stream's events go once its owner let go of a complete exchange. */
static const dp_sink_ops_t quiet_sink = {quiet_headers, quiet_data, quiet_trailers, quiet_event,
                                         quiet_done};

static void enc_reset(dp_enc_t *e, dp_reset_reason_t why)
{
    h1_stream_t *s = (h1_stream_t *)e;
    h1_conn_t *c = s->c;
    (void)why;
    if (!c->active)
        return;
    if (!c->server && s->in_done && s->in_end_sent && !s->tunnel) {
        /* The whole response is in: an owner letting go now (its own stream ended while this
         * one was delivering its last bytes) is no reset, and the connection stays reusable.
         * The completion goes nowhere. */
        s->sink = &quiet_sink;
        s->sink_ud = NULL;
        schedule(c);
        return;
    }
    c->active = false; /* no on_done for a stream its owner reset */
    conn_close(c, DP_RESET_LOCAL, DP_RESET_LOCAL);
}

static void enc_read_disable(dp_enc_t *e, bool disable)
{
    h1_stream_t *s = (h1_stream_t *)e;
    h1_conn_t *c = s->c;
    if (c->closing)
        return;
    if (disable) {
        c->read_disabled++;
        update_reading(c);
    } else if (c->read_disabled > 0 && --c->read_disabled == 0) {
        schedule(c);
    }
}

static size_t enc_buffered(const dp_enc_t *e)
{
    const h1_stream_t *s = (const h1_stream_t *)e;
    return s->c->queued;
}

static const dp_enc_ops_t enc_ops = {
    .headers = enc_headers,
    .data = enc_data,
    .trailers = enc_trailers,
    .reset = enc_reset,
    .read_disable = enc_read_disable,
    .buffered = enc_buffered,
};

static void stream_init(h1_conn_t *c, const dp_sink_ops_t *ops, void *ud, dp_pool_t *pool)
{
    h1_stream_t *s = &c->s;
    memset(s, 0, sizeof(*s));
    s->enc.ops = &enc_ops;
    s->c = c;
    s->sink = ops;
    s->sink_ud = ud;
    s->pool = pool;
    c->active = true;
    /* A new stream starts with reading enabled; read_disable counts belong to a stream. */
    c->read_disabled = 0;
}

/* ---- connection ops ---- */

static bool conn_can_take(const dp_codec_conn_t *cc)
{
    const h1_conn_t *c = (const h1_conn_t *)cc;
    return !c->server && !c->active && !c->closing && !c->shutting && !c->close_after &&
           !c->going_away && !c->eof && c->in == IN_HEAD;
}

static dp_enc_t *conn_new_stream(dp_codec_conn_t *cc, const dp_sink_ops_t *ops, void *ud,
                                 dp_pool_t *pool)
{
    h1_conn_t *c = (h1_conn_t *)cc;
    if (!conn_can_take(cc) || ops == NULL || pool == NULL)
        return NULL;
    stream_init(c, ops, ud, pool);
    c->in = IN_HEAD;
    dp_h1_head_init(&c->head, false, &c->lim);
    update_reading(c);
    return &c->s.enc;
}

static uint32_t conn_active(const dp_codec_conn_t *cc)
{
    return ((const h1_conn_t *)cc)->active ? 1 : 0;
}

static void conn_go_away(dp_codec_conn_t *cc)
{
    h1_conn_t *c = (h1_conn_t *)cc;
    c->going_away = true;
    if (!c->active) {
        c->close_why = DP_RESET_NONE;
        conn_shutdown(c);
    }
}

static void conn_close_op(dp_codec_conn_t *cc)
{
    conn_close((h1_conn_t *)cc, DP_RESET_CONN_TERMINATED, DP_RESET_LOCAL);
}

static void conn_refuse_head(dp_codec_conn_t *cc, int status, const char *body)
{
    h1_conn_t *c = (h1_conn_t *)cc;
    if (!c->server || c->active || c->closing || c->shutting)
        return;
    c->head_begun = false;
    local_reply_body(c, status, body);
}

static const dp_codec_conn_ops_t conn_ops = {
    .new_stream = conn_new_stream,
    .can_take_stream = conn_can_take,
    .active_streams = conn_active,
    .go_away = conn_go_away,
    .close = conn_close_op,
    .refuse_head = conn_refuse_head,
};

static void free_failed(uv_handle_t *h)
{
    h1_conn_t *c = h->data;
    wreq_free(c->pending);
    free(c->rbuf);
    free(c);
}

dp_codec_conn_t *dp_h1_conn_new(uv_loop_t *loop, int fd, bool server,
                                const dp_http_limits_t *limits, const dp_codec_cb_t *cb, void *ud)
{
    h1_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->base.ops = &conn_ops;
    c->loop = loop;
    c->server = server;
    c->lim = limits ? *limits : dp_http_limits_default();
    if (c->lim.buffer_limit == 0)
        c->lim.buffer_limit = 1024 * 1024;
    c->cb = *cb;
    c->ud = ud;
    c->rcap = (size_t)c->lim.max_header_bytes + 8192;
    if (c->rcap < 65536)
        c->rcap = 65536;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    bool unix_sock = getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_UNIX;
    int rc = unix_sock ? uv_pipe_init(loop, &c->h.pipe, 0) : uv_tcp_init(loop, &c->h.tcp);
    bool opened = false; /* the handle was initialised and must be closed to be freed */
    if (rc == 0) {
        opened = true;
        c->h.handle.data = c;
        rc = unix_sock ? uv_pipe_open(&c->h.pipe, fd) : uv_tcp_open(&c->h.tcp, fd);
        if (rc < 0)
            uv_close(&c->h.handle, free_failed);
        else if (!unix_sock)
            uv_tcp_nodelay(&c->h.tcp, 1);
    }
    if (rc < 0) {
        close(fd);
        if (!opened) {
            wreq_free(c->pending);
            free(c->rbuf);
            free(c);
        }
        return NULL;
    }
    c->h.handle.data = c;
    uv_idle_init(loop, &c->kick);
    c->kick.data = c;
    uv_timer_init(loop, &c->linger);
    c->linger.data = c;
    dp_turn_work_init(loop, &c->flusher, on_flush, c);
    c->handles_open = 5;
    c->in = IN_HEAD;
    dp_h1_head_init(&c->head, server, &c->lim);
    update_reading(c);
    return &c->base;
}
