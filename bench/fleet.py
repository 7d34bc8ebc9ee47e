"""A fleet of established loopback TCP connections, held by child processes.

Each holder child (``python -m bench.fleet``) listens on 127.0.0.1 and ::1
and, on ``grow N``, opens connections until it holds N, alternating IPv4 and
IPv6 (IPv4 only when ::1 is unavailable). Both ends of every connection stay
open in the holder, so N connections are 2N established sockets (plus the
listeners), every one owned by a fleet pid. One holder is used while
RLIMIT_NOFILE allows, more when it does not (see :class:`ConnectionFleet`).
On each connection the client sends ``1 + i % 13`` bytes and the server
answers ``1 + 3 * (i % 7)`` bytes, so every socket has non-zero counters and
the totals are known exactly: the sum of ``bytes_sent`` over the fleet's
sockets must equal ``client_sent + server_sent`` (so must ``bytes_received``).

Every socket has ``SO_LINGER {on, 0}``: closing (or the child dying) resets
the connections instead of leaving 2N sockets in TIME_WAIT that would
inflate the next measurement. The child dies with its parent
(``PR_SET_PDEATHSIG``) and exits on EOF of its stdin. Only loopback is used.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

from bench.children import Children, env_with_bench_path, python_argv

_LINGER_RESET = struct.pack("ii", 1, 0)
#: A connection pair must come up within this; the whole grow within GROW_BUDGET_S.
_CONNECT_TIMEOUT_S = 5.0
GROW_BUDGET_S = 120.0


def client_bytes(i: int) -> int:
    return 1 + i % 13


def server_bytes(i: int) -> int:
    return 1 + 3 * (i % 7)


@dataclass(frozen=True)
class FleetState:
    """What the fleet holds after a ``grow``, summed over its holder processes."""

    pids: tuple[int, ...]
    connections: int
    sockets: int  # established sockets: both ends of each connection
    client_sent: int
    server_sent: int
    ipv6: bool
    grow_seconds: float

    @property
    def bytes_total(self) -> int:
        """Bytes sent (= bytes received) summed over every fleet socket."""
        return self.client_sent + self.server_sent


class _Holder:
    """One child process holding both ends of some of the connections."""

    def __init__(self, children: Children) -> None:
        self._children = children
        self.proc = children.spawn(
            python_argv("bench.fleet"),
            stdin=_PIPE,
            stdout=_PIPE,
            text=True,
            env=env_with_bench_path(),
        )
        self.connections = 0
        self.report: dict[str, Any] = {}

    def grow(self, connections: int) -> dict[str, Any]:
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"grow {connections}\n")
        proc.stdin.flush()
        line = _readline_with_deadline(proc.stdout, GROW_BUDGET_S + 10.0)
        if not line:
            raise RuntimeError(f"connection fleet (pid {proc.pid}) exited while growing")
        data: dict[str, Any] = json.loads(line)
        if "error" in data:
            raise RuntimeError(f"connection fleet (pid {proc.pid}): {data['error']}")
        self.connections = int(data["connections"])
        self.report = data
        return data

    def close(self) -> None:
        self._children.finish(self.proc)


class ConnectionFleet:
    """The parent's handle on the fleet: one or more holder children.

    A process can hold at most RLIMIT_NOFILE descriptors and raising the hard
    limit needs CAP_SYS_RESOURCE, which a container may lack; the fleet then
    spreads the connections over as many holders as needed, each holding both
    ends of its share (so every socket still belongs to a fleet pid).
    """

    def __init__(self, children: Children) -> None:
        from bench.children import raise_nofile

        self._children = children
        # Children inherit the limits; leave room for the interpreter's own fds.
        self.per_holder = max(1, (raise_nofile(65536) - 64) // 2)
        self._holders: list[_Holder] = []
        self.state: FleetState | None = None

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(h.proc.pid for h in self._holders)

    def grow(self, connections: int) -> FleetState:
        """Hold ``connections`` connections in all (only grows); returns the totals."""
        t0 = time.perf_counter()
        need = -(-connections // self.per_holder)
        while len(self._holders) < need:
            self._holders.append(_Holder(self._children))
        share = -(-connections // len(self._holders))
        left = connections
        for h in self._holders:
            want = max(h.connections, min(share, left))
            if want > h.connections:
                h.grow(want)
            left -= h.connections
        reports = [h.report for h in self._holders if h.report]
        self.state = FleetState(
            pids=self.pids,
            connections=sum(int(r["connections"]) for r in reports),
            sockets=sum(int(r["sockets"]) for r in reports),
            client_sent=sum(int(r["client_sent"]) for r in reports),
            server_sent=sum(int(r["server_sent"]) for r in reports),
            ipv6=all(bool(r["ipv6"]) for r in reports),
            grow_seconds=time.perf_counter() - t0,
        )
        return self.state

    def close(self) -> None:
        for h in self._holders:
            h.close()
        self._holders.clear()

    def __enter__(self) -> ConnectionFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_PIPE = -1  # subprocess.PIPE, without importing subprocess at module level


def _readline_with_deadline(stream: IO[str], timeout: float) -> str:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"connection fleet did not answer within {timeout:.0f}s")
    return stream.readline()


# --- the child -----------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, n: int) -> None:
    got = 0
    for _ in range(n + 1):  # each recv returns at least one byte or the peer closed
        if got >= n:
            return
        chunk = sock.recv(n - got)
        if not chunk:
            raise ConnectionError("peer closed during fleet setup")
        got += len(chunk)
    if got < n:
        raise ConnectionError("short read during fleet setup")


class _Fleet:
    def __init__(self) -> None:
        self.listeners: list[socket.socket] = []
        self.sockets: list[socket.socket] = []
        self.client_sent = 0
        self.server_sent = 0
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                lst = socket.socket(family, socket.SOCK_STREAM)
            except OSError:
                continue
            try:
                lst.bind((host, 0))
                lst.listen(4096)
            except OSError:
                lst.close()
                continue
            self.listeners.append(lst)
        if not self.listeners or self.listeners[0].family != socket.AF_INET:
            raise RuntimeError("cannot listen on 127.0.0.1")

    @property
    def connections(self) -> int:
        return len(self.sockets) // 2

    def grow(self, target: int) -> None:
        deadline = time.monotonic() + GROW_BUDGET_S
        i = self.connections
        while i < target:
            lst = self.listeners[i % len(self.listeners)]
            client = socket.socket(lst.family, socket.SOCK_STREAM)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            client.settimeout(_CONNECT_TIMEOUT_S)
            self.sockets.append(client)
            client.connect(lst.getsockname()[:2])
            lst.settimeout(_CONNECT_TIMEOUT_S)
            server, _ = lst.accept()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            server.settimeout(_CONNECT_TIMEOUT_S)
            self.sockets.append(server)
            a, b = client_bytes(i), server_bytes(i)
            client.sendall(b"q" * a)
            _recv_exactly(server, a)
            server.sendall(b"r" * b)
            _recv_exactly(client, b)
            self.client_sent += a
            self.server_sent += b
            i += 1
            if i % 256 == 0 and time.monotonic() > deadline:
                raise TimeoutError(f"built only {i} of {target} connections in {GROW_BUDGET_S}s")

    def report(self, seconds: float) -> dict[str, Any]:
        import os

        return {
            "pid": os.getpid(),
            "connections": self.connections,
            "sockets": len(self.sockets),
            "listen_ports": [lst.getsockname()[1] for lst in self.listeners],
            "client_sent": self.client_sent,
            "server_sent": self.server_sent,
            "ipv6": len(self.listeners) > 1,
            "grow_seconds": seconds,
        }

    def close(self) -> None:
        for s in self.sockets + self.listeners:
            with contextlib.suppress(OSError):
                s.close()


def child_main() -> int:
    from bench.children import die_with_parent, raise_nofile

    die_with_parent()
    raise_nofile(65536)
    fleet = _Fleet()
    try:
        for _ in range(1000):  # one command per line; EOF ends the fleet
            line = sys.stdin.readline()
            if not line:
                break
            cmd, _, arg = line.strip().partition(" ")
            if cmd != "grow":
                print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)
                continue
            t0 = time.perf_counter()
            try:
                fleet.grow(int(arg))
            except (OSError, ValueError) as e:
                print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
                continue
            print(json.dumps(fleet.report(time.perf_counter() - t0)), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
