"""The native sources together: fanotify reads + sock_diag egress, fed to the service in time order.

:class:`NativeSources` runs :class:`~readegress.sources.native_reads.NativeReadSource`
and :class:`~readegress.sources.native_egress.NativeEgressSource` and hands
their events to the :class:`~readegress.service.DetectionService`, whose one
thread feeds its :class:`~readegress.detect.core.Correlator`: native detections
go through the same settle / enrichment / threshold / store path as osquery's.

Ordering. The events come from several threads (fanotify's dispatcher, the egress
source's hot, poll and destroy threads) and the core misses an egress fed
*before* the read it follows. Feeding under one lock in arrival order is not
enough: a full poll may report a connect stamped after a read whose fanotify
event is still queued (the dispatcher runs behind the kernel by up to a few
milliseconds, more under load). So events are **buffered and released in time
order**: an event is fed once it is ``hold`` seconds old (0.25 s by default),
each batch sorted with :func:`~readegress.detect.events.sort_key`. A read
always arrives within ``hold`` of its time unless fanotify's dispatcher lags
more than that (then the core counts a late event). Events stamped with an
older time (a connect whose owner was found a poll later, stamped when first
seen) are released at once, after the reads before them. The cost is ``hold``
of latency. Times are wall-clock (``time.time()``) on both sides, as the core
and osquery use.

Execs. Neither source reports execve; an exec keeps the pid and start ticks
and changes the image. When an event names another executable than the last
event of the same (pid, start ticks), an ``Exec`` (source ``procfs``) with that
process's command line is fed just before it, so the core records the image
change (``exec_after_read``) and the sender's command line. Processes that never
read nor send but sit in a hot lineage (``base64`` in ``cat key | base64 |
curl``) are fed once each as an ``Exec`` too, their first observation: the core
then knows their parent, image and pipes (``encoder_in_chain``, ``pipe_shared``), as osquery's
process_events would tell it.

The service asks :meth:`NativeSources.facts` for the socket facts of a native
detection (exact per socket cookie, final once the socket closed, which lets it
settle at once instead of waiting ``settle_seconds``), and is woken when events
become due or a reported socket closes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Optional

from readegress.detect.config import Config
from readegress.detect.core import Detection
from readegress.detect.events import Egress, Event, Exec, Proc, SensitiveRead, sort_key
from readegress.service.socket_facts import SocketFacts
from readegress.sources.native_egress import SOURCE as EGRESS_SOURCE
from readegress.sources.native_egress import NativeEgressSource
from readegress.sources.native_reads import SOURCE as READ_SOURCE
from readegress.sources.native_reads import NativeReadSource

log = logging.getLogger("readegress.sources.native")

DEFAULT_HOLD = 0.25
#: Source of the Exec events inferred here (an image change seen between two events).
EXEC_SOURCE = "procfs"
MAX_IMAGES = 16_384
#: Events arriving while this many are buffered are dropped and counted: the
#: service thread is not draining.
MAX_BUFFER = 200_000
NATIVE_SOURCES = frozenset({READ_SOURCE, EGRESS_SOURCE})


class NativeSources:
    """fanotify reads and sock_diag egress, buffered for the detection service.

    ``start()`` raises ``OSError`` when either kernel interface cannot be used
    (not root; no fanotify); :attr:`error` keeps the reason.
    """

    def __init__(
        self,
        config: Config,
        host: Optional[str] = None,
        *,
        extra_paths: Sequence[str] = (),
        hold: float = DEFAULT_HOLD,
        read_options: Optional[dict[str, Any]] = None,
        egress_options: Optional[dict[str, Any]] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.hold = hold
        self.clock = clock
        self._lock = threading.Lock()
        self._buffer: list[Event] = []
        self._earliest = float("inf")
        self._wake: Optional[Callable[[], None]] = None
        self.error = ""
        self.counters = {
            "read_events": 0,
            "egress_events": 0,
            "fed": 0,
            "buffer_dropped": 0,
            "late_reads": 0,
            "reads_not_hot": 0,  # low-weight reads: no hot mode, no baselines
            "execs_inferred": 0,  # image changes of one process between two events
            "reads_approved_not_hot": 0,  # reads an unrestricted [[approved]] job covers
            "processes_observed": 0,  # lineage members first seen by hot mode (fed as Exec)
        }
        self._newest_egress = 0.0
        # (pid, start ticks) -> executable last reported: an exec keeps both
        # and changes the image, which the core learns from an Exec event.
        self._images: OrderedDict[tuple[int, int], str] = OrderedDict()
        self.egress = NativeEgressSource(
            config,
            self._on_egress,
            host,
            on_final=self._on_final,
            on_process=self._on_process,
            **(egress_options or {}),
        )
        self.host = self.egress.host
        self.reads = NativeReadSource(
            config, self._on_read, self.host, extra_paths=extra_paths, **(read_options or {})
        )
        self._started: list[str] = []

    # ----- lifecycle ---------------------------------------------------------
    def set_wake(self, wake: Callable[[], None]) -> None:
        """Called (from any thread) when events become due or a reported socket closed."""
        self._wake = wake

    def start(self) -> None:
        """Egress first (its first poll defines "sockets before us"), then the fanotify marks."""
        try:
            self.egress.start()
            self._started.append("egress")
            self.reads.start()
            self._started.append("reads")
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"
            self.close()
            raise

    def close(self) -> None:
        """Stop both sources (fanotify answers every held opener first). Idempotent."""
        if "reads" in self._started:
            self.reads.close()
        if "egress" in self._started:
            self.egress.close()
        self._started = []

    @property
    def running(self) -> bool:
        return len(self._started) == 2

    def update(self, config: Config) -> None:
        self.config = config
        self.egress.update(config)
        if "reads" in self._started:
            self.reads.update(config)

    # ----- events in -------------------------------------------------------------
    def _exec_seen(self, p: Proc, t: float) -> Optional[Exec]:
        """An Exec event when ``p`` runs another image than its last event said."""
        if p.start is None or not p.executable or p.pid == 0:
            return None
        key = (p.pid, p.start)
        with self._lock:
            before = self._images.get(key)
            self._images[key] = p.executable
            self._images.move_to_end(key)
            while len(self._images) > MAX_IMAGES:
                self._images.popitem(last=False)
        if before is None or before == p.executable:
            return None
        self._count("execs_inferred")
        return Exec(self.host, t, p, EXEC_SOURCE)

    def _count(self, name: str) -> None:
        with self._lock:  # bumped from the fanotify and egress threads
            self.counters[name] += 1

    def _push(self, e: Event) -> None:
        if isinstance(e, (SensitiveRead, Egress, Exec)):
            ex = self._exec_seen(e.proc, e.time)
            if ex is not None and ex is not e and not isinstance(e, Exec):
                self._push(ex)  # same time: sort_key puts an Exec before reads and egress
        wake = False
        with self._lock:
            if len(self._buffer) >= MAX_BUFFER:
                self.counters["buffer_dropped"] += 1  # the service thread is not draining
                return
            self._buffer.append(e)
            if e.time < self._earliest:
                self._earliest = e.time
                wake = True
        if wake and self._wake is not None:
            self._wake()

    def _on_read(self, read: SensitiveRead) -> None:
        self._count("read_events")
        self._push(read)
        # Only a read that can raise a detection by itself makes the egress
        # source watch its lineage: /etc/passwd is read by every NSS lookup.
        cls = self.config.catalogue.match(read.path)
        if cls is None or not cls.alone:
            self._count("reads_not_hot")
        elif self._approved_anywhere(read, cls.name):
            # Every chain from this read is approved whatever it sends where
            # (e.g. sshd reading shadow): watching its lineage would find nothing.
            self._count("reads_approved_not_hot")
        else:
            self.egress.note_read(read)

    def _approved_anywhere(self, read: SensitiveRead, cls: str) -> bool:
        exe = read.proc.executable
        if not exe:
            return False
        return any(
            a.destination is None and a.port is None and a.matches((exe,), cls, "", 0, read.time)
            for a in self.config.approved
        )

    def _on_egress(self, e: Egress) -> None:
        self._count("egress_events")
        self._push(e)

    def _on_process(self, p: Proc, t: float) -> None:
        """A lineage member the hot mode found: its first observation, for the core.

        Fed as an ``Exec`` (source ``procfs``) only when no event named this
        process yet: for a process the core has not seen, an Exec is exactly a
        first observation (pid, parent, image, command line; a fork event would
        wrongly claim it started now and reset what the core knows of it).
        """
        if p.start is None or not p.executable:
            return
        key = (p.pid, p.start)
        with self._lock:
            if key in self._images:
                return
        self._count("processes_observed")
        self._push(Exec(self.host, t, p, EXEC_SOURCE))

    def _on_final(self, _cookie: int) -> None:
        if self._wake is not None:
            self._wake()

    # ----- the service's side --------------------------------------------------
    def next_due(self) -> Optional[float]:
        """Wall time at which the earliest buffered event may be fed (None: nothing buffered)."""
        with self._lock:
            return None if not self._buffer else self._earliest + self.hold

    def drain(self, now: Optional[float] = None, *, everything: bool = False) -> list[Event]:
        """Events at least ``hold`` old (or all of them), in time order."""
        now = self.clock() if now is None else now
        cut = float("inf") if everything else now - self.hold
        with self._lock:
            due = [e for e in self._buffer if e.time <= cut]
            if not due:
                return []
            self._buffer = [e for e in self._buffer if e.time > cut]
            self._earliest = min((e.time for e in self._buffer), default=float("inf"))
        due.sort(key=sort_key)
        late = 0
        for e in due:
            if isinstance(e, Egress):
                self._newest_egress = max(self._newest_egress, e.time)
            elif isinstance(e, SensitiveRead) and e.time < self._newest_egress:
                late += 1  # a read older than an egress already fed: that chain is missed
        with self._lock:
            self.counters["late_reads"] += late
            self.counters["fed"] += len(due)
        return due

    def owns(self, d: Detection) -> bool:
        """Whether the detection's egress came from the native egress source."""
        return d.egress_source == EGRESS_SOURCE

    def facts(self, d: Detection) -> Optional[tuple[SocketFacts, bool]]:
        """(socket facts, final) of a detection whose egress came from this source."""
        if not self.owns(d) or d.cookie is None:
            return None
        f = self.egress.facts(d.cookie, d.egress_kind, d.read_time)
        if f is None:
            return None
        owner = self.egress.process_info(f.owner) if f.owner is not None and f.owner.pid else None
        return (
            SocketFacts(
                bytes_sent=f.bytes_sent,
                socket_age=f.socket_age,
                keepalive=f.keepalive,
                protocol=f.protocol,
                owner=owner,
            ),
            f.closed,
        )

    def stats(self) -> dict[str, Any]:
        """Health: which parts run, fanotify marks and drops, egress and hot-mode counters."""
        with self._lock:
            buffered = len(self._buffer)
            counters = dict(self.counters)
        return {
            "running": self.running,
            "error": self.error,
            "reads": self.reads.stats().as_dict(),
            "egress": self.egress.stats().as_dict(),
            "buffered": buffered,
            **counters,
        }
