"""The embedded engine: DuckDB parses the lines of results logs and narrows them.

Where the data comes from: :func:`readegress.logs.lines.line_batches` cuts the
logs into numbered batches of lines (gzip, stdin, directories; lines that are
not UTF-8 are reported there). Each batch is split into lines by
:meth:`_Scanner.scan` on a pool of threads: with the compiled accelerator
(``readegress._speedups.scan_results``, ``_logscan.c``), a line it can read --
event, batch and snapshot lines of osquery's shape, most of a fleet's log --
comes out as rows ready to store (their fields and event fields: no SQL on
them), and every other line comes out whole; without it (``READEGRESS_PURE=1``,
the ``.ext``), every line comes out whole. DuckDB parses the whole lines itself,
on all cores (``json_extract_string`` with a list of paths parses a line once
for all of them; ``json_type`` once more), and never raises on a line: invalid
JSON, nesting bombs and 12 MB lines come back as NULL under ``try()``
(DuckDB's parser, yyjson, is not recursive), and such a line is reported with
its number and counted like every other bad line. The scanner hands on to
DuckDB every line it is not sure DuckDB would read as it does, so DuckDB
stays the reference (the tests compare the two paths line by line).

Why not ``read_json``: it rejects a whole file for one bad line, or with
``ignore_errors`` drops bad lines without saying which, and it gives no line
numbers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import sys
import tempfile
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate
from typing import Any, Optional

from readegress import speedups
from readegress.fleet.sql import (
    CHEAP_VIEWS,
    COLUMN_KEYS,
    DUCKDB,
    EVENT_KEYS,
    PACKED,
    PROJECT_GROUPS,
    PROJECT_TABLES,
    RECOGNITION_KEYS,
    TOP_KEYS,
    derived_sql,
    rows_sql,
)
from readegress.logs.lines import LineBatch, LineStats, Progress, line_batches
from readegress.logs.results import BadLine

#: DuckDB reads and parses a vector of 2,048 rows at a time (JSON into an arena several
#: times the text's size): lines up to BIG_LINE bytes are parsed (and their row arrays
#: exploded) all in one statement; longer ones apart, in groups of at most GROUP_BYTES,
#: so that no statement goes past the memory limit (40 snapshot lines of 10 MB did).
BIG_LINE = 8 << 10
GROUP_BYTES = 16 << 20
#: Line batches being scanned, per scan thread, ahead of the one DuckDB stores: with
#: one each, the threads often waited on each other (1 GB log: 1.56 -> 1.50 s with 3,
#: ~6 MB of text and rows each).
SCAN_AHEAD = 3
#: Tables that are not every row of the logs are held in memory (TEMP tables: DuckDB
#: does not compress them, and spills them to disk past its memory limit), which
#: writes them about three times faster: the narrowing's (0.41 -> 0.33 s on a 1 GB
#: log), the bad lines, the hosts; and the rows in arrays (batch and snapshot lines)
#: while those lines' JSON is under this many bytes (0.20 -> 0.08 s for 20k rows);
#: past it, they are stored compressed like ``lines``.
ARRAYS_IN_MEMORY = 64 << 20

#: json_type paths: the line, its row containers and host fields.
TYPE_PATHS = (
    "$", "$.columns", "$.diffResults", "$.snapshot", "$.diffResults.added",
    "$.diffResults.removed", "$.hostIdentifier", "$.hostname",
)  # fmt: skip


#: glibc's mallopt parameters, and what the line pass sets them to (_keep_freed_memory).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_TUNING = (
    (_M_MMAP_THRESHOLD, 32 << 20),
    (_M_TRIM_THRESHOLD, 256 << 20),
    (_M_TOP_PAD, 64 << 20),
)


def _keep_freed_memory() -> None:
    """Have malloc keep what a line batch frees for the next (glibc; else nothing).

    Each scan thread allocates and frees a few MB a batch (the batch, the scanner's
    buffers, its output); glibc handed the freed top of each heap back to the kernel
    and took it again page by page: ~60k of the 140k page faults of a 1 GB log's line
    pass (load 1.36 -> 1.28 s, 0.35 -> 0.25 s of system time). Buffers under 32 MB
    come from the heaps, which keep 64 MB spare and give back only past 256 MB free
    (a smaller pad measured worse than the defaults: setting any of these turns off
    glibc's own adjusting). The process is a batch run: its peak RSS grew ~25 MB.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    for param, value in _MALLOC_TUNING:
        mallopt(param, value)


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _arrow_column(pa: Any, sql_type: str, values: Sequence[Any]) -> Any:
    """Python values (None: NULL) as an Arrow array of ``sql_type`` (VARCHAR, BOOLEAN, BIGINT).

    Built from its buffers, not with ``pa.array``: that imports pandas, when it is
    installed, to check its argument (0.15 s of a 1 GB replay's 4.3).
    """
    n = len(values)
    valid = bytearray((n + 7) // 8)
    bits = bytearray((n + 7) // 8)
    for i, v in enumerate(values):
        if v is not None:
            valid[i >> 3] |= 1 << (i & 7)
            if v is True:
                bits[i >> 3] |= 1 << (i & 7)
    validity = pa.py_buffer(bytes(valid))
    if sql_type == "BOOLEAN":
        return pa.Array.from_buffers(pa.bool_(), n, [validity, pa.py_buffer(bytes(bits))])
    if sql_type == "BIGINT":
        data = array("q", (0 if v is None else v for v in values))
        return pa.Array.from_buffers(pa.int64(), n, [validity, pa.py_buffer(data)])
    if sql_type != "VARCHAR":
        raise ValueError(f"no Arrow column for SQL type {sql_type}")
    text = [b"" if v is None else str(v).encode() for v in values]
    offsets = array("q", accumulate(map(len, text), initial=0))
    return pa.Array.from_buffers(
        pa.large_string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(text))]
    )


def _json_path(key: str) -> str:
    return "$." + key if key.isidentifier() else '$."' + key.replace('"', '\\"') + '"'


def _path_list(prefix: str, keys: Sequence[str]) -> str:
    return "[" + ", ".join(_lit(prefix + _json_path(k)[1:]) for k in keys) + "]"


class DuckDBEngine:
    """One in-memory DuckDB database holding one run's tables."""

    name = "duckdb"

    def __init__(
        self,
        *,
        threads: Optional[int] = None,
        memory_limit: str = "600MB",
        compiled: bool = True,
    ) -> None:
        """``compiled=False``: every line whole to DuckDB, even with the accelerator."""
        import duckdb

        self.compiled = compiled
        # A database file in a private temp dir rather than :memory:: DuckDB
        # compresses what it stores there and can evict it, so a 1 GB log does
        # not have to fit in memory_limit. Removed on close.
        self._dir = tempfile.mkdtemp(prefix="readegress-fleet-")
        self.con = duckdb.connect(os.path.join(self._dir, "run.duckdb"))
        self.con.execute(f"SET temp_directory = {_lit(os.path.join(self._dir, 'spill'))}")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.con.execute(f"SET memory_limit = {_lit(memory_limit)}")
        #: The scanned rows' packed columns (pipeline.FEED_WITH_POS), by ``pos``.
        self.payloads: Optional[_Payloads] = None
        self.con.execute("SET preserve_insertion_order = false")
        # DuckDB draws a progress bar on stdout for statements over 2 s: on a
        # large log it landed in replay's JSON lines.
        self.con.execute("SET enable_progress_bar = false")
        # The database is removed on close: no checkpoint written into it, then or
        # during the run (each group of long lines added to ``lines`` took the log
        # past the 16 MB that starts one: a 137 MB log in batch format spent 1.3 s
        # of its 5.4 s load in them).
        self.con.execute("PRAGMA disable_checkpoint_on_shutdown")
        self.con.execute("SET wal_autocheckpoint = '1TB'")

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # ----- the Engine interface used by readegress.fleet.pipeline --------
    def create(self, name: str, select: str) -> None:
        # The narrowing's tables hold a fraction of the event rows: in memory (TEMP).
        kind = "VIEW" if name in CHEAP_VIEWS else "TEMP TABLE"
        self.con.execute(f"CREATE OR REPLACE {kind} {name} AS {select}")

    @staticmethod
    def _explode_sql(table: str, deco_names: str) -> str:
        """One row per element of the row arrays of ``table``'s kept lines (``lines``' columns)."""
        arrays = f"FROM {table} WHERE bad IS NULL AND keep IS NOT NULL AND tbl IS NULL"
        # Only what the rows need: unnest repeats every other column once per row.
        cols = f"file, line, host, unix_time{deco_names}"
        # A line that is not bad has diffResults absent or an object, and its
        # arrays are lists: an absent or empty one unnests to no row.
        return f"""
            SELECT file, line, idx, host, unix_time, act, r,
              try(json_type(r)) AS rty{deco_names}
            FROM (
              SELECT * EXCLUDE (l), unnest(l) AS r, unnest(generate_series(1, len(l))) AS idx
              FROM (
                SELECT {cols}, 'added' AS act, json_extract(keep, '$.diffResults.added[*]') AS l
                {arrays}
                UNION ALL
                SELECT {cols}, 'removed' AS act,
                  json_extract(keep, '$.diffResults.removed[*]') AS l
                {arrays}
                UNION ALL
                SELECT {cols}, 'snapshot' AS act,
                  CASE WHEN json_type(keep, '$.diffResults') IS NULL
                    THEN json_extract(keep, '$.snapshot[*]') END AS l
                {arrays}
              ) s
            ) u"""

    def fetch(self, select: str) -> list[tuple[Any, ...]]:
        rel = self.con.sql(select)
        if all(str(t) in _ARROW_EXACT for t in rel.types):
            # By Arrow, a column at a time into Python objects, in C: about twice as
            # fast as fetchall's value at a time (111k rows fed on a 1 GB log:
            # 0.21 -> 0.12 s). Only for types it gives as fetchall does (a HUGEINT,
            # what sum() of integers is, would come as a Decimal).
            columns = [c.to_pylist() for c in rel.to_arrow_table().columns]
            return list(zip(*columns))
        return rel.fetchall()

    def register(
        self, name: str, columns: Sequence[tuple[str, str]], rows: list[tuple[Any, ...]]
    ) -> None:
        cols = ", ".join(f"{c} {t}" for c, t in columns)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} ({cols})")
        if rows:
            import pyarrow as pa

            arrays = [
                _arrow_column(pa, t, [r[i] for r in rows]) for i, (_, t) in enumerate(columns)
            ]
            self.con.register("_reg", pa.Table.from_arrays(arrays, names=[c for c, _ in columns]))
            self.con.execute(f"INSERT INTO {name} SELECT * FROM _reg")
            self.con.unregister("_reg")

    # ----- loading ------------------------------------------------------
    def load(
        self,
        paths: list[str],
        on_bad: Callable[[BadLine], None],
        stats: LineStats,
        *,
        decoration_keys: Sequence[str] = (),
        progress: Optional[Progress] = None,
    ) -> None:
        """Parse the logs into ``ev`` (event rows), ``proj``, ``hostinfo`` and ``bad``.

        One pass over the lines stores what the scanner gives (``stage``: the
        rows of the lines it read, and the other lines whole); the whole lines
        are then parsed into ``lines_raw`` (one row a line: its fields, event
        fields and ``kind``) and the rows of their arrays (batch and snapshot
        lines, kept raw) exploded into ``arows_raw``. ``lines`` and ``arows``
        are views over both; ``rows`` and ``ev`` over those.
        """
        import pyarrow as pa

        _keep_freed_memory()
        deco = list(decoration_keys)
        deco_names = "".join(f", d_{i}" for i in range(len(deco)))
        scanner = _Scanner(pa, deco, speedups.native if self.compiled else None)
        big_lines = _BigLines(self._dir)

        def batches() -> Iterator[pa.RecordBatch]:
            # Batches are split on a pool of threads (the scanner lets go of the
            # GIL), a few ahead of DuckDB, which pulls them from this generator.
            # The compiled scanner takes long lines as well (it sets apart those it
            # leaves whole); without it, they are set apart as they are read.
            workers = os.cpu_count() or 1
            big_bytes = None if scanner.native is not None else BIG_LINE
            with ThreadPoolExecutor(workers, thread_name_prefix="readegress-scan") as pool:
                ahead: deque[Future[_Scanned]] = deque()

                def done() -> Iterator[pa.RecordBatch]:
                    got, big, packed = ahead.popleft().result()
                    for line in big:
                        big_lines.add(line)
                    payloads.add(packed)  # in submission order: chunk numbers hold
                    yield from got

                for b in line_batches(
                    paths, on_bad, stats, progress=progress, big_line_bytes=big_bytes
                ):
                    if b.big:
                        big_lines.add(b)
                        continue
                    ahead.append(pool.submit(scanner.scan, b, len(payloads) + len(ahead)))
                    if len(ahead) > SCAN_AHEAD * workers:
                        yield from done()
                while ahead:
                    yield from done()

        n = len(scanner.paths)
        x = [f"x_{i + 1}" for i in range(n)]
        n_top = len(TOP_KEYS) + 2 * len(deco)
        top = dict(zip(TOP_KEYS, x))  # then the decorations: nested, at the top level
        paths_sql = "[" + ", ".join(_lit(_scan_json_path(*p)) for p in scanner.str_paths) + "]"
        type_paths = "[" + ", ".join(_lit(p) for p in TYPE_PATHS) + "]"
        cv = {k: x[n_top + i] for i, k in enumerate(COLUMN_KEYS)}
        host = (
            f"CASE WHEN ty[7] = 'VARCHAR' AND {x[0]} <> '' THEN {x[0]}"
            f" WHEN ty[8] = 'VARCHAR' AND {x[1]} <> '' THEN {x[1]} END"
        )
        decos = "".join(
            f", COALESCE({x[len(top) + i]}, {x[len(top) + len(deco) + i]}) AS d_{i}"
            for i in range(len(deco))
        )
        fields = ", ".join(f"{cv[k]} AS c_{k}" for k in COLUMN_KEYS)
        values = ", ".join(f"v[{i + 1}] AS {x[i]}" for i in range(n))

        def line_rows(source: str) -> str:
            """Every whole line (``raw`` set) of ``source`` as a row of ``lines``."""
            # One parse for every field (try(): a line that is not JSON is NULL, never
            # an error) and a second for the JSON types only where the fields cannot
            # prove them (see _plain_event_line). A blank line (spaces only) is
            # skipped: it is never JSON, and ltrim stops at the first other
            # character. The raw line is kept only when its rows sit in arrays
            # (batch/snapshot) or belong to the project's tables.
            per_line = f"""
              SELECT file, line, 0 AS idx, {host} AS host, {_bad_sql(host, top["action"])} AS bad,
                {top["unixTime"]} AS unix_time, {top["action"]} AS action, {fields}{decos},
                CASE WHEN ty[1] = 'OBJECT' AND ty[2] IS NULL
                          AND (ty[3] IS NOT NULL OR ty[4] IS NOT NULL) THEN raw
                     WHEN ty[2] = 'OBJECT' AND ({_project_test(cv)})
                       THEN CAST(json_extract(raw, '$.columns') AS VARCHAR)
                END AS keep, CAST(NULL AS BIGINT) AS pos
              FROM (
                SELECT *,
                  CASE WHEN {_plain_event_line(x[0], cv)} THEN {_PLAIN_TYPES}
                       ELSE try(json_type(raw, {type_paths})) END AS ty
                FROM (
                  SELECT file, line, raw, {values}
                  FROM (
                    SELECT file, line, raw, try(json_extract_string(raw, {paths_sql})) AS v
                    FROM {source} WHERE raw IS NOT NULL AND raw <> '' AND ltrim(raw) <> ''
                  ) s
                ) a
              ) b"""
            return _event_rows(per_line)

        compiled = scanner.native is not None
        payloads = _Payloads()
        self.payloads = payloads if compiled else None
        self.con.register("stream", pa.RecordBatchReader.from_batches(scanner.schema, batches()))
        if compiled:
            # The scanned lines come as lines' rows (fields and event fields): stored
            # as they come, with no SQL (a 1 GB log's line pass: 1.9-2.0 -> 1.6-1.7 s
            # in the same runs); the whole lines among them are parsed from there.
            # Stored compressed: in memory (a TEMP table) it is written faster, but it
            # held about half the log's size (sparse string columns: past the memory
            # limit for logs over 1 GB), and the narrowing's joins ran slower on it
            # (the same 1 GB replay: -0.07 s only). The packed columns stay out of it
            # (_Payloads).
            columns = ", ".join(f"{f.name} {_SQL_TYPES[str(f.type)]}" for f in scanner.schema)
            self.con.execute(f"CREATE OR REPLACE TABLE stage ({columns})")
            self.con.execute("INSERT INTO stage SELECT * FROM stream")
            self.con.unregister("stream")
            self.con.execute(f"CREATE OR REPLACE TABLE lines_raw AS {line_rows('stage')}")
            # A scanned row is a line's (idx 0) or, in batch and snapshot lines, an
            # element's of its arrays (idx from 1: a row of arows).
            # (a packed column is NULL here: the feed reads it from the payload)
            f = [
                f"f_{j + 1}" if j is not None else "CAST(NULL AS VARCHAR)" if o == 2 else None
                for j, (_, _, o) in zip(scanner.field_of, scanner.paths)
            ]
            n_deco = len(deco)
            ftop = dict(zip(TOP_KEYS, f))
            scanned = ", ".join(
                ["file", "line", "{idx}", f"{ftop['hostIdentifier']} AS host"]
                + ["CAST(NULL AS VARCHAR) AS bad"]
                + [f"{ftop['unixTime']} AS unix_time", f"{ftop['action']} AS action"]
                + [f"{f[n_top + COLUMN_KEYS.index(k)]} AS c_{k}" for k in EVENT_KEYS]
                + [
                    f"COALESCE({f[len(ftop) + i]}, {f[len(ftop) + n_deco + i]}) AS d_{i}"
                    for i in range(n_deco)
                ]
                + [name for name, _ in _SCANNED_DERIVED if name != "idx"]
                + ["pos"]
            )
            self.con.execute(
                f"""CREATE OR REPLACE VIEW lines AS
                SELECT {scanned.format(idx="0 AS idx")} FROM stage WHERE raw IS NULL AND idx = 0
                UNION ALL BY NAME SELECT * FROM lines_raw"""
            )
            scanned_arows = (
                f"SELECT {scanned.format(idx='idx')} FROM stage WHERE raw IS NULL AND idx > 0"
            )
        else:
            self.con.execute(f"CREATE OR REPLACE TABLE lines_raw AS {line_rows('stream')}")
            self.con.unregister("stream")
            self.con.execute("CREATE OR REPLACE VIEW lines AS SELECT * FROM lines_raw")
            scanned_arows = None
        # Rows in arrays (batch and snapshot formats), one row each, numbered in the
        # line: in memory when their lines are small (see ARRAYS_IN_MEMORY).
        got = self.con.execute(
            "SELECT COALESCE(sum(length(keep)), 0) FROM lines_raw"
            " WHERE bad IS NULL AND keep IS NOT NULL AND tbl IS NULL"
        ).fetchone()
        array_bytes = (got[0] if got is not None else 0) + big_lines.size
        arrays = "TEMP TABLE" if array_bytes < ARRAYS_IN_MEMORY else "TABLE"
        self.con.execute(
            f"CREATE OR REPLACE {arrays} exploded AS {self._explode_sql('lines_raw', deco_names)}"
        )
        # The long whole lines, set apart in the pass, a group at a time: parsed into
        # a table of their own, their arrays exploded from it, then their rows added
        # to ``lines_raw`` with '' for the kept JSON of the arrays (a scan of a column
        # reads 2,048 rows' values at once: 40 snapshot lines of 10 MB each kept in
        # ``lines`` took DuckDB past its memory limit; '' still marks a line whose
        # rows are in ``arows``, not a row itself).
        for group in big_lines.groups():
            whole = [scanner.whole(b) for b in group]
            self.con.register("stream", pa.Table.from_batches(whole, scanner.schema))
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE big AS {line_rows('stream')}")
            self.con.unregister("stream")
            self.con.execute(f"INSERT INTO exploded {self._explode_sql('big', deco_names)}")
            self.con.execute(
                "INSERT INTO lines_raw SELECT * REPLACE"
                " (CASE WHEN keep IS NOT NULL AND tbl IS NULL THEN '' ELSE keep END AS keep)"
                " FROM big"
            )
            self.con.execute("DROP TABLE big")
        big_lines.close()
        arow_fields = ", ".join(f"v[{i + 1}] AS c_{k}" for i, k in enumerate(COLUMN_KEYS))
        arow_select = f"""
            SELECT file, line, idx, host, CAST(NULL AS VARCHAR) AS bad, unix_time,
              act AS action, {arow_fields}{deco_names}, CAST(r AS VARCHAR) AS keep,
              CAST(NULL AS BIGINT) AS pos
            FROM (SELECT *, json_extract_string(r, {_path_list("$", COLUMN_KEYS)}) AS v
                  FROM exploded WHERE rty = 'OBJECT') x"""
        # A row's JSON is kept for the project's tables only (proj reads it).
        projects = ", ".join(_lit(t) for t in PROJECT_TABLES)
        self.con.execute(
            f"""CREATE OR REPLACE {arrays} arows_raw AS
            SELECT * REPLACE (CASE WHEN tbl IN ({projects}) THEN keep END AS keep)
            FROM ({_event_rows(arow_select)}) a"""
        )
        arows = "SELECT * FROM arows_raw"
        if scanned_arows is not None:
            arows = f"{scanned_arows} UNION ALL BY NAME {arows}"
        self.con.execute(f"CREATE OR REPLACE VIEW arows AS {arows}")
        keep_cols = ["file", "line", "idx", "host", "bad", "unix_time", "action"]
        keep_cols += ["pos"]
        keep_cols += [f"c_{k}" for k in EVENT_KEYS] + [f"d_{i}" for i in range(len(deco))]
        self.con.execute(f"CREATE OR REPLACE VIEW rows AS {rows_sql(keep_cols)}")
        self.con.execute(
            """CREATE OR REPLACE VIEW ev AS
            SELECT * FROM rows WHERE kind IS NOT NULL AND action IN ('added', 'snapshot')"""
        )
        # proj and hostinfo are views: only the report reads them, once (a replay
        # never does: 0.1 s of a 1 GB log's).
        self.con.execute(
            """CREATE OR REPLACE VIEW proj AS
            SELECT file, line, idx, host, unix_time, tbl, keep AS cols FROM rows
            WHERE action IN ('added', 'snapshot')
              AND tbl IN ('read_then_egress', 'readegress_health', 'process_net_bytes',
                          'socket_bytes')"""
        )
        deco_agg = "".join(f", max(d_{i}) AS d_{i}" for i in range(len(deco)))
        self.con.execute(
            f"""CREATE OR REPLACE VIEW hostinfo AS
            SELECT host, count(*) AS row_count,
              sum(CASE WHEN tbl IN ('file', 'socket', 'process') THEN 1 ELSE 0 END) AS event_rows,
              list(DISTINCT TRY_CAST(unix_time AS BIGINT)) AS run_times{deco_agg}
            FROM rows GROUP BY host"""
        )
        self.con.execute(
            """CREATE OR REPLACE TEMP TABLE bad AS
            SELECT file, line, bad AS reason FROM lines WHERE bad IS NOT NULL
            UNION ALL
            SELECT file, line, string_agg(CASE WHEN act = 'snapshot' THEN 'snapshot'
                ELSE 'diffResults.' || act END || '[' || CAST(idx - 1 AS VARCHAR) || ']', ', '
                ORDER BY act, idx) || ' not an object'
            FROM exploded WHERE rty IS NULL OR rty <> 'OBJECT' GROUP BY file, line"""
        )
        got = self.con.execute(
            """SELECT (SELECT count(*) FROM lines), (SELECT count(*) FROM rows),
                 (SELECT count(*) FROM rows WHERE action = 'removed'), (SELECT count(*) FROM ev)"""
        ).fetchone()
        self.counts = tuple(got) if got is not None else (0, 0, 0, 0)
        self.con.execute("DROP TABLE exploded")


#: The SQL type of each Arrow type of the scanner's schema.
_SQL_TYPES = {
    "int32": "INTEGER", "int64": "BIGINT", "string": "VARCHAR", "large_string": "VARCHAR",
    "bool": "BOOLEAN",
}  # fmt: skip

#: DuckDB types that come out of Arrow as the same Python values as out of fetchall.
_ARROW_EXACT = frozenset({"VARCHAR", "BIGINT", "INTEGER", "BOOLEAN", "DOUBLE"})

#: Columns that only recognise the project's tables: dropped once ``tbl`` is known.
_RECOGNITION_ONLY = ", ".join(f"c_{k}" for k in RECOGNITION_KEYS)


def _event_rows(inner: str) -> str:
    """The rows of ``inner`` as ``lines`` and ``arows`` store them: table, event fields."""
    return f"SELECT * EXCLUDE ({_RECOGNITION_ONLY}) FROM ({derived_sql(DUCKDB, inner)})"


#: The JSON types (TYPE_PATHS) of a line _plain_event_line proves: an object whose
#: columns are an object and whose hostIdentifier is a string. The others do not
#: matter then: _bad_sql, the host and the kept JSON look at diffResults,
#: snapshot and hostname only when there are no columns or no hostIdentifier.
_PLAIN_TYPES = "['OBJECT', 'OBJECT', NULL, NULL, NULL, NULL, 'VARCHAR', NULL]"


def _plain_event_line(host: str, cv: dict[str, str]) -> str:
    """SQL: do the fields alone (``host``: ``$.hostIdentifier``) prove the types ``_PLAIN_TYPES``?

    ``$.hostIdentifier`` found means the line is an object, and ``$.columns.pid``
    found that columns is one. json_extract_string gives a number, true or
    false as its text and an object or array as its JSON, so the host was a
    JSON string unless its text reads as one of those (then, as for every other
    line, json_type tells).
    """
    return (
        f"({host} <> '' AND NOT regexp_full_match({host}, '[-+0-9.eE]*|true|false|[\\[{{].*')"
        f" AND {cv['pid']} IS NOT NULL)"
    )


def _bad_sql(host: str, action: str) -> str:
    """Why a line (types ``ty``; ``host`` and ``action`` its fields) is bad, or NULL: the
    results reader's reasons."""
    return f"""CASE
        WHEN ty IS NULL THEN 'not JSON'
        WHEN ty[1] <> 'OBJECT' THEN 'not a JSON object but ' || lower(ty[1])
        WHEN {host} IS NULL THEN 'no host (hostIdentifier or hostname)'
        WHEN ty[2] IS NOT NULL
          AND COALESCE({action}, '') NOT IN ('added', 'removed', 'snapshot')
          THEN 'action ' || COALESCE('''' || {action} || '''', 'None')
            || ' is not added, removed or snapshot'
        WHEN ty[2] IS NOT NULL AND ty[2] <> 'OBJECT' THEN 'columns not an object'
        WHEN ty[2] IS NULL AND ty[3] IS NOT NULL AND ty[3] <> 'OBJECT'
          THEN 'diffResults is not an object'
        WHEN ty[2] IS NULL AND ty[3] IS NOT NULL AND ty[5] IS NOT NULL AND ty[5] <> 'ARRAY'
          THEN 'diffResults.added is not a list'
        WHEN ty[2] IS NULL AND ty[3] IS NOT NULL AND ty[6] IS NOT NULL AND ty[6] <> 'ARRAY'
          THEN 'diffResults.removed is not a list'
        WHEN ty[2] IS NULL AND ty[3] IS NULL AND ty[4] IS NOT NULL AND ty[4] <> 'ARRAY'
          THEN 'snapshot is not a list'
        WHEN ty[2] IS NULL AND ty[3] IS NULL AND ty[4] IS NULL
          THEN 'no rows (no columns, diffResults or snapshot)'
      END"""


def _project_test(cv: dict[str, str]) -> str:
    """SQL: do the extracted columns (``cv``: key -> expression) name a project table?"""

    return " OR ".join(
        "(" + " AND ".join(f"{cv[k]} IS NOT NULL" for k in group) + ")" for group in PROJECT_GROUPS
    )


class _BigLines:
    """The lines over BIG_LINE of a pass, spilled to a file and read back in groups."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "big-lines")
        self.file: Optional[Any] = None
        self.index: list[tuple[int, int, int, int]] = []  # file, line, offset, size
        self.size = 0

    def add(self, b: LineBatch) -> None:
        if self.file is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            self.file = os.fdopen(fd, "w+b")
        self.file.write(b.data)  # a view of the chunk read: written, not copied first
        n = len(b.data)
        self.index.append((b.file_index, b.first_line, self.size, n))
        self.size += n

    def groups(self) -> Iterator[list[LineBatch]]:
        """Consecutive lines, at most GROUP_BYTES a group (a longer line alone)."""
        if self.file is None:
            return
        self.file.flush()
        group: list[LineBatch] = []
        size = 0
        for file_index, line, offset, n in self.index:
            self.file.seek(offset)
            group.append(LineBatch(file_index, line, self.file.read(n), 1, True))
            size += n
            if size >= GROUP_BYTES:
                yield group
                group, size = [], 0
        if group:
            yield group

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            os.unlink(self.path)
            self.file = None


#: The columns whose values the compiled scanner computes a fast row's event fields
#: from (``derive_row`` in ``_logscan.c``, in this order, after the line's action).
DERIVE_INPUTS = (
    "operation", "pid", "ppid", "time", "path", "action", "remote_address", "remote_port",
    "status", "success", "family", "cmdline", "parent", "syscall",
)  # fmt: skip
#: The event fields of a fast row (sql.DERIVED, and its table) and their Arrow types.
_SCANNED_DERIVED = (
    ("tbl", "string"), ("kind", "string"), ("keep", "string"), ("t", "int64"),
    ("epid", "int64"), ("eppid", "int64"), ("idx", "int64"), ("sure", "bool_"),
    ("odd", "bool_"),
)  # fmt: skip

#: Scopes of the scanner's paths: a top-level key, a key of ``decorations``, of ``columns``.
_TOP, _DECO, _COLS = 0, 1, 2
_SCOPE_PREFIX = {_TOP: "$", _DECO: "$.decorations", _COLS: "$.columns"}


#: A scanned row's ``pos``: its chunk (line batch) number, shifted, plus its row in it.
_CHUNK_SHIFT = 32

#: What _Scanner.scan gives: record batches, long whole lines, packed payloads.
_Scanned = tuple[list[Any], list[LineBatch], Optional[tuple[bytes, bytes]]]


class _Payloads:
    """The payloads of the scanned rows (PACKED columns in one string), by ``pos``.

    Held in memory as the scanner made them, one chunk a line batch (offsets
    into text), not stored in DuckDB: only the feed reads them, for the few rows
    it feeds, and storing them was ~0.13 s of a 1 GB log's 1.7-s line pass. A
    forked feed reads them as its parent's memory.
    """

    def __init__(self) -> None:
        self._chunks: list[Optional[tuple[memoryview, bytes]]] = []

    def __len__(self) -> int:
        return len(self._chunks)

    def add(self, packed: Optional[tuple[bytes, bytes]]) -> None:
        """The next chunk's (int32 offsets, text); None: no scanned row."""
        if packed is None:
            self._chunks.append(None)
        else:
            offsets, text = packed
            self._chunks.append((memoryview(offsets).cast("i"), text))

    def __call__(self, pos: int) -> str:
        """The payload of the row at ``pos``."""
        chunk = self._chunks[pos >> _CHUNK_SHIFT]
        if chunk is None:
            raise KeyError(pos)
        offsets, text = chunk
        row = pos & ((1 << _CHUNK_SHIFT) - 1)
        return text[offsets[row] : offsets[row + 1]].decode()

    def table(self, pa: Any) -> Any:
        """Every payload as an Arrow table ``(pos, payload)``: for SQL (the tests)."""
        batches = []
        for chunk, got in enumerate(self._chunks):
            if got is None:
                continue
            offsets, text = got
            n = len(offsets) - 1
            first = chunk << _CHUNK_SHIFT
            pos = pa.py_buffer(array("q", range(first, first + n)))
            batches.append(
                pa.record_batch(
                    [
                        pa.Array.from_buffers(pa.int64(), n, [None, pos]),
                        pa.Array.from_buffers(
                            pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text)]
                        ),
                    ],
                    names=["pos", "payload"],
                )
            )
        schema = pa.schema([("pos", pa.int64()), ("payload", pa.string())])
        return pa.Table.from_batches(batches, schema)


def _scan_json_path(scope: int, key: str) -> str:
    return _SCOPE_PREFIX[scope] + _json_path(key)[1:]


class _Scanner:
    """Batches of lines → Arrow record batches of ``file, line, raw, f_1 .. f_N``,
    ``pos`` and the event fields (_SCANNED_DERIVED).

    The paths, in the order of ``x_1 .. x_N`` in the line pass: TOP_KEYS, the
    decorations nested, the decorations at the top level, COLUMN_KEYS. A row
    has either its fields (``raw`` NULL: the compiled scanner read it) or its
    ``raw`` line (fields NULL), which DuckDB parses.

    Not every path is a field: ``hostname`` only stands in for an empty
    ``hostIdentifier`` (never, on a scanned line) and RECOGNITION_KEYS only
    recognise rows of the project's tables (``groups``); they are NULL on a
    scanned line (``field_of``: each path's field number, or None). The
    columns only the feed reads (PACKED, in that order) come in one string a
    row, its payload, which is not in the batch: :meth:`scan` hands it back
    apart, to be held in a :class:`_Payloads` and found by the row's ``pos``.
    Fewer columns, less for DuckDB to store.
    """

    def __init__(self, pa: Any, deco: Sequence[str], native: Optional[Any]) -> None:
        self.pa = pa
        self.str_paths: list[tuple[int, str]] = (
            [(_TOP, k) for k in TOP_KEYS]
            + [(_DECO, k) for k in deco]
            + [(_TOP, k) for k in deco]
            + [(_COLS, k) for k in COLUMN_KEYS]
        )
        # (by position: "hostname" may be a decoration at the top level too, a field)
        first_col = len(self.str_paths) - len(COLUMN_KEYS)
        skip = {TOP_KEYS.index("hostname")} | {
            first_col + COLUMN_KEYS.index(k) for k in RECOGNITION_KEYS
        }
        packed = {first_col + COLUMN_KEYS.index(k) for k in PACKED}
        outputs = [0 if i in skip else 2 if i in packed else 1 for i in range(len(self.str_paths))]
        self.paths = tuple((sc, k.encode(), out) for (sc, k), out in zip(self.str_paths, outputs))
        fields = iter(range(len(self.paths)))
        self.field_of: list[Optional[int]] = [next(fields) if o == 1 else None for o in outputs]
        self.n_fields = outputs.count(1)
        # The values the compiled scanner computes a fast row's event fields from.
        self.derive = (
            (TOP_KEYS.index("action"), *(first_col + COLUMN_KEYS.index(k) for k in DERIVE_INPUTS)),
            tuple(t.encode() for t in PROJECT_TABLES),  # PROJECT_GROUPS' tables
        )
        self.groups = tuple(
            tuple(first_col + COLUMN_KEYS.index(k) for k in g) for g in PROJECT_GROUPS
        )
        self.schema = pa.schema(
            [("file", pa.int32()), ("line", pa.int64()), ("raw", pa.large_string())]
            + [(f"f_{i + 1}", pa.string()) for i in range(self.n_fields)]
            + [("pos", pa.int64())]
            + [(name, getattr(pa, t)()) for name, t in _SCANNED_DERIVED]
        )
        # The compiled scanner takes at most 256 paths (many decoration keys: whole lines).
        self.native = native if len(self.paths) <= 256 else None
        self._numbers = b""  # 0, 1, 2, ... as int64s, grown as needed (_positions)

    def scan(self, b: LineBatch, chunk: int) -> _Scanned:
        """The batch's record batches, its whole lines over BIG_LINE (set apart), and the
        payloads of its scanned rows (offsets, text), which are chunk ``chunk``."""
        pa = self.pa
        if self.native is None:
            return [self.whole(b)], [], None
        n_fast, fast_lines, fields, n_slow, slow_lines, slow_offsets, slow_data, derived = (
            self.native.scan_results(b.data, b.first_line, self.paths, self.groups, 0, self.derive)
        )
        out = []
        tbl, kind, t, epid, eppid, sure, odd, idx, keep, payload = derived
        if n_fast:
            buf = pa.py_buffer
            pos = self._positions(chunk, n_fast)
            out.append(
                pa.record_batch(
                    [
                        self._file_column(b.file_index, n_fast),
                        pa.Array.from_buffers(pa.int64(), n_fast, [None, pa.py_buffer(fast_lines)]),
                        pa.nulls(n_fast, pa.large_string()),
                    ]
                    + [
                        pa.Array.from_buffers(
                            pa.string(), n_fast, [pa.py_buffer(v), pa.py_buffer(o), pa.py_buffer(d)]
                        )
                        for v, o, d in fields
                    ]
                    + [pa.Array.from_buffers(pa.int64(), n_fast, [None, buf(pos)])]
                    + [
                        pa.Array.from_buffers(pa.string(), n_fast, [buf(v), buf(o), buf(d)])
                        for v, o, d in (tbl, kind, keep)
                    ]
                    + [
                        pa.Array.from_buffers(pa.int64(), n_fast, [buf(v), buf(d)])
                        for v, d in (t, epid, eppid)
                    ]
                    + [pa.Array.from_buffers(pa.int64(), n_fast, [None, buf(idx)])]
                    + [
                        pa.Array.from_buffers(pa.bool_(), n_fast, [buf(sure[0]), buf(sure[1])]),
                        pa.Array.from_buffers(pa.bool_(), n_fast, [None, buf(odd)]),
                    ],
                    schema=self.schema,
                )
            )
        big: list[LineBatch] = []
        if n_slow:
            text = [None, pa.py_buffer(slow_offsets), pa.py_buffer(slow_data)]
            raw = pa.Array.from_buffers(pa.large_string(), n_slow, text)
            lines = pa.Array.from_buffers(pa.int64(), n_slow, [None, pa.py_buffer(slow_lines)])
            if len(slow_data) > BIG_LINE:
                # Long whole lines are parsed apart, a group at a time (see load).
                import pyarrow.compute as pc

                long = pc.greater(pc.binary_length(raw), BIG_LINE)
                if pc.any(long).as_py():
                    for n, line in zip(pc.filter(lines, long), pc.filter(raw, long)):
                        text = line.as_buffer().to_pybytes()
                        big.append(LineBatch(b.file_index, n.as_py(), text, 1, True))
                    short = pc.invert(long)
                    raw, lines = pc.filter(raw, short), pc.filter(lines, short)
            if len(raw):
                out.append(self._batch(b.file_index, lines, raw))
        return out, big, payload if n_fast else None

    def _positions(self, chunk: int, n: int) -> bytearray:
        """The ``pos`` of a chunk's n rows, chunk << _CHUNK_SHIFT | 0 .. n - 1, as int64s.

        0 .. n - 1 copied once from ``_numbers``, then the chunk's bytes written into
        each number's bytes above _CHUNK_SHIFT, by slice assignments, in C: array("q",
        range) took 0.35 ms a batch, holding the GIL the scan threads share; this 0.015 ms.
        """
        numbers = self._numbers
        if len(numbers) < 8 * n:
            # (two scan threads may both grow it: either's copy is right)
            numbers = self._numbers = array("q", range(max(n, 1 << 16))).tobytes()
        out = bytearray(memoryview(numbers)[: 8 * n])
        low = _CHUNK_SHIFT // 8  # the bytes of the row number
        first = low if sys.byteorder == "little" else 0  # of the chunk's, in each number
        for k, byte in enumerate(chunk.to_bytes(8 - low, sys.byteorder)):
            out[first + k :: 8] = bytes((byte,)) * n
        return out

    def whole(self, b: LineBatch) -> Any:
        """Every line whole: the pure-Python path (Arrow splits the text, in C, no copy)."""
        import pyarrow.compute as pc

        pa = self.pa
        offsets = pa.py_buffer(struct.pack("<qq", 0, len(b.data)))
        text = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(b.data)])
        raw = pc.split_pattern(text, pattern="\n").flatten()
        numbers = array("q", range(b.first_line, b.first_line + len(raw)))
        lines = pa.Array.from_buffers(pa.int64(), len(raw), [None, pa.py_buffer(numbers)])
        return self._batch(b.file_index, lines, raw)

    def _file_column(self, file_index: int, n: int) -> Any:
        # The file number, n times (pa.array of a list of n ints took a third of a scan).
        data = self.pa.py_buffer(struct.pack("<i", file_index) * n)
        return self.pa.Array.from_buffers(self.pa.int32(), n, [None, data])

    def _batch(self, file_index: int, lines: Any, raw: Any) -> Any:
        pa = self.pa
        n = len(raw)
        return pa.record_batch(
            [self._file_column(file_index, n), lines, raw]
            + [pa.nulls(n, f.type) for f in list(self.schema)[3:]],
            schema=self.schema,
        )
