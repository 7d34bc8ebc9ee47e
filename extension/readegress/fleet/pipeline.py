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

import contextlib
import functools
import gc
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from readegress.detect.config import Config
from readegress.detect.core import Correlator, Detection
from readegress.detect.events import Event, sort_key
from readegress.fleet.sql import (
    PACKED,
    PAYLOAD_NULL,
    PAYLOAD_SEP,
    closure_statements,
    feed_select,
    final_statements,
    narrowing_statements,
)
from readegress.forked import run_forked
from readegress.logs.results import BadLine, display_name
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
        "pid", "time", "path", "auid", "protocol",
    ),
    "process": ("syscall", "pid", "parent", "time", "path", "uid", "auid", "cmdline"),
}  # fmt: skip


class Engine(Protocol):
    name: str

    def create(self, name: str, select: str) -> None: ...

    def fetch(self, select: str) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...

    def register(
        self, name: str, columns: Sequence[tuple[str, str]], rows: list[tuple[Any, ...]]
    ) -> None: ...


@dataclass
class Correlated:
    #: Every candidate the cores raised (any score) that the run keeps, in report order.
    candidates: list[Detection]
    hosts: int = 0
    events: int = 0
    fed_rows: int = 0
    row_errors: int = 0
    core: dict[str, int] = field(default_factory=dict)
    #: Candidates below the run's min_score: counted only (replay writes those over the
    #: threshold).
    dropped: int = 0

    def add_host(
        self, found: list[Detection], events: int, stats: dict[str, int], dropped: int = 0
    ) -> None:
        """One host's core: its candidates (and how many below min_score it dropped), how
        many events it was fed, its counters."""
        self.merge(Correlated(candidates=found, hosts=1, events=events, core=stats))
        self.dropped += dropped

    def merge(self, other: Correlated) -> None:
        """Another set of hosts' results (candidates stay to be sorted)."""
        self.candidates.extend(other.candidates)
        self.dropped += other.dropped
        self.events += other.events
        self.hosts += other.hosts
        self.fed_rows += other.fed_rows
        self.row_errors += other.row_errors
        for name, count in other.core.items():
            self.core[name] = self.core.get(name, 0) + count


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


#: The columns of ``ev`` the feed reads, in this order (no column of the project's
#: tables: an event row never has them).
FEED_COLUMNS = ["host", "file", "line", "tbl"] + [
    f"c_{k}" for k in dict.fromkeys(k for keys in _ROW_KEYS.values() for k in keys)
]
_INDEX = {c: i for i, c in enumerate(FEED_COLUMNS)}
#: An engine that holds some rows' PACKED columns apart, in one string a row (its
#: ``payloads``, by the row's ``pos``: DuckDB's scanned rows) feeds these columns: those
#: rows' packed columns are NULL.
FEED_WITH_POS = [*FEED_COLUMNS, "pos"]

#: A row's payload, by its ``pos`` (an engine's ``payloads``).
Payloads = Callable[[int], str]


def feed_columns(engine: Engine) -> list[str]:
    """The columns to fetch for the feed from ``engine``'s ``ev``."""
    return FEED_WITH_POS if getattr(engine, "payloads", None) is not None else FEED_COLUMNS


def events_of_rows(
    rows: Iterable[Sequence[Any]],
    files: Sequence[str],
    on_bad: Callable[[BadLine], None],
    payloads: Optional[Payloads] = None,
) -> tuple[dict[str, list[Event]], int]:
    """Feed rows (``FEED_COLUMNS`` or FEED_WITH_POS, in log order) → each host's
    events, and row errors."""
    per_host: dict[str, list[Event]] = {}
    errors = 0
    tbl_i, file_i, line_i, host_i = (_INDEX[c] for c in ("tbl", "file", "line", "host"))
    keys = {t: [(k, _INDEX["c_" + k]) for k in ks] for t, ks in _ROW_KEYS.items()}
    packed = {t: [(k, PACKED.index(k)) for k in ks if k in PACKED] for t, ks in _ROW_KEYS.items()}
    pos_i = len(FEED_COLUMNS)
    names = [display_name(f) for f in files]
    for r in rows:
        tbl = r[tbl_i]
        row = {k: r[i] for k, i in keys[tbl] if r[i] is not None}
        pos = r[pos_i] if len(r) > pos_i else None
        if pos is not None:
            if payloads is None:
                raise ValueError("a feed row with a pos, and no payloads to read it from")
            values = payloads(pos).split(PAYLOAD_SEP)
            for k, place in packed[tbl]:
                if values[place] != PAYLOAD_NULL:
                    row[k] = values[place]
        f = r[file_i]
        file = names[f] if f < len(names) else "?"
        line = r[line_i]
        host = r[host_i]
        try:
            ev = event_from_row(_TABLE_NAMES[tbl], row, host, f"{SOURCE}:{file}:{line}")
        except (RowError, OverflowError) as e:  # int(float("inf")) overflows
            errors += 1
            on_bad(BadLine(file, line, f"{_TABLE_NAMES[tbl]} row: {e}"))
            continue
        if ev is not None:
            per_host.setdefault(host, []).append(ev)
    return per_host, errors


def feed_host(
    config: Config, events: list[Event], min_score: Optional[int] = None
) -> tuple[list[Detection], dict[str, int], int]:
    """One host's events, sorted stably by sort_key, through a Correlator of its own:
    its candidates, counters, and how many candidates below ``min_score`` it dropped."""
    events.sort(key=sort_key)
    core = Correlator(config, min_score=min_score)
    return core.feed_many(events), dict(core.stats), core.below_min_score


def correlate(
    engine: Engine,
    config: Config,
    files: Sequence[str],
    on_bad: Callable[[BadLine], None],
    *,
    narrowed: bool = True,
    jobs: Optional[int] = None,
    min_score: Optional[int] = None,
) -> Correlated:
    """``min_score``: return only the candidates scoring at least that; the cores count
    the others (``dropped``) without building them (on a 1 GB log, 10k candidates below
    the threshold took half the cores' time, and 60 ms to pickle back from a fork)."""
    if narrowed:
        narrow(engine, config)
    distributed = getattr(engine, "correlate_rows", None)
    if distributed is not None:
        # The engine runs the per-host step where the rows are (Spark: one
        # group per host), with the same two functions.
        out: Correlated = distributed(narrowed, config, files, on_bad)
        if min_score is not None:
            kept = [d for d in out.candidates if d.score >= min_score]
            out.dropped += len(out.candidates) - len(kept)
            out.candidates = kept
        out.candidates.sort(key=report_order)
        return out
    with _cyclic_gc_paused():
        rows = engine.fetch(feed_select(feed_columns(engine), narrowed))
        payloads = getattr(engine, "payloads", None)
        out = correlate_hosts(
            config, rows, files, on_bad, jobs=jobs, payloads=payloads, min_score=min_score
        )
    out.fed_rows = len(rows)
    return out


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """No cyclic collection while the feed makes millions of objects that all live on.

    Fetching the fed rows, their events and the cores' state allocate a few million
    objects and free almost none, so each full collection the allocations trigger
    walks them all for nothing (five on a 1 GB log: ~0.2 s). After the feed, what
    is left is frozen (out of the collector's reach, still freed when no longer
    referenced): back on, the collector's first pass walked every object the
    feed made (30 ms). The price: a cycle the cores dropped stays until exit.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.freeze()
            gc.enable()


#: Below this many rows to feed, the hosts are fed in this process (a fork costs more).
PARALLEL_ROWS = 20_000


def correlate_hosts(
    config: Config,
    rows: list[tuple[Any, ...]],
    files: Sequence[str],
    on_bad: Callable[[BadLine], None],
    *,
    jobs: Optional[int] = None,
    payloads: Optional[Payloads] = None,
    min_score: Optional[int] = None,
) -> Correlated:
    """Feed rows (``feed_columns``, log order) to one Correlator per host; report order.

    The hosts are independent, so with ``jobs`` > 1 (default: the CPUs, when
    there are enough rows) they are split into that many groups of about equal
    rows, each fed in a forked process (the rows are the parent's, shared on
    fork); candidates, counters and the row errors come back and are merged
    (row errors reported in log order), so the result is the same as one
    process's.
    """
    n = jobs if jobs is not None else (os.cpu_count() or 1) if len(rows) >= PARALLEL_ROWS else 1
    host_i = _INDEX["host"]
    by_host: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows:
        by_host.setdefault(r[host_i], []).append(r)
    n = max(1, min(n, len(by_host)))
    groups: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for host in sorted(by_host, key=lambda h: (-len(by_host[h]), h)):
        k = min(range(n), key=lambda j: (load[j], j))
        groups[k].append(host)
        load[k] += len(by_host[host])
    calls = [
        functools.partial(_feed_group, config, by_host, g, files, payloads, min_score)
        for g in groups
    ]
    parts = [calls[0]()] if n == 1 else run_forked(calls, name="readegress-feed", first_here=True)
    out = Correlated(candidates=[])
    bad: list[BadLine] = []
    for part, part_bad in parts:
        out.merge(part)
        bad.extend(part_bad)
    names = {display_name(f): i for i, f in enumerate(files)}
    for b in sorted(bad, key=lambda b: (names.get(b.file, len(files)), b.line)):
        on_bad(b)
    out.candidates.sort(key=report_order)
    return out


def _feed_group(
    config: Config,
    by_host: dict[str, list[tuple[Any, ...]]],
    hosts: list[str],
    files: Sequence[str],
    payloads: Optional[Payloads] = None,
    min_score: Optional[int] = None,
) -> tuple[Correlated, list[BadLine]]:
    """The hosts' results and row errors (each host's in log order)."""
    part = Correlated(candidates=[])
    bad: list[BadLine] = []
    for host in sorted(hosts):
        per_host, errors = events_of_rows(by_host[host], files, bad.append, payloads)
        part.row_errors += errors
        for evs in per_host.values():
            found, stats, dropped = feed_host(config, evs, min_score)
            part.add_host(found, len(evs), stats, dropped)
    return part, bad


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
