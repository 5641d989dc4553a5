#include "xds/file_source.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dataplane/log.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "protos/registry.h"
#include "xds/pbjson.h"

struct xds_file_source {
    uv_loop_t *loop;
    char *type_url;
    char *path;
    char *watch_dir;  /* the directory watched */
    char *watch_name; /* the file name events must carry; NULL: any event in watch_dir */
    xds_file_callbacks_t cb;
    void *userdata;
    uv_fs_event_t event;
    uv_timer_t debounce;
    int closing;
    unsigned generation; /* versions for files that give none */
};

static void file_load(xds_file_source_t *f)
{
    pbjson_opts_t jo = {.resolve = pb_registry_find_type_url};
    pbjson_diag_t *diag = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    if (pbjson_parse_file(f->path, &envoy__service__discovery__v3__discovery_response__descriptor,
                          &jo, &m, diag) < 0) {
        const char *first = pbjson_diag_size(diag) ? pbjson_diag_at(diag, 0, NULL) : f->path;
        if (f->cb.on_error)
            f->cb.on_error(f->userdata, f->type_url, first);
        pbjson_diag_free(diag);
        return;
    }
    pbjson_diag_free(diag);
    Envoy__Service__Discovery__V3__DiscoveryResponse *r = (void *)m;
    xds_ads_resource_t *res = calloc(r->n_resources + 1, sizeof(*res));
    if (res == NULL)
        abort();
    for (size_t i = 0; i < r->n_resources; i++) {
        res[i] = (xds_ads_resource_t){.name = "",
                                      .version = "",
                                      .type_url = r->resources[i]->type_url,
                                      .data = r->resources[i]->value.data,
                                      .len = r->resources[i]->value.len};
    }
    char version[32];
    snprintf(version, sizeof(version), "file-%u", ++f->generation);
    xds_ads_update_t u = {
        .type_url = f->type_url,
        .version_info = r->version_info[0] ? r->version_info : version,
        .nonce = "",
        .state_of_the_world = true,
        .resources = res,
        .n_resources = r->n_resources,
    };
    char *err = NULL;
    if (f->cb.on_update(f->userdata, &u, &err) < 0)
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "%s: rejected: %s", f->path, err ? err : "?");
    else
        DP_LOG(DP_LOG_CONFIG, DP_LOG_INFO, "%s: applied version %s", f->path, u.version_info);
    free(err);
    free(res);
    protobuf_c_message_free_unpacked(m, NULL);
}

static void on_debounce(uv_timer_t *t)
{
    file_load(t->data);
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    xds_file_source_t *f = h->data;
    if (status < 0)
        return;
    if (f->watch_name && (filename == NULL || strcmp(filename, f->watch_name) != 0))
        return;
    /* A rename arrives as several events: read once they settle. */
    uv_timer_start(&f->debounce, on_debounce, 20, 0);
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (p == NULL)
        abort();
    return p;
}

xds_file_source_t *xds_file_source_new(uv_loop_t *loop, const char *type_url, const char *path,
                                       const char *watched_directory,
                                       const xds_file_callbacks_t *cb, void *userdata)
{
    xds_file_source_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        abort();
    f->loop = loop;
    f->type_url = xstrdup(type_url);
    f->path = xstrdup(path);
    f->cb = *cb;
    f->userdata = userdata;
    if (watched_directory && watched_directory[0]) {
        f->watch_dir = xstrdup(watched_directory);
    } else {
        char *a = xstrdup(path), *b = xstrdup(path);
        f->watch_dir = xstrdup(dirname(a));
        f->watch_name = xstrdup(basename(b));
        free(a);
        free(b);
    }
    uv_fs_event_init(loop, &f->event);
    uv_timer_init(loop, &f->debounce);
    f->event.data = f->debounce.data = f;
    return f;
}

void xds_file_source_start(xds_file_source_t *f)
{
    int rc = uv_fs_event_start(&f->event, on_fs_event, f->watch_dir, 0);
    if (rc < 0)
        DP_LOG(DP_LOG_CONFIG, DP_LOG_ERROR, "cannot watch %s: %s", f->watch_dir, uv_strerror(rc));
    DP_LOG(DP_LOG_CONFIG, DP_LOG_INFO, "%s from %s (watching %s)", f->type_url, f->path,
           f->watch_dir);
    file_load(f);
}

static void on_closed(uv_handle_t *h)
{
    xds_file_source_t *f = h->data;
    if (--f->closing > 0)
        return;
    free(f->type_url);
    free(f->path);
    free(f->watch_dir);
    free(f->watch_name);
    free(f);
}

void xds_file_source_free(xds_file_source_t *f)
{
    if (f == NULL)
        return;
    f->closing = 2;
    uv_close((uv_handle_t *)&f->event, on_closed);
    uv_close((uv_handle_t *)&f->debounce, on_closed);
}
