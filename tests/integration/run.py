#!/usr/bin/env python3
"""Entry point of the chatd integration suite (acceptance tests of
protocol.md). Runs each group's tests in order, one line per test, then the
summary line `N passed, N failed[, N skipped]`; exits 1 on any failure.

  /usr/bin/python3 tests/integration/run.py [--chatd PATH] [--only core,multinode]
      [--seed N] [--keep] [--filter SUBSTRING]
"""
import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

GROUPS = ["core", "multinode", "history", "presence", "workers", "cluster", "edge", "readstate",
          "updates", "api"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chatd", default=os.environ.get("CHATD_BIN", harness.DEFAULT_CHATD))
    ap.add_argument("--only", default=",".join(GROUPS))
    ap.add_argument("--filter", default="", help="run only tests whose name contains this")
    ap.add_argument("--seed", type=int, default=None, help="seed of the property tests")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args()

    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    for g in groups:
        if g not in GROUPS:
            print(f"unknown group {g!r}; groups: {', '.join(GROUPS)}")
            return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    os.environ["CHATD_TEST_SEED"] = str(seed)
    workdir = tempfile.mkdtemp(prefix="chatd-itest-")
    os.chmod(workdir, 0o755)
    harness.RUN = harness.Run(os.path.abspath(args.chatd), workdir, args.keep)
    for g in groups:
        __import__(g)

    passed = failed = skipped = 0
    t0 = time.time()
    print(f"# chatd={args.chatd} workdir={workdir} seed={seed}", flush=True)
    try:
        for t in harness.TESTS:
            if t["group"] not in groups or args.filter not in t["name"]:
                continue
            full = f"{t['group']}.{t['name']}"
            harness.RUN.test_name = full
            start = time.time()
            status, reason = run_one(t)
            dur = time.time() - start
            if status == "PASS":
                # a sanitizer report that did not crash the node still fails
                bad = harness.RUN.sanitizer_reports()
                if bad:
                    status, reason = "FAIL", f"sanitizer report in a node's log: {bad}"
            logs = []
            if status == "FAIL":
                for n in harness.RUN.nodes:
                    if n.starts:
                        logs.append(f"    log {n.name}: {n.log_tail(12)}")
            harness.RUN.cleanup_nodes()
            if status == "PASS":
                passed += 1
                print(f"PASS {full} ({dur:.1f}s)", flush=True)
            elif status == "SKIP":
                skipped += 1
                print(f"SKIP {full}: {reason}", flush=True)
            else:
                failed += 1
                print(f"FAIL {full} ({dur:.1f}s): {reason}", flush=True)
                for ln in logs:
                    print(ln[:2000], flush=True)
    finally:
        harness.RUN.cleanup_nodes()
        harness.RUN.stop_services()
        if not args.keep and failed == 0:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"# total {time.time()-t0:.0f}s; logs in {workdir}" if failed or args.keep
          else f"# total {time.time()-t0:.0f}s", flush=True)
    line = f"{passed} passed, {failed} failed"
    if skipped:
        line += f", {skipped} skipped"
    print(line, flush=True)
    return 1 if failed else 0


def run_one(t):
    try:
        for need in t["needs"]:
            if need == "redis":
                harness.RUN.need_redis()
            elif need == "pg":
                harness.RUN.need_pg()
    except harness.TestSkip as e:
        return "SKIP", str(e)
    except Exception as e:
        return "FAIL", f"service start: {e}"

    async def body():
        try:
            await asyncio.wait_for(t["fn"](), t["timeout"])
        finally:
            harness.RUN.abort_clients()

    t0 = time.time()
    try:
        asyncio.run(body())
        return "PASS", ""
    except harness.TestSkip as e:
        return "SKIP", str(e)
    except harness.TestFailure as e:
        return "FAIL", str(e)
    except asyncio.TimeoutError as e:
        if time.time() - t0 >= t["timeout"] - 0.5:
            return "FAIL", f"test timeout ({t['timeout']}s)"
        return "FAIL", f"timeout inside the test: {where_of(e)}"
    except Exception as e:
        return "FAIL", f"{type(e).__name__}: {e} {where_of(e)}"


def where_of(e):
    tb = traceback.extract_tb(e.__traceback__)
    for fr in reversed(tb):
        if fr.filename.startswith(HERE) and not fr.filename.endswith("run.py"):
            return f"at {os.path.basename(fr.filename)}:{fr.lineno}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
