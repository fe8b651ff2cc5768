"""cluster: chatd on a local Redis Cluster 7 (3 masters + 3 replicas, started
by this group with tests/cluster/rig.py), 3 chatd nodes pointed at different
seed nodes (`redis+cluster://127.0.0.1:<port>`), Postgres as the history.

Covers issue 12 item 6 and the contract's "Redis topology (v2)": rooms spread
over every shard (keys and sharded pub/sub channels on the room's shard);
ordering and exactly-once across nodes; presence and typing across nodes;
idempotent publish across nodes; seed lists (a replica, a dead first seed); a
room's slot migrated under load (SETSLOT sequence and `redis-cli --cluster
reshard`); one shard down while the others keep serving; a master killed
under load and its replica promoted (zero acked messages lost, /readyz names
the shard meanwhile); the whole cluster down and back (unavailable meanwhile,
recovery without a restart, no seq reused).

Every test skips, with the reason, only when the chatd under test refuses a
`redis+cluster://` URL at start (cluster mode not built in yet). The rig is
started once for the group and healed (dead nodes restarted, state ok)
before each test; it is stopped by PID at the end of the run.
"""
import asyncio
import os
import re
import subprocess
import sys
import time

import websockets

import harness
from harness import (Client, Node, TestFailure, TestSkip, ahttp, ahttp_json, check, eq, token,
                     uniq, describe_seq_problem, contiguous, test)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "cluster"))
import rig as rigmod  # noqa: E402

NEEDS = ("pg",)
HB_MS, TTL_MS, TYPING_MS = 500, 1500, 3000
# chatd's answer when it does not know the URL scheme (cluster mode not built in)
REFUSED = re.compile(
    r"must start with redis://"
    r"|(unsupported|not supported|unknown|invalid)[^\n]{0,40}(scheme|redis\+cluster)"
    r"|(scheme|redis\+cluster)[^\n]{0,40}(unsupported|not supported|unknown|invalid)", re.I)

_state = {"rig": None, "skip": None, "probed": False}


# ---------------------------------------------------------------- rig + nodes
def the_rig():
    """The group's cluster: started on first use, healed on later uses
    (recreated when it cannot be healed)."""
    r = _state["rig"]
    if r is not None:
        try:
            r.heal()
            return r
        except rigmod.RigError as e:
            print(f"#   cluster rig could not heal ({e}); recreating it", flush=True)
            try:
                r.destroy()
            except rigmod.RigError:
                pass
            _state["rig"] = None
    d = harness.RUN.tmpdir("rediscluster")
    r = rigmod.Cluster(d, masters=3, replicas=1, node_timeout_ms=1000)
    try:
        r.start()
    except rigmod.RigError as e:
        if "not installed" in str(e) or "Redis 7 needed" in str(e):
            _state["skip"] = f"no Redis Cluster rig: {e}"
            raise TestSkip(_state["skip"])
        raise TestFailure(f"cluster rig did not start: {e}")
    harness.RUN.add_service(r)
    _state["rig"] = r
    return r


def probe_cluster_support(r):
    """Skips when chatd refuses the redis+cluster:// URL at start."""
    if _state["skip"]:
        raise TestSkip(_state["skip"])
    if _state["probed"]:
        return
    n = Node(name="probe-" + uniq(""), redis=f"redis+cluster://127.0.0.1:{r.masters()[0]}",
             db=True)
    n.start(wait=False)
    end = time.time() + 10
    while time.time() < end and n.alive():
        try:
            st, _, _ = harness.http_get(n.port, "/healthz", timeout=0.5)
            if st == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    if not n.alive():
        log = n.log_text()
        m = REFUSED.search(log)
        if m:
            line = [ln for ln in log.splitlines() if m.group(0) in ln]
            _state["skip"] = ("cluster mode not built in: chatd refuses the redis+cluster:// "
                              f"URL at start ({(line or [m.group(0)])[-1].strip()})")
            n.kill9()
            raise TestSkip(_state["skip"])
        raise TestFailure(f"chatd exited at start with a redis+cluster:// URL (code "
                          f"{n.proc.returncode}): {n.log_tail(6)}")
    n.kill9()
    _state["probed"] = True


def setup():
    """The healthy rig, after checking that chatd has cluster mode."""
    if _state["skip"]:
        raise TestSkip(_state["skip"])
    r = the_rig()
    probe_cluster_support(r)
    phase("rig healthy", reset=True)
    return r


_t0 = [time.monotonic()]


def phase(what, reset=False):
    """CHATD_TEST_VERBOSE=1: prints the time since the test's start."""
    if reset:
        _t0[0] = time.monotonic()
    if os.environ.get("CHATD_TEST_VERBOSE"):
        print(f"#   {time.monotonic() - _t0[0]:6.1f}s {what}", flush=True)


def cluster_url(*ports):
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)


def start_nodes(seed_lists, env=None, names="ABC"):
    """chatd nodes, node i with seeds seed_lists[i] (ports), started in
    parallel; returns once each answers /readyz 200."""
    nodes = []
    for i, seeds in enumerate(seed_lists):
        nodes.append(Node(name=f"{names[i]}-{uniq('')}", redis=cluster_url(*seeds), db=True,
                          env=env))
    for n in nodes:
        n.start(wait=False)
    for n in nodes:
        n.wait_healthy(timeout=20)
        n.wait_healthy(timeout=20, path="/readyz")
    return nodes


def three_nodes(r, env=None):
    """Three chatd nodes, each seeded with a different master."""
    return start_nodes([[m] for m in r.masters()[:3]], env=env)


async def member(node, rooms, user, label=None, heartbeat=False, name=None):
    """A client of `node` in every room of `rooms` (the first by URL, the
    others by join)."""
    c = await Client.connect(node, rooms[0], token(user, name), label=label or
                             f"{user}@{node.name}", heartbeat=heartbeat, user=user)
    for room in rooms[1:]:
        js = await c.join(room)
        eq(js.get("type"), "presence_state", f"{c.label}: join {room} ({js})")
    return c


def is_msg(room=None):
    return lambda f: f["type"] == "message" and (room is None or f.get("room") == room)


def flat(d):
    return [x for v in d.values() for x in v]


# ---------------------------------------------------------------- load
class Load:
    """Publishers (one client per node, member of every room) sending
    round-robin into the rooms at `rate` msgs/s each until stop()."""

    def __init__(self, pubs, rooms, rate, tag="m"):
        self.pubs = pubs
        self.rooms = rooms
        self.rate = rate
        self.tag = tag
        self.sent = []           # (pub, id, room, monotonic send time)
        self._stop = asyncio.Event()
        self.tasks = []

    def start(self):
        self.tasks = [asyncio.create_task(self._run(k, p)) for k, p in enumerate(self.pubs)]
        return self

    async def _run(self, k, p):
        i = 0
        nxt = time.monotonic()
        while not self._stop.is_set():
            room = self.rooms[(i + k) % len(self.rooms)]
            mid = f"{self.tag}{k}-{i}"
            self.sent.append((p, mid, room, time.monotonic()))
            try:
                await p.send_msg(f"{self.tag}:{k}:{i}", id=mid, room=room)
            except websockets.ConnectionClosed:
                return
            i += 1
            nxt += 1.0 / self.rate
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))

    async def stop(self, answer_timeout=25):
        """Stops sending; waits until every sent message is answered (ack or
        error). Returns {id: answer frame}."""
        self._stop.set()
        await asyncio.gather(*self.tasks)
        for p in self.pubs:
            ids = {mid for (pp, mid, _, _) in self.sent if pp is p}
            await p.wait_count(lambda f: f["type"] in ("ack", "error") and f.get("id") in ids,
                               len(ids), answer_timeout, "answers (ack or error) to sent messages")
        return self.answers()

    def answers(self):
        out = {}
        for p in self.pubs:
            ids = {mid for (pp, mid, _, _) in self.sent if pp is p}
            for f in p.frames:
                if f["type"] in ("ack", "error") and f.get("id") in ids:
                    if f["id"] in out:
                        raise TestFailure(f"{p.label}: message {f['id']} answered twice: "
                                          f"{strip(out[f['id']])} and {strip(f)}")
                    out[f["id"]] = f
        return out

    def room_of(self):
        return {mid: room for (_, mid, room, _) in self.sent}

    def sent_at(self):
        return {mid: t for (_, mid, _, t) in self.sent}


def strip(f):
    return {k: v for k, v in f.items() if k != "_t"}


def acked_of(answers):
    """{id: (room, seq)} of the acks among the answers."""
    return {i: (f.get("room"), f.get("seq")) for i, f in answers.items() if f["type"] == "ack"}


def error_codes(answers):
    out = {}
    for f in answers.values():
        if f["type"] == "error":
            out[f.get("code")] = out.get(f.get("code"), 0) + 1
    return out


async def final_round(pubs, rooms, timeout=20, tag="fin"):
    """Every publisher sends one more message into every room and needs an
    ack (its connection continues after the fault). Returns {id: (room, seq)}."""
    out = {}
    for k, p in enumerate(pubs):
        for room in rooms:
            mid = f"{tag}{k}-{room}"
            end = time.monotonic() + timeout
            while True:
                mk = p.mark()
                await p.send_msg(f"{tag} {k}", id=mid, room=room)
                f = await p.wait_for(lambda f: f["type"] in ("ack", "error") and
                                     f.get("id") == mid, max(1.0, end - time.monotonic()),
                                     start=mk, what=f"answer to {mid} in {room}")
                if f["type"] == "ack":
                    out[mid] = (room, f["seq"])
                    break
                if f.get("code") != "unavailable" or time.monotonic() > end:
                    raise TestFailure(f"{p.label}: {mid} in {room} after the fault answered "
                                      f"{strip(f)}")
                await asyncio.sleep(0.3)     # same id again: idempotent resend
    return out


# ---------------------------------------------------------------- checks
async def wait_delivered(watchers, heads, timeout=20):
    """Every watcher reaches seq heads[room] in every room."""
    for w in watchers:
        for room, head in heads.items():
            await w.wait_for(lambda f: f["type"] == "message" and f.get("room") == room
                             and f["seq"] >= head, timeout, what=f"seq {head} of {room}")
    await asyncio.sleep(0.3)


def pg_rows(rooms):
    """{room: [(seq, client_id)] ordered by seq} from Postgres."""
    pg = harness.RUN.pg
    rl = ",".join("'" + r.replace("'", "''") + "'" for r in rooms)
    r = subprocess.run(["psql", pg.url, "-tAc",
                        f"SELECT room, seq, coalesce(client_id, '') FROM messages "
                        f"WHERE room IN ({rl}) ORDER BY room, seq"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    if r.returncode != 0:
        raise TestFailure("psql: " + r.stderr.decode().strip())
    out = {room: [] for room in rooms}
    for ln in r.stdout.decode().splitlines():
        if not ln.strip():
            continue
        room, seq, cid = ln.split("|", 2)
        out[room].append((int(seq), cid))
    return out


def check_streams(watchers, rooms, acked, start_at_one=True):
    """The checks every test ends with, on the watchers (clients that were
    members of every room from before the first publish):
      - each watcher's stream of each room: no duplicate seq or id, gap-free
        (from 1 when start_at_one), in seq order;
      - every watcher saw the same (seq, id, user, body) per room;
      - every acked message was delivered to every watcher with its acked seq;
      - Postgres holds every acked (id, seq) exactly once, and exactly the
        (seq, id) the clients saw (no seq reused, nothing seen but unstored).
    acked: {id: (room, seq)}."""
    ref = {}
    for w in watchers:
        for room in rooms:
            msgs = w.messages(room)
            seqs = [m["seq"] for m in msgs]
            ids = [m.get("id") for m in msgs]
            check(len(seqs) == len(set(seqs)) and contiguous(seqs, 1 if start_at_one else None),
                  f"{w.label} room {room}: {describe_seq_problem(seqs)} "
                  f"(first {seqs[:3]}, last {seqs[-3:]}, {len(seqs)} messages)")
            dup = sorted({i for i in ids if ids.count(i) > 1})
            check(not dup, f"{w.label} room {room}: ids delivered twice: {dup[:5]}")
            view = [(m["seq"], m.get("id"), m.get("user"), m.get("body")) for m in msgs]
            if room not in ref:
                ref[room] = (w.label, view)
            elif view != ref[room][1]:
                a, b = ref[room][1], view
                k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a),
                                                                                        len(b)))
                raise TestFailure(f"room {room}: {w.label} and {ref[room][0]} saw different "
                                  f"streams from index {k}: {b[k:k+2]} vs {a[k:k+2]} "
                                  f"(lengths {len(b)} / {len(a)})")
    for room in rooms:
        seen = {v[1]: v[0] for v in ref[room][1]} if room in ref else {}
        lost = [(i, s) for i, (r, s) in acked.items() if r == room and seen.get(i) != s]
        check(not lost, f"room {room}: {len(lost)} acked messages not delivered with their "
              f"acked seq (id, acked seq): {lost[:5]}; delivered as "
              f"{[seen.get(i) for i, _ in lost[:5]]}")
    rows = pg_rows(rooms)
    for room in rooms:
        got = rows[room]
        by_id = {}
        for seq, cid in got:
            by_id.setdefault(cid, []).append(seq)
        for i, (r, s) in acked.items():
            if r != room:
                continue
            check(by_id.get(i) == [s], f"Postgres room {room}: acked {i} (seq {s}) stored as "
                  f"seqs {by_id.get(i)}")
        if room in ref:
            seen = [(v[0], v[1] or "") for v in ref[room][1]]
            if seen != got:
                only_seen = sorted(set(seen) - set(got))[:4]
                only_pg = sorted(set(got) - set(seen))[:4]
                raise TestFailure(f"room {room}: the clients' stream differs from Postgres: "
                                  f"seen by clients, not stored {only_seen}; stored, not seen "
                                  f"{only_pg} ({len(seen)} seen, {len(got)} rows)")


def check_outage_answers(answers, ids, sent_at, t_back, what):
    """Messages sent while their shard was down: each is answered
    `unavailable` (within 8 s), or held and acked once the shard is back;
    never acked while it is down, never another error code; at least one
    `unavailable` (the client learns it must resend)."""
    check(ids, f"no message was sent {what}")
    for i in ids:
        f = answers[i]
        lat = f["_t"] - sent_at[i]
        if f["type"] == "error":
            check(f.get("code") == "unavailable", f"{i} sent {what} answered {strip(f)}")
            check(lat <= 8.0, f"{i} sent {what}: `unavailable` came {lat:.1f}s after the send")
        else:
            check(f["_t"] >= t_back, f"{i} sent {what} acked while the shard was down: "
                  f"{strip(f)}")
    check(any(answers[i]["type"] == "error" for i in ids),
          f"none of the {len(ids)} messages sent {what} was answered `unavailable`")


async def check_replay(nodes, rooms, depth=25):
    """A new client per room resumes with since=head-depth (on node k % n):
    it gets exactly since+1..head, as stored in Postgres, whether the replay
    comes from the room's shard or from Postgres."""
    rows = pg_rows(rooms)
    for k, room in enumerate(rooms):
        got = rows[room]
        check(got, f"room {room}: no row in Postgres")
        head = got[-1][0]
        since = max(0, head - depth)
        n = nodes[k % len(nodes)]
        c = await Client.connect(n, room, token("late"), since=since)
        eq(c.welcome().get("seq"), head, f"welcome.seq of {room} on {n.name}")
        await c.wait_count(is_msg(room), head - since, 10, f"replayed messages since {since}")
        await asyncio.sleep(0.2)
        view = [(m["seq"], m.get("id") or "") for m in c.messages(room)]
        want = [x for x in got if x[0] > since]
        check(view == want, f"room {room}: replay since={since} on {n.name} gave "
              f"{describe_seq_problem([v[0] for v in view])}, {len(view)} messages; differs from "
              f"Postgres at {next((i for i, (a, b) in enumerate(zip(view, want)) if a != b), '-')}")
        await c.close()


async def readyz(node):
    try:
        st, _, body = await ahttp(node.port, "/readyz", timeout=2)
        return st, body.decode("utf-8", "replace")
    except OSError as e:
        return None, repr(e)


def names_shard(body, shard):
    """The /readyz body names the shard: one of its nodes' ports, or one of
    its slot ranges (lo-hi)."""
    for p in shard["ports"]:
        if re.search(rf"(?<!\d){p}(?!\d)", body):
            return True
    return any(f"{lo}-{hi}" in body for lo, hi in shard["slots"])


def shard_desc(r, master):
    s = r.shard_of_port(master)
    return {"ports": [n["port"] for n in s["nodes"]], "slots": s["slots"], "master": master}


class ReadyWatch:
    """Polls /readyz of some nodes every 100 ms in the background, keeping
    (time, status, body) per node; the first answer of each node (taken
    while healthy) is its baseline."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.log = {n.name: [] for n in nodes}
        self._stop = False
        self.task = asyncio.create_task(self._run())

    async def started(self):
        while any(not v for v in self.log.values()):
            await asyncio.sleep(0.02)
        return self

    def reported(self, node, shard, after):
        """First answer after `after` that differs from the healthy baseline
        and names the shard (the status is the node's choice)."""
        st0, body0 = self.log[node.name][0][1:]
        return self.first(node, lambda st, b: st is not None and (st, b) != (st0, body0)
                          and names_shard(b, shard), after)

    async def _run(self):
        while not self._stop:
            res = await asyncio.gather(*(readyz(n) for n in self.nodes))
            t = time.monotonic()
            for n, (st, body) in zip(self.nodes, res):
                self.log[n.name].append((t, st, body))
            await asyncio.sleep(0.1)

    async def stop(self):
        self._stop = True
        await self.task

    def first(self, node, pred, after=0.0):
        for t, st, body in self.log[node.name]:
            if t >= after and pred(st, body):
                return t, st, body
        return None

    def show(self):
        if os.environ.get("CHATD_TEST_VERBOSE"):
            for n in self.nodes:
                print(f"#   /readyz of {n.name}: {self.summary(n)}", flush=True)

    def summary(self, node):
        out = []
        for t, st, body in self.log[node.name]:
            e = f"{st} {body.strip()[:300]}"
            if not out or out[-1][1] != e:
                out.append((t, e))
        return [e for _, e in out][:8]


async def wait_ready(nodes, timeout, what):
    end = time.monotonic() + timeout
    for n in nodes:
        st, body = None, ""
        while time.monotonic() < end:
            st, body = await readyz(n)
            if st == 200:
                break
            await asyncio.sleep(0.2)
        check(st == 200, f"/readyz of {n.name} {what}: {st} {body.strip()[:200]}")


def key_room_slots(r, room):
    """(slot, owner port, keys of the slot on the owner)."""
    slot = r.room_slot(room)
    owner = r.slot_owner(slot)
    keys = rigmod.call(owner, "CLUSTER", "GETKEYSINSLOT", slot, 100)
    return slot, owner, keys


def shard_channels(port):
    return rigmod.call(port, "PUBSUB", "SHARDCHANNELS") or []


# ---------------------------------------------------------------- tests
@test(timeout=90, needs=NEEDS)
async def rooms_spread_over_every_shard():
    r = setup()
    nodes = three_nodes(r)
    by_shard = r.rooms_on_every_shard(uniq("sp"), per_shard=2)
    rooms = flat(by_shard)
    eq(len(by_shard), 3, "shards serving slots")
    watchers = [await member(n, rooms, f"w{i}") for i, n in enumerate(nodes)]
    pubs = [await member(n, rooms, f"p{i}") for i, n in enumerate(nodes)]
    acked = {}
    for k, p in enumerate(pubs):
        for room in rooms:
            for j in range(4):
                await p.send_msg(f"s{k}.{j}", id=f"s{k}-{room}-{j}", room=room)
    for p in pubs:
        for f in await p.wait_count(lambda f: f["type"] in ("ack", "error") and f.get("id"),
                                    4 * len(rooms), 20, "answers"):
            check(f["type"] == "ack", f"{p.label}: {strip(f)}")
            acked[f["id"]] = (f["room"], f["seq"])
    await wait_delivered(watchers + pubs, {room: 12 for room in rooms})
    check_streams(watchers + pubs, rooms, acked)
    # the room's keys and sharded channel live on the shard of {room}
    masters = r.masters()
    for owner, rs in by_shard.items():
        for room in rs:
            slot, o, keys = key_room_slots(r, room)
            eq(o, owner, f"owner of room {room}'s slot {slot}")
            tagged = [k for k in keys if "{" + room + "}" in k]
            check(tagged, f"room {room} (slot {slot}): no key with the hash tag {{{room}}} on "
                  f"its master {owner}; keys of the slot: {keys[:5]}")
            chans = [c for c in shard_channels(owner) if room in c]
            check(chans, f"room {room}: no sharded pub/sub channel (PUBSUB SHARDCHANNELS) on "
                  f"its master {owner} although 3 chatd nodes have members in it")
            for c in chans:
                n = rigmod.call(owner, "PUBSUB", "SHARDNUMSUB", c)[1]
                check(n >= len(nodes), f"room {room}: {n} SSUBSCRIBE subscribers of {c} on "
                      f"{owner}, want one per chatd node ({len(nodes)})")
            for m in masters:
                if m != owner:
                    other = [c for c in shard_channels(m) if room in c]
                    check(not other, f"room {room} (on {owner}) has shard channels on {m}: "
                          f"{other}")
            for nd in r.live():
                classic = rigmod.call(nd.port, "PUBSUB", "CHANNELS", f"*{room}*")
                check(not classic, f"room {room}: classic (broadcast) pub/sub channels on "
                      f"{nd.port}: {classic} (sharded pub/sub expected)")


@test(timeout=90, needs=NEEDS)
async def order_and_exactly_once_across_nodes():
    r = setup()
    nodes = three_nodes(r)
    rooms = flat(r.rooms_on_every_shard(uniq("ord"), per_shard=1))
    watchers = []
    for i, n in enumerate(nodes):
        watchers.append(await member(n, rooms, f"w{i}a"))
        watchers.append(await member(n, rooms, f"w{i}b"))
    pubs = [await member(n, rooms, f"p{i}") for i, n in enumerate(nodes)]
    per_room = 40

    async def publish(k, p):
        for j in range(per_room):
            for room in rooms:
                await p.send_msg(f"{k}:{j}", id=f"o{k}-{room}-{j}", room=room)
            if j % 4 == 0:
                await asyncio.sleep(0.01)
    await asyncio.gather(*(publish(k, p) for k, p in enumerate(pubs)))
    total = per_room * len(pubs)
    acked = {}
    for p in pubs:
        for f in await p.wait_count(lambda f: f["type"] in ("ack", "error") and f.get("id"),
                                    per_room * len(rooms), 30, "answers"):
            check(f["type"] == "ack", f"{p.label}: {strip(f)}")
            acked[f["id"]] = (f["room"], f["seq"])
    await wait_delivered(watchers + pubs, {room: total for room in rooms})
    check_streams(watchers + pubs, rooms, acked)
    for room in rooms:
        for k in range(len(pubs)):
            order = [acked[f"o{k}-{room}-{j}"][1] for j in range(per_room)]
            check(order == sorted(order), f"room {room}: messages of publisher {k} stored out "
                  f"of send order")
    for n in nodes:
        for room in rooms:
            late = await Client.connect(n, room, token("late"))
            eq(late.welcome().get("seq"), total, f"welcome.seq of {room} on {n.name}")
            await late.close()


@test(timeout=90, needs=NEEDS)
async def presence_and_typing_across_nodes():
    r = setup()
    env = {"CHAT_HEARTBEAT_MS": HB_MS, "CHAT_PRESENCE_TTL_MS": TTL_MS,
           "CHAT_TYPING_TTL_MS": TYPING_MS}
    nodes = three_nodes(r, env=env)
    rooms = flat(r.rooms_on_every_shard(uniq("pt"), per_shard=1))
    obs = [await member(n, rooms, f"obs{i}", heartbeat=True) for i, n in enumerate(nodes)]
    await asyncio.sleep(0.3)
    users = []
    for k, room in enumerate(rooms):
        n = nodes[k % 3]
        users.append(await Client.connect(n, room, token(f"u{k}", f"User {k}"), heartbeat=True,
                                          user=f"u{k}"))

    def pres(room, event, user):
        return lambda f: (f["type"] == "presence" and f.get("room") == room
                          and f.get("event") == event and f.get("user") == user)
    for k, room in enumerate(rooms):
        for o in obs:
            f = await o.wait_for(pres(room, "join", f"u{k}"), 5,
                                 what=f"presence join of u{k} in {room}")
            eq(f.get("name"), f"User {k}", "presence.name")
    for k, room in enumerate(rooms):
        for n in nodes:
            st, js, _ = await ahttp_json(n.port, f"/rooms/{room}/presence", token("reader"))
            eq(st, 200, f"GET presence of {room} on {n.name}")
            got = {x.get("user") for x in js.get("users", [])}
            check(f"u{k}" in got, f"GET presence of {room} on {n.name}: u{k} missing ({got})")
    # typing of u_k reaches every observer (3 nodes), never its sender
    is_typing = lambda room, user: (lambda f: f["type"] == "typing" and f.get("room") == room
                                    and f.get("user") == user)
    for k, (room, u) in enumerate(zip(rooms, users)):
        await u.send({"type": "typing"})
    for k, room in enumerate(rooms):
        for o in obs:
            f = await o.wait_for(is_typing(room, f"u{k}"), 3, what=f"typing of u{k} in {room}")
            eq((f.get("name"), f.get("ttl_ms")), (f"User {k}", TYPING_MS), "typing fields")
    await asyncio.sleep(0.5)
    for k, (room, u) in enumerate(zip(rooms, users)):
        check(not [f for f in u.frames if f["type"] == "typing"], f"u{k} got its own typing")
        for o in obs:
            eq(sum(1 for f in o.frames if is_typing(room, f"u{k}")(f)), 1,
               f"typings of u{k} at {o.label}")
    # a second connection of each user, on the next node: no second join;
    # closing the first: no leave while the second heartbeats
    seconds = []
    for k, room in enumerate(rooms):
        seconds.append(await Client.connect(nodes[(k + 1) % 3], room,
                                            token(f"u{k}", f"User {k}"), heartbeat=True,
                                            user=f"u{k}"))
    await asyncio.sleep(0.5)
    for u in users:
        await u.close()
    await asyncio.sleep(TTL_MS / 1000 + 1.0)
    for k, room in enumerate(rooms):
        for o in obs:
            n_join = sum(1 for f in o.frames if pres(room, "join", f"u{k}")(f))
            n_leave = sum(1 for f in o.frames if pres(room, "leave", f"u{k}")(f))
            eq((n_join, n_leave), (1, 0), f"join/leave events of u{k} in {room} at {o.label} "
               f"while its second connection (on {nodes[(k + 1) % 3].name}) is live")
    # leave: exactly one leave per user at every observer
    for u in seconds:
        await u.close()
    for k, room in enumerate(rooms):
        for o in obs:
            await o.wait_for(pres(room, "leave", f"u{k}"), TTL_MS / 1000 + 3,
                             what=f"presence leave of u{k} in {room}")
    await asyncio.sleep(1.0)
    for k, room in enumerate(rooms):
        for o in obs:
            n_join = sum(1 for f in o.frames if pres(room, "join", f"u{k}")(f))
            n_leave = sum(1 for f in o.frames if pres(room, "leave", f"u{k}")(f))
            eq((n_join, n_leave), (1, 1), f"join/leave events of u{k} in {room} at {o.label}")
        st, js, _ = await ahttp_json(nodes[k % 3].port, f"/rooms/{room}/presence",
                                     token("reader"))
        got = {x.get("user") for x in js.get("users", [])}
        check(f"u{k}" not in got, f"u{k} still listed in {room} after its leave: {got}")


@test(timeout=90, needs=NEEDS)
async def idempotent_publish_across_nodes():
    r = setup()
    nodes = three_nodes(r)
    rooms = flat(r.rooms_on_every_shard(uniq("idem"), per_shard=1))
    watchers = [await member(n, rooms, f"w{i}") for i, n in enumerate(nodes)]
    pa, pb, pc = [await member(n, rooms, "pub", label=f"pub@{n.name}") for n in nodes]
    acked = {}

    def answer(c, mid, room, start):
        return c.wait_for(lambda f: f["type"] in ("ack", "error") and f.get("id") == mid
                          and f.get("room", room) == room, 10, start=start,
                          what=f"answer to {mid} in {room}")
    for room in rooms:
        # resend on another node after the ack
        mid = f"once-{room}"
        mk = pa.mark()
        await pa.send_msg("first", id=mid, room=room)
        a1 = await answer(pa, mid, room, mk)
        eq(a1["type"], "ack", f"first send of {mid}")
        mk = pb.mark()
        await pb.send_msg("first", id=mid, room=room)
        a2 = await answer(pb, mid, room, mk)
        eq((a2["type"], a2.get("seq")), ("ack", a1["seq"]),
           f"resend of {mid} on {nodes[1].name}: same seq as on {nodes[0].name}")
        acked[mid] = (room, a1["seq"])
        # the same id sent at once on two nodes
        mid = f"race-{room}"
        mb, mc = pb.mark(), pc.mark()
        await asyncio.gather(pb.send_msg("race", id=mid, room=room),
                             pc.send_msg("race", id=mid, room=room))
        b, c = await asyncio.gather(answer(pb, mid, room, mb), answer(pc, mid, room, mc))
        check(b["type"] == "ack" and c["type"] == "ack" and b["seq"] == c["seq"],
              f"{mid} sent at once on two nodes answered {strip(b)} / {strip(c)}")
        acked[mid] = (room, b["seq"])
        mid = f"after-{room}"
        mk = pc.mark()
        await pc.send_msg("after", id=mid, room=room)
        a3 = await answer(pc, mid, room, mk)
        eq(a3["type"], "ack", f"{mid}")
        acked[mid] = (room, a3["seq"])
    await wait_delivered(watchers, {room: 3 for room in rooms})
    check_streams(watchers, rooms, acked)
    for w in watchers:
        for room in rooms:
            eq([m.get("id") for m in w.messages(room)],
               [f"once-{room}", f"race-{room}", f"after-{room}"], f"ids seen by {w.label}")


@test(timeout=60, needs=NEEDS)
async def seeds_a_replica_and_a_dead_first_seed():
    r = setup()
    masters = r.masters()
    replica = r.replicas_of(masters[1])[0]
    dead = harness.free_port()       # nothing listens there
    try:
        a, b = start_nodes([[dead, replica], [r.replicas_of(masters[2])[0]]])
    finally:
        harness.release_port(dead)
    rooms = flat(r.rooms_on_every_shard(uniq("seed"), per_shard=1))
    w = await member(b, rooms, "w")
    p = await member(a, rooms, "p")
    acked = {}
    for room in rooms:
        mk = p.mark()
        await p.send_msg("hi", id=f"hi-{room}", room=room)
        f = await p.wait_for(lambda f: f["type"] in ("ack", "error") and f.get("id") ==
                             f"hi-{room}", 10, start=mk, what=f"answer in {room}")
        check(f["type"] == "ack", f"publish in {room} (slot on {r.room_owner(room)}) with "
              f"seeds {dead} (dead), {replica} (replica): {strip(f)}")
        acked[f["id"]] = (room, f["seq"])
    await wait_delivered([w, p], {room: 1 for room in rooms})
    check_streams([w, p], rooms, acked)


@test(timeout=90, needs=NEEDS)
async def killed_node_swept_and_backfilled_on_every_shard():
    """The per-slot indexes: a chatd node dies (kill -9) with members in rooms
    of every shard and messages broadcast but not yet committed (its batch
    waits 10 s): the survivors announce its users' leaves (presence sweep)
    and store its messages from the unstored index (backfill), in every
    shard, each message exactly once."""
    r = setup()
    short = {"CHAT_HEARTBEAT_MS": HB_MS, "CHAT_PRESENCE_TTL_MS": TTL_MS}
    masters = r.masters()
    a = start_nodes([[masters[0]]], env=dict(short, CHAT_BATCH_MS=10000,
                                             CHAT_BACKFILL_GRACE_MS=60000), names="A")[0]
    b, c = start_nodes([[masters[1]], [masters[2]]], env=dict(short, CHAT_BACKFILL_GRACE_MS=1000),
                       names="BC")
    rooms = flat(r.rooms_on_every_shard(uniq("hole"), per_shard=1))
    obs = [await member(n, rooms, f"obs{i}", heartbeat=True) for i, n in enumerate((b, c))]
    u = await member(a, rooms, "victim", heartbeat=True, name="Victim")
    for o in obs:
        for room in rooms:
            await o.wait_for(lambda f: f["type"] == "presence" and f.get("event") == "join"
                             and f.get("user") == "victim" and f.get("room") == room, 5,
                             what=f"join of victim in {room}")
    for room in rooms:
        for j in range(3):
            await u.send_msg(f"hole {j}", id=f"h{j}-{room}", room=room)
    for o in obs:
        await o.wait_count(lambda f: f["type"] == "message" and f.get("user") == "victim",
                           3 * len(rooms), 10, "broadcasts of the victim's messages")
    check(not u.acks(), f"acks although A's batch waits 10 s: {u.acks()[:2]}")
    a.kill9()
    t_kill = time.monotonic()
    for o in obs:
        for room in rooms:
            await o.wait_for(lambda f: f["type"] == "presence" and f.get("event") == "leave"
                             and f.get("user") == "victim" and f.get("room") == room,
                             TTL_MS / 1000 + 3, what=f"leave of victim in {room} after kill -9")
    rows = {}
    while time.monotonic() - t_kill < 10:
        rows = pg_rows(rooms)
        if all(len(rows[room]) >= 3 for room in rooms):
            break
        await asyncio.sleep(0.3)
    took = time.monotonic() - t_kill
    for room in rooms:
        seen = [(m["seq"], m.get("id")) for m in obs[0].messages(room)]
        eq(rows[room], seen, f"room {room}: Postgres rows {took:.1f}s after the node died "
           f"(backfill from the unstored index of the room's slot) vs the broadcasts")
    await asyncio.sleep(2.0)
    again = pg_rows(rooms)
    eq(again, rows, "rows after further sweeps (stored once)")
    for o in obs:
        for room in rooms:
            n = sum(1 for f in o.frames if f["type"] == "presence" and f.get("user") == "victim"
                    and f.get("room") == room and f.get("event") == "leave")
            eq(n, 1, f"leaves of victim in {room} at {o.label}")


@test(timeout=120, needs=NEEDS)
async def slot_migrated_under_load():
    r = setup()
    nodes = three_nodes(r)
    masters = r.masters()
    rooms = flat(r.rooms_on_every_shard(uniq("mig"), per_shard=1))
    # a room moved by the SETSLOT sequence (its exact slot), one moved by
    # `redis-cli --cluster reshard` (the lowest slot of its master)
    moved1 = rooms[0]                        # on masters[0], moved to masters[2]
    src2, dst2 = masters[1], masters[0]
    low = r.shard_of_port(src2)["slots"][0][0]
    moved2 = rigmod.Cluster.room_for_slot(uniq("mig2"), low)
    rooms.append(moved2)
    watchers = [await member(n, rooms, f"w{i}") for i, n in enumerate(nodes)]
    pubs = [await member(n, rooms, f"p{i}") for i, n in enumerate(nodes)]
    load = Load(pubs, rooms, rate=30, tag="g").start()
    phase("load started")
    # while the slots move, new clients resume the moved rooms with since=
    # (replay from the recent buffer of a slot in migration: ASK/TRYAGAIN)
    resumed = []
    stop_resume = asyncio.Event()

    async def resumers():
        k = 0
        while not stop_resume.is_set():
            room = (moved1, moved2)[k % 2]
            head = max([m["seq"] for m in watchers[0].messages(room)] or [0])
            since = max(0, head - 10)
            c = await Client.connect(nodes[k % 3], room, token(f"r{k}"), since=since,
                                     label=f"resume{k}@{nodes[k % 3].name}")
            resumed.append((room, since, c))
            k += 1
            await asyncio.sleep(0.25)
    resume_task = asyncio.create_task(resumers())
    await asyncio.sleep(1.5)
    slot1, src1, dst1, keys1 = await asyncio.to_thread(r.migrate_room, moved1, masters[2],
                                                       hold_s=1.0, batch=2)
    phase(f"slot {slot1} migrated {src1} -> {dst1} ({keys1} keys)")
    await asyncio.sleep(1.0)
    got = await asyncio.to_thread(r.reshard, src2, dst2, 1)
    phase(f"slot {low} resharded {src2} -> {dst2}")
    eq(got, [low], f"slots moved by redis-cli --cluster reshard {src2} -> {dst2}")
    await asyncio.sleep(2.0)
    stop_resume.set()
    await resume_task
    answers = await load.stop()
    phase("load answered")
    errs = error_codes(answers)
    check(not errs, f"error answers during slot migrations (a migration is routine: "
          f"MOVED/ASK/TRYAGAIN are followed): {errs}; e.g. "
          f"{[strip(f) for f in answers.values() if f['type'] == 'error'][:3]}")
    acked = acked_of(answers)
    acked.update(await final_round(pubs, rooms))
    heads = {}
    for i, (room, seq) in acked.items():
        heads[room] = max(heads.get(room, 0), seq)
    await wait_delivered(watchers + pubs, heads)
    for c in watchers + pubs:
        check(not c.closed, f"{c.label} closed (code {c.close_code}) by a slot migration")
    check_streams(watchers + pubs, rooms, acked)
    check(len(resumed) >= 10, f"only {len(resumed)} clients resumed during the migrations")
    for room, since, c in resumed:
        await c.wait_for(lambda f: f["type"] == "message" and f.get("room") == room
                         and f["seq"] >= heads[room], 10, what=f"seq {heads[room]} of {room}")
    await asyncio.sleep(0.2)
    ref = {room: [(m["seq"], m.get("id")) for m in watchers[0].messages(room)]
           for room in (moved1, moved2)}
    for room, since, c in resumed:
        got = [(m["seq"], m.get("id")) for m in c.messages(room)]
        want = [x for x in ref[room] if x[0] > since]
        check(got == want, f"{c.label} resumed {room} with since={since} during a migration: "
              f"{describe_seq_problem([g[0] for g in got])}, first {got[:2]}, "
              f"{len(got)} messages, want {len(want)}")
    await check_replay(nodes, rooms)
    for room, slot, dst, src in ((moved1, slot1, dst1, src1), (moved2, low, dst2, src2)):
        eq(r.room_owner(room), dst, f"owner of {room}'s slot {slot} after the migration")
        keys = rigmod.call(dst, "CLUSTER", "GETKEYSINSLOT", slot, 100)
        check([k for k in keys if "{" + room + "}" in k],
              f"room {room}: no {{{room}}} key on its new master {dst} (slot {slot}): {keys}")
        chans = [c for c in shard_channels(dst) if room in c]
        check(chans, f"room {room}: chatd did not re-subscribe (SSUBSCRIBE) on the new owner "
              f"{dst} of slot {slot}; shard channels there: {shard_channels(dst)[:10]}")
        old = [c for c in shard_channels(src) if room in c]
        check(not old, f"room {room}: still subscribed on its old master {src}: {old}")
    print(f"#   migrations: {moved1} slot {slot1} {src1}->{dst1} ({keys1} keys, SETSLOT); "
          f"{moved2} slot {low} {src2}->{dst2} (reshard); {len(load.sent)} messages",
          flush=True)


@test(timeout=120, needs=NEEDS)
async def one_shard_down_others_keep_working():
    r = setup()
    nodes = three_nodes(r)
    by_shard = r.rooms_on_every_shard(uniq("one"), per_shard=1)
    rooms = flat(by_shard)
    victim = r.masters()[2]
    sh = shard_desc(r, victim)
    down_rooms = by_shard[victim]
    up_rooms = [x for x in rooms if x not in down_rooms]
    watchers = [await member(n, rooms, f"w{i}") for i, n in enumerate(nodes)]
    pubs = [await member(n, rooms, f"p{i}") for i, n in enumerate(nodes)]
    load = Load(pubs, rooms, rate=20, tag="d").start()
    await asyncio.sleep(1.0)
    acked_before = acked_of(load.answers())
    rw = await ReadyWatch(nodes).started()
    for p in sh["ports"]:
        if p != victim:
            await asyncio.to_thread(r.kill9, p)      # the replica first: no failover
    await asyncio.to_thread(r.kill9, victim)
    t_down = time.monotonic()
    phase(f"shard of {victim} down")
    await asyncio.sleep(5.0)
    t_back = time.monotonic()
    await asyncio.to_thread(r.restart_node, victim, False)
    for p in sh["ports"]:
        if p != victim:
            await asyncio.to_thread(r.restart_node, p, False)
    await asyncio.to_thread(r.wait_ok, 40)
    t_up = time.monotonic()
    phase("shard back")
    await wait_ready(nodes, 20, "after the shard came back")
    phase("chatd ready")
    await asyncio.sleep(1.0)
    await rw.stop()
    rw.show()
    answers = await load.stop()
    sent_at = load.sent_at()
    room_of = load.room_of()
    # rooms of the healthy shards: every message acked, promptly
    bad = [(i, strip(f)) for i, f in answers.items() if room_of[i] in up_rooms
           and f["type"] != "ack"]
    check(not bad, f"{len(bad)} messages to rooms of healthy shards not acked while shard "
          f"{sh['slots']} was down: {bad[:3]}")
    slow = sorted(((answers[i]["_t"] - sent_at[i], i) for i in answers
                   if room_of[i] in up_rooms and sent_at[i] > t_down), reverse=True)
    check(not slow or slow[0][0] < 3.0, f"acks in healthy rooms delayed by the down shard: "
          f"slowest {slow[:3]}")
    # rooms of the down shard: answered unavailable meanwhile (no hang, no other code)
    during = [i for i in answers if room_of[i] in down_rooms and t_down + 1.0 < sent_at[i]
              < t_back]
    check_outage_answers(answers, during, sent_at, t_back, "to a room of the down shard")
    # readiness names the shard while it is down (the status is the node's
    # choice: 503, or 200 so that a load balancer keeps the rooms of the
    # healthy shards reachable), and is 200 once it is back (wait_ready above)
    for n in nodes:
        hit = rw.reported(n, sh, after=t_down)
        check(hit and hit[0] < t_up, f"/readyz of {n.name} never reported the down shard "
              f"(an answer other than the healthy one, naming one of the nodes {sh['ports']} "
              f"or slot ranges {sh['slots']}) while it was down; "
              f"answers: {rw.summary(n)}")
    acked = acked_of(answers)
    acked.update(await final_round(pubs, rooms))
    # no seq reused in the rooms of the shard that lost its data
    for room in down_rooms:
        before = max([s for i, (rr, s) in acked_before.items() if rr == room] or [0])
        after = [s for i, (rr, s) in acked.items() if rr == room and i not in acked_before]
        check(before > 0, f"no ack in {room} before the shard went down")
        check(all(s > before for s in after), f"room {room}: seq reused after its shard came "
              f"back without data: acked {before} before, {sorted(after)[:5]} after")
    heads = {}
    for i, (room, seq) in acked.items():
        heads[room] = max(heads.get(room, 0), seq)
    await wait_delivered(watchers + pubs, heads)
    for c in watchers + pubs:
        check(not c.closed, f"{c.label} closed (code {c.close_code}) by the shard outage")
    check_streams(watchers + pubs, rooms, acked)
    await check_replay(nodes, rooms)


@test(timeout=120, needs=NEEDS)
async def master_killed_under_load_replica_promoted():
    r = setup()
    nodes = three_nodes(r)
    by_shard = r.rooms_on_every_shard(uniq("fo"), per_shard=2)
    rooms = flat(by_shard)
    victim = r.masters()[0]                 # node A's seed, too
    sh = shard_desc(r, victim)
    hit_rooms = by_shard[victim]
    watchers = [await member(n, rooms, f"w{i}") for i, n in enumerate(nodes)]
    pubs = [await member(n, rooms, f"p{i}") for i, n in enumerate(nodes)]
    load = Load(pubs, rooms, rate=25, tag="f").start()
    await asyncio.sleep(1.5)
    rw = await ReadyWatch(nodes).started()
    t_kill = time.monotonic()
    new_master, took = await asyncio.to_thread(r.kill_master, victim)
    t_promoted = time.monotonic()
    phase(f"master {victim} killed, {new_master} promoted")
    await wait_ready(nodes, 15, f"after replica {new_master} took over")
    phase("chatd ready")
    t_ready = time.monotonic()
    await asyncio.sleep(2.0)
    await rw.stop()
    rw.show()
    answers = await load.stop()
    room_of = load.room_of()
    errs = [(i, strip(f)) for i, f in answers.items() if f["type"] == "error"]
    other = [e for e in errs if room_of[e[0]] not in hit_rooms or e[1].get("code") !=
             "unavailable"]
    check(not other, f"errors in rooms of healthy shards, or other than `unavailable`: "
          f"{other[:3]}")
    acked = acked_of(answers)
    acked.update(await final_round(pubs, rooms))
    heads = {}
    for i, (room, seq) in acked.items():
        heads[room] = max(heads.get(room, 0), seq)
    await wait_delivered(watchers + pubs, heads)
    for c in watchers + pubs:
        check(not c.closed, f"{c.label} closed (code {c.close_code}) by the failover")
    check_streams(watchers + pubs, rooms, acked)
    await check_replay(nodes, rooms)
    for n in nodes:
        hit = rw.reported(n, sh, after=t_kill)
        check(hit and hit[0] <= t_promoted + 1.0,
              f"/readyz of {n.name} never reported the failed shard (an answer other than the "
              f"healthy one, naming one of the nodes {sh['ports']} or slot ranges "
              f"{sh['slots']}) between the kill and the promotion "
              f"({took:.1f}s); answers: {rw.summary(n)}")
    print(f"#   failover: master {victim} killed, replica {new_master} promoted after "
          f"{took:.1f}s, all nodes ready {t_ready - t_kill:.1f}s after the kill; "
          f"{len(load.sent)} messages, {len(errs)} answered unavailable", flush=True)


@test(timeout=120, needs=NEEDS)
async def master_frozen_under_load_failover():
    """SIGSTOP of a master under load (a stall: its connections stay open,
    nothing answers, no RST): chatd does not hang on it; rooms of the other
    shards keep acking promptly; the frozen shard's messages are answered
    within bounded time; once the replica is promoted chatd follows it
    without waiting for the old master; after SIGCONT the old master (with
    the commands queued in its sockets) rejoins as a replica and nothing it
    answered late corrupts a room: no acked message lost, no seq reused."""
    r = setup()
    nodes = three_nodes(r)
    by_shard = r.rooms_on_every_shard(uniq("fz"), per_shard=1)
    rooms = flat(by_shard)
    victim = r.masters()[1]
    hit_rooms = by_shard[victim]
    up_rooms = [x for x in rooms if x not in hit_rooms]
    watchers = [await member(n, rooms, f"w{i}") for i, n in enumerate(nodes)]
    pubs = [await member(n, rooms, f"p{i}") for i, n in enumerate(nodes)]
    load = Load(pubs, rooms, rate=20, tag="s").start()
    await asyncio.sleep(1.5)
    t_freeze = time.monotonic()
    new_master, took = await asyncio.to_thread(r.freeze_master, victim)
    t_promoted = time.monotonic()
    phase(f"master {victim} frozen, {new_master} promoted after {took:.1f}s")
    await asyncio.sleep(6.0)
    t_thaw = time.monotonic()
    await asyncio.to_thread(r.thaw, victim)
    await asyncio.to_thread(r.wait_ok, 30)
    phase(f"{victim} thawed, cluster ok")
    await wait_ready(nodes, 15, "after the frozen master was replaced and thawed")
    await asyncio.sleep(1.0)
    answers = await load.stop()
    sent_at = load.sent_at()
    room_of = load.room_of()
    bad = [(i, strip(f)) for i, f in answers.items() if room_of[i] in up_rooms
           and f["type"] != "ack"]
    check(not bad, f"{len(bad)} messages to rooms of healthy shards not acked while "
          f"{victim} was frozen: {bad[:3]}")
    slow = sorted(((round(answers[i]["_t"] - sent_at[i], 2), i) for i in answers
                   if room_of[i] in up_rooms), reverse=True)
    check(not slow or slow[0][0] < 3.0, f"acks in healthy rooms delayed by the frozen master "
          f"(s, id): {slow[:3]}")
    hit = [i for i in answers if room_of[i] in hit_rooms]
    wrong = [(i, strip(answers[i])) for i in hit if answers[i]["type"] == "error"
             and answers[i].get("code") != "unavailable"]
    check(not wrong, f"messages to the frozen shard answered {wrong[:3]}")
    late = sorted(((round(answers[i]["_t"] - sent_at[i], 2), i) for i in hit
                   if sent_at[i] < t_thaw and answers[i]["_t"] - sent_at[i] > 8.0), reverse=True)
    check(not late, f"messages to the frozen shard answered more than 8 s after the send "
          f"(chatd waited on the stalled master; s, id): {late[:3]}")
    # sent 4 s or more after the promotion and at least 0.5 s before the thaw
    # (a message sent in the thaw's last instant cannot be acked before it)
    after = [i for i in hit if t_promoted + 4.0 < sent_at[i] < t_thaw - 0.5]
    check(after, "no message sent to the frozen shard's room after the promotion")
    stuck = [(i, strip(answers[i])) for i in after if answers[i]["type"] != "ack"
             or answers[i]["_t"] > t_thaw]
    check(not stuck, f"{len(stuck)}/{len(after)} messages sent to the failed-over shard 4 s or "
          f"more after replica {new_master} took over were not acked before the old master "
          f"was thawed: {stuck[:3]}")
    acked = acked_of(answers)
    acked.update(await final_round(pubs, rooms))
    heads = {}
    for i, (room, seq) in acked.items():
        heads[room] = max(heads.get(room, 0), seq)
    await wait_delivered(watchers + pubs, heads)
    for c in watchers + pubs:
        check(not c.closed, f"{c.label} closed (code {c.close_code}) by the stalled master")
    check_streams(watchers + pubs, rooms, acked)
    await check_replay(nodes, rooms)
    print(f"#   freeze: master {victim} stopped, replica {new_master} promoted after "
          f"{took:.1f}s; {len(load.sent)} messages, "
          f"{sum(1 for i in hit if answers[i]['type'] == 'error')} answered unavailable",
          flush=True)


@test(timeout=150, needs=NEEDS)
async def cluster_down_and_back():
    r = setup()
    nodes = three_nodes(r)
    by_shard = r.rooms_on_every_shard(uniq("all"), per_shard=1)
    rooms = flat(by_shard)
    shards = [shard_desc(r, m) for m in r.masters()]
    watchers = [await member(n, rooms, f"w{i}") for i, n in enumerate(nodes)]
    pubs = [await member(n, rooms, f"p{i}") for i, n in enumerate(nodes)]
    pids = [n.proc.pid for n in nodes]
    load = Load(pubs, rooms, rate=15, tag="z").start()
    await asyncio.sleep(1.0)
    rw = await ReadyWatch(nodes).started()
    await asyncio.to_thread(r.down)
    t_down = time.monotonic()
    phase("cluster down")
    await asyncio.sleep(5.0)
    t_up0 = time.monotonic()
    await asyncio.to_thread(r.up, 40)           # empty: no persistence
    phase("cluster up")
    await wait_ready(nodes, 30, "after the cluster came back")
    t_ready = time.monotonic()
    phase("chatd ready")
    await asyncio.sleep(1.0)
    await rw.stop()
    rw.show()
    answers = await load.stop()
    phase("load answered")
    sent_at = load.sent_at()
    eq([n.proc.pid for n in nodes if n.alive()], pids, "chatd processes (no restart)")
    during = [i for i in answers if t_down + 1.0 < sent_at[i] < t_up0]
    check_outage_answers(answers, during, sent_at, t_up0, "while the whole cluster was down")
    codes = {f.get("code") for f in answers.values() if f["type"] == "error"}
    check(codes <= {"unavailable"}, f"error codes {codes}")
    for n in nodes:
        hit = rw.first(n, lambda st, b: st == 503 and all(names_shard(b, s) for s in shards),
                       after=t_down)
        check(hit and hit[0] < t_up0, f"/readyz of {n.name} never answered 503 naming every "
              f"shard ({[(s['master'], s['slots']) for s in shards]}) while the cluster was "
              f"down; answers: {rw.summary(n)}")
    acked = acked_of(answers)
    before = {}
    for i, (room, seq) in acked.items():
        if sent_at[i] < t_down:
            before[room] = max(before.get(room, 0), seq)
    acked.update(await final_round(pubs, rooms))
    phase("final round acked")
    for room in rooms:
        after = sorted(s for i, (rr, s) in acked.items() if rr == room and
                       (i not in sent_at or sent_at[i] > t_up0))
        check(before.get(room), f"no ack in {room} before the outage")
        check(after and after[0] > before[room], f"room {room}: seq reused after the cluster "
              f"came back empty: {before[room]} acked before, {after[:5]} after")
    heads = {}
    for i, (room, seq) in acked.items():
        heads[room] = max(heads.get(room, 0), seq)
    await wait_delivered(watchers + pubs, heads)
    for c in watchers + pubs:
        check(not c.closed, f"{c.label} closed (code {c.close_code}) by the cluster outage")
    check_streams(watchers + pubs, rooms, acked)
    await check_replay(nodes, rooms)
    print(f"#   cluster down {t_up0 - t_down:.1f}s; chatd ready {t_ready - t_up0:.1f}s after "
          f"the restart; {len(during)} messages answered unavailable meanwhile", flush=True)


@test(timeout=90, needs=NEEDS)
async def flushall_while_a_node_holds_the_room_keeps_one_seq_order():
    """history.redis_loss_while_another_node_holds_the_room_keeps_one_seq_order
    on a Cluster (a room on every shard): FLUSHALL on every master while
    node A holds the rooms with seq 4 broadcast and not stored (its batch
    2.5 s); node B, holding none, publishes through the server API. B's ask
    of the holders is an SPUBLISH on the room's shard: A raises each head to
    4, B's messages are 5, A's member gets them, A's sender is acked 4."""
    r = setup()
    key = "itest-cluster-api-key-0123456789"
    m0, m1 = r.masters()[:2]
    a, = start_nodes([[m0]], env={"CHAT_BATCH_MS": 2500}, names="A")
    b, = start_nodes([[m1]], env={"CHAT_API_KEYS": key}, names="B")
    rooms = flat(r.rooms_on_every_shard(uniq("flush"), per_shard=1))
    x = await member(a, rooms, "alice")

    def answer(mid):
        return x.wait_for(lambda f: f["type"] in ("ack", "error") and f.get("id") == mid, 10,
                          what=f"answer to {mid}")
    for room in rooms:
        for i in range(3):
            await x.send_msg(f"a{i}", id=f"{room}-a{i}", room=room)
    for room in rooms:
        for i in range(3):
            f = await answer(f"{room}-a{i}")
            eq((f["type"], f.get("seq")), ("ack", i + 1), f"{room}-a{i} stored")
    for room in rooms:
        await x.send_msg("a3", id=f"{room}-a3", room=room)
    for room in rooms:
        await x.wait_count(lambda f, room=room: f["type"] == "message" and f.get("room") == room,
                           4, 5, f"A's broadcasts 1..4 in {room}")
    for m in r.masters():
        eq(await asyncio.to_thread(rigmod.call, m, "FLUSHALL"), "OK", f"FLUSHALL on {m}")
    got = await asyncio.gather(*[asyncio.to_thread(harness.api_post, b.port, key, room,
                                                   {"id": f"{room}-b0", "user": "ci", "body": "B"})
                                 for room in rooms])
    early = [f for f in x.frames if f["type"] in ("ack", "error") and str(f.get("id")).endswith("-a3")]
    eq(early, [], "the scenario: A's seq 4 was not stored yet when B's publishes were answered")
    eq([(st, js.get("seq") if isinstance(js, dict) else js) for st, js in got],
       [(200, 5)] * len(rooms), "B's messages after A's 4")
    for room in rooms:
        f = await answer(f"{room}-a3")
        eq((f["type"], f.get("seq")), ("ack", 4), f"A's sender acked 4 in {room}")
        await x.wait_count(lambda f, room=room: f["type"] == "message" and f.get("room") == room,
                           5, 5, f"B's message on A in {room}")
        eq([(m["seq"], m.get("id")) for m in x.messages(room)],
           [(i + 1, f"{room}-a{i}") for i in range(4)] + [(5, f"{room}-b0")], f"A's member in {room}")
