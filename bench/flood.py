"""``python -m bench flood``: the correlation core under a flood of catalogue reads.

One child process per run (so peak RSS is that run's alone) feeds a
:class:`~readegress.detect.core.Correlator` built from the shipped default
config (default ``max_reads``):

1. a *reader* process reads ``/root/.aws/credentials`` at t = 0;
2. ``--reads`` catalogue reads (users' ``~/.ssh/id_*``, ``/etc/shadow``, ...)
   by ``--flooders`` other processes, spread over ``--seconds`` (inside one
   120 s window) — the shape of a mass credential read or of a backup job;
3. the reader connects to a public address at the end.

Printed per run: whether the reader's chain was still detected, peak RSS
(``VmHWM``) and RSS growth over the feed, reads held, evicted and collapsed,
seconds to feed. The peer is the same child feeding the same events into no
correlator (event construction only): the ratio is the memory the core adds.

The child only imports ``readegress`` and ``bench.procstat``, so it also runs
against another checkout: ``PYTHONPATH=<checkout>/extension:. python -m bench
flood`` measures that checkout's core (how the before/after numbers of the
flood change were taken).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any


def _events(n: int, flooders: int, seconds: float) -> Iterator[Any]:
    from readegress.detect.events import Egress, Proc, SensitiveRead

    t0 = 1_764_300_000.0
    reader = Proc(pid=7, ppid=1000, executable="/usr/bin/python3", uid=1000, auid=1000)
    yield SensitiveRead("h", t0, reader, "/root/.aws/credentials", "bench")
    for i in range(n):
        pid = 10_000 + i % flooders
        proc = Proc(pid=pid, ppid=1000, executable="/usr/bin/cat", uid=0, auid=1000)
        path = f"/home/u{i % 5000}/.ssh/id_{'rsa' if i % 2 else 'ed25519'}"
        yield SensitiveRead("h", t0 + 1 + seconds * i / n, proc, path, "bench")
    yield Egress("h", t0 + seconds + 2, reader, "8.8.8.8", 443, "bench")


def child(n: int, flooders: int, seconds: float, mode: str) -> None:
    """One run: feed the events (into a Correlator unless ``mode == "peer"``); print JSON."""
    import time

    from bench.procstat import status_kb
    from readegress.detect.config import load_config
    from readegress.detect.core import Correlator

    config = load_config()
    corr = Correlator(config)
    me = os.getpid()
    before = status_kb(me, "VmRSS")
    t = time.perf_counter()
    detected = 0
    for e in _events(n, flooders, seconds):
        if mode == "peer":
            continue
        for d in corr.feed(e):
            detected += d.reader_pid == 7
    out = {
        "mode": mode,
        "detected": detected,
        "seconds": time.perf_counter() - t,
        "rss_growth_kb": status_kb(me, "VmRSS") - before,
        "hwm_kb": status_kb(me, "VmHWM"),
        "held": corr.size()["reads"],
        "stats": {k: v for k, v in corr.stats.items() if "read" in k or "flood" in k},
    }
    print(json.dumps(out))


def _run(n: int, flooders: int, seconds: float, mode: str) -> dict[str, Any]:
    code = f"from bench.flood import child; child({n}, {flooders}, {seconds}, {mode!r})"
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), here) if p)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-500:])
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench flood", description=__doc__)
    ap.add_argument("--reads", type=int, default=1_000_000)
    ap.add_argument("--flooders", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=50.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(list(argv))
    print(
        f"flood: {args.reads:,} catalogue reads by {args.flooders} processes in"
        f" {args.seconds:g} s, one reader of /root/.aws/credentials that then connects out;"
        f" {args.runs} runs each, interleaved"
    )
    ours: list[dict[str, Any]] = []
    peer: list[dict[str, Any]] = []
    for _ in range(args.runs):
        ours.append(_run(args.reads, args.flooders, args.seconds, "core"))
        peer.append(_run(args.reads, args.flooders, args.seconds, "peer"))

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    hwm, peer_hwm = med(ours, "hwm_kb"), med(peer, "hwm_kb")
    print(
        f"  chain detected in {sum(r['detected'] > 0 for r in ours)}/{len(ours)} runs;"
        f" reads held {ours[-1]['held']:,}; counters {ours[-1]['stats']}"
    )
    print(
        f"  peak RSS: core {hwm / 1024:.0f} MiB vs events only {peer_hwm / 1024:.0f} MiB"
        f" (x{hwm / peer_hwm:.2f}); RSS growth {med(ours, 'rss_growth_kb') / 1024:.0f} MiB;"
        f" fed in {med(ours, 'seconds'):.1f} s vs {med(peer, 'seconds'):.1f} s"
        f" (x{med(ours, 'seconds') / med(peer, 'seconds'):.2f}) [medians]"
    )
    return 0
