"""``python -m bench detection``: precision and recall of the labelled scenario suite per mode.

The suite is tests/scenarios.py (attacks and look-alikes, each written as a
live shell script and as the osquery rows of the same commands). Modes:

* ``osquery``: every scenario's rows (exec rows only, whole seconds, no byte
  counts) through the osquery rows mapping and the correlation core, once
  with the destination new to the host and once seen before; a scenario
  counts as detected only if it is in both runs (an attack) or quiet in both
  (a look-alike). Scenarios osquery cannot show at all are listed, not counted.
* ``native`` (root): every scenario run for real under one ``readegress watch``
  (fanotify + sock_diag), each against a loopback peer of its own.

Printed per mode: true/false positives and negatives, precision = TP/(TP+FP),
recall = TP/(TP+FN), and for every scenario its outcome, scope and score, so a
miss or a false alarm shows its arithmetic. An attack detected with another
scope than its label counts as detected (its scope is printed). Exit status 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

TESTS = Path(__file__).resolve().parent.parent / "tests"


def _suite() -> Any:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import scenarios

    return scenarios


def _summary(mode: str, outcomes: list[tuple[Any, bool, str]]) -> None:
    tp = sum(1 for s, hit, _ in outcomes if s.attack and hit)
    fn = sum(1 for s, hit, _ in outcomes if s.attack and not hit)
    fp = sum(1 for s, hit, _ in outcomes if not s.attack and hit)
    tn = sum(1 for s, hit, _ in outcomes if not s.attack and not hit)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    print(
        f"{mode:<8} attacks {tp + fn:>2}  look-alikes {fp + tn:>2}  TP {tp:>2} FN {fn:>2}"
        f" FP {fp:>2} TN {tn:>2}  precision {precision:.3f}  recall {recall:.3f}"
    )


def _line(s: Any, hit: bool, detail: str) -> str:
    label = "attack    " if s.attack else "look-alike"
    ok = hit == s.attack
    verdict = ("detected" if hit else "missed") if s.attack else ("FALSE ALARM" if hit else "quiet")
    return f"  {'ok ' if ok else 'BAD'} {label} {s.name:<28} {verdict:<11} {detail}"


def osquery_mode(area: Path, key: str, key2: str) -> list[tuple[Any, bool, str]]:
    sc = _suite()
    ports = {s.name: 45000 + i for i, s in enumerate(sc.SCENARIOS)}
    cfg = sc.load_scenario_config(area, key, key2, ports["approved_backup"])
    out = []
    print("\nosquery rows (destination new / seen before):")
    for s in sc.SCENARIOS:
        if s.native_only:
            print(f"  --  {'attack    ' if s.attack else 'look-alike'} {s.name:<28} not counted:"
                  f" {s.native_only}")  # fmt: skip
            continue
        ctx = sc.with_port(sc.osquery_ctx(area, key, key2), ports[s.name])
        runs = [sc.run_osquery(s, cfg, ctx, seen_before=seen) for seen in (False, True)]
        hit = all(runs) if s.attack else any(runs)
        detail = " / ".join(f"{d[0].scope} {d[0].score}" if d else "-" for d in runs)
        outcome = (s, hit, detail)
        print(_line(*outcome))
        out.append(outcome)
    return out


def native_mode(area: Path, key: str, key2: str) -> Optional[list[tuple[Any, bool, str]]]:
    if os.geteuid() != 0:
        print("\nnative: skipped (fanotify and sock_diag need root)")
        return None
    sc = _suite()
    print("\nnative (live, readegress watch):", flush=True)
    res = sc.run_native(area, key, key2)
    for line in res.stderr[-1:]:
        print(f"  {line}")
    out = []
    for s in sc.SCENARIOS:
        dets = res.detections.get(s.name, [])
        hit = bool(dets)
        detail = ""
        if dets:
            best = max(dets, key=lambda d: d["score"])
            detail = f"{best['scope']} {best['score']} {','.join(best['reasons'])}"
        if s.name in res.errors:
            detail += f" (script error: {res.errors[s.name][:80]})"
        outcome = (s, hit, detail)
        print(_line(*outcome))
        out.append(outcome)
    return out


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench detection", description=__doc__)
    ap.add_argument("--modes", default="osquery,native", help="comma-separated: osquery,native")
    args = ap.parse_args(list(argv))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    sc = _suite()
    with tempfile.TemporaryDirectory(prefix="readegress-detection-") as tmp:
        area = Path(tmp)
        key, key2 = sc.make_area(area)
        a = sum(1 for s in sc.SCENARIOS if s.attack)
        print(f"labelled suite: {a} attacks, {len(sc.SCENARIOS) - a} look-alikes"
              f" (tests/scenarios.py); default threshold")  # fmt: skip
        results: dict[str, list[tuple[Any, bool, str]]] = {}
        if "osquery" in modes:
            results["osquery"] = osquery_mode(area, key, key2)
        if "native" in modes:
            native = native_mode(area, key, key2)
            if native is not None:
                results["native"] = native
        print()
        for mode, outcomes in results.items():
            _summary(mode, outcomes)
    return 0
