#!/usr/bin/python3
"""capacity.py: how many chatd processes, Redis shards and how much Postgres a
given number of connections needs at a given message rate, computed from the
unit costs MEASURED by the benchmarks whose results are committed in
loadtest/results/ (issue 12, docs/capacity.md). Standard library only.

  /usr/bin/python3 loadtest/capacity.py                   # unit costs + the scenarios
  /usr/bin/python3 loadtest/capacity.py --conns 500000 --msgs-per-min 2 --mix 2:0.5,100:0.5
  /usr/bin/python3 loadtest/capacity.py --markdown out.md # the same as Markdown
  /usr/bin/python3 loadtest/capacity.py --update-doc docs/capacity.md   # refresh its tables
  /usr/bin/python3 loadtest/capacity.py --check-doc docs/capacity.md    # exit 1 if stale
  /usr/bin/python3 loadtest/capacity.py --measure presence,store,fanout,sockmem,redismem

Nothing here is a hand-typed cost: every unit cost is read from a result file
(the file and its machine line are printed with it). --measure runs the quick
benchmarks whose figures were only ever printed on a console (bench_presence,
bench_store with Postgres' own CPU, Redis pub/sub fan-out per subscriber,
kernel memory per idle TCP socket, Redis memory per id key and per recent
entry) and writes loadtest/results/capacity_*.json.
Ports 29400-29499 by default (--port-base).

The model (all rates per second, CPU in cores = CPU-seconds per second):
  chatd  = conns * idle + connects * connect
         + sum over room kinds of msgs * (pub + nodes_reached * recv + size * delivery)
  Redis  = msgs * publish + msgs * nodes_reached * fanout + heartbeats * hb_redis
  Redis memory = msgs * id_ttl * id_key + rooms * recent_max * recent_entry
  PG     = rows * (xact / rows_per_xact + row)
where nodes_reached(size, P) = P * (1 - (1 - 1/P)^size) is the expected number
of the P processes holding at least one member of a room of that size
(connections spread at random by the load balancer / SO_REUSEPORT), and
rows_per_xact is the group commit of one process at its share of the rate.
Processes = max(connections / usable fds, CPU / target utilisation), solved
as a fixed point (more processes -> more nodes reached per message).
"""
import argparse
import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

BEGIN = "<!-- capacity.py: generated below, do not edit by hand -->"
END = "<!-- capacity.py: generated above -->"


# --------------------------------------------------------------------------
# reading result files

class Missing(Exception):
    pass


def load(name, results):
    path = os.path.join(results, name)
    if not os.path.exists(path):
        raise Missing(name)
    with open(path) as f:
        return json.load(f)


def machine_str(m):
    """The machine line of a result: CPU used by other processes / how long
    the server waited runnable for a CPU."""
    if not m:
        return "no machine line"
    other = m.get("other_cpu_util")
    wait = m.get("server_runq_wait_ms")
    s = []
    if other is not None:
        s.append("others %.0f%%" % (100 * other))
    if wait is not None:
        s.append("wait %.0f ms" % wait)
    if m.get("noisy"):
        s.append("NOISY")
    return ", ".join(s) or "no machine line"


class Unit:
    """One measured unit cost: the value the model uses, where it came from,
    and the other measurements of the same thing (the range)."""

    def __init__(self, key, label, value, unit, source, machine, how, alts=None):
        self.key, self.label, self.value, self.unit = key, label, value, unit
        self.source, self.machine, self.how = source, machine, how
        self.alts = alts or []   # (value, source, machine, how, in_range)

    def values(self):
        return [self.value] + [a[0] for a in self.alts if a[4]]

    def lo(self):
        return min(self.values())

    def hi(self):
        return max(self.values())


def fmt(v, nd=None):
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if nd is None:
        a = abs(v)
        nd = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 1 else 3
    return "{:,.{}f}".format(v, nd)


def fit_line(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def read_units(results):
    """Every unit cost from the committed result files. Raises Missing with the
    name of a file that is not there."""
    U = {}

    # -- chatd: idle (heartbeats, timers) per connection, per-message and
    # per-delivery costs. The idle share is in every loaded run, so it is
    # removed before fitting; the idle figure itself is taken from the
    # connection-hold run, whose trickle is removed with the fit: iterate.
    vs = load("vs_nchan.json", results)
    vdm = load("vs_nchan_dm_chatd.json", results)
    vrm = load("vs_nchan_rooms100_chatd.json", results)
    wc = load("workers_conns_single.json", results)
    ws = load("workers_search_single.json", results)
    wk = load("workers.json", results)

    def proc(j, name):
        for p in j["processes"]:
            if p["name"] == name:
                return p
        raise Missing("process %s in a result file" % name)

    dm_n = vdm["config"]["conns"] / vdm["config"]["rooms"]
    rm_n = vrm["config"]["conns"] / vrm["config"]["rooms"]
    dm_us = proc(vdm, "chatd")["us_per_message"]
    rm_us = proc(vrm, "chatd")["us_per_message"]
    wc_msgs = wc["config"]["rate"]
    wc_size = wc["config"]["conns"] / wc["config"]["rooms"]
    idle = wc["server"]["cpu_util"] / wc["config"]["conns"] * 1e6   # first guess, us/s per conn
    for _ in range(20):
        y_dm = dm_us - vdm["config"]["conns"] * idle / vdm["config"]["rate"]
        y_rm = rm_us - vrm["config"]["conns"] * idle / vrm["config"]["rate"]
        B = (y_rm - y_dm) / (rm_n - dm_n)
        A = y_dm - B * dm_n
        idle = (wc["server"]["cpu_util"] * 1e6 - wc_msgs * (A + wc_size * B)) / wc["config"]["conns"]
    hb_s = wc["config"]["heartbeat_ms"] / 1000.0

    # alternatives for the idle cost: runs without any message
    alts_idle = []
    try:
        cm = load("connmem.json", results)
        alts_idle.append((cm["server"]["cpu_util"] / cm["config"]["conns"] * 1e6, "connmem.json",
                          machine_str(cm.get("machine")),
                          "%d idle conns, no Redis, under malloc_count" % cm["config"]["conns"], True))
    except Missing:
        pass
    try:
        di = load("dm_idle.json", results)
        alts_idle.append((proc(di, "chatd")["cpu_util"] / di["config"]["conns"] * 1e6, "dm_idle.json",
                          machine_str(di.get("machine")),
                          "%d idle conns, Redis + Postgres" % di["config"]["conns"], True))
    except Missing:
        pass
    U["idle"] = Unit("idle", "chatd CPU per idle connection (heartbeat every %g s, timers)" % hb_s,
                     idle, "µs/s per conn", "workers_conns_single.json", machine_str(wc.get("machine")),
                     "%d conns held on one process with Redis; CPU %.1f%% of a core minus its %g msgs/s trickle "
                     "(rooms of %d) at the fitted message/delivery costs" %
                     (wc["config"]["conns"], 100 * wc["server"]["cpu_util"], wc_msgs, wc_size), alts_idle)
    U["hb_s"] = hb_s

    mach_vs = "dm: %s; rooms100: %s" % (machine_str(vdm.get("machine")), machine_str(vrm.get("machine")))
    # per delivery: the slope of CPU over deliveries at fixed connections (the
    # throughput search of workers.sh, probes within its p99 bound) is the
    # marginal cost at high rates, where one loop turn batches more
    probes = [p for p in ws["probes"] if p["p99_ms"] <= ws["p99_slo_ms"]]
    alts_b = []
    if len(probes) >= 2:
        a0, slope = fit_line([p["deliveries_per_s"] for p in probes],
                             [p["server_cpu_util"] * 1e6 for p in probes])
        alts_b.append((slope - A / ws["room_size"], "workers_search_single.json",
                       "%d probes, others %.0f-%.0f%%" % (
                           len(probes), 100 * min(p["machine"]["other_cpu_util"] for p in probes),
                           100 * max(p["machine"]["other_cpu_util"] for p in probes)),
                       "slope of CPU over deliveries/s, %d conns in rooms of %d, %s-%s deliveries/s" % (
                           ws["conns"], ws["room_size"],
                           fmt(min(p["deliveries_per_s"] for p in probes)),
                           fmt(max(p["deliveries_per_s"] for p in probes))), True))
    try:
        r1 = load("rooms100.json", results)
        n1 = r1["config"]["conns"] / r1["config"]["rooms"]
        per_msg = r1["server"]["cpu_util"] * 1e6 / r1["config"]["rate"]
        per_msg -= r1["config"]["conns"] * idle / r1["config"]["rate"]
        alts_b.append(((per_msg - A) / n1, "rooms100.json", machine_str(r1.get("machine")),
                       "one node without Redis, Postgres, %g msgs/s into rooms of %d" % (r1["config"]["rate"], n1),
                       True))
    except Missing:
        pass
    U["delivery"] = Unit("delivery", "chatd CPU per delivery (one frame to one member)", B, "µs",
                         "vs_nchan_{dm,rooms100}_chatd.json", mach_vs,
                         "same run, chatd + Redis + Postgres: cost per message = A + B x room size, fitted "
                         "through dm (rooms of %d, %g µs/msg) and rooms100 (rooms of %d, %g µs/msg), idle "
                         "share removed" % (dm_n, dm_us, rm_n, rm_us), alts_b)

    # the per-message constant, split: what each extra node that holds members
    # pays (the bus push, order check, frame build), from workers 1 vs 2
    th = wk["throughput"]
    recv = (th["double"]["cpu_per_delivery_us"] - th["single"]["cpu_per_delivery_us"]) * ws["room_size"]
    alts_recv = []
    for name in ("twonode_compare.json", "rerun/twonode_compare.json"):
        try:
            tc = load(name, results)
            v = (tc["cpu_per_delivery_ratio"] - 1) * tc["single_node"]["cpu_per_delivery_us"] * 100
            alts_recv.append((v, name, "two nodes on ONE core (wait for each other)",
                              "two nodes vs one node without Redis, rooms of 100 split over both; "
                              "includes the Redis publish path and the nodes' context switches", False))
        except (Missing, KeyError):
            pass
    U["recv"] = Unit("recv", "chatd CPU per message per extra node holding members", max(recv, 0.0), "µs",
                     "workers.json", "single: %s; double: %s" % (
                         machine_str(ws["best"].get("machine")),
                         machine_str(load("workers_search_double.json", results)["best"].get("machine"))),
                     "(CPU per delivery with 2 workers - with 1) x %d members: the second worker receives "
                     "every message too (%.3f vs %.3f µs/delivery)" % (
                         ws["room_size"], th["double"]["cpu_per_delivery_us"],
                         th["single"]["cpu_per_delivery_us"]), alts_recv)
    U["pub"] = Unit("pub", "chatd CPU per message, publishing node (frame, policy, Redis, Postgres, ack)",
                    A - U["recv"].value, "µs", "vs_nchan_{dm,rooms100}_chatd.json + workers.json", mach_vs,
                    "the fit's per-message constant A = %.1f µs minus one node's receive share" % A)

    # -- memory per connection, fds, connection setup
    cs = load("connmem_summary.json", results)
    cmj = load("connmem.json", results)
    alts_rss = []
    for name, j in (("conn15k.json", None), ("workers_conns_single.json", wc),
                    ("workers_conns_double.json", None)):
        try:
            j = j or load(name, results)
            alts_rss.append((j["server"]["rss_per_conn_kib"], name, machine_str(j.get("machine")),
                             "%d conns" % j["config"]["conns"], True))
        except Missing:
            pass
    U["rss"] = Unit("rss", "chatd RSS per connection", cs["rss_per_conn_kib"], "KiB", "connmem_summary.json",
                    machine_str(cs.get("machine")),
                    "%d idle conns in rooms of 100; heap %.2f KiB in %.1f blocks, the rest allocator slack" % (
                        cs["conns"], cs["heap_kib_per_conn"], cs["heap_live_blocks_per_conn"]), alts_rss)
    U["rss_base_mib"] = cmj["server"]["rss_begin_kib"] / 1024.0
    conn_alts = []
    for name in ("conn15k.json", "rooms100.json", "workers_conns_double.json"):
        try:
            j = load(name, results)
            conn_alts.append((j["server"]["cpu_ramp_s"] / j["config"]["conns"] * 1e3, name,
                              machine_str(j.get("machine")), "ramp of %d conns" % j["config"]["conns"], True))
        except Missing:
            pass
    U["connect"] = Unit("connect", "chatd CPU per new connection (upgrade, JWT, join, presence)",
                        wc["server"]["cpu_ramp_s"] / wc["config"]["conns"] * 1e3, "ms",
                        "workers_conns_single.json", machine_str(wc.get("machine")),
                        "CPU during the ramp of %d conns / conns" % wc["config"]["conns"], conn_alts)
    U["held_per_proc"] = wk["conns"]["single"]["held"]
    lag = []
    try:
        r1 = load("rooms100.json", results)
        lag.append("p99 %.1f ms at %s deliveries/s (rooms100.json)" % (r1["lag_ms"]["p99"],
                                                                     fmt(r1["deliveries"]["per_s"])))
    except Missing:
        pass
    lag.append("p99 %.1f ms at %s deliveries/s (workers_search_single.json, best within %g ms)" % (
        ws["best"]["p99_ms"], fmt(ws["best"]["deliveries_per_s"]), ws["p99_slo_ms"]))
    U["lag_line"] = "; ".join(lag)

    # -- Redis
    rc = load("cluster_redis_cpu.json", results)
    fan = load("capacity_fanout.json", results)
    U["fanout"] = Unit("fanout", "Redis CPU per message per subscribed node (PUBLISH to one more subscriber)",
                       fan["per_subscriber_us"], "µs", "capacity_fanout.json", machine_str(fan.get("machine")),
                       "slope of Redis CPU per PUBLISH over %s subscriber connections, %d-byte payloads" % (
                           "/".join(str(p["subscribers"]) for p in fan["points"]), fan["payload_bytes"]))
    nodes_in_rc = rc["load"]["chatd_nodes"]
    alts_pub = []
    try:
        ds = load("dm_summary.json", results)
        alts_pub.append((ds["marginal_us_per_message"]["redis"] - nodes_in_rc * fan["per_subscriber_us"],
                         "dm_summary.json", machine_str(ds.get("machine")),
                         "dm: (Redis CPU - idle phase) / msgs, %.1f commands/msg, older build" %
                         ds["redis_commands_total_per_message"], True))
    except Missing:
        pass
    alts_pub.append((proc(vdm, "redis")["us_per_message"] - fan["per_subscriber_us"], "vs_nchan_dm_chatd.json",
                     machine_str(vdm.get("machine")), "dm, Redis CPU / msgs (idle share included)", True))
    U["redis_pub"] = Unit("redis_pub", "Redis CPU per published message, one Redis (script, buffers, marks)",
                          max(rc["single_us_per_msg"] - nodes_in_rc * fan["per_subscriber_us"], 0.0), "µs",
                          "cluster_redis_cpu.json", "shared core, load average ~16 (docs/redis.md)",
                          "%.1f µs per message at %g msgs/s with %d chatd nodes subscribed, minus their %d "
                          "PUBLISH deliveries" % (rc["single_us_per_msg"], rc["load"]["rate"], nodes_in_rc,
                                                  nodes_in_rc), alts_pub)
    own = [m["us_per_own_msg"] for m in rc["cluster_masters"]]
    U["redis_master"] = Unit("redis_master", "Redis CPU per message of its own rooms, each Cluster master",
                             max(sum(own) / len(own) - nodes_in_rc * fan["per_subscriber_us"], 0.0), "µs",
                             "cluster_redis_cpu.json", "shared core, load average ~16 (docs/redis.md)",
                             "mean of the %d masters' %s µs (replica feed, slot checks) minus the PUBLISH "
                             "deliveries" % (len(own), "/".join(fmt(o) for o in own)),
                             [(max(o - nodes_in_rc * fan["per_subscriber_us"], 0.0), "cluster_redis_cpu.json",
                               "", "one master", True) for o in own])
    rep = [r["us_per_msg"] / m["share"] for r, m in zip(rc["cluster_replicas"], rc["cluster_masters"])]
    U["redis_replica"] = Unit("redis_replica", "Redis CPU per message of its master's rooms, each replica",
                              sum(rep) / len(rep), "µs", "cluster_redis_cpu.json",
                              "shared core, load average ~16", "replica CPU per message / its master's share")
    pr = load("capacity_presence.json", results)
    alts_hb = []
    try:
        di = load("dm_idle.json", results)
        alts_hb.append((proc(di, "redis")["cpu_util"] * 1e6 / (di["config"]["conns"] * 1000.0 /
                                                              di["config"]["heartbeat_ms"]),
                        "dm_idle.json", machine_str(di.get("machine")),
                        "Redis CPU with %d idle conns / heartbeats (sweeps and PINGs included; "
                        "few heartbeats per loop turn)" % di["config"]["conns"], True))
    except Missing:
        pass
    U["redis_hb"] = Unit("redis_hb", "Redis CPU per heartbeat (presence touch)",
                         pr["redis_cpu_util"] * 1e6 / pr["touches_per_s"], "µs", "capacity_presence.json",
                         machine_str(pr.get("machine")),
                         "bench_presence: %d conns, heartbeat %g s, %.0f EVALSHA/s for %.0f touches/s" % (
                             pr["conns"], pr["heartbeat_ms"] / 1000.0, pr["redis_evalsha_per_s"],
                             pr["touches_per_s"]), alts_hb)
    U["presence_node"] = pr["presence_cpu_util"] * 1e6 / pr["touches_per_s"]
    d = load("dm.json", results)
    rp = proc(d, "redis")
    U["redis_dm_bytes"] = ((rp["rss_end_kib"] - rp["rss_go_kib"]) * 1024.0 / d["messages"]["sent"],
                           machine_str(d.get("machine")))
    rm = load("capacity_redismem.json", results)
    U["redis_id"] = Unit("redis_id", "Redis memory per id key (kept id_ttl, 24 h)", rm["id_key_bytes"], "B",
                         "capacity_redismem.json", machine_str(rm.get("machine")),
                         "used_memory growth / %d SET ... EX keys, %s" % (rm["keys"], rm["client_id"]))
    U["redis_entry"] = Unit("redis_entry", "Redis memory per recent-buffer entry (recent_max per room)",
                            rm["recent_entry_bytes"], "B", "capacity_redismem.json",
                            machine_str(rm.get("machine")),
                            "used_memory growth / %d ZADDs of %d-byte tails" % (rm["recent_entries"],
                                                                              rm["tail_bytes"]))

    # -- Postgres
    st = load("capacity_store.json", results)
    bulk, single = st["bulk"], st["single"]
    # us per row = xact / rows_per_xact + row: two points of one run
    r_b, r_s = bulk["rows_per_xact"], single["rows_per_xact"]
    u_b, u_s = bulk["pg_us_per_row"], single["pg_us_per_row"]
    xact = (u_s - u_b) / (1.0 / r_s - 1.0 / r_b)
    row = u_b - xact / r_b
    ds = load("dm_summary.json", results)
    mpx = ds["postgres_per_message"]["messages_per_xact"]
    U["pg_xact"] = Unit("pg_xact", "Postgres CPU per transaction (commit, statement)", xact, "µs",
                        "capacity_store.json", machine_str(st.get("machine")),
                        "bench_store with batch_max %d (%.1f rows/xact, %.1f µs/row) and %d (%.2f rows/xact, "
                        "%.1f µs/row): us/row = xact/rows + row" % (bulk["batch_max"], r_b, u_b,
                                                                   single["batch_max"], r_s, u_s))
    U["pg_row"] = Unit("pg_row", "Postgres CPU per stored row (insert, index, WAL)", max(row, 0.0), "µs",
                       "capacity_store.json", machine_str(st.get("machine")), "the same two points")
    U["pg_dm_check"] = (ds["marginal_us_per_message"]["postgres"], mpx, machine_str(ds.get("machine")))
    U["pg_rooms_check"] = (proc(vrm, "postgres")["us_per_message"], vrm["config"]["rate"],
                           machine_str(vrm.get("machine")))
    U["pg_window_ms"] = mpx / ds["load"]["rate"] * 1000.0
    U["pg_rows_max"] = Unit("pg_rows_max", "Postgres rows/s, one instance, group commit (ceiling here)",
                            bulk["rows_per_s"], "rows/s", "capacity_store.json", machine_str(st.get("machine")),
                            "bench_store, batch_max %d, %s" % (bulk["batch_max"], st.get("durability", "")))
    U["pg_wal"] = ds["postgres_per_message"]["wal_bytes"]
    U["pg_ack"] = (st.get("ack_p50_ms"), st.get("ack_p99_ms"))

    sm = load("capacity_sockmem.json", results)
    U["sock_kib"] = Unit("sock_kib", "kernel memory per idle TCP connection (socket, file, epoll entry)",
                         sm["kib_per_conn"], "KiB", "capacity_sockmem.json", machine_str(sm.get("machine")),
                         "slab caches %s over %d loopback pairs, median of %d" % (
                             "+".join(sm["caches"]), sm["pairs"], len(sm["runs"])))

    # -- the TLS front, estimated: an nginx worker writing the same frames
    rn = vs["rooms100"]["nchan_nostore"]["processes"]["nginx"]["us_per_delivery"]
    U["front"] = Unit("front", "nginx worker CPU per delivery (estimate for a TLS front, no TLS in it)",
                      rn, "µs", "vs_nchan.json", machine_str(vs["rooms100"]["nchan_nostore"].get("machine")),
                      "Nchan (nostore) rooms100: nginx writing WebSocket frames to 5,000 loopback sockets")
    return U


def chatd_defaults():
    """chatd's own defaults the model depends on, read from the code (they are
    settings, not measurements): recent buffer per room, how long a client
    message id is kept in Redis."""
    out = {"recent_max": (1000, "assumed"), "id_ttl_s": (86400, "assumed"), "batch_max": (500, "assumed")}
    try:
        cfg = open(os.path.join(REPO, "core", "config.c")).read()
        for key, env in (("recent_max", "CHAT_RECENT_MAX"), ("id_ttl_s", "CHAT_IDEMPOTENCY_TTL_S"),
                         ("batch_max", "CHAT_BATCH_MAX")):
            mm = re.search(r'"%s",\s*K_INT,\s*O\(\w+\),\s*"(\d+)"' % env, cfg)
            if mm:
                out[key] = (int(mm.group(1)), "%s default (core/config.c)" % env)
        if out["id_ttl_s"][1] == "assumed":
            srv = open(os.path.join(REPO, "core", "server.c")).read()
            mm = re.search(r"bus_opts bo = \{[^,]+,[^,]+,\s*(\d+)", srv)
            if mm:
                out["id_ttl_s"] = (int(mm.group(1)), "fixed in core/server.c (no setting)")
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------
# the model

def nodes_reached(size, procs):
    if procs <= 1:
        return 1.0
    return procs * (1.0 - (1.0 - 1.0 / procs) ** size)


def value(U, key, pessimistic):
    u = U[key]
    return u.hi() if pessimistic else u.value


def model(U, p, pessimistic=False):
    """p: dict of parameters. Returns a dict of results."""
    v = lambda k: value(U, k, pessimistic)
    conns = p["conns"]
    kinds = [(size, frac, conns * frac, conns * frac * p["msgs_per_min"] * p.get("talk", {}).get(size, 1.0) / 60.0)
             for size, frac in p["mix"]]
    if p.get("msgs_per_s") is not None:      # an explicit inbound rate (Centrifugo's shape)
        tot = sum(k[3] for k in kinds) or 1.0
        kinds = [(s, f, c, p["msgs_per_s"] * m / tot) for s, f, c, m in kinds]
    msgs = sum(k[3] for k in kinds)
    deliveries = sum(k[3] * k[0] for k in kinds)
    usable = max(p["fd_limit"] - (20000 - U["held_per_proc"]), 1)   # fds kept for listener, Redis, PG, logs
    hb_rate = conns / p["hb_s"]
    idle_us = v("idle") * U["hb_s"] / p["hb_s"] if p["hb_s"] else v("idle")   # scales with heartbeat rate
    front = v("front") if p["tls_front"] else 0.0     # counted in the processes only when asked

    procs = max(1, math.ceil(conns / usable))
    for _ in range(100):
        reach = {s: nodes_reached(s, procs) for s, _, _, _ in kinds}
        parts = {
            "idle": conns * idle_us,
            "connect": p["connects_per_s"] * v("connect") * 1000.0,
            "publish": msgs * v("pub"),
            "receive": sum(m * reach[s] * v("recv") for s, _, _, m in kinds),
            "deliver": deliveries * (v("delivery") + front),
        }
        cpu = sum(parts.values()) / 1e6
        need = max(math.ceil(conns / usable), math.ceil(cpu / p["util"]), 1)
        if need <= procs:
            break
        procs = need
    conns_per_proc = conns / procs
    mem_proc_mib = U["rss_base_mib"] + conns_per_proc * v("rss") / 1024.0
    kern_proc_mib = conns_per_proc * v("sock_kib") / 1024.0

    # Redis
    fan = sum(m * reach[s] for s, _, _, m in kinds)
    cluster = p["redis"] == "cluster"
    per_msg = v("redis_master") if cluster else v("redis_pub")
    redis_parts = {
        "publish": msgs * per_msg,
        "fanout": fan * v("fanout"),
        "heartbeats": hb_rate * v("redis_hb"),
    }
    redis_cpu = sum(redis_parts.values()) / 1e6
    rooms = sum(c / s for s, _, c, _ in kinds)
    redis_ids_gib = msgs * p["id_ttl_s"] * v("redis_id") / 2 ** 30
    redis_recent_gib = rooms * p["recent_max"] * v("redis_entry") / 2 ** 30
    redis_mem_gib = redis_ids_gib + redis_recent_gib
    shards_cpu = math.ceil(redis_cpu / p["util"])
    shards_mem = math.ceil(redis_mem_gib / p["redis_mem_gib"]) if p["redis_mem_gib"] else 1
    shards = max(1, shards_cpu, shards_mem)
    replica_cpu = msgs * v("redis_replica") / 1e6 if cluster else 0.0

    # Postgres: each process group-commits its own share
    rows = msgs if p["postgres"] else 0.0
    rpx = min(max(rows / procs * U["pg_window_ms"] / 1000.0, 1.0), p["batch_max"]) if rows else 0.0
    pg_us = v("pg_xact") / rpx + v("pg_row") if rows else 0.0
    pg_cpu = rows * pg_us / 1e6
    return {
        "msgs": msgs, "deliveries": deliveries, "kinds": kinds, "reach": reach,
        "procs": procs, "procs_by_fd": math.ceil(conns / usable), "procs_by_cpu": math.ceil(cpu / p["util"]),
        "usable_fds": usable, "cpu": cpu, "parts": parts, "front_cpu": deliveries * v("front") / 1e6,
        "conns_per_proc": conns_per_proc, "util_per_proc": cpu / procs,
        "deliveries_per_proc": deliveries / procs,
        "mem_proc_mib": mem_proc_mib, "kern_proc_mib": kern_proc_mib,
        "mem_total_gib": (mem_proc_mib + kern_proc_mib) * procs / 1024.0,
        "hosts": math.ceil(max(procs / p["host_cores"],
                               (mem_proc_mib + kern_proc_mib) * procs / 1024.0 / p["host_mem_gib"])),
        "redis_cpu": redis_cpu, "redis_parts": redis_parts, "redis_mem_gib": redis_mem_gib,
        "redis_ids_gib": redis_ids_gib, "redis_recent_gib": redis_recent_gib, "rooms": rooms,
        "shards": shards, "shards_cpu": shards_cpu, "shards_mem": shards_mem, "replica_cpu": replica_cpu,
        "rows": rows, "rows_per_xact": rpx, "xacts": rows / rpx if rows else 0.0, "pg_us": pg_us,
        "pg_cpu": pg_cpu, "pg_cores": math.ceil(pg_cpu / p["util"]) if rows else 0,
        "pg_vs_ceiling": rows / value(U, "pg_rows_max", False) if rows else 0.0,
        "wal_mib_s": rows * U["pg_wal"] / 2 ** 20,
    }


DEFAULTS = dict(conns=1_000_000, mix=[(2, 0.2), (100, 0.6), (1000, 0.2)], msgs_per_min=1.0,
                hb_s=10.0, connects_per_s=0.0, util=0.6, fd_limit=None, host_cores=32, host_mem_gib=128,
                redis="cluster", redis_mem_gib=25.0, id_ttl_s=86400, recent_max=1000, postgres=True, batch_max=500,
                tls_front=False, msgs_per_s=None, talk={1000: 0.1})


def scenarios(base):
    def sc(name, note, **kw):
        p = dict(base)
        p.update(kw)
        p["name"], p["note"] = name, note
        return p
    mix = base["mix"]
    mixs = ", ".join("%d%% in rooms of %d" % (round(f * 100), s) for s, f in mix)
    if base["talk"]:
        mixs += " (members of rooms of %s send %s× the rate)" % (
            "/".join(str(k) for k in base["talk"]), "/".join("%g" % v for v in base["talk"].values()))
    return [
        sc("low", "%s; 0.1 msgs/conn/min" % mixs, msgs_per_min=0.1),
        sc("medium", "%s; 1 msg/conn/min" % mixs, msgs_per_min=1.0),
        sc("high", "%s; 5 msgs/conn/min" % mixs, msgs_per_min=5.0),
        sc("dm-heavy", "80% DMs (rooms of 2), 20% rooms of 100; 2 msgs/conn/min",
           mix=[(2, 0.8), (100, 0.2)], msgs_per_min=2.0, talk={}),
        sc("large rooms", "10% DMs, 30% rooms of 100, 60% rooms of 1000, every member sending 1 msg/min "
           "(a room of 1000 gets 16.7 msgs/s)", mix=[(2, 0.1), (100, 0.3), (1000, 0.6)],
           msgs_per_min=1.0, talk={}),
        sc("idle", "heartbeats only, no messages", msgs_per_min=0.0),
        sc("centrifugo shape", "Centrifugo's 2020 run: rooms of 10, ~467k deliveries/s (28M/min), "
           "3,333 connects/s (200k/min), no persistence", mix=[(10, 1.0)], msgs_per_s=28e6 / 60 / 10,
           connects_per_s=200000 / 60.0, postgres=False, talk={}),
        sc("centrifugo shape + PG", "the same with every message stored and acked after commit",
           mix=[(10, 1.0)], msgs_per_s=28e6 / 60 / 10, connects_per_s=200000 / 60.0, talk={}),
    ]


# --------------------------------------------------------------------------
# output

def unit_rows(U):
    keys = ["idle", "connect", "pub", "recv", "delivery", "rss", "sock_kib", "redis_pub", "redis_master",
            "redis_replica", "fanout", "redis_hb", "redis_id", "redis_entry", "pg_xact", "pg_row", "pg_rows_max", "front"]
    rows = []
    for k in keys:
        u = U[k]
        rng = "%s – %s" % (fmt(u.lo()), fmt(u.hi())) if len(u.values()) > 1 else ""
        rows.append([u.label, fmt(u.value) + " " + u.unit, rng, u.source, u.machine, u.how])
        for a in u.alts:
            rows.append(["  alt" + ("" if a[4] else " (not in range)"), fmt(a[0]) + " " + u.unit, "", a[1], a[2],
                         a[3]])
    return rows


def scenario_rows(U, scs, pessimistic):
    rows = []
    for p in scs:
        r = model(U, p, pessimistic)
        rows.append([
            p["name"], fmt(r["msgs"]), fmt(r["deliveries"]),
            "%d (fd %d, CPU %d)" % (r["procs"], r["procs_by_fd"], r["procs_by_cpu"]),
            fmt(r["cpu"], 1), fmt(r["conns_per_proc"]), "%.0f%%" % (100 * r["util_per_proc"]),
            fmt(r["mem_proc_mib"] + r["kern_proc_mib"]), str(r["hosts"]),
            "%d (CPU %d, mem %d)" % (r["shards"], r["shards_cpu"], r["shards_mem"]),
            fmt(r["redis_cpu"], 2), "%s + %s" % (fmt(r["redis_ids_gib"]), fmt(r["redis_recent_gib"])),
            "%s rows/s, %s xact/s, %.1f cores" % (fmt(r["rows"]), fmt(r["xacts"]), r["pg_cpu"])
            if p["postgres"] else "off",
        ])
    return rows


SC_HEAD = ["scenario", "msgs/s in", "deliveries/s", "chatd processes (by fd, by CPU)", "chatd cores used",
           "conns/process", "CPU/process", "MiB/process (RSS+kernel)", "chatd hosts", "Redis shards (by CPU, by mem)",
           "Redis cores used", "Redis GiB (id keys + recent buffers)", "Postgres"]


def breakdown_rows(U, scs, pessimistic):
    rows = []
    for p in scs:
        r = model(U, p, pessimistic)
        pt = r["parts"]
        rows.append([p["name"]] + [fmt(pt[k] / 1e6, 2) for k in ("idle", "connect", "publish", "receive",
                                                                 "deliver")] + [fmt(r["deliveries_per_proc"])] +
                    [", ".join("%d: %.1f" % (s, r["reach"][s]) for s, _, _, _ in r["kinds"])] +
                    [fmt(r["redis_parts"][k] / 1e6, 2) for k in ("publish", "fanout", "heartbeats")] +
                    [("%.1f" % r["rows_per_xact"]) if r["rows"] else "-", fmt(r["pg_us"]) if r["rows"] else "-",
                     ("%.2f×" % r["pg_vs_ceiling"]) if r["rows"] else "-",
                     fmt(r["wal_mib_s"], 1) if r["rows"] else "-", fmt(r["front_cpu"], 1)])
    return rows


BD_HEAD = ["scenario", "idle", "connects", "publish", "receive", "deliver", "deliveries/s per process",
           "nodes reached per msg (room size: n)",
           "Redis publish", "Redis fan-out", "Redis heartbeats", "PG rows/xact", "PG µs/row",
           "rows/s ÷ bulk ceiling here", "WAL MiB/s", "a TLS front would add (cores, est.)"]


def table_text(head, rows):
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    out = ["  ".join(str(x).ljust(n) for x, n in zip(head, w))]
    out.append("  ".join("-" * n for n in w))
    for r in rows:
        out.append("  ".join(str(x).ljust(n) for x, n in zip(r, w)))
    return "\n".join(out)


def table_md(head, rows):
    esc = lambda s: str(s).replace("|", "\\|")
    out = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        out.append("| " + " | ".join(esc(x) for x in r) + " |")
    return "\n".join(out)


def centrifugo_rows(U, base):
    p = [s for s in scenarios(base) if s["name"] == "centrifugo shape"][0]
    r = model(U, p)
    rp = model(U, p, True)
    return [
        ["connections", "1,000,000 (100 client pods × ~10k)", fmt(p["conns"]), ""],
        ["channels / rooms", "each conn: a personal channel + a group of 10 (~1.1M channels)",
         "rooms of 10 (personal channels carry nothing here)", "publish split unknown: all in groups assumed"],
        ["deliveries/s", "28M/min ≈ 467k/s (“about 500k”)", fmt(r["deliveries"]), ""],
        ["inbound publishes/s", "not published", fmt(r["msgs"]), "= deliveries / 10"],
        ["connect/disconnect", "200k/min", fmt(p["connects_per_s"]) + "/s", ""],
        ["message size", "~100 bytes", "80-byte bodies in the runs (~150-byte frames)", ""],
        ["heartbeats", "not stated (Centrifuge pings)", "every %g s" % p["hb_s"], ""],
        ["persistence / ack", "none (history off; on: Redis 64% instead of 32%)", "none in this row", ""],
        ["server CPU used", "40 CPU (20 pods × ~2)", "%.1f cores (%.1f pessimistic)" % (r["cpu"], rp["cpu"]),
         "chatd: one process = one core"],
        ["server processes", "20 pods", "%d processes at %.0f%% target (%d by fds of %s)" % (
            r["procs"], 100 * p["util"], r["procs_by_fd"], fmt(p["fd_limit"])), ""],
        ["server memory", "27 GB (~30 KB/conn; ws buffers set to 512, \"512 kb\" in the text)",
         "%.1f GiB RSS + %.1f GiB kernel" % (r["procs"] * r["mem_proc_mib"] / 1024,
                                             r["procs"] * r["kern_proc_mib"] / 1024),
         "whether kernel socket memory is in the 27 GB is not stated"],
        ["broker CPU", "5 Redis × 0.32 CPU = 1.6 (history off; presence not stated)",
         "%.2f cores (%.2f pessimistic), of which heartbeats %.2f" % (
             r["redis_cpu"], rp["redis_cpu"], r["redis_parts"]["heartbeats"] / 1e6),
         "chatd: seq, recent buffer, id key and presence in Redis on every message/heartbeat"],
        ["broker shards", "5", "%d (CPU %d, memory %d: id keys %.0f GiB, recent buffers %.0f GiB)" % (
            r["shards"], r["shards_cpu"], r["shards_mem"], r["redis_ids_gib"], r["redis_recent_gib"]),
         "%g GiB per shard; id keys kept %d s" % (p["redis_mem_gib"], p["id_ttl_s"])],
        ["latency p99", "200 ms (end to end, in Kubernetes)", "not modelled; measured on one core here: %s" % (
            U["lag_line"]), "loopback, client-observed"],
        ["idle 1M conns", "~10 CPU, ~5% of each Redis", "%.1f cores, Redis %.2f cores" % (
            model(U, dict(p, msgs_per_s=0.0, connects_per_s=0.0))["cpu"],
            model(U, dict(p, msgs_per_s=0.0, connects_per_s=0.0))["redis_cpu"]), "chatd heartbeats every 10 s"],
        ["hardware", "Xeon E5-2640 v4 2.4 GHz, Kubernetes nodes, real NICs", "2-vCPU shared VM, loopback", ""],
    ]


CF_HEAD = ["", "Centrifugo, published (2020)", "chatd, this model", "note"]


def params_line(p):
    return ("conns %s; heartbeat every %g s; target utilisation %.0f%%; fd limit %s per process; "
            "hosts of %d cores / %d GiB; Redis %s, %g GiB per shard; id keys kept %d s, recent buffer %d per "
            "room (%s); Postgres %s%s" % (
                fmt(p["conns"]), p["hb_s"], 100 * p["util"], fmt(p["fd_limit"]), p["host_cores"],
                p["host_mem_gib"], p["redis"], p["redis_mem_gib"], p["id_ttl_s"], p["recent_max"],
                p.get("settings_src", "parameters"), "on" if p["postgres"] else "off",
                "; TLS front counted" if p["tls_front"] else ""))


def render(U, base, md, git_desc):
    out = []
    T = table_md if md else table_text
    h = (lambda s: "\n### " + s + "\n") if md else (lambda s: "\n== " + s + "\n")
    out.append(("Computed by `loadtest/capacity.py` from the result files of %s." if md else
                "capacity.py: unit costs from the result files of %s") % git_desc)
    out.append(h("Unit costs (measured)"))
    out.append(T(["unit", "value", "range", "file", "machine", "how"], unit_rows(U)))
    pg_dm, mpx, mach = U["pg_dm_check"]
    out.append("\nCheck: dm grew Redis by %.0f B per message (dm.json, %s: the id key and the recent entry while "
               "buffers fill); the id key + entry measured apart: %.0f B." % (
                   U["redis_dm_bytes"][0], U["redis_dm_bytes"][1], U["redis_id"].value + U["redis_entry"].value))
    rr = U["pg_rooms_check"]
    out.append("\nCheck: the Postgres fit predicts %.1f µs per message at dm's %.2f rows/transaction; dm measured "
               "%.1f µs (dm_summary.json, %s); at %g msgs/s (rooms100 of vs_nchan, %s) Postgres used %.0f µs per "
               "message, where the model's rows/xact rule gives %.1f rows/xact, %.0f µs." % (
                   U["pg_xact"].value / mpx + U["pg_row"].value, mpx, pg_dm, mach, rr[1], rr[2], rr[0],
                   max(rr[1] * U["pg_window_ms"] / 1000.0, 1.0),
                   U["pg_xact"].value / max(rr[1] * U["pg_window_ms"] / 1000.0, 1.0) + U["pg_row"].value))
    out.append("\nchatd's group-commit window, from dm: %.2f ms. Presence's share of a heartbeat in the node "
               "(bench_presence): %.1f µs." % (U["pg_window_ms"], U["presence_node"]))
    for pess, title in ((False, "The model, central unit costs"),
                        (True, "The model, pessimistic unit costs (the highest of each range)")):
        scs = scenarios(base)
        out.append(h(title))
        out.append(params_line(base) + ("  " if not md else "") + "\n")
        out.append(T(SC_HEAD, scenario_rows(U, scs, pess)))
        out.append("")
        out.append(T(BD_HEAD, breakdown_rows(U, scs, pess)))
        if not pess:
            out.append("\nScenarios: " + "; ".join("**%s**: %s" % (s["name"], s["note"]) if md else
                                                   "%s: %s" % (s["name"], s["note"]) for s in scs) + ".")
    for fd in (1048576,):
        b2 = dict(base, fd_limit=fd)
        out.append(h("The same, fd limit %s per process (typical production), central costs" % fmt(fd)))
        out.append(T(SC_HEAD, scenario_rows(U, scenarios(b2), False)))
    out.append(h("Next to Centrifugo's published 1M-connection run"))
    out.append(T(CF_HEAD, centrifugo_rows(U, base)))
    return "\n".join(out) + "\n"


def git_describe():
    try:
        head = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%h %cs"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "loadtest/results"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return "commit %s%s" % (head or "?", " (with uncommitted results)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "this checkout"


# --------------------------------------------------------------------------
# --measure: the quick benchmarks whose figures were console-only

def proc_cpu(pid, reaped=False):
    """utime+stime of one process in seconds (0 if gone); reaped: plus the
    CPU of the children it waited for (a postmaster's exited backends)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
        x = s[s.rindex(")") + 2:].split()
        t = int(x[11]) + int(x[12]) + ((int(x[13]) + int(x[14])) if reaped else 0)
        return t / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return 0.0


def tree_pids(root):
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError):
            pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_cpu(root):
    """CPU of root, of its live descendants and of the children it reaped."""
    return proc_cpu(root, True) + sum(proc_cpu(p) for p in tree_pids(root) if p != root)


def busy_s():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Machine:
    """The machine line of a measurement: CPU of other processes during it."""

    def __init__(self, own):
        self.own = own           # callable: CPU seconds of what we measure + ourselves
        self.t0, self.b0, self.o0 = time.time(), busy_s(), own()

    def line(self):
        wall = time.time() - self.t0
        other = max(busy_s() - self.b0 - (self.own() - self.o0), 0.0) / wall
        return {"cores": os.cpu_count(), "other_cpu_util": round(other, 3), "noisy": other > 0.5}


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def services(cmd, data, port):
    sh = ". %s/tools/services.sh && %s %s %d" % (REPO, cmd, data, port)
    subprocess.run(["bash", "-c", sh], check=True)


def services_stop(data):
    subprocess.run(["bash", "-c", ". %s/tools/services.sh && services_stop %s" % (REPO, data)])


def redis_cmd(port, *args):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(resp(*args))
    buf = b""
    while True:
        buf += s.recv(65536)
        r, n = parse_resp(buf, 0)
        if n:
            s.close()
            return r


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def parse_resp(b, i):
    """(value, next index) or (None, 0) when incomplete."""
    if i >= len(b):
        return None, 0
    e = b.find(b"\r\n", i)
    if e < 0:
        return None, 0
    t, line = b[i:i + 1], b[i + 1:e]
    if t in (b"+", b"-", b":"):
        return line.decode(), e + 2
    if t == b"$":
        n = int(line)
        if n < 0:
            return None, e + 2
        if len(b) < e + 2 + n + 2:
            return None, 0
        return b[e + 2:e + 2 + n].decode(errors="replace"), e + 4 + n
    if t == b"*":
        n, j, out = int(line), e + 2, []
        for _ in range(n):
            v, j = parse_resp(b, j)
            if not j:
                return None, 0
            out.append(v)
        return out, j
    raise ValueError("bad RESP")


def redis_cpu(port):
    info = redis_cmd(port, "INFO", "cpu")
    g = lambda k: float(re.search(k + r":([0-9.]+)", info).group(1))
    return g("used_cpu_sys") + g("used_cpu_user")


def redis_pid(port):
    info = redis_cmd(port, "INFO", "server")
    return int(re.search(r"process_id:(\d+)", info).group(1))


def measure_presence(a, data):
    port = a.port_base
    services("services_start_redis", data, port)
    try:
        rpid = redis_pid(port)
        out = os.path.join(data, "presence.json")
        m = Machine(lambda: self_cpu() + proc_cpu(rpid))
        cmd = [a.bench_presence, "-u", "redis://127.0.0.1:%d" % port, "-n", "10000", "-r", "100", "-b", "10000",
               "-t", "30000", "-d", str(a.seconds), "-j", out]
        print("measure presence:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        j = json.load(open(out))
        j["machine"] = m.line()
        j["command"] = " ".join(cmd[:1] + ["-u", "redis://..."] + cmd[3:-2])
        j["redis"] = "tools/services.sh (appendonly, appendfsync always)"
        return j
    finally:
        services_stop(data)


def pg_scalar(port, sql):
    r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "chatd", "-tAc", sql],
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


def measure_store(a, data):
    port = a.port_base + 1
    services("services_start_postgres", data, port)
    try:
        datadir = open(os.path.join(data, "postgres.datadir")).read().strip()
        pm = int(open(os.path.join(datadir, "postmaster.pid")).readline())
        url = "postgresql://postgres@127.0.0.1:%d/chatd" % port
        dur = "fsync=%s, synchronous_commit=%s" % (pg_scalar(port, "SHOW fsync"),
                                                   pg_scalar(port, "SHOW synchronous_commit"))
        out = {"durability": dur}
        for label, batch, rows in (("bulk", 500, a.store_rows), ("single", 1, a.store_rows // 10)):
            jf = os.path.join(data, "store_%s.json" % label)
            cmd = [a.bench_store, url, "--rows", str(rows), "--batch", str(batch), "--ack-seconds", "0",
                   "--queries", "0", "--json", jf]
            print("measure store:", " ".join(cmd), flush=True)
            x0 = int(pg_scalar(port, "SELECT xact_commit FROM pg_stat_database WHERE datname='chatd'"))
            m = Machine(lambda: self_cpu() + tree_cpu(pm))
            kids0 = len(tree_pids(pm))
            c0 = tree_cpu(pm)
            subprocess.run(cmd, check=True)
            for _ in range(100):      # the bench's backends exit and are reaped
                if len(tree_pids(pm)) <= kids0:
                    break
                time.sleep(0.05)
            time.sleep(0.2)
            cpu = tree_cpu(pm) - c0
            x1 = int(pg_scalar(port, "SELECT xact_commit FROM pg_stat_database WHERE datname='chatd'"))
            j = json.load(open(jf))
            j["pg_cpu_s"] = round(cpu, 3)
            j["pg_us_per_row"] = cpu * 1e6 / rows
            j["xacts"] = x1 - x0
            j["rows_per_xact"] = rows / max(x1 - x0, 1)
            j["machine"] = m.line()
            out[label] = j
        jf = os.path.join(data, "store_ack.json")
        cmd = [a.bench_store, url, "--rows", "1000", "--ack-seconds", "10", "--queries", "0", "--json", jf]
        print("measure store:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        j = json.load(open(jf))
        out["ack_p50_ms"], out["ack_p99_ms"] = j.get("ack_p50_ms"), j.get("ack_p99_ms")
        out["machine"] = out["bulk"]["machine"]
        out["note"] = ("Postgres CPU = every process of the postmaster's tree during the bench_store run "
                       "(schema setup included, a few ms); transactions from pg_stat_database.xact_commit")
        return out
    finally:
        services_stop(data)


def measure_fanout(a, data):
    """Redis CPU per PUBLISH as a function of the number of subscribed
    connections (one per chatd node in the real bus)."""
    port = a.port_base + 2
    services("services_start_redis", data, port)
    try:
        rpid = redis_pid(port)
        payload = b"12345\n" + b'"room":"capacity","user":"u1","name":"U","body":"' + b"x" * 80 + b'","ts":1}'
        rate, secs, points = 1000, a.seconds / 3.0, []
        m = Machine(lambda: self_cpu() + proc_cpu(rpid))
        c0 = redis_cpu(port)
        time.sleep(2.0)
        idle_per_s = (redis_cpu(port) - c0) / 2.0
        for nsub in (1, 8, 32, 64):
            sel = selectors.DefaultSelector()
            subs = []
            for i in range(nsub):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(resp("SUBSCRIBE", "chat:{capacity}:msg"))
                s.recv(4096)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, {"n": 0, "tail": b""})
                subs.append(s)
            pub = socket.create_connection(("127.0.0.1", port))
            pub.setblocking(False)
            sel.register(pub, selectors.EVENT_READ, None)
            cmd = resp("PUBLISH", "chat:{capacity}:msg", payload)
            mark = b"$7\r\nmessage\r\n"
            c0, t0, sent = redis_cpu(port), time.time(), 0
            while True:
                now = time.time()
                due = min(int((now - t0) * rate), int(secs * rate))
                if due > sent:
                    pub.sendall(cmd * (due - sent))
                    sent = due
                if sent >= int(secs * rate) and now - t0 > secs + 0.5:
                    break
                for key, _ in sel.select(0.002):
                    try:
                        b = key.fileobj.recv(262144)
                    except BlockingIOError:
                        continue
                    if key.data is not None:
                        buf = key.data["tail"] + b
                        key.data["n"] += buf.count(mark)
                        key.data["tail"] = buf[-(len(mark) - 1):]
            wall = time.time() - t0
            cpu = redis_cpu(port) - c0 - idle_per_s * wall
            got = [sel.get_key(s).data["n"] for s in subs]
            for s in subs + [pub]:
                sel.unregister(s)
                s.close()
            if min(got) != sent:
                raise SystemExit("fanout: a subscriber got %d of %d messages" % (min(got), sent))
            points.append({"subscribers": nsub, "publishes": sent, "redis_cpu_s": round(cpu, 4),
                           "us_per_publish": cpu * 1e6 / sent})
            print("measure fanout: %d subscribers: %.2f µs Redis CPU per PUBLISH" % (
                nsub, cpu * 1e6 / sent), flush=True)
        a0, slope = fit_line([p["subscribers"] for p in points], [p["us_per_publish"] for p in points])
        return {"payload_bytes": len(payload), "rate": rate, "seconds_per_point": secs, "points": points,
                "per_publish_us": a0, "per_subscriber_us": slope, "idle_redis_cpu_per_s": idle_per_s,
                "machine": m.line(), "redis": "tools/services.sh (appendonly, appendfsync always), PUBLISH "
                "(standalone); the Cluster's SPUBLISH writes the same per subscriber"}
    finally:
        services_stop(data)


def redis_pipeline(port, cmds):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"".join(cmds))
    buf, i, n = b"", 0, 0
    while n < len(cmds):
        buf += s.recv(1 << 20)
        while True:
            v, j = parse_resp(buf, i)
            if not j:
                break
            if isinstance(v, str) and v.startswith("ERR"):
                raise SystemExit("redis: " + v)
            i, n = j, n + 1
    s.close()


def measure_redismem(a, data):
    """Redis memory of what every message leaves behind: its id key (SET
    chat:{room}:sid:<len(user)>:<user>:<id> seq EX id_ttl: ids are per sender) and its entry in the room's recent
    buffer (ZADD chat:{room}:recent seq "<seq>\n<tail>"), shaped like chatd's."""
    port = a.port_base + 4
    services("services_start_redis", data, port)
    try:
        m = Machine(self_cpu)
        used = lambda: int(re.search(r"used_memory:(\d+)", redis_cmd(port, "INFO", "memory")).group(1))
        n, rooms = 100000, 100
        tail = ('"room":"room-%04d","id":"%s","user":"user-123456","name":"User Name","body":"' + "x" * 80 +
                '","ts":1765000000000}')
        cid = lambda i: "6f1c2a4e-%04x-4b1d-9e2f-%012x" % (i % 65536, i)      # a browser's uuid
        u0 = used()
        for k in range(0, n, 5000):
            redis_pipeline(port, [resp("SET", "chat:{room-%04d}:sid:11:user-123456:%s" % (i % 1000, cid(i)), str(i + 1), "EX", "86400")
                                  for i in range(k, k + 5000)])
        u1 = used()
        for k in range(0, n, 5000):
            redis_pipeline(port, [resp("ZADD", "chat:{room-%04d}:recent" % (i % rooms), str(i // rooms + 1),
                                       "%d\n%s" % (i // rooms + 1, tail % (i % rooms, cid(i))))
                                  for i in range(k, k + 5000)])
        u2 = used()
        return {"keys": n, "id_key_bytes": (u1 - u0) / n, "recent_entries": n, "rooms": rooms,
                "recent_entry_bytes": (u2 - u1) / n, "tail_bytes": len(tail % (0, cid(0))),
                "client_id": "uuid (36 characters)", "machine": m.line(),
                "note": "INFO memory used_memory deltas (allocator bytes, not RSS); id keys in 1,000 rooms, "
                        "recent entries 1,000 per room in %d rooms (chatd's recent_max)" % rooms}
    finally:
        services_stop(data)


SOCK_CACHES = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq")


def slab_bytes():
    out = {}
    with open("/proc/slabinfo") as f:
        for line in f:
            x = line.split()
            if x and x[0] in SOCK_CACHES:
                out[x[0]] = int(x[1]) * int(x[3])
    return out


def measure_sockmem(a, data):
    """Kernel memory of idle TCP connections: slab of the socket, inode, file,
    dentry and epoll entry. Both ends of a loopback pair are counted and
    halved; a server-side socket also sits in an epoll set, like chatd's."""
    if not os.access("/proc/slabinfo", os.R_OK):
        raise SystemExit("sockmem: /proc/slabinfo is not readable (needs root)")
    pairs, runs = a.sock_pairs, []
    m = Machine(self_cpu)
    for _ in range(3):
        ls = socket.socket()
        ls.bind(("127.0.0.1", a.port_base + 3))
        ls.listen(4096)
        ep = select_epoll()
        b0 = slab_bytes()
        cl, sv = [], []
        for i in range(pairs):
            c = socket.create_connection(("127.0.0.1", a.port_base + 3))
            s, _ = ls.accept()
            c.sendall(b"hb")
            s.recv(16)
            s.sendall(b"ack")
            c.recv(16)
            ep.register(s.fileno(), 1)
            cl.append(c)
            sv.append(s)
        time.sleep(0.5)
        b1 = slab_bytes()
        delta = sum(b1.get(k, 0) - b0.get(k, 0) for k in SOCK_CACHES)
        runs.append({"bytes": delta, "by_cache": {k: b1.get(k, 0) - b0.get(k, 0) for k in SOCK_CACHES}})
        for s in cl + sv:
            s.close()
        ep.close()
        ls.close()
        time.sleep(1.0)
    runs.sort(key=lambda r: r["bytes"])
    med = runs[len(runs) // 2]["bytes"]
    return {"pairs": pairs, "caches": list(SOCK_CACHES), "runs": runs,
            "kib_per_conn": med / pairs / 2 / 1024 + 0.0, "machine": m.line(),
            "note": "per connection = (both ends' slab growth) / pairs / 2, server side in an epoll set; "
                    "empty socket buffers (a drained idle socket holds no skb); other processes' slab "
                    "changes during the run are noise"}


def select_epoll():
    import select
    return select.epoll()


def run_measure(a):
    which = [w.strip() for w in a.measure.split(",") if w.strip()]
    for w in which:
        if w not in ("presence", "store", "fanout", "sockmem", "redismem"):
            raise SystemExit("--measure: unknown benchmark %r (presence, store, fanout, sockmem, redismem)" % w)
    for b in ("bench_presence", "bench_store"):
        path = getattr(a, b)
        if any(x in which for x in (("presence",) if b == "bench_presence" else ("store",))) and \
                not os.access(path, os.X_OK):
            raise SystemExit("%s not found: build it (cmake --build build --target %s)" % (path, b))
    for w in which:
        data = tempfile.mkdtemp(prefix="chatd-capacity-")
        os.chmod(data, 0o755)
        try:
            j = {"presence": measure_presence, "store": measure_store, "fanout": measure_fanout,
                 "sockmem": measure_sockmem, "redismem": measure_redismem}[w](a, data)
        finally:
            shutil.rmtree(data, ignore_errors=True)
        j["measured_at"] = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
        j["command"] = "loadtest/capacity.py --measure %s" % w
        path = os.path.join(a.results, "capacity_%s.json" % w)
        with open(path, "w") as f:
            json.dump(j, f, indent=2)
            f.write("\n")
        print("wrote", os.path.relpath(path, REPO), flush=True)


# --------------------------------------------------------------------------

def parse_mix(s):
    out = []
    for part in s.split(","):
        size, frac = part.split(":")
        out.append((int(size), float(frac)))
    if abs(sum(f for _, f in out) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError("--mix fractions must add up to 1 (got %s)" % s)
    return out


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)     # `capacity.py | head` ends quietly
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=RESULTS, help="result folder (default loadtest/results)")
    ap.add_argument("--conns", type=int, default=DEFAULTS["conns"])
    ap.add_argument("--mix", type=parse_mix, default=DEFAULTS["mix"],
                    help="room size:fraction of connections, e.g. 2:0.2,100:0.6,1000:0.2")
    ap.add_argument("--msgs-per-min", type=float, default=DEFAULTS["msgs_per_min"],
                    help="messages each connection sends per minute (the 'custom' scenario)")
    ap.add_argument("--heartbeat-s", type=float, default=DEFAULTS["hb_s"])
    ap.add_argument("--connects-per-s", type=float, default=DEFAULTS["connects_per_s"])
    ap.add_argument("--util", type=float, default=DEFAULTS["util"], help="target utilisation (0.6)")
    ap.add_argument("--fd-limit", type=int, default=None,
                    help="fd limit per process (default: this machine's hard limit)")
    ap.add_argument("--host-cores", type=int, default=DEFAULTS["host_cores"])
    ap.add_argument("--host-mem-gib", type=float, default=DEFAULTS["host_mem_gib"])
    ap.add_argument("--redis", choices=("single", "cluster"), default=DEFAULTS["redis"])
    ap.add_argument("--redis-mem-gib", type=float, default=DEFAULTS["redis_mem_gib"],
                    help="memory per Redis shard (id keys)")
    ap.add_argument("--id-ttl-s", type=int, default=None, help="default: chatd's (read from core/)")
    ap.add_argument("--recent-max", type=int, default=None, help="default: chatd's (read from core/)")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--tls-front", action="store_true", help="count an nginx TLS front's CPU (estimate)")
    ap.add_argument("--pessimistic", action="store_true", help="custom scenario with the highest unit costs")
    ap.add_argument("--markdown", metavar="FILE", help="write the model as Markdown")
    ap.add_argument("--update-doc", metavar="FILE", help="replace the generated part of FILE")
    ap.add_argument("--check-doc", metavar="FILE", help="exit 1 if FILE's generated part is not today's output")
    ap.add_argument("--measure", metavar="LIST",
                    help="presence,store,fanout,sockmem,redismem: run and write loadtest/results/capacity_*.json")
    ap.add_argument("--port-base", type=int, default=29400)
    ap.add_argument("--seconds", type=float, default=30.0, help="--measure: seconds per benchmark")
    ap.add_argument("--store-rows", type=int, default=200000)
    ap.add_argument("--sock-pairs", type=int, default=4000)
    ap.add_argument("--bench-presence", default=os.path.join(REPO, "build", "bench_presence"))
    ap.add_argument("--bench-store", default=os.path.join(REPO, "build", "bench_store"))
    a = ap.parse_args()

    if a.measure:
        run_measure(a)
        return 0

    try:
        U = read_units(a.results)
    except KeyError as e:
        print("capacity.py: a result file in %s lacks the field %s (its format changed?)" % (a.results, e),
              file=sys.stderr)
        return 2
    except Missing as e:
        print("capacity.py: result file %s is missing from %s" % (e, a.results), file=sys.stderr)
        if str(e).startswith("capacity_"):
            print("  run: /usr/bin/python3 loadtest/capacity.py --measure %s" % str(e)[9:-5], file=sys.stderr)
        return 2
    fd = a.fd_limit or resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    cd = chatd_defaults()
    base = dict(DEFAULTS, conns=a.conns, mix=a.mix, msgs_per_min=a.msgs_per_min, hb_s=a.heartbeat_s,
                connects_per_s=a.connects_per_s, util=a.util, fd_limit=fd, host_cores=a.host_cores,
                host_mem_gib=a.host_mem_gib, redis=a.redis, redis_mem_gib=a.redis_mem_gib,
                id_ttl_s=a.id_ttl_s or cd["id_ttl_s"][0], recent_max=a.recent_max or cd["recent_max"][0],
                batch_max=cd["batch_max"][0],
                settings_src="id keys: %s; recent buffer: %s" % (cd["id_ttl_s"][1], cd["recent_max"][1]),
                postgres=not a.no_postgres, tls_front=a.tls_front)
    desc = git_describe()
    if a.update_doc or a.check_doc:
        path = a.update_doc or a.check_doc
        doc = open(path).read()
        if BEGIN not in doc or END not in doc:
            print("%s has no generated section (%s ... %s)" % (path, BEGIN, END), file=sys.stderr)
            return 2
        gen = render(U, dict(base, fd_limit=a.fd_limit or 20000), True, desc.replace(" (with uncommitted results)",
                                                                                     ""))
        new = doc[:doc.index(BEGIN) + len(BEGIN)] + "\n" + gen + doc[doc.index(END):]
        if a.check_doc:
            strip = lambda s: re.sub(r"from the result files of commit [^.]*\.", "", s)
            if strip(new) != strip(doc):
                print("%s: the generated tables differ from capacity.py's output; run --update-doc" % path,
                      file=sys.stderr)
                return 1
            print("%s: up to date" % path)
            return 0
        open(path, "w").write(new)
        print("updated", path)
        return 0
    text = render(U, base, bool(a.markdown), desc)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text)
        print("wrote", a.markdown)
    else:
        print(text)
        custom = dict(base, name="custom", note="")
        if a.conns != DEFAULTS["conns"] or a.mix != DEFAULTS["mix"] or a.msgs_per_min != DEFAULTS["msgs_per_min"] \
                or a.pessimistic:
            print("\n== Your parameters (%s)\n" % ("pessimistic" if a.pessimistic else "central"))
            print(table_text(SC_HEAD, scenario_rows(U, [custom], a.pessimistic)))
            print()
            print(table_text(BD_HEAD, breakdown_rows(U, [custom], a.pessimistic)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
