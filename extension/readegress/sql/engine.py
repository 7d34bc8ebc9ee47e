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
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import apsw

from readegress.kernel.memory import gc_paused
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
        #: tables the last statement read through a bulk copy (tests look)
        self.last_bulk: tuple[str, ...] = ()

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

    def _copy_in(self, name: str, used: set[str]) -> None:
        """Generate ``name`` once and copy its rows into ``temp."name"``."""
        spec = self.tables[name].spec
        rows = self.tables[name].generate(QueryContext.of((), used))
        cols = ", ".join(f'"{c.name}" {c.type}' for c in spec.columns)
        marks = ", ".join("?" * len(spec.columns))
        self.db.execute(f'CREATE TEMP TABLE "{name}"({cols})')
        self.db.executemany(f'INSERT INTO temp."{name}" VALUES ({marks})', rows)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run SQL; returns column names and rows. Errors become :class:`SQLError`."""
        with self._lock, gc_paused():
            copied: list[str] = []
            try:
                if self.bulk:
                    for name, used in self._bulk_candidates(sql).items():
                        copied.append(name)
                        self._copy_in(name, used)
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

    def query_json(self, sql: str) -> list[str] | None:
        """Rows of one SELECT as JSON objects (one string per row), encoded by
        SQLite's ``json_object``: 20k rows cost ~25 ms, where reading them into
        Python and ``json.dumps`` costs ~170 ms. Keys are the result's column
        names; integers and text are exact, a REAL has SQLite's 15 significant
        digits. None when the statement is not one read-only statement with
        unique column names, or a value is a BLOB (JSON cannot hold one): the
        caller then encodes rows itself. Errors become :class:`SQLError`.
        """
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
                _names, rows = self.query(f"SELECT json_object({pairs}) FROM ({body}\n)")
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
