/* emoji: what a reaction may be (protocol.md "Message updates"): 1-32
 * bytes of valid UTF-8 holding either one user-perceived character (one
 * grapheme cluster: an emoji with its modifiers, ZWJ sequence, flag or
 * keycap; a letter with combining marks) or a short name ":name:" of
 * [A-Za-z0-9_+-] (custom emoji, as in Slack). Pure function, no state.
 * The grapheme rule is the part of Unicode's UAX #29 that emoji need
 * (docs/architecture.md "Choices"): a base character, then only extenders
 * (combining marks, variation selectors, skin-tone modifiers, tag
 * characters, a keycap), each ZWJ followed by one more base character; a
 * flag is exactly two regional indicators. Controls, whitespace and
 * unassigned surrogates are never accepted. */
#ifndef CHATD_EMOJI_H
#define CHATD_EMOJI_H
#include <stddef.h>

#define EMOJI_MAX_BYTES 32

/* 1 when s[0..len) is a valid reaction, else 0. */
int emoji_valid(const char *s, size_t len);

#endif
