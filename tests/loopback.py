"""Loopback TCP/UDP peers in child processes, for tests that need real sockets and pids.

Only 127.0.0.1 and ::1 are ever used. Each peer is this file run as a child
Python process that speaks a line protocol on stdin/stdout, so a test knows
the peer's pid and descriptor numbers and decides when it sends, closes and
exits. Every wait is bounded (``timeout``), every child kills itself after
``CHILD_LIFETIME`` seconds, and the context managers kill and reap them.

    with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as cli:
        cli.send(10_000_000)
        srv.wait_received(10_000_000)

Child commands (one per line) and replies:

* server start-up: ``LISTEN <port> <listen_fd>``; after a connection
  ``ACCEPT <fd> <peer_port>`` (unless started with ``--no-accept``).
* client start-up: ``CONNECTED <fd> <local_port>``.
* ``send N`` → ``SENT N`` (client: on its socket; server: on the accepted one)
* ``wait N`` → ``GOT <total>`` once N bytes were received (server)
* ``close`` → ``CLOSED`` (the connection; a server also closes its listener)
* ``reset`` → ``RESET`` (closes the connection with SO_LINGER 0: an RST)
* ``udp`` → ``UDP <fd> <port>`` (a UDP socket bound to the loopback address)
* ``comm NAME`` → ``COMM`` (writes /proc/self/comm)
* ``open`` → ``OPEN <fd>`` (opens /dev/null); ``closefd N`` → ``CLOSEDFD``
* ``listen`` → ``LISTEN2 <fd> <port>`` (an extra TCP listener)
* ``exit`` → the process exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Optional, TypeVar

HERE = os.path.abspath(__file__)
CHILD_LIFETIME = 120  # seconds; a leaked child dies on its own
DEFAULT_TIMEOUT = 20.0
UNSHARE = "/usr/bin/unshare"
NSENTER = "/usr/bin/nsenter"
IP = "/usr/sbin/ip"

T = TypeVar("T")


def loopback_host(family: int) -> str:
    return "127.0.0.1" if family == socket.AF_INET else "::1"


class Peer:
    """A child process running this file, driven line by line."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        prefix: Sequence[str] = (),
        user: Optional[int] = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.timeout = timeout
        # The child drops to ``user`` itself, after start-up: the interpreter
        # may live where that user cannot exec it from (e.g. under /root).
        as_user = ["--as-user", str(user)] if user is not None else []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, HERE, *as_user, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self.proc.stdout is not None
        self._pending = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    def _readline(self, deadline: float) -> str:
        # Own line buffer over the raw pipe: a buffered reader could hold a
        # second line that select() then never reports.
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                raise TimeoutError(f"peer {self.pid}: no reply within the timeout")
            assert self.proc.stdout is not None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError(f"peer {self.pid} exited (rc={self.proc.poll()})")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode()

    def expect(self, word: str, timeout: Optional[float] = None) -> list[str]:
        """Read lines until one starts with ``word``; returns its other fields."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        for _ in range(1000):
            try:
                fields = self._readline(deadline).split()
            except (TimeoutError, EOFError) as e:
                raise type(e)(f"{e} (waiting for {word!r})") from None
            if fields and fields[0] == word:
                return fields[1:]
        raise TimeoutError(f"peer {self.pid}: too many lines before {word!r}")

    def ask(self, line: str, word: str, timeout: Optional[float] = None) -> list[str]:
        self.command(line)
        return self.expect(word, timeout)

    def send(self, n: int) -> None:
        self.ask(f"send {n}", "SENT")

    def close_connection(self) -> None:
        self.ask("close", "CLOSED")

    def exit(self, timeout: float = 10.0) -> int:
        """Ask the child to exit and reap it."""
        with contextlib.suppress(BrokenPipeError, ValueError):  # already gone
            self.command("exit")
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._sel.close()


class Server(Peer):
    """A server peer: listening port in :attr:`port`, accepted fd after :meth:`accepted`."""

    def __init__(
        self,
        family: int,
        *,
        prefix: Sequence[str] = (),
        user: Optional[int] = None,
        accept: bool = True,
        lo_up: bool = False,
    ) -> None:
        args = ["server", str(int(family))]
        if not accept:
            args.append("--no-accept")
        if lo_up:
            args.insert(0, "--lo-up")
        super().__init__(args, prefix=prefix, user=user)
        self.family = family
        port, fd = self.expect("LISTEN")
        self.port = int(port)
        self.listen_fd = int(fd)
        self.conn_fd: Optional[int] = None
        self.peer_port: Optional[int] = None

    def accepted(self) -> int:
        """Wait for the connection; returns the accepted descriptor number."""
        if self.conn_fd is None:
            fd, peer_port = self.expect("ACCEPT")
            self.conn_fd, self.peer_port = int(fd), int(peer_port)
        return self.conn_fd

    def wait_received(self, n: int, timeout: Optional[float] = None) -> int:
        return int(self.ask(f"wait {n}", "GOT", timeout)[0])


class Client(Peer):
    """A client peer connected to a server's port: :attr:`fd`, :attr:`local_port`."""

    def __init__(
        self,
        family: int,
        port: int,
        *,
        prefix: Sequence[str] = (),
        user: Optional[int] = None,
    ) -> None:
        super().__init__(["client", str(int(family)), str(port)], prefix=prefix, user=user)
        self.family = family
        fd, local_port = self.expect("CONNECTED")
        self.fd = int(fd)
        self.local_port = int(local_port)


@contextmanager
def server(family: int, **kwargs: object) -> Iterator[Server]:
    s = Server(family, **kwargs)  # type: ignore[arg-type]
    try:
        yield s
    finally:
        s.kill()


@contextmanager
def client(srv: Server, **kwargs: object) -> Iterator[Client]:
    """A client connected to ``srv`` (same family); the server's accept is awaited."""
    c = Client(srv.family, srv.port, **kwargs)  # type: ignore[arg-type]
    try:
        if srv.conn_fd is None and "--no-accept" not in srv.proc.args:  # type: ignore[operator]
            srv.accepted()
        yield c
    finally:
        c.kill()


def netns_prefix() -> list[str]:
    """argv prefix that runs a peer in a new network namespace (``unshare --net`` execs)."""
    return [UNSHARE, "--net"]


def enter_netns_prefix(pid: int) -> list[str]:
    """argv prefix that runs a peer in the network namespace of ``pid`` (nsenter execs)."""
    return [NSENTER, f"--net=/proc/{pid}/ns/net"]


NOBODY = 65534


def run_as_user(fn: Callable[[], T], uid: int = NOBODY, timeout: float = 60.0) -> T:
    """Run ``fn`` in a forked child that dropped to ``uid`` (and gid ``uid``, no
    groups) after everything was imported; returns its JSON-able result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = json.dumps({"ok": fn()})
        except BaseException as e:  # reported to the parent
            out = json.dumps({"error": f"{type(e).__name__}: {e}"})
            code = 1
        with os.fdopen(w, "w") as f:
            f.write(out)
        os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(r, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError("child did not answer")
                b = os.read(r, 65536)
                if not b:
                    break
                chunks.append(b)
    finally:
        os.close(r)
        try:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
        finally:
            os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks) or b'{"error": "no output"}')
    if "error" in result:
        raise AssertionError(f"child as uid {uid} failed: {result['error']}")
    return result["ok"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- child side


def _child(argv: list[str]) -> None:  # pragma: no cover - runs in the child
    import signal

    signal.alarm(CHILD_LIFETIME)
    if argv and argv[0] == "--as-user":
        uid = int(argv[1])
        argv = argv[2:]
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if argv and argv[0] == "--lo-up":
        argv = argv[1:]
        subprocess.run([IP, "link", "set", "lo", "up"], check=True)
    role, family = argv[0], int(argv[1])
    host = loopback_host(family)
    out_lock = threading.Lock()
    keep: list[object] = []

    def say(*words: object) -> None:
        with out_lock:
            sys.stdout.write(" ".join(str(w) for w in words) + "\n")
            sys.stdout.flush()

    conn: Optional[socket.socket] = None
    listener: Optional[socket.socket] = None
    received = [0]
    cond = threading.Condition()
    if role == "server":
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((host, 0))
        listener.listen(16)
        say("LISTEN", listener.getsockname()[1], listener.fileno())
        accept = "--no-accept" not in argv
        ready = threading.Event()

        def serve() -> None:
            nonlocal conn
            assert listener is not None
            c, addr = listener.accept()
            conn = c
            ready.set()
            say("ACCEPT", c.fileno(), addr[1])
            while True:
                try:
                    b = c.recv(1 << 20)
                except OSError:
                    break
                if not b:
                    break
                with cond:
                    received[0] += len(b)
                    cond.notify_all()
            say("EOF", received[0])

        if accept:
            threading.Thread(target=serve, daemon=True).start()
    else:
        conn = socket.create_connection((host, int(argv[2])))
        say("CONNECTED", conn.fileno(), conn.getsockname()[1])
    payload = b"\x5a" * (1 << 20)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "send":
            n = int(cmd[1])
            assert conn is not None
            view = memoryview(payload)
            while n > 0:
                size = min(n, len(payload))
                conn.sendall(view[:size])
                n -= size
            say("SENT", cmd[1])
        elif cmd[0] == "wait":

            def reached(want: int = int(cmd[1])) -> bool:
                return received[0] >= want

            with cond:
                cond.wait_for(reached, timeout=60)
            say("GOT", received[0])
        elif cmd[0] == "close":
            if conn is not None:
                # shutdown first: it wakes the reader thread's recv, which
                # would otherwise keep the socket alive after close().
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            if listener is not None:
                listener.close()
            say("CLOSED")
        elif cmd[0] == "reset":
            # close with SO_LINGER 0: an RST instead of a FIN
            assert conn is not None
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            say("RESET")
        elif cmd[0] == "udp":
            u = socket.socket(family, socket.SOCK_DGRAM)
            u.bind((host, 0))
            keep.append(u)
            say("UDP", u.fileno(), u.getsockname()[1])
        elif cmd[0] == "listen":
            extra = socket.socket(family, socket.SOCK_STREAM)
            extra.bind((host, 0))
            extra.listen(4)
            keep.append(extra)
            say("LISTEN2", extra.fileno(), extra.getsockname()[1])
        elif cmd[0] == "comm":
            with open("/proc/self/comm", "w") as f:
                f.write(" ".join(cmd[1:]) if len(cmd) > 1 else "")
            say("COMM")
        elif cmd[0] == "open":
            fd = os.open("/dev/null", os.O_RDONLY)
            say("OPEN", fd)
        elif cmd[0] == "closefd":
            num = int(cmd[1])
            for k in list(keep):
                if isinstance(k, socket.socket) and k.fileno() == num:
                    keep.remove(k)
                    k.close()
                    break
            else:
                os.close(num)
            say("CLOSEDFD")
        elif cmd[0] == "exit":
            break
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    _child(sys.argv[1:])
