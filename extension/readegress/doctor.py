"""``readegress doctor``: pre-flight and health in one command, runnable before osquery is set up.

Each check is a :class:`Check` with the columns of ``readegress_health``
(name, status, value, detail, fix); a check that is not ``ok`` says what is
wrong and the exact fix. Exit code: 0 all ok, 1 a warning, 2 a failure.

Where the data comes from:

- ``autoload:*`` — osquery's rules for an autoloaded extension
  (``extensions/extensions.cpp`` and ``safePermissions``): listed in the
  ``--extensions_autoload`` file, ``.ext`` suffix, a regular file (a symlink
  must itself be owned by root), owned by root, executable by its owner, not
  world-writable, in a directory without the sticky bit. osquery logs only
  "Extension binary has unsafe permissions"; here each rule is its own check.
  ``autoload:interpreter`` checks the ``#!`` interpreter of a script ``.ext``.
- ``flag:*`` — the flags osquery runs with: the running ``osqueryd``'s command
  line (``/proc/PID/cmdline``, with any ``--flagfile`` it names), else the
  flagfile. A flag that is not set has osquery's default (:data:`OSQUERY_DEFAULTS`).
- ``audit_owner`` — one process owns the audit netlink socket: a running
  ``auditd`` starves osquery's audit tables; ``systemd-journald-audit.socket``
  (enabled, or journald holding an audit netlink socket) copies every record
  into the journal.
- ``fanotify`` / ``sock_diag`` — the kernel interfaces the native sources and
  the socket tables need, probed by opening them.
- ``file_paths`` — catalogue files on this host that osquery's filesystem
  config does not watch (a ``tls`` config plugin cannot be read: warn).

Paths left at their defaults follow the running osqueryd's own
``--extensions_autoload`` and ``--config_path``.
- ``config`` — the readegress config loads (owner and mode checked as root).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from readegress.sources.osquery_setup import REQUIRED_FLAGS, flag_is

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
INSTALL_HINT = "install it with install/install.sh or the readegress .deb"
#: osquery's defaults for the flags readegress needs (osquery's FLAG() declarations).
OSQUERY_DEFAULTS = {
    "disable_events": "false",
    "disable_audit": "true",
    "audit_allow_config": "false",
    "audit_allow_fim_events": "false",
    "audit_fim_show_accesses": "false",
    "audit_allow_sockets": "false",
    "audit_allow_process_events": "true",
    "audit_allow_fork_process_events": "false",
    "audit_show_partial_fim_events": "false",
}
NETLINK_AUDIT = 9
JOURNALD_AUDIT_UNIT = "systemd-journald-audit.socket"
#: Flagfile lines and bytes read (a flagfile is a few dozen lines).
MAX_FLAGFILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Check:
    """One doctor check, shaped like a ``readegress_health`` row."""

    name: str
    status: str
    value: str
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "status": self.status,
            "value": self.value,
            "detail": self.detail,
            "fix": self.fix if self.status in (WARN, FAIL) else "",
        }


@dataclass(frozen=True)
class DoctorPaths:
    """Where doctor looks; every path settable so tests use temp trees."""

    extensions_load: str = "/etc/osquery/extensions.load"
    ext: Optional[str] = None
    flagfile: str = "/etc/osquery/osquery.flags"
    osquery_config: str = "/etc/osquery/osquery.conf"
    config: Optional[str] = None
    proc: str = "/proc"
    systemd: str = "/etc/systemd/system"
    systemd_vendor: str = "/lib/systemd/system"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DoctorPaths:
        return cls(
            extensions_load=args.extensions_load,
            ext=args.ext,
            flagfile=args.flagfile,
            osquery_config=args.osquery_config,
            config=args.config,
            proc=args.proc,
            systemd=args.systemd_dir,
            systemd_vendor=args.systemd_vendor_dir,
        )


def exit_code(checks: Iterable[Check]) -> int:
    statuses = {c.status for c in checks}
    return 2 if FAIL in statuses else 1 if WARN in statuses else 0


def render_text(checks: Sequence[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():<4} {c.name:<{width}}  {c.value}: {c.detail}")
        if c.status in (WARN, FAIL) and c.fix:
            lines.append(f"{'':<4} {'':<{width}}  fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)}
    lines.append(f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail")
    return "\n".join(lines) + "\n"


def _read_text(path: str, limit: int = MAX_FLAGFILE_BYTES) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")


# ------------------------------------------------------------------ autoload


def autoload_entries(load_file: str) -> list[str]:
    """Paths in osquery's autoload file: one per line, blank lines and ``#`` comments skipped."""
    return [
        ln.strip()
        for ln in _read_text(load_file).splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]


def check_autoload(paths: DoctorPaths) -> list[Check]:
    try:
        entries = autoload_entries(paths.extensions_load)
    except OSError as e:
        entries = None
        problem = e.strerror or str(e)
    if paths.ext:
        targets = [paths.ext]
    elif entries:
        targets = [e for e in entries if "readegress" in os.path.basename(e)]
    else:
        targets = []
    out: list[Check] = []
    if entries is None:
        out.append(
            Check(
                "autoload:listed",
                FAIL,
                paths.extensions_load,
                f"cannot read osquery's autoload file: {problem}",
                f"create it with the .ext path on one line (echo /opt/readegress/readegress.ext"
                f" >> {paths.extensions_load}) and run osqueryd with"
                f" --extensions_autoload={paths.extensions_load}",
            )
        )
        if not targets:
            return out
    if not targets:
        return [
            Check(
                "autoload:listed",
                FAIL,
                paths.extensions_load,
                "no readegress .ext is listed, so osqueryd never starts the extension",
                f"{INSTALL_HINT}, or add the .ext's absolute path as a line of"
                f" {paths.extensions_load}",
            )
        ]
    for ext in targets:
        out.extend(_check_one_ext(ext, entries, paths.extensions_load))
    return out


def _rule(name: str, passed: bool, value: str, ok: str, wrong: str, fix: str) -> Check:
    """One autoload rule: ``ok`` describes it passing, ``wrong`` and ``fix`` it failing."""
    return Check(name, OK, value, ok) if passed else Check(name, FAIL, value, wrong, fix)


def _check_one_ext(ext: str, entries: Optional[list[str]], load_file: str) -> list[Check]:
    q = shlex.quote(ext)
    out: list[Check] = []
    if entries is not None:
        out.append(
            _rule(
                "autoload:listed",
                ext in entries,
                ext,
                f"listed in {load_file}",
                f"not listed in {load_file}: osqueryd does not start it",
                f"echo {q} >> {load_file}",
            )
        )
    if not os.path.isabs(ext):
        out.append(
            Check(
                "autoload:path",
                FAIL,
                ext,
                "not an absolute path",
                f"list it absolute in {load_file}",
            )
        )
    out.append(
        _rule(
            "autoload:suffix",
            ext.endswith(".ext"),
            ext,
            "ends in .ext",
            "osqueryd autoloads only files ending in .ext",
            f"mv {q} {shlex.quote(ext + '.ext')} and list the new name",
        )
    )
    try:
        st = os.stat(ext)
        lst = os.lstat(ext)
    except OSError as e:
        out.append(
            Check(
                "autoload:file",
                FAIL,
                ext,
                f"cannot stat it: {e.strerror}",
                f"{INSTALL_HINT} (install/build.sh builds readegress.ext)",
            )
        )
        return out
    regular = stat.S_ISREG(st.st_mode)
    user_link = stat.S_ISLNK(lst.st_mode) and lst.st_uid != 0
    out.append(
        _rule(
            "autoload:file",
            regular and not user_link,
            ext,
            "a regular file",
            "not a regular file"
            if not regular
            else f"a symlink owned by uid {lst.st_uid}: osquery wants root's",
            f"replace {q} with the readegress.ext file itself"
            if not regular
            else f"chown -h root:root {q}",
        )
    )
    out.append(
        _rule(
            "autoload:owner",
            st.st_uid == 0,
            ext,
            "owned by root",
            f"owned by uid {st.st_uid}: osqueryd (root) refuses it as unsafe",
            f"chown root:root {q}",
        )
    )
    mode = stat.S_IMODE(st.st_mode)
    out.append(
        _rule(
            "autoload:mode",
            bool(mode & stat.S_IXUSR),
            f"{mode:04o}",
            "executable by its owner",
            "not executable by its owner",
            f"chmod 0755 {q}",
        )
    )
    out.append(
        _rule(
            "autoload:world_writable",
            not mode & stat.S_IWOTH,
            f"{mode:04o}",
            "not world-writable",
            "world-writable: any user could replace what root runs",
            f"chmod o-w {q}",
        )
    )
    directory = os.path.dirname(os.path.abspath(ext)) or "/"
    try:
        dmode = os.stat(directory).st_mode
    except OSError as e:
        out.append(
            Check("autoload:directory", FAIL, directory, f"cannot stat: {e.strerror}", INSTALL_HINT)
        )
    else:
        out.append(
            _rule(
                "autoload:directory",
                not dmode & stat.S_ISVTX,
                directory,
                "no sticky bit",
                "the directory has the sticky bit (like /tmp): osqueryd refuses extensions in it",
                "move the .ext to a root-owned directory without it, e.g."
                f" install -D -o root -g root -m 0755 {q} /opt/readegress/readegress.ext",
            )
        )
    if regular:
        out.append(_check_interpreter(ext))
    return out


def _check_interpreter(ext: str) -> Check:
    try:
        with open(ext, "rb") as f:
            head = f.read(256)
    except OSError as e:
        return Check("autoload:interpreter", WARN, ext, f"cannot read: {e.strerror}", "")
    if not head.startswith(b"#!"):
        return Check("autoload:interpreter", OK, ext, "a binary, no interpreter")
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    interpreter = line.split()[0] if line else ""
    if interpreter and os.access(interpreter, os.X_OK):
        return Check("autoload:interpreter", OK, interpreter, f"#!{line}")
    return Check(
        "autoload:interpreter",
        FAIL,
        interpreter,
        f"the script's interpreter (#!{line}) is missing or not executable",
        "install python3 (apt-get install python3), or rebuild with"
        " install/build.sh --interpreter /path/to/python3",
    )


# ------------------------------------------------------------------ flags


def parse_flag_args(
    args: Sequence[str], *, read_file: bool = True
) -> tuple[dict[str, str], list[str]]:
    """gflags arguments as ``{name: value}`` and the flagfiles read.

    ``--name=value``, ``--name value`` for non-boolean names is not guessed
    (osquery's flagfiles use ``=``), ``--name`` alone is ``true``,
    ``--noname`` is ``false``; ``--flagfile=F`` is read in place.
    """
    values: dict[str, str] = {}
    files: list[str] = []
    for arg in args:
        if not arg.startswith("-"):
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name == "flagfile" and eq:
            if read_file and value not in files and len(files) < 8:
                files.append(value)
                try:
                    text = _read_text(value)
                except OSError:
                    continue
                inner, more = parse_flag_args(
                    [ln.strip() for ln in text.splitlines() if ln.strip().startswith("-")]
                )
                values.update(inner)
                files.extend(f for f in more if f not in files)
            continue
        if not eq:
            if name.startswith("no") and name[2:] in OSQUERY_DEFAULTS:
                values[name[2:]] = "false"
            else:
                values[name] = "true"
            continue
        values[name] = value
    return values, files


def running_osqueryd(proc: str) -> Optional[tuple[int, list[str]]]:
    """The first ``osqueryd`` process's pid and arguments (the watchdog parent first)."""
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return None
    for pid in pids:
        try:
            comm = _read_text(f"{proc}/{pid}/comm", 256).strip()
            if comm != "osqueryd":
                continue
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                raw = f.read(MAX_FLAGFILE_BYTES)
        except OSError:
            continue
        return pid, [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    return None


def osquery_flags(paths: DoctorPaths) -> tuple[dict[str, str], str]:
    """The flags osquery runs with and where they were read ("" when nowhere)."""
    found = running_osqueryd(paths.proc)
    if found is not None:
        pid, argv = found
        values, files = parse_flag_args(argv[1:])
        return values, f"osqueryd pid {pid}" + (f" (flagfile {', '.join(files)})" if files else "")
    if os.path.exists(paths.flagfile):
        values, _ = parse_flag_args([f"--flagfile={paths.flagfile}"])
        return values, f"{paths.flagfile} (no osqueryd running)"
    return {}, ""


def resolve_paths(paths: DoctorPaths, flags: dict[str, str]) -> DoctorPaths:
    """Paths left at their defaults follow osquery's own flags (--extensions_autoload,
    --config_path) where osquery sets them."""
    defaults = DoctorPaths()
    changes = {}
    if paths.extensions_load == defaults.extensions_load and flags.get("extensions_autoload"):
        changes["extensions_load"] = flags["extensions_autoload"]
    if paths.osquery_config == defaults.osquery_config and flags.get("config_path"):
        changes["osquery_config"] = flags["config_path"]
    return dataclasses.replace(paths, **changes) if changes else paths


def check_flags(paths: DoctorPaths) -> list[Check]:
    values, source = osquery_flags(paths)
    if not source:
        return [
            Check(
                "flags",
                WARN,
                "unknown",
                f"no osqueryd is running and {paths.flagfile} does not exist",
                f"create {paths.flagfile} from install/osquery.flags and start osqueryd with"
                f" --flagfile={paths.flagfile}; or run doctor with --flagfile FILE",
            )
        ]
    out = [Check("flags", OK, source, "where osquery's flags were read")]
    for f in REQUIRED_FLAGS:
        name = f"flag:{f.name}"
        if f.name in values:
            value, how = values[f.name], "set"
        else:
            value, how = OSQUERY_DEFAULTS.get(f.name, ""), "osquery's default"
        good = flag_is(value, f.value)
        if good:
            out.append(Check(name, OK, value, f"{how}: --{f.name}={f.value} as readegress needs"))
        else:
            out.append(
                Check(
                    name,
                    f.severity,
                    value or "unset",
                    f"{how} {value or '(none)'} in {source}; needs {f.value}: {f.without}",
                    f.fix,
                )
            )
    return out


# ------------------------------------------------------------------ audit


def _proc_comms(proc: str) -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        names = os.listdir(proc)
    except OSError:
        return out
    for p in names:
        if not p.isdigit():
            continue
        try:
            out[int(p)] = _read_text(f"{proc}/{p}/comm", 256).strip()
        except OSError:
            continue
    return out


def _audit_socket_holders(proc: str, comms: dict[int, str]) -> list[tuple[int, str, int]]:
    """``(pid, comm, groups)`` of processes holding a NETLINK_AUDIT socket (/proc/net/netlink)."""
    inodes: dict[int, int] = {}  # inode -> multicast groups
    try:
        lines = _read_text(f"{proc}/net/netlink").splitlines()[1:]
    except OSError:
        return []
    for ln in lines:
        cols = ln.split()
        if len(cols) >= 10 and cols[1] == str(NETLINK_AUDIT):
            try:
                inodes[int(cols[9])] = int(cols[3], 16)
            except ValueError:
                continue
    holders = []
    for pid, comm in comms.items():
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                inode = int(target[8:-1]) if target[8:-1].isdigit() else -1
                if inode in inodes:
                    holders.append((pid, comm, inodes[inode]))
    return holders


def check_audit_owner(paths: DoctorPaths) -> list[Check]:
    comms = _proc_comms(paths.proc)
    auditd = sorted(pid for pid, comm in comms.items() if comm == "auditd")
    out: list[Check] = []
    if auditd:
        out.append(
            Check(
                "audit_owner",
                FAIL,
                f"auditd pid {auditd[0]}",
                "auditd owns the audit netlink socket: osquery's audit tables"
                " (process_file_events, socket_events, process_events) stay empty",
                "systemctl disable --now auditd (or use readegress's native source:"
                ' sources = ["native"])',
            )
        )
    holders = _audit_socket_holders(paths.proc, comms)
    journald = [(pid, comm) for pid, comm, _ in holders if comm.startswith("systemd-journal")]
    # Enabled by the admin (/etc) or by the distribution (/lib: Debian ships it
    # in sockets.target.wants); a dangling link still means enabled.
    unit_enabled = any(
        os.path.lexists(os.path.join(d, wants, JOURNALD_AUDIT_UNIT))
        for d in (paths.systemd, paths.systemd_vendor)
        for wants in ("sockets.target.wants", "sysinit.target.wants")
    )
    masked = os.path.realpath(os.path.join(paths.systemd, JOURNALD_AUDIT_UNIT)) == "/dev/null"
    if (journald or unit_enabled) and not masked:
        why = (
            f"systemd-journald (pid {journald[0][0]}) holds an audit netlink socket"
            if journald
            else f"{JOURNALD_AUDIT_UNIT} is enabled"
        )
        out.append(
            Check(
                "audit_journald",
                WARN,
                JOURNALD_AUDIT_UNIT,
                f"{why}: every audit record osquery's FIM rules make is also written to"
                " the journal (cost, and a second reader of the audit stream)",
                f"systemctl mask --now {JOURNALD_AUDIT_UNIT}",
            )
        )
    else:
        out.append(Check("audit_journald", OK, JOURNALD_AUDIT_UNIT, "not in use"))
    if not auditd:
        owners = [f"{comm} pid {pid}" for pid, comm, _ in holders if comm != "auditd"]
        out.insert(
            0,
            Check(
                "audit_owner",
                OK,
                ", ".join(owners) or "none",
                "no auditd competes with osquery for the audit netlink socket",
            ),
        )
    return out


# ------------------------------------------------------------------ kernel


def check_fanotify(native: bool) -> Check:
    from readegress.kernel.fanotify import fanotify_init

    try:
        fd = fanotify_init(0)
    except (OSError, AttributeError) as e:
        msg = getattr(e, "strerror", None) or str(e)
        return Check(
            "fanotify",
            FAIL if native else WARN,
            "unavailable",
            f"fanotify_init failed: {msg}; the native read source cannot run"
            + (" and the config asks for it" if native else ""),
            "run as root (CAP_SYS_ADMIN) on a kernel with CONFIG_FANOTIFY"
            + ("" if native else '; only needed for sources = ["native"]'),
        )
    os.close(fd)
    return Check("fanotify", OK, "available", "fanotify_init works (native read source)")


def check_sock_diag() -> Check:
    from readegress.kernel.sockdiag import SockDiag

    try:
        with SockDiag() as diag:
            count = len(diag.dump_tcp())
    except OSError as e:
        return Check(
            "sock_diag",
            FAIL,
            "unavailable",
            f"cannot dump sockets over NETLINK_SOCK_DIAG: {e.strerror or e}; socket_bytes,"
            " process_net_bytes and the bytes of read_then_egress stay empty",
            "load the inet_diag and tcp_diag modules (modprobe tcp_diag) and make sure the"
            " process may open netlink sockets (seccomp, RLIMIT_NOFILE)",
        )
    return Check("sock_diag", OK, str(count), f"dumped {count} TCP sockets")


# ------------------------------------------------------------------ config and file_paths


def check_config_and_file_paths(
    paths: DoctorPaths, *, config_plugin: str = "filesystem"
) -> tuple[list[Check], bool]:
    """The config check, the file_paths check, and whether the config asks for native."""
    from readegress.detect.config import ConfigError, load_config
    from readegress.sources.osquery_setup import (
        existing_catalogue_files,
        read_osquery_file_paths,
        uncovered_files,
    )

    try:
        config = load_config(paths.config)
    except ConfigError as e:
        return [
            Check(
                "config",
                FAIL,
                paths.config or "default",
                "; ".join(e.problems),
                "fix each file:line above (readegress file-paths --config FILE re-checks it)",
            )
        ], False
    out = [Check("config", OK, config.path, "loads without problems")]
    native = "native" in config.sources
    if config_plugin != "filesystem":
        out.append(
            Check(
                "file_paths",
                WARN,
                "unknown",
                f"osquery takes its config from the {config_plugin!r} plugin (Fleet, Kolide):"
                " its file_paths cannot be read from this host",
                "make sure the server's agent options carry what `readegress file-paths` prints"
                " (Fleet: packs/fleet/gitops/lib/readegress.agent-options.yml)",
            )
        )
        return out, native
    fp = read_osquery_file_paths(paths.osquery_config)
    if not fp.files:
        out.append(
            Check(
                "file_paths",
                WARN,
                "unknown",
                f"cannot read osquery's config: {'; '.join(fp.problems) or paths.osquery_config}"
                " (with Fleet or another tls config, file_paths come from agent options)",
                "put the output of `readegress file-paths` in osquery's config (Fleet:"
                " packs/fleet/gitops/lib/readegress.agent-options.yml), or pass --osquery-config",
            )
        )
        return out, native
    files, complete = existing_catalogue_files(config.catalogue)
    missing = uncovered_files(files, fp)
    partial = "" if complete else " (the scan stopped at its budget: partial)"
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        out.append(
            Check(
                "file_paths",
                WARN,
                f"{len(files) - len(missing)}/{len(files)}",
                f"catalogue files on this host that osquery's file_paths ({paths.osquery_config})"
                f" do not cover, so their reads are invisible: {shown}{partial}",
                f"add the output of `readegress file-paths` to {paths.osquery_config} and restart"
                " osqueryd",
            )
        )
    else:
        out.append(
            Check(
                "file_paths",
                OK,
                f"{len(files)}/{len(files)}",
                f"every catalogue file on this host is in osquery's file_paths{partial}",
            )
        )
    return out, native


def run_doctor(paths: DoctorPaths) -> list[Check]:
    """Every check, in a fixed order."""
    flags, _ = osquery_flags(paths)
    paths = resolve_paths(paths, flags)
    plugin = flags.get("config_plugin", "filesystem") or "filesystem"
    config_checks, native = check_config_and_file_paths(paths, config_plugin=plugin)
    return [
        *check_autoload(paths),
        *check_flags(paths),
        *check_audit_owner(paths),
        check_fanotify(native),
        check_sock_diag(),
        *config_checks,
    ]
