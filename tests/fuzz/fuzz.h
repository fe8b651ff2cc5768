/* fuzz.h: what every libFuzzer target of tests/fuzz shares: quiet logs, the
 * source tree path (fixtures, policy), an oracle check that aborts (libFuzzer
 * then reports a crash and writes the reproducer) and a NUL-terminated copy
 * of the input. See tests/fuzz/README.md. */
#ifndef CHATD_FUZZ_H
#define CHATD_FUZZ_H
#define _GNU_SOURCE
#include "log.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* An oracle: the property must hold for every input. */
#define FUZZ_CHECK(cond, ...) do { \
    if (!(cond)) { \
        fprintf(stderr, "FUZZ_CHECK failed %s:%d: %s -- ", __FILE__, __LINE__, #cond); \
        fprintf(stderr, __VA_ARGS__); \
        fputc('\n', stderr); \
        abort(); \
    } } while (0)

/* Logs off unless FUZZ_LOG is set (a log line per input costs most of the
 * time otherwise); FUZZ_LOG=debug shows everything. */
static inline void fuzz_quiet(void)
{
    const char *l = getenv("FUZZ_LOG");
    int lv = l ? log_level_parse(l) : -1;
    log_set_level(lv >= 0 ? (log_level_t)lv : (log_level_t)(LOG_ERROR + 1));
}

/* FUZZ_VERBOSE=1: targets describe each verdict on stderr (to debug seeds
 * with ./fuzz_x -runs=0 corpus/x) */
#define FUZZ_SAY(...) do { \
    static int v_ = -1; \
    if (v_ < 0) v_ = getenv("FUZZ_VERBOSE") != NULL; \
    if (v_) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

/* path relative to the source tree, in a static buffer */
static inline const char *fuzz_path(const char *rel)
{
    static char p[1024];
    snprintf(p, sizeof p, "%s/%s", CHATD_SOURCE_DIR, rel);
    return p;
}

/* malloc'd NUL-terminated copy of data[0..n) */
static inline char *fuzz_cstr(const uint8_t *data, size_t n)
{
    char *s = malloc(n + 1);
    if (!s) abort();
    if (n) memcpy(s, data, n);
    s[n] = 0;
    return s;
}

#endif
