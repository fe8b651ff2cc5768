#!/usr/bin/env python3
"""bench_user_conns: Redis' CPU for the renewal pass of the per-user connection
counts (core/uconns.c, core/adminstore.c), one script call per user against
the batched call (adminstore_conns_renew), on the same Redis, alternated.

  /usr/bin/python3 loadtest/bench_user_conns.py PORT [SECONDS] [ROUNDS]

PORT: a running redis-server (e.g. tools/services.sh's services_start_redis,
which runs `appendfsync always` as ./run.sh does). The load is what a node with
5,000 users sends at the default CHAT_USER_CONNS_TTL_MS (30 s: a pass every
10 s, spread over the 100 ms ticks): 50 renewals per tick, 500 per second,
either as 50 EVALSHAs of the admission script with max 0 (before) or as one
EVALSHA of the renewal script (after). The scripts are read from
core/adminstore.c, so the figures are those of the code in this tree. Prints
per round and mode Redis' CPU (INFO cpu, user + sys) per renewal, less the
idle rate measured first over the same time.
"""
import os
import re
import socket
import sys
import time

import capacity  # its RESP encoder and parser, and redis_cpu

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "core", "adminstore.c")
USERS = 5000
PER_TICK = 50
TICK_S = 0.1


def lua_of(src, name, macros):
    m = re.search(r"static const char " + name + r"\[\] =\n(.*?);\n", src, re.S)
    body = m.group(1)
    for k, v in macros.items():
        body = body.replace(k, v)
    return "".join(eval(x) for x in re.findall(r'"(?:[^"\\]|\\.)*"', body))


def scripts():
    src = open(SRC).read()
    m = re.search(r"#define LUA_CONNS_PUT \\\n(.*?)\n\n", src, re.S)
    put = m.group(1).replace("\\\n", "\n")
    return lua_of(src, "CONNS_LUA", {"LUA_CONNS_PUT": put}), lua_of(src, "CONNS_RENEW_LUA", {"LUA_CONNS_PUT": put})


class Redis:
    """One connection, pipelined calls (capacity.py's RESP encoder and parser)."""

    def __init__(self, port):
        self.port = port
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf, self.i = b"", 0

    def send(self, *args):
        self.s.sendall(capacity.resp(*args))

    def read(self):
        while True:
            v, j = capacity.parse_resp(self.buf, self.i)
            if j:
                self.i = j
                if self.i == len(self.buf):
                    self.buf, self.i = b"", 0
                return v
            more = self.s.recv(65536)
            if not more:
                raise RuntimeError("redis closed the connection")
            self.buf += more

    def call(self, *args):
        self.send(*args)
        return self.read()

    def cpu(self):
        return capacity.redis_cpu(self.port)


def bench_args(doc, secs, rounds):
    """PORT [SECONDS] [ROUNDS] of both Redis benches (the usage is the
    caller's docstring) -> (a Redis connection, seconds, rounds)."""
    if len(sys.argv) < 2:
        print(doc, file=sys.stderr)
        sys.exit(2)
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else secs
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else rounds
    return Redis(int(sys.argv[1])), secs, rounds


def alternate(run, modes, rounds, unit):
    """The measurement both Redis benches share: run(None) first (idle: what
    Redis spends anyway over the same time), then `rounds` rounds of every
    mode in turn; run(mode) -> (Redis CPU s, elapsed s, operations). Prints
    each round's Redis CPU per operation less the idle rate, returns
    {mode: median} (the middle round: rounds should be odd)."""
    idle_cpu, idle_s, _ = run(None)
    idle_rate = idle_cpu / idle_s
    print("idle: %.1f ms of Redis CPU per s" % (idle_rate * 1000))
    res = {m: [] for m in modes}
    for k in range(rounds):
        for m in modes:
            cpu, el, n = run(m)
            us = (cpu - idle_rate * el) * 1e6 / n
            res[m].append(us)
            print("round %d %-12s %d %ss, Redis %.2f us per %s" % (k + 1, m, n, unit, us, unit),
                  flush=True)
    return {m: sorted(v)[len(v) // 2] for m, v in res.items()}


def run(r, mode, secs, sha_one, sha_batch):
    users = ["bench%05d" % i for i in range(USERS)]
    c0, t0, i, n = r.cpu(), time.time(), 0, 0
    while time.time() - t0 < secs:
        keys = ["chat:{conns:%s}:n" % users[(i + j) % USERS] for j in range(PER_TICK)]
        i += PER_TICK
        if mode == "one":
            r.s.sendall(b"".join(capacity.resp("EVALSHA", sha_one, 1, k, "bench-node", 1, 30000, 0)
                                 for k in keys))
            for _ in keys:
                v = r.read()
                if not isinstance(v, list):
                    raise RuntimeError("the admission script failed: %s" % v)
            n += len(keys)
        elif mode == "batch":
            if r.call("EVALSHA", sha_batch, len(keys), *keys, "bench-node", 30000,
                      *([1] * len(keys))) != str(len(keys)):
                raise RuntimeError("the renewal script failed")
            n += len(keys)
        time.sleep(max(0.0, TICK_S - ((time.time() - t0) % TICK_S)))
    return r.cpu() - c0, time.time() - t0, n


def main():
    r, secs, rounds = bench_args(__doc__, 10, 2)
    one, batch = scripts()
    sha_one, sha_batch = r.call("SCRIPT", "LOAD", one), r.call("SCRIPT", "LOAD", batch)
    print("appendfsync %s" % r.call("CONFIG", "GET", "appendfsync")[1])
    med = alternate(lambda mode: run(r, mode or "idle", secs, sha_one, sha_batch),
                    ("one", "batch"), rounds, "renewal")
    one_m, batch_m = med["one"], med["batch"]
    print("median: one call per user %.2f us, batched %.2f us per renewal: batched/one %.2f"
          % (one_m, batch_m, batch_m / one_m))


if __name__ == "__main__":
    main()
