/* A worker's data-plane context and the hand-off of accepted connections from the listener
 * (dataplane/listener.c: accept, listener filters, filter-chain choice) to the network filter
 * that ends the chosen chain: tcp_proxy (dataplane/tcp_proxy.c) or the HTTP connection
 * manager (dataplane/hcm.c). Worker thread only. */
#ifndef SKIFF_DATAPLANE_CONN_H
#define SKIFF_DATAPLANE_CONN_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "dataplane/snapshot.h"

struct dp_upstreams; /* dataplane/upstream.h */
struct dp_accepted;

/* Every live downstream connection of a worker is linked here, so that the worker can close
 * them all when it stops. */
typedef struct dp_conn_link {
    struct dp_conn_link *prev, *next;
    void (*close)(struct dp_conn_link *l); /* close now; unlink from the close callback */
} dp_conn_link_t;

typedef struct dp_wctx {
    uv_loop_t *loop;
    unsigned index;          /* the worker's number */
    dp_snapshot_t *snap;     /* the current snapshot (borrowed; connections ref their own) */
    struct dp_upstreams *up; /* this worker's upstream connection pools */
    dp_conn_link_t *conns;
    uint64_t rng; /* xorshift state for random choices */
    uint64_t rr;  /* a counter for even spreading (weighted clusters) */
    /* Where an accepted connection goes, by the network filter ending its chain. Set by the
     * worker; a NULL one closes such connections. */
    void (*hcm_start)(struct dp_wctx *w, struct dp_accepted *a);
    void (*tcp_proxy_start)(struct dp_wctx *w, struct dp_accepted *a);
    bool closing;
} dp_wctx_t;

void dp_wctx_link(dp_wctx_t *w, dp_conn_link_t *l);
void dp_wctx_unlink(dp_wctx_t *w, dp_conn_link_t *l);
/* Closes every linked connection (each unlinks itself). */
void dp_wctx_close_all(dp_wctx_t *w);
/* A uniformly random 64-bit number (xorshift64*; not for secrets). */
uint64_t dp_wctx_random(dp_wctx_t *w);

/* uv_try_write of one buffer on a connected stream, through send(2) for TCP (read/write on a
 * socket go through the VFS layer first: measured 0.07 us more per call on loopback). The
 * same contract: UV_EAGAIN when bytes are queued ahead or the socket takes none, else the
 * bytes written or an error. */
int dp_try_send(uv_stream_t *s, const char *p, size_t n);

/* An accepted connection on its way to its network filter. The receiver owns fd and the snap
 * reference. local is the original destination when the listener uses use_original_dst. */
typedef struct dp_accepted {
    int fd;
    dp_snapshot_t *snap;
    const dp_listener_t *listener;
    const struct dp_filter_chain *chain;
    struct sockaddr_storage local, remote;
    char sni[256]; /* server name from tls_inspector, "" when none */
    char alpn[64]; /* the first ALPN protocol offered (tls_inspector) or detected
                    * (http_inspector: "http/1.1", "http/1.0", "h2c"), "" when none */
    bool global_counted; /* holds a place under the global connection limit */
} dp_accepted_t;

/* Gives a's place under the global connection limit back (dataplane/listener.h; a no-op for
 * one that holds none); every receiver of a dp_accepted_t calls it once the connection is
 * closed. */
void dp_accepted_release(dp_accepted_t *a);

/* tcp_proxy: relays the connection to the chain's cluster. Takes ownership of a->fd and
 * a->snap. */
void dp_tcp_proxy_start(dp_wctx_t *w, dp_accepted_t *a);

#endif
