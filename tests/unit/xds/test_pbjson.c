#include "xds/pbjson.h"

#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/empty.pb-c.h"
#include "google/protobuf/field_mask.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "pbjson_test.pb-c.h"
#include "pbjson_test2.pb-c.h"

/* ------------------------------------------------------------------------------------------ */
/* Helpers */

static const ProtobufCMessageDescriptor *test_resolve(const char *type_url)
{
    static const ProtobufCMessageDescriptor *const known[] = {
        &skiff__test__all__descriptor,
        &skiff__test__inner__descriptor,
        &google__protobuf__any__descriptor,
        &google__protobuf__duration__descriptor,
        &google__protobuf__timestamp__descriptor,
        &google__protobuf__struct__descriptor,
        &google__protobuf__value__descriptor,
        &google__protobuf__list_value__descriptor,
        &google__protobuf__empty__descriptor,
        &google__protobuf__field_mask__descriptor,
        &google__protobuf__int64_value__descriptor,
        &google__protobuf__string_value__descriptor,
        &google__protobuf__bool_value__descriptor,
    };
    const char *slash = strrchr(type_url, '/');
    const char *name = slash ? slash + 1 : type_url;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(known[i]->name, name) == 0)
            return known[i];
    return NULL;
}

static const pbjson_opts_t opts_default = {.resolve = test_resolve};
static const pbjson_opts_t opts_lenient = {.resolve = test_resolve, .allow_unknown = true};

static void diag_print(const pbjson_diag_t *d)
{
    for (size_t i = 0; i < pbjson_diag_size(d); i++)
        fprintf(stderr, "  diag: %s\n", pbjson_diag_at(d, i, NULL));
}

static bool diag_has(const pbjson_diag_t *d, const char *needle)
{
    for (size_t i = 0; i < pbjson_diag_size(d); i++)
        if (strstr(pbjson_diag_at(d, i, NULL), needle))
            return true;
    return false;
}

static ProtobufCMessage *parse_desc(const char *text, const ProtobufCMessageDescriptor *desc,
                                    const pbjson_opts_t *opts)
{
    pbjson_diag_t *d = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    int r = pbjson_parse(text, strlen(text), "t.json", desc, opts, &m, d);
    if (r != 0)
        diag_print(d);
    ck_assert_int_eq(r, 0);
    ck_assert_ptr_nonnull(m);
    pbjson_diag_free(d);
    return m;
}

static Skiff__Test__All *parse_all(const char *text)
{
    return (Skiff__Test__All *)parse_desc(text, &skiff__test__all__descriptor, &opts_default);
}

static void msg_free(void *m)
{
    protobuf_c_message_free_unpacked(m, NULL);
}

/* Compact JSON of a message. */
static char *to_s(const void *m)
{
    char *s = pbjson_to_string(m, &opts_default, 0);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Parses `text` as All, prints it compactly and compares with `expect`. Then parses the output
 * again and checks that it prints the same (the mapping is stable). */
static void check_roundtrip(const char *text, const char *expect)
{
    Skiff__Test__All *m = parse_all(text);
    char *s = to_s(m);
    ck_assert_str_eq(s, expect);
    Skiff__Test__All *m2 = parse_all(s);
    char *s2 = to_s(m2);
    ck_assert_str_eq(s2, expect);
    /* And the binary forms agree. */
    size_t n1 = protobuf_c_message_get_packed_size(&m->base);
    size_t n2 = protobuf_c_message_get_packed_size(&m2->base);
    ck_assert_uint_eq(n1, n2);
    uint8_t *b1 = malloc(n1 + 1), *b2 = malloc(n2 + 1);
    protobuf_c_message_pack(&m->base, b1);
    protobuf_c_message_pack(&m2->base, b2);
    ck_assert_mem_eq(b1, b2, n1);
    free(b1);
    free(b2);
    free(s);
    free(s2);
    msg_free(m);
    msg_free(m2);
}

/* Expects parsing to fail with -EINVAL and a diagnostic containing each needle. Returns the
 * number of errors. */
static size_t check_error_opts(const char *text, const ProtobufCMessageDescriptor *desc,
                               const pbjson_opts_t *opts, const char *needle1, const char *needle2)
{
    pbjson_diag_t *d = pbjson_diag_new();
    ProtobufCMessage *m = (ProtobufCMessage *)0x1;
    int r = pbjson_parse(text, strlen(text), "t.json", desc, opts, &m, d);
    ck_assert_int_eq(r, -EINVAL);
    ck_assert_ptr_eq(m, (ProtobufCMessage *)0x1); /* untouched on failure */
    ck_assert_uint_ge(pbjson_diag_count(d, PBJSON_ERROR), 1);
    if (!diag_has(d, needle1) || (needle2 && !diag_has(d, needle2))) {
        diag_print(d);
        ck_abort_msg("diagnostic \"%s\"/\"%s\" not found", needle1, needle2 ? needle2 : "");
    }
    size_t n = pbjson_diag_count(d, PBJSON_ERROR);
    pbjson_diag_free(d);
    return n;
}

static size_t check_error(const char *text, const char *needle)
{
    return check_error_opts(text, &skiff__test__all__descriptor, &opts_default, needle, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Scalars */

START_TEST(test_scalars_roundtrip)
{
    check_roundtrip(
        "{\"f_int32\": -5, \"f_int64\": \"-9223372036854775808\", \"f_uint32\": 4294967295,"
        " \"f_uint64\": \"18446744073709551615\", \"f_sint32\": -2147483648,"
        " \"f_sint64\": \"9223372036854775807\", \"f_fixed32\": 7, \"f_fixed64\": \"8\","
        " \"f_sfixed32\": -9, \"f_sfixed64\": \"-10\", \"f_float\": 1.5, \"f_double\": -2.25,"
        " \"f_bool\": true, \"f_string\": \"h\\u00e9llo \\\"q\\\"\", \"f_bytes\": \"AQID\","
        " \"f_enum\": \"GREEN\", \"f_inner\": {\"name\": \"in\", \"n\": 3}}",
        "{\"f_int32\":-5,\"f_int64\":\"-9223372036854775808\",\"f_uint32\":4294967295,"
        "\"f_uint64\":\"18446744073709551615\",\"f_sint32\":-2147483648,"
        "\"f_sint64\":\"9223372036854775807\",\"f_fixed32\":7,\"f_fixed64\":\"8\","
        "\"f_sfixed32\":-9,\"f_sfixed64\":\"-10\",\"f_float\":1.5,\"f_double\":-2.25,"
        "\"f_bool\":true,\"f_string\":\"h\xc3\xa9llo \\\"q\\\"\",\"f_bytes\":\"AQID\","
        "\"f_enum\":\"GREEN\",\"f_inner\":{\"name\":\"in\",\"n\":3}}");
    /* Defaults are omitted. */
    check_roundtrip("{\"f_int32\": 0, \"f_string\": \"\", \"f_bool\": false, \"f_enum\": 0}", "{}");
}
END_TEST

START_TEST(test_repeated_roundtrip)
{
    check_roundtrip(
        "{\"r_int32\": [1, -2, 3], \"r_int64\": [\"5\", 6], \"r_string\": [\"a\", \"\"],"
        " \"r_bytes\": [\"AA==\", \"\"], \"r_enum\": [\"RED\", 2, 9],"
        " \"r_inner\": [{}, {\"name\": \"x\"}], \"r_double\": [0.5, \"NaN\"],"
        " \"r_bool\": [true, false], \"r_uint64\": [\"1\", 2], \"r_float\": []}",
        "{\"r_int32\":[1,-2,3],\"r_int64\":[\"5\",\"6\"],\"r_string\":[\"a\",\"\"],"
        "\"r_bytes\":[\"AA==\",\"\"],\"r_enum\":[\"RED\",\"GREEN\",9],"
        "\"r_inner\":[{},{\"name\":\"x\"}],\"r_double\":[0.5,\"NaN\"],"
        "\"r_bool\":[true,false],\"r_uint64\":[\"1\",\"2\"]}");
    check_error("{\"r_int32\": 1}", "expected array, got number");
    check_error("{\"r_int32\": [1, null]}", "r_int32[1]: array element cannot be null");
    /* null for the whole field means unset. */
    check_roundtrip("{\"r_int32\": null, \"r_inner\": null}", "{}");
}
END_TEST

START_TEST(test_camel_case)
{
    Skiff__Test__All *a = parse_all("{\"fInt32\": 3, \"rString\": [\"x\"], \"fInner\": {\"name\": "
                                    "\"n\"}, \"mString\": {\"k\": \"v\"}, \"wBool\": true}");
    char *s = to_s(a);
    /* Output follows the field numbers, not the input order. */
    ck_assert_str_eq(s, "{\"f_int32\":3,\"f_inner\":{\"name\":\"n\"},\"r_string\":[\"x\"],"
                        "\"m_string\":{\"k\":\"v\"},\"w_bool\":true}");
    free(s);
    msg_free(a);
    /* The JSON name is not a way around duplicate detection. */
    check_error("{\"f_int32\": 1, \"fInt32\": 2}", "duplicate field \"f_int32\"");
    /* Nor is a wrong camelization accepted. */
    check_error("{\"FInt32\": 1}", "unknown field \"FInt32\"");
}
END_TEST

START_TEST(test_enums)
{
    check_roundtrip("{\"f_enum\": 2}", "{\"f_enum\":\"GREEN\"}");
    check_roundtrip("{\"f_enum\": \"RED\"}", "{\"f_enum\":\"RED\"}");
    /* Unknown numbers are kept (open enums) and printed as numbers. */
    check_roundtrip("{\"f_enum\": 77}", "{\"f_enum\":77}");
    check_error("{\"f_enum\": \"BLUE\"}", "unknown value \"BLUE\" for enum skiff.test.Color");
    check_error("{\"f_enum\": true}", "expected enum");
    check_error("{\"f_enum\": 1.5}", "not an integer");
    /* allow_unknown drops unknown names with a warning. */
    pbjson_diag_t *d = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    const char *t = "{\"f_enum\": \"BLUE\", \"f_int32\": 1}";
    ck_assert_int_eq(
        pbjson_parse(t, strlen(t), "t", &skiff__test__all__descriptor, &opts_lenient, &m, d), 0);
    ck_assert_uint_eq(pbjson_diag_count(d, PBJSON_WARNING), 1);
    ck_assert_int_eq(((Skiff__Test__All *)m)->f_enum, 0);
    msg_free(m);
    pbjson_diag_free(d);
}
END_TEST

START_TEST(test_integers)
{
    /* 64-bit as string or number, exact beyond 2^53. */
    check_roundtrip("{\"f_int64\": 9007199254740993, \"f_uint64\": \"9007199254740993\"}",
                    "{\"f_int64\":\"9007199254740993\",\"f_uint64\":\"9007199254740993\"}");
    /* 32-bit from numeric strings and integral non-integer notation. */
    check_roundtrip("{\"f_int32\": \"12\", \"f_uint32\": 1e3, \"f_sint32\": -4.0,"
                    " \"f_fixed32\": \"2.5e1\"}",
                    "{\"f_int32\":12,\"f_uint32\":1000,\"f_sint32\":-4,\"f_fixed32\":25}");
    check_roundtrip("{\"f_int32\": -0, \"f_int64\": \"0e5\"}", "{}");
    check_error("{\"f_int32\": 2147483648}", "int32 value 2147483648 out of range");
    check_roundtrip("{\"f_int32\": -2147483648}", "{\"f_int32\":-2147483648}");
    check_error("{\"f_int32\": -2147483649}", "out of range");
    check_error("{\"f_uint32\": -1}", "out of range");
    check_error("{\"f_uint32\": 4294967296}", "out of range");
    check_error("{\"f_uint64\": \"18446744073709551616\"}", "out of range");
    check_error("{\"f_int64\": \"9223372036854775808\"}", "out of range");
    check_error("{\"f_uint64\": \"-1\"}", "out of range");
    check_error("{\"f_int32\": 1.5}", "int32 value 1.5 is not an integer");
    check_error("{\"f_int32\": 1e-1}", "not an integer");
    check_error("{\"f_int64\": \"1e400\"}", "out of range");
    check_error("{\"f_int32\": \"12a\"}", "invalid int32 value \"12a\"");
    check_error("{\"f_int32\": \" 12\"}", "invalid int32 value");
    check_error("{\"f_int32\": \"0x10\"}", "invalid int32 value");
    check_error("{\"f_int32\": true}", "expected int32, got bool");
    check_error("{\"f_int32\": {}}", "expected int32, got object");
    check_error("{\"f_bool\": \"true\"}", "expected bool, got string");
    check_error("{\"f_bool\": 1}", "expected bool, got number");
}
END_TEST

START_TEST(test_floats)
{
    check_roundtrip("{\"f_double\": \"NaN\", \"f_float\": \"-Infinity\"}",
                    "{\"f_float\":\"-Infinity\",\"f_double\":\"NaN\"}");
    check_roundtrip("{\"f_double\": \"Infinity\"}", "{\"f_double\":\"Infinity\"}");
    check_roundtrip("{\"f_double\": \"2.5\", \"f_float\": 3}", "{\"f_float\":3,\"f_double\":2.5}");
    check_roundtrip("{\"f_double\": 1e300}", "{\"f_double\":1.0000000000000001e300}");
    check_error("{\"f_double\": 1e400}", "double value 1e400 out of range");
    check_error("{\"f_float\": 1e39}", "float value 1e39 out of range");
    check_error("{\"f_double\": \"nan\"}", "invalid double value \"nan\"");
    check_error("{\"f_double\": \"1.\"}", "invalid double value");

    /* A float prints as the double of its shortest decimal form, and reads back exactly. */
    Skiff__Test__All *a = parse_all("{\"f_float\": 0.1, \"f_double\": 0.1}");
    ck_assert(a->f_float == 0.1f);
    ck_assert(a->f_double == 0.1);
    char *s = to_s(a);
    Skiff__Test__All *b = parse_all(s);
    ck_assert(b->f_float == 0.1f);
    ck_assert(b->f_double == 0.1);
    ck_assert_ptr_null(strstr(s, "0.10000000149"));
    free(s);
    msg_free(a);
    msg_free(b);
}
END_TEST

START_TEST(test_bytes)
{
    check_roundtrip("{\"f_bytes\": \"AQI\"}", "{\"f_bytes\":\"AQI=\"}");
    check_roundtrip("{\"f_bytes\": \"_-8=\"}", "{\"f_bytes\":\"/+8=\"}");
    check_roundtrip("{\"f_bytes\": \"/+8\"}", "{\"f_bytes\":\"/+8=\"}");
    check_roundtrip("{\"f_bytes\": \"AAAA\"}", "{\"f_bytes\":\"AAAA\"}");
    Skiff__Test__All *a = parse_all("{\"f_bytes\": \"_-8\"}");
    ck_assert_uint_eq(a->f_bytes.len, 2);
    ck_assert_uint_eq(a->f_bytes.data[0], 0xff);
    ck_assert_uint_eq(a->f_bytes.data[1], 0xef);
    msg_free(a);
    check_error("{\"f_bytes\": \"A===\"}", "f_bytes: invalid base64 data");
    check_error("{\"f_bytes\": \"AQI=A\"}", "invalid base64");
    check_error("{\"f_bytes\": \"AQ=\"}", "invalid base64");
    check_error("{\"f_bytes\": \"A\"}", "invalid base64");
    check_error("{\"f_bytes\": \"A*==\"}", "invalid base64");
    check_error("{\"r_bytes\": [\"AA==\", \"!!\"]}", "r_bytes[1]: invalid base64");
}
END_TEST

START_TEST(test_strings)
{
    check_error("{\"f_string\": 12}", "expected string, got number 12");
    check_error("{\"f_string\": true}", "expected string, got bool");
    check_error("{\"f_string\": \"a\\u0000b\"}", "NUL");
    /* JSON surrogate pairs are not YAML; they are rewritten before parsing. */
    Skiff__Test__All *a = parse_all("{\"f_string\": \"x\\ud83d\\ude00y\", \"r_string\": "
                                    "[\"\\\\ud83d\\\\ude00\"]}");
    ck_assert_str_eq(a->f_string, "x\xf0\x9f\x98\x80y");
    /* An escaped backslash followed by "ud83d" is literal text. */
    ck_assert_str_eq(a->r_string[0], "\\ud83d\\ude00");
    msg_free(a);
    check_error("{\"f_string\": \"\\ud83d\"}", "syntax error");
}
END_TEST

/* ------------------------------------------------------------------------------------------ */
/* Well-known types */

START_TEST(test_duration)
{
    check_roundtrip("{\"duration\": \"1.5s\"}", "{\"duration\":\"1.500s\"}");
    check_roundtrip("{\"duration\": \"0.000000001s\"}", "{\"duration\":\"0.000000001s\"}");
    check_roundtrip("{\"duration\": \"-0.5s\"}", "{\"duration\":\"-0.500s\"}");
    check_roundtrip("{\"duration\": \"3s\"}", "{\"duration\":\"3s\"}");
    check_roundtrip("{\"duration\": \"0s\"}", "{\"duration\":\"0s\"}");
    check_roundtrip("{\"duration\": \"1.000010s\"}", "{\"duration\":\"1.000010s\"}");
    check_roundtrip("{\"duration\": \"-315576000000.999999999s\"}",
                    "{\"duration\":\"-315576000000.999999999s\"}");
    Skiff__Test__All *a = parse_all("{\"duration\": \"-1.25s\"}");
    ck_assert_int_eq(a->duration->seconds, -1);
    ck_assert_int_eq(a->duration->nanos, -250000000);
    msg_free(a);
    check_error("{\"duration\": \"1.5\"}", "invalid duration \"1.5\"");
    check_error("{\"duration\": \"1.5ms\"}", "invalid duration");
    check_error("{\"duration\": \"s\"}", "invalid duration");
    check_error("{\"duration\": \".5s\"}", "invalid duration");
    check_error("{\"duration\": \"1.0000000001s\"}", "invalid duration");
    check_error("{\"duration\": \"315576000001s\"}", "invalid duration");
    check_error("{\"duration\": 1}", "expected duration string, got number");
    check_error("{\"r_duration\": [\"1s\", \"x\"]}", "r_duration[1]: invalid duration");
}
END_TEST

START_TEST(test_timestamp)
{
    check_roundtrip("{\"ts\": \"2025-06-04T14:49:56.123Z\"}",
                    "{\"ts\":\"2025-06-04T14:49:56.123Z\"}");
    check_roundtrip("{\"ts\": \"1970-01-01T00:00:00Z\"}", "{\"ts\":\"1970-01-01T00:00:00Z\"}");
    check_roundtrip("{\"ts\": \"0001-01-01T00:00:00Z\"}", "{\"ts\":\"0001-01-01T00:00:00Z\"}");
    check_roundtrip("{\"ts\": \"9999-12-31T23:59:59.999999999Z\"}",
                    "{\"ts\":\"9999-12-31T23:59:59.999999999Z\"}");
    check_roundtrip("{\"ts\": \"1969-12-31T23:59:59.5Z\"}",
                    "{\"ts\":\"1969-12-31T23:59:59.500Z\"}");
    check_roundtrip("{\"ts\": \"2024-02-29T12:00:00.000001Z\"}",
                    "{\"ts\":\"2024-02-29T12:00:00.000001Z\"}");
    check_roundtrip("{\"ts\": \"2025-06-04T16:49:56+02:00\"}", "{\"ts\":\"2025-06-04T14:49:56Z\"}");
    check_roundtrip("{\"ts\": \"2025-06-04T12:19:56-02:30\"}", "{\"ts\":\"2025-06-04T14:49:56Z\"}");
    Skiff__Test__All *a = parse_all("{\"ts\": \"2025-06-04T14:49:56.123Z\"}");
    ck_assert_int_eq(a->ts->seconds, 1749048596);
    ck_assert_int_eq(a->ts->nanos, 123000000);
    msg_free(a);
    check_error("{\"ts\": \"2025-02-29T00:00:00Z\"}", "invalid timestamp");
    check_error("{\"ts\": \"2025-04-31T00:00:00Z\"}", "invalid timestamp");
    check_error("{\"ts\": \"2025-06-04 14:49:56Z\"}", "invalid timestamp");
    check_error("{\"ts\": \"2025-06-04T14:49:56\"}", "invalid timestamp");
    check_error("{\"ts\": \"2025-06-04T24:00:00Z\"}", "invalid timestamp");
    check_error("{\"ts\": \"0001-01-01T00:00:00+00:01\"}", "invalid timestamp");
}
END_TEST

START_TEST(test_wrappers)
{
    /* Present wrappers print even when they hold the default. */
    check_roundtrip("{\"w_double\": 0, \"w_float\": 1.5, \"w_int64\": \"5\", \"w_uint64\": 6,"
                    " \"w_int32\": -1, \"w_uint32\": 0, \"w_bool\": false, \"w_string\": \"\","
                    " \"w_bytes\": \"AQ==\"}",
                    "{\"w_double\":0,\"w_float\":1.5,\"w_int64\":\"5\",\"w_uint64\":\"6\","
                    "\"w_int32\":-1,\"w_uint32\":0,\"w_bool\":false,\"w_string\":\"\","
                    "\"w_bytes\":\"AQ==\"}");
    check_roundtrip("{\"w_bool\": null, \"w_int64\": null}", "{}");
    Skiff__Test__All *a = parse_all("{\"w_bool\": false}");
    ck_assert_ptr_nonnull(a->w_bool);
    ck_assert_int_eq(a->w_bool->value, 0);
    ck_assert_ptr_null(a->w_int64);
    msg_free(a);
    check_error("{\"w_bool\": {\"value\": true}}", "expected bool, got object");
    check_error("{\"w_uint32\": -1}", "out of range");
}
END_TEST

START_TEST(test_struct)
{
    check_roundtrip("{\"st\": {\"a\": 1, \"b\": [true, null, \"x\", {\"c\": 1.5, \"d\": []}], "
                    "\"e\": {}, \"f\": -0.25, \"g\": \"NaN\"}}",
                    "{\"st\":{\"a\":1,\"b\":[true,null,\"x\",{\"c\":1.5,\"d\":[]}],\"e\":{},"
                    "\"f\":-0.25,\"g\":\"NaN\"}}");
    check_roundtrip("{\"val\": null}", "{\"val\":null}");
    check_roundtrip("{\"val\": \"s\"}", "{\"val\":\"s\"}");
    check_roundtrip("{\"val\": [1, [2, [3]]]}", "{\"val\":[1,[2,[3]]]}");
    check_roundtrip("{\"val\": {\"k\": null}}", "{\"val\":{\"k\":null}}");
    check_roundtrip("{\"lv\": [1, \"a\", null]}", "{\"lv\":[1,\"a\",null]}");
    check_roundtrip("{\"lv\": []}", "{\"lv\":[]}");
    check_roundtrip("{\"st\": {}}", "{\"st\":{}}");
    check_roundtrip("{\"r_value\": [null, 1, {}]}", "{\"r_value\":[null,1,{}]}");
    check_roundtrip("{\"m_value\": {\"x\": null, \"y\": [true]}}",
                    "{\"m_value\":{\"x\":null,\"y\":[true]}}");
    check_roundtrip("{\"null_value\": null}", "{}");
    check_roundtrip("{\"empty\": {}}", "{\"empty\":{}}");

    Skiff__Test__All *a = parse_all("{\"val\": null, \"st\": {\"n\": 2}}");
    ck_assert_int_eq(a->val->kind_case, GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE);
    ck_assert_uint_eq(a->st->n_fields, 1);
    ck_assert_str_eq(a->st->fields[0]->key, "n");
    ck_assert(a->st->fields[0]->value->number_value == 2.0);
    msg_free(a);

    /* Top-level Struct and Value. */
    ProtobufCMessage *m =
        parse_desc("{\"z\": {\"y\": [1]}}", &google__protobuf__struct__descriptor, NULL);
    char *s = to_s(m);
    ck_assert_str_eq(s, "{\"z\":{\"y\":[1]}}");
    free(s);
    msg_free(m);
    m = parse_desc("null", &google__protobuf__value__descriptor, NULL);
    s = to_s(m);
    ck_assert_str_eq(s, "null");
    free(s);
    msg_free(m);

    check_error("{\"st\": [1]}", "expected object for google.protobuf.Struct, got array");
    check_error("{\"st\": {\"a\": 1, \"a\": 2}}", "duplicate key \"a\" (first at line 1)");
    check_error("{\"lv\": {}}", "expected array for google.protobuf.ListValue");
    check_error("{\"empty\": {\"x\": 1}}", "unknown field \"x\" in google.protobuf.Empty");
}
END_TEST

START_TEST(test_fieldmask)
{
    check_roundtrip("{\"fm\": \"fooBar.baz,qux\"}", "{\"fm\":\"fooBar.baz,qux\"}");
    check_roundtrip("{\"fm\": \"\"}", "{\"fm\":\"\"}");
    Skiff__Test__All *a = parse_all("{\"fm\": \"fooBar.bazQux,a\"}");
    ck_assert_uint_eq(a->fm->n_paths, 2);
    ck_assert_str_eq(a->fm->paths[0], "foo_bar.baz_qux");
    ck_assert_str_eq(a->fm->paths[1], "a");
    msg_free(a);
    check_error("{\"fm\": \"foo_bar\"}", "must be lowerCamelCase");
    check_error("{\"fm\": [\"a\"]}", "expected FieldMask string");
}
END_TEST

START_TEST(test_maps)
{
    check_roundtrip("{\"m_inner\": {\"a\": {\"n\": 1}, \"b\": {}}, \"m_string\": {\"k\": \"v\"},"
                    " \"m_int\": {\"-3\": \"x\", \"7\": \"y\"}, \"m_bool\": {\"true\": \"1\","
                    " \"false\": 2}, \"m_u64\": {\"18446744073709551615\": \"RED\"}}",
                    "{\"m_inner\":{\"a\":{\"n\":1},\"b\":{}},\"m_string\":{\"k\":\"v\"},"
                    "\"m_int\":{\"-3\":\"x\",\"7\":\"y\"},\"m_bool\":{\"true\":\"1\","
                    "\"false\":\"2\"},\"m_u64\":{\"18446744073709551615\":\"RED\"}}");
    Skiff__Test__All *a = parse_all("{\"m_int\": {\"5\": \"five\"}}");
    ck_assert_uint_eq(a->n_m_int, 1);
    ck_assert_int_eq(a->m_int[0]->key, 5);
    ck_assert_str_eq(a->m_int[0]->value, "five");
    msg_free(a);
    check_error("{\"m_int\": {\"x\": \"a\"}}", "m_int[\"x\"]: invalid int32 value \"x\"");
    check_error("{\"m_bool\": {\"yes\": 1}}", "invalid bool map key \"yes\"");
    check_error("{\"m_string\": {\"a\": \"1\", \"a\": \"2\"}}", "duplicate key \"a\"");
    check_error("{\"m_string\": {\"a\": null}}", "map value cannot be null");
    check_error("{\"m_inner\": {\"a\": null}}", "map value cannot be null");
    check_error("{\"m_inner\": {\"a\": {\"bogus\": 1}}}", "m_inner[\"a\"].bogus: unknown field");
    check_error("{\"m_string\": [\"a\"]}", "expected object (map), got array");
}
END_TEST

START_TEST(test_oneof)
{
    check_roundtrip("{\"c_name\": \"x\"}", "{\"c_name\":\"x\"}");
    /* Selected oneof members print even when zero. */
    check_roundtrip("{\"c_num\": 0}", "{\"c_num\":\"0\"}");
    check_roundtrip("{\"c_flag\": false}", "{\"c_flag\":false}");
    check_roundtrip("{\"c_inner\": {}}", "{\"c_inner\":{}}");
    /* null leaves the member unset, so another member may follow. */
    check_roundtrip("{\"c_name\": null, \"c_num\": \"4\"}", "{\"c_num\":\"4\"}");
    check_error("{\"c_name\": \"x\", \"c_num\": 1}",
                "c_num: fields \"c_name\" and \"c_num\" are in the same oneof");
    check_error("{\"c_inner\": {\"name\": \"a\"}, \"cName\": \"y\"}", "same oneof");
    Skiff__Test__All *a = parse_all("{\"c_inner\": {\"name\": \"q\"}}");
    ck_assert_int_eq(a->choice_case, SKIFF__TEST__ALL__CHOICE_C_INNER);
    ck_assert_str_eq(a->c_inner->name, "q");
    msg_free(a);
}
END_TEST

START_TEST(test_any)
{
    /* A known type: fields inline, "@type" printed first wherever it was written. */
    check_roundtrip(
        "{\"any\": {\"name\": \"x\", \"@type\": \"type.googleapis.com/skiff.test.Inner\","
        " \"n\": 3}}",
        "{\"any\":{\"@type\":\"type.googleapis.com/skiff.test.Inner\",\"name\":\"x\","
        "\"n\":3}}");
    Skiff__Test__All *a =
        parse_all("{\"any\": {\"@type\": \"type.googleapis.com/skiff.test.Inner\","
                  " \"name\": \"x\", \"n\": 3}}");
    ck_assert_str_eq(a->any->type_url, "type.googleapis.com/skiff.test.Inner");
    Skiff__Test__Inner *in =
        skiff__test__inner__unpack(NULL, a->any->value.len, a->any->value.data);
    ck_assert_ptr_nonnull(in);
    ck_assert_str_eq(in->name, "x");
    ck_assert_int_eq(in->n, 3);
    skiff__test__inner__free_unpacked(in, NULL);
    msg_free(a);

    /* Well-known types go under "value". */
    check_roundtrip(
        "{\"anys\": [{\"@type\": \"type.googleapis.com/google.protobuf.Duration\","
        " \"value\": \"1s\"}, {\"@type\": \"type.googleapis.com/google.protobuf.Struct\","
        " \"value\": {\"a\": [1]}}, {\"@type\": \"x/google.protobuf.Int64Value\","
        " \"value\": \"7\"}, {\"@type\": \"x/google.protobuf.Empty\", \"value\": {}},"
        " {\"@type\": \"x/google.protobuf.Any\", \"value\": {\"@type\": "
        "\"x/skiff.test.Inner\", \"n\": 1}}, {\"@type\": \"x/google.protobuf.Value\","
        " \"value\": null}]}",
        "{\"anys\":[{\"@type\":\"type.googleapis.com/google.protobuf.Duration\","
        "\"value\":\"1s\"},{\"@type\":\"type.googleapis.com/google.protobuf.Struct\","
        "\"value\":{\"a\":[1]}},{\"@type\":\"x/google.protobuf.Int64Value\","
        "\"value\":\"7\"},{\"@type\":\"x/google.protobuf.Empty\",\"value\":{}},"
        "{\"@type\":\"x/google.protobuf.Any\",\"value\":{\"@type\":"
        "\"x/skiff.test.Inner\",\"n\":1}},{\"@type\":\"x/google.protobuf.Value\","
        "\"value\":null}]}");
    /* Empty may also be written without "value". */
    check_roundtrip("{\"any\": {\"@type\": \"x/google.protobuf.Empty\"}}",
                    "{\"any\":{\"@type\":\"x/google.protobuf.Empty\",\"value\":{}}}");
    /* An unknown type round-trips in the opaque form. */
    check_roundtrip("{\"any\": {\"@type\": \"type.googleapis.com/foo.Bar\", \"value\": \"CgF4\"}}",
                    "{\"any\":{\"@type\":\"type.googleapis.com/foo.Bar\",\"value\":\"CgF4\"}}");
    a = parse_all("{\"any\": {\"@type\": \"type.googleapis.com/foo.Bar\", \"value\": \"CgF4\"}}");
    ck_assert_uint_eq(a->any->value.len, 3);
    /* Printed without a resolver, a known type is opaque too. */
    char *s = pbjson_to_string(&a->base, NULL, 0);
    ck_assert_str_eq(s, "{\"any\":{\"@type\":\"type.googleapis.com/foo.Bar\",\"value\":\"CgF4\"}}");
    free(s);
    msg_free(a);
    a = parse_all(
        "{\"any\": {\"@type\": \"type.googleapis.com/skiff.test.Inner\", \"name\": \"x\"}}");
    s = pbjson_to_string(&a->base, NULL, 0);
    ck_assert_str_eq(s, "{\"any\":{\"@type\":\"type.googleapis.com/skiff.test.Inner\","
                        "\"value\":\"CgF4\"}}");
    free(s);
    msg_free(a);
    check_roundtrip("{\"any\": {}}", "{\"any\":{}}");

    check_error("{\"any\": {\"@type\": \"type.googleapis.com/foo.Bar\", \"x\": 1}}",
                "unknown type \"type.googleapis.com/foo.Bar\" in google.protobuf.Any");
    check_error("{\"any\": {\"name\": \"x\"}}", "without \"@type\"");
    check_error("{\"any\": {\"@type\": \"x/skiff.test.Inner\", \"bogus\": 1}}",
                "any.bogus: unknown field \"bogus\" in skiff.test.Inner");
    check_error("{\"any\": {\"@type\": \"x/skiff.test.Inner\", \"@foo\": 1}}",
                "unexpected key \"@foo\"");
    check_error("{\"f_inner\": {\"@type\": \"x/skiff.test.Inner\"}}", "unexpected key \"@type\"");
    check_error(
        "{\"any\": {\"@type\": \"x/google.protobuf.Duration\", \"value\": \"1s\", \"y\": 1}}",
        "only \"value\"");
    check_error("{\"any\": {\"@type\": \"x/google.protobuf.Duration\"}}", "needs \"value\"");
    check_error("{\"any\": {\"@type\": 5}}", "\"@type\" must be a string");
    check_error("{\"any\": {\"@type\": \"nourl\"}}", "invalid type URL");
    check_error("{\"any\": {\"@type\": \"x/foo.Bar\", \"value\": \"!\"}}", "invalid base64");
    check_error("{\"any\": {\"@type\": \"x/a.B\", \"@type\": \"x/a.B\"}}",
                "duplicate key \"@type\"");
    check_error("{\"any\": {\"@type\": \"x/google.protobuf.Duration\", \"value\": \"1s\","
                " \"value\": \"2s\"}}",
                "duplicate key \"value\"");
    check_error("{\"st\": {? [1]: 2, a: 1}}", "object keys must be strings");

    /* allow_unknown: a warning, and the Any keeps its type URL. */
    pbjson_diag_t *d = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    const char *t = "{\"any\": {\"@type\": \"type.googleapis.com/foo.Bar\", \"x\": 1}}";
    ck_assert_int_eq(
        pbjson_parse(t, strlen(t), "t", &skiff__test__all__descriptor, &opts_lenient, &m, d), 0);
    ck_assert_uint_eq(pbjson_diag_count(d, PBJSON_WARNING), 1);
    ck_assert(diag_has(d, "t:1: any: unknown type"));
    a = (Skiff__Test__All *)m;
    ck_assert_str_eq(a->any->type_url, "type.googleapis.com/foo.Bar");
    ck_assert_uint_eq(a->any->value.len, 0);
    msg_free(m);
    pbjson_diag_free(d);
}
END_TEST

/* ------------------------------------------------------------------------------------------ */
/* Diagnostics */

START_TEST(test_unknown_field)
{
    const char *t = "{\n"
                    "  \"r_inner\": [\n"
                    "    {},\n"
                    "    {\"child\": {\n"
                    "      \"foo\": 1}}\n"
                    "  ]\n"
                    "}\n";
    check_error_opts(t, &skiff__test__all__descriptor, &opts_default,
                     "t.json:5: r_inner[1].child.foo: unknown field \"foo\" in skiff.test.Inner",
                     NULL);

    /* allow_unknown: one warning per field, and the rest is parsed. */
    const char *t2 = "{\"zzz\": 1, \"f_int32\": 4, \"f_inner\": {\"yyy\": {\"deep\": [1]}}}";
    pbjson_diag_t *d = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    ck_assert_int_eq(
        pbjson_parse(t2, strlen(t2), "x.yaml", &skiff__test__all__descriptor, &opts_lenient, &m, d),
        0);
    ck_assert_uint_eq(pbjson_diag_count(d, PBJSON_WARNING), 2);
    ck_assert_uint_eq(pbjson_diag_count(d, PBJSON_ERROR), 0);
    ck_assert(diag_has(d, "x.yaml:1: zzz: unknown field \"zzz\" in skiff.test.All (ignored)"));
    ck_assert(diag_has(d, "f_inner.yyy: unknown field"));
    pbjson_severity_t sev = 0;
    ck_assert_ptr_nonnull(pbjson_diag_at(d, 0, &sev));
    ck_assert_int_eq(sev, PBJSON_WARNING);
    ck_assert_ptr_null(pbjson_diag_at(d, 2, NULL));
    ck_assert_int_eq(((Skiff__Test__All *)m)->f_int32, 4);
    msg_free(m);
    pbjson_diag_free(d);
}
END_TEST

START_TEST(test_all_errors_collected)
{
    const char *t = "f_int32: x\n"
                    "bogus: 1\n"
                    "f_inner:\n"
                    "  n: 1.5\n"
                    "  name: ok\n"
                    "r_bytes: ['AA==', '?']\n"
                    "f_string: fine\n";
    size_t n = check_error_opts(t, &skiff__test__all__descriptor, &opts_default,
                                "t.json:1: f_int32: invalid int32 value \"x\"",
                                "t.json:2: bogus: unknown field");
    ck_assert_uint_eq(n, 4);
    check_error_opts(t, &skiff__test__all__descriptor, &opts_default,
                     "t.json:4: f_inner.n: int32 value 1.5 is not an integer",
                     "t.json:6: r_bytes[1]: invalid base64 data");
}
END_TEST

START_TEST(test_duplicate_keys)
{
    check_error("{\"f_int32\": 1, \"f_int32\": 2}",
                "duplicate field \"f_int32\" (first at line 1)");
    check_error("{\"f_inner\": {\"n\": 1, \"n\": 1}}", "f_inner.n: duplicate field");
    check_error("{\"r_inner\": [{\"name\": \"a\", \"name\": \"b\"}]}",
                "r_inner[0].name: duplicate");
}
END_TEST

START_TEST(test_syntax_and_limits)
{
    check_error("{\"f_int32\": 1", "t.json:1: syntax error");
    check_error("{\n\"a\": [1,\n}", "t.json:3: syntax error");
    check_error("", "empty document");
    check_error("# only a comment\n", "empty document");
    check_error("null", "expected skiff.test.All, got null");
    check_error("[1]", "expected object for skiff.test.All, got array");
    check_error("a: 1\n---\nb: 2\n", "more than one document");
    check_error("{? [1]: 2}", "object keys must be strings");
    check_error("a: *nope\n", "unknown alias");

    /* Depth limit: deep arrays into a Value. */
    char buf[1024];
    size_t o = 0;
    o += (size_t)snprintf(buf + o, sizeof(buf) - o, "{\"val\": ");
    for (int i = 0; i < 150; i++)
        buf[o++] = '[';
    for (int i = 0; i < 150; i++)
        buf[o++] = ']';
    buf[o++] = '}';
    buf[o] = '\0';
    check_error(buf, "nesting deeper than 100 levels");
    pbjson_opts_t deep = {.max_depth = 200};
    ProtobufCMessage *m = parse_desc(buf, &skiff__test__all__descriptor, &deep);
    msg_free(m);
    pbjson_opts_t shallow = {.max_depth = 3};
    check_error_opts("{\"f_inner\": {\"child\": {\"child\": {\"name\": \"x\"}}}}",
                     &skiff__test__all__descriptor, &shallow, "nesting deeper than 3", NULL);

    /* Size limit. */
    pbjson_opts_t tiny = {.max_size = 8};
    pbjson_diag_t *d = pbjson_diag_new();
    const char *t = "{\"f_int32\": 1}";
    ck_assert_int_eq(pbjson_parse(t, strlen(t), "t", &skiff__test__all__descriptor, &tiny, &m, d),
                     -EFBIG);
    ck_assert(diag_has(d, "more than the limit of 8"));
    pbjson_diag_free(d);

    /* Alias expansion ("billion laughs") is bounded. */
    const char *bomb = "st:\n"
                       "  a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                       "  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                       "  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                       "  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                       "  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                       "  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
                       "  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
    check_error(bomb, "too large after alias expansion");
    /* An alias may not refer to the collection it is in. */
    check_error("st: &a {x: *a}\n", "unknown alias");
}
END_TEST

START_TEST(test_diag_list)
{
    pbjson_diag_t *d = pbjson_diag_new();
    ck_assert_uint_eq(pbjson_diag_count(d, PBJSON_SEVERITY_ANY), 0);
    for (int i = 0; i < PBJSON_DIAG_MAX + 5; i++)
        ck_assert_int_eq(pbjson_diag_add(d, PBJSON_ERROR, "e%d", i), 0);
    pbjson_diag_add(d, PBJSON_WARNING, "w");
    ck_assert_uint_eq(pbjson_diag_count(d, PBJSON_ERROR), PBJSON_DIAG_MAX + 5);
    ck_assert_uint_eq(pbjson_diag_count(d, PBJSON_SEVERITY_ANY), PBJSON_DIAG_MAX + 6);
    ck_assert_uint_eq(pbjson_diag_size(d), PBJSON_DIAG_MAX + 1);
    ck_assert_str_eq(pbjson_diag_at(d, 0, NULL), "e0");
    ck_assert_str_eq(pbjson_diag_at(d, PBJSON_DIAG_MAX, NULL), "(6 more diagnostics not shown)");
    pbjson_diag_clear(d);
    ck_assert_uint_eq(pbjson_diag_size(d), 0);
    pbjson_diag_free(d);
    pbjson_diag_free(NULL);
    ck_assert_uint_eq(pbjson_diag_count(NULL, PBJSON_ERROR), 0);

    /* Parsing without a diagnostics list still fails cleanly. */
    ProtobufCMessage *m = NULL;
    ck_assert_int_eq(pbjson_parse("{x", 2, NULL, &skiff__test__all__descriptor, NULL, &m, NULL),
                     -EINVAL);
    ck_assert_ptr_null(m);
}
END_TEST

/* ------------------------------------------------------------------------------------------ */
/* YAML */

START_TEST(test_yaml_equals_json)
{
    const char *json = "{\"f_int32\": 5, \"f_string\": \"123\", \"f_bool\": true,"
                       " \"f_int64\": \"-7\", \"duration\": \"2.5s\","
                       " \"r_inner\": [{\"name\": \"a\", \"n\": 1}, {\"name\": \"a\", \"n\": 1}],"
                       " \"m_string\": {\"x y\": \"multi\\nline\\n\"},"
                       " \"st\": {\"on\": \"yes\", \"n\": null, \"t\": true, \"q\": \"true\"},"
                       " \"any\": {\"@type\": \"type.googleapis.com/skiff.test.Inner\", \"n\": 2},"
                       " \"f_bytes\": \"AQID\", \"f_enum\": \"RED\", \"r_double\": [1.5, -2]}";
    const char *yaml = "# comment\n"
                       "f_int32: 5\n"
                       "f_string: \"123\"   # quoted: a string\n"
                       "fBool: True\n"
                       "f_int64: -7\n"
                       "duration: 2.5s\n"
                       "r_inner:\n"
                       "- &item\n"
                       "  name: a\n"
                       "  n: 1\n"
                       "- *item\n"
                       "m_string:\n"
                       "  x y: |\n"
                       "    multi\n"
                       "    line\n"
                       "st:\n"
                       "  'on': yes\n"
                       "  n: ~\n"
                       "  t: true\n"
                       "  q: !!str true\n"
                       "any:\n"
                       "  '@type': type.googleapis.com/skiff.test.Inner\n"
                       "  n: 2\n"
                       "f_bytes: AQID\n"
                       "f_enum: RED\n"
                       "r_double: [1.5, -2]\n";
    Skiff__Test__All *a = parse_all(json);
    Skiff__Test__All *b = parse_all(yaml);
    char *sa = to_s(a), *sb = to_s(b);
    ck_assert_str_eq(sa, sb);
    free(sa);
    free(sb);
    msg_free(a);
    msg_free(b);

    /* Plain scalars are typed, quoted ones never. */
    check_error("f_string: 123\n", "t.json:1: f_string: expected string, got number 123");
    check_error("f_string: null\nf_int32: '1'\nf_bool: 'true'\n",
                "t.json:3: f_bool: expected bool");
    check_error("f_int32: 1\n  bad indent: 2\n", "syntax error");
    check_error("f_inner: [1]\n", "expected object for skiff.test.Inner, got array");
    check_error("f_inner:\n  n: 1\n  n: 2\n", "t.json:3: f_inner.n: duplicate field");
}
END_TEST

START_TEST(test_parse_file_and_json)
{
    char path[] = "/tmp/pbjson-test-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *t = "f_int32: 9\nf_inner: {name: file}\n";
    ck_assert_int_eq(write(fd, t, strlen(t)), (int)strlen(t));
    close(fd);
    ProtobufCMessage *m = NULL;
    pbjson_diag_t *d = pbjson_diag_new();
    ck_assert_int_eq(pbjson_parse_file(path, &skiff__test__all__descriptor, NULL, &m, d), 0);
    Skiff__Test__All *a = (Skiff__Test__All *)m;
    ck_assert_int_eq(a->f_int32, 9);
    ck_assert_str_eq(a->f_inner->name, "file");

    /* pbjson_parse_json() reads an existing jansson tree. */
    json_t *j = pbjson_to_json(m, NULL);
    ck_assert_ptr_nonnull(j);
    ProtobufCMessage *m2 = NULL;
    ck_assert_int_eq(pbjson_parse_json(j, NULL, &skiff__test__all__descriptor, NULL, &m2, d), 0);
    ck_assert_int_eq(((Skiff__Test__All *)m2)->f_int32, 9);
    json_decref(j);
    msg_free(m2);
    msg_free(m);

    /* File errors name the file. */
    FILE *f = fopen(path, "w");
    fputs("f_int32: 1\nnope: 2\n", f);
    fclose(f);
    pbjson_diag_clear(d);
    m = NULL;
    ck_assert_int_eq(pbjson_parse_file(path, &skiff__test__all__descriptor, NULL, &m, d), -EINVAL);
    char expect[128];
    snprintf(expect, sizeof(expect), "%s:2: nope: unknown field", path);
    ck_assert(diag_has(d, expect));
    unlink(path);
    pbjson_diag_clear(d);
    ck_assert_int_eq(pbjson_parse_file(path, &skiff__test__all__descriptor, NULL, &m, d), -ENOENT);
    ck_assert(diag_has(d, "cannot open"));
    ck_assert_ptr_null(m);
    pbjson_diag_free(d);
}
END_TEST

/* ------------------------------------------------------------------------------------------ */
/* Output of messages built in C, and proto2 presence */

START_TEST(test_output_from_c)
{
    Skiff__Test__All a = SKIFF__TEST__ALL__INIT;
    char bad[] = "a\xff"
                 "b";
    a.f_string = bad;
    int32_t ints[] = {1, 2};
    a.n_r_int32 = 2;
    a.r_int32 = ints;
    Skiff__Test__All__MU64Entry e1 = SKIFF__TEST__ALL__MU64_ENTRY__INIT;
    e1.key = 3;
    e1.value = 42; /* not a Color */
    Skiff__Test__All__MU64Entry *entries[] = {&e1};
    a.n_m_u64 = 1;
    a.m_u64 = entries;
    Google__Protobuf__Duration dur = GOOGLE__PROTOBUF__DURATION__INIT;
    dur.seconds = 1;
    dur.nanos = 500;
    a.duration = &dur;
    Google__Protobuf__Value v = GOOGLE__PROTOBUF__VALUE__INIT; /* kind unset */
    a.val = &v;
    char *s = to_s(&a);
    ck_assert_str_eq(s, "{\"f_string\":\"a\xef\xbf\xbd"
                        "b\",\"r_int32\":[1,2],\"m_u64\":{\"3\":42},"
                        "\"duration\":\"1.000000500s\",\"val\":null}");
    free(s);

    /* A nested Any whose bytes do not decode as its type stays opaque. */
    Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
    any.type_url = "type.googleapis.com/skiff.test.Inner";
    uint8_t junk[] = {0xff, 0xff};
    any.value.data = junk;
    any.value.len = 2;
    Skiff__Test__All b = SKIFF__TEST__ALL__INIT;
    b.any = &any;
    s = to_s(&b);
    ck_assert_str_eq(s, "{\"any\":{\"@type\":\"type.googleapis.com/skiff.test.Inner\","
                        "\"value\":\"//8=\"}}");
    free(s);

    /* Indented output. */
    Skiff__Test__Inner in = SKIFF__TEST__INNER__INIT;
    in.n = 1;
    s = pbjson_to_string(&in.base, NULL, 2);
    ck_assert_str_eq(s, "{\n  \"n\": 1\n}");
    free(s);
}
END_TEST

START_TEST(test_proto2_presence)
{
    Skiff__Test2__Legacy *l = (Skiff__Test2__Legacy *)parse_desc(
        "{\"id\": 0, \"count\": 0, \"flag\": false, \"blob\": \"\", \"values\": [1]}",
        &skiff__test2__legacy__descriptor, NULL);
    ck_assert(l->has_count);
    ck_assert_int_eq(l->count, 0);
    ck_assert(l->has_flag);
    ck_assert(l->has_blob);
    ck_assert_str_eq(l->name, "dflt");
    char *s = to_s(l);
    /* Explicit presence prints zero values; the default string is not "set". */
    ck_assert_str_eq(s, "{\"count\":0,\"blob\":\"\",\"id\":0,\"values\":[1],\"flag\":false}");
    free(s);
    msg_free(l);
    l = (Skiff__Test2__Legacy *)parse_desc("{\"name\": \"n\", \"next\": {\"id\": 2}, \"id\": 1}",
                                           &skiff__test2__legacy__descriptor, NULL);
    s = to_s(l);
    ck_assert_str_eq(s, "{\"name\":\"n\",\"next\":{\"id\":2},\"id\":1}");
    free(s);
    msg_free(l);
}
END_TEST

static Suite *pbjson_suite(void)
{
    Suite *s = suite_create("pbjson");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_scalars_roundtrip);
    tcase_add_test(tc, test_repeated_roundtrip);
    tcase_add_test(tc, test_camel_case);
    tcase_add_test(tc, test_enums);
    tcase_add_test(tc, test_integers);
    tcase_add_test(tc, test_floats);
    tcase_add_test(tc, test_bytes);
    tcase_add_test(tc, test_strings);
    tcase_add_test(tc, test_duration);
    tcase_add_test(tc, test_timestamp);
    tcase_add_test(tc, test_wrappers);
    tcase_add_test(tc, test_struct);
    tcase_add_test(tc, test_fieldmask);
    tcase_add_test(tc, test_maps);
    tcase_add_test(tc, test_oneof);
    tcase_add_test(tc, test_any);
    tcase_add_test(tc, test_unknown_field);
    tcase_add_test(tc, test_all_errors_collected);
    tcase_add_test(tc, test_duplicate_keys);
    tcase_add_test(tc, test_syntax_and_limits);
    tcase_add_test(tc, test_diag_list);
    tcase_add_test(tc, test_yaml_equals_json);
    tcase_add_test(tc, test_parse_file_and_json);
    tcase_add_test(tc, test_output_from_c);
    tcase_add_test(tc, test_proto2_presence);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pbjson_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
