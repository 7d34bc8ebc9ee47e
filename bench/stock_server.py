"""osquery-python 3.1.1's stock serving path, serving synthetic ``socket_bytes`` rows.

``python -m bench.stock_server SOCKET N`` builds what an osquery-python
extension author writes: an ``osquery.TablePlugin`` subclass whose
``generate`` returns a list of dicts, added to ``osquery.ExtensionManager()``,
and serves it exactly as ``osquery.management.start_extension`` does
(``TSimpleServer`` + ``TBufferedTransportFactory`` + ``TBinaryProtocolFactory``
+ ``osquery.extensions.Extension.Processor`` on a UNIX socket). Only the
registration with a manager is skipped: ``call`` does not need it. The plugin
declares the same 26 columns as our spec (osquery-python sends them all with
op "0").

The plugin builds fresh dicts from the precomputed values on every call, as a
real table builds fresh rows (the stock ``call`` also rewrites the dicts in
place while ``str()``-ing the values, so they cannot be shared across calls).
Our server likewise builds fresh row tuples from the same values per call.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any


def serve(socket_path: str, n_rows: int) -> None:
    import osquery
    from osquery.extensions.Extension import Processor
    from thrift.protocol import TBinaryProtocol
    from thrift.server import TServer
    from thrift.transport import TSocket, TTransport

    from bench.rows import synthetic_values
    from readegress.tables.spec import load_specs

    spec = load_specs()["socket_bytes"]
    names = spec.column_names
    values = synthetic_values(n_rows)
    columns = [osquery.TableColumn(name=c.name, type=c.type) for c in spec.columns]

    class SocketBytesStock(osquery.TablePlugin):  # type: ignore[misc]
        def name(self) -> str:
            return "socket_bytes"

        def columns(self) -> list[Any]:
            return columns

        def generate(self, context: Any) -> list[dict[str, Any]]:
            return [dict(zip(names, v)) for v in values]

    logging.getLogger("thrift").addHandler(logging.NullHandler())
    manager = osquery.ExtensionManager()
    manager.add_plugin(SocketBytesStock)
    processor = Processor(manager)
    transport = TSocket.TServerSocket(unix_socket=socket_path)
    server = TServer.TSimpleServer(
        processor,
        transport,
        TTransport.TBufferedTransportFactory(),
        TBinaryProtocol.TBinaryProtocolFactory(),
    )
    server.serve()


def main(argv: list[str]) -> int:
    from bench.children import die_with_parent

    die_with_parent()
    if len(argv) != 2:
        print("usage: python -m bench.stock_server SOCKET N", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        serve(argv[0], int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
