#!/usr/bin/python3
"""Regenerates the seed-* files of tests/fuzz/corpus/resp/: the raw RESP bytes
a real Redis answers to every command and Lua script the bus and presence
send, so that fuzz_resp starts from genuine replies.

The scripts are read from the C sources (core/bus_script.c,
core/presence_redis.c) and called with the keys and arguments their header
comments declare (the contract: bus_script.c's header for the bus scripts),
the seed modes followed by the run_id of the Redis process (INFO server) as
redis_client writes it. A redis-server of its own is started on a free port
(or, when capturing, CHATD_TEST_REDIS_URL is used: database 15 is flushed!);
commands go over a plain socket and each reply is kept byte for byte.

Every call states what it must answer: a Redis error where none was expected
(or none where one was), or an answer of another shape, stops the tool with
exit status 1 and a message naming the call, and nothing is written: a
script change that breaks a call is noticed, never recorded as a seed.
    /usr/bin/python3 tests/fuzz/capture_resp.py [outdir]
        writes outdir/seed-<call> (default tests/fuzz/corpus/resp; there the
        seed-* files it no longer writes are removed; the other files of the
        corpus, regress-* and merged inputs such as head-epoch-nul, stay)
    /usr/bin/python3 tests/fuzz/capture_resp.py --check
        makes every call and checks every answer, writes nothing (the ctest
        fuzz_capture_resp); exit status 77 when there is no redis-server
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "tests/fuzz/corpus/resp")


class Failed(Exception):
    pass


def c_strings(path):
    """name -> value of every `const char NAME[] = "..." "...";` of a C file,
    as the compiler sees it: the file goes through the C preprocessor
    (cc -E), so every macro the scripts are built from (STR_LUA,
    LUA_SEED_HEAD, ...) is expanded by the one preprocessor there is, then
    the adjacent literals are joined."""
    pre = subprocess.run(["cc", "-E", "-P", "-I", os.path.join(ROOT, "core"),
                          os.path.join(ROOT, path)], capture_output=True, text=True)
    if pre.returncode != 0:
        sys.exit(f"capture_resp: cc -E {path} failed:\n{pre.stderr}")
    lit = r'"(?:[^"\\]|\\.)*"'
    found = {}
    for m in re.finditer(r"const char ([A-Z_][A-Z0-9_]*)\[\] =\s*((?:" + lit + r"\s*)+);",
                         pre.stdout):
        found[m.group(1)] = "".join(t[1:-1].encode().decode("unicode_escape")
                                    for t in re.findall(lit, m.group(2)))
    return found


ANY = object()   # a call whose answer is not checked (beyond "no error")


class Err(str):
    """a RESP error reply, decoded"""


def decode(raw):
    """the Python value of one RESP2 reply: int, bytes (bulk), str (status),
    Err, None (nil) or a list"""
    def one(p):
        e = raw.index(b"\r\n", p)
        t, body = raw[p:p + 1], raw[p + 1:e]
        if t == b"+":
            return body.decode(), e + 2
        if t == b"-":
            return Err(body.decode()), e + 2
        if t == b":":
            return int(body), e + 2
        n = int(body)
        if t == b"$":
            if n < 0:
                return None, e + 2
            return raw[e + 2:e + 2 + n], e + 2 + n + 2
        if n < 0:
            return None, e + 2
        out, p = [], e + 2
        for _ in range(n):
            v, p = one(p)
            out.append(v)
        return out, p
    v, end = one(0)
    if end != len(raw):
        raise ValueError("trailing bytes")
    return v


def norm(v):
    """bytes -> str inside a decoded reply, to compare with literals"""
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
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
                raise EOFError("Redis closed the connection")
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


class Capture:
    """every call goes through check(): a reply is compared with what the
    call must answer before it may become a seed"""

    def __init__(self, scripts):
        self.seeds = {}       # name -> raw reply
        self.calls = 0
        self.scripts = scripts   # sha -> script name (for messages)

    def describe(self, args):
        out = []
        for a in args[:12]:
            a = a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)
            a = self.scripts.get(a, a)
            out.append(a if len(a) <= 48 else a[:45] + "...")
        return " ".join(out) + (" ..." if len(args) > 12 else "")

    def check(self, name, args, raw, expect=ANY, error=None, save=True):
        """expect: the decoded answer (bytes as str; None: nil) or a predicate on it;
        error: a substring of the Redis error the call must answer"""
        self.calls += 1
        what = f"call {name} ({self.describe(args)})"
        try:
            v = decode(raw)
        except (ValueError, IndexError) as e:
            raise Failed(f"{what}: unparsable reply {raw[:200]!r}: {e}")
        if isinstance(v, Err):
            if error is None:
                raise Failed(f"{what}: Redis answered an error: {v}")
            if error not in v:
                raise Failed(f"{what}: Redis answered the error {v!r}, expected one with {error!r}")
        elif error is not None:
            raise Failed(f"{what}: expected the Redis error {error!r}, got {norm(v)!r}")
        if expect is not ANY:
            ok = expect(norm(v)) if callable(expect) else norm(v) == expect
            if not ok:
                want = "" if callable(expect) else f", expected {expect!r}"
                raise Failed(f"{what}: unexpected answer {norm(v)!r}{want}")
        if save:
            if name in self.seeds:
                raise Failed(f"{what}: a second seed named {name}")
            self.seeds[name] = raw
        return norm(v)


def start_redis():
    """(proc, tmpdir, port) of a redis-server of our own on a free port"""
    exe = shutil.which("redis-server")
    if not exe:
        return None
    for _ in range(5):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        tmp = tempfile.mkdtemp(prefix="chatd-capture-")
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp, "--daemonize", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, tmp, port
            except OSError:
                time.sleep(0.02)
        proc.kill()   # the port was taken meanwhile, or it did not start: try another
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    raise Failed("redis-server did not start (5 tries)")


def capture(port, bus, pres):
    c = Conn(port)
    shas = {}
    cap = Capture(shas)

    def do(*args):
        """a setup command: any error fails the capture"""
        return cap.check(f"setup {args[0]}", args, c.call(*args), save=False)

    def run(name, *args, **kw):
        return cap.check(name, args, c.call(*args), **kw)

    do("SELECT", 15)
    do("FLUSHDB")
    info = do("INFO", "server")
    m = re.search(r"^run_id:([0-9a-f]{40})\r?$", info, re.M)
    if not m:
        raise Failed("INFO server: no run_id")
    rid = m.group(1)
    other = "f" * 40 if rid != "f" * 40 else "e" * 40   # another run of "this" Redis
    placeholder = "-" * 40        # bus_seed_mode_arg's, when redis_client did not replace it

    sha = {}
    for s in ("BUS_PUBLISH_LUA", "BUS_HEAD_LUA", "BUS_MARK_LUA", "BUS_SWEEP_LUA", "BUS_SETTLE_LUA",
              "BUS_FORGET_LUA", "BUS_RESTORE_LUA", "BUS_UNDO_LUA"):
        sha[s] = run("script_load_sha" if s == "BUS_PUBLISH_LUA" else f"load {s}",
                     "SCRIPT", "LOAD", bus[s], expect=lambda v: re.fullmatch(r"[0-9a-f]{40}", v),
                     save=s == "BUS_PUBLISH_LUA")
        shas[sha[s]] = s
    for s in ("APPLY_LUA", "SWEEP_LUA"):
        sha[s] = run(f"load {s}", "SCRIPT", "LOAD", pres[s], save=False)
        shas[sha[s]] = "presence " + s

    r = "lobby"
    K = lambda room, s: f"chat:{{{room}}}:{s}"
    run("ping", "PING", expect="PONG")
    run("get_seq_nil", "GET", K(r, "seq"), expect=None)
    run("noscript", "EVALSHA", "0" * 40, 0, error="NOSCRIPT")

    def tail(body="hi", cid="c1"):
        return f'"id":"{cid}","user":"u","name":"U","body":"{body}","ts":1700000000000}}'

    # publish (bus_script.c): KEYS seq, recent, epoch, run [, unstored, index]
    # [, state (ARGV[13] is its index)] [, id]; ARGV tail, recent_max, ttl,
    # channel, floor, track, room, has_id, mode[+run_id], seed, epoch,
    # broadcast command [, the update's: state key index, op, reaction field,
    # count field, state seed mode, deleted, field pairs...]
    # an id key names its sender: "id:<bytes of user>:<user>:<id>" (bus_types.h
    # bus_id_part; two users may use the same id)
    def idk(cid, user="u"):
        return f"sid:{len(user.encode())}:{user}:{cid}"

    def pub(name, room, mode, tl=None, floor=0, track=0, cid=None, seed=0, epoch="",
            upd=None, cmd="publish", user="u", **kw):
        keys = [K(room, "seq"), K(room, "recent"), K(room, "epoch"), K(room, "run")]
        if track:
            keys += [K(room, "unstored"), "chat:unstored"]
        extra = []
        if upd:
            keys.append(K(room, f"t:{upd['target']}"))
            extra = [len(keys), upd["op"], upd.get("r", ""), upd.get("c", ""), upd["seed"],
                     upd.get("deleted", "0")] + upd.get("pairs", [])
        if cid:
            keys.append(K(room, idk(cid, user)))
        argv = [tl if tl is not None else tail(), 1000, 86400 if upd else 600, K(room, "msg"),
                floor, track, room, 1 if cid else 0, mode, seed, epoch, cmd] + extra
        return run(name, "EVALSHA", sha["BUS_PUBLISH_LUA"], len(keys), *keys, *argv, **kw)

    def published(v):
        return isinstance(v, list) and len(v) == 2 and v[0] >= 1 and v[1] == 0

    S, Y, N = "S" + rid, "Y" + rid, "N"

    # restore (bus_script.c): KEYS run key, id keys; ARGV the call's place
    # ('O' only, 'F' first of several, 'C' middle, 'L' last) + run_id, then
    # seq, ttl per id
    def restore(name, room, place, ids, **kw):
        keys = [K(room, "run")] + [K(room, idk(i)) for i, _, _ in ids]
        argv = [place + kw.pop("run", rid)]
        for _, s, ttl in ids:
            argv += [s, ttl]
        return run(name, "EVALSHA", sha["BUS_RESTORE_LUA"], len(keys), *keys, *argv, **kw)

    # a provider exists, the room is new: needs seed, nothing written
    pub("publish_needs_seed", r, S, expect=[0, 2])
    run("nothing written", "EXISTS", K(r, "seq"), K(r, "epoch"), K(r, "run"), expect=0, save=False)
    pub("publish_no_run_id", r, "S" + placeholder, error="no run id")
    # the seed's client ids go back first; a 'C' call that finds no mark of
    # this run fails (Redis restarted between the calls)
    restore("restore_other_run", r, "C", [("c0", 5, 600)], error="restore met another run")
    restore("restore_no_run_id", r, "F", [("c0", 5, 600)], run=placeholder, error="no run id")
    restore("restore_first", r, "F", [("c0", 5, 600), ("c00", 6, 600)], expect=0)
    run("run key marked partly", "GET", K(r, "run"), expect="p" + rid, save=False)
    # no 'Y' passes while a restore is under way (p<run>)
    pub("publish_seed_partly_restored", r, Y, seed=7, epoch="ep-1", expect=[0, 2], save=False)
    restore("restore_next", r, "C", [("c01", 7, 300)], expect=0)
    restore("restore_last", r, "L", [("c02", 8, 300)], expect=0)
    run("run key marked", "GET", K(r, "run"), expect="i" + rid, save=False)
    # 'S' treats the mark like any other run: needs seed; 'Y' seeds
    pub("publish_needs_seed_marked", r, S, expect=[0, 2], save=False)
    s_seeded = pub("publish_seeded", r, Y, seed=7, epoch="ep-1", expect=[8, 0])[0]
    run("run key seeded", "GET", K(r, "run"), expect=rid, save=False)
    pub("publish_restored_dup", r, S, cid="c0", expect=[5, 1])
    s_first = pub("publish_asked", r, S, expect=published)[0]
    pub("publish_first", r, N, epoch="ep-2", expect=[s_first + 1, 0])
    s_id = pub("publish_id", r, N, cid="c1", epoch="e", expect=published)[0]
    pub("publish_dup", r, N, cid="c1", epoch="e", expect=[s_id, 1])
    # another sender's c1 is another message (its own key, a new seq)
    pub("publish_other_sender", r, N, cid="c1", user="v", epoch="e",
        expect=lambda v: published(v) and v[0] == s_id + 1, save=False)
    s_floor = pub("publish_floor", r, S, floor=40, expect=[41, 0])[0]
    s_track = pub("publish_track", r, S, tl=tail("h\\u00e9"), track=int(time.time() * 1000),
                  expect=[s_floor + 1, 0])[0]
    # the sharded broadcast of a Cluster (ARGV[12]; Redis 7 has SPUBLISH alone too)
    s_last = pub("publish_spublish", r, S, cmd="spublish", expect=[s_track + 1, 0], save=False)[0]
    run("get_seq", "GET", K(r, "seq"), expect=str(s_last))
    # a 'Y' that finds another run's mark (its restore reached an earlier run
    # of this Redis) or another run's head: needs seed, nothing written
    for i, mark in enumerate(("i" + other, other)):
        room = f"marked{i}"
        do("SET", K(room, "run"), mark)
        pub("publish_seed_other_mark" if i == 0 else "publish_seed_other_run", room, Y, seed=3,
            epoch="ep-x", expect=[0, 2], save=i == 0)
        run("not seeded", "EXISTS", K(room, "seq"), K(room, "epoch"), expect=0, save=False)
    # 'E' (a seed with no id to write back, no restore call): seeds over
    # another run's mark or head, and the run key becomes this run
    E = "E" + rid
    for i, mark in enumerate(("p" + rid, other)):
        room = f"empty{i}"
        do("SET", K(room, "run"), mark)
        pub("publish_seeded_empty" if i == 0 else "publish_seeded_empty_other", room, E, seed=3,
            epoch="ep-e", expect=[4, 0], save=i == 0)
        run("run key seeded by 'E'", "GET", K(room, "run"), expect=rid, save=False)
    # without a provider ('N'): a new room starts at 0 with the given epoch
    pub("publish_new_room", "fresh", N, epoch="ep-fresh", expect=[1, 0], save=False)

    # message updates (ARGV[13..]) on the target s_seeded
    t = s_seeded
    utail = lambda kind, more: (f'"kind":"{kind}","id":"u{kind}","target":{t},"user":"alice",'
                                f'"name":"Alice","ts":1700000000001{more}')
    edit, dele = utail("edit", ',"body":"hey"}'), utail("delete", "}")
    react = lambda on: utail("react", f',"emoji":"\U0001F44D","on":{on},"count":')
    thumbs = {"r": "r\U0001F44D\nalice", "c": "c\U0001F44D"}
    pub("update_needs_state", r, S, tl=edit, upd={"target": t, "op": "e", "seed": "S"},
        expect=[0, 3])
    pub("update_edit_seeded", r, S, tl=edit, expect=published,
        upd={"target": t, "op": "e", "seed": "Y", "pairs": ["r\U0001F44D\nbob", "c\U0001F44D"]})
    pub("update_react", r, S, tl=react("true"), upd=dict(thumbs, target=t, op="+", seed="S"),
        expect=lambda v: len(v) == 3 and v[0] >= 1 and v[1:] == [0, 2])
    pub("update_react_unchanged", r, S, tl=react("true"), upd=dict(thumbs, target=t, op="+", seed="S"),
        expect=[0, 5])
    pub("update_unreact", r, S, tl=react("false"), upd=dict(thumbs, target=t, op="-", seed="S"),
        expect=lambda v: len(v) == 3 and v[0] >= 1 and v[1:] == [0, 1])
    pub("update_delete", r, S, tl=dele, upd={"target": t, "op": "d", "seed": "S"}, expect=published)
    pub("update_deleted", r, S, tl=edit, upd={"target": t, "op": "e", "seed": "S"}, expect=[0, 4])
    # a state another run seeded is seeded again
    do("HSET", K(r, "t:2"), "s", other)
    pub("update_other_run_state", r, S, tl=edit, upd={"target": 2, "op": "e", "seed": "S"},
        expect=[0, 3], save=False)
    pub("update_seeded_deleted", r, S, tl=edit, expect=[0, 4], save=False,
        upd={"target": 2, "op": "e", "seed": "Y", "deleted": "1"})
    # without a provider a missing state starts empty
    pub("update_react_no_provider", "fresh", N, tl=react("true"), save=False,
        upd=dict(thumbs, target=1, op="+", seed="N"), expect=[2, 0, 1])

    # head (bus_script.c): KEYS seq, epoch, run; ARGV floor, mode[+run_id], seed, epoch
    def head(name, room, floor, mode, seed=0, epoch="", **kw):
        return run(name, "EVALSHA", sha["BUS_HEAD_LUA"], 3, K(room, "seq"), K(room, "epoch"),
                   K(room, "run"), floor, mode, seed, epoch, **kw)

    s_head = int(do("GET", K(r, "seq")))
    head("head_asked", r, 0, S, expect=[0, s_head, "ep-1", s_head])
    head("head_script", r, s_head + 8, N, epoch="e", expect=[0, s_head + 8, "ep-1", s_head])
    head("head_needs_seed", "new", 0, S, expect=[2])
    head("head_peek_missing", "new", 0, "P" + rid, expect=[3])
    head("head_peek_floor", "new", 5, "P" + rid, expect=[2], save=False)
    head("head_no_run_id", "new", 0, "P" + placeholder, error="no run id")
    do("SET", K("new", "run"), "i" + other)
    head("head_seed_other_mark", "new", 0, Y, seed=12, epoch="ep-new", expect=[2], save=False)
    restore("restore_no_ids", "new", "O", [], expect=0)
    run("run key marked by the only call", "GET", K("new", "run"), expect="i" + rid, save=False)
    head("head_seeded", "new", 0, Y, seed=12, epoch="ep-new", expect=[0, 12, "ep-new", 12])
    head("head_seeded_floor", "new", 20, S, expect=[0, 20, "ep-new", 12], save=False)
    do("SET", K("emptyh", "run"), other)
    head("head_seeded_empty", "emptyh", 0, E, seed=9, epoch="ep-e", expect=[0, 9, "ep-e", 9], save=False)

    run("range_replay", "ZRANGEBYSCORE", K(r, "recent"), f"({s_floor - 1}", "+inf", "LIMIT", 0, 1001,
        expect=lambda v: len(v) >= 2 and v[0].startswith(f"{s_floor}\n"))
    run("range_fill", "ZRANGEBYSCORE", K(r, "recent"), 1, s_first + 2,
        expect=lambda v: [e.split("\n")[0] for e in v] == [str(x) for x in range(8, s_first + 3)])
    run("range_empty", "ZRANGEBYSCORE", K(r, "recent"), 100000, 200000, expect=[])
    run("wrongtype", "HGETALL", K(r, "seq"), error="WRONGTYPE")

    # mark (KEYS unstored, index; ARGV room, seqs): the tracked seq was stored
    run("mark", "EVALSHA", sha["BUS_MARK_LUA"], 2, K(r, "unstored"), "chat:unstored", r, s_track,
        expect=0)
    # forget (KEYS id key; ARGV seq): only when the id still maps to that seq
    run("forget_other_seq", "EVALSHA", sha["BUS_FORGET_LUA"], 1, K(r, idk("c1")), s_id + 1, expect=0,
        save=False)
    run("not forgotten", "EXISTS", K(r, idk("c1")), expect=1, save=False)
    run("forget", "EVALSHA", sha["BUS_FORGET_LUA"], 1, K(r, idk("c1")), s_id, expect=0)
    run("forgotten", "EXISTS", K(r, idk("c1")), expect=0, save=False)

    # undo (KEYS state key; ARGV op, react field, count field): one update
    # history did not take comes off its target's state, the others stay
    st, rf, cf = K(r, "t:9"), "r\U0001F44D\nbob", "c\U0001F44D"
    do("HSET", st, "s", rid, rf, "1", "r\U0001F44D\ncarol", "1", cf, "2", "d", "1")

    def undo(name, op, expect, **kw):
        return run(name, "EVALSHA", sha["BUS_UNDO_LUA"], 1, st, op, rf, cf, expect=expect, **kw)
    undo("undo_react_on", "+", 1)
    run("undone on: count", "HGET", st, cf, expect="1", save=False)
    undo("undo_react_on_again", "+", 0, save=False)
    undo("undo_react_off", "-", 1, save=False)
    run("undone off: count", "HGET", st, cf, expect="2", save=False)
    undo("undo_delete", "d", 1, save=False)
    run("undone delete", "HEXISTS", st, "d", expect=0, save=False)
    run("the other reaction stays", "HEXISTS", st, "r\U0001F44D\ncarol", expect=1, save=False)
    run("undo_gone_state", "EVALSHA", sha["BUS_UNDO_LUA"], 1, K(r, "t:404"), "+", rf, cf, expect=0,
        save=False)
    run("a gone state stays gone", "EXISTS", K(r, "t:404"), expect=0, save=False)

    # the sweep (KEYS lock; ARGV token, grace, lock ms, max rooms, max seqs,
    # indexes): old unstored entries, one whose entry left the buffer, and
    # what can never be settled: an index member no room can have, members
    # that are no seq (leading zero, past 2^63-1, not digits), listed as
    # (room, '') and dropped
    gone = s_last + 500
    do("ZADD", K(r, "unstored"), 1, s_first, 1, s_id, 1, gone, 1, "007", 1, "9223372036854775808",
       1, "x")
    do("ZADD", "chat:unstored", 1, r, 1, "bad room")
    do("ZADD", K("bad room", "unstored"), 1, 5)
    members = sorted([str(s_first), str(s_id), str(gone), "007", "9223372036854775808", "x"])
    listed = ["bad room", ""]
    for s in members:
        listed += [r, s if re.fullmatch(r"[1-9]\d{0,18}", s) and int(s) < 2**63 else ""]
    sweep = lambda name, token, rooms, seqs, **kw: run(
        name, "EVALSHA", sha["BUS_SWEEP_LUA"], 1, "chat:backfill:lock", token, 3000, 1000, rooms,
        seqs, "chat:unstored", **kw)
    v = sweep("sweep_round", "node-a", 50, 200,
              expect=lambda v: v[:2] == [1, 0] and v[2] > 0 and v[3:] == listed)
    cut = v[2]
    sweep("sweep_locked", "node-b", 50, 200, expect=[0])
    run("malformed room dropped", "EXISTS", K("bad room", "unstored"), expect=0, save=False)
    run("malformed seqs dropped", "ZRANGE", K(r, "unstored"), 0, -1,
        expect=sorted([str(s_first), str(s_id), str(gone)]), save=False)
    # settle (ARGV cut, then room, index, n stored, stored..., m missing,
    # missing...): s_first stored; s_id offered with its entry (leased), gone
    # lost ('')
    run("settle", "EVALSHA", sha["BUS_SETTLE_LUA"], 0, cut, r, "chat:unstored", 1, s_first, 2, s_id,
        gone, expect=lambda v: (len(v) == 6 and v[:2] == [r, str(s_id)] and
                                v[2].startswith(f"{s_id}\n") and v[3:] == [r, str(gone), ""]))
    # a round the limits cut short: more = 1 (rooms) + 2 (seqs per room)
    for room in ("other", "zeta"):
        do("ZADD", K(room, "unstored"), 1, 3, 1, 4)
        do("ZADD", "chat:unstored", 1, room)
    sweep("sweep_cut", "node-a", 1, 1, expect=lambda v: v[:2] == [1, 3] and v[3:] == ["other", "3"])

    # presence (core/presence_redis.c): APPLY per room (KEYS index, conns,
    # users, names; ARGV ttl, room, then op, member, user, name groups); SWEEP
    # under a round lock (KEYS lock; ARGV token, lock ms, max rooms, max
    # entries, indexes)
    idx = "chat:presence:rooms"
    P = lambda room, s: f"chat:{{{room}}}:presence:{s}"
    ap = lambda name, room, *a, **kw: run(name, "EVALSHA", sha["APPLY_LUA"], 4, idx, P(room, "conns"),
                                          P(room, "users"), P(room, "names"), 30000, room, *a, **kw)
    ap("presence_join", r, "u", "n1|1|alice", "alice", "Alice", "u", "n1|2|bob", "bob", "Bob",
       expect=[r, "join", "alice", "Alice", r, "join", "bob", "Bob"])
    ap("presence_refresh", r, "u", "n1|1|alice", "alice", "Alice", expect=[])
    ap("presence_leave", r, "r", "n1|2|bob", "bob", "Bob", expect=[r, "leave", "bob", "Bob"])
    do("SET", P("weird", "conns"), "x")
    ap("presence_bad", "weird", "u", "n1|3|carol", "carol", "Carol", expect=["weird", "bad", "", ""])
    run("presence_list", "HGETALL", P(r, "names"), expect=["alice", "Alice"])
    run("presence_list_empty", "HGETALL", P("nobody", "names"), expect=[])
    do("ZADD", P(r, "conns"), 1, "n9|9|ghost")
    do("HINCRBY", P(r, "users"), "ghost", 1)
    do("HSET", P(r, "names"), "ghost", "Ghost")
    do("ZADD", idx, 1, r)
    sw = lambda name, token, **kw: run(name, "EVALSHA", sha["SWEEP_LUA"], 1, "chat:presence:sweeplock",
                                       token, 1000, 256, 4096, idx, **kw)
    sw("presence_sweep", "node-a", expect=[2, r, "ghost", "Ghost"])
    sw("presence_sweep_other_node", "node-b", expect=[0])
    do("DEL", "chat:presence:sweeplock")
    sw("presence_sweep_idle", "node-a", expect=[2])
    do("SET", idx, "x")
    ap("presence_index_error", r, "u", "n1|1|alice", "alice", "Alice", error="presence index")

    # pub/sub pushes on a second connection (a seed of several replies:
    # each one checked)
    s = Conn(port)

    def replies(name, args, expects):
        raw = b""
        for i, e in enumerate(expects):
            one = s.reply()
            cap.check(f"{name} (reply {i + 1})", args, one, expect=e, save=False)
            raw += one
        cap.seeds[name] = raw

    chans = [K(r, "msg"), K(r, "typing"), K(r, "presence")]
    s.send("SUBSCRIBE", *chans)
    replies("subscribe", ("SUBSCRIBE", *chans), [["subscribe", ch, i + 1] for i, ch in enumerate(chans)])
    do("PUBLISH", K(r, "msg"), f"44\n{tail()}")
    replies("push_message", ("(push)",), [["message", K(r, "msg"), f"44\n{tail()}"]])
    # a node about to seed the room's head asks its holders (bus_redis_sub.c
    # bus_rsub_seed_ask): the reply counts them
    ask = "!seed 0123456789abcdef"
    do("PUBLISH", K(r, "msg"), ask)
    replies("push_seed_ask", ("(push)",), [["message", K(r, "msg"), ask]])
    typing = 'alice\n{"type":"typing","room":"lobby","user":"alice"}'
    do("PUBLISH", K(r, "typing"), typing)
    replies("push_typing", ("(push)",), [["message", K(r, "typing"), typing]])
    s.send("UNSUBSCRIBE", *chans)
    replies("unsubscribe", ("UNSUBSCRIBE", *chans),
            [["unsubscribe", ch, 2 - i] for i, ch in enumerate(chans)])
    # what a Cluster node answers (issue 11 #9), not from this Redis
    cap.seeds["moved"] = b"-MOVED 3999 127.0.0.1:6381\r\n"
    do("FLUSHDB")
    return cap


def main():
    args = sys.argv[1:]
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    out = None if check else (args[0] if args else DEFAULT_OUT)
    bus = c_strings("core/bus_script.c")
    pres = c_strings("core/presence_redis.c")
    for need, d in (("BUS_PUBLISH_LUA", bus), ("BUS_HEAD_LUA", bus), ("BUS_MARK_LUA", bus),
                    ("BUS_SWEEP_LUA", bus), ("BUS_SETTLE_LUA", bus), ("BUS_FORGET_LUA", bus),
                    ("BUS_RESTORE_LUA", bus), ("BUS_UNDO_LUA", bus), ("APPLY_LUA", pres),
                    ("SWEEP_LUA", pres)):
        if need not in d:
            sys.exit(f"capture_resp: {need} not found in the sources")

    proc, tmp = None, None
    url = None if check else os.environ.get("CHATD_TEST_REDIS_URL")
    try:
        if url:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
        else:
            started = start_redis()
            if not started:
                print("capture_resp: no redis-server: skipped", file=sys.stderr)
                sys.exit(77)
            proc, tmp, port = started
        cap = capture(port, bus, pres)
    except (Failed, OSError, EOFError) as e:
        print(f"capture_resp: FAILED: {e}", file=sys.stderr)
        print("capture_resp: nothing written (a script or its contract in core/bus_script.c "
              "changed? bring tests/fuzz/capture_resp.py up to date)", file=sys.stderr)
        sys.exit(1)
    finally:
        if proc:
            proc.kill()
            proc.wait()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if check:
        print(f"capture_resp: check: {cap.calls} calls answered as expected ({len(cap.seeds)} seeds)")
        return
    os.makedirs(out, exist_ok=True)
    if os.path.abspath(out) == DEFAULT_OUT:
        for f in os.listdir(out):
            if f.startswith("seed-") and f[5:] not in cap.seeds:
                os.remove(os.path.join(out, f))
    for name, raw in cap.seeds.items():
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(raw)
    print(f"capture_resp: {cap.calls} calls answered as expected, {len(cap.seeds)} replies in {out}")


if __name__ == "__main__":
    main()
