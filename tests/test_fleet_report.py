"""readegress fleet report / baseline and replay --engine on a generated multi-host log."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from bench.fleet_log import LogInfo, write

from readegress import cli


@pytest.fixture(scope="module")
def fleet_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, LogInfo]:
    path = tmp_path_factory.mktemp("fleet") / "fleet.log"
    info = write(str(path), 6_000_000, hosts=9, rare_chains=2)
    return str(path), info


def _report(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert cli.main(["fleet", "report", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_report(
    fleet_log: tuple[str, LogInfo], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path, info = fleet_log
    rep = _report(capsys, path, "--out", str(tmp_path / "out"))
    dets = rep["detections"]
    # The rare chains rank first: one host each, a destination no other host contacted.
    top = {(d["host"], d["pid"], d["path"], d["remote_address"]) for d in dets[: len(info.chains)]}
    assert top == set(info.chains)
    assert all(d["prevalence_hosts"] == 1 and d["destination_hosts"] == 1 for d in dets[:2])
    assert [d["priority"] for d in dets] == sorted((d["priority"] for d in dets), reverse=True)
    for d in dets:  # the read_then_egress table's column names and types
        assert isinstance(d["executables"], str) and isinstance(d["reasons"], str)
        assert isinstance(d["remote_port"], int) and isinstance(d["score"], int)
    assert len({d["id"] for d in dets}) == len(dets)
    assert {d["origin"] for d in dets} == {"events", "read_then_egress"}
    # The backup job is common: its pair is on many hosts.
    backup = [p for p in rep["prevalence"] if p["executable"] == "/usr/local/bin/restic"]
    assert backup and max(p["hosts"] for p in backup) >= len(info.backup_hosts) - 1
    cov = {c["host"]: c for c in rep["coverage"]}
    assert "no_events" in cov[info.quiet_host]["status"]
    assert "silent" in cov[info.silent_host]["status"]
    assert cov[info.failing_host]["status"].startswith("fail")
    assert cov[info.failing_host]["checks"][0]["name"] == "file_paths"
    assert rep["top_egress"][0]["total_bytes_sent"] >= rep["top_egress"][-1]["total_bytes_sent"]
    assert all(s["age_seconds"] >= 600 for s in rep["long_lived_sockets"])
    assert rep["summary"]["evicted_reads"] == 0 and "evicted_processes" in rep["summary"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<svg" in html and "http://" not in html and "https://" not in html.split("<body")[0]
    assert "<script src" not in html and "<link" not in html


def test_baseline_suppresses_the_common_job_not_the_rare_chain(
    fleet_log: tuple[str, LogInfo], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, info = fleet_log
    base = tmp_path / "baseline.toml"
    assert cli.main(["fleet", "baseline", path, "--min-hosts", "3", "--out", str(base)]) == 0
    text = base.read_text()
    assert "/usr/local/bin/restic" in text and "/usr/bin/curl" not in text
    capsys.readouterr()
    assert cli.main(["replay", path]) == 0
    before = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert any(d["executable"] == "/usr/local/bin/restic" for d in before)
    # The baseline is a config by itself, and layers over another.
    for args in (["--config", str(base)], ["--config", str(base), "--config", str(base)]):
        assert cli.main(["replay", *args, path]) == 0
        after = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert not any(d["executable"] == "/usr/local/bin/restic" for d in after)
        assert {(d["host"], d["pid"], d["path"], d["remote_address"]) for d in after} == set(
            info.chains
        )


def test_engines_agree_and_python_engine_still_works(
    fleet_log: tuple[str, LogInfo], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = fleet_log
    out = {}
    for engine in ("duckdb", "python"):
        assert cli.main(["replay", "--engine", engine, path]) == 0
        out[engine] = sorted(json.loads(x)["id"] for x in capsys.readouterr().out.splitlines())
    assert out["duckdb"] == out["python"]


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("window_seconds = 'x'\n")
    log = str(Path(__file__).parent / "fixtures" / "logs" / "events.log")
    assert cli.main(["replay", "--config", str(bad), log]) == 2
    assert str(bad) in capsys.readouterr().err
    assert cli.main(["fleet", "report", "--config", str(bad), log, "--json"]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["replay", "--jobs", "0", log])
    assert e.value.code == 2


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (.ci/run installs it)"
)
def test_report_renders_in_headless_chromium(
    fleet_log: tuple[str, LogInfo], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = fleet_log
    out = tmp_path / "out"
    assert cli.main(["fleet", "report", path, "--out", str(out)]) == 0
    page = (out / "report.html").as_uri()
    profile = tempfile.mkdtemp(dir=tmp_path)
    base = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
    ]  # fmt: skip
    dom = subprocess.run(
        [*base, "--dump-dom", page], capture_output=True, text=True, timeout=120, check=False
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-charts-drawn="4"' in dom.stdout  # every chart has marks, the script ran
    errors = [
        line for line in dom.stderr.splitlines()
        if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)
    ]  # fmt: skip
    assert not errors, errors
    shot = tmp_path / "report.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1280,2200", page],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}", file=sys.stderr)


def test_progress_on_a_terminal_only(
    fleet_log: tuple[str, LogInfo], capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from readegress.logs.lines import LineStats, Progress, line_batches

    path, info = fleet_log
    out = io.StringIO()
    progress = Progress(info.bytes, out)
    progress.shown = -1.0  # first update shows at once
    n = sum(len(b.lines) for b in line_batches([path], print, LineStats(), batch_bytes=1 << 20,
                                                progress=progress))  # fmt: skip
    assert n == info.lines
    text = out.getvalue()
    assert "MB/s" in text and "lines" in text and text.endswith("\n")
    # stderr is not a terminal under pytest: the CLI stays quiet.
    assert cli.main(["replay", path]) == 0
    assert "MB/s" not in capsys.readouterr().err


def test_directories_gzip_stdin_and_period(
    fleet_log: tuple[str, LogInfo],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gzip
    import io

    path, _ = fleet_log
    whole = _report(capsys, path)
    logs = tmp_path / "logs"
    logs.mkdir()
    data = Path(path).read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    (logs / "a.log").write_bytes(data[:cut])
    (logs / "b.log.gz").write_bytes(gzip.compress(data[cut:]))  # gzip whatever the name
    split = _report(capsys, str(logs))
    assert split["summary"]["files"] == 2
    assert [d["id"] for d in split["detections"]] == [d["id"] for d in whole["detections"]]
    stdin = io.TextIOWrapper(io.BytesIO(data))
    monkeypatch.setattr(sys, "stdin", stdin)
    piped = _report(capsys, "-")
    assert [d["id"] for d in piped["detections"]] == [d["id"] for d in whole["detections"]]
    times = sorted(d["egress_time"] for d in whole["detections"])
    lo, hi = times[len(times) // 4], times[3 * len(times) // 4]
    part = _report(capsys, path, "--since", str(lo), "--until", str(hi))
    got = [d["egress_time"] for d in part["detections"]]
    assert got and all(lo <= t <= hi for t in got)
    assert len(got) == sum(1 for t in times if lo <= t <= hi)


def test_duckdb_never_draws_its_progress_bar_on_stdout() -> None:
    """Replay's stdout is JSON lines: DuckDB's bar (drawn for statements over 2 s, on a
    1 GB log) once became its first line."""
    from readegress.fleet.duckdb_engine import DuckDBEngine

    engine = DuckDBEngine()
    try:
        con = engine.con
        assert con.execute("SELECT current_setting('enable_progress_bar')").fetchone() == (False,)
    finally:
        engine.close()


def test_engine_run_leaves_pandas_unimported(fleet_log: tuple[str, LogInfo]) -> None:
    """pyarrow's ``pa.array`` and ``pa.table`` import pandas (0.15 s, when it is installed)
    to check their argument; the engine builds its Arrow arrays from buffers instead."""
    pytest.importorskip("pandas")
    path, info = fleet_log
    code = (
        "import sys\n"
        "from readegress.cli import main\n"
        "rc = main(['replay', sys.argv[1]])\n"
        "assert 'pandas' not in sys.modules, 'pandas was imported'\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = {
        (d["host"], d["pid"], d["remote_address"])
        for d in map(json.loads, done.stdout.splitlines())
    }
    assert {(h, pid, dest) for h, pid, _, dest in info.chains} <= found


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_removes_its_database(
    fleet_log: tuple[str, LogInfo], tmp_path: Path, sig: int, code: int
) -> None:
    """SIGTERM (a timeout, a service manager) or Ctrl-C mid-run: the exit code says so, no
    traceback, and the engine's database (hundreds of MB on a large log) is removed. Python's
    default for SIGTERM ended the process on the spot and left it behind."""
    path, _ = fleet_log
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "readegress.cli", "replay", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    with open(path, "rb") as f:
        proc.stdin.write(f.read(1 << 20))  # part of the log: the run waits for the rest
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("readegress-fleet-*/run.duckdb")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(sig)
    time.sleep(0.3)
    proc.stdin.close()  # a read of stdin blocks until there is more, or its end
    assert proc.wait(timeout=60) == code
    err = proc.stderr.read().decode()
    assert "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
