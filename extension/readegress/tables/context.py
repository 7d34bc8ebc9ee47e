"""The query context: constraints osquery (or SQLite) pushes down to a table.

osquery sends ``{"constraints":[{"name":..,"list":[{"op":2,"expr":"1"}],
"affinity":"BIGINT"}],"colsUsed":[..],"colsUsedBitset":N}`` as a JSON string.
Quirks handled here, once: an empty ``list`` may arrive as the string ``""``;
``expr`` is always a string; ``pid IN (1,2)`` arrives as several EQUALS
entries for one column (a union, as osquery's own tables read it). Values that
do not parse as the column's type can match no row, so they are dropped and the
constraint then matches nothing (never an exception reaching osquery).
SQLite re-checks every constraint on returned rows, so pushdown only needs to
return a superset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

# osquery's ConstraintOperator codes.
UNIQUE = 1
EQUALS = 2
IN = 3  # never sent by osquery's core: it expands IN into EQUALS entries
GREATER_THAN = 4
LESS_THAN_OR_EQUALS = 8
LESS_THAN = 16
GREATER_THAN_OR_EQUALS = 32
MATCH = 64
LIKE = 65
GLOB = 66
REGEXP = 67

# The largest and smallest values SQLite's INTEGER holds.
_I64_MAX = (1 << 63) - 1
_I64_MIN = -(1 << 63)


class ContextError(ValueError):
    """The context JSON itself is malformed (not a bad constraint value)."""


@dataclass(frozen=True)
class Constraint:
    column: str
    op: int
    expr: str


@dataclass(frozen=True)
class QueryContext:
    constraints: tuple[Constraint, ...] = ()
    cols_used: frozenset[str] | None = None
    _by_column: dict[str, tuple[Constraint, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(
        cls, constraints: Iterable[Constraint], cols_used: Iterable[str] | None = None
    ) -> QueryContext:
        cs = tuple(constraints)
        by: dict[str, list[Constraint]] = {}
        for c in cs:
            by.setdefault(c.column, []).append(c)
        return cls(
            cs,
            None if cols_used is None else frozenset(cols_used),
            {k: tuple(v) for k, v in by.items()},
        )

    @classmethod
    def from_json(cls, text: str | None) -> QueryContext:
        """Parse osquery's context JSON (``None`` or ``""`` means no context)."""
        if not text:
            return cls.of(())
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ContextError(f"query context is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ContextError("query context is not a JSON object")
        out: list[Constraint] = []
        raw_constraints = data.get("constraints") or []
        if not isinstance(raw_constraints, list):
            raise ContextError("query context 'constraints' is not a list")
        for entry in raw_constraints:
            if not isinstance(entry, dict):
                raise ContextError("query context constraint is not an object")
            name = entry.get("name")
            items = entry.get("list")
            if not isinstance(name, str):
                raise ContextError("query context constraint has no name")
            if items in ("", None):
                continue
            if not isinstance(items, list):
                raise ContextError(f"constraint list for {name!r} is not a list")
            for item in items:
                try:
                    op = int(item["op"])
                    expr = item["expr"]
                except (KeyError, TypeError, ValueError):
                    raise ContextError(f"constraint on {name!r} lacks op/expr") from None
                out.append(Constraint(name, op, "" if expr is None else str(expr)))
        used = data.get("colsUsed")
        cols = [str(c) for c in used] if isinstance(used, list) else None
        return cls.of(out, cols)

    def on(self, column: str) -> tuple[Constraint, ...]:
        return self._by_column.get(column, ())

    def int_equals(self, column: str) -> frozenset[int] | None:
        """Integer values the column must equal (union of EQUALS/IN), or ``None``.

        An empty set means a constraint exists but no valid value could match.
        """
        cs = [c for c in self.on(column) if c.op in (EQUALS, IN)]
        if not cs:
            return None
        values: set[int] = set()
        for c in cs:
            for part in c.expr.split(",") if c.op == IN else (c.expr,):
                v = parse_int(part)
                if v is not None:
                    values.add(v)
        return frozenset(values)

    def text_equals(self, column: str) -> frozenset[str] | None:
        cs = [c for c in self.on(column) if c.op == EQUALS]
        if not cs:
            return None
        return frozenset(c.expr for c in cs)

    def int_lower_bound(self, column: str) -> int | None:
        """The tightest ``column > N`` / ``column >= N`` bound, as an inclusive minimum."""
        best: int | None = None
        for c in self.on(column):
            v = parse_int(c.expr)
            if v is None:
                continue
            if c.op == GREATER_THAN:
                v += 1
            elif c.op != GREATER_THAN_OR_EQUALS:
                continue
            best = v if best is None else max(best, v)
        return best

    def uses(self, column: str) -> bool:
        return self.cols_used is None or column in self.cols_used


def parse_int(text: str) -> int | None:
    """A strict base-10 integer in SQLite's range, else ``None`` (never raises)."""
    t = text.strip()
    if not t or len(t) > 20:
        return None
    try:
        v = int(t, 10)
    except ValueError:
        return None
    if v < _I64_MIN or v > _I64_MAX:
        return None
    return v
