"""readegress configuration (TOML): catalogue, window, egress classes, approved jobs,
asset criticality and data classification.

Layering: ``--config`` may be given more than once (:func:`load_configs`).
The first file stands alone when it defines ``[[class]]`` tables; one that
defines none is laid over the shipped default (so a file holding only
``[[approved]]`` entries, such as ``readegress fleet baseline`` writes, is a
valid config by itself). Each later file is laid over the result: its scalars
replace, its ``[[class]]`` tables replace the classes of the same name and add
new ones, its ``[[approved]]`` and ``[[asset]]`` entries are appended, and its
weight tables update the inherited ones.

Every error names ``file:line`` and the key, and :func:`load_config` reports
all problems of a file in one run (:class:`ConfigError.problems`). When the
process runs as root the file must be owned by root and not writable by group
or others: a config that any user could edit would let them approve their own
exfiltration.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
import re
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Optional, Union

from readegress.detect.catalogue import (
    LEVEL_WEIGHTS,
    Catalogue,
    PatternError,
    SensitiveClass,
    brace_expansions,
    glob_to_regex,
)
from readegress.net.classify import DestinationClass, parse_classes, unmapped_address

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG = Path(__file__).with_name("default.toml")
SOURCES = ("osquery", "native")
#: How much a host's criticality multiplies a detection's priority.
CRITICALITY_WEIGHTS: dict[str, float] = {"critical": 2.0, "high": 1.5, "medium": 1.0, "low": 0.5}
#: How much a class's data classification multiplies a detection's priority.
CLASSIFICATION_WEIGHTS: dict[str, float] = {
    "restricted": 1.5,
    "confidential": 1.2,
    "internal": 1.0,
    "public": 0.5,
}
#: A class's classification when the config gives none, by catalogue level.
LEVEL_CLASSIFICATION = {"high": "restricted", "medium": "confidential", "low": "internal"}


class ConfigError(ValueError):
    """One or more problems; ``str()`` lists them one per line as ``file:line: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ApprovedJob:
    """An (executable, class[, destination][, port]) pair that is allowed, with an owner."""

    executable: str  # glob on the full path, or on the basename when it has no '/'
    sensitive_class: str
    owner: str
    destination: Optional[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]] = None
    port: Optional[int] = None
    expires: Optional[float] = None  # Unix time; the approval lapses then
    reason: str = ""

    def matches(
        self, executables: tuple[str, ...], cls: str, address: str, port: int, now: float
    ) -> bool:
        if cls != self.sensitive_class:
            return False
        if self.expires is not None and now >= self.expires:
            return False
        if self.port is not None and port != self.port:
            return False
        return self.matches_destination(address) and self.matches_executable(executables)

    def matches_destination(self, address: str) -> bool:
        """Is ``address`` in the destination (any address when there is none)?"""
        if self.destination is None:
            return True
        a = unmapped_address(address)
        return a is not None and a.version == self.destination.version and a in self.destination

    def matches_executable(self, executables: tuple[str, ...]) -> bool:
        """Does the glob match one of the (non-empty) images?"""
        pat = self.executable
        for exe in executables:
            target = exe if "/" in pat else exe.rsplit("/", 1)[-1]
            if exe and fnmatchcase(target, pat):
                return True
        return False


@dataclass(frozen=True)
class AssetRule:
    """Hosts of one criticality: by hostname glob, or by an osquery decoration's value.

    ``hosts`` globs match the host name a source reports (the results log's
    ``hostIdentifier``/``hostname``, the extension's own host name); a
    decoration matches when the log line's decoration ``name`` equals ``value``
    (decorations exist only in results logs, so on the host itself only the
    hostname globs apply).
    """

    criticality: str
    hosts: tuple[str, ...] = ()
    decoration: Optional[tuple[str, str]] = None

    def matches(self, host: str, decorations: Optional[Mapping[str, Any]] = None) -> bool:
        if any(fnmatchcase(host, g) for g in self.hosts):
            return True
        if self.decoration is not None and decorations:
            name, value = self.decoration
            v = decorations.get(name)
            return v is not None and str(v) == value
        return False


@dataclass(frozen=True)
class Config:
    catalogue: Catalogue
    window_seconds: float = 120.0
    threshold: int = 50
    egress_classes: frozenset[DestinationClass] = frozenset({DestinationClass.PUBLIC})
    approved: tuple[ApprovedJob, ...] = ()
    settle_seconds: float = 10.0
    poll_interval: float = 10.0
    state_dir: str = "/var/lib/readegress"
    sources: tuple[str, ...] = ("osquery",)
    max_reads: int = 200_000
    max_detections: int = 10_000
    path: str = ""
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    #: Hosts' criticality rules; the highest-weighted matching rule wins.
    assets: tuple[AssetRule, ...] = ()
    default_criticality: str = "medium"
    criticality_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(CRITICALITY_WEIGHTS)
    )
    #: Data classification per class name (classes not named here go by level).
    classifications: Mapping[str, str] = field(default_factory=dict)
    classification_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(CLASSIFICATION_WEIGHTS)
    )


class _Locator:
    """Finds the line a key of a TOML document sits on (tomllib keeps no positions)."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def _key_line(self, key: str, start: int, stop: int) -> int | None:
        rx = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i in range(start, min(stop, len(self.lines))):
            if rx.match(self.lines[i]):
                return i + 1
        return None

    def _section(self, header: str, index: int) -> tuple[int, int]:
        rx = re.compile(rf"^\s*\[\[\s*{re.escape(header)}\s*\]\]")
        starts = [i for i, ln in enumerate(self.lines) if rx.match(ln)]
        if index >= len(starts):
            return 0, len(self.lines)
        s = starts[index]
        nxt = next(
            (i for i in range(s + 1, len(self.lines)) if self.lines[i].lstrip().startswith("[")),
            len(self.lines),
        )
        return s, nxt

    def at(self, key: str, section: tuple[str, int] | None = None) -> str:
        if section is None:
            first_table = next(
                (i for i, ln in enumerate(self.lines) if ln.lstrip().startswith("[")),
                len(self.lines),
            )
            line = self._key_line(key, 0, first_table) or 1
        else:
            s, e = self._section(*section)
            line = self._key_line(key, s + 1, e) or (s + 1)
        return f"{self.path}:{line}"


#: A config file larger than this is refused before it is read.
MAX_CONFIG_BYTES = 1 << 20
#: Deepest nesting of arrays and inline tables a config may use (tomllib
#: recurses per level: 2000 levels raise RecursionError).
MAX_TOML_NESTING = 32
#: Most parts a dotted key may have (``a.b.c`` has 3; tomllib's cost grows
#: with the square of the parts: 50 000 parts hang it).
MAX_KEY_PARTS = 32
#: Paths all of a config's catalogue globs may stand for, braces expanded.
MAX_TOTAL_EXPANSIONS = 10_000

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_file_safety(path: str, st: os.stat_result, *, check_owner: bool = True) -> str | None:
    """Why an open config (``st`` from ``fstat`` of its descriptor) must not be
    used, or None. Regular file and size always; owner and mode as root."""
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        return f"{path}: cannot read config: it is {kind}, not a regular file"
    if st.st_size > MAX_CONFIG_BYTES:
        return f"{path}: config is {st.st_size} bytes; at most {MAX_CONFIG_BYTES} are read"
    if not check_owner or os.geteuid() != 0:
        return None
    if st.st_uid != 0:
        return (
            f"{path}: refusing a config not owned by root (owner uid {st.st_uid})"
            " while running as root"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"{path}: refusing a config writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}) while running as root; chmod go-w it"
        )
    return None


def _check_directories(path: str, directory: str) -> str | None:
    """As root: every directory from / down to ``directory`` (symlinks resolved)
    must be owned by root and not writable by group or others, else another
    user could swap the file between our checks and our read. A sticky
    directory (/tmp) is allowed: there only an entry's owner may rename it."""
    parts = Path(directory).parts
    for i in range(1, len(parts) + 1):
        d = os.path.join(*parts[:i])
        try:
            st = os.stat(d)
        except OSError as e:
            return f"{path}: cannot read config: {d}: {e.strerror}"
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if st.st_uid != 0 or (writable and not st.st_mode & stat.S_ISVTX):
            return (
                f"{path}: refusing a config in {d} (owner uid {st.st_uid}, mode"
                f" {stat.S_IMODE(st.st_mode):04o}): a directory on its path that"
                " another user can write lets them swap the file; keep it in root-owned"
                " directories without group/other write"
            )
    return None


def _open_error(path: str, e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return f"{path}: cannot read config: no such file"
    if e.errno == errno.ELOOP:
        return (
            f"{path}: cannot read config: it is a symbolic link (or a link loop);"
            " refusing to follow it, name the file itself"
        )
    if e.errno == errno.ENOTDIR:
        return f"{path}: cannot read config: a component of the path is not a directory"
    return f"{path}: cannot read config: {e.strerror}"


def read_config_file(path: str, *, check_owner: bool = True) -> bytes:
    """The bytes of a config file, opened once and checked on that descriptor.

    ``O_NOFOLLOW`` (a symlink is refused), ``O_NONBLOCK`` (a FIFO cannot hang
    the open), then ``fstat`` of the open descriptor — regular file, size,
    and as root owner and mode — and those same bytes are parsed: nothing can
    be swapped between check and read. As root the directories leading to it
    are checked too, and the file is opened relative to the checked one.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    as_root = check_owner and os.geteuid() == 0
    dir_fd: int | None = None
    try:
        if as_root:
            directory = os.path.realpath(os.path.dirname(os.path.abspath(path)))
            unsafe = _check_directories(path, directory)
            if unsafe:
                raise ConfigError([unsafe])
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fd = os.open(os.path.basename(path), flags, dir_fd=dir_fd)
        else:
            fd = os.open(path, flags)
    except OSError as e:
        raise ConfigError([_open_error(path, e)]) from None
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    try:
        st = os.fstat(fd)
        unsafe = _check_file_safety(path, st, check_owner=check_owner)
        if unsafe:
            raise ConfigError([unsafe])
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_CONFIG_BYTES:
            raise ConfigError([f"{path}: config is more than {MAX_CONFIG_BYTES} bytes"])
        return b"".join(chunks)
    except OSError as e:
        raise ConfigError([_open_error(path, e)]) from None
    finally:
        os.close(fd)


#: Characters the TOML shape check stops at (everything else is skipped fast).
_TOML_SIGNIFICANT = re.compile(r"[\[\]{}.,=\n\"'#]")


def toml_shape_problems(text: str, path: str) -> list[str]:
    """Bombs tomllib would choke on, found before parsing (``file:line: message``):
    nesting deeper than MAX_TOML_NESTING, dotted keys of more than MAX_KEY_PARTS.

    A linear scan that skips strings and comments. Dots are counted between
    ``,`` ``=`` brackets, braces and newlines: in valid TOML only a dotted key
    can hold many (a float or time holds one).
    """
    depth = dots = 0
    line = 1
    i = 0
    n = len(text)
    while True:
        m = _TOML_SIGNIFICANT.search(text, i)
        if m is None:
            return []
        i = m.start()
        ch = text[i]
        if ch == "\n":
            line += 1
            dots = 0
            i += 1
        elif ch == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif ch in "\"'":
            quote3 = ch * 3
            if text.startswith(quote3, i):
                end = _string_end(text, i + 3, quote3, escapes=ch == '"')
                line += text.count("\n", i, end)
                i = end
                while i < n and text[i] == ch:  # a closing quote may be followed by two more
                    i += 1
            else:
                i = _string_end(text, i + 1, ch, escapes=ch == '"')
        elif ch in "[{":
            depth += 1
            dots = 0
            if depth > MAX_TOML_NESTING:
                return [f"{path}:{line}: arrays/tables nested deeper than {MAX_TOML_NESTING}"]
            i += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
            dots = 0
            i += 1
        elif ch == ".":
            dots += 1
            if dots >= MAX_KEY_PARTS:
                return [f"{path}:{line}: a dotted key with more than {MAX_KEY_PARTS} parts"]
            i += 1
        else:  # , =
            dots = 0
            i += 1


def _string_end(text: str, i: int, quote: str, *, escapes: bool) -> int:
    """Index just past the closing ``quote`` of a string starting at ``i`` (or the
    end of the line / text for an unterminated single-line string)."""
    n = len(text)
    single = len(quote) == 1
    while i < n:
        j = text.find(quote, i)
        if single:
            nl = text.find("\n", i)
            if nl >= 0 and (j < 0 or nl < j):
                return nl  # unterminated: tomllib reports it
        if j < 0:
            return n
        if escapes:
            k = j
            while k > i and text[k - 1] == "\\":
                k -= 1
            if (j - k) % 2:  # an odd run of backslashes escapes this quote
                i = j + 1
                continue
        return j + len(quote)
    return n


def expansion_problems(config: Config) -> list[str]:
    """A catalogue whose globs together expand past MAX_TOTAL_EXPANSIONS."""
    total = 0
    for c in config.catalogue.classes:
        for p in (*c.paths, *c.exclude):
            total += brace_expansions(p)
    if total > MAX_TOTAL_EXPANSIONS:
        return [
            f"{config.path}: the catalogue's path patterns expand to more than"
            f" {MAX_TOTAL_EXPANSIONS} paths ({total}); use fewer or narrower patterns"
        ]
    return []


def load_config(
    path: str | Path | None = None, *, check_owner: bool = True, base: Config | None = None
) -> Config:
    """Load a config file (the shipped default when ``path`` is ``None``), over ``base``.

    Every refusal is a :class:`ConfigError` whose problems read ``file:line:
    message`` or ``file: message``: unreadable, not a regular file, a symlink,
    too big, unsafe owner/mode/directories as root, a bomb, or content errors.
    """
    if path is None:
        if base is None:
            return default_config()
        name, raw = str(DEFAULT_CONFIG), DEFAULT_CONFIG.read_bytes()
    else:
        name = str(path)
        raw = read_config_file(name, check_owner=check_owner)
    text = raw.decode("utf-8", "replace")
    shape = toml_shape_problems(text, name)
    if shape:
        raise ConfigError(shape)
    try:
        config = parse_config(text, name, base=base)
    except RecursionError:  # a shape the check above missed: still an error, not a crash
        raise ConfigError([f"{name}: nested too deeply to parse"]) from None
    problems = expansion_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def load_configs(
    paths: Sequence[str | Path] | str | Path | None, *, check_owner: bool = True
) -> Config:
    """Load ``--config`` files in order, each laid over the one before (see the module doc).

    No path at all gives the shipped default. Problems of every file are
    reported together.
    """
    if paths is None or isinstance(paths, (str, Path)):
        return load_config(paths, check_owner=check_owner)
    if not paths:
        return load_config(None)
    config: Config | None = None
    problems: list[str] = []
    for p in paths:
        try:
            config = load_config(p, check_owner=check_owner, base=config)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems or config is None:
        raise ConfigError(problems)
    return config


_DEFAULT: dict[str, Config] = {}


def default_config() -> Config:
    """The shipped default, parsed once per process (a command that dropped
    privileges, or runs from a checkout others cannot read, still has it)."""
    key = str(DEFAULT_CONFIG)
    config = _DEFAULT.get(key)
    if config is None:
        # The shipped file is trusted: no owner check, no layering.
        text = DEFAULT_CONFIG.read_bytes().decode("utf-8", "replace")
        config = _DEFAULT[key] = parse_config(text, key)
    return config


def parse_config(text: str, path: str = "<config>", base: Config | None = None) -> Config:
    """Parse one config file's text, laid over ``base`` (see the module doc)."""
    import hashlib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column \d+\)", msg)
        line = m.group(1) if m else str(max(1, len(text.splitlines())))
        raise ConfigError([f"{path}:{line}: {msg}"]) from None
    loc = _Locator(path, text)
    problems: list[str] = []
    if base is None and "class" not in data and path != str(DEFAULT_CONFIG):
        base = default_config()
    b = base if base is not None else Config(catalogue=Catalogue(()))

    def bad(where: str, msg: str) -> None:
        problems.append(f"{where}: {msg}")

    known_top = {
        "window_seconds", "threshold", "egress_classes", "settle_seconds", "poll_interval",
        "state_dir", "sources", "max_reads", "max_detections", "class", "approved",
        "asset", "default_criticality", "criticality_weights", "classification_weights",
    }  # fmt: skip
    for k in data:
        if k not in known_top:
            bad(loc.at(k), f"unknown key {k!r}")

    def number(key: str, default: float, lo: float, hi: float) -> float:
        v = data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            bad(loc.at(key), f"{key} must be a number from {lo:g} to {hi:g}, not {v!r}")
            return default
        return float(v)

    window = number("window_seconds", b.window_seconds, 1, 86400)
    threshold = int(number("threshold", b.threshold, 0, 1000))
    settle = number("settle_seconds", b.settle_seconds, 0, 3600)
    poll = number("poll_interval", b.poll_interval, 0.1, 3600)
    max_reads = int(number("max_reads", b.max_reads, 100, 50_000_000))
    max_det = int(number("max_detections", b.max_detections, 10, 10_000_000))

    egress: frozenset[DestinationClass] = b.egress_classes
    if "egress_classes" in data:
        v = data["egress_classes"]
        try:
            if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                raise ValueError("egress_classes must be a non-empty list of class names")
            egress = parse_classes(v)
        except ValueError as e:
            bad(loc.at("egress_classes"), str(e))

    sources: tuple[str, ...] = b.sources
    if "sources" in data:
        v = data["sources"]
        if not isinstance(v, list) or not v or any(s not in SOURCES for s in v):
            bad(loc.at("sources"), f"sources must be a non-empty list from {list(SOURCES)}")
        else:
            sources = tuple(dict.fromkeys(v))

    state_dir = data.get("state_dir", b.state_dir)
    if not isinstance(state_dir, str) or not state_dir.startswith("/"):
        bad(loc.at("state_dir"), "state_dir must be an absolute path")
        state_dir = "/var/lib/readegress"

    classes: list[SensitiveClass] = []
    classifications: dict[str, str] = dict(b.classifications)
    classification_weights = _weights(
        data, "classification_weights", b.classification_weights, loc, bad
    )
    criticality_weights = _weights(data, "criticality_weights", b.criticality_weights, loc, bad)
    raw_classes = data.get("class", [])
    if not isinstance(raw_classes, list):
        bad(loc.at("class"), "use [[class]] tables for the catalogue")
        raw_classes = []
    seen: set[str] = set()
    for i, c in enumerate(raw_classes):
        sec = ("class", i)
        if not isinstance(c, dict):
            bad(loc.at("class"), "use [[class]] tables for the catalogue")
            continue
        for k in c:
            if k not in {
                "name", "level", "weight", "alone", "paths", "exclude", "description",
                "classification",
            }:  # fmt: skip
                bad(loc.at(k, sec), f"unknown key {k!r} in [[class]]")
        name = c.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            bad(loc.at("name", sec), "class name must be lower_snake_case")
            continue
        if name in seen:
            bad(loc.at("name", sec), f"class {name!r} is defined twice")
        seen.add(name)
        level = c.get("level", "medium")
        if level not in LEVEL_WEIGHTS:
            bad(loc.at("level", sec), f"level must be one of {list(LEVEL_WEIGHTS)}")
            level = "medium"
        weight = c.get("weight", LEVEL_WEIGHTS[level])
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 1000:
            bad(loc.at("weight", sec), "weight must be an integer from 0 to 1000")
            weight = LEVEL_WEIGHTS[level]
        alone = c.get("alone", level != "low")
        if not isinstance(alone, bool):
            bad(loc.at("alone", sec), "alone must be true or false")
            alone = level != "low"
        pats: list[tuple[str, tuple[str, ...]]] = []
        for key in ("paths", "exclude"):
            v = c.get(key, [] if key == "exclude" else None)
            if (
                not isinstance(v, list)
                or not all(isinstance(x, str) for x in v)
                or (key == "paths" and not v)
            ):
                bad(loc.at(key, sec), f"{key} must be a list of path globs")
                v = []
            for p in v:
                try:
                    glob_to_regex(p)
                except PatternError as e:
                    bad(loc.at(key, sec), str(e))
            pats.append((key, tuple(v)))
        classes.append(SensitiveClass(name, level, weight, alone, pats[0][1], pats[1][1]))
        cl = c.get("classification", LEVEL_CLASSIFICATION[level])
        if cl not in classification_weights:
            bad(
                loc.at("classification", sec),
                f"classification must be one of {sorted(classification_weights)}",
            )
        else:
            classifications[name] = cl
    if base is not None:
        # Later files replace inherited classes of the same name and add new ones.
        mine = {c.name for c in classes}
        classes = [c for c in base.catalogue.classes if c.name not in mine] + classes
        seen |= {c.name for c in classes}

    approved: list[ApprovedJob] = list(b.approved)
    raw_approved = data.get("approved", [])
    for i, a in enumerate(raw_approved if isinstance(raw_approved, list) else []):
        sec = ("approved", i)
        if not isinstance(a, dict):
            bad(loc.at("approved"), "use [[approved]] tables for approved jobs")
            continue
        for k in a:
            if k not in {
                "executable",
                "class",
                "owner",
                "destination",
                "port",
                "expires",
                "reason",
            }:
                bad(loc.at(k, sec), f"unknown key {k!r} in [[approved]]")
        exe, cls, owner = a.get("executable"), a.get("class"), a.get("owner")
        if not isinstance(exe, str) or not exe:
            bad(loc.at("executable", sec), "approved job needs an executable (path or glob)")
            continue
        if cls not in seen:
            bad(loc.at("class", sec), f"approved job names unknown class {cls!r}")
            continue
        if not isinstance(owner, str) or not owner.strip():
            bad(loc.at("owner", sec), "approved job needs an owner (who answers for it)")
            continue
        dest = None
        if "destination" in a:
            try:
                dest = ipaddress.ip_network(str(a["destination"]), strict=False)
            except ValueError:
                bad(loc.at("destination", sec), f"destination {a['destination']!r} is not a CIDR")
                continue
        port = a.get("port")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
        ):
            bad(loc.at("port", sec), "port must be an integer from 1 to 65535")
            continue
        expires = a.get("expires")
        exp_ts: float | None = None
        if expires is not None:
            if isinstance(expires, dt.datetime):
                if expires.tzinfo is None:
                    expires = expires.replace(tzinfo=dt.timezone.utc)
                exp_ts = expires.timestamp()
            elif isinstance(expires, dt.date):
                exp_ts = dt.datetime(
                    expires.year, expires.month, expires.day, tzinfo=dt.timezone.utc
                ).timestamp()
            else:
                bad(loc.at("expires", sec), "expires must be a TOML date such as 2027-01-31")
                continue
        approved.append(
            ApprovedJob(exe, cls, owner.strip(), dest, port, exp_ts, str(a.get("reason", "")))
        )

    default_criticality = data.get("default_criticality", b.default_criticality)
    if default_criticality not in criticality_weights:
        bad(
            loc.at("default_criticality"),
            f"default_criticality must be one of {sorted(criticality_weights)}",
        )
        default_criticality = b.default_criticality
    assets: list[AssetRule] = list(b.assets)
    raw_assets = data.get("asset", [])
    if not isinstance(raw_assets, list):
        bad(loc.at("asset"), "use [[asset]] tables for asset criticality")
        raw_assets = []
    for i, a in enumerate(raw_assets):
        sec = ("asset", i)
        if not isinstance(a, dict):
            bad(loc.at("asset"), "use [[asset]] tables for asset criticality")
            continue
        for k in a:
            if k not in {"criticality", "hosts", "decoration", "description"}:
                bad(loc.at(k, sec), f"unknown key {k!r} in [[asset]]")
        crit = a.get("criticality")
        if crit not in criticality_weights:
            bad(
                loc.at("criticality", sec),
                f"criticality must be one of {sorted(criticality_weights)}",
            )
            continue
        hosts = a.get("hosts", [])
        if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
            bad(loc.at("hosts", sec), "hosts must be a list of hostname globs")
            continue
        deco = a.get("decoration")
        pair: Optional[tuple[str, str]] = None
        if deco is not None:
            if (
                not isinstance(deco, dict)
                or set(deco) != {"name", "value"}
                or not all(isinstance(v, str) and v for v in deco.values())
            ):
                bad(
                    loc.at("decoration", sec),
                    'decoration must be { name = "<decoration>", value = "<value>" }',
                )
                continue
            pair = (deco["name"], deco["value"])
        if not hosts and pair is None:
            bad(loc.at("criticality", sec), "an [[asset]] needs hosts or a decoration")
            continue
        assets.append(AssetRule(str(crit), tuple(hosts), pair))

    if problems:
        raise ConfigError(problems)
    return Config(
        catalogue=Catalogue(classes),
        window_seconds=window,
        threshold=threshold,
        egress_classes=egress,
        approved=tuple(approved),
        settle_seconds=settle,
        poll_interval=poll,
        state_dir=state_dir,
        sources=sources,
        max_reads=max_reads,
        max_detections=max_det,
        # The files the user gave, in order (the shipped default is implied).
        path=path
        if base is None or base.path in ("", str(DEFAULT_CONFIG))
        else f"{base.path},{path}",
        sha256=hashlib.sha256(
            ((base.sha256 + "\n") if base is not None else "").encode() + text.encode()
        ).hexdigest(),
        assets=tuple(assets),
        default_criticality=str(default_criticality),
        criticality_weights=criticality_weights,
        classifications=classifications,
        classification_weights=classification_weights,
    )


def _weights(
    data: Mapping[str, Any],
    key: str,
    inherited: Mapping[str, float],
    loc: _Locator,
    bad: Any,
) -> dict[str, float]:
    """A ``[key]`` table of level name -> multiplier (0..100), over the inherited one."""
    out = dict(inherited)
    v = data.get(key)
    if v is None:
        return out
    if not isinstance(v, dict):
        bad(loc.at(key), f"[{key}] must be a table of name = number")
        return out
    for name, w in v.items():
        if (
            not re.fullmatch(r"[a-z][a-z0-9_]*", name)
            or isinstance(w, bool)
            or not isinstance(w, (int, float))
            or not 0 <= w <= 100
        ):
            bad(loc.at(key), f"[{key}] {name!r} must be a lower_case name = number from 0 to 100")
            continue
        out[name] = float(w)
    return out
