"""The socket monitor: live sockets with owners and counters, plus closed-socket totals.

One poll (:meth:`SocketMonitor.snapshot`):

1. lists the network namespaces in use (``/proc/*/ns/net``);
2. dumps TCP and UDP sockets in each through sock_diag (a netlink socket
   created inside the namespace, cached);
3. refreshes the incremental ``/proc/<pid>/fd`` map and attaches owners,
   with one :class:`ProcessInfo` read per process identity;
4. tracks when each socket cookie was first seen. Linux keeps no connection
   start time, so ``age_seconds`` is a lower bound:
   ``max(now - first_seen, max(last_data_sent, last_data_recv))``.

Between polls, sock_diag destroy notifications (one listener thread per
namespace, started by :meth:`SocketMonitor.start`) deliver each socket's
final counters. A destroyed cookie that a poll saw with owners adds its bytes
to those owners' :meth:`~SocketMonitor.closed_totals` (keyed by process
identity, so a later process reusing the pid starts from zero); one no poll
attributed goes to :meth:`~SocketMonitor.unattributed_closed` by uid. The
kernel sends uid 0 in destroy notifications, so a socket no poll ever saw is
filed under :data:`UNKNOWN_UID` rather than blamed on root.

Quirks of the final counters: a socket torn down through ``tcp_disconnect()``
(closed with SO_LINGER 0, or left unaccepted when its listener closed) has
them zeroed, so the larger of final and last-polled counters is used;
``bytes_received`` counts the peer's FIN (+1) once it arrived; UDP closes
count as sockets with no bytes.
"""

from __future__ import annotations

import logging
import operator
import os
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Optional

from readegress.kernel import memory, netns
from readegress.kernel.procfs import Holders, ProcFs, SocketInodeMap
from readegress.kernel.records import (
    ClosedTotals,
    ObservedSocket,
    ProcessIdentity,
    ProcessInfo,
    SocketInfo,
    SocketOwner,
)
from readegress.kernel.sockdiag import (
    RECV_BUFFER,
    DestroyListener,
    DestroySubscribeError,
    SockDiag,
    open_sock_diag_socket,
)
from readegress.speedups import native as _native

log = logging.getLogger("readegress.kernel.monitor")

#: uid of closed sockets no poll saw: destroy notifications carry uid 0.
UNKNOWN_UID = -1
#: Exited processes whose closed-socket totals are kept (least recently active
#: evicted first, counted in ``evicted``): ~700 bytes each with a short
#: cmdline (measured), so at most ~6 MB on a host that runs many short-lived
#: networked processes (65,536 would have allowed ~45 MB).
DEFAULT_MAX_IDENTITIES = 8192
_TCP = socket.IPPROTO_TCP

# ObservedSocket is built once per socket per poll (20,000 at a time); see
# sockdiag._SOCKETINFO_FIELDS for why it is built by tuple.__new__.
if ObservedSocket._fields != (
    "socket",
    "net_namespace",
    "owners",
    "first_seen",
    "age_seconds",
):  # pragma: no cover - guards the contract with records.py
    raise ImportError("records.ObservedSocket changed: update monitor's fast record builder")
_new = tuple.__new__
_INODE_UID = operator.itemgetter(SocketInfo._fields.index("inode"), SocketInfo._fields.index("uid"))


class _Tracked(NamedTuple):
    """What the monitor keeps of a live socket between polls: enough for its
    first-seen time and to attribute its destroy notification. A fifth of an
    :class:`ObservedSocket` with its :class:`SocketInfo`, so a poll's records
    are freed once its callers are done with them."""

    first_seen: float
    owners: tuple[SocketOwner, ...]
    uid: int
    bytes_sent: Optional[int]
    bytes_received: Optional[int]
    #: the fd map's holders tuple the owners were built from: while the map
    #: hands out the same object, the owners are still right
    holders: Optional[Holders]


@dataclass(frozen=True)
class MonitorSnapshot:
    """One poll: every TCP/UDP socket of every namespace in use, with owners."""

    time: float  # Unix time of the poll
    sockets: tuple[ObservedSocket, ...]
    unreadable_processes: int  # processes whose fd directory could not be listed
    warnings: tuple[str, ...]  # why some data is missing (permissions, overruns)


class SocketMonitor:
    """Polls sockets and owners; collects final counters of destroyed sockets.

    Thread-safe: :meth:`snapshot` may be called from several threads while
    the background poller runs (polls are serialized; a caller that waited
    for a poll started after its own call returns that poll's result).
    """

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        destroy_listener: bool = True,
        clock: Callable[[], float] = time.time,
        max_identities: int = DEFAULT_MAX_IDENTITIES,
    ) -> None:
        self.proc_root = proc_root
        self.destroy_listener = destroy_listener
        self.clock = clock
        self.max_identities = max_identities
        self.procfs = ProcFs(proc_root)
        self.fdmap = SocketInodeMap(proc_root, boot_id_value=self.procfs.boot_id)
        self._buffer = bytearray(RECV_BUFFER)  # shared: dumps run one at a time
        self._diags: netns.NamespaceSockets[SockDiag] = netns.NamespaceSockets(
            lambda _ino: SockDiag(open_sock_diag_socket(), buffer=self._buffer),
            SockDiag.close,
            proc_root=proc_root,
        )
        self._listeners: netns.NamespaceSockets[DestroyListener] = netns.NamespaceSockets(
            lambda ino: DestroyListener(self._on_destroyed, name=f"net:{ino}"),
            DestroyListener.close,
            proc_root=proc_root,
        )
        self._poll_lock = threading.Lock()
        self._state_lock = threading.Lock()
        # Poll state (under _state_lock).
        # cookie -> what the last poll saw of it: first_seen for the next
        # poll, owners and counters for destroy attribution. Cookies not in a
        # poll (closed) are dropped with it.
        self._seen: dict[int, _Tracked] = {}
        self._polling = False
        self._pending: list[SocketInfo] = []
        self._closed_totals: OrderedDict[ProcessIdentity, ClosedTotals] = OrderedDict()
        self._closed_info: dict[ProcessIdentity, ProcessInfo] = {}
        self._unattributed: dict[int, ClosedTotals] = {}
        self._counters = {
            "polls": 0,
            "destroy_events": 0,
            "destroy_lost": 0,
            "evicted": 0,
            "unresolved_sockets": 0,
            "namespaces": 0,
        }
        self._lost_closed_listeners = 0
        self._subscribe_failures: dict[int, str] = {}
        # Poll-thread-only caches.
        self._infos: dict[ProcessIdentity, Optional[ProcessInfo]] = {}
        self._last_info: tuple[object, Optional[ProcessInfo]] = (None, None)
        # False for one poll after a process exec'd: owner tuples embed
        # ProcessInfo, so every one is rebuilt from the fresh infos.
        self._reuse_owners = True
        #: the per-socket loop of a poll in C (``_speedups.observe``) when compiled
        self.native_observe = _native is not None
        # The last poll, while any caller still holds it (a snapshot of 20k
        # sockets is megabytes: the monitor itself never keeps one alive).
        self._last: Optional[weakref.ref[MonitorSnapshot]] = None
        self._last_started = -1.0
        # Background machinery.
        self._started = False
        self._closed = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._interval = 0.0

    # ------------------------------------------------------------------ polling

    def snapshot(self) -> MonitorSnapshot:
        """Poll now and return every socket with owners (see the module notes)."""
        asked = time.monotonic()
        with self._poll_lock:
            if self._closed:
                raise RuntimeError("SocketMonitor is closed")
            last = self._last() if self._last is not None else None
            if last is not None and self._last_started >= asked:
                return last  # a poll that started after this call: as fresh as a new one
            self._last_started = time.monotonic()
            # A poll allocates 3 tracked objects per socket: see memory.gc_paused.
            with memory.gc_paused():
                snap = self._poll()
            self._last = weakref.ref(snap)
            return snap

    def _poll(self) -> MonitorSnapshot:
        warnings: list[str] = []
        with self._state_lock:
            self._polling = True
        try:
            now = self.clock()
            namespaces = netns.list_namespaces(self.proc_root)
            namespaces.setdefault(self._diags.own, os.getpid())
            dumps: list[tuple[int, list[SocketInfo]]] = []
            for ino, pid in namespaces.items():
                try:
                    diag = self._diags.get(ino, pid)
                    dumps.append((ino, diag.dump_all()))
                except OSError as e:
                    self._diags.drop(ino)
                    warnings.append(f"net namespace {ino} (pid {pid}) not dumped: {e}")
            self._diags.prune(namespaces)
            if self._started:
                self._sync_listeners(namespaces)
            # inode -> uid, built in C: SocketInfo is a tuple (fields 7 and 9).
            uids: dict[int, int] = {}
            for _, socks in dumps:
                uids.update(map(_INODE_UID, socks))
            uids.pop(0, None)  # sockets without a file (accept queue, orphans)
            live = uids.keys()
            self.fdmap.refresh(live, uids)
            self._prune_infos()
            sockets, seen, unresolved = self._observe(dumps, now)
        except BaseException:
            with self._state_lock:
                self._polling = False
                pending, self._pending = self._pending, []
                for info in pending:
                    self._attribute(info, None)
            raise
        with self._state_lock:
            old_seen = self._seen
            self._seen = seen
            self._polling = False
            pending, self._pending = self._pending, []
            for info in pending:
                # Destroyed while this poll ran: this poll may have seen it, or
                # only the previous one (destroyed before the dump).
                self._attribute(info, old_seen)
            c = self._counters
            c["polls"] += 1
            c["unresolved_sockets"] = unresolved
            c["namespaces"] = len(dumps)
            lost = self._lost_total()
            failures = list(self._subscribe_failures.values())
        if self.fdmap.unreadable:
            warnings.append(
                f"{self.fdmap.unreadable} processes' descriptors are unreadable (not root?):"
                " their sockets have no owner"
            )
        warnings.extend(failures)
        if lost:
            warnings.append(
                f"{lost} destroy-notification overruns: closed-socket totals miss some sockets"
            )
        return MonitorSnapshot(now, tuple(sockets), self.fdmap.unreadable, tuple(warnings))

    def _observe(
        self, dumps: list[tuple[int, list[SocketInfo]]], now: float
    ) -> tuple[list[ObservedSocket], dict[int, _Tracked], int]:
        """Attach owners and ages; the per-socket hot loop of a poll.

        Allocates one ObservedSocket and one _Tracked per socket and nothing
        else in the common case: a socket's owner tuple is reused from the
        last poll's _Tracked while the fd map's holders tuple for its inode is
        the same object (no cache of its own: the state kept between polls is
        one record per socket).
        """
        owners_index = self.fdmap.owners
        old_seen = self._seen
        reuse = self._reuse_owners
        self._reuse_owners = True
        procfs = self.procfs
        # A socket cannot be older than the system: caps junk last-data ages.
        uptime = max(0.0, now - procfs.boot_time)
        if self.native_observe:
            assert _native is not None
            # The loop below in C: the same records (see _speedups.c observe).
            observed: list[ObservedSocket]
            observed, seen_c, unresolved_c = _native.observe(
                dumps,
                now,
                float(uptime),
                owners_index,
                old_seen,
                reuse,
                self._owners,
                ObservedSocket,
                _Tracked,
                SocketOwner,
            )
            return observed, seen_c, unresolved_c
        seen: dict[int, _Tracked] = {}
        out: list[ObservedSocket] = []
        append = out.append
        new = _new
        cls = ObservedSocket
        tracked = _Tracked
        no_owners: tuple[SocketOwner, ...] = ()
        unresolved = 0
        for ns, socks in dumps:
            for s in socks:
                cookie = s.cookie
                prev = old_seen.get(cookie)
                fs = now if prev is None else prev.first_seen
                age = now - fs
                ls = s.last_data_sent_ms
                if ls is not None:
                    lr = s.last_data_recv_ms or 0
                    idle = (ls if ls > lr else lr) / 1000.0
                    if idle > uptime:
                        idle = uptime
                    if idle > age:
                        age = idle
                inode = s.inode
                holders = owners_index.get(inode) if inode else None
                if holders is None:
                    owners = no_owners
                    unresolved += 1
                else:
                    if reuse and prev is not None and prev.holders is holders:
                        owners = prev.owners
                    else:
                        owners = self._owners(holders)
                    if not owners:
                        unresolved += 1
                append(new(cls, (s, ns, owners, fs, age)))
                sent = s.bytes_sent
                received = s.bytes_received
                if (
                    prev is not None
                    and prev.owners is owners
                    and prev.bytes_sent == sent
                    and prev.bytes_received == received
                    and prev.holders is holders
                ):
                    # An idle socket keeps its record: the state kept between
                    # polls is not reallocated among each poll's short-lived
                    # objects (less fragmentation, fewer allocations).
                    seen[cookie] = prev
                else:
                    seen[cookie] = new(tracked, (fs, owners, s.uid, sent, received, holders))
        return out, seen, unresolved

    def _owners(self, holders: Holders) -> tuple[SocketOwner, ...]:
        # Runs once per socket on a first poll (20k times): the fd map hands
        # out one ProcessIdentity object per process, so an identity seen
        # last time is recognised by ``is`` before it is hashed (a dataclass
        # hash is a Python call), and the common single holder skips the list.
        infos = self._infos
        last = self._last_info
        if len(holders) == 1:
            ident, fd = holders[0]
            if last[0] is ident:
                info = last[1]
            else:
                try:
                    info = infos[ident]
                except KeyError:
                    info = infos[ident] = self.procfs.process_info(ident)
                self._last_info = (ident, info)
            # None: exited between the fd scan and now
            return () if info is None else (_new(SocketOwner, (info, fd)),)
        owners = []
        for ident, fd in holders:
            try:
                info = infos[ident]
            except KeyError:
                info = infos[ident] = self.procfs.process_info(ident)
            if info is not None:
                owners.append(SocketOwner(info, fd))
        return tuple(owners)

    def _prune_infos(self) -> None:
        """Forget ProcessInfo of identities the fd map no longer has, and of
        processes that exec'd since: an exec keeps pid and start ticks but
        changes the image, so each poll compares /proc/<pid>/exe (one readlink
        per process holding sockets) with the cached path."""
        alive = set(self.fdmap.identities().values())
        kept: dict[ProcessIdentity, Optional[ProcessInfo]] = {}
        stale = False
        root = self.proc_root
        for ident, info in self._infos.items():
            if ident not in alive:
                continue
            if info is not None and info.path:
                try:
                    exe = os.readlink(f"{root}/{ident.pid}/exe")
                except OSError:
                    exe = info.path  # gone or unreadable: the fd map will tell
                if exe != info.path:
                    stale = True
                    continue
            kept[ident] = info
        self._infos = kept
        self._last_info = (None, None)
        if stale:
            # Owner tuples embed ProcessInfo: rebuild them from the fresh infos.
            self._reuse_owners = False

    # ------------------------------------------------------- destroyed sockets

    def _on_destroyed(self, info: SocketInfo) -> None:
        self.ingest_destroyed(info)

    def ingest_destroyed(self, info: SocketInfo) -> None:
        """Account the final counters of a destroyed socket (a destroy notification).

        Called by the listener threads; public so tests can feed records.
        While a poll runs, the record waits for that poll's view of owners.
        """
        with self._state_lock:
            self._counters["destroy_events"] += 1
            if self._polling:
                self._pending.append(info)
            else:
                self._attribute(info, None)

    def _attribute(self, info: SocketInfo, fallback: Optional[dict[int, _Tracked]]) -> None:
        # Caller holds _state_lock.
        cookie = info.cookie
        seen = self._seen.pop(cookie, None)
        if seen is None and fallback is not None:
            seen = fallback.pop(cookie, None)
        if info.protocol == _TCP:
            sent = info.bytes_sent or 0
            received = info.bytes_received or 0
            if seen is not None:
                # A socket torn down through tcp_disconnect() (close with
                # SO_LINGER 0, i.e. an RST; a listener closing with unaccepted
                # connections) has its counters zeroed before the destroy
                # notification: the last poll's counters are a lower bound.
                sent = max(sent, seen.bytes_sent or 0)
                received = max(received, seen.bytes_received or 0)
        else:  # UDP keeps no byte counters: the socket is counted, bytes are not
            sent = received = 0
        if seen is not None and seen.owners:
            for owner in {o.process.identity: o.process for o in seen.owners}.values():
                self._add_closed(owner, sent, received)
            return
        uid = seen.uid if seen is not None else UNKNOWN_UID
        t = self._unattributed.get(uid)
        self._unattributed[uid] = (
            ClosedTotals(1, sent, received)
            if t is None
            else ClosedTotals(t.sockets + 1, t.bytes_sent + sent, t.bytes_received + received)
        )

    def _add_closed(self, owner: ProcessInfo, sent: int, received: int) -> None:
        ident = owner.identity
        totals = self._closed_totals
        t = totals.get(ident)
        if t is None:
            totals[ident] = ClosedTotals(1, sent, received)
            self._closed_info[ident] = owner
            while len(totals) > self.max_identities:
                old, _ = totals.popitem(last=False)
                self._closed_info.pop(old, None)
                self._counters["evicted"] += 1
        else:
            totals[ident] = ClosedTotals(
                t.sockets + 1, t.bytes_sent + sent, t.bytes_received + received
            )
            totals.move_to_end(ident)

    def closed_totals(self) -> dict[ProcessIdentity, ClosedTotals]:
        """Final counters of sockets closed while the monitor ran, per owner identity."""
        with self._state_lock:
            return dict(self._closed_totals)

    def closed_process_info(self, identity: ProcessIdentity) -> Optional[ProcessInfo]:
        """The :class:`ProcessInfo` remembered with ``identity``'s closed totals."""
        with self._state_lock:
            return self._closed_info.get(identity)

    def unattributed_closed(self) -> dict[int, ClosedTotals]:
        """Closed sockets no poll saw an owner for, by uid (:data:`UNKNOWN_UID` when
        no poll saw the socket at all). Host scope; never evicted."""
        with self._state_lock:
            return dict(self._unattributed)

    def _lost_total(self) -> int:
        return self._lost_closed_listeners + sum(
            lst.overruns for ino in self._listeners.inodes() if (lst := self._listeners.peek(ino))
        )

    def stats(self) -> dict[str, int]:
        """Counters: polls, destroy_events, destroy_lost (receive overruns, each losing at
        least one notification), evicted (identities dropped from closed totals),
        unresolved_sockets and namespaces (of the last poll)."""
        with self._state_lock:
            out = dict(self._counters)
        out["destroy_lost"] = self._lost_total()
        return out

    # -------------------------------------------------------- background work

    def _sync_listeners(self, namespaces: dict[int, int]) -> None:
        """One destroy listener per namespace in use; close those of vanished ones."""
        if not self.destroy_listener:
            return
        for ino, pid in namespaces.items():
            if self._listeners.peek(ino) is not None or ino in self._subscribe_failures:
                continue
            try:
                listener = self._listeners.get(ino, pid)
            except (DestroySubscribeError, OSError) as e:
                msg = (
                    f"no destroy notifications for net namespace {ino}: {e};"
                    " sockets closing between polls are not counted there"
                )
                log.warning("%s", msg)
                with self._state_lock:
                    self._subscribe_failures[ino] = msg
                continue
            listener.start()
        for ino in list(self._listeners.inodes()):
            if ino not in namespaces:
                lst = self._listeners.peek(ino)
                if lst is not None:
                    self._lost_closed_listeners += lst.overruns
        self._listeners.prune(namespaces)
        with self._state_lock:
            for ino in [i for i in self._subscribe_failures if i not in namespaces]:
                del self._subscribe_failures[ino]

    def start(self, interval: float) -> None:
        """Start the destroy listeners (host namespace now, others at each poll) and a
        background thread polling every ``interval`` seconds. Idempotent."""
        with self._poll_lock:
            if self._closed:
                raise RuntimeError("SocketMonitor is closed")
            if self._started:
                return
            self._started = True
            self._interval = interval
            self._sync_listeners({self._listeners.own: os.getpid()})
        self._thread = threading.Thread(
            target=self._run, name="readegress-socket-poll", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.snapshot()
                # Whatever the last poll and table calls freed (a 20k-row
                # answer is tens of MB) goes back to the system here, so the
                # extension's RSS returns to its steady size within a poll.
                memory.trim()
            except RuntimeError:
                if self._closed:
                    return
                log.exception("socket poll failed")
            except Exception:  # keep polling: one bad poll must not end monitoring
                log.exception("socket poll failed")
            if self._stop.wait(self._interval):
                return

    def close(self) -> None:
        """Stop the poller and listeners and close every socket. Idempotent, prompt."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10.0)
        with self._poll_lock:
            if self._closed:
                return
            self._closed = True
        self._listeners.close()
        self._diags.close()

    def __enter__(self) -> SocketMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
