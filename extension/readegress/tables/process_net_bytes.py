"""``process_net_bytes``: per-process network byte totals, live plus closed.

Data: the same :class:`~readegress.kernel.monitor.SocketMonitor` snapshot as
``socket_bytes`` (live sockets and their owners) plus the monitor's
closed-socket totals, which sock_diag destroy notifications fill while the
extension runs. Everything is keyed by process identity ``(boot_id, pid,
start ticks)``: a process that later reuses a pid starts from zero. A socket
shared by several processes counts for each of them (each can write to it).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import NamedTuple, Optional

from readegress.kernel.records import ClosedTotals, ProcessIdentity, ProcessInfo
from readegress.net.classify import LOCAL_CLASSES, classify
from readegress.tables.base import TableEnv
from readegress.tables.context import QueryContext
from readegress.tables.socket_bytes import Directions


class ProcessNetBytesRow(NamedTuple):
    pid: int
    start_time: int
    name: str
    path: str
    uid: int
    open_sockets: int
    tcp_sockets: int
    outbound_sockets: int
    live_bytes_sent: int
    live_bytes_received: int
    closed_sockets: int
    closed_bytes_sent: int
    closed_bytes_received: int
    total_bytes_sent: int
    total_bytes_received: int
    oldest_outbound_age_seconds: Optional[int]


class _Live:
    __slots__ = ("info", "oldest", "open", "outbound", "received", "sent", "tcp")

    def __init__(self, info: ProcessInfo) -> None:
        self.info = info
        self.open = self.tcp = self.outbound = self.sent = self.received = 0
        self.oldest: Optional[int] = None


class ProcessNetBytesTable:
    row_type = ProcessNetBytesRow

    def __init__(self, env: TableEnv) -> None:
        self.env = env

    def generate(self, ctx: QueryContext) -> Iterator[ProcessNetBytesRow]:
        pids = ctx.int_equals("pid")
        if pids is not None and not pids:
            return
        monitor = self.env.monitor
        snap = self.env.snapshot()
        directions = Directions(snap.sockets)
        live: dict[ProcessIdentity, _Live] = {}
        for o in snap.sockets:
            s = o.socket
            if not o.owners:
                continue
            is_tcp = s.protocol == socket.IPPROTO_TCP
            remote_is_far = classify(s.remote_address) not in LOCAL_CLASSES
            outbound = remote_is_far and directions.of(o) == "outbound"
            for w in o.owners:
                ident = w.process.identity
                if pids is not None and ident.pid not in pids:
                    continue
                acc = live.get(ident)
                if acc is None:
                    acc = live[ident] = _Live(w.process)
                acc.open += 1
                acc.tcp += is_tcp
                acc.sent += s.bytes_sent or 0
                acc.received += s.bytes_received or 0
                if outbound:
                    acc.outbound += 1
                    age = int(o.age_seconds)
                    if acc.oldest is None or age > acc.oldest:
                        acc.oldest = age
        closed: dict[ProcessIdentity, ClosedTotals] = monitor.closed_totals()
        empty = ClosedTotals(0, 0, 0)
        for ident, acc in live.items():
            c = closed.get(ident, empty)
            yield _row(acc.info, acc, c)
        for ident, c in closed.items():
            if ident in live or (pids is not None and ident.pid not in pids):
                continue
            info = monitor.closed_process_info(ident)
            if info is not None:
                yield _row(info, None, c)


def _row(info: ProcessInfo, acc: Optional[_Live], c: ClosedTotals) -> ProcessNetBytesRow:
    sent = acc.sent if acc else 0
    received = acc.received if acc else 0
    return ProcessNetBytesRow(
        pid=info.identity.pid,
        start_time=info.start_time,
        name=info.name,
        path=info.path,
        uid=info.uid,
        open_sockets=acc.open if acc else 0,
        tcp_sockets=acc.tcp if acc else 0,
        outbound_sockets=acc.outbound if acc else 0,
        live_bytes_sent=sent,
        live_bytes_received=received,
        closed_sockets=c.sockets,
        closed_bytes_sent=c.bytes_sent,
        closed_bytes_received=c.bytes_received,
        total_bytes_sent=sent + c.bytes_sent,
        total_bytes_received=received + c.bytes_received,
        oldest_outbound_age_seconds=acc.oldest if acc else None,
    )
