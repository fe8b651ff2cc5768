#!/usr/bin/env python3
"""chatd fault harness: 2 chatd nodes, a real Redis and Postgres (its own),
a fault proxy on each node's Redis and Postgres link, reconnecting clients
with client message ids and since=, and one fault at a time. After each fault
the checker (fault_check.py) proves or refutes the guarantees of protocol.md.

  /usr/bin/python3 tests/faults/run.py [--chatd build/chatd]     short form (./test.sh)
  /usr/bin/python3 tests/faults/run.py --long                    long form, writes the
                                                                 table into docs/reliability.md
  options: --only f1,f2  --rate N  --rooms N  --keep  --no-docs  --list
           --netns: run in a new network namespace (root, `ip netns`, nftables) and
                    add the faults that drop packets for real with nftables

  /usr/bin/python3 tests/faults/run.py --chaos 1,2,3 [--chaos-secs 60] [--chaos-lossy]
                                       [--chaos-nodes 3]
           random overlapping faults, one phase per seed (not in the default run):
           the seed's schedule (fault_chaos.py, printed first) of node kill -9 /
           SIGSTOP, Redis kill -9 (appendfsync always: nothing lost) / SIGSTOP,
           Postgres crash / SIGSTOP, cuts, stalls, resets, delay and loss of ONE
           node's Redis or Postgres link (a proxy per node and service), client
           drops; then the same drain and checker as a single fault. On a failure
           it prints the real timeline and the trace of the clients that skipped.
           --chaos-lossy: Redis may also restart empty (loses acked writes: seqs
           broadcast but not committed can be reused, README "Durability").
           --schedule "0.5 node-kill9 n0 2.0; 1.0 redis-kill9 redis 1.5": play
           this schedule (as printed) instead of the seed's.

Ports: every server it starts (nodes, Redis, Postgres, proxies, ./run.sh)
listens on a port of CHATD_TEST_PORT_LO..HI (default 17200-17499), handed out
by the integration harness's free_port, as in tests/integration.

One line per check (PASS/FAIL/XFAIL/XPASS), the fault x load x result table,
then `N passed, N failed` (and `N xfail` on its own line). XFAIL: a fault
that fails because of a known defect being fixed elsewhere (XFAIL table
below, with the defect named); it is never counted as passed. Exit 1 on any
FAIL.
"""
import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# ours first: tests/integration has modules of its own (e.g. cluster.py)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, HERE)

import harness  # noqa: E402
import fault_check as checker  # noqa: E402
from fault_rig import Cluster, FAULTS, NETNS_FAULTS, SLOW_FAULTS, extra_chat_env, netns_available  # noqa: E402
from fault_load import Load  # noqa: E402
import fault_chaos  # noqa: E402

# Faults that fail on main because of a known defect being fixed elsewhere.
# Remove the entry when the fix merges (an XPASS line says when).
# name -> (the defect, the only kinds of problem it explains): any other
# problem in that fault is a FAIL.
XFAIL = {
}

DOCS = os.path.join(REPO, "docs", "reliability.md")
LOAD0 = 0.0       # load average when the run started (the machine is shared)
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"


class Profile:
    def __init__(self, long):
        self.long = long
        self.rooms = 40 if long else 20
        self.senders = 2
        self.listeners = 2 if long else 1
        self.cold = 4 if long else 2
        self.rate = 1000 if long else 400
        self.warm = 4.0 if long else 2.0
        self.after = 4.0 if long else 2.0
        self.drain = 40.0 if long else 25.0
        self.converge = 20.0 if long else 15.0
        self.rss_limit_mib = 256
        # a gap_too_large is not a failure by itself (fault_check): with
        # --chaos, or with a recent or replay buffer set in FAULTS_CHAT_ENV
        env = extra_chat_env()
        self.gap_ok = "CHAT_RECENT_MAX" in env or "CHAT_REPLAY_MAX" in env


async def phase(cluster, prof, name, fn, dur, idx, loads=None):
    """One fault under load; returns the checker's result (and appends the
    load to `loads`, when given, for a closer look at its clients)."""
    steps = []
    mark = [time.monotonic()]

    def step(what):
        now = time.monotonic()
        steps.append(f"{what} {now - mark[0]:.1f}")
        mark[0] = now
    await cluster.heal()
    await cluster.ready(30)
    step("heal")
    load = Load(cluster, f"{idx}{name.replace('-', '')}-{os.getpid() % 10000}", prof.rooms,
                prof.senders, prof.listeners, prof.rate, cold_rooms=prof.cold)
    if loads is not None:
        loads.append(load)
    t0 = time.monotonic()
    started = await load.start(30)
    step("connect")
    cluster.rss_reset()
    load.start_sending()
    await asyncio.sleep(prof.warm)
    # cold rooms: their clients go offline (once their messages are acked) so
    # that no node holds the room during the fault, and come back with since=
    cold = [c for c in load.clients if c.room in load.cold]
    for c in cold:
        c.quiet = True
    await asyncio.sleep(0.5)
    for c in cold:
        c.pause()
    await asyncio.sleep(0.5)
    tf = time.monotonic()
    step("warm")
    await fn(cluster, load, dur)
    healed = time.monotonic()
    step("fault")
    await asyncio.sleep(0.5)
    for c in cold:
        c.resume()
    await asyncio.sleep(prof.after)
    await load.stop_sending()
    step("after")
    t_load = time.monotonic() - t0
    drained = await load.drain(prof.drain)
    step("drain")
    converged = await load.converge(prof.converge)
    step("converge")
    dead = cluster.check_nodes()
    res = await checker.check(cluster, load, drained, converged, dead, prof.rss_limit_mib,
                              gap_ok=prof.gap_ok)
    step("check")
    res["steps"] = " ".join(steps)
    if not started:
        res["problems"].insert(0, ("back", "not every client connected before the load"))
        res["ok"] = False
    res["rate"] = load.sent / max(t_load, 0.001)
    res["sent"] = load.sent
    res["fault_s"] = healed - tf
    res["clients"] = len(load.clients)
    res["note"] = load.note
    await load.close()
    for n, _ in dead:                   # a crashed node is restarted for the next phase
        for node in cluster.nodes:
            if node.name == n:
                node.killed = True
    return res


def fmt_s(v):
    return "-" if v is None else f"{v:.1f}"


def table(rows, prof):
    head = ("| fault | load | acked | lost | reused | dup | order/gap | holes | unacked | back "
            "| reconnect s | ack max s | RSS MiB | result |")
    out = [head, "|" + " --- |" * 14]
    for name, res, verdict in rows:
        load = (f"{res['rate']:.0f} msg/s, {prof.rooms} rooms, {res['clients']} clients, "
                f"fault {res['fault_s']:.0f} s")
        out.append(f"| {name} | {load} | {res['acked']} | {res['lost']} | {res['reused']} | "
                   f"{res['dup']} | {res['order']} | {res['holes']} | {res['unacked']} | "
                   f"{res['back']} | {fmt_s(res['reconnect_max'])} | {res['ack_max']:.1f} | "
                   f"{res['rss_mib']:.0f} | {verdict} |")
    return "\n".join(out)


def write_docs(text):
    try:
        with open(DOCS) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = "# Reliability\n"
    if BEGIN in doc and END in doc and doc.index(BEGIN) < doc.index(END):
        a = doc.index(BEGIN) + len(BEGIN)
        b = doc.index(END)
        doc = doc[:a] + "\n" + text + "\n" + doc[b:]
    else:
        doc = doc.rstrip("\n") + "\n\n" + BEGIN + "\n" + text + "\n" + END + "\n"
    tmp = DOCS + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc)
    os.replace(tmp, DOCS)


def check_run_sh_durable(workdir):
    """./run.sh must start Redis and Postgres durable, even when the
    environment carries the test suite's SERVICES_FAST=1."""
    data = os.path.join(workdir, "runsh")
    os.makedirs(data)
    os.chmod(data, 0o755)
    listen, rport, pport = harness.free_port(), harness.free_port(), harness.free_port()
    # the defaults are under test: no CHAT_* and no REDIS_APPENDFSYNC from outside
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CHAT_") and k != "REDIS_APPENDFSYNC"}
    env.update({"CHATD_DATA": data, "CHAT_LISTEN": f"127.0.0.1:{listen}",
                "CHATD_REDIS_PORT": str(rport), "CHATD_PG_PORT": str(pport),
                "SERVICES_FAST": "1"})
    log = open(os.path.join(workdir, "runsh.log"), "wb")
    # a user's shell gives run.sh SIGINT at its default; a suite started in the
    # background of a non-interactive shell inherits it ignored, and bash cannot
    # trap a signal ignored on entry (Ctrl-C would then do nothing)
    p = subprocess.Popen(["bash", os.path.join(REPO, "run.sh")], env=env, stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    problems = []
    try:
        end = time.time() + 240
        up = False
        while time.time() < end and p.poll() is None:
            try:
                st, _, _ = harness.http_get(listen, "/healthz", timeout=0.5)
                up = st == 200
            except OSError:
                pass
            if up:
                break
            time.sleep(0.2)
        if not up:
            with open(os.path.join(workdir, "runsh.log"), "rb") as f:
                tail = f.read().decode("utf-8", "replace").splitlines()[-5:]
            return [f"./run.sh did not serve /healthz: {' | '.join(tail)}"]

        def redis(*a):
            r = subprocess.run(["redis-cli", "-p", str(rport)] + list(a), capture_output=True,
                               text=True, timeout=10)
            return r.stdout.split()

        def pg(setting):
            r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pport), "-U", "postgres",
                                "-d", "chatd", "-tAc", f"SHOW {setting}"], capture_output=True,
                               text=True, timeout=10)
            return r.stdout.strip() or r.stderr.strip()
        for a, want in ((("CONFIG", "GET", "appendonly"), ["appendonly", "yes"]),
                        (("CONFIG", "GET", "appendfsync"), ["appendfsync", "always"])):
            got = redis(*a)
            if got != want:
                problems.append(f"redis {' '.join(a)} = {got}, want {want}")
        for s in ("fsync", "synchronous_commit", "full_page_writes"):
            got = pg(s)
            if got != "on":
                problems.append(f"postgres {s} = {got!r}, want 'on'")
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGINT)       # run.sh's trap stops chatd, Redis, Postgres
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        log.close()
        pm = os.path.join(data, "pg", "postmaster.pid")
        if os.path.exists(pm):
            problems.append("run.sh left Postgres running after SIGINT")
    return problems


async def guarded_phase(cluster, prof, name, fn, dur, idx, load_of=None):
    """phase(), with a failure of the harness itself reported as a FAIL with
    its reason, and the count of connections that were told they could not
    be recovered (an id-less unavailable, or gap_too_large) and resumed with
    since= in the phase's note: the load does not judge what follows such an
    answer, so the count shows in every phase, not only in --chaos; with the
    gap_too_large answers, the history gap fills they caused and the seqs
    taken from history (fault_load.py fill_gap)."""
    load_of = [] if load_of is None else load_of
    try:
        res = await phase(cluster, prof, name, fn, dur, idx, load_of)
    except Exception as e:  # noqa: the harness itself failed: a FAIL, with the reason
        import traceback
        traceback.print_exc()
        return {"ok": False, "problems": [("harness", f"{type(e).__name__}: {e}")],
                "acked": 0, "lost": 0, "reused": 0, "dup": 0, "order": 0, "holes": 0,
                "unacked": 0, "back": "?", "reconnect_max": None, "ack_max": 0.0,
                "rss_mib": 0, "rate": 0, "clients": 0, "fault_s": 0}
    if load_of:
        told = sum(c.recovery_unavailable for c in load_of[0].clients)
        if told:
            res["note"] = ((res.get("note") or "") + f" connections told unavailable (no id) or "
                           f"gap_too_large, then resumed with since=: {told}").strip()
    if res.get("gap_too_large"):
        res["note"] = "; ".join(x for x in (
            res.get("note"), f"gap_too_large: {res['gap_too_large']}, history gap fills: "
            f"{res['fills']} ({res['fills_lagged']} paged again: history behind), seqs paged "
            f"from history: {res['paged']}, left pending by a fill's wait and looked up again: "
            f"{res['pended']}, unrecovered: {res['unrecovered']}") if x)
    return res


async def faults_main(args, prof, faults, cluster, results):
    cluster.start_sampler()
    for i, (name, what, fn, durs) in enumerate(faults):
        dur = durs[1] if prof.long else durs[0]
        t = time.monotonic()
        res = await guarded_phase(cluster, prof, name, fn, dur, i)
        results.append((name, res, time.monotonic() - t))
        report(name, res, time.monotonic() - t)


async def chaos_main(args, prof, seeds, cluster, results):
    """--chaos: one phase per seed whose fault is that seed's random schedule
    of overlapping faults (fault_chaos.py)."""
    cluster.start_sampler()
    for i, seed in enumerate(seeds):
        if args.schedule:
            sched = fault_chaos.parse_schedule(args.schedule)
        else:
            sched = fault_chaos.schedule(seed, args.chaos_secs, len(cluster.nodes),
                                         lossy=args.chaos_lossy)
        name = f"chaos-{seed}"
        print(f"# {name} schedule ({len(sched)} actions, start s / action / target / s): "
              f"{fault_chaos.format_schedule(sched)}", flush=True)
        timeline = []
        load_of = []
        t = time.monotonic()
        res = await guarded_phase(cluster, prof, name, fault_chaos.chaos_fault(sched, timeline),
                                  args.chaos_secs, i, load_of)
        errs = [x for x in timeline if x[4]]
        if errs:
            res["note"] = (res.get("note") or "") + " action errors: " + "; ".join(
                f"{a} {tg} at {s}: {e}" for s, _, a, tg, e in errs[:5])
        if not res["ok"] or os.environ.get("FAULTS_VERBOSE"):
            print(f"# {name} timeline (start-end s, action, target): " + "; ".join(
                f"{s}-{e} {a} {tg}" for s, e, a, tg, _ in sorted(timeline)), flush=True)
        if not res["ok"] and load_of:
            # silent skips first (a skip the client was not told about), then
            # clients not caught up; every such trace also goes to a file
            heads = load_of[0].heads()
            behind = {c.name for c in load_of[0].clients if c.last < heads[c.room]}
            odd = sorted((c for c in load_of[0].clients
                          if c.skipped or c.reorder or c.gap_too_large or c.pending
                          or c.name in behind),
                         key=lambda c: (-(c.skipped + c.reorder), c.name not in behind))
            path = os.path.join(cluster.workdir, f"{name}-traces.txt")
            with open(path, "w") as f:
                for k, c in enumerate(odd):
                    line = (f"# {name} trace of {c.name} (s, event, node, detail): "
                            + "; ".join(f"{t} {e} {n} {d}" for t, e, n, d in c.trace))
                    f.write(line + "\n")
                    if k < 6:
                        print(line, flush=True)
        results.append((name, res, time.monotonic() - t))
        report(name, res, time.monotonic() - t)


COUNTS = {"PASS": 0, "FAIL": 0, "XFAIL": 0, "XPASS": 0}


def verdict_of(name, res):
    x = XFAIL.get(name)
    if res["ok"]:
        return "XPASS" if x else "PASS"
    if x and all(kind in x[1] for kind, _ in res["problems"]):
        return "XFAIL"
    return "FAIL"


def report(name, res, dur):
    v = verdict_of(name, res)
    COUNTS[v] += 1
    extra = ""
    if v in ("XFAIL", "XPASS"):
        extra = f" [xfail: {XFAIL[name][0]}]"
    line = (f"{v} faults.{name} ({dur:.0f}s): acked {res['acked']}, lost {res['lost']}, "
            f"reused {res['reused']}, dup {res['dup']}, order {res['order']}, "
            f"holes {res['holes']}, unacked {res['unacked']}, back {res['back']}, "
            f"reconnects {res.get('reconnects', 0)} (max {fmt_s(res['reconnect_max'])} s), "
            f"{res['rate']:.0f} msg/s{extra}")
    print(line, flush=True)
    if os.environ.get("FAULTS_VERBOSE"):
        print(f"    slowest ack (id, s, sends, node, sent at, errors): {res.get('slowest')}")
        print(f"    steps (s): {res.get('steps')}")
    if res.get("note"):
        print(f"    {name}: {res['note']}")
    for kind, p in res["problems"]:
        print(f"    {kind}: {p}"[:700], flush=True)
    if v == "XPASS":
        print("    passes now: remove its XFAIL entry in tests/faults/run.py", flush=True)


def in_netns():
    """Runs this same command inside a new network namespace of its own
    (loopback only), then deletes the namespace."""
    ns = f"chatd-faults-{os.getpid()}"
    why = [w for ok, w in ((os.geteuid() == 0, "it must run as root (a network namespace)"),
                           (shutil.which("ip"), "ip is not installed (iproute2)"),
                           (shutil.which("nft"), "nft is not installed (nftables)")) if not ok]
    if why:
        print(f"FAIL faults.netns: {'; '.join(why)} (tools/deps.sh --bench installs "
              f"iproute2 and nftables)\n0 passed, 1 failed", flush=True)
        return 1
    r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"FAIL faults.netns: ip netns add: {r.stderr.strip()}\n0 passed, 1 failed",
              flush=True)
        return 1
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        return subprocess.call(["ip", "netns", "exec", ns, sys.executable,
                                os.path.abspath(__file__)] + sys.argv[1:],
                               env=dict(os.environ, FAULTS_NETNS=ns))
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chatd", default=os.environ.get("CHATD_BIN",
                                                      os.path.join(REPO, "build", "chatd")))
    ap.add_argument("--long", action="store_true", help="long form (writes docs/reliability.md)")
    ap.add_argument("--only", default="", help="comma-separated faults (and/or run-sh-durable)")
    ap.add_argument("--rate", type=float, default=None)
    ap.add_argument("--rooms", type=int, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-docs", action="store_true", help="with --long: do not write the docs")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--netns", action="store_true",
                    help="run inside a new network namespace; adds the nftables loss faults")
    ap.add_argument("--chaos", default="",
                    help="comma-separated seeds: random overlapping faults (not in the default run)")
    ap.add_argument("--chaos-secs", type=float, default=60.0, help="seconds of chaos per seed")
    ap.add_argument("--chaos-nodes", type=int, default=2, help="with --chaos: chatd nodes")
    ap.add_argument("--chaos-lossy", action="store_true",
                    help="with --chaos: Redis may also restart empty (loses acked writes)")
    ap.add_argument("--schedule", default="",
                    help="with --chaos: play this schedule (as printed) instead of the seed's")
    args = ap.parse_args()
    if args.netns and not os.environ.get("FAULTS_NETNS"):
        return in_netns()
    if args.list:
        print("run-sh-durable  ./run.sh starts Redis (appendonly, fsync always) and Postgres "
              "(fsync, synchronous_commit) durable")
        for name, what, _, d in FAULTS + SLOW_FAULTS + NETNS_FAULTS:
            print(f"{name:20} {what} ({d[0]} s short, {d[1]} s long)")
        return 0
    prof = Profile(args.long)
    if args.rate:
        prof.rate = args.rate
    if args.rooms:
        prof.rooms = args.rooms
    only = [x for x in args.only.split(",") if x]
    seeds = [int(x) for x in args.chaos.split(",") if x]
    prof.gap_ok = prof.gap_ok or bool(seeds)
    if seeds:
        only = only or ["-"]            # no single fault and no run-sh-durable unless named
        prof.drain = max(prof.drain, 60.0)
        prof.converge = max(prof.converge, 30.0)
    all_faults = FAULTS + (SLOW_FAULTS if args.long or only else []) + \
        (NETNS_FAULTS if netns_available() else [])
    if args.netns and not netns_available():
        print("FAIL faults.netns: nft is not installed (apt-get install nftables)", flush=True)
        COUNTS["FAIL"] += 1
    faults = [f for f in all_faults if not only or f[0] in only]
    workdir = tempfile.mkdtemp(prefix="chatd-faults-")
    os.chmod(workdir, 0o755)
    harness.RUN = harness.Run(os.path.abspath(args.chatd), workdir, args.keep)
    harness.RUN.test_name = "faults"
    print(f"# chatd={args.chatd} workdir={workdir} form={'long' if args.long else 'short'} "
          f"rate={prof.rate:.0f}/s rooms={prof.rooms}", flush=True)
    t0 = time.time()
    global LOAD0
    LOAD0 = os.getloadavg()[0]

    if not only or "run-sh-durable" in only:
        t = time.time()
        probs = check_run_sh_durable(workdir)
        v = "PASS" if not probs else "FAIL"
        COUNTS[v] += 1
        print(f"{v} faults.run-sh-durable ({time.time() - t:.0f}s)", flush=True)
        for p in probs:
            print(f"    {p}", flush=True)

    results = []
    cluster = None
    if faults or seeds:
        cluster = Cluster(workdir, n_nodes=args.chaos_nodes if seeds else 2,
                          link_per_node=bool(seeds))
        if seeds:
            cluster.redis.extra_args = fault_chaos.REDIS_DURABLE
        try:
            cluster.start()
            if faults:
                asyncio.run(faults_main(args, prof, faults, cluster, results))
            if seeds:
                asyncio.run(chaos_main(args, prof, seeds, cluster, results))
        except Exception as e:
            print(f"FAIL faults.setup: {type(e).__name__}: {e}", flush=True)
            COUNTS["FAIL"] += 1
        finally:
            cluster.stop()
    if results:
        rows = []
        for n, r, _ in results:
            v = verdict_of(n, r)
            rows.append((n, r, v + (f" ({XFAIL[n][0]})" if v in ("XFAIL", "XPASS") else "")))
        tab = table(rows, prof)
        print("\n" + tab + "\n", flush=True)
        if args.long and not args.no_docs:
            stamp = time.strftime("%Y-%m-%d")
            rev = (shutil.which("git") and subprocess.run(
                ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                capture_output=True, text=True).stdout.strip()) or "?"
            stamp += f", chatd of commit {rev}"
            if os.environ.get("FAULTS_NETNS"):
                stamp += ", --netns"
            stamp += (f", machine load average {LOAD0:.1f} at the start and "
                      f"{os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} cores")
            write_docs(f"Long form, {stamp} (`tests/faults/run.py --long`, written by the "
                       f"harness; 2 nodes, {prof.senders} senders + {prof.listeners} listeners "
                       f"per room, {prof.cold} cold rooms):\n\n" + tab)
            print(f"# table written into {DOCS}", flush=True)
    failed = COUNTS["FAIL"]
    keep = args.keep or failed
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"# total {time.time() - t0:.0f}s" + (f"; logs in {workdir}" if keep else ""),
          flush=True)
    passed = COUNTS["PASS"] + COUNTS["XPASS"]
    if COUNTS["XFAIL"]:
        print(f"{COUNTS['XFAIL']} xfail (known defects being fixed elsewhere; not passed)",
              flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
