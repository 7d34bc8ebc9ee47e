"""A concurrent Thrift server on a UNIX socket, as osquery's extension protocol needs.

osquery's own extension runner serves with a ``TThreadedServer`` (one thread
per connection); osquery-python's ``TSimpleServer`` answers one request at a
time, so a slow table call there also delays the core's pings and the core
may drop the extension. A thread per connection with a cap starves instead:
idle connections hold every slot and new callers are refused.

This server separates connections from work. One I/O thread owns every
connection (idle ones cost a file descriptor, no thread): it accepts, reads
each request whole without blocking (osquery speaks unframed
``TBinaryProtocol``, so a request is complete when it parses), and

- answers cheap methods itself (``inline_methods``: ``ping``, ``shutdown``),
  so the core's pings are answered even when every worker is busy;
- queues the others for a bounded pool of ``max_workers`` threads (started
  as needed); with ``max_queue`` requests already waiting, answers at once
  with the method's *busy* reply (for ``call``: an ``ExtensionResponse`` of
  status 1 saying so) — every complete request gets an answer, no
  connection is dropped for load;
- closes connections idle for ``idle_timeout``, or for only
  ``busy_idle_timeout`` once ``max_connections`` are open (the longest idle
  one goes first when a new one arrives at ``max_open``).

Garbage (not a Thrift message, or a request over ``max_request_bytes``)
ends that connection only. A worker sends its reply (blocking, with
``idle_timeout``) and hands the connection back to the I/O thread.

The socket file is created with mode 0600 (the extension runs as root and
its socket answers table queries), a stale socket file at the path is
replaced (a regular file is never removed), and the file is removed on
:meth:`stop` only if it is still ours. :meth:`move_to` renames the bound
socket atomically: the runtime listens on a temporary name before
registering, then moves it to ``<manager socket>.<uuid>`` as soon as the
core answers, so the socket is already listening when its name appears.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport.TTransport import TMemoryBuffer, TTransportBase, TTransportException

from readegress.kernel import memory
from readegress.osquery.protocol import binary_protocol

log = logging.getLogger("readegress.osquery.server")

#: Connections kept open before idle ones get the short timeout.
DEFAULT_MAX_CONNECTIONS = 16
#: Worker threads running queued requests (table calls).
DEFAULT_MAX_WORKERS = 8
#: Requests waiting for a worker before new ones get the busy reply.
DEFAULT_MAX_QUEUE = 64
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_BUSY_IDLE_TIMEOUT = 2.0
DEFAULT_MAX_REQUEST_BYTES = 16 << 20
#: Methods answered on the I/O thread: cheap, and must never wait behind table calls.
INLINE_METHODS = frozenset({"ping", "shutdown"})
#: Reply writes at least this big are sent as they are; smaller ones are coalesced.
_KEEP_WRITE_BYTES = 1 << 14
#: Replies at least this big are followed by a ``malloc_trim``.
_TRIM_AFTER_BYTES = 1 << 20

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


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    last: float  # monotonic time of the last byte in or reply out
    buffer: bytearray = field(default_factory=bytearray)
    busy: bool = False  # a request of it is queued or running: not read meanwhile
    parsed_at: int = 0  # buffer length at the last parse that found it incomplete


class ReplyChunks(TTransportBase):  # type: ignore[misc]
    """A write-only transport that keeps what is written as a list of chunks.

    Big writes (the accelerator writes a whole struct at once) are kept as
    they are, not copied into a buffer and copied out again; small ones
    (headers, and every field of the pure-Python encoder) are coalesced.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes | bytearray | memoryview] = []
        self._small = bytearray()

    def isOpen(self) -> bool:
        return True

    def write(self, buf: Any) -> None:
        if len(buf) >= _KEEP_WRITE_BYTES:
            self._flush_small()
            self.chunks.append(buf)
        else:
            self._small += buf

    def flush(self) -> None:
        self._flush_small()

    def _flush_small(self) -> None:
        if self._small:
            self.chunks.append(self._small)
            self._small = bytearray()

    def take(self) -> list[bytes | bytearray | memoryview]:
        """Everything written, in order; the transport is empty afterwards."""
        self._flush_small()
        chunks, self.chunks = self.chunks, []
        return chunks

    def size(self) -> int:
        return sum(len(c) for c in self.chunks) + len(self._small)


class _Garbage(Exception):
    """The bytes are not a Thrift request: end the connection."""


def _split_message(buffer: bytearray, limit: int) -> Optional[tuple[bytes, str, int]]:
    """(message bytes, method name, seqid) of the first complete request in
    ``buffer``, or None while incomplete; raises _Garbage for non-Thrift bytes."""
    if not buffer:
        return None
    data = bytes(buffer)
    transport = TMemoryBuffer(data)
    proto = binary_protocol(transport)
    try:
        name, mtype, seqid = proto.readMessageBegin()
        if mtype not in (TMessageType.CALL, TMessageType.ONEWAY):
            raise _Garbage(f"message type {mtype}")
        proto.skip(TType.STRUCT)
        proto.readMessageEnd()
    except (TTransportException, EOFError):
        if len(data) > limit:
            raise _Garbage(f"request over {limit} bytes") from None
        return None
    except (TProtocolException, Exception) as e:  # bad version, type, depth, encoding...
        raise _Garbage(str(e) or type(e).__name__) from None
    end = transport._buffer.tell()
    return data[:end], name, seqid


def _reply_bytes(name: str, seqid: int, result: Any) -> bytes:
    """A REPLY message carrying ``result`` (a generated ``<method>_result``) or, for
    a TApplicationException, an EXCEPTION message."""
    out = TMemoryBuffer()
    proto = binary_protocol(out)
    kind = (
        TMessageType.EXCEPTION if isinstance(result, TApplicationException) else TMessageType.REPLY
    )
    proto.writeMessageBegin(name, kind, seqid)
    result.write(proto)
    proto.writeMessageEnd()
    return bytes(out.getvalue())


class ThriftUnixServer:
    """Serve a generated Thrift ``Processor`` on a UNIX socket, concurrently.

    ``busy_replies`` maps a method to a factory of its ``<method>_result``
    meaning "not run now, try again" (status 1 for osquery's ``call``);
    other methods are answered with a TApplicationException when the queue
    is full.
    """

    def __init__(
        self,
        processor: Any,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        busy_idle_timeout: float = DEFAULT_BUSY_IDLE_TIMEOUT,
        max_open: Optional[int] = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        inline_methods: frozenset[str] = INLINE_METHODS,
        busy_replies: Optional[Mapping[str, Callable[[], Any]]] = None,
        mode: int = 0o600,
        name: str = "thrift",
    ) -> None:
        self._processor = processor
        self._max = max(1, max_connections)
        self._max_open = max(self._max, max_open if max_open is not None else 16 * self._max)
        self._max_workers = max(1, max_workers)
        self._idle_timeout = idle_timeout
        self._busy_idle_timeout = min(busy_idle_timeout, idle_timeout)
        self._max_request = max_request_bytes
        self._inline = inline_methods
        self._busy_replies = dict(busy_replies or {})
        self._mode = mode
        self._name = name
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._path: str | None = None
        self._inode: tuple[int, int] | None = None
        self._conns: dict[int, _Conn] = {}
        # Unbounded as a Queue: only the I/O thread puts requests, and it
        # checks max_queue first (stop() must always be able to add wake-ups).
        self._queue: queue.Queue[Optional[tuple[_Conn, bytes, str, int]]] = queue.Queue()
        self._max_queue = max(1, max_queue)
        self._workers: set[threading.Thread] = set()
        self._idle_workers = 0
        self._returned: collections.deque[_Conn] = collections.deque()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._io_thread: threading.Thread | None = None
        self._busy_logged = False
        #: Counters for tests and health: requests answered busy, connections
        #: closed idle, closed for garbage.
        self.stats: dict[str, int] = {"requests": 0, "busy": 0, "idle_closed": 0, "garbage": 0}

    @property
    def path(self) -> str | None:
        """Where the socket is now (``None`` before :meth:`start`)."""
        return self._path

    def start(self, path: str) -> None:
        """Bind ``path`` (mode ``mode``, replacing a stale socket) and start serving."""
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
            sock.listen(128)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                remove_stale_socket(path)
            raise
        sock.setblocking(False)
        self._listener = sock
        self._path = path
        self._inode = (st.st_dev, st.st_ino)
        self._io_thread = threading.Thread(
            target=self._io_loop, name=f"{self._name}-io", daemon=True
        )
        self._io_thread.start()

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

    # -- the I/O thread ---------------------------------------------------

    def _io_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        last_sweep = time.monotonic()
        try:
            while not self._stopping.is_set():
                # Nothing to time out without connections: sleep until woken.
                wait = min(1.0, self._busy_idle_timeout) if self._conns else None
                for key, _ in sel.select(timeout=wait):
                    if self._stopping.is_set():
                        return
                    if key.fileobj is listener:
                        self._accept(sel, listener)
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        self._readable(sel, key.data)
                self._take_back(sel)
                now = time.monotonic()
                if now - last_sweep >= min(0.25, self._busy_idle_timeout / 2):
                    last_sweep = now
                    self._close_idle(sel)
        except Exception:
            log.exception("%s: I/O loop failed", self._name)
        finally:
            sel.close()

    def _accept(self, sel: selectors.BaseSelector, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. EMFILE: the next select retries
                log.warning("%s: accept failed: %s", self._name, e)
                return
            if len(self._conns) >= self._max_open:
                self._close_longest_idle(sel)
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic())
            self._conns[sock.fileno()] = conn
            sel.register(sock, selectors.EVENT_READ, conn)

    def _readable(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(sel, conn)
            return
        conn.buffer += data
        conn.last = time.monotonic()
        # A big request streams in full chunks: parse when the socket is drained
        # (the sender is waiting for the reply) or the buffer has doubled, so
        # re-parsing from the start stays linear overall.
        if len(data) < (1 << 16) or len(conn.buffer) >= 2 * conn.parsed_at:
            self._dispatch(sel, conn)

    def _dispatch(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        """Handle the complete requests buffered on ``conn`` (normally one)."""
        while not conn.busy:
            try:
                found = _split_message(conn.buffer, self._max_request)
            except _Garbage as e:
                self.stats["garbage"] += 1
                log.debug("%s: closing a connection that sent garbage: %s", self._name, e)
                self._close(sel, conn)
                return
            if found is None:
                conn.parsed_at = len(conn.buffer)
                return
            conn.parsed_at = 0
            message, name, seqid = found
            del conn.buffer[: len(message)]
            self.stats["requests"] += 1
            if name in self._inline:
                if not self._run(conn, message, send_timeout=min(1.0, self._idle_timeout)):
                    self._close(sel, conn)
                    return
                continue
            if self._queue.qsize() >= self._max_queue:
                if not self._answer_busy(conn, name, seqid):
                    self._close(sel, conn)
                    return
                continue
            conn.busy = True
            sel.unregister(conn.sock)
            self._spawn_worker_if_needed()
            self._queue.put((conn, message, name, seqid))

    def _answer_busy(self, conn: _Conn, name: str, seqid: int) -> bool:
        """Answer a request that cannot run now; False if the connection failed."""
        self.stats["busy"] += 1
        if not self._busy_logged:
            log.warning(
                "%s: %d requests waiting for %d workers; answering new ones busy",
                self._name,
                self._queue.qsize(),
                self._max_workers,
            )
            self._busy_logged = True
        factory = self._busy_replies.get(name)
        result = (
            factory()
            if factory is not None
            else TApplicationException(
                TApplicationException.INTERNAL_ERROR, f"{self._name}: busy, try again"
            )
        )
        return self._send(conn, _reply_bytes(name, seqid, result), min(1.0, self._idle_timeout))

    def _take_back(self, sel: selectors.BaseSelector) -> None:
        """Connections whose queued request was answered: read them again."""
        while True:
            try:
                conn = self._returned.popleft()
            except IndexError:
                return
            if conn.sock.fileno() < 0:
                continue
            conn.busy = False
            sel.register(conn.sock, selectors.EVENT_READ, conn)
            self._dispatch(sel, conn)  # a pipelined request may be buffered already

    def _close_idle(self, sel: selectors.BaseSelector) -> None:
        limit = self._busy_idle_timeout if len(self._conns) >= self._max else self._idle_timeout
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if not c.busy and now - c.last > limit]:
            self.stats["idle_closed"] += 1
            self._close(sel, conn)
        if self._queue.empty():
            self._busy_logged = False

    def _close_longest_idle(self, sel: selectors.BaseSelector) -> None:
        idle = [c for c in self._conns.values() if not c.busy]
        if idle:
            self.stats["idle_closed"] += 1
            self._close(sel, min(idle, key=lambda c: c.last))

    def _close(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(conn.sock)
            self._conns.pop(fd, None)
        with contextlib.suppress(OSError):
            conn.sock.close()

    # -- running requests -----------------------------------------------------

    def _run(self, conn: _Conn, message: bytes, send_timeout: Optional[float] = None) -> bool:
        """Process one request and send the reply; False if the connection must end.

        The reply is sent as the protocol wrote it (:class:`ReplyChunks`): a
        big answer is never copied into a buffer and out again."""
        out = ReplyChunks()
        pending: list[Callable[[], None]] = []
        _local.after_reply = pending
        try:
            self._processor.process(binary_protocol(TMemoryBuffer(message)), binary_protocol(out))
        except Exception:
            # A malformed request (or a bug) ends this connection, never the server.
            log.exception("%s: request failed", self._name)
            return False
        finally:
            _local.after_reply = None
        size = out.size()
        reply = out.take()
        del out
        timeout = self._idle_timeout if send_timeout is None else send_timeout
        ok = self._send(conn, reply, timeout) if reply else True
        del reply
        if size >= _TRIM_AFTER_BYTES:
            # The answer's memory is free now: hand its pages back instead of
            # keeping the peak until the next poll trims.
            memory.trim()
        for fn in pending:
            fn()
        return ok

    def _send(
        self, conn: _Conn, data: bytes | list[bytes | bytearray | memoryview], timeout: float
    ) -> bool:
        """Send ``data`` (bytes, or chunks in order) within ``timeout`` in all,
        each chunk dropped once sent."""
        chunks = [data] if isinstance(data, bytes) else data
        deadline = time.monotonic() + timeout
        try:
            chunks.reverse()
            while chunks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                conn.sock.settimeout(left)
                conn.sock.sendall(chunks.pop())
            conn.sock.setblocking(False)
        except OSError:
            return False
        conn.last = time.monotonic()
        return True

    def _spawn_worker_if_needed(self) -> None:
        with self._lock:
            if self._idle_workers > self._queue.qsize() or len(self._workers) >= self._max_workers:
                return
            t = threading.Thread(target=self._work, name=f"{self._name}-worker", daemon=True)
            self._workers.add(t)
            self._idle_workers += 1
        t.start()

    def _work(self) -> None:
        try:
            while not self._stopping.is_set():
                item = self._queue.get()
                if item is None:
                    return
                with self._lock:
                    self._idle_workers -= 1
                conn, message, _name, _seqid = item
                try:
                    if self._run(conn, message) and not self._stopping.is_set():
                        self._returned.append(conn)
                        with contextlib.suppress(OSError):
                            self._wake_w.send(b"x")
                    else:
                        with contextlib.suppress(OSError):
                            conn.sock.close()
                finally:
                    with self._lock:
                        self._idle_workers += 1
        finally:
            with self._lock:
                self._idle_workers -= 1
                self._workers.discard(threading.current_thread())

    def stop(self, timeout: float = 1.0) -> None:
        """Stop accepting, remove the socket file if still ours, end open connections."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._io_thread is not None and self._io_thread is not threading.current_thread():
            self._io_thread.join(timeout)
        if self._owns_path() and self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
        if self._listener is not None:
            self._listener.close()
        for conn in list(self._conns.values()):
            # Wakes a worker blocked sending a reply.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.sock.close()
        while True:  # requests never started: their connections are closed above
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)
        me = threading.current_thread()
        deadline = time.monotonic() + timeout
        for t in workers:
            if t is not me:
                t.join(max(0.0, deadline - time.monotonic()))
        self._wake_r.close()
        self._wake_w.close()
