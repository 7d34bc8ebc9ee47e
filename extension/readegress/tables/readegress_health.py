"""``readegress_health``: what readegress can and cannot see, one row per check.

Data, per check:

- ``flag:*`` — the osquery core's flags, through ``SELECT name, value FROM
  osquery_flags`` (a query from inside a table call: osquery gives it a
  transient database, so it cannot deadlock). A hidden flag the core does not
  list is reported as unknown, not as wrong.
- ``events:*`` — the detection service's per-table polling status: rows read,
  the osquery time of the newest row against now, query failures (a missing
  table when audit is off, a core restarting).
- ``file_paths`` — catalogue files that exist on this host (bounded walk,
  cached for :data:`FILE_SCAN_TTL` seconds) against the ``file_paths`` of
  osquery's filesystem config (``config_path`` flag, its ``.d`` directory and
  packs). Other config plugins (tls, ...) cannot be read from here: unknown.
- counters of the correlation core and the service (evicted reads and
  processes, late events, dropped and early-settled detections, row errors),
  lag, state file, config, version, sources, the kernel monitor's warnings
  and its destroy listener.
- ``native:fanotify`` / ``native:sock_diag`` — the native sources (when
  ``sources`` has ``native``): fanotify marks, events, queue overflows and
  dropped events, permission answers; sock_diag polls, connects, transfers,
  closes no one was seen holding (pid 0), destroy overruns, hot-mode lineages,
  skips at the cap and CPU.

Without an osquery core (``readegress query``) the osquery checks are
``info``/``unavailable``: there is no core to ask, which is not a failure.
Only the checks named in a ``name =`` constraint are computed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Optional

import readegress
from readegress.service.detection_service import ServiceStatus
from readegress.sources.osquery_rows import FILE_EVENTS
from readegress.sources.osquery_setup import (
    REQUIRED_FLAGS,
    RequiredFlag,
    existing_catalogue_files,
    flag_is,
    read_osquery_file_paths,
)
from readegress.sources.osquery_source import TABLES
from readegress.tables.base import TableEnv
from readegress.tables.context import QueryContext

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
#: How long a scan of the catalogue files on this host is reused.
FILE_SCAN_TTL = 300.0
#: A table whose newest row is older than this (or 10 polls) is "not arriving".
STALE_ROWS_SECONDS = 600.0
UNAVAILABLE = "unavailable"
NO_CORE = "no osquery core to ask (readegress query runs without osquery)"
FILE_PATHS_HOWTO = (
    "dump osquery's effective config (osqueryd --flagfile /etc/osquery/osquery.flags"
    " --config_dump) and check that its file_paths include what `readegress file-paths` prints"
)


class HealthRow(NamedTuple):
    name: str
    status: str
    value: str
    detail: str
    fix: str


def _row(name: str, status: str, value: object, detail: str, fix: str = "") -> HealthRow:
    return HealthRow(
        name,
        status,
        "" if value is None else str(value),
        detail,
        fix if status in (WARN, FAIL) else "",
    )


def _ago(now: float, t: float) -> str:
    return f"{max(0, int(now - t))}s ago" if t else "never"


class _Flags:
    """osquery's flags for one generate call, asked once."""

    NAMES = (*(f.name for f in REQUIRED_FLAGS), "config_plugin", "config_path")

    def __init__(self, env: TableEnv) -> None:
        self.values: dict[str, str] = {}
        self.error = ""
        manager = env.manager
        if manager is None:
            self.error = NO_CORE
            return
        names = ", ".join(f"'{n}'" for n in self.NAMES)
        try:
            rows = manager.query(
                f"SELECT name, value FROM osquery_flags WHERE name IN ({names})", timeout=5.0
            )
        except Exception as e:  # the core may be restarting: report, never fail the table
            self.error = f"osquery_flags could not be read: {type(e).__name__}: {e}"
            return
        self.values = {r.get("name", ""): r.get("value", "") for r in rows}


class _LazyFlags:
    """osquery's flags, asked of the core at most once per generate call."""

    def __init__(self, env: TableEnv) -> None:
        self._env = env
        self._flags: Optional[_Flags] = None

    def get(self) -> _Flags:
        if self._flags is None:
            self._flags = _Flags(self._env)
        return self._flags


def _one(method: Callable[..., HealthRow], *args: Any) -> Callable[[], list[HealthRow]]:
    return lambda: [method(*args)]


class ReadegressHealthTable:
    row_type = HealthRow

    def __init__(self, env: TableEnv) -> None:
        self.env = env
        self._scan_lock = threading.Lock()
        self._scan: Optional[tuple[float, list[str], bool]] = None

    # ----- checks -------------------------------------------------------
    def generate(self, ctx: QueryContext) -> Iterator[HealthRow]:
        wanted = ctx.text_equals("name")
        now = time.time()
        st = self.env.service.status() if self.env.service is not None else None
        flags = _LazyFlags(self.env)
        one = _one
        checks: list[tuple[str, Callable[[], list[HealthRow]]]] = [
            ("version", one(self._version, st)),
            ("config", one(self._config)),
            ("sources", one(self._sources, st)),
            ("native:fanotify", one(self._native_reads, st)),
            ("native:sock_diag", one(self._native_egress, st)),
            ("osquery", one(self._osquery, flags)),
        ]
        checks += [(f"flag:{f.name}", one(self._flag, f, flags)) for f in REQUIRED_FLAGS]
        checks += [(f"events:{t}", one(self._events, t, st, now)) for t in TABLES]
        checks += [
            ("file_paths", one(self._file_paths, flags, now)),
            ("lag", one(self._lag, st, now)),
            ("detections", one(self._detections, st)),
        ]
        checks += [(name, one(self._counter, name, st)) for name in _COUNTER_CHECKS]
        checks += [
            ("state", one(self._state, st)),
            ("privileges", one(self._privileges)),
            # One snapshot answers both kernel rows.
            ("kernel_monitor", self._kernel),
        ]
        for name, produce in checks:
            kernel_asked = (
                name == "kernel_monitor" and wanted is not None and "destroy_listener" in wanted
            )
            if wanted is not None and name not in wanted and not kernel_asked:
                continue
            for row in produce():
                if wanted is None or row.name in wanted:
                    yield row

    def _version(self, st: Optional[ServiceStatus]) -> HealthRow:
        mode = st.mode if st is not None else "no service"
        host = st.host if st is not None else ""
        return _row(
            "version",
            INFO,
            readegress.__version__,
            f"readegress {readegress.__version__}; {mode}; host {host}",
        )

    def _config(self) -> HealthRow:
        env = self.env
        if env.config_problems:
            return _row(
                "config",
                FAIL,
                env.config_path,
                "the config cannot be used, so nothing is detected: "
                + "; ".join(env.config_problems),
                "fix the problems listed (file:line), keep the file root-owned and not group/world"
                " writable, then restart the extension",
            )
        cfg = env.config
        if cfg is None:
            return _row("config", INFO, "", "no config loaded")
        return _row("config", OK, cfg.sha256, f"{cfg.path} (sha256 in value)")

    def _sources(self, st: Optional[ServiceStatus]) -> HealthRow:
        configured = tuple(self.env.config.sources) if self.env.config is not None else ()
        if st is None:
            return _row(
                "sources", FAIL if self.env.config_problems else INFO, "", "no detection service"
            )
        native = st.native
        native_on = bool(native.get("running"))
        running = ["osquery"] if "osquery" in configured and st.attached and st.running else []
        if native_on:
            running.append("native")
        value = ",".join(running)
        notes: list[str] = []
        if "native" in configured and not native_on and st.mode != "offline":
            why = native.get("error") or "not started"
            return _row(
                "sources",
                FAIL if not running else WARN,
                value,
                f"the native source (fanotify + sock_diag) is configured but not running: {why}",
                "run as root on a kernel with fanotify (CONFIG_FANOTIFY) and sock_diag;"
                " see native:fanotify and native:sock_diag",
            )
        if st.mode == "offline":
            return _row(
                "sources",
                INFO,
                "",
                "no live source: readegress query has no osquery core and runs no native"
                " source; read_then_egress shows what the extension saved",
            )
        if "osquery" in configured and "osquery" not in running:
            status = OK if native_on else WARN
            notes.append("the osquery source starts once the extension is registered with osquery")
            fix = "check that osqueryd loads the extension (osquery_extensions)"
            fix = "" if native_on else fix
            return _row("sources", status, value, "; ".join(notes), fix)
        if native_on:
            notes.append("native: fanotify reads and sock_diag egress")
        if "osquery" in running:
            notes.append("osquery: polling its event tables")
        if len(running) == 2:
            notes.append("a chain both report counts once (the native report is kept)")
        return _row("sources", OK, value, "; ".join(notes))

    def _native_reads(self, st: Optional[ServiceStatus]) -> HealthRow:
        name = "native:fanotify"
        if st is None or not st.native:
            return _row(name, INFO, "", "the native source is not configured")
        r = st.native.get("reads", {})
        value = f"{r.get('marks_files', 0)} files, {r.get('marks_dirs', 0)} dirs"
        detail = (
            f"marks: {r.get('marks_files', 0)} files, {r.get('marks_dirs', 0)} directories,"
            f" {r.get('marks_perm', 0)} held until identified (permission);"
            f" {r.get('marks_skipped', 0)} over the cap, mark errors {r.get('mark_errors', {})};"
            f" events {r.get('events', 0)}, reads {r.get('reads_emitted', 0)}"
            f" (merged {r.get('merged', 0)}); openers gone before identified"
            f" {r.get('identity_missed', 0)}; permission answers {r.get('perm_answered', 0)}"
            f" ({r.get('perm_watchdog', 0)} by the watchdog, longest hold"
            f" {r.get('perm_max_hold_us', 0)} us)"
        )
        lost = int(r.get("overflows", 0)) + int(r.get("dispatch_dropped", 0))
        if not r.get("running"):
            return _row(
                name,
                FAIL,
                value,
                f"fanotify is not running: {st.native.get('error') or 'not started'}; {detail}",
                "run as root (CAP_SYS_ADMIN) on a kernel with CONFIG_FANOTIFY",
            )
        if lost or r.get("mark_errors"):
            return _row(
                name,
                WARN,
                value,
                f"{r.get('overflows', 0)} queue overflows and {r.get('dispatch_dropped', 0)}"
                f" events dropped (reads lost); {detail}",
                "reads were lost: narrow the catalogue or check what opens marked files so often",
            )
        return _row(name, OK, value, detail)

    def _native_egress(self, st: Optional[ServiceStatus]) -> HealthRow:
        name = "native:sock_diag"
        if st is None or not st.native:
            return _row(name, INFO, "", "the native source is not configured")
        e = st.native.get("egress", {})
        hot_wall = float(e.get("hot_wall_seconds", 0.0)) or 0.0
        hot_cpu = float(e.get("hot_cpu_seconds", 0.0))
        detail = (
            f"full polls {e.get('full_polls', 0)} (every {float(e.get('full_interval', 0)):.1f}s,"
            f" last {float(e.get('full_poll_ms', 0)):.1f} ms); connects {e.get('connects', 0)},"
            f" transfers {e.get('transfers', 0)}; closed sockets no one was seen holding"
            f" {e.get('unattributed', 0)} (pid 0, host scope); destroy notifications"
            f" {e.get('destroy_events', 0)}; hot lineages {e.get('hot_started', 0)}"
            f" (skipped at the cap {e.get('hot_skipped', 0)}), hot CPU {hot_cpu:.2f}s over"
            f" {hot_wall:.1f}s; descriptors read with pidfd_getfd: {bool(e.get('getfd'))};"
            f" events buffered {st.native.get('buffered', 0)}, late reads"
            f" {st.native.get('late_reads', 0)}"
        )
        if not e.get("running"):
            return _row(
                name,
                FAIL,
                e.get("connects", 0),
                f"the sock_diag egress source is not running:"
                f" {e.get('start_error') or st.native.get('error') or 'not started'}; {detail}",
                "run as root on Linux with NETLINK_SOCK_DIAG",
            )
        problems = []
        if e.get("destroy_error"):
            problems.append(str(e["destroy_error"]))
        if e.get("destroy_overruns"):
            problems.append(f"{e['destroy_overruns']} destroy-notification overruns (lost)")
        if e.get("hot_skipped"):
            problems.append(f"{e['hot_skipped']} reads got no hot mode (cap reached)")
        if st.native.get("buffer_dropped"):
            problems.append(f"{st.native['buffer_dropped']} events dropped from the buffer")
        if problems:
            return _row(
                name,
                WARN,
                e.get("connects", 0),
                "; ".join(problems) + "; " + detail,
                "short connections may go unattributed (they stay as pid 0, host scope)",
            )
        return _row(name, OK, e.get("connects", 0), detail)

    def _osquery(self, lazy: _LazyFlags) -> HealthRow:
        if self.env.manager is None:
            return _row("osquery", INFO, UNAVAILABLE, NO_CORE)
        flags = lazy.get()
        if flags.error:
            return _row(
                "osquery",
                WARN,
                "unreachable",
                flags.error,
                "check that osqueryd is running; the extension reconnects by itself",
            )
        return _row("osquery", OK, "connected", "the osquery core answers queries")

    def _flag(self, f: RequiredFlag, lazy: _LazyFlags) -> HealthRow:
        name = f"flag:{f.name}"
        if self.env.manager is None:
            return _row(name, INFO, UNAVAILABLE, NO_CORE)
        flags = lazy.get()
        if flags.error:
            return _row(
                name, WARN, "unknown", flags.error, "re-run this query once osqueryd answers"
            )
        if f.name not in flags.values:
            return _row(
                name,
                WARN,
                "unknown",
                f"osquery_flags does not list {f.name} (an older osquery, or a hidden flag);"
                " without"
                f" --{f.name}={f.value}, {f.without}",
                f"check osqueryd's flagfile for --{f.name}={f.value}",
            )
        value = flags.values[f.name]
        good = flag_is(value, f.value)
        if good:
            return _row(name, OK, value, f"--{f.name}={f.value} as readegress needs")
        return _row(name, f.severity, value, f"needs {f.value}: {f.without}", f.fix)

    def _events(self, table: str, st: Optional[ServiceStatus], now: float) -> HealthRow:
        name = f"events:{table}"
        if st is None or st.mode == "offline" or self.env.manager is None:
            return _row(name, INFO, UNAVAILABLE, NO_CORE)
        ts = st.tables.get(table)
        if ts is None:
            return _row(name, INFO, "", "not polled")
        poll = self.env.config.poll_interval if self.env.config is not None else 10.0
        stale = max(STALE_ROWS_SECONDS, 10 * poll)
        counts = (
            f"{ts.rows} rows read ({ts.events} events, {ts.ignored} not correlated,"
            f" {ts.row_errors} unusable, {ts.repeats} repeated);"
            f" last row {_ago(now, ts.last_row_time)}"
        )
        narrowed = (
            "; only open/read rows of catalogue paths are fetched, so silence can mean no"
            " sensitive file was read"
            if table == FILE_EVENTS
            else ""
        )
        if ts.query_errors and ts.last_error_time >= ts.last_ok_time:
            return _row(
                name,
                FAIL,
                ts.rows,
                f"query failing ({ts.query_errors} failures, last {_ago(now, ts.last_error_time)}):"
                f" {ts.last_error}; {counts}",
                f"{table} exists only when osqueryd runs with events and audit enabled (see the"
                " flag:* checks); if osqueryd is restarting this clears by itself",
            )
        if not ts.last_row_time:
            return _row(
                name,
                WARN,
                ts.rows,
                f"no rows yet; {counts}{narrowed}",
                "check the flag:* checks above, and that auditd is not running beside osquery"
                " (one audit netlink owner)",
            )
        if now - ts.last_row_time > stale:
            return _row(
                name,
                WARN,
                ts.rows,
                f"no rows for over {int(stale)}s; {counts}{narrowed}",
                "check the flag:* checks and osqueryd's log for audit errors or backlog overflow",
            )
        return _row(name, OK, ts.rows, counts)

    def _file_paths(self, lazy: _LazyFlags, now: float) -> HealthRow:
        name = "file_paths"
        cfg = self.env.config
        if self.env.manager is None:
            return _row(name, INFO, UNAVAILABLE, NO_CORE)
        if cfg is None:
            return _row(name, INFO, "", "no config, no catalogue")
        flags = lazy.get()
        if flags.error:
            return _row(name, WARN, "unknown", flags.error, FILE_PATHS_HOWTO)
        plugin = flags.values.get("config_plugin", "filesystem") or "filesystem"
        config_path = flags.values.get("config_path", "")
        if plugin != "filesystem" or not config_path:
            return _row(
                name,
                WARN,
                "unknown",
                f"osquery's config comes from the {plugin!r} config plugin,"
                " which readegress cannot read",
                FILE_PATHS_HOWTO,
            )
        fp = read_osquery_file_paths(config_path)
        if not fp.files:
            return _row(
                name,
                WARN,
                "unknown",
                f"cannot read osquery's config: {'; '.join(fp.problems) or config_path}",
                FILE_PATHS_HOWTO,
            )
        files, complete = self._catalogue_files(now)
        missing = [f for f in files if not fp.covers(f)]
        partial = "" if complete else " (the scan of this host stopped at its budget: partial)"
        problems = f"; unreadable: {'; '.join(fp.problems)}" if fp.problems else ""
        if missing:
            shown = ", ".join(missing[:10]) + (
                f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            )
            return _row(
                name,
                WARN,
                f"{len(files) - len(missing)}/{len(files)}",
                "catalogue files on this host that osquery's file_paths do not cover (reads of them"
                f" are invisible): {shown}{partial}{problems}",
                "add the output of `readegress file-paths` to osquery's config and restart osqueryd"
                " (osquery resolves file_paths globs when it loads its config)",
            )
        return _row(
            name,
            OK,
            f"{len(files)}/{len(files)}",
            f"every catalogue file on this host is in osquery's file_paths ({len(fp.files)} config"
            f" files read){partial}{problems}",
        )

    def _catalogue_files(self, now: float) -> tuple[list[str], bool]:
        cfg = self.env.config
        assert cfg is not None
        with self._scan_lock:
            if self._scan is not None and now - self._scan[0] < FILE_SCAN_TTL:
                return self._scan[1], self._scan[2]
            files, complete = existing_catalogue_files(cfg.catalogue)
            self._scan = (now, files, complete)
            return files, complete

    def _lag(self, st: Optional[ServiceStatus], now: float) -> HealthRow:
        if st is None or st.mode == "offline":
            return _row("lag", INFO, UNAVAILABLE, "no live source in this process")
        poll = self.env.config.poll_interval if self.env.config is not None else 10.0
        if st.running and st.last_cycle_time and now - st.last_cycle_time > 3 * poll + 30:
            return _row(
                "lag",
                WARN,
                int(now - st.newest_event_time) if st.newest_event_time else "",
                f"the detection service last ran {_ago(now, st.last_cycle_time)}"
                f" (poll interval {poll:g}s)",
                "see the extension's log: an osquery query may be hanging",
            )
        if not st.newest_event_time:
            return _row("lag", INFO, "", "no events fed yet")
        return _row(
            "lag",
            INFO,
            int(now - st.newest_event_time),
            "seconds since the newest event fed (osquery time);"
            f" the service last ran {_ago(now, st.last_cycle_time)}",
        )

    def _detections(self, st: Optional[ServiceStatus]) -> HealthRow:
        if st is None:
            return _row("detections", INFO, "", "no detection service")
        c, s = st.counters, st.core_stats
        return _row(
            "detections",
            INFO,
            st.finalized,
            f"{st.finalized} stored, {st.pending} settling; candidates {c['candidates']},"
            f" below threshold {c['below_threshold']}, approved jobs {s['approved']}, low-weight"
            f" only {s['low_only']}; socket facts: {c['facts_socket']} live, {c['facts_closed']}"
            f" closed totals only, {c['facts_none']} none,"
            f" {c['facts_unavailable']} monitor unavailable",
        )

    def _counter(self, name: str, st: Optional[ServiceStatus]) -> HealthRow:
        if st is None:
            return _row(name, INFO, "", "no detection service")
        where, key, what, fix = _COUNTER_CHECKS[name]
        if where == "core":
            value = st.core_stats.get(key, 0)
        elif where == "service":
            value = st.counters.get(key, 0)
        else:
            value = sum(getattr(t, key) for t in st.tables.values())
        if value:
            return _row(name, WARN, value, what, fix)
        return _row(name, OK, value, what)

    def _state(self, st: Optional[ServiceStatus]) -> HealthRow:
        if st is None:
            return _row("state", INFO, "", "no detection service")
        size = "" if st.state_bytes is None else st.state_bytes
        saved = (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.state_saved_time))
            if st.state_saved_time
            else "never"
        )
        detail = f"{st.state_path or '(none)'}; last saved {saved}; {st.state_note}"
        if st.mode == "offline":
            return _row("state", INFO, size, f"{detail} (read-only)")
        if st.persist_error:
            return _row(
                "state",
                FAIL,
                size,
                f"{detail}; not persisted: {st.persist_error}",
                "give the extension a root-owned state directory (state_dir in the config or"
                " --state-dir) it can write; until then a restart loses detections in progress",
            )
        if st.counters.get("state_corrupt"):
            return _row(
                "state",
                WARN,
                size,
                detail,
                "the corrupt file was kept beside the new one for inspection; nothing else to do",
            )
        return _row("state", OK, size, detail)

    def _privileges(self) -> HealthRow:
        if os.geteuid() == 0:
            return _row("privileges", OK, "root", "running as root")
        return _row(
            "privileges",
            WARN,
            f"uid {os.geteuid()}",
            "not root: other users' sockets have no owner, so bytes of their egress stay unknown",
            "run the extension as root (osqueryd launches it as its own user)",
        )

    def _kernel(self) -> list[HealthRow]:
        env = self.env
        try:
            env.snapshot()  # records this host's current blind spots in env.warnings
            monitor = env.monitor
            stats = monitor.stats()
        except Exception as e:
            msg = f"{type(e).__name__}: {e}"
            return [
                _row(
                    "kernel_monitor",
                    FAIL,
                    UNAVAILABLE,
                    f"the socket monitor cannot run: {msg}",
                    "run as root on Linux with sock_diag (NETLINK_SOCK_DIAG)",
                ),
                _row("destroy_listener", WARN, UNAVAILABLE, msg, "see kernel_monitor"),
            ]
        warnings = list(env.warnings)
        # The newest few: one host's notes differ only in counts over time.
        shown = "; ".join(warnings[-5:]) + (
            f" (and {len(warnings) - 5} earlier)" if len(warnings) > 5 else ""
        )
        rows = [
            _row("kernel_monitor", WARN, len(warnings), shown, "see each warning")
            if warnings
            else _row(
                "kernel_monitor",
                OK,
                0,
                f"{stats.get('polls', 0)} polls, {stats.get('namespaces', 0)} network namespaces",
            )
        ]
        lost = stats.get("destroy_lost", 0)
        events = stats.get("destroy_events", 0)
        failures = [w for w in warnings if "destroy notifications" in w]
        if not env.background:
            rows.append(
                _row(
                    "destroy_listener",
                    INFO,
                    events,
                    "not running: readegress query takes one snapshot",
                )
            )
        elif not getattr(monitor, "destroy_listener", True) or failures:
            rows.append(
                _row(
                    "destroy_listener",
                    WARN,
                    events,
                    "; ".join(failures) or "disabled",
                    "run as root (CAP_NET_ADMIN): without destroy notifications, bytes of sockets"
                    " that close between polls are lost",
                )
            )
        elif lost:
            rows.append(
                _row(
                    "destroy_listener",
                    WARN,
                    events,
                    f"{lost} receive overruns lost notifications",
                    "closed-socket totals undercount; nothing to fix unless it grows",
                )
            )
        else:
            rows.append(
                _row(
                    "destroy_listener", OK, events, "final counters of closed sockets are collected"
                )
            )
        return rows


#: name -> (where, key, what it counts, fix when non-zero)
_COUNTER_CHECKS: dict[str, tuple[str, str, str, str]] = {
    "dropped:reads_evicted": (
        "core",
        "evicted_reads",
        "sensitive reads dropped before they left the window: a process's reads beyond its"
        " per-process budget (a flood, summarised) or max_reads exceeded; each process's"
        " heaviest and latest alerting reads go last (see dropped:alerting_reads_evicted)",
        "expected during mass reads (backups, scanners); otherwise raise max_reads",
    ),
    "dropped:alerting_reads_evicted": (
        "core",
        "evicted_alerting_reads",
        "processes' heaviest or latest alerting reads dropped because more processes read"
        " catalogue files in one window than max_reads holds: a chain could be missed",
        "raise max_reads in the config, or narrow the catalogue",
    ),
    "dropped:processes_evicted": (
        "core",
        "evicted_processes",
        "processes the correlation core forgot because its process table was full",
        "lineage is weaker for the processes forgotten; expect this only on very busy hosts",
    ),
    "dropped:late_events": (
        "core",
        "late_events",
        "events fed more than a second older than the newest one"
        " (an egress fed before its read is missed)",
        "usually a query that failed for one table and recovered; see events:*",
    ),
    "dropped:detections": (
        "service",
        "dropped_detections",
        "stored detections dropped (oldest first) because max_detections was exceeded",
        "raise max_detections, or log read_then_egress with a scheduled query so nothing is lost",
    ),
    "dropped:settled_early": (
        "service",
        "settled_early",
        "candidates settled before their settle delay because too many were waiting"
        " (no socket facts)",
        "raise max_detections; check for a noisy job that should be in [[approved]]",
    ),
    "dropped:row_errors": (
        "table",
        "row_errors",
        "osquery rows without a usable time, eid or pid",
        "report it with the osquery version: the event tables' columns may have changed",
    ),
    "dropped:cycle_errors": (
        "service",
        "cycle_errors",
        "detection cycles that failed with an internal error (logged)",
        "see the extension's log and report the error",
    ),
}
