"""The system under fault: 2+ chatd nodes, one Redis and one Postgres of the
harness's own (so it can kill, stop and restart them), and a fault proxy
(proxy.py) on each node's link to Redis and to Postgres.

Owns: those processes (started and killed by PID only), RSS sampling of the
nodes, and the faults themselves (FAULTS: name -> (what it does, apply
coroutine)). Redis, Postgres and Node come from the integration harness
(tests/integration/harness.py): one of each.
"""
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time

import harness

HERE = os.path.dirname(os.path.abspath(__file__))



def extra_chat_env():
    """FAULTS_CHAT_ENV="CHAT_X=1 CHAT_Y=2": extra settings of every node
    (experiments), as a dict."""
    env = {}
    for kv in os.environ.get("FAULTS_CHAT_ENV", "").split():
        k, _, v = kv.partition("=")
        env[k] = v
    return env

class Proxy:
    """A running proxy.py between chatd and one service."""

    def __init__(self, name, target_port, workdir):
        self.name = name
        self.port = harness.free_port()
        self.log = open(os.path.join(workdir, f"proxy-{name}.log"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "proxy.py"), str(self.port), str(target_port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline().decode().strip()
        if line != "ready":
            raise RuntimeError(f"proxy {name} did not start: {line!r}")

    def cmd_sync(self, line):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        out = self.proc.stdout.readline().decode().strip()
        if not out.startswith("ok"):
            raise RuntimeError(f"proxy {self.name}: {line}: {out}")
        return out

    async def cmd(self, line):
        return await asyncio.to_thread(self.cmd_sync, line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def children_of(pid):
    """PIDs whose parent is pid (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(d))
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return 0


class Cluster:
    def __init__(self, workdir, n_nodes=2, link_per_node=False):
        self.workdir = workdir
        # link_per_node: each node reaches Redis and Postgres through proxies
        # of its own ("redis"/"pg" are n0's, "redis.n1"/"pg.n1" n1's...), so a
        # fault can cut one node's link while the other keeps its own
        self.link_per_node = link_per_node
        self.redis = harness.Redis(harness.RUN.tmpdir("redis"))
        self.pg = harness.Postgres(harness.RUN.tmpdir("pg"))
        self.n_nodes = n_nodes
        self.nodes = []
        self.proxies = {}
        self.rss_max = {}          # node name -> max VmRSS (KiB) since the last reset
        self.sampler = None
        self.crashes = []          # (node, exit code) of nodes found dead unexpectedly

    def start(self):
        self.redis.start()
        self.pg.start()
        self.proxies["redis"] = Proxy("redis", self.redis.port, self.workdir)
        self.proxies["pg"] = Proxy("pg", self.pg.port, self.workdir)
        if self.link_per_node:
            for i in range(1, self.n_nodes):
                for svc, port in (("redis", self.redis.port), ("pg", self.pg.port)):
                    self.proxies[f"{svc}.n{i}"] = Proxy(f"{svc}.n{i}", port, self.workdir)
        policy = harness.policy_dir(harness.OPEN_POLICY)
        env = {"CHAT_LOG_LEVEL": "info", **extra_chat_env()}
        for i in range(self.n_nodes):
            rp, pp = self.link("redis", i), self.link("pg", i)
            n = harness.Node(
                name=f"n{i}", redis=f"redis://127.0.0.1:{rp.port}",
                db=f"postgresql://postgres@127.0.0.1:{pp.port}/chatd",
                scripts=policy, env=env)
            self.nodes.append(n)
        for n in self.nodes:
            n.start()

    def link(self, service, i):
        """The proxy node i reaches `service` ("redis" or "pg") through."""
        if self.link_per_node and i > 0:
            return self.proxies[f"{service}.n{i}"]
        return self.proxies[service]

    def stop(self):
        if self.sampler:
            self.sampler.cancel()
        self.stop_pg(signal.SIGCONT)     # nothing left stopped, whatever was interrupted
        if self.redis.proc is not None and self.redis.proc.poll() is None:
            os.kill(self.redis.proc.pid, signal.SIGCONT)
        for n in self.nodes:
            n.kill9()
        for p in self.proxies.values():
            p.stop()
        self.redis.stop()
        self.pg.stop()

    # -- health between phases ------------------------------------------------
    async def heal(self):
        """Everything back to normal before the next phase: links clean,
        services running and not stopped, every node up and ready."""
        for p in self.proxies.values():
            await p.cmd("clear")
        self.stop_pg(signal.SIGCONT)
        if self.redis.proc is not None and self.redis.proc.poll() is None:
            os.kill(self.redis.proc.pid, signal.SIGCONT)
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            await asyncio.to_thread(self.redis.start)
        if self.pg.postmaster_pid() is None or not _alive(self.pg.postmaster_pid()):
            await asyncio.to_thread(self.pg.restart)
        for n in self.nodes:
            if not n.alive():
                await asyncio.to_thread(self._restart_node, n)

    def check_nodes(self):
        """Nodes that died without being killed by a fault (a crash)."""
        dead = []
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is not None and not getattr(n, "killed", False):
                dead.append((n.name, n.proc.returncode))
        return dead

    def _restart_node(self, n):
        harness.wait_port_closed(n.port)
        n.killed = False
        n.start()

    async def ready(self, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ok = True
            for n in self.nodes:
                try:
                    st, _, _ = await harness.ahttp(n.port, "/readyz", timeout=1)
                except OSError:
                    st = 0
                ok = ok and st == 200
            if ok:
                return True
            await asyncio.sleep(0.1)
        return False

    # -- RSS ------------------------------------------------------------------
    def start_sampler(self):
        async def sample():
            while True:
                for n in self.nodes:
                    if n.alive():
                        k = rss_kib(n.proc.pid)
                        if k > self.rss_max.get(n.name, 0):
                            self.rss_max[n.name] = k
                await asyncio.sleep(0.25)
        self.sampler = asyncio.ensure_future(sample())

    def rss_reset(self):
        self.rss_max = {}
        for n in self.nodes:
            if n.alive():
                self.rss_max[n.name] = rss_kib(n.proc.pid)

    # -- processes ------------------------------------------------------------
    def pg_pids(self):
        pm = self.pg.postmaster_pid()
        if pm is None or not _alive(pm):
            return []
        return [pm] + children_of(pm)

    def stop_pg(self, sig):
        pids = self.pg_pids()
        # As root the postmaster runs under `runuser`, which stops itself when
        # its child stops (job control) and must be continued too, or it
        # never reaps the postmaster later.
        if sig == signal.SIGCONT and self.pg.proc is not None and self.pg.proc.poll() is None:
            pids.append(self.pg.proc.pid)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- the faults
# Each fault: async fn(cluster, load, dur) that applies the fault for about
# `dur` seconds and undoes it (the phase then lets the system recover).

async def f_none(c, load, dur):
    await asyncio.sleep(dur)


async def f_node_kill9(c, load, dur):
    n = c.nodes[0]
    n.killed = True
    n.kill9()
    await asyncio.sleep(dur)
    await asyncio.to_thread(c._restart_node, n)


async def f_redis_restart_empty(c, load, dur):
    c.redis.kill9()
    await asyncio.sleep(min(dur, 1.0))
    await asyncio.to_thread(c.redis.start)      # no persistence: it comes back empty
    await asyncio.sleep(max(0, dur - 1.0))


async def f_redis_restart_behind(c, load, dur):
    # a snapshot, dur seconds of acked traffic, kill -9, and Redis comes back
    # from the snapshot: every room's head and reaction state present but
    # older than what Postgres stored (what an everysec AOF after a host
    # crash, or a lagging replica promoted, looks like)
    await asyncio.to_thread(c.redis.command, "SAVE")
    await asyncio.sleep(dur)
    c.redis.kill9()
    await asyncio.to_thread(c.redis.start)
    # loaded: later restarts of this run come back empty again
    os.remove(os.path.join(c.redis.dir, "dump.rdb"))


async def f_redis_flushall(c, load, dur):
    await asyncio.to_thread(c.redis.command, "FLUSHALL")
    await asyncio.sleep(dur)


async def f_redis_sigstop(c, load, dur):
    os.kill(c.redis.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(dur)
    finally:
        os.kill(c.redis.proc.pid, signal.SIGCONT)


async def f_pg_restart(c, load, dur):
    await asyncio.to_thread(c.pg.crash)         # immediate shutdown: like a crash
    await asyncio.sleep(min(dur, 1.0))
    await asyncio.to_thread(c.pg.restart)
    await asyncio.sleep(max(0, dur - 1.0))


async def f_pg_sigstop(c, load, dur):
    c.stop_pg(signal.SIGSTOP)
    try:
        await asyncio.sleep(dur)
    finally:
        c.stop_pg(signal.SIGCONT)


def link(service, on, off="clear"):
    async def f(c, load, dur):
        p = c.proxies[service]
        for cmd in on:
            await p.cmd(cmd)
        try:
            await asyncio.sleep(dur)
        finally:
            await p.cmd(off)
    return f


def link_reset(service):
    async def f(c, load, dur):
        p = c.proxies[service]
        await p.cmd("reset")
        await asyncio.sleep(dur / 2)
        await p.cmd("reset")
        await asyncio.sleep(dur / 2)
    return f


async def f_connect_storm(c, load, dur):
    """Many short-lived connections to the load's rooms and new ones on
    every node (connect, welcome, drop), plus a disconnect storm: half of the
    load's clients lose their TCP connection at once and come back with
    since=."""
    import websockets
    end = time.monotonic() + dur
    made = [0]

    async def one(i):
        node = c.nodes[i % len(c.nodes)]
        room = load.rooms[i % len(load.rooms)] if i % 2 else f"{load.rooms[0]}-storm{i % 50}"
        url = (f"ws://127.0.0.1:{node.port}/ws/{room}?token=" + harness.token(f"storm{i}"))
        try:
            ws = await asyncio.wait_for(websockets.connect(
                url, ping_interval=None, close_timeout=0.5, open_timeout=3), 4)
            await asyncio.wait_for(ws.recv(), 3)
            made[0] += 1
            if i % 3:
                ws.transport.abort()
            else:
                await ws.close()
        except Exception:
            pass

    for k, cl in enumerate(load.clients):
        if k % 2:
            cl.drop()
    i = 0
    while time.monotonic() < end:
        await asyncio.gather(*(one(i + j) for j in range(40)))
        i += 40
        await asyncio.sleep(0.05)
    for k, cl in enumerate(load.clients):
        if k % 2 == 0:
            cl.drop()
    load.note = f"storm connections that got a welcome: {made[0]}"


async def f_node_kill9_pg_stopped(c, load, dur):
    """Postgres stopped, so messages are published and broadcast but not
    stored; then the node that published them is killed and their senders
    vanish (no resend): only the surviving node's backfill can store them."""
    c.stop_pg(signal.SIGSTOP)
    try:
        await asyncio.sleep(1.5)
        gone = [cl for cl in load.senders() if cl.node_name == c.nodes[0].name and cl.unacked
                and cl.room not in load.cold]
        for cl in gone[: max(1, len(gone) // 2)]:
            cl.vanish()
        n = c.nodes[0]
        n.killed = True
        n.kill9()
        await asyncio.sleep(0.5)
    finally:
        c.stop_pg(signal.SIGCONT)
    load.note = (f"senders vanished with unacked messages: {sum(1 for x in load.clients if x.vanished)}"
                 f" ({sum(len(x.unacked) for x in load.clients if x.vanished)} messages)")
    await asyncio.sleep(dur)
    await asyncio.to_thread(c._restart_node, n)


async def f_node_sigstop(c, load, dur):
    """Node n0 frozen (SIGSTOP) for longer than the backfill grace and the
    Redis reply deadline: its sockets stay open, its clients hear nothing;
    then it resumes with every timer overdue."""
    n = c.nodes[0]
    os.kill(n.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(dur)
    finally:
        os.kill(n.proc.pid, signal.SIGCONT)


async def f_node_sigstop_pg_stopped(c, load, dur):
    """Postgres stopped so n0 holds published-but-unstored messages; n0 is
    frozen past the backfill grace (n1 backfills them), Postgres comes back
    while n0 is frozen, then n0 resumes and commits its stale batch."""
    n = c.nodes[0]
    c.stop_pg(signal.SIGSTOP)
    try:
        await asyncio.sleep(1.5)
        os.kill(n.proc.pid, signal.SIGSTOP)
        await asyncio.sleep(0.5)
    finally:
        c.stop_pg(signal.SIGCONT)
    try:
        await asyncio.sleep(dur)
    finally:
        os.kill(n.proc.pid, signal.SIGCONT)


async def f_sighup_storm(c, load, dur):
    """SIGHUP (policy reload) to every node every 100 ms under load."""
    end = time.monotonic() + dur
    while time.monotonic() < end:
        for n in c.nodes:
            if n.alive():
                os.kill(n.proc.pid, signal.SIGHUP)
        await asyncio.sleep(0.1)


async def f_redis_sigstop_then_restart(c, load, dur):
    """Redis frozen past the reply deadline, then killed and restarted empty
    while frozen (both nodes publishing into the same rooms throughout)."""
    os.kill(c.redis.proc.pid, signal.SIGSTOP)
    await asyncio.sleep(dur / 2)
    c.redis.kill9()
    await asyncio.to_thread(c.redis.start)
    await asyncio.sleep(dur / 2)


async def f_redis_restart_twice(c, load, dur):
    """Redis restarted empty twice in quick succession (the second while the
    nodes are still reseeding / resubscribing after the first)."""
    for _ in range(2):
        c.redis.kill9()
        await asyncio.to_thread(c.redis.start)
        await asyncio.sleep(0.3)
    await asyncio.sleep(max(0, dur - 0.6))


async def f_node_sigstop_clients_move(c, load, dur):
    """Node n0 frozen; after 1 s its clients give up on it (as a client
    whose pings go unanswered does) and reconnect with since= to n1 (n0's
    port still accepts TCP: the handshake times out), resending their
    unacked messages there; n0 resumes after the pause with stale work."""
    n = c.nodes[0]
    os.kill(n.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(1.0)
        for cl in load.clients:
            if cl.node_name == n.name:
                cl.drop()
        await asyncio.sleep(max(0, dur - 1.0))
    finally:
        os.kill(n.proc.pid, signal.SIGCONT)


async def redis_durable(c):
    """Makes the running Redis durable (appendonly yes, appendfsync always)
    and starts it that way from now on; waits for the AOF's first rewrite."""
    await asyncio.to_thread(c.redis.command, "CONFIG", "SET", "appendfsync", "always")
    await asyncio.to_thread(c.redis.command, "CONFIG", "SET", "appendonly", "yes")
    end = time.monotonic() + 10
    while time.monotonic() < end:
        info = (await asyncio.to_thread(c.redis.command, "INFO", "persistence")).decode()
        if "aof_enabled:1" in info and "aof_rewrite_in_progress:0" in info \
                and "aof_rewrite_scheduled:0" in info:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("redis_durable: the AOF's first rewrite did not end in 10 s")
    c.redis.extra_args = ["--appendonly", "yes", "--appendfsync", "always"]


async def redis_plain(c):
    """Undoes redis_durable for the phases after it: later restarts come back
    empty, and the running Redis stops writing its AOF (it is up again when
    the fault ends; if not, heal starts it plain)."""
    c.redis.extra_args = []
    try:
        await asyncio.to_thread(c.redis.command, "CONFIG", "SET", "appendonly", "no")
        await asyncio.to_thread(c.redis.command, "CONFIG", "SET", "appendfsync", "everysec")
    except Exception:
        pass


async def f_redis_kill9_aof_pg_stopped_node_kill9(c, load, dur):
    """Two faults at once, then a third during the recovery (from --chaos):
    Postgres stopped, so messages are broadcast and not stored; Redis
    (durable: AOF, fsync always) killed -9 and node n0 killed -9 meanwhile;
    n0 restarted while Redis is still down; Redis back from its AOF (a new
    run_id: every head is seeded again, from a Postgres that is behind and
    still stopped); then Postgres back. No head may go below the AOF's, and
    n0's unstored messages reach history through the backfill."""
    try:
        await redis_durable(c)
        c.stop_pg(signal.SIGSTOP)
        try:
            await asyncio.sleep(1.0)
            c.redis.kill9()
            n = c.nodes[0]
            n.killed = True
            n.kill9()
            await asyncio.to_thread(harness.wait_port_closed, n.port)
            n.killed = False
            n.start(wait=False)                  # Redis down, Postgres stopped
            await asyncio.sleep(1.0)
            await asyncio.to_thread(c.redis.start)
            await asyncio.sleep(max(0.5, dur - 2.0))
        finally:
            c.stop_pg(signal.SIGCONT)
    finally:
        await redis_plain(c)                     # later phases run on a plain Redis again


async def f_node_restart_redis_frozen(c, load, dur):
    """Node n0 killed -9 and started again while Redis is frozen (SIGSTOP:
    its port accepts connections, nothing answers), so n0 starts with no
    answer from Redis; Redis resumes after the pause."""
    os.kill(c.redis.proc.pid, signal.SIGSTOP)
    try:
        n = c.nodes[0]
        n.killed = True
        n.kill9()
        await asyncio.to_thread(harness.wait_port_closed, n.port)
        n.killed = False
        n.start(wait=False)
        await asyncio.sleep(dur)
    finally:
        os.kill(c.redis.proc.pid, signal.SIGCONT)


FAULTS = [
    # name, what it does, fn, duration (short, long) in s
    ("none", "no fault (control)", f_none, (2, 5)),
    ("node-kill9", "kill -9 of node n0, restarted after the pause; its clients move to n1",
     f_node_kill9, (2, 5)),
    ("node-kill9-pg-stopped", "Postgres stopped 2 s; meanwhile node n0 is killed (-9) and half "
     "of its senders with unacked messages vanish for good: what they had broadcast must reach "
     "history through the other node's backfill", f_node_kill9_pg_stopped, (3, 5)),
    ("redis-restart-empty", "Redis killed (-9) and restarted empty (no persistence)",
     f_redis_restart_empty, (2, 5)),
    ("redis-restart-behind", "Redis snapshot, the pause of acked traffic, kill -9, restarted "
     "from the snapshot (behind Postgres)", f_redis_restart_behind, (2, 5)),
    ("redis-flushall", "Redis FLUSHALL under load", f_redis_flushall, (2, 5)),
    ("redis-sigstop", "Redis SIGSTOP, SIGCONT after the pause", f_redis_sigstop, (10, 10)),
    ("pg-restart", "Postgres immediate shutdown (SIGQUIT: a crash) and restart",
     f_pg_restart, (2, 5)),
    ("pg-sigstop", "every Postgres process SIGSTOPped, SIGCONT after the pause",
     f_pg_sigstop, (5, 10)),
    ("redis-delay", "Redis link: 200 ms added to every chunk both ways",
     link("redis", ["delay 200"]), (3, 10)),
    ("redis-stall", "Redis link: nothing forwarded (connections stay open) for 6 s",
     link("redis", ["stall"]), (6, 6)),
    ("redis-reset", "Redis link: every connection reset (RST), twice", link_reset("redis"),
     (2, 4)),
    ("redis-loss", "Redis link: 10% of chunks held 300 ms (retransmit-like), the rest queue behind",
     link("redis", ["loss 10 300"]), (3, 10)),
    ("pg-delay", "Postgres link: 200 ms added to every chunk both ways",
     link("pg", ["delay 200"]), (3, 10)),
    ("pg-stall", "Postgres link: nothing forwarded for 6 s", link("pg", ["stall"]), (6, 6)),
    ("pg-reset", "Postgres link: every connection reset (RST), twice", link_reset("pg"), (2, 4)),
    ("pg-loss", "Postgres link: 10% of chunks held 300 ms, the rest queue behind",
     link("pg", ["loss 10 300"]), (3, 10)),
    ("conn-storm", "connect/disconnect storm: 40 connections at a time open and drop, "
     "every client's TCP dropped once (they resume with since=)", f_connect_storm, (3, 8)),
    ("node-sigstop", "node n0 SIGSTOPped past the backfill grace and the Redis reply deadline, "
     "then SIGCONT", f_node_sigstop, (8, 12)),
    ("node-sigstop-pg-stopped", "Postgres stopped 2 s, n0 frozen meanwhile past the backfill "
     "grace (n1 backfills), then n0 resumes", f_node_sigstop_pg_stopped, (6, 8)),
    ("sighup-storm", "SIGHUP to every node every 100 ms", f_sighup_storm, (3, 6)),
    ("redis-sigstop-restart", "Redis SIGSTOPped, then killed and restarted empty",
     f_redis_sigstop_then_restart, (8, 10)),
    ("redis-restart-twice", "Redis killed and restarted empty twice, 0.3 s apart",
     f_redis_restart_twice, (3, 5)),
    ("node-sigstop-clients-move", "node n0 frozen; its clients drop it after 1 s and move to n1 "
     "with since= (resending unacked messages there); n0 resumes after the pause",
     f_node_sigstop_clients_move, (8, 12)),
    ("redis-kill9-aof-pg-stopped-node-kill9", "Postgres stopped; Redis (AOF, fsync always) and "
     "node n0 killed -9; n0 restarted while Redis is down; Redis back from its AOF while "
     "Postgres is still stopped; then Postgres back", f_redis_kill9_aof_pg_stopped_node_kill9,
     (4, 6)),
    ("node-restart-redis-frozen", "node n0 killed -9 and started again while Redis is frozen "
     "(SIGSTOP); Redis resumes after the pause", f_node_restart_redis_frozen, (4, 6)),
]

# Slow faults (35 s each): only in the long form, or when named in --only
SLOW_FAULTS = [
    ("pg-sigstop-long", "every Postgres process SIGSTOPped past the store's 30 s statement "
     "timeout, then SIGCONT", f_pg_sigstop, (35, 35)),
    ("node-sigstop-long", "node n0 SIGSTOPped 35 s (past the presence TTL and the per-user "
     "connection count's TTL), then SIGCONT", f_node_sigstop, (35, 35)),
]


# ---------------------------------------------------------------- true packet loss
# Only inside the network namespace that run.py --netns made for this run
# (FAULTS_NETNS): nftables drops a share of the packets of one link, and TCP
# retransmits for real. Never touches the ruleset of any other namespace.
NFT_TABLE = "chatdfaults"


def netns_available():
    return bool(os.environ.get("FAULTS_NETNS")) and shutil.which("nft") is not None


def netloss(service, pct):
    async def f(c, load, dur):
        if not os.environ.get("FAULTS_NETNS"):
            raise RuntimeError("netloss faults run only inside run.py --netns")
        port = c.proxies[service].port     # the chatd <-> proxy hop: chatd's own sockets
        rules = (f"table inet {NFT_TABLE} {{\n chain out {{\n"
                 f"  type filter hook output priority 0; policy accept;\n"
                 f"  tcp dport {port} numgen random mod 100 < {pct} counter drop\n"
                 f"  tcp sport {port} numgen random mod 100 < {pct} counter drop\n }}\n}}\n")
        r = await asyncio.to_thread(subprocess.run, ["nft", "-f", "-"], input=rules.encode(),
                                    capture_output=True)
        if r.returncode != 0:
            raise RuntimeError("nft: " + r.stderr.decode().strip())
        try:
            await asyncio.sleep(dur)
        finally:
            r = await asyncio.to_thread(subprocess.run, ["nft", "list", "table", "inet", NFT_TABLE],
                                        capture_output=True, text=True)
            load.note = "packets dropped: " + str(sum(
                int(w.split()[1]) for w in r.stdout.split("counter")[1:]))
            await asyncio.to_thread(subprocess.run, ["nft", "delete", "table", "inet", NFT_TABLE],
                                    capture_output=True)
    return f


NETNS_FAULTS = [
    ("redis-netloss", "Redis link: nftables drops 10% of packets both ways (real TCP "
     "retransmits; only with --netns)", netloss("redis", 10), (4, 10)),
    ("pg-netloss", "Postgres link: nftables drops 10% of packets both ways (only with --netns)",
     netloss("pg", 10), (4, 10)),
]
