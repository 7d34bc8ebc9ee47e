"""Work split over forked processes, results pickled back: replay's jobs and the fleet feed.

Fork (not spawn): a child starts with the parent's memory, so its input (rows,
events, config) is never pickled, only its result. The children run Python
only; the parent may hold other threads (DuckDB's), which a child never
touches: the objects that exist at the fork are frozen out of the cyclic
collector first, so a child never runs the destructor of one (a DuckDB
relation's would take locks that the parent's threads, absent in the child,
may have held).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def run_forked(calls: Sequence[Callable[[], T]], *, name: str, first_here: bool = False) -> list[T]:
    """The results of ``calls``, in order, each run in a forked process.

    ``first_here``: the first call runs in this process while the others run.
    An exception in a child is raised here; a child that dies says so.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    conns = []
    procs = []
    start = 1 if first_here else 0
    gc.freeze()
    try:
        for k in range(start, len(calls)):
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_child, args=(child, calls[k]), name=f"{name}-{k}", daemon=True
            )
            proc.start()
            child.close()
            conns.append(parent)
            procs.append(proc)
    finally:
        gc.unfreeze()
    out: list[T] = []
    done = False
    try:
        if first_here and calls:
            out.append(calls[0]())
        for k, (conn, proc) in enumerate(zip(conns, procs), start=start):
            try:
                got = conn.recv()
            except EOFError:
                proc.join()
                raise RuntimeError(f"{name} job {k} died (exit code {proc.exitcode})") from None
            if isinstance(got, BaseException):
                raise got
            out.append(got)
        done = True
    finally:
        for conn, proc in zip(conns, procs):
            conn.close()
            if not done:
                proc.kill()  # stopping (an error, a signal): its result is not wanted
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return out


def _child(conn: Any, call: Callable[[], Any]) -> None:
    try:
        conn.send(call())
    except BaseException as e:  # hand it to the parent rather than die silently
        conn.send(e)
    finally:
        conn.close()
