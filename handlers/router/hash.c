#include "handlers/router/hash.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* Header values are few; a longer list than this is hashed on its first values. */
#define MAX_HASH_VALUES 32

size_t dp_router_addr_str(const struct sockaddr *sa, bool with_port, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];
    int n;
    if (sa == NULL)
        return 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        if (inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip)) == NULL)
            return 0;
        n = with_port ? snprintf(buf, len, "%s:%u", ip, ntohs(in->sin_port))
                      : snprintf(buf, len, "%s", ip);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip)) == NULL)
            return 0;
        n = with_port ? snprintf(buf, len, "[%s]:%u", ip, ntohs(in6->sin6_port))
                      : snprintf(buf, len, "%s", ip);
    } else {
        return 0;
    }
    return n > 0 && (size_t)n < len ? (size_t)n : 0;
}

static int str_cmp(const void *a, const void *b)
{
    const dp_str_t *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = n ? memcmp(x->p, y->p, n) : 0;
    if (c)
        return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

static bool hash_header(const dp_http_head_t *req, const char *name, uint64_t *h)
{
    dp_str_t v[MAX_HASH_VALUES];
    size_t n = 0;
    if (name[0] == ':') {
        dp_str_t f = DP_STR_NULL;
        if (strcmp(name, ":authority") == 0)
            f = req->authority;
        else if (strcmp(name, ":path") == 0)
            f = req->path;
        else if (strcmp(name, ":method") == 0)
            f = req->method;
        else if (strcmp(name, ":scheme") == 0)
            f = req->scheme;
        if (f.p == NULL)
            return false;
        v[n++] = f;
    } else {
        size_t nl = strlen(name);
        for (uint32_t i = 0; i < req->headers.n && n < MAX_HASH_VALUES; i++) {
            const dp_header_t *e = &req->headers.v[i];
            if (e->name.n == nl && memcmp(e->name.p, name, nl) == 0)
                v[n++] = e->value;
        }
    }
    if (n == 0)
        return false;
    qsort(v, n, sizeof(v[0]), str_cmp);
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = XXH64(v[i].p ? v[i].p : "", v[i].n, x);
    *h = x;
    return true;
}

dp_str_t dp_router_cookie_value(const dp_http_head_t *req, const char *name)
{
    size_t nl = strlen(name);
    for (uint32_t i = 0; i < req->headers.n; i++) {
        const dp_header_t *e = &req->headers.v[i];
        if (!DP_STR_EQ(e->name, "cookie"))
            continue;
        const char *p = e->value.p, *end = p + e->value.n;
        while (p < end) {
            const char *semi = memchr(p, ';', (size_t)(end - p));
            const char *item_end = semi ? semi : end;
            while (p < item_end && *p == ' ')
                p++;
            const char *eq = memchr(p, '=', (size_t)(item_end - p));
            if (eq && (size_t)(eq - p) == nl && memcmp(p, name, nl) == 0) {
                const char *vs = eq + 1;
                size_t vn = (size_t)(item_end - vs);
                if (vn >= 2 && vs[0] == '"' && vs[vn - 1] == '"') {
                    vs++;
                    vn -= 2;
                }
                return (dp_str_t){vs, vn};
            }
            p = semi ? semi + 1 : end;
        }
    }
    return DP_STR_NULL;
}

static bool query_value(dp_str_t path, const char *name, dp_str_t *ret)
{
    const char *q = path.p ? memchr(path.p, '?', path.n) : NULL;
    if (q == NULL)
        return false;
    const char *end = path.p + path.n;
    const char *hash = memchr(q, '#', (size_t)(end - q));
    if (hash)
        end = hash;
    size_t nl = strlen(name);
    const char *p = q + 1;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *item_end = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(item_end - p));
        const char *key_end = eq ? eq : item_end;
        if ((size_t)(key_end - p) == nl && memcmp(p, name, nl) == 0) {
            *ret = eq ? (dp_str_t){eq + 1, (size_t)(item_end - eq - 1)} : (dp_str_t){"", 0};
            return true;
        }
        p = amp ? amp + 1 : end;
    }
    return false;
}

/* Envoy's Http::Utility::makeSetCookieValue with http_only. */
static dp_str_t set_cookie(dp_pool_t *pool, const char *name, const char *value,
                           const dp_hash_policy_t *p)
{
    size_t cap = strlen(name) + strlen(value) + strlen(p->cookie_path) + 64;
    char *b = dp_pool_alloc(pool, cap);
    int n = snprintf(b, cap, "%s=\"%s\"", name, value);
    uint64_t max_age = p->cookie_ttl_ms / 1000;
    if (max_age)
        n += snprintf(b + n, cap - (size_t)n, "; Max-Age=%llu", (unsigned long long)max_age);
    if (p->cookie_path[0])
        n += snprintf(b + n, cap - (size_t)n, "; Path=%s", p->cookie_path);
    n += snprintf(b + n, cap - (size_t)n, "; HttpOnly");
    return (dp_str_t){b, (size_t)n};
}

bool dp_router_hash(const dp_hash_policy_t *p, size_t n, const dp_http_head_t *req,
                    const struct sockaddr *remote, const struct sockaddr *local, dp_pool_t *pool,
                    uint64_t *ret_hash, dp_str_t *ret_set_cookie)
{
    bool have = false;
    uint64_t hash = 0;
    *ret_set_cookie = DP_STR_NULL;
    for (size_t i = 0; i < n; i++) {
        uint64_t h = 0;
        bool got = false;
        switch (p[i].kind) {
        case DP_HASH_HEADER:
            got = hash_header(req, p[i].name, &h);
            break;
        case DP_HASH_COOKIE: {
            dp_str_t v = dp_router_cookie_value(req, p[i].name);
            if (v.p && v.n) {
                h = XXH64(v.p, v.n, 0);
                got = true;
            } else if (p[i].has_cookie_ttl && ret_set_cookie->p == NULL) {
                char a[128], b[64];
                size_t an = dp_router_addr_str(remote, true, a, sizeof(a));
                size_t bn = dp_router_addr_str(local, true, b, sizeof(b));
                if (an + bn < sizeof(a)) {
                    memcpy(a + an, b, bn);
                    char hex[17];
                    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)XXH64(a, an + bn, 0));
                    *ret_set_cookie = set_cookie(pool, p[i].name, hex, &p[i]);
                    h = XXH64(hex, 16, 0);
                    got = true;
                }
            }
            break;
        }
        case DP_HASH_SOURCE_IP: {
            char a[64];
            size_t an = dp_router_addr_str(remote, false, a, sizeof(a));
            if (an) {
                h = XXH64(a, an, 0);
                got = true;
            }
            break;
        }
        case DP_HASH_QUERY_PARAMETER: {
            dp_str_t v;
            if (query_value(req->path, p[i].name, &v)) {
                h = XXH64(v.p, v.n, 0);
                got = true;
            }
            break;
        }
        case DP_HASH_FILTER_STATE:
            break;
        }
        if (got) {
            uint64_t old = have ? (hash << 1) | (hash >> 63) : 0;
            hash = old ^ h;
            have = true;
        }
        if (p[i].terminal && have)
            break;
    }
    if (have)
        *ret_hash = hash;
    return have;
}
