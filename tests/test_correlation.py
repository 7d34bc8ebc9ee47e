"""The pure correlation core, with plain events: scopes, windows, identity, catalogue, approvals."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from readegress.detect.config import Config, load_config, parse_config
from readegress.detect.core import Correlator, Detection, enrich, is_encryptor
from readegress.detect.events import Egress, Event, Exec, Proc, ProcessStart, SensitiveRead
from readegress.sources.osquery_rows import (
    FILE_EVENTS,
    PROCESS_EVENTS,
    SOCKET_EVENTS,
    event_from_row,
    recognise,
)

BASE = """
window_seconds = 120
threshold = 50
egress_classes = ["public"]

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
name = "aws"
level = "high"
paths = ["~/.aws/credentials"]

[[class]]
name = "sudoers"
level = "medium"
paths = ["/etc/sudoers"]

[[class]]
name = "account_lists"
level = "low"
paths = ["/etc/passwd"]
"""


def config(extra: str = "") -> Config:
    return parse_config(BASE + extra, "test.toml")


def read(t: float, pid: int, path: str = "/etc/shadow", host: str = "h1", **kw: Any) -> Event:
    proc = Proc(
        pid=pid,
        ppid=kw.pop("ppid", 1000),
        executable=kw.pop("exe", "/usr/bin/cat"),
        uid=kw.pop("uid", 0),
        auid=kw.pop("auid", None),
        start=kw.pop("start", None),
        pgid=kw.pop("pgid", None),
        sid=kw.pop("sid", None),
    )
    return SensitiveRead(host, t, proc, path, "test", **kw)


def connect(
    t: float, pid: int, addr: str = "8.8.8.8", port: int = 4444, host: str = "h1", **kw: Any
) -> Event:
    proc = Proc(
        pid=pid,
        ppid=kw.pop("ppid", None),
        executable=kw.pop("exe", "/usr/bin/curl"),
        uid=kw.pop("uid", 0),
        auid=kw.pop("auid", None),
        start=kw.pop("start", None),
        pgid=kw.pop("pgid", None),
        sid=kw.pop("sid", None),
    )
    return Egress(host, t, proc, addr, port, "test", **kw)


def fork(
    t: float, child: int, parent: int, exe: str = "/bin/bash", host: str = "h1", uid: int = 0
) -> Event:
    return ProcessStart(host, t, Proc(pid=child, ppid=parent, executable=exe, uid=uid), "test")


def execve(
    t: float, pid: int, exe: str, ppid: Optional[int] = None, host: str = "h1", uid: int = 0
) -> Event:
    return Exec(host, t, Proc(pid=pid, ppid=ppid, executable=exe, uid=uid, cmdline=exe), "test")


def run(events: list[Event], cfg: Optional[Config] = None) -> tuple[list[Detection], Correlator]:
    c = Correlator(cfg or config())
    return c.feed_many(events), c


def test_process_scope() -> None:
    dets, _ = run([read(100, 10), connect(105, 10)])
    assert len(dets) == 1
    d = dets[0]
    assert (d.scope, d.pid, d.path, d.sensitive_class) == ("process", 10, "/etc/shadow", "shadow")
    assert d.score >= 50 and "quick_egress" in d.reasons and "uncommon_port" in d.reasons
    assert d.delay == 5


@pytest.mark.parametrize(("delay", "chained"), [(0, True), (120, True), (120.001, False)])
def test_window_edges(delay: float, chained: bool) -> None:
    dets, _ = run([read(100, 10), connect(100 + delay, 10)])
    assert bool(dets) is chained


def test_connect_before_read_is_not_a_chain() -> None:
    dets, _ = run([connect(99, 10), read(100, 10)])
    assert dets == []
    # And a read fed late (after the egress it follows in time) does not chain either.
    c = Correlator(config())
    assert c.feed(connect(100, 10)) == []
    c.feed(read(101, 10))
    assert c.feed(connect(99.5, 11, addr="1.1.1.1")) == []


def test_lineage_parent_reads_child_sends() -> None:
    dets, _ = run([fork(90, 21, 20), read(100, 20, ppid=5), connect(101, 21)])
    assert [d.scope for d in dets] == ["lineage"]


def test_lineage_child_reads_parent_sends() -> None:
    dets, _ = run([fork(90, 21, 20), read(100, 21, ppid=20), connect(101, 20, ppid=5)])
    assert [d.scope for d in dets] == ["lineage"]


def test_lineage_pipeline_siblings_with_encoder() -> None:
    # sh -c 'tar czf - ~/.aws | openssl enc | curl ...': three children of one shell.
    events = [
        fork(90, 31, 30),
        execve(90, 31, "/usr/bin/tar"),
        fork(90, 32, 30),
        Exec(
            "h1",
            90,
            Proc(pid=32, executable="/usr/bin/openssl", cmdline="openssl enc -aes-256-cbc -k x"),
            "test",
        ),
        fork(90, 33, 30),
        execve(90, 33, "/usr/bin/curl"),
        read(100, 31, "/home/alice/.aws/credentials", ppid=30, exe="/usr/bin/tar"),
        connect(101, 33, port=443),
    ]
    dets, _ = run(events)
    assert len(dets) == 1
    d = dets[0]
    # osquery rows: siblings exec'd within a second are one pipeline.
    assert d.scope == "pipeline" and d.reader_executable == "/usr/bin/tar"
    assert {"encoder_in_chain", "encryptor_in_chain"} <= set(d.reasons)
    assert "pipe_shared" not in d.reasons  # no descriptors in osquery rows


def test_session_process_group() -> None:
    dets, _ = run(
        [read(100, 41, ppid=2000, pgid=40, uid=5), connect(101, 42, pgid=40, ppid=3000, uid=6)]
    )
    assert [d.scope for d in dets] == ["session"]


def test_user_scope_by_auid_then_uid() -> None:
    dets, _ = run([read(100, 50, auid=1000, uid=0, ppid=7), connect(101, 60, auid=1000, uid=33)])
    assert [d.scope for d in dets] == ["user"]
    dets, _ = run([read(100, 50, uid=1000, ppid=7), connect(101, 60, uid=1000)])
    assert [d.scope for d in dets] == ["user"]


def test_host_scope_scores_below_threshold_without_more_evidence() -> None:
    dets, _ = run([read(100, 50, uid=1, ppid=7), connect(101, 60, uid=2)])
    assert [d.scope for d in dets] == ["host"]
    assert dets[0].score < 50


def test_exec_keeps_the_chain() -> None:
    # bash opens the key through '<' and execs nc: same process, new image.
    events = [
        execve(90, 70, "/bin/bash", ppid=5),
        read(100, 70, "/root/.ssh/id_rsa", exe="/bin/bash", ppid=5),
        execve(100.5, 70, "/usr/bin/nc", ppid=5),
        connect(101, 70, exe="/usr/bin/nc"),
    ]
    dets, _ = run(events)
    assert len(dets) == 1
    d = dets[0]
    assert d.scope == "process"
    assert d.executables == ("/bin/bash", "/usr/bin/nc")
    assert d.executable == "/usr/bin/nc" and d.reader_executable == "/bin/bash"
    assert "exec_after_read" in d.reasons


@pytest.mark.parametrize(
    "reuse",
    [
        [fork(102, 80, 999, exe="/usr/bin/python3", uid=1)],  # fork evidence
        [execve(102, 80, "/usr/bin/python3", ppid=999, uid=1)],  # another parent
    ],
)
def test_pid_reuse_breaks_the_chain(reuse: list[Event]) -> None:
    events = [read(100, 80, ppid=5, uid=0), *reuse, connect(103, 80, uid=1, exe="/usr/bin/python3")]
    dets, c = run(events)
    assert all(d.scope not in ("process", "lineage") for d in dets), dets
    assert c.stats["pid_reuse"] == 1


def test_pid_reuse_by_start_time() -> None:
    dets, _ = run([read(100, 80, start=5000, uid=1), connect(101, 80, start=7000, uid=2)])
    assert [d.scope for d in dets] == ["host"]
    dets, _ = run([read(100, 80, start=5000), connect(101, 80, start=5000)])
    assert [d.scope for d in dets] == ["process"]


def test_same_pid_on_two_hosts_never_joins() -> None:
    dets, _ = run([read(100, 10, host="a"), connect(101, 10, host="b")])
    assert dets == []


@pytest.mark.parametrize(
    ("address", "detected"),
    [
        ("::ffff:8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("64:ff9b::808:808", True),
        ("::ffff:10.0.0.1", False),
        ("100.64.1.1", False),
        ("169.254.169.254", False),
        ("fd00::1", False),
        ("fe80::1", False),
        ("10.1.2.3", False),
        ("127.0.0.1", False),
        ("::1", False),
    ],
)
def test_destination_classes(address: str, detected: bool) -> None:
    dets, _ = run([read(100, 10), connect(101, 10, addr=address)])
    assert bool(dets) is detected


def test_loopback_counts_when_configured() -> None:
    cfg = config().__class__(
        **{
            **config().__dict__,
            "egress_classes": frozenset(
                {
                    *config().egress_classes,
                    *parse_config(BASE.replace('["public"]', '["loopback"]')).egress_classes,
                }
            ),
        }
    )
    dets, _ = run([read(100, 10), connect(101, 10, addr="127.0.0.1")], cfg)
    assert len(dets) == 1 and dets[0].remote_class == "loopback"


@pytest.mark.parametrize(
    ("path", "cls"),
    [
        ("/root/.ssh/id_rsa", "ssh_private_key"),
        ("/home/alice/.ssh/id_ed25519", "ssh_private_key"),
        ("/home/alice/.ssh/id_rsa.pub", None),
        ("/home/a/b/.ssh/id_rsa", None),
        ("/home/bob/.aws/credentials", "aws"),
        ("/root/.aws/credentials", "aws"),
        ("/srv/.aws/credentials", None),
        ("/etc/shadow", "shadow"),
        ("/etc/shadow.bak", None),
    ],
)
def test_catalogue_globbing_over_home_directories(path: str, cls: Optional[str]) -> None:
    m = config().catalogue.match(path)
    assert (m.name if m else None) == cls


APPROVED = """
[[approved]]
executable = "/usr/bin/ssh"
class = "ssh_private_key"
owner = "platform"

[[approved]]
executable = "backup-agent"
class = "aws"
destination = "8.8.4.0/24"
port = 443
owner = "backup team"
expires = 2030-01-01
"""


def test_approved_jobs_are_pairs() -> None:
    cfg = config(APPROVED)
    key = "/home/alice/.ssh/id_rsa"
    ssh = run([read(100, 10, key, exe="/usr/bin/ssh"), connect(101, 10, exe="/usr/bin/ssh")], cfg)
    assert ssh[0] == [] and ssh[1].stats["approved"] == 1
    # ssh is approved for its key, not for shadow.
    dets, _ = run([read(100, 10, exe="/usr/bin/ssh"), connect(101, 10, exe="/usr/bin/ssh")], cfg)
    assert len(dets) == 1
    # scp reading the key is not ssh.
    dets, _ = run(
        [read(100, 10, key, exe="/usr/bin/scp"), connect(101, 10, exe="/usr/bin/scp")], cfg
    )
    assert len(dets) == 1


@pytest.mark.parametrize(
    ("address", "port", "when", "approved"),
    [
        ("8.8.4.4", 443, 101, True),
        ("::ffff:8.8.4.4", 443, 101, True),
        ("8.8.8.8", 443, 101, False),  # other destination
        ("8.8.4.4", 8443, 101, False),  # other port
        ("8.8.4.4", 443, 1_900_000_000, False),  # approval expired (2030-01-01)
    ],
)
def test_approved_destination_port_and_expiry(
    address: str, port: int, when: float, approved: bool
) -> None:
    cfg = config(APPROVED)
    exe = "/opt/backup/bin/backup-agent"
    dets, _ = run(
        [
            read(when - 1, 10, "/root/.aws/credentials", exe=exe),
            connect(when, 10, addr=address, port=port, exe=exe),
        ],
        cfg,
    )
    assert (dets == []) is approved


def test_low_classes_never_alert_alone() -> None:
    dets, c = run([read(100, 10, "/etc/passwd"), connect(101, 10)])
    assert dets == [] and c.stats["low_only"] == 1
    # With a high read in the chain the low one is context.
    dets, _ = run([read(99, 10, "/etc/passwd"), read(100, 10), connect(101, 10)])
    assert dets[0].path == "/etc/shadow" and "/etc/passwd" in dets[0].other_paths


def test_reads_outside_catalogue_are_ignored() -> None:
    dets, c = run([read(100, 10, "/etc/hostname"), connect(101, 10)])
    assert dets == [] and c.stats["sensitive_reads"] == 0


def test_one_detection_per_chain_and_destination() -> None:
    dets, c = run(
        [read(100, 10), connect(101, 10), connect(102, 10), connect(103, 10, addr="1.1.1.1")]
    )
    assert [d.remote_address for d in dets] == ["8.8.8.8", "1.1.1.1"]
    assert c.stats["duplicates"] == 1
    assert "first_seen_destination" in dets[1].reasons


def test_the_senders_own_read_beats_a_siblings() -> None:
    # Two members of one pipeline (forked together): the sender's own read of a
    # medium class is the evidence, the sibling's high-class read goes to other_paths.
    pipeline = [fork(90, 10, 3), fork(90.2, 11, 3)]
    dets, _ = run(
        [
            *pipeline,
            read(100, 11, uid=0, ppid=3),
            read(100.5, 10, "/etc/sudoers", ppid=3),
            connect(101, 10),
        ]
    )
    assert dets[0].path == "/etc/sudoers" and dets[0].scope == "process"
    assert dets[0].reader_pid == 10 and "/etc/shadow" in dets[0].other_paths
    assert "multiple_sensitive_files" in dets[0].reasons
    assert [(f.path, f.scope) for f in dets[0].files_read] == [
        ("/etc/sudoers", "process"),
        ("/etc/shadow", "pipeline"),
    ]


def test_children_of_a_long_lived_parent_are_not_one_pipeline() -> None:
    # cron (pid 3) started job 11 a minute before job 10: siblings run one after
    # the other are a session, which a quick connect alone does not lift.
    jobs = [fork(30, 11, 3), fork(90, 10, 3)]
    dets, _ = run([*jobs, read(100, 11, ppid=3, uid=1), connect(101, 10, uid=2)])
    assert [d.scope for d in dets] == ["session"] and dets[0].score < 50
    # By start ticks (native sources), 60 s or 1 s apart: without a pipe, a session.
    for start in (7000, 1100):
        dets, _ = run(
            [read(100, 11, ppid=3, start=1000, uid=1), connect(101, 10, ppid=3, start=start, uid=2)]
        )
        assert [d.scope for d in dets] == ["session"] and dets[0].score < 50


def test_approval_needs_the_approved_image_to_read_and_to_send() -> None:
    # sshd's child execs bash, which execs curl: curl reads shadow and sends it.
    cfg = config("""
[[approved]]
executable = "/usr/sbin/sshd"
class = "shadow"
owner = "default catalogue"
""")
    events = [
        fork(90, 40, 1, exe="/usr/sbin/sshd"),
        execve(91, 40, "/bin/bash", ppid=1),
        execve(92, 40, "/usr/bin/curl", ppid=1),
        read(100, 40, exe="/usr/bin/curl", ppid=1),
        connect(101, 40, exe="/usr/bin/curl"),
    ]
    dets, c = run(events, cfg)
    assert len(dets) == 1 and c.stats["approved"] == 0
    # sshd itself reading shadow (PAM) and connecting stays approved.
    dets, c = run(
        [read(100, 41, exe="/usr/sbin/sshd"), connect(101, 41, exe="/usr/sbin/sshd")], cfg
    )
    assert dets == [] and c.stats["approved"] == 1


def test_enrich_adds_reasons_and_score() -> None:
    dets, _ = run([read(100, 10, size=1200), connect(101, 10)])
    d = enrich(dets[0], bytes_sent=5 << 20, socket_age=900, keepalive=True)
    assert {"bulk_transfer", "bytes_ge_file_size", "long_lived_socket", "keepalive"} <= set(
        d.reasons
    )
    assert d.score == dets[0].score + 15 + 25 + 10 + 5
    assert d.bytes_sent == 5 << 20


def test_transfer_on_existing_socket() -> None:
    dets, _ = run([read(100, 10, size=100), connect(101, 10, kind="transfer", bytes_sent=2 << 20)])
    assert {"transfer_on_existing_socket", "bulk_transfer", "bytes_ge_file_size"} <= set(
        dets[0].reasons
    )


def test_state_roundtrip_neither_loses_nor_repeats() -> None:
    c = Correlator(config())
    assert c.feed(read(100, 10)) == []
    assert len(c.feed(connect(101, 10))) == 1
    state = json.loads(json.dumps(c.to_state()))
    c2 = Correlator(config())
    c2.load_state(state)
    assert c2.feed(connect(102, 10)) == []  # the same detection is not repeated
    assert len(c2.feed(connect(103, 10, addr="1.1.1.1"))) == 1  # the read was not lost


def test_memory_is_bounded() -> None:
    cfg = config().__class__(**{**config().__dict__, "max_reads": 100})
    c = Correlator(cfg)
    for i in range(1000):
        c.feed(read(100 + i * 0.01, 10_000 + i))
    assert c.size()["reads"] == 100 and c.stats["evicted_reads"] == 900
    c.advance(10_000)
    assert c.size()["reads"] == 0


def test_detection_ids_are_stable() -> None:
    a, _ = run([read(100, 10), connect(101, 10)])
    b, _ = run([read(100, 10), connect(101, 10)])
    assert a[0].id == b[0].id
    c, _ = run([read(100, 10), connect(101, 10, addr="1.1.1.1")])
    assert c[0].id != a[0].id


# ----- osquery rows → events (pure) --------------------------------------
SOCK = {
    "action": "connect",
    "pid": "10",
    "path": "/usr/bin/curl",
    "fd": "3",
    "auid": "1000",
    "family": "2",
    "protocol": "0",
    "local_address": "",
    "remote_address": "8.8.8.8",
    "local_port": "0",
    "remote_port": "443",
    "socket": "",
    "time": "101",
    "uptime": "5",
    "eid": "0000000001",
    "success": "1",
    "status": "succeeded",
}


@pytest.mark.parametrize(
    ("changes", "egress"),
    [
        ({}, True),
        ({"status": "in_progress"}, True),
        ({"status": "failed", "success": "0"}, False),
        ({"action": "accept"}, False),
        ({"action": "bind"}, False),
        ({"family": "1", "remote_address": "/run/x.sock"}, False),
    ],
)
def test_socket_rows_failed_connects_and_accepts_ignored(
    changes: dict[str, str], egress: bool
) -> None:
    row = {**SOCK, **changes}
    assert recognise(row) == SOCKET_EVENTS
    e = event_from_row(SOCKET_EVENTS, row, "h1")
    assert isinstance(e, Egress) is egress


def test_process_rows_fork_child_is_pid() -> None:
    row = {
        "pid": "21",
        "parent": "20",
        "path": "/bin/bash",
        "cmdline": "",
        "cwd": "/",
        "auid": "1000",
        "uid": "1000",
        "time": "90",
        "syscall": "fork",
        "eid": "1",
    }
    assert recognise(row) == PROCESS_EVENTS
    e = event_from_row(PROCESS_EVENTS, row, "h1")
    assert isinstance(e, ProcessStart) and e.proc.pid == 21 and e.proc.ppid == 20
    e = event_from_row(PROCESS_EVENTS, {**row, "syscall": "execve", "cmdline": "nc x 1"}, "h1")
    assert isinstance(e, Exec) and e.proc.cmdline == "nc x 1"
    assert event_from_row(PROCESS_EVENTS, {**row, "syscall": "kill"}, "h1") is None


def test_file_rows_only_reads() -> None:
    row = {
        "operation": "open",
        "pid": "10",
        "ppid": "1",
        "time": "100",
        "executable": "/usr/bin/cat",
        "partial": "0",
        "cwd": "/",
        "path": "/etc/shadow",
        "dest_path": "",
        "uid": "0",
        "gid": "0",
        "auid": "1000",
        "eid": "1",
    }
    assert recognise(row) == FILE_EVENTS
    assert isinstance(event_from_row(FILE_EVENTS, row, "h"), SensitiveRead)
    assert event_from_row(FILE_EVENTS, {**row, "operation": "write"}, "h") is None


def test_numerics_rows() -> None:
    row = {**SOCK, "pid": 10, "time": 101, "remote_port": 443, "family": 2}
    e = event_from_row(SOCKET_EVENTS, row, "h1")
    assert isinstance(e, Egress) and e.time == 101.0 and e.remote_port == 443


def test_weak_reasons_cannot_lift_unrelated_processes_over_the_threshold() -> None:
    # Two high reads by unrelated processes, then a third process connects quickly to a
    # new address on an uncommon port: every weak reason fires, and it is still host scope.
    dets, _ = run(
        [
            read(100, 10, uid=1, ppid=7),
            read(100, 20, "/root/.aws/credentials", uid=2, ppid=8),
            connect(105, 30, uid=3, port=4444),
        ]
    )
    assert [d.scope for d in dets] == ["host"]
    assert {
        "quick_egress",
        "uncommon_port",
        "first_seen_destination",
        "multiple_sensitive_files",
    } <= set(dets[0].reasons)
    assert dets[0].score < 50


def test_same_user_chain_alerts_with_bulk_evidence() -> None:
    dets, _ = run([read(100, 50, uid=1000, ppid=7, size=3000), connect(101, 60, uid=1000)])
    assert dets[0].scope == "user" and dets[0].score < 50
    d = enrich(dets[0], bytes_sent=2 << 20, socket_age=700, keepalive=True)
    assert d.score >= 50


# ------------------------------------------------------------ evidence-based scopes


def nproc(
    pid: int, ppid: int, start: int, exe: str, stdin: Optional[int], stdout: Optional[int]
) -> Proc:
    return Proc(
        pid=pid, ppid=ppid, executable=exe, start=start, uid=0, stdin_pipe=stdin, stdout_pipe=stdout
    )


def test_native_pipes_prove_a_pipeline_through_a_middle_member() -> None:
    # cat key | base64 | curl: cat's stdout P1 is base64's stdin, base64's stdout P2 curl's.
    cat = nproc(31, 30, 1000, "/usr/bin/cat", None, 501)
    b64 = nproc(32, 30, 1000, "/usr/bin/base64", 501, 502)
    curl = nproc(33, 30, 1000, "/usr/bin/curl", 502, None)
    events: list[Event] = [
        Exec("h1", 99, b64, "test"),
        SensitiveRead("h1", 100, cat, "/etc/shadow", "test", size=1000),
        Egress("h1", 101, curl, "8.8.8.8", 443, "test"),
    ]
    dets, _ = run(events)
    d = dets[0]
    assert (d.scope, d.reader_pid) == ("pipeline", 31)
    assert {"pipe_shared", "reader_copies_file", "encoder_in_chain"} <= set(d.reasons)
    # Started 10 s apart and no pipe between them: steps of a script, a session.
    late = nproc(33, 30, 2000, "/usr/bin/curl", None, None)
    dets, _ = run([events[1], Egress("h1", 101, late, "8.8.8.8", 443, "test")])
    assert dets[0].scope == "session" and dets[0].score < 50


def test_native_pipeline_whose_middle_exited_unseen_is_inferred_not_proven() -> None:
    cat = nproc(31, 30, 1000, "/usr/bin/cat", None, 501)
    curl = nproc(33, 30, 1001, "/usr/bin/curl", 502, None)
    dets, _ = run(
        [
            SensitiveRead("h1", 100, cat, "/etc/shadow", "test"),
            Egress("h1", 101, curl, "8.8.8.8", 4444, "test"),
        ]
    )
    assert dets[0].scope == "pipeline" and "pipe_shared" not in dets[0].reasons
    # Both reading one inherited stdin pipe (a CI runner's) is no pipeline.
    cat = nproc(31, 30, 1000, "/usr/bin/cat", 700, 501)
    curl = nproc(33, 30, 1001, "/usr/bin/curl", 700, None)
    dets, _ = run(
        [
            SensitiveRead("h1", 100, cat, "/etc/shadow", "test"),
            Egress("h1", 101, curl, "8.8.8.8", 4444, "test"),
        ]
    )
    assert dets[0].scope == "session"


def test_osquery_exec_rows_within_one_second_are_a_pipeline() -> None:
    for gap, scope in ((1, "pipeline"), (2, "session")):
        dets, _ = run(
            [
                execve(100, 31, "/usr/bin/tar", ppid=30),
                execve(100 + gap, 33, "/usr/bin/curl", ppid=30),
                read(100 + gap, 31, ppid=30, exe="/usr/bin/tar"),
                connect(100 + gap, 33, ppid=30),
            ]
        )
        assert [d.scope for d in dets] == [scope], gap


def test_a_script_steps_small_request_after_a_siblings_key_read_stays_quiet() -> None:
    kg = nproc(31, 30, 1000, "/usr/bin/ssh-keygen", None, None)
    curl = nproc(33, 30, 1002, "/usr/bin/curl", None, None)
    dets, _ = run(
        [
            SensitiveRead("h1", 100, kg, "/root/.ssh/id_rsa", "test", size=200_000),
            Egress("h1", 100.5, curl, "8.8.8.8", 443, "test"),
        ]
    )
    small = enrich(dets[0], bytes_sent=300)
    assert small.scope == "session" and "few_bytes_sent" in small.reasons and small.score < 30
    # The same step uploading the whole key is evidence.
    big = enrich(dets[0], bytes_sent=200_500)
    assert "bytes_ge_file_size" in big.reasons and "few_bytes_sent" not in big.reasons
    # Many small uploads of one chain add up (split-and-send).
    split = enrich(dets[0], bytes_sent=300, chain_bytes_sent=200_000)
    assert "bytes_ge_file_size" in split.reasons


def test_process_scope_is_never_penalised_for_few_bytes() -> None:
    dets, _ = run([read(100, 10, size=5000), connect(101, 10)])
    d = enrich(dets[0], bytes_sent=100)
    assert "few_bytes_sent" not in d.reasons and d.score == dets[0].score


def test_compressed_chains_need_a_quarter_of_the_size() -> None:
    dets, _ = run(
        [
            execve(100, 31, "/usr/bin/gzip", ppid=30),
            execve(100, 33, "/usr/bin/curl", ppid=30),
            read(100, 31, ppid=30, exe="/usr/bin/gzip", size=4000),
            connect(100, 33, ppid=30),
        ]
    )
    assert dets[0].compressed
    assert "bytes_ge_file_size" in enrich(dets[0], bytes_sent=1000).reasons
    assert "few_bytes_sent" in enrich(dets[0], bytes_sent=999).reasons


@pytest.mark.parametrize(
    ("image", "cmdline", "encrypts"),
    [
        ("/usr/bin/openssl", "openssl enc -aes-256-cbc -pass pass:x", True),
        ("/usr/bin/openssl", "openssl aes-128-cbc -k x", True),
        ("/usr/bin/openssl", "openssl s_client -connect h:443", False),
        ("/usr/bin/openssl", None, True),
        ("/usr/bin/gpg", "gpg -c --batch", True),
        ("/usr/bin/gpg", "gpg --verify sig", False),
        ("/usr/bin/zip", "zip -e out.zip key", True),
        ("/usr/bin/zip", "zip -P secret out.zip key", True),
        ("/usr/bin/zip", "zip out.zip key", False),
        ("/usr/bin/7z", "7z a -psecret out.7z key", True),
        ("/usr/bin/age", "age -r age1xyz", True),
        ("/usr/bin/base64", "base64", False),
    ],
)
def test_encryptors_by_image_and_options(
    image: str, cmdline: Optional[str], encrypts: bool
) -> None:
    assert is_encryptor(image, cmdline) is encrypts


def test_ports_tls_ssh_and_raw_tcp() -> None:
    reasons = {}
    for port in (443, 22, 4444, 80):
        dets, _ = run([read(100, 10), connect(101, 10, port=port)])
        reasons[port] = set(dets[0].reasons)
    assert "encrypted_port" in reasons[443] and "encrypted_port" in reasons[22]
    assert "uncommon_port" in reasons[4444] and "uncommon_port" not in reasons[443]
    assert not {"uncommon_port", "encrypted_port"} & reasons[80]
    dets, _ = run([read(100, 10), connect(101, 10, port=5353, protocol="udp")])
    assert "uncommon_port" not in dets[0].reasons  # raw TCP only


def test_triage_evidence_and_priority() -> None:
    cfg = config("""
[[asset]]
criticality = "critical"
hosts = ["db-*"]

[[approved]]
executable = "/usr/bin/ssh"
class = "ssh_private_key"
owner = "ops"
""")
    dets, _ = run(
        [
            read(99, 10, "/etc/passwd", host="db-1", size=900),
            read(100, 10, "/root/.ssh/id_ed25519", host="db-1", size=400, exe="/usr/bin/curl"),
            connect(101, 10, host="db-1", port=443),
        ],
        cfg,
    )
    d = dets[0]
    assert d.priority == round(d.score * 2.0 * 1.5)
    assert [(f.path, f.sensitive_class, f.size, f.scope) for f in d.files_read] == [
        ("/root/.ssh/id_ed25519", "ssh_private_key", 400, "process"),
        ("/etc/passwd", "account_lists", 900, "process"),
    ]
    assert d.destination_seen_before is False
    near = json.loads(d.near_approval)
    assert near["owner"] == "ops" and any(
        "does not match /usr/bin/ssh" in w for w in near["why_not"]
    )
    again = Detection.from_json(json.loads(json.dumps(d.to_json())))
    assert again == d


_VALID = {
    "id": "x", "host": "h", "read_time": 1.0, "egress_time": 2.0, "pid": 1, "start": None,
    "executable": "/bin/x", "executables": ["/bin/x"], "cmdline": None, "uid": 0, "auid": None,
    "reader_pid": 1, "reader_executable": "/bin/x", "path": "/etc/shadow",
    "sensitive_class": "shadow", "class_weight": 80, "remote_address": "1.1.1.1",
    "remote_port": 443, "remote_class": "public", "protocol": "tcp", "scope": "process",
    "score": 90, "reasons": [], "other_paths": [], "egress_kind": "connect", "bytes_sent": None,
    "file_size": None, "read_source": "t", "egress_source": "t",
}  # fmt: skip


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["files_read", "bytes_by_destination", "reasons", "score", "id", "pid"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=6,
        ),
        max_size=3,
    )
)
def test_detection_records_from_state_never_raise_anything_but_value_error(
    changes: dict[str, Any],
) -> None:
    with contextlib.suppress(ValueError):
        Detection.from_json({**_VALID, **changes})


def test_socket_rows_keep_a_real_ip_protocol_and_zero_is_unknown() -> None:
    def protocol(value: str) -> str:
        e = event_from_row(SOCKET_EVENTS, {**SOCK, "time": "101", "protocol": value}, "h1")
        assert isinstance(e, Egress)
        return e.protocol

    assert (protocol("0"), protocol("6"), protocol("17"), protocol("")) == ("", "tcp", "udp", "")


def test_a_native_read_with_its_identity_cut_short_is_no_osquery_pipeline() -> None:
    # Under load fanotify may answer before the reader's ticks are read; the same
    # process's egress gives them later: it is native, not an osquery row. Its
    # cousin (child of a sibling shell seen only without ticks) is no pipeline.
    partial = Proc(pid=31, ppid=30, executable="/usr/bin/dash", uid=0)
    shell = Proc(pid=32, ppid=30, executable="/usr/bin/dash", uid=0)
    sender = Proc(pid=33, ppid=32, executable="/usr/bin/curl", start=1010, uid=0)
    dets, _ = run(
        [
            Exec("h1", 100, partial, "procfs"),
            SensitiveRead("h1", 100, partial, "/etc/shadow", "fanotify"),
            Egress("h1", 100.2, replace(partial, start=1000), "8.8.8.8", 4444, "sock_diag"),
            Exec("h1", 100.3, shell, "procfs"),
            Egress("h1", 100.5, sender, "8.8.8.8", 4445, "sock_diag"),
        ]
    )
    assert [(d.pid, d.scope) for d in dets] == [(31, "process"), (33, "user")]


# -- min_score: the candidates below it are counted, never built ---------------------------

_IMAGES = ["/usr/bin/bash", "/usr/bin/curl", "/usr/bin/tar", "/usr/bin/base64", "/usr/bin/gpg",
           "/usr/sbin/sshd", "/usr/bin/cat"]  # fmt: skip
_PATHS = ["/etc/shadow", "/root/.ssh/id_rsa", "/etc/passwd", "/etc/hosts", "/root/.aws/credentials",
          "/home/u1/.ssh/id_ed25519"]  # fmt: skip
_STEP = st.tuples(
    st.sampled_from(["read", "read", "mass", "exec", "fork", "conn", "conn", "transfer"]),
    st.integers(1, 6),  # pid
    st.integers(0, 3),  # seconds after the previous event
    st.integers(0, 6),  # image, path, destination or parent, by kind
)


def _events(steps: list[tuple[str, int, int, int]]) -> list[Event]:
    out: list[Event] = []
    t = 1_764_300_000.0
    for kind, pid, dt, k in steps:
        t += dt
        proc = Proc(pid=pid, ppid=1 + k % 3, executable=_IMAGES[k], uid=1000, auid=1000)
        if kind == "read":
            size = [None, 800, 3000, 50_000][k % 4]
            out.append(SensitiveRead("h", t, proc, _PATHS[k % len(_PATHS)], "t", size=size))
        elif kind == "mass":  # over MASS_READ_FILES alerting files in a second
            out += [SensitiveRead("h", t, proc, f"/home/m{i}/.ssh/id_rsa", "t") for i in range(30)]
        elif kind == "exec":
            out.append(Exec("h", t, replace(proc, cmdline=f"{_IMAGES[k]} -c x"), "t"))
        elif kind == "fork":
            out.append(ProcessStart("h", t, replace(proc, pid=pid + 10, ppid=pid), "t"))
        else:
            addr = ["8.8.8.8", "45.33.32.156", "10.0.0.1", "1.1.1.1"][k % 4]
            port = [443, 22, 4444, 80, 8443, 53, 25][k]
            # bytes below, above and far above the files' sizes (and BULK_BYTES)
            sent = (
                [100, 1000, 4000, 60_000, 20_000_000, 700, 2500][k] if kind == "transfer" else None
            )
            out.append(Egress("h", t, proc, addr, port, "t", kind="transfer" if sent else
                              "connect", bytes_sent=sent))  # fmt: skip
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, min_size=1, max_size=40), loose=st.booleans())
def test_min_score_returns_the_candidates_over_it_and_counts_the_rest(
    steps: list[tuple[str, int, int, int]], loose: bool
) -> None:
    """Whatever the events (mass reads that lift a score, byte transfers that rescore),
    a core with min_score returns exactly the candidates of a core without it that score
    at least that, counts the others, and keeps the same counters."""
    config = load_config()  # the shipped catalogue and approvals
    if loose:
        config = replace(config, approved=())
    events = _events(steps)
    full = Correlator(config)
    every = full.feed_many(events)
    for min_score in (1, 20, 35, 50, 70, 90):
        core = Correlator(config, min_score=min_score)
        got = core.feed_many(events)
        assert got == [d for d in every if d.score >= min_score]
        assert core.below_min_score == len(every) - len(got)
        assert core.stats == full.stats
