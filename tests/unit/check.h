/* check: the assertions of the C unit tests (tests/unit/test_*.c), one copy.
 * Owns: the check and failure counts of one test executable.
 *
 *   CHECK(cond)                  count a check; on failure print
 *                                "FAIL file:line: cond" on stderr
 *   CHECK(cond, "fmt", ...)      the same plus a printf-style message (the
 *                                format must be a string literal)
 *   CHECK_STR(got, want)         strings equal (a NULL got fails)
 *   CHECK_PREFIX(got, prefix)    got starts with prefix
 *   CHECK_CONTAINS(got, sub)     got contains sub
 *   REQUIRE(cond, ...)           CHECK, then return from the current void
 *                                function when it failed (later steps need it)
 *   check_fail("fmt", ...)       record a failure found by hand
 *   check_context                label printed with every failure (the
 *                                backend or case under test), or NULL
 *   check_failures()             failures so far
 *   check_summary("test_x")      prints "test_x: N checks, M failures" and
 *                                returns the exit status (0 or 1)
 *
 * A test whose steps depend on each other defines CHECK_STOPS_TEST before
 * including this header: CHECK then behaves as REQUIRE.
 * Header-only: every test is one executable, one translation unit. */
#ifndef CHATD_TEST_CHECK_H
#define CHATD_TEST_CHECK_H
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Fixtures shared by the C unit tests and the busted specs. CMake passes the
 * absolute path; the default works from the repo root (where ctest runs). */
#ifndef CHATD_FIXTURES
#define CHATD_FIXTURES "tests/fixtures"
#endif

static int check_count, check_fails;
static const char *check_context;

static inline int check_failures(void) { return check_fails; }

/* fmt is " " followed by the caller's message (see CHECK): " " alone means
 * no message. */
__attribute__((format(printf, 5, 6)))
static inline int check_at(int ok, const char *file, int line, const char *expr, const char *fmt, ...)
{
    check_count++;
    if (ok) return 1;
    check_fails++;
    fprintf(stderr, "FAIL %s:%d:", file, line);
    if (check_context) fprintf(stderr, " [%s]", check_context);
    if (expr) fprintf(stderr, " %s", expr);
    if (fmt[1]) {
        if (expr) fputs(" --", stderr);
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
    return 0;
}

/* The message, when given, is a string literal: " " __VA_ARGS__ pastes it
 * behind a space, so CHECK(c) and CHECK(c, "fmt", ...) are both well formed.
 * Its arguments are evaluated only when the check fails (some allocate,
 * e.g. uv_err_name of an unknown code). */
#define CHECK_AT_(c, ...) \
    ((c) ? (check_count++, 1) : check_at(0, __FILE__, __LINE__, #c, " " __VA_ARGS__))
#define REQUIRE(c, ...) do { if (!CHECK_AT_(c, __VA_ARGS__)) return; } while (0)
#ifdef CHECK_STOPS_TEST
#define CHECK(c, ...) REQUIRE(c, __VA_ARGS__)
#else
#define CHECK(c, ...) ((void)CHECK_AT_(c, __VA_ARGS__))
#endif
#define check_fail(...) ((void)check_at(0, __FILE__, __LINE__, NULL, " " __VA_ARGS__))

static inline int check_str_at(const char *got, const char *want, int how, const char *file, int line)
{
    int ok = got && want &&
             (how == 0 ? strcmp(got, want) == 0
              : how == 1 ? strncmp(got, want, strlen(want)) == 0
              : strstr(got, want) != NULL);
    static const char *const what[] = {"!=", "does not start with", "does not contain"};
    return check_at(ok, file, line, NULL, " \"%s\" %s \"%s\"", got ? got : "(null)", what[how],
                    want ? want : "(null)");
}
#define CHECK_STR(got, want) ((void)check_str_at((got), (want), 0, __FILE__, __LINE__))
#define CHECK_PREFIX(got, prefix) ((void)check_str_at((got), (prefix), 1, __FILE__, __LINE__))
#define CHECK_CONTAINS(got, sub) ((void)check_str_at((got), (sub), 2, __FILE__, __LINE__))

static inline int check_summary(const char *name)
{
    fprintf(stderr, "%s: %d checks, %d failures\n", name, check_count, check_fails);
    return check_fails ? 1 : 0;
}

#endif
