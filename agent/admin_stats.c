/* The stats and logging endpoints of the admin API: /stats, /stats/prometheus and /logging,
 * with Envoy's parameters. */
#include <stdlib.h>
#include <string.h>

#include "agent/server.h"
#include "dataplane/log.h"

#define CT_PROM "text/plain; version=0.0.4; charset=UTF-8"

static void stats_query(const agent_admin_request_t *req, dp_stats_query_t *q)
{
    *q = (dp_stats_query_t){0};
    q->used_only = agent_admin_param(req, "usedonly", NULL);
    q->text_readouts = agent_admin_param(req, "text_readouts", NULL);
    agent_admin_param(req, "filter", &q->filter);
}

static void render_error(agent_admin_response_t *resp, char *err)
{
    resp->status = 400;
    fprintf(resp->body, "%s\n", err ? err : "invalid query");
    free(err);
}

static void h_prometheus(const agent_admin_request_t *req, agent_admin_response_t *resp, void *ud)
{
    agent_server_t *s = ud;
    dp_stats_query_t q;
    char *err = NULL;
    stats_query(req, &q);
    agent_server_refresh_stats(s);
    resp->content_type = CT_PROM;
    if (dp_stats_render_prometheus(s->stats, &q, resp->body, &err) < 0)
        render_error(resp, err);
}

static void h_stats(const agent_admin_request_t *req, agent_admin_response_t *resp, void *ud)
{
    agent_server_t *s = ud;
    const char *format = NULL;
    dp_stats_query_t q;
    char *err = NULL;
    int rc;
    stats_query(req, &q);
    agent_admin_param(req, "format", &format);
    agent_server_refresh_stats(s);
    if (format && strcmp(format, "prometheus") == 0) {
        resp->content_type = CT_PROM;
        rc = dp_stats_render_prometheus(s->stats, &q, resp->body, &err);
    } else if (format && strcmp(format, "json") == 0) {
        resp->content_type = "application/json";
        rc = dp_stats_render_json(s->stats, &q, resp->body, &err);
    } else if (format == NULL || strcmp(format, "text") == 0) {
        rc = dp_stats_render_text(s->stats, &q, resp->body, &err);
    } else {
        resp->status = 400;
        fprintf(resp->body, "usage: /stats?format=(text|json|prometheus)\n");
        return;
    }
    if (rc < 0)
        render_error(resp, err);
}

static void write_loggers(FILE *out)
{
    fputs("active loggers:\n", out);
    for (int i = 0; i < DP_LOG_COMPONENT_COUNT; i++)
        fprintf(out, "  %s: %s\n", dp_log_component_name((dp_log_component_t)i),
                dp_log_level_name(dp_log_component_level((dp_log_component_t)i)));
}

/* Envoy: ?level=<l> sets every logger, ?<logger>=<l> one; an unknown logger or level is 404
 * with the usage text, and the reply lists the active loggers. */
static void h_logging(const agent_admin_request_t *req, agent_admin_response_t *resp, void *ud)
{
    for (size_t i = 0; i < req->n_params; i++) {
        const agent_admin_param_t *p = &req->params[i];
        dp_log_level_t l;
        if (p->value == NULL || dp_log_level_parse(p->value, &l) < 0 ||
            (strcmp(p->key, "level") != 0 && strcmp(p->key, "paths") != 0 &&
             dp_log_set_component(p->key, l) < 0)) {
            resp->status = 404;
            fputs("usage: /logging?<name>=<level> (change single level)\n"
                  "usage: /logging?level=<level> (change all levels)\n"
                  "levels: trace debug info warning error critical off\n",
                  resp->body);
            write_loggers(resp->body);
            return;
        }
        if (strcmp(p->key, "level") == 0)
            dp_log_set_all(l);
    }
    write_loggers(resp->body);
}

void agent_admin_stats_handlers_register(agent_server_t *s)
{
    agent_admin_add(s->admin, "/stats",
                    "print server stats; params: usedonly, filter=<regex>, "
                    "format=(text|json|prometheus)",
                    false, false, h_stats, s);
    agent_admin_add(s->admin, "/stats/prometheus",
                    "print server stats in prometheus format; params: usedonly, filter=<regex>, "
                    "text_readouts",
                    false, false, h_prometheus, s);
    agent_admin_add(s->admin, "/logging",
                    "query/change logging levels; params: level=<level>, <logger>=<level>", true,
                    true, h_logging, s);
}
