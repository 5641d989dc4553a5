/* Fuzz target: path normalisation (dataplane/path.h). The first input byte picks the flags
 * (its low three bits), the rest is the :path. Checked: the result is never longer than the
 * input; where dp_path_may_change says no, nothing changed; the query (from the first '?') is
 * kept byte for byte; with DP_PATH_NORMALIZE the path part has no "." or ".." segment and no
 * backslash left; with DP_PATH_MERGE_SLASHES no "//"; without the slash decoding, and when no
 * '%' is left, a second pass changes nothing (one pass decodes, as Envoy's canonicaliser does:
 * "%4%42" becomes "%4B", which a second pass would decode again). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/path.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t path_part(const char *p, size_t n)
{
    const char *q = memchr(p, '?', n);
    return q ? (size_t)(q - p) : n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096)
        return 0;
    unsigned flags = data[0] & 7u;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    char *once = malloc(n + 1), *twice = malloc(n + 1);
    bool s1, s2;
    long r = dp_path_normalize(in, n, flags, once, &s1);
    if (r >= 0) {
        if ((size_t)r > n)
            abort();
        if (!dp_path_may_change(in, n, flags) && ((size_t)r != n || memcmp(in, once, n) != 0))
            abort();
        size_t pin = path_part(in, n), pout = path_part(once, (size_t)r);
        if (n > 0 && in[0] == '/') {
            /* the query is kept as it came */
            if (n - pin != (size_t)r - pout || memcmp(in + pin, once + pout, n - pin) != 0)
                abort();
            if (flags & DP_PATH_NORMALIZE) {
                for (size_t i = 0; i < pout; i++) {
                    if (once[i] == '\\')
                        abort();
                    if (once[i] != '/')
                        continue;
                    size_t e = i + 1;
                    while (e < pout && once[e] != '/')
                        e++;
                    size_t sn = e - i - 1;
                    if ((sn == 1 && once[i + 1] == '.') ||
                        (sn == 2 && once[i + 1] == '.' && once[i + 2] == '.'))
                        abort();
                }
            }
            if (flags & DP_PATH_MERGE_SLASHES) {
                for (size_t i = 1; i < pout; i++) {
                    if (once[i] == '/' && once[i - 1] == '/')
                        abort();
                }
            }
        }
        if (!(flags & DP_PATH_UNESCAPE_SLASHES) && memchr(once, '%', (size_t)r) == NULL) {
            long r2 = dp_path_normalize(once, (size_t)r, flags, twice, &s2);
            if (r2 != r || memcmp(once, twice, (size_t)r) != 0)
                abort();
        }
    } else if (!(flags & DP_PATH_NORMALIZE)) {
        abort(); /* only normalisation refuses */
    }
    free(once);
    free(twice);
    return 0;
}
