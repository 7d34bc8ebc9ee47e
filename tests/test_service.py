"""The osquery source and the detection service, against the test osquery core.

Real Thrift to :class:`OsqueryCore` (whose event tables carry osquery's exact
column sets, see ``osquery_events.py``), real state files, and a real
loopback TCP connection for the socket facts. Cycles are driven directly
(``attach(start=False)``) with an injectable clock where settling matters.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import psutil
import pytest

from chain_peers import RecordedFeed
from osquery_events import EventTables, write_config
from readegress.detect.config import Config, load_config
from readegress.detect.core import Correlator
from readegress.detect.events import Egress, Event, Proc, SensitiveRead
from readegress.osquery import ManagerClient
from readegress.service.detection_service import DetectionService, FinalDetection
from readegress.sources.osquery_setup import (
    OsqueryFilePaths,
    catalogue_file_paths,
    osquery_globs,
    read_osquery_file_paths,
)
from readegress.sources.osquery_source import Cursor, OsqueryEventSource, build_query
from readegress.tables.base import TableEnv
from readegress.testing import OsqueryCore

T0 = 1_700_000_000


@pytest.fixture
def manager(core: OsqueryCore) -> Iterator[ManagerClient]:
    with ManagerClient(core.socket_path, timeout=10) as m:
        yield m


@pytest.fixture
def events(core: OsqueryCore) -> EventTables:
    return EventTables(core)


def config(tmp_path: Path, **kw: float) -> Config:
    return load_config(write_config(tmp_path, **kw))  # type: ignore[arg-type]


def service(
    cfg: Config,
    state: Path,
    manager: ManagerClient,
    *,
    env: Optional[TableEnv] = None,
    clock: Callable[[], float] = time.time,
) -> DetectionService:
    svc = DetectionService(cfg, env, state_dir=str(state), clock=clock)
    svc.open()
    svc.attach(manager, start=False)
    return svc


def pids(evs: list[Event]) -> list[int]:
    return [e.proc.pid for e in evs]


# -- the cursor ------------------------------------------------------------------


def test_cursor_orders_by_time_then_numeric_eid_and_reads_nothing_twice(
    tmp_path: Path, manager: ManagerClient, events: EventTables
) -> None:
    src = OsqueryEventSource(manager.query, config(tmp_path).catalogue, "h")
    events.process(T0, 10, "/bin/a", parent=1, syscall="execve", eid=9)
    events.process(T0, 11, "/bin/b", parent=1, syscall="execve", eid=10)
    assert pids(src.poll().events) == [10, 11]
    assert src.cursors["process_events"] == Cursor(T0, 10)
    # A row stored later in the same second (larger eid) is read, once.
    events.process(T0, 12, "/bin/c", parent=1, syscall="execve", eid=11)
    assert pids(src.poll().events) == [12]
    # eids compare as numbers: an eleven-digit eid sorts after every ten-digit one.
    events.process(T0, 13, "/bin/d", parent=1, syscall="execve", eid=10_000_000_000)
    assert pids(src.poll().events) == [13]
    assert src.poll().events == []
    # time orders first: a restarted counter (osquery's database wiped) is still read.
    events.process(T0 + 1, 14, "/bin/e", parent=1, syscall="execve", eid=3)
    assert pids(src.poll().events) == [14]
    st = src.status["process_events"]
    assert (st.rows, st.events, st.repeats, st.query_errors) == (5, 5, 0, 0)


def test_queries_narrow_reads_to_catalogue_globs_and_keep_time_for_pushdown(
    tmp_path: Path,
) -> None:
    src = OsqueryEventSource(lambda sql: [], config(tmp_path).catalogue, "h")
    assert set(src.path_globs) == {
        "/etc/shadow",
        "/root/.ssh/id_*",
        "/home/*/.ssh/id_*",
        "/root/.aws/credentials",
        "/home/*/.aws/credentials",
        "/etc/passwd",
    }
    sql = build_query("process_file_events", Cursor(T0, 7), path_globs=src.path_globs, limit=5)
    assert sql.startswith(f"SELECT *, eid FROM process_file_events WHERE time >= {T0} AND ")
    assert f"NOT (time = {T0} AND CAST(eid AS INTEGER) <= 7)" in sql
    assert "operation IN ('open', 'read')" in sql and "path GLOB '/home/*/.ssh/id_*'" in sql
    assert sql.endswith("ORDER BY time, CAST(eid AS INTEGER) LIMIT 5")
    assert "action = 'connect'" in build_query("socket_events", Cursor(0, 0), limit=1)


def test_only_reads_of_catalogue_paths_and_connects_cross_the_socket(
    tmp_path: Path, core: OsqueryCore, manager: ManagerClient, events: EventTables
) -> None:
    src = OsqueryEventSource(manager.query, config(tmp_path).catalogue, "h")
    events.read(T0, 30, "/etc/shadow")
    events.read(T0, 30, "/usr/lib/libc.so.6")  # not in the catalogue: not fetched
    events.read(T0, 30, "/etc/shadow", operation="write")  # not a read
    events.read(T0, 31, "/home/alice/.ssh/id_ed25519")
    events.connect(T0, 30, "127.0.0.1", 9, action="bind")  # not fetched
    events.connect(T0, 30, "127.0.0.1", 9, status="failed")  # fetched, not egress
    events.connect(T0, 30, "127.0.0.1", 9)
    page = src.poll()
    assert [(type(e).__name__, e.proc.pid) for e in page.events] == [
        ("SensitiveRead", 30),
        ("SensitiveRead", 31),
        ("Egress", 30),
    ]
    assert src.status["process_file_events"].rows == 2
    assert (src.status["socket_events"].rows, src.status["socket_events"].ignored) == (2, 1)


def test_paging_never_feeds_an_egress_before_the_read_of_its_second(
    tmp_path: Path, manager: ManagerClient, events: EventTables
) -> None:
    cfg = config(tmp_path)
    src = OsqueryEventSource(manager.query, cfg.catalogue, "h", page_rows=2)
    events.read(T0, 20, "/etc/shadow")
    events.read(T0 + 1, 21, "/etc/shadow")
    events.read(T0 + 2, 22, "/etc/shadow")
    events.connect(T0 + 1, 21, "127.0.0.1", 9021)
    pages = [src.poll() for _ in range(3)]
    fed = [[(type(e).__name__, e.time) for e in p.events] for p in pages]
    assert fed == [
        [("SensitiveRead", T0)],  # socket rows at T0+1 wait: the file page was cut there
        [("SensitiveRead", T0 + 1), ("Egress", T0 + 1)],
        [("SensitiveRead", T0 + 2)],
    ]
    assert [p.complete for p in pages] == [False, False, True]
    dets = Correlator(cfg).feed_many(e for p in pages for e in p.events)
    assert [(d.pid, d.scope) for d in dets] == [(21, "process")]


def test_a_missing_table_is_counted_and_the_others_still_polled(
    tmp_path: Path, core: OsqueryCore, manager: ManagerClient
) -> None:
    # Audit FIM off: osquery has no process_file_events table at all.
    events = EventTables(core, ("socket_events", "process_events"))
    src = OsqueryEventSource(manager.query, config(tmp_path).catalogue, "h")
    events.connect(T0, 40, "127.0.0.1", 9040)
    page = src.poll()
    assert pids(page.events) == [40] and page.failed == ("process_file_events",)
    st = src.status["process_file_events"]
    assert st.query_errors == 1 and "no such table" in st.last_error


# -- the service: restarts, state, bounds --------------------------------------------


def test_restart_resumes_from_the_saved_cursor_without_gap_or_repeat(
    tmp_path: Path, manager: ManagerClient, events: EventTables
) -> None:
    cfg = config(tmp_path, settle=0)
    state = tmp_path / "state"
    now = int(time.time())
    first = service(cfg, state, manager)
    events.read(now - 5, 100, "/etc/shadow", uid=1000, auid=1000)
    events.connect(now - 4, 100, "127.0.0.1", 9100, auid=1000)
    first.cycle()
    assert [f.detection.pid for f in first.detections()] == [100]
    first.stop()

    # While the extension is down: a new chain, and a connect in the very
    # second the socket cursor stopped at (same time, larger eid).
    events.read(now - 4, 300, "/root/.aws/credentials", uid=1003, auid=1003)
    events.connect(now - 4, 300, "127.0.0.1", 9300, auid=1003)
    events.read(now - 3, 200, "/root/.ssh/id_rsa", uid=1002, auid=1002)
    events.connect(now - 2, 200, "127.0.0.1", 9200, auid=1002)

    second = service(cfg, state, manager)
    assert [f.detection.pid for f in second.detections()] == [100]  # loaded, not recomputed
    second.cycle()
    got = [f.detection.pid for f in second.detections()]
    assert sorted(got) == [100, 200, 300]
    assert len({f.detection.id for f in second.detections()}) == 3
    tables = second.status().tables
    assert tables["process_file_events"].rows == 3 and tables["socket_events"].rows == 3
    assert second.counters["duplicates"] == 0
    second.stop()

    third = service(cfg, state, manager)
    third.cycle()
    assert [f.detection.id for f in third.detections()] == [
        f.detection.id for f in second.detections()
    ]
    assert third.status().tables["socket_events"].rows == 3  # nothing read twice


def test_state_directory_0700_and_file_0600_whatever_the_umask(
    tmp_path: Path, manager: ManagerClient, events: EventTables
) -> None:
    cfg = config(tmp_path, settle=0)
    state = tmp_path / "state"
    old = os.umask(0)
    try:
        svc = service(cfg, state, manager)
        assert not state.exists()  # created by the first save, not before
        events.connect(int(time.time()), 50, "127.0.0.1", 9050)
        svc.cycle()
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "state.json").stat().st_mode) == 0o600
    doc = json.loads((state / "state.json").read_text())
    assert doc["format"] == "readegress-state" and doc["source"]["cursors"]["socket_events"][1] == 1
    # An existing, too-open directory is tightened when the service opens it.
    os.chmod(state, 0o755)
    service(cfg, state, manager)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_a_state_directory_owned_by_someone_else_is_refused(
    tmp_path: Path, manager: ManagerClient, events: EventTables
) -> None:
    cfg = config(tmp_path, settle=0)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    svc = service(cfg, state, manager)
    assert "owned by uid 65534" in svc.status().persist_error
    events.connect(int(time.time()), 51, "127.0.0.1", 9051)
    svc.cycle()  # runs, keeps state in memory only
    assert not (state / "state.json").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        json.dumps({"format": "readegress-state", "version": 1, "correlator": {}}).encode(),
        json.dumps({"format": "something-else"}).encode(),
    ],
)
def test_corrupt_state_is_moved_aside_and_the_service_starts_fresh(
    tmp_path: Path, manager: ManagerClient, events: EventTables, content: bytes
) -> None:
    cfg = config(tmp_path, settle=0)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "state.json").write_bytes(content)
    svc = service(cfg, state, manager)
    st = svc.status()
    assert "moved aside" in st.state_note and st.counters["state_corrupt"] == 1
    aside = list(state.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    now = int(time.time())
    events.read(now - 1, 60, "/etc/shadow")
    events.connect(now, 60, "127.0.0.1", 9060)
    svc.cycle()
    assert [f.detection.pid for f in svc.detections()] == [60]
    assert json.loads((state / "state.json").read_text())["finalized"]


def test_stored_detections_are_bounded_oldest_dropped_and_counted(
    tmp_path: Path, manager: ManagerClient, events: EventTables
) -> None:
    cfg = config(tmp_path, settle=0, max_detections=10)
    svc = service(cfg, tmp_path / "state", manager)
    now = int(time.time())
    for i in range(13):
        events.read(now - 20 + i, 700 + i, "/etc/shadow", uid=2000 + i, auid=2000 + i)
        events.connect(now - 20 + i, 700 + i, "127.0.0.1", 9700 + i, auid=2000 + i)
    svc.cycle()
    assert [f.detection.pid for f in svc.detections()] == list(range(703, 713))
    assert svc.counters["dropped_detections"] == 3 and svc.counters["finalized"] == 13


# -- settling and socket facts ---------------------------------------------------


class _Drain(threading.Thread):
    def __init__(self, conn: socket.socket) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.received = 0

    def run(self) -> None:
        while True:
            b = self.conn.recv(1 << 20)
            if not b:
                return
            self.received += len(b)


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def test_settle_then_enrich_with_a_real_loopback_socket(
    tmp_path: Path, manager: ManagerClient, events: EventTables
) -> None:
    cfg = config(tmp_path, settle=0.5)
    env = TableEnv()  # snapshots on demand
    clock = [0.0]
    svc = service(cfg, tmp_path / "state", manager, env=env, clock=lambda: clock[0])
    me = os.getpid()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    t = int(time.time())
    try:
        events.read(t, me, "/root/.ssh/id_rsa", exe=sys.executable)
        client = socket.create_connection(("127.0.0.1", port))
        peer, _ = listener.accept()
        drain = _Drain(peer)
        drain.start()
        events.connect(t, me, "127.0.0.1", port, exe=sys.executable)

        clock[0] = t + 0.1  # before the settle delay: the candidate waits
        svc.cycle()
        [pending] = svc.pending()
        assert svc.detections() == [] and pending.deadline == t + 0.5

        sent = 3 << 20  # after the read, on the connection the egress opened
        client.sendall(b"\x5a" * sent)
        _wait(lambda: drain.received >= sent)
        clock[0] = t + 1.0
        svc.cycle()
        [final] = svc.detections()
    finally:
        for s in (listener, locals().get("client"), locals().get("peer")):
            if isinstance(s, socket.socket):
                s.close()
        env.close()
    d = final.detection
    assert d.bytes_sent is not None and d.bytes_sent >= sent
    assert "bulk_transfer" in d.reasons and d.score == pending.detection.score + 15
    assert d.socket_age is not None and d.keepalive is False and d.protocol == "tcp"
    assert final.start_time == int(psutil.Process(me).create_time())
    assert final.closed_bytes_sent is None and svc.counters["facts_socket"] == 1


def test_a_socket_closed_before_settling_gives_closed_totals_never_a_guess(
    tmp_path: Path, manager: ManagerClient, events: EventTables
) -> None:
    cfg = config(tmp_path, settle=0)
    env = TableEnv(background=True)  # destroy listeners on
    svc = service(cfg, tmp_path / "state", manager, env=env)
    me = os.getpid()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        monitor = env.monitor
        client = socket.create_connection(("127.0.0.1", port))
        peer, _ = listener.accept()
        drain = _Drain(peer)
        drain.start()
        client.sendall(b"\x5a" * 100_000)
        _wait(lambda: drain.received >= 100_000)
        env.snapshot()  # the monitor sees the socket with its owner ...
        client.close()  # ... then it closes: only the destroy notification remains
        peer.close()
        _wait(lambda: any(i.pid == me for i in monitor.closed_totals()))
        t = int(time.time())
        events.read(t, me, "/root/.ssh/id_rsa", exe=sys.executable)
        events.connect(t, me, "127.0.0.1", port, exe=sys.executable)
        svc.cycle()
        [final] = svc.detections()
    finally:
        listener.close()
        env.close()
    assert final.detection.bytes_sent is None  # the socket is gone: not estimated
    assert final.closed_bytes_sent is not None and final.closed_bytes_sent >= 100_000
    assert svc.counters["facts_closed"] == 1


# -- osquery's file_paths --------------------------------------------------------


def test_catalogue_as_osquery_file_paths(tmp_path: Path) -> None:
    assert osquery_globs("~/.ssh/id_*") == ["/root/.ssh/id_%", "/home/%/.ssh/id_%"]
    assert osquery_globs("/etc/{a,b}/**") == ["/etc/a/%%", "/etc/b/%%"]
    assert osquery_globs("/k/**/*.key")[:2] == ["/k/%/%.key", "/k/%/%/%.key"]
    fp = catalogue_file_paths(config(tmp_path).catalogue)
    assert fp["file_paths"]["shadow"] == ["/etc/shadow"]
    assert fp["exclude_paths"] == {"ssh_private_key": ["/root/.ssh/%.pub", "/home/%/.ssh/%.pub"]}


def test_osquery_config_file_paths_from_conf_d_and_packs(tmp_path: Path) -> None:
    conf = tmp_path / "osquery.conf"
    (tmp_path / "osquery.conf.d").mkdir()
    (tmp_path / "packs").mkdir()
    (tmp_path / "packs" / "p1.conf").write_text(json.dumps({"file_paths": {"keys": ["/srv/%%"]}}))
    conf.write_text(
        "// osquery strips comment lines\n"
        + json.dumps(
            {
                "file_paths": {"etc": ["/etc/sh%"], "homes": ["/home/%/.ssh/id_%"]},
                "exclude_paths": {"homes": ["/home/bob/%%"]},
                "packs": {
                    "*": str(tmp_path / "packs" / "%.conf"),
                    "inline": {"file_paths": {"x": ["/opt/x"]}},
                },
            }
        )
    )
    (tmp_path / "osquery.conf.d" / "10-extra.conf").write_text(
        json.dumps({"file_paths": {"aws": ["/root/.aws/credentials"]}})
    )
    fp = read_osquery_file_paths(str(conf))
    assert fp.problems == () and len(fp.files) == 3
    covered = [
        "/etc/shadow",
        "/home/alice/.ssh/id_rsa",
        "/srv/a/b/c",
        "/opt/x",
        "/root/.aws/credentials",
    ]
    assert all(fp.covers(p) for p in covered)
    assert not fp.covers("/home/bob/.ssh/id_rsa")  # excluded
    assert not fp.covers("/etc/passwd") and not fp.covers("/etc/ssh/x")  # % stays in one level
    bad = read_osquery_file_paths(str(tmp_path / "missing.conf"))
    assert bad.files == () and bad.problems
    assert not OsqueryFilePaths({}, {}, ()).covers("/etc/shadow")


def test_socket_facts_only_from_a_socket_the_egress_could_have_opened() -> None:
    from readegress.detect.config import parse_config
    from readegress.detect.events import Egress, Proc, SensitiveRead
    from readegress.kernel.records import (
        ObservedSocket,
        ProcessIdentity,
        ProcessInfo,
        SocketInfo,
        SocketOwner,
    )
    from readegress.service.socket_facts import lookup

    cfg = parse_config('[[class]]\nname = "shadow"\nlevel = "high"\npaths = ["/etc/shadow"]\n')
    [d] = Correlator(cfg).feed_many(
        [
            SensitiveRead("h", 1000, Proc(77, executable="/usr/bin/nc"), "/etc/shadow", "t"),
            Egress("h", 1001, Proc(77, executable="/usr/bin/nc"), "8.8.8.8", 4444, "t"),
        ]
    )

    def observed(
        age: float, started: int, sent: int, address: str = "::ffff:8.8.8.8"
    ) -> ObservedSocket:
        info = ProcessInfo(ProcessIdentity("b", 77, 1), "nc", "/usr/bin/nc", "nc", 0, 1, started)
        s = SocketInfo(10, 6, 1, "::ffff:10.0.0.2", 5555, address, 4444, 9, 1, 0, 2,
                       sent, sent, 0, 1, 1, 0, 0)  # fmt: skip
        return ObservedSocket(s, 1, (SocketOwner(info, 3),), 0.0, age)

    def facts(*socks: ObservedSocket) -> tuple[Optional[int], Optional[bool]]:
        f = lookup(d, socks, {}, lambda _i: None, now=1011, slack=2)
        return f.bytes_sent, f.keepalive

    assert facts(observed(5, 900, 4096)) == (4096, True)  # IPv4-mapped compares as IPv4
    assert facts(observed(60, 900, 4096)) == (None, None)  # older than the egress
    assert facts(observed(5, 1005, 4096)) == (None, None)  # a process started after it
    assert facts(observed(5, 900, 4096, "8.8.4.4")) == (None, None)  # elsewhere
    assert facts(observed(5, 900, 100), observed(3, 900, 50)) == (150, True)  # reconnects add up


def test_file_paths_command_prints_osquery_config_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from readegress.cli import main

    assert main(["file-paths", "--config", write_config(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == catalogue_file_paths(config(tmp_path).catalogue)
    assert out["file_paths"]["ssh_private_key"] == ["/root/.ssh/id_%", "/home/%/.ssh/id_%"]


def test_state_saves_are_rate_limited_unless_a_detection_was_added(
    tmp_path: Path, manager: ManagerClient, events: EventTables
) -> None:
    cfg = config(tmp_path, settle=0)
    state = tmp_path / "state"
    now = [float(int(time.time()))]
    svc = service(cfg, state, manager, clock=lambda: now[0])
    t = int(now[0])
    events.process(t - 9, 10, "/bin/a", parent=1, syscall="execve")
    svc.cycle()
    first = svc.state_saved_time
    assert first  # the first change is saved at once
    # More rows, no detection, within MIN_SAVE_INTERVAL: not saved yet.
    events.process(t - 8, 11, "/bin/b", parent=1, syscall="execve")
    now[0] += 5
    svc.cycle()
    assert svc.state_saved_time == first
    # A new detection is saved at once.
    events.read(t - 6, 100, "/etc/shadow", uid=1000, auid=1000)
    events.connect(t - 5, 100, "127.0.0.1", 9100, auid=1000)
    now[0] += 1
    svc.cycle()
    assert [f.detection.pid for f in svc.detections()] == [100]
    second = svc.state_saved_time
    assert second > first
    # Rows alone are saved again once the interval has passed, and at stop.
    events.process(t - 4, 12, "/bin/c", parent=1, syscall="execve")
    now[0] += 5
    svc.cycle()
    assert svc.state_saved_time == second
    now[0] += 30
    svc.cycle()
    assert svc.state_saved_time > second
    events.process(t - 3, 13, "/bin/d", parent=1, syscall="execve")
    svc.cycle()
    svc.stop()
    reloaded = service(cfg, state, manager, clock=lambda: now[0])
    assert reloaded.status().tables["process_events"].rows == 4
    reloaded.stop()


def test_bytes_of_a_chains_connections_add_up_split_and_send(tmp_path: Path) -> None:
    # split reads a 3000-byte key; three later siblings upload 1000 bytes each.
    cfg = config(tmp_path, settle=0)
    reader = Proc(pid=10, ppid=9, executable="/usr/bin/split", start=1000, uid=0)
    t = time.time() - 5  # the service keeps a chain's bytes for window + settle after it
    evs: list[Event] = [SensitiveRead("h", t, reader, "/etc/shadow", "fanotify", size=3000)]
    for i in range(3):
        sender = Proc(pid=11 + i, ppid=9, executable="/usr/bin/curl", start=1500 + i, uid=0)
        evs.append(Egress("h", t + 1 + i, sender, "8.8.8.8", 4444, "sock_diag", cookie=i + 1))
    finals: list[FinalDetection] = []
    svc = DetectionService(cfg, None, persist=False, host="h", on_final=finals.append)
    sent = {1: 1000, 2: 1000, 3: 1000}
    svc.attach_native(RecordedFeed(evs, lambda d: sent.get(d.cookie or 0)))
    svc.cycle()
    assert svc.counters["below_threshold"] == 2  # 1000 and 2000 bytes: fewer than the file
    (f,) = finals
    d = f.detection
    assert (d.pid, d.scope, d.bytes_sent, d.chain_bytes_sent) == (13, "session", 1000, 3000)
    assert "bytes_ge_file_size" in d.reasons and d.bytes_by_destination == (("8.8.8.8:4444", 3000),)
    assert d.priority == round(d.score * 1.5)


def test_an_unrelated_process_neither_adds_to_nor_takes_a_chains_bytes(tmp_path: Path) -> None:
    # A key read, a sibling's small upload (session), and another user's process
    # moving 10 MB at the same time (host scope): the chain is only the sibling's.
    cfg = config(tmp_path, settle=0)
    t = time.time() - 5
    reader = Proc(pid=10, ppid=9, executable="/usr/bin/split", start=1000, uid=0)
    sibling = Proc(pid=11, ppid=9, executable="/usr/bin/curl", start=1500, uid=0)
    other = Proc(pid=50, ppid=40, executable="/usr/bin/rsync", start=1600, uid=7)
    evs: list[Event] = [
        SensitiveRead("h", t, reader, "/etc/shadow", "fanotify", size=3000),
        Egress("h", t + 1, other, "8.8.4.4", 873, "sock_diag", cookie=2),
        Egress("h", t + 2, sibling, "8.8.8.8", 4444, "sock_diag", cookie=1),
    ]
    finals: list[FinalDetection] = []
    svc = DetectionService(cfg, None, persist=False, host="h", on_final=finals.append)
    sent = {1: 1000, 2: 10_000_000}
    svc.attach_native(RecordedFeed(evs, lambda d: sent.get(d.cookie or 0)))
    svc.cycle()
    assert finals == [] and svc.counters["below_threshold"] == 2
