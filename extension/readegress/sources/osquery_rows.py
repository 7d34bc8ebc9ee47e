"""osquery event-table rows → normalized events. Pure; shared by the live
osquery source and ``readegress replay``.

Schemas (osquery 5.x, Linux, audit-based; values are strings unless
``--logger_numerics``):

- ``process_file_events``: operation, pid, ppid, time, executable, partial,
  cwd, path, dest_path, uid, gid, auid, euid, ..., uptime, eid. Only
  ``open``/``read`` are reads, and osquery emits them only with
  ``--audit_fim_show_accesses=true``.
- ``socket_events``: action, pid, path (the exe), fd, auid, family, protocol
  (always 0 on Linux), local/remote address and port, socket, time, uptime,
  eid, success, status. No uid and no ppid. Only ``connect`` with status
  ``succeeded`` or ``in_progress`` (non-blocking connects) is egress; failed
  connects, ``bind`` and inbound ``accept`` are not. AF_UNIX (family 1) is not
  network egress.
- ``process_events``: pid, path, cmdline, cwd, auid, uid, ..., parent, time,
  uptime, eid, syscall. For fork/vfork/clone osquery puts the *child* in
  ``pid`` and the caller in ``parent``; execve/execveat keep the pid. Rows of
  osquery before syscall tracking have no ``syscall`` column: all are execs.

The table is recognised by its columns, never by a query name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from readegress.detect.events import Egress, Event, Exec, Proc, ProcessStart, SensitiveRead

FILE_EVENTS = "process_file_events"
SOCKET_EVENTS = "socket_events"
PROCESS_EVENTS = "process_events"

READ_OPERATIONS = frozenset({"open", "read"})
EGRESS_STATUSES = frozenset({"succeeded", "in_progress"})
FORK_SYSCALLS = frozenset({"fork", "vfork", "clone", "clone3"})
EXEC_SYSCALLS = frozenset({"execve", "execveat"})
INET_FAMILIES = frozenset({2, 10})
IP_PROTOCOLS = {6: "tcp", 17: "udp"}


def recognise(row: Mapping[str, Any]) -> Optional[str]:
    """Which osquery event table a row comes from, by its columns."""
    if "operation" in row and "path" in row and "pid" in row:
        return FILE_EVENTS
    if "action" in row and "remote_address" in row:
        return SOCKET_EVENTS
    if "cmdline" in row and "parent" in row and "pid" in row:
        return PROCESS_EVENTS
    return None


def _int(v: Any) -> Optional[int]:
    if v.__class__ is str and v.isdecimal():  # the common case, first (int() takes the same)
        return int(v)
    if v is None or v == "":
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    try:
        return int(str(v).strip())
    except ValueError:
        try:
            return int(float(str(v)))
        except ValueError:
            return None


def _str(v: Any) -> str:
    return "" if v is None else str(v)


class RowError(ValueError):
    """A row of a recognised table lacks a usable pid or time."""


def _pid_time(row: Mapping[str, Any], pid_key: str = "pid") -> tuple[int, float]:
    pid = _int(row.get(pid_key))
    t = _int(row.get("time"))
    if pid is None or pid < 0:
        raise RowError(f"{pid_key} {row.get(pid_key)!r} is not a process id")
    if t is None or t < 0:
        raise RowError(f"time {row.get('time')!r} is not a Unix time")
    return pid, float(t)


def event_from_row(
    table: str, row: Mapping[str, Any], host: str, source: str = "osquery"
) -> Optional[Event]:
    """One normalized event, or ``None`` when the row is not one we correlate.

    Raises :class:`RowError` for a row of a known table that cannot be used
    (no pid or time): the caller counts and reports it.
    """
    if table == FILE_EVENTS:
        if _str(row.get("operation")) not in READ_OPERATIONS:
            return None
        pid, t = _pid_time(row)
        proc = Proc(
            pid=pid,
            ppid=_int(row.get("ppid")),
            executable=_str(row.get("executable")),
            uid=_int(row.get("uid")),
            auid=_int(row.get("auid")),
        )
        return SensitiveRead(host, t, proc, _str(row.get("path")), source)
    if table == SOCKET_EVENTS:
        if _str(row.get("action")) != "connect":
            return None
        status = _str(row.get("status"))
        if status:
            if status not in EGRESS_STATUSES:
                return None
        elif _str(row.get("success")) not in ("1", "true", "True"):
            return None
        family = _int(row.get("family"))
        if family is not None and family not in INET_FAMILIES:
            return None
        address = _str(row.get("remote_address"))
        port = _int(row.get("remote_port"))
        if not address or port is None:
            return None
        pid, t = _pid_time(row)
        proc = Proc(pid=pid, executable=_str(row.get("path")), auid=_int(row.get("auid")))
        # osquery on Linux logs protocol 0 (unknown): "" then, so the core treats it
        # as possibly raw TCP; a real IP protocol number is kept.
        protocol = IP_PROTOCOLS.get(_int(row.get("protocol")) or 0, "")
        return Egress(host, t, proc, address, port, source, protocol=protocol)
    if table == PROCESS_EVENTS:
        syscall = _str(row.get("syscall")) or "execve"
        pid, t = _pid_time(row)
        proc = Proc(
            pid=pid,
            ppid=_int(row.get("parent")),
            executable=_str(row.get("path")),
            uid=_int(row.get("uid")),
            auid=_int(row.get("auid")),
            cmdline=_str(row.get("cmdline")) if syscall in EXEC_SYSCALLS else None,
        )
        if syscall in EXEC_SYSCALLS:
            return Exec(host, t, proc, source)
        if syscall in FORK_SYSCALLS:
            return ProcessStart(host, t, proc, source)
        return None
    return None
