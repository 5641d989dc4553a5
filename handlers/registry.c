#include "handlers/registry.h"

#include <string.h>

#include "handlers/cors/cors.h"
#include "handlers/fault/fault.h"
#include "handlers/local_ratelimit/local_ratelimit.h"
#include "handlers/router/router.h"

static const dp_http_filter_type_t *const http_filters[] = {
    &dp_fault_filter,
    &dp_cors_filter,
    &dp_router_filter,
    &dp_local_ratelimit_filter,
};

const dp_http_filter_type_t *handlers_http_filter_find(const char *type_url)
{
    if (type_url == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(http_filters) / sizeof(http_filters[0]); i++) {
        if (strcmp(http_filters[i]->type_url, type_url) == 0)
            return http_filters[i];
    }
    return NULL;
}
