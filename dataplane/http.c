#include "dataplane/http.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ---- per-thread recycling ---- */

void *dp_block_get(dp_block_cache_t *bc)
{
    void *p = bc->head;
    if (p != NULL) {
        bc->head = *(void **)p;
        bc->n--;
        return p;
    }
    p = malloc(bc->size);
    if (p == NULL)
        abort();
    return p;
}

void dp_block_put(dp_block_cache_t *bc, void *p)
{
    if (p == NULL)
        return;
    if (bc->n >= bc->max) {
        free(p);
        return;
    }
    *(void **)p = bc->head;
    bc->head = p;
    bc->n++;
}

void dp_block_drain(dp_block_cache_t *bc)
{
    while (bc->head != NULL) {
        void *next = *(void **)bc->head;
        free(bc->head);
        bc->head = next;
    }
    bc->n = 0;
}

/* ---- work at the end of the loop turn ---- */

static void turn_work_run(dp_turn_work_t *w, void *ud)
{
    dp_turn_work_stop(w);
    w->fn(ud);
}

static void on_turn_check(uv_check_t *h)
{
    turn_work_run((dp_turn_work_t *)((char *)h - offsetof(dp_turn_work_t, check)), h->data);
}

static void on_turn_pre(uv_prepare_t *h)
{
    turn_work_run((dp_turn_work_t *)((char *)h - offsetof(dp_turn_work_t, pre)), h->data);
}

void dp_turn_work_init(uv_loop_t *loop, dp_turn_work_t *w, void (*fn)(void *ud), void *ud)
{
    uv_check_init(loop, &w->check);
    uv_prepare_init(loop, &w->pre);
    w->check.data = w->pre.data = ud;
    w->fn = fn;
}

void dp_turn_work_start(dp_turn_work_t *w)
{
    uv_check_start(&w->check, on_turn_check);
    uv_prepare_start(&w->pre, on_turn_pre);
}

void dp_turn_work_stop(dp_turn_work_t *w)
{
    uv_check_stop(&w->check);
    uv_prepare_stop(&w->pre);
}

bool dp_turn_work_pending(const dp_turn_work_t *w)
{
    return uv_is_active((const uv_handle_t *)&w->check);
}

void dp_turn_work_close(dp_turn_work_t *w, uv_close_cb cb)
{
    dp_turn_work_stop(w);
    uv_close((uv_handle_t *)&w->check, cb);
    uv_close((uv_handle_t *)&w->pre, cb);
}

static _Thread_local char *read_buf;
static _Thread_local size_t read_cap;

char *dp_read_buf(size_t min, size_t *ret_cap)
{
    if (read_cap < min) {
        free(read_buf);
        read_buf = malloc(min);
        if (read_buf == NULL)
            abort();
        read_cap = min;
    }
    *ret_cap = read_cap;
    return read_buf;
}

/* ---- pool ---- */

#define POOL_CHUNK 4096

typedef struct pool_chunk {
    struct pool_chunk *next;
    size_t used, size;
    _Alignas(16) unsigned char data[];
} pool_chunk_t;

struct dp_pool {
    pool_chunk_t *head; /* the chunk being filled; older ones follow */
};

/* A stream's standard chunks come from the thread's cache (its first one is most streams'
 * only allocation). */
static _Thread_local dp_block_cache_t pool_chunks =
    DP_BLOCK_CACHE(sizeof(pool_chunk_t) + POOL_CHUNK, 64);

void dp_http_thread_done(void)
{
    dp_block_drain(&pool_chunks);
    free(read_buf);
    read_buf = NULL;
    read_cap = 0;
}

static pool_chunk_t *chunk_new(size_t size)
{
    pool_chunk_t *c = size == POOL_CHUNK ? dp_block_get(&pool_chunks) : malloc(sizeof(*c) + size);
    if (c == NULL)
        abort();
    c->next = NULL;
    c->used = 0;
    c->size = size;
    return c;
}

dp_pool_t *dp_pool_new(void)
{
    /* The pool header lives in its first chunk: one allocation for a small stream. */
    pool_chunk_t *c = chunk_new(POOL_CHUNK);
    dp_pool_t *p = (dp_pool_t *)c->data;
    c->used = (sizeof(*p) + 15) & ~(size_t)15;
    p->head = c;
    return p;
}

void *dp_pool_alloc(dp_pool_t *p, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    pool_chunk_t *c = p->head;
    if (c->size - c->used < n) {
        if (n > POOL_CHUNK / 4) {
            /* A large block gets a chunk of its own behind the current one. */
            pool_chunk_t *big = chunk_new(n);
            big->used = n;
            big->next = c->next;
            c->next = big;
            return big->data;
        }
        c = chunk_new(POOL_CHUNK);
        c->next = p->head;
        p->head = c;
    }
    void *r = c->data + c->used;
    c->used += n;
    return r;
}

void *dp_pool_calloc(dp_pool_t *p, size_t n)
{
    void *r = dp_pool_alloc(p, n);
    memset(r, 0, n);
    return r;
}

char *dp_pool_strndup(dp_pool_t *p, const char *s, size_t n)
{
    char *r = dp_pool_alloc(p, n + 1);
    if (n)
        memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

void dp_pool_free(dp_pool_t *p)
{
    if (p == NULL)
        return;
    /* The chunk holding the header is the last in the list. */
    pool_chunk_t *c = p->head;
    while (c) {
        pool_chunk_t *next = c->next;
        if (c->size == POOL_CHUNK)
            dp_block_put(&pool_chunks, c);
        else
            free(c);
        c = next;
    }
}

/* ---- byte queue ---- */

void dp_bufq_push(dp_bufq_t *q, const uint8_t *p, size_t n)
{
    if (n == 0)
        return;
    dp_bufq_chunk_t *c = malloc(sizeof(*c) + n);
    if (c == NULL)
        abort();
    c->next = NULL;
    c->len = n;
    c->off = 0;
    memcpy(c->data, p, n);
    if (q->tail)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
    q->bytes += n;
}

void dp_bufq_clear(dp_bufq_t *q)
{
    dp_bufq_chunk_t *c = q->head;
    while (c) {
        dp_bufq_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    q->head = q->tail = NULL;
    q->bytes = 0;
}

/* ---- strings and headers ---- */

static char lower1(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

void dp_ascii_lower(char *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        x = dp_lower8(x);
        memcpy(p + i, &x, 8);
    }
    for (; i < n; i++)
        p[i] = lower1(p[i]);
}

bool dp_mem_ieq(const char *a, const char *b, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y && dp_lower8(x) != dp_lower8(y))
            return false;
    }
    for (; i < n; i++) {
        if (a[i] != b[i] && lower1(a[i]) != lower1(b[i]))
            return false;
    }
    return true;
}

static dp_header_t *headers_slot(dp_headers_t *h, dp_pool_t *p)
{
    if (h->n == h->cap) {
        uint32_t cap = h->cap ? h->cap * 2 : 16;
        dp_header_t *v = dp_pool_alloc(p, cap * sizeof(*v));
        if (h->n)
            memcpy(v, h->v, h->n * sizeof(*v));
        h->v = v;
        h->cap = cap;
    }
    return &h->v[h->n++];
}

void dp_headers_add(dp_headers_t *h, dp_pool_t *p, const char *name, size_t nlen, const char *value,
                    size_t vlen)
{
    dp_header_t *e = headers_slot(h, p);
    e->name = (dp_str_t){dp_pool_strndup(p, name, nlen), nlen};
    e->value = (dp_str_t){dp_pool_strndup(p, value, vlen), vlen};
}

void dp_headers_add_ref(dp_headers_t *h, dp_pool_t *p, dp_str_t name, dp_str_t value)
{
    dp_header_t *e = headers_slot(h, p);
    e->name = name;
    e->value = value;
}

const dp_header_t *dp_headers_get(const dp_headers_t *h, const char *name, size_t nlen)
{
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->v[i].name.n == nlen && memcmp(h->v[i].name.p, name, nlen) == 0)
            return &h->v[i];
    }
    return NULL;
}

size_t dp_headers_remove(dp_headers_t *h, const char *name, size_t nlen)
{
    uint32_t k = 0;
    size_t removed = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->v[i].name.n == nlen && memcmp(h->v[i].name.p, name, nlen) == 0) {
            removed++;
            continue;
        }
        h->v[k++] = h->v[i];
    }
    h->n = k;
    return removed;
}

void dp_headers_set(dp_headers_t *h, dp_pool_t *p, const char *name, size_t nlen, const char *value,
                    size_t vlen)
{
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->v[i].name.n == nlen && memcmp(h->v[i].name.p, name, nlen) == 0) {
            h->v[i].value = (dp_str_t){dp_pool_strndup(p, value, vlen), vlen};
            /* Drop any later duplicates. */
            uint32_t k = i + 1;
            for (uint32_t j = i + 1; j < h->n; j++) {
                if (!(h->v[j].name.n == nlen && memcmp(h->v[j].name.p, name, nlen) == 0))
                    h->v[k++] = h->v[j];
            }
            h->n = k;
            return;
        }
    }
    dp_headers_add(h, p, name, nlen, value, vlen);
}

const char *dp_reset_reason_str(dp_reset_reason_t r)
{
    switch (r) {
    case DP_RESET_NONE:
        return "none";
    case DP_RESET_LOCAL:
        return "local reset";
    case DP_RESET_REMOTE:
        return "remote reset";
    case DP_RESET_CONNECT_FAIL:
        return "connection failure";
    case DP_RESET_CONNECT_TIMEOUT:
        return "connection timeout";
    case DP_RESET_CONN_TERMINATED:
        return "connection termination";
    case DP_RESET_PROTOCOL:
        return "protocol error";
    case DP_RESET_REFUSED:
        return "refused stream";
    case DP_RESET_OVERFLOW:
        return "overflow";
    case DP_RESET_NO_HEALTHY_HOST:
        return "no healthy upstream";
    }
    return "unknown";
}

dp_http_limits_t dp_http_limits_default(void)
{
    return (dp_http_limits_t){
        .max_header_bytes = 60 * 1024,
        .max_headers = 100,
        .buffer_limit = 1024 * 1024,
        .h2_max_concurrent_streams = 100,
        .h2_initial_stream_window = 256 * 1024,
        .h2_initial_connection_window = 1024 * 1024,
    };
}
