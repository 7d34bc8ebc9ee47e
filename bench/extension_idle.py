"""Section 3: the extension's memory and idle CPU at its default poll interval.

The real ``python -m readegress extension --socket S`` is started against a
test osquery core on S (in its own process, pinging the extension every 3 s
as osqueryd does). ``/proc/<pid>/stat`` utime+stime and ``/proc/<pid>/status``
VmRSS are sampled over a fixed window after a warm-up, in three phases:

1. registered, never queried: the extension builds its socket monitor on the
   first table call, so this is the runtime alone (pings, supervision);
2. after one ``SELECT count(*) FROM socket_bytes`` through the core: the
   background poller now runs at its default interval, on the idle host; this
   is the state of an extension osquery has queried once;
3. the same with a 1k-connection loopback fleet alive (2k more sockets for
   every background poll to dump and attribute);
4. the fleet grown to 10k connections (20k sockets), poller running, no query;
5. after ``SELECT * FROM socket_bytes`` through the core, three times at 10k
   connections (each returns 20k rows of 26 columns over Thrift): RSS
   sampled after the queries, and the peak (``VmHWM``, the highest RSS of the
   process's life) printed as the query-time peak.

CPU % is of one core. Targets: RSS <= 50 MB steady in every phase, peak
<= 80 MB with 10k connections (phases 4 and 5).

What this does not cover: CPU spent answering queries (sections 1 and 2),
and hosts with many more processes (the /proc walks grow with them).
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass

from bench import report
from bench.children import Children
from bench.extension_process import ExtensionProcess
from bench.fleet import ConnectionFleet
from bench.procstat import UsageWindow, sample

TARGET_RSS_MB = 50.0
TARGET_PEAK_MB = 80.0
BIG_FLEET_CONNECTIONS = 10_000
FULL_QUERIES = 3
#: Host TCP sockets may vary this much within a window before it is flagged as not idle.
NOISE_SOCKETS = 100
TARGET_CPU_PERCENT = 0.5
FLEET_CONNECTIONS = 1000


@dataclass(frozen=True)
class IdlePhase:
    label: str
    usage: UsageWindow
    fleet_sockets: int  # the sockets this benchmark holds during the window
    peak_target: bool = False  # the phase's VmHWM is judged against TARGET_PEAK_MB


def run(
    children: Children,
    manager_socket: str | None,
    tmpdir: str,
    window_s: float,
    warmup_s: float,
    big_fleet: int = BIG_FLEET_CONNECTIONS,
) -> list[IdlePhase]:
    report.heading("3. extension RSS and idle CPU (default poll interval, no queries)")
    if manager_socket is None:
        report.note("SKIPPED: no test osquery core (readegress.testing.core missing)")
        return []
    ext = ExtensionProcess(children, manager_socket, os.path.join(tmpdir, "extension-idle.log"))
    report.note(f"extension: {shlex.join(ext.argv)}  (pid {ext.pid})")
    report.note(f"warm-up {warmup_s:g}s, then a {window_s:g}s window per phase, RSS every 1s")
    phases: list[IdlePhase] = []
    try:
        try:
            ext.wait_registered()
        except Exception as e:
            report.note(f"FAILED: {e}")
            return []
        time.sleep(warmup_s)
        phases.append(IdlePhase("registered, never queried", sample(ext.pid, window_s), 0))
        from readegress.osquery.client import ManagerClient

        with ManagerClient(manager_socket, timeout=60.0) as manager:
            n = manager.query("SELECT count(*) AS n FROM socket_bytes")[0]["n"]
        report.note(f"first query through the core: SELECT count(*) FROM socket_bytes -> {n}")
        time.sleep(warmup_s)
        phases.append(IdlePhase("poller running, idle host", sample(ext.pid, window_s), 0))
        with ConnectionFleet(children) as fleet:
            state = fleet.grow(FLEET_CONNECTIONS)
            time.sleep(warmup_s)
            phases.append(
                IdlePhase(
                    f"poller running, {state.connections}-connection fleet",
                    sample(ext.pid, window_s),
                    state.sockets,
                )
            )
            if big_fleet > state.connections:
                state = fleet.grow(big_fleet)
                time.sleep(warmup_s)
                phases.append(
                    IdlePhase(
                        f"poller running, {state.connections}-connection fleet",
                        sample(ext.pid, window_s),
                        state.sockets,
                        peak_target=True,
                    )
                )
                took = []
                with ManagerClient(manager_socket, timeout=120.0) as manager:
                    for _ in range(FULL_QUERIES):
                        t0 = time.perf_counter()
                        rows = len(manager.query("SELECT * FROM socket_bytes"))
                        took.append(time.perf_counter() - t0)
                report.note(
                    f"{FULL_QUERIES}x SELECT * FROM socket_bytes through the core at"
                    f" {state.connections} connections: {rows} rows, "
                    + ", ".join(f"{t:.2f}s" for t in took)
                )
                time.sleep(warmup_s)
                phases.append(
                    IdlePhase(
                        f"after {FULL_QUERIES}x SELECT * FROM socket_bytes,"
                        f" {state.connections} connections",
                        sample(ext.pid, window_s),
                        state.sockets,
                        peak_target=True,
                    )
                )
        if ext.proc.poll() is not None:
            report.note(f"extension exited during sampling:\n{ext.log_tail()}")
    finally:
        ext.close()
    print_phases(phases)
    return phases


def print_phases(phases: list[IdlePhase]) -> None:
    rows = []
    for p in phases:
        u = p.usage
        rows.append(
            [
                p.label,
                f"{u.rss_mb_median:.1f}",
                f"{u.rss_mb_max:.1f}",
                f"{u.hwm_kb / 1024:.1f}",
                f"{u.cpu_percent:.2f}",
                f"{u.cpu_seconds:.2f}",
                f"{u.seconds:.1f}",
                u.threads,
                u.host_tcp_range,
            ]
        )
    print()
    report.note(
        "host TCP socks: TCP sockets on the host (in use + TIME_WAIT, /proc/net/sockstat)"
        " during the window; anything beyond the fleet is other activity the extension also polls"
    )
    report.table(
        [
            "phase",
            "RSS MB med",
            "RSS MB max",
            "peak MB",
            "CPU %",
            "CPU s",
            "window s",
            "threads",
            "host TCP socks",
        ],
        rows,
    )
    for p in phases:
        u = p.usage
        peak = u.hwm_kb / 1024
        report.note(
            f"{p.label}: RSS {u.rss_mb_max:.1f} MB <= {TARGET_RSS_MB:.0f} MB"
            f" {report.verdict(u.rss_mb_max, TARGET_RSS_MB, at_most=True)};"
            + (
                f" peak {peak:.1f} MB <= {TARGET_PEAK_MB:.0f} MB"
                f" {report.verdict(peak, TARGET_PEAK_MB, at_most=True)};"
                if p.peak_target
                else ""
            )
            + f" CPU {u.cpu_percent:.2f}% <= {TARGET_CPU_PERCENT}% of a core"
            f" {report.verdict(u.cpu_percent, TARGET_CPU_PERCENT, at_most=True)}"
            + (" -- NOISY" if noisy(p) else "")
        )
    if any(noisy(p) for p in phases):
        report.note(
            f"NOISY: more than {NOISE_SOCKETS} host TCP sockets besides the fleet, or a change of"
            f" more than {NOISE_SOCKETS} during the window: another process on the host holds or"
            " churns sockets (the extension polls live ones; TIME_WAIT is not dumped but its"
            " churn means connections opened and closed); rerun on a quiet host"
        )


def noisy(p: IdlePhase) -> bool:
    """Whether foreign sockets overlapped the window (the fleet is constant within it)."""
    u = p.usage
    varied = max(u.host_tcp) - min(u.host_tcp) > NOISE_SOCKETS
    crowded = min(u.host_tcp) - p.fleet_sockets > NOISE_SOCKETS
    return varied or crowded
