"""The engines' narrowing loses no detection: narrowed == every event == the per-row reader.

On random multi-host logs (tests/fleet_logs.py): the DuckDB engine's narrowed
feed, its full feed (every event row) and the per-row path (the results
reader, ``event_from_row``, each host's events sorted and fed to a Correlator
of its own) give the same detections, field for field, in the same order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from readegress.detect.config import Config, load_config
from readegress.detect.core import Detection
from readegress.net.classify import DestinationClass

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from fleet_logs import results_logs
from readegress.fleet.pipeline import correlate_events, reference_events
from readegress.fleet.run import run

FIXTURES = Path(__file__).parent / "fixtures" / "logs"


def _configs() -> list[Config]:
    base = load_config()
    loose = dataclasses.replace(
        base,
        approved=(),
        egress_classes=base.egress_classes | {DestinationClass.PRIVATE},
        window_seconds=60.0,
    )
    return [base, loose]


CONFIGS = _configs()


def _check(path: str, config: Config) -> int:
    bad_narrow: list[str] = []
    bad_full: list[str] = []
    narrowed = run([path], config, lambda b: bad_narrow.append(str(b)), progress=False)
    full = run([path], config, lambda b: bad_full.append(str(b)), narrowed=False, progress=False)
    reference = correlate_events(config, reference_events([path]))
    assert full.correlated.candidates == reference
    assert narrowed.correlated.candidates == reference
    assert sorted(bad_narrow) == sorted(bad_full)
    return len(reference)


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "loose"])
def test_fixtures_narrowed_equals_full(config: Config) -> None:
    found = 0
    for p in sorted(FIXTURES.glob("*.log")):
        found += _check(str(p), config)
    assert found > 0


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(log=results_logs())
def test_random_logs_narrowed_equals_full(
    log: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("log") / "r.log"
    path.write_text(log)
    for config in CONFIGS:
        _check(str(path), config)


def test_narrowing_narrows_the_generated_fleet(tmp_path: Path) -> None:
    """On a fleet-like log most rows are not fed, and the detections are the same."""
    from bench.fleet_log import write

    path = tmp_path / "fleet.log"
    info = write(str(path), 3_000_000, hosts=6, rare_chains=2)
    config = CONFIGS[0]
    narrowed = run([str(path)], config, lambda b: None, progress=False)
    full = run([str(path)], config, lambda b: None, narrowed=False, progress=False)
    assert narrowed.correlated.candidates == full.correlated.candidates
    assert narrowed.correlated.events < full.correlated.events * 0.6
    found = {
        (d.host, d.pid, d.path, d.remote_address)
        for d in narrowed.correlated.candidates
        if d.score >= config.threshold
    }
    assert set(info.chains) <= found


T = 1_700_000_000


def _log(tmp_path: Path, rows: list[dict[str, object]]) -> str:
    import json

    path = tmp_path / "hand.log"
    lines = [
        json.dumps(
            {"name": "q", "hostIdentifier": "h1", "unixTime": T, "columns": r, "action": "added"}
        )
        for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _read(pid: int, ppid: int, t: int, exe: str, path: str) -> dict[str, object]:
    return {"operation": "open", "pid": str(pid), "ppid": str(ppid), "time": str(t),
            "executable": exe, "path": path, "uid": "0", "auid": "0"}  # fmt: skip


def _conn(pid: int, t: int, exe: str) -> dict[str, object]:
    return {"action": "connect", "pid": str(pid), "path": exe, "auid": "0", "family": "2",
            "remote_address": "45.33.32.156", "remote_port": "443", "time": str(t),
            "success": "1", "status": "succeeded"}  # fmt: skip


def _proc(pid: int, parent: int, t: int, exe: str, syscall: str) -> dict[str, object]:
    return {"pid": str(pid), "parent": str(parent), "path": exe, "cmdline": exe, "uid": "0",
            "auid": "0", "time": str(t), "syscall": syscall}  # fmt: skip


def test_a_non_catalogue_read_that_changes_the_image_is_kept(tmp_path: Path) -> None:
    """bash, then tar (seen only through a library read), then bash reads shadow, curl sends."""
    path = _log(tmp_path, [
        _read(100, 50, T, "/usr/bin/bash", "/usr/lib/libc.so.6"),
        _read(100, 50, T + 1, "/usr/bin/tar", "/usr/lib/libc.so.6"),
        _read(100, 50, T + 1, "/usr/bin/tar", "/usr/lib/libz.so.1"),  # same observation: dropped
        _read(100, 50, T + 2, "/usr/bin/bash", "/etc/shadow"),
        _conn(100, T + 3, "/usr/bin/curl"),
    ])  # fmt: skip
    config = CONFIGS[0]
    narrowed = run([path], config, lambda b: None, progress=False)
    assert narrowed.correlated.events == 4
    (d,) = narrowed.correlated.candidates
    assert d.executables == ("/usr/bin/bash", "/usr/bin/tar", "/usr/bin/curl")
    assert "encoder_in_chain" in d.reasons
    _check(path, config)


def test_a_row_naming_what_its_process_lacked_is_kept_one_naming_nothing_new_is_not(
    tmp_path: Path,
) -> None:
    """curl's first rows are connects (osquery's socket rows carry no uid): the read that
    then names its uid makes the 'user' relation to another process's shadow read. A
    later read that leaves the uid out changes nothing, and is not fed."""
    unset = "4294967295"
    path = _log(tmp_path, [
        dict(_read(300, 60, T, "/usr/bin/cat", "/etc/shadow"), uid="1000", auid=unset),
        dict(_conn(400, T - 100, "/usr/bin/curl"), auid=unset),
        {"operation": "open", "pid": "400", "time": str(T + 1), "executable": "/usr/bin/curl",
         "path": "/etc/hosts", "uid": "1000", "auid": unset},
        {"operation": "open", "pid": "400", "time": str(T + 1), "executable": "/usr/bin/curl",
         "path": "/etc/resolv.conf", "uid": "", "auid": unset},  # nothing new: dropped
        dict(_conn(400, T + 2, "/usr/bin/curl"), auid=unset),
    ])  # fmt: skip
    config = CONFIGS[0]
    narrowed = run([path], config, lambda b: None, progress=False)
    (d,) = narrowed.correlated.candidates
    assert d.scope == "user" and d.pid == 400 and d.reader_pid == 300
    assert narrowed.correlated.events == 4
    _check(path, config)


_SENDER_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["conn", "read", "read", "exec"]),
        st.integers(-3, 8),  # seconds after the shadow read
        st.sampled_from([None, "", "60", "61"]),  # parent
        st.sampled_from([None, "", "1000", "1001"]),  # uid
        st.sampled_from([None, "", "1000", "4294967295"]),  # auid
        st.sampled_from(["", "/usr/bin/curl", "/usr/bin/tar"]),  # image
    ),
    min_size=1,
    max_size=7,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=_SENDER_EVENTS,
    reader_auid=st.sampled_from(["1000", "4294967295"]),
    sender_auid=st.sampled_from([None, "4294967295"]),
)
def test_observations_of_one_sender_narrowed_equal_full(
    events: list[tuple[str, int, Optional[str], Optional[str], Optional[str], str]],
    reader_auid: str,
    sender_auid: Optional[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A reader of /etc/shadow and one other process that sends: the sender's rows name its
    parent, uid, auid and image or leave them out, in any order. Whatever the narrowing
    drops of them, the detections are those of every row (random logs rarely make a
    detection hang on one such field: the relation to the reader does here)."""
    rows: list[dict[str, object]] = [
        dict(_read(300, 60, T, "/usr/bin/cat", "/etc/shadow"), uid="1000", auid=reader_auid)
    ]
    for kind, dt, parent, uid, auid, exe in events:
        if kind == "conn":
            row: dict[str, object] = dict(_conn(400, T + dt, exe))
            del row["auid"]
        elif kind == "read":
            row = {"operation": "open", "pid": "400", "time": str(T + dt), "executable": exe,
                   "path": "/etc/hosts"}  # fmt: skip
            if parent is not None:
                row["ppid"] = parent
        else:
            row = {"pid": "400", "path": exe, "cmdline": exe, "time": str(T + dt),
                   "syscall": "execve", "parent": parent if parent is not None else ""}  # fmt: skip
        for key, value in (("uid", uid), ("auid", auid)):
            if value is not None and not (kind == "conn" and key == "uid"):
                row[key] = value
        rows.append(row)
    last = dict(_conn(400, T + 9, "/usr/bin/curl"))
    del last["auid"]
    if sender_auid is not None:
        last["auid"] = sender_auid
    rows.append(last)
    path = _log(tmp_path_factory.mktemp("obs"), rows)
    for config in CONFIGS:
        _check(path, config)


def _the_detection(path: Path, fed: int) -> Detection:
    """The one candidate of the narrowed run of ``path`` (CONFIGS[0]), which fed ``fed``
    events, and the same as with every row (_check)."""
    narrowed = run([path], CONFIGS[0], lambda b: None, progress=False)
    (d,) = narrowed.correlated.candidates
    assert narrowed.correlated.events == fed
    _check(path, CONFIGS[0])
    return d


def test_a_pipeline_sibling_that_only_execs_is_kept(tmp_path: Path) -> None:
    """cat shadow | tar | curl: tar neither reads nor sends, yet makes the encoder reason."""
    path = _log(tmp_path, [
        _proc(101, 50, T, "/usr/bin/bash", "fork"),
        _proc(102, 50, T, "/usr/bin/bash", "fork"),
        _proc(103, 50, T + 1, "/usr/bin/bash", "fork"),
        _proc(102, 50, T, "/usr/bin/tar", "execve"),
        _proc(104, 50, T + 30, "/usr/bin/bash", "fork"),  # a later child: no pipeline
        _proc(104, 50, T + 30, "/usr/bin/gzip", "execve"),
        _read(101, 50, T + 1, "/usr/bin/cat", "/etc/shadow"),
        _conn(103, T + 2, "/usr/bin/curl"),
    ])  # fmt: skip
    d = _the_detection(path, fed=6)  # pid 104 is not fed
    assert d.scope == "pipeline" and "encoder_in_chain" in d.reasons


def test_pipeline_members_a_second_either_side_of_the_reader_are_kept(tmp_path: Path) -> None:
    """cat exec'd at T+1 reads shadow, curl (exec'd with it) sends: base64 exec'd a second
    before cat and age a second after are the chain's members (their rows fall in no second
    of cat's); tar, 2 s after, is not, and is not fed."""
    path = _log(tmp_path, [
        _proc(102, 50, T - 2, "/usr/bin/bash", "fork"),
        _proc(103, 50, T - 3, "/usr/bin/bash", "fork"),
        _proc(104, 50, T - 3, "/usr/bin/bash", "fork"),
        _proc(102, 50, T, "/usr/bin/base64", "execve"),
        _proc(101, 50, T + 1, "/usr/bin/bash", "fork"),
        _proc(105, 50, T + 1, "/usr/bin/bash", "fork"),
        _proc(101, 50, T + 1, "/usr/bin/cat", "execve"),
        _proc(105, 50, T + 1, "/usr/bin/curl", "execve"),
        _proc(103, 50, T + 2, "/usr/bin/age", "execve"),
        _read(101, 50, T + 2, "/usr/bin/cat", "/etc/shadow"),
        _proc(104, 50, T + 3, "/usr/bin/tar", "execve"),
        _conn(105, T + 3, "/usr/bin/curl"),
    ])  # fmt: skip
    d = _the_detection(path, fed=10)  # tar's fork and exec are not fed
    assert d.scope == "pipeline"
    assert "encoder_in_chain" in d.reasons and "encryptor_in_chain" in d.reasons


def test_rows_of_one_batch_line_are_told_apart(tmp_path: Path) -> None:
    """A batch line's rows are numbered 1.. in the line: keeping its second row (a reader's
    read) must not bring in its first (an unrelated fork). Found by the Spark parity test:
    DuckDB numbered every row of a line 0, so both were fed."""
    head = '{"name":"p","hostIdentifier":"h1","unixTime":1700000500,"decorations":{},'
    lines = [
        head + '"columns":{"operation":"open","pid":104,"ppid":1,"time":1700000069,'
        '"executable":"/usr/bin/nc","path":"/etc/shadow","uid":1001,"auid":1001},'
        '"action":"added"}',
        head + '"diffResults":{"added":[{"pid":"106","parent":"51","path":"/usr/bin/bash",'
        '"cmdline":"bash x","uid":"1000","auid":"1000","time":"1700000105","syscall":"vfork"},'
        '{"operation":"read","pid":"100","ppid":"50","time":"1700000058",'
        '"executable":"/usr/bin/curl","path":"/etc/group","uid":"1000","auid":"1000"}],'
        '"removed":[]}}',
    ]
    path = tmp_path / "batch.log"
    path.write_text("\n".join(lines) + "\n")
    narrowed = run([str(path)], CONFIGS[0], lambda b: None, progress=False)
    assert narrowed.correlated.events == 2  # nc's shadow read and curl's group read
    _check(str(path), CONFIGS[0])


def test_a_udp_connect_keeps_its_protocol(tmp_path: Path) -> None:
    """UDP to an uncommon port is not raw TCP: no uncommon_port (the engines read protocol)."""
    rows = [_read(100, 50, T, "/usr/bin/bash", "/etc/shadow")]
    for port, protocol in ((4444, "17"), (4445, "6"), (4446, "0")):
        conn = _conn(100, T + 1, "/usr/bin/bash")
        conn["remote_port"], conn["protocol"] = str(port), protocol
        rows.append(conn)
    path = _log(tmp_path, rows)
    narrowed = run([path], CONFIGS[1], lambda b: None, progress=False)
    reasons = {d.remote_port: d.reasons for d in narrowed.correlated.candidates}
    assert "uncommon_port" not in reasons[4444]
    assert "uncommon_port" in reasons[4445] and "uncommon_port" in reasons[4446]
    _check(path, CONFIGS[1])


def test_hosts_fed_in_forked_jobs_give_what_one_process_gives(tmp_path: Path) -> None:
    """Split across processes, the hosts' candidates, counters and row errors are the same."""
    import json

    from bench.fleet_log import write

    from readegress.fleet.pipeline import correlate_hosts, feed_columns
    from readegress.fleet.sql import feed_select
    from readegress.logs.results import BadLine

    path = tmp_path / "fleet.log"
    info = write(str(path), 2_000_000, hosts=5)
    with path.open("a") as f:  # unusable rows (a pid that is no number) on two hosts
        for host in info.hosts[:2]:
            cols = {"pid": "12x", "parent": "1", "path": "/bin/sh", "cmdline": "sh",
                    "time": "1764300100", "uid": "0", "auid": "0", "syscall": "execve"}  # fmt: skip
            f.write(json.dumps({"hostIdentifier": host, "columns": cols, "action": "added"}) + "\n")
    fr = run([str(path)], CONFIGS[1], lambda b: None, progress=False)
    rows = fr.engine.fetch(feed_select(feed_columns(fr.engine), True))
    results = []
    for jobs in (1, 2, 3):
        bad: list[BadLine] = []
        out = correlate_hosts(
            CONFIGS[1], rows, [str(path)], bad.append, jobs=jobs, payloads=fr.engine.payloads
        )
        results.append((out.candidates, out.events, out.hosts, out.row_errors, out.core, bad))
        # Keeping some candidates (replay: those over the threshold) drops and counts the rest.
        kept = correlate_hosts(
            CONFIGS[1], rows, [str(path)], lambda b: None, jobs=jobs,
            payloads=fr.engine.payloads, min_score=40,
        )  # fmt: skip
        assert kept.candidates and kept.candidates == [d for d in out.candidates if d.score >= 40]
        assert 0 < kept.dropped == len(out.candidates) - len(kept.candidates)
        assert (kept.events, kept.core) == (out.events, out.core)
    assert results[0][0] and results[0][3] == 2
    assert results[1] == results[0] and results[2] == results[0]


def test_long_lines_are_parsed_apart_and_read_the_same(tmp_path: Path) -> None:
    """Lines over BIG_LINE (parsed in groups of their own) give what the per-row reader gives.

    A chain whose exec line carries a long command line, a batch line whose
    rows are long, and snapshot lines of the project's socket_bytes table, mixed
    with ordinary lines: the detections are the reference's, every snapshot row
    is a row, and the report's long-lived sockets come from the latest run.
    """
    import json

    from readegress.fleet.duckdb_engine import BIG_LINE

    pad = "x" * (BIG_LINE + 100)
    exec_row = _proc(300, 50, T, "/usr/bin/openssl", "execve")
    exec_row["cmdline"] = "openssl enc -aes-256-cbc -pass pass:" + pad
    rows = [
        _proc(300, 50, T, "/usr/bin/bash", "fork"),
        exec_row,
        _read(300, 50, T + 1, "/usr/bin/openssl", "/etc/shadow"),
        _conn(300, T + 2, "/usr/bin/openssl"),
    ]
    lines = [
        json.dumps({"name": "q", "hostIdentifier": "h1", "unixTime": T, "columns": r,
                    "action": "added"})
        for r in rows
    ]  # fmt: skip
    batch_rows = [
        dict(_read(400 + i, 50, T + 3, "/usr/bin/cat", "/etc/shadow"), note=pad) for i in range(3)
    ]
    batch_rows.append(dict(_conn(401, T + 4, "/usr/bin/curl"), note=pad))
    lines.append(json.dumps({"name": "q", "hostIdentifier": "h2", "unixTime": T,
                             "diffResults": {"added": batch_rows, "removed": []}}))  # fmt: skip
    sock = {"cookie": "1", "bytes_acked": "5", "pid": "9", "remote_address": "45.33.32.156",
            "remote_port": "443", "direction": "outbound", "pad": pad}  # fmt: skip
    for k in range(3):
        snap = [dict(sock, cookie=str(i), age_seconds=str(7200 + k)) for i in range(4)]
        lines.append(json.dumps({"name": "s", "hostIdentifier": "h1", "unixTime": T + 60 * k,
                                 "snapshot": snap, "action": "snapshot"}))  # fmt: skip
    path = tmp_path / "long.log"
    path.write_text("\n".join(lines) + "\n")
    assert sum(len(x) > BIG_LINE for x in lines) == 5
    n = _check(str(path), CONFIGS[1])
    assert n >= 2
    fr = run([str(path)], CONFIGS[1], lambda b: None, progress=False)
    assert fr.engine.fetch("SELECT count(*) FROM proj WHERE tbl = 'socket_bytes'") == [(12,)]
    # A batch or snapshot line is not a row itself: 4 event rows, 4 batch rows, 12 snapshot rows.
    assert fr.counts["rows"] == 20
    found = {(d.host, d.pid) for d in fr.correlated.candidates}
    assert ("h1", 300) in found and any(h == "h2" for h, _ in found)
    opener = next(d for d in fr.correlated.candidates if d.pid == 300)
    assert "encryptor_in_chain" in opener.reasons


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory", "stored"])
def test_rows_in_arrays_read_the_same_in_memory_or_stored(
    in_memory: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of batch and snapshot lines that DuckDB parses go to in-memory tables while those
    lines are small (ARRAYS_IN_MEMORY), else to stored ones: the same detections and bad
    lines either way."""
    from readegress.fleet import duckdb_engine

    if not in_memory:
        monkeypatch.setattr(duckdb_engine, "ARRAYS_IN_MEMORY", 0)
    found = 0
    for p in sorted(FIXTURES.glob("*.log")):
        found += _check(str(p), CONFIGS[1])
        fr = run([str(p)], CONFIGS[1], lambda b: None, progress=False)
        temporary = fr.engine.fetch(
            "SELECT temporary FROM duckdb_tables() WHERE table_name = 'arows_raw'"
        )
        assert temporary == [(in_memory,)]
    assert found > 0


_CHILDREN = st.lists(
    st.tuples(
        st.sampled_from([50, 50, 50, 51]),  # parent
        st.integers(-2, 2),  # fork, seconds after the read
        st.one_of(st.none(), st.integers(-2, 3)),  # exec, or none seen
        st.sampled_from(["/usr/bin/bash", "/usr/bin/tar", "/usr/bin/base64", "/usr/bin/gpg"]),
    ),
    min_size=2,
    max_size=6,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    children=_CHILDREN,
    roles=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)),
    times=st.tuples(st.integers(0, 2), st.integers(0, 4)),
)
def test_pipeline_siblings_narrowed_equal_full(
    children: list[tuple[int, int, Optional[int], str]],
    roles: tuple[int, int, int],
    times: tuple[int, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Children of one or two parents forked and exec'd around each other (osquery rows:
    whole seconds); one reads shadow, one (maybe the same, maybe a child of another) sends.
    Which siblings count as the chain's pipeline members hangs on their exec times being
    within a second of the reader's: the narrowing keeps them all, and only those can matter."""
    rows: list[dict[str, object]] = []
    n = len(children)
    for k, (parent, fork, execd, image) in enumerate(children):
        pid = 101 + k
        rows.append(_proc(pid, parent, T + fork, "/usr/bin/bash", "fork"))
        if execd is not None:
            rows.append(_proc(pid, parent, T + execd, image, "execve"))
    reader, sender, grand = (r % n for r in roles)
    read_at, send_after = times
    rows.append(_read(101 + reader, children[reader][0], T + read_at, "/usr/bin/cat",
                      "/etc/shadow"))  # fmt: skip
    sender_pid = 101 + sender
    if grand == sender:  # the sender is a grandchild: forked by a child
        sender_pid = 201
        rows.append(_proc(201, 101 + sender, T + read_at, "/usr/bin/bash", "fork"))
        rows.append(_proc(201, 101 + sender, T + read_at, "/usr/bin/curl", "execve"))
    rows.append(_conn(sender_pid, T + read_at + send_after, "/usr/bin/curl"))
    rows.sort(key=lambda r: int(str(r["time"])))
    path = _log(tmp_path_factory.mktemp("sib"), rows)
    for config in CONFIGS:
        _check(path, config)
