#include "xds/access_log_build.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envoy/extensions/access_loggers/file/v3/file.pb-c.h"
#include "google/protobuf/struct.pb-c.h"

typedef Envoy__Extensions__AccessLoggers__File__V3__FileAccessLog file_log_t;

#define FAL(x)  ENVOY__EXTENSIONS__ACCESS_LOGGERS__FILE__V3__FILE_ACCESS_LOG__##x
#define SFS(x)  ENVOY__CONFIG__CORE__V3__SUBSTITUTION_FORMAT_STRING__##x
#define DS(x)   ENVOY__CONFIG__CORE__V3__DATA_SOURCE__##x
#define KIND(x) GOOGLE__PROTOBUF__VALUE__KIND_##x

/* json_format nesting and size limits. */
#define MAX_JSON_DEPTH  8
#define MAX_JSON_FIELDS 256

static int fail(char **reterr_msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(char **reterr_msg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(reterr_msg, fmt, ap) < 0)
        *reterr_msg = NULL;
    va_end(ap);
    return -EINVAL;
}

/* A json_format Struct into fields (arena); string values are text formats, numbers, bools
 * and null are written as they are, nested structs recurse. Lists are refused, as in Envoy. */
static int json_fields(dp_arena_t *a, const Google__Protobuf__Struct *st, int depth,
                       const char *where, dp_access_json_field_t **ret_f, size_t *ret_n,
                       char **reterr_msg)
{
    if (depth > MAX_JSON_DEPTH)
        return fail(reterr_msg, "%s: json_format: nested deeper than %d", where, MAX_JSON_DEPTH);
    if (st->n_fields > MAX_JSON_FIELDS)
        return fail(reterr_msg, "%s: json_format: more than %d keys", where, MAX_JSON_FIELDS);
    dp_access_json_field_t *f = dp_arena_alloc(a, (st->n_fields ? st->n_fields : 1) * sizeof(*f));
    for (size_t i = 0; i < st->n_fields; i++) {
        const Google__Protobuf__Struct__FieldsEntry *e = st->fields[i];
        const Google__Protobuf__Value *v = e->value;
        f[i].key = dp_arena_strdup(a, e->key ? e->key : "");
        char raw[64];
        switch (v ? v->kind_case : KIND(NULL_VALUE)) {
        case KIND(STRING_VALUE): {
            char *err = NULL;
            f[i].kind = DP_ACCESS_JSON_FORMAT;
            if (dp_access_format_compile(a, v->string_value ? v->string_value : "", &f[i].fmt,
                                         &err) < 0) {
                int rc = fail(reterr_msg, "%s: json_format.%s: %s", where, f[i].key,
                              err ? err : "invalid");
                free(err);
                return rc;
            }
            break;
        }
        case KIND(NUMBER_VALUE):
            if (!isfinite(v->number_value))
                return fail(reterr_msg, "%s: json_format.%s: not a finite number", where, f[i].key);
            snprintf(raw, sizeof(raw), "%.17g", v->number_value);
            f[i].kind = DP_ACCESS_JSON_RAW;
            f[i].raw = dp_arena_strdup(a, raw);
            break;
        case KIND(BOOL_VALUE):
            f[i].kind = DP_ACCESS_JSON_RAW;
            f[i].raw = dp_arena_strdup(a, v->bool_value ? "true" : "false");
            break;
        case KIND(STRUCT_VALUE): {
            dp_access_json_field_t *sub;
            size_t nsub;
            int rc = json_fields(a, v->struct_value, depth + 1, where, &sub, &nsub, reterr_msg);
            if (rc < 0)
                return rc;
            f[i].kind = DP_ACCESS_JSON_OBJECT;
            f[i].fields = sub;
            f[i].n_fields = nsub;
            break;
        }
        case KIND(LIST_VALUE):
            return fail(reterr_msg, "%s: json_format.%s: lists are not supported", where, f[i].key);
        default:
            f[i].kind = DP_ACCESS_JSON_RAW;
            f[i].raw = dp_arena_strdup(a, "null");
            break;
        }
    }
    *ret_f = f;
    *ret_n = st->n_fields;
    return 0;
}

static int json_format(dp_arena_t *a, const Google__Protobuf__Struct *st, const char *where,
                       const dp_access_format_t **ret_fmt, char **reterr_msg)
{
    dp_access_json_field_t *f;
    size_t n;
    int rc = json_fields(a, st, 0, where, &f, &n, reterr_msg);
    if (rc < 0)
        return rc;
    *ret_fmt = dp_access_format_json(a, f, n);
    return 0;
}

static int text_format(dp_arena_t *a, const char *text, const char *where, const char *field,
                       const dp_access_format_t **ret_fmt, char **reterr_msg)
{
    char *err = NULL;
    if (dp_access_format_compile(a, text, ret_fmt, &err) < 0) {
        int rc = fail(reterr_msg, "%s: %s: %s", where, field, err ? err : "invalid");
        free(err);
        return rc;
    }
    return 0;
}

static int file_format(dp_arena_t *a, const file_log_t *fl, const char *where,
                       const dp_access_format_t **ret_fmt, char **reterr_msg)
{
    switch (fl->access_log_format_case) {
    case FAL(ACCESS_LOG_FORMAT_FORMAT):
        return text_format(a,
                           fl->format && fl->format[0] ? fl->format : DP_ACCESS_LOG_DEFAULT_FORMAT,
                           where, "format", ret_fmt, reterr_msg);
    case FAL(ACCESS_LOG_FORMAT_JSON_FORMAT):
        return json_format(a, fl->json_format, where, ret_fmt, reterr_msg);
    case FAL(ACCESS_LOG_FORMAT_TYPED_JSON_FORMAT):
        return json_format(a, fl->typed_json_format, where, ret_fmt, reterr_msg);
    case FAL(ACCESS_LOG_FORMAT_LOG_FORMAT): {
        const Envoy__Config__Core__V3__SubstitutionFormatString *lf = fl->log_format;
        switch (lf->format_case) {
        case SFS(FORMAT_TEXT_FORMAT):
            return text_format(a, lf->text_format ? lf->text_format : "", where,
                               "log_format.text_format", ret_fmt, reterr_msg);
        case SFS(FORMAT_JSON_FORMAT):
            return json_format(a, lf->json_format, where, ret_fmt, reterr_msg);
        case SFS(FORMAT_TEXT_FORMAT_SOURCE): {
            const Envoy__Config__Core__V3__DataSource *ds = lf->text_format_source;
            if (ds && ds->specifier_case == DS(SPECIFIER_INLINE_STRING))
                return text_format(a, ds->inline_string ? ds->inline_string : "", where,
                                   "log_format.text_format_source.inline_string", ret_fmt,
                                   reterr_msg);
            if (ds && ds->specifier_case == DS(SPECIFIER_INLINE_BYTES)) {
                if (memchr(ds->inline_bytes.data, '\0', ds->inline_bytes.len))
                    return fail(reterr_msg,
                                "%s: log_format.text_format_source.inline_bytes: contains NUL",
                                where);
                char *t = strndup((const char *)ds->inline_bytes.data, ds->inline_bytes.len);
                if (t == NULL)
                    abort();
                int rc = text_format(a, t, where, "log_format.text_format_source.inline_bytes",
                                     ret_fmt, reterr_msg);
                free(t);
                return rc;
            }
            return fail(reterr_msg,
                        "%s: log_format.text_format_source: only inline_string and inline_bytes "
                        "are supported",
                        where);
        }
        default:
            return fail(reterr_msg,
                        "%s: log_format: one of text_format, json_format or "
                        "text_format_source is required",
                        where);
        }
    }
    default:
        return text_format(a, DP_ACCESS_LOG_DEFAULT_FORMAT, where, "format", ret_fmt, reterr_msg);
    }
}

int xds_access_logs_build(dp_arena_t *a, Envoy__Config__Accesslog__V3__AccessLog *const *logs,
                          size_t n, const dp_access_log_t **ret_logs, size_t *ret_n,
                          char **reterr_msg)
{
    *ret_logs = NULL;
    *ret_n = 0;
    if (n == 0)
        return 0;
    dp_access_log_t *out = dp_arena_alloc(a, n * sizeof(*out));
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const Envoy__Config__Accesslog__V3__AccessLog *al = logs[i];
        const char *name = al->name && al->name[0] ? al->name : "envoy.access_loggers.file";
        char where[300];
        snprintf(where, sizeof(where), "access_log[%zu] (%s)", i, name);
        const Google__Protobuf__Any *tc =
            al->config_type_case ==
                    ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG__CONFIG_TYPE_TYPED_CONFIG
                ? al->typed_config
                : NULL;
        if (tc == NULL || tc->type_url == NULL || strcmp(tc->type_url, XDS_FILE_ACCESS_LOG_TYPE))
            continue; /* another kind of logger: not written by skiff */
        file_log_t *fl = envoy__extensions__access_loggers__file__v3__file_access_log__unpack(
            NULL, tc->value.len, tc->value.data);
        if (fl == NULL)
            return fail(reterr_msg, "%s: typed_config: cannot decode FileAccessLog", where);
        int rc = 0;
        if (fl->path == NULL || fl->path[0] == '\0') {
            rc = fail(reterr_msg, "%s: path: must not be empty", where);
        } else {
            rc = file_format(a, fl, where, &out[k].format, reterr_msg);
            if (rc == 0) {
                char *err = NULL;
                out[k].file = dp_access_file_get(fl->path, &err);
                if (out[k].file == NULL) {
                    rc = fail(reterr_msg, "%s: path: %s", where, err ? err : "cannot open");
                    free(err);
                }
            }
        }
        envoy__extensions__access_loggers__file__v3__file_access_log__free_unpacked(fl, NULL);
        if (rc < 0)
            return rc;
        k++;
    }
    *ret_logs = k ? out : NULL;
    *ret_n = k;
    return 0;
}
