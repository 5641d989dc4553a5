/* envoy.filters.http.router: the terminal HTTP filter. It picks the virtual host and route
 * for the request (dataplane/route.h), answers direct_response and redirect routes itself,
 * otherwise sends the request to a host of the route's cluster through the worker's upstream
 * pools (dataplane/upstream.h) in the protocol the cluster asks for, and relays the response
 * back, with back-pressure both ways and Envoy's local replies and response flags: 404 NR,
 * 503 NC, 503 UH, 503 UF, 503 UR/UC, 503 UO (with x-envoy-overloaded), 504 UT.
 *
 * Resilience, as Envoy's router (source/common/router/router.cc, retry_state_impl.cc):
 *   - retries under the route's retry_policy (else the vhost's), widened by a trusted peer's
 *     x-envoy-retry-on / x-envoy-retry-grpc-on / x-envoy-max-retries /
 *     x-envoy-upstream-rq-per-try-timeout-ms (none of them forwarded): the conditions of
 *     handlers/router/retry.h, num_retries, per_try_timeout and per_try_idle_timeout (a local
 *     reset: retried under reset, 5xx, gateway-error; 504 UT after the last), previous_hosts
 *     (the hosts tried go to the pools as dp_lb_ctx_t.exclude, with
 *     host_selection_retry_max_attempts), jittered exponential back-off, x-envoy-attempt-count
 *     (include_request_attempt_count, include_attempt_count_in_response). The request body is
 *     kept for replay up to the connection manager's buffer limit (past it: no retry); no retry
 *     once a response byte went downstream; each retry holds the cluster's max_retries breaker
 *     (refused: no retry, UO). Retries run out on a retriable failure: the final response or
 *     local reply carries URX. Stats: cluster.<name>.upstream_rq_retry, _retry_success,
 *     _retry_limit_exceeded, _retry_overflow (by the pools), _per_try_timeout,
 *     _per_try_idle_timeout;
 *   - each attempt holds the max_requests breaker (refused: 503 UO) and reports its outcome
 *     to the pools (dp_upstream_host_result) for outlier detection;
 *   - timeouts: the route timeout from the end of the request (for gRPC with max_grpc_timeout:
 *     grpc-timeout less grpc_timeout_header_offset, capped, 0 meaning no cap; grpc-timeout is
 *     sent upstream with what applies), idle_timeout (no byte either way) and
 *     max_stream_duration (with grpc_timeout_header_max for gRPC): before the response 504
 *     once the request is complete, else 408, flag SI; after it, a reset;
 *   - request_mirror_policies (handlers/router/mirror.h) and hash_policy
 *     (handlers/router/hash.h; the key goes to the pools as dp_lb_ctx_t.hash, a generated
 *     cookie's Set-Cookie onto the response).
 *
 * Trusts: the request head as the connection manager left it (x-envoy-* from untrusted peers
 * already removed). Worker thread. */
#ifndef SKIFF_HANDLERS_ROUTER_H
#define SKIFF_HANDLERS_ROUTER_H

#include "dataplane/stream.h"

extern const dp_http_filter_type_t dp_router_filter;

#endif
