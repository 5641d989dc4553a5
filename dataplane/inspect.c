#include "dataplane/inspect.h"

#include <stdbool.h>
#include <string.h>

/* ---- TLS ClientHello ---- */

#define TLS_RECORD_HANDSHAKE       0x16
#define TLS_HANDSHAKE_CLIENT_HELLO 0x01
#define TLS_RECORD_MAX             (16384 + 2048) /* TLSCiphertext's limit; a plaintext one is smaller */
#define EXT_SERVER_NAME            0
#define EXT_ALPN                   16

typedef struct rd {
    const uint8_t *p;
    size_t n, off;
    bool bad;
} rd_t;

static uint32_t rd_u(rd_t *r, size_t bytes)
{
    if (r->bad || r->n - r->off < bytes) {
        r->bad = true;
        return 0;
    }
    uint32_t v = 0;
    for (size_t i = 0; i < bytes; i++)
        v = v << 8 | r->p[r->off + i];
    r->off += bytes;
    return v;
}

/* A sub-reader over the next len bytes (a length-prefixed vector). */
static rd_t rd_sub(rd_t *r, size_t len)
{
    rd_t s = {.p = r->p + r->off, .n = len};
    if (r->bad || r->n - r->off < len) {
        r->bad = true;
        s.bad = true;
        s.n = 0;
        return s;
    }
    r->off += len;
    return s;
}

static bool parse_sni(rd_t *ext, dp_tls_hello_t *out)
{
    rd_t list = rd_sub(ext, rd_u(ext, 2));
    while (!list.bad && list.off < list.n) {
        uint32_t type = rd_u(&list, 1);
        rd_t name = rd_sub(&list, rd_u(&list, 2));
        if (list.bad)
            return false;
        if (type != 0 || out->sni[0])
            continue;
        if (name.n == 0 || name.n >= sizeof(out->sni))
            return false;
        for (size_t i = 0; i < name.n; i++) {
            uint8_t c = name.p[i];
            if (c == 0)
                return false;
            out->sni[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        out->sni[name.n] = '\0';
    }
    return !list.bad && !ext->bad;
}

static bool parse_alpn(rd_t *ext, dp_tls_hello_t *out)
{
    rd_t list = rd_sub(ext, rd_u(ext, 2));
    while (!list.bad && list.off < list.n) {
        rd_t name = rd_sub(&list, rd_u(&list, 1));
        if (list.bad || name.n == 0)
            return false;
        if (out->n_alpn >= DP_TLS_MAX_ALPN || name.n >= sizeof(out->alpn[0]))
            continue;
        memcpy(out->alpn[out->n_alpn], name.p, name.n);
        out->alpn[out->n_alpn][name.n] = '\0';
        out->n_alpn++;
    }
    return !list.bad && !ext->bad;
}

static dp_inspect_result_t parse_client_hello(const uint8_t *body, size_t n, dp_tls_hello_t *out)
{
    memset(out, 0, sizeof(*out));
    rd_t r = {.p = body, .n = n};
    rd_u(&r, 2);    /* legacy_version */
    rd_sub(&r, 32); /* random */
    rd_t sid = rd_sub(&r, rd_u(&r, 1));
    if (sid.n > 32)
        return DP_INSPECT_ERROR;
    rd_t suites = rd_sub(&r, rd_u(&r, 2));
    rd_sub(&r, rd_u(&r, 1)); /* compression methods */
    if (r.bad || suites.n == 0 || suites.n % 2)
        return DP_INSPECT_ERROR;
    if (r.off == r.n)
        return DP_INSPECT_FOUND; /* no extensions */
    rd_t exts = rd_sub(&r, rd_u(&r, 2));
    if (r.bad || r.off != r.n)
        return DP_INSPECT_ERROR;
    while (exts.off < exts.n) {
        uint32_t type = rd_u(&exts, 2);
        rd_t ext = rd_sub(&exts, rd_u(&exts, 2));
        if (exts.bad)
            return DP_INSPECT_ERROR;
        if (type == EXT_SERVER_NAME && !parse_sni(&ext, out))
            return DP_INSPECT_ERROR;
        if (type == EXT_ALPN && !parse_alpn(&ext, out))
            return DP_INSPECT_ERROR;
    }
    return DP_INSPECT_FOUND;
}

dp_inspect_result_t dp_tls_inspect(const uint8_t *buf, size_t len, dp_tls_hello_t *out)
{
    /* Cheap early answers on the first bytes, so a plain-text protocol is let through at once. */
    if (len >= 1 && buf[0] != TLS_RECORD_HANDSHAKE)
        return DP_INSPECT_NONE;
    if (len >= 2 && buf[1] != 3)
        return DP_INSPECT_NONE;
    if (len >= 5) {
        size_t rlen = (size_t)buf[3] << 8 | buf[4];
        if (rlen == 0 || rlen > TLS_RECORD_MAX)
            return DP_INSPECT_NONE;
    }
    if (len >= 6 && buf[5] != TLS_HANDSHAKE_CLIENT_HELLO)
        return DP_INSPECT_NONE;
    if (len < 9)
        return DP_INSPECT_MORE;
    size_t hlen = (size_t)buf[6] << 16 | (size_t)buf[7] << 8 | buf[8];
    if (hlen + 4 > DP_TLS_INSPECT_MAX)
        return DP_INSPECT_ERROR;
    size_t rlen = (size_t)buf[3] << 8 | buf[4];
    if (rlen >= hlen + 4) {
        /* The whole ClientHello in the first record: parse it in place. */
        if (len < 5 + 4 + hlen)
            return DP_INSPECT_MORE;
        return parse_client_hello(buf + 9, hlen, out);
    }
    /* Fragmented over several handshake records: gather the fragments. */
    uint8_t hs[DP_TLS_INSPECT_MAX];
    size_t have = 0, off = 0;
    while (have < hlen + 4) {
        if (len - off < 5)
            return DP_INSPECT_MORE;
        if (buf[off] != TLS_RECORD_HANDSHAKE || buf[off + 1] != 3)
            return DP_INSPECT_ERROR;
        size_t r = (size_t)buf[off + 3] << 8 | buf[off + 4];
        if (r == 0 || r > TLS_RECORD_MAX)
            return DP_INSPECT_ERROR;
        off += 5;
        size_t take = r < len - off ? r : len - off;
        if (take > hlen + 4 - have)
            take = hlen + 4 - have; /* what follows the ClientHello does not matter */
        memcpy(hs + have, buf + off, take);
        have += take;
        off += take;
        if (have < hlen + 4 && take < r)
            return DP_INSPECT_MORE;
    }
    return parse_client_hello(hs + 4, hlen, out);
}

/* ---- HTTP ---- */

static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static bool is_tchar(uint8_t c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

dp_inspect_result_t dp_http_inspect(const uint8_t *buf, size_t len, const char **proto)
{
    size_t pl = sizeof(H2_PREFACE) - 1;
    size_t m = len < pl ? len : pl;
    if (memcmp(buf, H2_PREFACE, m) == 0) {
        if (len < pl)
            return DP_INSPECT_MORE;
        *proto = "h2c";
        return DP_INSPECT_FOUND;
    }
    if (len > DP_HTTP_INSPECT_MAX)
        len = DP_HTTP_INSPECT_MAX;
    size_t i = 0;
    while (i < len && is_tchar(buf[i]))
        i++;
    if (i == len)
        return len == DP_HTTP_INSPECT_MAX ? DP_INSPECT_NONE : DP_INSPECT_MORE;
    if (i == 0 || buf[i] != ' ')
        return DP_INSPECT_NONE;
    size_t t = ++i;
    while (i < len && buf[i] > 0x20 && buf[i] < 0x7f)
        i++;
    if (i == len)
        return len == DP_HTTP_INSPECT_MAX ? DP_INSPECT_NONE : DP_INSPECT_MORE;
    if (i == t || buf[i] != ' ')
        return DP_INSPECT_NONE;
    i++;
    static const char ver[] = "HTTP/1.";
    for (size_t k = 0; k < sizeof(ver) - 1; k++, i++) {
        if (i == len)
            return DP_INSPECT_MORE;
        if (buf[i] != (uint8_t)ver[k])
            return DP_INSPECT_NONE;
    }
    if (i == len)
        return DP_INSPECT_MORE;
    uint8_t minor = buf[i++];
    if (minor != '0' && minor != '1')
        return DP_INSPECT_NONE;
    if (i == len)
        return DP_INSPECT_MORE;
    if (buf[i] == '\r') {
        if (++i == len)
            return DP_INSPECT_MORE;
    }
    if (buf[i] != '\n')
        return DP_INSPECT_NONE;
    *proto = minor == '1' ? "http/1.1" : "http/1.0";
    return DP_INSPECT_FOUND;
}
