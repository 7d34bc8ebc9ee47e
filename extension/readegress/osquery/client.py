"""Thrift clients for osquery's extension API over a UNIX socket.

osquery's core (the *extension manager*) and every extension each serve the
same Thrift IDL (``osquery/extensions/thrift/osquery.thrift``) with
``TBinaryProtocol`` over ``TBufferedTransport`` on a UNIX socket: the manager on
``--extensions_socket``, an extension on ``<manager socket>.<uuid>``.

:class:`ManagerClient` talks to the core (ping, the extension list, flags,
registration, and ``query``/``getQueryColumns``, which run SQL in the core);
:class:`ExtensionClient` talks to an extension (ping, ``call``, shutdown), as
the core does when a query reaches an extension's table.

Both are thread-safe: each call takes a connection from a small pool (or
opens one), so a slow ``query()`` from a background thread never blocks a
supervisor's ping. A pooled connection is checked for liveness before reuse,
because the core may have restarted since it was opened; an idempotent call
that still fails on a reused connection is retried once on a fresh one.
Every socket operation has a timeout. Failures surface as two exceptions:
:class:`OsqueryUnavailable` (could not reach the other side, or the
connection broke mid-call) and :class:`OsqueryCallError` (it answered with a
non-zero status).

The generated bindings come from the ``osquery`` package on PyPI; only those
are used, not its runtime.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from osquery.extensions import Extension, ExtensionManager
from osquery.extensions.ttypes import InternalExtensionInfo
from thrift.Thrift import TApplicationException
from thrift.transport.TSocket import TSocket
from thrift.transport.TTransport import TBufferedTransport, TTransportException

from readegress.osquery.protocol import binary_protocol

# ExtensionCode values from the IDL.
EXT_SUCCESS = 0
EXT_FAILED = 1
EXT_FATAL = 2

DEFAULT_TIMEOUT = 3.0


class OsqueryUnavailable(ConnectionError):
    """The socket could not be reached, or the connection failed mid-call."""


class OsqueryCallError(RuntimeError):
    """The other side answered, with a non-zero ``ExtensionStatus`` code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Status:
    """An ``ExtensionStatus``: code 0 success, 1 failed, 2 fatal."""

    code: int
    message: str
    uuid: int = 0

    @property
    def ok(self) -> bool:
        return self.code == EXT_SUCCESS


@dataclass(frozen=True)
class ExtensionInfo:
    """An ``InternalExtensionInfo`` as the core lists it."""

    name: str
    version: str = ""
    sdk_version: str = ""
    min_sdk_version: str = ""

    def to_thrift(self) -> Any:
        return InternalExtensionInfo(
            name=self.name,
            version=self.version,
            sdk_version=self.sdk_version,
            min_sdk_version=self.min_sdk_version,
        )


@dataclass(frozen=True)
class OptionInfo:
    """An ``InternalOptionInfo``: one of the core's flags."""

    value: str
    default_value: str
    type: str


def status_of(raw: Any) -> Status:
    """A :class:`Status` from a Thrift ``ExtensionStatus`` (fields may be unset)."""
    if raw is None:
        return Status(EXT_FAILED, "no status in reply")
    return Status(int(raw.code or 0), str(raw.message or ""), int(raw.uuid or 0))


def rows_of(raw: Any) -> list[dict[str, str]]:
    """Response rows from a Thrift ``ExtensionResponse`` (``None`` means none)."""
    rows = getattr(raw, "response", None) or []
    return [{str(k): str(v) for k, v in row.items()} for row in rows]


def _timed_out(e: BaseException) -> bool:
    if isinstance(e, TTransportException):
        return bool(e.type == TTransportException.TIMED_OUT)
    return isinstance(e, socket.timeout)


def _describe(e: BaseException) -> str:
    if _timed_out(e):
        return "timed out"
    if isinstance(e, TTransportException):
        inner = getattr(e, "inner", None)
        if e.type == TTransportException.END_OF_FILE:
            return "connection closed by peer"
        if inner is not None:
            return _describe(inner)
        return str(e.message or e)
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return f"{type(e).__name__}: {e}"


class _Connection:
    """One open Thrift connection: socket, buffered transport, generated client."""

    def __init__(self, path: str, timeout: float, client_cls: Any) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            raise OsqueryUnavailable(f"cannot connect to {path}: {_describe(e)}") from None
        # TSocket.open() would log every refused connect at ERROR level; during
        # the retries that waiting for a core implies that is noise, so the
        # socket is connected here and handed to TSocket.
        handle = TSocket(unix_socket=path)
        handle.setHandle(sock)
        self.sock = sock
        self.transport = TBufferedTransport(handle)
        self.client = client_cls(binary_protocol(self.transport))

    def alive(self) -> bool:
        """False once the peer has closed the connection (e.g. the core restarted)."""
        previous = self.sock.gettimeout()
        try:
            self.sock.settimeout(0)
            try:
                self.sock.recv(1, socket.MSG_PEEK)
            finally:
                self.sock.settimeout(previous)
        except (BlockingIOError, InterruptedError):
            return True  # nothing to read: an idle, open connection
        except OSError:
            return False
        # EOF means the peer closed; bytes waiting on an idle connection mean
        # the stream is out of step. Either way it cannot be reused.
        return False

    def set_timeout(self, timeout: float) -> None:
        self.sock.settimeout(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _PooledClient:
    """Thread-safe calls over a small pool of connections to one socket."""

    def __init__(self, path: str, timeout: float, client_cls: Any, max_idle: int) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._client_cls = client_cls
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._lock = threading.Lock()
        self._closed = False

    def _checkout(self, timeout: float, fresh: bool) -> tuple[_Connection, bool]:
        if not fresh:
            while True:
                with self._lock:
                    conn = self._idle.pop() if self._idle else None
                if conn is None:
                    break
                if conn.alive():
                    conn.set_timeout(timeout)
                    return conn, True
                conn.close()
        return _Connection(self.path, timeout, self._client_cls), False

    def _checkin(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                conn.set_timeout(self.timeout)
                self._idle.append(conn)
                return
        conn.close()

    def call(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = True,
    ) -> Any:
        """Call ``method``; errors become :class:`OsqueryUnavailable`/:class:`OsqueryCallError`.

        A non-idempotent call (registration) always uses a fresh connection and
        is never retried: a retry could register twice.
        """
        t = self.timeout if timeout is None else timeout
        for attempt in range(2):
            if self._closed:
                raise OsqueryUnavailable(f"{method} via {self.path}: client closed")
            conn, reused = self._checkout(t, fresh=not idempotent)
            with self._lock:
                self._busy.add(conn)
            try:
                result = getattr(conn.client, method)(*args)
            except TApplicationException as e:
                conn.close()
                raise OsqueryCallError(EXT_FAILED, f"{method}: {e.message or e}") from None
            except Exception as e:  # transport, socket, protocol: the connection is unusable
                conn.close()
                # A stale pooled connection is retried once on a fresh one;
                # a timeout is not (the call may still be running over there).
                if reused and idempotent and attempt == 0 and not _timed_out(e):
                    continue
                raise OsqueryUnavailable(
                    f"{method} via {self.path} failed: {_describe(e)}"
                ) from None
            finally:
                with self._lock:
                    self._busy.discard(conn)
            self._checkin(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close every connection; calls in flight (e.g. a query to a core that
        hangs) fail now instead of at their timeout, and later calls at once."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for conn in idle:
            conn.close()
        for conn in busy:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


class ManagerClient:
    """A client of osquery's extension manager (the core), safe to share between threads.

    ``timeout`` bounds every socket operation of a call; ``query()`` takes its
    own, as SQL over event tables can take longer than a ping.
    """

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT, max_idle: int = 2):
        self._pool = _PooledClient(str(socket_path), timeout, ExtensionManager.Client, max_idle)

    @property
    def socket_path(self) -> str:
        return self._pool.path

    def ping(self, timeout: float | None = None) -> Status:
        return status_of(self._pool.call("ping", timeout=timeout))

    def extensions(self, timeout: float | None = None) -> dict[int, ExtensionInfo]:
        """Registered extensions by uuid (the core itself, uuid 0, is not listed)."""
        raw = self._pool.call("extensions", timeout=timeout) or {}
        return {
            int(uuid): ExtensionInfo(
                str(info.name or ""),
                str(info.version or ""),
                str(info.sdk_version or ""),
                str(info.min_sdk_version or ""),
            )
            for uuid, info in raw.items()
        }

    def options(self, timeout: float | None = None) -> dict[str, OptionInfo]:
        """The core's flags (``value``, ``default_value``, ``type``)."""
        raw = self._pool.call("options", timeout=timeout) or {}
        return {
            str(name): OptionInfo(str(o.value or ""), str(o.default_value or ""), str(o.type or ""))
            for name, o in raw.items()
        }

    def register_extension(
        self,
        info: ExtensionInfo,
        registry: Mapping[str, Mapping[str, Sequence[Mapping[str, str]]]],
        timeout: float | None = None,
    ) -> Status:
        """Register; the status carries the new uuid, or the core's refusal."""
        broadcast = {
            reg: {item: [dict(route) for route in routes] for item, routes in items.items()}
            for reg, items in registry.items()
        }
        raw = self._pool.call(
            "registerExtension", info.to_thrift(), broadcast, timeout=timeout, idempotent=False
        )
        return status_of(raw)

    def deregister_extension(self, uuid: int, timeout: float | None = None) -> Status:
        return status_of(self._pool.call("deregisterExtension", uuid, timeout=timeout))

    def query(self, sql: str, timeout: float | None = None) -> list[dict[str, str]]:
        """Run SQL in the core; rows are string maps. Raises :class:`OsqueryCallError`."""
        raw = self._pool.call("query", sql, timeout=timeout)
        status = status_of(getattr(raw, "status", None))
        if not status.ok:
            raise OsqueryCallError(status.code, status.message)
        return rows_of(raw)

    def get_query_columns(self, sql: str, timeout: float | None = None) -> list[tuple[str, str]]:
        """``(name, osquery type)`` of each result column, without running the query."""
        raw = self._pool.call("getQueryColumns", sql, timeout=timeout)
        status = status_of(getattr(raw, "status", None))
        if not status.ok:
            raise OsqueryCallError(status.code, status.message)
        # The core answers one single-entry map per column, in column order.
        return [item for row in rows_of(raw) for item in row.items()]

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ExtensionClient:
    """A client of one extension's socket, as osquery's core calls it.

    The core opens a fresh connection for every call (``max_idle=0`` does the
    same); tests may pool them.
    """

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT, max_idle: int = 0):
        self._pool = _PooledClient(str(socket_path), timeout, Extension.Client, max_idle)

    @property
    def socket_path(self) -> str:
        return self._pool.path

    def ping(self, timeout: float | None = None) -> Status:
        return status_of(self._pool.call("ping", timeout=timeout))

    def call(
        self,
        registry: str,
        item: str,
        request: Mapping[str, str],
        timeout: float | None = None,
    ) -> tuple[Status, list[dict[str, str]]]:
        """``call(registry, item, request)``; returns the status and the response rows."""
        raw = self._pool.call("call", registry, item, dict(request), timeout=timeout)
        return status_of(getattr(raw, "status", None)), rows_of(raw)

    def shutdown(self, timeout: float | None = None) -> None:
        self._pool.call("shutdown", timeout=timeout, idempotent=False)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> ExtensionClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
