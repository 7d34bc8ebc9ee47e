"""A hand-written NETLINK_SOCK_DIAG client: socket dumps and destroy notifications.

Data source: the kernel's ``inet_diag`` netlink interface (``ss`` uses the same).
Each reply message is ``nlmsghdr`` (16 bytes) + ``inet_diag_msg`` (72 bytes) +
rtattrs; with the ``INET_DIAG_INFO`` extension a TCP socket carries its
``struct tcp_info``, whose byte counters are the only per-socket byte counts
Linux keeps. UDP has none: its counters are ``None``, never 0.

Kernel facts this module relies on (measured on 6.18, see
``shared/reference/linux-sources.md``):

* The legacy ``TCPDIAG_GETSOCK`` request (``inet_diag_req`` v1) walks the TCP
  hash tables once and returns IPv4 *and* IPv6 sockets (the compat path sets
  the family to ``AF_UNSPEC``); two ``SOCK_DIAG_BY_FAMILY`` dumps cost a second
  walk. If a kernel ever refuses the legacy request, :class:`SockDiag` falls
  back to the two v2 dumps for good.
* Ports are big-endian; addresses are 16 bytes with IPv4 in the first 4; the
  cookie is two host-order u32s (low word first) and is never reused while
  the kernel runs, so it keys a socket across polls and namespaces.
* ``tcp_info`` grows with kernel versions; fields are read only when the
  returned struct is long enough to hold them.
* TIME_WAIT (6) and NEW_SYN_RECV (12) mini-sockets are not asked for: they
  have no ``tcp_info``, no inode and no owning process (their socket's final
  counters came with its destroy notification), and a busy server has
  thousands of them. Some still come back — a timewait socket is matched on
  its substate, so an orphaned FIN_WAIT2 one arrives as state 5 (measured),
  and request sockets can ride on SYN_RECV — so the parser also drops every
  TCP reply without ``tcp_info``.
* Destroy notifications (multicast groups 1-4) carry the *final* message and
  ``tcp_info`` of each socket as it is freed, with ``inode`` and ``uid`` both
  0 (the kernel never fills them there): join them on the cookie.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import Optional

from readegress.kernel.records import SocketInfo
from readegress.speedups import native as _native

log = logging.getLogger("readegress.kernel.sockdiag")

NETLINK_SOCK_DIAG = 4
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

TCPDIAG_GETSOCK = 18
SOCK_DIAG_BY_FAMILY = 20

INET_DIAG_INFO = 2
INET_DIAG_PROTOCOL = 10

SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET_UDP_DESTROY = 2
SKNLGRP_INET6_TCP_DESTROY = 3
SKNLGRP_INET6_UDP_DESTROY = 4
DESTROY_GROUPS = (
    SKNLGRP_INET_TCP_DESTROY,
    SKNLGRP_INET_UDP_DESTROY,
    SKNLGRP_INET6_TCP_DESTROY,
    SKNLGRP_INET6_UDP_DESTROY,
)

TCP_TIME_WAIT = 6
TCP_NEW_SYN_RECV = 12
#: Every TCP state except the mini-socket ones (see the module docstring).
TCP_STATES_DUMPED = 0xFFFFFFFF & ~(1 << TCP_TIME_WAIT) & ~(1 << TCP_NEW_SYN_RECV)
#: UDP sockets are CLOSE (7, unconnected) or ESTABLISHED (1, connected).
UDP_STATES_DUMPED = 0xFFFFFFFF

# Errors that mean "this kernel has no legacy TCPDIAG_GETSOCK" (not EBUSY etc.).
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOENT, errno.EPROTONOSUPPORT)

_IPPROTO_TCP = socket.IPPROTO_TCP
_IPPROTO_UDP = socket.IPPROTO_UDP
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6

# A dump reply skb is at most ~32 KiB (the kernel caps its netlink dump
# allocation), so one recv returns one skb; the large buffer only guarantees
# no reply is ever truncated. SO_RCVBUF is raised so destroy-notification
# bursts (one skb each) are not dropped.
RECV_BUFFER = 1 << 20
DESTROY_RECV_BUFFER = 64 << 10  # one notification (~400 bytes) per recv
DUMP_RCVBUF = 1 << 20
DESTROY_RCVBUF = 16 << 20

_NLH = struct.Struct("=IHHII")
_RTA = struct.Struct("=HH")
_ERR = struct.Struct("=i")
# nlmsghdr + inet_diag_msg in one unpack; skipped: nlmsg flags/pid, retrans,
# idiag_if, expires, rqueue, wqueue.
_MSG = struct.Struct("=IHxxI4xBBBxHH16s16s4xII12xII")
_MSG_LEN = 88
assert _MSG.size == _MSG_LEN
# tcp_info prefix: last_data_sent@44 last_data_recv@52 bytes_acked@120
# bytes_received@128 segs_out@136 segs_in@140 bytes_sent@200 bytes_retrans@208
# (both kernel >= 4.19). tcp_info.bytes_sent counts a retransmitted byte again
# (a loaded machine retransmits even on loopback); the records' bytes_sent is
# bytes_sent - bytes_retrans: payload bytes sent, each counted once.
_TCPI = struct.Struct("=44xI4xI64xQQII56xQQ")
assert _TCPI.size == 216
_TCPI_FIELDS = (  # (offset, format) for the slow path of short structs, in record order
    ("bytes_sent", 200, "=Q"),
    ("bytes_acked", 120, "=Q"),
    ("bytes_received", 128, "=Q"),
    ("segs_out", 136, "=I"),
    ("segs_in", 140, "=I"),
    ("last_data_sent_ms", 44, "=I"),
    ("last_data_recv_ms", 52, "=I"),
)
# inet_diag_req (v1): family, src_len, dst_len, ext, id (48 bytes), states, dbs
_REQ_V1 = struct.Struct("=BBBB48xII")
# inet_diag_req_v2: family, protocol, ext, pad, states, id (48 bytes)
_REQ_V2 = struct.Struct("=BBBxI48x")
assert _REQ_V1.size == 60 and _REQ_V2.size == 56

# Ports arrive big-endian; the message struct is unpacked in host order.
_SWAP_PORTS = sys.byteorder == "little"

# The dump builds 20,000 records per poll: each is built by tuple.__new__ on
# a tuple of the fields in order (the NamedTuple's own __new__ is a Python
# function taking keywords, twice as slow). Only valid while SocketInfo is a
# NamedTuple with exactly these fields: checked here, at import, and in the tests.
_SOCKETINFO_FIELDS = (
    "family",
    "protocol",
    "state",
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "inode",
    "cookie",
    "uid",
    "timer",
    "bytes_sent",
    "bytes_acked",
    "bytes_received",
    "segs_out",
    "segs_in",
    "last_data_sent_ms",
    "last_data_recv_ms",
)
if (
    SocketInfo._fields != _SOCKETINFO_FIELDS or tuple not in SocketInfo.__mro__
):  # pragma: no cover - guards the contract with records.py
    raise ImportError("records.SocketInfo changed: update sockdiag's fast record builder")

_new_tuple = tuple.__new__

# Address strings repeat (a host has few local addresses and talks to few
# peers); caching the formatted strings saves an inet_ntop per address.
_ADDR_CACHE_MAX = 65536
_addr4: dict[bytes, str] = {}
_addr6: dict[bytes, str] = {}
_ntop = socket.inet_ntop


def _format4(raw: bytes) -> str:
    if len(_addr4) >= _ADDR_CACHE_MAX:
        _addr4.clear()
    s = _addr4[raw] = _ntop(_AF_INET, raw[:4])
    return s


def _format6(raw: bytes) -> str:
    if len(_addr6) >= _ADDR_CACHE_MAX:
        _addr6.clear()
    s = _addr6[raw] = _ntop(_AF_INET6, raw)
    return s


def format_address(family: int, raw: bytes) -> str:
    """Canonical text of a 16-byte sock_diag address (IPv4 dotted, IPv6 compressed).

    IPv4-mapped IPv6 addresses stay as the kernel reports them (``::ffff:a.b.c.d``).
    """
    if family == _AF_INET:
        return _addr4.get(raw) or _format4(raw)
    return _addr6.get(raw) or _format6(raw)


class SockDiagError(OSError):
    """The kernel answered a sock_diag request with an error."""


class DestroySubscribeError(OSError):
    """Joining the destroy-notification multicast groups failed (needs CAP_NET_ADMIN
    on kernels that restrict it; 6.18 allows any user)."""


def open_sock_diag_socket(rcvbuf: int = DUMP_RCVBUF) -> socket.socket:
    """A NETLINK_SOCK_DIAG socket in the calling thread's network namespace.

    A netlink socket stays bound to the namespace it was created in, which is
    how :mod:`readegress.kernel.netns` gets sockets for other namespaces.
    """
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
    )
    try:
        _raise_rcvbuf(sock, rcvbuf)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _raise_rcvbuf(sock: socket.socket, size: int) -> None:
    # SO_RCVBUFFORCE (CAP_NET_ADMIN) may exceed net.core.rmem_max; SO_RCVBUF
    # is silently capped at it.
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _build_record(
    family: int,
    protocol: int,
    state: int,
    local_address: str,
    local_port: int,
    remote_address: str,
    remote_port: int,
    inode: int,
    cookie: int,
    uid: int,
    timer: int,
    counters: tuple[Optional[int], ...],
) -> SocketInfo:
    """Build a record through the regular constructor (slow paths and tests)."""
    return SocketInfo(
        family,
        protocol,
        state,
        local_address,
        local_port,
        remote_address,
        remote_port,
        inode,
        cookie,
        uid,
        timer,
        *counters,
    )


def read_tcp_info(
    buf: bytes | bytearray | memoryview, off: int, length: int
) -> tuple[Optional[int], ...]:
    """Counters from a ``tcp_info`` of ``length`` bytes at ``off``, in record order.

    (bytes_sent, bytes_acked, bytes_received, segs_out, segs_in,
    last_data_sent_ms, last_data_recv_ms); a field the struct is too short to
    hold is ``None``. ``bytes_sent`` excludes retransmissions when the struct
    carries ``bytes_retrans`` (it always does where it carries ``bytes_sent``).
    """
    if length >= _TCPI.size:
        ls, lr, acked, received, so, si, sent, retrans = _TCPI.unpack_from(buf, off)
        return (sent - retrans, acked, received, so, si, ls, lr)
    out: list[Optional[int]] = []
    for _name, field_off, fmt in _TCPI_FIELDS:
        size = struct.calcsize(fmt)
        if field_off + size <= length:
            out.append(struct.unpack_from(fmt, buf, off + field_off)[0])
        else:
            out.append(None)
    return tuple(out)


_NO_COUNTERS: tuple[Optional[int], ...] = (None,) * 7


def decode_message(
    buf: bytes | bytearray | memoryview, off: int, protocol: int = 0
) -> Optional[SocketInfo]:
    """Decode one ``SOCK_DIAG_BY_FAMILY``/``TCPDIAG_GETSOCK`` message at ``off``.

    ``protocol`` 0 means "read it from the ``INET_DIAG_PROTOCOL`` attribute"
    (destroy notifications carry it; dumps do not). Returns ``None`` for a TCP
    message without ``tcp_info`` (a mini-socket). This is the readable
    reference decoder; :meth:`SockDiag._parse_dump` is the inlined hot path.
    """
    (ln, _typ, _seq, family, state, timer, sport, dport, src, dst, c_lo, c_hi, uid, inode) = (
        _MSG.unpack_from(buf, off)
    )
    info_off = -1
    info_len = 0
    a = off + _MSG_LEN
    end = off + ln
    while a + 4 <= end:
        alen, atype = _RTA.unpack_from(buf, a)
        if alen < 4:
            break
        if atype == INET_DIAG_INFO:
            info_off, info_len = a + 4, alen - 4
        elif atype == INET_DIAG_PROTOCOL and protocol == 0 and alen >= 5:
            protocol = buf[a + 4]
        a += (alen + 3) & ~3
    if protocol == _IPPROTO_TCP:
        if info_off < 0:
            return None
        counters = read_tcp_info(buf, info_off, info_len)
    else:
        counters = _NO_COUNTERS
    if _SWAP_PORTS:
        sport = ((sport & 0xFF) << 8) | (sport >> 8)
        dport = ((dport & 0xFF) << 8) | (dport >> 8)
    return _build_record(
        family,
        protocol,
        state,
        format_address(family, src),
        sport,
        format_address(family, dst),
        dport,
        inode,
        c_lo | (c_hi << 32),
        uid,
        timer,
        counters,
    )


class SockDiag:
    """Dumps TCP and UDP sockets through one NETLINK_SOCK_DIAG socket.

    The socket (and so the dump) belongs to the network namespace it was
    created in; pass one from :func:`readegress.kernel.netns` for another
    namespace. Not thread-safe: one dump at a time per instance.
    """

    def __init__(
        self,
        sock: Optional[socket.socket] = None,
        *,
        legacy_tcp: bool = True,
        buffer: Optional[bytearray] = None,
    ) -> None:
        self.sock = sock if sock is not None else open_sock_diag_socket()
        #: Whether TCP dumps use the one-walk TCPDIAG_GETSOCK request; turned
        #: off for good if the kernel refuses it.
        self.legacy_tcp = legacy_tcp
        # Instances that never dump concurrently (one per namespace, polled
        # in turn) may share one receive buffer.
        self._buf = buffer if buffer is not None else bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._seq = 0
        self._inflight: Optional[int] = None
        # Learnt rtattr layouts (prefix bytes up to tcp_info, tcp_info length)
        # for IPv4 and IPv6; empty prefix = none learnt yet.
        self._layouts: tuple[bytes, int, bytes, int] = (b"", 0, b"", 0)
        #: the reply parser: compiled when readegress._speedups is there (see
        #: readegress.speedups), else the pure-Python reference
        self.parse_dump = self._parse_dump if _native is None else self._parse_dump_native

    def close(self) -> None:
        self._view.release()
        self.sock.close()

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dump_tcp(self) -> list[SocketInfo]:
        """TCP sockets of both families with ``tcp_info`` counters (see the module notes)."""
        out: list[SocketInfo] = []
        if self.legacy_tcp:
            req = _REQ_V1.pack(0, 0, 0, 1 << (INET_DIAG_INFO - 1), TCP_STATES_DUMPED, 0)
            try:
                self._dump(TCPDIAG_GETSOCK, req, _IPPROTO_TCP, out)
                return out
            except SockDiagError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
                log.warning("legacy TCPDIAG_GETSOCK refused (%s); using SOCK_DIAG_BY_FAMILY", e)
                self.legacy_tcp = False
                out.clear()
        for family in (_AF_INET, _AF_INET6):
            self.dump_family(family, _IPPROTO_TCP, out)
        return out

    def dump_udp(self) -> list[SocketInfo]:
        """UDP sockets of both families (byte counters ``None``: UDP keeps none)."""
        out: list[SocketInfo] = []
        self.dump_family(_AF_INET, _IPPROTO_UDP, out)
        self.dump_family(_AF_INET6, _IPPROTO_UDP, out)
        return out

    def dump_all(self) -> list[SocketInfo]:
        """TCP then UDP, all families."""
        out = self.dump_tcp()
        self.dump_family(_AF_INET, _IPPROTO_UDP, out)
        self.dump_family(_AF_INET6, _IPPROTO_UDP, out)
        return out

    def dump_family(self, family: int, protocol: int, out: list[SocketInfo]) -> None:
        """One ``SOCK_DIAG_BY_FAMILY`` dump (inet_diag_req_v2), appended to ``out``."""
        if protocol == _IPPROTO_TCP:
            req = _REQ_V2.pack(family, protocol, 1 << (INET_DIAG_INFO - 1), TCP_STATES_DUMPED)
        else:
            req = _REQ_V2.pack(family, protocol, 0, UDP_STATES_DUMPED)
        self._dump(SOCK_DIAG_BY_FAMILY, req, protocol, out)

    def _dump(self, msgtype: int, body: bytes, protocol: int, out: list[SocketInfo]) -> None:
        if self._inflight is not None:
            self._finish_abandoned()
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        self.sock.send(
            _NLH.pack(16 + len(body), msgtype, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body
        )
        # Until DONE arrives the kernel keeps this socket's dump running and
        # refuses another one (EBUSY): remember it in case parsing fails.
        self._inflight = seq
        recv_into = self.sock.recv_into
        buf, view = self._buf, self._view
        parse = self.parse_dump
        while True:
            n = recv_into(buf)
            try:
                done = parse(buf, view, n, seq, protocol, out)
            except SockDiagError as e:
                if e.errno != errno.EPROTO:
                    self._inflight = None  # an NLMSG_ERROR reply ends the dump
                raise
            if done:
                self._inflight = None
                return

    def _finish_abandoned(self, max_recvs: int = 100_000) -> None:
        """Read and discard the rest of a dump that an exception interrupted."""
        seq = self._inflight
        buf = self._buf
        for _ in range(max_recvs):
            n = self.sock.recv_into(buf)
            off = 0
            while off + 16 <= n:
                ln, typ, _flags, mseq, _pid = _NLH.unpack_from(buf, off)
                if ln < 16:
                    break
                if mseq == seq and typ in (NLMSG_DONE, NLMSG_ERROR):
                    self._inflight = None
                    return
                off += (ln + 3) & ~3
        raise SockDiagError(errno.EPROTO, "an abandoned sock_diag dump never finished")

    def _parse_dump(
        self,
        buf: bytearray,
        view: memoryview,
        end: int,
        seq: int,
        protocol: int,
        out: list[SocketInfo],
    ) -> bool:
        """Parse one recv of a dump into ``out``; True when the dump is complete.

        Hot path (one iteration per socket): locals only, one unpack for the
        header and message, a short rtattr walk to INET_DIAG_INFO, one unpack
        of the tcp_info prefix, cached address strings, and the record built
        as one tuple (see ``_SOCKETINFO_FIELDS``).
        """
        msg_unpack = _MSG.unpack_from
        nlh_unpack = _NLH.unpack_from
        rta_unpack = _RTA.unpack_from
        tcpi_unpack = _TCPI.unpack_from
        tcpi_size = _TCPI.size
        a4_get = _addr4.get
        a6_get = _addr6.get
        new = _new_tuple
        cls = SocketInfo
        append = out.append
        swap = _SWAP_PORTS
        is_tcp = protocol == _IPPROTO_TCP
        af_inet = _AF_INET
        startswith = buf.startswith
        # The rtattrs before INET_DIAG_INFO (shutdown, mark, cgroup id,
        # sockopt, ...) are usually byte-identical from one socket to the
        # next; when they are, INFO sits at the same offset and the rtattr
        # walk (a third of the parse cost) is skipped. The prefix ends with
        # INFO's own rtattr header, so its length is checked too.
        prefix4, info_len4, prefix6, info_len6 = self._layouts
        off = 0
        while off + 16 <= end:
            if off + _MSG_LEN <= end:
                (
                    ln,
                    typ,
                    mseq,
                    family,
                    state,
                    timer,
                    sport,
                    dport,
                    src,
                    dst,
                    c_lo,
                    c_hi,
                    uid,
                    inode,
                ) = msg_unpack(view, off)
            else:
                ln, typ, _flags, mseq, _pid = nlh_unpack(view, off)
            if ln < 16 or off + ln > end:
                raise parse_error(_MALFORMED, ln)
            if mseq != seq:  # left over from an earlier, aborted dump
                off += (ln + 3) & ~3
                continue
            if typ == NLMSG_DONE:
                self._layouts = (prefix4, info_len4, prefix6, info_len6)
                return True
            if typ == NLMSG_ERROR:
                if ln < 20:  # no room for the error code
                    raise parse_error(_MALFORMED, ln)
                code = -_ERR.unpack_from(view, off + 16)[0]
                if code == 0:  # an ACK, not an error
                    off += (ln + 3) & ~3
                    continue
                raise parse_error(_FAILED, code)
            if ln < _MSG_LEN:
                off += (ln + 3) & ~3
                continue
            if is_tcp:
                a = off + _MSG_LEN
                # IPv4 and IPv6 sockets differ in their sockopt bits: one learnt
                # layout per family.
                if family == af_inet:
                    prefix, info_len = prefix4, info_len4
                else:
                    prefix, info_len = prefix6, info_len6
                plen = len(prefix)
                if plen and startswith(prefix, a) and a + plen + info_len <= off + ln:
                    # Same attribute bytes as an earlier socket: same layout.
                    info = a + plen
                else:
                    mend = off + ln
                    info = -1
                    while a + 4 <= mend:
                        alen, atype = rta_unpack(view, a)
                        if atype == 2:  # INET_DIAG_INFO
                            info = a + 4
                            info_len = alen - 4
                            break
                        if alen < 4:
                            break
                        a += (alen + 3) & ~3
                    if info < 0 or info + info_len > mend:
                        # TIME_WAIT / request mini-socket (no tcp_info): not dumped on purpose.
                        off += (ln + 3) & ~3
                        continue
                    if family == af_inet:
                        prefix4 = bytes(view[off + _MSG_LEN : info])
                        info_len4 = info_len
                    else:
                        prefix6 = bytes(view[off + _MSG_LEN : info])
                        info_len6 = info_len
                if info_len >= tcpi_size:
                    ls, lr, acked, received, so, si, sent, retrans = tcpi_unpack(view, info)
                    sent -= retrans
                else:
                    sent, acked, received, so, si, ls, lr = read_tcp_info(view, info, info_len)
            else:
                sent = acked = received = so = si = ls = lr = None
            if swap:
                sport = ((sport & 0xFF) << 8) | (sport >> 8)
                dport = ((dport & 0xFF) << 8) | (dport >> 8)
            if family == af_inet:
                laddr = a4_get(src) or _format4(src)
                raddr = a4_get(dst) or _format4(dst)
            else:
                laddr = a6_get(src) or _format6(src)
                raddr = a6_get(dst) or _format6(dst)
            append(
                new(
                    cls,
                    (
                        family,
                        protocol,
                        state,
                        laddr,
                        sport,
                        raddr,
                        dport,
                        inode,
                        c_lo | (c_hi << 32),
                        uid,
                        timer,
                        sent,
                        acked,
                        received,
                        so,
                        si,
                        ls,
                        lr,
                    ),
                )
            )
            off += (ln + 3) & ~3
        self._layouts = (prefix4, info_len4, prefix6, info_len6)
        return False

    def _parse_dump_native(
        self,
        buf: bytearray,
        view: memoryview,
        end: int,
        seq: int,
        protocol: int,
        out: list[SocketInfo],
    ) -> bool:
        """:meth:`_parse_dump` in C (``_speedups.parse_dump``): the same records,
        appended as they are parsed, and the same errors."""
        assert _native is not None
        status, value = _native.parse_dump(buf, end, seq, protocol, out, SocketInfo)
        if status == _MORE:
            return False
        if status == _DONE:
            return True
        raise parse_error(status, value)


# parse_dump outcomes (the C parser returns them with a value; the Python one raises).
_MORE, _DONE, _MALFORMED, _FAILED = 0, 1, 2, 3


def parse_error(kind: int, value: int) -> SockDiagError:
    """The error of a dump reply: ``_MALFORMED`` (``value``: the message's
    length field) or ``_FAILED`` (``value``: the kernel's errno)."""
    if kind == _MALFORMED:
        return SockDiagError(errno.EPROTO, f"malformed netlink message (len {value})")
    try:
        text = os.strerror(value)
    except (ValueError, OverflowError):  # a code no C int holds (hostile reply)
        text = f"Unknown error {value}"
    return SockDiagError(value, f"sock_diag request failed: {text}")


DestroyCallback = Callable[[SocketInfo], None]


class DestroyListener:
    """Receives the final state of every TCP/UDP socket destroyed in one namespace.

    Joins the four ``SKNLGRP_INET*_DESTROY`` multicast groups of a sock_diag
    socket; a thread reads the notifications and calls ``callback`` with a
    :class:`SocketInfo` (``inode`` and ``uid`` are 0 there: join on
    ``cookie``). The constructor raises :class:`DestroySubscribeError` when
    the groups cannot be joined, so the caller can warn instead of crashing.

    When the receive buffer overruns, the kernel drops notifications and the
    next recv fails with ENOBUFS; each such overrun is counted in
    :attr:`overruns` (at least one notification lost) and reading goes on.
    :meth:`close` wakes the thread through a pipe and returns promptly.
    """

    def __init__(
        self,
        callback: DestroyCallback,
        sock: Optional[socket.socket] = None,
        *,
        name: str = "host",
        rcvbuf: int = DESTROY_RCVBUF,
    ) -> None:
        self.callback = callback
        self.name = name
        #: notifications delivered to the callback
        self.events = 0
        #: ENOBUFS overruns: each lost at least one notification
        self.overruns = 0
        self.sock = sock if sock is not None else open_sock_diag_socket(rcvbuf)
        try:
            _raise_rcvbuf(self.sock, rcvbuf)
            for group in DESTROY_GROUPS:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        except OSError as e:
            self.sock.close()
            raise DestroySubscribeError(
                e.errno, f"cannot join sock_diag destroy groups ({name}): {e.strerror}"
            ) from e
        self.sock.setblocking(False)
        self._buf = bytearray(DESTROY_RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._closed = False
        self._lock = threading.Lock()  # guards start/close
        self._read_lock = threading.Lock()  # one reader of the socket at a time
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Start the reader thread (daemon)."""
        with self._lock:
            if self._closed or self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"readegress-destroy-{self.name}", daemon=True
            )
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the socket; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        with contextlib.suppress(OSError):  # the pipe only needs to be readable
            os.write(self._wake_w, b"x")
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        wake = self._wake_r
        try:
            while not self._closed:
                ready = poller.poll()
                if any(fd == wake for fd, _ in ready):
                    return
                self.drain()
        except Exception:  # a bug here must not kill the process; overruns/events tell
            if not self._closed:
                log.exception("destroy listener %s stopped", self.name)

    def drain(self) -> int:
        """Read every queued notification now (non-blocking); returns how many were handled.

        The reader thread calls this when the socket is readable; tests may
        call it directly on a listener that was never started.
        """
        handled = 0
        buf, view = self._buf, self._view
        with self._read_lock:
            while not self._closed:
                try:
                    n = self.sock.recv_into(buf)
                except BlockingIOError:
                    return handled
                except OSError as e:
                    if e.errno == errno.ENOBUFS:
                        self.overruns += 1
                        continue
                    if self._closed:
                        return handled
                    raise
                off = 0
                while off + 16 <= n:
                    ln, typ, _flags, _seq, _pid = _NLH.unpack_from(view, off)
                    if ln < 16 or off + ln > n:
                        break
                    if typ == SOCK_DIAG_BY_FAMILY and ln >= _MSG_LEN:
                        info = decode_message(view, off)
                        if info is not None:
                            self.events += 1
                            handled += 1
                            try:
                                self.callback(info)
                            except Exception:
                                log.exception("destroy callback failed")
                    off += (ln + 3) & ~3
        return handled
