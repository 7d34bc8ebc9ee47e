"""The ``readegress`` command line. Thin: each subcommand parses its flags and
calls into the package; imports are lazy so ``readegress query`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _err(message: str) -> None:
    print(f"readegress: {message}", file=sys.stderr)


def _format_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def print_table(names: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """osqueryi-style pretty table."""
    cells = [[_format_value(v) for v in r] for r in rows]
    widths = [len(n) for n in names]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out.write(sep + "\n")
    out.write("| " + " | ".join(n.ljust(w) for n, w in zip(names, widths)) + " |\n")
    out.write(sep + "\n")
    for r in cells:
        out.write("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |\n")
    if cells:
        out.write(sep + "\n")


def cmd_query(args: argparse.Namespace) -> int:
    from readegress.sql.engine import SQLError
    from readegress.sql.local import open_local_engine
    from readegress.tables.base import TableEnv
    from readegress.tables.spec import SpecError

    env = TableEnv()
    try:
        engine, calls = open_local_engine(env)
    except SpecError as e:
        _err(f"error: {e}")
        return EXIT_ERROR
    try:
        names, rows = engine.query(args.sql)
    except SQLError as e:
        _err(f"error: {e}")
        return EXIT_ERROR
    finally:
        calls.close()
        for w in env.warnings:
            _err(f"warning: {w}")
        env.close()
    out = sys.stdout
    if args.json:
        for r in rows:
            out.write(json.dumps(dict(zip(names, r)), default=_format_value) + "\n")
    elif names:
        print_table(names, rows, out)
    return EXIT_OK


def cmd_tables(args: argparse.Namespace) -> int:
    from readegress.tables.spec import OPTION_BITS, SpecError, load_specs, render_markdown

    try:
        specs = load_specs()
    except SpecError as e:
        _err(f"error: {e}")
        return EXIT_ERROR
    if args.markdown:
        sys.stdout.write(render_markdown(specs))
        return EXIT_OK
    for spec in specs.values():
        if args.names:
            print(spec.name)
            continue
        print(f"{spec.name}: {spec.description}")
        for c in spec.columns:
            opts = [o for o, bit in OPTION_BITS.items() if c.options & bit]
            flag = f" [{', '.join(opts)}]" if opts else ""
            print(f"  {c.name:<28} {c.type:<16}{flag} {c.description}")
        print()
    return EXIT_OK


def cmd_extension(argv: list[str]) -> int:
    from readegress.osquery.runtime import run_extension

    return run_extension(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="readegress",
        description="Join sensitive file reads to the network egress that follows.",
    )
    from readegress import __version__

    p.add_argument("--version", action="version", version=f"readegress {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("query", help="run SQL over this host's tables (no osquery needed)")
    q.add_argument("sql", help="the SQL statement")
    q.add_argument("--json", action="store_true", help="one JSON object per row")
    q.set_defaults(func=cmd_query)

    t = sub.add_parser("tables", help="list tables and columns from the specs")
    t.add_argument("--names", action="store_true", help="table names only")
    t.add_argument("--markdown", action="store_true", help="the README's table reference")
    t.set_defaults(func=cmd_tables)

    sub.add_parser(
        "extension",
        help="serve the tables to osquery over its extension socket",
        add_help=False,
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # osqueryd launches extensions with flags of its own that may grow over
    # releases: the extension subcommand parses its flags itself, tolerantly.
    if args_list and args_list[0] == "extension":
        return cmd_extension(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head`: not an error of ours.
        return EXIT_OK
    return rc


if __name__ == "__main__":
    sys.exit(main())
