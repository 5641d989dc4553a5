/* The HTTP filters skiff implements, in one explicit table (STYLE.md §7: no registration by
 * linker sections or constructors). xds/hcm_build.c looks each http_filters entry up here by
 * its typed_config type; an entry not found is accepted as a pass-through filter when it is
 * one of Istio's filters that does not change routing, or is_optional, and NACKed otherwise
 * (that policy is the xDS client's). */
#ifndef SKIFF_HANDLERS_REGISTRY_H
#define SKIFF_HANDLERS_REGISTRY_H

#include "dataplane/stream.h"

/* The filter type for a typed_config type URL ("type.googleapis.com/..."), or NULL. */
const dp_http_filter_type_t *handlers_http_filter_find(const char *type_url);

#endif
