/* The ADS protocol: one aggregated stream to the control plane, state of the world
 * (StreamAggregatedResources) or incremental (DeltaAggregatedResources), with the nonce,
 * version, ACK and NACK rules istiod applies (Istio pkg/xds/server.go, pilot/pkg/xds/delta.go)
 * and Envoy's client behaviour: node on the first request only, re-subscription after every
 * reconnect (delta: initial_resource_versions), exponential back-off with jitter.
 *
 * Everything runs on one libuv loop (the main thread). Decoding the resources and deciding
 * whether to accept them belongs to the caller: ads.c only speaks the protocol. */
#ifndef SKIFF_XDS_ADS_H
#define SKIFF_XDS_ADS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "xds/grpc_stream.h"

typedef struct xds_ads xds_ads_t;

/* One resource of a response: its name, version (delta only; "" otherwise) and the bytes of the
 * packed message (the Any's value), with the Any's type URL. Valid during the callback. */
typedef struct xds_ads_resource {
    const char *name; /* "" when a SotW response did not say (the caller decodes it) */
    const char *version;
    const char *type_url;
    const uint8_t *data;
    size_t len;
} xds_ads_resource_t;

/* An update of one type. For SotW `state_of_the_world` is set and `resources` is the full
 * set the server now holds for that type (for wildcard types absence means removal; for named
 * types only the names it mentions). For delta, `resources` are added or changed and
 * `removed` names the removed ones. */
typedef struct xds_ads_update {
    const char *type_url;
    const char *version_info; /* SotW version_info, or delta system_version_info */
    const char *nonce;
    bool state_of_the_world;
    const xds_ads_resource_t *resources;
    size_t n_resources;
    const char *const *removed;
    size_t n_removed;
} xds_ads_update_t;

typedef struct xds_ads_callbacks {
    /* Returns 0 to ACK. To NACK, returns -EINVAL and sets *reterr_msg to a malloc'd text naming
     * every bad resource and field; it becomes the request's error_detail.message. */
    int (*on_update)(void *userdata, const xds_ads_update_t *u, char **reterr_msg);
    /* The stream went up (a response arrived) or down. */
    void (*on_connection)(void *userdata, bool connected);
} xds_ads_callbacks_t;

typedef struct xds_ads_config {
    xds_grpc_target_t target;
    bool delta;                 /* DELTA_GRPC */
    const uint8_t *node;        /* packed envoy.config.core.v3.Node, copied */
    size_t node_len;
    bool node_first_only;       /* set_node_on_first_message_only */
    unsigned backoff_base_ms;   /* 0: 500 */
    unsigned backoff_max_ms;    /* 0: 30000 */
    /* The gRPC method; NULL: the ADS method of the protocol. Istio's SDS server speaks
     * "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets" (state of the world). */
    const char *method;
    /* A file holding a bearer token (Istio's projected istio-token), read again at every
     * (re)connect since the token rotates; it replaces target.access_token. NULL: none. */
    const char *token_file;
} xds_ads_config_t;

xds_ads_t *xds_ads_new(uv_loop_t *loop, const xds_ads_config_t *cfg,
                       const xds_ads_callbacks_t *cb, void *userdata);

/* Declares interest in a type: wildcard (CDS, LDS) or the given names (EDS, RDS, SDS). A
 * change is sent at once when connected, and re-sent after each reconnect. Types are sent in
 * the order they were first declared. Names are copied. a may be NULL (no ADS stream):
 * nothing happens. */
void xds_ads_subscribe(xds_ads_t *a, const char *type_url, bool wildcard, const char *const *names,
                       size_t n_names);

/* Sets (or replaces) the bearer token file after creation. Accepts a NULL a. */
void xds_ads_set_token_file(xds_ads_t *a, const char *path);

/* Connects (and keeps reconnecting until freed). Accepts NULL. */
void xds_ads_start(xds_ads_t *a);

bool xds_ads_connected(const xds_ads_t *a);

/* Closes the stream and frees everything. Accepts NULL. */
void xds_ads_free(xds_ads_t *a);

#endif
