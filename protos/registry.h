/* Every message type skiff declares (protos/manifest.txt and the well-known types it needs),
 * looked up by full name or by Any type URL, for the JSON mapping and for Any resolution.
 * The table is built at compile time; lookups are binary searches, safe from any thread. */
#ifndef SKIFF_PROTOS_REGISTRY_H
#define SKIFF_PROTOS_REGISTRY_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

/* "envoy.config.cluster.v3.Cluster" -> its descriptor, or NULL. */
const ProtobufCMessageDescriptor *pb_registry_find(const char *full_name);

/* "type.googleapis.com/envoy.config.cluster.v3.Cluster" (the text after the last '/') -> its
 * descriptor, or NULL when skiff does not declare the type. */
const ProtobufCMessageDescriptor *pb_registry_find_type_url(const char *type_url);

size_t pb_registry_count(void);
const ProtobufCMessageDescriptor *pb_registry_at(size_t i); /* sorted by full name */

#endif
