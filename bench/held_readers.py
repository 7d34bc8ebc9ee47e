"""Permission-held opens: the compiled reader, the pure-Python one, and a C floor.

``python -m bench native --held-ab ROUNDS`` (see bench/README.md). In each
round, in rotating order, with one reader active at a time:

- **none**: no monitor;
- **compiled**: ``NativeReadSource`` with its defaults (the permission
  reader in C: repeat opens allowed without the GIL, identity reads in one
  GIL release; ``readegress._speedups``);
- **pure**: the same source with ``readegress.kernel.fanotify`` on its
  pure-Python paths (what the ``.ext`` runs);
- **C floor**: a separate C program (compiled here) that marks the same
  catalogue files with ``FAN_OPEN_PERM`` and allows every event at once,
  reading no identity: what waking a userspace answerer costs on this machine.

Each reader serves one child looping ``--ops`` opens of the catalogue files
(repeats) and then ``--firsts`` fresh children opening one catalogue file once
(a process's first open). Wall time, as the opener sees it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

from bench import report, timing

FLOOR_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <sys/fanotify.h>
#include <unistd.h>
/* argv: files to mark. Allows every FAN_OPEN_PERM at once; exits on stdin EOF. */
int main(int argc, char **argv) {
    int g = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
    if (g < 0) { perror("fanotify_init"); return 1; }
    for (int i = 1; i < argc; i++)
        if (fanotify_mark(g, FAN_MARK_ADD, FAN_OPEN_PERM, AT_FDCWD, argv[i]) < 0) {
            perror(argv[i]);
            return 1;
        }
    printf("ready\n");
    fflush(stdout);
    char buf[4096] __attribute__((aligned(8)));
    struct pollfd p[2] = {{g, POLLIN, 0}, {0, POLLIN, 0}};
    for (;;) {
        if (poll(p, 2, -1) < 0) continue;
        if (p[1].revents) return 0;
        ssize_t n = read(g, buf, sizeof buf);
        struct fanotify_event_metadata *m = (void *)buf;
        for (; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
            if (m->fd < 0) continue;
            struct fanotify_response r = {m->fd, FAN_ALLOW};
            if (write(g, &r, sizeof r) < 0) perror("write");
            close(m->fd);
        }
    }
}
"""

READERS = ("none", "compiled", "pure", "C floor")
#: the child's runs in a round: (label, timed loop) per reader
SAFETY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class HeldAB:
    loops: dict[str, timing.Timing]  # ns per open/read/close in a loop of repeats
    firsts: dict[str, timing.Timing]  # ns of a fresh process's first open
    notes: tuple[str, ...]


def build_floor(tmpdir: str) -> Optional[str]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = os.path.join(tmpdir, "floor.c")
    exe = os.path.join(tmpdir, "floor")
    with open(src, "w", encoding="ascii") as f:
        f.write(FLOOR_C)
    r = subprocess.run([cc, "-O2", "-o", exe, src], capture_output=True, text=True, timeout=60)
    return exe if r.returncode == 0 else None


@contextlib.contextmanager
def pure_fanotify() -> Iterator[None]:
    """readegress.kernel.fanotify on its pure-Python paths while the block runs."""
    from readegress.kernel import fanotify

    saved = fanotify._native
    fanotify._native = None
    try:
        yield
    finally:
        fanotify._native = saved


@contextlib.contextmanager
def reader(name: str, config: Any, floor: Optional[str], files: list[str]) -> Iterator[None]:
    from bench.native import RE_PERM, Readegress

    if name == "none":
        yield
        return
    if name == "C floor":
        assert floor is not None
        proc = subprocess.Popen(
            [floor, *files], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the C floor reader did not start")
            yield
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=SAFETY_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    mode = Readegress(RE_PERM, config, permission=True, held_scale=1.0)
    with pure_fanotify() if name == "pure" else contextlib.nullcontext():
        mode.start()
        try:
            yield
        finally:
            mode.stop()


def measure(config: Any, workload: Any, files: Any, rounds: int, firsts: int, ops: int) -> HeldAB:
    tmpdir = tempfile.mkdtemp(prefix="readegress-bench-floor-")
    notes: list[str] = []
    try:
        floor = build_floor(tmpdir)
        names = [n for n in READERS if n != "C floor" or floor is not None]
        if floor is None:
            notes.append("no C compiler: the C floor reader is skipped")
        cat = files.groups["catalogue"]
        loops: dict[str, list[float]] = {n: [] for n in names}
        first: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                with reader(name, config, floor, cat):
                    loops[name].append(workload.run(ops, cat) * 1e-9)
                    for i in range(firsts):
                        first[name].append(workload.run(1, [cat[i % len(cat)]], warmup=0) * 1e-9)
        return HeldAB(
            {n: timing.Timing(tuple(v)) for n, v in loops.items()},
            {n: timing.Timing(tuple(v)) for n, v in first.items()},
            tuple(notes),
        )
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def print_ab(ab: HeldAB, rounds: int, firsts: int, ops: int) -> None:
    report.heading("permission-held opens: compiled reader vs pure Python vs a C floor")
    report.note(
        f"{rounds} rounds, readers in rotating order; per reader and round: one child looping"
        f" {ops} opens of the catalogue files, then {firsts} fresh children opening one once"
    )
    for n in ab.notes:
        report.note(n)
    none_loop = ab.loops["none"].median
    none_first = ab.firsts["none"].median
    rows = []
    for name in ab.loops:
        lp, fs = ab.loops[name], ab.firsts[name]
        rows.append(
            [
                name,
                f"{lp.median * 1e6:.1f} [{lp.low * 1e6:.1f}-{lp.high * 1e6:.1f}]",
                "" if name == "none" else f"+{(lp.median - none_loop) * 1e6:.1f}",
                f"{fs.median * 1e6:.1f} [{fs.low * 1e6:.0f}-{fs.high * 1e6:.0f}]",
                "" if name == "none" else f"+{(fs.median - none_first) * 1e6:.1f}",
            ]
        )
    report.table(
        ["reader", "loop us/open median [min-max]", "added", "first open us", "added"], rows
    )
    report.note(
        "targets: repeats <= 10 us added, first open <= 50 us added (medians); the C floor"
        " reads no identity: no answerer that does can beat it"
    )
