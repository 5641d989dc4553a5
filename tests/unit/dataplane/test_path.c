/* Path normalisation (dataplane/path.h): a table of Envoy's and Istio's cases for each flag and
 * their combinations, and properties over random paths (never longer, idempotent, and
 * dp_path_may_change false only where nothing changes). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/path.h"
#include "tests/unit/check_run.h"

#define N DP_PATH_NORMALIZE
#define M DP_PATH_MERGE_SLASHES
#define U DP_PATH_UNESCAPE_SLASHES

typedef struct {
    unsigned flags;
    const char *in, *out; /* out NULL: invalid */
    bool slashes;
} path_case_t;

static const path_case_t cases[] = {
    /* normalize_path: dot segments, unreserved escapes, backslashes, %00 */
    {N, "/a/../b", "/b", false},
    {N, "/a/./b", "/a/b", false},
    {N, "/a/b/..", "/a/", false},
    {N, "/a/b/.", "/a/b/", false},
    {N, "/..", "/", false},
    {N, "/.", "/", false},
    {N, "/../../x", "/x", false},
    {N, "/a/%2e%2E/b", "/b", false},
    {N, "/a/%2E/b", "/a/b", false},
    {N, "/a/.%2e", "/", false},
    {N, "/%41%7a%2D%5F%7E%30", "/Az-_~0", false},
    {N, "/a%2Fb", "/a%2Fb", false},
    {N, "/a%5Cb", "/a%5Cb", false},
    {N, "/a%20b%3F", "/a%20b%3F", false},
    {N, "/a\\b\\..\\c", "/a/c", false},
    {N, "/a%00b", NULL, false},
    {N, "/a%zz/b", "/a%zz/b", false},
    {N, "/a%2", "/a%2", false},
    {N, "/a%", "/a%", false},
    {N, "/a%4%42", "/a%4B", false}, /* one pass, as Envoy: the escape it leaves stays */
    {N, "/a/..?x=/../y", "/?x=/../y", false},
    {N, "/a?%41", "/a?%41", false},
    {N, "/a//b", "/a//b", false},
    {N, "/a//../b", "/a/b", false},
    {N, "/a/.b/..c/...", "/a/.b/..c/...", false},
    {N, "*", "*", false},
    {N, "", "", false},
    /* merge_slashes */
    {M, "/a//b///c", "/a/b/c", false},
    {M, "//a", "/a", false},
    {M, "/a//b?x//y", "/a/b?x//y", false},
    {M, "/a/../b", "/a/../b", false},
    {N | M, "/a/./b//c/../d", "/a/b/d", false},
    {N | M, "//..//a", "/a", false},
    /* path_with_escaped_slashes_action other than KEEP_UNCHANGED */
    {U, "/a%2Fb", "/a/b", true},
    {U, "/a%2fb", "/a/b", true},
    {U, "/a%5cb", "/a\\b", true},
    {U, "/a%252Fb", "/a%252Fb", false},
    {U, "/a%41", "/a%41", false},
    {U, "/a?b%2Fc", "/a?b%2Fc", false},
    {U | N, "/a%2f..%2fb", "/b", true},
    {U | N, "/a%5Cb", "/a/b", true},
    {U | N | M, "/a%2F%2Fb", "/a/b", true},
    /* no flags: unchanged whatever it holds */
    {0, "/a/../b%2F//c", "/a/../b%2F//c", false},
};

START_TEST(test_table)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const path_case_t *c = &cases[i];
        size_t n = strlen(c->in);
        char out[128];
        bool slashes = !c->slashes;
        long r = dp_path_normalize(c->in, n, c->flags, out, &slashes);
        if (c->out == NULL) {
            ck_assert_msg(r == -1, "%s (flags %u): not refused", c->in, c->flags);
            continue;
        }
        ck_assert_msg(r >= 0, "%s (flags %u): refused", c->in, c->flags);
        out[r] = '\0';
        ck_assert_msg(strcmp(out, c->out) == 0, "%s (flags %u): '%s', not '%s'", c->in, c->flags,
                      out, c->out);
        ck_assert_msg(slashes == c->slashes, "%s (flags %u): slashes %d", c->in, c->flags, slashes);
        bool changes = strcmp(c->in, c->out) != 0;
        if (changes)
            ck_assert_msg(dp_path_may_change(c->in, n, c->flags), "%s (flags %u): may_change",
                          c->in, c->flags);
    }
}
END_TEST

START_TEST(test_random_properties)
{
    static const char alphabet[] = "/.%2eEfF5cC0a\\?";
    unsigned seed = 7;
    char in[24], once[24], twice[24];
    for (int iter = 0; iter < 200000; iter++) {
        size_t n = 1 + (size_t)(rand_r(&seed) % (sizeof(in) - 1));
        in[0] = '/';
        for (size_t i = 1; i < n; i++)
            in[i] = alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)];
        unsigned flags = (unsigned)(rand_r(&seed) % 8);
        bool s1, s2;
        long r1 = dp_path_normalize(in, n, flags, once, &s1);
        if (r1 < 0) {
            ck_assert(flags & N);
            continue;
        }
        ck_assert_int_le(r1, (long)n);
        if (!dp_path_may_change(in, n, flags))
            ck_assert(r1 == (long)n && memcmp(in, once, n) == 0);
        /* idempotent for what settles in one pass: without the slash decoding (which can
         * make an escape out of "%25" only as a '%' that stays encoded) */
        if (!(flags & U)) {
            long r2 = dp_path_normalize(once, (size_t)r1, flags, twice, &s2);
            ck_assert_msg(r2 == r1 && memcmp(once, twice, (size_t)r1) == 0,
                          "not idempotent: %.*s -> %.*s -> %.*s (flags %u)", (int)n, in, (int)r1,
                          once, (int)(r2 < 0 ? 0 : r2), twice, flags);
        }
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("path");
    TCase *tc = tcase_create("path");
    tcase_add_test(tc, test_table);
    tcase_add_test(tc, test_random_properties);
    suite_add_tcase(s, tc);
    return check_run(s);
}
