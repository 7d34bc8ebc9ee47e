"""What the numbers were measured on: printed at the top of every benchmark run."""

from __future__ import annotations

import os
import platform
import resource
import shlex
import sys

from bench import report


def _first_line(path: str, prefix: str = "") -> str:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[-1].strip() if prefix else line.strip()
    except OSError:
        pass
    return "?"


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe(argv: list[str]) -> None:
    report.heading("machine")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        from thrift.protocol import fastbinary  # noqa: F401

        fast = "yes"
    except ImportError:
        fast = "no"
    rows = [
        ["command", shlex.join([os.path.basename(sys.executable), "-m", "bench", *argv])],
        ["nproc", str(os.cpu_count())],
        ["cpu", _first_line("/proc/cpuinfo", "model name")],
        ["kernel", f"{platform.system()} {platform.release()}"],
        [
            "os",
            _first_line("/etc/debian_version") if os.path.exists("/etc/debian_version") else "?",
        ],
        ["python", f"{platform.python_implementation()} {platform.python_version()}"],
        ["load average", load],
        ["RLIMIT_NOFILE", f"soft {soft}, hard {hard}"],
        ["euid", str(os.geteuid())],
        [
            "packages",
            f"psutil {_version('psutil')}, osquery {_version('osquery')}, thrift "
            f"{_version('thrift')} (fastbinary {fast}), apsw {_version('apsw')}",
        ],
    ]
    for k, v in rows:
        print(f"   {k:<14} {v}")
