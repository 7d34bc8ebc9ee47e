"""The distributed engine: Spark reads the logs, runs the same narrowing SQL, and
correlates each host in a group of its own (``applyInArrow``), with the same
functions as the embedded engine.

Where the data comes from: any path Hadoop's file systems read (local files,
``hdfs://``, ``s3a://`` buckets). A local directory gives its files, in name
order (:func:`readegress.logs.lines.expand_inputs`); a remote directory or glob
is one input to Spark, its lines numbered across its files. Each input is read
with ``spark.read.text`` and its lines numbered in file order
(``monotonically_increasing_id`` keeps a partition's order and partitions
follow the file). Lines are parsed once with ``try_parse_json``
(Spark's VARIANT: a bad line is NULL, never an error, nesting bombs
included) and fields taken with ``variant_get``; the rows are then the same
relation as DuckDB's, and :mod:`readegress.fleet.sql` does the rest.

Quirks, where Spark differs from the embedded engine:

- Hadoop picks a codec by the file name: a gzip log must end in ``.gz``;
  stdin (``-``) cannot be read.
- Hadoop decodes text as UTF-8 with replacement: a line holding U+FFFD is
  reported as not UTF-8 (a valid line that contains that character literally
  is reported too).
- Needs Spark 4 (VARIANT) and Java 17; ``pip install 'readegress[spark]'``.
"""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, Optional

from readegress.detect.config import Config
from readegress.fleet.pipeline import Correlated, events_of_rows, feed_host
from readegress.fleet.sql import (
    COLUMN_KEYS,
    SPARK,
    TOP_KEYS,
    derived_sql,
    rows_sql,
)
from readegress.logs.lines import LineStats, Progress
from readegress.logs.results import BadLine


def _lit(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _path(key: str) -> str:
    return "$." + key if key.isidentifier() else "$['" + key.replace("'", "\\'") + "']"


def _json_type(expr: str) -> str:
    """DuckDB's json_type names for a VARIANT's schema (OBJECT, ARRAY, VARCHAR, ...)."""
    return f"""CASE
      WHEN {expr} IS NULL THEN NULL
      WHEN schema_of_variant({expr}) LIKE 'OBJECT%' THEN 'OBJECT'
      WHEN schema_of_variant({expr}) LIKE 'ARRAY%' THEN 'ARRAY'
      WHEN schema_of_variant({expr}) = 'STRING' THEN 'VARCHAR'
      WHEN schema_of_variant({expr}) = 'VOID' THEN 'NULL'
      ELSE schema_of_variant({expr}) END"""


class SparkEngine:
    name = "spark"

    def __init__(self, *, master: Optional[str] = None, partitions: int = 8) -> None:
        from pyspark.sql import SparkSession

        master = master or "local[*]"
        builder = SparkSession.builder
        if master.startswith("local"):
            # Local workers run this interpreter (and so import this readegress);
            # on a cluster the executors need readegress installed (or --py-files).
            builder = builder.config("spark.pyspark.python", sys.executable)
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        self.spark = (
            builder.master(master)
            .appName("readegress-fleet")
            .config("spark.ui.enabled", "false")
            # Stage progress bars would garble stderr (our own progress and bad lines).
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", str(partitions))
            .config("spark.sql.session.timeZone", "UTC")
            .getOrCreate()
        )
        self.spark.sparkContext.setLogLevel("ERROR")
        # Intermediate tables: a local temp dir (local mode); on a cluster, set
        # READEGRESS_SPARK_WORK_DIR to a path every executor sees (hdfs://, s3a://).
        self._tmp = tempfile.mkdtemp(prefix="readegress-spark-")
        atexit.register(shutil.rmtree, self._tmp, True)
        self.work_dir = os.environ.get("READEGRESS_SPARK_WORK_DIR") or self._tmp
        self.counts: tuple[int, int, int, int] = (0, 0, 0, 0)

    def close(self) -> None:
        # The session is shared by the process (getOrCreate) and stays up.
        shutil.rmtree(self._tmp, ignore_errors=True)

    # ----- the Engine interface -------------------------------------------
    def create(self, name: str, select: str) -> None:
        try:
            # Written out and read back: the next statement starts from a plain
            # scan (no inherited plan to re-optimise, fresh column ids).
            where = os.path.join(self.work_dir, name)
            self.spark.sql(select).write.mode("overwrite").parquet(where)
            df = self.spark.read.parquet(where)
        except Exception as e:
            raise RuntimeError(f"spark engine: building {name} failed: {e}") from e
        df.createOrReplaceTempView(name)

    def fetch(self, select: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.spark.sql(select).collect()]

    def register(
        self, name: str, columns: Sequence[tuple[str, str]], rows: list[tuple[Any, ...]]
    ) -> None:
        types = {"VARCHAR": "string", "BOOLEAN": "boolean", "BIGINT": "bigint"}
        schema = ", ".join(f"{c} {types[t]}" for c, t in columns)
        self.spark.createDataFrame(rows, schema=schema).createOrReplaceTempView(name)

    # ----- loading --------------------------------------------------------
    def load(
        self,
        paths: list[str],
        on_bad: Callable[[BadLine], None],
        stats: LineStats,
        *,
        decoration_keys: Sequence[str] = (),
        progress: Optional[Progress] = None,
    ) -> None:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        frames = []
        for index, path in enumerate(paths):
            try:
                df = self.spark.read.text(path)
            except Exception as e:
                stats.unreadable_files += 1
                on_bad(BadLine(path, 0, f"cannot open: {str(e).splitlines()[0][:200]}"))
                continue
            stats.files += 1
            w = Window.orderBy("_id")
            frames.append(
                df.withColumn("_id", F.monotonically_increasing_id())
                .withColumn("line", F.row_number().over(w).cast("bigint"))
                .select(F.lit(index).cast("int").alias("file"), "line", F.col("value").alias("raw"))
            )
        if frames:
            stream = frames[0]
            for f in frames[1:]:
                stream = stream.unionByName(f)
        else:
            stream = self.spark.createDataFrame([], "file int, line bigint, raw string")
        stream.createOrReplaceTempView("stream")
        deco = list(decoration_keys)
        n = len(deco)
        top = [_path(k) for k in TOP_KEYS]
        top += ["$.decorations" + _path(k)[1:] for k in deco] + [_path(k) for k in deco]

        def get(path: str) -> str:
            return f"variant_get(j, {_lit(path)}, 'string')"

        fields = ", ".join(
            f"variant_get(c, {_lit(_path(k))}, 'string') AS c_{k}" for k in COLUMN_KEYS
        )
        t = len(TOP_KEYS)
        decos = "".join(f", COALESCE({get(top[t + i])}, {get(top[t + n + i])}) AS d_{i}"
                        for i in range(n))  # fmt: skip
        cv = {k: f"c_{k}" for k in COLUMN_KEYS}
        from readegress.fleet.duckdb_engine import _project_test

        var_hid, var_hn = "variant_get(j, '$.hostIdentifier')", "variant_get(j, '$.hostname')"
        host = (
            f"CASE WHEN {_json_type(var_hid)} = 'VARCHAR'"
            f" AND {get('$.hostIdentifier')} <> '' THEN {get('$.hostIdentifier')}"
            f" WHEN {_json_type(var_hn)} = 'VARCHAR'"
            f" AND {get('$.hostname')} <> '' THEN {get('$.hostname')} END"
        )
        per_line = f"""
          SELECT file, line, 0 AS idx, host, {_spark_bad()} AS bad, unix_time, action,
            {", ".join(f"c_{k}" for k in COLUMN_KEYS)}{"".join(f", d_{i}" for i in range(n))},
            CASE WHEN t0 = 'OBJECT' AND t1 IS NULL AND (t2 IS NOT NULL OR t3 IS NOT NULL)
                   THEN raw
                 WHEN t1 = 'OBJECT' AND ({_project_test(cv)}) THEN CAST(c AS STRING)
            END AS keep
          FROM (
            SELECT *, {fields} FROM (
              SELECT file, line, raw, j, {host} AS host,
                {get("$.unixTime")} AS unix_time,
                {get("$.action")} AS action{decos},
                {_json_type("j")} AS t0,
                {_json_type("variant_get(j, '$.columns')")} AS t1,
                {_json_type("variant_get(j, '$.diffResults')")} AS t2,
                {_json_type("variant_get(j, '$.snapshot')")} AS t3,
                {_json_type("variant_get(j, '$.diffResults.added')")} AS t4,
                {_json_type("variant_get(j, '$.diffResults.removed')")} AS t5,
                CASE WHEN {_json_type("variant_get(j, '$.columns')")} = 'OBJECT'
                     THEN variant_get(j, '$.columns') END AS c
              FROM (SELECT file, line, raw, try_parse_json(raw) AS j FROM stream
                    WHERE raw <> '' AND trim(raw) <> '') a
            ) b
          ) d"""
        self.create("lines", derived_sql(SPARK, per_line))
        deco_names = "".join(f", d_{i}" for i in range(n))
        arrays = "FROM lines WHERE bad IS NULL AND keep IS NOT NULL AND tbl IS NULL"
        self.create(
            "exploded",
            f"""SELECT file, line, pos + 1 AS idx, host, unix_time, act, r,
                  {_json_type("r")} AS rty{deco_names}
                FROM (
                  SELECT *, 'added' AS act, variant_get(parse_json(keep),
                    '$.diffResults.added', 'array<variant>') AS l
                  {arrays} AND variant_get(parse_json(keep), '$.diffResults') IS NOT NULL
                  UNION ALL
                  SELECT *, 'removed' AS act, variant_get(parse_json(keep),
                    '$.diffResults.removed', 'array<variant>') AS l
                  {arrays} AND variant_get(parse_json(keep), '$.diffResults') IS NOT NULL
                  UNION ALL
                  SELECT *, 'snapshot' AS act, variant_get(parse_json(keep), '$.snapshot',
                    'array<variant>') AS l
                  {arrays} AND variant_get(parse_json(keep), '$.diffResults') IS NULL
                ) s LATERAL VIEW posexplode(l) e AS pos, r
                WHERE l IS NOT NULL""",
        )
        afields = ", ".join(
            f"variant_get(r, {_lit(_path(k))}, 'string') AS c_{k}" for k in COLUMN_KEYS
        )
        arow_select = f"""
            SELECT file, line, idx, host, CAST(NULL AS STRING) AS bad, unix_time,
              act AS action, {afields}{deco_names}, CAST(r AS STRING) AS keep
            FROM exploded WHERE rty = 'OBJECT'"""
        self.create("arows", derived_sql(SPARK, arow_select))
        keep_cols = ["file", "line", "idx", "host", "bad", "unix_time", "action"]
        keep_cols += [f"c_{k}" for k in COLUMN_KEYS] + [f"d_{i}" for i in range(n)]
        self.spark.sql(rows_sql(keep_cols)).createOrReplaceTempView("rows")
        self.spark.sql(
            "SELECT * FROM rows WHERE kind IS NOT NULL AND action IN ('added', 'snapshot')"
        ).createOrReplaceTempView("ev")
        self.create(
            "proj",
            """SELECT file, line, idx, host, unix_time, tbl, keep AS cols FROM rows
               WHERE action IN ('added', 'snapshot')
                 AND tbl IN ('read_then_egress', 'readegress_health', 'process_net_bytes',
                             'socket_bytes')""",
        )
        deco_agg = "".join(f", max(d_{i}) AS d_{i}" for i in range(n))
        self.create(
            "hostinfo",
            f"""SELECT host, count(*) AS row_count,
                  sum(CASE WHEN tbl IN ('file', 'socket', 'process') THEN 1 ELSE 0 END)
                    AS event_rows,
                  collect_set(CASE WHEN unix_time RLIKE '^[0-9]{{1,15}}$'
                              THEN CAST(unix_time AS BIGINT) END) AS run_times{deco_agg}
                FROM rows GROUP BY host""",
        )
        self.create(
            "bad",
            """SELECT file, line, bad AS reason FROM lines WHERE bad IS NOT NULL
               UNION ALL
               SELECT file, line, concat(array_join(transform(array_sort(collect_list(
                   named_struct('a', act, 'i', idx))), x -> concat(CASE WHEN x.a = 'snapshot'
                   THEN 'snapshot' ELSE concat('diffResults.', x.a) END, '[',
                   CAST(x.i - 1 AS STRING), ']')), ', '), ' not an object')
               FROM exploded WHERE rty IS NULL OR rty <> 'OBJECT' GROUP BY file, line""",
        )
        got = self.fetch(
            """SELECT (SELECT count(*) FROM lines), (SELECT count(*) FROM rows),
                 (SELECT count(*) FROM rows WHERE action = 'removed'), (SELECT count(*) FROM ev)"""
        )[0]
        self.counts = (int(got[0]), int(got[1]), int(got[2]), int(got[3]))
        stats.lines += int(self.fetch("SELECT count(*) FROM stream")[0][0])

    # ----- per-host correlation on the executors ---------------------------
    def correlate_rows(
        self,
        narrowed: bool,
        config: Config,
        files: Sequence[str],
        on_bad: Callable[[BadLine], None],
    ) -> Correlated:
        """Group the feed rows by host; each group feeds a Correlator on an executor."""
        import pyarrow as pa

        from readegress.fleet.pipeline import FEED_COLUMNS
        from readegress.fleet.sql import feed_select

        names = list(FEED_COLUMNS)
        files = list(files)

        def per_host(table: pa.Table) -> pa.Table:
            cols = [table.column(c).to_pylist() for c in names]
            idx = table.column("idx").to_pylist()
            # Spark hands a group's rows in no set order: log order first.
            order = sorted(range(len(idx)), key=lambda i: (cols[1][i], cols[2][i], idx[i]))
            rows = [tuple(c[i] for c in cols) for i in order]
            bad: list[BadLine] = []
            per, _errors = events_of_rows(rows, files, bad.append)
            out_kind, out_payload = [], []
            for host, events in per.items():
                found, stats, _ = feed_host(config, events)
                out_kind.append("detections")
                out_payload.append(pickle.dumps((host, len(events), found, stats)))
            for b in bad:
                out_kind.append("bad")
                out_payload.append(pickle.dumps(b))
            schema = pa.schema([("kind", pa.string()), ("payload", pa.binary())])
            return pa.table({"kind": out_kind, "payload": out_payload}, schema=schema)

        select = feed_select([*names, "idx"], narrowed)
        df = self.spark.sql(select.replace(" ORDER BY e.file, e.line, e.idx", ""))
        result = (
            df.groupBy("host")
            .applyInArrow(per_host, schema="kind string, payload binary")
            .collect()
        )
        out = Correlated(candidates=[])
        bad_rows = []
        for row in result:
            obj = pickle.loads(row["payload"])
            if row["kind"] == "bad":
                bad_rows.append(obj)
                continue
            _, n_events, found, stats = obj
            out.add_host(found, n_events, stats)
        for b in sorted(bad_rows, key=lambda b: (b.file, b.line)):
            out.row_errors += 1
            on_bad(b)
        return out


def _spark_bad() -> str:
    """The embedded engine's bad-line reasons, from this engine's type columns t0-t5."""
    return """CASE
        WHEN j IS NULL AND instr(raw, '\ufffd') > 0 THEN 'not UTF-8'
        WHEN j IS NULL THEN 'not JSON'
        WHEN instr(raw, '\ufffd') > 0 THEN 'not UTF-8'
        WHEN t0 <> 'OBJECT' THEN concat('not a JSON object but ', lower(t0))
        WHEN host IS NULL THEN 'no host (hostIdentifier or hostname)'
        WHEN t1 IS NOT NULL AND COALESCE(action, '') NOT IN ('added', 'removed', 'snapshot')
          THEN concat('action ', COALESCE(concat('\\'', action, '\\''), 'None'),
                      ' is not added, removed or snapshot')
        WHEN t1 IS NOT NULL AND t1 <> 'OBJECT' THEN 'columns not an object'
        WHEN t1 IS NULL AND t2 IS NOT NULL AND t2 <> 'OBJECT' THEN 'diffResults is not an object'
        WHEN t1 IS NULL AND t2 IS NOT NULL AND t4 IS NOT NULL AND t4 <> 'ARRAY'
          THEN 'diffResults.added is not a list'
        WHEN t1 IS NULL AND t2 IS NOT NULL AND t5 IS NOT NULL AND t5 <> 'ARRAY'
          THEN 'diffResults.removed is not a list'
        WHEN t1 IS NULL AND t2 IS NULL AND t3 IS NOT NULL AND t3 <> 'ARRAY'
          THEN 'snapshot is not a list'
        WHEN t1 IS NULL AND t2 IS NULL AND t3 IS NULL
          THEN 'no rows (no columns, diffResults or snapshot)'
      END"""
