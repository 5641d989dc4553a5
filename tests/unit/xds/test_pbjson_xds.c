/* The JSON mapping over every message skiff declares: each one, filled with a value in every
 * field (nested three levels deep), printed as JSON and parsed back, packs to the same bytes.
 * And Istio's two bootstrap goldens load, print and reload to the same message. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "protos/registry.h"
#include "xds/pbjson.h"
#include "tests/unit/check_run.h"

#define MAX_FILL_DEPTH 3

static const pbjson_opts_t opts = {.resolve = pb_registry_find_type_url};

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    ck_assert_ptr_nonnull(p);
    return p;
}

static ProtobufCMessage *new_message(const ProtobufCMessageDescriptor *d, unsigned depth);

/* The well-known types whose JSON form limits their values. */
static bool fill_wkt(ProtobufCMessage *m)
{
    const char *n = m->descriptor->name;
    if (strcmp(n, "google.protobuf.Duration") == 0) {
        ((Google__Protobuf__Duration *)m)->seconds = 1;
        ((Google__Protobuf__Duration *)m)->nanos = 500000000;
        return true;
    }
    if (strcmp(n, "google.protobuf.Timestamp") == 0 || strcmp(n, "google.protobuf.Empty") == 0 ||
        strcmp(n, "google.protobuf.Any") == 0 || strcmp(n, "google.protobuf.Value") == 0 ||
        strcmp(n, "google.protobuf.Struct") == 0 || strcmp(n, "google.protobuf.ListValue") == 0 ||
        strcmp(n, "google.protobuf.FieldMask") == 0)
        return true; /* left empty: their own tests live in test_pbjson.c */
    return false;
}

static void fill_scalar(const ProtobufCFieldDescriptor *f, void *at, unsigned depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        *(int32_t *)at = -7;
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        *(uint32_t *)at = 7;
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        *(int64_t *)at = -1234567890123;
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        *(uint64_t *)at = 1234567890123;
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        *(float *)at = 1.5f;
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        *(double *)at = 2.25;
        break;
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)at = 1;
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *e = f->descriptor;
        *(int *)at = e->values[e->n_values - 1].value;
        break;
    }
    case PROTOBUF_C_TYPE_STRING:
        *(char **)at = xstrdup("v");
        break;
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData *b = at;
        b->data = xmalloc(2);
        b->data[0] = 0xfb;
        b->data[1] = 0x01;
        b->len = 2;
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        *(ProtobufCMessage **)at = new_message(f->descriptor, depth + 1);
        break;
    }
}

static size_t scalar_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    default:
        return 4;
    }
}

static ProtobufCMessage *new_message(const ProtobufCMessageDescriptor *d, unsigned depth)
{
    ProtobufCMessage *m = xmalloc(d->sizeof_message);
    protobuf_c_message_init(d, m);
    if (fill_wkt(m) || depth >= MAX_FILL_DEPTH)
        return m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        char *base = (char *)m;
        if (f->type == PROTOBUF_C_TYPE_MESSAGE && depth + 1 >= MAX_FILL_DEPTH) {
            /* A map's value is never absent in the JSON form: give it an empty message. */
            bool map_value = f->id == 2 && d->n_fields == 2 && strcmp(f->name, "value") == 0;
            if (map_value)
                *(ProtobufCMessage **)(base + f->offset) = new_message(f->descriptor, depth + 1);
            continue;
        }
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t *which = (uint32_t *)(base + f->quantifier_offset);
            if (*which != 0)
                continue; /* one member per oneof */
            *which = f->id;
            fill_scalar(f, base + f->offset, depth);
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t sz = scalar_size(f);
            void *arr = xmalloc(sz);
            fill_scalar(f, arr, depth);
            *(size_t *)(base + f->quantifier_offset) = 1;
            *(void **)(base + f->offset) = arr;
        } else {
            if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_MESSAGE &&
                f->type != PROTOBUF_C_TYPE_STRING && f->quantifier_offset)
                *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
            if (f->type == PROTOBUF_C_TYPE_STRING &&
                *(char **)(base + f->offset) == (char *)protobuf_c_empty_string)
                *(char **)(base + f->offset) = NULL;
            fill_scalar(f, base + f->offset, depth);
        }
    }
    return m;
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *b = xmalloc(*len);
    protobuf_c_message_pack(m, b);
    return b;
}

START_TEST(test_every_declared_message_round_trips)
{
    size_t n = pb_registry_count(), checked = 0;
    for (size_t i = 0; i < n; i++) {
        const ProtobufCMessageDescriptor *d = pb_registry_at(i);
        if (strncmp(d->name, "google.protobuf.", 16) == 0)
            continue;
        ProtobufCMessage *m = new_message(d, 0);
        size_t l1, l2;
        uint8_t *b1 = pack(m, &l1);
        char *text = pbjson_to_string(m, &opts, 0);
        ck_assert_msg(text != NULL, "%s: no JSON", d->name);
        pbjson_diag_t *diag = pbjson_diag_new();
        ProtobufCMessage *back = NULL;
        int rc = pbjson_parse(text, strlen(text), d->name, d, &opts, &back, diag);
        ck_assert_msg(rc == 0, "%s: %s does not parse back: %s", d->name, text,
                      pbjson_diag_size(diag) ? pbjson_diag_at(diag, 0, NULL) : "?");
        uint8_t *b2 = pack(back, &l2);
        if (!(l1 == l2 && memcmp(b1, b2, l1) == 0)) {
            char *again = pbjson_to_string(back, &opts, 0);
            size_t k = 0;
            while (k < l1 && k < l2 && b1[k] == b2[k])
                k++;
            fprintf(stderr, "first difference at byte %zu:", k);
            for (size_t z = k > 8 ? k - 8 : 0; z < k + 8 && z < l2; z++)
                fprintf(stderr, " %02x/%02x", z < l1 ? b1[z] : 0, b2[z]);
            fprintf(stderr, "\n");
            ck_assert_msg(0, "%s: JSON round trip changed it (%zu bytes, then %zu): %s\nback: %s",
                          d->name, l1, l2, text, again);
        }
        free(b1);
        free(b2);
        free(text);
        pbjson_diag_free(diag);
        protobuf_c_message_free_unpacked(back, NULL);
        protobuf_c_message_free_unpacked(m, NULL);
        checked++;
    }
    ck_assert_uint_gt(checked, 400);
}
END_TEST

static void golden_round_trip(const char *name)
{
    char path[1024];
    const char *shared = getenv("SHARED");
    snprintf(path, sizeof(path), "%s/istio/04-bootstrap/%s", shared ? shared : "../shared", name);
    const ProtobufCMessageDescriptor *d = &envoy__config__bootstrap__v3__bootstrap__descriptor;
    pbjson_diag_t *diag = pbjson_diag_new();
    ProtobufCMessage *m = NULL;
    int rc = pbjson_parse_file(path, d, &opts, &m, diag);
    ck_assert_msg(rc == 0, "%s: %s", path, pbjson_diag_size(diag) ? pbjson_diag_at(diag, 0, NULL) : "?");
    /* Every field of Istio's golden is declared: no unknown-field warnings even without
     * --allow-unknown-static-fields. */
    ck_assert_uint_eq(pbjson_diag_count(diag, PBJSON_SEVERITY_ANY), 0);
    Envoy__Config__Bootstrap__V3__Bootstrap *b = (void *)m;
    ck_assert_ptr_nonnull(b->node);
    ck_assert(strncmp(b->node->id, "sidecar~", 8) == 0);
    ck_assert_ptr_nonnull(b->static_resources);
    ck_assert_uint_gt(b->static_resources->n_clusters, 1);
    ck_assert_ptr_nonnull(b->dynamic_resources);
    ck_assert_ptr_nonnull(b->dynamic_resources->ads_config);

    size_t l1, l2;
    uint8_t *b1 = pack(m, &l1);
    char *text = pbjson_to_string(m, &opts, 2);
    ProtobufCMessage *back = NULL;
    rc = pbjson_parse(text, strlen(text), "printed", d, &opts, &back, diag);
    ck_assert_int_eq(rc, 0);
    uint8_t *b2 = pack(back, &l2);
    ck_assert(l1 == l2 && memcmp(b1, b2, l1) == 0);
    free(b1);
    free(b2);
    free(text);
    pbjson_diag_free(diag);
    protobuf_c_message_free_unpacked(back, NULL);
    protobuf_c_message_free_unpacked(m, NULL);
}

START_TEST(test_istio_bootstrap_goldens)
{
    golden_round_trip("all_golden.json");
    golden_round_trip("default_golden.json");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pbjson-xds");
    TCase *tc = tcase_create("round trips");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_every_declared_message_round_trips);
    tcase_add_test(tc, test_istio_bootstrap_goldens);
    suite_add_tcase(s, tc);
    return check_run(s);
}
