"""Deployment artefacts: the single-file ``readegress.ext``, the ``.deb``, ``install.sh``,
and the command-line conventions (``query --csv``/``--line``, ``extension --help``, exit 2
for config errors).

``install/build.sh`` is run once per module into a temp directory. The ``.ext``
is copied alone into an empty directory and run by the host's ``python3``
with ``-I -S`` (no site-packages: only what the zip vendors) against the test
osquery core. The ``.deb`` is installed, reinstalled, removed and purged by
``dpkg --root`` in a throwaway root (maintainer scripts run chrootless and
honour ``$DPKG_ROOT``). ``install.sh`` installs into a temp ``--prefix``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from readegress.cli import print_csv, print_lines
from readegress.ext import default_config
from readegress.testing import OsqueryCore

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0
HOST_PYTHON = "/usr/bin/python3"
DPKG = shutil.which("dpkg")
DPKG_DEB = shutil.which("dpkg-deb")


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def built() -> Iterator[Path]:
    out = Path(tempfile.mkdtemp(prefix="re-dist-"))
    try:
        r = run(
            "bash",
            str(ROOT / "install" / "build.sh"),
            "--python",
            sys.executable,
            "--out",
            str(out),
            *([] if DPKG_DEB else ["--no-deb"]),
        )
        assert r.returncode == 0, r.stderr
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture
def bare_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="re-bare-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- the .ext -------------------------------------------------------------------


def test_ext_is_a_pure_python_zipapp_without_fleet_side_extras(built: Path) -> None:
    ext = built / "readegress.ext"
    assert stat.S_IMODE(ext.stat().st_mode) == 0o755
    assert ext.read_bytes().startswith(b"#!/usr/bin/python3 -I\n")
    names = zipfile.ZipFile(ext).namelist()
    assert "__main__.py" in names and "readegress/ext.py" in names
    assert "readegress/detect/default.toml" in names
    assert {n for n in names if n.startswith("readegress/specs/") and n.endswith(".toml")} == {
        f"readegress/specs/{p.name}" for p in (ROOT / "tables").glob("*.toml")
    }
    tops = {n.split("/")[0] for n in names}
    # osquery 3.1.1's bindings import future; tomli serves Python 3.9 and 3.10 hosts.
    assert {"thrift", "osquery", "future", "tomli"} <= tops
    for absent in ("apsw", "psutil", "duckdb", "pyspark", "orjson"):
        assert absent not in tops
    assert not [n for n in names if n.endswith((".so", ".pyd"))]


@pytest.mark.skipif(not os.access(HOST_PYTHON, os.X_OK), reason=f"{HOST_PYTHON} not found")
def test_ext_alone_in_an_empty_directory_registers_with_the_core(
    built: Path, bare_dir: Path, sock: str
) -> None:
    ext = bare_dir / "readegress.ext"
    shutil.copy(built / "readegress.ext", ext)
    assert sorted(os.listdir(bare_dir)) == ["readegress.ext"]
    state = bare_dir / "state"
    with OsqueryCore(sock) as core:
        # -S: no site-packages at all, so every import comes from the zip.
        proc = subprocess.Popen(
            [
                HOST_PYTHON,
                "-I",
                "-S",
                str(ext),
                "--socket",
                sock,
                "--timeout",
                "5",
                "--interval",
                "0.5",
                "--state-dir",
                str(state),
                "--some-future-flag=1",
            ],
            cwd=bare_dir,
            env={"PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            core.wait_for_extension("readegress", 20)
            rows = core.query("SELECT name, status FROM readegress_health WHERE name = 'version'")
            assert rows and rows[0]["status"] in ("ok", "info")
            count = core.query("SELECT count(*) AS n FROM socket_bytes")
            assert int(count[0]["n"]) >= 0
            assert core.query("SELECT * FROM read_then_egress") == []
            # The shipped default config is read from inside the zip.
            cfg = core.query("SELECT status, detail FROM readegress_health WHERE name = 'config'")
            if not os.path.exists("/etc/readegress/readegress.toml"):
                assert cfg[0]["status"] == "ok"
                assert cfg[0]["detail"].startswith(f"{ext}/readegress/detect/default.toml")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    # The shebang (the way osqueryd runs it) works too; subcommands run from the .ext.
    r = run(str(ext), "--help")
    assert r.returncode == 0 and "usage: readegress extension" in r.stdout
    r = run(str(ext), "file-paths")
    assert r.returncode == 0 and '"file_paths"' in r.stdout
    r = run(str(ext), "query", "SELECT 1")
    assert r.returncode == 2 and "apsw" in r.stderr


def test_ext_finds_its_config_under_its_prefix(tmp_path: Path) -> None:
    (tmp_path / "opt" / "readegress").mkdir(parents=True)
    ext = tmp_path / "opt" / "readegress" / "readegress.ext"
    ext.write_text("")
    assert default_config(str(ext)) in (None, "/etc/readegress/readegress.toml")
    (tmp_path / "etc" / "readegress").mkdir(parents=True)
    cfg = tmp_path / "etc" / "readegress" / "readegress.toml"
    cfg.write_text("")
    assert default_config(str(ext)) == str(cfg)


# -- the .deb ---------------------------------------------------------------------


def dpkg_root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
        (r / d).mkdir(parents=True)
    (r / "var/lib/dpkg/status").write_text("")
    return r


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Chrootless: the throwaway root has no shell of its own; the scripts use $DPKG_ROOT.
    return run(
        DPKG or "dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", *args
    )


@pytest.mark.skipif(not (DPKG and DPKG_DEB), reason="dpkg/dpkg-deb not found")
@pytest.mark.skipif(not IS_ROOT, reason="dpkg --root installs root-owned files: needs root")
def test_deb_installs_reinstalls_removes_and_purges_in_a_throwaway_root(
    built: Path, tmp_path: Path
) -> None:
    debs = list(built.glob("readegress_*_all.deb"))
    assert len(debs) == 1
    deb = debs[0]
    info = run(DPKG_DEB or "dpkg-deb", "--field", str(deb), "Package", "Architecture")
    assert info.stdout.split() == ["Package:", "readegress", "Architecture:", "all"]
    contents = run(DPKG_DEB or "dpkg-deb", "--contents", str(deb)).stdout
    assert "-rwxr-xr-x root/root" in next(
        ln for ln in contents.splitlines() if ln.endswith("./usr/lib/readegress/readegress.ext")
    )
    root = dpkg_root(tmp_path)
    r = dpkg(root, "-i", str(deb))
    assert r.returncode == 0, r.stderr
    ext = root / "usr/lib/readegress/readegress.ext"
    st = ext.stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
    assert (built / "readegress.ext").read_bytes() == ext.read_bytes()
    load = root / "etc/osquery/extensions.load"
    assert load.read_text().splitlines() == ["/usr/lib/readegress/readegress.ext"]
    assert stat.S_IMODE((root / "var/lib/readegress").stat().st_mode) == 0o700
    assert (root / "etc/readegress/readegress.toml").read_text() == (
        ROOT / "extension/readegress/detect/default.toml"
    ).read_text()
    assert (root / "usr/share/readegress/osquery.flags").exists()
    assert "Status: install ok installed" in dpkg(root, "-s", "readegress").stdout

    load.write_text("/opt/other/other.ext\n" + load.read_text())
    assert dpkg(root, "-i", str(deb)).returncode == 0  # reinstall: still one line
    assert load.read_text().splitlines() == [
        "/opt/other/other.ext",
        "/usr/lib/readegress/readegress.ext",
    ]

    r = dpkg(root, "-r", "readegress")
    assert r.returncode == 0, r.stderr
    assert not ext.exists()
    assert load.read_text().splitlines() == ["/opt/other/other.ext"]
    assert (root / "etc/readegress/readegress.toml").exists()  # a conffile stays until purge
    assert (root / "var/lib/readegress").exists()

    r = dpkg(root, "--purge", "readegress")
    assert r.returncode == 0, r.stderr
    assert not (root / "etc/readegress/readegress.toml").exists()
    assert not (root / "var/lib/readegress").exists()
    assert "readegress" not in dpkg(root, "-l").stdout.split()


# -- install.sh ---------------------------------------------------------------------


def install_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return run("bash", str(ROOT / "install" / "install.sh"), *args)


def test_install_sh_help_and_bad_options() -> None:
    r = install_sh("--help")
    assert r.returncode == 0
    for word in ("--prefix", "--uninstall", "--purge", "--ext", "--no-autoload"):
        assert word in r.stdout
    assert install_sh("--bogus").returncode == 2
    assert install_sh("--prefix", "relative/dir").returncode == 2
    assert install_sh("--purge").returncode == 2


@pytest.mark.skipif(not IS_ROOT, reason="install.sh installs root-owned files: needs root")
def test_install_sh_honours_one_prefix_is_idempotent_and_uninstalls(
    built: Path, tmp_path: Path
) -> None:
    prefix = tmp_path / "p"
    ext_src = str(built / "readegress.ext")
    r = install_sh("--prefix", str(prefix), "--ext", ext_src)
    assert r.returncode == 0, r.stderr
    ext = prefix / "opt/readegress/readegress.ext"
    cfg = prefix / "etc/readegress/readegress.toml"
    load = prefix / "etc/osquery/extensions.load"
    state = prefix / "var/lib/readegress"
    assert ext.read_bytes() == Path(ext_src).read_bytes()
    assert stat.S_IMODE(ext.stat().st_mode) == 0o755 and ext.stat().st_uid == 0
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert f'state_dir = "{state}"' in cfg.read_text()
    assert load.read_text().splitlines() == [str(ext)]
    assert f"--extensions_autoload={load}" in r.stdout
    assert default_config(str(ext)) == str(cfg)
    # Everything lives under the prefix.
    assert sorted(p.name for p in prefix.iterdir()) == ["etc", "opt", "var"]

    before = {p: p.stat().st_mtime_ns for p in prefix.rglob("*") if p.is_file()}
    r2 = install_sh("--prefix", str(prefix), "--ext", ext_src)
    assert r2.returncode == 0 and "installed " + str(ext) not in r2.stdout.replace(
        "readegress installed", ""
    )
    assert {p: p.stat().st_mtime_ns for p in prefix.rglob("*") if p.is_file()} == before
    assert load.read_text().splitlines() == [str(ext)]

    cfg.write_text(cfg.read_text() + "\n# local edit\n")
    r = install_sh("--uninstall", "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr
    assert not ext.exists() and load.read_text() == ""
    assert "# local edit" in cfg.read_text() and state.exists()
    r = install_sh("--uninstall", "--purge", "--prefix", str(prefix))
    assert r.returncode == 0 and not cfg.exists() and not state.exists()
    assert install_sh("--uninstall", "--purge", "--prefix", str(prefix)).returncode == 0


# -- command-line conventions --------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "readegress", *args)


def test_query_csv_and_line_modes_like_osqueryi() -> None:
    sql = "SELECT 1 AS a, 'x|y' AS bb, NULL AS c UNION ALL SELECT 22, 'q\"r', 'z'"
    r = cli("query", "--csv", sql)
    assert r.returncode == 0, r.stderr
    assert r.stdout == 'a|bb|c\n1|"x|y"|\n22|"q""r"|z\n'
    r = cli("query", "--line", sql)
    assert r.stdout == ' a = 1\nbb = x|y\n c = \n\n a = 22\nbb = q"r\n c = z\n'
    r = cli("query", "--csv", "--separator", ",", "SELECT 'a,b' AS x")
    assert r.stdout == 'x\n"a,b"\n'
    assert cli("query", "--csv", "--json", "SELECT 1").returncode == 2


def test_print_helpers_with_no_rows() -> None:
    import io

    out = io.StringIO()
    print_csv(["a", "b"], [], out)
    print_lines(["a"], [], out)
    assert out.getvalue() == "a|b\n"


def test_extension_help_prints_help_and_exits_0() -> None:
    for flag in ("--help", "-h"):
        r = cli("extension", flag)
        assert r.returncode == 0 and "usage: readegress extension --socket PATH" in r.stdout
        assert "--state-dir" in r.stdout


def test_config_errors_exit_2_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("window_seconds = 30\nthreshold = 'high'\n")
    bad.chmod(0o644)
    for args in (("query", "--config", str(bad), "SELECT 1"), ("file-paths", "--config", str(bad))):
        r = cli(*args)
        assert r.returncode == 2, args
        assert f"{bad}:2:" in r.stderr, r.stderr


# -- a real osqueryd autoloading the built .ext (skipped where osquery is absent) -----

OSQUERYD = os.environ.get("OSQUERYD") or shutil.which("osqueryd")


@pytest.mark.skipif(not OSQUERYD, reason="osqueryd not found: set OSQUERYD or put it on PATH")
def test_real_osqueryd_autoloads_the_built_ext_and_doctor_agrees(
    built: Path, bare_dir: Path
) -> None:
    import time

    from readegress.doctor import DoctorPaths, check_autoload
    from readegress.osquery import ManagerClient, OsqueryUnavailable

    assert OSQUERYD
    ext_dir = bare_dir / "ext"
    ext_dir.mkdir(mode=0o755)
    ext = ext_dir / "readegress.ext"
    shutil.copy(built / "readegress.ext", ext)
    ext.chmod(0o755)
    load = bare_dir / "extensions.load"
    load.write_text(f"{ext}\n")
    assert [
        c for c in check_autoload(DoctorPaths(extensions_load=str(load))) if c.status != "ok"
    ] == []
    (bare_dir / "osquery.conf").write_text("{}\n")
    sock = str(bare_dir / "osquery.em")
    daemon = subprocess.Popen(
        [
            OSQUERYD,
            f"--extensions_autoload={load}",
            f"--extensions_socket={sock}",
            "--extensions_timeout=10",
            "--extensions_interval=1",
            f"--database_path={bare_dir / 'db'}",
            f"--pidfile={bare_dir / 'osqueryd.pid'}",
            f"--config_path={bare_dir / 'osquery.conf'}",
            f"--logger_path={bare_dir}",
            "--disable_events=true",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with ManagerClient(sock, timeout=10) as m:
            deadline = time.monotonic() + 40
            names: set[str] = set()
            while "readegress" not in names and time.monotonic() < deadline:
                assert daemon.poll() is None
                with contextlib.suppress(OsqueryUnavailable):
                    names = {i.name for i in m.extensions().values()}
                time.sleep(0.5)
            assert "readegress" in names
            assert m.query("SELECT count(*) AS n FROM socket_bytes")[0]["n"].isdigit()
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


# -- the wheel --------------------------------------------------------------------


def test_wheel_carries_the_compiled_accelerator_and_it_loads(built: Path, tmp_path: Path) -> None:
    wheels = list(built.glob("readegress-*.whl"))
    assert len(wheels) == 1, sorted(p.name for p in built.iterdir())
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "readegress/cli.py" in names and "readegress/speedups.py" in names
    assert not [n for n in names if n.endswith(".c")]
    compiled = [n for n in names if n.startswith("readegress/_speedups") and n.endswith(".so")]
    if not shutil.which("cc") and not shutil.which("gcc"):
        pytest.skip("no C compiler here: the wheel was built without the accelerator")
    assert compiled, names
    # A platform wheel (the compiled module ties it to this Python and machine).
    assert not wheels[0].name.endswith("-none-any.whl")
    zipfile.ZipFile(wheels[0]).extractall(tmp_path)
    r = run(
        sys.executable,
        "-c",
        "import readegress.speedups as s, readegress._speedups as c;"
        " assert callable(c.scan_results) and callable(c.count_newlines);"
        " print(s.native is c, c.__file__)",
        env={"PYTHONPATH": str(tmp_path), "PATH": os.environ.get("PATH", "")},
        cwd=str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("True " + str(tmp_path)), r.stdout
