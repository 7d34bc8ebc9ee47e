"""Table answers encoded in batches (readegress.osquery.reply).

The wire bytes must be exactly what osquery-python's generated code writes
for the whole answer: checked byte for byte on arbitrary rows and batch
splits (hypothesis), on the real ``socket_bytes`` rows of this host, on every
kind of ``call`` answer through both processors, and end to end through the
test osquery core with an answer of several batches.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from osquery.extensions import Extension
from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus
from thrift.protocol import TBinaryProtocol
from thrift.Thrift import TMessageType
from thrift.transport.TTransport import TMemoryBuffer

from readegress.osquery import ExtensionRuntime
from readegress.osquery.handler import TableExtensionHandler
from readegress.osquery.protocol import binary_protocol
from readegress.osquery.reply import (
    BATCH_ROWS,
    EncodedResponse,
    ExtensionProcessor,
    encode_row_batches,
    write_encoded_response,
)
from readegress.osquery.server import ReplyChunks
from readegress.tables.base import BoundTable, TableCalls, TableEnv, load_tables
from readegress.tables.context import QueryContext
from readegress.tables.spec import parse_spec
from readegress.testing import OsqueryCore
from test_runtime import _one_column_spec, make_tables


def generated_bytes(response: Any) -> bytes:
    out = TMemoryBuffer()
    response.write(binary_protocol(out))
    return bytes(out.getvalue())


def encoded_bytes(status: Any, batches: list[list[dict[str, str]]]) -> bytes:
    out = ReplyChunks()
    write_encoded_response(out, EncodedResponse(status, encode_row_batches(iter(batches))))
    return b"".join(bytes(c) for c in out.take())


def split(rows: list[dict[str, str]], cuts: list[int]) -> list[list[dict[str, str]]]:
    bounds = sorted({min(c, len(rows)) for c in cuts} | {0, len(rows)})
    return [rows[a:b] for a, b in zip(bounds, bounds[1:])]


_text = st.text(max_size=40)
_rows = st.lists(st.dictionaries(_text, _text, max_size=6), max_size=40)


@settings(max_examples=200, deadline=None)
@given(rows=_rows, cuts=st.lists(st.integers(0, 40), max_size=6), code=st.integers(0, 1))
def test_batched_encoding_is_the_generated_encoding_byte_for_byte(
    rows: list[dict[str, str]], cuts: list[int], code: int
) -> None:
    status = ExtensionStatus(code=code, message="OK", uuid=7)
    want = generated_bytes(ExtensionResponse(status=status, response=rows))
    assert encoded_bytes(status, split(rows, cuts)) == want
    # ... and decodes to the same rows.
    back = ExtensionResponse()
    back.read(binary_protocol(TMemoryBuffer(want)))
    assert back.response == rows


def test_pure_python_encoder_gives_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where thrift has no C accelerator (the single-file .ext), the same bytes."""
    rows = [{"a": str(i), "b": "é" * (i % 5)} for i in range(300)]
    status = ExtensionStatus(code=0, message="OK", uuid=1)
    want = generated_bytes(ExtensionResponse(status=status, response=rows))
    monkeypatch.setattr("readegress.osquery.reply.binary_protocol", TBinaryProtocol.TBinaryProtocol)
    assert encoded_bytes(status, split(rows, [7, 100, 299])) == want


def test_real_socket_bytes_rows_encode_identically() -> None:
    """This host's socket_bytes rows (with a loopback connection, so there is
    at least one), batched the way the extension batches them."""
    table = load_tables(TableEnv(), ["socket_bytes"])["socket_bytes"]
    with (
        socket.create_server(("127.0.0.1", 0)) as srv,
        socket.create_connection(srv.getsockname()) as c,
    ):
        peer, _ = srv.accept()
        with peer:
            c.sendall(b"x" * 1000)
            peer.recv(4096)
            rows = table.to_osquery_rows(table.rows(QueryContext.of(())))
    assert len(rows) >= 2
    status = ExtensionStatus(code=0, message="OK", uuid=3)
    want = generated_bytes(ExtensionResponse(status=status, response=rows))
    assert encoded_bytes(status, split(rows, list(range(0, len(rows), 5)))) == want


def call_reply(processor: Any, item: str, request: dict[str, str]) -> bytes:
    inp = TMemoryBuffer()
    proto = binary_protocol(inp)
    proto.writeMessageBegin("call", TMessageType.CALL, 42)
    Extension.call_args(registry="table", item=item, request=request).write(proto)
    proto.writeMessageEnd()
    out = ReplyChunks()
    processor.process(binary_protocol(TMemoryBuffer(inp.getvalue())), binary_protocol(out))
    return b"".join(bytes(c) for c in out.take())


@pytest.mark.parametrize(
    "item, request_",
    [
        ("test_procs", {"action": "generate", "context": "{}"}),
        ("test_procs", {"action": "columns"}),
        ("test_procs", {"action": "insert"}),
        ("test_procs", {"action": "generate", "context": "{not json"}),
        ("boom", {"action": "generate", "context": "{}"}),
        ("nope", {"action": "generate", "context": "{}"}),
        ("test_procs", {}),
    ],
)
def test_processor_answers_every_call_as_the_generated_one(
    item: str, request_: dict[str, str]
) -> None:
    calls = TableCalls(make_tables(), timeout=2.0)
    try:
        handler = TableExtensionHandler(calls)
        generated = call_reply(Extension.Processor(handler), item, request_)
        ours = call_reply(ExtensionProcessor(handler), item, request_)
    finally:
        calls.close()
    assert ours == generated


class ManyRow(NamedTuple):
    value: str


class Many:
    """Rows enough for several batches, each distinct."""

    row_type: type = ManyRow

    def __init__(self, n: int) -> None:
        self.n = n

    def generate(self, ctx: QueryContext) -> Iterator[ManyRow]:
        for i in range(self.n):
            yield ManyRow(f"row-{i}-" + "ü" * (i % 3))


def test_answer_of_several_batches_through_the_core(sock: str, core: OsqueryCore) -> None:
    n = 2 * BATCH_ROWS + 345
    tables = {"many": BoundTable(parse_spec(_one_column_spec("many")), Many(n))}
    calls = TableCalls(tables, timeout=5.0)
    rt = ExtensionRuntime(core.socket_path, calls, timeout=2.0, interval=0.2)
    rt.start()
    try:
        assert rt.wait_registered(5.0)
        rows = core.query("SELECT value FROM many")
        assert rows == [{"value": f"row-{i}-" + "ü" * (i % 3)} for i in range(n)]
        assert core.query("SELECT count(*) AS n FROM many WHERE value LIKE 'row-1%'") == [
            {"n": str(sum(1 for i in range(n) if str(i).startswith("1")))}
        ]
    finally:
        rt.stop()
        rt.join(5.0)
        calls.close()


def test_batches_are_generated_as_they_are_taken() -> None:
    """The table's rows are pulled one batch at a time, not all first."""
    pulled: list[int] = []

    class Counting(Many):
        def generate(self, ctx: QueryContext) -> Iterator[ManyRow]:
            for row in super().generate(ctx):
                pulled.append(1)
                yield row

    table = BoundTable(parse_spec(_one_column_spec("many")), Counting(25))
    batches = table.osquery_row_batches(QueryContext.of(()), 10)
    first = next(batches)
    assert len(first) == 10 and len(pulled) <= 11
    assert [len(b) for b in batches] == [10, 5]
    assert len(pulled) == 25


def call_request(item: str, request: dict[str, str], seqid: int = 1) -> bytes:
    buf = TMemoryBuffer()
    proto = binary_protocol(buf)
    proto.writeMessageBegin("call", TMessageType.CALL, seqid)
    Extension.call_args(registry="table", item=item, request=request).write(proto)
    proto.writeMessageEnd()
    return bytes(buf.getvalue())


def test_a_reader_that_stops_reading_a_big_answer_frees_its_worker(sock: str) -> None:
    """A caller that never reads an answer of many chunks loses its connection
    after idle_timeout, with part of the answer, and the only worker is free again."""
    from readegress.osquery.client import ExtensionClient
    from readegress.osquery.server import ThriftUnixServer

    class Wide(Many):
        def generate(self, ctx: QueryContext) -> Iterator[ManyRow]:
            for i in range(self.n):
                yield ManyRow(f"{i:08d}" + "x" * 400)

    n = 6 * BATCH_ROWS  # ~2.5 MB encoded: far more than a socket buffer
    tables = {"wide": BoundTable(parse_spec(_one_column_spec("wide")), Wide(n))}
    calls = TableCalls(tables, timeout=10.0)
    server = ThriftUnixServer(
        ExtensionProcessor(TableExtensionHandler(calls)), max_workers=1, idle_timeout=1.0
    )
    server.start(sock)
    try:
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(sock)
        stalled.sendall(call_request("wide", {"action": "generate", "context": "{}"}))
        time.sleep(3.0)  # the worker gives up after 1 s
        got = 0
        stalled.settimeout(5.0)
        while chunk := stalled.recv(1 << 20):
            got += len(chunk)
        stalled.close()
        assert 0 < got < n * 400  # part of the answer, then the server closed it
        with ExtensionClient(sock, timeout=10.0) as client:
            status, rows = client.call("table", "wide", {"action": "generate", "context": "{}"})
        assert status.ok and len(rows) == n
        assert rows[-1]["value"].startswith(f"{n - 1:08d}")
    finally:
        server.stop()
        calls.close()
