"""The labelled scenario suite (tests/scenarios.py) in both modes, at the default threshold.

osquery rows: every scenario's rows, as osquery logs them by default (exec rows
only, whole seconds, no byte counts), through the osquery rows mapping and the
correlation core, twice: with the destination new to the host and seen before
(first_seen_destination is worth points; neither way may decide the outcome).

native (root): every scenario run for real under one ``readegress watch``
(fanotify + sock_diag), each against a loopback peer of its own. An attack
still unreported after the generous wait is run once more (other work on a
loaded 2-core machine can starve the sources for a moment); the retries are
printed. ``bash install/dev.sh bench detection`` never retries.

Attacks must be detected with the expected scope and the key as the evidence;
look-alikes must not be detected at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from readegress.detect.core import SCOPES
from scenarios import (
    KEY_CLASS,
    SCENARIOS,
    NativeResult,
    load_scenario_config,
    make_area,
    osquery_ctx,
    run_native,
    run_osquery,
    with_port,
)

BY_NAME = {s.name: s for s in SCENARIOS}
OSQUERY_PORTS = {s.name: 45000 + i for i, s in enumerate(SCENARIOS)}


def test_the_suite_is_labelled_with_at_least_15_of_each() -> None:
    attacks = [s for s in SCENARIOS if s.attack]
    lookalikes = [s for s in SCENARIOS if not s.attack]
    assert len(attacks) >= 15 and len(lookalikes) >= 15
    assert len(BY_NAME) == len(SCENARIOS)
    for s in attacks:
        assert s.scope in SCOPES and (s.osquery_scope is None or s.osquery_scope in SCOPES)


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    d = tmp_path_factory.mktemp("scenarios")
    key, key2 = make_area(d)
    return d, key, key2


@pytest.mark.parametrize("seen_before", [False, True], ids=["new-destination", "seen-before"])
@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_osquery_rows(area: tuple[Path, str, str], name: str, seen_before: bool) -> None:
    s = BY_NAME[name]
    if s.native_only:
        pytest.skip(f"native only: {s.native_only}")
    d, key, key2 = area
    cfg = load_scenario_config(d, key, key2, OSQUERY_PORTS["approved_backup"])
    ctx = with_port(osquery_ctx(d, key, key2), OSQUERY_PORTS[name])
    dets = run_osquery(s, cfg, ctx, seen_before=seen_before)
    if not s.attack:
        assert dets == [], [(x.scope, x.score, x.reasons) for x in dets]
        return
    assert dets, f"{name} missed"
    first = dets[0]
    assert first.scope == s.expected_osquery_scope, (first.scope, first.score, first.reasons)
    assert first.path in (key, key2) and first.sensitive_class == KEY_CLASS
    assert first.bytes_sent is None and "pipe_shared" not in first.reasons  # rows carry neither
    assert first.priority == round(first.score * 1.0 * 1.5)  # medium host, restricted class


@pytest.fixture(scope="module")
def native(area: tuple[Path, str, str]) -> NativeResult:
    if os.geteuid() != 0:
        pytest.skip("fanotify and sock_diag need root")
    d, key, key2 = area
    res = run_native(d, key, key2, retry_missed=True)
    if res.retried:
        print(f"attacks run a second time after a first miss: {res.retried}")
    return res


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_native(native: NativeResult, area: tuple[Path, str, str], name: str) -> None:
    s = BY_NAME[name]
    _, key, key2 = area
    assert name not in native.errors, native.errors[name]
    assert "watch" not in native.errors, native.errors["watch"]
    dets: list[dict[str, Any]] = native.detections[name]
    if not s.attack:
        assert dets == [], [(x["scope"], x["score"], x["reasons"]) for x in dets]
        return
    assert dets, f"{name} missed; stderr {native.stderr[-5:]}"
    best = max(dets, key=lambda x: x["score"])
    assert best["scope"] == s.scope, (best["scope"], best["score"], best["reasons"])
    assert best["path"] in (key, key2) and best["sensitive_class"] == KEY_CLASS
    assert best["score"] >= 50 and best["priority"] >= best["score"]
    assert best["files_read"][0]["path"] == best["path"]
    if name == "dev_tcp":
        # cat writes and exits within a millisecond: its socket's cookie, taken
        # while fanotify held the open, attributes the close to the reader.
        assert best["pid"] == best["reader_pid"], best
    if s.proven_pipe:
        assert "pipe_shared" in best["reasons"], best  # proven by the pipe inodes
    if name == "split_then_send":
        # Many small uploads of one file add up to its size.
        assert "bytes_ge_file_size" in best["reasons"] and best[
            "chain_bytes_sent"
        ] >= os.path.getsize(key)
        assert len(best["bytes_by_destination"]) == 1
