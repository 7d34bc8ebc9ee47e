"""Printing: aligned text tables, section headings and PASS/MISS labels.

Benchmarks are not tests: a MISS is information for the reader, never an
exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def heading(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def note(text: str) -> None:
    print(f"   {text}", flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned table: numbers right-aligned, text left-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    numeric = [
        all(_looks_numeric(r[i]) for r in cells if i < len(r)) if cells else False
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  " + "  ".join(parts).rstrip()

    print(line(list(headers)))
    print("  " + "  ".join("-" * w for w in widths))
    for r in cells:
        print(line(r))
    sys.stdout.flush()


def _looks_numeric(text: str) -> bool:
    t = text.strip().split(" ")[0].rstrip("x%")
    try:
        float(t)
    except ValueError:
        return False
    return True


def verdict(value: float, target: float, *, at_most: bool) -> str:
    """``PASS``/``MISS`` against a target (``at_most``: lower is better)."""
    ok = value <= target if at_most else value >= target
    return "PASS" if ok else "MISS"
