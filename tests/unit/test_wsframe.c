/* test_wsframe: the RFC 6455 client-frame parser (wsframe.h): masking,
 * fragmentation, control frames, close payloads, UTF-8 across fragments,
 * the size limit checked on the declared length, byte-by-byte feeding;
 * and how wsread counts a failed connection by its close code (1011, our
 * out-of-memory, is not a client's protocol error). */
#define _GNU_SOURCE
#include "wsframe.h"
#include "check.h"
#include "series.h"
#include "metrics.h"
#include "wsread.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sink {
    unsigned char msg[70000];
    size_t len;
    int messages, binary, pings, pongs, closes;
    unsigned char ctl[125];
    size_t ctl_len;
} sink;

static int on_data(void *ud, const unsigned char *p, size_t n, int final, int binary)
{
    sink *s = ud;
    if (s->len + n <= sizeof s->msg) memcpy(s->msg + s->len, p, n);
    s->len += n;
    if (final) { s->messages++; s->binary = binary; }
    return 0;
}

static int on_control(void *ud, int op, const unsigned char *p, size_t n)
{
    sink *s = ud;
    if (op == WSF_PING) s->pings++;
    if (op == WSF_PONG) s->pongs++;
    if (op == WSF_CLOSE) s->closes++;
    memcpy(s->ctl, p, n);
    s->ctl_len = n;
    return 0;
}

static const wsf_handlers H = {on_data, on_control};

/* Appends one client frame to out; returns its length. */
static size_t frame(unsigned char *out, int op, const void *payload, size_t n, int fin, int rsv, int masked,
                    uint64_t declared)
{
    size_t k = 0;
    uint64_t len = declared != (uint64_t)-1 ? declared : n;
    out[k++] = (unsigned char)((fin ? 0x80 : 0) | (rsv << 4) | op);
    unsigned char mb = masked ? 0x80 : 0;
    if (len < 126) out[k++] = (unsigned char)(mb | len);
    else if (len < 65536) { out[k++] = mb | 126; out[k++] = (unsigned char)(len >> 8); out[k++] = (unsigned char)len; }
    else { out[k++] = mb | 127; for (int i = 7; i >= 0; i--) out[k++] = (unsigned char)(len >> (8 * i)); }
    unsigned char key[4] = {0x12, 0x34, 0x56, 0x78};
    if (masked) { memcpy(out + k, key, 4); k += 4; }
    for (size_t i = 0; i < n; i++) out[k + i] = ((const unsigned char *)payload)[i] ^ (masked ? key[i & 3] : 0);
    return k + n;
}
#define F(buf, op, s, fin) frame(buf, op, s, strlen(s), fin, 0, 1, (uint64_t)-1)

/* Feeds the bytes whole and byte by byte; both must agree. */
static int run(const unsigned char *b, size_t n, uint64_t max, sink *out, const char **why)
{
    unsigned char *c1 = malloc(n + 1), *c2 = malloc(n + 1);
    memcpy(c1, b, n);
    memcpy(c2, b, n);
    wsf_parser p1, p2;
    wsf_init(&p1, max);
    wsf_init(&p2, max);
    sink s2;
    memset(out, 0, sizeof *out);
    memset(&s2, 0, sizeof s2);
    int r1 = wsf_feed(&p1, c1, n, &H, out), r2 = 0;
    for (size_t i = 0; i < n && !r2; i++) r2 = wsf_feed(&p2, c2 + i, 1, &H, &s2);
    CHECK(r1 == r2, "whole (%d) and byte-wise (%d) feeding agree", r1, r2);
    CHECK(out->messages == s2.messages && (r1 || out->len == s2.len), "same messages both ways");
    if (why) *why = p1.reason;
    wsf_free(&p1);
    wsf_free(&p2);
    free(c1);
    free(c2);
    return r1;
}

static void test_valid(void)
{
    unsigned char b[1024];   /* the frames of the longest case: 4 of 100-150 bytes */
    sink s;
    size_t n = F(b, WSF_TEXT, "hello", 1);
    CHECK(run(b, n, 1000, &s, NULL) == 0 && s.messages == 1 && s.len == 5 && !memcmp(s.msg, "hello", 5), "one text frame");
    n = F(b, WSF_TEXT, "he", 0);
    n += F(b + n, WSF_PING, "p", 1);
    n += F(b + n, WSF_CONT, "l", 0);
    n += F(b + n, WSF_CONT, "lo", 1);
    CHECK(run(b, n, 1000, &s, NULL) == 0 && s.messages == 1 && s.pings == 1 && !memcmp(s.msg, "hello", 5),
          "fragments with a ping in between");
    n = F(b, WSF_TEXT, "", 1);
    CHECK(run(b, n, 1000, &s, NULL) == 0 && s.messages == 1 && s.len == 0, "empty text frame");
    /* a euro sign split over two fragments */
    n = F(b, WSF_TEXT, "\xe2\x82", 0);
    n += F(b + n, WSF_CONT, "\xac", 1);
    CHECK(run(b, n, 1000, &s, NULL) == 0 && s.messages == 1 && s.len == 3, "UTF-8 split across fragments");
    n = frame(b, WSF_BINARY, "\xff\x00", 2, 1, 0, 1, (uint64_t)-1);
    CHECK(run(b, n, 1000, &s, NULL) == 0 && s.messages == 1 && s.binary, "binary is not UTF-8 checked");
    n = frame(b, WSF_CLOSE, "\x03\xe8" "bye", 5, 1, 0, 1, (uint64_t)-1);
    CHECK(run(b, n, 1000, &s, NULL) == 0 && s.closes == 1 && s.ctl_len == 5, "close 1000 with a reason");
    n = frame(b, WSF_CLOSE, "", 0, 1, 0, 1, (uint64_t)-1);
    n += F(b + n, WSF_TEXT, "ignored", 1);
    CHECK(run(b, n, 1000, &s, NULL) == 0 && s.closes == 1 && s.messages == 0, "nothing counts after a close");
    char big[300];
    memset(big, 'x', sizeof big);
    n = frame(b, WSF_TEXT, big, sizeof big, 1, 0, 1, (uint64_t)-1);
    CHECK(run(b, n, 300, &s, NULL) == 0 && s.len == 300, "exactly the limit");
    /* the limit is per message: the one before does not count (it did) */
    n = frame(b, WSF_TEXT, big, 200, 1, 0, 1, (uint64_t)-1);
    n += frame(b + n, WSF_TEXT, big, 150, 1, 0, 1, (uint64_t)-1);
    CHECK(run(b, n, 300, &s, NULL) == 0 && s.messages == 2, "two messages adding up over the limit");
    n = frame(b, WSF_TEXT, big, 100, 0, 0, 1, (uint64_t)-1);
    n += frame(b + n, WSF_CONT, big, 100, 1, 0, 1, (uint64_t)-1);
    n += frame(b + n, WSF_TEXT, big, 150, 0, 0, 1, (uint64_t)-1);
    n += frame(b + n, WSF_CONT, big, 150, 1, 0, 1, (uint64_t)-1);
    CHECK(run(b, n, 300, &s, NULL) == 0 && s.messages == 2, "fragmented messages each under the limit");
    n = frame(b, WSF_PONG, big, 125, 1, 0, 1, (uint64_t)-1);
    CHECK(run(b, n, 10, &s, NULL) == 0 && s.pongs == 1, "125-byte control frame");
}

static void expect(const unsigned char *b, size_t n, uint64_t max, int code, const char *what)
{
    sink s;
    const char *why = NULL;
    int r = run(b, n, max, &s, &why);
    CHECK(r == code, "%s: got %d want %d", what, r, code);
    CHECK(why && *why, "%s: a reason", what);
    CHECK(s.messages == 0, "%s: no message delivered", what);
}

static void test_violations(void)
{
    unsigned char b[400];
    size_t n;
    n = frame(b, WSF_TEXT, "hi", 2, 1, 0, 0, (uint64_t)-1);
    expect(b, n, 1000, 1002, "unmasked");
    for (int rsv = 1; rsv < 8; rsv++) {
        n = frame(b, WSF_TEXT, "hi", 2, 1, rsv, 1, (uint64_t)-1);
        expect(b, n, 1000, 1002, "rsv bits");
    }
    int ops[] = {3, 4, 5, 6, 7, 11, 12, 13, 14, 15};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        n = frame(b, ops[i], "x", 1, 1, 0, 1, (uint64_t)-1);
        expect(b, n, 1000, 1002, "reserved opcode");
    }
    n = F(b, WSF_CONT, "x", 1);
    expect(b, n, 1000, 1002, "continuation without a start");
    n = F(b, WSF_TEXT, "a", 0);
    n += F(b + n, WSF_TEXT, "b", 1);
    expect(b, n, 1000, 1002, "new message while one is open");
    n = F(b, WSF_PING, "x", 0);
    expect(b, n, 1000, 1002, "fragmented ping");
    char big[200];
    memset(big, 'x', sizeof big);
    n = frame(b, WSF_PING, big, 126, 1, 0, 1, (uint64_t)-1);
    expect(b, n, 1000, 1002, "126-byte ping");
    n = frame(b, WSF_CLOSE, "\x03", 1, 1, 0, 1, (uint64_t)-1);
    expect(b, n, 1000, 1002, "1-byte close payload");
    unsigned bad_codes[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof bad_codes / sizeof bad_codes[0]; i++) {
        unsigned char c[2] = {(unsigned char)(bad_codes[i] >> 8), (unsigned char)bad_codes[i]};
        n = frame(b, WSF_CLOSE, c, 2, 1, 0, 1, (uint64_t)-1);
        expect(b, n, 1000, 1002, "invalid close code");
    }
    unsigned good_codes[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999};
    for (size_t i = 0; i < sizeof good_codes / sizeof good_codes[0]; i++) {
        unsigned char c[2] = {(unsigned char)(good_codes[i] >> 8), (unsigned char)good_codes[i]};
        CHECK(wsf_close_payload_check(c, 2) == 0, "close code %u is valid", good_codes[i]);
    }
    n = frame(b, WSF_CLOSE, "\x03\xe8\xff", 3, 1, 0, 1, (uint64_t)-1);
    expect(b, n, 1000, 1007, "close reason not UTF-8");
    n = F(b, WSF_TEXT, "\xff", 1);
    expect(b, n, 1000, 1007, "invalid byte");
    n = F(b, WSF_TEXT, "\xc0\xaf", 1);
    expect(b, n, 1000, 1007, "overlong");
    n = F(b, WSF_TEXT, "\xed\xa0\x80", 1);
    expect(b, n, 1000, 1007, "surrogate");
    n = F(b, WSF_TEXT, "\xf4\x90\x80\x80", 1);
    expect(b, n, 1000, 1007, "over U+10FFFF");
    n = F(b, WSF_TEXT, "\xe2\x82", 1);
    expect(b, n, 1000, 1007, "ends inside a sequence");
    n = F(b, WSF_TEXT, "ok\xe2\x82", 0);
    n += F(b + n, WSF_CONT, "\x28", 1);
    expect(b, n, 1000, 1007, "bad continuation in the next fragment");
    /* the limit is checked on the declared length, header only */
    n = frame(b, WSF_TEXT, "", 0, 1, 0, 1, 100000);
    expect(b, n, 65536, 1009, "declared 100000 over 65536, no payload");
    n = frame(b, WSF_TEXT, big, 150, 0, 0, 1, (uint64_t)-1);
    n += frame(b + n, WSF_CONT, big, 0, 1, 0, 1, 100);
    expect(b, n, 200, 1009, "fragments adding up over the limit");
    n = frame(b, WSF_BINARY, "", 0, 1, 0, 1, (uint64_t)1 << 63);
    expect(b, n, 1000, 1002, "length with the top bit set");
}

static void test_failure_metrics(void)
{
    wsread_metrics_init();
    static const int codes[] = {1002, 1007, 1009, 1009};   /* a 1011 never comes here (wsread.h) */
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) wsread_count_failure(codes[i]);
    double p1002 = series("chat_ws_protocol_errors_total{code=\"1002\"}");
    CHECK(p1002 == 1, "1002 counted once (%g)", p1002);
    CHECK(series("chat_ws_protocol_errors_total{code=\"1007\"}") == 1, "1007");
    CHECK(series("chat_ws_protocol_errors_total{code=\"1009\"}") == 2, "1009");
    CHECK(series("chat_drops_total{reason=\"frame_too_large\"}") == 2, "1009 also a drop");
    double oom = series("chat_ws_server_errors_total{reason=\"out_of_memory\"}");
    CHECK(oom == 0, "the 1011 series is registered here, counted by conn_close_oom (test_conn_oom) (%g)", oom);
    metrics_free_all();
}

int main(void)
{
    test_valid();
    test_violations();
    test_failure_metrics();
    uint32_t st = 0;
    CHECK(wsf_utf8(&st, (const unsigned char *)"h\xc3\xa9llo \xf0\x9f\x98\x80", 11) == 0 && st == 0, "valid UTF-8");
    return check_summary("test_wsframe");
}
