/* A request stream of the HTTP connection manager, as the HTTP filters see it, and the HTTP
 * filter interface (STYLE.md §7).
 *
 * The connection manager (dataplane/hcm.c) creates a dp_stream_t for each request, runs the
 * listener's http_filters over the request head in order, and hands the request body and
 * trailers to the last one, the router (handlers/router/), which is the terminal filter: it
 * sends the request upstream and the response back with dp_stream_encode_*(). Response heads
 * pass the filters' on_response_headers in reverse order. A filter may answer the request
 * itself with dp_stream_local_reply() (then it returns DP_FILTER_STOP), or pause the chain
 * (DP_FILTER_STOP) and resume it later with dp_stream_continue().
 *
 * What a filter can rely on: the stream, its pool and its pinned snapshot live until the
 * stream's on_stream_done has run for every filter. Worker thread only. */
#ifndef SKIFF_DATAPLANE_STREAM_H
#define SKIFF_DATAPLANE_STREAM_H

#include <stdbool.h>
#include <stdint.h>

#include "dataplane/conn.h"
#include "dataplane/hcm.h"
#include "dataplane/http.h"

/* Envoy's response flags (%RESPONSE_FLAGS% in access logs), a bit each. */
#define DP_RESPONSE_FLAGS(X)                                \
    X(NR, "NR")   /* no route */                            \
    X(NC, "NC")   /* no cluster */                          \
    X(UH, "UH")   /* no healthy upstream host */            \
    X(UF, "UF")   /* upstream connection failure */         \
    X(UO, "UO")   /* upstream overflow (circuit breaker) */ \
    X(UT, "UT")   /* upstream request timeout */            \
    X(UR, "UR")   /* upstream remote reset */               \
    X(UC, "UC")   /* upstream connection termination */     \
    X(URX, "URX") /* upstream retry limit exceeded */       \
    X(LR, "LR")   /* local reset */                         \
    X(DC, "DC")   /* downstream connection termination */   \
    X(SI, "SI")   /* stream idle timeout */                 \
    X(DI, "DI")   /* delay injected */                      \
    X(FI, "FI")   /* fault injected */                      \
    X(RL, "RL")   /* rate limited locally */                \
    X(DPE, "DPE") /* downstream protocol error */           \
    X(UPE, "UPE") /* upstream protocol error */

enum {
#define DP_RF_BIT_(id, s) DP_RF_BIT_##id,
    DP_RESPONSE_FLAGS(DP_RF_BIT_)
#undef DP_RF_BIT_
};
#define DP_RF(id) (1u << DP_RF_BIT_##id)

/* Writes the flags as Envoy prints them ("UF,URX"; "-" when none) into buf; returns buf. */
const char *dp_response_flags_str(uint32_t flags, char *buf, size_t len);

struct dp_route_config;
struct dp_vhost;
struct dp_route;

typedef struct dp_stream {
    dp_pool_t *pool;
    dp_wctx_t *w;
    dp_snapshot_t *snap;       /* the worker's current one at the request, pinned */
    const dp_accepted_t *conn; /* the downstream connection: addresses, SNI */
    const dp_hcm_config_t *hcm;
    dp_http_head_t *req;   /* the request head (set before the first filter runs) */
    bool grpc;             /* content-type application/grpc… */
    bool request_ended;    /* the whole request has arrived */
    bool response_started; /* a final response head went downstream */
    int response_status;   /* the final status sent (0 before) */
    uint32_t response_flags;
    uint64_t start_ms; /* uv_now at the request head */
    /* The route, chosen by the connection manager before the first filter runs (NULL: no
     * route; the router answers 404 NR). */
    const struct dp_route_config *rc;
    const struct dp_vhost *vh;
    const struct dp_route *route;
    /* What the access log reads (dataplane/access_log.h). Set by the connection manager:
     * the wall clock at the request head (us since the epoch), the loop times the request
     * ended and the response head went out (0: not yet), the body bytes each way, the final
     * response head and trailers sent. Set by the router when it opens an upstream stream:
     * the host and the cluster's name. details: RESPONSE_CODE_DETAILS when known ("via_upstream",
     * "direct_response"); NULL lets the log derive it from the response flags. */
    int64_t start_wall_us;
    uint64_t request_end_ms, response_start_ms;
    uint64_t bytes_received, bytes_sent;
    const dp_http_head_t *resp;
    const dp_headers_t *resp_trailers;
    bool has_upstream_host;
    dp_addr_t upstream_host;
    const char *upstream_cluster;
    const char *details;
} dp_stream_t;

/* What a filter callback returns. */
typedef enum dp_filter_status {
    DP_FILTER_CONTINUE, /* run the next filter */
    DP_FILTER_STOP,     /* paused (or replied); dp_stream_continue() resumes the chain */
} dp_filter_status_t;

typedef struct dp_http_filter_type {
    const char *name;     /* "envoy.filters.http.router" */
    const char *type_url; /* its typed_config type */
    bool terminal;        /* the router: receives the request body and trailers */
    size_t ctx_size;      /* per-stream state, zeroed, from the stream's pool */
    /* Request head, in http_filters order. May return STOP (then continue or reply later). */
    dp_filter_status_t (*on_request_headers)(dp_stream_t *s, void *ctx, const void *conf,
                                             bool end_stream);
    /* Terminal filter only: the request body and trailers. */
    void (*on_request_data)(dp_stream_t *s, void *ctx, const void *conf, const uint8_t *p, size_t n,
                            bool end_stream);
    void (*on_request_trailers)(dp_stream_t *s, void *ctx, const void *conf, dp_headers_t *t);
    /* Terminal filter only: the downstream's send queue drained below its low watermark. */
    void (*on_downstream_drained)(dp_stream_t *s, void *ctx, const void *conf);
    /* A response head on its way downstream, in reverse order; may change it. */
    void (*on_response_headers)(dp_stream_t *s, void *ctx, const void *conf, dp_http_head_t *h,
                                bool end_stream);
    /* The stream is over (completed, reset, or the connection closed): release what the
     * filter holds (timers, upstream streams). Called once for every filter that ran. */
    void (*on_stream_done)(dp_stream_t *s, void *ctx, const void *conf);
} dp_http_filter_type_t;

/* Resumes a chain a filter paused with DP_FILTER_STOP (at the next filter). */
void dp_stream_continue(dp_stream_t *s);

/* Sends a response made here: status, an optional text body, and the response flag (0 when
 * none) and details for the logs. To a gRPC caller it is a trailers-only gRPC response with
 * grpc-status mapped from status as Envoy does (503 → UNAVAILABLE) and grpc-message = body.
 * After a response has started it resets the stream instead. The chain ends. */
void dp_stream_local_reply(dp_stream_t *s, int status, const char *body, uint32_t flag);
/* The same with headers to add to the reply (x-envoy-overloaded: true, x-envoy-ratelimited). */
void dp_stream_local_reply_headers(dp_stream_t *s, int status, const char *body, uint32_t flag,
                                   const dp_header_t *extra, size_t n_extra);

/* The response from the terminal filter: head (through the filters' on_response_headers),
 * body and trailers to the downstream. Return 0, or a negative errno once the downstream can
 * no longer take them (the stream is ending; expect on_stream_done). */
int dp_stream_encode_headers(dp_stream_t *s, dp_http_head_t *h, bool end_stream);
int dp_stream_encode_data(dp_stream_t *s, const uint8_t *p, size_t n, bool end_stream);
int dp_stream_encode_trailers(dp_stream_t *s, dp_headers_t *t);

/* Back-pressure on the downstream request body, counted; and the bytes waiting to go to the
 * downstream. */
void dp_stream_read_disable(dp_stream_t *s, bool disable);
size_t dp_stream_buffered(const dp_stream_t *s);

/* Aborts the stream downstream (RST_STREAM, or closing an HTTP/1 connection). */
void dp_stream_reset(dp_stream_t *s, uint32_t flag);

/* The route-level config of the filter named filter_name (the http_filters name, which is the
 * typed_per_filter_config key), most specific first: route, virtual host, route
 * configuration. NULL when the chosen route has none. */
const void *dp_stream_route_config(const dp_stream_t *s, const char *filter_name);

/* Milliseconds on the worker's loop clock. */
uint64_t dp_stream_now_ms(const dp_stream_t *s);

#endif
