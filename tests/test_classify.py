"""The destination classifier: every class, IPv4 and IPv6, and the embedded-IPv4 forms."""

from __future__ import annotations

import pytest

from readegress.net.classify import CLASS_NAMES, DestinationClass, classify, parse_classes

C = DestinationClass

CASES = [
    # unspecified
    ("0.0.0.0", C.UNSPECIFIED),
    ("0.1.2.3", C.UNSPECIFIED),
    ("::", C.UNSPECIFIED),
    # loopback
    ("127.0.0.1", C.LOOPBACK),
    ("127.255.255.254", C.LOOPBACK),
    ("::1", C.LOOPBACK),
    # private: RFC 1918 edges and ULA
    ("10.0.0.0", C.PRIVATE),
    ("10.255.255.255", C.PRIVATE),
    ("172.16.0.1", C.PRIVATE),
    ("172.31.255.255", C.PRIVATE),
    ("192.168.1.1", C.PRIVATE),
    ("fc00::1", C.PRIVATE),
    ("fd12:3456:789a::1", C.PRIVATE),
    # string-prefix traps: these are public
    ("172.15.255.255", C.PUBLIC),
    ("172.32.0.0", C.PUBLIC),
    ("172.1.2.3", C.PUBLIC),
    ("11.0.0.1", C.PUBLIC),
    ("192.169.0.1", C.PUBLIC),
    # link-local
    ("169.254.169.254", C.LINK_LOCAL),
    ("fe80::1", C.LINK_LOCAL),
    ("fe80::1%eth0", C.LINK_LOCAL),
    # CGNAT edges
    ("100.64.0.0", C.CGNAT),
    ("100.127.255.255", C.CGNAT),
    ("100.63.255.255", C.PUBLIC),
    ("100.128.0.0", C.PUBLIC),
    # multicast
    ("224.0.0.251", C.MULTICAST),
    ("239.255.255.250", C.MULTICAST),
    ("ff02::fb", C.MULTICAST),
    # documentation
    ("192.0.2.10", C.DOCUMENTATION),
    ("198.51.100.7", C.DOCUMENTATION),
    ("203.0.113.99", C.DOCUMENTATION),
    ("2001:db8::5", C.DOCUMENTATION),
    ("3fff::1", C.DOCUMENTATION),
    # benchmark
    ("198.18.0.1", C.BENCHMARK),
    ("198.19.255.255", C.BENCHMARK),
    ("198.20.0.0", C.PUBLIC),
    ("2001:2::1", C.BENCHMARK),
    # reserved
    ("240.0.0.1", C.RESERVED),
    ("255.255.255.255", C.RESERVED),
    ("192.0.0.8", C.RESERVED),
    ("100::1", C.RESERVED),
    ("2001::1", C.RESERVED),
    ("4000::1", C.RESERVED),
    # public
    ("8.8.8.8", C.PUBLIC),
    ("1.1.1.1", C.PUBLIC),
    ("2606:4700:4700::1111", C.PUBLIC),
    ("2a00:1450::1", C.PUBLIC),
    # IPv4-mapped IPv6: classified as the embedded IPv4
    ("::ffff:127.0.0.1", C.LOOPBACK),
    ("::ffff:10.1.2.3", C.PRIVATE),
    ("::ffff:100.64.1.1", C.CGNAT),
    ("::ffff:169.254.1.1", C.LINK_LOCAL),
    ("::ffff:8.8.8.8", C.PUBLIC),
    # NAT64 (well-known and local-use prefixes)
    ("64:ff9b::808:808", C.PUBLIC),
    ("64:ff9b::a00:1", C.PRIVATE),
    ("64:ff9b::7f00:1", C.LOOPBACK),
    ("64:ff9b:1::c0a8:101", C.PRIVATE),
    # bracketed form as some logs write it
    ("[::1]", C.LOOPBACK),
    # not an address
    ("", C.INVALID),
    ("example.com", C.INVALID),
    ("999.1.1.1", C.INVALID),
]


@pytest.mark.parametrize(("address", "expected"), CASES)
def test_classify(address: str, expected: DestinationClass) -> None:
    assert classify(address) is expected


def test_every_class_is_covered_for_both_families() -> None:
    v4 = {cls for a, cls in CASES if "." in a and ":" not in a}
    # CGNAT has no IPv6 range of its own: IPv6 reaches it through mapped/NAT64 forms.
    v6 = {cls for a, cls in CASES if ":" in a}
    wanted = {c for c in DestinationClass if c is not C.INVALID}
    assert wanted <= v4
    assert wanted <= v6


def test_parse_classes() -> None:
    assert parse_classes(["public", "loopback"]) == {C.PUBLIC, C.LOOPBACK}
    with pytest.raises(ValueError, match="unknown destination class 'publik'"):
        parse_classes(["publik"])
    assert "invalid" not in CLASS_NAMES


def test_unmapped_address_is_the_one_parse_of_an_address() -> None:
    from readegress.net.classify import unmapped_address

    assert str(unmapped_address("::ffff:203.0.113.9")) == "203.0.113.9"
    assert str(unmapped_address("fe80::1%eth0")) == "fe80::1"
    assert str(unmapped_address("2001:db8::1")) == "2001:db8::1"
    assert unmapped_address("not-an-address") is None
    assert unmapped_address("") is None
