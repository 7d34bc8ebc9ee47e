"""Query contexts as osquery sends them, including its quirks."""

from __future__ import annotations

import json

import pytest

from readegress.tables.context import ContextError, QueryContext, parse_int


def ctx(*constraints: dict[str, object], cols: list[str] | None = None) -> QueryContext:
    data: dict[str, object] = {"constraints": list(constraints)}
    if cols is not None:
        data["colsUsed"] = cols
        data["colsUsedBitset"] = 3
    return QueryContext.from_json(json.dumps(data))


def test_equals_and_in_are_a_union() -> None:
    c = ctx(
        {
            "name": "pid",
            "list": [{"op": 2, "expr": "1"}, {"op": 2, "expr": "7"}],
            "affinity": "BIGINT",
        }
    )
    assert c.int_equals("pid") == {1, 7}
    assert c.int_equals("fd") is None


def test_empty_list_as_string() -> None:
    c = ctx({"name": "pid", "list": "", "affinity": "BIGINT"})
    assert c.int_equals("pid") is None
    assert c.constraints == ()


def test_invalid_values_match_nothing() -> None:
    c = ctx({"name": "pid", "list": [{"op": 2, "expr": "1; DROP"}], "affinity": "BIGINT"})
    assert c.int_equals("pid") == frozenset()
    big = ctx({"name": "pid", "list": [{"op": 2, "expr": "99999999999999999999"}]})
    assert big.int_equals("pid") == frozenset()


def test_lower_bound() -> None:
    c = ctx({"name": "time", "list": [{"op": 4, "expr": "10"}, {"op": 32, "expr": "5"}]})
    assert c.int_lower_bound("time") == 11
    assert ctx().int_lower_bound("time") is None


def test_cols_used() -> None:
    c = ctx(cols=["pid"])
    assert c.uses("pid") and not c.uses("fd")
    assert QueryContext.from_json("").uses("anything")


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"constraints": 3}',
        '{"constraints": [{"list": []}]}',
        '{"constraints": [{"name": "a", "list": [{"op": "x"}]}]}',
    ],
)
def test_malformed_context_is_an_error(text: str) -> None:
    with pytest.raises(ContextError):
        QueryContext.from_json(text)


@pytest.mark.parametrize(
    ("text", "value"), [("12", 12), (" -3 ", -3), ("1e3", None), ("0x10", None), ("", None)]
)
def test_parse_int(text: str, value: int | None) -> None:
    assert parse_int(text) == value
