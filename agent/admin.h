/* The admin HTTP/1.1 server: Envoy's admin API surface on the bootstrap's admin address.
 *
 * Everything here runs on the main thread's libuv loop. Requests are parsed with llhttp;
 * the query string is split raw (pilot-agent sends regexes unescaped: `^ ( ) | \ $`), then each
 * key and value is percent-decoded, as Envoy's Utility::parseAndDecodeQueryString does ('+' is
 * kept). Handlers fill a response and return; the server writes it and keeps the connection
 * alive unless the client asked for close. Limits: request head 60 KiB, body 1 MiB, 64
 * connections; over them the server answers 431/413/503 and closes. */
#ifndef SKIFF_AGENT_ADMIN_H
#define SKIFF_AGENT_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <uv.h>

typedef struct agent_admin agent_admin_t;

#define AGENT_ADMIN_MAX_PARAMS 32

typedef struct agent_admin_param {
    char *key;   /* percent-decoded */
    char *value; /* percent-decoded; NULL when the key had no '=' ("usedonly") */
} agent_admin_param_t;

typedef struct agent_admin_request {
    bool is_post; /* POST (mutations); anything else but GET/HEAD is answered 405 */
    bool is_head;
    const char *path; /* the path without the query, not decoded */
    const char *raw_query;
    agent_admin_param_t params[AGENT_ADMIN_MAX_PARAMS];
    size_t n_params;
} agent_admin_request_t;

typedef struct agent_admin_response {
    int status;               /* default 200 */
    const char *content_type; /* default "text/plain; charset=UTF-8" */
    FILE *body;               /* an open_memstream the handler writes into */
    bool close_after;         /* close the connection once written */
} agent_admin_response_t;

/* A handler writes into resp->body and may change status and content_type. It must not keep
 * pointers into req after it returns. */
typedef void (*agent_admin_handler_fn)(const agent_admin_request_t *req,
                                       agent_admin_response_t *resp, void *userdata);

/* Called once a response has been written in full (used by /quitquitquit to stop only after
 * its "OK" reached the client). */
typedef void (*agent_admin_after_fn)(void *userdata);

agent_admin_t *agent_admin_new(uv_loop_t *loop);

/* Registers `path` (exact match). mutates: GET is refused with 400 "This endpoint requires
 * POST", as Envoy does for handlers that change server state. When `get_ok` is set a GET
 * without parameters is allowed too (the /logging listing). */
void agent_admin_add(agent_admin_t *a, const char *path, const char *help, bool mutates,
                     bool get_ok, agent_admin_handler_fn fn, void *userdata);

/* Sets a hook to run after the response of the request being handled has been flushed. Only
 * valid inside a handler. */
void agent_admin_after_response(agent_admin_t *a, agent_admin_after_fn fn, void *userdata);

/* Starts listening. Returns 0 or a negative libuv error. listen_tcp accepts IPv4 or IPv6 text;
 * port 0 picks a free port (see agent_admin_port). listen_pipe removes a stale socket file and
 * applies mode when non-zero. */
int agent_admin_listen_tcp(agent_admin_t *a, const char *ip, unsigned port);
int agent_admin_listen_pipe(agent_admin_t *a, const char *path, int mode);
unsigned agent_admin_port(const agent_admin_t *a); /* the bound TCP port, 0 for a pipe */

/* Writes the endpoint list, as /help shows it. */
void agent_admin_write_help(const agent_admin_t *a, FILE *out);

/* Looks up a query parameter; ret_value gets its value (NULL when it had none). */
bool agent_admin_param(const agent_admin_request_t *req, const char *key, const char **ret_value);

/* Stops listening and closes every connection; the object is freed from the last close
 * callback, so the loop must run afterwards. Accepts NULL. */
void agent_admin_close(agent_admin_t *a);

#endif
