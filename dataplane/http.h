/* The protocol-neutral HTTP message and the contract between codecs and streams.
 *
 * Every HTTP version is turned into one representation (HAProxy's HTX idea, h2o's
 * lib/core/request.c): a head (pseudo-headers as fields, regular headers with lower-case
 * names), body data, and trailers. The HTTP/1.1 codec (dataplane/http1.c) and the HTTP/2 codec
 * (dataplane/http2.c) each act as a server (downstream) or a client (upstream) and speak to
 * the rest of the data plane only through the types below:
 *
 *   codec ──events──▶ dp_sink_ops_t   (the stream's owner: the connection manager downstream,
 *                                      the router upstream)
 *   owner ──sends───▶ dp_enc_t ops     (the codec's half of one stream)
 *
 * Lifetimes. A codec stream (dp_enc_t) is valid from its creation until the codec calls the
 * sink's on_done exactly once (normal completion when both directions ended, or a reset with
 * its reason), or until the owner calls enc->ops->reset(), after which the codec calls nothing
 * more on that sink (not even on_done). Memory for heads and headers the codec decodes comes
 * from the pool the owner gave for that stream.
 *
 * Data ownership. on_data's bytes are valid only during the callback; enc->ops->data() copies
 * what it is given (it never keeps the caller's pointer). So a body byte is copied once on its
 * way through the proxy, into the sending codec's output queue.
 *
 * Back-pressure. After each data() the owner compares enc->ops->buffered() with the
 * high watermark (dp_http_limits_t.buffer_limit) and, when over it, calls
 * read_disable(source, true) on the stream the data came from; the sending codec calls the
 * sink's on_drained when its queue falls below half the limit, and the owner re-enables the
 * source. read_disable is counted (each true needs a false).
 *
 * All of it runs on one worker thread. */
#ifndef SKIFF_DATAPLANE_HTTP_H
#define SKIFF_DATAPLANE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>

/* ---- memory: one pool per stream (STYLE.md §5) ---- */

typedef struct dp_pool dp_pool_t;

dp_pool_t *dp_pool_new(void);                                 /* aborts on OOM */
void *dp_pool_alloc(dp_pool_t *p, size_t n);                  /* 16-byte aligned, not zeroed */
void *dp_pool_calloc(dp_pool_t *p, size_t n);                 /* zeroed */
char *dp_pool_strndup(dp_pool_t *p, const char *s, size_t n); /* NUL-terminated copy */
void dp_pool_free(dp_pool_t *p);                              /* accepts NULL */

/* ---- per-thread recycling: what a worker's pools and codecs reuse ---- */

/* A cache of freed blocks of one size, one per thread (declare each instance _Thread_local,
 * initialised with DP_BLOCK_CACHE): up to max blocks are kept for the next get, so a busy
 * worker does not malloc and free them per request, nor let glibc trim its heap and fault
 * the pages in again as it regrows. */
typedef struct dp_block_cache {
    size_t size; /* of a block, at least sizeof(void *) */
    unsigned max, n;
    void *head;
} dp_block_cache_t;
#define DP_BLOCK_CACHE(sz, mx)    \
    {                             \
        .size = (sz), .max = (mx) \
    }
void *dp_block_get(dp_block_cache_t *bc);         /* malloc-aligned, not zeroed; aborts on OOM */
void dp_block_put(dp_block_cache_t *bc, void *p); /* accepts NULL */
void dp_block_drain(dp_block_cache_t *bc);

/* The thread's read buffer, of at least min bytes (its size in *ret_cap): a codec reads into
 * it and consumes or copies what it read before its read callback returns, so that no
 * connection needs a read buffer of its own between reads. A later call may move it. */
char *dp_read_buf(size_t min, size_t *ret_cap);

/* Work a connection wants done once the loop turn's I/O callbacks are over, for everything
 * they produced together (both codecs write this way): in the check phase, or in the prepare
 * phase before the poll when it was asked for outside them (a timer, an idle or check
 * callback), since libuv's poll does not wait for check handles and they alone could hold
 * the work through it. Two handles whose data is ud, for the owner's close callback; fn(ud)
 * runs once per start, the handles stopped first. */
typedef struct dp_turn_work {
    uv_check_t check;
    uv_prepare_t pre;
    void (*fn)(void *ud);
} dp_turn_work_t;
void dp_turn_work_init(uv_loop_t *loop, dp_turn_work_t *w, void (*fn)(void *ud), void *ud);
void dp_turn_work_start(dp_turn_work_t *w);
void dp_turn_work_stop(dp_turn_work_t *w);
bool dp_turn_work_pending(const dp_turn_work_t *w);
void dp_turn_work_close(dp_turn_work_t *w, uv_close_cb cb); /* cb runs once per handle: twice */

/* Once per loop turn, before the poll (the worker's prepare handle). The HTTP/1 codec holds
 * small writes for the end of a turn (see out_write in dataplane/http1.c) only while the
 * thread is busy: when the turn before made at least DP_H1_BATCH_WRITES writes; in a quieter
 * loop they go at once, so that a burst of requests is not made to wait for the whole burst.
 * A thread that never calls this holds always. */
#define DP_H1_BATCH_WRITES 4
void dp_http_turn_end(void);

/* Free what this thread keeps (pool chunks and the read buffer here, HTTP/1 write requests,
 * HTTP/2 chunks, write buffers and nghttp2's blocks); a thread that ran connections calls all
 * three as it ends. */
void dp_http_thread_done(void);
void dp_h1_thread_done(void);
void dp_h2_thread_done(void);

/* A FIFO of copied byte chunks: a body held while its next hop is not ready (the upstream
 * stream not open yet, a paused filter chain). */
typedef struct dp_bufq_chunk {
    struct dp_bufq_chunk *next;
    size_t len, off;
    uint8_t data[];
} dp_bufq_chunk_t;

typedef struct dp_bufq {
    dp_bufq_chunk_t *head, *tail;
    size_t bytes;
} dp_bufq_t;

void dp_bufq_push(dp_bufq_t *q, const uint8_t *p, size_t n); /* copies; aborts on OOM */
void dp_bufq_clear(dp_bufq_t *q);

/* ---- strings and headers ---- */

/* A string with its length; p need not be NUL-terminated (but is when it comes from a pool
 * copy). An absent value has p == NULL. */
typedef struct dp_str {
    const char *p;
    size_t n;
} dp_str_t;

#define DP_STR(lit)   ((dp_str_t){(lit), sizeof(lit) - 1})
#define DP_STR_NULL   ((dp_str_t){NULL, 0})
#define DP_STR_FMT    "%.*s"
#define DP_STR_ARG(s) (int)(s).n, (s).p

static inline bool dp_str_eq(dp_str_t a, const char *lit, size_t n)
{
    if (a.n != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (a.p[i] != lit[i])
            return false;
    }
    return true;
}
#define DP_STR_EQ(s, lit) dp_str_eq((s), (lit), sizeof(lit) - 1)

/* Writes v in decimal at buf (at least 21 bytes), NUL-terminated; returns the length. For the
 * numbers every request formats (lengths, statuses, milliseconds), without printf. */
static inline size_t dp_u64_fmt(char *buf, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    buf[n] = '\0';
    return n;
}

/* The value of hex digit c, -1 when it is none. */
static inline int dp_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* v as 16 lower-case hex digits, most significant first (no NUL): each half's nibbles spread
 * one to a byte, then 0x30 added to each and 0x27 more to those above 9 ('a' - '0' - 10). */
static inline uint64_t dp_hex_nibbles_(uint32_t v)
{
    uint64_t x = v;
    x = (x | (x << 16)) & 0x0000ffff0000ffffull;
    x = (x | (x << 8)) & 0x00ff00ff00ff00ffull;
    x = (x | (x << 4)) & 0x0f0f0f0f0f0f0f0full;
    uint64_t above9 = ((x + 0x0606060606060606ull) >> 4) & 0x0101010101010101ull;
    return __builtin_bswap64(x + 0x3030303030303030ull + above9 * 0x27);
}
static inline void dp_hex_u64(char out[16], uint64_t v)
{
    uint64_t hi = dp_hex_nibbles_((uint32_t)(v >> 32)), lo = dp_hex_nibbles_((uint32_t)v);
    memcpy(out, &hi, 8);
    memcpy(out + 8, &lo, 8);
}

/* Eight bytes with every ASCII 'A'..'Z' made lower case (other bytes as they are): a byte below
 * 0x80 is upper case when its value plus 0x3f carries into bit 7 ('A' and above) and its value
 * plus 0x25 does not ('Z' and below); bit 7 of that, moved to bit 5, is the 0x20 to add. */
static inline uint64_t dp_lower8(uint64_t x)
{
    uint64_t h = x & 0x7f7f7f7f7f7f7f7full;
    uint64_t upper =
        ~x & ((h + 0x3f3f3f3f3f3f3f3full) ^ (h + 0x2525252525252525ull)) & 0x8080808080808080ull;
    return x | (upper >> 2);
}

/* Lower-cases p[0..n) in place (ASCII letters only), eight bytes at a time. */
void dp_ascii_lower(char *p, size_t n);

/* Case-insensitive comparison (ASCII), for header values such as "chunked" or "upgrade"; the
 * length test inline, as most comparisons end there. */
bool dp_mem_ieq(const char *a, const char *b, size_t n);
static inline bool dp_str_ieq(dp_str_t a, const char *b, size_t n)
{
    return a.n == n && dp_mem_ieq(a.p, b, n);
}

/* One header field. Names are lower case (HTTP/2 requires it; the HTTP/1 codec lowers them on
 * decode). */
typedef struct dp_header {
    dp_str_t name;
    dp_str_t value;
} dp_header_t;

/* An ordered header list in a pool. Repeated names stay separate entries, in order. */
typedef struct dp_headers {
    dp_header_t *v;
    uint32_t n, cap;
} dp_headers_t;

/* Appends a header, copying name and value into the pool. */
void dp_headers_add(dp_headers_t *h, dp_pool_t *p, const char *name, size_t nlen, const char *value,
                    size_t vlen);
/* Appends a header that refers to name and value without copying them (they must outlive the
 * stream: string literals, or snapshot memory the stream has pinned). */
void dp_headers_add_ref(dp_headers_t *h, dp_pool_t *p, dp_str_t name, dp_str_t value);
/* Replaces every header of that name with one (copied), or appends it. */
void dp_headers_set(dp_headers_t *h, dp_pool_t *p, const char *name, size_t nlen, const char *value,
                    size_t vlen);
/* The first header of that (lower-case) name, or NULL. */
const dp_header_t *dp_headers_get(const dp_headers_t *h, const char *name, size_t nlen);
/* Removes every header of that name; returns how many. */
size_t dp_headers_remove(dp_headers_t *h, const char *name, size_t nlen);

#define DP_HDR_GET(h, lit)    dp_headers_get((h), (lit), sizeof(lit) - 1)
#define DP_HDR_REMOVE(h, lit) dp_headers_remove((h), (lit), sizeof(lit) - 1)

/* ---- messages ---- */

typedef enum dp_http_version {
    DP_HTTP_10 = 10,
    DP_HTTP_11 = 11,
    DP_HTTP_2 = 20,
} dp_http_version_t;

/* The head of a request or a response. For a request, method, scheme, authority and path are
 * set (authority from :authority or Host; the Host header itself is not in headers); for
 * CONNECT-style upgrades over HTTP/2, protocol holds :protocol. For a response, status is set.
 * headers holds the regular headers, lower-case, without the hop-by-hop ones the codec
 * consumed (connection, keep-alive, proxy-connection, transfer-encoding; upgrade and
 * "connection: upgrade" are kept for an upgrade request, and te: trailers is kept). */
typedef struct dp_http_head {
    dp_str_t method, scheme, authority, path, protocol;
    int status;
    dp_headers_t headers;
    dp_http_version_t version; /* the version it arrived in (decode) */
    /* Request: the body length when a content-length was given, else -1 (chunked, HTTP/2
     * without content-length, or none). */
    int64_t content_length;
    /* Decode, HTTP/1: an Upgrade request (upgrade + connection: upgrade, e.g. websocket). Once
     * a 101 response passes, both codecs carry the connection's bytes as data events. */
    bool upgrade;
} dp_http_head_t;

/* Why a stream ended early. */
typedef enum dp_reset_reason {
    DP_RESET_NONE = 0,     /* normal completion (on_done only) */
    DP_RESET_LOCAL,        /* this side reset it */
    DP_RESET_REMOTE,       /* the peer reset it (RST_STREAM, or HTTP/1 close mid-message) */
    DP_RESET_CONNECT_FAIL, /* the upstream connection could not be made */
    DP_RESET_CONNECT_TIMEOUT,
    DP_RESET_CONN_TERMINATED, /* the connection closed before the stream ended */
    DP_RESET_PROTOCOL,        /* the peer broke the protocol */
    DP_RESET_REFUSED,         /* HTTP/2 REFUSED_STREAM, or GOAWAY before the stream started */
    DP_RESET_OVERFLOW,        /* a buffer limit, or a circuit breaker, was passed */
    DP_RESET_NO_HEALTHY_HOST, /* upstream: the cluster has no host to send to */
} dp_reset_reason_t;

const char *dp_reset_reason_str(dp_reset_reason_t r);

/* Limits a peer cannot push past (RELIABILITY.md). Defaults: dp_http_limits_default(). */
typedef struct dp_http_limits {
    uint32_t max_header_bytes;          /* request/response head, 60 KiB (Envoy's default): 431 */
    uint32_t max_headers;               /* header count, 100: 431 */
    uint32_t buffer_limit;              /* per-stream high watermark, 1 MiB */
    uint32_t h2_max_concurrent_streams; /* 100 */
    uint32_t h2_initial_stream_window;  /* 256 KiB */
    uint32_t h2_initial_connection_window; /* 1 MiB */
} dp_http_limits_t;

dp_http_limits_t dp_http_limits_default(void);

/* ---- the codec's half of a stream ---- */

typedef struct dp_enc dp_enc_t;

typedef struct dp_enc_ops {
    /* Sends the head. A request head needs method, path and authority; a response head needs
     * status (1xx heads may precede the final one). end_stream: no body follows. Returns 0, or
     * a negative errno when the stream can no longer send (then expect on_done). */
    int (*headers)(dp_enc_t *e, const dp_http_head_t *h, bool end_stream);
    /* Queues body bytes (copied). n may be 0 with end_stream. */
    int (*data)(dp_enc_t *e, const uint8_t *p, size_t n, bool end_stream);
    /* Sends trailers and ends the stream (HTTP/1: as chunked trailers when the body is chunked,
     * dropped otherwise). */
    int (*trailers)(dp_enc_t *e, const dp_headers_t *t);
    /* Aborts the stream: RST_STREAM (HTTP/2) or closing the connection (HTTP/1). The codec
     * calls nothing more on this stream's sink; e is invalid after this returns. */
    void (*reset)(dp_enc_t *e, dp_reset_reason_t why);
    /* Back-pressure on what the peer sends on this stream: while disabled (counted), no
     * on_data arrives (HTTP/1 stops reading the socket; HTTP/2 stops returning window). */
    void (*read_disable)(dp_enc_t *e, bool disable);
    /* Bytes queued for this stream and not yet handed to the socket. */
    size_t (*buffered)(const dp_enc_t *e);
} dp_enc_ops_t;

struct dp_enc {
    const dp_enc_ops_t *ops;
};

/* ---- what the codec tells the stream's owner ---- */

typedef struct dp_sink_ops {
    /* The head arrived. h lives in the stream's pool until the stream is freed; the owner may
     * change it. 1xx responses other than 101 arrive as heads too (status < 200), and the
     * final one follows. */
    void (*on_headers)(void *ud, dp_http_head_t *h, bool end_stream);
    void (*on_data)(void *ud, const uint8_t *p, size_t n, bool end_stream);
    /* Trailers, in the stream's pool; they end the stream's inbound direction. */
    void (*on_trailers)(void *ud, dp_headers_t *t);
    /* The encoder's queue fell below the low watermark. */
    void (*on_drained)(void *ud);
    /* The stream is over: why == DP_RESET_NONE when both directions completed. The encoder is
     * invalid once this returns. Called exactly once, unless the owner reset the stream. */
    void (*on_done)(void *ud, dp_reset_reason_t why);
} dp_sink_ops_t;

/* ---- a codec connection ---- */

typedef struct dp_codec_conn dp_codec_conn_t;

typedef struct dp_codec_conn_ops {
    /* Client only: opens a stream whose events go to (ops, ud) and whose decoded heads live in
     * pool. Returns NULL when the connection cannot take another stream now (HTTP/1: one at a
     * time; HTTP/2: the peer's SETTINGS_MAX_CONCURRENT_STREAMS, or GOAWAY received). */
    dp_enc_t *(*new_stream)(dp_codec_conn_t *c, const dp_sink_ops_t *ops, void *ud,
                            dp_pool_t *pool);
    /* Client: whether new_stream would succeed now; false for good after GOAWAY or
     * "connection: close". */
    bool (*can_take_stream)(const dp_codec_conn_t *c);
    uint32_t (*active_streams)(const dp_codec_conn_t *c);
    /* No new streams (GOAWAY, or connection: close on the next response); closes once the
     * streams in flight are done. */
    void (*go_away)(dp_codec_conn_t *c);
    /* Closes now: every open stream gets on_done(DP_RESET_CONN_TERMINATED), then on_close. */
    void (*close)(dp_codec_conn_t *c);
    /* Server, HTTP/1 (NULL for HTTP/2): answers the request head whose beginning on_head_begin
     * announced, and which has not ended, with status and body (text/plain, "connection:
     * close"), then closes as after a malformed request (on_close DP_RESET_PROTOCOL). */
    void (*refuse_head)(dp_codec_conn_t *c, int status, const char *body);
} dp_codec_conn_ops_t;

struct dp_codec_conn {
    const dp_codec_conn_ops_t *ops;
};

typedef struct dp_codec_cb {
    /* Server: a request stream began (its head is on the way, through the sink). Returns the
     * sink ops for its events, with *ret_ud and the pool the codec allocates its heads from in
     * *ret_pool; NULL refuses it (HTTP/2: RST_STREAM REFUSED_STREAM; HTTP/1: 503 and close). */
    const dp_sink_ops_t *(*on_stream)(void *ud, dp_enc_t *enc, void **ret_ud, dp_pool_t **ret_pool);
    /* Client: the connection can take a stream again (an HTTP/1 response completed on a
     * keep-alive connection; an HTTP/2 stream ended). May be NULL. */
    void (*on_ready)(void *ud, dp_codec_conn_t *c);
    /* Server, HTTP/1: a read ended inside a request head, the first read of that head to do so
     * (a head that arrives whole in one read is not announced). The next on_stream, or
     * refuse_head, ends it. HTTP/2 opens the stream at the HEADERS frame instead. May be NULL. */
    void (*on_head_begin)(void *ud);
    /* The connection closed (every stream already had on_done). c is freed after this
     * returns. why: DP_RESET_NONE for an orderly close (idle, GOAWAY done, peer FIN between
     * messages), else the cause. */
    void (*on_close)(void *ud, dp_codec_conn_t *c, dp_reset_reason_t why);
} dp_codec_cb_t;

/* Codec constructors. fd is a connected, non-blocking TCP (or unix) socket; the codec owns it
 * from here on (it opens it with uv_tcp_open or uv_pipe_open and closes it). server: decode
 * requests and send responses; else the reverse. limits is copied. Returns NULL only on an
 * fd libuv refuses (the fd is then closed). */
dp_codec_conn_t *dp_h1_conn_new(uv_loop_t *loop, int fd, bool server,
                                const dp_http_limits_t *limits, const dp_codec_cb_t *cb, void *ud);
dp_codec_conn_t *dp_h2_conn_new(uv_loop_t *loop, int fd, bool server,
                                const dp_http_limits_t *limits, const dp_codec_cb_t *cb, void *ud);

/* The 24 bytes every HTTP/2 connection with prior knowledge starts with (RFC 9113 §3.4). */
#define DP_H2_PREFACE     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define DP_H2_PREFACE_LEN 24

#endif
