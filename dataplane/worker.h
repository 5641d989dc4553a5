/* Worker threads: each runs its own libuv loop, and every connection lives on exactly one
 * worker (Envoy's threading model). The main thread creates, starts and stops them; the data
 * plane attaches listeners to a worker's loop from inside that worker. */
#ifndef SKIFF_DATAPLANE_WORKER_H
#define SKIFF_DATAPLANE_WORKER_H

#include <stdbool.h>
#include <uv.h>

#include "dataplane/snapshot.h"

typedef struct dp_worker dp_worker_t;

/* Called on the worker thread once its loop is ready, before it runs. */
typedef void (*dp_worker_init_fn)(dp_worker_t *w, void *userdata);

/* Creates worker number `index` (named "worker_<index>", as Envoy names its threads). Returns
 * NULL on allocation failure. Main thread. */
dp_worker_t *dp_worker_new(unsigned index, dp_worker_init_fn init, void *userdata);

/* Starts the thread and waits until its loop runs. Returns 0 or a negative errno. */
int dp_worker_start(dp_worker_t *w);

/* Asks the worker to stop: its loop closes every handle and returns. Any thread; idempotent. */
void dp_worker_stop(dp_worker_t *w);

/* Waits for the thread to end, then frees the worker. Accepts NULL. Main thread. */
void dp_worker_join_free(dp_worker_t *w);

/* Hands the worker a new configuration: a reference to s goes into the worker's one-slot
 * mailbox (an unread one there is dropped) and the worker swaps it in on its next wakeup.
 * Main thread. */
void dp_worker_publish(dp_worker_t *w, dp_snapshot_t *s);

/* The worker's current snapshot (borrowed; take a reference to keep it past this callback),
 * or NULL before the first. Worker thread. */
dp_snapshot_t *dp_worker_snapshot(dp_worker_t *w);

/* The generation of the worker's current snapshot, 0 before the first. Any thread. */
uint64_t dp_worker_generation(const dp_worker_t *w);

unsigned dp_worker_index(const dp_worker_t *w);
const char *dp_worker_name(const dp_worker_t *w);
uv_loop_t *dp_worker_loop(dp_worker_t *w); /* valid on the worker thread once started */
bool dp_worker_running(const dp_worker_t *w);

#endif
