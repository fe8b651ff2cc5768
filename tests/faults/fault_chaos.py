"""Randomized, overlapping faults for the fault harness (`run.py --chaos SEED`).

A seed gives a schedule: a list of (start s, action, target, duration s),
drawn once from random.Random(seed), printed before the run, so a failing
seed can be run again with the same schedule (the timing of the processes
is not deterministic; the schedule is). Actions on different targets
overlap freely (a node killed while Redis is stopped, Postgres restarted
while a node's Redis link stalls...); two actions on the same target never
overlap. The schedule runs as the fault of one run.py phase (same load, same
cold rooms, same drain, same checker), then everything is healed.

Targets: each node (n0, n1), Redis, Postgres, and each node's own Redis and
Postgres link (the Cluster is built with link_per_node=True). Redis runs
with appendonly yes, appendfsync always (as ./run.sh starts it), so a
kill -9 of Redis keeps every write it answered; `redis-restart-empty` (rare,
only with lossy=True: `--chaos-lossy`) deletes its files as well.
"""
import asyncio
import glob
import os
import random
import shutil
import signal
import time

import harness

REDIS_DURABLE = ["--appendonly", "yes", "--appendfsync", "always"]

# name -> (weight, duration range s, kind of target)
ACTIONS = {
    "node-kill9": (3, (0.2, 4.0), "node"),
    "node-sigstop": (2, (0.5, 6.0), "node"),
    "redis-kill9": (3, (0.0, 3.0), "redis"),
    "redis-restart-empty": (1, (0.0, 2.0), "redis"),
    "redis-sigstop": (2, (0.5, 7.0), "redis"),
    "pg-restart": (2, (0.3, 3.0), "pg"),
    "pg-sigstop": (2, (0.5, 7.0), "pg"),
    "link-stall": (3, (0.5, 7.0), "link"),
    "link-cut": (3, (0.3, 4.0), "link"),      # every connection reset, new ones refused
    "link-reset": (2, (0.0, 0.0), "link"),
    "link-delay": (1, (1.0, 5.0), "link"),
    "link-loss": (1, (1.0, 5.0), "link"),
    "clients-drop": (1, (0.0, 0.0), None),
}


def targets(kind, n_nodes):
    if kind == "node":
        return [f"n{i}" for i in range(n_nodes)]
    if kind == "link":
        return [f"{svc}@n{i}" for svc in ("redis", "pg") for i in range(n_nodes)]
    if kind in ("redis", "pg"):
        return [kind]
    return ["clients"]


# actions in which Redis loses acknowledged writes (not with appendfsync
# always): only with lossy=True (run.py --chaos-lossy)
LOSSY = {"redis-restart-empty"}


def schedule(seed, secs, n_nodes=2, mean_gap=1.2, rest=0.5, lossy=False):
    """[(start, action, target, dur)] for `secs` seconds of chaos."""
    rng = random.Random(seed)
    names = [a for a in ACTIONS if lossy or a not in LOSSY]
    weights = [ACTIONS[a][0] for a in names]
    busy = {}
    out = []
    t = rng.uniform(0.0, 1.0)
    while t < secs:
        for _ in range(8):
            a = rng.choices(names, weights)[0]
            w, (lo, hi), kind = ACTIONS[a]
            tgt = rng.choice(targets(kind, n_nodes))
            if busy.get(tgt, -1) <= t or tgt == "clients":
                dur = round(rng.uniform(lo, hi), 1)
                out.append((round(t, 1), a, tgt, dur))
                busy[tgt] = t + dur + rest
                break
        t += rng.expovariate(1.0 / mean_gap)
    return out


def format_schedule(sched):
    return "; ".join(f"{t:.1f} {a} {tg} {d:.1f}" for t, a, tg, d in sched)


def parse_schedule(text):
    """The inverse of format_schedule (a schedule given by hand)."""
    out = []
    for part in text.split(";"):
        f = part.split()
        if f:
            out.append((float(f[0]), f[1], f[2], float(f[3])))
    return out


# ---------------------------------------------------------------- actions
def _node(c, tgt):
    return c.nodes[int(tgt[1:])]


def _link(c, tgt):
    svc, _, node = tgt.partition("@")
    return c.link(svc, int(node[1:]))


async def _restart_node(c, n):
    await asyncio.to_thread(harness.wait_port_closed, n.port)
    n.killed = False
    n.start(wait=False)


async def a_node_kill9(c, load, tgt, dur):
    n = _node(c, tgt)
    n.killed = True
    n.kill9()
    await asyncio.sleep(dur)
    await _restart_node(c, n)


async def a_node_sigstop(c, load, tgt, dur):
    n = _node(c, tgt)
    os.kill(n.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(dur)
    finally:
        os.kill(n.proc.pid, signal.SIGCONT)


async def a_redis_kill9(c, load, tgt, dur, empty=False):
    c.redis.kill9()
    await asyncio.sleep(dur)
    if empty:
        for p in glob.glob(os.path.join(c.redis.dir, "appendonlydir")):
            shutil.rmtree(p, ignore_errors=True)
        for p in glob.glob(os.path.join(c.redis.dir, "*.rdb")):
            os.remove(p)
    await asyncio.to_thread(c.redis.start)


async def a_redis_restart_empty(c, load, tgt, dur):
    await a_redis_kill9(c, load, tgt, dur, empty=True)


async def a_redis_sigstop(c, load, tgt, dur):
    os.kill(c.redis.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(dur)
    finally:
        os.kill(c.redis.proc.pid, signal.SIGCONT)


async def a_pg_restart(c, load, tgt, dur):
    await asyncio.to_thread(c.pg.crash)
    await asyncio.sleep(dur)
    await asyncio.to_thread(c.pg.restart)


async def a_pg_sigstop(c, load, tgt, dur):
    c.stop_pg(signal.SIGSTOP)
    try:
        await asyncio.sleep(dur)
    finally:
        c.stop_pg(signal.SIGCONT)


def a_link(*cmds):
    async def f(c, load, tgt, dur):
        p = _link(c, tgt)
        for cmd in cmds:
            await p.cmd(cmd)
        try:
            await asyncio.sleep(dur)
        finally:
            await p.cmd("clear")
    return f


async def a_clients_drop(c, load, tgt, dur):
    rng = random.Random(len(load.clients) + int(time.monotonic() * 1000))
    for cl in load.clients:
        if rng.random() < 0.3:
            cl.drop()


RUN = {
    "node-kill9": a_node_kill9,
    "node-sigstop": a_node_sigstop,
    "redis-kill9": a_redis_kill9,
    "redis-restart-empty": a_redis_restart_empty,
    "redis-sigstop": a_redis_sigstop,
    "pg-restart": a_pg_restart,
    "pg-sigstop": a_pg_sigstop,
    "link-stall": a_link("stall"),
    "link-cut": a_link("refuse", "reset"),
    "link-reset": a_link("reset"),
    "link-delay": a_link("delay 200"),
    "link-loss": a_link("loss 10 300"),
    "clients-drop": a_clients_drop,
}


def chaos_fault(sched, timeline):
    """A run.py fault function (cluster, load, dur) that plays `sched`;
    `timeline` receives (start, end, action, target, error) as they end."""
    async def f(c, load, dur):
        t0 = time.monotonic()
        locks = {}

        async def one(t, a, tgt, d):
            await asyncio.sleep(max(0.0, t0 + t - time.monotonic()))
            lock = locks.setdefault(tgt, asyncio.Lock())
            async with lock:                 # a late start never overlaps its target's last
                s = time.monotonic() - t0
                err = None
                try:
                    await RUN[a](c, load, tgt, d)
                except Exception as e:       # noqa: reported with the run, not fatal
                    err = f"{type(e).__name__}: {e}"
                timeline.append((round(s, 1), round(time.monotonic() - t0, 1), a, tgt, err))

        await asyncio.gather(*(one(*ev) for ev in sched))
        await c.heal()
        await c.ready(60)
    return f
