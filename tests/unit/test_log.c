/* test_log: one record = one line (control characters in logged values are
 * escaped, so a value cannot start a forged record), redaction of tokens,
 * and log_escape boundaries (core/log.h). */
#define _GNU_SOURCE
#include "log.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Runs log_msg with stderr redirected to a file; returns what was written. */
static char *capture(log_level_t lvl, const char *fmt, const char *arg)
{
    char path[] = "/tmp/chatd-test-log-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return NULL;
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    log_msg(lvl, "mod", fmt, arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    off_t n = lseek(fd, 0, SEEK_END);
    char *out = calloc(1, (size_t)n + 1);
    if (out && pread(fd, out, (size_t)n, 0) != n) { free(out); out = NULL; }
    close(fd);
    unlink(path);
    return out;
}

static int count_char(const char *s, char c)
{
    int n = 0;
    for (; *s; s++) n += *s == c;
    return n;
}

static void esc(const char *in, const char *want)
{
    char out[256];
    log_escape(in, out, sizeof out);
    CHECK(strcmp(out, want) == 0, "escape '%s' -> '%s', want '%s'", in, out, want);
}

static void test_escape(void)
{
    esc("", "");
    esc("plain text, 100% ok", "plain text, 100% ok");
    esc("a\nb", "a\\nb");
    esc("a\r\nb", "a\\r\\nb");
    esc("tab\there", "tab\\there");
    esc("\x01\x1b[31mred\x7f", "\\x01\\x1b[31mred\\x7f");
    esc("back\\slash \"q\"", "back\\slash \"q\"");
    /* UTF-8 passes; C1 controls and the Unicode line/paragraph separators
     * (which some viewers treat as line breaks) are escaped */
    esc("J\xc3\xbcrgen \xf0\x9f\x98\x80", "J\xc3\xbcrgen \xf0\x9f\x98\x80");
    esc("nel\xc2\x85x", "nel\\u0085x");
    esc("ls\xe2\x80\xa8ps\xe2\x80\xa9", "ls\\u2028ps\\u2029");
    /* truncation never cuts an escape in half and always terminates */
    char small[6];
    log_escape("ab\ncd", small, sizeof small);
    CHECK(strcmp(small, "ab\\nc") == 0, "fits: '%s'", small);
    log_escape("abcd\n", small, sizeof small);
    CHECK(strcmp(small, "abcd") == 0, "escape that does not fit is dropped whole: '%s'", small);
    char one[1] = {'x'};
    log_escape("abc", one, 1);
    CHECK(one[0] == 0, "size 1");
    log_escape(NULL, small, sizeof small);
    CHECK(small[0] == 0, "NULL in");
}

static void test_one_line(void)
{
    /* a JWT sub like this one must not start a second record */
    const char *sub = "mallory\n2030-01-01T00:00:00.000Z error server: forged record\r";
    char *out = capture(LOG_ERROR, "conn 1 user %s joined", sub);
    CHECK(out != NULL, "captured");
    if (!out) return;
    CHECK(count_char(out, '\n') == 1, "exactly one line, got: %s", out);
    CHECK(out[strlen(out) - 1] == '\n', "ends with the newline");
    CHECK(strstr(out, "user mallory\\n2030-01-01T00:00:00.000Z error server: forged record\\r joined"),
          "value escaped in place: %s", out);
    CHECK(!strchr(out, '\r'), "no raw CR");
    free(out);

    out = capture(LOG_WARN, "%s", "GET /ws/r?token=abc.def.ghi&since=3 x\x1b[2J");
    CHECK(out && strstr(out, "token=[redacted]&since=3 x\\x1b[2J"), "redacted then escaped: %s",
          out ? out : "(null)");
    CHECK(out && count_char(out, '\n') == 1, "one line");
    free(out);

    /* below the level: nothing */
    log_set_level(LOG_WARN);
    out = capture(LOG_INFO, "%s", "quiet");
    CHECK(out && out[0] == 0, "nothing below the level: '%s'", out ? out : "(null)");
    free(out);
    log_set_level(LOG_INFO);

    /* a long value is cut, the record still ends with exactly one newline */
    char *big = malloc(20000);
    memset(big, '\n', 19999);
    big[19999] = 0;
    out = capture(LOG_ERROR, "%s", big);
    CHECK(out && count_char(out, '\n') == 1 && out[strlen(out) - 1] == '\n',
          "long value: one line of %zu bytes", out ? strlen(out) : 0);
    free(out);
    free(big);
}

int main(void)
{
    test_escape();
    test_one_line();
    return check_summary("test_log");
}
