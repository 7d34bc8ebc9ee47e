"""The detection service: osquery events → correlation core → settled, stored detections.

One background thread (started once the extension is registered, so it has a
core to query) runs :meth:`DetectionService.cycle` every ``poll_interval``
seconds, or sooner when a pending detection is due:

1. poll the osquery event tables after their cursors
   (:class:`~readegress.sources.osquery_source.OsqueryEventSource`), feed the
   sorted batch to the one :class:`~readegress.detect.core.Correlator`;
   each candidate it returns waits as *pending*;
2. ``settle_seconds`` after its egress, a pending candidate gets the live
   socket facts (bytes sent, socket age, keepalive; see
   :mod:`readegress.service.socket_facts`), is rescored with
   :func:`~readegress.detect.core.enrich`, and kept only if its score reaches
   ``config.threshold``. A kept detection is *final*: it never changes again,
   so osquery's differential logging reports each one once;
3. the state is persisted (cursors, correlator, pending and final
   detections, counters) whenever something changed, so a restart neither
   loses nor repeats a detection.

Detections therefore never depend on when someone queries
``read_then_egress``. Memory is bounded: final detections by
``config.max_detections`` (oldest dropped and counted), pending ones by the
same number (the oldest settled early, without waiting, and counted), the
core by its own limits. Everything that went missing is counted and shown by
``readegress_health``.

Sources (``config.sources``): ``osquery`` (above) and ``native`` (fanotify
reads and sock_diag egress, :class:`~readegress.sources.native.NativeSources`,
attached with :meth:`DetectionService.attach_native`). Native events are
drained from the native buffer each cycle (the service thread is woken when
they are due) and fed to the same correlator. With both sources, one chain is
seen twice: a candidate with the same host, pid, path and remote address/port
as one from the *other* source within the window counts once. The native one
is preferred (it has start ticks and exact per-socket bytes): it replaces a
pending osquery candidate; an osquery candidate arriving after a native one is
counted in ``cross_source_duplicates`` and dropped. A native candidate settles
with the native source's per-socket facts, and at once when its socket has
closed (its final counters are known).

Thread-safety: only the service thread touches the correlator and the
source; tables read :meth:`detections` and :meth:`status`, which return
copies taken under a lock. The clock is injectable, and tests drive
:meth:`cycle` directly.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Protocol

import readegress
from readegress.detect.config import Config
from readegress.detect.core import Correlator, Detection, enrich
from readegress.detect.events import Event
from readegress.service.socket_facts import SocketFacts, lookup, normalize_address
from readegress.service.state import StateError, StateStore
from readegress.sources.osquery_source import (
    DEFAULT_PAGE_ROWS,
    Cursor,
    OsqueryEventSource,
    TableStatus,
)

log = logging.getLogger("readegress.service")

STATE_FORMAT = "readegress-state"
STATE_VERSION = 1
#: ``source`` of egress events from the native sources
#: (:data:`readegress.sources.native_egress.SOURCE`; not imported: it imports this package).
NATIVE_EGRESS_SOURCES = frozenset({"sock_diag"})
#: Pages of every table one cycle may read before it yields (it continues at once).
MAX_PAGES_PER_CYCLE = 20
#: The core forgets reads older than the window before "now minus this": an
#: event osquery stores in the very second of a poll may still arrive.
ADVANCE_LAG = 2.0
#: Between saves that add no detection, at least this many seconds pass: the
#: state of a busy host is megabytes of JSON, and a crash then costs at most
#: this much re-reading (cursors roll back with the correlator, so nothing is
#: skipped, and ids keep osquery's differential log from repeating a row).
MIN_SAVE_INTERVAL = 30.0

COUNTERS = (
    "cycles",  # service cycles run
    "cycle_errors",  # cycles that raised (logged; the thread carries on)
    "candidates",  # candidate detections from the core
    "duplicates",  # candidates already pending or final (ignored)
    "finalized",  # detections kept (score >= threshold after settling)
    "below_threshold",  # settled candidates scoring below the threshold
    "dropped_detections",  # final detections dropped as max_detections was exceeded
    "settled_early",  # pending candidates settled before their delay (pending full)
    "facts_socket",  # settled with the live egress socket's counters
    "facts_closed",  # settled with closed-socket totals only
    "facts_none",  # settled with no socket facts
    "facts_unavailable",  # settlements where the kernel monitor could not be read
    "persist_errors",  # state saves that failed
    "state_loads",  # state documents loaded at start
    "state_corrupt",  # state documents rejected at start
    "native_events",  # events fed from the native sources
    "cross_source_duplicates",  # candidates the other source already reported (dropped)
    "cross_source_replaced",  # pending osquery candidates replaced by the native one
    "settled_closed",  # native candidates settled early: their socket closed
)


class QueryClient(Protocol):
    """What the service needs of the osquery core (``ManagerClient`` fits)."""

    def query(self, sql: str, timeout: float | None = None) -> list[dict[str, str]]: ...


class NativeFeed(Protocol):
    """What the service needs of the native sources (``NativeSources`` fits)."""

    def set_wake(self, wake: Callable[[], None]) -> None: ...

    def drain(self, now: Optional[float] = None, *, everything: bool = False) -> list[Event]: ...

    def next_due(self) -> Optional[float]: ...

    def owns(self, d: Detection) -> bool: ...

    def facts(self, d: Detection) -> Optional[tuple[SocketFacts, bool]]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class MonitorAccess(Protocol):
    """Where socket facts come from (``TableEnv`` fits: its monitor and snapshots)."""

    @property
    def monitor(self) -> Any: ...

    def snapshot(self) -> Any: ...


# ----------------------------------------------------------- detections


def detection_to_json(d: Detection) -> dict[str, Any]:
    out = d.to_json()
    out.pop("delay", None)  # derived
    return out


def detection_from_json(data: Mapping[str, Any]) -> Detection:
    """Inverse of :func:`detection_to_json`; raises ``ValueError`` on a malformed record.

    Fields added after a record was written (priority, triage evidence) take
    their defaults, so older state still loads.
    """
    if not isinstance(data, Mapping):
        raise ValueError("detection is not an object")
    return Detection.from_json(data)


@dataclass(frozen=True)
class FinalDetection:
    """A detection that passed the threshold after settling; immutable from then on."""

    detection: Detection
    detected_time: float  # when the service settled it (Unix seconds)
    start_time: Optional[int] = None  # the sender's start (Unix seconds), where known
    closed_bytes_sent: Optional[int] = None  # upper bound when the egress socket had closed

    def to_json(self) -> dict[str, Any]:
        return {
            "detection": detection_to_json(self.detection),
            "detected_time": self.detected_time,
            "start_time": self.start_time,
            "closed_bytes_sent": self.closed_bytes_sent,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FinalDetection:
        start, closed = data.get("start_time"), data.get("closed_bytes_sent")
        for v in (start, closed):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise ValueError("final detection start_time/closed_bytes_sent malformed")
        return cls(
            detection_from_json(data["detection"]),
            float(data["detected_time"]),
            start,
            closed,
        )


@dataclass(frozen=True)
class Pending:
    detection: Detection
    deadline: float  # settle at or after this Unix time

    def to_json(self) -> dict[str, Any]:
        return {"detection": detection_to_json(self.detection), "deadline": self.deadline}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pending:
        return cls(detection_from_json(data["detection"]), float(data["deadline"]))


@dataclass(frozen=True)
class ServiceStatus:
    """A consistent copy of the service's state for ``readegress_health``."""

    mode: str  # "extension" (polls and persists) or "offline" (reads the state file)
    running: bool  # the service thread is running
    attached: bool  # an osquery core client is attached
    host: str
    sources: tuple[str, ...]  # sources configured
    tables: dict[str, TableStatus]
    cursors: dict[str, Cursor]
    core_stats: dict[str, int]
    core_size: dict[str, int]
    counters: dict[str, int]
    pending: int
    finalized: int
    newest_event_time: float  # osquery time of the newest event fed
    last_cycle_time: float
    state_path: str
    state_bytes: Optional[int]
    state_saved_time: float
    state_note: str  # how loading went (e.g. corrupt state moved aside)
    persist_error: str  # why state is not (or was not last) saved
    facts_error: str  # why the kernel monitor could not be read, last time
    version: str = readegress.__version__
    warnings: tuple[str, ...] = field(default_factory=tuple)
    native: dict[str, Any] = field(default_factory=dict)  # NativeSources.stats() when attached


# ----------------------------------------------------------- the service


class DetectionService:
    """Runs the osquery source, the correlation core, settling and persistence.

    ``env`` gives the kernel socket monitor (``None``: no socket facts).
    ``persist=False`` never writes (``readegress query`` reads the state the
    extension left, read-only, through :meth:`open`).
    """

    def __init__(
        self,
        config: Config,
        env: Optional[MonitorAccess] = None,
        *,
        state_dir: Optional[str] = None,
        host: Optional[str] = None,
        clock: Callable[[], float] = time.time,
        persist: bool = True,
        page_rows: int = DEFAULT_PAGE_ROWS,
        query_timeout: float = 15.0,
        monitor_interval: float = 5.0,
        on_final: Optional[Callable[[FinalDetection], None]] = None,
    ) -> None:
        self.config = config
        self.env = env
        self.state_dir = state_dir or config.state_dir
        self.host = host or socket.gethostname()
        self.clock = clock
        self.persist = persist
        self.query_timeout = query_timeout
        # The monitor's first-seen times are as coarse as its poll interval.
        self.socket_slack = 2.0 * monitor_interval + 2.0
        self.max_detections = config.max_detections
        self.max_pending = config.max_detections
        self.mode = "extension" if persist else "offline"
        self.correlator = Correlator(config)
        self._client: Optional[QueryClient] = None
        self.source = OsqueryEventSource(
            self._query, config.catalogue, self.host, page_rows=page_rows, clock=clock
        )
        self._lock = threading.Lock()
        self._finalized: OrderedDict[str, FinalDetection] = OrderedDict()
        self._pending: list[Pending] = []
        self._pending_ids: set[str] = set()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.store: Optional[StateStore] = None
        self.state_note = ""
        self.persist_error = "" if persist else "read-only: readegress query never writes state"
        self.facts_error = ""
        self.state_bytes: Optional[int] = None
        self.state_saved_time = 0.0
        self.newest_event_time = 0.0
        self.last_cycle_time = 0.0
        self._dirty = False
        self._saved_at = float("-inf")  # clock() of the last save
        self._saved_finalized = -1  # counters["finalized"] at the last save
        self._behind = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._status: Optional[ServiceStatus] = None
        #: Called (on the service thread) with each detection as it is finalized.
        self.on_final = on_final
        self.native: Optional[NativeFeed] = None
        # (host, pid, path, remote, port) -> (egress time, id, native?) of recent candidates
        self._recent: dict[tuple[str, int, str, str, int], tuple[float, str, bool]] = {}
        # (host, reader pid, path, read time) -> (newest egress time, {detection id:
        # (destination, bytes)}): the bytes of each chain's settled connections.
        self._chains: dict[
            tuple[str, int, str, float], tuple[float, dict[str, tuple[str, int]]]
        ] = {}

    # ----- state ---------------------------------------------------------
    def open(self) -> None:
        """Prepare the state directory and load the saved state (never raises for bad state)."""
        try:
            self.store = StateStore(self.state_dir)
            if self.persist:
                # Created by the first save, so a service that never sees an
                # event leaves no trace; an existing one is checked now.
                self.store.check_directory()
        except (StateError, OSError) as e:
            self.persist_error = str(e)
            log.error("state will not be kept: %s", e)
            if self.persist:
                self.store = None
        if self.store is not None:
            loaded = self.store.load(quarantine=self.persist)
            if loaded.data is not None:
                try:
                    self._apply_state(loaded.data)
                    self.counters["state_loads"] += 1
                    self.state_note = f"loaded {self.store.path}"
                except Exception as e:  # any shape error in outside data: start fresh
                    self.counters["state_corrupt"] += 1
                    if self.persist:
                        note = self.store.reject(f"{type(e).__name__}: {str(e)[:200]}").note
                    else:
                        note = f"state at {self.store.path} is unusable: {str(e)[:200]}"
                    self.state_note = note
                    log.warning("%s", note)
            elif loaded.note:
                if loaded.corrupt:
                    self.counters["state_corrupt"] += 1
                self.state_note = loaded.note
                log.warning("%s", loaded.note)
            else:
                self.state_note = f"no saved state at {self.store.path}" + (
                    "; started fresh" if self.persist else ""
                )
            self.state_bytes = self.store.size()
        self._publish_status()

    def _apply_state(self, data: Mapping[str, Any]) -> None:
        """Load a saved document into fresh objects, then swap them in (all or nothing)."""
        if data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
            raise ValueError(f"not a {STATE_FORMAT} v{STATE_VERSION} document")
        correlator = Correlator(self.config)
        correlator.load_state(data["correlator"])
        source = OsqueryEventSource(
            self._query,
            self.config.catalogue,
            self.host,
            page_rows=self.source.page_rows,
            clock=self.clock,
        )
        source.load_state(data["source"])
        finalized: OrderedDict[str, FinalDetection] = OrderedDict()
        for item in data["finalized"]:
            f = FinalDetection.from_json(item)
            finalized[f.detection.id] = f
        pending = [Pending.from_json(p) for p in data["pending"]]
        counters = dict.fromkeys(COUNTERS, 0)
        for k, v in data.get("counters", {}).items():
            if k in counters and isinstance(v, int):
                counters[k] = v
        newest = float(data.get("newest_event_time", 0.0))
        self.correlator = correlator
        self.source = source
        self._recent = {}
        for d in [f.detection for f in finalized.values()] + [p.detection for p in pending]:
            self._remember(d)
        with self._lock:
            self._finalized = finalized
            self._pending = sorted(pending, key=lambda p: p.deadline)
            self._pending_ids = {p.detection.id for p in pending}
            self.counters = counters
        self.newest_event_time = newest
        self.state_saved_time = float(data.get("saved_time", 0.0))

    def _document(self) -> dict[str, Any]:
        with self._lock:
            finalized = [f.to_json() for f in self._finalized.values()]
            pending = [p.to_json() for p in self._pending]
            counters = dict(self.counters)
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "saved_time": self.clock(),
            "host": self.host,
            "config_sha256": self.config.sha256,
            "newest_event_time": self.newest_event_time,
            "source": self.source.to_state(),
            "correlator": self.correlator.to_state(),
            "finalized": finalized,
            "pending": pending,
            "counters": counters,
        }

    def save(self, *, force: bool = True) -> None:
        """Persist now if anything changed.

        The service thread calls it after each cycle with ``force=False``: then
        a change that adds no finalized detection waits for MIN_SAVE_INTERVAL.
        """
        if not self.persist or self.store is None or not self._dirty:
            return
        finalized = self.counters["finalized"]
        if (
            not force
            and finalized == self._saved_finalized
            and self.clock() - self._saved_at < MIN_SAVE_INTERVAL
        ):
            return
        try:
            self._saved_at = self.clock()
            self._saved_finalized = finalized
            doc = self._document()
            self.state_bytes = self.store.save(doc)
            self.state_saved_time = doc["saved_time"]
            self._dirty = False
            self.persist_error = ""
        except (OSError, ValueError) as e:  # StateError is an OSError
            self.counters["persist_errors"] += 1
            self.persist_error = f"saving {self.store.path} failed: {e}"
            log.error("%s", self.persist_error)

    # ----- the osquery core ------------------------------------------------
    def _query(self, sql: str) -> list[dict[str, str]]:
        client = self._client
        if client is None:
            raise ConnectionError("no osquery core attached")
        return client.query(sql, timeout=self.query_timeout)

    def attach_native(self, native: NativeFeed) -> None:
        """Feed the native sources' events too (``config.sources`` has ``native``).

        The service owns them from now on: :meth:`stop` closes them.
        """
        self.native = native
        native.set_wake(self.wake)

    def wake(self) -> None:
        """Run a cycle soon (native events are due, or a native socket closed)."""
        self._wake.set()

    @property
    def polls_osquery(self) -> bool:
        return self._client is not None and "osquery" in self.config.sources

    def attach(self, client: QueryClient, *, start: bool = True) -> None:
        """Give the service the osquery core (once registered) and start its thread.

        ``start=False`` leaves the cycles to the caller (tests drive :meth:`cycle`).
        """
        self._client = client
        if start:
            self.start()

    # ----- one cycle ------------------------------------------------------
    def cycle(self) -> None:
        """Poll, feed, settle what is due, persist. Only the service thread (or a test) calls it."""
        now = self.clock()
        self._behind = False
        if self.polls_osquery:
            complete = False
            for _ in range(MAX_PAGES_PER_CYCLE):
                page = self.source.poll()
                if page.rows:
                    self._dirty = True
                if page.events:
                    self.newest_event_time = max(self.newest_event_time, page.events[-1].time)
                    self._queue(self.correlator.feed_many(page.events), now)
                if page.complete:
                    complete = True
                    break
            if complete:
                self.correlator.advance(now - ADVANCE_LAG)
            else:
                self._behind = True  # more pages wait: the next cycle starts at once
        if self.native is not None:
            events = self.native.drain(now)
            if events:
                self._dirty = True
                self.newest_event_time = max(self.newest_event_time, events[-1].time)
                with self._lock:
                    self.counters["native_events"] += len(events)
                self._queue(self.correlator.feed_many(events), now)
            if not self.polls_osquery:
                self.correlator.advance(now - ADVANCE_LAG)
        self._settle(now)
        with self._lock:
            self.counters["cycles"] += 1
        self.last_cycle_time = now
        self.save(force=False)
        self._publish_status()

    @staticmethod
    def _is_native(d: Detection) -> bool:
        return d.egress_source in NATIVE_EGRESS_SOURCES

    @staticmethod
    def _key(d: Detection) -> tuple[str, int, str, str, int]:
        return (d.host, d.pid, d.path, normalize_address(d.remote_address), d.remote_port)

    def _remember(self, d: Detection) -> None:
        self._recent[self._key(d)] = (d.egress_time, d.id, self._is_native(d))

    def _cross_source(self, d: Detection) -> Optional[str]:
        """How a candidate relates to the other source's report of the same chain.

        Returns ``"duplicate"`` (drop it), ``"replace"`` (it is native and the
        osquery one is still pending: swap them) or None (new). Caller holds
        the lock. Only candidates of *different* sources are merged.
        """
        prev = self._recent.get(self._key(d))
        native = self._is_native(d)
        if prev is None or prev[2] == native:
            return None
        if abs(d.egress_time - prev[0]) > self.config.window_seconds:
            return None
        if native and prev[1] in self._pending_ids:
            return "replace"
        return "duplicate"

    def _queue(self, candidates: Iterable[Detection], now: float) -> None:
        overflow: list[Pending] = []
        with self._lock:
            for d in candidates:
                self.counters["candidates"] += 1
                if d.id in self._finalized or d.id in self._pending_ids:
                    self.counters["duplicates"] += 1
                    continue
                merge = self._cross_source(d)
                if merge == "duplicate":
                    self.counters["cross_source_duplicates"] += 1
                    continue
                if merge == "replace":
                    old = self._recent[self._key(d)][1]
                    self._pending = [p for p in self._pending if p.detection.id != old]
                    self._pending_ids.discard(old)
                    self.counters["cross_source_replaced"] += 1
                self._remember(d)
                p = Pending(d, d.egress_time + self.config.settle_seconds)
                self._pending.append(p)
                self._pending_ids.add(d.id)
                self._dirty = True
            self._pending.sort(key=lambda p: p.deadline)
            while len(self._pending) > self.max_pending:
                oldest = self._pending.pop(0)
                self._pending_ids.discard(oldest.detection.id)
                self.counters["settled_early"] += 1
                overflow.append(oldest)
        for p in overflow:
            self._finalize(p.detection, SocketFacts(), now)

    def _native_facts(self, d: Detection) -> Optional[tuple[SocketFacts, bool]]:
        if self.native is None or not self.native.owns(d):
            return None
        try:
            return self.native.facts(d)
        except Exception:  # a bug there must not stop settling: no facts, logged
            log.exception("native socket facts")
            return None

    def _settle(self, now: float, *, everything: bool = False) -> None:
        with self._lock:
            pending = list(self._pending)
        native: dict[str, tuple[SocketFacts, bool]] = {}
        due: list[Pending] = []
        for p in pending:
            nf = self._native_facts(p.detection)
            if nf is not None:
                native[p.detection.id] = nf
            if everything or p.deadline <= now or (nf is not None and nf[1]):
                due.append(p)
        cutoff = now - self.config.window_seconds - self.config.settle_seconds
        self._recent = {k: v for k, v in self._recent.items() if v[0] >= cutoff}
        if not due:
            return
        due_native = [p for p in due if p.detection.id in native]
        for p in due_native:
            facts, final = native[p.detection.id]
            if final and p.deadline > now:
                with self._lock:
                    self.counters["settled_closed"] += 1
            self._finalize(p.detection, facts, now)
        due = [p for p in due if p.detection.id not in native]
        if not due:
            self._drop_settled(due_native)
            return
        sockets: tuple[Any, ...] = ()
        closed: Mapping[Any, Any] = {}
        closed_info: Callable[[Any], Any] = lambda _ident: None  # noqa: E731
        facts_ok = False
        if self.env is not None:
            try:
                snap = self.env.snapshot()
                monitor = self.env.monitor
                sockets = snap.sockets
                closed = monitor.closed_totals()
                closed_info = monitor.closed_process_info
                facts_ok = True
                self.facts_error = ""
            except Exception as e:  # not root, no netlink, closed monitor: bytes stay unknown
                self.facts_error = f"{type(e).__name__}: {e}"
                log.warning("socket facts unavailable: %s", self.facts_error)
        else:
            self.facts_error = "no kernel socket monitor in this process"
        for p in due:
            if facts_ok:
                facts = lookup(
                    p.detection,
                    sockets,
                    closed,
                    closed_info,
                    now=now,
                    slack=self.socket_slack,
                )
            else:
                with self._lock:
                    self.counters["facts_unavailable"] += 1
                facts = SocketFacts()
            self._finalize(p.detection, facts, now)
        self._drop_settled(due + due_native)

    def _drop_settled(self, settled: list[Pending]) -> None:
        done = {p.detection.id for p in settled}
        if not done:
            return
        with self._lock:
            self._pending = [p for p in self._pending if p.detection.id not in done]
            self._pending_ids -= done
            self._dirty = True

    def _chain_bytes(
        self, d: Detection, bytes_sent: Optional[int], now: float
    ) -> tuple[Optional[int], Optional[list[tuple[str, int]]]]:
        """Bytes of every settled connection of ``d``'s chain (same read), ``d`` included.

        Split-and-send (many small uploads of one file) adds up here: each
        connection settles with its own bytes, and the chain's total is what
        ``bytes_ge_file_size`` compares with the file's size. Only known bytes
        count; a chain whose every connection has unknown bytes has none. A chain
        is the read's process, pipeline, lineage and session: an unrelated
        process of the same user or host joined to the read (user/host scope)
        neither adds its bytes to it nor gets its bytes.
        """
        here = f"{normalize_address(d.remote_address)}:{d.remote_port}"
        if d.scope in ("user", "host"):
            return (None, None) if bytes_sent is None else (bytes_sent, [(here, bytes_sent)])
        key = (d.host, d.reader_pid, d.path, round(d.read_time, 3))
        cutoff = now - self.config.window_seconds - self.config.settle_seconds
        if len(self._chains) > 4 * self.max_pending:
            self._chains = {k: v for k, v in self._chains.items() if v[0] >= cutoff}
        entry = self._chains.get(key)
        if entry is None or entry[0] < cutoff:
            entry = self._chains[key] = (d.egress_time, {})
        per = entry[1]
        if bytes_sent is not None:
            per[d.id] = (here, bytes_sent)
            self._chains[key] = (max(entry[0], d.egress_time), per)
        if not per:
            return None, None
        by_dest: dict[str, int] = {}
        for dest, n in per.values():
            by_dest[dest] = by_dest.get(dest, 0) + n
        return sum(by_dest.values()), sorted(by_dest.items())

    def _finalize(self, d: Detection, facts: SocketFacts, now: float) -> None:
        chain_bytes, by_dest = self._chain_bytes(d, facts.bytes_sent, now)
        settled = enrich(
            d,
            bytes_sent=facts.bytes_sent,
            socket_age=facts.socket_age,
            keepalive=facts.keepalive,
            chain_bytes_sent=chain_bytes,
            bytes_by_destination=by_dest,
            config=self.config,
        )
        start_time: Optional[int] = None
        owner = facts.owner
        if owner is not None:
            # The sender as /proc saw it, matched by pid and started by the
            # egress: its start time, and what the event rows did not carry.
            start_time = owner.start_time
            if settled.cmdline is None and owner.cmdline:
                settled = replace(settled, cmdline=owner.cmdline)
        if facts.protocol and not settled.protocol:
            settled = replace(settled, protocol=facts.protocol)
        kind = (
            "facts_socket"
            if facts.bytes_sent is not None or facts.socket_age is not None
            else "facts_closed"
            if facts.closed_bytes_sent is not None
            else "facts_none"
        )
        with self._lock:
            self.counters[kind] += 1
            if settled.score < self.config.threshold:
                self.counters["below_threshold"] += 1
                return
            final = FinalDetection(settled, now, start_time, facts.closed_bytes_sent)
            self._finalized[settled.id] = final
            self.counters["finalized"] += 1
            while len(self._finalized) > self.max_detections:
                self._finalized.popitem(last=False)
                self.counters["dropped_detections"] += 1
            self._dirty = True
        if self.on_final is not None:
            try:
                self.on_final(final)
            except Exception:  # a consumer's bug must not lose the stored detection
                log.exception("on_final consumer")

    # ----- reads (any thread) ---------------------------------------------
    def detections(self) -> list[FinalDetection]:
        """Final detections, oldest first (a copy)."""
        with self._lock:
            return list(self._finalized.values())

    def pending(self) -> list[Pending]:
        with self._lock:
            return list(self._pending)

    def status(self) -> ServiceStatus:
        with self._lock:
            st = self._status
        if st is None:  # pragma: no cover - open() publishes one
            self._publish_status()
            with self._lock:
                st = self._status
            assert st is not None
        return st

    def _publish_status(self) -> None:
        # Called by the thread that owns the correlator and the source.
        tables = {t: TableStatus.from_json(s.to_json()) for t, s in self.source.status.items()}
        with self._lock:
            self._status = ServiceStatus(
                mode=self.mode,
                running=self._thread is not None and self._thread.is_alive(),
                attached=self._client is not None,
                host=self.host,
                sources=self.config.sources,
                tables=tables,
                cursors=dict(self.source.cursors),
                core_stats=dict(self.correlator.stats),
                core_size=self.correlator.size(),
                counters=dict(self.counters),
                pending=len(self._pending),
                finalized=len(self._finalized),
                newest_event_time=self.newest_event_time,
                last_cycle_time=self.last_cycle_time,
                state_path=self.store.path if self.store is not None else "",
                state_bytes=self.state_bytes,
                state_saved_time=self.state_saved_time,
                state_note=self.state_note,
                persist_error=self.persist_error,
                facts_error=self.facts_error,
                native=self._native_stats(),
            )

    def _native_stats(self) -> dict[str, Any]:
        if self.native is None:
            return {}
        try:
            return self.native.stats()
        except Exception as e:  # health must still answer
            return {"error": f"{type(e).__name__}: {e}"}

    # ----- the thread -----------------------------------------------------
    def start(self) -> None:
        """Start the service thread (idempotent; a stopped service does not restart)."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, name="readegress-service", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        if self.env is not None:
            # Start the kernel monitor now: its destroy listeners and first-seen
            # times only cover what happens while it runs.
            try:
                self.env.monitor  # noqa: B018 - built on first access
            except Exception as e:
                self.facts_error = f"{type(e).__name__}: {e}"
                log.warning("kernel socket monitor unavailable: %s", self.facts_error)
        while not self._stop.is_set():
            try:
                self.cycle()
            except Exception:  # a bug must not end detection: log, count, carry on
                log.exception("detection cycle failed")
                with self._lock:
                    self.counters["cycle_errors"] += 1
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        if self._behind:
            return 0.0
        now = self.clock()
        wake = self.last_cycle_time + self.config.poll_interval
        with self._lock:
            if self._pending:
                wake = min(wake, self._pending[0].deadline)
        if self.native is not None:
            due = self.native.next_due()
            if due is not None:
                wake = min(wake, due)
        return min(max(wake - now, 0.01), self.config.poll_interval)

    def flush(self) -> None:
        """Feed every buffered native event and settle every pending candidate now.

        For a service that will not run again without state (``readegress watch``
        without ``--state-dir``): nothing pending is lost. Call it after the
        thread stopped (or instead of running it).
        """
        now = self.clock()
        if self.native is not None:
            events = self.native.drain(now, everything=True)
            if events:
                with self._lock:
                    self.counters["native_events"] += len(events)
                self._queue(self.correlator.feed_many(events), now)
        self._settle(now, everything=True)
        self._publish_status()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the thread (and the native sources) and save what changed. Idempotent."""
        self._stop.set()
        self._wake.set()
        if self.native is not None:
            self.native.close()  # fanotify answers every held opener first
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("detection service thread did not stop within %gs", timeout)
                return
        self.save()
        self._publish_status()
