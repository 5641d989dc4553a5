#include "handlers/router/retry.h"

#include <stdio.h>

#include "dataplane/route.h"

bool dp_router_retry_status(uint32_t retry_on, const uint32_t *codes, size_t n_codes, int status,
                            int grpc_status, bool ratelimited)
{
    if (ratelimited)
        return false;
    if ((retry_on & DP_RETRY_5XX) && status >= 500 && status <= 599)
        return true;
    if ((retry_on & DP_RETRY_GATEWAY_ERROR) && (status == 502 || status == 503 || status == 504))
        return true;
    if ((retry_on & DP_RETRY_RETRIABLE_4XX) && status == 409)
        return true;
    if (retry_on & DP_RETRY_RETRIABLE_STATUS_CODES) {
        for (size_t i = 0; i < n_codes; i++) {
            if ((int)codes[i] == status)
                return true;
        }
    }
    switch (grpc_status) {
    case DP_GRPC_CANCELLED:
        return (retry_on & DP_RETRY_GRPC_CANCELLED) != 0;
    case DP_GRPC_DEADLINE_EXCEEDED:
        return (retry_on & DP_RETRY_GRPC_DEADLINE_EXCEEDED) != 0;
    case DP_GRPC_RESOURCE_EXHAUSTED:
        return (retry_on & DP_RETRY_GRPC_RESOURCE_EXHAUSTED) != 0;
    case DP_GRPC_INTERNAL:
        return (retry_on & DP_RETRY_GRPC_INTERNAL) != 0;
    case DP_GRPC_UNAVAILABLE:
        return (retry_on & DP_RETRY_GRPC_UNAVAILABLE) != 0;
    default:
        return false;
    }
}

bool dp_router_retry_reset(uint32_t retry_on, dp_reset_reason_t why, bool started)
{
    if (why == DP_RESET_OVERFLOW || why == DP_RESET_NO_HEALTHY_HOST || why == DP_RESET_NONE)
        return false;
    if ((why == DP_RESET_CONNECT_FAIL || why == DP_RESET_CONNECT_TIMEOUT) &&
        (retry_on & DP_RETRY_CONNECT_FAILURE))
        return true;
    if ((retry_on & DP_RETRY_RESET_BEFORE_REQUEST) && !started)
        return true;
    if (retry_on & (DP_RETRY_5XX | DP_RETRY_GATEWAY_ERROR | DP_RETRY_RESET))
        return true;
    return (retry_on & DP_RETRY_REFUSED_STREAM) && why == DP_RESET_REFUSED;
}

uint64_t dp_router_backoff_next(uint64_t *interval, uint64_t max_ms, uint64_t random)
{
    uint64_t cur = *interval ? *interval : 1;
    *interval = cur < max_ms / 2 ? cur * 2 : max_ms;
    uint64_t v = random % cur;
    return v < max_ms ? v : max_ms;
}

int64_t dp_router_grpc_timeout_parse(dp_str_t v)
{
    if (v.p == NULL || v.n < 2 || v.n > 9)
        return -1;
    uint64_t n = 0;
    for (size_t i = 0; i + 1 < v.n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return -1;
        n = n * 10 + (uint64_t)(v.p[i] - '0');
    }
    switch (v.p[v.n - 1]) {
    case 'H':
        return (int64_t)(n * 3600000);
    case 'M':
        return (int64_t)(n * 60000);
    case 'S':
        return (int64_t)(n * 1000);
    case 'm':
        return (int64_t)n;
    case 'u':
        return (int64_t)((n + 999) / 1000);
    case 'n':
        return (int64_t)((n + 999999) / 1000000);
    default:
        return -1;
    }
}

size_t dp_router_grpc_timeout_fmt(uint64_t ms, char *buf, size_t len)
{
    static const struct {
        uint64_t div;
        char unit;
    } units[] = {{1, 'm'}, {1000, 'S'}, {60000, 'M'}, {3600000, 'H'}};
    size_t k = 0;
    uint64_t v = ms;
    while (k + 1 < sizeof(units) / sizeof(units[0]) && v > 99999999) {
        k++;
        /* rounded up so that the peer never sees a shorter deadline than ours */
        v = (ms + units[k].div - 1) / units[k].div;
    }
    if (v > 99999999)
        v = 99999999;
    int n = snprintf(buf, len, "%llu%c", (unsigned long long)v, units[k].unit);
    return n > 0 && (size_t)n < len ? (size_t)n : 0;
}

int64_t dp_router_parse_uint(dp_str_t v)
{
    if (v.p == NULL || v.n == 0 || v.n > 15)
        return -1;
    int64_t n = 0;
    for (size_t i = 0; i < v.n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return -1;
        n = n * 10 + (v.p[i] - '0');
    }
    return n;
}
