#include <stdarg.h>
#include <stdlib.h>

#include "check.h"

#define MAX_TESTS 128

static struct {
    const char *name;
    check_fn_t fn;
} s_tests[MAX_TESTS];
static int s_count;
static bool s_failed;

void check_register(const char *name, check_fn_t fn)
{
    if (s_count < MAX_TESTS) {
        s_tests[s_count].name = name;
        s_tests[s_count].fn = fn;
        s_count++;
    }
}

void check_fail(const char *file, int line, const char *fmt, ...)
{
    s_failed = true;
    const char *base = strrchr(file, '/');
    printf("    %s:%d: ", base ? base + 1 : file, line);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

bool check_failed(void)
{
    return s_failed;
}

/* app_main gets no argv on the linux target: an optional filter comes from ESPMDM_TEST_RUN. */
void app_main(void)
{
    const char *only = getenv("ESPMDM_TEST_RUN");
    int passed = 0, failed = 0;
    for (int i = 0; i < s_count; i++) {
        if (only != NULL && strstr(s_tests[i].name, only) == NULL) {
            continue;
        }
        s_failed = false;
        s_tests[i].fn();
        printf("%s %s\n", s_failed ? "FAIL" : "ok  ", s_tests[i].name);
        fflush(stdout);
        if (s_failed) {
            failed++;
        } else {
            passed++;
        }
    }
    printf("firmware: %d passed, %d failed\n", passed, failed);
    fflush(stdout);
    exit(failed > 0 || passed == 0 ? 1 : 0);
}
