/* The config halves of the HTTP filters (STYLE.md §1, §7): each turns its typed_config bytes
 * into a plain C struct in the snapshot's arena, on the main thread while a snapshot is being
 * built. Built into the handlers_config library, the only handlers code that sees protobufs.
 *
 *   listener level: an http_filters entry's typed_config (xds/hcm_build.c)
 *   route level:    a typed_per_filter_config entry of a route, virtual host or route
 *                   configuration (xds/route_build.c); the runtime half finds it with
 *                   dp_stream_route_config() */
#ifndef SKIFF_HANDLERS_CONFIG_H
#define SKIFF_HANDLERS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/snapshot.h"
#include "dataplane/stats.h"

typedef struct handlers_config_ctx {
    dp_arena_t *arena;       /* where the config goes; freed with the snapshot */
    dp_stats_t *stats;       /* may be NULL (no stats) */
    const char *stat_prefix; /* the connection manager's stat_prefix; NULL at route level */
    const char *filter_name; /* the http_filters name, or the typed_per_filter_config key */
    bool per_route;
} handlers_config_ctx_t;

/* Builds one config. Returns 0 with *ret_conf, or -EINVAL with a malloc'd message naming the
 * field in *reterr_msg. */
typedef int (*handlers_config_new_fn)(const handlers_config_ctx_t *ctx, const uint8_t *buf,
                                      size_t len, const void **ret_conf, char **reterr_msg);

/* ---- for the config halves ---- */

/* Sets *reterr_msg (when not NULL) to the formatted message, malloc'd; returns -EINVAL. */
int handlers_config_fail(char **reterr_msg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* StringMatcher and HeaderMatcher configs are built with xds/route_build.h's
 * xds_str_match_build and xds_header_match_build, into dataplane/route.h's matchers. */

/* Whether some filter of skiff's reads configs of that type. */
bool handlers_config_known(const char *type_url);

/* Builds the config of a type skiff implements: 0 with *ret_conf; -ENOENT when no filter of
 * skiff's takes that type (the caller passes it through); -EINVAL as above. */
int handlers_config_new(const handlers_config_ctx_t *ctx, const char *type_url, const uint8_t *buf,
                        size_t len, const void **ret_conf, char **reterr_msg);

#endif
