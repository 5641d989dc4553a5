/* The listener filters' parsers: ClientHellos (real ones from openssl s_client in the fuzz
 * corpus, and built ones) and HTTP request starts. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/inspect.h"
#include "tests/unit/check_run.h"

static uint8_t *slurp(const char *name, size_t *len)
{
    char path[1024];
    const char *dir = getenv("CORPUS");
    snprintf(path, sizeof(path), "%s/%s", dir ? dir : "tests/fuzz/tls_inspector/corpus", name);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s", path);
    uint8_t *buf = malloc(1 << 16);
    *len = fread(buf, 1, 1 << 16, f);
    fclose(f);
    return buf;
}

/* A ClientHello record with the given extensions block (already encoded). */
static size_t build_hello(uint8_t *out, const uint8_t *ext, size_t ext_len)
{
    uint8_t body[4096];
    size_t n = 0;
    body[n++] = 3, body[n++] = 3;        /* legacy_version */
    memset(body + n, 0xab, 32), n += 32; /* random */
    body[n++] = 0;                       /* session id */
    body[n++] = 0, body[n++] = 2;        /* cipher suites */
    body[n++] = 0x13, body[n++] = 0x01;
    body[n++] = 1, body[n++] = 0; /* compression: null */
    body[n++] = (uint8_t)(ext_len >> 8), body[n++] = (uint8_t)ext_len;
    if (ext_len)
        memcpy(body + n, ext, ext_len), n += ext_len;
    size_t k = 0;
    out[k++] = 0x16, out[k++] = 3, out[k++] = 1;
    out[k++] = (uint8_t)((n + 4) >> 8), out[k++] = (uint8_t)(n + 4);
    out[k++] = 1, out[k++] = 0, out[k++] = (uint8_t)(n >> 8), out[k++] = (uint8_t)n;
    memcpy(out + k, body, n);
    return k + n;
}

static size_t ext_sni(uint8_t *p, const char *name)
{
    size_t l = strlen(name), k = 0;
    p[k++] = 0, p[k++] = 0;                                      /* server_name */
    p[k++] = (uint8_t)((l + 5) >> 8), p[k++] = (uint8_t)(l + 5); /* ext length */
    p[k++] = (uint8_t)((l + 3) >> 8), p[k++] = (uint8_t)(l + 3); /* list length */
    p[k++] = 0, p[k++] = (uint8_t)(l >> 8), p[k++] = (uint8_t)l; /* host_name */
    memcpy(p + k, name, l);
    return k + l;
}

START_TEST(test_openssl_client_hello)
{
    size_t len;
    uint8_t *b = slurp("openssl-sni-alpn", &len);
    dp_tls_hello_t h;
    ck_assert_int_eq(dp_tls_inspect(b, len, &h), DP_INSPECT_FOUND);
    ck_assert_str_eq(h.sni, "www.example.com");
    ck_assert_uint_eq(h.n_alpn, 3);
    ck_assert_str_eq(h.alpn[0], "istio-http/1.1");
    ck_assert_str_eq(h.alpn[1], "h2");
    ck_assert_str_eq(h.alpn[2], "http/1.1");
    /* every shorter prefix needs more */
    for (size_t n = 0; n < len; n++)
        ck_assert_msg(dp_tls_inspect(b, n, &h) == DP_INSPECT_MORE, "prefix %zu", n);
    free(b);

    b = slurp("openssl-no-sni", &len);
    ck_assert_int_eq(dp_tls_inspect(b, len, &h), DP_INSPECT_FOUND);
    ck_assert_str_eq(h.sni, "");
    ck_assert_uint_eq(h.n_alpn, 0);
    free(b);

    b = slurp("openssl-tls12", &len);
    ck_assert_int_eq(dp_tls_inspect(b, len, &h), DP_INSPECT_FOUND);
    ck_assert_str_eq(h.sni, "api.example.com");
    ck_assert_uint_eq(h.n_alpn, 1);
    ck_assert_str_eq(h.alpn[0], "h2");
    free(b);
}
END_TEST

START_TEST(test_split_over_records)
{
    size_t len;
    uint8_t *b = slurp("split-records", &len);
    dp_tls_hello_t h;
    ck_assert_int_eq(dp_tls_inspect(b, len, &h), DP_INSPECT_FOUND);
    ck_assert_str_eq(h.sni, "www.example.com");
    ck_assert_uint_eq(h.n_alpn, 3);
    ck_assert_int_eq(dp_tls_inspect(b, len - 1, &h), DP_INSPECT_MORE);
    ck_assert_int_eq(dp_tls_inspect(b, len / 2, &h), DP_INSPECT_MORE);
    /* a second record of another type inside the ClientHello */
    size_t first = 5 + ((size_t)b[3] << 8 | b[4]);
    b[first] = 0x17;
    ck_assert_int_eq(dp_tls_inspect(b, len, &h), DP_INSPECT_ERROR);
    free(b);
}
END_TEST

START_TEST(test_truncated_and_garbage)
{
    size_t len;
    dp_tls_hello_t h;
    uint8_t *b = slurp("truncated", &len);
    ck_assert_int_eq(dp_tls_inspect(b, len, &h), DP_INSPECT_MORE);
    free(b);
    b = slurp("garbage", &len);
    ck_assert_int_eq(dp_tls_inspect(b, len, &h), DP_INSPECT_NONE);
    free(b);
    b = slurp("http-get", &len);
    ck_assert_int_eq(dp_tls_inspect(b, len, &h), DP_INSPECT_NONE);
    ck_assert_int_eq(dp_tls_inspect(b, 1, &h), DP_INSPECT_NONE); /* decided on one byte */
    free(b);
    b = slurp("not-client-hello", &len); /* a ServerHello-typed handshake */
    ck_assert_int_eq(dp_tls_inspect(b, len, &h), DP_INSPECT_NONE);
    free(b);
    ck_assert_int_eq(dp_tls_inspect((const uint8_t *)"", 0, &h), DP_INSPECT_MORE);
    static const uint8_t sslv2ish[] = {0x16, 0x02, 0x00};
    ck_assert_int_eq(dp_tls_inspect(sslv2ish, 3, &h), DP_INSPECT_NONE);
}
END_TEST

START_TEST(test_built_hellos)
{
    uint8_t ext[1024], msg[4096];
    dp_tls_hello_t h;
    size_t e = ext_sni(ext, "Mixed.Case.Example");
    size_t n = build_hello(msg, ext, e);
    ck_assert_int_eq(dp_tls_inspect(msg, n, &h), DP_INSPECT_FOUND);
    ck_assert_str_eq(h.sni, "mixed.case.example");
    /* an SNI of 256 bytes is refused */
    char longname[300];
    memset(longname, 'a', 256);
    longname[256] = '\0';
    e = ext_sni(ext, longname);
    n = build_hello(msg, ext, e);
    ck_assert_int_eq(dp_tls_inspect(msg, n, &h), DP_INSPECT_ERROR);
    /* an extension length past the block */
    e = ext_sni(ext, "x.example");
    ext[3] += 10;
    n = build_hello(msg, ext, e);
    ck_assert_int_eq(dp_tls_inspect(msg, n, &h), DP_INSPECT_ERROR);
    /* a ClientHello announcing more than 64 KiB */
    static const uint8_t huge[] = {0x16, 3, 1, 0x40, 0x00, 1, 0x01, 0x00, 0x00};
    ck_assert_int_eq(dp_tls_inspect(huge, sizeof(huge), &h), DP_INSPECT_ERROR);
    /* no extensions at all */
    n = build_hello(msg, NULL, 0);
    n -= 2; /* drop the empty extensions length */
    msg[3] = (uint8_t)((n - 5) >> 8), msg[4] = (uint8_t)(n - 5);
    msg[7] = (uint8_t)((n - 9) >> 8), msg[8] = (uint8_t)(n - 9);
    ck_assert_int_eq(dp_tls_inspect(msg, n, &h), DP_INSPECT_FOUND);
    ck_assert_str_eq(h.sni, "");
}
END_TEST

static dp_inspect_result_t http(const char *s, const char **proto)
{
    *proto = NULL;
    return dp_http_inspect((const uint8_t *)s, strlen(s), proto);
}

START_TEST(test_http_inspector)
{
    const char *p;
    ck_assert_int_eq(http("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &p), DP_INSPECT_FOUND);
    ck_assert_str_eq(p, "http/1.1");
    ck_assert_int_eq(http("POST /x?y=1 HTTP/1.0\r\n", &p), DP_INSPECT_FOUND);
    ck_assert_str_eq(p, "http/1.0");
    ck_assert_int_eq(http("GET / HTTP/1.1\n", &p), DP_INSPECT_FOUND);
    ck_assert_int_eq(http("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &p), DP_INSPECT_FOUND);
    ck_assert_str_eq(p, "h2c");
    ck_assert_int_eq(http("PRI * HTTP/2.0\r\n", &p), DP_INSPECT_MORE);
    ck_assert_int_eq(http("GET /index.ht", &p), DP_INSPECT_MORE);
    ck_assert_int_eq(http("GET / HTTP/1.1\r", &p), DP_INSPECT_MORE);
    ck_assert_int_eq(http("", &p), DP_INSPECT_MORE);
    ck_assert_int_eq(http("GET / HTTP/2.0\r\n", &p), DP_INSPECT_NONE);
    ck_assert_int_eq(http("GET / HTTP/1.1 x\r\n", &p), DP_INSPECT_NONE);
    ck_assert_int_eq(http("GET  / HTTP/1.1\r\n", &p), DP_INSPECT_NONE);
    ck_assert_int_eq(http("SSH-2.0-OpenSSH_9.2\r\n", &p), DP_INSPECT_NONE);
    ck_assert_int_eq(http("\x16\x03\x01", &p), DP_INSPECT_NONE);
    /* a request line longer than the limit is not HTTP to the inspector */
    static char big[DP_HTTP_INSPECT_MAX + 100];
    memcpy(big, "GET /", 5);
    memset(big + 5, 'a', sizeof(big) - 6);
    big[sizeof(big) - 1] = '\0';
    ck_assert_int_eq(http(big, &p), DP_INSPECT_NONE);
    ck_assert_int_eq(dp_http_inspect((const uint8_t *)big, 100, &p), DP_INSPECT_MORE);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("inspect");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_openssl_client_hello);
    tcase_add_test(tc, test_split_over_records);
    tcase_add_test(tc, test_truncated_and_garbage);
    tcase_add_test(tc, test_built_hellos);
    tcase_add_test(tc, test_http_inspector);
    suite_add_tcase(s, tc);
    return check_run(s);
}
