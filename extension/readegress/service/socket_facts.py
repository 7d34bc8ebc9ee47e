"""Live socket facts for a detection, read from the kernel socket monitor after it settles.

Where the data comes from: one :class:`~readegress.kernel.monitor.SocketMonitor`
snapshot (sock_diag ``tcp_info`` of every socket, owners from ``/proc``) and
the monitor's closed-socket totals (sock_diag destroy notifications).

Which socket is "the egress socket": a socket held by the detection's pid,
connected to its remote address and port (IPv4-mapped IPv6 compared as the
embedded IPv4), held by a process that had started by the egress (a later
process reusing the pid is not it), and not older than the egress — the
monitor's age is a lower bound, so a socket whose age exceeds the time since
the egress (plus ``slack`` for osquery's store delay and the monitor's poll
interval) existed before the connect and is not the one the event reports.
A connect row means the socket was opened at the egress, after the read, so
every byte on it was sent after the read.

Several matching sockets (a client that reconnects) are summed; the age is
the oldest of them, keepalive is set when any has its timer armed. UDP keeps
no byte counters, so a match that includes UDP gives no byte count.

A socket that closed before the settle delay is gone from the dump. The
monitor then knows only its owner's *closed totals*: bytes of every socket
the process closed while the monitor ran, whatever the destination and
whether before or after the read. That is reported apart, as an upper bound
(``closed_bytes_sent``), never as ``bytes_sent``: nothing is guessed. A
socket that opened and closed between two monitor polls was never seen with
an owner; then nothing is known.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from readegress.detect.core import Detection
from readegress.kernel.records import ClosedTotals, ObservedSocket, ProcessIdentity, ProcessInfo
from readegress.net.classify import unmapped_address

_KEEPALIVE_TIMER = 2
_PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}
#: A process counts as "started by the egress" with this much rounding (start_time is
#: whole seconds derived from clock ticks; osquery's time is whole seconds).
_START_SLACK = 1.0


@dataclass(frozen=True)
class SocketFacts:
    bytes_sent: Optional[int] = None  # on the egress socket(s): bytes since the read
    socket_age: Optional[int] = None  # seconds, a lower bound
    keepalive: Optional[bool] = None
    closed_bytes_sent: Optional[int] = None  # upper bound from closed totals (socket gone)
    protocol: str = ""  # "tcp"/"udp" of the matched socket(s)
    owner: Optional[ProcessInfo] = None  # the sender as /proc saw it

    @property
    def found(self) -> bool:
        return self.owner is not None


@lru_cache(maxsize=4096)
def normalize_address(address: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 as its IPv4 (scope ids dropped)."""
    a = unmapped_address(address)
    return address if a is None else str(a)


def _started_by(info: ProcessInfo, when: float) -> bool:
    return info.start_time <= when + _START_SLACK


def lookup(
    d: Detection,
    sockets: tuple[ObservedSocket, ...],
    closed: Mapping[ProcessIdentity, ClosedTotals],
    closed_info: Callable[[ProcessIdentity], Optional[ProcessInfo]],
    *,
    now: float,
    slack: float,
) -> SocketFacts:
    """The live facts of ``d``'s egress; ``closed_info(identity)`` names a closed total's owner."""
    target = normalize_address(d.remote_address)
    max_age = max(0.0, now - d.egress_time) + slack
    matched: list[ObservedSocket] = []
    owner: Optional[ProcessInfo] = None
    for o in sockets:
        s = o.socket
        if s.remote_port != d.remote_port or normalize_address(s.remote_address) != target:
            continue
        owners = [
            w.process
            for w in o.owners
            if w.process.identity.pid == d.pid and _started_by(w.process, d.egress_time)
        ]
        if not owners or o.age_seconds > max_age:
            continue
        matched.append(o)
        owner = owners[0]
    if matched:
        counters = [o.socket.bytes_sent for o in matched]
        sent = (
            None if any(c is None for c in counters) else sum(c for c in counters if c is not None)
        )
        protocols = {_PROTOCOLS.get(o.socket.protocol, "") for o in matched}
        return SocketFacts(
            bytes_sent=sent,
            socket_age=int(max(o.age_seconds for o in matched)),
            keepalive=any(o.socket.timer == _KEEPALIVE_TIMER for o in matched),
            protocol=protocols.pop() if len(protocols) == 1 else "",
            owner=owner,
        )
    # The socket is gone: the newest process with this pid that had started by
    # the egress may have its closed totals.
    best: Optional[tuple[ProcessInfo, ClosedTotals]] = None
    for ident, totals in closed.items():
        if ident.pid != d.pid:
            continue
        info = closed_info(ident)
        if info is None or not _started_by(info, d.egress_time):
            continue
        if best is None or info.start_time > best[0].start_time:
            best = (info, totals)
    if best is not None:
        return SocketFacts(closed_bytes_sent=best[1].bytes_sent, owner=best[0])
    return SocketFacts()
