#!/usr/bin/python3
"""alloc_sites: which code allocates, per message, from uprobes on libc's
malloc/calloc/realloc recorded with DWARF stacks in chatd during a dm run
(docs/cost.md). perf drops most of these events at ~80k/s, so the recorded
ones are a sample: pass how many messages they stand for = recorded events /
(allocation calls per message from malloc_count, dm.sh MALLOC=1). Usage:
  perf probe -x /lib/x86_64-linux-gnu/libc.so.6 --add malloc   (same for calloc, realloc)
  perf record -e probe_libc:malloc -e probe_libc:calloc -e probe_libc:realloc \
      --call-graph dwarf,16384 -p $(pidof chatd) -- sleep 3
  perf script -F event,ip,sym,dso > a.txt; /usr/bin/python3 loadtest/alloc_sites.py a.txt MSGS
  perf probe -d 'probe_libc:*'
glibc's realloc(NULL, n) (every allocation LuaJIT makes through chatd's
l_alloc) tail-calls malloc: both probes fire, and the malloc event has the
realloc event's stack below its first frame. Such a malloc is the realloc's
own and is not counted again."""
import sys, re, collections
by_direct = collections.Counter(); by_chatd = collections.Counter(); by_pair = collections.Counter()
n = 0
prev = (None, None)
def flush(ev, frames):
    global n, prev
    if not ev: return
    below = tuple(frames[1:])
    dup = ev == 'malloc' and prev[0] == 'realloc' and below and below == prev[1]
    prev = (ev, below)
    if dup: return
    # inlined frames take the dso of the next real frame
    fixed = []
    for i, (sym, dso, ip) in enumerate(frames):
        if dso == 'inlined':
            nxt = next((d for _, d, _ in frames[i + 1:] if d != 'inlined'), 'inlined')
            dso = nxt
        fixed.append((sym, dso))
    frames = fixed
    n += 1
    direct = None; chatd_fn = None
    for sym, dso in frames:
        d = dso.split('/')[-1]
        if direct is None and not d.startswith('libc.so') and not re.search(r'alloc|sdsnewlen|sdsMakeRoom|jsonp_|hi_', sym):
            direct = f"{d}:{sym}"
        if chatd_fn is None and d == 'chatd' and not re.search(r'alloc', sym):
            chatd_fn = sym
    by_direct[(ev, direct)] += 1
    by_chatd[chatd_fn] += 1
    by_pair[(chatd_fn, direct)] += 1
ev = None; frames = []
for line in open(sys.argv[1], errors='replace'):
    if not line.strip():
        flush(ev, frames); ev = None; frames = []; continue
    if 'probe_libc:' in line:
        flush(ev, frames); frames = []
        m = re.search(r'probe_libc:(\w+)', line); ev = m.group(1) if m else None; continue
    m = re.match(r'\s*([0-9a-f]+)\s+(.*)\s+\((.*)\)\s*$', line)
    if m: frames.append((m.group(2), m.group(3), m.group(1)))
flush(ev, frames)
msgs = float(sys.argv[2])
print(f"{n} allocation calls in the window; per message (x{1/msgs:.5f}):")
print("-- by direct caller (first frame outside libc)")
for (e, d), c in by_direct.most_common(40): print(f"  {c/msgs:6.2f}  {e:8s} {d}")
print("-- by (first chatd function, direct caller)")
for (f, d), c in by_pair.most_common(45): print(f"  {c/msgs:6.2f}  {f}  <-  {d}")
print("-- by chatd function on the stack (first chatd frame)")
for f, c in by_chatd.most_common(30): print(f"  {c/msgs:6.2f}  {f}")
