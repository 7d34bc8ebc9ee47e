"""CPU time and resident memory of a process, read from /proc.

``/proc/<pid>/stat`` fields 14 and 15 (utime, stime, in clock ticks; parsed
after the last ``)`` because the command name may contain spaces and
parentheses) and ``VmRSS``/``VmHWM`` from ``/proc/<pid>/status`` (kB).
CPU % is of one core: 100 % means one core busy for the whole window.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (``VmRSS``, ``VmHWM``), 0 when absent."""
    prefix = key.encode() + b":"
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(prefix):
                return int(line.split()[1])
    return 0


def threads(pid: int) -> int:
    return status_kb(pid, "Threads")


@dataclass(frozen=True)
class HostSockets:
    """Host-wide socket counts from /proc/net/sockstat{,6} (all namespaces' kernel totals
    for this namespace): other activity on the host shows up here."""

    tcp: int  # TCP + TCP6 in use (not TIME_WAIT)
    time_wait: int
    udp: int  # UDP + UDP6 in use

    def __str__(self) -> str:
        return f"tcp {self.tcp}, time-wait {self.time_wait}, udp {self.udp}"


def host_sockets() -> HostSockets:
    counts: dict[str, int] = {}
    for path in ("/proc/net/sockstat", "/proc/net/sockstat6"):
        try:
            with open(path, encoding="ascii") as f:
                for line in f:
                    proto, _, rest = line.partition(":")
                    fields = rest.split()
                    for key, value in zip(fields[::2], fields[1::2]):
                        counts[f"{proto}.{key}"] = counts.get(f"{proto}.{key}", 0) + int(value)
        except (OSError, ValueError):
            continue
    return HostSockets(
        tcp=counts.get("TCP.inuse", 0) + counts.get("TCP6.inuse", 0),
        time_wait=counts.get("TCP.tw", 0),
        udp=counts.get("UDP.inuse", 0) + counts.get("UDP6.inuse", 0),
    )


@dataclass(frozen=True)
class UsageWindow:
    """CPU and RSS of one process over one sampling window."""

    seconds: float
    cpu_seconds: float
    rss_kb: tuple[int, ...]  # one sample per step
    hwm_kb: int  # peak RSS since the process started
    threads: int
    host_tcp: tuple[int, ...]  # host TCP sockets incl. TIME_WAIT, one per sample

    @property
    def host_tcp_range(self) -> str:
        lo, hi = min(self.host_tcp), max(self.host_tcp)
        return str(lo) if lo == hi else f"{lo}-{hi}"

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def rss_mb_median(self) -> float:
        return statistics.median(self.rss_kb) / 1024.0

    @property
    def rss_mb_max(self) -> float:
        return max(self.rss_kb) / 1024.0


def sample(pid: int, window_s: float, step_s: float = 1.0) -> UsageWindow:
    """Sample ``pid`` for ``window_s`` seconds (bounded: at most window/step + 1 samples)."""
    rss: list[int] = []
    host: list[int] = []
    c0 = cpu_seconds(pid)
    t0 = time.monotonic()
    end = t0 + window_s
    for _ in range(int(window_s / step_s) + 1):
        rss.append(status_kb(pid, "VmRSS"))
        h = host_sockets()
        host.append(h.tcp + h.time_wait)
        left = end - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(step_s, left))
    c1 = cpu_seconds(pid)
    t1 = time.monotonic()
    return UsageWindow(
        seconds=t1 - t0,
        cpu_seconds=c1 - c0,
        rss_kb=tuple(rss),
        hwm_kb=status_kb(pid, "VmHWM"),
        threads=threads(pid),
        host_tcp=tuple(host),
    )
