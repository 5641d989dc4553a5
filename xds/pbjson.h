/* pbjson: the proto3 JSON mapping over protobuf-c descriptors, in both directions.
 *
 * Input is JSON or YAML. Both go through one libyaml parser (JSON is YAML flow syntax), so
 * every diagnostic carries `file:line` whichever format the user wrote. Output is a jansson
 * tree, so callers can embed it in bigger documents (the admin /config_dump) before dumping.
 *
 * The mapping follows https://protobuf.dev/programming-guides/proto3/#json as implemented by
 * Go protojson and C++ JsonStringToMessage:
 *   - field names: snake_case (the proto name) or lowerCamelCase on input; snake_case on output
 *     (Envoy's config_dump prints proto names);
 *   - enums by name or number on input, by name on output (a number when the value is unknown);
 *   - 64-bit integers are printed as strings and accepted as numbers or strings; 32-bit integers
 *     are accepted as numbers or numeric strings; fractions and out-of-range values are errors;
 *   - float/double: numbers, or the strings "NaN", "Infinity", "-Infinity";
 *   - bytes: standard padded base64 on output; standard or URL-safe, padded or not, on input;
 *   - well-known types: Duration "1.5s", Timestamp RFC 3339 "2025-06-04T14:49:56.123Z",
 *     wrappers as bare values, Struct/Value/ListValue as plain JSON, Empty as {}, FieldMask as
 *     "a.b,cD", Any as {"@type": URL, ...fields} (or {"@type": URL, "value": <special JSON>}
 *     when the packed type is itself a well-known type);
 *   - maps as JSON objects (integer and bool keys as strings);
 *   - null for a field means "unset", except for google.protobuf.Value (NullValue).
 *
 * YAML specifics (the YAML 1.2 core schema, as yaml-cpp in Envoy): a quoted (or block, or
 * !!str-tagged) scalar is always a string; the plain scalars true/True/TRUE, false/False/FALSE,
 * null/Null/NULL/~/empty and JSON-style numbers are typed, and any other plain scalar (yes, on,
 * 0x10, 1_000) is a string. Anchors and aliases work, within a budget of about twice the input
 * size after expansion; merge keys (<<) do not. Only one document per input.
 *
 * Limitations that come from treating JSON as YAML (libyaml 0.2.5): an object key must be on
 * the same line as its ':' and at most 1024 characters long. UTF-16 surrogate-pair escapes
 * ("\ud83d\ude00"), which YAML does not accept, are rewritten before parsing.
 *
 * Threads: no global state; every function may run on any thread.
 */
#ifndef SKIFF_XDS_PBJSON_H
#define SKIFF_XDS_PBJSON_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>

/* Maps an Any type URL ("type.googleapis.com/envoy.config.cluster.v3.Cluster") to its message
 * descriptor, or NULL when the type is not known. pb_registry_find_type_url() from
 * protos/registry.h has this shape. The function must be safe to call from the calling thread. */
typedef const ProtobufCMessageDescriptor *(*pbjson_resolver_fn)(const char *type_url);

typedef enum pbjson_severity {
    PBJSON_ERROR = 1,
    PBJSON_WARNING = 2,
} pbjson_severity_t;

/* Mask for pbjson_diag_count(): errors and warnings. */
#define PBJSON_SEVERITY_ANY (PBJSON_ERROR | PBJSON_WARNING)

/* Default limits, used when the corresponding option is 0. */
#define PBJSON_DEFAULT_MAX_DEPTH 100
#define PBJSON_DEFAULT_MAX_SIZE  (64u * 1024u * 1024u)

/* At most this many diagnostics are stored per list; a last entry then says how many more were
 * dropped. Counting (and the parse result) still reflects every problem found. */
#define PBJSON_DIAG_MAX 1000

/* A list of diagnostics in the order found, each a string "file:line: message" (or "file:
 * message" when no line applies) with a severity. Owned by the caller; not thread-safe. */
typedef struct pbjson_diag pbjson_diag_t;

/* Returns a new empty list, or NULL on out of memory. */
pbjson_diag_t *pbjson_diag_new(void);

/* Frees the list and its strings. Accepts NULL. */
void pbjson_diag_free(pbjson_diag_t *d);

/* Empties the list so that it can be reused. Accepts NULL. */
void pbjson_diag_clear(pbjson_diag_t *d);

/* Number of problems of the severities in `severity_mask` (PBJSON_ERROR, PBJSON_WARNING or
 * PBJSON_SEVERITY_ANY) recorded so far, including ones dropped past PBJSON_DIAG_MAX. NULL: 0. */
size_t pbjson_diag_count(const pbjson_diag_t *d, unsigned severity_mask);

/* Number of stored entries, the index range of pbjson_diag_at(). NULL: 0. */
size_t pbjson_diag_size(const pbjson_diag_t *d);

/* Entry `i` (0 <= i < pbjson_diag_size()), or NULL when out of range. The string stays valid
 * until the list is cleared or freed. Writes its severity to *ret_severity when not NULL. */
const char *pbjson_diag_at(const pbjson_diag_t *d, size_t i, pbjson_severity_t *ret_severity);

/* Appends a formatted entry; callers use it to add their own findings (a validator checking
 * cross-references) to the same list. Returns 0, or -ENOMEM (the problem is still counted).
 * Accepts d == NULL (does nothing, returns 0). */
int pbjson_diag_add(pbjson_diag_t *d, pbjson_severity_t severity, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Options; a NULL pointer or a zero-initialized struct gives the defaults. */
typedef struct pbjson_opts {
    /* Input: unknown fields, unknown enum names and Any values of unknown types with fields
     * are warnings (one per occurrence) and are skipped, instead of errors. */
    bool allow_unknown;
    /* Any type URL resolver, both directions. NULL: every type is unknown, so Any values are
     * only accepted and printed in the opaque form {"@type": URL, "value": "<base64>"}. */
    pbjson_resolver_fn resolve;
    /* Nesting limit for input objects/arrays, and for output messages (deeper output messages
     * print as null, deeper packed Any values in the opaque form). 0: PBJSON_DEFAULT_MAX_DEPTH. */
    size_t max_depth;
    /* Input size limit in bytes. 0: PBJSON_DEFAULT_MAX_SIZE. */
    size_t max_size;
} pbjson_opts_t;

/* Parses `len` bytes of JSON or YAML text into a new message of type `desc`.
 *
 * `source_name` names the input in diagnostics ("bootstrap.yaml"); NULL gives "<input>".
 * Every error and warning found is appended to `diag` (may be NULL to discard them); parsing
 * goes on after an error to report as many problems as possible.
 *
 * On success returns 0 and stores the message in *ret_msg. It is allocated with malloc in
 * protobuf-c's conventions: the caller frees it with protobuf_c_message_free_unpacked(msg,
 * NULL). Warnings may have been added.
 * On failure *ret_msg is untouched and nothing is leaked:
 *   -EINVAL  the text is malformed or does not match the type (at least one error in diag);
 *   -EFBIG   the text is longer than the size limit (one error in diag);
 *   -ENOMEM  out of memory (diag may be incomplete). */
int pbjson_parse(const char *text, size_t len, const char *source_name,
                 const ProtobufCMessageDescriptor *desc, const pbjson_opts_t *opts,
                 ProtobufCMessage **ret_msg, pbjson_diag_t *diag);

/* Like pbjson_parse() on the contents of the file at `path`, which is also the source name in
 * diagnostics. Additional failures: a negative errno from open/read (with an error in diag),
 * -EFBIG when the file exceeds the size limit. */
int pbjson_parse_file(const char *path, const ProtobufCMessageDescriptor *desc,
                      const pbjson_opts_t *opts, ProtobufCMessage **ret_msg, pbjson_diag_t *diag);

/* Like pbjson_parse() for a value the caller already holds as a jansson tree (a JSON node
 * embedded in a bigger document). Line numbers in diagnostics refer to the tree printed with
 * two-space indentation. Same results as pbjson_parse(). */
int pbjson_parse_json(const json_t *json, const char *source_name,
                      const ProtobufCMessageDescriptor *desc, const pbjson_opts_t *opts,
                      ProtobufCMessage **ret_msg, pbjson_diag_t *diag);

/* Converts a message to a new jansson value (an object for ordinary messages, another JSON
 * type for some well-known types). Fields are printed in descriptor order, with proto
 * names; fields holding their proto3 default are omitted; members of a oneof are printed when
 * selected, even when zero. Any values whose type the resolver knows are unpacked and printed
 * with "@type" first; others are printed in the opaque form. Values that cannot be valid JSON
 * (invalid UTF-8 in a string) are printed with U+FFFD replacements; an out-of-range Duration
 * or Timestamp is printed as-is rather than refused.
 * Returns a new reference the caller owns (json_decref), or NULL on out of memory. */
json_t *pbjson_to_json(const ProtobufCMessage *msg, const pbjson_opts_t *opts);

/* pbjson_to_json() printed as text: `indent` spaces per level (0: compact, on one line).
 * Numbers that are not integers are printed with 17 significant digits, which reads back to
 * the same value. Returns a NUL-terminated string the caller frees with free(), or NULL on
 * out of memory. */
char *pbjson_to_string(const ProtobufCMessage *msg, const pbjson_opts_t *opts, int indent);

#endif
