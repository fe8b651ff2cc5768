#!/usr/bin/python3
"""The demo's failover act (tools/demo.sh): N WebSocket clients in one room
through the front (wss:// with the demo's self-signed certificate, or ws://
to the nodes when there is no front), a few messages, then `kill -9` of one
node: its clients see the connection drop, reconnect through the front with
since=<last seq> and land on the surviving node; everyone then checks that
they saw every seq exactly once, in order.

  demo_clients.py --url wss://127.0.0.1:18443 [--cafile cert.pem] --kill-pid PID
      [--clients 12] [--room demo] [--messages 20]
  (--url may list several ws:// bases: clients are spread over them, and a
   reconnect tries them in turn, as the browser client does)

Tokens come from the nodes' /dev/token (demo nodes run with --dev-tokens).
Exit 0 when every client moved and nothing was lost or duplicated."""
import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import time
import urllib.parse
import urllib.request

import websockets


def http_base(ws):
    return ws.replace("wss://", "https://").replace("ws://", "http://")


class C:
    def __init__(self, k, urls, room, ctx):
        self.k, self.urls, self.room, self.ctx = k, urls, room, ctx
        self.name = f"demo{k}"
        self.seqs, self.node, self.ws, self.moves = [], None, None, []
        self.closed = asyncio.Event()

    def token(self, base):
        q = urllib.parse.urlencode({"name": self.name})
        with urllib.request.urlopen(f"{http_base(base)}/dev/token?{q}", timeout=5,
                                    context=self.ctx) as r:
            return json.load(r)["token"]

    async def connect(self, first):
        last = None
        for i in range(len(self.urls) * 3):
            base = self.urls[(self.k + i) % len(self.urls)]
            try:
                q = {"token": self.token(base)}
                if self.seqs:
                    q["since"] = str(self.seqs[-1])
                url = f"{base}/ws/{self.room}?{urllib.parse.urlencode(q)}"
                self.ws = await websockets.connect(url, ssl=self.ctx if base.startswith("wss") else None,
                                                   open_timeout=5, ping_interval=None, max_size=None)
                raw = await asyncio.wait_for(self.ws.recv(), 5)
                w = json.loads(raw)
                if w.get("type") != "welcome":
                    raise RuntimeError(f"first frame {w}")
                if not first:
                    self.moves.append((self.node, w["node"]))
                self.node = w["node"]
                self.closed.clear()
                asyncio.get_running_loop().create_task(self.read())
                return
            except Exception as e:   # the dead node, a 502 from the front while it notices
                last = e
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name}: cannot connect: {last}")

    async def read(self):
        try:
            async for raw in self.ws:
                f = json.loads(raw)
                if f.get("type") == "message" and f.get("room") == self.room:
                    self.seqs.append(f["seq"])
        except websockets.ConnectionClosed:
            pass
        self.closed.set()


def spread(clients):
    d = {}
    for c in clients:
        d[c.node] = d.get(c.node, 0) + 1
    return ", ".join(f"{n}: {k}" for n, k in sorted(d.items()))


async def wait_all(clients, n, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(len(c.seqs) >= n for c in clients):
            return True
        await asyncio.sleep(0.05)
    return False


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--cafile")
    ap.add_argument("--kill-pid", type=int, required=True)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--room", default="demo")
    ap.add_argument("--messages", type=int, default=20)
    a = ap.parse_args()
    urls = [u.strip().rstrip("/") for u in a.url.split(",")]
    ctx = ssl.create_default_context(cafile=a.cafile) if a.cafile else None
    room = f"{a.room}-{os.getpid()}"
    clients = [C(k, urls, room, ctx) for k in range(a.clients)]
    for c in clients:
        await c.connect(True)
    print(f"  {len(clients)} clients in room {room} via {a.url}: {spread(clients)}", flush=True)
    pub = clients[0]
    for i in range(a.messages):
        await pub.ws.send(json.dumps({"type": "message", "body": f"before {i}", "id": f"b{i}"}))
    if not await wait_all(clients, a.messages, 10):
        print("  FAIL: messages before the kill did not reach everyone")
        return 1
    victim = {c.node for c in clients}
    print(f"  {a.messages} messages delivered to all {len(clients)} clients", flush=True)
    t0 = time.monotonic()
    os.kill(a.kill_pid, signal.SIGKILL)
    print(f"  kill -9 {a.kill_pid}", flush=True)
    await asyncio.sleep(0.3)
    dropped = [c for c in clients if c.closed.is_set()]
    for c in clients:
        if c.closed.is_set():
            await c.connect(False)
    dt = (time.monotonic() - t0) * 1000
    moved = [c for c in clients if c.moves]
    print(f"  {len(dropped)} clients dropped, reconnected with since= in {dt:.0f} ms: {spread(clients)}",
          flush=True)
    pub = next(c for c in clients if c.ws and not c.closed.is_set())
    for i in range(a.messages):
        await pub.ws.send(json.dumps({"type": "message", "body": f"after {i}", "id": f"a{i}"}))
    ok = await wait_all(clients, 2 * a.messages, 10)
    bad = [c for c in clients if c.seqs != list(range(1, 2 * a.messages + 1))]
    for c in clients:
        await c.ws.close()
    if not dropped or len(moved) != len(dropped) or any(a_ == b_ for m in moved for a_, b_ in m.moves):
        print(f"  FAIL: {len(dropped)} dropped, {len(moved)} moved to another node ({victim})")
        return 1
    if not ok or bad:
        print(f"  FAIL: {len(bad)} clients saw gaps or duplicates, e.g. {bad[0].seqs if bad else ''}")
        return 1
    print(f"  every client saw seq 1..{2 * a.messages} exactly once, in order: 0 lost, 0 duplicated",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
