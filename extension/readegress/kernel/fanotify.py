"""Who opens the catalogue's files, told by the kernel: fanotify(7) over ctypes.

Two fanotify groups, both read by this module's own threads:

* a **notification** group (``FAN_CLASS_NOTIF``) with ``FAN_OPEN | FAN_ACCESS``
  on inode marks (catalogue files) and on directory marks with
  ``FAN_EVENT_ON_CHILD`` (directories whose children may match a glob, so a
  key created later is covered without re-marking);
* a **permission** group (``FAN_CLASS_CONTENT``) with ``FAN_OPEN_PERM`` on
  inode marks of a small high-value set. The opener is held inside open()
  until this module answers, so even a ``cat`` that lives for a millisecond is
  identified. The answer is always ``FAN_ALLOW``: this is a sensor, it never
  denies.

Where the data comes from and its quirks (measured on Linux 6.18):

* ``read(2)`` on the group fd returns ``struct fanotify_event_metadata``
  records (24 bytes: event_len u32, vers u8, reserved u8, metadata_len u16,
  mask u64, fd s32, pid s32), each possibly followed by info records
  (``FAN_REPORT_PIDFD``: type 4, a pidfd of the opener). ``pid`` is the
  thread-group id (no ``FAN_REPORT_TID``).
* Every event carries an fd the kernel opened on our behalf (``FMODE_NONOTIFY``:
  it raises no events itself). It resolves to a path through
  ``readlink(/proc/self/fd/N)``: the *resolved* path (symlinks followed,
  `` (deleted)`` appended to unlinked files). The fd is ours and is closed on
  every path here, or the process runs out of descriptors.
* Identical unread events merge (same object, same pid): one event may carry
  ``FAN_OPEN | FAN_ACCESS``. ``FAN_CLOSE_NOWRITE`` is not asked for: it
  comes last, when a short-lived reader is already gone, and adds nothing a
  read needs. ``FAN_ACCESS`` is kept because it names the process that
  *reads* through a descriptor it did not open (inherited over exec or fork,
  or opened before the marks were set).
* A notification is read after the fact: a short-lived reader is often gone
  by then (3 of 4 ``cat``\\ s in the reference measurements). The group asks
  for ``FAN_REPORT_PIDFD`` where the kernel has it (5.15+): a pidfd of
  ``FAN_NOPIDFD`` says the opener had already exited when the event was
  read, and a live pidfd polled after reading ``/proc/<pid>/stat`` proves the
  start ticks read belong to the opener and not to a later process reusing
  the pid (pid_max is 32768 on many hosts). Fields that cannot be read stay
  unknown and are counted, never guessed.
* Permission events: the kernel keeps the opener waiting until a
  ``struct fanotify_response {s32 fd; u32 response}`` is written for the
  event fd, with no timeout of its own (the opener can only be SIGKILLed).
  Closing the group fd allows every event still pending, read or not
  (``fanotify_release``). This module answers on every path (try/finally), a
  watchdog thread answers any event older than ``perm_budget`` whatever the
  reader is doing, shutdown answers what was read and then closes the group,
  and :meth:`FanotifyWatcher.close` force-closes a group whose thread does not
  stop in time. Identity reads while an opener is held touch only procfs and
  ``readlink`` of the event fd (no filesystem I/O that could hang on a network
  mount); ``fstat`` for the size happens after the answer.
* The kernel *denies* a permission event when it cannot create the event fd in
  this process (``EMFILE``): reads are done in small batches so that few
  descriptors are in flight, but a process near its ``RLIMIT_NOFILE`` makes
  openers fail. :attr:`FanotifyStats.fd_headroom` shows the margin at start.
* ``FAN_Q_OVERFLOW`` (fd ``FAN_NOFD``) means the queue (16384 events by
  default) overflowed and events were lost: counted. A lost permission event
  is allowed by the kernel.
* This process's own opens of marked files raise events too (with our pid):
  they are answered at once and not reported.
* fanotify needs ``CAP_SYS_ADMIN``; without it :meth:`FanotifyWatcher.start`
  raises ``PermissionError``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import queue
import resource
import select
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional

from readegress.kernel.procfs import (
    PROC_ROOT,
    ProcFs,
    StdFds,
    parse_stat_fields,
    read_proc_file,
    real_uid,
    std_fds,
    std_fds_of_links,
    std_socket_state,
)
from readegress.speedups import native as _native

log = logging.getLogger("readegress.kernel.fanotify")

# <linux/fanotify.h>
FAN_ACCESS = 0x00000001
FAN_MODIFY = 0x00000002
FAN_CLOSE_WRITE = 0x00000008
FAN_CLOSE_NOWRITE = 0x00000010
FAN_OPEN = 0x00000020
FAN_MOVED_FROM = 0x00000040
FAN_MOVED_TO = 0x00000080
FAN_CREATE = 0x00000100
FAN_DELETE = 0x00000200
FAN_Q_OVERFLOW = 0x00004000
FAN_OPEN_PERM = 0x00010000
FAN_ACCESS_PERM = 0x00020000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ONDIR = 0x40000000
PERM_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM

FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_CLASS_CONTENT = 0x00000004
FAN_REPORT_PIDFD = 0x00000080
FAN_REPORT_DIR_FID = 0x00000400
FAN_REPORT_NAME = 0x00000800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_REPORT_FD_ERROR = 0x00002000

FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_ONLYDIR = 0x00000008
FAN_MARK_IGNORED_MASK = 0x00000020
FAN_MARK_IGNORED_SURV_MODIFY = 0x00000040
FAN_MARK_FLUSH = 0x00000080

FAN_ALLOW = 0x01
#: How long after a permission batch the watchdog keeps polling on its own.
_WATCHDOG_LINGER = 1.0
FAN_NOFD = -1
FAN_NOPIDFD = FAN_NOFD
FAN_EPIDFD = -2
FANOTIFY_METADATA_VERSION = 3
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_EVENT_INFO_TYPE_PIDFD = 4
AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
MAX_HANDLE_SZ = 128

#: What the notification group asks for on files and (with FAN_EVENT_ON_CHILD)
#: on directories. See the module notes for why not FAN_CLOSE_NOWRITE.
NOTIFY_MASK = FAN_OPEN | FAN_ACCESS
#: What the entry group asks for on a directory: names appearing and
#: disappearing (``FAN_ONDIR``: subdirectories too). Opens of its children
#: raise nothing.
ENTRY_MASK = FAN_CREATE | FAN_MOVED_TO | FAN_DELETE | FAN_MOVED_FROM | FAN_ONDIR
#: errnos of ``fanotify_mark``/``name_to_handle_at`` that say "this
#: filesystem cannot report directory entries by file handle" (no exportfs
#: support, e.g. some FUSE or pseudo filesystems): such a directory falls back
#: to a ``FAN_EVENT_ON_CHILD`` mark.
_NO_FID_ERRNOS = frozenset({errno.EXDEV, errno.EOPNOTSUPP, errno.ENODEV, errno.EINVAL})

_METADATA = struct.Struct("=IBBHQii")
METADATA_LEN = _METADATA.size  # 24
_INFO_HEADER = struct.Struct("=BBH")
_PIDFD_INFO = struct.Struct("=BBHi")
_RESPONSE = struct.Struct("=iI")
#: the compiled permission reader's table: header size, and its two counters
_REPEAT_HEADER = 64
_REPEAT_COUNTERS = struct.Struct("=QQ")
_FSID = struct.Struct("=ii")
_HANDLE_HEADER = struct.Struct("=Ii")
_O_LARGEFILE = getattr(os, "O_LARGEFILE", 0o100000)
_EVENT_F_FLAGS = os.O_RDONLY | _O_LARGEFILE | os.O_CLOEXEC

# A notification batch of 32 events holds at most 64 descriptors (event fd +
# pidfd) at once; a permission batch of 8 keeps few openers queued behind one
# another inside a batch and few fds in flight (the kernel denies an open when
# it cannot give us an fd).
NOTIFY_BATCH_EVENTS = 32
PERM_BATCH_EVENTS = 8
#: Seconds a permission event may be held before the watchdog allows it.
DEFAULT_PERM_BUDGET = 0.02
#: How long (s) a permission answer makes the notification for the same
#: (pid, path) a duplicate: the notification comes right after the open returns.
_PERM_COVER_SECONDS = 2.0
#: A repeat open of one file by one pid within this many seconds is allowed
#: without reading the opener's identity again.
_PERM_REPEAT_SECONDS = 1.0


class _Libc:
    """The two fanotify entry points, loaded once (glibc and musl both export them)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(None, use_errno=True)
        self.init = lib.fanotify_init
        self.init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        self.init.restype = ctypes.c_int
        self.mark = lib.fanotify_mark
        self.mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        self.mark.restype = ctypes.c_int
        self.name_to_handle_at = lib.name_to_handle_at
        self.name_to_handle_at.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
        self.name_to_handle_at.restype = ctypes.c_int


_libc: Optional[_Libc] = None


def _lib() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def fanotify_init(flags: int, event_f_flags: int = _EVENT_F_FLAGS) -> int:
    """``fanotify_init(2)``: a new group fd, or ``OSError`` (EPERM without CAP_SYS_ADMIN)."""
    fd: int = _lib().init(flags, event_f_flags)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fanotify_init: {os.strerror(e)}")
    return fd


def fanotify_mark(group_fd: int, flags: int, mask: int, path: Optional[str]) -> None:
    """``fanotify_mark(2)`` relative to the cwd (``path`` is ignored by FAN_MARK_FLUSH)."""
    raw = None if path is None else os.fsencode(path)
    if _lib().mark(group_fd, flags, mask, AT_FDCWD, raw) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


def directory_handle(path: str) -> bytes:
    """The kernel's file handle of ``path`` (symlinks followed, as
    ``fanotify_mark`` follows them): ``handle_type`` (4 bytes) then the
    opaque handle, exactly as a ``FAN_EVENT_INFO_TYPE_DFID_NAME`` record
    carries it. ``OSError`` when the filesystem has no handles (EOPNOTSUPP).
    """
    buf = ctypes.create_string_buffer(_HANDLE_HEADER.size + MAX_HANDLE_SZ)
    _HANDLE_HEADER.pack_into(buf, 0, MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int(0)
    rc = _lib().name_to_handle_at(
        AT_FDCWD,
        os.fsencode(path),
        ctypes.addressof(buf),
        ctypes.byref(mount_id),
        AT_SYMLINK_FOLLOW,
    )
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    size, _type = _HANDLE_HEADER.unpack_from(buf, 0)
    return bytes(buf.raw[4 : _HANDLE_HEADER.size + size])


def filesystem_id(path: str) -> int:
    """``statfs(2).f_fsid`` of ``path`` as one 64-bit number (glibc's
    ``statvfs`` packs both words on 64-bit hosts; :func:`_fsid_of` does the
    same for an event's fsid, so the two compare equal)."""
    return int(os.statvfs(path).f_fsid)


def _fsid_of(val0: int, val1: int) -> int:
    return (val0 & 0xFFFFFFFF) | ((val1 & 0xFFFFFFFF) << 32)


@dataclass(frozen=True)
class EntryRecord:
    """One directory-entry record of a ``FAN_REPORT_DFID_NAME`` group, as read.

    ``handle`` is the parent directory's handle type and bytes (see
    :func:`directory_handle`), ``name`` the entry's name in it. Events for
    one name merge while unread: a mask may hold ``FAN_CREATE | FAN_MOVED_FROM``
    with no order, so a consumer looks at the directory as it is now.
    """

    mask: int
    pid: int
    fsid: int
    handle: bytes
    name: str


def parse_entry_events(buf: bytes) -> tuple[list[EntryRecord], Optional[str]]:
    """Split a ``read(2)`` buffer of an entry group into records (pure).

    Entry groups carry no descriptors, so a malformed record simply ends the
    parse: the records before it and a description of the problem are
    returned. Overflow records (``FAN_Q_OVERFLOW``, no info) come back with an
    empty handle and name.
    """
    out: list[EntryRecord] = []
    off = 0
    n = len(buf)
    while off + METADATA_LEN <= n:
        event_len, vers, _res, meta_len, mask, _fd, pid = _METADATA.unpack_from(buf, off)
        problem = _bad_record(off, n, event_len, vers, meta_len)
        if problem is not None:
            return out, f"entry {problem}"
        fsid, handle, name = 0, b"", ""
        i = off + meta_len
        end = off + event_len
        while i + _INFO_HEADER.size <= end:
            info_type, _pad, info_len = _INFO_HEADER.unpack_from(buf, i)
            if info_len < _INFO_HEADER.size or i + info_len > end:
                return out, f"fanotify entry record at {off}: info length {info_len}"
            body = i + _INFO_HEADER.size
            if info_type == FAN_EVENT_INFO_TYPE_DFID_NAME and (
                body + _FSID.size + _HANDLE_HEADER.size <= i + info_len
            ):
                v0, v1 = _FSID.unpack_from(buf, body)
                hsize, _htype = _HANDLE_HEADER.unpack_from(buf, body + _FSID.size)
                hstart = body + _FSID.size + 4  # handle_type, then the handle bytes
                hend = body + _FSID.size + _HANDLE_HEADER.size + hsize
                if hend > i + info_len:
                    return out, f"fanotify entry record at {off}: handle of {hsize} bytes"
                fsid, handle = _fsid_of(v0, v1), bytes(buf[hstart:hend])
                raw = bytes(buf[hend : i + info_len])
                name = os.fsdecode(raw.split(b"\0", 1)[0])
            i += info_len
        out.append(EntryRecord(mask, pid, fsid, handle, name))
        off += event_len
    return out, None


@dataclass(frozen=True)
class EntryEvent:
    """A name appeared in or left a watched directory (``FAN_CREATE``,
    ``FAN_MOVED_TO``, ``FAN_DELETE``, ``FAN_MOVED_FROM``, possibly merged;
    ``FAN_ONDIR`` when the entry is a directory)."""

    time: float
    mask: int
    directory: str  # the watched directory, as it was given to the watcher
    name: str
    pid: int

    @property
    def path(self) -> str:
        return f"{self.directory.rstrip('/')}/{self.name}"


@dataclass(frozen=True)
class RawEvent:
    """One ``fanotify_event_metadata`` record as read: descriptors still open."""

    mask: int
    fd: int  # event fd, FAN_NOFD (overflow), or -errno with FAN_REPORT_FD_ERROR
    pid: int
    pidfd: Optional[int] = None  # None when the group reports no pidfd


class FanotifyFormatError(ValueError):
    """A record this module does not understand (metadata version other than 3).

    ``events`` holds the records parsed before it: their descriptors are open.
    """

    def __init__(self, message: str, events: list[RawEvent]) -> None:
        super().__init__(message)
        self.events = events


def _bad_record(off: int, n: int, event_len: int, vers: int, meta_len: int) -> Optional[str]:
    """Why a record header at ``off`` of an ``n``-byte buffer cannot be parsed, or None."""
    if (
        vers != FANOTIFY_METADATA_VERSION
        or event_len < METADATA_LEN
        or meta_len < METADATA_LEN
        or off + event_len > n
    ):
        return (
            f"fanotify record at {off}: version {vers}, event_len {event_len},"
            f" metadata_len {meta_len} (buffer {n} bytes)"
        )
    return None


def parse_events(buf: bytes) -> list[RawEvent]:
    """Split a ``read(2)`` buffer into records (pure; closes nothing).

    The kernel never splits a record across reads. Info records other than
    the pidfd are skipped by their length. A record with another metadata
    version raises :class:`FanotifyFormatError` *after* the records before it
    were returned through the exception's ``events`` attribute, so their
    descriptors can still be closed.
    """
    out: list[RawEvent] = []
    off = 0
    n = len(buf)
    while off + METADATA_LEN <= n:
        event_len, vers, _res, meta_len, mask, fd, pid = _METADATA.unpack_from(buf, off)
        problem = _bad_record(off, n, event_len, vers, meta_len)
        if problem is not None:
            raise FanotifyFormatError(problem, out)
        pidfd: Optional[int] = None
        i = off + meta_len
        end = off + event_len
        while i + _INFO_HEADER.size <= end:
            info_type, _pad, info_len = _INFO_HEADER.unpack_from(buf, i)
            if info_len < _INFO_HEADER.size:
                break
            if info_type == FAN_EVENT_INFO_TYPE_PIDFD and info_len >= _PIDFD_INFO.size:
                pidfd = _PIDFD_INFO.unpack_from(buf, i)[3]
            i += info_len
        out.append(RawEvent(mask, fd, pid, pidfd))
        off += event_len
    return out


def close_event_fds(events: Iterable[RawEvent]) -> None:
    """Close every event fd and pidfd of ``events`` (the kernel gave them to us)."""
    for ev in events:
        for fd in (ev.fd, ev.pidfd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def fd_path(fd: int) -> str:
    """The path an event fd was opened on (``readlink /proc/self/fd/N``; "" if unreadable).

    A pure dcache walk in the kernel (``d_path``): safe while an opener is held.
    """
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@dataclass(frozen=True)
class Opener:
    """The process that opened or read a marked file, as far as /proc told us.

    Every field but ``pid`` is ``None`` (``executable`` ``""``) when it could
    not be read for *this* process: fields are never filled from a later
    process reusing the pid.
    """

    pid: int
    start_ticks: Optional[int] = None  # field 22 of /proc/<pid>/stat
    ppid: Optional[int] = None
    executable: str = ""  # readlink /proc/<pid>/exe
    cmdline: Optional[str] = None  # argv joined by spaces
    uid: Optional[int] = None  # real uid
    auid: Optional[int] = None  # /proc/<pid>/loginuid (4294967295: no login session)
    pgid: Optional[int] = None
    sid: Optional[int] = None
    stdin_pipe: Optional[int] = None  # pipe inode on fd 0 (procfs.std_fds)
    stdout_pipe: Optional[int] = None  # pipe inode on fd 1
    #: (cookie, bytes sent) of sockets on fd 0/1 (cat key > /dev/tcp/...), read while held
    std_sockets: tuple[tuple[int, Optional[int]], ...] = ()

    @property
    def identified(self) -> bool:
        """Start ticks and executable known: enough to tell this process from any other."""
        return self.start_ticks is not None and bool(self.executable)


def _read_loginuid(proc_root: str, pid: int) -> Optional[int]:
    try:
        fd = os.open(f"{proc_root}/{pid}/loginuid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return int(os.read(fd, 32))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def read_opener(
    procfs: ProcFs,
    pid: int,
    *,
    deadline: float = float("inf"),
    alive: Optional[Callable[[], bool]] = None,
    release: Optional[Callable[[], None]] = None,
) -> Opener:
    """Read the identity of ``pid`` from /proc, as far as it can be trusted.

    ``alive`` (a pidfd poll) is asked right after the start ticks are read:
    a process still alive then still owns the pid, so the ticks are its own.
    Every later read (cmdline, status, exe, loginuid) is checked by reading
    the start ticks again at the end: details of a later process reusing the
    pid are never returned. Past ``deadline`` (``time.monotonic()``) the
    remaining reads are skipped: a held opener is waiting.

    Five reads and a readlink: ``stat`` gives ppid, process group and session
    along with the ticks (no getpgid/getsid calls), and each file is read in
    one ``read``.

    ``release`` (a permission-held opener) is called once what identifies a
    short-lived process has been read — ``stat``, ``cmdline``, ``exe``, all of
    which a process loses when it exits — and before ``status``,
    ``loginuid`` and the final ``stat``, which a zombie still has: the opener
    waits for three reads instead of six. Those three were read while it
    waited (the caller checks it had not been answered already), so they stand
    even if the final check fails because it has exited and been reaped
    since; uid and auid are then unknown. ``release`` is called on every path.
    """
    base = f"{procfs.root}/{pid}"
    try:
        if alive is None and _native is not None:
            # The same reads in C, the GIL released once for all of them: a
            # held opener then waits for no other Python thread (each
            # syscall's release would let one run).
            raw_stat, raw_cmdline, exe, link0, link1 = _native.held_reads(base)
            if raw_stat is None:
                return Opener(pid)
            try:
                st = parse_stat_fields(raw_stat)
            except (ValueError, IndexError):
                return Opener(pid)
            ticks = st.start_ticks
            if time.monotonic() > deadline or raw_cmdline is None:
                return Opener(pid, start_ticks=ticks)
            cmdline = raw_cmdline
            path = exe or ""
            std: StdFds = std_fds_of_links(link0, link1)
        else:
            try:
                st = parse_stat_fields(read_proc_file(base + "/stat"))
            except (OSError, ValueError, IndexError):  # gone, or a zombie being reaped
                return Opener(pid)
            if alive is not None and not alive():
                return Opener(pid)
            ticks = st.start_ticks
            if time.monotonic() > deadline:
                return Opener(pid, start_ticks=ticks)
            try:
                cmdline = read_proc_file(base + "/cmdline")
            except OSError:
                return Opener(pid, start_ticks=ticks)
            try:
                path = os.readlink(base + "/exe")
            except OSError:
                path = ""  # another user's process without root, a kernel thread, a zombie
            # While the opener is held: a pipeline's reader (cat, tar) or a
            # `cat key > /dev/tcp/...` may exit a millisecond later, taking its
            # stdin/stdout pipes and sockets with it. Checked by the final stat.
            std = std_fds(pid, None, procfs.root)
        sockets = std_socket_state(pid, std.sockets) if std.sockets else ()
    finally:
        if release is not None:
            release()
    try:
        status: Optional[bytes] = read_proc_file(base + "/status")
    except OSError:
        status = None
    auid = _read_loginuid(procfs.root, pid)
    try:
        again = parse_stat_fields(read_proc_file(base + "/stat")).start_ticks
    except (OSError, ValueError, IndexError):
        again = None
    if again != ticks or status is None:
        if release is None or again is not None:
            # Gone (or replaced) during the reads: only the verified ticks stand.
            return Opener(pid, start_ticks=ticks)
        # Held, then reaped: what was read while it waited is its own.
        status, auid = None, None
    uid = real_uid(status) if status is not None else -1
    return Opener(
        pid=pid,
        start_ticks=ticks,
        ppid=st.ppid,
        executable=path,
        # A zombie or a kernel thread reads as an empty cmdline: unknown, not "".
        cmdline=os.fsdecode(cmdline.rstrip(b"\0").replace(b"\0", b" ")) or None,
        uid=uid if uid >= 0 else None,
        auid=auid,
        pgid=st.pgrp,
        sid=st.session,
        stdin_pipe=std.stdin_pipe,
        stdout_pipe=std.stdout_pipe,
        std_sockets=sockets,
    )


def _pidfd_alive(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return not p.poll(0)


@dataclass(frozen=True)
class FanotifyEvent:
    """One open or read of a marked file, with the opener's identity."""

    time: float  # time.time() when the event was read (µs after the open)
    mask: int  # FAN_OPEN / FAN_ACCESS (possibly merged) or FAN_OPEN_PERM
    path: str  # resolved path of the event fd ("" when none)
    opener: Opener
    size: Optional[int] = None  # st_size of a regular file, from fstat of the event fd
    permission: bool = False  # came from the permission group (opener was held)
    hold_us: Optional[int] = None  # permission events: read → answer, microseconds
    inode: Optional[tuple[int, int]] = None  # (st_dev, st_ino) from fstat of the event fd

    @property
    def pid(self) -> int:
        return self.opener.pid


@dataclass
class FanotifyStats:
    """Counters of one watcher (a snapshot from :meth:`FanotifyWatcher.stats`)."""

    running: bool = False
    pidfd: bool = False  # notification group verifies openers through pidfds
    perm_available: bool = False  # the permission group exists
    perm_error: str = ""  # why it does not
    marks_files: int = 0
    marks_dirs: int = 0
    marks_perm: int = 0
    marks_entry_dirs: int = 0  # directories watched by entry events (no per-open events)
    entry_available: bool = False  # the entry group (FAN_REPORT_DFID_NAME, Linux 5.9+) exists
    entry_error: str = ""  # why it does not
    entry_fallback_dirs: int = 0  # wanted as entry watches, child-marked instead
    entry_events: int = 0  # entry records read
    entry_unknown_dir: int = 0  # records whose directory handle matched no watched directory
    entry_overflows: int = 0  # the entry queue overflowed: entries were lost
    mark_errors: dict[str, int] = field(default_factory=dict)  # errno name -> count
    events: int = 0  # events handed to on_event
    notify_events: int = 0  # notification records read (before filtering)
    perm_events: int = 0  # permission records read
    overflows: int = 0  # FAN_Q_OVERFLOW records: events lost
    identity_missed: int = 0  # events handed on without start ticks + executable
    exited_before_read: int = 0  # pidfd said the opener was already gone
    fd_errors: int = 0  # records without an fd (the kernel could not open the file)
    read_errors: int = 0
    self_events: int = 0  # this process's own opens, answered and dropped
    covered_by_perm: int = 0  # notifications for an open the permission group saw
    perm_repeats: int = 0  # repeat opens (same pid and file within 1 s) allowed at once
    perm_answered: int = 0  # permission events answered (FAN_ALLOW), all paths
    perm_watchdog: int = 0  # ... of which by the watchdog (over budget)
    perm_on_shutdown: int = 0  # ... of which while shutting down
    perm_budget_exceeded: int = 0  # identity reads cut short by the budget
    perm_max_hold_us: int = 0  # longest read → answer
    perm_forced_close: int = 0  # group closed under a thread that did not stop
    dispatch_dropped: int = 0  # events dropped because on_event fell behind
    callback_errors: int = 0
    internal_errors: int = 0
    fd_headroom: int = -1  # RLIMIT_NOFILE soft minus open fds at start

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class MarkChange:
    """What one :meth:`FanotifyWatcher.set_marks` did."""

    files: int
    dirs: int
    perm: int
    removed: int
    errors: dict[str, int]


class _Group:
    """One group fd. Every use holds the lock and checks ``closed``: a thread
    that closes the group can then never make another one read from, or write
    a response to, a descriptor number the process has since reused."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd
        self.lock = threading.Lock()
        self.closed = False

    def read(self, size: int) -> Optional[bytes]:
        """Up to ``size`` bytes of records; b"" when none; None once closed."""
        with self.lock:
            if self.closed:
                return None
            try:
                return os.read(self.fd, size)
            except (BlockingIOError, InterruptedError):
                return b""

    def allow(self, event_fd: int) -> bool:
        """Answer FAN_ALLOW; False when the group is closed (the kernel allowed it then)."""
        with self.lock:
            if self.closed:
                return False
            try:
                os.write(self.fd, _RESPONSE.pack(event_fd, FAN_ALLOW))
            except OSError as e:
                # ENOENT: no such pending event (already answered). Never fatal.
                log.debug("fanotify response for fd %d: %s", event_fd, e)
                return False
            return True

    def mark(self, flags: int, mask: int, path: Optional[str]) -> None:
        with self.lock:
            if self.closed:
                raise OSError(errno.EBADF, "fanotify group closed", path)
            fanotify_mark(self.fd, flags, mask, path)

    def close(self) -> bool:
        with self.lock:
            if self.closed:
                return False
            self.closed = True
            os.close(self.fd)
            return True


class _Pending:
    __slots__ = ("deadline", "read_ns")

    def __init__(self, deadline: float, read_ns: int) -> None:
        self.deadline = deadline
        self.read_ns = read_ns


_STOP = object()


class FanotifyWatcher:
    """Watches opens of marked files and hands each to ``on_event``.

    ``paths_to_mark`` get inode marks and ``dirs_to_mark`` directory marks
    (``FAN_EVENT_ON_CHILD``) in the notification group; ``perm_paths`` get
    ``FAN_OPEN_PERM`` inode marks in the permission group (pass them in
    ``paths_to_mark`` too if reads through inherited descriptors matter).
    ``on_event`` runs on one dispatcher thread, never while an opener is held;
    when it falls behind by ``queue_max`` events, events are dropped and
    counted. Directory marks report *every* child: the caller filters.

    Threads: one reader per group, a watchdog that allows permission events
    held longer than ``perm_budget`` seconds (and, while the reader is stuck,
    reads and allows the ones queued behind it), and the dispatcher.
    ``permission=False`` creates no permission group at all.

    ``entry_events=True`` (Linux 5.9+) watches ``dirs_to_mark`` and
    ``entry_dirs`` through a third group instead: ``FAN_CREATE |
    FAN_MOVED_TO | FAN_DELETE | FAN_MOVED_FROM`` with ``FAN_REPORT_DFID_NAME``
    tells ``on_entry`` (on the entry reader's thread, so it must be quick)
    that a name appeared in or left the directory, and opens of its children
    raise no event at all. The caller marks a new
    matching file by inode (:meth:`add_file`). A directory whose filesystem
    cannot report file handles, or a kernel without the group, falls back to
    a ``FAN_EVENT_ON_CHILD`` mark for ``dirs_to_mark`` (counted in
    :attr:`FanotifyStats.entry_fallback_dirs`); ``entry_dirs`` are watched
    by entry events only, never by child marks (they are the directories
    whose every open would cost: homes, ``/etc``).
    """

    def __init__(
        self,
        paths_to_mark: Iterable[str] = (),
        dirs_to_mark: Iterable[str] = (),
        perm_paths: Iterable[str] = (),
        on_event: Optional[Callable[[FanotifyEvent], None]] = None,
        *,
        perm_budget: float = DEFAULT_PERM_BUDGET,
        queue_max: int = 100_000,
        permission: bool = True,
        proc_root: str = PROC_ROOT,
        close_timeout: float = 1.0,
        entry_events: bool = False,
        entry_dirs: Iterable[str] = (),
        on_entry: Optional[Callable[[EntryEvent], None]] = None,
    ) -> None:
        self._want = (tuple(paths_to_mark), tuple(dirs_to_mark), tuple(perm_paths))
        self._want_entry = tuple(entry_dirs)
        self._entry_events = entry_events
        self._on_entry = on_entry
        self._entry: Optional[_Group] = None
        # directory handle -> [(fsid, directory as given)] of the entry marks
        self._entry_handles: dict[bytes, list[tuple[int, str]]] = {}
        self._on_event = on_event
        self._permission = permission
        self.perm_budget = perm_budget
        self._close_timeout = close_timeout
        self._procfs = ProcFs(proc_root)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_max)
        self._stats = FanotifyStats()
        self._notify: Optional[_Group] = None
        self._perm: Optional[_Group] = None
        self._stop_r = -1
        self._stop_w = -1
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._marks_lock = threading.Lock()
        # files, child-marked dirs, permission files, ignore marks, entry dirs
        self._marked: tuple[set[str], set[str], set[str], set[str], set[str]] = (
            set(),
            set(),
            set(),
            set(),
            set(),
        )
        # Permission events read and not answered yet: event fd -> deadline.
        # The condition's lock orders every answer; it is taken before a
        # group's lock, never after.
        self._cond = threading.Condition()
        self._pending: dict[int, _Pending] = {}
        self._watchdog_stop = False
        # Deadline of the batch the permission reader is working on (None: idle).
        self._perm_busy_until: Optional[float] = None
        self._perm_last_batch = 0.0  # time.monotonic() of the last permission batch
        self._watchdog_idle = False  # waiting with no deadline: must be notified
        # (pid, path) -> monotonic time the permission group answered it.
        self._perm_seen: dict[tuple[int, str], float] = {}
        # (pid, st_dev, st_ino) -> monotonic time an identified open of that
        # file by that pid was answered: later opens within
        # _PERM_REPEAT_SECONDS are allowed on an fstat, without a readlink.
        self._perm_repeat: dict[tuple[int, int, int], float] = {}
        #: The same, for the compiled reader (``_speedups.perm_wait``), which
        #: allows those repeats without the GIL: a 64-byte header (repeats it
        #: allowed, its longest hold in µs: see stats) and 4096 slots of 32 bytes.
        self._repeat_table = bytearray(_REPEAT_HEADER + 4096 * 32)
        #: whether the permission reader is the compiled one (tests switch it off)
        self.native_perm = _native is not None
        self._pid = os.getpid()
        #: Test hooks: a held permission event waits on ``_test_stall`` (while
        #: the opener is held) before its identity is read; with
        #: ``_test_no_watchdog`` the watchdog answers nothing; the notification
        #: reader waits on ``_test_notify_stall`` before each read.
        self._test_stall: Optional[threading.Event] = None
        self._test_no_watchdog = False
        self._test_notify_stall: Optional[threading.Event] = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Create the groups, set the marks, start the threads.

        Raises ``OSError`` when fanotify is unavailable (EPERM without
        CAP_SYS_ADMIN, ENOSYS without CONFIG_FANOTIFY). A kernel without
        permission events (CONFIG_FANOTIFY_ACCESS_PERMISSIONS off: EINVAL)
        leaves the watcher running on notifications alone, with
        :attr:`FanotifyStats.perm_error` saying why.
        """
        if self._notify is not None:
            raise RuntimeError("FanotifyWatcher already started")
        base = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK
        # Newest flags first; an older kernel refuses unknown bits with EINVAL.
        notify_fd = -1
        for extra in (FAN_REPORT_PIDFD | FAN_REPORT_FD_ERROR, FAN_REPORT_PIDFD, 0):
            try:
                notify_fd = fanotify_init(base | extra)
            except OSError as e:
                if e.errno != errno.EINVAL or extra == 0:
                    raise
                continue
            self._stats.pidfd = bool(extra & FAN_REPORT_PIDFD)
            break
        notify = _Group("notify", notify_fd)
        perm: Optional[_Group] = None
        try:
            if self._permission:
                try:
                    perm = _Group(
                        "perm", fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK)
                    )
                except OSError as e:
                    self._stats.perm_error = f"fanotify_init(FAN_CLASS_CONTENT): {e.strerror}"
                    log.warning("fanotify permission group unavailable: %s", e)
            entry: Optional[_Group] = None
            if self._entry_events:
                try:
                    entry = _Group(
                        "entry",
                        fanotify_init(
                            FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME,
                            os.O_RDONLY | os.O_CLOEXEC,
                        ),
                    )
                except OSError as e:
                    # EINVAL: a kernel before 5.9 knows no FAN_REPORT_DFID_NAME.
                    self._stats.entry_error = f"fanotify_init(FAN_REPORT_DFID_NAME): {e.strerror}"
                    log.warning("fanotify entry group unavailable: %s", e)
            self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except BaseException:
            notify.close()
            if perm is not None:
                perm.close()
            raise
        self._notify, self._perm, self._entry = notify, perm, entry
        self._stats.perm_available = perm is not None
        self._stats.entry_available = entry is not None
        self._stats.fd_headroom = _fd_headroom()
        self.set_marks(*self._want, entry_dirs=self._want_entry)
        self._stats.running = True
        specs: list[tuple[str, Callable[[], None]]] = [
            ("fanotify-notify", self._notify_loop),
            ("fanotify-dispatch", self._dispatch_loop),
        ]
        if self._perm is not None:
            specs += [("fanotify-perm", self._perm_loop), ("fanotify-watchdog", self._watchdog)]
        if self._entry is not None:
            specs.append(("fanotify-entry", self._entry_loop))
        for name, target in specs:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def __enter__(self) -> FanotifyWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop: answer every permission event read, close both groups (the
        kernel then allows anything unread), deliver what is queued.

        Never waits more than about ``3 * close_timeout``: a reader thread that
        does not stop in time gets its group closed under it.
        """
        if self._notify is None or self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        by_name = {t.name: t for t in self._threads}
        for name, group in (
            ("fanotify-perm", self._perm),
            ("fanotify-notify", self._notify),
            ("fanotify-entry", self._entry),
        ):
            t = by_name.get(name)
            if t is not None:
                _join(t, self._close_timeout)
                if t.is_alive() and group is not None:
                    # The reader is stuck (or stalled by a test hook): answer
                    # what it read, then let the kernel allow the rest.
                    self._answer_all(shutdown=True)
                    if group.close():
                        self._stats.perm_forced_close += group is self._perm
                    log.warning("fanotify %s reader did not stop; group closed", group.name)
            if group is not None:
                group.close()
        with self._cond:
            self._watchdog_stop = True
            self._cond.notify_all()
        t = by_name.get("fanotify-watchdog")
        if t is not None:
            _join(t, self._close_timeout)
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=self._close_timeout)
        t = by_name.get("fanotify-dispatch")
        if t is not None:
            _join(t, self._close_timeout)
        self._stats.running = False
        if all(not t.is_alive() for t in self._threads):
            for fd in (self._stop_r, self._stop_w):
                os.close(fd)
            self._stop_r = self._stop_w = -1

    def stats(self) -> FanotifyStats:
        """A snapshot of the counters."""
        s = FanotifyStats(**self._stats.__dict__)
        s.mark_errors = dict(self._stats.mark_errors)
        # Repeats the compiled reader allowed (its counters live in the table).
        repeats, max_hold_us = _REPEAT_COUNTERS.unpack_from(self._repeat_table)
        s.perm_events += repeats
        s.perm_repeats += repeats
        s.perm_answered += repeats
        s.perm_max_hold_us = max(s.perm_max_hold_us, max_hold_us)
        return s

    # -- marks -----------------------------------------------------------

    def set_marks(
        self,
        paths_to_mark: Iterable[str],
        dirs_to_mark: Iterable[str],
        perm_paths: Iterable[str] = (),
        entry_dirs: Iterable[str] = (),
    ) -> MarkChange:
        """Make the marks exactly these (add new ones, remove the others).

        Every wanted mark is added again, which is idempotent for an inode
        already marked and re-attaches a path whose file was replaced (a new
        inode, e.g. after an atomic rename). A replaced file's old inode keeps
        its mark until the inode is freed; its events resolve to another path
        and are filtered by the caller. Failures are counted by errno name
        (ENOENT: gone since the caller listed it; ENOSPC: mark limit).
        """
        perm = set(perm_paths) if self._perm is not None else set()
        dirs = set(dirs_to_mark)
        entry_extra = set(entry_dirs)
        self._want = (tuple(set(paths_to_mark)), tuple(dirs), tuple(set(perm_paths)))
        self._want_entry = tuple(entry_extra)
        errors: dict[str, int] = {}
        removed = 0
        with self._marks_lock:
            entry_done: set[str] = set()
            if self._entry is not None:
                entry_done, removed = self._mark_entry_dirs(dirs | entry_extra, errors)
            # Without an entry group (entry_error says why), entry_dirs are
            # best effort: not watched, not an error each re-mark.
            # A permission-marked file needs no notification event: its open is
            # already held and identified. The notification group ignores it (an
            # ignore mask on its inode also silences a parent directory's mark),
            # which halves the per-open cost: one event and one thread per open.
            want = (set(paths_to_mark) - perm, dirs - entry_done, set(perm_paths), perm)
            plan = (
                (self._notify, NOTIFY_MASK, 0, 0),
                (self._notify, NOTIFY_MASK | FAN_EVENT_ON_CHILD, FAN_MARK_ONLYDIR, 1),
                (self._perm, FAN_OPEN_PERM, 0, 2),
                (
                    self._notify,
                    NOTIFY_MASK,
                    FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
                    3,
                ),
            )
            done: list[set[str]] = [set(), set(), set(), set()]
            for group, mask, flags, k in plan:
                if group is None:
                    if want[k]:
                        errors["NOPERMGROUP"] = len(want[k])
                    continue
                for p in sorted(want[k]):
                    try:
                        group.mark(FAN_MARK_ADD | flags, mask, p)
                    except OSError as e:
                        name = errno.errorcode.get(e.errno or 0, str(e.errno))
                        errors[name] = errors.get(name, 0) + 1
                        continue
                    done[k].add(p)
                for p in sorted(self._marked[k] - want[k]):
                    # ENOENT: gone with its inode, or replaced: nothing to undo.
                    with contextlib.suppress(OSError):
                        group.mark(FAN_MARK_REMOVE | flags, mask, p)
                    removed += 1
            self._marked = (done[0], done[1], done[2], done[3], entry_done)
            self._stats.entry_fallback_dirs = (
                len(done[1] & (dirs - entry_done)) if self._entry_events else 0
            )
            self._count_marks()
            for k2, v in errors.items():
                self._stats.mark_errors[k2] = self._stats.mark_errors.get(k2, 0) + v
        return MarkChange(len(done[0]), len(done[1]), len(done[2]), removed, errors)

    def _count_marks(self) -> None:
        m = self._marked
        self._stats.marks_files = len(m[0] | m[3])
        self._stats.marks_dirs = len(m[1])
        self._stats.marks_perm = len(m[2])
        self._stats.marks_entry_dirs = len(m[4])

    def _mark_entry_dirs(self, want: set[str], errors: dict[str, int]) -> tuple[set[str], int]:
        """Entry marks on ``want`` (marks lock held): (directories marked, removed).

        A directory whose filesystem has no file handles is left out (the
        caller child-marks it when it must be watched); its errno is not an
        error. The handle map is replaced whole: the entry reader looks it up
        without the lock.
        """
        group = self._entry
        assert group is not None
        done: set[str] = set()
        handles: dict[bytes, list[tuple[int, str]]] = {}
        for d in sorted(want):
            try:
                handle = directory_handle(d)
                fsid = filesystem_id(d)
                group.mark(FAN_MARK_ADD | FAN_MARK_ONLYDIR, ENTRY_MASK, d)
            except OSError as e:
                if e.errno not in _NO_FID_ERRNOS:
                    name = errno.errorcode.get(e.errno or 0, str(e.errno))
                    errors[name] = errors.get(name, 0) + 1
                continue
            done.add(d)
            handles.setdefault(handle, []).append((fsid, d))
        removed = 0
        for d in sorted(self._marked[4] - done):
            with contextlib.suppress(OSError):
                group.mark(FAN_MARK_REMOVE | FAN_MARK_ONLYDIR, ENTRY_MASK, d)
            removed += 1
        self._entry_handles = handles
        return done, removed

    def add_file(self, path: str, *, permission: bool = False) -> bool:
        """Mark one more file by inode, keeping every other mark (an entry
        event said it appeared). ``permission``: a ``FAN_OPEN_PERM`` mark (and
        the notification group's ignore mark), when there is a permission
        group. False when the mark failed (counted by errno name)."""
        with self._marks_lock:
            try:
                if permission and self._perm is not None:
                    self._perm.mark(FAN_MARK_ADD, FAN_OPEN_PERM, path)
                    if self._notify is not None:
                        self._notify.mark(
                            FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
                            NOTIFY_MASK,
                            path,
                        )
                    self._marked[2].add(path)
                    self._marked[3].add(path)
                elif self._notify is not None:
                    self._notify.mark(FAN_MARK_ADD, NOTIFY_MASK, path)
                    self._marked[0].add(path)
                else:
                    return False
            except OSError as e:
                name = errno.errorcode.get(e.errno or 0, str(e.errno))
                self._stats.mark_errors[name] = self._stats.mark_errors.get(name, 0) + 1
                return False
            self._count_marks()
            return True

    def flush_marks(self) -> None:
        """Remove every inode and directory mark of both groups (FAN_MARK_FLUSH)."""
        with self._marks_lock:
            for group in (self._notify, self._perm, self._entry):
                if group is not None:
                    group.mark(FAN_MARK_FLUSH, 0, None)
            self._marked = (set(), set(), set(), set(), set())
            self._entry_handles = {}
            self._count_marks()

    # -- notification group ---------------------------------------------

    def _poller(self, group: _Group) -> select.poll:
        p = select.poll()
        p.register(group.fd, select.POLLIN)
        p.register(self._stop_r, select.POLLIN)
        return p

    def _read_batches(
        self,
        group: _Group,
        size: int,
        on_batch: Callable[[bytes], None],
        stall: Callable[[], Optional[threading.Event]] = lambda: None,
    ) -> None:
        """Read batches of up to ``size`` bytes until stopped or the group closes.

        A read error loses one record the kernel failed to copy (e.g. EMFILE
        without FAN_REPORT_FD_ERROR); the batches before and after are kept.
        """
        poller = self._poller(group)
        while not self._stopping:
            poller.poll()
            if self._stopping:
                break
            hold = stall()  # a test hook, looked up before every read
            if hold is not None:
                hold.wait()
            try:
                data = group.read(size)
            except OSError as e:
                self._stats.read_errors += 1
                log.debug("fanotify %s read: %s", group.name, e)
                continue
            if data is None:
                break
            if data:
                on_batch(data)

    def _notify_loop(self) -> None:
        group = self._notify
        assert group is not None
        size = NOTIFY_BATCH_EVENTS * (METADATA_LEN + _PIDFD_INFO.size)
        try:
            self._read_batches(group, size, self._notify_batch, lambda: self._test_notify_stall)
        finally:
            group.close()

    def _notify_batch(self, data: bytes) -> None:
        wall = time.time()
        try:
            events = parse_events(data)
        except FanotifyFormatError as e:
            close_event_fds(e.events)
            self._stats.internal_errors += 1
            log.error("%s", e)
            return
        try:
            self._stats.notify_events += len(events)
            todo: list[tuple[RawEvent, str]] = []
            now = time.monotonic()
            for ev in events:
                if ev.mask & FAN_Q_OVERFLOW:
                    self._stats.overflows += 1
                    continue
                if ev.fd < 0:
                    self._stats.fd_errors += 1
                    continue
                if ev.pid == self._pid:
                    self._stats.self_events += 1
                    continue
                path = fd_path(ev.fd)
                seen = self._perm_seen.get((ev.pid, path))
                if seen is not None and now - seen < _PERM_COVER_SECONDS:
                    self._stats.covered_by_perm += 1
                    continue
                todo.append((ev, path))
            # Identities first, for the whole batch: the opener may be exiting.
            openers: dict[int, Opener] = {}
            for ev, _path in todo:
                if ev.pid not in openers:
                    openers[ev.pid] = self._notify_opener(ev)
            for ev, path in todo:
                opener = openers[ev.pid]
                size, inode = _fd_stat(ev.fd)
                self._emit(FanotifyEvent(wall, ev.mask, path, opener, size, inode=inode))
        except Exception:
            self._stats.internal_errors += 1
            log.exception("fanotify notification batch")
        finally:
            close_event_fds(events)

    def _notify_opener(self, ev: RawEvent) -> Opener:
        pidfd = ev.pidfd
        if pidfd is None:
            return read_opener(self._procfs, ev.pid)
        if pidfd == FAN_NOPIDFD:
            # Exited before we read the event: /proc would only show a
            # zombie or, worse, a later process with the same pid.
            self._stats.exited_before_read += 1
            return Opener(ev.pid)
        if pidfd < 0:  # FAN_EPIDFD: no pidfd for another reason; read unverified
            return read_opener(self._procfs, ev.pid)
        return read_opener(self._procfs, ev.pid, alive=lambda: _pidfd_alive(pidfd))

    # -- entry group -----------------------------------------------------

    def _entry_loop(self) -> None:
        group = self._entry
        assert group is not None
        # One record: metadata, info header, fsid, handle header, handle, name.
        record_max = METADATA_LEN + 4 + 8 + 8 + MAX_HANDLE_SZ + 256
        try:
            self._read_batches(group, 64 * record_max, self._entry_batch)
        finally:
            group.close()

    def _entry_batch(self, data: bytes) -> None:
        wall = time.time()
        records, problem = parse_entry_events(data)
        s = self._stats
        if problem is not None:
            s.internal_errors += 1
            log.error("%s", problem)
        s.entry_events += len(records)
        handles = self._entry_handles
        for r in records:
            if r.mask & FAN_Q_OVERFLOW:
                # Entries were lost: the consumer should look at the
                # directories again (an empty directory says "all of them").
                s.entry_overflows += 1
                self._emit_entry(EntryEvent(wall, FAN_Q_OVERFLOW, "", "", 0))
                continue
            found = handles.get(r.handle, [])
            same_fs = [d for fsid, d in found if fsid == r.fsid]
            if len(same_fs) == 1 or (not same_fs and len(found) == 1):
                d = same_fs[0] if same_fs else found[0][1]
            else:
                s.entry_unknown_dir += 1
                continue
            self._emit_entry(EntryEvent(wall, r.mask, d, r.name, r.pid))

    def _emit_entry(self, event: EntryEvent) -> None:
        # Called on this reader thread, not the dispatcher's: entry events are
        # rare, and a new file is marked as soon as possible (an open that
        # comes before its mark is not seen).
        if self._on_entry is None:
            return
        try:
            self._on_entry(event)
        except Exception:
            self._stats.callback_errors += 1
            log.exception("fanotify on_entry")

    # -- permission group ------------------------------------------------

    def _perm_loop(self) -> None:
        group = self._perm
        assert group is not None
        try:
            if self.native_perm and _native is not None:
                self._read_perm_native(group)
            else:
                self._read_batches(group, PERM_BATCH_EVENTS * METADATA_LEN, self._perm_batch)
        finally:
            # Answer what was read, then closing the group makes the kernel
            # allow whatever is still queued unread.
            self._answer_all(shutdown=True)
            group.close()

    def _read_perm_native(self, group: _Group) -> None:
        """:meth:`_read_batches` for the permission group in C
        (``_speedups.perm_wait``): it polls, reads and allows repeat opens (see
        :meth:`_perm_fast_repeat`) in a loop without the GIL, so an opener in
        a loop never waits for a Python thread; it returns what else it read,
        which goes to :meth:`_perm_batch` as before, or when stopped. It works
        on its own dup of the group fd, closed after each call: a close of the
        group meanwhile never leaves it answering on a reused number, and the
        stop pipe wakes it (then the dup is closed and the group released)."""
        assert _native is not None
        size = PERM_BATCH_EVENTS * METADATA_LEN
        wait = _native.perm_wait
        while not self._stopping:
            with group.lock:
                if group.closed:
                    break
                fd = os.dup(group.fd)
            try:
                rest, read_ns, stopped = wait(
                    fd, self._stop_r, size, self._pid, self._repeat_table, _PERM_REPEAT_SECONDS
                )
            except OSError as e:
                self._stats.read_errors += 1
                log.debug("fanotify %s read: %s", group.name, e)
                if e.errno == errno.EBADF:
                    break
                continue
            finally:
                os.close(fd)
            if stopped:
                break
            if rest:
                # Repeats the table knew are answered; the Python dict's check
                # still runs in _perm_event (a key the table lost to a collision).
                self._perm_batch(rest, read_ns, repeats_checked=True)

    def _perm_batch(
        self, data: bytes, read_ns: Optional[int] = None, repeats_checked: bool = False
    ) -> None:
        if read_ns is None:
            read_ns = time.monotonic_ns()
        wall = time.time()
        try:
            events = parse_events(data)
        except FanotifyFormatError as e:
            events = e.events
            self._stats.internal_errors += 1
            log.error("%s", e)
        if not repeats_checked and len(events) == 1 and self._perm_fast_repeat(events[0], read_ns):
            return
        deadline = read_ns / 1e9 + self.perm_budget
        with self._cond:
            for ev in events:
                if ev.fd >= 0 and ev.mask & PERM_EVENTS:
                    self._pending[ev.fd] = _Pending(deadline, read_ns)
            self._perm_busy_until = deadline
            self._perm_last_batch = read_ns / 1e9
            if self._watchdog_idle:
                self._cond.notify()
        try:
            self._stats.perm_events += len(events)
            for ev in events:
                if ev.mask & FAN_Q_OVERFLOW:
                    self._stats.overflows += 1
                    continue
                if ev.fd < 0:
                    self._stats.fd_errors += 1
                    continue
                try:
                    self._perm_event(ev, wall, deadline)
                except Exception:
                    self._stats.internal_errors += 1
                    log.exception("fanotify permission event")
        finally:
            for ev in events:
                if ev.fd >= 0:
                    self._answer(ev.fd)
            close_event_fds(events)
            self._perm_busy_until = None

    def _perm_fast_repeat(self, ev: RawEvent, read_ns: int) -> bool:
        """Allow a repeat open at once: the same pid opened the same file
        (same st_dev and st_ino) within _PERM_REPEAT_SECONDS and was
        identified then. A process opening a catalogue file in a loop costs
        an fstat and a response per open: no lock but the group's, no
        readlink, no identity read. False (nothing done) for anything else:
        the general path answers it.
        """
        fd = ev.fd
        if fd < 0 or not ev.mask & PERM_EVENTS or ev.pid == self._pid:
            return False
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        seen = self._perm_repeat.get((ev.pid, st.st_dev, st.st_ino))
        if seen is None or read_ns / 1e9 - seen >= _PERM_REPEAT_SECONDS:
            return False
        try:
            group = self._perm
            if group is not None:
                group.allow(fd)
            s = self._stats
            s.perm_events += 1
            s.perm_repeats += 1
            s.perm_answered += 1
            hold = (time.monotonic_ns() - read_ns) // 1000
            if hold > s.perm_max_hold_us:
                s.perm_max_hold_us = hold
        finally:
            close_event_fds((ev,))
        return True

    def _perm_event(self, ev: RawEvent, wall: float, deadline: float) -> None:
        opener = Opener(ev.pid)
        path = ""
        inode: Optional[tuple[int, int]] = None
        size: Optional[int] = None
        # Whether the opener was still waiting when its identity's held part
        # had been read (the watchdog may have answered first), and the hold.
        released: list[Optional[int]] = []
        held = False

        def release() -> None:
            nonlocal held
            if released:
                return
            with self._cond:
                held = ev.fd in self._pending
            released.append(self._answer(ev.fd))

        try:
            if ev.pid == self._pid:
                self._stats.self_events += 1
                return
            stall = self._test_stall
            if stall is not None:
                stall.wait()
            size, inode = _fd_stat(ev.fd)
            if inode is not None:
                seen = self._perm_repeat.get((ev.pid, *inode))
                if seen is not None and time.monotonic() - seen < _PERM_REPEAT_SECONDS:
                    # The same process opened the same file within the last
                    # second: it was identified then, and the read source keeps
                    # one read per (pid, path) per second anyway.
                    self._stats.perm_repeats += 1
                    return
            # The opener waits only for what identifies it (stat, cmdline,
            # exe); read_opener answers through release() and reads the rest.
            opener = read_opener(self._procfs, ev.pid, deadline=deadline, release=release)
            if not held:
                # The watchdog answered during the reads: they may postdate
                # the opener's release (and its exit), so none is trusted.
                opener = Opener(ev.pid)
            if time.monotonic() > deadline:
                self._stats.perm_budget_exceeded += 1
        finally:
            release()
        # Answered: the path (a readlink) and the bookkeeping cost the opener nothing.
        hold = released[0] if released else None
        path = fd_path(ev.fd)
        now = time.monotonic()
        self._perm_seen[(ev.pid, path)] = now
        if opener.identified and inode is not None:
            self._perm_repeat[(ev.pid, *inode)] = now
            if _native is not None:
                _native.perm_remember(self._repeat_table, ev.pid, inode[0], inode[1], now)
        if len(self._perm_seen) > 4096 or len(self._perm_repeat) > 4096:
            self._prune_perm_seen()
        self._emit(FanotifyEvent(wall, ev.mask, path, opener, size, True, hold, inode))

    def _prune_perm_seen(self) -> None:
        cutoff = time.monotonic() - _PERM_COVER_SECONDS
        for k, t in list(self._perm_seen.items()):
            if t < cutoff:
                self._perm_seen.pop(k, None)
        for k2, t in list(self._perm_repeat.items()):
            if t < cutoff:
                self._perm_repeat.pop(k2, None)

    def _answer(self, event_fd: int, *, watchdog: bool = False) -> Optional[int]:
        """Allow one pending event once; returns the hold in µs (None if answered before)."""
        with self._cond:
            return self._answer_locked(event_fd, watchdog=watchdog)

    def _answer_locked(
        self, event_fd: int, *, watchdog: bool = False, shutdown: bool = False
    ) -> Optional[int]:
        p = self._pending.pop(event_fd, None)
        if p is None:
            return None
        group = self._perm
        if group is not None:
            group.allow(event_fd)
        hold = (time.monotonic_ns() - p.read_ns) // 1000
        s = self._stats
        s.perm_answered += 1
        s.perm_watchdog += watchdog
        s.perm_on_shutdown += shutdown
        if hold > s.perm_max_hold_us:
            s.perm_max_hold_us = hold
        return hold

    def _answer_all(self, *, shutdown: bool = False) -> None:
        with self._cond:
            for fd in list(self._pending):
                self._answer_locked(fd, shutdown=shutdown)

    def _watchdog(self) -> None:
        """Allow what the reader holds past its deadline, and while the reader
        is stuck past a deadline, read and allow the events queued behind it
        (nobody else would read them: their openers would wait until close)."""
        group = self._perm
        assert group is not None
        while True:
            with self._cond:
                if self._watchdog_stop:
                    return
                now = time.monotonic()
                if self._test_no_watchdog:
                    self._cond.wait(0.05)
                    continue
                for fd, p in list(self._pending.items()):
                    if p.deadline <= now:
                        self._answer_locked(fd, watchdog=True)
                busy = self._perm_busy_until
                if busy is None or busy > now:
                    due = [p.deadline for p in self._pending.values()]
                    if busy is not None:
                        due.append(busy)
                    if due:
                        timeout: Optional[float] = max(min(due) - now, 0.001)
                    elif now - self._perm_last_batch < _WATCHDOG_LINGER:
                        # Recently busy: poll at half the budget instead of
                        # being woken for every batch (a wake-up per open is a
                        # thread switch per open); holds stay <= 1.5 budgets.
                        timeout = self.perm_budget / 2
                    else:
                        timeout = None
                    self._watchdog_idle = timeout is None
                    self._cond.wait(timeout)
                    self._watchdog_idle = False
                    continue
            # The reader is past its deadline: drain the queue ourselves.
            self._drain(group)

    def _drain(self, group: _Group) -> None:
        """Read a batch of permission events and allow each at once (no identity)."""
        p = select.poll()
        p.register(group.fd, select.POLLIN)
        if not p.poll(max(self.perm_budget, 0.001) * 1000):
            return
        try:
            data = group.read(PERM_BATCH_EVENTS * METADATA_LEN)
        except OSError:
            self._stats.read_errors += 1
            return
        if not data:
            return
        read_ns = time.monotonic_ns()
        wall = time.time()
        try:
            events = parse_events(data)
        except FanotifyFormatError as e:
            events = e.events
        try:
            self._stats.perm_events += len(events)
            for ev in events:
                if ev.fd < 0:
                    self._stats.overflows += bool(ev.mask & FAN_Q_OVERFLOW)
                    continue
                with self._cond:
                    self._pending[ev.fd] = _Pending(0.0, read_ns)
                    hold = self._answer_locked(ev.fd, watchdog=True)
                if ev.pid != self._pid:
                    path = fd_path(ev.fd)
                    size, inode = _fd_stat(ev.fd)
                    self._emit(
                        FanotifyEvent(wall, ev.mask, path, Opener(ev.pid), size, True, hold, inode)
                    )
        finally:
            for ev in events:
                if ev.fd >= 0:
                    self._answer(ev.fd, watchdog=True)
            close_event_fds(events)

    # -- dispatch --------------------------------------------------------

    def _emit(self, event: FanotifyEvent) -> None:
        if not event.opener.identified:
            self._stats.identity_missed += 1
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._stats.dispatch_dropped += 1

    def _dispatch_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, FanotifyEvent)
            self._stats.events += 1
            if self._on_event is None:
                continue
            try:
                self._on_event(item)
            except Exception:
                self._stats.callback_errors += 1
                log.exception("fanotify on_event")


def _join(t: threading.Thread, timeout: float) -> None:
    # close() may be called from on_event, i.e. on the dispatcher thread itself.
    if t is not threading.current_thread():
        t.join(timeout)


def _fd_stat(fd: int) -> tuple[Optional[int], Optional[tuple[int, int]]]:
    """(st_size when a regular file, (st_dev, st_ino)) of the event fd's file."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None, None
    return (st.st_size if stat.S_ISREG(st.st_mode) else None), (st.st_dev, st.st_ino)


def _fd_headroom() -> int:
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        used = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        return -1
    return -1 if soft == resource.RLIM_INFINITY else int(soft) - used


__all__ = [
    "ENTRY_MASK",
    "FAN_ACCESS",
    "FAN_CREATE",
    "FAN_DELETE",
    "FAN_EVENT_ON_CHILD",
    "FAN_MOVED_FROM",
    "FAN_MOVED_TO",
    "FAN_ONDIR",
    "FAN_OPEN",
    "FAN_OPEN_PERM",
    "FAN_Q_OVERFLOW",
    "NOTIFY_MASK",
    "EntryEvent",
    "EntryRecord",
    "FanotifyEvent",
    "FanotifyStats",
    "FanotifyWatcher",
    "MarkChange",
    "Opener",
    "RawEvent",
    "close_event_fds",
    "directory_handle",
    "fanotify_init",
    "fanotify_mark",
    "fd_path",
    "parse_entry_events",
    "parse_events",
    "read_opener",
]
