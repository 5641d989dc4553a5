/* Fuzz target: access-log format strings as the control plane sends them (dataplane/
 * access_log.c): compiled, and when they compile, used to format a line for a stream that has
 * no request and for one with a small request head; a line never passes its buffer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/access_log.h"
#include "dataplane/stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8192)
        size = 8192;
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    dp_arena_t *a = dp_arena_new();
    const dp_access_format_t *f = NULL;
    char *err = NULL;
    if (dp_access_format_compile(a, text, &f, &err) == 0 && f) {
        char line[512];
        dp_stream_t s;
        memset(&s, 0, sizeof(s));
        size_t n = dp_access_format_line(f, &s, 5, line, sizeof(line));
        if (n >= sizeof(line) || line[n] != '\0')
            abort();
        dp_pool_t *pool = dp_pool_new();
        dp_http_head_t *req = dp_pool_calloc(pool, sizeof(*req));
        req->method = DP_STR("GET");
        req->path = DP_STR("/a?b=c");
        req->authority = DP_STR("example");
        req->version = DP_HTTP_11;
        req->content_length = -1;
        dp_headers_add(&req->headers, pool, "user-agent", 10, "fuzz", 4);
        s.pool = pool;
        s.req = req;
        s.response_status = 503;
        s.response_flags = DP_RF(UF) | DP_RF(URX);
        n = dp_access_format_line(f, &s, 5, line, sizeof(line));
        if (n >= sizeof(line) || line[n] != '\0')
            abort();
        dp_pool_free(pool);
    }
    free(err);
    dp_arena_free(a);
    free(text);
    return 0;
}
