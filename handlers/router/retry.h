/* The router's pure retry and timeout decisions, as Envoy's router/retry_state_impl.cc and
 * router.cc make them: which responses and resets a retry_on set retries, the jittered
 * exponential back-off, and the grpc-timeout header. No I/O, no state beyond the arguments. */
#ifndef SKIFF_HANDLERS_ROUTER_RETRY_H
#define SKIFF_HANDLERS_ROUTER_RETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/http.h"

/* The gRPC status codes the retry conditions name. */
enum {
    DP_GRPC_CANCELLED = 1,
    DP_GRPC_DEADLINE_EXCEEDED = 4,
    DP_GRPC_RESOURCE_EXHAUSTED = 8,
    DP_GRPC_INTERNAL = 13,
    DP_GRPC_UNAVAILABLE = 14,
};

/* Whether a response head is retried under retry_on (DP_RETRY_* flags), as Envoy's
 * RetryStateImpl::wouldRetryFromHeaders: status, grpc_status (the grpc-status of the head, -1
 * when it has none: Envoy looks only at the headers, so only a trailers-only gRPC response is
 * retried), and whether it carries x-envoy-ratelimited (an upstream Envoy's rate limit: never
 * retried here, as skiff has no envoy-ratelimited condition). codes: retriable_status_codes
 * (with retriable-status-codes). */
bool dp_router_retry_status(uint32_t retry_on, const uint32_t *codes, size_t n_codes, int status,
                            int grpc_status, bool ratelimited);

/* Whether an attempt that ended before its response head is retried (wouldRetryFromReset):
 * never an overflow (or no healthy host); connect failures and timeouts under
 * connect-failure; any reset under reset-before-request while nothing of the request went
 * upstream (!started); any reset under reset, 5xx and gateway-error; REFUSED_STREAM under
 * refused-stream. A per-try timeout is a local reset of a started request. */
bool dp_router_retry_reset(uint32_t retry_on, dp_reset_reason_t why, bool started);

/* The next back-off in ms (Envoy's JitteredExponentialBackOffStrategy): random % interval,
 * at most max_ms, where *interval starts at the base and doubles up to max_ms after each
 * call. */
uint64_t dp_router_backoff_next(uint64_t *interval, uint64_t max_ms, uint64_t random);

/* The grpc-timeout header ("<1..8 digits><H|M|S|m|u|n>") in ms, rounded up; -1 when the value
 * is malformed. */
int64_t dp_router_grpc_timeout_parse(dp_str_t v);

/* Writes ms as a grpc-timeout value (the smallest unit that keeps it to 8 digits) into buf
 * (at least 16 bytes); returns its length. */
size_t dp_router_grpc_timeout_fmt(uint64_t ms, char *buf, size_t len);

/* A non-negative decimal header value (x-envoy-max-retries and the *-timeout-ms ones), up to
 * 15 digits; -1 when malformed. */
int64_t dp_router_parse_uint(dp_str_t v);

#endif
