#include "xds/pbwire.h"

#include <errno.h>
#include <stdbool.h>

static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *ret)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return false;
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            *ret = v;
            return true;
        }
    }
    return false;
}

static int check(const ProtobufCMessageDescriptor *desc, const uint8_t *p, const uint8_t *end,
                 unsigned depth_left)
{
    while (p < end) {
        uint64_t key;
        if (!read_varint(&p, end, &key))
            return -EINVAL;
        uint32_t field = (uint32_t)(key >> 3);
        if (field == 0)
            return -EINVAL;
        switch (key & 7) {
        case 0: { /* varint */
            uint64_t v;
            if (!read_varint(&p, end, &v))
                return -EINVAL;
            break;
        }
        case 1: /* 64-bit */
            if (end - p < 8)
                return -EINVAL;
            p += 8;
            break;
        case 5: /* 32-bit */
            if (end - p < 4)
                return -EINVAL;
            p += 4;
            break;
        case 2: { /* length-delimited */
            uint64_t len;
            if (!read_varint(&p, end, &len) || len > (uint64_t)(end - p))
                return -EINVAL;
            const ProtobufCFieldDescriptor *f =
                desc ? protobuf_c_message_descriptor_get_field(desc, field) : NULL;
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                if (depth_left == 0)
                    return -ELOOP;
                int rc = check(f->descriptor, p, p + len, depth_left - 1);
                if (rc < 0)
                    return rc;
            }
            p += len;
            break;
        }
        default: /* groups (3, 4) are not used by any type skiff declares */
            return -EINVAL;
        }
    }
    return 0;
}

int xds_pb_depth_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                       unsigned max_depth)
{
    if (len == 0)
        return 0; /* an empty message (data may be NULL: no pointer arithmetic on it) */
    return check(desc, data, data + len, max_depth);
}

ProtobufCMessage *xds_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                                size_t len, const char **reterr)
{
    int rc = xds_pb_depth_check(desc, data, len, XDS_PB_MAX_DEPTH);
    if (rc == -ELOOP) {
        *reterr = "message nested too deeply";
        return NULL;
    }
    if (rc < 0) {
        *reterr = "malformed protobuf";
        return NULL;
    }
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, len, data);
    if (m == NULL)
        *reterr = "malformed protobuf";
    return m;
}
