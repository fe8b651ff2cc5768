/* util: clocks and small string helpers shared by every module.
 * Owns nothing; pure functions. */
#ifndef CHATD_UTIL_H
#define CHATD_UTIL_H
#include <stddef.h>
#include <stdint.h>

uint64_t now_ms(void);        /* wall clock, ms since the epoch (for ts, exp) */
uint64_t mono_ns(void);       /* monotonic clock, ns (for lag and durations) */
static inline uint64_t mono_ms(void) { return mono_ns() / 1000000ull; }

/* Room names: 1-64 chars of [A-Za-z0-9_.-], except "." and ".." (path
 * dot-segments: URL clients and libwebsockets remove them from a path, so
 * such a room could not be named in /ws/{room} or /rooms/{room}/...).
 * Returns 1 when valid. */
int room_name_valid(const char *s, size_t len);

/* The room of a request's first line as sent, before libwebsockets
 * percent-decodes it and removes dot-segments (which turned
 * /ws/a%2F..%2Fb into room "b"). head[0..len): the request head (at least
 * its first line). For GET and HEAD of /ws/{room} and
 * /rooms/{room}/{messages|presence} (the query string aside): 400 when
 * {room} as sent is not a valid room name (a percent-encoded byte, a
 * dot-segment, a slash, ...), 404 for /rooms/{room}/{anything else};
 * 0 otherwise (another route, or valid). Any method: 400 too for a path
 * lws would rewrite (%XX decoded, //, . and .. segments) into /ws/...,
 * /rooms/... or /api/rooms/... (//ws/a%2F..%2Fb, /%77s/x and /x/../ws/y
 * reached rooms "b", "x", "y"); 414 (*route 0) for such a path too long
 * to judge (over 1 KiB decoded). *route: 1 for /ws/, 2 for /rooms/, 3 for
 * /api/rooms/, 0 for others; *is_head: the method was HEAD. Pure. */
int room_target_verdict(const char *head, size_t len, int *route, int *is_head);

/* The value of a hex digit (either case), -1 for anything else. */
int hex_value(char c);

/* Decimal u64: 1-20 ASCII digits of s[0..len) and nothing else (no sign,
 * no blanks), not above UINT64_MAX. 0 and *out, or -1. */
int parse_u64(const char *s, size_t len, uint64_t *out);

/* A room's seq in text, the one rule of every place that reads one (client
 * input: since=, cursors, /messages/{seq}; Redis replies; Postgres rows):
 * 1-19 ASCII digits of s[0..len), no sign, no blank, no leading zero ("0"
 * itself is the only digit string that starts with 0) and not above
 * SEQ_MAX: seqs come from Redis INCR and live in Postgres bigint columns,
 * both int64. The Redis sweep script's "1 to 19 digits, no leading zero"
 * is the same rule. 0 and *out (which may be 0: a caller where 0 is not a
 * seq refuses it), or -1. */
#define SEQ_MAX ((uint64_t)INT64_MAX)
int seq_parse(const char *s, size_t len, uint64_t *out);

/* UTF-8 (RFC 3629: no overlong forms, surrogates or code points above
 * U+10FFFF). utf8_seq: length 1-4 of the well-formed sequence that starts
 * s[0..n) (n >= 1; a NUL is a sequence of 1), 0 when it is ill-formed.
 * utf8_valid: 1 when s[0..n) is well-formed and has no NUL, i.e. text a
 * WebSocket text frame and a Postgres text column both carry. */
size_t utf8_seq(const char *s, size_t n);
/* utf8_cut: the length of s cut to at most max bytes at a character
 * boundary (never inside a multi-byte sequence): strlen(s) when it fits. */
size_t utf8_cut(const char *s, size_t max);
int utf8_valid(const char *s, size_t n);

/* A client message id (the contract: "id", 1-64 characters, for the
 * WebSocket frame and the server API alike): 1 when s[0..n) is 1 to
 * CLIENT_ID_CHARS code points of well-formed UTF-8 without NUL, else 0.
 * CLIENT_ID_BYTES bounds its bytes (4 per code point): size buffers with it. */
#define CLIENT_ID_CHARS 64
#define CLIENT_ID_BYTES (4 * CLIENT_ID_CHARS)
int client_id_valid(const char *s, size_t n);

/* Appends s as a JSON string (with quotes) to dst; returns bytes written or
 * -1 when cap is too small. JSON_ESCAPED_MAX(n) is the most it writes for n
 * bytes (a control character becomes \u00XX, each ill-formed UTF-8 byte
 * \ufffd, so the output is always valid JSON text): size fixed buffers with it. */
long json_escape(char *dst, size_t cap, const char *s, size_t len);
#define JSON_ESCAPED_MAX(n) ((n) * 6 + 2)
/* Two escaped identity claims (sub and name, at most 127 bytes each) */
#define JSON_IDENT_MAX (2 * JSON_ESCAPED_MAX(127))

/* The raw bytes of the value of top-level member `key` (ASCII; a member
 * name is compared as a parser reads it: "\u006deta" is "meta") of the
 * JSON object obj[0..len), for
 * a text that a parser already accepted (the scan trusts its syntax).
 * 1 found (*off, *vlen set), 0 absent, -1 not an object. */
int json_raw_member(const char *obj, size_t len, const char *key, size_t *off, size_t *vlen);

#define CHAT_ROOM_MAX 64

#endif
