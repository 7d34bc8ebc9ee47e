"""The embedded engine: DuckDB parses the lines of results logs and narrows them.

Where the data comes from: :func:`readegress.logs.lines.line_batches` cuts the
logs into numbered lines (gzip, stdin, directories; lines that are not UTF-8
are reported there) and streams them to DuckDB as Arrow batches. DuckDB then
parses every line once or twice (``json_extract_string`` with a list of paths
parses a line once for all of them; ``json_type`` once more), on all cores,
and never raises on a line: invalid JSON, nesting bombs and 12 MB lines come
back as NULL under ``try()`` (DuckDB's parser, yyjson, is not recursive), and
such a line is reported with its number and counted like every other bad line.

Why not ``read_json``: it rejects a whole file for one bad line, or with
``ignore_errors`` drops bad lines without saying which, and it gives no line
numbers. Reading lines as text costs one pass of Python's ``bytes.split``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

from readegress.fleet.sql import COLUMN_KEYS, DUCKDB, derived_sql, recognise_sql
from readegress.logs.lines import LineBatch, LineStats, Progress, line_batches
from readegress.logs.results import BadLine

#: Top-level fields of a line (extracted with the columns, in the same parse).
TOP_KEYS = ("hostIdentifier", "hostname", "name", "unixTime", "action")
#: json_type paths: the line, its row containers and host fields.
TYPE_PATHS = (
    "$", "$.columns", "$.diffResults", "$.snapshot", "$.diffResults.added",
    "$.diffResults.removed", "$.hostIdentifier", "$.hostname",
)  # fmt: skip


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _json_path(key: str) -> str:
    return "$." + key if key.isidentifier() else '$."' + key.replace('"', '\\"') + '"'


def _path_list(prefix: str, keys: Sequence[str]) -> str:
    return "[" + ", ".join(_lit(prefix + _json_path(k)[1:]) for k in keys) + "]"


class DuckDBEngine:
    """One in-memory DuckDB database holding one run's tables."""

    name = "duckdb"

    def __init__(self, *, threads: Optional[int] = None, memory_limit: str = "700MB") -> None:
        import duckdb

        self.con = duckdb.connect(":memory:")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.con.execute(f"SET memory_limit = {_lit(memory_limit)}")
        self.con.execute("SET preserve_insertion_order = false")

    def close(self) -> None:
        self.con.close()

    # ----- the Engine interface used by readegress.fleet.pipeline --------
    def create(self, name: str, select: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TABLE {name} AS {select}")

    def fetch(self, select: str) -> list[tuple[Any, ...]]:
        return self.con.execute(select).fetchall()

    def register(
        self, name: str, columns: Sequence[tuple[str, str]], rows: list[tuple[Any, ...]]
    ) -> None:
        cols = ", ".join(f"{c} {t}" for c, t in columns)
        self.con.execute(f"CREATE OR REPLACE TABLE {name} ({cols})")
        if rows:
            import pyarrow as pa

            table = pa.table({c: [r[i] for r in rows] for i, (c, _) in enumerate(columns)})
            self.con.register("_reg", table)
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
        """Parse the logs into ``lines_x`` (one row a line), then ``rows``, ``ev``, ``proj``."""
        import pyarrow as pa

        schema = pa.schema([("file", pa.int32()), ("line", pa.int64()), ("raw", pa.string())])

        def batches() -> Iterator[pa.RecordBatch]:
            for b in line_batches(paths, on_bad, stats, progress=progress):
                yield _record_batch(pa, schema, b)

        stream = pa.RecordBatchReader.from_batches(schema, batches())
        self.con.register("stream", stream)
        deco = [k for k in decoration_keys]
        top = list(TOP_KEYS) + [f"decorations.{k}" for k in deco] + deco
        col_paths = _path_list("$.columns", COLUMN_KEYS)
        top_paths = (
            "["
            + ", ".join(
                _lit(_json_path(k))
                if not k.startswith("decorations.")
                else _lit("$.decorations" + _json_path(k[len("decorations.") :])[1:])
                for k in top
            )
            + "]"
        )
        n_top = len(top)
        type_paths = "[" + ", ".join(_lit(p) for p in TYPE_PATHS) + "]"
        # One table a line: its top fields, the event-format columns, or the raw
        # line when its rows sit in arrays (batch/snapshot) or belong to one of
        # the project's tables (whose every column the report reads).
        self.con.execute(
            f"""CREATE OR REPLACE TABLE lines_x AS
            SELECT file, line, ty, top, cv,
              CASE WHEN ty IS NULL AND trim(raw) = '' THEN 'blank'
                   WHEN ty[1] = 'OBJECT' AND ty[2] IS NULL
                        AND (ty[3] IS NOT NULL OR ty[4] IS NOT NULL) THEN raw
                   WHEN ty[2] = 'OBJECT' AND ({_project_test("cv")}) THEN raw END AS raw
            FROM (
              SELECT file, line, raw, ty,
                CASE WHEN ty[1] = 'OBJECT' THEN json_extract_string(raw, {top_paths}) END AS top,
                CASE WHEN ty[2] = 'OBJECT' THEN json_extract_string(raw, {col_paths}) END AS cv
              FROM (
                SELECT file, line, raw, try(json_type(raw, {type_paths})) AS ty
                FROM stream WHERE raw <> ''
              ) a
            ) b"""
        )
        self.con.unregister("stream")
        host = (
            "CASE WHEN ty[7] = 'VARCHAR' AND top[1] <> '' THEN top[1]"
            " WHEN ty[8] = 'VARCHAR' AND top[2] <> '' THEN top[2] END"
        )
        self.con.execute(
            f"""CREATE OR REPLACE TABLE lines_h AS
            SELECT file, line, ty, top, cv, raw, {host} AS host,
              CASE
                WHEN ty IS NULL AND raw = 'blank' THEN NULL
                WHEN ty IS NULL THEN 'not JSON'
                WHEN ty[1] <> 'OBJECT' THEN 'not a JSON object but ' || lower(ty[1])
                WHEN {host} IS NULL THEN 'no host (hostIdentifier or hostname)'
                WHEN ty[2] IS NOT NULL
                  AND COALESCE(top[5], '') NOT IN ('added', 'removed', 'snapshot')
                  THEN 'action ' || COALESCE('''' || top[5] || '''', 'None')
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
              END AS bad
            FROM lines_x WHERE NOT (ty IS NULL AND COALESCE(raw = 'blank', FALSE))"""
        )
        self.con.execute("DROP TABLE lines_x")
        # Rows in arrays (batch and snapshot formats), one row each, numbered in the line.
        self.con.execute(
            """CREATE OR REPLACE TABLE exploded AS
            SELECT file, line, idx, host, top, act, r,
              try(json_type(r)) AS rty
            FROM (
              SELECT file, line, host, top, act,
                unnest(l) AS r, unnest(generate_series(1, len(l))) AS idx
              FROM (
                SELECT file, line, host, top, 'added' AS act,
                  json_extract(raw, '$.diffResults.added[*]') AS l
                FROM lines_h WHERE bad IS NULL AND ty[2] IS NULL AND ty[3] IS NOT NULL
                UNION ALL
                SELECT file, line, host, top, 'removed' AS act,
                  json_extract(raw, '$.diffResults.removed[*]') AS l
                FROM lines_h WHERE bad IS NULL AND ty[2] IS NULL AND ty[3] IS NOT NULL
                UNION ALL
                SELECT file, line, host, top, 'snapshot' AS act,
                  json_extract(raw, '$.snapshot[*]') AS l
                FROM lines_h WHERE bad IS NULL AND ty[2] IS NULL AND ty[3] IS NULL
              ) s WHERE len(l) > 0
            ) u"""
        )
        fields = ", ".join(f"cv[{i + 1}] AS c_{k}" for i, k in enumerate(COLUMN_KEYS))
        deco_cols = ", ".join(
            f"COALESCE(top[{6 + i}], top[{6 + len(deco) + i}]) AS d_{i}" for i in range(len(deco))
        )
        deco_sel = (", " + deco_cols) if deco else ""
        assert n_top == 5 + 2 * len(deco)
        inner = f"""
          SELECT file, line, idx, host, qname, unix_time, action, cols, {fields}{deco_sel}
          FROM (
            SELECT file, line, 0 AS idx, host, top[3] AS qname, top[4] AS unix_time,
              top[5] AS action, cv, top,
              CASE WHEN raw IS NOT NULL THEN json_extract(raw, '$.columns') END AS cols
            FROM lines_h WHERE bad IS NULL AND ty[2] = 'OBJECT'
            UNION ALL
            SELECT file, line, idx, host, top[3], top[4], act,
              json_extract_string(r, {_path_list("$", COLUMN_KEYS)}) AS cv, top,
              CAST(r AS VARCHAR) AS cols
            FROM exploded WHERE rty = 'OBJECT'
          ) x"""
        self.con.execute(
            f"""CREATE OR REPLACE TABLE rows AS
            SELECT y.*, {recognise_sql()} AS tbl FROM ({inner}) y"""
        )
        self.con.execute(
            f"""CREATE OR REPLACE TABLE ev AS
            SELECT * FROM ({derived_sql(DUCKDB, _EVENT_ROWS)}) d
            WHERE kind IS NOT NULL"""
        )
        self.con.execute(
            """CREATE OR REPLACE TABLE proj AS
            SELECT file, line, idx, host, qname, unix_time, tbl, cols FROM rows
            WHERE action IN ('added', 'snapshot')
              AND tbl IN ('read_then_egress', 'readegress_health', 'process_net_bytes',
                          'socket_bytes')"""
        )
        # Per host: lines, event rows, query-run times, decoration values.
        deco_agg = "".join(f", max(d_{i}) AS d_{i}" for i in range(len(deco)))
        self.con.execute(
            f"""CREATE OR REPLACE TABLE hostinfo AS
            SELECT host, count(*) AS row_count,
              sum(CASE WHEN tbl IN ('file', 'socket', 'process') THEN 1 ELSE 0 END) AS event_rows,
              list(DISTINCT TRY_CAST(unix_time AS BIGINT)) AS run_times{deco_agg}
            FROM rows GROUP BY host"""
        )
        self.con.execute(
            """CREATE OR REPLACE TABLE bad AS
            SELECT file, line, bad AS reason FROM lines_h WHERE bad IS NOT NULL
            UNION ALL
            SELECT file, line, string_agg(CASE WHEN act = 'snapshot' THEN 'snapshot'
                ELSE 'diffResults.' || act END || '[' || CAST(idx - 1 AS VARCHAR) || ']', ', ')
                || ' not an object'
            FROM exploded WHERE rty IS NULL OR rty <> 'OBJECT' GROUP BY file, line"""
        )
        self.counts = self.con.execute(
            """SELECT
                (SELECT count(*) FROM lines_h),
                (SELECT count(*) FROM rows),
                (SELECT count(*) FROM rows WHERE action = 'removed'),
                (SELECT count(*) FROM ev)"""
        ).fetchone()
        self.con.execute("DROP TABLE lines_h")
        self.con.execute("DROP TABLE exploded")
        self.con.execute("DROP TABLE rows")


_EVENT_ROWS = (
    "SELECT * EXCLUDE (cols) FROM rows WHERE action IN ('added', 'snapshot')"
    " AND tbl IN ('file', 'socket', 'process')"
)


def _project_test(cv: str) -> str:
    """SQL: do the extracted columns ``cv`` name one of the project's tables?"""
    i = {k: n + 1 for n, k in enumerate(COLUMN_KEYS)}

    def has(k: str) -> str:
        return f"{cv}[{i[k]}] IS NOT NULL"

    return (
        f"({has('id')} AND {has('sensitive_class')} AND {has('reasons')})"
        f" OR ({has('name')} AND {has('detail')} AND {has('fix')})"
        f" OR ({has('open_sockets')} AND {has('total_bytes_sent')})"
        f" OR ({has('cookie')} AND {has('bytes_acked')})"
    )


def _record_batch(pa: Any, schema: Any, b: LineBatch) -> Any:
    n = len(b.lines)
    return pa.record_batch(
        [
            pa.array([b.file_index] * n, pa.int32()),
            pa.array(range(b.first_line, b.first_line + n), pa.int64()),
            pa.array(b.lines, pa.string()),
        ],
        schema=schema,
    )
