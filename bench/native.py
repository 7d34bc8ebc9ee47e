"""``python -m bench native``: what the native read source costs a syscall-heavy process.

A workload child (a tiny C loop compiled here with ``cc -O2``; a Python loop when
there is no compiler) does ``open(O_RDONLY)`` / ``read(4 KiB)`` / ``close`` N
times over one group of files and prints nanoseconds per iteration, timed inside
the child (interpreter or process start is not counted). Three groups:

* **catalogue**: temp files the test catalogue lists (``<tmp>/secrets/id_bench_*``,
  class ``bench_keys``, level ``high``);
* **same dir**: files next to them that the catalogue does not match. The
  glob ends in a wildcard, so readegress watches that directory (as it watches
  ``~/.ssh`` for the shipped ``~/.ssh/id_*``): by entry events by default
  (``FAN_CREATE``/``FAN_MOVED_*``/``FAN_DELETE``: an open there raises
  nothing), and under ``readegress notify, child marks`` by the older
  ``FAN_EVENT_ON_CHILD`` directory mark (every open there raises an event
  that is filtered in userspace), to show what entry watching saves;
* **other dir**: files in an unrelated directory (no mark at all).

The same child binary runs under every mode, one mode active at a time:

* ``none``, twice (``none`` and ``none (A/A)``): two identical baselines whose
  difference is the noise floor of every slowdown printed;
* ``readegress notify``: ``NativeReadSource(permission_classes=())`` in this
  process, notification group only (inode marks + entry watching of the
  directory);
* ``readegress notify, child marks``: the same with ``dir_watch="child"``;
* ``readegress perm``: ``NativeReadSource`` with its defaults, so the ``high``
  class gets ``FAN_OPEN_PERM`` marks (the opener is held until identified);
* ``audit -w``: ``auditctl -w FILE -p r`` on each catalogue file;
* ``audit syscalls``: ``-a always,exit -F arch=b64 -S open,openat,read,close``
  for every process, the rules osquery's ``process_file_events`` needs. It
  audits the whole host, so it runs ``--syscall-ops`` iterations (fewer).

Rounds rotate the order of modes (:func:`bench.timing.repeat_interleaved`) and of
groups, so a burst of foreign load hits every mode alike; after each child the
bench waits until its own threads (an in-process monitor) are idle. Slowdown is
``median(mode) / median(none) - 1``; overhead is ``median(mode) - median(none)``
in ns per iteration; both are printed on minima too (the host's noise comes in
phases of seconds that move medians by 10-30 %, minima by a few %). The
monitor's own CPU outside the child (this process's threads + ``kauditd``) is
printed per iteration. Targets (printed, never an exit status): readegress
<= 2 % slowdown on non-catalogue files, and audit's overhead on catalogue files
>= 10x readegress's; judged on medians.

Audit: the enabled flag is read first and restored after each audit mode (the
other modes run with it as found); every rule added carries the key
``readegress-bench`` and is removed after its mode, and once more by key at the
end (``auditctl -D -k readegress-bench``), whatever happened short of SIGKILL
(rules left by a killed run carry the key and are removed at the next start).
Without auditd
(``auditctl -s`` pid 0) the kernel prints records (rate-limited) and drops
them: that is measured as is and said in the output.

Last, when ``readegress watch`` exists, the real watch process is started on the
catalogue files and its RSS/CPU is sampled over an idle window and while the
workload loops over its files.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from bench import machine, procstat, report, timing
from bench.children import Children, sigterm_as_interrupt

GROUPS = ("catalogue", "same dir", "other dir")
NON_CATALOGUE = GROUPS[1:]
FILES_PER_GROUP = 8
FILE_BYTES = 4096
AUDIT_KEY = "readegress-bench"
SYSCALL_RULE = ("always,exit", "-F", "arch=b64", "-S", "open,openat,read,close")

NONE = "none"
NONE_AA = "none (A/A)"
RE_NOTIFY = "readegress notify"
RE_CHILD = "readegress notify, child marks"
RE_PERM = "readegress perm"
AUDIT_W = "audit -w"
AUDIT_SYSCALLS = "audit syscalls"

TARGET_SLOWDOWN_PCT = 2.0
TARGET_VS_AUDIT = 10.0
TARGET_HELD_FIRST_US = 50.0
TARGET_HELD_REPEAT_US = 10.0
FIRST_OPENS = 30

# open/read/close N times, timed after an untimed warm-up, ns per iteration on stdout.
C_LOOP = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static clockid_t clk = CLOCK_MONOTONIC;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(clk, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int pass(long n, int nf, char **files) {
    static char buf[4096];
    for (long i = 0; i < n; i++) {
        const char *p = files[i % nf];
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0) { perror(p); return 1; }
        if (read(fd, buf, sizeof buf) < 0) { perror("read"); return 1; }
        close(fd);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: loop OPS WARMUP FILE...\n"); return 2; }
    if (getenv("READEGRESS_BENCH_CPU_CLOCK")) clk = CLOCK_PROCESS_CPUTIME_ID;
    long n = atol(argv[1]), w = atol(argv[2]);
    if (n < 1) return 2;
    if (pass(w, argc - 3, argv + 3)) return 1;
    long long t0 = now_ns();
    if (pass(n, argc - 3, argv + 3)) return 1;
    printf("%.1f\n", (double)(now_ns() - t0) / n);
    return 0;
}
"""

PY_LOOP = """
import os, sys, time
n, w, files = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def run(k):
    nf = len(files)
    for i in range(k):
        fd = os.open(files[i % nf], os.O_RDONLY | os.O_CLOEXEC)
        os.read(fd, 4096)
        os.close(fd)
cpu = os.environ.get("READEGRESS_BENCH_CPU_CLOCK")
clock = time.process_time_ns if cpu else time.perf_counter_ns
run(w)
t0 = clock()
run(n)
print(f"{(clock() - t0) / n:.1f}")
"""


# -- workload ---------------------------------------------------------------


@dataclass(frozen=True)
class Files:
    root: str
    secrets: str  # the catalogue's directory
    groups: dict[str, tuple[str, ...]]

    @property
    def catalogue(self) -> tuple[str, ...]:
        return self.groups["catalogue"]


def make_files(tmpdir: str, per_group: int = FILES_PER_GROUP) -> Files:
    secrets = os.path.join(tmpdir, "secrets")
    plain = os.path.join(tmpdir, "plain")
    os.mkdir(secrets)
    os.mkdir(plain)
    names = {
        "catalogue": [os.path.join(secrets, f"id_bench_{i}") for i in range(per_group)],
        "same dir": [os.path.join(secrets, f"notes_{i}") for i in range(per_group)],
        "other dir": [os.path.join(plain, f"data_{i}") for i in range(per_group)],
    }
    for paths in names.values():
        for p in paths:
            with open(p, "wb") as f:
                f.write(os.urandom(FILE_BYTES))
    return Files(tmpdir, secrets, {g: tuple(ps) for g, ps in names.items()})


def catalogue_toml(files: Files) -> str:
    return (
        'egress_classes = ["loopback"]\n\n'
        "[[class]]\n"
        'name = "bench_keys"\n'
        'level = "high"\n'
        f'paths = ["{files.secrets}/id_bench_*"]\n'
    )


def build_child(tmpdir: str, want: str) -> tuple[list[str], str]:
    """The workload argv prefix and a description: the C loop, or the Python one."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if want == "c" and cc is not None:
        src = os.path.join(tmpdir, "loop.c")
        exe = os.path.join(tmpdir, "loop")
        with open(src, "w", encoding="ascii") as f:
            f.write(C_LOOP)
        proc = subprocess.run(
            [cc, "-O2", "-o", exe, src], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode == 0:
            return [exe], f"C loop ({cc} -O2, {exe})"
        report.note(f"cc failed, using the Python loop: {proc.stderr.strip()[:200]}")
    return [sys.executable, "-c", PY_LOOP], f"Python loop ({sys.executable} -c)"


class Workload:
    def __init__(
        self, children: Children, prefix: list[str], warmup: int, cpu_clock: bool = False
    ) -> None:
        self.children = children
        self.prefix = prefix
        self.warmup = warmup
        # The child's own CPU time instead of wall time: time spent descheduled
        # (the noise of a shared machine) is not counted, nor is time spent
        # blocked in a held open.
        self.env = {**os.environ, "READEGRESS_BENCH_CPU_CLOCK": "1"} if cpu_clock else None

    def run(self, ops: int, files: Sequence[str], warmup: Optional[int] = None) -> float:
        """ns per open/read/close iteration over ``files`` (cycled)."""
        w = min(self.warmup, ops) if warmup is None else warmup
        argv = [*self.prefix, str(ops), str(w), *files]
        proc = self.children.spawn(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
        )
        try:
            out, err = proc.communicate(timeout=60.0 + ops * 1e-3)
        finally:
            self.children.stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"workload failed ({proc.returncode}): {err.strip()[:300]}")
        return float(out.strip())


# -- modes ------------------------------------------------------------------


class Mode:
    """One monitoring configuration: set up before a child runs, torn down after.

    ``scale`` shrinks the iterations of a group where one iteration costs
    100x the baseline (held opens, audited syscalls), to keep a run bounded;
    figures are per iteration either way.
    """

    def __init__(self, label: str, scale: Optional[dict[str, float]] = None) -> None:
        self.label = label
        self.scale = scale or {}

    def ops(self, group: str, ops: int) -> int:
        return max(500, int(ops * self.scale.get(group, 1.0)))

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def summary(self) -> str:
        return ""


class Readegress(Mode):
    """``NativeReadSource`` in this process (its threads compete for the CPUs as
    they would on a host)."""

    def __init__(
        self,
        label: str,
        config: Any,
        permission: bool,
        held_scale: float,
        dir_watch: str = "entry",
    ) -> None:
        super().__init__(label, {"catalogue": held_scale} if permission else None)
        self.config = config
        self.permission = permission
        self.dir_watch = dir_watch
        self.source: Any = None
        self.reads = 0
        self.last: Any = None

    def _on_read(self, read: object) -> None:
        self.reads += 1

    def start(self) -> None:
        from readegress.sources.native_reads import NativeReadSource

        self.source = NativeReadSource(
            self.config,
            self._on_read,
            permission_classes=None if self.permission else (),
            dir_watch=self.dir_watch,
        )
        self.source.start()

    def stop(self) -> None:
        if self.source is not None:
            # Let the reader drain before the stats snapshot.
            time.sleep(0.05)
            self.last = self.source.stats()
            self.source.close()
            self.source = None

    def marks(self) -> str:
        s = self.last
        if s is None:
            return ""
        return (
            f"marks: {s.marks_files} inode, {s.marks_dirs} child dir,"
            f" {s.marks_entry_dirs} entry dir, {s.marks_perm} perm"
        )

    def summary(self) -> str:
        s = self.last
        if s is None:
            return "not run"
        parts = [
            self.marks(),
            f"last run: {s.events} events",
            f"{s.reads_emitted} reads ({s.merged} merged, {s.unmatched} unmatched)",
            f"identity missed {s.identity_missed}",
            f"overflows {s.overflows}",
            f"dropped {s.dispatch_dropped}",
        ]
        if self.permission:
            parts.append(
                f"perm answered {s.perm_answered} (watchdog {s.perm_watchdog},"
                f" max hold {s.perm_max_hold_us} us)"
            )
        return "; ".join(parts)


class Audit:
    """``auditctl`` with the enabled flag restored and every rule tagged ``AUDIT_KEY``."""

    def __init__(self, auditctl: str) -> None:
        self.auditctl = auditctl
        self.status0 = self.status()
        self.enabled0 = self.status0.get("enabled", "0")
        #: Rules with our key found at start: left by a run killed with SIGKILL.
        self.stale = sum(AUDIT_KEY in r for r in self.rules())
        if self.stale and self.enabled0 != "2":
            self._run("-D", "-k", AUDIT_KEY)
        self.rules0 = self.rules()

    def _run(self, *args: str) -> str:
        proc = subprocess.run(
            [self.auditctl, *args], capture_output=True, text=True, timeout=20, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"auditctl {shlex.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def status(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self._run("-s").splitlines():
            k, _, v = line.partition(" ")
            out[k] = v.strip()
        return out

    def rules(self) -> list[str]:
        return [ln for ln in self._run("-l").splitlines() if ln and ln != "No rules"]

    def usable(self) -> str:
        """'' when rules can be added, else why not."""
        if self.enabled0 == "2":
            return "audit configuration is locked (enabled 2)"
        return ""

    def auditd(self) -> str:
        pid = self.status0.get("pid", "0")
        if pid not in ("", "0"):
            return f"auditd running (pid {pid}): records go to auditd"
        return "no auditd (pid 0): records go to the kernel (printk, rate-limited) and are dropped"

    def set_enabled(self, flag: str) -> None:
        if self.status().get("enabled") != flag:
            self._run("-e", flag)

    def add(self, rule: Sequence[str]) -> None:
        self._run(*rule)

    def delete(self, rule: Sequence[str]) -> None:
        with contextlib.suppress(RuntimeError):
            self._run(*rule)

    def purge(self) -> None:
        """Remove every rule carrying our key, restore the enabled flag as found."""
        if any(AUDIT_KEY in r for r in self.rules()):
            with contextlib.suppress(RuntimeError):
                self._run("-D", "-k", AUDIT_KEY)
        with contextlib.suppress(RuntimeError):
            self.set_enabled(self.enabled0)


class AuditMode(Mode):
    def __init__(
        self,
        label: str,
        audit: Audit,
        add: list[list[str]],
        delete: list[list[str]],
        scale: float = 1.0,
    ) -> None:
        super().__init__(label, {g: scale for g in GROUPS})
        self.audit = audit
        self.add_rules = add
        self.delete_rules = delete
        self.lost = 0
        self.waited = 0
        self.active = False

    def start(self) -> None:
        self.active = True
        self._s0 = self.audit.status()
        self.audit.set_enabled("1")
        for r in self.add_rules:
            self.audit.add(r)

    def stop(self) -> None:
        if not self.active:
            return
        try:
            s1 = self.audit.status()
            self.lost = _int(s1.get("lost")) - _int(self._s0.get("lost"))
            self.waited = _int(s1.get("backlog_wait_time_actual")) - _int(
                self._s0.get("backlog_wait_time_actual")
            )
        finally:
            for r in self.delete_rules:
                self.audit.delete(r)
            self.audit.set_enabled(self.audit.enabled0)
            self.active = False

    def summary(self) -> str:
        return (
            f"{len(self.add_rules)} rule(s); last run: audit 'lost' +{self.lost},"
            f" backlog_wait_time_actual +{self.waited}"
        )


def _int(text: Optional[str]) -> int:
    try:
        return int((text or "0").split()[0])
    except ValueError:
        return 0


def audit_modes(audit: Audit, files: Files, syscall_scale: float) -> list[Mode]:
    watch_add = [["-w", p, "-p", "r", "-k", AUDIT_KEY] for p in files.catalogue]
    watch_del = [["-W", p, "-p", "r", "-k", AUDIT_KEY] for p in files.catalogue]
    sys_add = [["-a", *SYSCALL_RULE, "-k", AUDIT_KEY]]
    sys_del = [["-d", *SYSCALL_RULE, "-k", AUDIT_KEY]]
    return [
        AuditMode(AUDIT_W, audit, watch_add, watch_del),
        AuditMode(AUDIT_SYSCALLS, audit, sys_add, sys_del, syscall_scale),
    ]


# -- measurement ------------------------------------------------------------


def _kauditd_pid() -> Optional[int]:
    """The kernel audit thread, whose CPU is the kernel side of audit's cost (read only)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", encoding="ascii") as f:
                    if f.read().strip() == "kauditd":
                        return int(entry)
            except OSError:
                continue
    return None


def _own_cpu() -> float:
    return time.process_time()  # every thread of this process (ns clock), not its children


def _sched_runtime(pid: int) -> float:
    """CPU seconds of a task from /proc/PID/schedstat (ns; /proc/PID/stat has 10 ms ticks)."""
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
        return int(f.read().split()[0]) / 1e9


def _settle(max_s: float = 2.0, step_s: float = 0.02) -> None:
    """Wait until this process's threads (an in-process monitor) stop using CPU, so a
    backlog of one group's events is not drained during the next group's run."""
    end = time.monotonic() + max_s
    while time.monotonic() < end:
        c0 = _own_cpu()
        time.sleep(step_s)
        if _own_cpu() - c0 < step_s * 0.1:
            return


@dataclass
class Results:
    ops: int
    modes: list[Mode]
    ns: dict[str, dict[str, timing.Timing]]  # mode -> group -> ns/iter (stored as seconds)
    # mode -> group -> monitor CPU ns/iter: this process (readegress's threads) + kauditd
    cpu: dict[str, dict[str, timing.Timing]]

    def value(self, mode: str, group: str, stat: str) -> Optional[float]:
        """ns per iteration: ``stat`` is "median" or "min" over the runs."""
        t = self.ns.get(mode, {}).get(group)
        if t is None:
            return None
        return (t.median if stat == "median" else t.low) * 1e9

    def slowdown_pct(self, mode: str, group: str, stat: str = "median") -> Optional[float]:
        m, b = self.value(mode, group, stat), self.value(NONE, group, stat)
        return None if m is None or not b else (m / b - 1.0) * 100.0

    def overhead_ns(self, mode: str, group: str, stat: str = "median") -> Optional[float]:
        m, b = self.value(mode, group, stat), self.value(NONE, group, stat)
        return None if m is None or b is None else m - b

    def floor_pct(self, stat: str) -> float:
        """How far the A/A baseline is from 'none': the noise floor of every slowdown."""
        return max(abs(self.slowdown_pct(NONE_AA, g, stat) or 0.0) for g in GROUPS)


def measure(
    modes: list[Mode],
    workload: Workload,
    files: Files,
    ops: int,
    runs: int,
    budget_s: float,
) -> Results:
    raw: dict[str, dict[str, list[float]]] = {m.label: {g: [] for g in GROUPS} for m in modes}
    cpu: dict[str, dict[str, list[float]]] = {m.label: {g: [] for g in GROUPS} for m in modes}
    kauditd = _kauditd_pid()
    rotation = [0]

    def monitor_cpu() -> float:
        k = 0.0
        if kauditd is not None:
            with contextlib.suppress(OSError, ValueError):
                k = _sched_runtime(kauditd)
        return _own_cpu() + k

    def one(mode: Mode) -> Callable[[], None]:
        def fn() -> None:
            k = rotation[0]
            rotation[0] += 1
            order = [GROUPS[(k + i) % len(GROUPS)] for i in range(len(GROUPS))]
            mode.start()
            try:
                for g in order:
                    n = mode.ops(g, ops)
                    c0 = monitor_cpu()
                    raw[mode.label][g].append(workload.run(n, files.groups[g]))
                    _settle()
                    cpu[mode.label][g].append((monitor_cpu() - c0) * 1e9 / n)
            finally:
                mode.stop()

        return fn

    walls = timing.repeat_interleaved(
        {m.label: one(m) for m in modes}, runs=runs, budget_s=budget_s, warmup=1, min_runs=3
    )
    ns: dict[str, dict[str, timing.Timing]] = {}
    cpu_t: dict[str, dict[str, timing.Timing]] = {}
    for m in modes:
        timed = len(walls[m.label].runs)  # the warm-up's figures come first: drop them
        ns[m.label] = {
            g: timing.Timing(tuple(x * 1e-9 for x in raw[m.label][g][-timed:])) for g in GROUPS
        }
        cpu_t[m.label] = {g: timing.Timing(tuple(cpu[m.label][g][-timed:])) for g in GROUPS}
    return Results(ops, modes, ns, cpu_t)


@dataclass(frozen=True)
class HeldOpens:
    """First opens of a permission-marked file, one fresh process each, vs unwatched."""

    first_none: timing.Timing  # ns for the process's first open/read/close, no monitor
    first_held: timing.Timing  # ... of a catalogue file under 'readegress perm'
    summary: str


def measure_first_opens(config: Any, workload: Workload, files: Files, n: int) -> HeldOpens:
    """``n`` rounds with ``NativeReadSource`` holding the catalogue files (started once,
    as on a host): one fresh child opens a file of the unrelated directory once (no
    warm-up: its first open), then one opens a catalogue file once."""
    held = Readegress(RE_PERM, config, permission=True, held_scale=1.0)
    none: list[float] = []
    ours: list[float] = []
    cat = files.groups["catalogue"]
    plain = files.groups["other dir"]
    held.start()
    try:
        for i in range(n):
            none.append(workload.run(1, [plain[i % len(plain)]], warmup=0) * 1e-9)
            ours.append(workload.run(1, [cat[i % len(cat)]], warmup=0) * 1e-9)
    finally:
        held.stop()
    return HeldOpens(timing.Timing(tuple(none)), timing.Timing(tuple(ours)), held.summary())


def print_held(h: HeldOpens, res: Results, cpu_clock: bool = False) -> list[list[object]]:
    """Prints the held-open figures; returns the target rows (none under a CPU
    clock: the time an opener is held is time blocked, which it does not count)."""
    report.heading("permission-held opens: first open of a process, and repeats")
    first = (h.first_held.median - h.first_none.median) * 1e6
    report.note(
        f"first open (one fresh process per open, {len(h.first_held.runs)} rounds):"
        f" unwatched (other dir) {h.first_none.median * 1e6:.1f} us,"
        f" held {h.first_held.median * 1e6:.1f} us"
        f" [{h.first_held.low * 1e6:.0f}-{h.first_held.high * 1e6:.0f}]: +{first:.1f} us"
    )
    report.note(f"{RE_PERM} during the first opens: {h.summary}")
    rep = res.overhead_ns(RE_PERM, "catalogue")
    if cpu_clock:
        report.note("--clock cpu: held time is blocked time, not counted; judge these on wall time")
        return []
    rows: list[list[object]] = [
        [
            "perm: first open of a process, added",
            f"<= {TARGET_HELD_FIRST_US:g} us",
            f"+{first:.1f} us",
            report.verdict(first, TARGET_HELD_FIRST_US, at_most=True),
        ]
    ]
    if rep is not None:
        report.note(
            f"repeat opens (the loop above, '{RE_PERM}' on catalogue files): +{rep / 1000:.1f} us"
        )
        rows.append(
            [
                "perm: repeat opens in a loop, added",
                f"<= {TARGET_HELD_REPEAT_US:g} us",
                f"+{rep / 1000:.1f} us",
                report.verdict(rep / 1000, TARGET_HELD_REPEAT_US, at_most=True),
            ]
        )
    return rows


def _ns_cell(t: Optional[timing.Timing]) -> str:
    if t is None:
        return "n/a"
    return f"{t.median * 1e9:7.0f} [{t.low * 1e9:.0f}-{t.high * 1e9:.0f}]"


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:+.1f}%"


def print_results(res: Results) -> None:
    report.heading("ns per open/read(4 KiB)/close iteration in the child, median [min-max]")
    rows: list[list[object]] = []
    for m in res.modes:
        by_group = res.ns[m.label]
        n = "/".join(str(m.ops(g, res.ops)) for g in GROUPS)
        runs = len(next(iter(by_group.values())).runs)
        rows.append([m.label, *(_ns_cell(by_group[g]) for g in GROUPS), n, runs])
    report.table(["mode", *GROUPS, "ops per group", "runs"], rows)

    for stat in ("median", "min"):
        report.heading(
            f"slowdown vs none ({stat} / {stat} - 1) and overhead (ns per iteration, {stat}s)"
        )
        rows = []
        for m in res.modes:
            if m.label == NONE:
                continue
            row: list[object] = [m.label]
            for g in GROUPS:
                o = res.overhead_ns(m.label, g, stat)
                pct = _pct(res.slowdown_pct(m.label, g, stat))
                row.append("n/a" if o is None else f"{pct} ({o:+.0f} ns)")
            rows.append(row)
        report.table(["mode", *GROUPS], rows)
        report.note(
            f"noise floor: 'none (A/A)' is {res.floor_pct(stat):.1f}% from 'none' on {stat}s"
            " in this run; a slowdown within that is not distinguishable from zero"
        )

    report.heading("monitor CPU per iteration, ns, median [min-max] (outside the child)")
    report.note(
        "this process's CPU (readegress's threads + spawning the child) + kauditd's, from the"
        " child's start until the monitor is idle again; 'none' is the spawning cost alone"
    )
    rows = []
    for m in res.modes:
        by_group = res.cpu[m.label]
        rows.append(
            [
                m.label,
                *(
                    f"{t.median:7.0f} [{t.low:.0f}-{t.high:.0f}]"
                    for t in (by_group[g] for g in GROUPS)
                ),
            ]
        )
    report.table(["mode", *GROUPS], rows)
    for m in res.modes:
        s = m.summary()
        if s:
            report.note(f"{m.label}: {s}")


def _vs_audit(res: Results, mode: str, stat: str) -> tuple[str, float]:
    """audit -w overhead / ours on catalogue files, shown and as a number."""
    ours = res.overhead_ns(mode, "catalogue", stat)
    audit = res.overhead_ns(AUDIT_W, "catalogue", stat)
    if ours is None or audit is None:
        return "n/a", float("nan")
    if ours <= 0:  # ours within noise of zero: the ratio is unbounded
        return f"inf ({ours:+.0f} vs {audit:+.0f} ns)", float("inf")
    return f"{audit / ours:.2f}x ({ours:+.0f} vs {audit:+.0f} ns)", audit / ours


def targets(res: Results) -> tuple[list[str], list[list[object]]]:
    """Judged on medians (the verdict column); the same on minima beside it."""
    headers = ["target", "wanted", "medians", "", "minima", ""]
    rows: list[list[object]] = []
    labels = {m.label for m in res.modes}
    for mode in (RE_NOTIFY, RE_PERM, RE_CHILD):
        if mode not in labels:
            continue
        for g in NON_CATALOGUE:
            row: list[object] = [f"{mode}: slowdown on {g} files", f"<= {TARGET_SLOWDOWN_PCT:g}%"]
            for stat in ("median", "min"):
                v = res.slowdown_pct(mode, g, stat)
                row += (
                    ["n/a", ""]
                    if v is None
                    else [f"{v:+.1f}%", report.verdict(v, TARGET_SLOWDOWN_PCT, at_most=True)]
                )
            rows.append(row)
    for mode in (RE_NOTIFY, RE_PERM):
        if mode not in labels:
            continue
        row = [f"{mode}: audit -w overhead / ours, catalogue", f">= {TARGET_VS_AUDIT:g}x"]
        for stat in ("median", "min"):
            shown, value = _vs_audit(res, mode, stat)
            ok = (
                "NOT MEASURED"
                if math.isnan(value)
                else report.verdict(value, TARGET_VS_AUDIT, at_most=False)
            )
            row += [shown, ok]
        rows.append(row)
    return headers, rows


# -- the watch process ------------------------------------------------------

WATCH_READY = "readegress: watching"


@dataclass(frozen=True)
class WatchResult:
    argv: list[str]
    ready_s: Optional[float]  # start -> "watching N files" on stderr
    idle: Optional[procstat.UsageWindow]
    busy: Optional[procstat.UsageWindow]
    busy_ns: tuple[float, ...]  # catalogue files, during the busy window
    groups_ns: dict[str, tuple[float, ...]]  # every group, after the busy window
    log: str  # its stderr: the "watching" line and the "stopped" summary
    note: str = ""


def watch_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("readegress.watch") is not None
    except (ImportError, ValueError):
        return False


def measure_watch(
    children: Children,
    workload: Workload,
    files: Files,
    tmpdir: str,
    ops: int,
    held_ops: int,
    idle_s: float,
    busy_s: float,
    warmup_s: float,
) -> WatchResult:
    """``python -m readegress watch --sensitive F...``: RSS/CPU idle, then while the
    workload loops over F; then a few workload runs per group under it."""
    argv = [sys.executable, "-m", "readegress", "watch", "--egress-class", "loopback"]
    for p in files.catalogue:
        argv += ["--sensitive", p]
    log_path = os.path.join(tmpdir, "watch.log")
    ready_s: Optional[float] = None
    idle = busy = None
    busy_ns: list[float] = []
    groups_ns: dict[str, tuple[float, ...]] = {}
    note = ""
    with open(log_path, "wb") as log:
        t0 = time.monotonic()
        proc = children.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = t0 + 60.0
            while time.monotonic() < deadline and proc.poll() is None:
                if WATCH_READY in _tail(log_path, 4000):
                    ready_s = time.monotonic() - t0
                    break
                time.sleep(0.05)
            if ready_s is None:
                raise RuntimeError(
                    f"watch not ready after 60s (rc {proc.poll()}): {_tail(log_path)}"
                )
            time.sleep(warmup_s)
            idle = procstat.sample(proc.pid, idle_s)
            stop = threading.Event()
            errors: list[str] = []

            def loop() -> None:
                while not stop.is_set():
                    try:
                        busy_ns.append(workload.run(held_ops, files.catalogue))
                    except Exception as e:
                        errors.append(str(e))
                        return

            t = threading.Thread(target=loop, name="watch-workload", daemon=True)
            t.start()
            try:
                busy = procstat.sample(proc.pid, busy_s)
            finally:
                stop.set()
                t.join(60.0 + held_ops * 1e-2)
            if errors:
                raise RuntimeError(f"workload under watch: {errors[0]}")
            for g in GROUPS:
                n = held_ops if g == "catalogue" else ops
                groups_ns[g] = tuple(workload.run(n, files.groups[g]) for _ in range(3))
            if proc.poll() is not None:
                note = f"watch exited early, rc {proc.returncode}"
        except Exception as e:  # a watch that fails is a result of this section
            note = str(e)
        finally:
            children.stop(proc)
    return WatchResult(
        argv, ready_s, idle, busy, tuple(busy_ns), groups_ns, _tail(log_path, 2000), note
    )


def _tail(path: str, n: int = 600) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace").strip()
    except OSError:
        return ""


def print_watch(w: WatchResult, res: Results) -> None:
    short = [*w.argv[:6], f"--sensitive <{len(files_of(w.argv))} catalogue files>"]
    report.note(f"command: {shlex.join(short)}")
    if w.ready_s is not None:
        report.note(f"ready ('{WATCH_READY} ...' on stderr) {w.ready_s:.1f}s after start")
    if w.note:
        report.note(f"FAILED: {w.note}")
    for line in w.log.splitlines():
        if line.startswith("readegress:"):
            report.note(f"watch said: {line[len('readegress: ') :]}")
    rows: list[list[object]] = []
    for label, u in (("idle", w.idle), ("workload on its files", w.busy)):
        if u is None:
            continue
        rows.append(
            [
                label,
                f"{u.rss_mb_median:.1f}",
                f"{u.rss_mb_max:.1f}",
                f"{u.hwm_kb / 1024:.1f}",
                f"{u.cpu_percent:.2f}",
                f"{u.seconds:.1f}",
                u.threads,
            ]
        )
    if rows:
        report.table(
            ["phase", "RSS MB med", "RSS MB max", "peak MB", "CPU % core", "window s", "threads"],
            rows,
        )
    if w.busy_ns:
        t = timing.Timing(tuple(x * 1e-9 for x in w.busy_ns))
        report.note(
            f"workload during the busy window (catalogue files): {_ns_cell(t).strip()} ns/iter,"
            f" {len(w.busy_ns)} back-to-back runs"
        )
    if w.groups_ns:
        rows = []
        for g in GROUPS:
            t = timing.Timing(tuple(x * 1e-9 for x in w.groups_ns[g]))
            base = res.ns.get(NONE, {}).get(g)
            rows.append(
                [
                    g,
                    _ns_cell(t),
                    "n/a" if base is None else f"{(timing.ratio(t, base) - 1) * 100:+.1f}%",
                ]
            )
        report.note("workload under watch, 3 runs per group, vs 'none' above (NOT interleaved):")
        report.table(["group", "ns/iter under watch", "slowdown vs none"], rows)


def files_of(argv: Sequence[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--sensitive"]


# -- main -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench native",
        description="Overhead of the native (fanotify) read source on open/read/close, "
        "vs no monitoring and Linux audit, measured in the same run.",
    )
    p.add_argument("--ops", type=int, default=50_000, help="iterations per child run (50000)")
    p.add_argument("--runs", type=int, default=15, help="timed rounds per mode (default 15)")
    p.add_argument(
        "--syscall-ops",
        type=int,
        default=0,
        help="iterations for the all-syscalls audit mode (default ops/10)",
    )
    p.add_argument(
        "--held-ops",
        type=int,
        default=0,
        help="iterations on catalogue files while openers are held (perm, watch; default ops/10)",
    )
    p.add_argument(
        "--budget", type=float, default=150.0, help="seconds of measurement rounds at most (150)"
    )
    p.add_argument(
        "--child", choices=("c", "python"), default="c", help="workload loop (default c)"
    )
    p.add_argument("--no-audit", action="store_true", help="skip the audit modes")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the child times: wall time (default) or its own CPU time, which leaves"
        " out time descheduled by other load (and time blocked in held opens)",
    )
    p.add_argument(
        "--held-ab",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only the held-open comparison: compiled vs pure-Python permission reader vs a"
        " C floor, ROUNDS rounds (bench/held_readers.py)",
    )
    p.add_argument("--idle-window", type=float, default=30.0, help="watch idle window, s (30)")
    p.add_argument("--busy-window", type=float, default=15.0, help="watch busy window, s (15)")
    p.add_argument("--warmup", type=float, default=5.0, help="watch start-up wait, s (5)")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    ops = max(1000, min(args.ops, 1_000_000))
    runs = max(1, min(args.runs, 50))
    syscall_ops = args.syscall_ops if args.syscall_ops > 0 else max(500, ops // 10)
    held_ops = args.held_ops if args.held_ops > 0 else max(500, ops // 10)
    sigterm_as_interrupt()
    started = time.monotonic()
    machine.describe(["native", *argv])
    if os.geteuid() != 0:
        report.note("fanotify and auditctl need root: run as root")
        return 2
    children = Children()
    tmpdir = tempfile.mkdtemp(prefix="readegress-bench-native-")
    audit: Optional[Audit] = None
    try:
        from readegress.detect.config import parse_config

        files = make_files(tmpdir)
        config = parse_config(catalogue_toml(files), os.path.join(tmpdir, "bench.toml"))
        prefix, child_desc = build_child(tmpdir, args.child)
        workload = Workload(
            children, prefix, warmup=min(1000, ops // 10), cpu_clock=args.clock == "cpu"
        )

        report.heading("setup")
        report.note(f"workload: {child_desc}; clock: {args.clock}")
        report.note(
            f"files: {FILES_PER_GROUP} x {FILE_BYTES} B per group, cycled; catalogue"
            f" {files.secrets}/id_bench_* (class bench_keys, level high); same dir"
            f" {files.secrets}/notes_*; other dir {tmpdir}/plain/data_*"
        )
        if args.held_ab > 0:
            from bench import held_readers

            rounds = min(args.held_ab, 50)
            held_ops = min(held_ops, 3000)
            ab = held_readers.measure(config, workload, files, rounds, 4, held_ops)
            held_readers.print_ab(ab, rounds, 4, held_ops)
            return 0
        modes: list[Mode] = [
            Mode(NONE),
            Mode(NONE_AA),
            Readegress(RE_NOTIFY, config, permission=False, held_scale=1.0),
            Readegress(RE_CHILD, config, permission=False, held_scale=1.0, dir_watch="child"),
            Readegress(RE_PERM, config, permission=True, held_scale=held_ops / ops),
        ]
        auditctl = shutil.which("auditctl")
        if args.no_audit:
            report.note("audit modes skipped (--no-audit)")
        elif auditctl is None:
            report.note("audit modes skipped: no auditctl (apt-get install auditd)")
        else:
            audit = Audit(auditctl)
            why = audit.usable()
            if why:
                report.note(f"audit modes skipped: {why}")
            else:
                report.note(
                    f"audit: enabled {audit.enabled0} as found (restored after each audit mode);"
                    f" {audit.auditd()}; {len(audit.rules0)} rule(s) of others present"
                )
                if audit.stale:
                    report.note(
                        f"removed {audit.stale} rule(s) with key {AUDIT_KEY} left by a killed run"
                    )
                modes += audit_modes(audit, files, syscall_ops / ops)
        report.note(
            f"{ops} iterations per child run ({held_ops} on catalogue files under '{RE_PERM}',"
            f" {syscall_ops} under '{AUDIT_SYSCALLS}'), one child per group per round; {runs}"
            f" rounds after one warm-up, modes and groups in rotating order, at most"
            f" {args.budget:.0f}s of rounds"
        )
        res = measure(modes, workload, files, ops, runs, args.budget)
        print_results(res)
        held_rows = print_held(
            measure_first_opens(config, workload, files, FIRST_OPENS), res, args.clock == "cpu"
        )

        watch: Optional[WatchResult] = None
        report.heading("readegress watch process: RSS and CPU")
        if watch_available():
            watch = measure_watch(
                children,
                workload,
                files,
                tmpdir,
                ops,
                held_ops,
                max(1.0, min(args.idle_window, 600.0)),
                max(1.0, min(args.busy_window, 600.0)),
                max(0.0, min(args.warmup, 60.0)),
            )
            print_watch(watch, res)
        else:
            report.note("SKIPPED: readegress.watch is not there yet")

        report.heading("targets")
        headers, rows = targets(res)
        report.table(headers, rows)
        if held_rows:
            report.table(["target", "wanted", "median", ""], held_rows)
        report.note(
            f"noise floor (A/A vs none): {res.floor_pct('median'):.1f}% on medians,"
            f" {res.floor_pct('min'):.1f}% on minima; the verdict that counts is on medians"
        )
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", flush=True)
        return 130
    finally:
        children.close()
        if audit is not None:
            audit.purge()
            try:
                left = [r for r in audit.rules() if AUDIT_KEY in r]
                state = audit.status().get("enabled")
                report.note(
                    f"audit after cleanup: enabled {state} (found {audit.enabled0}),"
                    f" {len(left)} rule(s) with key {AUDIT_KEY} left"
                )
            except RuntimeError as e:
                report.note(f"audit after cleanup: cannot read the state: {e}")
        shutil.rmtree(tmpdir, ignore_errors=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n   total wall time {time.monotonic() - started:.0f}s; load average at the end {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
