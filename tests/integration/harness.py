"""Integration harness for chatd: real processes, real sockets.

Owns: port allocation in the suite's range, the Redis and Postgres instances
of one run (or the ones given by CHATD_TEST_REDIS_URL /
CHATD_TEST_DATABASE_URL), chatd node subprocesses (env, logs, signals), JWT
minting (HS256 / RS256 / ES256 with keys made by openssl), an asyncio
WebSocket client wrapper (websockets 10.4) with frame predicates, a raw
socket WebSocket client for slow-reader tests, and small HTTP helpers.
Every process started here is tracked by PID and killed by PID at the end of
its test (nodes) or of the run (services).
"""
import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import jwt
import websockets

PORT_LO = int(os.environ.get("CHATD_TEST_PORT_LO", "17200"))
PORT_HI = int(os.environ.get("CHATD_TEST_PORT_HI", "17499"))
PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
SECRET = "itest-secret-0123456789abcdef"
# the checkout this file belongs to (a fresh clone, a worktree, CI)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CHATD = os.path.join(REPO, "build", "chatd")
PROJECT_SCRIPTS = os.path.join(REPO, "scripts")


class TestFailure(AssertionError):
    pass


class TestSkip(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def eq(got, want, what):
    if got != want:
        raise TestFailure(f"{what}: expected {want!r}, got {got!r}")


# ---------------------------------------------------------------- ports
_used_ports = set()
_next_port = [PORT_LO]


def free_port():
    """A port of our range that we can bind now and have not handed out."""
    for _ in range(PORT_HI - PORT_LO + 1):
        p = _next_port[0]
        _next_port[0] = PORT_LO if p >= PORT_HI else p + 1
        if p in _used_ports:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(p)
        return p
    raise RuntimeError("no free port in range")


def release_port(p):
    _used_ports.discard(p)


def wait_port_closed(port, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        s = socket.socket()
        try:
            s.settimeout(0.2)
            s.connect(("127.0.0.1", port))
        except OSError:
            return True
        finally:
            s.close()
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------- run state
class Run:
    """Process-wide state of one suite run."""

    def __init__(self, chatd, workdir, keep=False):
        self.chatd = chatd
        self.workdir = workdir
        os.chmod(workdir, 0o755)      # postgres (another user) must reach its data dir
        self.keep = keep
        self.redis = None
        self.pg = None
        self.nodes = []       # nodes of the current test (cleaned after each)
        self.clients = []     # WS clients of the current test (aborted after each)
        self.keys = None
        self.test_name = "?"
        self.counter = 0
        self.extra_services = []   # objects with stop(), stopped at the end of the run

    def tmpdir(self, prefix):
        self.counter += 1
        d = os.path.join(self.workdir, f"{prefix}-{self.counter}")
        os.makedirs(d, exist_ok=True)
        return d

    # services -------------------------------------------------------
    def need_redis(self):
        if self.redis is None:
            url = os.environ.get("CHATD_TEST_REDIS_URL")
            if url:
                self.redis = ExternalService(url)
            else:
                self.redis = Redis(self.tmpdir("redis"))
                self.redis.start()
        return self.redis

    def need_pg(self):
        if self.pg is None:
            url = os.environ.get("CHATD_TEST_DATABASE_URL")
            if url:
                self.pg = ExternalService(url)
            else:
                if not os.path.exists(os.path.join(PGBIN, "postgres")):
                    raise TestSkip("postgres binaries not found")
                self.pg = Postgres(self.tmpdir("pg"))
                self.pg.start()
        return self.pg

    def add_service(self, svc):
        """A service a group started itself (e.g. the Redis Cluster rig):
        stopped with the others at the end of the run."""
        self.extra_services.append(svc)
        return svc

    def stop_services(self):
        for s in list(reversed(self.extra_services)) + [self.redis, self.pg]:
            if s is not None:
                try:
                    s.stop()
                except Exception:
                    pass

    def abort_clients(self):
        for c in self.clients:
            c.abort()
        self.clients = []

    SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                       "SUMMARY: UndefinedBehaviorSanitizer", "WARNING: ThreadSanitizer")

    def sanitizer_reports(self):
        """The first sanitizer report line in a log of this test's nodes, or ''."""
        for n in self.nodes:
            for line in n.log_text().splitlines():
                if any(m in line for m in self.SANITIZER_MARKS):
                    return f"{n.name}: {line.strip()[:300]}"
        return ""

    def cleanup_nodes(self):
        for n in self.nodes:
            n.kill9()
            release_port(n.port)
        self.nodes = []

    def key_files(self):
        if self.keys is None:
            self.keys = Keys(self.tmpdir("keys"))
        return self.keys


RUN = None  # set by run.py


def harness_run():
    return RUN


class ExternalService:
    """A service the runner gave us by URL: cannot be killed or restarted."""

    def __init__(self, url):
        self.url = url
        self.external = True

    def stop(self):
        pass


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _wait_pid_gone(pid, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


class Redis:
    external = False

    def __init__(self, dir_, port=None, unixsocket=False):
        self.dir = dir_
        self.port = port or free_port()
        self.proc = None
        # more redis-server options, after the defaults (a later option wins):
        # e.g. ["--appendonly", "yes", "--appendfsync", "always"] for a durable Redis
        self.extra_args = []
        # its unix socket too (unix:// URLs); a path must fit a sockaddr_un
        self.sock = os.path.join(dir_, "r.sock") if unixsocket else None
        if self.sock and len(self.sock) > 100:
            raise RuntimeError(f"unix socket path too long: {self.sock}")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    @property
    def unix_url(self):
        return f"unix://{self.sock}"

    def start(self):
        log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir, "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "warning"] + self.extra_args
            + (["--unixsocket", self.sock, "--unixsocketperm", "700"] if self.sock else []),
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        end = time.time() + 10
        while time.time() < end:
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis did not start on {self.port}")

    def ping(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
            s.sendall(b"PING\r\n")
            r = s.recv(64)
            s.close()
            return r.startswith(b"+PONG")
        except OSError:
            return False

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def command(self, *args):
        """Tiny RESP client for assertions (one command, one reply)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        data = b""
        while not data.endswith(b"\r\n"):
            data += s.recv(65536)
        s.close()
        return data


class Postgres:
    external = False

    def __init__(self, dir_):
        self.dir = dir_
        self.pgdir = os.path.join(dir_, "pgdata")
        self.port = free_port()
        self.proc = None

    @property
    def url(self):
        return f"postgresql://postgres@127.0.0.1:{self.port}/chatd"

    def _as_pg(self, argv):
        if os.getuid() == 0:
            return ["runuser", "-u", "postgres", "--"] + argv
        return argv

    def start(self):
        os.makedirs(self.pgdir, exist_ok=True)
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres")
            shutil.chown(self.pgdir, "postgres")
            os.chmod(self.pgdir, 0o700)
        if not os.path.exists(os.path.join(self.pgdir, "PG_VERSION")):
            r = subprocess.run(self._as_pg([os.path.join(PGBIN, "initdb"), "-D", self.pgdir,
                                            "-U", "postgres", "-A", "trust", "-E", "UTF8"]),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if r.returncode != 0:
                raise RuntimeError("initdb failed: " + r.stdout.decode()[-500:])
        self._launch()
        r = self.psql("postgres", "SELECT 1 FROM pg_database WHERE datname='chatd'")
        if r.strip() != "1":
            self.psql("postgres", "CREATE DATABASE chatd")

    def _launch(self):
        log = open(os.path.join(self.dir, "postgres.log"), "ab")
        self.proc = subprocess.Popen(
            self._as_pg([os.path.join(PGBIN, "postgres"), "-D", self.pgdir, "-p", str(self.port),
                         "-k", self.pgdir, "-c", "listen_addresses=127.0.0.1",
                         "-c", "fsync=off", "-c", "synchronous_commit=off",
                         "-c", "full_page_writes=off", "-c", "max_connections=200"]),
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        end = time.time() + 30
        while time.time() < end:
            r = subprocess.run([os.path.join(PGBIN, "pg_isready"), "-q", "-h", "127.0.0.1",
                                "-p", str(self.port)])
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not start")

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.pgdir, "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    def psql(self, db, sql):
        r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                            "-d", db, "-tAc", sql], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=20)
        if r.returncode != 0:
            raise RuntimeError("psql: " + r.stderr.decode().strip())
        return r.stdout.decode()

    def crash(self):
        """Immediate shutdown (SIGQUIT to the postmaster): like a crash."""
        pid = self.postmaster_pid()
        if pid:
            os.kill(pid, signal.SIGQUIT)
            _wait_pid_gone(pid, 15)
        if self.proc:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def restart(self):
        self._launch()

    def stop(self):
        pid = self.postmaster_pid()
        if pid and _pid_alive(pid):
            os.kill(pid, signal.SIGINT)
            _wait_pid_gone(pid, 15)
        if self.proc:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


# ---------------------------------------------------------------- keys / JWT
class Keys:
    def __init__(self, d):
        self.dir = d
        self.rsa_priv = os.path.join(d, "rsa.pem")
        self.rsa_pub = os.path.join(d, "rsa.pub.pem")
        self.ec_priv = os.path.join(d, "ec.pem")
        self.ec_pub = os.path.join(d, "ec.pub.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", self.rsa_priv], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["openssl", "pkey", "-in", self.rsa_priv, "-pubout", "-out", self.rsa_pub],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", self.ec_priv], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["openssl", "pkey", "-in", self.ec_priv, "-pubout", "-out", self.ec_pub],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()


def claims(sub, name=None, exp_in=600, **extra):
    now = int(time.time())
    c = {"sub": sub, "exp": now + exp_in, "iat": now}
    if name is not None:
        c["name"] = name
    c.update(extra)
    return c


def token(sub="alice", name=None, exp_in=600, secret=SECRET, **extra):
    return jwt.encode(claims(sub, name, exp_in, **extra), secret, algorithm="HS256")


def token_claims(c, secret=SECRET):
    return jwt.encode(c, secret, algorithm="HS256")


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def raw_jwt(header, payload, key=None, alg="HS256"):
    """Hand-made token: PyJWT refuses 'none' and HMAC with a PEM key."""
    h = b64u(json.dumps(header, separators=(",", ":")).encode())
    p = b64u(json.dumps(payload, separators=(",", ":")).encode())
    signing = f"{h}.{p}".encode()
    if key is None:
        return f"{h}.{p}."
    sig = hmac.new(key, signing, hashlib.sha256).digest()
    return f"{h}.{p}.{b64u(sig)}"


def uniq(prefix="r"):
    return f"{prefix}-{os.getpid() % 1000}-{int(time.time()*1000) % 10**7}-{random.randint(0, 99999)}"


class refusing_check:
    """An operator's CHECK constraint on messages (SQLSTATE 23514 for a row
    it refuses): `refusing_check(body)` refuses that body, `cond=` any
    condition a row must meet. NOT VALID: rows stored before are not
    checked. Dropped on exit whatever happened: other tests share this
    Postgres. Needs the suite's own Postgres (an external one is not ours
    to alter)."""

    def __init__(self, body=None, cond=None):
        self.pg = RUN.need_pg()
        if getattr(self.pg, "external", True):
            raise TestSkip("needs the suite's own Postgres (ALTER TABLE messages)")
        self.cond = cond if cond is not None else f"body <> '{body}'"
        self.name = "chatd_itest_" + uniq("").replace("-", "_")

    def __enter__(self):
        self.pg.psql("chatd", f"ALTER TABLE messages ADD CONSTRAINT {self.name} "
                              f"CHECK ({self.cond}) NOT VALID")
        return self

    def __exit__(self, *exc):
        self.pg.psql("chatd", f"ALTER TABLE messages DROP CONSTRAINT IF EXISTS {self.name}")
        return False


# ---------------------------------------------------------------- policies
OPEN_POLICY = "local M = {}\nreturn M\n"


def policy_dir(source, extra_files=None):
    d = RUN.tmpdir("policy")
    with open(os.path.join(d, "policy.lua"), "w") as f:
        f.write(source)
    for name, text in (extra_files or {}).items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    return d


def write_policy(d, source):
    tmp = os.path.join(d, "policy.lua.tmp")
    with open(tmp, "w") as f:
        f.write(source)
    os.replace(tmp, os.path.join(d, "policy.lua"))


# ---------------------------------------------------------------- chatd nodes
class Node:
    def __init__(self, name=None, redis=False, db=False, scripts=None, env=None, port=None,
                 secret=SECRET, pubkey=None, args=(), wrap=(), cwd=None):
        self.name = name or uniq("node")
        self.port = port or free_port()
        self.log_path = os.path.join(RUN.workdir, f"{RUN.test_name}-{self.name}.log")
        e = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        e.update({
            "CHAT_LISTEN": f"127.0.0.1:{self.port}",
            "CHAT_NODE_ID": self.name,
            "CHAT_SCRIPTS": scripts if scripts is not None else policy_dir(OPEN_POLICY),
            "CHAT_LOG_LEVEL": "debug",
        })
        if secret:
            e["CHAT_JWT_SECRET"] = secret
        if pubkey:
            e["CHAT_JWT_PUBLIC_KEY"] = pubkey
        if redis:
            e["CHAT_REDIS_URL"] = RUN.need_redis().url if redis is True else redis
        if db:
            e["CHAT_DATABASE_URL"] = RUN.need_pg().url if db is True else db
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = str(v)
        self.env = e
        self.args = list(args)
        self.wrap = list(wrap)     # command prefix that execs chatd (e.g. prlimit)
        self.cwd = cwd             # working directory (None: the runner's)
        self.proc = None
        self.starts = 0
        RUN.nodes.append(self)

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}"

    def start(self, wait=True):
        if not os.path.exists(RUN.chatd):
            raise TestFailure(f"chatd binary not found at {RUN.chatd}")
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"==== start #{self.starts} {time.strftime('%H:%M:%S')}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.wrap + [os.path.abspath(RUN.chatd)] + self.args, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.cwd)
        log.close()
        if wait:
            self.wait_healthy()
            # like a load balancer: send traffic only once /readyz says so
            # (Redis / Postgres connected)
            self.wait_healthy(path="/readyz")
        return self

    def wait_healthy(self, timeout=15, path="/healthz", port=None):
        """Until path answers 200 on port (the node's own by default: another
        one for a worker of --workers); fails when the process exits."""
        port = port or self.port
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise TestFailure(f"chatd {self.name} exited with {self.proc.returncode}; "
                                  f"log tail: {self.log_tail(10)}")
            try:
                st, _, _ = http_get(port, path, timeout=0.5)
                if st == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TestFailure(f"chatd {self.name}: {path} on port {port} not 200 within {timeout}s; "
                          f"log: {self.log_tail(10)}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def restart(self):
        self.kill9()
        wait_port_closed(self.port)
        return self.start()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=20):
        lines = self.log_text().splitlines()
        return " | ".join(lines[-n:])


def start_node(**kw):
    return Node(**kw).start()


# ---------------------------------------------------------------- HTTP
def api_post(port, key, room, body):
    """POST /api/rooms/{room}/messages (docs/api.md): (status, json)"""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/rooms/{room}/messages",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def http_get(port, path, headers=None, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body
    finally:
        c.close()


async def ahttp(port, path, headers=None, timeout=5.0):
    return await asyncio.to_thread(http_get, port, path, headers, timeout)


async def ahttp_json(port, path, tok=None, timeout=5.0):
    h = {"Authorization": f"Bearer {tok}"} if tok else {}
    st, hd, body = await ahttp(port, path, h, timeout)
    try:
        js = json.loads(body) if body else None
    except ValueError:
        js = None
    return st, js, body


def read_head(s, buf=b"", bufsize=65536):
    """Reads socket s until buf holds a whole HTTP head (up to the blank
    line) or the peer closes; returns buf (without the blank line when the
    peer closed first). bufsize=1 reads no byte past the head (a WebSocket
    handshake whose frames the caller reads next from the socket)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(bufsize)
        if not chunk:
            break
        buf += chunk
    return buf


def upgrade_request(port, path, key, headers=None):
    """The bytes of a WebSocket upgrade request for path on port (headers:
    extra ones, a value None leaves that header out)."""
    h = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
         "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
    h.update(headers or {})
    return (f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()
                                               if v is not None) + "\r\n").encode()


def upgrade_status(port, path, timeout=5.0):
    """Sends a WebSocket upgrade request, returns (status, body) without
    completing the handshake (for the HTTP-before-upgrade checks)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(upgrade_request(port, path, key))
        data = read_head(s)
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            raise TestFailure(f"bad HTTP status line {lines[0]!r}")
        if status == 101:
            return status, b""
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        body = rest
        if "content-length" in hdrs:
            n = int(hdrs["content-length"])
            s.settimeout(2)
            while len(body) < n:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        else:
            s.settimeout(1)
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            except OSError:
                pass
        return status, body
    finally:
        s.close()


async def aupgrade_status(port, path):
    return await asyncio.to_thread(upgrade_status, port, path)


def ws_path(room, tok=None, since=None, quote_room=True, epoch=None):
    q = {}
    if tok is not None:
        q["token"] = tok
    if since is not None:
        q["since"] = str(since)
    if epoch is not None:
        q["epoch"] = epoch
    r = urllib.parse.quote(room, safe="") if quote_room else room
    return f"/ws/{r}" + (("?" + urllib.parse.urlencode(q)) if q else "")


# ---------------------------------------------------------------- WS client
class Client:
    """One WebSocket connection. A background task reads every frame into
    self.frames (parsed JSON, with '_t' receive time); wait_for scans them."""

    def __init__(self, ws, room, label):
        self.ws = ws
        self.room = room
        self.label = label
        self.frames = []
        self.closed = False
        self.close_code = None
        self.close_reason = None
        self._cond = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self._hb = None
        self.bad_json = []
        harness_run().clients.append(self)

    @classmethod
    async def connect(cls, node, room, tok=None, since=None, heartbeat=False, user="alice",
                      label=None, timeout=5.0, wait_welcome=True, epoch=None):
        if tok is None:
            tok = token(user)
        url = f"ws://127.0.0.1:{node.port}" + ws_path(room, tok, since, epoch=epoch)
        ws = await asyncio.wait_for(
            websockets.connect(url, max_size=None, ping_interval=None, close_timeout=2,
                               open_timeout=timeout, max_queue=None), timeout + 1)
        if label is None:
            try:
                user = jwt.decode(tok, options={"verify_signature": False}).get("sub", user)
            except Exception:
                pass
            label = f"{user}@{node.name}"
        c = cls(ws, room, label)
        if wait_welcome:
            await c.wait_for(lambda f: f["type"] == "welcome", timeout,
                             what="welcome")
        if heartbeat:
            c.start_heartbeat()
        return c

    async def _read(self):
        try:
            async for raw in self.ws:
                try:
                    f = json.loads(raw)
                except (ValueError, TypeError):
                    self.bad_json.append(raw)
                    f = {"type": "_unparsable", "raw": raw}
                if not isinstance(f, dict):
                    f = {"type": "_nonobject", "raw": f}
                f["_t"] = time.monotonic()
                async with self._cond:
                    self.frames.append(f)
                    self._cond.notify_all()
        except websockets.ConnectionClosed:
            pass
        except Exception as e:  # noqa
            self.frames.append({"type": "_reader_error", "err": repr(e), "_t": time.monotonic()})
        self.closed = True
        self.close_code = self.ws.close_code
        self.close_reason = self.ws.close_reason
        if self._hb:
            self._hb.cancel()
        async with self._cond:
            self._cond.notify_all()

    def start_heartbeat(self, interval_ms=None):
        if interval_ms is None:
            w = self.welcome()
            interval_ms = (w or {}).get("heartbeat_ms", 1000)
        interval = max(0.05, interval_ms / 1000.0 / 2)

        async def beat():
            try:
                while not self.closed:
                    await self.send({"type": "heartbeat"})
                    await asyncio.sleep(interval)
            except (websockets.ConnectionClosed, asyncio.CancelledError):
                pass
        self._hb = asyncio.create_task(beat())

    def stop_heartbeat(self):
        if self._hb:
            self._hb.cancel()
            self._hb = None

    def welcome(self):
        for f in self.frames:
            if f["type"] == "welcome":
                return f
        return None

    def mark(self):
        return len(self.frames)

    async def send(self, obj):
        await self.ws.send(json.dumps(obj) if not isinstance(obj, (str, bytes)) else obj)

    async def send_msg(self, body, id=None, room=None):
        f = {"type": "message", "body": body}
        if id is not None:
            f["id"] = id
        if room is not None:
            f["room"] = room
        await self.send(f)

    async def wait_for(self, pred, timeout=5.0, start=0, what="frame"):
        """First frame at index >= start that satisfies pred."""
        end = time.monotonic() + timeout
        i = start
        async with self._cond:
            while True:
                while i < len(self.frames):
                    f = self.frames[i]
                    i += 1
                    if pred(f):
                        return f
                if self.closed:
                    raise TestFailure(f"{self.label}: connection closed (code {self.close_code}) "
                                      f"while waiting for {what}; last frames: "
                                      f"{self.brief(-5)}")
                left = end - time.monotonic()
                if left <= 0:
                    raise TestFailure(f"{self.label}: timeout {timeout}s waiting for {what}; "
                                      f"last frames: {self.brief(-5)}")
                try:
                    await asyncio.wait_for(self._cond.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def wait_count(self, pred, n, timeout=10.0, what="frames", start=0):
        end = time.monotonic() + timeout
        async with self._cond:
            while True:
                got = [f for f in self.frames[start:] if pred(f)]
                if len(got) >= n:
                    return got
                if self.closed:
                    raise TestFailure(f"{self.label}: closed (code {self.close_code}) with "
                                      f"{len(got)}/{n} {what}")
                left = end - time.monotonic()
                if left <= 0:
                    raise TestFailure(f"{self.label}: timeout with {len(got)}/{n} {what}; "
                                      f"last frames: {self.brief(-3)}")
                try:
                    await asyncio.wait_for(self._cond.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def reply(self, req, pred, timeout=5.0, what="reply"):
        m = self.mark()
        await self.send(req)
        return await self.wait_for(pred, timeout, start=m, what=what)

    async def error_for(self, req, timeout=5.0):
        return await self.reply(req, lambda f: f["type"] == "error", timeout,
                                what=f"error for {json.dumps(req)[:80]}")

    async def roundtrip(self, timeout=5.0):
        """heartbeat -> heartbeat_ack: proves the connection is open and all
        earlier frames of ours were processed."""
        return await self.reply({"type": "heartbeat"}, lambda f: f["type"] == "heartbeat_ack",
                                timeout, what="heartbeat_ack")

    async def join(self, room, since=None, timeout=5.0, epoch=None):
        req = {"type": "join", "room": room}
        if since is not None:
            req["since"] = since
        if epoch is not None:
            req["epoch"] = epoch
        return await self.reply(
            req, lambda f: (f["type"] == "presence_state" and f.get("room") == room)
            or f["type"] == "error", timeout, what=f"join {room}")

    def messages(self, room=None):
        return [f for f in self.frames if f["type"] == "message"
                and (room is None or f.get("room") == room)]

    def acks(self):
        return [f for f in self.frames if f["type"] == "ack"]

    def errors(self, code=None):
        return [f for f in self.frames if f["type"] == "error"
                and (code is None or f.get("code") == code)]

    def seqs(self, room=None):
        return [m["seq"] for m in self.messages(room)]

    async def wait_closed(self, timeout=5.0):
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except asyncio.TimeoutError:
            raise TestFailure(f"{self.label}: not closed within {timeout}s; last frames: "
                              f"{self.brief(-3)}")
        return self.close_code

    async def close(self):
        self.stop_heartbeat()
        try:
            await asyncio.wait_for(self.ws.close(), 3)
        except Exception:
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 3)
        except Exception:
            pass

    def abort(self):
        """Drop the TCP connection without a close handshake."""
        self.stop_heartbeat()
        try:
            self.ws.transport.abort()
        except Exception:
            pass

    def brief(self, n=-5):
        out = []
        for f in self.frames[n:]:
            g = {k: v for k, v in f.items() if k != "_t"}
            if "body" in g and isinstance(g["body"], str) and len(g["body"]) > 30:
                g["body"] = g["body"][:30] + "..."
            out.append(g)
        return json.dumps(out)[:600]


async def send_acked(c, body, mid, room=None, timeout=10):
    """Sends a message with client id mid and waits for its answer: the
    seq of its ack (anything else fails)."""
    mk = c.mark()
    await c.send_msg(body, id=mid, room=room)
    f = await c.wait_for(lambda f: f["type"] in ("ack", "error") and f.get("id") == mid,
                         timeout, start=mk, what=f"ack of {mid}")
    eq(f["type"], "ack", f"answer to {mid}: {f}")
    return f["seq"]


async def wait_no_subscriber(rd, room, timeout=5.0):
    """Until no node subscribes the room's channel on Redis rd (nobody
    holds the room)."""
    end = time.time() + timeout
    while time.time() < end:
        r = await asyncio.to_thread(rd.command, "PUBSUB", "NUMSUB", f"chat:{{{room}}}:msg")
        if r.endswith(b":0\r\n"):
            return
        await asyncio.sleep(0.05)
    raise TestFailure(f"room {room} still subscribed after {timeout}s")


def lock_table(pg, table="messages", mode="EXCLUSIVE"):
    """A psql session holding `table` of the chatd database in `mode`
    (EXCLUSIVE: inserts wait, reads go on; ACCESS EXCLUSIVE: reads wait
    too; SHARE: writes wait). Read "locked\n" from its stdout before relying
    on it; release it with unlock()."""
    p = subprocess.Popen(["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d",
                          "chatd", "-qAt"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    p.stdin.write(f"BEGIN; LOCK TABLE {table} IN {mode} MODE; SELECT 'locked';\n")
    p.stdin.flush()
    return p


def unlock(p):
    """Ends a lock_table session (its transaction committed)."""
    p.stdin.write("COMMIT;\n")
    p.stdin.close()
    p.wait(15)


async def wait_ready(n, timeout=20.0, what=None):
    """Until node n's /readyz answers 200 (its Redis and Postgres are back);
    fails after timeout."""
    end = time.time() + timeout
    st = None
    while time.time() < end:
        st, _, _ = await ahttp(n.port, "/readyz")
        if st == 200:
            return
        await asyncio.sleep(0.1)
    eq(st, 200, what or f"/readyz of {n.name}")


def contiguous(seqs, start=None):
    if not seqs:
        return True
    if start is not None and seqs[0] != start:
        return False
    return all(b == a + 1 for a, b in zip(seqs, seqs[1:]))


def describe_seq_problem(seqs):
    seen = set()
    for i, s in enumerate(seqs):
        if s in seen:
            return f"duplicate seq {s} at index {i}"
        seen.add(s)
        if i and s != seqs[i - 1] + 1:
            return f"seq {seqs[i-1]} followed by {s} at index {i}"
    return "ok"


# ---------------------------------------------------------------- raw WS
class RawWS:
    """A hand-rolled WebSocket client on a plain socket with a tiny receive
    buffer: it can stop reading entirely (slow consumer) and later drain and
    parse what the server sent, including the close frame."""

    def __init__(self, port, path, rcvbuf=4096):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(upgrade_request(port, path, key))
        data = read_head(self.sock, bufsize=1)
        if b"\r\n\r\n" not in data:
            raise TestFailure("raw ws: connection closed during handshake")
        status = data.split(b"\r\n")[0]
        if b" 101" not in status:
            raise TestFailure(f"raw ws: handshake failed: {status!r}")
        self.buf = b""

    @staticmethod
    def text_frame(text):
        """One masked client text frame (bytes)."""
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return hdr + mask + masked

    def send_text(self, text):
        self.sock.sendall(self.text_frame(text))

    def send_texts(self, texts):
        """Several frames in one write (the server reads them at once)."""
        self.sock.sendall(b"".join(self.text_frame(t) for t in texts))

    def drain(self, timeout=10.0):
        """Read until EOF or timeout; returns (frames, close_code or None,
        eof). frames are (opcode, payload)."""
        end = time.time() + timeout
        self.sock.settimeout(0.5)
        eof = False
        while time.time() < end:
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                if self._has_close():
                    break
                continue
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            self.buf += chunk
        frames = self._parse()
        code = None
        for op, p in frames:
            if op == 8:
                code = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else 1005
        return frames, code, eof

    def _has_close(self):
        return any(op == 8 for op, _ in self._parse())

    def _parse(self):
        out = []
        b = self.buf
        i = 0
        while i + 2 <= len(b):
            op = b[i] & 0x0F
            n = b[i + 1] & 0x7F
            j = i + 2
            if n == 126:
                if j + 2 > len(b):
                    break
                n = struct.unpack("!H", b[j:j + 2])[0]
                j += 2
            elif n == 127:
                if j + 8 > len(b):
                    break
                n = struct.unpack("!Q", b[j:j + 8])[0]
                j += 8
            if j + n > len(b):
                break
            out.append((op, b[j:j + n]))
            i = j + n
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class FrameWS:
    """A WebSocket client that writes any frame, well-formed or not (RFC 6455
    edge cases: unmasked, RSV bits, reserved opcodes, bad lengths, fragments)
    and reads back every frame the server sends, with FIN/RSV bits, until the
    server closes the TCP connection. Blocking; sockets time out."""

    def __init__(self, port, path, headers=None, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(upgrade_request(port, path, key, headers))
        data = read_head(self.sock, bufsize=4096)
        if b"\r\n\r\n" not in data:
            raise TestFailure(f"frame ws: closed during handshake after {data!r}")
        head, _, self.buf = data.partition(b"\r\n\r\n")
        self.status_line = head.split(b"\r\n")[0].decode("latin-1")
        if " 101 " not in self.status_line + " ":
            raise TestFailure(f"frame ws: handshake failed: {self.status_line!r}")
        self.eof = False

    @staticmethod
    def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length=None):
        """One frame's bytes; `length` overrides the declared payload length."""
        if isinstance(payload, str):
            payload = payload.encode()
        n = len(payload) if length is None else length
        b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
        mbit = 0x80 if mask else 0
        if n < 126:
            hdr = struct.pack("!BB", b0, mbit | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b0, mbit | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, mbit | 127, n)
        if not mask:
            return hdr + payload
        key = os.urandom(4)
        return hdr + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            self.eof = True

    def send_frame(self, opcode, payload=b"", **kw):
        self.send(self.frame(opcode, payload, **kw))

    def read(self, timeout=5.0, until_close=True):
        """Reads until the server closes the TCP connection (or, with
        until_close=False, until `timeout` passes). Returns the frames so far
        as (fin, rsv, opcode, payload)."""
        end = time.time() + timeout
        while not self.eof and time.time() < end:
            self.sock.settimeout(max(0.05, min(0.5, end - time.time())))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
        return self.frames()

    def frames(self):
        out, b, i = [], self.buf, 0
        while i + 2 <= len(b):
            fin, rsv, op = b[i] >> 7, (b[i] >> 4) & 7, b[i] & 0x0F
            n, j = b[i + 1] & 0x7F, i + 2
            if n == 126:
                if j + 2 > len(b):
                    break
                n, j = struct.unpack("!H", b[j:j + 2])[0], j + 2
            elif n == 127:
                if j + 8 > len(b):
                    break
                n, j = struct.unpack("!Q", b[j:j + 8])[0], j + 8
            if j + n > len(b):
                break
            out.append((fin, rsv, op, b[j:j + n]))
            i = j + n
        return out

    def closes(self):
        """Close frames received, as (code or None, reason bytes)."""
        out = []
        for _, _, op, p in self.frames():
            if op == 8:
                out.append((struct.unpack("!H", p[:2])[0] if len(p) >= 2 else None, p[2:]))
        return out

    def texts(self):
        return [p for _, _, op, p in self.frames() if op == 1]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------- misc
def metric_value(text, name, labels=None):
    """Sum of the samples of a metric (optionally those whose label string
    contains `labels`). None when absent."""
    total = None
    for ln in text.splitlines():
        if ln.startswith("#") or not ln.strip():
            continue
        nm = ln.split("{", 1)[0].split(" ", 1)[0]
        if nm != name:
            continue
        if labels and labels not in ln:
            continue
        try:
            v = float(ln.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        total = (total or 0) + v
    return total


async def gather_all(*aws):
    return await asyncio.gather(*aws)


# ---------------------------------------------------------------- shared scenarios
def _is_msg(room):
    return lambda f: f["type"] == "message" and f.get("room") == room


async def since_race(pub_node, sub_nodes, n_clients=20, total=400):
    """A publisher streams while clients connect with since values behind
    the head: each must see since+1 .. end exactly once, in order."""
    room = uniq()
    p = await Client.connect(pub_node, room, token("pub"))
    w = await Client.connect(pub_node, room, token("watch"))
    done = asyncio.Event()

    async def publish():
        for i in range(total):
            await p.send_msg(f"r{i}", id=f"r{i}")
            if i % 5 == 0:
                await asyncio.sleep(0.005)
        done.set()
    task = asyncio.create_task(publish())
    subs = []
    await w.wait_count(_is_msg(room), 20, 10)
    for k in range(n_clients):
        head = w.seqs(room)[-1]
        since = max(0, head - (k * 7) % 40)
        node = sub_nodes[k % len(sub_nodes)]
        subs.append((since, await Client.connect(node, room, token(f"s{k}"), since=since)))
        await asyncio.sleep(0.02)
    await task
    await w.wait_count(_is_msg(room), total, 20, "watcher messages")
    for since, c in subs:
        await c.wait_count(_is_msg(room), total - since, 15, f"messages since {since}")
    await asyncio.sleep(0.3)
    for since, c in subs:
        seqs = c.seqs(room)
        check(seqs == list(range(since + 1, total + 1)),
              f"{c.label} since={since}: {describe_seq_problem(seqs)} "
              f"(first {seqs[:3]}, len {len(seqs)})")


# ---------------------------------------------------------------- registry
TESTS = []


def test(timeout=45, needs=()):
    """Registers an async test function of the calling group module.
    needs: ("redis", "pg") services started before the test."""
    def deco(fn):
        group = fn.__module__.split(".")[-1]
        TESTS.append({"group": group, "name": fn.__name__, "fn": fn, "timeout": timeout,
                      "needs": needs})
        return fn
    return deco
