/* Runs a Check suite in the calling process (CK_FORK=no in meson's environment) and turns
 * the result into the exit status meson reads. Shared by every unit test's main(). */
#ifndef SKIFF_TESTS_CHECK_RUN_H
#define SKIFF_TESTS_CHECK_RUN_H

#include <check.h>
#include <stdlib.h>

static inline int check_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
