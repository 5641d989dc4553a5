/* Fuzzes the pure HTTP/1 request parser (dataplane/http1_parse.c): the input is a connection's
 * byte stream, fed in growing slices (the slice size comes from the input length, so resumed
 * scans are exercised), head after head and body after body, as the codec does. Accepted heads
 * are checked for the invariants the rest of the data plane relies on. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/http1_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool sink_data(void *ud, const uint8_t *p, size_t n)
{
    size_t *total = ud;
    /* Touch every byte so that ASan sees reads past the input. */
    for (size_t i = 0; i < n; i++)
        *total += p[i] ? 1 : 1;
    return true;
}

static void check_head(const dp_h1_head_parser_t *hp, const dp_http_head_t *h)
{
    if (hp->has_cl && hp->has_te)
        abort();
    for (uint32_t i = 0; i < h->headers.n; i++) {
        dp_str_t n = h->headers.v[i].name, v = h->headers.v[i].value;
        if (n.n == 0)
            abort();
        for (size_t k = 0; k < n.n; k++) {
            if (n.p[k] >= 'A' && n.p[k] <= 'Z')
                abort();
        }
        if (v.n && (v.p[0] == ' ' || v.p[0] == '\t' || v.p[v.n - 1] == ' ' || v.p[v.n - 1] == '\t'))
            abort();
        for (size_t k = 0; k < v.n; k++) {
            unsigned char c = (unsigned char)v.p[k];
            if (c == '\r' || c == '\n' || c == 0)
                abort();
        }
        if (DP_STR_EQ(n, "transfer-encoding") || (hp->request && DP_STR_EQ(n, "host")) ||
            DP_STR_EQ(n, "keep-alive") || DP_STR_EQ(n, "proxy-connection") ||
            (DP_STR_EQ(n, "connection") && !h->upgrade))
            abort();
    }
    if (hp->request && h->method.p == NULL)
        abort();
}

static void run(const uint8_t *data, size_t size, bool request)
{
    dp_http_limits_t lim = dp_http_limits_default();
    lim.max_header_bytes = 4096;
    lim.max_headers = 32;
    const char *buf = (const char *)data;
    size_t step = 1 + size % 13, pos = 0, avail = size < step ? size : step;
    for (int msg = 0; msg < 64; msg++) {
        dp_h1_head_parser_t hp;
        dp_h1_head_init(&hp, request, &lim);
        int r;
        for (;;) {
            r = dp_h1_head_scan(&hp, buf + pos, avail - pos);
            if (r != 0 || avail == size)
                break;
            avail = avail + step > size ? size : avail + step;
        }
        if (r < 0) {
            if (hp.err_status != 400 && hp.err_status != 431 && hp.err_status != 501 &&
                hp.err_status != 502)
                abort();
            return;
        }
        if (r == 0)
            return;
        dp_pool_t *pool = dp_pool_new();
        dp_http_head_t *h = dp_h1_head_build(&hp, buf + pos, pool);
        if (h == NULL) {
            dp_pool_free(pool);
            return;
        }
        check_head(&hp, h);
        pos += hp.head_len;
        if (avail < pos)
            avail = pos;
        dp_h1_body_parser_t bp;
        dp_h1_body_init(&bp, hp.framing, hp.content_length, &lim, pool);
        size_t total = 0;
        while (!bp.done) {
            long k = dp_h1_body_feed(&bp, buf + pos, avail - pos, sink_data, &total);
            if (k < 0) {
                dp_pool_free(pool);
                return;
            }
            pos += (size_t)k;
            if (k == 0) {
                if (avail == size)
                    break;
                avail = avail + step > size ? size : avail + step;
            }
        }
        if (!bp.done)
            dp_h1_body_eof(&bp);
        if (hp.framing == DP_H1_BODY_LENGTH && bp.done && total != (size_t)hp.content_length)
            abort();
        dp_pool_free(pool);
        if (!bp.done || pos >= size)
            return;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run(data, size, true);
    run(data, size, false);
    return 0;
}
