"""readegress configuration (TOML): catalogue, window, egress classes, approved jobs.

Every error names ``file:line`` and the key, and :func:`load_config` reports
all problems of a file in one run (:class:`ConfigError.problems`). When the
process runs as root the file must be owned by root and not writable by group
or others: a config that any user could edit would let them approve their own
exfiltration.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Optional, Union

from readegress.detect.catalogue import (
    LEVEL_WEIGHTS,
    Catalogue,
    PatternError,
    SensitiveClass,
    glob_to_regex,
)
from readegress.net.classify import DestinationClass, parse_classes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG = Path(__file__).with_name("default.toml")
SOURCES = ("osquery", "native")


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
        if self.destination is not None:
            try:
                a = ipaddress.ip_address(address.split("%", 1)[0])
            except ValueError:
                return False
            if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
                a = a.ipv4_mapped
            if a.version != self.destination.version or a not in self.destination:
                return False
        pat = self.executable
        for exe in executables:
            target = exe if "/" in pat else exe.rsplit("/", 1)[-1]
            if exe and fnmatchcase(target, pat):
                return True
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


def _check_file_safety(path: Path) -> str | None:
    if os.geteuid() != 0:
        return None
    st = path.stat()
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


def load_config(path: str | Path | None = None, *, check_owner: bool = True) -> Config:
    """Load a config file (the shipped default when ``path`` is ``None``)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read config: {e.strerror}"]) from None
    if check_owner and path is not None:
        unsafe = _check_file_safety(p)
        if unsafe:
            raise ConfigError([unsafe])
    return parse_config(raw.decode("utf-8", "replace"), str(p))


def parse_config(text: str, path: str = "<config>") -> Config:
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

    def bad(where: str, msg: str) -> None:
        problems.append(f"{where}: {msg}")

    known_top = {
        "window_seconds", "threshold", "egress_classes", "settle_seconds", "poll_interval",
        "state_dir", "sources", "max_reads", "max_detections", "class", "approved",
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

    window = number("window_seconds", 120, 1, 86400)
    threshold = int(number("threshold", 50, 0, 1000))
    settle = number("settle_seconds", 10, 0, 3600)
    poll = number("poll_interval", 10, 0.1, 3600)
    max_reads = int(number("max_reads", 200_000, 100, 50_000_000))
    max_det = int(number("max_detections", 10_000, 10, 10_000_000))

    egress: frozenset[DestinationClass] = frozenset({DestinationClass.PUBLIC})
    if "egress_classes" in data:
        v = data["egress_classes"]
        try:
            if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                raise ValueError("egress_classes must be a non-empty list of class names")
            egress = parse_classes(v)
        except ValueError as e:
            bad(loc.at("egress_classes"), str(e))

    sources: tuple[str, ...] = ("osquery",)
    if "sources" in data:
        v = data["sources"]
        if not isinstance(v, list) or not v or any(s not in SOURCES for s in v):
            bad(loc.at("sources"), f"sources must be a non-empty list from {list(SOURCES)}")
        else:
            sources = tuple(dict.fromkeys(v))

    state_dir = data.get("state_dir", "/var/lib/readegress")
    if not isinstance(state_dir, str) or not state_dir.startswith("/"):
        bad(loc.at("state_dir"), "state_dir must be an absolute path")
        state_dir = "/var/lib/readegress"

    classes: list[SensitiveClass] = []
    raw_classes = data.get("class", [])
    if not isinstance(raw_classes, list):
        bad(loc.at("class"), "use [[class]] tables for the catalogue")
        raw_classes = []
    seen: set[str] = set()
    for i, c in enumerate(raw_classes):
        sec = ("class", i)
        for k in c:
            if k not in {"name", "level", "weight", "alone", "paths", "exclude", "description"}:
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

    approved: list[ApprovedJob] = []
    raw_approved = data.get("approved", [])
    for i, a in enumerate(raw_approved if isinstance(raw_approved, list) else []):
        sec = ("approved", i)
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
        path=path,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )
