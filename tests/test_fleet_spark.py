"""The Spark engine (local[2]) gives the detections of the embedded engine, in the same order.

Same narrowing SQL, same per-host Correlator (each host's rows grouped on an
executor with applyInArrow), same bad lines, on the fixtures, a generated
fleet log and random logs. Skipped where pyspark or Java 17 is missing
(.ci/run installs both).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")
pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'readegress[spark]')")
if shutil.which("java") is None:
    pytest.skip("no Java runtime (Debian openjdk-17-jre-headless)", allow_module_level=True)

from fleet_logs import results_logs
from readegress.detect.config import load_config
from readegress.fleet.run import run
from readegress.fleet.spark_engine import SparkEngine
from readegress.logs.results import BadLine

FIXTURES = Path(__file__).parent / "fixtures" / "logs"
CONFIG = load_config()


@pytest.fixture(scope="module", autouse=True)
def _local_spark() -> Iterator[None]:
    engine = SparkEngine(master="local[2]", partitions=2)  # the session every run then shares
    yield
    # Stop the JVM: left running, its threads take CPU from the live tests that follow.
    engine.spark.stop()


def _both(paths: list[str]) -> None:
    out = {}
    for engine in ("duckdb", "spark"):
        bad: list[BadLine] = []
        fr = run(paths, CONFIG, bad.append, engine=engine, master="local[2]", progress=False)
        lines = sorted((b.file, b.line) for b in bad)
        out[engine] = (fr.correlated.candidates, lines, fr.counts, fr.correlated.events)
    assert out["spark"][0] == out["duckdb"][0]
    assert out["spark"][1] == out["duckdb"][1]
    assert out["spark"][2] == out["duckdb"][2]
    assert out["spark"][3] == out["duckdb"][3]


def test_fixtures() -> None:
    _both([str(p) for p in sorted(FIXTURES.glob("*.log"))])


def test_generated_fleet(tmp_path: Path) -> None:
    from bench.fleet_log import write

    path = tmp_path / "fleet.log"
    info = write(str(path), 1_000_000, hosts=4, rare_chains=2)
    _both([str(path)])
    fr = run([str(path)], CONFIG, lambda b: None, engine="spark", progress=False)
    found = {(d.host, d.pid, d.path, d.remote_address) for d in fr.correlated.candidates}
    assert set(info.chains) <= found


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=results_logs())
def test_random_logs(log: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("log") / "r.log"
    path.write_text(log + "[[[\nnot json\n")
    _both([str(path)])
