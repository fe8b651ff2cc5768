/* fuzz_script: the Lua policy's return values -> script_result (the C code
 * of core/script_policy.c script_read_result, called by script_call in
 * core/script.c), through the real host: a tiny
 * policy (tests/fixtures/policies/fuzz/policy.lua) whose every hook returns values it
 * decodes from the fuzz input (strings with NULs, huge and non-finite
 * numbers, nested tables, functions, wrong types, errors raised with any
 * value, budget and memory trips).
 * Input: byte 0 picks the hook, the rest is the policy's program (hex in
 * ctx.name; the raw bytes are also the message body).
 * Oracles: the verdict is one of the three; REPLACE only from on_message,
 * with a malloc'd NUL-terminated body of body_len bytes, different from the
 * original; REJECT has a code of [a-z0-9_] (1..31 bytes) and a one-line
 * printable reason; ACCEPT carries nothing; notification hooks (leave,
 * disconnect) never report a verdict; the host keeps working. */
#include "fuzz.h"
#include "wire.h"
#include "msg.h"
#include "script.h"
#include "util.h"
#include <jansson.h>

static script_host *g_host;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    char err[512];
    g_host = script_new(fuzz_path("tests/fixtures/policies/fuzz"), "fuzz-node", err, sizeof err);
    FUZZ_CHECK(g_host, "policy: %s", err);
    return 0;
}

static void check_result(int hook, script_verdict v, const script_result *r, const char *body,
                         size_t blen)
{
    FUZZ_CHECK(v == r->verdict, "returned %d, result says %d", v, r->verdict);
    FUZZ_SAY("hook %d -> verdict %d code '%s' reason '%s' body %zu", hook, v, r->code, r->reason,
             r->body_len);
    switch (v) {
    case SCRIPT_ACCEPT:
        FUZZ_CHECK(!r->body && !r->body_len, "accept with a body");
        break;
    case SCRIPT_REPLACE: {
        FUZZ_CHECK(hook == 3, "replace from hook %d", hook);
        FUZZ_CHECK(r->body && r->body[r->body_len] == 0, "replacement body not terminated");
        FUZZ_CHECK(r->body_len != blen || memcmp(r->body, body, blen) != 0,
                   "replace with the original body");
        /* the replacement is broadcast and stored as the message: it must be
         * text a WebSocket frame and a Postgres text column can carry */
        FUZZ_CHECK(!memchr(r->body, 0, r->body_len), "replacement body with a NUL");
        size_t tl = 0;
        char *tail = wire_message_tail(NULL, "u", "U", r->body, r->body_len, 1, &tl);
        msg *m = tail ? wire_message_frame("lobby", 1, tail, tl) : NULL;
        json_error_t je;
        json_t *j = m ? json_loadb((const char *)msg_payload(m), m->len, 0, &je) : NULL;
        FUZZ_CHECK(j, "the broadcast of the replacement body is not valid JSON/UTF-8: %s",
                   m ? je.text : "no frame");
        json_decref(j);
        if (m) msg_unref(m);
        free(tail);
        break;
    }
    case SCRIPT_REJECT: {
        size_t cl = strnlen(r->code, sizeof r->code);
        FUZZ_CHECK(cl >= 1 && cl < sizeof r->code, "code length %zu", cl);
        FUZZ_CHECK(strspn(r->code, "abcdefghijklmnopqrstuvwxyz0123456789_") == cl, "code '%s'", r->code);
        size_t rl = strnlen(r->reason, sizeof r->reason);
        FUZZ_CHECK(rl < sizeof r->reason, "reason unterminated");
        for (size_t i = 0; i < rl; i++)
            FUZZ_CHECK((unsigned char)r->reason[i] >= 0x20 && r->reason[i] != 0x7f,
                       "reason byte 0x%02x", (unsigned char)r->reason[i]);
        /* the reason goes into an error frame / HTTP answer: valid UTF-8 */
        json_t *js = json_stringn_nocheck(r->reason, rl);
        char *dump = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
        json_t *back = dump ? json_loads(dump, JSON_DECODE_ANY, NULL) : NULL;
        FUZZ_CHECK(back, "reason '%s' is not valid UTF-8", r->reason);
        json_decref(back);
        free(dump);
        json_decref(js);
        FUZZ_CHECK(!r->body, "reject with a body");
        break;
    }
    default:
        FUZZ_CHECK(0, "verdict %d", v);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int hook = data[0] % 8;
    const char *body = (const char *)data + 1;
    size_t blen = size - 1;
    char *hex = malloc(2 * blen + 1);
    FUZZ_CHECK(hex, "oom");
    for (size_t i = 0; i < blen; i++) sprintf(hex + 2 * i, "%02x", (unsigned char)body[i]);
    hex[2 * blen] = 0;
    script_ctx c = {.user = "fuzz-user", .name = hex,
                    .claims_json = "{\"sub\":\"fuzz-user\",\"role\":\"x\"}", .room = "lobby",
                    .node = "fuzz-node", .now_ms = 1700000000000ull,
                    .source = (data[0] & 8) ? "http" : "ws"};
    script_result r;
    memset(&r, 0x5a, sizeof r);   /* every hook must set every field */
    script_verdict v = SCRIPT_ACCEPT;
    switch (hook) {
    case 0: v = script_on_connect(g_host, &c, &r); break;
    case 1: v = script_on_join(g_host, &c, &r); break;
    case 2: script_on_leave(g_host, &c); memset(&r, 0, sizeof r); break;
    case 3: v = script_on_message(g_host, &c, body, blen, blen & 1 ? "m-1" : NULL, &r); break;
    case 4: v = script_on_typing(g_host, &c, &r); break;
    case 5: v = script_on_presence(g_host, &c, blen & 1 ? "join" : "leave", "u", "U", &r); break;
    case 6: v = script_on_history(g_host, &c, &r); break;
    default: script_on_disconnect(g_host, &c); memset(&r, 0, sizeof r); break;
    }
    check_result(hook, v, &r, body, blen);
    script_result_clear(&r);
    free(hex);
    /* the host still answers after whatever the last call did */
    char okhex[] = "0101";   /* program: one value, true */
    c.name = okhex;
    for (int i = 0; i < 5; i++) {   /* the budget is wall time: a loaded machine can trip it */
        v = script_on_join(g_host, &c, &r);
        int slow = v == SCRIPT_REJECT && strcmp(r.reason, "policy script too slow") == 0;
        FUZZ_CHECK(v == SCRIPT_ACCEPT || slow, "host broken after the input: verdict %d (%s)", v,
                   r.reason);
        script_result_clear(&r);
        if (!slow) break;
        FUZZ_CHECK(i < 4, "host too slow 5 times after the input");
    }
    return 0;
}
