"""The native and osquery sources make the same detections from the same facts.

One live run of the native sources (in this process: fanotify + sock_diag,
root) records every event it feeds the correlation core while three real
chains run against a loopback sink: a reader that sends (process scope),
``cat | sender`` (pipeline: native proves the pipe, osquery infers it from
members started together), and ``sh -c 'exec sender < FILE'`` (process scope
through an exec). From those recorded facts, rows are built in osquery's exact
event-table schemas (``osquery_events.py``): reads as ``process_file_events``,
egress as ``socket_events`` connects, image changes as ``process_events``
execve, and each process's parent as a fork row. The extension, registered
with the test osquery core, polls them with the osquery source.

Same pid, path, remote address/port and scope on both sides. What may differ,
and is asserted exactly: only the native side knows the file's size and the
socket's final byte count (fanotify's event fd, the destroy notification), so
its reasons add ``bytes_ge_file_size`` and its score adds that reason's points
times the scope factor; only the native side reads pipe inodes, so its
pipeline adds ``pipe_shared``; it also has ``bytes_sent`` and the sender's start time,
where the osquery side (whose processes are gone when it settles) has none.

Then both sources feed one service: each chain is reported once, by the native
source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from chain_peers import SENDER, RecordedFeed, Sink
from osquery_events import EventTables
from readegress.detect.config import Config, load_config
from readegress.detect.core import score
from readegress.detect.events import Egress, Event, Exec, Proc, SensitiveRead
from readegress.kernel.procfs import boot_time
from readegress.osquery import ExtensionRuntime, ManagerClient
from readegress.service import open_environment
from readegress.service.detection_service import DetectionService, FinalDetection
from readegress.sources.native import NativeSources
from readegress.tables.base import TableCalls, load_tables
from readegress.testing import OsqueryCore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify and sock_diag need root")

CONFIG = """
window_seconds = 60
threshold = 50
egress_classes = ["public", "loopback"]
settle_seconds = 0.3
poll_interval = 0.2
state_dir = "/nonexistent-readegress-parity-state"

[[class]]
name = "cli_sensitive"
level = "high"
paths = ["{path}"]
"""


@pytest.fixture
def sock() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="re-par-", dir="/tmp")  # UNIX socket paths are short
    try:
        yield os.path.join(d, "osquery.em")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def core(sock: str) -> Iterator[OsqueryCore]:
    with OsqueryCore(sock) as c:
        yield c


class Recorder:
    """Wraps NativeSources.drain: every event the core is fed, in feeding order."""

    def __init__(self, native: NativeSources) -> None:
        self.native = native
        self.events: list[Event] = []
        self._drain = native.drain
        native.drain = self.drain  # type: ignore[method-assign]

    def drain(self, now: Optional[float] = None, *, everything: bool = False) -> list[Event]:
        out = self._drain(now, everything=everything)
        self.events.extend(out)
        return out


def run_chains(area: Path, secret: str, port: int) -> dict[str, int]:
    """The three chains, each in its own sh and session; name -> sender pid."""
    py = f"{sys.executable} {area / 'sender.py'} {port}"
    scripts = {
        "process": f"{py} --file {secret} --hold 0.02",
        "pipeline": f"cat {secret} | {py} --stdin 1 --hold 0.02",
        "exec": f"exec {py} --stdin 1 --hold 0.02 < {secret}",
    }
    pids = {}
    for name, script in scripts.items():
        out = subprocess.run(
            ["sh", "-c", script + "; exit $?"],
            capture_output=True, text=True, timeout=30, check=True, start_new_session=True,
        ).stdout  # fmt: skip
        pids[name] = json.loads(out.strip().splitlines()[-1])["pid"]
        time.sleep(0.3)
    return pids


def native_run(
    cfg: Config, area: Path, secret: str
) -> tuple[dict[str, FinalDetection], list[Event], dict[str, int]]:
    finals: list[FinalDetection] = []
    svc = DetectionService(cfg, None, persist=False, on_final=finals.append)
    native = NativeSources(cfg, svc.host)
    rec = Recorder(native)
    svc.attach_native(native)
    native.start()
    svc.start()
    try:
        with Sink(delay=0.02) as sink:
            pids = run_chains(area, secret, sink.port)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if set(pids.values()) <= {f.detection.pid for f in finals}:
                    break
                time.sleep(0.05)
    finally:
        svc.stop()
        svc.flush()
    readers = {e.proc.pid for e in rec.events if isinstance(e, SensitiveRead) and e.path == secret}
    by_name = {}
    for name, pid in pids.items():
        mine = [
            f
            for f in finals
            if f.detection.pid == pid
            and f.detection.reader_pid in readers
            and f.detection.scope in ("process", "pipeline")
        ]
        assert mine, (
            name,
            pid,
            readers,
            [(f.detection.pid, f.detection.reader_pid, f.detection.scope) for f in finals],
        )
        by_name[name] = mine[0]
    return by_name, rec.events, pids


def osquery_rows(events: list[Event], ev: EventTables, scenario_pids: set[int]) -> None:
    """osquery rows, in its exact schemas, for the facts the native run recorded."""
    procs: dict[int, Proc] = {}
    first: dict[int, float] = {}
    for e in events:
        p = e.proc
        if p.pid and p.pid not in first:
            first[p.pid] = e.time
            procs[p.pid] = p
    # The scenario processes' creation (osquery's process_events fork rows: pid is
    # the child, parent the caller), so the core learns lineage as audit shows it.
    # A fork row is stamped when the process started (its start ticks), as audit
    # would: not when the native source first reported it, which a loaded
    # machine can delay past the second that tells a pipeline from a script.
    btime = boot_time()

    def forked(pid: int) -> int:
        start = procs[pid].start
        return int(btime + start / 100) if start is not None else int(first[pid])

    for pid in sorted(scenario_pids & set(procs), key=lambda q: first[q]):
        p = procs[pid]
        if p.ppid is not None:
            ev.process(forked(pid), pid, p.executable, parent=p.ppid, syscall="fork")
    image = {pid: p.executable for pid, p in procs.items()}
    for e in events:
        t = int(e.time)
        p = e.proc
        if isinstance(e, SensitiveRead):
            ev.read(t, p.pid, e.path, exe=p.executable, ppid=p.ppid or 0, uid=p.uid or 0,
                    auid=p.auid if p.auid is not None else "4294967295")  # fmt: skip
        elif isinstance(e, Exec):
            if image.get(p.pid) == p.executable:
                continue  # a first observation, not an exec: the fork row stands for it
            ev.process(t, p.pid, p.executable, parent=p.ppid or 0, syscall="execve",
                       cmdline=p.cmdline or "", uid=p.uid or 0)  # fmt: skip
            image[p.pid] = p.executable
        elif isinstance(e, Egress) and e.kind == "connect":
            family = 10 if ":" in e.remote_address else 2
            auid = p.auid if p.auid is not None else "4294967295"
            ev.connect(t, p.pid, e.remote_address, e.remote_port, exe=p.executable, auid=auid,
                       family=family)  # fmt: skip


class Extension:
    def __init__(self, core: OsqueryCore, config: str, state_dir: Path) -> None:
        self.env = open_environment(config, state_dir=str(state_dir), background=True)
        self.calls = TableCalls(load_tables(self.env), timeout=10)
        self.runtime = ExtensionRuntime(
            core.socket_path, self.calls, timeout=2.0, interval=0.2,
            on_registered=self.env.attach_manager,
        )  # fmt: skip

    def __enter__(self) -> Extension:
        self.runtime.start()
        assert self.runtime.wait_registered(5.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.runtime.stop()
        self.runtime.join(5.0)
        self.calls.close()
        self.env.close()


def wait_rows(
    core: OsqueryCore, pids: set[int], timeout: float = 15.0
) -> dict[int, dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = core.query("SELECT * FROM read_then_egress")
        got = {int(r["pid"]): r for r in rows if int(r["pid"]) in pids}
        if set(got) == pids or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.fixture
def area(tmp_path: Path) -> Path:
    (tmp_path / "secret.key").write_bytes((b"parity secret key material\n" * 200)[:4096])
    (tmp_path / "sender.py").write_text(SENDER)
    cfg = tmp_path / "readegress.toml"
    cfg.write_text(CONFIG.format(path=tmp_path / "secret.key"))
    os.chmod(cfg, 0o644)
    return tmp_path


def test_native_and_osquery_sources_make_the_same_detections(core: OsqueryCore, area: Path) -> None:
    secret = str(area / "secret.key")
    cfg_path = str(area / "readegress.toml")
    cfg = load_config(cfg_path)
    native, events, pids = native_run(cfg, area, secret)

    ev = EventTables(core)
    scenario = set(pids.values()) | {e.proc.pid for e in events if isinstance(e, SensitiveRead)}
    osquery_rows(events, ev, scenario)
    with Extension(core, cfg_path, area / "state"):
        rows = wait_rows(core, set(pids.values()))

    for name, pid in pids.items():
        n = native[name].detection
        assert pid in rows, (name, n, rows)
        o = rows[pid]
        # The same chain: sender, reader, file, destination, scope.
        assert (int(o["pid"]), int(o["reader_pid"]), o["path"]) == (n.pid, n.reader_pid, n.path)
        assert (o["remote_address"], int(o["remote_port"])) == (n.remote_address, n.remote_port)
        assert o["scope"] == n.scope, (name, o, n)
        assert o["sensitive_class"] == n.sensitive_class == "cli_sensitive"
        assert o["source"] == "osquery" and n.read_source == "fanotify"
        # What differs, and why: the file size and final byte count are native-only.
        o_reasons = set(o["reasons"].split(","))
        native_only = {"bytes_ge_file_size"} | ({"pipe_shared"} if n.scope == "pipeline" else set())
        assert set(n.reasons) - o_reasons == native_only, (name, n.reasons, o_reasons)
        assert o_reasons <= set(n.reasons)
        w = n.class_weight
        assert (int(o["score"]), n.score) == (
            score(w, n.scope, o_reasons),
            score(w, n.scope, [*o_reasons, *native_only]),
        )
        assert o["bytes_sent"] == "" and n.bytes_sent is not None and n.bytes_sent >= 4096
        assert o["start_time"] == "" and native[name].start_time is not None
        assert n.file_size == 4096
    assert native["process"].detection.scope == "process"
    assert native["pipeline"].detection.scope == "pipeline"
    assert native["exec"].detection.scope == "process"
    assert "exec_after_read" in native["exec"].detection.reasons


def test_both_sources_report_each_chain_once_preferring_the_native_one(
    core: OsqueryCore, area: Path
) -> None:
    secret = str(area / "secret.key")
    cfg = load_config(str(area / "readegress.toml"))
    _native, events, pids = native_run(cfg, area, secret)
    ev = EventTables(core)
    scenario = set(pids.values()) | {e.proc.pid for e in events if isinstance(e, SensitiveRead)}
    osquery_rows(events, ev, scenario)

    svc = DetectionService(cfg, None, state_dir=str(area / "both"), persist=False)
    with ManagerClient(core.socket_path, timeout=10) as manager:
        svc.attach(manager, start=False)
        svc.attach_native(
            RecordedFeed(events, lambda d: 4096 if d.egress_source == "sock_diag" else None)
        )
        for _ in range(5):
            svc.cycle()
        time.sleep(0.4)  # past settle_seconds
        svc.cycle()
    mine = [f.detection for f in svc.detections() if f.detection.pid in set(pids.values())]
    chains = [(d.pid, d.path, d.remote_address, d.remote_port) for d in mine]
    assert len(chains) == len(set(chains)) == len(pids), mine
    assert {d.egress_source for d in mine} == {"sock_diag"}
    c = svc.counters
    assert c["cross_source_replaced"] + c["cross_source_duplicates"] >= len(pids), c


def test_config_sources_native_runs_in_the_extension_and_health_shows_it(area: Path) -> None:
    from readegress.sql.local import open_local_engine

    secret = str(area / "secret.key")
    cfg_path = area / "native.toml"
    top = 'state_dir = "/nonexistent-readegress-parity-state"'
    cfg_path.write_text(CONFIG.format(path=secret).replace(top, 'sources = ["native"]'))
    os.chmod(cfg_path, 0o644)
    env = open_environment(str(cfg_path), state_dir=str(area / "state"), background=True)
    try:
        svc = env.service
        assert svc is not None and svc.native is not None
        with Sink(delay=0.02) as sink:
            out = subprocess.run(
                ["sh", "-c", f"{sys.executable} {area / 'sender.py'} {sink.port} --file {secret}"],
                capture_output=True, text=True, timeout=30, check=True, start_new_session=True,
            ).stdout  # fmt: skip
            pid = json.loads(out.strip().splitlines()[-1])["pid"]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if any(f.detection.pid == pid for f in svc.detections()):
                    break
                time.sleep(0.05)
        engine, calls = open_local_engine(env)
        try:
            _, rows = engine.query(f"SELECT scope, source FROM read_then_egress WHERE pid = {pid}")
            _, health = engine.query(
                "SELECT name, status, value, detail FROM readegress_health"
                " WHERE name IN ('sources', 'native:fanotify', 'native:sock_diag')"
            )
        finally:
            calls.close()
    finally:
        env.close()
    assert [tuple(r) for r in rows] == [("process", "fanotify,sock_diag")]
    got = {r[0]: r for r in health}
    assert got["sources"][1:3] == ("ok", "native"), got["sources"]
    assert got["native:fanotify"][1] == "ok" and got["native:fanotify"][2].startswith("1 files")
    assert got["native:sock_diag"][1] in ("ok", "warn"), got["native:sock_diag"]
    assert "hot lineages" in got["native:sock_diag"][3]
