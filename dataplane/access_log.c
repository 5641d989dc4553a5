/* The file access log: format compilation, line formatting, shared buffered files. */
#include "dataplane/access_log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dataplane/lb.h"
#include "dataplane/route.h"
#include "dataplane/stream.h"

/* Limits on what a config controls. */
#define MAX_PIECES   256   /* operators and literals in one format */
#define MAX_ARG      256   /* the text inside an operator's parentheses */
#define LINE_MAX_LEN 16384 /* a longer line is cut */
#define MAX_FILES    64

/* ---- operators ---- */

#define AL_OPS(X)                                                                                 \
    X(START_TIME, "START_TIME", ARG_OPT)                                                          \
    X(REQ, "REQ", ARG_HEADER)                                                                     \
    X(RESP, "RESP", ARG_HEADER)                                                                   \
    X(TRAILER, "TRAILER", ARG_HEADER)                                                             \
    X(REQ_WITHOUT_QUERY, "REQ_WITHOUT_QUERY", ARG_HEADER)                                         \
    X(PROTOCOL, "PROTOCOL", ARG_NONE)                                                             \
    X(RESPONSE_CODE, "RESPONSE_CODE", ARG_NONE)                                                   \
    X(RESPONSE_FLAGS, "RESPONSE_FLAGS", ARG_NONE)                                                 \
    X(RESPONSE_CODE_DETAILS, "RESPONSE_CODE_DETAILS", ARG_NONE)                                   \
    X(CONNECTION_TERMINATION_DETAILS, "CONNECTION_TERMINATION_DETAILS", ARG_NONE)                 \
    X(UPSTREAM_TRANSPORT_FAILURE_REASON, "UPSTREAM_TRANSPORT_FAILURE_REASON", ARG_NONE)           \
    X(BYTES_RECEIVED, "BYTES_RECEIVED", ARG_NONE)                                                 \
    X(BYTES_SENT, "BYTES_SENT", ARG_NONE)                                                         \
    X(DURATION, "DURATION", ARG_NONE)                                                             \
    X(REQUEST_DURATION, "REQUEST_DURATION", ARG_NONE)                                             \
    X(RESPONSE_DURATION, "RESPONSE_DURATION", ARG_NONE)                                           \
    X(RESPONSE_TX_DURATION, "RESPONSE_TX_DURATION", ARG_NONE)                                     \
    X(UPSTREAM_HOST, "UPSTREAM_HOST", ARG_NONE)                                                   \
    X(UPSTREAM_CLUSTER, "UPSTREAM_CLUSTER", ARG_NONE)                                             \
    X(UPSTREAM_CLUSTER_RAW, "UPSTREAM_CLUSTER_RAW", ARG_NONE)                                     \
    X(UPSTREAM_LOCAL_ADDRESS, "UPSTREAM_LOCAL_ADDRESS", ARG_NONE)                                 \
    X(DOWNSTREAM_LOCAL_ADDRESS, "DOWNSTREAM_LOCAL_ADDRESS", ARG_NONE)                             \
    X(DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", ARG_NONE)   \
    X(DOWNSTREAM_LOCAL_PORT, "DOWNSTREAM_LOCAL_PORT", ARG_NONE)                                   \
    X(DOWNSTREAM_REMOTE_ADDRESS, "DOWNSTREAM_REMOTE_ADDRESS", ARG_NONE)                           \
    X(DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", ARG_NONE) \
    X(DOWNSTREAM_REMOTE_PORT, "DOWNSTREAM_REMOTE_PORT", ARG_NONE)                                 \
    X(DOWNSTREAM_DIRECT_REMOTE_ADDRESS, "DOWNSTREAM_DIRECT_REMOTE_ADDRESS", ARG_NONE)             \
    X(DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT,                                              \
      "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT", ARG_NONE)                                  \
    X(REQUESTED_SERVER_NAME, "REQUESTED_SERVER_NAME", ARG_NONE)                                   \
    X(ROUTE_NAME, "ROUTE_NAME", ARG_NONE)                                                         \
    X(HOSTNAME, "HOSTNAME", ARG_NONE)                                                             \
    X(GRPC_STATUS, "GRPC_STATUS", ARG_OPT)                                                        \
    /* Accepted, printed as "-": skiff keeps no metadata, filter state or TLS peer facts. */      \
    X(DASH_METADATA, "METADATA", ARG_ANY)                                                         \
    X(DASH_DYNAMIC_METADATA, "DYNAMIC_METADATA", ARG_ANY)                                         \
    X(DASH_CLUSTER_METADATA, "CLUSTER_METADATA", ARG_ANY)                                         \
    X(DASH_UPSTREAM_METADATA, "UPSTREAM_METADATA", ARG_ANY)                                       \
    X(DASH_FILTER_STATE, "FILTER_STATE", ARG_ANY)                                                 \
    X(DASH_UPSTREAM_FILTER_STATE, "UPSTREAM_FILTER_STATE", ARG_ANY)                               \
    X(DASH_CEL, "CEL", ARG_ANY)                                                                   \
    X(DASH_DOWNSTREAM_PEER_URI_SAN, "DOWNSTREAM_PEER_URI_SAN", ARG_NONE)                          \
    X(DASH_DOWNSTREAM_LOCAL_URI_SAN, "DOWNSTREAM_LOCAL_URI_SAN", ARG_NONE)                        \
    X(DASH_DOWNSTREAM_TLS_VERSION, "DOWNSTREAM_TLS_VERSION", ARG_NONE)                            \
    X(DASH_UPSTREAM_TRANSPORT_FAILURE, "UPSTREAM_TRANSPORT_FAILURE", ARG_NONE)

enum {
    ARG_NONE,
    ARG_OPT,
    ARG_HEADER,
    ARG_ANY
};

typedef enum al_op {
    OP_LITERAL = 0,
#define AL_OP_ENUM_(id, name, arg) OP_##id,
    AL_OPS(AL_OP_ENUM_)
#undef AL_OP_ENUM_
    OP_COUNT
} al_op_t;

static const struct {
    const char *name;
    int arg;
} op_table[OP_COUNT] = {[OP_LITERAL] = {"", ARG_NONE},
#define AL_OP_ROW_(id, nm, a) [OP_##id] = {nm, a},
                        AL_OPS(AL_OP_ROW_)
#undef AL_OP_ROW_
};

typedef struct al_piece {
    al_op_t op;
    const char *text; /* literal text; the (lower-cased) header name; START_TIME's format */
    size_t len;
    const char *alt; /* REQ(X?Y): Y */
    size_t alt_len;
    size_t max_len; /* ":N", 0 when none */
} al_piece_t;

struct dp_access_format {
    bool json;
    const al_piece_t *pieces;
    size_t n_pieces;
    const dp_access_json_field_t *fields;
    size_t n_fields;
};

static int fail(char **reterr_msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(char **reterr_msg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(reterr_msg, fmt, ap) < 0)
        *reterr_msg = NULL;
    va_end(ap);
    return -EINVAL;
}

static const char *arena_strndup(dp_arena_t *a, const char *p, size_t n, bool lower)
{
    char *d = dp_arena_alloc(a, n + 1);
    for (size_t i = 0; i < n; i++)
        d[i] = lower ? (char)tolower((unsigned char)p[i]) : p[i];
    d[n] = '\0';
    return d;
}

static bool op_name_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* The host name for %HOSTNAME%, read once at compile time. */
static char hostname_buf[256];

int dp_access_format_compile(dp_arena_t *a, const char *text, const dp_access_format_t **ret_fmt,
                             char **reterr_msg)
{
    al_piece_t tmp[MAX_PIECES];
    size_t n = 0;
    const char *p = text, *lit = text;
    size_t litlen = 0;
    char *litbuf = dp_arena_alloc(a, strlen(text) + 1); /* literals, "%%" folded */
    char *lw = litbuf;
#define FLUSH_LIT()                                                                   \
    do {                                                                              \
        if (litlen) {                                                                 \
            if (n == MAX_PIECES)                                                      \
                return fail(reterr_msg, "format has more than %d parts", MAX_PIECES); \
            tmp[n++] = (al_piece_t){.op = OP_LITERAL, .text = lit, .len = litlen};    \
            litlen = 0;                                                               \
        }                                                                             \
    } while (0)
    lit = lw;
    while (*p) {
        if (*p != '%') {
            *lw++ = *p++;
            litlen++;
            continue;
        }
        if (p[1] == '%') {
            *lw++ = '%';
            litlen++;
            p += 2;
            continue;
        }
        /* %NAME[(args)][:N]% */
        const char *start = p;
        const char *q = p + 1;
        while (op_name_char(*q))
            q++;
        size_t nlen = (size_t)(q - (p + 1));
        if (nlen == 0)
            return fail(reterr_msg, "no command operator at position %zu of the format",
                        (size_t)(start - text));
        const char *name = p + 1;
        const char *arg = NULL;
        size_t arglen = 0;
        bool has_arg = false;
        if (*q == '(') {
            const char *close = strchr(q, ')');
            if (close == NULL)
                return fail(reterr_msg, "command operator %.*s: missing ')'", (int)nlen, name);
            arg = q + 1;
            arglen = (size_t)(close - arg);
            has_arg = true;
            if (arglen > MAX_ARG)
                return fail(reterr_msg, "command operator %.*s: argument longer than %d", (int)nlen,
                            name, MAX_ARG);
            q = close + 1;
        }
        size_t max_len = 0;
        if (*q == ':') {
            q++;
            if (!isdigit((unsigned char)*q))
                return fail(reterr_msg, "command operator %.*s: ':' needs a length", (int)nlen,
                            name);
            while (isdigit((unsigned char)*q)) {
                if (max_len > 100000000)
                    return fail(reterr_msg, "command operator %.*s: length too large", (int)nlen,
                                name);
                max_len = max_len * 10 + (size_t)(*q - '0');
                q++;
            }
        }
        if (*q != '%')
            return fail(reterr_msg, "command operator %.*s: not closed by '%%' at position %zu",
                        (int)nlen, name, (size_t)(q - text));
        p = q + 1;
        al_op_t op = OP_LITERAL;
        for (int i = 1; i < OP_COUNT; i++) {
            if (strlen(op_table[i].name) == nlen && memcmp(op_table[i].name, name, nlen) == 0) {
                op = (al_op_t)i;
                break;
            }
        }
        if (op == OP_LITERAL)
            return fail(reterr_msg, "unknown command operator %.*s", (int)nlen, name);
        int kind = op_table[op].arg;
        if (kind == ARG_NONE && has_arg)
            return fail(reterr_msg, "command operator %.*s takes no argument", (int)nlen, name);
        if (kind == ARG_HEADER && (!has_arg || arglen == 0))
            return fail(reterr_msg, "command operator %.*s needs a header name", (int)nlen, name);
        FLUSH_LIT();
        lit = lw;
        if (n == MAX_PIECES)
            return fail(reterr_msg, "format has more than %d parts", MAX_PIECES);
        al_piece_t *pc = &tmp[n++];
        *pc = (al_piece_t){.op = op, .max_len = max_len};
        if (kind == ARG_HEADER) {
            const char *qm = memchr(arg, '?', arglen);
            size_t l1 = qm ? (size_t)(qm - arg) : arglen;
            if (l1 == 0 || (qm && qm + 1 == arg + arglen))
                return fail(reterr_msg, "command operator %.*s: empty header name in (%.*s)",
                            (int)nlen, name, (int)arglen, arg);
            if (qm && memchr(qm + 1, '?', (size_t)(arg + arglen - qm - 1)))
                return fail(reterr_msg, "command operator %.*s: more than one '?' in (%.*s)",
                            (int)nlen, name, (int)arglen, arg);
            pc->text = arena_strndup(a, arg, l1, true);
            pc->len = l1;
            if (qm) {
                pc->alt_len = (size_t)(arg + arglen - qm - 1);
                pc->alt = arena_strndup(a, qm + 1, pc->alt_len, true);
            }
        } else if (has_arg) {
            pc->text = arena_strndup(a, arg, arglen, false);
            pc->len = arglen;
        }
        if (op == OP_HOSTNAME && hostname_buf[0] == '\0') {
            if (gethostname(hostname_buf, sizeof(hostname_buf) - 1) < 0)
                snprintf(hostname_buf, sizeof(hostname_buf), "-");
        }
    }
    FLUSH_LIT();
#undef FLUSH_LIT
    dp_access_format_t *f = dp_arena_alloc(a, sizeof(*f));
    al_piece_t *v = dp_arena_alloc(a, (n ? n : 1) * sizeof(*v));
    memcpy(v, tmp, n * sizeof(*v));
    f->pieces = v;
    f->n_pieces = n;
    *ret_fmt = f;
    return 0;
}

static const dp_access_json_field_t *json_copy(dp_arena_t *a, const dp_access_json_field_t *f,
                                               size_t n)
{
    dp_access_json_field_t *v = dp_arena_alloc(a, (n ? n : 1) * sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        v[i] = f[i];
        v[i].key = dp_arena_strdup(a, f[i].key ? f[i].key : "");
        if (f[i].raw)
            v[i].raw = dp_arena_strdup(a, f[i].raw);
        if (f[i].kind == DP_ACCESS_JSON_OBJECT)
            v[i].fields = json_copy(a, f[i].fields, f[i].n_fields);
    }
    return v;
}

const dp_access_format_t *dp_access_format_json(dp_arena_t *a, const dp_access_json_field_t *f,
                                                size_t n)
{
    dp_access_format_t *fmt = dp_arena_alloc(a, sizeof(*fmt));
    fmt->json = true;
    fmt->fields = json_copy(a, f, n);
    fmt->n_fields = n;
    return fmt;
}

/* ---- formatting ---- */

typedef struct out {
    char *p;
    size_t n, cap; /* cap excludes the NUL */
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
    if (n > o->cap - o->n)
        n = o->cap - o->n;
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void put_u64(out_t *o, uint64_t v)
{
    char b[24];
    int k = snprintf(b, sizeof(b), "%" PRIu64, v);
    put(o, b, (size_t)k);
}

typedef enum {
    V_ABSENT,
    V_STR,
    V_NUM
} vkind_t;

typedef struct val {
    vkind_t kind;
    const char *s;
    size_t n;
    uint64_t num;
} val_t;

static size_t sockaddr_fmt(const struct sockaddr *sa, bool port, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        int k = port ? snprintf(buf, cap, "%s:%u", ip, ntohs(in->sin_port))
                     : snprintf(buf, cap, "%s", ip);
        return k > 0 && (size_t)k < cap ? (size_t)k : 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        int k = port ? snprintf(buf, cap, "[%s]:%u", ip, ntohs(in6->sin6_port))
                     : snprintf(buf, cap, "%s", ip);
        return k > 0 && (size_t)k < cap ? (size_t)k : 0;
    }
    return 0;
}

static uint16_t sockaddr_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    if (sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    return 0;
}

/* A request header by its lower-cased name; pseudo-headers map to the head's fields. */
static bool req_header(const dp_http_head_t *h, const char *name, size_t len, dp_str_t *ret)
{
    if (h == NULL)
        return false;
    dp_str_t v = {NULL, 0};
    if (name[0] == ':') {
        if (strcmp(name, ":method") == 0)
            v = h->method;
        else if (strcmp(name, ":path") == 0)
            v = h->path;
        else if (strcmp(name, ":authority") == 0)
            v = h->authority;
        else if (strcmp(name, ":scheme") == 0)
            v = h->scheme;
        else if (strcmp(name, ":protocol") == 0)
            v = h->protocol;
        else if (strcmp(name, ":status") == 0)
            return false;
    } else {
        const dp_header_t *hd = dp_headers_get(&h->headers, name, len);
        if (hd)
            v = hd->value;
        else if (strcmp(name, "host") == 0)
            v = h->authority;
    }
    if (v.p == NULL || v.n == 0)
        return false;
    *ret = v;
    return true;
}

static bool resp_header(const dp_http_head_t *h, const char *name, size_t len, dp_str_t *ret)
{
    if (h == NULL)
        return false;
    if (strcmp(name, ":status") == 0)
        return false; /* written by RESPONSE_CODE */
    const dp_header_t *hd = dp_headers_get(&h->headers, name, len);
    if (hd == NULL || hd->value.n == 0)
        return false;
    *ret = hd->value;
    return true;
}

/* START_TIME: strftime with Envoy's additions %s (epoch seconds), %f and %1f..%9f (fractions of
 * the second); the default is 2006-01-02T15:04:05.000Z. UTC. */
static size_t time_fmt(const char *fmt, size_t flen, int64_t wall_us, char *buf, size_t cap)
{
    time_t sec = (time_t)(wall_us / 1000000);
    long usec = (long)(wall_us % 1000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    if (fmt == NULL || flen == 0) {
        char d[32];
        size_t k = strftime(d, sizeof(d), "%Y-%m-%dT%H:%M:%S", &tm);
        int m = snprintf(buf, cap, "%.*s.%03ldZ", (int)k, d, usec / 1000);
        return m > 0 && (size_t)m < cap ? (size_t)m : 0;
    }
    size_t o = 0;
    char seg[MAX_ARG + 8];
    size_t sl = 0;
    for (size_t i = 0; i <= flen; i++) {
        bool special = false;
        char extra[24];
        size_t el = 0;
        size_t skip = 0;
        if (i < flen && fmt[i] == '%' && i + 1 < flen) {
            char c = fmt[i + 1];
            if (c == 's') {
                el = (size_t)snprintf(extra, sizeof(extra), "%lld", (long long)sec);
                special = true;
                skip = 2;
            } else if (c == 'f') {
                el = (size_t)snprintf(extra, sizeof(extra), "%06ld000", usec);
                special = true;
                skip = 2;
            } else if (c >= '1' && c <= '9' && i + 2 < flen && fmt[i + 2] == 'f') {
                char all[16];
                snprintf(all, sizeof(all), "%06ld000", usec);
                el = (size_t)(c - '0');
                memcpy(extra, all, el);
                special = true;
                skip = 3;
            } else if (c == '%') {
                seg[sl++] = '%';
                seg[sl++] = '%';
                i++;
                continue;
            }
        }
        if (special || i == flen) {
            if (sl) {
                seg[sl] = '\0';
                /* The format comes from the config, checked for nothing strftime cannot
                 * take (an unknown conversion prints as it is). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
                size_t k = strftime(buf + o, cap - o, seg, &tm);
#pragma GCC diagnostic pop
                o += k;
                sl = 0;
            }
            if (special && el < cap - o) {
                memcpy(buf + o, extra, el);
                o += el;
            }
            if (special)
                i += skip - 1;
            continue;
        }
        seg[sl++] = fmt[i];
    }
    if (o < cap)
        buf[o] = '\0';
    return o;
}

const char *dp_response_flags_str(uint32_t flags, char *buf, size_t len)
{
    static const char *const names[] = {
#define DP_RF_NAME_(id, s) s,
        DP_RESPONSE_FLAGS(DP_RF_NAME_)
#undef DP_RF_NAME_
    };
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!(flags & (1u << i)))
            continue;
        int n = snprintf(buf + off, len - off, "%s%s", off ? "," : "", names[i]);
        if (n < 0 || (size_t)n >= len - off)
            break;
        off += (size_t)n;
    }
    if (off == 0)
        snprintf(buf, len, "-");
    return buf;
}

/* RESPONSE_CODE_DETAILS when nothing set it: derived from the response flags. */
static const char *details_of(const dp_stream_t *s)
{
    if (s->req == NULL)
        return s->details; /* a TCP connection: Envoy has no details to give */
    uint32_t f = s->response_flags;
    /* A reset after the response began says more than how it began. */
    if (s->details &&
        !(f & (DP_RF(UR) | DP_RF(UPE) | DP_RF(UC) | DP_RF(UT) | DP_RF(SI) | DP_RF(DC))))
        return s->details;
    if (f & DP_RF(NR))
        return "route_not_found";
    if (f & DP_RF(NC))
        return "cluster_not_found";
    if (f & DP_RF(UH))
        return "no_healthy_upstream";
    if (f & DP_RF(UO))
        return "upstream_reset_before_response_started{overflow}";
    if (f & DP_RF(UF))
        return "upstream_reset_before_response_started{connection_failure}";
    if (f & DP_RF(UT))
        return "upstream_response_timeout";
    if (f & DP_RF(UC))
        return s->response_started
                   ? "upstream_reset_after_response_started{connection_termination}"
                   : "upstream_reset_before_response_started{connection_termination}";
    if (f & DP_RF(UR))
        return s->response_started ? "upstream_reset_after_response_started{remote_reset}"
                                   : "upstream_reset_before_response_started{remote_reset}";
    if (f & DP_RF(UPE))
        return s->response_started ? "upstream_reset_after_response_started{protocol_error}"
                                   : "upstream_reset_before_response_started{protocol_error}";
    if (f & DP_RF(FI))
        return "fault_filter_abort";
    if (f & DP_RF(RL))
        return "local_rate_limited";
    if (f & DP_RF(SI))
        return "stream_idle_timeout";
    if (f & DP_RF(DPE))
        return "downstream_protocol_error";
    if (f & DP_RF(DC))
        return "downstream_remote_disconnect";
    return NULL;
}

static val_t str_val(const char *p, size_t n)
{
    if (p == NULL || n == 0)
        return (val_t){.kind = V_ABSENT};
    return (val_t){.kind = V_STR, .s = p, .n = n};
}

static val_t cstr_val(const char *p)
{
    return str_val(p, p ? strlen(p) : 0);
}

static val_t num_val(uint64_t v)
{
    return (val_t){.kind = V_NUM, .num = v};
}

/* The value of one operator; scratch holds what has to be written out. */
static val_t op_value(const al_piece_t *pc, const dp_stream_t *s, uint64_t now_ms, char *scratch,
                      size_t scap)
{
    dp_str_t v;
    const dp_accepted_t *c = s->conn;
    switch (pc->op) {
    case OP_LITERAL:
        return str_val(pc->text, pc->len);
    case OP_START_TIME:
        return str_val(scratch, time_fmt(pc->text, pc->len, s->start_wall_us, scratch, scap));
    case OP_REQ:
    case OP_REQ_WITHOUT_QUERY:
        if (!req_header(s->req, pc->text, pc->len, &v) &&
            (pc->alt == NULL || !req_header(s->req, pc->alt, pc->alt_len, &v)))
            return (val_t){.kind = V_ABSENT};
        if (pc->op == OP_REQ_WITHOUT_QUERY) {
            const char *qm = memchr(v.p, '?', v.n);
            if (qm)
                v.n = (size_t)(qm - v.p);
        }
        return str_val(v.p, v.n);
    case OP_RESP:
        if (!resp_header(s->resp, pc->text, pc->len, &v) &&
            (pc->alt == NULL || !resp_header(s->resp, pc->alt, pc->alt_len, &v)))
            return (val_t){.kind = V_ABSENT};
        return str_val(v.p, v.n);
    case OP_TRAILER: {
        const dp_header_t *h = NULL;
        if (s->resp_trailers) {
            h = dp_headers_get(s->resp_trailers, pc->text, pc->len);
            if (h == NULL && pc->alt)
                h = dp_headers_get(s->resp_trailers, pc->alt, pc->alt_len);
        }
        return h ? str_val(h->value.p, h->value.n) : (val_t){.kind = V_ABSENT};
    }
    case OP_GRPC_STATUS: {
        const dp_header_t *h =
            s->resp_trailers ? DP_HDR_GET(s->resp_trailers, "grpc-status") : NULL;
        if (h == NULL && s->resp)
            h = DP_HDR_GET(&s->resp->headers, "grpc-status");
        return h ? str_val(h->value.p, h->value.n) : (val_t){.kind = V_ABSENT};
    }
    case OP_PROTOCOL:
        if (s->req == NULL)
            return (val_t){.kind = V_ABSENT};
        switch (s->req->version) {
        case DP_HTTP_10:
            return cstr_val("HTTP/1.0");
        case DP_HTTP_11:
            return cstr_val("HTTP/1.1");
        case DP_HTTP_2:
            return cstr_val("HTTP/2");
        }
        return (val_t){.kind = V_ABSENT};
    case OP_RESPONSE_CODE:
        return num_val((uint64_t)(s->response_status > 0 ? s->response_status : 0));
    case OP_RESPONSE_FLAGS:
        return cstr_val(dp_response_flags_str(s->response_flags, scratch, scap));
    case OP_RESPONSE_CODE_DETAILS:
        return cstr_val(details_of(s));
    case OP_BYTES_RECEIVED:
        return num_val(s->bytes_received);
    case OP_BYTES_SENT:
        return num_val(s->bytes_sent);
    case OP_DURATION:
        return num_val(now_ms >= s->start_ms ? now_ms - s->start_ms : 0);
    case OP_REQUEST_DURATION:
        if (s->request_end_ms == 0)
            return (val_t){.kind = V_ABSENT};
        return num_val(s->request_end_ms >= s->start_ms ? s->request_end_ms - s->start_ms : 0);
    case OP_RESPONSE_DURATION:
        if (s->response_start_ms == 0)
            return (val_t){.kind = V_ABSENT};
        return num_val(s->response_start_ms >= s->start_ms ? s->response_start_ms - s->start_ms
                                                           : 0);
    case OP_RESPONSE_TX_DURATION:
        if (s->response_start_ms == 0)
            return (val_t){.kind = V_ABSENT};
        return num_val(now_ms >= s->response_start_ms ? now_ms - s->response_start_ms : 0);
    case OP_UPSTREAM_HOST:
        if (!s->has_upstream_host)
            return (val_t){.kind = V_ABSENT};
        return str_val(scratch, dp_lb_host_key(&s->upstream_host, scratch, scap));
    case OP_UPSTREAM_CLUSTER:
    case OP_UPSTREAM_CLUSTER_RAW:
        return cstr_val(s->upstream_cluster);
    case OP_DOWNSTREAM_LOCAL_ADDRESS:
    case OP_DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT:
        if (c == NULL)
            return (val_t){.kind = V_ABSENT};
        return str_val(scratch, sockaddr_fmt((const struct sockaddr *)&c->local,
                                             pc->op == OP_DOWNSTREAM_LOCAL_ADDRESS, scratch, scap));
    case OP_DOWNSTREAM_REMOTE_ADDRESS:
    case OP_DOWNSTREAM_DIRECT_REMOTE_ADDRESS:
    case OP_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT:
    case OP_DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT:
        if (c == NULL)
            return (val_t){.kind = V_ABSENT};
        return str_val(scratch, sockaddr_fmt((const struct sockaddr *)&c->remote,
                                             pc->op == OP_DOWNSTREAM_REMOTE_ADDRESS ||
                                                 pc->op == OP_DOWNSTREAM_DIRECT_REMOTE_ADDRESS,
                                             scratch, scap));
    case OP_DOWNSTREAM_LOCAL_PORT:
        if (c == NULL || sockaddr_port((const struct sockaddr *)&c->local) == 0)
            return (val_t){.kind = V_ABSENT};
        return num_val(sockaddr_port((const struct sockaddr *)&c->local));
    case OP_DOWNSTREAM_REMOTE_PORT:
        if (c == NULL || sockaddr_port((const struct sockaddr *)&c->remote) == 0)
            return (val_t){.kind = V_ABSENT};
        return num_val(sockaddr_port((const struct sockaddr *)&c->remote));
    case OP_REQUESTED_SERVER_NAME:
        return c ? cstr_val(c->sni) : (val_t){.kind = V_ABSENT};
    case OP_ROUTE_NAME:
        return cstr_val(s->route ? s->route->name : NULL);
    case OP_HOSTNAME:
        return cstr_val(hostname_buf);
    default:
        /* UPSTREAM_LOCAL_ADDRESS, CONNECTION_TERMINATION_DETAILS,
         * UPSTREAM_TRANSPORT_FAILURE_REASON and the accepted-but-unkept ones. */
        return (val_t){.kind = V_ABSENT};
    }
}

static void put_text_val(out_t *o, const al_piece_t *pc, val_t v, bool absent_empty)
{
    switch (v.kind) {
    case V_ABSENT:
        if (!absent_empty)
            put(o, "-", 1);
        break;
    case V_NUM:
        put_u64(o, v.num);
        break;
    case V_STR:
        put(o, v.s, pc->max_len && v.n > pc->max_len ? pc->max_len : v.n);
        break;
    }
}

static void text_line(const dp_access_format_t *f, const dp_stream_t *s, uint64_t now_ms, out_t *o,
                      bool absent_empty)
{
    char scratch[512];
    for (size_t i = 0; i < f->n_pieces; i++) {
        const al_piece_t *pc = &f->pieces[i];
        if (pc->op == OP_LITERAL) {
            put(o, pc->text, pc->len);
            continue;
        }
        put_text_val(o, pc, op_value(pc, s, now_ms, scratch, sizeof(scratch)), absent_empty);
    }
}

static void put_json_str(out_t *o, const char *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    put(o, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(o, e, 2);
        } else if (c == '\n') {
            put(o, "\\n", 2);
        } else if (c == '\r') {
            put(o, "\\r", 2);
        } else if (c == '\t') {
            put(o, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(o, e, 6);
        } else {
            put(o, (const char *)&p[i], 1);
        }
    }
    put(o, "\"", 1);
}

static void json_object(const dp_access_json_field_t *fields, size_t n, const dp_stream_t *s,
                        uint64_t now_ms, out_t *o, int depth)
{
    put(o, "{", 1);
    for (size_t i = 0; i < n; i++) {
        const dp_access_json_field_t *fl = &fields[i];
        if (i)
            put(o, ",", 1);
        put_json_str(o, fl->key, strlen(fl->key));
        put(o, ":", 1);
        if (fl->kind == DP_ACCESS_JSON_RAW) {
            put(o, fl->raw, strlen(fl->raw));
            continue;
        }
        if (fl->kind == DP_ACCESS_JSON_OBJECT) {
            if (depth < 16)
                json_object(fl->fields, fl->n_fields, s, now_ms, o, depth + 1);
            else
                put(o, "null", 4);
            continue;
        }
        const dp_access_format_t *f = fl->fmt;
        char scratch[512];
        if (f->n_pieces == 1 && f->pieces[0].op != OP_LITERAL) {
            /* A lone operator keeps its type. */
            const al_piece_t *pc = &f->pieces[0];
            val_t v = op_value(pc, s, now_ms, scratch, sizeof(scratch));
            if (v.kind == V_ABSENT)
                put(o, "null", 4);
            else if (v.kind == V_NUM)
                put_u64(o, v.num);
            else
                put_json_str(o, v.s, pc->max_len && v.n > pc->max_len ? pc->max_len : v.n);
            continue;
        }
        char tb[4096];
        out_t t = {tb, 0, sizeof(tb) - 1};
        text_line(f, s, now_ms, &t, false);
        put_json_str(o, tb, t.n);
    }
    put(o, "}", 1);
}

size_t dp_access_format_line(const dp_access_format_t *f, const dp_stream_t *s, uint64_t now_ms,
                             char *buf, size_t cap)
{
    if (cap == 0)
        return 0;
    out_t o = {buf, 0, cap - 1};
    if (f->json) {
        json_object(f->fields, f->n_fields, s, now_ms, &o, 0);
        put(&o, "\n", 1);
    } else {
        text_line(f, s, now_ms, &o, false);
    }
    buf[o.n] = '\0';
    return o.n;
}

size_t dp_access_format_value(const dp_access_format_t *f, const dp_stream_t *s, uint64_t now_ms,
                              char *buf, size_t cap)
{
    if (cap == 0)
        return 0;
    out_t o = {buf, 0, cap - 1};
    if (!f->json)
        text_line(f, s, now_ms, &o, true);
    buf[o.n] = '\0';
    return o.n;
}

/* ---- files ---- */

struct dp_access_file {
    char *path;
    int fd;
    bool std; /* the process's stdout or stderr: never closed or reopened */
    pthread_mutex_t mu;
    char *buf;
    size_t len, cap;
    bool write_failed; /* reported once until a write succeeds */
};

static pthread_mutex_t files_mu = PTHREAD_MUTEX_INITIALIZER;
static dp_access_file_t *files[MAX_FILES];
static size_t n_files;
static size_t flush_min = 64 * 1024;
static uv_timer_t flush_timer;

static int file_open(const char *path, bool *ret_std)
{
    *ret_std = false;
    if (strcmp(path, "/dev/stdout") == 0) {
        *ret_std = true;
        return STDOUT_FILENO;
    }
    if (strcmp(path, "/dev/stderr") == 0) {
        *ret_std = true;
        return STDERR_FILENO;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    return fd < 0 ? -errno : fd;
}

dp_access_file_t *dp_access_file_get(const char *path, char **reterr_msg)
{
    pthread_mutex_lock(&files_mu);
    for (size_t i = 0; i < n_files; i++) {
        if (strcmp(files[i]->path, path) == 0) {
            dp_access_file_t *f = files[i];
            pthread_mutex_unlock(&files_mu);
            return f;
        }
    }
    if (n_files == MAX_FILES) {
        pthread_mutex_unlock(&files_mu);
        fail(reterr_msg, "more than %d access log files", MAX_FILES);
        return NULL;
    }
    bool std;
    int fd = file_open(path, &std);
    if (fd < 0) {
        pthread_mutex_unlock(&files_mu);
        fail(reterr_msg, "cannot open %s: %s", path, strerror(-fd));
        return NULL;
    }
    dp_access_file_t *f = calloc(1, sizeof(*f));
    if (f == NULL || (f->path = strdup(path)) == NULL)
        abort();
    f->fd = fd;
    f->std = std;
    pthread_mutex_init(&f->mu, NULL);
    f->cap = flush_min * 2 > 64 * 1024 ? flush_min * 2 : 64 * 1024;
    f->buf = malloc(f->cap);
    if (f->buf == NULL)
        abort();
    files[n_files++] = f;
    pthread_mutex_unlock(&files_mu);
    return f;
}

/* Writes the buffer out; the file's mutex is held. A failed write drops the buffered lines. */
static void file_drain(dp_access_file_t *f)
{
    size_t off = 0;
    for (int tries = 0; off < f->len && tries < 64; tries++) {
        ssize_t k = write(f->fd, f->buf + off, f->len - off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (!f->write_failed)
                fprintf(stderr, "access log %s: write failed: %s\n", f->path,
                        k < 0 ? strerror(errno) : "short write");
            f->write_failed = true;
            break;
        }
        f->write_failed = false;
        off += (size_t)k;
    }
    f->len = 0;
}

void dp_access_file_append(dp_access_file_t *f, const char *p, size_t n)
{
    pthread_mutex_lock(&f->mu);
    if (f->len + n > f->cap)
        file_drain(f);
    if (n > f->cap)
        n = f->cap; /* a line is never larger than LINE_MAX_LEN; the buffer is bigger */
    memcpy(f->buf + f->len, p, n);
    f->len += n;
    if (f->len >= flush_min)
        file_drain(f);
    pthread_mutex_unlock(&f->mu);
}

void dp_access_log_write(const dp_access_log_t *logs, size_t n, const dp_stream_t *s,
                         uint64_t now_ms)
{
    static _Thread_local char line[LINE_MAX_LEN];
    for (size_t i = 0; i < n; i++) {
        size_t len = dp_access_format_line(logs[i].format, s, now_ms, line, sizeof(line));
        if (len && logs[i].file)
            dp_access_file_append(logs[i].file, line, len);
    }
}

void dp_access_log_flush(void)
{
    pthread_mutex_lock(&files_mu);
    for (size_t i = 0; i < n_files; i++) {
        pthread_mutex_lock(&files[i]->mu);
        file_drain(files[i]);
        pthread_mutex_unlock(&files[i]->mu);
    }
    pthread_mutex_unlock(&files_mu);
}

int dp_access_log_reopen(void)
{
    int rc = 0;
    pthread_mutex_lock(&files_mu);
    for (size_t i = 0; i < n_files; i++) {
        dp_access_file_t *f = files[i];
        pthread_mutex_lock(&f->mu);
        file_drain(f);
        if (!f->std) {
            bool std;
            int fd = file_open(f->path, &std);
            if (fd >= 0) {
                close(f->fd);
                f->fd = fd;
            } else if (rc == 0) {
                rc = fd;
            }
        }
        pthread_mutex_unlock(&f->mu);
    }
    pthread_mutex_unlock(&files_mu);
    return rc;
}

static void on_flush(uv_timer_t *t)
{
    (void)t;
    dp_access_log_flush();
}

void dp_access_log_start(uv_loop_t *loop, uint32_t interval_ms, uint32_t min_size_kb)
{
    if (min_size_kb)
        flush_min = (size_t)(min_size_kb < 16384 ? min_size_kb : 16384) * 1024;
    if (interval_ms == 0)
        interval_ms = 10000;
    uv_timer_init(loop, &flush_timer);
    uv_timer_start(&flush_timer, on_flush, interval_ms, interval_ms);
    uv_unref((uv_handle_t *)&flush_timer);
}
