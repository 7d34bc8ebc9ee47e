"""The destination classifier: one place that says what kind of address a peer is.

Every feature that asks "is this egress?" calls :func:`classify`. Classes, in
the order they are tested (the first match wins):

``unspecified`` 0.0.0.0/8, ::/128 · ``loopback`` 127/8, ::1 · ``private``
RFC 1918 (10/8, 172.16/12, 192.168/16) and IPv6 ULA fc00::/7 ·
``link_local`` 169.254/16, fe80::/10 · ``cgnat`` 100.64/10 (RFC 6598) ·
``multicast`` 224/4, ff00::/8 · ``documentation`` 192.0.2/24, 198.51.100/24,
203.0.113/24, 2001:db8::/32, 3fff::/20 · ``benchmark`` 198.18/15, 2001:2::/48 ·
``reserved`` 240/4 (incl. 255.255.255.255), 192.0.0/24, 192.88.99/24, and the
IPv6 blocks the IANA special-purpose registry marks not globally reachable
(100::/64 discard, 2001::/23 IETF protocol assignments, ::/8 and other
unassigned space) · ``public`` everything else.

IPv4-mapped (``::ffff:a.b.c.d``), IPv4-compatible-translated NAT64
(64:ff9b::/96, RFC 6052) and the local-use NAT64 prefix 64:ff9b:1::/48 carry an
IPv4 address: they are classified as the embedded IPv4 address, so
``::ffff:10.0.0.1`` is private, not public. Anything that does not parse is
``invalid`` (never guessed as public).

Prefix tests are done on parsed integers, never on strings: string-prefix
filters such as ``NOT LIKE '172.1%'`` also drop public space (172.1.x.x).
"""

from __future__ import annotations

import enum
import ipaddress
from functools import lru_cache
from typing import Optional, Union


class DestinationClass(str, enum.Enum):
    UNSPECIFIED = "unspecified"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    LINK_LOCAL = "link_local"
    CGNAT = "cgnat"
    MULTICAST = "multicast"
    DOCUMENTATION = "documentation"
    BENCHMARK = "benchmark"
    RESERVED = "reserved"
    PUBLIC = "public"
    INVALID = "invalid"

    def __str__(self) -> str:
        return self.value


#: Classes a user may name in configuration or ``--egress-class``.
CLASS_NAMES = tuple(c.value for c in DestinationClass if c is not DestinationClass.INVALID)

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

_V4_TABLE: tuple[tuple[ipaddress.IPv4Network, DestinationClass], ...] = (
    (_V4("0.0.0.0/8"), DestinationClass.UNSPECIFIED),
    (_V4("127.0.0.0/8"), DestinationClass.LOOPBACK),
    (_V4("10.0.0.0/8"), DestinationClass.PRIVATE),
    (_V4("172.16.0.0/12"), DestinationClass.PRIVATE),
    (_V4("192.168.0.0/16"), DestinationClass.PRIVATE),
    (_V4("169.254.0.0/16"), DestinationClass.LINK_LOCAL),
    (_V4("100.64.0.0/10"), DestinationClass.CGNAT),
    (_V4("224.0.0.0/4"), DestinationClass.MULTICAST),
    (_V4("192.0.2.0/24"), DestinationClass.DOCUMENTATION),
    (_V4("198.51.100.0/24"), DestinationClass.DOCUMENTATION),
    (_V4("203.0.113.0/24"), DestinationClass.DOCUMENTATION),
    (_V4("198.18.0.0/15"), DestinationClass.BENCHMARK),
    (_V4("240.0.0.0/4"), DestinationClass.RESERVED),
    (_V4("192.0.0.0/24"), DestinationClass.RESERVED),
    (_V4("192.88.99.0/24"), DestinationClass.RESERVED),
)

_V6_TABLE: tuple[tuple[ipaddress.IPv6Network, DestinationClass], ...] = (
    (_V6("::/128"), DestinationClass.UNSPECIFIED),
    (_V6("::1/128"), DestinationClass.LOOPBACK),
    (_V6("fc00::/7"), DestinationClass.PRIVATE),
    (_V6("fe80::/10"), DestinationClass.LINK_LOCAL),
    (_V6("ff00::/8"), DestinationClass.MULTICAST),
    (_V6("2001:db8::/32"), DestinationClass.DOCUMENTATION),
    (_V6("3fff::/20"), DestinationClass.DOCUMENTATION),
    (_V6("2001:2::/48"), DestinationClass.BENCHMARK),
    (_V6("100::/64"), DestinationClass.RESERVED),
    (_V6("2001::/23"), DestinationClass.RESERVED),
    (_V6("::/8"), DestinationClass.RESERVED),
    (_V6("fec0::/10"), DestinationClass.RESERVED),  # deprecated site-local
)

# Global unicast is 2000::/3; everything else left in IPv6 is unassigned/reserved.
_V6_GLOBAL = _V6("2000::/3")
_NAT64 = _V6("64:ff9b::/96")
_NAT64_LOCAL = _V6("64:ff9b:1::/48")


def _classify_v4(a: ipaddress.IPv4Address) -> DestinationClass:
    for net, cls in _V4_TABLE:
        if a in net:
            return cls
    return DestinationClass.PUBLIC


def _classify_v6(a: ipaddress.IPv6Address) -> DestinationClass:
    embedded = a.ipv4_mapped
    if embedded is None and (a in _NAT64 or a in _NAT64_LOCAL):
        embedded = ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)
    if embedded is not None:
        return _classify_v4(embedded)
    for net, cls in _V6_TABLE:
        if a in net:
            return cls
    if a not in _V6_GLOBAL:
        return DestinationClass.RESERVED
    return DestinationClass.PUBLIC


def unmapped_address(address: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    """An address string parsed (scope ids such as ``%eth0`` dropped), an IPv4-mapped
    IPv6 address as its IPv4; ``None`` when it is not an address. The one place
    approvals, socket facts and the fleet report read an address."""
    try:
        a = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a


@lru_cache(maxsize=65536)
def classify(address: str) -> DestinationClass:
    """Classify an IPv4/IPv6 address string (zone ids such as ``%eth0`` allowed)."""
    text = address.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        a = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return DestinationClass.INVALID
    if isinstance(a, ipaddress.IPv4Address):
        return _classify_v4(a)
    return _classify_v6(a)


@lru_cache(maxsize=65536)
def class_name(address: str) -> str:
    """``classify(address).value``, cached: tables call it once per row."""
    return classify(address).value


def parse_classes(names: list[str] | tuple[str, ...]) -> frozenset[DestinationClass]:
    """Validate class names from config or flags; raises ``ValueError`` naming the bad one."""
    out: set[DestinationClass] = set()
    for n in names:
        try:
            out.add(DestinationClass(n))
        except ValueError:
            raise ValueError(
                f"unknown destination class {n!r} (one of: {', '.join(CLASS_NAMES)})"
            ) from None
        if out and DestinationClass.INVALID in out:
            raise ValueError("'invalid' is not a destination class to select")
    return frozenset(out)


#: Classes that never leave the host or its local network segment.
LOCAL_CLASSES = frozenset(
    {
        DestinationClass.UNSPECIFIED,
        DestinationClass.LOOPBACK,
        DestinationClass.LINK_LOCAL,
        DestinationClass.MULTICAST,
        DestinationClass.INVALID,
    }
)
