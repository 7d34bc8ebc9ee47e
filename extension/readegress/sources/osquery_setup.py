"""What osquery must be told for readegress to see anything: flags and ``file_paths``.

Pure helpers plus bounded file reads; no osquery connection here (callers pass
the flag values they read through ``SELECT name, value FROM osquery_flags``).

- :data:`REQUIRED_FLAGS`: the audit flags the three event tables need, with
  what breaks without each and how bad that is.
- :func:`catalogue_file_paths`: the catalogue as osquery ``file_paths`` /
  ``exclude_paths`` (``readegress file-paths``). osquery globs use ``%`` for
  one path level and a trailing ``%%`` for "everything below"; osquery turns
  ``%`` into ``*`` and runs ``glob(3)`` with ``GLOB_BRACE``, so ``?`` and
  ``[...]`` keep their glob meaning. ``~/`` becomes ``/root/`` and
  ``/home/%/``. A ``**`` in the middle of a catalogue glob has no osquery
  equivalent (``glob(3)`` reads it as ``*``): it is unrolled to 1..
  :data:`MAX_UNROLLED_DEPTH` levels. osquery resolves these globs when it
  loads its config, and ``glob(3)``'s ``*`` skips dot-directories, so files
  created later, or deeper, are not watched until a config reload.
- :func:`read_osquery_file_paths`: the ``file_paths`` osquery's filesystem
  config plugin would load: ``config_path``, then ``config_path.d/*.conf``
  (sorted), and packs named in them (inline, by path, or the ``"*"``
  multi-pack glob); comment lines (``#``, ``//``) stripped as osquery does.
- :func:`existing_catalogue_files`: which catalogue files exist on this host,
  found by a bounded directory walk (never unbounded recursion into homes).
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from readegress.detect.catalogue import Catalogue

#: A mid-path ``**`` is unrolled to this many levels in osquery globs and walks.
MAX_UNROLLED_DEPTH = 4
#: Bounds on reading osquery's config: files (config, conf.d, packs) and bytes each.
MAX_CONFIG_FILES = 256
MAX_CONFIG_BYTES = 8 << 20
#: Directory entries a catalogue walk may look at before it gives up (partial).
DEFAULT_WALK_BUDGET = 50_000

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True)
class RequiredFlag:
    """One osquery flag readegress needs; ``severity`` is the health status when it is wrong."""

    name: str
    value: str  # "true" or "false"
    severity: str  # "fail" or "warn"
    without: str  # what readegress loses without it

    @property
    def fix(self) -> str:
        return (
            f"add --{self.name}={self.value} to osqueryd's flagfile "
            "(e.g. /etc/osquery/osquery.flags, see install/osquery.flags) and restart osqueryd"
        )


REQUIRED_FLAGS: tuple[RequiredFlag, ...] = (
    RequiredFlag("disable_events", "false", "fail", "every osquery event table is off"),
    RequiredFlag(
        "disable_audit",
        "false",
        "fail",
        "the audit tables (process_file_events, socket_events, process_events) stay empty",
    ),
    RequiredFlag("audit_allow_config", "true", "fail", "osquery cannot install its audit rules"),
    RequiredFlag("audit_allow_fim_events", "true", "fail", "process_file_events stays empty"),
    RequiredFlag(
        "audit_fim_show_accesses",
        "true",
        "fail",
        "process_file_events reports writes only, never the open/read rows reads are made of",
    ),
    RequiredFlag("audit_allow_sockets", "true", "fail", "socket_events stays empty: no egress"),
    RequiredFlag(
        "audit_allow_process_events",
        "true",
        "fail",
        "process_events stays empty: no exec images, command lines or lineage",
    ),
    RequiredFlag(
        "audit_allow_fork_process_events",
        "true",
        "warn",
        "no fork/clone rows: lineage and pid-reuse evidence rest on ppid alone",
    ),
    RequiredFlag(
        "audit_show_partial_fim_events",
        "true",
        "warn",
        "reads by processes that started before osqueryd are dropped",
    ),
)


def flag_is(actual: str, wanted: str) -> bool | None:
    """Whether a flag value equals ``"true"``/``"false"``; ``None`` if it is not a boolean."""
    a = actual.strip().lower()
    if a in _TRUE:
        return wanted == "true"
    if a in _FALSE:
        return wanted == "false"
    return None


# ----------------------------------------------------------------- globs


def expand_braces(pattern: str) -> list[str]:
    """``/a/{b,c}/d`` → ``/a/b/d``, ``/a/c/d`` (nested braces too; an unclosed ``{`` is literal)."""
    depth = 0
    start = -1
    for i, ch in enumerate(pattern):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                body = pattern[start + 1 : i]
                alternatives: list[str] = []
                level = 0
                piece = ""
                for c in body:
                    if c == "," and level == 0:
                        alternatives.append(piece)
                        piece = ""
                        continue
                    level += (c == "{") - (c == "}")
                    piece += c
                alternatives.append(piece)
                head, tail = pattern[:start], pattern[i + 1 :]
                out: list[str] = []
                for alt in alternatives:
                    out.extend(expand_braces(head + alt + tail))
                return out
    return [pattern]


def _home_split(pattern: str) -> tuple[bool, str]:
    if pattern.startswith("~/"):
        return True, pattern[2:]
    return False, pattern


def _unroll_double_star(rest: str) -> list[list[str]]:
    """Path components with each mid-path ``**`` unrolled to 1..MAX levels of ``*``.

    A trailing ``**`` stays (it means "everything below"). Levels start at one
    because the catalogue's ``a/**/b`` needs at least one directory between.
    """
    parts = rest.split("/")
    outs: list[list[str]] = [[]]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**" and not last:
            outs = [o + ["*"] * n for o in outs for n in range(1, MAX_UNROLLED_DEPTH + 1)]
        else:
            outs = [[*o, part] for o in outs]
    return outs


def osquery_globs(pattern: str) -> list[str]:
    """One catalogue glob as osquery ``file_paths`` globs (``%``, trailing ``%%``)."""
    out: list[str] = []
    for p in expand_braces(pattern):
        home, rest = _home_split(p)
        bases = ["/root/", "/home/%/"] if home else [""]
        for comps in _unroll_double_star(rest):
            converted = []
            for j, comp in enumerate(comps):
                if comp == "**" and j == len(comps) - 1:
                    converted.append("%%")
                else:
                    # '**' inside a component behaves as '*' there, as in glob(3).
                    converted.append(re.sub(r"\*+", "%", comp))
            body = "/".join(converted)
            out.extend(base + body for base in bases)
    return list(dict.fromkeys(out))


def catalogue_file_paths(catalogue: Catalogue) -> dict[str, dict[str, list[str]]]:
    """``{"file_paths": {class: [globs]}, "exclude_paths": {...}}`` for osquery's config."""
    include: dict[str, list[str]] = {}
    exclude: dict[str, list[str]] = {}
    for c in catalogue.classes:
        globs = [g for p in c.paths for g in osquery_globs(p)]
        include[c.name] = list(dict.fromkeys(globs))
        if c.exclude:
            excl = [g for p in c.exclude for g in osquery_globs(p)]
            exclude[c.name] = list(dict.fromkeys(excl))
    out: dict[str, dict[str, list[str]]] = {"file_paths": include}
    if exclude:
        out["exclude_paths"] = exclude
    return out


def osquery_glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for the paths an osquery ``file_paths`` glob covers.

    ``%`` and ``*`` stay within one level, ``?`` is one character, ``[...]``
    a class; a trailing ``%%`` (or ``**``) covers everything below; ``%%``
    elsewhere is ``*`` (``glob(3)`` knows no recursion); ``~/`` is root's home
    (osqueryd runs as root and ``GLOB_TILDE`` expands its own home).
    """
    alternatives = []
    for p in expand_braces(pattern.replace("%", "*")):
        if p.startswith("~/"):
            p = "/root/" + p[2:]
        recursive = p.endswith("/**") or p.endswith("/**/") or p == "**"
        if recursive:
            p = p[: p.rfind("**")]
        rx = []
        i = 0
        while i < len(p):
            ch = p[i]
            if ch == "*":
                while i + 1 < len(p) and p[i + 1] == "*":
                    i += 1
                rx.append("[^/]*")
            elif ch == "?":
                rx.append("[^/]")
            elif ch == "[":
                end = p.find("]", i + 2)
                if end < 0:
                    rx.append(re.escape(ch))
                else:
                    body = p[i + 1 : end]
                    if body.startswith("!"):
                        body = "^" + body[1:]
                    rx.append("[" + body.replace("\\", "\\\\") + "]")
                    i = end
            else:
                rx.append(re.escape(ch))
            i += 1
        alternatives.append("".join(rx) + (".*" if recursive else "/?"))
    return re.compile("^(?:" + "|".join(alternatives) + ")$")


# ----------------------------------------------------- osquery's config


@dataclass(frozen=True)
class OsqueryFilePaths:
    """``file_paths``/``exclude_paths`` as osquery's filesystem config plugin would load them."""

    include: dict[str, tuple[str, ...]]
    exclude: dict[str, tuple[str, ...]]
    files: tuple[str, ...]  # config and pack files read
    problems: tuple[str, ...] = ()  # files that could not be read or parsed
    _compiled: dict[str, tuple[re.Pattern[str], ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def covers(self, path: str) -> bool:
        """Whether some category includes ``path`` and its excludes do not drop it."""
        for category, globs in self.include.items():
            if not any(r.match(path) for r in self._patterns("include", category, globs)):
                continue
            excl = self.exclude.get(category, ())
            if any(r.match(path) for r in self._patterns("exclude", category, excl)):
                continue
            return True
        return False

    def _patterns(
        self, kind: str, category: str, globs: tuple[str, ...]
    ) -> tuple[re.Pattern[str], ...]:
        key = f"{kind}:{category}"
        got = self._compiled.get(key)
        if got is None:
            got = self._compiled[key] = tuple(osquery_glob_regex(g) for g in globs)
        return got


def strip_config_comments(text: str) -> str:
    """osquery's ``stripConfigComments``: drop lines starting with ``#`` or ``//``."""
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith(("#", "//")))


def _read_bounded(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path}: not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise OSError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(fd)


def read_osquery_file_paths(config_path: str) -> OsqueryFilePaths:
    """Read osquery's filesystem config (and its packs) for ``file_paths``.

    ``config_path`` comes from the osquery core's own ``config_path`` flag.
    Every file is opened without following a final symlink, must be a regular
    file, and at most :data:`MAX_CONFIG_FILES` files of
    :data:`MAX_CONFIG_BYTES` each are read.
    """
    include: dict[str, list[str]] = {}
    exclude: dict[str, list[str]] = {}
    read: list[str] = []
    problems: list[str] = []
    budget = [MAX_CONFIG_FILES]

    def load(path: str) -> Any:
        if budget[0] <= 0:
            problems.append(f"{path}: not read (more than {MAX_CONFIG_FILES} config files)")
            return None
        budget[0] -= 1
        try:
            text = _read_bounded(path)
        except OSError as e:
            problems.append(f"{path}: {e.strerror or e}")
            return None
        try:
            doc = json.loads(strip_config_comments(text))
        except ValueError as e:
            problems.append(f"{path}: not JSON: {e}")
            return None
        read.append(path)
        return doc

    def collect(doc: Any) -> None:
        if not isinstance(doc, dict):
            return
        for key, target in (("file_paths", include), ("exclude_paths", exclude)):
            section = doc.get(key)
            if not isinstance(section, dict):
                continue
            for category, globs in section.items():
                if isinstance(globs, str):
                    globs = [globs]
                if isinstance(globs, list):
                    target.setdefault(str(category), []).extend(
                        g for g in globs if isinstance(g, str)
                    )

    def packs(doc: Any) -> None:
        if not isinstance(doc, dict) or not isinstance(doc.get("packs"), dict):
            return
        for name, value in doc["packs"].items():
            if isinstance(value, dict):
                collect(value)
            elif isinstance(value, str):
                paths = sorted(glob.glob(value.replace("%", "*"))) if name == "*" else [value]
                for p in paths:
                    collect(load(p))

    conf_d = sorted(glob.glob(glob.escape(config_path + ".d") + "/*.conf"))
    for path in [*conf_d, config_path]:
        doc = load(path)
        collect(doc)
        packs(doc)
    return OsqueryFilePaths(
        {k: tuple(dict.fromkeys(v)) for k, v in include.items()},
        {k: tuple(dict.fromkeys(v)) for k, v in exclude.items()},
        tuple(read),
        tuple(problems),
    )


# ----------------------------------------------- catalogue files on this host


def existing_catalogue_files(
    catalogue: Catalogue, *, budget: int = DEFAULT_WALK_BUDGET
) -> tuple[list[str], bool]:
    """Catalogue files that exist here (regular files the catalogue matches), and
    whether the walk finished within ``budget`` directory entries.

    The same expansion the native read source marks from (one walker for the
    catalogue on this host), without its mark caps.
    """
    from readegress.sources.native_reads import expand_catalogue

    plan = expand_catalogue(catalogue, permission_classes=(), max_marks=1 << 30, walk_budget=budget)
    return sorted(f for f, cls in plan.files.items() if cls), not plan.walk_truncated


def uncovered_files(files: Iterable[str], fp: OsqueryFilePaths) -> list[str]:
    return [f for f in files if not fp.covers(f)]
