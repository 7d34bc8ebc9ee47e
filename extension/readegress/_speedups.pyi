# Types of the compiled accelerator (_speedups.c); see readegress/speedups.py.
from collections.abc import Sequence
from typing import Any, Optional

def parse_dump(
    buf: bytes | bytearray | memoryview,
    end: int,
    seq: int,
    protocol: int,
    out: list[Any],
    cls: type[tuple[Any, ...]],
) -> tuple[int, int]: ...
def socket_links(
    dir_fd: int, names: list[str], cache: dict[str, int]
) -> tuple[int, list[tuple[int, int]]]: ...
def sqlite_rows(
    rows: Sequence[tuple[Any, ...]], kinds: bytes
) -> Optional[list[tuple[Any, ...]]]: ...
def json_lines(
    names: list[str], rows: Sequence[tuple[Any, ...]], kinds: bytes
) -> Optional[bytes]: ...
def socket_rows(
    sockets: tuple[Any, ...],
    listeners: set[tuple[int, str, int]],
    listen_ports: set[tuple[int, int]],
    tcp_names: dict[int, str],
    classes: dict[str, str],
    remember: Any,
    cls: type[tuple[Any, ...]],
) -> list[Any]: ...
def observe(
    dumps: list[tuple[int, list[Any]]],
    now: float,
    uptime: float,
    owners_index: dict[int, Any],
    old_seen: dict[int, Any],
    reuse: bool,
    owners_of: Any,
    observed_cls: type[tuple[Any, ...]],
    tracked_cls: type[tuple[Any, ...]],
    owner_cls: type[tuple[Any, ...]],
) -> tuple[list[Any], dict[int, Any], int]: ...
def perm_remember(table: bytearray, pid: int, dev: int, ino: int, seen: float) -> None: ...
def perm_wait(
    group_fd: int, stop_fd: int, size: int, self_pid: int, table: bytearray, window: float
) -> tuple[bytes, int, bool]: ...
def held_reads(
    base: str,
) -> tuple[Optional[bytes], Optional[bytes], Optional[str], Optional[str], Optional[str]]: ...
def scan_results(
    data: bytes | bytearray | memoryview,
    first_line: int,
    paths: tuple[tuple[int, bytes], ...],
    groups: tuple[tuple[int, ...], ...],
    host: int,
    derive: Optional[tuple[tuple[int, ...], tuple[bytes, ...]]] = None,
) -> tuple[
    int, bytes, list[tuple[bytes, bytes, bytes]], int, bytes, bytes, bytes, Optional[Any]
]: ...
def count_newlines(data: bytes | bytearray | memoryview, start: int, end: int) -> int: ...
