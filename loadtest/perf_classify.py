#!/usr/bin/python3
"""perf_classify: where a process's CPU goes, by kind, from a `perf record -g` file
(docs/cost.md). Each sample is charged to the system call it happened in (the
outermost kernel frame: a writev's loopback TCP receive and wakeup included),
to sleeping/waking in epoll_wait, to an interrupt, or, in user space, to the
library of its leaf frame. Usage:
  perf script -i results/dm_profile.perf.data -F comm,pid,tid,ip,sym,dso > s.txt
  /usr/bin/python3 loadtest/perf_classify.py s.txt
Multiply a share by the process's µs per message (the run's summary) for µs."""
import sys, collections, re
samples = collections.defaultdict(collections.Counter)
tot = collections.Counter()
SYS = [  # (frame substring, category) searched from leaf to root in kernel frames
 ('do_writev', 'k:writev (socket send)'), ('vfs_writev', 'k:writev (socket send)'),
 ('ksys_write', 'k:write (socket send)'), ('__sys_sendto', 'k:send/sendto'), ('__sys_sendmsg', 'k:sendmsg'),
 ('ksys_read', 'k:read (socket recv)'), ('__sys_recvfrom', 'k:recv/recvfrom'), ('do_readv', 'k:readv'),
 ('do_epoll_wait', 'k:epoll_wait (sleep/wake)'), ('do_epoll_ctl', 'k:epoll_ctl'),
 ('__x64_sys_ftruncate', 'k:tool (malloc_count writer)'), ('clock_nanosleep', 'k:tool (malloc_count writer)'),
 ('__x64_sys_pwrite64', 'k:pwrite (WAL)'), ('__x64_sys_fdatasync', 'k:fsync'), ('__x64_sys_openat','k:open'),
 ('__x64_sys_accept', 'k:accept'), ('asm_exc_page_fault', 'k:page fault'),
 ('asm_sysvec', 'k:interrupt'), ('irqentry', 'k:interrupt'), ('handle_softirqs', 'k:softirq'),
]
def flush(comm, frames):
    if not comm or not frames: return
    tot[comm] += 1
    leaf_sym, leaf_dso = frames[0]
    if leaf_dso == '[kernel.kallsyms]':
        cat = 'k:other'
        kf = [f for f in frames if f[1] == '[kernel.kallsyms]']
        for sym, dso in reversed(kf):   # the outermost frame: the syscall (its softirq included)
            for sub, c in SYS:
                if sub in sym: cat = c; break
            if cat != 'k:other': break
    else:
        d = leaf_dso.split('/')[-1]
        cat = 'u:' + d
    samples[comm][cat] += 1
comm = None; frames = []
for line in open(sys.argv[1], errors='replace'):
    if not line.strip():
        flush(comm, frames); comm = None; frames = []; continue
    if not line.startswith('\t') and not line.startswith(' '):
        flush(comm, frames); frames = []
        comm = line.split()[0]
        continue
    m = re.match(r'\s*([0-9a-f]+)\s+(.*)\s+\((.*)\)\s*$', line)
    if m: frames.append((m.group(2), m.group(3)))
flush(comm, frames)
for c in sorted(tot, key=lambda k: -tot[k]):
    print(f"== {c}: {tot[c]} samples")
    for cat, n in samples[c].most_common(25):
        print(f"  {100*n/tot[c]:5.1f}%  {cat}")
