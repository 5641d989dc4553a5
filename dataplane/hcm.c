/* The HTTP connection manager's runtime: one hcm_conn_t per accepted connection, one
 * hcm_stream_t per request, the HTTP filter chain, local replies, and the request and response
 * header handling Envoy's connection manager does (x-forwarded-*, x-request-id, server, date,
 * x-envoy-* from untrusted peers). */
#include "dataplane/hcm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dataplane/access_log.h"
#include "dataplane/conn.h"
#include "dataplane/filter_chain.h"
#include "dataplane/log.h"
#include "dataplane/path.h"
#include "dataplane/route.h"
#include "dataplane/stream.h"

/* How long AUTO codec detection waits for the first bytes. */
#define SNIFF_TIMEOUT_MS 15000

typedef struct hcm_stream hcm_stream_t;

typedef struct hcm_conn {
    dp_conn_link_t link;
    dp_wctx_t *w;
    dp_accepted_t a; /* a.fd is handed to the codec; a.snap is held until the end */
    const dp_hcm_config_t *cfg;
    dp_codec_conn_t *codec;
    uv_poll_t sniff;
    uv_timer_t timer;  /* sniff timeout, then the connection idle timeout */
    dp_turn_work_t reaper; /* frees ended streams after the callbacks that ended them return */
    hcm_stream_t *dead;
    int handles;            /* open uv handles */
    int fd;                 /* ours until the codec takes it, then -1 */
    bool sniffing;          /* the poll handle is initialised */
    uint64_t idle_since_ms; /* loop time the last stream ended (or the codec started) */
    uint64_t head_since_ms; /* HTTP/1: loop time a request head began arriving (head_pending) */
    bool head_pending;      /* on_head_begin, and no on_stream since */
    unsigned long id;       /* for the logs */
    bool codec_closed;
    bool closing;
    bool http2;
    hcm_stream_t *streams;
    uint32_t n_streams;
    char remote_ip[INET6_ADDRSTRLEN];
} hcm_conn_t;

/* One entry of the chain a stream runs: the enabled filters, the terminal one last. */
typedef struct chain_entry {
    const dp_http_filter_type_t *type;
    const void *conf;
    void *ctx;
    bool ran; /* on_request_headers was called: on_stream_done is due */
} chain_entry_t;

struct hcm_stream {
    dp_stream_t s; /* first: filters see this part */
    hcm_conn_t *c;
    hcm_stream_t *prev, *next;
    dp_enc_t *enc; /* the downstream codec stream; NULL once it is over */
    chain_entry_t *chain;
    size_t n_chain, next_filter;
    bool at_terminal; /* the request head has reached the terminal filter */
    bool head_ended;  /* the request head carried end_stream */
    bool finished;
    bool timed_out; /* a stream timeout answered it */
    /* body and trailers that arrived while the chain was paused before the terminal filter */
    dp_bufq_t held;
    bool held_end;
    dp_headers_t *held_trailers;
    int read_disabled;
    bool hold_disabled;         /* the hold above read-disabled the downstream */
    uint64_t start_ms, last_ms; /* loop time at the stream's start and its last activity */
};

static void conn_maybe_free(hcm_conn_t *c);
static void stream_finish(hcm_stream_t *hs, dp_reset_reason_t why);
static void tick_arm(hcm_conn_t *c);

/* ---- small helpers ---- */

uint64_t dp_stream_now_ms(const dp_stream_t *s)
{
    return uv_now(s->w->loop);
}

/* A version-4 UUID from the worker's generator, as Envoy's x-request-id (8-4-4-4-12). */
static void uuid4(dp_wctx_t *w, char out[37])
{
    uint64_t hi = dp_wctx_random(w), lo = dp_wctx_random(w);
    hi = (hi & ~0xf000ull) | 0x4000ull;
    lo = (lo & 0x3fffffffffffffffull) | 0x8000000000000000ull;
    char a[16], b[16];
    dp_hex_u64(a, hi);
    dp_hex_u64(b, lo);
    memcpy(out, a, 8);
    out[8] = '-';
    memcpy(out + 9, a + 8, 4);
    out[13] = '-';
    memcpy(out + 14, a + 12, 4);
    out[18] = '-';
    memcpy(out + 19, b, 4);
    out[23] = '-';
    memcpy(out + 24, b + 4, 12);
    out[36] = '\0';
}

/* The Date header value, formatted once a second per thread. */
static dp_str_t http_date(void)
{
    static _Thread_local char buf[40];
    static _Thread_local time_t last;
    static _Thread_local size_t len;
    time_t now = time(NULL);
    if (now != last) {
        struct tm tm;
        gmtime_r(&now, &tm);
        len = strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        last = now;
    }
    return (dp_str_t){buf, len};
}

/* ---- the filter chain ---- */

static void chain_build(hcm_stream_t *hs)
{
    const dp_hcm_config_t *cfg = hs->c->cfg;
    size_t n = 0;
    for (size_t i = 0; i < cfg->n_filters; i++)
        n += cfg->filters[i].type != NULL && !cfg->filters[i].disabled;
    hs->chain = n ? dp_pool_calloc(hs->s.pool, n * sizeof(*hs->chain)) : NULL;
    for (size_t i = 0; i < cfg->n_filters; i++) {
        const dp_http_filter_t *f = &cfg->filters[i];
        if (f->type == NULL || f->disabled)
            continue;
        chain_entry_t *e = &hs->chain[hs->n_chain++];
        e->type = f->type;
        e->conf = f->conf;
        e->ctx = f->type->ctx_size ? dp_pool_calloc(hs->s.pool, f->type->ctx_size) : NULL;
        if (f->type->terminal)
            break; /* nothing runs after the terminal filter */
    }
}

static const chain_entry_t *chain_terminal(const hcm_stream_t *hs)
{
    if (hs->n_chain && hs->chain[hs->n_chain - 1].type->terminal)
        return &hs->chain[hs->n_chain - 1];
    return NULL;
}

/* Delivers what was held while the chain was paused, now that the terminal filter has the
 * head. */
static void chain_release_held(hcm_stream_t *hs)
{
    const chain_entry_t *t = chain_terminal(hs);
    while (hs->enc && hs->held.head) {
        dp_bufq_chunk_t *ch = hs->held.head;
        hs->held.head = ch->next;
        if (hs->held.head == NULL)
            hs->held.tail = NULL;
        hs->held.bytes -= ch->len;
        bool last = hs->held.head == NULL && hs->held_end && hs->held_trailers == NULL;
        t->type->on_request_data(&hs->s, t->ctx, t->conf, ch->data, ch->len, last);
        free(ch);
    }
    if (hs->enc && hs->held_trailers) {
        dp_headers_t *tr = hs->held_trailers;
        hs->held_trailers = NULL;
        t->type->on_request_trailers(&hs->s, t->ctx, t->conf, tr);
    }
    /* The hold pushed back on the peer: the terminal filter manages that from here. */
    if (hs->hold_disabled && hs->enc) {
        hs->hold_disabled = false;
        dp_stream_read_disable(&hs->s, false);
    }
}

static void chain_run(hcm_stream_t *hs)
{
    while (hs->enc && hs->next_filter < hs->n_chain) {
        chain_entry_t *e = &hs->chain[hs->next_filter++];
        e->ran = true;
        if (e->type->on_request_headers == NULL)
            continue;
        dp_filter_status_t st =
            e->type->on_request_headers(&hs->s, e->ctx, e->conf, hs->head_ended);
        if (e->type->terminal) {
            hs->at_terminal = true;
            chain_release_held(hs);
            return;
        }
        if (st == DP_FILTER_STOP)
            return;
    }
    if (hs->enc && !hs->at_terminal && !hs->s.response_started)
        dp_stream_local_reply(&hs->s, 404, NULL, DP_RF(NR)); /* no router in the chain */
}

const void *dp_stream_route_config(const dp_stream_t *s, const char *filter_name)
{
    if (s->route == NULL)
        return NULL;
    const struct dp_route_filter_conf *fc = dp_route_filter_conf(s->vh, s->route, filter_name);
    return fc ? fc->conf : NULL;
}

void dp_stream_continue(dp_stream_t *s)
{
    chain_run((hcm_stream_t *)s);
}

/* ---- sending downstream ---- */

static void status_stats(hcm_stream_t *hs, int status)
{
    const dp_hcm_stats_t *st = &hs->c->cfg->stats;
    int k = status / 100 - 1;
    if (k >= 0 && k < 5 && st->rq_xx[k])
        dp_counter_inc(st->rq_xx[k]);
}

int dp_stream_encode_headers(dp_stream_t *s, dp_http_head_t *h, bool end_stream)
{
    hcm_stream_t *hs = (hcm_stream_t *)s;
    hs->last_ms = uv_now(s->w->loop);
    if (hs->enc == NULL)
        return -EPIPE;
    if (h->status >= 200 || h->status == 101) {
        for (size_t i = hs->n_chain; i-- > 0;) {
            chain_entry_t *e = &hs->chain[i];
            if (e->ran && e->type->on_response_headers)
                e->type->on_response_headers(s, e->ctx, e->conf, h, end_stream);
        }
        const dp_hcm_config_t *cfg = hs->c->cfg;
        /* Envoy overwrites server by default (server_header_transformation OVERWRITE) and adds
         * date. */
        const char *srv = cfg->server_name ? cfg->server_name : "envoy";
        dp_headers_remove(&h->headers, "server", 6);
        dp_headers_add_ref(&h->headers, s->pool, DP_STR("server"), (dp_str_t){srv, strlen(srv)});
        if (DP_HDR_GET(&h->headers, "date") == NULL)
            dp_headers_add_ref(&h->headers, s->pool, DP_STR("date"), http_date());
        s->response_started = true;
        s->response_status = h->status;
        s->resp = h;
        s->response_start_ms = hs->last_ms;
        status_stats(hs, h->status);
    }
    return hs->enc->ops->headers(hs->enc, h, end_stream);
}

int dp_stream_encode_data(dp_stream_t *s, const uint8_t *p, size_t n, bool end_stream)
{
    hcm_stream_t *hs = (hcm_stream_t *)s;
    hs->last_ms = uv_now(s->w->loop);
    if (hs->enc == NULL)
        return -EPIPE;
    s->bytes_sent += n;
    return hs->enc->ops->data(hs->enc, p, n, end_stream);
}

int dp_stream_encode_trailers(dp_stream_t *s, dp_headers_t *t)
{
    hcm_stream_t *hs = (hcm_stream_t *)s;
    if (hs->enc == NULL)
        return -EPIPE;
    s->resp_trailers = t;
    return hs->enc->ops->trailers(hs->enc, t);
}

void dp_stream_read_disable(dp_stream_t *s, bool disable)
{
    hcm_stream_t *hs = (hcm_stream_t *)s;
    hs->read_disabled += disable ? 1 : -1;
    if (hs->enc)
        hs->enc->ops->read_disable(hs->enc, disable);
}

size_t dp_stream_buffered(const dp_stream_t *s)
{
    const hcm_stream_t *hs = (const hcm_stream_t *)s;
    return hs->enc ? hs->enc->ops->buffered(hs->enc) : 0;
}

void dp_stream_reset(dp_stream_t *s, uint32_t flag)
{
    hcm_stream_t *hs = (hcm_stream_t *)s;
    s->response_flags |= flag;
    if (hs->enc == NULL)
        return;
    dp_enc_t *e = hs->enc;
    hs->enc = NULL;
    if (hs->c->cfg->stats.rq_tx_reset)
        dp_counter_inc(hs->c->cfg->stats.rq_tx_reset);
    e->ops->reset(e, DP_RESET_LOCAL);
    stream_finish(hs, DP_RESET_LOCAL);
}

/* Envoy's HTTP → gRPC status mapping for local replies (Grpc::Utility::httpToGrpcStatus). */
static int grpc_status_for(int http)
{
    switch (http) {
    case 400:
        return 13; /* INTERNAL */
    case 401:
        return 16; /* UNAUTHENTICATED */
    case 403:
        return 7; /* PERMISSION_DENIED */
    case 404:
        return 12; /* UNIMPLEMENTED */
    case 429:
    case 502:
    case 503:
    case 504:
        return 14; /* UNAVAILABLE */
    default:
        return 2; /* UNKNOWN */
    }
}

void dp_stream_local_reply(dp_stream_t *s, int status, const char *body, uint32_t flag)
{
    dp_stream_local_reply_headers(s, status, body, flag, NULL, 0);
}

void dp_stream_local_reply_headers(dp_stream_t *s, int status, const char *body, uint32_t flag,
                                   const dp_header_t *extra, size_t n_extra)
{
    hcm_stream_t *hs = (hcm_stream_t *)s;
    s->response_flags |= flag;
    if (hs->enc == NULL)
        return;
    if (s->response_started) {
        dp_stream_reset(s, 0);
        return;
    }
    size_t blen = body ? strlen(body) : 0;
    dp_http_head_t *h = dp_pool_calloc(s->pool, sizeof(*h));
    h->content_length = -1;
    for (size_t i = 0; i < n_extra; i++)
        dp_headers_add_ref(&h->headers, s->pool, extra[i].name, extra[i].value);
    bool head_req = s->req && DP_STR_EQ(s->req->method, "HEAD");
    if (s->grpc) {
        /* A trailers-only gRPC response. */
        char code[8];
        int n = snprintf(code, sizeof(code), "%d", grpc_status_for(status));
        h->status = 200;
        dp_headers_add_ref(&h->headers, s->pool, DP_STR("content-type"),
                           DP_STR("application/grpc"));
        dp_headers_add(&h->headers, s->pool, "grpc-status", 11, code, (size_t)n);
        if (blen)
            dp_headers_add(&h->headers, s->pool, "grpc-message", 12, body, blen);
        dp_stream_encode_headers(s, h, true);
        return;
    }
    h->status = status;
    char len[24];
    int n = snprintf(len, sizeof(len), "%zu", blen);
    dp_headers_add(&h->headers, s->pool, "content-length", 14, len, (size_t)n);
    if (blen)
        dp_headers_add_ref(&h->headers, s->pool, DP_STR("content-type"), DP_STR("text/plain"));
    bool end = blen == 0 || head_req;
    if (dp_stream_encode_headers(s, h, end) == 0 && !end)
        dp_stream_encode_data(s, (const uint8_t *)body, blen, true);
}

/* ---- request headers as Envoy's connection manager mutates them ---- */

static void mutate_request(hcm_stream_t *hs, dp_http_head_t *h)
{
    const dp_hcm_config_t *cfg = hs->c->cfg;
    dp_pool_t *p = hs->s.pool;
    /* No address is internal (Envoy's internal_address_config, empty by default): with
     * use_remote_address every peer is external, an edge request. */
    bool edge = cfg->use_remote_address;
    if (edge) {
        /* An untrusted peer may not steer us with x-envoy-* headers. */
        uint32_t k = 0;
        for (uint32_t i = 0; i < h->headers.n; i++) {
            dp_str_t nm = h->headers.v[i].name;
            if (nm.n >= 8 && memcmp(nm.p, "x-envoy-", 8) == 0)
                continue;
            h->headers.v[k++] = h->headers.v[i];
        }
        h->headers.n = k;
    }
    if (cfg->use_remote_address) {
        const dp_header_t *xff = DP_HDR_GET(&h->headers, "x-forwarded-for");
        const char *ip = hs->c->remote_ip;
        if (xff) {
            size_t n = xff->value.n + 1 + strlen(ip);
            char *v = dp_pool_alloc(p, n + 1);
            snprintf(v, n + 1, DP_STR_FMT ",%s", DP_STR_ARG(xff->value), ip);
            dp_headers_set(&h->headers, p, "x-forwarded-for", 15, v, n);
        } else if (ip[0]) {
            dp_headers_add(&h->headers, p, "x-forwarded-for", 15, ip, strlen(ip));
        }
        if (ip[0])
            dp_headers_set(&h->headers, p, "x-envoy-external-address", 24, ip, strlen(ip));
    }
    /* A previous hop that is not trusted cannot claim the scheme: x-forwarded-proto is the
     * connection's unless xff_num_trusted_hops vouches for the one given. */
    if (cfg->xff_num_trusted_hops == 0 || DP_HDR_GET(&h->headers, "x-forwarded-proto") == NULL)
        dp_headers_set(&h->headers, p, "x-forwarded-proto", 17, "http", 4);
    /* No request is internal (see above), so a client's claim to be one is dropped. */
    DP_HDR_REMOVE(&h->headers, "x-envoy-internal");
    /* Nor did a client present a certificate (no connection is mTLS): the identity an
     * x-forwarded-client-cert claims is not forwarded (Envoy's mutateXfccRequestHeader). */
    if (!cfg->xfcc_always_forward)
        DP_HDR_REMOVE(&h->headers, "x-forwarded-client-cert");
    const dp_header_t *rid = DP_HDR_GET(&h->headers, "x-request-id");
    if (cfg->generate_request_id && (rid == NULL || (edge && !cfg->preserve_external_request_id))) {
        char id[37];
        uuid4(hs->c->w, id);
        dp_headers_set(&h->headers, p, "x-request-id", 12, id, 36);
    }
    if (h->scheme.p == NULL)
        h->scheme = DP_STR("http");
}

/* Envoy's path normalisation before routing (ConnectionManagerUtility::maybeNormalizePath;
 * dataplane/path.h), on the path the routes, the filters and the upstream all see. Returns false
 * when the stream got its local reply instead: 400 for a path that cannot be normalised or
 * escaped slashes under REJECT_REQUEST (and under UNESCAPE_AND_REDIRECT for gRPC, which does
 * not follow redirects), 307 to the unescaped path under UNESCAPE_AND_REDIRECT. */
static bool path_normalize(hcm_stream_t *hs, dp_http_head_t *h)
{
    const dp_hcm_config_t *cfg = hs->c->cfg;
    unsigned flags = cfg->path_flags;
    if (!dp_path_may_change(h->path.p, h->path.n, flags))
        return true;
    char *out = dp_pool_alloc(hs->s.pool, h->path.n + 1);
    bool slashes;
    long n = dp_path_normalize(h->path.p, h->path.n, flags, out, &slashes);
    bool redirect = slashes && cfg->escaped_slashes == DP_SLASHES_REDIRECT;
    if (n < 0 || (slashes && cfg->escaped_slashes == DP_SLASHES_REJECT) ||
        (redirect && hs->s.grpc)) {
        if (cfg->stats.rq_failed_path_normalization)
            dp_counter_inc(cfg->stats.rq_failed_path_normalization);
        hs->s.details = "path_normalization_failed";
        dp_stream_local_reply(&hs->s, 400, NULL, 0);
        return false;
    }
    out[n] = '\0';
    h->path = (dp_str_t){out, (size_t)n};
    if (redirect) {
        if (cfg->stats.rq_redirected_with_normalized_path)
            dp_counter_inc(cfg->stats.rq_redirected_with_normalized_path);
        hs->s.details = "path_normalization_failed";
        const dp_header_t location = {DP_STR("location"), h->path};
        dp_stream_local_reply_headers(&hs->s, 307, NULL, 0, &location, 1);
        return false;
    }
    return true;
}

/* common_http_protocol_options.headers_with_underscores_action, as Envoy's codecs apply it:
 * DROP_HEADER removes every request header whose name has an underscore, REJECT_REQUEST
 * refuses the request (HTTP/1: 400 and the connection closes after it; HTTP/2: the stream is
 * reset). Counted in http1./http2.dropped_headers_with_underscores and
 * requests_rejected_with_underscores_in_headers. Returns false when the stream was refused. */
static bool underscores_check(hcm_stream_t *hs, dp_http_head_t *h)
{
    const dp_hcm_config_t *cfg = hs->c->cfg;
    int v = h->version == DP_HTTP_2 ? 1 : 0;
    for (uint32_t i = 0; i < h->headers.n;) {
        dp_str_t name = h->headers.v[i].name;
        if (memchr(name.p, '_', name.n) == NULL) {
            i++;
            continue;
        }
        if (cfg->underscores == DP_UNDERSCORES_DROP) {
            size_t gone = dp_headers_remove(&h->headers, name.p, name.n);
            if (cfg->stats.underscores_dropped[v])
                dp_counter_add(cfg->stats.underscores_dropped[v], gone);
            continue;
        }
        if (cfg->stats.underscores_rejected[v])
            dp_counter_inc(cfg->stats.underscores_rejected[v]);
        if (v == 1) {
            dp_stream_reset(&hs->s, DP_RF(DPE));
        } else {
            hs->s.details = "http1.unexpected_underscore";
            if (hs->c->codec)
                hs->c->codec->ops->go_away(hs->c->codec);
            dp_stream_local_reply(&hs->s, 400, NULL, DP_RF(DPE));
        }
        return false;
    }
    return true;
}

/* ---- the downstream codec's events ---- */

static void on_req_headers(void *ud, dp_http_head_t *h, bool end_stream)
{
    hcm_stream_t *hs = ud;
    const dp_hcm_stats_t *st = &hs->c->cfg->stats;
    if (h->status) /* a head with a status is no request */
        return;
    hs->s.req = h;
    hs->s.start_ms = uv_now(hs->c->w->loop);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    hs->s.start_wall_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    hs->head_ended = end_stream;
    hs->s.request_ended = end_stream;
    if (end_stream)
        hs->s.request_end_ms = hs->s.start_ms;
    if (st->rq_total)
        dp_counter_inc(st->rq_total);
    dp_counter_t *vt = h->version == DP_HTTP_2 ? st->rq_http2_total : st->rq_http1_total;
    if (vt)
        dp_counter_inc(vt);
    const dp_header_t *ct = DP_HDR_GET(&h->headers, "content-type");
    hs->s.grpc = ct && ct->value.n >= 16 && memcmp(ct->value.p, "application/grpc", 16) == 0;
    if (h->authority.p == NULL || h->authority.n == 0) {
        /* HTTP/1.1 requires Host; Envoy answers 400 without it. */
        if (h->version != DP_HTTP_10) {
            dp_stream_local_reply(&hs->s, 400, "missing host header", DP_RF(DPE));
            return;
        }
        h->authority = DP_STR("");
    }
    if (h->upgrade && !hs->c->cfg->websocket) {
        dp_stream_local_reply(&hs->s, 403, "upgrade failed", 0);
        return;
    }
    if (hs->c->cfg->underscores != DP_UNDERSCORES_ALLOW && !underscores_check(hs, h))
        return;
    if (!path_normalize(hs, h))
        return;
    mutate_request(hs, h);
    /* The route is chosen once, before the filters, so that each can read its route-level
     * config (Envoy's cached route). */
    const dp_hcm_config_t *cfg = hs->c->cfg;
    const dp_route_config_t *rc = cfg->routes;
    if (cfg->rds_name)
        rc = dp_snapshot_find_route(hs->s.snap, cfg->rds_name);
    if (rc) {
        const dp_vhost_t *vh = NULL;
        hs->s.rc = rc;
        hs->s.route = dp_route_select(rc, h, dp_wctx_random(hs->c->w), &vh);
        hs->s.vh = vh;
    }
    chain_build(hs);
    chain_run(hs);
}

static void on_req_data(void *ud, const uint8_t *p, size_t n, bool end_stream)
{
    hcm_stream_t *hs = ud;
    hs->last_ms = uv_now(hs->c->w->loop);
    hs->s.bytes_received += n;
    if (end_stream) {
        hs->s.request_ended = true;
        hs->s.request_end_ms = hs->last_ms;
    }
    if (hs->s.req == NULL)
        return;
    if (hs->at_terminal) {
        const chain_entry_t *t = chain_terminal(hs);
        t->type->on_request_data(&hs->s, t->ctx, t->conf, p, n, end_stream);
        return;
    }
    if (hs->finished)
        return;
    /* The chain is paused: hold the body, pushing back on the peer past the limit. */
    dp_bufq_push(&hs->held, p, n);
    hs->held_end = end_stream;
    if (hs->held.bytes > hs->c->cfg->limits.buffer_limit && hs->enc && !hs->hold_disabled) {
        hs->hold_disabled = true;
        dp_stream_read_disable(&hs->s, true);
    }
}

static void on_req_trailers(void *ud, dp_headers_t *t)
{
    hcm_stream_t *hs = ud;
    hs->s.request_ended = true;
    hs->s.request_end_ms = uv_now(hs->c->w->loop);
    if (hs->s.req == NULL)
        return;
    if (hs->at_terminal) {
        const chain_entry_t *te = chain_terminal(hs);
        te->type->on_request_trailers(&hs->s, te->ctx, te->conf, t);
        return;
    }
    hs->held_trailers = t;
}

static void on_drained(void *ud)
{
    hcm_stream_t *hs = ud;
    const chain_entry_t *t = hs->at_terminal ? chain_terminal(hs) : NULL;
    if (t && t->type->on_downstream_drained)
        t->type->on_downstream_drained(&hs->s, t->ctx, t->conf);
}

static void on_done(void *ud, dp_reset_reason_t why)
{
    hcm_stream_t *hs = ud;
    hs->enc = NULL;
    if (why != DP_RESET_NONE) {
        hs->s.response_flags |= DP_RF(DC);
        if (hs->c->cfg->stats.rq_rx_reset && why == DP_RESET_REMOTE)
            dp_counter_inc(hs->c->cfg->stats.rq_rx_reset);
    }
    stream_finish(hs, why);
}

static const dp_sink_ops_t stream_sink = {
    .on_headers = on_req_headers,
    .on_data = on_req_data,
    .on_trailers = on_req_trailers,
    .on_drained = on_drained,
    .on_done = on_done,
};

static void on_reap(void *ud)
{
    hcm_conn_t *c = ud;
    while (c->dead) {
        hcm_stream_t *hs = c->dead;
        c->dead = hs->next;
        dp_snapshot_t *snap = hs->s.snap;
        dp_pool_free(hs->s.pool);
        dp_snapshot_unref(snap);
    }
    conn_maybe_free(c);
}

/* Ends a stream once: every filter that ran releases its state, then the pool goes. */
static void stream_finish(hcm_stream_t *hs, dp_reset_reason_t why)
{
    if (hs->finished)
        return;
    hs->finished = true;
    hcm_conn_t *c = hs->c;
    for (size_t i = 0; i < hs->n_chain; i++) {
        chain_entry_t *e = &hs->chain[i];
        if (e->ran && e->type->on_stream_done)
            e->type->on_stream_done(&hs->s, e->ctx, e->conf);
    }
    const dp_hcm_stats_t *st = &c->cfg->stats;
    if (st->rq_active)
        dp_gauge_dec(st->rq_active);
    if (why == DP_RESET_NONE && st->rq_completed)
        dp_counter_inc(st->rq_completed);
    if (c->cfg->n_access_logs && hs->s.req)
        dp_access_log_write(c->cfg->access_logs, c->cfg->n_access_logs, &hs->s, uv_now(c->w->loop));
    if (DP_LOG_ON(DP_LOG_HTTP, DP_LOG_DEBUG) && hs->s.req) {
        char fl[64];
        DP_LOG(DP_LOG_HTTP, DP_LOG_DEBUG, "[C%lu] " DP_STR_FMT " " DP_STR_FMT " %d %s %s", c->id,
               DP_STR_ARG(hs->s.req->method), DP_STR_ARG(hs->s.req->path), hs->s.response_status,
               dp_response_flags_str(hs->s.response_flags, fl, sizeof(fl)),
               dp_reset_reason_str(why));
    }
    dp_bufq_clear(&hs->held);
    if (hs->prev)
        hs->prev->next = hs->next;
    else
        c->streams = hs->next;
    if (hs->next)
        hs->next->prev = hs->prev;
    c->n_streams--;
    /* The pool (and the filters' state in it) may still be on the call stack: free it from
     * the reaper, after this loop iteration's callbacks; a stream the HTTP/2 codec ends while
     * it writes (in the check phase) is freed before the next poll, not a whole turn later
     * (with 320 requests in flight, as many again were waiting to be freed). */
    hs->next = c->dead;
    c->dead = hs;
    dp_turn_work_start(&c->reaper);
    if (c->n_streams == 0) {
        c->idle_since_ms = uv_now(c->w->loop);
        if (!uv_is_active((uv_handle_t *)&c->timer))
            tick_arm(c);
    }
}

/* ---- the connection ---- */

/* One timer per connection, never started or stopped per request: while streams are open it
 * sweeps them for the stream timeouts (request_headers_timeout, request_timeout,
 * stream_idle_timeout, max_stream_duration) every quarter of the shortest; with none open, it
 * ends the connection once it has been idle for idle_timeout (GOAWAY, or closing an HTTP/1
 * connection), or, while an HTTP/1 request head is arriving (on_head_begin; as Envoy's stream,
 * which exists from the head's first byte), is due when the first of the stream timeouts
 * passes for it. Each timed-out stream gets Envoy's 408 before its response began, a reset
 * after. */
/* The timeout a stream has run into at now, as Envoy's local reply body, with its counter;
 * NULL when none. start: its first byte; last: its last activity. */
static const char *timed_out(const dp_hcm_config_t *cfg, uint64_t now, uint64_t start,
                             uint64_t last, bool head_done, bool request_ended,
                             dp_counter_t **ret_ctr)
{
    *ret_ctr = NULL;
    if (cfg->request_headers_timeout_ms && !head_done &&
        now - start >= cfg->request_headers_timeout_ms) {
        *ret_ctr = cfg->stats.rq_header_timeout;
        return "request header timeout";
    }
    if (cfg->request_timeout_ms && !request_ended && now - start >= cfg->request_timeout_ms) {
        *ret_ctr = cfg->stats.rq_timeout;
        return "request timeout";
    }
    if (cfg->stream_idle_timeout_ms && now - last >= cfg->stream_idle_timeout_ms) {
        *ret_ctr = cfg->stats.rq_idle_timeout;
        return "stream timeout";
    }
    if (cfg->max_stream_duration_ms && now - start >= cfg->max_stream_duration_ms)
        return "downstream duration timeout";
    return NULL;
}

static void on_tick(uv_timer_t *t);

static void tick_arm(hcm_conn_t *c)
{
    if (c->closing || c->codec == NULL || c->codec_closed)
        return;
    uint64_t now = uv_now(c->w->loop), next = 0, due = 0;
    if (c->n_streams > 0)
        next = c->cfg->sweep_ms;
    else if (c->head_pending)
        due = c->head_since_ms + c->cfg->stream_timeout_min_ms;
    else if (c->cfg->idle_timeout_ms)
        due = c->idle_since_ms + c->cfg->idle_timeout_ms;
    if (due)
        next = due > now ? due - now : 1;
    if (next == 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_tick, next, 0);
}

static void sweep_streams(hcm_conn_t *c)
{
    const dp_hcm_config_t *cfg = c->cfg;
    uint64_t now = uv_now(c->w->loop);
    for (hcm_stream_t *hs = c->streams, *next; hs; hs = next) {
        next = hs->next;
        if (hs->finished || hs->enc == NULL)
            continue;
        if (hs->timed_out) {
            /* Its 408 is still on the way out a sweep later: the stream ends now. */
            dp_stream_reset(&hs->s, 0);
            continue;
        }
        dp_counter_t *ctr;
        const char *body = timed_out(cfg, now, hs->start_ms, hs->last_ms, hs->s.req != NULL,
                                     hs->s.request_ended, &ctr);
        if (body == NULL)
            continue;
        if (ctr)
            dp_counter_inc(ctr);
        DP_LOG(DP_LOG_HTTP, DP_LOG_DEBUG, "[C%lu] %s", c->id, body);
        hs->timed_out = true;
        dp_stream_local_reply(&hs->s, 408, body, DP_RF(SI));
    }
}

static void on_tick(uv_timer_t *t)
{
    hcm_conn_t *c = t->data;
    uint64_t now = uv_now(c->w->loop);
    if (c->n_streams > 0) {
        sweep_streams(c);
    } else if (c->head_pending) {
        dp_counter_t *ctr;
        const char *body =
            timed_out(c->cfg, now, c->head_since_ms, c->head_since_ms, false, false, &ctr);
        if (body && c->codec && !c->codec_closed) {
            c->head_pending = false;
            if (ctr)
                dp_counter_inc(ctr);
            DP_LOG(DP_LOG_HTTP, DP_LOG_DEBUG, "[C%lu] %s", c->id, body);
            c->codec->ops->refuse_head(c->codec, 408, body);
            return;
        }
    } else if (c->cfg->idle_timeout_ms && c->codec && !c->codec_closed &&
               now - c->idle_since_ms >= c->cfg->idle_timeout_ms) {
        DP_LOG(DP_LOG_HTTP, DP_LOG_DEBUG, "[C%lu] idle timeout", c->id);
        c->codec->ops->go_away(c->codec);
        return;
    }
    tick_arm(c);
}

/* An HTTP/1 request head is arriving in pieces: the stream timeouts run for it from now. */
static void on_head_begin(void *ud)
{
    hcm_conn_t *c = ud;
    if (c->cfg->stream_timeout_min_ms == 0)
        return;
    c->head_pending = true;
    c->head_since_ms = uv_now(c->w->loop);
    tick_arm(c);
}

static const dp_sink_ops_t *on_stream(void *ud, dp_enc_t *enc, void **ret_ud, dp_pool_t **ret_pool)
{
    hcm_conn_t *c = ud;
    if (c->closing)
        return NULL;
    c->head_pending = false;
    dp_pool_t *pool = dp_pool_new();
    hcm_stream_t *hs = dp_pool_calloc(pool, sizeof(*hs));
    hs->s.pool = pool;
    hs->s.w = c->w;
    /* A stream sees the worker's current configuration (its routes from RDS, its clusters),
     * pinned to its end; the connection keeps the listener's, under which it was accepted. */
    hs->s.snap = dp_snapshot_ref(c->w->snap ? c->w->snap : c->a.snap);
    hs->s.conn = &c->a;
    hs->s.hcm = c->cfg;
    hs->c = c;
    hs->enc = enc;
    hs->next = c->streams;
    if (c->streams)
        c->streams->prev = hs;
    c->streams = hs;
    c->n_streams++;
    hs->start_ms = hs->last_ms = uv_now(c->w->loop);
    /* The first stream after an idle spell needs the sweep sooner than the idle timeout. */
    uint64_t every = c->cfg->sweep_ms;
    if (c->n_streams == 1 && every &&
        (!uv_is_active((uv_handle_t *)&c->timer) || uv_timer_get_due_in(&c->timer) > every))
        tick_arm(c);
    if (c->cfg->stats.rq_active)
        dp_gauge_inc(c->cfg->stats.rq_active);
    *ret_ud = hs;
    *ret_pool = pool;
    return &stream_sink;
}

static void on_codec_close(void *ud, dp_codec_conn_t *codec, dp_reset_reason_t why)
{
    hcm_conn_t *c = ud;
    c->codec_closed = true;
    c->codec = NULL;
    if (why == DP_RESET_PROTOCOL && c->cfg->stats.cx_protocol_error)
        dp_counter_inc(c->cfg->stats.cx_protocol_error);
    c->closing = true;
    conn_maybe_free(c);
}

static const dp_codec_cb_t codec_cb = {
    .on_stream = on_stream,
    .on_head_begin = on_head_begin,
    .on_close = on_codec_close,
};

static void handle_closed(uv_handle_t *h)
{
    hcm_conn_t *c = h->data;
    c->handles--;
    conn_maybe_free(c);
}

static void conn_maybe_free(hcm_conn_t *c)
{
    if (!c->closing || c->n_streams > 0 || c->dead)
        return;
    if (c->codec && !c->codec_closed)
        return; /* the codec's on_close comes */
    if (!uv_is_closing((uv_handle_t *)&c->timer)) {
        uv_close((uv_handle_t *)&c->timer, handle_closed);
        dp_turn_work_close(&c->reaper, handle_closed);
    }
    if (c->handles > 0)
        return;
    const dp_hcm_stats_t *st = &c->cfg->stats;
    if (st->cx_active)
        dp_gauge_dec(st->cx_active);
    if (c->a.listener && c->a.listener->cx_active)
        dp_gauge_dec(c->a.listener->cx_active);
    dp_accepted_release(&c->a);
    dp_wctx_unlink(c->w, &c->link);
    dp_snapshot_unref(c->a.snap);
    free(c);
}

static void conn_close_link(dp_conn_link_t *l)
{
    hcm_conn_t *c = (hcm_conn_t *)l;
    if (c->closing && (c->codec == NULL || c->codec_closed))
        return;
    c->closing = true;
    if (c->codec && !c->codec_closed) {
        c->codec->ops->close(c->codec);
        return;
    }
    if (c->sniffing && !uv_is_closing((uv_handle_t *)&c->sniff))
        uv_close((uv_handle_t *)&c->sniff, handle_closed);
    if (c->fd >= 0 && !c->sniffing) {
        close(c->fd);
        c->fd = -1;
    }
    conn_maybe_free(c);
}

static void codec_start(hcm_conn_t *c, bool http2)
{
    const dp_hcm_stats_t *st = &c->cfg->stats;
    c->http2 = http2;
    dp_counter_t *t = http2 ? st->cx_http2_total : st->cx_http1_total;
    if (t)
        dp_counter_inc(t);
    int fd = c->fd;
    c->fd = -1;
    c->codec = http2 ? dp_h2_conn_new(c->w->loop, fd, true, &c->cfg->limits, &codec_cb, c)
                     : dp_h1_conn_new(c->w->loop, fd, true, &c->cfg->limits, &codec_cb, c);
    if (c->codec == NULL) {
        c->codec_closed = true;
        c->closing = true;
        conn_maybe_free(c);
        return;
    }
    c->idle_since_ms = uv_now(c->w->loop);
    tick_arm(c);
}

static void sniff_closed(uv_handle_t *h)
{
    hcm_conn_t *c = h->data;
    c->handles--;
    c->sniffing = false;
    if (c->closing) {
        if (c->fd >= 0)
            close(c->fd);
        c->fd = -1;
        conn_maybe_free(c);
        return;
    }
    /* The poll handle is gone: the fd can now belong to the codec. */
    char buf[DP_H2_PREFACE_LEN];
    ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
    bool h2 = n > 0 && memcmp(buf, DP_H2_PREFACE, (size_t)n) == 0;
    codec_start(c, h2);
}

static void sniff_fail(hcm_conn_t *c)
{
    c->closing = true;
    uv_timer_stop(&c->timer);
    if (!uv_is_closing((uv_handle_t *)&c->sniff))
        uv_close((uv_handle_t *)&c->sniff, sniff_closed);
}

static void on_sniff(uv_poll_t *p, int status, int events)
{
    hcm_conn_t *c = p->data;
    if (status < 0) {
        sniff_fail(c);
        return;
    }
    char buf[DP_H2_PREFACE_LEN];
    ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        sniff_fail(c);
        return;
    }
    if (n < 0)
        return;
    /* Decided once the bytes either are the whole preface or stop matching it. */
    if ((size_t)n < sizeof(buf) && memcmp(buf, DP_H2_PREFACE, (size_t)n) == 0)
        return;
    uv_poll_stop(p);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)p, sniff_closed);
}

static void on_sniff_timeout(uv_timer_t *t)
{
    hcm_conn_t *c = t->data;
    DP_LOG(DP_LOG_HTTP, DP_LOG_DEBUG, "[C%lu] no request bytes in time", c->id);
    sniff_fail(c);
}

void dp_hcm_start(dp_wctx_t *w, dp_accepted_t *a)
{
    const dp_hcm_config_t *cfg = a->chain->hcm;
    hcm_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->w = w;
    c->a = *a;
    c->cfg = cfg;
    static _Thread_local unsigned long next_id;
    c->id = ++next_id;
    c->fd = a->fd;
    c->link.close = conn_close_link;
    dp_wctx_link(w, &c->link);
    if (a->remote.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&a->remote)->sin_addr, c->remote_ip,
                  sizeof(c->remote_ip));
    else if (a->remote.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&a->remote)->sin6_addr, c->remote_ip,
                  sizeof(c->remote_ip));
    const dp_hcm_stats_t *st = &cfg->stats;
    if (st->cx_total)
        dp_counter_inc(st->cx_total);
    if (st->cx_active)
        dp_gauge_inc(st->cx_active);
    uv_timer_init(w->loop, &c->timer);
    c->timer.data = c;
    dp_turn_work_init(w->loop, &c->reaper, on_reap, c);
    c->handles = 3; /* the timer and the reaper's two */
    c->sniff.data = c;
    if (cfg->codec_type == DP_CODEC_HTTP1 || cfg->codec_type == DP_CODEC_HTTP2 ||
        strcmp(a->alpn, "h2c") == 0 || strcmp(a->alpn, "h2") == 0 ||
        strncmp(a->alpn, "http/1", 6) == 0) {
        bool h2 = cfg->codec_type == DP_CODEC_HTTP2 ||
                  (cfg->codec_type == DP_CODEC_AUTO && a->alpn[0] == 'h' && a->alpn[1] == '2');
        codec_start(c, h2);
        return;
    }
    /* AUTO: wait for the first bytes and look for the HTTP/2 preface. */
    if (uv_poll_init(w->loop, &c->sniff, c->fd) < 0) {
        c->closing = true;
        close(c->fd);
        c->fd = -1;
        conn_maybe_free(c);
        return;
    }
    c->sniffing = true;
    c->handles++;
    uv_poll_start(&c->sniff, UV_READABLE | UV_DISCONNECT, on_sniff);
    uv_timer_start(&c->timer, on_sniff_timeout, SNIFF_TIMEOUT_MS, 0);
}
