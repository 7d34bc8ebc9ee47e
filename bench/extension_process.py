"""The real extension process, as osqueryd would launch it, for the benchmarks.

``python -m readegress extension --socket S`` is started against a test
osquery core listening on S (``readegress.testing.core.OsqueryCore``). Once
the core lists it (by name, asked through ``readegress.osquery.client.ManagerClient``)
and its socket ``S.<uuid>`` answers a ping, it is ready. Its stderr goes to a
log file whose tail is shown if it fails to come up.
"""

from __future__ import annotations

import subprocess
import time
from typing import IO, Any

from bench.children import Children


def extension_argv(manager_socket: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "readegress", "extension", "--socket", manager_socket]


class ExtensionProcess:
    """One ``readegress extension`` child registered with a core on ``manager_socket``."""

    def __init__(self, children: Children, manager_socket: str, log_path: str) -> None:
        self._children = children
        self.manager_socket = manager_socket
        self.log_path = log_path
        self.argv = extension_argv(manager_socket)
        self._log: IO[Any] = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = children.spawn(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_registered(self, timeout_s: float = 30.0, name: str = "readegress") -> str:
        """The extension's own socket (``S.<uuid>``) once registered and answering."""
        from readegress.osquery.client import ExtensionClient, ManagerClient

        end = time.monotonic() + timeout_s
        with ManagerClient(self.manager_socket, timeout=2.0) as manager:
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"readegress extension exited with {self.proc.returncode}:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    uuids = [u for u, i in manager.extensions().items() if i.name == name]
                    for uuid in uuids:
                        path = f"{self.manager_socket}.{uuid}"
                        with ExtensionClient(path, timeout=2.0) as ext:
                            if ext.ping().ok:
                                return path
                except (OSError, RuntimeError):
                    pass  # not up yet
                time.sleep(0.05)
        raise TimeoutError(
            f"readegress extension did not register within {timeout_s:.0f}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            self._log.flush()
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self._children.stop(self.proc, timeout=5.0)
        self._log.close()

    def __enter__(self) -> ExtensionProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
