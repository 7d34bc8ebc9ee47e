"""The extension side of osquery's ``Extension`` service: ``ping``, ``call``, ``shutdown``.

osquery's core reaches an extension's table through ``call("table", NAME,
request)``: ``{"action": "columns"}`` when it attaches the table, and
``{"action": "generate", "context": JSON}`` for every scan (once per outer
row in a JOIN on an indexed column). SQLite's ``INSERT``/``UPDATE``/``DELETE``
on an extension table arrive as those actions; osquery's own ``TablePlugin``
answers them with ``{"status": "readonly"}``, which the core reports as
"table NAME may not be modified", and so do we.

Every failure becomes an ``ExtensionResponse`` with status code 1 and a
message naming the table: the core turns it into the query's SQLite error.
Nothing raises into the Thrift processor (osquery-python's generated
processor would turn it into an opaque "Internal error").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus

from readegress.osquery.client import EXT_FAILED, EXT_SUCCESS
from readegress.osquery.reply import BATCH_ROWS, EncodedResponse, encode_row_batches
from readegress.osquery.server import after_reply
from readegress.tables.base import TableCallError, TableCalls
from readegress.tables.context import ContextError, QueryContext

log = logging.getLogger("readegress.osquery")

# The write actions osquery's xUpdate sends; read-only tables answer "readonly".
_WRITE_ACTIONS = frozenset({"insert", "update", "delete"})


class TableExtensionHandler:
    """Answers the core's calls for the tables in one :class:`TableCalls`.

    ``uuid`` is the route uuid the core assigned at registration; osquery's
    extensions echo it in every status.
    """

    def __init__(
        self,
        calls: TableCalls,
        *,
        name: str = "readegress",
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.calls = calls
        self.name = name
        self.uuid = 0
        self._on_shutdown = on_shutdown

    def _status(self, code: int, message: str) -> Any:
        return ExtensionStatus(code=code, message=message, uuid=self.uuid)

    def _fail(self, message: str) -> Any:
        return ExtensionResponse(status=self._status(EXT_FAILED, message), response=[])

    def ping(self) -> Any:
        return self._status(EXT_SUCCESS, "pong")

    def call(self, registry: str, item: str, request: Mapping[str, str] | None) -> Any:
        """The answer as an ``ExtensionResponse`` (what the generated processor writes)."""
        return self._answer(registry, item, request, encoded=False)

    def call_encoded(self, registry: str, item: str, request: Mapping[str, str] | None) -> Any:
        """As :meth:`call`, but a ``generate`` answer's rows are converted and
        encoded in batches (an :class:`~readegress.osquery.reply.EncodedResponse`,
        written by :class:`~readegress.osquery.reply.ExtensionProcessor`): a big
        answer is never held as dicts and bytes at once."""
        return self._answer(registry, item, request, encoded=True)

    def _answer(
        self, registry: str, item: str, request: Mapping[str, str] | None, *, encoded: bool
    ) -> Any:
        try:
            return self._call(str(registry or ""), str(item or ""), dict(request or {}), encoded)
        except Exception as e:  # a bug here must still answer, never kill the connection
            log.exception("%s: call(%r, %r) failed", self.name, registry, item)
            return self._fail(f"{item}: internal error: {type(e).__name__}: {e}")

    def _call(self, registry: str, item: str, request: dict[str, str], encoded: bool) -> Any:
        if registry != "table":
            return self._fail(
                f"{self.name} serves only the 'table' registry, not {registry!r} (item {item!r})"
            )
        table = self.calls.tables.get(item)
        if table is None:
            served = ", ".join(sorted(self.calls.tables)) or "none"
            return self._fail(f"{self.name}: no table named {item!r} (serves: {served})")
        action = request.get("action")
        if action is None:
            return self._fail(f"{item}: table plugins must include a request action")
        if action == "columns":
            return ExtensionResponse(
                status=self._status(EXT_SUCCESS, "OK"), response=table.spec.routes()
            )
        if action in _WRITE_ACTIONS:
            return ExtensionResponse(
                status=self._status(EXT_SUCCESS, "OK"), response=[{"status": "readonly"}]
            )
        if action != "generate":
            return self._fail(f"{item}: unknown table plugin action {action!r}")
        try:
            ctx = QueryContext.from_json(request.get("context"))
        except ContextError as e:
            log.warning("%s: malformed query context from osquery: %s", item, e)
            return self._fail(f"{item}: malformed query context: {e}")
        try:
            if encoded:
                rows = self.calls.generate_osquery_batches(
                    item, ctx, BATCH_ROWS, encode_row_batches
                )
                return EncodedResponse(self._status(EXT_SUCCESS, "OK"), rows)
            response = self.calls.generate_osquery(item, ctx)
        except TableCallError as e:
            # TableCalls has already logged it, with the table name.
            return self._fail(str(e))
        except Exception as e:
            log.exception("%s: converting rows failed", item)
            return self._fail(f"{item}: {type(e).__name__}: {e}")
        return ExtensionResponse(status=self._status(EXT_SUCCESS, "OK"), response=response)

    def shutdown(self) -> None:
        # osquery's core asks every extension to shut down when it stops.
        # Answer first, then stop: the core is waiting for the reply.
        log.info("%s: osquery core requested shutdown", self.name)
        if self._on_shutdown is not None:
            after_reply(self._on_shutdown)
