"""The compiled results-log scanner (``_logscan.c``) against DuckDB, its reference.

The scanner splits a plain event line into fields itself and hands every
other line to DuckDB whole; the engine's tables must come out the same
either way, for every line DuckDB would read. These tests build the engine's
tables both ways (``DuckDBEngine(compiled=False)`` sends every line whole) on
realistic and hostile lines and compare them, and check the scanner alone on
random bytes.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fleet_logs import results_logs

from readegress import speedups
from readegress.fleet.duckdb_engine import DuckDBEngine, _Payloads, _Scanner
from readegress.fleet.pipeline import events_of_rows, feed_columns
from readegress.fleet.sql import PACKED, feed_select
from readegress.logs.lines import LineStats
from readegress.logs.results import BadLine

native = speedups.native
pytestmark = pytest.mark.skipif(
    native is None or not hasattr(native, "scan_results"),
    reason="readegress._speedups is not built (or READEGRESS_PURE is set): nothing to compare",
)

DECORATIONS = ("role", "hostname")

#: A scanned row's packed columns (PACKED: NULL in the tables) read from its payload
#: (``pay``: the engine's payloads as a table).
UNPACKED = ", ".join(
    f"COALESCE(c_{k}, NULLIF(string_split(p.payload, chr(31))[{i + 1}], chr(30))) AS c_{k}"
    for i, k in enumerate(PACKED)
)
#: Each table, with the kept JSON (keep, cols) last: the scanner keeps a row's JSON as the
#: log spells it, DuckDB as it re-serialises it, so it is compared parsed (_parsed); a
#: line whose rows are its arrays' keeps '' once its rows are out (DuckDB: the line).
TABLES = {
    "lines": f"SELECT r.* EXCLUDE (keep, pos) REPLACE ({UNPACKED}),"
    " CASE WHEN keep IS NOT NULL AND tbl IS NULL THEN '' ELSE keep END"
    " FROM lines r LEFT JOIN pay p ON p.pos = r.pos ORDER BY file, line",
    "arows": f"SELECT r.* EXCLUDE (keep, pos) REPLACE ({UNPACKED}), keep"
    " FROM arows r LEFT JOIN pay p ON p.pos = r.pos ORDER BY file, line, action, idx",
    "bad": "SELECT * FROM bad ORDER BY file, line",
    "proj": "SELECT * FROM proj ORDER BY file, line, idx",
    "hostinfo": "SELECT host, row_count, event_rows, list_sort(run_times), d_0, d_1"
    " FROM hostinfo ORDER BY host",
}
KEPT_LAST = ("lines", "arows", "proj")


def _parsed(text: Any) -> Any:
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except (TypeError, ValueError):
        return text


def _tables(path: Path, compiled: bool) -> tuple[dict[str, list[Any]], list[str], LineStats]:
    engine = DuckDBEngine(compiled=compiled)
    bad: list[BadLine] = []
    stats = LineStats()
    try:
        engine.load([str(path)], bad.append, stats, decoration_keys=DECORATIONS)
        import pyarrow as pa

        engine.con.register("pay", (engine.payloads or _Payloads()).table(pa))
        got = {k: engine.fetch(q) for k, q in TABLES.items()}
        for k in KEPT_LAST:
            got[k] = [(*r[:-1], _parsed(r[-1])) for r in got[k]]
        # Every event row as the feed reads it (a scanned row's packed columns from its
        # payload) and the one row converter makes it an event, and the rows it refuses.
        rows = engine.fetch(feed_select(feed_columns(engine), narrowed=False))
        errors: list[BadLine] = []
        events = events_of_rows(rows, [str(path)], errors.append, engine.payloads)[0]
        got["events"] = [events, errors]
        return got, [str(b) for b in bad], stats
    finally:
        engine.close()


def _assert_same(path: Path) -> None:
    fast, fast_bad, fast_stats = _tables(path, True)
    whole, whole_bad, whole_stats = _tables(path, False)
    for name in [*TABLES, "events"]:
        assert fast[name] == whole[name], name
    assert fast_bad == whole_bad
    assert fast_stats == whole_stats


# ----- hostile variants of real lines ------------------------------------------

HOSTILE_VALUES: list[Any] = [
    "", " 12", "a\"b", "back\\slash", "tab\there", "new\nline", "sl/ash", "caf\u00e9",
    "\u2028", "\U0001f600", "\u0000", "-0", "true", "[1]", "{\"a\":1}",
    0, -0, 7, -12, 123456789012345678, 1234567890123456789, 12345678901234567890,
    1.5, 1.50, -0.0, 1e5, 2.5e-3, True, False, None, [1, "x"], {"k": "v"}, [], {},
    # the words and numbers the event fields are computed from (derive_row)
    "open", "read", "connect", "succeeded", "in_progress", "failed", "1", "True", "2", "10",
    "execve", "execveat", "fork", "clone3", "0123", "123456789012345", "1234567890123456",
]  # fmt: skip
RAW_NUMBERS = (
    "-0", "-0.0", "0.10", "1E2", "1e+2", "-1e-0", "00", "123456789012345678901234",
    "-9223372036854775809", "18446744073709551616", "9223372036854775807",
    "999999999999999999", "-999999999999999999", "1.7976931348623157e309",
)  # fmt: skip
WANTED = (
    "pid", "time", "ppid", "parent", "path", "operation", "action", "remote_address",
    "remote_port", "status", "success", "family", "syscall", "cmdline", "executable", "uid",
    "auid", "protocol", "id", "sensitive_class", "reasons", "name", "detail", "fix",
    "cookie", "bytes_acked", "open_sockets", "total_bytes_sent", "score",
)  # fmt: skip
TOP = ("hostIdentifier", "hostname", "name", "unixTime", "action", "role", "columns",
       "decorations", "snapshot", "diffResults")  # fmt: skip


def _dump(obj: Any, rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return json.dumps(obj, separators=(",", ":"))
    if style == 1:
        return json.dumps(obj)  # ", " and ": ", \\u escapes for non-ASCII
    if style == 2:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(obj, indent=None, separators=(" , ", " : "))


def _mutate(line: str, rng: random.Random) -> str:
    """One line of osquery's shape, changed the way a broken or odd writer would."""
    obj = json.loads(line)
    what = rng.randrange(15)
    cols = obj.get("columns")
    arrays = [
        a
        for a in (obj.get("snapshot"), *(obj.get("diffResults") or {}).values())
        if isinstance(a, list) and a
    ]
    if what == 0 and isinstance(cols, dict):
        cols[rng.choice(WANTED)] = rng.choice(HOSTILE_VALUES)
    elif what == 1:
        obj[rng.choice(TOP)] = rng.choice(HOSTILE_VALUES)
    elif what == 2 and isinstance(obj.get("decorations"), dict):
        obj["decorations"][rng.choice(DECORATIONS)] = rng.choice(HOSTILE_VALUES)
    elif what == 3 and isinstance(cols, dict):
        # A project table's row: its columns' JSON is kept, so the line goes whole.
        cols.update({"id": "x1", "sensitive_class": "ssh_keys", "reasons": "r"})
    elif what == 4:
        obj["role"] = rng.choice(["top", None, 3])  # a decoration at the top level too
    elif what == 12 and arrays:  # a hostile value in a row of an array
        row = rng.choice(rng.choice(arrays))
        if isinstance(row, dict):
            row[rng.choice(WANTED)] = rng.choice(HOSTILE_VALUES)
    elif what == 13 and arrays:  # a row that is not an object, or a project table's
        rows = rng.choice(arrays)
        i = rng.randrange(len(rows))
        if rng.randrange(2) and isinstance(rows[i], dict):
            rows[i].update({"cookie": "7", "bytes_acked": 12})
        else:
            rows[i] = rng.choice(HOSTILE_VALUES)
    elif what == 14:  # row containers of the wrong type, or both kinds
        key = rng.choice(["diffResults", "snapshot"])
        if key == "diffResults" and isinstance(obj.get(key), dict) and rng.randrange(2):
            obj[key][rng.choice(["added", "removed"])] = rng.choice(HOSTILE_VALUES)
        else:
            obj[key] = rng.choice([*HOSTILE_VALUES, [{"pid": "9", "path": "/x"}]])
    text = _dump(obj, rng)
    if what == 5:  # a wanted key twice: DuckDB takes the first
        key = rng.choice(["pid", "path", "hostIdentifier", "role", "columns"])
        text = text[:-1] + f',"{key}":"dup"}}'
    elif what == 6:  # cut short
        text = text[: rng.randrange(len(text))]
    elif what == 7:  # an escaped key that means a wanted one
        text = text.replace('"pid"', '"p\\u0069d"', 1).replace('"path"', '"pa\\/th"', 1)
    elif what == 8:  # whitespace around, CRLF
        text = rng.choice([" ", "\t", ""]) + text + rng.choice(["\r", " ", "\t\r", ""])
    elif what == 9:  # trailing garbage or comma
        text = text + rng.choice(["x", ",", "}", " {}", "\x00"])
    elif what == 10:  # a NUL or control byte inside a string
        i = text.find('"path":"')
        if i >= 0:
            text = text[: i + 8] + rng.choice(["\x00", "\x01", "\x1f"]) + text[i + 8 :]
    elif what == 11:  # an escape the scanner does not take (\u) or a bad one (\x)
        text = text.replace("/etc/", rng.choice(["\\u002fetc/", "\\x2fetc/", "\\/etc\\/"]), 1)
    return text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=results_logs(), seed=st.integers(0, 2**32 - 1), share=st.sampled_from([0, 1, 2, 3]))
def test_tables_are_the_same_scanned_or_parsed_whole(
    log: str, seed: int, share: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    rng = random.Random(seed)
    lines = [
        _mutate(line, rng) if share and rng.randrange(share + 1) else line
        for line in log.splitlines()
    ]
    path = tmp_path_factory.mktemp("scan") / "log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _assert_same(path)


#: A row of each event table (the scanner computes their event fields): a read, a
#: connect, an exec, a fork, a connect with success and no status.
EVENT_COLUMNS = (
    {"operation": "open", "pid": "10", "ppid": "1", "time": "1700000000",
     "path": "/etc/shadow", "executable": "/usr/bin/cat", "uid": "0"},
    {"action": "connect", "status": "succeeded", "family": "2", "remote_address": "10.0.0.1",
     "remote_port": "443", "pid": "10", "time": "1700000000", "path": "/usr/bin/curl",
     "auid": "1000", "protocol": "6", "success": "1"},
    {"syscall": "execve", "pid": "10", "parent": "1", "time": "1700000000",
     "path": "/usr/bin/curl", "cmdline": "curl x", "uid": "0", "auid": "1000"},
    {"syscall": "clone", "pid": "11", "parent": "10", "time": "1700000001",
     "path": "/usr/bin/bash", "cmdline": "", "uid": "0"},
    {"action": "connect", "success": "1", "remote_address": "::1", "remote_port": "22",
     "pid": "10", "time": "1700000000", "path": "/usr/bin/ssh"},
)  # fmt: skip


def test_every_hostile_value_in_every_wanted_field(tmp_path: Path) -> None:
    """Each hostile value in each wanted key of a row of each event table, one line each."""
    lines = []
    for columns in EVENT_COLUMNS:
        base = {
            "name": "pack_events", "hostIdentifier": "h1", "unixTime": 1700000000,
            "decorations": {"role": "web"}, "action": "added", "columns": columns,
        }  # fmt: skip
        lines.append(json.dumps(base))
        for value in HOSTILE_VALUES:
            for n, key in enumerate(WANTED):
                obj = json.loads(json.dumps(base))
                obj["columns"][key] = value
                lines.append(json.dumps(obj, separators=(",", ":")))
                # the same row in a batch line, then in a snapshot line
                row = obj.pop("columns")
                if n % 2:
                    obj["diffResults"] = {"added": [columns, row], "removed": [row]}
                else:
                    obj["snapshot"] = [row, columns]
                lines.append(json.dumps(obj, separators=(",", ":")))
            for key in (*WANTED, "status", "success"):
                obj = json.loads(json.dumps(base))
                obj["columns"].pop(key, None)  # a field left out
                lines.append(json.dumps(obj, separators=(",", ":")))
    base = json.loads(lines[0])
    for value in HOSTILE_VALUES:
        for key in TOP:
            obj = json.loads(json.dumps(base))
            obj[key] = value
            lines.append(json.dumps(obj))
    # A key twice (DuckDB takes the first; the scanner leaves such a line whole).
    for key in ("hostIdentifier", "name", "unixTime", "role", "decorations", "columns"):
        lines.append(lines[0][:-1] + f', "{key}": "dup"}}')
    for key in ("pid", "path", "time", "id"):
        lines.append(lines[0].replace('"columns": {', f'"columns": {{"{key}": "dup", ', 1))
    lines.append(lines[0].replace('"decorations": {', '"decorations": {"role": "x", ', 1))
    # Number spellings json.dumps never writes, which DuckDB prints its own way.
    for raw in RAW_NUMBERS:
        lines.append(lines[0].replace('"pid": "10"', f'"pid": {raw}'))
        lines.append(lines[0].replace('"unixTime": 1700000000', f'"unixTime": {raw}'))
    path = tmp_path / "log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _assert_same(path)


def test_every_table_and_kind_each_way(tmp_path: Path) -> None:
    """A row of each project table and of each event kind, as an event line, in a batch
    line and in a snapshot: ``tbl`` and ``kind`` (derive_row's, derived_sql's) are the same
    both ways and are the right names."""
    from readegress.fleet.sql import PROJECT_GROUPS, PROJECT_TABLES

    rows = [dict.fromkeys(group, "1") for group in PROJECT_GROUPS]
    rows += [dict(c) for c in EVENT_COLUMNS]
    rows.append({**EVENT_COLUMNS[2], "syscall": "vfork"})
    rows.append({**EVENT_COLUMNS[0], "operation": "write"})  # a file row of no kind
    lines = []
    for row in rows:
        top = {"hostIdentifier": "h1", "unixTime": 1700000000}
        lines.append(json.dumps({**top, "action": "added", "columns": row}))
        lines.append(json.dumps({**top, "diffResults": {"added": [row], "removed": []}}))
        lines.append(json.dumps({**top, "action": "snapshot", "snapshot": [row]}))
    path = tmp_path / "log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _assert_same(path)
    fast, slow, _ = _scan(path.read_bytes())
    assert not slow and len(fast) == 5 * len(rows)  # each line scanned (3 rows: + 2 lines)
    engine = DuckDBEngine()
    try:
        engine.load([str(path)], lambda b: None, LineStats(), decoration_keys=DECORATIONS)
        got = engine.fetch("SELECT tbl, kind, count(*) FROM rows GROUP BY ALL ORDER BY ALL")
    finally:
        engine.close()
    want = {(t, None, 3) for t in PROJECT_TABLES}
    want |= {("file", "read", 3), ("file", None, 3), ("socket", "conn", 6)}
    want |= {("process", "exec", 3), ("process", "fork", 6)}
    assert set(got) == want


#: Bytes that do or do not end a run of plain string bytes, as JSON text: the escapes,
#: raw control bytes (not JSON), the bytes either side of the control range, non-ASCII.
STRING_STOPS = ('\\"', "\\\\", "\\u00e9", "\\n", "\x01", "\x1f", "\t", " ", "\x7f", "\u00e9")


def test_every_string_stop_at_every_offset(tmp_path: Path) -> None:
    """The scanner reads strings 16 bytes a step (SSE2): a stop byte at each offset of a
    wanted and an unwanted value, and at the line's end, reads as DuckDB reads it."""
    base = (
        '{"hostIdentifier":"h1","calendarTime":"CAL","unixTime":1700000000,'
        '"action":"added","columns":{"pid":"10","time":"1700000000",'
        '"operation":"open","path":"PATH"}}'
    )
    lines = []
    for stop in STRING_STOPS:
        for at in range(40):
            value = "a" * at + stop + "b" * (at % 7)
            lines.append(base.replace("PATH", value).replace("CAL", "x"))
            lines.append(base.replace("PATH", "/etc/hosts").replace("CAL", value))
            # the stop the last byte of the line's last string, nothing after it
            lines.append(
                base.replace("CAL", "x").replace("PATH", "/")[:-2] + ',"z":"' + value + '"}}'
            )
    path = tmp_path / "log"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    _assert_same(path)
    fast, slow, _ = _scan(path.read_bytes())
    assert len(fast) > len(lines) // 2 and slow  # most scanned, the invalid ones whole


# ----- the scanner alone ---------------------------------------------------------


def _scanner() -> _Scanner:
    import pyarrow as pa

    return _Scanner(pa, DECORATIONS, native)


def _scan(data: bytes, first: int = 1) -> tuple[list[int], list[int], list[bytes]]:
    """(fast line numbers, slow line numbers, slow lines)."""
    s = _scanner()
    assert native is not None
    n_fast, fast, _fields, n_slow, slow, offsets, text, _derived = native.scan_results(
        data, first, s.paths, s.groups, 0, s.derive
    )
    offs = struct.unpack(f"<{n_slow + 1}q", offsets)
    return (
        list(struct.unpack(f"<{n_fast}q", fast)),
        list(struct.unpack(f"<{n_slow}q", slow)),
        [text[offs[i] : offs[i + 1]] for i in range(n_slow)],
    )


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 70_000)), max_size=4))
def test_positions_are_chunk_shifted_plus_row(chunks: list[tuple[int, int]]) -> None:
    """A batch's ``pos`` column (bytes written into a copy of 0 .. n - 1, the table grown
    past 65,536 rows) is chunk << 32 plus the row, as int64s: the payloads are found by it."""
    from array import array

    import pyarrow as pa

    scanner = _Scanner(pa, DECORATIONS, native)
    for chunk, n in chunks:
        got = array("q", bytes(scanner._positions(chunk, n)))
        assert got == array("q", range(chunk << 32, (chunk << 32) + n))


def test_plain_osquery_lines_are_scanned_and_the_rest_go_whole() -> None:
    """The fast path is taken where it should be (else the speed-up silently vanishes)."""
    event = (
        '{"name":"pack_readegress_file_events","hostIdentifier":"web-00","calendarTime":"x",'
        '"unixTime":1764300001,"epoch":0,"counter":3,"numerics":false,'
        '"decorations":{"host_uuid":"4c4c","hostname":"web-00"},'
        '"columns":{"auid":"0","operation":"open","path":"/etc/hosts","pid":"2",'
        '"time":"1764300001","cmdline":"a \\"b\\" c\\\\d"},"action":"added"}'
    )
    numerics = event.replace('"pid":"2"', '"pid":2').replace('"auid":"0"', '"auid":-5')
    lines = [
        event,  # 10 fast
        numerics,  # 11 fast
        "",  # 12 blank: neither
        '{"snapshot":[{"a":"1"}],"hostIdentifier":"h","action":"snapshot"}',  # 13 fast: 2 rows
        event.replace('"pid":"2"', '"pid":1.5'),  # 14 slow: a float in a wanted field
        event.replace('"epoch":0', '"epoch":1.5e3'),  # 15 fast: a float elsewhere
        event.replace('"hostIdentifier":"web-00"', '"hostIdentifier":""'),  # 16 slow
        event[:-1],  # 17 slow: cut short
        event.replace('"path":"/etc/hosts"', '"path":"\\u0041"'),  # 18 slow: \u in a field
        event.replace('"calendarTime":"x"', '"calendarTime":"\\u0041"'),  # 19 fast
        "   ",  # 20 slow (DuckDB skips it as blank)
        # 21 fast: a project table's row (its columns' JSON kept)
        event.replace('"columns":{', '"columns":{"id":"1","sensitive_class":"c","reasons":"r",'),
        event.replace('"action":"added"', '"action":"changed"'),  # 22 slow: DuckDB reports it
        event.replace('"action":"added"', '"action":"snapshot"'),  # 23 fast
        # 24 fast, 3 rows (the snapshot is not read when there is a diffResults)
        '{"hostIdentifier":"h","diffResults":{"added":[{"pid":"1"}],"removed":[{"pid":"2"}]},'
        '"snapshot":[{"pid":"3"}]}',
        '{"hostIdentifier":"h","snapshot":[{"pid":"1"},2]}',  # 25 slow: a row not an object
        '{"hostIdentifier":"h","diffResults":null}',  # 26 slow: DuckDB reports it
        '{"hostIdentifier":"h","diffResults":{"added":[{"pid":{"x":1}}]}}',  # 27 slow: nested
        '{"hostIdentifier":"h","name":"q"}',  # 28 slow: no rows
        event.replace('"calendarTime":"x"', '"calendarTime":"\\ud800"'),  # 29 slow: lone surrogate
        event.replace('"calendarTime":"x"', '"calendarTime":"\\ud83d\\ude00"'),  # 30 fast
    ]
    fast, slow, text = _scan("\n".join(lines).encode(), first=10)
    assert fast == [10, 11, 13, 13, 15, 19, 21, 23, 24, 24, 24, 30]
    assert slow == [14, 16, 17, 18, 20, 22, 25, 26, 27, 28, 29]
    assert text[0].startswith(b"{") and text[-1].startswith(b"{")


def test_fields_are_json_extract_strings() -> None:
    import duckdb

    s = _scanner()
    line = (
        '{"hostIdentifier":"h\\"1","name":"q","unixTime":17,"action":"added",'
        '"decorations":{"role":"w\\/eb","hostname":null},"role":true,'
        '"columns":{"pid":-3,"path":"/a\\tb","success":false,"cmdline":"x\\\\y\\n"}}'
    )
    assert native is not None
    n_fast, _, fields, _, _, _, _, derived = native.scan_results(
        line.encode(), 1, s.paths, s.groups, 0, s.derive
    )
    assert n_fast == 1
    _, payload_data = derived[-1]  # the packed columns, in PACKED's order
    packed = payload_data.decode().split("\x1f")
    assert len(packed) == len(PACKED)
    con = duckdb.connect()
    for (scope, key, output), j in zip(s.paths, s.field_of):
        got: Optional[str] = None
        if output == 2:
            value = packed[PACKED.index(key.decode())]
            got = None if value == "\x1e" else value
        elif output == 1:
            assert j is not None
            validity, offsets, data = fields[j]
            if validity and validity[0] & 1:
                start, end = struct.unpack("<2i", offsets)
                got = data[start:end].decode()
        else:
            continue
        prefix = {0: "$", 1: "$.decorations", 2: "$.columns"}[scope]
        want = con.execute(
            "SELECT json_extract_string(?, ?)", [line, prefix + "." + key.decode()]
        ).fetchone()
        assert want is not None and got == want[0], key


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(
        st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))
        | st.sampled_from(
            [b"{", b'{"columns":{', b'{"hostIdentifier":"h","columns":{"pid":"1"}}', b"[" * 300,
             b'{"a":' * 200, b'{"columns":{"pid":"\\', b'{"columns":{"pid":1e', b'"\\u12',
             b'{"hostIdentifier":"h","snapshot":[{"pid":"1"},', b'{"snapshot":[{', b'"\\ud800"',
             b'{"hostIdentifier":"h","diffResults":{"added":[{"pid":"1","path":"/x"}],"removed":[',
             b'{"hostIdentifier":"h","snapshot":[{"cookie":"1","bytes_acked":2}]}', b"]}", b"}]"]
        ),
        max_size=12,
    ),
    first=st.integers(0, 2**40),
)  # fmt: skip
def test_random_bytes_never_crash_and_every_line_comes_out(lines: list[bytes], first: int) -> None:
    data = b"\n".join(lines)
    fast, slow, text = _scan(data, first)
    numbered = [(first + i, line) for i, line in enumerate(data.split(b"\n")) if line]
    # a line is fast (a row, or one for itself and one for each element of its
    # arrays) or slow (once), never both
    assert not set(fast) & set(slow) and len(set(slow)) == len(slow)
    assert sorted(set(fast) | set(slow)) == [n for n, _ in numbered]
    whole = dict(numbered)
    assert text == [whole[n] for n in slow]


def test_bad_arguments_raise() -> None:
    assert native is not None
    with pytest.raises(TypeError):
        native.scan_results("text", 1, ((0, b"a", True),), (), 0)
    with pytest.raises(ValueError):
        native.scan_results(b"", 1, (), (), 0)
    with pytest.raises(ValueError):
        native.scan_results(b"", 1, ((3, b"a", True),), (), 0)
    with pytest.raises(ValueError):
        native.scan_results(b"", 1, ((0, b"a", True),), ((5,),), 0)
    with pytest.raises(ValueError):
        native.scan_results(b"", 1, ((2, b"a", True),), (), 0)  # host not top level
    with pytest.raises(TypeError):
        native.scan_results(b"", 1, ((0, "a", True),), (), 0)
    s = _scanner()
    inputs, tables = s.derive
    for derive in (
        (inputs[:-1], tables),  # 15 indices
        ((inputs[1], *inputs[1:]), tables),  # the first one top level
        ((0, *(999,) * 14), tables),  # in range
        (inputs, tables[:-1]),  # a table for each group
        (inputs,),
    ):
        with pytest.raises(ValueError):
            native.scan_results(b"", 1, s.paths, s.groups, 0, derive)
    with pytest.raises(TypeError):
        native.scan_results(b"", 1, s.paths, s.groups, 0, (inputs, ("t",) * len(tables)))


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=200) | st.sampled_from([b"\n" * 100, b"", b"a\nb"]),
    start=st.integers(0, 220),
    end=st.integers(0, 220),
)
def test_count_newlines_is_bytes_count(data: bytes, start: int, end: int) -> None:
    assert native is not None
    assert native.count_newlines(data, start, end) == data.count(b"\n", start, end)
    assert native.count_newlines(memoryview(data), start, end) == data.count(b"\n", start, end)


def test_long_lines_scanned_or_set_apart_read_the_same(tmp_path: Path) -> None:
    """Lines over BIG_LINE among short ones: the scanner reads the ones it can (a long
    command line, a long batch line) and sets the others apart, DuckDB parses those apart
    (a bracket bomb, a float pid); the tables are those of every line parsed whole."""
    from readegress.fleet.duckdb_engine import BIG_LINE

    base = {"name": "q", "hostIdentifier": "h1", "unixTime": 1700000000, "action": "added",
            "columns": {"operation": "open", "pid": "10", "time": "1700000000",
                        "path": "/etc/shadow", "executable": "/usr/bin/cat"}}  # fmt: skip
    lines = []
    for i in range(30):
        row = dict(base["columns"], pid=str(100 + i))
        lines.append(json.dumps(dict(base, columns=row)))
        lines.append("[" * (BIG_LINE + 10 + i))  # long, not JSON
        lines.append('{"x": 1.5}')  # short, no host
        lines.append(json.dumps(dict(base, columns=dict(row, cmdline="a" * BIG_LINE))))
        lines.append(json.dumps(dict(base, columns=dict(row, cmdline="a" * BIG_LINE, pid="1.5"))))
        batch = {k: v for k, v in base.items() if k != "columns"}
        lines.append(json.dumps(dict(batch, diffResults={"added": [row] * 200, "removed": []})))
    path = tmp_path / "log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert all(len(line) > BIG_LINE for line in lines[1::6] + lines[3::6] + lines[5::6])
    _assert_same(path)
