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
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import apsw

from readegress.tables.context import Constraint, QueryContext
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


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC during a query: rows are tuples of ints and strings,
    never cycles, yet a 20k-row table triggers several full collections."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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


class _VTable:
    def __init__(self, source: RowSource) -> None:
        self.source = source
        self.spec = source.spec

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
        info.idxStr = json.dumps(
            {"c": plan, "u": [c.name for j, c in enumerate(cols) if j in used]}
        )
        info.estimatedCost = cost
        return True

    def Open(self) -> _Cursor:
        return _Cursor(self)

    def Disconnect(self) -> None:
        pass

    Destroy = Disconnect


class _Module:
    def __init__(self, source: RowSource) -> None:
        self.source = source

    def Create(self, db: Any, modulename: str, dbname: str, tablename: str, *args: Any) -> Any:
        return self.source.spec.create_sql(), _VTable(self.source)

    Connect = Create


class Engine:
    """One SQLite connection with the given row sources as tables."""

    def __init__(self) -> None:
        self.db = apsw.Connection(":memory:")
        self._lock = threading.RLock()
        self.tables: dict[str, RowSource] = {}

    def register(self, source: RowSource) -> None:
        name = source.spec.name
        with self._lock:
            if name in self.tables:
                self.db.execute(f'DROP TABLE IF EXISTS temp."{name}"')
            self.db.create_module(name, _Module(source), use_bestindex_object=True)  # type: ignore[arg-type]
            self.db.execute(f'CREATE VIRTUAL TABLE temp."{name}" USING "{name}"()')
            self.tables[name] = source

    def unregister(self, name: str) -> None:
        with self._lock:
            if name in self.tables:
                self.db.execute(f'DROP TABLE IF EXISTS temp."{name}"')
                self.db.create_module(name, None)
                del self.tables[name]

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run SQL; returns column names and rows. Errors become :class:`SQLError`."""
        with self._lock, _gc_paused():
            try:
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
        return names, rows

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


def _sqlite_message(e: BaseException) -> str:
    # apsw prefixes messages with the exception class name ("SQLError: ...").
    msg = str(e)
    for prefix in ("SQLError: ", "Error: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg or type(e).__name__
