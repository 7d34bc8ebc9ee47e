"""The native read source: sensitive reads as fanotify reports them.

Where the data comes from: :class:`~readegress.kernel.fanotify.FanotifyWatcher`
(opens and reads of marked files, with the opener's identity from /proc while
it lived, or while the kernel held it for the permission group). This module
decides *what* to mark from the catalogue, turns events into
:class:`~readegress.detect.events.SensitiveRead` and keeps the marks current.

What gets marked (:func:`expand_catalogue`), and why:

* ``~/`` stands for ``/root``, every directory in ``/home``, and every home
  in ``/etc/passwd`` with uid >= 1000 — *as far as the catalogue can match
  it*: the catalogue's ``~`` means ``/root`` and ``/home/<one component>``
  (:data:`~readegress.detect.catalogue.HOME_REGEX`), and the correlation core
  drops reads of paths the catalogue does not match. A passwd home elsewhere
  (``/var/lib/postgresql``, ``/home/staff/bob``) is listed in
  :attr:`MarkPlan.homes_outside` and counted, not marked.
* Globs are expanded on the filesystem. Existing matching files get inode
  marks; nothing else in their directories raises an event when opened.
* Directories are watched for *entries* (``dir_watch="entry"``, the default,
  Linux 5.9+): ``FAN_CREATE | FAN_MOVED_TO | FAN_DELETE | FAN_MOVED_FROM``
  with ``FAN_REPORT_DFID_NAME`` on every directory a glob ends in a wildcard
  for (``~/.ssh/id_*``), whose named file does not exist yet
  (``~/.aws/credentials`` with ``~/.aws`` present), or that holds a marked
  file (:attr:`MarkPlan.entry_dirs`). A matching file created or renamed
  into place is marked by inode as soon as its entry event is read
  (milliseconds); ``/etc/shadow`` replaced by a rename (shadow-utils does
  that) is re-marked at once. A marked file renamed away (or hard-linked
  elsewhere) keeps its inode mark, and its reads are reported under the
  catalogue name it had (:attr:`NativeReadStats.renamed_reads`); the rename
  itself is counted (``renamed_away``). A new subdirectory, or lost entry
  events (queue overflow), bring the next re-mark forward.
* Where entry events are unavailable (older kernel, a filesystem without
  file handles) or with ``dir_watch="child"``, a directory that must be
  watched gets a ``FAN_EVENT_ON_CHILD`` mark instead: every child's open is
  then reported (``known_hosts`` next to ``id_rsa``) and matched against the
  catalogue again here — the per-open cost entry watching removes.
* Never a child mark on ``/``, a top-level directory (``/etc``: every
  process opens ``/etc/ld.so.cache``) or a home directory itself: a file
  there (``/etc/shadow``, ``~/.netrc``) gets an inode mark and, with child
  marks only, a file replaced by a rename is marked again at the next
  re-mark (``remark_interval``, 30 s by default). Entry watching covers
  those directories too (never ``/``): a name appearing there costs one
  event, an open costs nothing.
* ``**`` globs walk the tree below their literal prefix without following
  directory symlinks, within ``walk_budget`` directory entries per
  expansion (a truncated walk is reported: files past the budget are not
  marked until the tree shrinks or the budget grows).
* Marks are capped (``max_marks``), heaviest classes first; what is over the
  cap is counted in :attr:`MarkPlan.skipped`.
* The permission group (opener held until identified) marks the existing
  files of ``permission_classes`` (default: every class of level ``high``)
  and the explicit extra paths, capped by ``max_perm_marks``; no directory
  marks there (each would hold every open in that directory).
* fanotify follows symlinks when marking and reports resolved paths, so a
  catalogue file behind a symlink (``~/.ssh`` -> ``/data/ssh``) is mapped
  back to its catalogue path (:attr:`MarkPlan.aliases`).

Events become reads only for paths the catalogue matches (or the explicit
extra paths), with ``size`` from ``fstat`` of the event fd. Repeats merge: one
read per (pid, path) per ``merge_seconds`` unless the start ticks or the
executable differ (pid reuse, exec) or the earlier one lacked an identity this
one has.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from readegress.detect.catalogue import HOME_REGEX, Catalogue, glob_to_regex
from readegress.detect.config import Config
from readegress.detect.events import Proc, SensitiveRead
from readegress.kernel.fanotify import (
    DEFAULT_PERM_BUDGET,
    FAN_MOVED_FROM,
    FAN_ONDIR,
    FAN_Q_OVERFLOW,
    EntryEvent,
    FanotifyEvent,
    FanotifyWatcher,
    Opener,
)
from readegress.sources.osquery_setup import expand_braces

log = logging.getLogger("readegress.sources.native_reads")

SOURCE = "fanotify"
DEFAULT_MAX_MARKS = 4096
DEFAULT_MAX_PERM_MARKS = 256
DEFAULT_WALK_BUDGET = 50_000
DEFAULT_REMARK_SECONDS = 30.0
DEFAULT_MERGE_SECONDS = 1.0
#: Inodes of marked files renamed away that are still mapped to their catalogue name.
MAX_MOVED_INODES = 1024
#: Seconds a re-mark brought forward (new subdirectory, lost entries) waits
#: for the burst that caused it to settle.
_REMARK_SOON_DELAY = 0.2
#: uid from which /etc/passwd entries are people (Debian/RHEL UID_MIN).
MIN_HUMAN_UID = 1000
#: How many directory levels a ``**`` walk descends below its literal prefix:
#: the depth the osquery source unrolls ``**`` to, so both cover the same files.
MAX_DEEP_WALK = 4

_HOME_RX = re.compile(HOME_REGEX + "$")
_WILD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Homes:
    """The home directories ``~/`` expands to on this host."""

    homes: tuple[str, ...]  # marked: /root, /home/*, passwd homes the catalogue can match
    outside: tuple[str, ...]  # passwd homes (uid >= 1000) the catalogue's ~ cannot match


def find_homes(
    passwd: str = "/etc/passwd", home_root: str = "/home", root_home: str = "/root"
) -> Homes:
    """``/root``, the directories in ``/home``, and passwd homes of uid >= 1000.

    Only existing directories count. ``nobody`` (65534) is skipped: its home
    is ``/nonexistent`` by convention.
    """
    found: list[str] = []
    if os.path.isdir(root_home):
        found.append(root_home)
    try:
        with os.scandir(home_root) as it:
            found.extend(sorted(e.path for e in it if e.is_dir(follow_symlinks=True)))
    except OSError:
        pass
    outside: list[str] = []
    try:
        with open(passwd, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":")
        if len(parts) < 7 or not parts[2].isdigit():
            continue
        uid, home = int(parts[2]), os.path.normpath(parts[5]) if parts[5] else ""
        if uid < MIN_HUMAN_UID or uid == 65534 or not home.startswith("/"):
            continue
        if home in found or not os.path.isdir(home):
            continue
        (found if _HOME_RX.match(home) else outside).append(home)
    return Homes(tuple(dict.fromkeys(found)), tuple(dict.fromkeys(outside)))


@dataclass(frozen=True)
class MarkPlan:
    """What to mark on this host, from a catalogue (see the module notes)."""

    files: Mapping[str, str]  # path -> class name ("" for an explicit extra path)
    dirs: tuple[str, ...]  # FAN_EVENT_ON_CHILD directory marks
    perm_files: tuple[str, ...]  # FAN_OPEN_PERM inode marks
    aliases: Mapping[str, str]  # resolved path -> catalogue path (files and dirs)
    extra: frozenset[str]  # explicit paths, reported whatever the catalogue says
    homes: tuple[str, ...]
    homes_outside: tuple[str, ...]
    skipped: int  # files and directories over max_marks (or perm over max_perm_marks)
    dirs_refused: int  # directories not marked: /, top-level, or a home itself
    walk_truncated: bool  # the walk ran out of walk_budget entries
    #: directories watched for entries (created/renamed/deleted names) when
    #: entry events are available: ``dirs``, the parents of marked files, and
    #: refused directories other than ``/`` (see the module notes)
    entry_dirs: tuple[str, ...] = ()


class _Budget:
    """Directory entries a single expansion may list."""

    def __init__(self, entries: int) -> None:
        self.left = entries
        self.exhausted = False

    def scan(self, directory: str) -> list[os.DirEntry[str]]:
        if self.left <= 0:
            self.exhausted = True
            return []
        out: list[os.DirEntry[str]] = []
        try:
            with os.scandir(directory) as it:
                for e in it:
                    self.left -= 1
                    out.append(e)
                    if self.left <= 0:
                        self.exhausted = True
                        break
        except OSError:
            pass
        return out


def _component_rx(comp: str) -> re.Pattern[str]:
    # The catalogue's own translation, so one component matches exactly as
    # the catalogue would match it (e.g. '*' matches dotfiles too).
    return re.compile(glob_to_regex("/" + comp))


def _is_dir(e: os.DirEntry[str]) -> bool:
    try:
        return e.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _expand_pattern(pattern: str, budget: _Budget) -> tuple[list[str], list[str]]:
    """(existing paths matching, directories to watch for new children) of one
    concrete absolute glob (no braces, no ``~``)."""
    comps = [c for c in pattern.split("/") if c]
    if not comps:
        return [], []
    if any("**" in c for c in comps):
        return _expand_deep(pattern, comps, budget)
    dirs = ["/"]
    for comp in comps[:-1]:
        nxt: list[str] = []
        for d in dirs:
            if _WILD.search(comp):
                rx = _component_rx(comp)
                nxt.extend(
                    e.path for e in budget.scan(d) if rx.fullmatch("/" + e.name) and _is_dir(e)
                )
            else:
                p = os.path.join(d, comp)
                if os.path.isdir(p):
                    nxt.append(p)
        dirs = nxt
        if not dirs:
            return [], []
    last = comps[-1]
    files: list[str] = []
    watch: list[str] = []
    for d in dirs:
        if _WILD.search(last):
            rx = _component_rx(last)
            files.extend(e.path for e in budget.scan(d) if rx.fullmatch("/" + e.name))
            watch.append(d)
        else:
            p = os.path.join(d, last)
            if os.path.lexists(p):
                files.append(p)
            else:
                watch.append(d)
    return files, watch


def _expand_deep(pattern: str, comps: list[str], budget: _Budget) -> tuple[list[str], list[str]]:
    """A ``**`` glob: walk below its literal prefix, breadth first (a walk cut
    short by the budget has covered the shallow levels, where ``~/**/.env``
    files live); watch the directories holding matches."""
    prefix: list[str] = []
    for c in comps:
        if _WILD.search(c):
            break
        prefix.append(c)
    base = "/" + "/".join(prefix)
    rx = re.compile(glob_to_regex(pattern))
    files: list[str] = []
    watch: set[str] = set()
    todo = deque([(base, 0)])
    while todo:
        d, depth = todo.popleft()
        for e in budget.scan(d):
            try:
                if e.is_dir(follow_symlinks=False):
                    if depth < MAX_DEEP_WALK:
                        todo.append((e.path, depth + 1))
                    continue
            except OSError:
                continue
            if rx.fullmatch(e.path):
                files.append(e.path)
                watch.add(d)
    return files, sorted(watch)


def permission_class_names(
    catalogue: Catalogue, permission_classes: Optional[Iterable[str]]
) -> set[str]:
    """The classes whose files get permission marks (None: every ``high`` class)."""
    if permission_classes is None:
        return {c.name for c in catalogue.classes if c.level == "high"}
    return set(permission_classes)


def _markable_dir(d: str, homes: set[str]) -> bool:
    """Not /, not a top-level directory, not a home itself (see the module notes)."""
    return d.count("/") >= 2 and d not in homes and not _HOME_RX.match(d)


def _regular(path: str) -> bool:
    try:
        return os.path.isfile(path)  # follows symlinks, as fanotify_mark does
    except OSError:
        return False


def expand_catalogue(
    catalogue: Catalogue,
    *,
    extra_paths: Iterable[str] = (),
    permission_classes: Optional[Iterable[str]] = None,
    homes: Optional[Homes] = None,
    max_marks: int = DEFAULT_MAX_MARKS,
    max_perm_marks: int = DEFAULT_MAX_PERM_MARKS,
    walk_budget: int = DEFAULT_WALK_BUDGET,
) -> MarkPlan:
    """The marks that cover ``catalogue`` (and ``extra_paths``) on this host now.

    Reads the filesystem (directory listings, stat), never file contents.
    ``extra_paths`` are literal absolute paths reported whatever the
    catalogue says (e.g. ``--sensitive PATH``); an absent one gets its parent
    directory watched (when markable). ``permission_classes=None`` means the
    classes of level ``high``.
    """
    h = homes if homes is not None else find_homes()
    home_set = set(h.homes)
    budget = _Budget(walk_budget)
    weight = {c.name: c.weight for c in catalogue.classes}
    perm_cls = permission_class_names(catalogue, permission_classes)

    files: dict[str, str] = {}
    dir_weight: dict[str, int] = {}
    refused = 0
    refused_dirs: set[str] = set()
    for c in catalogue.classes:  # heaviest first
        for pattern in c.paths:
            for p in expand_braces(pattern):
                concrete = [home + p[1:] for home in h.homes] if p.startswith("~/") else [p]
                for q in concrete:
                    found, watch = _expand_pattern(q, budget)
                    for f in found:
                        if f in files or not _regular(f):
                            continue
                        cls = catalogue.match(f)
                        if cls is not None:
                            files[f] = cls.name
                    for d in watch:
                        if d in dir_weight:
                            continue
                        if _markable_dir(d, home_set):
                            dir_weight[d] = c.weight
                        else:
                            refused += 1
                            refused_dirs.add(d)
    extra: list[str] = []
    for p in extra_paths:
        p = os.path.normpath(p)
        if not p.startswith("/"):
            continue
        extra.append(p)
        if _regular(p):
            files.setdefault(p, "")
        else:
            d = os.path.dirname(p)
            if os.path.isdir(d) and _markable_dir(d, home_set):
                dir_weight.setdefault(d, max(weight.values(), default=0) + 1)
            else:
                refused += 1
                if os.path.isdir(d):
                    refused_dirs.add(d)

    top = max(weight.values(), default=0) + 1  # explicit paths come first
    ranked: list[tuple[int, int, str, bool]] = [
        (-(weight.get(cls, 0) if cls else top), 0, f, False) for f, cls in files.items()
    ]
    ranked += [(-w, 1, d, True) for d, w in dir_weight.items()]
    ranked.sort()
    kept = ranked[:max_marks]
    skipped = len(ranked) - len(kept)
    kept_files = {f: files[f] for _w, _k, f, is_dir in kept if not is_dir}
    kept_dirs = tuple(sorted(d for _w, _k, d, is_dir in kept if is_dir))

    perm_ranked = [r for r in kept if not r[3] and (files[r[2]] in perm_cls or files[r[2]] == "")]
    perm = tuple(sorted(r[2] for r in perm_ranked[:max_perm_marks]))
    skipped += max(0, len(perm_ranked) - max_perm_marks)

    entry = set(kept_dirs) | {os.path.dirname(f) for f in kept_files} | refused_dirs
    entry.discard("/")
    entry_dirs = tuple(sorted(entry)[:max_marks])

    aliases: dict[str, str] = {}
    for p in (*kept_files, *kept_dirs, *entry_dirs):
        real = os.path.realpath(p)
        if real != p:
            aliases[real] = p
    return MarkPlan(
        files=kept_files,
        dirs=kept_dirs,
        perm_files=perm,
        aliases=aliases,
        extra=frozenset(extra),
        homes=h.homes,
        homes_outside=h.outside,
        skipped=skipped,
        dirs_refused=refused,
        walk_truncated=budget.exhausted,
        entry_dirs=entry_dirs,
    )


def catalogue_path(plan: MarkPlan, path: str) -> str:
    """The catalogue path of an event path: undoes symlink resolution (:attr:`MarkPlan.aliases`)."""
    a = plan.aliases.get(path)
    if a is not None:
        return a
    head, _, name = path.rpartition("/")
    a = plan.aliases.get(head)
    return path if a is None else f"{a}/{name}"


@dataclass
class NativeReadStats:
    """Health of the native read source (JSON-able through :meth:`as_dict`)."""

    running: bool = False
    pidfd: bool = False
    perm_available: bool = False
    perm_error: str = ""
    marks_files: int = 0
    marks_dirs: int = 0
    marks_perm: int = 0
    marks_entry_dirs: int = 0  # directories watched for entries (no per-open events)
    dir_watch: str = ""  # "entry" or "child" (what was asked for)
    entry_available: bool = False
    entry_error: str = ""
    entry_fallback_dirs: int = 0  # directories child-marked because entry events failed there
    entry_events: int = 0  # entry events handed to this source
    entry_marked: int = 0  # files marked because an entry event named them
    renamed_away: int = 0  # marked files renamed out of their catalogue name
    deleted_marked: int = 0  # marked files deleted (unlinked from their name)
    renamed_reads: int = 0  # reads of a marked inode found under another name
    entry_overflows: int = 0
    marks_skipped: int = 0
    dirs_refused: int = 0
    walk_truncated: bool = False
    homes: int = 0
    homes_outside: tuple[str, ...] = ()
    mark_errors: dict[str, int] = field(default_factory=dict)
    remarks: int = 0
    remark_errors: int = 0
    remark_seconds: float = 0.0  # duration of the last expansion + marking
    events: int = 0  # fanotify events handed to this source
    reads_emitted: int = 0
    merged: int = 0  # repeats within merge_seconds
    perm_repeats: int = 0  # repeat opens the permission group allowed without a new identity
    unmatched: int = 0  # children of marked directories the catalogue does not match
    no_path: int = 0
    overflows: int = 0
    identity_missed: int = 0
    exited_before_read: int = 0
    perm_answered: int = 0
    perm_watchdog: int = 0
    perm_max_hold_us: int = 0
    perm_forced_close: int = 0
    dispatch_dropped: int = 0
    callback_errors: int = 0

    def as_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        d["homes_outside"] = list(self.homes_outside)
        return d


class NativeReadSource:
    """Feeds ``on_read`` with :class:`SensitiveRead` from fanotify.

    ``on_read`` is called on the watcher's dispatcher thread, one read at a
    time, never while an opener is held; it should hand the read on (a queue,
    a lock-protected core) rather than do slow work. ``start()`` raises
    ``OSError`` when fanotify is not available (not root, no
    CONFIG_FANOTIFY[_ACCESS_PERMISSIONS]).
    """

    def __init__(
        self,
        config: Config,
        on_read: Callable[[SensitiveRead], None],
        host: Optional[str] = None,
        *,
        extra_paths: Sequence[str] = (),
        permission_classes: Optional[Iterable[str]] = None,
        remark_interval: float = DEFAULT_REMARK_SECONDS,
        merge_seconds: float = DEFAULT_MERGE_SECONDS,
        perm_budget: float = DEFAULT_PERM_BUDGET,
        max_marks: int = DEFAULT_MAX_MARKS,
        max_perm_marks: int = DEFAULT_MAX_PERM_MARKS,
        walk_budget: int = DEFAULT_WALK_BUDGET,
        dir_watch: str = "entry",
    ) -> None:
        if dir_watch not in ("entry", "child"):
            raise ValueError(f"dir_watch must be 'entry' or 'child', not {dir_watch!r}")
        self.host = host or socket.gethostname()
        self.dir_watch = dir_watch
        self._config = config
        self._on_read = on_read
        self._extra = tuple(extra_paths)
        self._perm_classes = None if permission_classes is None else tuple(permission_classes)
        self.remark_interval = remark_interval
        self.merge_seconds = merge_seconds
        self._limits = (max_marks, max_perm_marks, walk_budget)
        self._perm_budget = perm_budget
        self._plan: Optional[MarkPlan] = None
        self._watcher: Optional[FanotifyWatcher] = None
        self._stats = NativeReadStats()
        self._update_lock = threading.Lock()
        self._stop = threading.Event()
        self._remarker: Optional[threading.Thread] = None
        # (pid, path) -> (monotonic time, start ticks, executable) of the last read emitted
        self._recent: dict[tuple[int, str], tuple[float, Optional[int], str]] = {}
        self._next_prune = 0.0
        # Marked files by name and by inode (st_dev, st_ino), rebuilt at every
        # expansion and extended by entry events; inodes renamed away keep
        # their catalogue name in _moved (bounded, oldest out first).
        self._names: dict[str, tuple[int, int]] = {}
        self._inodes: dict[tuple[int, int], str] = {}
        self._moved: OrderedDict[tuple[int, int], str] = OrderedDict()
        self._remark_soon = threading.Event()

    @property
    def plan(self) -> Optional[MarkPlan]:
        """The marks currently set (None before start)."""
        return self._plan

    @property
    def watcher(self) -> Optional[FanotifyWatcher]:
        return self._watcher

    def start(self) -> None:
        plan = self._expand(self._config)
        entry = self.dir_watch == "entry"
        w = FanotifyWatcher(
            plan.files,
            plan.dirs,
            plan.perm_files,
            self._on_event,
            perm_budget=self._perm_budget,
            # No permission group when nothing may ever be held.
            permission=self._perm_classes != () or bool(self._extra),
            entry_events=entry,
            entry_dirs=plan.entry_dirs if entry else (),
            on_entry=self._on_entry,
        )
        self._plan = plan
        w.start()
        self._watcher = w
        self._record(plan, w)
        if self.remark_interval > 0:
            self._remarker = threading.Thread(
                target=self._remark_loop, name="fanotify-remark", daemon=True
            )
            self._remarker.start()

    def close(self) -> None:
        self._stop.set()
        self._remark_soon.set()
        if self._remarker is not None:
            self._remarker.join(5.0)
        w = self._watcher
        if w is not None:
            w.close()
        self._stats.running = False

    def __enter__(self) -> NativeReadSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, config: Optional[Config] = None) -> MarkPlan:
        """Expand the catalogue again (of ``config`` when given) and re-mark now."""
        with self._update_lock:
            if config is not None:
                self._config = config
            w = self._watcher
            if w is None:
                raise RuntimeError("NativeReadSource is not started")
            plan = self._expand(self._config)
            # Swap the plan only after the marks: events of new marks are
            # filtered with the new plan, and the old aliases stay valid until then.
            w.set_marks(
                plan.files,
                plan.dirs,
                plan.perm_files,
                plan.entry_dirs if self.dir_watch == "entry" else (),
            )
            self._plan = plan
            self._record(plan, w)
            return plan

    def stats(self) -> NativeReadStats:
        s = NativeReadStats(**self._stats.__dict__)
        w = self._watcher
        if w is not None:
            ws = w.stats()
            s.running = ws.running
            s.pidfd = ws.pidfd
            s.perm_available = ws.perm_available
            s.perm_error = ws.perm_error
            s.mark_errors = dict(ws.mark_errors)
            s.overflows = ws.overflows
            s.identity_missed = ws.identity_missed
            s.exited_before_read = ws.exited_before_read
            s.perm_answered = ws.perm_answered
            s.perm_repeats = ws.perm_repeats
            s.perm_watchdog = ws.perm_watchdog
            s.perm_max_hold_us = ws.perm_max_hold_us
            s.perm_forced_close = ws.perm_forced_close
            s.dispatch_dropped = ws.dispatch_dropped
            s.marks_files = ws.marks_files
            s.marks_dirs = ws.marks_dirs
            s.marks_perm = ws.marks_perm
            s.marks_entry_dirs = ws.marks_entry_dirs
            s.entry_available = ws.entry_available
            s.entry_error = ws.entry_error
            s.entry_fallback_dirs = ws.entry_fallback_dirs
            s.entry_overflows = ws.entry_overflows
        s.dir_watch = self.dir_watch
        return s

    # -- internals -------------------------------------------------------

    def _expand(self, config: Config) -> MarkPlan:
        t = time.monotonic()
        max_marks, max_perm, walk = self._limits
        plan = expand_catalogue(
            config.catalogue,
            extra_paths=self._extra,
            permission_classes=self._perm_classes,
            max_marks=max_marks,
            max_perm_marks=max_perm,
            walk_budget=walk,
        )
        names: dict[str, tuple[int, int]] = {}
        for f in plan.files:
            try:
                st = os.stat(f)  # follows symlinks, as the mark does
            except OSError:
                continue
            names[f] = (st.st_dev, st.st_ino)
        self._names = names
        self._inodes = {ino: f for f, ino in names.items()}
        self._stats.remark_seconds = time.monotonic() - t
        return plan

    def _record(self, plan: MarkPlan, w: FanotifyWatcher) -> None:
        s = self._stats
        s.remarks += 1
        s.marks_skipped = plan.skipped
        s.dirs_refused = plan.dirs_refused
        s.walk_truncated = plan.walk_truncated
        s.homes = len(plan.homes)
        s.homes_outside = plan.homes_outside
        s.running = True

    def _remark_loop(self) -> None:
        while not self._stop.is_set():
            soon = self._remark_soon.wait(self.remark_interval)
            if self._stop.is_set():
                return
            if soon:
                # Brought forward by an entry event: let its burst settle.
                self._stop.wait(_REMARK_SOON_DELAY)
                self._remark_soon.clear()
            try:
                self.update()
            except Exception:
                self._stats.remark_errors += 1
                log.exception("fanotify re-mark")

    def _on_event(self, ev: FanotifyEvent) -> None:
        s = self._stats
        s.events += 1
        plan = self._plan
        if not ev.path or plan is None:
            s.no_path += 1
            return
        path = catalogue_path(plan, ev.path)
        if path not in plan.extra and self._config.catalogue.match(path) is None:
            named = self._inode_name(ev.inode)
            if named is None:
                s.unmatched += 1
                return
            # A marked file read under another name (renamed away, a hard
            # link): it is still the catalogue file it was marked as.
            s.renamed_reads += 1
            path = named
        o = ev.opener
        now = time.monotonic()
        key = (o.pid, path)
        prev = self._recent.get(key)
        if prev is not None and now - prev[0] < self.merge_seconds and _same(prev, o):
            s.merged += 1
            return
        self._recent[key] = (now, o.start_ticks, o.executable)
        if now >= self._next_prune:
            self._prune(now)
        read = SensitiveRead(
            host=self.host,
            time=ev.time,
            proc=Proc(
                pid=o.pid,
                ppid=o.ppid,
                executable=o.executable,
                start=o.start_ticks,
                uid=o.uid,
                auid=o.auid,
                cmdline=o.cmdline,
                pgid=o.pgid,
                sid=o.sid,
                stdin_pipe=o.stdin_pipe,
                stdout_pipe=o.stdout_pipe,
            ),
            path=path,
            source=SOURCE,
            size=ev.size,
            std_sockets=o.std_sockets,
        )
        s.reads_emitted += 1
        try:
            self._on_read(read)
        except Exception:
            s.callback_errors += 1
            log.exception("native read consumer")

    def _inode_name(self, inode: Optional[tuple[int, int]]) -> Optional[str]:
        if inode is None:
            return None
        return self._inodes.get(inode) or self._moved.get(inode)

    def _on_entry(self, ev: EntryEvent) -> None:
        """A name appeared in or left a watched directory: mark a new matching
        file by inode; notice a marked file leaving its name.

        Masks of one name merge while unread (``FAN_CREATE | FAN_MOVED_FROM``
        has no order), so the decision is taken on the directory as it is now.
        """
        s = self._stats
        s.entry_events += 1
        plan, w = self._plan, self._watcher
        if ev.mask & (FAN_Q_OVERFLOW | FAN_ONDIR):
            # Lost entries, or a new subdirectory deeper globs may reach into.
            self._remark_soon.set()
            return
        if plan is None or w is None:
            return
        path = catalogue_path(plan, ev.path)
        try:
            st: Optional[os.stat_result] = os.stat(ev.path)
        except OSError:
            st = None
        inode = None if st is None else (st.st_dev, st.st_ino)
        known = self._names.get(path)
        if known is not None and known != inode:
            del self._names[path]
            if ev.mask & FAN_MOVED_FROM:
                s.renamed_away += 1
                self._moved[known] = path
                self._moved.move_to_end(known)
                while len(self._moved) > MAX_MOVED_INODES:
                    self._moved.popitem(last=False)
                log.info("marked file %s was renamed away; its reads stay %s", path, path)
            else:
                s.deleted_marked += 1
        if st is None or inode is None or inode == known or not stat.S_ISREG(st.st_mode):
            return
        extra = path in plan.extra
        cls = self._config.catalogue.match(path)
        if cls is None and not extra:
            return
        perm_classes = permission_class_names(self._config.catalogue, self._perm_classes)
        limit = self._limits[1]
        permission = (extra or (cls is not None and cls.name in perm_classes)) and (
            w.stats().marks_perm < limit
        )
        if w.add_file(ev.path, permission=permission):
            s.entry_marked += 1
            self._names[path] = inode
            self._inodes[inode] = path

    def _prune(self, now: float) -> None:
        cutoff = now - self.merge_seconds
        for k, v in list(self._recent.items()):
            if v[0] < cutoff:
                del self._recent[k]
        self._next_prune = now + max(self.merge_seconds, 1.0)


def _same(prev: tuple[float, Optional[int], str], o: Opener) -> bool:
    """Whether a repeat is the same process doing the same thing, no better identified."""
    _t, start, exe = prev
    if o.start_ticks is not None and start is not None and o.start_ticks != start:
        return False  # pid reused
    if o.executable and exe and o.executable != exe:
        return False  # exec'd another image: a new reader
    # An identity the earlier read lacked is worth a new read.
    return not (o.identified and (start is None or not exe))
