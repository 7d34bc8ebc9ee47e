"""The service's state on disk: one JSON document, replaced atomically.

Where: ``<state_dir>/state.json``; ``state_dir`` comes from the root-owned
config or the ``--state-dir`` flag, never from data. The directory is created
``0700`` (an existing one must be a real directory owned by this user; group
and other bits are removed), the file is written ``0600``: a temporary file
in the same directory, ``fsync``, ``rename`` over the old one, ``fsync`` of
the directory — so a crash leaves the old state or the new one, never half.
Files are opened with ``O_NOFOLLOW``. JSON only (never pickle: loading the
state must not run code).

Loading trusts nothing about the file: it is opened with ``O_NOFOLLOW |
O_NONBLOCK`` (a symlink is refused, a FIFO cannot block the open or the read)
and ``fstat``-ed on the open descriptor, which must be a regular file of at
most :data:`MAX_STATE_BYTES`; a document nested too deeply for the decoder
(``[`` x 100000 raises RecursionError) is unusable, not a crash.
Any file that cannot be used — unreadable, not a regular file, a symlink,
oversized, not UTF-8 JSON, too deep, not an object — is moved aside
(``state.json.corrupt-<unix time>``, the link itself for a symlink) and the
service starts fresh; the caller reports it and also treats a document of the
wrong shape (:meth:`StateStore.reject`) the same way. ``readegress query``
loads without ``quarantine``: it reports, never moves.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
from dataclasses import dataclass
from typing import Any, Optional

STATE_FILE = "state.json"
_TMP_FILE = ".state.json.tmp"
#: A state file larger than this is treated as corrupt rather than read into
#: memory (parsing JSON takes several times its size). :meth:`StateStore.save`
#: refuses to write a larger one, so a document the service wrote always loads.
MAX_STATE_BYTES = 256 << 20


class StateError(OSError):
    """The state directory or file cannot be used safely."""


@dataclass(frozen=True)
class Loaded:
    """The result of :meth:`StateStore.load`: a document, or why there is none."""

    data: Optional[dict[str, Any]]
    note: str = ""  # e.g. "corrupt state moved aside to ..."
    corrupt: bool = False


class StateStore:
    """Reads and atomically replaces ``<directory>/state.json``."""

    def __init__(self, directory: str) -> None:
        if not os.path.isabs(directory):
            raise StateError(f"state directory {directory!r} is not an absolute path")
        self.directory = os.path.normpath(directory)
        self.path = os.path.join(self.directory, STATE_FILE)
        self._tmp = os.path.join(self.directory, _TMP_FILE)

    def check_directory(self) -> None:
        """Check an existing directory (a missing one is created by the first save)."""
        if os.path.lexists(self.directory):
            self.ensure_directory()

    def ensure_directory(self) -> None:
        """Create the directory ``0700``, or check and tighten an existing one."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as e:
            raise StateError(
                f"cannot create state directory {self.directory}: {e.strerror}"
            ) from None
        st = os.lstat(self.directory)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise StateError(f"state directory {self.directory} is not a directory (or a symlink)")
        if st.st_uid != os.geteuid():
            raise StateError(
                f"state directory {self.directory} is owned by uid {st.st_uid}, not by this"
                f" process (uid {os.geteuid()}); refusing to keep state there"
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)

    def load(self, *, quarantine: bool = True) -> Loaded:
        """The stored document; an unusable one is moved aside when ``quarantine``."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return Loaded(None)
        except OSError as e:
            why = "a symbolic link" if e.errno == errno.ELOOP else f"unreadable: {e.strerror}"
            return self._unusable(why, quarantine)
        try:
            raw, why = _read_regular(fd)
        finally:
            os.close(fd)
        if raw is None:
            return self._unusable(why, quarantine)
        data, why = parse_state(raw)
        if data is None:
            return self._unusable(why, quarantine)
        return Loaded(data)

    def _unusable(self, why: str, quarantine: bool) -> Loaded:
        if quarantine:
            return self.reject(why)
        return Loaded(None, f"state at {self.path} is unusable ({why}); not loaded", True)

    def reject(self, why: str) -> Loaded:
        """Move the current state file aside as corrupt (``why`` goes in the note)."""
        aside = f"{self.path}.corrupt-{int(time.time())}"
        n = 0
        while os.path.lexists(aside):  # never overwrite an earlier one (same second)
            n += 1
            aside = f"{self.path}.corrupt-{int(time.time())}-{n}"
        try:
            os.replace(self.path, aside)
        except OSError as e:
            return Loaded(
                None, f"corrupt state ({why}) could not be moved aside: {e.strerror}", True
            )
        return Loaded(None, f"corrupt state ({why}) moved aside to {aside}; started fresh", True)

    def save(self, data: dict[str, Any]) -> int:
        """Replace the state atomically; returns its size in bytes."""
        payload = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
        if len(payload) > MAX_STATE_BYTES:
            raise StateError(
                f"state of {len(payload)} bytes exceeds {MAX_STATE_BYTES}; not saved"
                " (lower max_reads or max_detections)"
            )
        self.ensure_directory()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)  # left by a crash mid-write
        fd = os.open(
            self._tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(payload)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            raise
        os.close(fd)
        os.replace(self._tmp, self.path)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return len(payload)

    def size(self) -> Optional[int]:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return None


def _read_regular(fd: int) -> tuple[Optional[bytes], str]:
    """The bytes of an open regular file of at most MAX_STATE_BYTES, or (None, why)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if st.st_size > MAX_STATE_BYTES:
        return None, f"{st.st_size} bytes, more than {MAX_STATE_BYTES}"
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_STATE_BYTES:  # grew while being read
                return None, f"more than {MAX_STATE_BYTES} bytes"
            chunks.append(chunk)
    except OSError as e:
        return None, f"unreadable: {e.strerror}"
    return b"".join(chunks), ""


def parse_state(raw: bytes) -> tuple[Optional[dict[str, Any]], str]:
    """A state document from bytes, or (None, why it is unusable). Never raises."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except RecursionError:
        # The C decoder counts its depth against the recursion limit and
        # raises cleanly: "[" x 100000 costs a few microseconds, not a crash.
        return None, "nested too deeply"
    except ValueError as e:
        return None, f"not JSON: {e}"
    if not isinstance(data, dict):
        return None, f"not a JSON object but {type(data).__name__}"
    return data, ""
