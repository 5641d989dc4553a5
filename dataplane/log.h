/* Logging: Envoy's logger names and levels, per-component levels changeable at runtime from any
 * thread, and Envoy-like text lines:
 *   [2026-11-24 14:01:47.123][12345][info][main] [agent/server.c:42] message
 * DP_LOG checks the level (one relaxed atomic load) before formatting anything. Each line is
 * written with one write(2) under a lock, so lines of different threads never interleave, and
 * dp_log_reopen() can swap the file while other threads log. */
#ifndef SKIFF_DATAPLANE_LOG_H
#define SKIFF_DATAPLANE_LOG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum dp_log_level {
    DP_LOG_TRACE = 0,
    DP_LOG_DEBUG,
    DP_LOG_INFO,
    DP_LOG_WARN,
    DP_LOG_ERROR,
    DP_LOG_CRITICAL,
    DP_LOG_OFF,
} dp_log_level_t;

/* The loggers, in the order /logging lists them (Envoy's logger ids that matter here). */
#define DP_LOG_COMPONENTS(X)                                                                       \
    X(ADMIN, "admin")                                                                              \
    X(AWS, "aws")                                                                                  \
    X(ASSERT, "assert")                                                                            \
    X(BACKTRACE, "backtrace")                                                                      \
    X(CLIENT, "client")                                                                            \
    X(CONFIG, "config")                                                                            \
    X(CONNECTION, "connection")                                                                    \
    X(CONN_HANDLER, "conn_handler")                                                                \
    X(DNS, "dns")                                                                                  \
    X(ENVOY_BUG, "envoy_bug")                                                                      \
    X(EXT_AUTHZ, "ext_authz")                                                                      \
    X(FILE, "file")                                                                                \
    X(FILTER, "filter")                                                                            \
    X(FORWARD_PROXY, "forward_proxy")                                                              \
    X(GRPC, "grpc")                                                                                \
    X(HC, "hc")                                                                                    \
    X(HEALTH_CHECKER, "health_checker")                                                            \
    X(HTTP, "http")                                                                                \
    X(HTTP2, "http2")                                                                              \
    X(INIT, "init")                                                                                \
    X(IO, "io")                                                                                    \
    X(JWT, "jwt")                                                                                  \
    X(LUA, "lua")                                                                                  \
    X(MAIN, "main")                                                                                \
    X(MATCHER, "matcher")                                                                          \
    X(MISC, "misc")                                                                                \
    X(POOL, "pool")                                                                                \
    X(RBAC, "rbac")                                                                                \
    X(RDS, "rds")                                                                                  \
    X(ROUTER, "router")                                                                            \
    X(RUNTIME, "runtime")                                                                          \
    X(STATS, "stats")                                                                              \
    X(SECRET, "secret")                                                                            \
    X(TAP, "tap")                                                                                  \
    X(TESTING, "testing")                                                                          \
    X(TRACING, "tracing")                                                                          \
    X(UPSTREAM, "upstream")                                                                        \
    X(UDP, "udp")                                                                                  \
    X(WASM, "wasm")                                                                                \
    X(WEBSOCKET, "websocket")

typedef enum dp_log_component {
#define DP_LOG_ENUM_(id, name) DP_LOG_##id,
    DP_LOG_COMPONENTS(DP_LOG_ENUM_)
#undef DP_LOG_ENUM_
        DP_LOG_COMPONENT_COUNT
} dp_log_component_t;

extern _Atomic int dp_log_levels[DP_LOG_COMPONENT_COUNT];

/* Writes one line. Use DP_LOG, which skips disabled levels without evaluating arguments. */
void dp_log_write(dp_log_component_t c, dp_log_level_t l, const char *file, int line,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Whether a line at that level would be written: to skip preparing arguments. */
#define DP_LOG_ON(comp, level) \
    ((int)(level) >= atomic_load_explicit(&dp_log_levels[comp], memory_order_relaxed))

#define DP_LOG(comp, level, ...)                                                                   \
    do {                                                                                           \
        if ((int)(level) >= atomic_load_explicit(&dp_log_levels[comp], memory_order_relaxed))      \
            dp_log_write((comp), (level), __FILE__, __LINE__, __VA_ARGS__);                        \
    } while (0)

/* Envoy's level names: "trace" ... "critical", "off"; "warn" is accepted for "warning". Returns
 * 0 and the level, or -EINVAL. */
int dp_log_level_parse(const char *name, dp_log_level_t *ret_level);
const char *dp_log_level_name(dp_log_level_t l); /* "warning" for DP_LOG_WARN */

/* Applies -l and --component-log-level ("upstream:debug,connection:trace"). On a bad level or
 * logger name returns -EINVAL with a one-line message naming the flag and the bad part. */
int dp_log_configure(const char *level, const char *component_levels, char *errbuf, size_t errlen);

void dp_log_set_all(dp_log_level_t l);
/* Returns 0, or -ENOENT for an unknown logger name. */
int dp_log_set_component(const char *name, dp_log_level_t l);
const char *dp_log_component_name(dp_log_component_t c);
dp_log_level_t dp_log_component_level(dp_log_component_t c);

/* Switches to JSON lines {"time","level","scope","msg","caller","thread"} (Istio's JSON log
 * format) or back to text. */
void dp_log_set_json(bool json);

/* Sets the text line format, spdlog-style as Envoy's --log-format: %Y %m %d %H %M %S %T (=
 * %H:%M:%S) %e (ms) %f (us) %F (ns) %l (level) %L (level's initial) %n (logger) %v (message)
 * %t (thread id) %g (source file) %s (its base name) %# (line) %%. Istio's is
 * "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t". NULL restores Envoy's default
 * "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v". Returns -EINVAL, naming the bad flag in errbuf,
 * for an unknown %x. Call before other threads log. */
int dp_log_set_format(const char *fmt, char *errbuf, size_t errlen);

/* JSON lines whose keys are formatted with the flags above: keys[i] = values[i] (Envoy's
 * application_log_config.log_format.json_format). n == 0 restores text. Same errors. */
int dp_log_set_json_format(const char *const *keys, const char *const *values, size_t n,
                           char *errbuf, size_t errlen);

/* Sends lines to `path` (appending) instead of stderr. Returns 0 or a negative errno. */
int dp_log_set_path(const char *path);
/* Reopens the path given to dp_log_set_path (logrotate, SIGUSR1); no-op for stderr. */
int dp_log_reopen(void);

#endif
