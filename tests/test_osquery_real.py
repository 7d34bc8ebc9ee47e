"""The extension under a real osqueryi/osqueryd (skipped when osquery is absent).

osquery is found through ``OSQUERYI``/``OSQUERYD`` or ``PATH``. Each test
runs the real ``readegress extension`` through a ``.ext`` wrapper script
(``#!/bin/sh`` + ``exec python -m readegress extension "$@"``), which records
its pid so the test can check that the extension goes away with osquery.

- osqueryi loads one extension ad hoc with ``--extension PATH`` (no ``.ext``
  or ownership check) and, with ``--extensions_require``, waits for it before
  running the query given on its command line; ``--json`` prints the rows.
- osqueryd autoloads extensions listed in ``--extensions_autoload``; each
  path must end in ``.ext``, be a regular executable file owned by root or
  the running user, not world-writable, in a directory without the sticky
  bit. The test then queries through the daemon's extension socket with
  :class:`ManagerClient`, as any extension or tool would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Optional

import pytest

from readegress.osquery import ManagerClient, OsqueryCallError, OsqueryUnavailable
from readegress.tables.spec import TableSpec, load_specs

TABLES = ("socket_bytes", "process_net_bytes")


def _find(env: str, name: str) -> Optional[str]:
    path = os.environ.get(env) or shutil.which(name)
    return path if path and os.access(path, os.X_OK) else None


OSQUERYI = _find("OSQUERYI", "osqueryi")
OSQUERYD = _find("OSQUERYD", "osqueryd")
NO_OSQUERYI = "osqueryi not found: set OSQUERYI or put osqueryi on PATH"
NO_OSQUERYD = "osqueryd not found: set OSQUERYD or put osqueryd on PATH"


@pytest.fixture
def workdir() -> Iterator[str]:
    # Short, private and without the sticky bit: osquery's autoload rules and
    # the 107-byte limit of UNIX socket paths both apply here.
    d = tempfile.mkdtemp(prefix="re-osq-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def write_ext(directory: str) -> tuple[str, str]:
    """A ``readegress.ext`` launcher (mode 0755) and the file it writes its pid to."""
    ext = os.path.join(directory, "readegress.ext")
    pidfile = os.path.join(directory, "extension.pid")
    with open(ext, "w") as f:
        f.write(
            "#!/bin/sh\n"
            f"echo $$ > '{pidfile}'\n"
            f"exec '{sys.executable}' -m readegress extension \"$@\"\n"
        )
    os.chmod(ext, 0o755)
    return ext, pidfile


def visible_columns(spec: TableSpec) -> list[tuple[str, str]]:
    return [(c.name, c.type) for c in spec.columns if not c.hidden]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): read its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pidfile: str, timeout: float) -> Optional[int]:
    """The extension's pid if it is still running after ``timeout`` (then killed)."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        return pid
    return None


def osqueryi_json(ext: str, sock: str, sql: str) -> list[dict[str, str]]:
    assert OSQUERYI is not None
    proc = subprocess.run(
        [
            OSQUERYI,
            "--extension",
            ext,
            f"--extensions_socket={sock}",
            "--extensions_timeout=10",
            "--extensions_interval=1",
            "--extensions_require=readegress",
            "--disable_events=true",
            "--json",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, str]] = json.loads(proc.stdout)
    return rows


@pytest.mark.skipif(OSQUERYI is None, reason=NO_OSQUERYI)
def test_osqueryi_loads_the_extension_and_queries_both_tables(workdir: str) -> None:
    specs = load_specs()
    ext, pidfile = write_ext(workdir)
    sock = os.path.join(workdir, "shell.em")
    try:
        counts = osqueryi_json(
            ext,
            sock,
            "SELECT (SELECT count(*) FROM socket_bytes) AS sockets,"
            " (SELECT count(*) FROM process_net_bytes) AS processes,"
            " (SELECT count(*) FROM osquery_extensions WHERE name = 'readegress') AS loaded",
        )
        assert len(counts) == 1 and counts[0]["loaded"] == "1"
        assert int(counts[0]["sockets"]) >= 0 and int(counts[0]["processes"]) >= 0
        for table in TABLES:
            # osqueryi --json prints every column of a row, NULLs as "".
            for row in osqueryi_json(ext, sock, f"SELECT * FROM {table} LIMIT 3"):
                assert set(row) == {n for n, _ in visible_columns(specs[table])}
    finally:
        lingering = wait_gone(pidfile, 15)
    assert lingering is None, f"extension pid {lingering} outlived osqueryi by 15 s"


@pytest.mark.skipif(OSQUERYD is None, reason=NO_OSQUERYD)
def test_osqueryd_autoloads_the_extension_and_serves_queries(workdir: str) -> None:
    assert OSQUERYD is not None
    specs = load_specs()
    ext_dir = os.path.join(workdir, "extensions")
    os.mkdir(ext_dir, 0o755)
    ext, pidfile = write_ext(ext_dir)
    st = os.stat(ext)
    assert st.st_uid in (0, os.geteuid()) and not st.st_mode & stat.S_IWOTH
    autoload = os.path.join(workdir, "extensions.load")
    with open(autoload, "w") as f:
        f.write(ext + "\n")
    config = os.path.join(workdir, "osquery.conf")
    with open(config, "w") as f:
        f.write("{}\n")
    logs = os.path.join(workdir, "logs")
    os.mkdir(logs)
    sock = os.path.join(workdir, "osquery.em")
    daemon_log = open(os.path.join(workdir, "osqueryd.stderr"), "w+")  # noqa: SIM115
    daemon = subprocess.Popen(
        [
            OSQUERYD,
            f"--extensions_autoload={autoload}",
            f"--extensions_socket={sock}",
            "--extensions_require=readegress",
            "--extensions_timeout=10",
            "--extensions_interval=1",
            f"--database_path={os.path.join(workdir, 'db')}",
            f"--pidfile={os.path.join(workdir, 'osqueryd.pid')}",
            f"--config_path={config}",
            f"--logger_path={logs}",
            "--disable_events=true",
            "--verbose",
        ],
        stdout=subprocess.DEVNULL,
        stderr=daemon_log,
    )

    def daemon_output() -> str:
        daemon_log.flush()
        daemon_log.seek(0)
        return daemon_log.read()[-4000:]

    try:
        with ManagerClient(sock, timeout=10) as m:
            deadline = time.monotonic() + 40
            uuid: Optional[int] = None
            while uuid is None and time.monotonic() < deadline:
                assert daemon.poll() is None, daemon_output()
                with contextlib.suppress(OsqueryUnavailable):
                    uuid = next(
                        (u for u, i in m.extensions().items() if i.name == "readegress"), None
                    )
                if uuid is None:
                    time.sleep(0.5)
            assert uuid is not None, daemon_output()
            ext_sock = f"{sock}.{uuid}"
            assert stat.S_IMODE(os.lstat(ext_sock).st_mode) == 0o600
            for table in TABLES:
                assert m.get_query_columns(f"SELECT * FROM {table}") == visible_columns(
                    specs[table]
                )
                rows = m.query(f"SELECT * FROM {table} LIMIT 3")
                for row in rows:
                    assert set(row) == {n for n, _ in visible_columns(specs[table])}
            me = os.getpid()
            assert m.query(f"SELECT pid FROM process_net_bytes WHERE pid = {me}") in (
                [{"pid": str(me)}],
                [],  # a process without sockets may be left out
            )
            with pytest.raises(OsqueryCallError, match="may not be modified"):
                m.query("DELETE FROM socket_bytes")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        lingering = wait_gone(pidfile, 15)
        daemon_log.close()
    assert lingering is None, f"extension pid {lingering} outlived osqueryd by 15 s"
