"""``readegress replay``: osquery results logs → the correlation core → detections.

Where the data comes from: results logs of scheduled queries over
``process_file_events``, ``socket_events`` and ``process_events`` (any query
names, any of osquery's formats: :mod:`readegress.logs.results`). Rows become
events through :func:`readegress.sources.osquery_rows.event_from_row`, the
function the live source uses, and are fed to the one correlation core,
:class:`~readegress.detect.core.Correlator`: an instance per host, each advanced
by its own host's time (hosts share no state in the core).

Quirks:

- Log order is not event order. Each scheduled query logs, when it runs, the
  events stored since its last run, and queries of different tables run at
  different times. So events are buffered per host and sorted with
  :func:`~readegress.detect.events.sort_key` before they are fed.
- Memory is bounded by time: every ``flush_lines`` lines (and at the end of
  each file) each host's events older than its newest event minus
  ``max_lateness`` are sorted and fed, the rest wait. The default lateness,
  3660 s, is osquery's ``--events_expiry`` (3600 s) plus a minute: an event
  table does not return an event older than that, so osquery does not log one
  later than that. An event that does come later (rotated files given newest
  first, a clock jump) is still fed, late: the core inserts a late read in time
  order, but an egress fed before the read it follows is missed. Memory is
  thus the events all hosts log within ``max_lateness`` seconds plus those of
  up to ``flush_lines`` lines (~500 bytes an event waiting, measured by
  ``python -m bench replay``), plus the cores' own bounded state (~300 bytes
  a sensitive read held, at most ``max_reads`` per host).
- An event's ``source`` is ``osquery-log:FILE:LINE``, so a detection names the
  log lines of its read and its egress (``read_location``/``egress_location``
  in :func:`detection_json`).
- Detections are reported sorted by (egress time, host, read time, pid, id),
  whatever the number of jobs, once the logs are read.

The fast path (``fast=True``): the reader skips non-read file events by their
bytes and collapses repeated reads (see :mod:`readegress.logs.results`); replay
passes the catalogue as ``keep_read``, so a catalogue read is never collapsed.
Why collapsing is exact: a non-catalogue read changes the core only through
the process it observes (ppid, executable, uid, auid, time). A collapsed read
observes exactly what the last read of its pid in the same query run observed,
in the same second (``time`` is among the compared bytes). In the sorted stream
only reads of that second lie between the two, none of that pid (a read the
fast path did not compare resets it), so the core would only have refreshed
the process's LRU position among the processes seen in that second (which
matters only if its 100,000-process table overflows). The reader forgets its
last reads at the line numbers where replay flushes (where the sorted stream is
cut) and at each file's start. Detections are the same either way (tests
compare them field for field); the core's counters (events, reads) are not.

Jobs. Hosts are independent in the core (its state is per host), so with
``jobs`` > 1 each of ``jobs`` forked processes reads every log but keeps only
its hosts, with a Correlator of its own. Hosts are dealt out by how many lines
they have in the first 4 MiB of each log (largest first, to the least loaded
job); a host not seen there goes by the CRC-32 of its name. Lines of other
hosts cost a header comparison. Lines without a host (not JSON, ...) and line
counts belong to job 0. With fewer hosts than jobs at the start of the logs,
fewer jobs run (a single-host log is read by one process), and so is stdin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from readegress.detect.config import Config
from readegress.detect.core import Correlator, Detection
from readegress.detect.events import Event, sort_key
from readegress.forked import run_forked
from readegress.logs.results import BadLine, ReadStats, ResultsReader, display_name
from readegress.sources.osquery_rows import RowError, event_from_row

SOURCE = "osquery-log"
#: osquery's default --events_expiry (3600 s) plus a minute.
DEFAULT_MAX_LATENESS = 3660.0
DEFAULT_FLUSH_LINES = 500_000
#: With ``jobs=None``, logs smaller than this are read by one process.
PARALLEL_MIN_BYTES = 32 << 20
#: Bad lines a job keeps to hand to the parent (it counts them all).
_JOB_BAD_LINES = 10_000


@dataclass
class ReplayStats:
    hosts: int = 0
    events: int = 0  # events fed to the core
    row_errors: int = 0  # rows of an event table without a usable pid or time
    flushes: int = 0
    max_buffered: int = 0  # the most events held at once waiting to be sorted (summed over jobs)
    detections: int = 0  # at or above the threshold
    below_threshold: int = 0
    jobs: int = 1

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ReplayResult:
    #: Detections at or above ``config.threshold`` in report order (empty when
    #: ``emit`` took them).
    detections: list[Detection]
    stats: ReplayStats
    read: ReadStats
    core: dict[str, int] = field(default_factory=dict)


def detection_json(d: Detection) -> dict[str, Any]:
    """:meth:`Detection.to_json` plus the log lines of the read and the egress."""
    out = d.to_json()
    prefix = SOURCE + ":"
    for side in ("read", "egress"):
        src = out.get(f"{side}_source")
        if isinstance(src, str) and src.startswith(prefix):
            out[f"{side}_source"] = SOURCE
            out[f"{side}_location"] = src[len(prefix) :]
    return out


def detection_record(d: Detection) -> dict[str, Any]:
    """A detection as the ``read_then_egress`` table has it (its column names and
    types: ``executables``/``other_paths`` JSON lists in text, ``reasons``
    comma-separated), plus ``host`` and the log lines of the read and the
    egress (``read_location``/``egress_location``: ``FILE:LINE``).

    The one conversion replay and the fleet report use: the table's own
    :func:`~readegress.tables.read_then_egress.row_of`, with the egress time as
    the detection time (a log has no settle step) and no start time (osquery
    rows carry none).
    """
    from readegress.service.detection_service import FinalDetection
    from readegress.tables.read_then_egress import row_of

    prefix = SOURCE + ":"
    locations: dict[str, str] = {}
    sources = {}
    for side, src in (("read", d.read_source), ("egress", d.egress_source)):
        if src.startswith(prefix):
            locations[f"{side}_location"] = src[len(prefix) :]
            src = SOURCE
        sources[side] = src
    plain = dataclasses.replace(d, read_source=sources["read"], egress_source=sources["egress"])
    row = row_of(FinalDetection(plain, detected_time=d.egress_time))._asdict()
    return {"host": d.host, **row, **locations}


def _json_dumper() -> Callable[[dict[str, Any]], bytes]:
    try:
        import orjson
    except ImportError:  # pragma: no cover - exercised where orjson is absent
        import json

        return lambda obj: (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    option = orjson.OPT_APPEND_NEWLINE

    def dump(obj: dict[str, Any]) -> bytes:
        return orjson.dumps(obj, option=option)

    return dump


_dump = _json_dumper()


def detection_json_line(d: Detection) -> bytes:
    """One detection as a line of JSON: :func:`detection_record` (orjson when importable)."""
    return _dump(detection_record(d))


def dump_json_line(record: dict[str, Any]) -> bytes:
    return _dump(record)


def report_order(d: Detection) -> tuple[float, str, float, int, str]:
    return (d.egress_time, d.host, d.read_time, d.pid, d.id)


def _count_due(buf: list[Event], watermark: float) -> int:
    """How many events of the sorted ``buf`` have ``time <= watermark``."""
    lo, hi = 0, len(buf)
    while lo < hi:
        mid = (lo + hi) // 2
        if buf[mid].time <= watermark:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _job_of(host: str, jobs: int) -> int:
    return zlib.crc32(host.encode("utf-8", "surrogatepass")) % jobs


_HOST_KEYS = (b'"hostIdentifier":"', b'"hostname":"')


def plan_jobs(paths: list[str], jobs: int, sample_bytes: int = 4 << 20) -> dict[str, int]:
    """host → job, balancing the lines each host has at the start of each log."""
    from readegress.logs.results import _open

    counts: dict[str, int] = {}
    for path in paths:
        try:
            with _open(path) as f:
                head = f.read(sample_bytes)
        except (OSError, EOFError, zlib.error):
            continue
        for line in head.split(b"\n")[:-1]:
            for key in _HOST_KEYS:
                i = line.find(key)
                if i >= 0:
                    j = line.find(b'"', i + len(key))
                    name = line[i + len(key) : j].decode("utf-8", "replace")
                    counts[name] = counts.get(name, 0) + 1
                    break
    load = [0] * jobs
    plan: dict[str, int] = {}
    for host, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        k = min(range(jobs), key=lambda j: (load[j], j))
        plan[host] = k
        load[k] += c
    return plan


def replay(
    paths: Iterable[str],
    config: Config,
    *,
    emit: Optional[Callable[[Detection], None]] = None,
    on_bad: Optional[Callable[[BadLine], None]] = None,
    fast: bool = True,
    jobs: Optional[int] = 1,
    max_lateness: float = DEFAULT_MAX_LATENESS,
    flush_lines: int = DEFAULT_FLUSH_LINES,
) -> ReplayResult:
    """Correlate the logs (read in the order given; ``-`` is stdin).

    Detections scoring at least ``config.threshold`` go to ``emit``, or are
    returned. Bad lines and unusable rows go to ``on_bad`` (as they are met
    with one job; after the read, in log order, with several), else are kept in
    :attr:`ReplayResult` ``.read`` counts only. ``jobs=None`` picks one process
    per CPU (at most 4) for logs of at least 32 MiB.
    """
    paths = list(paths)
    n = _pick_jobs(paths, jobs)
    if n <= 1:
        part = _replay_part(paths, config, fast, max_lateness, flush_lines, None, on_bad)
        results = [part]
    else:
        results = _run_jobs(paths, config, fast, max_lateness, flush_lines, n)
        if on_bad is not None:
            order = {display_name(p): i for i, p in enumerate(paths)}
            bad = sorted(
                (b for r in results for b in r.bad),
                key=lambda b: (order.get(b.file, len(order)), b.line),
            )
            for b in bad:
                on_bad(b)
    merged = _merge(results)
    merged.stats.jobs = n
    merged.detections.sort(key=report_order)
    if emit is not None:
        for d in merged.detections:
            emit(d)
        merged.detections = []
    return merged


def _pick_jobs(paths: list[str], jobs: Optional[int]) -> int:
    if "-" in paths:
        return 1
    if jobs is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        size = 0
        for p in paths:
            with contextlib.suppress(OSError):
                size += os.path.getsize(p)
        jobs = min(cpus, 4) if size >= PARALLEL_MIN_BYTES else 1
    if jobs > 1 and "fork" not in _start_methods():
        return 1
    return max(1, jobs)


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


@dataclass
class _Part:
    detections: list[Detection]
    stats: ReplayStats
    read: ReadStats
    core: dict[str, int]
    bad: list[BadLine]


def _merge(parts: list[_Part]) -> ReplayResult:
    stats = ReplayStats()
    read = ReadStats()
    core: dict[str, int] = {}
    dets: list[Detection] = []
    for p in parts:
        for f in fields(stats):
            setattr(stats, f.name, getattr(stats, f.name) + getattr(p.stats, f.name))
        for f in fields(read):
            setattr(read, f.name, getattr(read, f.name) + getattr(p.read, f.name))
        for k, v in p.core.items():
            core[k] = core.get(k, 0) + v
        dets.extend(p.detections)
    stats.flushes = max((p.stats.flushes for p in parts), default=0)
    return ReplayResult(dets, stats, read, core)


def _run_jobs(
    paths: list[str], config: Config, fast: bool, max_lateness: float, flush_lines: int, n: int
) -> list[_Part]:
    plan = plan_jobs(paths, n)
    if plan and len(plan) < n:  # fewer hosts than jobs at the start of the logs
        n = len(plan)
        plan = {host: k for k, host in enumerate(plan)}
    if n <= 1:
        return [_replay_part(paths, config, fast, max_lateness, flush_lines, None, None)]
    return run_forked(
        [
            functools.partial(
                _replay_part, paths, config, fast, max_lateness, flush_lines, (k, n, plan), None
            )
            for k in range(n)
        ],
        name="readegress-replay",
    )


def _replay_part(
    paths: list[str],
    config: Config,
    fast: bool,
    max_lateness: float,
    flush_lines: int,
    job: Optional[tuple[int, int, dict[str, int]]],
    on_bad: Optional[Callable[[BadLine], None]],
) -> _Part:
    bad: list[BadLine] = []
    bad_count = [0]

    def keep_bad(b: BadLine) -> None:
        bad_count[0] += 1
        if len(bad) < _JOB_BAD_LINES:
            bad.append(b)

    report = on_bad if on_bad is not None else keep_bad
    hosts: Optional[Callable[[str], bool]] = None
    if job is not None:
        k, n, plan = job

        def hosts(host: str) -> bool:
            got = plan.get(host)
            return (got if got is not None else _job_of(host, n)) == k

    reader = ResultsReader(
        on_bad=report, fast=fast, hosts=hosts, owns_unattributed=job is None or job[0] == 0
    )
    # One core per host: hosts share nothing in it, and each host's time is its own
    # (advance() forgets by time), so a host's results never depend on which other
    # hosts share its log or its job.
    cores: dict[str, Correlator] = {}
    stats = ReplayStats()
    found: list[Detection] = []
    threshold = config.threshold
    buffers: dict[str, list[Event]] = {}
    clocks: dict[str, float] = {}
    match = config.catalogue.match
    flush_every = max(1, flush_lines)

    def in_catalogue(path: str) -> bool:
        return match(path) is not None

    def flush(final: bool) -> None:
        stats.flushes += 1
        stats.max_buffered = max(stats.max_buffered, sum(len(b) for b in buffers.values()))
        for host, buf in buffers.items():
            if not buf:
                continue
            buf.sort(key=sort_key)
            watermark = clocks[host] - max_lateness
            n_due = len(buf) if final else _count_due(buf, watermark)
            if not n_due:
                continue
            batch = buf[:n_due]
            del buf[:n_due]
            stats.events += n_due
            core = cores.get(host)
            if core is None:
                core = cores[host] = Correlator(config)
            for d in core.feed_many(batch):
                if d.score >= threshold:
                    found.append(d)
                else:
                    stats.below_threshold += 1
            if not final:
                core.advance(watermark)

    current: Optional[str] = None
    next_flush = flush_every
    # The reader cuts its collapsing at the lines where this loop flushes (the
    # sorted stream is cut there): no read collapses into one fed in an earlier flush.
    rows = reader.event_rows(paths, keep_read=in_catalogue if fast else None, cut_every=flush_every)
    for rec in rows:
        if rec.file != current or rec.line >= next_flush:
            if current is not None:
                flush(False)
            if rec.file != current:
                current = rec.file
                next_flush = flush_every
            while rec.line >= next_flush:
                next_flush += flush_every
        host = rec.host
        try:
            ev = event_from_row(rec.table or "", rec.row, host, f"{SOURCE}:{rec.file}:{rec.line}")
        except (RowError, OverflowError) as e:  # int(float("inf")) overflows
            stats.row_errors += 1
            report(BadLine(rec.file, rec.line, f"{rec.table} row: {e}"))
            continue
        if ev is None:
            continue
        buf = buffers.get(host)
        if buf is None:
            buf = buffers[host] = []
            clocks[host] = ev.time
        buf.append(ev)
        if ev.time > clocks[host]:
            clocks[host] = ev.time
    flush(True)
    stats.hosts = len(buffers)
    stats.detections = len(found)
    core_stats: dict[str, int] = {}
    for core in cores.values():
        for stat, count in core.stats.items():
            core_stats[stat] = core_stats.get(stat, 0) + count
    return _Part(found, stats, reader.stats, core_stats, bad)
