#!/usr/bin/env python3
"""Fault proxy: a TCP relay that the fault harness puts between chatd and
Redis or Postgres, so it can degrade that link on command.

    /usr/bin/python3 tests/faults/proxy.py LISTEN_PORT TARGET_PORT

Prints "ready" once listening, then reads one command per line on stdin and
answers "ok" (or "err ...") on stdout:

    delay MS        every chunk is forwarded MS ms after it arrived (order kept)
    loss PCT MS     each chunk, with probability PCT %, is held MS ms more, and
                    the chunks behind it wait too: what TCP does when a segment
                    is lost and retransmitted (the kernel here has no netem)
    stall           nothing is forwarded (connections stay open) until unstall
    unstall
    reset           every open connection is closed with a TCP RST, both sides
    refuse / accept new connections are reset at once / accepted again
    clear           back to a clean link (no delay, loss or stall)
    stats           "ok conns=N chunks=N"

Owns: its listening socket and the relay tasks of each connection; all end
when stdin closes (the harness exits or kills it by PID).
"""
import asyncio
import random
import socket
import struct
import sys
import time


class Link:
    def __init__(self):
        self.delay = 0.0
        self.loss_p = 0.0
        self.loss_hold = 0.0
        self.refuse = False
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.conns = set()
        self.chunks = 0


def rst(writer):
    """Close with RST (SO_LINGER 0), not FIN: what a reset link looks like."""
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    except (OSError, AttributeError):
        pass


class Conn:
    def __init__(self, link, cr, cw, ur, uw):
        self.link = link
        self.cw, self.uw = cw, uw
        self.tasks = []
        for r, w in ((cr, uw), (ur, cw)):
            q = asyncio.Queue()
            self.tasks.append(asyncio.ensure_future(self.read(r, q)))
            self.tasks.append(asyncio.ensure_future(self.write(q, w)))

    async def read(self, r, q):
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                hold = 0.0
                if self.link.loss_p and random.random() < self.link.loss_p:
                    hold = self.link.loss_hold
                q.put_nowait((time.monotonic(), hold, data))
        except (OSError, asyncio.CancelledError):
            pass
        q.put_nowait(None)

    async def write(self, q, w):
        try:
            while True:
                item = await q.get()
                if item is None:
                    break
                t, hold, data = item
                due = t + self.link.delay + hold
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                await self.link.flowing.wait()
                self.link.chunks += 1
                w.write(data)
                await w.drain()
        except (OSError, asyncio.CancelledError):
            pass
        self.close()

    def close(self):
        for w in (self.cw, self.uw):
            try:
                w.close()
            except OSError:
                pass
        self.link.conns.discard(self)

    def reset(self):
        for t in self.tasks:
            t.cancel()
        rst(self.cw)
        rst(self.uw)
        self.link.conns.discard(self)


async def main(listen_port, target_port):
    link = Link()

    async def accept(cr, cw):
        if link.refuse:
            rst(cw)
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            rst(cw)
            return
        for w in (cw, uw):
            s = w.get_extra_info("socket")
            if s is not None:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.conns.add(Conn(link, cr, cw, ur, uw))

    server = await asyncio.start_server(accept, "127.0.0.1", listen_port, reuse_address=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    print("ready", flush=True)
    while True:
        line = await stdin.readline()
        if not line:
            break
        cmd = line.decode().split()
        if not cmd:
            continue
        try:
            out = "ok"
            if cmd[0] == "delay":
                link.delay = float(cmd[1]) / 1000
            elif cmd[0] == "loss":
                link.loss_p = float(cmd[1]) / 100
                link.loss_hold = float(cmd[2]) / 1000
            elif cmd[0] == "stall":
                link.flowing.clear()
            elif cmd[0] == "unstall":
                link.flowing.set()
            elif cmd[0] == "reset":
                for c in list(link.conns):
                    c.reset()
            elif cmd[0] == "refuse":
                link.refuse = True
            elif cmd[0] == "accept":
                link.refuse = False
            elif cmd[0] == "clear":
                link.delay = link.loss_p = link.loss_hold = 0.0
                link.refuse = False
                link.flowing.set()
            elif cmd[0] == "stats":
                out = f"ok conns={len(link.conns)} chunks={link.chunks}"
            else:
                out = f"err unknown command {cmd[0]}"
        except (IndexError, ValueError) as e:
            out = f"err {e}"
        print(out, flush=True)
    server.close()
    for c in list(link.conns):
        c.reset()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
