#!/usr/bin/python3
"""A sample bot for chatd's server API (docs/api.md): posts messages into a
room over HTTP on one keep-alive connection, the way an application
backend does. Python 3 standard library only.

The API key is read from the environment (CHAT_API_KEY), never from the
command line (where `ps` would show it). Each message gets an id; a 503
(`unavailable`) or a lost connection is retried with the SAME id, so the
message is stored and broadcast once whatever happens (idempotent publish);
a 429 waits for Retry-After.

  CHAT_API_KEY=... tools/bot.py --url http://127.0.0.1:8080 --room lobby \
      --user bot --name "Build bot" "deploy 1.2.3 finished"
  echo -e "line one\\nline two" | CHAT_API_KEY=... tools/bot.py --room lobby --stdin
  CHAT_API_KEY=... tools/bot.py --room lobby --count 10 --interval 0.5 --meta '{"kind":"tick"}' tick

Prints one line per message: `<seq> <id> [duplicate]`. Exit status 0 when
every message was acknowledged, 1 otherwise.
"""
import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse
import uuid


class Bot:
    def __init__(self, url, key, timeout=15.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https"):
            raise ValueError("--url must be http:// or https://")
        self.https = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.https else 80)
        self.prefix = u.path.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.conn = None

    def _connect(self):
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        self.conn = cls(self.host, self.port, timeout=self.timeout)

    def request(self, method, path, body=None):
        """One request on the keep-alive connection; reconnects once if the
        server closed it meanwhile. Returns (status, headers, parsed JSON)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.key}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request(method, self.prefix + path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                try:
                    js = json.loads(raw) if raw else None
                except ValueError:
                    js = None
                return r.status, r, js
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise RuntimeError("unreachable")

    def post(self, room, user, name, text, meta=None, msg_id=None, attempts=8):
        """Posts one message; retries 503 / network errors with the same id.
        Returns the answer ({"room","seq","id","duplicate"})."""
        msg_id = msg_id or f"bot-{uuid.uuid4().hex}"
        body = {"id": msg_id, "user": user, "name": name, "body": text}
        if meta is not None:
            body["meta"] = meta
        path = f"/api/rooms/{urllib.parse.quote(room, safe='')}/messages"
        delay = 0.2
        for _ in range(attempts):
            try:
                status, resp, js = self.request("POST", path, body)
            except (http.client.HTTPException, OSError) as e:
                status, resp, js = None, None, {"error": {"code": "network", "message": str(e)}}
            if status == 200:
                return js
            if status == 429:
                time.sleep(float(resp.getheader("retry-after", "1")))
                continue
            if status in (None, 503):
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            err = (js or {}).get("error", {})
            raise RuntimeError(f"HTTP {status} {err.get('code')}: {err.get('message')}")
        raise RuntimeError(f"gave up after {attempts} attempts (last: {status})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("CHAT_API_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--room", required=True)
    ap.add_argument("--user", default="bot")
    ap.add_argument("--name", default=None, help="display name (default: the user)")
    ap.add_argument("--meta", default=None, help="a JSON object sent as the message's meta")
    ap.add_argument("--count", type=int, default=1, help="post the text this many times")
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between posts")
    ap.add_argument("--id-prefix", default=None, help="ids <prefix>-<n> instead of random ones")
    ap.add_argument("--stdin", action="store_true", help="post each line of stdin")
    ap.add_argument("text", nargs="*")
    a = ap.parse_args()
    key = os.environ.get("CHAT_API_KEY")
    if not key:
        print("bot: set CHAT_API_KEY (the server API key; keep it on the backend)", file=sys.stderr)
        return 2
    meta = json.loads(a.meta) if a.meta else None
    if meta is not None and not isinstance(meta, dict):
        print("bot: --meta must be a JSON object", file=sys.stderr)
        return 2
    if a.stdin:
        texts = [ln.rstrip("\n") for ln in sys.stdin if ln.strip()]
    else:
        texts = [" ".join(a.text)] * a.count if a.text else []
    if not texts:
        print("bot: nothing to post (give a text or --stdin)", file=sys.stderr)
        return 2
    bot = Bot(a.url, key)
    ok = True
    for i, text in enumerate(texts):
        mid = f"{a.id_prefix}-{i}" if a.id_prefix else None
        try:
            r = bot.post(a.room, a.user, a.name or a.user, text, meta, mid)
            print(f"{r['seq']} {r['id']}{' duplicate' if r.get('duplicate') else ''}", flush=True)
        except Exception as e:  # noqa: BLE001 - reported, then the next one
            ok = False
            print(f"bot: message {i}: {e}", file=sys.stderr, flush=True)
        if a.interval and i + 1 < len(texts):
            time.sleep(a.interval)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
