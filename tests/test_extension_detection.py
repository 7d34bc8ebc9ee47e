"""The extension end to end: osquery event rows in, ``read_then_egress`` rows out.

The extension (an in-process :class:`ExtensionRuntime` with the real tables,
and once the real CLI ``python -m readegress extension``) registers with the
test osquery core, whose ``process_file_events``, ``socket_events`` and
``process_events`` carry osquery's exact column sets (``osquery_events.py``)
and grow while the extension runs. Everything is read back the way an osquery
user would: SQL through the core.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Callable, Optional

from osquery_events import EventTables, write_config
from readegress.osquery import ExtensionRuntime
from readegress.service import open_environment
from readegress.service.detection_service import DetectionService
from readegress.sources.osquery_setup import REQUIRED_FLAGS, catalogue_file_paths
from readegress.tables.base import TableCalls, load_tables
from readegress.tables.spec import load_specs
from readegress.testing import OsqueryCore

Rows = list[dict[str, str]]


class Extension:
    """The extension as ``run_extension`` assembles it, served from this process."""

    def __init__(self, core: OsqueryCore, config: str, state_dir: Path) -> None:
        self.env = open_environment(config, state_dir=str(state_dir), background=True)
        self.calls = TableCalls(load_tables(self.env), timeout=10)
        self.runtime = ExtensionRuntime(
            core.socket_path,
            self.calls,
            timeout=2.0,
            interval=0.2,
            on_registered=self.env.attach_manager,
        )

    @property
    def service(self) -> DetectionService:
        assert self.env.service is not None
        return self.env.service

    def __enter__(self) -> Extension:
        self.runtime.start()
        assert self.runtime.wait_registered(5.0)
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.runtime.stop()
        self.runtime.join(5.0)
        self.calls.close()
        self.env.close()


def wait_for(fetch: Callable[[], Rows], ok: Callable[[Rows], bool], timeout: float = 10.0) -> Rows:
    deadline = time.monotonic() + timeout
    while True:
        rows = fetch()
        if ok(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last rows: {rows}")
        time.sleep(0.05)


def detections(core: OsqueryCore, where: str = "") -> Rows:
    return core.query(f"SELECT * FROM read_then_egress {where}")


def by_pid(rows: Rows) -> dict[int, dict[str, str]]:
    return {int(r["pid"]): r for r in rows}


def test_core_scenarios_become_read_then_egress_rows(core: OsqueryCore, tmp_path: Path) -> None:
    ev = EventTables(core)
    base = int(time.time()) - 1000

    def at(scenario: int, dt: int) -> int:
        return base + 40 * scenario + dt  # 40 s apart: beyond the 30 s window

    # 1. process scope: curl reads a key and connects.
    ev.read(
        at(0, 0), 1001, "/root/.ssh/id_rsa", exe="/usr/bin/curl", ppid=1000, uid=1001, auid=1001
    )
    ev.connect(at(0, 1), 1001, "127.0.0.1", 9001, exe="/usr/bin/curl", auid=1001)
    # 2. lineage through a fork row: the parent reads, its child sends.
    ev.process(at(1, 0), 2002, "/bin/bash", parent=2001, syscall="fork", uid=1002, auid=1002)
    ev.read(at(1, 1), 2001, "/etc/shadow", exe="/bin/bash", ppid=2000, uid=1002, auid=1002)
    ev.connect(at(1, 2), 2002, "127.0.0.1", 9002, exe="/bin/bash", auid=1002)
    # 3. exec keeps the chain: bash reads (bash < creds), then execs nc, which sends.
    ev.read(
        at(2, 0), 3001, "/root/.aws/credentials", exe="/bin/bash", ppid=3000, uid=1003, auid=1003
    )
    ev.process(
        at(2, 1), 3001, "/usr/bin/nc", parent=3000, syscall="execve",
        cmdline="nc 127.0.0.1 9003", uid=1003, auid=1003,
    )  # fmt: skip
    ev.connect(at(2, 2), 3001, "127.0.0.1", 9003, exe="/usr/bin/nc", auid=1003)
    # 4. pid reuse: the reader is gone, another user's new process got its pid.
    ev.read(at(3, 0), 4001, "/etc/shadow", exe="/usr/bin/cat", ppid=4000, uid=1004, auid=1004)
    ev.process(at(3, 1), 4001, "/usr/bin/python3", parent=5555, syscall="fork", uid=33)
    ev.connect(at(3, 2), 4001, "127.0.0.1", 9004, exe="/usr/bin/python3")
    # 5. a low class alone: /etc/passwd is read by nearly everything.
    ev.read(at(4, 0), 5001, "/etc/passwd", exe="/usr/bin/curl", uid=1005, auid=1005)
    ev.connect(at(4, 1), 5001, "127.0.0.1", 9005, auid=1005)
    # 6. an approved job: ssh with the user's key.
    ev.read(at(5, 0), 6001, "/home/alice/.ssh/id_ed25519", exe="/usr/bin/ssh", uid=1006, auid=1006)
    ev.connect(at(5, 1), 6001, "127.0.0.1", 22, exe="/usr/bin/ssh", auid=1006)
    # 7. a failed connect and an inbound accept are not egress.
    ev.read(at(6, 0), 7001, "/etc/shadow", exe="/usr/bin/nc", uid=1007, auid=1007)
    ev.connect(at(6, 1), 7001, "127.0.0.1", 9007, exe="/usr/bin/nc", status="failed", auid=1007)
    ev.connect(at(6, 2), 7001, "127.0.0.1", 40000, exe="/usr/bin/nc", action="accept", auid=1007)

    cfg = write_config(tmp_path, settle=0.2, poll=0.2)
    with Extension(core, cfg, tmp_path / "state") as ext:
        rows = wait_for(lambda: detections(core), lambda r: len(r) >= 3)
        # 8. rows arriving over time: the read now, its connect after a poll.
        t = int(time.time())
        ev.read(t, 8001, "/etc/shadow", exe="/usr/bin/curl", uid=1008, auid=1008)
        wait_for(
            lambda: [{}] * ext.service.status().tables["process_file_events"].rows,
            lambda r: len(r) == 8,
        )
        assert 8001 not in by_pid(detections(core))
        ev.connect(int(time.time()), 8001, "127.0.0.1", 9008, auid=1008)
        rows = wait_for(lambda: detections(core), lambda r: 8001 in by_pid(r))
        time.sleep(0.5)  # a few more polls: nothing else shows up
        rows = detections(core)
        health = {r["name"]: r for r in core.query("SELECT * FROM readegress_health")}
        pushed = detections(core, f"WHERE egress_time > {at(2, 2)}")
        calls = [c for c in core.generate_calls if c.table == "read_then_egress"]

    got = by_pid(rows)
    assert sorted(got) == [1001, 2002, 3001, 8001], rows
    assert len({r["id"] for r in rows}) == len(rows)
    visible = [c.name for c in load_specs()["read_then_egress"].columns if not c.hidden]
    assert all(list(r) == visible for r in rows)

    d = got[1001]
    assert (d["scope"], d["path"], d["sensitive_class"]) == (
        "process",
        "/root/.ssh/id_rsa",
        "ssh_private_key",
    )
    assert (d["remote_address"], d["remote_port"], d["remote_class"]) == (
        "127.0.0.1",
        "9001",
        "loopback",
    )
    assert d["reasons"].split(",") == ["quick_egress", "uncommon_port", "first_seen_destination"]
    assert (d["source"], d["egress_kind"], d["delay_seconds"]) == ("osquery", "connect", "1.0")
    assert int(d["score"]) >= 50
    # No socket to read (fixture rows, no such process): unknown, never 0.
    assert (d["bytes_sent"], d["socket_age_seconds"], d["keepalive"], d["start_time"]) == ("",) * 4

    assert (got[2002]["scope"], got[2002]["reader_pid"], got[2002]["path"]) == (
        "lineage",
        "2001",
        "/etc/shadow",
    )
    e = got[3001]
    assert e["scope"] == "process" and "exec_after_read" in e["reasons"].split(",")
    assert json.loads(e["executables"]) == ["/bin/bash", "/usr/bin/nc"]
    assert (e["executable"], e["cmdline"], e["reader_executable"]) == (
        "/usr/bin/nc", "nc 127.0.0.1 9003", "/bin/bash",
    )  # fmt: skip
    assert got[8001]["scope"] == "process"

    # The quiet ones were seen, and are counted rather than reported.
    assert "approved jobs 1," in health["detections"]["detail"]
    assert "low-weight only 1" in health["detections"]["detail"]
    assert "below threshold 1," in health["detections"]["detail"]  # the reused pid: host scope
    assert health["events:socket_events"]["status"] == "ok"
    assert {r["status"] for n, r in health.items() if n.startswith("dropped:")} == {"ok"}

    assert sorted(by_pid(pushed)) == [8001]
    assert any(c.constraints().get("egress_time") == [(4, str(at(2, 2)))] for c in calls), (
        "egress_time > N reaches the table"
    )


def test_the_cursor_survives_an_extension_restart(core: OsqueryCore, tmp_path: Path) -> None:
    ev = EventTables(core)
    cfg = write_config(tmp_path, settle=0.2, poll=0.2)
    state = tmp_path / "state"
    now = int(time.time())
    ev.read(now - 6, 100, "/etc/shadow", uid=1100, auid=1100)
    ev.connect(now - 5, 100, "127.0.0.1", 9100, auid=1100)
    with Extension(core, cfg, state):
        first = wait_for(lambda: detections(core), lambda r: len(r) == 1)
    assert (state / "state.json").exists()

    # While it is down: more rows, one of them in the second the cursor stopped at.
    ev.read(now - 5, 200, "/root/.ssh/id_rsa", uid=1200, auid=1200)
    ev.connect(now - 5, 200, "127.0.0.1", 9200, auid=1200)
    ev.process(now - 4, 201, "/bin/true", parent=200, syscall="fork")

    with Extension(core, cfg, state) as ext:
        rows = wait_for(lambda: detections(core), lambda r: len(r) >= 2)
        time.sleep(0.5)  # a few more polls: no duplicate appears
        rows = detections(core)
        tables = ext.service.status().tables
    assert sorted(int(r["pid"]) for r in rows) == [100, 200]
    assert {r["id"]: r for r in rows}[first[0]["id"]] == first[0]  # unchanged across the restart
    # Every row appended was read exactly once across both runs.
    assert tables["process_file_events"].rows == 2
    assert tables["socket_events"].rows == 2
    assert tables["process_events"].rows == 1
    assert sum(t.repeats for t in tables.values()) == 0


def _flags(core: OsqueryCore) -> dict[str, dict[str, str]]:
    rows = core.query(
        "SELECT name, status, value, fix FROM readegress_health WHERE name LIKE 'flag:%'"
    )
    return {r["name"][len("flag:") :]: r for r in rows}


def test_health_shows_failing_audit_flags_with_fixes_then_ok(
    core: OsqueryCore, tmp_path: Path
) -> None:
    # The test core's defaults are osquery's: audit off. No event tables either.
    osquery_conf = tmp_path / "osquery.conf"
    osquery_conf.write_text(json.dumps({"options": {}}))
    core.set_flag("config_path", str(osquery_conf))
    cfg = write_config(tmp_path, settle=0.2, poll=0.2)
    with Extension(core, cfg, tmp_path / "state") as ext:
        off = _flags(core)
        assert set(off) == {f.name for f in REQUIRED_FLAGS}
        assert off["disable_events"]["status"] == "ok" and off["disable_events"]["fix"] == ""
        for name in ("disable_audit", "audit_allow_config", "audit_allow_fim_events",
                     "audit_fim_show_accesses", "audit_allow_sockets"):  # fmt: skip
            assert off[name]["status"] == "fail", off[name]
            want = next(f for f in REQUIRED_FLAGS if f.name == name)
            assert f"--{name}={want.value}" in off[name]["fix"]
        # Flags the core does not list are unknown, not wrong.
        assert off["audit_allow_process_events"]["value"] == "unknown"
        assert off["audit_allow_process_events"]["status"] == "warn"

        wait_for(
            lambda: [{}] * ext.service.status().tables["socket_events"].query_errors,
            lambda r: len(r) > 0,
        )
        health = {r["name"]: r for r in core.query("SELECT * FROM readegress_health")}
        assert health["events:socket_events"]["status"] == "fail"
        assert "no such table" in health["events:socket_events"]["detail"]
        assert health["file_paths"]["status"] == "warn"  # osquery watches nothing
        if os.path.exists("/etc/shadow"):
            assert "/etc/shadow" in health["file_paths"]["detail"]

        for f in REQUIRED_FLAGS:
            core.set_flag(f.name, f.value, "bool")
        on = _flags(core)
        assert {r["status"] for r in on.values()} == {"ok"}
        assert {r["fix"] for r in on.values()} == {""}

        # osquery watching what `readegress file-paths` prints covers the catalogue.
        assert ext.env.config is not None
        osquery_conf.write_text(json.dumps(catalogue_file_paths(ext.env.config.catalogue)))
        [fp] = core.query("SELECT status, value FROM readegress_health WHERE name = 'file_paths'")
        assert fp["status"] == "ok", fp

        # Event tables appear (audit on): their rows arrive and the check turns ok.
        ev = EventTables(core)
        t = int(time.time())
        ev.process(t, 10, "/bin/true", parent=1, syscall="execve")
        ev.connect(t, 10, "127.0.0.1", 9010)
        ev.read(t, 10, "/etc/passwd")
        rows = wait_for(
            lambda: core.query(
                "SELECT name, status FROM readegress_health WHERE name LIKE 'events:%'"
            ),
            lambda r: {x["status"] for x in r} == {"ok"},
        )
        assert len(rows) == 3


def test_real_cli_extension_detects_and_saves_its_state(core: OsqueryCore, tmp_path: Path) -> None:
    ev = EventTables(core)
    cfg = write_config(tmp_path, settle=0.2, poll=0.2)
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o644 and os.stat(cfg).st_uid == 0
    state = tmp_path / "state"
    now = int(time.time())
    ev.read(now - 2, 4242, "/home/bob/.aws/credentials", exe="/usr/bin/curl", uid=1000, auid=1000)
    ev.connect(now - 1, 4242, "127.0.0.1", 9042, exe="/usr/bin/curl", auid=1000)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "readegress", "extension",
            "--socket", core.socket_path, "--config", cfg, "--state-dir", str(state),
            "--timeout", "5", "--interval", "0.5", "--some-future-flag", "x",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        core.wait_for_extension("readegress", 15)
        rows = wait_for(lambda: detections(core), lambda r: len(r) == 1, timeout=15)
        assert (rows[0]["pid"], rows[0]["sensitive_class"]) == ("4242", "cloud_credentials")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "state.json").stat().st_mode) == 0o600
    saved = json.loads((state / "state.json").read_text())
    assert [f["detection"]["id"] for f in saved["finalized"]] == [rows[0]["id"]]

    # readegress query, without osquery, shows what the extension saved.
    out = subprocess.run(
        [
            sys.executable, "-m", "readegress", "query", "--json", "--config", cfg,
            "--state-dir", str(state),
            "SELECT r.id, h.value FROM read_then_egress r, readegress_health h"
            " WHERE h.name = 'events:socket_events'",
        ],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"id": rows[0]["id"], "value": "unavailable"}
    ]


def test_an_unsafe_config_serves_the_tables_and_health_says_why(
    core: OsqueryCore, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path)
    os.chmod(cfg, 0o666)  # any user could approve their own exfiltration
    env = open_environment(cfg, state_dir=str(tmp_path / "state"), background=True)
    calls = TableCalls(load_tables(env), timeout=10)
    rt = ExtensionRuntime(core.socket_path, calls, timeout=2.0, interval=0.2,
                          on_registered=env.attach_manager)  # fmt: skip
    rt.start()
    try:
        assert rt.wait_registered(5.0)
        assert env.service is None and detections(core) == []
        [row] = core.query(
            "SELECT status, detail, fix FROM readegress_health WHERE name = 'config'"
        )
    finally:
        rt.stop()
        rt.join(5.0)
        calls.close()
        env.close()
    assert row["status"] == "fail" and "writable by group or others" in row["detail"]
    assert "root-owned" in row["fix"]
