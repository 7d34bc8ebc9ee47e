"""fanotify watcher: real groups, real processes, real temp files (root only).

Every opener in these tests is a separate process, so a watcher that failed to
answer a permission event would show as a child stuck in open(): each child
runs under a timeout and its own open() latency is measured.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import polling
from readegress.kernel.fanotify import (
    FAN_ACCESS,
    FAN_CLASS_CONTENT,
    FAN_CLASS_NOTIF,
    FAN_CLOEXEC,
    FAN_CREATE,
    FAN_DELETE,
    FAN_EVENT_INFO_TYPE_DFID_NAME,
    FAN_EVENT_INFO_TYPE_PIDFD,
    FAN_MARK_ADD,
    FAN_MOVED_FROM,
    FAN_NOFD,
    FAN_ONDIR,
    FAN_OPEN,
    FAN_OPEN_PERM,
    FAN_Q_OVERFLOW,
    EntryEvent,
    EntryRecord,
    FanotifyEvent,
    FanotifyFormatError,
    FanotifyWatcher,
    RawEvent,
    directory_handle,
    fanotify_init,
    fanotify_mark,
    parse_entry_events,
    parse_events,
)
from readegress.kernel.procfs import read_start_ticks

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")

CAT = os.path.realpath(shutil.which("cat") or "/usr/bin/cat")

# A child that opens each path once and prints the open() latencies (seconds).
OPENER = (
    "import json, os, sys, time\n"
    "out = []\n"
    "for p in sys.argv[1:]:\n"
    "    t = time.perf_counter(); fd = os.open(p, os.O_RDONLY)\n"
    "    out.append(time.perf_counter() - t); os.close(fd)\n"
    "print(json.dumps(out))\n"
)


def wait_for(pred: Callable[[], object], timeout: float = 3.0) -> bool:
    # fanotify events arrive within milliseconds: poll finely, give up sooner.
    return bool(polling.wait_for(pred, timeout, step=0.005))


def opener(*paths: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", OPENER, *paths], stdout=subprocess.PIPE, text=True
    )


def latencies(p: subprocess.Popen[str], timeout: float = 5.0) -> list[float]:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0
    return [float(x) for x in json.loads(out)]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    (d / "id_test").write_text("k" * 321)
    (d / "notes").write_text("n")
    return d


@pytest.fixture
def collected() -> Iterator[list[FanotifyEvent]]:
    yield []


# -- the record format -------------------------------------------------------


def _record(mask: int, fd: int, pid: int, pidfd: int | None = None) -> bytes:
    info = b"" if pidfd is None else struct.pack("=BBHi", FAN_EVENT_INFO_TYPE_PIDFD, 0, 8, pidfd)
    head = struct.pack("=IBBHQii", 24 + len(info), 3, 0, 24, mask, fd, pid)
    return head + info


def test_parse_events_reads_metadata_and_pidfd_info() -> None:
    unknown_info = struct.pack("=BBH", 99, 0, 12) + b"\0" * 8
    odd = bytearray(struct.pack("=IBBHQii", 24 + 12, 3, 0, 24, FAN_ACCESS, 7, 42) + unknown_info)
    buf = (
        _record(FAN_OPEN, 5, 100, 6)
        + bytes(odd)
        + _record(FAN_Q_OVERFLOW, FAN_NOFD, 0)
        + _record(FAN_OPEN | FAN_ACCESS, 9, 101, -1)
    )
    assert parse_events(buf) == [
        RawEvent(FAN_OPEN, 5, 100, 6),
        RawEvent(FAN_ACCESS, 7, 42, None),
        RawEvent(FAN_Q_OVERFLOW, FAN_NOFD, 0, None),
        RawEvent(FAN_OPEN | FAN_ACCESS, 9, 101, -1),
    ]


def test_parse_events_refuses_unknown_version_but_returns_earlier_fds() -> None:
    bad = bytearray(_record(FAN_OPEN, 8, 1))
    bad[4] = 2  # vers
    with pytest.raises(FanotifyFormatError) as e:
        parse_events(_record(FAN_OPEN, 5, 1) + bytes(bad))
    assert e.value.events == [RawEvent(FAN_OPEN, 5, 1, None)]


# -- the kernel behaviour the watcher relies on --------------------------------


def test_kernel_allows_pending_permission_events_when_the_group_closes(files: Path) -> None:
    """Read-but-unanswered and never-read FAN_OPEN_PERM events are both allowed
    when the group fd is closed (fanotify_release)."""
    target = str(files / "id_test")
    g = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC)  # blocking reads
    try:
        fanotify_mark(g, FAN_MARK_ADD, FAN_OPEN_PERM, target)
        first = opener(target)
        events = parse_events(os.read(g, 4096))  # read, never answered
        assert [e.pid for e in events] == [first.pid]
        second = opener(target)  # its event stays unread in the queue
        time.sleep(0.2)
        assert first.poll() is None and second.poll() is None  # both held
    finally:
        t0 = time.monotonic()
        os.close(g)
        for ev in events:
            os.close(ev.fd)
    for child in (first, second):
        assert len(latencies(child)) == 1
    assert time.monotonic() - t0 < 3.0


# -- notification group --------------------------------------------------------


def test_live_reader_is_identified_and_unmarked_sibling_reported_for_filtering(
    files: Path, collected: list[FanotifyEvent]
) -> None:
    """`cat FILE -` stays alive on stdin after reading: its identity is read
    from /proc while it lives and must equal what /proc says about it."""
    target = str(files / "id_test")
    with FanotifyWatcher([target], [str(files)], [], collected.append):
        cat = subprocess.Popen([CAT, target, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: any(e.path == target for e in collected))
            ticks = read_start_ticks(cat.pid)
        finally:
            cat.communicate(b"", timeout=5)
        subprocess.run([CAT, str(files / "notes")], stdout=subprocess.DEVNULL, check=True)
        assert wait_for(lambda: any(e.path.endswith("/notes") for e in collected))
    ev = next(e for e in collected if e.path == target)
    assert ev.opener.pid == cat.pid
    assert ev.opener.executable == CAT
    assert ev.opener.start_ticks == ticks is not None
    assert ev.opener.ppid == os.getpid()
    assert ev.opener.cmdline == f"{CAT} {target} -"
    assert ev.opener.pgid == os.getpgid(0) and ev.opener.sid == os.getsid(0)
    assert ev.opener.uid == 0
    assert ev.size == 321 and ev.mask & FAN_OPEN and not ev.permission
    # The directory mark reports its other children too: callers filter.
    assert any(e.path == str(files / "notes") for e in collected)


@pytest.fixture
def many_files(tmp_path: Path) -> Iterator[list[str]]:
    # tmpfs when there is one: creating 16,600 files on a disk took 4.6 s here.
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else tmp_path
    d = Path(tempfile.mkdtemp(prefix="readegress-fanotify-", dir=base))
    names = [str(d / f"f{i}") for i in range(16600)]
    for n in names:
        os.close(os.open(n, os.O_CREAT | os.O_WRONLY, 0o600))
    try:
        yield names
    finally:
        shutil.rmtree(d)


def test_queue_overflow_is_counted(many_files: list[str]) -> None:
    """16384 queued events is the default limit: 16,600 distinct opens while the
    reader is stalled overflow it."""
    w = FanotifyWatcher([], [os.path.dirname(many_files[0])], [])
    stall = threading.Event()
    w._test_notify_stall = stall
    with w:
        for n in many_files:
            os.close(os.open(n, os.O_RDONLY))
        stall.set()
        assert wait_for(lambda: w.stats().overflows >= 1, 5.0)
    s = w.stats()
    assert s.notify_events == 16385  # the queue, then the overflow record
    assert s.self_events == 16384  # our own opens are counted, not reported
    assert s.events == 0


# -- permission group ------------------------------------------------------------


def test_permission_group_identifies_short_lived_readers(
    files: Path, collected: list[FanotifyEvent]
) -> None:
    target = str(files / "id_test")
    with FanotifyWatcher([target], [], [target], collected.append) as w:
        for _ in range(20):
            subprocess.run([CAT, target], stdout=subprocess.DEVNULL, check=True, timeout=5)
        assert wait_for(lambda: sum(e.permission for e in collected) >= 20)
        s = w.stats()
    perm = [e for e in collected if e.permission]
    assert len(perm) == 20
    assert all(e.opener.identified and e.opener.executable == CAT for e in perm)
    assert all(e.opener.cmdline == f"{CAT} {target}" for e in perm)
    assert len({e.opener.pid for e in perm}) == 20
    assert all(e.path == target and e.size == 321 for e in perm)
    # The same opens are not reported twice: the notification group ignores a
    # permission-marked file in the kernel (no event at all, nothing to drop).
    assert not [e for e in collected if not e.permission]
    assert s.covered_by_perm == 0
    assert s.perm_answered == 20 and s.perm_watchdog == 0
    assert 0 < s.perm_max_hold_us < 20_000


def test_ignore_mark_silences_a_parent_directory_mark_for_permission_files(
    files: Path, collected: list[FanotifyEvent]
) -> None:
    target = str(files / "id_test")
    other = str(files / "notes")
    with FanotifyWatcher([], [str(files)], [target], collected.append):
        for path in (target, other, target):
            subprocess.run([CAT, path], stdout=subprocess.DEVNULL, check=True, timeout=5)
        assert wait_for(lambda: any(e.path == other for e in collected))
        assert wait_for(lambda: sum(e.permission for e in collected) >= 2)
    assert [e.path for e in collected if e.permission] == [target, target]
    # The directory mark still reports the other child, never the permission file.
    assert {e.path for e in collected if not e.permission} == {other}


def test_open_latency_under_the_permission_group_stays_bounded(files: Path) -> None:
    target = str(files / "id_test")
    plain = str(files / "notes")
    with FanotifyWatcher([target], [], [target]) as w:
        held = latencies(opener(*[target] * 200))
        free = latencies(opener(*[plain] * 200))
        s = w.stats()
    held.sort()
    free.sort()
    print(
        f"\nopen() of a FAN_OPEN_PERM file: median {held[100] * 1e6:.0f} µs,"
        f" max {held[-1] * 1e6:.0f} µs; unmarked median {free[100] * 1e6:.0f} µs;"
        f" watcher max hold {s.perm_max_hold_us} µs"
    )
    assert s.perm_answered == 200
    assert held[-1] < 0.1  # budget 20 ms + scheduling


def test_watchdog_answers_when_the_reader_stalls(files: Path) -> None:
    target = str(files / "id_test")
    w = FanotifyWatcher([], [], [target], perm_budget=0.05)
    stall = threading.Event()
    w._test_stall = stall
    with w:
        try:
            lat = latencies(opener(target, target))
        finally:
            stall.set()
        assert wait_for(lambda: w.stats().perm_answered >= 2)
    s = w.stats()
    print(f"\nstalled reader: opens took {[round(x * 1e3, 1) for x in lat]} ms (budget 50 ms)")
    assert all(x < 0.5 for x in lat)
    assert s.perm_watchdog >= 1
    assert s.perm_forced_close == 0


def test_close_never_blocks_openers_even_with_a_hung_reader(files: Path) -> None:
    """No watchdog and a reader stuck while holding an event: close() answers the
    event read, then closes the group, which allows the one never read."""
    target = str(files / "id_test")
    w = FanotifyWatcher([], [], [target], close_timeout=0.2)
    stall = threading.Event()
    w._test_stall = stall
    w._test_no_watchdog = True
    w.start()
    try:
        first = opener(target)
        assert wait_for(lambda: w.stats().perm_events == 1)
        second = opener(target)
        time.sleep(0.3)
        assert first.poll() is None and second.poll() is None  # both held
        t0 = time.monotonic()
        w.close()
        closed_in = time.monotonic() - t0
        lat = latencies(first) + latencies(second)
    finally:
        stall.set()
        w.close()
    s = w.stats()
    assert closed_in < 2.0
    assert all(x < 3.0 for x in lat)
    assert s.perm_forced_close == 1
    assert s.perm_on_shutdown == 1 and s.perm_answered == 1


def test_shutdown_answers_and_stops_cleanly(files: Path) -> None:
    target = str(files / "id_test")
    w = FanotifyWatcher([target], [str(files)], [target])
    w.start()
    names = {t.name for t in threading.enumerate()}
    assert {"fanotify-perm", "fanotify-notify", "fanotify-watchdog"} <= names
    assert latencies(opener(target))
    w.close()
    assert latencies(opener(target))  # nothing marked any more
    assert not any(t.name.startswith("fanotify-") for t in threading.enumerate())
    s = w.stats()
    assert not s.running and s.perm_forced_close == 0


def test_marks_are_replaced_and_flushed(files: Path, tmp_path: Path) -> None:
    a, b = str(files / "id_test"), str(files / "notes")
    seen: list[FanotifyEvent] = []
    with FanotifyWatcher([a], [], [], seen.append) as w:
        ch = w.set_marks([b, str(tmp_path / "missing")], [], [])
        assert (ch.files, ch.removed, ch.errors) == (1, 1, {"ENOENT": 1})
        subprocess.run([CAT, a, b], stdout=subprocess.DEVNULL, check=True)
        assert wait_for(lambda: any(e.path == b for e in seen))
        w.flush_marks()
        assert w.stats().marks_files == 0
        after = subprocess.Popen([CAT, b], stdout=subprocess.DEVNULL)
        after.wait(5)
        time.sleep(0.1)
    assert all(e.path != a for e in seen)
    assert all(e.pid != after.pid for e in seen)


def test_notification_group_alone_can_be_created() -> None:
    fd = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC)
    os.close(fd)


def test_repeat_opens_by_one_process_are_allowed_without_a_new_identity(
    files: Path, collected: list[FanotifyEvent]
) -> None:
    target = str(files / "id_test")
    with FanotifyWatcher([target], [], [target], collected.append) as w:
        p = opener(*[target] * 10)
        latencies(p)
        assert wait_for(lambda: any(e.permission for e in collected))
        time.sleep(0.1)
        s = w.stats()
    perm = [e for e in collected if e.permission]
    assert len(perm) == 1 and perm[0].opener.pid == p.pid
    assert s.perm_answered == 10 and s.perm_repeats == 9


# -- entry events (FAN_REPORT_DFID_NAME) ----------------------------------------


def _entry_record(mask: int, fsid: tuple[int, int], handle: bytes, name: bytes) -> bytes:
    """One record as the kernel writes it: metadata, then a DFID_NAME info record
    (fsid, struct file_handle, NUL-terminated name, padded to 4 bytes)."""
    htype, hbytes = struct.unpack_from("=i", handle)[0], handle[4:]
    body = struct.pack("=ii", *fsid) + struct.pack("=Ii", len(hbytes), htype) + hbytes
    body += name + b"\0"
    body += b"\0" * (-(4 + len(body)) % 4)
    info = struct.pack("=BBH", FAN_EVENT_INFO_TYPE_DFID_NAME, 0, 4 + len(body)) + body
    return struct.pack("=IBBHQii", 24 + len(info), 3, 0, 24, mask, FAN_NOFD, 77) + info


def test_parse_entry_events_reads_directory_handle_and_name() -> None:
    handle = struct.pack("=i", 1) + bytes(range(8))
    buf = _entry_record(FAN_CREATE, (5, 6), handle, b"id_rsa") + _entry_record(
        FAN_MOVED_FROM | FAN_ONDIR, (-1, 2), handle, b"sub"
    )
    records, problem = parse_entry_events(buf)
    assert problem is None
    assert records == [
        EntryRecord(FAN_CREATE, 77, 5 | 6 << 32, handle, "id_rsa"),
        EntryRecord(FAN_MOVED_FROM | FAN_ONDIR, 77, 0xFFFFFFFF | 2 << 32, handle, "sub"),
    ]
    # A truncated second record ends the parse and keeps the first.
    records, problem = parse_entry_events(buf[: len(buf) - 3])
    assert [r.name for r in records] == ["id_rsa"] and problem is not None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1),
            st.binary(min_size=4, max_size=40),
            st.binary(max_size=300).filter(lambda b: b"\0" not in b),
        ),
        max_size=5,
    ),
    st.binary(max_size=64),
)
def test_parse_entry_events_never_raises_and_round_trips(
    recs: list[tuple[int, bytes, bytes]], junk: bytes
) -> None:
    buf = b"".join(_entry_record(m, (1, 2), h, n) for m, h, n in recs)
    records, problem = parse_entry_events(buf)
    assert problem is None
    assert [(r.mask, r.handle, os.fsencode(r.name)) for r in records] == recs
    # Any bytes after valid records: never an exception, the valid ones kept.
    records, _problem = parse_entry_events(buf + junk)
    assert [(r.mask, r.handle) for r in records[: len(recs)]] == [(m, h) for m, h, _n in recs]
    parse_entry_events(junk)


def test_directory_handle_matches_what_entry_events_carry(tmp_path: Path) -> None:
    d = tmp_path / "watched"
    d.mkdir()
    link = tmp_path / "link"
    link.symlink_to(d)
    assert directory_handle(str(d)) == directory_handle(str(link))  # symlinks followed
    assert directory_handle(str(d)) != directory_handle(str(tmp_path))


def test_entry_watch_reports_names_and_raises_nothing_for_opens(
    files: Path, tmp_path: Path
) -> None:
    """Entry events name what appeared in or left the directory; opens of its
    children (marked or not) cost no notification at all."""
    target = str(files / "id_test")
    entries: list[EntryEvent] = []
    collected: list[FanotifyEvent] = []
    outside = tmp_path / "outside"
    with FanotifyWatcher(
        [target],
        [str(files)],
        [],
        collected.append,
        entry_events=True,
        on_entry=entries.append,
    ) as w:
        s = w.stats()
        assert s.entry_available and s.marks_entry_dirs == 1 and s.marks_dirs == 0
        subprocess.run([CAT, str(files / "notes")] * 20, stdout=subprocess.DEVNULL, check=True)
        (files / "id_new").write_text("x")
        os.rename(files / "id_new", outside)
        (files / "sub").mkdir()
        os.unlink(files / "notes")
        assert wait_for(lambda: {e.name for e in entries} >= {"id_new", "sub", "notes"})
        time.sleep(0.05)
        s = w.stats()
    assert s.notify_events == 0 and not collected  # 20 opens of an unmarked sibling
    by_name: dict[str, int] = {}
    for e in entries:
        assert e.directory == str(files) and e.path == f"{files}/{e.name}"
        by_name[e.name] = by_name.get(e.name, 0) | e.mask
    assert by_name["id_new"] & FAN_CREATE and by_name["id_new"] & FAN_MOVED_FROM
    assert by_name["sub"] & FAN_ONDIR and by_name["notes"] & FAN_DELETE
    assert s.entry_unknown_dir == 0 and s.mark_errors == {}


def test_watch_without_entry_events_keeps_child_marks(files: Path) -> None:
    with FanotifyWatcher([], [str(files)], [], entry_events=False) as w:
        s = w.stats()
    assert (s.marks_dirs, s.marks_entry_dirs, s.entry_available) == (1, 0, False)
