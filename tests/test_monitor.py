"""SocketMonitor end to end: real sockets, real processes, loopback only."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import pytest

import loopback
from polling import wait_for
from readegress.kernel import netns
from readegress.kernel.monitor import UNKNOWN_UID, MonitorSnapshot, SocketMonitor
from readegress.kernel.records import ClosedTotals, ObservedSocket, ProcessIdentity, SocketInfo
from readegress.kernel.sockdiag import DestroyListener, SockDiag, open_sock_diag_socket

if TYPE_CHECKING:
    from conftest import FakeProc

TEN_MB = 10_000_000
FAMILIES = [pytest.param(socket.AF_INET, id="v4"), pytest.param(socket.AF_INET6, id="v6")]


HOST_NS = netns.own_namespace()


def find(
    snap: MonitorSnapshot,
    local_port: int,
    remote_port: Optional[int] = None,
    ns: int = HOST_NS,
) -> ObservedSocket:
    """The one TCP socket with these ports in namespace ``ns`` (ports repeat
    across namespaces, and other tests' sockets share the loopback)."""
    (o,) = [
        o
        for o in snap.sockets
        if o.socket.local_port == local_port
        and (remote_port is None or o.socket.remote_port == remote_port)
        and o.socket.protocol == socket.IPPROTO_TCP
        and o.net_namespace == ns
    ]
    return o


def owner_of(o: ObservedSocket) -> tuple[int, int]:
    (w,) = o.owners
    return w.process.identity.pid, w.fd


@pytest.fixture
def monitor() -> Iterator[SocketMonitor]:
    m = SocketMonitor()
    try:
        yield m
    finally:
        m.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_bytes_and_owners(monitor: SocketMonitor, family: int) -> None:
    with loopback.server(family) as srv, loopback.client(srv) as cli:
        cli.send(TEN_MB)
        assert srv.wait_received(TEN_MB) == TEN_MB

        def settled() -> Optional[MonitorSnapshot]:
            snap = monitor.snapshot()
            c = find(snap, cli.local_port, srv.port).socket
            return snap if c.bytes_acked == TEN_MB + 1 else None  # the last ACK may lag

        snap = wait_for(settled)
        assert snap is not None
        c = find(snap, cli.local_port, srv.port)
        s = find(snap, srv.port, cli.local_port)
        assert c.socket.bytes_sent == TEN_MB
        assert c.socket.bytes_acked == TEN_MB + 1  # +1: the SYN, on the connecting side
        assert s.socket.bytes_received == TEN_MB
        assert owner_of(c) == (cli.pid, cli.fd)
        assert owner_of(s) == (srv.pid, srv.accepted())
        assert owner_of(find(snap, srv.port, 0)) == (srv.pid, srv.listen_fd)
        proc = c.owners[0].process
        assert proc.cmdline.split()[1:3] == [loopback.HERE, "client"]
        assert proc.identity.start_ticks > 0 and proc.ppid == os.getpid()
        host = netns.own_namespace()
        assert c.net_namespace == s.net_namespace == host
        assert snap.unreadable_processes == 0
        assert not [w for w in snap.warnings if "unreadable" in w]


def test_udp_sockets_have_none_counters(monitor: SocketMonitor) -> None:
    with loopback.server(socket.AF_INET6) as srv:
        fd, port = map(int, srv.ask("udp", "UDP"))
        snap = monitor.snapshot()
        (u,) = [
            o
            for o in snap.sockets
            if o.socket.protocol == socket.IPPROTO_UDP and o.socket.local_port == port
        ]
        assert u.socket.bytes_sent is None and u.socket.bytes_received is None
        assert owner_of(u) == (srv.pid, fd)
        assert u.age_seconds >= 0


def test_first_seen_and_age_lower_bound() -> None:
    offset = [0.0]
    with SocketMonitor(clock=lambda: time.time() + offset[0]) as m:
        with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as cli:
            cli.send(1000)
            srv.wait_received(1000)
            first = m.snapshot()
            c1 = find(first, cli.local_port, srv.port)
            assert c1.first_seen == first.time
            offset[0] = 100.0
            second = m.snapshot()
            c2 = find(second, cli.local_port, srv.port)
            assert c2.first_seen == first.time
            assert c2.age_seconds >= 100.0
            for o in second.sockets:
                assert o.age_seconds >= second.time - o.first_seen - 1e-6
                s = o.socket
                if s.last_data_sent_ms is not None:
                    idle = max(s.last_data_sent_ms, s.last_data_recv_ms or 0) / 1000
                    uptime = second.time - m.procfs.boot_time
                    assert o.age_seconds >= min(idle, uptime) - 1e-6
            cookie = c2.socket.cookie
            cli.close_connection()
            srv.close_connection()
        offset[0] = 200.0
        third = m.snapshot()
        assert cookie not in {o.socket.cookie for o in third.sockets}
        assert cookie not in m._seen  # forgotten, not kept forever


def test_closed_after_poll_counts_for_owner_identity(monitor: SocketMonitor) -> None:
    monitor.start(3600)  # listeners now; the poller polls once, then sleeps
    finals: list[SocketInfo] = []  # a second listener, to compare with the raw finals
    witness = DestroyListener(finals.append)
    witness.start()
    with contextlib.ExitStack() as stack:
        stack.callback(witness.close)
        srv = stack.enter_context(loopback.server(socket.AF_INET))
        cli = stack.enter_context(loopback.client(srv))
        snap = monitor.snapshot()
        c = find(snap, cli.local_port, srv.port)
        cli_ident = c.owners[0].process.identity
        srv_ident = find(snap, srv.port, cli.local_port).owners[0].process.identity
        cli.send(3_000_000)
        assert srv.wait_received(3_000_000) == 3_000_000
        cli.close_connection()
        srv.expect("EOF")  # the client's FIN has arrived
        srv.close_connection()  # the accepted socket and the listener
        assert cli.exit() == 0 and srv.exit() == 0

        def closed() -> dict[ProcessIdentity, ClosedTotals]:
            t = monitor.closed_totals()
            return (
                t if cli_ident in t and t.get(srv_ident, ClosedTotals(0, 0, 0)).sockets == 2 else {}
            )

        totals = wait_for(closed)
        (final,) = wait_for(lambda: [f for f in finals if f.cookie == c.socket.cookie])
    assert totals, monitor.stats()
    # The final counters are what the owner got: bytes_sent is exactly 3,000,000
    # (retransmitted bytes excluded); the FIN adds nothing to it, while
    # bytes_acked counts the SYN and the FIN.
    assert final.bytes_acked == 3_000_002
    assert final.bytes_sent == 3_000_000
    assert totals[cli_ident] == ClosedTotals(1, final.bytes_sent, final.bytes_received or 0)
    # The client closed first; whether the server's FIN (+1 received) reached its
    # orphaned socket before the kernel freed it depends on timing.
    assert totals[cli_ident].bytes_received in (0, 1)
    # The accepted socket received 3,000,000 bytes and the client's FIN (+1); the
    # listener was seen by the poll too and closes with zero bytes.
    assert totals[srv_ident] == ClosedTotals(2, 0, 3_000_001)
    info = monitor.closed_process_info(cli_ident)
    assert info is not None and info.identity == cli_ident and "client" in info.cmdline
    stats = monitor.stats()
    assert stats["destroy_events"] >= 3 and stats["destroy_lost"] == 0
    assert c.socket.cookie not in monitor._seen


def test_reset_connection_keeps_the_bytes_a_poll_saw(monitor: SocketMonitor) -> None:
    monitor.start(3600)
    with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as cli:
        cli.send(500_000)
        srv.wait_received(500_000)
        ident = wait_for(
            lambda: (
                o.owners[0].process.identity
                if (o := find(monitor.snapshot(), cli.local_port, srv.port)).socket.bytes_acked
                == 500_001
                else None
            )
        )
        assert ident is not None
        cli.ask("reset", "RESET")
        totals = wait_for(lambda: monitor.closed_totals().get(ident))
    # The kernel zeroes the counters of a reset socket (tcp_disconnect) before the
    # destroy notification; the monitor keeps what its last poll saw.
    assert totals == ClosedTotals(1, 500_000, 0)


def test_destroy_during_a_poll_waits_for_that_polls_view() -> None:
    # The clock is read inside the poll: a clock that ingests a destroy
    # notification stands in for a listener thread firing mid-poll.
    during: list[SocketInfo] = []

    def clock() -> float:
        while during:
            m.ingest_destroyed(during.pop())
        return time.time()

    alive = socket.create_server(("127.0.0.1", 0))
    gone = socket.create_server(("127.0.0.1", 0))
    with alive, SocketMonitor(clock=clock) as m:
        first = m.snapshot()
        a = find(first, alive.getsockname()[1], 0)
        g = find(first, gone.getsockname()[1], 0)
        me = a.owners[0].process.identity
        assert me.pid == os.getpid()
        gone.close()
        # One socket the running poll will see, one only the previous poll saw.
        during[:] = [
            a.socket._replace(inode=0, uid=0, bytes_sent=5),
            g.socket._replace(inode=0, uid=0, bytes_sent=7),
        ]
        m.snapshot()
        assert not during
        assert m.closed_totals()[me] == ClosedTotals(2, 12, 0)
        assert m.unattributed_closed() == {}
        assert a.socket.cookie not in m._seen and g.socket.cookie not in m._seen


def test_closed_without_poll_is_unattributed(monitor: SocketMonitor) -> None:
    monitor.start(3600)
    monitor.snapshot()  # the poller's first poll is over (or this was it): no more polls
    before = monitor.unattributed_closed().get(UNKNOWN_UID, ClosedTotals(0, 0, 0))
    srv = socket.create_server(("::1", 0), family=socket.AF_INET6)
    c = socket.create_connection(srv.getsockname()[:2])
    a, _ = srv.accept()
    c.sendall(b"q" * 500_000)
    n = 0
    while n < 500_000:
        n += len(a.recv(1 << 20))
    for s in (c, a, srv):
        s.close()

    def grown() -> Optional[ClosedTotals]:
        t = monitor.unattributed_closed().get(UNKNOWN_UID)
        return t if t is not None and t.sockets >= before.sockets + 3 else None

    after = wait_for(grown)
    assert after is not None, monitor.stats()
    # Destroy notifications carry uid 0 whoever owned the socket: unknown, not root.
    assert after.bytes_sent - before.bytes_sent >= 500_000
    assert after.bytes_received - before.bytes_received >= 500_000


def test_seen_but_ownerless_socket_is_unattributed_under_its_uid(monitor: SocketMonitor) -> None:
    monitor.start(3600)
    nobody = loopback.NOBODY
    srv_cm = loopback.server(socket.AF_INET, user=nobody, accept=False)
    with srv_cm as srv, loopback.client(srv) as cli:
        cli.send(1000)

        def queued() -> Optional[ObservedSocket]:
            # The connection waits in the accept queue: a socket with no fd.
            o = find(monitor.snapshot(), srv.port, cli.local_port)
            return o if o.socket.bytes_received == 1000 else None

        o = wait_for(queued)
        assert o is not None and o.owners == () and o.socket.inode == 0
        assert o.socket.uid == nobody  # inherited from the listener
        before = monitor.unattributed_closed().get(nobody, ClosedTotals(0, 0, 0))
        srv.exit()  # the listener closes and frees the queued connection

        def freed() -> Optional[ClosedTotals]:
            t = monitor.unattributed_closed().get(nobody)
            return t if t is not None and t.sockets > before.sockets else None

        after = wait_for(freed)
        assert after is not None
        assert after.sockets == before.sockets + 1
        # Freed through tcp_disconnect(), which zeroes the final counters: the
        # 1000 bytes are the ones the poll saw.
        assert after.bytes_received == before.bytes_received + 1000


def test_connection_in_another_network_namespace(monitor: SocketMonitor) -> None:
    host = netns.own_namespace()
    monitor.start(3600)
    with loopback.server(socket.AF_INET, prefix=loopback.netns_prefix(), lo_up=True) as srv:
        ns = netns.namespace_of(srv.pid)
        assert ns is not None and ns != host
        with loopback.client(srv, prefix=loopback.enter_netns_prefix(srv.pid)) as cli:
            assert netns.namespace_of(cli.pid) == ns
            cli.send(2_000_000)
            assert srv.wait_received(2_000_000) == 2_000_000
            snap = wait_for(
                lambda: (
                    s
                    if find(
                        s := monitor.snapshot(), cli.local_port, srv.port, ns
                    ).socket.bytes_acked
                    == 2_000_001
                    else None
                )
            )
            assert snap is not None
            c = find(snap, cli.local_port, srv.port, ns)
            s = find(snap, srv.port, cli.local_port, ns)
            assert c.net_namespace == s.net_namespace == ns
            # bytes_sent excludes retransmits (which a busy machine causes even on
            # loopback), so like bytes_acked and bytes_received it is exact.
            assert c.socket.bytes_acked == 2_000_001 and s.socket.bytes_received == 2_000_000
            assert c.socket.bytes_sent == 2_000_000
            assert owner_of(c) == (cli.pid, cli.fd)
            assert owner_of(s) == (srv.pid, srv.accepted())
            assert monitor.stats()["namespaces"] >= 2
            # The destroy listener inside that namespace reports its closes.
            ident = c.owners[0].process.identity
            cli.close_connection()
            totals = wait_for(lambda: monitor.closed_totals().get(ident))
            assert totals is not None and totals.sockets == 1
            assert totals.bytes_sent >= 2_000_000


def test_namespace_helpers() -> None:
    host = netns.own_namespace()
    with loopback.server(socket.AF_INET, prefix=loopback.netns_prefix(), lo_up=True) as srv:
        ns = netns.namespace_of(srv.pid)
        assert ns is not None and ns != host
        found = netns.list_namespaces()
        assert host in found and netns.namespace_of(found[ns]) == ns
        # The worker thread is in the namespace; the calling thread never is.
        inside = netns.run_in_namespace(
            srv.pid, ns, lambda: os.stat("/proc/thread-self/ns/net").st_ino
        )
        assert inside == ns
        assert os.stat("/proc/thread-self/ns/net").st_ino == host
        with pytest.raises(OSError):  # the pid is not in that namespace (any more)
            netns.run_in_namespace(srv.pid, host, lambda: None)
        closed: list[int] = []

        def close(s: socket.socket) -> None:
            closed.append(s.fileno())
            s.close()

        cache: netns.NamespaceSockets[socket.socket] = netns.NamespaceSockets(
            lambda _ino: socket.socket(socket.AF_INET, socket.SOCK_STREAM), close
        )
        sock = cache.get(ns, srv.pid)
        assert cache.get(ns, srv.pid) is sock  # cached per namespace
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        ino = os.fstat(sock.fileno()).st_ino
        # Created inside: the namespace's dump has it, the host's does not.
        diag_sock = netns.run_in_namespace(srv.pid, ns, open_sock_diag_socket)
        with SockDiag(diag_sock) as inside_diag, SockDiag() as host_diag:
            assert ino in {r.inode for r in inside_diag.dump_tcp()}
            assert ino not in {r.inode for r in host_diag.dump_tcp()}
        assert cache.prune(netns.list_namespaces()) == []
        srv.exit()
    assert cache.prune(netns.list_namespaces()) == [ns] and len(closed) == 1
    cache.close()


def _spawn_client_with_pid(
    lst: socket.socket, pid: Optional[int]
) -> tuple[loopback.Client, socket.socket]:
    """A client peer connected to ``lst`` and the accepted socket; with ``pid``,
    the kernel is steered to hand out that pid again (root only)."""
    for _ in range(20):
        if pid is not None:
            # ns_last_pid: the kernel gives the next fork last+1 (if free).
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        cli = loopback.Client(socket.AF_INET, lst.getsockname()[1])
        conn, _ = lst.accept()
        if pid is None or cli.pid == pid:
            return cli, conn
        conn.close()
        cli.exit()
    pytest.skip("could not get the same pid back (busy machine)")


def test_pid_reuse_with_real_processes(monitor: SocketMonitor) -> None:
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("needs root to steer pid allocation")
    monitor.start(3600)
    lst = socket.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]
    totals: dict[int, tuple[ProcessIdentity, int]] = {}
    try:
        pid: Optional[int] = None
        for n, size in enumerate((1111, 2222)):
            cli, conn = _spawn_client_with_pid(lst, pid)
            with conn:
                cli.send(size)
                got = 0
                while got < size:
                    got += len(conn.recv(65536))
                o = find(monitor.snapshot(), cli.local_port, port)
                ident = o.owners[0].process.identity
                assert ident.pid == cli.pid
                assert cli.exit() == 0  # closing by exiting: the kernel destroys the socket
            totals[n] = (ident, size)
            pid = cli.pid

            def is_closed(ident: ProcessIdentity = ident) -> bool:
                return ident in monitor.closed_totals()

            assert wait_for(is_closed)
    finally:
        lst.close()
    (a, sa), (b, sb) = totals[0], totals[1]
    assert a.pid == b.pid and a.start_ticks != b.start_ticks
    closed = monitor.closed_totals()
    # (bytes_received is 0 or 1: the FIN of the accepted side may arrive first.)
    assert (closed[a].sockets, closed[a].bytes_sent) == (1, sa)
    assert (closed[b].sockets, closed[b].bytes_sent) == (1, sb)
    info_a, info_b = monitor.closed_process_info(a), monitor.closed_process_info(b)
    assert info_a is not None and info_b is not None and info_a.identity != info_b.identity


def test_pid_reuse_simulated_through_identities(fake_proc_ns: FakeProc) -> None:
    """A fake procfs claims pid 4242 holds a real socket, then (new start ticks)
    another one; totals of the two processes must stay apart."""
    fake = fake_proc_ns
    l1 = socket.create_server(("127.0.0.1", 0))
    l2 = socket.create_server(("127.0.0.1", 0))
    with l1, l2, SocketMonitor(proc_root=str(fake.root)) as m:
        fake.add(4242, 5000, {3: f"socket:[{os.fstat(l1.fileno()).st_ino}]"})
        o1 = find(m.snapshot(), l1.getsockname()[1], 0)
        ident1 = o1.owners[0].process.identity
        m.ingest_destroyed(o1.socket._replace(inode=0, uid=0, bytes_sent=100))
        fake.add(4242, 7000, {3: f"socket:[{os.fstat(l2.fileno()).st_ino}]"})
        o2 = find(m.snapshot(), l2.getsockname()[1], 0)
        ident2 = o2.owners[0].process.identity
        m.ingest_destroyed(o2.socket._replace(inode=0, uid=0, bytes_sent=200))
        assert (ident1.pid, ident2.pid) == (4242, 4242)
        assert (ident1.start_ticks, ident2.start_ticks) == (5000, 7000)
        closed = m.closed_totals()
        assert closed[ident1] == ClosedTotals(1, 100, 0)
        assert closed[ident2] == ClosedTotals(1, 200, 0)
        info1, info2 = m.closed_process_info(ident1), m.closed_process_info(ident2)
        assert info1 is not None and info2 is not None
        assert info2.start_time - info1.start_time == 2000 // m.procfs.clock_ticks
        # A destroyed socket nobody polled: kept by (unknown) uid, not given to pid 4242.
        ghost = o1.socket._replace(cookie=2**63 - 1, bytes_sent=7)
        m.ingest_destroyed(ghost)
        assert m.unattributed_closed()[UNKNOWN_UID].bytes_sent >= 7
        assert m.closed_totals() == closed


def test_closed_totals_are_bounded(fake_proc_ns: FakeProc) -> None:
    fake = fake_proc_ns
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    try:
        for i, s in enumerate(servers):
            fake.add(5000 + i, 100 + i, {3: f"socket:[{os.fstat(s.fileno()).st_ino}]"})
        with SocketMonitor(proc_root=str(fake.root), max_identities=2) as m:
            snap = m.snapshot()
            observed = [find(snap, s.getsockname()[1], 0) for s in servers]
            idents = [o.owners[0].process.identity for o in observed]
            for o in observed:
                m.ingest_destroyed(o.socket._replace(bytes_sent=1))
            assert list(m.closed_totals()) == idents[1:]
            assert m.closed_process_info(idents[0]) is None
            assert m.stats()["evicted"] == 1
    finally:
        for s in servers:
            s.close()


def test_non_root_sees_only_its_own_owners() -> None:
    with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as cli:
        root_pairs = {(cli.local_port, srv.port), (srv.port, cli.local_port), (srv.port, 0)}

        def as_nobody() -> dict[str, object]:
            lst = socket.create_server(("127.0.0.1", 0))
            c = socket.create_connection(lst.getsockname())
            a, _ = lst.accept()
            with SocketMonitor() as m:
                m.start(3600)
                snap = m.snapshot()
                mine = find(snap, c.getsockname()[1], lst.getsockname()[1])
                theirs = [
                    o
                    for o in snap.sockets
                    if (o.socket.local_port, o.socket.remote_port) in root_pairs
                    and o.socket.protocol == socket.IPPROTO_TCP
                ]
                out = {
                    "uid": os.getuid(),
                    "mine": [[w.process.identity.pid, w.fd] for w in mine.owners],
                    "expected": [os.getpid(), c.fileno()],
                    "theirs": len(theirs),
                    "theirs_owned": sum(1 for o in theirs if o.owners),
                    "unreadable": snap.unreadable_processes,
                    "warnings": list(snap.warnings),
                    "stats": m.stats(),
                }
            for s in (c, a, lst):
                s.close()
            return out

        got = loopback.run_as_user(as_nobody)
    assert got["uid"] == loopback.NOBODY
    assert got["mine"] == [got["expected"]]
    assert got["theirs"] == 3 and got["theirs_owned"] == 0  # never guessed
    assert isinstance(got["unreadable"], int) and got["unreadable"] > 0
    warnings = got["warnings"]
    assert isinstance(warnings, list) and any("unreadable" in w for w in warnings)


def test_start_close_are_prompt_and_idempotent() -> None:
    m = SocketMonitor()
    m.start(0.05)
    m.start(0.05)
    wait_for(lambda: m.stats()["polls"] >= 2, timeout=10)
    t = time.monotonic()
    m.close()
    assert time.monotonic() - t < 2.0
    m.close()
    with pytest.raises(RuntimeError):
        m.snapshot()
    s = m.stats()
    assert set(s) == {
        "polls",
        "destroy_events",
        "destroy_lost",
        "evicted",
        "unresolved_sockets",
        "namespaces",
    }
    assert s["polls"] >= 2


def test_concurrent_snapshots_are_consistent(monitor: SocketMonitor) -> None:
    import threading

    results: list[MonitorSnapshot] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(3):
                results.append(monitor.snapshot())
        except BaseException as e:
            errors.append(e)

    monitor.start(0.01)
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 9
    for snap in results:
        cookies = [o.socket.cookie for o in snap.sockets]
        assert len(cookies) == len(set(cookies))


def test_owner_image_follows_an_exec(monitor: SocketMonitor) -> None:
    """An exec keeps pid, start ticks and inherited sockets but changes the image."""
    import subprocess
    import sys

    sleep = os.path.realpath("/bin/sleep")
    code = (
        "import os, socket, sys\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "s.set_inheritable(True)\n"
        "print(s.getsockname()[1], flush=True)\n"
        "sys.stdin.readline()\n"
        f"os.execv({sleep!r}, ['sleep', '30'])\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None and p.stdin is not None
        port = int(p.stdout.readline())

        def owner_path() -> Optional[str]:
            for o in monitor.snapshot().sockets:
                if o.socket.local_port == port:
                    for w in o.owners:
                        if w.process.identity.pid == p.pid:
                            return w.process.path
            return None

        assert owner_path() == os.path.realpath(sys.executable)
        p.stdin.write("go\n")
        p.stdin.flush()
        deadline = time.monotonic() + 10
        while owner_path() != sleep and time.monotonic() < deadline:
            time.sleep(0.05)
        assert owner_path() == sleep
    finally:
        p.kill()
        p.wait()


def test_malloc_trim_gives_freed_memory_back() -> None:
    """glibc keeps freed blocks; trim hands whole free pages back (no-op elsewhere)."""
    from readegress.kernel import memory

    if not memory.trim():
        pytest.skip("no glibc malloc_trim here")

    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    blocks = [bytearray(600) for _ in range(100_000)]  # ~64 MB of malloc'd blocks
    keep = blocks[::1000]  # a few survivors pin the heap top, as in real use
    before = rss_kb()
    del blocks
    memory.trim()
    assert rss_kb() < before - 30_000
    assert len(keep) == 100
