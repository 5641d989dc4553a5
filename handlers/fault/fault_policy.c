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

/* ---- header matching: route.h's HeaderMatcher (Envoy's HeaderUtility semantics) ---- */

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
        if (!dp_header_match(&c->headers[i], req))
            return false;
    }
    return true;
}
