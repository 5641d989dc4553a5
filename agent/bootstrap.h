/* The bootstrap: -c/--config-path (JSON or YAML) with --config-yaml merged over it, as Envoy
 * merges them (protobuf MergeFrom: scalars replaced, messages merged, repeated fields
 * appended), then checked for the mistakes Envoy refuses at start-up. */
#ifndef SKIFF_AGENT_BOOTSTRAP_H
#define SKIFF_AGENT_BOOTSTRAP_H

#include "agent/options.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"
#include "xds/pbjson.h"

typedef Envoy__Config__Bootstrap__V3__Bootstrap agent_bootstrap_t;

/* Loads and checks the bootstrap named by the options. Every problem found goes into diag as a
 * "file:line: what is wrong" line (lines where the input has them; semantic checks name the
 * field path instead), unknown fields as warnings when allow_unknown_static_fields is set.
 * Returns 0 with *ret_bootstrap set (free with agent_bootstrap_free), or a negative errno
 * (-EINVAL for any configuration error) with diag holding at least one error. */
int agent_bootstrap_load(const agent_options_t *opts, agent_bootstrap_t **ret_bootstrap,
                         pbjson_diag_t *diag);

void agent_bootstrap_free(agent_bootstrap_t *b);

/* The global connection limit: overload_manager's resource monitor
 * envoy.resource_monitors.global_downstream_max_connections (its
 * max_active_downstream_connections); 0 when there is none. */
uint64_t agent_bootstrap_global_max_connections(const agent_bootstrap_t *b);

/* The pbjson options the bootstrap uses: Any types resolved through the protos registry. */
void agent_bootstrap_json_opts(pbjson_opts_t *ret_opts, bool allow_unknown);

#endif
