#include "dataplane/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

_Atomic int dp_log_levels[DP_LOG_COMPONENT_COUNT] = {
#define DP_LOG_INIT_(id, name) [DP_LOG_##id] = DP_LOG_INFO,
    DP_LOG_COMPONENTS(DP_LOG_INIT_)
#undef DP_LOG_INIT_
};

static const char *const component_names[DP_LOG_COMPONENT_COUNT] = {
#define DP_LOG_NAME_(id, name) [DP_LOG_##id] = name,
    DP_LOG_COMPONENTS(DP_LOG_NAME_)
#undef DP_LOG_NAME_
};

static const char *const level_names[] = {"trace", "debug", "info", "warning",
                                          "error", "critical", "off"};

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static int out_fd = STDERR_FILENO;
static char *out_path;
static _Atomic bool json_lines;

/* A custom format (dp_log_set_format / dp_log_set_json_format); set before threads start. */
static char *text_format;
static char **json_keys, **json_values;
static size_t n_json;

static const char *const default_format = "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v";

static int check_format(const char *fmt, char *errbuf, size_t errlen)
{
    for (const char *p = fmt; *p; p++) {
        if (*p != '%')
            continue;
        p++;
        if (*p == '\0' || strchr("YmdHMST efFlLnvtgs#%", *p) == NULL || *p == ' ') {
            snprintf(errbuf, errlen, "log format '%s': unknown flag '%%%c'", fmt, *p ? *p : ' ');
            return -EINVAL;
        }
    }
    return 0;
}

int dp_log_set_format(const char *fmt, char *errbuf, size_t errlen)
{
    if (fmt && check_format(fmt, errbuf, errlen) < 0)
        return -EINVAL;
    free(text_format);
    text_format = fmt ? strdup(fmt) : NULL;
    return 0;
}

int dp_log_set_json_format(const char *const *keys, const char *const *values, size_t n,
                           char *errbuf, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        if (check_format(values[i], errbuf, errlen) < 0)
            return -EINVAL;
    }
    for (size_t i = 0; i < n_json; i++) {
        free(json_keys[i]);
        free(json_values[i]);
    }
    free(json_keys);
    free(json_values);
    json_keys = n ? calloc(n, sizeof(char *)) : NULL;
    json_values = n ? calloc(n, sizeof(char *)) : NULL;
    for (size_t i = 0; i < n; i++) {
        json_keys[i] = strdup(keys[i]);
        json_values[i] = strdup(values[i]);
    }
    n_json = n;
    return 0;
}

int dp_log_level_parse(const char *name, dp_log_level_t *ret_level)
{
    if (strcmp(name, "warn") == 0) {
        *ret_level = DP_LOG_WARN;
        return 0;
    }
    for (int i = 0; i <= DP_LOG_OFF; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *ret_level = (dp_log_level_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *dp_log_level_name(dp_log_level_t l)
{
    return (unsigned)l <= DP_LOG_OFF ? level_names[l] : "unknown";
}

void dp_log_set_all(dp_log_level_t l)
{
    for (int i = 0; i < DP_LOG_COMPONENT_COUNT; i++)
        atomic_store_explicit(&dp_log_levels[i], (int)l, memory_order_relaxed);
}

int dp_log_set_component(const char *name, dp_log_level_t l)
{
    for (int i = 0; i < DP_LOG_COMPONENT_COUNT; i++) {
        if (strcmp(component_names[i], name) == 0) {
            atomic_store_explicit(&dp_log_levels[i], (int)l, memory_order_relaxed);
            return 0;
        }
    }
    return -ENOENT;
}

const char *dp_log_component_name(dp_log_component_t c)
{
    return (unsigned)c < DP_LOG_COMPONENT_COUNT ? component_names[c] : "unknown";
}

dp_log_level_t dp_log_component_level(dp_log_component_t c)
{
    return (dp_log_level_t)atomic_load_explicit(&dp_log_levels[c], memory_order_relaxed);
}

int dp_log_configure(const char *level, const char *component_levels, char *errbuf, size_t errlen)
{
    dp_log_level_t l;
    if (level && level[0]) {
        if (dp_log_level_parse(level, &l) < 0) {
            snprintf(errbuf, errlen, "bad value '%s' for flag '--log-level'", level);
            return -EINVAL;
        }
        dp_log_set_all(l);
    }
    if (component_levels == NULL || component_levels[0] == '\0')
        return 0;
    char *copy = strdup(component_levels);
    if (copy == NULL)
        return -ENOMEM;
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        if (colon == NULL) {
            snprintf(errbuf, errlen,
                     "bad value '%s' for flag '--component-log-level': expected <logger>:<level>",
                     tok);
            rc = -EINVAL;
            break;
        }
        *colon = '\0';
        if (dp_log_level_parse(colon + 1, &l) < 0) {
            snprintf(errbuf, errlen, "bad value '%s' for flag '--component-log-level': bad level",
                     colon + 1);
            rc = -EINVAL;
            break;
        }
        if (dp_log_set_component(tok, l) < 0) {
            snprintf(errbuf, errlen,
                     "bad value '%s' for flag '--component-log-level': unknown logger", tok);
            rc = -EINVAL;
            break;
        }
    }
    free(copy);
    return rc;
}

void dp_log_set_json(bool json)
{
    atomic_store(&json_lines, json);
}

int dp_log_set_path(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    char *p = strdup(path);
    if (p == NULL) {
        close(fd);
        return -ENOMEM;
    }
    pthread_mutex_lock(&out_mu);
    if (out_fd != STDERR_FILENO)
        close(out_fd);
    out_fd = fd;
    free(out_path);
    out_path = p;
    pthread_mutex_unlock(&out_mu);
    return 0;
}

int dp_log_reopen(void)
{
    pthread_mutex_lock(&out_mu);
    int rc = 0;
    if (out_path) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0) {
            rc = -errno;
        } else {
            close(out_fd);
            out_fd = fd;
        }
    }
    pthread_mutex_unlock(&out_mu);
    return rc;
}

/* Appends s to buf as a JSON string body (no quotes). */
static size_t json_escape(char *buf, size_t cap, size_t n, const char *s)
{
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(buf + n, cap - n, "\\u%04x", c);
        } else {
            buf[n++] = (char)c;
        }
    }
    return n;
}

typedef struct log_fields {
    const struct tm *tm;
    long nsec;
    long tid;
    dp_log_level_t level;
    dp_log_component_t comp;
    const char *file;
    int line;
    const char *msg;
} log_fields_t;

/* Expands a spdlog-style format into out; JSON-escapes the expansion when json is set. */
static size_t format_line(char *out, size_t cap, size_t n, const char *fmt, const log_fields_t *f,
                          bool json)
{
    char tmp[64];
    for (const char *p = fmt; *p && n + 8 < cap; p++) {
        const char *piece = tmp;
        if (*p != '%' || p[1] == '\0') {
            tmp[0] = *p;
            tmp[1] = '\0';
        } else {
            switch (*++p) {
            case 'Y': snprintf(tmp, sizeof(tmp), "%04d", f->tm->tm_year + 1900); break;
            case 'm': snprintf(tmp, sizeof(tmp), "%02d", f->tm->tm_mon + 1); break;
            case 'd': snprintf(tmp, sizeof(tmp), "%02d", f->tm->tm_mday); break;
            case 'H': snprintf(tmp, sizeof(tmp), "%02d", f->tm->tm_hour); break;
            case 'M': snprintf(tmp, sizeof(tmp), "%02d", f->tm->tm_min); break;
            case 'S': snprintf(tmp, sizeof(tmp), "%02d", f->tm->tm_sec); break;
            case 'T':
                snprintf(tmp, sizeof(tmp), "%02d:%02d:%02d", f->tm->tm_hour, f->tm->tm_min,
                         f->tm->tm_sec);
                break;
            case 'e': snprintf(tmp, sizeof(tmp), "%03ld", f->nsec / 1000000); break;
            case 'f': snprintf(tmp, sizeof(tmp), "%06ld", f->nsec / 1000); break;
            case 'F': snprintf(tmp, sizeof(tmp), "%09ld", f->nsec); break;
            case 'l': piece = level_names[f->level]; break;
            case 'L': snprintf(tmp, sizeof(tmp), "%c", level_names[f->level][0] - 32); break;
            case 'n': piece = component_names[f->comp]; break;
            case 'v': piece = f->msg; break;
            case 't': snprintf(tmp, sizeof(tmp), "%ld", f->tid); break;
            case 'g': piece = f->file; break;
            case 's': {
                const char *slash = strrchr(f->file, '/');
                piece = slash ? slash + 1 : f->file;
                break;
            }
            case '#': snprintf(tmp, sizeof(tmp), "%d", f->line); break;
            default: snprintf(tmp, sizeof(tmp), "%c", *p); break;
            }
        }
        if (json) {
            n = json_escape(out, cap, n, piece);
        } else {
            size_t len = strlen(piece);
            if (len > cap - n - 2)
                len = cap - n - 2;
            memcpy(out + n, piece, len);
            n += len;
        }
    }
    return n;
}

void dp_log_write(dp_log_component_t c, dp_log_level_t l, const char *file, int line,
                  const char *fmt, ...)
{
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    /* __FILE__ is relative to the build directory: show the path in the source tree. */
    while (strncmp(file, "../", 3) == 0)
        file += 3;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    long tid = (long)syscall(SYS_gettid);
    char out[4096 + 512];
    size_t n;
    log_fields_t lf = {.tm = &tm, .nsec = (long)tv.tv_usec * 1000, .tid = tid, .level = l,
                       .comp = c, .file = file, .line = line, .msg = msg};
    if (n_json) {
        n = 0;
        out[n++] = '{';
        for (size_t i = 0; i < n_json && n + 16 < sizeof(out); i++) {
            n += (size_t)snprintf(out + n, sizeof(out) - n, "%s\"", i ? "," : "");
            n = json_escape(out, sizeof(out), n, json_keys[i]);
            n += (size_t)snprintf(out + n, sizeof(out) - n, "\":\"");
            n = format_line(out, sizeof(out), n, json_values[i], &lf, true);
            n += (size_t)snprintf(out + n, sizeof(out) - n, "\"");
        }
        n += (size_t)snprintf(out + n, sizeof(out) - n, "}\n");
    } else if (atomic_load(&json_lines)) {
        n = (size_t)snprintf(out, sizeof(out),
                             "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ\",\"level\":\"%s\","
                             "\"scope\":\"envoy %s\",\"msg\":\"",
                             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                             tm.tm_sec, (long)tv.tv_usec, level_names[l], component_names[c]);
        n = json_escape(out, sizeof(out), n, msg);
        n += (size_t)snprintf(out + n, sizeof(out) - n, "\",\"caller\":\"%s:%d\",\"thread\":%ld}\n",
                              file, line, tid);
    } else {
        n = format_line(out, sizeof(out), 0, text_format ? text_format : default_format, &lf,
                        false);
        out[n++] = '\n';
    }
    if (n >= sizeof(out)) {
        n = sizeof(out) - 1;
        out[n - 1] = '\n';
    }
    pthread_mutex_lock(&out_mu);
    ssize_t w = write(out_fd, out, n);
    (void)w;
    pthread_mutex_unlock(&out_mu);
}
