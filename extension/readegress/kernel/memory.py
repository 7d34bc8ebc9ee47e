"""Memory habits of a process that builds 20,000-row answers: when the
cyclic GC may run, and giving freed memory back to the system.

:func:`gc_paused`: rows, snapshots and their records are tuples of ints and
strings that live until the answer is sent. They are never cycles, yet
building 20k of them triggers young and full collections that traverse
everything alive and free nothing (measured: ``socket_bytes`` rows 32 ms of
CPU with the collector paused, ~115 ms with it). Polls, table calls and
queries pause it for their duration; the pause is process-wide, so it is kept
to one call, and the collector is re-enabled only if it was on.

CPython keeps small objects (<= 512 bytes) in its own arenas and takes the
rest from ``malloc``. glibc's ``malloc`` keeps freed memory for reuse: after a
20,000-row table answer (tens of megabytes of dicts and strings, freed when
the reply is sent) the process's RSS stays at its peak, and each thread that
allocated gets its own malloc arena (up to 8 per core), each holding its own
freed pages. Two calls bound that:

* :func:`trim` — ``malloc_trim(0)``: return every whole free page of every
  arena to the system (``madvise``); milliseconds on a 100 MB heap.
* :func:`limit_arenas` — ``mallopt(M_ARENA_MAX, n)``: threads created after
  it share ``n`` arenas, so freed memory is reused across threads instead of
  stranded in one per thread.

Both are glibc extensions: elsewhere (musl) they do nothing and say so by
returning False.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from typing import Any, Optional


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection while the block runs (see the module notes)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_lock = threading.Lock()
_libc: Optional[Any] = None
_loaded = False


def _glibc() -> Optional[Any]:
    global _libc, _loaded
    with _lock:
        if not _loaded:
            _loaded = True
            import ctypes  # here: ~2 ms of imports a one-shot query need not pay

            try:
                lib = ctypes.CDLL(None)
                lib.malloc_trim.argtypes = [ctypes.c_size_t]
                lib.malloc_trim.restype = ctypes.c_int
                _libc = lib
            except (OSError, AttributeError):
                _libc = None
        return _libc


def trim() -> bool:
    """Give whole free pages back to the system; False where there is no glibc."""
    lib = _glibc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True
