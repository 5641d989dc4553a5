/* The protos registry (protos/registry.h) and the generated declarations it indexes. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"
#include "protos/registry.h"
#include "tests/unit/check_run.h"

START_TEST(test_find)
{
    ck_assert_ptr_eq(pb_registry_find("envoy.config.bootstrap.v3.Bootstrap"),
                     &envoy__config__bootstrap__v3__bootstrap__descriptor);
    ck_assert_ptr_eq(
        pb_registry_find_type_url("type.googleapis.com/envoy.config.cluster.v3.Cluster"),
        pb_registry_find("envoy.config.cluster.v3.Cluster"));
    ck_assert_ptr_nonnull(pb_registry_find("envoy.config.cluster.v3.Cluster.LbSubsetConfig"));
    ck_assert_ptr_nonnull(pb_registry_find_type_url(
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager"));
    ck_assert_ptr_nonnull(pb_registry_find("google.protobuf.Duration"));
    ck_assert_ptr_nonnull(pb_registry_find("google.protobuf.Struct"));
    ck_assert_ptr_nonnull(pb_registry_find("udpa.type.v1.TypedStruct"));
    ck_assert_ptr_nonnull(pb_registry_find_type_url("type.googleapis.com/stats.PluginConfig"));
    ck_assert_ptr_null(pb_registry_find_type_url("type.googleapis.com/io.istio.http.peer_metadata.Config"));
    ck_assert_ptr_null(pb_registry_find(""));
    ck_assert_ptr_null(pb_registry_find("envoy.config.cluster.v3.Clusterx"));
}
END_TEST

START_TEST(test_sorted_and_complete)
{
    size_t n = pb_registry_count();
    ck_assert_uint_gt(n, 400);
    for (size_t i = 1; i < n; i++)
        ck_assert_int_lt(strcmp(pb_registry_at(i - 1)->name, pb_registry_at(i)->name), 0);
    for (size_t i = 0; i < n; i++)
        ck_assert_ptr_eq(pb_registry_find(pb_registry_at(i)->name), pb_registry_at(i));
    ck_assert_ptr_null(pb_registry_at(n));
}
END_TEST

START_TEST(test_bootstrap_pack_unpack)
{
    Envoy__Config__Bootstrap__V3__Bootstrap b;
    Envoy__Config__Core__V3__Node node;
    envoy__config__bootstrap__v3__bootstrap__init(&b);
    envoy__config__core__v3__node__init(&node);
    node.id = "sidecar~10.0.0.1~a.b~b.svc.cluster.local";
    node.cluster = "a.b";
    b.node = &node;
    size_t n = protobuf_c_message_get_packed_size(&b.base);
    uint8_t *buf = malloc(n);
    ck_assert_uint_eq(protobuf_c_message_pack(&b.base, buf), n);
    /* field 1 (node), length-delimited */
    ck_assert_uint_eq(buf[0], (1 << 3) | 2);
    Envoy__Config__Bootstrap__V3__Bootstrap *u =
        envoy__config__bootstrap__v3__bootstrap__unpack(NULL, n, buf);
    ck_assert_ptr_nonnull(u);
    ck_assert_str_eq(u->node->id, node.id);
    ck_assert_str_eq(u->node->cluster, "a.b");
    protobuf_c_message_free_unpacked(&u->base, NULL);
    free(buf);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("registry");
    TCase *tc = tcase_create("registry");
    tcase_add_test(tc, test_find);
    tcase_add_test(tc, test_sorted_and_complete);
    tcase_add_test(tc, test_bootstrap_pack_unpack);
    suite_add_tcase(s, tc);
    return check_run(s);
}
