"""The streaming dump pipeline: pg_dump stdout -> compressor [-> age] -> sha256 -> sink.

Memory stays constant (one chunk in flight per stage) and no temporary copy
of the dump is made. While the plain SQL streams past we also check its
header and completion trailer and count the rows of every COPY block, so the
manifest carries exact per-table row counts taken from the dump's own
snapshot, which a restore can be verified against.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import BinaryIO, Callable

from . import compress, encrypt, pg, pglocks, sqlguard
from .conninfo import ConnInfo, client_env, redact
from .errors import DiskFull, DumpFailed, LifeboatError, StorageError

log = logging.getLogger("lifeboat")

CHUNK = 1 << 20
PLAIN_HEADER = b"-- PostgreSQL database dump"
PLAIN_TRAILER = b"-- PostgreSQL database dump complete"
CUSTOM_MAGIC = b"PGDMP"
_COPY_HEADER = re.compile(rb"^COPY (.+?) (?:\(.*\) )?FROM stdin;$")
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

Progress = Callable[[int, int], None]  # (bytes read from pg_dump, bytes written)


class HashingWriter:
    """Counts and hashes what passes through to `target`."""

    def __init__(self, target: BinaryIO):
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)

    def flush(self) -> None:
        self.target.flush()


class HashingReader:
    """Hashes and counts what a reader (a decompressor) pulls from `source`."""

    def __init__(self, source: BinaryIO):
        self.source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class StreamWatch:
    """Watches an uncompressed dump stream go by: its first and last bytes
    and, for plain SQL, the rows of every COPY block. The same checks run when
    a dump is written, verified and restored."""

    def __init__(
        self, fmt: str = "plain", guard: bool = False, marks: bool = False, cuts: bool = False
    ):
        self.fmt = fmt
        self.head = b""
        self.tail = b""
        self.size = 0
        self.counter = None
        if fmt == "plain":
            # The guard counts rows too: it lexes the stream as psql will run it.
            self.counter = sqlguard.PsqlGuard(marks) if guard else CopyCounter(cuts)

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(self.head) < 4096:
            self.head += chunk[: 4096 - len(self.head)]
        self.tail = (self.tail + chunk)[-4096:] if len(chunk) < 4096 else chunk[-4096:]
        if self.counter:
            self.counter.feed(chunk)

    def finish(self) -> None:
        """End of stream: the guard checks what it held back for lookahead."""
        if isinstance(self.counter, sqlguard.PsqlGuard):
            self.counter.finish()

    @property
    def rows(self) -> dict[str, int] | None:
        return dict(self.counter.rows) if self.counter else None

    def fault(self) -> str | None:
        """What is wrong with the stream seen so far as a complete dump, or None."""
        if self.size == 0:
            return "it is empty"
        if self.fmt == "plain":
            if PLAIN_HEADER not in self.head[:1024]:
                return "it lacks the 'PostgreSQL database dump' header"
            if PLAIN_TRAILER not in self.tail[-512:] or not self.counter.complete:
                return "it is truncated: no 'dump complete' trailer"
        elif self.fmt == "custom" and not self.head.startswith(CUSTOM_MAGIC):
            return "it is not a pg_dump custom-format archive"
        return None


class CopyCounter:
    """Counts data rows per table in a plain-format dump, chunk by chunk.

    Tables are keyed as pg_dump names them (`schema.table`, quoted where
    needed). Data rows never start with `\\.` (COPY escapes backslashes), so
    the terminator line is unambiguous.
    """

    def __init__(self, cuts: bool = False) -> None:
        self.rows: dict[str, int] = {}
        # With cuts=True, (stream offset, kind) where a block's rows begin
        # (compress.ROWS) and where its terminator line begins (compress.SQL):
        # where the backup's gzip members are cut.
        self.cuts: deque | None = deque() if cuts else None
        self._table: str | None = None
        self._count = 0
        self._carry = b""  # start of an unfinished line from the previous chunk
        self._carry_at = 0  # its stream offset
        self._at = 0  # stream offset of the chunk being scanned

    def feed(self, data: bytes) -> None:
        start = 0
        if self._carry:
            nl = data.find(b"\n")
            if nl < 0:
                self._carry = self._keep(self._carry + data)
                self._at += len(data)
                return
            self._line(self._carry + data[: nl + 1], self._carry_at, self._at + nl + 1)
            self._carry = b""
            start = nl + 1
        self._scan(data, start)
        self._at += len(data)

    def _cut(self, offset: int, kind: bytes) -> None:
        if self.cuts is not None:
            self.cuts.append((offset, kind))

    def _keep(self, partial: bytes) -> bytes:
        # Inside COPY only the first bytes matter (is it the terminator?);
        # outside, only a line that may be a COPY header is kept whole.
        if self._table is not None:
            return partial[:4]
        return partial if b"COPY "[: len(partial)] == partial[:5] else b"--"

    def _line(self, line: bytes, start: int, end: int) -> None:
        if self._table is not None:
            if line == b"\\.\n":
                self._cut(start, compress.SQL)
                self._end()
            else:
                self._count += 1
        else:
            self._header(line.rstrip(b"\n"), end)

    def _header(self, line: bytes, end: int) -> None:
        match = _COPY_HEADER.match(line)
        if match:
            self._table = match.group(1).decode("utf-8", "replace")
            self._count = 0
            self._cut(end, compress.ROWS)

    def _end(self) -> None:
        self.rows[self._table] = self.rows.get(self._table, 0) + self._count
        self._table = None

    def _scan(self, data: bytes, pos: int) -> None:
        end = len(data)
        while pos < end:
            if self._table is not None:
                idx = data.find(b"\\.\n", pos)
                while idx > pos and data[idx - 1] != 0x0A:
                    idx = data.find(b"\\.\n", idx + 1)
                if idx < 0:
                    last = data.rfind(b"\n", pos)
                    if last >= 0:
                        self._count += data.count(b"\n", pos, last + 1)
                        pos = last + 1
                    if pos < end:
                        self._carry, self._carry_at = self._keep(data[pos:]), self._at + pos
                    return
                self._count += data.count(b"\n", pos, idx)
                self._cut(self._at + idx, compress.SQL)
                self._end()
                pos = idx + 3
            else:
                if data.startswith(b"COPY ", pos):
                    idx = pos
                else:
                    idx = data.find(b"\nCOPY ", pos)
                    idx = idx + 1 if idx >= 0 else -1
                if idx < 0:
                    last = data.rfind(b"\n", pos)
                    pos = last + 1 if last >= 0 else pos
                    if pos < end:
                        self._carry, self._carry_at = self._keep(data[pos:]), self._at + pos
                    return
                nl = data.find(b"\n", idx)
                if nl < 0:
                    self._carry, self._carry_at = self._keep(data[idx:]), self._at + idx
                    return
                self._header(data[idx:nl], self._at + nl + 1)
                pos = nl + 1

    @property
    def complete(self) -> bool:
        return self._table is None


@dataclass
class DumpResult:
    """What the pipeline produced; `rows` is exact for plain format, else None."""

    size: int = 0
    sha256: str = ""
    uncompressed_size: int = 0
    rows: dict[str, int] | None = None
    level: int | None = None  # the compression level used (chosen from the stream if unset)
    pg_dump_version: str = ""
    duration: float = 0.0
    files: list[str] = field(default_factory=list)


@dataclass
class DumpOptions:
    fmt: str = "plain"
    compression: str = "gzip"
    level: int | None = None
    jobs: int = 1
    threads: int = 2
    pg_bin_dir: str | None = None
    extra_args: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()  # age recipients: encrypt after compressing (or the tar)
    lock_timeout: int | None = None  # seconds pg_dump waits for each table lock (pglocks.py)


def pg_dump_argv(pg_dump: str, conn: ConnInfo, opts: DumpOptions, out_dir: str | None) -> list[str]:
    """pg_dump arguments: the connection string without password, never a shell string."""
    argv = [pg_dump, "--no-password", f"--dbname={conn.conninfo()}", f"--format={opts.fmt}"]
    if opts.fmt == "plain":
        pass  # compression is ours, streamed
    elif opts.compression == "none":
        argv.append("--compress=0")
    elif opts.level is not None:
        argv.append(f"--compress={opts.level}")
    if opts.fmt == "directory":
        argv += [f"--jobs={max(1, opts.jobs)}", f"--file={out_dir}"]
    if opts.lock_timeout:  # never wait forever behind another session's lock
        argv.append(f"--lock-wait-timeout={int(opts.lock_timeout * 1000)}")
    argv += list(opts.extra_args)
    return argv


def stream_dump(
    conn: ConnInfo, opts: DumpOptions, sink: BinaryIO, progress: Progress | None = None
) -> DumpResult:
    """Dump `conn` as plain or custom format into `sink`; check the output."""
    pg_dump = pg.find_tool("pg_dump", opts.pg_bin_dir)
    result = DumpResult(pg_dump_version=pg.tool_version(pg_dump))
    started = time.monotonic()
    hasher = HashingWriter(sink)
    codec = opts.compression if opts.fmt == "plain" else "none"
    watch = StreamWatch(opts.fmt, cuts=codec == "gzip")
    cuts = watch.counter.cuts if watch.counter else None
    with client_env(conn) as child, tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(
            pg_dump_argv(pg_dump, conn, opts, None),
            stdout=subprocess.PIPE,
            stderr=errfile,
            stdin=subprocess.DEVNULL,
            **child,
        )
        encryptor = None
        try:
            _grow_pipe(proc.stdout)
            if opts.recipients:
                # The hash, the file and the S3 copy only ever see ciphertext.
                encryptor = encrypt.Encryptor(hasher, opts.recipients)
            # gzip without a configured level: held back until the first SAMPLE
            # bytes have chosen it (compress.choose_gzip_level).
            sample: list[bytes] | None = [] if codec == "gzip" and opts.level is None else None
            writer = None

            def start(level: int):
                result.level = level
                writer = compress.compressor(encryptor or hasher, codec, level, opts.threads)
                return _Cutter(writer, cuts)

            if sample is None:
                writer = start(compress.check(codec, opts.level) if codec != "none" else 0)
            last_report = started
            while True:
                chunk = proc.stdout.read(CHUNK)
                if not chunk:
                    break
                result.uncompressed_size += len(chunk)
                watch.feed(chunk)
                if writer is None:
                    sample.append(chunk)
                    if result.uncompressed_size < compress.SAMPLE:
                        continue
                    chunk = b"".join(sample)
                    writer = start(compress.choose_gzip_level(chunk))
                writer.write(chunk)
                now = time.monotonic()
                if progress and now - last_report >= 0.5:
                    progress(result.uncompressed_size, hasher.size)
                    last_report = now
            if writer is None:  # a dump smaller than the sample
                writer = start(compress.choose_gzip_level(b"".join(sample)))
                writer.write(b"".join(sample))
            writer.close()
            if encryptor:
                encryptor.close()
                encryptor = None
            returncode = proc.wait()
        except OSError as exc:
            _kill(proc)
            if encryptor:
                encryptor.abort()
            raise _write_error(exc) from None
        except BaseException:
            _kill(proc)
            if encryptor:
                encryptor.abort()
            raise
        finally:
            proc.stdout.close()
        errfile.seek(0)
        stderr = redact(errfile.read().decode("utf-8", "replace"), conn.password)
    hasher.flush()
    if returncode != 0:
        raise _dump_error(returncode, stderr, conn, opts.lock_timeout)
    if stderr.strip():
        log.warning("pg_dump said: %s", stderr.strip())
    fault = watch.fault()
    if fault:
        raise DumpFailed(
            f"Dump of {conn.where()} is not usable: {fault}.",
            "Nothing was kept. Run the backup again; if it repeats, run pg_dump by "
            "hand and check the server log.",
        )
    if progress:
        progress(result.uncompressed_size, hasher.size)
    result.size = hasher.size
    result.sha256 = hasher.sha256.hexdigest()
    result.rows = watch.rows
    result.duration = time.monotonic() - started
    return result


class _Cutter:
    """Writes the dump to `writer`, ending a gzip member at each cut the
    CopyCounter found (compress.GzipMembers). A cut where a `\\.` line starts
    is found only once its newline is read, so an unfinished last line of up
    to 2 bytes is held back until the next chunk (a longer one is no `\\.`)."""

    def __init__(self, writer, cuts: deque | None):
        self.writer = writer
        self.cuts = cuts
        self.at = 0  # stream offset of what is written next
        self.held = b""

    def write(self, data: bytes, final: bool = False) -> None:
        data = self.held + data if self.held else data
        keep = len(data) - data.rfind(b"\n") - 1
        keep = 0 if final or keep > 2 else keep
        self.held = data[len(data) - keep :] if keep else b""
        data = data[: len(data) - keep]
        cuts, at = self.cuts, self.at
        self.at += len(data)
        while cuts and cuts[0][0] <= self.at:
            offset, kind = cuts.popleft()
            self.writer.write(data[: offset - at])
            data, at = data[offset - at :], offset
            self.writer.cut(kind)
        self.writer.write(data)

    def close(self) -> None:
        self.write(b"", final=True)
        self.writer.close()


def directory_dump(
    conn: ConnInfo, opts: DumpOptions, out_dir: str, digest: bool = True
) -> DumpResult:
    """Dump in directory format (parallel with --jobs) into `out_dir` (must not exist).

    `digest=False`: the caller reads the files anyway (dirtar.write hashes them then).
    """
    pg_dump = pg.find_tool("pg_dump", opts.pg_bin_dir)
    result = DumpResult(pg_dump_version=pg.tool_version(pg_dump))
    started = time.monotonic()
    if opts.jobs > 1:  # pg_dump -j N holds N + 1 connections: fewer if the limits say so
        probe = pg.connect_some(conn, opts.jobs + 1, "pg_dump")
        opts = replace(opts, jobs=max(1, len(probe) - 1))
        for db in probe:
            db.close()
    with client_env(conn) as child:
        proc = subprocess.run(
            pg_dump_argv(pg_dump, conn, opts, out_dir),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
            **child,
        )
    stderr = redact(proc.stderr.decode("utf-8", "replace"), conn.password)
    if proc.returncode != 0:
        raise _dump_error(proc.returncode, stderr, conn, opts.lock_timeout)
    if digest:
        result.sha256, result.size, result.files = tree_digest(out_dir)
    result.duration = time.monotonic() - started
    return result


def tree_digest(root: str) -> tuple[str, int, list[str]]:
    """sha256 over a directory dump: each file's name and content, in name order."""
    digest = hashlib.sha256()
    total = 0
    names = sorted(os.listdir(root))
    for name in names:
        file_hash = hashlib.sha256()
        with open(os.path.join(root, name), "rb") as fh:
            while block := fh.read(CHUNK):
                file_hash.update(block)
                total += len(block)
        digest.update(f"{name}\0{file_hash.hexdigest()}\n".encode())
    return digest.hexdigest(), total, names


_DISK_HINT = (
    "Free space (`df -h`), lower lifeboat_retention, or point lifeboat_backup_dir at a larger disk."
)


def _write_error(exc: OSError) -> LifeboatError:
    if exc.errno == 28:  # ENOSPC
        return DiskFull("Failed to write backup: disk full (No space left on device).", _DISK_HINT)
    return StorageError(
        f"Failed to write backup: {exc.strerror or exc}.",
        "Check that the backup directory is writable by this user.",
    )


def _dump_error(
    returncode: int, stderr: str, conn: ConnInfo, lock_timeout: int | None = None
) -> LifeboatError:
    text = stderr.strip()
    if lock_timeout and pglocks.is_timeout(text):
        return pglocks.dump_timeout(conn, text, lock_timeout)
    if returncode < 0:
        return DumpFailed(
            f"pg_dump of {conn.where()} was killed by signal {-returncode}.",
            "Nothing was kept. Check for the OOM killer (`dmesg`) or an operator "
            "stopping it, then run the backup again.",
        )
    if "No space left on device" in text:
        return DiskFull("Failed to write backup: disk full (No space left on device).", _DISK_HINT)
    return pg.explain(text, conn, "dump") or DumpFailed(
        f"pg_dump of {conn.where()} failed (exit {returncode}): {text}",
        "Nothing was kept. Check the server log, then run the backup again.",
    )


def _grow_pipe(pipe) -> None:
    # Fewer, larger reads: the default 64 KiB pipe costs a syscall per 64 KiB.
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, CHUNK)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
