"""api: the server API (protocol.md "Server API (v2)", docs/api.md) on real
nodes: publish over HTTP (durable 200, meta in the frame and in history,
the policy's on_message with ctx.source = "api", idempotency on one node and
across nodes), disconnect (4003; a long reason cut to 123 bytes at a
character boundary) and ban (403 at upgrade, `banned` at join,
live connections closed or removed, expiry, lifted) on one node and
reaching another node, room info across nodes, the HTTP edge (401, 404,
405 with Allow, 411, 413 without reading the rest, 400, 422, 429 with
Retry-After, 503), keep-alive (many requests on one socket), the cluster-wide
limits (API key rate, user message rate) and the sample bot tools/bot.py;
a short key works (with a warning at start) and a body is JSON whatever
its Content-Type (curl -d and urllib's default form type, none at all)."""
import asyncio
import http.client
import json
import os
import socket
import subprocess
import time
import urllib.parse

from harness import (Client, Redis, TestFailure, ahttp_json, aupgrade_status, check, eq, start_node,
                     token, uniq, policy_dir, metric_value, ws_path, test, REPO)
import harness

KEY = "itest-api-key-0123456789"
KEY2 = "itest-api-key-second-abcdef"
API_ENV = {"CHAT_API_KEYS": f"{KEY},{KEY2}"}


def api_node(env=None, **kw):
    e = dict(API_ENV)
    e.update(env or {})
    return start_node(env=e, **kw)


def read_response(s, buf=b""):
    """(status, headers, body bytes, rest of buf) of one HTTP/1.1 answer
    read from socket s; the body by its content-length."""
    buf = harness.read_head(s, buf)
    if b"\r\n\r\n" not in buf:
        raise TestFailure(f"connection closed before an answer ({buf[:80]!r})")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hd = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    check("content-length" in hd, f"no content-length in {lines}")
    n = int(hd["content-length"])
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise TestFailure("connection closed inside a body")
        rest += chunk
    return int(lines[0].split()[1]), hd, rest[:n], rest[n:]


def request_bytes(method, path, body=None, key=KEY, headers=None, raw=None):
    h = {"Host": "127.0.0.1"}
    h.update(headers or {})
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else b""
    if body is not None:
        data = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    if data and "Transfer-Encoding" not in h:
        h["Content-Length"] = str(len(data))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    return head.encode() + data


def call(port, method, path, body=None, key=KEY, headers=None, raw=None, timeout=10.0):
    """One request on its own connection, written in one piece (a server
    that refuses it early may close before reading it): (status, headers,
    parsed JSON or raw bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(request_bytes(method, path, body, key, headers, raw))
        st, hd, b, _ = read_response(s)
        try:
            js = json.loads(b) if b else None
        except ValueError:
            js = b
        return st, hd, js
    finally:
        s.close()


async def acall(port, method, path, body=None, **kw):
    return await asyncio.to_thread(call, port, method, path, body, **kw)


def err_code(js):
    """The contract's error shape: {"error":{"code","message"}}."""
    check(isinstance(js, dict) and isinstance(js.get("error"), dict)
          and isinstance(js["error"].get("code"), str) and isinstance(js["error"].get("message"), str),
          f"error body not in the contract's shape: {js!r}")
    return js["error"]["code"]


async def expect_error(port, method, path, status, code, body=None, **kw):
    st, hd, js = await acall(port, method, path, body, **kw)
    eq(st, status, f"{method} {path} status ({js!r})")
    eq(err_code(js), code, f"{method} {path} error code")
    check("content-length" in hd, f"{method} {path}: no content-length")
    return hd, js


def msg(mid, body="hi", user="bot", name="Bot", **extra):
    m = {"id": mid, "user": user, "name": name, "body": body}
    m.update(extra)
    return m


def is_msg(room):
    return lambda f: f["type"] == "message" and f.get("room") == room


async def publish(port, room, m, status=200, key=KEY):
    st, hd, js = await acall(port, "POST", f"/api/rooms/{room}/messages", m, key=key)
    eq(st, status, f"publish {m.get('id')} ({js!r})")
    return js


async def metrics(port):
    st, _, body = await asyncio.to_thread(harness.http_get, port, "/metrics")
    eq(st, 200, "/metrics")
    return body.decode()


# ---------------------------------------------------------------- one node

@test(timeout=20)
async def disabled_without_keys():
    n = start_node()
    for method, path in [("GET", "/api/rooms/r"), ("POST", "/api/rooms/r/messages"),
                         ("PUT", "/api/users/u/ban"), ("GET", "/api/")]:
        await expect_error(n.port, method, path, 404, "not_found",
                           body={"x": 1} if method != "GET" else None)


@test(timeout=30)
async def http_errors_in_the_contract_shape():
    n = api_node()
    p = n.port
    room = uniq("e")
    # 401: no key, a wrong key, a near-miss key, another scheme
    hd, _ = await expect_error(p, "GET", f"/api/rooms/{room}", 401, "unauthorized", key=None)
    eq(hd.get("www-authenticate"), "Bearer", "WWW-Authenticate")
    await expect_error(p, "GET", f"/api/rooms/{room}", 401, "unauthorized", key="wrong")
    await expect_error(p, "GET", f"/api/rooms/{room}", 401, "unauthorized", key=KEY[:-1])
    await expect_error(p, "GET", f"/api/rooms/{room}", 401, "unauthorized", key=None,
                       headers={"Authorization": f"Basic {KEY}"})
    # 404 unknown routes, 405 with Allow
    await expect_error(p, "GET", "/api/nope", 404, "not_found")
    await expect_error(p, "GET", f"/api/users/u/kick", 404, "not_found")
    hd, _ = await expect_error(p, "GET", f"/api/rooms/{room}/messages", 405, "method_not_allowed")
    eq(hd.get("allow"), "POST", "Allow of /messages")
    hd, _ = await expect_error(p, "POST", "/api/users/u/ban", 405, "method_not_allowed", body={})
    eq(hd.get("allow"), "PUT, DELETE", "Allow of /ban")
    check("connection" not in hd, "a refused request with a small body is read, the connection kept")
    hd, _ = await expect_error(p, "DELETE", f"/api/rooms/{room}", 405, "method_not_allowed")
    eq(hd.get("allow"), "GET, HEAD", "Allow of room info")
    # 400: bad path parameters and bodies
    await expect_error(p, "POST", "/api/rooms/bad%20room/messages", 400, "bad_request", body=msg("a"))
    # a path libwebsockets would rewrite into another room (room "b"): refused as sent
    await expect_error(p, "GET", "/api/rooms/a%2F..%2Fb", 400, "bad_request")
    await expect_error(p, "POST", "/api/rooms/x/../b/messages", 400, "bad_request", body=msg("a"))
    await expect_error(p, "POST", f"/api/rooms/{room}/messages", 400, "bad_request", raw=b"{not json",
                       headers={"Content-Type": "application/json"})
    await expect_error(p, "POST", f"/api/rooms/{room}/messages", 400, "bad_request",
                       body={"user": "u", "body": "no id"})
    await expect_error(p, "POST", f"/api/rooms/{room}/messages", 400, "bad_request",
                       body=msg("x" * 65))
    await expect_error(p, "POST", f"/api/rooms/{room}/messages", 400, "bad_request",
                       body=msg("m", meta=[1, 2]))
    await expect_error(p, "POST", f"/api/rooms/{room}/messages", 400, "bad_request",
                       body=msg("m", meta={"k": "x" * 4100}))
    await expect_error(p, "POST", f"/api/rooms/{room}/messages", 400, "bad_request",
                       body=msg("m", body="nul\u0000inside"))
    # a raw NUL byte is not JSON (jansson 2.14 skips one after a literal: meta's
    # text would have carried it into the frame and the row; found by fuzz_api)
    await expect_error(p, "POST", f"/api/rooms/{room}/messages", 400, "bad_request",
                       raw=b'{"id":"m","user":"u","body":"b","meta":{"ok":true\x00}}',
                       headers={"Content-Type": "application/json"})
    await expect_error(p, "PUT", "/api/users/u/ban", 400, "bad_request", body={"seconds": 0})
    await expect_error(p, "PUT", "/api/users/u/ban", 400, "bad_request", body={"seconds": 5, "room": "a b"})
    await expect_error(p, "DELETE", f"/api/rooms/{room}/messages/0", 400, "bad_request")
    # the seq rule (util.h seq_parse): at most INT64_MAX, no leading zero
    await expect_error(p, "DELETE", f"/api/rooms/{room}/messages/9223372036854775808", 400, "bad_request")
    await expect_error(p, "DELETE", f"/api/rooms/{room}/messages/01", 400, "bad_request")
    # no 415 (the contract has none): a body that is not JSON is a 400 whatever its type
    hd, _ = await expect_error(p, "POST", f"/api/rooms/{room}/messages", 400, "bad_request",
                               raw=b"id=t&user=u&body=b",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    check("connection" not in hd, "400: the small body is read, the connection kept")
    # 411: a chunked body
    d = json.dumps(msg("c")).encode()
    hd, _ = await expect_error(p, "POST", f"/api/rooms/{room}/messages", 411, "length_required",
                               raw=b"%x\r\n%s\r\n0\r\n\r\n" % (len(d), d),
                               headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    eq(hd.get("connection"), "close", "411 closes")
    # moderator delete of a seq the room does not have
    await expect_error(p, "DELETE", f"/api/rooms/{room}/messages/1", 404, "not_found")
    # nothing of the above was published
    st, _, js = await acall(p, "GET", f"/api/rooms/{room}")
    eq((st, js.get("seq")), (200, 0), "room untouched by refused requests")
    m = await metrics(p)
    check((metric_value(m, "chat_api_requests_total", 'route="publish",code="400"') or 0) >= 6,
          "chat_api_requests_total{route=publish,code=400}")
    check((metric_value(m, "chat_api_auth_failures_total") or 0) >= 4, "auth failures counted")
    check(KEY not in n.log_text() and KEY[:12] not in n.log_text(), "the key appears in the log")


@test(timeout=30)
async def short_key_serves_the_api_with_a_warning():
    # protocol.md: CHAT_API_KEYS is "comma-separated secrets", no length set;
    # a key under 16 bytes is a warning at start (as a short JWT secret), not a refusal
    n = start_node(env={"CHAT_API_KEYS": "test-key"})
    room = uniq("sk")
    st, _, js = await acall(n.port, "GET", f"/api/rooms/{room}", key="test-key")
    eq((st, js.get("seq") if isinstance(js, dict) else js), (200, 0), "room info with the short key")
    js = await publish(n.port, room, msg("s1"), key="test-key")
    eq(js.get("seq"), 1, "publish with the short key")
    await expect_error(n.port, "GET", f"/api/rooms/{room}", 401, "unauthorized", key="test-ke")
    await expect_error(n.port, "GET", f"/api/rooms/{room}", 401, "unauthorized", key="test-key2")
    log = n.log_text()
    check("key #1 is shorter than 16 bytes" in log, f"no warning about the short key in the log: {n.log_tail(10)}")
    check("test-key" not in log, "the key itself appears in the log")
    # and --help says so (it said "each >= 16 bytes", which the node above refutes)
    out = subprocess.run([harness.RUN.chatd, "--help"], capture_output=True, text=True, timeout=10)
    line = [ln for ln in (out.stdout + out.stderr).splitlines() if "--api-keys" in ln]
    eq(len(line), 1, "one --api-keys line in --help")
    check(">= 16" not in line[0] and "warning" in line[0], f"--help on short keys: {line[0]!r}")


@test(timeout=30)
async def body_is_json_whatever_its_content_type():
    n = api_node()
    room = uniq("ct")
    path = f"/api/rooms/{room}/messages"
    seqs = []
    for i, ctype in enumerate(["application/x-www-form-urlencoded", "text/plain", None,
                               "application/json; charset=utf-8"]):
        st, _, js = await acall(n.port, "POST", path, raw=json.dumps(msg(f"c{i}", f"b{i}")).encode(),
                                headers={"Content-Type": ctype} if ctype else {})
        eq(st, 200, f"publish with Content-Type {ctype} ({js!r})")
        seqs.append(js.get("seq"))
    eq(seqs, [1, 2, 3, 4], "every publish got its seq")

    # what Python's urllib sends for data= (application/x-www-form-urlencoded)
    def with_urllib(body):
        import urllib.error
        import urllib.request
        rq = urllib.request.Request(f"http://127.0.0.1:{n.port}{path}", data=body,
                                    headers={"Authorization": f"Bearer {KEY}"})
        check(rq.get_header("Content-type") is None, "urllib adds its form type only when sending")
        try:
            with urllib.request.urlopen(rq, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    st, js = await asyncio.to_thread(with_urllib, json.dumps(msg("u1", "by urllib")).encode())
    eq((st, js.get("seq"), js.get("duplicate")), (200, 5, False), f"urllib publish ({js!r})")
    st, js = await asyncio.to_thread(with_urllib, b"id=u2&user=bot&body=form")
    eq((st, err_code(js)), (400, "bad_request"), "a form body is not JSON: 400")
    st, _, js = await acall(n.port, "GET", f"/api/rooms/{room}")
    eq(js.get("seq"), 5, "the refused form body published nothing")


@test(timeout=30)
async def oversized_body_413_without_reading_it():
    n = api_node(env={"CHAT_MAX_FRAME": 4096})
    room = uniq("big")
    # declared too large: answered before the body is sent, then closed
    s = socket.create_connection(("127.0.0.1", n.port), timeout=5)
    try:
        s.sendall((f"POST /api/rooms/{room}/messages HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: 100000000\r\n\r\n").encode())
        data = b""
        t0 = time.time()
        while time.time() - t0 < 5:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        check(data.startswith(b"HTTP/1.1 413"), f"413 expected before any body byte: {data[:80]!r}")
        check(b"connection: close" in data.lower(), "413 says connection: close")
        check(b'"too_large"' in data, f"413 body: {data!r}")
    finally:
        s.close()
    # a real body just over the limit
    big = msg("big", body="x" * 4200)
    hd, _ = await expect_error(n.port, "POST", f"/api/rooms/{room}/messages", 413, "too_large", body=big)
    # at the limit it passes (the limit is the body size)
    ok = msg("ok", body="y" * (4096 - len(json.dumps(msg("ok", body=""))) - 2))
    js = await publish(n.port, room, ok)
    eq(js["seq"], 1, "a body at the limit is accepted")


def _expect_continue(port, path, body, key=KEY):
    """A request with "Expect: 100-continue" whose body is held back until
    the server answers: (what came within 2 s before the body, the final
    answer's status and JSON or None when it came first)."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                   f"Expect: 100-continue\r\n\r\n").encode())
        s.settimeout(2)
        first = b""
        try:
            while b"\r\n\r\n" not in first:
                chunk = s.recv(65536)
                if not chunk:
                    break
                first += chunk
        except socket.timeout:
            pass
        s.settimeout(5)
        if not first.startswith(b"HTTP/1.1 100"):
            return first, None, None
        rest = first.partition(b"\r\n\r\n")[2]
        s.sendall(data)
        st, _, b, _ = read_response(s, rest)
        return first, st, json.loads(b)
    finally:
        s.close()


@test(timeout=30, needs=("pg",))
async def expect_100_continue_is_answered():
    """curl (bodies over 1 KiB), PHP's curl and .NET send "Expect:
    100-continue" and hold the body back until the server answers: before,
    chatd never did, and each such request stalled until the client gave
    up waiting (curl: 1 s). An accepted request gets "100 Continue", then its
    answer; a refused one its final status at once, without a body read."""
    n = api_node(db=True)
    room = uniq("cont")
    first, st, js = await asyncio.to_thread(_expect_continue, n.port, f"/api/rooms/{room}/messages",
                                            msg("c1", body="x" * 2000))
    check(first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), f"no 100 Continue within 2 s: {first[:80]!r}")
    eq(st, 200, f"the answer after the body: {js}")
    eq(js.get("seq"), 1, "published")
    # refused before its body (a wrong key): the 401 comes at once, no 100
    first, st, _ = await asyncio.to_thread(_expect_continue, n.port, f"/api/rooms/{room}/messages",
                                           msg("c2"), key="wrong-key-" + "x" * 30)
    check(first.startswith(b"HTTP/1.1 401"), f"a refusal answers at once: {first[:80]!r}")
    # a route that does not exist: messages/ with no seq is none
    await expect_error(n.port, "POST", f"/api/rooms/{room}/messages/", 404, "not_found", body=msg("c3"))


@test(timeout=30)
async def keep_alive_many_requests_on_one_socket():
    n = api_node()
    room = uniq("ka")

    def session():
        s = socket.create_connection(("127.0.0.1", n.port), timeout=5)
        out = []
        buf = b""

        def req(method, path, body=None, key=KEY, **kw):
            nonlocal buf
            s.sendall(request_bytes(method, path, body, key, **kw))
            st, hd, b, buf = read_response(s, buf)
            out.append((st, hd, json.loads(b)))
        try:
            for i in range(10):
                req("POST", f"/api/rooms/{room}/messages", msg(f"k{i}", f"b{i}"))
            req("GET", f"/api/rooms/{room}")
            req("GET", f"/api/rooms/{room}", key="wrong")                 # 401
            req("GET", "/api/nope")                                       # 404
            req("DELETE", f"/api/rooms/{room}")                           # 405
            req("POST", f"/api/rooms/{room}/messages", {"user": "x"})     # 400 after the body
            req("POST", f"/api/rooms/{room}/messages", None, raw=b'{"id":"t"}',
                headers={"Content-Type": "text/plain"})                   # 400 (no user), body read
            req("PUT", "/api/users/u/ban", {"seconds": 1}, key="wrong")   # 401, body read
            req("POST", f"/api/rooms/{room}/messages", msg("k0", "b0"))  # duplicate
            req("POST", f"/api/rooms/{room}/messages", msg("last"))
        finally:
            s.close()
        return out
    res = await asyncio.to_thread(session)
    for i in range(10):
        eq((res[i][0], res[i][2].get("seq"), res[i][2].get("duplicate")), (200, i + 1, False), f"publish k{i}")
    eq((res[10][0], res[10][2].get("seq")), (200, 10), "room info on the same socket")
    eq([r[0] for r in res[11:17]], [401, 404, 405, 400, 400, 401], "errors kept the connection")
    check(all("connection" not in r[1] for r in res), "no answer closed the connection")
    eq((res[17][0], res[17][2].get("seq"), res[17][2].get("duplicate")), (200, 1, True), "duplicate")
    eq((res[18][0], res[18][2].get("seq")), (200, 11), "last request on the same socket")


@test(timeout=40, needs=("pg",))
async def publish_frame_meta_history_and_duplicate():
    n = api_node(db=True)
    room = uniq("pub")
    c = await Client.connect(n, room, token("alice"))
    meta = {"kind": "deploy", "n": [1, 2.5], "nested": {"ok": True}}
    # sent as text: meta is stored and broadcast as given ("2.50" stays)
    raw = (b'{"id":"d-1","user":"ci","name":"CI bot","body":"deployed",'
           b'"meta":{"kind": "deploy", "n": [1, 2.50], "nested": {"ok": true}}}')
    st, _, js = await acall(n.port, "POST", f"/api/rooms/{room}/messages", raw=raw,
                            headers={"Content-Type": "application/json"})
    eq(st, 200, f"publish ({js})")
    eq(js, {"room": room, "seq": 1, "id": "d-1", "duplicate": False}, "answer")
    f = await c.wait_for(is_msg(room), 5, what="the API message")
    eq((f["seq"], f["id"], f["user"], f["name"], f["body"], f["meta"]),
       (1, "d-1", "ci", "CI bot", "deployed", meta), "message frame")
    check(isinstance(f.get("ts"), int), "ts")
    # the durable 200 means the row is there
    rows = harness.RUN.pg.psql("chatd", f"SELECT seq, client_id, user_id, name, body, meta FROM messages "
                                        f"WHERE room='{room}'").strip().splitlines()
    eq(len(rows), 1, "one row")
    check(rows[0].startswith("1|d-1|ci|CI bot|deployed|"), f"row {rows[0]!r}")
    eq(json.loads(rows[0].split("|", 5)[5]), meta, "meta stored")
    check(rows[0].endswith('|{"kind": "deploy", "n": [1, 2.50], "nested": {"ok": true}}'),
          f"meta stored as given: {rows[0]!r}")
    # history page: meta after body
    st, hj, body = await ahttp_json(n.port, f"/rooms/{room}/messages", token("reader"))
    eq(st, 200, "history")
    eq(hj["messages"][0].get("meta"), meta, "meta in history")
    check(b'"body":"deployed","meta":{"kind": "deploy", "n": [1, 2.50], "nested": {"ok": true}},"reactions":{},"ts":'
          in body, f"meta as given after body (then the state: no reactions), before ts: {body[:300]!r}")
    # the same id again: the first seq, duplicate, no second frame or row
    st, _, js = await acall(n.port, "POST", f"/api/rooms/{room}/messages", raw=raw,
                            headers={"Content-Type": "application/json"})
    eq((st, js["seq"], js["duplicate"]), (200, 1, True), "duplicate answer")
    js = await publish(n.port, room, msg("d-2", "second"))
    eq(js["seq"], 2, "next seq")
    await c.wait_count(is_msg(room), 2, 5)
    await asyncio.sleep(0.3)
    eq([m["id"] for m in c.messages(room)], ["d-1", "d-2"], "one frame per id")
    eq(harness.RUN.pg.psql("chatd", f"SELECT count(*) FROM messages WHERE room='{room}'").strip(), "2", "rows")
    # a client message and an API message share the seq order
    await c.send_msg("from ws", id="w1")
    ack = await c.wait_for(lambda f: f["type"] == "ack", 5)
    eq(ack["seq"], 3, "WebSocket message after the API ones")
    st, _, info = await acall(n.port, "GET", f"/api/rooms/{room}")
    eq(info, {"room": room, "seq": 3, "users": 1, "connections": 1}, "room info")


@test(timeout=40, needs=("pg",))
async def integers_beyond_64_bits_in_meta_are_kept_as_given():
    """meta is any JSON object, "stored and broadcast as is": a uint64 id
    (2^64-1) or a bigger integer in it is JSON, kept as given in the frame,
    the row, a since= replay and history; so is one in a member nobody
    reads. Before: 400 "invalid JSON: too big integer" (jansson holds
    64-bit integers only). The ban's seconds is still judged (400). Also
    under a member name spelled with an escape ("\\u006deta"): before, that
    meta was serialized again from the tree read with every integer as a
    real ({"ok":1.0,"hash":1.8446744073709552e+19}). Compared as text
    (json.dumps): 1 and 1.0 are equal in Python."""
    n = api_node(db=True)
    room = uniq("bigm")
    c = await Client.connect(n, room, token("alice"))
    given = b'{"hash": 18446744073709551615, "n": -99999999999999999999, "ok": 1, "f": 1.5}'
    want = json.dumps(json.loads(given))
    for seq, key in ((1, b'"meta"'), (2, b'"\\u006deta"')):
        raw = (b'{"id":"b-%d","user":"ci","body":"hashed","trace":123456789012345678901234567890,%s:'
               % (seq, key) + given + b'}')
        st, _, js = await acall(n.port, "POST", f"/api/rooms/{room}/messages", raw=raw,
                                headers={"Content-Type": "application/json"})
        eq((st, js), (200, {"room": room, "seq": seq, "id": f"b-{seq}", "duplicate": False}), "publish")
    fs = await c.wait_count(is_msg(room), 2, 5, "the API messages")
    eq([(f["body"], json.dumps(f["meta"])) for f in fs], [("hashed", want)] * 2, "frame: meta's numbers exact")
    r = await Client.connect(n, room, token("bob"), since=0)
    fs = await r.wait_count(is_msg(room), 2, 5, "the replayed messages")
    eq([json.dumps(f["meta"]) for f in fs], [want] * 2, "replay: meta's numbers exact")
    st, hj, body = await ahttp_json(n.port, f"/rooms/{room}/messages", token("reader"))
    eq((st, [json.dumps(m.get("meta")) for m in hj["messages"]]), (200, [want] * 2),
       "history: meta's numbers exact")
    check(body.count(b'"meta":' + given) == 2, f"meta as given in history: {body[:400]!r}")
    f = fs[0]
    # deleted: a replay erases it (no body, no meta) and keeps who and when
    ts = f["ts"]
    st, _, js = await acall(n.port, "DELETE", f"/api/rooms/{room}/messages/1", {"reason": "x"})
    eq(st, 200, f"moderator delete ({js})")
    r2 = await Client.connect(n, room, token("carol"), since=0)
    f2 = await r2.wait_for(is_msg(room), 5, what="the replayed deleted message")
    eq((f2.get("deleted"), "body" in f2, "meta" in f2, f2.get("user"), f2.get("ts")),
       (True, False, False, "ci", ts), f"the erased replay: {f2}")
    st, _, js = await acall(n.port, "PUT", "/api/users/u/ban", raw=b'{"seconds":99999999999999999999}',
                            headers={"Content-Type": "application/json"})
    eq((st, err_code(js)), (400, "bad_request"), f"a ban of 10^20 seconds ({js})")
    st, _, js = await acall(n.port, "PUT", "/api/users/u/ban",
                            raw=b'{"seconds":1,"ticket":99999999999999999999}',
                            headers={"Content-Type": "application/json"})
    eq(st, 200, f"a ban with a big unread member ({js})")


@test(timeout=40, needs=("pg",))
async def unstorable_input_is_refused_before_a_seq():
    """store_write's -3 (a row Postgres can never hold: NUL, ill-formed
    UTF-8, a number over 2^63-1; publish answers PUBLISH_UNSTORABLE after
    the seq was handed out) is a last line that no client input reaches:
    each such input is refused earlier, before any seq, over WebSocket
    (bad_request, no ack) and the server API (400 bad_request). The edges
    that ARE text Postgres holds (noncharacters, U+10FFFF, 4-byte emoji)
    are stored and acked. Evidence for docs/architecture.md "A row history
    can never hold"."""
    n = api_node(db=True)
    room = uniq("uns")
    c = await Client.connect(n, room, token("alice"))
    ws_cases = [
        # lone surrogates: jansson refuses them (no UTF-8 for them exists)
        ('{"type":"message","id":"s1","body":"a\\ud800b"}', None),
        ('{"type":"message","id":"s2","body":"\\udfff"}', None),
        # NUL: frame.c refuses it with the message's id
        ('{"type":"message","id":"s3","body":"a\\u0000b"}', "s3"),
        ('{"type":"message","id":"s4","body":"ok","room":"%s","x":"\\ud800"}' % room, None),
        # a target beyond int64 (jansson cannot hold it)
        ('{"type":"edit","id":"s5","target":9223372036854775808,"body":"x"}', None),
        ('{"type":"edit","id":"s6","target":1,"body":"\\u0000"}', "s6"),
    ]
    for raw, want_id in ws_cases:
        e = await c.reply(raw, lambda f: f["type"] in ("error", "ack", "message"), 5,
                          what=f"answer to {raw[:60]}")
        eq((e.get("type"), e.get("code")), ("error", "bad_request"), f"answer to {raw[:60]}")
        if want_id:
            eq(e.get("id"), want_id, f"the error names the id for {raw[:60]}")
    # ill-formed UTF-8 bytes cannot reach the parser in a text frame (1007,
    # tests/integration/edge.py); in a binary frame they are refused as such
    e = await c.reply(b'{"type":"message","id":"s7","body":"\xff\xfe"}',
                      lambda f: f["type"] in ("error", "ack", "message"), 5, what="binary frame")
    eq((e.get("type"), e.get("code")), ("error", "bad_request"), "binary frame")
    # server API: raw ill-formed UTF-8 in any field, lone surrogates, NUL
    pub = f"/api/rooms/{room}/messages"
    hdr = {"Content-Type": "application/json"}
    api_cases = [
        b'{"id":"a1","user":"u","body":"\xc0\x80"}',                 # overlong NUL
        b'{"id":"a2","user":"u","body":"\xed\xa0\x80"}',             # CESU surrogate
        b'{"id":"a3","user":"u","body":"\xf4\x90\x80\x80"}',         # above U+10FFFF
        b'{"id":"a4","user":"\xff","body":"b"}',
        b'{"id":"a5","user":"u","name":"\xfe","body":"b"}',
        b'{"id":"a\xff","user":"u","body":"b"}',
        b'{"id":"a7","user":"u","body":"b","meta":{"k":"\xff"}}',
        b'{"id":"a8","user":"u","body":"b","meta":{"k":"\\ud800"}}',
        b'{"id":"a9","user":"u","body":"\\udc00"}',
        b'{"id":"a10","user":"u\\u0000v","body":"b"}',
        b'{"id":"a11","user":"u","body":"b\\u0000"}',
        b'{"id":"a12","user":"u","body":"b","meta":{"k":"x\\u0000y"}}',   # NUL in meta, as in a body
        b'{"id":"a13","user":"u","body":"b","meta":{"k":["ok",{"d":"\\u0000"}]}}',
        b'{"id":"a14","user":"u","body":"b","meta":{"k\\u0000":1}}',
    ]
    for raw in api_cases:
        st, _, js = await acall(n.port, "POST", pub, raw=raw, headers=hdr)
        eq(st, 400, f"API publish {raw[:50]!r} ({js!r})")
        eq(err_code(js), "bad_request", f"API publish {raw[:50]!r}")
    await expect_error(n.port, "DELETE", f"/api/rooms/{room}/messages/9223372036854775808", 400, "bad_request")
    # nothing above took a seq, was broadcast, acked or stored
    await c.roundtrip()
    check(not [f for f in c.frames if f["type"] in ("ack", "message", "message_update")],
          f"no ack or message for refused input: {c.brief(-5)}")
    st, _, info = await acall(n.port, "GET", f"/api/rooms/{room}")
    eq((st, info.get("seq")), (200, 0), "the room's head: no seq was handed out")
    eq(harness.RUN.pg.psql("chatd", f"SELECT count(*) FROM messages WHERE room='{room}'").strip(), "0",
       "no row")
    # the edges Postgres text holds: stored and acked (WebSocket and API)
    edge = "\ufffe\uffff\U0010ffff\U0001f600\u2028"
    await c.send_msg(edge, id="ok1")
    ack = await c.wait_for(lambda f: f["type"] == "ack", 5, what="ack of the edge characters")
    eq(ack.get("id"), "ok1", "ack id")
    js = await publish(n.port, room, msg("ok2", edge, user="\U0010ffff" * 31, name="\ufffe"))
    eq(js["seq"], ack["seq"] + 1, "the API's edge message takes the next seq")
    st, hj, body = await ahttp_json(n.port, f"/rooms/{room}/messages", token("reader"))
    eq(st, 200, "history")
    eq([(m["id"], m["body"]) for m in hj["messages"]], [("ok1", edge), ("ok2", edge)],
       "the edge characters stored as sent")
    eq(hj["messages"][1]["user"], "\U0010ffff" * 31, "a 124-byte user of 4-byte characters stored")
    await c.close()


@test(timeout=40, needs=("pg",))
async def row_postgres_refuses_is_400_over_the_api():
    """A message whose row Postgres refuses for good (an operator's CHECK
    constraint on messages, SQLSTATE 23514) is answered 400 bad_request
    over the server API, never the 503 that asks for a retry (before, its
    batch was retried for ever and every later publish of the node timed
    out); the next publish is stored; a retry with the same id is the
    duplicate of the first seq, refused again (not a new message)."""
    n = api_node(db=True)
    room = uniq("refused")
    poison = "poison " + room
    with harness.refusing_check(poison) as rc:
        pub = f"/api/rooms/{room}/messages"
        await expect_error(n.port, "POST", pub, 400, "bad_request", body=msg("p1", poison))
        eq((await publish(n.port, room, msg("p2", "fine")))["seq"], 2, "the next publish")
        await expect_error(n.port, "POST", pub, 400, "bad_request", body=msg("p1", poison))
        js = await publish(n.port, room, msg("p3", "fine too"))
        eq((js["seq"], js["duplicate"]), (3, False), "after the retry, which took no new seq")
        rows = rc.pg.psql("chatd", f"SELECT seq, client_id FROM messages WHERE room='{room}' ORDER BY seq")
        eq(rows.split(), ["2|p2", "3|p3"], "rows")
        text = await metrics(n.port)
        eq(metric_value(text, "chat_store_rows_refused_total"), 2, "chat_store_rows_refused_total")


@test(timeout=40, needs=("pg",))
async def moderator_delete_through_the_api():
    n = api_node(db=True)
    room = uniq("mod")
    c = await Client.connect(n, room, token("alice"))
    js = await publish(n.port, room, msg("m-1", "rude words", user="carol", name="Carol"))
    eq(js["seq"], 1, "published")
    await c.wait_for(is_msg(room), 5, what="the message")
    st, _, dj = await acall(n.port, "DELETE", f"/api/rooms/{room}/messages/1",
                            body={"reason": "spam", "user": "mod-7", "name": "Mod Seven"})
    eq(st, 200, f"moderator delete ({dj})")
    eq((dj["room"], dj["target"], dj["seq"]), (room, 1, 2), "answer: the delete event's own seq")
    f = await c.wait_for(lambda f: f["type"] == "message_update" and f.get("room") == room, 5,
                         what="the delete update")
    eq((f["seq"], f["target"], f["kind"], f["user"], f["name"]), (2, 1, "delete", "mod-7", "Mod Seven"),
       "the update frame names the moderator")
    st, hj, _ = await ahttp_json(n.port, f"/rooms/{room}/messages", token("reader"))
    eq(st, 200, "history")
    m = hj["messages"][0]
    check(m.get("deleted") is True and "body" not in m, f"history shows it deleted: {m}")
    # deleted already, and an update's seq: not found; nothing published
    await expect_error(n.port, "DELETE", f"/api/rooms/{room}/messages/1", 404, "not_found")
    # the same moderator again without an id: its default id ("api-delete-1") is made up, not a
    # retry's: 404 like any second delete (the contract's not_found for a deleted target)
    await expect_error(n.port, "DELETE", f"/api/rooms/{room}/messages/1", 404, "not_found",
                       body={"user": "mod-7"})
    await expect_error(n.port, "DELETE", f"/api/rooms/{room}/messages/2", 404, "not_found")
    await expect_error(n.port, "DELETE", f"/api/rooms/{room}/messages/1", 400, "bad_request",
                       body={"user": 5})
    # duplicate keys are refused in every body (the second user would have been the author)
    await expect_error(n.port, "DELETE", f"/api/rooms/{room}/messages/1", 400, "bad_request",
                       raw=b'{"user":"mod","user":"eve"}', headers={"Content-Type": "application/json"})
    st, _, info = await acall(n.port, "GET", f"/api/rooms/{room}")
    eq(info["seq"], 2, "no seq for the refused deletes")
    # a retry with the id given in the body (its answer was lost): the first
    # delete's seq, duplicate, nothing published again (it answered 404); the
    # id for a delete of another message: 409
    js = await publish(n.port, room, msg("m-2", "second"))
    js5 = await publish(n.port, room, msg("m-3", "third"))
    body = {"id": "del-x", "user": "mod-7"}
    st, _, d1 = await acall(n.port, "DELETE", f"/api/rooms/{room}/messages/{js['seq']}", body=body)
    eq((st, d1.get("seq"), d1.get("duplicate")), (200, 5, False), f"delete with an id ({d1})")
    st, _, d2 = await acall(n.port, "DELETE", f"/api/rooms/{room}/messages/{js['seq']}", body=body)
    eq((st, d2.get("target"), d2.get("seq"), d2.get("duplicate")), (200, js["seq"], 5, True),
       f"its retry: the first seq, duplicate ({d2})")
    _, ej = await expect_error(n.port, "DELETE", f"/api/rooms/{room}/messages/{js5['seq']}", 409,
                               "conflict", body=body)
    check("seq 5" in ej["error"]["message"], f"the 409 names the id's seq: {ej}")
    st, _, info = await acall(n.port, "GET", f"/api/rooms/{room}")
    eq(info["seq"], 5, "one delete event for the three calls")
    await c.wait_for(lambda f: f["type"] == "message_update" and f.get("seq") == 5, 5, what="the delete")
    await c.roundtrip()
    eq(len([f for f in c.frames if f["type"] == "message_update"]), 2, "no second delete frame")


@test(timeout=30)
async def policy_sees_source_api_and_refusal_is_422():
    pol = policy_dir(
        "local M = {}\n"
        "function M.on_message(ctx, msg)\n"
        "  if msg.body == 'forbidden' then return false, 'rejected', 'no forbidden from ' .. ctx.source end\n"
        "  if ctx.source == 'api' then return '[api] ' .. msg.body end\n"
        "end\nreturn M\n")
    n = api_node(scripts=pol)
    room = uniq("pol")
    c = await Client.connect(n, room, token("alice"))
    _, js = await expect_error(n.port, "POST", f"/api/rooms/{room}/messages", 422, "rejected",
                               body=msg("f1", "forbidden"))
    eq(js["error"]["message"], "no forbidden from api", "the policy's reason")
    await publish(n.port, room, msg("ok1", "hello"))
    f = await c.wait_for(is_msg(room), 5)
    eq((f["body"], f["seq"]), ("[api] hello", 1), "the policy's replacement for source api")
    e = await c.error_for({"type": "message", "body": "forbidden", "id": "w1"})
    eq(e.get("message"), "no forbidden from ws", "a WebSocket message has source ws")


@test(timeout=40, needs=("pg",))
async def publish_503_when_not_durable_in_time_then_retry_is_duplicate():
    # inserts blocked by a table lock held for 3 s: the publish has its seq
    # but no commit; the API answers 503 at CHAT_API_TIMEOUT_MS; the row
    # commits once the lock is gone, and a retry with the same id answers
    # the first seq (duplicate), with one row and one frame
    n = api_node(db=True, env={"CHAT_API_TIMEOUT_MS": 800})
    room = uniq("nd")
    c = await Client.connect(n, room, token("w"))
    await publish(n.port, room, msg("seed"))        # the room's head is seeded
    pg = harness.RUN.need_pg()
    locker = subprocess.Popen(
        ["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", "chatd", "-qc",
         "BEGIN; LOCK TABLE messages IN EXCLUSIVE MODE; SELECT pg_sleep(3); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.5)                    # the lock is taken
        t0 = time.time()
        _, js = await expect_error(n.port, "POST", f"/api/rooms/{room}/messages", 503, "unavailable",
                                   body=msg("late-1", "slow"))
        dt = time.time() - t0
        check(0.7 <= dt < 2.5, f"503 at the deadline, took {dt:.2f}s")
        check("same id" in js["error"]["message"], "tells to retry with the same id")
    finally:
        await asyncio.to_thread(locker.wait, 15)
    js = await publish(n.port, room, msg("late-1", "slow"))
    eq((js["seq"], js["duplicate"]), (2, True), "the retry finds the first seq")
    eq(pg.psql("chatd", f"SELECT count(*) FROM messages WHERE room='{room}' AND client_id='late-1'").strip(),
       "1", "one row")
    await c.wait_count(is_msg(room), 2, 5)
    await asyncio.sleep(0.2)
    eq([f["id"] for f in c.messages(room)], ["seed", "late-1"], "one frame")
    m = await metrics(n.port)
    eq(metric_value(m, "chat_api_publish_timeouts_total"), 1.0, "timeouts metric")


@test(timeout=40, needs=("redis",))
async def publish_503_when_the_bus_is_down():
    rd = Redis(harness.RUN.tmpdir("api-redis"))
    rd.start()
    try:
        n = api_node(redis=rd.url)
        room = uniq("bd")
        await publish(n.port, room, msg("b0"))
        rd.kill9()
        end = time.time() + 5
        st = None
        while time.time() < end:
            st, _, js = await acall(n.port, "POST", f"/api/rooms/{room}/messages", msg("b1"))
            if st == 503:
                break
            await asyncio.sleep(0.1)
        eq(st, 503, "publish while Redis is down")
        eq(err_code(js), "unavailable", "code")
        await expect_error(n.port, "POST", "/api/users/x/disconnect", 503, "unavailable")
    finally:
        rd.stop()
        harness.release_port(rd.port)


@test(timeout=40)
async def disconnect_and_ban_on_one_node():
    n = api_node()
    r1, r2 = uniq("b1"), uniq("b2")
    a1 = await Client.connect(n, r1, token("eve"))
    a2 = await Client.connect(n, r2, token("eve"))
    await a2.join(r1)
    other = await Client.connect(n, r1, token("bob"))
    # a per-room ban: removed from r1 with the banned error, r2 stays
    st, _, js = await acall(n.port, "PUT", "/api/users/eve/ban", {"seconds": 2, "room": r1, "reason": "calm"})
    eq(st, 200, f"ban ({js})")
    eq((js["user"], js["room"], js["closed"]), ("eve", r1, 2), "ban answer")
    check(js["until"] > time.time() * 1000, "until in the future")
    for c in (a1, a2):
        e = await c.wait_for(lambda f: f["type"] == "error" and f.get("code") == "banned", 3)
        eq((e["room"], e["message"]), (r1, "calm"), "banned error")
    mk = a2.mark()
    await a2.send({"type": "message", "room": r1, "body": "still here?", "id": "x"})
    e = await a2.wait_for(lambda f: f["type"] == "error" and f.get("id") == "x", 3, start=mk)
    eq(e["code"], "not_member", "removed from the room")
    js2 = await a2.join(r1)
    eq((js2["type"], js2.get("code"), js2.get("room")), ("error", "banned", r1), "join answers banned")
    await a2.send_msg("in r2", id="r2m", room=r2)
    await a2.wait_for(lambda f: f["type"] == "ack" and f.get("id") == "r2m", 3)
    st, body = await aupgrade_status(n.port, ws_path(r1, token("eve")))
    eq(st, 403, "upgrade to the banned room")
    check(b"banned" in body and b"calm" in body, f"403 body {body!r}")
    st, _ = await aupgrade_status(n.port, ws_path(r2, token("eve")))
    eq(st, 101, "upgrade to another room")
    check(not other.closed, "another user untouched")
    m = await metrics(n.port)
    eq(metric_value(m, "chat_bans_active"), 1.0, "chat_bans_active")
    eq(metric_value(m, "chat_admin_actions_total", 'action="ban_leave"'), 2.0, "ban_leave counted")
    # expiry: after 2 s the room is open again
    await asyncio.sleep(2.2)
    js2 = await a2.join(r1)
    eq(js2["type"], "presence_state", "join after the ban expired")
    st, _ = await aupgrade_status(n.port, ws_path(r1, token("eve")))
    eq(st, 101, "upgrade after expiry")
    # an every-room ban closes with 4003 and the reason; lifted by DELETE
    st, _, js = await acall(n.port, "PUT", "/api/users/eve/ban", {"seconds": 60, "reason": "go away"})
    eq((st, js["room"], js["closed"]), (200, None, 2), "every-room ban")
    for c in (a1, a2):
        await c.wait_closed(3)
        eq((c.close_code, c.close_reason), (4003, "go away"), "close code and reason")
    st, _ = await aupgrade_status(n.port, ws_path(r2, token("eve")))
    eq(st, 403, "every room is banned")
    st, _, js = await acall(n.port, "DELETE", "/api/users/eve/ban")
    eq((st, js.get("lifted")), (200, True), "unban")
    st, _ = await aupgrade_status(n.port, ws_path(r2, token("eve")))
    eq(st, 101, "lifted")
    # disconnect: every connection of the user, 4003 with the reason
    d1 = await Client.connect(n, r1, token("dave"))
    d2 = await Client.connect(n, r2, token("dave"))
    st, _, js = await acall(n.port, "POST", "/api/users/dave/disconnect", {"reason": "maintenance"})
    eq((st, js), (200, {"user": "dave", "closed": 2}), "disconnect answer")
    for c in (d1, d2):
        await c.wait_closed(2)
        eq((c.close_code, c.close_reason), (4003, "maintenance"), "disconnect close")
    st, _, js = await acall(n.port, "POST", "/api/users/nobody/disconnect")
    eq((st, js["closed"]), (200, 0), "disconnect of nobody")
    check(not other.closed, "another user untouched")


@test(timeout=40, needs=("redis",))
async def unban_answers_whether_a_ban_was_lifted():
    """docs/api.md: DELETE /api/users/{user}/ban answers 200 with "lifted"
    true when a ban in force was lifted, false when there was none (never
    banned, another room's only, lifted already, expired) — single node and
    with the bans shared in Redis."""
    for how, kw in (("single node", {}), ("with Redis", {"redis": True})):
        n = api_node(**kw)
        user = uniq("ghost")
        path = f"/api/users/{user}/ban"

        async def lift(room=None):
            st, _, js = await acall(n.port, "DELETE", path + (f"?room={room}" if room else ""))
            eq(st, 200, f"{how}: unban answer {js}")
            eq((js.get("user"), js.get("room")), (user, room), f"{how}: unban names what it lifts")
            return js.get("lifted")

        eq(await lift(), False, f"{how}: never banned")
        eq(await lift("lobby"), False, f"{how}: never banned in lobby")
        st, _, _ = await acall(n.port, "PUT", path, {"seconds": 60, "room": "lobby"})
        eq(st, 200, f"{how}: ban in lobby")
        eq(await lift("other"), False, f"{how}: no ban in another room")
        eq(await lift("lobby"), True, f"{how}: the lobby ban lifted")
        eq(await lift("lobby"), False, f"{how}: lifted already")
        st, _, _ = await acall(n.port, "PUT", path, {"seconds": 60})
        eq(st, 200, f"{how}: every-room ban")
        eq(await lift(), True, f"{how}: every ban lifted")
        st, _, _ = await acall(n.port, "PUT", path, {"seconds": 1})
        await asyncio.sleep(1.3)
        eq(await lift(), False, f"{how}: an expired ban is none in force")


@test(timeout=30)
async def long_close_reason_cut_at_a_character():
    """docs/api.md: the disconnect reason becomes the close reason cut to 123
    bytes (a close frame's payload is at most 125 bytes, 2 of them the
    code), whole characters: a multi-byte character across byte 123 is left
    out, never split (a split one is invalid UTF-8, which a client must
    fail with 1007); a reason of up to 123 bytes arrives whole (it was cut
    to 63 bytes before)."""
    n = api_node()
    room = uniq("cr")
    whole = "Spamming links in #general: read the code of conduct at https://example.com/coc first"
    cases = [   # (reason sent, close reason expected)
        (whole, whole),                                    # 86 bytes: whole
        ("w" * 123, "w" * 123),                            # exactly the most a close frame holds
        ("a" * 122 + "était", "a" * 122),             # 2 bytes at 122..123
        ("b" * 121 + "€ and more", "b" * 121),        # 3 bytes at 121..123
        ("c" * 120 + "😀!", "c" * 120),            # 4 bytes at 120..123
        ("d" * 120 + "€" + "tail", "d" * 120 + "€"),  # ends at byte 123: kept whole
        ("é" * 70, "é" * 61),                   # 140 bytes of 2-byte chars
        ("😀" * 40, "😀" * 30),           # 120 bytes kept, the 31st cut
    ]
    for i, (sent, want) in enumerate(cases):
        user = uniq(f"cut{i}")
        c = await Client.connect(n, room, token(user))
        st, _, js = await acall(n.port, "POST", f"/api/users/{user}/disconnect", {"reason": sent})
        eq((st, js.get("closed")), (200, 1), f"disconnect {i}")
        await c.wait_closed(3)
        eq((c.close_code, c.close_reason), (4003, want), f"case {i}: close reason")
        check(len(c.close_reason.encode()) <= 123, f"case {i}: {len(c.close_reason.encode())} bytes")


@test(timeout=30)
async def api_key_rate_limit_429_retry_after():
    n = api_node(env={"CHAT_API_RATE": 2, "CHAT_API_BURST": 3})
    room = uniq("rl")
    got = []
    for i in range(4):
        st, hd, js = await acall(n.port, "GET", f"/api/rooms/{room}")
        got.append((st, hd.get("retry-after")))
    eq([g[0] for g in got], [200, 200, 200, 429], "burst of 3, then 429")
    eq(got[3][1], "1", "Retry-After (seconds)")
    _, js = await expect_error(n.port, "GET", f"/api/rooms/{room}", 429, "rate_limited")
    # the other key has its own bucket
    st, _, _ = await acall(n.port, "GET", f"/api/rooms/{room}", key=KEY2)
    eq(st, 200, "another key")
    await asyncio.sleep(1.1)
    st, _, _ = await acall(n.port, "GET", f"/api/rooms/{room}")
    eq(st, 200, "after Retry-After")
    m = await metrics(n.port)
    check(metric_value(m, "chat_rate_limited_total", 'limit="api_key"') >= 2, "metric")


@test(timeout=30)
async def user_message_rate_counted_for_all_connections():
    n = api_node(env={"CHAT_USER_MSG_RATE": 1, "CHAT_USER_MSG_BURST": 3})
    room = uniq("ur")
    a = await Client.connect(n, room, token("carl"))
    b = await Client.connect(n, room, token("carl"))
    for i in range(6):
        await (a if i % 2 == 0 else b).send_msg(f"m{i}", id=f"m{i}")
    ans = lambda f: f["type"] in ("ack", "error") and str(f.get("id", "")).startswith("m")
    fa = await a.wait_count(ans, 3, 5)
    fb = await b.wait_count(ans, 3, 5)
    acks = [f for f in fa + fb if f["type"] == "ack"]
    errs = [f for f in fa + fb if f["type"] == "error"]
    eq(len(acks), 3, f"3 acks for the user's two connections together ({fa + fb})")
    eq({e["code"] for e in errs}, {"rate_limited"}, "the others are rate_limited")
    # another user is not affected; the API is not counted against users
    c = await Client.connect(n, room, token("dora"))
    await c.send_msg("hi", id="d1")
    await c.wait_for(lambda f: f["type"] == "ack", 3)
    await publish(n.port, room, msg("api-carl", user="carl"))
    m = await metrics(n.port)
    eq(metric_value(m, "chat_rate_limited_total", 'limit="user_messages"'), 3.0, "metric")


@test(timeout=40)
async def sample_bot_posts_through_the_api():
    n = api_node()
    room = uniq("bot")
    c = await Client.connect(n, room, token("alice"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["CHAT_API_KEY"] = KEY
    bot = os.path.join(REPO, "tools", "bot.py")
    r = await asyncio.to_thread(
        subprocess.run, ["/usr/bin/python3", bot, "--url", f"http://127.0.0.1:{n.port}", "--room", room,
                         "--user", "buildbot", "--name", "Build bot", "--count", "3", "--id-prefix", "b",
                         "--meta", '{"build":42}', "build", "done"],
        env=env, capture_output=True, text=True, timeout=20)
    eq(r.returncode, 0, f"bot exit ({r.stderr})")
    eq(r.stdout.split(), ["1", "b-0", "2", "b-1", "3", "b-2"], "bot output")
    got = await c.wait_count(is_msg(room), 3, 5)
    eq([(f["user"], f["name"], f["body"], f["meta"]) for f in got], [("buildbot", "Build bot", "build done",
                                                                      {"build": 42})] * 3, "frames")
    # the same ids of the same user again: duplicates, nothing new broadcast (ids are per user)
    r = await asyncio.to_thread(
        subprocess.run, ["/usr/bin/python3", bot, "--url", f"http://127.0.0.1:{n.port}", "--room", room,
                         "--user", "buildbot", "--count", "2", "--id-prefix", "b", "again"],
        env=env, capture_output=True, text=True, timeout=20)
    eq(r.stdout.split(), ["1", "b-0", "duplicate", "2", "b-1", "duplicate"], "resent ids")
    # the key on the command line is refused (it would show in ps)
    env.pop("CHAT_API_KEY")
    r = await asyncio.to_thread(subprocess.run, ["/usr/bin/python3", bot, "--room", room, "x"], env=env,
                                capture_output=True, text=True, timeout=20)
    eq(r.returncode, 2, "no key: usage error")
    await asyncio.sleep(0.3)
    eq(len(c.messages(room)), 3, "one frame per id")


# ---------------------------------------------------------------- two nodes

def two_nodes(db=False, env=None):
    e = dict(env or {})
    a = api_node(redis=True, db=db, env=e, name="A-" + uniq(""))
    b = api_node(redis=True, db=db, env=e, name="B-" + uniq(""))
    return a, b


@test(timeout=40, needs=("redis", "pg"))
async def idempotent_publish_across_nodes():
    a, b = two_nodes(db=True)
    room = uniq("idem")
    ca = await Client.connect(a, room, token("u1"))
    cb = await Client.connect(b, room, token("u2"))
    js1 = await publish(a.port, room, msg("same-1", "once", meta={"k": 1}))
    js2 = await publish(b.port, room, msg("same-1", "once", meta={"k": 1}))
    eq((js1["seq"], js1["duplicate"]), (1, False), "first on A")
    eq((js2["seq"], js2["duplicate"]), (1, True), "again on B: the first seq")
    # at once on both nodes: one seq
    r = await asyncio.gather(publish(a.port, room, msg("same-2", "race")), publish(b.port, room, msg("same-2", "race")))
    eq(sorted(x["duplicate"] for x in r), [False, True], "one of the racing two is the duplicate")
    eq(r[0]["seq"], r[1]["seq"], "same seq")
    for c in (ca, cb):
        await c.wait_count(is_msg(room), 2, 5)
    await asyncio.sleep(0.3)
    for c in (ca, cb):
        eq([(f["seq"], f["id"]) for f in c.messages(room)], [(1, "same-1"), (2, "same-2")], f"{c.label} frames")
    eq(harness.RUN.pg.psql("chatd", f"SELECT count(*) FROM messages WHERE room='{room}'").strip(), "2", "rows")


@test(timeout=60, needs=("redis", "pg"))
async def concurrent_moderator_deletes_answer_like_sequential_ones():
    """DELETEs of one seq without an id in the body, 10 at once on two
    nodes: exactly one deletes it (200, duplicate false), every other one
    answers what it answers after it (404 not_found), never a 200
    "duplicate" of a made-up id; one delete event. The same moderator (one
    default id, api-delete-<seq>) and ten moderators (ten ids)."""
    a, b = two_nodes(db=True)
    room = uniq("mdel")
    c = await Client.connect(a, room, token("watcher"))
    for rnd, users in enumerate((None, [f"mod-{i}" for i in range(10)])):
        for k in range(3):
            js = await publish(a.port, room, msg(f"m-{rnd}-{k}", f"rude {rnd} {k}"))
            seq = js["seq"]
            path = f"/api/rooms/{room}/messages/{seq}"
            res = await asyncio.gather(*[
                acall((a, b)[i % 2].port, "DELETE", path,
                      body=None if users is None else {"user": users[i]})
                for i in range(10)])
            got = sorted((st, (js or {}).get("duplicate"),
                          err_code(js) if st != 200 else None) for st, _, js in res)
            eq(got, [(200, False, None)] + [(404, None, "not_found")] * 9,
               f"round {rnd} seq {seq}: one delete, nine not_found ({[r[2] for r in res]})")
            await c.wait_for(lambda f, seq=seq: f["type"] == "message_update" and f.get("target") == seq,
                             5, what=f"the delete of {seq}")
    await c.roundtrip()
    await asyncio.sleep(0.3)
    dels = [f["target"] for f in c.frames if f["type"] == "message_update"]
    eq(len(dels), len(set(dels)), f"one delete event per message: {dels}")
    eq(len(dels), 6, "six delete events")


@test(timeout=40, needs=("redis", "pg"))
async def ids_are_per_user():
    """An id is its user's (protocol.md: the same id again is a duplicate
    of the sender's first seq): two users with id "1" are two messages, each
    stored; the same user's id again is the duplicate; a WebSocket client's
    id is not the API's other user's; an id is 1-64 characters."""
    a, b = two_nodes(db=True)
    room = uniq("apiids")
    w = await Client.connect(b, room, token("watch"))
    al = await Client.connect(a, room, token("alice"))
    ack = await al.reply({"type": "message", "room": room, "body": "ws 1", "id": "1"},
                         lambda f: f["type"] in ("ack", "error"), 8)
    eq((ack["type"], ack.get("seq")), ("ack", 1), "alice's WebSocket id 1")
    j1 = await publish(a.port, room, msg("1", "bot 1", user="bot"))
    j2 = await publish(b.port, room, msg("1", "ci 1", user="ci"))
    eq([(j1["seq"], j1["duplicate"]), (j2["seq"], j2["duplicate"])], [(2, False), (3, False)],
       "two users' id 1: two messages")
    j3 = await publish(b.port, room, msg("1", "bot 1", user="bot"))
    eq((j3["seq"], j3["duplicate"]), (2, True), "bot's id 1 again: the duplicate of its first seq")
    long_id = "\u00e9" * 64
    j4 = await publish(a.port, room, msg(long_id, "long", user="bot"))
    eq((j4["seq"], j4["duplicate"]), (4, False), "a 64-character id")
    _, js = await expect_error(a.port, "POST", f"/api/rooms/{room}/messages", 400, "bad_request",
                               msg("\u00e9" * 65, "too long", user="bot"))
    check("1-64 characters" in js["error"]["message"], f"the reason names the limit: {js}")
    await w.wait_count(is_msg(room), 4, 8)
    await asyncio.sleep(0.3)
    eq([(f["seq"], f["id"], f["user"]) for f in w.messages(room)],
       [(1, "1", "alice"), (2, "1", "bot"), (3, "1", "ci"), (4, long_id, "bot")], "one frame each")
    rows = harness.RUN.pg.psql("chatd", f"SELECT seq, client_id, user_id FROM messages WHERE room='{room}' "
                                        f"ORDER BY seq").split()
    eq(rows, ["1|1|alice", "2|1|bot", "3|1|ci", f"4|{long_id}|bot"], "stored once each")


@test(timeout=40, needs=("redis",))
async def disconnect_reaches_the_other_node():
    a, b = two_nodes()
    room = uniq("dc")
    on_a = await Client.connect(a, room, token("zed"))
    on_b = [await Client.connect(b, room, token("zed")) for _ in range(2)]
    bystander = await Client.connect(b, room, token("amy"))
    t0 = time.time()
    st, _, js = await acall(a.port, "POST", "/api/users/zed/disconnect", {"reason": "kicked"})
    eq((st, js), (200, {"user": "zed", "closed": 3}), "closed on both nodes, counted")
    for c in [on_a] + on_b:
        await c.wait_closed(2)
        eq((c.close_code, c.close_reason), (4003, "kicked"), f"{c.label} close")
    check(time.time() - t0 < 1.5, "closed everywhere within a second")
    check(not bystander.closed, "bystander untouched")


@test(timeout=50, needs=("redis",))
async def ban_survives_reconnect_to_another_node_and_expires():
    a, b = two_nodes()
    room = uniq("bn")
    victim = await Client.connect(b, room, token("mal"))
    st, _, js = await acall(a.port, "PUT", "/api/users/mal/ban", {"seconds": 3, "reason": "abuse"})
    eq((st, js["closed"]), (200, 1), "ban on A closes the connection on B")
    await victim.wait_closed(2)
    eq((victim.close_code, victim.close_reason), (4003, "abuse"), "close on B")
    for n in (a, b):
        st, body = await aupgrade_status(n.port, ws_path(room, token("mal")))
        eq(st, 403, f"reconnect to {n.name} refused")
    # a node that starts after the ban (or restarts) still enforces it
    c = api_node(redis=True, name="C-" + uniq(""))
    st, _ = await aupgrade_status(c.port, ws_path(room, token("mal")))
    eq(st, 403, "a node started after the ban enforces it")
    # a per-room ban on B, a join on A answers banned
    st, _, _ = await acall(b.port, "PUT", "/api/users/kim/ban", {"seconds": 30, "room": room})
    eq(st, 200, "room ban")
    k = await Client.connect(a, uniq("other"), token("kim"))
    js = await k.join(room)
    eq((js["type"], js.get("code")), ("error", "banned"), "join on A answers banned")
    st, _, _ = await acall(a.port, "DELETE", f"/api/users/kim/ban?room={room}")
    eq(st, 200, "lift on A")
    js = await k.join(room)
    eq(js["type"], "presence_state", "joined after the lift (on B's ban, lifted through A)")
    await asyncio.sleep(3.2)
    for n in (a, b, c):
        st, _ = await aupgrade_status(n.port, ws_path(room, token("mal")))
        eq(st, 101, f"after expiry on {n.name}")


@test(timeout=40, needs=("redis", "pg"))
async def ban_keeps_the_user_out_of_history_and_presence():
    """A user banned from a room reads neither its history nor its presence
    over HTTP (403 "banned: <reason>", as the upgrade), on every node, until
    the ban is lifted; other rooms and other users are untouched; an
    every-room ban covers every room. Before: 200 with the room's messages
    and members (the ban only gated the upgrade and joins)."""
    a, b = two_nodes(db=True)
    room, other = uniq("bh"), uniq("bh2")
    al = await Client.connect(a, room, token("alice"))
    await harness.send_acked(al, "before the ban", "bh-1")
    eve = token("eve")

    async def reads(n, tok, r):
        st1, js, _ = await ahttp_json(n.port, f"/rooms/{r}/messages", tok)
        st2, js2, _ = await ahttp_json(n.port, f"/rooms/{r}/presence", tok)
        return st1, js, st2, js2
    st, js, st2, _ = await reads(b, eve, room)
    eq((st, len(js["messages"]), st2), (200, 1, 200), "eve reads the room before the ban")
    st, _, js = await acall(a.port, "PUT", "/api/users/eve/ban", {"seconds": 60, "room": room, "reason": "calm"})
    eq(st, 200, f"room ban ({js})")
    for n in (a, b):
        st, js, st2, js2 = await reads(n, eve, room)
        eq((st, st2), (403, 403), f"history and presence of the banned room on {n.name}")
        eq((js, js2), ({"error": "banned: calm"}, {"error": "banned: calm"}), "the 403 bodies")
    st, js, st2, _ = await reads(b, eve, other)
    eq((st, st2), (200, 200), "another room")
    st, js, st2, _ = await reads(b, token("bob"), room)
    eq((st, len(js["messages"]), st2), (200, 1, 200), "another user")
    st, _, js = await acall(b.port, "DELETE", f"/api/users/eve/ban?room={room}")
    eq((st, js.get("lifted")), (200, True), "lifted")
    st, js, st2, _ = await reads(a, eve, room)
    eq((st, st2), (200, 200), "after the lift")
    st, _, js = await acall(a.port, "PUT", "/api/users/zed/ban", {"seconds": 60})
    eq(st, 200, f"every-room ban ({js})")
    for r in (room, other):
        st, js, st2, _ = await reads(b, token("zed"), r)
        eq((st, js, st2), (403, {"error": "banned"}, 403), f"every-room ban reads {r}")


@test(timeout=30)
async def every_user_the_upgrade_takes_the_api_can_address():
    """A user id is one rule everywhere: a JWT sub with a control character
    (which PUT /ban and /disconnect cannot address: 400, or 404 for a
    newline libwebsockets does not route) is a 401 at
    the upgrade and on the HTTP routes, so no connected user is out of the
    moderators' reach (before: the upgrade took "a\x01b" and the API could
    neither disconnect nor ban it); spaces and non-ASCII text are ids both
    take."""
    n = api_node()
    room = uniq("uid")
    for sub in ("a\x01b", "a\nb", "tab\there", "del\x7f", "c1\x85"):
        st, body = await aupgrade_status(n.port, ws_path(room, token(sub)))
        eq(st, 401, f"upgrade with sub {sub!r} ({body!r})")
        check(b"control character" in body, f"the 401 says why: {body!r}")
        st, _, _ = await ahttp_json(n.port, f"/rooms/{room}/presence", token(sub))
        eq(st, 401, f"presence with sub {sub!r}")
        q = urllib.parse.quote(sub, safe="")
        st, _, js = await acall(n.port, "POST", f"/api/users/{q}/disconnect")
        check(st in (400, 404), f"the API cannot address {sub!r}: {st} {js}")
    for sub in ("a b", "\u00e9l\u00e8ve", " x "):
        c = await Client.connect(n, room, token(sub))
        q = urllib.parse.quote(sub, safe="")
        st, _, js = await acall(n.port, "POST", f"/api/users/{q}/disconnect", {"reason": "bye"})
        eq((st, js), (200, {"user": sub, "closed": 1}), f"disconnect of {sub!r}")
        await c.wait_closed(3)
        eq(c.close_code, 4003, f"{sub!r} closed")


@test(timeout=40, needs=("redis",))
async def room_info_across_nodes():
    a, b = two_nodes()
    room = uniq("ri")
    clients = [await Client.connect(a, room, token("u1")), await Client.connect(a, room, token("u2")),
               await Client.connect(b, room, token("u2")), await Client.connect(b, room, token("u3"))]
    for i in range(4):
        await publish((a if i % 2 else b).port, room, msg(f"i{i}"))
    await clients[0].wait_count(is_msg(room), 4, 5)
    for n in (a, b):
        st, _, js = await acall(n.port, "GET", f"/api/rooms/{room}")
        eq((st, js), (200, {"room": room, "seq": 4, "users": 3, "connections": 4}), f"room info on {n.name}")
    st, _, js = await acall(a.port, "GET", f"/api/rooms/{uniq('empty')}")
    eq((js["seq"], js["users"], js["connections"]), (0, 0, 0), "an unused room")


@test(timeout=40, needs=("redis",))
async def limits_hold_across_nodes():
    # one bucket per user and per key in Redis: a user on two nodes gets the
    # rate once; a key's requests count on every node
    a, b = two_nodes(env={"CHAT_USER_MSG_RATE": 1, "CHAT_USER_MSG_BURST": 3,
                          "CHAT_API_RATE": 1, "CHAT_API_BURST": 3})
    room = uniq("cl")
    ca = await Client.connect(a, room, token("carl"))
    cb = await Client.connect(b, room, token("carl"))
    for i in range(6):
        await (ca if i % 2 == 0 else cb).send_msg(f"m{i}", id=f"m{i}")
    ans = lambda f: f["type"] in ("ack", "error") and str(f.get("id", "")).startswith("m")
    got = await ca.wait_count(ans, 3, 5) + await cb.wait_count(ans, 3, 5)
    eq(sorted(f["type"] for f in got), ["ack"] * 3 + ["error"] * 3,
       f"3 acks for the user's connections on two nodes together ({got})")
    eq({f.get("code") for f in got if f["type"] == "error"}, {"rate_limited"}, "the others")
    sts = []
    for n in (a, a, b, b):
        st, hd, _ = await acall(n.port, "GET", f"/api/rooms/{room}")
        sts.append((st, hd.get("retry-after")))
    eq([s[0] for s in sts], [200, 200, 200, 429], "a key's burst counted on both nodes")
    check(sts[3][1] and int(sts[3][1]) >= 1, "Retry-After")
    st, _, _ = await acall(b.port, "GET", f"/api/rooms/{room}", key=KEY2)
    eq(st, 200, "another key has its own bucket")
    ma, mb = await metrics(a.port), await metrics(b.port)
    eq((metric_value(ma, "chat_rate_limited_total", 'limit="user_messages"') or 0) +
       (metric_value(mb, "chat_rate_limited_total", 'limit="user_messages"') or 0), 3.0, "user metric")
    eq(metric_value(mb, "chat_rate_limited_total", 'limit="api_key"'), 1.0, "key metric")


@test(timeout=90, needs=("redis", "pg"))
async def cluster_wide_actions_on_a_redis_cluster():
    # 3 nodes on a 3-master Redis Cluster (the cluster group's rig): the
    # control channel is a sharded channel, bans a hash and buckets keys on
    # their own slots; every action still reaches every node
    import cluster as crig   # the rig of the `cluster` group (started once per run)
    r = crig.setup()
    env = dict(API_ENV, CHAT_API_RATE=1, CHAT_API_BURST=4)
    a, b, c = crig.three_nodes(r, env=env)
    room = uniq("rc")
    users = [await Client.connect(n, room, token("vic")) for n in (a, b, c)]
    other = await Client.connect(c, room, token("ann"))
    st, _, js = await acall(b.port, "GET", f"/api/rooms/{room}")
    eq((st, js["users"], js["connections"]), (200, 2, 4), "room info across 3 nodes")
    js = await publish(a.port, room, msg("c1", "on a cluster", meta={"k": 1}))
    got = await other.wait_for(is_msg(room), 5)
    eq((got["seq"], got["meta"]), (js["seq"], {"k": 1}), "the API message on another node")
    st, _, js = await acall(c.port, "POST", "/api/users/vic/disconnect", {"reason": "cluster"})
    eq((st, js.get("closed")), (200, 3), "disconnect on all 3 nodes, counted")
    for u in users:
        await u.wait_closed(2)
        eq(u.close_code, 4003, f"{u.label} closed")
    st, _, js = await acall(a.port, "PUT", "/api/users/vic/ban", {"seconds": 30, "room": room})
    eq(st, 200, f"ban ({js})")
    for n in (a, b, c):
        st, _ = await aupgrade_status(n.port, ws_path(room, token("vic")))
        eq(st, 403, f"banned on {n.name}")
    d = crig.start_nodes([[r.masters()[1]]], env=env, names="D")[0]
    st, _ = await aupgrade_status(d.port, ws_path(room, token("vic")))
    eq(st, 403, "a node started later reads the ban")
    # KEY2's bucket (untouched so far): a burst of 4 spent on 4 nodes, then 429 on any
    sts = [(await acall(n.port, "GET", f"/api/rooms/{room}", key=KEY2))[0] for n in (a, b, c, d, a)]
    eq(sts, [200, 200, 200, 200, 429], "the key's bucket is one for the whole cluster")
    check(not other.closed, "another user untouched")


# ------------------------------------------------ connections per user, all nodes

CONNS_CLOSE = (1008, "too many connections for this user")


def conns_key(user):
    return f"chat:{{conns:{user}}}:n"


def redis_int(raw):
    check(raw.startswith(b":"), f"integer reply expected, got {raw!r}")
    return int(raw[1:].strip())


async def refused_after_upgrade(node, room, user, send=None):
    """A connection that the upgrade lets through (101) and the cluster-wide
    count refuses: rate_limited, then the close, and never a welcome."""
    c = await Client.connect(node, room, token(user), wait_welcome=False,
                             label=f"{user}@{node.name}-refused")
    if send:
        try:
            await c.send(send)
        except Exception:      # closed already: nothing was sent
            pass
    await c.wait_closed(5)
    eq((c.close_code, c.close_reason), CONNS_CLOSE, f"{c.label} close")
    types = [f["type"] for f in c.frames]
    check("welcome" not in types, f"{c.label}: a refused connection got {types}")
    eq([(f.get("code")) for f in c.frames if f["type"] == "error"], ["rate_limited"], f"{c.label} error")
    return c


@test(timeout=60, needs=("redis",))
async def connections_per_user_across_nodes():
    ttl = 1500
    a, b = two_nodes(env={"CHAT_MAX_CONNS_PER_USER": 2, "CHAT_USER_CONNS_TTL_MS": ttl})
    redis = harness.RUN.need_redis()
    room, user = uniq("cu"), uniq("ula")
    a1 = await Client.connect(a, room, token(user))
    a2 = await Client.connect(a, room, token(user))
    st, _ = await aupgrade_status(a.port, ws_path(room, token(user)))
    eq(st, 429, "3rd on A: the per-node gate, before the upgrade")
    watcher = await Client.connect(b, room, token(uniq("watch")))
    # the 3rd on B: its admission waits on Redis (paused), the message it
    # sends meanwhile is held, then dropped with the connection
    redis.command("CLIENT", "PAUSE", "600", "WRITE")
    await refused_after_upgrade(b, room, user, send={"type": "message", "body": "sneak", "id": "sneak"})
    await asyncio.sleep(0.5)
    check(not [f for f in watcher.messages(room) if f.get("body") == "sneak"],
          "a refused connection's message was published")
    eq(metric_value(await metrics(b.port), "chat_refused_total", 'reason="per_user_cluster"'), 1.0,
       "refusal counted on B")
    eq(redis_int(redis.command("HLEN", conns_key(user))), 1, f"only A counts the user in Redis {redis.command('HGETALL', conns_key(user))!r}")
    check(redis.command("HGET", conns_key(user), a.name).split(b"\r\n")[1].startswith(b"2 "),
          "A's count is 2")
    # one closes on A: a new one on B is admitted; a message sent before
    # the answer is held and published after the welcome
    await a1.close()
    await asyncio.sleep(0.3)
    redis.command("CLIENT", "PAUSE", "400", "WRITE")
    b1 = await Client.connect(b, room, token(user), wait_welcome=False)
    await b1.send_msg("held", id="held-1")
    ack = await b1.wait_for(lambda f: f["type"] == "ack", 5, what="ack of the held message")
    types = [f["type"] for f in b1.frames]
    check(types.index("welcome") < types.index("ack"), f"welcome first ({types})")
    got = await watcher.wait_for(lambda f: f["type"] == "message" and f.get("id") == "held-1", 5)
    eq(got["seq"], ack["seq"], "the held message published once")
    # A has 1 now: its own gate lets a 2nd through, the cluster count does not
    await refused_after_upgrade(a, room, user)
    # A dies with its connection counted: refused at once, admitted once
    # A's count expired (within the TTL after its last renewal)
    a.kill9()
    t0 = time.monotonic()
    await refused_after_upgrade(b, room, user)
    admitted = None
    while time.monotonic() - t0 < ttl / 1000 + 3:
        c = await Client.connect(b, room, token(user), wait_welcome=False)
        try:
            await c.wait_for(lambda f: f["type"] == "welcome", 3, what="welcome")
            admitted = time.monotonic() - t0
            break
        except TestFailure:
            eq(c.close_code, CONNS_CLOSE[0], "refused while A's count lives")
        await asyncio.sleep(0.2)
    check(admitted is not None, f"A's count did not expire within {ttl} ms + 3 s")
    check(admitted <= ttl / 1000 + 1.0, f"admitted {admitted:.2f}s after the kill (TTL {ttl} ms)")
    eq(redis_int(redis.command("HEXISTS", conns_key(user), a.name)), 0, "A's field gone")
    check(not watcher.closed, "another user untouched")


@test(timeout=60, needs=("redis",))
async def connections_per_user_right_after_a_reconnect_storm():
    a, b = two_nodes(env={"CHAT_MAX_CONNS_PER_USER": 3})
    redis = harness.RUN.need_redis()
    room, user = uniq("st"), uniq("storm")

    async def one(i):
        n = (a, b)[i % 2]
        try:
            c = await Client.connect(n, room, token(user), wait_welcome=False, label=f"s{i}")
        except Exception:      # 429 at the upgrade
            return "429"
        try:
            await c.wait_for(lambda f: f["type"] == "welcome", 5)
            r = "ok"
        except TestFailure:
            r = f"closed {c.close_code}"
        await asyncio.sleep(0.01 * (i % 5))
        if i % 3 == 0:
            c.ws.transport.abort()      # a TCP drop, no close frame
        await c.close()
        return r

    outcomes = []
    for rnd in range(8):
        outcomes += await asyncio.gather(*(one(rnd * 6 + i) for i in range(6)))
    check("ok" in outcomes, f"nothing admitted in the storm ({outcomes})")
    check(set(outcomes) <= {"ok", "429", "closed 1008"}, f"outcomes {set(outcomes)}")
    refused = 0
    for n in (a, b):
        refused += metric_value(await metrics(n.port), "chat_refused_total", 'reason="per_user_cluster"') or 0
    check(refused >= 1 and outcomes.count("closed 1008") == refused,
          f"the storm crossed the limit across nodes: {refused} refused, outcomes {outcomes}")
    end = time.monotonic() + 5
    while time.monotonic() < end and redis_int(redis.command("EXISTS", conns_key(user))):
        await asyncio.sleep(0.1)
    eq(redis_int(redis.command("EXISTS", conns_key(user))), 0, "no count left once every connection closed")
    keep = [await Client.connect(n, room, token(user)) for n in (a, b, b)]
    await refused_after_upgrade(a, room, user)
    for c in keep:
        await c.close()


@test(timeout=90, needs=("redis", "pg"))
async def connections_per_user_on_a_redis_cluster():
    import cluster as crig
    r = crig.setup()
    a, b, c = crig.three_nodes(r, env=dict(API_ENV, CHAT_MAX_CONNS_PER_USER=2))
    room = uniq("cc")
    for user in (uniq("cu1"), uniq("cu2"), uniq("cu3")):   # keys on different slots
        first = [await Client.connect(n, room, token(user)) for n in (a, b)]
        await refused_after_upgrade(c, room, user)
        await first[0].close()
        await asyncio.sleep(0.3)
        again = await Client.connect(c, room, token(user))
        for x in first[1:] + [again]:
            await x.close()
