"""``python -m bench fleet``: replay and fleet report vs DuckDB's plain range join and jq.

``python -m bench fleet [--mb 1000] [--runs 3] [--hosts 12] [--keep PATH]``. One log of
``--mb`` MB is generated (:mod:`bench.fleet_log`: a fleet's realistic noise, a few
chains), then, round by round in rotating order, each contender runs as a command on
the same file: ``readegress replay LOG`` (DuckDB engine), ``readegress fleet report LOG
--json``, DuckDB loading the file with ``read_json`` and running the plain read→connect
range join (:func:`bench.replay.duckdb_sql`, the same catalogue and classifier), and
``jq -c 'select(.columns.operation == "open")' | wc -l`` (parse and count). Figures are
medians of ``--runs`` wall times with [min-max]; peak RSS is the child's ru_maxrss.
Targets (printed, never an exit status): replay <= 1.0x DuckDB's join time, fleet
report >= 5x jq's MB/s, RSS <= 1 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from bench.fleet_log import write


def _timed(argv: list[str], *, shell: bool = False) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one command, output discarded."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv if not shell else ["/bin/sh", "-c", argv[0]],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - started
        if status != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
            print(f"  warning: {' '.join(argv)[:120]} exited {status}: {tail}", file=sys.stderr)
    return took, usage.ru_maxrss / 1024


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench fleet")
    p.add_argument("--mb", type=float, default=1000.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--hosts", type=int, default=12)
    p.add_argument("--keep", help="write the log here and keep it")
    p.add_argument("--spark", action="store_true", help="also time --engine spark (local mode)")
    args = p.parse_args(list(argv))
    tmp = tempfile.mkdtemp(prefix="readegress-bench-fleet-")
    path = args.keep or os.path.join(tmp, "fleet.log")
    try:
        if not os.path.exists(path):
            t = time.perf_counter()
            info = write(path, int(args.mb * 1e6), hosts=args.hosts)
            print(f"generated {info.lines} lines, {info.bytes / 1e6:.0f} MB, "
                  f"{len(info.hosts)} hosts, {len(info.chains)} chains in "
                  f"{time.perf_counter() - t:.0f} s")  # fmt: skip
        size = os.path.getsize(path) / 1e6
        py = sys.executable
        db_script = os.path.join(tmp, "duckdb_join.py")
        with open(db_script, "w") as f:
            f.write(
                f"import sys\nsys.path.insert(0, {os.getcwd()!r})\n"
                "import duckdb\nfrom bench.replay import duckdb_sql\n"
                "from readegress.detect.config import load_config\n"
                "con = duckdb.connect()\n"
                "print(len(con.execute(duckdb_sql(sys.argv[1], load_config())).fetchall()))\n"
            )
        contenders: dict[str, list[str]] = {
            "replay (duckdb engine)": [py, "-m", "readegress.cli", "replay", path],
            "fleet report --json": [py, "-m", "readegress.cli", "fleet", "report", path, "--json"],
            "DuckDB read_json + range join": [py, db_script, path],
        }
        if shutil.which("jq"):
            contenders["jq select + count"] = [
                f"jq -c 'select(.columns.operation == \"open\")' {path} | wc -l"
            ]
        times: dict[str, list[float]] = {k: [] for k in contenders}
        rss: dict[str, float] = dict.fromkeys(contenders, 0.0)
        names = list(contenders)
        load = os.getloadavg()
        for r in range(args.runs):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                took, mb = _timed(contenders[name], shell=name.startswith("jq"))
                times[name].append(took)
                rss[name] = max(rss[name], mb)
        print(f"\nlog {size:.0f} MB, {args.runs} runs each, load average before "
              f"{load[0]:.1f}, after {os.getloadavg()[0]:.1f} (2 shared cores)")  # fmt: skip
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in names:
            v = times[name]
            print(f"  {name:<32} {med[name]:7.2f} s [{min(v):.2f}-{max(v):.2f}]  "
                  f"{size / med[name]:7.1f} MB/s  peak RSS {rss[name]:6.0f} MB")  # fmt: skip
        join = med["DuckDB read_json + range join"]
        ratio = med["replay (duckdb engine)"] / join
        print(f"\nreplay / DuckDB join: {ratio:.2f}x (target <= 1.0x: "
              f"{'PASS' if ratio <= 1.0 else 'MISS'})")  # fmt: skip
        if "jq select + count" in med:
            x = med["jq select + count"] / med["fleet report --json"]
            print(f"fleet report MB/s / jq MB/s: {x:.1f}x (target >= 5x: "
                  f"{'PASS' if x >= 5 else 'MISS'})")  # fmt: skip
        worst = max(rss["replay (duckdb engine)"], rss["fleet report --json"])
        print(f"peak RSS (replay, report): {worst:.0f} MB (target <= 1024 MB: "
              f"{'PASS' if worst <= 1024 else 'MISS'})")  # fmt: skip
        if args.spark:
            took, mb = _timed([py, "-m", "readegress.cli", "replay", "--engine", "spark", path])
            print(f"spark local mode: {took:.1f} s, {mb:.0f} MB")
    finally:
        # (with --keep the log is not in it: it holds the join's script only)
        shutil.rmtree(tmp, ignore_errors=True)
    _ = resource
    return 0
