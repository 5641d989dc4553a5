#include "xds/route_build.h"

#include <errno.h>

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/access_log.h"
#include "handlers/config.h"
#include "xds/pbwire.h"
#include "xds/typed_struct.h"

#define RC(x) ENVOY__CONFIG__ROUTE__V3__##x

typedef Envoy__Config__Route__V3__RouteConfiguration pb_rc_t;
typedef Envoy__Config__Route__V3__VirtualHost pb_vh_t;
typedef Envoy__Config__Route__V3__Route pb_route_t;
typedef Envoy__Config__Route__V3__RouteAction pb_action_t;
typedef Envoy__Type__Matcher__V3__StringMatcher pb_sm_t;
typedef Envoy__Config__Core__V3__HeaderValueOption pb_hvo_t;

/* Where the translation is, for error messages: the route config, vhost and route names. */
typedef struct bctx {
    dp_snapshot_t *s;
    dp_arena_t *a;
    const char *rc_name;
    char where[512]; /* "virtual_hosts[1] ('x').routes[0] ('y')" */
    char **reterr_msg;
} bctx_t;

static bool fail(bctx_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool fail(bctx_t *b, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    int rc = b->rc_name ? asprintf(b->reterr_msg, "route config '%s': %s%s%s", b->rc_name, b->where,
                                   b->where[0] ? "." : "", msg)
                        : asprintf(b->reterr_msg, "%s", msg);
    if (rc < 0)
        *b->reterr_msg = NULL;
    return false;
}

static dp_str_t astr(dp_arena_t *a, const char *s)
{
    if (s == NULL)
        s = "";
    size_t n = strlen(s);
    char *p = dp_arena_alloc(a, n + 1);
    memcpy(p, s, n);
    return (dp_str_t){p, n};
}

static dp_str_t astr_lower(dp_arena_t *a, const char *s)
{
    dp_str_t r = astr(a, s);
    for (size_t i = 0; i < r.n; i++)
        ((char *)r.p)[i] = (char)tolower((unsigned char)r.p[i]);
    return r;
}

/* A header value as literal text: "%%" is a '%' (Envoy's formatter escape); other %COMMAND%s
 * stay as written (dataplane/route.h). */
static dp_str_t astr_unescape_pct(dp_arena_t *a, const char *s)
{
    dp_str_t r = astr(a, s);
    char *p = (char *)r.p;
    size_t o = 0;
    for (size_t i = 0; i < r.n; i++) {
        p[o++] = p[i];
        if (p[i] == '%' && i + 1 < r.n && p[i + 1] == '%')
            i++;
    }
    p[o] = 0;
    r.n = o;
    return r;
}

/* Whether s has a '%' other than an escaped one ("%%"). */
static bool has_operator(const char *s)
{
    for (; *s; s++) {
        if (*s != '%')
            continue;
        if (s[1] != '%')
            return true;
        s++;
    }
    return false;
}

static uint64_t dur_ms(const Google__Protobuf__Duration *d)
{
    if (d == NULL || d->seconds < 0 || d->nanos < 0)
        return 0;
    return (uint64_t)d->seconds * 1000 + (uint64_t)d->nanos / 1000000;
}

static void regex_cleanup(void *p)
{
    dp_regex_free(p);
}

static dp_regex_t *regex(bctx_t *b, const Envoy__Type__Matcher__V3__RegexMatcher *m,
                         const char *field)
{
    if (m == NULL || m->regex == NULL) {
        fail(b, "%s: a regex is required", field);
        return NULL;
    }
    char *err = NULL;
    dp_regex_t *re = dp_regex_new(m->regex, strlen(m->regex), &err);
    if (re == NULL) {
        fail(b, "%s: '%s': %s", field, m->regex, err ? err : "does not compile");
        free(err);
        return NULL;
    }
    dp_arena_add_cleanup(b->a, regex_cleanup, re);
    return re;
}

static bool str_match(bctx_t *b, const pb_sm_t *m, dp_str_match_t *out, const char *field)
{
    memset(out, 0, sizeof(*out));
    out->ignore_case = m->ignore_case;
    char f[256];
    switch (m->match_pattern_case) {
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_EXACT:
        out->kind = DP_SM_EXACT;
        out->s = astr(b->a, m->exact);
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_PREFIX:
        out->kind = DP_SM_PREFIX;
        out->s = astr(b->a, m->prefix);
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SUFFIX:
        out->kind = DP_SM_SUFFIX;
        out->s = astr(b->a, m->suffix);
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_CONTAINS:
        out->kind = DP_SM_CONTAINS;
        out->s = astr(b->a, m->contains);
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SAFE_REGEX:
        out->kind = DP_SM_REGEX;
        snprintf(f, sizeof(f), "%s.safe_regex.regex", field);
        out->re = regex(b, m->safe_regex, f);
        return out->re != NULL;
    default:
        return fail(b,
                    "%s: a match pattern (exact, prefix, suffix, contains or safe_regex) is "
                    "required",
                    field);
    }
    return true;
}

/* Envoy's HeaderUtility::isModifiableHeader: pseudo-headers and host may not be changed
 * through headers_to_add/remove. */
static bool modifiable(const char *name)
{
    return name[0] != ':' && strcasecmp(name, "host") != 0;
}

static bool header_ops(bctx_t *b, size_t n_add, pb_hvo_t *const *add, size_t n_rm, char *const *rm,
                       const char *dir, dp_header_ops_t *out)
{
    memset(out, 0, sizeof(*out));
    if (n_rm) {
        dp_str_t *v = dp_arena_alloc(b->a, n_rm * sizeof(*v));
        for (size_t i = 0; i < n_rm; i++) {
            if (rm[i][0] == '\0')
                return fail(b, "%s_headers_to_remove[%zu]: must not be empty", dir, i);
            if (!modifiable(rm[i]))
                return fail(b,
                            "%s_headers_to_remove[%zu]: ':-prefixed or host headers may not "
                            "be removed ('%s')",
                            dir, i, rm[i]);
            v[i] = astr_lower(b->a, rm[i]);
        }
        out->remove = v;
        out->n_remove = n_rm;
    }
    if (n_add) {
        dp_header_add_t *v = dp_arena_alloc(b->a, n_add * sizeof(*v));
        for (size_t i = 0; i < n_add; i++) {
            const pb_hvo_t *o = add[i];
            if (o->header == NULL || o->header->key == NULL || o->header->key[0] == '\0')
                return fail(b, "%s_headers_to_add[%zu].header.key: must not be empty", dir, i);
            if (!modifiable(o->header->key))
                return fail(b,
                            "%s_headers_to_add[%zu]: ':-prefixed or host headers may not be "
                            "modified ('%s')",
                            dir, i, o->header->key);
            v[i].name = astr_lower(b->a, o->header->key);
            if (o->header->raw_value.len) {
                char *p = dp_arena_alloc(b->a, o->header->raw_value.len + 1);
                memcpy(p, o->header->raw_value.data, o->header->raw_value.len);
                v[i].value = (dp_str_t){p, o->header->raw_value.len};
            } else {
                v[i].value = astr_unescape_pct(b->a, o->header->value);
                /* A '%' that is not half of "%%" starts a command operator: formatted per
                 * request, with the access log's operators. */
                if (has_operator(o->header->value)) {
                    char *err = NULL;
                    if (dp_access_format_compile(b->a, o->header->value, &v[i].fmt, &err) < 0) {
                        bool r = fail(b, "%s_headers_to_add[%zu] ('%s').value: %s", dir, i,
                                      o->header->key, err ? err : "invalid");
                        free(err);
                        return r;
                    }
                }
            }
            if (o->append) {
                if (o->append_action != 0)
                    return fail(b,
                                "%s_headers_to_add[%zu]: append and append_action are "
                                "mutually exclusive",
                                dir, i);
                v[i].action = o->append->value ? DP_HDR_APPEND_IF_EXISTS_OR_ADD
                                               : DP_HDR_OVERWRITE_IF_EXISTS_OR_ADD;
            } else if ((unsigned)o->append_action <= 3) {
                v[i].action = (dp_header_append_t)o->append_action;
            } else {
                return fail(b, "%s_headers_to_add[%zu].append_action: unknown value %d", dir, i,
                            (int)o->append_action);
            }
            v[i].keep_empty_value = o->keep_empty_value;
        }
        out->add = v;
        out->n_add = n_add;
    }
    return true;
}

static int fconf_cmp(const void *x, const void *y)
{
    return strcmp(((const dp_route_filter_conf_t *)x)->filter_name,
                  ((const dp_route_filter_conf_t *)y)->filter_name);
}

/* One typed_per_filter_config entry: kept as received, and built by the filter's config half
 * when skiff implements that filter (the runtime finds it with dp_stream_route_config). */
static bool filter_conf_set(bctx_t *b, dp_route_filter_conf_t *e, const char *key,
                            const Google__Protobuf__Any *any)
{
    dp_arena_t *a = b->a;
    e->filter_name = dp_arena_strdup(a, key ? key : "");
    const char *type_url = any && any->type_url ? any->type_url : "";
    const uint8_t *vbuf = any ? any->value.data : NULL;
    size_t vlen = any ? any->value.len : 0;
    char *ts_type = NULL, *ts_err = NULL;
    uint8_t *ts_buf = NULL;
    int ts = xds_typed_struct_unwrap(type_url, vbuf, vlen, &ts_type, &ts_buf, &vlen, &ts_err);
    if (ts == -EINVAL) {
        /* Only a config skiff reads must convert; others are kept as they are. */
        bool known = handlers_config_known(ts_type);
        if (known)
            fail(b, "typed_per_filter_config['%s']: %s", e->filter_name, ts_err ? ts_err : "");
        free(ts_err);
        free(ts_type);
        ts_type = NULL;
        if (known)
            return false;
    }
    if (ts == 0) {
        type_url = ts_type;
        vbuf = ts_buf;
    }
    e->type_url = dp_arena_strdup(a, type_url);
    if (vlen) {
        uint8_t *p = dp_arena_alloc(a, vlen);
        memcpy(p, vbuf, vlen);
        e->value = p;
        e->len = vlen;
    }
    free(ts_type);
    free(ts_buf);
    e->conf = NULL;
    handlers_config_ctx_t ctx = {
        .arena = a, .stats = b->s->stats, .filter_name = e->filter_name, .per_route = true};
    char *err = NULL;
    int rc = handlers_config_new(&ctx, e->type_url, e->value, e->len, &e->conf, &err);
    if (rc == -EINVAL) {
        fail(b, "typed_per_filter_config['%s']: %s", e->filter_name, err ? err : "invalid");
        free(err);
        return false;
    }
    return true;
}

/* A typed_per_filter_config map (each level has its own generated entry type, all of them
 * {key, value}), sorted by filter name for lookups. */
#define FILTER_CONFS(B, N, ENTRIES, OUT)                                                  \
    do {                                                                                  \
        memset((OUT), 0, sizeof(*(OUT)));                                                 \
        if ((N) == 0)                                                                     \
            break;                                                                        \
        dp_route_filter_conf_t *v_ = dp_arena_alloc((B)->a, (N) * sizeof(*v_));           \
        for (size_t i_ = 0; i_ < (N); i_++) {                                             \
            if (!filter_conf_set((B), &v_[i_], (ENTRIES)[i_]->key, (ENTRIES)[i_]->value)) \
                return false;                                                             \
        }                                                                                 \
        qsort(v_, (N), sizeof(*v_), fconf_cmp);                                           \
        (OUT)->v = v_;                                                                    \
        (OUT)->n = (N);                                                                   \
    } while (0)

static bool header_matcher(bctx_t *b, const Envoy__Config__Route__V3__HeaderMatcher *h,
                           dp_header_match_t *out, const char *field)
{
    memset(out, 0, sizeof(*out));
    if (h->name == NULL || h->name[0] == '\0')
        return fail(b, "%s.name: must not be empty", field);
    out->name = astr_lower(b->a, h->name);
    out->invert = h->invert_match;
    out->treat_missing_as_empty = h->treat_missing_header_as_empty;
    out->kind = DP_HM_STRING;
    char f[300];
    switch (h->header_match_specifier_case) {
    case RC(HEADER_MATCHER__HEADER_MATCH_SPECIFIER_EXACT_MATCH):
        /* Envoy: an empty deprecated exact_match matches any value. */
        out->sm = (dp_str_match_t){.kind = h->exact_match[0] ? DP_SM_EXACT : DP_SM_PREFIX,
                                   .s = astr(b->a, h->exact_match)};
        break;
    case RC(HEADER_MATCHER__HEADER_MATCH_SPECIFIER_PREFIX_MATCH):
        out->sm = (dp_str_match_t){.kind = DP_SM_PREFIX, .s = astr(b->a, h->prefix_match)};
        break;
    case RC(HEADER_MATCHER__HEADER_MATCH_SPECIFIER_SUFFIX_MATCH):
        out->sm = (dp_str_match_t){.kind = DP_SM_SUFFIX, .s = astr(b->a, h->suffix_match)};
        break;
    case RC(HEADER_MATCHER__HEADER_MATCH_SPECIFIER_CONTAINS_MATCH):
        out->sm = (dp_str_match_t){.kind = DP_SM_CONTAINS, .s = astr(b->a, h->contains_match)};
        break;
    case RC(HEADER_MATCHER__HEADER_MATCH_SPECIFIER_SAFE_REGEX_MATCH):
        snprintf(f, sizeof(f), "%s.safe_regex_match.regex", field);
        out->sm.kind = DP_SM_REGEX;
        out->sm.re = regex(b, h->safe_regex_match, f);
        return out->sm.re != NULL;
    case RC(HEADER_MATCHER__HEADER_MATCH_SPECIFIER_STRING_MATCH):
        snprintf(f, sizeof(f), "%s.string_match", field);
        return str_match(b, h->string_match, &out->sm, f);
    case RC(HEADER_MATCHER__HEADER_MATCH_SPECIFIER_PRESENT_MATCH):
        out->kind = DP_HM_PRESENT;
        out->present = h->present_match;
        break;
    case RC(HEADER_MATCHER__HEADER_MATCH_SPECIFIER_RANGE_MATCH):
        out->kind = DP_HM_RANGE;
        out->range_start = h->range_match ? h->range_match->start : 0;
        out->range_end = h->range_match ? h->range_match->end : 0;
        break;
    default:
        /* No specifier: Envoy treats the matcher as present_match: true. */
        out->kind = DP_HM_PRESENT;
        out->present = true;
        break;
    }
    return true;
}

int xds_str_match_build(dp_arena_t *a, const Envoy__Type__Matcher__V3__StringMatcher *m,
                        const char *field, dp_str_match_t *ret, char **reterr_msg)
{
    bctx_t b = {.a = a, .reterr_msg = reterr_msg};
    return str_match(&b, m, ret, field) ? 0 : -EINVAL;
}

int xds_header_match_build(dp_arena_t *a, const Envoy__Config__Route__V3__HeaderMatcher *h,
                           const char *field, dp_header_match_t *ret, char **reterr_msg)
{
    bctx_t b = {.a = a, .reterr_msg = reterr_msg};
    return header_matcher(&b, h, ret, field) ? 0 : -EINVAL;
}

static bool route_match(bctx_t *b, const Envoy__Config__Route__V3__RouteMatch *m,
                        dp_route_match_t *out)
{
    memset(out, 0, sizeof(*out));
    if (m == NULL)
        return fail(b, "match: is required");
    out->case_sensitive = m->case_sensitive == NULL || m->case_sensitive->value;
    switch (m->path_specifier_case) {
    case RC(ROUTE_MATCH__PATH_SPECIFIER_PREFIX):
        out->kind = DP_PM_PREFIX;
        out->path = astr(b->a, m->prefix);
        break;
    case RC(ROUTE_MATCH__PATH_SPECIFIER_PATH):
        out->kind = DP_PM_PATH;
        out->path = astr(b->a, m->path);
        break;
    case RC(ROUTE_MATCH__PATH_SPECIFIER_PATH_SEPARATED_PREFIX): {
        const char *p = m->path_separated_prefix;
        size_t n = strlen(p);
        /* Envoy's validation: starts with '/', no '?', '#', and no trailing '/'. */
        if (n == 0 || p[0] != '/' || strpbrk(p, "?#") || (n > 1 && p[n - 1] == '/'))
            return fail(b,
                        "match.path_separated_prefix: '%s' must start with '/' and contain "
                        "no '?', '#' or trailing '/'",
                        p);
        out->kind = DP_PM_SEPARATED_PREFIX;
        out->path = astr(b->a, p);
        break;
    }
    case RC(ROUTE_MATCH__PATH_SPECIFIER_SAFE_REGEX):
        out->kind = DP_PM_REGEX;
        out->re = regex(b, m->safe_regex, "match.safe_regex.regex");
        if (out->re == NULL)
            return false;
        break;
    case RC(ROUTE_MATCH__PATH_SPECIFIER_CONNECT_MATCHER):
        out->kind = DP_PM_CONNECT;
        break;
    case RC(ROUTE_MATCH__PATH_SPECIFIER_PATH_MATCH_POLICY):
        out->kind = DP_PM_NEVER;
        break;
    default:
        return fail(b, "match: a path specifier (prefix, path, safe_regex, "
                       "path_separated_prefix or connect_matcher) is required");
    }
    out->grpc = m->grpc != NULL;
    if (m->tls_context || m->n_dynamic_metadata)
        out->kind = DP_PM_NEVER;
    if (m->n_headers) {
        dp_header_match_t *h = dp_arena_alloc(b->a, m->n_headers * sizeof(*h));
        for (size_t i = 0; i < m->n_headers; i++) {
            char f[64];
            snprintf(f, sizeof(f), "match.headers[%zu]", i);
            if (!header_matcher(b, m->headers[i], &h[i], f))
                return false;
        }
        out->headers = h;
        out->n_headers = m->n_headers;
    }
    if (m->n_query_parameters) {
        dp_query_match_t *q = dp_arena_alloc(b->a, m->n_query_parameters * sizeof(*q));
        for (size_t i = 0; i < m->n_query_parameters; i++) {
            const Envoy__Config__Route__V3__QueryParameterMatcher *qm = m->query_parameters[i];
            char f[64];
            snprintf(f, sizeof(f), "match.query_parameters[%zu]", i);
            if (qm->name == NULL || qm->name[0] == '\0')
                return fail(b, "%s.name: must not be empty", f);
            q[i].name = astr(b->a, qm->name);
            if (qm->query_parameter_match_specifier_case ==
                RC(QUERY_PARAMETER_MATCHER__QUERY_PARAMETER_MATCH_SPECIFIER_STRING_MATCH)) {
                strcat(f, ".string_match");
                if (!str_match(b, qm->string_match, &q[i].sm, f))
                    return false;
            } else if (qm->query_parameter_match_specifier_case ==
                       RC(QUERY_PARAMETER_MATCHER__QUERY_PARAMETER_MATCH_SPECIFIER_PRESENT_MATCH)) {
                q[i].present_only = true;
                q[i].present = qm->present_match;
            } else {
                /* No specifier: the parameter must be present. */
                q[i].present_only = true;
                q[i].present = true;
            }
        }
        out->query = q;
        out->n_query = m->n_query_parameters;
    }
    return true;
}

/* Envoy's retry_on names (router/retry_state_impl.cc and the x-envoy-retry-on docs). */
static dp_retry_policy_t *retry_policy(bctx_t *b, const Envoy__Config__Route__V3__RetryPolicy *p)
{
    dp_retry_policy_t *r = dp_arena_alloc(b->a, sizeof(*r));
    r->retry_on = dp_retry_on_parse(p->retry_on, strlen(p->retry_on));
    r->num_retries = p->num_retries ? p->num_retries->value : 1;
    r->per_try_timeout_ms = dur_ms(p->per_try_timeout);
    r->per_try_idle_timeout_ms = dur_ms(p->per_try_idle_timeout);
    if (p->n_retriable_status_codes) {
        uint32_t *c = dp_arena_alloc(b->a, p->n_retriable_status_codes * sizeof(*c));
        memcpy(c, p->retriable_status_codes, p->n_retriable_status_codes * sizeof(*c));
        r->retriable_status_codes = c;
        r->n_retriable_status_codes = p->n_retriable_status_codes;
    }
    for (size_t i = 0; i < p->n_retry_host_predicate; i++) {
        const char *n = p->retry_host_predicate[i]->name;
        if (n && strcmp(n, "envoy.retry_host_predicates.previous_hosts") == 0)
            r->previous_hosts = true;
    }
    r->previous_priorities =
        p->retry_priority && p->retry_priority->name &&
        strcmp(p->retry_priority->name, "envoy.retry_priorities.previous_priorities") == 0;
    r->host_selection_retry_max_attempts =
        p->host_selection_retry_max_attempts ? p->host_selection_retry_max_attempts : 1;
    /* Envoy's back-off: base 25 ms, max 10 x base, when unset. */
    r->backoff_base_ms = 25;
    if (p->retry_back_off && p->retry_back_off->base_interval)
        r->backoff_base_ms = dur_ms(p->retry_back_off->base_interval);
    r->backoff_max_ms = r->backoff_base_ms * 10;
    if (p->retry_back_off && p->retry_back_off->max_interval)
        r->backoff_max_ms = dur_ms(p->retry_back_off->max_interval);
    return r;
}

static bool hash_policies(bctx_t *b, const pb_action_t *ra, dp_route_t *r)
{
    if (ra->n_hash_policy == 0)
        return true;
    dp_hash_policy_t *h = dp_arena_alloc(b->a, ra->n_hash_policy * sizeof(*h));
    for (size_t i = 0; i < ra->n_hash_policy; i++) {
        const Envoy__Config__Route__V3__RouteAction__HashPolicy *p = ra->hash_policy[i];
        h[i].terminal = p->terminal;
        h[i].cookie_path = "";
        switch (p->policy_specifier_case) {
        case RC(ROUTE_ACTION__HASH_POLICY__POLICY_SPECIFIER_HEADER):
            h[i].kind = DP_HASH_HEADER;
            h[i].name = astr_lower(b->a, p->header->header_name).p;
            break;
        case RC(ROUTE_ACTION__HASH_POLICY__POLICY_SPECIFIER_COOKIE):
            h[i].kind = DP_HASH_COOKIE;
            h[i].name = dp_arena_strdup(b->a, p->cookie->name);
            h[i].has_cookie_ttl = p->cookie->ttl != NULL;
            h[i].cookie_ttl_ms = dur_ms(p->cookie->ttl);
            h[i].cookie_path = dp_arena_strdup(b->a, p->cookie->path ? p->cookie->path : "");
            break;
        case RC(ROUTE_ACTION__HASH_POLICY__POLICY_SPECIFIER_CONNECTION_PROPERTIES):
            h[i].kind = DP_HASH_SOURCE_IP;
            h[i].name = "";
            break;
        case RC(ROUTE_ACTION__HASH_POLICY__POLICY_SPECIFIER_QUERY_PARAMETER):
            h[i].kind = DP_HASH_QUERY_PARAMETER;
            h[i].name = dp_arena_strdup(b->a, p->query_parameter->name);
            break;
        case RC(ROUTE_ACTION__HASH_POLICY__POLICY_SPECIFIER_FILTER_STATE):
            h[i].kind = DP_HASH_FILTER_STATE;
            h[i].name = dp_arena_strdup(b->a, p->filter_state->key);
            break;
        default:
            return fail(b, "route.hash_policy[%zu]: a policy specifier is required", i);
        }
    }
    r->hash = h;
    r->n_hash = ra->n_hash_policy;
    return true;
}

static bool regex_rewrite(bctx_t *b, const Envoy__Type__Matcher__V3__RegexMatchAndSubstitute *rr,
                          const char *field, dp_route_t *r)
{
    char f[128];
    snprintf(f, sizeof(f), "%s.pattern.regex", field);
    r->regex_rewrite = regex(b, rr->pattern, f);
    if (r->regex_rewrite == NULL)
        return false;
    char *sub = dp_regex_sub_from_re2(rr->substitution ? rr->substitution : "");
    r->regex_sub = dp_arena_strdup(b->a, sub);
    free(sub);
    return true;
}

static bool mirror_policies(bctx_t *b, const pb_action_t *ra, dp_route_t *r)
{
    if (ra->n_request_mirror_policies == 0)
        return true;
    dp_mirror_policy_t *m = dp_arena_alloc(b->a, ra->n_request_mirror_policies * sizeof(*m));
    for (size_t i = 0; i < ra->n_request_mirror_policies; i++) {
        const Envoy__Config__Route__V3__RouteAction__RequestMirrorPolicy *p =
            ra->request_mirror_policies[i];
        if (p->cluster[0] && p->cluster_header[0])
            return fail(b,
                        "route.request_mirror_policies[%zu]: only one of cluster and "
                        "cluster_header may be set",
                        i);
        if (p->cluster[0] == '\0' && p->cluster_header[0] == '\0')
            return fail(b,
                        "route.request_mirror_policies[%zu]: cluster or cluster_header is "
                        "required",
                        i);
        if (p->cluster[0])
            m[i].cluster = dp_arena_strdup(b->a, p->cluster);
        else
            m[i].cluster_header = astr_lower(b->a, p->cluster_header).p;
        m[i].numerator = 100;
        m[i].denominator = 100;
        const Envoy__Type__V3__FractionalPercent *fp =
            p->runtime_fraction ? p->runtime_fraction->default_value : NULL;
        if (p->runtime_fraction) {
            static const uint32_t denominators[] = {100, 10000, 1000000};
            m[i].numerator = fp ? fp->numerator : 0;
            m[i].denominator =
                fp && (unsigned)fp->denominator < 3 ? denominators[fp->denominator] : 100;
            if (m[i].numerator > m[i].denominator)
                m[i].numerator = m[i].denominator; /* Envoy caps it at 100% */
        }
        m[i].has_trace_sampled = p->trace_sampled != NULL;
        m[i].trace_sampled = p->trace_sampled && p->trace_sampled->value;
        m[i].disable_shadow_host_suffix_append = p->disable_shadow_host_suffix_append;
    }
    r->mirrors = m;
    r->n_mirrors = ra->n_request_mirror_policies;
    return true;
}

static bool route_action(bctx_t *b, const pb_action_t *ra, dp_route_t *r)
{
    switch (ra->cluster_specifier_case) {
    case RC(ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER):
        if (ra->cluster[0] == '\0')
            return fail(b, "route.cluster: must not be empty");
        r->kind = DP_ROUTE_CLUSTER;
        r->cluster = dp_arena_strdup(b->a, ra->cluster);
        break;
    case RC(ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER_HEADER):
        if (ra->cluster_header[0] == '\0')
            return fail(b, "route.cluster_header: must not be empty");
        r->kind = DP_ROUTE_CLUSTER_HEADER;
        r->cluster_header = astr_lower(b->a, ra->cluster_header).p;
        break;
    case RC(ROUTE_ACTION__CLUSTER_SPECIFIER_WEIGHTED_CLUSTERS): {
        const Envoy__Config__Route__V3__WeightedCluster *wc = ra->weighted_clusters;
        if (wc->n_clusters == 0)
            return fail(b, "route.weighted_clusters.clusters: must not be empty");
        dp_route_weighted_t *w = dp_arena_alloc(b->a, wc->n_clusters * sizeof(*w));
        uint64_t total = 0;
        for (size_t i = 0; i < wc->n_clusters; i++) {
            const Envoy__Config__Route__V3__WeightedCluster__ClusterWeight *cw = wc->clusters[i];
            if (cw->name[0] == '\0')
                return fail(b,
                            "route.weighted_clusters.clusters[%zu].name: must not be empty "
                            "(cluster_header entries are not supported)",
                            i);
            w[i].name = dp_arena_strdup(b->a, cw->name);
            w[i].weight = cw->weight ? cw->weight->value : 0;
            total += w[i].weight;
            if (cw->host_rewrite_specifier_case ==
                    RC(WEIGHTED_CLUSTER__CLUSTER_WEIGHT__HOST_REWRITE_SPECIFIER_HOST_REWRITE_LITERAL) &&
                cw->host_rewrite_literal[0])
                w[i].host_rewrite = dp_arena_strdup(b->a, cw->host_rewrite_literal);
            char dir[64];
            snprintf(dir, sizeof(dir), "route.weighted_clusters.clusters[%zu].request", i);
            if (!header_ops(b, cw->n_request_headers_to_add, cw->request_headers_to_add,
                            cw->n_request_headers_to_remove, cw->request_headers_to_remove, dir,
                            &w[i].req))
                return false;
            snprintf(dir, sizeof(dir), "route.weighted_clusters.clusters[%zu].response", i);
            if (!header_ops(b, cw->n_response_headers_to_add, cw->response_headers_to_add,
                            cw->n_response_headers_to_remove, cw->response_headers_to_remove, dir,
                            &w[i].resp))
                return false;
            FILTER_CONFS(b, cw->n_typed_per_filter_config, cw->typed_per_filter_config,
                         &w[i].filter_confs);
        }
        if (total == 0 || total > UINT32_MAX)
            return fail(b,
                        "route.weighted_clusters: the sum of the weights must be in "
                        "1..4294967295 (it is %llu)",
                        (unsigned long long)total);
        /* The deprecated total_weight, when given, must be the sum (as Envoy checks). */
        if (wc->total_weight && wc->total_weight->value && wc->total_weight->value != total)
            return fail(b,
                        "route.weighted_clusters.total_weight: %u is not the sum of the "
                        "weights (%llu)",
                        wc->total_weight->value, (unsigned long long)total);
        r->kind = DP_ROUTE_WEIGHTED;
        r->weighted = w;
        r->n_weighted = wc->n_clusters;
        r->total_weight = (uint32_t)total;
        break;
    }
    default:
        return fail(b, "route: cluster_specifier_plugin and inline_cluster_specifier_plugin are "
                       "not supported; one of cluster, cluster_header or weighted_clusters is "
                       "required");
    }
    switch (ra->cluster_not_found_response_code) {
    case RC(ROUTE_ACTION__CLUSTER_NOT_FOUND_RESPONSE_CODE__NOT_FOUND):
        r->cluster_not_found_code = 404;
        break;
    case RC(ROUTE_ACTION__CLUSTER_NOT_FOUND_RESPONSE_CODE__INTERNAL_SERVER_ERROR):
        r->cluster_not_found_code = 500;
        break;
    default:
        r->cluster_not_found_code = 503;
        break;
    }
    if (ra->prefix_rewrite[0])
        r->prefix_rewrite = dp_arena_strdup(b->a, ra->prefix_rewrite);
    if (ra->regex_rewrite) {
        if (r->prefix_rewrite)
            return fail(b, "route: prefix_rewrite and regex_rewrite are mutually exclusive");
        if (!regex_rewrite(b, ra->regex_rewrite, "route.regex_rewrite", r))
            return false;
    }
    switch (ra->host_rewrite_specifier_case) {
    case RC(ROUTE_ACTION__HOST_REWRITE_SPECIFIER_HOST_REWRITE_LITERAL):
        if (ra->host_rewrite_literal[0])
            r->host_rewrite = dp_arena_strdup(b->a, ra->host_rewrite_literal);
        break;
    case RC(ROUTE_ACTION__HOST_REWRITE_SPECIFIER_AUTO_HOST_REWRITE):
        r->auto_host_rewrite = ra->auto_host_rewrite && ra->auto_host_rewrite->value;
        break;
    case RC(ROUTE_ACTION__HOST_REWRITE_SPECIFIER_HOST_REWRITE_HEADER):
        if (ra->host_rewrite_header[0])
            r->host_rewrite_header = astr_lower(b->a, ra->host_rewrite_header).p;
        break;
    default:
        break;
    }
    /* Envoy's route timeout is 15 s when the field is absent; 0 disables it. */
    r->timeout_ms = ra->timeout ? dur_ms(ra->timeout) : 15000;
    r->idle_timeout_ms = dur_ms(ra->idle_timeout);
    r->has_max_grpc_timeout = ra->max_grpc_timeout != NULL;
    r->max_grpc_timeout_ms = dur_ms(ra->max_grpc_timeout);
    if (ra->max_stream_duration) {
        const Envoy__Config__Route__V3__RouteAction__MaxStreamDuration *msd =
            ra->max_stream_duration;
        r->max_stream_duration_ms = dur_ms(msd->max_stream_duration);
        r->has_grpc_timeout_header_max = msd->grpc_timeout_header_max != NULL;
        r->grpc_timeout_header_max_ms = dur_ms(msd->grpc_timeout_header_max);
        r->grpc_timeout_header_offset_ms = dur_ms(msd->grpc_timeout_header_offset);
    }
    if (ra->retry_policy)
        r->retry = retry_policy(b, ra->retry_policy);
    for (size_t i = 0; i < ra->n_upgrade_configs; i++) {
        const char *t = ra->upgrade_configs[i]->upgrade_type;
        if (t && strcasecmp(t, "websocket") == 0) {
            r->websocket_set = true;
            r->websocket_enabled =
                ra->upgrade_configs[i]->enabled == NULL || ra->upgrade_configs[i]->enabled->value;
        }
    }
    return hash_policies(b, ra, r) && mirror_policies(b, ra, r);
}

static bool redirect_action(bctx_t *b, const Envoy__Config__Route__V3__RedirectAction *ra,
                            dp_route_t *r)
{
    r->kind = DP_ROUTE_REDIRECT;
    if (ra->scheme_rewrite_specifier_case ==
            RC(REDIRECT_ACTION__SCHEME_REWRITE_SPECIFIER_HTTPS_REDIRECT) &&
        ra->https_redirect)
        r->scheme_redirect = "https";
    else if (ra->scheme_rewrite_specifier_case ==
                 RC(REDIRECT_ACTION__SCHEME_REWRITE_SPECIFIER_SCHEME_REDIRECT) &&
             ra->scheme_redirect[0])
        r->scheme_redirect = astr_lower(b->a, ra->scheme_redirect).p;
    if (ra->host_redirect[0])
        r->host_redirect = dp_arena_strdup(b->a, ra->host_redirect);
    r->port_redirect = ra->port_redirect;
    if (ra->port_redirect > 65535)
        return fail(b, "redirect.port_redirect: %u is not a port", ra->port_redirect);
    switch (ra->path_rewrite_specifier_case) {
    case RC(REDIRECT_ACTION__PATH_REWRITE_SPECIFIER_PATH_REDIRECT):
        if (ra->path_redirect[0]) {
            r->path_redirect = dp_arena_strdup(b->a, ra->path_redirect);
            r->path_redirect_has_query = strchr(ra->path_redirect, '?') != NULL;
        }
        break;
    case RC(REDIRECT_ACTION__PATH_REWRITE_SPECIFIER_PREFIX_REWRITE):
        if (ra->prefix_rewrite[0])
            r->prefix_rewrite = dp_arena_strdup(b->a, ra->prefix_rewrite);
        break;
    case RC(REDIRECT_ACTION__PATH_REWRITE_SPECIFIER_REGEX_REWRITE):
        if (!regex_rewrite(b, ra->regex_rewrite, "redirect.regex_rewrite", r))
            return false;
        break;
    default:
        break;
    }
    r->strip_query = ra->strip_query;
    static const int codes[] = {301, 302, 303, 307, 308};
    if ((unsigned)ra->response_code >= 5)
        return fail(b, "redirect.response_code: unknown value %d", (int)ra->response_code);
    r->redirect_code = codes[ra->response_code];
    return true;
}

static bool direct_action(bctx_t *b, const Envoy__Config__Route__V3__DirectResponseAction *d,
                          uint32_t max_body, dp_route_t *r)
{
    r->kind = DP_ROUTE_DIRECT;
    if (d->status < 200 || d->status >= 600)
        return fail(b, "direct_response.status: %u is not in 200..599", d->status);
    r->direct_status = (int)d->status;
    r->direct_body = DP_STR_NULL;
    const Envoy__Config__Core__V3__DataSource *ds = d->body;
    if (ds == NULL)
        return true;
    const void *p = NULL;
    size_t n = 0;
    switch (ds->specifier_case) {
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING:
        p = ds->inline_string;
        n = strlen(ds->inline_string);
        break;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES:
        p = ds->inline_bytes.data;
        n = ds->inline_bytes.len;
        break;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_FILENAME:
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_ENVIRONMENT_VARIABLE:
        return fail(b, "direct_response.body: only inline_string and inline_bytes are "
                       "supported");
    default:
        return true;
    }
    if (n > max_body)
        return fail(b,
                    "direct_response.body: %zu bytes is over the limit of %u "
                    "(max_direct_response_body_size_bytes)",
                    n, max_body);
    char *copy = dp_arena_alloc(b->a, n + 1);
    if (n)
        memcpy(copy, p, n);
    r->direct_body = (dp_str_t){copy, n};
    return true;
}

static bool route(bctx_t *b, const pb_route_t *pr, uint32_t max_body, dp_route_t *r)
{
    r->name = dp_arena_strdup(b->a, pr->name ? pr->name : "");
    if (!route_match(b, pr->match, &r->match))
        return false;
    switch (pr->action_case) {
    case RC(ROUTE__ACTION_ROUTE):
        if (!route_action(b, pr->route, r))
            return false;
        break;
    case RC(ROUTE__ACTION_REDIRECT):
        if (!redirect_action(b, pr->redirect, r))
            return false;
        break;
    case RC(ROUTE__ACTION_DIRECT_RESPONSE):
        if (!direct_action(b, pr->direct_response, max_body, r))
            return false;
        break;
    case RC(ROUTE__ACTION_NON_FORWARDING_ACTION):
    case RC(ROUTE__ACTION_FILTER_ACTION):
        r->kind = DP_ROUTE_NON_FORWARDING;
        break;
    default:
        return fail(b, "an action (route, redirect, direct_response) is required");
    }
    if (!header_ops(b, pr->n_request_headers_to_add, pr->request_headers_to_add,
                    pr->n_request_headers_to_remove, pr->request_headers_to_remove, "request",
                    &r->req) ||
        !header_ops(b, pr->n_response_headers_to_add, pr->response_headers_to_add,
                    pr->n_response_headers_to_remove, pr->response_headers_to_remove, "response",
                    &r->resp))
        return false;
    FILTER_CONFS(b, pr->n_typed_per_filter_config, pr->typed_per_filter_config, &r->filter_confs);
    if (pr->decorator && pr->decorator->operation && pr->decorator->operation[0])
        r->decorator_operation = dp_arena_strdup(b->a, pr->decorator->operation);
    return true;
}

/* ---- domains ---- */

typedef struct dom {
    dp_domain_t d;
    size_t vh_index, dom_index;
} dom_t;

static int exact_cmp(const void *x, const void *y)
{
    const dp_str_t *a = &((const dp_domain_t *)x)->s, *b = &((const dp_domain_t *)y)->s;
    size_t n = a->n < b->n ? a->n : b->n;
    int c = memcmp(a->p, b->p, n);
    if (c)
        return c;
    return a->n < b->n ? -1 : a->n > b->n;
}

/* Longest first, then by bytes (a stable order for equal lengths). */
static int wild_cmp(const void *x, const void *y)
{
    const dp_str_t *a = &((const dp_domain_t *)x)->s, *b = &((const dp_domain_t *)y)->s;
    if (a->n != b->n)
        return a->n > b->n ? -1 : 1;
    return memcmp(a->p, b->p, a->n);
}

static int dom_cmp(const void *x, const void *y)
{
    return exact_cmp(&((const dom_t *)x)->d, &((const dom_t *)y)->d);
}

/* Sorts the domains of one class, refusing a duplicate (Envoy: "Only unique values for domains
 * are permitted"), and copies them into the arena. */
static bool domain_table(bctx_t *b, const pb_rc_t *pr, dom_t *v, size_t n,
                         int (*cmp)(const void *, const void *), const dp_domain_t **ret,
                         size_t *ret_n)
{
    *ret = NULL;
    *ret_n = n;
    if (n == 0)
        return true;
    qsort(v, n, sizeof(*v), dom_cmp);
    for (size_t i = 1; i < n; i++) {
        if (dom_cmp(&v[i - 1], &v[i]) == 0) {
            const dom_t *first =
                v[i - 1].vh_index < v[i].vh_index ||
                        (v[i - 1].vh_index == v[i].vh_index && v[i - 1].dom_index < v[i].dom_index)
                    ? &v[i - 1]
                    : &v[i];
            const dom_t *dup = first == &v[i] ? &v[i - 1] : &v[i];
            b->where[0] = '\0';
            return fail(b,
                        "virtual_hosts[%zu] ('%s').domains[%zu]: Only unique values for "
                        "domains are permitted. Duplicate entry of domain %s (also in "
                        "virtual_hosts[%zu] ('%s'))",
                        dup->vh_index, pr->virtual_hosts[dup->vh_index]->name, dup->dom_index,
                        pr->virtual_hosts[dup->vh_index]->domains[dup->dom_index], first->vh_index,
                        pr->virtual_hosts[first->vh_index]->name);
        }
    }
    dp_domain_t *out = dp_arena_alloc(b->a, n * sizeof(*out));
    for (size_t i = 0; i < n; i++)
        out[i] = v[i].d;
    qsort(out, n, sizeof(*out), cmp);
    *ret = out;
    return true;
}

static bool domains(bctx_t *b, const pb_rc_t *pr, dp_route_config_t *rc, dp_vhost_t *vhs)
{
    size_t total = 0;
    for (size_t i = 0; i < pr->n_virtual_hosts; i++)
        total += pr->virtual_hosts[i]->n_domains;
    dom_t *ex = calloc(total + 1, sizeof(*ex)), *suf = calloc(total + 1, sizeof(*suf)),
          *pre = calloc(total + 1, sizeof(*pre));
    if (ex == NULL || suf == NULL || pre == NULL)
        abort();
    size_t ne = 0, ns = 0, np = 0;
    long any_vh = -1;
    bool ok = true;
    for (size_t i = 0; i < pr->n_virtual_hosts && ok; i++) {
        const pb_vh_t *v = pr->virtual_hosts[i];
        for (size_t j = 0; j < v->n_domains && ok; j++) {
            const char *d = v->domains[j];
            size_t n = strlen(d);
            dom_t e = {.vh_index = i, .dom_index = j};
            e.d.vh = &vhs[i];
            if (n == 0) {
                snprintf(b->where, sizeof(b->where), "virtual_hosts[%zu] ('%s')", i, v->name);
                ok = fail(b, "domains[%zu]: must not be empty", j);
            } else if (strcmp(d, "*") == 0) {
                if (any_vh >= 0) {
                    b->where[0] = '\0';
                    ok = fail(b,
                              "virtual_hosts[%zu] ('%s').domains[%zu]: Only a single "
                              "wildcard domain is permitted (also in virtual_hosts[%ld] "
                              "('%s'))",
                              i, v->name, j, any_vh, pr->virtual_hosts[any_vh]->name);
                }
                any_vh = (long)i;
                rc->any = &vhs[i];
            } else if (d[0] == '*') {
                e.d.s = astr_lower(b->a, d + 1);
                suf[ns++] = e;
            } else if (d[n - 1] == '*') {
                dp_str_t s = astr_lower(b->a, d);
                s.n--;
                e.d.s = s;
                pre[np++] = e;
            } else {
                e.d.s = astr_lower(b->a, d);
                ex[ne++] = e;
            }
        }
    }
    ok = ok && domain_table(b, pr, ex, ne, exact_cmp, &rc->exact, &rc->n_exact) &&
         domain_table(b, pr, suf, ns, wild_cmp, &rc->suffix, &rc->n_suffix) &&
         domain_table(b, pr, pre, np, wild_cmp, &rc->prefix, &rc->n_prefix);
    free(ex);
    free(suf);
    free(pre);
    return ok;
}

dp_route_config_t *xds_route_build(dp_snapshot_t *s, const pb_rc_t *pr, char **reterr_msg)
{
    bctx_t b = {
        .s = s, .a = s->arena, .rc_name = pr->name ? pr->name : "", .reterr_msg = reterr_msg};
    dp_route_config_t *rc = dp_arena_alloc(b.a, sizeof(*rc));
    rc->name = dp_arena_strdup(b.a, b.rc_name);
    rc->ignore_port_in_host_matching = pr->ignore_port_in_host_matching;
    rc->most_specific_header_mutations_wins = pr->most_specific_header_mutations_wins;
    rc->max_direct_response_body_size = pr->max_direct_response_body_size_bytes
                                            ? pr->max_direct_response_body_size_bytes->value
                                            : 4096;
    if (!header_ops(&b, pr->n_request_headers_to_add, pr->request_headers_to_add,
                    pr->n_request_headers_to_remove, pr->request_headers_to_remove, "request",
                    &rc->req) ||
        !header_ops(&b, pr->n_response_headers_to_add, pr->response_headers_to_add,
                    pr->n_response_headers_to_remove, pr->response_headers_to_remove, "response",
                    &rc->resp))
        return NULL;
    FILTER_CONFS(&b, pr->n_typed_per_filter_config, pr->typed_per_filter_config, &rc->filter_confs);

    dp_vhost_t *vhs =
        pr->n_virtual_hosts ? dp_arena_alloc(b.a, pr->n_virtual_hosts * sizeof(*vhs)) : NULL;
    for (size_t i = 0; i < pr->n_virtual_hosts; i++) {
        const pb_vh_t *v = pr->virtual_hosts[i];
        dp_vhost_t *vh = &vhs[i];
        snprintf(b.where, sizeof(b.where), "virtual_hosts[%zu] ('%s')", i, v->name);
        if (v->name == NULL || v->name[0] == '\0')
            return fail(&b, "name: must not be empty"), NULL;
        if (v->n_domains == 0)
            return fail(&b, "domains: must not be empty"), NULL;
        vh->rc = rc;
        vh->name = dp_arena_strdup(b.a, v->name);
        const char **d = dp_arena_alloc(b.a, v->n_domains * sizeof(*d));
        for (size_t j = 0; j < v->n_domains; j++)
            d[j] = dp_arena_strdup(b.a, v->domains[j]);
        vh->domains = d;
        vh->n_domains = v->n_domains;
        vh->include_request_attempt_count = v->include_request_attempt_count;
        vh->include_attempt_count_in_response = v->include_attempt_count_in_response;
        if (!header_ops(&b, v->n_request_headers_to_add, v->request_headers_to_add,
                        v->n_request_headers_to_remove, v->request_headers_to_remove, "request",
                        &vh->req) ||
            !header_ops(&b, v->n_response_headers_to_add, v->response_headers_to_add,
                        v->n_response_headers_to_remove, v->response_headers_to_remove, "response",
                        &vh->resp))
            return NULL;
        FILTER_CONFS(&b, v->n_typed_per_filter_config, v->typed_per_filter_config,
                     &vh->filter_confs);
        if (v->retry_policy)
            vh->retry = retry_policy(&b, v->retry_policy);
        if (v->n_routes) {
            dp_route_t *r = dp_arena_alloc(b.a, v->n_routes * sizeof(*r));
            size_t base = strlen(b.where);
            for (size_t j = 0; j < v->n_routes; j++) {
                const pb_route_t *pr_j = v->routes[j];
                snprintf(b.where + base, sizeof(b.where) - base, ".routes[%zu]%s%s%s", j,
                         pr_j->name && pr_j->name[0] ? " ('" : "", pr_j->name ? pr_j->name : "",
                         pr_j->name && pr_j->name[0] ? "')" : "");
                if (!route(&b, pr_j, rc->max_direct_response_body_size, &r[j]))
                    return NULL;
                /* A route without its own retry policy uses the vhost's. */
                if (r[j].retry == NULL && vh->retry &&
                    (r[j].kind == DP_ROUTE_CLUSTER || r[j].kind == DP_ROUTE_WEIGHTED ||
                     r[j].kind == DP_ROUTE_CLUSTER_HEADER))
                    r[j].retry = vh->retry;
            }
            vh->routes = r;
            vh->n_routes = v->n_routes;
        }
    }
    b.where[0] = '\0';
    rc->vhosts = vhs;
    rc->n_vhosts = pr->n_virtual_hosts;
    if (!domains(&b, pr, rc, vhs))
        return NULL;
    return rc;
}
