/* One bidirectional gRPC stream over gRPC core's C API, bridged to a libuv loop.
 *
 * gRPC core delivers completions on a completion queue; a dedicated thread drains it and hands
 * every received message (as one contiguous buffer) and the end of the stream to the owning
 * libuv loop through a mutex-protected queue and uv_async_send. Messages are sent from the
 * loop's thread; at most one send is in flight and the rest wait in order.
 *
 * The stream carries raw bytes: encoding and decoding belong to the caller (xds/ads.c). */
#ifndef SKIFF_XDS_GRPC_STREAM_H
#define SKIFF_XDS_GRPC_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct xds_grpc_stream xds_grpc_stream_t;

typedef struct xds_grpc_stream_callbacks {
    /* A message arrived. data is valid during the call only. Loop thread. */
    void (*on_message)(void *userdata, const uint8_t *data, size_t len);
    /* The stream ended (status from the server, or a transport failure). The stream object is
     * still valid and must be freed with xds_grpc_stream_free. Loop thread. */
    void (*on_closed)(void *userdata, int grpc_status, const char *details);
} xds_grpc_stream_callbacks_t;

/* Settings of the channel. */
typedef struct xds_grpc_target {
    const char *target; /* gRPC target: "127.0.0.1:15010", "unix:/path" or "unix:./rel" */
    unsigned keepalive_time_ms;     /* 0: gRPC's default */
    unsigned keepalive_timeout_ms;  /* 0: gRPC's default */
    size_t max_receive_bytes;       /* 0: no limit (Istio's CDS can be over 4 MiB) */
    /* TLS (istiod's 15012): PEM texts; root_certs NULL means plaintext (h2c). */
    const char *root_certs;
    const char *cert_chain; /* with private_key: mutual TLS */
    const char *private_key;
    const char *access_token; /* sent as "authorization: Bearer <token>" */
    const char *const *metadata; /* key, value, key, value, ...; added to the call */
    size_t n_metadata;           /* pairs */
} xds_grpc_target_t;

/* Starts a call of `method` ("/pkg.Service/Method") on a new channel. Returns NULL when gRPC
 * cannot create it (out of memory); connection failures arrive later through on_closed.
 * Loop thread. */
xds_grpc_stream_t *xds_grpc_stream_open(uv_loop_t *loop, const xds_grpc_target_t *t,
                                        const char *method,
                                        const xds_grpc_stream_callbacks_t *cb, void *userdata);

/* Queues a message (copied). Returns 0, or -EPIPE when the stream has ended. Loop thread. */
int xds_grpc_stream_send(xds_grpc_stream_t *s, const uint8_t *data, size_t len);

/* Cancels the call if it is still open, waits for its thread, and frees everything. No
 * callback runs once this returns. Accepts NULL. Loop thread. */
void xds_grpc_stream_free(xds_grpc_stream_t *s);

/* gRPC core's process-wide init and shutdown; call once each from main(). gRPC itself starts
 * with the first stream opened (xds_grpc_stream_open), so that a process with no control
 * plane does not run it; shutdown stops it if it ran. */
void xds_grpc_global_init(void);
void xds_grpc_global_shutdown(void);

#endif
