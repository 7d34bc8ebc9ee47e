"""Our extension runtime serving synthetic ``socket_bytes`` rows (the peer of ``stock_server``).

``python -m bench.ours_server MANAGER_SOCKET N`` runs
``readegress.osquery.runtime.ExtensionRuntime`` with one table: the real
``socket_bytes`` spec (26 columns, same routes), renamed
``socket_bytes_synthetic`` so it never collides with a real extension on the
same core, whose ``generate`` builds ``SocketBytesRow`` tuples from the same
precomputed values the stock server uses. Everything after ``generate`` is
the production path: ``TableCalls`` (timeout, concurrency limit, worker
thread), ``BoundTable.to_osquery_rows`` (osquery string conversion) and the
runtime's Thrift server. It registers with the core on MANAGER_SOCKET (the
runtime cannot serve without registering), prints its own socket path on
stdout, and stops on EOF of stdin.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable
from typing import Any

TABLE = "socket_bytes_synthetic"


def serve(manager_socket: str, n_rows: int) -> int:
    from bench.rows import synthetic_values
    from readegress.osquery.runtime import ExtensionRuntime
    from readegress.tables.base import BoundTable
    from readegress.tables.socket_bytes import SocketBytesRow
    from readegress.tables.spec import load_specs

    values = synthetic_values(n_rows)

    class SyntheticSocketBytes:
        row_type: type = SocketBytesRow

        def generate(self, ctx: Any) -> Iterable[SocketBytesRow]:
            return [SocketBytesRow(*v) for v in values]

    spec = dataclasses.replace(load_specs()["socket_bytes"], name=TABLE)
    runtime = ExtensionRuntime(
        manager_socket,
        {TABLE: BoundTable(spec, SyntheticSocketBytes())},
        name="readegress-bench-synthetic",
    )
    runtime.start()
    try:
        if not runtime.wait_registered(20.0):
            print("error: not registered within 20s", flush=True)
            return 1
        print(runtime.extension_socket, flush=True)
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        runtime.stop("benchmark done")
        runtime.join(10.0)
    return 0


def main(argv: list[str]) -> int:
    from bench.children import die_with_parent

    die_with_parent()
    if len(argv) != 2:
        print("usage: python -m bench.ours_server MANAGER_SOCKET N", file=sys.stderr)
        return 2
    try:
        return serve(argv[0], int(argv[1]))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
