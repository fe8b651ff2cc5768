"""readstate: read state, read receipts, unread counts and history retention
(protocol.md "Read state and unread counts (v2)", "History retention (v2)")
on real chatd nodes with Redis and Postgres.

- read marks: monotonic, clamped to the head the connection knows, stored
  before read_ack (the row is in Postgres when read_ack arrives), kept across
  a kill -9; read_seq in welcome and in the join answer;
- read receipts on every node (the reader's own other connections too), not
  for a read that moves nothing, off per policy (config.read_receipts,
  on_read);
- GET /rooms/unread: exact on every node and for every device of the user
  (own messages excluded, the read seq of another device counted);
- retention: old rows deleted in batches (intermediate counts seen), history
  and since= stop at the oldest kept message at once, seqs never reused
  after every row is gone (Redis flushed, a new node), one pass at a time
  (an advisory lock held elsewhere stops every node), on_retention per room.
"""
import asyncio
import http.client
import subprocess
import time

from harness import (Client, check, eq, start_node, token, uniq, policy_dir, test, ahttp_json,
                     metric_value, http_get)
import harness

NEEDS = ("redis", "pg")


def is_msg(room=None):
    return lambda f: f["type"] == "message" and (room is None or f.get("room") == room)


def is_receipt(room, user=None):
    return lambda f: (f["type"] == "read" and f.get("room") == room
                      and (user is None or f.get("user") == user))


def rnode(policy=None, env=None, redis=True):
    kw = {}
    if policy is not None:
        kw["scripts"] = policy_dir(policy)
    return start_node(redis=redis, db=True, env=env or {}, **kw)


def pg():
    return harness.RUN.need_pg()


def sql(q):
    return pg().psql("chatd", q).strip()


async def read(c, room, seq, timeout=5):
    """Sends read, returns the read_ack (or the error) for room."""
    return await c.reply({"type": "read", "room": room, "seq": seq},
                         lambda f: (f["type"] == "read_ack" and f.get("room") == room)
                         or (f["type"] == "error" and f.get("room") in (room, None)),
                         timeout, what=f"read_ack of {room}@{seq}")


async def unread(n, tok):
    st, js, body = await ahttp_json(n.port, "/rooms/unread", tok)
    eq(st, 200, f"GET /rooms/unread on {n.name}: {body[:200]!r}")
    check(isinstance(js, dict) and isinstance(js.get("rooms"), list), f"bad body {body[:200]!r}")
    return {r["room"]: r for r in js["rooms"]}


async def history(n, room, before=None, limit=200):
    q = f"?limit={limit}" + (f"&before={before}" if before else "")
    st, js, body = await ahttp_json(n.port, f"/rooms/{room}/messages{q}", token("reader"))
    eq(st, 200, f"history of {room}: {body[:200]!r}")
    return js


# ---------------------------------------------------------------- read state
@test(timeout=60, needs=NEEDS)
async def read_monotonic_durable_clamped_and_in_welcome():
    n = rnode()
    room, other = uniq("rd"), uniq("rd2")
    bob = await Client.connect(n, room, token("bob"))
    for i in range(5):
        await harness.send_acked(bob, f"m{i}", f"rd-m{i}")
    alice = await Client.connect(n, room, token("alice"))
    eq(alice.welcome().get("read_seq"), 0, f"welcome of a never-read room: {alice.welcome()}")
    await alice.roundtrip()
    a = await read(alice, room, 3)
    eq((a["type"], a.get("seq")), ("read_ack", 3), f"read 3: {a}")
    # durable before the answer: the row is there the instant read_ack arrived
    eq(sql(f"SELECT read_seq FROM read_state WHERE user_id='alice' AND room='{room}'"), "3",
       "stored read_seq right after read_ack")
    a = await read(alice, room, 2)
    eq(a.get("seq"), 3, f"a lower read is a no-op answered with the stored value: {a}")
    a = await read(alice, room, 999)
    eq(a.get("seq"), 5, f"a read beyond the head is clamped to the head (5): {a}")
    a = await read(alice, room, 4)
    eq(a.get("seq"), 5, "never backwards")
    eq(sql(f"SELECT read_seq FROM read_state WHERE user_id='alice' AND room='{room}'"), "5",
       "stored read_seq")
    # bad requests and non-members
    e = await alice.error_for({"type": "read", "room": room})
    eq(e.get("code"), "bad_request", f"read without seq: {e}")
    e = await alice.error_for({"type": "read", "room": room, "seq": -1})
    eq(e.get("code"), "bad_request", f"read with seq -1: {e}")
    e = await alice.error_for({"type": "read", "room": room, "seq": "3"})
    eq(e.get("code"), "bad_request", f"read with a string seq: {e}")
    e = await alice.error_for({"type": "read", "room": other, "seq": 1})
    eq((e.get("code"), e.get("room")), ("not_member", other), f"read of a room not joined: {e}")
    # the join answer carries read_seq too: 0 for a never-read room, the
    # stored one otherwise
    j = await alice.join(other)
    eq((j["type"], j.get("read_seq")), ("presence_state", 0), f"join answer of a never-read room: {j}")
    # kill -9 and a new node: the value is kept (it was committed)
    n.kill9()
    n2 = rnode()
    c2 = await Client.connect(n2, room, token("alice"))
    eq(c2.welcome().get("read_seq"), 5, f"welcome after kill -9: {c2.welcome()}")
    c3 = await Client.connect(n2, other, token("alice"))
    j = await c3.join(room)
    eq(j.get("read_seq"), 5, f"join answer of a read room: {j}")


@test(timeout=60, needs=NEEDS)
async def read_seq_pending_when_its_lookup_does_not_answer_then_told():
    """The read state lookup of a join does not answer within
    CHAT_READ_LOOKUP_TIMEOUT_MS (read_state held in ACCESS EXCLUSIVE mode):
    welcome and the join answer say "read_seq": 0 with "read_seq_pending":
    true (unknown right now, yet an integer as the contract types it: a
    strictly typed client, Swift Int, Kotlin Int, Rust u64, still decodes
    the frame; before, "read_seq": null, which it cannot decode), without
    waiting longer; once Postgres answers, the connection is told the
    stored value as the user's own read receipt, which clients already
    apply to their read position. The placeholder 0 is never stored: the
    read state is still 2 after."""
    n = rnode(env={"CHAT_READ_LOOKUP_TIMEOUT_MS": 300})
    room, other = uniq("rl"), uniq("rl2")
    alice = await Client.connect(n, room, token("alice"))
    for i in range(3):
        await harness.send_acked(alice, f"m{i}", f"rl-m{i}")
    eq((await read(alice, room, 2)).get("seq"), 2, "read 2")
    await alice.close()
    # the other room held by the node (its head known: a first use would ask
    # Postgres for it, behind the held lookup)
    bob = await Client.connect(n, other, token("bob"))
    await harness.send_acked(bob, "o0", "rl-o0")
    p = harness.lock_table(pg(), "read_state", "ACCESS EXCLUSIVE")
    try:
        eq(await asyncio.to_thread(p.stdout.readline), "locked\n", "read_state locked")
        t0 = time.monotonic()
        c = await Client.connect(n, room, token("alice"))
        w = c.welcome()
        check(type(w.get("read_seq")) is int and w["read_seq"] == 0
              and w.get("read_seq_pending") is True,
              f"welcome while the read state does not answer: {w}")
        check(time.monotonic() - t0 < 3, f"welcome after {time.monotonic() - t0:.1f} s")
        j = await c.join(other)
        check(j["type"] == "presence_state" and type(j.get("read_seq")) is int
              and j["read_seq"] == 0 and j.get("read_seq_pending") is True,
              f"join answer while the read state does not answer: {j}")
        await asyncio.sleep(1)
        eq([f for f in c.frames if f["type"] == "read"], [], "no read state told while locked")
    finally:
        harness.unlock(p)
    f = await c.wait_for(is_receipt(room, "alice"), 15, what="the read state of the room")
    eq(f.get("seq"), 2, f"the stored read_seq, told once Postgres answers: {f}")
    g = await c.wait_for(is_receipt(other, "alice"), 15, what="the read state of the other room")
    eq(g.get("seq"), 0, f"the other room, never read: {g}")
    # the placeholder 0 stored nothing: the read state is still 2, and the other room has none
    eq(sql(f"SELECT read_seq FROM read_state WHERE user_id = 'alice' AND room = '{room}'"), "2",
       "the stored read state after the pending answers")
    eq(sql(f"SELECT count(*) FROM read_state WHERE user_id = 'alice' AND room = '{other}'"), "0",
       "no read state stored for the other room")
    # the connection goes on as usual: a read is acked and a new join answers read_seq,
    # no longer pending
    eq((await read(c, room, 3)).get("seq"), 3, "read 3 after")
    c2 = await Client.connect(n, room, token("alice"))
    w2 = c2.welcome()
    check(w2.get("read_seq") == 3 and "read_seq_pending" not in w2,
          f"welcome once Postgres answers: {w2}")
    j2 = await c2.join(other)
    check(j2.get("read_seq") == 0 and "read_seq_pending" not in j2,
          f"join answer once Postgres answers: {j2}")


@test(timeout=60, needs=NEEDS)
async def receipts_on_every_node_and_only_when_moving():
    a, b = rnode(), rnode()
    room = uniq("rcpt")
    alice = await Client.connect(a, room, token("alice", "Alice"))
    alice2 = await Client.connect(b, room, token("alice", "Alice"))   # another device
    bob = await Client.connect(b, room, token("bob"))
    carol = await Client.connect(a, room, token("carol"))
    for i in range(4):
        await harness.send_acked(bob, f"x{i}", f"rc-x{i}")
    for c in (alice, alice2, carol):
        await c.wait_count(is_msg(room), 4, 5, "messages")
    marks = {c.label: c.mark() for c in (alice, alice2, bob, carol)}
    ack = await read(alice, room, 3)
    eq(ack.get("seq"), 3, "read_ack")
    for c in (alice, alice2, bob, carol):
        f = await c.wait_for(is_receipt(room, "alice"), 5, start=marks[c.label],
                             what=f"receipt at {c.label}")
        eq((f.get("seq"), f.get("name")), (3, "Alice"), f"receipt at {c.label}: {f}")
    # a read that moves nothing: read_ack, no receipt
    m2 = {c.label: c.mark() for c in (bob, carol)}
    ack = await read(alice2, room, 2)
    eq(ack.get("seq"), 3, "read_ack of a lower read")
    await asyncio.sleep(0.6)
    for c in (bob, carol):
        eq([f for f in c.frames[m2[c.label]:] if f["type"] == "read"], [],
           f"no receipt for a read that moved nothing at {c.label}")
    # the other device moves it: everyone hears it
    ack = await read(alice2, room, 4)
    eq(ack.get("seq"), 4, "read_ack from the second device")
    for c in (alice, bob, carol):
        f = await c.wait_for(lambda f: is_receipt(room, "alice")(f) and f.get("seq") == 4, 5,
                             start=marks[c.label], what=f"receipt 4 at {c.label}")
    check(metric_value(http_get(b.port, "/metrics")[2].decode(), "chat_read_receipts_total") >= 1,
          "chat_read_receipts_total on the node that stored the read")


@test(timeout=60, needs=NEEDS)
async def receipts_off_by_policy_config_and_on_read():
    # config switch: no receipts at all, reads still stored and acked
    off = rnode(policy="local M = {config = {read_receipts = false}}\nreturn M\n")
    room = uniq("off")
    alice = await Client.connect(off, room, token("alice"))
    bob = await Client.connect(off, room, token("bob"))
    await harness.send_acked(bob, "hi", "off-1")
    mk = bob.mark()
    ack = await read(alice, room, 1)
    eq(ack.get("seq"), 1, "read_ack with receipts off")
    await asyncio.sleep(0.8)
    eq([f for f in bob.frames[mk:] if f["type"] == "read"], [], "no receipt with read_receipts=false")
    # on_read: per room (quiet-* rooms: none), sees the seq
    pol = ("local M = {}\n"
           "function M.on_read(ctx, r)\n"
           "  if ctx.room:sub(1, 6) == 'quiet-' then return false end\n"
           "  if r.seq == 2 then return false end\n"
           "end\nreturn M\n")
    n = rnode(policy=pol)
    quiet, loud = uniq("quiet-"), uniq("loud")
    for room in (quiet, loud):
        alice = await Client.connect(n, room, token("alice"))
        bob = await Client.connect(n, room, token("bob"))
        await harness.send_acked(bob, "a", f"{room}-1")
        await harness.send_acked(bob, "b", f"{room}-2")
        await harness.send_acked(bob, "c", f"{room}-3")
        mk = bob.mark()
        for s in (1, 2, 3):
            eq((await read(alice, room, s)).get("seq"), s, f"read_ack {room}@{s}")
        await asyncio.sleep(0.8)
        got = [f.get("seq") for f in bob.frames[mk:] if f["type"] == "read"]
        want = [] if room == quiet else [1, 3]
        eq(got, want, f"receipts in {room} (on_read refuses quiet-* and seq 2)")


@test(timeout=60, needs=NEEDS)
async def unread_exact_across_devices_and_nodes():
    a, b = rnode(), rnode()
    r1, r2 = uniq("u1"), uniq("u2")
    tok = token("alice")
    dev1 = await Client.connect(a, r1, tok)
    dev2 = await Client.connect(b, r1, tok)
    await dev1.join(r2)
    await dev2.join(r2)
    bob = await Client.connect(a, r1, token("bob"))
    await bob.join(r2)
    carol = await Client.connect(b, r2, token("carol"))
    await carol.join(r1)
    # mark both rooms read at the start: a read state exists from then on
    eq((await read(dev1, r1, 0)).get("seq"), 0, "read 0")
    eq((await read(dev1, r2, 0)).get("seq"), 0, "read 0")
    who = {}
    plan = [(bob, r1), (carol, r1), (dev1, r1), (dev2, r1), (bob, r2), (carol, r2), (bob, r1),
            (dev2, r2), (carol, r2), (carol, r1), (bob, r2), (dev1, r2)]
    for i, (c, room) in enumerate(plan):
        seq = await harness.send_acked(c, f"p{i}", f"un-{i}", room=room)
        who[(room, seq)] = "alice" if c in (dev1, dev2) else "other"

    def expect(room, read_seq):
        return sum(1 for (rm, s), u in who.items() if rm == room and s > read_seq and u == "other")

    for n in (a, b):
        u = await unread(n, tok)
        for room in (r1, r2):
            head = max(s for (rm, s) in who if rm == room)
            eq((u[room]["seq"], u[room]["read_seq"], u[room]["unread"]), (head, 0, expect(room, 0)),
               f"unread of {room} on {n.name} before any read")
    # device 1 (node a) reads r1 up to 4, device 2 (node b) reads r2 up to 3
    await dev1.wait_count(is_msg(r1), 6, 5, "r1 messages")
    await dev2.wait_count(is_msg(r2), 6, 5, "r2 messages")
    eq((await read(dev1, r1, 4)).get("seq"), 4, "dev1 reads r1")
    eq((await read(dev2, r2, 3)).get("seq"), 3, "dev2 reads r2")
    for n in (a, b):
        u = await unread(n, tok)
        eq((u[r1]["read_seq"], u[r1]["unread"]), (4, expect(r1, 4)), f"r1 on {n.name} after the reads")
        eq((u[r2]["read_seq"], u[r2]["unread"]), (3, expect(r2, 3)), f"r2 on {n.name} after the reads")
    # more messages from others count, own do not
    s = await harness.send_acked(bob, "later", "un-later", room=r1)
    who[(r1, s)] = "other"
    s = await harness.send_acked(dev2, "mine", "un-mine", room=r1)
    who[(r1, s)] = "alice"
    for n in (a, b):
        u = await unread(n, tok)
        eq(u[r1]["unread"], expect(r1, 4), f"r1 on {n.name} after one more from bob and one own")
    # bob has no read state in these rooms: they are not in his list
    ub = await unread(a, token("bob"))
    check(r1 not in ub and r2 not in ub, f"bob never read: {ub}")
    # auth
    st, _, _ = await ahttp_json(a.port, "/rooms/unread")
    eq(st, 401, "GET /rooms/unread without a token")
    st, _, _ = await ahttp_json(a.port, "/rooms/unread", "not.a.jwt")
    eq(st, 401, "GET /rooms/unread with a bad token")


# ---------------------------------------------------------------- retention
RET_KEY = "itest-retention-api-key-0123"
RET_ENV = {"CHAT_RETENTION_INTERVAL_MS": "300", "CHAT_RETENTION_BATCH": "7",
           "CHAT_RETENTION_BATCH_MS": "250", "CHAT_API_KEYS": RET_KEY}


def row_count(room):
    return int(sql(f"SELECT count(*) FROM messages WHERE room='{room}'"))


def age(room, upto_seq, days=3):
    sql(f"UPDATE messages SET ts = ts - {days} * 86400000 WHERE room='{room}' AND seq <= {upto_seq}")


@test(timeout=90, needs=NEEDS)
async def retention_boundary_batches_gap_and_no_seq_reuse():
    rd = harness.Redis(harness.RUN.tmpdir("redis-ret"))
    rd.start()
    try:
        pol = "local M = {config = {history_days = 1}}\nreturn M\n"
        n = rnode(policy=pol, env=RET_ENV, redis=rd.url)
        room = uniq("ret")
        c = await Client.connect(n, room, token("alice"))
        for i in range(30):
            await harness.send_acked(c, f"r{i}", f"ret-{i}")
        age(room, 20)
        counts = set()
        end = time.monotonic() + 20
        while time.monotonic() < end:
            k = row_count(room)
            counts.add(k)
            if k == 10:
                break
            await asyncio.sleep(0.05)
        eq(row_count(room), 10, "rows left after retention (seqs 21..30)")
        check(len(counts - {30, 10}) >= 1,
              f"deleted in batches of 7: intermediate row counts seen {sorted(counts)}")
        eq(sql(f"SELECT min(seq) FROM messages WHERE room='{room}'"), "21", "oldest kept seq")
        eq(sql(f"SELECT kept_from, head FROM rooms WHERE room='{room}'"), "21|30", "rooms row")
        mt = http_get(n.port, "/metrics")[2].decode()
        check((metric_value(mt, "chat_retention_deleted_total") or 0) >= 20,
              "chat_retention_deleted_total counts the 20 rows")
        # history stops at the oldest kept message
        js = await history(n, room, limit=200)
        eq([m["seq"] for m in js["messages"]], list(range(21, 31)), "history after retention")
        eq(js["next_cursor"], None, "next_cursor at the oldest kept message")
        js = await history(n, room, limit=5)
        eq([m["seq"] for m in js["messages"]], list(range(26, 31)), "first page of 5")
        js = await history(n, room, before=js["next_cursor"], limit=5)
        eq(([m["seq"] for m in js["messages"]], js["next_cursor"]), (list(range(21, 26)), None),
           "the last page ends at the oldest kept message")
        # since= older than the oldest kept message: gap_too_large (the recent
        # buffer in Redis still has those messages: it must not be used)
        r = await Client.connect(n, room, token("bob"), since=5)
        f = await r.wait_for(lambda f: f["type"] == "error", 5, what="gap_too_large")
        eq((f.get("code"), f.get("room")), ("gap_too_large", room), f"since=5: {f}")
        await r.roundtrip()
        eq(r.messages(room), [], "nothing replayed below the oldest kept message")
        r2 = await Client.connect(n, room, token("bob"), since=20)
        await r2.wait_count(is_msg(room), 10, 5, "replay since=20")
        eq((r2.seqs(room), r2.errors()), (list(range(21, 31)), []), "since=20 replays 21..30")
        # a removed message takes no update (the recent buffer and the
        # reaction state in Redis still know it: they must not be used):
        # not_found, over the WebSocket and the API
        for i, f in enumerate(({"type": "edit", "target": 5, "body": "x"},
                               {"type": "delete", "target": 5},
                               {"type": "react", "target": 6, "emoji": "\U0001F44D", "on": True})):
            f = dict(f, room=room, id=f"gone-{i}")
            e = await c.reply(f, lambda x, i=i: x.get("id") == f"gone-{i}", 5, what=f"answer to {f}")
            eq((e["type"], e.get("code")), ("error", "not_found"), f"{f['type']} of a removed message: {e}")
        hc = http.client.HTTPConnection("127.0.0.1", n.port, timeout=5)
        hc.request("DELETE", f"/api/rooms/{room}/messages/7", b"{}",
                   {"Authorization": f"Bearer {RET_KEY}"})
        resp = hc.getresponse()
        st, body = resp.status, resp.read()
        hc.close()
        eq(st, 404, f"the API's delete of a removed message ({body[:120]!r})")
        # delete everything; the head survives: a new node with an empty
        # Redis hands out 31, never 1
        for x in (c, r, r2):
            await x.close()
        age(room, 30)
        end = time.monotonic() + 15
        while row_count(room) and time.monotonic() < end:
            await asyncio.sleep(0.1)
        eq(row_count(room), 0, "every row deleted")
        n.kill9()
        eq(await asyncio.to_thread(rd.command, "FLUSHALL"), b"+OK\r\n", "FLUSHALL")
        n2 = rnode(policy=pol, env=RET_ENV, redis=rd.url)
        c2 = await Client.connect(n2, room, token("carol"))
        eq(c2.welcome().get("seq"), 30, f"head after deleting everything: {c2.welcome()}")
        eq(await harness.send_acked(c2, "after", "ret-after"), 31, "the next seq after deleting everything")
        js = await history(n2, room)
        eq([m["seq"] for m in js["messages"]], [31], "history holds only the new message")
    finally:
        rd.stop()


def seq_events(c, room):
    """(type, seq, target) of the messages and message updates c got in room."""
    return [(f["type"], f["seq"], f.get("target")) for f in c.frames
            if f["type"] in ("message", "message_update") and f.get("room") == room]


@test(timeout=90, needs=NEEDS)
async def retention_never_replays_updates_of_removed_messages():
    """An edit, a reaction and a delete stored after retention's boundary
    whose target retention removed are not replayed by since= (the client
    cannot have their message: history ends above it), neither from the
    recent buffer nor from Postgres; history and the boundary unchanged."""
    rd = harness.Redis(harness.RUN.tmpdir("redis-retu"))
    rd.start()
    try:
        pol = "local M = {config = {history_days = 1}}\nreturn M\n"
        n = rnode(policy=pol, env=RET_ENV, redis=rd.url)
        room = uniq("retu")
        c = await Client.connect(n, room, token("alice"))
        for i in range(3):
            await harness.send_acked(c, f"u{i}", f"retu-{i}")
        for i, f in enumerate(({"type": "react", "target": 1, "emoji": "\U0001F44D", "on": True},
                               {"type": "edit", "target": 2, "body": "edited"},
                               {"type": "delete", "target": 3})):
            f = dict(f, room=room, id=f"upd-{i}")
            a = await c.reply(f, lambda x, i=i: x.get("id") == f"upd-{i}" and x["type"] in ("ack", "error"), 5, what=f"answer to {f}")
            eq((a["type"], a.get("seq")), ("ack", 4 + i), f"{f['type']} acked: {a}")
        eq(await harness.send_acked(c, "new", "retu-new"), 7, "a new message after the updates")
        age(room, 3)          # the three messages are old; their updates (4..6) are not
        end = time.monotonic() + 15
        while row_count(room) != 4 and time.monotonic() < end:
            await asyncio.sleep(0.05)
        eq(sql(f"SELECT kept_from FROM rooms WHERE room='{room}'"), "4", "boundary after the messages")
        eq(row_count(room), 4, "rows left: the three updates and the new message")
        js = await history(n, room)
        eq([m["seq"] for m in js["messages"]], [7], "history holds only the new message")
        # since=3 (the boundary's: honoured) from the recent buffer
        r = await Client.connect(n, room, token("bob"), since=3)
        await r.wait_count(is_msg(room), 1, 5, "replay since=3")
        await r.roundtrip()
        eq((seq_events(r, room), r.errors()), ([("message", 7, None)], []),
           "since=3 from the recent buffer replays the new message only")
        # ... and from Postgres (Redis emptied, a new node: the buffer is gone)
        for x in (c, r):
            await x.close()
        n.kill9()
        eq(await asyncio.to_thread(rd.command, "FLUSHALL"), b"+OK\r\n", "FLUSHALL")
        n2 = rnode(policy=pol, env=RET_ENV, redis=rd.url)
        r2 = await Client.connect(n2, room, token("bob"), since=3)
        await r2.wait_count(is_msg(room), 1, 8, "replay since=3 from Postgres")
        await r2.roundtrip()
        eq((seq_events(r2, room), r2.errors()), ([("message", 7, None)], []),
           "since=3 from Postgres replays the new message only")
        # live delivery goes on after the skipped seqs: the next seq arrives once
        c2 = await Client.connect(n2, room, token("alice"))
        eq(await harness.send_acked(c2, "next", "retu-next"), 8, "the next seq")
        await r2.wait_count(is_msg(room), 2, 5, "the live message")
        eq(seq_events(r2, room), [("message", 7, None), ("message", 8, None)], "live after the replay")
    finally:
        rd.stop()


@test(timeout=60, needs=NEEDS)
async def retention_one_pass_at_a_time_and_per_room_hook():
    pol = ("local M = {config = {history_days = 0}}\n"
           "function M.on_retention(room)\n"
           "  if room:sub(1, 6) == 'short-' then return 2 end\n"
           "  if room:sub(1, 4) == 'bad-' then return -1 end\n"
           "end\nreturn M\n")
    a = rnode(policy=pol, env=RET_ENV)
    b = rnode(policy=pol, env=RET_ENV)
    short, keep, bad = uniq("short-"), uniq("keep"), uniq("bad-")
    # another session holds the retention lock: no node deletes anything
    # (held until this test lets go, whatever the machine's speed: a session
    # that waits on its stdin, polled until the lock shows as granted)
    key = 6516353908837
    holder = subprocess.Popen(
        ["psql", "-q", "-h", "127.0.0.1", "-p", str(pg().port), "-U", "postgres", "-d", "chatd"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    holder.stdin.write(f"SELECT pg_advisory_lock({key});\n".encode())
    holder.stdin.flush()
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if sql(f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    f"AND classid = {key >> 32} AND objid = {key & 0xffffffff} "
                    f"AND objsubid = 1") == "1":
            break
        await asyncio.sleep(0.05)
    else:
        check(False, "the holder session never got the retention lock")
    try:
        for room in (short, keep, bad):
            c = await Client.connect(a, room, token("alice"))
            for i in range(6):
                await harness.send_acked(c, f"{room}{i}", f"{room}-{i}")
            age(room, 6, days=5)      # 5 days old: older than 2 days
        await asyncio.sleep(1.5)
        eq(row_count(short), 6, "nothing deleted while another session holds the lock")
        locked = sum(metric_value(http_get(n.port, "/metrics")[2].decode(), "chat_retention_passes_total",
                                  'result="locked"') or 0 for n in (a, b))
        check(locked >= 2, f"passes skipped because of the lock: {locked}")
    finally:
        holder.stdin.write(b"\\q\n")
        holder.stdin.close()
        holder.wait(10)
    end = time.monotonic() + 15
    while row_count(short) and time.monotonic() < end:
        await asyncio.sleep(0.1)
    eq(row_count(short), 0, "short-* rooms keep 2 days: every 5-day-old row deleted")
    await asyncio.sleep(1.0)
    eq(row_count(keep), 6, "on_retention returned nil and history_days is 0: kept")
    eq(row_count(bad), 6, "on_retention returned -1 (an error): kept")
    errs = sum(metric_value(http_get(n.port, "/metrics")[2].decode(), "chat_script_errors_total",
                            'hook="on_retention"') or 0 for n in (a, b))
    check(errs >= 1, "the bad on_retention return is counted as a script error")
