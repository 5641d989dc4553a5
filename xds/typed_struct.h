/* TypedStruct (udpa.type.v1 and xds.type.v3): a config given as {type_url, value: Struct}
 * instead of the binary form, as Istio's EnvoyFilter examples write filter configs. Main
 * thread. */
#ifndef SKIFF_XDS_TYPED_STRUCT_H
#define SKIFF_XDS_TYPED_STRUCT_H

#include <stddef.h>
#include <stdint.h>

/* When (type_url, buf, len) is a TypedStruct, converts its value into the binary form of the
 * type it names (through the proto3 JSON mapping): returns 0 with malloc'd bytes in *ret_buf /
 * *ret_len. Returns -ENOENT when it is no TypedStruct, -EINVAL with a malloc'd reason in
 * *reterr_msg when it cannot be converted (an undeclared type, a field the type does not
 * have: the caller decides whether that matters, as it does for a filter skiff implements).
 * For a TypedStruct, *ret_type_url gets the named type (malloc'd) whatever the result. */
int xds_typed_struct_unwrap(const char *type_url, const uint8_t *buf, size_t len,
                            char **ret_type_url, uint8_t **ret_buf, size_t *ret_len,
                            char **reterr_msg);

#endif
