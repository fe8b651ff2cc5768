"""presence: join/leave exactly once across connections and nodes, leave on
node death and on missing heartbeats (short TTL: heartbeat 500 ms, TTL
1500 ms), presence_state after churn, GET /rooms/{r}/presence, and typing
(reaches the others only, never stored, rate-limited by the default policy), and a
presence_ttl_ms changed by SIGHUP: announced in welcome and applied by presence alike; a node
restarted with the same node id gets connection ids (presence members) of its own."""
import asyncio
import os
import signal
import time

import harness

from harness import (Client, TestSkip, ahttp, ahttp_json, check, eq, start_node, token, uniq,
                     test, PROJECT_SCRIPTS, policy_dir, write_policy)

HB_MS, TTL_MS, TYPING_MS = 500, 1500, 3000
ENV = {"CHAT_HEARTBEAT_MS": HB_MS, "CHAT_PRESENCE_TTL_MS": TTL_MS,
       "CHAT_TYPING_TTL_MS": TYPING_MS}
# a leave must be announced within TTL + sweep (TTL/6) + this slack
LEAVE_SLACK = 1.5


def pnode(**kw):
    env = dict(ENV)
    env.update(kw.pop("env", {}))
    return start_node(redis=kw.pop("redis", True), env=env, **kw)


def pres(room, event, user):
    return lambda f: (f["type"] == "presence" and f.get("room") == room
                      and f.get("event") == event and f.get("user") == user)


def count(c, pred, start=0):
    return sum(1 for f in c.frames[start:] if pred(f))


def pres_log(c, user, t0):
    """The presence events about user seen by c, with times since t0."""
    return [f"{f['event']}@{f['_t'] - t0:.2f}s" for f in c.frames
            if f["type"] == "presence" and f.get("user") == user]


async def connect(n, room, user, name=None, **kw):
    return await Client.connect(n, room, token(user, name), heartbeat=True, user=user, **kw)


async def leave_after_silence(o, u, room, user, ttl_ms):
    """u stops heartbeating: o must see user's leave after the TTL, not
    before, and within TTL + sweep + slack."""
    u.stop_heartbeat()
    t0 = time.monotonic()
    await o.wait_for(pres(room, "leave", user), ttl_ms / 1000 + LEAVE_SLACK,
                     what=f"leave within the TTL ({ttl_ms} ms) of the last heartbeat")
    dt = time.monotonic() - t0
    check(dt >= ttl_ms / 1000 - HB_MS / 1000 - 0.3,
          f"leave {dt:.2f}s after the last heartbeat, before the TTL ({ttl_ms} ms)")


@test(timeout=45)
async def join_leave_events_single_node_memory_mode():
    n = pnode(redis=False)
    room = uniq()
    o = await connect(n, room, "obs")
    u = await connect(n, room, "u1", "User One")
    f = await o.wait_for(pres(room, "join", "u1"), 3, what="presence join")
    eq(f.get("name"), "User One", "presence.name")
    await u.close()
    await o.wait_for(pres(room, "leave", "u1"), 3, what="presence leave after close")
    await asyncio.sleep(0.5)
    eq((count(o, pres(room, "join", "u1")), count(o, pres(room, "leave", "u1"))), (1, 1),
       "join/leave events")


@test(timeout=45, needs=("redis",))
async def two_connections_of_one_user_on_two_nodes_join_leave_once():
    a, b = pnode(name="A-" + uniq("")), pnode(name="B-" + uniq(""))
    room = uniq()
    oa = await connect(a, room, "obsA")
    ob = await connect(b, room, "obsB")
    t0 = time.monotonic()
    c1 = await connect(a, room, "u", "You")
    for o in (oa, ob):
        f = await o.wait_for(pres(room, "join", "u"), 3, what=f"join of u at {o.label}")
        eq((f.get("name"), f.get("room")), ("You", room), "presence join fields")
    t2 = time.monotonic() - t0
    c2 = await connect(b, room, "u", "You")
    await asyncio.sleep(1.5)
    t3 = time.monotonic() - t0
    await c1.close()
    await asyncio.sleep(TTL_MS / 1000 + 1.0)
    when = f"(conn2 opened at {t2:.2f}s, conn1 closed at {t3:.2f}s; events {{}})"
    for o in (oa, ob):
        ev = pres_log(o, "u", t0)
        eq(count(o, pres(room, "join", "u")), 1,
           f"joins of u at {o.label} with a second connection " + when.format(ev))
        eq(count(o, pres(room, "leave", "u")), 0,
           f"leaves of u at {o.label} while another connection is live " + when.format(ev))
    await c2.close()
    for o in (oa, ob):
        await o.wait_for(pres(room, "leave", "u"), TTL_MS / 1000 + LEAVE_SLACK,
                         what=f"leave of u at {o.label}")
    await asyncio.sleep(1.5)
    for o in (oa, ob):
        eq((count(o, pres(room, "join", "u")), count(o, pres(room, "leave", "u"))), (1, 1),
           f"join/leave of u at {o.label}")


@test(timeout=45, needs=("redis",))
async def kill9_node_leave_within_ttl():
    a, b = pnode(name="A-" + uniq("")), pnode(name="B-" + uniq(""))
    room = uniq()
    o = await connect(a, room, "obs")
    u = await connect(b, room, "victim")
    await o.wait_for(pres(room, "join", "victim"), 3, what="join of victim")
    b.kill9()
    t0 = time.monotonic()
    await o.wait_for(pres(room, "leave", "victim"), TTL_MS / 1000 + LEAVE_SLACK + 0.5,
                     what="leave of a user whose node was killed")
    dt = time.monotonic() - t0
    await asyncio.sleep(1.5)
    eq(count(o, pres(room, "leave", "victim")), 1, f"leaves of victim (after {dt:.2f}s)")
    st, js, _ = await ahttp_json(a.port, f"/rooms/{room}/presence", token("obs"))
    eq(st, 200, "GET presence")
    users = sorted(x.get("user") for x in js.get("users", []))
    check("victim" not in users, f"victim still listed after the leave: {users}")
    del u


@test(timeout=45, needs=("redis",))
async def missing_heartbeats_cause_leave():
    a, b = pnode(name="A-" + uniq("")), pnode(name="B-" + uniq(""))
    room = uniq()
    o = await connect(a, room, "obs")
    u = await connect(b, room, "quiet")
    await o.wait_for(pres(room, "join", "quiet"), 3, what="join of quiet")
    await asyncio.sleep(1.0)
    eq(count(o, pres(room, "leave", "quiet")), 0, "leave while heartbeating")
    await leave_after_silence(o, u, room, "quiet", TTL_MS)
    await asyncio.sleep(1.0)
    eq(count(o, pres(room, "leave", "quiet")), 1, "leaves of quiet")


@test(timeout=60, needs=("redis",))
async def presence_state_and_http_after_churn():
    a, b = pnode(name="A-" + uniq("")), pnode(name="B-" + uniq(""))
    nodes = [a, b]
    room = uniq()
    live = {}
    for i in range(6):
        live[f"u{i}"] = await connect(nodes[i % 2], room, f"u{i}", f"N{i}")
    await live.pop("u1").close()
    await live.pop("u2").close()
    live.pop("u3").abort()                  # TCP drop, no close handshake
    live["u1"] = await connect(b, room, "u1", "N1")     # back, on the other node
    extra = await connect(a, room, "u4", "N4")          # second conn of a present user
    await live.pop("u5").close()
    await asyncio.sleep(TTL_MS / 1000 + LEAVE_SLACK)
    want = {("u0", "N0"), ("u1", "N1"), ("u4", "N4")}
    for n in nodes:
        z = await connect(n, room, f"z-{n.name}")
        ps = await z.wait_for(lambda f: f["type"] == "presence_state", 3, what="presence_state")
        got = {(x.get("user"), x.get("name")) for x in ps.get("users", [])}
        got.discard((f"z-{n.name}", f"z-{n.name}"))
        eq(sorted(got), sorted(want), f"presence_state on {n.name} after churn")
        users = [x.get("user") for x in ps.get("users", [])]
        eq(len(users), len(set(users)), "presence_state lists a user twice")
        await z.close()
    await asyncio.sleep(0.3)
    for n in nodes:
        st, js, body = await ahttp_json(n.port, f"/rooms/{room}/presence", token("reader"))
        eq(st, 200, f"GET /rooms/{room}/presence on {n.name}")
        eq(js.get("room"), room, "presence.room")
        got = {(x.get("user"), x.get("name")) for x in js.get("users", [])}
        got = {g for g in got if not g[0].startswith("z-")}
        eq(sorted(got), sorted(want), f"GET presence on {n.name}")
    del extra


@test(timeout=30, needs=("redis",))
async def presence_http_auth():
    n = pnode()
    room = uniq()
    st, _, _ = await ahttp(n.port, f"/rooms/{room}/presence")
    eq(st, 401, "presence without a token")
    st, _, _ = await ahttp(n.port, f"/rooms/{room}/presence",
                           {"Authorization": "Bearer " + token("x", exp_in=-5)})
    eq(st, 401, "presence with an expired token")
    st, _, body = await ahttp(n.port, f"/rooms/{room}/presence?token=" + token("x"))
    eq(st, 200, "presence with ?token=")
    st, _, _ = await ahttp(n.port, "/rooms/bad!room/presence",
                           {"Authorization": "Bearer " + token("x")})
    eq(st, 400, "presence of an invalid room name")


@test(timeout=45, needs=("redis",))
async def presence_http_answers_503_when_redis_does_not_answer():
    """GET /rooms/{r}/presence while Redis does not answer (SIGSTOP: its
    connections stay open, nothing comes back): a 503 saying so within the
    read deadline (half the handshake timeout, at most 5 s), as history and
    unread do for Postgres (history.reads_answer_503_when_postgres_does_not_answer),
    never a request left hanging until the connection is closed with no
    status. The handshake timeout is 6 s here: the deadline (3 s) comes
    before the Redis connection's own reply timeout (5 s after its oldest
    command, a ping at most 1 s old), which would answer "presence
    unavailable" too. Once Redis answers again, the same request is 200
    (the late answer was dropped, not sent to anyone)."""
    rd = harness.Redis(harness.RUN.tmpdir("redis-stopped"))
    rd.start()
    stopped = False
    try:
        n = pnode(redis=rd.url, env={"CHAT_HANDSHAKE_TIMEOUT_MS": 6000})
        room = uniq()
        c = await Client.connect(n, room, token("alice"))
        await c.roundtrip()
        os.kill(rd.proc.pid, signal.SIGSTOP)
        stopped = True
        t0 = time.monotonic()
        st, js, body = await ahttp_json(n.port, f"/rooms/{room}/presence", token("reader"), timeout=9)
        took = time.monotonic() - t0
        eq(st, 503, f"GET presence while Redis does not answer (body {body[:200]!r})")
        check("no answer in time" in (js or {}).get("error", ""), f"error {body[:200]!r}")
        check(2.5 < took < 4.5, f"answered after {took:.1f} s (deadline 3 s)")
        os.kill(rd.proc.pid, signal.SIGCONT)
        stopped = False
        end = time.monotonic() + 10
        while True:
            st, js, body = await ahttp_json(n.port, f"/rooms/{room}/presence", token("reader"))
            if st == 200 or time.monotonic() > end:
                break
            await asyncio.sleep(0.2)
        eq(st, 200, f"GET presence once Redis answers again ({body[:200]!r})")
        eq([u.get("user") for u in js.get("users", [])], ["alice"], "presence once Redis answers")
    finally:
        if stopped:
            os.kill(rd.proc.pid, signal.SIGCONT)
        rd.stop()


@test(timeout=45, needs=("redis", "pg"))
async def typing_reaches_others_not_stored_rate_limited():
    if not os.path.exists(os.path.join(PROJECT_SCRIPTS, "policy.lua")):
        raise AssertionError(f"default policy {PROJECT_SCRIPTS}/policy.lua missing")
    a = pnode(name="A-" + uniq(""), db=True, scripts=PROJECT_SCRIPTS)
    b = pnode(name="B-" + uniq(""), db=True, scripts=PROJECT_SCRIPTS)
    room = uniq()
    ta = await connect(a, room, "typer", "Typer")
    ra = await connect(a, room, "ra")
    rb = await connect(b, room, "rb")
    is_typing = lambda f: f["type"] == "typing" and f.get("room") == room
    t0 = time.monotonic()
    await ta.send({"type": "typing"})
    for r in (ra, rb):
        f = await r.wait_for(is_typing, 3, what=f"typing at {r.label}")
        eq((f.get("user"), f.get("name"), f.get("ttl_ms")), ("typer", "Typer", TYPING_MS),
           "typing frame fields")
    # a refused typing may be dropped silently or answered with rate_limited
    mk = ta.mark()
    await ta.send({"type": "typing"})
    await ta.roundtrip()
    for e in ta.frames[mk:]:
        if e["type"] == "error":
            eq(e.get("code"), "rate_limited", "error for a second typing within 2 s")
    await asyncio.sleep(0.8)
    for r in (ra, rb):
        eq(count(r, is_typing), 1, f"typings at {r.label} after a rate-limited one")
    eq(count(ta, is_typing), 0, "the sender got its own typing")
    await asyncio.sleep(max(0, t0 + 2.2 - time.monotonic()))
    mk = ta.mark()
    await ta.send({"type": "typing"})
    await rb.wait_count(is_typing, 2, 3, "second typing after 2 s")
    await ta.roundtrip()
    check(not [f for f in ta.frames[mk:] if f["type"] == "error"],
          f"typing after 2 s refused: {ta.brief(-3)}")
    await ta.send_msg("real", id="real-1")
    await ta.wait_for(lambda f: f["type"] == "ack", 10, what="ack")
    st, js, body = await ahttp_json(a.port, f"/rooms/{room}/messages", token("ra"))
    eq(st, 200, "history status")
    eq([(m.get("id"), m.get("body")) for m in js.get("messages", [])], [("real-1", "real")],
       "history holds the message only (no typing)")


@test(timeout=45, needs=("redis",))
async def sigterm_of_a_node_announces_leave_at_once():
    # a long TTL: a leave within 2 s can only come from the graceful path
    slow_ttl = {"CHAT_PRESENCE_TTL_MS": "20000", "CHAT_HEARTBEAT_MS": "5000"}
    a = pnode(name="A-" + uniq(""), env=slow_ttl)
    b = pnode(name="B-" + uniq(""), env=slow_ttl)
    room = uniq()
    o = await connect(a, room, "obs")
    u = await connect(b, room, "leaver")
    await o.wait_for(pres(room, "join", "leaver"), 3, what="join of leaver")
    b.signal(signal.SIGTERM)
    t0 = time.monotonic()
    await o.wait_for(pres(room, "leave", "leaver"), 2.0,
                     what="leave of a user whose node drained (SIGTERM)")
    dt = time.monotonic() - t0
    await asyncio.sleep(0.5)
    eq(count(o, pres(room, "leave", "leaver")), 1, f"leaves of leaver (after {dt:.2f}s)")
    del u


def _ttl_policy(ttl_ms):
    return ("local M = {}\nM.config = { heartbeat_ms = %d, presence_ttl_ms = %d }\nreturn M\n"
            % (HB_MS, ttl_ms))


async def _reloaded_ttl_is_announced_and_applied(redis):
    """presence_ttl_ms changed by SIGHUP: the next welcome announces it AND
    presence expires a silent user after it (not after the start value)."""
    d = policy_dir(_ttl_policy(30000))
    # no CHAT_*_MS env: the policy file is the only source of the timings
    n = start_node(scripts=d, redis=redis)
    room = uniq()
    o = await connect(n, room, "obs")
    q = await connect(n, room, "quiet")
    eq(q.welcome().get("presence_ttl_ms"), 30000, "presence_ttl_ms in welcome before the reload")
    await o.wait_for(pres(room, "join", "quiet"), 3, what="join of quiet")
    write_policy(d, _ttl_policy(TTL_MS))
    n.signal(signal.SIGHUP)
    announced, end = None, time.monotonic() + 5
    while time.monotonic() < end:
        p = await Client.connect(n, room, token("probe"), user="probe")
        announced = p.welcome().get("presence_ttl_ms")
        await p.close()
        if announced == TTL_MS:
            break
        await asyncio.sleep(0.2)
    eq(announced, TTL_MS, "presence_ttl_ms in welcome after the reload")
    await asyncio.sleep(HB_MS / 1000 * 2)     # quiet heartbeats under the new TTL
    # the start value (30 s) would keep quiet present far beyond this
    await leave_after_silence(o, q, room, "quiet", TTL_MS)
    check(not q.closed, "the quiet connection stays open (presence only)")


@test(timeout=45)
async def sighup_presence_ttl_announced_and_applied_memory_mode():
    await _reloaded_ttl_is_announced_and_applied(redis=False)


@test(timeout=45, needs=("redis",))
async def sighup_presence_ttl_announced_and_applied_redis():
    await _reloaded_ttl_is_announced_and_applied(redis=True)


def presence_members(room):
    """The members of the room's presence zset in Redis ("node|conn id|user")."""
    reply = harness.RUN.need_redis().command("ZRANGE", f"chat:{{{room}}}:presence:conns", "0", "-1")
    lines = reply.decode().split("\r\n")
    check(lines[0].startswith("*"), f"ZRANGE reply: {reply[:200]!r}")
    return [lines[i] for i in range(2, len(lines), 2) if lines[i - 1].startswith("$")]


async def wait_members(room, pred, what, timeout=5.0):
    end = time.monotonic() + timeout
    while True:
        ms = presence_members(room)
        if pred(ms) or time.monotonic() > end:
            check(pred(ms), f"{what}: presence members {ms}")
            return ms
        await asyncio.sleep(0.1)


@test(timeout=60, needs=("redis",))
async def restarted_node_gets_new_conn_ids():
    # a node restarted with the same node id (a restarted worker, compose's
    # fixed ids) while its previous run's presence entries are still live:
    # its connection ids must not start over, or a new connection's entry is
    # the dead one's ("node|1|user") and merges with it until the TTL
    n = pnode(name="R-" + uniq(""), env={"CHAT_PRESENCE_TTL_MS": 30000})
    room = uniq()
    u1 = await connect(n, room, "alice")
    mine = lambda ms: [m for m in ms if m.startswith(n.name + "|") and m.endswith("|alice")]
    old = mine(await wait_members(room, lambda ms: len(mine(ms)) == 1, "first run's entry"))
    n.restart()                             # kill -9, then the same node id again
    u1.abort()
    u2 = await connect(n, room, "alice")
    ms = mine(await wait_members(room, lambda ms: len(mine(ms)) == 2,
                                 "an entry of its own for the new run's connection (the old one "
                                 "is live for 30 s)"))
    check(old[0] in ms, f"the first run's entry {old[0]} is still there: {ms}")
    new = [m for m in ms if m != old[0]]
    ids = [int(m.split("|")[1]) for m in (old[0], new[0])]
    check(ids[1] > ids[0], f"conn ids of the second run start above the first run's: {ids}")
    await u2.close()
