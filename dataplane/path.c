/* Request path normalisation (dataplane/path.h). */
#include "dataplane/path.h"

#include <string.h>

#include "dataplane/http.h"

/* RFC 3986 §2.3 */
static bool unreserved(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static size_t path_len(const char *p, size_t n)
{
    const char *q = memchr(p, '?', n);
    return q ? (size_t)(q - p) : n;
}

bool dp_path_may_change(const char *p, size_t n, unsigned flags)
{
    if (flags == 0 || n == 0 || p[0] != '/')
        return false;
    size_t len = path_len(p, n);
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (c == '%' || (c == '\\' && (flags & DP_PATH_NORMALIZE)))
            return true;
        if (c == '/' && i + 1 < len) {
            char d = p[i + 1];
            if ((d == '/' && (flags & DP_PATH_MERGE_SLASHES)) ||
                (d == '.' && (flags & DP_PATH_NORMALIZE)))
                return true;
        }
    }
    return false;
}

/* Step 2's segment pass over buf[0, len) (which starts with '/'), in place: "." and ".."
 * segments out. Returns the new length. */
static size_t remove_dot_segments(char *buf, size_t len)
{
    size_t r = 0, w = 0;
    while (r < len) {
        /* buf[r] is the '/' that opens a segment */
        size_t e = r + 1;
        while (e < len && buf[e] != '/')
            e++;
        size_t sn = e - r - 1;
        const char *seg = buf + r + 1;
        bool dot = sn == 1 && seg[0] == '.';
        bool dotdot = sn == 2 && seg[0] == '.' && seg[1] == '.';
        if (dot || dotdot) {
            if (dotdot) {
                while (w > 0 && buf[w - 1] != '/')
                    w--;
                if (w > 0)
                    w--; /* the '/' that opened the segment popped */
            }
            r = e;
            if (r == len)
                buf[w++] = '/'; /* "/a/." and "/a/b/.." end in a directory */
            continue;
        }
        memmove(buf + w, buf + r, e - r);
        w += e - r;
        r = e;
    }
    if (w == 0)
        buf[w++] = '/';
    return w;
}

long dp_path_normalize(const char *p, size_t n, unsigned flags, char *out, bool *ret_slashes)
{
    *ret_slashes = false;
    if (flags == 0 || n == 0 || p[0] != '/') {
        memcpy(out, p, n);
        return (long)n;
    }
    size_t len = path_len(p, n), w = 0;
    /* Steps 1 and 2's character pass: decoding and backslashes. */
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (c == '%' && i + 2 < len) {
            int hi = dp_hexval(p[i + 1]), lo = dp_hexval(p[i + 2]);
            if (hi >= 0 && lo >= 0) {
                int v = hi * 16 + lo;
                bool decode = false;
                if ((flags & DP_PATH_UNESCAPE_SLASHES) && (v == '/' || v == '\\')) {
                    decode = true;
                    *ret_slashes = true;
                } else if (flags & DP_PATH_NORMALIZE) {
                    if (v == 0)
                        return -1;
                    decode = unreserved(v);
                }
                if (decode) {
                    c = (char)v;
                    i += 2;
                } else {
                    out[w++] = p[i++];
                    out[w++] = p[i++];
                    out[w++] = p[i];
                    continue;
                }
            }
        }
        if (c == '\\' && (flags & DP_PATH_NORMALIZE))
            c = '/';
        out[w++] = c;
    }
    if (flags & DP_PATH_NORMALIZE)
        w = remove_dot_segments(out, w);
    if (flags & DP_PATH_MERGE_SLASHES) {
        size_t k = 0;
        for (size_t i = 0; i < w; i++) {
            if (out[i] == '/' && k > 0 && out[k - 1] == '/')
                continue;
            out[k++] = out[i];
        }
        w = k;
    }
    memcpy(out + w, p + len, n - len);
    return (long)(w + n - len);
}
