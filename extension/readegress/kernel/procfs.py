"""Process identity, process details and the socket-inode → (pid, fd) map, from /proc.

Data sources and their quirks:

* ``/proc/sys/kernel/random/boot_id`` — changes every boot; part of a
  process identity so identities from different boots never compare equal.
* ``/proc/stat`` ``btime`` — boot time in Unix seconds; with ``SC_CLK_TCK``
  it turns start ticks into a start time.
* ``/proc/<pid>/stat`` — field 2 is ``(comm)`` and comm may itself contain
  spaces and parentheses, so fields are counted after the *last* ``)``.
  Field 22 (start time in clock ticks since boot) tells a process from a
  later one that reuses its pid; field 9 (flags) marks kernel threads
  (``PF_KTHREAD``), which hold no descriptors.
* ``/proc/<pid>/fd/<n>`` — a socket descriptor reads as ``socket:[<inode>]``.
  Listing another user's fd directory needs root (or CAP_SYS_PTRACE): it
  fails with EACCES, and such processes are counted, never guessed.

Everything here tolerates processes that vanish mid-read: a process that is
gone yields ``None`` or is skipped, never an exception. The procfs root is a
constructor argument only so tests can point at fake content.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Collection, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import NamedTuple, Optional

from readegress.kernel.records import ProcessIdentity, ProcessInfo
from readegress.kernel.sockdiag import read_tcp_info
from readegress.speedups import native as _native

PROC_ROOT = "/proc"
PF_KTHREAD = 0x00200000
#: SocketInodeMap lists every fd directory at least every this many refreshes.
FULL_LISTING_EVERY = 10
#: New fds in one process from which they are read relative to its open fd directory.
_READLINKAT_FROM = 16
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SOCKET_PREFIX = "socket:["
_NOT_SOCKET = 0

# Errors meaning "this process (or descriptor) is gone or off limits": a
# process can exit between any two reads.
_GONE = (FileNotFoundError, ProcessLookupError, NotADirectoryError)


def clock_ticks() -> int:
    """Clock ticks per second (``SC_CLK_TCK``), the unit of /proc start times."""
    return os.sysconf("SC_CLK_TCK")


def boot_id(proc_root: str = PROC_ROOT) -> str:
    """``/proc/sys/kernel/random/boot_id`` (a UUID, new every boot)."""
    with open(f"{proc_root}/sys/kernel/random/boot_id", encoding="ascii") as f:
        return f.read().strip()


def boot_time(proc_root: str = PROC_ROOT) -> int:
    """``btime`` of ``/proc/stat``: boot time in Unix seconds."""
    with open(f"{proc_root}/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("btime "):
                return int(line.split()[1])
    raise OSError(errno.EINVAL, f"no btime line in {proc_root}/stat")


def _read_small(path: str) -> bytes:
    # os.open/os.read: half the cost of open().read() for one-page proc files.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


def parse_stat(data: bytes) -> tuple[int, int, int]:
    """(ppid, flags, start_ticks) from the text of ``/proc/<pid>/stat``.

    Fields are counted after the last ``)``: comm (field 2) may contain
    spaces and parentheses. After it come field 3 (state), 4 (ppid), ...
    9 (flags), ... 22 (starttime).
    """
    rest = data[data.rindex(b")") + 2 :].split(b" ", 20)
    return int(rest[1]), int(rest[6]), int(rest[19])


class StatFields(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` an opener's identity needs."""

    comm: bytes  # field 2, without its parentheses (as /proc/<pid>/comm, no newline)
    ppid: int  # field 4
    pgrp: int  # field 5: what getpgid(pid) returns
    session: int  # field 6: what getsid(pid) returns
    flags: int  # field 9
    start_ticks: int  # field 22


def parse_stat_fields(data: bytes) -> StatFields:
    """:class:`StatFields` from the text of ``/proc/<pid>/stat`` (comm may hold
    spaces and parentheses: fields are counted after the last ``)``)."""
    close = data.rindex(b")")
    rest = data[close + 2 :].split(b" ", 20)
    return StatFields(
        data[data.index(b"(") + 1 : close],
        int(rest[1]),
        int(rest[2]),
        int(rest[3]),
        int(rest[6]),
        int(rest[19]),
    )


def read_proc_file(path: str) -> bytes:
    """The whole of a procfs file, in as few reads as it takes (one for most)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        first = os.read(fd, 8192)
        if len(first) < 8192:
            return first
        chunks = [first]
        while True:
            b = os.read(fd, 65536)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


def real_uid(status: bytes) -> int:
    """Real uid from the text of ``/proc/<pid>/status`` (-1 when absent)."""
    return _status_uid(status)


def parse_start_ticks(data: bytes) -> int:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks after boot when the process started)."""
    return parse_stat(data)[2]


def read_stat(pid: int, proc_root: str = PROC_ROOT) -> Optional[tuple[int, int, int]]:
    """(ppid, flags, start_ticks) of ``pid``, or ``None`` when it is gone."""
    try:
        data = _read_small(f"{proc_root}/{pid}/stat")
    except (*_GONE, PermissionError):
        return None
    try:
        return parse_stat(data)
    except (ValueError, IndexError):  # a zombie being reaped may read empty
        return None


def read_start_ticks(pid: int, proc_root: str = PROC_ROOT) -> Optional[int]:
    """Start ticks of ``pid`` (field 22 of its stat), or ``None`` when it is gone."""
    st = read_stat(pid, proc_root)
    return None if st is None else st[2]


class ProcFs:
    """Reads process identities and details under one procfs root.

    Boot id, boot time and clock ticks are read once: they cannot change
    while the system runs.
    """

    def __init__(self, proc_root: str = PROC_ROOT) -> None:
        self.root = proc_root
        self.boot_id = boot_id(proc_root)
        self.boot_time = boot_time(proc_root)
        self.clock_ticks = clock_ticks()

    def identity(self, pid: int) -> Optional[ProcessIdentity]:
        """The identity of the process now running as ``pid`` (``None`` when none is)."""
        ticks = read_start_ticks(pid, self.root)
        if ticks is None:
            return None
        return ProcessIdentity(self.boot_id, pid, ticks)

    def start_time(self, start_ticks: int) -> int:
        """Unix seconds of a start-ticks value: btime + ticks / CLK_TCK."""
        return self.boot_time + start_ticks // self.clock_ticks

    def process_info(self, identity: ProcessIdentity) -> Optional[ProcessInfo]:
        """What /proc says about ``identity``; ``None`` when that process is gone.

        The identity is checked again after the reads, so details of a later
        process that reused the pid are never returned. An unreadable exe link
        (another user's process without root, a kernel thread, a zombie)
        gives ``path=""``.
        """
        pid = identity.pid
        base = f"{self.root}/{pid}"
        try:
            stat = _read_small(f"{base}/stat")
            comm = _read_small(f"{base}/comm")
            cmdline = read_proc_file(f"{base}/cmdline")
            status = read_proc_file(f"{base}/status")
        except (*_GONE, PermissionError):
            return None
        try:
            path = os.readlink(f"{base}/exe")
        except OSError:
            path = ""
        try:
            ppid, _flags, ticks = parse_stat(stat)
        except (ValueError, IndexError):
            return None
        if ticks != identity.start_ticks:
            return None
        uid = _status_uid(status)
        # Confirm the pid was not reused while the files above were read.
        if read_start_ticks(pid, self.root) != identity.start_ticks:
            return None
        return ProcessInfo(
            identity=identity,
            name=os.fsdecode(comm.rstrip(b"\n")),
            path=path,
            cmdline=os.fsdecode(cmdline.rstrip(b"\0").replace(b"\0", b" ")),
            uid=uid,
            ppid=ppid,
            start_time=self.start_time(ticks),
        )

    def process_info_for_pid(self, pid: int) -> Optional[ProcessInfo]:
        """:meth:`process_info` of whatever process runs as ``pid`` now."""
        ident = self.identity(pid)
        return None if ident is None else self.process_info(ident)


def _status_uid(status: bytes) -> int:
    """Real uid: the first number of the ``Uid:`` line of ``/proc/<pid>/status``."""
    i = status.find(b"\nUid:")
    if i < 0:
        return -1
    return int(status[i + 5 :].split(None, 1)[0])


def list_pids(proc_root: str = PROC_ROOT) -> list[int]:
    """Pids of all processes (thread-group leaders) in the procfs root."""
    return [int(n) for n in os.listdir(proc_root) if n.isdigit()]


def fd_counts_supported(proc_root: str = PROC_ROOT) -> bool:
    """Whether ``stat()`` of a ``<proc_root>/<pid>/fd`` directory gives its open-fd count.

    True on procfs since Linux 6.2 (size = number of open descriptors); older
    procfs reports 0, and a plain directory (a fake tree) its byte size.
    Probed on ``self/fd``, whose count is known: the listing itself adds one
    or two descriptors (another thread opening files could skew it, in which
    case the answer is a safe False).
    """
    try:
        fd = os.open(f"{proc_root}/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        listed = len(os.listdir(f"{proc_root}/self/fd"))
    except OSError:
        return False
    finally:
        os.close(fd)
    return size > 0 and abs(listed - size) <= 2


class _Proc:
    """Cached descriptors of one process identity."""

    __slots__ = ("count", "fds", "identity", "uid")

    def __init__(self, identity: ProcessIdentity) -> None:
        self.identity = identity
        # fd name -> socket inode, or 0 for anything that is not a socket.
        self.fds: dict[str, int] = {}
        # Open-descriptor count (st_size of the fd directory) when last listed.
        self.count = -1
        # Owner of the fd directory: the effective uid (0 if not dumpable).
        self.uid = -1


Holders = tuple[tuple[ProcessIdentity, int], ...]


class SocketInodeMap:
    """An incrementally refreshed map socket inode → ((process identity, fd), ...).

    Each :meth:`refresh` visits every ``/proc/<pid>/fd`` and reads the link of
    a descriptor only when it was not seen before for that process identity;
    a directory whose open-descriptor count did not change is not even listed
    (see :meth:`_scan`). A pid whose start ticks changed is a new process
    (pid reuse): its cached descriptors are dropped. A descriptor number that was closed and reused
    between two refreshes keeps its name, so two cheap checks catch stale
    entries, given ``live_inodes`` (the inodes of the sockets just dumped):

    * a socket inode that was live at the previous refresh and is gone now
      was closed, yet a cached fd may still carry its number: only the fds
      the index lists for that inode are read again;
    * a live inode that no cached descriptor holds may sit behind a reused fd
      cached as a non-socket (or a unix socket): once per such inode, every
      cached descriptor that is not a live inet socket is read again.

    :attr:`owners` is updated in place, entry by entry: an inode whose
    holders did not change keeps the very same tuple object from one refresh
    to the next, so callers can cache per-inode work on identity.

    Processes whose fd directory cannot be listed (EACCES without root) are
    counted in :attr:`unreadable`; their sockets stay without owner. Kernel
    threads are skipped. Threads that unshared their descriptor table
    (``CLONE_FILES`` off) are not visited: /proc lists thread-group leaders.
    """

    def __init__(
        self,
        proc_root: str = PROC_ROOT,
        *,
        boot_id_value: Optional[str] = None,
        fd_counts: Optional[bool] = None,
    ) -> None:
        self.root = proc_root
        #: whether unchanged fd counts may skip a listing (see :meth:`_scan`);
        #: probed by default.
        self.fd_counts = fd_counts_supported(proc_root) if fd_counts is None else fd_counts
        self.boot_id = boot_id_value if boot_id_value is not None else boot_id(proc_root)
        self._procs: dict[int, _Proc] = {}
        self._prev_live: Collection[int] = frozenset()
        self._searched: set[int] = set()
        self._refreshes = 0
        #: readlinkat of many fds in C (``_speedups.socket_links``) when compiled
        self.native_links = _native is not None
        #: inode -> ((identity, fd), ...) of every socket descriptor (any family).
        self.owners: dict[int, Holders] = {}
        #: processes whose fd directory could not be listed at the last refresh.
        self.unreadable = 0
        #: readlink calls made by the last refresh (tests check it stays small).
        self.readlinks = 0
        #: processes visited by the last refresh.
        self.processes = 0
        #: pids whose fd directory the last refresh listed.
        self.listed: list[int] = []

    def identities(self) -> dict[int, ProcessIdentity]:
        """pid -> identity of every process with a readable fd directory at the last refresh."""
        return {pid: p.identity for pid, p in self._procs.items()}

    def refresh(
        self,
        live_inodes: Optional[Collection[int]] = None,
        socket_uids: Optional[Mapping[int, int]] = None,
    ) -> None:
        """Bring the map up to date with /proc (see the class notes for ``live_inodes``).

        ``socket_uids`` (inode -> the uid sock_diag reports: the socket's
        creator) narrows the search for reused fd numbers to processes of
        that uid (and root-owned ones). ``live_inodes`` is kept until the next
        refresh: do not mutate it.
        """
        self._refreshes += 1
        self.listed = []
        full = self._refreshes % FULL_LISTING_EVERY == 1 or live_inodes is None
        readlinks, skipped = self._scan(full)
        if live_inodes is not None:
            # Any set-like (a set, a dict's keys) is used as is: membership only.
            live = live_inodes if isinstance(live_inodes, AbstractSet) else set(live_inodes)
            readlinks += self._drop_closed(live)
            if skipped and self._unexplained(live):
                # A socket nobody holds: maybe behind an fd the count shortcut
                # did not list. List everything before re-reading old fds.
                more, _ = self._scan(True)
                readlinks += more
            readlinks += self._search_reused(live, socket_uids)
        self.readlinks = readlinks

    def _scan(self, full: bool) -> tuple[int, int]:
        """One pass over /proc; returns (readlinks, fd listings skipped).

        Since Linux 6.2 ``stat()`` of ``/proc/<pid>/fd`` gives the number of
        open descriptors as its size for ~2 µs, where listing a 10,000-fd
        directory costs ~10 ms. Unless ``full``, a process whose count did
        not change is not listed: what can change at a constant count (one fd
        closed, another opened) is caught through the dump in
        :meth:`_drop_closed` and :meth:`_unexplained`, and every
        ``FULL_LISTING_EVERY``-th refresh lists everything regardless (a
        socket dup'ed to a new number while another fd closed would
        otherwise keep its old fd number). Older kernels report size 0: then
        every directory is listed.
        """
        root = self.root
        boot = self.boot_id
        old = self._procs
        procs: dict[int, _Proc] = {}
        unreadable = 0
        readlinks = 0
        skipped = 0
        listed = self.listed
        readlink = os.readlink
        listdir = os.listdir
        fd_count = os.stat
        index = self._index
        unindex = self._unindex
        try:
            names = listdir(root)
        except OSError:
            names = []
        for name in names:
            if not name.isdigit():
                continue
            pid = int(name)
            st = read_stat(pid, root)
            if st is None:
                continue
            _ppid, flags, ticks = st
            if flags & PF_KTHREAD:
                continue
            proc = old.get(pid)
            if proc is None or proc.identity.start_ticks != ticks:
                # New process, or a new one reusing the pid: nothing cached is valid.
                proc = _Proc(ProcessIdentity(boot, pid, ticks))
            fd_dir = f"{root}/{name}/fd/"
            try:
                fd_stat = fd_count(fd_dir)
            except PermissionError:
                unreadable += 1
                continue
            except OSError:  # gone (ENOENT, ESRCH) or not a directory
                continue
            count = fd_stat.st_size
            proc.uid = fd_stat.st_uid
            if not full and count and count == proc.count and self.fd_counts:
                procs[pid] = proc
                skipped += 1
                continue
            try:
                fd_names = listdir(fd_dir)
            except PermissionError:
                unreadable += 1
                continue
            except OSError:
                continue
            listed.append(pid)
            proc.count = count
            cache = proc.fds
            fresh = [n for n in fd_names if n not in cache]
            if len(fd_names) - len(fresh) != len(cache):  # some cached fds were closed
                present = set(fd_names)
                ident = proc.identity
                for n in [n for n in cache if n not in present]:
                    ino = cache.pop(n)
                    if ino:
                        unindex(ino, ident, int(n))
            if fresh:
                ident = proc.identity
                # Many new fds (a first scan): readlinkat() relative to the
                # open fd directory walks one path component instead of four
                # (measured: 10k readlinks 39 -> 30 ms of CPU); for a few, the
                # directory's open and close would cost more than they save.
                dir_fd: int | None = None
                if len(fresh) >= _READLINKAT_FROM:
                    try:
                        dir_fd = os.open(fd_dir, _DIR_FLAGS)
                    except OSError:  # gone since the listing
                        fresh = []
                try:
                    if dir_fd is not None and self.native_links:
                        assert _native is not None
                        # The loop below in C: cache filled, (inode, fd) of sockets back.
                        done, socks = _native.socket_links(dir_fd, fresh, cache)
                        readlinks += done
                        owners = self.owners
                        for ino, fd in socks:
                            held = owners.get(ino)
                            owners[ino] = ((ident, fd),) if held is None else (*held, (ident, fd))
                        fresh = []
                    for n in fresh:
                        try:
                            link = (
                                readlink(fd_dir + n)
                                if dir_fd is None
                                else readlink(n, dir_fd=dir_fd)
                            )
                        except OSError:  # closed since the listing
                            continue
                        readlinks += 1
                        ino = cache[n] = _socket_inode(link)
                        if ino:
                            index(ino, ident, int(n))
                finally:
                    if dir_fd is not None:
                        os.close(dir_fd)
            procs[pid] = proc
        for pid, proc in old.items():
            if procs.get(pid) is not proc:  # exited, reused, or now unreadable
                ident = proc.identity
                for n, ino in proc.fds.items():
                    if ino:
                        unindex(ino, ident, int(n))
        self._procs = procs
        self.unreadable = unreadable
        self.processes = len(procs)
        return readlinks, skipped

    def _index(self, ino: int, ident: ProcessIdentity, fd: int) -> None:
        self.owners[ino] = (*self.owners.get(ino, ()), (ident, fd))

    def _unindex(self, ino: int, ident: ProcessIdentity, fd: int) -> None:
        held = self.owners.get(ino)
        if held is None:
            return
        rest = tuple(h for h in held if h[1] != fd or h[0] is not ident)
        if rest:
            self.owners[ino] = rest
        else:
            del self.owners[ino]

    def _drop_closed(self, live: Collection[int]) -> int:
        """Pass 1: a socket that was live and is gone while an fd still carries its
        number: that fd number now names something else (or nothing)."""
        readlinks = 0
        # Set difference in C where both are set-like (a set, a dict's keys):
        # 20k inodes per poll.
        prev = self._prev_live
        gone = (
            prev - live
            if isinstance(prev, AbstractSet) and isinstance(live, AbstractSet)
            else [i for i in prev if i not in live]
        )
        for ino in gone:
            for ident, fd in self.owners.get(ino, ()):
                proc = self._procs.get(ident.pid)
                if proc is not None and proc.identity is ident:
                    readlinks += 1
                    self._relink(proc, str(fd))
        self._prev_live = live
        return readlinks

    def _unexplained(self, live: Collection[int]) -> set[int]:
        """Live inodes no cached descriptor holds and not searched for yet."""
        if isinstance(live, AbstractSet):
            missing = set(live - self.owners.keys())
        else:
            missing = {i for i in live if i not in self.owners}
        missing.difference_update(self._searched)
        return missing

    def _search_reused(
        self, live: Collection[int], socket_uids: Optional[Mapping[int, int]]
    ) -> int:
        """Pass 2: live inodes nobody holds may sit behind an fd number cached as a
        file or unix socket; re-read those once per such inode.

        Unexplained inodes are common enough (a short-lived process exits
        between the dump and the scan; a socket in flight over SCM_RIGHTS) that
        re-reading every cached descriptor each time would cost more than the
        rest of the refresh. With ``socket_uids`` only processes whose fd
        directory belongs to a uid of those sockets (the creator: normally the
        holder) or to root (also shown for non-dumpable processes) are re-read.
        A socket handed to another user's process is then left unowned, never
        given a wrong owner.
        """
        readlinks = 0
        missing = self._unexplained(live)
        if missing:
            uids: Optional[set[int]] = None
            if socket_uids is not None:
                uids = {socket_uids.get(i, 0) for i in missing}
                uids.add(0)
            for proc in self._procs.values():
                if uids is not None and proc.uid not in uids:
                    continue
                for n, ino in list(proc.fds.items()):
                    if ino not in live:
                        readlinks += 1
                        self._relink(proc, n)
            self._searched.update(missing)
        if self._searched:
            self._searched.intersection_update(live)
        return readlinks

    def _relink(self, proc: _Proc, name: str) -> None:
        ident = proc.identity
        old = proc.fds.get(name, 0)
        try:
            ino = _socket_inode(os.readlink(f"{self.root}/{ident.pid}/fd/{name}"))
        except OSError:
            ino = None
        if ino == old:
            return
        if old:
            self._unindex(old, ident, int(name))
        if ino is None:
            proc.fds.pop(name, None)
            return
        proc.fds[name] = ino
        if ino:
            self._index(ino, ident, int(name))

    def owners_of(self, inode: int) -> Holders:
        """((identity, fd), ...) holding socket ``inode`` at the last refresh (empty if none)."""
        return self.owners.get(inode, ())


def _socket_inode(link: str) -> int:
    """N of a ``socket:[N]`` link (ASCII digits, below 2**64), else 0 (not a socket).

    Strict on purpose: the compiled twin (``_speedups.socket_links``) parses
    the same way, and the kernel writes nothing else."""
    if link.startswith(_SOCKET_PREFIX) and link.endswith("]"):
        digits = link[8:-1]
        if digits.isascii() and digits.isdigit():
            n = int(digits)
            return n if n < _U64_LIMIT else _NOT_SOCKET
    return _NOT_SOCKET


_U64_LIMIT = 1 << 64


def socket_inodes_of(pid: int, proc_root: str = PROC_ROOT) -> dict[int, int]:
    """fd -> socket inode of one process, read fresh (``{}`` when gone or unreadable)."""
    out: dict[int, int] = {}
    d = f"{proc_root}/{pid}/fd"
    try:
        names: Iterable[str] = os.listdir(d)
    except OSError:
        return out
    for n in names:
        try:
            ino = _socket_inode(os.readlink(f"{d}/{n}"))
        except OSError:
            continue
        if ino:
            out[int(n)] = ino
    return out


_PIPE_PREFIX = "pipe:["
_SYS_PIDFD_GETFD = 438  # the same number on every architecture (asm-generic table)
SO_COOKIE = 57
_U64 = struct.Struct("=Q")


class PidfdGetfd:
    """``pidfd_getfd(2)`` through libc's ``syscall`` (Python has no wrapper)."""

    def __init__(self) -> None:
        import ctypes  # here: ~2 ms of imports a `readegress query` does not need

        self._syscall: Optional[Callable[..., int]] = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.syscall
            fn.restype = ctypes.c_long
            self._syscall = fn
        except (OSError, AttributeError):
            self._syscall = None
        self.works = self._syscall is not None and hasattr(os, "pidfd_open")

    def __call__(self, pidfd: int, fd: int) -> int:
        import ctypes

        if self._syscall is None:
            raise OSError(errno.ENOSYS, "pidfd_getfd unavailable")
        r = self._syscall(
            ctypes.c_long(_SYS_PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0)
        )
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"pidfd_getfd: {os.strerror(e)}")
        return int(r)


class StdFds(NamedTuple):
    """What a process has on fd 0 and 1: pipe inodes, and socket inodes."""

    stdin_pipe: Optional[int] = None
    stdout_pipe: Optional[int] = None
    #: (fd, socket inode) of fd 0/1 when a socket (``cat key > /dev/tcp/host/port``)
    sockets: tuple[tuple[int, int], ...] = ()


def std_fds(pid: int, start_ticks: Optional[int], proc_root: str = PROC_ROOT) -> StdFds:
    """Pipe and socket inodes on fd 0 and fd 1 of ``pid`` (see :func:`std_pipes`)."""
    links: list[Optional[str]] = []
    for fd in (0, 1):
        try:
            links.append(os.readlink(f"{proc_root}/{pid}/fd/{fd}"))
        except OSError:
            links.append(None)
    found = std_fds_of_links(links[0], links[1])
    if found == StdFds():
        return found
    if start_ticks is not None and read_start_ticks(pid, proc_root) != start_ticks:
        return StdFds()
    return found


def std_fds_of_links(fd0: Optional[str], fd1: Optional[str]) -> StdFds:
    """:class:`StdFds` from the link texts of fd 0 and fd 1 (None: unreadable)."""
    pipes: list[Optional[int]] = []
    sockets: list[tuple[int, int]] = []
    for fd, link in ((0, fd0), (1, fd1)):
        ino: Optional[int] = None
        if link is None:
            pass
        elif link.startswith(_PIPE_PREFIX):
            try:
                ino = int(link[6:-1])
            except ValueError:
                ino = None
        elif link.startswith(_SOCKET_PREFIX):
            sock = _socket_inode(link)
            if sock:
                sockets.append((fd, sock))
        pipes.append(ino)
    return StdFds(pipes[0], pipes[1], tuple(sockets))


def std_pipes(
    pid: int, start_ticks: Optional[int], proc_root: str = PROC_ROOT
) -> tuple[Optional[int], Optional[int]]:
    """(stdin pipe inode, stdout pipe inode) of ``pid``; ``None`` where fd 0/1 is no pipe.

    ``/proc/<pid>/fd/0`` and ``/1`` read as ``pipe:[<inode>]`` for a shell
    pipeline's members: ``tar c key | openssl enc | curl -T -`` gives tar's
    fd 1 and openssl's fd 0 one inode, and openssl's fd 1 and curl's fd 0
    another. Two readlinks, then the start ticks are read again: a pid reused
    during the reads (``start_ticks`` differs) yields ``(None, None)``, never
    another process's pipes. Other descriptors are not read (a pipeline's data
    travels on 0 and 1; reading every fd of a process costs one readlink each).
    """
    f = std_fds(pid, start_ticks, proc_root)
    return f.stdin_pipe, f.stdout_pipe


def std_socket_state(
    pid: int, sockets: Iterable[tuple[int, int]], getfd: Optional[PidfdGetfd] = None
) -> tuple[tuple[int, Optional[int]], ...]:
    """(SO_COOKIE, bytes sent so far) of sockets ``(fd, inode)`` of a live ``pid``.

    Meant for an opener fanotify holds: its socket's byte count then is exactly
    what was sent before the read (``None`` for a socket without TCP counters).
    The descriptor is duplicated with pidfd_getfd (root), checked to be the
    same inode, queried and closed; nothing about the socket changes (the
    owner is waiting, so the duplicate is never its last reference). Any
    failure yields fewer entries, never an exception.
    """
    global _GETFD
    if getfd is None:
        if _GETFD is None:
            _GETFD = PidfdGetfd()
        getfd = _GETFD
    out: list[tuple[int, Optional[int]]] = []
    if not getfd.works:
        return ()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return ()
    try:
        for fd, inode in sockets:
            try:
                dup = getfd(pidfd, fd)
            except OSError:
                continue
            try:
                # socket(fileno=) would make the shared description non-blocking
                # under a default timeout: then nothing is read at all.
                if os.fstat(dup).st_ino != inode or socket.getdefaulttimeout() is not None:
                    continue
                s = socket.socket(fileno=dup)
                try:
                    cookie = _U64.unpack(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
                    sent: Optional[int] = None
                    if s.proto == socket.IPPROTO_TCP:
                        raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
                        sent = read_tcp_info(raw, 0, len(raw))[0]
                    out.append((cookie, sent))
                finally:
                    s.detach()  # the descriptor is closed below, once
            except OSError:
                continue
            finally:
                os.close(dup)
    finally:
        os.close(pidfd)
    return tuple(out)


#: built at the first std_socket_state without its own (ctypes is imported then)
_GETFD: Optional[PidfdGetfd] = None
