"""Issue 2 acceptance: socket_bytes and process_net_bytes on real loopback traffic,
through `readegress query` (embedded engine) and through osquery's Thrift protocol."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

import loopback
from readegress.osquery import ExtensionRuntime
from readegress.osquery.client import ManagerClient
from readegress.tables.base import TableCalls, TableEnv, load_tables
from readegress.testing.core import OsqueryCore

N = 10_000_000
FAMILIES = [pytest.param(socket.AF_INET, id="ipv4"), pytest.param(socket.AF_INET6, id="ipv6")]
REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "readegress", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def rows_by_pid_fd(rows: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    return {(int(r["pid"]), int(r["fd"])): r for r in rows if r["pid"] not in (None, "")}


@pytest.mark.parametrize("family", FAMILIES)
def test_query_cli_counts_a_10_mb_transfer_exactly(family: int) -> None:
    with loopback.server(family) as srv, loopback.client(srv) as c:
        c.send(N)
        assert srv.wait_received(N) == N
        sql = (
            "SELECT pid, fd, family, state, bytes_sent, bytes_received, bytes_acked, remote_class"
            f" FROM socket_bytes WHERE pid IN ({c.pid}, {srv.pid})"
        )
        out = cli("query", "--json", sql)
        assert out.returncode == 0, out.stderr
        rows = rows_by_pid_fd([json.loads(line) for line in out.stdout.splitlines()])
        sender = rows[(c.pid, c.fd)]
        receiver = rows[(srv.pid, srv.accepted())]
        assert sender["bytes_sent"] == N
        assert sender["bytes_acked"] == N + 1  # the SYN counts on the connecting side
        assert receiver["bytes_received"] == N
        assert sender["family"] == family and sender["state"] == "ESTABLISHED"
        assert sender["remote_class"] == "loopback"
        # The listener is there too, with its owner.
        assert (srv.pid, srv.listen_fd) in rows


@pytest.fixture
def extension(sock: str) -> Iterator[tuple[OsqueryCore, ManagerClient, TableEnv]]:
    """The real tables served over Thrift to the test core, polling in the background
    (60 s interval: a test decides when polls happen by querying)."""
    env = TableEnv(background=True, poll_interval=60.0)
    calls = TableCalls(load_tables(env), timeout=20)
    with OsqueryCore(sock) as core:
        rt = ExtensionRuntime(core.socket_path, calls, timeout=3.0, interval=1.0)
        rt.start()
        assert rt.wait_registered(10)
        try:
            with ManagerClient(core.socket_path, timeout=30) as m:
                yield core, m, env
        finally:
            rt.stop()
            rt.join(10)
            calls.close()
            env.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_thrift_counts_a_10_mb_transfer_exactly(
    family: int, extension: tuple[OsqueryCore, ManagerClient, TableEnv]
) -> None:
    _, m, _ = extension
    with loopback.server(family) as srv, loopback.client(srv) as c:
        c.send(N)
        assert srv.wait_received(N) == N
        rows = rows_by_pid_fd(
            m.query(
                f"SELECT pid, fd, bytes_sent, bytes_received FROM socket_bytes"
                f" WHERE pid IN ({c.pid}, {srv.pid})"
            )
        )
        # Over Thrift every value is a string, as osquery delivers them.
        assert rows[(c.pid, c.fd)]["bytes_sent"] == str(N)
        assert rows[(srv.pid, srv.accepted())]["bytes_received"] == str(N)
        per_process = m.query(
            f"SELECT pid, live_bytes_sent, total_bytes_sent FROM process_net_bytes"
            f" WHERE pid = {c.pid}"
        )
        assert per_process == [
            {"pid": str(c.pid), "live_bytes_sent": str(N), "total_bytes_sent": str(N)}
        ]


def test_connection_closed_between_polls_is_in_closed_totals(
    extension: tuple[OsqueryCore, ManagerClient, TableEnv],
) -> None:
    _, m, env = extension
    with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as c:
        # A poll sees the idle connection and its owner...
        seen = m.query(f"SELECT fd FROM socket_bytes WHERE pid = {c.pid}")
        assert {"fd": str(c.fd)} in seen
        polls = env.monitor.stats()["polls"]
        # ...then it sends 3,000,000 bytes and closes before the next poll.
        c.send(3_000_000)
        c.close_connection()
        assert srv.wait_received(3_000_000) == 3_000_000
        deadline = time.monotonic() + 10
        while env.monitor.stats()["destroy_events"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert env.monitor.stats()["polls"] == polls, "a poll ran in between: not the scenario"
        rows = m.query(
            "SELECT open_sockets, closed_sockets, closed_bytes_sent, total_bytes_sent"
            f" FROM process_net_bytes WHERE pid = {c.pid}"
        )
        assert len(rows) == 1, rows
        r = rows[0]
        assert int(r["closed_sockets"]) >= 1
        assert int(r["closed_bytes_sent"]) == 3_000_000
        assert int(r["total_bytes_sent"]) == 3_000_000


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC pid FROM socket_bytes", "syntax error"),
        ("SELECT * FROM no_such_table", "no such table: no_such_table"),
    ],
)
def test_query_errors_are_one_clear_line(sql: str, message: str) -> None:
    out = cli("query", sql)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("readegress: error:")
    assert out.stdout == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_non_root_sees_what_it_can_and_warns_once() -> None:
    # The child runs as nobody and may not read the checkout: give it the specs.
    shared = Path(tempfile.mkdtemp(prefix="re-nobody-", dir="/tmp"))
    os.chmod(shared, 0o755)
    specs = shared / "tables"
    shutil.copytree(REPO / "tables", specs)
    import readegress.cli as cli_mod

    # Run the query path once as root so every lazily imported module (the
    # interpreter's own library may be unreadable to nobody) is loaded before
    # the child drops privileges.
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert cli_mod.main(["query", "SELECT count(*) FROM socket_bytes"]) == 0

    # A socket of another (root) process; not the test's own, which the forked
    # child would inherit and rightly be shown as holding.
    root_peer = loopback.Server(socket.AF_INET, accept=False)
    port = root_peer.port

    def as_nobody() -> dict[str, Any]:
        os.environ["READEGRESS_TABLES"] = str(specs)
        mine = socket.create_server(("127.0.0.1", 0))  # a socket nobody owns
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = cli_mod.main(
                [
                    "query",
                    "--json",
                    "SELECT pid, local_port FROM socket_bytes"
                    f" WHERE local_port IN ({port}, {mine.getsockname()[1]})",
                ]
            )
        mine_port = mine.getsockname()[1]
        mine.close()
        return {
            "rc": rc,
            "out": out.getvalue(),
            "err": err.getvalue(),
            "mine": mine_port,
            "me": os.getpid(),
        }

    try:
        res = loopback.run_as_user(as_nobody)
    finally:
        root_peer.kill()
        shutil.rmtree(shared, ignore_errors=True)
    assert res["rc"] == 0, res
    rows = [json.loads(x) for x in res["out"].splitlines()]
    by_port = {r["local_port"]: r["pid"] for r in rows}
    assert by_port[port] is None, "root's socket must stay without owner, never guessed"
    assert by_port[res["mine"]] == res["me"]
    warnings = res["err"].strip().splitlines()
    assert len(warnings) == 1 and "not root" in warnings[0], res["err"]


def _query_process(*args: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "readegress", "query", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
    )


def test_query_process_writes_every_row_before_it_exits() -> None:
    """``readegress query`` as its own process (no GC, no interpreter teardown):
    every row reaches a pipe, a bad query still exits 1 with its message, and a
    reader that stops early is no error."""
    with (
        socket.create_server(("127.0.0.1", 0)) as srv,
        socket.create_connection(srv.getsockname()) as c,
    ):
        peer, _ = srv.accept()
        with peer:
            port = c.getsockname()[1]
            proc = _query_process("--json", "SELECT * FROM socket_bytes")
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            rows = [json.loads(line) for line in out.decode().splitlines()]
            assert any(r["local_port"] == port and r["pid"] == os.getpid() for r in rows)
            want = len(rows)
            proc = _query_process("--csv", "SELECT * FROM socket_bytes")
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert len(out.decode().splitlines()) >= want  # header + rows (+/- churn)
    bad = _query_process("SELECT nope FROM socket_bytes")
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 1 and b"nope" in err
    # A reader that closes the pipe after one line.
    r, w = os.pipe()
    early = _query_process(
        "--json",
        "WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n"
        " WHERE value < 200000) SELECT value FROM n",
        stdout=w,
    )
    os.close(w)
    with os.fdopen(r, "rb") as reader:
        assert json.loads(reader.readline()) == {"value": 1}
    _, err = early.communicate(timeout=60)
    assert early.returncode == 0 and b"Traceback" not in err
