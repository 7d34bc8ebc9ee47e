"""The compiled accelerator (readegress._speedups) against its pure-Python twins.

Every compiled function is run next to the Python code it replaces, on the
same input: real kernel data (sock_diag replies of real loopback sockets, this
process's /proc fd directory, a real monitor poll, real socket_bytes rows) and,
for the parsers of outside bytes and values, hypothesis-generated random,
truncated and hostile input. Same results or the same clean error, never a
crash or a read past the buffer.

Where the module was not built (no compiler), the parity tests skip with that
reason, unless ``READEGRESS_REQUIRE_SPEEDUPS=1`` (CI sets it) makes that a
failure; the pure-Python paths run either way (the rest of the suite).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Optional

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loopback
from readegress import speedups
from readegress.kernel import monitor as monitor_mod
from readegress.kernel import sockdiag
from readegress.kernel.monitor import SocketMonitor
from readegress.kernel.procfs import SocketInodeMap
from readegress.kernel.records import SocketInfo
from readegress.kernel.sockdiag import SockDiag, SockDiagError
from readegress.sql import engine as engine_mod
from readegress.sql.engine import Engine, affinity
from readegress.sql.local import LocalSource
from readegress.tables.base import BoundTable, TableCalls, TableEnv
from readegress.tables.context import QueryContext
from readegress.tables.socket_bytes import SocketBytesTable
from readegress.tables.spec import load_specs

native = speedups.native
if native is None and os.environ.get("READEGRESS_REQUIRE_SPEEDUPS") == "1":  # pragma: no cover
    raise RuntimeError(
        "READEGRESS_REQUIRE_SPEEDUPS=1 but readegress._speedups is not built"
        " (apt-get install gcc python3-dev, then reinstall)"
    )
needs_native = pytest.mark.skipif(
    native is None,
    reason="readegress._speedups not built here (no C compiler or Python headers)"
    " or READEGRESS_PURE set: only the pure-Python paths run",
)
pytestmark = needs_native


# -- sock_diag replies ---------------------------------------------------------


class Parsed(NamedTuple):
    records: list[SocketInfo]
    outcome: object  # True/False (done) or (error class, errno, message)


def _parse(parser: Any, data: bytes, seq: int, protocol: int) -> Parsed:
    buf = bytearray(data)
    out: list[SocketInfo] = []
    try:
        done = parser(buf, memoryview(buf), len(buf), seq, protocol, out)
    except SockDiagError as e:
        return Parsed(out, (type(e).__name__, e.errno, str(e)))
    return Parsed(out, bool(done))


def _both(diag: SockDiag, data: bytes, seq: int, protocol: int) -> tuple[Parsed, Parsed]:
    return (
        _parse(diag._parse_dump, data, seq, protocol),
        _parse(diag._parse_dump_native, data, seq, protocol),
    )


def _raw_dump(diag: SockDiag, msgtype: int, body: bytes) -> tuple[int, list[bytes]]:
    """One dump request; every reply recv kept as bytes (the parsers' real input)."""
    diag._seq = seq = diag._seq + 1
    diag.sock.send(
        sockdiag._NLH.pack(
            16 + len(body), msgtype, sockdiag.NLM_F_REQUEST | sockdiag.NLM_F_DUMP, seq, 0
        )
        + body
    )
    chunks: list[bytes] = []
    buf = bytearray(sockdiag.RECV_BUFFER)
    for _ in range(100_000):
        n = diag.sock.recv_into(buf)
        chunks.append(bytes(buf[:n]))
        probe: list[SocketInfo] = []
        if diag._parse_dump(
            bytearray(chunks[-1]), memoryview(bytearray(chunks[-1])), n, seq, 6, probe
        ):
            return seq, chunks
    raise AssertionError("the dump never finished")


@pytest.fixture
def diag() -> Iterator[SockDiag]:
    with SockDiag() as d:
        yield d


@pytest.fixture
def connections() -> Iterator[None]:
    """Real loopback connections of both families with bytes both ways, and a UDP socket."""
    with (
        loopback.server(socket.AF_INET) as s4,
        loopback.client(s4) as c4,
        loopback.server(socket.AF_INET6) as s6,
        loopback.client(s6) as c6,
    ):
        c4.send(70_000)
        c6.send(3_000)
        s4.wait_received(70_000)
        s6.wait_received(3_000)
        c4.command("udp")
        c4.expect("UDP")
        yield


def test_dump_replies_parse_the_same_in_c_and_python(diag: SockDiag, connections: None) -> None:
    req = sockdiag._REQ_V1.pack(
        0, 0, 0, 1 << (sockdiag.INET_DIAG_INFO - 1), sockdiag.TCP_STATES_DUMPED, 0
    )
    seq, chunks = _raw_dump(diag, sockdiag.TCPDIAG_GETSOCK, req)
    total = 0
    for chunk in chunks:
        py, c = _both(diag, chunk, seq, socket.IPPROTO_TCP)
        assert c == py
        assert all(type(r) is SocketInfo for r in c.records)
        total += len(c.records)
    assert total >= 4  # both connections, both ends
    udp = sockdiag._REQ_V2.pack(socket.AF_INET, socket.IPPROTO_UDP, 0, sockdiag.UDP_STATES_DUMPED)
    seq, chunks = _raw_dump(diag, sockdiag.SOCK_DIAG_BY_FAMILY, udp)
    for chunk in chunks:
        py, c = _both(diag, chunk, seq, socket.IPPROTO_UDP)
        assert c == py
        assert all(r.bytes_sent is None for r in c.records)


def test_a_reply_cut_anywhere_parses_the_same(diag: SockDiag, connections: None) -> None:
    req = sockdiag._REQ_V1.pack(
        0, 0, 0, 1 << (sockdiag.INET_DIAG_INFO - 1), sockdiag.TCP_STATES_DUMPED, 0
    )
    seq, chunks = _raw_dump(diag, sockdiag.TCPDIAG_GETSOCK, req)
    chunk = max(chunks, key=len)
    for cut in range(0, min(len(chunk), 900)):
        py, c = _both(diag, chunk[:cut], seq, socket.IPPROTO_TCP)
        assert c == py, cut


def test_whole_dumps_through_each_parser_agree(diag: SockDiag, connections: None) -> None:
    diag.parse_dump = diag._parse_dump
    py = {s.cookie: s for s in diag.dump_all()}
    diag.parse_dump = diag._parse_dump_native
    c = {s.cookie: s for s in diag.dump_all()}
    common = py.keys() & c.keys()
    assert len(common) >= 5
    # Counters and timers may move between the two dumps; what a socket is may not.
    assert [py[k][:11] for k in sorted(common)] == [c[k][:11] for k in sorted(common)]


def _message(
    seq: int,
    typ: int,
    family: int,
    attrs: Sequence[tuple[int, bytes]],
    body: bytes,
    declared: Optional[int],
) -> bytes:
    msg = body.ljust(72, b"\0")[:72]
    msg = bytes([family]) + msg[1:]
    for atype, payload in attrs:
        alen = 4 + len(payload)
        msg += struct.pack("=HH", alen, atype) + payload + b"\0" * (-alen % 4)
    ln = 16 + len(msg) if declared is None else declared
    return struct.pack("=IHHII", ln & 0xFFFFFFFF, typ, 2, seq, 0) + msg


_attr = st.tuples(
    st.sampled_from([1, 2, 2, 2, 4, 10, 16, 0]),
    st.one_of(
        st.binary(max_size=300),
        st.binary(min_size=216, max_size=260),
        st.builds(lambda n: os.urandom(n), st.integers(0, 240)),
    ),
)
_messages = st.lists(
    st.builds(
        _message,
        seq=st.sampled_from([7, 7, 7, 8]),
        typ=st.sampled_from([20, 20, 18, 2, 3, 1]),
        family=st.sampled_from([2, 10, 0, 255]),
        attrs=st.lists(_attr, max_size=4),
        body=st.binary(min_size=0, max_size=72),
        declared=st.one_of(st.none(), st.integers(0, 600), st.just(0xFFFFFFFF)),
    ),
    max_size=5,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=_messages,
    tail=st.binary(max_size=40),
    cut=st.one_of(st.none(), st.integers(0, 2000)),
    protocol=st.sampled_from([socket.IPPROTO_TCP, socket.IPPROTO_UDP]),
)
def test_hostile_replies_give_the_same_records_or_the_same_error(
    parts: list[bytes], tail: bytes, cut: Optional[int], protocol: int
) -> None:
    with SockDiag() as d:
        data = b"".join(parts) + tail
        if cut is not None:
            data = data[:cut]
        py, c = _both(d, data, 7, protocol)
        assert c == py
        if isinstance(c.outcome, tuple):
            assert c.outcome[0] == "SockDiagError"


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=1500), seq=st.integers(0, 2**32 - 1))
def test_random_bytes_give_the_same_records_or_the_same_error(data: bytes, seq: int) -> None:
    with SockDiag() as d:
        py, c = _both(d, data, seq, socket.IPPROTO_TCP)
        assert c == py


def test_an_error_reply_too_short_for_its_code_is_malformed_in_both() -> None:
    with SockDiag() as d:
        short = struct.pack("=IHHII", 16, 2, 0, 7, 0)  # NLMSG_ERROR without the code
        py, c = _both(d, short, 7, socket.IPPROTO_TCP)
        assert c == py
        assert c.outcome == (
            "SockDiagError",
            errno.EPROTO,
            "[Errno 71] malformed netlink message (len 16)",
        )
        # An error code no C int negates: a clean error too.
        weird = struct.pack("=IHHIIi", 20, 2, 0, 7, 0, -(2**31))
        py, c = _both(d, weird, 7, socket.IPPROTO_TCP)
        assert c == py and c.outcome[1] == 2**31  # type: ignore[index]


def test_the_parser_refuses_an_end_beyond_its_buffer() -> None:
    assert native is not None
    with pytest.raises(ValueError, match="end outside"):
        native.parse_dump(b"\0" * 16, 17, 0, 6, [], SocketInfo)


# -- /proc fd map, poll loop, rows --------------------------------------------


def test_fd_map_reads_the_same_owners_through_c_and_python() -> None:
    held = [socket.socket() for _ in range(40)]
    files = [os.open(os.devnull, os.O_RDONLY) for _ in range(5)]
    try:
        maps = []
        for use_c in (False, True):
            m = SocketInodeMap()
            m.native_links = use_c
            m.refresh()
            mine = {
                ino: holders
                for ino, holders in m.owners.items()
                if any(ident.pid == os.getpid() for ident, _ in holders)
            }
            fds = m._procs[os.getpid()].fds
            maps.append((mine, dict(fds), m.readlinks > 0))
        (py_owners, py_fds, _), (c_owners, c_fds, _) = maps
        assert c_owners == py_owners
        assert {os.fstat(s.fileno()).st_ino for s in held[:40]} <= c_owners.keys()
        # The descriptors of this process as both read them (fds opened in between aside).
        common = py_fds.keys() & c_fds.keys()
        assert len(common) >= 45 and all(py_fds[n] == c_fds[n] for n in common)
    finally:
        for h in held:
            h.close()
        for f in files:
            os.close(f)


def test_a_poll_observes_the_same_sockets_through_c_and_python(connections: None) -> None:
    with SocketMonitor(destroy_listener=False) as m:
        m.snapshot()  # a previous poll: owners reused, first_seen kept
        with SockDiag() as d:
            dumps = [(m._diags.own, d.dump_all())]
        uids = {s.inode: s.uid for _, socks in dumps for s in socks if s.inode}
        m.fdmap.refresh(uids.keys(), uids)
        now = m.clock()
        for reuse in (True, False):
            results = []
            for use_c in (True, False):
                m._reuse_owners = reuse
                m.native_observe = use_c
                results.append(m._observe(dumps, now))
            (c_obs, c_seen, c_unres), (py_obs, py_seen, py_unres) = results
            assert c_obs == py_obs and c_seen == py_seen and c_unres == py_unres
            assert any(o.owners for o in c_obs)
        m._seen = {}  # a first poll
        m.native_observe = True
        c_first = m._observe(dumps, now)
        m.native_observe = False
        assert c_first == m._observe(dumps, now)


def test_observe_keeps_an_integer_clock_value_as_first_seen(connections: None) -> None:
    with SocketMonitor(destroy_listener=False, clock=lambda: 1_800_000_000) as m:
        for use_c in (True, False):
            m.native_observe = use_c
            m._seen = {}
            snap = m._poll()
            assert {type(o.first_seen) for o in snap.sockets} == {int}


def test_socket_bytes_rows_are_the_same_through_c_and_python(connections: None) -> None:
    env = TableEnv()
    try:
        snap = env.snapshot()
        env.snapshot = lambda: snap  # type: ignore[method-assign]
        table = SocketBytesTable(env)
        rows = {}
        for use_c in (True, False):
            table.native = use_c
            rows[use_c] = list(table.generate(QueryContext.of(())))
        assert rows[True] == rows[False]
        assert [tuple(map(type, r)) for r in rows[True]] == [
            tuple(map(type, r)) for r in rows[False]
        ]
        assert {r.direction for r in rows[True]} >= {"listen", "inbound", "outbound"}
        assert any(r.pid == os.getpid() or r.pid for r in rows[True])
    finally:
        env.close()


# -- SQLite values and JSON ----------------------------------------------------

_kinds = st.sampled_from(["i", "t", "r", "b", "n"])
_value = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(["\udcff", "a\ud800b", "é"]),
    st.integers(-(2**64), 2**64),
    st.integers(-5, 5),
    st.text(max_size=12),
    st.floats(allow_nan=True),
    st.sampled_from([0.0, -0.0, 1.5, float("nan"), float("inf")]),
    st.binary(max_size=4),
)


@st.composite
def _table(draw: st.DrawFn) -> tuple[bytes, list[tuple[Any, ...]]]:
    kinds = draw(st.lists(_kinds, min_size=1, max_size=5))
    # Mostly well-typed columns (the fast path), some hostile values.
    typed = {
        "i": st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1)),
        "t": st.one_of(st.none(), st.text(max_size=12)),
        "r": st.one_of(st.none(), st.floats(allow_nan=False).filter(lambda f: f != 0.0)),
        "b": st.none(),
        "n": st.none(),
    }
    row = st.tuples(
        *[st.one_of(typed[k], _value) if draw(st.booleans()) else typed[k] for k in kinds]
    )
    rows = draw(st.lists(row, max_size=6))
    return "".join(kinds).encode(), rows


def _sqlite_reference(kinds: bytes, rows: list[tuple[Any, ...]]) -> Optional[list[tuple[Any, ...]]]:
    """What SQLite hands back from a table of these column affinities."""
    types = {"i": "INTEGER", "t": "TEXT", "r": "REAL", "b": "BLOB", "n": "NUMERIC"}
    db = apsw.Connection(":memory:")
    cols = ", ".join(f"c{j} {types[chr(k)]}" for j, k in enumerate(kinds))
    db.execute(f"CREATE TABLE t({cols})")
    try:
        db.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(kinds))})", rows)
    except (OverflowError, apsw.Error, TypeError, UnicodeEncodeError):
        return None
    return list(db.execute("SELECT * FROM t"))


def _same(a: Any, b: Any) -> bool:
    """Equal with types (1 and True differ; NaN is never handed back)."""
    return type(a) is type(b) and repr(a) == repr(b)


@settings(max_examples=400, deadline=None)
@given(table=_table())
def test_sqlite_rows_match_python_and_what_sqlite_hands_back(
    table: tuple[bytes, list[tuple[Any, ...]]],
) -> None:
    kinds, rows = table
    assert native is not None
    c = native.sqlite_rows(rows, kinds)
    py = engine_mod._sqlite_rows_py(rows, kinds)
    assert (c is None) == (py is None)
    if c is None or py is None:
        return
    assert all(_same(x, y) for rc, rp in zip(c, py) for x, y in zip(rc, rp)) and len(c) == len(py)
    ref = _sqlite_reference(kinds, rows)
    assert ref is not None
    assert all(_same(x, y) for rc, rr in zip(c, ref) for x, y in zip(rc, rr)) and len(c) == len(ref)


@settings(max_examples=300, deadline=None)
@given(
    table=_table(),
    extra=st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=20),
)
def test_json_lines_are_byte_for_byte_what_sqlite_writes(
    table: tuple[bytes, list[tuple[Any, ...]]], extra: str
) -> None:
    kinds, rows = table
    kinds += b"t"
    rows = [(*r, extra) for r in rows]
    names = [f"c{j}" if j % 2 else f'k"{j}\\\n' for j in range(len(kinds))]
    assert native is not None
    got = native.json_lines(names, rows, kinds)
    converted = engine_mod._sqlite_rows_py(rows, kinds)
    if got is None:
        return  # declined: the caller lets SQLite encode (floats, surrogates, conversions)
    assert converted is not None
    db = apsw.Connection(":memory:")
    pairs = ", ".join(f"?{2 * j + 1}, ?{2 * j + 2}" for j in range(len(names)))
    want = "".join(
        db.execute(
            f"SELECT json_object({pairs})",
            [x for pair in zip(names, r) for x in pair],
        ).fetchall()[0][0]
        + "\n"
        for r in converted
    )
    assert got == want.encode()


def test_json_lines_decline_floats_and_lone_surrogates() -> None:
    assert native is not None
    assert native.json_lines(["x"], [(1.5,)], b"r") is None
    assert native.json_lines(["x"], [("\udcff",)], b"t") is None
    assert native.json_lines(["x"], [(2**63,)], b"i") is None
    assert native.json_lines(["x"], [(True,), (None,)], b"i") == b'{"x":1}\n{"x":null}\n'


# -- the engine's full scans ---------------------------------------------------


class Captured:
    """socket_bytes rows captured once from the real table, served again and again."""

    row_type = SocketBytesTable.row_type
    rows: list[Any] = []

    def __init__(self, env: TableEnv) -> None:
        pass

    def generate(self, ctx: QueryContext) -> Iterator[tuple[Any, ...]]:
        yield from self.rows


@pytest.fixture
def captured_engine(connections: None) -> Iterator[Engine]:
    env = TableEnv()
    try:
        Captured.rows = list(SocketBytesTable(env).generate(QueryContext.of(())))
    finally:
        env.close()
    table = BoundTable(load_specs()["socket_bytes"], Captured(TableEnv()))
    calls = TableCalls({"socket_bytes": table}, timeout=10)
    e = Engine(bulk=True)
    e.register(LocalSource(table, calls))
    yield e
    calls.close()
    e.close()


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
def test_a_full_scan_answers_what_sqlite_answers(
    captured_engine: Engine, pure: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = captured_engine
    if pure:
        monkeypatch.setattr(engine_mod, "_native", None)
        monkeypatch.setattr(engine_mod, "sqlite_rows", engine_mod._sqlite_rows_py)
    names, rows = e.query("SELECT * FROM socket_bytes")
    assert e.last_direct == ("socket_bytes",)
    # The same statement through SQLite (a trailing clause keeps it off the direct path).
    ref_names, ref_rows = e.query("SELECT * FROM socket_bytes WHERE 1")
    assert e.last_direct == ()
    assert names == ref_names
    assert len(rows) == len(ref_rows) == len(Captured.rows) >= 4
    assert all(_same(x, y) for r, q in zip(rows, ref_rows) for x, y in zip(r, q))
    assert all(type(r) is tuple for r in rows)
    data = e.query_json_utf8('select *  from "SOCKET_BYTES" ;')
    assert data is not None
    assert e.last_direct == (() if pure else ("socket_bytes",))
    ref = e.query_json("SELECT * FROM socket_bytes WHERE 1")
    assert ref is not None
    assert data.decode() == "".join(line + "\n" for line in ref)
    assert json.loads(ref[0]).keys() == set(names)


def test_full_scans_that_sqlite_must_convert_go_through_sqlite(captured_engine: Engine) -> None:
    e = captured_engine
    Captured.rows = [r._replace(state=7) for r in Captured.rows[:3]]  # an int in a TEXT column
    names, rows = e.query("SELECT * FROM socket_bytes")
    assert e.last_direct == () and e.last_bulk == ("socket_bytes",)
    assert {r[names.index("state")] for r in rows} == {"7"}  # SQLite's conversion, as before
    data = e.query_json_utf8("SELECT * FROM socket_bytes")
    assert data is not None and b'"state":"7"' in data


def test_affinity_follows_sqlite_rules() -> None:
    assert [affinity(t) for t in ("BIGINT", "UNSIGNED BIGINT", "TEXT", "DOUBLE", "", "BLOB")] == [
        "i",
        "i",
        "t",
        "r",
        "b",
        "b",
    ]
    assert affinity("DECIMAL") == "n" and affinity("VARCHAR(3)") == "t"


# -- the switch ----------------------------------------------------------------


@pytest.mark.parametrize("value,pure", [("1", True), ("0", False), ("", False)])
def test_readegress_pure_forces_the_python_paths(value: str, pure: bool) -> None:
    env = {**os.environ, speedups.PURE_ENV: value}
    code = (
        "from readegress import speedups;"
        "from readegress.kernel.sockdiag import SockDiag;"
        "d = SockDiag();"
        "print(speedups.native is None, d.parse_dump.__name__)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == (
        ["True", "_parse_dump"] if pure else ["False", "_parse_dump_native"]
    )


def test_the_monitor_module_uses_the_accelerator_by_default() -> None:
    assert monitor_mod._native is native
    with SocketMonitor(destroy_listener=False) as m:
        assert m.native_observe and m.fdmap.native_links


# -- permission-held opens -----------------------------------------------------

_META = struct.Struct("=IBBHQii")


def _perm_record(mask: int, fd: int, pid: int, extra: bytes = b"") -> bytes:
    return _META.pack(24 + len(extra), 3, 0, 24, mask, fd, pid) + extra


_TABLE = 64 + 4096 * 32


def _wait_over_socketpair(
    data: bytes, table: bytearray, then_stop: bool = True
) -> tuple[tuple[bytes, int, bool], bytes]:
    """perm_wait reading ``data`` from one end of a socketpair (the "group"); the
    responses it writes come out of the other end. A stop pipe made readable
    beforehand (``then_stop``) ends a wait that answered everything."""
    assert native is not None
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stop_r, stop_w = os.pipe()
    try:
        with a, b:
            b.send(data)
            got = native.perm_wait(a.fileno(), stop_r, 4096, os.getpid(), table, 1.0)
            if then_stop and not got[2] and not got[0]:
                raise AssertionError("returned without records and without stop")
            b.setblocking(False)
            answers = b""
            with contextlib.suppress(BlockingIOError):
                while True:
                    answers += b.recv(64)
    finally:
        os.close(stop_r)
        os.close(stop_w)
    return got, answers


def test_perm_wait_allows_remembered_repeats_and_passes_the_rest_on() -> None:
    assert native is not None
    table = bytearray(_TABLE)
    repeat = os.open(os.devnull, os.O_RDONLY)
    other = os.open("/proc/self/stat", os.O_RDONLY)
    st = os.fstat(repeat)
    pid = os.getpid() + 1  # an opener other than this process
    native.perm_remember(table, pid, st.st_dev, st.st_ino, time.monotonic())
    try:
        first = _perm_record(0x10000, other, pid)  # not remembered: Python's
        again = _perm_record(0x10000, repeat, pid)  # remembered: allowed here
        notify = _perm_record(0x20, other, pid)  # not a permission event
        mine = _perm_record(0x10000, other, os.getpid())  # this process's own open
        (rest, read_ns, stopped), answers = _wait_over_socketpair(
            first + again + notify + mine, table
        )
        assert not stopped and read_ns > 0
        assert rest == first + notify + mine
        assert answers == struct.pack("=iI", repeat, 1)
        assert struct.unpack_from("=QQ", table)[0] == 1  # the counter stats() reads
        with pytest.raises(OSError):
            os.fstat(repeat)  # closed by perm_wait, as the Python path closes it
        # Past the window: no longer a repeat.
        repeat = os.open(os.devnull, os.O_RDONLY)
        native.perm_remember(table, pid, st.st_dev, st.st_ino, 1.0)
        (rest, _ns, _stopped), answers = _wait_over_socketpair(
            _perm_record(0x10000, repeat, pid), table
        )
        assert answers == b"" and rest == _perm_record(0x10000, repeat, pid)
    finally:
        for fd in (repeat, other):
            with contextlib.suppress(OSError):
                os.close(fd)


def test_perm_wait_returns_when_stopped() -> None:
    assert native is not None
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stop_r, stop_w = os.pipe()
    try:
        with a, b:
            os.write(stop_w, b"x")
            assert native.perm_wait(a.fileno(), stop_r, 4096, 0, bytearray(_TABLE), 1.0) == (
                b"",
                0,
                True,
            )
    finally:
        os.close(stop_r)
        os.close(stop_w)


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=600),
    records=st.lists(
        st.tuples(st.integers(0, 2**64 - 1), st.integers(-5, 3), st.integers(-(2**31), 2**31 - 1)),
        max_size=4,
    ),
)
def test_perm_wait_leaves_anything_it_does_not_answer_untouched(
    data: bytes, records: list[tuple[int, int, int]]
) -> None:
    # An empty table answers nothing: every byte read comes back as it was, the
    # unparsable ones included, and no descriptor is closed.
    payload = b"".join(_perm_record(m, fd, pid) for m, fd, pid in records) + data
    (rest, _ns, stopped), answers = _wait_over_socketpair(payload, bytearray(_TABLE))
    assert (rest, stopped, answers) == (payload, False, b"")
    os.fstat(0)  # stdin still open


def test_held_reads_give_read_opener_the_same_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from readegress.kernel import fanotify
    from readegress.kernel.procfs import ProcFs

    procfs = ProcFs()
    with loopback.server(socket.AF_INET) as srv, loopback.client(srv) as cli:
        # stdin/stdout of the peers are pipes: the pipe inodes are part of the identity.
        for pid in (srv.pid, cli.pid, os.getpid()):
            c = fanotify.read_opener(procfs, pid)
            monkeypatch.setattr(fanotify, "_native", None)
            py = fanotify.read_opener(procfs, pid)
            monkeypatch.undo()
            assert c == py and c.identified
            assert c.stdin_pipe is not None or pid == os.getpid()
    assert native is not None
    gone = native.held_reads("/proc/999999999")
    assert gone == (None, None, None, None, None)
    assert fanotify.read_opener(procfs, 999_999_999) == fanotify.Opener(999_999_999)


def test_a_socket_on_stdout_is_read_while_held_through_both_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from readegress.kernel import fanotify
    from readegress.kernel.procfs import ProcFs

    with loopback.server(socket.AF_INET) as srv:
        conn = socket.create_connection(("127.0.0.1", srv.port))
        with conn:
            child = subprocess.Popen(["sleep", "30"], stdout=conn.fileno())
            try:
                got = []
                for pure in (False, True):
                    if pure:
                        monkeypatch.setattr(fanotify, "_native", None)
                    got.append(fanotify.read_opener(ProcFs(), child.pid))
                    monkeypatch.undo()
                assert got[0] == got[1]
                assert got[0].std_sockets and got[0].stdout_pipe is None
            finally:
                child.kill()
                child.wait()
