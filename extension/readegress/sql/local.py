"""The embedded engine over this host's tables (``readegress query``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from readegress.sql.engine import Engine, SQLError
from readegress.tables.base import BoundTable, TableCallError, TableCalls, TableEnv, load_tables
from readegress.tables.context import QueryContext
from readegress.tables.spec import TableSpec, load_specs


class LocalSource:
    """A table called in-process through the shared call wrapper."""

    def __init__(self, table: BoundTable, calls: TableCalls) -> None:
        self._table = table
        self._calls = calls

    @property
    def spec(self) -> TableSpec:
        return self._table.spec

    def generate(self, ctx: QueryContext) -> Sequence[Sequence[Any]]:
        try:
            rows = self._calls.generate(self._table.name, ctx)
        except TableCallError as e:
            raise SQLError(str(e)) from None
        return self._table.to_sqlite_rows(rows)


def open_local_engine(
    env: TableEnv, *, timeout: float = 60.0, sql: str | None = None
) -> tuple[Engine, TableCalls]:
    """An engine with this host's tables registered: every spec'd table, or with
    ``sql`` only those whose name it mentions (imports stay lazy on the CLI path;
    an unmentioned table cannot be read by that statement)."""
    names = None
    if sql is not None:
        low = sql.lower()
        names = [n for n in load_specs() if n in low]
    tables = load_tables(env, names)
    calls = TableCalls(tables, timeout=timeout)
    engine = Engine(bulk=True)
    for table in tables.values():
        engine.register(LocalSource(table, calls))
    return engine, calls
