#include "dataplane/listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dataplane/filter_chain.h"
#include "dataplane/inspect.h"
#include "dataplane/log.h"
#include "dataplane/net_ratelimit.h"

/* linux/netfilter_ipv4.h and linux/netfilter_ipv6/ip6_tables.h; not included for their
 * clashes with the libc headers. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif
#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif

#define ACCEPT_BATCH   64 /* accept4() calls per wakeup of a listening socket */
#define LISTEN_BACKLOG 1024
#define PENDING_POOL   256 /* idle pending-connection structs kept for reuse */
/* Out of descriptors (see out_of_descriptors): how long listening pauses when no connection
 * could be shed, and how often it is logged. */
#define ACCEPT_PAUSE_MS  100
#define FD_WARN_EVERY_MS 10000

typedef struct open_listener open_listener_t;
typedef struct pending pending_t;

struct dp_listeners {
    dp_wctx_t *w;
    dp_snapshot_t *snap; /* the latest applied */
    open_listener_t *open;
    pending_t *pending; /* connections in their listener filters */
    pending_t *pool;    /* free structs */
    size_t n_pool;
    int closing_handles; /* listener sockets and pending connections being closed */
    bool closing;
    /* Out of descriptors: a spare one (on /dev/null) is given up to accept and close what
     * waits in the backlog; without it, listening pauses for ACCEPT_PAUSE_MS (resume). */
    int spare_fd;
    uv_timer_t resume;
    bool paused;
    uint64_t fd_warned_ms;            /* loop time of the last warning; 0: none yet */
    unsigned long fd_shed;            /* connections closed at accept since that warning */
    uint8_t peek[DP_TLS_INSPECT_MAX]; /* what the inspectors look at (MSG_PEEK) */
};

struct open_listener {
    uv_poll_t poll;
    int fd;
    dp_listeners_t *ls;
    open_listener_t *next;
    char *name;
    dp_addr_t addr;
    const dp_listener_t *l; /* in ls->snap */
    bool keep;              /* marked during apply */
};

/* A connection waiting for bytes in a listener filter. */
struct pending {
    dp_conn_link_t link;
    dp_listeners_t *ls;
    pending_t *prev, *next;
    uv_poll_t poll;
    uv_timer_t timer;
    int handles; /* open uv handles */
    dp_accepted_t a;
    size_t filter; /* the listener filter running */
    int lowat;     /* SO_RCVLOWAT set while waiting; 0 when untouched */
    bool polling, timing, eof, closing;
    const char *transport; /* "tls" once tls_inspector found a ClientHello */
    dp_tls_hello_t hello;
    const char *http_proto; /* from http_inspector */
};

/* ---- configuration helpers ---- */

bool dp_lf_pred_match(const dp_lf_pred_t *p, uint32_t port)
{
    switch (p->kind) {
    case DP_LF_PRED_ANY:
        return true;
    case DP_LF_PRED_OR:
        for (size_t i = 0; i < p->n_rules; i++) {
            if (dp_lf_pred_match(&p->rules[i], port))
                return true;
        }
        return false;
    case DP_LF_PRED_AND:
        for (size_t i = 0; i < p->n_rules; i++) {
            if (!dp_lf_pred_match(&p->rules[i], port))
                return false;
        }
        return true;
    case DP_LF_PRED_NOT:
        return p->n_rules == 1 && !dp_lf_pred_match(&p->rules[0], port);
    case DP_LF_PRED_DST_PORT_RANGE:
        return port >= p->port_start && port < p->port_end;
    }
    return false;
}

static uint32_t sa_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return 0;
}

static bool addr_is_any(const dp_addr_t *a)
{
    if (a->sa.sa_family == AF_INET)
        return a->in.sin_addr.s_addr == htonl(INADDR_ANY);
    return a->sa.sa_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&a->in6.sin6_addr);
}

static bool addr_same_ip(const dp_addr_t *a, const struct sockaddr_storage *ss)
{
    if (a->sa.sa_family != ss->ss_family)
        return false;
    if (a->sa.sa_family == AF_INET)
        return a->in.sin_addr.s_addr == ((const struct sockaddr_in *)ss)->sin_addr.s_addr;
    return memcmp(&a->in6.sin6_addr, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16) == 0;
}

static bool addr_eq(const dp_addr_t *a, const dp_addr_t *b)
{
    if (a->sa.sa_family != b->sa.sa_family)
        return false;
    if (a->sa.sa_family == AF_INET)
        return a->in.sin_addr.s_addr == b->in.sin_addr.s_addr && a->in.sin_port == b->in.sin_port;
    if (a->sa.sa_family == AF_INET6)
        return memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, 16) == 0 &&
               a->in6.sin6_port == b->in6.sin6_port;
    return false;
}

/* The listener a use_original_dst connection to dst belongs to, other than the accepting one
 * (self): the exact ip:port, else the any-address one of that port and family, else NULL. */
static const dp_listener_t *find_by_dst(const dp_snapshot_t *s, const struct sockaddr_storage *dst,
                                        const dp_listener_t *self)
{
    uint32_t port = sa_port(dst);
    const dp_listener_t *any = NULL;
    for (size_t i = 0; port && i < s->n_listeners; i++) {
        const dp_listener_t *l = &s->listeners[i];
        int f = l->addr.sa.sa_family;
        if (l == self || f != dst->ss_family || (f != AF_INET && f != AF_INET6))
            continue;
        uint32_t lp = ntohs(f == AF_INET ? l->addr.in.sin_port : l->addr.in6.sin6_port);
        if (lp != port)
            continue;
        if (addr_same_ip(&l->addr, dst))
            return l;
        if (any == NULL && addr_is_any(&l->addr))
            any = l;
    }
    return any;
}

static const dp_listener_t *find_by_name(const dp_snapshot_t *s, const char *name)
{
    for (size_t i = 0; s && i < s->n_listeners; i++) {
        if (strcmp(s->listeners[i].name, name) == 0)
            return &s->listeners[i];
    }
    return NULL;
}

/* The destination before an iptables REDIRECT (SO_ORIGINAL_DST). Leaves *local (the
 * getsockname address) as it is when the connection was not redirected. */
static void original_dst(int fd, struct sockaddr_storage *local)
{
    struct sockaddr_storage od;
    socklen_t len = sizeof(od);
    int rc = -1;
    if (local->ss_family == AF_INET) {
        rc = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &od, &len);
    } else if (local->ss_family == AF_INET6) {
        rc = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &od, &len);
        /* An IPv4 client on a dual-stack socket: its conntrack entry is IPv4. */
        if (rc < 0 && IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)local)->sin6_addr)) {
            len = sizeof(od);
            rc = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &od, &len);
        }
    }
    if (rc == 0 && (od.ss_family == AF_INET || od.ss_family == AF_INET6))
        *local = od;
}

/* ---- the hand-off ---- */

static _Atomic uint64_t global_active;
static uint64_t global_limit;

void dp_listeners_set_global_limit(uint64_t max_connections)
{
    global_limit = max_connections;
}

void dp_accepted_release(dp_accepted_t *a)
{
    if (a->global_counted) {
        atomic_fetch_sub_explicit(&global_active, 1, memory_order_relaxed);
        a->global_counted = false;
    }
}

/* Takes a place under the global limit for a connection l accepted: false when none is left
 * (or none is needed: *ret_counted false). */
static bool global_admit(const dp_listener_t *l, bool *ret_counted)
{
    *ret_counted = false;
    if (global_limit == 0 || l->ignore_global_conn_limit)
        return true;
    if (atomic_fetch_add_explicit(&global_active, 1, memory_order_relaxed) >= global_limit) {
        atomic_fetch_sub_explicit(&global_active, 1, memory_order_relaxed);
        return false;
    }
    *ret_counted = true;
    return true;
}

static void close_accepted(dp_accepted_t *a)
{
    close(a->fd);
    a->fd = -1;
    a->snap = dp_snapshot_unref(a->snap);
    dp_accepted_release(a);
}

/* Chooses the chain and hands the connection to its network filter (or closes it). */
static void dispatch(dp_listeners_t *ls, dp_accepted_t *a, const char *transport,
                     const char *const *alpn, size_t n_alpn)
{
    const dp_listener_t *l = a->listener;
    dp_fc_input_t in = {
        .local = (const struct sockaddr *)&a->local,
        .remote = (const struct sockaddr *)&a->remote,
        .server_name = a->sni,
        .transport_protocol = transport ? transport : "raw_buffer",
        .alpn = alpn,
        .n_alpn = n_alpn,
    };
    const dp_filter_chain_t *fc = dp_filter_chain_select(l, &in);
    if (fc == NULL) {
        DP_LOG(DP_LOG_CONN_HANDLER, DP_LOG_DEBUG, "listener %s: no filter chain match", l->name);
        if (l->no_filter_chain_match)
            dp_counter_inc(l->no_filter_chain_match);
        close_accepted(a);
        return;
    }
    a->chain = fc;
    if (fc->tls) {
        DP_LOG(DP_LOG_CONN_HANDLER, DP_LOG_DEBUG,
               "listener %s: chain '%s' terminates TLS, which is not served: closing", l->name,
               fc->name);
        if (l->cx_tls_unserved)
            dp_counter_inc(l->cx_tls_unserved);
        close_accepted(a);
        return;
    }
    dp_wctx_t *w = ls->w;
    void (*start)(dp_wctx_t *, dp_accepted_t *) = fc->tcp   ? w->tcp_proxy_start
                                                  : fc->hcm ? w->hcm_start
                                                            : NULL;
    if (start == NULL) {
        DP_LOG(DP_LOG_CONN_HANDLER, DP_LOG_DEBUG,
               "listener %s: chain '%s' has no network filter skiff runs: closing", l->name,
               fc->name);
        close_accepted(a);
        return;
    }
    if (!dp_net_ratelimit_allow(fc->rate_limit)) {
        /* envoy.filters.network.local_ratelimit: closed before any filter after it runs */
        DP_LOG(DP_LOG_CONN_HANDLER, DP_LOG_DEBUG, "listener %s: chain '%s': rate limited", l->name,
               fc->name);
        if (l->cx_total)
            dp_counter_inc(l->cx_total);
        close_accepted(a);
        return;
    }
    if (l->cx_total) {
        dp_counter_inc(l->cx_total);
        dp_gauge_inc(l->cx_active);
    }
    start(w, a);
}

/* ---- connections in listener filters ---- */

static void pending_free(dp_listeners_t *ls, pending_t *p);

static void maybe_free(dp_listeners_t *ls)
{
    if (!ls->closing || ls->closing_handles || ls->open || ls->pending)
        return;
    while (ls->pool) {
        pending_t *p = ls->pool;
        ls->pool = p->next;
        free(p);
    }
    if (ls->spare_fd >= 0)
        close(ls->spare_fd);
    dp_snapshot_unref(ls->snap);
    free(ls);
}

static void pending_on_close(uv_handle_t *h)
{
    pending_t *p = h->data;
    if (--p->handles > 0)
        return;
    dp_listeners_t *ls = p->ls;
    ls->closing_handles--;
    pending_free(ls, p);
    maybe_free(ls);
}

/* Stops watching the socket (its epoll registration goes at once, inside uv_close, so the fd
 * can be handed on right after) and frees the struct from the close callbacks. */
static void pending_release(pending_t *p)
{
    if (p->closing)
        return;
    p->closing = true;
    dp_listeners_t *ls = p->ls;
    if (p->prev)
        p->prev->next = p->next;
    else
        ls->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
    dp_wctx_unlink(ls->w, &p->link);
    if (p->lowat) {
        int one = 1;
        setsockopt(p->a.fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    }
    ls->closing_handles++;
    uv_close((uv_handle_t *)&p->poll, pending_on_close);
    uv_close((uv_handle_t *)&p->timer, pending_on_close);
}

static void pending_close(pending_t *p)
{
    if (p->closing)
        return;
    pending_release(p);
    close_accepted(&p->a);
}

static void pending_link_close(dp_conn_link_t *l)
{
    pending_close((pending_t *)((char *)l - offsetof(pending_t, link)));
}

static void pending_finish(pending_t *p)
{
    const char *alpn[DP_TLS_MAX_ALPN];
    size_t n = 0;
    if (p->transport) {
        for (size_t i = 0; i < p->hello.n_alpn; i++)
            alpn[n++] = p->hello.alpn[i];
        snprintf(p->a.sni, sizeof(p->a.sni), "%s", p->hello.sni);
        if (n)
            snprintf(p->a.alpn, sizeof(p->a.alpn), "%s", alpn[0]);
    } else if (p->http_proto) {
        alpn[n++] = p->http_proto;
        snprintf(p->a.alpn, sizeof(p->a.alpn), "%s", p->http_proto);
    }
    dp_listeners_t *ls = p->ls;
    dp_accepted_t a = p->a;
    const char *transport = p->transport;
    pending_release(p);
    /* alpn points into p, which lives until its close callbacks. */
    dispatch(ls, &a, transport, alpn, n);
}

static void pending_run(pending_t *p);

static void on_pending_readable(uv_poll_t *h, int status, int events)
{
    pending_t *p = h->data;
    if (status < 0) {
        pending_close(p);
        return;
    }
    if (events & UV_DISCONNECT)
        p->eof = true;
    pending_run(p);
}

static void on_pending_timeout(uv_timer_t *t)
{
    pending_t *p = t->data;
    const dp_listener_t *l = p->a.listener;
    if (!l->continue_on_filters_timeout) {
        DP_LOG(DP_LOG_CONN_HANDLER, DP_LOG_DEBUG, "listener %s: listener filters timed out",
               l->name);
        pending_close(p);
        return;
    }
    pending_finish(p);
}

/* Waits until the socket holds more than `have` bytes (SO_RCVLOWAT keeps the level-triggered
 * poll from waking for bytes already seen). */
static void pending_wait(pending_t *p, size_t have)
{
    int want = (int)have + 1;
    if (want != p->lowat && setsockopt(p->a.fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof(want)) == 0)
        p->lowat = want;
    if (!p->polling) {
        p->polling = true;
        uv_poll_start(&p->poll, UV_READABLE | UV_DISCONNECT, on_pending_readable);
    }
    const dp_listener_t *l = p->a.listener;
    if (!p->timing && l->filters_timeout_ms) {
        p->timing = true;
        uv_timer_start(&p->timer, on_pending_timeout, l->filters_timeout_ms, 0);
    }
}

/* Runs the listener filters from p->filter on; returns when one waits for bytes. */
static void pending_run(pending_t *p)
{
    const dp_listener_t *l = p->a.listener;
    dp_listeners_t *ls = p->ls;
    for (; p->filter < l->n_filters; p->filter++) {
        const dp_listener_filter_t *f = &l->filters[p->filter];
        if (f->disabled && dp_lf_pred_match(f->disabled, sa_port(&p->a.local)))
            continue;
        if (f->kind == DP_LF_ORIGINAL_DST) {
            original_dst(p->a.fd, &p->a.local);
            continue;
        }
        if (f->kind == DP_LF_HTTP_INSPECTOR && p->transport)
            continue; /* http_inspector looks at plain text only */
        size_t cap = f->kind == DP_LF_TLS_INSPECTOR ? DP_TLS_INSPECT_MAX : DP_HTTP_INSPECT_MAX;
        ssize_t n = recv(p->a.fd, ls->peek, cap, MSG_PEEK);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (p->eof) {
                pending_close(p);
                return;
            }
            pending_wait(p, 0);
            return;
        }
        if (n <= 0) {
            /* Reset, or closed before sending anything. */
            pending_close(p);
            return;
        }
        dp_inspect_result_t r;
        if (f->kind == DP_LF_TLS_INSPECTOR) {
            r = dp_tls_inspect(ls->peek, (size_t)n, &p->hello);
            if (r == DP_INSPECT_MORE && (size_t)n >= cap)
                r = DP_INSPECT_ERROR;
            if (r == DP_INSPECT_FOUND)
                p->transport = "tls";
        } else {
            const char *proto = NULL;
            r = dp_http_inspect(ls->peek, (size_t)n, &proto);
            if (r == DP_INSPECT_FOUND)
                p->http_proto = proto;
        }
        if (r == DP_INSPECT_ERROR) {
            DP_LOG(DP_LOG_FILTER, DP_LOG_DEBUG, "listener %s: %s: malformed or too large", l->name,
                   f->kind == DP_LF_TLS_INSPECTOR ? "tls_inspector" : "http_inspector");
            pending_close(p);
            return;
        }
        if (r == DP_INSPECT_MORE) {
            if (!p->eof) {
                pending_wait(p, (size_t)n);
                return;
            }
            /* The peer sent all it will before the answer: not this protocol. */
        }
    }
    pending_finish(p);
}

static pending_t *pending_new(dp_listeners_t *ls)
{
    pending_t *p = ls->pool;
    if (p) {
        ls->pool = p->next;
        ls->n_pool--;
    } else {
        p = malloc(sizeof(*p));
        if (p == NULL)
            abort();
    }
    memset(p, 0, sizeof(*p));
    p->ls = ls;
    return p;
}

static void pending_free(dp_listeners_t *ls, pending_t *p)
{
    if (!ls->closing && ls->n_pool < PENDING_POOL) {
        p->next = ls->pool;
        ls->pool = p;
        ls->n_pool++;
        return;
    }
    free(p);
}

/* A freshly accepted connection on listener l. */
static void on_conn(dp_listeners_t *ls, const dp_listener_t *l, int fd,
                    const struct sockaddr_storage *remote, bool global_counted)
{
    dp_accepted_t a;
    memset(&a, 0, offsetof(dp_accepted_t, sni));
    a.sni[0] = a.alpn[0] = '\0';
    a.global_counted = global_counted;
    a.fd = fd;
    a.remote = *remote;
    socklen_t len = sizeof(a.local);
    if (getsockname(fd, (struct sockaddr *)&a.local, &len) < 0) {
        close(fd);
        dp_accepted_release(&a);
        return;
    }
    a.snap = dp_snapshot_ref(ls->snap);
    a.listener = l;
    if (l->use_original_dst) {
        original_dst(fd, &a.local);
        const dp_listener_t *to = find_by_dst(a.snap, &a.local, l);
        if (to)
            a.listener = to;
    }
    if (a.listener->n_filters == 0) {
        dispatch(ls, &a, NULL, NULL, 0);
        return;
    }
    pending_t *p = pending_new(ls);
    p->a = a;
    if (uv_poll_init(ls->w->loop, &p->poll, fd) < 0) {
        pending_free(ls, p);
        close_accepted(&a);
        return;
    }
    uv_timer_init(ls->w->loop, &p->timer);
    p->poll.data = p->timer.data = p;
    p->handles = 2;
    p->link.close = pending_link_close;
    dp_wctx_link(ls->w, &p->link);
    p->next = ls->pending;
    if (ls->pending)
        ls->pending->prev = p;
    ls->pending = p;
    pending_run(p);
}

/* ---- listening sockets ---- */

static void on_listen_readable(uv_poll_t *h, int status, int events);

static void on_resume(uv_timer_t *t)
{
    dp_listeners_t *ls = t->data;
    ls->paused = false;
    for (open_listener_t *ol = ls->open; ol; ol = ol->next)
        uv_poll_start(&ol->poll, UV_READABLE, on_listen_readable);
}

/* accept() failed for want of a descriptor (or of kernel memory). The connection stays in the
 * backlog and the socket stays readable: retrying at once would spin. Instead the spare
 * descriptor is given up to accept the waiting connections and close them at once (the
 * client sees its connection closed, as over Envoy's global connection limit, rather than
 * hanging in the backlog), counted in downstream_global_cx_overflow; when none could be
 * taken (no spare: another thread took the descriptor), this worker stops listening for
 * ACCEPT_PAUSE_MS. Logged once per FD_WARN_EVERY_MS. */
static void out_of_descriptors(dp_listeners_t *ls, open_listener_t *ol, int err)
{
    unsigned long shed = 0;
    if (ls->spare_fd >= 0) {
        close(ls->spare_fd);
        ls->spare_fd = -1;
        for (int i = 0; i < ACCEPT_BATCH; i++) {
            int fd = accept4(ol->fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0)
                break;
            close(fd);
            shed++;
        }
        ls->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    if (ol->l && ol->l->cx_global_overflow)
        dp_counter_add(ol->l->cx_global_overflow, shed);
    ls->fd_shed += shed;
    uint64_t now = uv_now(ls->w->loop);
    if (ls->fd_warned_ms == 0 || now - ls->fd_warned_ms >= FD_WARN_EVERY_MS) {
        DP_LOG(DP_LOG_CONN_HANDLER, DP_LOG_WARN,
               "listener %s: accept: %s: new connections are closed at once until descriptors "
               "free up (%lu closed since the last warning)",
               ol->name, strerror(err), ls->fd_shed);
        ls->fd_warned_ms = now;
        ls->fd_shed = 0;
    }
    if (shed == 0 && !ls->paused) {
        ls->paused = true;
        for (open_listener_t *o = ls->open; o; o = o->next)
            uv_poll_stop(&o->poll);
        uv_timer_start(&ls->resume, on_resume, ACCEPT_PAUSE_MS, 0);
    }
}

static void on_listen_readable(uv_poll_t *h, int status, int events)
{
    open_listener_t *ol = h->data;
    dp_listeners_t *ls = ol->ls;
    if (status < 0 || ls->closing)
        return;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage remote;
        socklen_t len = sizeof(remote);
        int fd = accept4(ol->fd, (struct sockaddr *)&remote, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                out_of_descriptors(ls, ol, errno);
                return;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                DP_LOG(DP_LOG_CONN_HANDLER, DP_LOG_WARN, "listener %s: accept: %s", ol->name,
                       strerror(errno));
            if (errno == ECONNABORTED || errno == EINTR)
                continue;
            return;
        }
        bool counted;
        if (ol->l == NULL || !global_admit(ol->l, &counted)) {
            if (ol->l && ol->l->cx_global_overflow)
                dp_counter_inc(ol->l->cx_global_overflow);
            close(fd);
            continue;
        }
        on_conn(ls, ol->l, fd, &remote, counted);
    }
}

static void listener_on_close(uv_handle_t *h)
{
    open_listener_t *ol = h->data;
    dp_listeners_t *ls = ol->ls;
    close(ol->fd);
    free(ol->name);
    free(ol);
    ls->closing_handles--;
    maybe_free(ls);
}

static void listener_close(dp_listeners_t *ls, open_listener_t *ol)
{
    ls->closing_handles++;
    uv_close((uv_handle_t *)&ol->poll, listener_on_close);
}

static int open_listener(dp_listeners_t *ls, const dp_listener_t *l)
{
    int family = l->addr.sa.sa_family;
    if (family != AF_INET && family != AF_INET6)
        return -EAFNOSUPPORT;
    socklen_t len = family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (l->transparent && setsockopt(fd, family == AF_INET ? SOL_IP : SOL_IPV6, IP_TRANSPARENT,
                                     &one, sizeof(one)) < 0)
        DP_LOG(DP_LOG_CONN_HANDLER, DP_LOG_WARN, "listener %s: transparent: %s", l->name,
               strerror(errno));
    /* One socket per worker on the same address: the kernel balances accepts across them. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, &l->addr.sa, len) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    open_listener_t *ol = calloc(1, sizeof(*ol));
    if (ol == NULL)
        abort();
    ol->ls = ls;
    ol->fd = fd;
    ol->name = strdup(l->name);
    if (ol->name == NULL)
        abort();
    ol->addr = l->addr;
    ol->l = l;
    ol->keep = true;
    int rc = uv_poll_init(ls->w->loop, &ol->poll, fd);
    if (rc < 0) {
        close(fd);
        free(ol->name);
        free(ol);
        return rc;
    }
    ol->poll.data = ol;
    ol->next = ls->open;
    ls->open = ol;
    return uv_poll_start(&ol->poll, UV_READABLE, on_listen_readable);
}

dp_listeners_t *dp_listeners_new(dp_wctx_t *w)
{
    dp_listeners_t *ls = calloc(1, sizeof(*ls));
    if (ls == NULL)
        abort();
    ls->w = w;
    ls->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    uv_timer_init(w->loop, &ls->resume);
    ls->resume.data = ls;
    return ls;
}

static bool should_listen(const dp_listener_t *l)
{
    return l->bind_to_port && !l->drained &&
           (l->addr.sa.sa_family == AF_INET || l->addr.sa.sa_family == AF_INET6);
}

void dp_listeners_apply(dp_listeners_t *ls, dp_snapshot_t *snap)
{
    if (ls->closing)
        return;
    dp_snapshot_unref(ls->snap);
    ls->snap = dp_snapshot_ref(snap);
    for (open_listener_t *ol = ls->open; ol; ol = ol->next) {
        const dp_listener_t *l = find_by_name(snap, ol->name);
        ol->keep = l != NULL && should_listen(l) && addr_eq(&l->addr, &ol->addr);
        ol->l = ol->keep ? l : NULL;
    }
    /* Close the listeners the snapshot dropped (or moved); their connections live on. */
    for (open_listener_t **p = &ls->open; *p;) {
        open_listener_t *ol = *p;
        if (ol->keep) {
            p = &ol->next;
            continue;
        }
        *p = ol->next;
        listener_close(ls, ol);
    }
    for (size_t i = 0; snap && i < snap->n_listeners; i++) {
        const dp_listener_t *l = &snap->listeners[i];
        if (!should_listen(l))
            continue;
        bool have = false;
        for (open_listener_t *ol = ls->open; ol && !have; ol = ol->next)
            have = ol->l == l;
        if (have)
            continue;
        int rc = open_listener(ls, l);
        if (rc < 0)
            DP_LOG(DP_LOG_CONN_HANDLER, DP_LOG_ERROR, "listener %s: cannot listen: %s", l->name,
                   uv_strerror(rc));
    }
}

static void resume_on_close(uv_handle_t *h)
{
    dp_listeners_t *ls = h->data;
    ls->closing_handles--;
    maybe_free(ls);
}

void dp_listeners_close(dp_listeners_t *ls)
{
    if (ls == NULL)
        return;
    ls->closing = true;
    ls->closing_handles++;
    uv_close((uv_handle_t *)&ls->resume, resume_on_close);
    while (ls->open) {
        open_listener_t *ol = ls->open;
        ls->open = ol->next;
        listener_close(ls, ol);
    }
    while (ls->pending)
        pending_close(ls->pending);
    maybe_free(ls);
}
