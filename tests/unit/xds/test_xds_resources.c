/* Resource validation (xds_resource_check) on the resources of a real Istio sidecar config
 * dump (every one must be accepted) and on malformed ones (each refused with a reason naming
 * the problem). The inputs are the xds fuzz target's seed corpus. */
#include <check.h>
#include <errno.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xds/client.h"
#include "tests/unit/check_run.h"

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    uint8_t *buf = malloc(1 << 20);
    *len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

static int check_file(const char *dir, const char *name, char **err)
{
    static const char *const types[] = {XDS_TYPE_CLUSTER, XDS_TYPE_ENDPOINT, XDS_TYPE_LISTENER,
                                        XDS_TYPE_ROUTE};
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    size_t len;
    uint8_t *b = slurp(path, &len);
    ck_assert_uint_gt(len, 0);
    int rc = xds_resource_check(types[b[0] % 4], b + 1, len - 1, err);
    free(b);
    return rc;
}

START_TEST(test_real_dump_resources_are_accepted)
{
    const char *dir = getenv("CORPUS");
    ck_assert_ptr_nonnull(dir);
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] < '0' || e->d_name[0] > '3')
            continue;
        char *err = NULL;
        int rc = check_file(dir, e->d_name, &err);
        ck_assert_msg(rc == 0, "%s rejected: %s", e->d_name, err ? err : "?");
        n++;
    }
    closedir(d);
    ck_assert_uint_ge(n, 40);
}
END_TEST

START_TEST(test_malformed_resources_are_refused)
{
    static const char *const cases[][2] = {
        {"bad-truncated", "malformed protobuf"},
        {"bad-wiretype", "malformed protobuf"},
        {"bad-deep-struct", "nested too deeply"},
        {"bad-unknown-typed-config", "filter_chains[0].filters[0].typed_config: unknown type "
                                     "type.googleapis.com/nope.Nope"},
        /* the unknown type lies in a message unpacked from an Any inside an Any, freed before
         * the reason is written: the reason must still name it (it once read freed memory) */
        {"bad-unknown-nested-typed-config",
         "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config: unknown type "
         "type.googleapis.com/nope.Inner"},
    };
    const char *dir = getenv("CORPUS");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *err = NULL;
        int rc = check_file(dir, cases[i][0], &err);
        ck_assert_msg(rc == -EINVAL, "%s accepted", cases[i][0]);
        ck_assert_msg(err && strstr(err, cases[i][1]), "%s: '%s' lacks '%s'", cases[i][0],
                      err ? err : "", cases[i][1]);
        free(err);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("xds-resources");
    TCase *tc = tcase_create("check");
    tcase_add_test(tc, test_real_dump_resources_are_accepted);
    tcase_add_test(tc, test_malformed_resources_are_refused);
    suite_add_tcase(s, tc);
    return check_run(s);
}
