"""readegress replay: detections from results logs, fast path == full parse, CLI."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from readegress import cli
from readegress.detect.config import Config, load_config
from readegress.logs.replay import ReplayResult, detection_json, replay
from readegress.logs.results import BadLine

LOGS = Path(__file__).parent / "fixtures" / "logs"
FORMATS = [
    "events.log",
    "events_numerics_top_level.log",
    "batch_hostname.log",
    "snapshot.log",
    "snapshot_events.log",
]
WEB, DB = "web-01.example.com", "db-01.example.com"
#: (host, pid, path, remote address, remote port, scope) the fixtures must yield, and no more:
#: curl -F file=@/etc/shadow, and bash opening credentials through '<' then exec'ing nc.
EXPECTED = {
    (WEB, 4242, "/etc/shadow", "45.33.32.156", 443, "process"),
    (WEB, 4800, "/home/alice/.aws/credentials", "185.199.108.153", 4444, "process"),
}
#: The look-alikes in the same fixtures: ssh with its key (approved), /etc/passwd then
#: curl (low class only), credentials then a private address, a failed connect, an
#: accepted inbound client; and pid 4242 on db-01, which connects but read nothing there.
QUIET = {(WEB, 4300), (WEB, 4400), (WEB, 4500), (WEB, 4600), (WEB, 4700), (DB, 4242)}


def key(d: Any) -> tuple[Any, ...]:
    return (d.host, d.pid, d.path, d.remote_address, d.remote_port, d.scope)


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config()


def run(paths: list[str], config: Config, **kw: Any) -> ReplayResult:
    return replay(paths, config, on_bad=lambda b: None, **kw)


@pytest.mark.parametrize("name", FORMATS)
def test_fixture_detections(name: str, config: Config) -> None:
    res = run([str(LOGS / name)], config)
    assert {key(d) for d in res.detections} == EXPECTED
    assert not {(d.host, d.pid) for d in res.detections} & QUIET
    shadow = next(d for d in res.detections if d.pid == 4242)
    assert shadow.sensitive_class == "shadow" and shadow.score >= config.threshold
    nc = next(d for d in res.detections if d.pid == 4800)
    # The exec in the same second as the reads is kept: bash read, nc sent.
    assert nc.reader_executable == "/bin/bash" and nc.executable == "/usr/bin/nc"
    assert "exec_after_read" in nc.reasons
    assert res.core["approved"] == 1 and res.core["low_only"] >= 1


@pytest.mark.parametrize("name", FORMATS)
def test_fast_path_gives_the_full_parse_detections(name: str, config: Config) -> None:
    path = [str(LOGS / name)]
    slow = [detection_json(d) for d in run(path, config, fast=False).detections]
    for flush_lines in (7, 500_000):
        fast = run(path, config, fast=True, flush_lines=flush_lines)
        assert [detection_json(d) for d in fast.detections] == slow, flush_lines


def test_fast_path_equals_full_parse_on_a_generated_log(tmp_path: Path, config: Config) -> None:
    """A realistic log with thousands of processes: same detections, ids and log lines."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from bench.replay import generate
    except ImportError:  # pragma: no cover
        pytest.skip("bench.replay not importable")
    finally:
        sys.path.pop(0)
    log = tmp_path / "gen.log"
    generate(str(log), 12_000, seed=7, chain_rate=0.05)
    slow = run([str(log)], config, fast=False)
    fast = run([str(log)], config, fast=True, flush_lines=3_000)
    assert fast.read.collapsed > 3_000 and fast.read.skipped > 3_000
    assert fast.stats.events < slow.stats.events / 3
    assert [detection_json(d) for d in fast.detections] == [
        detection_json(d) for d in slow.detections
    ]
    assert fast.detections  # the generated log plants chains
    jobs = run([str(log)], config, fast=True, jobs=2)
    assert [detection_json(d) for d in jobs.detections] == [
        detection_json(d) for d in slow.detections
    ]
    assert jobs.read.lines == slow.read.lines and jobs.read.rows == slow.read.rows


def test_log_order_is_not_event_order(tmp_path: Path, config: Config) -> None:
    """Newest line first: the buffered events are sorted before the core sees them."""
    lines = (LOGS / "events.log").read_text().splitlines()
    log = tmp_path / "reversed.log"
    log.write_text("\n".join(reversed(lines)) + "\n")
    assert {key(d) for d in run([str(log)], config).detections} == EXPECTED


def test_lateness_bounds_what_is_held(config: Config) -> None:
    path = [str(LOGS / "events.log")]
    # The process query logs curl's fork (t) after the socket query logged its connect
    # (t+1): fed with no lateness allowed, the fork splits the reader from the sender.
    eager = run(path, config, flush_lines=3, max_lateness=0)
    assert eager.stats.flushes > 10 and eager.stats.max_buffered < 60
    assert {key(d) for d in eager.detections} != EXPECTED
    assert all(d.scope != "process" for d in eager.detections)
    held = run(path, config, flush_lines=3, max_lateness=30)
    assert {key(d) for d in held.detections} == EXPECTED


def test_same_pid_on_two_hosts_never_joins(tmp_path: Path, config: Config) -> None:
    lines = []
    for host, cols in (
        (
            "a",
            {
                "operation": "open",
                "pid": "10",
                "ppid": "1",
                "time": "100",
                "path": "/etc/shadow",
                "executable": "/usr/bin/cat",
                "uid": "0",
                "auid": "0",
            },
        ),
        (
            "b",
            {
                "action": "connect",
                "pid": "10",
                "path": "/usr/bin/cat",
                "family": "2",
                "remote_address": "8.8.8.8",
                "remote_port": "443",
                "time": "101",
                "status": "succeeded",
            },
        ),
        (
            "a",
            {
                "action": "connect",
                "pid": "10",
                "path": "/usr/bin/cat",
                "family": "2",
                "remote_address": "8.8.4.4",
                "remote_port": "443",
                "time": "101",
                "status": "succeeded",
            },
        ),
    ):
        lines.append(
            json.dumps({"name": "q", "hostIdentifier": host, "columns": cols, "action": "added"})
        )
    log = tmp_path / "two.log"
    log.write_text("\n".join(lines) + "\n")
    res = run([str(log)], config)
    assert [(d.host, d.remote_address) for d in res.detections] == [("a", "8.8.4.4")]


def test_unusable_rows_are_reported(config: Config) -> None:
    bad: list[BadLine] = []
    res = replay([str(LOGS / "events.log")], config, on_bad=bad.append)
    assert res.stats.row_errors == 1
    assert [(b.line, b.reason) for b in bad if " row: " in b.reason] == [
        (14, "process_file_events row: pid '' is not a process id")
    ]
    assert res.read.bad_lines == 4


def test_jobs_report_bad_lines_once_in_log_order(config: Config) -> None:
    bad: list[BadLine] = []
    res = replay(
        [str(LOGS / "events.log"), str(LOGS / "snapshot.log")], config, on_bad=bad.append, jobs=2
    )
    assert [b.line for b in bad] == [4, 6, 10, 12, 14]
    assert res.stats.jobs == 2 and res.read.lines == 140 + 24
    assert {key(d) for d in res.detections} == EXPECTED


# ----- the command line ---------------------------------------------------
def test_cli_replay(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    path = str(LOGS / "events.log")
    assert cli.main(["replay", path]) == 0
    out, err = capsysbinary.readouterr()
    dets = [json.loads(line) for line in out.splitlines()]
    assert {
        (d["host"], d["pid"], d["path"], d["remote_address"], d["remote_port"], d["scope"])
        for d in dets
    } == EXPECTED
    for d in dets:
        for field in (
            "sensitive_class",
            "read_time",
            "egress_time",
            "score",
            "reasons",
            "executable",
            "read_location",
            "egress_location",
        ):
            assert field in d
        assert d["read_location"].startswith(path + ":")
    text = err.decode()
    assert f"{path}:4: not JSON" in text and f"{path}:14: process_file_events row" in text
    assert text.rstrip().splitlines()[-1].startswith("readegress replay (duckdb): 140 lines")
    assert "4 bad lines, 1 unusable rows; 2 detections" in text


def test_cli_egress_class_adds_loopback(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert cli.main(["replay", "--egress-class", "loopback", str(LOGS / "snapshot.log")]) == 0
    out, _ = capsysbinary.readouterr()
    got = {(d["pid"], d["remote_address"]) for d in map(json.loads, out.splitlines())}
    assert (4242, "127.0.0.53") in got and (4242, "45.33.32.156") in got


def test_cli_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("window_seconds = -3\nthreshold = 50\n")
    assert cli.main(["replay", "--config", str(bad), str(LOGS / "events.log")]) == 2
    assert f"{bad}:1:" in capsys.readouterr().err
    assert cli.main(["replay", "--egress-class", "nowhere", str(LOGS / "events.log")]) == 2


def test_cli_missing_file_is_an_error(
    capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path
) -> None:
    assert cli.main(["replay", str(tmp_path / "missing.log")]) == 1
    assert b"missing.log:0: cannot open" in capsysbinary.readouterr().err


def test_cli_threshold_from_config(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], config: Config
) -> None:
    text = Path(config.path).read_text().replace("threshold = 50", "threshold = 106")
    cfg = tmp_path / "strict.toml"
    cfg.write_text(text)
    assert cli.main(["replay", "--config", str(cfg), str(LOGS / "events.log")]) == 0
    out, err = capsysbinary.readouterr()
    assert [json.loads(line)["pid"] for line in out.splitlines()] == [4800]
    assert b"(1 below threshold)" in err
    assert dataclasses.replace(config).threshold == 50


def _random_log(rng: Any, lines: int, with_eid: bool) -> str:
    """Few pids, parents, images and seconds, so reads of one pid in one second collide,
    exec and pid reuse happen mid-second, and query runs interleave hosts."""
    out = []
    state: dict[tuple[str, str], list[str]] = {}
    t = 1764300000
    host = "h1"
    run = 0
    for i in range(lines):
        run += rng.random() < 0.1
        if rng.random() < 0.1:
            host = rng.choice(("h1", "h2"))
        t += rng.choice((0, 0, 0, 0, 1, -1))  # mostly one second; sometimes back in time
        pid = str(rng.choice((10, 11, 12)))
        # Each pid keeps its parent, image and ids until an exec, a reuse or a setuid.
        st = state.setdefault((host, pid), ["5", "/bin/bash", "0", "1000"])
        change = rng.random()
        if change < 0.08:
            st[1] = rng.choice(("/bin/bash", "/usr/bin/nc", "/usr/bin/curl"))
        elif change < 0.12:
            st[0] = rng.choice(("1", "5", "6"))
        elif change < 0.15:
            st[2], st[3] = rng.choice(("0", "1000")), rng.choice(("1000", "4294967295"))
        ppid, exe, uid, auid = st
        roll = rng.random()
        if roll < 0.7:
            path = rng.choice(
                (
                    "/usr/lib/a.so",
                    "/usr/lib/b.so",
                    "/etc/ld.so.cache",
                    "/etc/shadow",
                    "/etc/passwd",
                    "/root/.ssh/id_rsa",
                )
            )
            cols = {
                "auid": auid,
                "cwd": "/",
                "dest_path": "",
                "egid": uid,
                "euid": uid,
                "executable": exe,
                "fsgid": uid,
                "fsuid": uid,
                "gid": uid,
                "operation": rng.choice(("open", "open", "read", "close", "write")),
                "partial": "0",
                "path": path,
                "pid": pid,
                "ppid": ppid,
                "sgid": uid,
                "suid": uid,
                "time": str(t),
                "uid": uid,
                "uptime": "9",
            }
            name = "files"
        elif roll < 0.85:
            cols = {
                "action": rng.choice(("connect", "connect", "accept")),
                "auid": auid,
                "family": "2",
                "fd": "3",
                "local_address": "",
                "local_port": "0",
                "path": exe,
                "pid": pid,
                "protocol": "0",
                "remote_address": rng.choice(("8.8.8.8", "1.1.1.1", "10.0.0.1")),
                "remote_port": rng.choice(("443", "4444")),
                "socket": "",
                "status": rng.choice(("succeeded", "succeeded", "failed")),
                "success": "1",
                "time": str(t),
                "uptime": "9",
            }
            name = "sockets"
        else:
            cols = {
                "auid": auid,
                "cmdline": exe,
                "cwd": "/",
                "parent": ppid,
                "path": exe,
                "pid": pid,
                "syscall": rng.choice(("fork", "execve", "execve")),
                "time": str(t),
                "uid": uid,
                "uptime": "9",
            }
            name = "procs"
        if with_eid:
            cols = dict(sorted({**cols, "eid": f"{i:010d}"}.items()))
        head = {
            "name": name,
            "hostIdentifier": host,
            "calendarTime": "x",
            "unixTime": 1764300010 + run,
            "epoch": 0,
            "counter": run,
            "numerics": False,
            "decorations": {"hostname": host},
        }
        line = json.dumps({**head, "columns": cols, "action": "added"}, separators=(",", ":"))
        if rng.random() < 0.05:  # escaped values: lines the fast path leaves to the parser
            line = line.replace('"open"', '"\\u006fpen"')
            line = line.replace('"/usr/lib/a.so"', '"\\/usr/lib/a.so"')
        out.append(line)
    return "\n".join(out) + "\n"


def test_fast_path_equals_full_parse_on_random_logs(tmp_path: Path, config: Config) -> None:
    import random

    rng = random.Random(1234)
    collapsed = found = 0
    for i in range(60):
        log = tmp_path / f"r{i}.log"
        log.write_text(_random_log(rng, 150, with_eid=i % 2 == 0))
        kw = {"flush_lines": rng.choice((5, 40, 1000)), "max_lateness": rng.choice((0, 2, 3660))}
        slow = run([str(log)], config, fast=False, **kw)
        fast = run([str(log)], config, fast=True, **kw)
        assert [detection_json(d) for d in fast.detections] == [
            detection_json(d) for d in slow.detections
        ], (i, kw)
        collapsed += fast.read.collapsed
        found += len(fast.detections)
    # The collapsing path was exercised, not bypassed, and there was something to find.
    assert collapsed > 150 and found > 30


def test_without_orjson_the_stdlib_json_gives_the_same(
    monkeypatch: pytest.MonkeyPatch, config: Config
) -> None:
    from readegress.logs import results

    ref = {
        name: [detection_json(d) for d in run([str(LOGS / name)], config).detections]
        for name in FORMATS
    }
    monkeypatch.setattr(results, "loads", json.loads)
    for name in FORMATS:
        bad: list[BadLine] = []
        res = replay([str(LOGS / name)], config, on_bad=bad.append)
        assert [detection_json(d) for d in res.detections] == ref[name], name
        if name == "events.log":
            assert [b.line for b in bad] == [4, 6, 10, 12, 14]
