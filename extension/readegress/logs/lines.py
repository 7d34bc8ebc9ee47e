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

from readegress.logs.results import BadLine, _open, display_name
from readegress.speedups import native as _native

BATCH_BYTES = 8 << 20
#: A longer line is reported and skipped (its bytes are not kept while it is read): a
#: results-log line is one row or one run's rows, megabytes at most, and a line of
#: hundreds of MB would take the engine past its memory limit.
MAX_LINE_BYTES = 32 << 20


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
    #: One line longer than ``big_line_bytes`` (the engine parses those apart).
    big: bool = False

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
    max_line_bytes: int = MAX_LINE_BYTES,
    big_line_bytes: Optional[int] = None,
) -> Iterator[LineBatch]:
    """Numbered batches of the files' lines (file number = index in ``paths``).

    With ``big_line_bytes``, a line longer than that comes as a batch of its
    own, marked ``big`` (a chunk is split line by line only where a run of
    half that many bytes has no newline, so the common chunk costs a few
    ``find`` calls).
    """
    for index, path in enumerate(paths):
        file = display_name(path)
        try:
            stream = _open(path)
        except OSError as err:
            stats.unreadable_files += 1
            on_bad(BadLine(file, 0, f"cannot open: {err.strerror or err}"))
            continue
        stats.files += 1
        lineno = 0
        carry = b""
        pending: list[bytes] = []
        pending_bytes = 0
        too_long = False
        big = big_line_bytes
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
                pieces: list[tuple[Union[bytes, memoryview], int, bool]] = []
                ascii_chunk = True
                if chunk:
                    stats.bytes += len(chunk)
                    last = chunk.rfind(b"\n")
                    if last < 0:
                        # A line longer than a chunk: its parts are joined once,
                        # at its end (joining at every chunk was quadratic).
                        pending.append(chunk)
                        pending_bytes += len(chunk)
                        if pending_bytes > max_line_bytes:
                            pending.clear()
                            too_long = True
                    else:
                        first = chunk.find(b"\n")
                        head = b"".join([carry, *pending, chunk[:first]])
                        pieces.append((head, 1, big is not None and len(head) > big))
                        pending.clear()
                        pending_bytes = 0
                        if last > first:
                            body = memoryview(chunk)[first + 1 : last]
                            if big is not None and _has_long_run(
                                chunk, first + 1, last, max(1, big // 2)
                            ):
                                pieces.extend(_split_long(bytes(body), big))
                            else:
                                n = _count_newlines(chunk, first + 1, last) + 1
                                pieces.append((body, n, False))
                            ascii_chunk = chunk.isascii()
                        carry = chunk[last + 1 :]
                elif carry or pending or too_long:  # the last line, without its newline
                    tail = b"".join([carry, *pending])  # (or cut by a break)
                    pieces.append((tail, 1, big is not None and len(tail) > big))
                    carry = b""
                    pending.clear()
                if too_long and pieces:  # the first piece is the end of that line
                    on_bad(BadLine(file, lineno + 1, f"line over {max_line_bytes} bytes"))
                    pieces[0] = (b"", 1, False)
                    too_long = False
                for data, n, alone in pieces:
                    if (isinstance(data, bytes) and not data.isascii()) or not ascii_chunk:
                        data = _valid(data, file, lineno, on_bad, stats)
                        alone = alone and len(data) > 0  # a long line that was not UTF-8
                    yield LineBatch(index, lineno + 1, data, n, alone)
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


def _count_newlines(data: bytes, start: int, end: int) -> int:
    """``data.count(b"\\n", start, end)``; compiled (memchr, without the GIL) where built."""
    if _native is not None:
        return int(_native.count_newlines(data, start, end))
    return data.count(b"\n", start, end)


def _has_long_run(data: bytes, start: int, end: int, step: int) -> bool:
    """Is there a run of ``step`` bytes without a newline in ``data[start:end]``?

    Every line of more than ``2 * step`` bytes holds one; a few ``find`` calls a chunk.
    """
    return any(data.find(b"\n", q, q + step) < 0 for q in range(start, end - step + 1, step))


def _split_long(data: bytes, big: int) -> list[tuple[Union[bytes, memoryview], int, bool]]:
    """``data``'s lines in pieces: runs of lines up to ``big`` bytes, and each longer one."""
    out: list[tuple[Union[bytes, memoryview], int, bool]] = []
    run: list[bytes] = []
    for line in data.split(b"\n"):
        if len(line) > big:
            if run:
                out.append((b"\n".join(run), len(run), False))
                run = []
            out.append((line, 1, True))
        else:
            run.append(line)
    if run:
        out.append((b"\n".join(run), len(run), False))
    return out


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
