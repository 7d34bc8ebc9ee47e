"""``python -m bench foundation``: the benchmarks of the foundation issue, in one run.

1. ``socket_bytes`` full table at N loopback connections vs ``ss -tinpe`` and
   ``psutil.net_connections`` (:mod:`bench.socket_table`);
2. Thrift generate of 10k rows, our runtime vs osquery-python 3.1.1's stock
   server, then the real table at the largest fleet (:mod:`bench.thrift_generate`);
3. extension RSS and idle CPU (:mod:`bench.extension_idle`).

Every peer is measured in the same run, on the same fleet. All children
(fleet holders, test core, servers, extensions) are stopped on exit, error
or Ctrl-C; only loopback is used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

from bench import extension_idle, machine, report, socket_table, thrift_generate
from bench.children import Children, sigterm_as_interrupt
from bench.core_process import CoreProcess, available
from bench.fleet import ConnectionFleet
from bench.timing import ratio


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > 100_000:
        raise argparse.ArgumentTypeError("sizes must be between 1 and 100000")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench foundation",
        description="socket_bytes vs ss/psutil, Thrift generate vs osquery-python, "
        "extension RSS and idle CPU.",
    )
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=[1000, 5000, 10000],
        help="fleet sizes in connections (default 1000,5000,10000)",
    )
    p.add_argument("--runs", type=int, default=5, help="timed runs per measurement (default 5)")
    p.add_argument(
        "--rows",
        type=int,
        default=10_000,
        help="rows of the synthetic Thrift table (default 10000)",
    )
    p.add_argument(
        "--idle-window",
        type=float,
        default=30.0,
        help="seconds of CPU/RSS sampling per idle phase (default 30)",
    )
    p.add_argument(
        "--idle-warmup", type=float, default=8.0, help="seconds before each idle window (default 8)"
    )
    p.add_argument(
        "--sections", default="1,2,3", help="which sections to run, e.g. 1,3 (default all)"
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="section 1 times wall time (default) or CPU time (user+sys of this process or"
        " of the subprocess), which leaves out time descheduled on a loaded machine",
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    sections = {s.strip() for s in args.sections.split(",")}
    runs = max(1, min(args.runs, 50))
    n_rows = max(1, min(args.rows, 200_000))
    window = max(1.0, min(args.idle_window, 600.0))
    warmup = max(0.0, min(args.idle_warmup, 120.0))
    sigterm_as_interrupt()
    started = time.monotonic()
    machine.describe(["foundation", *argv])
    children = Children()
    tmpdir = tempfile.mkdtemp(prefix="readegress-bench-")
    core: CoreProcess | None = None
    fleet: ConnectionFleet | None = None
    sizes_res: list[socket_table.SizeResult] = []
    thrift_res: thrift_generate.ThriftResult | None = None
    idle_res: list[extension_idle.IdlePhase] = []
    try:
        if available() and sections & {"2", "3"}:
            try:
                core = CoreProcess(children, os.path.join(tmpdir, "osquery.em"))
            except Exception as e:
                report.note(f"test osquery core failed to start: {e}")
        manager = core.socket_path if core is not None else None
        fleet = ConnectionFleet(children)
        if "1" in sections:
            sizes_res = socket_table.run(fleet, args.sizes, runs, cpu=args.clock == "cpu")
        if "2" in sections:
            if fleet.state is None:
                fleet.grow(max(args.sizes))
            thrift_res = thrift_generate.run(children, tmpdir, manager, n_rows, runs, fleet.state)
        fleet.close()
        fleet = None
        if "3" in sections:
            idle_res = extension_idle.run(children, manager, tmpdir, window, warmup)
        print_targets(sizes_res, thrift_res, idle_res)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping children", flush=True)
        return 130
    finally:
        if fleet is not None:
            fleet.close()
        if core is not None:
            core.close()
        children.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n   total wall time {time.monotonic() - started:.0f}s; load average at the end {load}")
    return 0


def print_targets(
    sizes: Sequence[socket_table.SizeResult],
    thrift: thrift_generate.ThriftResult | None,
    idle: Sequence[extension_idle.IdlePhase],
) -> None:
    report.heading("targets")
    rows: list[list[object]] = []
    if sizes:
        last = max(sizes, key=lambda r: r.connections)
        warm = next(t for k, t in last.timings.items() if k.startswith("ours warm"))
        ss = next(t for k, t in last.timings.items() if k.startswith("peer: ss"))
        r = ratio(warm, ss)
        rows.append(
            [
                f"warm socket_bytes / ss -tinpe at N={last.connections}",
                f"{r:.2f}x",
                f"<= {socket_table.TARGET_WARM_VS_SS}x",
                report.verdict(r, socket_table.TARGET_WARM_VS_SS, at_most=True),
            ]
        )
    if thrift is not None:
        stock = thrift.timings.get(thrift_generate.STOCK)
        ours = thrift.timings.get(thrift_generate.OURS)
        if stock is not None and ours is not None:
            s = stock.median / ours.median
            rows.append(
                [
                    f"Thrift generate {thrift.rows} rows, speed-up vs stock",
                    f"{s:.2f}x",
                    f">= {thrift_generate.TARGET_SPEEDUP:.0f}x",
                    report.verdict(s, thrift_generate.TARGET_SPEEDUP, at_most=False),
                ]
            )
        else:
            rows.append(["Thrift generate speed-up vs stock", "n/a", ">= 2x", "NOT MEASURED"])
    for p in idle:
        u = p.usage
        label = p.label + (" (NOISY host)" if extension_idle.noisy(p) else "")
        rows.append(
            [
                f"extension RSS max, {label}",
                f"{u.rss_mb_max:.1f} MB",
                f"<= {extension_idle.TARGET_RSS_MB:.0f} MB",
                report.verdict(u.rss_mb_max, extension_idle.TARGET_RSS_MB, at_most=True),
            ]
        )
        if p.peak_target:
            peak = u.hwm_kb / 1024
            rows.append(
                [
                    f"extension peak RSS (VmHWM), {label}",
                    f"{peak:.1f} MB",
                    f"<= {extension_idle.TARGET_PEAK_MB:.0f} MB",
                    report.verdict(peak, extension_idle.TARGET_PEAK_MB, at_most=True),
                ]
            )
        rows.append(
            [
                f"extension CPU, {label}",
                f"{u.cpu_percent:.2f}%",
                f"<= {extension_idle.TARGET_CPU_PERCENT}%",
                report.verdict(u.cpu_percent, extension_idle.TARGET_CPU_PERCENT, at_most=True),
            ]
        )
    report.table(["target", "measured", "wanted", ""], rows)
