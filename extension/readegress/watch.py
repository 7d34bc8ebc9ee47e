"""``readegress watch``: detect on this host without osquery, printing each detection.

Runs the native sources (:class:`~readegress.sources.native.NativeSources`:
fanotify reads of the catalogue, sock_diag egress with hot mode) into the one
:class:`~readegress.service.DetectionService` — the same correlation, settling,
enrichment and threshold as the extension — and prints every detection as it is
finalized: one readable line, or with ``--json`` one JSON object per line with
the fields ``readegress replay`` prints (:func:`readegress.logs.replay.detection_json`)
plus ``detected_time``, ``start_time`` and ``closed_bytes_sent``.

``--egress-class CLASS`` adds a destination class (``loopback`` for a demo);
``--sensitive PATH`` adds a file to the catalogue as class
:data:`CLI_CLASS` at the ``high`` weight (and to fanotify's permission group,
so even a reader that lives a millisecond is identified). Once the sources are
armed one line goes to stderr (``readegress: watching N files; egress classes:
...``); detections go to stdout, flushed per line.

SIGINT/SIGTERM stop it: the fanotify groups are closed (every held opener is
answered first), buffered events are fed and every pending candidate is settled
with what is known at that moment (so nothing in flight is lost), then it exits
0. State is kept only with ``--state-dir``; without it nothing is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Optional, TextIO

from readegress.detect.catalogue import LEVEL_WEIGHTS, Catalogue, SensitiveClass
from readegress.detect.config import Config, ConfigError, load_config
from readegress.net.classify import parse_classes

log = logging.getLogger("readegress.watch")

CLI_CLASS = "cli_sensitive"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """A flag value that cannot be used (the message says which)."""


def _literal_glob(path: str) -> str:
    """A catalogue glob matching exactly ``path`` (the glob syntax has no escape:
    ``*``, ``?`` and ``{`` become one-character classes; ``[`` cannot be expressed)."""
    if "[" in path:
        raise UsageError(f"--sensitive {path!r}: paths with '[' cannot be watched; use --config")
    return "".join(f"[{c}]" if c in "*?{" else c for c in path)


def watch_config(
    config: Config, *, egress_classes: Sequence[str] = (), sensitive: Sequence[str] = ()
) -> tuple[Config, list[str]]:
    """The config with the command line's additions, and the absolute sensitive paths."""
    if egress_classes:
        try:
            extra = parse_classes(list(egress_classes))
        except ValueError as e:
            raise UsageError(str(e)) from None
        config = dataclasses.replace(config, egress_classes=config.egress_classes | extra)
    paths = [os.path.normpath(os.path.abspath(p)) for p in sensitive]
    if paths:
        cls = SensitiveClass(
            name=CLI_CLASS,
            level="high",
            weight=LEVEL_WEIGHTS["high"],
            alone=True,
            paths=tuple(_literal_glob(p) for p in paths),
        )
        classes = [c for c in config.catalogue.classes if c.name != CLI_CLASS]
        config = dataclasses.replace(config, catalogue=Catalogue([*classes, cls]))
    return config, paths


def detection_record(final: Any) -> dict[str, Any]:
    """The JSON object of one final detection (``readegress replay``'s fields and more)."""
    from readegress.logs.replay import detection_json

    out = detection_json(final.detection)
    out["detected_time"] = final.detected_time
    out["start_time"] = final.start_time
    out["closed_bytes_sent"] = final.closed_bytes_sent
    return out


def detection_text(final: Any) -> str:
    """One readable line for people."""
    d = final.detection
    when = time.strftime("%H:%M:%S", time.localtime(d.egress_time))
    sent = "?" if d.bytes_sent is None else str(d.bytes_sent)
    exe = d.executable or "?"
    reader = "" if d.reader_pid == d.pid else f" (read by pid {d.reader_pid})"
    return (
        f"{when} priority {d.priority} score {d.score} {d.scope}: pid {d.pid} {exe} read {d.path}"
        f" [{d.sensitive_class}]{reader} then {d.egress_kind} to"
        f" {d.remote_address}:{d.remote_port} ({d.remote_class}) {d.delay:.3f}s later,"
        f" {sent} bytes sent; {', '.join(d.reasons)}"
    )


class Printer:
    """Writes each final detection as it comes (from the service thread)."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, final: Any) -> None:
        line = (
            json.dumps(detection_record(final), separators=(",", ":"))
            if self.as_json
            else detection_text(final)
        )
        with self._lock:
            self.count += 1
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except BrokenPipeError:
                pass


def run_watch(
    *,
    config_path: Optional[str] = None,
    as_json: bool = False,
    egress_classes: Sequence[str] = (),
    sensitive: Sequence[str] = (),
    state_dir: Optional[str] = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stop: Optional[threading.Event] = None,
    install_signals: bool = True,
) -> int:
    """Watch until SIGINT/SIGTERM (or ``stop`` is set); returns the exit code."""
    from readegress.service.detection_service import DetectionService
    from readegress.sources.native import NativeSources

    def say(msg: str) -> None:
        err.write(f"readegress: {msg}\n")
        err.flush()

    try:
        config = load_config(config_path)
    except ConfigError as e:
        for p in e.problems:
            say(f"error: {p}")
        return EXIT_USAGE
    try:
        config, paths = watch_config(config, egress_classes=egress_classes, sensitive=sensitive)
    except UsageError as e:
        say(f"error: {e}")
        return EXIT_USAGE
    if state_dir is not None and not os.path.isabs(state_dir):
        say(f"error: --state-dir {state_dir!r} must be an absolute path")
        return EXIT_USAGE

    printer = Printer(out, as_json=as_json)
    service = DetectionService(
        config, None, state_dir=state_dir, persist=state_dir is not None, on_final=printer
    )
    if state_dir is not None:
        service.open()
    service.mode = "watch"
    native = NativeSources(config, service.host, extra_paths=paths)
    service.attach_native(native)
    stop = stop if stop is not None else threading.Event()
    previous: dict[int, Any] = {}
    if install_signals:

        def on_signal(_signum: int, _frame: Optional[FrameType]) -> None:
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        try:
            native.start()
        except OSError as e:
            say(f"error: the native sources cannot run: {native.error or e} (run as root)")
            return EXIT_ERROR
        plan = native.reads.plan
        files = len(plan.files) if plan is not None else 0
        dirs = len(plan.dirs) if plan is not None else 0
        classes = ", ".join(sorted(c.value for c in config.egress_classes))
        say(
            f"watching {files} files"
            + (f" and {dirs} directories" if dirs else "")
            + f"; egress classes: {classes}"
        )
        service.start()
        while not stop.wait(0.5):
            pass
    finally:
        service.stop()  # closes the native sources first: held openers are answered
        service.flush()  # feed what is buffered, settle what is pending: nothing is lost
        service.save()
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    st = native.stats()
    eg, rd = st["egress"], st["reads"]
    say(
        f"stopped: {printer.count} detections; {st['read_events']} reads,"
        f" {st['egress_events']} egress events;"
        f" fanotify overflows {rd['overflows']}, dropped {rd['dispatch_dropped']};"
        f" hot lineages {eg['hot_started']} (skipped {eg['hot_skipped']}),"
        f" hot CPU {eg['hot_cpu_seconds']:.3f}s over {eg['hot_wall_seconds']:.1f}s,"
        f" unattributed closes {eg['unattributed']};"
        f" {eviction_summary(service.correlator.stats)}"
    )
    return EXIT_OK


def eviction_summary(core_stats: dict[str, int]) -> str:
    """The core's read-eviction counters in words."""
    return (
        f"reads evicted {core_stats.get('evicted_reads', 0)}"
        f" (flood {core_stats.get('flood_reads', 0)},"
        f" alerting {core_stats.get('evicted_alerting_reads', 0)}),"
        f" collapsed repeats {core_stats.get('collapsed_reads', 0)}"
    )
