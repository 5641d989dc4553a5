/* Fuzz target: xDS resource decoding and validation (xds_resource_check), the path every
 * Cluster, ClusterLoadAssignment, Listener and RouteConfiguration from the control plane
 * takes. The first byte picks the type; the rest are the resource's protobuf bytes. */
#include <stdint.h>
#include <stdlib.h>

#include "xds/client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const types[] = {XDS_TYPE_CLUSTER, XDS_TYPE_ENDPOINT, XDS_TYPE_LISTENER,
                                        XDS_TYPE_ROUTE};
    if (size < 1)
        return 0;
    char *err = NULL;
    (void)xds_resource_check(types[data[0] % 4], data + 1, size - 1, &err);
    free(err);
    return 0;
}
