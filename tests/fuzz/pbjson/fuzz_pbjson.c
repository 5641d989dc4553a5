/* Fuzzes pbjson: any input is parsed into the test message (every field kind, Any with a
 * resolver), with and without allow_unknown. A successful parse must print, and the printed
 * form must parse again and print identically (the mapping is stable after one round). */
#include "xds/pbjson.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/empty.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "pbjson_test.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *fuzz_resolve(const char *type_url)
{
    static const ProtobufCMessageDescriptor *const known[] = {
        &skiff__test__all__descriptor,
        &skiff__test__inner__descriptor,
        &google__protobuf__any__descriptor,
        &google__protobuf__duration__descriptor,
        &google__protobuf__struct__descriptor,
        &google__protobuf__value__descriptor,
        &google__protobuf__empty__descriptor,
        &google__protobuf__int64_value__descriptor,
        &google__protobuf__bytes_value__descriptor,
    };
    const char *slash = strrchr(type_url, '/');
    const char *name = slash ? slash + 1 : type_url;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(known[i]->name, name) == 0)
            return known[i];
    return NULL;
}

static void one(const uint8_t *data, size_t size, const pbjson_opts_t *opts)
{
    pbjson_diag_t *diag = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    int r = pbjson_parse((const char *)data, size, "fuzz", &skiff__test__all__descriptor, opts, &m,
                         diag);
    if (r != 0) {
        /* A failure always explains itself (unless memory ran out). */
        if (r != -ENOMEM && pbjson_diag_count(diag, PBJSON_ERROR) == 0)
            abort();
        pbjson_diag_free(diag);
        return;
    }
    char *s1 = pbjson_to_string(m, opts, 0);
    if (!s1)
        abort();
    ProtobufCMessage *m2 = NULL;
    pbjson_diag_clear(diag);
    if (pbjson_parse(s1, strlen(s1), "fuzz-out", &skiff__test__all__descriptor, opts, &m2, diag) !=
        0)
        abort();
    char *s2 = pbjson_to_string(m2, opts, 2);
    char *s3 = pbjson_to_string(m2, opts, 0);
    if (!s2 || !s3 || strcmp(s1, s3) != 0)
        abort();
    free(s1);
    free(s2);
    free(s3);
    protobuf_c_message_free_unpacked(m, NULL);
    protobuf_c_message_free_unpacked(m2, NULL);
    pbjson_diag_free(diag);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    pbjson_opts_t strict = {.resolve = fuzz_resolve};
    pbjson_opts_t lenient = {.resolve = fuzz_resolve, .allow_unknown = true, .max_depth = 40};
    one(data, size, &strict);
    one(data, size, &lenient);
    return 0;
}
