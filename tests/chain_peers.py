"""Loopback peers and a sender for the live attack-chain tests (127.0.0.1 only).

* :class:`Sink` — a TCP server in a thread of the test process: reads each
  connection to EOF (or, for HTTP, headers plus ``Content-Length``), records the
  bytes it received under the request path or the client port, answers, closes.
  An optional delay before answering makes a connection last a known time.
* ``SENDER`` — the source of a small sender program the tests run as a real
  process (``python3 sender.py ...``); it prints one JSON line with its pid, the
  bytes it sent, how long ``open()`` of the file took, and how long its
  connection lasted.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Optional

from readegress.detect.core import Detection
from readegress.detect.events import Event
from readegress.service.socket_facts import SocketFacts

SENDER = r"""
import json, os, socket, subprocess, sys, time
args = sys.argv[1:]
port = int(args[0])
opts = dict(zip(args[1::2], args[2::2]))
out = {"pid": os.getpid()}
data = b""
def read_file():
    t = time.perf_counter()
    with open(opts["--file"], "rb") as f:
        out["open_s"] = time.perf_counter() - t
        return f.read()
if "--serve-file" in opts:
    # A service that loads its key, then only answers inbound connections.
    with open(opts["--serve-file"], "rb") as f:
        f.read()
    srv = socket.create_server(("127.0.0.1", port))
    srv.settimeout(10)
    print(json.dumps({"listening": port}), flush=True)
    try:
        c, _ = srv.accept()
        c.recv(100)
        c.sendall(b"ok\n")
        c.close()
    except OSError:
        pass
    print(json.dumps(out), flush=True)
    sys.exit(0)
if "--early" not in opts:
    if "--file" in opts:
        data = read_file()
    elif "--stdin" in opts:
        data = sys.stdin.buffer.read()
    elif "--child-read" in opts:
        data = subprocess.run(["cat", opts["--child-read"]], capture_output=True).stdout
    else:
        data = opts.get("--data", "hello").encode()
time.sleep(float(opts.get("--delay", "0")))
host = opts.get("--host", "127.0.0.1")
udp = opts.get("--udp") == "1"
family = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if udp:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.connect((host, port))
    else:
        s = socket.create_connection((host, port))
except OSError as e:
    out.update(error=e.errno, sent=0)
    print(json.dumps(out), flush=True)
    sys.exit(0)
t_conn = time.perf_counter()
if "--early" in opts:
    print(json.dumps({"connected": True}), flush=True)
    time.sleep(float(opts["--early"]))
    data = read_file()
    if opts.get("--nosend") == "1":
        data = b""
data += b"\0" * int(opts.get("--pad", "0"))
if udp:
    for i in range(0, len(data), 512):
        s.send(data[i : i + 512])
    reply = b""
else:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    reply = s.recv(100)
time.sleep(float(opts.get("--hold", "0")))
s.close()
out.update(sent=len(data), reply=reply.decode(), conn_s=time.perf_counter() - t_conn,
           closed=time.time())
print(json.dumps(out), flush=True)
"""


class Sink:
    """A loopback TCP server (127.0.0.1) that records what each connection carried."""

    def __init__(self, *, http: bool = False, delay: float = 0.0, host: str = "127.0.0.1") -> None:
        self.http = http
        self.delay = delay
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM
        )
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        #: request path (HTTP) or "port:<client port>" (raw) -> bytes received
        self.received: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        self.sock.close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bytes_for(self, key: str, timeout: float = 5.0) -> Optional[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if key in self.received:
                    return self.received[key]
            time.sleep(0.01)
        return None

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn, peer), daemon=True).start()

    def _handle(self, conn: socket.socket, peer: tuple[Any, ...]) -> None:
        conn.settimeout(20)
        try:
            if self.http:
                key, total = self._http(conn)
            else:
                total = 0
                while True:
                    b = conn.recv(1 << 16)
                    if not b:
                        break
                    total += len(b)
                key = f"port:{peer[1]}"
                time.sleep(self.delay)
                conn.sendall(b"ok\n")
            with self._lock:
                self.received[key] = total
        except OSError:
            pass
        finally:
            conn.close()

    def _http(self, conn: socket.socket) -> tuple[str, int]:
        buf = b""
        while b"\r\n\r\n" not in buf:
            b = conn.recv(1 << 16)
            if not b:
                break
            buf += b
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if " " in lines[0] else "?"
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
        }
        if headers.get("expect", "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        want = int(headers.get("content-length", "0"))
        while len(body) < want:
            b = conn.recv(1 << 16)
            if not b:
                break
            body += b
        time.sleep(self.delay)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        return path, len(head) + 4 + len(body)


class UdpSink:
    """A loopback UDP socket (127.0.0.1) in a thread that counts the bytes it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.received = 0
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                self.received += len(self.sock.recv(1 << 16))
            except OSError:
                return

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class RecordedFeed:
    """Recorded native events fed again through the service's NativeFeed protocol.

    A detection whose ``bytes_of`` is not None is owned by this feed, and its
    socket is final with that many bytes sent.
    """

    def __init__(self, events: list[Event], bytes_of: Callable[[Detection], Optional[int]]) -> None:
        self.events = list(events)
        self.bytes_of = bytes_of

    def set_wake(self, wake: Callable[[], None]) -> None:
        pass

    def drain(self, now: Optional[float] = None, *, everything: bool = False) -> list[Event]:
        out, self.events = self.events, []
        return out

    def next_due(self) -> Optional[float]:
        return None

    def owns(self, d: Detection) -> bool:
        return self.bytes_of(d) is not None

    def facts(self, d: Detection) -> Optional[tuple[SocketFacts, bool]]:
        sent = self.bytes_of(d)
        return None if sent is None else (SocketFacts(bytes_sent=sent, protocol="tcp"), True)

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
