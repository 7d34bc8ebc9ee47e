"""The native egress source against real loopback sockets and processes (root).

Reads are given to the source directly (:meth:`NativeEgressSource.note_read`),
as the fanotify source would hand them on; peers are child processes from
``loopback.py`` (127.0.0.1 only) whose pids and sends the tests control.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Callable, Optional

import pytest

import loopback
from readegress.detect.config import Config, parse_config
from readegress.detect.events import Egress, Proc, SensitiveRead
from readegress.kernel.procfs import read_start_ticks
from readegress.sources.native_egress import (
    SOURCE,
    NativeEgressSource,
    _PidfdGetfd,
    _read_socket,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sock_diag owners need root")

CONFIG = """
window_seconds = 30
settle_seconds = 0.2
egress_classes = ["loopback"]

[[class]]
name = "shadow"
level = "high"
paths = ["/etc/shadow"]
"""


def config(text: str = CONFIG) -> Config:
    return parse_config(text)


class Collector:
    def __init__(self) -> None:
        self.events: list[Egress] = []
        self.finals: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, e: Egress) -> None:
        with self._lock:
            self.events.append(e)

    def final(self, cookie: int) -> None:
        self.finals.append(cookie)

    def of(self, pid: int, kind: Optional[str] = None) -> list[Egress]:
        with self._lock:
            return [e for e in self.events if e.proc.pid == pid and kind in (None, e.kind)]

    def wait(self, match: Callable[[Egress], bool], timeout: float = 5.0) -> Egress:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for e in self.events:
                    if match(e):
                        return e
            time.sleep(0.01)
        raise AssertionError(f"no matching egress in {timeout}s: {self.events}")


@pytest.fixture
def got() -> Collector:
    return Collector()


@pytest.fixture
def source(got: Collector) -> Iterator[NativeEgressSource]:
    src = NativeEgressSource(config(), got, "h", on_final=got.final, interval=0.2)
    src.start()
    try:
        yield src
    finally:
        src.close()


def proc_text(rel: str) -> str:
    with open(f"/proc/{rel}") as f:
        return f.read()


def read_by(pid: int, t: Optional[float] = None) -> SensitiveRead:
    start = read_start_ticks(pid)
    assert start is not None
    proc = Proc(pid=pid, ppid=os.getpid(), start=start, pgid=os.getpgid(pid))
    return SensitiveRead("h", time.time() if t is None else t, proc, "/etc/shadow", "test")


def test_a_new_connection_is_one_connect_with_the_owner_identity(
    source: NativeEgressSource, got: Collector
) -> None:
    with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as cli:
        srv.accepted()
        e = got.wait(lambda e: e.proc.pid == cli.pid)
        time.sleep(0.5)  # more polls: reported once
        assert got.of(cli.pid) == [e]
        assert got.of(srv.pid) == []  # the accepted side is not egress
    assert (e.kind, e.source, e.protocol, e.remote_port) == ("connect", SOURCE, "tcp", srv.port)
    assert e.remote_address == "127.0.0.1" and e.cookie is not None
    assert e.proc.start == read_start_ticks(cli.pid) or e.proc.start is not None
    assert e.proc.executable == os.path.realpath(sys.executable)
    assert e.proc.ppid == os.getpid() and e.proc.pgid is not None and e.proc.uid == 0


def test_connections_older_than_the_source_are_not_connects(got: Collector) -> None:
    with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as cli:
        srv.accepted()
        src = NativeEgressSource(config(), got, "h", interval=0.2)
        src.start()
        try:
            time.sleep(0.5)
            assert got.of(cli.pid) == []
        finally:
            src.close()


def test_transfer_counts_only_bytes_sent_after_the_read(
    source: NativeEgressSource, got: Collector
) -> None:
    with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as cli:
        srv.accepted()
        got.wait(lambda e: e.proc.pid == cli.pid)  # the connect (before any read)
        cli.send(1000)
        srv.wait_received(1000)
        time.sleep(0.05)  # last_data_sent must show nothing sent since the read
        read = read_by(cli.pid)
        source.note_read(read)
        time.sleep(0.1)
        cli.send(250_000)
        srv.wait_received(251_000)
        e = got.wait(lambda e: e.proc.pid == cli.pid and e.kind == "transfer")
        assert e.bytes_sent is not None and 0 < e.bytes_sent <= 250_000
        time.sleep(0.3)
        facts = source.facts(e.cookie or 0, "transfer", read.time)
        assert facts is not None and facts.bytes_sent == 250_000 and not facts.closed
        st = source.stats()
        assert st.baselines >= 1 and st.baselines_exact >= 1
        cli.close_connection()
        deadline = time.monotonic() + 5
        while e.cookie not in got.finals and time.monotonic() < deadline:
            time.sleep(0.01)
    facts = source.facts(e.cookie or 0, "transfer", read.time)
    assert facts is not None and facts.closed and facts.bytes_sent == 250_000
    assert len(got.of(cli.pid, "transfer")) == 1


def test_hot_mode_attributes_a_connection_of_a_few_ms_with_final_bytes(
    source: NativeEgressSource, got: Collector
) -> None:
    with loopback.server(socket.AF_INET) as srv:
        code = (
            "import socket,sys,time; sys.stdin.readline();"
            f" s=socket.create_connection(('127.0.0.1',{srv.port}));"
            " s.sendall(b'x'*70000); time.sleep(0.003); s.close()"
        )
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
        try:
            time.sleep(0.2)
            source.note_read(read_by(p.pid))
            time.sleep(0.02)
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.wait(10) == 0
            e = got.wait(lambda e: e.proc.pid == p.pid)
        finally:
            p.kill()
            p.wait()
        deadline = time.monotonic() + 5
        while e.cookie not in got.finals and time.monotonic() < deadline:
            time.sleep(0.01)
    assert e.kind == "connect" and e.proc.start is not None
    facts = source.facts(e.cookie or 0, "connect", 0.0)
    assert facts is not None and facts.closed and (facts.bytes_sent or 0) >= 70000
    st = source.stats()
    assert st.hot_started >= 1 and st.hot_ticks > 0 and st.connects >= 1


def test_a_close_no_one_was_seen_holding_is_pid_0_at_host_scope(got: Collector) -> None:
    # A long poll interval and no read: nothing watches the client.
    src = NativeEgressSource(config(), got, "h", interval=60)
    src.start()
    try:
        with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as cli:
            srv.accepted()
            cli.send(5000)
            srv.wait_received(5000)
            cli.close_connection()
            e = got.wait(lambda e: e.proc.pid == 0)
        assert (e.remote_port, e.bytes_sent, e.kind) == (srv.port, 5000, "connect")
        assert src.stats().unattributed >= 1 and src.stats().unattributed_fed >= 1
        facts = src.facts(e.cookie or 0, "connect", 0.0)
        assert facts is not None and facts.closed and facts.owner is None
    finally:
        src.close()
    # Outside the egress classes: counted, not fed.
    got2 = Collector()
    src = NativeEgressSource(
        config(CONFIG.replace('"loopback"', '"public"')), got2, "h", interval=60
    )
    src.start()
    try:
        with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as cli:
            srv.accepted()
            cli.close_connection()
            deadline = time.monotonic() + 3
            while src.stats().unattributed == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert src.stats().unattributed >= 1 and got2.of(0) == []
    finally:
        src.close()


def test_hot_lineages_are_capped_and_the_rest_counted(got: Collector) -> None:
    src = NativeEgressSource(config(), got, "h", max_hot_readers=1)
    src.start()
    procs = [
        subprocess.Popen(["sh", "-c", "sleep 3; exit 0"], start_new_session=True) for _ in range(2)
    ]
    try:
        time.sleep(0.1)
        for p in procs:
            # Each is its own lineage (its parent is this test, which is the source).
            start = read_start_ticks(p.pid)
            src.note_read(SensitiveRead("h", time.time(), Proc(p.pid, 1, "", start), "/x", "t"))
        deadline = time.monotonic() + 3
        while src.stats().hot_skipped == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        st = src.stats()
        assert (st.hot_started, st.hot_skipped) == (1, 1)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        src.close()


def test_hot_mode_cpu_stays_within_its_budget(got: Collector) -> None:
    budget = 0.10
    src = NativeEgressSource(config(), got, "h", hot_cpu_budget=budget)
    src.start()
    # A reader with a pipeline of idle siblings: a few processes to scan every tick.
    p = subprocess.Popen(
        ["sh", "-c", "sleep 2 | sleep 2 | sleep 2; exit 0"], start_new_session=True
    )
    try:
        time.sleep(0.2)
        kids = [int(x) for x in proc_text(f"{p.pid}/task/{p.pid}/children").split()]
        start = read_start_ticks(kids[0])
        src.note_read(SensitiveRead("h", time.time(), Proc(kids[0], p.pid, "", start), "/x", "t"))
        time.sleep(1.0)
        st = src.stats()
    finally:
        p.kill()
        p.wait()
        src.close()
    frac = st.hot_cpu_seconds / 1.0
    per_tick = st.hot_cpu_seconds / max(st.hot_ticks, 1)
    print(
        f"hot mode: {st.hot_ticks} ticks/s, {per_tick * 1e6:.0f} us CPU per tick,"
        f" {frac:.1%} of one CPU (budget {budget:.0%}), interval {st.hot_interval_ms:.2f} ms"
    )
    assert st.hot_ticks > 100
    assert frac < budget * 1.6  # the interval adapts after the cost is measured


def test_without_pidfd_getfd_hot_ticks_fall_back_to_a_dump(got: Collector) -> None:
    src = NativeEgressSource(config(), got, "h", use_getfd=False)
    src.start()
    try:
        with loopback.server(socket.AF_INET) as srv:
            code = (
                "import socket,sys,time; sys.stdin.readline();"
                f" s=socket.create_connection(('127.0.0.1',{srv.port}));"
                " s.sendall(b'x'*1000); time.sleep(0.05); s.close()"
            )
            p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
            try:
                time.sleep(0.2)
                src.note_read(read_by(p.pid))
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
                assert p.wait(10) == 0
                got.wait(lambda e: e.proc.pid == p.pid)
            finally:
                p.kill()
                p.wait()
        st = src.stats()
        assert not st.getfd and st.hot_dumps >= 1
    finally:
        src.close()


def test_reading_a_duplicated_descriptor_leaves_the_socket_as_it_was() -> None:
    getfd = _PidfdGetfd()
    if not getfd.works:
        pytest.skip("pidfd_getfd unavailable")
    with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as cli:
        srv.accepted()
        cli.send(3000)
        srv.wait_received(3000)
        link = os.readlink(f"/proc/{cli.pid}/fd/{cli.fd}")
        inode = int(link[8:-1])
        pidfd = os.pidfd_open(cli.pid)
        try:
            dup = getfd(pidfd, cli.fd)
        finally:
            os.close(pidfd)
        flags_before = proc_text(f"{cli.pid}/fdinfo/{cli.fd}").splitlines()[1]
        r = _read_socket(dup, inode)
        flags_after = proc_text(f"{cli.pid}/fdinfo/{cli.fd}").splitlines()[1]
        assert r.info is not None and r.info.bytes_sent == 3000
        assert (r.info.remote_address, r.info.remote_port) == ("127.0.0.1", srv.port)
        assert flags_before == flags_after  # O_NONBLOCK etc. untouched
        assert (
            not os.path.exists(f"/proc/self/fd/{dup}")
            or os.readlink(f"/proc/self/fd/{dup}") != link
        )  # our duplicate is closed
        cli.send(10)  # the owner's socket still works
        srv.wait_received(3010)
