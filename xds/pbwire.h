/* Checks on protobuf wire bytes before protobuf-c decodes them. protobuf-c's unpack recurses
 * into nested messages without a depth limit, so a deeply nested Struct in a resource could
 * exhaust the stack: every decode of peer bytes goes through xds_pb_unpack. */
#ifndef SKIFF_XDS_PBWIRE_H
#define SKIFF_XDS_PBWIRE_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#define XDS_PB_MAX_DEPTH 64

/* Returns 0 when `data` is well-formed wire data for `desc` nested at most max_depth messages
 * deep; -EINVAL when it is malformed, -ELOOP when it is nested deeper. */
int xds_pb_depth_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                       unsigned max_depth);

/* Depth check, then protobuf-c unpack. Returns the message (free with
 * protobuf_c_message_free_unpacked) or NULL, with *reterr (static text) saying why. */
ProtobufCMessage *xds_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                                size_t len, const char **reterr);

#endif
