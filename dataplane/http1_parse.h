/* The pure half of the HTTP/1.1 codec: bytes in, heads and body events out, no I/O, so it can be
 * fuzzed (tests/fuzz/http1). dataplane/http1.c owns the sockets and the stream state machine.
 *
 * A message is read in two steps:
 *
 *  1. The head. The caller keeps the unconsumed bytes of the connection in one contiguous
 *     buffer and calls dp_h1_head_feed() with the whole buffer each time more bytes arrive.
 *     Lines are checked once each (the scan resumes where it stopped), strictly: CRLF line
 *     endings only (a bare LF or bare CR is 400), no obs-fold (400), a header name followed
 *     directly by ':' with no space in it (400), a method made of token characters, a request
 *     target of visible ASCII, exactly "HTTP/1.0" or "HTTP/1.1" (HTTP/0.9 and others: 400).
 *     The rest of each name and value is llhttp's to check when the head is built (names of
 *     token characters, values without controls but HT: else 400); the framing fields are
 *     checked whole by the scan, which decides on them.
 *     Framing is checked as RFC 9112 §6 and Envoy's http1 codec do: Content-Length must be
 *     1..18 digits, and any second Content-Length header is 400 (llhttp, as http-parser
 *     before it in Envoy's legacy codec, refuses them too, so identical duplicates are not
 *     folded);
 *     Transfer-Encoding on a request must be exactly "chunked" (one header, one coding), else
 *     501 as Envoy answers; Content-Length with Transfer-Encoding is 400; chunked on HTTP/1.0
 *     is 400; CONNECT is 400; a second Host, or none on an HTTP/1.1 request in origin form, is
 *     400. A head longer than limits.max_header_bytes is 431, more than
 *     limits.max_headers fields is 431. Once the head is valid it is tokenised by llhttp
 *     into a dp_http_head_t in the pool the caller gives.
 *
 *  2. The body, decoded by dp_h1_body_feed(): a Content-Length count, chunked (strict hex
 *     sizes of at most 16 digits, chunk extensions up to 4 KiB, CRLF after each chunk, trailers
 *     checked like header lines and bounded like the head), or up to EOF (responses only).
 *
 * Errors carry the HTTP status a server answers with (400, 431, 501) and a static detail. */
#ifndef SKIFF_DATAPLANE_HTTP1_PARSE_H
#define SKIFF_DATAPLANE_HTTP1_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/http.h"

/* How the body of a message is delimited. */
typedef enum dp_h1_framing {
    DP_H1_BODY_NONE,    /* no body (no length on a request, HEAD/1xx/204/304 responses) */
    DP_H1_BODY_LENGTH,  /* Content-Length bytes */
    DP_H1_BODY_CHUNKED, /* chunked transfer coding */
    DP_H1_BODY_EOF,     /* response without a length: everything until the peer closes */
} dp_h1_framing_t;

/* Head parser state; zero it with dp_h1_head_init() before each message. */
typedef struct dp_h1_head_parser {
    bool request;
    uint32_t max_bytes, max_headers;
    /* Response parsing: the request was HEAD, so the response has no body. */
    bool req_was_head;
    /* Scan progress (offsets into the caller's buffer). */
    size_t pos, searched, start;
    uint32_t lines, nheaders;
    /* Framing facts gathered while scanning. */
    bool has_cl, has_te, chunked, http10, absolute_form;
    uint32_t nhost;
    int64_t content_length;
    int status_code; /* response */
    /* Result. */
    size_t head_len; /* bytes of the head, leading empty lines and the final CRLF included */
    int err_status;  /* HTTP status for a local reply (400, 431, 501), or 502 for a response */
    const char *err; /* static detail */
    /* Facts the codec acts on once the head is built. */
    dp_h1_framing_t framing;
    bool keep_alive;      /* HTTP/1.1 without "connection: close", or 1.0 with keep-alive */
    bool expect_continue; /* request: "expect: 100-continue" (the header is stripped) */
    bool upgrade;         /* upgrade + "connection: upgrade" (kept in the headers) */
    /* Head building during the llhttp pass. */
    dp_pool_t *pool;
    dp_http_head_t *head;
    dp_str_t cur_name, cur_value, url, host;
    int last_cb;
} dp_h1_head_parser_t;

void dp_h1_head_init(dp_h1_head_parser_t *hp, bool request, const dp_http_limits_t *lim);

/* Scans buf[0..len) (the same buffer start each call, with more bytes appended). Returns 1 when
 * a complete and valid head was found (hp->head_len is its size), 0 when more bytes are needed,
 * -1 on an error (hp->err_status, hp->err). Touches no pool. */
int dp_h1_head_scan(dp_h1_head_parser_t *hp, const char *buf, size_t len);

/* Builds the head that dp_h1_head_scan() accepted, from buf[0..hp->head_len), in pool: method,
 * path as sent (absolute-form targets give scheme, authority and path), authority from Host,
 * lower-case header names, hop-by-hop headers removed (connection and what it names,
 * keep-alive, proxy-connection, transfer-encoding, upgrade unless an upgrade request, te unless
 * "trailers", expect: 100-continue), version, content_length, upgrade. Sets hp->framing and
 * hp->keep_alive. Returns the head, or NULL with hp->err_status/err set. */
dp_http_head_t *dp_h1_head_build(dp_h1_head_parser_t *hp, const char *buf, dp_pool_t *pool);

/* Body decoder state. */
typedef struct dp_h1_body_parser {
    dp_h1_framing_t framing;
    uint64_t remaining; /* LENGTH: bytes left; CHUNKED: bytes left in the chunk */
    int state;
    bool done;
    uint32_t max_bytes, max_headers, trailer_bytes, ntrailers;
    dp_headers_t *trailers; /* in pool, set when a chunked body had trailer fields */
    dp_pool_t *pool;
    int err_status;
    const char *err;
} dp_h1_body_parser_t;

void dp_h1_body_init(dp_h1_body_parser_t *bp, dp_h1_framing_t framing, int64_t content_length,
                     const dp_http_limits_t *lim, dp_pool_t *pool);

/* Called for each decoded body piece; return false to stop decoding after this piece (the
 * decoder returns the bytes consumed so far). */
typedef bool (*dp_h1_data_fn)(void *ud, const uint8_t *p, size_t n);

/* Decodes buf[0..len). Returns the bytes consumed (control lines only once complete; an
 * incomplete size or trailer line is left for the next call with more bytes), or -1 on a
 * framing error (bp->err_status, bp->err). bp->done is set at the end of the body; bytes after
 * it are not consumed. */
long dp_h1_body_feed(dp_h1_body_parser_t *bp, const char *buf, size_t len, dp_h1_data_fn fn,
                     void *ud);

/* The peer closed: 0 when that ends the body cleanly (EOF framing, or already done), else -1. */
int dp_h1_body_eof(dp_h1_body_parser_t *bp);

/* Whether a field may be serialised: a token name and a value without CR, LF, NUL or other
 * controls but HT (RFC 9110 §5.5). The encoder drops fields that fail, so no header injection
 * passes through it. */
bool dp_h1_field_ok(dp_str_t name, dp_str_t value);

/* Whether s is non-empty visible ASCII (no SP, no controls): for a method, path or authority
 * put on a request line. */
bool dp_h1_visible(dp_str_t s);

/* The reason phrase for a status code ("OK", "Bad Request"; "Unknown" when none). */
const char *dp_h1_reason(int status);

#endif
