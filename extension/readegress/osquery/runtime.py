"""The extension process: serve the tables to osquery and stay registered.

osqueryd launches an autoloaded extension as ``EXE --socket PATH --timeout N
--interval N [--verbose]`` (``osqueryi --extension`` does the same) and may
pass more flags in later versions, so :func:`run_extension` ignores flags it
does not know. ``--socket`` is the core's manager socket, ``--timeout`` how
long to wait for it, ``--interval`` how often to check on it.

Lifecycle, as supervised by :class:`ExtensionRuntime`:

1. Wait up to ``timeout`` seconds for the manager socket to answer a ping
   (retrying with backoff, as osquery's own SDK polls). Never answered: exit 1.
2. Listen on a temporary socket next to the manager's, register with
   ``registerExtension`` (name, version, SDK version and the table routes
   from the specs), then rename the socket to ``<manager socket>.<uuid>``:
   the core can call us the moment it knows the uuid. A refusal (duplicate
   name, SDK too old, bad routes) is logged with the core's reason: exit 1.
3. Every ``interval`` seconds ping the core and check that ``extensions()``
   still lists our uuid under our name. If the core restarted (osquery
   crash, ``osqueryi`` relaunched on the same socket) or dropped us, stop
   the old server and register again: new uuid, new socket.
4. If the core cannot be reached, retry with backoff (logged once, not per
   retry). Back within ``gone_after`` seconds: carry on (re-registering if
   needed). Gone longer: exit 0, as osquery's own extensions do when the core
   goes away. ``gone_after`` defaults to ``max(2 * timeout, 3 * interval, 1)``
   (9 s with osqueryd's defaults): long enough for a core restart, short
   enough that an orphaned extension does not linger.
5. ``shutdown()`` from the core (sent when osqueryd stops), SIGTERM or
   SIGINT: stop serving, remove the socket, exit 0. On SIGTERM/SIGINT the
   extension also deregisters, so the core drops its tables at once.

:func:`run_extension` also takes readegress's own ``--config F`` and
``--state-dir D``, builds the detection service with them, hands it the
manager client once registered (``on_registered``), and stops it (saving its
state) on exit.

Exit codes: 0 clean stop (including "core gone"); 1 could not register
(core never reachable, registration refused, tables failed to load).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Callable, Union

from osquery.extensions import Extension
from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus

import readegress
from readegress.osquery.client import (
    ExtensionInfo,
    ManagerClient,
    OsqueryCallError,
    OsqueryUnavailable,
)
from readegress.osquery.handler import TableExtensionHandler
from readegress.osquery.reply import ExtensionProcessor
from readegress.osquery.server import DEFAULT_MAX_CONNECTIONS, ThriftUnixServer
from readegress.tables.base import BoundTable, TableCalls, TableEnv, load_tables

log = logging.getLogger("readegress.osquery")

# The osquery SDK version we speak; the core refuses SDKs older than 1.7.7.
SDK_VERSION = "5.0.0"
# "0.0.0" means any core will do (osquery's versionAtLeast treats it as a pass).
MIN_SDK_VERSION = "0.0.0"
DEFAULT_SOCKET = "/var/osquery/osquery.em"
DEFAULT_TIMEOUT = 3.0
DEFAULT_INTERVAL = 3.0
# sun_path holds 108 bytes including the terminating NUL.
_MAX_UNIX_PATH = 107

_SignalHandler = Union[Callable[[int, Union[FrameType, None]], Any], int, None]


def default_gone_after(timeout: float, interval: float) -> float:
    """How long the core may be unreachable before the extension exits."""
    return max(2.0 * timeout, 3.0 * interval, 1.0)


class ExtensionRuntime:
    """Serve tables to an osquery core over Thrift and keep them registered.

    ``tables`` is either the bound tables (wrapped here in a
    :class:`TableCalls`, closed on exit) or a ready :class:`TableCalls`
    (the caller's to close). ``on_registered(manager)`` is called after each
    successful registration (readegress starts its detection service there).
    :meth:`run` blocks and returns the exit code;
    :meth:`stop` may be called from any thread; :meth:`start` runs it on a
    background thread (for tests and embedding).
    """

    def __init__(
        self,
        socket_path: str,
        tables: Mapping[str, BoundTable] | TableCalls,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        interval: float = DEFAULT_INTERVAL,
        name: str = "readegress",
        version: str = readegress.__version__,
        sdk_version: str = SDK_VERSION,
        min_sdk_version: str = MIN_SDK_VERSION,
        gone_after: float | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        on_registered: Callable[[ManagerClient], None] | None = None,
    ) -> None:
        if isinstance(tables, TableCalls):
            self.calls = tables
            self._owns_calls = False
        else:
            self.calls = TableCalls(dict(tables))
            self._owns_calls = True
        self.socket_path = str(socket_path)
        self.timeout = max(0.0, timeout)
        self.interval = max(0.05, interval)
        self.name = name
        self.gone_after = (
            default_gone_after(self.timeout, self.interval) if gone_after is None else gone_after
        )
        self._info = ExtensionInfo(name, version, sdk_version, min_sdk_version)
        self._max_connections = max_connections
        # Never wait longer on one manager call than the launch timeout allows.
        self._manager_timeout = max(0.5, self.timeout)
        self._manager = ManagerClient(self.socket_path, timeout=self._manager_timeout)
        self._stop = threading.Event()
        self._registered = threading.Event()
        self._lock = threading.Lock()
        self._server: ThriftUnixServer | None = None
        self._uuid: int | None = None
        self._state = ""
        self._stop_reason = "stop requested"
        self._deregister_on_exit = True
        self._thread: threading.Thread | None = None
        self._started = False
        self._tmp_seq = 0
        self._on_registered = on_registered
        #: monotonic time the core last answered: "gone for gone_after" counts
        #: from here, so a core that accepts and never answers (hung) costs
        #: gone_after, not gone_after plus every ping's timeout.
        self._last_contact = time.monotonic()
        self.exit_code: int | None = None

    # -- public surface ---------------------------------------------------

    @property
    def uuid(self) -> int | None:
        """The route uuid the core assigned (``None`` while not registered)."""
        with self._lock:
            return self._uuid if self._registered.is_set() else None

    @property
    def extension_socket(self) -> str | None:
        """Where the tables are served now (``<manager socket>.<uuid>``)."""
        with self._lock:
            server = self._server
        return server.path if server is not None and self._registered.is_set() else None

    @property
    def manager(self) -> ManagerClient:
        """A thread-safe client of the core, for table code that queries osquery."""
        return self._manager

    def wait_registered(self, timeout: float) -> bool:
        """Block until registered (or re-registered); False on timeout."""
        return self._registered.wait(timeout)

    def run(self) -> int:
        """Supervise until stopped; returns the process exit code."""
        if self._started:
            raise RuntimeError("an ExtensionRuntime runs once")
        self._started = True
        code = 1
        try:
            code = self._supervise()
        except Exception:
            log.exception("%s: extension runtime failed", self.name)
            code = 1
        finally:
            self._teardown()
            self.exit_code = code
        return code

    def start(self) -> threading.Thread:
        """Run :meth:`run` on a daemon thread; its result lands in ``exit_code``."""
        t = threading.Thread(target=self.run, name=f"{self.name}-runtime", daemon=True)
        self._thread = t
        t.start()
        return t

    def stop(self, reason: str = "stop requested") -> None:
        """Stop serving, deregister (best effort) and return from :meth:`run`."""
        self._stop_reason = reason
        self._stop.set()

    def join(self, timeout: float | None = None) -> int | None:
        """Wait for a :meth:`start`-ed runtime to finish; its exit code, or None."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.exit_code

    # -- supervision ------------------------------------------------------

    def _transition(self, state: str, level: int, msg: str, *args: object) -> None:
        # Each state change is logged once; retries within a state are not.
        if state != self._state:
            self._state = state
            log.log(level, msg, *args)

    def _supervise(self) -> int:
        self._transition(
            "waiting",
            logging.INFO,
            "%s: waiting up to %gs for the osquery core at %s",
            self.name,
            self.timeout,
            self.socket_path,
        )
        if not self._wait_for_manager(time.monotonic() + self.timeout):
            if self._stop.is_set():
                return 0
            log.error(
                "%s: no osquery core answered at %s within %gs",
                self.name,
                self.socket_path,
                self.timeout,
            )
            return 1
        code = self._register(initial=True)
        if code is not None:
            return code
        while not self._stop.wait(self.interval):
            code = self._watch_once()
            if code is not None:
                return code
        return 0

    def _wait_for_manager(self, deadline: float) -> bool:
        delay = 0.02  # osquery's own SDK polls the manager every 20 ms
        while not self._stop.is_set():
            try:
                self._manager.ping()
                self._last_contact = time.monotonic()
                return True
            except (OsqueryUnavailable, OsqueryCallError) as e:
                log.debug("%s: core not ready: %s", self.name, e)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._stop.wait(min(delay, remaining)):
                return False
            delay = min(delay * 2, 0.5)
        return False

    def _registry(self) -> dict[str, dict[str, list[dict[str, str]]]]:
        return {"table": {name: t.spec.routes() for name, t in self.calls.tables.items()}}

    def _temp_socket_path(self) -> str | None:
        self._tmp_seq += 1
        path = f"{self.socket_path}.{os.getpid()}-{self._tmp_seq}.tmp"
        return path if len(os.fsencode(path)) <= _MAX_UNIX_PATH else None

    def _register_once(self) -> tuple[str, str]:
        """One registration attempt: ("ok"|"refused"|"unavailable", message)."""
        handler = TableExtensionHandler(
            self.calls, name=self.name, on_shutdown=self._core_requested_shutdown
        )
        server = ThriftUnixServer(
            ExtensionProcessor(handler),
            max_connections=self._max_connections,
            name=self.name,
            busy_replies={"call": self._busy_call_result},
        )
        tmp = self._temp_socket_path()
        if tmp is not None:
            try:
                server.start(tmp)
            except OSError as e:
                # e.g. a read-only directory: fall back to binding after registering.
                log.debug("%s: cannot pre-bind %s: %s", self.name, tmp, e)
        try:
            status = self._manager.register_extension(self._info, self._registry())
        except (OsqueryUnavailable, OsqueryCallError) as e:
            server.stop()
            return "unavailable", str(e)
        if not status.ok:
            server.stop()
            return "refused", status.message or f"status code {status.code}"
        final = f"{self.socket_path}.{status.uuid}"
        try:
            if server.path is None:
                server.start(final)
            else:
                server.move_to(final)
        except OSError as e:
            log.error("%s: cannot serve on %s: %s", self.name, final, e)
            server.stop()
            self._try_deregister(status.uuid)
            return "unavailable", f"cannot serve on {final}: {e}"
        handler.uuid = status.uuid
        self._last_contact = time.monotonic()
        with self._lock:
            self._server = server
            self._uuid = status.uuid
        self._registered.set()
        self._transition(
            "registered",
            logging.INFO,
            "%s %s: registered with the osquery core as uuid %d; serving %s on %s",
            self.name,
            self._info.version,
            status.uuid,
            ", ".join(sorted(self.calls.tables)) or "no tables",
            final,
        )
        if self._on_registered is not None:
            # e.g. start the detection service, which queries the core; a failure
            # there must not undo a registration that worked.
            try:
                self._on_registered(self._manager)
            except Exception:
                log.exception("%s: on_registered callback failed", self.name)
        return "ok", ""

    def _busy_call_result(self) -> Any:
        """The answer to a table call that cannot run now (every worker busy, the
        queue full): status 1, so osquery reports an error instead of waiting."""
        status = ExtensionStatus(
            code=1, message=f"{self.name}: busy (all workers and the queue are full); try again"
        )
        return Extension.call_result(success=ExtensionResponse(status=status, response=[]))

    def _register(self, *, initial: bool) -> int | None:
        """Register, retrying within bounds; None on success, else the exit code."""
        start = time.monotonic()
        deadline = start + (self.timeout if initial else self.gone_after)
        duplicate_deadline = start + max(self.timeout, self.gone_after)
        ambiguous = False
        delay = 0.05
        while not self._stop.is_set():
            kind, message = self._register_once()
            if kind == "ok":
                return None
            now = time.monotonic()
            if kind == "refused":
                duplicate = "duplicate" in message.lower()
                if not duplicate or (initial and not ambiguous):
                    hint = " (is another instance already running?)" if duplicate else ""
                    log.error(
                        "%s: the osquery core refused the registration: %s%s",
                        self.name,
                        message,
                        hint,
                    )
                    return 1
                # The name is taken by a registration whose reply we never saw
                # (ours) or by an extension the core is about to drop: the core
                # drops registrations nobody serves, so wait for that.
                if now >= duplicate_deadline:
                    log.error(
                        "%s: another extension named %r stays registered with the core",
                        self.name,
                        self.name,
                    )
                    return 1
            else:
                ambiguous = True
                if now >= deadline:
                    if initial:
                        log.error(
                            "%s: could not register with the osquery core at %s within %gs: %s",
                            self.name,
                            self.socket_path,
                            self.timeout,
                            message,
                        )
                        return 1
                    log.info(
                        "%s: osquery core at %s gone for %gs; exiting",
                        self.name,
                        self.socket_path,
                        self.gone_after,
                    )
                    self._deregister_on_exit = False
                    return 0
            log.debug("%s: registration attempt failed: %s", self.name, message)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, max(0.1, self.interval))
        return 0

    def _ping_timeout(self) -> float:
        """A ping may wait until the core has been silent for gone_after, no longer."""
        left = self._last_contact + self.gone_after - time.monotonic()
        return max(0.05, min(self._manager_timeout, left))

    def _watch_once(self) -> int | None:
        """One periodic check; None to carry on, else the exit code."""
        try:
            self._manager.ping(timeout=self._ping_timeout())
            self._last_contact = time.monotonic()
            listed = self._manager.extensions(timeout=self._ping_timeout())
            self._last_contact = time.monotonic()
        except (OsqueryUnavailable, OsqueryCallError) as e:
            code = self._await_core(str(e))
            if code is not None:
                return code
            try:
                listed = self._manager.extensions()
            except (OsqueryUnavailable, OsqueryCallError):
                return None  # the next round decides
        with self._lock:
            uuid = self._uuid
        info = listed.get(uuid) if uuid is not None else None
        if info is not None and info.name == self.name:
            self._transition(
                "registered", logging.INFO, "%s: still registered as uuid %d", self.name, uuid
            )
            return None
        self._transition(
            "reregistering",
            logging.WARNING,
            "%s: the osquery core no longer lists uuid %s (it restarted or dropped us); "
            "registering again",
            self.name,
            uuid,
        )
        self._retire_server()
        return self._register(initial=False)

    def _await_core(self, reason: str) -> int | None:
        """Retry an unreachable core; None once it answers, 0 when gone for good."""
        self._transition(
            "unreachable",
            logging.WARNING,
            "%s: osquery core at %s unreachable (%s); retrying for up to %gs",
            self.name,
            self.socket_path,
            reason,
            self.gone_after,
        )
        start = time.monotonic()
        delay = 0.1
        while not self._stop.wait(
            min(delay, max(0.0, self._last_contact + self.gone_after - time.monotonic()))
        ):
            if time.monotonic() - self._last_contact >= self.gone_after:
                log.info(
                    "%s: osquery core at %s gone for %gs; exiting",
                    self.name,
                    self.socket_path,
                    self.gone_after,
                )
                self._deregister_on_exit = False
                return 0
            try:
                self._manager.ping(timeout=self._ping_timeout())
            except (OsqueryUnavailable, OsqueryCallError):
                delay = min(delay * 2, max(0.1, self.interval))
                continue
            self._last_contact = time.monotonic()
            self._transition(
                "reachable",
                logging.INFO,
                "%s: osquery core at %s answers again after %.1fs",
                self.name,
                self.socket_path,
                time.monotonic() - start,
            )
            return None
        return 0

    def _retire_server(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            self._uuid = None
        self._registered.clear()
        if server is not None:
            server.stop()

    def _try_deregister(self, uuid: int) -> None:
        with contextlib.suppress(OsqueryUnavailable, OsqueryCallError):
            self._manager.deregister_extension(uuid, timeout=min(1.0, max(0.5, self.timeout)))

    def _core_requested_shutdown(self) -> None:
        self._stop_reason = "the osquery core requested shutdown"
        self._deregister_on_exit = False
        self._stop.set()

    def _teardown(self) -> None:
        with self._lock:
            uuid = self._uuid
        if uuid is not None and self._deregister_on_exit and self._stop.is_set():
            # Tell the core now rather than letting its watcher find out.
            self._try_deregister(uuid)
        self._retire_server()
        self._manager.close()
        if self._owns_calls:
            self.calls.close()
        if self._stop.is_set():
            log.info("%s: stopped (%s)", self.name, self._stop_reason)


@dataclass
class ExtensionArgs:
    """The launch flags :func:`run_extension` understands; everything else is ignored."""

    socket: str = DEFAULT_SOCKET
    timeout: float = DEFAULT_TIMEOUT
    interval: float = DEFAULT_INTERVAL
    verbose: bool = False
    call_timeout: float | None = None
    gone_after: float | None = None
    config: str | None = None
    state_dir: str | None = None
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# Flag name -> field. osquery's long names are accepted too, for hand-written launchers.
_VALUE_FLAGS = {
    "socket": "socket",
    "extensions_socket": "socket",
    "timeout": "timeout",
    "extensions_timeout": "timeout",
    "interval": "interval",
    "extensions_interval": "interval",
    "call_timeout": "call_timeout",
    "gone_after": "gone_after",
    "config": "config",
    "state_dir": "state_dir",
}
# Flags whose value is a path, not a number of seconds.
_PATH_FLAGS = frozenset({"config", "state_dir"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_extension_args(argv: Sequence[str]) -> ExtensionArgs:
    """Parse launch flags leniently: unknown flags and bad values never abort.

    Accepts ``--flag value``, ``--flag=value`` and gflags' single dash
    (``-socket``); ``--verbose`` may carry ``=false``. A bad number keeps the
    default and adds a warning.
    """
    args = ExtensionArgs()
    i = 0
    items = list(argv)
    while i < len(items):
        arg = items[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            args.ignored.append(arg)
            continue
        key, eq, value = arg.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if key == "verbose":
            args.verbose = not (eq and value.strip().lower() in _FALSE)
            continue
        target = _VALUE_FLAGS.get(key)
        if target is None:
            args.ignored.append(arg)
            continue
        if not eq:
            if i >= len(items):
                args.warnings.append(f"flag {arg} has no value; ignored")
                continue
            value = items[i]
            i += 1
        if target == "socket" or target in _PATH_FLAGS:
            if value:
                setattr(args, target, value)
            else:
                args.warnings.append(f"flag {arg} has an empty value; ignored")
            continue
        try:
            number = float(value)
            if not number >= 0 or number == float("inf"):
                raise ValueError(value)
        except ValueError:
            args.warnings.append(f"flag {arg} {value!r} is not a number of seconds; ignored")
            continue
        setattr(args, target, number)
    return args


def _configure_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s readegress[%(process)d] %(levelname)s %(name)s: %(message)s"
            )
        )
        root.addHandler(handler)
    logging.getLogger("readegress").setLevel(logging.DEBUG if verbose else logging.INFO)


def _install_signal_handlers(runtime: ExtensionRuntime) -> dict[int, _SignalHandler]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, _SignalHandler] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        runtime.stop(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, on_signal)
    return previous


def _restore_signal_handlers(previous: Mapping[int, _SignalHandler]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def run_extension(argv: Sequence[str], *, tables: Mapping[str, BoundTable] | None = None) -> int:
    """Entry point of ``readegress extension``; returns the process exit code.

    ``argv`` is what osquery passed (``--socket PATH --timeout N --interval N
    [--verbose]`` and perhaps more, which is ignored), plus readegress's own
    ``--config F`` and ``--state-dir D``. Without ``tables`` the real tables
    are loaded from the specs, sharing one background :class:`TableEnv` (with
    the config and the detection service) for the life of the process.
    """
    args = parse_extension_args(argv)
    _configure_logging(args.verbose)
    for warning in args.warnings:
        log.warning("%s", warning)
    if args.ignored:
        log.debug("ignoring launch arguments: %s", " ".join(args.ignored))
    env: TableEnv | None = None
    if tables is None:
        from readegress.service import open_environment

        env = open_environment(args.config, state_dir=args.state_dir, background=True)
        try:
            tables = load_tables(env)
        except Exception as e:
            log.error("cannot load the readegress tables: %s", e)
            env.close()
            return 1
    calls = (
        TableCalls(dict(tables))
        if args.call_timeout is None
        else TableCalls(dict(tables), timeout=args.call_timeout)
    )
    runtime = ExtensionRuntime(
        args.socket,
        calls,
        timeout=args.timeout,
        interval=args.interval,
        gone_after=args.gone_after,
        on_registered=env.attach_manager if env is not None else None,
    )
    previous = _install_signal_handlers(runtime)
    try:
        return runtime.run()
    finally:
        _restore_signal_handlers(previous)
        calls.close()
        if env is not None:
            env.close()  # stops the detection service first, which saves its state
