"""The live osquery source: poll the core's audit event tables through ``query()``.

Where the data comes from: ``process_file_events`` (``open``/``read`` rows of
catalogue paths), ``socket_events`` (``connect`` rows) and ``process_events``
(every row: execve/execveat for images and command lines, fork/vfork/clone
for lineage and pid-reuse evidence), asked of osquery's core by SQL over the
extension manager's ``query()``.

Quirks this module exists for:

- osquery's ``time`` column is when osquery *stored* the batch (whole Unix
  seconds, from the wall clock), and ``eid`` a per-table counter kept across
  osqueryd restarts, zero-padded to ten digits (compared here as integers,
  so an eleven-digit eid still sorts after a ten-digit one). Together they
  order a table's rows: the cursor per table is the ``(time, eid)`` of the
  last row fed.
- Any constraint on ``time`` makes osquery's event store scan only from that
  time (and turns off the scheduler's "since last run" bookkeeping, which does
  not apply to ``query()`` anyway: it returns every buffered event). So each
  poll asks ``time >= T`` and drops, in SQL and again here, the rows at or
  before the cursor.
- A poll is paged (``ORDER BY time, eid LIMIT n``). When one table's page is
  full, rows of *every* table at or after that page's last second are held
  back for the next page, so a read is never fed after the connect it
  precedes just because the two tables were cut at different times.
- ``eid`` is a hidden column, so ``SELECT *`` omits it: queries ask
  ``SELECT *, eid``. Columns that differ between osquery versions (``status``
  vs ``success``, ``syscall``) are handled by
  :func:`~readegress.sources.osquery_rows.event_from_row`.
- The ``process_file_events`` query is narrowed with ``path GLOB`` terms from
  the catalogue (a superset: ``~/`` becomes ``/root/`` and ``/home/*/``, and
  SQLite's ``*`` crosses ``/``); the core matches paths again exactly. It only
  shrinks what crosses the socket: osquery still generates every buffered row.

Failures (a missing table because audit is off, a core that is restarting)
are counted per table and reported; the other tables are still polled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

from readegress.detect.catalogue import Catalogue
from readegress.detect.events import Event, sort_key
from readegress.sources.osquery_rows import (
    FILE_EVENTS,
    PROCESS_EVENTS,
    SOCKET_EVENTS,
    RowError,
    event_from_row,
)
from readegress.sources.osquery_setup import expand_braces

log = logging.getLogger("readegress.sources.osquery")

#: The tables polled, in the order they are asked.
TABLES = (PROCESS_EVENTS, FILE_EVENTS, SOCKET_EVENTS)
DEFAULT_PAGE_ROWS = 10_000
SOURCE = "osquery"

QueryFn = Callable[[str], Sequence[Mapping[str, str]]]


class Cursor(NamedTuple):
    """The last row fed from a table: osquery ``time`` and ``eid`` (as an integer)."""

    time: int
    eid: int


@dataclass
class TableStatus:
    """What polling one table has seen (JSON-able through :meth:`to_json`)."""

    rows: int = 0  # rows fed (after the cursor)
    events: int = 0  # rows that became events
    ignored: int = 0  # rows that are not correlated (failed connects, accepts, ...)
    row_errors: int = 0  # rows without a usable time, eid, pid
    repeats: int = 0  # rows at or before the cursor that came back anyway
    query_errors: int = 0
    last_error: str = ""
    last_error_time: float = 0.0
    last_ok_time: float = 0.0
    last_row_time: float = 0.0  # osquery time of the newest row fed

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TableStatus:
        st = cls()
        for k, v in data.items():
            if k in st.__dict__ and isinstance(v, type(st.__dict__[k])):
                setattr(st, k, v)
        return st


@dataclass
class SourcePoll:
    """One page of every table, ready to feed: events in :func:`sort_key` order."""

    events: list[Event] = field(default_factory=list)
    rows: int = 0  # rows accepted this page, across tables
    complete: bool = True  # False when a table had more rows than a page holds
    failed: tuple[str, ...] = ()  # tables whose query failed


def sqlite_globs(pattern: str) -> list[str]:
    """One catalogue glob as SQLite ``GLOB`` patterns that match a superset of its paths."""
    out: list[str] = []
    for p in expand_braces(pattern):
        bases = ["/root/", "/home/*/"] if p.startswith("~/") else [""]
        rest = p[2:] if p.startswith("~/") else p
        # SQLite's '*' crosses '/', so '**' needs nothing special; its
        # character classes negate with '^' where the catalogue uses '!'.
        rest = rest.replace("**", "*").replace("[!", "[^")
        out.extend(b + rest for b in bases)
    return out


def catalogue_sql_globs(catalogue: Catalogue) -> tuple[str, ...]:
    globs = [g for c in catalogue.classes for p in c.paths for g in sqlite_globs(p)]
    return tuple(dict.fromkeys(globs))


def catalogue_path_condition(catalogue: Catalogue) -> str:
    """``path GLOB`` terms (a balanced OR) matching a superset of the catalogue's paths:
    the filter of the live poll, and of the raw-event collection pack."""
    return _or_tree([f"path GLOB {_sql_string(g)}" for g in catalogue_sql_globs(catalogue)])


def _sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _or_tree(terms: Sequence[str]) -> str:
    # Balanced, so hundreds of globs stay far below SQLite's expression depth limit.
    if len(terms) == 1:
        return terms[0]
    mid = len(terms) // 2
    return f"({_or_tree(terms[:mid])} OR {_or_tree(terms[mid:])})"


def build_query(table: str, cursor: Cursor, *, path_globs: Sequence[str] = (), limit: int) -> str:
    """The SQL of one page of ``table`` after ``cursor`` (every value here is ours)."""
    t, e = int(cursor.time), int(cursor.eid)
    where = [f"time >= {t}"]
    if e:
        where.append(f"NOT (time = {t} AND CAST(eid AS INTEGER) <= {e})")
    if table == FILE_EVENTS:
        where.append("operation IN ('open', 'read')")
        if path_globs:
            where.append(_or_tree([f"path GLOB {_sql_string(g)}" for g in path_globs]))
    elif table == SOCKET_EVENTS:
        where.append("action = 'connect'")
    elif table != PROCESS_EVENTS:
        raise ValueError(f"not an event table readegress polls: {table!r}")
    return (
        f"SELECT *, eid FROM {table} WHERE {' AND '.join(where)}"
        f" ORDER BY time, CAST(eid AS INTEGER) LIMIT {int(limit)}"
    )


def _int(v: Optional[str]) -> Optional[int]:
    if v is None:
        return None
    try:
        return int(str(v).strip())
    except ValueError:
        return None


class _Row(NamedTuple):
    time: int
    eid: int
    row: Mapping[str, str]


class OsqueryEventSource:
    """Polls the three event tables with a persisted cursor per table.

    ``query`` runs SQL in the osquery core (``ManagerClient.query``); ``host``
    names this host in the events. Not thread-safe: one poller thread owns it.
    """

    def __init__(
        self,
        query: QueryFn,
        catalogue: Catalogue,
        host: str,
        *,
        page_rows: int = DEFAULT_PAGE_ROWS,
        clock: Callable[[], float] = time.time,
        tables: Sequence[str] = TABLES,
    ) -> None:
        self.query = query
        self.host = host
        self.page_rows = max(1, int(page_rows))
        self.clock = clock
        self.tables = tuple(tables)
        self.path_globs = catalogue_sql_globs(catalogue)
        self.cursors: dict[str, Cursor] = {t: Cursor(0, 0) for t in self.tables}
        self.status: dict[str, TableStatus] = {t: TableStatus() for t in self.tables}

    # ----- persistence ---------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "cursors": {t: [c.time, c.eid] for t, c in self.cursors.items()},
            "status": {t: s.to_json() for t, s in self.status.items()},
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        cursors = state.get("cursors", {})
        for t in self.tables:
            raw = cursors.get(t)
            if raw is None:
                continue
            if (
                not isinstance(raw, list)
                or len(raw) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in raw)
            ):
                raise ValueError(f"bad cursor for {t}: {raw!r}")
            self.cursors[t] = Cursor(raw[0], raw[1])
        for t, s in state.get("status", {}).items():
            if t in self.status and isinstance(s, dict):
                self.status[t] = TableStatus.from_json(s)

    # ----- polling -------------------------------------------------------
    def _fetch(self, table: str) -> Optional[tuple[list[_Row], bool]]:
        st = self.status[table]
        cursor = self.cursors[table]
        sql = build_query(
            table,
            cursor,
            path_globs=self.path_globs if table == FILE_EVENTS else (),
            limit=self.page_rows,
        )
        try:
            raw = self.query(sql)
        except Exception as e:  # any failure of the core or the connection is counted, never fatal
            st.query_errors += 1
            st.last_error = f"{type(e).__name__}: {e}"
            st.last_error_time = self.clock()
            log.debug("%s: query failed: %s", table, e)
            return None
        st.last_ok_time = self.clock()
        rows: list[_Row] = []
        for r in raw:
            t, eid = _int(r.get("time")), _int(r.get("eid"))
            if t is None or eid is None or t < 0 or eid < 0:
                st.row_errors += 1
                continue
            if (t, eid) <= cursor:
                st.repeats += 1
                continue
            rows.append(_Row(t, eid, r))
        rows.sort(key=lambda x: (x.time, x.eid))
        return rows, len(raw) >= self.page_rows

    def poll(self) -> SourcePoll:
        """One page of every table; cursors advance past the rows returned as events."""
        pages: dict[str, tuple[list[_Row], bool]] = {}
        failed = []
        for table in self.tables:
            got = self._fetch(table)
            if got is None:
                failed.append(table)
            else:
                pages[table] = got
        cut = [rows[-1].time for rows, full in pages.values() if full and rows]
        watermark = min(cut) if cut else None
        out = SourcePoll(complete=watermark is None, failed=tuple(failed))
        for table, (rows, full) in pages.items():
            if watermark is not None:
                kept = [r for r in rows if r.time < watermark]
                if full and not kept:
                    # One osquery second holds more rows than a page: feed it
                    # whole rather than never getting past it.
                    kept = rows
                rows = kept
            if not rows:
                continue
            st = self.status[table]
            for r in rows:
                try:
                    ev = event_from_row(table, r.row, self.host, SOURCE)
                except RowError as e:
                    st.row_errors += 1
                    log.debug("%s: unusable row: %s", table, e)
                    continue
                if ev is None:
                    st.ignored += 1
                else:
                    st.events += 1
                    out.events.append(ev)
            st.rows += len(rows)
            out.rows += len(rows)
            last = rows[-1]
            self.cursors[table] = Cursor(last.time, last.eid)
            st.last_row_time = max(st.last_row_time, float(last.time))
        # Stable: events of one table and second keep their eid order.
        out.events.sort(key=sort_key)
        return out
