"""Load of the fault harness: reconnecting WebSocket clients and senders.

Owns: every client connection of a phase (one room per connection), the
pacing of new messages (client ids), the resend of unacked messages with the
same id (as protocol.md allows), and what each client observed: the seqs and
ids it received in order, duplicates, out-of-order and skipped seqs, acks,
errors, disconnects and reconnect times. The checker (fault_check.py) judges it.

A client always connects with `since=<last seq it saw>` (0 at first: rooms are
new), so after any disconnect it must get exactly the rest of the room, with
no gap and no duplicate, whichever node it lands on.

On `gap_too_large` (protocol.md "Recovery": the gap is larger than the replay
limit) it does what a real client does: it pages history over HTTP
(`GET /rooms/{room}/messages`, newest page first) back to its last seq, takes
the missed seqs from there (counted as `paged`), then connects again with
`since=` the newest seq it now has. History may lag behind the live stream
(Postgres behind): it pages again for up to FILL_WAIT seconds; a seq history
still lacks below its newest one then stays `pending` and is looked up again
every second until the end of the phase (the checker reports what is left).
"""
import asyncio
import json
import random
import time
import urllib.parse

import websockets

import harness

FILL_WAIT = 5.0          # seconds a gap fill pages again while history lags
PAGE_LIMIT = 200         # the largest page protocol.md allows


async def http_json(port, path, token, timeout=3.0):
    """GET path on 127.0.0.1:port with the client's Bearer token; (status,
    JSON or None), status 0 when the node did not answer. Async on purpose:
    harness.ahttp runs in the default thread pool (6 threads on 2 cores),
    which a node frozen with SIGSTOP would block for every client at once."""
    w = None
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        w.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                 "Connection: close\r\n\r\n").encode())
        raw = await asyncio.wait_for(r.read(), timeout)
    except (OSError, asyncio.TimeoutError):
        return 0, None
    finally:
        if w is not None:
            w.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(body)
    except (IndexError, ValueError):
        return 0, None


class FaultClient:
    def __init__(self, load, name, room, user, home, sender):
        self.load = load
        self.name = name
        self.room = room
        self.user = user
        self.home = home            # index of the node tried first
        self.sender = sender
        self.token = harness.token(user, exp_in=4 * 3600)
        self.last = 0               # last seq received in order
        self.got = {}               # seq -> id received
        self.dup = 0                # a seq received again
        self.reorder = 0            # a seq below the last one, never received before
        self.skipped = 0            # seqs jumped over (last+1 .. s-1 missing)
        self.errors = {}            # error code -> count
        self.gap_too_large = 0
        self.need_fill = False      # a gap_too_large: page history before reconnecting
        self.conn_top = 0           # highest seq the current connection announced or sent
        self.paged = 0              # seqs taken from history (a gap fill)
        self.pending = set()        # seqs a gap fill missed that history lacked (looked up again)
        self.fills = 0              # gap fills done
        self.fill_lagged = 0        # of them, those whose first read lacked a seq (paged again)
        self.pended = 0             # seqs a fill left pending (history lacked them for FILL_WAIT)
        self.refill = None          # the task that looks the pending seqs up again
        self.connects = 0
        self.down_since = None      # monotonic time the connection was lost
        self.reconnect_times = []   # seconds from loss to the next welcome
        self.ws = None
        self.online = False         # welcome received on the current connection
        self.paused = False         # offline on purpose (cold room)
        self.quiet = False          # sends no new message (about to go offline)
        self.vanished = False       # gone for good (checked only for what it was acked)
        self.stop = False
        self.wake = asyncio.Event()
        self.node_name = None
        # sender state
        self.n = 0
        self.unacked = {}           # id -> [body, time of first send, time of last send]
        self.acked = {}             # id -> seq
        self.ack_conflict = 0       # same id acked with two seqs
        self.ack_latency_max = 0.0  # first send -> ack, resends included
        self.slowest = None         # (id, latency, sends, node, sent at, errors) of that ack
        self.task = None
        # what explains a gap: (t, event, node, detail) of each welcome, skip,
        # reorder and gap_too_large (at most 200; printed by --chaos on a failure)
        self.trace = []
        # an `unavailable` without an id or a `gap_too_large` on this
        # connection: the server says it could not deliver everything after
        # since= (protocol.md allows it); what follows on it is not judged and
        # the client reconnects with the same since= (the browser client pages
        # history instead). The checker still counts every gap_too_large.
        self.told = False
        self.recovery_unavailable = 0

    def note(self, what, detail):
        if len(self.trace) < 200:
            self.trace.append((round(time.monotonic() - self.load.t0, 2), what, self.node_name,
                               detail))

    # -- connection loop ----------------------------------------------------
    async def run(self):
        backoff = 0.05
        attempt = 0
        while not self.stop:
            if self.paused:
                self.wake.clear()
                await self.wake.wait()
                continue
            nodes = self.load.cluster.nodes
            node = nodes[(self.home + attempt) % len(nodes)]
            attempt += 1
            if self.need_fill:
                await self.fill_gap(attempt)
                if self.stop or self.paused:
                    continue
            url = (f"ws://127.0.0.1:{node.port}/ws/{urllib.parse.quote(self.room)}?"
                   + urllib.parse.urlencode({"token": self.token, "since": str(self.last)}))
            try:
                ws = await asyncio.wait_for(
                    websockets.connect(url, max_size=None, ping_interval=None, close_timeout=1,
                                       open_timeout=3, max_queue=None), 4)
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake,
                    websockets.ConnectionClosed):
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, 1.0)
                continue
            self.ws = ws
            self.told = False
            self.conn_top = 0
            self.connects += 1
            self.node_name = node.name
            try:
                async for raw in ws:
                    try:
                        f = json.loads(raw)
                    except (ValueError, TypeError):
                        f = {"type": "error", "code": "_unparsable_frame"}
                    if isinstance(f, dict):
                        self.on_frame(f)
            except (websockets.ConnectionClosed, OSError):
                pass
            except asyncio.CancelledError:
                ws.transport.abort()
                raise
            self.ws = None
            self.online = False
            if not self.stop and not self.paused and self.down_since is None:
                self.down_since = time.monotonic()
            if not self.paused and not self.stop:
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, 1.0)
        self.online = False

    def on_frame(self, f):
        t = f.get("type")
        if t == "message":
            self.on_message(f)
        elif t == "ack":
            self.on_ack(f)
        elif t == "welcome":
            self.note("welcome", f"since={self.last} seq={f.get('seq')}")
            if isinstance(f.get("seq"), int):
                self.conn_top = max(self.conn_top, f["seq"])
            self.online = True
            if self.down_since is not None and not self.paused:
                self.reconnect_times.append(time.monotonic() - self.down_since)
            self.down_since = None
            if self.sender:
                self.resend_all()
        elif t == "error":
            code = f.get("code", "?")
            self.errors[code] = self.errors.get(code, 0) + 1
            if code != "unavailable" or f.get("id") is None:
                self.note("error", f"{code} {f.get('message', '')} last={self.last}")
            if code in ("unavailable", "gap_too_large") and f.get("id") is None \
                    and not self.told:
                self.told = True
                self.recovery_unavailable += 1
                self.online = False          # nothing more is sent on it
                if self.ws is not None:
                    self.ws.transport.abort()
            if code == "gap_too_large":
                self.gap_too_large += 1
                if f.get("id") is None:
                    self.need_fill = True
            elif code == "unavailable" and f.get("id") in self.unacked:
                # retry soon with the same id; spread so a recovering node is not hammered
                self.unacked[f["id"]][2] = time.monotonic() - self.load.resend_after + \
                    0.2 + random.random() * 0.3

    def on_message(self, f):
        if f.get("room") != self.room:
            return
        s = f.get("seq")
        mid = f.get("id")
        self.load.observe(self.room, s, mid, f"delivery to {self.name}")
        if isinstance(s, int):
            self.conn_top = max(self.conn_top, s)
        if self.told:
            return
        if s in self.got:
            self.dup += 1
            return
        self.got[s] = mid
        if s == self.last + 1:
            self.last = s
        elif s > self.last + 1:
            self.note("skip", f"last={self.last} got={s}")
            self.skipped += s - self.last - 1
            self.last = s
        else:
            self.note("reorder", f"last={self.last} got={s}")
            self.reorder += 1

    # -- gap fill: history over HTTP ------------------------------------------
    async def page_back(self, port, before, down_to):
        """{seq: id} of the room's messages with down_to < seq < before (None:
        from the newest), newest page first, until a page reaches down_to or
        the room's oldest; None when a page could not be read."""
        out = {}
        cursor = before
        room = urllib.parse.quote(self.room, safe="")
        while True:
            q = {"limit": str(PAGE_LIMIT)}
            if cursor is not None:
                q["before"] = cursor
            st, js = await http_json(port, f"/rooms/{room}/messages?" + urllib.parse.urlencode(q),
                                     self.token)
            if st != 200 or not isinstance(js, dict):
                self.note("history", f"page before={cursor} answered {st}")
                return None
            msgs = js.get("messages") or []
            for m in msgs:
                s = m.get("seq")
                if isinstance(s, int) and s > down_to:
                    out[s] = m.get("id")
            cursor = js.get("next_cursor")
            if not msgs or not cursor or min(m.get("seq", 0) for m in msgs) <= down_to + 1:
                return out

    def take(self, seqs):
        """Seqs read from history: received (observed like a delivery)."""
        for s, mid in sorted(seqs.items()):
            self.load.observe(self.room, s, mid, f"history to {self.name}")
            if s not in self.got:
                self.got[s] = mid
                self.paged += 1
            self.pending.discard(s)

    async def fill_gap(self, attempt):
        """After gap_too_large: every seq after self.last from history (the
        fault load sends no message updates, so history lists every seq of its
        rooms and one it lacks below its newest is a lag or a hole, not an
        update's seq: the checker's view of holes too). Pages again while
        history lacks a seq up to the newest one known (the connection's
        welcome head or a live frame) for up to FILL_WAIT s; then self.last =
        history's newest seq and the seqs it lacked below it are pending."""
        self.fills += 1
        target = max(self.conn_top, self.last)
        base = self.last
        end = time.monotonic() + FILL_WAIT
        got = {}
        k = attempt
        reads = 0
        while not self.stop:
            nodes = self.load.cluster.nodes
            node = nodes[k % len(nodes)]
            page = await self.page_back(node.port, None, base)
            if page is None:
                k += 1                      # that node did not answer: the next one
            else:
                got.update(page)
                top = max(got, default=base)
                want = range(base + 1, max(top, target) + 1)
                if all(s in got for s in want):
                    break
                reads += 1
                if reads == 1:
                    self.fill_lagged += 1
            if time.monotonic() >= end:
                break
            await asyncio.sleep(0.3)
        self.need_fill = False
        top = max(got, default=base)
        lacked = {s for s in range(base + 1, top) if s not in got and s not in self.got}
        self.take(got)
        self.pending |= lacked
        self.pended += len(lacked)
        self.note("paged", f"since={base} head={target} history {min(got, default='-')}.."
                           f"{max(got, default='-')} ({len(got)}) lacked {len(lacked)}")
        if top > self.last:
            self.last = top
        if self.pending and (self.refill is None or self.refill.done()):
            self.refill = asyncio.ensure_future(self.look_up_pending())

    async def look_up_pending(self):
        """The seqs a gap fill missed, read from history again every second
        until it has them or the client stops."""
        k = self.home
        while self.pending and not self.stop:
            await asyncio.sleep(1.0)
            nodes = self.load.cluster.nodes
            node = nodes[k % len(nodes)]
            lo, hi = min(self.pending), max(self.pending)
            page = await self.page_back(node.port, f"c{hi + 1:x}", lo - 1)
            if page is None:
                k += 1
                continue
            found = {s: m for s, m in page.items() if s in self.pending}
            if found:
                self.note("pending", f"{len(found)} of {len(self.pending)} found in history")
                self.take(found)

    def on_ack(self, f):
        mid = f.get("id")
        s = f.get("seq")
        if f.get("room") != self.room or mid is None:
            return
        self.load.observe(self.room, s, mid, f"ack to {self.name}")
        if mid in self.acked:
            if self.acked[mid] != s:
                self.ack_conflict += 1
            return
        self.acked[mid] = s
        self.load.acks += 1
        u = self.unacked.pop(mid, None)
        if u is not None:
            lat = time.monotonic() - u[1]
            if lat > self.ack_latency_max:
                self.ack_latency_max = lat
                self.slowest = (mid, round(lat, 2), u[3], self.node_name,
                                round(u[1] - self.load.t0, 2), dict(self.errors))

    # -- sending --------------------------------------------------------------
    def send_new(self):
        if not (self.online and self.ws) or self.quiet:
            return False
        self.n += 1
        mid = f"{self.name}.{self.n}"
        body = f"{mid} {self.load.pad}"
        now = time.monotonic()
        self.unacked[mid] = [body, now, now, 1]
        self._send(mid, body)
        return True

    def _send(self, mid, body):
        ws = self.ws
        if ws is None:
            return
        data = json.dumps({"type": "message", "id": mid, "body": body})
        asyncio.ensure_future(self._send_quiet(ws, data))

    @staticmethod
    async def _send_quiet(ws, data):
        try:
            await ws.send(data)
        except (websockets.ConnectionClosed, OSError):
            pass

    def resend_all(self):
        now = time.monotonic()
        for mid, u in self.unacked.items():
            u[2] = now
            u[3] += 1
            self._send(mid, u[0])

    def resend_due(self):
        if not (self.online and self.ws) or self.vanished:
            return
        now = time.monotonic()
        for mid, u in self.unacked.items():
            if now - u[2] >= self.load.resend_after:
                u[2] = now
                u[3] += 1
                self._send(mid, u[0])

    # -- control ----------------------------------------------------------------
    def start(self):
        self.task = asyncio.ensure_future(self.run())

    def pause(self):
        """Go offline on purpose (a cold room: no node holds it)."""
        self.paused = True
        if self.ws is not None:
            asyncio.ensure_future(self.ws.close())

    def resume(self):
        self.paused = False
        self.quiet = False
        self.wake.set()

    def vanish(self):
        """The client crashes for good: TCP dropped, never back, never resends.
        What it sent and was broadcast must still reach history (backfill)."""
        self.vanished = True
        self.stop = True
        self.wake.set()
        if self.ws is not None:
            self.ws.transport.abort()

    def drop(self):
        """Abrupt TCP drop (no close handshake): a disconnect storm."""
        if self.ws is not None:
            self.ws.transport.abort()

    async def close(self):
        self.stop = True
        self.wake.set()
        if self.ws is not None:
            self.ws.transport.abort()
        if self.refill is not None:
            self.refill.cancel()
        if self.task:
            try:
                await asyncio.wait_for(self.task, 3)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                self.task.cancel()


class Load:
    """The clients of one phase: `rooms` new rooms, each with `senders`
    sending clients and `listeners` receive-only clients, spread over the
    nodes; a pacer sends `rate` new messages per second in total."""

    def __init__(self, cluster, tag, rooms, senders, listeners, rate, cold_rooms=0,
                 resend_after=2.0, body_bytes=64):
        self.cluster = cluster
        self.rate = rate
        self.resend_after = resend_after
        self.pad = "x" * max(0, body_bytes - 20)
        self.clients = []
        self.t0 = time.monotonic()
        self.rooms = [f"f-{tag}-{i}" for i in range(rooms)]
        self.cold = set(self.rooms[:cold_rooms])
        self.acks = 0
        self.sent = 0
        self.note = ""               # what the fault reports of itself (e.g. packets dropped)
        self.seen = {}               # (room, seq) -> id of every observation
        self.reused = []             # (room, seq, id1, id2, where)
        self.sending = False
        self.pacer = None
        k = 0
        for r in self.rooms:
            for j in range(senders + listeners):
                # one user per client: with a few users shared by every room, the
                # survivors of a node kill met CHAT_MAX_CONNS_PER_USER (32 per
                # node) and were refused (429) until the node came back
                c = FaultClient(self, f"{r}.c{j}", r, f"u{k}", k % len(cluster.nodes),
                                j < senders)
                self.clients.append(c)
                k += 1

    def observe(self, room, seq, mid, where):
        key = (room, seq)
        have = self.seen.get(key, "\0none")
        if have == "\0none":
            self.seen[key] = mid
        elif have != mid:
            self.reused.append((room, seq, have, mid, where))

    def senders(self):
        return [c for c in self.clients if c.sender]

    async def start(self, timeout=30):
        for c in self.clients:
            c.start()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(c.online for c in self.clients):
                return True
            await asyncio.sleep(0.05)
        return False

    def start_sending(self):
        self.sending = True
        self.pacer = asyncio.ensure_future(self._pace())

    async def _pace(self):
        senders = self.senders()
        tick = 0.01
        owed = 0.0
        i = 0
        last_resend = time.monotonic()
        t = time.monotonic()
        while self.sending:
            await asyncio.sleep(tick)
            now = time.monotonic()
            owed += (now - t) * self.rate
            t = now
            tries = 0
            while owed >= 1 and tries < len(senders):
                c = senders[i % len(senders)]
                i += 1
                tries += 1
                if c.send_new():
                    self.sent += 1
                    owed -= 1
                    tries = 0
            owed = min(owed, self.rate)      # do not bank an outage's worth of sends
            if now - last_resend >= 0.25:
                last_resend = now
                for c in senders:
                    c.resend_due()

    async def stop_sending(self):
        self.sending = False
        if self.pacer:
            await self.pacer

    def unacked(self):
        return sum(len(c.unacked) for c in self.senders() if not c.vanished)

    async def drain(self, timeout):
        """Resend what is unacked (same ids) until everything is acked."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.unacked() == 0:
                return True
            for c in self.senders():
                c.resend_due()
            await asyncio.sleep(0.2)
        return self.unacked() == 0

    def heads(self):
        """Highest seq anyone observed, per room."""
        h = {r: 0 for r in self.rooms}
        for (r, s) in self.seen:
            if s > h[r]:
                h[r] = s
        return h

    async def converge(self, timeout):
        """Every client back online and caught up to its room's head."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            h = self.heads()
            if all(c.online and c.last >= h[c.room] and not c.pending and not c.need_fill
                   for c in self.clients if not c.vanished):
                return True
            await asyncio.sleep(0.1)
        return False

    async def close(self):
        await asyncio.gather(*(c.close() for c in self.clients))
