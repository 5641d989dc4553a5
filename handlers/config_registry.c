#include "handlers/config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers/cors/cors.h"
#include "handlers/fault/fault.h"
#include "handlers/local_ratelimit/local_ratelimit.h"

typedef struct config_entry {
    const char *type_url;
    handlers_config_new_fn fn;
} config_entry_t;

/* One line per config type a filter of skiff's reads. The router's config has nothing skiff
 * uses yet, so it is not here: its filter needs no conf. */
static const config_entry_t configs[] = {
    {DP_FAULT_TYPE_URL, dp_fault_config_new}, /* listener level and per route */
    {DP_CORS_TYPE_URL, dp_cors_config_new},
    {DP_CORS_POLICY_TYPE_URL, dp_cors_policy_config_new},
    {DP_LRL_TYPE_URL, dp_local_ratelimit_config_new},
};

bool handlers_config_known(const char *type_url)
{
    for (size_t i = 0; type_url && i < sizeof(configs) / sizeof(configs[0]); i++) {
        if (strcmp(configs[i].type_url, type_url) == 0)
            return true;
    }
    return false;
}

int handlers_config_new(const handlers_config_ctx_t *ctx, const char *type_url, const uint8_t *buf,
                        size_t len, const void **ret_conf, char **reterr_msg)
{
    for (size_t i = 0; type_url && i < sizeof(configs) / sizeof(configs[0]); i++) {
        if (configs[i].type_url && strcmp(configs[i].type_url, type_url) == 0)
            return configs[i].fn(ctx, buf, len, ret_conf, reterr_msg);
    }
    return -ENOENT;
}

int handlers_config_fail(char **reterr_msg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = NULL;
    if (vasprintf(&m, fmt, ap) < 0)
        m = NULL;
    va_end(ap);
    if (reterr_msg)
        *reterr_msg = m;
    else
        free(m);
    return -EINVAL;
}
