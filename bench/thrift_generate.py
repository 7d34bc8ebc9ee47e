"""Section 2: Thrift ``generate`` of a 10k-row table, ours against osquery-python 3.1.1.

Both servers run in their own process and serve the same 10,000
``socket_bytes``-shaped rows (26 columns, realistic values, see
:mod:`bench.rows`), each building its natural row objects from the same
precomputed values on every call, so the kernel is out of the picture and
what is timed is the serving path: table call, conversion to osquery
strings, Thrift encoding and the socket.

- **stock** (:mod:`bench.stock_server`): an ``osquery.TablePlugin`` in
  ``osquery.ExtensionManager()``, served as ``osquery.management.start_extension``
  serves it (``TSimpleServer``, ``TBinaryProtocolFactory``, generated
  ``Processor``), unregistered.
- **ours** (:mod:`bench.ours_server`): ``ExtensionRuntime`` registered with a
  test osquery core, the table behind ``TableCalls``.

The client (:mod:`bench.thrift_client`) plays osquery core: one connection
per server, ``call("table", name, {"action": "generate", "context": "{}"})``,
timed round trip, decoded with thrift's C codec. Each response is checked:
10,000 rows, and for ours every value equal to the osquery string of the
typed value (``None`` → ``""``, ``True`` → ``"1"``); the stock path's
``str()`` conversion is counted, not failed.

Then, when a socket fleet is alive, the real ``readegress extension``
process is timed serving the real ``socket_bytes`` table the same way.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from bench import report
from bench.children import Children, env_with_bench_path, python_argv
from bench.extension_process import ExtensionProcess
from bench.fleet import FleetState
from bench.thrift_client import ExtensionCaller, connect_when_ready
from bench.timing import Timing, repeat, repeat_interleaved

TARGET_SPEEDUP = 2.0
BUDGET_S = 20.0


@dataclass
class ThriftResult:
    rows: int
    timings: dict[str, Timing] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _expected_strings(n_rows: int) -> list[dict[str, str]]:
    from bench.rows import synthetic_values
    from readegress.tables.spec import load_specs

    names = load_specs()["socket_bytes"].column_names

    def osq(v: object) -> str:
        if v is None:
            return ""
        if v is True:
            return "1"
        if v is False:
            return "0"
        return str(v)

    return [{n: osq(v) for n, v in zip(names, vals)} for vals in synthetic_values(n_rows)]


STOCK = "stock osquery-python 3.1.1 (TSimpleServer)"
OURS = "ours ExtensionRuntime"


@contextlib.contextmanager
def stock_server(children: Children, tmpdir: str, n_rows: int) -> Iterator[ExtensionCaller]:
    """The stock server child and a connected client."""
    path = os.path.join(tmpdir, "stock.em")
    proc = children.spawn(
        python_argv("bench.stock_server", path, str(n_rows)),
        stdin=subprocess.DEVNULL,
        env=env_with_bench_path(),
    )
    try:
        with connect_when_ready(path) as caller:
            yield caller
    finally:
        children.stop(proc)


@contextlib.contextmanager
def ours_server(children: Children, manager_socket: str, n_rows: int) -> Iterator[ExtensionCaller]:
    """Our runtime child (registered with the core) and a connected client."""
    from bench.fleet import _readline_with_deadline

    proc = children.spawn(
        python_argv("bench.ours_server", manager_socket, str(n_rows)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env_with_bench_path(),
    )
    try:
        assert proc.stdout is not None
        line = _readline_with_deadline(proc.stdout, 30.0).strip()
        if not line.startswith("/"):
            raise RuntimeError(f"ours_server did not come up: {line!r}")
        with connect_when_ready(line) as caller:
            yield caller
    finally:
        children.finish(proc)  # EOF on stdin: the runtime deregisters and removes its socket


def check_stock(rows: list[dict[str, str]], n_rows: int) -> str:
    if len(rows) != n_rows:
        raise RuntimeError(f"stock server returned {len(rows)} rows, not {n_rows}")
    values = [v for r in rows for v in r.values()]
    wrong = sum(v in ("None", "True", "False") for v in values)
    return (
        f"stock: {wrong} of {len(values)} values sent as 'None'/'True'/'False'"
        " (str() of NULL/bool; osquery expects '' and '1'/'0')"
    )


def check_ours(rows: list[dict[str, str]], n_rows: int) -> str:
    same = rows == _expected_strings(n_rows)
    return (
        f"ours: {len(rows)} rows, every value the expected osquery string:"
        f" {'yes' if same else 'NO'}"
    )


def measure_synthetic(
    children: Children, tmpdir: str, manager_socket: str | None, n_rows: int, runs: int
) -> ThriftResult:
    """Both servers up at once, their calls interleaved round by round."""
    from bench.ours_server import TABLE

    res = ThriftResult(rows=n_rows)
    with contextlib.ExitStack() as stack:
        stock = stack.enter_context(stock_server(children, tmpdir, n_rows))
        res.notes.append(check_stock(stock.generate("socket_bytes"), n_rows))
        fns: dict[str, Callable[[], object]] = {STOCK: lambda: stock.generate("socket_bytes")}
        if manager_socket is None:
            res.notes.append(
                "ours: SKIPPED (no test osquery core: readegress.testing.core missing)"
            )
        else:
            try:
                ours = stack.enter_context(ours_server(children, manager_socket, n_rows))
                res.notes.append(check_ours(ours.generate(TABLE), n_rows))
                fns[OURS] = lambda: ours.generate(TABLE)
            except Exception as e:  # report, keep benchmarking the rest
                res.notes.append(f"ours: FAILED: {type(e).__name__}: {e}")
        res.timings = repeat_interleaved(fns, runs=runs, budget_s=BUDGET_S, warmup=0)
    return res


@dataclass(frozen=True)
class RealResult:
    timing: Timing
    rows: int
    argv: str
    rss_mb: float  # extension VmRSS after the calls
    hwm_mb: float  # its peak VmRSS


def measure_real(
    children: Children, manager_socket: str, tmpdir: str, fleet: FleetState, runs: int
) -> RealResult:
    """The real extension serving the real socket_bytes at the live fleet."""
    from bench.procstat import status_kb

    ext = ExtensionProcess(children, manager_socket, os.path.join(tmpdir, "extension-real.log"))
    try:
        path = ext.wait_registered()
        with connect_when_ready(path) as caller:
            count = len(caller.generate("socket_bytes"))
            timing = repeat(
                lambda: caller.generate("socket_bytes"), runs=runs, budget_s=BUDGET_S, warmup=0
            )
        return RealResult(
            timing,
            count,
            shlex.join(ext.argv),
            status_kb(ext.pid, "VmRSS") / 1024,
            status_kb(ext.pid, "VmHWM") / 1024,
        )
    finally:
        ext.close()


def run(
    children: Children,
    tmpdir: str,
    manager_socket: str | None,
    n_rows: int,
    runs: int,
    fleet: FleetState | None,
) -> ThriftResult:
    report.heading(f"2. Thrift generate of {n_rows} rows: ours vs osquery-python 3.1.1 stock")
    report.note(
        'client: call("table", NAME, {"action":"generate","context":"{}"}) round trip, one'
        " TSocket(unix)+TBufferedTransport+TBinaryProtocol connection per server"
    )
    report.note(f"stock: python -m bench.stock_server SOCKET {n_rows}")
    report.note(f"ours : python -m bench.ours_server MANAGER_SOCKET {n_rows}")
    res = measure_synthetic(children, tmpdir, manager_socket, n_rows, runs)
    print_result(res)
    if fleet is not None and manager_socket is not None:
        try:
            real = measure_real(children, manager_socket, tmpdir, fleet, runs)
        except Exception as e:
            report.note(f"real socket_bytes over Thrift: FAILED: {type(e).__name__}: {e}")
        else:
            print(f"\n   real socket_bytes over Thrift, fleet of {fleet.connections} connections")
            report.note(f"extension: {real.argv}")
            report.table(
                ["measurement", "ms median [min-max]", "runs", "rows", "ext RSS MB", "peak MB"],
                [
                    [
                        "ours: generate socket_bytes (real table)",
                        real.timing.ms(),
                        len(real.timing.runs),
                        real.rows,
                        f"{real.rss_mb:.1f}",
                        f"{real.hwm_mb:.1f}",
                    ]
                ],
            )
            ok = real.rows >= fleet.sockets
            report.note(
                f"check: {real.rows} rows >= {fleet.sockets} fleet sockets: {'yes' if ok else 'NO'}"
            )
    return res


def print_result(res: ThriftResult) -> None:
    rows: list[Sequence[object]] = []
    stock = res.timings.get(STOCK)
    for label, t in res.timings.items():
        speed = f"{stock.median / t.median:.2f}x" if stock is not None else "-"
        rows.append([label, t.ms(), len(t.runs), speed])
    print()
    report.table(["server", "ms median [min-max]", "runs", "speed vs stock"], rows)
    for n in res.notes:
        report.note(n)
    ours = res.timings.get(OURS)
    if stock is not None and ours is not None:
        s = stock.median / ours.median
        report.note(
            f"target: ours >= {TARGET_SPEEDUP:.0f}x faster than stock: {s:.2f}x"
            f" {report.verdict(s, TARGET_SPEEDUP, at_most=False)}"
        )
