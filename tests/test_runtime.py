"""The extension runtime (readegress.osquery) against the test osquery core.

Real Thrift over real UNIX sockets throughout. Serving and error paths run
the runtime in-process; the lifecycle (flags, restart, core gone, duplicate
name, shutdown) runs it as a real child process, which imports this module
for its test tables (see :func:`child_main`). The last test runs the real
CLI, ``python -m readegress extension``, against the core.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Optional

import pytest

from readegress.osquery import (
    ExtensionClient,
    ExtensionRuntime,
    ManagerClient,
    OsqueryCallError,
    parse_extension_args,
    run_extension,
)
from readegress.osquery.server import remove_stale_socket
from readegress.tables.base import BoundTable, TableCalls
from readegress.tables.context import EQUALS, QueryContext
from readegress.tables.spec import load_specs, parse_spec
from readegress.testing import OsqueryCore

PROCS_SPEC = """
name = "test_procs"
description = "Processes, for tests."
implementation = "test_runtime:Procs"
examples = ["SELECT * FROM test_procs WHERE pid = 1"]

[[columns]]
name = "pid"
type = "BIGINT"
description = "Process id."
index = true

[[columns]]
name = "name"
type = "TEXT"
description = "Name."

[[columns]]
name = "uid"
type = "INTEGER"
description = "User id."
additional = true

[[columns]]
name = "score"
type = "DOUBLE"
description = "A double."

[[columns]]
name = "secret"
type = "TEXT"
description = "Hidden."
hidden = true
"""


def _one_column_spec(name: str) -> str:
    return f"""
name = "{name}"
description = "A one-column table, for tests."
implementation = "test_runtime:X"
examples = ["SELECT * FROM {name}"]

[[columns]]
name = "value"
type = "TEXT"
description = "A value."
"""


class ProcRow(NamedTuple):
    pid: int
    name: str
    uid: Optional[int]
    score: Optional[float]
    secret: str


class ValueRow(NamedTuple):
    value: str


PROC_ROWS = [
    ProcRow(1, "init", 0, 0.5, "s1"),
    ProcRow(2, "kthreadd", 0, None, "s2"),
    ProcRow(300, "sshd", None, 2.25, "s3"),
]


class Procs:
    """Honours ``pid`` constraints, records every context it receives."""

    row_type: type = ProcRow

    def __init__(self) -> None:
        self.contexts: list[QueryContext] = []

    def generate(self, ctx: QueryContext) -> list[ProcRow]:
        self.contexts.append(ctx)
        wanted = ctx.int_equals("pid")
        return [r for r in PROC_ROWS if wanted is None or r.pid in wanted]


class Boom:
    row_type: type = ValueRow

    def generate(self, ctx: QueryContext) -> list[ValueRow]:
        raise RuntimeError("kaput")


class Slow:
    row_type: type = ValueRow

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def generate(self, ctx: QueryContext) -> list[ValueRow]:
        time.sleep(self.seconds)
        return [ValueRow("late")]


def make_tables(slow_seconds: float = 2.0) -> dict[str, BoundTable]:
    return {
        "test_procs": BoundTable(parse_spec(PROCS_SPEC), Procs()),
        "boom": BoundTable(parse_spec(_one_column_spec("boom")), Boom()),
        "slow": BoundTable(parse_spec(_one_column_spec("slow")), Slow(slow_seconds)),
    }


def child_main(argv: Sequence[str]) -> int:
    """Entry point of the child extension process (imports this module)."""
    return run_extension(argv, tables=make_tables())


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def tables() -> dict[str, BoundTable]:
    return make_tables()


@pytest.fixture
def runtime(core: OsqueryCore, tables: dict[str, BoundTable]) -> Iterator[ExtensionRuntime]:
    calls = TableCalls(tables, timeout=0.5)
    rt = ExtensionRuntime(core.socket_path, calls, timeout=2.0, interval=0.2)
    rt.start()
    assert rt.wait_registered(5.0)
    yield rt
    rt.stop()
    rt.join(5.0)
    calls.close()


def ext_client(rt: ExtensionRuntime, timeout: float = 5.0) -> ExtensionClient:
    path = rt.extension_socket
    assert path is not None
    return ExtensionClient(path, timeout=timeout)


def procs(tables: dict[str, BoundTable]) -> Procs:
    impl = tables["test_procs"].impl
    assert isinstance(impl, Procs)
    return impl


# -- serving -------------------------------------------------------------------


def test_registers_every_table_with_its_spec_routes(
    core: OsqueryCore, runtime: ExtensionRuntime, tables: dict[str, BoundTable]
) -> None:
    assert runtime.uuid is not None
    (info,) = core.extensions().values()
    assert (info.name, info.sdk_version, info.min_sdk_version) == ("readegress", "5.0.0", "0.0.0")
    registered = core.registry_of(runtime.uuid)["table"]
    assert set(registered) == {"test_procs", "boom", "slow"}
    assert registered["test_procs"] == [
        {"id": "column", "name": "pid", "type": "BIGINT", "op": "1"},
        {"id": "column", "name": "name", "type": "TEXT", "op": "0"},
        {"id": "column", "name": "uid", "type": "INTEGER", "op": "4"},
        {"id": "column", "name": "score", "type": "DOUBLE", "op": "0"},
        {"id": "column", "name": "secret", "type": "TEXT", "op": "16"},
    ]
    with ext_client(runtime) as c:
        status, routes = c.call("table", "test_procs", {"action": "columns"})
    assert status.ok and status.uuid == runtime.uuid
    assert routes == tables["test_procs"].spec.routes() == registered["test_procs"]


def test_socket_is_private_and_named_after_the_uuid(
    core: OsqueryCore, runtime: ExtensionRuntime
) -> None:
    path = runtime.extension_socket
    assert path == f"{core.socket_path}.{runtime.uuid}"
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    # No temporary socket is left behind next to the manager's.
    siblings = sorted(os.listdir(os.path.dirname(path)))
    assert siblings == sorted(["osquery.em", os.path.basename(path)])


def test_generate_without_constraints(
    core: OsqueryCore, runtime: ExtensionRuntime, tables: dict[str, BoundTable]
) -> None:
    rows = core.query("SELECT pid, name, uid, score FROM test_procs")
    assert rows == [
        {"pid": "1", "name": "init", "uid": "0", "score": "0.5"},
        {"pid": "2", "name": "kthreadd", "uid": "0", "score": ""},
        {"pid": "300", "name": "sshd", "uid": "", "score": "2.25"},
    ]
    ctx = procs(tables).contexts[-1]
    assert ctx.constraints == ()
    assert ctx.cols_used == frozenset({"pid", "name", "uid", "score"})


def test_osquery_rows_are_plain_string_maps_converted_while_generated(
    tables: dict[str, BoundTable],
) -> None:
    table = tables["test_procs"]
    typed = table.rows(QueryContext.of(()))
    converted = table.to_osquery_rows(typed)
    streamed = table.osquery_rows(QueryContext.of(()))
    assert converted == streamed
    assert all(type(d) is dict and len(d) == len(table.spec.column_names) for d in streamed)
    assert all(type(v) is str for d in streamed for v in d.values())
    assert [list(d) for d in streamed] == [list(table.spec.column_names)] * len(streamed)
    assert streamed[1]["score"] == "" and streamed[0]["score"] == "0.5"
    # A consumer may add keys to one row without touching the others.
    streamed[0]["extra"] = "x"
    assert "extra" not in streamed[1]


def test_pid_equals_reaches_the_table_as_a_parsed_constraint(
    core: OsqueryCore, runtime: ExtensionRuntime, tables: dict[str, BoundTable]
) -> None:
    rows = core.query("SELECT pid, secret FROM test_procs WHERE pid = 300")
    assert rows == [{"pid": "300", "secret": "s3"}]
    ctx = procs(tables).contexts[-1]
    assert [(c.column, c.op, c.expr) for c in ctx.constraints] == [("pid", EQUALS, "300")]
    assert ctx.int_equals("pid") == frozenset({300})
    assert ctx.cols_used == frozenset({"pid", "secret"})


def test_pid_in_reaches_the_table_once_per_value(
    core: OsqueryCore, runtime: ExtensionRuntime, tables: dict[str, BoundTable]
) -> None:
    before = len(procs(tables).contexts)
    rows = core.query("SELECT pid FROM test_procs WHERE pid IN (1, 300, 999)")
    assert sorted(r["pid"] for r in rows) == ["1", "300"]
    seen = [c.int_equals("pid") for c in procs(tables).contexts[before:]]
    assert sorted(min(s) for s in seen if s) == [1, 300, 999]
    assert all(len(s) == 1 for s in seen if s is not None)


def test_failing_table_answers_code_1_naming_the_table(
    core: OsqueryCore, runtime: ExtensionRuntime
) -> None:
    with ext_client(runtime) as c:
        status, rows = c.call("table", "boom", {"action": "generate", "context": "{}"})
        assert status.code == 1 and rows == []
        assert "boom" in status.message and "kaput" in status.message
        assert c.ping().ok
        status, rows = c.call("table", "test_procs", {"action": "generate", "context": ""})
        assert status.ok and len(rows) == 3
    with pytest.raises(OsqueryCallError, match="boom: RuntimeError: kaput"):
        core.query("SELECT * FROM boom")
    assert len(core.query("SELECT * FROM test_procs")) == 3


def test_slow_table_times_out_while_pings_stay_prompt(
    core: OsqueryCore, runtime: ExtensionRuntime
) -> None:
    result: dict[str, object] = {}

    def slow_call() -> None:
        with ext_client(runtime) as c:
            result["status"] = c.call("table", "slow", {"action": "generate", "context": ""})[0]

    t = threading.Thread(target=slow_call)
    started = time.monotonic()
    t.start()
    time.sleep(0.1)  # the slow call is in flight
    with ext_client(runtime, timeout=2.0) as c:
        for _ in range(5):
            t0 = time.monotonic()
            assert c.ping().ok
            assert time.monotonic() - t0 < 0.25
    t.join(5)
    status = result["status"]
    assert getattr(status, "code", None) == 1
    assert "slow: generate timed out after 0.5s" in str(getattr(status, "message", ""))
    assert time.monotonic() - started < 1.5  # answered at the call timeout, not after 2 s


def test_parallel_calls_are_served_concurrently(
    core: OsqueryCore, runtime: ExtensionRuntime
) -> None:
    durations: list[float] = []

    def call() -> None:
        with ext_client(runtime) as c:
            t0 = time.monotonic()
            assert c.call("table", "test_procs", {"action": "generate", "context": ""})[0].ok
            durations.append(time.monotonic() - t0)

    with ext_client(runtime) as blocker:
        # A slow call holds one connection; others still go through.
        slow = threading.Thread(
            target=lambda: blocker.call("table", "slow", {"action": "generate", "context": ""})
        )
        slow.start()
        time.sleep(0.05)
        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        slow.join(5)
    assert len(durations) == 4 and max(durations) < 0.4


@pytest.mark.parametrize(
    ("registry", "item", "request_", "needle"),
    [
        ("table", "test_procs", {"action": "generate", "context": "{not json"}, "not JSON"),
        ("table", "test_procs", {"action": "generate", "context": "[1]"}, "not a JSON object"),
        (
            "table",
            "test_procs",
            {"action": "generate", "context": '{"constraints":[{"name":"pid","list":[{}]}]}'},
            "lacks op/expr",
        ),
        ("table", "nope", {"action": "generate", "context": ""}, "no table named 'nope'"),
        ("table", "test_procs", {"action": "explode"}, "unknown table plugin action 'explode'"),
        ("table", "test_procs", {}, "must include a request action"),
        ("config", "test_procs", {"action": "columns"}, "only the 'table' registry"),
    ],
    ids=[
        "bad-json",
        "not-object",
        "bad-constraint",
        "unknown-table",
        "unknown-action",
        "no-action",
        "unknown-registry",
    ],
)
def test_bad_requests_answer_code_1(
    runtime: ExtensionRuntime, registry: str, item: str, request_: dict[str, str], needle: str
) -> None:
    with ext_client(runtime) as c:
        status, rows = c.call(registry, item, request_)
        assert status.code == 1 and rows == []
        assert needle in status.message
        assert item in status.message
        assert c.ping().ok


def test_list_as_empty_string_and_op_as_string_are_accepted(
    runtime: ExtensionRuntime, tables: dict[str, BoundTable]
) -> None:
    context = (
        '{"constraints":[{"name":"pid","list":[{"op":"2","expr":"2"}],"affinity":"BIGINT"},'
        '{"name":"name","list":"","affinity":"TEXT"}],"colsUsed":["pid"],"colsUsedBitset":1}'
    )
    with ext_client(runtime) as c:
        status, rows = c.call("table", "test_procs", {"action": "generate", "context": context})
    assert status.ok
    assert rows == [{"pid": "2", "name": "kthreadd", "uid": "0", "score": "", "secret": "s2"}]


def test_write_actions_answer_readonly(runtime: ExtensionRuntime) -> None:
    with ext_client(runtime) as c:
        for action in ("insert", "update", "delete"):
            status, rows = c.call("table", "test_procs", {"action": action})
            assert status.ok and rows == [{"status": "readonly"}]


def test_reregisters_when_the_core_drops_it(core: OsqueryCore, runtime: ExtensionRuntime) -> None:
    old = runtime.uuid
    assert old is not None and core.drop_extension(old)
    deadline = time.monotonic() + 5
    while runtime.uuid in (None, old) and time.monotonic() < deadline:
        time.sleep(0.05)
    new = runtime.uuid
    assert new is not None and new != old
    assert list(core.extensions()) == [new]
    assert not os.path.exists(f"{core.socket_path}.{old}")
    assert len(core.query("SELECT * FROM test_procs")) == 3


def test_shutdown_request_stops_the_runtime(core: OsqueryCore, runtime: ExtensionRuntime) -> None:
    path = runtime.extension_socket
    assert path is not None
    with ext_client(runtime) as c:
        c.shutdown()
    assert runtime.join(5.0) == 0
    assert not os.path.exists(path)


def test_stop_deregisters_and_removes_the_socket(
    core: OsqueryCore, runtime: ExtensionRuntime
) -> None:
    path = runtime.extension_socket
    assert path is not None
    runtime.stop()
    assert runtime.join(5.0) == 0
    assert core.extensions() == {}
    assert not os.path.exists(path)


def test_stale_socket_is_replaced_but_files_are_not(tmp_path: object) -> None:
    d = tempfile.mkdtemp(prefix="re-st-", dir="/tmp")
    try:
        stale = os.path.join(d, "s")
        s = socket.socket(socket.AF_UNIX)
        s.bind(stale)
        s.close()
        remove_stale_socket(stale)
        assert not os.path.exists(stale)
        regular = os.path.join(d, "f")
        with open(regular, "w") as f:
            f.write("x")
        with pytest.raises(FileExistsError, match="not a socket"):
            remove_stale_socket(regular)
        assert os.path.exists(regular)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_garbage_on_the_socket_ends_only_that_connection(runtime: ExtensionRuntime) -> None:
    path = runtime.extension_socket
    assert path is not None
    for junk in (b"\x00" * 64, b"GET / HTTP/1.0\r\n\r\n", b"\x80\x01\x00\x01\x00\x00\x00\xff"):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect(path)
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            s.recv(1024)  # whatever comes back, the connection then ends
        s.close()
    with ext_client(runtime) as c:
        assert c.ping().ok


def test_connections_beyond_the_cap_are_served_and_idle_ones_closed_sooner(sock: str) -> None:
    from osquery.extensions import Extension

    from readegress.osquery.handler import TableExtensionHandler
    from readegress.osquery.server import ThriftUnixServer

    calls = TableCalls(make_tables(), timeout=0.5)
    server = ThriftUnixServer(
        Extension.Processor(TableExtensionHandler(calls)),
        max_connections=1,
        busy_idle_timeout=0.3,
        name="capped",
    )
    server.start(sock)
    try:
        with ExtensionClient(sock, max_idle=1) as holder:
            assert holder.ping().ok  # its connection stays open, at the cap
            with ExtensionClient(sock) as other:
                assert other.ping().ok  # served, not refused
            # At the cap, the holder's idle connection is closed after 0.3 s, not 60 s.
            deadline = time.monotonic() + 10
            while server.stats["idle_closed"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.stats["idle_closed"] >= 1
            assert holder.ping().ok  # the client reconnects
    finally:
        server.stop()
        calls.close()
    assert not os.path.exists(sock)


def test_registers_when_the_socket_path_is_near_the_length_limit(
    tables: dict[str, BoundTable],
) -> None:
    # <manager>.<uuid> fits in 107 bytes; <manager>.<pid>-<n>.tmp does not, so
    # the runtime binds after registering instead of renaming a temporary socket.
    d = tempfile.mkdtemp(prefix="re-long-", dir="/tmp")
    try:
        sub = os.path.join(d, "x" * (100 - len(d) - len("/osquery.em") - 1))
        os.mkdir(sub)
        path = os.path.join(sub, "osquery.em")
        assert len(path) == 100
        with OsqueryCore(path) as core:
            rt = ExtensionRuntime(path, tables, timeout=2.0, interval=0.2)
            rt.start()
            try:
                assert rt.wait_registered(5.0)
                assert rt.extension_socket == f"{path}.{rt.uuid}"
                assert len(core.query("SELECT * FROM test_procs")) == 3
            finally:
                rt.stop()
                assert rt.join(5.0) == 0
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- launch flags ----------------------------------------------------------------


def test_launch_flags_are_parsed_leniently() -> None:
    a = parse_extension_args(
        [
            "--socket",
            "/s.em",
            "--timeout",
            "5",
            "--interval=2",
            "--verbose",
            "--some-unknown-flag",
            "x",
            "--other=1",
            "-socket_extra",
            "stray",
        ]
    )
    assert (a.socket, a.timeout, a.interval, a.verbose) == ("/s.em", 5.0, 2.0, True)
    assert a.ignored == ["--some-unknown-flag", "x", "--other=1", "-socket_extra", "stray"]
    assert a.warnings == []
    b = parse_extension_args(
        ["-socket=/t.em", "--timeout", "soon", "--verbose=false", "--interval"]
    )
    assert (b.socket, b.timeout, b.interval, b.verbose) == ("/t.em", 3.0, 3.0, False)
    assert len(b.warnings) == 2
    c = parse_extension_args(["--extensions_socket", "/u.em", "--gone-after", "7"])
    assert (c.socket, c.gone_after) == ("/u.em", 7.0)
    assert parse_extension_args([]).socket == "/var/osquery/osquery.em"


# -- the extension as a child process ------------------------------------------------


TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
CHILD = (
    "import sys; sys.path.insert(0, {dir!r}); import test_runtime; "
    "sys.exit(test_runtime.child_main(sys.argv[1:]))"
)


def spawn(args: Sequence[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD.format(dir=TESTS_DIR), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"extension did not exit within {timeout}s:\n{err}")
    return proc.returncode, err


@pytest.fixture
def child_args(sock: str) -> list[str]:
    return ["--socket", sock, "--timeout", "1", "--interval", "0.3"]


def test_child_accepts_unknown_flags_serves_and_stops_on_sigterm(
    core: OsqueryCore, child_args: list[str]
) -> None:
    proc = spawn([*child_args, "--some-unknown-flag", "x", "--future_flag=1", "--verbose"])
    try:
        uuid = core.wait_for_extension("readegress", 10)
        with ManagerClient(core.socket_path) as m:
            assert m.query("SELECT name FROM test_procs WHERE pid = 2") == [{"name": "kthreadd"}]
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc, 10)
    finally:
        proc.kill()
    assert code == 0, err
    assert "stopped (signal SIGTERM)" in err
    assert core.extensions() == {}  # it deregistered
    assert not os.path.exists(core.extension_socket(uuid))


def test_child_reregisters_after_the_core_restarts(
    core: OsqueryCore, child_args: list[str]
) -> None:
    proc = spawn(child_args)
    try:
        first = core.wait_for_extension("readegress", 10)
        core.stop()
        time.sleep(0.5)  # the extension sees the core gone
        core.start()
        second = core.wait_for_extension("readegress", 10)
        assert second != first
        assert core.query("SELECT pid FROM test_procs WHERE pid = 1") == [{"pid": "1"}]
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc, 10)
    finally:
        proc.kill()
    assert code == 0, err
    assert err.count("unreachable") == 1  # logged once, not per retry
    assert "registering again" in err


def test_child_exits_cleanly_once_the_core_is_gone_for_good(
    core: OsqueryCore, child_args: list[str]
) -> None:
    proc = spawn(child_args)
    try:
        uuid = core.wait_for_extension("readegress", 10)
        core.stop()
        gone = time.monotonic()
        # timeout 1 s, interval 0.3 s: gone_after = max(2 * 1, 3 * 0.3, 1) = 2 s.
        code, err = finish(proc, 10)
        elapsed = time.monotonic() - gone
    finally:
        proc.kill()
    assert code == 0, err
    assert 1.5 < elapsed < 6, err
    assert "gone for 2s; exiting" in err
    assert not os.path.exists(core.extension_socket(uuid))


def test_child_exits_when_the_core_asks_it_to(core: OsqueryCore, child_args: list[str]) -> None:
    proc = spawn(child_args)
    try:
        core.wait_for_extension("readegress", 10)
        asked = time.monotonic()
        core.stop(shutdown_extensions=True)
        code, err = finish(proc, 10)
    finally:
        proc.kill()
    assert code == 0, err
    assert time.monotonic() - asked < 1.5
    assert "requested shutdown" in err


def test_second_instance_is_refused_as_a_duplicate(
    core: OsqueryCore, child_args: list[str]
) -> None:
    first = spawn(child_args)
    try:
        core.wait_for_extension("readegress", 10)
        second = spawn(child_args)
        code, err = finish(second, 10)
        assert code == 1, err
        assert "Duplicate extension registered" in err
        assert first.poll() is None
        assert len(core.extensions()) == 1
    finally:
        first.kill()
        first.wait()


def test_child_exits_1_when_no_core_answers(sock: str) -> None:
    t0 = time.monotonic()
    code, err = finish(spawn(["--socket", sock, "--timeout", "0.5"]), 10)
    assert code == 1, err
    assert "no osquery core answered" in err
    assert time.monotonic() - t0 < 5


# -- the real CLI, end to end -------------------------------------------------------


def _cli_missing() -> Optional[str]:
    if importlib.util.find_spec("readegress.cli") is None:
        return "readegress.cli is not written yet"
    try:
        specs = load_specs()
    except Exception as e:  # any reason the specs cannot be loaded yet
        return f"table specs cannot be loaded yet: {e}"
    missing = {"socket_bytes", "process_net_bytes"} - set(specs)
    return f"table specs not written yet: {sorted(missing)}" if missing else None


@pytest.mark.skipif(_cli_missing() is not None, reason=str(_cli_missing()))
def test_cli_extension_serves_the_real_tables(core: OsqueryCore) -> None:
    specs = load_specs()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "readegress",
            "extension",
            "--socket",
            core.socket_path,
            "--timeout",
            "3",
            "--interval",
            "1",
            "--some-unknown-flag",
            "x",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    peer, _ = listener.accept()
    try:
        client.sendall(b"x" * 4096)
        assert peer.recv(8192)
        core.wait_for_extension("readegress", 15)
        with ManagerClient(core.socket_path, timeout=15) as m:
            for table in ("socket_bytes", "process_net_bytes"):
                visible = [c for c in specs[table].columns if not c.hidden]
                assert m.get_query_columns(f"SELECT * FROM {table}") == [
                    (c.name, c.type) for c in visible
                ]
            me = os.getpid()
            deadline = time.monotonic() + 10
            rows: list[dict[str, str]] = []
            while time.monotonic() < deadline:
                rows = m.query(f"SELECT * FROM socket_bytes WHERE pid = {me}")
                if any(r.get("remote_port") == str(port) for r in rows):
                    break
                time.sleep(0.5)
            assert any(r.get("remote_port") == str(port) for r in rows), rows
            assert set(rows[0]) == {c.name for c in specs["socket_bytes"].columns if not c.hidden}
            per_process = m.query(f"SELECT pid FROM process_net_bytes WHERE pid = {me}")
            assert per_process == [{"pid": str(me)}]
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc, 15)
        assert code == 0, err
    finally:
        proc.kill()
        for s in (client, peer, listener):
            s.close()
