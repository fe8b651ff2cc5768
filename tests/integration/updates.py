"""updates: message updates (protocol.md "Message updates (v2)") on real
nodes, Redis and Postgres, with the default policy (scripts/): edit,
delete and react as room events with their own seq, broadcast to every
member on every node, acked, stored, replayed by since= from the recent
buffer and from Postgres, history in its current state; refusals;
reaction counts exact under concurrent reacts on two nodes; idempotent
resends."""
import asyncio
import http.client
import json
import os
import urllib.parse

import harness
from harness import (Client, TestFailure, check, eq, http_get, start_node, token, uniq, test)

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "scripts")
THUMBS = "\U0001F44D"
HEART = "\u2764\ufe0f"


def node(name, redis=True, db=True, env=None):
    return start_node(redis=redis, db=db, scripts=SCRIPTS, name=f"{name}-{uniq('')}", env=env)


def is_event(room):
    """messages and message updates of room (the seq'd events)."""
    return lambda f: f["type"] in ("message", "message_update") and f.get("room") == room


def events(c, room):
    return [f for f in c.frames if is_event(room)(f)]


def strip(f):
    return {k: v for k, v in f.items() if k != "_t"}


def erased(frames):
    """What a replay sends for the live frames: a message deleted later in
    the same stream, and its edits, with "deleted": true and no body (nor
    meta), as history shows it, wherever the replay reads from."""
    gone = {f["target"] for f in frames if f["type"] == "message_update" and f.get("kind") == "delete"}
    out = []
    for f in frames:
        f = dict(f)
        if (f["type"] == "message" and f["seq"] in gone) or \
                (f["type"] == "message_update" and f.get("kind") == "edit" and f["target"] in gone):
            f.pop("body", None)
            f.pop("meta", None)
            f["deleted"] = True
        out.append(f)
    return out


def upd(c, room):
    return [f for f in c.frames if f["type"] == "message_update" and f.get("room") == room]


async def send_and_ack(c, frame, timeout=8.0):
    """Sends frame (with its id) and returns the ack or error answering it."""
    return await c.reply(frame, lambda f: f.get("id") == frame["id"] and f["type"] in ("ack", "error"),
                         timeout, what=f"answer to {frame['type']} {frame['id']}")


async def post(c, room, body, mid):
    a = await send_and_ack(c, {"type": "message", "room": room, "body": body, "id": mid})
    eq(a["type"], "ack", f"ack of message {mid}: {a}")
    return a["seq"]


def history(n, room, tok, **q):
    qs = urllib.parse.urlencode(q)
    st, _, body = http_get(n.port, f"/rooms/{room}/messages" + (f"?{qs}" if qs else ""),
                           {"Authorization": f"Bearer {tok}"})
    eq(st, 200, f"history status ({body[:200]!r})")
    return json.loads(body)


def pg_rows(room, cols):
    """The rows of room in Postgres (psql -tA lines), or None when the
    runner gave an external Postgres (no psql through the harness)."""
    pg = harness.RUN.pg
    if getattr(pg, "external", True):
        return None
    return pg.psql("chatd", f"SELECT {cols} FROM messages WHERE room = '{room}' ORDER BY seq").split()


def check_contiguous(c, room, upto):
    seqs = [f["seq"] for f in events(c, room)]
    check(seqs == list(range(1, upto + 1)), f"{c.label}: event seqs {seqs} are not 1..{upto}")


@test(timeout=60, needs=("redis", "pg"))
async def edit_delete_react_order_and_replay():
    a, b = node("A"), node("B")
    room = uniq("upd")
    al = await Client.connect(a, room, token("alice", "Alice"))
    bo = await Client.connect(b, room, token("bob", "Bob"))
    s1 = await post(al, room, "helo", "m1")
    s2 = await post(bo, room, "second", "m2")
    # edit (the policy trims it), react x3, delete
    ack = await send_and_ack(al, {"type": "edit", "room": room, "target": s1, "body": " hello ",
                                  "id": "e1"})
    eq(ack["type"], "ack", f"edit answer {ack}")
    r1 = await send_and_ack(bo, {"type": "react", "room": room, "target": s1, "emoji": THUMBS,
                                 "on": True, "id": "r1"})
    r2 = await send_and_ack(al, {"type": "react", "room": room, "target": s1, "emoji": THUMBS,
                                 "id": "r2"})
    r3 = await send_and_ack(bo, {"type": "react", "room": room, "target": s1, "emoji": THUMBS,
                                 "on": False, "id": "r3"})
    r4 = await send_and_ack(bo, {"type": "react", "room": room, "target": s2, "emoji": ":party:",
                                 "id": "r4"})
    d = await send_and_ack(bo, {"type": "delete", "room": room, "target": s2, "id": "d1"})
    for x in (r1, r2, r3, r4, d):
        eq(x["type"], "ack", f"answer {x}")
    head = d["seq"]
    eq(head, 8, "2 messages + 6 updates: the delete's seq")
    eq([ack["seq"], r1["seq"], r2["seq"], r3["seq"], r4["seq"]], [3, 4, 5, 6, 7],
       "each update has its own seq, in order")
    for c in (al, bo):
        await c.wait_count(is_event(room), head, 8, "events")
        check_contiguous(c, room, head)
    u = {f["seq"]: f for f in upd(al, room)}
    e = u[3]
    eq((e["kind"], e["target"], e["user"], e["name"], e["body"]), ("edit", s1, "alice", "Alice", "hello"),
       "edit frame")
    check(isinstance(e.get("ts"), int) and e["ts"] > 0, f"edit ts {e}")
    eq([(u[s]["kind"], u[s]["user"], u[s]["emoji"], u[s]["on"], u[s]["count"]) for s in (4, 5, 6)],
       [("react", "bob", THUMBS, True, 1), ("react", "alice", THUMBS, True, 2),
        ("react", "bob", THUMBS, False, 1)], "react frames with counts in seq order")
    eq((u[7]["emoji"], u[7]["count"], u[7]["target"]), (":party:", 1, s2), "react :name:")
    eq((u[8]["kind"], u[8]["target"], u[8]["user"]), ("delete", s2, "bob"), "delete frame")
    check("body" not in u[8] and "emoji" not in u[8], f"delete carries no body/emoji: {u[8]}")
    live = [strip(f) for f in events(bo, room)]
    eq([strip(f) for f in events(al, room)], live, "both nodes saw the same events")
    # replay by since= from the recent buffer, on the other node and on the same one: the
    # message deleted since (s2) comes as history shows it, not with its original body
    for n, since in ((a, 0), (b, 2), (a, 5)):
        r = await Client.connect(n, room, token("carol"), since=since)
        await r.wait_count(is_event(room), head - since, 8, f"replay since {since}")
        await asyncio.sleep(0.2)
        got = [strip(f) for f in events(r, room)]
        eq(got, erased(live[since:]), f"replay since={since} on {n.name}")
        if since < s2:
            m2 = next(f for f in got if f["seq"] == s2)
            check(m2.get("deleted") is True and "body" not in m2, f"replayed deleted message {m2}")
    # history: current state
    h = history(b, room, token("carol"))
    msgs = {m["seq"]: m for m in h["messages"]}
    eq(sorted(msgs), [s1, s2], "history lists the messages only")
    m1 = msgs[s1]
    eq((m1["body"], m1.get("reactions")), ("hello", {THUMBS: 1}), "edited message, reactions")
    eq(m1.get("edited_ts"), e["ts"], "edited_ts is the edit's ts")
    check("deleted" not in m1, f"not deleted: {m1}")
    m2 = msgs[s2]
    eq(m2.get("deleted"), True, f"deleted message {m2}")
    check("body" not in m2 and "reactions" not in m2, f"no body nor reactions when deleted: {m2}")


@test(timeout=60, needs=("redis", "pg"))
async def refusals():
    a, b = node("A"), node("B")
    room = uniq("ref")
    al = await Client.connect(a, room, token("alice"))
    bo = await Client.connect(b, room, token("bob"))
    ad = await Client.connect(b, room, token("mod", role="admin"))
    s1 = await post(al, room, "mine", "m1")
    s2 = await post(al, room, "also mine", "m2")
    r = await send_and_ack(bo, {"type": "react", "room": room, "target": s1, "emoji": HEART, "id": "x0"})
    eq(r["type"], "ack", "react")

    async def err(c, frame, code, what):
        f = await send_and_ack(c, frame)
        eq((f["type"], f.get("code")), ("error", code), f"{what}: {f}")
        return f

    # not_found: unknown seq, an update's seq, beyond the head
    await err(bo, {"type": "react", "room": room, "target": 999, "emoji": HEART, "id": "x1"},
              "not_found", "react to an unknown seq")
    await err(al, {"type": "edit", "room": room, "target": r["seq"], "body": "x", "id": "x2"},
              "not_found", "edit of an update's seq")
    await err(bo, {"type": "react", "room": room, "target": r["seq"], "emoji": HEART, "id": "x3"},
              "not_found", "react to an update's seq")
    # forbidden: another user's message
    await err(bo, {"type": "edit", "room": room, "target": s1, "body": "hacked", "id": "x4"},
              "forbidden", "edit of another's message")
    await err(bo, {"type": "delete", "room": room, "target": s1, "id": "x5"},
              "forbidden", "delete of another's message")
    # rejected: an empty edit, a react that changes nothing
    await err(al, {"type": "edit", "room": room, "target": s1, "body": "   ", "id": "x6"},
              "rejected", "empty edit")
    await err(bo, {"type": "react", "room": room, "target": s1, "emoji": HEART, "id": "x7"},
              "rejected", "the same react twice")
    await err(al, {"type": "react", "room": room, "target": s1, "emoji": HEART, "on": False,
                   "id": "x8"}, "rejected", "removing a reaction one does not have")
    # bad_request: before any lookup
    for bad, what in (({"type": "react", "room": room, "target": s1, "emoji": "ab"}, "two graphemes"),
                      ({"type": "react", "room": room, "target": s1, "emoji": ":" + "a" * 31 + ":"},
                       "emoji over 32 bytes"),
                      ({"type": "react", "room": room, "target": s1, "emoji": HEART, "on": 1}, "on not bool"),
                      ({"type": "edit", "room": room, "target": 0, "body": "x"}, "target 0"),
                      ({"type": "delete", "room": room}, "no target"),
                      ({"type": "edit", "room": room, "target": s1}, "edit without body"),
                      ({"type": "edit", "room": room, "target": s1, "body": "a\u0000b"}, "NUL body")):
        bad["id"] = uniq("b")
        await err(al, bad, "bad_request", what)
    await err(al, {"type": "edit", "room": "elsewhere", "target": s1, "body": "x", "id": "x9"},
              "not_member", "a room not joined")
    # the admin deletes alice's message; then it is gone for everyone
    d = await send_and_ack(ad, {"type": "delete", "room": room, "target": s2, "id": "x10"})
    eq(d["type"], "ack", f"admin delete {d}")
    await err(al, {"type": "edit", "room": room, "target": s2, "body": "x", "id": "x11"},
              "not_found", "edit of a deleted message")
    await err(al, {"type": "delete", "room": room, "target": s2, "id": "x12"},
              "not_found", "delete of a deleted message")
    await err(bo, {"type": "react", "room": room, "target": s2, "emoji": HEART, "id": "x13"},
              "not_found", "react to a deleted message")
    # nothing refused got a seq: the head is 4 (2 messages, 1 react, 1 delete)
    late = await Client.connect(a, room, token("late"))
    eq(late.welcome()["seq"], 4, "head after the refusals")
    check(all(f["type"] != "message_update" or f["seq"] in (3, 4) for f in al.frames),
          "no refused update was broadcast")


@test(timeout=60, needs=("redis", "pg"))
async def refused_update_leaves_no_state_behind():
    """An update Postgres refuses for good (an operator's CHECK: here one
    emoji and deletes of one message) is answered bad_request, and the
    bus's state step forgets the target's state it had already changed: the
    same react is refused by Postgres again (before: "rejected, you already
    reacted", a reaction history never held), the message the refused
    delete aimed at can still be edited (before: not_found, deleted in
    Redis but not in history), and once the rule is gone the react is
    stored with count 1 and history shows the message, not deleted."""
    a, b = node("A"), node("B")
    room = uniq("refupd")
    al = await Client.connect(a, room, token("alice"))
    bo = await Client.connect(b, room, token("bob"))
    s1 = await post(al, room, "keep me", "m1")
    emo = ":nope:"
    with harness.refusing_check(cond=f"(emoji IS NULL OR emoji <> '{emo}') AND "
                                     f"(kind <> 2 OR room <> '{room}')"):
        r = await send_and_ack(bo, {"type": "react", "room": room, "target": s1, "emoji": emo,
                                    "id": "rx1"})
        eq((r["type"], r.get("code")), ("error", "bad_request"), f"the refused react: {r}")
        r = await send_and_ack(bo, {"type": "react", "room": room, "target": s1, "emoji": emo,
                                    "id": "rx2"})
        eq((r["type"], r.get("code")), ("error", "bad_request"),
           f"the same react again is refused by Postgres again, not 'already reacted': {r}")
        d = await send_and_ack(al, {"type": "delete", "room": room, "target": s1, "id": "d1"})
        eq((d["type"], d.get("code")), ("error", "bad_request"), f"the refused delete: {d}")
        e = await send_and_ack(al, {"type": "edit", "room": room, "target": s1, "body": "edited",
                                    "id": "e1"})
        eq(e["type"], "ack", f"an edit after the refused delete: {e}")
    r = await send_and_ack(bo, {"type": "react", "room": room, "target": s1, "emoji": emo, "id": "rx3"})
    eq(r["type"], "ack", f"the react once the rule is gone: {r}")
    await al.wait_for(lambda f: f.get("type") == "message_update" and f.get("seq") == r["seq"], 5,
                      what="the stored react")
    last = [f for f in upd(al, room) if f.get("seq") == r["seq"]][0]
    eq(last.get("count"), 1, f"the react's count: {last}")
    h = history(a, room, token("watch"))
    m = [x for x in h["messages"] if x["seq"] == s1][0]
    eq((m.get("body"), m.get("deleted", False), m.get("reactions")), ("edited", False, {emo: 1}),
       f"history: {m}")


@test(timeout=60, needs=("redis", "pg"))
async def refused_update_keeps_other_updates_in_flight():
    """Undoing a refused update takes only its own change off the target's
    state: carol's react on node B is published but still in B's batch
    (CHAT_BATCH_MS 3 s) when alice's react on A is refused by Postgres;
    dave's react then counts 2 (carol's included), and carol can take hers
    back. (Forgetting the whole state re-read it from history without
    carol's react: dave's count 1, carol "you have not reacted".)"""
    a = node("A")
    b = node("B", env={"CHAT_BATCH_MS": "3000"})
    room = uniq("undo")
    al = await Client.connect(a, room, token("alice"))
    ca = await Client.connect(b, room, token("carol"))
    da = await Client.connect(a, room, token("dave"))
    s1 = await post(al, room, "target", "m1")
    emo = ":nope:"
    await ca.send({"type": "react", "room": room, "target": s1, "emoji": THUMBS, "on": True, "id": "c1"})
    await al.wait_for(lambda f: f.get("type") == "message_update" and f.get("user") == "carol", 5,
                      what="carol's react broadcast")
    with harness.refusing_check(cond=f"emoji IS NULL OR emoji <> '{emo}'"):
        r = await send_and_ack(al, {"type": "react", "room": room, "target": s1, "emoji": emo,
                                    "on": True, "id": "rx1"})
        eq((r["type"], r.get("code")), ("error", "bad_request"), f"the refused react: {r}")
    r = await send_and_ack(da, {"type": "react", "room": room, "target": s1, "emoji": THUMBS,
                                "on": True, "id": "d1"})
    eq(r["type"], "ack", f"dave's react: {r}")
    await al.wait_for(lambda f: f.get("type") == "message_update" and f.get("seq") == r["seq"], 5,
                      what="dave's react frame")
    fr = [f for f in upd(al, room) if f.get("seq") == r["seq"]][0]
    eq(fr.get("count"), 2, f"dave's react counts carol's, published and not yet stored: {fr}")
    c = await send_and_ack(ca, {"type": "react", "room": room, "target": s1, "emoji": THUMBS,
                                "on": False, "id": "c2"}, timeout=10)
    eq(c["type"], "ack", f"carol takes her react back: {c}")


@test(timeout=90, needs=("redis", "pg"))
async def concurrent_reactions_exact_across_nodes():
    a, b = node("A"), node("B")
    room = uniq("cr")
    users = 20
    clients = []
    for i in range(users):
        n = a if i % 2 == 0 else b
        clients.append(await Client.connect(n, room, token(f"u{i}")))
    w = await Client.connect(b, room, token("watch"))
    target = await post(clients[0], room, "react to me", "m0")
    other = await post(clients[1], room, "me too", "m1")
    # every user: on THUMBS and HEART on target, on THUMBS on other; users
    # divisible by 3 then take their THUMBS on target off again
    plan = []
    for i in range(users):
        p = [("t1", target, THUMBS, True), ("t2", target, HEART, True), ("t3", other, THUMBS, True)]
        if i % 3 == 0:
            p.append(("t4", target, THUMBS, False))
        plan.append(p)

    async def run(i, c):
        for tag, tg, em, on in plan[i]:
            f = {"type": "react", "room": room, "target": tg, "emoji": em, "on": on,
                 "id": f"{tag}-{i}"}
            ans = await send_and_ack(c, f, 15)
            eq(ans["type"], "ack", f"user {i} {tag}: {ans}")
    await asyncio.gather(*(run(i, c) for i, c in enumerate(clients)))
    total = 2 + sum(len(p) for p in plan)
    await w.wait_count(is_event(room), total, 20, "events at the watcher")
    check_contiguous(w, room, total)
    # every frame's count follows from the frames before it, in seq order
    state = {}
    for f in upd(w, room):
        key = (f["target"], f["emoji"])
        who = state.setdefault(key, set())
        check((f["user"] in who) != f["on"], f"seq {f['seq']}: {f['user']} on={f['on']} twice")
        (who.add if f["on"] else who.discard)(f["user"])
        eq(f["count"], len(who), f"count of seq {f['seq']} {key}")
    off = len([i for i in range(users) if i % 3 == 0])
    want = {(target, THUMBS): users - off, (target, HEART): users, (other, THUMBS): users}
    eq({k: len(v) for k, v in state.items()}, want, "final reactions")
    for c in clients[:3]:
        await c.wait_count(is_event(room), total, 10, "events")
        eq([strip(f) for f in events(c, room)], [strip(f) for f in events(w, room)],
           f"{c.label} saw the watcher's events")
    h = history(a, room, token("watch"))
    got = {m["seq"]: m.get("reactions") for m in h["messages"]}
    eq(got, {target: {THUMBS: users - off, HEART: users}, other: {THUMBS: users}},
       "history reactions = distinct users")


@test(timeout=60, needs=("redis", "pg"))
async def idempotent_resend_of_an_update():
    a, b = node("A"), node("B")
    room = uniq("idem")
    al = await Client.connect(a, room, token("alice"))
    al2 = await Client.connect(b, room, token("alice"))
    w = await Client.connect(b, room, token("watch"))
    s1 = await post(al, room, "one", "m1")
    e = {"type": "edit", "room": room, "target": s1, "body": "two", "id": "edit-1"}
    first = await send_and_ack(al, e)
    again = await send_and_ack(al, e)                   # same node
    other = await send_and_ack(al2, e)                  # another node
    eq([first["type"], again["type"], other["type"]], ["ack"] * 3, "answers")
    eq({first["seq"], again["seq"], other["seq"]}, {2}, "one seq for the three sends")
    r = {"type": "react", "room": room, "target": s1, "emoji": THUMBS, "id": "react-1"}
    r1 = await send_and_ack(al, r)
    r2 = await send_and_ack(al2, r)
    eq((r1.get("seq"), r2.get("seq"), r2["type"]), (3, 3, "ack"), "a react resent: the first seq")
    await w.wait_count(is_event(room), 3, 5, "events")
    await al.roundtrip()
    await asyncio.sleep(0.3)
    eq([f["seq"] for f in events(w, room)], [1, 2, 3], "broadcast once each")
    eq(upd(w, room)[1]["count"], 1, "count")
    h = history(a, room, token("watch"))
    eq(h["messages"][0].get("reactions"), {THUMBS: 1}, "stored once")
    rows = pg_rows(room, "seq, kind")
    if rows is not None:
        eq(rows, ["1|0", "2|1", "3|3"], "one row per seq in Postgres")


async def updates_ids_per_sender_check(nodes, db):
    """Updates share the id space of messages, per sender: bob's react and
    edit... with the id of alice's message are new events, applied; alice's
    resend of her message is still its duplicate."""
    room = uniq("updsnd")
    al = await Client.connect(nodes[0], room, token("alice"))
    bo = await Client.connect(nodes[-1], room, token("bob"))
    s1 = await post(al, room, "one", "x1")
    s2 = await post(bo, room, "two", "x2")
    r = await send_and_ack(bo, {"type": "react", "room": room, "target": s1, "emoji": THUMBS, "id": "x1"})
    eq((r["type"], r.get("seq")), ("ack", 3), f"bob's react with alice's id x1 is applied ({r})")
    e = await send_and_ack(al, {"type": "edit", "room": room, "target": s1, "body": "one!", "id": "x2"})
    eq((e["type"], e.get("seq")), ("ack", 4), f"alice's edit with bob's id x2 is applied ({e})")
    again = await send_and_ack(al, {"type": "message", "room": room, "body": "one", "id": "x1"})
    eq((again["type"], again.get("seq")), ("ack", s1), "alice's resend of x1: her seq")
    r2 = await send_and_ack(bo, {"type": "react", "room": room, "target": s1, "emoji": THUMBS, "id": "x1"})
    eq((r2["type"], r2.get("seq")), ("ack", 3), "bob's resend of his react: its seq")
    for c in (al, bo):
        await c.wait_count(is_event(room), 4, 8, "events")
    await al.roundtrip()
    await asyncio.sleep(0.3)
    eq([(f["seq"], f.get("user"), f.get("kind")) for f in events(al, room)],
       [(1, "alice", None), (2, "bob", None), (3, "bob", "react"), (4, "alice", "edit")], "broadcast once each")
    eq(upd(al, room)[0]["count"], 1, "the react counted")
    if db:
        h = history(nodes[0], room, token("watch"))
        m = [x for x in h["messages"] if x["seq"] == s1][0]
        eq((m.get("reactions"), m["body"]), ({THUMBS: 1}, "one!"), "stored: reacted and edited")


@test(timeout=60, needs=("redis", "pg"))
async def update_ids_are_per_sender():
    await updates_ids_per_sender_check([node("A"), node("B")], db=True)


@test(timeout=30)
async def update_ids_are_per_sender_in_process():
    await updates_ids_per_sender_check([node("solo", redis=False, db=False)], db=False)


async def id_used_twice_check(nodes):
    """One sender's id used for two things (a message, then an edit; an
    edit, then a react) is refused as bad_request and keeps naming the
    first: the message's resend is still its duplicate (answered as a
    conflict, the id was forgotten and the resend stored and broadcast
    twice). An update resent after its target was deleted (its ack lost) is
    acked with its seq, not not_found. History lists "reactions": {} for a
    message without any."""
    room = uniq("idtwice")
    al = await Client.connect(nodes[0], room, token("alice"))
    w = await Client.connect(nodes[-1], room, token("watch"))
    s1 = await post(al, room, "one", "u1")
    s0 = await post(al, room, "untouched", "u0")
    e = await send_and_ack(al, {"type": "edit", "room": room, "target": s1, "body": "x", "id": "u1"})
    eq((e["type"], e.get("code")), ("error", "bad_request"), f"an edit with the message's id ({e})")
    check(f"seq {s1}" in e.get("message", ""), f"the error names the id's seq: {e}")
    again = await send_and_ack(al, {"type": "message", "room": room, "body": "one", "id": "u1"})
    eq((again["type"], again.get("seq")), ("ack", s1), f"the message's resend: its seq ({again})")
    ed = await send_and_ack(al, {"type": "edit", "room": room, "target": s1, "body": "one!", "id": "u2"})
    eq(ed["type"], "ack", f"an edit with a new id ({ed})")
    r = await send_and_ack(al, {"type": "react", "room": room, "target": s1, "emoji": THUMBS, "on": True,
                                "id": "u2"})
    eq((r["type"], r.get("code")), ("error", "bad_request"), f"a react with the edit's id ({r})")
    d = await send_and_ack(al, {"type": "delete", "room": room, "target": s1, "id": "u3"})
    eq(d["type"], "ack", f"the delete ({d})")
    re = await send_and_ack(al, {"type": "edit", "room": room, "target": s1, "body": "one!", "id": "u2"})
    eq((re["type"], re.get("seq")), ("ack", ed["seq"]), f"the edit resent after the delete ({re})")
    nf = await send_and_ack(al, {"type": "edit", "room": room, "target": s1, "body": "?", "id": "u4"})
    eq((nf["type"], nf.get("code")), ("error", "not_found"), f"a new edit of the deleted message ({nf})")
    await w.wait_count(is_event(room), 4, 8, "events")
    await al.roundtrip()
    await asyncio.sleep(0.3)
    eq([(f["seq"], f.get("kind")) for f in events(w, room)],
       [(s1, None), (s0, None), (ed["seq"], "edit"), (d["seq"], "delete")], "each event broadcast once")
    h = history(nodes[0], room, token("watch"))
    m0 = [x for x in h["messages"] if x["seq"] == s0][0]
    eq(m0.get("reactions"), {}, f"a message without reactions: reactions {{}} ({m0})")
    rows = pg_rows(room, "seq, kind")
    if rows is not None:
        eq(rows, [f"{s1}|0", f"{s0}|0", f"{ed['seq']}|1", f"{d['seq']}|2"], "one row per event")


@test(timeout=60, needs=("redis", "pg"))
async def an_id_used_twice_is_refused_and_keeps_its_first():
    await id_used_twice_check([node("A"), node("B")])


@test(timeout=60, needs=("pg",))
async def an_id_used_twice_is_refused_and_keeps_its_first_in_process():
    await id_used_twice_check([node("solo", redis=False)])


@test(timeout=60, needs=("redis", "pg"))
async def concurrent_admin_deletes_without_id():
    """delete frames of one message without an id, 10 at once from admins
    on two nodes (the same admin twice too): exactly one is acked, the
    others answer not_found as they do after it; one delete event."""
    a, b = node("A"), node("B")
    room = uniq("cdel")
    al = await Client.connect(a, room, token("alice"))
    ads = [await Client.connect((a, b)[i % 2], room, token(f"mod{i % 5}", role="admin"))
           for i in range(10)]
    for k in range(3):
        s = await post(al, room, f"rude {k}", f"r{k}")
        marks = [c.mark() for c in ads]
        await asyncio.gather(*[c.send({"type": "delete", "room": room, "target": s}) for c in ads])
        got = []
        for c, m in zip(ads, marks):
            f = await c.wait_for(lambda f: (f["type"] == "ack" and f.get("room") == room)
                                 or f["type"] == "error", 8, start=m, what=f"answer to the delete of {s}")
            got.append((f["type"], f.get("code")))
        eq(sorted(got), [("ack", None)] + [("error", "not_found")] * 9,
           f"delete of {s}: one ack, nine not_found")
        await al.wait_for(lambda f, s=s: f["type"] == "message_update" and f.get("target") == s, 5,
                          what=f"the delete of {s}")
    await al.roundtrip()
    await asyncio.sleep(0.3)
    dels = [f["target"] for f in upd(al, room)]
    eq(len(dels), 3, f"one delete event per message: {dels}")


@test(timeout=60, needs=("redis", "pg"))
async def replay_from_postgres_beyond_the_buffer():
    env = {"CHAT_RECENT_MAX": "10", "CHAT_REPLAY_MAX": "200"}
    a, b = node("A", env=env), node("B", env=env)
    room = uniq("pgr")
    al = await Client.connect(a, room, token("alice"))
    bo = await Client.connect(b, room, token("bob"))
    seqs = []
    for i in range(8):
        seqs.append(await post(al if i % 2 == 0 else bo, room, f"m{i}", f"m{i}"))
        c = al if i % 2 == 0 else bo
        ans = await send_and_ack(c, {"type": "edit", "room": room, "target": seqs[-1],
                                     "body": f"m{i} edited", "id": f"e{i}"})
        eq(ans["type"], "ack", "edit")
        ans = await send_and_ack(bo, {"type": "react", "room": room, "target": seqs[-1],
                                      "emoji": THUMBS, "id": f"r{i}"})
        eq(ans["type"], "ack", "react")
    ans = await send_and_ack(al, {"type": "delete", "room": room, "target": seqs[0], "id": "d0"})
    eq(ans["type"], "ack", "delete")
    head = ans["seq"]
    eq(head, 25, "head")
    await al.wait_count(is_event(room), head, 8, "events")
    live = [strip(f) for f in events(al, room)]
    # the buffer keeps the last 10: since=3 must come from Postgres
    for n, since in ((b, 3), (a, 0)):
        r = await Client.connect(n, room, token("carol"), since=since)
        await r.wait_count(is_event(room), head - since, 10, f"replay since {since}")
        await asyncio.sleep(0.2)
        got = [strip(f) for f in events(r, room)]
        check(not r.errors(), f"replay errors {r.errors()}")
        # from Postgres, the deleted message and its edit come as history shows them:
        # "deleted": true, no body (the delete follows in the same replay)
        want = erased(live[since:])
        if since < seqs[0]:
            m0 = next(f for f in got if f["seq"] == seqs[0])
            check(m0.get("deleted") is True and "body" not in m0, f"replayed deleted message {m0}")
        for e0 in (f for f in got if f["type"] == "message_update" and f["kind"] == "edit"
                   and f["target"] == seqs[0]):
            check(e0.get("deleted") is True and "body" not in e0, f"replayed edit of the deleted message {e0}")
        eq(got, want, f"replay since={since} from Postgres equals the live stream, erased")


@test(timeout=60, needs=("redis", "pg"))
async def history_paging_skips_update_seqs():
    a = node("A")
    room = uniq("hp")
    al = await Client.connect(a, room, token("alice"))
    msgs = []
    for i in range(5):
        msgs.append(await post(al, room, f"m{i}", f"m{i}"))
        for k in range(2):
            ans = await send_and_ack(al, {"type": "react", "room": room, "target": msgs[-1],
                                          "emoji": [THUMBS, HEART][k], "id": f"r{i}{k}"})
            eq(ans["type"], "ack", "react")
    tok = token("alice")
    seen, cursor, pages = [], None, 0
    while True:
        q = {"limit": 2}
        if cursor:
            q["before"] = cursor
        h = history(a, room, tok, **q)
        pages += 1
        for m in h["messages"]:
            eq(m.get("reactions"), {THUMBS: 1, HEART: 1}, f"reactions of {m['seq']}")
            eq(m["type"], "message", "only messages")
        seen = [m["seq"] for m in h["messages"]] + seen
        cursor = h["next_cursor"]
        if not cursor:
            break
        # a new message and an update while paging: the pages stay stable
        if pages == 1:
            await post(al, room, "late", "late")
    eq(seen[:5], msgs, "every message once, update seqs skipped")
    eq(pages, 3, "pages of 2")


@test(timeout=45, needs=("pg",))
async def in_process_bus_single_node():
    """No Redis: the in-process bus decides the same things."""
    n = node("solo", redis=False)
    room = uniq("solo")
    al = await Client.connect(n, room, token("alice"))
    bo = await Client.connect(n, room, token("bob"))
    s1 = await post(al, room, "hi", "m1")
    answers = []
    for c, f in ((bo, {"type": "react", "target": s1, "emoji": THUMBS}),
                 (al, {"type": "react", "target": s1, "emoji": THUMBS}),
                 (bo, {"type": "react", "target": s1, "emoji": THUMBS}),
                 (al, {"type": "edit", "target": s1, "body": "hi!"}),
                 (bo, {"type": "edit", "target": s1, "body": "no"}),
                 (al, {"type": "delete", "target": s1}),
                 (bo, {"type": "react", "target": s1, "emoji": HEART})):
        f = dict(f, room=room, id=uniq("i"))
        ans = await send_and_ack(c, f)
        answers.append(ans["seq"] if ans["type"] == "ack" else ans["code"])
    eq(answers, [2, 3, "rejected", 4, "forbidden", 5, "not_found"], "answers")
    await al.wait_count(is_event(room), 5, 5, "events")
    eq([f.get("count") for f in upd(al, room)], [1, 2, None, None], "counts")
    h = history(n, room, token("alice"))
    eq(h["messages"][0].get("deleted"), True, "deleted in history")


@test(timeout=60, needs=("redis", "pg"))
async def default_authorship_without_update_hooks():
    """protocol.md: "default: the author edits and deletes their own
    messages, a token with the policy's admin role deletes any; anyone in
    the room reacts". A policy without on_edit / on_delete (the harness's
    OPEN_POLICY) gets that default from the core, not "anyone edits
    anything"; a policy's config.admin_role names the admin role; the
    server API's moderator delete stays allowed."""
    key = "itest-upd-key-0123456789"
    a = start_node(redis=True, db=True, env={"CHAT_API_KEYS": key})       # OPEN_POLICY
    room = uniq("open")
    al = await Client.connect(a, room, token("alice"))
    bo = await Client.connect(a, room, token("bob"))
    ad = await Client.connect(a, room, token("root", role="admin"))
    mo = await Client.connect(a, room, token("mo", role="moderator"))
    s1 = await post(al, room, "alice 1", "m1")
    s2 = await post(al, room, "alice 2", "m2")
    s3 = await post(bo, room, "bob 3", "m3")
    answers = []
    for c, f in ((bo, {"type": "edit", "target": s1, "body": "hacked"}),
                 (bo, {"type": "delete", "target": s1}),
                 (mo, {"type": "delete", "target": s1}),
                 (ad, {"type": "edit", "target": s1, "body": "admin edits"}),
                 (al, {"type": "edit", "target": s1, "body": "alice 1!"}),
                 (bo, {"type": "react", "target": s1, "emoji": THUMBS}),
                 (al, {"type": "delete", "target": s1}),
                 (ad, {"type": "delete", "target": s2})):
        f = dict(f, room=room, id=uniq("i"))
        ans = await send_and_ack(c, f)
        answers.append(ans["seq"] if ans["type"] == "ack" else ans["code"])
    eq(answers, ["forbidden", "forbidden", "forbidden", "forbidden", 4, 5, 6, 7],
       "bob edits/deletes alice's: forbidden; a non-admin role and an admin's edit: forbidden; "
       "alice's own edit, bob's react, alice's own delete, the admin's delete: acked")
    # the server API's delete is a moderator's: allowed on any message
    def api_delete(port, path):
        hc = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            hc.request("DELETE", path, body=b"{}", headers={"Authorization": f"Bearer {key}",
                                                          "Content-Type": "application/json"})
            r = hc.getresponse()
            return r.status, r.read()
        finally:
            hc.close()
    st, body = await asyncio.to_thread(api_delete, a.port, f"/api/rooms/{room}/messages/{s3}")
    eq(st, 200, f"API moderator delete of bob's message ({body!r})")
    await al.wait_count(is_event(room), 8, 8, "events")
    h = history(a, room, token("carol"))
    eq([(m["seq"], m.get("deleted", False)) for m in h["messages"]],
       [(s1, True), (s2, True), (s3, True)], "all three deleted in history")

    async def admin_is(n, role, how):
        """on node n, a token with `role` deletes alice's message, "admin" does not"""
        room = uniq("role")
        al = await Client.connect(n, room, token("alice"))
        ad = await Client.connect(n, room, token("root", role="admin"))
        mo = await Client.connect(n, room, token("mo", role=role))
        s1 = await post(al, room, "one", "m1")
        a1 = await send_and_ack(ad, {"type": "delete", "room": room, "target": s1, "id": "d1"})
        eq((a1["type"], a1.get("code")), ("error", "forbidden"), f"role admin under {how}: {a1}")
        a2 = await send_and_ack(mo, {"type": "delete", "room": room, "target": s1, "id": "d2"})
        eq((a2["type"], a2.get("seq")), ("ack", 2), f"role {role} under {how}: {a2}")

    # config.admin_role names the admin role (here "mod": "admin" is nobody)
    await admin_is(start_node(redis=True, db=True, scripts=harness.policy_dir(
        'local M = {config = {admin_role = "mod"}}\nreturn M\n')), "mod", "admin_role=mod")
    # a policy without config.admin_role: CHAT_ADMIN_ROLE names it all the same
    await admin_is(start_node(redis=True, db=True, env={"CHAT_ADMIN_ROLE": "boss"}),  # OPEN_POLICY
                   "boss", "CHAT_ADMIN_ROLE=boss")


@test(timeout=60, needs=("redis", "pg"))
async def dead_node_updates_backfilled():
    """Updates broadcast by a node that dies (kill -9) before its batch
    committed them are stored by a surviving node from the recent buffer,
    like messages: history then shows the edit, the reactions and the
    delete, and the rows are the events the clients saw."""
    a = node("A", env={"CHAT_BATCH_MS": 10000, "CHAT_BACKFILL_GRACE_MS": 60000})
    b = node("B", env={"CHAT_BACKFILL_GRACE_MS": 1000})
    room = uniq("bf")
    al = await Client.connect(a, room, token("alice"))
    w = await Client.connect(b, room, token("watch"))
    frames = [{"type": "message", "body": "one", "id": "m1"},
              {"type": "message", "body": "two", "id": "m2"},
              {"type": "edit", "target": 1, "body": "one, edited", "id": "e1"},
              {"type": "react", "target": 1, "emoji": THUMBS, "id": "r1"},
              {"type": "react", "target": 1, "emoji": HEART, "id": "r2"},
              {"type": "react", "target": 1, "emoji": HEART, "on": False, "id": "r3"},
              {"type": "delete", "target": 2, "id": "d1"}]
    for f in frames:
        await al.send(dict(f, room=room))
        # each update needs its target: wait for the broadcast (A's own
        # acks wait 10 s for the batch)
        await w.wait_count(is_event(room), frames.index(f) + 1, 8, f"broadcast of {f['id']}")
    check(not al.acks(), f"acks came although A's batch waits 10 s: {al.acks()}")
    live = [strip(f) for f in events(w, room)]
    a.kill9()
    h = {}
    for _ in range(40):
        h = history(b, room, token("watch"))
        ms = {m["seq"]: m for m in h["messages"]}
        if 1 in ms and ms[1].get("reactions") == {THUMBS: 1} and ms.get(2, {}).get("deleted"):
            break
        await asyncio.sleep(0.2)
    ms = {m["seq"]: m for m in h["messages"]}
    eq(sorted(ms), [1, 2], f"messages in history after the backfill: {h}")
    eq((ms[1].get("body"), ms[1].get("reactions")), ("one, edited", {THUMBS: 1}), "state of 1")
    eq(ms[1].get("edited_ts"), live[2]["ts"], "edited_ts")
    eq(ms[2].get("deleted"), True, "2 deleted")
    # the stored events are the broadcast ones
    rows = pg_rows(room, "seq, kind, coalesce(target, 0), coalesce(emoji, ''), coalesce(react_count, -1)")
    if rows is not None:
        eq(rows, [f"1|0|0||-1", "2|0|0||-1", "3|1|1||-1", f"4|3|1|{THUMBS}|1", f"5|3|1|{HEART}|1",
                  f"6|3|1|{HEART}|0", "7|2|2||-1"], "stored rows")


@test(timeout=60, needs=("redis", "pg"))
async def resent_updates_of_a_dead_node_acked_before_the_backfill():
    """Edit, react and delete broadcast by a node that dies before its
    commit, resent (same ids, no ack) through another node long before the
    backfill (grace 60 s): each is acked with its first seq at once, stored
    as broadcast (the react's count too), and none is broadcast again.
    Before, each resend was answered `unavailable` until the backfill had
    stored it."""
    a = node("A", env={"CHAT_BATCH_MS": 10000, "CHAT_BACKFILL_GRACE_MS": 60000})
    b = node("B", env={"CHAT_BACKFILL_GRACE_MS": 60000})
    room = uniq("rd")
    alb = await Client.connect(b, room, token("alice"))
    w = await Client.connect(b, room, token("watch"))
    await post(alb, room, "one", "m1")
    await post(alb, room, "two", "m2")
    ala = await Client.connect(a, room, token("alice"), since=2)
    frames = [{"type": "edit", "target": 1, "body": "one, edited", "id": "e1"},
              {"type": "react", "target": 1, "emoji": THUMBS, "id": "r1"},
              {"type": "delete", "target": 2, "id": "d1"}]
    for k, f in enumerate(frames):
        await ala.send(dict(f, room=room))
        await w.wait_count(is_event(room), 3 + k, 8, f"broadcast of {f['id']}")
    live = {f.get("id"): strip(f) for f in events(w, room)}
    check(not [f for f in ala.frames if f["type"] == "ack"], "A acked although its batch waits")
    a.kill9()
    for f in frames:
        r = await send_and_ack(alb, dict(f, room=room), timeout=8)
        eq((r["type"], r.get("seq")), ("ack", live[f["id"]]["seq"]), f"answer to the resend of {f['id']}")
    await alb.roundtrip()
    eq([x["seq"] for x in events(w, room)], [1, 2, 3, 4, 5], "events watched (no second broadcast)")
    ms = {m["seq"]: m for m in history(b, room, token("watch"))["messages"]}
    eq((ms[1].get("body"), ms[1].get("reactions"), ms[1].get("edited_ts")),
       ("one, edited", {THUMBS: 1}, live["e1"]["ts"]), "state of 1")
    eq(ms[2].get("deleted"), True, "2 deleted")
    rows = pg_rows(room, "seq, kind, coalesce(target, 0), coalesce(react_count, -1), ts")
    if rows is not None:
        eq(rows[2:], [f"3|1|1|-1|{live['e1']['ts']}", f"4|3|1|1|{live['r1']['ts']}",
                      f"5|2|2|-1|{live['d1']['ts']}"], "stored update rows (as broadcast)")


@test(timeout=45, needs=("redis", "pg"))
async def unread_counts_messages_not_updates_nor_deleted():
    """GET /rooms/unread counts messages only: not the updates' seqs, not a
    deleted message (its head is still the room's last seq)."""
    a = node("A")
    room = uniq("un")
    al = await Client.connect(a, room, token("alice"))
    bo = await Client.connect(a, room, token("bob"))
    s0 = await post(al, room, "read this", "m0")
    await bo.reply({"type": "read", "room": room, "seq": s0},
                   lambda f: f["type"] == "read_ack" and f.get("room") == room, 8, "read_ack")
    s1 = await post(al, room, "one", "m1")
    s2 = await post(al, room, "two", "m2")
    for f in ({"type": "edit", "room": room, "target": s1, "body": "one!", "id": "e1"},
              {"type": "react", "room": room, "target": s1, "emoji": THUMBS, "id": "r1"},
              {"type": "delete", "room": room, "target": s2, "id": "d1"}):
        ans = await send_and_ack(al, f)
        eq(ans["type"], "ack", f"{f['type']}: {ans}")
    head = ans["seq"]
    st, _, body = http_get(a.port, "/rooms/unread", {"Authorization": f"Bearer {token('bob')}"})
    eq(st, 200, f"unread status {body[:200]!r}")
    rooms = {e["room"]: e for e in json.loads(body)["rooms"]}
    eq((rooms[room]["unread"], rooms[room]["seq"], rooms[room]["read_seq"]), (1, head, s0),
       "unread: message 1 only (message 2 deleted, 3 updates not counted); head the last seq")


@test(timeout=90, needs=("redis", "pg"))
async def redis_restarted_behind_seeds_heads_and_states_from_postgres():
    """Redis comes back BEHIND Postgres (an older snapshot; an AOF fsynced
    every second and a host crash; a replica promoted before it had the last
    writes): the room's seq key and a message's reaction state are present
    but older than what was acked and stored. A head or state written under
    another Redis run is read again from Postgres before use (docs/redis.md
    "Heads, seeds and epochs"): welcome reports the stored head, the next
    message continues after the stored seqs (not a seq again, which the
    store would refuse as a conflict), the next reaction counts every stored
    one, and history holds each seq once."""
    rd = harness.Redis(harness.RUN.tmpdir("redis-behind"))
    rd.start()
    try:
        def mk(name):
            return start_node(redis=rd.url, db=True, scripts=SCRIPTS, name=f"{name}-{uniq('')}")
        a = mk("A")
        room = uniq("behind")
        al = await Client.connect(a, room, token("alice", "Alice"))
        bo = await Client.connect(a, room, token("bob", "Bob"))
        s1 = await post(al, room, "one", "m1")
        s2 = await post(al, room, "two", "m2")
        r1 = await send_and_ack(al, {"type": "react", "room": room, "target": s1, "emoji": THUMBS,
                                     "id": "r1"})
        eq(r1["type"], "ack", f"react before the snapshot: {r1}")
        eq(await asyncio.to_thread(rd.command, "SAVE"), b"+OK\r\n", "snapshot")
        r2 = await send_and_ack(bo, {"type": "react", "room": room, "target": s1, "emoji": THUMBS,
                                     "id": "r2"})
        d = await send_and_ack(al, {"type": "delete", "room": room, "target": s2, "id": "d1"})
        s6 = await post(al, room, "six", "m6")
        eq([s1, s2, r1["seq"], r2.get("seq"), d.get("seq"), s6], [1, 2, 3, 4, 5, 6],
           "seqs before the restart (all acked)")
        await al.close()
        await bo.close()
        await harness.wait_no_subscriber(rd, room)
        rd.kill9()
        await asyncio.sleep(0.3)
        rd.start()   # loads the snapshot: head 3, one reaction on message 1
        eq(await asyncio.to_thread(rd.command, "GET", f"chat:{{{room}}}:seq"), b"$1\r\n3\r\n",
           "Redis came back behind (head 3 of 6 stored)")
        await harness.wait_ready(a)
        b = mk("B")   # never held the room: no floor of its own
        ca = await Client.connect(b, room, token("carol", "Carol"))
        eq(ca.welcome().get("seq"), 6, f"welcome: the stored head {ca.welcome()}")
        ans = await send_and_ack(ca, {"type": "message", "room": room, "body": "seven", "id": "m7"})
        eq((ans["type"], ans.get("seq")), ("ack", 7), f"next message after the stored 6: {ans}")
        r3 = await send_and_ack(ca, {"type": "react", "room": room, "target": s1, "emoji": THUMBS,
                                     "id": "r3"})
        eq((r3["type"], r3.get("seq")), ("ack", 8), f"react after the restart: {r3}")
        await ca.wait_count(lambda f: f["type"] == "message_update" and f.get("seq") == 8, 1, 8,
                            "the react's update")
        u = [f for f in upd(ca, room) if f["seq"] == 8][0]
        eq(u["count"], 3, f"the third reaction counts the two stored ones: {u}")
        e = await send_and_ack(ca, {"type": "edit", "room": room, "target": s2, "body": "back",
                                    "id": "e1"})
        eq((e["type"], e.get("code")), ("error", "not_found"), f"edit of the deleted message: {e}")
        js = history(b, room, token("carol"))
        seqs = [m["seq"] for m in js["messages"]]
        eq(seqs, [1, 2, 6, 7], "history: the messages, each seq once")
        got = {m["seq"]: m for m in js["messages"]}
        check(got[7].get("body") == "seven" and got[2].get("deleted") is True and
              got[1].get("reactions") == {THUMBS: 3}, f"history in its current state: {js}")
        _, _, text = await harness.ahttp(b.port, "/metrics")
        check("chat_bus_seeds_total" in text.decode(), "chat_bus_seeds_total exported")
        await ca.close()
        a.kill9()
        b.kill9()
    finally:
        rd.stop()
        harness.release_port(rd.port)


@test(timeout=90, needs=("redis", "pg"))
async def redis_restarted_behind_keeps_acked_ids_exactly_once():
    """Exactly-once across a Redis that lost its client-id keys (docs/redis.md
    "Heads, seeds and epochs"): a message and a reaction are stored and acked,
    Redis comes back from a snapshot taken before them (their id keys gone),
    and the sender, on a new connection, resends both with the same ids as
    if the acks had been lost: each is answered with the ack of its first
    seq, a member on another node (who got them before) gets no second
    delivery, the next message takes the next seq, and history holds the
    message once."""
    rd = harness.Redis(harness.RUN.tmpdir("redis-ids"))
    rd.start()
    try:
        def mk(name):
            return start_node(redis=rd.url, db=True, scripts=SCRIPTS, name=f"{name}-{uniq('')}")
        a, b = mk("A"), mk("B")
        room = uniq("idsback")
        al = await Client.connect(a, room, token("alice", "Alice"))
        bo = await Client.connect(b, room, token("bob", "Bob"))
        s1 = await post(al, room, "zero", "m0")
        eq(await asyncio.to_thread(rd.command, "SAVE"), b"+OK\r\n", "snapshot")
        s2 = await post(al, room, "one", "x1")
        r = await send_and_ack(al, {"type": "react", "room": room, "target": s1, "emoji": THUMBS,
                                    "id": "rx"})
        eq((r["type"], [s1, s2, r.get("seq")]), ("ack", [1, 2, 3]), f"acked before the loss: {r}")
        await bo.wait_count(lambda f: f["type"] == "message" and f.get("id") == "x1", 1, 8,
                            "bob got x1")
        await al.close()
        await bo.close()
        await harness.wait_no_subscriber(rd, room)   # nobody holds the room: nothing seeds it
        rd.kill9()
        await asyncio.sleep(0.3)
        rd.start()   # the snapshot: head 1, no id key of x1 or rx
        eq(await asyncio.to_thread(rd.command, "EXISTS", f"chat:{{{room}}}:sid:5:alice:x1"), b":0\r\n",
           "Redis lost x1's id key")
        eq(await asyncio.to_thread(rd.command, "GET", f"chat:{{{room}}}:seq"), b"$1\r\n1\r\n",
           "Redis came back behind (head 1 of 3 stored)")
        await harness.wait_ready(a)
        await harness.wait_ready(b)
        bo = await Client.connect(b, room, token("bob", "Bob"))   # his welcome seeds the room
        eq(bo.welcome().get("seq"), 3, f"welcome: the stored head {bo.welcome()}")
        al2 = await Client.connect(a, room, token("alice", "Alice"))
        again = await send_and_ack(al2, {"type": "message", "room": room, "body": "one", "id": "x1"})
        eq((again["type"], again.get("seq")), ("ack", 2), f"the resend of x1: its first seq {again}")
        ragain = await send_and_ack(al2, {"type": "react", "room": room, "target": s1,
                                          "emoji": THUMBS, "id": "rx"})
        eq((ragain["type"], ragain.get("seq")), ("ack", 3), f"the resend of rx: {ragain}")
        s4 = await post(al2, room, "after", "m4")
        eq(s4, 4, "the next message takes the next seq")
        await bo.wait_count(lambda f: f["type"] == "message" and f.get("id") == "m4", 1, 10,
                            "bob got the next message")
        eq([f.get("seq") for f in bo.frames if f["type"] in ("message", "message_update")],
           [4], "bob (there before the resends) got the next message only: no second x1 or rx")
        eq([f.get("seq") for f in al2.frames if f["type"] == "message" and f.get("id") == "x1"], [],
           "no second broadcast of x1")
        js = history(a, room, token("alice"))
        eq([(m["seq"], m.get("id")) for m in js["messages"]], [(1, "m0"), (2, "x1"), (4, "m4")],
           "history: x1 once")
        eq(js["messages"][0].get("reactions"), {THUMBS: 1}, f"one reaction stored: {js}")
        await al2.close()
        await bo.close()
        a.kill9()
        b.kill9()
    finally:
        rd.stop()
        harness.release_port(rd.port)


@test(timeout=90, needs=("redis", "pg"))
async def redis_restarted_empty_keeps_ids_committed_after_the_seed():
    """Exactly-once for a message published before a Redis loss and
    committed only after another node seeded the room (docs/redis.md "A
    commit after the loss"): node A's insert is held by a table lock (SHARE:
    it blocks INSERT, not the SELECT of a seed), Alice's message X gets its
    seq on A (Bob on B receives it) but no ack; Alice's connection drops;
    Redis restarts empty; B seeds the room (X is not in Postgres yet) and
    Bob's next message is published; the lock goes, A commits X and writes
    its id back (the Redis run changed since X's publish). Alice, on a new
    connection, resends X: acked with X's first seq as a duplicate, Bob gets
    no second X, history holds X once. (Before the fix the resend got a new
    seq and X was broadcast and stored twice.)"""
    rd = harness.Redis(harness.RUN.tmpdir("redis-idcommit"))
    rd.start()
    pg = harness.RUN.need_pg()
    locker = None
    try:
        def mk(name):
            return start_node(redis=rd.url, db=True, scripts=SCRIPTS, name=f"{name}-{uniq('')}")
        a, b = mk("A"), mk("B")
        room = uniq("idcommit")
        al = await Client.connect(a, room, token("alice", "Alice"))
        bo = await Client.connect(b, room, token("bob", "Bob"))
        s1 = await post(al, room, "zero", "m0")
        eq(s1, 1, "the first message")
        locker = harness.lock_table(pg, "messages", "SHARE")
        eq(await asyncio.to_thread(locker.stdout.readline), "locked\n", "messages locked (SHARE)")
        await al.send({"type": "message", "room": room, "body": "held", "id": "hx"})
        fx = await bo.wait_count(lambda f: f["type"] == "message" and f.get("id") == "hx", 1, 8,
                                 "bob got hx (published; its insert waits for the lock)")
        eq(fx[0]["seq"], 2, "hx got seq 2")
        check(not [f for f in al.frames if f.get("id") == "hx" and f["type"] == "ack"],
              "hx not acked (not committed)")
        await al.close()   # its ack is lost with the connection
        rd.kill9()
        await asyncio.sleep(0.3)
        rd.start()   # empty: no seq, no id key
        eq(await asyncio.to_thread(rd.command, "EXISTS", f"chat:{{{room}}}:sid:5:alice:hx"), b":0\r\n",
           "Redis lost hx's id key")
        await harness.wait_ready(a)
        await harness.wait_ready(b)
        # B seeds the room (Postgres: head 1, hx not there) and publishes
        await bo.send({"type": "message", "room": room, "body": "from bob", "id": "b3"})
        await bo.wait_count(lambda f: f["type"] == "message" and f.get("id") == "b3", 1, 10,
                            "bob's message published after the restart")
        b3 = [f for f in bo.frames if f["type"] == "message" and f.get("id") == "b3"][0]["seq"]
        eq(b3, 3, "bob's message takes 3 (his node's floor: it delivered 2)")
        eq(await asyncio.to_thread(rd.command, "EXISTS", f"chat:{{{room}}}:sid:5:alice:hx"), b":0\r\n",
           "the seed did not restore hx (not committed when it ran)")
        await asyncio.to_thread(harness.unlock, locker)
        locker = None
        # A commits hx; then (after the fix) writes its id back
        for _ in range(100):
            if pg.psql("chatd", f"SELECT count(*) FROM messages WHERE room='{room}' AND "
                               "client_id='hx'").strip() == "1":
                break
            await asyncio.sleep(0.1)
        for _ in range(30):
            r = await asyncio.to_thread(rd.command, "EXISTS", f"chat:{{{room}}}:sid:5:alice:hx")
            if r == b":1\r\n":
                break
            await asyncio.sleep(0.1)
        al2 = await Client.connect(a, room, token("alice", "Alice"))
        again = await send_and_ack(al2, {"type": "message", "room": room, "body": "held", "id": "hx"})
        eq((again["type"], again.get("seq")), ("ack", 2), f"the resend of hx: its first seq {again}")
        s4 = await post(al2, room, "after", "m4")
        eq(s4, 4, "the next message takes the next seq")
        await bo.wait_count(lambda f: f["type"] == "message" and f.get("id") == "m4", 1, 10,
                            "bob got the next message")
        eq([f.get("seq") for f in bo.frames if f["type"] == "message" and f.get("id") == "hx"], [2],
           "bob got hx once")
        js = history(a, room, token("alice"))
        eq([(m["seq"], m.get("id")) for m in js["messages"]],
           [(1, "m0"), (2, "hx"), (3, "b3"), (4, "m4")], "history: hx once")
        await al2.close()
        await bo.close()
        a.kill9()
        b.kill9()
    finally:
        if locker:
            locker.kill()
            locker.wait()
        rd.stop()
        harness.release_port(rd.port)
