#include "agent/admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataplane/http.h"
#include "dataplane/log.h"

#define ADMIN_MAX_HEAD  (60 * 1024)
#define ADMIN_MAX_BODY  (1024 * 1024)
#define ADMIN_MAX_CONNS 64
#define ADMIN_MAX_URL   (16 * 1024)

typedef struct admin_route {
    char *path;
    char *help;
    bool mutates;
    bool get_ok;
    agent_admin_handler_fn fn;
    void *userdata;
} admin_route_t;

typedef struct admin_conn admin_conn_t;

struct agent_admin {
    uv_loop_t *loop;
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_stream_t stream;
        uv_handle_t handle;
    } listener;
    bool listening;
    bool closing;
    unsigned port;
    admin_route_t *routes;
    size_t n_routes;
    admin_conn_t *conns; /* doubly linked list of open connections */
    size_t n_conns;
    int pending_closes; /* handles whose close callbacks are outstanding */
    /* set by agent_admin_after_response while a handler runs */
    agent_admin_after_fn after_fn;
    void *after_ud;
};

struct admin_conn {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_stream_t stream;
        uv_handle_t handle;
    } h;
    agent_admin_t *admin;
    admin_conn_t *prev, *next;
    llhttp_t parser;
    char url[ADMIN_MAX_URL + 1];
    size_t url_len;
    size_t head_bytes;
    size_t body_bytes;
    bool in_head;
    bool url_too_long;
    bool body_too_large;
    bool upgrade; /* refused before it is answered */
    bool closing;
    int writes_pending;
};

typedef struct admin_write {
    uv_write_t req;
    admin_conn_t *conn;
    char *data;
    bool close_after;
    agent_admin_after_fn after_fn;
    void *after_ud;
} admin_write_t;

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n, sz);
    if (p == NULL) {
        fprintf(stderr, "skiff: out of memory\n");
        abort();
    }
    return p;
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (p == NULL) {
        fprintf(stderr, "skiff: out of memory\n");
        abort();
    }
    return p;
}

agent_admin_t *agent_admin_new(uv_loop_t *loop)
{
    agent_admin_t *a = xcalloc(1, sizeof(*a));
    a->loop = loop;
    return a;
}

void agent_admin_add(agent_admin_t *a, const char *path, const char *help, bool mutates,
                     bool get_ok, agent_admin_handler_fn fn, void *userdata)
{
    admin_route_t *r = realloc(a->routes, (a->n_routes + 1) * sizeof(*r));
    if (r == NULL)
        abort();
    a->routes = r;
    a->routes[a->n_routes++] = (admin_route_t){
        .path = xstrdup(path),
        .help = xstrdup(help),
        .mutates = mutates,
        .get_ok = get_ok,
        .fn = fn,
        .userdata = userdata,
    };
}

void agent_admin_after_response(agent_admin_t *a, agent_admin_after_fn fn, void *userdata)
{
    a->after_fn = fn;
    a->after_ud = userdata;
}

unsigned agent_admin_port(const agent_admin_t *a)
{
    return a->port;
}

void agent_admin_write_help(const agent_admin_t *a, FILE *out)
{
    fprintf(out, "admin commands are:\n");
    for (size_t i = 0; i < a->n_routes; i++)
        fprintf(out, "  %s%s: %s\n", a->routes[i].mutates ? "(POST) " : "", a->routes[i].path,
                a->routes[i].help);
}

bool agent_admin_param(const agent_admin_request_t *req, const char *key, const char **ret_value)
{
    for (size_t i = 0; i < req->n_params; i++) {
        if (strcmp(req->params[i].key, key) == 0) {
            if (ret_value)
                *ret_value = req->params[i].value;
            return true;
        }
    }
    return false;
}

/* ---- connections ---- */

static void admin_maybe_free(agent_admin_t *a)
{
    if (a->closing && a->pending_closes == 0 && a->conns == NULL) {
        for (size_t i = 0; i < a->n_routes; i++) {
            free(a->routes[i].path);
            free(a->routes[i].help);
        }
        free(a->routes);
        free(a);
    }
}

static void conn_on_close(uv_handle_t *h)
{
    admin_conn_t *c = h->data;
    agent_admin_t *a = c->admin;
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->n_conns--;
    free(c);
    admin_maybe_free(a);
}

static void conn_close(admin_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_read_stop(&c->h.stream);
    uv_close(&c->h.handle, conn_on_close);
}

static void on_write_done(uv_write_t *req, int status)
{
    admin_write_t *w = (admin_write_t *)req;
    admin_conn_t *c = w->conn;
    c->writes_pending--;
    if (w->after_fn)
        w->after_fn(w->after_ud);
    if (status < 0 || w->close_after || (c->admin->closing && c->writes_pending == 0))
        conn_close(c);
    free(w->data);
    free(w);
}

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

/* Queues a full response; takes ownership of body (malloc'd, may be NULL). */
static void conn_send(admin_conn_t *c, int status, const char *ctype, char *body, size_t body_len,
                      bool head_only, bool close_after, agent_admin_after_fn after_fn,
                      void *after_ud)
{
    char head[512];
    int hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n"
                      "cache-control: no-cache, max-age=0\r\nx-content-type-options: nosniff\r\n"
                      "server: skiff\r\n%s\r\n",
                      status, status_text(status), ctype, body_len,
                      close_after ? "connection: close\r\n" : "");
    size_t total = (size_t)hn + (head_only ? 0 : body_len);
    char *data = malloc(total ? total : 1);
    if (data == NULL)
        abort();
    memcpy(data, head, (size_t)hn);
    if (!head_only && body_len)
        memcpy(data + hn, body, body_len);
    free(body);

    admin_write_t *w = xcalloc(1, sizeof(*w));
    w->conn = c;
    w->data = data;
    w->close_after = close_after;
    w->after_fn = after_fn;
    w->after_ud = after_ud;
    uv_buf_t buf = uv_buf_init(data, (unsigned)total);
    c->writes_pending++;
    int rc = uv_write(&w->req, &c->h.stream, &buf, 1, on_write_done);
    if (rc < 0) {
        c->writes_pending--;
        free(w->data);
        free(w);
        if (after_fn)
            after_fn(after_ud);
        conn_close(c);
    }
}

static void conn_send_text(admin_conn_t *c, int status, const char *text, bool close_after)
{
    char *body = xstrdup(text);
    conn_send(c, status, "text/plain; charset=UTF-8", body, strlen(body), false, close_after, NULL,
              NULL);
}

/* Percent-decodes in place. A malformed escape is kept as it is, as Envoy does. */
static void pct_decode(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        int h1, h2;
        if (r[0] == '%' && (h1 = dp_hexval(r[1])) >= 0 && (h2 = dp_hexval(r[2])) >= 0) {
            *w++ = (char)(h1 * 16 + h2);
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
}

/* Splits url (modified in place) at the '?' into path and raw query. */
static void split_query(char *url, agent_admin_request_t *req)
{
    char *q = strchr(url, '?');
    req->path = url;
    req->raw_query = "";
    if (q != NULL) {
        *q++ = '\0';
        req->raw_query = q;
    }
}

static bool parse_params(char *query, agent_admin_request_t *req)
{
    char *save = NULL;
    for (char *tok = strtok_r(query, "&", &save); tok; tok = strtok_r(NULL, "&", &save)) {
        if (*tok == '\0')
            continue;
        if (req->n_params == AGENT_ADMIN_MAX_PARAMS)
            return false;
        char *eq = strchr(tok, '=');
        agent_admin_param_t *p = &req->params[req->n_params++];
        p->key = tok;
        p->value = NULL;
        if (eq) {
            *eq = '\0';
            p->value = eq + 1;
            pct_decode(p->value);
        }
        pct_decode(p->key);
    }
    return true;
}

static void conn_dispatch(admin_conn_t *c)
{
    agent_admin_t *a = c->admin;
    bool keep = llhttp_should_keep_alive(&c->parser) && !a->closing;
    llhttp_method_t m = (llhttp_method_t)c->parser.method;

    if (c->url_too_long) {
        conn_send_text(c, 414, "request target too long\n", true);
        return;
    }
    char raw[ADMIN_MAX_URL + 1];
    memcpy(raw, c->url, c->url_len + 1);
    char qcopy[ADMIN_MAX_URL + 1];

    agent_admin_request_t req = {0};
    req.is_post = m == HTTP_POST;
    req.is_head = m == HTTP_HEAD;
    split_query(raw, &req);
    snprintf(qcopy, sizeof(qcopy), "%s", req.raw_query);
    if (!parse_params(qcopy, &req)) {
        conn_send_text(c, 400, "too many query parameters\n", !keep);
        return;
    }
    if (m != HTTP_GET && m != HTTP_POST && m != HTTP_HEAD) {
        conn_send_text(c, 405, "method not allowed\n", !keep);
        return;
    }

    const admin_route_t *route = NULL;
    for (size_t i = 0; i < a->n_routes; i++) {
        if (strcmp(a->routes[i].path, req.path) == 0) {
            route = &a->routes[i];
            break;
        }
    }
    if (route == NULL) {
        char *body = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&body, &len);
        if (f == NULL)
            abort();
        fprintf(f, "invalid path: %s\n", req.path);
        agent_admin_write_help(a, f);
        fclose(f);
        conn_send(c, 404, "text/plain; charset=UTF-8", body, len, req.is_head, !keep, NULL, NULL);
        return;
    }
    if (route->mutates && !req.is_post && !(route->get_ok && req.n_params == 0)) {
        conn_send_text(c, 400, "This endpoint requires POST.\n", !keep);
        return;
    }

    agent_admin_response_t resp = {
        .status = 200,
        .content_type = "text/plain; charset=UTF-8",
    };
    char *body = NULL;
    size_t len = 0;
    resp.body = open_memstream(&body, &len);
    if (resp.body == NULL)
        abort();
    a->after_fn = NULL;
    a->after_ud = NULL;
    route->fn(&req, &resp, route->userdata);
    fclose(resp.body);
    agent_admin_after_fn after_fn = a->after_fn;
    void *after_ud = a->after_ud;
    a->after_fn = NULL;
    conn_send(c, resp.status, resp.content_type, body, len, req.is_head,
              resp.close_after || !keep, after_fn, after_ud);
}

static int on_message_begin(llhttp_t *p)
{
    admin_conn_t *c = p->data;
    c->url_len = 0;
    c->url[0] = '\0';
    c->url_too_long = false;
    c->head_bytes = 0;
    c->body_bytes = 0;
    c->in_head = true;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    admin_conn_t *c = p->data;
    if (c->url_len + len > ADMIN_MAX_URL) {
        c->url_too_long = true;
        return 0;
    }
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    c->url[c->url_len] = '\0';
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    admin_conn_t *c = p->data;
    c->in_head = false;
    if (p->upgrade) {
        c->upgrade = true;
        return -1;
    }
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > ADMIN_MAX_BODY) {
        c->body_too_large = true;
        return -1;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    admin_conn_t *c = p->data;
    c->body_bytes += len;
    c->body_too_large = c->body_bytes > ADMIN_MAX_BODY;
    return c->body_too_large ? -1 : 0;
}

static int on_message_complete(llhttp_t *p)
{
    admin_conn_t *c = p->data;
    conn_dispatch(c);
    return 0;
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[64 * 1024]; /* main thread only; consumed synchronously in on_read */
    buf->base = slab;
    buf->len = sizeof(slab);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    admin_conn_t *c = s->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0 || c->closing)
        return;
    llhttp_errno_t err = llhttp_execute(&c->parser, buf->base, (size_t)nread);
    if (c->in_head) {
        /* Still in a head: all of this read was head bytes (or came before an error). */
        size_t n =
            err == HPE_OK ? (size_t)nread : (size_t)(llhttp_get_error_pos(&c->parser) - buf->base);
        c->head_bytes += n;
        if (c->head_bytes > ADMIN_MAX_HEAD) {
            conn_send_text(c, 431, "request header too large\n", true);
            uv_read_stop(s);
            return;
        }
    }
    if (c->body_too_large) {
        conn_send_text(c, 413, "request body too large\n", true);
        uv_read_stop(s);
    } else if (c->upgrade) {
        conn_send_text(c, 400, "upgrade is not supported\n", true);
        uv_read_stop(s);
    } else if (err != HPE_OK) {
        char msg[160];
        snprintf(msg, sizeof(msg), "bad request: %s\n", llhttp_get_error_reason(&c->parser));
        conn_send_text(c, 400, msg, true);
        uv_read_stop(s);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    agent_admin_t *a = server->data;
    if (status < 0)
        return;
    admin_conn_t *c = xcalloc(1, sizeof(*c));
    c->admin = a;
    int rc;
    if (server->type == UV_TCP)
        rc = uv_tcp_init(a->loop, &c->h.tcp);
    else
        rc = uv_pipe_init(a->loop, &c->h.pipe, 0);
    if (rc < 0) {
        free(c);
        return;
    }
    c->h.handle.data = c;
    c->next = a->conns;
    if (a->conns)
        a->conns->prev = c;
    a->conns = c;
    a->n_conns++;
    if (uv_accept(server, &c->h.stream) < 0) {
        conn_close(c);
        return;
    }
    if (a->n_conns > ADMIN_MAX_CONNS) {
        DP_LOG(DP_LOG_ADMIN, DP_LOG_WARN, "admin: too many connections, refusing one");
        conn_send_text(c, 503, "too many admin connections\n", true);
        return;
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    uv_read_start(&c->h.stream, on_alloc, on_read);
}

int agent_admin_listen_tcp(agent_admin_t *a, const char *ip, unsigned port)
{
    struct sockaddr_storage ss;
    int rc;
    if (strchr(ip, ':'))
        rc = uv_ip6_addr(ip, (int)port, (struct sockaddr_in6 *)&ss);
    else
        rc = uv_ip4_addr(ip, (int)port, (struct sockaddr_in *)&ss);
    if (rc < 0)
        return rc;
    if ((rc = uv_tcp_init(a->loop, &a->listener.tcp)) < 0)
        return rc;
    a->listener.handle.data = a;
    a->listening = true;
    if ((rc = uv_tcp_bind(&a->listener.tcp, (const struct sockaddr *)&ss, 0)) < 0)
        return rc;
    if ((rc = uv_listen(&a->listener.stream, 128, on_connection)) < 0)
        return rc;
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    if (uv_tcp_getsockname(&a->listener.tcp, (struct sockaddr *)&bound, &blen) == 0) {
        if (bound.ss_family == AF_INET6)
            a->port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
        else
            a->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    }
    return 0;
}

int agent_admin_listen_pipe(agent_admin_t *a, const char *path, int mode)
{
    int rc;
    if ((rc = uv_pipe_init(a->loop, &a->listener.pipe, 0)) < 0)
        return rc;
    a->listener.handle.data = a;
    a->listening = true;
    unlink(path);
    if ((rc = uv_pipe_bind(&a->listener.pipe, path)) < 0)
        return rc;
    if (mode != 0 && chmod(path, (mode_t)mode) < 0)
        return -errno;
    return uv_listen(&a->listener.stream, 128, on_connection);
}

static void listener_on_close(uv_handle_t *h)
{
    agent_admin_t *a = h->data;
    a->pending_closes--;
    admin_maybe_free(a);
}

void agent_admin_close(agent_admin_t *a)
{
    if (a == NULL)
        return;
    a->closing = true;
    if (a->listening) {
        a->pending_closes++;
        uv_close(&a->listener.handle, listener_on_close);
    }
    for (admin_conn_t *c = a->conns; c; c = c->next) {
        if (c->writes_pending == 0)
            conn_close(c);
    }
    admin_maybe_free(a);
}
