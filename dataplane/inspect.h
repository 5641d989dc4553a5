/* Pure parsers behind the listener filters: the TLS ClientHello (tls_inspector) and the start
 * of an HTTP request (http_inspector). They look at the bytes a connection has sent so far
 * (peeked, not consumed) and say whether they are enough. Any thread, no allocation. */
#ifndef SKIFF_DATAPLANE_INSPECT_H
#define SKIFF_DATAPLANE_INSPECT_H

#include <stddef.h>
#include <stdint.h>

typedef enum dp_inspect_result {
    DP_INSPECT_MORE,  /* a valid beginning: more bytes are needed to decide */
    DP_INSPECT_FOUND, /* the protocol was found (and its details filled in) */
    DP_INSPECT_NONE,  /* not this protocol */
    DP_INSPECT_ERROR, /* this protocol, but malformed or over the size limit: close */
} dp_inspect_result_t;

/* Envoy's tls_inspector limit on the ClientHello, and http_inspector's on the request line. */
#define DP_TLS_INSPECT_MAX  (64 * 1024)
#define DP_HTTP_INSPECT_MAX (8 * 1024)

#define DP_TLS_MAX_ALPN 16

typedef struct dp_tls_hello {
    char sni[256]; /* the host_name of server_name, lower case; "" when none */
    size_t n_alpn; /* protocols of application_layer_protocol_negotiation, in order */
    char alpn[DP_TLS_MAX_ALPN][64]; /* longer names and those past DP_TLS_MAX_ALPN are dropped */
} dp_tls_hello_t;

/* Parses a ClientHello that may span several handshake records. FOUND fills *out; NONE when
 * the first bytes are not a TLS handshake record carrying a ClientHello; ERROR for a
 * ClientHello longer than DP_TLS_INSPECT_MAX or whose fields overrun it (an SNI over 255
 * bytes included). */
dp_inspect_result_t dp_tls_inspect(const uint8_t *buf, size_t len, dp_tls_hello_t *out);

/* Detects HTTP/2 prior knowledge (the connection preface: *proto = "h2c") or an HTTP/1.x
 * request line ("METHOD target HTTP/1.1\r\n": "http/1.1" or "http/1.0"). NONE for anything
 * else, including a request line over DP_HTTP_INSPECT_MAX. *proto is a static string. */
dp_inspect_result_t dp_http_inspect(const uint8_t *buf, size_t len, const char **proto);

#endif
