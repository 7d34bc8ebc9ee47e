"""One run of an engine over results logs: load, narrow, correlate (replay and fleet share it)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from readegress.detect.config import Config
from readegress.fleet.pipeline import Correlated, Engine, correlate
from readegress.logs.lines import LineStats, Progress, expand_inputs, total_size
from readegress.logs.results import BadLine, display_name

ENGINES = ("duckdb", "spark")


class EngineUnavailable(RuntimeError):
    """The engine's optional dependency is not installed (the message says which extra)."""


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGINT stop a run as exceptions, so that its engine's files are removed.

    Python's default for SIGTERM ends the process on the spot: a fleet run stopped by a
    timeout or a service manager left its DuckDB database (hundreds of MB) in the temp
    directory. Inside this, SIGTERM raises SystemExit(143) and SIGINT KeyboardInterrupt.
    DuckDB polls for signals and answers either by interrupting its statement with a
    RuntimeError ("Query interrupted") that hides the signal's exception: an error raised
    after a signal is turned back into the signal's. Main thread only (the one Python
    runs handlers in); elsewhere it changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        got.append(signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except Exception:
        if not got:
            raise
        if got[0] == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise SystemExit(128 + got[0]) from None
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@dataclass
class FleetRun:
    engine: Engine
    files: list[str]
    lines: LineStats
    correlated: Correlated
    bad_lines: int
    decoration_keys: tuple[str, ...]
    counts: dict[str, int]

    def summary(self) -> dict[str, Any]:
        return {
            "engine": self.engine.name,
            "files": self.lines.files,
            "unreadable_files": self.lines.unreadable_files,
            "bytes": self.lines.bytes,
            "lines": self.lines.lines,
            "bad_lines": self.bad_lines,
            "row_errors": self.correlated.row_errors,
            **self.counts,
            "fed_events": self.correlated.events,
            "correlated_hosts": self.correlated.hosts,
            "evicted_reads": self.correlated.core.get("evicted_reads", 0),
            "evicted_processes": self.correlated.core.get("evicted_processes", 0),
        }


def decoration_keys(config: Config) -> tuple[str, ...]:
    """The decorations the config's ``[[asset]]`` rules look at (all the engines extract)."""
    return tuple(dict.fromkeys(a.decoration[0] for a in config.assets if a.decoration))


def open_engine(name: str, *, master: Optional[str] = None) -> Engine:
    if name == "duckdb":
        # pyarrow imports numpy, whose OpenBLAS starts a thread per CPU that spins
        # for a while: ~0.1 CPU-s taken from the line pass of a 1 GB log. Nothing
        # here calls BLAS (only if numpy is not imported yet: it reads this then).
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        try:
            import duckdb  # noqa: F401
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise EngineUnavailable(
                f"the duckdb engine needs {e.name}: pip install 'readegress[fleet]'"
            ) from None
        from readegress.fleet.duckdb_engine import DuckDBEngine

        return DuckDBEngine()
    if name == "spark":
        try:
            import pyspark  # noqa: F401
        except ImportError:
            raise EngineUnavailable(
                "the spark engine needs pyspark: pip install 'readegress[spark]'"
            ) from None
        from readegress.fleet.spark_engine import SparkEngine

        return SparkEngine(master=master)
    raise EngineUnavailable(f"unknown engine {name!r} (one of: {', '.join(ENGINES)})")


def run(
    inputs: Sequence[str],
    config: Config,
    on_bad: Callable[[BadLine], None],
    *,
    engine: str = "duckdb",
    master: Optional[str] = None,
    narrowed: bool = True,
    progress: Optional[bool] = None,
    min_score: Optional[int] = None,
) -> FleetRun:
    """Load the logs into the engine, narrow, and correlate per host (``min_score``: the
    candidates to keep, see :func:`~readegress.fleet.pipeline.correlate`)."""
    files = expand_inputs(inputs)
    eng: Any = open_engine(engine, master=master)
    try:
        return _run(
            eng, files, config, on_bad, narrowed=narrowed, progress=progress, min_score=min_score
        )
    except BaseException:
        eng.close()  # its files (DuckDB's database: hundreds of MB) go with it
        raise


def _run(
    eng: Any,
    files: list[str],
    config: Config,
    on_bad: Callable[[BadLine], None],
    *,
    narrowed: bool,
    progress: Optional[bool],
    min_score: Optional[int] = None,
) -> FleetRun:
    show = sys.stderr.isatty() if progress is None else progress
    stats = LineStats()
    bad = [0]

    def count_bad(b: BadLine) -> None:
        bad[0] += 1
        on_bad(b)

    keys = decoration_keys(config)
    eng.load(
        files,
        count_bad,
        stats,
        decoration_keys=keys,
        progress=Progress(total_size(files), sys.stderr) if show else None,
    )
    # Bad lines the engine found in parsing, in file and line order.
    for file_index, line, reason in eng.fetch(
        "SELECT file, line, reason FROM bad ORDER BY file, line"
    ):
        count_bad(BadLine(display_name(files[file_index]), int(line), str(reason)))
    _, rows_n, removed_n, events_n = eng.counts
    correlated = correlate(eng, config, files, on_bad, narrowed=narrowed, min_score=min_score)
    return FleetRun(
        engine=eng,
        files=files,
        lines=stats,
        correlated=correlated,
        bad_lines=bad[0],
        decoration_keys=keys,
        counts={"rows": int(rows_n), "removed": int(removed_n), "event_rows": int(events_n)},
    )
