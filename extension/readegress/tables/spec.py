"""Table specs: the single source of every table's schema.

Specs are TOML files in the top-level ``tables/`` folder, one per table. The
Thrift runtime builds its column routes from them, the embedded SQLite engine
its virtual-table schemas, the pack validator its schema and the README its
table reference. ``validate_spec`` applies osquery's own code-generator rules
(``tools/codegen/gentable.py``): a description ends with a period, column
names are unique and not reserved, ``*_events`` tables carry a BIGINT ``time``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.9/3.10
    import tomli as tomllib

# osquery's column types, spelled as they travel in registration routes.
COLUMN_TYPES = ("TEXT", "INTEGER", "BIGINT", "UNSIGNED BIGINT", "DOUBLE", "BLOB")

# Column option bits as osquery encodes them in the route's "op" field.
INDEX = 1
REQUIRED = 2
ADDITIONAL = 4
OPTIMIZED = 8
HIDDEN = 16
OPTION_BITS = {
    "index": INDEX,
    "required": REQUIRED,
    "additional": ADDITIONAL,
    "optimized": OPTIMIZED,
    "hidden": HIDDEN,
}

# Names osquery's code generator refuses for columns (SQL keywords it trips on).
RESERVED_COLUMN_NAMES = frozenset({"table", "set", "group", "order", "select", "from", "where"})


class SpecError(ValueError):
    """A spec file is malformed; the message starts with ``file:`` or ``file:line:``."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str
    options: int = 0

    @property
    def hidden(self) -> bool:
        return bool(self.options & HIDDEN)

    @property
    def pushdown(self) -> bool:
        """Whether osquery forwards constraints on this column to the extension."""
        return bool(self.options & (INDEX | REQUIRED | ADDITIONAL))


@dataclass(frozen=True)
class TableSpec:
    name: str
    description: str
    implementation: str
    columns: tuple[Column, ...]
    examples: tuple[str, ...]
    path: str = ""

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def routes(self) -> list[dict[str, str]]:
        """Registration routes exactly as osquery's core expects them."""
        return [
            {"id": "column", "name": c.name, "type": c.type, "op": str(c.options)}
            for c in self.columns
        ]

    def create_sql(self) -> str:
        """``CREATE TABLE`` for SQLite with osquery's declared types (hidden columns HIDDEN).

        SQLite derives affinity from the declared name (BIGINT → INTEGER,
        DOUBLE → REAL), and the declared name is what ``PRAGMA table_info``
        and osquery's own schema output show.
        """
        cols = ", ".join(
            f'"{c.name}" {c.type}{" HIDDEN" if c.hidden else ""}' for c in self.columns
        )
        return f'CREATE TABLE "{self.name}"({cols})'


def _line_of(text: str, needle: str) -> int:
    """Line of ``needle``; ``name = "x"#2`` asks for its second occurrence."""
    needle, _, nth = needle.partition("#")
    want = int(nth) if nth else 1
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            want -= 1
            if want == 0:
                return i
    return 1


def parse_spec(text: str, path: str = "<spec>") -> TableSpec:
    """Parse and validate one spec; errors carry ``path:line``."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib reports "(at line N, column M)" or "(at end of document)".
        msg = str(e)
        m = re.search(r"\(at line (\d+), column \d+\)", msg)
        line = int(m.group(1)) if m else max(1, len(text.splitlines()))
        raise SpecError(f"{path}:{line}: {msg}") from None

    def err(msg: str, needle: str) -> SpecError:
        return SpecError(f"{path}:{_line_of(text, needle)}: {msg}")

    for key in ("name", "description", "implementation", "columns"):
        if key not in data:
            raise SpecError(f"{path}:1: missing key '{key}'")
    columns = []
    for raw in data["columns"]:
        name = raw.get("name", "")
        unknown = set(raw) - {"name", "type", "description", *OPTION_BITS}
        if unknown:
            raise err(f"column {name!r}: unknown key(s) {sorted(unknown)}", f'"{name}"')
        ctype = raw.get("type", "")
        if ctype not in COLUMN_TYPES:
            raise err(f"column {name!r}: type {ctype!r} is not one of {COLUMN_TYPES}", f'"{name}"')
        options = 0
        for opt, bit in OPTION_BITS.items():
            if raw.get(opt, False):
                options |= bit
        columns.append(Column(name, ctype, str(raw.get("description", "")), options))
    spec = TableSpec(
        name=str(data["name"]),
        description=str(data["description"]),
        implementation=str(data["implementation"]),
        columns=tuple(columns),
        examples=tuple(str(e) for e in data.get("examples", ())),
        path=path,
    )
    for problem, needle in validate_spec(spec):
        raise err(problem, needle)
    return spec


def validate_spec(spec: TableSpec) -> list[tuple[str, str]]:
    """osquery's spec rules; returns ``(problem, text to locate it)`` pairs."""
    problems: list[tuple[str, str]] = []
    if not spec.name.isidentifier() or spec.name.lower() != spec.name:
        problems.append((f"table name {spec.name!r} must be a lower-case identifier", "name"))
    if not spec.description.endswith("."):
        problems.append(("table description must end with a period", "description"))
    seen: set[str] = set()
    for c in spec.columns:
        if not c.name.isidentifier():
            problems.append((f"column name {c.name!r} is not an identifier", f'"{c.name}"'))
        if c.name in seen:
            problems.append((f"column {c.name!r} is declared twice", f'name = "{c.name}"#2'))
        if c.name in RESERVED_COLUMN_NAMES:
            problems.append((f"column name {c.name!r} is reserved", f'"{c.name}"'))
        if not c.description.endswith("."):
            problems.append(
                (f"column {c.name!r}: description must end with a period", f'"{c.name}"')
            )
        seen.add(c.name)
    if spec.name.endswith("_events"):
        times = [c for c in spec.columns if c.name == "time"]
        if not times or times[0].type != "BIGINT":
            problems.append(("an *_events table needs a BIGINT 'time' column", "name"))
    if not spec.examples:
        problems.append(("a spec needs at least one example query", "name"))
    return problems


def spec_dir() -> Path:
    """Where the specs are: $READEGRESS_TABLES, the source tree, or the installed copy."""
    env = os.environ.get("READEGRESS_TABLES")
    if env:
        return Path(env)
    source_tree = Path(__file__).resolve().parents[3] / "tables"
    if source_tree.is_dir():
        return source_tree
    return Path(sys.prefix) / "share" / "readegress" / "tables"


#: Where a single-file build (install/build.sh) bundles the specs, inside the package.
BUNDLED_SPECS = "specs"


def _bundled_spec_files() -> list[tuple[str, str]]:
    """``(name, text)`` of the specs bundled in a single-file build; empty elsewhere.

    Read through importlib, which reads inside the ``readegress.ext`` zip.
    """
    import readegress

    pkg = os.path.dirname(readegress.__file__ or "")
    if os.path.isdir(pkg) and not os.path.isdir(os.path.join(pkg, BUNDLED_SPECS)):
        # A source tree or a pip install: nothing bundled, and no need for
        # importlib.resources (~2 ms of imports at every `readegress query`).
        return []
    import importlib.resources

    root = importlib.resources.files("readegress").joinpath(BUNDLED_SPECS)
    if not root.is_dir():
        return []
    entries = [e for e in root.iterdir() if e.name.endswith(".toml")]
    return [(e.name, e.read_text(encoding="utf-8")) for e in sorted(entries, key=lambda e: e.name)]


_parsed: dict[tuple[str, str], TableSpec] = {}


def load_specs(directory: Path | None = None) -> dict[str, TableSpec]:
    """Every ``*.toml`` spec in ``directory``, by table name, in file-name order.

    Without ``directory`` (and without ``$READEGRESS_TABLES``), the specs
    bundled in a single-file build win over :func:`spec_dir`.
    """
    bundled = [] if directory or os.environ.get("READEGRESS_TABLES") else _bundled_spec_files()
    if bundled:
        texts = [(f"readegress/{BUNDLED_SPECS}/{name}", text) for name, text in bundled]
    else:
        d = directory or spec_dir()
        files = sorted(d.glob("*.toml"))
        if not files:
            raise SpecError(f"{d}: no table specs found (set READEGRESS_TABLES)")
        texts = [(str(f), f.read_text(encoding="utf-8")) for f in files]
    specs: dict[str, TableSpec] = {}
    for where, text in texts:
        # Parsed once per process (`readegress query` asks twice; specs are frozen).
        spec = _parsed.get((where, text))
        if spec is None:
            spec = _parsed[(where, text)] = parse_spec(text, where)
        if spec.name in specs:
            raise SpecError(
                f"{where}:1: table {spec.name!r} already declared in {specs[spec.name].path}"
            )
        specs[spec.name] = spec
    return specs


def render_markdown(specs: dict[str, TableSpec]) -> str:
    """The README's table reference, generated from the specs (kept in sync by a test)."""
    out: list[str] = []
    for spec in specs.values():
        out.append(f"### `{spec.name}`\n\n{spec.description}\n")
        out.append("| column | type | notes | description |")
        out.append("|---|---|---|---|")
        for c in spec.columns:
            opts = ", ".join(o for o, bit in OPTION_BITS.items() if c.options & bit)
            desc = c.description.replace("|", "\\|")
            out.append(f"| `{c.name}` | {c.type} | {opts} | {desc} |")
        out.append("\nExamples:\n")
        out.append("```sql")
        out.extend(f"{e};" for e in spec.examples)
        out.append("```\n")
    return "\n".join(out).rstrip() + "\n"


README_BEGIN = "<!-- tables:begin -->"
README_END = "<!-- tables:end -->"


def readme_with_reference(readme: str, specs: dict[str, TableSpec]) -> str:
    """The README text with its table reference section regenerated from the specs."""
    head, sep, rest = readme.partition(README_BEGIN)
    _, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise SpecError(f"README lacks the {README_BEGIN} ... {README_END} markers")
    return f"{head}{README_BEGIN}\n{render_markdown(specs)}{README_END}{tail}"
