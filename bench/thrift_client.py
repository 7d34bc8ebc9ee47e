"""A Thrift client for an extension's socket, playing osquery core's side of ``call``.

One connection per server (TSocket over the UNIX socket, TBufferedTransport,
TBinaryProtocol), kept open across calls as osquery keeps its extension
clients. The request is written by the generated osquery-python client; the
response is decoded with thrift's C ``fastbinary`` codec (same binary wire
format). In production the decoder is osquery's C++ code, so a pure-Python
decoder here would add the same large constant (~0.5 s at 10k rows) to every
server measured and hide the difference between them.

osquery-python 3.1.1's generated bindings cannot use ``fastbinary`` as they
are: they hand it ``(class, spec)`` tuples where thrift >= 0.11's C codec
wants ``[class, spec]`` lists (``TBinaryProtocolAccelerated`` raises
``TypeError: expecting list of size 2 for struct args``). The reader below
passes list-shaped copies of the same specs.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any


def _listify(spec: Any) -> Any:
    """A thrift_spec with struct type-args as ``[class, spec]`` lists (what fastbinary wants)."""
    from thrift.Thrift import TType

    if spec is None:
        return None
    out: list[Any] = []
    for field in spec:
        if field is None:
            out.append(None)
            continue
        fid, ftype, name, args, default = field
        out.append((fid, ftype, name, _listify_args(ftype, args, TType), default))
    return tuple(out)


def _listify_args(ftype: int, args: Any, ttype: Any) -> Any:
    if ftype == ttype.STRUCT:
        cls, sub = args
        return [cls, _listify(sub)]
    if ftype in (ttype.LIST, ttype.SET):
        etype, eargs, *rest = args
        return (etype, _listify_args(etype, eargs, ttype), *rest)
    if ftype == ttype.MAP:
        ktype, kargs, vtype, vargs, *rest = args
        return (
            ktype,
            _listify_args(ktype, kargs, ttype),
            vtype,
            _listify_args(vtype, vargs, ttype),
            *rest,
        )
    return args


class ExtensionCaller:
    """``call("table", name, {"action": "generate", ...})`` round trips."""

    def __init__(self, socket_path: str, *, timeout_s: float = 60.0) -> None:
        from osquery.extensions import Extension
        from thrift.protocol import TBinaryProtocol
        from thrift.transport import TSocket, TTransport

        self.socket_path = socket_path
        sock = TSocket.TSocket(unix_socket=socket_path)
        sock.setTimeout(int(timeout_s * 1000))
        self._transport = TTransport.TBufferedTransport(sock)
        self._protocol = TBinaryProtocol.TBinaryProtocol(self._transport)
        self._client = Extension.Client(self._protocol)
        self._result_type = Extension.call_result
        self._result_spec = [Extension.call_result, _listify(Extension.call_result.thrift_spec)]
        self._transport.open()

    def call(self, registry: str, item: str, request: dict[str, str]) -> Any:
        """One ``call`` round trip; returns the ``ExtensionResponse``."""
        from thrift.protocol import fastbinary
        from thrift.Thrift import TApplicationException, TMessageType

        self._client.send_call(registry, item, request)
        iprot = self._protocol
        _name, mtype, _seqid = iprot.readMessageBegin()
        if mtype == TMessageType.EXCEPTION:
            x = TApplicationException()
            x.read(iprot)
            iprot.readMessageEnd()
            raise x
        result = self._result_type()
        fastbinary.decode_binary(result, iprot, self._result_spec)
        iprot.readMessageEnd()
        if result.success is None:
            raise RuntimeError(f"call {registry}/{item}: no result")
        return result.success

    def generate(self, table: str, context: str = "{}") -> list[dict[str, str]]:
        """Rows of one generate call; raises when the status is not success."""
        resp = self.call("table", table, {"action": "generate", "context": context})
        if resp.status is None or resp.status.code != 0:
            msg = resp.status.message if resp.status is not None else "no status"
            raise RuntimeError(f"generate {table} failed: {msg}")
        rows: list[dict[str, str]] = resp.response or []
        return rows

    def ping(self) -> Any:
        return self._client.ping()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._transport.close()

    def __enter__(self) -> ExtensionCaller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_when_ready(socket_path: str, *, deadline_s: float = 20.0) -> ExtensionCaller:
    """Connect once the server listens on ``socket_path`` (bounded wait)."""
    end = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < end:
        if os.path.exists(socket_path):
            try:
                caller = ExtensionCaller(socket_path)
                caller.ping()
                return caller
            except Exception as e:  # not listening yet
                last = e
        time.sleep(0.05)
    raise TimeoutError(f"no Thrift server on {socket_path} after {deadline_s:.0f}s ({last})")
