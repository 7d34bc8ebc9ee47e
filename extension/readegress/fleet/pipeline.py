"""Engine tables → the correlation core: the narrowing, then one Correlator per host.

An engine (:class:`Engine`: DuckDB or Spark) has loaded the logs into ``ev``
(event rows) and ``proj`` (rows of the project's tables). :func:`correlate`
classifies each distinct read path with the one catalogue, has the engine
narrow ``ev`` (:func:`readegress.fleet.sql.narrowing_statements`), and feeds
what is left, turned into events by the one row converter
(:func:`readegress.sources.osquery_rows.event_from_row`), to a
:class:`~readegress.detect.core.Correlator` per host: each host's events
sorted stably by :func:`~readegress.detect.events.sort_key` over log order,
all at once (no lateness bound: the engine has the whole log), and the core
never advanced, so nothing is forgotten by time (its size caps still apply;
their eviction counters are reported).

``narrowed=False`` feeds every event row: the reference the narrowing is
proven against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from readegress.detect.config import Config
from readegress.detect.core import Correlator, Detection
from readegress.detect.events import Event, sort_key
from readegress.fleet.sql import (
    COLUMN_KEYS,
    closure_statements,
    feed_select,
    final_statements,
    narrowing_statements,
)
from readegress.logs.results import BadLine
from readegress.sources.osquery_rows import (
    FILE_EVENTS,
    PROCESS_EVENTS,
    SOCKET_EVENTS,
    RowError,
    event_from_row,
)

SOURCE = "osquery-log"
_TABLE_NAMES = {"file": FILE_EVENTS, "socket": SOCKET_EVENTS, "process": PROCESS_EVENTS}
#: The columns event_from_row reads, per table.
_ROW_KEYS = {
    "file": ("operation", "pid", "ppid", "time", "executable", "path", "uid", "auid"),
    "socket": (
        "action", "status", "success", "family", "remote_address", "remote_port",
        "pid", "time", "path", "auid",
    ),
    "process": ("syscall", "pid", "parent", "time", "path", "uid", "auid", "cmdline"),
}  # fmt: skip


class Engine(Protocol):
    name: str

    def create(self, name: str, select: str) -> None: ...

    def fetch(self, select: str) -> list[tuple[Any, ...]]: ...

    def register(
        self, name: str, columns: Sequence[tuple[str, str]], rows: list[tuple[Any, ...]]
    ) -> None: ...


@dataclass
class Correlated:
    #: Every candidate the cores raised (any score), in report order.
    candidates: list[Detection]
    hosts: int = 0
    events: int = 0
    fed_rows: int = 0
    row_errors: int = 0
    core: dict[str, int] = field(default_factory=dict)


def report_order(d: Detection) -> tuple[float, str, float, int, str]:
    return (d.egress_time, d.host, d.read_time, d.pid, d.id)


def classify_paths(engine: Engine, config: Config) -> None:
    """``cat(path, cls, alone)``: the catalogue class of every distinct read path."""
    match = config.catalogue.match
    rows: list[tuple[Any, ...]] = []
    for (path,) in engine.fetch("SELECT DISTINCT c_path FROM ev WHERE kind = 'read'"):
        if path is None:
            continue
        c = match(path)
        if c is not None:
            rows.append((path, c.name, c.alone))
    engine.register("cat", [("path", "VARCHAR"), ("cls", "VARCHAR"), ("alone", "BOOLEAN")], rows)


def classify_destinations(engine: Engine, config: Config) -> None:
    """``dest(addr, egress)``: is each distinct connect address of an egress class?"""
    from readegress.net.classify import classify

    rows = [
        (addr, classify(addr) in config.egress_classes)
        for (addr,) in engine.fetch("SELECT DISTINCT c_remote_address FROM ev WHERE kind = 'conn'")
        if addr is not None
    ]
    engine.register("dest", [("addr", "VARCHAR"), ("egress", "BOOLEAN")], rows)


def narrow(engine: Engine, config: Config) -> None:
    classify_paths(engine, config)
    classify_destinations(engine, config)
    for name, select in (
        narrowing_statements(config.window_seconds) + closure_statements() + final_statements()
    ):
        engine.create(name, select)


#: The columns of ``ev`` the feed reads, in this order.
FEED_COLUMNS = ["host", "file", "line", "tbl"] + [f"c_{k}" for k in COLUMN_KEYS]
_INDEX = {c: i for i, c in enumerate(FEED_COLUMNS)}


def events_of_rows(
    rows: Iterable[Sequence[Any]], files: Sequence[str], on_bad: Callable[[BadLine], None]
) -> tuple[dict[str, list[Event]], int]:
    """Feed rows (``FEED_COLUMNS``, in log order) → each host's events, and row errors."""
    per_host: dict[str, list[Event]] = {}
    errors = 0
    index = _INDEX
    for r in rows:
        tbl = r[index["tbl"]]
        row = {}
        for k in _ROW_KEYS[tbl]:
            v = r[index["c_" + k]]
            if v is not None:
                row[k] = v
        file = files[r[index["file"]]] if r[index["file"]] < len(files) else "?"
        file = "<stdin>" if file == "-" else file
        line = r[index["line"]]
        host = r[index["host"]]
        try:
            ev = event_from_row(_TABLE_NAMES[tbl], row, host, f"{SOURCE}:{file}:{line}")
        except (RowError, OverflowError) as e:  # int(float("inf")) overflows
            errors += 1
            on_bad(BadLine(file, line, f"{_TABLE_NAMES[tbl]} row: {e}"))
            continue
        if ev is not None:
            per_host.setdefault(host, []).append(ev)
    return per_host, errors


def feed_host(config: Config, events: list[Event]) -> tuple[list[Detection], dict[str, int]]:
    """One host's events, sorted stably by sort_key, through a Correlator of its own."""
    events.sort(key=sort_key)
    core = Correlator(config)
    return core.feed_many(events), dict(core.stats)


def correlate(
    engine: Engine,
    config: Config,
    files: Sequence[str],
    on_bad: Callable[[BadLine], None],
    *,
    narrowed: bool = True,
) -> Correlated:
    if narrowed:
        narrow(engine, config)
    distributed = getattr(engine, "correlate_rows", None)
    if distributed is not None:
        # The engine runs the per-host step where the rows are (Spark: one
        # group per host), with the same two functions.
        out: Correlated = distributed(narrowed, config, files, on_bad)
        out.candidates.sort(key=report_order)
        return out
    out = Correlated(candidates=[])
    rows = engine.fetch(feed_select(FEED_COLUMNS, narrowed))
    out.fed_rows = len(rows)
    per_host, out.row_errors = events_of_rows(rows, files, on_bad)
    for host in sorted(per_host):
        found, stats = feed_host(config, per_host[host])
        out.candidates.extend(found)
        out.events += len(per_host[host])
        for k, v in stats.items():
            out.core[k] = out.core.get(k, 0) + v
    out.hosts = len(per_host)
    out.candidates.sort(key=report_order)
    return out


def reference_events(
    paths: Sequence[str], on_bad: Optional[Callable[[BadLine], None]] = None
) -> dict[str, list[Event]]:
    """Every event of the logs through the per-row reader (:class:`ResultsReader`), by host.

    The per-row path the engines are checked against: each host's events in
    log order, to be sorted and fed like :func:`correlate` does.
    """
    from readegress.logs.results import ResultsReader

    reader = ResultsReader(on_bad=on_bad, fast=False)
    per_host: dict[str, list[Event]] = {}
    for rec in reader.event_rows(paths):
        try:
            ev = event_from_row(
                rec.table or "", rec.row, rec.host, f"{SOURCE}:{rec.file}:{rec.line}"
            )
        except (RowError, OverflowError):
            continue
        if ev is not None:
            per_host.setdefault(rec.host, []).append(ev)
    return per_host


def correlate_events(config: Config, per_host: dict[str, list[Event]]) -> list[Detection]:
    """Feed each host's events (sorted stably) to a Correlator of its own; report order."""
    out: list[Detection] = []
    for host in sorted(per_host):
        out.extend(feed_host(config, list(per_host[host]))[0])
    out.sort(key=report_order)
    return out
