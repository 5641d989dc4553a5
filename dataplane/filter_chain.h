/* Filter chains of a listener and Envoy's filter-chain matching (FilterChainMatch).
 *
 * A listener's chains are tried criterion by criterion in Envoy's order, and at each step only
 * the most specific chains that match go on to the next one (no backtracking, as Envoy):
 *   destination_port      exact port, else chains without one
 *   prefix_ranges         longest prefix containing the destination IP (none = /0)
 *   server_names          exact SNI, else the longest "*.suffix", else chains without names
 *   transport_protocol    exact ("tls", "raw_buffer"), else chains without one
 *   application_protocols the first offered ALPN some chain lists, else chains without any
 *   direct_source_prefix_ranges, source_type, source_prefix_ranges, source_ports (likewise)
 * No chain left: the listener's default_filter_chain (may be NULL: the connection is closed).
 *
 * Pure functions over the snapshot's const data; any thread. */
#ifndef SKIFF_DATAPLANE_FILTER_CHAIN_H
#define SKIFF_DATAPLANE_FILTER_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dataplane/snapshot.h"

struct dp_hcm_config; /* dataplane/hcm.h */

/* An IP prefix (CidrRange): family AF_INET or AF_INET6, addr in network order with the bits
 * past len cleared. */
typedef struct dp_cidr {
    uint8_t family;
    uint8_t len;
    uint8_t addr[16];
} dp_cidr_t;

/* FilterChainMatch.ConnectionSourceType */
typedef enum dp_source_type {
    DP_SOURCE_ANY = 0,
    DP_SOURCE_SAME_IP_OR_LOOPBACK = 1,
    DP_SOURCE_EXTERNAL = 2,
} dp_source_type_t;

typedef struct dp_fc_match {
    uint32_t destination_port; /* 0: any */
    const dp_cidr_t *prefix_ranges;
    size_t n_prefix_ranges;
    const char *const *server_names; /* lower case; "*.example.com" for wildcards */
    size_t n_server_names;
    const char *transport_protocol; /* "" : any */
    const char *const *application_protocols;
    size_t n_application_protocols;
    const dp_cidr_t *direct_source_prefix_ranges;
    size_t n_direct_source_prefix_ranges;
    dp_source_type_t source_type;
    const dp_cidr_t *source_prefix_ranges;
    size_t n_source_prefix_ranges;
    const uint32_t *source_ports;
    size_t n_source_ports;
} dp_fc_match_t;

/* tcp_proxy (envoy.filters.network.tcp_proxy): one cluster or a weighted split. */
typedef struct dp_tcp_proxy {
    const char *stat_prefix;
    const char *cluster;                   /* the cluster, or the first weighted one */
    const dp_weighted_cluster_t *weighted; /* weighted_clusters, or NULL */
    size_t n_weighted;
    uint32_t total_weight;
    uint64_t idle_timeout_ms; /* 0: none; Envoy's default is 1 h */
    /* access_log: a line each when a connection ends (dataplane/access_log.h). */
    const struct dp_access_log *access_logs;
    size_t n_access_logs;
} dp_tcp_proxy_t;

typedef struct dp_filter_chain {
    const char *name; /* FilterChain.name, "" when unnamed */
    dp_fc_match_t match;
    /* The network filter ending the chain (at most one is set; neither: the chain cannot
     * serve and its connections are closed). Filters before it (istio.metadata_exchange,
     * istio.stats, rbac) are passed over. */
    const dp_tcp_proxy_t *tcp;
    const struct dp_hcm_config *hcm;
    bool tls; /* transport_socket is TLS (envoy.transport_sockets.tls) */
    /* envoy.filters.network.local_ratelimit filters before the terminal one, in order
     * (dataplane/net_ratelimit.h); NULL: none */
    const struct dp_net_ratelimit *rate_limit;
} dp_filter_chain_t;

/* What a connection offers to matching. Addresses are AF_INET or AF_INET6 (others match only
 * chains without address criteria). */
typedef struct dp_fc_input {
    const struct sockaddr *local;         /* the destination (original destination) */
    const struct sockaddr *remote;        /* the source */
    const struct sockaddr *direct_remote; /* the peer of the socket; NULL: same as remote */
    const char *server_name;              /* SNI, "" or NULL when none */
    const char *transport_protocol;       /* "tls" or "raw_buffer"; NULL: "raw_buffer" */
    const char *const *alpn;              /* offered application protocols, in order */
    size_t n_alpn;
} dp_fc_input_t;

/* The chain for a connection: the match, else l->default_chain, else NULL. */
const dp_filter_chain_t *dp_filter_chain_select(const dp_listener_t *l, const dp_fc_input_t *in);

/* Whether addr (AF_INET/AF_INET6) lies in c. */
bool dp_cidr_contains(const dp_cidr_t *c, const struct sockaddr *addr);

/* Parses "10.0.0.0" with prefix length len into *out (bits past len cleared). Returns false
 * when the address is not an IP or len is too long for its family. */
bool dp_cidr_parse(const char *address, uint32_t len, dp_cidr_t *out);

/* Whether two chains' matches accept a common connection at the same level of every criterion
 * (Envoy refuses such listeners: "multiple filter chains with the same matching rules"). */
bool dp_fc_match_overlaps(const dp_fc_match_t *a, const dp_fc_match_t *b);

#endif
