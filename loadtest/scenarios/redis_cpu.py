#!/usr/bin/env python3
"""redis_cpu: the CPU of several Redis servers over a chatload run, for
loadtest/scenarios/cluster.sh. Reads `INFO cpu` (used_cpu_sys +
used_cpu_user) on one open connection per server.

  redis_cpu.py sample OUT PORT...
      appends "epoch port cpu_s" lines to OUT every 0.2 s until SIGTERM
  redis_cpu.py report SAMPLES TIMELINE CHATLOAD_JSON T_START IDLE_FROM IDLE_TO ROOMS PORT:ROLE...
      JSON list on stdout, one line per server on stderr: the CPU each used in
      chatload's steady phase (the seconds of TIMELINE with sent/s > 0, T_START
      = epoch when chatload started), minus its idle rate (IDLE_FROM..IDLE_TO:
      chatd connected, no client) over the same time, divided by the acked
      messages of CHATLOAD_JSON: us_per_msg. ROOMS = PREFIX:R:P (chatload's
      --room-prefix, --rooms, --publishers: publisher i sends into room
      PREFIX<i % R>, all at the same rate): a master's share of the messages is
      that of the publishers whose room hashes to one of its slots (CLUSTER
      SHARDS); us_per_own_msg = its CPU / the messages of its shard.
"""
import json
import os
import signal
import socket
import sys
import time


def cpu_of(f, sock):
    sock.sendall(b"*2\r\n$4\r\nINFO\r\n$3\r\ncpu\r\n")
    hdr = f.readline()
    if not hdr.startswith(b"$"):
        raise RuntimeError(f"INFO cpu answered {hdr!r}")
    body = f.read(int(hdr[1:]) + 2).decode()
    vals = dict(ln.split(":", 1) for ln in body.splitlines() if ":" in ln)
    return float(vals["used_cpu_sys"]) + float(vals["used_cpu_user"])


def sample(out, ports):
    conns = []
    for p in ports:
        s = socket.create_connection(("127.0.0.1", int(p)), timeout=2)
        conns.append((int(p), s, s.makefile("rb")))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(out, "a") as o:
        while not stop:
            t = time.time()
            for p, s, f in conns:
                try:
                    o.write(f"{t:.3f} {p} {cpu_of(f, s):.6f}\n")
                except (OSError, RuntimeError, ValueError, KeyError):
                    pass
            o.flush()
            time.sleep(0.2)


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tests", "cluster"))
import rig  # noqa: E402  (CRC16 slots, CLUSTER SHARDS)


def shard_share(port, role, rooms):
    """Fraction of the published messages whose room lives on this master."""
    if role == "single":
        return 1.0
    if role != "master":
        return None
    prefix, nrooms, npubs = rooms.rsplit(":", 2)
    nrooms, npubs = int(nrooms), int(npubs)
    c = rig.Cluster("/nonexistent")
    mine = None
    for sh in c.shards(via=port):
        if sh["master"] == port:
            mine = sh["slots"]
    if mine is None:
        return None
    own = sum(1 for i in range(npubs)
              if any(lo <= rig.room_slot(f"{prefix}{i % nrooms}") <= hi for lo, hi in mine))
    return own / npubs


def interp(series, t):
    """CPU at epoch t, linear between the samples around it."""
    if not series:
        raise SystemExit("no samples")
    if t <= series[0][0]:
        return series[0][1]
    for (t0, c0), (t1, c1) in zip(series, series[1:]):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
    return series[-1][1]


def report(samples, timeline, cjson, t_start, idle_from, idle_to, rooms, specs):
    series = {}
    with open(samples) as f:
        for ln in f:
            t, p, c = ln.split()
            series.setdefault(int(p), []).append((float(t), float(c)))
    secs = []
    with open(timeline) as f:
        for ln in f:
            if ln.startswith("#") or not ln.strip():
                continue
            cols = ln.split()
            if int(cols[5]) > 0:
                secs.append(int(cols[0]))
    if not secs:
        raise SystemExit(f"{timeline}: no second with messages sent")
    with open(cjson) as f:
        acks = json.load(f)["messages"]["acks"]
    w0, w1 = t_start + secs[0], t_start + secs[-1] + 1
    out = []
    for spec in specs:
        port, _, role = spec.partition(":")
        s = sorted(series.get(int(port), []))
        idle_rate = (interp(s, idle_to) - interp(s, idle_from)) / (idle_to - idle_from)
        used = interp(s, w1) - interp(s, w0)
        load = used - idle_rate * (w1 - w0)
        share = shard_share(int(port), role, rooms)
        own = acks * share if share is not None else None
        r = {"port": int(port), "role": role or "?", "acks": acks,
             "steady_s": round(w1 - w0, 2), "cpu_s": round(used, 4),
             "idle_cpu_per_s": round(idle_rate, 5), "load_cpu_s": round(load, 4),
             "us_per_msg": round(load / acks * 1e6, 3) if acks else None,
             "share": round(share, 4) if share is not None else None,
             "us_per_own_msg": round(load / own * 1e6, 3) if own else None}
        out.append(r)
        tail = (f"; {share * 100:.0f}% of the messages are its rooms' -> "
                f"{r['us_per_own_msg']} us per message of its own"
                if share is not None and role != "single" else "")
        print(f"redis {r['port']} {r['role']}: {used * 1e3:.0f} ms CPU in the "
              f"{w1 - w0:.0f} s steady phase (idle {idle_rate * 1e3:.1f} ms/s) -> "
              f"{r['us_per_msg']} us per published message ({acks} acked){tail}",
              file=sys.stderr)
    json.dump(out, sys.stdout, indent=1)
    print()


def main(argv):
    if len(argv) >= 3 and argv[0] == "sample":
        sample(argv[1], argv[2:])
    elif len(argv) >= 9 and argv[0] == "report":
        report(argv[1], argv[2], argv[3], float(argv[4]), float(argv[5]), float(argv[6]),
               argv[7], argv[8:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
