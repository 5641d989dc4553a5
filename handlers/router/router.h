/* envoy.filters.http.router: the terminal HTTP filter. It picks the virtual host and route
 * for the request (dataplane/route.h), answers direct_response and redirect routes itself,
 * otherwise sends the request to a host of the route's cluster through the worker's upstream
 * pools (dataplane/upstream.h) in the protocol the cluster asks for, and relays the response
 * back, with back-pressure both ways, the route timeout, and Envoy's local replies and
 * response flags: 404 NR, 503 NC, 503 UH, 503 UF, 503 UR/UC, 504 UT.
 *
 * Trusts: the request head as the connection manager left it (x-envoy-* from untrusted peers
 * already removed). Worker thread. */
#ifndef SKIFF_HANDLERS_ROUTER_H
#define SKIFF_HANDLERS_ROUTER_H

#include "dataplane/stream.h"

extern const dp_http_filter_type_t dp_router_filter;

#endif
