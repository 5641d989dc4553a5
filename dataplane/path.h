/* Request path normalisation, as Envoy's connection manager applies it before routing
 * (ConnectionManagerUtility::maybeNormalizePath): the path part of :path (up to '?'; the query
 * is kept as it is) is
 *  1. with DP_PATH_UNESCAPE_SLASHES (path_with_escaped_slashes_action other than
 *     KEEP_UNCHANGED): %2F and %5C, in either case, decoded to '/' and '\';
 *  2. with DP_PATH_NORMALIZE (normalize_path, RFC 3986 §6.2.2 and §5.2.4 as Envoy's URL
 *     canonicaliser does it): percent-encoded unreserved characters (ALPHA, DIGIT, '-', '.',
 *     '_', '~') decoded, other escapes kept as they are, '\' turned into '/', the "." and ".."
 *     segments removed ("%2e" counts as '.'; ".." never climbs above the root); an escaped
 *     NUL (%00) makes the path invalid;
 *  3. with DP_PATH_MERGE_SLASHES (merge_slashes): runs of '/' collapsed to one.
 * A path that does not start with '/' ("*", an authority) is left alone. Pure; any thread. */
#ifndef SKIFF_DATAPLANE_PATH_H
#define SKIFF_DATAPLANE_PATH_H

#include <stdbool.h>
#include <stddef.h>

#define DP_PATH_NORMALIZE        1u
#define DP_PATH_MERGE_SLASHES    2u
#define DP_PATH_UNESCAPE_SLASHES 4u

/* Normalises the n bytes at p under flags into out (room for n bytes: the result is never
 * longer). Returns the result's length, or -1 when the path is invalid (an escaped NUL).
 * *ret_slashes tells whether step 1 decoded anything (Envoy then rejects or redirects, as
 * configured). */
long dp_path_normalize(const char *p, size_t n, unsigned flags, char *out, bool *ret_slashes);

/* Whether dp_path_normalize could change the path (a cheap scan: false means it would return
 * it unchanged). */
bool dp_path_may_change(const char *p, size_t n, unsigned flags);

#endif
