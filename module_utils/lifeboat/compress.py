"""Compression codecs for the dump stream, all readable by stock tools.

gzip uses zlib-ng (python-zlib-ng) with compression threads when present:
at level 4 about as small as `gzip -9` and several times faster (see
bench/), and its output is ordinary gzip (`gunzip -c`). ISA-L (python-isal)
compresses faster still, but 4% larger than gzip -9 on realistic rows; it
inflates 1.5x as fast as zlib-ng, so every read of a backup uses it. Without
them (an ad-hoc run on a host lifeboat was never installed on) the
standard library's zlib is used instead: slower, same format and levels.
zstd (python-zstandard) is an option; `zstd -dc` reads it.

gzip is written as independent members (GzipMembers) cut where COPY rows
begin and end, each at most MEMBER bytes uncompressed, and each naming its
kind and compressed size in its header (an FEXTRA subfield, as BGZF does).
`gunzip -c` reads them as one stream; a parallel restore reads the SQL
members itself and hands each member of rows, still compressed, to the
connection loading that table (`members`, restore/parallel.py). Members are
compressed on `threads` threads, as pigz does.

Unless a level is configured, gzip's level is chosen per backup from the
first 4 MiB of the stream (`choose_gzip_level`): the lowest (fastest)
level whose output there is within 1% of gzip -9's. Typical rows get level
3 or 4; repetitive JSON and text, where level 4 falls 5% behind gzip -9,
get level 7 (bench/bench_backup.py measures both kinds).
"""

from __future__ import annotations

import gzip
import io
import struct
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from .errors import ConfigError

COMPRESSIONS = ("gzip", "zstd", "none")
# Defaults and ranges per codec; gzip levels mean what they mean to gzip.
DEFAULT_LEVELS = {"gzip": 4, "zstd": 3, "none": 0}
LEVEL_RANGES = {"gzip": (1, 9), "zstd": (1, 19), "none": (0, 0)}
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


SAMPLE = 4 << 20  # bytes of the stream the gzip level is chosen from
_CANDIDATES = (2, 3, 4, 5, 6, 7, 9)
_WITHIN = 1.01  # of gzip -9 on the sample: leaves room for the rest of the stream


def choose_gzip_level(sample: bytes) -> int:
    """The lowest zlib-ng level whose output for `sample` is within 1% of gzip -9's
    (the standard library's zlib at level 9 is gzip -9's deflate)."""
    if len(sample) < 64 << 10:
        return DEFAULT_LEVELS["gzip"]  # too little to tell: the default
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # pragma: no cover - the standard library's zlib is used then
        return DEFAULT_LEVELS["gzip"]
    import zlib

    def size(codec, level: int) -> int:
        packer = codec.compressobj(level, codec.DEFLATED, 31)
        return len(packer.compress(sample)) + len(packer.flush())

    goal = size(zlib, 9) * _WITHIN
    for level in _CANDIDATES:
        if size(zlib_ng, level) <= goal:
            return level
    return 9


def check(compression: str, level: int | None) -> int:
    """Validate a codec and level; return the level to use."""
    if compression not in COMPRESSIONS:
        raise ConfigError(
            f"Unknown compression {compression!r}.", f"Use one of: {', '.join(COMPRESSIONS)}."
        )
    if level is None:
        return DEFAULT_LEVELS[compression]
    low, high = LEVEL_RANGES[compression]
    if not low <= level <= high:
        raise ConfigError(
            f"Compression level {level} is out of range for {compression}.", f"Use {low} to {high}."
        )
    return level


class _NoClose(io.RawIOBase):
    """Passes writes through but keeps the codec from closing our sink."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._raw.write(data)

    def close(self) -> None:  # the sink is closed by its owner
        pass


def compressor(sink: BinaryIO, compression: str, level: int, threads: int = 1) -> BinaryIO:
    """A writable stream that compresses into `sink`; close() finishes the stream."""
    target = _NoClose(sink)
    if compression == "gzip":
        return GzipMembers(sink, level, threads)
    if compression == "zstd":
        zstandard = _zstandard()
        return zstandard.ZstdCompressor(
            level=level, threads=max(0, threads - 1), write_checksum=True
        ).stream_writer(target, closefd=False)
    return target


def decompressor(source: BinaryIO, compression: str) -> BinaryIO:
    """A readable stream of the uncompressed bytes of `source`."""
    if compression == "gzip":
        try:
            from isal import igzip  # ISA-L: the fastest inflate (see _unzlib)
        except ImportError:  # pragma: no cover
            return gzip.GzipFile(fileobj=source, mode="rb")
        return igzip.IGzipFile(fileobj=source, mode="rb")
    if compression == "zstd":
        return _zstandard().ZstdDecompressor().stream_reader(source, read_across_frames=True)
    return source


# ------------------------------------------------------------ gzip members

MEMBER = 4 << 20  # uncompressed bytes per member at most
MEMBER_MAX = 2 * MEMBER  # compressed: what a reader accepts (deflate adds < 1% at worst)
# Member kinds: anything, or only COPY rows (a table's rows may span several members;
# together they are whole lines, without the \. terminator).
SQL, ROWS = b"S", b"D"
# ID1 ID2 CM FLG(FEXTRA) MTIME XFL OS | XLEN | SI1 SI2 LEN | kind, member size
_HEADER = struct.Struct("<4BIBBH2sHcI")
_OURS = (0x1F, 0x8B, 8, 4, 0, 0, 255, 9, b"LB", 5)
_PREFIX = _HEADER.pack(*_OURS, SQL, 0)[:16]  # what every member of ours starts with


def _zlib():
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # pragma: no cover - depends on the host
        import zlib as zlib_ng
    return zlib_ng


def _unzlib():
    """The fastest inflate at hand: ISA-L's (python-isal) inflates these rows 1.6x
    as fast as zlib-ng's (bench/bench_restore.py), and checks the same CRC."""
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - depends on the host
        return _zlib()
    return isal_zlib


def _member(data: bytes, level: int, kind: bytes) -> bytes:
    zlib = _zlib()
    packer = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = packer.compress(data) + packer.flush()
    size = _HEADER.size + len(body) + 8
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return _HEADER.pack(*_OURS, kind, size) + body + trailer


class GzipMembers(io.RawIOBase):
    """A writable gzip stream of independent members (see the module doc).
    `cut(kind)` ends the current member; what follows is of `kind`."""

    def __init__(self, sink: BinaryIO, level: int, threads: int = 1):
        self._sink = sink
        self._level = level
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="gzip")
        self._ahead = max(1, threads) + 1  # members compressing at once, in order
        self._pending: deque = deque()
        self._parts: list[bytes] = []
        self._size = 0
        self._kind = SQL
        self._members = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = data if isinstance(data, bytes) else bytes(data)  # ours until compressed
        size = len(data)
        while self._size + len(data) >= MEMBER:
            room = MEMBER - self._size
            self._parts.append(data[:room])
            self._size = MEMBER
            self._emit()
            data = data[room:]
        if data:  # held as it is: no copy until the member is joined
            self._parts.append(data)
            self._size += len(data)
        return size

    def cut(self, kind: bytes) -> None:
        self._emit()
        self._kind = kind

    def _emit(self) -> None:
        if not self._size:
            return
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts, self._size = [], 0
        self._members += 1
        self._pending.append(self._pool.submit(_member, data, self._level, self._kind))
        while len(self._pending) > self._ahead:
            self._sink.write(self._pending.popleft().result())

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._emit()
            if not self._members:  # an empty stream is still one (empty) gzip member
                self._members = 1
                self._pending.append(self._pool.submit(_member, b"", self._level, SQL))
            while self._pending:
                self._sink.write(self._pending.popleft().result())
        finally:
            self._pool.shutdown(cancel_futures=True)
            super().close()


class Corrupt(ValueError):
    """gzip data that does not inflate (corrupt, truncated or changed)."""


@dataclass
class Packed:
    """One whole gzip member holding only COPY rows, not yet inflated."""

    data: bytes
    size: int  # uncompressed, as its trailer says: a weight for scheduling, not trusted


class Inflater:
    """gzip members fed in pieces of any size, inflated in pieces of at most
    `limit` bytes (so a member that inflates to gigabytes never sits in memory)."""

    def __init__(self, limit: int = 1 << 20):
        self.limit = limit
        self._unpacker = None

    def feed(self, data: bytes) -> Iterator[bytes]:
        zlib = _unzlib()
        while data:
            if self._unpacker is None:
                self._unpacker = zlib.decompressobj(31)
            unpacker = self._unpacker
            try:
                while True:
                    out = unpacker.decompress(data, self.limit)
                    if out:
                        yield out
                    data = unpacker.unconsumed_tail
                    if unpacker.eof or (not data and len(out) < self.limit):
                        break
            except zlib.error as exc:
                raise Corrupt(f"bad gzip data: {exc}") from None
            if unpacker.eof:  # the next member starts here
                data = unpacker.unused_data
                self._unpacker = None

    def finish(self) -> None:
        if self._unpacker is not None:
            raise Corrupt("a gzip member is cut short")


def inflate(member: bytes, limit: int = 1 << 20) -> Iterator[bytes]:
    """gzip data held whole, inflated in pieces of at most `limit` bytes."""
    inflater = Inflater(limit)
    yield from inflater.feed(member)
    inflater.finish()


def members(raw: BinaryIO, chunk: int = 1 << 20) -> Iterator[bytes | Packed]:
    """The gzip stream `raw`, inflated, except members of COPY rows: those come
    as Packed. A member lifeboat did not write (an older backup, a gzip made by
    hand) is inflated with everything after it."""
    while True:
        head = _read(raw, _HEADER.size)  # a pipe (age -d) may return less per read
        if not head:
            return
        if len(head) < _HEADER.size and _PREFIX.startswith(head[: len(_PREFIX)]):
            raise Corrupt("a gzip member is cut short")
        fields = _HEADER.unpack(head) if len(head) == _HEADER.size else None
        if fields is None or fields[:10] != _OURS or fields[10] not in (SQL, ROWS):
            yield from chunks(decompressor(_Joined(head, raw), "gzip"), chunk)
            return
        if not len(head) + 8 <= fields[11] <= MEMBER_MAX:
            raise Corrupt(f"a gzip member header gives a size lifeboat never writes ({fields[11]})")
        body = _read(raw, fields[11] - len(head))
        if len(body) != fields[11] - len(head):
            raise Corrupt("a gzip member is cut short")
        member = head + body
        if fields[10] == ROWS:
            yield Packed(member, int.from_bytes(member[-4:], "little"))
        else:
            yield from inflate(member, chunk)


def _read(raw: BinaryIO, size: int) -> bytes:
    parts = []
    while size > 0:
        data = raw.read(size)
        if not data:
            break
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


def chunks(reader: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    """What `reader` holds, `size` bytes at a time."""
    while data := reader.read(size):
        yield data


class _Joined(io.RawIOBase):
    """`head` (bytes already read), then the rest of `raw`."""

    def __init__(self, head: bytes, raw: BinaryIO):
        self._head = head
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self._head:
            size = min(len(buf), len(self._head))
            buf[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._raw.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def data_errors() -> tuple[type[Exception], ...]:
    """What reading a damaged stream raises: OSError (a bad CRC), EOFError (cut
    short), and each codec's own error type for data that does not decode."""
    import contextlib
    import importlib

    found: list[type[Exception]] = [Corrupt, OSError, EOFError, ValueError]
    for module, name in (
        ("isal.isal_zlib", "error"),
        ("zlib_ng.zlib_ng", "error"),
        ("zlib", "error"),
        ("zstandard", "ZstdError"),
    ):
        with contextlib.suppress(ImportError):  # depends on the host
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


def sniff(head: bytes) -> str:
    """Compression of a file from its first bytes (for files without a manifest)."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def _zstandard():
    try:
        import zstandard
    except ImportError:  # pragma: no cover
        raise ConfigError(
            "zstd compression needs the python zstandard package.",
            "Install it (pip install zstandard) or use compression gzip.",
        ) from None
    return zstandard
