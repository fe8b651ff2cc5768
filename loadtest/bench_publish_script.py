#!/usr/bin/env python3
"""bench_publish_script: where Redis' CPU per publish goes (issue 15, docs/cost.md
section 22). The publish script of this tree (BUS_PUBLISH_LUA, read from
core/bus_script.c through the C preprocessor, so its macros are expanded)
against the same script without one of its parts, and against the floor: a
script that only INCRs the seq and PUBLISHes. All on one Redis, alternated.

  /usr/bin/python3 loadtest/bench_publish_script.py PORT [SECONDS] [ROUNDS]

PORT: a running redis-server (tools/services.sh's services_start_redis runs
`appendfsync always`, as ./run.sh does). The load is the dm scenario's shape
at its rate: 1,000 calls a second over 1,000 rooms, one call per Redis round
(what a node without CHAT_REDIS_LINGER_MS sends at that rate), each with a
client id, the unstored record and a provider's seed mode ('S' with this
Redis' run_id), each room's recent buffer full first (RECENT entries: every
call trims one, as in a room past CHAT_RECENT_MAX). Not measured here: the
backfill sweep and settle calls that later remove the unstored records (a
few commands per message, batched per round; dm.sh counts them). Prints per round and variant Redis' CPU (INFO cpu, user +
sys) per call, less the idle rate measured first, and the medians with their
ratio to the whole script.
"""
import os
import random
import re
import subprocess
import time

from bench_user_conns import alternate, bench_args  # the arguments, the rounds

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
ROOMS = 1000
RATE = 1000
RECENT = 100    # each room's recent buffer, filled first: every publish trims one entry, as in a
                # room that has had more than CHAT_RECENT_MAX messages (the default 1,000 x 1,000
                # rooms would not fit the bench's Redis as comfortably)


def publish_lua():
    """BUS_PUBLISH_LUA as chatd loads it: cc -E expands LUA_RUN_PARSE and
    LUA_SEED_HEAD, then the string literals of its initializer are joined."""
    cc = os.environ.get("CC", "cc")
    out = subprocess.run([cc, "-E", "-P", "-I", os.path.join(REPO, "core"), "-I", os.path.join(REPO, "build"),
                          os.path.join(REPO, "core", "bus_script.c")],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r"const char BUS_PUBLISH_LUA\[\] =(.*?);\n", out, re.S)
    if not m:
        raise RuntimeError("BUS_PUBLISH_LUA not found in core/bus_script.c")
    return "".join(eval(x) for x in re.findall(r'"(?:[^"\\]|\\.)*"', m.group(1)))


def without(lua, part, text):
    if text not in lua:
        raise RuntimeError("the publish script no longer has its %s: update this bench" % part)
    return lua.replace(text, "")


def variants():
    lua = publish_lua()
    return {
        "whole": lua,
        "no_id_key": without(lua, "id key", "if idk then redis.call('SET', idk, seq, 'EX', ARGV[3]) end\n"),
        "no_unstored": without(lua, "unstored record",
                               "  redis.call('ZADD', KEYS[5], ARGV[6], seq)\n"
                               "  redis.call('ZADD', KEYS[6], 'NX', ARGV[6], ARGV[7])\n"),
        "no_recent": without(lua, "recent buffer",
                             "redis.call('ZADD', KEYS[2], seq, m)\n"),
        "floor": "local seq = redis.call('INCR', KEYS[1])\n"
                 "redis.call(ARGV[12] or 'publish', ARGV[4], seq .. '\\n' .. ARGV[1])\n"
                 "return {seq, 0}\n",
    }


def run(r, sha, secs, run_id):
    tail = '"room":"r","user":"u","name":"n","body":"' + "b" * 80 + '","ts":1}'
    c0, t0, n = r.cpu(), time.time(), 0
    while time.time() - t0 < secs:
        if sha:
            room = "bench%04d" % (n % ROOMS)
            p = "chat:{%s}:" % room
            keys = [p + "seq", p + "recent", p + "epoch", p + "run", p + "unstored", "chat:unstored",
                    p + "sid:u%d" % random.randrange(1 << 40)]
            v = r.call("EVALSHA", sha, len(keys), *keys, tail, RECENT, 600, p + "msg", 0,
                       int(time.time() * 1000), room, 1, "S" + run_id, "0", "bench-epoch")
            if not isinstance(v, list) or str(v[1]) != "0":
                raise RuntimeError("the publish script answered %r" % (v,))
        n += 1
        time.sleep(max(0.0, n / RATE - (time.time() - t0)))
    return r.cpu() - c0, time.time() - t0, n


def main():
    r, secs, rounds = bench_args(__doc__, 8, 3)
    shas = {k: r.call("SCRIPT", "LOAD", v) for k, v in variants().items()}
    run_id = re.search(r"run_id:(\w+)", r.call("INFO", "server")).group(1)
    print("appendfsync %s" % r.call("CONFIG", "GET", "appendfsync")[1])
    for i in range(ROOMS):   # every room's head seeded by this Redis run, its buffer full
        p = "chat:{bench%04d}:" % i
        r.call("DEL", p + "recent", p + "unstored")
        r.call("MSET", p + "seq", RECENT, p + "epoch", "bench-epoch", p + "run", run_id)
        args = []
        for s in range(1, RECENT + 1):
            args += [s, "%d\n%s" % (s, "x" * 150)]
        r.call("ZADD", p + "recent", *args)
    med = alternate(lambda name: run(r, shas[name] if name else None, secs, run_id), list(shas),
                    rounds, "call")
    for name, m in med.items():
        print("median %-12s %6.1f us per call  %.2f of the whole script" % (name, m, m / med["whole"]))


if __name__ == "__main__":
    main()
