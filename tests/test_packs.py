"""Every pack query runs in the SQL engine against the table specs; the Fleet file matches."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from readegress.sql.engine import Engine
from readegress.tables.context import QueryContext
from readegress.tables.spec import TableSpec, load_specs

PACKS = Path(__file__).resolve().parents[1] / "packs"
PACK = json.loads((PACKS / "readegress.conf").read_text())


class SchemaOnly:
    """A table with the spec's schema and no rows: enough to compile a query."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec

    def generate(self, ctx: QueryContext) -> Sequence[Sequence[Any]]:
        return []


@pytest.fixture(scope="module")
def engine() -> Engine:
    e = Engine()
    for spec in load_specs().values():
        e.register(SchemaOnly(spec))
    return e


def test_pack_shape() -> None:
    assert PACK["platform"] == "linux"
    assert set(PACK) <= {"platform", "version", "discovery", "queries", "shard"}
    for name, q in PACK["queries"].items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert 1 <= q["interval"] <= 604800
        assert q["description"].endswith(".") and q["value"]
        assert set(q) <= {
            "query",
            "interval",
            "platform",
            "version",
            "description",
            "value",
            "snapshot",
            "removed",
            "denylist",
            "shard",
        }


@pytest.mark.parametrize("name", sorted(PACK["queries"]))
def test_pack_query_compiles_and_runs(engine: Engine, name: str) -> None:
    sql = PACK["queries"][name]["query"]
    cols = engine.columns(sql)
    assert cols and all(c for c, _ in cols)
    names, rows = engine.query(sql)
    assert names == [c for c, _ in cols] and rows == []


def test_discovery_query_names_the_extension() -> None:
    assert any("readegress" in q for q in PACK["discovery"])


def test_fleet_reports_match_the_pack() -> None:
    text = (PACKS / "fleet" / "readegress.yml").read_text()
    docs = [d for d in text.split("\n---\n") if "spec:" in d]
    fleet = {}
    for d in docs:
        assert "apiVersion: v1" in d and "kind: report" in d
        name = re.search(r"^  name: (\S+)$", d, re.M)
        query = re.search(r'^  query: "(.*)"$', d, re.M)
        interval = re.search(r"^  interval: (\d+)$", d, re.M)
        logging = re.search(r"^  logging: (\S+)$", d, re.M)
        assert name and query and interval and logging, d
        fleet[name.group(1)] = (query.group(1), int(interval.group(1)), logging.group(1))
    want = {
        f"readegress_{n}": (
            q["query"],
            q["interval"],
            "snapshot" if q.get("snapshot") else "differential_ignore_removals",
        )
        for n, q in PACK["queries"].items()
    }
    assert fleet == want
