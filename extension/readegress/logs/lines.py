"""Results logs → numbered batches of lines: the ingestion front of the columnar engines.

Where the data comes from: the same inputs as :mod:`readegress.logs.results`
(plain or gzip files, whatever their name, ``-`` for stdin), plus directories,
walked recursively in name order. A batch is a few MiB of whole lines as one
text, with the number of its first line (lines are numbered from 1 per file);
the engine cuts it into lines and parses them (:mod:`readegress.fleet`), so
Python never loops over lines.

Quirks:

- A line that is not UTF-8 cannot be handed to the engines as text: it is
  reported here (``FILE:LINE: not UTF-8``) and replaced by an empty string,
  which the engines skip as blank. Only a batch that fails to decode as a whole
  is checked line by line.
- A file that cannot be opened is reported at line 0; a gzip member cut short
  (or any read error) at the line where it broke, and what was decompressed
  before the break is kept, as the results reader does.
- A last line without its newline is a line.
- Progress (bytes read of the total, lines, rate, ETA) goes to stderr when
  ``progress`` is set, at most twice a second; callers set it when stderr is
  a terminal.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Optional, TextIO, Union

from readegress.logs.results import BadLine, _open

BATCH_BYTES = 8 << 20


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files of the inputs: a directory gives its files (recursively, in name order)."""
    out: list[str] = []
    for p in inputs:
        if p != "-" and os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out.extend(os.path.join(root, f) for f in sorted(files))
        else:
            out.append(p)
    return out


@dataclass
class LineBatch:
    """Lines ``first_line ..`` of file number ``file_index``: ``data``, joined by newlines.

    ``data`` is valid UTF-8 (bytes, or a view into the bytes read, so that a
    batch is handed on without a copy); ``count`` lines; ``text`` and ``lines``
    decode it (the engines split it in C, on their side).
    """

    file_index: int
    first_line: int
    data: Union[bytes, memoryview]
    count: int

    @property
    def text(self) -> str:
        return codecs.utf_8_decode(self.data)[0]

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")


@dataclass
class LineStats:
    files: int = 0
    unreadable_files: int = 0
    lines: int = 0
    bytes: int = 0
    not_utf8: int = 0


class Progress:
    """``bytes read / total, lines, MB/s, ETA`` on one rewritten stderr line."""

    def __init__(self, total_bytes: int, out: TextIO) -> None:
        self.total = total_bytes
        self.out = out
        self.started = time.monotonic()
        self.shown = 0.0

    def update(self, done_bytes: int, lines: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.shown < 0.5:
            return
        self.shown = now
        took = max(now - self.started, 1e-6)
        rate = done_bytes / took
        eta = ""
        if self.total and rate > 0 and done_bytes < self.total:
            eta = f", ETA {(self.total - done_bytes) / rate:.0f} s"
        total = f" / {self.total / 1e6:.0f} MB" if self.total else " MB"
        self.out.write(
            f"\rreadegress: {done_bytes / 1e6:.0f}{total}, {lines} lines, "
            f"{rate / 1e6:.1f} MB/s{eta}   "
        )
        if final:
            self.out.write("\n")
        self.out.flush()


def line_batches(
    paths: list[str],
    on_bad: Callable[[BadLine], None],
    stats: LineStats,
    *,
    batch_bytes: int = BATCH_BYTES,
    progress: Optional[Progress] = None,
) -> Iterator[LineBatch]:
    """Numbered batches of the files' lines (file number = index in ``paths``)."""
    for index, path in enumerate(paths):
        file = "<stdin>" if path == "-" else path
        try:
            stream = _open(path)
        except OSError as err:
            stats.unreadable_files += 1
            on_bad(BadLine(file, 0, f"cannot open: {err.strerror or err}"))
            continue
        stats.files += 1
        lineno = 0
        carry = b""
        # read1: a gzip stream cut short raises at the break, and read() would
        # drop what it had decompressed of that call.
        read = getattr(stream, "read1", stream.read)
        try:
            while True:
                broke: Optional[str] = None
                try:
                    chunk = read(batch_bytes)
                except (OSError, EOFError, zlib.error) as err:
                    chunk = b""
                    broke = f"read failed: {err}"
                # Whole lines only, without copying the chunk: the line the last
                # chunk left unfinished (joined), then a view of the chunk's other
                # whole lines; what follows its last newline waits for the next.
                pieces: list[tuple[Union[bytes, memoryview], int]] = []
                ascii_chunk = True
                if chunk:
                    stats.bytes += len(chunk)
                    last = chunk.rfind(b"\n")
                    if last < 0:
                        carry += chunk
                    else:
                        first = chunk.find(b"\n")
                        pieces.append((carry + chunk[:first], 1))
                        if last > first:
                            body = memoryview(chunk)[first + 1 : last]
                            pieces.append((body, chunk.count(b"\n", first + 1, last) + 1))
                            ascii_chunk = chunk.isascii()
                        carry = chunk[last + 1 :]
                elif carry:  # the last line, without its newline (or cut by a break)
                    pieces.append((carry, 1))
                    carry = b""
                for data, n in pieces:
                    if (isinstance(data, bytes) and not data.isascii()) or not ascii_chunk:
                        data = _valid(data, file, lineno, on_bad, stats)
                    yield LineBatch(index, lineno + 1, data, n)
                    lineno += n
                    stats.lines += n
                if pieces and progress is not None:
                    progress.update(stats.bytes, stats.lines)
                if broke is not None:
                    on_bad(BadLine(file, lineno + 1, broke))
                    break
                if not chunk and not pieces:
                    break
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
    if progress is not None:
        progress.update(stats.bytes, stats.lines, final=True)


def _valid(
    data: Union[bytes, memoryview],
    file: str,
    lineno: int,
    on_bad: Callable[[BadLine], None],
    stats: LineStats,
) -> Union[bytes, memoryview]:
    """The lines as valid UTF-8: a line that is not UTF-8 is reported and becomes empty."""
    try:
        # One check of the whole batch: the common case costs one pass in C.
        codecs.utf_8_decode(data, "strict", True)
        return data
    except UnicodeDecodeError:
        pass
    out: list[bytes] = []
    for i, line in enumerate(bytes(data).split(b"\n")):
        try:
            line.decode("utf-8")
            out.append(line)
        except UnicodeDecodeError as e:
            stats.not_utf8 += 1
            on_bad(BadLine(file, lineno + 1 + i, f"not UTF-8 (byte {e.start})"))
            out.append(b"")
    return b"\n".join(out)


def total_size(paths: list[str]) -> int:
    size = 0
    for p in paths:
        if p == "-":
            continue
        with contextlib.suppress(OSError):
            size += os.path.getsize(p)
    return size
