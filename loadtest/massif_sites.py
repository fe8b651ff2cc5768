#!/usr/bin/python3
"""massif_sites: the heap of one massif snapshot (the peak by default) by
allocation site, per connection: each leaf of massif's tree is charged to its
first frame in chatd's own code (else to its first library frames), summed
and divided by the number of connections held. Used by connmem.sh MASSIF=1.
Usage: massif_sites.py massif.out CONNS [peak|detailed-snapshot-number]"""
import collections
import os
import re
import sys

CORE = {f for f in os.listdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "core"))
        if f.endswith(".c")}

path, nconn = sys.argv[1], int(sys.argv[2])
want = sys.argv[3] if len(sys.argv) > 3 else "peak"
lines = open(path, errors="replace").read().split("\n")
start = None
snap = None
for i, l in enumerate(lines):
    if l.startswith("snapshot="):
        snap = l.split("=")[1]
    elif l.startswith("heap_tree="):
        kind = l.split("=")[1]
        if (want == "peak" and kind == "peak") or (want != "peak" and snap == want and kind != "empty"):
            start = i + 1
            if want == "peak":
                break
if start is None:
    sys.exit(f"massif_sites: no {want} snapshot with a tree in {path}")
node = re.compile(r"^( *)n(\d+): (\d+) (.*)$")
by_site = collections.Counter()
stack = []
raws = []
for l in lines[start:]:
    m = node.match(l)
    if not m:
        break
    depth, nch, size, desc = len(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
    raw = desc
    desc = re.sub(r"^0x[0-9A-Fa-f]+: ", "", desc)
    stack = stack[:depth] + [desc]
    raws = raws[:depth] + [raw]
    if nch:
        continue
    own = [d for d in stack[1:] if (lambda f: f and f.group(1) in CORE)(re.search(r"\((\w+\.c):\d+\)$", d))]
    site = own[0] if own else None
    if site and "(hmap.c:" in site:     # a map's slots or key copies: charge the map's owner
        owner = next((d for d in own if "(hmap.c:" not in d), "?")
        site = ("hmap slots" if site.startswith("resize") else "hmap key copy") + " <- " + owner
    first = stack[1] if len(stack) > 1 else ""
    lib = re.search(r"\(in \S*/(libwebsockets[\w.-]*\.so)[\w.]*\)", first)
    if lib and site:                    # lws' own allocation, on behalf of this chatd call
        # lws' functions are unnamed: its allocation wrapper's caller's address tells them apart
        caller = raws[2].split(":")[0] if len(raws) > 2 else "?"
        site = f"lws {lib.group(1)} {caller} <- {site}"
    if site is None:
        site = " <- ".join(d[:70] for d in stack[1:4]) or desc
    by_site[site] += size
total = sum(by_site.values())
print(f"{'bytes/conn':>10}  site (massif {want} snapshot, {nconn} connections)")
for site, size in by_site.most_common(40):
    print(f"{size / nconn:10.1f}  {site[:160]}")
print(f"{total / nconn:10.1f}  total useful heap at the snapshot / connections")
