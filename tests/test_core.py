"""The test osquery core (readegress.testing.core): protocol fidelity over real Thrift.

Every test talks Thrift over real UNIX sockets. Extensions are served by
:class:`ExtensionRuntime` in-process (its own lifecycle is covered with real
subprocesses in test_runtime.py); raw registrations use :class:`ManagerClient`.
"""

from __future__ import annotations

import json
import math
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Optional

import pytest

from readegress.osquery import (
    ExtensionClient,
    ExtensionInfo,
    ExtensionRuntime,
    ManagerClient,
    OsqueryCallError,
)
from readegress.tables.base import BoundTable, TableCalls
from readegress.tables.context import EQUALS, QueryContext
from readegress.tables.spec import parse_spec
from readegress.testing import OsqueryCore
from readegress.testing.core import (
    c_strtod,
    c_strtoll,
    osquery_string,
    osquery_value,
    version_at_least,
)

CTX_SPEC = """
name = "ctx_table"
description = "A table that records the contexts it receives."
implementation = "tests:CtxTable"
examples = ["SELECT * FROM ctx_table WHERE pid = 1"]

[[columns]]
name = "pid"
type = "BIGINT"
description = "Indexed."
index = true

[[columns]]
name = "name"
type = "TEXT"
description = "No options (op 0)."

[[columns]]
name = "note"
type = "TEXT"
description = "Hidden."
hidden = true

[[columns]]
name = "uid"
type = "INTEGER"
description = "Additional."
additional = true

[[columns]]
name = "score"
type = "DOUBLE"
description = "No options (op 0)."
"""

TYPES_SPEC = """
name = "typed_values"
description = "Strings that osquery must convert per column type."
implementation = "tests:Typed"
examples = ["SELECT * FROM typed_values"]

[[columns]]
name = "label"
type = "TEXT"
description = "Which case."

[[columns]]
name = "i"
type = "INTEGER"
description = "INTEGER."

[[columns]]
name = "b"
type = "BIGINT"
description = "BIGINT."

[[columns]]
name = "u"
type = "UNSIGNED BIGINT"
description = "UNSIGNED BIGINT."

[[columns]]
name = "d"
type = "DOUBLE"
description = "DOUBLE."
"""


class CtxRow(NamedTuple):
    pid: int
    name: str
    note: str
    uid: Optional[int]
    score: Optional[float]


class CtxTable:
    row_type: type = CtxRow

    def __init__(self, rows: Iterable[CtxRow] = ()) -> None:
        self.rows = list(rows)
        self.contexts: list[QueryContext] = []
        self.before: Any = None

    def generate(self, ctx: QueryContext) -> list[CtxRow]:
        self.contexts.append(ctx)
        if self.before is not None:
            self.before()
        return self.rows


class TypedRow(NamedTuple):
    label: str
    i: Any
    b: Any
    u: Any
    d: Any


class Typed:
    row_type: type = TypedRow

    def __init__(self, rows: Iterable[TypedRow]) -> None:
        self.rows = list(rows)

    def generate(self, ctx: QueryContext) -> list[TypedRow]:
        return self.rows


ROWS = [
    CtxRow(1, "init", "n1", 0, 0.5),
    CtxRow(2, "kthreadd", "n2", 0, None),
    CtxRow(300, "sshd", "n3", 1000, 2.25),
]


def serve(
    core: OsqueryCore, *tables: BoundTable, name: str = "readegress", call_timeout: float = 5.0
) -> ExtensionRuntime:
    calls = TableCalls({t.name: t for t in tables}, timeout=call_timeout)
    rt = ExtensionRuntime(
        core.socket_path, calls, timeout=2.0, interval=0.2, name=name, max_connections=8
    )
    rt.start()
    assert rt.wait_registered(5.0)
    return rt


@pytest.fixture
def ctx_table() -> CtxTable:
    return CtxTable(ROWS)


@pytest.fixture
def extension(core: OsqueryCore, ctx_table: CtxTable) -> Iterator[ExtensionRuntime]:
    rt = serve(core, BoundTable(parse_spec(CTX_SPEC), ctx_table))
    yield rt
    rt.stop()
    rt.join(5.0)
    rt.calls.close()


def table_routes() -> list[dict[str, str]]:
    return parse_spec(CTX_SPEC).routes()


# -- manager API ---------------------------------------------------------------


def test_ping_options_and_builtin_tables(core: OsqueryCore) -> None:
    with ManagerClient(core.socket_path) as m:
        status = m.ping()
        assert (status.code, status.message, status.uuid) == (0, "pong", 0)
        options = m.options()
        assert options["extensions_socket"].value == core.socket_path
        assert options["extensions_default_index"].value == "true"
        assert options["extensions_default_index"].type == "bool"
        rows = m.query("SELECT value FROM osquery_flags WHERE name = 'extensions_socket'")
        assert rows == [{"value": core.socket_path}]
        core.set_flag("audit_fim_show_accesses", "true")
        flag = m.options()["audit_fim_show_accesses"]
        assert (flag.value, flag.default_value) == ("true", "false")
        assert m.query("SELECT name, type FROM osquery_extensions") == [
            {"name": "core", "type": "core"}
        ]


def test_register_lists_and_deregisters(core: OsqueryCore) -> None:
    with ManagerClient(core.socket_path) as m:
        info = ExtensionInfo("probe", "1.2.3", "5.0.0", "0.0.0")
        status = m.register_extension(info, {"table": {"probe_t": table_routes()}})
        assert status.ok and status.message == "OK"
        assert 1 <= status.uuid <= 0xFFFF
        assert m.extensions() == {status.uuid: info}
        assert core.registry_of(status.uuid)["table"]["probe_t"] == table_routes()
        rows = m.query("SELECT uuid, name, path, type FROM osquery_extensions WHERE uuid > 0")
        assert rows == [
            {
                "uuid": str(status.uuid),
                "name": "probe",
                "path": f"{core.socket_path}.{status.uuid}",
                "type": "extension",
            }
        ]
        assert m.deregister_extension(status.uuid).uuid == status.uuid
        assert m.extensions() == {}
        gone = m.deregister_extension(status.uuid)
        assert (gone.code, gone.message) == (1, "No extension UUID registered")
        with pytest.raises(OsqueryCallError, match="no such table: probe_t"):
            m.query("SELECT * FROM probe_t")


def test_duplicate_extension_name_is_refused(core: OsqueryCore) -> None:
    with ManagerClient(core.socket_path) as m:
        info = ExtensionInfo("twice", "1", "5.0.0", "0.0.0")
        assert m.register_extension(info, {"table": {"t1": table_routes()}}).ok
        second = m.register_extension(info, {"table": {"t2": table_routes()}})
        assert (second.code, second.message) == (1, "Duplicate extension registered")
        assert [i.name for i in m.extensions().values()] == ["twice"]


@pytest.mark.parametrize(
    ("sdk", "ok"),
    [
        ("1.7.6", False),
        ("1.6.9", False),
        ("0.9", False),
        ("1.7.7", True),
        ("5.0.0", True),
        ("0.0.0", True),
        ("", True),
        ("2", True),
    ],
)
def test_sdk_version_gate(core: OsqueryCore, sdk: str, ok: bool) -> None:
    with ManagerClient(core.socket_path) as m:
        status = m.register_extension(ExtensionInfo("sdk", "1", sdk, "0.0.0"), {})
        assert status.ok is ok
        if not ok:
            assert (status.code, status.message) == (1, "Incompatible extension SDK version")


@pytest.mark.parametrize(
    "registry",
    [
        {"nonsense": {"x": []}},
        {"table": {"no_columns": [{"id": "attributes", "attributes": "0"}]}},
        {"table": {"osquery_flags": table_routes()}},
        {"table": {"bad name": table_routes()}},
        {"table": {"dup_cols": table_routes() + table_routes()[:1]}},
    ],
    ids=["unknown-registry", "no-column-routes", "name-taken", "bad-name", "duplicate-column"],
)
def test_unattachable_broadcast_is_refused(core: OsqueryCore, registry: Any) -> None:
    with ManagerClient(core.socket_path) as m:
        status = m.register_extension(ExtensionInfo("bad", "1", "5.0.0", "0.0.0"), registry)
        assert (status.code, status.message) == (1, "Failed adding registry broadcast")
        assert m.extensions() == {}


def test_sql_errors_and_result_strings(core: OsqueryCore) -> None:
    with ManagerClient(core.socket_path) as m:
        with pytest.raises(OsqueryCallError, match="no such table: nope") as e:
            m.query("SELECT * FROM nope")
        assert e.value.code == 1
        with pytest.raises(OsqueryCallError, match="syntax error"):
            m.query("SELEKT 1")
        row = m.query("SELECT 1 AS i, 1.0 AS one, 0.1 AS tenth, NULL AS n, 'x' AS t")[0]
        assert row == {"i": "1", "one": "1.0", "tenth": "0.10000000000000001", "n": "", "t": "x"}
        # Several statements: every row keeps its own column names.
        assert m.query("SELECT 1 AS a; SELECT 2 AS b") == [{"a": "1"}, {"b": "2"}]
        assert m.query("   ") == []


# -- fixture tables -----------------------------------------------------------


def test_fixture_tables_grow_while_queried(core: OsqueryCore) -> None:
    events = core.add_table(
        "process_file_events",
        [
            ("operation", "TEXT"),
            ("pid", "BIGINT"),
            ("path", "TEXT"),
            ("time", "BIGINT"),
            ("eid", "TEXT", "hidden"),
        ],
        [{"operation": "open", "pid": "42", "path": "/etc/shadow", "time": 100, "eid": "1"}],
    )
    with ManagerClient(core.socket_path) as m:
        sql = "SELECT operation, pid, path FROM process_file_events WHERE time > 50"
        assert m.query(sql) == [{"operation": "open", "pid": "42", "path": "/etc/shadow"}]
        events.append({"operation": "read", "pid": 42, "path": "/etc/shadow", "time": 101})
        assert [r["operation"] for r in m.query(sql)] == ["open", "read"]
        assert m.query("SELECT eid FROM process_file_events WHERE time = 100") == [{"eid": "1"}]
        cols = m.get_query_columns("SELECT * FROM process_file_events")
        assert cols == [
            ("operation", "TEXT"),
            ("pid", "BIGINT"),
            ("path", "TEXT"),
            ("time", "BIGINT"),
        ]
    with pytest.raises(KeyError, match="no column"):
        events.append({"nope": 1})
    with pytest.raises(ValueError, match="already exists"):
        core.add_table("process_file_events", [("x", "TEXT")])
    events.replace([])
    assert core.query("SELECT count(*) AS n FROM process_file_events") == [{"n": "0"}]


def test_core_answers_call_for_its_own_tables(core: OsqueryCore) -> None:
    core.add_table("osq_t", [("pid", "BIGINT", "index"), ("name", "TEXT")], [{"pid": 7}])
    with ExtensionClient(core.socket_path) as c:
        status, routes = c.call("table", "osq_t", {"action": "columns"})
        assert status.ok
        assert routes == [
            {"id": "column", "name": "pid", "type": "BIGINT", "op": "1"},
            {"id": "column", "name": "name", "type": "TEXT", "op": "0"},
        ]
        status, rows = c.call("table", "osq_t", {"action": "generate", "context": ""})
        assert (status.ok, rows) == (True, [{"pid": "7", "name": ""}])
        status, _ = c.call("config", "nope", {})
        assert status.code == 1


# -- calls into extensions -----------------------------------------------------


def test_generate_context_shape(core: OsqueryCore, extension: ExtensionRuntime) -> None:
    core.clear_generate_calls()
    rows = core.query("SELECT pid, name FROM ctx_table WHERE pid = 1 AND note = 'n1'")
    assert rows == [{"pid": "1", "name": "init"}]
    (call,) = core.generate_calls
    assert call.table == "ctx_table" and call.uuid == extension.uuid
    assert call.request["action"] == "generate"
    context = call.context
    # An entry for every column, ordered by name as osquery's std::map is;
    # unconstrained lists are the string "" (boost-era osquery's quirk).
    assert context["constraints"] == [
        {"name": "name", "list": "", "affinity": "TEXT"},
        {"name": "note", "list": "", "affinity": "TEXT"},
        {"name": "pid", "list": [{"op": 2, "expr": "1"}], "affinity": "BIGINT"},
        {"name": "score", "list": "", "affinity": "DOUBLE"},
        {"name": "uid", "list": "", "affinity": "INTEGER"},
    ]
    # The hidden column is used by the WHERE clause but not pushed down.
    assert context["colsUsed"] == ["pid", "name", "note"]
    assert context["colsUsedBitset"] == 0b00111  # pid, name, note: columns 0-2


def test_generate_context_with_empty_lists_as_arrays(sock: str, ctx_table: CtxTable) -> None:
    with OsqueryCore(sock, empty_list_as_string=False) as core:
        rt = serve(core, BoundTable(parse_spec(CTX_SPEC), ctx_table))
        try:
            assert len(core.query("SELECT * FROM ctx_table")) == 3
            lists = [c["list"] for c in core.generate_calls[-1].context["constraints"]]
            assert lists == [[], [], [], [], []]
            assert ctx_table.contexts[-1].constraints == ()
        finally:
            rt.stop()
            rt.join(5.0)


def test_in_list_arrives_as_one_call_per_value(
    core: OsqueryCore, extension: ExtensionRuntime, ctx_table: CtxTable
) -> None:
    core.clear_generate_calls()
    rows = core.query("SELECT pid FROM ctx_table WHERE pid IN (1, 300) AND uid >= 0")
    # The table ignores its constraints; SQLite re-checks them on the rows.
    assert sorted(r["pid"] for r in rows) == ["1", "300"]
    pushed = [c.constraints() for c in core.generate_calls]
    assert [p["pid"] for p in pushed] == [[(EQUALS, "1")], [(EQUALS, "300")]]
    assert all(p["uid"] == [(32, "0")] for p in pushed)
    assert [c.int_equals("pid") for c in ctx_table.contexts[-2:]] == [
        frozenset({1}),
        frozenset({300}),
    ]


def test_default_index_pushes_op0_columns_but_no_text_ranges(
    core: OsqueryCore, extension: ExtensionRuntime
) -> None:
    core.clear_generate_calls()
    core.query("SELECT pid FROM ctx_table WHERE name = 'sshd' AND score > 1")
    pushed = core.generate_calls[-1].constraints()
    assert pushed["name"] == [(EQUALS, "sshd")]
    assert pushed["score"] == [(4, "1")]
    core.query("SELECT pid FROM ctx_table WHERE name > 'a' AND name LIKE 's%'")
    pushed = core.generate_calls[-1].constraints()
    assert pushed["name"] == [(65, "s%")]  # LIKE yes, > on TEXT never


def test_without_default_index_op0_columns_get_no_constraints(
    sock: str, ctx_table: CtxTable
) -> None:
    with OsqueryCore(sock, extensions_default_index=False) as core:
        rt = serve(core, BoundTable(parse_spec(CTX_SPEC), ctx_table))
        try:
            rows = core.query("SELECT pid FROM ctx_table WHERE name = 'sshd' AND pid > 0")
            assert rows == [{"pid": "300"}]
            pushed = core.generate_calls[-1].constraints()
            assert pushed["name"] == []
            assert pushed["pid"] == [(4, "0")]
        finally:
            rt.stop()
            rt.join(5.0)


def test_extension_strings_are_converted_like_osquery(core: OsqueryCore) -> None:
    typed = Typed(
        [
            TypedRow("prefixes", "0x10", "010", "12abc", " 2.5"),
            TypedRow("junk", "abc", "", "-", "2.5 "),
            TypedRow("wrap", "4294967297", "9223372036854775808", "-1", "1e3"),
            TypedRow("none", None, True, False, "inf"),
        ]
    )
    rt = serve(core, BoundTable(parse_spec(TYPES_SPEC), typed))
    try:
        got = {
            r["label"]: r
            for r in core.query(
                "SELECT label, i, typeof(i) ti, b, typeof(b) tb, u, d, typeof(d) td "
                "FROM typed_values"
            )
        }
        assert got["prefixes"] == {
            **got["prefixes"],
            **{"i": "16", "b": "8", "u": "12", "d": "2.5", "ti": "integer", "td": "real"},
        }
        assert (got["junk"]["i"], got["junk"]["ti"]) == ("", "null")
        assert (got["junk"]["b"], got["junk"]["tb"]) == ("", "null")
        assert (got["junk"]["u"], got["junk"]["d"]) == ("", "")
        # INTEGER keeps the low 32 bits; BIGINT overflow is NULL.
        assert (got["wrap"]["i"], got["wrap"]["b"]) == ("1", "")
        assert (got["wrap"]["u"], got["wrap"]["d"]) == ("-1", "1000.0")
        # The extension sends None as "" (NULL) and booleans as "1"/"0".
        assert (got["none"]["ti"], got["none"]["b"], got["none"]["u"]) == ("null", "1", "0")
        assert got["none"]["d"] == "inf.0"
    finally:
        rt.stop()
        rt.join(5.0)


def test_failing_extension_fails_the_query_with_its_message(
    core: OsqueryCore, extension: ExtensionRuntime, ctx_table: CtxTable
) -> None:
    def boom() -> None:
        raise RuntimeError("kaput")

    ctx_table.before = boom
    with ManagerClient(core.socket_path) as m:
        with pytest.raises(OsqueryCallError, match=r"ctx_table: RuntimeError: kaput") as e:
            m.query("SELECT * FROM ctx_table")
        assert e.value.code == 1
        ctx_table.before = None
        assert len(m.query("SELECT * FROM ctx_table")) == 3
    assert core.generate_calls[-2].status.code == 1


def test_extension_querying_the_core_from_a_table_call(
    core: OsqueryCore, extension: ExtensionRuntime, ctx_table: CtxTable
) -> None:
    # A table that reads osquery's own tables while osquery scans it must not
    # deadlock: the nested query gets a transient database, as in osquery.
    core.add_table("processes", [("pid", "BIGINT"), ("name", "TEXT")], [{"pid": 1, "name": "x"}])
    nested: list[list[dict[str, str]]] = []
    ctx_table.before = lambda: nested.append(extension.manager.query("SELECT * FROM processes"))
    rows = core.query("SELECT pid FROM ctx_table WHERE pid = 1")
    assert rows == [{"pid": "1"}]
    assert nested == [[{"pid": "1", "name": "x"}]]


def test_concurrent_queries_share_one_manager_client(
    core: OsqueryCore, extension: ExtensionRuntime
) -> None:
    errors: list[BaseException] = []
    with ManagerClient(core.socket_path, max_idle=4) as m:

        def worker() -> None:
            try:
                for _ in range(15):
                    assert len(m.query("SELECT pid FROM ctx_table")) == 3
                    assert m.ping().ok
            except BaseException as e:  # collected, asserted below
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == []


def test_manager_client_survives_a_core_restart(core: OsqueryCore) -> None:
    with ManagerClient(core.socket_path) as m:
        assert m.ping().ok
        core.restart()
        assert m.ping().ok  # the pooled connection died; a fresh one is used


# -- lifecycle -----------------------------------------------------------------


def test_watcher_drops_extensions_that_stop_answering(sock: str) -> None:
    core = OsqueryCore(sock, watch_interval=0.2, extensions_timeout=0.3)
    with core, ManagerClient(core.socket_path) as m:
        status = m.register_extension(
            ExtensionInfo("ghost", "1", "5.0.0", "0.0.0"),
            {"table": {"ghost_t": table_routes()}},
        )
        assert status.ok
        deadline = time.monotonic() + 5
        while m.extensions() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert m.extensions() == {}
        with pytest.raises(OsqueryCallError, match="no such table"):
            m.query("SELECT * FROM ghost_t")


def test_restart_forgets_extensions_keeps_fixtures_and_clears_stale_sockets(
    core: OsqueryCore,
) -> None:
    core.add_table("kept", [("x", "INTEGER")], [{"x": 1}])
    stale = f"{core.socket_path}.4242"
    import socket as socketlib

    s = socketlib.socket(socketlib.AF_UNIX)
    s.bind(stale)
    s.close()
    other = f"{core.socket_path}.notes"
    with open(other, "w") as f:
        f.write("not a socket")
    with ManagerClient(core.socket_path) as m:
        assert m.register_extension(ExtensionInfo("gone", "1", "5.0.0", "0.0.0"), {}).ok
    core.stop()
    assert not os.path.exists(core.socket_path)
    core.start()
    assert core.extensions() == {}
    assert core.query("SELECT x FROM kept") == [{"x": "1"}]
    assert not os.path.exists(stale)
    assert os.path.exists(other)
    assert stat.S_ISSOCK(os.lstat(core.socket_path).st_mode)
    assert stat.S_IMODE(os.lstat(core.socket_path).st_mode) == 0o600


def test_stop_with_shutdown_tells_extensions(sock: str, ctx_table: CtxTable) -> None:
    core = OsqueryCore(sock).start()
    rt = serve(core, BoundTable(parse_spec(CTX_SPEC), ctx_table))
    core.stop(shutdown_extensions=True)
    assert rt.join(5.0) == 0


# -- conversions, unit level ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("  -7", -7),
        ("+0x1F", 31),
        ("0x", 0),
        ("017", 15),
        ("09", 0),
        ("12abc", 12),
        ("abc", None),
        ("", None),
        ("-", None),
        ("9223372036854775807", (1 << 63) - 1),
        ("9223372036854775808", None),
    ],
)
def test_c_strtoll(text: str, value: Optional[int]) -> None:
    assert c_strtoll(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2.5", 2.5),
        ("  1e3", 1000.0),
        (".5", 0.5),
        ("0x1p4", 16.0),
        ("-inf", -math.inf),
        ("2.5 ", None),
        ("1e", None),
        ("1_0", None),
        ("", None),
        ("x", None),
    ],
)
def test_c_strtod(text: str, value: Optional[float]) -> None:
    assert c_strtod(text) == value


def test_value_and_string_conversions() -> None:
    assert osquery_value("4294967297", "INTEGER") == 1
    assert osquery_value("", "BIGINT") is None
    assert osquery_value("7", "TEXT") == "7"
    assert osquery_value(7, "TEXT") == "7"
    assert osquery_value("7", "WEIRD") is None
    assert math.isnan(c_strtod("nan") or 0.0)
    assert [osquery_string(v) for v in (None, 3, 2.0, 1e20, b"ab", "s")] == [
        "",
        "3",
        "2.0",
        "1e+20.0",
        "ab",
        "s",
    ]
    assert version_at_least("1.7.7", "1.8") and not version_at_least("1.7.7", "1.7.6")
    assert version_at_least("1.7.7", "1.7.7-12-gdeadbeef")


def test_generate_call_log_is_json(core: OsqueryCore, extension: ExtensionRuntime) -> None:
    core.query("SELECT pid FROM ctx_table")
    request = core.generate_calls[-1].request
    assert set(request) == {"action", "context"}
    assert isinstance(json.loads(request["context"]), dict)
