"""The ``readegress`` command line. Thin: each subcommand parses its flags and
calls into the package; imports are lazy so ``readegress query`` starts fast.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
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


def config_error(problems: Sequence[str]) -> int:
    """Report config problems (each ``file:line: message``); the exit code of every
    subcommand for a config it cannot use is :data:`EXIT_USAGE`."""
    for problem in problems:
        print(problem, file=sys.stderr)
    return EXIT_USAGE


def _csv_cell(value: str, separator: str) -> str:
    # SQLite's shell (which osqueryi is) quotes a cell holding the separator,
    # a quote or a line break, doubling the quotes.
    if separator in value or '"' in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def print_csv(
    names: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO, separator: str = "|"
) -> None:
    """osqueryi ``--csv``: a header line, then one line per row, ``|``-separated."""
    if not names:
        return
    out.write(separator.join(_csv_cell(n, separator) for n in names) + "\n")
    for r in rows:
        out.write(separator.join(_csv_cell(_format_value(v), separator) for v in r) + "\n")


def print_lines(names: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """osqueryi ``--line``: ``name = value`` per column, names right-aligned, a blank
    line between rows."""
    width = max((len(n) for n in names), default=0)
    for i, r in enumerate(rows):
        if i:
            out.write("\n")
        for n, v in zip(names, r):
            out.write(f"{n:>{width}} = {_format_value(v)}\n")


def cmd_query(args: argparse.Namespace) -> int:
    from readegress.service import open_environment
    from readegress.sql.engine import SQLError
    from readegress.sql.local import open_local_engine
    from readegress.tables.spec import SpecError

    # No osquery here: read_then_egress shows what the extension saved in its
    # state directory (read-only), readegress_health says the osquery source is absent.
    env = open_environment(args.config, state_dir=args.state_dir, background=False, offline=True)
    if env.config_problems:
        env.close()
        return config_error(env.config_problems)
    try:
        engine, calls = open_local_engine(env, sql=args.sql)
    except SpecError as e:
        _err(f"error: {e}")
        env.close()
        return EXIT_ERROR
    data: bytes | None = None
    try:
        if args.json:
            # SQLite (or, for a full scan, the compiled accelerator) encodes
            # the objects (see Engine.query_json_utf8).
            data = engine.query_json_utf8(args.sql)
        if data is None:
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
    if data is not None:
        raw = getattr(out, "buffer", None)
        if raw is None:  # a text-only stream (tests): decode once
            out.write(data.decode())
        else:
            out.flush()
            raw.write(data)
    elif args.json:
        for r in rows:
            out.write(json.dumps(dict(zip(names, r)), default=_format_value) + "\n")
    elif args.csv:
        print_csv(names, rows, out, args.separator)
    elif args.line:
        print_lines(names, rows, out)
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
        return config_error(e.problems)
    json.dump(catalogue_file_paths(config.catalogue), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _load_log_config(args: argparse.Namespace) -> Any:
    """The layered ``--config`` files plus ``--egress-class``; None after reporting a problem."""
    import dataclasses

    from readegress.detect.config import ConfigError, load_configs
    from readegress.net.classify import parse_classes

    try:
        # The owner check applies when running as root: a config others can
        # edit could approve their own exfiltration out of the report.
        config = load_configs(args.config or None, check_owner=True)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return None
    if getattr(args, "egress_class", None):
        try:
            extra = parse_classes(args.egress_class)
        except ValueError as e:
            _err(f"error: {e}")
            return None
        config = dataclasses.replace(config, egress_classes=config.egress_classes | extra)
    return config


class _BadLinePrinter:
    """Prints the first ``limit`` bad lines (``FILE:LINE: reason``), counts them all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.shown = 0
        self.count = 0

    def __call__(self, bad: Any) -> None:
        self.count += 1
        if self.shown < self.limit:
            self.shown += 1
            print(bad, file=sys.stderr)

    def tail(self, prog: str) -> None:
        if self.count > self.shown:
            print(f"readegress {prog}: {self.count - self.shown} more not shown", file=sys.stderr)


def cmd_replay(args: argparse.Namespace) -> int:
    config = _load_log_config(args)
    if config is None:
        return EXIT_USAGE
    if args.engine is None:
        # The columnar engine when its extra is installed; the per-row reader otherwise
        # (the extension's own install has no fleet extra).
        import importlib.util

        have = all(importlib.util.find_spec(m) for m in ("duckdb", "pyarrow"))
        args.engine = "duckdb" if have else "python"
    if args.engine != "python":
        return _replay_engine(args, config)
    from readegress.detect.core import Detection
    from readegress.logs.replay import detection_json_line, replay

    on_bad = _BadLinePrinter(args.max_errors)
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
    on_bad.tail("replay")
    print(
        f"readegress replay: {r.lines} lines, {r.rows} rows ({r.removed} removed, "
        f"{r.skipped} skipped, {r.collapsed} collapsed), {r.bad_lines} bad lines, "
        f"{s.row_errors} unusable rows; {s.detections} detections "
        f"({s.below_threshold} below threshold) on {s.hosts} hosts; "
        f"evicted_reads {result.core.get('evicted_reads', 0)}, "
        f"evicted_processes {result.core.get('evicted_processes', 0)}",
        file=sys.stderr,
    )
    return EXIT_ERROR if r.unreadable_files else EXIT_OK


def _replay_engine(args: argparse.Namespace, config: Any) -> int:
    from readegress.fleet.run import EngineUnavailable, run, stopped_by_signals
    from readegress.logs.replay import detection_json_line

    on_bad = _BadLinePrinter(args.max_errors)
    try:
        with stopped_by_signals():
            # Only the detections are written: the candidates below the threshold are counted.
            fr = run(
                args.logs,
                config,
                on_bad,
                engine=args.engine,
                master=args.master,
                min_score=config.threshold,
            )
            fr.engine.close()  # the detections are out of it
    except EngineUnavailable as e:
        _err(f"error: {e} (or --engine python)")
        return EXIT_USAGE
    out = sys.stdout.buffer
    found = fr.correlated.candidates
    for d in found:
        out.write(detection_json_line(d))
    out.flush()
    on_bad.tail("replay")
    s = fr.summary()
    print(
        f"readegress replay ({s['engine']}): {s['lines']} lines, {s['rows']} rows "
        f"({s['removed']} removed, {s['event_rows']} events, {s['fed_events']} fed after "
        f"narrowing), {s['bad_lines']} bad lines, {s['row_errors']} unusable rows; "
        f"{len(found)} detections ({fr.correlated.dropped} below "
        f"threshold) on {s['correlated_hosts']} hosts; evicted_reads {s['evicted_reads']}, "
        f"evicted_processes {s['evicted_processes']}",
        file=sys.stderr,
    )
    return EXIT_ERROR if fr.lines.unreadable_files else EXIT_OK


def _parse_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    import datetime

    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither Unix seconds nor an ISO 8601 time"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()


def _fleet_run(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(config, run, report) or (None, None, exit code)."""
    from readegress.fleet.report import build_report
    from readegress.fleet.run import EngineUnavailable, run, stopped_by_signals

    config = _load_log_config(args)
    if config is None:
        return None, None, EXIT_USAGE
    on_bad = _BadLinePrinter(args.max_errors)
    with stopped_by_signals():
        try:
            fr = run(args.logs, config, on_bad, engine=args.engine, master=args.master)
        except EngineUnavailable as e:
            _err(f"error: {e}")
            return None, None, EXIT_USAGE
        try:
            on_bad.tail("fleet")
            report = build_report(
                fr.engine,
                config,
                fr.correlated,
                decoration_keys=fr.decoration_keys,
                since=args.since,
                until=args.until,
                silent_intervals=args.silent_intervals,
                summary=fr.summary(),
            )
        finally:
            fr.engine.close()
    return config, fr, report


def cmd_fleet_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from readegress.fleet.html import render

    config, fr, report = _fleet_run(args)
    if config is None:
        return int(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.html").write_text(render(report), encoding="utf-8")
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(report, default=str) + "\n")
    s = report["summary"]
    print(
        f"readegress fleet report ({s['engine']}): {s['lines']} lines, {s['bad_lines']} bad, "
        f"{s['hosts']} hosts, {s['detections']} detections, "
        f"{len(report['prevalence'])} pairs, evicted_reads {s['evicted_reads']}"
        + (f"; wrote {args.out}/report.html" if args.out else ""),
        file=sys.stderr,
    )
    return EXIT_ERROR if fr.lines.unreadable_files else EXIT_OK


def cmd_fleet_baseline(args: argparse.Namespace) -> int:
    from readegress.fleet.baseline import baseline_toml, proposed_pairs

    config, fr, report = _fleet_run(args)
    if config is None:
        return int(report)
    known = config.catalogue.by_name
    text = baseline_toml(
        report["prevalence"], args.min_hosts, sources=fr.files, known_classes=known
    )
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    n = len(proposed_pairs(report["prevalence"], args.min_hosts, known))
    print(f"readegress fleet baseline: {n} pairs proposed -> {args.out}", file=sys.stderr)
    return EXIT_ERROR if fr.lines.unreadable_files else EXIT_OK


def add_log_parsers(sub: Any) -> None:
    """``replay``, ``fleet report`` and ``fleet baseline``."""
    r = sub.add_parser(
        "replay",
        help="correlate osquery results logs (any format, .gz, dirs, - for stdin): JSON lines",
    )
    r.add_argument("logs", nargs="+", metavar="LOG", help="results log(s) or dirs, oldest first")
    _log_flags(r)
    r.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="python engine: processes, one set of hosts each (default: auto)",
    )
    r.add_argument(
        "--max-lateness",
        type=float,
        default=3660.0,
        help="python engine: seconds an event may be logged after newer ones (default 3660)",
    )
    r.add_argument(
        "--full-parse", action="store_true", help="python engine: parse every line (no fast path)"
    )
    r.set_defaults(func=cmd_replay)

    f = sub.add_parser("fleet", help="fleet-wide report and baseline from results logs")
    fsub = f.add_subparsers(dest="fleet_command", required=True)
    rep = fsub.add_parser(
        "report", help="detections, prevalence, coverage; --json and/or --out DIR"
    )
    rep.add_argument("logs", nargs="+", metavar="LOG_OR_DIR")
    _log_flags(rep, engines=("duckdb", "spark"))
    rep.add_argument("--out", metavar="DIR", help="write report.html and report.json here")
    rep.add_argument("--json", action="store_true", help="print the report as one JSON document")
    _period_flags(rep)
    rep.set_defaults(func=cmd_fleet_report)
    base = fsub.add_parser("baseline", help="propose approved pairs seen on many hosts (TOML)")
    base.add_argument("logs", nargs="+", metavar="LOG_OR_DIR")
    _log_flags(base, engines=("duckdb", "spark"))
    base.add_argument("--min-hosts", type=_positive_int, required=True, metavar="N")
    base.add_argument(
        "--out", required=True, metavar="FILE", help="the config to write (- : stdout)"
    )
    _period_flags(base)
    base.set_defaults(func=cmd_fleet_baseline)


def _log_flags(
    p: argparse.ArgumentParser, engines: tuple[str, ...] = ("duckdb", "spark", "python")
) -> None:
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="readegress config; repeatable, later files extend earlier ones (default: shipped)",
    )
    p.add_argument(
        "--egress-class",
        action="append",
        default=[],
        metavar="CLASS",
        help="also count this destination class as egress (e.g. loopback); repeatable",
    )
    p.add_argument(
        "--engine",
        choices=engines,
        default=None if "python" in engines else "duckdb",
        help="duckdb (embedded, default), spark (distributed)"
        + (
            ", python (per-row reader; the default without the fleet extra)"
            if "python" in engines
            else ""
        ),
    )
    p.add_argument("--master", help="spark engine: the master URL (default: local[*])")
    p.add_argument("--max-errors", type=int, default=1000, help="bad lines to print (default 1000)")


def _period_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=_parse_time, help="from this time (Unix seconds or ISO 8601)")
    p.add_argument("--until", type=_parse_time, help="up to this time (Unix seconds or ISO 8601)")
    p.add_argument(
        "--silent-intervals",
        type=float,
        default=3.0,
        help="a host is silent after this many of its usual query intervals (default 3)",
    )


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


EXTENSION_HELP = """\
usage: readegress extension --socket PATH [--timeout N] [--interval N] [--verbose]
                            [--config FILE] [--state-dir DIR]

Serve readegress's tables to osquery over its extension socket. osqueryd runs
an autoloaded extension as: EXT --socket PATH --timeout N --interval N [--verbose]
(osqueryi --extension EXT does the same). Unknown flags are ignored, so a newer
osquery's launch flags never stop the extension.

  --socket PATH     osquery's extension manager socket (default /var/osquery/osquery.em;
                    osqueryi: ~/.osquery/shell.em); also --extensions_socket
  --timeout N       seconds to wait for the manager at start (also --extensions_timeout)
  --interval N      seconds between checks that the manager is alive (--extensions_interval)
  --verbose         debug logging on stderr
  --config FILE     readegress config (default: the shipped catalogue)
  --state-dir DIR   where detections and cursors are kept (absolute path)
  --call-timeout N  seconds a table call may take before it answers an error
  --gone-after N    exit 0 when the manager has been gone this long
"""


def cmd_packs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from readegress.packs.check import check
    from readegress.packs.formats import build_inputs, render, write
    from readegress.packs.source import load_source

    root = Path(args.root) if args.root else _source_root()
    if root is None or not (root / "packs" / "src").is_dir():
        _err("error: no packs/src here: run from a readegress source tree or pass --root DIR")
        return EXIT_USAGE
    if args.action == "build":
        source = load_source(root / "packs" / "src")
        if source.problems:
            return config_error([str(p) for p in source.problems])
        changed = write(root / "packs", render(source, build_inputs(root)))
        for rel in changed:
            print(f"wrote packs/{rel}")
        return EXIT_OK
    problems = check(root)
    if problems:
        return config_error([str(p) for p in problems])
    print(f"packs: {root / 'packs'}: ok", file=sys.stderr)
    return EXIT_OK


def _source_root() -> Any:
    """The source tree this package runs from (``extension/readegress`` in a checkout)."""
    from pathlib import Path

    here = Path(__file__).resolve().parents[2]
    if (here / "packs" / "src").is_dir():
        return here
    cwd = Path.cwd()
    return cwd if (cwd / "packs" / "src").is_dir() else None


def cmd_doctor(args: argparse.Namespace) -> int:
    from readegress.doctor import DoctorPaths, exit_code, render_text, run_doctor

    paths = DoctorPaths.from_args(args)
    results = run_doctor(paths)
    if args.json:
        for r in results:
            sys.stdout.write(json.dumps(r.to_json()) + "\n")
    else:
        sys.stdout.write(render_text(results))
    return exit_code(results)


def add_deploy_parsers(sub: Any) -> None:
    """``packs`` and ``doctor``."""
    pk = sub.add_parser("packs", help="build or check packs/ from packs/src (one file per query)")
    pk.add_argument("action", choices=("build", "check"))
    pk.add_argument(
        "--root", help="the source tree holding packs/ and install/ (default: this one)"
    )
    pk.set_defaults(func=cmd_packs)

    d = sub.add_parser(
        "doctor",
        help="pre-flight and health: autoload rules, osquery flags, audit owner, fanotify,"
        " sock_diag, file_paths (exit 0 ok, 1 warn, 2 fail)",
    )
    d.add_argument("--json", action="store_true", help="one JSON object per check")
    d.add_argument("--config", help="readegress config (default: the shipped one)")
    d.add_argument(
        "--extensions-load",
        default="/etc/osquery/extensions.load",
        help="osquery's --extensions_autoload file (default: /etc/osquery/extensions.load)",
    )
    d.add_argument(
        "--ext",
        help="the readegress .ext osquery should load (default: every readegress*.ext listed)",
    )
    d.add_argument(
        "--flagfile",
        default="/etc/osquery/osquery.flags",
        help="osqueryd's flagfile when no osqueryd runs (default: /etc/osquery/osquery.flags)",
    )
    d.add_argument(
        "--osquery-config",
        default="/etc/osquery/osquery.conf",
        help="osquery's filesystem config, for file_paths (default: /etc/osquery/osquery.conf)",
    )
    # Test seams: a fake procfs and systemd unit directory.
    d.add_argument("--proc", default="/proc", help=argparse.SUPPRESS)
    d.add_argument("--systemd-dir", default="/etc/systemd/system", help=argparse.SUPPRESS)
    d.add_argument("--systemd-vendor-dir", default="/lib/systemd/system", help=argparse.SUPPRESS)
    d.set_defaults(func=cmd_doctor)


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
    modes = q.add_mutually_exclusive_group()
    modes.add_argument("--json", action="store_true", help="one JSON object per row")
    modes.add_argument(
        "--csv", action="store_true", help="header and rows separated by --separator (osqueryi)"
    )
    modes.add_argument(
        "--line", action="store_true", help="one 'column = value' line per value (osqueryi)"
    )
    q.add_argument("--separator", default="|", help="--csv separator (default: |)")
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

    add_log_parsers(sub)

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

    add_deploy_parsers(sub)

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
        if any(a in ("-h", "--help", "-help") for a in args_list[1:]):
            sys.stdout.write(EXTENSION_HELP)
            return EXIT_OK
        return cmd_extension(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    one_shot = argv is None and args.func is cmd_query
    if one_shot:
        # The whole process is one query: what it builds (the snapshot, a
        # 20k-row answer) lives until it exits, and holds no cycles worth
        # collecting; each full collection would only traverse it all (~12 ms
        # of CPU each at 10k connections, measured). Not when called in-process.
        gc.disable()
    # Batch runs over logs end like a query (below), with the collector on: the
    # teardown freed a 1 GB replay's rows, events and detections one by one (~50 ms).
    skip_teardown = one_shot or (
        argv is None and args.func in (cmd_replay, cmd_fleet_report, cmd_fleet_baseline)
    )
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head`: not an error of ours.
        return EXIT_OK
    if skip_teardown:
        # Everything is written and closed: leave without the interpreter's
        # teardown (a last full collection and freeing every object one by
        # one: ~24 ms of CPU at 10k connections, measured).
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:
            pass  # output piped into `head`, as above
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
