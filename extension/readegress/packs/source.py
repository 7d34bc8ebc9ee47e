"""The pack source: ``packs/src/packs.toml`` and one ``<query>.toml`` per query.

A query file holds the SQL and its metadata (``pack``, ``description``,
``value``, ``interval``, ``logging`` snapshot/differential, ``removed`` — which
every differential query must state, so removal logging is a choice and not
osquery's default —, ``platform``, ``min_osquery_version``, ``requires`` (the
tables it reads), ``automations`` (Fleet sends its results to the log
destination) and ``all_columns`` (selects every column of its one table)).
Every problem names ``file:line``; all of them are collected in one pass.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.9/3.10
    import tomli as tomllib

#: osquery's pack platform values (``platform`` of a pack or query).
PLATFORMS = frozenset({"linux", "darwin", "windows", "freebsd", "posix", "any", "all"})
LOGGING = ("snapshot", "differential")
#: osquery's bounds on a scheduled query's interval (seconds).
MIN_INTERVAL, MAX_INTERVAL = 1, 604800
#: Placeholders a query's SQL may use; filled in at build time.
PLACEHOLDERS = ("catalogue_paths",)

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_VERSION = re.compile(r"\d+\.\d+\.\d+\Z")
_QUERY_KEYS = {
    "pack": str,
    "description": str,
    "value": str,
    "interval": int,
    "logging": str,
    "removed": bool,
    "platform": str,
    "min_osquery_version": str,
    "requires": list,
    "all_columns": bool,
    "automations": bool,
    "sql": str,
}
_REQUIRED_QUERY_KEYS = (
    "pack",
    "description",
    "value",
    "interval",
    "logging",
    "platform",
    "min_osquery_version",
    "requires",
    "automations",
    "sql",
)
_PACK_KEYS = ("name", "description", "discovery", "label", "label_description")


@dataclass(frozen=True)
class Problem:
    """One problem with a pack file, at ``path:line``."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class PackDef:
    name: str
    description: str
    discovery: str
    label: str  # the Fleet label standing in for discovery
    label_description: str
    path: str
    line: int


@dataclass(frozen=True)
class PackQuery:
    name: str
    pack: str
    description: str
    value: str
    interval: int
    logging: str
    removed: bool  # log removed rows (differential only; False for snapshots)
    platform: str
    min_osquery_version: str
    requires: tuple[str, ...]
    automations: bool
    all_columns: bool
    sql_template: str
    path: str
    lines: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def snapshot(self) -> bool:
        return self.logging == "snapshot"

    @property
    def scheduled_name(self) -> str:
        """The name Fleet shows and osquery logs (``pack_<this>`` in osquery's results log)."""
        return f"{self.pack}_{self.name}"

    @property
    def fleet_logging(self) -> str:
        if self.snapshot:
            return "snapshot"
        return "differential" if self.removed else "differential_ignore_removals"

    def line(self, key: str) -> int:
        return self.lines.get(key, 1)

    def sql(self, fills: dict[str, str]) -> str:
        """The SQL with placeholders filled, on one line (packs are JSON strings)."""
        text = self.sql_template
        for name, value in fills.items():
            text = text.replace("{" + name + "}", value)
        return " ".join(ln.strip() for ln in text.strip().splitlines() if ln.strip())


@dataclass(frozen=True)
class PackSource:
    packs: dict[str, PackDef]
    queries: dict[str, PackQuery]  # by query name, in file-name order
    problems: tuple[Problem, ...]

    def of_pack(self, pack: str) -> list[PackQuery]:
        return [q for q in self.queries.values() if q.pack == pack]


def key_lines(text: str) -> dict[str, int]:
    """Line of each top-level ``key =`` (first occurrence)."""
    lines: dict[str, int] = {}
    for i, ln in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", ln)
        if m and m.group(1) not in lines:
            lines[m.group(1)] = i
    return lines


def _toml(path: Path, problems: list[Problem]) -> tuple[dict[str, Any], str] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        problems.append(Problem(str(path), 1, f"cannot read: {e.strerror}"))
        return None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        problems.append(Problem(str(path), int(m.group(1)) if m else 1, f"not TOML: {e}"))
        return None


def _load_packs(path: Path, problems: list[Problem]) -> dict[str, PackDef]:
    loaded = _toml(path, problems)
    if loaded is None:
        return {}
    data, text = loaded
    starts = [i for i, ln in enumerate(text.splitlines(), 1) if ln.strip() == "[[pack]]"]
    packs: dict[str, PackDef] = {}
    raw = data.get("pack")
    if not isinstance(raw, list) or not raw:
        problems.append(Problem(str(path), 1, "needs at least one [[pack]] table"))
        return {}
    for i, entry in enumerate(raw):
        line = starts[i] if i < len(starts) else 1
        bad = False
        for key in _PACK_KEYS:
            if not isinstance(entry.get(key), str) or not entry.get(key):
                problems.append(Problem(str(path), line, f"[[pack]] needs a string {key!r}"))
                bad = True
        unknown = sorted(set(entry) - set(_PACK_KEYS))
        if unknown:
            problems.append(Problem(str(path), line, f"[[pack]]: unknown key(s) {unknown}"))
        if bad:
            continue
        name = entry["name"]
        if not _NAME.match(name):
            problems.append(Problem(str(path), line, f"pack name {name!r} is not [a-z][a-z0-9_]*"))
        if name in packs:
            problems.append(Problem(str(path), line, f"pack {name!r} is declared twice"))
            continue
        packs[name] = PackDef(
            name,
            entry["description"],
            entry["discovery"],
            entry["label"],
            entry["label_description"],
            str(path),
            line,
        )
    labels = [p.label for p in packs.values()]
    for label in {x for x in labels if labels.count(x) > 1}:
        problems.append(Problem(str(path), 1, f"label {label!r} is used by two packs"))
    return packs


def _load_query(path: Path, packs: dict[str, PackDef], problems: list[Problem]) -> PackQuery | None:
    loaded = _toml(path, problems)
    if loaded is None:
        return None
    data, text = loaded
    lines = key_lines(text)
    where = str(path)
    count = len(problems)

    def bad(key: str, message: str) -> None:
        problems.append(Problem(where, lines.get(key, 1), message))

    for key in sorted(set(data) - set(_QUERY_KEYS)):
        bad(key, f"unknown key {key!r} (one of {sorted(_QUERY_KEYS)})")
    for key in _REQUIRED_QUERY_KEYS:
        if key not in data:
            bad(key, f"missing key {key!r}")
    for key, want in _QUERY_KEYS.items():
        if key in data and not (
            isinstance(data[key], want) and not (want is int and isinstance(data[key], bool))
        ):
            bad(key, f"{key} must be a {want.__name__}, not {type(data[key]).__name__}")
    if len(problems) > count:
        return None
    name = path.stem
    if not _NAME.match(name):
        bad("sql", f"query name {name!r} (the file name) is not [a-z][a-z0-9_]*")
    if data["pack"] not in packs:
        bad("pack", f"pack {data['pack']!r} is not declared in packs.toml ({sorted(packs)})")
    interval = data["interval"]
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        bad("interval", f"interval {interval} is outside osquery's {MIN_INTERVAL}..{MAX_INTERVAL}")
    logging_mode = data["logging"]
    if logging_mode not in LOGGING:
        bad("logging", f"logging {logging_mode!r} is not one of {list(LOGGING)}")
    if logging_mode == "differential" and "removed" not in data:
        bad(
            "logging",
            "a differential query must say whether removed rows are logged (removed = true or"
            " false): osquery's default logs them, Fleet's differential_ignore_removals does not",
        )
    if logging_mode == "snapshot" and "removed" in data:
        bad("removed", "removed has no meaning for a snapshot query")
    for platform in data["platform"].split(","):
        if platform.strip() not in PLATFORMS:
            bad("platform", f"platform {platform!r} is not one of {sorted(PLATFORMS)}")
    if not _VERSION.match(data["min_osquery_version"]):
        bad("min_osquery_version", "min_osquery_version must look like 5.0.0")
    requires = data["requires"]
    if not requires or not all(isinstance(t, str) and t for t in requires):
        bad("requires", "requires must list the tables the query reads")
    if not data["description"].endswith("."):
        bad("description", "description must end with a period")
    if data.get("all_columns") and len(requires) != 1:
        bad("all_columns", "all_columns needs exactly one table in requires")
    for placeholder in re.findall(r"\{([a-z_]+)\}", data["sql"]):
        if placeholder not in PLACEHOLDERS:
            bad("sql", f"unknown placeholder {{{placeholder}}} (known: {list(PLACEHOLDERS)})")
    if len(problems) > count:
        return None
    return PackQuery(
        name=name,
        pack=data["pack"],
        description=data["description"],
        value=data["value"],
        interval=interval,
        logging=logging_mode,
        removed=bool(data.get("removed", False)),
        platform=data["platform"],
        min_osquery_version=data["min_osquery_version"],
        requires=tuple(requires),
        automations=data["automations"],
        all_columns=bool(data.get("all_columns", False)),
        sql_template=data["sql"],
        path=where,
        lines=lines,
    )


def load_source(src: Path) -> PackSource:
    """Every pack and query under ``src``; problems collected, never raised."""
    problems: list[Problem] = []
    packs = _load_packs(src / "packs.toml", problems)
    queries: dict[str, PackQuery] = {}
    files = sorted(p for p in src.glob("*.toml") if p.name != "packs.toml")
    if not files:
        problems.append(Problem(str(src), 1, "no query files (<name>.toml)"))
    for f in files:
        q = _load_query(f, packs, problems)
        if q is None:
            continue
        queries[q.name] = q
    names = [q.scheduled_name for q in queries.values()]
    for q in queries.values():
        if names.count(q.scheduled_name) > 1:
            problems.append(
                Problem(q.path, 1, f"scheduled name {q.scheduled_name!r} is not unique")
            )
    for p in packs.values():
        if not any(q.pack == p.name for q in queries.values()):
            problems.append(Problem(p.path, p.line, f"pack {p.name!r} has no queries"))
    return PackSource(packs, queries, tuple(problems))
