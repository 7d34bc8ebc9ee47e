"""The SQL both engines run: rows of the results logs → event rows → the narrowed rows.

Both engines (:mod:`readegress.fleet.duckdb_engine`, :mod:`readegress.fleet.spark_engine`)
parse the lines their own way into one relation, ``rows``, of string fields
(``c_<column>`` for the columns below, JSON null and absent alike as NULL;
numbers as their JSON text, so ``--logger_numerics`` changes nothing) and run
the statements here, in this order, on it. Everything below is ANSI SQL that
DuckDB and Spark SQL both run, but for :class:`Dialect`'s few functions.

What the narrowing keeps, and why it is exact (the property test
``tests/test_fleet_narrowing.py`` checks it against feeding every event): see
:func:`narrowing_statements`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: The columns of osquery's event tables (and of the project's own tables, for
#: recognising them) that the engines extract from every row.
COLUMN_KEYS = (
    "operation", "pid", "ppid", "time", "executable", "path", "uid", "auid",
    "action", "remote_address", "remote_port", "status", "success", "family",
    "cmdline", "parent", "syscall", "protocol",
    # recognition of the project's tables (tables/*.toml)
    "id", "sensitive_class", "reasons", "score", "name", "detail", "fix",
    "open_sockets", "total_bytes_sent", "cookie", "bytes_acked",
)  # fmt: skip

#: Top-level fields of a line (extracted with the columns, in the same parse).
TOP_KEYS = ("hostIdentifier", "hostname", "unixTime", "action")

#: A row holding every column of one of these groups is a row of a project table
#: (``recognise_sql``): the engines keep its columns' JSON.
PROJECT_GROUPS = (
    ("id", "sensitive_class", "reasons"),
    ("name", "detail", "fix"),
    ("open_sockets", "total_bytes_sent"),
    ("cookie", "bytes_acked"),
)

#: The columns of COLUMN_KEYS that the event rows use (the others only recognise the
#: project's tables: the engines drop them after the line pass).
EVENT_KEYS = COLUMN_KEYS[: COLUMN_KEYS.index("id")]
RECOGNITION_KEYS = COLUMN_KEYS[len(EVENT_KEYS) :]

#: The columns of a row only the feed reads (events_of_rows), in COLUMN_KEYS order: the
#: compiled scanner packs them into one string, the row's payload (their values joined
#: by ``\x1f``, ``\x1e`` for a NULL), which the DuckDB engine holds apart, not stored
#: (13 columns took ~0.8 of its ~1.7 CPU-s to store a 1 GB log's rows).
PACKED = tuple(
    k for k in COLUMN_KEYS
    if k in {"operation", "pid", "ppid", "time", "action", "remote_port", "status", "success",
             "family", "cmdline", "parent", "syscall", "protocol"}
)  # fmt: skip
PAYLOAD_SEP, PAYLOAD_NULL = "\x1f", "\x1e"

#: Tables a row is recognised as (by its columns, as
#: :func:`readegress.sources.osquery_rows.recognise` does for the event tables).
FILE, SOCKET, PROCESS = "file", "socket", "process"
READ_THEN_EGRESS, HEALTH, PROCESS_NET_BYTES, SOCKET_BYTES = (
    "read_then_egress",
    "readegress_health",
    "process_net_bytes",
    "socket_bytes",
)
PROJECT_TABLES = (READ_THEN_EGRESS, HEALTH, PROCESS_NET_BYTES, SOCKET_BYTES)

#: Event kinds and their order at equal times (readegress.detect.events.EVENT_ORDER).
KIND_ORDER = {"fork": 0, "exec": 1, "read": 2, "conn": 3}


@dataclass(frozen=True)
class Dialect:
    """The functions whose spelling differs between the engines."""

    #: ``{0}`` is a string expression: is it 1 to 15 ASCII digits?
    digits: str
    #: Every column of relation ``{0}`` but the comma-separated ``{1}``, in a select
    #: list. Spark SQL has no such star: it keeps them (its ``rows`` lists its columns).
    all_but: str


DUCKDB = Dialect(digits="regexp_full_match({0}, '[0-9]{{1,15}}')", all_but="{0}.* EXCLUDE ({1})")
SPARK = Dialect(digits="({0} RLIKE '^[0-9]{{1,15}}$')", all_but="{0}.*")


def recognise_sql() -> str:
    """The table of a row (``c_*`` fields), as ``recognise`` and the project's specs say."""
    return """CASE
      WHEN c_operation IS NOT NULL AND c_path IS NOT NULL AND c_pid IS NOT NULL THEN 'file'
      WHEN c_action IS NOT NULL AND c_remote_address IS NOT NULL THEN 'socket'
      WHEN c_cmdline IS NOT NULL AND c_parent IS NOT NULL AND c_pid IS NOT NULL THEN 'process'
      WHEN c_id IS NOT NULL AND c_sensitive_class IS NOT NULL AND c_reasons IS NOT NULL
        THEN 'read_then_egress'
      WHEN c_name IS NOT NULL AND c_detail IS NOT NULL AND c_fix IS NOT NULL
        THEN 'readegress_health'
      WHEN c_open_sockets IS NOT NULL AND c_total_bytes_sent IS NOT NULL
        THEN 'process_net_bytes'
      WHEN c_cookie IS NOT NULL AND c_bytes_acked IS NOT NULL THEN 'socket_bytes'
    END"""


#: Helper columns of :func:`derived_sql`: each digit test made once a row (the regex is
#: most of the derived fields' cost), left out of its output where the dialect can.
DIGIT_TESTS = ("g_time", "g_pid", "g_ppid", "g_parent", "g_port", "g_family")


def derived_sql(d: Dialect, inner: str) -> str:
    """Every row of ``inner`` (which has the ``c_*`` columns) with its table ``tbl``
    (:func:`recognise_sql`) and its event fields (:data:`DERIVED`).

    ``kind`` is what :func:`~readegress.sources.osquery_rows.event_from_row`
    makes of the row (NULL: no event); a connect is ``sure`` when it is an
    egress event whatever Python makes of its values, else it may be one.
    ``odd`` marks a row whose pid, time or parent SQL cannot read exactly as
    Python does (not plain digits): its host is fed whole. The ``g_*`` columns
    (DIGIT_TESTS) say whether a field is plain digits (NULL when absent); they are
    not in the output but where the dialect cannot leave them out (Spark).
    The engines store these with each row; :data:`OBSERVED` is computed in ``rows``.
    """
    tests = ", ".join(
        f"{d.digits.format(col)} AS {name}"
        for col, name in zip(
            ("c_time", "c_pid", "c_ppid", "c_parent", "c_remote_port", "c_family"), DIGIT_TESTS
        )
    )
    return f"""
SELECT {d.all_but.format("q", ", ".join(DIGIT_TESTS))},
  CASE WHEN g_time THEN CAST(c_time AS BIGINT) END AS t,
  CASE WHEN g_pid THEN CAST(c_pid AS BIGINT) END AS epid,
  CASE WHEN kind = 'read' AND g_ppid THEN CAST(c_ppid AS BIGINT)
       WHEN kind IN ('exec', 'fork') AND g_parent THEN CAST(c_parent AS BIGINT) END
    AS eppid,
  kind = 'conn'
    AND (c_status IN ('succeeded', 'in_progress')
         OR (COALESCE(c_status, '') = '' AND c_success IN ('1', 'true', 'True')))
    AND (COALESCE(c_family, '') = '' OR c_family IN ('2', '10'))
    AND COALESCE(c_remote_address, '') <> '' AND g_port AS sure,
  kind IS NOT NULL AND (
    NOT COALESCE(g_pid, FALSE) OR NOT COALESCE(g_time, FALSE)
    OR (kind = 'read' AND COALESCE(c_ppid, '') <> '' AND NOT g_ppid)
    OR (kind IN ('exec', 'fork') AND COALESCE(c_parent, '') <> '' AND NOT g_parent)
  ) AS odd
FROM (
  SELECT g.*,
    CASE
      WHEN tbl = 'file' AND c_operation IN ('open', 'read') THEN 'read'
      WHEN tbl = 'socket' AND c_action = 'connect'
        AND NOT (COALESCE(c_status, '') <> '' AND c_status NOT IN ('succeeded', 'in_progress'))
        AND NOT (COALESCE(c_status, '') = '' AND c_success IS NOT NULL
                 AND c_success NOT IN ('1', 'true', 'True'))
        AND COALESCE(c_remote_address, '') <> '' AND COALESCE(c_remote_port, '') <> ''
        AND NOT (COALESCE(g_family, FALSE) AND c_family NOT IN ('2', '10'))
        THEN 'conn'
      WHEN tbl = 'process' AND COALESCE(NULLIF(c_syscall, ''), 'execve') IN ('execve', 'execveat')
        THEN 'exec'
      WHEN tbl = 'process' AND c_syscall IN ('fork', 'vfork', 'clone', 'clone3') THEN 'fork'
    END AS kind
  FROM (SELECT r.*, {recognise_sql()} AS tbl, {tests} FROM ({inner}) r) g
) q"""


#: The fields :func:`derived_sql` adds to a row, that the engines store (``kind`` last).
DERIVED = ("t", "epid", "eppid", "sure", "odd", "kind")

#: Fields of an event row computed where ``rows`` is read, not stored with every row
#: (storing them cost 0.1 s of a 1 GB log's 2.3 s load): its kind's order at equal
#: times, and its process observation (executable, uid, auid), which only the last
#: narrowing statement reads, for the rows of the processes that matter.
OBSERVED = """
  CASE kind WHEN 'fork' THEN 0 WHEN 'exec' THEN 1 WHEN 'read' THEN 2 ELSE 3 END AS ord,
  CASE WHEN kind = 'read' THEN COALESCE(c_executable, '') ELSE COALESCE(c_path, '') END AS o_exe,
  CASE WHEN kind = 'conn' THEN NULL ELSE NULLIF(c_uid, '') END AS o_uid,
  NULLIF(c_auid, '') AS o_auid"""


def rows_sql(columns: Sequence[str]) -> str:
    """``rows``: the rows of ``lines`` and ``arows`` (``columns``, ``keep``, ``tbl``, DERIVED,
    OBSERVED); a batch or snapshot line is not a row itself: its rows are in arows."""
    cols = ", ".join([*columns, "keep", "tbl", *DERIVED])
    return f"""SELECT r.*, {OBSERVED} FROM (
        SELECT {cols} FROM lines WHERE bad IS NULL AND NOT (keep IS NOT NULL AND tbl IS NULL)
        UNION ALL SELECT {cols} FROM arows) r"""


#: Relations of the statements below that an engine may leave as views: ``ev_n``
#: is ``ev`` joined to two small tables, and DuckDB re-reads the few columns each
#: statement wants faster than it writes all 17 once (1 GB log: narrowing 0.81 →
#: 0.54 s, and no copy of every event row held).
CHEAP_VIEWS = frozenset({"ev_n"})


def narrowing_statements(window: float) -> list[tuple[str, str]]:
    """(table, SELECT) pairs, run in order after ``ev`` (event rows) and ``cat`` exist.

    ``ev`` holds the event rows (``kind`` not NULL) with :func:`derived_sql`'s
    fields; ``cat(path, cls, alone)`` the catalogue class of every distinct
    read path (computed by the one catalogue, in Python). The result, ``narrow``,
    holds the rows to feed, per host:

    - hosts with an ``odd`` row: every event row (fed whole);
    - hosts with no read of a class that may alert alone: nothing (the core
      can raise a detection only from such a read);
    - other hosts (``W`` the window; ``A`` their alerting reads):
      1. catalogue reads within ``W`` of some ``A`` (the alerting reads
         themselves and every read that can be context of a detection);
      2. connects (that may be egress) to an address of an egress class (``dest``,
         classified by the one classifier) at ``[a, a + W]`` of some ``A`` read
         ``a`` (the only egress that can alert: the core looks back ``W`` for an
         alerting read, and ignores other classes);
      3. per (host, egress-class address), the first sure egress event in feed
         order, and every connect to it that may or may not be egress (so
         whether an address was contacted before, ``first_seen_destination``,
         is the same as with every row);
      4. every row of the processes that matter: the pids of 1-2 (readers,
         senders); the senders' ancestors and descendants to the core's lineage
         depth (6), following every (pid, parent) pair the rows name, whatever
         the time, and the siblings of the sender and of each ancestor forked or
         exec'd within 1 s of a reader child of the same parent (the core's
         pipeline members are the children of the reader's parent exec'd within
         1 s of the reader): a superset of what the
         core's lineage and pipeline can reach -- except a read or sure egress
         that 1-3 do not need and whose process observation (parent,
         executable, uid, auid) names nothing the previous event of its pid in
         feed order did not (each field absent or equal; osquery's socket rows
         have no parent or uid): the core fills only a field it lacks, sees reuse
         only in another parent and appends only another image, so its view of
         the process is unchanged by it. (On the 1 GB bench log: 111k rows fed
         with equal observations only, 82k with this.)
    """
    w = float(window)
    width = w + 2.0  # bucket width: |dt| <= W + 1 spans at most two buckets
    key = "file, line, idx"
    return [
        (
            "host_flags",
            """SELECT e.host,
                 MAX(CASE WHEN e.odd THEN 1 ELSE 0 END) AS odd,
                 MAX(CASE WHEN c.alone THEN 1 ELSE 0 END) AS alerting
               FROM ev e LEFT JOIN cat c ON e.kind = 'read' AND e.c_path = c.path
               GROUP BY e.host""",
        ),
        (
            "ev_n",
            f"""SELECT e.file, e.line, e.idx, e.host, e.kind, e.t, e.epid, e.eppid, e.ord,
                  e.sure, e.o_exe, e.o_uid, e.o_auid, e.c_remote_address, c.cls, c.alone,
                  CAST(FLOOR(e.t / {width}) AS BIGINT) AS b
                FROM ev e
                JOIN host_flags h ON e.host = h.host AND h.odd = 0 AND h.alerting = 1
                LEFT JOIN cat c ON e.kind = 'read' AND e.c_path = c.path""",
        ),
        (
            "alert3",
            """SELECT host, t, b + k AS b FROM (
                  SELECT host, t, b FROM ev_n WHERE kind = 'read' AND alone
                ) a CROSS JOIN (SELECT -1 AS k UNION ALL SELECT 0 UNION ALL SELECT 1) ks""",
        ),
        (
            "need_ctx",
            f"""SELECT {key}, host, epid FROM ev_n e
                WHERE e.kind = 'read' AND e.cls IS NOT NULL AND EXISTS (
                  SELECT 1 FROM alert3 a WHERE a.host = e.host AND a.b = e.b
                    AND e.t BETWEEN a.t - {w + 1.0} AND a.t + {w + 1.0})""",
        ),
        (
            "need_win",
            f"""SELECT {key}, host, epid FROM ev_n e
                JOIN dest d ON d.addr = e.c_remote_address AND d.egress
                WHERE e.kind = 'conn' AND EXISTS (
                  SELECT 1 FROM alert3 a WHERE a.host = e.host AND a.b = e.b
                    AND e.t BETWEEN a.t - 1.0 AND a.t + {w + 1.0})""",
        ),
        (
            "need_dest",
            f"""SELECT {key} FROM (
                  SELECT {key}, sure, ROW_NUMBER() OVER (
                    PARTITION BY host, c_remote_address, sure
                    ORDER BY t, ord, file, line, idx) AS n
                  FROM ev_n e JOIN dest d ON d.addr = e.c_remote_address AND d.egress
                  WHERE kind = 'conn') d
                WHERE NOT sure OR n = 1""",
        ),
        (
            "seeds",
            """SELECT DISTINCT host, epid AS pid FROM need_ctx
               UNION SELECT DISTINCT host, epid AS pid FROM need_win""",
        ),
        (
            "senders",
            "SELECT DISTINCT host, epid AS pid FROM need_win",
        ),
        (
            "edges",
            """SELECT DISTINCT host, epid AS pid, eppid AS ppid FROM ev_n
               WHERE eppid IS NOT NULL""",
        ),
    ]


#: Ancestors and descendants are followed this many steps (the core's MAX_LINEAGE_DEPTH).
LINEAGE_DEPTH = 6
NON_LINEAGE = "(0, 1, 2)"


def closure_statements() -> list[tuple[str, str]]:
    """``matter(host, pid)``: readers and senders; senders' lineage to depth 6 and siblings."""
    out: list[tuple[str, str]] = [
        ("anc0", "SELECT host, pid FROM senders"),
        ("desc0", "SELECT host, pid FROM senders"),
    ]
    for k in range(1, LINEAGE_DEPTH + 1):
        out.append(
            (
                f"anc{k}",
                f"""SELECT DISTINCT e.host, e.ppid AS pid FROM anc{k - 1} a
                    JOIN edges e ON e.host = a.host AND e.pid = a.pid
                    WHERE e.ppid NOT IN {NON_LINEAGE}""",
            )
        )
        out.append(
            (
                f"desc{k}",
                f"""SELECT DISTINCT e.host, e.pid FROM desc{k - 1} d
                    JOIN edges e ON e.host = d.host AND e.ppid = d.pid""",
            )
        )
    parts = ["SELECT host, pid FROM seeds"]
    parts += [f"SELECT host, pid FROM anc{k}" for k in range(1, LINEAGE_DEPTH + 1)]
    parts += [f"SELECT host, pid FROM desc{k}" for k in range(1, LINEAGE_DEPTH + 1)]
    out.append(
        (
            # The core's osquery-rows pipeline: a reader exec'd within 1 s of the
            # sender or of one of its ancestors, under the same parent, and every
            # child of that parent exec'd within 1 s of the reader (the chain's
            # members, for the encoder/encryptor reasons). Kept: the children of
            # those parents with a fork/exec row within 1 s of a fork/exec row of
            # a reader child of the same parent (a superset: a process's exec
            # time is one of its exec rows' times, else its fork's).
            "sib_parents",
            f"""SELECT DISTINCT p.host, p.ppid FROM ({
                " UNION ".join(
                    ["SELECT host, pid FROM senders"]
                    + [f"SELECT host, pid FROM anc{k}" for k in range(1, LINEAGE_DEPTH + 1)]
                )
            }) s
                JOIN edges p ON p.host = s.host AND p.pid = s.pid
                WHERE p.ppid NOT IN {NON_LINEAGE}""",
        )
    )
    out.append(
        (
            "sib_kids",
            """SELECT e.host, e.epid AS pid, e.eppid AS ppid, e.t FROM ev_n e
               JOIN sib_parents p ON p.host = e.host AND p.ppid = e.eppid
               WHERE e.kind IN ('exec', 'fork')""",
        )
    )
    out.append(
        (
            "siblings",
            # The readers' own fork/exec rows first, then their parents' other
            # children with a row in the same second or the one before or after
            # (times are whole seconds, t an integer): an equi-join, as a busy
            # parent (cron, a CI runner) has thousands of children, and a band
            # join of them all was quadratic.
            """SELECT DISTINCT k.host, k.pid FROM (
                 SELECT DISTINCT s.host, s.ppid, s.t + o AS t
                 FROM sib_kids s
                 JOIN (SELECT DISTINCT host, epid AS pid FROM need_ctx) d
                   ON d.host = s.host AND d.pid = s.pid
                 CROSS JOIN (SELECT -1 AS o UNION ALL SELECT 0 UNION ALL SELECT 1) os) s
               JOIN sib_kids k ON k.host = s.host AND k.ppid = s.ppid AND k.t = s.t""",
        )
    )
    parts.append("SELECT host, pid FROM siblings")
    out.append(("matter", "SELECT DISTINCT host, pid FROM (" + " UNION ALL ".join(parts) + ") m"))
    return out


def final_statements() -> list[tuple[str, str]]:
    """``narrow``: the rows to feed (see :func:`narrowing_statements`)."""
    key = "file, line, idx"
    return [
        (
            "needed",
            f"""SELECT DISTINCT {key} FROM (
                  SELECT {key} FROM need_ctx UNION ALL SELECT {key} FROM need_win
                  UNION ALL SELECT {key} FROM need_dest) n""",
        ),
        (
            "narrow",
            f"""SELECT {key} FROM (
                  SELECT e.file, e.line, e.idx, e.kind, e.sure,
                    (n.file IS NOT NULL) AS need,
                    LAG(e.eppid) OVER w AS p_ppid, LAG(e.o_exe) OVER w AS p_exe,
                    LAG(e.o_uid) OVER w AS p_uid, LAG(e.o_auid) OVER w AS p_auid,
                    LAG(e.kind <> 'conn' OR e.sure) OVER w AS p_sure,
                    e.eppid, e.o_exe, e.o_uid, e.o_auid
                  FROM ev_n e
                  JOIN matter m ON m.host = e.host AND m.pid = e.epid
                  LEFT JOIN needed n ON n.file = e.file AND n.line = e.line AND n.idx = e.idx
                  WINDOW w AS (PARTITION BY e.host, e.epid
                               ORDER BY e.t, e.ord, e.file, e.line, e.idx)
                ) c
                -- a maybe-egress is never dropped (it is needed) and never stands as the
                -- previous event (Python may make no event of it)
                WHERE need OR kind IN ('exec', 'fork') OR (kind = 'conn' AND NOT sure)
                   OR NOT COALESCE(p_sure, FALSE)
                   -- a field the row leaves out (NULL, or no executable) changes nothing
                   OR NOT ((eppid IS NULL OR eppid IS NOT DISTINCT FROM p_ppid)
                           AND (o_exe = '' OR o_exe IS NOT DISTINCT FROM p_exe)
                           AND (o_uid IS NULL OR o_uid IS NOT DISTINCT FROM p_uid)
                           AND (o_auid IS NULL OR o_auid IS NOT DISTINCT FROM p_auid))
                UNION SELECT {key} FROM needed
                UNION SELECT e.file, e.line, e.idx FROM ev e
                  JOIN host_flags h ON e.host = h.host AND h.odd = 1""",
        ),
    ]


def feed_select(columns: Sequence[str], narrowed: bool) -> str:
    """The rows to feed, in log order (the feed sorts each host's events stably)."""
    cols = ", ".join(f"e.{c}" for c in columns)
    if not narrowed:
        return f"SELECT {cols} FROM ev e ORDER BY e.file, e.line, e.idx"
    return (
        f"SELECT {cols} FROM ev e JOIN narrow n"
        " ON n.file = e.file AND n.line = e.line AND n.idx = e.idx"
        " ORDER BY e.file, e.line, e.idx"
    )
