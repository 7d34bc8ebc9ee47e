"""``read_then_egress``: one row per settled detection of the detection service.

Data: :meth:`readegress.service.DetectionService.detections` — detections the
service has settled (enriched with live socket facts ``settle_seconds`` after
the egress) and kept at or above the threshold. They are computed on the
service's own thread as events arrive, never at query time, and never change
once stored, so osquery's differential results log reports each one once.
Without a service (``readegress query`` without a usable config) the table
is empty; ``readegress query`` shows what the extension saved in its state.

``executables``, ``other_paths`` and ``files_read`` are JSON lists (paths may
contain commas), ``bytes_by_destination`` a JSON object, ``near_approval`` a
JSON object or empty;
``reasons`` is comma-separated (codes never do). Pushed down: ``id =``,
``pid =`` and ``egress_time >``/``>=`` (SQLite re-checks every constraint).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import NamedTuple, Optional

from readegress.service.detection_service import FinalDetection
from readegress.tables.base import TableEnv
from readegress.tables.context import QueryContext


class ReadThenEgressRow(NamedTuple):
    id: str
    read_time: int
    egress_time: int
    delay_seconds: float
    pid: int
    start_time: Optional[int]
    executable: str
    executables: str
    cmdline: Optional[str]
    uid: Optional[int]
    auid: Optional[int]
    reader_pid: int
    reader_executable: str
    path: str
    sensitive_class: str
    other_paths: str
    remote_address: str
    remote_port: int
    remote_class: str
    protocol: Optional[str]
    scope: str
    score: int
    priority: int
    reasons: str
    bytes_sent: Optional[int]
    chain_bytes_sent: Optional[int]
    bytes_by_destination: str
    files_read: str
    destination_seen_before: Optional[bool]
    near_approval: Optional[str]
    closed_bytes_sent: Optional[int]
    socket_age_seconds: Optional[int]
    keepalive: Optional[bool]
    egress_kind: str
    source: str
    detected_time: int


def row_of(f: FinalDetection) -> ReadThenEgressRow:
    d = f.detection
    source = (
        d.read_source if d.read_source == d.egress_source else f"{d.read_source},{d.egress_source}"
    )
    return ReadThenEgressRow(
        id=d.id,
        read_time=int(d.read_time),
        egress_time=int(d.egress_time),
        delay_seconds=round(d.delay, 3),
        pid=d.pid,
        start_time=f.start_time,
        executable=d.executable,
        executables=json.dumps(list(d.executables)),
        cmdline=d.cmdline,
        uid=d.uid,
        auid=d.auid,
        reader_pid=d.reader_pid,
        reader_executable=d.reader_executable,
        path=d.path,
        sensitive_class=d.sensitive_class,
        other_paths=json.dumps(list(d.other_paths)),
        remote_address=d.remote_address,
        remote_port=d.remote_port,
        remote_class=d.remote_class,
        protocol=d.protocol or None,
        scope=d.scope,
        score=d.score,
        priority=d.priority,
        reasons=",".join(d.reasons),
        bytes_sent=d.bytes_sent,
        chain_bytes_sent=d.chain_bytes_sent,
        bytes_by_destination=json.dumps(dict(d.bytes_by_destination)),
        files_read=json.dumps([r._asdict() for r in d.files_read]),
        destination_seen_before=d.destination_seen_before,
        near_approval=d.near_approval or None,
        closed_bytes_sent=f.closed_bytes_sent,
        socket_age_seconds=d.socket_age,
        keepalive=d.keepalive,
        egress_kind=d.egress_kind,
        source=source,
        detected_time=int(f.detected_time),
    )


class ReadThenEgressTable:
    row_type = ReadThenEgressRow

    def __init__(self, env: TableEnv) -> None:
        self.env = env

    def generate(self, ctx: QueryContext) -> Iterator[ReadThenEgressRow]:
        service = self.env.service
        if service is None:
            return
        pids = ctx.int_equals("pid")
        ids = ctx.text_equals("id")
        since = ctx.int_lower_bound("egress_time")
        if (pids is not None and not pids) or (ids is not None and not ids):
            return
        for f in service.detections():
            d = f.detection
            if pids is not None and d.pid not in pids:
                continue
            if ids is not None and d.id not in ids:
                continue
            if since is not None and int(d.egress_time) < since:
                continue
            yield row_of(f)
