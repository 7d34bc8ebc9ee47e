"""Columns of the osquery tables readegress's packs and tests use (Linux, osquery 5.x).

From osquery's specs: ``specs/linux/process_file_events.table``,
``specs/posix/socket_events.table``, ``specs/posix/process_events.table`` (with
its Linux ``extended_schema``), ``specs/utility/osquery_extensions.table`` and
``specs/utility/osquery_flags.table``. Each column is ``(name, type[,
options])``; options as in :mod:`readegress.tables.spec` (``hidden`` columns
are left out of ``SELECT *`` but can be selected by name, as ``eid`` is).
The test core serves these tables with these columns, and ``packs check``
compiles every pack query against them.
"""

from __future__ import annotations

from typing import Union

OsqueryColumn = Union[tuple[str, str], tuple[str, str, str]]

PROCESS_FILE_EVENTS: list[OsqueryColumn] = [
    ("operation", "TEXT"),
    ("pid", "BIGINT"),
    ("ppid", "BIGINT"),
    ("time", "BIGINT", "additional"),
    ("executable", "TEXT"),
    ("partial", "TEXT"),
    ("cwd", "TEXT"),
    ("path", "TEXT"),
    ("dest_path", "TEXT"),
    ("uid", "TEXT"),
    ("gid", "TEXT"),
    ("auid", "TEXT"),
    ("euid", "TEXT"),
    ("egid", "TEXT"),
    ("fsuid", "TEXT"),
    ("fsgid", "TEXT"),
    ("suid", "TEXT"),
    ("sgid", "TEXT"),
    ("uptime", "BIGINT"),
    ("eid", "TEXT", "hidden"),
]
SOCKET_EVENTS: list[OsqueryColumn] = [
    ("action", "TEXT"),
    ("pid", "BIGINT"),
    ("path", "TEXT"),
    ("fd", "TEXT"),
    ("auid", "BIGINT"),
    ("status", "TEXT"),
    ("family", "INTEGER"),
    ("protocol", "INTEGER", "hidden"),
    ("local_address", "TEXT"),
    ("remote_address", "TEXT"),
    ("local_port", "INTEGER"),
    ("remote_port", "INTEGER"),
    ("socket", "TEXT", "hidden"),
    ("time", "BIGINT"),
    ("uptime", "BIGINT"),
    ("eid", "TEXT", "hidden"),
    ("success", "INTEGER", "hidden"),
]
PROCESS_EVENTS: list[OsqueryColumn] = [
    ("pid", "BIGINT"),
    ("path", "TEXT"),
    ("mode", "TEXT"),
    ("cmdline", "TEXT"),
    ("cmdline_size", "BIGINT", "hidden"),
    ("env", "TEXT", "hidden"),
    ("env_count", "BIGINT", "hidden"),
    ("env_size", "BIGINT", "hidden"),
    ("cwd", "TEXT"),
    ("auid", "BIGINT"),
    ("uid", "BIGINT"),
    ("euid", "BIGINT"),
    ("gid", "BIGINT"),
    ("egid", "BIGINT"),
    ("owner_uid", "BIGINT"),
    ("owner_gid", "BIGINT"),
    ("atime", "BIGINT"),
    ("mtime", "BIGINT"),
    ("ctime", "BIGINT"),
    ("btime", "BIGINT"),
    ("overflows", "TEXT", "hidden"),
    ("parent", "BIGINT"),
    ("time", "BIGINT", "additional"),
    ("uptime", "BIGINT"),
    ("eid", "TEXT", "hidden"),
    ("fsuid", "BIGINT"),
    ("suid", "BIGINT"),
    ("fsgid", "BIGINT"),
    ("sgid", "BIGINT"),
    ("syscall", "TEXT"),
]
OSQUERY_EXTENSIONS: list[OsqueryColumn] = [
    ("uuid", "BIGINT"),
    ("name", "TEXT"),
    ("version", "TEXT"),
    ("sdk_version", "TEXT"),
    ("path", "TEXT"),
    ("type", "TEXT"),
]
OSQUERY_FLAGS: list[OsqueryColumn] = [
    ("name", "TEXT"),
    ("type", "TEXT"),
    ("description", "TEXT"),
    ("default_value", "TEXT"),
    ("value", "TEXT"),
    ("shell", "INTEGER"),
]

#: osquery's own tables by name.
OSQUERY_TABLES: dict[str, list[OsqueryColumn]] = {
    "process_file_events": PROCESS_FILE_EVENTS,
    "socket_events": SOCKET_EVENTS,
    "process_events": PROCESS_EVENTS,
    "osquery_extensions": OSQUERY_EXTENSIONS,
    "osquery_flags": OSQUERY_FLAGS,
}
#: The audit event tables (their scheduled queries return events since the last run).
EVENT_TABLES = frozenset({"process_file_events", "socket_events", "process_events"})
