"""Table answers encoded in batches, so a big answer is held once, as bytes.

osquery-python's generated ``Processor`` answers ``call`` by building the
whole ``ExtensionResponse`` (a list of ``dict[str, str]``, one per row) and
encoding it in one piece: with 20,000 ``socket_bytes`` rows the dicts are
~11 MB and the encoded reply ~12 MB, alive together, plus the accelerator's
growing output buffer and the transport's copies of it.

Here a ``generate`` answer is converted and encoded :data:`BATCH_ROWS` rows
at a time (:func:`encode_row_batches`): only one batch of dicts exists at a
time, and the answer is the list of encoded batches, written to the socket
as they are (:class:`ReplyChunks`, no joining). The bytes on the wire are
exactly the generated code's (tested byte for byte): a batch is encoded as
an ``ExtensionResponse`` carrying only that batch, whose list body (after
the field and list headers, before the struct's stop byte) is the batch's
rows as they appear inside the whole list; the whole answer's headers are
written around them with the real row count.

:class:`ExtensionProcessor` is the generated ``Extension.Processor`` with
``call`` answered through the handler's ``call_encoded``.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

from osquery.extensions import Extension
from osquery.extensions.ttypes import ExtensionResponse
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport import TTransport

from readegress.osquery.protocol import binary_protocol
from readegress.osquery.server import ReplyChunks

log = logging.getLogger("readegress.osquery")

#: Rows converted to dicts and encoded at a time (~0.6 MB of dicts for socket_bytes).
BATCH_ROWS = 1000

# ExtensionResponse field 2 (``response``): a list of maps.
_RESPONSE_LIST_HEADER = struct.pack("!bhb", TType.LIST, 2, TType.MAP)
_STOP = b"\x00"


class EncodedRows(NamedTuple):
    """A list of ``map<string,string>`` rows, encoded: ``row_count`` rows whose
    encodings, concatenated, are ``chunks`` (no list header)."""

    row_count: int
    chunks: list[bytes | bytearray | memoryview]


class EncodedResponse(NamedTuple):
    """An ``ExtensionResponse`` whose rows are already encoded."""

    status: Any  # ExtensionStatus
    rows: EncodedRows


def encode_row_batches(batches: Iterable[list[dict[str, str]]]) -> EncodedRows:
    """Encode rows batch by batch; each batch can be dropped once encoded."""
    count = 0
    chunks: list[bytes | bytearray | memoryview] = []
    for batch in batches:
        if not batch:
            continue
        out = ReplyChunks()
        ExtensionResponse(response=batch).write(binary_protocol(out))
        parts = out.take()
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        # field header + list header (element type, size) ... struct stop
        head = len(_RESPONSE_LIST_HEADER) + 4
        if (
            bytes(data[: len(_RESPONSE_LIST_HEADER)]) != _RESPONSE_LIST_HEADER
            or int.from_bytes(data[len(_RESPONSE_LIST_HEADER) : head], "big") != len(batch)
            or data[-1] != 0
        ):
            raise ValueError("unexpected encoding of an ExtensionResponse batch")
        chunks.append(memoryview(data)[head:-1])
        count += len(batch)
    return EncodedRows(count, chunks)


def write_encoded_response(trans: Any, response: EncodedResponse) -> None:
    """Write an ``ExtensionResponse`` struct (its fields and stop byte) to ``trans``."""
    head = ReplyChunks()
    ExtensionResponse(status=response.status, response=None).write(binary_protocol(head))
    status_part = b"".join(head.take())
    if not status_part or status_part[-1] != 0:
        raise ValueError("unexpected encoding of an ExtensionResponse status")
    trans.write(
        status_part[:-1] + _RESPONSE_LIST_HEADER + struct.pack("!i", response.rows.row_count)
    )
    for chunk in response.rows.chunks:
        trans.write(chunk)
    trans.write(_STOP)


class ExtensionProcessor(Extension.Processor):  # type: ignore[misc]
    """``Extension.Processor`` answering ``call`` through ``handler.call_encoded``,
    whose answer may be an :class:`EncodedResponse` (written as encoded) or a
    plain ``ExtensionResponse``. Other methods are the generated ones."""

    def __init__(self, handler: Any) -> None:
        super().__init__(handler)
        self._processMap["call"] = ExtensionProcessor._process_call

    def _process_call(self, seqid: int, iprot: Any, oprot: Any) -> None:
        args = Extension.call_args()
        args.read(iprot)
        iprot.readMessageEnd()
        try:
            answer = self._handler.call_encoded(args.registry, args.item, args.request)
        except (TTransport.TTransportException, KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            # As the generated processor answers a handler that raised.
            log.exception("call failed")
            oprot.writeMessageBegin("call", TMessageType.EXCEPTION, seqid)
            TApplicationException(TApplicationException.INTERNAL_ERROR, "Internal error").write(
                oprot
            )
            oprot.writeMessageEnd()
            oprot.trans.flush()
            return
        oprot.writeMessageBegin("call", TMessageType.REPLY, seqid)
        if isinstance(answer, EncodedResponse):
            # call_result: field 0 (success), the response struct, stop.
            oprot.trans.write(struct.pack("!bh", TType.STRUCT, 0))
            write_encoded_response(oprot.trans, answer)
            oprot.trans.write(_STOP)
        else:
            result = Extension.call_result()
            result.success = answer
            result.write(oprot)
        oprot.writeMessageEnd()
        oprot.trans.flush()
