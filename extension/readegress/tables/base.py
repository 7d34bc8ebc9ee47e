"""What a table is, and the one place every table call goes through.

A table module declares a row ``NamedTuple`` whose fields are the spec's
columns in order (typed and immutable like a frozen dataclass, but a plain
tuple underneath, so 10k rows cost no per-field conversion), and a class
with ``generate(ctx) -> Iterable[row]``. Rows stay typed Python values inside
the project; they become osquery strings (``None`` → ``""``, ``True`` →
``"1"``) only in :meth:`BoundTable.to_osquery_rows`, and stay as they are for
SQLite (:meth:`BoundTable.to_sqlite_rows`).

:class:`TableCalls` wraps every call from every front end (Thrift and the
embedded engine): a per-call timeout, a concurrency limit per table, and any
exception turned into :class:`TableCallError` carrying the table name, logged
once. Python cannot kill a thread, so a call that overruns its timeout keeps
its worker until it returns; its slot in the concurrency limit stays taken,
and later calls fail fast instead of piling up behind it.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, Optional, Protocol, TypeVar

from readegress.kernel.memory import gc_paused
from readegress.tables.context import QueryContext
from readegress.tables.spec import TableSpec, load_specs

if TYPE_CHECKING:
    from readegress.detect.config import Config
    from readegress.service.detection_service import DetectionService, QueryClient

log = logging.getLogger("readegress.tables")

_R = TypeVar("_R")

DEFAULT_CALL_TIMEOUT = 10.0
DEFAULT_CONCURRENCY = 2


class Table(Protocol):
    """A table implementation; constructed with the shared :class:`TableEnv`."""

    @property
    def row_type(self) -> type: ...

    def generate(self, ctx: QueryContext) -> Iterable[Any]: ...


class TableCallError(RuntimeError):
    """A table call failed; ``str()`` is the message osquery or the user sees."""


#: distinct integers remembered per column while one answer is converted
_MEMO_PER_COLUMN = 256


def _osq(v: object) -> str:
    if v is None:
        return ""
    if v is True:
        return "1"
    if v is False:
        return "0"
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


class BoundTable:
    """A spec bound to its implementation, with the row converters built once."""

    def __init__(self, spec: TableSpec, impl: Table) -> None:
        fields = tuple(getattr(impl.row_type, "_fields", ()))
        if fields != spec.column_names:
            raise TypeError(
                f"{spec.name}: row fields {fields} do not match spec columns {spec.column_names}"
            )
        self.spec = spec
        self.impl = impl
        self.name = spec.name
        self._names = fields
        # Instances of a class whose attributes are always set in one order
        # share one key table (PEP 412): their __dict__ is a real dict, as
        # Thrift's encoder wants, at 320 instead of 840 bytes for 26 columns
        # (measured), and filled faster. One class per table keeps the order.
        self._osquery_row: type = type(f"{spec.name}_osquery_row", (), {})

    def rows(self, ctx: QueryContext) -> list[tuple[Any, ...]]:
        with gc_paused():
            return list(self.impl.generate(ctx))

    def osquery_rows(self, ctx: QueryContext) -> list[dict[str, str]]:
        """Generate and convert in one pass: each typed row is dropped as soon
        as its osquery dict exists, so a 20k-row answer never holds both."""
        with gc_paused():
            return self.to_osquery_rows(self.impl.generate(ctx))

    def osquery_row_batches(self, ctx: QueryContext, size: int) -> Iterator[list[dict[str, str]]]:
        """:meth:`osquery_rows` in lists of up to ``size`` rows, generated as
        they are taken: a consumer that drops each list holds one at a time."""
        with gc_paused():
            rows = iter(self.impl.generate(ctx))
            while True:
                batch = self.to_osquery_rows(itertools.islice(rows, max(1, size)))
                if not batch:
                    return
                yield batch

    def to_osquery_rows(self, rows: Iterable[tuple[Any, ...]]) -> list[dict[str, str]]:
        names = self._names
        osq = _osq
        new = self._osquery_row
        # One small memo per column: a column whose integers repeat (pid,
        # family, uid, start_time, first_seen, ...) shares one string per
        # value instead of one per row (measured at 20k socket_bytes rows:
        # 27.7 -> 11.3 MB of answer, and 10% faster: a dict lookup costs less
        # than str()); a column of unique values (cookies,
        # counters) fills its memo and stops growing it.
        memos: list[dict[int, str]] = [{} for _ in names]
        limit = _MEMO_PER_COLUMN
        out: list[dict[str, str]] = []
        append = out.append
        for r in rows:
            d = new().__dict__
            for n, v, memo in zip(names, r, memos):
                # Most values are already str or int: test their exact types
                # inline; the general converter takes the rest (None, bools, bytes).
                t = type(v)
                if t is str:
                    d[n] = v
                elif t is int:
                    text = memo.get(v)
                    if text is None:
                        text = str(v)
                        if len(memo) < limit:
                            memo[v] = text
                    d[n] = text
                else:
                    d[n] = osq(v)
            append(d)
        return out

    def to_sqlite_rows(self, rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
        # Row values are already SQLite values: int/str/float/None, and bool,
        # which apsw binds as INTEGER 1/0 (bool is an int).
        return rows


class TableEnv:
    """Shared, lazily built collectors the tables read from.

    One per process: the extension keeps it for its lifetime (so first-seen
    times and closed-socket totals accumulate); ``readegress query`` builds
    one for a single query. ``config`` is readegress's config (``None`` when
    it could not be loaded: ``config_problems`` says why), ``service`` the
    detection service behind ``read_then_egress`` (``None`` when there is
    none), ``manager`` the osquery core's client once the extension is
    registered (``None`` under ``readegress query``).
    """

    def __init__(
        self,
        *,
        background: bool = False,
        poll_interval: float = 5.0,
        config: Optional[Config] = None,
    ) -> None:
        self.background = background
        self.poll_interval = poll_interval
        self.config = config
        self.config_path = config.path if config is not None else ""
        self.config_problems: tuple[str, ...] = ()
        self._service: Optional[DetectionService] = None
        #: Builds the service on first use (``readegress query`` pays for it only
        #: when a query reads read_then_egress or readegress_health).
        self.service_factory: Optional[Callable[[], DetectionService]] = None
        self.manager: Optional[QueryClient] = None
        self._lock = threading.Lock()
        self._monitor: Any = None
        #: One-line notes about what this host's data cannot show (e.g. not root),
        #: each kept once; the CLI prints them, the health table reports them.
        self.warnings: dict[str, None] = {}

    @property
    def service(self) -> Optional[DetectionService]:
        if self._service is None and self.service_factory is not None:
            factory, self.service_factory = self.service_factory, None
            self._service = factory()
        return self._service

    @service.setter
    def service(self, value: Optional[DetectionService]) -> None:
        self._service = value

    def warn(self, message: str) -> None:
        self.warnings.setdefault(message, None)

    def snapshot(self) -> Any:
        """A fresh monitor snapshot; its warnings are recorded once each."""
        snap = self.monitor.snapshot()
        # The monitor words its own warnings (e.g. not root: N processes'
        # descriptors unreadable); each distinct one is kept once.
        for w in snap.warnings:
            self.warn(w)
        return snap

    @property
    def monitor(self) -> Any:
        """The :class:`readegress.kernel.monitor.SocketMonitor` (built on first use)."""
        with self._lock:
            if self._monitor is None:
                from readegress.kernel.monitor import SocketMonitor

                self._monitor = SocketMonitor()
                if self.background:
                    self._monitor.start(self.poll_interval)
            return self._monitor

    def attach_manager(self, manager: QueryClient) -> None:
        """The extension registered: tables and the service may now query the core."""
        self.manager = manager
        if self.service is not None:
            self.service.attach(manager)

    def close(self) -> None:
        if self._service is not None:
            self._service.stop()  # before the monitor it reads goes away
        with self._lock:
            if self._monitor is not None:
                self._monitor.close()
                self._monitor = None


def load_tables(env: TableEnv, names: Iterable[str] | None = None) -> dict[str, BoundTable]:
    """Instantiate the tables named in the specs (all of them by default)."""
    specs = load_specs()
    wanted = set(names) if names is not None else None
    out: dict[str, BoundTable] = {}
    for name, spec in specs.items():
        if wanted is not None and name not in wanted:
            continue
        module_name, _, attr = spec.implementation.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        out[name] = BoundTable(spec, cls(env))
    return out


class TableCalls:
    """The one wrapper around every table call (timeout, concurrency, errors)."""

    def __init__(
        self,
        tables: dict[str, BoundTable],
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.tables = tables
        self.timeout = timeout
        self._slots = {name: threading.BoundedSemaphore(concurrency) for name in tables}
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, concurrency * max(1, len(tables))),
            thread_name_prefix="readegress-table",
        )

    def generate(self, name: str, ctx: QueryContext) -> list[tuple[Any, ...]]:
        """Typed rows of ``name`` (the embedded engine's path)."""
        return self._call(name, lambda t: t.rows(ctx))

    def generate_osquery(self, name: str, ctx: QueryContext) -> list[dict[str, str]]:
        """Rows of ``name`` as osquery's string maps, converted while generated
        (the Thrift path: :meth:`BoundTable.osquery_rows`)."""
        return self._call(name, lambda t: t.osquery_rows(ctx))

    def generate_osquery_batches(
        self,
        name: str,
        ctx: QueryContext,
        size: int,
        consume: Callable[[Iterator[list[dict[str, str]]]], _R],
    ) -> _R:
        """``consume`` applied, inside the call (its timeout, its slot), to the
        rows of ``name`` as osquery's string maps in lists of up to ``size``
        (:meth:`BoundTable.osquery_row_batches`); the Thrift path encodes each
        batch and drops it."""
        return self._call(name, lambda t: consume(t.osquery_row_batches(ctx, size)))

    def _call(self, name: str, work: Callable[[BoundTable], _R]) -> _R:
        table = self.tables.get(name)
        if table is None:
            raise TableCallError(f"unknown table {name!r}")
        slot = self._slots[name]
        if not slot.acquire(timeout=self.timeout):
            msg = f"{name}: busy (earlier calls still running after {self.timeout:g}s)"
            log.error(msg)
            raise TableCallError(msg)

        def run() -> _R:
            try:
                return work(table)
            finally:
                slot.release()

        try:
            fut: Future[_R] = self._pool.submit(run)
        except RuntimeError:
            slot.release()
            raise TableCallError(f"{name}: shutting down") from None
        try:
            return fut.result(timeout=self.timeout)
        except FutureTimeout:
            msg = f"{name}: generate timed out after {self.timeout:g}s"
            log.error(msg)
            raise TableCallError(msg) from None
        except TableCallError:
            raise
        except Exception as e:  # any bug in a table becomes an error status, never a crash
            msg = f"{name}: {type(e).__name__}: {e}"
            log.exception("table call failed: %s", msg)
            raise TableCallError(msg) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
