"""Network namespaces in use, and sockets opened inside them.

Data source: ``/proc/<pid>/ns/net``, a magic link whose inode number names the
namespace (``readlink`` gives ``net:[<inode>]``). A namespace with no process
in it (held only by a bind mount under ``/run/netns`` or by an open fd) is
not "in use" here: no process there can own a socket we could attribute.
Reading another user's link needs root (ptrace access): without it only the
caller's own namespace and its own processes' namespaces are seen.

A socket stays bound to the namespace it was created in. To get a netlink
socket for another namespace, a short-lived worker thread calls
``setns(fd, CLONE_NEWNET)`` (which changes only the calling thread), creates
the socket, and exits; the socket keeps working from any thread and the main
thread never changes namespace. ``os.setns`` exists from Python 3.12; older
versions call libc's ``setns`` through ctypes. Entering a namespace needs
CAP_SYS_ADMIN. Holding a socket keeps its namespace alive, so the cache must
be pruned when the namespace's last process is gone.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Generic, Optional, TypeVar

PROC_ROOT = "/proc"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def _link_inode(link: str) -> int:
    # "net:[4026531840]"
    return int(link[link.index("[") + 1 : -1])


def namespace_of(pid: int, proc_root: str = PROC_ROOT) -> Optional[int]:
    """Inode of the network namespace of ``pid`` (``None`` when gone or not permitted)."""
    try:
        return _link_inode(os.readlink(f"{proc_root}/{pid}/ns/net"))
    except (OSError, ValueError):
        return None


def own_namespace(proc_root: str = PROC_ROOT) -> int:
    """Inode of the caller's network namespace (``/proc/self/ns/net``): the host's,
    unless the extension itself runs in a container."""
    return _link_inode(os.readlink(f"{proc_root}/self/ns/net"))


def list_namespaces(
    proc_root: str = PROC_ROOT, pids: Optional[Iterable[int]] = None
) -> dict[int, int]:
    """namespace inode -> one pid living in it, for every readable process.

    ``pids`` restricts the walk (default: every pid in the procfs root). The
    pid kept for a namespace is the lowest one seen, which is usually the
    longest-lived (a container's init).
    """
    if pids is None:
        try:
            pids = sorted(int(n) for n in os.listdir(proc_root) if n.isdigit())
        except OSError:
            pids = []
    out: dict[int, int] = {}
    readlink = os.readlink
    for pid in pids:
        try:
            link = readlink(f"{proc_root}/{pid}/ns/net")
        except OSError:  # gone, kernel thread (no ns link target), or not permitted
            continue
        try:
            ino = _link_inode(link)
        except ValueError:
            continue
        if ino not in out:
            out[ino] = pid
    return out


_setns_fn: Optional[Callable[[int, int], None]] = None


def _setns(fd: int, nstype: int) -> None:
    global _setns_fn
    if _setns_fn is None:
        py_setns = getattr(os, "setns", None)
        if py_setns is not None:  # Python >= 3.12
            _setns_fn = py_setns
        else:
            import ctypes  # here: only Python < 3.12 needs it, and only to enter a namespace
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            c_setns = libc.setns
            c_setns.argtypes = (ctypes.c_int, ctypes.c_int)
            c_setns.restype = ctypes.c_int

            def _c_setns(fd: int, nstype: int) -> None:
                if c_setns(fd, nstype) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns: {os.strerror(err)}")

            _setns_fn = _c_setns
    _setns_fn(fd, nstype)


def run_in_namespace(
    pid: int, expected_inode: Optional[int], fn: Callable[[], T], *, proc_root: str = PROC_ROOT
) -> T:
    """Call ``fn`` on a worker thread that entered the network namespace of ``pid``.

    The namespace fd is opened first and checked against ``expected_inode``
    (the pid may have exited and been reused since it was listed). Raises
    ``OSError`` when the namespace cannot be entered (EPERM without
    CAP_SYS_ADMIN, ENOENT when the process is gone, ESTALE on a changed pid).
    """
    ns_fd = os.open(f"{proc_root}/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if expected_inode is not None and os.fstat(ns_fd).st_ino != expected_inode:
            raise OSError(errno.ESTALE, f"pid {pid} is no longer in net namespace {expected_inode}")
        result: list[T] = []
        error: list[BaseException] = []

        def work() -> None:
            try:
                _setns(ns_fd, CLONE_NEWNET)
                result.append(fn())
            except BaseException as e:  # handed to the caller's thread
                error.append(e)

        t = threading.Thread(target=work, name="readegress-setns", daemon=True)
        t.start()
        t.join()
        if error:
            raise error[0]
        return result[0]
    finally:
        os.close(ns_fd)


class NamespaceSockets(Generic[T]):
    """One object per network namespace (e.g. a sock_diag socket), made on first use.

    ``factory(inode)`` builds the object in the calling thread's namespace;
    for the caller's own namespace it runs directly, for others on a setns
    worker (:func:`run_in_namespace`). ``closer`` releases an object when its
    namespace is pruned or on :meth:`close`.
    """

    def __init__(
        self,
        factory: Callable[[int], T],
        closer: Callable[[T], None],
        *,
        proc_root: str = PROC_ROOT,
    ) -> None:
        self.factory = factory
        self.closer = closer
        self.proc_root = proc_root
        self.own = own_namespace(proc_root)
        self._items: dict[int, T] = {}
        self._lock = threading.Lock()

    def get(self, inode: int, pid: int) -> T:
        """The object for namespace ``inode``, entering it through ``pid`` if needed."""
        with self._lock:
            item = self._items.get(inode)
            if item is None:
                factory = self.factory
                if inode == self.own:
                    item = factory(inode)
                else:
                    item = run_in_namespace(
                        pid, inode, lambda: factory(inode), proc_root=self.proc_root
                    )
                self._items[inode] = item
            return item

    def peek(self, inode: int) -> Optional[T]:
        """The cached object of ``inode`` without creating one."""
        with self._lock:
            return self._items.get(inode)

    def drop(self, inode: int) -> None:
        """Forget (and close) the object of one namespace, e.g. after an I/O error."""
        with self._lock:
            item = self._items.pop(inode, None)
        if item is not None:
            self.closer(item)

    def prune(self, alive: Iterable[int]) -> list[int]:
        """Close objects of namespaces not in ``alive`` (the own one is kept); returns them."""
        keep = set(alive)
        keep.add(self.own)
        with self._lock:
            gone = [i for i in self._items if i not in keep]
            items = [self._items.pop(i) for i in gone]
        for item in items:
            self.closer(item)
        return gone

    def inodes(self) -> list[int]:
        with self._lock:
            return list(self._items)

    def close(self) -> None:
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        for item in items:
            self.closer(item)


def open_socket_in_namespace(
    pid: int,
    expected_inode: Optional[int],
    family: int,
    type_: int,
    proto: int = 0,
    *,
    proc_root: str = PROC_ROOT,
) -> socket.socket:
    """A socket created inside the network namespace of ``pid``."""
    return run_in_namespace(
        pid, expected_inode, lambda: socket.socket(family, type_, proto), proc_root=proc_root
    )
