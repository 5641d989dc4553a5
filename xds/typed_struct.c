#include "xds/typed_struct.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protos/registry.h"
#include "udpa/type/v1/typed_struct.pb-c.h"
#include "xds/pbjson.h"
#include "xds/pbwire.h"
#include "xds/type/v3/typed_struct.pb-c.h"

#define TS_UDPA "type.googleapis.com/udpa.type.v1.TypedStruct"
#define TS_XDS  "type.googleapis.com/xds.type.v3.TypedStruct"

static int fail(char **reterr_msg, const char *what, const char *detail)
{
    if (asprintf(reterr_msg, "TypedStruct: %s%s%s", what, detail ? ": " : "",
                 detail ? detail : "") < 0)
        *reterr_msg = NULL;
    return -EINVAL;
}

int xds_typed_struct_unwrap(const char *type_url, const uint8_t *buf, size_t len,
                            char **ret_type_url, uint8_t **ret_buf, size_t *ret_len,
                            char **reterr_msg)
{
    if (type_url == NULL || (strcmp(type_url, TS_UDPA) != 0 && strcmp(type_url, TS_XDS) != 0))
        return -ENOENT;
    /* Both declarations are {string type_url = 1; Struct value = 2;}: one decoder serves. */
    const char *why = NULL;
    Udpa__Type__V1__TypedStruct *ts =
        (void *)xds_pb_unpack(&udpa__type__v1__typed_struct__descriptor, buf, len, &why);
    if (ts == NULL)
        return fail(reterr_msg, "cannot decode", why);
    const char *inner = ts->type_url;
    *ret_type_url = strdup(inner);
    if (*ret_type_url == NULL)
        abort();
    const ProtobufCMessageDescriptor *desc = pb_registry_find_type_url(inner);
    if (desc == NULL) {
        int rc = fail(reterr_msg, "type_url: not a type skiff declares", inner);
        protobuf_c_message_free_unpacked(&ts->base, NULL);
        return rc;
    }
    /* Struct → JSON → the named message → its bytes. */
    pbjson_opts_t opts = {.resolve = pb_registry_find_type_url};
    json_t *j = ts->value ? pbjson_to_json(&ts->value->base, &opts) : json_object();
    ProtobufCMessage *msg = NULL;
    pbjson_diag_t *diag = pbjson_diag_new();
    int rc = j ? pbjson_parse_json(j, inner, desc, &opts, &msg, diag) : -ENOMEM;
    json_decref(j);
    if (rc < 0) {
        const char *d = pbjson_diag_size(diag) ? pbjson_diag_at(diag, 0, NULL) : NULL;
        rc = fail(reterr_msg, "value", d);
        pbjson_diag_free(diag);
        protobuf_c_message_free_unpacked(&ts->base, NULL);
        return rc;
    }
    pbjson_diag_free(diag);
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *out = malloc(n ? n : 1);
    if (out == NULL)
        abort();
    protobuf_c_message_pack(msg, out);
    protobuf_c_message_free_unpacked(msg, NULL);
    protobuf_c_message_free_unpacked(&ts->base, NULL);
    *ret_buf = out;
    *ret_len = n;
    return 0;
}
