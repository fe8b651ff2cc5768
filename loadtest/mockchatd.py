#!/usr/bin/python3
"""mockchatd: a tiny stand-in for chatd (protocol.md subset) used to test
chatload itself: JWT check (401 before upgrade), welcome, per-room seq,
broadcast to the room, heartbeat_ack, GET /rooms/{room}/messages.
Run: /usr/bin/python3 mockchatd.py PORT SECRET"""
import asyncio, json, sys, time, http
import jwt, websockets

PORT, SECRET = int(sys.argv[1]), sys.argv[2]
rooms = {}    # room -> set of websockets
seqs = {}     # room -> last seq
history = {}  # room -> list of messages
counts = {"accepted": 0, "refused_auth": 0}


def metrics_text():
    open_ = sum(len(v) for v in rooms.values())
    lines = ["# HELP chat_connections_open Open WebSocket connections.",
             "# TYPE chat_connections_open gauge", f"chat_connections_open {open_}",
             "# HELP chat_connections_total Upgrade attempts by result.",
             "# TYPE chat_connections_total counter"]
    lines += [f'chat_connections_total{{result="{k}"}} {v}' for k, v in counts.items()]
    return ("\n".join(lines) + "\n").encode()


def auth(token):
    try:
        return jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["sub", "exp"]})
    except Exception as e:  # noqa: BLE001 - any failure is a 401
        return None


async def process_request(path, headers):
    from urllib.parse import urlsplit, parse_qs
    u = urlsplit(path)
    q = parse_qs(u.query)
    tok = q.get("token", [None])[0]
    if u.path == "/metrics":
        body = metrics_text()
        return http.HTTPStatus.OK, [("Content-Type", "text/plain; version=0.0.4"), ("Content-Length", str(len(body)))], body
    if u.path == "/healthz":
        return http.HTTPStatus.OK, [("Content-Length", "3")], b"ok\n"
    if u.path.startswith("/rooms/"):
        h = headers.get("Authorization", "")
        tok = h[7:] if h.startswith("Bearer ") else tok
        if not tok or not auth(tok):
            return http.HTTPStatus.UNAUTHORIZED, [], b"bad token\n"
        room = u.path.split("/")[2]
        body = json.dumps({"messages": history.get(room, [])[-50:], "next_cursor": None}).encode()
        return http.HTTPStatus.OK, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body
    if not u.path.startswith("/ws/"):
        return http.HTTPStatus.NOT_FOUND, [], b"not found\n"
    if not tok or not auth(tok):
        counts["refused_auth"] += 1
        return http.HTTPStatus.UNAUTHORIZED, [], b"bad token\n"
    counts["accepted"] += 1
    return None


async def handler(ws, path):
    from urllib.parse import urlsplit, parse_qs
    u = urlsplit(path)
    room = u.path[4:]
    claims = auth(parse_qs(u.query)["token"][0])
    rooms.setdefault(room, set()).add(ws)
    await ws.send(json.dumps({"type": "welcome", "user": claims["sub"], "node": "mock", "room": room,
                              "heartbeat_ms": 10000, "presence_ttl_ms": 30000, "seq": seqs.get(room, 0)}))
    try:
        async for raw in ws:
            m = json.loads(raw)
            if m.get("type") == "heartbeat":
                await ws.send('{"type":"heartbeat_ack"}')
            elif m.get("type") == "message":
                seqs[room] = seqs.get(room, 0) + 1
                out = {"type": "message", "room": room, "seq": seqs[room], "id": m.get("id"),
                       "user": claims["sub"], "name": claims.get("name", ""), "body": m["body"],
                       "ts": int(time.time() * 1000)}
                history.setdefault(room, []).append(out)
                frame = json.dumps(out)
                websockets.broadcast(rooms[room], frame)
            else:
                await ws.send(json.dumps({"type": "error", "code": "bad_request", "message": "?"}))
    finally:
        rooms[room].discard(ws)


async def main():
    async with websockets.serve(handler, "127.0.0.1", PORT, process_request=process_request,
                                max_queue=None, ping_interval=None):
        await asyncio.Future()

asyncio.run(main())
