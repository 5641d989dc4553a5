#include "dataplane/http1_parse.h"

#include <llhttp.h>
#include <string.h>

/* RFC 9110 §5.6.2 tchar: ALPHA, DIGIT and "!#$%&'*+-.^_`|~", as a bit per ASCII byte (every
 * byte of every field name comes here). */
static bool is_tchar(unsigned char c)
{
    static const uint64_t lo = 0x03ff6cfa00000000ull, hi = 0x57ffffffc7fffffeull;
    if (c < 64)
        return (lo >> c) & 1;
    return c < 128 && ((hi >> (c - 64)) & 1);
}

/* Field value characters (RFC 9110 §5.5): VCHAR, obs-text, SP and HT. */
static bool is_value_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

#define ONES 0x0101010101010101ull
#define HIGH 0x8080808080808080ull

/* Whether no byte of x is below 0x20 (HT included) or 0x7f; it may say no for a word that has
 * no such byte only after a byte that is one, so a "yes" is exact. */
static bool word_is_plain_value(uint64_t x)
{
    uint64_t y = x ^ (0x7f * ONES);
    uint64_t low = (x - 0x20 * ONES) & ~x & HIGH;
    uint64_t del = (y - ONES) & ~y & HIGH;
    return (low | del) == 0;
}

/* Whether all eight bytes of x are lower-case letters, digits or '-', as most header names
 * are. Every byte is below 0x80 when the sums are taken, so none carries into the next. */
static bool word_is_lower_token(uint64_t x)
{
    if (x & HIGH)
        return false;
    uint64_t lower = (x + 0x1f * ONES) & ~(x + 0x05 * ONES); /* 0x61..0x7a */
    uint64_t digit = (x + 0x50 * ONES) & ~(x + 0x46 * ONES); /* 0x30..0x39 */
    uint64_t d = x ^ (0x2d * ONES);
    uint64_t dash = ~(((d & ~HIGH) + ~HIGH) | d); /* high bit where the byte is '-' */
    return ((lower | digit | dash) & HIGH) == HIGH;
}

/* Whether every byte of p[0..n) passes byte_ok, eight bytes at a time while word_ok says so
 * (a last word overlapping the one before); from the first word it does not pass, byte by
 * byte. word_ok must only say yes for a word whose bytes all pass byte_ok. */
static inline bool all_bytes(const char *p, size_t n, bool (*word_ok)(uint64_t),
                             bool (*byte_ok)(unsigned char))
{
    size_t i = 0;
    uint64_t x;
    for (; i + 8 <= n; i += 8) {
        memcpy(&x, p + i, 8);
        if (!word_ok(x))
            break;
    }
    if (i < n && i + 8 > n && n >= 8) {
        memcpy(&x, p + n - 8, 8);
        if (word_ok(x))
            return true;
    }
    for (; i < n; i++) {
        if (!byte_ok((unsigned char)p[i]))
            return false;
    }
    return true;
}

/* Whether every byte of p[0..n) is a field value character. */
static bool value_ok(const char *p, size_t n)
{
    return all_bytes(p, n, word_is_plain_value, is_value_char);
}

/* Whether every byte of p[0..n) is a token character. */
static bool token_ok(const char *p, size_t n)
{
    return all_bytes(p, n, word_is_lower_token, is_tchar);
}

static int fail(int *st, const char **errp, int status, const char *err)
{
    *st = status;
    *errp = err;
    return -1;
}

static bool ieq(const char *a, size_t n, const char *lit)
{
    return dp_str_ieq((dp_str_t){a, n}, lit, strlen(lit));
}

/* The value of a field line whose name ends at colon, without surrounding whitespace. */
static dp_str_t field_value(const char *l, size_t n, size_t colon)
{
    size_t v = colon + 1, e = n;
    while (v < n && (l[v] == ' ' || l[v] == '\t'))
        v++;
    while (e > v && (l[e - 1] == ' ' || l[e - 1] == '\t'))
        e--;
    return (dp_str_t){l + v, e - v};
}

/* Splits a field line "name: value" (without its CRLF) strictly. */
static int split_field(const char *l, size_t n, dp_str_t *name, dp_str_t *value, const char **err)
{
    if (n == 0)
        return *err = "empty header line", -1;
    if (l[0] == ' ' || l[0] == '\t')
        return *err = "obsolete line folding", -1;
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)l[i]))
        i++;
    if (i == n)
        return *err = "header without a colon", -1;
    if (l[i] != ':') {
        if (l[i] == ' ' || l[i] == '\t')
            return *err = "whitespace before the colon", -1;
        return *err = "invalid character in a header name", -1;
    }
    if (i == 0)
        return *err = "empty header name", -1;
    *name = (dp_str_t){l, i};
    *value = field_value(l, n, i);
    if (!value_ok(value->p, value->n))
        return *err = "invalid character in a header value", -1;
    return 0;
}

void dp_h1_head_init(dp_h1_head_parser_t *hp, bool request, const dp_http_limits_t *lim)
{
    memset(hp, 0, sizeof(*hp));
    hp->request = request;
    hp->max_bytes = lim->max_header_bytes;
    hp->max_headers = lim->max_headers;
    hp->content_length = -1;
}

static int check_version(dp_h1_head_parser_t *hp, const char *v, size_t n)
{
    if (n == 8 && memcmp(v, "HTTP/1.1", 8) == 0)
        return 0;
    if (n == 8 && memcmp(v, "HTTP/1.0", 8) == 0) {
        hp->http10 = true;
        return 0;
    }
    return -1;
}

/* The HTTP methods llhttp knows (its HTTP map, not the RTSP one). */
#define METHOD_NAME(num, name, string) DP_STR(#string),
static const dp_str_t methods[] = {HTTP_METHOD_MAP(METHOD_NAME)};
#undef METHOD_NAME

static bool known_method(const char *m, size_t n)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (dp_str_eq(methods[i], m, n))
            return true;
    }
    return false;
}

static int check_request_line(dp_h1_head_parser_t *hp, const char *l, size_t n)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)l[i]))
        i++;
    if (i == 0 || i == n || l[i] != ' ')
        return fail(&hp->err_status, &hp->err, 400, "invalid method");
    if (!known_method(l, i))
        return fail(&hp->err_status, &hp->err, 400, "unknown method");
    if (i == 7 && memcmp(l, "CONNECT", 7) == 0)
        return fail(&hp->err_status, &hp->err, 400, "CONNECT is not supported");
    size_t t = ++i;
    while (i < n && (unsigned char)l[i] > 0x20 && (unsigned char)l[i] < 0x7f)
        i++;
    if (i == t)
        return fail(&hp->err_status, &hp->err, 400, "invalid request target");
    if (i == n)
        return fail(&hp->err_status, &hp->err, 400, "HTTP/0.9 is not supported");
    if (l[i] != ' ')
        return fail(&hp->err_status, &hp->err, 400, "invalid character in the request target");
    hp->absolute_form = l[t] != '/' && !(i - t == 1 && l[t] == '*');
    if (check_version(hp, l + i + 1, n - i - 1) < 0)
        return fail(&hp->err_status, &hp->err, 400, "invalid HTTP version");
    return 0;
}

static int check_status_line(dp_h1_head_parser_t *hp, const char *l, size_t n)
{
    if (n < 12 || check_version(hp, l, 8) < 0 || l[8] != ' ')
        return fail(&hp->err_status, &hp->err, 502, "invalid status line");
    int code = 0;
    for (int k = 9; k < 12; k++) {
        if (l[k] < '0' || l[k] > '9')
            return fail(&hp->err_status, &hp->err, 502, "invalid status code");
        code = code * 10 + (l[k] - '0');
    }
    if (code < 100)
        return fail(&hp->err_status, &hp->err, 502, "invalid status code");
    if (n > 12 && l[12] != ' ')
        return fail(&hp->err_status, &hp->err, 502, "invalid status line");
    for (size_t k = 13; k < n; k++) {
        if (!is_value_char((unsigned char)l[k]))
            return fail(&hp->err_status, &hp->err, 502, "invalid reason phrase");
    }
    hp->status_code = code;
    return 0;
}

/* Content-Length: 1..18 digits, so it always fits an int64_t. */
static int parse_length(dp_str_t v, int64_t *out)
{
    if (v.n == 0 || v.n > 18)
        return -1;
    int64_t x = 0;
    for (size_t i = 0; i < v.n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return -1;
        x = x * 10 + (v.p[i] - '0');
    }
    *out = x;
    return 0;
}

/* A head's field line, for what llhttp does not check: it refuses controls and separators in
 * names, controls in values, bare CR and LF, but accepts an obs-fold continuation line, a
 * space in a name (before the colon too) and an empty name (test_field_bytes pins this for
 * every byte). The framing fields (Content-Length, Transfer-Encoding, Host) are checked whole
 * here, since the scan decides on them before llhttp runs. */
static int check_field(dp_h1_head_parser_t *hp, const char *l, size_t n)
{
    int bad = hp->request ? 400 : 502;
    if (l[0] == ' ' || l[0] == '\t')
        return fail(&hp->err_status, &hp->err, bad, "obsolete line folding");
    const char *c = memchr(l, ':', n);
    if (c == NULL)
        return fail(&hp->err_status, &hp->err, bad, "header without a colon");
    size_t i = (size_t)(c - l);
    if (i == 0)
        return fail(&hp->err_status, &hp->err, bad, "empty header name");
    if (l[i - 1] == ' ' || l[i - 1] == '\t')
        return fail(&hp->err_status, &hp->err, bad, "whitespace before the colon");
    if (memchr(l, ' ', i) != NULL)
        return fail(&hp->err_status, &hp->err, bad, "invalid character in a header name");
    dp_str_t name = {l, i}, value;
    if (dp_str_ieq(name, "content-length", 14)) {
        if (hp->has_cl)
            return fail(&hp->err_status, &hp->err, bad, "multiple content-length headers");
        if (parse_length(field_value(l, n, i), &hp->content_length) < 0)
            return fail(&hp->err_status, &hp->err, bad, "invalid content-length");
        hp->has_cl = true;
    } else if (dp_str_ieq(name, "transfer-encoding", 17)) {
        value = field_value(l, n, i);
        if (!value_ok(value.p, value.n))
            return fail(&hp->err_status, &hp->err, bad, "invalid character in a header value");
        /* RFC 9112 §6.1: chunked must be the final coding; the proxy decodes no other coding,
         * so only exactly "chunked" is accepted (Envoy: 501 "unsupported transfer encoding"). */
        int st = hp->request ? 501 : 502;
        if (hp->has_te)
            return fail(&hp->err_status, &hp->err, st, "multiple transfer-encoding headers");
        if (!dp_str_ieq(value, "chunked", 7))
            return fail(&hp->err_status, &hp->err, st, "unsupported transfer encoding");
        hp->has_te = hp->chunked = true;
    } else if (hp->request && dp_str_ieq(name, "host", 4)) {
        if (hp->nhost++)
            return fail(&hp->err_status, &hp->err, 400, "multiple host headers");
    }
    return 0;
}

int dp_h1_head_scan(dp_h1_head_parser_t *hp, const char *buf, size_t len)
{
    if (hp->err_status)
        return -1;
    if (hp->head_len)
        return 1;
    /* Bounded: each pass consumes one line. */
    for (;;) {
        size_t from = hp->searched > hp->pos ? hp->searched : hp->pos;
        const char *nl = from < len ? memchr(buf + from, '\n', len - from) : NULL;
        if (nl == NULL) {
            hp->searched = len;
            if (len > hp->max_bytes)
                return fail(&hp->err_status, &hp->err, 431, "headers too large");
            return 0;
        }
        size_t lf = (size_t)(nl - buf);
        if (lf + 1 > hp->max_bytes)
            return fail(&hp->err_status, &hp->err, 431, "headers too large");
        size_t ls = hp->pos;
        int bad = hp->request ? 400 : 502;
        if (lf == ls || buf[lf - 1] != '\r')
            return fail(&hp->err_status, &hp->err, bad, "bare LF line ending");
        size_t le = lf - 1;
        hp->pos = hp->searched = lf + 1;
        if (memchr(buf + ls, '\r', le - ls) != NULL)
            return fail(&hp->err_status, &hp->err, bad, "bare CR");
        if (hp->lines == 0) {
            if (le == ls) {
                /* RFC 9112 §2.2: empty lines before the request line are ignored. */
                hp->start = hp->pos;
                continue;
            }
            if ((hp->request ? check_request_line : check_status_line)(hp, buf + ls, le - ls) < 0)
                return -1;
            hp->lines++;
            continue;
        }
        if (le == ls) {
            if (hp->has_cl && hp->has_te)
                return fail(&hp->err_status, &hp->err, bad,
                            "both content-length and transfer-encoding");
            if (hp->chunked && hp->http10)
                return fail(&hp->err_status, &hp->err, bad, "chunked on HTTP/1.0");
            /* RFC 9112 §3.2: an HTTP/1.1 request without Host (origin form) is 400. */
            if (hp->request && !hp->http10 && hp->nhost == 0 && !hp->absolute_form)
                return fail(&hp->err_status, &hp->err, 400, "missing host header");
            hp->head_len = hp->pos;
            return 1;
        }
        hp->lines++;
        if (++hp->nheaders > hp->max_headers)
            return fail(&hp->err_status, &hp->err, 431, "too many headers");
        if (check_field(hp, buf + ls, le - ls) < 0)
            return -1;
    }
}

/* ---- head building through llhttp ---- */

enum {
    CB_NONE,
    CB_FIELD,
    CB_VALUE
};

/* The parser runs over the pool's copy of the head, so a piece is taken where it lies (its
 * terminating NUL is written once the parser has passed it); a second piece of the same
 * element, which a head fed in one piece does not give, is joined in a new copy. */
static void append(dp_pool_t *pool, dp_str_t *s, const char *at, size_t n)
{
    if (n == 0)
        return; /* an empty value comes as 0 bytes at the next line: nothing of it to keep */
    if (s->p == NULL) {
        *s = (dp_str_t){at, n};
        return;
    }
    char *r = dp_pool_alloc(pool, s->n + n + 1);
    memcpy(r, s->p, s->n);
    memcpy(r + s->n, at, n);
    r[s->n + n] = '\0';
    s->p = r;
    s->n += n;
}

/* Called at the next field's name or at the end of the head: the parser is past the field's
 * ':' and its value's CR, where the NULs go. */
static void commit_field(dp_h1_head_parser_t *hp)
{
    if (hp->last_cb == CB_VALUE || hp->last_cb == CB_FIELD) {
        char *nm = (char *)hp->cur_name.p;
        dp_ascii_lower(nm, hp->cur_name.n);
        nm[hp->cur_name.n] = '\0';
        dp_str_t v = hp->cur_value.p ? hp->cur_value : (dp_str_t){"", 0};
        /* RFC 9110 §5.5: trailing whitespace is not part of the value. */
        while (v.n > 0 && (v.p[v.n - 1] == ' ' || v.p[v.n - 1] == '\t'))
            v.n--;
        if (hp->cur_value.p)
            ((char *)v.p)[v.n] = '\0';
        dp_headers_add_ref(&hp->head->headers, hp->pool, hp->cur_name, v);
    }
    hp->cur_name = hp->cur_value = DP_STR_NULL;
    hp->last_cb = CB_NONE;
}

static int hp_on_url(llhttp_t *p, const char *at, size_t n)
{
    dp_h1_head_parser_t *hp = p->data;
    append(hp->pool, &hp->url, at, n);
    return 0;
}

static int hp_on_field(llhttp_t *p, const char *at, size_t n)
{
    dp_h1_head_parser_t *hp = p->data;
    /* The head is fed in one piece, so a field name never arrives split. */
    if (hp->last_cb != CB_NONE)
        commit_field(hp);
    append(hp->pool, &hp->cur_name, at, n);
    hp->last_cb = CB_FIELD;
    return 0;
}

static int hp_on_value(llhttp_t *p, const char *at, size_t n)
{
    dp_h1_head_parser_t *hp = p->data;
    append(hp->pool, &hp->cur_value, at, n);
    hp->last_cb = CB_VALUE;
    return 0;
}

static int hp_on_headers_complete(llhttp_t *p)
{
    dp_h1_head_parser_t *hp = p->data;
    commit_field(hp);
    /* The body is decoded by dp_h1_body_feed(); llhttp sees only the head (1: no body). */
    return 1;
}

static const llhttp_settings_t head_settings = {
    .on_url = hp_on_url,
    .on_header_field = hp_on_field,
    .on_header_value = hp_on_value,
    .on_headers_complete = hp_on_headers_complete,
};

/* The next element of the comma-separated list v from *i on, without surrounding whitespace;
 * false at the end of the list. Empty elements are skipped. */
static bool next_element(dp_str_t v, size_t *i, dp_str_t *el)
{
    for (;;) {
        while (*i < v.n && (v.p[*i] == ' ' || v.p[*i] == '\t' || v.p[*i] == ','))
            (*i)++;
        if (*i >= v.n)
            return false;
        size_t s = *i;
        while (*i < v.n && v.p[*i] != ',')
            (*i)++;
        size_t e = *i;
        while (e > s && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t'))
            e--;
        if (e > s) {
            *el = (dp_str_t){v.p + s, e - s};
            return true;
        }
    }
}

/* Whether the comma-separated list v contains token tok (case-insensitive). */
static bool list_has(dp_str_t v, const char *tok)
{
    size_t i = 0;
    dp_str_t el;
    while (next_element(v, &i, &el)) {
        if (ieq(el.p, el.n, tok))
            return true;
    }
    return false;
}

/* The header names the codec acts on, told apart once per field (names are lower case here). */
enum {
    HK_OTHER,
    HK_CONNECTION,
    HK_KEEP_ALIVE,
    HK_PROXY_CONNECTION,
    HK_TRANSFER_ENCODING,
    HK_UPGRADE,
    HK_TE,
    HK_HOST,
    HK_EXPECT,
    HK_CONTENT_LENGTH
};

static int kind_of(dp_str_t n)
{
#define IS(lit) (memcmp(n.p, lit, sizeof(lit) - 1) == 0)
    switch (n.n) {
    case 2:
        return IS("te") ? HK_TE : HK_OTHER;
    case 4:
        return IS("host") ? HK_HOST : HK_OTHER;
    case 6:
        return IS("expect") ? HK_EXPECT : HK_OTHER;
    case 7:
        return IS("upgrade") ? HK_UPGRADE : HK_OTHER;
    case 10:
        return IS("connection") ? HK_CONNECTION : IS("keep-alive") ? HK_KEEP_ALIVE : HK_OTHER;
    case 14:
        return IS("content-length") ? HK_CONTENT_LENGTH : HK_OTHER;
    case 16:
        return IS("proxy-connection") ? HK_PROXY_CONNECTION : HK_OTHER;
    case 17:
        return IS("transfer-encoding") ? HK_TRANSFER_ENCODING : HK_OTHER;
    default:
        return HK_OTHER;
    }
#undef IS
}

/* The options of one connection header: close, keep-alive, upgrade, and whether it names any
 * other field (then named_by_connection() decides for each header). */
enum {
    CO_CLOSE = 1,
    CO_KEEP_ALIVE = 2,
    CO_UPGRADE = 4,
    CO_OTHER = 8
};

static unsigned conn_options(dp_str_t v)
{
    unsigned o = 0;
    size_t i = 0;
    dp_str_t el;
    while (next_element(v, &i, &el)) {
        if (ieq(el.p, el.n, "close"))
            o |= CO_CLOSE;
        else if (ieq(el.p, el.n, "keep-alive"))
            o |= CO_KEEP_ALIVE;
        else if (ieq(el.p, el.n, "upgrade"))
            o |= CO_UPGRADE;
        else
            o |= CO_OTHER;
    }
    return o;
}

/* Whether any connection header names field (lower-case) as hop-by-hop. Framing and Host are
 * never removed this way, so a client cannot make the proxy drop them. */
static bool named_by_connection(const dp_headers_t *h, dp_str_t field, int kind)
{
    if (kind == HK_CONTENT_LENGTH || kind == HK_HOST || kind == HK_UPGRADE)
        return false;
    char name[64];
    if (field.n >= sizeof(name))
        return false;
    memcpy(name, field.p, field.n);
    name[field.n] = '\0';
    for (uint32_t i = 0; i < h->n; i++) {
        if (DP_STR_EQ(h->v[i].name, "connection") && list_has(h->v[i].value, name))
            return true;
    }
    return false;
}

static dp_http_head_t *build_fail(dp_h1_head_parser_t *hp, const char *err)
{
    hp->err_status = hp->request ? 400 : 502;
    hp->err = err;
    return NULL;
}

/* An absolute-form target (RFC 9112 §3.2.2), "scheme://authority[/path][?query]", split where
 * it lies: the scheme is a letter and then letters, digits, '+', '-' or '.'; the authority is
 * not empty and has no userinfo (RFC 9110 §4.2.4: a recipient treats it as an error); the path
 * is the rest, "/" when there is none (a copy with '/' before it when a query follows the
 * authority directly). Every byte is already known to be visible ASCII. */
static int split_absolute(dp_pool_t *pool, dp_str_t url, dp_http_head_t *h)
{
    size_t i = 0;
    while (i < url.n && (((url.p[i] | 0x20) >= 'a' && (url.p[i] | 0x20) <= 'z') ||
                         (i > 0 && ((url.p[i] >= '0' && url.p[i] <= '9') || url.p[i] == '+' ||
                                    url.p[i] == '-' || url.p[i] == '.'))))
        i++;
    if (i == 0 || url.n - i < 3 || memcmp(url.p + i, "://", 3) != 0)
        return -1;
    h->scheme = (dp_str_t){url.p, i};
    size_t as = i + 3, ae = as;
    while (ae < url.n && url.p[ae] != '/' && url.p[ae] != '?' && url.p[ae] != '#') {
        if (url.p[ae] == '@')
            return -1;
        ae++;
    }
    if (ae == as)
        return -1;
    h->authority = (dp_str_t){url.p + as, ae - as};
    if (ae == url.n) {
        h->path = DP_STR("/");
    } else if (url.p[ae] == '/') {
        h->path = (dp_str_t){url.p + ae, url.n - ae};
    } else {
        char *p = dp_pool_alloc(pool, url.n - ae + 2);
        p[0] = '/';
        memcpy(p + 1, url.p + ae, url.n - ae);
        p[url.n - ae + 1] = '\0';
        h->path = (dp_str_t){p, url.n - ae + 1};
    }
    return 0;
}

dp_http_head_t *dp_h1_head_build(dp_h1_head_parser_t *hp, const char *buf, dp_pool_t *pool)
{
    hp->pool = pool;
    hp->head = dp_pool_calloc(pool, sizeof(*hp->head));
    dp_http_head_t *h = hp->head;
    h->content_length = -1;
    /* One copy of the whole head, which the header list and the target point into. */
    char *copy = dp_pool_alloc(pool, hp->head_len + 1);
    memcpy(copy, buf, hp->head_len);
    copy[hp->head_len] = '\0';
    /* The head is parsed in one call, so the parser lives only for it. */
    llhttp_t parser;
    llhttp_init(&parser, hp->request ? HTTP_REQUEST : HTTP_RESPONSE, &head_settings);
    parser.data = hp;
    llhttp_errno_t e = llhttp_execute(&parser, copy, hp->head_len);
    /* An upgrade (or a 101) pauses llhttp at the end of the head: the rest is another protocol. */
    if (e == HPE_PAUSED_UPGRADE && llhttp_get_error_pos(&parser) == copy + hp->head_len)
        e = HPE_OK;
    if (e != HPE_OK)
        return build_fail(hp, llhttp_get_error_reason(&parser));
    if (hp->url.p)
        ((char *)hp->url.p)[hp->url.n] = '\0'; /* the SP before the version */
    h->version = hp->http10 ? DP_HTTP_10 : DP_HTTP_11;

    /* Connection options, gathered before the header list is rewritten. */
    unsigned conn = 0;
    const dp_header_t *upg = NULL, *host = NULL;
    for (uint32_t i = 0; i < h->headers.n; i++) {
        const dp_header_t *f = &h->headers.v[i];
        switch (kind_of(f->name)) {
        case HK_CONNECTION:
            conn |= conn_options(f->value);
            break;
        case HK_UPGRADE:
            if (upg == NULL)
                upg = f;
            break;
        case HK_HOST:
            if (hp->request) {
                if (host != NULL)
                    return build_fail(hp, "multiple host headers");
                host = f;
            }
            break;
        default:
            break;
        }
    }
    bool conn_close = conn & CO_CLOSE, conn_keep = conn & CO_KEEP_ALIVE,
         conn_upgrade = conn & CO_UPGRADE;
    hp->keep_alive = hp->http10 ? (conn_keep && !conn_close) : !conn_close;

    if (hp->request) {
        /* The method as sent (llhttp knows it), ended by a NUL over the SP after it. */
        char *m = copy + hp->start;
        size_t mn = (size_t)((char *)memchr(m, ' ', hp->head_len - hp->start) - m);
        m[mn] = '\0';
        h->method = (dp_str_t){m, mn};
        h->scheme = DP_STR("http");
        h->path = hp->url;
        if (hp->absolute_form) {
            /* Absolute form (RFC 9112 §3.2.2): the target names scheme and authority. */
            if (split_absolute(pool, hp->url, h) < 0)
                return build_fail(hp, "invalid absolute-form request target");
        } else if (host != NULL) {
            h->authority = host->value;
        } else if (!hp->http10) {
            /* RFC 9112 §3.2: a 1.1 request without Host is 400. */
            return build_fail(hp, "missing host header");
        } else {
            h->authority = DP_STR("");
        }
        if (hp->chunked)
            hp->framing = DP_H1_BODY_CHUNKED;
        else if (hp->has_cl && hp->content_length > 0)
            hp->framing = DP_H1_BODY_LENGTH;
        else
            hp->framing = DP_H1_BODY_NONE;
        /* Upgrade (RFC 9110 §7.8): a body-less request with both headers. h2c is not offered. */
        hp->upgrade = upg != NULL && conn_upgrade && hp->framing == DP_H1_BODY_NONE &&
                      !dp_str_ieq(upg->value, "h2c", 3);
    } else {
        int st = hp->status_code;
        h->status = st;
        if (st < 200 || st == 204) {
            /* RFC 9110 §8.6, §6.1: these have no body and must not say they have one; a
             * length of 0 is dropped (an HTTP/2 peer would refuse it as well), anything else
             * refused, as Envoy does. */
            if (hp->has_te || (hp->has_cl && hp->content_length != 0))
                return build_fail(hp, "a 1xx or 204 response with content-length or "
                                      "transfer-encoding");
            if (hp->has_cl) {
                DP_HDR_REMOVE(&h->headers, "content-length");
                hp->has_cl = false;
            }
        }
        if (st < 200 || st == 204 || st == 304 || hp->req_was_head)
            hp->framing = DP_H1_BODY_NONE;
        else if (hp->chunked)
            hp->framing = DP_H1_BODY_CHUNKED;
        else if (hp->has_cl)
            hp->framing = hp->content_length > 0 ? DP_H1_BODY_LENGTH : DP_H1_BODY_NONE;
        else
            hp->framing = DP_H1_BODY_EOF;
        hp->upgrade = st == 101 && upg != NULL;
        if (hp->framing == DP_H1_BODY_EOF)
            hp->keep_alive = false;
    }
    h->content_length = hp->has_cl ? hp->content_length : -1;
    h->upgrade = hp->upgrade;

    /* Drop the hop-by-hop headers (RFC 9110 §7.6.1) in place. */
    uint32_t k = 0;
    bool conn_kept = false;
    for (uint32_t i = 0; i < h->headers.n; i++) {
        dp_header_t f = h->headers.v[i];
        bool drop = false;
        int kind = kind_of(f.name);
        switch (kind) {
        case HK_CONNECTION:
            /* An upgrade keeps one "connection: upgrade". */
            drop = !hp->upgrade || conn_kept;
            if (!drop) {
                f.value = DP_STR("upgrade");
                conn_kept = true;
            }
            break;
        case HK_KEEP_ALIVE:
        case HK_PROXY_CONNECTION:
        case HK_TRANSFER_ENCODING:
            drop = true;
            break;
        case HK_UPGRADE:
            drop = !hp->upgrade;
            break;
        case HK_TE:
            drop = !dp_str_ieq(f.value, "trailers", 8);
            break;
        case HK_HOST:
            drop = hp->request;
            break;
        case HK_EXPECT:
            if (hp->request && dp_str_ieq(f.value, "100-continue", 12)) {
                /* Answered by the codec itself (Envoy's default proxy_100_continue false). */
                drop = true;
                hp->expect_continue = !hp->http10 && hp->framing != DP_H1_BODY_NONE;
                break;
            }
            /* fall through */
        default:
            /* Only a connection header with an option other than close, keep-alive and
             * upgrade names a field that is not dropped anyway ("close" names itself). */
            drop = ((conn & CO_OTHER) || ((conn & CO_CLOSE) && DP_STR_EQ(f.name, "close"))) &&
                   named_by_connection(&h->headers, f.name, kind);
            break;
        }
        if (!drop)
            h->headers.v[k++] = f;
    }
    h->headers.n = k;
    return h;
}

/* ---- body ---- */

enum {
    CS_SIZE,
    CS_DATA,
    CS_DATA_CRLF,
    CS_TRAILER
};

#define CHUNK_LINE_MAX 4096

void dp_h1_body_init(dp_h1_body_parser_t *bp, dp_h1_framing_t framing, int64_t content_length,
                     const dp_http_limits_t *lim, dp_pool_t *pool)
{
    memset(bp, 0, sizeof(*bp));
    bp->framing = framing;
    bp->remaining = framing == DP_H1_BODY_LENGTH ? (uint64_t)content_length : 0;
    bp->state = CS_SIZE;
    bp->done = framing == DP_H1_BODY_NONE || (framing == DP_H1_BODY_LENGTH && !content_length);
    bp->max_bytes = lim->max_header_bytes;
    bp->max_headers = lim->max_headers;
    bp->pool = pool;
}

static long body_fail(dp_h1_body_parser_t *bp, int status, const char *err)
{
    bp->err_status = status;
    bp->err = err;
    return -1;
}

/* chunk-size [ BWS ";" chunk-ext ] (RFC 9112 §7.1), without the CRLF. */
static int parse_chunk_line(const char *l, size_t n, uint64_t *size)
{
    size_t i = 0;
    uint64_t v = 0;
    while (i < n && dp_hexval(l[i]) >= 0) {
        if (i == 15)
            return -1; /* 16 digits would pass 2^60; no body is that large */
        v = v * 16 + (uint64_t)dp_hexval(l[i]);
        i++;
    }
    if (i == 0)
        return -1;
    size_t j = i;
    while (j < n && (l[j] == ' ' || l[j] == '\t'))
        j++;
    if (j < n) {
        if (l[j] != ';')
            return -1;
        for (size_t k = j + 1; k < n; k++) {
            if (!is_value_char((unsigned char)l[k]))
                return -1;
        }
    } else if (j != i) {
        return -1; /* whitespace without an extension */
    }
    *size = v;
    return 0;
}

static long trailer_line(dp_h1_body_parser_t *bp, const char *l, size_t n)
{
    if (++bp->ntrailers > bp->max_headers)
        return body_fail(bp, 431, "too many trailers");
    dp_str_t name, value;
    const char *err;
    if (split_field(l, n, &name, &value, &err) < 0)
        return body_fail(bp, 400, err);
    /* RFC 9110 §6.5.1: framing, routing and connection fields are not allowed in trailers. */
    static const char *const forbidden[] = {
        "content-length", "transfer-encoding", "host",       "connection",      "te",
        "trailer",        "upgrade",           "keep-alive", "proxy-connection"};
    for (size_t i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++) {
        if (ieq(name.p, name.n, forbidden[i]))
            return 0;
    }
    if (bp->trailers == NULL)
        bp->trailers = dp_pool_calloc(bp->pool, sizeof(*bp->trailers));
    dp_headers_add(bp->trailers, bp->pool, name.p, name.n, value.p, value.n);
    dp_header_t *f = &bp->trailers->v[bp->trailers->n - 1];
    dp_ascii_lower((char *)f->name.p, f->name.n);
    return 0;
}

long dp_h1_body_feed(dp_h1_body_parser_t *bp, const char *buf, size_t len, dp_h1_data_fn fn,
                     void *ud)
{
    if (bp->err_status)
        return -1;
    if (bp->done || len == 0)
        return 0;
    if (bp->framing == DP_H1_BODY_EOF) {
        fn(ud, (const uint8_t *)buf, len);
        return (long)len;
    }
    if (bp->framing == DP_H1_BODY_LENGTH) {
        size_t n = len < bp->remaining ? len : (size_t)bp->remaining;
        bp->remaining -= n;
        bp->done = bp->remaining == 0;
        fn(ud, (const uint8_t *)buf, n);
        return (long)n;
    }
    size_t i = 0;
    while (i < len && !bp->done) {
        switch (bp->state) {
        case CS_SIZE:
        case CS_TRAILER: {
            const char *nl = memchr(buf + i, '\n', len - i);
            size_t cap = bp->state == CS_SIZE ? CHUNK_LINE_MAX : bp->max_bytes - bp->trailer_bytes;
            if (nl == NULL) {
                if (len - i > cap)
                    return body_fail(bp, bp->state == CS_SIZE ? 400 : 431,
                                     bp->state == CS_SIZE ? "chunk line too long"
                                                          : "trailers too large");
                return (long)i;
            }
            size_t lf = (size_t)(nl - buf);
            if (lf - i + 1 > cap)
                return body_fail(bp, bp->state == CS_SIZE ? 400 : 431,
                                 bp->state == CS_SIZE ? "chunk line too long"
                                                      : "trailers too large");
            if (lf == i || buf[lf - 1] != '\r')
                return body_fail(bp, 400, "bare LF in chunked encoding");
            size_t ln = lf - 1 - i;
            if (memchr(buf + i, '\r', ln) != NULL)
                return body_fail(bp, 400, "bare CR in chunked encoding");
            if (bp->state == CS_SIZE) {
                uint64_t size;
                if (parse_chunk_line(buf + i, ln, &size) < 0)
                    return body_fail(bp, 400, "invalid chunk size");
                if (size == 0) {
                    bp->state = CS_TRAILER;
                } else {
                    bp->remaining = size;
                    bp->state = CS_DATA;
                }
            } else {
                bp->trailer_bytes += (uint32_t)(ln + 2);
                if (ln == 0)
                    bp->done = true;
                else if (trailer_line(bp, buf + i, ln) < 0)
                    return -1;
            }
            i = lf + 1;
            break;
        }
        case CS_DATA: {
            size_t n = len - i < bp->remaining ? len - i : (size_t)bp->remaining;
            bp->remaining -= n;
            if (bp->remaining == 0)
                bp->state = CS_DATA_CRLF;
            bool more = fn(ud, (const uint8_t *)buf + i, n);
            i += n;
            if (!more)
                return (long)i;
            break;
        }
        case CS_DATA_CRLF:
            if (buf[i] != '\r' || (i + 1 < len && buf[i + 1] != '\n'))
                return body_fail(bp, 400, "missing CRLF after chunk data");
            if (i + 1 == len)
                return (long)i;
            i += 2;
            bp->state = CS_SIZE;
            break;
        }
    }
    return (long)i;
}

int dp_h1_body_eof(dp_h1_body_parser_t *bp)
{
    if (bp->done)
        return 0;
    if (bp->framing == DP_H1_BODY_EOF) {
        bp->done = true;
        return 0;
    }
    return -1;
}

bool dp_h1_field_ok(dp_str_t name, dp_str_t value)
{
    return name.n > 0 && token_ok(name.p, name.n) && value_ok(value.p, value.n);
}

bool dp_h1_visible(dp_str_t s)
{
    if (s.n == 0)
        return false;
    for (size_t i = 0; i < s.n; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (c <= 0x20 || c >= 0x7f)
            return false;
    }
    return true;
}

const char *dp_h1_reason(int status)
{
    /* RFC 9110 §15 and the registry's other common codes. */
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 102:
        return "Processing";
    case 103:
        return "Early Hints";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 205:
        return "Reset Content";
    case 206:
        return "Partial Content";
    case 207:
        return "Multi-Status";
    case 208:
        return "Already Reported";
    case 226:
        return "IM Used";
    case 300:
        return "Multiple Choices";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 305:
        return "Use Proxy";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 402:
        return "Payment Required";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 407:
        return "Proxy Authentication Required";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Entity";
    case 423:
        return "Locked";
    case 424:
        return "Failed Dependency";
    case 425:
        return "Too Early";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 451:
        return "Unavailable For Legal Reasons";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    case 506:
        return "Variant Also Negotiates";
    case 507:
        return "Insufficient Storage";
    case 508:
        return "Loop Detected";
    case 510:
        return "Not Extended";
    case 511:
        return "Network Authentication Required";
    default:
        return "Unknown";
    }
}
