"""Shared fixtures for the kernel-collector tests: fake procfs trees.

Real /proc is used everywhere it can be; a fake tree only stands in for
content the kernel will not produce on demand (a pid reused with new start
ticks, another user's unreadable fd directory on a tree we control).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

FAKE_BOOT_ID = "00000000-1111-2222-3333-444444444444"
FAKE_BTIME = 1700000000


class FakeProc:
    """A procfs tree with the files the collectors read."""

    def __init__(self, root: Path, *, net_ns: Optional[int] = None) -> None:
        self.root = root
        self.net_ns = net_ns
        (root / "sys/kernel/random").mkdir(parents=True)
        (root / "sys/kernel/random/boot_id").write_text(FAKE_BOOT_ID + "\n")
        (root / "stat").write_text(f"cpu 1 2 3\nbtime {FAKE_BTIME}\nprocesses 5\n")
        if net_ns is not None:
            (root / "self/ns").mkdir(parents=True)
            os.symlink(f"net:[{net_ns}]", root / "self/ns/net")

    def add(self, pid: int, start_ticks: int, fds: dict[int, str], comm: str = "fake") -> Path:
        """(Re)create /proc/<pid> with the given fd link targets."""
        d = self.root / str(pid)
        if d.exists():
            self.remove(pid)
        (d / "fd").mkdir(parents=True)
        # Fields after "(comm)": state, ppid, 4 more, flags, 12 more, starttime, ...
        rest = ["S", "1"] + ["0"] * 4 + ["4194560"] + ["0"] * 12 + [str(start_ticks)] + ["0"] * 30
        (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(rest) + "\n")
        (d / "comm").write_text(comm + "\n")
        (d / "cmdline").write_bytes(b"fake\0--flag\0")
        (d / "status").write_text(f"Name:\t{comm}\nUid:\t1000\t1000\t1000\t1000\n")
        os.symlink("/usr/bin/fake", d / "exe")
        if self.net_ns is not None:
            (d / "ns").mkdir()
            os.symlink(f"net:[{self.net_ns}]", d / "ns/net")
        for n, target in fds.items():
            os.symlink(target, d / "fd" / str(n))
        return d

    def remove(self, pid: int) -> None:
        d = self.root / str(pid)
        for p in sorted(d.rglob("*"), reverse=True):
            if p.is_symlink() or p.is_file():
                p.unlink()
            else:
                p.rmdir()
        d.rmdir()

    def relink(self, pid: int, fd: int, target: str) -> None:
        p = self.root / str(pid) / "fd" / str(fd)
        if p.is_symlink():
            p.unlink()
        os.symlink(target, p)


@pytest.fixture
def fake_proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


@pytest.fixture
def world_readable_fake_proc() -> Iterator[FakeProc]:
    """A fake tree a non-root child can walk (pytest's tmp_path is private to root)."""
    d = tempfile.mkdtemp(prefix="readegress-fakeproc-")
    os.chmod(d, 0o755)
    try:
        yield FakeProc(Path(d) / "proc")
    finally:
        for p in Path(d).rglob("*"):
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o755)
        for p in sorted(Path(d).rglob("*"), reverse=True):
            if p.is_symlink() or p.is_file():
                p.unlink()
            else:
                p.rmdir()
        os.rmdir(d)


@pytest.fixture
def fake_proc_ns(tmp_path: Path) -> FakeProc:
    """A fake tree whose processes all live in the caller's (real) network
    namespace, so a monitor over it dumps real sockets."""
    return FakeProc(tmp_path / "proc", net_ns=os.stat("/proc/self/ns/net").st_ino)


@pytest.fixture
def sock() -> Iterator[str]:
    """A manager socket path in a fresh short directory (UNIX socket paths hold 107 bytes)."""
    import shutil

    d = tempfile.mkdtemp(prefix="re-", dir="/tmp")
    try:
        yield os.path.join(d, "osquery.em")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def core(sock: str) -> Iterator[object]:
    """The project's protocol-faithful osquery core, serving on ``sock``."""
    from readegress.testing.core import OsqueryCore

    with OsqueryCore(sock) as c:
        yield c


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the Spark tests last: once started, pyspark's JVM stays in the test process
    (its gateway outlives ``SparkSession.stop``), and its threads and worker processes
    disturb the live tests that time real connections on a 2-core machine."""
    items.sort(key=lambda item: item.path.name == "test_fleet_spark.py")
