#include "dataplane/conn.h"

#include <errno.h>

void dp_wctx_link(dp_wctx_t *w, dp_conn_link_t *l)
{
    l->prev = NULL;
    l->next = w->conns;
    if (w->conns)
        w->conns->prev = l;
    w->conns = l;
}

void dp_wctx_unlink(dp_wctx_t *w, dp_conn_link_t *l)
{
    if (l->prev)
        l->prev->next = l->next;
    else if (w->conns == l)
        w->conns = l->next;
    if (l->next)
        l->next->prev = l->prev;
    l->prev = l->next = NULL;
}

void dp_wctx_close_all(dp_wctx_t *w)
{
    w->closing = true;
    /* close() may unlink at once or later (from a uv close callback): walk with the next
     * pointer taken first. */
    for (dp_conn_link_t *l = w->conns, *next; l; l = next) {
        next = l->next;
        l->close(l);
    }
}

uint64_t dp_wctx_random(dp_wctx_t *w)
{
    if (w->rng == 0)
        w->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)w->index + 1) * 0xbf58476d1ce4e5b9ull;
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

int dp_try_send(uv_stream_t *s, const char *p, size_t n)
{
    if (s->type != UV_TCP) {
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
        return uv_try_write(s, &b, 1);
    }
    if (uv_stream_get_write_queue_size(s) != 0)
        return UV_EAGAIN;
    uv_os_fd_t fd;
    if (uv_fileno((const uv_handle_t *)s, &fd) != 0)
        return UV_EBADF;
    ssize_t r;
    do
        r = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (r < 0 && errno == EINTR);
    if (r >= 0)
        return (int)r;
    return errno == EWOULDBLOCK ? UV_EAGAIN : -errno;
}
