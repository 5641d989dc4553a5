/* Envoy's file-based config sources (ConfigSource.path_config_source, and the older `path`):
 * a JSON or YAML DiscoveryResponse in a file, read at start and again whenever the file is
 * replaced. With a watched_directory any move in that directory triggers the reload (the
 * Kubernetes ConfigMap "..data" swap); without one, a move onto the file itself does. Each
 * read is one state-of-the-world update of its type. Main thread. */
#ifndef SKIFF_XDS_FILE_SOURCE_H
#define SKIFF_XDS_FILE_SOURCE_H

#include <uv.h>

#include "xds/ads.h"

typedef struct xds_file_source xds_file_source_t;

/* on_update has the ADS update shape; its result only decides what is logged (a file has no
 * one to NACK to). A file that does not parse counts as a rejected update: on_error gets the
 * "file:line: what is wrong" text. */
typedef struct xds_file_callbacks {
    int (*on_update)(void *userdata, const xds_ads_update_t *u, char **reterr_msg);
    void (*on_error)(void *userdata, const char *type_url, const char *msg);
} xds_file_callbacks_t;

xds_file_source_t *xds_file_source_new(uv_loop_t *loop, const char *type_url, const char *path,
                                       const char *watched_directory,
                                       const xds_file_callbacks_t *cb, void *userdata);

/* Reads the file once and starts watching. */
void xds_file_source_start(xds_file_source_t *f);

/* Stops watching; freed from the last close callback. Accepts NULL. */
void xds_file_source_free(xds_file_source_t *f);

#endif
