"""osquery results logs → rows: the one reader for every format osquery writes.

Where the data comes from. osquery's filesystem logger writes
``osqueryd.results.log`` (differential queries) and ``osqueryd.snapshots.log``,
one JSON object a line; shippers that forward those lines verbatim keep the
shapes. osquery 5.x (``osquery/core/query.cpp``: ``addLegacyFieldsAndDecorations``,
``serializeEvent``) writes:

- on every line ``name``, ``hostIdentifier``, ``calendarTime``, ``unixTime``,
  ``epoch``, ``counter``, ``numerics``, then the decorations: nested as
  ``"decorations":{...}``, or with ``--decorations_top_level`` as keys of the
  line itself. Older osquery wrote ``hostname`` instead of ``hostIdentifier``
  and strings instead of numbers.
- event format (the default, ``--logger_event_type=true``): one row per line,
  ``..."columns":{...},"action":"added"|"removed"}`` — columns, then action, last.
- batch format (``--logger_event_type=false``): ``{"diffResults":{"added":[...],
  "removed":[...]},...}``.
- snapshots: ``{"snapshot":[...],"action":"snapshot",...}``; with
  ``--logger_snapshot_event_type`` one row per line, shaped like the event
  format with ``"action":"snapshot"``.
- column values are strings, or JSON numbers for numeric columns with
  ``--logger_numerics``.

Quirks the reader handles:

- Event tables (``process_file_events``, ``socket_events``, ``process_events``)
  log every row as ``added``: a scheduled query returns only events since its
  last run. ``removed`` rows (differential queries of ordinary tables) are not
  new events; they are counted, never yielded.
- Query names are whatever a pack or Fleet called them (``pack_<pack>_<query>``,
  a Fleet report name, ...): the table is recognised by a row's columns
  (:func:`readegress.sources.osquery_rows.recognise`), never by the name.
- A bad line (not JSON, not an object, no rows, no host) is reported through
  ``on_bad`` with its file and line number and counted; it never stops the read.
  A file that cannot be opened, or a gzip stream that ends early, is reported
  the same way (line 0, or the line where it broke).
- ``.gz`` files (by their magic bytes, whatever their name) and ``-`` for stdin.

The fast path (:meth:`ResultsReader.event_rows` with ``fast=True``). A full
parse costs ~4 µs a line with orjson (~11 µs with the stdlib), and most lines of
a real log cannot matter: ``close``/``write`` file events, and reads of a
process loading its libraries, many rows of one process in one osquery second
that differ only in ``path``. osquery writes an event-format line as a header
(identical for every row of one query run), the columns, and ``"action":...``
last. So for such a line the fast path compares the header with the previous
line's (parsed once per query run), finds ``"operation":"`` by byte search, and:

- skips (counts in ``stats.skipped``) a file event whose operation is not a read:
  :func:`~readegress.sources.osquery_rows.event_from_row` returns ``None`` for it;
- with ``keep_read``, collapses (counts in ``stats.collapsed``) a read whose
  columns equal, byte for byte, those of the last read yielded for the same pid
  in the same query run except ``operation``, ``path`` and ``eid``, unless
  ``keep_read(path)`` says the path matters (replay passes the catalogue);
- parses only the columns object (orjson) of every other row and yields it.

A line that departs from that layout (another order of top-level keys, an
escape in the operation or path, no hostIdentifier/hostname in the header) takes
the full parse, so yielded rows are exactly what the full parse yields. What the
fast path does not do is validate the bytes of the rows it skips or collapses:
a line corrupted inside such a row counts as read there and as bad in the full
parse. It also assumes what osquery guarantees: one key per name in a columns
object, and the same columns in every row of one query run (whether skipped
rows have ``path`` and ``pid``, which makes them file events, is checked once
per run).

Several readers may split the hosts of one log between them (``hosts``); the
lines no host can be given to (not JSON, ...) and the line counts then belong
to the one reader with ``owns_unattributed``.
"""

from __future__ import annotations

import gzip
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import IO, Any, NamedTuple, Optional

from readegress.sources.osquery_rows import FILE_EVENTS, READ_OPERATIONS, recognise


def _pick_json() -> tuple[Callable[[bytes], Any], str]:
    try:
        import orjson
    except ImportError:  # pragma: no cover - exercised where orjson is absent
        import json

        return json.loads, "json"
    return orjson.loads, "orjson"


#: The JSON decoder: orjson when importable (the ``fast`` extra), else the stdlib.
loads, JSON_LIBRARY = _pick_json()

ADDED = "added"
REMOVED = "removed"
SNAPSHOT = "snapshot"

#: Top-level keys osquery itself writes; any other top-level key of a line is a
#: decoration (``--decorations_top_level``).
LOG_KEYS = frozenset(
    {
        "name", "hostIdentifier", "hostname", "calendarTime", "unixTime", "epoch", "counter",
        "numerics", "decorations", "columns", "action", "diffResults", "snapshot",
    }
)  # fmt: skip

CHUNK_BYTES = 4 << 20
_HEADER_CACHE_MAX = 4096
_PATH_CACHE_MAX = 65_536
_LAST_READS_MAX = 200_000


class LogRow(NamedTuple):
    """One ``added`` or ``snapshot`` row of a results log.

    ``row`` is the row's columns object as parsed. ``table`` is the event table
    recognised by its columns, or ``None``. ``unix_time`` is when osquery ran
    the query (``unixTime``), not when the event happened.
    """

    file: str
    line: int
    host: str
    name: str
    action: str
    row: Mapping[str, Any]
    table: Optional[str]
    unix_time: Optional[int]


def display_name(path: str) -> str:
    """A log's name in reports and BadLines: ``<stdin>`` for ``-``."""
    return "<stdin>" if path == "-" else path


class BadLine(NamedTuple):
    """A line (or, with line 0, a file) the reader could not use, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class ReadStats:
    """What a reader has seen so far. ``rows`` counts rows of every action."""

    files: int = 0
    unreadable_files: int = 0
    lines: int = 0
    blank_lines: int = 0
    bad_lines: int = 0
    rows: int = 0
    removed: int = 0
    #: File events the fast path skipped: not a read, so no event.
    skipped: int = 0
    #: Reads the fast path collapsed into the previous read of their process.
    collapsed: int = 0
    #: Rows of tables other than the event tables, in :meth:`ResultsReader.event_rows`.
    other_tables: int = 0
    #: Event-format lines the fast path handled without parsing the whole line.
    fast_lines: int = 0
    bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Header(NamedTuple):
    host: str
    name: str
    unix_time: Optional[int]


def _unix_time(v: Any) -> Optional[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return None


def _host_of(obj: Mapping[str, Any]) -> Optional[str]:
    for key in ("hostIdentifier", "hostname"):
        v = obj.get(key)
        if isinstance(v, str) and v:
            return v
    return None


def decorations_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A parsed line's decorations, nested or (``--decorations_top_level``) at the top."""
    nested = obj.get("decorations")
    if isinstance(nested, dict):
        return dict(nested)
    # With hostIdentifier there, a top-level "hostname" is a decoration, not the old host key.
    known = LOG_KEYS - {"hostname"} if "hostIdentifier" in obj else LOG_KEYS
    return {k: v for k, v in obj.items() if k not in known}


def _header(text: bytes) -> Optional[_Header]:
    """The common fields of an event-format line (``None``: let the full parse judge)."""
    try:
        obj = loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "diffResults" in obj or "snapshot" in obj:
        return None
    host = _host_of(obj)
    if host is None:
        return None
    name = obj.get("name")
    return _Header(host, name if isinstance(name, str) else "", _unix_time(obj.get("unixTime")))


def _open(path: str) -> IO[bytes]:
    """A binary stream of the log: ``-`` is stdin; gzip is detected by its magic bytes."""
    raw: IO[bytes]
    if path == "-":
        raw = sys.stdin.buffer
        peek = getattr(raw, "peek", None)
        head = peek(2)[:2] if peek is not None else b""
    else:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
        head = raw.read(2)
        raw.seek(0)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


_COLUMNS_KEY = b',"columns":{'
_SUFFIX_ADDED = b'},"action":"added"}'
_SUFFIX_SNAPSHOT = b'},"action":"snapshot"}'
_SUFFIX_REMOVED = b'},"action":"removed"}'
_OPERATION_KEY = b'"operation":"'
_READ_PREFIXES = tuple(op.encode() + b'"' for op in sorted(READ_OPERATIONS))
_EID_KEY = b',"eid":"'
#: File operations osquery logs that are not reads (osquery.md), as they start a value.
_OTHER_OPERATIONS = tuple(
    op.encode() + b'"'
    for op in ("close", "write", "open+truncate", "unlink", "rename", "link", "symlink")
)
#: The bytes of the last read kept per pid: (header, the columns before ',"eid"'
#: or before "operation", those from the end of the (4-letter) operation value to
#: "path", those from the end of the path value, those after the eid value or None).
_LastRead = tuple[bytes, bytes, bytes, bytes, Optional[bytes]]


class ResultsReader:
    """Reads results logs, reporting bad lines through ``on_bad``, counting in ``stats``.

    :meth:`rows` yields every ``added``/``snapshot`` row of any table, fully
    parsed. :meth:`event_rows` yields the rows of the osquery event tables,
    through the fast path of the module docstring unless ``fast=False``.
    """

    def __init__(
        self,
        *,
        on_bad: Optional[Callable[[BadLine], None]] = None,
        fast: bool = True,
        chunk_bytes: int = CHUNK_BYTES,
        hosts: Optional[Callable[[str], bool]] = None,
        owns_unattributed: bool = True,
    ) -> None:
        self.fast = fast
        # Several readers may share the lines of one log, each taking the hosts
        # ``hosts`` accepts; lines with no host (not JSON, ...) and the line
        # counts belong to the one reader with ``owns_unattributed``.
        self._hosts = hosts
        self._owns_unattributed = owns_unattributed
        self.chunk_bytes = max(1 << 12, chunk_bytes)
        self.stats = ReadStats()
        #: Bad lines, when no ``on_bad`` callback takes them (the first 10,000).
        self.bad: list[BadLine] = []
        self.on_bad: Callable[[BadLine], None] = on_bad if on_bad is not None else self._keep_bad
        self._last_reads: dict[bytes, _LastRead] = {}  # per file, see _read

    def _keep_bad(self, bad: BadLine) -> None:
        if len(self.bad) < 10_000:
            self.bad.append(bad)

    def _report(self, file: str, line: int, reason: str) -> None:
        self.stats.bad_lines += 1
        self.on_bad(BadLine(file, line, reason))

    def rows(self, paths: Iterable[str]) -> Iterator[LogRow]:
        """Every ``added``/``snapshot`` row of every line, all columns, in log order."""
        for path in paths:
            yield from self._read(path, False, None, 0)

    def event_rows(
        self,
        paths: Iterable[str],
        *,
        keep_read: Optional[Callable[[str], bool]] = None,
        cut_every: int = 0,
    ) -> Iterator[LogRow]:
        """Rows of the osquery event tables, in log order.

        On the fast path, non-read file events are skipped, and with
        ``keep_read`` (a path → "must this read be kept" predicate, e.g. "is it
        in the catalogue") repeated reads are collapsed; see the module docstring.
        A read is never collapsed into one before the start of its file or, with
        ``cut_every``, before the last line number that is a multiple of it:
        a consumer that cuts its own stream there (replay's flushes) sees the
        same rows on each side of the cut as without collapsing.
        """
        for path in paths:
            yield from self._read(path, True, keep_read, cut_every)

    # ----- the full parse ------------------------------------------------
    def _parsed(self, line: bytes, file: str, lineno: int, events: bool) -> list[LogRow]:
        st = self.stats
        if not line.strip():
            if self._owns_unattributed:
                st.blank_lines += 1
            return []
        try:
            obj = loads(line)
        except ValueError as e:  # orjson.JSONDecodeError, json.JSONDecodeError, UnicodeError
            self._report_unattributed(file, lineno, f"not JSON: {str(e).splitlines()[0][:120]}")
            return []
        if not isinstance(obj, dict):
            self._report_unattributed(file, lineno, f"not a JSON object but {type(obj).__name__}")
            return []
        host = _host_of(obj)
        if host is None:
            self._report_unattributed(file, lineno, "no host (hostIdentifier or hostname)")
            return []
        if self._hosts is not None and not self._hosts(host):
            return []  # another reader's host: it reports and counts this line
        groups: list[tuple[str, Any, str]] = []  # (action, rows, where)
        if "columns" in obj:
            action = obj.get("action")
            if action not in (ADDED, REMOVED, SNAPSHOT):
                self._report(file, lineno, f"action {action!r} is not added, removed or snapshot")
                return []
            groups.append((action, [obj["columns"]], "columns"))
        elif "diffResults" in obj:
            dr = obj["diffResults"]
            if not isinstance(dr, dict):
                self._report(file, lineno, "diffResults is not an object")
                return []
            for action in (ADDED, REMOVED):
                got = dr.get(action, [])
                if not isinstance(got, list):
                    self._report(file, lineno, f"diffResults.{action} is not a list")
                    return []
                groups.append((action, got, f"diffResults.{action}"))
        elif "snapshot" in obj:
            snap = obj["snapshot"]
            if not isinstance(snap, list):
                self._report(file, lineno, "snapshot is not a list")
                return []
            groups.append((SNAPSHOT, snap, "snapshot"))
        else:
            self._report(file, lineno, "no rows (no columns, diffResults or snapshot)")
            return []
        name = obj.get("name")
        name = name if isinstance(name, str) else ""
        unix = _unix_time(obj.get("unixTime"))
        out: list[LogRow] = []
        bad_rows: list[str] = []
        for action, items, where in groups:
            for i, row in enumerate(items):
                st.rows += 1
                if not isinstance(row, dict):
                    bad_rows.append(where if where == "columns" else f"{where}[{i}]")
                    continue
                if action == REMOVED:
                    st.removed += 1
                    continue
                table = recognise(row)
                if events and table is None:
                    st.other_tables += 1
                    continue
                out.append(LogRow(file, lineno, host, name, action, row, table, unix))
        if bad_rows:
            more = f" (+{len(bad_rows) - 3} more)" if len(bad_rows) > 3 else ""
            self._report(file, lineno, f"{', '.join(bad_rows[:3])}{more} not an object")
        if self._last_reads and any(r.table == FILE_EVENTS for r in out):
            # A file event the fast path did not see: no later read may collapse
            # into one before it (it may be a read of the same pid).
            self._last_reads.clear()
        return out

    def _report_unattributed(self, file: str, line: int, reason: str) -> None:
        if self._owns_unattributed:
            self._report(file, line, reason)

    # ----- the line loop -------------------------------------------------
    def _read(
        self,
        path: str,
        events: bool,
        keep_read: Optional[Callable[[str], bool]],
        cut_every: int,
    ) -> Iterator[LogRow]:
        st = self.stats
        file = display_name(path)
        try:
            stream = _open(path)
        except OSError as err:
            if self._owns_unattributed:
                st.unreadable_files += 1
                self._report(file, 0, f"cannot open: {err.strerror or err}")
            return
        owner = self._owns_unattributed
        if owner:
            st.files += 1
        self._last_reads.clear()
        fast = self.fast and events
        collapse = keep_read is not None
        parsed = self._parsed
        hosts = self._hosts
        headers: dict[bytes, tuple[Optional[_Header], bool]] = {}
        hdr = b"\x00"  # the last header seen (never a prefix of a real line)
        hinfo: Optional[_Header] = None
        mine = True
        file_rows = False  # this query run's rows are known to have path and pid
        hlen = 0
        keep_cache: dict[bytes, bool] = {}
        last_reads = self._last_reads
        cut = cut_every if cut_every > 0 and collapse else 1 << 62
        next_cut = cut
        read_prefixes = _READ_PREFIXES
        other_ops = _OTHER_OPERATIONS
        op_key, op_len, eid_key, eid_len = (
            _OPERATION_KEY,
            len(_OPERATION_KEY),
            _EID_KEY,
            len(_EID_KEY),
        )
        suffix_added, added_cut = _SUFFIX_ADDED, len(_SUFFIX_ADDED) - 1
        lineno = 0
        carry = b""
        # read1: a gzip stream cut short raises at the break, and read() would
        # drop what it had decompressed of that call.
        read = getattr(stream, "read1", stream.read)
        try:
            while True:
                try:
                    chunk = read(self.chunk_bytes)
                except (OSError, EOFError, zlib.error) as err:
                    self._report_unattributed(file, lineno + 1, f"read failed: {err}")
                    break
                if chunk:
                    if owner:
                        st.bytes += len(chunk)
                    buf = carry + chunk if carry else chunk
                    limit = buf.rfind(b"\n") + 1
                    carry = buf[limit:]
                elif carry:  # a last line without its newline
                    buf = carry + b"\n"
                    limit = len(buf)
                    carry = b""
                else:
                    break
                find = buf.find
                startswith = buf.startswith
                endswith = buf.endswith
                first = lineno
                n_skipped = n_collapsed = n_other = n_removed = n_fast = 0
                pos = 0
                while pos < limit:
                    a = pos
                    nl = find(b"\n", a)
                    pos = nl + 1
                    lineno += 1
                    if not fast:
                        yield from parsed(buf[a:nl], file, lineno, events)
                        continue
                    if not startswith(hdr, a, nl):
                        ci = find(_COLUMNS_KEY, a, nl)
                        if ci < 0:
                            yield from parsed(buf[a:nl], file, lineno, events)
                            continue
                        hdr = buf[a : ci + len(_COLUMNS_KEY)]
                        hlen = len(hdr)
                        known = headers.get(hdr)
                        if known is None:
                            info = _header(buf[a:ci] + b"}")
                            known = (info, info is None or hosts is None or hosts(info.host))
                            if len(headers) >= _HEADER_CACHE_MAX:
                                headers.clear()
                            headers[hdr] = known
                        hinfo, mine = known
                        file_rows = False
                    if not mine:
                        continue  # another reader's host
                    if hinfo is None:
                        yield from parsed(buf[a:nl], file, lineno, events)
                        continue
                    if endswith(suffix_added, a, nl):
                        e = nl - added_cut
                        action = ADDED
                    elif endswith(_SUFFIX_SNAPSHOT, a, nl):
                        e = nl - len(_SUFFIX_SNAPSHOT) + 1
                        action = SNAPSHOT
                    elif endswith(_SUFFIX_REMOVED, a, nl):
                        n_fast += 1
                        n_removed += 1
                        continue
                    else:
                        yield from parsed(buf[a:nl], file, lineno, events)
                        continue
                    if lineno >= next_cut:
                        last_reads.clear()
                        while lineno >= next_cut:
                            next_cut += cut
                    s = a + hlen - 1
                    o = find(op_key, s, e)
                    if o >= 0:
                        v = o + op_len
                        if not startswith(read_prefixes, v):
                            # Not a read: event_from_row returns None for it, if
                            # recognise() calls it a file event (it has path and pid;
                            # all rows of one query run have the same columns).
                            if not file_rows:
                                q = find(b'"', v, e)
                                file_rows = (
                                    q >= 0
                                    and find(b"\\", v, q) < 0
                                    and (find(b'"path":', v, e) >= 0 or find(b'"path":', s, v) >= 0)
                                    and (find(b'"pid":', v, e) >= 0 or find(b'"pid":', s, v) >= 0)
                                )
                                if not file_rows:
                                    yield from parsed(buf[a:nl], file, lineno, events)
                                    continue
                            elif not startswith(other_ops, v):
                                q = find(b'"', v, e)
                                if q < 0 or find(b"\\", v, q) >= 0:
                                    yield from parsed(buf[a:nl], file, lineno, events)
                                    continue
                            n_fast += 1
                            n_skipped += 1
                            continue
                        pid = b""
                        p = q = -1
                        if collapse:
                            p = find(b'"path":"', v, e)
                            q = find(b'"', p + 8, e) if p >= 0 else -1
                            if q > 0 and buf[q - 1] != 92 and startswith(b',"pid":', q + 1):
                                # The pid keys the dict only; the bytes compared below decide.
                                comma = find(b",", q + 8, e)
                                pid = buf[q + 8 : comma if comma >= 0 else e]
                                prev = last_reads.get(pid)
                                if (
                                    prev is not None
                                    and e - q == len(prev[3])
                                    and startswith(prev[3], q)
                                    and p - v - 4 == len(prev[2])
                                    and startswith(prev[2], v + 4)
                                    and startswith(prev[1], s)
                                    and prev[0] == hdr
                                ):
                                    x = s + len(prev[1])
                                    after_eid = prev[4]
                                    if after_eid is None:
                                        same = x == o
                                    else:
                                        ee = find(b'"', x + eid_len, o)
                                        same = (
                                            ee >= 0
                                            and startswith(eid_key, x)
                                            and ee + len(after_eid) == o
                                            and startswith(after_eid, ee)
                                        )
                                    if same:
                                        path_b = buf[p + 8 : q]
                                        kept = keep_cache.get(path_b)
                                        if kept is None:
                                            kept = _keep(keep_read, path_b)
                                            if len(keep_cache) >= _PATH_CACHE_MAX:
                                                keep_cache.clear()
                                            keep_cache[path_b] = kept
                                        if not kept:
                                            n_fast += 1
                                            n_collapsed += 1
                                            continue
                        try:
                            row = loads(buf[s:e])
                        except ValueError:
                            yield from parsed(buf[a:nl], file, lineno, events)
                            continue
                        if not isinstance(row, dict):
                            yield from parsed(buf[a:nl], file, lineno, events)
                            continue
                        table = FILE_EVENTS if "path" in row and "pid" in row else recognise(row)
                        if collapse and not pid:
                            last_reads.clear()  # a read of an unknown pid: see _parsed
                        elif pid and table == FILE_EVENTS:
                            i = find(eid_key, s, o)
                            j = find(b'"', i + eid_len, o) if i >= 0 else -1
                            if len(last_reads) >= _LAST_READS_MAX:
                                last_reads.clear()
                            if i < 0:
                                last_reads[pid] = (hdr, buf[s:o], buf[v + 4 : p], buf[q:e], None)
                            elif j >= 0:
                                last_reads[pid] = (
                                    hdr, buf[s:i], buf[v + 4 : p], buf[q:e], buf[j:o]
                                )  # fmt: skip
                            else:
                                last_reads.pop(pid, None)
                    else:
                        try:
                            row = loads(buf[s:e])
                        except ValueError:
                            yield from parsed(buf[a:nl], file, lineno, events)
                            continue
                        if not isinstance(row, dict):
                            yield from parsed(buf[a:nl], file, lineno, events)
                            continue
                        table = recognise(row)
                    n_fast += 1
                    if table is None:
                        n_other += 1
                        continue
                    yield LogRow(
                        file, lineno, hinfo.host, hinfo.name, action, row, table, hinfo.unix_time
                    )
                if owner:
                    st.lines += lineno - first
                st.rows += n_fast
                st.skipped += n_skipped
                st.collapsed += n_collapsed
                st.other_tables += n_other
                st.removed += n_removed
                st.fast_lines += n_fast
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


def _keep(keep_read: Optional[Callable[[str], bool]], path: bytes) -> bool:
    """Ask ``keep_read`` about a raw path; a path it cannot see exactly is always kept."""
    if keep_read is None or b"\\" in path:
        return True
    try:
        text = path.decode()
    except UnicodeDecodeError:
        return True
    return keep_read(text)


def read_rows(
    paths: Iterable[str], *, on_bad: Optional[Callable[[BadLine], None]] = None
) -> Iterator[LogRow]:
    """Every ``added``/``snapshot`` row of the logs, fully parsed (see :class:`ResultsReader`)."""
    return ResultsReader(on_bad=on_bad, fast=False).rows(paths)
