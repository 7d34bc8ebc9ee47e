"""A concurrent Thrift server on a UNIX socket, as osquery's extension protocol needs.

osquery's own extension runner serves with a ``TThreadedServer`` (one thread
per connection); osquery-python's ``TSimpleServer`` answers one request at a
time, so a slow table call there also delays the core's pings and the core
may drop the extension. This server accepts in one thread and gives every
connection its own thread, up to ``max_connections``; beyond the cap a new
connection is closed at once (the caller sees an error) rather than queued
behind slow calls or allowed to grow threads without bound. Idle connections
close after ``idle_timeout``.

The socket file is created with mode 0600 (the extension runs as root and
its socket answers table queries), a stale socket file at the path is
replaced (a regular file is never removed), and the file is removed on
:meth:`stop` only if it is still ours. :meth:`move_to` renames the bound
socket atomically: the runtime listens on a temporary name before
registering, then moves it to ``<manager socket>.<uuid>`` as soon as the
core answers, so the socket is already listening when its name appears.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any

from thrift.transport.TSocket import TSocket
from thrift.transport.TTransport import TBufferedTransport, TTransportException

from readegress.osquery.protocol import binary_protocol

log = logging.getLogger("readegress.osquery.server")

DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_IDLE_TIMEOUT = 60.0

_local = threading.local()


def after_reply(fn: Callable[[], None]) -> None:
    """Run ``fn`` once the reply to the request being handled has been sent.

    For a handler that must answer before acting, e.g. ``shutdown()``: the
    caller gets its reply, then the process stops. Outside a request, runs now.
    """
    pending: list[Callable[[], None]] | None = getattr(_local, "after_reply", None)
    if pending is None:
        fn()
    else:
        pending.append(fn)


def remove_stale_socket(path: str) -> None:
    """Remove a socket file left at ``path``; refuse to touch anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class ThriftUnixServer:
    """Serve a generated Thrift ``Processor`` on a UNIX socket, concurrently."""

    def __init__(
        self,
        processor: Any,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        mode: int = 0o600,
        name: str = "thrift",
    ) -> None:
        self._processor = processor
        self._max = max(1, max_connections)
        self._idle_timeout = idle_timeout
        self._mode = mode
        self._name = name
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._path: str | None = None
        self._inode: tuple[int, int] | None = None
        self._active: dict[int, socket.socket] = {}
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread: threading.Thread | None = None
        self._full_logged = False

    @property
    def path(self) -> str | None:
        """Where the socket is now (``None`` before :meth:`start`)."""
        return self._path

    def start(self, path: str) -> None:
        """Bind ``path`` (mode ``mode``, replacing a stale socket) and start accepting."""
        if self._listener is not None:
            raise RuntimeError("server already started")
        remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            # Nobody can connect before listen(), so setting the mode here
            # leaves no window in which the socket is open to other users.
            os.chmod(path, self._mode)
            st = os.stat(path)
            sock.listen(64)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                remove_stale_socket(path)
            raise
        sock.setblocking(False)
        self._listener = sock
        self._path = path
        self._inode = (st.st_dev, st.st_ino)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"{self._name}-accept", daemon=True
        )
        self._accept_thread.start()

    def move_to(self, path: str) -> None:
        """Atomically rename the listening socket to ``path`` (same directory)."""
        if self._path is None:
            raise RuntimeError("server not started")
        remove_stale_socket(path)
        os.rename(self._path, path)
        self._path = path

    def _owns_path(self) -> bool:
        if self._path is None or self._inode is None:
            return False
        try:
            st = os.lstat(self._path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r or self._stopping.is_set():
                        return
                    try:
                        conn, _addr = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:
                        if self._stopping.is_set():
                            return
                        log.warning("%s: accept failed: %s", self._name, e)
                        continue
                    self._admit(conn)
        finally:
            sel.close()

    def _admit(self, conn: socket.socket) -> None:
        with self._lock:
            if len(self._active) >= self._max:
                if not self._full_logged:
                    log.warning(
                        "%s: %d connections busy; refusing new ones until one finishes",
                        self._name,
                        self._max,
                    )
                    self._full_logged = True
                conn.close()
                return
            self._full_logged = False
            self._active[conn.fileno()] = conn
            t = threading.Thread(
                target=self._serve_connection,
                args=(conn,),
                name=f"{self._name}-conn",
                daemon=True,
            )
            self._threads.add(t)
        t.start()

    def _serve_connection(self, conn: socket.socket) -> None:
        fd = conn.fileno()
        try:
            conn.setblocking(True)
            conn.settimeout(self._idle_timeout)
            handle = TSocket()
            handle.setHandle(conn)
            transport = TBufferedTransport(handle)
            protocol = binary_protocol(transport)
            while not self._stopping.is_set():
                pending: list[Callable[[], None]] = []
                _local.after_reply = pending
                try:
                    self._processor.process(protocol, protocol)
                finally:
                    _local.after_reply = None
                for fn in pending:
                    fn()
        except TTransportException:
            pass  # the peer closed, went idle too long, or we are stopping
        except OSError:
            pass
        except Exception:
            # A malformed request (or a bug) ends this connection, never the server.
            log.exception("%s: connection failed", self._name)
        finally:
            with self._lock:
                self._active.pop(fd, None)
                self._threads.discard(threading.current_thread())
            with contextlib.suppress(OSError):
                conn.close()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop accepting, remove the socket file if still ours, end open connections."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if (
            self._accept_thread is not None
            and self._accept_thread is not threading.current_thread()
        ):
            self._accept_thread.join(timeout)
        if self._owns_path() and self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns = list(self._active.values())
            threads = list(self._threads)
        for c in conns:
            # Wakes a thread blocked reading the next request.
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        me = threading.current_thread()
        for t in threads:
            if t is not me:
                t.join(timeout)
        self._wake_r.close()
        self._wake_w.close()
