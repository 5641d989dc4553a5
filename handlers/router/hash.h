/* The route's hash policies (RouteAction.hash_policy) turned into the 64-bit key that
 * RING_HASH and MAGLEV clusters place a request by, computed from the same inputs as Envoy's
 * source/common/http/hash_policy.cc so that a key lands where Envoy would put it:
 *   header:           every value of the header, sorted, chained through XXH64 (seed 0, then
 *                     each hash the seed of the next); pseudo-headers :authority, :path,
 *                     :method and :scheme are the head's fields;
 *   cookie:           XXH64 of the named cookie's value (quotes stripped); absent with a ttl:
 *                     a value generated as Envoy does (the hex XXH64 of the downstream remote
 *                     then local address, "ip:port" each), hashed, and a Set-Cookie for it;
 *   source_ip:        XXH64 of the downstream remote IP as text (no port);
 *   query_parameter:  XXH64 of the first value of that parameter (not decoded).
 * Policies combine as Envoy's: h = rotl(h, 1) ^ next, stopping after a terminal one that
 * produced a hash. Pure; worker thread (the pool is the stream's). */
#ifndef SKIFF_HANDLERS_ROUTER_HASH_H
#define SKIFF_HANDLERS_ROUTER_HASH_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dataplane/http.h"
#include "dataplane/route.h"

/* Evaluates the policies on req. Returns whether any gave a hash (then *ret_hash is set).
 * *ret_set_cookie: a Set-Cookie value (in pool) the response must carry, or DP_STR_NULL. */
bool dp_router_hash(const dp_hash_policy_t *p, size_t n, const dp_http_head_t *req,
                    const struct sockaddr *remote, const struct sockaddr *local, dp_pool_t *pool,
                    uint64_t *ret_hash, dp_str_t *ret_set_cookie);

/* The value of cookie `name` in the request's cookie headers (surrounding double quotes
 * removed), or DP_STR_NULL. */
dp_str_t dp_router_cookie_value(const dp_http_head_t *req, const char *name);

/* Envoy's Address::asString for an IP address: "1.2.3.4:80", "[::1]:80"; with_port false:
 * the address alone. Returns the length written to buf (0 on failure). */
size_t dp_router_addr_str(const struct sockaddr *sa, bool with_port, char *buf, size_t len);

#endif
