"""The embedded SQL engine: table specs served as SQLite virtual tables (apsw).

Both the local engine behind ``readegress query`` and the test osquery core
use this module; only the row source differs (a table implementation called
in-process, or an extension called over Thrift).

Constraint pushdown mirrors osquery: only columns whose spec carries
INDEX/REQUIRED/ADDITIONAL receive constraints, SQLite's operator codes are
osquery's codes, and values reach the table as strings (osquery sends every
``expr`` as a string). ``x IN (a, b)`` arrives as one EQUALS per value, as
SQLite calls xFilter once per IN element. Constraints are never marked
``omit``: SQLite re-checks them, so a table may return a superset.

Bulk scans (``Engine(bulk=True)``, the local engine of ``readegress query``):
a virtual table hands SQLite each cell through a Python callback (xColumn:
520,000 calls for ``SELECT *`` over 20k sockets, ~200 ms). When a statement
reads a table with no constraint it could push down (planning is asked
first, without running anything), the table is generated once and its rows
are copied into a temporary table of the same name in one ``executemany``
(C-level binding), which shadows the virtual table for that statement
(SQLite resolves ``temp`` before ``main``) and is dropped after it. Tables
with hidden or required columns always stay virtual (a plain table cannot
hide a column from ``SELECT *``, and a required column needs its
constraint), and so does every table a statement constrains (pushdown reaches
the table as before).

Full scans (``SELECT * FROM t``, nothing else, on the bulk engine): SQLite
would only copy the rows in and hand the same values back (reading 520k
values back into Python costs more than generating them), so the rows are
answered without SQLite when every value is one SQLite keeps as it is in its
column (:func:`sqlite_rows`: bools become 0/1, anything a column's affinity
would convert sends the statement through SQLite as before). With the
compiled accelerator, :meth:`Engine.query_json_text` writes such a scan's JSON
lines itself, byte for byte what ``json_object`` writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import re
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple, Optional, Protocol

import apsw

from readegress.kernel.memory import gc_paused
from readegress.speedups import native as _native
from readegress.tables.context import Constraint, QueryContext
from readegress.tables.spec import REQUIRED as _REQUIRED
from readegress.tables.spec import TableSpec

# SQLite index-constraint codes that osquery forwards (its codes are SQLite's).
_PUSHABLE_OPS = frozenset(
    {
        apsw.SQLITE_INDEX_CONSTRAINT_EQ,
        apsw.SQLITE_INDEX_CONSTRAINT_GT,
        apsw.SQLITE_INDEX_CONSTRAINT_LE,
        apsw.SQLITE_INDEX_CONSTRAINT_LT,
        apsw.SQLITE_INDEX_CONSTRAINT_GE,
        apsw.SQLITE_INDEX_CONSTRAINT_MATCH,
        apsw.SQLITE_INDEX_CONSTRAINT_LIKE,
        apsw.SQLITE_INDEX_CONSTRAINT_GLOB,
        apsw.SQLITE_INDEX_CONSTRAINT_REGEXP,
    }
)


#: ``SELECT * FROM name`` and nothing else (an unqualified, plain or quoted name).
_FULL_SCAN = re.compile(r'\s*SELECT\s+\*\s+FROM\s+(?:"(\w+)"|(\w+))\s*;?\s*', re.I | re.A)
_INT64 = (-(1 << 63), (1 << 63) - 1)
_not_none = partial(operator.is_not, None)


def affinity(declared: str) -> str:
    """SQLite's column affinity of a declared type, as one letter: ``i``
    INTEGER, ``t`` TEXT, ``b`` BLOB (none), ``r`` REAL, ``n`` NUMERIC (the
    rules of section 3.1 of SQLite's datatype documentation, in their order)."""
    t = declared.upper()
    if "INT" in t:
        return "i"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "t"
    if "BLOB" in t or not t:
        return "b"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "r"
    return "n"


def _sqlite_rows_py(rows: Sequence[Sequence[Any]], kinds: bytes) -> Optional[list[tuple[Any, ...]]]:
    """``rows`` as SQLite hands them back from a table with column affinities
    ``kinds`` (see :func:`affinity`), or None when SQLite would convert a value
    (then SQLite must). Bools become 0/1; an int must fit SQLite's 64 bits in
    an INTEGER column, a str with a UTF-8 form go in a TEXT column, a float (not NaN, not -0.0:
    SQLite stores NULL and an integer 0 for them) in a REAL column; None
    anywhere. Column by column (``zip(*rows)``), so the per-value work is C
    builtins; ``_speedups.sqlite_rows`` is its compiled twin."""
    width = len(kinds)
    if any(not isinstance(r, tuple) or len(r) != width for r in rows):
        return None
    if not rows or not width:
        return [() for _ in rows]
    cols = list(zip(*rows))
    for j, kind in enumerate(kinds):
        col = cols[j]
        types = set(map(type, col))
        types.discard(type(None))
        if not types:
            continue
        values = list(filter(_not_none, col))
        if kind == 105:  # b"i"
            if not types <= {int, bool}:
                return None
            if bool in types:
                col = cols[j] = tuple(None if v is None else int(v) for v in col)
                values = list(map(int, values))
            if min(values) < _INT64[0] or max(values) > _INT64[1]:
                return None
        elif kind == 116:  # b"t"
            if types != {str}:
                return None
            if not all(map(str.isascii, values)):
                try:  # text without a UTF-8 form (lone surrogates): SQLite refuses it
                    for v in values:
                        v.encode()
                except UnicodeEncodeError:
                    return None
        elif kind == 114:  # b"r"
            if types != {float} or any(map(math.isnan, values)):
                return None
            if 0.0 in values and any(math.copysign(1.0, v) < 0 for v in values if v == 0.0):
                return None
        else:
            return None
    return list(zip(*cols))


#: rows as SQLite returns them (see :func:`_sqlite_rows_py`)
sqlite_rows = _sqlite_rows_py if _native is None else _native.sqlite_rows


class SQLError(RuntimeError):
    """A query failed: bad SQL, unknown table, or a table call error."""


class RowSource(Protocol):
    """Rows for one table, as SQLite values in spec column order."""

    @property
    def spec(self) -> TableSpec: ...

    def generate(self, ctx: QueryContext) -> Sequence[Sequence[Any]]: ...


def _arg_text(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return "" if v is None else str(v)


class _Cursor:
    # Column() runs once per cell (520k times for SELECT * over 20k sockets):
    # it reads one attribute, the current row, and indexes it.
    __slots__ = ("_i", "_row", "_rows", "_table")

    def __init__(self, table: _VTable) -> None:
        self._table = table
        self._rows: Sequence[Sequence[Any]] = ()
        self._row: Sequence[Any] = ()
        self._i = 0

    def Filter(self, indexnum: int, indexname: str | None, args: Sequence[Any]) -> None:
        # idxStr carries the plan chosen by BestIndexObject for this cursor:
        # the pushed constraints in argv order and the columns the query uses.
        plan = json.loads(indexname) if indexname else {"c": [], "u": None}
        constraints = [
            Constraint(col, op, _arg_text(arg)) for (col, op), arg in zip(plan["c"], args)
        ]
        ctx = QueryContext.of(constraints, plan["u"])
        self._rows = self._table.source.generate(ctx)
        self._i = 0
        self._row = self._rows[0] if self._rows else ()

    def Eof(self) -> bool:
        return self._i >= len(self._rows)

    def Rowid(self) -> int:
        return self._i

    def Column(self, n: int) -> Any:
        return self._row[n] if n >= 0 else self._i

    def Next(self) -> None:
        self._i += 1
        if self._i < len(self._rows):
            self._row = self._rows[self._i]

    def Close(self) -> None:
        self._rows = ()


class _Prepared(NamedTuple):
    """One prepared statement: its text, what follows it, its columns."""

    first: str
    remaining: str
    names: list[str]
    readonly: bool


class _Planning:
    """What planning (xBestIndex) saw of each table while a statement was prepared."""

    def __init__(self) -> None:
        self.scanned: set[str] = set()
        self.constrained: set[str] = set()
        self.used: dict[str, set[str]] = {}


class _VTable:
    def __init__(self, source: RowSource, planning: _Planning) -> None:
        self.source = source
        self.spec = source.spec
        self.planning = planning

    def BestIndexObject(self, info: apsw.IndexInfo) -> bool:
        cols = self.spec.columns
        plan: list[list[Any]] = []
        cost = 1_000_000.0
        for i in range(info.nConstraint):
            if not info.get_aConstraint_usable(i):
                continue
            col = info.get_aConstraint_iColumn(i)
            op = info.get_aConstraint_op(i)
            if col < 0 or op not in _PUSHABLE_OPS or not cols[col].pushdown:
                continue
            plan.append([cols[col].name, op])
            info.set_aConstraintUsage_argvIndex(i, len(plan))
            cost /= 100.0 if op == apsw.SQLITE_INDEX_CONSTRAINT_EQ else 2.0
        used = info.colUsed
        used_names = [c.name for j, c in enumerate(cols) if j in used]
        info.idxStr = json.dumps({"c": plan, "u": used_names})
        seen = self.planning
        seen.scanned.add(self.spec.name)
        seen.used.setdefault(self.spec.name, set()).update(used_names)
        if plan:
            seen.constrained.add(self.spec.name)
        info.estimatedCost = cost
        return True

    def Open(self) -> _Cursor:
        return _Cursor(self)

    def Disconnect(self) -> None:
        pass

    Destroy = Disconnect


class _Module:
    def __init__(self, source: RowSource, planning: _Planning) -> None:
        self.source = source
        self.planning = planning

    def Create(self, db: Any, modulename: str, dbname: str, tablename: str, *args: Any) -> Any:
        return self.source.spec.create_sql(), _VTable(self.source, self.planning)

    Connect = Create


class Engine:
    """One SQLite connection with the given row sources as tables."""

    def __init__(self, *, bulk: bool = False) -> None:
        self.db = apsw.Connection(":memory:")
        self._lock = threading.RLock()
        self.tables: dict[str, RowSource] = {}
        self.bulk = bulk
        self._planning = _Planning()
        #: tables the last statement read through a bulk copy or a full scan (tests look)
        self.last_bulk: tuple[str, ...] = ()
        #: full-scan tables the last statement answered without SQLite (tests look)
        self.last_direct: tuple[str, ...] = ()
        self._kinds: dict[str, bytes] = {}

    def register(self, source: RowSource) -> None:
        name = source.spec.name
        with self._lock:
            if name in self.tables:
                self.db.execute(f'DROP TABLE IF EXISTS main."{name}"')
            self.db.create_module(name, _Module(source, self._planning), use_bestindex_object=True)  # type: ignore[arg-type]
            # In main, so that a bulk copy in temp (searched first) shadows it.
            self.db.execute(f'CREATE VIRTUAL TABLE main."{name}" USING "{name}"()')
            self.tables[name] = source

    def unregister(self, name: str) -> None:
        with self._lock:
            if name in self.tables:
                self.db.execute(f'DROP TABLE IF EXISTS main."{name}"')
                self.db.create_module(name, None)
                del self.tables[name]

    def _prepare(self, sql: str) -> _Prepared:
        """Prepare the first statement of ``sql`` without running it (planning,
        and so xBestIndex, happens at prepare); ``apsw.Error`` when it does not
        compile."""
        got: list[_Prepared] = []

        def tracer(cursor: apsw.Cursor, first: str, bindings: Any) -> bool:
            names = [d[0] for d in cursor.get_description()]
            got.append(_Prepared(first, sql[len(first) :], names, cursor.is_readonly))
            return False  # stop before the first step

        cur = self.db.cursor()
        cur.exec_trace = tracer
        with contextlib.suppress(apsw.ExecTraceAbort):
            cur.execute(sql, can_cache=False)
        return got[0] if got else _Prepared("", "", [], True)

    def _bulk_candidates(self, sql: str) -> dict[str, set[str]]:
        """Tables the statement scans without a pushable constraint (planning only)."""
        seen = self._planning  # shared with every module: reset, not replaced
        seen.scanned.clear()
        seen.constrained.clear()
        seen.used.clear()
        try:
            self._prepare(sql)
        except apsw.Error:
            return {}  # the real run reports it
        out: dict[str, set[str]] = {}
        for name in seen.scanned - seen.constrained:
            spec = self.tables[name].spec
            if any(c.hidden or c.options & _REQUIRED for c in spec.columns):
                continue
            out[name] = seen.used.get(name, set())
        return out

    def _scan_rows(self, sql: str) -> Optional[tuple[str, list[str], Sequence[Sequence[Any]]]]:
        """(table, column names, generated rows) when ``sql`` is ``SELECT * FROM
        table`` of a registered table without hidden or required columns (what
        :meth:`_bulk_candidates` would copy); None, without generating, otherwise."""
        m = _FULL_SCAN.fullmatch(sql)
        if m is None:
            return None
        name = (m.group(1) or m.group(2)).lower()
        source = self.tables.get(name)
        if source is None:
            return None
        spec = source.spec
        if any(c.hidden or c.options & _REQUIRED for c in spec.columns):
            return None
        names = [c.name for c in spec.columns]
        if name not in self._kinds:
            self._kinds[name] = "".join(affinity(c.type) for c in spec.columns).encode()
        return name, names, source.generate(QueryContext.of((), set(names)))

    def _copy_in(
        self, name: str, used: set[str], rows: Optional[Sequence[Sequence[Any]]] = None
    ) -> None:
        """Copy ``rows`` (generated here when None) into ``temp."name"``."""
        spec = self.tables[name].spec
        if rows is None:
            rows = self.tables[name].generate(QueryContext.of((), used))
        cols = ", ".join(f'"{c.name}" {c.type}' for c in spec.columns)
        marks = ", ".join("?" * len(spec.columns))
        self.db.execute(f'CREATE TEMP TABLE "{name}"({cols})')
        self.db.executemany(f'INSERT INTO temp."{name}" VALUES ({marks})', rows)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run SQL; returns column names and rows. Errors become :class:`SQLError`."""
        return self._query(sql, None)

    def _query(
        self, sql: str, scanned: Optional[tuple[str, Sequence[Sequence[Any]]]]
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """:meth:`query`; ``scanned``: (table, rows) already generated for this
        statement (a full scan SQLite must convert), copied instead of generated."""
        with self._lock, gc_paused():
            copied: list[str] = []
            self.last_direct = ()
            try:
                if self.bulk and scanned is None:
                    got = self._scan_rows(sql)
                    if got is not None:
                        name, names, raw = got
                        rows = sqlite_rows(raw, self._kinds[name])
                        if rows is not None:
                            self.last_bulk = self.last_direct = (name,)
                            return names, rows
                        scanned = (name, raw)
                if self.bulk:
                    for name, used in self._bulk_candidates(sql).items():
                        copied.append(name)
                        pre = scanned[1] if scanned is not None and scanned[0] == name else None
                        self._copy_in(name, used, pre)
                self.last_bulk = tuple(copied)
                cur = self.db.cursor()
                cur.execute(sql)
                try:
                    names = [d[0] for d in cur.getdescription()]
                except apsw.ExecutionCompleteError:
                    # No row came back (or the statement returns none): take
                    # the names from the prepared statement instead.
                    names = [c for c, _ in self.columns(sql)] if sql.strip() else []
                rows = list(cur)
            except apsw.Error as e:
                raise SQLError(_sqlite_message(e)) from None
            finally:
                for name in copied:
                    with contextlib.suppress(apsw.Error):
                        self.db.execute(f'DROP TABLE IF EXISTS temp."{name}"')
        return names, rows

    def query_json_utf8(self, sql: str) -> bytes | None:
        """:meth:`query_json` as one UTF-8 text, each line ending in a newline. A
        full scan (see the module notes) is encoded by the compiled accelerator
        when it is there (``_speedups.json_lines``: what ``json_object`` writes,
        byte for byte, straight into the bytes returned), else by SQLite."""
        scanned: Optional[tuple[str, Sequence[Sequence[Any]]]] = None
        if self.bulk and _native is not None:
            with self._lock, gc_paused():
                got = self._scan_rows(sql)
                if got is not None:
                    name, names, raw = got
                    data: Optional[bytes] = _native.json_lines(names, raw, self._kinds[name])
                    if data is not None:
                        self.last_bulk = self.last_direct = (name,)
                        return data
                    scanned = (name, raw)
        lines = self._query_json(sql, scanned)
        return None if lines is None else "".join(line + "\n" for line in lines).encode()

    def query_json(self, sql: str) -> list[str] | None:
        """Rows of one SELECT as JSON objects (one string per row), encoded by
        SQLite's ``json_object``: 20k rows cost ~25 ms, where reading them into
        Python and ``json.dumps`` costs ~170 ms. Keys are the result's column
        names; integers and text are exact, a REAL has SQLite's 15 significant
        digits. None when the statement is not one read-only statement with
        unique column names, or a value is a BLOB (JSON cannot hold one): the
        caller then encodes rows itself. Errors become :class:`SQLError`.
        """
        return self._query_json(sql, None)

    def _query_json(
        self, sql: str, scanned: Optional[tuple[str, Sequence[Sequence[Any]]]]
    ) -> list[str] | None:
        with self._lock:
            try:
                info = self._prepare(sql)
            except apsw.Error as e:
                raise SQLError(_sqlite_message(e)) from None
            names = info.names
            if (
                not names
                or not info.readonly
                or info.remaining.strip(" \t\r\n;")
                or len(set(names)) != len(names)
            ):
                return None
            pairs = ", ".join(f"{_sql_text(n)}, {_sql_name(n)}" for n in names)
            body = (info.first or sql).rstrip().rstrip(";")
            try:
                _names, rows = self._query(f"SELECT json_object({pairs}) FROM ({body}\n)", scanned)
            except SQLError as e:
                if "BLOB" in str(e):
                    return None
                raise
            return [r[0] for r in rows]

    def columns(self, sql: str) -> list[tuple[str, str]]:
        """Column names and declared types a query would return, without running it."""
        import apsw.ext

        with self._lock:
            try:
                info = apsw.ext.query_info(self.db, sql)
            except apsw.Error as e:
                raise SQLError(_sqlite_message(e)) from None
        return [(d[0], d[1] or "") for d in (info.description or ())]

    def close(self) -> None:
        with self._lock:
            self.db.close()


def _sql_text(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def _sql_name(v: str) -> str:
    return '"' + v.replace('"', '""') + '"'


def _sqlite_message(e: BaseException) -> str:
    # apsw prefixes messages with the exception class name ("SQLError: ...").
    msg = str(e)
    for prefix in ("SQLError: ", "Error: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg or type(e).__name__
