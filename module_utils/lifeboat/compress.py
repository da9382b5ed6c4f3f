"""Compression codecs for the dump stream, all readable by stock tools.

gzip uses zlib-ng (python-zlib-ng) with compression threads when present:
at level 4 about as small as `gzip -9` and several times faster (see
bench/), and its output is ordinary gzip (`gunzip -c`). ISA-L was measured
too: faster still, but 4% larger than gzip -9 on realistic rows. Without
zlib-ng (an ad-hoc run on a host lifeboat was never installed on) the
standard library's zlib is used instead: slower, same format and levels.
zstd (python-zstandard) is an option; `zstd -dc` reads it.

Unless a level is configured, gzip's level is chosen per backup from the
first 4 MiB of the stream (`choose_gzip_level`): the lowest (fastest)
level whose output there is within 1% of gzip -9's. Typical rows get level
3 or 4; repetitive JSON and text, where level 4 falls 5% behind gzip -9,
get level 7 (bench/bench_backup.py measures both kinds).
"""

from __future__ import annotations

import gzip
import io
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
        try:
            from zlib_ng import gzip_ng_threaded
        except ImportError:  # pragma: no cover - depends on the host
            return gzip.GzipFile(fileobj=target, mode="wb", compresslevel=level, mtime=0)
        return gzip_ng_threaded.open(target, "wb", compresslevel=level, threads=max(1, threads))
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
            from zlib_ng import gzip_ng
        except ImportError:  # pragma: no cover
            return gzip.GzipFile(fileobj=source, mode="rb")
        return gzip_ng.GzipNGFile(fileobj=source, mode="rb")
    if compression == "zstd":
        return _zstandard().ZstdDecompressor().stream_reader(source, read_across_frames=True)
    return source


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
