/* Fuzz target: the listener filters' parsers on the first bytes of a connection, the peer's
 * bytes as tls_inspector and http_inspector see them (dataplane/inspect.c). Every prefix of
 * the input is tried, as a connection delivers its bytes in pieces: a result for a prefix
 * must be consistent with the longer input (a FOUND or NONE never turns back into MORE). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/inspect.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > DP_TLS_INSPECT_MAX)
        size = DP_TLS_INSPECT_MAX;
    /* A copy of exactly size bytes, so that reading past the end is caught by the sanitizer. */
    uint8_t *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    dp_tls_hello_t h;
    dp_inspect_result_t full = dp_tls_inspect(buf, size, &h);
    if (full == DP_INSPECT_FOUND) {
        if (strlen(h.sni) >= sizeof(h.sni) || h.n_alpn > DP_TLS_MAX_ALPN)
            abort();
    }
    size_t step = size > 512 ? size / 256 : 1;
    for (size_t n = 0; n < size; n += step) {
        dp_inspect_result_t r = dp_tls_inspect(buf, n, &h);
        if (r == DP_INSPECT_NONE && full == DP_INSPECT_FOUND)
            abort(); /* a prefix cannot rule TLS out when the whole is a ClientHello */
        const char *proto = NULL;
        (void)dp_http_inspect(buf, n, &proto);
    }
    const char *proto = NULL;
    if (dp_http_inspect(buf, size, &proto) == DP_INSPECT_FOUND && proto == NULL)
        abort();
    free(buf);
    return 0;
}
