"""The results-log reader: every format osquery writes, bad lines, gzip/stdin, the fast path."""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from readegress.detect.config import load_config
from readegress.logs.results import BadLine, LogRow, ResultsReader, decorations_of, read_rows
from readegress.sources.osquery_rows import (
    FILE_EVENTS,
    PROCESS_EVENTS,
    SOCKET_EVENTS,
    event_from_row,
)

LOGS = Path(__file__).parent / "fixtures" / "logs"
FORMATS = [
    "events.log",
    "events_numerics_top_level.log",
    "batch_hostname.log",
    "snapshot.log",
    "snapshot_events.log",
]


def _norm(rec: LogRow) -> tuple[Any, ...]:
    """A row as (host, table, columns as strings): numerics on or off read the same."""
    return (rec.host, rec.table, tuple(sorted((k, str(v)) for k, v in rec.row.items())))


def _events_of(rows: list[LogRow]) -> list[tuple[Any, ...]]:
    """(file line, event) for rows that become events, as replay builds them."""
    out = []
    for rec in rows:
        try:
            ev = event_from_row(rec.table or "", rec.row, rec.host)
        except ValueError as e:
            out.append((rec.line, f"error: {e}"))
            continue
        if ev is not None:
            out.append((rec.line, ev))
    return out


def test_every_format_reads_the_same_rows() -> None:
    seen = {}
    for name in FORMATS:
        reader = ResultsReader(fast=False)
        rows = [r for r in reader.event_rows([str(LOGS / name)]) if r.host != "" and r.line]
        keyed = sorted(_norm(r) for r in rows if r.row.get("pid") not in ("", "77"))
        seen[name] = keyed
        assert {r.table for r in rows} == {FILE_EVENTS, SOCKET_EVENTS, PROCESS_EVENTS}, name
    # Event format with its bad lines aside, every format holds the same 132 added rows.
    assert len(seen["snapshot.log"]) == 132
    for name in FORMATS:
        assert seen[name] == seen["snapshot.log"], name


def test_actions_hosts_and_counts() -> None:
    reader = ResultsReader(fast=False)
    rows = list(reader.rows([str(LOGS / "batch_hostname.log")]))
    # Older osquery: "hostname", string numbers; removed rows are counted, never yielded.
    assert {r.host for r in rows} == {"web-01.example.com", "db-01.example.com"}
    assert {r.action for r in rows} == {"added"}
    assert reader.stats.removed == 8 and reader.stats.rows == 132 + 8
    assert all(isinstance(r.unix_time, int) for r in rows)
    snap = list(read_rows([str(LOGS / "snapshot.log")]))
    assert {r.action for r in snap} == {"snapshot"} and len(snap) == 132


def test_bad_lines_are_reported_with_file_and_line_never_fatal() -> None:
    for fast in (True, False):
        got: list[BadLine] = []
        reader = ResultsReader(on_bad=got.append, fast=fast)
        rows = list(reader.event_rows([str(LOGS / "events.log")]))
        where = str(LOGS / "events.log")
        assert [(b.file, b.line, b.reason.split(":")[0]) for b in got] == [
            (where, 4, "not JSON"),
            (where, 6, "not a JSON object but list"),
            (where, 10, "no rows (no columns, diffResults or snapshot)"),
            (where, 12, "no host (hostIdentifier or hostname)"),
        ]
        assert str(got[0]).startswith(f"{where}:4: not JSON")
        st = reader.stats
        assert (st.lines, st.bad_lines, st.blank_lines, st.removed, st.other_tables) == (
            140,
            4,
            1,
            1,
            1,
        )
        # Lines after the bad ones are read: the last rows of the file are there.
        assert rows[-1].host == "db-01.example.com"


def test_decorations_nested_or_top_level() -> None:
    nested = json.loads((LOGS / "events.log").read_text().splitlines()[0])
    top = json.loads((LOGS / "events_numerics_top_level.log").read_text().splitlines()[0])
    assert decorations_of(nested) == decorations_of(top)
    assert decorations_of(top)["hostname"] == "web-01"


def test_gzip_and_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = (LOGS / "events.log").read_bytes()
    plain = [_norm(r) for r in ResultsReader().event_rows([str(LOGS / "events.log")])]
    gz = tmp_path / "results.log.1"  # gzip is recognised by its bytes, not its name
    gz.write_bytes(gzip.compress(data))
    assert [_norm(r) for r in ResultsReader().event_rows([str(gz)])] == plain
    for payload in (data, gzip.compress(data)):
        stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(payload)))  # type: ignore[arg-type]
        monkeypatch.setattr(sys, "stdin", stdin)
        rows = list(ResultsReader().event_rows(["-"]))
        assert [_norm(r) for r in rows] == plain
        assert rows[0].file == "<stdin>"


def test_unreadable_file_and_broken_gzip(tmp_path: Path) -> None:
    got: list[BadLine] = []
    reader = ResultsReader(on_bad=got.append)
    missing = str(tmp_path / "nope.log")
    broken = tmp_path / "cut.log.gz"
    broken.write_bytes(gzip.compress((LOGS / "events.log").read_bytes())[:2000])
    rows = list(reader.event_rows([missing, str(broken)]))
    assert got[0].file == missing and got[0].line == 0 and "cannot open" in got[0].reason
    assert got[-1].file == str(broken) and "read failed" in got[-1].reason
    assert reader.stats.unreadable_files == 1 and rows  # what came before the break is read


def test_crlf_blank_lines_and_missing_final_newline(tmp_path: Path) -> None:
    lines = (LOGS / "events.log").read_bytes().split(b"\n")[:40]
    log = tmp_path / "crlf.log"
    log.write_bytes(b"\r\n".join(lines).rstrip(b"\r\n"))
    ref = [_norm(r) for r in ResultsReader(fast=False).event_rows([str(LOGS / "events.log")])][:30]
    got = [_norm(r) for r in ResultsReader().event_rows([str(log)])]
    assert got[:30] == ref


def _read_line(path: str, pid: str, eid: str, escaped_op: bool = False, raw: str = "") -> str:
    cols = {
        "auid": "0",
        "cwd": "/",
        "dest_path": "",
        "egid": "0",
        "eid": eid,
        "euid": "0",
        "executable": "/usr/bin/cat",
        "fsgid": "0",
        "fsuid": "0",
        "gid": "0",
        "operation": "open",
        "partial": "0",
        "path": path,
        "pid": pid,
        "ppid": "1",
        "sgid": "0",
        "suid": "0",
        "time": "1764300000",
        "uid": "0",
        "uptime": "5",
    }
    line = json.dumps(
        {
            "name": "q",
            "hostIdentifier": "h",
            "calendarTime": "x",
            "unixTime": 1764300001,
            "epoch": 0,
            "counter": 0,
            "numerics": False,
            "decorations": {"hostname": "h"},
            "columns": cols,
            "action": "added",
        },
        separators=(",", ":"),
    )
    if escaped_op:
        line = line.replace('"operation":"open"', '"operation":"\\u006fpen"')
    if raw:
        line = line.replace(f'"path":"{path}"', f'"path":"{raw}"')
    return line


def test_fast_path_never_loses_what_the_full_parse_sees(tmp_path: Path) -> None:
    """Escapes (a quoted '/', an escaped operation) and repeats are left to the parser."""
    lines = [
        _read_line("/usr/lib/libc.so.6", "10", "0000000001"),
        _read_line("/usr/lib/libm.so.6", "10", "0000000002"),  # collapsed into the first
        _read_line("/etc/shadow", "10", "0000000003", raw="\\/etc\\/shadow"),  # JSON may escape /
        _read_line("/usr/lib/libz.so.1", "10", "0000000004", escaped_op=True),
        _read_line("/etc/shadow", "10", "0000000005"),
        _read_line("/usr/lib/libz.so.1", "11", "0000000006"),  # another pid
    ]
    log = tmp_path / "edge.log"
    log.write_text("\n".join(lines) + "\n")
    catalogue = load_config().catalogue
    reader = ResultsReader()
    fast = list(reader.event_rows([str(log)], keep_read=lambda p: catalogue.match(p) is not None))
    assert [r.line for r in fast] == [1, 3, 4, 5, 6]
    assert fast[1].row["path"] == "/etc/shadow" and fast[2].row["operation"] == "open"
    assert reader.stats.collapsed == 1 and reader.stats.fast_lines == 5


def test_no_collapse_across_a_read_the_fast_path_did_not_record(tmp_path: Path) -> None:
    """Same pid and second: cat reads, nc reads (a line the full parse handles), cat
    again. The third read differs from the one just before it: kept, not collapsed."""
    first = _read_line("/usr/lib/libc.so.6", "10", "0000000001")
    middle = _read_line("/usr/lib/libz.so.1", "10", "0000000002", escaped_op=True)
    middle = middle.replace("/usr/bin/cat", "/usr/bin/nc")
    third = _read_line("/usr/lib/libm.so.6", "10", "0000000003")
    bad = first[:100]  # no event: collapsing across it is fine
    fourth = _read_line("/usr/lib/libm.so.6", "10", "0000000004")
    log = tmp_path / "mid.log"
    log.write_text("\n".join([first, middle, third, bad, fourth]) + "\n")
    reader = ResultsReader(on_bad=lambda b: None)
    rows = list(reader.event_rows([str(log)], keep_read=lambda p: False))
    assert [(r.line, r.row["executable"]) for r in rows] == [
        (1, "/usr/bin/cat"),
        (2, "/usr/bin/nc"),
        (3, "/usr/bin/cat"),
    ]
    assert reader.stats.collapsed == 1 and reader.stats.bad_lines == 1


@pytest.mark.parametrize("name", FORMATS)
def test_fast_rows_are_full_parse_rows(name: str) -> None:
    """Without collapsing, the fast path yields exactly the rows that become events."""
    path = str(LOGS / name)
    slow = _events_of(list(ResultsReader(fast=False).event_rows([path])))
    fast = _events_of(list(ResultsReader(fast=True).event_rows([path])))
    assert fast == slow


def test_query_names_do_not_matter(tmp_path: Path) -> None:
    text = (LOGS / "events.log").read_text()
    for name in ("pack_readegress_file_reads", "pack_readegress_connects", "pack_x_y"):
        text = text.replace(f'"name":"{name}"', '"name":"pack_anything_else"')
    log = tmp_path / "renamed.log"
    log.write_text(text)
    ref = [_norm(r) for r in ResultsReader().event_rows([str(LOGS / "events.log")])]
    rows = list(ResultsReader().event_rows([str(log)]))
    assert [_norm(r) for r in rows] == ref
    assert {r.name for r in rows} == {"pack_anything_else"}


def test_host_partition_and_owner() -> None:
    path = str(LOGS / "events.log")
    web = ResultsReader(hosts=lambda h: h.startswith("web"), owns_unattributed=True)
    db = ResultsReader(hosts=lambda h: h.startswith("db"), owns_unattributed=False)
    a, b = list(web.event_rows([path])), list(db.event_rows([path]))
    assert {r.host for r in a} == {"web-01.example.com"} and {r.host for r in b} == {
        "db-01.example.com"
    }
    every = list(ResultsReader().event_rows([path]))
    assert sorted(r.line for r in a + b) == [r.line for r in every]
    assert web.stats.bad_lines == 4 and db.stats.bad_lines == 0 and db.stats.lines == 0
