#include "dataplane/route.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <ctype.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- regexes ---- */

/* Backtracking bound per match: RE2 runs in linear time, PCRE2 does not, so a pattern from the
 * control plane must not be able to pin a worker. Over the limit counts as no match. */
#define REGEX_MATCH_LIMIT 200000
#define REGEX_DEPTH_LIMIT 10000

struct dp_regex {
    pcre2_code *full; /* anchored at both ends: whole-subject matching */
    pcre2_code *any;  /* unanchored: substitution */
    pcre2_match_context *mctx;
};

/* Match data for one call lives in a buffer on the caller's stack (pcre2 allocates it through
 * a general context), so matching allocates nothing unless pcre2 needs more than the buffer
 * (the interpreter's backtracking frames when JIT is unavailable). */
typedef struct stack_mem {
    _Alignas(16) unsigned char buf[1024];
    size_t used;
} stack_mem_t;

static void *sm_malloc(PCRE2_SIZE n, void *ud)
{
    stack_mem_t *m = ud;
    n = (n + 15) & ~(PCRE2_SIZE)15;
    if (n <= sizeof(m->buf) - m->used) {
        void *p = m->buf + m->used;
        m->used += n;
        return p;
    }
    return malloc(n);
}

static void sm_free(void *p, void *ud)
{
    stack_mem_t *m = ud;
    if ((unsigned char *)p >= m->buf && (unsigned char *)p < m->buf + sizeof(m->buf))
        return;
    free(p);
}

static pcre2_code *compile(const char *pattern, size_t n, uint32_t opts, char **reterr_msg)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *c = pcre2_compile((PCRE2_SPTR)pattern, n, opts, &code, &off, NULL);
    if (c == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof(msg));
        if (asprintf(reterr_msg, "%s at offset %zu", (const char *)msg, (size_t)off) < 0)
            *reterr_msg = NULL;
        return NULL;
    }
    /* JIT when the platform has it; the interpreter otherwise. */
    (void)pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);
    return c;
}

dp_regex_t *dp_regex_new(const char *pattern, size_t n, char **reterr_msg)
{
    dp_regex_t *re = calloc(1, sizeof(*re));
    if (re == NULL)
        abort();
    /* Byte-wise (no PCRE2_UTF): a path or header may hold any byte, and PCRE2's UTF mode
     * refuses invalid UTF-8 subjects. */
    re->full = compile(pattern, n, PCRE2_ANCHORED | PCRE2_ENDANCHORED, reterr_msg);
    if (re->full == NULL) {
        free(re);
        return NULL;
    }
    char *unused = NULL;
    re->any = compile(pattern, n, 0, &unused);
    free(unused);
    re->mctx = pcre2_match_context_create(NULL);
    if (re->any == NULL || re->mctx == NULL)
        abort(); /* the same pattern compiled above; only memory can fail here */
    pcre2_set_match_limit(re->mctx, REGEX_MATCH_LIMIT);
    pcre2_set_depth_limit(re->mctx, REGEX_DEPTH_LIMIT);
    return re;
}

void dp_regex_free(dp_regex_t *re)
{
    if (re == NULL)
        return;
    pcre2_code_free(re->full);
    pcre2_code_free(re->any);
    pcre2_match_context_free(re->mctx);
    free(re);
}

bool dp_regex_full_match(const dp_regex_t *re, const char *s, size_t n)
{
    stack_mem_t m = {.used = 0};
    pcre2_general_context *g = pcre2_general_context_create(sm_malloc, sm_free, &m);
    if (g == NULL)
        return false;
    pcre2_match_data *md = pcre2_match_data_create(1, g);
    bool ok = false;
    if (md) {
        int rc = pcre2_match(re->full, (PCRE2_SPTR)(s ? s : ""), n, 0, 0, md, re->mctx);
        ok = rc >= 0;
        pcre2_match_data_free(md);
    }
    pcre2_general_context_free(g);
    return ok;
}

dp_str_t dp_regex_replace(const dp_regex_t *re, dp_str_t s, const char *sub, dp_pool_t *pool)
{
    stack_mem_t m = {.used = 0};
    pcre2_general_context *g = pcre2_general_context_create(sm_malloc, sm_free, &m);
    if (g == NULL)
        return s;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re->any, g);
    dp_str_t out = s;
    if (md) {
        PCRE2_SIZE cap = s.n * 2 + strlen(sub) + 64;
        for (int attempt = 0; attempt < 2; attempt++) {
            PCRE2_UCHAR *buf = dp_pool_alloc(pool, cap + 1);
            PCRE2_SIZE len = cap;
            int rc =
                pcre2_substitute(re->any, (PCRE2_SPTR)(s.p ? s.p : ""), s.n, 0,
                                 PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_OVERFLOW_LENGTH, md,
                                 re->mctx, (PCRE2_SPTR)sub, PCRE2_ZERO_TERMINATED, buf, &len);
            if (rc == PCRE2_ERROR_NOMEMORY) {
                cap = len; /* the length needed, as OVERFLOW_LENGTH reports */
                continue;
            }
            if (rc > 0) {
                buf[len] = 0;
                out = (dp_str_t){(const char *)buf, len};
            }
            break; /* 0 substitutions, or an error: the input unchanged */
        }
        pcre2_match_data_free(md);
    }
    pcre2_general_context_free(g);
    return out;
}

char *dp_regex_sub_from_re2(const char *sub)
{
    size_t n = strlen(sub);
    char *out = malloc(n * 2 + 1), *o = out;
    if (out == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        if (sub[i] == '\\' && i + 1 < n && isdigit((unsigned char)sub[i + 1])) {
            *o++ = '$';
            *o++ = sub[++i];
        } else if (sub[i] == '\\' && i + 1 < n && sub[i + 1] == '\\') {
            *o++ = '\\';
            i++;
        } else if (sub[i] == '$') {
            *o++ = '$';
            *o++ = '$';
        } else {
            *o++ = sub[i];
        }
    }
    *o = 0;
    return out;
}

/* ---- string helpers ---- */

static bool mem_ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i]))
            return false;
    }
    return true;
}

static bool starts(dp_str_t v, dp_str_t p, bool icase)
{
    if (v.n < p.n)
        return false;
    return icase ? mem_ieq(v.p, p.p, p.n) : p.n == 0 || memcmp(v.p, p.p, p.n) == 0;
}

static bool ends(dp_str_t v, dp_str_t p, bool icase)
{
    if (v.n < p.n)
        return false;
    const char *t = v.p + v.n - p.n;
    return icase ? mem_ieq(t, p.p, p.n) : p.n == 0 || memcmp(t, p.p, p.n) == 0;
}

static bool contains(dp_str_t v, dp_str_t p, bool icase)
{
    if (p.n == 0)
        return true;
    for (size_t i = 0; i + p.n <= v.n; i++) {
        if (icase ? mem_ieq(v.p + i, p.p, p.n) : memcmp(v.p + i, p.p, p.n) == 0)
            return true;
    }
    return false;
}

bool dp_str_match(const dp_str_match_t *m, dp_str_t v)
{
    switch (m->kind) {
    case DP_SM_EXACT:
        return v.n == m->s.n && starts(v, m->s, m->ignore_case);
    case DP_SM_PREFIX:
        return starts(v, m->s, m->ignore_case);
    case DP_SM_SUFFIX:
        return ends(v, m->s, m->ignore_case);
    case DP_SM_CONTAINS:
        return contains(v, m->s, m->ignore_case);
    case DP_SM_REGEX:
        return m->re && dp_regex_full_match(m->re, v.p, v.n);
    }
    return false;
}

dp_str_t dp_route_path_only(dp_str_t path)
{
    for (size_t i = 0; i < path.n; i++) {
        if (path.p[i] == '?' || path.p[i] == '#')
            return (dp_str_t){path.p, i};
    }
    return path;
}

/* ---- header matching ---- */

/* A pseudo-header as the head holds it; *found false for other names. */
static dp_str_t pseudo(const dp_http_head_t *req, dp_str_t name, bool *found)
{
    *found = true;
    if (DP_STR_EQ(name, ":method"))
        return req->method;
    if (DP_STR_EQ(name, ":authority"))
        return req->authority;
    if (DP_STR_EQ(name, ":scheme"))
        return req->scheme;
    if (DP_STR_EQ(name, ":path"))
        return req->path;
    if (DP_STR_EQ(name, ":protocol"))
        return req->protocol;
    *found = false;
    return DP_STR_NULL;
}

/* absl::SimpleAtoi's syntax: optional surrounding whitespace, an optional sign, digits. */
static bool parse_i64(dp_str_t v, int64_t *out)
{
    while (v.n && isspace((unsigned char)v.p[0])) {
        v.p++;
        v.n--;
    }
    while (v.n && isspace((unsigned char)v.p[v.n - 1]))
        v.n--;
    size_t i = 0;
    bool neg = false;
    if (i < v.n && (v.p[i] == '-' || v.p[i] == '+'))
        neg = v.p[i++] == '-';
    if (i == v.n)
        return false;
    uint64_t acc = 0;
    for (; i < v.n; i++) {
        if (!isdigit((unsigned char)v.p[i]))
            return false;
        uint64_t d = (uint64_t)(v.p[i] - '0');
        if (acc > (UINT64_C(9223372036854775808) - d) / 10)
            return false;
        acc = acc * 10 + d;
    }
    if (!neg && acc > INT64_MAX)
        return false;
    *out = neg ? (int64_t)(0 - acc) : (int64_t)acc;
    return true;
}

static bool value_matches(const dp_header_match_t *m, dp_str_t v)
{
    if (m->kind == DP_HM_RANGE) {
        int64_t x;
        return parse_i64(v, &x) && x >= m->range_start && x < m->range_end;
    }
    return dp_str_match(&m->sm, v);
}

bool dp_header_match(const dp_header_match_t *m, const dp_http_head_t *req)
{
    bool is_pseudo;
    dp_str_t pv = pseudo(req, m->name, &is_pseudo);
    const dp_headers_t *h = &req->headers;
    size_t count = 0, total = 0;
    const dp_header_t *first = NULL;
    if (!is_pseudo) {
        for (uint32_t i = 0; i < h->n; i++) {
            if (h->v[i].name.n == m->name.n && memcmp(h->v[i].name.p, m->name.p, m->name.n) == 0) {
                if (first == NULL)
                    first = &h->v[i];
                count++;
                total += h->v[i].value.n + 1;
            }
        }
    } else if (pv.p) {
        count = 1;
    }
    bool present = count > 0;
    /* Envoy's HeaderUtility::matchHeaders: a missing header treated as empty counts as present
     * for present_match too. */
    if (m->kind == DP_HM_PRESENT)
        return ((present || m->treat_missing_as_empty) == m->present) != m->invert;
    if (!present) {
        if (!m->treat_missing_as_empty)
            return false;
        return value_matches(m, DP_STR("")) != m->invert;
    }
    if (is_pseudo)
        return value_matches(m, pv) != m->invert;
    if (count == 1)
        return value_matches(m, first->value) != m->invert;
    /* Several values: joined with "," (Envoy's getAllOfHeaderAsString). */
    char stack[2048];
    char *buf = total <= sizeof(stack) ? stack : malloc(total);
    if (buf == NULL)
        abort();
    size_t n = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->v[i].name.n == m->name.n && memcmp(h->v[i].name.p, m->name.p, m->name.n) == 0) {
            if (n)
                buf[n++] = ',';
            if (h->v[i].value.n)
                memcpy(buf + n, h->v[i].value.p, h->v[i].value.n);
            n += h->v[i].value.n;
        }
    }
    bool r = value_matches(m, (dp_str_t){buf, n}) != m->invert;
    if (buf != stack)
        free(buf);
    return r;
}

/* The value of the first query parameter called name (not decoded; "" for "a" or "a="). */
static bool query_param(dp_str_t path, dp_str_t name, dp_str_t *ret_v)
{
    size_t q = 0;
    while (q < path.n && path.p[q] != '?' && path.p[q] != '#')
        q++;
    if (q == path.n || path.p[q] != '?')
        return false;
    size_t end = q + 1;
    while (end < path.n && path.p[end] != '#')
        end++;
    size_t i = q + 1;
    while (i < end) {
        size_t j = i;
        while (j < end && path.p[j] != '&')
            j++;
        size_t eq = i;
        while (eq < j && path.p[eq] != '=')
            eq++;
        if (eq - i == name.n && memcmp(path.p + i, name.p, name.n) == 0) {
            *ret_v = eq < j ? (dp_str_t){path.p + eq + 1, j - eq - 1} : DP_STR("");
            return true;
        }
        i = j + 1;
    }
    return false;
}

static bool is_grpc(const dp_http_head_t *req)
{
    const dp_header_t *ct = DP_HDR_GET(&req->headers, "content-type");
    if (ct == NULL)
        return false;
    dp_str_t v = ct->value;
    static const char g[] = "application/grpc";
    if (v.n < sizeof(g) - 1 || memcmp(v.p, g, sizeof(g) - 1) != 0)
        return false;
    return v.n == sizeof(g) - 1 || v.p[sizeof(g) - 1] == '+' || v.p[sizeof(g) - 1] == ';';
}

static bool path_matches(const dp_route_match_t *m, const dp_http_head_t *req)
{
    if (m->kind == DP_PM_CONNECT)
        return DP_STR_EQ(req->method, "CONNECT");
    if (m->kind == DP_PM_NEVER || req->path.p == NULL)
        return false;
    dp_str_t p = dp_route_path_only(req->path);
    bool icase = !m->case_sensitive;
    switch (m->kind) {
    case DP_PM_PREFIX:
        return starts(p, m->path, icase);
    case DP_PM_PATH:
        return p.n == m->path.n && starts(p, m->path, icase);
    case DP_PM_SEPARATED_PREFIX:
        return starts(p, m->path, icase) && (p.n == m->path.n || p.p[m->path.n] == '/');
    case DP_PM_REGEX:
        return dp_regex_full_match(m->re, p.p, p.n);
    default:
        return false;
    }
}

bool dp_route_match(const dp_route_match_t *m, const dp_http_head_t *req)
{
    /* Envoy's order (RouteEntryImplBase::matchRoute): headers, query parameters, gRPC, then
     * the path; all must pass, so the order only matters for cost. */
    if (!path_matches(m, req))
        return false;
    for (size_t i = 0; i < m->n_headers; i++) {
        if (!dp_header_match(&m->headers[i], req))
            return false;
    }
    for (size_t i = 0; i < m->n_query; i++) {
        dp_str_t v;
        bool found = query_param(req->path, m->query[i].name, &v);
        if (m->query[i].present_only) {
            if (found != m->query[i].present)
                return false;
        } else if (!found || !dp_str_match(&m->query[i].sm, v)) {
            return false;
        }
    }
    if (m->grpc && !is_grpc(req))
        return false;
    return true;
}

/* ---- virtual hosts ---- */

static int domain_cmp_lower(dp_str_t host, dp_str_t d)
{
    size_t n = host.n < d.n ? host.n : d.n;
    for (size_t i = 0; i < n; i++) {
        int a = tolower((unsigned char)host.p[i]), b = (unsigned char)d.p[i];
        if (a != b)
            return a - b;
    }
    return host.n < d.n ? -1 : host.n > d.n;
}

/* Where the port of an authority starts (Envoy's HeaderUtility::getPortStart: the last ':',
 * unless a ']' follows it), or n. */
static size_t port_start(dp_str_t a)
{
    for (size_t i = a.n; i-- > 0;) {
        if (a.p[i] == ']')
            return a.n;
        if (a.p[i] == ':')
            return i;
    }
    return a.n;
}

const dp_vhost_t *dp_route_vhost(const dp_route_config_t *rc, dp_str_t authority)
{
    if (rc->n_exact == 0 && rc->n_suffix == 0 && rc->n_prefix == 0)
        return rc->any;
    if (authority.p == NULL)
        return NULL;
    dp_str_t host = authority;
    if (rc->ignore_port_in_host_matching)
        host.n = port_start(host);
    size_t lo = 0, hi = rc->n_exact;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = domain_cmp_lower(host, rc->exact[mid].s);
        if (c == 0)
            return rc->exact[mid].vh;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    /* Longest first; a wildcard must leave at least one character for its '*'. */
    for (size_t i = 0; i < rc->n_suffix; i++) {
        dp_str_t d = rc->suffix[i].s;
        if (d.n < host.n && mem_ieq(host.p + host.n - d.n, d.p, d.n))
            return rc->suffix[i].vh;
    }
    for (size_t i = 0; i < rc->n_prefix; i++) {
        dp_str_t d = rc->prefix[i].s;
        if (d.n < host.n && mem_ieq(host.p, d.p, d.n))
            return rc->prefix[i].vh;
    }
    return rc->any;
}

const dp_route_t *dp_route_select(const dp_route_config_t *rc, const dp_http_head_t *req,
                                  uint64_t random, const dp_vhost_t **ret_vh)
{
    (void)random;
    const dp_vhost_t *vh = rc ? dp_route_vhost(rc, req->authority) : NULL;
    if (ret_vh)
        *ret_vh = vh;
    if (vh == NULL)
        return NULL;
    for (size_t i = 0; i < vh->n_routes; i++) {
        if (dp_route_match(&vh->routes[i].match, req))
            return &vh->routes[i];
    }
    return NULL;
}

const char *dp_route_cluster(const dp_route_t *r, const dp_http_head_t *req, uint64_t random,
                             const dp_route_weighted_t **ret_wc)
{
    if (ret_wc)
        *ret_wc = NULL;
    switch (r->kind) {
    case DP_ROUTE_CLUSTER:
        return r->cluster;
    case DP_ROUTE_WEIGHTED: {
        uint64_t v = random % r->total_weight, begin = 0;
        for (size_t i = 0; i < r->n_weighted; i++) {
            uint64_t end = begin + r->weighted[i].weight;
            if (v >= begin && v < end) {
                if (ret_wc)
                    *ret_wc = &r->weighted[i];
                return r->weighted[i].name;
            }
            begin = end;
        }
        return NULL; /* not reached: total_weight is the sum */
    }
    case DP_ROUTE_CLUSTER_HEADER: {
        dp_str_t name = {r->cluster_header, strlen(r->cluster_header)};
        bool is_pseudo;
        dp_str_t v = pseudo(req, name, &is_pseudo);
        if (!is_pseudo) {
            const dp_header_t *h = dp_headers_get(&req->headers, name.p, name.n);
            v = h ? h->value : DP_STR_NULL;
        }
        return v.p && v.n ? v.p : NULL;
    }
    default:
        return NULL;
    }
}

/* ---- header mutations ---- */

static bool has_header(const dp_headers_t *h, dp_str_t name)
{
    return dp_headers_get(h, name.p, name.n) != NULL;
}

/* An add's value: formatted (into pool) when it has a format and fmt can. */
static dp_str_t add_value(const dp_header_add_t *a, dp_pool_t *pool, const dp_header_fmt_t *fmt)
{
    if (a->fmt == NULL || fmt == NULL)
        return a->value;
    char buf[4096];
    size_t n = fmt->fn(a->fmt, fmt->ctx, buf, sizeof(buf));
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == '\r' || buf[i] == '\n' || buf[i] == '\0')
            return (dp_str_t){"", 0};
    }
    return (dp_str_t){dp_pool_strndup(pool, buf, n), n};
}

void dp_header_ops_apply(const dp_header_ops_t *ops, dp_headers_t *h, dp_pool_t *pool,
                         const dp_header_fmt_t *fmt)
{
    if (ops == NULL)
        return;
    for (size_t i = 0; i < ops->n_remove; i++)
        dp_headers_remove(h, ops->remove[i].p, ops->remove[i].n);
    if (ops->n_add == 0)
        return;
    /* 0 skip, 1 append, 2 overwrite: decided on the headers before this level's adds. */
    unsigned char stack[64];
    dp_str_t vstack[16];
    unsigned char *what = ops->n_add <= sizeof(stack) ? stack : dp_pool_alloc(pool, ops->n_add);
    dp_str_t *val = ops->n_add <= 16 ? vstack : dp_pool_alloc(pool, ops->n_add * sizeof(*val));
    for (size_t i = 0; i < ops->n_add; i++) {
        const dp_header_add_t *a = &ops->add[i];
        what[i] = 0;
        val[i] = add_value(a, pool, fmt);
        if (val[i].n == 0 && !a->keep_empty_value)
            continue;
        switch (a->action) {
        case DP_HDR_APPEND_IF_EXISTS_OR_ADD:
            what[i] = 1;
            break;
        case DP_HDR_ADD_IF_ABSENT:
            what[i] = has_header(h, a->name) ? 0 : 1;
            break;
        case DP_HDR_OVERWRITE_IF_EXISTS:
            what[i] = has_header(h, a->name) ? 2 : 0;
            break;
        case DP_HDR_OVERWRITE_IF_EXISTS_OR_ADD:
            what[i] = 2;
            break;
        }
    }
    for (size_t i = 0; i < ops->n_add; i++) {
        if (what[i] == 2) {
            dp_headers_remove(h, ops->add[i].name.p, ops->add[i].name.n);
            dp_headers_add_ref(h, pool, ops->add[i].name, val[i]);
        }
    }
    for (size_t i = 0; i < ops->n_add; i++) {
        if (what[i] == 1)
            dp_headers_add_ref(h, pool, ops->add[i].name, val[i]);
    }
}

/* The route, vhost and route config levels of one direction, in Envoy's evaluation order. */
static void apply_levels(const dp_header_ops_t *route, const dp_header_ops_t *vhost,
                         const dp_header_ops_t *config, bool most_specific_wins, dp_headers_t *h,
                         dp_pool_t *pool, const dp_header_fmt_t *fmt)
{
    if (most_specific_wins) {
        dp_header_ops_apply(config, h, pool, fmt);
        dp_header_ops_apply(vhost, h, pool, fmt);
        dp_header_ops_apply(route, h, pool, fmt);
    } else {
        dp_header_ops_apply(route, h, pool, fmt);
        dp_header_ops_apply(vhost, h, pool, fmt);
        dp_header_ops_apply(config, h, pool, fmt);
    }
}

static dp_str_t cstr(const char *s)
{
    return (dp_str_t){s, strlen(s)};
}

/* The request path after the route's prefix_rewrite or regex_rewrite (query kept), or the path
 * itself. */
static dp_str_t rewritten_path(const dp_route_t *r, dp_str_t path, dp_pool_t *pool)
{
    if (path.p == NULL)
        return path;
    dp_str_t just = dp_route_path_only(path);
    dp_str_t rest = {path.p + just.n, path.n - just.n};
    dp_str_t head;
    size_t cut;
    if (r->prefix_rewrite) {
        switch (r->match.kind) {
        case DP_PM_PREFIX:
        case DP_PM_PATH:
        case DP_PM_SEPARATED_PREFIX:
            cut = r->match.path.n <= path.n ? r->match.path.n : path.n;
            break;
        case DP_PM_REGEX:
            cut = just.n;
            break;
        default:
            return path;
        }
        head = cstr(r->prefix_rewrite);
        rest = (dp_str_t){path.p + cut, path.n - cut};
    } else if (r->regex_rewrite) {
        head = dp_regex_replace(r->regex_rewrite, just, r->regex_sub, pool);
    } else {
        return path;
    }
    char *p = dp_pool_alloc(pool, head.n + rest.n + 1);
    if (head.n)
        memcpy(p, head.p, head.n);
    if (rest.n)
        memcpy(p + head.n, rest.p, rest.n);
    p[head.n + rest.n] = 0;
    return (dp_str_t){p, head.n + rest.n};
}

void dp_route_apply_request(const dp_route_config_t *rc, const dp_vhost_t *vh, const dp_route_t *r,
                            const dp_route_weighted_t *wc, dp_http_head_t *req, dp_pool_t *pool,
                            const dp_header_fmt_t *fmt)
{
    if (wc) {
        dp_header_ops_apply(&wc->req, &req->headers, pool, fmt);
        if (wc->host_rewrite)
            req->authority = cstr(wc->host_rewrite);
    }
    apply_levels(r ? &r->req : NULL, vh ? &vh->req : NULL, rc ? &rc->req : NULL,
                 rc && rc->most_specific_header_mutations_wins, &req->headers, pool, fmt);
    if (r == NULL)
        return;
    if (r->host_rewrite) {
        req->authority = cstr(r->host_rewrite);
    } else if (r->host_rewrite_header) {
        const dp_header_t *h =
            dp_headers_get(&req->headers, r->host_rewrite_header, strlen(r->host_rewrite_header));
        if (h && h->value.n)
            req->authority = h->value;
    }
    req->path = rewritten_path(r, req->path, pool);
}

void dp_route_apply_response(const dp_route_config_t *rc, const dp_vhost_t *vh, const dp_route_t *r,
                             const dp_route_weighted_t *wc, dp_http_head_t *resp, dp_pool_t *pool,
                             const dp_header_fmt_t *fmt)
{
    if (wc)
        dp_header_ops_apply(&wc->resp, &resp->headers, pool, fmt);
    apply_levels(r ? &r->resp : NULL, vh ? &vh->resp : NULL, rc ? &rc->resp : NULL,
                 rc && rc->most_specific_header_mutations_wins, &resp->headers, pool, fmt);
}

/* ---- redirects ---- */

dp_str_t dp_route_redirect(const dp_route_t *r, const dp_http_head_t *req, dp_pool_t *pool,
                           int *ret_status)
{
    if (ret_status)
        *ret_status = r->redirect_code ? r->redirect_code : 301;
    dp_str_t req_scheme = req->scheme.p && req->scheme.n ? req->scheme : DP_STR("http");
    dp_str_t scheme = r->scheme_redirect ? cstr(r->scheme_redirect) : req_scheme;
    char port[16] = "";
    if (r->port_redirect)
        snprintf(port, sizeof(port), ":%u", r->port_redirect);
    dp_str_t host;
    if (r->host_redirect) {
        host = cstr(r->host_redirect);
    } else {
        /* Envoy's processRequestHost: drop the request's port when a port is given, or when
         * the scheme changes from its default port (http :80, https :443). */
        host = req->authority.p ? req->authority : DP_STR("");
        size_t ps = port_start(host);
        if (ps < host.n) {
            dp_str_t rp = {host.p + ps, host.n - ps};
            /* The request's protocol as x-forwarded-proto says (the connection manager sets
             * it), else its scheme. */
            const dp_header_t *xfp = DP_HDR_GET(&req->headers, "x-forwarded-proto");
            dp_str_t proto = xfp ? xfp->value : req_scheme;
            bool remove = port[0] != 0;
            if (!(scheme.n == proto.n && memcmp(scheme.p, proto.p, scheme.n) == 0)) {
                remove |= DP_STR_EQ(proto, "https") && DP_STR_EQ(rp, ":443");
                remove |= DP_STR_EQ(proto, "http") && DP_STR_EQ(rp, ":80");
            }
            if (remove)
                host.n = ps;
        }
    }
    dp_str_t path;
    bool strip = r->strip_query;
    if (r->path_redirect) {
        path = cstr(r->path_redirect);
        if (r->path_redirect_has_query) {
            strip = false;
        } else {
            /* Everything from the request's '?' on goes after the new path. */
            dp_str_t cur = req->path.p ? req->path : DP_STR("");
            const char *q = cur.n ? memchr(cur.p, '?', cur.n) : NULL;
            if (q) {
                size_t qn = cur.n - (size_t)(q - cur.p);
                char *p = dp_pool_alloc(pool, path.n + qn + 1);
                memcpy(p, path.p, path.n);
                memcpy(p + path.n, q, qn);
                path = (dp_str_t){p, path.n + qn};
            }
        }
    } else {
        path = rewritten_path(r, req->path.p ? req->path : DP_STR(""), pool);
    }
    if (strip) {
        for (size_t i = 0; i < path.n; i++) {
            if (path.p[i] == '?') {
                path.n = i;
                break;
            }
        }
    }
    bool slash = path.n == 0 || path.p[0] != '/';
    size_t n = scheme.n + 3 + host.n + strlen(port) + (slash ? 1 : 0) + path.n;
    char *out = dp_pool_alloc(pool, n + 1);
    int k = snprintf(out, n + 1, DP_STR_FMT "://" DP_STR_FMT "%s%s" DP_STR_FMT, DP_STR_ARG(scheme),
                     DP_STR_ARG(host), port, slash ? "/" : "", DP_STR_ARG(path));
    return (dp_str_t){out, k < 0 ? 0 : (size_t)k};
}

/* ---- per-filter configs ---- */

static const dp_route_filter_conf_t *find_conf(const dp_filter_confs_t *c, const char *name)
{
    size_t lo = 0, hi = c->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int k = strcmp(name, c->v[mid].filter_name);
        if (k == 0)
            return &c->v[mid];
        if (k < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const struct dp_route_filter_conf *dp_route_filter_conf(const dp_vhost_t *vh, const dp_route_t *r,
                                                        const char *filter_name)
{
    const dp_route_filter_conf_t *c = NULL;
    if (r && (c = find_conf(&r->filter_confs, filter_name)))
        return c;
    if (vh && (c = find_conf(&vh->filter_confs, filter_name)))
        return c;
    if (vh && vh->rc && (c = find_conf(&vh->rc->filter_confs, filter_name)))
        return c;
    return NULL;
}

/* ---- retry_on ---- */

uint32_t dp_retry_on_parse(const char *s, size_t n)
{
    static const struct {
        const char *name;
        uint32_t flag;
    } names[] = {
        {"5xx", DP_RETRY_5XX},
        {"gateway-error", DP_RETRY_GATEWAY_ERROR},
        {"reset", DP_RETRY_RESET},
        {"connect-failure", DP_RETRY_CONNECT_FAILURE},
        {"retriable-4xx", DP_RETRY_RETRIABLE_4XX},
        {"refused-stream", DP_RETRY_REFUSED_STREAM},
        {"retriable-status-codes", DP_RETRY_RETRIABLE_STATUS_CODES},
        {"retriable-headers", DP_RETRY_RETRIABLE_HEADERS},
        {"reset-before-request", DP_RETRY_RESET_BEFORE_REQUEST},
        {"http3-post-connect-failure", DP_RETRY_HTTP3_POST_CONNECT_FAILURE},
        {"cancelled", DP_RETRY_GRPC_CANCELLED},
        {"deadline-exceeded", DP_RETRY_GRPC_DEADLINE_EXCEEDED},
        {"internal", DP_RETRY_GRPC_INTERNAL},
        {"resource-exhausted", DP_RETRY_GRPC_RESOURCE_EXHAUSTED},
        {"unavailable", DP_RETRY_GRPC_UNAVAILABLE},
    };
    uint32_t flags = 0;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] != ',')
            j++;
        size_t a = i, b = j;
        while (a < b && (s[a] == ' ' || s[a] == '\t'))
            a++;
        while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t'))
            b--;
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
            if (strlen(names[k].name) == b - a && memcmp(names[k].name, s + a, b - a) == 0)
                flags |= names[k].flag;
        }
        i = j + 1;
    }
    return flags;
}
