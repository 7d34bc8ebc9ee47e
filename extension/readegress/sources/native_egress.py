"""The native egress source: outbound connections and transfers, from sock_diag and /proc.

Where the data comes from, and what each path is for:

* **Full polls** (every ``interval`` seconds, 1 s by default; slower when a poll
  costs more than ``full_cpu_budget`` of a CPU): a sock_diag dump of every TCP
  and UDP socket of this host's network namespace
  (:class:`~readegress.kernel.sockdiag.SockDiag`), and — only when a new
  connected socket has no known owner — the incremental ``/proc/<pid>/fd`` map
  (:class:`~readegress.kernel.procfs.SocketInodeMap`). A connected socket seen
  for the first time with an owner becomes ``Egress(kind="connect")`` at the
  time it was first seen. Sockets present at the very first poll existed before
  the source started: they are never reported as connects.
* **Destroy notifications** (:class:`~readegress.kernel.sockdiag.DestroyListener`):
  the final counters of every socket as the kernel frees it, joined on the
  cookie to what a poll saw. They carry ``inode`` 0 and ``uid`` 0, so a socket
  that no poll or hot tick saw has no owner: it becomes an ``Egress`` at host
  scope with **pid 0** ("some process on this host", never a real pid; the core
  keeps no lineage for it, so it can only chain at host scope) and is counted in
  ``unattributed``. Only sockets that were connected (TCP: the SYN was acked,
  ``bytes_acked >= 1``; UDP: a peer address) and not accepted from one of this
  host's listeners count, and only for destinations in the config's
  ``egress_classes`` (the rest are counted, not fed: a loopback benchmark would
  otherwise feed thousands a second).
* **Hot mode**: a connection that lasts under 50 ms usually opens and closes
  between two full polls. When a sensitive read arrives (:meth:`note_read`;
  ``NativeSources`` hands on only reads of classes that may alert alone), the
  reader's *lineage* is watched every
  ``hot_interval`` (1 ms by default) for the correlation window: the children
  of its parent and their descendants (the reader, its siblings of a pipeline,
  what they fork), or the reader's own subtree when its parent is pid 0-2, plus
  the members of its process group. Readers with the same parent share one
  watch. It ends when that subtree is gone and, for a parent-rooted watch,
  ``PARENT_GRACE`` (2 s) later if the parent lives on (``cat key; curl ...``
  forks the sender after the reader exits). A hot tick lists the lineage's
  ``/proc/<pid>/fd`` (children from ``/proc/<pid>/task/<tid>/children``; the
  process group from a ``/proc`` scan every 0.25 s on the poll thread) and
  resolves each *new* socket inode: ``pidfd_getfd(2)`` (Linux 5.6+, root)
  duplicates the descriptor into this process, ``SO_COOKIE``, the addresses
  and ``TCP_INFO`` are read from the duplicate, which is closed at once. The
  cost does not depend on how many sockets the host has (a sock_diag dump of a
  host with 20k sockets takes ~300 ms). ``SO_COOKIE`` works in every state, so
  a socket seen before it connected, or after its connection ended (a full
  socket whose peers both closed is in ``TCP_CLOSE`` and has no peer address)
  is still attributed: its cookie and owner are kept until its destroy
  notification brings the addresses and final counters
  (``attributed_at_close``). A socket not connected yet is re-read 0.2 ms
  later. Where ``pidfd_getfd`` is refused, a tick with new inodes falls back
  to one sock_diag dump. The duplicate shares the open file description for a
  few microseconds; nothing about the socket is changed (no option is set, the
  descriptor is never made non-blocking), but if the owner closes its
  descriptor in that window the socket is released when the duplicate is
  closed. The tick interval adapts so that ticks take at most
  ``hot_cpu_budget`` (10%) of one CPU; at most ``max_hot_readers`` watches run
  at once (reads beyond are counted in ``hot_skipped`` and only get transfer
  baselines). A connection whose descriptor lives less than one tick can
  still be missed: it is then reported at host scope (pid 0).
* **Transfers**: sockets that existed before a read by their owner's lineage
  and carry bytes after it (seen by an earlier poll, or, when none saw it, with a
  ``tcp_info`` idle time — a lower bound on the socket's age — longer than the
  time since the read). When the read arrives, each TCP socket the lineage
  holds gets a baseline of ``bytes_sent``: the value read right then when
  ``tcp_info.last_data_sent`` shows nothing was sent since the read (exact,
  counted in ``baselines_exact``), else the last value a poll saw before the
  read (an upper bound on the bytes after the read: it includes what was sent
  between that poll and the read), or 0 for a socket no poll saw (all its
  bytes: an upper bound), or, failing all that, the value now (a lower
  bound). Later polls, hot transfer checks (every 50 ms while hot) and the
  destroy notification compare; the first increase becomes
  ``Egress(kind="transfer", bytes_sent=<bytes since the read>)``. UDP keeps no
  byte counters: no transfer is ever reported on UDP.

A socket whose connect happened in the few milliseconds between a read and the
read event reaching this source cannot be told from one opened just after the
read: it is reported as a connect after the read, with all its bytes (an upper
bound). ``last_data_sent`` has jiffy resolution (4 ms at HZ=250): the exact
baseline requires 10 ms of margin.

Only this host's network namespace is polled and listened to; sockets of
processes in other namespaces are seen only through hot-mode descriptor
duplication (no destroy notification for them).

Threads: a hot thread (reads, baselines, hot ticks), a poll thread (full polls)
and the destroy listener's; they share the socket table under one lock and call
``on_egress`` outside it. ``on_final(cookie)`` is called when the final counters
of a socket that was reported arrive, so a consumer can settle early.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional

from readegress.detect.config import Config
from readegress.detect.events import Egress, Proc, SensitiveRead
from readegress.kernel.fanotify import Opener, read_opener
from readegress.kernel.procfs import PROC_ROOT, PidfdGetfd, ProcFs, SocketInodeMap, read_stat
from readegress.kernel.records import ProcessIdentity, ProcessInfo, SocketInfo
from readegress.kernel.sockdiag import (
    DestroyListener,
    DestroySubscribeError,
    SockDiag,
    read_tcp_info,
)
from readegress.net.classify import classify
from readegress.service.socket_facts import normalize_address

log = logging.getLogger("readegress.sources.native_egress")

SOURCE = "sock_diag"
DEFAULT_INTERVAL = 1.0
DEFAULT_HOT_INTERVAL = 0.001
DEFAULT_HOT_CPU_BUDGET = 0.10
DEFAULT_FULL_CPU_BUDGET = 0.10
DEFAULT_MAX_HOT_READERS = 8
DEFAULT_MAX_LINEAGE = 64
#: While hot, baselined sockets of the lineage are re-read this often.
TRANSFER_CHECK_INTERVAL = 0.05
#: While hot, the process-group members are re-listed this often (a /proc scan,
#: on the poll thread).
PGID_SCAN_INTERVAL = 0.25
#: While hot, the siblings (children of the reader's parent) are re-listed this often.
SIBLING_SCAN_INTERVAL = 0.01
#: Hot mode outlives the reader, its descendants and siblings by this much while
#: their parent lives: ``cat key; curl ...`` forks the sender after the reader exits.
PARENT_GRACE = 2.0
#: An unconnected socket (socket() before connect()) is retried this long...
UNRESOLVED_RETRY_SECONDS = 5.0
#: ... and the next tick comes this soon: a loopback connect completes in
#: microseconds, and the whole connection may last under a millisecond.
FAST_RETRY = 0.0002
#: Right after each read, ticks come this often for BURST_SECONDS, whatever the
#: CPU budget: most exfiltrating sockets appear within milliseconds of the read
#: and may live less than one normal tick (bounded: ~100 ticks per read).
BURST_INTERVAL = 0.00025
BURST_SECONDS = 0.025
#: last_data_sent has jiffy resolution (4 ms at HZ=250) and the read's time is
#: taken just after the open: the "nothing sent since the read" test keeps this margin.
LAST_SENT_SLACK = 0.010
#: Sockets that left the dump without a destroy notification are forgotten after this.
GONE_GRACE = 10.0
MAX_WATCHES_PER_SOCKET = 4
MAX_WATCHES = 10_000
MAX_RETAINED = 10_000
MAX_OWNERS = 4096
MAX_IGNORED_INODES = 8192
#: Cookies of lineage sockets seen without a peer, waiting for their destroy notification.
MAX_PENDING_OWNERS = 8192
#: Parents whose children are unrelated to each other (as the correlation core says).
NON_LINEAGE_PARENTS = frozenset({0, 1, 2})

TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_CLOSE = 7
TCP_LISTEN = 10
_TCP = socket.IPPROTO_TCP
_UDP = socket.IPPROTO_UDP
_PROTOCOL_NAMES = {_TCP: "tcp", _UDP: "udp"}
SO_COOKIE = 57
SO_ACCEPTCONN = getattr(socket, "SO_ACCEPTCONN", 30)
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_U64 = struct.Struct("=Q")
_WILDCARDS = frozenset({"0.0.0.0", "::"})


# ----------------------------------------------------------------- records


@dataclass(frozen=True)
class EgressFacts:
    """What this source knows of one reported socket (for settling a detection)."""

    bytes_sent: Optional[int]  # connect: all bytes on the socket; transfer: since the read
    socket_age: int  # seconds, a lower bound (first seen, or idle time, whichever is older)
    keepalive: bool
    protocol: str  # "tcp" / "udp"
    closed: bool  # final counters known (destroy notification): nothing more will change
    owner: Optional[Proc]
    owner_start_time: Optional[int]  # Unix seconds, from start ticks


@dataclass
class NativeEgressStats:
    """Health counters of the native egress source (JSON-able through :meth:`as_dict`)."""

    running: bool = False
    getfd: bool = False  # pidfd_getfd works here (hot ticks need no dump)
    start_error: str = ""
    full_polls: int = 0
    full_poll_ms: float = 0.0  # duration of the last full poll
    full_interval: float = 0.0  # effective interval (raised when polls are expensive)
    fd_map_refreshes: int = 0  # full polls that needed the /proc fd map
    sockets_tracked: int = 0
    connects: int = 0  # Egress(kind=connect) emitted with an owner
    transfers: int = 0  # Egress(kind=transfer) emitted
    unattributed: int = 0  # closed sockets no poll attributed: pid 0, host scope
    unattributed_fed: int = 0  # ... of which in an egress class and fed
    std_sockets: int = 0  # sockets on a reader's fd 0/1 at the read, noted by cookie
    destroy_events: int = 0
    destroy_overruns: int = 0  # receive-buffer overruns: notifications lost
    destroy_error: str = ""
    hot_readers: int = 0  # readers hot now
    hot_started: int = 0
    hot_skipped: int = 0  # reads not made hot: max_hot_readers already hot
    hot_ticks: int = 0
    hot_cpu_seconds: float = 0.0  # thread CPU spent in hot ticks and baselines
    hot_wall_seconds: float = 0.0  # time with at least one hot reader
    hot_interval_ms: float = 0.0  # effective hot interval
    hot_resolved: int = 0  # sockets resolved by a hot tick
    hot_resolve_failed: int = 0  # descriptors gone before they could be read
    hot_dumps: int = 0  # hot ticks that fell back to a sock_diag dump
    attributed_at_close: int = 0  # seen by a hot tick without a peer, attributed at destroy
    lineage_truncated: int = 0  # lineages cut at max_lineage processes
    baselines: int = 0
    baselines_exact: int = 0
    watches_dropped: int = 0  # baselines not kept (limits)
    errors: int = 0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    @property
    def hot_cpu_fraction(self) -> float:
        """CPU seconds per second of hot mode (1.0 = one whole CPU)."""
        return self.hot_cpu_seconds / self.hot_wall_seconds if self.hot_wall_seconds else 0.0


@dataclass
class _Watch:
    """A baseline of a pre-existing socket's bytes_sent at a read by its owner's lineage."""

    read_time: float
    baseline: int
    exact: bool
    owner: Proc
    expires: float
    emitted: bool = False


class _Sock:
    """One connected socket as this source tracks it (keyed by cookie)."""

    __slots__ = (
        "bytes_sent",
        "closed",
        "cookie",
        "emitted",
        "first_seen",
        "gone_since",
        "history",
        "holder",
        "inbound",
        "inode",
        "keepalive",
        "last_data_ms",
        "last_seen",
        "owner",
        "preexisting",
        "protocol",
        "remote_address",
        "remote_port",
        "retain_until",
        "watches",
    )

    def __init__(self, info: SocketInfo, now: float, preexisting: bool, inbound: bool) -> None:
        self.cookie = info.cookie
        self.protocol = info.protocol
        self.remote_address = info.remote_address
        self.remote_port = info.remote_port
        self.inode = info.inode
        self.first_seen = now
        self.last_seen = now
        self.preexisting = preexisting
        self.inbound = inbound
        self.owner: Optional[Proc] = None
        self.holder: Optional[tuple[int, int, int]] = None  # (pid, start ticks, fd)
        self.bytes_sent: Optional[int] = None
        self.history: deque[tuple[float, int]] = deque(maxlen=3)
        self.last_data_ms = 0
        self.keepalive = False
        self.emitted = False
        self.closed = False
        self.gone_since: Optional[float] = None
        self.retain_until = 0.0
        self.watches: list[_Watch] = []

    def update(self, info: SocketInfo, now: float) -> None:
        self.last_seen = now
        self.gone_since = None
        if info.inode:
            self.inode = info.inode
        sent = info.bytes_sent
        if sent is not None:
            # tcp_disconnect() zeroes the counters of a socket closed with an RST
            # before the destroy notification: the larger value is the truth.
            if self.bytes_sent is None or sent > self.bytes_sent:
                self.bytes_sent = sent
            self.history.append((now, self.bytes_sent))
        ls, lr = info.last_data_sent_ms, info.last_data_recv_ms
        if ls is not None:
            self.last_data_ms = max(ls, lr or 0)
        self.keepalive = info.timer == 2

    def bytes_before(self, t: float) -> Optional[int]:
        """bytes_sent at the latest observation at or before ``t``."""
        best: Optional[int] = None
        for when, sent in self.history:
            if when <= t:
                best = sent
        return best


@dataclass
class _Hot:
    """A lineage watched fast: the subtree of a reader's parent, or of the reader itself
    when its parent is pid 0-2 (whose children are unrelated to each other).

    Readers with the same parent share one entry: their lineages (the parent's
    children and their descendants) are the same set.
    """

    root: int  # the parent, or the reader
    root_start: Optional[int]  # the reader's start ticks when root is the reader
    by_parent: bool
    until: float
    pgids: set[int] = field(default_factory=set)
    members: dict[int, int] = field(default_factory=dict)  # pid -> start ticks
    children: list[int] = field(default_factory=list)  # root's children, last listed
    children_listed: float = 0.0  # monotonic
    empty_since: Optional[float] = None  # monotonic: the whole subtree gone
    burst_until: float = 0.0  # monotonic: fast ticks until then (after a read)


# ------------------------------------------------------- descriptor access


#: The pidfd_getfd wrapper lives in kernel.procfs (the read source uses it too).
_PidfdGetfd = PidfdGetfd


@dataclass(frozen=True)
class _Resolved:
    """A descriptor duplicated and read: a connected socket, a listener, or nothing to track."""

    info: Optional[SocketInfo]  # connected TCP/UDP socket
    listener: Optional[tuple[str, int]] = None  # (address, port) of a listening socket
    retry: bool = False  # a TCP/UDP socket not connected yet
    #: cookie of a TCP/UDP socket without a peer address now: not connected yet, or
    #: (``finished``) its connection is over and only the descriptor is left.
    cookie: Optional[int] = None
    finished: bool = False


def _read_socket(fd: int, inode: int) -> _Resolved:
    """Read a duplicated socket descriptor (ours to close) without changing it."""
    try:
        st = os.fstat(fd)
        if st.st_ino != inode:
            return _Resolved(None)  # the fd number was reused since the listing
        # socket(fileno=) only queries the descriptor (family, type, protocol);
        # it would make it non-blocking if a default timeout were set, and the
        # duplicate shares the owner's file status flags, so that is checked.
        if socket.getdefaulttimeout() is not None:
            raise RuntimeError("a default socket timeout would alter the owner's socket")
        s = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return _Resolved(None)
    try:
        if s.family not in (socket.AF_INET, socket.AF_INET6):
            return _Resolved(None)
        proto = s.proto
        if proto not in (_TCP, _UDP):
            return _Resolved(None)
        local = s.getsockname()
        if proto == _TCP and s.getsockopt(socket.SOL_SOCKET, SO_ACCEPTCONN):
            return _Resolved(None, listener=(str(local[0]), int(local[1])))
        cookie = _U64.unpack(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
        try:
            peer = s.getpeername()
        except OSError:
            # Not connected yet, or over: a full socket whose connection ended
            # (FIN both ways, an RST) is in TCP_CLOSE and has no peer address
            # any more. Its cookie is enough: the destroy notification brings
            # the addresses and final counters.
            finished = False
            if proto == _TCP:
                raw = s.getsockopt(_TCP, _TCP_INFO, 256)
                acked = read_tcp_info(raw, 0, len(raw))[1]
                finished = raw[0] == TCP_CLOSE and (acked or 0) >= 1
            return _Resolved(None, retry=not finished, cookie=cookie, finished=finished)
        keepalive = bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        state = TCP_ESTABLISHED
        counters: tuple[Optional[int], ...] = (None,) * 7
        if proto == _TCP:
            raw = s.getsockopt(_TCP, _TCP_INFO, 256)
            state = raw[0]
            counters = read_tcp_info(raw, 0, len(raw))
        return _Resolved(
            SocketInfo(
                int(s.family),
                proto,
                state,
                str(local[0]),
                int(local[1]),
                str(peer[0]),
                int(peer[1]),
                inode,
                cookie,
                -1,
                2 if keepalive else 0,
                *counters,
            )
        )
    except OSError:
        return _Resolved(None)
    finally:
        s.close()


def _read_proc(path: str) -> bytes:
    # os.open/os.read: half the cost of open().read() on one-page proc files,
    # and hot ticks read several per process.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 16384)
    finally:
        os.close(fd)


def _children(pid: int, proc_root: str) -> list[int]:
    """Children of every thread of ``pid`` (``/proc/<pid>/task/<tid>/children``)."""
    out: list[int] = []
    base = f"{proc_root}/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        try:
            out.extend(int(x) for x in _read_proc(f"{base}/{tid}/children").split())
        except (OSError, ValueError):
            continue
    return out


def _stat_fields(pid: int, proc_root: str) -> Optional[tuple[int, int, int]]:
    """(ppid, pgrp, start ticks) of ``pid`` from its stat line, or None when gone."""
    try:
        data = _read_proc(f"{proc_root}/{pid}/stat")
        rest = data[data.rindex(b")") + 2 :].split(b" ", 20)
        return int(rest[1]), int(rest[2]), int(rest[19])
    except (OSError, ValueError, IndexError):
        return None


def _socket_fds(pid: int, proc_root: str) -> list[tuple[int, int]]:
    """(fd, socket inode) of ``pid`` now (empty when gone or unreadable)."""
    d = f"{proc_root}/{pid}/fd"
    try:
        names = os.listdir(d)
    except OSError:
        return []
    out: list[tuple[int, int]] = []
    for n in names:
        try:
            link = os.readlink(f"{d}/{n}")
        except OSError:
            continue
        if link.startswith("socket:["):
            with contextlib.suppress(ValueError):
                out.append((int(n), int(link[8:-1])))
    return out


def proc_of(o: Opener, start: Optional[int] = None) -> Proc:
    """The event-side view of an :class:`Opener` (start ticks from ``start`` when unread)."""
    return Proc(
        pid=o.pid,
        ppid=o.ppid,
        executable=o.executable,
        start=o.start_ticks if o.start_ticks is not None else start,
        uid=o.uid,
        auid=o.auid,
        cmdline=o.cmdline,
        pgid=o.pgid,
        sid=o.sid,
        stdin_pipe=o.stdin_pipe,
        stdout_pipe=o.stdout_pipe,
    )


# ------------------------------------------------------------------ source


class NativeEgressSource:
    """Egress events from sock_diag, /proc and destroy notifications (see the module notes).

    ``on_egress`` is called from the source's threads, one event at a time,
    never under the source's lock; it should hand the event on quickly.
    ``on_process(proc, time)`` is called (hot thread) with the identity of each
    process first seen in a hot lineage: a pipeline member that never reads or
    sends (``base64`` in ``cat key | base64 | curl``) is part of the chain too.
    :meth:`start` raises ``OSError`` when sock_diag cannot be used.
    """

    def __init__(
        self,
        config: Config,
        on_egress: Callable[[Egress], None],
        host: Optional[str] = None,
        *,
        on_final: Optional[Callable[[int], None]] = None,
        on_process: Optional[Callable[[Proc, float], None]] = None,
        interval: float = DEFAULT_INTERVAL,
        hot_interval: float = DEFAULT_HOT_INTERVAL,
        hot_cpu_budget: float = DEFAULT_HOT_CPU_BUDGET,
        full_cpu_budget: float = DEFAULT_FULL_CPU_BUDGET,
        max_hot_readers: int = DEFAULT_MAX_HOT_READERS,
        max_lineage: int = DEFAULT_MAX_LINEAGE,
        use_getfd: bool = True,
        proc_root: str = PROC_ROOT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host or socket.gethostname()
        self._config = config
        self._on_egress = on_egress
        self._on_final = on_final
        self._on_process = on_process
        self._members_seen: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.interval = interval
        self.hot_interval = hot_interval
        self.hot_cpu_budget = hot_cpu_budget
        self.full_cpu_budget = full_cpu_budget
        self.max_hot_readers = max_hot_readers
        self.max_lineage = max_lineage
        self.proc_root = proc_root
        self.clock = clock
        self._getfd = PidfdGetfd() if use_getfd else None
        self._procfs: Optional[ProcFs] = None
        self._pid = os.getpid()
        self._pgid = os.getpgid(0)
        self._lock = threading.Lock()
        self._socks: dict[int, _Sock] = {}
        self._inode_cookie: dict[int, int] = {}
        self._listeners: dict[tuple[str, int], float] = {}
        self._ignored: OrderedDict[int, None] = OrderedDict()  # inodes not worth resolving
        self._unresolved: dict[int, float] = {}  # inode -> first tried (not connected yet)
        # cookie -> (owner, first seen, (pid, start, fd)) of lineage sockets seen
        # without a peer address: attributed when their destroy notification comes.
        self._pending_owners: OrderedDict[int, tuple[Proc, float, tuple[int, int, int]]] = (
            OrderedDict()
        )
        self._owners: OrderedDict[tuple[int, int], Proc] = OrderedDict()
        self._owners_lock = threading.Lock()
        self._watch_count = 0
        self._hot: dict[int, _Hot] = {}  # parent pid, or -reader pid -> entry (hot thread)
        self._inbox: deque[SensitiveRead] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener: Optional[DestroyListener] = None
        self._poll_diag: Optional[SockDiag] = None
        self._hot_diag: Optional[SockDiag] = None
        self._fdmap: Optional[SocketInodeMap] = None
        self._pgid_members: dict[int, list[int]] = {}
        self._wanted_pgids: frozenset[int] = frozenset()
        self._hot_cost = 0.0  # EWMA of a hot tick's CPU seconds
        self._full_cost = 0.0
        self.stats_ = NativeEgressStats(getfd=bool(self._getfd and self._getfd.works))

    # ----- lifecycle ------------------------------------------------------
    def start(self) -> None:
        """First full poll (sockets now are "before the source"), then the threads."""
        try:
            self._procfs = ProcFs(self.proc_root)
            self._poll_diag = SockDiag()
            self._hot_diag = SockDiag()
            self._fdmap = SocketInodeMap(self.proc_root, boot_id_value=self._procfs.boot_id)
        except OSError as e:
            self.stats_.start_error = str(e)
            self.close()
            raise
        try:
            self._listener = DestroyListener(self._on_destroyed, name="native-egress")
            self._listener.start()
        except (DestroySubscribeError, OSError) as e:
            self.stats_.destroy_error = (
                f"no destroy notifications: {e}; sockets closing between polls are missed"
            )
            log.warning("%s", self.stats_.destroy_error)
        self._full_poll(initial=True)
        self.stats_.running = True
        for name, target in (
            ("readegress-egress-hot", self._hot_loop),
            ("readegress-egress-poll", self._poll_loop),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        """Stop the threads, the listener and the netlink sockets. Idempotent."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(5.0)
        self._threads = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for diag in (self._poll_diag, self._hot_diag):
            if diag is not None:
                with contextlib.suppress(OSError):
                    diag.close()
        self._poll_diag = self._hot_diag = None
        self.stats_.running = False

    def update(self, config: Config) -> None:
        """A new config (window, egress classes) applies from now on."""
        self._config = config

    def note_read(self, read: SensitiveRead) -> None:
        """A sensitive read happened: take baselines and watch its lineage (cheap to call)."""
        if read.std_sockets:
            self._note_std_sockets(read)
        self._inbox.append(read)
        self._wake.set()

    def _note_std_sockets(self, read: SensitiveRead) -> None:
        """Sockets the reader held on fd 0/1 at the read (``cat key > /dev/tcp/h/p``).

        The read source took their cookies while the opener was held. Such a
        reader may write and exit within a millisecond, before any tick sees
        its descriptor: its socket's destroy notification is then attributed
        to the reader, as a connect stamped at the read (final counters: every
        byte the socket carried, an upper bound on those after the read). A
        socket that closed before this read event arrived (the dispatcher
        lags under load) and was reported with no owner is attributed now. One
        a poll already saw (connected before the read) gets a watch whose
        baseline is exact: its byte count at the read, taken with the cookie.
        """
        p = read.proc
        out: list[Egress] = []
        now = self.clock()
        with self._lock:
            for cookie, sent in read.std_sockets:
                s = self._socks.get(cookie)
                if s is not None:
                    if s.closed and s.owner is None and not s.inbound:
                        s.owner = p
                        self._retain(s, now)
                        self.stats_.std_sockets += 1
                        out.append(self._egress(s, p, read.time, "connect", None))
                    elif sent is not None and not any(w.read_time == read.time for w in s.watches):
                        s.watches.append(
                            _Watch(
                                read.time, sent, True, p, read.time + self._config.window_seconds
                            )
                        )
                        self._watch_count += 1
                        self.stats_.std_sockets += 1
                        self.stats_.baselines_exact += 1
                        out.extend(self._check_watches(s, now))
                    continue
                if cookie in self._pending_owners:
                    continue
                self._pending_owners[cookie] = (p, read.time, (p.pid, p.start or 0, -1))
                self.stats_.std_sockets += 1
            while len(self._pending_owners) > MAX_PENDING_OWNERS:
                self._pending_owners.popitem(last=False)
        self._emit(out)

    def stats(self) -> NativeEgressStats:
        with self._lock:
            s = NativeEgressStats(**self.stats_.__dict__)
            s.sockets_tracked = len(self._socks)
        if self._listener is not None:
            s.destroy_events = self._listener.events
            s.destroy_overruns = self._listener.overruns
        return s

    # ----- facts for settling ------------------------------------------------
    def facts(self, cookie: int, kind: str, read_time: float) -> Optional[EgressFacts]:
        """What is known of a reported socket now (``None`` when not one of ours)."""
        now = self.clock()
        with self._lock:
            s = self._socks.get(cookie)
            if s is None:
                return None
            sent = s.bytes_sent
            owner = s.owner
            if kind == "transfer" and s.watches:
                # The baseline of the read the detection chose (else the earliest).
                ws = sorted(s.watches, key=lambda w: w.read_time)
                w = next((w for w in reversed(ws) if w.read_time <= read_time + 1e-3), ws[0])
                sent = None if sent is None else max(0, sent - w.baseline)
                owner = owner or w.owner
            age = max(now - s.first_seen, s.last_data_ms / 1000.0)
            return EgressFacts(
                bytes_sent=sent,
                socket_age=int(age),
                keepalive=s.keepalive,
                protocol=_PROTOCOL_NAMES.get(s.protocol, ""),
                closed=s.closed,
                owner=owner,
                owner_start_time=self._start_time(owner),
            )

    def _start_time(self, owner: Optional[Proc]) -> Optional[int]:
        if owner is None or owner.start is None or self._procfs is None:
            return None
        return self._procfs.start_time(owner.start)

    def process_info(self, owner: Proc) -> Optional[ProcessInfo]:
        """A :class:`ProcessInfo` of an owner as the source saw it (for the detection table)."""
        if owner.start is None or self._procfs is None:
            return None
        return ProcessInfo(
            identity=ProcessIdentity(self._procfs.boot_id, owner.pid, owner.start),
            name=owner.executable.rsplit("/", 1)[-1],
            path=owner.executable,
            cmdline=owner.cmdline or "",
            uid=owner.uid if owner.uid is not None else -1,
            ppid=owner.ppid or 0,
            start_time=self._procfs.start_time(owner.start),
        )

    # ----- shared bookkeeping (caller holds _lock) ---------------------------
    def _accepted(self, info: SocketInfo) -> bool:
        """Whether a connected socket was accepted from one of this host's listeners."""
        port = info.local_port
        local = normalize_address(info.local_address)
        return (local, port) in self._listeners or ("*", port) in self._listeners

    def _note_listener(self, address: str, port: int, now: float) -> None:
        a = normalize_address(address)
        self._listeners[("*" if a in _WILDCARDS else a, port)] = now

    def _egress(self, s: _Sock, proc: Proc, t: float, kind: str, sent: Optional[int]) -> Egress:
        return Egress(
            host=self.host,
            time=t,
            proc=proc,
            remote_address=s.remote_address,
            remote_port=s.remote_port,
            source=SOURCE,
            protocol=_PROTOCOL_NAMES.get(s.protocol, ""),
            kind=kind,
            bytes_sent=sent,
            cookie=s.cookie,
        )

    def _retain(self, s: _Sock, now: float) -> None:
        cfg = self._config
        s.retain_until = max(s.retain_until, now + cfg.window_seconds + cfg.settle_seconds + 60.0)

    def _observe(
        self, info: SocketInfo, owner: Optional[Proc], now: float, *, initial: bool = False
    ) -> list[Egress]:
        if info.protocol == _TCP and info.state == TCP_LISTEN:
            self._note_listener(info.local_address, info.local_port, now)
            return []
        if info.remote_port == 0 or (info.protocol == _TCP and info.state == TCP_SYN_SENT):
            return []  # not connected (yet): unconnected UDP, a connect in progress
        s = self._socks.get(info.cookie)
        if s is None:
            s = _Sock(info, now, initial, self._accepted(info))
            self._socks[info.cookie] = s
            seen = self._pending_owners.pop(info.cookie, None)
            if seen is not None and not initial:
                owner = owner or seen[0]
                s.first_seen = min(s.first_seen, seen[1])
                s.holder = seen[2]
        s.update(info, now)
        if info.inode:
            self._inode_cookie[info.inode] = info.cookie
        if owner is not None and s.owner is None:
            s.owner = owner
        out: list[Egress] = []
        if not s.emitted and not s.preexisting and not s.inbound and s.owner is not None:
            s.emitted = True
            self._retain(s, now)
            self.stats_.connects += 1
            out.append(self._egress(s, s.owner, s.first_seen, "connect", None))
        out.extend(self._check_watches(s, now))
        return out

    def _check_watches(self, s: _Sock, now: float) -> list[Egress]:
        out: list[Egress] = []
        if s.bytes_sent is None:
            return out
        for w in s.watches:
            if w.emitted or now > w.expires:
                continue
            delta = s.bytes_sent - w.baseline
            if delta > 0:
                w.emitted = True
                self._retain(s, now)
                self.stats_.transfers += 1
                out.append(self._egress(s, w.owner, now, "transfer", delta))
        return out

    def _emit(self, events: Iterable[Egress]) -> None:
        for e in events:
            try:
                self._on_egress(e)
            except Exception:
                self.stats_.errors += 1
                log.exception("native egress consumer")

    # ----- destroy notifications (listener thread) ---------------------------
    def _on_destroyed(self, info: SocketInfo) -> None:
        now = self.clock()
        out: list[Egress] = []
        final = False
        with self._lock:
            s = self._socks.get(info.cookie)
            if s is not None:
                if info.protocol == _TCP:
                    s.update(info, now)
                s.closed = True
                out.extend(self._check_watches(s, now))
                if s.emitted or any(w.emitted for w in s.watches):
                    final = True
                elif not s.preexisting and not s.inbound and s.owner is None:
                    out.extend(self._unattributed(s, info, now))
                if not final and not s.watches:
                    self._forget(s)
            elif self._connected_outbound(info):
                seen = self._pending_owners.pop(info.cookie, None)
                s = _Sock(info, seen[1] if seen else now, False, False)
                s.update(info, now)
                s.closed = True
                self._socks[info.cookie] = s
                if seen is not None:
                    # A hot tick saw its owner holding it (before it connected, or
                    # after its connection ended): a connect, with final counters.
                    s.owner, s.holder, s.emitted = seen[0], seen[2], True
                    self._retain(s, now)
                    self.stats_.connects += 1
                    self.stats_.attributed_at_close += 1
                    out.append(self._egress(s, seen[0], s.first_seen, "connect", None))
                    final = True
                else:
                    out.extend(self._unattributed(s, info, now))
                    if not s.emitted:
                        self._forget(s)
            else:
                self._pending_owners.pop(info.cookie, None)
        self._emit(out)
        if final and self._on_final is not None:
            try:
                self._on_final(info.cookie)
            except Exception:
                log.exception("native egress on_final")

    def _connected_outbound(self, info: SocketInfo) -> bool:
        if info.remote_port == 0 or self._accepted(info):
            return False
        if info.protocol == _TCP:
            return (info.bytes_acked or 0) >= 1  # the SYN was acked: it did connect
        return info.protocol == _UDP

    def _unattributed(self, s: _Sock, info: SocketInfo, now: float) -> list[Egress]:
        """A closed socket nobody was seen holding: pid 0, host scope (module notes)."""
        self.stats_.unattributed += 1
        if classify(info.remote_address) not in self._config.egress_classes:
            return []
        self.stats_.unattributed_fed += 1
        s.emitted = True
        self._retain(s, now)
        sent = None if info.protocol != _TCP else s.bytes_sent
        return [self._egress(s, Proc(pid=0), now, "connect", sent)]

    def _forget(self, s: _Sock) -> None:
        self._socks.pop(s.cookie, None)
        if s.inode and self._inode_cookie.get(s.inode) == s.cookie:
            del self._inode_cookie[s.inode]

    # ----- full polls (poll thread) ------------------------------------------
    def _poll_loop(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            wait = max(self.interval, self._full_cost / max(self.full_cpu_budget, 1e-3))
            self.stats_.full_interval = wait
            try:
                left = last + wait - time.monotonic()
                if left > 0:
                    # Process groups of hot readers are re-listed here, off the hot thread.
                    if self._wanted_pgids or self._pgid_members:
                        self._scan_pgids()
                    self._stop.wait(min(left, PGID_SCAN_INTERVAL))
                    continue
                last = time.monotonic()
                self._full_poll()
            except Exception:
                self.stats_.errors += 1
                log.exception("native egress poll")
                self._stop.wait(1.0)

    def _full_poll(self, *, initial: bool = False) -> None:
        diag, fdmap, procfs = self._poll_diag, self._fdmap, self._procfs
        if diag is None or fdmap is None or procfs is None:
            return
        t0 = time.perf_counter()
        c0 = time.thread_time()
        now = self.clock()
        socks = diag.dump_all()
        owners: dict[int, Proc] = {}
        if not initial:
            with self._lock:
                need = [
                    s
                    for s in socks
                    if s.inode
                    and s.remote_port
                    and s.state != TCP_LISTEN
                    and (
                        (known := self._socks.get(s.cookie)) is None
                        or (known.owner is None and not known.preexisting and not known.inbound)
                    )
                    and not self._accepted(s)
                ]
            if need:
                uids = {s.inode: s.uid for s in socks if s.inode}
                fdmap.refresh(uids.keys(), uids)
                self.stats_.fd_map_refreshes += 1
                for s in need:
                    holders = fdmap.owners_of(s.inode)
                    if holders:
                        ident = holders[0][0]
                        p = self._owner(ident.pid, ident.start_ticks)
                        if p is not None:
                            owners[s.inode] = p
        out: list[Egress] = []
        seen: set[int] = set()
        with self._lock:
            for s in socks:
                seen.add(s.cookie)
                out.extend(self._observe(s, owners.get(s.inode), now, initial=initial))
            self._prune(now, seen)
        self._emit(out)
        self.stats_.full_polls += 1
        self.stats_.full_poll_ms = (time.perf_counter() - t0) * 1e3
        cost = time.thread_time() - c0
        self._full_cost = cost if not self._full_cost else 0.7 * self._full_cost + 0.3 * cost

    def _prune(self, now: float, seen: set[int]) -> None:
        for cookie, s in list(self._socks.items()):
            if cookie in seen:
                continue
            if s.closed or s.gone_since is not None:
                gone = s.gone_since if s.gone_since is not None else s.last_seen
                if now >= s.retain_until and now - gone >= GONE_GRACE:
                    self._forget(s)
                    self._watch_count -= len(s.watches)
            else:
                s.gone_since = now
        for key, t in list(self._listeners.items()):
            if now - t > 60.0:
                del self._listeners[key]
        for inode, t in list(self._unresolved.items()):
            if now - t > UNRESOLVED_RETRY_SECONDS:
                del self._unresolved[inode]
        while len(self._socks) > 200_000:  # a hard cap against leaks; never hit in practice
            self._forget(next(iter(self._socks.values())))

    def _owner(self, pid: int, start: int) -> Optional[Proc]:
        """The identity of (pid, start ticks) as /proc shows it now.

        Read fresh each time: an exec keeps pid and start ticks but changes the
        image and command line, and the core learns of execs from them. The
        last identity read is kept only for a process that is gone by now (a
        short-lived sender exits right after closing its socket). Never called
        under ``_lock`` (it reads /proc).
        """
        key = (pid, start)
        procfs = self._procfs
        o = read_opener(procfs, pid) if procfs is not None else Opener(pid)
        if o.start_ticks == start and o.identified:
            p = proc_of(o)
            self._remember_owner(p, start)
            return p
        with self._owners_lock:
            cached = self._owners.get(key)
        if cached is not None:
            return cached
        if o.start_ticks == start:
            return proc_of(o)  # alive but partly unreadable: what could be read
        return None  # gone, or another process reusing the pid

    def _remember_owner(self, p: Proc, start: int) -> None:
        with self._owners_lock:
            self._owners[(p.pid, start)] = p
            while len(self._owners) > MAX_OWNERS:
                self._owners.popitem(last=False)

    # ----- hot mode (hot thread) ---------------------------------------------
    def _hot_loop(self) -> None:
        next_tick = 0.0
        next_transfer = 0.0
        hot_since: Optional[float] = None
        while not self._stop.is_set():
            try:
                while self._inbox:
                    self._start_hot(self._inbox.popleft())
                mono = time.monotonic()
                if self._hot:
                    if hot_since is None:
                        hot_since = mono
                    if mono >= next_tick:
                        pending = self._tick(transfer=mono >= next_transfer)
                        if mono >= next_transfer:
                            next_transfer = mono + TRANSFER_CHECK_INTERVAL
                        interval = max(self.hot_interval, self._hot_cost / self.hot_cpu_budget)
                        self.stats_.hot_interval_ms = interval * 1e3
                        if any(e.burst_until > mono for e in self._hot.values()):
                            interval = BURST_INTERVAL
                        next_tick = mono + (FAST_RETRY if pending else interval)
                    timeout: Optional[float] = max(0.0, next_tick - time.monotonic())
                else:
                    timeout = None
                if not self._hot and hot_since is not None:
                    self.stats_.hot_wall_seconds += time.monotonic() - hot_since
                    hot_since = None
                self.stats_.hot_readers = len(self._hot)
            except Exception:
                self.stats_.errors += 1
                log.exception("native egress hot tick")
                timeout = 0.05
            if timeout is None or timeout > 0:
                self._wake.wait(timeout)
            self._wake.clear()
            if hot_since is not None and self._hot:
                now_m = time.monotonic()
                self.stats_.hot_wall_seconds += now_m - hot_since
                hot_since = now_m
        if hot_since is not None:
            self.stats_.hot_wall_seconds += time.monotonic() - hot_since

    def _start_hot(self, read: SensitiveRead) -> None:
        c0 = time.thread_time()
        p = read.proc
        if p.pid in (0, self._pid):
            return
        start = p.start
        if start is None:
            st = _stat_fields(p.pid, self.proc_root)
            if st is None:
                return
            start = st[2]
        self._remember_owner(p, start)
        # The reader's own sockets first: a fast client may close its socket
        # within a millisecond or two of the read, before the lineage is walked.
        self._baseline(read, {p.pid: start}, p.pid)
        until = read.time + self._config.window_seconds
        parent = p.ppid
        by_parent = parent is not None and parent not in NON_LINEAGE_PARENTS and parent != self._pid
        key = parent if by_parent and parent is not None else -p.pid
        entry = self._hot.get(key)
        if entry is not None and (by_parent or entry.root_start == start):
            entry.until = max(entry.until, until)  # another read in a hot lineage
        else:
            entry = _Hot(
                root=key if by_parent else p.pid,
                root_start=None if by_parent else start,
                by_parent=by_parent,
                until=until,
            )
            if key in self._hot or len(self._hot) < self.max_hot_readers:
                self._hot[key] = entry  # (a reused reader pid replaces the old entry)
                self.stats_.hot_started += 1
            else:
                self.stats_.hot_skipped += 1
        if p.pgid is not None and p.pgid > 1 and p.pgid != self._pgid:
            entry.pgids.add(p.pgid)
        entry.burst_until = time.monotonic() + BURST_SECONDS
        entry.members, _tree = self._lineage(entry)
        self._baseline(read, {q: t for q, t in entry.members.items() if q != p.pid}, p.pid)
        self._report_members(entry.members, (p.pid, start))
        self.stats_.hot_cpu_seconds += time.thread_time() - c0

    def _lineage(self, entry: _Hot) -> tuple[dict[int, int], int]:
        """pid -> start ticks of the lineage now, and how many of them are in the
        subtree (the rest are members of the readers' process groups)."""
        root = self.proc_root
        found: dict[int, int] = {}
        limit = self.max_lineage

        def add(pid: int) -> bool:
            if pid in found or pid in (0, self._pid) or len(found) >= limit:
                return False
            st = _stat_fields(pid, root)
            if st is None:
                return False
            found[pid] = st[2]
            return True

        frontier: list[int] = []
        if entry.by_parent:
            mono = time.monotonic()
            if mono - entry.children_listed >= SIBLING_SCAN_INTERVAL:
                entry.children = _children(entry.root, root)
                entry.children_listed = mono
            frontier = [c for c in entry.children if add(c)]
        elif add(entry.root) and found[entry.root] == entry.root_start:
            frontier = [entry.root]
        else:
            found.pop(entry.root, None)  # gone, or the pid is another process now
        while frontier and len(found) < limit:
            frontier = [c for pid in frontier for c in _children(pid, root) if add(c)]
        tree = len(found)
        for pgid in entry.pgids:
            for pid in self._pgid_members.get(pgid, ()):
                add(pid)
        if len(found) >= limit:
            self.stats_.lineage_truncated += 1
        return found, tree

    def _report_members(
        self, members: dict[int, int], known: Optional[tuple[int, int]] = None
    ) -> None:
        """Hand ``on_process`` the identity of lineage members not reported before."""
        if self._on_process is None:
            return
        seen = self._members_seen
        if known is not None:
            seen[known] = None
        now = self.clock()
        for pid, start in members.items():
            key = (pid, start)
            if key in seen:
                continue
            seen[key] = None
            while len(seen) > MAX_OWNERS:
                seen.popitem(last=False)
            p = self._owner(pid, start)
            if p is not None:
                try:
                    self._on_process(p, now)
                except Exception:
                    self.stats_.errors += 1
                    log.exception("native egress on_process")

    def _scan_pgids(self) -> None:
        """Members of the hot readers' process groups (one /proc scan; poll thread)."""
        wanted = self._wanted_pgids
        members: dict[int, list[int]] = {g: [] for g in wanted}
        if wanted:
            try:
                names = os.listdir(self.proc_root)
            except OSError:
                names = []
            for n in names:
                if n.isdigit():
                    st = _stat_fields(int(n), self.proc_root)
                    if st is not None and st[1] in members:
                        members[st[1]].append(int(n))
        self._pgid_members = members

    def _tick(self, *, transfer: bool) -> bool:
        """One hot tick: refresh the lineages, resolve new socket descriptors.

        Returns whether a socket of the lineage was found not yet connected
        (the next tick should come at once)."""
        c0 = time.thread_time()
        mono = time.monotonic()
        now = self.clock()
        members: dict[int, int] = {}
        for key, entry in list(self._hot.items()):
            entry.members, tree = self._lineage(entry)
            if tree:
                entry.empty_since = None
            elif entry.empty_since is None:
                entry.empty_since = mono
            grace = (
                entry.by_parent
                and entry.empty_since is not None
                and mono - entry.empty_since < PARENT_GRACE
                and _stat_fields(entry.root, self.proc_root) is not None
            )
            if now > entry.until or (not tree and not grace):
                del self._hot[key]  # window over, or the lineage is gone
                continue
            members.update(entry.members)
        self._report_members(members)
        self._wanted_pgids = frozenset(g for e in self._hot.values() for g in e.pgids)
        new: list[tuple[int, int, int, int]] = []  # (pid, start, fd, inode)
        for pid, start in members.items():
            for fd, inode in _socket_fds(pid, self.proc_root):
                new.append((pid, start, fd, inode))
        with self._lock:
            new = [x for x in new if x[3] not in self._inode_cookie and x[3] not in self._ignored]
        pending = self._resolve(new, now) if new else False
        if transfer:
            self._check_live_watches(members, now)
        self.stats_.hot_ticks += 1
        cost = time.thread_time() - c0
        self.stats_.hot_cpu_seconds += cost
        self._hot_cost = cost if not self._hot_cost else 0.8 * self._hot_cost + 0.2 * cost
        return pending

    def _resolve(self, new: list[tuple[int, int, int, int]], now: float) -> bool:
        """Read new socket descriptors of the lineage; observe the connected ones.

        Returns whether one was a TCP/UDP socket not connected yet (retried)."""
        getfd = self._getfd
        results: list[tuple[int, int, int, _Resolved]] = []
        fallback: list[tuple[int, int, int, int]] = []
        if getfd is not None and getfd.works:
            pidfds: dict[int, Optional[int]] = {}
            try:
                for pid, start, fd, inode in new:
                    if pid not in pidfds:
                        pidfds[pid] = self._pidfd(pid, start)
                    pidfd = pidfds[pid]
                    if pidfd is None:
                        self.stats_.hot_resolve_failed += 1
                        continue
                    try:
                        dup = getfd(pidfd, fd)
                    except OSError as e:
                        if e.errno in (errno.EPERM, errno.ENOSYS, errno.EACCES):
                            getfd.works = False
                            self.stats_.getfd = False
                            fallback.append((pid, start, fd, inode))
                        else:  # EBADF: closed since the listing
                            self.stats_.hot_resolve_failed += 1
                        continue
                    results.append((pid, start, inode, _read_socket(dup, inode)))
            finally:
                for pidfd in pidfds.values():
                    if pidfd is not None:
                        os.close(pidfd)
        else:
            fallback = new
        if fallback:
            results.extend(self._resolve_by_dump(fallback))
        owners = {
            (pid, start): self._owner(pid, start)
            for pid, start, _inode, r in results
            if r.info is not None or r.cookie is not None
        }
        out: list[Egress] = []
        pending = False
        with self._lock:
            for pid, start, inode, r in results:
                if r.listener is not None:
                    self._note_listener(r.listener[0], r.listener[1], now)
                    self._ignore(inode)
                elif r.info is None:
                    owner = owners.get((pid, start))
                    if r.cookie is not None and owner is not None:
                        self._note_pending_owner(r.cookie, owner, now, (pid, start, inode, new))
                    if r.retry:
                        first = self._unresolved.setdefault(inode, now)
                        if now - first > UNRESOLVED_RETRY_SECONDS:
                            self._ignore(inode)
                        else:
                            pending = True
                    else:
                        self._ignore(inode)
                else:
                    self._unresolved.pop(inode, None)
                    self.stats_.hot_resolved += 1
                    out.extend(self._observe(r.info, owners.get((pid, start)), now))
                    s = self._socks.get(r.info.cookie)
                    if s is not None and s.holder is None:
                        fd = next((f for p, _st, f, i in new if p == pid and i == inode), -1)
                        s.holder = (pid, start, fd)
        self._emit(out)
        return pending

    def _note_pending_owner(
        self,
        cookie: int,
        owner: Proc,
        now: float,
        where: tuple[int, int, int, list[tuple[int, int, int, int]]],
    ) -> None:
        """Remember who holds a socket seen without a peer (caller holds ``_lock``)."""
        if cookie in self._pending_owners or cookie in self._socks:
            return
        pid, start, inode, new = where
        fd = next((f for p, _st, f, i in new if p == pid and i == inode), -1)
        self._pending_owners[cookie] = (owner, now, (pid, start, fd))
        while len(self._pending_owners) > MAX_PENDING_OWNERS:
            self._pending_owners.popitem(last=False)

    def _ignore(self, inode: int) -> None:
        self._unresolved.pop(inode, None)
        self._ignored[inode] = None
        while len(self._ignored) > MAX_IGNORED_INODES:
            self._ignored.popitem(last=False)

    def _pidfd(self, pid: int, start: int) -> Optional[int]:
        """A pidfd of (pid, start ticks), or None when that process is gone."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        st = read_stat(pid, self.proc_root)
        if st is None or st[2] != start:
            os.close(pidfd)  # the pid now names another process
            return None
        return pidfd

    def _resolve_by_dump(
        self, new: list[tuple[int, int, int, int]]
    ) -> list[tuple[int, int, int, _Resolved]]:
        diag = self._hot_diag
        if diag is None:
            return []
        self.stats_.hot_dumps += 1
        by_inode = {s.inode: s for s in diag.dump_all() if s.inode}
        out: list[tuple[int, int, int, _Resolved]] = []
        for pid, start, _fd, inode in new:
            s = by_inode.get(inode)
            if s is None:
                out.append((pid, start, inode, _Resolved(None, retry=True)))
            elif s.protocol == _TCP and s.state == TCP_LISTEN:
                out.append((pid, start, inode, _Resolved(None, (s.local_address, s.local_port))))
            elif s.remote_port == 0 or (s.protocol == _TCP and s.state == TCP_SYN_SENT):
                out.append((pid, start, inode, _Resolved(None, retry=True)))
            else:
                out.append((pid, start, inode, _Resolved(s)))
        return out

    def _live_sockets(
        self, members: dict[int, int]
    ) -> tuple[list[tuple[int, int, int, int]], dict[int, tuple[int, int, int]]]:
        """Socket descriptors of ``members`` now, and inode -> (pid, start, fd)."""
        fds: list[tuple[int, int, int, int]] = []
        where: dict[int, tuple[int, int, int]] = {}
        for pid, start in members.items():
            for fd, inode in _socket_fds(pid, self.proc_root):
                fds.append((pid, start, fd, inode))
                where.setdefault(inode, (pid, start, fd))
        return fds, where

    def _read_now(
        self, items: list[tuple[int, int, int, int]]
    ) -> dict[int, tuple[int, int, SocketInfo]]:
        """inode -> (pid, start, fresh SocketInfo) for connected TCP/UDP sockets in ``items``."""
        out: dict[int, tuple[int, int, SocketInfo]] = {}
        getfd = self._getfd
        if getfd is not None and getfd.works:
            pidfds: dict[int, Optional[int]] = {}
            try:
                for pid, start, fd, inode in items:
                    if inode in out:
                        continue
                    if pid not in pidfds:
                        pidfds[pid] = self._pidfd(pid, start)
                    pidfd = pidfds[pid]
                    if pidfd is None:
                        continue
                    try:
                        dup = getfd(pidfd, fd)
                    except OSError:
                        continue
                    r = _read_socket(dup, inode)
                    if r.info is not None:
                        out[inode] = (pid, start, r.info)
            finally:
                for pidfd in pidfds.values():
                    if pidfd is not None:
                        os.close(pidfd)
            return out
        for pid, start, inode, r in self._resolve_by_dump(items):
            if r.info is not None:
                out[inode] = (pid, start, r.info)
        return out

    def _baseline(self, read: SensitiveRead, members: dict[int, int], reader: int) -> None:
        """Baselines of the lineage's sockets at ``read`` (see the module notes).

        A socket accepted from a listener gets one only when the reader itself
        holds it (a bind shell sending the key back): a server that merely
        shares the reader's parent answers its clients whatever the reader does.
        """
        if not members:
            return
        fds, _where = self._live_sockets(members)
        with self._lock:
            fds = [x for x in fds if x[3] not in self._ignored]
        if not fds:
            return
        fresh = self._read_now(fds)
        owners = {(pid, start): self._owner(pid, start) for pid, start, _info in fresh.values()}
        now = self.clock()
        out: list[Egress] = []
        elapsed = max(0.0, now - read.time)
        with self._lock:
            for inode, (pid, start, info) in fresh.items():
                s = self._socks.get(info.cookie)
                ls, lr = info.last_data_sent_ms, info.last_data_recv_ms
                aged = False
                if s is None and info.protocol == _TCP and ls is not None:
                    # No poll saw it, but tcp_info proves its age: the last data
                    # (or, with none yet, the handshake) was this long ago. Older
                    # than the read: it existed before it (connect reported then).
                    idle = max(ls, lr or 0) / 1000.0
                    if idle > elapsed + LAST_SENT_SLACK:
                        out.extend(self._observe(info, owners.get((pid, start)), now - idle))
                        s = self._socks.get(info.cookie)
                        if s is not None:
                            s.history.clear()  # its bytes at the read are unknown
                            aged = True
                if s is None or s.first_seen > read.time:
                    # Not seen before the read: a new socket (a connect), not a transfer.
                    out.extend(self._observe(info, owners.get((pid, start)), now))
                    s = self._socks.get(info.cookie)
                    if s is not None and s.holder is None:
                        s.holder = (pid, start, next(f for p, _s, f, i in fds if i == inode))
                    continue
                prior = s.bytes_before(read.time)
                not_watched = s.inbound and pid != reader
                if info.protocol != _TCP or info.bytes_sent is None or not_watched:
                    s.update(info, now)
                    continue
                owner = owners.get((pid, start)) or s.owner or Proc(pid=pid, start=start)
                ls = info.last_data_sent_ms
                if ls is not None and ls / 1000.0 >= elapsed + LAST_SENT_SLACK:
                    baseline, exact = info.bytes_sent, True
                elif prior is not None and not aged:
                    baseline, exact = prior, False
                elif aged:
                    baseline, exact = 0, False  # every byte of the socket: an upper bound
                else:
                    baseline, exact = info.bytes_sent, False
                s.update(info, now)
                s.holder = (pid, start, next(f for p, _s, f, i in fds if i == inode))
                if s.owner is None:
                    s.owner = owner
                if self._watch_count >= MAX_WATCHES:
                    self.stats_.watches_dropped += 1
                    continue
                if len(s.watches) >= MAX_WATCHES_PER_SOCKET:
                    s.watches.pop(0)
                    self._watch_count -= 1
                    self.stats_.watches_dropped += 1
                s.watches.append(
                    _Watch(
                        read_time=read.time,
                        baseline=baseline,
                        exact=exact,
                        owner=owner,
                        expires=read.time + self._config.window_seconds,
                    )
                )
                self._watch_count += 1
                self.stats_.baselines += 1
                self.stats_.baselines_exact += exact
                out.extend(self._check_watches(s, now))
        self._emit(out)

    def _check_live_watches(self, members: dict[int, int], now: float) -> None:
        """Re-read the lineage's watched sockets (transfers while hot)."""
        with self._lock:
            items = [
                (s.holder[0], s.holder[1], s.holder[2], s.inode)
                for s in self._socks.values()
                if s.watches
                and not s.closed
                and s.holder is not None
                and s.holder[0] in members
                and any(not w.emitted and w.expires >= now for w in s.watches)
            ]
        if not items:
            return
        fresh = self._read_now(items)
        out: list[Egress] = []
        with self._lock:
            for _pid, _start, info in fresh.values():
                s = self._socks.get(info.cookie)
                if s is not None:
                    s.update(info, now)
                    out.extend(self._check_watches(s, now))
        self._emit(out)
