"""No input crashes the DuckDB engine; every bad line is reported as FILE:LINE and counted.

Hostile lines among good ones (nesting bombs, a 12 MB line, invalid UTF-8, NUL
bytes, wrong types in every field, a gzip member cut short): the run goes on,
each bad line is named, and the detections of the good lines are all there.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from fleet_logs import results_logs
from readegress.detect.config import load_config
from readegress.fleet.pipeline import correlate_events, reference_events
from readegress.fleet.run import run

FIXTURE = Path(__file__).parent / "fixtures" / "logs" / "events.log"
CONFIG = load_config()

HOSTILE = [
    b"[" * 200_000,
    b'{"a":' * 100_000,
    b'{"hostIdentifier":"h","columns":{"path":"' + b"x" * (12 << 20) + b'"},"action":"added"}',
    b'{"hostIdentifier":"h\xff\xfe","columns":{},"action":"added"}',
    b'{"hostIdentifier":"h","columns":{"pid":"1\x00"},"action":"added"}\x00',
    b"\x00\x00\x00",
    b"not json at all",
    b"[1,2,3]",
    b'"a string"',
    b'{"columns":{"pid":"1"},"action":"added"}',
    b'{"hostIdentifier":5,"columns":{},"action":"added"}',
    b'{"hostIdentifier":"h","columns":[1],"action":"added"}',
    b'{"hostIdentifier":"h","columns":{},"action":7}',
    b'{"hostIdentifier":"h","diffResults":[]}',
    b'{"hostIdentifier":"h","diffResults":{"added":{}}}',
    b'{"hostIdentifier":"h","snapshot":{},"action":"snapshot"}',
    b'{"hostIdentifier":"h","snapshot":[1,"x",null],"action":"snapshot"}',
    b'{"hostIdentifier":"h","name":"n"}',
]


def _detections(path: str) -> list[object]:
    bad: list[str] = []
    fr = run([path], CONFIG, lambda b: bad.append(str(b)), progress=False)
    return [fr.correlated.candidates, bad, fr]  # type: ignore[list-item]


def test_every_hostile_line_is_reported_and_good_rows_survive(tmp_path: Path) -> None:
    good = FIXTURE.read_bytes().splitlines()
    mixed: list[bytes] = []
    hostile_at: list[int] = []
    for i, line in enumerate(good):
        mixed.append(line)
        if i < len(HOSTILE):
            mixed.append(HOSTILE[i])
            if b"x" * 1000 not in HOSTILE[i]:  # the 12 MB line is valid JSON (no event row)
                hostile_at.append(len(mixed))
    path = tmp_path / "mixed.log"
    path.write_bytes(b"\n".join(mixed) + b"\n")
    cands, bad, _ = _detections(str(path))
    clean, clean_bad, _ = _detections(str(FIXTURE))
    key = [(d.host, d.pid, d.path, d.remote_address, d.score) for d in clean]  # type: ignore[attr-defined]
    assert [(d.host, d.pid, d.path, d.remote_address, d.score) for d in cands] == key  # type: ignore[attr-defined]
    reported = {int(b.split(":")[1]) for b in bad if b.startswith(str(path))}
    assert set(hostile_at) <= reported, sorted(set(hostile_at) - reported)
    assert len(bad) == len(clean_bad) + len(HOSTILE) - 1


def test_gzip_cut_short_keeps_what_came_before(tmp_path: Path) -> None:
    data = gzip.compress(FIXTURE.read_bytes())
    path = tmp_path / "cut.log.gz"
    path.write_bytes(data[: len(data) * 3 // 4])
    _, bad, fr = _detections(str(path))
    assert any("read failed" in b for b in bad)
    assert fr.lines.lines > 0  # type: ignore[attr-defined]


@st.composite
def _field_values(draw: st.DrawFn) -> object:
    return draw(
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
            st.text(max_size=8), st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
            st.sampled_from(["inf", "-1", "1e400", " 12", "nan", "0x10"]),
        )
    )  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    log=results_logs(),
    noise=st.lists(st.binary(max_size=40), max_size=5),
    keys=st.lists(
        st.sampled_from(
            [
                "pid",
                "time",
                "ppid",
                "parent",
                "remote_port",
                "path",
                "operation",
                "action",
                "status",
                "hostIdentifier",
                "columns",
                "snapshot",
                "diffResults",
                "unixTime",
            ]
        ),
        max_size=4,
    ),
    value=_field_values(),
)
def test_random_damage_never_crashes(
    log: str,
    noise: list[bytes],
    keys: list[str],
    value: object,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    lines = log.encode().splitlines()
    damaged = []
    for i, line in enumerate(lines):
        obj = json.loads(line)
        if i % 2 == 0 and keys:
            target = obj.get("columns") if isinstance(obj.get("columns"), dict) else obj
            for k in keys:
                target[k] = value
        damaged.append(json.dumps(obj).encode())
        if noise:
            damaged.append(noise[i % len(noise)].replace(b"\n", b" "))
    path = tmp_path_factory.mktemp("damaged") / "d.log"
    path.write_bytes(b"\n".join(damaged) + b"\n")
    bad: list[str] = []
    fr = run([str(path)], CONFIG, lambda b: bad.append(str(b)), progress=False)
    for b in bad:
        assert b.startswith(str(path) + ":")
    # The per-row reader judges the same lines bad or good (it may also report
    # unusable rows, which the engine reports when it feeds them).
    assert fr.correlated.candidates == correlate_events(CONFIG, reference_events([str(path)]))


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.binary(max_size=12).map(lambda b: b.replace(b"\n", b""))
        | st.sampled_from([b"", b"\xff", b"caf\xc3\xa9", b"\xe2\x82", b'{"a":1}'])
        | st.integers(0, 90).map(lambda n: b"y" * n),
        max_size=30,
    ),
    newline_at_end=st.booleans(),
    batch_bytes=st.integers(min_value=1, max_value=40),
    big=st.none() | st.integers(min_value=1, max_value=16),
    max_line=st.integers(min_value=20, max_value=60),
)
def test_line_batches_cut_every_line_once_whatever_the_chunk_size(
    lines: list[bytes],
    newline_at_end: bool,
    batch_bytes: int,
    big: Optional[int],
    max_line: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Batches are views into what was read: each line once, numbered, non-UTF-8 reported.

    With ``big``, every line longer than it comes alone in a batch marked big,
    and no other batch holds one; a line far over ``max_line`` is reported and
    empty, and only a line over it is.
    """
    from readegress.logs.lines import LineStats, line_batches

    body = b"\n".join(lines) + (b"\n" if newline_at_end and lines else b"")
    assume(not body.startswith(b"\x1f\x8b"))  # gzip's magic: read as gzip, tested apart
    path = tmp_path_factory.mktemp("lb") / "x.log"
    path.write_bytes(body)
    bad: list[str] = []
    stats = LineStats()
    got: dict[int, str] = {}
    for b in line_batches(
        [str(path)],
        lambda x: bad.append(str(x)),
        stats,
        batch_bytes=batch_bytes,
        big_line_bytes=big,
        max_line_bytes=max_line,
    ):
        for i, text in enumerate(b.lines):
            assert b.first_line + i not in got
            got[b.first_line + i] = text
            if big is not None and not b.big:
                assert len(text.encode()) <= big
        assert len(b.lines) == b.count
        if b.big:
            assert b.count == 1 and big is not None and len(bytes(b.data)) > big
    expected_lines = body.split(b"\n")
    if expected_lines and expected_lines[-1] == b"":
        expected_lines.pop()  # a final newline ends the last line, it starts none
    too_long = {int(x.split(":")[1]) for x in bad if "line over" in x}
    want: dict[int, str] = {}
    want_bad = []
    for n, raw in enumerate(expected_lines, start=1):
        if len(raw) > max_line + 2 * batch_bytes:
            assert n in too_long
        if n in too_long:
            assert len(raw) > max_line
            want[n] = ""
            want_bad.append(f"{path}:{n}: line over {max_line} bytes")
            continue
        try:
            want[n] = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            want[n] = ""
            want_bad.append(f"{path}:{n}: not UTF-8 (byte {e.start})")
    assert got == want
    assert bad == want_bad
    assert stats.lines == len(expected_lines) and stats.bytes == len(body)


def test_host_types_read_like_the_per_row_reader(tmp_path: Path) -> None:
    """Event lines whose host is no plain string: the engine's hosts and bad lines are the reader's.

    The engine proves most lines' JSON types from their fields alone (a string
    hostIdentifier, columns with a pid); every host below either reads as a
    number, boolean or JSON text, or is missing, so the types are read.
    """
    from readegress.logs.results import ResultsReader

    cols = {"pid": "7", "parent": "1", "path": "/bin/sh", "cmdline": "sh", "time": "1700000000",
            "uid": "0", "auid": "0", "syscall": "execve"}  # fmt: skip
    hosts: list[dict[str, object]] = [
        {"hostIdentifier": 5, "hostname": "by-name"},
        {"hostIdentifier": "5"},
        {"hostIdentifier": 1.5e3},
        {"hostIdentifier": True, "hostname": "t"},
        {"hostIdentifier": "true"},
        {"hostIdentifier": "{not an object"},
        {"hostIdentifier": {"a": 1}, "hostname": "obj"},
        {"hostIdentifier": ["x"]},
        {"hostIdentifier": "", "hostname": "empty-id"},
        {"hostIdentifier": None, "hostname": "null-id"},
        {"hostIdentifier": "-1e5"},
        {"hostname": 7},
        {"hostIdentifier": "plain"},
    ]
    lines = [json.dumps({**h, "name": "q", "columns": cols, "action": "added"}) for h in hosts]
    path = tmp_path / "hosts.log"
    path.write_text("\n".join(lines) + "\n")
    bad: list[str] = []
    fr = run([str(path)], CONFIG, lambda b: bad.append(str(b)), progress=False)
    got = sorted(h for (h,) in fr.engine.fetch("SELECT host FROM ev"))
    reader_bad: list[str] = []
    reader = ResultsReader(on_bad=lambda b: reader_bad.append(str(b)), fast=False)
    want = sorted(rec.host for rec in reader.event_rows([str(path)]))
    assert got == want
    assert bad == reader_bad
    assert "by-name" in got and "5" in got and "plain" in got
