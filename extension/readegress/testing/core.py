"""A protocol-faithful osquery core for testing extensions, without osqueryd.

:class:`OsqueryCore` serves the *manager* side of osquery's Thrift extension
API (``osquery/extensions/thrift/osquery.thrift``) on a UNIX socket, the way
``osqueryd``/``osqueryi`` do, and runs SQL in SQLite through
:class:`readegress.sql.engine.Engine`. Any osquery extension (in any
language) can register with it; tests then query its tables as a user of
osquery would::

    from readegress.testing import OsqueryCore

    with OsqueryCore(tmp_path / "osquery.em") as core:
        # launch the extension: EXE --socket <core.socket_path> --timeout 3 --interval 3
        core.wait_for_extension("my_extension")
        rows = core.query("SELECT pid, name FROM my_table WHERE pid = 1")

What it reproduces from osquery's core (``interface.cpp``, ``extensions.cpp``,
``virtual_table.cpp``, ``dynamic_table_row.cpp``, ``sqlite_util.cpp``):

- ``registerExtension`` assigns a random 16-bit route uuid, refuses a second
  extension with the same name ("Duplicate extension registered"), an SDK
  older than 1.7.7 ("Incompatible extension SDK version"), and a broadcast it
  cannot attach — unknown registry, table name already taken, no column
  routes ("Failed adding registry broadcast"); all with status code 1.
  ``deregisterExtension``, ``extensions()``, ``options()`` and ``ping()``
  answer as the core does.
- Each registered table becomes a SQLite virtual table built from its
  routes (types and option bits). Columns registered with op 0 are promoted
  to INDEX, as ``--extensions_default_index=true`` (osquery's default) does.
  Constraints reach the extension only for INDEX/REQUIRED/ADDITIONAL columns,
  never ``>``/``<`` on TEXT columns, never empty or NULL values; ``x IN
  (a, b)`` arrives as one generate call per value.
- Every scan opens a fresh connection to ``<socket>.<uuid>`` and sends
  ``call("table", NAME, {"action": "generate", "context": JSON})`` with a
  constraint entry for *every* column (sorted by name, with ``affinity``
  the column type), ``colsUsed`` and ``colsUsedBitset``. Unconstrained
  columns carry ``"list": ""`` — the quirk of osquery releases that wrote
  this JSON with boost's property tree, which extensions must tolerate; pass
  ``empty_list_as_string=False`` for the ``[]`` current releases send.
- Returned strings are converted per column type as osquery does: TEXT/BLOB
  as text; INTEGER via ``strtol`` base 0 (so ``0x10`` is 16 and trailing
  junk is ignored), truncated to 32 bits; BIGINT/UNSIGNED BIGINT via
  ``strtoll`` base 0; DOUBLE via ``strtod`` of the whole string; an empty
  string, a failed conversion or a missing key is NULL.
- A failed table call fails the query with the extension's message (status
  code 1). ``query()`` rows are string maps: NULL as ``""``, doubles with
  17 significant digits and always a ``.`` (``1.0``). ``getQueryColumns``
  reports osquery's type names (``BIGINT``, ``UNSIGNED BIGINT``...), or
  ``UNKNOWN`` for expressions (osquery infers those from the SQLite
  program; this core does not).
- A query that arrives while another runs (an extension querying the core
  from inside a table call) gets its own transient database, as osquery's
  ``SQLiteDBManager`` does on contention, so it cannot deadlock.
- With ``watch_interval`` set, registered extensions are pinged periodically
  and dropped after a failed ping (the first check waits up to
  ``extensions_timeout`` for the socket to appear), like osqueryd's watcher.

osquery's own tables are simulated with fixture rows: :meth:`add_table`
returns a :class:`FixtureTable` whose rows may be appended while tests run
(e.g. ``process_file_events`` or ``socket_events`` rows arriving over time).
``osquery_flags`` (from ``flags``) and ``osquery_extensions`` exist from the
start. :meth:`stop` then :meth:`start` on the same path simulates osqueryd
restarting: registrations are lost (fixture tables stay, as osquery's
compiled-in tables and stored events would); on start, stale
``<socket>.*`` socket files are removed, as the core does.

Not reproduced: osquery's SQL functions and authorizer, table aliases,
``REQUIRED`` column enforcement, event "since last run" bookkeeping, and
calls from one extension to another's registry items.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Union

import apsw
import apsw.ext
from osquery.extensions import ExtensionManager
from osquery.extensions.ttypes import (
    ExtensionResponse,
    ExtensionStatus,
    InternalExtensionInfo,
    InternalOptionInfo,
)

from readegress.osquery.client import (
    EXT_FAILED,
    EXT_SUCCESS,
    ExtensionClient,
    ExtensionInfo,
    OptionInfo,
    OsqueryCallError,
    OsqueryUnavailable,
    Status,
)
from readegress.osquery.server import ThriftUnixServer, after_reply, remove_stale_socket
from readegress.packs.osquery_schema import OSQUERY_EXTENSIONS, OSQUERY_FLAGS
from readegress.sql.engine import Engine
from readegress.tables.context import (
    GREATER_THAN,
    GREATER_THAN_OR_EQUALS,
    LESS_THAN,
    LESS_THAN_OR_EQUALS,
    QueryContext,
)
from readegress.tables.spec import COLUMN_TYPES, INDEX, OPTION_BITS, Column, TableSpec

log = logging.getLogger("readegress.testing.core")

CORE_VERSION = "5.23.0"
# osquery's kSDKVersionChanges: the oldest extension SDK the core accepts.
MIN_EXTENSION_SDK = "1.7.7"
# Registries osquery's core knows; a broadcast naming another one is refused.
KNOWN_REGISTRIES = frozenset(
    {
        "config",
        "config_parser",
        "database",
        "distributed",
        "enroll",
        "event_publisher",
        "event_subscriber",
        "killswitch",
        "logger",
        "numeric_monitoring",
        "sql",
        "table",
    }
)
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_C_SPACE = " \t\n\v\f\r"
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_TEXT_RANGE_OPS = frozenset({GREATER_THAN, GREATER_THAN_OR_EQUALS, LESS_THAN, LESS_THAN_OR_EQUALS})

ColumnDef = Union[tuple[str, str], tuple[str, str, Union[int, str]], Column]


# -- osquery's value conversions -------------------------------------------


def c_strtoll(text: str, base: int = 0) -> int | None:
    """``std::stoll(text, &pos, base)`` as osquery's ``tryTo`` calls it.

    Leading C whitespace and a sign are accepted; base 0 reads ``0x`` as hex
    and a leading ``0`` as octal; parsing stops at the first non-digit and
    the rest is ignored (osquery does not check ``pos``). ``None`` when no
    digit was read or the value overflows 64 bits.
    """
    s = text.lstrip(_C_SPACE)
    negative = False
    if s[:1] in ("+", "-"):
        negative = s[0] == "-"
        s = s[1:]
    if base == 0:
        if s[:2] in ("0x", "0X") and s[2:3] != "" and s[2] in "0123456789abcdefABCDEF":
            base, s = 16, s[2:]
        elif s[:1] == "0":
            base = 8
        else:
            base = 10
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"[:base]
    n = 0
    while n < len(s) and s[n].lower() in digits:
        n += 1
    if n == 0:
        return None
    value = int(s[:n], base)
    if negative:
        value = -value
    if value < _I64_MIN or value > _I64_MAX:
        return None
    return value


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_HEXFLOAT = re.compile(
    r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?\Z"
)
_SPECIAL = re.compile(r"[+-]?(?:inf(?:inity)?|nan(?:\([0-9A-Za-z_]*\))?)\Z", re.IGNORECASE)


def c_strtod(text: str) -> float | None:
    """``strtod`` that must consume the whole string (osquery's DOUBLE rule)."""
    s = text.lstrip(_C_SPACE)
    if _DECIMAL.match(s):
        return float(s)
    if _HEXFLOAT.match(s):
        sign = -1.0 if s.startswith("-") else 1.0
        return sign * float.fromhex(s.lstrip("+-"))
    if _SPECIAL.match(s):
        return float("nan") if "nan" in s.lower() else float(s.lower().replace("infinity", "inf"))
    return None


def osquery_value(value: object, column_type: str) -> object:
    """A column value as osquery's core hands it to SQLite.

    Strings (what extensions send) follow ``DynamicTableRow::get_column``;
    Python values from fixture rows are accepted as they are, by type.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool):
        value = int(value)
    ctype = column_type.upper()
    if ctype in ("TEXT", "BLOB"):
        return value if isinstance(value, str) else str(value)
    if ctype not in ("INTEGER", "BIGINT", "UNSIGNED BIGINT", "DOUBLE"):
        return None  # osquery logs "unknown column type" and yields NULL
    if isinstance(value, (int, float)):
        if ctype == "DOUBLE":
            return float(value)
        return _int32(int(value)) if ctype == "INTEGER" else int(value)
    text = str(value)
    if text == "":
        return None
    if ctype == "DOUBLE":
        return c_strtod(text)
    number = c_strtoll(text)
    if number is None:
        return None
    # sqlite3_result_int(ctx, long): the C conversion keeps the low 32 bits.
    return _int32(number) if ctype == "INTEGER" else number


def _int32(v: int) -> int:
    return (v + (1 << 31)) % (1 << 32) - (1 << 31)


def osquery_string(value: object) -> str:
    """A SQLite result value as osquery's ``query()`` returns it."""
    if value is None:
        return ""  # --nullvalue, default ""
    if isinstance(value, float):
        # boost::lexical_cast<std::string>(double): 17 significant digits,
        # then castVariant appends ".0" when there is no "." (so 1.0 is "1.0").
        s = f"{value:.17g}"
        return s if "." in s else s + ".0"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def version_at_least(required: str, version: str) -> bool:
    """osquery's ``versionAtLeast(required, version)`` (``0.0.0`` always passes)."""
    if required == "0.0.0" or version == "0.0.0":
        return True
    want = [p for p in required.split(".") if p]
    have = [p for p in version.split(".") if p]
    for i, chunk in enumerate(have):
        if i >= len(want):
            return True
        a, b = c_strtoll(chunk, 10), c_strtoll(want[i], 10)
        if a is None or b is None:
            if chunk < want[i]:
                return False
        elif a < b:
            return False
        elif a > b:
            return True
    return True


# -- tables ------------------------------------------------------------------


def _declared_type(column_type: str) -> str:
    return column_type if column_type in COLUMN_TYPES else "UNKNOWN"


class _DeclaredSpec(TableSpec):
    """A spec declared to SQLite with osquery's type names, as osquery's core does.

    Declared types are what ``getQueryColumns`` reports; their affinities
    (``BIGINT`` → INTEGER, ``DOUBLE`` → REAL) match the spec's own.
    """

    def create_sql(self) -> str:
        cols = ", ".join(
            f'"{c.name}" {_declared_type(c.type)}{" HIDDEN" if c.hidden else ""}'
            for c in self.columns
        )
        return f'CREATE TABLE "{self.name}"({cols})'


def _options(value: int | str) -> int:
    if isinstance(value, int):
        return value
    bits = 0
    for word in re.split(r"[,\s|]+", value.strip()):
        if not word:
            continue
        if word.lower() not in OPTION_BITS:
            raise ValueError(f"unknown column option {word!r} (one of {sorted(OPTION_BITS)})")
        bits |= OPTION_BITS[word.lower()]
    return bits


def fixture_spec(name: str, columns: Sequence[ColumnDef]) -> TableSpec:
    """A spec for one of osquery's own tables from ``(name, type[, options])``."""
    if not _TABLE_NAME.match(name):
        raise ValueError(f"table name {name!r} is not an identifier")
    cols: list[Column] = []
    for c in columns:
        if isinstance(c, Column):
            cols.append(c)
            continue
        cname, ctype = c[0], c[1]
        if ctype not in COLUMN_TYPES:
            raise ValueError(f"{name}.{cname}: type {ctype!r} is not one of {COLUMN_TYPES}")
        options = _options(c[2]) if len(c) == 3 else 0
        cols.append(Column(cname, ctype, "", options))
    if not cols:
        raise ValueError(f"table {name!r} needs at least one column")
    names = [c.name for c in cols]
    if len(set(names)) != len(names):
        raise ValueError(f"table {name!r} repeats a column name")
    return _DeclaredSpec(name, f"{name} (test fixture).", "", tuple(cols), ())


class FixtureTable:
    """One of osquery's own tables, with rows the test supplies (thread-safe).

    Rows are mappings from column name to value: strings are converted as
    osquery converts its rows, Python numbers and ``None`` are taken as is,
    a missing column is NULL. Appending while queries run is safe; each scan
    sees a snapshot.
    """

    def __init__(self, spec: TableSpec, rows: Iterable[Mapping[str, object]] = ()) -> None:
        self._spec = spec
        self._names = frozenset(spec.column_names)
        self._lock = threading.Lock()
        self._rows: list[dict[str, object]] = []
        self.extend(rows)

    @property
    def spec(self) -> TableSpec:
        return self._spec

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def rows(self) -> list[dict[str, object]]:
        with self._lock:
            return [dict(r) for r in self._rows]

    def _check(self, row: Mapping[str, object]) -> dict[str, object]:
        unknown = set(row) - self._names
        if unknown:
            raise KeyError(f"{self.name}: no column(s) {sorted(unknown)}")
        return dict(row)

    def append(self, *rows: Mapping[str, object]) -> None:
        self.extend(rows)

    def extend(self, rows: Iterable[Mapping[str, object]]) -> None:
        checked = [self._check(r) for r in rows]
        with self._lock:
            self._rows.extend(checked)

    def replace(self, rows: Iterable[Mapping[str, object]]) -> None:
        checked = [self._check(r) for r in rows]
        with self._lock:
            self._rows = checked

    def clear(self) -> None:
        with self._lock:
            self._rows = []

    def generate(self, ctx: QueryContext) -> list[tuple[object, ...]]:
        with self._lock:
            rows = list(self._rows)
        cols = self._spec.columns
        return [tuple(osquery_value(r.get(c.name), c.type) for c in cols) for r in rows]


class _DynamicTable:
    """A built-in table whose rows are computed at scan time."""

    def __init__(self, spec: TableSpec, rows: Callable[[], Iterable[Mapping[str, object]]]) -> None:
        self._spec = spec
        self._rows = rows

    @property
    def spec(self) -> TableSpec:
        return self._spec

    def generate(self, ctx: QueryContext) -> list[tuple[object, ...]]:
        cols = self._spec.columns
        return [tuple(osquery_value(r.get(c.name), c.type) for c in cols) for r in self._rows()]


class _TableCallFailed(Exception):
    """An extension table call failed; the message is the query's error."""


class _ExtensionTable:
    """A table an extension registered; every scan calls the extension."""

    def __init__(self, core: OsqueryCore, uuid: int, spec: TableSpec) -> None:
        self._core = core
        self.uuid = uuid
        self._spec = spec

    @property
    def spec(self) -> TableSpec:
        return self._spec

    def generate(self, ctx: QueryContext) -> list[tuple[object, ...]]:
        return self._core._generate(self, ctx)


@dataclass(frozen=True)
class GenerateCall:
    """One ``generate`` request the core sent to an extension, and its outcome."""

    table: str
    uuid: int
    request: dict[str, str]
    status: Status
    rows: int

    @property
    def context(self) -> dict[str, Any]:
        """The request's context JSON, parsed."""
        parsed: dict[str, Any] = json.loads(self.request["context"])
        return parsed

    def constraints(self) -> dict[str, list[tuple[int, str]]]:
        """Constraint lists by column, as ``(op, expr)`` (empty for unconstrained)."""
        out: dict[str, list[tuple[int, str]]] = {}
        for entry in self.context["constraints"]:
            items = entry["list"] or []
            out[entry["name"]] = [(int(i["op"]), str(i["expr"])) for i in items]
        return out


@dataclass
class _Registration:
    uuid: int
    info: ExtensionInfo
    registry: dict[str, dict[str, list[dict[str, str]]]]
    tables: tuple[str, ...]
    checked: bool = False


class _BroadcastError(Exception):
    pass


def _default_flags(
    socket_path: str, timeout: float, interval: float, default_index: bool
) -> dict[str, tuple[str, str]]:
    # name -> (value, type); values are osquery's defaults unless noted.
    return {
        "config_plugin": ("filesystem", "string"),
        "logger_plugin": ("filesystem", "string"),
        "distributed_plugin": ("tls", "string"),
        "disable_extensions": ("false", "bool"),
        "extensions_socket": (socket_path, "string"),
        "extensions_timeout": (f"{timeout:g}", "string"),
        "extensions_interval": (f"{interval:g}", "string"),
        "extensions_require": ("", "string"),
        "extensions_default_index": ("true" if default_index else "false", "bool"),
        "disable_events": ("false", "bool"),
        "disable_audit": ("true", "bool"),
        "audit_allow_config": ("false", "bool"),
        "audit_allow_sockets": ("false", "bool"),
        "audit_allow_fim_events": ("false", "bool"),
        "audit_fim_show_accesses": ("false", "bool"),
        "events_expiry": ("3600", "uint64"),
        "events_max": ("50000", "uint64"),
        "nullvalue": ("", "string"),
    }


class _ManagerHandler:
    """The ``ExtensionManager`` service; every method answers, none raises."""

    def __init__(self, core: OsqueryCore) -> None:
        self._core = core

    def ping(self) -> Any:
        return ExtensionStatus(code=EXT_SUCCESS, message="pong", uuid=0)

    def call(self, registry: str, item: str, request: Mapping[str, str] | None) -> Any:
        try:
            status, rows = self._core._call_core(str(registry), str(item), dict(request or {}))
        except Exception as e:  # a fixture bug answers as a failure, like any other
            log.exception("call(%r, %r) failed", registry, item)
            status, rows = Status(EXT_FAILED, f"{type(e).__name__}: {e}"), []
        return _response(status, rows)

    def shutdown(self) -> None:
        # The core shuts down (and tells its extensions to) after answering.
        def stop() -> None:
            threading.Thread(
                target=self._core.stop, kwargs={"shutdown_extensions": True}, daemon=True
            ).start()

        after_reply(stop)

    def extensions(self) -> Any:
        return {
            uuid: InternalExtensionInfo(
                name=i.name,
                version=i.version,
                sdk_version=i.sdk_version,
                min_sdk_version=i.min_sdk_version,
            )
            for uuid, i in self._core.extensions().items()
        }

    def options(self) -> Any:
        return {
            name: InternalOptionInfo(value=o.value, default_value=o.default_value, type=o.type)
            for name, o in self._core.options().items()
        }

    def registerExtension(self, info: Any, registry: Any) -> Any:
        ext = ExtensionInfo(
            str(getattr(info, "name", "") or ""),
            str(getattr(info, "version", "") or ""),
            str(getattr(info, "sdk_version", "") or ""),
            str(getattr(info, "min_sdk_version", "") or ""),
        )
        status = self._core._register(ext, registry or {})
        return ExtensionStatus(code=status.code, message=status.message, uuid=status.uuid)

    def deregisterExtension(self, uuid: int) -> Any:
        status = self._core._deregister(int(uuid or 0))
        return ExtensionStatus(code=status.code, message=status.message, uuid=status.uuid)

    def query(self, sql: str) -> Any:
        try:
            rows = self._core.query(str(sql or ""))
        except OsqueryCallError as e:
            return _response(Status(e.code, e.message), [])
        return _response(Status(EXT_SUCCESS, "OK"), rows)

    def getQueryColumns(self, sql: str) -> Any:
        try:
            cols = self._core.get_query_columns(str(sql or ""))
        except OsqueryCallError as e:
            return _response(Status(e.code, e.message), [])
        return _response(Status(EXT_SUCCESS, "OK"), [{n: t} for n, t in cols])


def _response(status: Status, rows: list[dict[str, str]]) -> Any:
    return ExtensionResponse(
        status=ExtensionStatus(code=status.code, message=status.message, uuid=0), response=rows
    )


def _sqlite_message(e: BaseException) -> str:
    msg = str(e)
    for prefix in ("SQLError: ", "Error: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg or type(e).__name__


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


class OsqueryCore:
    """A test osquery core serving the extension manager API on ``socket_path``.

    Args:
        socket_path: the manager socket (``--extensions_socket``).
        flags: flag values to report in ``options()``/``osquery_flags``.
        watch_interval: ping registered extensions this often and drop dead
            ones, like osqueryd's ``--extensions_interval`` watcher; ``None``
            (default) never drops them.
        extensions_timeout: seconds the watcher's first check waits for an
            extension's socket (``--extensions_timeout``).
        call_timeout: socket timeout of each call to an extension.
        extensions_default_index: promote op-0 columns to INDEX (osquery's
            default ``true``).
        empty_list_as_string: send unconstrained columns as ``"list": ""``
            (boost-era osquery) rather than ``[]``.
        max_connections: concurrent Thrift connections served.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        flags: Mapping[str, str] | None = None,
        watch_interval: float | None = None,
        extensions_timeout: float = 3.0,
        call_timeout: float = 10.0,
        extensions_default_index: bool = True,
        empty_list_as_string: bool = True,
        max_connections: int = 64,
    ) -> None:
        self._path = os.fspath(socket_path)
        self.watch_interval = watch_interval
        self.extensions_timeout = extensions_timeout
        self.call_timeout = call_timeout
        self.extensions_default_index = extensions_default_index
        self.empty_list_as_string = empty_list_as_string
        self._max_connections = max_connections
        self._lock = threading.RLock()
        self._extensions: dict[int, _Registration] = {}
        self._sources: dict[str, Any] = {}
        self._generation = 0
        self._primary: Engine | None = None
        self._primary_generation = -1
        self._primary_lock = threading.Lock()
        self._server: ThriftUnixServer | None = None
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._calls: deque[GenerateCall] = deque(maxlen=10_000)
        self._flags: dict[str, OptionInfo] = {}
        defaults = _default_flags(
            self._path, extensions_timeout, watch_interval or 3.0, extensions_default_index
        )
        for name, (value, ftype) in defaults.items():
            self._flags[name] = OptionInfo(value, value, ftype)
        for name, value in (flags or {}).items():
            self.set_flag(name, value)
        self._add_builtin_tables()

    # -- lifecycle -------------------------------------------------------

    @property
    def socket_path(self) -> str:
        return self._path

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> OsqueryCore:
        """Serve on ``socket_path`` from background threads; returns once listening."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("core already running")
            # osquery removes stale "<socket>.*" paths before serving; only
            # sockets here, so a test's other files are never touched.
            for stale in glob.glob(glob.escape(self._path) + ".*"):
                if _is_socket(stale):
                    remove_stale_socket(stale)
            server = ThriftUnixServer(
                ExtensionManager.Processor(_ManagerHandler(self)),
                max_connections=self._max_connections,
                name="osquery-core",
            )
            server.start(self._path)
            self._server = server
            self._stopping = threading.Event()
            if self.watch_interval:
                self._watcher = threading.Thread(
                    target=self._watch,
                    args=(self._stopping,),
                    name="osquery-core-watch",
                    daemon=True,
                )
                self._watcher.start()
        log.info("osquery test core listening on %s", self._path)
        return self

    def stop(self, *, shutdown_extensions: bool = False) -> None:
        """Stop serving and forget every registration (a crash, by default).

        With ``shutdown_extensions``, first call ``shutdown()`` on each
        registered extension, as osqueryd does when it stops cleanly.
        """
        with self._lock:
            server, self._server = self._server, None
            watcher, self._watcher = self._watcher, None
            self._stopping.set()
            registrations = list(self._extensions.values())
        if server is None:
            return
        if shutdown_extensions:
            for reg in registrations:
                try:
                    with ExtensionClient(self.extension_socket(reg.uuid), timeout=1.0) as c:
                        c.shutdown()
                except (OsqueryUnavailable, OsqueryCallError):
                    log.debug("extension uuid %d: shutdown request failed", reg.uuid)
        server.stop()
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(5.0)
        with self._lock:
            for uuid in list(self._extensions):
                self._forget(uuid)
        log.info("osquery test core stopped")

    def restart(self) -> OsqueryCore:
        """``stop()`` then ``start()`` on the same path: extensions must re-register."""
        self.stop()
        return self.start()

    def __enter__(self) -> OsqueryCore:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        with self._lock:
            engine, self._primary = self._primary, None
        if engine is not None:
            with self._primary_lock:
                engine.close()

    # -- extensions ------------------------------------------------------

    def extensions(self) -> dict[int, ExtensionInfo]:
        """Registered extensions by uuid."""
        with self._lock:
            return {uuid: r.info for uuid, r in self._extensions.items()}

    def registry_of(self, uuid: int) -> dict[str, dict[str, list[dict[str, str]]]]:
        """The registry broadcast an extension registered (its table routes)."""
        with self._lock:
            return json.loads(json.dumps(self._extensions[uuid].registry))  # type: ignore[no-any-return]

    def extension_socket(self, uuid: int) -> str:
        """Where the extension with ``uuid`` serves: ``<socket>.<uuid>``."""
        return f"{self._path}.{uuid}"

    def wait_for_extension(self, name: str, timeout: float = 10.0) -> int:
        """Wait until ``name`` is registered and answers a ping (``--extensions_require``)."""
        deadline = time.monotonic() + timeout
        while True:
            for uuid, info in self.extensions().items():
                if info.name != name:
                    continue
                try:
                    with ExtensionClient(self.extension_socket(uuid), timeout=1.0) as c:
                        if c.ping().ok:
                            return uuid
                except (OsqueryUnavailable, OsqueryCallError):
                    pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"extension {name!r} did not register within {timeout:g}s")
            time.sleep(0.02)

    def drop_extension(self, uuid: int) -> bool:
        """Forget an extension as the watcher would (it is not told)."""
        with self._lock:
            if uuid not in self._extensions:
                return False
            self._forget(uuid)
        log.info("Extension UUID %d has gone away", uuid)
        return True

    @property
    def generate_calls(self) -> list[GenerateCall]:
        """Every generate request sent to extensions, oldest first."""
        with self._lock:
            return list(self._calls)

    def clear_generate_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    # -- tables and flags -----------------------------------------------

    def add_table(
        self,
        name: str,
        columns: Sequence[ColumnDef],
        rows: Iterable[Mapping[str, object]] = (),
        *,
        replace: bool = False,
    ) -> FixtureTable:
        """Add one of osquery's own tables (e.g. ``process_file_events``) with rows.

        ``columns`` are ``(name, type)`` or ``(name, type, options)`` where
        options are option bits or words (``"index"``, ``"hidden"``...).
        """
        table = FixtureTable(fixture_spec(name, columns), rows)
        with self._lock:
            if name in self._sources and not replace:
                raise ValueError(f"table {name!r} already exists")
            self._sources[name] = table
            self._generation += 1
        return table

    def table(self, name: str) -> FixtureTable:
        with self._lock:
            source = self._sources.get(name)
        if not isinstance(source, FixtureTable):
            raise KeyError(f"no fixture table named {name!r}")
        return source

    def remove_table(self, name: str) -> None:
        with self._lock:
            if isinstance(self._sources.get(name), _ExtensionTable):
                raise ValueError(f"{name!r} belongs to an extension")
            self._sources.pop(name, None)
            self._generation += 1

    def options(self) -> dict[str, OptionInfo]:
        with self._lock:
            return dict(self._flags)

    def set_flag(self, name: str, value: str, type: str | None = None) -> None:
        """Set a flag as if passed on osqueryd's command line."""
        with self._lock:
            old = self._flags.get(name)
            default = old.default_value if old is not None else str(value)
            ftype = type or (old.type if old is not None else "string")
            self._flags[name] = OptionInfo(str(value), default, ftype)

    def _add_builtin_tables(self) -> None:
        self._sources["osquery_extensions"] = _DynamicTable(
            fixture_spec("osquery_extensions", OSQUERY_EXTENSIONS),
            self._extension_rows,
        )
        self._sources["osquery_flags"] = _DynamicTable(
            fixture_spec("osquery_flags", OSQUERY_FLAGS),
            self._flag_rows,
        )
        self._generation += 1

    def _extension_rows(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [
            {
                "uuid": 0,
                "name": "core",
                "version": CORE_VERSION,
                "sdk_version": "0.0.0",
                "path": self._path,
                "type": "core",
            }
        ]
        for uuid, info in sorted(self.extensions().items()):
            rows.append(
                {
                    "uuid": uuid,
                    "name": info.name,
                    "version": info.version,
                    "sdk_version": info.sdk_version,
                    "path": self.extension_socket(uuid),
                    "type": "extension",
                }
            )
        return rows

    def _flag_rows(self) -> list[dict[str, object]]:
        return [
            {
                "name": name,
                "type": o.type,
                "description": "",
                "default_value": o.default_value,
                "value": o.value,
                "shell": 0,
            }
            for name, o in sorted(self.options().items())
        ]

    # -- SQL -------------------------------------------------------------

    def query(self, sql: str) -> list[dict[str, str]]:
        """Run SQL as the core's ``query()`` does; raises :class:`OsqueryCallError`."""
        engine, release = self._checkout_engine()
        try:
            cursor = engine.db.cursor()
            out: list[dict[str, str]] = []
            for row in cursor.execute(sql):
                # Several statements may run; each row carries its own names.
                names = [d[0] for d in cursor.getdescription()]
                out.append({n: osquery_string(v) for n, v in zip(names, row)})
            return out
        except apsw.Error as e:
            raise OsqueryCallError(EXT_FAILED, _sqlite_message(e)) from None
        except _TableCallFailed as e:
            raise OsqueryCallError(EXT_FAILED, str(e)) from None
        except Exception as e:  # a fixture table's bug fails the query, as in osquery
            log.exception("query failed: %s", sql)
            raise OsqueryCallError(EXT_FAILED, f"{type(e).__name__}: {e}") from None
        finally:
            release()

    def get_query_columns(self, sql: str) -> list[tuple[str, str]]:
        """Result columns and osquery types, without running the query."""
        engine, release = self._checkout_engine()
        try:
            info = apsw.ext.query_info(engine.db, sql)
            described = info.description or ()
            return [
                (str(name), _declared_type(str(decl or "").upper())) for name, decl in described
            ]
        except apsw.Error as e:
            raise OsqueryCallError(EXT_FAILED, _sqlite_message(e)) from None
        finally:
            release()

    def _checkout_engine(self) -> tuple[Engine, Callable[[], None]]:
        with self._lock:
            generation = self._generation
            sources = list(self._sources.values())
        if self._primary_lock.acquire(blocking=False):
            try:
                if self._primary is None or self._primary_generation != generation:
                    if self._primary is not None:
                        self._primary.close()
                    self._primary = self._build_engine(sources)
                    self._primary_generation = generation
                return self._primary, self._primary_lock.release
            except BaseException:
                self._primary_lock.release()
                raise
        # Contention: osquery opens a transient database with every table attached.
        engine = self._build_engine(sources)
        return engine, engine.close

    @staticmethod
    def _build_engine(sources: Sequence[Any]) -> Engine:
        engine = Engine()
        for source in sources:
            engine.register(source)
        return engine

    # -- registration ----------------------------------------------------

    def _register(self, info: ExtensionInfo, registry: Mapping[str, Any]) -> Status:
        with self._lock:
            if any(r.info.name == info.name for r in self._extensions.values()):
                log.warning("Refusing to register duplicate extension %s", info.name)
                return Status(EXT_FAILED, "Duplicate extension registered")
            if not version_at_least(MIN_EXTENSION_SDK, info.sdk_version):
                log.warning(
                    "Could not add extension %s: incompatible extension SDK %s",
                    info.name,
                    info.sdk_version,
                )
                return Status(EXT_FAILED, "Incompatible extension SDK version")
            try:
                clean, specs = self._parse_broadcast(registry)
            except _BroadcastError as e:
                log.warning("Could not add extension %s: %s", info.name, e)
                return Status(EXT_FAILED, "Failed adding registry broadcast")
            uuid = random.randint(1, 0xFFFF)
            while uuid in self._extensions:
                uuid = random.randint(1, 0xFFFF)
            for spec in specs:
                self._sources[spec.name] = _ExtensionTable(self, uuid, spec)
            self._extensions[uuid] = _Registration(uuid, info, clean, tuple(s.name for s in specs))
            self._generation += 1
        log.info(
            "Registering extension (%s, %d, version=%s, sdk=%s)",
            info.name,
            uuid,
            info.version,
            info.sdk_version,
        )
        return Status(EXT_SUCCESS, "OK", uuid)

    def _parse_broadcast(
        self, registry: Mapping[str, Any]
    ) -> tuple[dict[str, dict[str, list[dict[str, str]]]], list[TableSpec]]:
        clean: dict[str, dict[str, list[dict[str, str]]]] = {}
        specs: list[TableSpec] = []
        for reg_name, items in registry.items():
            if reg_name not in KNOWN_REGISTRIES:
                raise _BroadcastError(f"unknown registry {reg_name!r}")
            clean[reg_name] = {
                str(item): [{str(k): str(v) for k, v in r.items()} for r in (routes or [])]
                for item, routes in (items or {}).items()
            }
            if reg_name != "table":
                continue
            for item, routes in clean[reg_name].items():
                if not _TABLE_NAME.match(item):
                    raise _BroadcastError(f"table name {item!r} cannot be attached")
                if item in self._sources:
                    raise _BroadcastError(f"duplicate registry item table/{item}")
                specs.append(self._spec_from_routes(item, routes))
        # osquery attaches each table; a declaration SQLite rejects fails the broadcast.
        try:
            self._build_engine([_DynamicTable(s, lambda: ()) for s in specs]).close()
        except apsw.Error as e:
            raise _BroadcastError(_sqlite_message(e)) from None
        return clean, specs

    def _spec_from_routes(self, name: str, routes: Sequence[Mapping[str, str]]) -> TableSpec:
        columns: list[Column] = []
        for route in routes:
            if route.get("id") != "column" or "name" not in route or "type" not in route:
                continue  # aliases and attributes do not define columns
            parsed = c_strtoll(route.get("op", ""), 10)
            options = 0 if parsed is None else parsed
            if options == 0 and self.extensions_default_index:
                options = INDEX
            columns.append(Column(route["name"], route["type"], "", options))
        if not columns:
            raise _BroadcastError(f"invalid route info for table {name!r}")
        return _DeclaredSpec(name, f"{name} (extension table).", "", tuple(columns), ())

    def _deregister(self, uuid: int) -> Status:
        with self._lock:
            if uuid not in self._extensions:
                return Status(EXT_FAILED, "No extension UUID registered", 0)
            self._forget(uuid)
        return Status(EXT_SUCCESS, "", uuid)

    def _forget(self, uuid: int) -> None:
        reg = self._extensions.pop(uuid, None)
        if reg is None:
            return
        for name in reg.tables:
            source = self._sources.get(name)
            if isinstance(source, _ExtensionTable) and source.uuid == uuid:
                del self._sources[name]
        self._generation += 1

    def _watch(self, stopping: threading.Event) -> None:
        interval = self.watch_interval or 3.0
        while not stopping.wait(interval):
            with self._lock:
                registrations = list(self._extensions.values())
            for reg in registrations:
                if stopping.is_set():
                    return
                path = self.extension_socket(reg.uuid)
                if not reg.checked:
                    # The first check allows the extension time to start serving.
                    deadline = time.monotonic() + self.extensions_timeout
                    while not _is_socket(path) and time.monotonic() < deadline:
                        if stopping.wait(0.02):
                            return
                    reg.checked = True
                try:
                    with ExtensionClient(path, timeout=self.extensions_timeout) as client:
                        alive = client.ping().ok
                except (OsqueryUnavailable, OsqueryCallError):
                    alive = False
                if not alive:
                    with self._lock:
                        current = self._extensions.get(reg.uuid)
                        if current is not reg:
                            continue
                        self._forget(reg.uuid)
                    log.info("Extension UUID %d has gone away", reg.uuid)

    # -- calls -----------------------------------------------------------

    def _context_json(self, spec: TableSpec, ctx: QueryContext) -> str:
        by_column: dict[str, list[dict[str, object]]] = {}
        for c in ctx.constraints:
            try:
                column = spec.column(c.column)
            except KeyError:
                continue
            if c.expr == "":
                continue  # osquery skips values SQLite did not expose (NULL, '')
            if column.type == "TEXT" and c.op in _TEXT_RANGE_OPS:
                continue  # osquery's sensibleComparison: no ranges on TEXT
            by_column.setdefault(c.column, []).append({"op": c.op, "expr": c.expr})
        empty: object = "" if self.empty_list_as_string else []
        constraints = [
            {
                "name": column.name,
                "list": by_column.get(column.name) or empty,
                "affinity": _declared_type(column.type),
            }
            # osquery keeps constraints in a std::map: ordered by column name.
            for column in sorted(spec.columns, key=lambda col: col.name)
        ]
        used = [col.name for col in spec.columns if ctx.uses(col.name)]
        bitset = 0
        for i, col in enumerate(spec.columns):
            if ctx.uses(col.name):
                bitset |= 1 << min(i, 63)
        return json.dumps({"constraints": constraints, "colsUsed": used, "colsUsedBitset": bitset})

    def _generate(self, table: _ExtensionTable, ctx: QueryContext) -> list[tuple[object, ...]]:
        spec = table.spec
        request = {"action": "generate", "context": self._context_json(spec, ctx)}
        try:
            with ExtensionClient(
                self.extension_socket(table.uuid), timeout=self.call_timeout
            ) as client:
                status, rows = client.call("table", spec.name, request)
        except (OsqueryUnavailable, OsqueryCallError) as e:
            status, rows = Status(EXT_FAILED, f"Extension call failed: {e}"), []
        with self._lock:
            self._calls.append(GenerateCall(spec.name, table.uuid, request, status, len(rows)))
        if not status.ok:
            raise _TableCallFailed(status.message)
        cols = spec.columns
        return [tuple(osquery_value(r.get(c.name), c.type) for c in cols) for r in rows]

    def _call_core(
        self, registry: str, item: str, request: Mapping[str, str]
    ) -> tuple[Status, list[dict[str, str]]]:
        """``call()`` on the core: its own tables answer ``columns`` and ``generate``."""
        with self._lock:
            source = self._sources.get(item) if registry == "table" else None
        if source is None or isinstance(source, _ExtensionTable):
            return Status(EXT_FAILED, f"Cannot call registry item: {registry}/{item}"), []
        action = request.get("action")
        if action == "columns":
            return Status(EXT_SUCCESS, "OK"), source.spec.routes()
        if action == "generate":
            try:
                ctx = QueryContext.from_json(request.get("context"))
            except ValueError as e:
                return Status(EXT_FAILED, str(e)), []
            names = source.spec.column_names
            rows = [
                {n: osquery_string(v) for n, v in zip(names, row)} for row in source.generate(ctx)
            ]
            return Status(EXT_SUCCESS, "OK"), rows
        return Status(EXT_FAILED, f"Unknown table plugin action: {action}"), []


__all__ = [
    "CORE_VERSION",
    "FixtureTable",
    "GenerateCall",
    "OsqueryCore",
    "c_strtod",
    "c_strtoll",
    "fixture_spec",
    "osquery_string",
    "osquery_value",
    "version_at_least",
]
