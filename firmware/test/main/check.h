/* A small test runner: TEST(name) registers a test, CHECK* fail it (and return from it) with
 * the file, the line and the values; the runner prints one line per test and ends with
 * "N passed, N failed", exiting 1 when a test failed. */
#pragma once

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef void (*check_fn_t)(void);
void check_register(const char *name, check_fn_t fn);
void check_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
bool check_failed(void);

#define TEST(name)                                                              \
    static void name(void);                                                     \
    __attribute__((constructor)) static void check_reg_##name(void) { check_register(#name, name); } \
    static void name(void)

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) {                                                          \
            check_fail(__FILE__, __LINE__, "%s", #cond);                        \
            return;                                                             \
        }                                                                       \
    } while (0)

#define CHECK_INT(a, b)                                                         \
    do {                                                                        \
        long long a_ = (long long)(a), b_ = (long long)(b);                     \
        if (a_ != b_) {                                                         \
            check_fail(__FILE__, __LINE__, "%s == %s: got %lld, want %lld", #a, #b, a_, b_); \
            return;                                                             \
        }                                                                       \
    } while (0)

#define CHECK_STR(a, b)                                                         \
    do {                                                                        \
        const char *a_ = (a), *b_ = (b);                                        \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                  \
            check_fail(__FILE__, __LINE__, "%s == %s: got \"%s\", want \"%s\"", #a, #b, \
                       a_ ? a_ : "(null)", b_ ? b_ : "(null)");                 \
            return;                                                             \
        }                                                                       \
    } while (0)
