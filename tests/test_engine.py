"""The embedded SQLite engine: pushdown as osquery does it, errors, and the CLI's query path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Optional

import pytest

from readegress.sql.engine import Engine, SQLError
from readegress.sql.local import LocalSource
from readegress.tables.base import BoundTable, TableCalls, TableEnv
from readegress.tables.context import QueryContext
from readegress.tables.spec import parse_spec

SPEC = parse_spec(
    """
name = "numbers"
description = "Test numbers."
implementation = "tests:Numbers"
examples = ["SELECT * FROM numbers"]
[[columns]]
name = "n"
type = "BIGINT"
description = "A number."
index = true
[[columns]]
name = "label"
type = "TEXT"
description = "Its label."
[[columns]]
name = "half"
type = "DOUBLE"
description = "Half of it."
[[columns]]
name = "even"
type = "INTEGER"
description = "1 when even."
[[columns]]
name = "secret"
type = "TEXT"
description = "Hidden."
hidden = true
"""
)


class Row(NamedTuple):
    n: int
    label: Optional[str]
    half: float
    even: bool
    secret: str


class Numbers:
    row_type = Row

    def __init__(self, env: TableEnv) -> None:
        self.seen: list[QueryContext] = []

    def generate(self, ctx: QueryContext) -> Iterator[Row]:
        self.seen.append(ctx)
        wanted = ctx.int_equals("n")
        for i in range(10):
            if wanted is None or i in wanted:
                yield Row(i, None if i == 3 else f"n{i}", i / 2, i % 2 == 0, "s")


class Boom:
    row_type = Row

    def __init__(self, env: TableEnv) -> None:
        pass

    def generate(self, ctx: QueryContext) -> Iterator[Row]:
        raise OSError("disk on fire")
        yield  # pragma: no cover


@pytest.fixture
def engine() -> Iterator[tuple[Engine, Numbers]]:
    impl = Numbers(TableEnv())
    table = BoundTable(SPEC, impl)
    calls = TableCalls({"numbers": table}, timeout=5)
    e = Engine()
    e.register(LocalSource(table, calls))
    yield e, impl
    calls.close()
    e.close()


def test_types_and_nulls(engine: tuple[Engine, Numbers]) -> None:
    e, _ = engine
    names, rows = e.query("SELECT n, label, half, even, typeof(even) FROM numbers WHERE n = 3")
    assert names == ["n", "label", "half", "even", "typeof(even)"]
    assert rows == [(3, None, 1.5, 0, "integer")]


def test_equals_and_in_are_pushed_down(engine: tuple[Engine, Numbers]) -> None:
    e, impl = engine
    _, rows = e.query("SELECT n FROM numbers WHERE n IN (2, 5, 11) ORDER BY n")
    assert rows == [(2,), (5,)]
    pushed = [c.int_equals("n") for c in impl.seen]
    assert all(p is not None and len(p) == 1 for p in pushed), pushed
    assert set().union(*pushed) == {2, 5, 11}  # type: ignore[arg-type]


def test_unindexed_columns_are_not_pushed(engine: tuple[Engine, Numbers]) -> None:
    e, impl = engine
    _, rows = e.query("SELECT n FROM numbers WHERE label = 'n4'")
    assert rows == [(4,)]
    assert impl.seen[-1].constraints == ()


def test_range_constraint_and_recheck(engine: tuple[Engine, Numbers]) -> None:
    e, impl = engine
    _, rows = e.query("SELECT count(*) FROM numbers WHERE n > 6")
    assert rows == [(3,)]
    assert impl.seen[-1].int_lower_bound("n") == 7


def test_hidden_column_only_when_named(engine: tuple[Engine, Numbers]) -> None:
    e, _ = engine
    names, _ = e.query("SELECT * FROM numbers LIMIT 1")
    assert "secret" not in names
    _, rows = e.query("SELECT secret FROM numbers LIMIT 1")
    assert rows == [("s",)]


def test_cols_used_reaches_the_table(engine: tuple[Engine, Numbers]) -> None:
    e, impl = engine
    e.query("SELECT label FROM numbers")
    assert impl.seen[-1].cols_used == {"label"}


def test_join_calls_generate_per_outer_row(engine: tuple[Engine, Numbers]) -> None:
    e, impl = engine
    _, rows = e.query(
        "SELECT a.n, b.label FROM numbers a JOIN numbers b ON b.n = a.n WHERE a.n < 3"
    )
    assert sorted(rows) == [(0, "n0"), (1, "n1"), (2, "n2")]
    assert any(c.int_equals("n") == {2} for c in impl.seen)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM nope", "no such table: nope"),
        ("SELECT nope FROM numbers", "no such column: nope"),
    ],
)
def test_sql_errors(engine: tuple[Engine, Numbers], sql: str, message: str) -> None:
    e, _ = engine
    with pytest.raises(SQLError, match=message):
        e.query(sql)


def test_table_exception_is_an_sql_error_naming_the_table() -> None:
    table = BoundTable(SPEC, Boom(TableEnv()))
    calls = TableCalls({"numbers": table}, timeout=5)
    e = Engine()
    e.register(LocalSource(table, calls))
    with pytest.raises(SQLError, match="numbers: OSError: disk on fire"):
        e.query("SELECT * FROM numbers")
    calls.close()


def test_row_type_must_match_spec() -> None:
    class Wrong(NamedTuple):
        n: int

    class Impl:
        row_type = Wrong

        def generate(self, ctx: QueryContext) -> Iterator[Wrong]:
            yield Wrong(1)

    with pytest.raises(TypeError, match="do not match spec columns"):
        BoundTable(SPEC, Impl())


# -- bulk scans and SQLite-encoded JSON (the local engine of `readegress query`) --

PLAIN_SPEC = parse_spec(
    """
name = "plain"
description = "Test numbers without hidden columns."
implementation = "tests:Plain"
examples = ["SELECT * FROM plain"]
[[columns]]
name = "n"
type = "BIGINT"
description = "A number."
index = true
[[columns]]
name = "label"
type = "TEXT"
description = "Its label."
[[columns]]
name = "half"
type = "DOUBLE"
description = "Half of it."
[[columns]]
name = "even"
type = "INTEGER"
description = "1 when even."
"""
)


class PlainRow(NamedTuple):
    n: int
    label: Optional[str]
    half: float
    even: bool


class Plain:
    row_type = PlainRow

    def __init__(self, env: TableEnv) -> None:
        self.seen: list[QueryContext] = []

    def generate(self, ctx: QueryContext) -> Iterator[PlainRow]:
        self.seen.append(ctx)
        wanted = ctx.int_equals("n")
        for i in range(10):
            if wanted is None or i in wanted:
                yield PlainRow(i, None if i == 3 else f"n'{i}", i / 2, i % 2 == 0)


@pytest.fixture(params=[False, True], ids=["vtable", "bulk"])
def both(request: pytest.FixtureRequest) -> Iterator[tuple[Engine, Plain, Numbers]]:
    plain, numbers = Plain(TableEnv()), Numbers(TableEnv())
    tables = {"plain": BoundTable(PLAIN_SPEC, plain), "numbers": BoundTable(SPEC, numbers)}
    calls = TableCalls(tables, timeout=5)
    e = Engine(bulk=request.param)
    for t in tables.values():
        e.register(LocalSource(t, calls))
    yield e, plain, numbers
    calls.close()
    e.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM plain",
        "SELECT n, half FROM plain WHERE label LIKE 'n%' ORDER BY n DESC",
        "SELECT count(*), sum(half) FROM plain",
        "SELECT p.n, q.label FROM plain p JOIN plain q ON q.n = p.n + 1",
        "SELECT * FROM plain WHERE n IN (2, 4)",
        "SELECT n, secret FROM numbers WHERE n > 6",
    ],
)
def test_bulk_scans_answer_exactly_as_virtual_tables(
    both: tuple[Engine, Plain, Numbers], sql: str
) -> None:
    e, _plain, _numbers = both
    reference = Engine()
    tables = {
        "plain": BoundTable(PLAIN_SPEC, Plain(TableEnv())),
        "numbers": BoundTable(SPEC, Numbers(TableEnv())),
    }
    calls = TableCalls(tables, timeout=5)
    for t in tables.values():
        reference.register(LocalSource(t, calls))
    try:
        assert e.query(sql) == reference.query(sql)
    finally:
        calls.close()
        reference.close()
    # The copies live for one statement only.
    assert e.query("SELECT name FROM sqlite_temp_master") == (["name"], [])


def test_bulk_copies_only_unconstrained_scans_of_plain_tables(
    both: tuple[Engine, Plain, Numbers],
) -> None:
    e, plain, _numbers = both
    bulk = e.bulk
    e.query("SELECT n, label FROM plain")
    assert e.last_bulk == (("plain",) if bulk else ())
    # Columns used still reach the table; no constraint is invented.
    assert plain.seen[-1].constraints == () and plain.seen[-1].cols_used >= {"n", "label"}
    e.query("SELECT * FROM plain WHERE n = 4")
    assert e.last_bulk == ()  # constrained: pushdown as before
    assert plain.seen[-1].int_equals("n") == {4}
    e.query("SELECT * FROM numbers")
    assert e.last_bulk == ()  # a hidden column must stay hidden from SELECT *
    assert e.query("SELECT * FROM plain")[0] == ["n", "label", "half", "even"]


def test_query_json_is_what_python_would_encode(both: tuple[Engine, Plain, Numbers]) -> None:
    import json

    e, _plain, _numbers = both
    sql = "SELECT n, label, half, even, n > 5 AS big FROM plain ORDER BY n DESC"
    lines = e.query_json(sql)
    names, rows = e.query(sql)
    assert lines is not None
    assert [json.loads(x) for x in lines] == [dict(zip(names, r)) for r in rows]
    assert json.loads(lines[0])["n"] == 9  # order kept
    assert json.loads(lines[6]) == {"n": 3, "label": None, "half": 1.5, "even": 0, "big": 0}
    assert e.query_json("SELECT * FROM plain WHERE n > 100") == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT n, n FROM plain",  # duplicate keys: Python keeps the last
        "SELECT x'00ff' AS b",  # JSON holds no BLOB
        "SELECT 1; SELECT 2",
        "PRAGMA user_version = 3",
    ],
)
def test_query_json_declines_what_it_cannot_encode_faithfully(
    both: tuple[Engine, Plain, Numbers], sql: str
) -> None:
    e, _plain, _numbers = both
    assert e.query_json(sql) is None


def test_query_json_errors_are_sql_errors(both: tuple[Engine, Plain, Numbers]) -> None:
    e, _plain, _numbers = both
    with pytest.raises(SQLError, match="no such table"):
        e.query_json("SELECT * FROM nope")


def test_osquery_rows_share_repeated_integers_and_stay_exact() -> None:
    class Many:
        row_type = PlainRow

        def __init__(self, env: TableEnv) -> None:
            pass

        def generate(self, ctx: QueryContext) -> Iterator[PlainRow]:
            for i in range(1000):  # n: 1000 distinct values, more than a column's memo
                yield PlainRow(i, None, i / 4, 10 + i % 2)  # type: ignore[arg-type]

    table = BoundTable(PLAIN_SPEC, Many(TableEnv()))
    rows = table.osquery_rows(QueryContext.of(()))
    assert [r["n"] for r in rows] == [str(i) for i in range(1000)]
    assert [r["even"] for r in rows] == [str(10 + i % 2) for i in range(1000)]
    assert rows[3] == {"n": "3", "label": "", "half": "0.75", "even": "11"}
    odd = [r["even"] for r in rows if r["even"] == "11"]
    assert len({id(x) for x in odd}) == 1  # one string for a repeated value
