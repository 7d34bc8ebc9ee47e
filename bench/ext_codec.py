"""The single-file ``readegress.ext``'s Thrift encoding against the package install's.

A zip cannot load C extensions, so the ``.ext`` (``install/build.sh``)
encodes osquery's responses with Thrift's pure-Python ``TBinaryProtocol``;
the Python package install uses the C accelerator (``fastbinary``, through
:func:`readegress.osquery.protocol.binary_protocol`). Both encode the same
``ExtensionResponse`` of 10,000 ``socket_bytes``-shaped rows (26 columns,
osquery strings, :mod:`bench.rows`) into a memory buffer: the part of a
table call that differs between the two builds. Runs are interleaved;
medians and min-max are printed, with the ratio pure / accelerated.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from bench import report
from bench.timing import ratio, repeat_interleaved


def _response(n_rows: int) -> Any:
    from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus

    from bench.rows import synthetic_values
    from readegress.tables.spec import load_specs

    names = load_specs()["socket_bytes"].column_names

    def text(v: object) -> str:
        return "" if v is None else ("1" if v is True else "0" if v is False else str(v))

    rows = [{n: text(v) for n, v in zip(names, vals)} for vals in synthetic_values(n_rows)]
    return ExtensionResponse(status=ExtensionStatus(code=0, message="OK"), response=rows)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench ext-codec", description=__doc__)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args(argv)

    from thrift.protocol.TBinaryProtocol import TBinaryProtocol
    from thrift.transport.TTransport import TMemoryBuffer

    from readegress.osquery.protocol import binary_protocol, fastbinary

    if fastbinary is None:
        print("thrift has no C accelerator here: nothing to compare against")
        return 2
    response = _response(args.rows)
    sizes: dict[str, int] = {}

    def encode(make: Any, key: str) -> Any:
        def run() -> None:
            buf = TMemoryBuffer()
            response.write(make(buf))
            sizes[key] = len(buf.getvalue())

        return run

    timings = repeat_interleaved(
        {
            "pure Python (.ext)": encode(TBinaryProtocol, "pure"),
            "fastbinary (package)": encode(binary_protocol, "fast"),
        },
        runs=args.runs,
        budget_s=60.0,
    )
    if sizes["pure"] != sizes["fast"]:
        print(f"encodings differ in size: {sizes}")
        return 1
    report.heading(f"Thrift encode of a {args.rows}-row socket_bytes response ({sizes['pure']} B)")
    report.table(
        ["encoder", "median ms [min-max]"], [[name, t.ms()] for name, t in timings.items()]
    )
    r = ratio(timings["pure Python (.ext)"], timings["fastbinary (package)"])
    report.note(f"pure Python / fastbinary: {r:.1f}x (medians of {args.runs} interleaved runs)")
    return 0
