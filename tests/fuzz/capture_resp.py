#!/usr/bin/python3
"""Regenerates tests/fuzz/corpus/resp/: the raw RESP bytes a real Redis
answers to every command and Lua script the bus and presence send, so that
fuzz_resp starts from genuine replies.

The scripts are read from the C sources (core/bus_script.c,
core/presence_redis.c), so the seeds follow the code. A redis-server is
started on a free port (or CHATD_TEST_REDIS_URL is used, database 15 is
flushed!), commands go over a plain socket and each reply is stored byte for
byte.
    /usr/bin/python3 tests/fuzz/capture_resp.py [outdir]
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def c_strings(path):
    """name -> value of every `const char NAME[] = "..." "...";` and of
    #define NAME "..." \\ macros (used inside the former) in a C file."""
    src = open(os.path.join(ROOT, path)).read()
    lit = r'"(?:[^"\\]|\\.)*"'

    def unquote(chunk, macros):
        out = []
        for tok in re.findall(lit + r"|[A-Z_][A-Z0-9_]*", chunk):
            if tok.startswith('"'):
                out.append(tok[1:-1].encode().decode("unicode_escape"))
            elif tok in macros:
                out.append(macros[tok])
        return "".join(out)

    macros = {}
    for m in re.finditer(r"#define ([A-Z_][A-Z0-9_]*) \\\n((?:.*\\\n)*.*\n)", src):
        macros[m.group(1)] = unquote(m.group(2), macros)
    found = dict(macros)
    for m in re.finditer(r"const char ([A-Z_][A-Z0-9_]*)\[\] =\s*(.*?);\n", src, re.S):
        found[m.group(1)] = unquote(m.group(2), macros)
    return found


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def send(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)

    def _need(self, n):
        while len(self.buf) < n:
            d = self.s.recv(65536)
            if not d:
                raise EOFError
            self.buf += d

    def _line(self, pos):
        while True:
            i = self.buf.find(b"\r\n", pos)
            if i >= 0:
                return i
            self._need(len(self.buf) + 1)

    def _one(self, pos):
        """end offset of the reply starting at pos"""
        self._need(pos + 1)
        t = self.buf[pos:pos + 1]
        e = self._line(pos)
        if t in (b"+", b"-", b":"):
            return e + 2
        n = int(self.buf[pos + 1:e])
        if t == b"$":
            if n < 0:
                return e + 2
            self._need(e + 2 + n + 2)
            return e + 2 + n + 2
        p = e + 2
        for _ in range(max(n, 0)):
            p = self._one(p)
        return p

    def reply(self):
        end = self._one(0)
        raw, self.buf = self.buf[:end], self.buf[end:]
        return raw

    def call(self, *args):
        self.send(*args)
        return self.reply()


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests/fuzz/corpus/resp")
    os.makedirs(out, exist_ok=True)
    bus = c_strings("core/bus_script.c")
    pres = c_strings("core/presence_redis.c")
    for need, d in (("BUS_PUBLISH_LUA", bus), ("BUS_HEAD_LUA", bus), ("BUS_MARK_LUA", bus),
                    ("BUS_SWEEP_LUA", bus), ("APPLY_LUA", pres), ("SWEEP_LUA", pres)):
        if need not in d:
            sys.exit(f"capture_resp: {need} not found in the sources")

    proc, tmp = None, None
    url = os.environ.get("CHATD_TEST_REDIS_URL")
    if url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    else:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        tmp = tempfile.mkdtemp(prefix="chatd-capture-")
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", tmp],
                                stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
    saved = []

    def keep(name, raw):
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(raw)
        saved.append(name)

    try:
        c = Conn(port)
        c.call("SELECT", 15)
        c.call("FLUSHDB")
        r = "lobby"
        K = lambda s: f"chat:{{{r}}}:{s}"
        keep("ping", c.call("PING"))
        keep("get_seq_nil", c.call("GET", K("seq")))
        sha = c.call("SCRIPT", "LOAD", bus["BUS_PUBLISH_LUA"])
        keep("script_load_sha", sha)
        keep("noscript", c.call("EVALSHA", "0" * 40, 0))
        tail = '"id":"c1","user":"u","name":"U","body":"hi","ts":1700000000000}'
        # publish: KEYS seq, recent, epoch [, unstored, index] [, id];
        # ARGV tail, recent_max, ttl, channel, floor, track, room, has_id, seed mode, seed, epoch
        pub = lambda *a: c.call("EVAL", bus["BUS_PUBLISH_LUA"], *a)
        base = (K("seq"), K("recent"), K("epoch"))
        keep("publish_needs_seed", pub(3, *base, tail, 1000, 86400, K("msg"), 0, 0, r, 0, "S", 0, ""))
        keep("publish_seeded", pub(3, *base, tail, 1000, 86400, K("msg"), 0, 0, r, 0, "Y", 7, "ep-1"))
        keep("publish_first", pub(3, *base, tail, 1000, 86400, K("msg"), 0, 0, r, 0, "N", 0, "ep-2"))
        keep("publish_id", pub(4, *base, K("id:c1"), tail, 1000, 86400, K("msg"), 0, 0, r, 1, "N", 0, "e"))
        keep("publish_dup", pub(4, *base, K("id:c1"), tail, 1000, 86400, K("msg"), 0, 0, r, 1, "N", 0, "e"))
        keep("publish_floor", pub(3, *base, tail, 1000, 86400, K("msg"), 40, 0, r, 0, "N", 0, "e"))
        keep("publish_track", pub(5, *base, K("unstored"), "chat:unstored",
                                  tail.replace("hi", "h\\u00e9"), 1000, 86400, K("msg"), 0, 1, r, 0,
                                  "N", 0, "e"))
        keep("get_seq", c.call("GET", K("seq")))
        # head: KEYS seq, epoch; ARGV floor, mode, seed, epoch
        head = lambda *a: c.call("EVAL", bus["BUS_HEAD_LUA"], 2, *a)
        keep("head_script", head(K("seq"), K("epoch"), 50, "N", 0, "e"))
        keep("head_needs_seed", head("chat:{new}:seq", "chat:{new}:epoch", 0, "S", 0, ""))
        keep("head_peek_missing", head("chat:{new}:seq", "chat:{new}:epoch", 0, "P", 0, ""))
        keep("range_replay", c.call("ZRANGEBYSCORE", K("recent"), "(40", "+inf", "LIMIT", 0, 1001))
        keep("range_fill", c.call("ZRANGEBYSCORE", K("recent"), 1, 42))
        keep("range_empty", c.call("ZRANGEBYSCORE", K("recent"), 1000, 2000))
        keep("wrongtype", c.call("HGETALL", K("seq")))
        keep("mark", c.call("EVAL", bus["BUS_MARK_LUA"], 2, K("unstored"), "chat:unstored", r, 42))
        # an unstored seq older than the grace, one whose entry left the buffer
        c.call("ZADD", K("unstored"), 1, 41, 1, 43)
        c.call("ZADD", "chat:unstored", 1, r)
        # sweep: KEYS lock; ARGV token, grace, lock ms, max rooms, max seqs, indexes
        keep("sweep_round", c.call("EVAL", bus["BUS_SWEEP_LUA"], 1, "chat:backfill:lock",
                                   "node-a", 3000, 1000, 50, 200, "chat:unstored"))
        keep("sweep_locked", c.call("EVAL", bus["BUS_SWEEP_LUA"], 1, "chat:backfill:lock",
                                    "node-b", 3000, 1000, 50, 200, "chat:unstored"))
        # settle: ARGV cut, then room, index, n stored, stored..., m missing, missing...
        keep("settle", c.call("EVAL", bus["BUS_SETTLE_LUA"], 0, 10, r, "chat:unstored",
                              0, 2, 41, 43))
        # presence: APPLY per room (KEYS index, conns, users, names; ARGV ttl,
        # room, then op, member, user, name groups); SWEEP under a round lock
        # (KEYS lock; ARGV token, lock ms, max rooms, max entries, indexes)
        idx = "chat:presence:rooms"
        P = lambda room, s: f"chat:{{{room}}}:presence:{s}"
        ap = lambda room, *a: c.call("EVAL", pres["APPLY_LUA"], 4, idx, P(room, "conns"),
                                     P(room, "users"), P(room, "names"), 30000, room, *a)
        keep("presence_join", ap(r, "u", "n1|1|alice", "alice", "Alice", "u", "n1|2|bob", "bob", "Bob"))
        keep("presence_refresh", ap(r, "u", "n1|1|alice", "alice", "Alice"))
        keep("presence_leave", ap(r, "r", "n1|2|bob", "bob", "Bob"))
        c.call("SET", P("weird", "conns"), "x")
        keep("presence_bad", ap("weird", "u", "n1|3|carol", "carol", "Carol"))
        keep("presence_list", c.call("HGETALL", P(r, "names")))
        keep("presence_list_empty", c.call("HGETALL", P("nobody", "names")))
        c.call("ZADD", P(r, "conns"), 1, "n9|9|ghost")
        c.call("HINCRBY", P(r, "users"), "ghost", 1)
        c.call("HSET", P(r, "names"), "ghost", "Ghost")
        c.call("ZADD", idx, 1, r)
        sw = lambda token: c.call("EVAL", pres["SWEEP_LUA"], 1, "chat:presence:sweeplock", token,
                                  1000, 256, 4096, idx)
        keep("presence_sweep", sw("node-a"))
        keep("presence_sweep_other_node", sw("node-b"))
        c.call("DEL", "chat:presence:sweeplock")
        keep("presence_sweep_idle", sw("node-a"))
        c.call("SET", idx, "x")
        keep("presence_index_error", ap(r, "u", "n1|1|alice", "alice", "Alice"))
        # pub/sub pushes on a second connection
        s = Conn(port)
        s.send("SUBSCRIBE", K("msg"), K("typing"), K("presence"))
        keep("subscribe", s.reply() + s.reply() + s.reply())
        c.call("PUBLISH", K("msg"), "44\n" + tail)
        keep("push_message", s.reply())
        c.call("PUBLISH", K("typing"), 'alice\n{"type":"typing","room":"lobby","user":"alice"}')
        keep("push_typing", s.reply())
        s.send("UNSUBSCRIBE", K("msg"), K("typing"), K("presence"))
        keep("unsubscribe", s.reply() + s.reply() + s.reply())
        keep("moved", b"-MOVED 3999 127.0.0.1:6381\r\n")  # what a Cluster node answers (issue 11 #9)
        c.call("FLUSHDB")
    finally:
        if proc:
            proc.kill()
            proc.wait()
        if tmp:
            subprocess.run(["rm", "-rf", tmp])
    print(f"capture_resp: {len(saved)} replies in {out}")


if __name__ == "__main__":
    main()
