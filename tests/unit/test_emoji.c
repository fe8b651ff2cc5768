/* test_emoji: reactions are one grapheme or :name:, 1-32 bytes (emoji.h). */
#include "check.h"
#include "emoji.h"
#include <string.h>

static void ok(const char *s)
{
    CHECK(emoji_valid(s, strlen(s)) == 1, "'%s' (%zu bytes) should be valid", s, strlen(s));
}

static void bad(const char *s, size_t n, const char *why)
{
    CHECK(emoji_valid(s, n) == 0, "'%.*s' should be refused: %s", (int)n, s, why);
}
#define BAD(s, why) bad(s, sizeof(s) - 1, why)

int main(void)
{
    /* single code points */
    ok("\xF0\x9F\x91\x8D");                                     /* thumbs up */
    ok("\xE2\x9D\xA4");                                         /* heavy heart */
    ok("\xE2\x9D\xA4\xEF\xB8\x8F");                             /* heart + VS16 */
    ok("a");                                                    /* a letter is one grapheme */
    ok("\xC3\xA9");                                             /* precomposed e acute */
    ok("e\xCC\x81");                                            /* e + combining acute */
    /* modifiers and sequences */
    ok("\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD");                     /* thumbs up, medium skin */
    ok("\xF0\x9F\x87\xAB\xF0\x9F\x87\xB7");                     /* flag FR (two RIs) */
    ok("1\xEF\xB8\x8F\xE2\x83\xA3");                            /* keycap 1 */
    /* family: man ZWJ woman ZWJ girl (18 bytes) */
    ok("\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7");
    /* England flag: black flag + tags g b e n g + cancel tag (28 bytes) */
    ok("\xF0\x9F\x8F\xB4\xF3\xA0\x81\xA7\xF3\xA0\x81\xA2\xF3\xA0\x81\xA5\xF3\xA0\x81\xAE"
       "\xF3\xA0\x81\xA7\xF3\xA0\x81\xBF");
    /* names */
    ok(":party_parrot:");
    ok(":+1:");
    ok(":a:");
    ok(":abcdefghijklmnopqrstuvwxyz0123:");                     /* exactly 32 bytes */

    /* refusals */
    BAD("", "empty");
    BAD("ab", "two graphemes");
    BAD("\xF0\x9F\x91\x8D\xF0\x9F\x91\x8D", "two emoji");
    BAD("\xF0\x9F\x87\xAB", "a lone regional indicator");
    BAD("\xF0\x9F\x87\xAB\xF0\x9F\x87\xB7\xF0\x9F\x87\xAB", "three regional indicators");
    BAD("\xCC\x81", "starts with a combining mark");
    BAD("\xF0\x9F\x8F\xBD", "a lone skin-tone modifier");
    BAD("\xF0\x9F\x91\xA8\xE2\x80\x8D", "ZWJ at the end");
    BAD("\xE2\x80\x8D\xF0\x9F\x91\xA8", "starts with ZWJ");
    BAD(" ", "whitespace");
    BAD("\t", "control");
    BAD("\xC2\xA0", "no-break space");
    BAD("\x7F", "DEL");
    BAD("\xE2\x80\x8B", "zero-width space");
    BAD("\xEF\xBB\xBF", "BOM");
    BAD("\xF0\x9F\x91", "truncated UTF-8");
    BAD("\xC0\xAF", "overlong UTF-8");
    BAD("\xED\xA0\x80", "surrogate");
    BAD("\xFF", "invalid byte");
    BAD(":", "a lone colon");
    BAD("::", "an empty name");
    BAD(":a b:", "a space in a name");
    BAD(":a", "unterminated name");
    BAD(":\xC3\xA9:", "non-ASCII name");
    BAD(":abcdefghijklmnopqrstuvwxyz01234:", "33 bytes");
    /* 9 skin-tone modifiers after a base: one grapheme but 40 bytes */
    BAD("\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD\xF0\x9F\x8F\xBD\xF0\x9F\x8F\xBD\xF0\x9F\x8F\xBD"
        "\xF0\x9F\x8F\xBD\xF0\x9F\x8F\xBD\xF0\x9F\x8F\xBD\xF0\x9F\x8F\xBD\xF0\x9F\x8F\xBD",
        "over 32 bytes");
    bad("a\0", 2, "NUL");
    CHECK(emoji_valid(NULL, 0) == 0);
    return check_summary("test_emoji");
}
