"""core: one chatd node in single-node mode (no Redis, no Postgres).
HTTP before the upgrade (400/401/403), welcome, fan-out and order,
multiplexing, every error code a client can provoke, limits (queue, frame,
rooms), token expiry and refresh, Lua policy hooks and SIGHUP reload, log
redaction, SIGTERM drain, health/readiness/metrics."""
import asyncio
import json
import os
import signal
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import serialization

from harness import (RUN, Client, RawWS, TestFailure, aupgrade_status, ahttp, ahttp_json, check, eq,
                     start_node, token, token_claims, raw_jwt, claims, uniq, ws_path,
                     policy_dir, write_policy, metric_value, describe_seq_problem, test, send_acked,
                     SECRET, REPO)
import harness


def is_msg(room=None):
    return lambda f: f["type"] == "message" and (room is None or f.get("room") == room)


def one_line_reason(body, what):
    text = body.decode("utf-8", "replace").strip()
    check(text != "", f"{what}: empty 401 body (want a one-line reason)")
    check("\n" not in text, f"{what}: reason body is not one line: {text!r}")


# ------------------------------------------------------------ HTTP before upgrade
@test()
async def upgrade_bad_room_is_400():
    n = start_node()
    tok = token("alice")
    for room in ["bad!room", "a" * 65, "sp ace", "semi;colon", "caf\u00e9", "x+y", "a%b"]:
        st, _ = await aupgrade_status(n.port, ws_path(room, tok))
        eq(st, 400, f"upgrade status for room {room!r}")
    st, _ = await aupgrade_status(n.port, "/ws/?token=" + tok)
    eq(st, 400, "upgrade status for empty room name")
    # the edges of the allowed alphabet and length are accepted
    for room in ["a" * 64, "Az09_.-x", "1"]:
        c = await Client.connect(n, room, tok)
        eq(c.welcome().get("room"), room, "welcome.room")
        await c.close()


@test()
async def upgrade_bad_tokens_are_401():
    n = start_node()
    room = uniq()
    now = int(time.time())
    good = claims("alice", "Alice")
    good_tok = token_claims(good)
    h, p, s = good_tok.split(".")
    other = jwt.encode(good, "some-other-secret", algorithm="HS256")
    p2 = harness.b64u(json.dumps(claims("mallory")).encode())
    nosub = dict(good)
    del nosub["sub"]
    noexp = dict(good)
    del noexp["exp"]
    cases = {
        "missing token": ws_path(room),
        "empty token": f"/ws/{room}?token=",
        "malformed (not a jwt)": ws_path(room, "not-a-jwt"),
        "malformed (3 junk parts)": ws_path(room, "a.b.c"),
        "malformed (bad json)": ws_path(room, harness.b64u(b"{x") + "." + p + "." + s),
        "bad signature (other secret)": ws_path(room, other),
        "tampered payload": ws_path(room, f"{h}.{p2}.{s}"),
        "signature stripped": ws_path(room, f"{h}.{p}."),
        "expired": ws_path(room, token("alice", exp_in=-5)),
        "nbf in the future": ws_path(room, token("alice", nbf=now + 120)),
        "alg none": ws_path(room, raw_jwt({"alg": "none", "typ": "JWT"}, good)),
        "alg None": ws_path(room, raw_jwt({"alg": "None", "typ": "JWT"}, good)),
        "missing sub": ws_path(room, token_claims(nosub)),
        "missing exp": ws_path(room, token_claims(noexp)),
    }
    for what, path in cases.items():
        st, body = await aupgrade_status(n.port, path)
        eq(st, 401, f"upgrade status for {what}")
        one_line_reason(body, what)
    # control: the good token upgrades
    c = await Client.connect(n, room, good_tok)
    await c.close()


def _rs256(keys, c):
    return jwt.encode(c, keys.read(keys.rsa_priv), algorithm="RS256")


def _es256(keys, c):
    return jwt.encode(c, keys.read(keys.ec_priv), algorithm="ES256")


@test(timeout=60)
async def asymmetric_keys_and_algorithm_confusion():
    keys = RUN.key_files()
    room = uniq()
    c = claims("alice", "Alice")
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    hs_hdr = {"alg": "HS256", "typ": "JWT"}
    # RSA public key only
    n = start_node(secret=None, pubkey=keys.rsa_pub)
    cl = await Client.connect(n, room, _rs256(keys, c))
    eq(cl.welcome().get("user"), "alice", "welcome.user with RS256 token")
    await cl.close()
    bad = {
        "HS256 signed with the RSA public key (confusion)":
            raw_jwt(hs_hdr, c, keys.read(keys.rsa_pub)),
        "HS256 signed with the test secret (no secret configured)": token_claims(c),
        "ES256 on an RSA node": _es256(keys, c),
        "RS256 by another RSA key": jwt.encode(c, other_rsa, algorithm="RS256"),
        "alg none": raw_jwt({"alg": "none"}, c),
        "RS256 expired": _rs256(keys, claims("alice", exp_in=-5)),
    }
    for what, tok in bad.items():
        st, body = await aupgrade_status(n.port, ws_path(room, tok))
        eq(st, 401, f"RSA node, {what}")
        one_line_reason(body, what)
    # EC P-256 public key only
    n2 = start_node(secret=None, pubkey=keys.ec_pub)
    cl = await Client.connect(n2, room, _es256(keys, c))
    await cl.close()
    for what, tok in {"HS256 signed with the EC public key (confusion)":
                      raw_jwt(hs_hdr, c, keys.read(keys.ec_pub)),
                      "RS256 on an EC node": _rs256(keys, c)}.items():
        st, body = await aupgrade_status(n2.port, ws_path(room, tok))
        eq(st, 401, f"EC node, {what}")
    # both a secret and an RSA key: each algorithm with its own key only
    n3 = start_node(pubkey=keys.rsa_pub)
    for tok in (token_claims(c), _rs256(keys, c)):
        cl = await Client.connect(n3, room, tok)
        await cl.close()
    st, _ = await aupgrade_status(n3.port, ws_path(room, raw_jwt(hs_hdr, c,
                                                                   keys.read(keys.rsa_pub))))
    eq(st, 401, "secret+RSA node, HS256 signed with the RSA public key")


CONNECT_POLICY = """
local M = {}
function M.on_connect(ctx)
  if ctx.user == "banned" then return false, "forbidden", "banned user" end
  if ctx.claims and ctx.claims.role == "blocked" then return false, "forbidden", "blocked" end
  if ctx.room == "closed-room" then return false, "forbidden", "room closed" end
  return true
end
return M
"""


@test()
async def policy_on_connect_refusal_is_403():
    n = start_node(scripts=policy_dir(CONNECT_POLICY))
    room = uniq()
    for what, path in {
        "banned user": ws_path(room, token("banned")),
        "claims.role blocked": ws_path(room, token("bob", role="blocked")),
        "closed room": ws_path("closed-room", token("alice")),
    }.items():
        st, _ = await aupgrade_status(n.port, path)
        eq(st, 403, f"upgrade status for {what}")
    # a refused token is still a 401 first
    st, _ = await aupgrade_status(n.port, ws_path(room, token("banned", exp_in=-5)))
    eq(st, 401, "expired token of a banned user")
    c = await Client.connect(n, room, token("alice", role="member"))
    await c.close()


# ------------------------------------------------------------ welcome, fan-out
@test()
async def welcome_then_presence_state_and_seq():
    n = start_node(env={"CHAT_HEARTBEAT_MS": 4000, "CHAT_PRESENCE_TTL_MS": 12000})
    room = uniq()
    a = await Client.connect(n, room, token("alice", "Alice A"))
    await a.wait_for(lambda f: f["type"] == "presence_state", 5, what="presence_state")
    eq(a.frames[0]["type"], "welcome", "first frame type")
    w = a.frames[0]
    eq(w.get("user"), "alice", "welcome.user")
    eq(w.get("node"), n.name, "welcome.node (CHAT_NODE_ID)")
    eq(w.get("room"), room, "welcome.room")
    eq(w.get("heartbeat_ms"), 4000, "welcome.heartbeat_ms")
    eq(w.get("presence_ttl_ms"), 12000, "welcome.presence_ttl_ms")
    eq(w.get("seq"), 0, "welcome.seq of a fresh room")
    eq(a.frames[1]["type"], "presence_state", "second frame type")
    eq(a.frames[1].get("room"), room, "presence_state.room")
    check(isinstance(a.frames[1].get("users"), list), "presence_state.users is a list")
    a.start_heartbeat(1000)
    for i in range(3):
        await a.send_msg(f"m{i}", id=f"w{i}")
    await a.wait_count(lambda f: f["type"] == "ack", 3, what="acks")
    b = await Client.connect(n, room, token("bob"))
    ps = await b.wait_for(lambda f: f["type"] == "presence_state", 5, what="presence_state")
    eq(b.frames[0]["type"], "welcome", "first frame type (second client)")
    eq(b.frames[0].get("seq"), 3, "welcome.seq after 3 messages")
    users = {(u.get("user"), u.get("name")) for u in ps.get("users", [])}
    check(("alice", "Alice A") in users, f"presence_state lists alice: {ps}")
    # name defaults to sub
    await b.send_msg("hi", id="b1")
    m = await a.wait_for(lambda f: f["type"] == "message" and f.get("id") == "b1", 5)
    eq(m.get("name"), "bob", "message.name without a name claim")
    eq(m.get("user"), "bob", "message.user")


@test(timeout=60)
async def fanout_200_messages_identical_order_to_3_clients():
    n = start_node()
    room = uniq()
    cs = [await Client.connect(n, room, token(f"u{i}", f"User {i}")) for i in range(3)]
    t_start = time.time()
    per = [67, 67, 66]

    async def pub(i):
        for k in range(per[i]):
            await cs[i].send_msg(f"{i}:{k}", id=f"c{i}-{k}")
    await asyncio.gather(*(pub(i) for i in range(3)))
    for c in cs:
        await c.wait_count(is_msg(room), 200, timeout=20, what="messages")
    ref = None
    for c in cs:
        ms = c.messages(room)
        seqs = [m["seq"] for m in ms]
        check(seqs == list(range(1, 201)), f"{c.label}: seqs not 1..200: "
              f"{describe_seq_problem(seqs)} (first {seqs[:5]})")
        view = [(m["seq"], m.get("id"), m.get("user"), m.get("name"), m.get("body"), m.get("ts"))
                for m in ms]
        if ref is None:
            ref = view
        check(view == ref, f"{c.label} saw different message contents than {cs[0].label}")
    for m in cs[0].messages(room):
        for k in ("room", "seq", "id", "user", "name", "body", "ts"):
            check(k in m, f"message frame lacks {k}: {m}")
        check(isinstance(m["ts"], int) and abs(m["ts"] / 1000 - t_start) < 60,
              f"message.ts not ms since epoch: {m['ts']}")
        i = int(m["id"][1])
        eq(m["user"], f"u{i}", "message.user")
        eq(m["name"], f"User {i}", "message.name")
        eq(m["body"].split(":")[0], str(i), "body of id")
    # each sender's messages keep their send order, each gets one ack per message
    by_id = {m["id"]: m["seq"] for m in cs[0].messages(room)}
    for i, c in enumerate(cs):
        order = [by_id[f"c{i}-{k}"] for k in range(per[i])]
        check(order == sorted(order), f"sender u{i}: own messages reordered")
        acks = await c.wait_count(lambda f: f["type"] == "ack", per[i], 10, "acks")
        eq(len(acks), per[i], f"acks of u{i}")
        for a in acks:
            eq(a.get("room"), room, "ack.room")
            check(a.get("id") in by_id, f"ack for unknown id {a}")
            eq(a.get("seq"), by_id[a["id"]], f"ack.seq of {a['id']}")
            check(a["id"].startswith(f"c{i}-"), f"u{i} got another sender's ack {a}")


@test(timeout=40)
async def queue_rings_kept_across_bursts_none_when_idle():
    """core/outq.c: a queue longer than 2 frames moves to a malloc'd ring,
    kept across bursts (no malloc/free per burst) and given back once the
    queue stayed empty between two once-a-second trims. chat_outq_rings
    counts the queues holding one: > 0 while bursts keep coming, 0 within a
    few seconds once the connections are idle (the memory per connection of
    idle connections does not grow)."""
    n = start_node()
    room = uniq("ring")
    rs = [await Client.connect(n, room, token(f"ring{i}")) for i in range(4)]
    # the publisher's frames leave in one write: the node reads them at once
    # and every receiver's queue gets the burst before it is flushed
    pub = await asyncio.to_thread(RawWS, n.port, ws_path(room, token("ringpub")), 1 << 20)

    async def rings():
        st, _, text = await ahttp(n.port, "/metrics")
        return metric_value(text.decode(), "chat_outq_rings")

    seen, sent, k = 0.0, 0, 0
    end = time.monotonic() + 12
    while time.monotonic() < end and not seen:
        batch = [json.dumps({"type": "message", "body": f"b{k}-{i}", "id": f"rb{k}-{i}"}) for i in range(6)]
        await asyncio.to_thread(pub.send_texts, batch)
        sent += len(batch)
        k += 1
        await asyncio.sleep(0.4)          # 15 messages/s: under the policy's rate
        seen = await rings() or 0.0
    check(seen >= 1, f"no queue kept a ring while bursts came ({sent} messages sent)")
    for c in rs:
        await c.wait_count(is_msg(room), sent, 10, "the bursts")
    idle = None
    end = time.monotonic() + 6
    while time.monotonic() < end:
        idle = await rings()
        if idle == 0:
            break
        await asyncio.sleep(0.2)
    eq(idle, 0, "chat_outq_rings once every connection is idle")
    pub.close()


@test()
async def no_cross_room_leak():
    n = start_node()
    ra, rb = uniq("a"), uniq("b")
    a = await Client.connect(n, ra, token("a"))
    b = await Client.connect(n, rb, token("b"))
    c = await Client.connect(n, ra, token("c"))
    js = await c.join(rb)
    eq(js["type"], "presence_state", "join reply")
    for k in range(20):
        await a.send_msg(f"A{k}")
        await b.send_msg(f"B{k}")
    await c.wait_count(is_msg(), 40, 10, "messages in both rooms")
    await a.wait_count(is_msg(ra), 20, 10)
    await b.wait_count(is_msg(rb), 20, 10)
    await a.send({"type": "typing"})
    await asyncio.sleep(0.3)
    await a.roundtrip()
    await b.roundtrip()
    check(all(m["room"] == ra for m in a.messages()), "room A client got a room B message")
    check(all(m["room"] == rb for m in b.messages()), "room B client got a room A message")
    check(not any(f["type"] == "typing" for f in b.frames), "typing of room A leaked to room B")
    eq(c.seqs(ra), list(range(1, 21)), "room A seqs on the multiplexed client")
    eq(c.seqs(rb), list(range(1, 21)), "room B seqs on the multiplexed client")
    check(all(m["body"].startswith("A") for m in c.messages(ra)), "room A bodies")
    check(all(m["body"].startswith("B") for m in c.messages(rb)), "room B bodies")


@test()
async def multiplexed_join_leave_and_join_since():
    n = start_node()
    ra, rb = uniq("a"), uniq("b")
    c = await Client.connect(n, ra, token("carol"))
    d = await Client.connect(n, rb, token("dave"))
    js = await c.join(rb)
    eq(js.get("type"), "presence_state", f"join reply {js}")
    eq(js.get("room"), rb, "presence_state.room for the joined room")
    check("dave" in [u.get("user") for u in js.get("users", [])],
          f"presence_state of joined room lists dave: {js}")
    await d.send_msg("from d", id="d1")
    m = await c.wait_for(lambda f: f["type"] == "message" and f.get("id") == "d1", 5)
    eq(m["room"], rb, "message.room")
    await c.send_msg("to b", id="c1", room=rb)
    m = await d.wait_for(lambda f: f["type"] == "message" and f.get("id") == "c1", 5)
    eq((m["room"], m["user"]), (rb, "carol"), "message sent with explicit room")
    await c.send_msg("to a", id="c2")
    a = await c.wait_for(lambda f: f["type"] == "ack" and f.get("id") == "c2", 5)
    eq(a["room"], ra, "a message without room goes to the URL room")
    check(not any(f.get("id") == "c2" for f in d.messages()), "room A message reached room B")
    mk = c.mark()
    await c.send({"type": "leave", "room": rb})
    await c.roundtrip()
    await d.send_msg("after leave", id="d2")
    await d.wait_for(lambda f: f.get("id") == "d2" and f["type"] == "ack", 5)
    await asyncio.sleep(0.3)
    check(not any(f.get("id") == "d2" for f in c.frames[mk:]),
          "message of a left room still delivered")
    e = await c.error_for({"type": "message", "room": rb, "body": "x", "id": "c3"})
    eq((e.get("code"), e.get("id")), ("not_member", "c3"), "message to a left room")
    # join with since: replay of seq > since then live
    mk = c.mark()
    js = await c.join(rb, since=1)
    eq(js.get("type"), "presence_state", f"join with since reply {js}")
    await c.wait_count(lambda f: f["type"] == "message" and f.get("room") == rb, 2, 5,
                       "replayed messages", start=mk)
    await d.send_msg("live", id="d3")
    await c.wait_for(lambda f: f.get("id") == "d3" and f["type"] == "message", 5, start=mk)
    await asyncio.sleep(0.2)
    got = [f["seq"] for f in c.frames[mk:] if f["type"] == "message" and f.get("room") == rb]
    eq(got, [2, 3, 4], "seqs after join since=1 (replay 2,3 then live 4)")
    ps_idx = next(i for i, f in enumerate(c.frames[mk:]) if f["type"] == "presence_state")
    first_msg = next(i for i, f in enumerate(c.frames[mk:]) if f["type"] == "message")
    check(ps_idx < first_msg, "presence_state must come before the replay on join")


@test()
async def unknown_fields_with_integers_beyond_64_bits_are_ignored():
    """protocol.md: unknown fields are ignored; a client's own field holding
    an integer beyond 64 bits (a uint64 id of another system, a counter)
    too: the frame is taken (it was refused bad_request "integer out of
    range" with no id, the message lost). The protocol's integers are
    judged as before: one out of range is bad_request with the frame's id."""
    n = start_node()
    room, other = uniq(), uniq("o")
    c = await Client.connect(n, room, token("alice"))
    w = await Client.connect(n, room, token("watcher"))
    await c.reply('{"type":"heartbeat","n":18446744073709551616}',
                  lambda f: f["type"] == "heartbeat_ack", 5, "heartbeat_ack with a 2^64 field")
    mk = c.mark()
    await c.send('{"type":"message","body":"hi","id":"b1","trace":123456789012345678901234567890,'
                 '"ids":[-99999999999999999999, 1e300]}')
    a = await c.wait_for(lambda f: f["type"] in ("ack", "error") and f.get("id") == "b1", 5, start=mk,
                         what="answer to a message with big extra integers")
    eq((a["type"], a.get("seq")), ("ack", 1), f"the message is taken: {a}")
    m = await w.wait_for(is_msg(room), 5, what="the broadcast")
    eq((m.get("seq"), m.get("body")), (1, "hi"), "broadcast as sent")
    await c.send_msg("two", id="b2")
    await c.wait_for(lambda f: f["type"] == "ack" and f.get("id") == "b2", 5)
    j = await w.reply('{"type":"join","room":"%s","since":0,"x":99999999999999999999}' % other,
                      lambda f: f.get("room") == other and f["type"] in ("presence_state", "error"), 5,
                      "join with a big extra field")
    eq(j["type"], "presence_state", f"join taken: {j}")
    e = await c.error_for('{"type":"delete","room":"%s","id":"d9","target":99999999999999999999}' % room)
    eq((e.get("code"), e.get("id")), ("bad_request", "d9"), f"a target beyond 64 bits: {e}")
    check("out of range" in e.get("message", ""), f"the error says why: {e}")
    await c.roundtrip()
    check(not c.closed, "connection open")


@test()
async def bad_request_variants_keep_connection_open():
    n = start_node()
    room = uniq()
    c = await Client.connect(n, room, token("alice"))
    w = await Client.connect(n, room, token("watcher"))
    cases = [
        "not json", "{", "[1,2]", "42", '"str"', "null", "{}", '{"type":5}', '{"type":null}',
        '{"type":"nope"}', '{"type":"MESSAGE","body":"x"}', '{"type":"message"}',
        '{"type":"message","body":5}', '{"type":"message","body":null}',
        '{"type":"message","body":"x","id":"' + "a" * 65 + '"}',
        '{"type":"message","body":"x","room":"bad room!"}',
        '{"type":"message","body":"x","room":5}',
        '{"type":"join"}', '{"type":"join","room":"bad room!"}',
        '{"type":"join","room":"' + "r" * 65 + '"}',
        '{"type":"join","room":"okroom","since":-1}', '{"type":"join","room":"okroom","since":"x"}',
        '{"type":"join","room":"okroom","since":1.5}',
        '{"type":"leave"}', '{"type":"refresh"}', '{"type":"refresh","token":5}',
        '{"type":"typing","room":"bad room!"}',
    ]
    for raw in cases:
        e = await c.reply(raw, lambda f: f["type"] in ("error", "presence_state", "message",
                                                       "ack", "heartbeat_ack"),
                          5, what=f"error for {raw[:60]}")
        eq(e.get("type"), "error", f"reply type for {raw[:60]}")
        eq(e.get("code"), "bad_request", f"error.code for {raw[:60]}")
        check(isinstance(e.get("message"), str) and e["message"],
              f"error.message for {raw[:60]}: {e}")
        await c.roundtrip()
    e = await c.error_for({"type": "message", "id": "m-1"})
    eq((e.get("code"), e.get("id")), ("bad_request", "m-1"), "error echoes the client id")
    e = await c.error_for({"type": "message", "body": "x", "id": "i" * 65})
    eq(e.get("code"), "bad_request", "65-char id")
    # unknown fields are ignored
    await c.reply('{"type":"heartbeat","extra":{"a":[1]}}',
                  lambda f: f["type"] == "heartbeat_ack", 5, "ack of heartbeat with extras")
    await c.send('{"type":"message","body":"ok","id":"ok1","whatever":true}')
    a = await c.wait_for(lambda f: f["type"] == "ack", 5, what="ack with extra fields")
    eq(a.get("seq"), 1, "first stored seq after bad requests (nothing else stored)")
    await w.wait_for(is_msg(room), 5)
    await c.send_msg("ok", id="i" * 64)
    a = await c.wait_for(lambda f: f["type"] in ("ack", "error") and f.get("id") == "i" * 64, 5,
                         what="answer to a 64-char id")
    eq(a["type"], "ack", "a 64-char id is accepted")
    await asyncio.sleep(0.2)
    eq(len(w.messages()), 2, "messages broadcast after bad requests")
    check(not c.closed, "connection closed by bad requests")


@test()
async def not_member_errors():
    n = start_node()
    room, other = uniq(), uniq("o")
    c = await Client.connect(n, room, token("alice"))
    # every not_member names the room it is about, as a join's and a leave's errors do
    # (before, only leave did: a client with several rooms could not tell which one a
    # typing or an id-less message was refused for)
    e = await c.error_for({"type": "message", "room": other, "body": "x", "id": "nm1"})
    eq((e.get("code"), e.get("id"), e.get("room")), ("not_member", "nm1", other),
       "message to a room not joined")
    e = await c.error_for({"type": "message", "room": other, "body": "x"})
    eq((e.get("code"), e.get("room")), ("not_member", other), "message without id to a room not joined")
    e = await c.error_for({"type": "typing", "room": other})
    eq((e.get("code"), e.get("room")), ("not_member", other), "typing in a room not joined")
    e = await c.error_for({"type": "edit", "room": other, "target": 1, "body": "y", "id": "nm2"})
    eq((e.get("code"), e.get("id"), e.get("room")), ("not_member", "nm2", other), "edit in a room not joined")
    e = await c.error_for({"type": "leave", "room": other})
    eq((e.get("code"), e.get("room")), ("not_member", other), "leave of a room not joined")
    await c.roundtrip()


@test()
async def too_many_rooms_default_32_and_policy_config():
    n = start_node()
    c = await Client.connect(n, uniq("base"), token("alice"))
    rooms = [uniq(f"j{i}") for i in range(32)]
    for i in range(31):
        r = await c.join(rooms[i])
        eq(r.get("type"), "presence_state", f"join #{i+1} (room {i+2} of the connection)")
    r = await c.join(rooms[31])
    eq((r.get("type"), r.get("code")), ("error", "too_many_rooms"),
       "join of a 33rd room (default max_rooms_per_conn 32)")
    await c.send({"type": "leave", "room": rooms[0]})
    await c.roundtrip()
    r = await c.join(rooms[31])
    eq(r.get("type"), "presence_state", "join after leaving one")
    pol = "local M = {}\nM.config = { max_rooms_per_conn = 3 }\nreturn M\n"
    n2 = start_node(scripts=policy_dir(pol))
    c2 = await Client.connect(n2, uniq("base"), token("alice"))
    for i in range(2):
        r = await c2.join(uniq(f"k{i}"))
        eq(r.get("type"), "presence_state", f"join #{i+1} with max_rooms_per_conn=3")
    r = await c2.join(uniq("k3"))
    eq((r.get("type"), r.get("code")), ("error", "too_many_rooms"), "4th room with max 3")


@test()
async def heartbeat_gets_heartbeat_ack():
    n = start_node()
    c = await Client.connect(n, uniq(), token("alice"))
    mk = c.mark()
    for _ in range(5):
        await c.send({"type": "heartbeat"})
    await c.wait_count(lambda f: f["type"] == "heartbeat_ack", 5, 5, start=mk)
    await asyncio.sleep(0.3)
    eq(sum(1 for f in c.frames[mk:] if f["type"] == "heartbeat_ack"), 5, "heartbeat_acks")


def _kernel_send_buffer_max():
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


@test(timeout=90)
async def slow_consumer_closed_1008_others_unaffected():
    """Queue bytes limit reached first (2 frames of 40 kB > 64 KiB)."""
    await _slow_consumer({"CHAT_MAX_QUEUE": 16, "CHAT_MAX_QUEUE_BYTES": 65536})


@test(timeout=90)
async def slow_consumer_frame_limit_closed_1008():
    """Queue frames limit reached first (16 x 40 kB < 1 MiB default bytes)."""
    await _slow_consumer({"CHAT_MAX_QUEUE": 16})


async def _slow_consumer(env):
    env = dict(env, CHAT_MAX_FRAME=1 << 20)
    n = start_node(env=env)
    room = uniq()
    f1 = await Client.connect(n, room, token("fast1"))
    f2 = await Client.connect(n, room, token("fast2"))
    slow = await asyncio.to_thread(RawWS, n.port, ws_path(room, token("slow")), 4096)
    await asyncio.sleep(0.3)
    # more than the kernel can absorb for the non-reading socket (the server
    # side send buffer may autotune up to tcp_wmem max), so the queue must fill
    body = "x" * 40000
    total = (_kernel_send_buffer_max() * 3 // 2 + (1 << 20)) // len(body) + 1
    t0 = time.monotonic()
    for k in range(total):
        await f1.send_msg(f"{k}:{body}", id=f"s{k}")
        if k % 4 == 3:
            # paced by its acks: a sender that outruns its own reading by
            # more than the socket buffers is a slow consumer too (a loaded
            # machine made the sender itself 1008 once)
            await f1.wait_for(lambda f, i=f"s{k}": f["type"] == "ack" and f.get("id") == i, 30,
                              what=f"ack of s{k}")
    for c in (f1, f2):
        await c.wait_count(is_msg(room), total, 30, "messages (fast reader)")
        seqs = c.seqs(room)
        check(seqs == list(range(1, total + 1)), f"{c.label}: {describe_seq_problem(seqs)}")
    elapsed = time.monotonic() - t0
    frames, code, eof = await asyncio.to_thread(slow.drain, 10)
    slow.close()
    texts = [json.loads(p) for op, p in frames if op == 1]
    got = [t["seq"] for t in texts if t.get("type") == "message"]
    check(len(got) < total, f"slow reader received all {total} messages "
          f"({total * len(body) >> 20} MiB): not closed")
    eq(code, 1008, f"close code of the slow reader (eof={eof}, {len(got)} messages)")
    check(got == list(range(1, len(got) + 1)), "slow reader's messages before close contiguous")
    check(elapsed < 20, f"fast readers took {elapsed:.1f}s: slowed by the slow one")
    await f1.roundtrip()
    await f2.roundtrip()
    st, _, text = await ahttp(n.port, "/metrics")
    v = metric_value(text.decode(), "chat_slow_consumer_closes_total")
    check(v == 1, f"chat_slow_consumer_closes_total = {v}")


@test()
async def oversize_frame_closes_1009():
    n = start_node(env={"CHAT_MAX_FRAME": 4096})
    room = uniq()
    c = await Client.connect(n, room, token("alice"))
    o = await Client.connect(n, room, token("other"))
    await c.send_msg("y" * 3000, id="fits")
    await c.wait_for(lambda f: f["type"] == "ack" and f.get("id") == "fits", 5)
    await c.send(json.dumps({"type": "message", "body": "z" * 5000}))
    eq(await c.wait_closed(5), 1009, "close code for a 5000-byte frame over CHAT_MAX_FRAME=4096")
    await o.roundtrip()
    await asyncio.sleep(0.2)
    check(not any(len(m.get("body", "")) == 5000 for m in o.messages()),
          "the oversize message was broadcast")
    # default limit 64 KiB
    n2 = start_node()
    c = await Client.connect(n2, room, token("alice"))
    await c.send_msg("y" * 60000, id="big-ok")
    await c.wait_for(lambda f: f["type"] == "ack" and f.get("id") == "big-ok", 5)
    await c.send_msg("y" * 70000, id="too-big")
    eq(await c.wait_closed(5), 1009, "close code for a 70000-byte frame (default 64 KiB)")


@test()
async def frame_limit_is_per_message_not_summed_with_the_last():
    """CHAT_MAX_FRAME bounds each message: a frame of exactly the limit
    passes, and a message is not counted with the one before it (two 40 KB
    messages in a row closed the connection 1009: the parser checked the
    last message's length plus the new one's)."""
    n = start_node()
    room = uniq()
    c = await Client.connect(n, room, token("alice"))

    def frame_of(size, mid):
        head = json.dumps({"type": "message", "id": mid, "body": ""})[:-2]   # ends in '"'
        return head + "y" * (size - len(head) - 2) + '"}'
    exact = frame_of(65536, "exact")
    eq(len(exact.encode()), 65536, "frame size")
    for mid, text in (("exact", exact), ("a40", frame_of(40000, "a40")),
                      ("b40", frame_of(40000, "b40")), ("c30", frame_of(30000, "c30"))):
        await c.send(text)
        f = await c.wait_for(lambda f: f["type"] in ("ack", "error") and f.get("id") == mid, 10,
                             what=f"ack of {mid}")
        eq(f["type"], "ack", f"answer to the {len(text)}-byte frame {mid}")
    await c.roundtrip()
    check(not c.closed, f"closed {c.close_code} after messages each under the limit")


# ------------------------------------------------------------ token lifetime
@test()
async def token_expiry_closes_4001():
    n = start_node()
    exp = int(time.time()) + 2
    c = await Client.connect(n, uniq(), token_claims({"sub": "alice", "exp": exp}))
    code = await c.wait_closed(6)
    closed_at = time.time()
    eq(code, 4001, "close code at token exp")
    check(closed_at >= exp - 0.2, f"closed {exp - closed_at:.2f}s before exp")
    check(closed_at <= exp + 2.5, f"closed {closed_at - exp:.2f}s after exp")


@test()
async def refresh_extends_the_connection():
    n = start_node()
    exp1 = int(time.time()) + 2
    c = await Client.connect(n, uniq(), token_claims({"sub": "alice", "exp": exp1}))
    exp2 = exp1 + 3
    await c.send({"type": "refresh", "token": token_claims({"sub": "alice", "exp": exp2})})
    await c.roundtrip()
    check(not c.errors(), f"refresh answered with an error: {c.errors()}")
    await asyncio.sleep(max(0, exp1 + 1.0 - time.time()))
    await c.roundtrip()
    check(not c.closed, "closed at the old exp despite a refresh")
    code = await c.wait_closed(exp2 + 3 - time.time())
    eq(code, 4001, "close code at the refreshed exp")
    check(time.time() >= exp2 - 0.2, "closed before the refreshed exp")


@test()
async def bad_refresh_is_unauthorized_and_keeps_old_exp():
    n = start_node()
    exp = int(time.time()) + 4
    c = await Client.connect(n, uniq(), token_claims({"sub": "alice", "exp": exp}))
    bad = {
        "bad signature": jwt.encode({"sub": "alice", "exp": exp + 60}, "nope", algorithm="HS256"),
        "other sub": token_claims({"sub": "mallory", "exp": exp + 60}),
        "earlier exp": token_claims({"sub": "alice", "exp": exp - 1}),
        "expired": token_claims({"sub": "alice", "exp": int(time.time()) - 5}),
        "garbage": "garbage",
        "alg none": raw_jwt({"alg": "none"}, {"sub": "alice", "exp": exp + 60}),
    }
    for what, tok in bad.items():
        e = await c.error_for({"type": "refresh", "token": tok})
        eq(e.get("code"), "unauthorized", f"refresh with {what}")
        await c.roundtrip()
    code = await c.wait_closed(exp + 3 - time.time())
    eq(code, 4001, "close code at the original exp after refused refreshes")


# ------------------------------------------------------------ policy
POLICY = """
local M = {}
function M.on_message(ctx, msg)
  if msg.body:find("forbidden", 1, true) then return false, "rejected", "forbidden word" end
  if msg.body == "slowdown" then return false, "rate_limited", "too fast" end
  if msg.body == "shout" then return string.upper(msg.body) end
  if msg.body == "whoami" then
    return table.concat({ctx.user, ctx.name, ctx.room, ctx.node,
      tostring(ctx.claims and ctx.claims.role), type(ctx.now), tostring(msg.id)}, "|")
  end
  if msg.body == "boom" then error("policy exploded") end
  return true
end
function M.on_join(ctx)
  if ctx.room:sub(1, 6) == "secret" then return false, "forbidden", "no entry" end
end
return M
"""


@test()
async def policy_reject_replace_and_ctx():
    n = start_node(scripts=policy_dir(POLICY))
    room = uniq()
    a = await Client.connect(n, room, token("alice", "Alice", role="admin"))
    b = await Client.connect(n, room, token("bob"))
    e = await a.error_for({"type": "message", "body": "a forbidden thing", "id": "p1"})
    eq((e.get("code"), e.get("id")), ("rejected", "p1"), "policy rejection")
    e = await a.error_for({"type": "message", "body": "slowdown", "id": "p2"})
    eq((e.get("code"), e.get("id")), ("rate_limited", "p2"), "policy rate_limited")
    e = await a.error_for({"type": "message", "body": "boom", "id": "p3"})
    check(e.get("code") in ("script_error", "rejected"), f"erroring policy hook: {e}")
    eq(e.get("id"), "p3", "error.id for an erroring hook")
    await a.send_msg("shout", id="p4")
    await a.send_msg("whoami", id="p5")
    await a.send_msg("plain", id="p6")
    await b.wait_count(is_msg(room), 3, 5)
    await asyncio.sleep(0.2)
    ms = b.messages(room)
    eq([m["seq"] for m in ms], [1, 2, 3], "seqs (rejected messages take no seq)")
    eq(ms[0]["body"], "SHOUT", "replaced body")
    eq(ms[1]["body"], f"alice|Alice|{room}|{n.name}|admin|number|p5", "ctx seen by the policy")
    eq(ms[2]["body"], "plain", "accepted body")
    r = await a.join("secret-" + uniq())
    eq((r.get("type"), r.get("code")), ("error", "forbidden"), "on_join refusal")
    r = await a.join("public-" + uniq())
    eq(r.get("type"), "presence_state", "on_join accepted")


def _prefix_policy(tag):
    return ("local M = {}\nfunction M.on_message(ctx, msg) return '%s:' .. msg.body end\n"
            "return M\n" % tag)


async def _body_for(c, other, text, mid):
    await c.send_msg(text, id=mid)
    m = await other.wait_for(lambda f: f["type"] == "message" and f.get("id") == mid, 5)
    return m["body"]


@test()
async def sighup_reload_switches_policy_without_dropping():
    d = policy_dir(_prefix_policy("v1"))
    n = start_node(scripts=d)
    room = uniq()
    a = await Client.connect(n, room, token("alice"))
    b = await Client.connect(n, room, token("bob"))
    eq(await _body_for(a, b, "x", "h0"), "v1:x", "body under policy v1")
    write_policy(d, _prefix_policy("v2"))
    n.signal(signal.SIGHUP)
    end = time.time() + 5
    k = 1
    body = None
    while time.time() < end:
        body = await _body_for(a, b, "x", f"h{k}")
        k += 1
        if body == "v2:x":
            break
        await asyncio.sleep(0.1)
    eq(body, "v2:x", "body after SIGHUP with policy v2")
    check(not a.closed and not b.closed, "connections dropped by the reload")
    eq(sum(1 for f in a.frames if f["type"] == "welcome"), 1, "welcome frames after reload")
    st, _, text = await ahttp(n.port, "/metrics")
    v = metric_value(text.decode(), "chat_script_reloads_total", 'result="ok"')
    check(v is not None and v >= 1, f"chat_script_reloads_total{{result=\"ok\"}} = {v}")


@test()
async def broken_policy_on_sighup_keeps_the_old_one():
    d = policy_dir(_prefix_policy("v1"))
    n = start_node(scripts=d)
    room = uniq()
    a = await Client.connect(n, room, token("alice"))
    b = await Client.connect(n, room, token("bob"))
    eq(await _body_for(a, b, "x", "k0"), "v1:x", "body under policy v1")
    k = 1
    for broken in ("local M = {\nreturn M(((\n", "return 42\n",
                   "error('refuse to load')\n"):
        write_policy(d, broken)
        n.signal(signal.SIGHUP)
        await asyncio.sleep(0.8)
        eq(await _body_for(a, b, "x", f"k{k}"), "v1:x", f"body after a broken reload {broken!r}")
        k += 1
        check(n.alive(), "chatd died on a broken policy")
    check(not a.closed and not b.closed, "connections dropped by a broken reload")
    c = await Client.connect(n, room, token("carol"))
    eq(await _body_for(c, b, "y", "k-new"), "v1:y", "new connection after a broken reload")
    st, _, text = await ahttp(n.port, "/metrics")
    v = metric_value(text.decode(), "chat_script_reloads_total", 'result="error"')
    check(v is not None and v >= 3, f"chat_script_reloads_total{{result=\"error\"}} = {v}")
    write_policy(d, _prefix_policy("v3"))
    n.signal(signal.SIGHUP)
    await asyncio.sleep(0.8)
    eq(await _body_for(a, b, "x", "k-fixed"), "v3:x", "a good reload after broken ones")


# ------------------------------------------------------------ logs, signals, health
@test()
async def tokens_never_in_logs():
    n = start_node(env={"CHAT_LOG_LEVEL": "debug"})
    room = uniq()
    toks = {
        "ws": token("alice", "Alice"),
        "ws_since": token("bob"),
        "bad_sig": jwt.encode(claims("eve"), "wrong-secret", algorithm="HS256"),
        "expired": token("old", exp_in=-30),
        "hist_query": token("carol"),
        "hist_bearer": token("dan"),
        "refresh": token("alice", exp_in=900),
        "bad_refresh": jwt.encode(claims("alice", exp_in=999), "zzz", algorithm="HS256"),
    }
    a = await Client.connect(n, room, toks["ws"])
    b = await Client.connect(n, room, toks["ws_since"], since=0)
    await aupgrade_status(n.port, ws_path(room, toks["bad_sig"]))
    await aupgrade_status(n.port, ws_path(room, toks["expired"]))
    await ahttp(n.port, f"/rooms/{room}/messages?token={toks['hist_query']}")
    await ahttp(n.port, f"/rooms/{room}/presence?token={toks['hist_query']}")
    await ahttp(n.port, f"/rooms/{room}/messages",
                {"Authorization": "Bearer " + toks["hist_bearer"]})
    await a.send({"type": "refresh", "token": toks["refresh"]})
    await a.send({"type": "refresh", "token": toks["bad_refresh"]})
    await a.roundtrip()
    await b.close()
    await a.close()
    n.signal(signal.SIGTERM)
    n.wait_exit(10)
    log = n.log_text()
    check(len(log) > 0, "chatd wrote no log at debug level")
    for what, t in toks.items():
        sig = t.split(".")[2]
        check(t not in log, f"{what} token appears in the log")
        check(len(sig) < 16 or sig not in log, f"{what} token signature appears in the log")
        check(t.split(".")[1] not in log, f"{what} token payload appears in the log")


@test()
async def control_characters_in_claims_cannot_forge_log_records():
    # a sub or name with a line break must not start a record of its own:
    # every logged value is escaped (core/log.c), one record stays one line.
    # A sub with a control character is refused (401: the server API could
    # not address that user), so the accepted sub breaks lines with U+2028
    # (which splitlines() and many log viewers break on); the name, the id
    # and a refused token's sub carry control characters
    n = start_node(env={"CHAT_LOG_LEVEL": "debug"})
    room = uniq()
    forged = "2030-01-01T00:00:00.000Z error server: FORGED"
    sub = "mallory\u2028" + forged
    name = "M\r\n" + forged + "\x1b[2J\u2028" + forged
    c = await Client.connect(n, room, token(sub, name))
    eq(c.welcome().get("user"), sub, "welcome.user keeps the sub as given")
    await c.send_msg("hi", id="a\nb")
    await c.wait_for(lambda f: f["type"] == "message", 5, what="own message")
    # refused tokens whose claims carry the payload
    await aupgrade_status(n.port, ws_path(room, token(sub, exp_in=-30)))
    st, _ = await aupgrade_status(n.port, ws_path(room, token("mallory\n" + forged, name)))
    eq(st, 401, "a sub with a newline")
    await c.close()
    n.signal(signal.SIGTERM)
    await asyncio.to_thread(n.wait_exit, 10)
    log = n.log_text()
    check("mallory\\u20282030-01-01" in log, "the sub is in the debug log, escaped: "
          f"{[ln for ln in log.splitlines() if 'mallory' in ln][:3]}")
    # splitlines() also breaks on \r, \x1c-\x1e, \x85, \u2028 and \u2029
    lines = log.splitlines()
    bad = [ln for ln in lines if ln.startswith("2030-01-01") or
           ("FORGED" in ln and not ln.startswith("20") )]
    check(not bad, f"forged log records: {bad[:3]}")
    check("\x1b" not in log, "a raw escape character reached the log")



@test()
async def identity_of_max_length_round_trips_every_frame():
    # the identity's strings are kept sized to fit (one allocation per
    # connection, docs/cost.md section 9): a sub and a name of exactly 127
    # bytes in multi-byte UTF-8, and extra claims, come back whole in welcome,
    # presence_state, presence, message and typing frames, before and after a
    # refresh, next to a one-byte identity on the same room
    n = start_node()
    room = uniq()
    sub = "\u00e9" * 63 + "s"              # 127 bytes
    name = "\u540d" * 42 + "n"             # 127 bytes
    assert len(sub.encode()) == 127 and len(name.encode()) == 127
    exp = int(time.time()) + 60
    a = await Client.connect(n, room, token_claims({"sub": sub, "name": name, "exp": exp, "team": "z" * 200}))
    eq((a.welcome().get("user"), a.welcome().get("name")), (sub, name), "welcome user and name")
    b = await Client.connect(n, room, token("b"))
    eq((b.welcome().get("user"), b.welcome().get("name")), ("b", "b"), "a one-byte identity beside it")
    ps = await b.wait_for(lambda f: f["type"] == "presence_state", 5, what="presence_state")
    check((sub, name) in {(u.get("user"), u.get("name")) for u in ps.get("users", [])},
          f"presence_state lists the long identity: {str(ps)[:300]}")
    await a.send_msg("hello", id="m1")
    m = await b.wait_for(lambda f: f["type"] == "message" and f.get("id") == "m1", 5)
    eq((m.get("user"), m.get("name")), (sub, name), "message user and name")
    await a.send({"type": "refresh", "token": token_claims({"sub": sub, "name": name, "exp": exp + 60})})
    await a.roundtrip()
    check(not a.errors(), f"refresh answered with an error: {a.errors()}")
    await a.send_msg("again", id="m2")
    m = await b.wait_for(lambda f: f["type"] == "message" and f.get("id") == "m2", 5)
    eq((m.get("user"), m.get("name")), (sub, name), "message user and name after a refresh")
    await a.send({"type": "typing"})
    t = await b.wait_for(lambda f: f["type"] == "typing", 5, what="typing")
    eq((t.get("user"), t.get("name")), (sub, name), "typing user and name")
    await a.close()
    left = await b.wait_for(lambda f: f["type"] == "presence" and f.get("event") == "leave", 10,
                            what="presence leave")
    eq((left.get("user"), left.get("name")), (sub, name), "presence leave user and name")
    check(not a.bad_json and not b.bad_json, "every frame is whole JSON")
    await b.close()


@test()
async def claims_of_control_characters_fit_every_frame():
    # a signed name may be 127 control characters (only NUL is refused):
    # escaped they are 6 bytes per byte; a sub may not (401: the server API
    # could not address that user), its worst is 127 quotes or backslashes
    # (2 bytes per byte). Every frame that carries them (welcome,
    # presence_state, presence, typing, GET presence) must stay whole JSON
    # (fuzz_resp found presence_state budgeted 800 bytes a user)
    n = start_node()
    room = uniq()
    st, _ = await aupgrade_status(n.port, ws_path(room, token(chr(1) * 127, "x")))
    eq(st, 401, "a sub of control characters")
    subs = ['"' * 127, "\\" * 127]
    names = [chr(0x10 + k) * 127 for k in range(2)]
    cs = []
    for sub, name in zip(subs, names):
        cs.append(await Client.connect(n, room, token(sub, name)))
    eq(cs[0].welcome().get("user"), subs[0], "welcome.user of 127 quotes")
    eq(cs[0].welcome().get("name"), names[0], "welcome.name of 127 control characters")
    obs = await Client.connect(n, room, token("observer"))
    ps = await obs.wait_for(lambda f: f["type"] == "presence_state", 5, what="presence_state")
    eq(sorted(u.get("user") for u in ps.get("users", [])), sorted(subs + ["observer"]),
       "presence_state users")
    await cs[1].send({"type": "typing"})
    t = await obs.wait_for(lambda f: f["type"] == "typing", 5, what="typing")
    eq((t.get("user"), t.get("name")), (subs[1], names[1]), "typing frame's user and name")
    await cs[0].close()
    left = await obs.wait_for(lambda f: f["type"] == "presence" and f.get("event") == "leave",
                              10, what="presence leave")
    eq((left.get("user"), left.get("name")), (subs[0], names[0]), "presence frame's user and name")
    st, js, _ = await ahttp_json(n.port, f"/rooms/{room}/presence", token("reader"))
    eq(st, 200, "GET presence")
    check(isinstance(js, dict) and subs[1] in [u.get("user") for u in js.get("users", [])],
          f"GET presence lists the user: {str(js)[:200]}")
    for c in cs + [obs]:
        check(not c.bad_json, f"{c.label}: unparsable frames: {[r[:80] for r in c.bad_json][:2]}")
    await cs[1].close()
    await obs.close()


@test()
async def sigterm_drains_with_server_restart_and_1001():
    n = start_node()
    room = uniq()
    cs = [await Client.connect(n, room, token(f"u{i}")) for i in range(3)]
    await cs[0].join(uniq("x"))
    await cs[1].send_msg("before", id="t1")
    await cs[1].wait_for(lambda f: f["type"] == "ack", 5)
    n.signal(signal.SIGTERM)
    for c in cs:
        code = await c.wait_closed(10)
        e = [f for f in c.frames if f["type"] == "error"]
        check(any(f.get("code") == "server_restart" for f in e),
              f"{c.label}: no server_restart error before close: {c.brief(-3)}")
        last = [f for f in c.frames if not f["type"].startswith("_")][-1]
        eq((last.get("type"), last.get("code")), ("error", "server_restart"),
           f"{c.label}: last frame before close")
        eq(code, 1001, f"{c.label}: close code on SIGTERM")
    rc = await asyncio.to_thread(n.wait_exit, 10)
    eq(rc, 0, "chatd exit status after SIGTERM")


@test()
async def health_ready_and_metrics():
    n = start_node()
    st, _, _ = await ahttp(n.port, "/healthz")
    eq(st, 200, "/healthz")
    st, _, _ = await ahttp(n.port, "/readyz")
    eq(st, 200, "/readyz in single-node mode")
    room = uniq()
    cs = [await Client.connect(n, room, token(f"u{i}")) for i in range(3)]
    await cs[0].send_msg("m")
    await cs[0].wait_for(lambda f: f["type"] == "ack", 5)

    async def conns():
        st, hd, body = await ahttp(n.port, "/metrics")
        eq(st, 200, "/metrics status")
        check(hd.get("content-type", "").startswith("text/plain"),
              f"/metrics content-type {hd.get('content-type')}")
        text = body.decode()
        check("# TYPE chat_connections_open" in text, "no TYPE line for chat_connections_open")
        return metric_value(text, "chat_connections_open")
    v = await conns()
    eq(v, 3.0, "chat_connections_open with 3 clients")
    await cs[2].close()
    end = time.time() + 3
    while time.time() < end and v != 2.0:
        await asyncio.sleep(0.1)
        v = await conns()
    eq(v, 2.0, "chat_connections_open after one client left")
    # every series a node exposes is in docs/metrics.md (chat_frames_held_total was not)
    import re
    _, _, body = await ahttp(n.port, "/metrics")
    exposed = set(re.findall(r"^# TYPE (chat_\S+)", body.decode(), re.M))
    with open(os.path.join(REPO, "docs", "metrics.md")) as f:
        documented = set(re.findall(r"`(chat_[a-z0-9_]+)", f.read()))
    eq(sorted(exposed - documented), [], "series exposed by /metrics missing from docs/metrics.md")


@test()
async def root_serves_browser_client():
    # protocol.md: GET / is the browser client, wherever chatd is started
    # from: with no CHAT_WEB_DIR, a build tree's binary (build/chatd) finds
    # <tree>/web next to it, not only ./web of the working directory
    elsewhere = RUN.tmpdir("cwd")
    n = start_node(cwd=elsewhere, env={"CHAT_WEB_DIR": None})
    st, hd, body = await ahttp(n.port, "/")
    eq(st, 200, "GET / from another working directory")
    check("html" in hd.get("content-type", ""), f"GET / content-type {hd.get('content-type')}")
    with open(os.path.join(REPO, "web", "index.html"), "rb") as f:
        want = f.read()
    check(b"<title>chatd</title>" in want, "web/index.html is the client")
    eq(body, want, "GET / is web/index.html")


@test(timeout=20)
async def scripts_found_next_to_a_build_tree_binary():
    # no CHAT_SCRIPTS and no ./scripts: the policy of <tree>/scripts is loaded
    elsewhere = RUN.tmpdir("cwd")
    n = start_node(cwd=elsewhere, scripts=None, env={"CHAT_SCRIPTS": None, "CHAT_WEB_DIR": None})
    want = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(RUN.chatd)), "..", "scripts"))
    check(f"policy loaded from {want} " in n.log_text(), f"policy not loaded from {want}: {n.log_tail(8)}")
    c = await Client.connect(n, uniq(), token("alice"))
    check(c.welcome() is not None, "a client joins under the tree's policy")
    await c.close()


@test(timeout=60, needs=("redis", "pg"))
async def since_replay_bounded_by_the_queue_is_gap_too_large_not_slow_consumer():
    """A since= replay that does not fit the connection's queue (CHAT_MAX_QUEUE /
    CHAT_MAX_QUEUE_BYTES) answers gap_too_large and the client pages history;
    it closed a client that reads at once 1008 "slow consumer" before its
    first frame (contract review D2). A replay that fits is delivered."""
    env = {"CHAT_MAX_QUEUE": 16, "CHAT_MAX_QUEUE_BYTES": 65536}
    for kw in ({}, {"redis": True, "db": True}):
        n = start_node(env=env, **kw)
        room, other = uniq("rp"), uniq("rq")
        a = await Client.connect(n, room, token("alice"))
        await a.join(other)
        total = 60                       # 30 per room: 30 frames > 16, ~125 kB > 64 KiB
        for k in range(total):
            await a.send_msg(f"{k}:" + "x" * 4000, id=f"b{k}", room=room if k % 2 else other)
            if k % 8 == 7:               # paced by its acks (its own queue)
                await a.wait_for(lambda f, i=f"b{k}": f["type"] == "ack" and f.get("id") == i, 10,
                                 what=f"ack of b{k}")
        await a.wait_count(lambda f: f["type"] == "ack", total, 10, "acks")
        what = kw or "in-process"
        b = await Client.connect(n, room, token("bob"), since=0)
        g = await b.wait_for(lambda f: f["type"] == "error" and f.get("code") == "gap_too_large", 10,
                             what=f"gap_too_large of {room} ({what})")
        eq(g.get("room"), room, "room of the gap")
        check("queue" in g.get("message", ""), f"the gap says why: {g}")
        await b.join(other, since=0)
        await b.wait_for(lambda f: f["type"] == "error" and f.get("code") == "gap_too_large"
                         and f.get("room") == other, 10, what=f"gap_too_large of {other} (join since=0)")
        # a replay that fits is delivered as before: the last 5 of the room
        c = await Client.connect(n, room, token("carol"), since=25)
        await c.wait_count(lambda f: f["type"] == "message" and f.get("room") == room, 5, 10,
                           f"replay of 26..30 ({what})")
        eq(c.seqs(room), list(range(26, 31)), "replayed seqs that fit")
        eq(c.errors(), [], "no error with a replay that fits")
        await a.send_msg("after", id="after", room=room)
        for x in (b, c):
            m = await x.wait_for(lambda f: f["type"] == "message" and f.get("id") == "after", 5,
                                 what="the live message after the replay")
            eq(m["seq"], total // 2 + 1, "seq of the first live message")
            check(not x.closed, f"closed {x.close_code} {x.close_reason} ({what})")
        eq(b.messages(room), [m for m in b.messages(room) if m.get("id") == "after"],
           "nothing of the replay that did not fit")
        await c.close()
        await a.wait_for(lambda f: f["type"] == "ack" and f.get("id") == "after", 10, what="ack of after")
        if kw:   # with a database the client pages what did not fit
            st, js, _ = await harness.ahttp_json(n.port, f"/rooms/{room}/messages?limit=200", token("bob"))
            eq(st, 200, "history")
            eq([x["seq"] for x in js["messages"]], list(range(1, total // 2 + 2)), "history pages all")
        await b.close()
        await a.close()


@test(timeout=45)
async def connect_since_replays_before_live_without_gap_or_dup():
    n = start_node()
    room = uniq()
    p = await Client.connect(n, room, token("pub"))
    for i in range(10):
        await p.send_msg(f"m{i}", id=f"m{i}")
    await p.wait_count(lambda f: f["type"] == "ack", 10, 5)
    c = await Client.connect(n, room, token("late"), since=4)
    await c.wait_count(is_msg(room), 6, 5, "replay")
    types = [f["type"] for f in c.frames[:8]]
    eq(types, ["welcome", "presence_state"] + ["message"] * 6,
       "frame order on connect with since")
    eq(c.welcome().get("seq"), 10, "welcome.seq")
    eq(c.seqs(room), list(range(5, 11)), "replayed seqs")
    await p.send_msg("live", id="live")
    await c.wait_for(lambda f: f["type"] == "message" and f.get("id") == "live", 5)
    eq(c.seqs(room), list(range(5, 12)), "replay then live")
    # since at the head: nothing replayed, live continues
    d = await Client.connect(n, room, token("late2"), since=11)
    await p.send_msg("live2", id="live2")
    await d.wait_for(lambda f: f["type"] == "message" and f.get("id") == "live2", 5)
    eq(d.seqs(room), [12], "since = head")


@test(timeout=60)
async def since_while_publishing_no_gap_no_dup():
    n = start_node()
    await harness.since_race(n, [n])


@test()
async def flags_win_over_env():
    port = harness.free_port()
    n = harness.Node(env={"CHAT_NODE_ID": "from-env"},
                     args=["--node-id", "from-flag", "--listen", f"127.0.0.1:{port}"])
    env_port, n.port = n.port, port      # CHAT_LISTEN names env_port: the flag must win
    n.start()
    harness.release_port(env_port)
    c = await Client.connect(n, uniq(), token("alice"))
    eq(c.welcome().get("node"), "from-flag", "welcome.node with --node-id over CHAT_NODE_ID")


@test()
async def refuses_to_start_without_secret_or_key():
    n = harness.Node(secret=None)
    n.start(wait=False)
    rc = await asyncio.to_thread(n.wait_exit, 5)
    check(rc is not None, "chatd without CHAT_JWT_SECRET/CHAT_JWT_PUBLIC_KEY is still running")
    check(rc != 0, "chatd without a secret exited 0")


@test()
async def sigint_drains_like_sigterm():
    n = start_node()
    c = await Client.connect(n, uniq(), token("alice"))
    n.signal(signal.SIGINT)
    code = await c.wait_closed(10)
    check(c.errors("server_restart"), f"no server_restart before close: {c.brief(-3)}")
    eq(code, 1001, "close code on SIGINT")
    eq(await asyncio.to_thread(n.wait_exit, 10), 0, "exit status after SIGINT")


RUNAWAY_POLICY = """
local M = {config = {hook_budget_ms = 50, memory_limit_mb = 32}}
function M.on_message(ctx, msg)
  if msg.body == "spin" then while true do end end
  if msg.body == "bomb" then
    local t = {}
    while true do t[#t + 1] = string.rep("x", 1e6) .. #t end
  end
  if msg.body == "escape" then return os.execute("touch /tmp/chatd-escaped") and "escaped" or "no" end
  return nil
end
return M
"""


@test(timeout=60)
async def runaway_hook_and_memory_bomb_are_stopped_and_server_keeps_serving():
    n = start_node(scripts=policy_dir(RUNAWAY_POLICY))
    room = uniq()
    a = await Client.connect(n, room, token("alice"))
    b = await Client.connect(n, room, token("bob"))
    for body, mid in (("spin", "r1"), ("bomb", "r2"), ("escape", "r3")):
        e = await a.error_for({"type": "message", "body": body, "id": mid}, timeout=10)
        check(e.get("code") in ("script_error", "rejected"), f"{body}: refused, got {e}")
        eq(e.get("id"), mid, f"{body}: error answers the message")
    # the node, the policy and both connections keep working
    await a.send_msg("still here", id="r4")
    m = await b.wait_for(lambda f: f["type"] == "message" and f.get("id") == "r4", 5)
    eq(m["body"], "still here", "message after the runaway hooks")
    eq(m["seq"], 1, "refused messages took no seq")
    check(n.alive(), "chatd still running")


@test(timeout=60)
async def since_beyond_the_replay_limit_is_gap_too_large():
    n = start_node(env={"CHAT_REPLAY_MAX": "5"})
    room = uniq()
    p = await Client.connect(n, room, token("pub"))
    for i in range(10):
        await p.send_msg(f"m{i}", id=f"g{i}")
    await p.wait_count(lambda f: f["type"] == "ack", 10, 5)
    # 10 messages missed, the limit is 5: gap_too_large for that room, then live
    c = await Client.connect(n, room, token("late"), since=0)
    e = await c.wait_for(lambda f: f["type"] == "error", 5, what="gap_too_large")
    eq((e.get("code"), e.get("room")), ("gap_too_large", room), "gap_too_large names the room")
    eq(c.seqs(room), [], "nothing replayed past the limit")
    await p.send_msg("live", id="glive")
    await c.wait_for(lambda f: f["type"] == "message" and f.get("id") == "glive", 5)
    eq(c.seqs(room), [11], "live continues after gap_too_large")
    # 5 missed (exactly the limit): replayed
    d = await Client.connect(n, room, token("late2"), since=6)
    await d.wait_count(is_msg(room), 5, 5, "replay at the limit")
    eq(d.seqs(room), [7, 8, 9, 10, 11], "replay of exactly CHAT_REPLAY_MAX messages")
    check(not [f for f in d.frames if f["type"] == "error"], "no error at the limit")


@test()
async def refuses_to_start_with_bad_settings():
    # each bad setting: chatd exits non-zero at once, naming the setting
    for env, word in (({"CHAT_NODE_ID": 'bad"id'}, "CHAT_NODE_ID"),
                      ({"CHAT_MAX_QUEUE": "lots"}, "CHAT_MAX_QUEUE"),
                      # wrapped to a 1-frame queue (every client closed 1008)
                      ({"CHAT_MAX_QUEUE": "4294967296"}, "CHAT_MAX_QUEUE"),
                      ({"CHAT_REPLAY_MAX": "4294967297"}, "CHAT_REPLAY_MAX"),
                      ({"CHAT_LISTEN": "nowhere"}, "CHAT_LISTEN"),
                      ({"CHAT_JWT_PUBLIC_KEY": "/nonexistent.pem"}, "nonexistent")):
        n = harness.Node(env=env)
        n.start(wait=False)
        rc = await asyncio.to_thread(n.wait_exit, 5)
        check(rc is not None and rc != 0, f"chatd with {env} exited with {rc}")
        check(word in n.log_tail(5), f"{env}: the error names {word}: {n.log_tail(3)}")
    # every integer setting: its range in one message form, the same for a
    # value out of range and one that is not a number
    I = 2147483647
    for name, val, lo, hi in (("CHAT_MAX_QUEUE", "0", 1, I),
                              ("CHAT_MAX_QUEUE", "lots", 1, I),
                              ("CHAT_MAX_QUEUE_BYTES", "1023", 1024, 2**63 - 1),
                              ("CHAT_MAX_FRAME", "127", 128, 1 << 30),
                              ("CHAT_REPLAY_MAX", "-1", 0, I),
                              ("CHAT_USER_CONNS_TTL_MS", "599", 600, 3600000),
                              ("CHAT_USER_CONNS_TTL_MS", "3600001", 600, 3600000),
                              ("CHAT_IDEMPOTENCY_TTL_S", "604801", 1, 604800),
                              ("CHAT_HEARTBEAT_MS", "0", 1, I)):
        n = harness.Node(env={name: val})
        n.start(wait=False)
        rc = await asyncio.to_thread(n.wait_exit, 5)
        check(rc is not None and rc != 0, f"chatd with {name}={val} exited with {rc}")
        want = f"{name}: expected an integer from {lo} to {hi}, got '{val}'"
        check(want in n.log_tail(5), f"{name}={val}: {want!r} not in {n.log_tail(3)}")
    # CHAT_MAX_QUEUE_BYTES (a size_t) is the one setting beyond 2^31-1
    n = harness.Node(env={"CHAT_MAX_QUEUE_BYTES": "4294967296"}).start()
    room = uniq()
    a = await Client.connect(n, room, token("alice"))
    await a.send_msg("big queue", id="q1")
    await a.wait_for(lambda f: f["type"] == "ack", 5, what="ack with a 4 GiB queue bound")


@test(timeout=60)
async def timing_settings_checked_and_flags_win():
    # protocol.md "Running": CHAT_HEARTBEAT_MS / CHAT_PRESENCE_TTL_MS /
    # CHAT_TYPING_TTL_MS override the policy's timing defaults, every setting
    # has a flag that wins. The harness' policy (OPEN_POLICY) declares no
    # M.config: a bad value was ignored ("abc") or clamped to 1 ms ("0").
    for env in ({"CHAT_HEARTBEAT_MS": "abc"}, {"CHAT_HEARTBEAT_MS": "0"},
                {"CHAT_PRESENCE_TTL_MS": "-5"}, {"CHAT_TYPING_TTL_MS": "1.5"},
                {"CHAT_PRESENCE_TTL_MS": "99999999999"}):
        for scripts in (None, harness.PROJECT_SCRIPTS):
            n = harness.Node(env=env, scripts=scripts)
            n.start(wait=False)
            rc = await asyncio.to_thread(n.wait_exit, 5)
            check(rc is not None and rc != 0, f"chatd with {env} ({scripts or 'open policy'}) "
                  f"exited with {rc}")
            word = next(iter(env))
            check(word in n.log_tail(5), f"{env}: the error names {word}: {n.log_tail(3)}")
    # env over M.config, flag over env, for the open and the default policy
    for scripts in (None, harness.PROJECT_SCRIPTS):
        n = harness.Node(scripts=scripts,
                         env={"CHAT_HEARTBEAT_MS": 700, "CHAT_PRESENCE_TTL_MS": 2100,
                              "CHAT_TYPING_TTL_MS": 444},
                         args=["--heartbeat-ms", "900", "--typing-ttl-ms=333"]).start()
        room = uniq()
        a = await Client.connect(n, room, token("alice"))
        b = await Client.connect(n, room, token("bob"))
        w = a.welcome()
        eq((w.get("heartbeat_ms"), w.get("presence_ttl_ms")), (900, 2100),
           f"welcome timings ({scripts or 'open policy'}): --heartbeat-ms over env, env TTL")
        await b.send({"type": "typing"})
        t = await a.wait_for(lambda f: f["type"] == "typing", 5, what="typing")
        eq(t.get("ttl_ms"), 333, "typing ttl_ms with --typing-ttl-ms")
    # the flag wins over ANY env value: a bad env a flag overrides is not read
    n = harness.Node(env={"CHAT_HEARTBEAT_MS": "abc", "CHAT_MAX_QUEUE": "0"},
                     args=["--heartbeat-ms=800", "--max-queue", "64"]).start()
    a = await Client.connect(n, uniq(), token("alice"))
    eq(a.welcome().get("heartbeat_ms"), 800, "--heartbeat-ms over a bad CHAT_HEARTBEAT_MS")
    # a policy's own value beyond 32 bits: presence_ttl_ms 4294967297 ran
    # as a 1 ms TTL while welcome announced 4294967297
    n = harness.Node(scripts=policy_dir("local M = {config = {presence_ttl_ms = 4294967297}}\n"
                                        "return M\n"))
    n.start(wait=False)
    rc = await asyncio.to_thread(n.wait_exit, 5)
    check(rc is not None and rc != 0, f"chatd with config.presence_ttl_ms = 4294967297 exited with {rc}")
    check("presence_ttl_ms" in n.log_tail(5), f"the error names presence_ttl_ms: {n.log_tail(3)}")


NUL_POLICY = """
local M = {}
function M.on_message(ctx, msg)
  if msg.body == "make-nul" then return "a\\0b" end
  return nil
end
return M
"""


@test()
async def nul_body_refused_before_a_seq_also_when_a_policy_makes_one():
    n = start_node(scripts=policy_dir(NUL_POLICY))
    room = uniq()
    a = await Client.connect(n, room, token("alice"))
    b = await Client.connect(n, room, token("bob"))
    e = await a.error_for({"type": "message", "body": "x\u0000y", "id": "z1"})
    eq((e.get("code"), e.get("id")), ("bad_request", "z1"), "NUL in the client's body")
    e = await a.error_for({"type": "message", "body": "make-nul", "id": "z2"})
    eq((e.get("code"), e.get("id")), ("rejected", "z2"), "NUL in the policy's body")
    await a.send_msg("fine", id="z3")
    m = await b.wait_for(lambda f: f["type"] == "message", 5, what="the next message")
    eq((m.get("id"), m["seq"]), ("z3", 1), "refused messages took no seq")


@test()
async def epoch_in_welcome_and_join_and_since_checks():
    # single-node mode: one epoch per process start; a since of another
    # epoch, or beyond the room's head, answers gap_too_large for that room
    n = start_node()
    room, other = uniq(), uniq("o")
    c = await Client.connect(n, room, token("alice"))
    e = c.welcome().get("epoch")
    check(isinstance(e, str) and len(e) == 16, f"welcome.epoch {c.welcome()}")
    ps = await c.wait_for(lambda f: f["type"] == "presence_state", 5)
    eq(ps.get("epoch"), e, "presence_state.epoch of the URL room")
    js = await c.join(other)
    eq((js["type"], js.get("epoch")), ("presence_state", e), "join answer carries the epoch")
    for i in range(3):
        await c.send_msg(f"m{i}", id=f"m{i}")
    await c.wait_count(lambda f: f["type"] == "ack", 3, 5)

    def gap(f):
        return f["type"] == "error" and f.get("code") == "gap_too_large" and f.get("room") == room
    r = await Client.connect(n, room, token("r"), since=1, epoch=e)
    await r.wait_count(is_msg(room), 2, 5, "replay with the right epoch")
    eq(r.seqs(room), [2, 3], "replayed")
    bad = await Client.connect(n, room, token("bad"), since=1, epoch="0123456789abcdef")
    await bad.wait_for(gap, 5, what="gap_too_large for another epoch")
    # epoch= is read whatever comes before it in the query (here a token
    # of over 1 KiB: the URL's token comes first)
    big = await Client.connect(n, room, token("big", team="t" * 1200), since=1,
                               epoch="0123456789abcdef")
    await big.wait_for(gap, 5, what="gap_too_large for another epoch after a long token")
    far = await Client.connect(n, room, token("far"), since=9)
    await far.wait_for(gap, 5, what="gap_too_large for since beyond the head")
    j = await Client.connect(n, other, token("j"))
    mk = j.mark()
    await j.send({"type": "join", "room": room, "since": 1, "epoch": "other"})
    await j.wait_for(gap, 5, start=mk, what="gap_too_large on join")
    await c.send_msg("live", id="live")
    for x in (bad, far, j):
        m = await x.wait_for(lambda f: f["type"] == "message" and f.get("room") == room, 5)
        eq(m["seq"], 4, f"{x.label}: live after gap_too_large")
        eq(x.seqs(room), [4], f"{x.label}: nothing replayed")
    e400 = await c.error_for({"type": "join", "room": uniq("z"), "since": 0, "epoch": ""})
    eq(e400.get("code"), "bad_request", "empty epoch in join")
    n.restart()
    c2 = await Client.connect(n, room, token("again"), since=3, epoch=e)
    check(c2.welcome().get("epoch") not in (None, e), "a new process, a new epoch")
    await c2.wait_for(gap, 5, what="gap_too_large after a restart")


# ------------------------------------------------------------ errors answering join / leave
JOIN_POLICY = """
local M = {}
M.config = { max_rooms_per_conn = 3 }
function M.on_join(ctx)
  if ctx.room:sub(1, 8) == "private-" then return false, "forbidden", "room " .. ctx.room .. " is private" end
end
return M
"""


@test()
async def join_and_leave_errors_name_the_room_and_echo_the_id():
    """protocol.md: error carries `id` when it answers a client message; an
    error answering a join or leave also names its room (a client with
    several rooms knows which join failed)."""
    n = start_node(scripts=policy_dir(JOIN_POLICY))
    room = uniq()
    c = await Client.connect(n, room, token("alice"))

    async def err(req, code, what):
        e = await c.error_for(req)
        eq(e.get("code"), code, f"{what}: code")
        eq(e.get("room"), req["room"], f"{what}: room ({e})")
        eq(e.get("id"), req.get("id"), f"{what}: id ({e})")
        check(isinstance(e.get("message"), str) and e["message"], f"{what}: message")
        await c.roundtrip()

    await err({"type": "join", "room": "private-q", "id": "j1"}, "forbidden", "policy refusal")
    await err({"type": "join", "room": "private-q"}, "forbidden", "policy refusal without id")
    await err({"type": "join", "room": room, "id": "j2"}, "already_member", "already a member")
    await err({"type": "join", "room": uniq("s"), "since": "x", "id": "j3"}, "bad_request", "bad since")
    await err({"type": "join", "room": uniq("s"), "since": -1, "id": "j4"}, "bad_request",
              "negative since")
    await err({"type": "join", "room": uniq("s"), "since": 0, "epoch": "", "id": "j5"},
              "bad_request", "empty epoch")
    await err({"type": "leave", "room": uniq("nm"), "id": "l1"}, "not_member", "leave of a non-member")
    # since beyond the head (the room is empty): gap_too_large, after presence_state
    far = uniq("far")
    mk = c.mark()
    await c.send({"type": "join", "room": far, "since": 9, "id": "j6"})
    e = await c.wait_for(lambda f: f["type"] == "error", 5, start=mk, what="gap_too_large")
    eq((e.get("code"), e.get("room"), e.get("id")), ("gap_too_large", far, "j6"),
       "gap_too_large answering a join")
    # 3 rooms now (room, far and one more): the 4th is refused
    r = await c.join(uniq("third"))
    eq(r.get("type"), "presence_state", "third room")
    await err({"type": "join", "room": uniq("fourth"), "id": "j7"}, "too_many_rooms",
              "rooms limit")
    # an invalid room cannot be echoed; the id still is
    e = await c.error_for({"type": "join", "room": "bad room!", "id": "j8"})
    eq((e.get("code"), e.get("id"), "room" in e), ("bad_request", "j8", False), "invalid room")
    # a join's id that is not a valid id is ignored, never a refusal
    r = await c.error_for({"type": "join", "room": "private-z", "id": 5})
    eq((r.get("code"), r.get("room"), "id" in r), ("forbidden", "private-z", False),
       "non-string id on join")
    check(not c.closed, "connection stays open")


@test()
async def join_since_null_is_no_since():
    """A JS client writes `since: lastSeq ?? null`: null is no since (live
    from the head, no replay); other non-integers stay bad_request."""
    n = start_node()
    room, other = uniq(), uniq("o")
    p = await Client.connect(n, other, token("pub"))
    for i in range(3):
        await send_acked(p, f"m{i}", f"m{i}")
    c = await Client.connect(n, room, token("alice"))
    r = await c.join(other, since=None)   # control: the harness leaves since out
    eq(r.get("type"), "presence_state", "join without since")
    await c.send({"type": "leave", "room": other})
    await c.roundtrip()
    mk = c.mark()
    await c.send({"type": "join", "room": other, "since": None, "id": "jn"})
    r = await c.wait_for(lambda f: (f["type"] == "presence_state" and f.get("room") == other)
                         or f["type"] == "error", 5, start=mk, what="join since null")
    eq(r.get("type"), "presence_state", f"join with since null ({r})")
    eq(r.get("seq"), 3, "head in presence_state")
    await c.roundtrip()
    eq([m["seq"] for m in c.messages(other)], [], "nothing replayed (no since)")
    await send_acked(p, "live", "live")
    m = await c.wait_for(is_msg(other), 5, start=mk, what="live message")
    eq(m["seq"], 4, "live after a null since")
    e = await c.error_for({"type": "join", "room": uniq("x"), "since": "3"})
    eq(e.get("code"), "bad_request", "a string since is still refused")
    # the URL's empty since= stays 400
    st, _ = await aupgrade_status(n.port, f"/ws/{uniq()}?token={token('u')}&since=")
    eq(st, 400, "empty since= in the URL")


# ------------------------------------------------------------ the sender's message before its ack
async def _message_then_ack(n, room):
    a = await Client.connect(n, room, token("alice"))
    b = await Client.connect(n, room, token("bob"))
    for i in range(5):
        await a.send_msg(f"hello {i}", id=f"o{i}")
    await a.wait_count(lambda f: f["type"] == "ack", 5, 10, "acks")
    seen = [(f["type"], f.get("id")) for f in a.frames if f["type"] in ("message", "ack")]
    for i in range(5):
        check(seen.index(("message", f"o{i}")) < seen.index(("ack", f"o{i}")),
              f"the sender's own message o{i} before its ack: {seen}")
    s1 = a.acks()[0]["seq"]
    # message updates: the message_update frame, then the ack
    ups = [{"type": "edit", "target": s1, "body": "edited", "id": "u1"},
           {"type": "react", "target": s1, "emoji": ":ok:", "id": "u2"},
           {"type": "delete", "target": s1, "id": "u3"}]
    mk = a.mark()
    for u in ups:
        await a.send(dict(u, room=room))
    await a.wait_count(lambda f: f["type"] in ("ack", "error"), 3, 10, "update answers", start=mk)
    seen = [(f["type"], f.get("id") if f["type"] != "error" else f)
            for f in a.frames[mk:] if f["type"] in ("message_update", "ack", "error")]
    for u in ups:
        check(("message_update", u["id"]) in seen and ("ack", u["id"]) in seen
              and seen.index(("message_update", u["id"])) < seen.index(("ack", u["id"])),
              f"the update {u['id']} ({u['type']}) before its ack: {seen}")
    await b.wait_count(lambda f: f["type"] == "message_update", 3, 5, "updates at bob")


@test()
async def sender_gets_its_message_before_the_ack_in_process():
    """The same order in every mode: the broadcast reaches the sender, then
    the ack (the in-process bus without a database answered the ack first)."""
    n = start_node()
    await _message_then_ack(n, uniq())


@test(needs=("pg",))
async def sender_gets_its_message_before_the_ack_with_a_database():
    n = start_node(db=True)
    await _message_then_ack(n, uniq())


# ------------------------------------------------------------ JWT name claim
@test()
async def jwt_name_null_is_the_sub_and_a_long_name_is_cut():
    n = start_node()
    room = uniq()
    c = claims("nully")
    c["name"] = None
    a = await Client.connect(n, room, token_claims(c))
    eq((a.welcome().get("user"), a.welcome().get("name")), ("nully", "nully"), "name null: the sub")
    # 200 bytes of a 2-byte character: cut to 127 bytes at a boundary (126)
    long_name = "\u00e9" * 100
    b = await Client.connect(n, room, token("longname", long_name))
    got = b.welcome().get("name")
    eq(got, "\u00e9" * 63, "a name over 127 bytes is cut at a UTF-8 boundary")
    await send_acked(b, "hi", "ln1")
    m = await a.wait_for(is_msg(room), 5)
    eq(m.get("name"), "\u00e9" * 63, "the cut name in messages")
    # sub keeps its limit; the 401 says why
    st, body = await aupgrade_status(n.port, ws_path(room, token("s" * 128)))
    eq(st, 401, "a sub of 128 bytes")
    check(b"too long" in body and b"sub" in body, f"401 reason names the sub's length: {body!r}")
    st, body = await aupgrade_status(n.port, ws_path(room, token_claims(claims("u", name=5))))
    eq(st, 401, "a numeric name")
    check(b"name claim" in body and b"not a string" in body, f"401 reason for a numeric name: {body!r}")
