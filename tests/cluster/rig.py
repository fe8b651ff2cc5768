#!/usr/bin/env python3
"""Local Redis Cluster 7 rig for chatd's tests and benchmarks.

Owns: a set of `redis-server` processes on loopback (default 3 masters + 3
replicas), each a plain background process with its own folder, config file
and `nodes.conf`; the ports they use (client port and, set explicitly,
`cluster-port` for the bus, both inside one port range); the cluster's
creation (`redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`);
and the faults the suite plays: kill -9 of a master and wait for its
replica's promotion, restart of a node, a slot (or a room's slot) migrated
from one master to another (the CLUSTER SETSLOT IMPORTING / MIGRATING +
MIGRATE + SETSLOT NODE sequence, or `redis-cli --cluster reshard`), the
whole cluster down and back. Every process is recorded by PID and stopped
by PID (never by name); `rig.json` in the rig's folder holds the PIDs so a
rig started from the shell can be stopped from another shell.

Importable (`from rig import Cluster`) and a command line:

    /usr/bin/python3 tests/cluster/rig.py start --dir /tmp/rc [--port-lo 24300 --port-hi 24999]
    /usr/bin/python3 tests/cluster/rig.py status --dir /tmp/rc
    /usr/bin/python3 tests/cluster/rig.py nodes --dir /tmp/rc     # "PORT ROLE PID" lines
    /usr/bin/python3 tests/cluster/rig.py keyslot ROOM --dir /tmp/rc
    /usr/bin/python3 tests/cluster/rig.py rooms --dir /tmp/rc [--per-shard 2]
    /usr/bin/python3 tests/cluster/rig.py kill-master PORT --dir /tmp/rc
    /usr/bin/python3 tests/cluster/rig.py freeze|thaw PORT --dir /tmp/rc   # SIGSTOP / SIGCONT
    /usr/bin/python3 tests/cluster/rig.py restart PORT --dir /tmp/rc
    /usr/bin/python3 tests/cluster/rig.py migrate-room ROOM [--to PORT] --dir /tmp/rc
    /usr/bin/python3 tests/cluster/rig.py reshard FROM_PORT TO_PORT N --dir /tmp/rc
    /usr/bin/python3 tests/cluster/rig.py down|up --dir /tmp/rc
    /usr/bin/python3 tests/cluster/rig.py stop --dir /tmp/rc

Port range: --port-lo/--port-hi, else CHATD_TEST_CLUSTER_PORT_LO/HI, else
17700-17999. A room's slot is the slot of its keys `chat:{room}:...`, i.e.
CRC16(room) mod 16384 (checked against CLUSTER KEYSLOT).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

NSLOTS = 16384
DEFAULT_PORT_LO = int(os.environ.get("CHATD_TEST_CLUSTER_PORT_LO", "17700"))
DEFAULT_PORT_HI = int(os.environ.get("CHATD_TEST_CLUSTER_PORT_HI", "17999"))
HOST = "127.0.0.1"


class RigError(RuntimeError):
    pass


class RedisReplyError(Exception):
    """An error reply (-ERR, -MOVED, ...) of a Redis command."""


# ---------------------------------------------------------------- keys / slots
def _crc16_table():
    t = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        t.append(c & 0xFFFF)
    return t


_CRC16 = _crc16_table()


def crc16(data):
    """CRC16-CCITT (XMODEM), the hash of Redis Cluster."""
    c = 0
    for b in data:
        c = ((c << 8) & 0xFFFF) ^ _CRC16[((c >> 8) ^ b) & 0xFF]
    return c


def key_slot(key):
    """The slot of a key, with the hash tag rule of Redis Cluster."""
    k = key.encode() if isinstance(key, str) else key
    s = k.find(b"{")
    if s >= 0:
        e = k.find(b"}", s + 1)
        if e > s + 1:
            k = k[s + 1:e]
    return crc16(k) % NSLOTS


def room_key(room):
    return f"chat:{{{room}}}:seq"


def room_slot(room):
    return key_slot(room_key(room))


# ---------------------------------------------------------------- RESP client
class Conn:
    """A minimal blocking RESP2 client: one connection, one command at a
    time. Error replies raise RedisReplyError."""

    def __init__(self, port, host=HOST, timeout=3.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.f.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by redis")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RedisReplyError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError("connection closed by redis")
            return data[:-2].decode("utf-8", "replace")
        if t == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise ConnectionError(f"bad RESP type {line[:20]!r}")

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass


def call(port, *args, timeout=3.0):
    """One command on a fresh connection."""
    c = Conn(port, timeout=timeout)
    try:
        return c.call(*args)
    finally:
        c.close()


def ping(port, timeout=0.5):
    try:
        return call(port, "PING", timeout=timeout) == "PONG"
    except (OSError, ConnectionError, RedisReplyError):
        return False


def info_map(text):
    out = {}
    for ln in (text or "").splitlines():
        if ":" in ln and not ln.startswith("#"):
            k, _, v = ln.partition(":")
            out[k.strip()] = v.strip()
    return out


def _pairs(flat):
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as redis-server binds
    try:
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ---------------------------------------------------------------- one node
class Node:
    """One redis-server of the rig."""

    def __init__(self, idx, port, bus_port, dir_):
        self.idx = idx
        self.port = port
        self.bus_port = bus_port
        self.dir = dir_
        self.pid = None
        self.proc = None      # Popen when started by this Python process
        self.id = None        # cluster node id (40 hex), known once started

    @property
    def addr(self):
        return f"{HOST}:{self.port}"

    def conf_path(self):
        return os.path.join(self.dir, "redis.conf")

    def write_conf(self, node_timeout_ms, appendonly):
        os.makedirs(self.dir, exist_ok=True)
        with open(self.conf_path(), "w") as f:
            f.write("\n".join([
                f"port {self.port}",
                f"bind {HOST}",
                "protected-mode no",
                f"dir {self.dir}",
                "daemonize no",
                "loglevel notice",
                "logfile redis.log",
                'save ""',
                f"appendonly {'yes' if appendonly else 'no'}",
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                f"cluster-port {self.bus_port}",
                f"cluster-node-timeout {node_timeout_ms}",
                # a shard down leaves the other shards serving (the tests check
                # that chatd's rooms on them keep working)
                "cluster-require-full-coverage no",
                # a replica may always take over, however long it was cut off
                "cluster-replica-validity-factor 0",
                "cluster-allow-pubsubshard-when-down yes",
                "",
            ]))

    def start(self):
        if self.alive():
            return
        self.proc = subprocess.Popen(["redis-server", self.conf_path()], cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid

    def wait_up(self, timeout=10.0):
        end = time.time() + timeout
        while time.time() < end:
            if ping(self.port):
                return
            if not self.alive():
                raise RigError(f"redis-server {self.addr} exited at start; log: "
                               f"{self.log_tail(5)}")
            time.sleep(0.05)
        raise RigError(f"redis-server {self.addr} did not answer PING in {timeout}s")

    def alive(self):
        if self.proc is not None:
            return self.proc.poll() is None
        return bool(self.pid) and _pid_alive(self.pid) and self._is_ours(self.pid)

    def _is_ours(self, pid):
        cl = _cmdline(pid)
        return "redis-server" in cl and f":{self.port}" in cl

    def send_signal(self, sig):
        """Sends sig to our process (by PID) if it is still ours."""
        if not self.pid or (self.proc is None and not self._is_ours(self.pid)):
            return False
        try:
            os.kill(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def kill(self, sig=signal.SIGKILL, timeout=10.0):
        """Signals our process (by PID) and waits until it is gone."""
        if not self.pid:
            return
        if self.proc is None and not self._is_ours(self.pid):
            self.pid = None   # the PID is no longer our redis-server
            return
        try:
            os.kill(self.pid, sig)
            if sig != signal.SIGKILL:
                os.kill(self.pid, signal.SIGCONT)   # a frozen node handles it too
        except ProcessLookupError:
            pass
        end = time.time() + timeout
        while time.time() < end:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    break
            elif not _pid_alive(self.pid):
                break
            time.sleep(0.02)
        else:
            if sig != signal.SIGKILL:
                return self.kill(signal.SIGKILL, timeout)
            raise RigError(f"redis-server {self.addr} (pid {self.pid}) did not exit")

    def log_tail(self, n=10):
        try:
            with open(os.path.join(self.dir, "redis.log"), errors="replace") as f:
                return " | ".join(f.read().splitlines()[-n:])
        except OSError:
            return ""

    def call(self, *args, timeout=3.0):
        return call(self.port, *args, timeout=timeout)


# ---------------------------------------------------------------- the cluster
class Cluster:
    """A local Redis Cluster: `masters` masters with `replicas` replicas each.

    Addresses are 127.0.0.1:<port>; `seeds()` lists the client ports;
    `shards()` reads CLUSTER SHARDS. All waits raise RigError with a reason
    when they time out."""

    def __init__(self, dir_, port_lo=None, port_hi=None, masters=3, replicas=1,
                 node_timeout_ms=1000, appendonly=False):
        self.dir = os.path.abspath(dir_)
        self.port_lo = port_lo if port_lo is not None else DEFAULT_PORT_LO
        self.port_hi = port_hi if port_hi is not None else DEFAULT_PORT_HI
        self.nmasters = masters
        self.nreplicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.nodes = []
        self.created = False
        self.frozen = set()   # ports of SIGSTOPped nodes

    # -- state file (for the command line) ------------------------------
    def state_path(self):
        return os.path.join(self.dir, "rig.json")

    def save_state(self):
        st = {"port_lo": self.port_lo, "port_hi": self.port_hi, "masters": self.nmasters,
              "replicas": self.nreplicas, "node_timeout_ms": self.node_timeout_ms,
              "appendonly": self.appendonly, "created": self.created,
              "frozen": sorted(self.frozen),
              "nodes": [{"idx": n.idx, "port": n.port, "bus_port": n.bus_port, "dir": n.dir,
                         "pid": n.pid} for n in self.nodes]}
        tmp = self.state_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f, indent=1)
        os.replace(tmp, self.state_path())

    @classmethod
    def load(cls, dir_):
        with open(os.path.join(dir_, "rig.json")) as f:
            st = json.load(f)
        c = cls(dir_, st["port_lo"], st["port_hi"], st["masters"], st["replicas"],
                st["node_timeout_ms"], st["appendonly"])
        c.created = st["created"]
        c.frozen = set(st.get("frozen", []))
        for d in st["nodes"]:
            n = Node(d["idx"], d["port"], d["bus_port"], d["dir"])
            n.pid = d["pid"]
            c.nodes.append(n)
        return c

    # -- ports ---------------------------------------------------------
    def _alloc_ports(self, count):
        got = []
        for p in range(self.port_lo, self.port_hi + 1):
            if _port_free(p):
                got.append(p)
                if len(got) == count:
                    return got
        raise RigError(f"not {count} free ports in {self.port_lo}-{self.port_hi}")

    # -- lifecycle -----------------------------------------------------
    def start(self, timeout=40.0):
        """Starts every redis-server, creates the cluster, waits until it is
        ok on every node and every replica is in sync."""
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RigError("redis-server / redis-cli not installed")
        ver = subprocess.run(["redis-server", "--version"], stdout=subprocess.PIPE,
                             text=True).stdout
        try:
            major = int(ver.split("v=")[1].split(".")[0])
        except (IndexError, ValueError):
            major = 0
        if major < 7:
            raise RigError(f"Redis 7 needed (CLUSTER SHARDS, sharded pub/sub): {ver.strip()}")
        os.makedirs(self.dir, exist_ok=True)
        total = self.nmasters * (1 + self.nreplicas)
        ports = self._alloc_ports(2 * total)
        self.nodes = [Node(i, ports[2 * i], ports[2 * i + 1],
                           os.path.join(self.dir, f"node-{ports[2 * i]}")) for i in range(total)]
        try:
            for n in self.nodes:
                n.write_conf(self.node_timeout_ms, self.appendonly)
                n.start()
            self.save_state()
            for n in self.nodes:
                n.wait_up()
            self._create()
            self.created = True
            self.save_state()
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self):
        r = subprocess.run(["redis-cli", "--cluster", "create"] + [n.addr for n in self.nodes]
                           + ["--cluster-replicas", str(self.nreplicas), "--cluster-yes"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=60)
        if r.returncode != 0 or "[OK] All 16384 slots covered" not in r.stdout:
            raise RigError("redis-cli --cluster create failed: " + r.stdout[-800:])

    def stop(self):
        """Stops every process of the rig (SIGTERM, then SIGKILL), by PID."""
        self.frozen.clear()
        errs = []
        for n in self.nodes:
            try:
                n.kill(signal.SIGTERM, timeout=5)
            except RigError as e:
                errs.append(str(e))
        if self.nodes and os.path.isdir(self.dir):
            self.save_state()
        if errs:
            raise RigError("; ".join(errs))

    def destroy(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def pids(self):
        return [n.pid for n in self.nodes if n.pid]

    def stray_pids(self):
        """PIDs recorded by the rig that are still running (none after stop)."""
        return [n.pid for n in self.nodes if n.pid and n.alive()]

    # -- views ---------------------------------------------------------
    def node(self, port):
        for n in self.nodes:
            if n.port == int(port):
                return n
        raise RigError(f"no rig node on port {port}")

    def live(self):
        return [n for n in self.nodes if n.alive()]

    def seeds(self):
        return [n.port for n in self.nodes]

    def shards(self, via=None):
        """CLUSTER SHARDS as [{'slots': [(lo, hi)], 'master': port or None,
        'nodes': [{'port', 'id', 'role', 'health'}]}], read from `via` (a
        port) or the first live node that answers."""
        ports = [via] if via else [n.port for n in self.live() if n.port not in self.frozen]
        last = None
        for p in ports:
            try:
                raw = call(p, "CLUSTER", "SHARDS")
            except (OSError, ConnectionError, RedisReplyError) as e:
                last = e
                continue
            out = []
            for sh in raw:
                d = _pairs(sh)
                sl = d.get("slots") or []
                slots = [(int(sl[i]), int(sl[i + 1])) for i in range(0, len(sl) - 1, 2)]
                nodes = []
                master = None
                for nd in d.get("nodes") or []:
                    x = _pairs(nd)
                    e = {"port": int(x.get("port", 0)), "id": x.get("id"), "role": x.get("role"),
                         "health": x.get("health")}
                    nodes.append(e)
                    if e["role"] == "master" and e["health"] == "online":
                        master = e["port"]
                out.append({"slots": slots, "master": master, "nodes": nodes})
            return out
        raise RigError(f"no node answered CLUSTER SHARDS: {last}")

    def serving_shards(self, via=None):
        """Shards that own slots, sorted by their first slot."""
        sh = [s for s in self.shards(via) if s["slots"]]
        return sorted(sh, key=lambda s: s["slots"][0][0])

    def masters(self):
        """Ports of the online masters that own slots, by first slot."""
        return [s["master"] for s in self.serving_shards() if s["master"]]

    def shard_of_port(self, port, shards=None):
        for s in shards or self.shards():
            if any(n["port"] == int(port) for n in s["nodes"]):
                return s
        raise RigError(f"port {port} is in no shard")

    def slot_owner(self, slot, via=None):
        """Port of the online master that serves `slot` (None if none)."""
        for s in self.shards(via):
            for lo, hi in s["slots"]:
                if lo <= slot <= hi:
                    return s["master"]
        return None

    def replicas_of(self, master_port):
        s = self.shard_of_port(master_port)
        return [n["port"] for n in s["nodes"] if n["port"] != int(master_port)]

    def node_id(self, port):
        return call(port, "CLUSTER", "MYID")

    def keyslot(self, key):
        """CLUSTER KEYSLOT, checked against the local CRC16."""
        live = self.live()
        if not live:
            raise RigError("no live node")
        s = int(call(live[0].port, "CLUSTER", "KEYSLOT", key))
        if s != key_slot(key):
            raise RigError(f"CLUSTER KEYSLOT {key} = {s}, local CRC16 says {key_slot(key)}")
        return s

    def room_slot(self, room):
        return self.keyslot(room_key(room))

    def room_owner(self, room):
        return self.slot_owner(self.room_slot(room))

    def rooms_on_every_shard(self, prefix, per_shard=1):
        """{master port: [room, ...]}: `per_shard` room names (prefix-N) whose
        slot lives on each serving master."""
        shards = [s for s in self.serving_shards() if s["master"]]
        want = {s["master"]: [] for s in shards}
        i = 0
        while any(len(v) < per_shard for v in want.values()):
            room = f"{prefix}-{i}"
            i += 1
            slot = room_slot(room)
            for s in shards:
                if any(lo <= slot <= hi for lo, hi in s["slots"]):
                    if len(want[s["master"]]) < per_shard:
                        want[s["master"]].append(room)
            if i > 100000:
                raise RigError("could not spread rooms over the shards")
        for rooms in want.values():
            for r in rooms:
                self.room_slot(r)        # cross-check CRC16 with the server
        return want

    @staticmethod
    def room_for_slot(prefix, slot, limit=500000):
        """A room name (prefix-N) whose keys hash to exactly `slot`."""
        for i in range(limit):
            room = f"{prefix}-{i}"
            if crc16(room.encode()) % NSLOTS == slot:
                return room
        raise RigError(f"no room name for slot {slot} within {limit} tries")

    # -- waits ---------------------------------------------------------
    def check_ok(self):
        """None when every live node says cluster_state:ok, all agree on the
        owner of every slot (full coverage by online masters) and every live
        replica's link to its master is up; else the reason."""
        live = self.live()
        if not live:
            return "no live node"
        ref = None
        for n in live:
            try:
                ci = info_map(n.call("CLUSTER", "INFO"))
            except (OSError, ConnectionError, RedisReplyError) as e:
                return f"{n.addr}: {e}"
            if ci.get("cluster_state") != "ok":
                return f"{n.addr}: cluster_state {ci.get('cluster_state')}"
            try:
                view = sorted((tuple(s["slots"]), s["master"]) for s in self.shards(n.port)
                              if s["slots"])
            except RigError as e:
                return str(e)
            covered = sum(hi - lo + 1 for sl, m in view for lo, hi in sl if m)
            if covered != NSLOTS:
                return f"{n.addr}: {covered}/{NSLOTS} slots served by an online master"
            if ref is None:
                ref = view
            elif view != ref:
                return f"{n.addr}: slot map differs from {live[0].addr}"
            try:
                rep = info_map(n.call("INFO", "replication"))
            except (OSError, ConnectionError, RedisReplyError) as e:
                return f"{n.addr}: {e}"
            if rep.get("role") == "slave" and rep.get("master_link_status") != "up":
                return f"{n.addr}: replica link {rep.get('master_link_status')}"
        return None

    def wait_ok(self, timeout=30.0):
        end = time.time() + timeout
        why = None
        while time.time() < end:
            why = self.check_ok()
            if why is None:
                return
            time.sleep(0.1)
        raise RigError(f"cluster not ok within {timeout}s: {why}")

    def wait_state(self, pred, timeout, what):
        end = time.time() + timeout
        while time.time() < end:
            try:
                if pred():
                    return
            except (OSError, ConnectionError, RedisReplyError, RigError):
                pass
            time.sleep(0.05)
        raise RigError(f"timeout {timeout}s waiting for {what}")

    # -- faults --------------------------------------------------------
    def kill9(self, port):
        self.node(port).kill(signal.SIGKILL)
        self.save_state()

    def kill_master(self, port, wait_promotion=True, timeout=20.0):
        """kill -9 a master; with wait_promotion, waits until one of its
        replicas serves its slots. Returns (new master port, seconds from
        the kill to the promotion seen by every live node)."""
        s = self.shard_of_port(port)
        if s["master"] != int(port):
            raise RigError(f"{port} is not the online master of its shard")
        slots = s["slots"]
        reps = [n["port"] for n in s["nodes"] if n["port"] != int(port)]
        t0 = time.time()
        self.kill9(port)
        if not wait_promotion:
            return None, 0.0
        if not reps:
            raise RigError(f"master {port} has no replica to promote")
        new = self.wait_promoted(port, slots, reps, timeout)
        return new, time.time() - t0

    def freeze(self, port):
        """SIGSTOP: the node hangs with its connections open (no RST), like
        a partitioned or stalled server."""
        if not self.node(port).send_signal(signal.SIGSTOP):
            raise RigError(f"cannot freeze {port}")
        self.frozen.add(int(port))
        self.save_state()

    def thaw(self, port):
        self.node(port).send_signal(signal.SIGCONT)
        self.frozen.discard(int(port))
        self.save_state()

    def wait_promoted(self, old_master, slots, reps, timeout=20.0):
        """Waits until every live, unfrozen node sees one of reps serving
        slots[0]. Returns the new master's port."""
        new = [None]

        def promoted():
            owners = set()
            for n in self.live():
                if n.port in self.frozen:
                    continue
                owners.add(self.slot_owner(slots[0][0], via=n.port))
            if len(owners) == 1 and next(iter(owners)) in reps:
                new[0] = next(iter(owners))
                return True
            return False
        self.wait_state(promoted, timeout, f"promotion of a replica of {old_master}")
        return new[0]

    def freeze_master(self, port, timeout=20.0):
        """SIGSTOP a master and wait until a replica serves its slots.
        Returns (new master port, seconds until every node saw it)."""
        s = self.shard_of_port(port)
        if s["master"] != int(port):
            raise RigError(f"{port} is not the online master of its shard")
        reps = [n["port"] for n in s["nodes"] if n["port"] != int(port)]
        t0 = time.time()
        self.freeze(port)
        new = self.wait_promoted(port, s["slots"], reps, timeout)
        return new, time.time() - t0

    def restart_node(self, port, wait=True, timeout=30.0):
        """Starts a stopped node again with its config and nodes.conf (its
        data survives only with appendonly)."""
        n = self.node(port)
        if n.alive():
            raise RigError(f"{n.addr} is running")
        n.start()
        self.save_state()
        n.wait_up()
        if wait:
            self.wait_ok(timeout)

    def down(self):
        """kill -9 every node (the whole cluster goes down at once)."""
        for n in self.nodes:
            if n.alive():
                n.kill(signal.SIGKILL)
        self.save_state()

    def up(self, timeout=40.0):
        """Starts every stopped node and waits until the cluster is ok."""
        for n in self.nodes:
            if not n.alive():
                n.start()
        self.save_state()
        for n in self.nodes:
            n.wait_up()
        self.wait_ok(timeout)

    def open_slots(self):
        """Slots left importing/migrating (e.g. by a migration cut short)."""
        out = []
        for n in self.live():
            try:
                for ln in n.call("CLUSTER", "NODES").splitlines():
                    if "myself" in ln and ("->-" in ln or "-<-" in ln):
                        out += [w for w in ln.split() if "->-" in w or "-<-" in w]
            except (OSError, ConnectionError, RedisReplyError):
                pass
        return out

    def heal(self, timeout=40.0):
        """Back to a healthy cluster after a test: dead nodes started, slots
        left open by a cut-short migration fixed (`redis-cli --cluster fix`),
        ok everywhere, every shard with its replicas."""
        for p in list(self.frozen):
            self.thaw(p)
        if any(not n.alive() for n in self.nodes):
            self.up(timeout)
        if self.open_slots():
            r = subprocess.run(["redis-cli", "--cluster", "fix", self.live()[0].addr,
                                "--cluster-yes"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=120)
            if self.open_slots():
                raise RigError("open slots left after redis-cli --cluster fix: "
                               + r.stdout[-500:])
        self.wait_ok(timeout)
        for s in self.serving_shards():
            if len(s["nodes"]) != 1 + self.nreplicas:
                raise RigError(f"shard {s['slots']} has {len(s['nodes'])} nodes")

    def migrate_slot(self, slot, dst_port, hold_s=0.0, batch=10, timeout=30.0):
        """Moves one slot from its master to the master `dst_port`:
        SETSLOT IMPORTING (dst) / MIGRATING (src), MIGRATE of every key in
        batches (keys created meanwhile are moved too), then SETSLOT NODE on
        dst, src and every other master. hold_s: keep the slot in the
        migrating state that long after the first batch (clients see ASK /
        TRYAGAIN meanwhile). Returns (src port, keys moved)."""
        src = self.slot_owner(slot)
        dst = int(dst_port)
        if src is None:
            raise RigError(f"slot {slot} has no online master")
        if src == dst:
            raise RigError(f"slot {slot} is on {dst} already")
        src_id, dst_id = self.node_id(src), self.node_id(dst)
        call(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        call(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        moved = 0
        held = hold_s <= 0
        end = time.time() + timeout
        while True:
            keys = call(src, "CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                if held:
                    break
            else:
                call(src, "MIGRATE", HOST, dst, "", 0, 5000, "REPLACE", "KEYS", *keys,
                     timeout=10)
                moved += len(keys)
            if not held:
                time.sleep(hold_s)
                held = True
            if time.time() > end:
                raise RigError(f"slot {slot}: keys keep coming after {timeout}s")
        call(dst, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        call(src, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for m in self.masters():
            if m not in (src, dst):
                call(m, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self.wait_state(lambda: all(self.slot_owner(slot, via=n.port) == dst
                                    for n in self.live()),
                        10, f"every node to see slot {slot} on {dst}")
        return src, moved

    def migrate_room(self, room, dst_port=None, **kw):
        """Moves the slot of `room` to dst_port (default: the next master).
        Returns (slot, src port, dst port, keys moved)."""
        slot = self.room_slot(room)
        src = self.slot_owner(slot)
        if dst_port is None:
            ms = self.masters()
            dst_port = ms[(ms.index(src) + 1) % len(ms)]
        src, moved = self.migrate_slot(slot, dst_port, **kw)
        return slot, src, int(dst_port), moved

    def reshard(self, src_port, dst_port, nslots, timeout=120):
        """`redis-cli --cluster reshard`: moves `nslots` slots (the lowest
        ones of src) from src to dst. Returns the slots moved."""
        before = {lo_hi for lo_hi in self.shard_of_port(src_port)["slots"]}
        src_id, dst_id = self.node_id(src_port), self.node_id(dst_port)
        r = subprocess.run(["redis-cli", "--cluster", "reshard", f"{HOST}:{src_port}",
                            "--cluster-from", src_id, "--cluster-to", dst_id,
                            "--cluster-slots", str(nslots), "--cluster-yes",
                            "--cluster-pipeline", "10"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RigError("redis-cli --cluster reshard failed: " + r.stdout[-800:])
        after = {lo_hi for lo_hi in self.shard_of_port(src_port)["slots"]}
        gone = set()
        for lo, hi in before:
            gone.update(range(lo, hi + 1))
        for lo, hi in after:
            gone.difference_update(range(lo, hi + 1))
        self.wait_state(lambda: all(self.slot_owner(s, via=n.port) == int(dst_port)
                                    for n in self.live() for s in list(gone)[:1]),
                        10, "every node to see the resharded slots")
        return sorted(gone)

    # -- measurement -----------------------------------------------------
    def cpu_seconds(self, port):
        """used_cpu_sys + used_cpu_user of one node."""
        m = info_map(call(port, "INFO", "cpu"))
        return float(m["used_cpu_sys"]) + float(m["used_cpu_user"])


# ---------------------------------------------------------------- CLI
def _cli():
    ap = argparse.ArgumentParser(description="local Redis Cluster 7 rig")
    ap.add_argument("cmd", choices=["start", "stop", "status", "nodes", "keyslot", "rooms",
                                    "kill-master", "freeze", "thaw", "restart", "migrate-room",
                                    "reshard", "down", "up", "heal"])
    ap.add_argument("args", nargs="*")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port-lo", type=int, default=None)
    ap.add_argument("--port-hi", type=int, default=None)
    ap.add_argument("--masters", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--node-timeout", type=int, default=1000, help="cluster-node-timeout ms")
    ap.add_argument("--appendonly", action="store_true")
    ap.add_argument("--per-shard", type=int, default=1)
    ap.add_argument("--to", type=int, default=None)
    a = ap.parse_args()
    if a.cmd == "start":
        if os.path.exists(os.path.join(a.dir, "rig.json")):
            old = Cluster.load(a.dir)
            if old.stray_pids():
                print(f"a rig is running in {a.dir} (pids {old.stray_pids()}); stop it first")
                return 1
        c = Cluster(a.dir, a.port_lo, a.port_hi, a.masters, a.replicas, a.node_timeout,
                    a.appendonly).start()
        print("seeds: redis+cluster://" + ",".join(f"{HOST}:{p}" for p in c.masters()))
        _status(c)
        return 0
    c = Cluster.load(a.dir)
    if a.cmd == "stop":
        c.stop()
        left = c.stray_pids()
        print("stopped" if not left else f"still running: {left}")
        return 1 if left else 0
    if a.cmd == "status":
        _status(c)
    elif a.cmd == "nodes":
        for n in c.nodes:
            role = "down"
            if n.alive():
                try:
                    role = info_map(n.call("INFO", "replication")).get("role", "?")
                except (OSError, ConnectionError, RedisReplyError):
                    role = "?"
            print(f"{n.port} {'replica' if role == 'slave' else role} {n.pid}")
    elif a.cmd == "keyslot":
        room = a.args[0]
        print(f"room {room}: key {room_key(room)} slot {c.room_slot(room)} "
              f"master {c.room_owner(room)}")
    elif a.cmd == "rooms":
        for m, rooms in c.rooms_on_every_shard(a.args[0] if a.args else "room",
                                               a.per_shard).items():
            print(f"{m}: {' '.join(rooms)}")
    elif a.cmd == "kill-master":
        new, dt = c.kill_master(int(a.args[0]))
        print(f"killed {a.args[0]}; replica {new} promoted after {dt:.1f}s")
    elif a.cmd == "freeze":
        c.freeze(int(a.args[0]))
        print(f"froze {a.args[0]} (SIGSTOP); `thaw` to continue it")
    elif a.cmd == "thaw":
        c.thaw(int(a.args[0]))
        print(f"thawed {a.args[0]}")
    elif a.cmd == "restart":
        c.restart_node(int(a.args[0]))
        print(f"restarted {a.args[0]}")
    elif a.cmd == "migrate-room":
        slot, src, dst, moved = c.migrate_room(a.args[0], a.to)
        print(f"slot {slot}: {src} -> {dst}, {moved} keys")
    elif a.cmd == "reshard":
        moved = c.reshard(int(a.args[0]), int(a.args[1]), int(a.args[2]))
        print(f"moved slots {moved[0]}..{moved[-1]} ({len(moved)})" if moved else "moved none")
    elif a.cmd == "down":
        c.down()
        print("down")
    elif a.cmd in ("up", "heal"):
        c.heal() if a.cmd == "heal" else c.up()
        print("up")
    return 0


def _status(c):
    for n in c.nodes:
        print(f"node {n.addr} bus {n.bus_port} pid {n.pid} {'up' if n.alive() else 'DOWN'}")
    if c.live():
        for s in c.serving_shards():
            sl = ",".join(f"{lo}-{hi}" for lo, hi in s["slots"])
            nodes = " ".join(f"{n['port']}/{n['role']}/{n['health']}" for n in s["nodes"])
            print(f"shard {sl}: master {s['master']} nodes {nodes}")
        why = c.check_ok()
        print("cluster ok" if why is None else f"cluster NOT ok: {why}")


if __name__ == "__main__":
    try:
        sys.exit(_cli())
    except RigError as e:
        print(f"rig: {e}", file=sys.stderr)
        sys.exit(1)
