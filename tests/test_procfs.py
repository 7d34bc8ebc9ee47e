"""procfs: identities, process details and the incremental socket-inode map.

Real processes and real /proc, except where a test needs content the kernel
will not produce on demand (pid reuse, an unreadable fd directory as seen by
a non-root user on a tree we control): those use a fake procfs root.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loopback
from readegress.kernel import procfs
from readegress.kernel.procfs import (
    ProcFs,
    SocketInodeMap,
    parse_stat,
    parse_stat_fields,
    read_proc_file,
)
from readegress.kernel.records import ProcessIdentity
from readegress.kernel.sockdiag import SockDiag

if TYPE_CHECKING:
    from conftest import FakeProc

WEIRD_COMM = "a) b (c"


def _live_inodes() -> set[int]:
    with SockDiag() as d:
        return {s.inode for s in d.dump_all() if s.inode}


def test_boot_facts() -> None:
    bid = procfs.boot_id()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", bid)
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    assert abs(procfs.boot_time() - (time.time() - uptime)) < 2
    assert procfs.clock_ticks() == os.sysconf("SC_CLK_TCK")


def test_start_ticks_after_last_paren_with_weird_comm() -> None:
    with loopback.server(socket.AF_INET) as srv:
        srv.ask(f"comm {WEIRD_COMM}", "COMM")
        raw = Path(f"/proc/{srv.pid}/stat").read_bytes()
        assert f"({WEIRD_COMM})".encode() in raw
        ppid, flags, ticks = procfs.parse_stat(raw)
        assert ppid == os.getpid() and not flags & procfs.PF_KTHREAD
        # psutil derives create_time from the same field (parsed after the last ')').
        pfs = ProcFs()
        created = psutil.Process(srv.pid).create_time()
        assert abs(pfs.boot_time + ticks / pfs.clock_ticks - created) < 0.02
        assert procfs.read_start_ticks(srv.pid) == ticks == procfs.parse_start_ticks(raw)
        info = pfs.process_info_for_pid(srv.pid)
        assert info is not None
        assert info.name == WEIRD_COMM
        assert info.identity == ProcessIdentity(pfs.boot_id, srv.pid, ticks)
        assert info.ppid == os.getpid() and info.uid == os.getuid()
        assert info.path == os.path.realpath(sys.executable)
        assert info.cmdline.split()[1:3] == [loopback.HERE, "server"]
        assert info.start_time == pfs.boot_time + ticks // pfs.clock_ticks


def test_process_info_is_none_for_gone_or_reused_processes() -> None:
    pfs = ProcFs()
    with loopback.server(socket.AF_INET) as srv:
        ident = pfs.identity(srv.pid)
        assert ident is not None and pfs.process_info(ident) is not None
        # Same pid, other start ticks: a different process, so no details.
        other = ProcessIdentity(ident.boot_id, ident.pid, ident.start_ticks + 1)
        assert pfs.process_info(other) is None
        srv.exit()
    assert pfs.process_info(ident) is None
    assert procfs.read_start_ticks(srv.pid) is None
    assert pfs.identity(srv.pid) is None
    assert procfs.socket_inodes_of(srv.pid) == {}


def test_socket_inode_map_finds_real_owners() -> None:
    m = SocketInodeMap()
    pfs = ProcFs()
    with loopback.server(socket.AF_INET6) as srv, loopback.client(srv) as cli:
        udp_fd, _port = map(int, cli.ask("udp", "UDP"))
        cli_fds = procfs.socket_inodes_of(cli.pid)
        srv_fds = procfs.socket_inodes_of(srv.pid)
        m.refresh(_live_inodes())
        cli_ident = pfs.identity(cli.pid)
        srv_ident = pfs.identity(srv.pid)
        assert m.owners_of(cli_fds[cli.fd]) == ((cli_ident, cli.fd),)
        assert m.owners_of(cli_fds[udp_fd]) == ((cli_ident, udp_fd),)
        assert m.owners_of(srv_fds[srv.listen_fd]) == ((srv_ident, srv.listen_fd),)
        assert m.owners_of(srv_fds[srv.accepted()]) == ((srv_ident, srv.conn_fd),)
        ids = m.identities()
        assert ids[cli.pid] == cli_ident and 2 not in ids  # kthreadd: kernel thread, skipped
        assert m.unreadable == 0  # root reads every fd directory
        # A warm refresh does not re-read the peers' descriptors.
        m.refresh(_live_inodes())
        assert m.owners_of(cli_fds[cli.fd]) == ((cli_ident, cli.fd),)
        assert m.identities()[cli.pid] is ids[cli.pid]  # the cached process was kept


def test_socket_inode_map_reads_many_new_fds_relative_to_the_fd_directory() -> None:
    """A process with many new descriptors (read with readlinkat from its fd
    directory) and then a few (read by full path): every socket found, with its fd."""
    assert procfs._READLINKAT_FROM <= 40
    m = SocketInodeMap()
    me = os.getpid()
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        socks = []
        for _ in range(20):
            socks.append(stack.enter_context(socket.create_connection(srv.getsockname())))
            socks.append(stack.enter_context(srv.accept()[0]))
        mine = procfs.socket_inodes_of(me)
        m.refresh(_live_inodes())
        ident = m.identities()[me]
        for s in socks:
            assert m.owners_of(mine[s.fileno()]) == ((ident, s.fileno()),)
        few = [stack.enter_context(socket.create_connection(srv.getsockname())) for _ in range(2)]
        mine = procfs.socket_inodes_of(me)
        m.refresh(_live_inodes())
        for s in few:
            assert m.owners_of(mine[s.fileno()]) == ((ident, s.fileno()),)
        gone = mine[socks[0].fileno()]
        socks[0].close()
        m.refresh(_live_inodes())
        assert m.owners_of(gone) == ()


def test_socket_inode_map_follows_real_fd_reuse() -> None:
    m = SocketInodeMap()
    with loopback.server(socket.AF_INET) as srv:
        (fd,) = map(int, srv.ask("open", "OPEN"))  # /dev/null
        m.refresh(_live_inodes())
        ident = m.identities()[srv.pid]
        # The number of a closed file comes back as a socket: cached as "not a socket".
        srv.ask(f"closefd {fd}", "CLOSEDFD")
        udp_fd, _ = map(int, srv.ask("udp", "UDP"))
        assert udp_fd == fd
        udp_ino = procfs.socket_inodes_of(srv.pid)[fd]
        m.refresh(_live_inodes())
        assert m.owners_of(udp_ino) == ((ident, fd),)
        # The same number again, now a closed socket replaced by another one.
        srv.ask(f"closefd {fd}", "CLOSEDFD")
        lfd, _ = map(int, srv.ask("listen", "LISTEN2"))
        assert lfd == fd
        new_ino = procfs.socket_inodes_of(srv.pid)[fd]
        m.refresh(_live_inodes())
        assert m.owners_of(new_ino) == ((ident, fd),)
        assert m.owners_of(udp_ino) == ()


def test_fd_count_shortcut_still_finds_sockets_behind_moved_numbers() -> None:
    m = SocketInodeMap()
    assert m.fd_counts  # Linux >= 6.2: stat() of an fd directory gives the count
    with loopback.server(socket.AF_INET) as srv:
        a, _b, c = (int(srv.ask("open", "OPEN")[0]) for _ in range(3))
        srv.ask(f"closefd {a}", "CLOSEDFD")  # a hole below b and c
        m.refresh(_live_inodes())  # the first refresh lists everything
        ident = m.identities()[srv.pid]
        for _ in range(5):  # (a socket appearing elsewhere on the host forces a listing)
            m.refresh(_live_inodes())
            if srv.pid not in m.listed:
                break
        assert srv.pid not in m.listed  # count unchanged: not listed again
        # Same count, other numbers: c closes, a socket takes the hole at a.
        srv.ask(f"closefd {c}", "CLOSEDFD")
        udp_fd, _ = map(int, srv.ask("udp", "UDP"))
        assert udp_fd == a
        udp_ino = procfs.socket_inodes_of(srv.pid)[a]
        m.refresh(_live_inodes())
        assert m.owners_of(udp_ino) == ((ident, a),)
        assert srv.pid in m.listed  # the unexplained inode forced a full listing


# ------------------------------------------------------------------ fake procfs


def test_fake_map_is_incremental(fake_proc: FakeProc) -> None:
    fake = fake_proc
    fake.add(100, 5000, {0: "/dev/null", 3: "socket:[1000]", 4: "socket:[1001]"})
    fake.add(200, 6000, {3: "pipe:[77]", 9: "socket:[1002]"})
    m = SocketInodeMap(str(fake.root))
    live = {1000, 1001, 1002}
    m.refresh(live)
    assert m.readlinks == 5
    boot = "00000000-1111-2222-3333-444444444444"
    a = ProcessIdentity(boot, 100, 5000)
    b = ProcessIdentity(boot, 200, 6000)
    assert m.owners_of(1000) == ((a, 3),) and m.owners_of(1002) == ((b, 9),)
    held = m.owners_of(1000)
    m.refresh(live)
    assert m.readlinks == 0  # nothing new: no readlink at all
    assert m.owners_of(1000) is held  # unchanged entries keep their tuple
    fake.relink(100, 5, "socket:[1003]")
    m.refresh(live | {1003})
    assert m.readlinks == 1 and m.owners_of(1003) == ((a, 5),)
    # A closed fd disappears without any readlink.
    (fake.root / "100/fd/5").unlink()
    m.refresh(live)
    assert m.readlinks == 0 and m.owners_of(1003) == ()


def test_fake_map_pid_reuse_drops_cached_descriptors(fake_proc: FakeProc) -> None:
    fake = fake_proc
    fake.add(100, 5000, {3: "socket:[1000]"})
    m = SocketInodeMap(str(fake.root))
    m.refresh({1000})
    first = m.identities()[100]
    # Same pid, same fd number, later start ticks: a new process.
    fake.add(100, 7000, {3: "socket:[2000]"})
    m.refresh({2000})
    second = m.identities()[100]
    assert (first.pid, second.pid) == (100, 100) and first != second
    assert second.start_ticks == 7000
    assert m.owners_of(2000) == ((second, 3),) and m.owners_of(1000) == ()
    assert m.readlinks == 1  # re-read because of the identity change, not a stale check


def test_fake_map_detects_stale_entries_cheaply(fake_proc: FakeProc) -> None:
    fake = fake_proc
    fake.add(100, 5000, {0: "/dev/null", 1: "/dev/null", 3: "socket:[1000]", 4: "socket:[1001]"})
    m = SocketInodeMap(str(fake.root))
    m.refresh({1000, 1001})
    ident = m.identities()[100]
    # fd 3: its socket closed and the number was reused by a new socket.
    fake.relink(100, 3, "socket:[2000]")
    m.refresh({1001, 2000})
    assert m.owners_of(2000) == ((ident, 3),)
    assert m.readlinks == 1  # only fd 3: its old inode left the dump
    # fd 0: a file number reused by a socket; found by re-reading non-socket fds once.
    fake.relink(100, 0, "socket:[3000]")
    m.refresh({1001, 2000, 3000})
    assert m.owners_of(3000) == ((ident, 0),)
    assert m.readlinks == 2  # fds 0 and 1 (the only ones not holding a live socket)
    # A live inode nobody holds (e.g. a socket of an unreadable process) is searched once.
    m.refresh({1001, 2000, 3000, 4242})
    assert m.readlinks == 1 and m.owners_of(4242) == ()
    m.refresh({1001, 2000, 3000, 4242})
    assert m.readlinks == 0


def test_fake_map_searches_reused_numbers_only_in_the_sockets_uid(fake_proc: FakeProc) -> None:
    fake = fake_proc
    fake.add(100, 5000, {0: "/dev/null", 1: "/dev/null", 3: "socket:[1000]"})
    fake.add(200, 6000, {0: "/dev/null", 1: "/dev/null", 2: "/dev/null"})
    os.chown(fake.root / "100/fd", 1000, 1000)  # the fd directory's owner: the euid
    os.chown(fake.root / "200/fd", 2000, 2000)
    m = SocketInodeMap(str(fake.root))
    m.refresh({1000}, {1000: 1000})
    a = m.identities()[100]
    fake.relink(100, 0, "socket:[3000]")  # a file's number reused by a socket
    m.refresh({1000, 3000}, {1000: 1000, 3000: 1000})
    assert m.owners_of(3000) == ((a, 0),)
    assert m.readlinks == 2  # fds 0 and 1 of uid 1000's process; uid 2000's untouched
    # A socket created by uid 2000 but held by uid 1000's process (passed over a
    # unix socket): not searched there, so left without owner rather than guessed.
    fake.relink(100, 1, "socket:[4000]")
    m.refresh({1000, 3000, 4000}, {1000: 1000, 3000: 1000, 4000: 2000})
    assert m.owners_of(4000) == () and m.readlinks == 3  # only uid 2000's fds


def test_fake_process_info(fake_proc: FakeProc) -> None:
    fake = fake_proc
    fake.add(100, 5000, {}, comm="x) y")
    pfs = ProcFs(str(fake.root))
    info = pfs.process_info_for_pid(100)
    assert info is not None
    assert (info.name, info.path, info.cmdline, info.uid, info.ppid) == (
        "x) y",
        "/usr/bin/fake",
        "fake --flag",
        1000,
        1,
    )
    assert info.start_time == 1700000000 + 5000 // pfs.clock_ticks
    assert pfs.process_info_for_pid(101) is None


def test_fake_unreadable_fd_dirs_are_counted_not_guessed(
    world_readable_fake_proc: FakeProc,
) -> None:
    fake = world_readable_fake_proc
    fake.add(100, 5000, {3: "socket:[1000]"})
    fake.add(200, 6000, {3: "socket:[2000]"})
    for p in fake.root.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)
    os.chmod(fake.root / "100/fd", 0)  # like another user's fd directory

    def as_nobody() -> dict[str, object]:
        m = SocketInodeMap(str(fake.root))
        m.refresh({1000, 2000})
        return {
            "unreadable": m.unreadable,
            "pids": sorted(m.identities()),
            "owners_1000": m.owners_of(1000),
            "owners_2000": [[i.pid, fd] for i, fd in m.owners_of(2000)],
        }

    got = loopback.run_as_user(as_nobody)
    assert got == {"unreadable": 1, "pids": [200], "owners_1000": [], "owners_2000": [[200, 3]]}
    # Root reads both (the permission bits do not stop CAP_DAC_OVERRIDE).
    assert stat.S_IMODE(os.stat(fake.root / "100/fd").st_mode) == 0
    m = SocketInodeMap(str(fake.root))
    m.refresh({1000, 2000})
    assert m.unreadable == 0 and m.owners_of(1000)


@settings(max_examples=300, deadline=None)
@given(
    comm=st.binary(max_size=16).filter(lambda b: b"\n" not in b),
    nums=st.lists(st.integers(0, 2**40), min_size=6, max_size=6),
)
def test_stat_fields_survive_any_comm(comm: bytes, nums: list[int]) -> None:
    """comm may hold spaces and parentheses: fields are counted after the last ')'."""
    ppid, pgrp, sid, flags, ticks, pid = nums
    fields = [b"S", ppid, pgrp, sid, 0, -1, flags] + [7] * 12 + [ticks, 1, 2]
    data = b"%d (%s) " % (pid, comm) + b" ".join(
        f if isinstance(f, bytes) else str(f).encode() for f in fields
    )
    got = parse_stat_fields(data)
    assert got == (comm, ppid, pgrp, sid, flags, ticks)
    assert parse_stat(data) == (ppid, flags, ticks)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_stat_fields_of_garbage_raise_value_or_index_errors(data: bytes) -> None:
    # Anything else (a TypeError, an infinite loop) would fail the test.
    with contextlib.suppress(ValueError, IndexError):
        parse_stat_fields(data)


def test_stat_fields_match_getpgid_and_getsid_of_this_process() -> None:
    got = parse_stat_fields(read_proc_file(f"/proc/{os.getpid()}/stat"))
    assert (got.ppid, got.pgrp, got.session) == (os.getppid(), os.getpgid(0), os.getsid(0))
    assert got.comm == read_proc_file(f"/proc/{os.getpid()}/comm").rstrip(b"\n")


@pytest.mark.parametrize("held", [True, False])
def test_opener_reaped_after_release_keeps_what_was_read_while_it_waited(
    fake_proc: FakeProc, held: bool
) -> None:
    """A permission-held opener is answered after stat, cmdline and exe; if it
    exits and is reaped before status and loginuid are read, the held reads
    stand (it could not exit while it waited) and uid/auid are unknown. Without
    a hold every field is read before anything is answered."""
    from readegress.kernel.fanotify import read_opener

    fake_proc.add(4242, 777, {})
    pf = ProcFs(str(fake_proc.root))
    calls: list[str] = []

    def release() -> None:
        calls.append("released")
        fake_proc.remove(4242)  # it runs on, exits and is reaped at once

    o = read_opener(pf, 4242, release=release if held else None)
    if held:
        assert calls == ["released"]
        assert (o.start_ticks, o.executable, o.cmdline, o.ppid) == (
            777,
            "/usr/bin/fake",
            "fake --flag",
            1,
        )
        assert o.uid is None and o.auid is None and o.identified
    else:
        assert o.start_ticks == 777 and o.uid == 1000 and o.identified


def test_opener_release_is_called_once_even_when_the_process_is_gone(
    fake_proc: FakeProc,
) -> None:
    from readegress.kernel.fanotify import read_opener

    calls: list[int] = []
    o = read_opener(ProcFs(str(fake_proc.root)), 999, release=lambda: calls.append(1))
    assert calls == [1] and o.start_ticks is None


def test_std_fds_reads_pipe_and_socket_inodes_of_fd_0_and_1() -> None:
    import socket as socketlib
    import subprocess

    from readegress.kernel.procfs import read_start_ticks, std_fds, std_pipes, std_socket_state

    p = subprocess.Popen(["sleep", "30"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdin is not None and p.stdout is not None
        ticks = read_start_ticks(p.pid)
        f = std_fds(p.pid, ticks)
        assert (f.stdin_pipe, f.stdout_pipe) == (
            os.fstat(p.stdin.fileno()).st_ino,
            os.fstat(p.stdout.fileno()).st_ino,
        )
        assert f.sockets == () and std_pipes(p.pid, ticks) == (f.stdin_pipe, f.stdout_pipe)
        assert std_fds(p.pid, (ticks or 0) + 1) == std_fds(-1, None)  # another process: nothing
    finally:
        p.kill()
        p.wait()
    # A TCP socket on stdout (cat key > /dev/tcp/...): its cookie and bytes so far.
    srv = socketlib.create_server(("127.0.0.1", 0))
    a = socketlib.create_connection(srv.getsockname())
    peer, _ = srv.accept()
    with srv, a, peer:
        a.sendall(b"x" * 1234)
        q = subprocess.Popen(["sleep", "30"], stdout=a.fileno())
        try:
            f = std_fds(q.pid, read_start_ticks(q.pid))
            assert f.sockets == ((1, os.fstat(a.fileno()).st_ino),)
            if os.geteuid() == 0:  # pidfd_getfd of another process needs privilege
                cookie = int.from_bytes(a.getsockopt(socketlib.SOL_SOCKET, 57, 8), "little")
                assert std_socket_state(q.pid, f.sockets) == ((cookie, 1234),)
        finally:
            q.kill()
            q.wait()
