/* Translation of access_log entries (envoy.config.accesslog.v3.AccessLog) into the snapshot's
 * dp_access_log_t list (dataplane/access_log.h). Only envoy.access_loggers.file
 * (FileAccessLog) writes lines; other loggers (gRPC, OpenTelemetry) are accepted and skipped,
 * as are filters (every stream is logged). Main thread. */
#ifndef SKIFF_XDS_ACCESS_LOG_BUILD_H
#define SKIFF_XDS_ACCESS_LOG_BUILD_H

#include <stddef.h>

#include "dataplane/access_log.h"
#include "dataplane/snapshot.h"
#include "envoy/config/accesslog/v3/accesslog.pb-c.h"

#define XDS_FILE_ACCESS_LOG_TYPE \
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

/* Builds the n entries into arena a: *ret_logs (NULL when none writes) and *ret_n. Opens each
 * file (dp_access_file_get). Returns 0, or -EINVAL with a malloc'd message naming the entry
 * and field ("access_log[0] (envoy.access_loggers.file): path: must not be empty",
 * "...: log_format: unknown command operator FOO"). */
int xds_access_logs_build(dp_arena_t *a, Envoy__Config__Accesslog__V3__AccessLog *const *logs,
                          size_t n, const dp_access_log_t **ret_logs, size_t *ret_n,
                          char **reterr_msg);

#endif
