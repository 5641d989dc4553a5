#include "xds/pbjson.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

/* ------------------------------------------------------------------------------------------ */
/* Diagnostics */

typedef struct pbjson_diag_entry {
    pbjson_severity_t severity;
    char *msg;
} pbjson_diag_entry_t;

struct pbjson_diag {
    pbjson_diag_entry_t *v;
    size_t n, cap;
    size_t n_errors, n_warnings;
    size_t dropped;
};

pbjson_diag_t *pbjson_diag_new(void)
{
    return calloc(1, sizeof(pbjson_diag_t));
}

void pbjson_diag_clear(pbjson_diag_t *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++)
        free(d->v[i].msg);
    free(d->v);
    d->v = NULL;
    d->n = d->cap = 0;
    d->n_errors = d->n_warnings = d->dropped = 0;
}

void pbjson_diag_free(pbjson_diag_t *d)
{
    if (!d)
        return;
    pbjson_diag_clear(d);
    free(d);
}

size_t pbjson_diag_count(const pbjson_diag_t *d, unsigned severity_mask)
{
    if (!d)
        return 0;
    return ((severity_mask & PBJSON_ERROR) ? d->n_errors : 0) +
           ((severity_mask & PBJSON_WARNING) ? d->n_warnings : 0);
}

size_t pbjson_diag_size(const pbjson_diag_t *d)
{
    return d ? d->n : 0;
}

const char *pbjson_diag_at(const pbjson_diag_t *d, size_t i, pbjson_severity_t *ret_severity)
{
    if (!d || i >= d->n)
        return NULL;
    if (ret_severity)
        *ret_severity = d->v[i].severity;
    return d->v[i].msg;
}

static int diag_push(pbjson_diag_t *d, pbjson_severity_t sev, char *msg)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        pbjson_diag_entry_t *v = realloc(d->v, cap * sizeof(*v));
        if (!v) {
            free(msg);
            return -ENOMEM;
        }
        d->v = v;
        d->cap = cap;
    }
    d->v[d->n].severity = sev;
    d->v[d->n].msg = msg;
    d->n++;
    return 0;
}

static int diag_vadd(pbjson_diag_t *d, pbjson_severity_t sev, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static int diag_vadd(pbjson_diag_t *d, pbjson_severity_t sev, const char *fmt, va_list ap)
{
    if (!d)
        return 0;
    if (sev == PBJSON_ERROR)
        d->n_errors++;
    else
        d->n_warnings++;
    /* Keep the list bounded: a hostile input could otherwise produce one diagnostic per byte.
     * The last slot is rewritten to say how many were dropped. */
    if (d->n >= PBJSON_DIAG_MAX) {
        d->dropped++;
        char *note;
        if (asprintf(&note, "(%zu more diagnostics not shown)", d->dropped) < 0)
            return -ENOMEM;
        if (d->n == PBJSON_DIAG_MAX)
            return diag_push(d, PBJSON_ERROR, note);
        free(d->v[d->n - 1].msg);
        d->v[d->n - 1].msg = note;
        return 0;
    }
    char *msg;
    if (vasprintf(&msg, fmt, ap) < 0)
        return -ENOMEM;
    return diag_push(d, sev, msg);
}

int pbjson_diag_add(pbjson_diag_t *d, pbjson_severity_t severity, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = diag_vadd(d, severity, fmt, ap);
    va_end(ap);
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* Shared helpers: base64, time conversions, field access */

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const uint8_t *p, size_t n)
{
    size_t out_len = (n + 2) / 3 * 4;
    char *out = malloc(out_len + 1);
    if (!out)
        return NULL;
    char *o = out;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = b64_std[v >> 18];
        *o++ = b64_std[(v >> 12) & 63];
        *o++ = b64_std[(v >> 6) & 63];
        *o++ = b64_std[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        *o++ = b64_std[v >> 18];
        *o++ = b64_std[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        *o++ = b64_std[v >> 18];
        *o++ = b64_std[(v >> 12) & 63];
        *o++ = b64_std[(v >> 6) & 63];
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Decodes standard or URL-safe base64, padded or not (protojson accepts all four). Returns 0,
 * -EINVAL on malformed input, -ENOMEM. The output buffer is NULL when empty. */
static int b64_decode(const char *s, size_t n, uint8_t **ret_buf, size_t *ret_len)
{
    size_t data_len = n;
    while (data_len > 0 && s[data_len - 1] == '=' && n - data_len < 2)
        data_len--;
    if (data_len != n && n % 4 != 0)
        return -EINVAL;
    if (data_len % 4 == 1)
        return -EINVAL;
    size_t out_len = data_len / 4 * 3 + (data_len % 4 ? data_len % 4 - 1 : 0);
    uint8_t *out = NULL;
    if (out_len > 0) {
        out = malloc(out_len);
        if (!out)
            return -ENOMEM;
    }
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < data_len; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) {
            free(out);
            return -EINVAL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    *ret_buf = out;
    *ret_len = o;
    return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *ret_y, unsigned *ret_m, unsigned *ret_d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    *ret_y = (int64_t)yoe + era * 400 + (m <= 2);
    *ret_m = m;
    *ret_d = d;
}

/* Limits from google/protobuf/duration.proto and timestamp.proto. */
#define DURATION_MAX_SECONDS  315576000000LL
#define TIMESTAMP_MIN_SECONDS (-62135596800LL) /* 0001-01-01T00:00:00Z */
#define TIMESTAMP_MAX_SECONDS 253402300799LL   /* 9999-12-31T23:59:59Z */

static void *field_member(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    return (char *)m + f->offset;
}

static void *field_quantifier(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    return (char *)m + f->quantifier_offset;
}

static size_t type_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

static bool is_oneof(const ProtobufCFieldDescriptor *f)
{
    return (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0;
}

/* proto2 optional scalars (and bytes) carry a has_ flag; strings and messages use the pointer. */
static bool has_flag(const ProtobufCFieldDescriptor *f)
{
    return f->label == PROTOBUF_C_LABEL_OPTIONAL && !is_oneof(f) &&
           f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE;
}

/* The well-known types with a special JSON form. */
typedef enum wkt {
    WKT_NONE,
    WKT_ANY,
    WKT_DURATION,
    WKT_TIMESTAMP,
    WKT_FIELDMASK,
    WKT_STRUCT,
    WKT_VALUE,
    WKT_LISTVALUE,
    WKT_EMPTY,
    WKT_WRAPPER,
} wkt_t;

static wkt_t wkt_of(const ProtobufCMessageDescriptor *d)
{
    static const struct {
        const char *name;
        wkt_t wkt;
    } table[] = {
        {"Any", WKT_ANY},
        {"Duration", WKT_DURATION},
        {"Timestamp", WKT_TIMESTAMP},
        {"FieldMask", WKT_FIELDMASK},
        {"Struct", WKT_STRUCT},
        {"Value", WKT_VALUE},
        {"ListValue", WKT_LISTVALUE},
        {"Empty", WKT_EMPTY},
        {"DoubleValue", WKT_WRAPPER},
        {"FloatValue", WKT_WRAPPER},
        {"Int64Value", WKT_WRAPPER},
        {"UInt64Value", WKT_WRAPPER},
        {"Int32Value", WKT_WRAPPER},
        {"UInt32Value", WKT_WRAPPER},
        {"BoolValue", WKT_WRAPPER},
        {"StringValue", WKT_WRAPPER},
        {"BytesValue", WKT_WRAPPER},
    };
    static const char prefix[] = "google.protobuf.";
    if (strncmp(d->name, prefix, sizeof(prefix) - 1) != 0)
        return WKT_NONE;
    const char *name = d->name + sizeof(prefix) - 1;
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strcmp(name, table[i].name) == 0)
            return table[i].wkt;
    return WKT_NONE;
}

static bool is_null_value_enum(const ProtobufCFieldDescriptor *f)
{
    return f->type == PROTOBUF_C_TYPE_ENUM &&
           strcmp(((const ProtobufCEnumDescriptor *)f->descriptor)->name,
                  "google.protobuf.NullValue") == 0;
}

static bool is_value_message(const ProtobufCFieldDescriptor *f)
{
    return f->type == PROTOBUF_C_TYPE_MESSAGE &&
           wkt_of((const ProtobufCMessageDescriptor *)f->descriptor) == WKT_VALUE;
}

/* protoc's ToJsonName: drop '_' and upper-case the character after it. */
static bool json_name_eq(const char *proto_name, const char *key, size_t key_len)
{
    size_t k = 0;
    bool upper = false;
    for (const char *p = proto_name; *p; p++) {
        if (*p == '_') {
            upper = true;
            continue;
        }
        char c = *p;
        if (upper && c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        upper = false;
        if (k >= key_len || key[k] != c)
            return false;
        k++;
    }
    return k == key_len;
}

/* protobuf-c represents map<K, V> as a repeated nested message "<Field>Entry" with key = 1 and
 * value = 2; its descriptors have no map_entry option, so recognize the shape. */
static bool field_is_map(const ProtobufCMessageDescriptor *parent,
                         const ProtobufCFieldDescriptor *f)
{
    if (f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE)
        return false;
    const ProtobufCMessageDescriptor *e = f->descriptor;
    if (e->n_fields != 2 || e->fields[0].id != 1 || e->fields[1].id != 2 ||
        strcmp(e->fields[0].name, "key") != 0 || strcmp(e->fields[1].name, "value") != 0)
        return false;
    size_t nlen = strlen(e->short_name);
    if (nlen < 5 || strcmp(e->short_name + nlen - 5, "Entry") != 0)
        return false;
    /* The entry type is nested in the parent: "<parent full name>.<Name>Entry". */
    size_t plen = strlen(parent->name);
    if (strncmp(e->name, parent->name, plen) != 0 || e->name[plen] != '.' ||
        strcmp(e->name + plen + 1, e->short_name) != 0)
        return false;
    /* And its name is the field name in CamelCase. */
    const char *p = f->name;
    size_t k = 0;
    bool upper = true;
    for (; *p; p++) {
        if (*p == '_') {
            upper = true;
            continue;
        }
        char c = *p;
        if (upper && c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        upper = false;
        if (k >= nlen - 5 || e->short_name[k] != c)
            return false;
        k++;
    }
    return k == nlen - 5;
}

static const ProtobufCFieldDescriptor *field_by_name(const ProtobufCMessageDescriptor *d,
                                                     const char *name)
{
    return protobuf_c_message_descriptor_get_field_by_name(d, name);
}

static ProtobufCMessage *message_new(const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = malloc(d->sizeof_message);
    if (m)
        protobuf_c_message_init(d, m);
    return m;
}

/* ------------------------------------------------------------------------------------------ */
/* Input: the node tree, built from libyaml events */

typedef enum node_kind {
    NODE_SCALAR,
    NODE_MAP,
    NODE_SEQ,
} node_kind_t;

typedef struct node node_t;
struct node {
    node_kind_t kind;
    bool quoted; /* scalar written quoted, as a block or tagged !!str: always a string */
    size_t line; /* 1-based */
    char *str;   /* scalar text, NUL-terminated (may hold NULs: len is authoritative) */
    size_t len;
    node_t **kids; /* map: key, value, key, value...; sequence: items */
    size_t n, cap;
};

typedef struct anchor {
    char *name;
    node_t *node;
} anchor_t;

typedef struct doc {
    node_t **all; /* every node, for freeing: aliases share nodes */
    size_t n_all, cap_all;
    anchor_t *anchors;
    size_t n_anchors, cap_anchors;
    node_t *root;
    bool has_root;
} doc_t;

static void doc_done(doc_t *doc)
{
    for (size_t i = 0; i < doc->n_all; i++) {
        free(doc->all[i]->str);
        free(doc->all[i]->kids);
        free(doc->all[i]);
    }
    free(doc->all);
    for (size_t i = 0; i < doc->n_anchors; i++)
        free(doc->anchors[i].name);
    free(doc->anchors);
}

static bool grow(void **v, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return true;
    size_t c = *cap ? *cap * 2 : 4;
    void *p = realloc(*v, c * elem);
    if (!p)
        return false;
    *v = p;
    *cap = c;
    return true;
}

static node_t *doc_node_new(doc_t *doc, node_kind_t kind, size_t line)
{
    if (!grow((void **)&doc->all, &doc->cap_all, doc->n_all, sizeof(node_t *)))
        return NULL;
    node_t *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->kind = kind;
    n->line = line;
    doc->all[doc->n_all++] = n;
    return n;
}

static bool doc_anchor_add(doc_t *doc, const char *name, node_t *n)
{
    if (!grow((void **)&doc->anchors, &doc->cap_anchors, doc->n_anchors, sizeof(anchor_t)))
        return false;
    char *copy = strdup(name);
    if (!copy)
        return false;
    doc->anchors[doc->n_anchors].name = copy;
    doc->anchors[doc->n_anchors].node = n;
    doc->n_anchors++;
    return true;
}

static node_t *doc_anchor_find(const doc_t *doc, const char *name)
{
    /* A later anchor with the same name overrides an earlier one (YAML 1.2 §3.2.2.2). */
    for (size_t i = doc->n_anchors; i-- > 0;)
        if (strcmp(doc->anchors[i].name, name) == 0)
            return doc->anchors[i].node;
    return NULL;
}

/* The parse context shared by the tree builder and the converter. */
typedef struct ctx {
    const pbjson_opts_t *opts;
    pbjson_diag_t *diag;
    const char *src;
    size_t max_depth;
    char *path; /* "static_resources.clusters[2].name" of the value being converted */
    size_t path_len, path_cap;
    size_t budget; /* node visits left: bounds alias expansion ("billion laughs") */
    size_t n_errors;
    bool oom;
} ctx_t;

static void ctx_report(ctx_t *c, pbjson_severity_t sev, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void ctx_report(ctx_t *c, pbjson_severity_t sev, size_t line, const char *fmt, ...)
{
    if (sev == PBJSON_ERROR)
        c->n_errors++;
    if (!c->diag)
        return;
    char *msg;
    va_list ap;
    va_start(ap, fmt);
    int r = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (r < 0) {
        c->oom = true;
        return;
    }
    char lbuf[32] = "";
    if (line > 0)
        snprintf(lbuf, sizeof(lbuf), "%zu:", line);
    if (pbjson_diag_add(c->diag, sev, "%s:%s %s%s%s", c->src, lbuf, c->path_len ? c->path : "",
                        c->path_len ? ": " : "", msg) < 0)
        c->oom = true;
    free(msg);
}

#define ERR(c, node, ...)  ctx_report((c), PBJSON_ERROR, (node) ? (node)->line : 0, __VA_ARGS__)
#define WARN(c, node, ...) ctx_report((c), PBJSON_WARNING, (node) ? (node)->line : 0, __VA_ARGS__)

static size_t path_push(ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends a segment to the path and returns the previous length, for path_pop(). */
static size_t path_push(ctx_t *c, const char *fmt, ...)
{
    size_t mark = c->path_len;
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (need < 0)
        return mark;
    if (c->path_len + (size_t)need + 1 > c->path_cap) {
        size_t cap = (c->path_len + (size_t)need + 1) * 2;
        char *p = realloc(c->path, cap);
        if (!p) {
            c->oom = true;
            return mark;
        }
        c->path = p;
        c->path_cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(c->path + c->path_len, c->path_cap - c->path_len, fmt, ap);
    va_end(ap);
    c->path_len += (size_t)need;
    return mark;
}

static void path_pop(ctx_t *c, size_t mark)
{
    c->path_len = mark;
    if (c->path)
        c->path[mark] = '\0';
}

static size_t path_push_field(ctx_t *c, const char *name)
{
    return path_push(c, c->path_len ? ".%s" : "%s", name);
}

/* Rewrites JSON surrogate-pair escapes (\uD83D\uDE00), which YAML rejects, to the equivalent
 * 8-digit escape (\U0001F600). Returns a new buffer when something was rewritten, else NULL
 * (also on out of memory, with *ret_oom set). */
static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static char *rewrite_surrogates(const char *text, size_t len, size_t *ret_len, bool *ret_oom)
{
    char *out = NULL;
    size_t o = 0, copied = 0;
    for (size_t i = 0; i + 12 <= len; i++) {
        if (text[i] != '\\' || text[i + 1] != 'u' || text[i + 6] != '\\' || text[i + 7] != 'u')
            continue;
        /* The backslash must not itself be escaped. */
        size_t bs = 0;
        while (bs < i && text[i - 1 - bs] == '\\')
            bs++;
        if (bs % 2)
            continue;
        int hi = hex4(text + i + 2), lo = hex4(text + i + 8);
        if (hi < 0xD800 || hi > 0xDBFF || lo < 0xDC00 || lo > 0xDFFF)
            continue;
        if (!out) {
            out = malloc(len + 1);
            if (!out) {
                *ret_oom = true;
                return NULL;
            }
        }
        memcpy(out + o, text + copied, i - copied);
        o += i - copied;
        unsigned cp = 0x10000u + (((unsigned)hi - 0xD800u) << 10) + ((unsigned)lo - 0xDC00u);
        o += (size_t)snprintf(out + o, 11, "\\U%08X", cp);
        i += 11;
        copied = i + 1;
    }
    if (!out)
        return NULL;
    memcpy(out + o, text + copied, len - copied);
    o += len - copied;
    out[o] = '\0';
    *ret_len = o;
    return out;
}

/* Escapes the characters JSON allows raw in strings but YAML does not: DEL, the C1 controls
 * (U+0080..U+009F, including NEL, which YAML would fold as a line break) and U+FFFE/U+FFFF,
 * as \uXXXX, which libyaml decodes back to the same character. Returns a new buffer when
 * something was escaped, else NULL (also on out of memory, with *ret_oom set). */
static char *escape_yaml_forbidden(const char *text, size_t len, size_t *ret_len, bool *ret_oom)
{
    size_t extra = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch == 0x7F)
            extra += 5;
        else if (ch == 0xC2 && i + 1 < len && (unsigned char)text[i + 1] >= 0x80 &&
                 (unsigned char)text[i + 1] <= 0x9F)
            extra += 4;
        else if (ch == 0xEF && i + 2 < len && (unsigned char)text[i + 1] == 0xBF &&
                 ((unsigned char)text[i + 2] == 0xBE || (unsigned char)text[i + 2] == 0xBF))
            extra += 3;
    }
    if (extra == 0)
        return NULL;
    char *out = malloc(len + extra + 1);
    if (!out) {
        *ret_oom = true;
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch == 0x7F) {
            o += (size_t)snprintf(out + o, 7, "\\u007F");
        } else if (ch == 0xC2 && i + 1 < len && (unsigned char)text[i + 1] >= 0x80 &&
                   (unsigned char)text[i + 1] <= 0x9F) {
            o += (size_t)snprintf(out + o, 7, "\\u00%02X", (unsigned char)text[i + 1]);
            i++;
        } else if (ch == 0xEF && i + 2 < len && (unsigned char)text[i + 1] == 0xBF &&
                   ((unsigned char)text[i + 2] == 0xBE || (unsigned char)text[i + 2] == 0xBF)) {
            o += (size_t)snprintf(out + o, 7, "\\uFF%02X", (unsigned char)text[i + 2] - 0x80 + 0xC0);
            i += 2;
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
    *ret_len = o;
    return out;
}

static bool tag_is_str(const yaml_char_t *tag)
{
    return tag &&
           (strcmp((const char *)tag, YAML_STR_TAG) == 0 || strcmp((const char *)tag, "!") == 0);
}

/* Builds the node tree of the single document in `text`. Returns 0 or -EINVAL/-ENOMEM. */
static int doc_load(ctx_t *c, const char *text, size_t len, doc_t *doc)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        c->oom = true;
        return -ENOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);

    node_t **stack = NULL;
    char **stack_anchor = NULL;
    size_t sp = 0, stack_cap = 0, anchor_cap = 0;
    size_t n_docs = 0;
    int r = 0;
    bool done = false;

    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            if (parser.error == YAML_MEMORY_ERROR) {
                c->oom = true;
                r = -ENOMEM;
            } else {
                /* libyaml puts the end of the stream on a line of its own; errors found
                 * there belong to the last line of the text. */
                size_t lines = 0;
                for (size_t i = 0; i < len; i++)
                    lines += text[i] == '\n';
                if (len > 0 && text[len - 1] != '\n')
                    lines++;
                size_t eline = parser.problem_mark.line + 1;
                if (eline > lines && lines > 0)
                    eline = lines;
                ctx_report(c, PBJSON_ERROR, eline, "syntax error: %s%s%s",
                           parser.problem ? parser.problem : "malformed input",
                           parser.context ? " " : "", parser.context ? parser.context : "");
                r = -EINVAL;
            }
            break;
        }
        size_t line = ev.start_mark.line + 1;
        node_t *n = NULL;
        const yaml_char_t *anchor = NULL;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++n_docs > 1) {
                ctx_report(c, PBJSON_ERROR, line, "more than one document");
                r = -EINVAL;
                done = true;
            }
            break;
        case YAML_ALIAS_EVENT:
            n = doc_anchor_find(doc, (const char *)ev.data.alias.anchor);
            if (!n) {
                ctx_report(c, PBJSON_ERROR, line, "unknown alias *%s", ev.data.alias.anchor);
                r = -EINVAL;
                done = true;
            }
            break;
        case YAML_SCALAR_EVENT:
            n = doc_node_new(doc, NODE_SCALAR, line);
            if (!n)
                break;
            n->str = malloc(ev.data.scalar.length + 1);
            if (!n->str) {
                n = NULL;
                break;
            }
            memcpy(n->str, ev.data.scalar.value, ev.data.scalar.length);
            n->str[ev.data.scalar.length] = '\0';
            n->len = ev.data.scalar.length;
            n->quoted =
                ev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE || tag_is_str(ev.data.scalar.tag);
            anchor = ev.data.scalar.anchor;
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            n = doc_node_new(doc, ev.type == YAML_MAPPING_START_EVENT ? NODE_MAP : NODE_SEQ, line);
            anchor = ev.type == YAML_MAPPING_START_EVENT ? ev.data.mapping_start.anchor
                                                         : ev.data.sequence_start.anchor;
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            sp--;
            /* Anchors of collections become visible only once complete, so an alias can never
             * refer to an enclosing node and the tree stays acyclic. */
            if (stack_anchor[sp]) {
                if (!doc_anchor_add(doc, stack_anchor[sp], stack[sp])) {
                    c->oom = true;
                    r = -ENOMEM;
                    done = true;
                }
                free(stack_anchor[sp]);
                stack_anchor[sp] = NULL;
            }
            break;
        default:
            break;
        }
        bool is_start = ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_MAPPING_START_EVENT;
        if ((ev.type == YAML_SCALAR_EVENT || is_start) && !n) {
            c->oom = true;
            r = -ENOMEM;
            done = true;
        }
        if (n && r == 0) {
            /* Attach to the parent, or make it the root. */
            if (sp == 0) {
                doc->root = n;
                doc->has_root = true;
            } else {
                node_t *p = stack[sp - 1];
                if (!grow((void **)&p->kids, &p->cap, p->n, sizeof(node_t *))) {
                    c->oom = true;
                    r = -ENOMEM;
                    done = true;
                } else {
                    p->kids[p->n++] = n;
                }
            }
        }
        if (r == 0 && n && ev.type == YAML_SCALAR_EVENT && anchor &&
            !doc_anchor_add(doc, (const char *)anchor, n)) {
            c->oom = true;
            r = -ENOMEM;
            done = true;
        }
        if (r == 0 && is_start) {
            if (sp >= c->max_depth) {
                ctx_report(c, PBJSON_ERROR, line, "nesting deeper than %zu levels", c->max_depth);
                r = -EINVAL;
                done = true;
            } else if (!grow((void **)&stack, &stack_cap, sp, sizeof(node_t *)) ||
                       !grow((void **)&stack_anchor, &anchor_cap, sp, sizeof(char *))) {
                c->oom = true;
                r = -ENOMEM;
                done = true;
            } else {
                stack[sp] = n;
                stack_anchor[sp] = NULL;
                if (anchor && !(stack_anchor[sp] = strdup((const char *)anchor))) {
                    c->oom = true;
                    r = -ENOMEM;
                    done = true;
                }
                sp++;
            }
        }
        yaml_event_delete(&ev);
    }
    for (size_t i = 0; i < sp; i++)
        free(stack_anchor[i]);
    free(stack_anchor);
    free(stack);
    yaml_parser_delete(&parser);
    if (r == 0 && !doc->has_root) {
        ctx_report(c, PBJSON_ERROR, 0, "empty document");
        r = -EINVAL;
    }
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* Input: scalars */

typedef enum scalar_kind {
    SK_NULL,
    SK_BOOL,
    SK_NUMBER,
    SK_STRING,
} scalar_kind_t;

/* JSON number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool is_json_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    if (i >= n)
        return false;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    } else {
        return false;
    }
    if (i < n && s[i] == '.') {
        i++;
        size_t start = i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start)
            return false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t start = i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start)
            return false;
    }
    return i == n;
}

static bool str_is(const node_t *n, const char *s)
{
    return n->len == strlen(s) && memcmp(n->str, s, n->len) == 0;
}

/* YAML 1.2 core schema resolution of plain scalars, restricted to JSON-style numbers. */
static scalar_kind_t scalar_kind(const node_t *n, bool *ret_bool)
{
    if (n->quoted)
        return SK_STRING;
    if (n->len == 0 || str_is(n, "~") || str_is(n, "null") || str_is(n, "Null") ||
        str_is(n, "NULL"))
        return SK_NULL;
    if (str_is(n, "true") || str_is(n, "True") || str_is(n, "TRUE")) {
        *ret_bool = true;
        return SK_BOOL;
    }
    if (str_is(n, "false") || str_is(n, "False") || str_is(n, "FALSE")) {
        *ret_bool = false;
        return SK_BOOL;
    }
    if (is_json_number(n->str, n->len))
        return SK_NUMBER;
    return SK_STRING;
}

static bool node_is_null(const node_t *n)
{
    bool b;
    return n->kind == NODE_SCALAR && scalar_kind(n, &b) == SK_NULL;
}

static const char *node_kind_name(const node_t *n)
{
    bool b;
    if (n->kind == NODE_MAP)
        return "object";
    if (n->kind == NODE_SEQ)
        return "array";
    switch (scalar_kind(n, &b)) {
    case SK_NULL:
        return "null";
    case SK_BOOL:
        return "bool";
    case SK_NUMBER:
        return "number";
    case SK_STRING:
        break;
    }
    return "string";
}

/* Converts a JSON number to an integer exactly: "1e3" and "5.0" are integers, "1.5" is not.
 * Returns 0, -EDOM (has a fraction), -ERANGE (beyond 64 bits), -EINVAL (not a number). */
static int number_to_int(const char *s, size_t n, bool *ret_neg, uint64_t *ret_mag)
{
    if (!is_json_number(s, n))
        return -EINVAL;
    size_t i = 0;
    bool neg = false;
    if (s[0] == '-') {
        neg = true;
        i++;
    }
    const char *ip = s + i;
    size_t il = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
        il++;
    }
    const char *fp = "";
    size_t fl = 0;
    if (i < n && s[i] == '.') {
        i++;
        fp = s + i;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
            fl++;
        }
    }
    long exp = 0;
    if (i < n) {
        i++; /* e/E */
        bool eneg = false;
        if (s[i] == '+' || s[i] == '-')
            eneg = s[i++] == '-';
        for (; i < n; i++)
            if (exp < 100000)
                exp = exp * 10 + (s[i] - '0');
        if (eneg)
            exp = -exp;
    }
    /* Significant digits: the integer part then the fraction, as one digit string with the
     * decimal point moved by exp10. */
    char digits[64];
    size_t nd = 0;
    long exp10 = exp - (long)fl;
    bool too_long = false;
    for (size_t k = 0; k < il + fl; k++) {
        char d = k < il ? ip[k] : fp[k - il];
        if (nd == 0 && d == '0')
            continue;
        if (nd < sizeof(digits))
            digits[nd++] = d;
        else if (d != '0')
            too_long = true; /* more than 64 significant digits: cannot be an integer <2^64 */
        else
            exp10++; /* a dropped trailing zero */
    }
    if (nd == 0 && !too_long) {
        *ret_neg = false;
        *ret_mag = 0;
        return 0;
    }
    while (nd > 0 && exp10 < 0 && digits[nd - 1] == '0') {
        nd--;
        exp10++;
    }
    if (exp10 < 0)
        return -EDOM;
    if (too_long || (long)nd + exp10 > 20)
        return -ERANGE;
    uint64_t v = 0;
    for (size_t k = 0; k < nd + (size_t)exp10; k++) {
        unsigned d = k < nd ? (unsigned)(digits[k] - '0') : 0;
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    *ret_neg = neg;
    *ret_mag = v;
    return 0;
}

/* Storage for one parsed scalar value. */
typedef union scalar_val {
    int32_t i32;
    uint32_t u32;
    int64_t i64;
    uint64_t u64;
    float f;
    double d;
    protobuf_c_boolean b;
    char *s;
    ProtobufCBinaryData bytes;
} scalar_val_t;

static const char *type_name(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
        return "int32";
    case PROTOBUF_C_TYPE_SINT32:
        return "sint32";
    case PROTOBUF_C_TYPE_SFIXED32:
        return "sfixed32";
    case PROTOBUF_C_TYPE_INT64:
        return "int64";
    case PROTOBUF_C_TYPE_SINT64:
        return "sint64";
    case PROTOBUF_C_TYPE_SFIXED64:
        return "sfixed64";
    case PROTOBUF_C_TYPE_UINT32:
        return "uint32";
    case PROTOBUF_C_TYPE_FIXED32:
        return "fixed32";
    case PROTOBUF_C_TYPE_UINT64:
        return "uint64";
    case PROTOBUF_C_TYPE_FIXED64:
        return "fixed64";
    case PROTOBUF_C_TYPE_FLOAT:
        return "float";
    case PROTOBUF_C_TYPE_DOUBLE:
        return "double";
    case PROTOBUF_C_TYPE_BOOL:
        return "bool";
    case PROTOBUF_C_TYPE_ENUM:
        return "enum";
    case PROTOBUF_C_TYPE_STRING:
        return "string";
    case PROTOBUF_C_TYPE_BYTES:
        return "bytes";
    case PROTOBUF_C_TYPE_MESSAGE:
        return "message";
    }
    return "?";
}

static bool parse_int_text(ctx_t *c, const node_t *n, const char *text, size_t len, ProtobufCType t,
                           scalar_val_t *out)
{
    bool neg = false;
    uint64_t mag = 0;
    int r = number_to_int(text, len, &neg, &mag);
    if (r == -EINVAL) {
        ERR(c, n, "invalid %s value \"%.*s\"", type_name(t), (int)(len > 64 ? 64 : len), text);
        return false;
    }
    if (r == -EDOM) {
        ERR(c, n, "%s value %.*s is not an integer", type_name(t), (int)(len > 64 ? 64 : len),
            text);
        return false;
    }
    bool ok = r == 0;
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        ok = ok && (neg ? mag <= (uint64_t)INT32_MAX + 1 : mag <= INT32_MAX);
        if (ok)
            out->i32 = neg ? (int32_t)(-(int64_t)mag) : (int32_t)mag;
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        ok = ok && (!neg || mag == 0) && mag <= UINT32_MAX;
        if (ok)
            out->u32 = (uint32_t)mag;
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        ok = ok && (neg ? mag <= (uint64_t)INT64_MAX + 1 : mag <= INT64_MAX);
        if (ok)
            out->i64 =
                neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        ok = ok && (!neg || mag == 0);
        if (ok)
            out->u64 = mag;
        break;
    default:
        ok = false;
        break;
    }
    if (!ok)
        ERR(c, n, "%s value %.*s out of range", type_name(t), (int)(len > 64 ? 64 : len), text);
    return ok;
}

static bool parse_float_text(ctx_t *c, const node_t *n, const char *text, size_t len, bool is_float,
                             double *ret)
{
    if (len == 3 && memcmp(text, "NaN", 3) == 0) {
        *ret = NAN;
        return true;
    }
    if (len == 8 && memcmp(text, "Infinity", 8) == 0) {
        *ret = INFINITY;
        return true;
    }
    if (len == 9 && memcmp(text, "-Infinity", 9) == 0) {
        *ret = -INFINITY;
        return true;
    }
    const char *tn = is_float ? "float" : "double";
    if (!is_json_number(text, len)) {
        ERR(c, n, "invalid %s value \"%.*s\"", tn, (int)(len > 64 ? 64 : len), text);
        return false;
    }
    /* The text is NUL-terminated: it is the node's own string. */
    double d = strtod(text, NULL);
    if (isinf(d) || (is_float && fabs(d) > FLT_MAX)) {
        ERR(c, n, "%s value %.*s out of range", tn, (int)(len > 64 ? 64 : len), text);
        return false;
    }
    *ret = d;
    return true;
}

/* Parses a scalar-typed value (everything but messages) from node `n`. Allocates for strings
 * and bytes; the caller stores the result or frees it. */
static bool parse_scalar(ctx_t *c, const node_t *n, const ProtobufCFieldDescriptor *f,
                         scalar_val_t *out)
{
    bool b = false;
    if (n->kind != NODE_SCALAR) {
        ERR(c, n, "expected %s, got %s", type_name(f->type), node_kind_name(n));
        return false;
    }
    scalar_kind_t k = scalar_kind(n, &b);
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        if (k != SK_NUMBER && k != SK_STRING) {
            ERR(c, n, "expected %s, got %s", type_name(f->type), node_kind_name(n));
            return false;
        }
        return parse_int_text(c, n, n->str, n->len, f->type, out);
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
        if (k != SK_NUMBER && k != SK_STRING) {
            ERR(c, n, "expected %s, got %s", type_name(f->type), node_kind_name(n));
            return false;
        }
        double d;
        bool is_float = f->type == PROTOBUF_C_TYPE_FLOAT;
        if (!parse_float_text(c, n, n->str, n->len, is_float, &d))
            return false;
        if (is_float)
            out->f = (float)d;
        else
            out->d = d;
        return true;
    }
    case PROTOBUF_C_TYPE_BOOL:
        if (k != SK_BOOL) {
            ERR(c, n, "expected bool, got %s", node_kind_name(n));
            return false;
        }
        out->b = b;
        return true;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        if (k == SK_NUMBER) {
            /* Enums are open in proto3: any int32 is kept, known or not. */
            return parse_int_text(c, n, n->str, n->len, PROTOBUF_C_TYPE_INT32, out);
        }
        if (k != SK_STRING) {
            ERR(c, n, "expected enum %s, got %s", ed->name, node_kind_name(n));
            return false;
        }
        const ProtobufCEnumValue *ev = NULL;
        if (strlen(n->str) == n->len)
            ev = protobuf_c_enum_descriptor_get_value_by_name(ed, n->str);
        if (!ev) {
            /* Like protojson's DiscardUnknown, allow_unknown also drops unknown names. */
            if (c->opts->allow_unknown)
                WARN(c, n, "unknown value \"%.*s\" for enum %s (ignored)",
                     (int)(n->len > 128 ? 128 : n->len), n->str, ed->name);
            else
                ERR(c, n, "unknown value \"%.*s\" for enum %s", (int)(n->len > 128 ? 128 : n->len),
                    n->str, ed->name);
            return false;
        }
        out->i32 = ev->value;
        return true;
    }
    case PROTOBUF_C_TYPE_STRING:
        if (k != SK_STRING) {
            ERR(c, n, "expected string, got %s %.*s (quote it to make it a string)",
                node_kind_name(n), (int)(n->len > 64 ? 64 : n->len), n->str);
            return false;
        }
        /* protobuf-c strings are NUL-terminated, so an embedded NUL would silently cut it. */
        if (strlen(n->str) != n->len) {
            ERR(c, n, "string contains a NUL character");
            return false;
        }
        out->s = strdup(n->str);
        if (!out->s) {
            c->oom = true;
            return false;
        }
        return true;
    case PROTOBUF_C_TYPE_BYTES: {
        if (k != SK_STRING) {
            ERR(c, n, "expected base64 string, got %s", node_kind_name(n));
            return false;
        }
        int r = b64_decode(n->str, n->len, &out->bytes.data, &out->bytes.len);
        if (r == -ENOMEM) {
            c->oom = true;
            return false;
        }
        if (r < 0) {
            ERR(c, n, "invalid base64 data");
            return false;
        }
        return true;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        break;
    }
    ERR(c, n, "unexpected field type");
    return false;
}

/* Stores a parsed scalar into `dst` (a member or a repeated array slot). */
static void scalar_store(ProtobufCType t, void *dst, const scalar_val_t *v)
{
    switch (t) {
    case PROTOBUF_C_TYPE_STRING:
        *(char **)dst = v->s;
        break;
    case PROTOBUF_C_TYPE_BYTES:
        *(ProtobufCBinaryData *)dst = v->bytes;
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        *(float *)dst = v->f;
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        *(double *)dst = v->d;
        break;
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)dst = v->b;
        break;
    default:
        memcpy(dst, v, type_size(t));
        break;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Input: messages */

static void parse_message(ctx_t *c, const node_t *n, ProtobufCMessage *m, size_t depth);

/* Marks a just-stored singular field as present. */
static void field_mark_present(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    if (is_oneof(f))
        *(uint32_t *)field_quantifier(m, f) = f->id;
    else if (has_flag(f))
        *(protobuf_c_boolean *)field_quantifier(m, f) = 1;
}

static bool visit(ctx_t *c, const node_t *n, size_t depth)
{
    if (depth > c->max_depth) {
        ERR(c, n, "nesting deeper than %zu levels", c->max_depth);
        return false;
    }
    if (c->budget == 0)
        return false;
    if (--c->budget == 0) {
        ERR(c, n, "document too large after alias expansion");
        return false;
    }
    return !c->oom;
}

/* Sets google.protobuf.Value `m` to null_value. */
static void value_set_null(ProtobufCMessage *m)
{
    const ProtobufCFieldDescriptor *f = field_by_name(m->descriptor, "null_value");
    if (f) {
        *(int *)field_member(m, f) = 0;
        field_mark_present(m, f);
    }
}

/* Parses node `n` into the singular message field `f` of `m`: allocates the submessage,
 * attaches it (so that the caller's free reaches it whatever happens) and fills it. */
static void parse_submessage_field(ctx_t *c, const node_t *n, ProtobufCMessage *m,
                                   const ProtobufCFieldDescriptor *f, size_t depth)
{
    ProtobufCMessage *sub = message_new(f->descriptor);
    if (!sub) {
        c->oom = true;
        return;
    }
    *(ProtobufCMessage **)field_member(m, f) = sub;
    field_mark_present(m, f);
    parse_message(c, n, sub, depth);
}

/* Parses a map key from its text into the entry's key field. */
static bool parse_map_key(ctx_t *c, const node_t *key, const ProtobufCFieldDescriptor *kf,
                          scalar_val_t *out)
{
    switch (kf->type) {
    case PROTOBUF_C_TYPE_STRING:
        if (strlen(key->str) != key->len) {
            ERR(c, key, "map key contains a NUL character");
            return false;
        }
        out->s = strdup(key->str);
        if (!out->s)
            c->oom = true;
        return out->s != NULL;
    case PROTOBUF_C_TYPE_BOOL:
        if (str_is(key, "true") || str_is(key, "false")) {
            out->b = str_is(key, "true");
            return true;
        }
        ERR(c, key, "invalid bool map key \"%.*s\"", (int)(key->len > 64 ? 64 : key->len),
            key->str);
        return false;
    default:
        return parse_int_text(c, key, key->str, key->len, kf->type, out);
    }
}

static int key_cmp(const void *a, const void *b)
{
    const node_t *x = *(node_t *const *)a, *y = *(node_t *const *)b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    int r = memcmp(x->str, y->str, x->len);
    if (r)
        return r;
    return x->line < y->line ? -1 : x->line > y->line;
}

/* Reports duplicate keys in a mapping node used as a JSON object of arbitrary keys (maps,
 * Struct). Message fields are checked by field instead, which also catches "foo_bar" next to
 * "fooBar". */
static void check_duplicate_keys(ctx_t *c, const node_t *n)
{
    size_t pairs = n->n / 2;
    if (pairs < 2)
        return;
    const node_t **keys = malloc(pairs * sizeof(*keys));
    if (!keys) {
        c->oom = true;
        return;
    }
    size_t nk = 0;
    for (size_t i = 0; i < pairs; i++)
        if (n->kids[2 * i]->kind == NODE_SCALAR) /* others are reported by the caller */
            keys[nk++] = n->kids[2 * i];
    qsort(keys, nk, sizeof(*keys), key_cmp);
    for (size_t i = 1; i < nk; i++) {
        const node_t *a = keys[i - 1], *b = keys[i];
        if (a->len == b->len && memcmp(a->str, b->str, a->len) == 0 && a != b)
            ERR(c, b, "duplicate key \"%.*s\" (first at line %zu)",
                (int)(b->len > 128 ? 128 : b->len), b->str, a->line);
    }
    free(keys);
}

static void parse_map_field(ctx_t *c, const node_t *n, ProtobufCMessage *m,
                            const ProtobufCFieldDescriptor *f, size_t depth)
{
    if (n->kind != NODE_MAP) {
        ERR(c, n, "expected object (map), got %s", node_kind_name(n));
        return;
    }
    check_duplicate_keys(c, n);
    size_t pairs = n->n / 2;
    if (pairs == 0)
        return;
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
    ProtobufCMessage **arr = calloc(pairs, sizeof(*arr));
    if (!arr) {
        c->oom = true;
        return;
    }
    size_t *count = field_quantifier(m, f);
    *(ProtobufCMessage ***)field_member(m, f) = arr;
    *count = 0;
    for (size_t i = 0; i < pairs && !c->oom; i++) {
        const node_t *key = n->kids[2 * i], *val = n->kids[2 * i + 1];
        if (!visit(c, val, depth + 1))
            break;
        if (key->kind != NODE_SCALAR) {
            ERR(c, key, "object keys must be strings");
            continue;
        }
        size_t mark = path_push(c, "[\"%.*s\"]", (int)(key->len > 128 ? 128 : key->len), key->str);
        ProtobufCMessage *e = message_new(ed);
        if (!e) {
            c->oom = true;
            break;
        }
        arr[(*count)++] = e;
        scalar_val_t kv;
        if (parse_map_key(c, key, kf, &kv))
            scalar_store(kf->type, field_member(e, kf), &kv);
        if (vf->type == PROTOBUF_C_TYPE_MESSAGE) {
            if (node_is_null(val) && !is_value_message(vf)) {
                ERR(c, val, "map value cannot be null");
            } else {
                parse_submessage_field(c, val, e, vf, depth + 1);
            }
        } else if (node_is_null(val) && !is_null_value_enum(vf)) {
            ERR(c, val, "map value cannot be null");
        } else {
            scalar_val_t v;
            if (is_null_value_enum(vf) && node_is_null(val)) {
                v.i32 = 0;
                scalar_store(vf->type, field_member(e, vf), &v);
            } else if (parse_scalar(c, val, vf, &v)) {
                scalar_store(vf->type, field_member(e, vf), &v);
            }
        }
        path_pop(c, mark);
    }
}

static void parse_repeated_field(ctx_t *c, const node_t *n, ProtobufCMessage *m,
                                 const ProtobufCFieldDescriptor *f, size_t depth)
{
    if (n->kind != NODE_SEQ) {
        ERR(c, n, "expected array, got %s", node_kind_name(n));
        return;
    }
    if (n->n == 0)
        return;
    size_t es = type_size(f->type);
    char *arr = calloc(n->n, es);
    if (!arr) {
        c->oom = true;
        return;
    }
    size_t *count = field_quantifier(m, f);
    *(void **)field_member(m, f) = arr;
    *count = 0;
    for (size_t i = 0; i < n->n && !c->oom; i++) {
        const node_t *item = n->kids[i];
        if (!visit(c, item, depth + 1))
            break;
        size_t mark = path_push(c, "[%zu]", i);
        if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            if (node_is_null(item) && !is_value_message(f)) {
                ERR(c, item, "array element cannot be null");
            } else {
                ProtobufCMessage *sub = message_new(f->descriptor);
                if (!sub) {
                    c->oom = true;
                } else {
                    ((ProtobufCMessage **)(void *)arr)[(*count)++] = sub;
                    parse_message(c, item, sub, depth + 1);
                }
            }
        } else if (node_is_null(item) && !is_null_value_enum(f)) {
            ERR(c, item, "array element cannot be null");
        } else {
            scalar_val_t v;
            if (is_null_value_enum(f) && node_is_null(item)) {
                v.i32 = 0;
                scalar_store(f->type, arr + es * (*count)++, &v);
            } else if (parse_scalar(c, item, f, &v)) {
                scalar_store(f->type, arr + es * (*count)++, &v);
            }
        }
        path_pop(c, mark);
    }
}

/* Finds the field a JSON key names: its proto name, else its lowerCamelCase JSON name. */
static const ProtobufCFieldDescriptor *field_for_key(const ProtobufCMessageDescriptor *d,
                                                     const node_t *key)
{
    if (strlen(key->str) != key->len)
        return NULL;
    const ProtobufCFieldDescriptor *f = field_by_name(d, key->str);
    if (f)
        return f;
    for (unsigned i = 0; i < d->n_fields; i++)
        if (json_name_eq(d->fields[i].name, key->str, key->len))
            return &d->fields[i];
    return NULL;
}

static void report_unknown_field(ctx_t *c, const node_t *key, const ProtobufCMessageDescriptor *d)
{
    int kl = (int)(key->len > 128 ? 128 : key->len);
    if (c->opts->allow_unknown)
        WARN(c, key, "unknown field \"%.*s\" in %s (ignored)", kl, key->str, d->name);
    else
        ERR(c, key, "unknown field \"%.*s\" in %s", kl, key->str, d->name);
}

/* Sets field `f` of `m` from node `val` (not yet checked for null). */
static void parse_field(ctx_t *c, const node_t *val, ProtobufCMessage *m,
                        const ProtobufCFieldDescriptor *f, size_t depth)
{
    bool null = node_is_null(val);
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        if (null)
            return;
        if (field_is_map(m->descriptor, f))
            parse_map_field(c, val, m, f, depth);
        else
            parse_repeated_field(c, val, m, f, depth);
        return;
    }
    /* null means "unset", except where null is itself a value (Value, NullValue). */
    if (null && !is_value_message(f) && !is_null_value_enum(f))
        return;
    if (is_oneof(f)) {
        uint32_t cur = *(uint32_t *)field_quantifier(m, f);
        if (cur != 0 && cur != f->id) {
            const char *other = "?";
            for (unsigned i = 0; i < m->descriptor->n_fields; i++)
                if (m->descriptor->fields[i].id == cur)
                    other = m->descriptor->fields[i].name;
            ERR(c, val, "fields \"%s\" and \"%s\" are in the same oneof; set only one", other,
                f->name);
            return;
        }
    }
    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        parse_submessage_field(c, val, m, f, depth);
        return;
    }
    scalar_val_t v;
    if (null) { /* NullValue */
        v.i32 = 0;
    } else if (!parse_scalar(c, val, f, &v)) {
        return;
    }
    /* NullValue has the one value NULL_VALUE, printed as null whatever number it holds: keep
     * it at 0 so that what is printed reads back the same. */
    if (is_null_value_enum(f))
        v.i32 = 0;
    scalar_store(f->type, field_member(m, f), &v);
    field_mark_present(m, f);
}

/* Parses the keys of mapping `n` as fields of `m`. With `in_any`, "@type" is skipped (the Any
 * code handled it). */
static void parse_fields(ctx_t *c, const node_t *n, ProtobufCMessage *m, size_t depth, bool in_any)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (n->kind != NODE_MAP) {
        ERR(c, n, "expected object for %s, got %s", d->name, node_kind_name(n));
        return;
    }
    /* First line at which each field was set, to report duplicates under either name. */
    size_t *seen = calloc(d->n_fields ? d->n_fields : 1, sizeof(size_t));
    if (!seen) {
        c->oom = true;
        return;
    }
    for (size_t i = 0; i + 1 < n->n && !c->oom; i += 2) {
        const node_t *key = n->kids[i], *val = n->kids[i + 1];
        if (!visit(c, val, depth + 1))
            break;
        if (key->kind != NODE_SCALAR) {
            ERR(c, key, "object keys must be strings");
            continue;
        }
        if (in_any && str_is(key, "@type"))
            continue;
        size_t mark;
        if (key->len > 0 && key->str[0] == '@') {
            mark = path_push_field(c, key->str);
            ERR(c, key, "unexpected key \"%.*s\" in %s", (int)(key->len > 128 ? 128 : key->len),
                key->str, d->name);
            path_pop(c, mark);
            continue;
        }
        const ProtobufCFieldDescriptor *f = field_for_key(d, key);
        if (!f) {
            mark = path_push_field(c, key->str);
            report_unknown_field(c, key, d);
            path_pop(c, mark);
            continue;
        }
        mark = path_push_field(c, f->name);
        size_t idx = (size_t)(f - d->fields);
        if (seen[idx]) {
            ERR(c, key, "duplicate field \"%s\" (first at line %zu)", f->name, seen[idx]);
        } else {
            seen[idx] = key->line;
            parse_field(c, val, m, f, depth + 1);
        }
        path_pop(c, mark);
    }
    free(seen);
}

static bool parse_duration_text(const char *s, size_t n, int64_t *ret_s, int32_t *ret_ns)
{
    size_t i = 0;
    bool neg = false;
    if (i < n && s[i] == '-') {
        neg = true;
        i++;
    }
    size_t start = i;
    int64_t sec = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        if (i - start >= 12)
            return false;
        sec = sec * 10 + (s[i++] - '0');
    }
    if (i == start)
        return false;
    int32_t ns = 0;
    if (i < n && s[i] == '.') {
        i++;
        size_t fs = i;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - fs < 9)
            ns = ns * 10 + (s[i++] - '0');
        size_t digits = i - fs;
        if (digits == 0)
            return false;
        for (size_t k = digits; k < 9; k++)
            ns *= 10;
    }
    if (i + 1 != n || s[i] != 's')
        return false;
    if (sec > DURATION_MAX_SECONDS)
        return false;
    *ret_s = neg ? -sec : sec;
    *ret_ns = neg ? -ns : ns;
    return true;
}

static bool parse_digits(const char *s, size_t n, int *ret)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *ret = v;
    return true;
}

/* RFC 3339: YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+HH:MM|-HH:MM) */
static bool parse_timestamp_text(const char *s, size_t n, int64_t *ret_s, int32_t *ret_ns)
{
    int y, mo, d, h, mi, se;
    if (n < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':')
        return false;
    if (!parse_digits(s, 4, &y) || !parse_digits(s + 5, 2, &mo) || !parse_digits(s + 8, 2, &d) ||
        !parse_digits(s + 11, 2, &h) || !parse_digits(s + 14, 2, &mi) ||
        !parse_digits(s + 17, 2, &se))
        return false;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || se > 59)
        return false;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo == 2 && d == 29 && !leap)
        return false;
    size_t i = 19;
    int32_t ns = 0;
    if (i < n && s[i] == '.') {
        i++;
        size_t fs = i;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - fs < 9)
            ns = ns * 10 + (s[i++] - '0');
        size_t digits = i - fs;
        if (digits == 0)
            return false;
        for (size_t k = digits; k < 9; k++)
            ns *= 10;
    }
    int64_t off = 0;
    if (i + 1 == n && s[i] == 'Z') {
        off = 0;
    } else if (i + 6 == n && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
        int oh, om;
        if (!parse_digits(s + i + 1, 2, &oh) || !parse_digits(s + i + 4, 2, &om) || oh > 23 ||
            om > 59)
            return false;
        off = (oh * 60 + om) * 60;
        if (s[i] == '-')
            off = -off;
    } else {
        return false;
    }
    int64_t secs = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + se;
    secs -= off;
    if (secs < TIMESTAMP_MIN_SECONDS || secs > TIMESTAMP_MAX_SECONDS)
        return false;
    *ret_s = secs;
    *ret_ns = ns;
    return true;
}

static void set_seconds_nanos(ProtobufCMessage *m, int64_t s, int32_t ns)
{
    const ProtobufCFieldDescriptor *fs = field_by_name(m->descriptor, "seconds");
    const ProtobufCFieldDescriptor *fn = field_by_name(m->descriptor, "nanos");
    if (fs && fs->type == PROTOBUF_C_TYPE_INT64)
        *(int64_t *)field_member(m, fs) = s;
    if (fn && fn->type == PROTOBUF_C_TYPE_INT32)
        *(int32_t *)field_member(m, fn) = ns;
}

static bool node_is_string(const node_t *n)
{
    bool b;
    return n->kind == NODE_SCALAR && scalar_kind(n, &b) == SK_STRING;
}

static void parse_fieldmask(ctx_t *c, const node_t *n, ProtobufCMessage *m)
{
    const ProtobufCFieldDescriptor *f = field_by_name(m->descriptor, "paths");
    if (!node_is_string(n) || !f || strlen(n->str) != n->len) {
        ERR(c, n, "expected FieldMask string \"a.b,c\", got %s", node_kind_name(n));
        return;
    }
    if (n->len == 0)
        return;
    size_t count = 1;
    for (size_t i = 0; i < n->len; i++)
        count += n->str[i] == ',';
    char **arr = calloc(count, sizeof(char *));
    if (!arr) {
        c->oom = true;
        return;
    }
    size_t *q = field_quantifier(m, f);
    *(char ***)field_member(m, f) = arr;
    *q = 0;
    const char *p = n->str;
    for (size_t k = 0; k < count; k++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        /* lowerCamelCase to snake_case; an '_' in the JSON form would not round-trip. */
        char *out = malloc(len * 2 + 1);
        if (!out) {
            c->oom = true;
            return;
        }
        size_t o = 0;
        bool bad = false;
        for (size_t i = 0; i < len; i++) {
            char ch = p[i];
            if (ch == '_')
                bad = true;
            if (ch >= 'A' && ch <= 'Z') {
                out[o++] = '_';
                ch = (char)(ch - 'A' + 'a');
            }
            out[o++] = ch;
        }
        out[o] = '\0';
        arr[(*q)++] = out;
        if (bad)
            ERR(c, n, "FieldMask path \"%.*s\" must be lowerCamelCase", (int)len, p);
        p += len + 1;
    }
}

static void parse_any(ctx_t *c, const node_t *n, ProtobufCMessage *m, size_t depth);

static void parse_value(ctx_t *c, const node_t *n, ProtobufCMessage *m, size_t depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    bool b = false;
    if (n->kind == NODE_MAP || n->kind == NODE_SEQ) {
        const ProtobufCFieldDescriptor *f =
            field_by_name(d, n->kind == NODE_MAP ? "struct_value" : "list_value");
        if (f)
            parse_submessage_field(c, n, m, f, depth);
        return;
    }
    const ProtobufCFieldDescriptor *f = NULL;
    scalar_val_t v;
    switch (scalar_kind(n, &b)) {
    case SK_NULL:
        value_set_null(m);
        return;
    case SK_BOOL:
        f = field_by_name(d, "bool_value");
        v.b = b;
        break;
    case SK_NUMBER:
        f = field_by_name(d, "number_value");
        if (!parse_float_text(c, n, n->str, n->len, false, &v.d))
            return;
        break;
    case SK_STRING:
        f = field_by_name(d, "string_value");
        if (!f || !parse_scalar(c, n, f, &v))
            return;
        break;
    }
    if (!f)
        return;
    scalar_store(f->type, field_member(m, f), &v);
    field_mark_present(m, f);
}

/* Parses node `n` (non-null unless the type is Value) into message `m`, by the well-known
 * type's special form or as an object of fields. */
static void parse_message(ctx_t *c, const node_t *n, ProtobufCMessage *m, size_t depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    switch (wkt_of(d)) {
    case WKT_ANY:
        parse_any(c, n, m, depth);
        return;
    case WKT_DURATION:
    case WKT_TIMESTAMP: {
        bool dur = wkt_of(d) == WKT_DURATION;
        int64_t s;
        int32_t ns;
        if (!node_is_string(n)) {
            ERR(c, n, "expected %s string, got %s", dur ? "duration" : "timestamp",
                node_kind_name(n));
        } else if (dur ? !parse_duration_text(n->str, n->len, &s, &ns)
                       : !parse_timestamp_text(n->str, n->len, &s, &ns)) {
            ERR(c, n, "invalid %s \"%.*s\" (expected %s)", dur ? "duration" : "timestamp",
                (int)(n->len > 64 ? 64 : n->len), n->str,
                dur ? "e.g. \"1.5s\"" : "RFC 3339, e.g. \"2025-06-04T14:49:56.123Z\"");
        } else {
            set_seconds_nanos(m, s, ns);
        }
        return;
    }
    case WKT_FIELDMASK:
        parse_fieldmask(c, n, m);
        return;
    case WKT_WRAPPER: {
        const ProtobufCFieldDescriptor *f = d->n_fields ? &d->fields[0] : NULL;
        scalar_val_t v;
        if (f && parse_scalar(c, n, f, &v))
            scalar_store(f->type, field_member(m, f), &v);
        return;
    }
    case WKT_STRUCT: {
        const ProtobufCFieldDescriptor *f = field_by_name(d, "fields");
        if (n->kind != NODE_MAP)
            ERR(c, n, "expected object for google.protobuf.Struct, got %s", node_kind_name(n));
        else if (f)
            parse_map_field(c, n, m, f, depth);
        return;
    }
    case WKT_LISTVALUE: {
        const ProtobufCFieldDescriptor *f = field_by_name(d, "values");
        if (n->kind != NODE_SEQ)
            ERR(c, n, "expected array for google.protobuf.ListValue, got %s", node_kind_name(n));
        else if (f)
            parse_repeated_field(c, n, m, f, depth);
        return;
    }
    case WKT_VALUE:
        parse_value(c, n, m, depth);
        return;
    case WKT_EMPTY:
    case WKT_NONE:
        break;
    }
    parse_fields(c, n, m, depth, false);
}

static void any_set(ctx_t *c, ProtobufCMessage *any, const char *type_url, uint8_t *data,
                    size_t len)
{
    const ProtobufCFieldDescriptor *ft = field_by_name(any->descriptor, "type_url");
    const ProtobufCFieldDescriptor *fv = field_by_name(any->descriptor, "value");
    char *url = strdup(type_url);
    if (!url || !ft || !fv) {
        c->oom = c->oom || !url;
        free(url);
        free(data);
        return;
    }
    *(char **)field_member(any, ft) = url;
    ProtobufCBinaryData *bd = field_member(any, fv);
    bd->data = data;
    bd->len = len;
}

static void parse_any(ctx_t *c, const node_t *n, ProtobufCMessage *m, size_t depth)
{
    if (n->kind != NODE_MAP) {
        ERR(c, n, "expected object for google.protobuf.Any, got %s", node_kind_name(n));
        return;
    }
    const node_t *type = NULL, *value = NULL;
    size_t n_other = 0;
    for (size_t i = 0; i + 1 < n->n; i += 2) {
        const node_t *k = n->kids[i];
        if (k->kind == NODE_SCALAR && str_is(k, "@type")) {
            if (type)
                ERR(c, k, "duplicate key \"@type\" (first at line %zu)", type->line);
            else
                type = n->kids[i + 1];
        } else {
            if (k->kind == NODE_SCALAR && str_is(k, "value")) {
                if (value)
                    ERR(c, k, "duplicate key \"value\" (first at line %zu)", value->line);
                value = n->kids[i + 1];
            }
            n_other++;
        }
    }
    if (!type) {
        if (n->n > 0)
            ERR(c, n, "google.protobuf.Any without \"@type\"");
        return;
    }
    if (!node_is_string(type) || strlen(type->str) != type->len) {
        ERR(c, type, "\"@type\" must be a string, got %s", node_kind_name(type));
        return;
    }
    const char *url = type->str;
    const char *slash = strrchr(url, '/');
    if (!slash || slash[1] == '\0') {
        ERR(c, type, "invalid type URL \"%s\"", url);
        return;
    }
    const ProtobufCMessageDescriptor *d = c->opts->resolve ? c->opts->resolve(url) : NULL;
    if (!d) {
        /* The opaque form {"@type", "value": base64} round-trips types we cannot decode. */
        if (n_other == 1 && value && node_is_string(value)) {
            uint8_t *data = NULL;
            size_t len = 0;
            int r = b64_decode(value->str, value->len, &data, &len);
            if (r == -ENOMEM) {
                c->oom = true;
            } else if (r < 0) {
                size_t mark = path_push_field(c, "value");
                ERR(c, value, "invalid base64 data");
                path_pop(c, mark);
            } else {
                any_set(c, m, url, data, len);
            }
            return;
        }
        if (n_other == 0) {
            any_set(c, m, url, NULL, 0);
            return;
        }
        if (c->opts->allow_unknown) {
            WARN(c, type, "unknown type \"%s\" in google.protobuf.Any (contents ignored)", url);
            any_set(c, m, url, NULL, 0);
        } else {
            ERR(c, type, "unknown type \"%s\" in google.protobuf.Any", url);
        }
        return;
    }
    ProtobufCMessage *inner = message_new(d);
    if (!inner) {
        c->oom = true;
        return;
    }
    size_t errors_before = c->n_errors;
    if (wkt_of(d) != WKT_NONE && wkt_of(d) != WKT_EMPTY) {
        /* Well-known types with a special form go under "value". */
        for (size_t i = 0; i + 1 < n->n; i += 2) {
            const node_t *k = n->kids[i];
            if (k->kind == NODE_SCALAR && (str_is(k, "@type") || str_is(k, "value")))
                continue;
            size_t mark = path_push_field(c, k->kind == NODE_SCALAR ? k->str : "?");
            ERR(c, k, "unexpected key in google.protobuf.Any holding %s (only \"value\")", d->name);
            path_pop(c, mark);
        }
        if (!value) {
            ERR(c, n, "google.protobuf.Any holding %s needs \"value\"", d->name);
        } else if (visit(c, value, depth + 1)) {
            size_t mark = path_push_field(c, "value");
            if (node_is_null(value) && wkt_of(d) != WKT_VALUE)
                ERR(c, value, "\"value\" cannot be null");
            else
                parse_message(c, value, inner, depth + 1);
            path_pop(c, mark);
        }
    } else if (wkt_of(d) == WKT_EMPTY && value) {
        /* Empty is also written {"@type": ..., "value": {}}. */
        size_t mark = path_push_field(c, "value");
        if (n_other != 1)
            ERR(c, n, "unexpected keys in google.protobuf.Any holding %s", d->name);
        else if (visit(c, value, depth + 1))
            parse_message(c, value, inner, depth + 1);
        path_pop(c, mark);
    } else {
        parse_fields(c, n, inner, depth, true);
    }
    if (c->n_errors == errors_before && !c->oom) {
        size_t len = protobuf_c_message_get_packed_size(inner);
        uint8_t *data = malloc(len ? len : 1);
        if (!data) {
            c->oom = true;
        } else {
            protobuf_c_message_pack(inner, data);
            any_set(c, m, url, len ? data : NULL, len);
            if (!len)
                free(data);
        }
    }
    protobuf_c_message_free_unpacked(inner, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Input: entry points */

static const pbjson_opts_t default_opts;

int pbjson_parse(const char *text, size_t len, const char *source_name,
                 const ProtobufCMessageDescriptor *desc, const pbjson_opts_t *opts,
                 ProtobufCMessage **ret_msg, pbjson_diag_t *diag)
{
    if (!opts)
        opts = &default_opts;
    ctx_t c = {
        .opts = opts,
        .diag = diag,
        .src = source_name ? source_name : "<input>",
        .max_depth = opts->max_depth ? opts->max_depth : PBJSON_DEFAULT_MAX_DEPTH,
    };
    size_t max_size = opts->max_size ? opts->max_size : PBJSON_DEFAULT_MAX_SIZE;
    if (len > max_size) {
        ctx_report(&c, PBJSON_ERROR, 0, "input is %zu bytes, more than the limit of %zu", len,
                   max_size);
        return -EFBIG;
    }
    /* Without aliases every value is visited once and costs at least one byte of input, so
     * this allows any such document, and aliased ones up to about twice the input size. */
    c.budget = 2 * len + 10000;

    bool oom = false;
    size_t rlen = len;
    char *rewritten = rewrite_surrogates(text, len, &rlen, &oom);
    if (oom)
        return -ENOMEM;
    size_t elen = 0;
    char *escaped = escape_yaml_forbidden(rewritten ? rewritten : text, rewritten ? rlen : len,
                                          &elen, &oom);
    if (oom) {
        free(rewritten);
        return -ENOMEM;
    }
    if (escaped) {
        free(rewritten);
        rewritten = escaped;
        rlen = elen;
    }

    doc_t doc = {0};
    ProtobufCMessage *m = NULL;
    int r = doc_load(&c, rewritten ? rewritten : text, rewritten ? rlen : len, &doc);
    if (r == 0) {
        m = message_new(desc);
        if (!m) {
            c.oom = true;
        } else if (node_is_null(doc.root) && wkt_of(desc) != WKT_VALUE) {
            ERR(&c, doc.root, "expected %s, got null", desc->name);
        } else if (visit(&c, doc.root, 0)) {
            parse_message(&c, doc.root, m, 0);
        }
    }
    doc_done(&doc);
    free(rewritten);
    free(c.path);
    if (c.oom)
        r = -ENOMEM;
    else if (r == 0 && c.n_errors > 0)
        r = -EINVAL;
    if (r < 0) {
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
        return r;
    }
    *ret_msg = m;
    return 0;
}

int pbjson_parse_file(const char *path, const ProtobufCMessageDescriptor *desc,
                      const pbjson_opts_t *opts, ProtobufCMessage **ret_msg, pbjson_diag_t *diag)
{
    size_t max_size = opts && opts->max_size ? opts->max_size : (size_t)PBJSON_DEFAULT_MAX_SIZE;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        pbjson_diag_add(diag, PBJSON_ERROR, "%s: cannot open: %s", path, strerror(e));
        return -e;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int r = 0;
    for (;;) {
        if (len == cap) {
            if (cap > max_size) {
                pbjson_diag_add(diag, PBJSON_ERROR, "%s: file larger than the limit of %zu bytes",
                                path, max_size);
                r = -EFBIG;
                break;
            }
            size_t ncap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                r = -ENOMEM;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t got = read(fd, buf + len, cap - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            r = -errno;
            pbjson_diag_add(diag, PBJSON_ERROR, "%s: cannot read: %s", path, strerror(errno));
            break;
        }
        if (got == 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    if (r == 0)
        r = pbjson_parse(buf ? buf : "", len, path, desc, opts, ret_msg, diag);
    free(buf);
    return r;
}

int pbjson_parse_json(const json_t *json, const char *source_name,
                      const ProtobufCMessageDescriptor *desc, const pbjson_opts_t *opts,
                      ProtobufCMessage **ret_msg, pbjson_diag_t *diag)
{
    char *text = json_dumps(json, JSON_INDENT(2) | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
    if (!text)
        return -ENOMEM;
    int r = pbjson_parse(text, strlen(text), source_name ? source_name : "<json>", desc, opts,
                         ret_msg, diag);
    free(text);
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* Output */

typedef struct out {
    const pbjson_opts_t *opts;
    size_t max_depth;
} out_t;

static json_t *message_to_json(const out_t *o, const ProtobufCMessage *m, size_t depth);

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not valid (overlong forms,
 * surrogates and code points above U+10FFFF are invalid, as jansson judges them). */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    if (s[0] < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if ((s[0] & 0xE0) == 0xC0) {
        len = 2;
        cp = s[0] & 0x1Fu;
    } else if ((s[0] & 0xF0) == 0xE0) {
        len = 3;
        cp = s[0] & 0x0Fu;
    } else if ((s[0] & 0xF8) == 0xF0) {
        len = 4;
        cp = s[0] & 0x07u;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[k] & 0x3Fu);
    }
    static const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* A jansson string from bytes that should be UTF-8; invalid sequences become U+FFFD, because a
 * message unpacked from the wire may hold anything and JSON output must stay valid. */
static json_t *utf8_string(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j)
        return j;
    char *buf = malloc(n * 3 + 1);
    if (!buf)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_seq_len((const unsigned char *)s + i, n - i);
        if (len > 0 && s[i] != '\0') {
            memcpy(buf + o, s + i, len);
            o += len;
            i += len;
        } else {
            memcpy(buf + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    j = json_stringn(buf, o);
    free(buf);
    return j;
}

static json_t *double_to_json(double v, bool is_float)
{
    if (isnan(v))
        return json_string("NaN");
    if (isinf(v))
        return json_string(v > 0 ? "Infinity" : "-Infinity");
    /* Integral values print as integers, like protojson ("1", not "1.0"). */
    if (v == trunc(v) && fabs(v) < 9007199254740992.0)
        return json_integer((json_int_t)v);
    if (is_float) {
        /* Print a float as its shortest decimal form, not as the double it widens to
         * (0.1f, not 0.10000000149011612). */
        char buf[32];
        float f = (float)v;
        for (int p = 1; p <= 9; p++) {
            snprintf(buf, sizeof(buf), "%.*g", p, (double)f);
            if ((float)strtod(buf, NULL) == f) {
                v = strtod(buf, NULL);
                break;
            }
        }
    }
    return json_real(v);
}

static json_t *int64_string(int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%" PRId64, v);
    return json_string(buf);
}

static json_t *uint64_string(uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%" PRIu64, v);
    return json_string(buf);
}

static json_t *bytes_to_json(const ProtobufCBinaryData *b)
{
    char *s = b64_encode(b->data, b->len);
    if (!s)
        return NULL;
    json_t *j = json_string(s);
    free(s);
    return j;
}

/* JSON for one value of field `f` stored at `p` (a member or an array slot). */
static json_t *value_to_json(const out_t *o, const ProtobufCFieldDescriptor *f, const void *p,
                             size_t depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return int64_string(*(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return uint64_string(*(const uint64_t *)p);
    case PROTOBUF_C_TYPE_FLOAT:
        return double_to_json(*(const float *)p, true);
    case PROTOBUF_C_TYPE_DOUBLE:
        return double_to_json(*(const double *)p, false);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)p;
        if (is_null_value_enum(f))
            return json_null();
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        return ev ? json_string(ev->name) : json_integer(v);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return s ? utf8_string(s, strlen(s)) : json_string("");
    }
    case PROTOBUF_C_TYPE_BYTES:
        return bytes_to_json(p);
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        if (!sub) {
            /* An unset message inside a map entry prints as its empty form. */
            if (is_value_message(f))
                return json_null();
            ProtobufCMessage *tmp = message_new(f->descriptor);
            if (!tmp)
                return NULL;
            json_t *j = message_to_json(o, tmp, depth + 1);
            free(tmp); /* freshly initialized: owns nothing */
            return j;
        }
        return message_to_json(o, sub, depth + 1);
    }
    }
    return json_null();
}

/* Whether field `f` of `m` is printed (see the header for the rules). */
static bool field_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    const void *p = field_member(m, f);
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return *(const size_t *)field_quantifier(m, f) > 0;
    if (is_oneof(f))
        return *(const uint32_t *)field_quantifier(m, f) == f->id;
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && has_flag(f))
        return *(const protobuf_c_boolean *)field_quantifier(m, f);
    if (f->type == PROTOBUF_C_TYPE_MESSAGE)
        return *(ProtobufCMessage *const *)p != NULL;
    if (f->label == PROTOBUF_C_LABEL_REQUIRED)
        return true;
    if (f->type == PROTOBUF_C_TYPE_STRING) {
        const char *s = *(char *const *)p;
        if (f->label == PROTOBUF_C_LABEL_OPTIONAL)
            return s != NULL && s != f->default_value;
        return s != NULL && s[0] != '\0';
    }
    /* proto3 implicit presence: printed when not zero. */
    switch (f->type) {
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)p != 0;
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)p != 0;
    case PROTOBUF_C_TYPE_BOOL:
        return *(const protobuf_c_boolean *)p != 0;
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len > 0;
    default: {
        static const uint8_t zero[8];
        return memcmp(p, zero, type_size(f->type)) != 0;
    }
    }
}

static json_t *duration_to_json(const ProtobufCMessage *m, bool timestamp)
{
    const ProtobufCFieldDescriptor *fs = field_by_name(m->descriptor, "seconds");
    const ProtobufCFieldDescriptor *fn = field_by_name(m->descriptor, "nanos");
    int64_t s = fs ? *(const int64_t *)field_member(m, fs) : 0;
    int32_t ns = fn ? *(const int32_t *)field_member(m, fn) : 0;
    char frac[16] = "";
    char buf[96];
    if (!timestamp) {
        bool neg = s < 0 || ns < 0;
        uint64_t as = s < 0 ? -(uint64_t)s : (uint64_t)s;
        uint32_t ans = ns < 0 ? (uint32_t)(-(int64_t)ns) : (uint32_t)ns;
        as += ans / 1000000000u;
        ans %= 1000000000u;
        /* protojson prints 0, 3, 6 or 9 fractional digits. */
        if (ans % 1000000u == 0 && ans)
            snprintf(frac, sizeof(frac), ".%03u", ans / 1000000u);
        else if (ans % 1000u == 0 && ans)
            snprintf(frac, sizeof(frac), ".%06u", ans / 1000u);
        else if (ans)
            snprintf(frac, sizeof(frac), ".%09u", ans);
        snprintf(buf, sizeof(buf), "%s%" PRIu64 "%ss", neg ? "-" : "", as, frac);
        return json_string(buf);
    }
    if (ns < 0 || ns > 999999999) {
        /* Not a valid Timestamp: normalize rather than print garbage. */
        s += ns / 1000000000;
        ns %= 1000000000;
        if (ns < 0) {
            s--;
            ns += 1000000000;
        }
    }
    int64_t days = s >= 0 ? s / 86400 : -((-s + 86399) / 86400);
    int64_t rem = s - days * 86400;
    int64_t y;
    unsigned mo, d;
    civil_from_days(days, &y, &mo, &d);
    uint32_t ans = (uint32_t)ns;
    if (ans % 1000000u == 0 && ans)
        snprintf(frac, sizeof(frac), ".%03u", ans / 1000000u);
    else if (ans % 1000u == 0 && ans)
        snprintf(frac, sizeof(frac), ".%06u", ans / 1000u);
    else if (ans)
        snprintf(frac, sizeof(frac), ".%09u", ans);
    snprintf(buf, sizeof(buf), "%04" PRId64 "-%02u-%02uT%02u:%02u:%02u%sZ", y, mo, d,
             (unsigned)(rem / 3600), (unsigned)(rem / 60 % 60), (unsigned)(rem % 60), frac);
    return json_string(buf);
}

static json_t *fieldmask_to_json(const ProtobufCMessage *m)
{
    const ProtobufCFieldDescriptor *f = field_by_name(m->descriptor, "paths");
    size_t n = f ? *(const size_t *)field_quantifier(m, f) : 0;
    char *const *paths = f ? *(char **const *)field_member(m, f) : NULL;
    size_t total = 1;
    for (size_t i = 0; i < n; i++)
        total += (paths[i] ? strlen(paths[i]) : 0) + 1;
    char *buf = malloc(total);
    if (!buf)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf[o++] = ',';
        bool upper = false;
        for (const char *p = paths[i] ? paths[i] : ""; *p; p++) {
            if (*p == '_') {
                upper = true;
                continue;
            }
            char ch = *p;
            if (upper && ch >= 'a' && ch <= 'z')
                ch = (char)(ch - 'a' + 'A');
            upper = false;
            buf[o++] = ch;
        }
    }
    buf[o] = '\0';
    json_t *j = utf8_string(buf, o);
    free(buf);
    return j;
}

/* The JSON object key of a map entry: map keys are strings whatever their proto type. */
static char *map_key_string(const ProtobufCFieldDescriptor *kf, const void *p)
{
    char *out = NULL;
    int r = -1;
    switch (kf->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return strdup(s ? s : "");
    }
    case PROTOBUF_C_TYPE_BOOL:
        return strdup(*(const protobuf_c_boolean *)p ? "true" : "false");
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        r = asprintf(&out, "%" PRId32, *(const int32_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        r = asprintf(&out, "%" PRIu32, *(const uint32_t *)p);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        r = asprintf(&out, "%" PRId64, *(const int64_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        r = asprintf(&out, "%" PRIu64, *(const uint64_t *)p);
        break;
    default: /* not a valid map key type */
        return strdup("");
    }
    return r < 0 ? NULL : out;
}

static json_t *map_to_json(const out_t *o, const ProtobufCMessage *m,
                           const ProtobufCFieldDescriptor *f, size_t depth)
{
    json_t *obj = json_object();
    if (!obj)
        return NULL;
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
    size_t n = *(const size_t *)field_quantifier(m, f);
    ProtobufCMessage *const *arr = *(ProtobufCMessage * *const *)field_member(m, f);
    for (size_t i = 0; i < n; i++) {
        const ProtobufCMessage *e = arr[i];
        if (!e)
            continue;
        char *key = map_key_string(kf, field_member(e, kf));
        json_t *jkey = key ? utf8_string(key, strlen(key)) : NULL;
        free(key);
        json_t *val = jkey ? value_to_json(o, vf, field_member(e, vf), depth) : NULL;
        /* A key repeated on the wire: the last one wins, as in protobuf's own parsers. */
        if (!val ||
            json_object_setn_new(obj, json_string_value(jkey), json_string_length(jkey), val)) {
            json_decref(jkey);
            json_decref(obj);
            return NULL;
        }
        json_decref(jkey);
    }
    return obj;
}

static json_t *any_to_json(const out_t *o, const ProtobufCMessage *m, size_t depth)
{
    const ProtobufCFieldDescriptor *ft = field_by_name(m->descriptor, "type_url");
    const ProtobufCFieldDescriptor *fv = field_by_name(m->descriptor, "value");
    if (!ft || !fv)
        return json_object();
    const char *url = *(char *const *)field_member(m, ft);
    const ProtobufCBinaryData *val = field_member(m, fv);
    if (!url || !url[0]) {
        if (val->len == 0)
            return json_object();
        url = "";
    }
    const ProtobufCMessageDescriptor *d =
        o->opts->resolve && url[0] && depth < o->max_depth ? o->opts->resolve(url) : NULL;
    ProtobufCMessage *inner = d ? protobuf_c_message_unpack(d, NULL, val->len, val->data) : NULL;
    json_t *obj = json_object();
    json_t *turl = utf8_string(url, strlen(url));
    if (!obj || json_object_set_new(obj, "@type", turl)) {
        json_decref(obj);
        if (inner)
            protobuf_c_message_free_unpacked(inner, NULL);
        return NULL;
    }
    if (!inner) {
        /* Unknown type, or bytes that do not decode as it: keep them opaque. */
        if (json_object_set_new(obj, "value", bytes_to_json(val))) {
            json_decref(obj);
            return NULL;
        }
        return obj;
    }
    json_t *body = message_to_json(o, inner, depth + 1);
    wkt_t w = wkt_of(d);
    protobuf_c_message_free_unpacked(inner, NULL);
    if (!body) {
        json_decref(obj);
        return NULL;
    }
    if (w != WKT_NONE) {
        if (json_object_set_new(obj, "value", body)) {
            json_decref(obj);
            return NULL;
        }
    } else if (json_object_update(obj, body)) {
        json_decref(body);
        json_decref(obj);
        return NULL;
    } else {
        json_decref(body);
    }
    return obj;
}

static json_t *repeated_to_json(const out_t *o, const ProtobufCMessage *m,
                                const ProtobufCFieldDescriptor *f, size_t depth)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    size_t n = *(const size_t *)field_quantifier(m, f);
    const char *items = *(char *const *)field_member(m, f);
    size_t es = type_size(f->type);
    for (size_t k = 0; k < n; k++) {
        if (json_array_append_new(arr, value_to_json(o, f, items + k * es, depth))) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static json_t *message_to_json(const out_t *o, const ProtobufCMessage *m, size_t depth)
{
    if (depth > o->max_depth)
        return json_null();
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const ProtobufCFieldDescriptor *f;
    switch (wkt_of(d)) {
    case WKT_ANY:
        return any_to_json(o, m, depth);
    case WKT_DURATION:
        return duration_to_json(m, false);
    case WKT_TIMESTAMP:
        return duration_to_json(m, true);
    case WKT_FIELDMASK:
        return fieldmask_to_json(m);
    case WKT_WRAPPER:
        if (d->n_fields == 0)
            return json_null();
        return value_to_json(o, &d->fields[0], field_member(m, &d->fields[0]), depth);
    case WKT_STRUCT:
        f = field_by_name(d, "fields");
        return f ? map_to_json(o, m, f, depth) : json_object();
    case WKT_LISTVALUE:
        f = field_by_name(d, "values");
        return f ? repeated_to_json(o, m, f, depth) : json_array();
    case WKT_VALUE:
        /* Exactly one member of the "kind" oneof; none set prints as null. */
        for (unsigned i = 0; i < d->n_fields; i++)
            if (field_present(m, &d->fields[i]))
                return value_to_json(o, &d->fields[i], field_member(m, &d->fields[i]), depth);
        return json_null();
    case WKT_EMPTY:
    case WKT_NONE:
        break;
    }
    json_t *obj = json_object();
    if (!obj)
        return NULL;
    for (unsigned i = 0; i < d->n_fields; i++) {
        f = &d->fields[i];
        if (!field_present(m, f))
            continue;
        json_t *j;
        if (f->label == PROTOBUF_C_LABEL_REPEATED && field_is_map(d, f))
            j = map_to_json(o, m, f, depth);
        else if (f->label == PROTOBUF_C_LABEL_REPEATED)
            j = repeated_to_json(o, m, f, depth);
        else
            j = value_to_json(o, f, field_member(m, f), depth);
        if (json_object_set_new(obj, f->name, j)) {
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

json_t *pbjson_to_json(const ProtobufCMessage *msg, const pbjson_opts_t *opts)
{
    out_t o = {
        .opts = opts ? opts : &default_opts,
    };
    o.max_depth = o.opts->max_depth ? o.opts->max_depth : PBJSON_DEFAULT_MAX_DEPTH;
    return message_to_json(&o, msg, 0);
}

char *pbjson_to_string(const ProtobufCMessage *msg, const pbjson_opts_t *opts, int indent)
{
    json_t *j = pbjson_to_json(msg, opts);
    if (!j)
        return NULL;
    size_t flags = JSON_ENCODE_ANY | JSON_REAL_PRECISION(17);
    if (indent > 0)
        flags |= JSON_INDENT(indent > 31 ? 31 : indent);
    else
        flags |= JSON_COMPACT;
    char *s = json_dumps(j, flags);
    json_decref(j);
    return s;
}
