#include "xds/grpc_stream.h"

#include <errno.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Completion tags: the address of one of these bytes tells which batch finished. */
enum { TAG_START, TAG_RECV, TAG_SEND, TAG_STATUS, TAG_COUNT };

typedef struct msg_node {
    struct msg_node *next;
    size_t len;
    uint8_t data[];
} msg_node_t;

struct xds_grpc_stream {
    uv_loop_t *loop;
    uv_async_t async;
    uv_thread_t thread;
    xds_grpc_stream_callbacks_t cb;
    void *userdata;

    grpc_channel *channel;
    grpc_completion_queue *cq;
    grpc_call *call;
    char tags[TAG_COUNT];

    /* owned by the completion-queue thread */
    grpc_byte_buffer *recv_buf;
    grpc_metadata_array initial_md;
    grpc_metadata *send_md; /* the call's initial metadata, alive until the call ends */
    size_t n_send_md;
    grpc_metadata_array trailing_md;
    grpc_status_code status;
    grpc_slice status_details;

    uv_mutex_t mu; /* guards everything below */
    msg_node_t *in_head, *in_tail;    /* received, for the loop */
    msg_node_t *out_head, *out_tail;  /* waiting to be sent */
    grpc_byte_buffer *send_buf;       /* the send in flight, or NULL */
    bool ended;                       /* status received: no more sends */
    bool ended_delivered;             /* on_closed has been called */
    bool closed_pending;              /* the loop has an end to deliver */
    int end_status;
    char end_details[256];
    atomic_int starts; /* batches started from any thread, minus completions */
    bool freeing;
};

/* gRPC core starts on the first stream: a configuration without a control plane (a static
 * bootstrap) never loads its threads and pools. Streams are opened on the main loop only. */
static bool grpc_started;

void xds_grpc_global_init(void)
{
}

void xds_grpc_global_shutdown(void)
{
    if (grpc_started)
        grpc_shutdown();
    grpc_started = false;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL)
        abort();
    return p;
}

/* Starts the send of the first queued message. Called with mu held. */
static void start_send_locked(xds_grpc_stream_t *s)
{
    if (s->send_buf || s->out_head == NULL || s->ended)
        return;
    msg_node_t *m = s->out_head;
    s->out_head = m->next;
    if (s->out_head == NULL)
        s->out_tail = NULL;
    grpc_slice slice = grpc_slice_from_copied_buffer((const char *)m->data, m->len);
    free(m);
    s->send_buf = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    grpc_op op = {.op = GRPC_OP_SEND_MESSAGE};
    op.data.send_message.send_message = s->send_buf;
    atomic_fetch_add(&s->starts, 1);
    if (grpc_call_start_batch(s->call, &op, 1, &s->tags[TAG_SEND], NULL) != GRPC_CALL_OK) {
        atomic_fetch_sub(&s->starts, 1);
        grpc_byte_buffer_destroy(s->send_buf);
        s->send_buf = NULL;
    }
}

static void start_recv(xds_grpc_stream_t *s)
{
    grpc_op op = {.op = GRPC_OP_RECV_MESSAGE};
    op.data.recv_message.recv_message = &s->recv_buf;
    atomic_fetch_add(&s->starts, 1);
    if (grpc_call_start_batch(s->call, &op, 1, &s->tags[TAG_RECV], NULL) != GRPC_CALL_OK)
        atomic_fetch_sub(&s->starts, 1);
}

static void push_in(xds_grpc_stream_t *s, msg_node_t *m)
{
    uv_mutex_lock(&s->mu);
    if (s->in_tail)
        s->in_tail->next = m;
    else
        s->in_head = m;
    s->in_tail = m;
    uv_mutex_unlock(&s->mu);
    uv_async_send(&s->async);
}

static msg_node_t *read_buffer(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    size_t len = GRPC_SLICE_LENGTH(all);
    msg_node_t *m = xmalloc(sizeof(*m) + len);
    m->next = NULL;
    m->len = len;
    memcpy(m->data, GRPC_SLICE_START_PTR(all), len);
    grpc_slice_unref(all);
    return m;
}

static void cq_thread(void *arg)
{
    xds_grpc_stream_t *s = arg;
    bool shutdown_called = false;
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        atomic_fetch_sub(&s->starts, 1);
        int tag = (int)((char *)ev.tag - s->tags);
        switch (tag) {
        case TAG_START:
            if (ev.success)
                start_recv(s);
            break;
        case TAG_RECV:
            if (ev.success && s->recv_buf) {
                msg_node_t *m = read_buffer(s->recv_buf);
                grpc_byte_buffer_destroy(s->recv_buf);
                s->recv_buf = NULL;
                if (m)
                    push_in(s, m);
                start_recv(s);
            }
            break;
        case TAG_SEND:
            uv_mutex_lock(&s->mu);
            grpc_byte_buffer_destroy(s->send_buf);
            s->send_buf = NULL;
            if (ev.success)
                start_send_locked(s);
            uv_mutex_unlock(&s->mu);
            break;
        case TAG_STATUS: {
            uv_mutex_lock(&s->mu);
            s->ended = true;
            s->closed_pending = true;
            s->end_status = (int)s->status;
            size_t n = GRPC_SLICE_LENGTH(s->status_details);
            if (n >= sizeof(s->end_details))
                n = sizeof(s->end_details) - 1;
            memcpy(s->end_details, GRPC_SLICE_START_PTR(s->status_details), n);
            s->end_details[n] = '\0';
            uv_mutex_unlock(&s->mu);
            uv_async_send(&s->async);
            break;
        }
        default:
            break;
        }
        uv_mutex_lock(&s->mu);
        bool done = s->ended && atomic_load(&s->starts) == 0;
        uv_mutex_unlock(&s->mu);
        if (done && !shutdown_called) {
            shutdown_called = true;
            grpc_completion_queue_shutdown(s->cq);
        }
    }
}

static void on_async(uv_async_t *a)
{
    xds_grpc_stream_t *s = a->data;
    for (;;) {
        uv_mutex_lock(&s->mu);
        if (s->freeing) {
            uv_mutex_unlock(&s->mu);
            return;
        }
        msg_node_t *m = s->in_head;
        if (m) {
            s->in_head = m->next;
            if (s->in_head == NULL)
                s->in_tail = NULL;
        }
        bool closed = m == NULL && s->closed_pending && !s->ended_delivered;
        if (closed)
            s->ended_delivered = true;
        uv_mutex_unlock(&s->mu);
        if (m) {
            s->cb.on_message(s->userdata, m->data, m->len);
            free(m);
            continue;
        }
        if (closed)
            s->cb.on_closed(s->userdata, s->end_status, s->end_details);
        return;
    }
}

xds_grpc_stream_t *xds_grpc_stream_open(uv_loop_t *loop, const xds_grpc_target_t *t,
                                        const char *method,
                                        const xds_grpc_stream_callbacks_t *cb, void *userdata)
{
    if (!grpc_started) {
        grpc_init();
        grpc_started = true;
    }
    xds_grpc_stream_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->loop = loop;
    s->cb = *cb;
    s->userdata = userdata;
    uv_mutex_init(&s->mu);
    grpc_metadata_array_init(&s->initial_md);
    grpc_metadata_array_init(&s->trailing_md);
    s->status_details = grpc_empty_slice();

    grpc_arg args[4];
    size_t n = 0;
    args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                           .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                           .value.integer = t->max_receive_bytes && t->max_receive_bytes < INT32_MAX
                                                ? (int)t->max_receive_bytes
                                                : -1};
    if (t->keepalive_time_ms) {
        args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                               .key = GRPC_ARG_KEEPALIVE_TIME_MS,
                               .value.integer = (int)t->keepalive_time_ms};
        args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                               .key = GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                               .value.integer = 1};
    }
    if (t->keepalive_timeout_ms)
        args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                               .key = GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                               .value.integer = (int)t->keepalive_timeout_ms};
    grpc_channel_args cargs = {.num_args = n, .args = args};
    grpc_channel_credentials *creds;
    if (t->root_certs) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = t->private_key,
                                           .cert_chain = t->cert_chain};
        creds = grpc_ssl_credentials_create(t->root_certs,
                                            t->cert_chain && t->private_key ? &pair : NULL, NULL,
                                            NULL);
        if (t->access_token) {
            grpc_call_credentials *cc = grpc_access_token_credentials_create(t->access_token, NULL);
            grpc_channel_credentials *both = grpc_composite_channel_credentials_create(creds, cc, NULL);
            grpc_call_credentials_release(cc);
            grpc_channel_credentials_release(creds);
            creds = both;
        }
    } else {
        creds = grpc_insecure_credentials_create();
    }
    s->channel = grpc_channel_create(t->target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    s->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_slice m = grpc_slice_from_copied_string(method);
    s->call = grpc_channel_create_call(s->channel, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, m, NULL,
                                       gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_slice_unref(m);
    if (s->channel == NULL || s->cq == NULL || s->call == NULL)
        goto fail;

    uv_async_init(loop, &s->async, on_async);
    s->async.data = s;

    /* Plaintext calls carry the token as metadata themselves (gRPC sends call credentials
     * only over secure channels). */
    size_t n_md = t->n_metadata + (t->access_token && !t->root_certs ? 1 : 0);
    s->send_md = calloc(n_md + 1, sizeof(*s->send_md));
    if (s->send_md == NULL)
        abort();
    for (size_t i = 0; i < t->n_metadata; i++) {
        s->send_md[i].key = grpc_slice_from_copied_string(t->metadata[2 * i]);
        s->send_md[i].value = grpc_slice_from_copied_string(t->metadata[2 * i + 1]);
    }
    if (n_md > t->n_metadata) {
        char *bearer = NULL;
        if (asprintf(&bearer, "Bearer %s", t->access_token) < 0)
            abort();
        s->send_md[t->n_metadata].key = grpc_slice_from_static_string("authorization");
        s->send_md[t->n_metadata].value = grpc_slice_from_copied_string(bearer);
        free(bearer);
    }
    s->n_send_md = n_md;

    grpc_op ops[2];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = s->n_send_md;
    ops[0].data.send_initial_metadata.metadata = s->send_md;
    ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[1].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    atomic_fetch_add(&s->starts, 1);
    if (grpc_call_start_batch(s->call, ops, 2, &s->tags[TAG_START], NULL) != GRPC_CALL_OK)
        atomic_fetch_sub(&s->starts, 1);
    grpc_op st = {.op = GRPC_OP_RECV_STATUS_ON_CLIENT};
    st.data.recv_status_on_client.trailing_metadata = &s->trailing_md;
    st.data.recv_status_on_client.status = &s->status;
    st.data.recv_status_on_client.status_details = &s->status_details;
    atomic_fetch_add(&s->starts, 1);
    if (grpc_call_start_batch(s->call, &st, 1, &s->tags[TAG_STATUS], NULL) != GRPC_CALL_OK)
        atomic_fetch_sub(&s->starts, 1);

    if (uv_thread_create(&s->thread, cq_thread, s) != 0)
        abort();
    return s;

fail:
    if (s->call)
        grpc_call_unref(s->call);
    if (s->cq) {
        grpc_completion_queue_shutdown(s->cq);
        grpc_completion_queue_destroy(s->cq);
    }
    if (s->channel)
        grpc_channel_destroy(s->channel);
    grpc_metadata_array_destroy(&s->initial_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    uv_mutex_destroy(&s->mu);
    free(s);
    return NULL;
}

int xds_grpc_stream_send(xds_grpc_stream_t *s, const uint8_t *data, size_t len)
{
    msg_node_t *m = xmalloc(sizeof(*m) + len);
    m->next = NULL;
    m->len = len;
    memcpy(m->data, data, len);
    uv_mutex_lock(&s->mu);
    if (s->ended) {
        uv_mutex_unlock(&s->mu);
        free(m);
        return -EPIPE;
    }
    if (s->out_tail)
        s->out_tail->next = m;
    else
        s->out_head = m;
    s->out_tail = m;
    start_send_locked(s);
    uv_mutex_unlock(&s->mu);
    return 0;
}

static void free_list(msg_node_t *m)
{
    while (m) {
        msg_node_t *next = m->next;
        free(m);
        m = next;
    }
}

static void on_async_closed(uv_handle_t *h)
{
    free(h->data);
}

void xds_grpc_stream_free(xds_grpc_stream_t *s)
{
    if (s == NULL)
        return;
    uv_mutex_lock(&s->mu);
    s->freeing = true;
    uv_mutex_unlock(&s->mu);
    grpc_call_cancel(s->call, NULL);
    uv_thread_join(&s->thread);
    grpc_call_unref(s->call);
    grpc_completion_queue_destroy(s->cq);
    grpc_channel_destroy(s->channel);
    if (s->recv_buf)
        grpc_byte_buffer_destroy(s->recv_buf);
    if (s->send_buf)
        grpc_byte_buffer_destroy(s->send_buf);
    grpc_metadata_array_destroy(&s->initial_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    grpc_slice_unref(s->status_details);
    for (size_t i = 0; i < s->n_send_md; i++) {
        grpc_slice_unref(s->send_md[i].key);
        grpc_slice_unref(s->send_md[i].value);
    }
    free(s->send_md);
    free_list(s->in_head);
    free_list(s->out_head);
    uv_mutex_destroy(&s->mu);
    uv_close((uv_handle_t *)&s->async, on_async_closed);
}
