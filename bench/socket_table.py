"""Section 1: the full ``socket_bytes`` table against ``ss -tinpe`` and psutil.

At each fleet size N (N established loopback TCP connections, both ends
held by fleet processes, so 2N sockets), measured in the same run:

- **ours, warm**: ``SELECT * FROM socket_bytes`` through the embedded engine
  (``readegress.sql.local.open_local_engine``) with one ``TableEnv`` kept
  across every run and size, as the running extension keeps it. It includes
  the sock_diag dump, the /proc fd map refresh, building the rows and
  SQLite reading every cell back into Python tuples.
- **ours, cold CLI**: wall time of ``readegress query --json "SELECT * FROM
  socket_bytes"`` as a subprocess, interpreter start, imports and JSON
  output included (what a user at a shell pays).
- **peer ``ss -tinpe``**: wall time of the subprocess, stdout drained into a
  pipe and discarded. It does the same kernel work (sock_diag dump with
  tcp_info, /proc fd scan for ``-p``) and prints the same facts (bytes,
  owners), so it is the natural peer; it does not parse its own output, and
  neither do we time any consumer of ours.
- **peer ``psutil.net_connections(kind="tcp")``** in-process: /proc/net/tcp{,6}
  plus a /proc fd scan. It has **no byte counters**: it is the fastest Python
  way to list sockets with owners, so it bounds what a Python table could
  cost without tcp_info, not an equivalent output.

Diagnostic rows break the warm figure down (monitor snapshot alone; the
table's generate without SQLite) so a regression can be placed.

Correctness while here: the table must have at least 2N rows, and the
``bytes_sent``/``bytes_received`` sums over the fleet's sockets must equal
what the fleet sent.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import report
from bench.fleet import ConnectionFleet, FleetState
from bench.procstat import host_sockets
from bench.timing import Timing, cpu_clock, ratio, repeat_interleaved

SQL = "SELECT * FROM socket_bytes"
TARGET_WARM_VS_SS = 0.35
#: One fleet size stops adding rounds once its timed runs took this long in all.
BUDGET_S = 60.0
SUBPROCESS_TIMEOUT_S = 120.0


def readegress_cli() -> list[str]:
    """The installed ``readegress`` console script next to this interpreter."""
    script = os.path.join(os.path.dirname(sys.executable), "readegress")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "readegress"]


def ss_command() -> list[str]:
    return [shutil.which("ss") or "/usr/bin/ss", "-tinpe"]


def cli_command() -> list[str]:
    return [*readegress_cli(), "query", "--json", SQL]


def run_drained(argv: Sequence[str]) -> int:
    """Run ``argv`` with stdout to a pipe read to the end and discarded; returns its size."""
    out = subprocess.run(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=True,
    ).stdout
    return len(out)


@dataclass
class Correctness:
    rows: int
    fleet_rows: int
    fleet_sent: int
    fleet_received: int
    expected_bytes: int
    expected_fleet_rows: int

    @property
    def ok(self) -> bool:
        return (
            self.fleet_sent == self.expected_bytes
            and self.fleet_received == self.expected_bytes
            and self.fleet_rows >= self.expected_fleet_rows
        )


@dataclass
class SizeResult:
    connections: int
    sockets: int
    timings: dict[str, Timing] = field(default_factory=dict)
    correctness: Correctness | None = None
    notes: list[str] = field(default_factory=list)


def check_rows(
    names: Sequence[str], rows: Sequence[Sequence[Any]], state: FleetState
) -> Correctness:
    col = {n: i for i, n in enumerate(names)}
    pid_i, sent_i, recv_i = col["pid"], col["bytes_sent"], col["bytes_received"]
    pids = set(state.pids)
    fleet = [r for r in rows if r[pid_i] in pids]
    return Correctness(
        rows=len(rows),
        fleet_rows=len(fleet),
        fleet_sent=sum(r[sent_i] or 0 for r in fleet),
        fleet_received=sum(r[recv_i] or 0 for r in fleet),
        expected_bytes=state.bytes_total,
        expected_fleet_rows=state.sockets,
    )


class WarmTable:
    """The in-process engine with one ``TableEnv`` for the whole benchmark."""

    def __init__(self) -> None:
        from readegress.sql.local import open_local_engine
        from readegress.tables.base import TableEnv

        self.env = TableEnv()
        self.engine, self.calls = open_local_engine(self.env)

    def query(self) -> tuple[list[str], list[tuple[Any, ...]]]:
        return self.engine.query(SQL)

    def generate_only(self) -> int:
        from readegress.tables.context import QueryContext

        return len(self.calls.generate("socket_bytes", QueryContext.of(())))

    def snapshot_only(self) -> int:
        return len(self.env.snapshot().sockets)

    def close(self) -> None:
        self.calls.close()
        self.engine.close()
        self.env.close()


def measure_size(
    fleet: ConnectionFleet,
    warm: WarmTable,
    connections: int,
    runs: int,
    clock: Callable[[], float] = time.perf_counter,
) -> SizeResult:
    state = fleet.grow(connections)
    res = SizeResult(connections=state.connections, sockets=state.sockets)
    if len(state.pids) > 1:
        res.notes.append(
            f"fleet held by {len(state.pids)} processes (RLIMIT_NOFILE caps one at"
            f" {fleet.per_holder} connections)"
        )

    import psutil

    fns: dict[str, Callable[[], object]] = {
        "ours warm: SELECT * FROM socket_bytes (in-process)": warm.query,
        "ours cold: readegress query --json (subprocess)": lambda: run_drained(cli_command()),
        "peer: ss -tinpe (subprocess)": lambda: run_drained(ss_command()),
        'peer: psutil.net_connections("tcp")': lambda: psutil.net_connections(kind="tcp"),
        "  diag: SocketMonitor snapshot only": warm.snapshot_only,
        "  diag: socket_bytes generate, no SQLite": warm.generate_only,
    }
    before = host_sockets()
    res.timings = repeat_interleaved(fns, runs=runs, budget_s=BUDGET_S, clock=clock)
    after = host_sockets()
    names, rows = warm.query()
    res.correctness = check_rows(names, rows, state)
    drift = abs((after.tcp + after.time_wait) - (before.tcp + before.time_wait))
    foreign = before.tcp + before.time_wait - state.sockets - len(state.pids) * 2
    res.notes.append(
        f"host sockets before: {before}; after: {after}"
        + (" -- NOISY: other sockets came or went during the runs" if drift > 100 else "")
        + (
            f" -- {foreign} TCP sockets (incl. TIME_WAIT) besides the fleet: other activity;"
            " ss and ours skip TIME_WAIT, psutil parses it"
            if foreign > 100
            else ""
        )
    )
    return res


def ensure_bytecode() -> str:
    """Compile the readegress package's bytecode where it is imported from, as
    ``pip install`` does; returns a note for the report.

    A cold ``readegress query`` without ``__pycache__`` compiles every module it
    imports from source at every start (~55 ms of CPU measured at 10k
    connections): what a shell with ``PYTHONDONTWRITEBYTECODE=1`` (this project's
    dev shells) or a read-only source tree would time, not an installed package.
    """
    import compileall

    import readegress

    pkg = os.path.dirname(readegress.__file__)
    try:
        ok = compileall.compile_dir(pkg, quiet=2)
    except OSError as e:
        return f"bytecode: could not compile {pkg} ({e}); cold runs compile from source"
    if not ok:
        return f"bytecode: some modules under {pkg} did not compile; cold runs compile them"
    return f"bytecode: {pkg} compiled first (as pip install does)"


def run(
    fleet: ConnectionFleet, sizes: Sequence[int], runs: int, cpu: bool = False
) -> list[SizeResult]:
    """Measure every size on the (growing) fleet, left at the largest size; prints as it goes.

    ``cpu``: time CPU (this process's threads + the reaped subprocess) instead
    of wall time (:func:`bench.timing.cpu_clock`).
    """
    report.heading("1. socket_bytes full table vs ss -tinpe and psutil (loopback TCP fleet)")
    report.note(f"ours warm : engine.query({SQL!r}) with one TableEnv kept across runs")
    report.note(f"ours cold : {shlex.join(cli_command())}")
    report.note(f"ours cold : {ensure_bytecode()}")
    report.note(f"peer ss   : {shlex.join(ss_command())} > pipe (drained, discarded)")
    report.note('peer psutil: psutil.net_connections(kind="tcp") in-process -- NO byte counters')
    report.note(
        f"medians of up to {runs} runs after 1 warm-up, the measurements of one size"
        " interleaved round by round; [min-max] in ms"
        + (" of CPU (user+sys: this process, or the subprocess), not wall time" if cpu else "")
    )
    results: list[SizeResult] = []
    warm = WarmTable()
    try:
        for n in sorted(sizes):
            res = measure_size(fleet, warm, n, runs, cpu_clock if cpu else time.perf_counter)
            results.append(res)
            print_size(res)
    finally:
        warm.close()
    print_summary(results)
    return results


def _key(res: SizeResult, prefix: str) -> Timing:
    return next(t for label, t in res.timings.items() if label.startswith(prefix))


def print_size(res: SizeResult) -> None:
    print(f"\n   N = {res.connections} connections ({res.sockets} fleet sockets)")
    for n in res.notes:
        report.note(n)
    ss = _key(res, "peer: ss")
    ps = _key(res, "peer: psutil")
    rows = []
    for label, t in res.timings.items():
        rows.append([label, t.ms(), len(t.runs), f"{ratio(t, ss):.2f}x", f"{ratio(t, ps):.2f}x"])
    report.table(["measurement", "ms median [min-max]", "runs", "/ ss", "/ psutil"], rows)
    c = res.correctness
    if c is not None:
        label = "OK" if c.ok else "WRONG"
        report.note(
            f"check: {c.rows} rows (>= 2N = {2 * res.connections}: "
            f"{'yes' if c.rows >= 2 * res.connections else 'NO'}); fleet rows {c.fleet_rows}; "
            f"fleet bytes_sent {c.fleet_sent}, bytes_received {c.fleet_received}, "
            f"fleet sent {c.expected_bytes}: {label}"
        )


def print_summary(results: Sequence[SizeResult]) -> None:
    if not results:
        return
    print("\n   summary (ratios of medians; < 1.00x means ours is faster)")
    rows = []
    for res in results:
        warm = _key(res, "ours warm")
        cold = _key(res, "ours cold")
        ss = _key(res, "peer: ss")
        ps = _key(res, "peer: psutil")
        rows.append(
            [
                res.connections,
                f"{warm.median * 1e3:.1f}",
                f"{cold.median * 1e3:.1f}",
                f"{ss.median * 1e3:.1f}",
                f"{ps.median * 1e3:.1f}",
                f"{ratio(warm, ss):.2f}x",
                f"{ratio(cold, ss):.2f}x",
                f"{ratio(warm, ps):.2f}x",
            ]
        )
    report.table(
        ["N", "warm ms", "cold ms", "ss ms", "psutil ms", "warm/ss", "cold/ss", "warm/psutil"],
        rows,
    )
    last = max(results, key=lambda r: r.connections)
    r = ratio(_key(last, "ours warm"), _key(last, "peer: ss"))
    report.note(
        f"target at N={last.connections}: warm socket_bytes <= {TARGET_WARM_VS_SS}x ss -tinpe:"
        f" {r:.2f}x {report.verdict(r, TARGET_WARM_VS_SS, at_most=True)}"
        + ("" if last.connections == 10_000 else " (target is stated for N=10000)")
    )
