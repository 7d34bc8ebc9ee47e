"""The sensitive-file catalogue: classes of files with weights, as path globs.

Glob syntax (matched against absolute paths as events report them, never by
touching the filesystem): ``*`` and ``?`` stay within one path component,
``**`` crosses components, ``[...]`` is a character class, ``{a,b}`` is an
alternation, and a leading ``~/`` means *every* home directory — ``/root``
and ``/home/<user>`` — not the current user's (a credential thief reads
other users' keys too).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

LEVEL_WEIGHTS = {"high": 80, "medium": 40, "low": 10}

#: The homes ``~`` stands for in path matching.
HOME_REGEX = r"(?:/root|/home/[^/]+)"


class PatternError(ValueError):
    pass


def glob_to_regex(pattern: str) -> str:
    """Translate one catalogue glob into a regex (no anchors)."""
    if not pattern:
        raise PatternError("empty path pattern")
    out: list[str] = []
    i = 0
    if pattern.startswith("~/"):
        out.append(HOME_REGEX + "/")
        i = 2
    elif not pattern.startswith("/"):
        raise PatternError(f"path pattern {pattern!r} must be absolute or start with ~/")
    depth = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise PatternError(f"unclosed '[' in {pattern!r}")
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        elif ch == "{":
            depth += 1
            out.append("(?:")
        elif ch == "}" and depth:
            depth -= 1
            out.append(")")
        elif ch == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(ch))
        i += 1
    if depth:
        raise PatternError(f"unclosed '{{' in {pattern!r}")
    return "".join(out)


def literal_anchor(pattern: str) -> str:
    """The longest literal run of a glob: a fixed substring every match contains."""
    body = pattern[2:] if pattern.startswith("~/") else pattern
    best = ""
    for part in re.split(r"[*?\[\]{},]", body):
        if len(part) > len(best):
            best = part
    # Inside {a,b} no single alternative is guaranteed; fall back to what precedes it.
    if "{" in body:
        head = body.split("{", 1)[0]
        head = re.split(r"[*?\[\]]", head)[-1]
        best = head if len(head) >= 2 else best
    return best


@dataclass(frozen=True)
class SensitiveClass:
    name: str
    level: str
    weight: int
    alone: bool  # may this class raise a detection by itself?
    paths: tuple[str, ...]
    exclude: tuple[str, ...] = ()


class Catalogue:
    """Matches paths to sensitive classes. The heaviest matching class wins."""

    def __init__(self, classes: Iterable[SensitiveClass]) -> None:
        self.classes = tuple(sorted(classes, key=lambda c: -c.weight))
        self.by_name = {c.name: c for c in self.classes}
        every = [glob_to_regex(p) for c in self.classes for p in c.paths]
        self._include = re.compile("^(?:" + "|".join(every) + ")$") if every else None
        self._exclude = {
            c.name: re.compile("^(?:" + "|".join(glob_to_regex(p) for p in c.exclude) + ")$")
            for c in self.classes
            if c.exclude
        }
        self._per_class = [
            re.compile("^(?:" + "|".join(glob_to_regex(p) for p in c.paths) + ")$")
            for c in self.classes
        ]
        #: A bytes regex that every line mentioning a catalogue path matches: a
        #: cheap pre-filter for results-log readers. It searches one word per
        #: glob (its last literal path component), never a slash, as JSON may
        #: escape '/' as '\/'. A line that fails it cannot hold a catalogue read.
        words: set[str] = set()
        for c in self.classes:
            for p in c.paths:
                parts = [w for w in literal_anchor(p).split("/") if w]
                if parts:
                    words.add(parts[-1] if len(parts[-1]) >= 3 else max(parts, key=len))
        self.prefilter = re.compile(
            "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)).encode() or b"(?!)"
        )

    def match(self, path: str) -> SensitiveClass | None:
        if self._include is None:
            return None
        # One combined regex rejects the common case (not in the catalogue) in
        # a single pass; a hit is then resolved class by class, heaviest first,
        # because an exclude may veto a heavier class for a lighter one.
        if self._include.match(path) is None:
            return None
        for c, rx in zip(self.classes, self._per_class):
            if rx.match(path) and not (
                c.name in self._exclude and self._exclude[c.name].match(path)
            ):
                return c
        return None
