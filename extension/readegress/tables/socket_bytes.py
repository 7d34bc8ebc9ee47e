"""``socket_bytes``: one row per socket and owning descriptor, with kernel byte counters.

Data: one :class:`~readegress.kernel.monitor.SocketMonitor` snapshot (sock_diag
dumps of every network namespace in use + the incremental /proc fd map).
A socket held by several processes (inherited over fork) gives one row per
(pid, fd); a socket no readable process holds gives one row with empty pid.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import NamedTuple, Optional

from readegress.kernel.records import ObservedSocket
from readegress.net.classify import class_name
from readegress.speedups import native as _native
from readegress.tables.base import TableEnv
from readegress.tables.context import QueryContext

TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
_TCP_LISTEN = 10
_TCP_ESTABLISHED = 1
_KEEPALIVE_TIMER = 2
_TCP = socket.IPPROTO_TCP


class SocketBytesRow(NamedTuple):
    pid: Optional[int]
    fd: Optional[int]
    inode: int
    cookie: int
    family: int
    protocol: int
    state: str
    direction: str
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    remote_class: str
    bytes_sent: Optional[int]
    bytes_acked: Optional[int]
    bytes_received: Optional[int]
    segs_out: Optional[int]
    segs_in: Optional[int]
    last_data_sent_ms: Optional[int]
    last_data_recv_ms: Optional[int]
    keepalive: bool
    first_seen: int
    age_seconds: int
    uid: int
    start_time: Optional[int]
    net_namespace: int


def state_name(protocol: int, state: int) -> str:
    if protocol == _TCP:
        return TCP_STATES.get(state) or str(state)
    return "ESTABLISHED" if state == _TCP_ESTABLISHED else "UNCONNECTED"


class Directions:
    """Tells outbound from inbound: a TCP socket is inbound when a listener covers its local end.

    Linux records no direction on a socket; a connection whose local (address,
    port) matches a listening socket in the same namespace was accepted, any
    other connection was initiated from this host.
    """

    def __init__(self, sockets: tuple[ObservedSocket, ...]) -> None:
        self._listeners: set[tuple[int, str, int]] = set()
        #: (namespace, port) pairs with any listener: most connections miss
        #: this set, so the exact address test below runs only for a few.
        self._ports: set[tuple[int, int]] = set()
        for o in sockets:
            s = o.socket
            if s.protocol == _TCP and s.state == _TCP_LISTEN:
                self._listeners.add((o.net_namespace, s.local_address, s.local_port))
                self._ports.add((o.net_namespace, s.local_port))

    def of(self, o: ObservedSocket) -> str:
        s = o.socket
        if s.protocol == _TCP:
            if s.state == _TCP_LISTEN:
                return "listen"
            ns, port = o.net_namespace, s.local_port
            if (ns, port) not in self._ports:
                return "outbound"
            listeners = self._listeners
            # An IPv4 connection accepted by a dual-stack "::" listener shows as ::ffff:a.b.c.d.
            if (
                (ns, s.local_address, port) in listeners
                or (ns, "0.0.0.0", port) in listeners
                or (ns, "::", port) in listeners
            ):
                return "inbound"
            return "outbound"
        return "outbound" if s.remote_port else "none"


class SocketBytesTable:
    row_type = SocketBytesRow

    def __init__(self, env: TableEnv) -> None:
        self.env = env
        #: rows built in C when the accelerator is there (tests switch it off)
        self.native = _native is not None

    def generate(self, ctx: QueryContext) -> Iterator[SocketBytesRow]:
        """One row per (socket, owning descriptor); the per-row hot loop of the table.

        20,000 rows per call: rows are built by ``tuple.__new__`` on the
        fields in order (the NamedTuple's own ``__new__`` is a Python function
        of 26 arguments) and the per-row helpers are inlined (state names,
        directions, classes are cached lookups).
        """
        pids = ctx.int_equals("pid")
        if pids is not None and not pids:
            return
        snap = self.env.snapshot()
        directions = Directions(snap.sockets)
        listeners = directions._listeners
        listen_ports = directions._ports
        if pids is None and self.native:
            assert _native is not None
            # The loop below in C (_speedups.socket_rows): the same rows, built
            # a chunk at a time as this generator is consumed (the Thrift path
            # converts and drops 1,000 rows at a time: never all 20k at once).
            sockets = snap.sockets
            for start in range(0, len(sockets), _NATIVE_CHUNK):
                yield from _native.socket_rows(
                    sockets[start : start + _NATIVE_CHUNK],
                    listeners,
                    listen_ports,
                    _TCP_STATE_NAMES,
                    _class_cache,
                    _remember_class,
                    SocketBytesRow,
                )
            return
        new = _new_tuple
        cls = SocketBytesRow
        tcp_names = _TCP_STATE_NAMES
        classes = _class_cache
        for o in snap.sockets:
            s, ns, owners, first_seen, age = o
            if pids is not None:
                owners = tuple(w for w in owners if w.process.identity.pid in pids)
                if not owners:
                    continue
            protocol = s.protocol
            state = s.state
            local_address = s.local_address
            local_port = s.local_port
            remote_address = s.remote_address
            remote_port = s.remote_port
            if protocol == _TCP:
                state_text = tcp_names.get(state) or str(state)
                if state == _TCP_LISTEN:
                    direction = "listen"
                elif (ns, local_port) not in listen_ports:
                    direction = "outbound"
                elif (
                    (ns, local_address, local_port) in listeners
                    or (ns, "0.0.0.0", local_port) in listeners
                    or (ns, "::", local_port) in listeners
                ):
                    direction = "inbound"
                else:
                    direction = "outbound"
            else:
                state_text = "ESTABLISHED" if state == _TCP_ESTABLISHED else "UNCONNECTED"
                direction = "outbound" if remote_port else "none"
            remote_class = classes.get(remote_address)
            if remote_class is None:
                remote_class = _remember_class(remote_address)
            middle = (
                s.inode,
                s.cookie,
                s.family,
                protocol,
                state_text,
                direction,
                local_address,
                local_port,
                remote_address,
                remote_port,
                remote_class,
                s.bytes_sent,
                s.bytes_acked,
                s.bytes_received,
                s.segs_out,
                s.segs_in,
                s.last_data_sent_ms,
                s.last_data_recv_ms,
                s.timer == _KEEPALIVE_TIMER,
                int(first_seen),
                int(age),
                s.uid,
            )
            if not owners:
                yield new(cls, (None, None, *middle, None, ns))
                continue
            for w in owners:
                p = w.process
                yield new(cls, (p.identity.pid, w.fd, *middle, p.start_time, ns))


_new_tuple = tuple.__new__
#: sockets whose rows the compiled builder makes per call
_NATIVE_CHUNK = 512
_TCP_STATE_NAMES: dict[int, str] = dict(TCP_STATES)
#: remote address -> class name, bounded (a host talks to few peers at a time).
_class_cache: dict[str, str] = {}
_CLASS_CACHE_MAX = 65536


def _remember_class(address: str) -> str:
    if len(_class_cache) >= _CLASS_CACHE_MAX:
        _class_cache.clear()
    name = _class_cache[address] = class_name(address)
    return name


if SocketBytesRow._fields[:2] != ("pid", "fd") or len(SocketBytesRow._fields) != 26:
    raise ImportError("SocketBytesRow changed: update generate's row builder")  # pragma: no cover
