"""The checker of the fault harness: after a phase (fault, recovery, resend of
what was unacked, clients caught up), compares what the clients were acked
and received with what Postgres holds.

Owns the verdict of a phase. Every figure it reports:
  acked    distinct client ids acked
  lost     acked ids not in history exactly once with their acked seq
  reused   a (room, seq) seen with two different messages (acks, deliveries,
           history), or one id acked with two seqs
  dup      a client received a seq twice, an id was delivered under two seqs,
           or an id is stored twice
  order    a client received a seq below one it had (reorder) or skipped a seq
           (gap), or at the end lacks a seq that history or another client has
           (but the seqs counted under holes as unrecovered)
  holes    seqs below the room's head missing from history (delivered or
           handed out but never stored), and seqs a client missed in a
           gap_too_large that history did not give it by the end (unrecovered)
  (gap_too_large) the client pages history (fault_load fill_gap; the seqs it
           took from there are counted: paged); an order failure in a run with
           the default buffers (no --chaos, no CHAT_RECENT_MAX or
           CHAT_REPLAY_MAX in FAULTS_CHAT_ENV), where no fault outruns them
  (errors) any error frame other than `unavailable` fails the fault too
  unacked  messages still unacked after the drain (the system did not recover)
  back     clients online and caught up at the end / all clients (but those
           that vanished on purpose: their acked messages are still checked)
  reconnect  longest time from a client's disconnect to its next welcome
  ack_max  longest time from a message's first send to its ack
  rss      highest VmRSS of a node during the phase (MiB)
"""
import asyncio


async def history_rows(pg, rooms):
    """{room: {seq: client_id}} and {(room, user, client_id): [seqs]} (an id
    is its sender's: two users may store the same id)."""
    names = ",".join("'" + r.replace("'", "''") + "'" for r in rooms)
    out = await asyncio.to_thread(
        pg.psql, "chatd",
        f"SELECT room, seq, user_id, coalesce(client_id, '') FROM messages WHERE room IN ({names})")
    rows = {r: {} for r in rooms}
    by_id = {}
    for ln in out.splitlines():
        if not ln.strip():
            continue
        room, seq, user, cid = ln.split("|", 3)
        rows[room][int(seq)] = cid or None
        if cid:
            by_id.setdefault((room, user, cid), []).append(int(seq))
    return rows, by_id


async def check(cluster, load, drained, converged, dead, rss_limit_mib, hole_wait=10.0,
                gap_ok=False):
    res = {"problems": []}           # (kind, text); kind: lost, reused, dup, order, ...
    P = res["problems"]
    # history: retry a little for holes, the backfill sweeper may still be storing
    for _ in range(int(hole_wait / 0.5) + 1):
        try:
            rows, by_id = await history_rows(cluster.pg, load.rooms)
        except RuntimeError as e:
            rows, by_id = None, None
            err = str(e)
            await asyncio.sleep(0.5)
            continue
        heads = load.heads()
        holes = {r: [s for s in range(1, max(heads[r], max(rows[r], default=0)) + 1)
                     if s not in rows[r]] for r in load.rooms}
        if not any(holes.values()):
            break
        await asyncio.sleep(0.5)
    if rows is None:
        P.append(("history", f"history unreadable: {err}"))
        rows, by_id, holes = {r: {} for r in load.rooms}, {}, {r: [] for r in load.rooms}
    senders = load.senders()
    acked = lost = 0
    lost_ex = []
    for c in senders:
        for mid, s in c.acked.items():
            acked += 1
            stored = by_id.get((c.room, c.user, mid), [])
            if stored != [s]:
                lost += 1
                if len(lost_ex) < 3:
                    lost_ex.append(f"{c.room} id {mid} acked seq {s}, history has "
                                   f"{stored or 'nothing'} (seq {s} holds "
                                   f"{rows[c.room].get(s, 'nothing')!r})")
    res["acked"] = acked
    res["lost"] = lost
    if lost:
        P.append(("lost", f"{lost} acked messages lost, e.g. " + "; ".join(lost_ex)))
    # reused: conflicting observations, and history against observations
    reused = list(load.reused)
    for (room, s), mid in load.seen.items():
        have = rows[room].get(s, "\0none")
        if have != "\0none" and have != mid:
            reused.append((room, s, mid, have, "history"))
    reused_n = len(reused) + sum(c.ack_conflict for c in senders)
    res["reused"] = reused_n
    if reused_n:
        P.append(("reused", f"{reused_n} seqs reused, e.g. " + "; ".join(
            f"{r} seq {s}: {a!r} vs {b!r} ({w})" for r, s, a, b, w in reused[:3])))
    # dup
    dup_deliv = sum(c.dup for c in load.clients)
    stored_twice = sum(1 for v in by_id.values() if len(v) > 1)
    id_seqs = {}
    for (room, s), mid in load.seen.items():
        if mid is not None:
            id_seqs.setdefault((room, mid), set()).add(s)
    id_twice = sum(1 for v in id_seqs.values() if len(v) > 1)
    res["dup"] = dup_deliv + stored_twice + id_twice
    if res["dup"]:
        ex = [f"{k[1]} under seqs {sorted(v)}" for k, v in id_seqs.items() if len(v) > 1][:2]
        P.append(("dup", f"duplicates: {dup_deliv} deliveries of a seq twice, {stored_twice} ids "
                 f"stored twice, {id_twice} ids under two seqs {'; '.join(ex)}"))
    # order and gaps per client
    reorder = sum(c.reorder for c in load.clients)
    skipped = sum(c.skipped for c in load.clients)
    missing = 0
    miss_ex = []
    seen_by_room = {r: set(rows[r]) for r in load.rooms}
    for (r, s) in load.seen:
        seen_by_room[r].add(s)
    for c in load.clients:
        if c.vanished:
            continue
        want = seen_by_room[c.room]
        m = sorted(want - set(c.got) - c.pending)
        if m:
            missing += len(m)
            if len(miss_ex) < 3:
                miss_ex.append(f"{c.name} lacks {m[:5]}{'...' if len(m) > 5 else ''}")
    res["order"] = reorder + skipped + missing
    if res["order"]:
        P.append(("order", f"order: {reorder} out of order, {skipped} skipped live, {missing} "
                 f"never received; " + "; ".join(miss_ex)))
    # gap_too_large: the client paged history; what it could not get from
    # there by the end (pending) is a hole, whether or not history has it now
    res["gap_too_large"] = sum(c.gap_too_large for c in load.clients)
    res["fills"] = sum(c.fills for c in load.clients)
    res["paged"] = sum(c.paged for c in load.clients)
    res["fills_lagged"] = sum(c.fill_lagged for c in load.clients)
    res["pended"] = sum(c.pended for c in load.clients)
    if res["gap_too_large"] and not gap_ok:
        # with the default buffers (1,000 recent, 1,000 replay) the single
        # faults never outrun them: a gap_too_large there means replay or
        # ordered delivery gave up on what it could have sent, even if history
        # then had every seq (gap_ok: --chaos, or FAULTS_CHAT_ENV setting a
        # buffer)
        P.append(("order", f"{res['gap_too_large']} gap_too_large answers where the buffers "
                  f"cover every gap (default CHAT_RECENT_MAX and CHAT_REPLAY_MAX, no --chaos)"))
        res["order"] += res["gap_too_large"]
    unrec = [(c, sorted(c.pending)) for c in load.clients if c.pending and not c.vanished]
    res["unrecovered"] = sum(len(v) for _, v in unrec)
    stored = len({(c.room, s) for c, v in unrec for s in v if s in rows[c.room]})
    if res["unrecovered"]:
        P.append(("holes", f"{res['unrecovered']} seqs missed in a gap_too_large never came from "
                  f"history ({stored} of them are in history now): " + "; ".join(
                      f"{c.name} {v[:5]}" for c, v in unrec[:3])))
    odd = {}
    for c in load.clients:
        for code, n in c.errors.items():
            if code not in ("unavailable", "gap_too_large"):   # unavailable: resend, expected
                odd[code] = odd.get(code, 0) + n
    if odd:
        P.append(("errors", f"unexpected error frames: {odd}"))
    # the column: history's holes, and the unrecovered seqs history has now
    # (those it lacks are among its holes already)
    res["holes"] = sum(len(v) for v in holes.values()) + stored
    if res["holes"] > stored:
        ex = [f"{r}: {v[:5]}" for r, v in holes.items() if v][:3]
        P.append(("holes", f"{res['holes'] - stored} holes in history: "
                  + "; ".join(ex)))
    res["unacked"] = load.unacked()
    if res["unacked"] or not drained:
        ex = [f"{c.name}: {list(c.unacked)[:2]} errors {c.errors}" for c in senders if c.unacked][:2]
        P.append(("unacked", f"{res['unacked']} messages never acked after the drain: "
                  + "; ".join(ex)))
    heads = load.heads()
    live = [c for c in load.clients if not c.vanished]
    # caught up: nothing pending from a gap fill either (Load.converge)
    def caught_up(c):
        return c.online and c.last >= heads[c.room] and not c.pending and not c.need_fill
    back = sum(1 for c in live if caught_up(c))
    res["back"] = f"{back}/{len(live)}"
    if back != len(live) or not converged:
        ex = [f"{c.name} online={c.online} last={c.last} head={heads[c.room]} "
              f"pending={len(c.pending)} errors={c.errors}" for c in live if not caught_up(c)][:3]
        P.append(("back", f"clients not back: {len(live) - back}: " + "; ".join(ex)))
    rt = [t for c in load.clients for t in c.reconnect_times]
    res["reconnects"] = len(rt)
    res["reconnect_max"] = max(rt) if rt else None
    res["ack_max"] = max((c.ack_latency_max for c in senders), default=0.0)
    slow = max(senders, key=lambda c: c.ack_latency_max, default=None)
    res["slowest"] = slow.slowest if slow else None
    res["rss_mib"] = max(cluster.rss_max.values(), default=0) / 1024
    if res["rss_mib"] > rss_limit_mib:
        P.append(("rss", f"node RSS {res['rss_mib']:.0f} MiB over the bound {rss_limit_mib} MiB"))
    if dead:
        P.append(("crash", "node crashed: " + ", ".join(f"{n} (exit {rc})" for n, rc in dead)))
    res["ok"] = not P
    return res
