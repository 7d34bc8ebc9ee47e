"""``readegress doctor``: each check fails for its own reason, with the exact fix.

Everything is real files in temp directories: an ``.ext`` with the mode,
owner, name or directory that breaks one autoload rule at a time, flagfiles,
a procfs tree standing in for an ``osqueryd``/``auditd``/``journald`` that
cannot be started here, osquery configs, readegress configs. fanotify and
sock_diag are probed for real, made to fail in a forked child (privileges
dropped; no file descriptors left).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from readegress.doctor import (
    FAIL,
    OK,
    WARN,
    Check,
    DoctorPaths,
    check_audit_owner,
    check_autoload,
    check_config_and_file_paths,
    check_fanotify,
    check_flags,
    check_sock_diag,
    exit_code,
    osquery_flags,
    parse_flag_args,
    resolve_paths,
    run_doctor,
)

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ROOT / "install" / "osquery.flags"
IS_ROOT = os.geteuid() == 0
NEEDS_ROOT = "needs root (file ownership and privilege drop)"


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def only_failing(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks if c.status in (WARN, FAIL)}


@pytest.fixture
def host(tmp_path: Path) -> DoctorPaths:
    """A good install: a listed 0755 root-owned .ext, in a directory without the sticky bit."""
    ext_dir = tmp_path / "opt" / "readegress"
    ext_dir.mkdir(parents=True)
    ext = ext_dir / "readegress.ext"
    ext.write_text(f"#!{sys.executable}\nprint('x')\n")
    ext.chmod(0o755)
    load = tmp_path / "extensions.load"
    load.write_text(f"# extensions\n{ext}\n")
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "netlink").write_text("sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode\n")
    return DoctorPaths(
        extensions_load=str(load),
        flagfile=str(FLAGS),
        osquery_config=str(tmp_path / "osquery.conf"),
        proc=str(proc),
        systemd=str(tmp_path / "systemd"),
        systemd_vendor=str(tmp_path / "systemd-vendor"),
    )


def ext_of(paths: DoctorPaths) -> Path:
    return Path(Path(paths.extensions_load).read_text().splitlines()[1])


# -- autoload rules -------------------------------------------------------------


def test_a_good_install_passes_every_autoload_rule(host: DoctorPaths) -> None:
    checks = check_autoload(host)
    names = {c.name for c in checks}
    assert {
        "autoload:listed",
        "autoload:suffix",
        "autoload:file",
        "autoload:owner",
        "autoload:mode",
        "autoload:world_writable",
        "autoload:directory",
        "autoload:interpreter",
    } <= names
    if IS_ROOT:
        assert only_failing(checks) == {}


def test_missing_autoload_file_fails(host: DoctorPaths) -> None:
    os.unlink(host.extensions_load)
    c = by_name(check_autoload(host))["autoload:listed"]
    assert c.status == FAIL and "No such file" in c.detail
    assert f"--extensions_autoload={host.extensions_load}" in c.fix


def test_ext_not_listed_fails_with_the_line_to_add(host: DoctorPaths) -> None:
    ext = ext_of(host)
    Path(host.extensions_load).write_text("/opt/other/other.ext\n")
    c = by_name(check_autoload(DoctorPaths(**{**host.__dict__, "ext": str(ext)})))
    assert c["autoload:listed"].status == FAIL
    assert c["autoload:listed"].fix == f"echo {ext} >> {host.extensions_load}"
    # Without --ext, nothing named readegress is listed at all.
    c2 = check_autoload(host)
    assert [x.name for x in c2] == ["autoload:listed"] and c2[0].status == FAIL


def test_wrong_suffix_fails(host: DoctorPaths) -> None:
    ext = ext_of(host)
    py = ext.with_name("readegress.py")
    ext.rename(py)
    Path(host.extensions_load).write_text(f"#\n{py}\n")
    failing = only_failing(check_autoload(host))
    assert set(failing) == {"autoload:suffix"}
    assert failing["autoload:suffix"].fix.startswith(f"mv {py} {py}.ext")


def test_not_a_regular_file_fails(host: DoctorPaths) -> None:
    ext = ext_of(host)
    ext.unlink()
    ext.mkdir()
    failing = only_failing(check_autoload(host))
    assert "autoload:file" in failing and "not a regular file" in failing["autoload:file"].detail


@pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT)
def test_owner_not_root_fails(host: DoctorPaths) -> None:
    ext = ext_of(host)
    os.chown(ext, 1000, 1000)
    failing = only_failing(check_autoload(host))
    assert set(failing) == {"autoload:owner"}
    assert failing["autoload:owner"].fix == f"chown root:root {ext}"


@pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT)
def test_symlink_owned_by_a_user_fails(host: DoctorPaths) -> None:
    ext = ext_of(host)
    link = ext.with_name("link-readegress.ext")
    link.symlink_to(ext)
    os.chown(link, 1000, 1000, follow_symlinks=False)
    Path(host.extensions_load).write_text(f"#\n{link}\n")
    failing = only_failing(check_autoload(host))
    assert set(failing) == {"autoload:file"} and "symlink" in failing["autoload:file"].detail


@pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT)
def test_not_executable_fails(host: DoctorPaths) -> None:
    ext_of(host).chmod(0o644)
    failing = only_failing(check_autoload(host))
    assert set(failing) == {"autoload:mode"}
    assert failing["autoload:mode"].fix == f"chmod 0755 {ext_of(host)}"


@pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT)
def test_world_writable_fails(host: DoctorPaths) -> None:
    ext_of(host).chmod(0o757)
    failing = only_failing(check_autoload(host))
    assert set(failing) == {"autoload:world_writable"}
    assert failing["autoload:world_writable"].fix == f"chmod o-w {ext_of(host)}"


@pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT)
def test_sticky_directory_fails(host: DoctorPaths) -> None:
    ext_of(host).parent.chmod(0o1777)
    failing = only_failing(check_autoload(host))
    assert (
        set(failing) == {"autoload:directory"} and "sticky" in failing["autoload:directory"].detail
    )


@pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT)
def test_missing_interpreter_fails(host: DoctorPaths) -> None:
    ext_of(host).write_text("#!/nonexistent/python3 -I\n")
    failing = only_failing(check_autoload(host))
    assert set(failing) == {"autoload:interpreter"}
    assert failing["autoload:interpreter"].value == "/nonexistent/python3"


# -- flags ----------------------------------------------------------------------


def fake_osqueryd(paths: DoctorPaths, pid: int, argv: list[str], comm: str = "osqueryd") -> None:
    d = Path(paths.proc) / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_flags_from_the_shipped_flagfile_are_all_ok(host: DoctorPaths) -> None:
    checks = check_flags(host)
    assert checks[0].value.startswith(str(FLAGS))
    assert only_failing(checks) == {}
    assert len([c for c in checks if c.name.startswith("flag:")]) >= 9


def test_flags_of_the_running_osqueryd_win_over_the_flagfile(
    host: DoctorPaths, tmp_path: Path
) -> None:
    partial = tmp_path / "partial.flags"
    lines = [ln for ln in FLAGS.read_text().splitlines() if "audit_allow_sockets" not in ln]
    partial.write_text("\n".join(lines) + "\n")
    fake_osqueryd(
        host,
        4242,
        ["/opt/osquery/bin/osqueryd", f"--flagfile={partial}", "--noaudit_show_partial_fim_events"],
    )
    checks = check_flags(host)
    assert "osqueryd pid 4242" in checks[0].value and str(partial) in checks[0].value
    failing = only_failing(checks)
    assert set(failing) == {"flag:audit_allow_sockets", "flag:audit_show_partial_fim_events"}
    sockets = failing["flag:audit_allow_sockets"]
    assert sockets.status == FAIL and "osquery's default" in sockets.detail
    assert "--audit_allow_sockets=true" in sockets.fix
    assert failing["flag:audit_show_partial_fim_events"].status == WARN


def test_paths_follow_the_running_osqueryds_flags(host: DoctorPaths, tmp_path: Path) -> None:
    load = tmp_path / "other.load"
    conf = tmp_path / "other.conf"
    fake_osqueryd(
        host,
        4243,
        [
            "osqueryd",
            f"--extensions_autoload={load}",
            f"--config_path={conf}",
            "--config_plugin=tls",
        ],
    )
    values, _ = osquery_flags(host)
    # Explicit paths win; defaults follow osquery's flags.
    assert resolve_paths(host, values) == host
    resolved = resolve_paths(DoctorPaths(proc=host.proc), values)
    assert (resolved.extensions_load, resolved.osquery_config) == (str(load), str(conf))
    checks = {
        c.name: c
        for c in run_doctor(
            DoctorPaths(proc=host.proc, systemd=host.systemd, systemd_vendor=host.systemd_vendor)
        )
    }
    assert str(load) in checks["autoload:listed"].value
    assert checks["file_paths"].status == WARN and "'tls' plugin" in checks["file_paths"].detail


def test_no_osqueryd_and_no_flagfile_warns(host: DoctorPaths, tmp_path: Path) -> None:
    checks = check_flags(DoctorPaths(**{**host.__dict__, "flagfile": str(tmp_path / "none")}))
    assert [c.status for c in checks] == [WARN] and "install/osquery.flags" in checks[0].fix


def test_parse_flag_args_reads_gflags_forms() -> None:
    values, _ = parse_flag_args(
        ["--disable_audit=false", "--audit_allow_sockets", "--noaudit_allow_config", "positional"]
    )
    assert values == {
        "disable_audit": "false",
        "audit_allow_sockets": "true",
        "audit_allow_config": "false",
    }


# -- audit owner -------------------------------------------------------------------


def test_auditd_running_fails(host: DoctorPaths) -> None:
    fake_osqueryd(host, 77, ["/sbin/auditd"], comm="auditd")
    c = by_name(check_audit_owner(host))["audit_owner"]
    assert c.status == FAIL and c.value == "auditd pid 77"
    assert "systemctl disable --now auditd" in c.fix


def test_journald_holding_an_audit_socket_warns(host: DoctorPaths) -> None:
    fake_osqueryd(host, 300, ["/lib/systemd/systemd-journald"], comm="systemd-journal")
    os.symlink("socket:[98765]", Path(host.proc) / "300" / "fd" / "3")
    netlink = Path(host.proc) / "net" / "netlink"
    netlink.write_text(
        netlink.read_text()
        + "0000000000000000 9   300        00000001 0        0        0 2        0        98765\n"
    )
    checks = by_name(check_audit_owner(host))
    assert checks["audit_owner"].status == OK
    j = checks["audit_journald"]
    assert j.status == WARN and "pid 300" in j.detail
    assert j.fix == "systemctl mask --now systemd-journald-audit.socket"


def test_journald_audit_unit_enabled_warns_unless_masked(host: DoctorPaths) -> None:
    wants = Path(host.systemd) / "sockets.target.wants"
    wants.mkdir(parents=True)
    (wants / "systemd-journald-audit.socket").symlink_to("/lib/systemd/system/x.socket")
    assert by_name(check_audit_owner(host))["audit_journald"].status == WARN
    vendor = Path(host.systemd_vendor) / "sockets.target.wants"
    vendor.mkdir(parents=True)
    (vendor / "systemd-journald-audit.socket").symlink_to("../systemd-journald-audit.socket")
    (wants / "systemd-journald-audit.socket").unlink()
    assert by_name(check_audit_owner(host))["audit_journald"].status == WARN
    (Path(host.systemd) / "systemd-journald-audit.socket").symlink_to("/dev/null")
    assert by_name(check_audit_owner(host))["audit_journald"].status == OK


# -- kernel interfaces, failing for real in a child ------------------------------


def in_child(fn: Callable[[], Check]) -> Check:
    """Run ``fn`` in a forked child (which may drop privileges) and return its Check."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            os.write(w, json.dumps(fn().to_json()).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    d = json.loads(data)
    return Check(d["name"], d["status"], d["value"], d["detail"], d["fix"])


@pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT)
def test_fanotify_works_as_root_and_fails_without_privileges() -> None:
    assert check_fanotify(native=True).status == OK

    def unprivileged() -> Check:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        return check_fanotify(native=True)

    c = in_child(unprivileged)
    assert c.status == FAIL and "fanotify_init failed" in c.detail and "root" in c.fix

    def unprivileged_osquery_only() -> Check:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        return check_fanotify(native=False)

    assert in_child(unprivileged_osquery_only).status == WARN


def test_sock_diag_works_and_fails_when_no_socket_can_be_opened() -> None:
    assert check_sock_diag().status == OK

    def no_fds() -> Check:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
        return check_sock_diag()

    c = in_child(no_fds)
    assert c.status == FAIL and "NETLINK_SOCK_DIAG" in c.detail and "tcp_diag" in c.fix


# -- config and file_paths ----------------------------------------------------------


def write_catalogue(tmp_path: Path) -> tuple[Path, Path]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "a.key").write_text("a")
    (secrets / "b.key").write_text("b")
    cfg = tmp_path / "readegress.toml"
    cfg.write_text(
        'window_seconds = 30\nstate_dir = "/nonexistent-doctor"\n\n[[class]]\n'
        f'name = "test_keys"\nlevel = "high"\npaths = ["{secrets}/*.key"]\n'
    )
    cfg.chmod(0o644)
    return cfg, secrets


def test_file_paths_names_the_uncovered_catalogue_file(host: DoctorPaths, tmp_path: Path) -> None:
    cfg, secrets = write_catalogue(tmp_path)
    Path(host.osquery_config).write_text(json.dumps({"file_paths": {"keys": [f"{secrets}/a.key"]}}))
    paths = DoctorPaths(**{**host.__dict__, "config": str(cfg)})
    checks, native = check_config_and_file_paths(paths)
    c = by_name(checks)
    assert c["config"].status == OK and native is False
    assert c["file_paths"].status == WARN and c["file_paths"].value == "1/2"
    assert (
        f"{secrets}/b.key" in c["file_paths"].detail
        and f"{secrets}/a.key" not in c["file_paths"].detail
    )
    assert "readegress file-paths" in c["file_paths"].fix
    Path(host.osquery_config).write_text(json.dumps({"file_paths": {"keys": [f"{secrets}/%"]}}))
    assert by_name(check_config_and_file_paths(paths)[0])["file_paths"].status == OK


def test_unreadable_osquery_config_warns(host: DoctorPaths, tmp_path: Path) -> None:
    cfg, _ = write_catalogue(tmp_path)
    paths = DoctorPaths(**{**host.__dict__, "config": str(cfg)})
    c = by_name(check_config_and_file_paths(paths)[0])["file_paths"]
    assert c.status == WARN and "agent-options" in c.fix


def test_broken_config_fails_with_file_and_line(host: DoctorPaths, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("window_seconds = 30\nthreshold = 'high'\n")
    cfg.chmod(0o644)
    checks, _ = check_config_and_file_paths(DoctorPaths(**{**host.__dict__, "config": str(cfg)}))
    assert checks[0].name == "config" and checks[0].status == FAIL
    assert f"{cfg}:2:" in checks[0].detail


# -- the command ------------------------------------------------------------------------


def doctor(paths: DoctorPaths, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [
        sys.executable,
        "-m",
        "readegress",
        "doctor",
        "--extensions-load",
        paths.extensions_load,
        "--flagfile",
        paths.flagfile,
        "--osquery-config",
        paths.osquery_config,
        "--proc",
        paths.proc,
        "--systemd-dir",
        paths.systemd,
        "--systemd-vendor-dir",
        paths.systemd_vendor,
        *extra,
    ]
    if paths.config:
        args += ["--config", paths.config]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_exit_code_follows_the_worst_status() -> None:
    assert exit_code([Check("a", OK, "", "")]) == 0
    assert exit_code([Check("a", OK, "", ""), Check("b", WARN, "", "")]) == 1
    assert exit_code([Check("a", WARN, "", ""), Check("b", FAIL, "", "")]) == 2


@pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT + "; fanotify needs root to pass")
def test_doctor_json_exit_codes_0_1_2(host: DoctorPaths, tmp_path: Path) -> None:
    cfg, secrets = write_catalogue(tmp_path)
    Path(host.osquery_config).write_text(json.dumps({"file_paths": {"k": [f"{secrets}/%"]}}))
    good = DoctorPaths(**{**host.__dict__, "config": str(cfg)})
    r = doctor(good, "--json")
    rows = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert r.returncode == 0, [x for x in rows if x["status"] != "ok"]
    assert all(set(x) == {"name", "status", "value", "detail", "fix"} for x in rows)
    assert {x["name"] for x in rows} >= {
        "autoload:owner",
        "flag:disable_audit",
        "audit_owner",
        "fanotify",
        "sock_diag",
        "file_paths",
        "config",
    }

    Path(host.osquery_config).write_text(json.dumps({"file_paths": {"k": [f"{secrets}/a.key"]}}))
    r = doctor(good, "--json")
    assert r.returncode == 1
    assert [x["name"] for x in map(json.loads, r.stdout.splitlines()) if x["status"] != "ok"] == [
        "file_paths"
    ]

    ext_of(host).chmod(0o757)
    r = doctor(good)
    assert r.returncode == 2
    assert "FAIL autoload:world_writable" in r.stdout and "fix: chmod o-w" in r.stdout


# -- outside data never crashes a parser ---------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=12))
def test_flag_arguments_of_any_shape_parse(args: list[str]) -> None:
    values, files = parse_flag_args(args, read_file=False)
    assert files == [] and all(isinstance(v, str) for v in values.values())


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400))
def test_any_flagfile_and_autoload_file_parse(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    d = tmp_path_factory.mktemp("hyp")
    f = d / "file"
    f.write_text(text, encoding="utf-8", errors="surrogateescape")
    parse_flag_args([f"--flagfile={f}"])
    from readegress.doctor import autoload_entries

    assert all(e and not e.startswith("#") for e in autoload_entries(str(f)))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400))
def test_any_netlink_table_parses(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    proc = tmp_path_factory.mktemp("proc")
    (proc / "net").mkdir()
    (proc / "net" / "netlink").write_text(text, encoding="utf-8", errors="surrogateescape")
    paths = DoctorPaths(proc=str(proc), systemd=str(proc / "x"), systemd_vendor=str(proc / "y"))
    assert {c.name for c in check_audit_owner(paths)} == {"audit_owner", "audit_journald"}
