"""The ``readegress`` command line. Thin: each subcommand parses its flags and
calls into the package; imports are lazy so ``readegress query`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    from readegress.service import open_environment
    from readegress.sql.engine import SQLError
    from readegress.sql.local import open_local_engine
    from readegress.tables.spec import SpecError

    # No osquery here: read_then_egress shows what the extension saved in its
    # state directory (read-only), readegress_health says the osquery source is absent.
    env = open_environment(args.config, state_dir=args.state_dir, background=False, offline=True)
    try:
        engine, calls = open_local_engine(env, sql=args.sql)
    except SpecError as e:
        _err(f"error: {e}")
        env.close()
        return EXIT_ERROR
    lines: list[str] | None = None
    try:
        if args.json:
            # SQLite encodes the objects itself (see Engine.query_json).
            lines = engine.query_json(args.sql)
        if lines is None:
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
    if lines is not None:
        if lines:
            out.write("\n".join(lines) + "\n")
    elif args.json:
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
    if args.update_readme:
        from pathlib import Path

        from readegress.tables.spec import readme_with_reference

        readme = Path(args.update_readme)
        readme.write_text(readme_with_reference(readme.read_text(encoding="utf-8"), specs))
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


def cmd_file_paths(args: argparse.Namespace) -> int:
    from readegress.detect.config import ConfigError, load_config
    from readegress.sources.osquery_setup import catalogue_file_paths

    try:
        config = load_config(args.config)
    except ConfigError as e:
        for problem in e.problems:
            _err(f"error: {problem}")
        return EXIT_ERROR
    json.dump(catalogue_file_paths(config.catalogue), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    import dataclasses

    from readegress.detect.config import ConfigError, load_config
    from readegress.detect.core import Detection
    from readegress.logs.replay import detection_json_line, replay
    from readegress.logs.results import BadLine
    from readegress.net.classify import parse_classes

    try:
        # The owner check applies when running as root: a config others can
        # edit could approve their own exfiltration out of the report.
        config = load_config(args.config, check_owner=True)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    if args.egress_class:
        try:
            extra = parse_classes(args.egress_class)
        except ValueError as e:
            _err(f"error: {e}")
            return EXIT_USAGE
        config = dataclasses.replace(config, egress_classes=config.egress_classes | extra)
    shown = 0

    def on_bad(bad: BadLine) -> None:
        nonlocal shown
        if shown < args.max_errors:
            shown += 1
            print(bad, file=sys.stderr)

    out = sys.stdout.buffer

    def emit(detection: Detection) -> None:
        out.write(detection_json_line(detection))

    result = replay(
        args.logs,
        config,
        emit=emit,
        on_bad=on_bad,
        fast=not args.full_parse,
        jobs=args.jobs,
        max_lateness=args.max_lateness,
    )
    out.flush()
    r, s = result.read, result.stats
    problems = r.bad_lines + s.row_errors
    if problems > shown:
        print(f"readegress replay: {problems - shown} more not shown", file=sys.stderr)
    print(
        f"readegress replay: {r.lines} lines, {r.rows} rows ({r.removed} removed, "
        f"{r.skipped} skipped, {r.collapsed} collapsed), {r.bad_lines} bad lines, "
        f"{s.row_errors} unusable rows; {s.detections} detections "
        f"({s.below_threshold} below threshold) on {s.hosts} hosts",
        file=sys.stderr,
    )
    return EXIT_ERROR if r.unreadable_files else EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    from readegress.watch import run_watch

    logging.basicConfig(level=logging.WARNING, format="readegress: %(levelname)s %(message)s")
    return run_watch(
        config_path=args.config,
        as_json=args.json,
        egress_classes=args.egress_class,
        sensitive=args.sensitive,
        state_dir=args.state_dir,
    )


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
    q.add_argument("--config", help="readegress config (default: the shipped one)")
    q.add_argument(
        "--state-dir", help="where the extension keeps its state (default: the config's state_dir)"
    )
    q.set_defaults(func=cmd_query)

    f = sub.add_parser(
        "file-paths",
        help="print osquery file_paths (JSON) covering the catalogue, for osquery's config",
    )
    f.add_argument("--config", help="readegress config (default: the shipped one)")
    f.set_defaults(func=cmd_file_paths)

    t = sub.add_parser("tables", help="list tables and columns from the specs")
    t.add_argument("--names", action="store_true", help="table names only")
    t.add_argument("--markdown", action="store_true", help="the README's table reference")
    t.add_argument("--update-readme", metavar="README", help="regenerate README's reference")
    t.set_defaults(func=cmd_tables)

    r = sub.add_parser(
        "replay",
        help="correlate osquery results logs (any format, .gz, - for stdin); JSON per detection",
    )
    r.add_argument("logs", nargs="+", metavar="LOG", help="results log(s), oldest first")
    r.add_argument("--config", help="readegress config (default: the shipped one)")
    r.add_argument(
        "--egress-class",
        action="append",
        default=[],
        metavar="CLASS",
        help="also count this destination class as egress (e.g. loopback); repeatable",
    )
    r.add_argument(
        "--jobs", type=int, default=None, help="processes, one set of hosts each (default: auto)"
    )
    r.add_argument(
        "--max-lateness",
        type=float,
        default=3660.0,
        help="seconds an event may be logged after newer ones (default 3660)",
    )
    r.add_argument("--max-errors", type=int, default=1000, help="bad lines to print (default 1000)")
    r.add_argument("--full-parse", action="store_true", help="parse every line (no fast path)")
    r.set_defaults(func=cmd_replay)

    w = sub.add_parser(
        "watch",
        help="detect on this host without osquery (fanotify + sock_diag), one line per detection",
    )
    w.add_argument("--config", help="readegress config (default: the shipped one)")
    w.add_argument("--json", action="store_true", help="one JSON object per detection")
    w.add_argument(
        "--egress-class",
        action="append",
        default=[],
        metavar="CLASS",
        help="also count this destination class as egress (e.g. loopback); repeatable",
    )
    w.add_argument(
        "--sensitive",
        action="append",
        default=[],
        metavar="PATH",
        help="also watch this file (class cli_sensitive, high weight); repeatable",
    )
    w.add_argument("--state-dir", help="keep state here (default: none is kept)")
    w.set_defaults(func=cmd_watch)

    sub.add_parser(
        "extension",
        help="serve the tables to osquery over its extension socket"
        " (--socket S [--config F] [--state-dir D]; unknown flags are ignored)",
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
