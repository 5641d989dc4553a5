/* TypedStruct unwrapping (xds/typed_struct.h): Istio's EnvoyFilter form of a filter config,
 * {type_url, value: Struct}, turned into the binary form of the type it names, and refused
 * with a reason when it names an undeclared type or a field the type lacks. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.pb-c.h"
#include "protos/registry.h"
#include "tests/unit/check_run.h"
#include "udpa/type/v1/typed_struct.pb-c.h"
#include "xds/pbjson.h"
#include "xds/typed_struct.h"

#define LRL "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
#define TS  "type.googleapis.com/udpa.type.v1.TypedStruct"

/* The TypedStruct of that JSON text, packed. */
static uint8_t *typed_struct(const char *json, size_t *ret_len)
{
    pbjson_opts_t opts = {.resolve = pb_registry_find_type_url};
    ProtobufCMessage *m = NULL;
    ck_assert_int_eq(pbjson_parse(json, strlen(json), "ts",
                                  &udpa__type__v1__typed_struct__descriptor, &opts, &m, NULL),
                     0);
    *ret_len = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(*ret_len + 1);
    protobuf_c_message_pack(m, b);
    protobuf_c_message_free_unpacked(m, NULL);
    return b;
}

START_TEST(test_istio_envoyfilter_local_ratelimit)
{
    size_t len;
    uint8_t *b = typed_struct(
        "{\"type_url\": \"" LRL "\", \"value\": {\"stat_prefix\": \"http_local_rate_limiter\","
        " \"token_bucket\": {\"max_tokens\": 10, \"tokens_per_fill\": 10, \"fill_interval\": "
        "\"60s\"},"
        " \"filter_enabled\": {\"runtime_key\": \"e\", \"default_value\": {\"numerator\": 100,"
        " \"denominator\": \"HUNDRED\"}}}}",
        &len);
    char *type = NULL, *err = NULL;
    uint8_t *out = NULL;
    size_t n = 0;
    ck_assert_int_eq(xds_typed_struct_unwrap(TS, b, len, &type, &out, &n, &err), 0);
    ck_assert_str_eq(type, LRL);
    Envoy__Extensions__Filters__Http__LocalRatelimit__V3__LocalRateLimit *l =
        envoy__extensions__filters__http__local_ratelimit__v3__local_rate_limit__unpack(NULL, n,
                                                                                        out);
    ck_assert_ptr_nonnull(l);
    ck_assert_str_eq(l->stat_prefix, "http_local_rate_limiter");
    ck_assert_uint_eq(l->token_bucket->max_tokens, 10);
    ck_assert_int_eq(l->token_bucket->fill_interval->seconds, 60);
    ck_assert_uint_eq(l->filter_enabled->default_value->numerator, 100);
    protobuf_c_message_free_unpacked(&l->base, NULL);
    free(type);
    free(out);
    free(b);
}
END_TEST

START_TEST(test_refusals_and_other_types)
{
    size_t len;
    char *type = NULL, *err = NULL;
    uint8_t *out = NULL;
    size_t n = 0;
    /* not a TypedStruct: left alone */
    ck_assert_int_eq(xds_typed_struct_unwrap(LRL, (const uint8_t *)"", 0, &type, &out, &n, &err),
                     -ENOENT);
    /* a field the named type does not have */
    uint8_t *b =
        typed_struct("{\"type_url\": \"" LRL "\", \"value\": {\"no_such_field\": 1}}", &len);
    ck_assert_int_eq(xds_typed_struct_unwrap(TS, b, len, &type, &out, &n, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "no_such_field"));
    ck_assert_str_eq(type, LRL); /* named even when it cannot convert */
    free(type);
    free(err);
    err = NULL;
    free(b);
    /* an undeclared type */
    b = typed_struct("{\"type_url\": \"type.googleapis.com/x.Unknown\", \"value\": {}}", &len);
    ck_assert_int_eq(xds_typed_struct_unwrap(TS, b, len, &type, &out, &n, &err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "x.Unknown"));
    free(type);
    free(err);
    free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("typed_struct");
    TCase *tc = tcase_create("unwrap");
    tcase_add_test(tc, test_istio_envoyfilter_local_ratelimit);
    tcase_add_test(tc, test_refusals_and_other_types);
    suite_add_tcase(s, tc);
    return check_run(s);
}
