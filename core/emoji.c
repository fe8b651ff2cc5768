/* emoji: see emoji.h. */
#include "emoji.h"
#include <stdint.h>

/* Decodes one UTF-8 code point at s[*i] (strict: shortest form, no
 * surrogates, <= U+10FFFF); advances *i. -1 when invalid. */
static int32_t next_cp(const unsigned char *s, size_t len, size_t *i)
{
    unsigned c = s[*i];
    size_t k;
    uint32_t cp;
    if (c < 0x80) { (*i)++; return (int32_t)c; }
    if ((c & 0xE0) == 0xC0) { k = 1; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { k = 2; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { k = 3; cp = c & 0x07; }
    else return -1;
    if (len - *i <= k) return -1;              /* truncated */
    for (size_t j = 1; j <= k; j++) {
        if ((s[*i + j] & 0xC0) != 0x80) return -1;
        cp = (cp << 6) | (s[*i + j] & 0x3F);
    }
    if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return -1;
    *i += k + 1;
    return (int32_t)cp;
}

/* Characters that extend the grapheme before them. */
static int is_extender(int32_t cp)
{
    return (cp >= 0x0300 && cp <= 0x036F) ||   /* combining diacritical marks */
           (cp >= 0x1AB0 && cp <= 0x1AFF) ||   /* ... extended */
           (cp >= 0x1DC0 && cp <= 0x1DFF) ||   /* ... supplement */
           (cp >= 0x20D0 && cp <= 0x20FF) ||   /* ... for symbols (0x20E3 keycap) */
           (cp >= 0xFE00 && cp <= 0xFE0F) ||   /* variation selectors */
           (cp >= 0xFE20 && cp <= 0xFE2F) ||   /* combining half marks */
           (cp >= 0x1F3FB && cp <= 0x1F3FF) || /* skin-tone modifiers */
           (cp >= 0xE0020 && cp <= 0xE007F) || /* tags (subdivision flags) */
           (cp >= 0xE0100 && cp <= 0xE01EF);   /* variation selectors supplement */
}

static int is_regional(int32_t cp) { return cp >= 0x1F1E6 && cp <= 0x1F1FF; }

/* Never part of a reaction: controls, whitespace, format characters other
 * than ZWJ, noncharacters. */
static int is_forbidden(int32_t cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200C) || (cp >= 0x200E && cp <= 0x200F) ||
           (cp >= 0x2028 && cp <= 0x202F) || (cp >= 0x205F && cp <= 0x206F) || cp == 0x3000 ||
           cp == 0xFEFF || (cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE ||
           (cp >= 0xFFF9 && cp <= 0xFFFB);
}

#define ZWJ 0x200D

static int name_valid(const char *s, size_t len)
{
    if (len < 3 || s[0] != ':' || s[len - 1] != ':') return 0;
    for (size_t i = 1; i + 1 < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '+' || c == '-'))
            return 0;
    }
    return 1;
}

static int grapheme_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    int32_t cp = next_cp(s, len, &i);
    if (cp < 0 || is_forbidden(cp) || is_extender(cp) || cp == ZWJ || cp == ' ') return 0;
    if (is_regional(cp)) {                    /* a flag: exactly two */
        int32_t b = i < len ? next_cp(s, len, &i) : -1;
        if (!is_regional(b)) return 0;
    }
    while (i < len) {
        cp = next_cp(s, len, &i);
        if (cp < 0 || is_forbidden(cp)) return 0;
        if (is_extender(cp)) continue;
        if (cp != ZWJ || i >= len) return 0;  /* a second character */
        cp = next_cp(s, len, &i);             /* ZWJ joins one more base */
        if (cp < 0 || is_forbidden(cp) || is_extender(cp) || cp == ZWJ || is_regional(cp) ||
            cp < 0x80)
            return 0;
    }
    return 1;
}

int emoji_valid(const char *s, size_t len)
{
    if (!s || len < 1 || len > EMOJI_MAX_BYTES) return 0;
    if (s[0] == ':') return name_valid(s, len);   /* ':' starts a name, always */
    return grapheme_valid((const unsigned char *)s, len);
}
