"""A test osquery core in its own process, for the extensions the benchmarks start.

``python -m bench.core_process SOCKET`` runs ``readegress.testing.OsqueryCore``
on SOCKET with ``watch_interval=3`` (osqueryd's ``--extensions_interval``
default: it pings every registered extension every 3 s, which is part of an
extension's idle cost), prints ``ready`` and serves until its stdin closes.
A separate process keeps the core's threads out of the measuring process,
as osqueryd is a separate process in production.
"""

from __future__ import annotations

import os
import subprocess
import sys

from bench.children import Children, env_with_bench_path, python_argv

WATCH_INTERVAL_S = 3.0


class CoreProcess:
    """Handle on the core child; ``socket_path`` is the manager socket."""

    def __init__(self, children: Children, socket_path: str) -> None:
        from bench.fleet import _readline_with_deadline

        self._children = children
        self.socket_path = socket_path
        self.proc = children.spawn(
            python_argv("bench.core_process", socket_path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env_with_bench_path(),
        )
        assert self.proc.stdout is not None
        line = _readline_with_deadline(self.proc.stdout, 20.0).strip()
        if line != "ready":
            self.close()
            raise RuntimeError(f"test osquery core did not start: {line!r}")

    def close(self) -> None:
        self._children.finish(self.proc)


def available() -> bool:
    """Whether ``readegress.testing.core`` exists in this checkout."""
    import importlib.util

    return importlib.util.find_spec("readegress.testing.core") is not None


def main(argv: list[str]) -> int:
    from bench.children import die_with_parent

    die_with_parent()
    if len(argv) != 1:
        print("usage: python -m bench.core_process SOCKET", file=sys.stderr)
        return 2
    from readegress.testing import OsqueryCore

    core = OsqueryCore(argv[0], watch_interval=WATCH_INTERVAL_S)
    core.start()
    try:
        print("ready", flush=True)
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    finally:
        core.stop()
        if os.path.exists(argv[0]):
            os.unlink(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
