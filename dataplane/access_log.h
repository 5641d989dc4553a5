/* Envoy's file access log (envoy.access_loggers.file): compiled formats, the line formatter and
 * the shared log files.
 *
 * Formats: a text format is a list of literal pieces and command operators (Envoy's
 * "Access logging" docs: %START_TIME%, %REQ(X?Y):N%, %RESPONSE_FLAGS%, ...; "%%" is a literal
 * percent sign). A JSON format is a tree of keys whose string values are text formats; a value
 * that is a single operator keeps its type (numbers stay numbers, an absent value is null), as
 * Envoy's json_format does. Formats are compiled on the main thread into a snapshot's arena and
 * read by workers.
 *
 * Files: one open file per path, shared by every worker and every snapshot, kept for the
 * process's life. A worker formats a line into a thread-local buffer and appends it to the
 * file's buffer under the file's mutex; the buffer is written out when it holds
 * --file-flush-min-size-kb, and by the main thread every --file-flush-interval-msec, on
 * dp_access_log_reopen() (SIGUSR1, POST /reopen_logs) and at exit (dp_access_log_flush()).
 * "/dev/stdout" and "/dev/stderr" are the process's own descriptors. */
#ifndef SKIFF_DATAPLANE_ACCESS_LOG_H
#define SKIFF_DATAPLANE_ACCESS_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "dataplane/snapshot.h"

struct dp_stream; /* dataplane/stream.h */

typedef struct dp_access_format dp_access_format_t;
typedef struct dp_access_file dp_access_file_t;

/* Envoy's default format (used when a FileAccessLog has none). */
#define DP_ACCESS_LOG_DEFAULT_FORMAT                                                          \
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "        \
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "              \
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" " \
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n"

/* One access_log entry of a connection manager: where and how. */
typedef struct dp_access_log {
    dp_access_file_t *file;
    const dp_access_format_t *format;
} dp_access_log_t;

/* Compiles a text format into arena a. Returns 0 and the format, or -EINVAL with a malloc'd
 * message naming the bad operator or position in *reterr_msg ("unknown command operator
 * FOO", "%REQ needs a header name"). */
int dp_access_format_compile(dp_arena_t *a, const char *text, const dp_access_format_t **ret_fmt,
                             char **reterr_msg);

/* A JSON format's tree, as the builder hands it over (copied into the format; the caller's
 * array may go afterwards). */
typedef enum dp_access_json_kind {
    DP_ACCESS_JSON_FORMAT, /* fmt: a compiled text format, its value a string (or typed) */
    DP_ACCESS_JSON_RAW,    /* raw: a JSON literal written as it is (a number, true, null) */
    DP_ACCESS_JSON_OBJECT, /* fields / n_fields: a nested object */
} dp_access_json_kind_t;

typedef struct dp_access_json_field {
    const char *key;
    dp_access_json_kind_t kind;
    const dp_access_format_t *fmt;
    const char *raw;
    const struct dp_access_json_field *fields;
    size_t n_fields;
} dp_access_json_field_t;

/* A JSON format: one object per line with these keys in this order (deep-copied into a). */
const dp_access_format_t *dp_access_format_json(dp_arena_t *a, const dp_access_json_field_t *f,
                                                size_t n);

/* Formats the line for a finished stream into buf (NUL ended; a JSON line gets its "\n", a
 * text line has what the format has). now_ms is the loop time at the end (for %DURATION%).
 * Returns the length; a line longer than cap - 1 is cut (a JSON one then still ends in "}\n"
 * only if it fit). Any thread. */
size_t dp_access_format_line(const dp_access_format_t *f, const struct dp_stream *s,
                             uint64_t now_ms, char *buf, size_t cap);

/* A text format as a header value (Envoy's header formatter: what the route's headers_to_add
 * values hold): an absent value is empty instead of "-". Into buf, NUL ended; returns the
 * length (a value longer than cap - 1 is cut). Any thread. */
size_t dp_access_format_value(const dp_access_format_t *f, const struct dp_stream *s,
                              uint64_t now_ms, char *buf, size_t cap);

/* The shared file for path, opened (appending, created 0644) on first use. Main thread.
 * Returns NULL and a malloc'd message when it cannot be opened. */
dp_access_file_t *dp_access_file_get(const char *path, char **reterr_msg);

/* Appends bytes (whole lines) to the file's buffer; writes it out when it reaches the flush
 * size. Any thread. */
void dp_access_file_append(dp_access_file_t *f, const char *p, size_t n);

/* Formats s with each of the n logs and appends the lines. Worker thread. */
void dp_access_log_write(const dp_access_log_t *logs, size_t n, const struct dp_stream *s,
                         uint64_t now_ms);

/* Starts the flush timer on the main loop every interval_ms (0: 10 s, Envoy's default) and
 * sets the size past which a buffer is written at once (min_size_kb; 0: 64 KiB). The timer
 * does not keep the loop alive; a uv_walk that closes every handle closes it. Main thread. */
void dp_access_log_start(uv_loop_t *loop, uint32_t interval_ms, uint32_t min_size_kb);

/* Writes out every file's buffer. Any thread. */
void dp_access_log_flush(void);

/* Flushes, then reopens every file by its path (logrotate moved it). Returns 0, or the first
 * negative errno of a failed open (that file keeps its old descriptor). Main thread. */
int dp_access_log_reopen(void);

#endif
