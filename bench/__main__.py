"""``python -m bench SUBCOMMAND [flags]`` — see bench/README.md."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _foundation(argv: Sequence[str]) -> int:
    from bench import foundation

    return foundation.main(argv)


def _native(argv: Sequence[str]) -> int:
    from bench import native

    return native.main(argv)


def _flood(argv: Sequence[str]) -> int:
    from bench import flood

    return flood.main(argv)


def _detection(argv: Sequence[str]) -> int:
    from bench import detection

    return detection.main(argv)


def _replay(argv: Sequence[str]) -> int:
    from bench import replay

    return replay.main(argv)


def _ext_codec(argv: Sequence[str]) -> int:
    from bench import ext_codec

    return ext_codec.main(argv)


def _fleet(argv: Sequence[str]) -> int:
    from bench import fleet_bench

    return fleet_bench.main(argv)


SUBCOMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "foundation": (
        _foundation,
        "socket_bytes vs ss/psutil, Thrift generate vs osquery-python, extension RSS/idle CPU",
    ),
    "native": (
        _native,
        "fanotify read source overhead on open/read/close vs no monitoring and Linux audit",
    ),
    "flood": (
        _flood,
        "correlation core under a flood of catalogue reads: detection kept, peak RSS",
    ),
    "detection": (_detection, "precision and recall of the labelled scenario suite per mode"),
    "replay": (_replay, "readegress replay of a results log vs DuckDB and jq, memory per read"),
    "ext-codec": (
        _ext_codec,
        "the single-file .ext's pure-Python Thrift encode vs the package's fastbinary",
    ),
    "fleet": (_fleet, "replay and fleet report (DuckDB engine) vs DuckDB's range join and jq"),
}


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bench SUBCOMMAND [flags]   (SUBCOMMAND --help for flags)\n")
        for name, (_, help_text) in SUBCOMMANDS.items():
            print(f"  {name:<12} {help_text}")
        return 0 if argv else 2
    entry = SUBCOMMANDS.get(argv[0])
    if entry is None:
        print(
            f"bench: unknown subcommand {argv[0]!r} (one of: {', '.join(SUBCOMMANDS)})",
            file=sys.stderr,
        )
        return 2
    return entry[0](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
