"""``readegress packs check``: the pack source and every generated file, all problems in one run.

- the source files (:func:`readegress.packs.source.load_source`);
- every query, discovery and label query compiled and run in the embedded
  SQLite engine against exactly the tables it declares in ``requires``: the
  project's table specs and osquery's own tables
  (:mod:`readegress.packs.osquery_schema`), exact columns, so a column or
  table that does not exist fails; ``all_columns`` queries select every
  visible column of their table; event-table intervals fit ``events_expiry``;
- every generated file exists and equals what ``packs build`` would write
  (else: stale), and parses with a real JSON or YAML parser; what each format
  says about snapshot, removal logging, interval and automations matches the
  source, read back from the parsed file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from readegress.packs.formats import BuildInputs, build_inputs, render
from readegress.packs.osquery_schema import EVENT_TABLES, OSQUERY_TABLES
from readegress.packs.source import PackQuery, PackSource, Problem, load_source
from readegress.tables.context import QueryContext
from readegress.tables.spec import OPTION_BITS, Column, SpecError, TableSpec, load_specs

#: osquery's default --events_expiry (seconds), when install/osquery.flags does not set it.
DEFAULT_EVENTS_EXPIRY = 3600


class _SchemaOnly:
    """A table with a schema and no rows: enough to compile and run a query."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec

    def generate(self, ctx: QueryContext) -> Sequence[Sequence[Any]]:
        return []


def osquery_specs() -> dict[str, TableSpec]:
    """osquery's own tables the packs use, as specs."""
    out = {}
    for name, cols in OSQUERY_TABLES.items():
        columns = tuple(
            Column(c[0], c[1], "", OPTION_BITS[c[2]] if len(c) == 3 else 0) for c in cols
        )
        out[name] = TableSpec(name, f"osquery's {name}.", "osquery", columns, ())
    return out


def all_specs() -> dict[str, TableSpec]:
    return {**osquery_specs(), **load_specs()}


def _compile(sql: str, tables: Iterable[TableSpec]) -> tuple[list[str], str]:
    """Column names the query returns, or an error message."""
    from readegress.sql.engine import Engine, SQLError

    engine = Engine()
    try:
        for spec in tables:
            engine.register(_SchemaOnly(spec))
        names, _ = engine.query(sql)
        return names, ""
    except SQLError as e:
        return [], str(e)
    finally:
        engine.close()


def _events_expiry(inputs: BuildInputs) -> int:
    for name, value in inputs.flags:
        if name == "events_expiry" and isinstance(value, int) and not isinstance(value, bool):
            return value
    return DEFAULT_EVENTS_EXPIRY


def check_queries(
    source: PackSource, inputs: BuildInputs, specs: dict[str, TableSpec]
) -> list[Problem]:
    problems: list[Problem] = []
    expiry = _events_expiry(inputs)
    for q in source.queries.values():
        missing = [t for t in q.requires if t not in specs]
        if missing:
            problems.append(
                Problem(q.path, q.line("requires"), f"unknown table(s) {missing} in requires")
            )
            continue
        names, error = _compile(q.sql(inputs.fills), (specs[t] for t in q.requires))
        if error:
            problems.append(
                Problem(
                    q.path,
                    q.line("sql"),
                    f"query does not run against {list(q.requires)} (exact columns): {error}",
                )
            )
            continue
        if len(set(names)) != len(names):
            problems.append(Problem(q.path, q.line("sql"), "query returns a column name twice"))
        if q.all_columns:
            spec = specs[q.requires[0]]
            want = [c.name for c in spec.columns if not c.hidden]
            left_out = [c for c in want if c not in names]
            if left_out:
                problems.append(
                    Problem(
                        q.path,
                        q.line("sql"),
                        f"all_columns: {spec.name} columns not selected: {', '.join(left_out)}",
                    )
                )
        if any(t in EVENT_TABLES for t in q.requires) and q.interval >= expiry:
            problems.append(
                Problem(
                    q.path,
                    q.line("interval"),
                    f"interval {q.interval} must be below --events_expiry={expiry}, or events"
                    " expire before the query reads them",
                )
            )
    for pack in source.packs.values():
        osq = osquery_specs()
        _, error = _compile(pack.discovery, osq.values())
        if error:
            problems.append(
                Problem(pack.path, pack.line, f"pack {pack.name}: discovery does not run: {error}")
            )
    return problems


def _first_difference(a: str, b: str) -> int:
    al, bl = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(al, bl), 1):
        if x != y:
            return i
    return min(len(al), len(bl)) + 1


def _parse(path: Path, text: str) -> tuple[Any, Problem | None]:
    if path.suffix == ".conf":
        try:
            return json.loads(text), None
        except json.JSONDecodeError as e:
            return None, Problem(str(path), e.lineno, f"not JSON: {e.msg}")
    try:
        import yaml
    except ImportError:
        return None, Problem(
            str(path), 1, "cannot parse YAML: PyYAML is not installed (pip install pyyaml)"
        )
    try:
        return list(yaml.safe_load_all(text)), None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        return None, Problem(str(path), line, f"not YAML: {e}")


def _expect(
    problems: list[Problem], path: Path, q: PackQuery, what: str, got: Any, want: Any
) -> None:
    if got != want:
        problems.append(
            Problem(
                str(path),
                1,
                f"{q.scheduled_name}: {what} is {got!r}, the source ({q.path}) says {want!r}",
            )
        )


def _check_meaning(
    path: Path, rel: str, doc: Any, source: PackSource, problems: list[Problem]
) -> None:
    """What a parsed file says about each query, against the source."""
    by_name = {q.scheduled_name: q for q in source.queries.values()}
    logs_removed = {q.scheduled_name: (not q.snapshot and q.removed) for q in by_name.values()}
    seen: set[str] = set()
    if rel.endswith(".conf"):
        pack = rel[: -len(".conf")]
        for name, entry in (doc.get("queries") or {}).items():
            q = source.queries.get(name)
            if q is None or q.pack != pack:
                problems.append(Problem(str(path), 1, f"query {name!r} is not in the source"))
                continue
            seen.add(q.scheduled_name)
            snapshot = bool(entry.get("snapshot", False))
            # osquery logs removed rows of differential queries unless "removed": false.
            _expect(problems, path, q, "snapshot", snapshot, q.snapshot)
            got = not snapshot and bool(entry.get("removed", True))
            _expect(problems, path, q, "removal logging", got, logs_removed[q.scheduled_name])
            _expect(problems, path, q, "interval", entry.get("interval"), q.interval)
        want = {q.scheduled_name for q in source.of_pack(pack)}
    else:
        items: list[Any] = []
        for d in doc:
            if isinstance(d, list):
                items.extend(d)
            elif isinstance(d, dict) and d.get("kind") in ("report", "query", "pack"):
                items.append({**(d.get("spec") or {}), "_kind": d["kind"]})
        for item in items:
            if not isinstance(item, dict):
                continue
            if item.get("_kind") == "pack":
                for entry in item.get("queries") or []:
                    q = by_name.get(entry.get("query", ""))
                    if q is None:
                        continue
                    seen.add(q.scheduled_name)
                    snapshot = bool(entry.get("snapshot", False))
                    _expect(problems, path, q, "snapshot", snapshot, q.snapshot)
                    got = not snapshot and bool(entry.get("removed", True))
                    _expect(
                        problems, path, q, "removal logging", got, logs_removed[q.scheduled_name]
                    )
                    _expect(problems, path, q, "interval", entry.get("interval"), q.interval)
                continue
            q = by_name.get(item.get("name", ""))
            if q is None or "interval" not in item:
                continue  # a legacy saved query carries no schedule
            seen.add(q.scheduled_name)
            logging_mode = item.get("logging", "snapshot")
            _expect(problems, path, q, "snapshot", logging_mode == "snapshot", q.snapshot)
            _expect(
                problems,
                path,
                q,
                "removal logging",
                logging_mode == "differential",
                logs_removed[q.scheduled_name],
            )
            _expect(problems, path, q, "interval", item.get("interval"), q.interval)
            _expect(
                problems,
                path,
                q,
                "automations_enabled",
                bool(item.get("automations_enabled", False)),
                q.automations,
            )
        want = set(by_name) if seen else set()
    for name in sorted(want - seen):
        problems.append(Problem(str(path), 1, f"{name} is missing"))


def check_generated(packs_dir: Path, files: dict[str, str], source: PackSource) -> list[Problem]:
    problems: list[Problem] = []
    for rel, text in files.items():
        path = packs_dir / rel
        try:
            have = path.read_text(encoding="utf-8")
        except OSError:
            problems.append(Problem(str(path), 1, "missing: run `readegress packs build`"))
            continue
        doc, bad = _parse(path, have)
        if bad is not None:
            problems.append(bad)
            continue
        if have != text:
            problems.append(
                Problem(
                    str(path),
                    _first_difference(have, text),
                    "stale: differs from what packs/src builds (run `readegress packs build`)",
                )
            )
        if not rel.endswith(("labels.yml", "agent-options.yml")):
            _check_meaning(path, rel, doc, source, problems)
    return problems


def check(root: Path) -> list[Problem]:
    """Every problem of the packs under ``root`` (a source tree with packs/ and install/)."""
    source = load_source(root / "packs" / "src")
    problems = list(source.problems)
    try:
        inputs = build_inputs(root)
        specs = all_specs()
    except (OSError, SpecError, ValueError) as e:
        return [*problems, Problem(str(root), 1, f"cannot build the packs: {e}")]
    problems += check_queries(source, inputs, specs)
    if not source.problems:
        problems += check_generated(root / "packs", render(source, inputs), source)
    return problems
