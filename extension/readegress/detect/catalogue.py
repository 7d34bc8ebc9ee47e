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


#: Paths one glob may stand for once its ``{a,b}`` alternatives are expanded
#: (osquery's file_paths and the native source's walk expand them): more is a
#: bomb (``/{a,b}`` x 30 is 2**30 globs), refused before anything expands it.
MAX_BRACE_EXPANSIONS = 256
#: How deeply ``{...}`` may nest in one glob.
MAX_BRACE_DEPTH = 8
#: Mid-path ``**`` per glob: each is unrolled to several levels for osquery.
MAX_DOUBLE_STARS = 3


class PatternError(ValueError):
    pass


def brace_expansions(pattern: str, limit: int = MAX_BRACE_EXPANSIONS) -> int:
    """How many globs ``{a,b}`` expansion makes of ``pattern``, counted without
    expanding (linear time; saturates at ``limit + 1``). Braces count wherever they
    are, inside ``[...]`` too, as the expanders see them; an unclosed ``{`` is literal."""
    cap = limit + 1
    stack: list[list[int]] = [[0, 1]]  # per open brace: [sum of closed alternatives, product]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "{":
            stack.append([0, 1])
        elif ch == "," and len(stack) > 1:
            frame = stack[-1]
            frame[0] = min(cap, frame[0] + frame[1])
            frame[1] = 1
        elif ch == "}" and len(stack) > 1:
            total, product = stack.pop()
            parent = stack[-1]
            parent[1] = min(cap, parent[1] * min(cap, total + product))
        i += 1
    while len(stack) > 1:  # unclosed: literal, as the expanders treat it
        stack.pop()
    return stack[0][1]


def check_pattern_cost(pattern: str) -> None:
    """Refuse a glob whose expansion would be unbounded work (a bomb)."""
    depth = deepest = 0
    for ch in pattern:
        if ch == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == "}" and depth:
            depth -= 1
    if deepest > MAX_BRACE_DEPTH:
        raise PatternError(f"path pattern nests '{{' {deepest} deep; at most {MAX_BRACE_DEPTH}")
    n = brace_expansions(pattern)
    if n > MAX_BRACE_EXPANSIONS:
        raise PatternError(
            f"path pattern {pattern[:60]!r}{'...' if len(pattern) > 60 else ''} expands to more"
            f" than {MAX_BRACE_EXPANSIONS} paths; split it into several patterns"
        )
    stars = pattern.rstrip("/").count("/**/")
    if stars > MAX_DOUBLE_STARS:
        raise PatternError(f"path pattern has {stars} mid-path '**'; at most {MAX_DOUBLE_STARS}")


def glob_to_regex(pattern: str) -> str:
    """Translate one catalogue glob into a regex (no anchors)."""
    if not pattern:
        raise PatternError("empty path pattern")
    check_pattern_cost(pattern)
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
