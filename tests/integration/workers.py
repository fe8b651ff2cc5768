"""workers: `chatd --workers N` (core/workers.h), a supervisor forking N
nodes that share the listen port (SO_REUSEPORT) and each listen alone on
their own port (CHAT_WORKER_PORT + i). Real processes: the supervisor, its
workers, Redis; clients on the shared port land on either worker. Refusal
without Redis, both workers serving with their own node ids, a message
across workers, kill -9 of a worker (restart, clients reconnect with since=
and miss nothing), the crash-loop report, SIGHUP to every worker, SIGTERM
draining every worker and the supervisor exiting 0, a start that cannot
listen exiting 2."""
import asyncio
import os
import re
import signal
import socket
import subprocess
import time

from harness import (Client, TestFailure, check, eq, free_port, http_get, metric_value,
                     release_port, token, uniq, describe_seq_problem, test)
import harness


class Port:
    """One worker's own port, usable where the harness expects a node."""

    def __init__(self, name, port):
        self.name = name
        self.port = port


def port_block(n):
    """A listen port and n consecutive ports (the workers' own ports), all
    free in the suite's range."""
    for _ in range(50):
        lp = free_port()
        block = [free_port() for _ in range(n)]
        if block == list(range(block[0], block[0] + n)):
            return lp, block
        for p in [lp] + block:
            release_port(p)
    raise TestFailure("no block of consecutive free ports in the suite's range")


def start_workers(n=2, redis=True, env=None, wait=True):
    lp, own = port_block(n)
    node = harness.Node(name="sup-" + uniq(""), redis=redis, port=lp,
                        env=dict({"CHAT_WORKER_PORT": own[0], "CHAT_LOG_LEVEL": "info"},
                                 **(env or {})),
                        args=["--workers", str(n)])
    node.own = [Port(f"{node.name}-w{i}", p) for i, p in enumerate(own)]
    node.start(wait=False)
    if wait:
        node.wait_healthy()
        for p in node.own:
            wait_ready(node, p.port)
    return node


def wait_ready(node, port, timeout=20):
    node.wait_healthy(timeout, "/readyz", port)


def metrics(port):
    st, _, body = http_get(port, "/metrics")
    eq(st, 200, f"/metrics on {port}")
    return body.decode() if isinstance(body, bytes) else body


def node_id(port):
    m = re.search(r'chat_node_info\{node="([^"]+)"', metrics(port))
    check(m, f"no chat_node_info on port {port}")
    return m.group(1)


def worker_pid(node, i):
    """The pid of worker i from the supervisor's last 'worker wI started' line."""
    pids = re.findall(rf"worker w{i} started \(pid (\d+)", node.log_text())
    check(pids, f"no start line for w{i} in the log: {node.log_tail(8)}")
    return int(pids[-1])


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return sorted(int(x) for x in f.read().split())
    except OSError:
        return []


async def clients_on_both(node, room, want=2, tries=40):
    """Connects to the shared port until clients landed on `want` distinct
    workers; returns {node id: [clients]}."""
    by = {}
    for k in range(tries):
        c = await Client.connect(node, room, token(f"u{k}"), label=f"u{k}")
        by.setdefault(c.welcome()["node"], []).append(c)
        if len(by) >= want and all(len(v) >= 2 for v in by.values()):
            break
    check(len(by) >= want, f"{tries} connections to the shared port all landed on {list(by)}")
    return by


def is_msg(room):
    return lambda f: f["type"] == "message" and f.get("room") == room


@test(timeout=20)
async def workers_refused_without_redis():
    lp = free_port()
    e = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    e.update({"CHAT_LISTEN": f"127.0.0.1:{lp}", "CHAT_JWT_SECRET": harness.SECRET,
              "CHAT_WORKERS": "2"})
    p = subprocess.run([harness.RUN.chatd], env=e, capture_output=True, timeout=10)
    eq(p.returncode, 2, "exit status of --workers 2 without CHAT_REDIS_URL")
    check(b"needs CHAT_REDIS_URL" in p.stderr, f"stderr says why: {p.stderr[-300:]!r}")
    s = socket.socket()
    try:
        check(s.connect_ex(("127.0.0.1", lp)) != 0, "nothing listens after the refusal")
    finally:
        s.close()


@test(timeout=60, needs=("redis",))
async def workers_share_the_port_and_messages_cross_workers():
    node = start_workers(2)
    ids = [node_id(p.port) for p in node.own]
    eq(ids, [f"{node.name}-w0", f"{node.name}-w1"], "node ids of the workers' own ports")
    check(len(children(node.proc.pid)) == 2, f"supervisor children: {children(node.proc.pid)}")
    room = uniq("wk")
    by = await clients_on_both(node, room)
    eq(sorted(by), sorted(ids), "node ids seen in welcome on the shared port")
    a, b = by[ids[0]][0], by[ids[1]][0]
    for i in range(20):
        await (a if i % 2 == 0 else b).send_msg(f"m{i}", id=f"m{i}")
    ref = None
    for c in (x for v in by.values() for x in v):
        got = await c.wait_count(is_msg(room), 20, 10, "messages")
        eq([m["seq"] for m in got], list(range(1, 21)), f"{c.label} seqs")
        bodies = [m["body"] for m in got]
        ref = ref or bodies
        eq(bodies, ref, f"{c.label} bodies in seq order, as the first client saw them")
    eq(sorted(ref), sorted(f"m{i}" for i in range(20)), "every message once")
    for k in (0, 1):   # each publisher's own messages keep their order
        own = [b for b in ref if int(b[1:]) % 2 == k]
        eq(own, [f"m{i}" for i in range(k, 20, 2)], f"order of publisher {k}")
    # each worker's /metrics is its own: deliveries split between them
    for p in node.own:
        m = metrics(p.port)
        check(metric_value(m, "chat_shared_listener_accepts_total") >= 1,
              f"{p.name} accepted nothing on the shared port")
    node.signal(signal.SIGTERM)
    eq(node.wait_exit(15), 0, "supervisor exit status after SIGTERM")


@test(timeout=90, needs=("redis",))
async def workers_kill9_restarts_the_worker_and_clients_resume():
    node = start_workers(2)
    ids = [node_id(p.port) for p in node.own]
    room = uniq("k9")
    by = await clients_on_both(node, room)
    victim, other = by[ids[1]], by[ids[0]]
    pub = other[0]
    for i in range(10):
        await pub.send_msg(f"a{i}", id=f"a{i}")
    for c in victim:
        await c.wait_count(is_msg(room), 10, 10, "messages before the kill")
    old = worker_pid(node, 1)
    os.kill(old, signal.SIGKILL)
    for c in victim:
        await c.wait_closed(5)
    # the others are not disturbed and keep publishing meanwhile
    for i in range(10, 20):
        await pub.send_msg(f"a{i}", id=f"a{i}")
    # reconnect through the shared port with since= (land on whichever worker listens)
    again = []
    for k, c in enumerate(victim):
        last = c.seqs(room)[-1]
        again.append((last, await Client.connect(node, room, token(f"r{k}"), since=last,
                                                 label=f"r{k}")))
    for last, c in again:
        got = await c.wait_count(is_msg(room), 20 - last, 10, "replayed + live")
        seqs = [m["seq"] for m in got]
        check(seqs == list(range(last + 1, 21)), f"{c.label}: {describe_seq_problem(seqs)}")
    # the supervisor restarted it: new pid, own port answers, restart counted
    wait_ready(node, node.own[1].port)
    new = worker_pid(node, 1)
    check(new != old, "a new worker process")
    check(new in children(node.proc.pid), "the new worker is the supervisor's child")
    eq(node_id(node.own[1].port), ids[1], "restarted worker keeps its node id")
    eq(metric_value(metrics(node.own[1].port), "chat_worker_restarts_total"), 1.0,
       "chat_worker_restarts_total of w1")
    eq(metric_value(metrics(node.own[0].port), "chat_worker_restarts_total"), 0.0,
       "chat_worker_restarts_total of w0")
    check(re.search(r"worker w1 \(pid \d+\) killed by signal 9", node.log_text()),
          "the supervisor logged the crash")
    # the restarted worker takes new connections on the shared port again
    by2 = await clients_on_both(node, uniq("after"))
    eq(sorted(by2), sorted(ids), "both workers serve the shared port after the restart")
    node.signal(signal.SIGTERM)
    eq(node.wait_exit(15), 0, "supervisor exit status")


@test(timeout=60, needs=("redis",))
async def workers_crash_loop_is_reported():
    node = start_workers(2)
    end = time.time() + 5
    while time.time() < end and "all 2 workers are listening" not in node.log_text():
        await asyncio.sleep(0.05)
    for k in range(5):
        wait_ready(node, node.own[0].port)
        os.kill(worker_pid(node, 0), signal.SIGKILL)
        end = time.time() + 5
        while time.time() < end and len(re.findall(r"worker w0 \(pid \d+\) killed",
                                                   node.log_text())) < k + 1:
            await asyncio.sleep(0.05)
    end = time.time() + 5
    while time.time() < end and "is crash-looping" not in node.log_text():
        await asyncio.sleep(0.05)
    check(re.search(r"worker w0 is crash-looping: 5 crashes in a row", node.log_text()),
          f"no crash-loop report: {node.log_tail(6)}")
    delays = [int(d) for d in re.findall(r"worker w0 \(pid \d+\) killed.*restarting in (\d+) ms",
                                         node.log_text())]
    eq(len(delays), 5, "restart lines")
    for k, d in enumerate(delays):   # core/backoff.h: doubling base, jitter in [base/2, base]
        base = 100 * 2 ** k
        check(base // 2 <= d <= base, f"restart {k + 1} after {d} ms, want [{base // 2}, {base}]")
    check("w1" not in "".join(re.findall(r"worker w\d is crash-looping", node.log_text())),
          "w1 was not reported")
    wait_ready(node, node.own[0].port)
    eq(metric_value(metrics(node.own[0].port), "chat_worker_restarts_total"), 5.0, "restarts")
    node.signal(signal.SIGTERM)
    eq(node.wait_exit(15), 0, "supervisor exit status")


@test(timeout=60, needs=("redis",))
async def workers_sighup_reloads_every_worker():
    node = start_workers(2)
    before = [metric_value(metrics(p.port), "chat_script_reloads_total", 'result="ok"') or 0
              for p in node.own]
    for k in range(2):
        node.signal(signal.SIGHUP)
        want = [b + k + 1 for b in before]
        end = time.time() + 5
        while True:
            got = [metric_value(metrics(p.port), "chat_script_reloads_total", 'result="ok"')
                   for p in node.own]
            if got == want or time.time() > end:
                break
            await asyncio.sleep(0.05)
        eq(got, want, f"reload counters of both workers after SIGHUP #{k + 1}")
    check(node.alive(), "the supervisor survives SIGHUP")
    node.signal(signal.SIGTERM)
    eq(node.wait_exit(15), 0, "supervisor exit status")


@test(timeout=60, needs=("redis",))
async def workers_sigterm_drains_every_worker_and_exits_0():
    node = start_workers(2)
    room = uniq("dr")
    by = await clients_on_both(node, room)
    kids = children(node.proc.pid)
    eq(len(kids), 2, "two workers")
    node.signal(signal.SIGTERM)
    for c in (x for v in by.values() for x in v):
        code = await c.wait_closed(10)
        eq(code, 1001, f"{c.label} close code")
        check(c.errors("server_restart"), f"{c.label}: no server_restart hint: {c.brief()}")
    eq(node.wait_exit(15), 0, "supervisor exit status")
    for k in kids:
        check(not os.path.exists(f"/proc/{k}") or
              open(f"/proc/{k}/stat").read().split()[2] == "Z", f"worker {k} still running")
    for port in [node.port] + [p.port for p in node.own]:
        check(harness.wait_port_closed(port, 3), f"port {port} still open")
    log = node.log_text()
    eq(len(re.findall(r"worker w\d \(pid \d+\) exited with status 0", log)), 2,
       "both workers exited 0")


@test(timeout=40, needs=("redis",))
async def workers_cannot_listen_exit_2():
    # the shared port is held by a plain listener without SO_REUSEPORT
    lp, own = port_block(2)
    s = socket.socket()
    s.bind(("127.0.0.1", lp))
    s.listen()
    try:
        node = harness.Node(name="busy-" + uniq(""), redis=True, port=lp,
                            env={"CHAT_WORKER_PORT": own[0]}, args=["--workers", "2"])
        node.start(wait=False)
        eq(node.wait_exit(20), 2, "supervisor exit status when the port is taken")
        check("could not start" in node.log_text(), f"log says why: {node.log_tail(5)}")
        check("shared with the other workers" in node.log_text(), "worker says which port")
        check("restarting in" not in node.log_text(),
              f"a worker that could not listen was restarted as a crash: {node.log_tail(8)}")
    finally:
        s.close()
    # a worker's own port taken
    lp, own = port_block(2)
    s = socket.socket()
    s.bind(("127.0.0.1", own[1]))
    s.listen()
    try:
        node = harness.Node(name="busy2-" + uniq(""), redis=True, port=lp,
                            env={"CHAT_WORKER_PORT": own[0]}, args=["--workers", "2"])
        node.start(wait=False)
        eq(node.wait_exit(20), 2, "supervisor exit status when a worker's own port is taken")
        check(f"cannot listen on 127.0.0.1:{own[1]}" in node.log_text(),
              f"log names the port: {node.log_tail(5)}")
        # the port answers (our listener), yet the worker is not up: up is
        # what the worker says, not what a probe of its port finds
        check("restarting in" not in node.log_text(),
              f"a worker that could not listen was restarted as a crash: {node.log_tail(8)}")
    finally:
        s.close()
