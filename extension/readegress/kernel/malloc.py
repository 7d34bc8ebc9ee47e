"""The C allocator under CPython: giving freed memory back to the system.

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

import ctypes
import threading
from typing import Any, Optional

_lock = threading.Lock()
_libc: Optional[Any] = None
_loaded = False


def _glibc() -> Optional[Any]:
    global _libc, _loaded
    with _lock:
        if not _loaded:
            _loaded = True
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
