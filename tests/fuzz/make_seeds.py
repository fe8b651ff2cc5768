#!/usr/bin/python3
"""Writes the hand-made seeds of tests/fuzz/corpus/<target>/ (every frame
type of the protocol, valid and broken tokens, request targets, Redis URLs,
policy programs). The RESP seeds come from a real Redis: capture_resp.py.
Seeds are named seed-<what>; files named otherwise (regressions, inputs
merged from long runs) are left alone.
    /usr/bin/python3 tests/fuzz/make_seeds.py
"""
import base64
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
FIX = os.path.join(os.path.dirname(HERE), "fixtures", "jwt")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def frames():
    F = {
        "message": {"type": "message", "body": "hi"},
        "message_id_room": {"type": "message", "body": "hello", "id": "c-1", "room": "lobby"},
        "message_empty": {"type": "message", "body": ""},
        "message_nul": '{"type":"message","body":"a\\u0000b","id":"n1"}',
        "message_unicode": '{"type":"message","body":"caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\ \\n\\t","id":"u"}',
        "message_id64": {"type": "message", "body": "x", "id": "i" * 64},
        "message_id65": {"type": "message", "body": "x", "id": "i" * 65},
        "message_id_empty": {"type": "message", "body": "x", "id": ""},
        "message_body_number": {"type": "message", "body": 5},
        "message_no_body": {"type": "message"},
        "message_bad_room": {"type": "message", "body": "x", "room": "a b"},
        "message_room65": {"type": "message", "body": "x", "room": "r" * 65},
        "typing": {"type": "typing"},
        "typing_room": {"type": "typing", "room": "dev.team-1_x"},
        "heartbeat": {"type": "heartbeat"},
        "join": {"type": "join", "room": "dev"},
        "join_since": {"type": "join", "room": "dev", "since": 42},
        "join_since_neg": {"type": "join", "room": "dev", "since": -1},
        "join_since_real": {"type": "join", "room": "dev", "since": 1.5},
        "join_since_huge": '{"type":"join","room":"dev","since":99999999999999999999999}',
        "join_no_room": {"type": "join"},
        "join_epoch": {"type": "join", "room": "dev", "since": 3, "epoch": "0123456789abcdef"},
        "join_epoch_empty": {"type": "join", "room": "dev", "since": 3, "epoch": ""},
        "join_epoch_long": {"type": "join", "room": "dev", "since": 3, "epoch": "e" * 65},
        "leave": {"type": "leave", "room": "dev"},
        "refresh": {"type": "refresh", "token": "aaa.bbb.ccc"},
        "refresh_empty": {"type": "refresh", "token": ""},
        "refresh_nul": '{"type":"refresh","token":"a\\u0000b"}',
        "unknown_type": {"type": "nope", "id": "x1"},
        "type_number": {"type": 1},
        "type_nul": '{"type":"message\\u0000","body":"x"}',
        "no_type": {"body": "x"},
        "array": "[1,2,3]",
        "scalar": '"message"',
        "not_json": '{"type":"message","body":"x"',
        "dup_keys": '{"type":"typing","type":"message","body":"x"}',
        "nested": '{"type":"heartbeat","x":' + "[" * 40 + "]" * 40 + "}",
        "extra_fields": {"type": "message", "body": "x", "meta": {"a": [1, None, True]}, "seq": 3},
        # v2 frames (issue 14): refused today, parsed once they land
        "edit": {"type": "edit", "room": "dev", "target": 3, "body": "fixed", "id": "e1"},
        "delete": {"type": "delete", "room": "dev", "target": 3},
        "react": {"type": "react", "room": "dev", "target": 3, "emoji": "\U0001F44D", "on": True},
        "read": {"type": "read", "room": "dev", "seq": 7},
    }
    for k, v in F.items():
        write("frame", k, v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def jwts():
    hs = open(os.path.join(FIX, "pyjwt_hs256.jwt"), "rb").read().strip()
    rs = open(os.path.join(FIX, "pyjwt_rs256.jwt"), "rb").read().strip()
    es = open(os.path.join(FIX, "pyjwt_es256.jwt"), "rb").read().strip()
    good = {"sub": "alice", "name": "Alice", "exp": 4102444800, "iat": 1700000000,
            "rooms": ["lobby", "dev"], "role": "admin"}
    claims = {
        "valid": good,
        "minimal": {"sub": "a", "exp": 1700000001},
        "expired": {"sub": "alice", "exp": 1700000000},
        "exp_real": {"sub": "alice", "exp": 1700000000.5},
        "exp_huge": {"sub": "alice", "exp": 1e300},
        "exp_string": {"sub": "alice", "exp": "4102444800"},
        "nbf_future": {"sub": "alice", "exp": 4102444800, "nbf": 1700000001},
        "nbf_real": {"sub": "alice", "exp": 4102444800, "nbf": 1699999999.9},
        "no_sub": {"exp": 4102444800},
        "sub_int": {"sub": 7, "exp": 4102444800},
        "sub_127": {"sub": "s" * 127, "exp": 4102444800},
        "sub_128": {"sub": "s" * 128, "exp": 4102444800},
        "sub_empty": {"sub": "", "exp": 4102444800},
        "name_empty": {"sub": "alice", "name": "", "exp": 4102444800},
        "name_nul": '{"sub":"alice","name":"A\\u0000B","exp":4102444800}',
        "sub_newline": {"sub": "alice\nINFO forged", "exp": 4102444800},
        "no_exp": {"sub": "alice"},
        "array": [1, 2],
    }
    headers = {
        "hs256": {"alg": "HS256", "typ": "JWT"},
        "rs256": {"alg": "RS256", "typ": "JWT"},
        "es256": {"alg": "ES256"},
        "none": {"alg": "none"},
        "hs512": {"alg": "HS512"},
        "lower": {"alg": "hs256"},
        "crit": {"alg": "HS256", "crit": ["exp"]},
        "kid": {"alg": "RS256", "kid": "k1", "jku": "http://127.0.0.1/x"},
    }

    def js(v):
        return (v if isinstance(v, str) else json.dumps(v)).encode()

    # fuzz_jwt_hs256: mode 0 raw, 1 signed, 3 wrong secret, 5 bit flipped, 7 no signature
    write("jwt_hs256", "raw_pyjwt", b"\x00" + hs)
    write("jwt_hs256", "raw_rs256_token", b"\x00" + rs)
    h, p, s = hs.split(b".")
    write("jwt_hs256", "raw_none", b"\x00" + b64(b'{"alg":"none"}') + b"." + p + b".")
    write("jwt_hs256", "raw_two_segments", b"\x00" + h + b"." + p)
    write("jwt_hs256", "raw_four_segments", b"\x00" + hs + b".x")
    write("jwt_hs256", "raw_padded", b"\x00" + h + b"=." + p + b"." + s)
    write("jwt_hs256", "raw_std_b64", b"\x00" + hs.replace(b"-", b"+").replace(b"_", b"/"))
    for name, c in claims.items():
        write("jwt_hs256", "signed_" + name, b"\x01" + js(headers["hs256"]) + b"\x00" + js(c))
    for name, hd in headers.items():
        write("jwt_hs256", "header_" + name, b"\x01" + js(hd) + b"\x00" + js(good))
    write("jwt_hs256", "wrong_secret", b"\x03" + js(headers["hs256"]) + b"\x00" + js(good))
    write("jwt_hs256", "bit_flipped", b"\x25" + js(headers["hs256"]) + b"\x00" + js(good))
    write("jwt_hs256", "no_signature", b"\x07" + js(headers["hs256"]) + b"\x00" + js(good))
    write("jwt_hs256", "header_not_object", b"\x01" + b'"HS256"' + b"\x00" + js(good))

    # fuzz_jwt_pubkey: bit 0 signed, bits 1-2 context (0 RSA, 1 EC, 2 secret+RSA,
    # 3 secret+EC), bits 3-4 signer (0 RS256, 1 ES256, 2 HS256 keyed with the
    # public PEM, 3 HS256 with the secret), bit 7 flips a bit
    def mode(signed, ctx, signer=0, flip=0):
        return bytes([signed | ctx << 1 | signer << 3 | flip << 7])
    write("jwt_pubkey", "raw_rs256", mode(0, 0) + rs)
    write("jwt_pubkey", "raw_es256", mode(0, 1) + es)
    write("jwt_pubkey", "raw_es256_to_rsa", mode(0, 0) + es)
    write("jwt_pubkey", "raw_hs256_to_rsa", mode(0, 0) + hs)
    write("jwt_pubkey", "raw_hs256_mixed", mode(0, 2) + hs)
    for name in ("valid", "expired", "nbf_future", "sub_128", "exp_real"):
        write("jwt_pubkey", "rs256_" + name, mode(1, 0, 0) + js(headers["rs256"]) + b"\x00" + js(claims[name]))
        write("jwt_pubkey", "es256_" + name, mode(1, 1, 1) + js(headers["es256"]) + b"\x00" + js(claims[name]))
    write("jwt_pubkey", "confusion_rsa", mode(1, 2, 2) + js(headers["hs256"]) + b"\x00" + js(good))
    write("jwt_pubkey", "confusion_ec", mode(1, 3, 2) + js(headers["hs256"]) + b"\x00" + js(good))
    write("jwt_pubkey", "mixed_hs256", mode(1, 2, 3) + js(headers["hs256"]) + b"\x00" + js(good))
    write("jwt_pubkey", "es256_to_rsa", mode(1, 0, 1) + js(headers["es256"]) + b"\x00" + js(good))
    write("jwt_pubkey", "rs256_flipped", mode(1, 0, 0, 1) + js(headers["rs256"]) + b"\x00" + js(good))
    write("jwt_pubkey", "es256_flipped", mode(1, 1, 1, 1) + js(headers["es256"]) + b"\x00" + js(good))
    write("jwt_pubkey", "rs256_kid", mode(1, 0, 0) + js(headers["kid"]) + b"\x00" + js(good))
    write("jwt_pubkey", "none_rsa", mode(1, 0, 0) + js(headers["none"]) + b"\x00" + js(good))


def requests():
    R = {
        "ws": "/ws/lobby?token=aaa.bbb.ccc",
        "ws_since": "/ws/lobby?token=aaa.bbb.ccc&since=42",
        "ws_since_zero": "/ws/a.b-c_d?since=0&token=t",
        "ws_since_max": "/ws/r?token=t&since=18446744073709551615",
        "ws_since_over": "/ws/r?token=t&since=18446744073709551616",
        "ws_since_sign": "/ws/r?token=t&since=+5",
        "ws_since_blank": "/ws/r?token=t&since=%205",
        "ws_since_empty": "/ws/r?token=t&since=",
        "ws_pct_room": "/ws/lob%62y?token=t",
        "ws_nul_room": "/ws/a%00b?token=t",
        "ws_room64": "/ws/" + "r" * 64 + "?token=t",
        "ws_room65": "/ws/" + "r" * 65 + "?token=t",
        "ws_epoch": "/ws/lobby?token=t&since=3&epoch=e-1",
        "ws_long_token": "/ws/lobby?token=" + "t" * 9000,
        "history": "/rooms/lobby/messages",
        "history_cursor": "/rooms/lobby/messages?before=c2a&limit=20\nBearer aaa.bbb.ccc",
        "history_cursor_max": "/rooms/lobby/messages?before=cffffffffffffffff",
        "history_cursor_bad": "/rooms/lobby/messages?before=c0&limit=0",
        "history_limit": "/rooms/lobby/messages?limit=200&token=x",
        "history_limit_over": "/rooms/lobby/messages?limit=201",
        "history_limit_pct": "/rooms/lobby/messages?limit=%2B5",
        "history_empty_before": "/rooms/lobby/messages?before=&limit=1",
        "presence": "/rooms/dev/presence\nbearer x.y.z",
        "rooms_unknown": "/rooms/dev/other",
        "rooms_no_route": "/rooms/dev",
        "rooms_bad_room": "/rooms/a%20b/messages",
        "rooms_slash": "/rooms/a%2Fb/messages",
        "unread": "/rooms/unread?token=x",
        "api_message": "/api/rooms/lobby/messages\nBearer key-1",
        "api_ban": "/api/users/alice/ban?room=lobby",
        "redact": "/ws/x?token=secret-value&since=1 token=another-secret \"token\":\"third\"",
        "bare_number": "12345",
    }
    for k, v in R.items():
        write("request", k, v)


def redis_urls():
    U = {
        "plain": "redis://127.0.0.1:6379",
        "host_only": "redis://localhost",
        "db": "redis://h:6380/3",
        "password": "redis://:secret@h",
        "user_password": "redis://alice:s3cr%40t@h:1/0",
        "ipv6": "redis://[::1]:6379",
        "ipv6_bad": "redis://[::1",
        "query": "redis://h:1/2?timeout=1#frag",
        "port0": "redis://h:0",
        "port_big": "redis://h:65536",
        "port_sign": "redis://h:+12",
        "db_big": "redis://h/1000001",
        "nul_password": "redis://:a%00b@h",
        "bad_pct": "redis://:a%zzb@h",
        "no_scheme": "127.0.0.1:6379",
        "tls": "rediss://h:6380",
        "cluster": "redis+cluster://h1:7000,h2:7001",
        "two_at": "redis://a@b@h",
    }
    for k, v in U.items():
        write("redis_url", k, v)


def programs():
    # see tests/fixtures/policies/fuzz/policy.lua: byte 0 picks the hook, then the count
    # of return values, then one code per value
    def s(b):
        return bytes([3, len(b)]) + b
    P = {
        "accept_true": bytes([0, 1, 1]),
        "accept_nil": bytes([1, 1, 0]),
        "accept_nothing": bytes([4, 0]),
        "reject": bytes([0, 3, 2]) + s(b"forbidden") + s(b"no entry"),
        "reject_plain": bytes([1, 1, 2]),
        "reject_weird_code": bytes([6, 3, 2]) + s(b"Rate Limited!") + s(b"line1\nline2"),
        "reject_nul": bytes([0, 3, 2]) + s(b"a\x00b") + s(b"why\x00not"),
        "reject_long": bytes([0, 3, 2]) + bytes([8, 65, 9]) + bytes([8, 0xc3, 200]),
        "reject_number_code": bytes([4, 3, 2, 4, 1, 0, 128, 0, 4, 255, 255, 255, 1]),
        "replace": bytes([3, 1]) + s(b"replaced"),
        "replace_same": bytes([3, 1, 10]),
        "replace_nul": bytes([3, 1]) + s(b"a\x00b"),
        "replace_huge": bytes([3, 1, 8, 120, 255]),
        "replace_cut_utf8": bytes([3, 1]) + s("café".encode()[:4]),
        "reject_bad_utf8_reason": bytes([3, 3, 2]) + s(b"n") + s(b"\xffok\xe2\x82\xac"),
        "message_number": bytes([3, 1, 4, 255, 255, 255, 0]),
        "message_nan": bytes([3, 1, 5]),
        "message_inf": bytes([3, 1, 6, 1]),
        "message_table": bytes([3, 1, 7, 3, 3, 1, 0x61, 1, 7, 1, 1, 2, 9, 3, 0]),
        "message_function": bytes([3, 1, 9]),
        "error_string": bytes([0, 1, 11]) + s(b"boom"),
        "error_table": bytes([1, 1, 11, 7, 0]),
        "error_nil": bytes([3, 1, 11, 0]),
        "typing_string": bytes([4, 1]) + s(b"yes"),
        "presence_reject": bytes([5, 2, 2]) + s(b"suppressed"),
        "leave_error": bytes([2, 1, 11]) + s(b"leave boom"),
        "disconnect_values": bytes([7, 4, 2, 1, 0, 9]),
        "loop": bytes([6, 1, 12, 255]),
        "memory": bytes([0, 1, 13, 7]),
    }
    for k, v in P.items():
        write("script", k, v)


def api_requests():
    """HTTP requests of the server API (fuzz_api): the curl examples of
    docs/api.md and the requests of tests/integration/api.py, as bytes on
    the wire (the key is one fuzz_api configures)."""
    key = "k-0123456789abcdef"

    def req(method, path, body=None, raw=None, key=key, headers=None, lf=False):
        h = {"Host": "127.0.0.1"}
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else b""
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        if data and "Transfer-Encoding" not in h:
            h["Content-Length"] = str(len(data))
        nl = "\n" if lf else "\r\n"
        head = f"{method} {path} HTTP/1.1{nl}" + "".join(f"{k}: {v}{nl}" for k, v in h.items()) + nl
        return head.encode() + data

    def msg(i, body="hi", **kw):
        m = {"id": i, "user": "ci", "body": body}
        m.update(kw)
        return m

    R = {
        # docs/api.md
        "publish_doc": req("POST", "/api/rooms/lobby/messages",
                           {"id": "deploy-8841", "user": "ci", "name": "CI", "body": "deploy 1.2.3 done",
                            "meta": {"kind": "deploy", "build": 8841}}),
        "room_info": req("GET", "/api/rooms/lobby"),
        "disconnect": req("POST", "/api/users/mallory/disconnect", {"reason": "session revoked"}),
        "disconnect_nobody": req("POST", "/api/users/mallory/disconnect"),
        "ban_all": req("PUT", "/api/users/mallory/ban", {"seconds": 3600, "reason": "spam"}),
        "ban_room": req("PUT", "/api/users/mallory/ban", {"seconds": 600, "room": "lobby", "reason": "cool down"}),
        "unban_query": req("DELETE", "/api/users/mallory/ban?room=lobby"),
        "unban_all": req("DELETE", "/api/users/mallory/ban"),
        "unban_body": req("DELETE", "/api/users/mallory/ban", {"room": "lobby"}),
        "delete_msg": req("DELETE", "/api/rooms/lobby/messages/42",
                          {"reason": "spam", "user": "mod-7", "name": "Mod Seven"}),
        # tests/integration/api.py
        "meta_as_given": req("POST", "/api/rooms/r1/messages",
                             raw=b'{"id":"d-1","user":"ci","name":"CI bot","body":"deployed",'
                                 b'"meta":{"kind": "deploy", "n": [1, 2.50], "nested": {"ok": true}}}',
                             headers={"Content-Type": "application/json"}),
        "meta_escaped_key": req("POST", "/api/rooms/r1/messages",
                                raw=b'{"id":"d-2","user":"ci","body":"b","\\u006deta":{"a":"\\u00e9"}}',
                                headers={"Content-Type": "application/json; charset=utf-8"}),
        "no_key": req("GET", "/api/rooms/r", key=None),
        "wrong_key": req("GET", "/api/rooms/r", key="wrong"),
        "second_key": req("GET", "/api/rooms/r", key="second-key-fedcba9876543210"),
        "basic_auth": req("GET", "/api/rooms/r", key=None, headers={"Authorization": "Basic dXNlcjpwYXNz"}),
        "no_route": req("GET", "/api/nope"),
        "kick": req("GET", "/api/users/u/kick"),
        "get_messages": req("GET", "/api/rooms/r/messages"),
        "post_ban": req("POST", "/api/users/u/ban", {}),
        "delete_room": req("DELETE", "/api/rooms/r"),
        "bad_room": req("POST", "/api/rooms/bad%20room/messages", msg("a")),
        "not_json": req("POST", "/api/rooms/r/messages", raw=b"{not json",
                        headers={"Content-Type": "application/json"}),
        "no_id": req("POST", "/api/rooms/r/messages", {"user": "u", "body": "no id"}),
        "long_id": req("POST", "/api/rooms/r/messages", msg("x" * 65)),
        "meta_array": req("POST", "/api/rooms/r/messages", msg("m", meta=[1, 2])),
        "meta_large": req("POST", "/api/rooms/r/messages", msg("m", meta={"k": "x" * 4100})),
        "body_nul": req("POST", "/api/rooms/r/messages", msg("m", body="nul\u0000inside")),
        "dup_key": req("POST", "/api/rooms/r/messages", raw=b'{"id":"a","id":"b","user":"u","body":"x"}',
                       headers={"Content-Type": "application/json"}),
        "ban_zero": req("PUT", "/api/users/u/ban", {"seconds": 0}),
        "ban_bad_room": req("PUT", "/api/users/u/ban", {"seconds": 5, "room": "a b"}),
        "ban_float": req("PUT", "/api/users/u/ban", {"seconds": 5.0}),
        "ban_too_long": req("PUT", "/api/users/u/ban", {"seconds": 315360001}),
        "delete_seq0": req("DELETE", "/api/rooms/r/messages/0"),
        "delete_seq_max": req("DELETE", "/api/rooms/r/messages/9223372036854775807"),
        "delete_seq_over": req("DELETE", "/api/rooms/r/messages/9223372036854775808"),
        "text_plain": req("POST", "/api/rooms/r/messages", raw=json.dumps(msg("t")).encode(),
                          headers={"Content-Type": "text/plain"}),
        "chunked": req("POST", "/api/rooms/r/messages", raw=b"1c\r\n" + json.dumps(msg("c")).encode()[:28] +
                       b"\r\n0\r\n\r\n",
                       headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}),
        "bad_length": req("POST", "/api/rooms/r/messages", msg("l"), headers={"Content-Length": "12a"}),
        "huge_length": req("POST", "/api/rooms/r/messages", msg("l"), headers={"Content-Length": "70000"}),
        "user_utf8": req("POST", "/api/users/J%C3%BCrgen%20M./disconnect", {"reason": "bye"}),
        "user_slash": req("PUT", "/api/users/a/b/ban", {"seconds": 60}),
        "user_c1": req("PUT", "/api/users/%C2%85x/ban", {"seconds": 60}),
        "name_default": req("POST", "/api/rooms/r/messages", {"id": "n", "user": "bot", "name": None, "body": ""}),
        "head": req("HEAD", "/api/rooms/r"),
        "lf_only": req("POST", "/api/rooms/r/messages", msg("lf"), lf=True),
    }
    for k, v in R.items():
        write("api", k, v)


if __name__ == "__main__":
    frames()
    jwts()
    requests()
    redis_urls()
    programs()
    api_requests()
    print("make_seeds: seeds written under", CORPUS)
