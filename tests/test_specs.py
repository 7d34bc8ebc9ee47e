"""Table specs: osquery's spec rules, applied to every shipped spec and to bad ones."""

from __future__ import annotations

import dataclasses

import pytest

from readegress.tables.base import TableEnv, load_tables
from readegress.tables.spec import SpecError, load_specs, parse_spec, validate_spec

GOOD = """\
name = "t_events"
description = "A table."
implementation = "m:C"
examples = ["SELECT * FROM t_events"]

[[columns]]
name = "time"
type = "BIGINT"
description = "When."
index = true

[[columns]]
name = "path"
type = "TEXT"
description = "Where."
hidden = true
"""


def test_shipped_specs_follow_osquery_rules() -> None:
    specs = load_specs()
    assert {"socket_bytes", "process_net_bytes"} <= set(specs)
    for spec in specs.values():
        assert validate_spec(spec) == [], spec.name
        assert any(c.pushdown for c in spec.columns), f"{spec.name}: nothing to push down"


def test_shipped_specs_bind_to_their_implementations() -> None:
    # BoundTable refuses a row type whose fields differ from the spec's columns.
    env = TableEnv()
    tables = load_tables(env)
    assert set(tables) == set(load_specs())


def test_routes_carry_types_and_option_bits() -> None:
    spec = parse_spec(GOOD)
    assert spec.routes() == [
        {"id": "column", "name": "time", "type": "BIGINT", "op": "1"},
        {"id": "column", "name": "path", "type": "TEXT", "op": "16"},
    ]
    assert "HIDDEN" in spec.create_sql()


@pytest.mark.parametrize(
    ("edit", "message", "line"),
    [
        (('description = "A table."', 'description = "No period"'), "end with a period", 2),
        (('name = "path"', 'name = "time"'), "declared twice", 13),
        (('name = "path"', 'name = "group"'), "reserved", 13),
        (('type = "TEXT"', 'type = "STRING"'), "type 'STRING'", 13),
        (('type = "BIGINT"', 'type = "TEXT"'), "BIGINT 'time'", 1),
        (("hidden = true", "hiden = true"), "unknown key", 13),
        (('examples = ["SELECT * FROM t_events"]', "examples = []"), "example", 1),
    ],
)
def test_bad_specs_name_file_and_line(edit: tuple[str, str], message: str, line: int) -> None:
    text = GOOD.replace(*edit)
    assert text != GOOD
    with pytest.raises(SpecError, match=message) as e:
        parse_spec(text, "x.toml")
    assert str(e.value).startswith(f"x.toml:{line}:")


def test_toml_syntax_error_names_file() -> None:
    with pytest.raises(SpecError, match=r"^x.toml:1: "):
        parse_spec("name = ", "x.toml")


def test_columns_are_immutable() -> None:
    spec = parse_spec(GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.columns[0].name = "x"  # type: ignore[misc]


def test_readme_table_reference_is_generated_from_the_specs() -> None:
    from pathlib import Path

    from readegress.tables.spec import readme_with_reference

    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert text == readme_with_reference(text, load_specs()), (
        "README's table reference is stale: run `readegress tables --update-readme README.md`"
    )
