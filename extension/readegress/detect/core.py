"""The correlation core: sensitive read → egress, per host, keyed by process identity.

Pure: no I/O, no clock (time comes from events and :meth:`Correlator.advance`),
no globals. The extension, ``readegress replay``, the native sources and the
fleet analyser all feed this one class.

Input must be roughly time-ordered per host (sources sort each batch with
:func:`readegress.detect.events.sort_key`); reads that arrive late are still
inserted in time order, so only an egress fed *before* its read is missed.

Process identity. osquery's event tables carry no start time, so the core
keeps its own view of each pid: a *generation* that a new process with the
same number starts. A fork/clone/vfork creating pid P, a different start time
(where the source knows it) or a different parent (other than reparenting to
pid 1) all mean "another process": reads of the old one never chain to the
new one. An exec keeps the generation (same process, new image, inherited
descriptors) and the images are all recorded.

Scopes, from the evidence that joins reader and sender, strongest first
(:data:`SCOPES`; the README's "Scopes" table is the user-facing copy):

- ``process``: the reader sends (an exec keeps the process).
- ``pipeline``: a pipe joins them. Native sources prove it: the reader's
  stdout pipe reaches the stdin pipe of the sender or of one of its
  ancestors, directly or through other members (``tar | openssl | curl``);
  reason ``pipe_shared``. osquery rows carry no descriptors and, by default,
  no fork rows, so there the reader is a sibling of the sender (or of one of
  its ancestors) exec'd within :data:`EXEC_PIPELINE_SECONDS` of it.
- ``lineage``: the reader is an ancestor or a descendant of the sender.
- ``session``: same parent, process group or session, without a pipe between
  them: the steps of one script run one after the other.
- ``user``: same login uid, else same uid. ``host``: anything else.

Score = round((class weight + reason points) x scope factor): the weaker the
scope, the more other evidence (bytes, encoder, destination) a detection
needs to reach the threshold. See :data:`REASON_POINTS` and the README's
arithmetic per scope.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Reversible
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, NamedTuple, Optional

from readegress.detect.catalogue import SensitiveClass
from readegress.detect.config import ApprovedJob, Config
from readegress.detect.events import AUID_UNSET, Egress, Event, Exec, ProcessStart, SensitiveRead
from readegress.detect.priority import priority
from readegress.net.classify import classify

SCOPES = ("process", "pipeline", "lineage", "session", "user", "host")
#: Scope factors in percent (integer arithmetic: no float rounding at the threshold).
SCOPE_PERCENT = {
    "process": 100,
    "pipeline": 44,
    "lineage": 50,
    "session": 42,
    "user": 30,
    "host": 15,
}
SCOPE_FACTOR = {k: v / 100 for k, v in SCOPE_PERCENT.items()}

#: Programs that pack or encode data (compressors and archivers pack).
ENCODERS = frozenset(
    {
        "tar", "gzip", "pigz", "bzip2", "xz", "zstd", "lz4", "zip", "7z", "7za", "rar",
        "base64", "base32", "basenc", "xxd", "od", "hexdump", "uuencode", "split",
    }
)  # fmt: skip
#: Of those, the ones whose output is smaller than their input (for bytes_ge_file_size).
COMPRESSORS = frozenset(
    {"tar", "gzip", "pigz", "bzip2", "xz", "zstd", "lz4", "zip", "7z", "7za", "rar"}
)
#: Programs that encrypt; some only with an option (see :func:`is_encryptor`).
ENCRYPTORS = frozenset({"age", "ccrypt", "mcrypt", "gpg", "gpg2", "openssl", "zip", "7z", "7za"})
#: Programs whose job is to copy a file's content somewhere (stdout, another file).
COPIERS = frozenset(
    {"cat", "tac", "dd", "head", "tail", "tee", "pv", "cp", "install", "rsync", "sed", "awk",
     "gawk", "mawk", "cut"}
)  # fmt: skip
#: Ports of encrypted sessions (TLS services, SSH).
ENCRYPTED_PORTS = frozenset({22, 443, 465, 563, 636, 853, 989, 990, 992, 993, 995, 2222, 8443})
#: Ports of common application protocols: anything else over TCP is "raw TCP to an uncommon port".
COMMON_PORTS = frozenset(
    {20, 21, 22, 25, 53, 80, 110, 123, 143, 389, 443, 465, 587, 636, 853, 993, 995, 2222,
     3128, 8080, 8443}
)  # fmt: skip

# Points each reason adds to a detection's score. The score is
#   round((class weight + reason points) * scope factor)
# so the scope scales all evidence: weak reasons (quick, uncommon port, new
# destination) cannot lift a pair of unrelated processes (host scope) over the
# threshold, while bytes and encoders can lift a script's steps (session).
REASON_POINTS = {
    "quick_egress": 10,  # egress within 10 s of the read
    "uncommon_port": 10,  # raw TCP (or unknown protocol) to a port not in COMMON_PORTS
    "encrypted_port": 5,  # a TLS or SSH port (ENCRYPTED_PORTS): the payload is not inspectable
    "first_seen_destination": 10,  # address not contacted from this host before (in memory)
    "encoder_in_chain": 15,  # tar/gzip/base64/xxd/split/... in the chain
    "encryptor_in_chain": 20,  # openssl enc, gpg, age, zip -e, 7z -p, ... in the chain
    "reader_copies_file": 20,  # pipeline/lineage reader is cat/cp/dd/tee/...: it moves content
    "pipe_shared": 25,  # native: a pipe carries the reader's stdout to the sender
    "multiple_sensitive_files": 10,  # two or more alerting files read in the chain
    "exec_after_read": 0,  # the reader exec'd the sender (bash < key; exec nc)
    "transfer_on_existing_socket": 5,  # bytes moved on a socket older than the read
    "bulk_transfer": 15,  # >= 1 MiB sent after the read
    "bytes_ge_file_size": 25,  # the chain sent at least the file's size (a quarter if compressed)
    "few_bytes_sent": -40,  # known bytes below that, and the sender is not the reader
    "long_lived_socket": 10,  # socket age >= 10 min
    "keepalive": 5,  # keepalive armed: a session meant to last
    "mass_sensitive_reads": 15,  # the reader read >= MASS_READ_FILES alerting files in the window
}
BULK_BYTES = 1 << 20
#: With a compressor in the chain, this fraction of the file's size counts as all of it.
COMPRESSED_FRACTION = 0.25
LONG_LIVED_SECONDS = 600
MAX_LINEAGE_DEPTH = 6
#: Parents whose children are unrelated to each other (init, kthreadd).
NON_LINEAGE_PARENTS = frozenset({0, 1, 2})
#: osquery rows: siblings exec'd this close together are one pipeline. A shell
#: forks and execs every member of `tar | openssl | curl` within milliseconds;
#: osquery's times are whole seconds, so 1 s is the finest it can tell.
EXEC_PIPELINE_SECONDS = 1.0
#: /proc reports start times in USER_HZ ticks, 100 on every Linux ABI.
USER_HZ = 100
#: Distinct files one process keeps in the window. A process reading more (a
#: mass read, a backup job, a find over home directories) keeps its heaviest
#: and latest alerting reads and the rest of this budget; the others are
#: summarised (count, first/last time, classes) rather than held.
MAX_READS_PER_PROCESS = 64
#: A reader of at least this many alerting files (repeats of one file count
#: once) within the window gets the ``mass_sensitive_reads`` reason.
MASS_READ_FILES = 25


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def is_encryptor(image: str, cmdline: Optional[str]) -> bool:
    """Whether a chain member encrypts: by its image and, where it decides, its options.

    ``openssl`` encrypts with ``enc``/``smime``/``cms`` or a cipher subcommand
    (``aes-256-cbc``); ``zip`` with ``-e``/``-P``/``--encrypt``; ``7z`` with
    ``-p``; ``gpg`` with ``-c``/``-e``/``--symmetric``/``--encrypt``; ``age``,
    ``ccrypt`` and ``mcrypt`` always. An unknown command line counts for gpg
    and openssl (their usual pipeline use is encryption).
    """
    name = basename(image)
    if name not in ENCRYPTORS:
        return False
    if name in ("age", "ccrypt", "mcrypt"):
        return True
    if cmdline is None:
        return name in ("gpg", "gpg2", "openssl")
    try:
        args = shlex.split(cmdline)[1:]
    except ValueError:
        args = cmdline.split()[1:]
    if name == "openssl":
        sub = args[0] if args else ""
        return sub in ("enc", "smime", "cms") or sub.startswith(("aes", "des", "chacha", "camel"))
    if name in ("gpg", "gpg2"):
        return any(
            a in ("--symmetric", "--encrypt")
            or (a.startswith("-") and not a.startswith("--") and ("c" in a or "e" in a))
            for a in args
        )
    if name == "zip":
        return any(a in ("-e", "--encrypt") or a.startswith("-P") for a in args)
    return any(a.startswith("-p") for a in args)  # 7z / 7za


class FileRead(NamedTuple):
    """A catalogue file the chain read in the window (triage evidence)."""

    path: str
    sensitive_class: str
    size: Optional[int]
    reader_pid: int
    scope: str  # how the reader is related to the sender
    read_time: float


@dataclass(frozen=True)
class Detection:
    id: str
    host: str
    read_time: float
    egress_time: float
    pid: int
    start: Optional[int]
    executable: str
    executables: tuple[str, ...]
    cmdline: Optional[str]
    uid: Optional[int]
    auid: Optional[int]
    reader_pid: int
    reader_executable: str
    path: str
    sensitive_class: str
    class_weight: int
    remote_address: str
    remote_port: int
    remote_class: str
    protocol: str
    scope: str
    score: int
    reasons: tuple[str, ...]
    other_paths: tuple[str, ...]
    egress_kind: str
    bytes_sent: Optional[int]
    file_size: Optional[int]
    read_source: str
    egress_source: str
    cookie: Optional[int] = None
    socket_age: Optional[int] = None
    keepalive: Optional[bool] = None
    #: score x host criticality x data classification weight (readegress.detect.priority).
    priority: int = 0
    #: Bytes of every connection of this chain (same read) in the window, this one
    #: included, where known (the service adds them up as they settle).
    chain_bytes_sent: Optional[int] = None
    #: Triage evidence: every catalogue file the chain read in the window.
    files_read: tuple[FileRead, ...] = ()
    #: Triage evidence: (destination "address:port", bytes) of the chain, where known.
    bytes_by_destination: tuple[tuple[str, int], ...] = ()
    #: Whether this host contacted the address before (within the core's memory).
    destination_seen_before: Optional[bool] = None
    #: The [[approved]] entry that nearly matched and why it did not ("" if none came close).
    near_approval: str = ""
    #: True when the chain had a compressor (bytes_ge_file_size then needs a quarter of the size).
    compressed: bool = False

    @property
    def delay(self) -> float:
        return max(0.0, self.egress_time - self.read_time)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["executables"] = list(self.executables)
        d["reasons"] = list(self.reasons)
        d["other_paths"] = list(self.other_paths)
        d["files_read"] = [r._asdict() for r in self.files_read]
        d["bytes_by_destination"] = dict(self.bytes_by_destination)
        d["delay"] = round(self.delay, 3)
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Detection:
        """The inverse of :meth:`to_json` (``delay`` ignored); ``ValueError`` when malformed."""
        kw = {f: data[f] for f in _DETECTION_FIELDS if f in data}
        missing = [f for f in _REQUIRED_FIELDS if f not in kw]
        if missing:
            raise ValueError(f"detection lacks {missing}")
        for k in ("executables", "reasons", "other_paths"):
            if not isinstance(kw[k], list) or not all(isinstance(x, str) for x in kw[k]):
                raise ValueError(f"detection {k} is not a list of strings")
            kw[k] = tuple(kw[k])
        if not isinstance(kw["id"], str) or not isinstance(kw["score"], int):
            raise ValueError("detection id/score malformed")
        try:
            kw["files_read"] = tuple(FileRead(**r) for r in kw.get("files_read", ()))
            kw["bytes_by_destination"] = tuple(
                (str(k), int(v)) for k, v in dict(kw.get("bytes_by_destination", {})).items()
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"detection triage evidence malformed: {e}") from None
        return cls(**kw)


_DETECTION_FIELDS = tuple(Detection.__dataclass_fields__)
_REQUIRED_FIELDS = tuple(
    f
    for f, spec in Detection.__dataclass_fields__.items()
    if spec.default is MISSING and spec.default_factory is MISSING
)


def bytes_needed(file_size: Optional[int], compressed: bool) -> Optional[int]:
    """Bytes a chain must send to have sent the file (a quarter when it was compressed)."""
    if file_size is None or file_size <= 0:
        return None
    return math.ceil(file_size * COMPRESSED_FRACTION) if compressed else file_size


def enrich(
    d: Detection,
    *,
    bytes_sent: Optional[int],
    socket_age: Optional[int] = None,
    keepalive: Optional[bool] = None,
    chain_bytes_sent: Optional[int] = None,
    bytes_by_destination: Optional[Iterable[tuple[str, int]]] = None,
    config: Optional[Config] = None,
) -> Detection:
    """Add live socket facts (read by the caller, after the settle delay) and rescore.

    ``chain_bytes_sent`` is what every connection of the chain sent in the
    window (split-and-send: many small uploads add up). Unknown bytes are never
    estimated: with neither, no bytes reason changes (a closed socket's totals
    are not a bound: a socket no poll saw is missing from them). ``config``
    recomputes the priority (else it keeps its ratio to the score).
    """
    reasons = [r for r in d.reasons if r not in ("bytes_ge_file_size", "few_bytes_sent")]

    def add(r: str) -> None:
        if r not in reasons:
            reasons.append(r)

    sent = bytes_sent if bytes_sent is not None else d.bytes_sent
    chain = chain_bytes_sent if chain_bytes_sent is not None else d.chain_bytes_sent
    known = [x for x in (sent, chain) if x is not None]
    total = max(known) if known else None
    need = bytes_needed(d.file_size, d.compressed)
    if sent is not None and sent >= BULK_BYTES:
        add("bulk_transfer")
    if total is not None and need is not None:
        if total >= need:
            add("bytes_ge_file_size")
        elif d.scope != "process":
            add("few_bytes_sent")
    if socket_age is not None and socket_age >= LONG_LIVED_SECONDS:
        add("long_lived_socket")
    if keepalive:
        add("keepalive")
    new_score = score(d.class_weight, d.scope, reasons)
    if config is not None:
        prio = priority(config, new_score, d.host, d.sensitive_class)
    else:
        prio = round(new_score * d.priority / d.score) if d.score > 0 else d.priority
    return replace(
        d,
        bytes_sent=sent,
        chain_bytes_sent=chain,
        bytes_by_destination=tuple(bytes_by_destination)
        if bytes_by_destination is not None
        else d.bytes_by_destination,
        socket_age=socket_age if socket_age is not None else d.socket_age,
        keepalive=keepalive if keepalive is not None else d.keepalive,
        reasons=tuple(reasons),
        score=new_score,
        priority=prio,
    )


def score(class_weight: int, scope: str, reasons: Iterable[str]) -> int:
    """A detection's score: evidence points, scaled by how related reader and sender are.

    ``(class weight + reason points) * scope factor``, rounded half up, never below 0.
    """
    total = class_weight + sum(REASON_POINTS[r] for r in reasons)
    return max(0, (total * SCOPE_PERCENT[scope] + 50) // 100)


def near_approval(
    approved: Iterable[ApprovedJob],
    reader: str,
    sender: str,
    cls: str,
    address: str,
    port: int,
    now: float,
) -> str:
    """The approved entry that came closest to covering a chain, and what it lacked.

    Closest: the most of (class, reader image, sender image, destination,
    port, not expired) matched, at least two. ``""`` when none came close.
    """
    best: Optional[tuple[int, ApprovedJob, list[str]]] = None
    for a in approved:
        why: list[str] = []
        if a.sensitive_class != cls:
            why.append(f"class {cls} is not {a.sensitive_class}")
        for role, exe in (("reader", reader), ("sender", sender)):
            if not a.matches_executable((exe,)):
                why.append(f"{role} {exe or '?'} does not match {a.executable}")
        if not a.matches_destination(address):
            why.append(f"destination {address} is not in {a.destination}")
        if a.port is not None and a.port != port:
            why.append(f"port {port} is not {a.port}")
        if a.expires is not None and now >= a.expires:
            why.append("the approval expired")
        matched = 6 - len(why)
        if not why or matched < 4:
            continue
        if best is None or matched > best[0]:
            best = (matched, a, why)
    if best is None:
        return ""
    _, a, why = best
    return json.dumps(
        {"executable": a.executable, "class": a.sensitive_class, "owner": a.owner, "why_not": why}
    )


@dataclass
class _Proc:
    gen: int
    marker: str  # stable identity marker: start ticks, else when the core first saw it
    ppid: Optional[int]
    start: Optional[int]
    images: list[str]
    uid: Optional[int]
    auid: Optional[int]
    pgid: Optional[int]
    sid: Optional[int]
    cmdline: Optional[str]
    last: float
    born: Optional[float] = None  # time of the fork event that created it, when seen
    exec_time: Optional[float] = None  # time of its latest exec event (osquery rows)
    stdin_pipe: Optional[int] = None  # pipe inode on fd 0 (native sources)
    stdout_pipe: Optional[int] = None  # pipe inode on fd 1


@dataclass
class _Read:
    time: float
    pid: int
    gen: int
    marker: str
    ppid: Optional[int]
    uid: Optional[int]
    auid: Optional[int]
    pgid: Optional[int]
    sid: Optional[int]
    executable: str
    path: str
    cls: str
    weight: int
    alone: bool
    size: Optional[int]
    source: str
    start: Optional[int] = None
    born: Optional[float] = None
    repeats: int = 0  # later reads of the same file by the same process, collapsed into this one
    alive: bool = field(default=True, compare=False, repr=False)  # False once evicted or expired


#: The fields of a read that its saved state carries (``alive`` is not state).
_READ_FIELDS = tuple(f.name for f in fields(_Read) if f.name != "alive")


class _ReadLog:
    """Reads in time order (``reversed()`` gives the newest first, as :func:`_in_window`
    needs). A read evicted from the middle is only marked dead (``alive = False``)
    and skipped; the log compacts once dead entries outnumber live ones."""

    __slots__ = ("_dead", "_items", "live")

    def __init__(self, items: Iterable[_Read] = ()) -> None:
        self._items: deque[_Read] = deque(r for r in items if r.alive)
        self._dead = 0
        self.live = len(self._items)

    def add(self, r: _Read) -> None:
        items = self._items
        self.live += 1
        if not items or items[-1].time <= r.time:
            items.append(r)
            return
        ordered = list(items)  # a late read: rare, so a rebuild is fine
        i = len(ordered)
        while i > 0 and ordered[i - 1].time > r.time:
            i -= 1
        ordered.insert(i, r)
        self._items = deque(ordered)

    def note_dead(self) -> None:
        """One of this log's reads was marked dead."""
        self.live -= 1
        self._dead += 1
        if self._dead > 1024 and self._dead > self.live:
            self._items = deque(r for r in self._items if r.alive)
            self._dead = 0

    def expire(self, lo: float) -> Iterator[_Read]:
        """Pop reads older than ``lo`` (and dead ones at the front); yield the live ones."""
        items = self._items
        while items and (not items[0].alive or items[0].time < lo):
            r = items.popleft()
            if r.alive:
                self.live -= 1
                yield r
            else:
                self._dead -= 1

    def __len__(self) -> int:
        return self.live

    def __bool__(self) -> bool:
        return self.live > 0

    def __iter__(self) -> Iterator[_Read]:
        return (r for r in self._items if r.alive)

    def __reversed__(self) -> Iterator[_Read]:
        return (r for r in reversed(self._items) if r.alive)


@dataclass
class _ProcReads:
    """One process's reads held in the window, and a summary of those it could not keep.

    Keyed by (pid, generation). ``files`` maps each file to its newest read
    (a repeat collapses into it). ``heaviest`` and ``latest`` are its alerting
    reads that eviction takes last: they are the evidence of a chain this
    process may still complete, whatever other processes read meanwhile.
    """

    files: dict[str, _Read] = field(default_factory=dict)
    heaviest: Optional[_Read] = None
    latest: Optional[_Read] = None
    summarised: int = 0  # reads evicted from this process (not collapsed repeats)
    alerting_summarised: int = 0  # of which alerting reads of distinct files
    first: float = 0.0  # time of the first summarised read
    last: float = 0.0  # time of the last summarised read
    classes: set[str] = field(default_factory=set)  # classes of the summarised reads
    mass: bool = False  # counted in stats["mass_read_processes"]

    def pin(self, r: _Read) -> None:
        if not r.alone:
            return
        if self.latest is None or r.time >= self.latest.time:
            self.latest = r
        if self.heaviest is None or (r.weight, r.time) >= (
            self.heaviest.weight,
            self.heaviest.time,
        ):
            self.heaviest = r

    def repin(self) -> None:
        self.heaviest = self.latest = None
        for r in self.files.values():
            self.pin(r)

    def alerting_files(self, lo: float) -> int:
        """Alerting files read since ``lo`` (held ones, plus summarised ones if recent)."""
        held = sum(1 for r in self.files.values() if r.alone and r.time >= lo)
        return held + (self.alerting_summarised if self.summarised and self.last >= lo else 0)

    def summary(self) -> dict[str, Any]:
        return {
            "summarised": self.summarised,
            "alerting_summarised": self.alerting_summarised,
            "first": self.first,
            "last": self.last,
            "classes": sorted(self.classes),
            "mass": self.mass,
        }


@dataclass
class _Host:
    procs: OrderedDict[int, _Proc] = field(default_factory=OrderedDict)
    reads: _ReadLog = field(default_factory=_ReadLog)
    #: The reads of classes that may alert alone (time-ordered): an egress
    #: with none in its window cannot alert, whatever else was read, so the
    #: common case (many /etc/passwd reads, no key read) costs one look.
    alerting: _ReadLog = field(default_factory=_ReadLog)
    #: Reads held per process (pid, generation), and the processes by how many
    #: files they hold (index = count, 1..MAX_READS_PER_PROCESS, each in the
    #: order it reached that count): eviction takes from the biggest holder.
    by_proc: dict[tuple[int, int], _ProcReads] = field(default_factory=dict)
    by_count: dict[int, dict[tuple[int, int], None]] = field(default_factory=dict)
    children: dict[int, set[int]] = field(default_factory=dict)
    destinations: OrderedDict[str, None] = field(default_factory=OrderedDict)
    newest: float = 0.0
    #: stdin pipe inode -> pids whose fd 0 is that pipe (checked against the
    #: process view when used; bounded like the process view).
    pipe_readers: OrderedDict[int, list[int]] = field(default_factory=OrderedDict)


@dataclass
class _SenderSide:
    pid: int
    st: _Proc
    ancestors: list[tuple[int, _Proc]] = field(default_factory=list)  # nearest first
    ancestor_keys: set[tuple[int, int]] = field(default_factory=set)
    unknown_ancestor: Optional[int] = None
    descendants: dict[tuple[int, int], _Proc] = field(default_factory=dict)
    stdin_pipes: set[int] = field(default_factory=set)  # of the sender and its ancestors
    uid: Optional[int] = None
    auid: Optional[int] = None


@dataclass
class _Relation:
    scope: str
    proven: bool = False  # pipeline scope proven by pipe inodes
    members: list[_Proc] = field(default_factory=list)  # pipeline members between them


STAT_NAMES = (
    "events", "reads", "sensitive_reads", "egress", "egress_considered", "candidates",
    "approved", "low_only", "duplicates", "detections_emitted", "evicted_reads",
    "evicted_processes", "pid_reuse", "late_events",
)  # fmt: skip
#: Read-storage counters: ``evicted_reads`` above counts every read dropped
#: before it left the window; of those, ``evicted_alerting_reads`` were a
#: process's heaviest or latest alerting read (chain evidence lost), and
#: ``flood_reads`` were dropped by the per-process budget. ``collapsed_reads``
#: are repeats merged into the newest read of the same file (nothing lost).
#: ``mass_read_processes`` read >= MASS_READ_FILES alerting files in a window.
READ_STAT_NAMES = (
    "evicted_alerting_reads", "flood_reads", "collapsed_reads", "mass_read_processes",
)  # fmt: skip


class Correlator:
    """Feeds events, returns candidate detections (score not yet thresholded)."""

    def __init__(
        self,
        config: Config,
        *,
        max_processes: int = 100_000,
        max_destinations: int = 10_000,
        max_ids: int = 100_000,
        process_ttl: float = 3600.0,
        min_score: Optional[int] = None,
    ) -> None:
        """``min_score``: a candidate scoring below it is not returned but counted
        (``below_min_score``), and not even built when its score is sure before (a batch
        replay writes only the detections over its threshold; building the others was
        half of a fleet log's correlation)."""
        self.config = config
        self.min_score = min_score
        self.below_min_score = 0
        self.window = config.window_seconds
        self.max_reads = config.max_reads
        self.max_processes = max_processes
        self.max_destinations = max_destinations
        self.max_ids = max_ids
        self.process_ttl = process_ttl
        self.hosts: dict[str, _Host] = {}
        self._gen = 0
        self._ids: OrderedDict[str, None] = OrderedDict()
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES + READ_STAT_NAMES, 0)

    # ----- process view -------------------------------------------------
    def _host(self, name: str) -> _Host:
        h = self.hosts.get(name)
        if h is None:
            h = self.hosts[name] = _Host()
        return h

    def _new_proc(
        self, h: _Host, p: Any, t: float, image: str, born: Optional[float] = None
    ) -> _Proc:
        self._gen += 1
        old = h.procs.pop(p.pid, None)
        if old is not None:
            self.stats["pid_reuse"] += 1
            if old.ppid is not None:
                h.children.get(old.ppid, set()).discard(p.pid)
        st = _Proc(
            gen=self._gen,
            marker=str(p.start) if p.start is not None else f"t{t:.3f}",
            ppid=p.ppid,
            start=p.start,
            images=[image] if image else [],
            uid=p.uid,
            auid=p.auid,
            pgid=p.pgid,
            sid=p.sid,
            cmdline=p.cmdline,
            last=t,
            born=born,
        )
        h.procs[p.pid] = st
        if p.ppid is not None:
            h.children.setdefault(p.ppid, set()).add(p.pid)
        while len(h.procs) > self.max_processes:
            pid, gone = h.procs.popitem(last=False)
            self.stats["evicted_processes"] += 1
            if gone.ppid is not None:
                h.children.get(gone.ppid, set()).discard(pid)
        return st

    def _observe(self, h: _Host, e: Event) -> _Proc:
        st = self._observe_proc(h, e)
        p = e.proc
        if isinstance(e, Exec):
            st.exec_time = e.time
        if p.stdout_pipe is not None:
            st.stdout_pipe = p.stdout_pipe
        if p.stdin_pipe is not None and st.stdin_pipe != p.stdin_pipe:
            st.stdin_pipe = p.stdin_pipe
            pids = h.pipe_readers.setdefault(p.stdin_pipe, [])
            if p.pid not in pids:
                pids.append(p.pid)
                del pids[:-16]
            h.pipe_readers.move_to_end(p.stdin_pipe)
            while len(h.pipe_readers) > self.max_processes:
                h.pipe_readers.popitem(last=False)
        return st

    def _observe_proc(self, h: _Host, e: Event) -> _Proc:
        p = e.proc
        st = h.procs.get(p.pid)
        if isinstance(e, ProcessStart):
            return self._new_proc(h, p, e.time, p.executable, born=e.time)
        if st is None:
            return self._new_proc(h, p, e.time, p.executable)
        reused = (p.start is not None and st.start is not None and p.start != st.start) or (
            p.ppid is not None
            and st.ppid is not None
            and p.ppid != st.ppid
            and p.ppid not in NON_LINEAGE_PARENTS  # reparenting to init is not reuse
        )
        if reused:
            return self._new_proc(h, p, e.time, p.executable)
        h.procs.move_to_end(p.pid)
        st.last = max(st.last, e.time)
        if p.executable and (not st.images or st.images[-1] != p.executable):
            # An exec; or a later event naming another image, which means an
            # exec we did not see (osquery reports the exe at event time).
            st.images.append(p.executable)
            del st.images[:-8]
        if isinstance(e, Exec) and p.cmdline is not None:
            st.cmdline = p.cmdline
        for attr in ("ppid", "start", "uid", "auid", "pgid", "sid", "cmdline"):
            v = getattr(p, attr)
            if v is not None and getattr(st, attr) is None:
                setattr(st, attr, v)
                if attr == "ppid":
                    h.children.setdefault(v, set()).add(p.pid)
        return st

    # ----- feeding ------------------------------------------------------
    def feed_many(self, events: Iterable[Event]) -> list[Detection]:
        out: list[Detection] = []
        for e in events:
            out.extend(self.feed(e))
        return out

    def feed(self, e: Event) -> list[Detection]:
        self.stats["events"] += 1
        h = self._host(e.host)
        if e.time < h.newest - 1.0:
            self.stats["late_events"] += 1
        h.newest = max(h.newest, e.time)
        if isinstance(e, SensitiveRead):
            self.stats["reads"] += 1
            cls = self.config.catalogue.match(e.path)
            if cls is None:
                # Still a process observation (ppid, image) worth keeping.
                self._observe(h, e)
                return []
            self._add_read(h, e, cls)
            return []
        if isinstance(e, Egress):
            found = self._mark_mass_reads(h, self._egress(h, e))
            if self.min_score is not None and found:
                kept = [d for d in found if d.score >= self.min_score]
                self.below_min_score += len(found) - len(kept)
                return kept
            return found
        self._observe(h, e)
        return []

    def _add_read(self, h: _Host, e: SensitiveRead, cls: SensitiveClass) -> None:
        self.stats["sensitive_reads"] += 1
        st = self._observe(h, e)
        p = e.proc
        r = _Read(
            time=e.time,
            pid=p.pid,
            gen=st.gen,
            marker=st.marker,
            ppid=st.ppid,
            uid=p.uid if p.uid is not None else st.uid,
            auid=p.auid if p.auid is not None else st.auid,
            pgid=st.pgid,
            sid=st.sid,
            executable=p.executable or (st.images[-1] if st.images else ""),
            path=e.path,
            cls=cls.name,
            weight=cls.weight,
            alone=cls.alone,
            size=e.size,
            source=e.source,
            start=st.start,
            born=st.born,
        )
        self._hold(h, (p.pid, st.gen), r)

    # ----- read storage -------------------------------------------------
    # Memory is bounded per process and per host, not by one global FIFO: a
    # flood of reads by other processes evicts the flooders' reads first and
    # a process's heaviest and latest alerting reads last, so the read of a
    # chain still to complete survives any volume of other processes' reads
    # (as long as fewer processes than max_reads read in one window).

    def _hold(self, h: _Host, key: tuple[int, int], r: _Read) -> None:
        b = h.by_proc.get(key)
        if b is None:
            b = h.by_proc[key] = _ProcReads()
        held = b.files.get(r.path)
        if held is not None:
            # A repeat: keep the newer read, carry the count (scoring and the
            # detection id use the newest read of a file anyway).
            self.stats["collapsed_reads"] += 1
            if held.time > r.time:
                held.repeats += 1
                return
            r.repeats = held.repeats + 1
            # Same file, same class, newer: it takes the old read's pins over.
            held.alive = False
            h.reads.note_dead()
            if held.alone:
                h.alerting.note_dead()
                if b.heaviest is held:
                    b.heaviest = r
                if b.latest is held:
                    b.latest = r
            del b.files[r.path]  # re-inserted below, as the most recent
        elif len(b.files) >= MAX_READS_PER_PROCESS:
            self._evict_from(h, key, b, flood=True)  # makes room: the count stays
        else:
            self._count_moved(h, key, len(b.files), len(b.files) + 1)
        b.files[r.path] = r
        h.reads.add(r)
        if r.alone:
            b.pin(r)
            h.alerting.add(r)
        while h.reads.live > self.max_reads and self._evict_biggest(h):
            pass

    def _count_moved(self, h: _Host, key: tuple[int, int], old: int, new: int) -> None:
        if old == new:
            return
        same = h.by_count.get(old)
        if same is not None:
            same.pop(key, None)
            if not same:
                del h.by_count[old]
        if new > 0:
            h.by_count.setdefault(new, {})[key] = None

    def _drop(self, h: _Host, b: _ProcReads, r: _Read) -> None:
        """Forget one held read (evicted, collapsed or expired); the caller counts it."""
        r.alive = False
        h.reads.note_dead()
        if r.alone:
            h.alerting.note_dead()
        if b.files.get(r.path) is r:
            del b.files[r.path]
        if b.heaviest is r or b.latest is r:
            b.repin()

    def _evict_from(self, h: _Host, key: tuple[int, int], b: _ProcReads, *, flood: bool) -> None:
        """Evict the least valuable read one process holds and summarise it."""

        def pinned(r: _Read) -> bool:
            return r is b.heaviest or r is b.latest

        # The oldest held file other than the two pins (files are in the order
        # they were last read): O(1) in a flood, where the pins are few.
        victim = next((r for r in b.files.values() if not pinned(r)), None)
        if victim is None:  # only the pins are left: the latest goes before the heaviest
            victim = b.latest if b.latest is not b.heaviest and b.latest is not None else None
            victim = victim or next(iter(b.files.values()))
        if pinned(victim):
            self.stats["evicted_alerting_reads"] += 1
        self.stats["evicted_reads"] += 1
        if flood:
            self.stats["flood_reads"] += 1
        if b.summarised == 0:
            b.first = victim.time
        b.summarised += 1
        b.first = min(b.first, victim.time)
        b.last = max(b.last, victim.time)
        b.classes.add(victim.cls)
        if victim.alone:
            b.alerting_summarised += 1
        self._drop(h, b, victim)
        if not flood:
            self._count_moved(h, key, len(b.files) + 1, len(b.files))

    def _evict_biggest(self, h: _Host) -> bool:
        """Over max_reads: evict from the process holding the most files (the one
        that reached that count first); with one file each, the oldest holder."""
        if not h.by_count:
            return False
        holders = h.by_count[max(h.by_count)]
        key = next(iter(holders))
        self._evict_from(h, key, h.by_proc[key], flood=False)
        return True

    def _expire_reads(self, h: _Host, lo: float) -> None:
        gone = list(h.reads.expire(lo))
        for _ in h.alerting.expire(lo):
            pass
        for r in gone:
            r.alive = False
            key = (r.pid, r.gen)
            b = h.by_proc.get(key)
            if b is None:
                continue
            n = len(b.files)
            if b.files.get(r.path) is r:
                del b.files[r.path]
            if b.heaviest is r or b.latest is r:
                b.repin()
            self._count_moved(h, key, n, len(b.files))
            if not b.files and (not b.summarised or b.last < lo):
                del h.by_proc[key]
        if len(h.by_proc) > len(h.reads):
            # Summaries of processes with nothing left in the window.
            for key in [k for k, b in h.by_proc.items() if not b.files and b.last < lo]:
                del h.by_proc[key]

    def _mass_reader(self, h: _Host, reader_pid: int, egress_time: float) -> bool:
        """Did the reader read MASS_READ_FILES alerting files in the window? (Counts the
        process in ``mass_read_processes`` the first time.)"""
        st = h.procs.get(reader_pid)
        b = h.by_proc.get((reader_pid, st.gen)) if st is not None else None
        if b is None or b.alerting_files(egress_time - self.window) < MASS_READ_FILES:
            return False
        if not b.mass:
            b.mass = True
            self.stats["mass_read_processes"] += 1
        return True

    def _mark_mass_reads(self, h: _Host, dets: list[Detection]) -> list[Detection]:
        """Add ``mass_sensitive_reads`` when the reader read many alerting files."""
        out = []
        for d in dets:
            if "mass_sensitive_reads" not in d.reasons and self._mass_reader(
                h, d.reader_pid, d.egress_time
            ):
                reasons = (*d.reasons, "mass_sensitive_reads")
                new = score(d.class_weight, d.scope, reasons)
                d = replace(
                    d,
                    reasons=reasons,
                    score=new,
                    priority=priority(self.config, new, d.host, d.sensitive_class),
                )
            out.append(d)
        return out

    def floods(self) -> list[dict[str, Any]]:
        """Processes whose reads were summarised: host, pid, count, first/last, classes."""
        return [
            {"host": name, "pid": key[0], **b.summary(), "held": len(b.files)}
            for name, h in self.hosts.items()
            for key, b in h.by_proc.items()
            if b.summarised
        ]

    def _sender_side(self, h: _Host, pid: int, st: _Proc) -> _SenderSide:
        """The sender's ancestors, descendants and stdin pipes (computed once per egress)."""
        side = _SenderSide(pid, st)
        side.stdin_pipes = {st.stdin_pipe} if st.stdin_pipe is not None else set()
        cur: Optional[int] = st.ppid
        depth = 0
        while cur is not None and cur not in NON_LINEAGE_PARENTS and depth < MAX_LINEAGE_DEPTH:
            a = h.procs.get(cur)
            if a is None:
                side.unknown_ancestor = cur  # an ancestor the core never saw: its pid only
                break
            side.ancestors.append((cur, a))
            side.ancestor_keys.add((cur, a.gen))
            if a.stdin_pipe is not None:
                side.stdin_pipes.add(a.stdin_pipe)
            cur = a.ppid
            depth += 1
        frontier = [pid]
        seen = {pid}
        for _ in range(MAX_LINEAGE_DEPTH):
            nxt = []
            for q in frontier:
                for c in h.children.get(q, ()):
                    if c not in seen:
                        seen.add(c)
                        cs = h.procs.get(c)
                        if cs is not None and cs.ppid == q:
                            side.descendants[(c, cs.gen)] = cs
                            nxt.append(c)
            frontier = nxt
        return side

    def _pipe_path(self, h: _Host, out_pipe: int, targets: set[int]) -> Optional[list[_Proc]]:
        """The members between a reader's stdout pipe and the sender side's stdin pipes.

        ``None`` when no chain of pipes joins them (bounded to MAX_LINEAGE_DEPTH hops).
        """
        frontier: dict[int, list[_Proc]] = {out_pipe: []}  # pipe -> members passed to reach it
        seen: set[int] = set()
        for _ in range(MAX_LINEAGE_DEPTH):
            for pipe, path in frontier.items():
                if pipe in targets:
                    return path
            nxt: dict[int, list[_Proc]] = {}
            for pipe, path in frontier.items():
                seen.add(pipe)
                for q in h.pipe_readers.get(pipe, ()):
                    qs = h.procs.get(q)
                    if (
                        qs is not None
                        and qs.stdin_pipe == pipe
                        and qs.stdout_pipe is not None
                        and qs.stdout_pipe not in seen
                    ):
                        nxt.setdefault(qs.stdout_pipe, [*path, qs])
            if not nxt:
                return None
            frontier = nxt
        return None

    def _relate(self, h: _Host, r: _Read, side: _SenderSide) -> _Relation:
        """How a read's process is related to the sender: the scope and the evidence."""
        st = side.st
        if r.pid == side.pid and r.gen == st.gen:
            return _Relation("process")
        rp = h.procs.get(r.pid)
        if rp is not None and rp.gen != r.gen:
            rp = None
        if rp is not None and rp.stdout_pipe is not None and side.stdin_pipes:
            path = self._pipe_path(h, rp.stdout_pipe, side.stdin_pipes)
            if path is not None:
                return _Relation("pipeline", proven=True, members=path)
        if (
            (r.pid, r.gen) in side.ancestor_keys
            or r.pid == side.unknown_ancestor
            or (r.pid, r.gen) in side.descendants
            or r.ppid == side.pid
        ):
            return _Relation("lineage")
        if r.ppid is None or r.ppid in NON_LINEAGE_PARENTS:
            members: list[tuple[int, _Proc]] = []
        else:
            members = [(side.pid, st), *side.ancestors]
        r_exec = _exec_time(rp) if rp is not None else r.born
        sibling_of: Optional[_Proc] = None
        for mpid, m in members:
            if m.ppid != r.ppid or mpid == r.pid:
                continue
            if mpid == side.pid:
                # A sibling of the sender itself (a sibling of an ancestor is
                # another job of the same runner: session needs the parent).
                sibling_of = m
            # osquery rows: no descriptors and no start ticks; exec'd together.
            # (A native read whose identity was cut short also lacks ticks at the
            # read; its process is native when any event gave it ticks.)
            m_exec = _exec_time(m)
            if (
                r.start is None
                and (rp is None or rp.start is None)
                and m.start is None
                and r_exec is not None
                and m_exec is not None
                and abs(r_exec - m_exec) <= EXEC_PIPELINE_SECONDS
            ):
                together = _exec_together(h, m.ppid, r_exec)
                return _Relation("pipeline", members=together)
            # Native, when a member between them exited before anyone saw its
            # descriptors (cat | base64 | curl: cat and base64 end within a
            # millisecond): started together, the reader writing into a pipe
            # and the sender's side reading from one. Not proven: no pipe_shared.
            if (
                r.start is not None
                and m.start is not None
                and abs(r.start - m.start) <= EXEC_PIPELINE_SECONDS * USER_HZ
                and rp is not None
                and rp.stdout_pipe is not None
                and m.stdin_pipe is not None
                and m.stdin_pipe != rp.stdin_pipe
            ):
                return _Relation("pipeline")
            break
        if sibling_of is not None:
            return _Relation("session")
        if (st.pgid is not None and r.pgid == st.pgid and st.pgid > 1) or (
            st.sid is not None and r.sid == st.sid and st.sid > 1
        ):
            return _Relation("session")
        if side.auid is not None and side.auid != AUID_UNSET and r.auid == side.auid:
            return _Relation("user")
        if side.uid is not None and r.uid == side.uid:
            return _Relation("user")
        return _Relation("host")

    def _egress(self, h: _Host, e: Egress) -> list[Detection]:
        self.stats["egress"] += 1
        st = self._observe(h, e)
        rclass = classify(e.remote_address)
        first_seen = e.remote_address not in h.destinations
        h.destinations[e.remote_address] = None
        h.destinations.move_to_end(e.remote_address)
        while len(h.destinations) > self.max_destinations:
            h.destinations.popitem(last=False)
        if rclass not in self.config.egress_classes:
            return []
        self.stats["egress_considered"] += 1
        lo = e.time - self.window
        p = e.proc
        uid = p.uid if p.uid is not None else st.uid
        auid = p.auid if p.auid is not None else st.auid
        alerting = _in_window(h.alerting, lo, e.time)
        if not alerting:
            if _in_window(h.reads, lo, e.time, first_only=True):
                self.stats["low_only"] += 1
            return []
        side = self._sender_side(h, p.pid, st)
        side.uid, side.auid = uid, auid
        relations: dict[int, _Relation] = {}

        def relate(r: _Read) -> _Relation:
            rel = relations.get(id(r))
            if rel is None:
                rel = relations[id(r)] = self._relate(h, r, side)
            return rel

        # Attribution: the strongest evidence first (the sender's own read beats
        # a sibling's, whatever their classes), then the heavier class, then the newest.
        scored = sorted(
            alerting,
            key=lambda r: (-SCOPES.index(relate(r).scope), r.weight, r.time),
            reverse=True,
        )
        self.stats["candidates"] += 1
        images = tuple(dict.fromkeys(st.images + ([p.executable] if p.executable else [])))
        sender = p.executable or (images[-1] if images else "")
        best: Optional[_Read] = None
        approved_any = False
        for r in scored:
            # An approval covers the reader's image at the read AND the sender's
            # at the egress: a process whose history merely includes an approved
            # image (sshd → bash → exec curl) is not approved.
            if any(
                a.matches((r.executable,), r.cls, e.remote_address, e.remote_port, e.time)
                and a.matches((sender,), r.cls, e.remote_address, e.remote_port, e.time)
                for a in self.config.approved
            ):
                approved_any = True
                continue
            best = r
            break
        if best is None:
            self.stats["approved" if approved_any else "low_only"] += 1
            return []
        r = best
        rel = relate(r)
        scope = rel.scope
        det_id = _detection_id(e.host, r, p.pid, st.marker, e.remote_address, e.remote_port)
        if det_id in self._ids:
            self.stats["duplicates"] += 1
            return []
        self._ids[det_id] = None
        while len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)

        reasons: list[str] = []
        delay = e.time - r.time
        if delay <= 10:
            reasons.append("quick_egress")
        if e.remote_port in ENCRYPTED_PORTS:
            reasons.append("encrypted_port")
        elif e.remote_port not in COMMON_PORTS and e.protocol in ("tcp", ""):
            reasons.append("uncommon_port")
        if first_seen:
            reasons.append("first_seen_destination")
        # The chain's members: sender (and its ancestors and descendants in
        # lineage scope), the reader, and the pipeline members between them.
        chain: list[tuple[list[str], Optional[str]]] = [(list(images), st.cmdline)]
        rp = h.procs.get(r.pid)
        chain.append(([r.executable], rp.cmdline if rp is not None and rp.gen == r.gen else None))
        chain.extend((m.images, m.cmdline) for m in rel.members)
        if scope == "lineage":
            chain.extend((a.images, a.cmdline) for _, a in side.ancestors)
            chain.extend((c.images, c.cmdline) for c in side.descendants.values())
        chain_images = {basename(i) for imgs, _ in chain for i in imgs if i}
        if chain_images & (ENCODERS - {"zip", "7z", "7za"}) or any(
            basename(i) in ("zip", "7z", "7za") and not is_encryptor(i, c)
            for imgs, c in chain
            for i in imgs
        ):
            reasons.append("encoder_in_chain")
        if any(is_encryptor(i, c) for imgs, c in chain for i in imgs if i):
            reasons.append("encryptor_in_chain")
        if scope in ("pipeline", "lineage") and basename(r.executable) in COPIERS:
            reasons.append("reader_copies_file")
        if rel.proven:
            reasons.append("pipe_shared")
        # Context reads count in a scope at least as strong as the detection's, or session.
        strong = max(SCOPES.index(scope), SCOPES.index("session"))
        if any(c.path != r.path and SCOPES.index(relate(c).scope) <= strong for c in scored):
            reasons.append("multiple_sensitive_files")
        if scope == "process" and r.executable and images and images[-1] != r.executable:
            reasons.append("exec_after_read")
        if e.kind == "transfer":
            reasons.append("transfer_on_existing_socket")
        det_score = score(r.weight, scope, reasons)
        if (
            self.min_score is not None
            and e.bytes_sent is None  # (enrich rescores by the bytes)
            and det_score < self.min_score
            # what _mark_mass_reads would make of it
            and (
                not self._mass_reader(h, r.pid, e.time)
                or score(r.weight, scope, (*reasons, "mass_sensitive_reads")) < self.min_score
            )
        ):
            self.stats["detections_emitted"] += 1
            self.below_min_score += 1
            return []
        # Context: every other catalogue read (low classes included) of the chain.
        files: dict[str, FileRead] = {r.path: FileRead(r.path, r.cls, r.size, r.pid, scope, r.time)}
        for o in _in_window(h.reads, lo, e.time):
            if o.path in files:
                continue
            o_scope = relate(o).scope
            if SCOPES.index(o_scope) <= strong:
                files[o.path] = FileRead(o.path, o.cls, o.size, o.pid, o_scope, o.time)
        others = tuple(p_ for p_ in files if p_ != r.path)
        d = Detection(
            id=det_id,
            host=e.host,
            read_time=r.time,
            egress_time=e.time,
            pid=p.pid,
            start=st.start,
            executable=sender,
            executables=tuple(dict.fromkeys((*images, r.executable))),
            cmdline=st.cmdline,
            uid=uid,
            auid=auid,
            reader_pid=r.pid,
            reader_executable=r.executable,
            path=r.path,
            sensitive_class=r.cls,
            class_weight=r.weight,
            remote_address=e.remote_address,
            remote_port=e.remote_port,
            remote_class=rclass.value,
            protocol=e.protocol,
            scope=scope,
            score=det_score,
            reasons=tuple(reasons),
            other_paths=others,
            egress_kind=e.kind,
            bytes_sent=None,
            file_size=r.size,
            read_source=r.source,
            egress_source=e.source,
            cookie=e.cookie,
            priority=priority(self.config, det_score, e.host, r.cls),
            files_read=tuple(files.values()),
            destination_seen_before=not first_seen,
            near_approval=near_approval(
                self.config.approved,
                r.executable,
                sender,
                r.cls,
                e.remote_address,
                e.remote_port,
                e.time,
            ),
            compressed=bool(chain_images & COMPRESSORS),
        )
        if e.bytes_sent is not None:
            d = enrich(
                d,
                bytes_sent=e.bytes_sent,
                bytes_by_destination=[(f"{e.remote_address}:{e.remote_port}", e.bytes_sent)],
                config=self.config,
            )
        self.stats["detections_emitted"] += 1
        return [d]

    # ----- time and memory ---------------------------------------------
    def advance(self, now: float) -> None:
        """Forget reads older than the window and processes idle past their TTL."""
        for h in self.hosts.values():
            self._expire_reads(h, now - self.window)
            stale = now - self.process_ttl
            while h.procs:
                pid, st = next(iter(h.procs.items()))
                if st.last >= stale:
                    break
                del h.procs[pid]
                if st.ppid is not None:
                    kids = h.children.get(st.ppid)
                    if kids is not None:
                        kids.discard(pid)
                        if not kids:
                            del h.children[st.ppid]

    def size(self) -> dict[str, int]:
        return {
            "hosts": len(self.hosts),
            "reads": sum(len(h.reads) for h in self.hosts.values()),
            "processes": sum(len(h.procs) for h in self.hosts.values()),
            "reading_processes": sum(len(h.by_proc) for h in self.hosts.values()),
            "flooding_processes": sum(
                1 for h in self.hosts.values() for b in h.by_proc.values() if b.summarised
            ),
            "detection_ids": len(self._ids),
        }

    # ----- persistence --------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """A JSON-able snapshot: reads in the window, process view, emitted ids, stats."""
        return {
            "version": 1,
            "gen": self._gen,
            "ids": list(self._ids),
            "stats": dict(self.stats),
            "hosts": {
                name: {
                    "procs": [[pid, asdict(st)] for pid, st in h.procs.items()],
                    "reads": [{k: getattr(r, k) for k in _READ_FIELDS} for r in h.reads],
                    "floods": [
                        [pid, gen, b.summary()]
                        for (pid, gen), b in h.by_proc.items()
                        if b.summarised
                    ],
                    "destinations": list(h.destinations),
                    "newest": h.newest,
                }
                for name, h in self.hosts.items()
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError("unsupported correlator state version")
        self._gen = int(state["gen"])
        self._ids = OrderedDict((str(i), None) for i in state["ids"])
        for k, v in state.get("stats", {}).items():
            if k in self.stats:
                self.stats[k] = int(v)
        self.hosts = {}
        for name, hs in state["hosts"].items():
            h = _Host()
            for pid, st in hs["procs"]:
                proc = _Proc(**st)
                h.procs[int(pid)] = proc
                if proc.ppid is not None:
                    h.children.setdefault(proc.ppid, set()).add(int(pid))
            self.hosts[str(name)] = h
            for pid, gen, f in hs.get("floods", []):
                b = h.by_proc[(int(pid), int(gen))] = _ProcReads()
                b.summarised = int(f["summarised"])
                b.alerting_summarised = int(f["alerting_summarised"])
                b.first, b.last = float(f["first"]), float(f["last"])
                b.classes = {str(c) for c in f["classes"]}
                b.mass = bool(f["mass"])
            for item in hs["reads"]:
                r = _Read(**{k: item[k] for k in _READ_FIELDS if k in item})
                self._hold(h, (r.pid, r.gen), r)
            h.destinations = OrderedDict((d, None) for d in hs["destinations"])
            h.newest = float(hs.get("newest", 0.0))
            self.hosts[str(name)] = h


def _exec_time(p: _Proc) -> Optional[float]:
    return p.exec_time if p.exec_time is not None else p.born


def _exec_together(h: _Host, parent: Optional[int], t: float) -> list[_Proc]:
    """Children of ``parent`` exec'd (or forked) within EXEC_PIPELINE_SECONDS of ``t``."""
    out: list[_Proc] = []
    for c in h.children.get(parent, ()) if parent is not None else ():
        cs = h.procs.get(c)
        if cs is None or cs.ppid != parent:
            continue
        ct = _exec_time(cs)
        if ct is not None and abs(ct - t) <= EXEC_PIPELINE_SECONDS:
            out.append(cs)
    return out


def _in_window(
    dq: Reversible[_Read], lo: float, hi: float, *, first_only: bool = False
) -> list[_Read]:
    """Reads with lo <= time <= hi, newest first (a read after the egress is no chain)."""
    out: list[_Read] = []
    for r in reversed(dq):
        if r.time > hi:
            continue
        if r.time < lo:
            break
        out.append(r)
        if first_only:
            break
    return out


def _detection_id(host: str, r: _Read, pid: int, marker: str, address: str, port: int) -> str:
    """Stable across restarts and replays: derived only from the evidence."""
    key = "|".join(
        (host, str(r.pid), r.marker, r.path, f"{r.time:.3f}", str(pid), marker, address, str(port))
    )
    return hashlib.sha256(key.encode()).hexdigest()[:20]
