/* The fault filter's decisions as pure functions over a request head and random numbers. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "handlers/fault/fault.h"

#include <ctype.h>
#include <string.h>

#include "dataplane/route.h"

bool dp_fault_percent_hit(dp_fault_percent_t p, uint64_t random)
{
    if (p.denominator == 0)
        return false;
    return random % p.denominator < p.numerator;
}

bool dp_fault_parse_uint(dp_str_t v, uint64_t max, uint64_t *ret)
{
    size_t i = 0, n = v.n;
    while (i < n && (v.p[i] == ' ' || v.p[i] == '\t'))
        i++;
    while (n > i && (v.p[n - 1] == ' ' || v.p[n - 1] == '\t'))
        n--;
    if (i == n || n - i > 20)
        return false;
    uint64_t x = 0;
    for (; i < n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return false;
        uint64_t d = (uint64_t)(v.p[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return false;
        x = x * 10 + d;
    }
    if (x > max)
        return false;
    *ret = x;
    return true;
}

dp_fault_percent_t dp_fault_percent_from_header(dp_fault_percent_t configured,
                                                const dp_headers_t *h, const char *name,
                                                size_t name_len)
{
    const dp_header_t *e = h ? dp_headers_get(h, name, name_len) : NULL;
    uint64_t v;
    if (e == NULL || !dp_fault_parse_uint(e->value, UINT32_MAX, &v))
        return configured;
    if (v < configured.numerator)
        configured.numerator = (uint32_t)v;
    return configured;
}

uint64_t dp_fault_delay_ms(const dp_fault_conf_t *c, const dp_headers_t *h, uint64_t random)
{
    if (!c->has_delay)
        return 0;
    dp_fault_percent_t p = c->delay_percent;
    if (c->delay_from_header)
        p = dp_fault_percent_from_header(p, h, DP_FAULT_HDR_DELAY_PERCENT,
                                         sizeof(DP_FAULT_HDR_DELAY_PERCENT) - 1);
    if (!dp_fault_percent_hit(p, random))
        return 0;
    if (!c->delay_from_header)
        return c->delay_ms;
    const dp_header_t *e = h ? DP_HDR_GET(h, DP_FAULT_HDR_DELAY) : NULL;
    uint64_t ms;
    /* No upper bound in Envoy; libuv's timers take a uint64 of ms, so any value fits. */
    if (e == NULL || !dp_fault_parse_uint(e->value, UINT64_MAX, &ms))
        return 0;
    return ms;
}

bool dp_fault_abort_status(const dp_fault_conf_t *c, const dp_headers_t *h, uint64_t random,
                           int *ret_http, int *ret_grpc)
{
    if (c->abort_kind == DP_FAULT_ABORT_NONE)
        return false;
    dp_fault_percent_t p = c->abort_percent;
    if (c->abort_kind == DP_FAULT_ABORT_HEADER)
        p = dp_fault_percent_from_header(p, h, DP_FAULT_HDR_ABORT_PERCENT,
                                         sizeof(DP_FAULT_HDR_ABORT_PERCENT) - 1);
    if (!dp_fault_percent_hit(p, random))
        return false;
    switch (c->abort_kind) {
    case DP_FAULT_ABORT_HTTP:
        *ret_http = (int)c->abort_http_status;
        *ret_grpc = -1;
        return true;
    case DP_FAULT_ABORT_GRPC:
        *ret_http = 200;
        *ret_grpc = (int)c->abort_grpc_status;
        return true;
    case DP_FAULT_ABORT_HEADER: {
        const dp_header_t *e = h ? DP_HDR_GET(h, DP_FAULT_HDR_ABORT) : NULL;
        uint64_t v;
        /* An HTTP status in the header wins over a gRPC one (Envoy's abortStatus). */
        if (e && dp_fault_parse_uint(e->value, 599, &v) && v >= 200) {
            *ret_http = (int)v;
            *ret_grpc = -1;
            return true;
        }
        e = h ? DP_HDR_GET(h, DP_FAULT_HDR_ABORT_GRPC) : NULL;
        if (e && dp_fault_parse_uint(e->value, UINT32_MAX, &v)) {
            *ret_http = 200;
            *ret_grpc = (int)(v > INT32_MAX ? INT32_MAX : v);
            return true;
        }
        return false;
    }
    case DP_FAULT_ABORT_NONE:
        break;
    }
    return false;
}

/* ---- header matching ---- */

/* The value a matcher sees: a pseudo-header from the head's fields, else every header of that
 * name joined with "," (Envoy's HeaderUtility::getAllOfHeaderAsString). p == NULL: absent. */
static dp_str_t header_value(const dp_http_head_t *req, const char *name, size_t n, dp_pool_t *pool)
{
    if (n > 0 && name[0] == ':') {
        dp_str_t v = DP_STR_NULL;
        if (n == 7 && memcmp(name, ":method", 7) == 0)
            v = req->method;
        else if (n == 5 && memcmp(name, ":path", 5) == 0)
            v = req->path;
        else if (n == 10 && memcmp(name, ":authority", 10) == 0)
            v = req->authority;
        else if (n == 7 && memcmp(name, ":scheme", 7) == 0)
            v = req->scheme;
        return v;
    }
    if (n == 4 && memcmp(name, "host", 4) == 0)
        return req->authority;
    const dp_headers_t *h = &req->headers;
    size_t count = 0, total = 0;
    const dp_header_t *first = NULL;
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->v[i].name.n == n && memcmp(h->v[i].name.p, name, n) == 0) {
            if (first == NULL)
                first = &h->v[i];
            count++;
            total += h->v[i].value.n + 1;
        }
    }
    if (first == NULL)
        return DP_STR_NULL;
    if (count == 1 || pool == NULL)
        return first->value.p ? first->value : DP_STR("");
    char *buf = dp_pool_alloc(pool, total);
    size_t off = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->v[i].name.n == n && memcmp(h->v[i].name.p, name, n) == 0) {
            if (off)
                buf[off++] = ',';
            if (h->v[i].value.n)
                memcpy(buf + off, h->v[i].value.p, h->v[i].value.n);
            off += h->v[i].value.n;
        }
    }
    buf[off] = '\0';
    return (dp_str_t){buf, off};
}

static bool bytes_eq(const char *a, const char *b, size_t n, bool icase)
{
    if (!icase)
        return memcmp(a, b, n) == 0;
    for (size_t i = 0; i < n; i++) {
        if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i]))
            return false;
    }
    return true;
}

static bool regex_full_match(const void *rx, dp_str_t v)
{
    return dp_regex_full_match(rx, v.p, v.n);
}

static bool range_match(const dp_fault_header_matcher_t *m, dp_str_t v)
{
    size_t i = 0;
    bool neg = false;
    if (v.n == 0)
        return false;
    if (v.p[0] == '-' || v.p[0] == '+') {
        neg = v.p[0] == '-';
        i = 1;
    }
    if (i == v.n || v.n - i > 19)
        return false;
    uint64_t u = 0; /* at most 19 digits: fits in a uint64 */
    for (; i < v.n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return false;
        u = u * 10 + (uint64_t)(v.p[i] - '0');
    }
    if (u > (uint64_t)INT64_MAX + (neg ? 1u : 0u))
        return false;
    int64_t x = neg ? (int64_t)(0 - u) : (int64_t)u;
    return x >= m->range_start && x < m->range_end;
}

bool dp_fault_header_matches(const dp_fault_header_matcher_t *m, const dp_http_head_t *req,
                             dp_pool_t *pool)
{
    dp_str_t v = header_value(req, m->name, m->name_len, pool);
    if (v.p == NULL && m->missing_as_empty)
        v = DP_STR("");
    bool r;
    if (v.p == NULL) {
        /* Absent: only present_match: false matches (Envoy), inverted or not. */
        r = m->kind == DP_FAULT_HM_PRESENT && !m->present;
        return m->kind == DP_FAULT_HM_PRESENT ? r != m->invert : false;
    }
    switch (m->kind) {
    case DP_FAULT_HM_EXACT:
        r = v.n == m->value_len && bytes_eq(v.p, m->value, v.n, m->ignore_case);
        break;
    case DP_FAULT_HM_PREFIX:
        r = v.n >= m->value_len && bytes_eq(v.p, m->value, m->value_len, m->ignore_case);
        break;
    case DP_FAULT_HM_SUFFIX:
        r = v.n >= m->value_len &&
            bytes_eq(v.p + v.n - m->value_len, m->value, m->value_len, m->ignore_case);
        break;
    case DP_FAULT_HM_CONTAINS:
        r = false;
        for (size_t i = 0; !r && i + m->value_len <= v.n; i++)
            r = bytes_eq(v.p + i, m->value, m->value_len, m->ignore_case);
        break;
    case DP_FAULT_HM_REGEX:
        r = regex_full_match(m->regex, v);
        break;
    case DP_FAULT_HM_RANGE:
        r = range_match(m, v);
        break;
    case DP_FAULT_HM_PRESENT:
        r = m->present;
        break;
    default:
        r = false;
    }
    return r != m->invert;
}

bool dp_fault_request_matches(const dp_fault_conf_t *c, const dp_http_head_t *req, dp_pool_t *pool)
{
    if (c->n_downstream_nodes) {
        const dp_header_t *e = DP_HDR_GET(&req->headers, DP_FAULT_HDR_DOWNSTREAM_NODE);
        if (e == NULL)
            return false;
        bool found = false;
        for (size_t i = 0; !found && i < c->n_downstream_nodes; i++) {
            const char *n = c->downstream_nodes[i];
            found = strlen(n) == e->value.n && memcmp(n, e->value.p, e->value.n) == 0;
        }
        if (!found)
            return false;
    }
    for (size_t i = 0; i < c->n_headers; i++) {
        if (!dp_fault_header_matches(&c->headers[i], req, pool))
            return false;
    }
    return true;
}
