"""osquery's audit event tables for the test core: exact column sets and row builders.

Column sets, types and options are those of osquery's specs (Linux), kept in
:mod:`readegress.packs.osquery_schema` (which ``packs check`` compiles against).
Rows carry every column as the strings osquery stores, ``time`` and a
ten-digit zero-padded ``eid`` per table, as ``EventSubscriberPlugin::addBatch``
sets them.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Optional, Union

from readegress.packs.osquery_schema import PROCESS_EVENTS, PROCESS_FILE_EVENTS, SOCKET_EVENTS
from readegress.testing import FixtureTable, OsqueryCore

COLUMNS = {
    "process_file_events": PROCESS_FILE_EVENTS,
    "socket_events": SOCKET_EVENTS,
    "process_events": PROCESS_EVENTS,
}

AUID_UNSET = "4294967295"
Row = dict[str, object]

#: A readegress config for tests: loopback counts as egress, short intervals.
TEST_CONFIG = """
window_seconds = 30
threshold = 50
egress_classes = ["public", "loopback"]
settle_seconds = {settle}
poll_interval = {poll}
max_detections = {max_detections}
state_dir = "/nonexistent-readegress-test-state"

[[class]]
name = "shadow"
level = "high"
paths = ["/etc/shadow"]

[[class]]
name = "ssh_private_key"
level = "high"
paths = ["~/.ssh/id_*"]
exclude = ["~/.ssh/*.pub"]

[[class]]
name = "cloud_credentials"
level = "high"
paths = ["~/.aws/credentials"]

[[class]]
name = "account_lists"
level = "low"
paths = ["/etc/passwd"]

[[approved]]
executable = "/usr/bin/ssh"
class = "ssh_private_key"
owner = "tests"
"""


def write_config(
    directory: Union[str, Path],
    *,
    settle: float = 0.2,
    poll: float = 0.2,
    max_detections: int = 1000,
) -> str:
    """A root-owned (the tests run as root), 0644 config file; returns its path."""
    path = Path(directory) / "readegress.toml"
    path.write_text(
        textwrap.dedent(TEST_CONFIG.format(settle=settle, poll=poll, max_detections=max_detections))
    )
    os.chmod(path, 0o644)
    return str(path)


def _blank(table: str) -> Row:
    return {c[0]: "" for c in COLUMNS[table]}


class EventTables:
    """The three event tables in a test core, with per-table eid counters."""

    def __init__(self, core: OsqueryCore, tables: tuple[str, ...] = tuple(COLUMNS)) -> None:
        self.tables: dict[str, FixtureTable] = {}
        for name in tables:
            try:
                self.tables[name] = core.table(name)
            except KeyError:
                self.tables[name] = core.add_table(name, COLUMNS[name])
        self._eid = dict.fromkeys(COLUMNS, 0)

    def _stamp(self, table: str, row: Row, t: int, eid: Optional[int]) -> Row:
        if eid is None:
            self._eid[table] += 1
            eid = self._eid[table]
        else:
            self._eid[table] = max(self._eid[table], eid)
        row["time"] = str(t)
        row["eid"] = f"{eid:010d}"
        row["uptime"] = str(t - 1_600_000_000)
        return row

    def add(self, table: str, *rows: Row) -> None:
        self.tables[table].extend(rows)

    def read(
        self,
        t: int,
        pid: int,
        path: str,
        *,
        exe: str = "/usr/bin/cat",
        ppid: int = 1,
        uid: int = 0,
        auid: Union[int, str] = AUID_UNSET,
        operation: str = "open",
        eid: Optional[int] = None,
        add: bool = True,
    ) -> Row:
        row = _blank("process_file_events")
        ids = ("uid", "euid", "fsuid", "suid", "gid", "egid", "fsgid", "sgid")
        row.update({k: str(uid) for k in ids})
        row.update(
            operation=operation,
            pid=str(pid),
            ppid=str(ppid),
            executable=exe,
            partial="0",
            cwd="/",
            path=path,
            dest_path=path,
            auid=str(auid),
        )
        self._stamp("process_file_events", row, t, eid)
        if add:
            self.add("process_file_events", row)
        return row

    def connect(
        self,
        t: int,
        pid: int,
        address: str,
        port: int,
        *,
        exe: str = "/usr/bin/curl",
        auid: Union[int, str] = AUID_UNSET,
        action: str = "connect",
        status: str = "succeeded",
        family: int = 2,
        eid: Optional[int] = None,
        add: bool = True,
    ) -> Row:
        row = _blank("socket_events")
        row.update(
            action=action,
            pid=str(pid),
            path=exe,
            fd="3",
            auid=str(auid),
            status=status,
            family=str(family),
            protocol="0",
            local_address="",
            remote_address=address,
            local_port="0",
            remote_port=str(port),
            success="1" if status == "succeeded" else "0",
        )
        self._stamp("socket_events", row, t, eid)
        if add:
            self.add("socket_events", row)
        return row

    def process(
        self,
        t: int,
        pid: int,
        exe: str,
        *,
        parent: int,
        syscall: str,
        cmdline: str = "",
        uid: int = 0,
        auid: Union[int, str] = AUID_UNSET,
        eid: Optional[int] = None,
        add: bool = True,
    ) -> Row:
        row = _blank("process_events")
        row.update(
            {k: str(uid) for k in ("uid", "euid", "gid", "egid", "fsuid", "suid", "fsgid", "sgid")}
        )
        row.update(
            pid=str(pid),
            path=exe,
            mode="0100755",
            cmdline=cmdline or exe,
            cmdline_size=str(len(cmdline or exe)),
            cwd="/",
            auid=str(auid),
            owner_uid="0",
            owner_gid="0",
            parent=str(parent),
            syscall=syscall,
        )
        self._stamp("process_events", row, t, eid)
        if add:
            self.add("process_events", row)
        return row
