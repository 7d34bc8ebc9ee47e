"""Packs from one source: generated formats, staleness, removal-logging sync, ``packs check``.

The committed files under ``packs/`` must be exactly what ``readegress packs
build`` writes from ``packs/src/``; each format is read back with a real JSON
or YAML parser and must say the same thing about snapshot and removal logging.
``packs check`` is run on broken copies of the tree and must name the file and
line of each problem, all of them in one run. Every pack query then runs
through the test osquery core with the real extension registered and
osquery's event tables present (and, where a real ``osqueryi`` exists,
through it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from osquery_events import EventTables
from readegress.osquery import ExtensionRuntime
from readegress.packs.check import check
from readegress.packs.formats import build_inputs, parse_flagfile, render
from readegress.packs.source import load_source
from readegress.service import open_environment
from readegress.sources.osquery_setup import REQUIRED_FLAGS
from readegress.tables.base import TableCalls, load_tables
from readegress.testing import OsqueryCore

ROOT = Path(__file__).resolve().parents[1]
PACKS = ROOT / "packs"
SOURCE = load_source(PACKS / "src")


def conf(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PACKS / f"{name}.conf").read_text())
    return data


def yaml_docs(rel: str) -> list[Any]:
    return list(yaml.safe_load_all((PACKS / rel).read_text()))


def specs_of(rel: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["spec"]["name"]: d["spec"] for d in yaml_docs(rel) if d and d["kind"] == kind}


@pytest.fixture
def tree() -> Iterator[Path]:
    """A copy of the parts of the source tree the packs are built from."""
    d = Path(tempfile.mkdtemp(prefix="re-packs-"))
    try:
        shutil.copytree(PACKS, d / "packs")
        (d / "install").mkdir()
        shutil.copy(ROOT / "install" / "osquery.flags", d / "install")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "readegress", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- the committed files ------------------------------------------------------


def test_source_loads_without_problems() -> None:
    assert SOURCE.problems == ()
    assert set(SOURCE.packs) == {"readegress", "readegress_events"}
    assert len(SOURCE.queries) == len(list((PACKS / "src").glob("*.toml"))) - 1


def test_committed_files_are_what_the_source_builds() -> None:
    files = render(SOURCE, build_inputs(ROOT))
    for rel, text in files.items():
        assert (PACKS / rel).read_text() == text, f"packs/{rel} is stale: readegress packs build"


def test_packs_check_passes_on_the_repository() -> None:
    assert [str(p) for p in check(ROOT)] == []
    r = run_cli("packs", "check", "--root", str(ROOT))
    assert r.returncode == 0, r.stderr


def test_osquery_packs_have_osquery_shape() -> None:
    allowed = {
        "query",
        "interval",
        "platform",
        "version",
        "description",
        "value",
        "snapshot",
        "removed",
        "denylist",
        "shard",
    }
    for name in SOURCE.packs:
        pack = conf(name)
        assert set(pack) == {"platform", "version", "discovery", "queries"}
        assert pack["discovery"] == [SOURCE.packs[name].discovery]
        for qname, q in pack["queries"].items():
            assert set(q) <= allowed, qname
            assert 1 <= q["interval"] <= 604800
            # Removal logging is always stated for differential queries, never left
            # to osquery's default (true).
            assert ("removed" in q) != q.get("snapshot", False), qname


def test_extension_pack_discovers_the_extension_and_events_pack_needs_none() -> None:
    assert "osquery_extensions" in conf("readegress")["discovery"][0]
    events = conf("readegress_events")
    assert set(events["queries"]) == {"process_file_events", "socket_events", "process_events"}
    for q in events["queries"].values():
        assert not re.search(r"read_then_egress|socket_bytes|process_net_bytes", q["query"])


def test_read_then_egress_selects_every_column_and_logs_no_removals() -> None:
    q = conf("readegress")["queries"]["read_then_egress"]
    assert "closed_bytes_sent" in q["query"] and "detected_time" in q["query"]
    assert q["removed"] is False and "snapshot" not in q
    fleet = specs_of("fleet/readegress.yml", "report")["readegress_read_then_egress"]
    assert fleet["logging"] == "differential_ignore_removals"
    assert fleet["automations_enabled"] is True
    assert fleet["query"] == q["query"]


def removal_logging_by_format() -> dict[str, dict[str, bool]]:
    """Per format, per scheduled name: does the format log removed rows?"""
    out: dict[str, dict[str, bool]] = {}
    for name in SOURCE.packs:
        for qname, q in conf(name)["queries"].items():
            out.setdefault("osquery", {})[f"{name}_{qname}"] = not q.get(
                "snapshot", False
            ) and q.get("removed", True)
    for rel, kind in (
        ("fleet/readegress.yml", "report"),
        ("fleet/readegress-queries.yml", "query"),
    ):
        out[rel] = {n: s["logging"] == "differential" for n, s in specs_of(rel, kind).items()}
    out["gitops"] = {
        item["name"]: item["logging"] == "differential"
        for item in yaml.safe_load((PACKS / "fleet/gitops/lib/readegress.reports.yml").read_text())
    }
    legacy: dict[str, bool] = {}
    for spec in specs_of("fleet/readegress-legacy-packs.yml", "pack").values():
        for e in spec["queries"]:
            legacy[e["query"]] = not e["snapshot"] and e["removed"]
    out["legacy"] = legacy
    return out


def test_removal_logging_is_identical_in_every_format() -> None:
    want = {q.scheduled_name: (not q.snapshot and q.removed) for q in SOURCE.queries.values()}
    formats = removal_logging_by_format()
    assert set(formats) == {
        "osquery",
        "fleet/readegress.yml",
        "fleet/readegress-queries.yml",
        "gitops",
        "legacy",
    }
    for fmt, got in formats.items():
        assert got == want, fmt


def test_fleet_documents_target_the_labels_and_enable_automations() -> None:
    labels = specs_of("fleet/labels.yml", "label")
    assert set(labels) == {p.label for p in SOURCE.packs.values()}
    for label in labels.values():
        assert label["label_membership_type"] == "dynamic" and label["platform"] == "linux"
    reports = specs_of("fleet/readegress.yml", "report")
    queries = specs_of("fleet/readegress-queries.yml", "query")
    assert reports == queries  # the same specs under the old kind
    gitops = yaml.safe_load((PACKS / "fleet/gitops/lib/readegress.reports.yml").read_text())
    assert {i["name"]: i for i in gitops} == reports
    gitops_labels = yaml.safe_load((PACKS / "fleet/gitops/lib/readegress.labels.yml").read_text())
    assert {i["name"]: i for i in gitops_labels} == labels
    for q in SOURCE.queries.values():
        spec = reports[q.scheduled_name]
        assert spec["automations_enabled"] is True
        assert spec["labels_include_any"] == [SOURCE.packs[q.pack].label]
        assert spec["min_osquery_version"] == "5.0.0"  # a string, not a float
    header = (PACKS / "fleet/readegress.yml").read_text().split("---")[0]
    assert "4.82" in header


def test_legacy_packs_reference_saved_queries_and_target_labels() -> None:
    saved = specs_of("fleet/readegress-legacy-packs.yml", "query")
    packs = specs_of("fleet/readegress-legacy-packs.yml", "pack")
    assert set(packs) == set(SOURCE.packs)
    for name, spec in packs.items():
        assert spec["targets"]["labels"] == [SOURCE.packs[name].label]
        for e in spec["queries"]:
            assert e["query"] in saved


def test_agent_options_carry_the_catalogue_and_the_flags() -> None:
    opts = yaml.safe_load((PACKS / "fleet/gitops/lib/readegress.agent-options.yml").read_text())
    out = run_cli("file-paths")
    assert out.returncode == 0
    assert opts["config"] == json.loads(out.stdout)
    flags = opts["command_line_flags"]
    for f in REQUIRED_FLAGS:
        assert flags[f.name] is (f.value == "true"), f.name
    assert "extensions_autoload" not in flags  # fleetd loads extensions itself
    assert flags["audit_backlog_limit"] > 0 and flags["events_max"] > 0


def test_flagfile_sets_every_required_flag() -> None:
    text = (ROOT / "install" / "osquery.flags").read_text()
    values = {n: v for n, v, _ in parse_flagfile(text)}
    for f in REQUIRED_FLAGS:
        assert values.get(f.name) == f.value, f.name
    assert "does NOT hold" in text
    assert "systemd-journald-audit.socket" in text


def test_event_collection_queries_fit_events_expiry() -> None:
    expiry = int(
        {n: v for n, v, _ in parse_flagfile((ROOT / "install/osquery.flags").read_text())}[
            "events_expiry"
        ]
    )
    for q in conf("readegress_events")["queries"].values():
        assert q["interval"] < expiry


# -- packs check on broken copies ---------------------------------------------


def line_of(path: Path, needle: str) -> int:
    for i, ln in enumerate(path.read_text().splitlines(), 1):
        if needle in ln:
            return i
    raise AssertionError(needle)


def test_check_names_file_and_line_of_every_broken_query_in_one_run(tree: Path) -> None:
    bad_column = tree / "packs/src/long_lived_public_sockets.toml"
    bad_column.write_text(bad_column.read_text().replace("s.keepalive", "s.no_such_column"))
    bad_interval = tree / "packs/src/bulk_egress_processes.toml"
    bad_interval.write_text(bad_interval.read_text().replace("interval = 900", "interval = 0"))
    r = run_cli("packs", "check", "--root", str(tree))
    assert r.returncode == 2
    assert (
        f"{bad_column}:{line_of(bad_column, 'sql =')}: query does not run" in r.stderr
        and "no_such_column" in r.stderr
    ), r.stderr
    assert f"{bad_interval}:{line_of(bad_interval, 'interval =')}: interval 0" in r.stderr


def test_check_refuses_a_table_not_in_requires(tree: Path) -> None:
    f = tree / "packs/src/bulk_egress_processes.toml"
    f.write_text(
        f.read_text().replace("FROM process_net_bytes", "FROM process_net_bytes, socket_bytes")
    )
    problems = [str(p) for p in check(tree)]
    assert any(
        p.startswith(f"{f}:{line_of(f, 'sql =')}:") and "socket_bytes" in p for p in problems
    )


def test_check_requires_a_deliberate_removal_choice(tree: Path) -> None:
    f = tree / "packs/src/read_then_egress.toml"
    f.write_text(f.read_text().replace("removed = false\n", ""))
    problems = [str(p) for p in check(tree)]
    assert any(
        p.startswith(f"{f}:{line_of(f, 'logging =')}:") and "removed" in p for p in problems
    ), problems


def test_check_reports_a_column_left_out_of_an_all_columns_query(tree: Path) -> None:
    f = tree / "packs/src/read_then_egress.toml"
    f.write_text(f.read_text().replace(", detected_time", ""))
    problems = [str(p) for p in check(tree)]
    assert any("all_columns" in p and "detected_time" in p for p in problems), problems


def test_check_reports_bad_metadata(tree: Path) -> None:
    f = tree / "packs/src/socket_events.toml"
    text = f.read_text().replace('platform = "linux"', 'platform = "plan9"')
    f.write_text(text.replace('min_osquery_version = "5.0.0"', 'min_osquery_version = "5"'))
    g = tree / "packs/src/process_events.toml"
    g.write_text(g.read_text().replace("interval = 60", "interval = 7200"))
    problems = [str(p) for p in check(tree)]
    assert any(p.startswith(f"{f}:{line_of(f, 'platform =')}:") for p in problems)
    assert any(p.startswith(f"{f}:{line_of(f, 'min_osquery_version')}:") for p in problems)
    assert any(
        p.startswith(f"{g}:{line_of(g, 'interval =')}:") and "events_expiry" in p for p in problems
    )


def test_check_reports_stale_and_unparsable_generated_files(tree: Path) -> None:
    fleet = tree / "packs/fleet/readegress.yml"
    fleet.write_text(fleet.read_text().replace("differential_ignore_removals", "differential", 1))
    conf_file = tree / "packs/readegress.conf"
    conf_file.write_text(conf_file.read_text().replace('"removed": false', '"removed": true', 1))
    legacy = tree / "packs/fleet/readegress-legacy-packs.yml"
    legacy.write_text(legacy.read_text() + "spec: [unclosed\n")
    problems = [str(p) for p in check(tree)]
    stale_line = line_of(fleet, 'logging: "differential"')
    assert f"{fleet}:{stale_line}: stale" in "\n".join(problems)
    assert any(str(fleet) in p and "removal logging" in p for p in problems)
    assert any(str(conf_file) in p and "removal logging" in p for p in problems)
    assert any(p.startswith(f"{legacy}:") and "not YAML" in p for p in problems)
    # build repairs the tree
    r = run_cli("packs", "build", "--root", str(tree))
    assert r.returncode == 0, r.stderr
    assert "wrote packs/fleet/readegress.yml" in r.stdout
    assert check(tree) == []


def test_build_refuses_a_broken_source(tree: Path) -> None:
    f = tree / "packs/src/socket_events.toml"
    f.write_text(f.read_text() + "\nnot toml [\n")
    r = run_cli("packs", "build", "--root", str(tree))
    assert r.returncode == 2 and f"{f}:" in r.stderr


# -- every pack query with the extension loaded ---------------------------------


@pytest.fixture
def loaded_core(core: OsqueryCore, tmp_path: Path) -> Iterator[OsqueryCore]:
    """The test core with osquery's event tables and the real extension registered."""
    EventTables(core)
    env = open_environment(None, state_dir=str(tmp_path / "state"), background=True)
    calls = TableCalls(load_tables(env), timeout=10)
    rt = ExtensionRuntime(
        core.socket_path, calls, timeout=2.0, interval=0.5, on_registered=env.attach_manager
    )
    rt.start()
    try:
        assert rt.wait_registered(10.0)
        yield core
    finally:
        rt.stop()
        rt.join(5.0)
        calls.close()
        env.close()


def all_pack_queries() -> list[tuple[str, str]]:
    out = []
    for name in SOURCE.packs:
        pack = conf(name)
        out += [(f"{name}:discovery", d) for d in pack["discovery"]]
        out += [(f"{name}:{q}", v["query"]) for q, v in pack["queries"].items()]
    return out


def test_every_pack_query_runs_through_the_core_with_the_extension(
    loaded_core: OsqueryCore,
) -> None:
    for label, sql in all_pack_queries():
        cols = loaded_core.get_query_columns(sql)
        assert cols, label
        loaded_core.query(sql)  # raises on any error
    assert loaded_core.query(conf("readegress")["discovery"][0]) == [{"1": "1"}]
    # Raw events are collected only where the extension is not loaded.
    loaded_core.set_flag("disable_audit", "false")
    assert loaded_core.query(conf("readegress_events")["discovery"][0]) == []


def test_raw_event_pack_runs_where_audit_is_on_and_the_extension_is_absent(
    core: OsqueryCore,
) -> None:
    discovery = conf("readegress_events")["discovery"][0]
    assert core.query(discovery) == []  # osquery's default: --disable_audit=true
    core.set_flag("disable_audit", "false")
    assert core.query(discovery) == [{"1": "1"}]


OSQUERYI = os.environ.get("OSQUERYI") or shutil.which("osqueryi")


@pytest.mark.skipif(not OSQUERYI, reason="osqueryi not found: set OSQUERYI or put it on PATH")
def test_every_pack_query_runs_in_a_real_osqueryi(tmp_path: Path) -> None:
    assert OSQUERYI
    ext = tmp_path / "readegress.ext"
    ext.write_text(f"#!/bin/sh\nexec '{sys.executable}' -m readegress extension \"$@\"\n")
    ext.chmod(0o755)
    for label, sql in all_pack_queries():
        r = subprocess.run(
            [
                OSQUERYI,
                "--extension",
                str(ext),
                "--extensions_require=readegress",
                "--extensions_timeout=20",
                "--disable_events=false",
                "--json",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, f"{label}: {r.stderr}"
        json.loads(r.stdout)


# -- any source text is reported, never raised --------------------------------------


_KEYS = st.sampled_from(
    [
        "pack",
        "description",
        "value",
        "interval",
        "logging",
        "removed",
        "platform",
        "min_osquery_version",
        "requires",
        "automations",
        "sql",
        "all_columns",
        "bogus",
    ]
)
_VALUES = st.one_of(
    st.integers(-5, 10**7),
    st.booleans(),
    st.text(max_size=20),
    st.lists(st.text(max_size=10), max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=300), st.dictionaries(_KEYS, _VALUES, max_size=12)))
def test_any_query_file_loads_as_problems_never_an_exception(
    tmp_path_factory: pytest.TempPathFactory, content: object
) -> None:
    src = tmp_path_factory.mktemp("src")
    shutil.copy(PACKS / "src" / "packs.toml", src / "packs.toml")
    if isinstance(content, dict):
        text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in content.items())
    else:
        text = str(content)
    (src / "q.toml").write_text(text, encoding="utf-8", errors="surrogateescape")
    source = load_source(src)
    for p in source.problems:
        assert p.line >= 1 and p.path
    if "q" in source.queries:
        assert source.problems == () or all("q.toml" not in p.path for p in source.problems)
