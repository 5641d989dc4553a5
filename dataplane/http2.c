/* The HTTP/2 codec (dataplane/http.h: dp_h2_conn_new), server and client, on nghttp2.
 *
 * The code is glue between a libuv stream and an nghttp2 session: socket reads go to
 * nghttp2_session_mem_recv, and nghttp2_session_send serializes frames through send_cb and
 * send_data_cb into a connection write buffer, once per loop turn (the flusher handles),
 * which dp_try_send puts on the socket (a rest goes with one uv_write). DATA
 * is sent with NGHTTP2_DATA_FLAG_NO_COPY, so body bytes are copied once: from the owner into
 * the stream's output queue, then from that queue straight into the write buffer behind the
 * frame header.
 *
 * Re-entrancy. nghttp2 calls us from inside mem_recv and send, and the owner calls back into
 * the codec from the sink callbacks. Nothing that would re-enter nghttp2's recv or send, free
 * a stream or tear the session down runs while we are inside a callback: such work is marked
 * due (conn->due, stream->due_next) and done by conn_after() when the outermost entry point
 * (socket read, write completion, an owner call) unwinds. on_done, on_drained, on_ready and
 * the delivery of data held back by read_disable all run from there. */
#include "dataplane/http.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dataplane/conn.h"
#include "dataplane/log.h"

/* Output and held-back input are kept in chunks: a queue starts with a small one (most
 * bodies and gRPC messages fit, and a hundred streams in flight then hold 100 small chunks,
 * not 1.6 MiB), and grows in chunks of H2_CHUNK_SIZE. Chunks and write buffers are recycled
 * per thread (H2_CHUNK_CACHE of each chunk size, H2_WBUF_CACHE): a connection takes them
 * while it has something to send and gives them back as it goes idle, so a quiet connection
 * holds none and a busy worker does not malloc, free and re-fault them on every write. */
#define H2_CHUNK_SIZE   16384
#define H2_SMALL_CHUNK  1024
#define H2_CHUNK_CACHE  16
#define H2_WBUF_CACHE   4
#define H2_STREAM_CACHE 8
#define H2_READ_SIZE    32768
/* A write buffer stops taking frames once it holds this many bytes; it has room beyond that
 * for one complete DATA frame (NO_COPY frames cannot be split). While one buffer is on the
 * socket the other fills, so at most about 2 * H2_WBUF_CAP is in flight per connection:
 * beyond that nghttp2 keeps frames queued, its flood limits apply, and the streams' own
 * queues grow until their owners see buffered() over the limit. */
#define H2_WBUF_HIGH 32768
#define H2_WBUF_CAP  (H2_WBUF_HIGH + 16384 + 9 + 256 + 1)
/* Outgoing SETTINGS ACK / PING ACK / RST_STREAM frames nghttp2 may hold for a peer that does
 * not read (Envoy's max_outbound_control_frames is 1000). */
#define H2_MAX_OUTBOUND_ACK 1000
/* SETTINGS entries accepted in one frame (nghttp2's default). */
#define H2_MAX_SETTINGS 32
/* CONTINUATION frames after one HEADERS (nghttp2's default; CVE-2024-27316 class). */
#define H2_MAX_CONTINUATIONS 8
/* RST_STREAM from a client: a token bucket of 1000, refilled at 33 per second (nghttp2's
 * defaults; the "rapid reset" CVE-2023-44487 mitigation). */
#define H2_RST_BURST 1000
#define H2_RST_RATE  33
/* The HPACK dynamic table we use for what we send (the peer may ask for less). */
#define H2_DEFLATE_TABLE 4096

typedef struct h2_chunk {
    struct h2_chunk *next;
    uint32_t off, len; /* unread bytes are data[off..len) */
    uint32_t cap;      /* H2_SMALL_CHUNK or H2_CHUNK_SIZE */
    uint8_t data[];
} h2_chunk_t;

typedef struct h2_queue {
    h2_chunk_t *head, *tail;
    size_t bytes;
} h2_queue_t;

typedef struct h2_conn h2_conn_t;

typedef struct h2_stream {
    dp_enc_t enc;
    h2_conn_t *c;
    struct h2_stream *prev, *next; /* conn->streams */
    struct h2_stream *due_next;    /* conn->due list while on_due */
    int32_t id;                    /* 0: a client stream whose request is not submitted */
    const dp_sink_ops_t *sink;
    void *ud;
    dp_pool_t *pool;

    /* Decoding. */
    dp_http_head_t *head;   /* being collected */
    dp_headers_t *trailers; /* being collected, or held until the data before them is out */
    dp_str_t host;          /* a host header, for a request without :authority */
    uint32_t hdr_bytes, hdr_count;
    h2_queue_t in;     /* DATA received while read-disabled, not delivered yet */
    size_t unconsumed; /* delivered, window not returned yet */
    int disabled;      /* read_disable count */

    /* Encoding. */
    h2_queue_t out;
    nghttp2_nv *out_trailers; /* in pool, sent after the queue drains */
    size_t n_out_trailers;

    dp_reset_reason_t done_reason;

    bool on_due;
    bool in_trailers; /* the HEADERS being collected are trailers */
    bool final_head;  /* a final head arrived (client: status >= 200; server: the request) */
    bool overflow;    /* over max_header_bytes / max_headers: reset */
    bool in_end;      /* END_STREAM arrived but is held behind data in `in` */
    bool in_trailers_held;
    bool remote_end;   /* END_STREAM seen from the peer (nghttp2's view) */
    bool rst_recv;     /* the peer sent RST_STREAM */
    bool send_failed;  /* nghttp2 could not send our HEADERS/DATA */
    bool head_sent;    /* final head submitted */
    bool has_provider; /* a data provider is attached */
    bool out_eof;      /* the owner ended the body (data end_stream or trailers) */
    bool deferred;     /* the data provider returned NGHTTP2_ERR_DEFERRED */
    bool local_end;    /* END_STREAM submitted */
    bool cut_pending;  /* server: the response ended first; its last frame is not sent yet */
    bool cut_request;  /* server: RST_STREAM(NO_ERROR) after a response that ended first */
    bool drain_armed;  /* buffered() reached buffer_limit: on_drained below half */
    bool drain_due;
    bool resume_due; /* read enabled again: deliver what is held */
    bool done_due;   /* on_done(done_reason) to be called */
    bool h2_closed;  /* nghttp2 has closed the stream (on_stream_close) */
    bool done;       /* on_done was called */
    bool detached;   /* the owner reset it: no more sink callbacks */
} h2_stream_t;

typedef struct h2_wbuf {
    uint8_t *p;
    size_t len;
} h2_wbuf_t;

struct h2_conn {
    dp_codec_conn_t base;
    uv_loop_t *loop;
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } io;
    uv_write_t wreq;
    nghttp2_session *session;
    bool server;
    dp_http_limits_t limits;
    dp_codec_cb_t cb;
    void *ud;

    h2_stream_t *streams; /* every stream not freed */
    /* The stream whose header block is being decoded (its fields come one callback each). */
    int32_t hdr_id;
    h2_stream_t *hdr_s;
    h2_stream_t *due, *due_tail;
    uint32_t active; /* streams the owner holds (not done, not reset) */

    h2_wbuf_t wfill, wsend; /* frames being collected; the buffer on the socket */
    bool writing;
    /* Frames are written once per loop turn: work that makes output starts the flusher, and
     * it writes what all of them produced together. */
    dp_turn_work_t flusher;
    bool flush_now; /* conn_after runs from the flusher: write now */
    uint32_t cut_pending; /* streams with cut_pending set */
    int handles_open;

    h2_stream_t *free_streams;
    unsigned n_free_streams;

    unsigned depth; /* nesting of entry points; conn_after runs at 0 */
    bool closing;   /* conn_close ran: the handle is closing */
    bool close_req; /* close once unwound, with close_why */
    dp_reset_reason_t close_why;
    dp_reset_reason_t term_why; /* why nghttp2 ended the session, for on_close */
    bool goaway_sent, goaway_recv;
    bool ready_due; /* client: a stream ended, on_ready if there is room */
};

static const dp_enc_ops_t h2_enc_ops;
static const dp_codec_conn_ops_t h2_conn_ops;
static void conn_after(h2_conn_t *c);
static void conn_after_flush(h2_conn_t *c); /* conn_after, writing frames now */

static const uint8_t empty_body[1];

/* ---- chunks and queues ---- */

static _Thread_local dp_block_cache_t small_chunks =
    DP_BLOCK_CACHE(sizeof(h2_chunk_t) + H2_SMALL_CHUNK, H2_CHUNK_CACHE);
static _Thread_local dp_block_cache_t big_chunks =
    DP_BLOCK_CACHE(sizeof(h2_chunk_t) + H2_CHUNK_SIZE, H2_CHUNK_CACHE);
static _Thread_local dp_block_cache_t wbufs = DP_BLOCK_CACHE(H2_WBUF_CAP, H2_WBUF_CACHE);

static h2_chunk_t *chunk_get(bool big)
{
    h2_chunk_t *k = dp_block_get(big ? &big_chunks : &small_chunks);
    k->next = NULL;
    k->off = k->len = 0;
    k->cap = big ? H2_CHUNK_SIZE : H2_SMALL_CHUNK;
    return k;
}

static void chunk_put(h2_chunk_t *k)
{
    dp_block_put(k->cap == H2_CHUNK_SIZE ? &big_chunks : &small_chunks, k);
}

/* ---- nghttp2's allocations ----
 *
 * nghttp2 allocates and frees small objects for every stream and frame (the stream, its
 * header fields' buffers, outbound items); a hundred streams in flight free them in bursts
 * longer than glibc's per-thread cache takes (seven per size), so a third of them went
 * through malloc's slow path (callgrind: four _int_malloc calls per request). Blocks up to
 * 1 KiB come from per-thread caches by size class instead; each block carries a 16-byte
 * header with its class and size, for free and realloc. */
#define H2_MEM_CLASSES 5
#define H2_MEM_CACHE   128

typedef struct h2_mem_hdr {
    uint32_t cls; /* H2_MEM_CLASSES: plain malloc */
    uint32_t pad;
    size_t size;
} h2_mem_hdr_t;

static _Thread_local dp_block_cache_t mem_classes[H2_MEM_CLASSES] = {
    DP_BLOCK_CACHE(sizeof(h2_mem_hdr_t) + 64, H2_MEM_CACHE),
    DP_BLOCK_CACHE(sizeof(h2_mem_hdr_t) + 128, H2_MEM_CACHE),
    DP_BLOCK_CACHE(sizeof(h2_mem_hdr_t) + 256, H2_MEM_CACHE),
    DP_BLOCK_CACHE(sizeof(h2_mem_hdr_t) + 512, H2_MEM_CACHE),
    DP_BLOCK_CACHE(sizeof(h2_mem_hdr_t) + 1024, H2_MEM_CACHE),
};

static void *h2_malloc(size_t size, void *ud)
{
    (void)ud;
    uint32_t k = 0;
    while (k < H2_MEM_CLASSES && size > (64u << k))
        k++;
    h2_mem_hdr_t *h;
    if (k < H2_MEM_CLASSES) {
        h = dp_block_get(&mem_classes[k]);
    } else {
        if (size > SIZE_MAX - sizeof(*h))
            return NULL;
        h = malloc(sizeof(*h) + size);
        if (h == NULL)
            return NULL;
    }
    h->cls = k;
    h->size = size;
    return h + 1;
}

static void h2_free(void *p, void *ud)
{
    (void)ud;
    if (p == NULL)
        return;
    h2_mem_hdr_t *h = (h2_mem_hdr_t *)p - 1;
    if (h->cls < H2_MEM_CLASSES)
        dp_block_put(&mem_classes[h->cls], h);
    else
        free(h);
}

static void *h2_calloc(size_t n, size_t size, void *ud)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    void *p = h2_malloc(n * size, ud);
    if (p)
        memset(p, 0, n * size);
    return p;
}

static void *h2_realloc(void *p, size_t size, void *ud)
{
    if (p == NULL)
        return h2_malloc(size, ud);
    h2_mem_hdr_t *h = (h2_mem_hdr_t *)p - 1;
    if (h->cls < H2_MEM_CLASSES && size <= (64u << h->cls)) {
        h->size = size;
        return p;
    }
    void *q = h2_malloc(size, ud);
    if (q == NULL)
        return NULL;
    memcpy(q, p, h->size < size ? h->size : size);
    h2_free(p, ud);
    return q;
}

static nghttp2_mem h2_mem = {
    .malloc = h2_malloc, .free = h2_free, .calloc = h2_calloc, .realloc = h2_realloc};

void dp_h2_thread_done(void)
{
    dp_block_drain(&small_chunks);
    dp_block_drain(&big_chunks);
    dp_block_drain(&wbufs);
    for (int k = 0; k < H2_MEM_CLASSES; k++)
        dp_block_drain(&mem_classes[k]);
}

static void queue_append(h2_queue_t *q, const uint8_t *p, size_t n)
{
    while (n > 0) {
        h2_chunk_t *k = q->tail;
        if (k == NULL || k->len == k->cap) {
            k = chunk_get(q->head != NULL || n > H2_SMALL_CHUNK);
            if (q->tail)
                q->tail->next = k;
            else
                q->head = k;
            q->tail = k;
        }
        size_t room = k->cap - k->len;
        size_t m = n < room ? n : room;
        memcpy(k->data + k->len, p, m);
        k->len += (uint32_t)m;
        q->bytes += m;
        p += m;
        n -= m;
    }
}

/* Removes the first chunk (the caller puts it back with chunk_put). */
static h2_chunk_t *queue_shift(h2_queue_t *q)
{
    h2_chunk_t *k = q->head;
    if (k == NULL)
        return NULL;
    q->head = k->next;
    if (q->head == NULL)
        q->tail = NULL;
    q->bytes -= k->len - k->off;
    k->next = NULL;
    return k;
}

/* Moves n bytes (n <= q->bytes) from the front of q to dst. */
static void queue_pop(h2_queue_t *q, uint8_t *dst, size_t n)
{
    while (n > 0) {
        h2_chunk_t *k = q->head;
        size_t avail = k->len - k->off;
        size_t m = n < avail ? n : avail;
        memcpy(dst, k->data + k->off, m);
        k->off += (uint32_t)m;
        q->bytes -= m;
        dst += m;
        n -= m;
        if (k->off == k->len) {
            q->head = k->next;
            if (q->head == NULL)
                q->tail = NULL;
            chunk_put(k);
        }
    }
}

static void queue_clear(h2_queue_t *q)
{
    h2_chunk_t *k;
    while ((k = queue_shift(q)) != NULL)
        chunk_put(k);
}

/* ---- streams ---- */

static h2_stream_t *stream_new(h2_conn_t *c, const dp_sink_ops_t *sink, void *ud, dp_pool_t *pool)
{
    h2_stream_t *s = c->free_streams;
    if (s) {
        c->free_streams = s->next;
        c->n_free_streams--;
    } else {
        s = malloc(sizeof(*s));
        if (s == NULL)
            abort();
    }
    memset(s, 0, sizeof(*s));
    s->enc.ops = &h2_enc_ops;
    s->c = c;
    s->sink = sink;
    s->ud = ud;
    s->pool = pool;
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    c->active++;
    return s;
}

/* The owner ended the stream's outbound side. A server stream whose request has not ended
 * is to be cut once its last frame is sent (on_frame_send_cb); c->cut_pending counts those
 * streams, so that the frames of the others need no stream lookup. */
static void mark_local_end(h2_conn_t *c, h2_stream_t *s)
{
    s->local_end = true;
    if (c->server && !s->remote_end && !s->cut_pending) {
        s->cut_pending = true;
        c->cut_pending++;
    }
}

static void stream_release(h2_conn_t *c, h2_stream_t *s)
{
    if (s->cut_pending) {
        s->cut_pending = false;
        c->cut_pending--;
    }
    if (c->hdr_s == s) {
        c->hdr_id = 0;
        c->hdr_s = NULL;
    }
    queue_clear(&s->in);
    queue_clear(&s->out);
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (c->n_free_streams >= H2_STREAM_CACHE) {
        free(s);
        return;
    }
    s->next = c->free_streams;
    c->free_streams = s;
    c->n_free_streams++;
}

static void stream_mark_due(h2_stream_t *s)
{
    h2_conn_t *c = s->c;
    if (s->on_due)
        return;
    s->on_due = true;
    s->due_next = NULL;
    if (c->due_tail)
        c->due_tail->due_next = s;
    else
        c->due = s;
    c->due_tail = s;
}

/* The owner no longer holds the stream (done or reset). */
static void stream_leave_owner(h2_stream_t *s)
{
    h2_conn_t *c = s->c;
    c->active--;
    if (!c->server)
        c->ready_due = true;
}

/* Returns window for bytes the owner has taken. */
static void stream_consume(h2_stream_t *s, size_t n)
{
    if (n == 0 || s->id <= 0 || s->c->closing)
        return;
    /* Also for a stream nghttp2 already closed: the connection window still counts them. */
    nghttp2_session_consume(s->c->session, s->id, n);
}

/* Hands every byte the stream still holds to the window: the owner will never take them. */
static void stream_drop_input(h2_stream_t *s)
{
    size_t n = s->unconsumed + s->in.bytes;
    queue_clear(&s->in);
    s->unconsumed = 0;
    stream_consume(s, n);
}

/* Whether every inbound event the peer sent has reached the owner. */
static bool stream_input_delivered(const h2_stream_t *s)
{
    return s->in.head == NULL && !s->in_end && !s->in_trailers_held;
}

/* Delivers data held while the stream was read-disabled, then the end of stream or the
 * trailers behind it. Runs from conn_after only. */
static void stream_deliver_held(h2_stream_t *s)
{
    unsigned guard = 0;
    while (s->disabled == 0 && !s->detached && s->in.head != NULL && guard++ < 1u << 20) {
        h2_chunk_t *k = queue_shift(&s->in);
        size_t n = k->len - k->off;
        bool last = s->in.head == NULL && s->in_end;
        if (last)
            s->in_end = false;
        s->unconsumed += n;
        s->sink->on_data(s->ud, k->data + k->off, n, last);
        chunk_put(k);
    }
    if (s->disabled == 0 && !s->detached && s->in.head == NULL) {
        if (s->in_end) {
            s->in_end = false;
            s->sink->on_data(s->ud, empty_body, 0, true);
        } else if (s->in_trailers_held && !s->detached) {
            s->in_trailers_held = false;
            s->sink->on_trailers(s->ud, s->trailers);
        }
    }
    if (s->disabled == 0 && !s->detached && s->unconsumed) {
        size_t n = s->unconsumed;
        s->unconsumed = 0;
        stream_consume(s, n);
    }
}

/* ---- writing ---- */

static void write_cb(uv_write_t *req, int status);

/* What the socket takes at once goes with dp_try_send (no write request, no poll change); a
 * rest moves to wsend for a uv_write while wfill collects the next frames. */
static void conn_start_write(h2_conn_t *c)
{
    if (c->writing || c->wfill.len == 0 || c->closing)
        return;
    int r = dp_try_send(&c->io.stream, (const char *)c->wfill.p, c->wfill.len);
    size_t done = r > 0 ? (size_t)r : 0;
    if (done == c->wfill.len) {
        c->wfill.len = 0;
        return;
    }
    if (c->wsend.p == NULL)
        c->wsend.p = dp_block_get(&wbufs);
    h2_wbuf_t t = c->wsend;
    c->wsend = c->wfill;
    c->wfill = t;
    c->wfill.len = 0;
    uv_buf_t b = uv_buf_init((char *)c->wsend.p + done, (unsigned)(c->wsend.len - done));
    int rv = uv_write(&c->wreq, &c->io.stream, &b, 1, write_cb);
    if (rv < 0) {
        c->close_req = true;
        c->close_why = DP_RESET_CONN_TERMINATED;
        return;
    }
    c->writing = true;
}

/* Pulls frames out of nghttp2 while the write buffers have room. */
static void conn_flush(h2_conn_t *c)
{
    if (c->closing || c->close_req)
        return;
    for (int round = 0; round < 4; round++) {
        int rv = nghttp2_session_send(c->session);
        if (rv != 0) {
            DP_LOG(DP_LOG_HTTP2, DP_LOG_DEBUG, "h2 send: %s", nghttp2_strerror(rv));
            c->close_req = true;
            c->close_why = DP_RESET_PROTOCOL;
            return;
        }
        if (c->writing || c->wfill.len == 0)
            break;
        conn_start_write(c);
        if (c->writing)
            break;
    }
}

/* The write buffers exist only while there is something to write. */
static void conn_wbufs(h2_conn_t *c)
{
    if (c->wfill.p == NULL)
        c->wfill.p = dp_block_get(&wbufs);
}

static ssize_t send_cb(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                       void *user_data)
{
    (void)session;
    (void)flags;
    h2_conn_t *c = user_data;
    conn_wbufs(c);
    if (c->wfill.len >= H2_WBUF_HIGH)
        return NGHTTP2_ERR_WOULDBLOCK;
    size_t room = H2_WBUF_CAP - c->wfill.len;
    size_t n = length < room ? length : room;
    memcpy(c->wfill.p + c->wfill.len, data, n);
    c->wfill.len += n;
    return (ssize_t)n;
}

static int send_data_cb(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *source, void *user_data)
{
    (void)session;
    h2_conn_t *c = user_data;
    h2_stream_t *s = source->ptr;
    size_t pad = frame->data.padlen;
    size_t need = 9 + length + pad;
    conn_wbufs(c);
    if (c->wfill.len >= H2_WBUF_HIGH || H2_WBUF_CAP - c->wfill.len < need)
        return NGHTTP2_ERR_WOULDBLOCK;
    uint8_t *w = c->wfill.p + c->wfill.len;
    memcpy(w, framehd, 9);
    w += 9;
    if (pad > 0)
        *w++ = (uint8_t)(pad - 1);
    if (length > s->out.bytes)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* cannot happen: read_cb sized it */
    queue_pop(&s->out, w, length);
    w += length;
    if (pad > 1) {
        memset(w, 0, pad - 1);
        w += pad - 1;
    }
    c->wfill.len = (size_t)(w - c->wfill.p);
    if (s->drain_armed && s->out.bytes < c->limits.buffer_limit / 2) {
        s->drain_armed = false;
        s->drain_due = true;
        stream_mark_due(s);
    }
    return 0;
}

static ssize_t data_read_cb(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data)
{
    (void)buf;
    (void)user_data;
    h2_stream_t *s = source->ptr;
    if (s->detached) {
        /* A RST_STREAM is on its way; nothing more goes out. */
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t avail = s->out.bytes;
    if (avail == 0 && !s->out_eof) {
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = avail < length ? avail : length;
    if (n > 0)
        *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == avail && s->out_eof) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->out_trailers) {
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            int rv = nghttp2_submit_trailer(session, stream_id, s->out_trailers, s->n_out_trailers);
            if (rv != 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            s->out_trailers = NULL;
        }
    }
    return (ssize_t)n;
}

static void conn_close_now(h2_conn_t *c, dp_reset_reason_t why);

static void write_cb(uv_write_t *req, int status)
{
    h2_conn_t *c = req->data;
    c->writing = false;
    c->wsend.len = 0;
    if (c->closing)
        return;
    c->depth++;
    if (status < 0) {
        c->close_req = true;
        c->close_why = DP_RESET_CONN_TERMINATED;
    } else {
        conn_start_write(c);
    }
    c->depth--;
    conn_after_flush(c); /* the socket had been full: what waited goes now */
}

/* ---- decoding ---- */

static h2_stream_t *stream_of(nghttp2_session *session, int32_t id)
{
    return nghttp2_session_get_stream_user_data(session, id);
}

/* The stream of a HEADERS frame's fields and of its end: the one found when the block began,
 * without a lookup. */
static h2_stream_t *headers_stream(h2_conn_t *c, nghttp2_session *session, int32_t id)
{
    return id == c->hdr_id ? c->hdr_s : stream_of(session, id);
}

static int on_begin_headers_cb(nghttp2_session *session, const nghttp2_frame *frame,
                               void *user_data)
{
    h2_conn_t *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    int32_t id = frame->hd.stream_id;
    h2_stream_t *s = stream_of(session, id);
    c->hdr_id = 0;
    if (c->server && s == NULL && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        if (c->closing || c->close_req || c->cb.on_stream == NULL) {
            nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
            return 0;
        }
        s = stream_new(c, NULL, NULL, NULL);
        s->id = id;
        void *sud = NULL;
        dp_pool_t *pool = NULL;
        const dp_sink_ops_t *sink = c->cb.on_stream(c->ud, &s->enc, &sud, &pool);
        if (sink == NULL || pool == NULL) {
            /* Refused: nobody holds the stream; nghttp2 never learns of s. */
            c->active--;
            stream_release(c, s);
            nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
            return 0;
        }
        s->sink = sink;
        s->ud = sud;
        s->pool = pool;
        nghttp2_session_set_stream_user_data(session, id, s);
    }
    c->hdr_id = id;
    c->hdr_s = s;
    if (s == NULL || s->detached)
        return 0;
    s->hdr_bytes = s->hdr_count = 0;
    if (s->final_head) {
        s->in_trailers = true;
        s->trailers = dp_pool_calloc(s->pool, sizeof(*s->trailers));
    } else {
        s->in_trailers = false;
        s->head = dp_pool_calloc(s->pool, sizeof(*s->head));
        s->head->version = DP_HTTP_2;
        s->head->content_length = -1;
        s->host = DP_STR_NULL;
    }
    return 0;
}

static dp_str_t pool_str(dp_pool_t *p, const uint8_t *v, size_t n)
{
    return (dp_str_t){dp_pool_strndup(p, (const char *)v, n), n};
}

static int on_header_cb(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *user_data)
{
    (void)flags;
    h2_conn_t *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    h2_stream_t *s = headers_stream(c, session, frame->hd.stream_id);
    if (s == NULL || s->detached || s->overflow)
        return 0;
    s->hdr_bytes += (uint32_t)(namelen + valuelen);
    s->hdr_count++;
    if (s->hdr_bytes > c->limits.max_header_bytes || s->hdr_count > c->limits.max_headers) {
        /* Envoy resets the stream (codec_impl.cc onHeader); nghttp2 sends RST_STREAM. */
        s->overflow = true;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (s->in_trailers) {
        dp_headers_add(s->trailers, s->pool, (const char *)name, namelen, (const char *)value,
                       valuelen);
        return 0;
    }
    dp_http_head_t *h = s->head;
    if (namelen > 0 && name[0] == ':') {
        /* nghttp2's HTTP messaging checks has already validated the pseudo-headers. */
        dp_str_t n = {(const char *)name, namelen};
        if (DP_STR_EQ(n, ":method"))
            h->method = pool_str(s->pool, value, valuelen);
        else if (DP_STR_EQ(n, ":scheme"))
            h->scheme = pool_str(s->pool, value, valuelen);
        else if (DP_STR_EQ(n, ":authority"))
            h->authority = pool_str(s->pool, value, valuelen);
        else if (DP_STR_EQ(n, ":path"))
            h->path = pool_str(s->pool, value, valuelen);
        else if (DP_STR_EQ(n, ":protocol"))
            h->protocol = pool_str(s->pool, value, valuelen);
        else if (DP_STR_EQ(n, ":status")) {
            int st = 0;
            for (size_t i = 0; i < valuelen && i < 3; i++)
                st = st * 10 + (value[i] - '0');
            h->status = st;
        }
        return 0;
    }
    dp_str_t n = {(const char *)name, namelen};
    if (c->server && DP_STR_EQ(n, "host")) {
        s->host = pool_str(s->pool, value, valuelen);
        return 0;
    }
    if (DP_STR_EQ(n, "content-length")) {
        int64_t v = 0;
        bool ok = valuelen > 0 && valuelen <= 18;
        for (size_t i = 0; ok && i < valuelen; i++) {
            if (value[i] < '0' || value[i] > '9')
                ok = false;
            else
                v = v * 10 + (value[i] - '0');
        }
        if (ok)
            h->content_length = v;
    }
    dp_headers_add(&h->headers, s->pool, (const char *)name, namelen, (const char *)value,
                   valuelen);
    return 0;
}

static void stream_headers_done(h2_conn_t *c, h2_stream_t *s, bool end)
{
    if (s->in_trailers) {
        /* nghttp2 only accepts trailers with END_STREAM. */
        if (s->disabled > 0 || !stream_input_delivered(s)) {
            s->in_trailers_held = true;
            return;
        }
        s->sink->on_trailers(s->ud, s->trailers);
        return;
    }
    dp_http_head_t *h = s->head;
    if (c->server) {
        if (h->authority.p == NULL && s->host.p != NULL)
            h->authority = s->host;
        s->final_head = true;
    } else if (h->status >= 200) {
        s->final_head = true;
    }
    s->sink->on_headers(s->ud, h, end);
}

static int on_frame_recv_cb(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    h2_conn_t *c = user_data;
    int32_t id = frame->hd.stream_id;
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    h2_stream_t *s;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        s = headers_stream(c, session, id);
        if (s == NULL)
            return 0;
        if (end)
            s->remote_end = true;
        if (s->detached || s->overflow)
            return 0;
        stream_headers_done(c, s, end);
        break;
    case NGHTTP2_DATA:
        s = stream_of(session, id);
        if (s == NULL || !end)
            return 0;
        s->remote_end = true;
        if (s->detached)
            return 0;
        if (s->disabled > 0 || s->in.head != NULL)
            s->in_end = true;
        else
            s->sink->on_data(s->ud, empty_body, 0, true);
        break;
    case NGHTTP2_RST_STREAM:
        s = stream_of(session, id);
        if (s)
            s->rst_recv = true;
        break;
    case NGHTTP2_GOAWAY:
        c->goaway_recv = true;
        if (frame->goaway.error_code != NGHTTP2_NO_ERROR && c->term_why == DP_RESET_NONE)
            c->term_why = DP_RESET_REMOTE;
        break;
    case NGHTTP2_SETTINGS:
        if (!c->server && !(frame->hd.flags & NGHTTP2_FLAG_ACK))
            c->ready_due = true;
        break;
    default:
        break;
    }
    return 0;
}

static int on_data_chunk_cb(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                            const uint8_t *data, size_t len, void *user_data)
{
    (void)flags;
    (void)user_data;
    h2_stream_t *s = stream_of(session, stream_id);
    if (s == NULL || s->detached) {
        nghttp2_session_consume(session, stream_id, len);
        return 0;
    }
    if (s->disabled > 0 || s->in.head != NULL) {
        /* Held: bounded by the stream window, which stays unreturned meanwhile. */
        queue_append(&s->in, data, len);
        return 0;
    }
    s->unconsumed += len;
    s->sink->on_data(s->ud, data, len, false);
    if (!s->detached && s->disabled == 0 && s->unconsumed) {
        size_t n = s->unconsumed;
        s->unconsumed = 0;
        nghttp2_session_consume(session, stream_id, n);
    }
    return 0;
}

static int on_stream_close_cb(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                              void *user_data)
{
    (void)session;
    (void)user_data;
    h2_stream_t *s = stream_of(session, stream_id);
    if (s == NULL)
        return 0;
    s->h2_closed = true;
    if (!s->detached && !s->done_due) {
        dp_reset_reason_t why;
        if (s->overflow)
            why = DP_RESET_OVERFLOW;
        else if (s->send_failed)
            why = DP_RESET_LOCAL;
        else if (error_code == NGHTTP2_NO_ERROR && (s->remote_end || s->cut_request))
            why = DP_RESET_NONE;
        else if (error_code == NGHTTP2_REFUSED_STREAM)
            why = DP_RESET_REFUSED;
        else if (s->rst_recv)
            why = DP_RESET_REMOTE;
        else if (error_code == NGHTTP2_NO_ERROR)
            why = DP_RESET_CONN_TERMINATED;
        else
            why = DP_RESET_PROTOCOL; /* nghttp2 reset it for a violation */
        s->done_due = true;
        s->done_reason = why;
    }
    stream_mark_due(s);
    return 0;
}

static int on_frame_send_cb(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    (void)session;
    h2_conn_t *c = user_data;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        c->goaway_sent = true;
        if (frame->goaway.error_code != NGHTTP2_NO_ERROR)
            c->term_why = DP_RESET_PROTOCOL;
    } else if (c->cut_pending > 0 && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
               (frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA)) {
        /* The response is complete and the request is not: as Envoy, the stream ends here
         * with RST_STREAM(NO_ERROR), which asks the client to stop sending it (RFC 9113
         * §8.1), rather than staying half open for a body nobody reads. */
        h2_stream_t *s = stream_of(session, frame->hd.stream_id);
        if (s && s->cut_pending) {
            s->cut_pending = false;
            c->cut_pending--;
            if (!s->remote_end) {
                s->cut_request = true;
                nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                          NGHTTP2_NO_ERROR);
            }
        }
    }
    return 0;
}

static int on_frame_not_send_cb(nghttp2_session *session, const nghttp2_frame *frame,
                                int lib_error_code, void *user_data)
{
    (void)user_data;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    switch (lib_error_code) {
    case NGHTTP2_ERR_STREAM_CLOSED:
    case NGHTTP2_ERR_STREAM_CLOSING:
    case NGHTTP2_ERR_STREAM_SHUT_WR:
    case NGHTTP2_ERR_START_STREAM_NOT_ALLOWED:
    case NGHTTP2_ERR_SESSION_CLOSING:
        return 0; /* the stream or the session is ending anyway */
    default:
        break;
    }
    h2_stream_t *s = stream_of(session, frame->hd.stream_id);
    if (s == NULL)
        return 0;
    DP_LOG(DP_LOG_HTTP2, DP_LOG_DEBUG, "h2 stream %d: HEADERS not sent: %s", frame->hd.stream_id,
           nghttp2_strerror(lib_error_code));
    s->send_failed = true;
    if (lib_error_code == NGHTTP2_ERR_FRAME_SIZE_ERROR)
        s->overflow = true; /* over max_send_header_block_length */
    /* nghttp2 closes a stream whose request HEADERS failed (it was never opened at the
     * peer); a response or trailers leave an open stream behind that we reset. */
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_INTERNAL_ERROR);
    return 0;
}

/* ---- encoding ---- */

static bool hop_by_hop(const dp_header_t *h, bool request)
{
    dp_str_t n = h->name;
    if (n.n == 0 || n.p[0] == ':')
        return true;
    if (DP_STR_EQ(n, "connection") || DP_STR_EQ(n, "keep-alive") ||
        DP_STR_EQ(n, "proxy-connection") || DP_STR_EQ(n, "transfer-encoding") ||
        DP_STR_EQ(n, "upgrade"))
        return true;
    if (DP_STR_EQ(n, "te"))
        return !dp_str_ieq(h->value, "trailers", 8);
    if (request && DP_STR_EQ(n, "host"))
        return true;
    return false;
}

static void nv_set(nghttp2_nv *nv, dp_str_t name, dp_str_t value)
{
    nv->name = (uint8_t *)(uintptr_t)name.p;
    nv->namelen = name.n;
    nv->value = (uint8_t *)(uintptr_t)(value.p ? value.p : "");
    nv->valuelen = value.n;
    nv->flags = NGHTTP2_NV_FLAG_NONE;
}

/* Pseudo-headers first (RFC 9113 §8.3), then the regular headers. nghttp2 copies names and
 * values when it submits, so the array may point at the caller's strings. */
static nghttp2_nv *build_nv(dp_pool_t *pool, const dp_headers_t *hs, const dp_str_t *pseudo_n,
                            const dp_str_t *pseudo_v, size_t n_pseudo, bool request, size_t *ret_n)
{
    nghttp2_nv *nv = dp_pool_alloc(pool, (n_pseudo + (hs ? hs->n : 0) + 1) * sizeof(*nv));
    size_t k = 0;
    for (size_t i = 0; i < n_pseudo; i++)
        nv_set(&nv[k++], pseudo_n[i], pseudo_v[i]);
    for (uint32_t i = 0; hs && i < hs->n; i++) {
        if (hop_by_hop(&hs->v[i], request))
            continue;
        nv_set(&nv[k++], hs->v[i].name, hs->v[i].value);
    }
    *ret_n = k;
    return nv;
}

static bool stream_can_send(const h2_stream_t *s)
{
    return !s->detached && !s->h2_closed && !s->done_due && !s->done && !s->c->closing &&
           !s->c->close_req;
}

static int enc_headers_server(h2_stream_t *s, const dp_http_head_t *h, bool end_stream)
{
    h2_conn_t *c = s->c;
    if (s->head_sent || h->status < 100 || h->status > 999)
        return -EINVAL;
    char *st = dp_pool_alloc(s->pool, 4);
    st[0] = (char)('0' + h->status / 100);
    st[1] = (char)('0' + h->status / 10 % 10);
    st[2] = (char)('0' + h->status % 10);
    st[3] = '\0';
    dp_str_t pn[1] = {DP_STR(":status")}, pv[1] = {{st, 3}};
    size_t n;
    nghttp2_nv *nv = build_nv(s->pool, &h->headers, pn, pv, 1, false, &n);
    int rv;
    if (h->status < 200) {
        /* 101 cannot be sent over HTTP/2 (RFC 9113 §8.6). */
        if (h->status == 101)
            return -EINVAL;
        rv = nghttp2_submit_headers(c->session, NGHTTP2_FLAG_NONE, s->id, NULL, nv, n, NULL);
        return rv == 0 ? 0 : -EPROTO;
    }
    nghttp2_data_provider prd = {.source = {.ptr = s}, .read_callback = data_read_cb};
    rv = nghttp2_submit_response(c->session, s->id, nv, n, end_stream ? NULL : &prd);
    if (rv != 0)
        return -EPROTO;
    s->head_sent = true;
    s->has_provider = !end_stream;
    if (end_stream)
        mark_local_end(c, s);
    return 0;
}

static int enc_headers_client(h2_stream_t *s, const dp_http_head_t *h, bool end_stream)
{
    h2_conn_t *c = s->c;
    if (s->head_sent)
        return -EINVAL;
    dp_str_t authority = h->authority;
    if (authority.p == NULL) {
        const dp_header_t *host = DP_HDR_GET(&h->headers, "host");
        if (host)
            authority = host->value;
    }
    bool connect = DP_STR_EQ(h->method, "CONNECT");
    if (h->method.p == NULL || authority.p == NULL || (!connect && h->path.p == NULL) ||
        (h->protocol.p != NULL && !connect))
        return -EINVAL;
    dp_str_t pn[5], pv[5];
    size_t np = 0;
    pn[np] = DP_STR(":method");
    pv[np++] = h->method;
    if (!connect || h->protocol.p != NULL) {
        pn[np] = DP_STR(":scheme");
        pv[np++] = h->scheme.p ? h->scheme : DP_STR("http");
    }
    pn[np] = DP_STR(":authority");
    pv[np++] = authority;
    if (!connect || h->protocol.p != NULL) {
        pn[np] = DP_STR(":path");
        pv[np++] = h->path;
    }
    if (h->protocol.p != NULL) {
        pn[np] = DP_STR(":protocol");
        pv[np++] = h->protocol;
    }
    size_t n;
    nghttp2_nv *nv = build_nv(s->pool, &h->headers, pn, pv, np, true, &n);
    nghttp2_data_provider prd = {.source = {.ptr = s}, .read_callback = data_read_cb};
    int32_t id = nghttp2_submit_request(c->session, NULL, nv, n, end_stream ? NULL : &prd, s);
    if (id < 0) {
        /* No stream id left, or the session is going away: the stream ends refused. */
        s->done_due = true;
        s->done_reason = DP_RESET_REFUSED;
        stream_mark_due(s);
        return -EPROTO;
    }
    s->id = id;
    s->head_sent = true;
    s->final_head = false;
    s->has_provider = !end_stream;
    s->local_end = end_stream;
    return 0;
}

static int h2_enc_headers(dp_enc_t *e, const dp_http_head_t *h, bool end_stream)
{
    h2_stream_t *s = (h2_stream_t *)e;
    h2_conn_t *c = s->c;
    if (!stream_can_send(s))
        return -EPIPE;
    c->depth++;
    int rv =
        c->server ? enc_headers_server(s, h, end_stream) : enc_headers_client(s, h, end_stream);
    c->depth--;
    conn_after(c);
    return rv;
}

static void stream_resume_output(h2_stream_t *s)
{
    if (s->deferred) {
        s->deferred = false;
        nghttp2_session_resume_data(s->c->session, s->id);
    }
}

static int h2_enc_data(dp_enc_t *e, const uint8_t *p, size_t n, bool end_stream)
{
    h2_stream_t *s = (h2_stream_t *)e;
    h2_conn_t *c = s->c;
    if (!stream_can_send(s))
        return -EPIPE;
    if (!s->has_provider || s->out_eof)
        return -EINVAL;
    c->depth++;
    queue_append(&s->out, p, n);
    if (end_stream) {
        s->out_eof = true;
        mark_local_end(c, s);
    }
    if (s->out.bytes >= c->limits.buffer_limit)
        s->drain_armed = true;
    stream_resume_output(s);
    c->depth--;
    conn_after(c);
    return 0;
}

static int h2_enc_trailers(dp_enc_t *e, const dp_headers_t *t)
{
    h2_stream_t *s = (h2_stream_t *)e;
    h2_conn_t *c = s->c;
    if (!stream_can_send(s))
        return -EPIPE;
    if (!s->has_provider || s->out_eof)
        return -EINVAL;
    c->depth++;
    /* Copied: the owner's list may live in another stream's pool. */
    size_t n = 0;
    nghttp2_nv *nv = dp_pool_alloc(s->pool, ((t ? t->n : 0) + 1) * sizeof(*nv));
    for (uint32_t i = 0; t && i < t->n; i++) {
        if (hop_by_hop(&t->v[i], false))
            continue;
        dp_str_t name = {dp_pool_strndup(s->pool, t->v[i].name.p, t->v[i].name.n), t->v[i].name.n};
        dp_str_t value = {
            dp_pool_strndup(s->pool, t->v[i].value.p ? t->v[i].value.p : "", t->v[i].value.n),
            t->v[i].value.n};
        nv_set(&nv[n++], name, value);
    }
    s->out_eof = true;
    mark_local_end(c, s);
    /* An empty trailer block is just the end of the stream. */
    if (n > 0) {
        s->out_trailers = nv;
        s->n_out_trailers = n;
    }
    stream_resume_output(s);
    c->depth--;
    conn_after(c);
    return 0;
}

static void h2_enc_reset(dp_enc_t *e, dp_reset_reason_t why)
{
    h2_stream_t *s = (h2_stream_t *)e;
    h2_conn_t *c = s->c;
    if (s->detached)
        return;
    c->depth++;
    s->detached = true;
    if (!s->done)
        stream_leave_owner(s);
    if (!c->closing) {
        if (s->id > 0 && !s->h2_closed) {
            uint32_t code = why == DP_RESET_REFUSED ? NGHTTP2_REFUSED_STREAM
                            : why == DP_RESET_LOCAL ? NGHTTP2_CANCEL
                                                    : NGHTTP2_INTERNAL_ERROR;
            nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, s->id, code);
        }
        /* The output queue stays until the stream is freed: a DATA frame nghttp2 has
         * already sized may still be taking its bytes. */
        stream_drop_input(s);
        stream_mark_due(s); /* freed from conn_after */
    }
    c->depth--;
    conn_after(c);
}

static void h2_enc_read_disable(dp_enc_t *e, bool disable)
{
    h2_stream_t *s = (h2_stream_t *)e;
    h2_conn_t *c = s->c;
    if (s->detached || c->closing)
        return;
    if (disable) {
        s->disabled++;
        return;
    }
    if (s->disabled == 0)
        return;
    if (--s->disabled > 0)
        return;
    c->depth++;
    s->resume_due = true;
    stream_mark_due(s);
    c->depth--;
    conn_after(c);
}

static size_t h2_enc_buffered(const dp_enc_t *e)
{
    const h2_stream_t *s = (const h2_stream_t *)e;
    return s->out.bytes;
}

static const dp_enc_ops_t h2_enc_ops = {
    .headers = h2_enc_headers,
    .data = h2_enc_data,
    .trailers = h2_enc_trailers,
    .reset = h2_enc_reset,
    .read_disable = h2_enc_read_disable,
    .buffered = h2_enc_buffered,
};

/* ---- the connection ---- */

static void close_cb(uv_handle_t *hd)
{
    h2_conn_t *c = hd->data;
    if (--c->handles_open > 0)
        return;
    if (c->cb.on_close)
        c->cb.on_close(c->ud, &c->base, c->close_why);
    h2_stream_t *s;
    while ((s = c->free_streams) != NULL) {
        c->free_streams = s->next;
        free(s);
    }
    dp_block_put(&wbufs, c->wfill.p);
    dp_block_put(&wbufs, c->wsend.p);
    free(c);
}

/* Ends every stream, drops the session and closes the socket; on_close follows from the
 * close callback. Runs only with depth 0 (from conn_after). */
static void conn_close_now(h2_conn_t *c, dp_reset_reason_t why)
{
    if (c->closing)
        return;
    c->closing = true;
    c->close_why = why;
    c->depth++;
    unsigned guard = 0;
    while (c->streams != NULL && guard++ < 1u << 24) {
        h2_stream_t *s = c->streams;
        if (!s->detached && !s->done) {
            s->done = true;
            c->active--;
            s->sink->on_done(s->ud, DP_RESET_CONN_TERMINATED);
        }
        s->on_due = false;
        stream_release(c, s);
    }
    c->due = c->due_tail = NULL;
    c->depth--;
    nghttp2_session_del(c->session);
    c->session = NULL;
    dp_turn_work_close(&c->flusher, close_cb);
    uv_close(&c->io.handle, close_cb);
}

/* A GOAWAY written straight to the socket after a fatal nghttp2 error, when the session can
 * no longer produce frames. Best effort. */
static void conn_write_goaway(h2_conn_t *c, uint32_t code)
{
    if (c->writing)
        return;
    int32_t last = c->server ? nghttp2_session_get_last_proc_stream_id(c->session) : 0;
    uint8_t f[17] = {0, 0, 8, NGHTTP2_GOAWAY, 0, 0, 0, 0, 0};
    f[9] = (uint8_t)(last >> 24 & 0x7f);
    f[10] = (uint8_t)(last >> 16);
    f[11] = (uint8_t)(last >> 8);
    f[12] = (uint8_t)last;
    f[13] = (uint8_t)(code >> 24);
    f[14] = (uint8_t)(code >> 16);
    f[15] = (uint8_t)(code >> 8);
    f[16] = (uint8_t)code;
    uv_buf_t b = uv_buf_init((char *)f, sizeof(f));
    uv_try_write(&c->io.stream, &b, 1);
}

/* Runs the work marked due while we were inside nghttp2 or the owner, then flushes, then
 * decides whether the connection is over. */
static void conn_after(h2_conn_t *c)
{
    if (c->depth > 0 || c->closing)
        return;
    c->depth++;
    for (unsigned round = 0; round < 1u << 20; round++) {
        if (c->close_req)
            break;
        if (c->due != NULL) {
            h2_stream_t *s = c->due;
            c->due = s->due_next;
            if (c->due == NULL)
                c->due_tail = NULL;
            s->on_due = false;
            if (s->resume_due) {
                s->resume_due = false;
                stream_deliver_held(s);
            }
            if (s->drain_due) {
                s->drain_due = false;
                if (!s->detached && !s->done && s->sink->on_drained)
                    s->sink->on_drained(s->ud);
            }
            if (s->done_due && !s->done && !s->detached) {
                if (s->done_reason != DP_RESET_NONE)
                    stream_drop_input(s);
                /* A normal end waits until held input has reached the owner. */
                if (s->done_reason != DP_RESET_NONE || stream_input_delivered(s)) {
                    s->done = true;
                    s->done_due = false;
                    stream_leave_owner(s);
                    stream_drop_input(s);
                    s->sink->on_done(s->ud, s->done_reason);
                }
            }
            if (!s->on_due && (s->h2_closed || s->id <= 0) && (s->done || s->detached))
                stream_release(c, s);
            continue;
        }
        /* From the flusher the frames go now; a flush that stopped with frames left (its
         * rounds used up) asks for the next turn, as does any other entry point. */
        if (c->flush_now)
            conn_flush(c);
        if (!c->writing && !c->close_req &&
            (c->wfill.len > 0 || nghttp2_session_want_write(c->session)))
            dp_turn_work_start(&c->flusher);
        if (c->due != NULL || c->close_req)
            continue;
        if (c->ready_due) {
            c->ready_due = false;
            if (c->cb.on_ready && h2_conn_ops.can_take_stream(&c->base))
                c->cb.on_ready(c->ud, &c->base);
            continue;
        }
        break;
    }
    c->depth--;
    if (c->close_req) {
        conn_close_now(c, c->close_why);
        return;
    }
    /* nghttp2 is done with the session (GOAWAY exchanged and no stream left, or it ended
     * the session on an error): close once the last bytes are on the socket. */
    if (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session) &&
        !c->writing && c->wfill.len == 0) {
        conn_close_now(c, c->term_why);
        return;
    }
    /* Nothing left to write: the write buffers go back to the thread's cache rather than sit
     * in every quiet connection. */
    if (!c->writing && c->wfill.len == 0 && !dp_turn_work_pending(&c->flusher)) {
        dp_block_put(&wbufs, c->wfill.p);
        dp_block_put(&wbufs, c->wsend.p);
        c->wfill.p = c->wsend.p = NULL;
    }
}

static void conn_after_flush(h2_conn_t *c)
{
    c->flush_now = true;
    conn_after(c);
    c->flush_now = false;
}

static void on_flush(void *ud)
{
    conn_after_flush(ud);
}

static void alloc_cb(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    (void)hd;
    /* nghttp2_session_mem_recv takes all of a read before read_cb returns (what a stream
     * keeps, it copies). */
    size_t cap;
    char *b = dp_read_buf(H2_READ_SIZE, &cap);
    *buf = uv_buf_init(b, (unsigned)cap);
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    h2_conn_t *c = st->data;
    if (c->closing || c->close_req)
        return;
    c->depth++;
    if (nread > 0) {
        ssize_t rv =
            nghttp2_session_mem_recv(c->session, (const uint8_t *)buf->base, (size_t)nread);
        if (rv < 0) {
            DP_LOG(DP_LOG_HTTP2, DP_LOG_DEBUG, "h2 recv: %s", nghttp2_strerror((int)rv));
            conn_write_goaway(c, rv == NGHTTP2_ERR_FLOODED ? NGHTTP2_ENHANCE_YOUR_CALM
                                                           : NGHTTP2_PROTOCOL_ERROR);
            c->close_req = true;
            c->close_why = DP_RESET_PROTOCOL;
        }
    } else if (nread < 0) {
        c->close_req = true;
        if (c->term_why != DP_RESET_NONE)
            c->close_why = c->term_why;
        else if (nread == UV_EOF && c->active == 0)
            c->close_why = DP_RESET_NONE;
        else
            c->close_why = DP_RESET_CONN_TERMINATED;
    }
    c->depth--;
    conn_after(c);
}

static dp_enc_t *h2_new_stream(dp_codec_conn_t *cc, const dp_sink_ops_t *ops, void *ud,
                               dp_pool_t *pool)
{
    h2_conn_t *c = (h2_conn_t *)cc;
    if (c->server || !cc->ops->can_take_stream(cc))
        return NULL;
    h2_stream_t *s = stream_new(c, ops, ud, pool);
    return &s->enc;
}

static bool h2_can_take_stream(const dp_codec_conn_t *cc)
{
    const h2_conn_t *c = (const h2_conn_t *)cc;
    if (c->server || c->closing || c->close_req || c->goaway_recv || c->goaway_sent)
        return false;
    uint32_t peer =
        nghttp2_session_get_remote_settings(c->session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    uint32_t max = c->limits.h2_max_concurrent_streams;
    if (peer < max)
        max = peer;
    if (nghttp2_session_get_next_stream_id(c->session) > INT32_MAX - 2 * (int64_t)c->active)
        return false;
    return c->active < max;
}

static uint32_t h2_active_streams(const dp_codec_conn_t *cc)
{
    return ((const h2_conn_t *)cc)->active;
}

static void h2_go_away(dp_codec_conn_t *cc)
{
    h2_conn_t *c = (h2_conn_t *)cc;
    if (c->closing || c->goaway_sent)
        return;
    c->depth++;
    int32_t last = c->server ? nghttp2_session_get_last_proc_stream_id(c->session) : 0;
    nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, last, NGHTTP2_NO_ERROR, NULL, 0);
    c->goaway_sent = true;
    c->depth--;
    conn_after(c);
}

static void h2_close(dp_codec_conn_t *cc)
{
    h2_conn_t *c = (h2_conn_t *)cc;
    if (c->closing)
        return;
    if (!c->close_req) {
        c->close_req = true;
        c->close_why = DP_RESET_NONE;
    }
    conn_after(c);
}

static const dp_codec_conn_ops_t h2_conn_ops = {
    .new_stream = h2_new_stream,
    .can_take_stream = h2_can_take_stream,
    .active_streams = h2_active_streams,
    .go_away = h2_go_away,
    .close = h2_close,
};

static nghttp2_session *session_new(h2_conn_t *c)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        abort();
    nghttp2_session_callbacks_set_send_callback(cbs, send_cb);
    nghttp2_session_callbacks_set_send_data_callback(cbs, send_data_cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers_cb);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close_cb);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send_cb);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send_cb);

    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0)
        abort();
    /* Window goes back only as the owner takes the data (nghttp2_session_consume), which is
     * how read_disable holds a peer back. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* What we send: the deflated size of a head within our own limits (nghttp2's bound is
     * the raw bytes plus 12 per field); a bigger head fails that stream only. */
    nghttp2_option_set_max_send_header_block_length(
        opt, (size_t)c->limits.max_header_bytes + 12 * ((size_t)c->limits.max_headers + 8) + 12);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, H2_DEFLATE_TABLE);
    /* A peer that sends PING or SETTINGS and does not read the ACKs gets the connection
     * closed (NGHTTP2_ERR_FLOODED) instead of a growing queue. */
    nghttp2_option_set_max_outbound_ack(opt, H2_MAX_OUTBOUND_ACK);
    nghttp2_option_set_max_settings(opt, H2_MAX_SETTINGS);
    nghttp2_option_set_max_continuations(opt, H2_MAX_CONTINUATIONS);
    /* Closed streams are not kept for the RFC 7540 priority tree. */
    nghttp2_option_set_no_closed_streams(opt, 1);
    if (c->server) {
        nghttp2_option_set_stream_reset_rate_limit(opt, H2_RST_BURST, H2_RST_RATE);
    } else {
        /* Before the server's SETTINGS arrive, no more streams than we would allow. */
        nghttp2_option_set_peer_max_concurrent_streams(opt, c->limits.h2_max_concurrent_streams);
        /* We disable push; none may be reserved. */
        nghttp2_option_set_max_reserved_remote_streams(opt, 0);
    }
    nghttp2_session *ses = NULL;
    int rv = c->server ? nghttp2_session_server_new3(&ses, cbs, c, opt, &h2_mem)
                       : nghttp2_session_client_new3(&ses, cbs, c, opt, &h2_mem);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0)
        abort();
    return ses;
}

dp_codec_conn_t *dp_h2_conn_new(uv_loop_t *loop, int fd, bool server,
                                const dp_http_limits_t *limits, const dp_codec_cb_t *cb, void *ud)
{
    h2_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->base.ops = &h2_conn_ops;
    c->loop = loop;
    c->server = server;
    c->limits = *limits;
    if (c->limits.buffer_limit == 0)
        c->limits.buffer_limit = 1;
    c->cb = *cb;
    c->ud = ud;

    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    bool unix_sock = getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_UNIX;
    int rv = unix_sock ? uv_pipe_init(loop, &c->io.pipe, 0) : uv_tcp_init(loop, &c->io.tcp);
    if (rv != 0) {
        close(fd);
        free(c);
        return NULL;
    }
    c->io.handle.data = c;
    dp_turn_work_init(loop, &c->flusher, on_flush, c);
    c->handles_open = 3;
    rv = unix_sock ? uv_pipe_open(&c->io.pipe, fd) : uv_tcp_open(&c->io.tcp, fd);
    if (rv != 0) {
        /* The handle does not own fd yet; it still has to be closed through libuv. */
        close(fd);
        c->cb.on_close = NULL;
        c->closing = true;
        dp_turn_work_close(&c->flusher, close_cb);
        uv_close(&c->io.handle, close_cb);
        return NULL;
    }
    if (!unix_sock)
        uv_tcp_nodelay(&c->io.tcp, 1);
    c->wreq.data = c;

    c->session = session_new(c);
    nghttp2_settings_entry iv[4];
    size_t n = 0;
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
                                       limits->h2_max_concurrent_streams};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE,
                                       limits->h2_initial_stream_window};
    /* Advisory for the peer; what we receive is enforced in on_header_cb. */
    iv[n++] =
        (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, limits->max_header_bytes};
    if (!server)
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, n);
    if (limits->h2_initial_connection_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE)
        nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)limits->h2_initial_connection_window);

    rv = uv_read_start(&c->io.stream, alloc_cb, read_cb);
    if (rv != 0) {
        c->close_req = true;
        c->close_why = DP_RESET_CONN_TERMINATED;
    }
    /* The client preface and our SETTINGS go out now. */
    conn_after(c);
    return &c->base;
}
