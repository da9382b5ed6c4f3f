"""Step 4, parallel: a plain dump loaded over several connections.

The stream is cut where the guard (sqlguard.PsqlGuard(marks=True)) found
pg_dump's own structure while checking every line: the comment before each
TOC entry, COPY blocks and the allowed \\restrict lines. Only cleared bytes
are ever cut and sent, so the guard's promise holds on every connection.

Entries run in stream order, except that runs of independent work go to the
worker connections at once:
- COPY blocks (table data), each to the least busy worker as it is read;
  when that worker falls behind, the rest of its block is parked in a spill
  file (Spill: unnamed, on the store's disk, bounded by its free space) so
  the stream moves on and the next table loads on another worker meanwhile.
  A lifeboat backup's rows come in gzip members of their own
  (compress.GzipMembers): those go to the worker still compressed (Packed),
  and the worker inflates, counts and checks them (Rows), so the main
  thread only reads past them and a spill holds compressed bytes;
  SEQUENCE SET and large-object data keep running in order on the main
  connection meanwhile;
- a run of INDEX and CONSTRAINT (primary key, unique, exclusion) entries;
- a run of FK CONSTRAINT entries (retried on a deadlock between two of them).
Anything else waits until the workers are idle and runs on the main
connection, in order. The main connection commits before workers start, so
they see its tables; its last transaction commits only after the caller has
checked the whole stream (sha256, trailer).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import tempfile
import threading

from .. import compress, sqlguard

# Entry classes
COPY, ALONGSIDE, INDEXES, FOREIGN_KEYS, SERIAL = range(5)
_PARALLEL = {b"INDEX": INDEXES, b"CONSTRAINT": INDEXES, b"FK CONSTRAINT": FOREIGN_KEYS}
# Data-section entries that do not touch table data: run on main next to the COPYs.
_ALONGSIDE = {b"SEQUENCE SET", b"BLOBS", b"LARGE OBJECTS", b"TABLE DATA"}
# pg_dump sets these between entries (before an entry's comment); they are
# session state every connection must carry from then on (SESSION AUTHORIZATION
# with --use-set-session-authorization).
_SESSION_SET = re.compile(
    rb"\n((?:SET|RESET) (default_tablespace|default_table_access_method|SESSION AUTHORIZATION)"
    rb"[^;\n]*;\n)[\s]*\Z"
)
FLUSH = 8 << 20  # run a long entry on main once this much of it is buffered
# The settings pg_dump writes first, one per line: the header every worker replays
# (only the leading run of them, so nothing else before the first entry is repeated).
_SETTINGS = re.compile(
    rb"(?:[ \t]*\r?\n|--[^\n]*\n|SET [a-z_]+ = [^;\n]*;\r?\n"
    rb"|SELECT pg_catalog\.set_config\('search_path', '[^'\n]*', false\);\r?\n)*"
)
QUEUE_DEPTH = 16  # items (1 MiB chunks at most) waiting per worker
# Entries main runs per transaction: each keeps its locks to the end of it, and a
# schema of thousands of tables in one would overflow the server's lock table
# (max_locks_per_transaction x connections: 6,400 by default, shared by all).
MAIN_BATCH = 500
SPILL_AFTER = 8 << 20  # bytes queued for a busy worker before the rest of its COPY spills
SPILL_RESERVE = 0.10  # of the spill disk left free, and at least 1 GiB
DEADLOCK = "40P01"
log = logging.getLogger("lifeboat")


class Stop(Exception):
    """Raised in the main thread when a worker failed first (see Pool.error)."""


class _Closed(Exception):
    """A worker was told to quit in the middle of a COPY."""


class BadRows(ValueError):
    """Packed rows that are not whole lines (the backup is corrupt or was changed)."""


class Rows:
    """The packed rows of one COPY block, as its worker inflates them: counted,
    and checked as the guard checks rows it lexes itself (sqlguard.check_rows)."""

    def __init__(self, table: str):
        self.table = table
        self.count = 0
        self._inflater: compress.Inflater | None = None
        self._tail = b""  # an unfinished line: its rest comes in the next piece

    def unpack(self, data: bytes):
        if self._inflater is None:
            self._inflater = compress.Inflater()
        for rows in self._inflater.feed(data):
            self.count += rows.count(b"\n")
            cut = rows.rfind(b"\n") + 1
            if not cut:
                self._tail += rows
            else:
                # Most rows hold no backslash: then there is nothing to check
                # and no copy to make.
                if b"\\" in rows or b"\0" in rows or b"\\" in self._tail:
                    sqlguard.check_rows(self._tail + rows[:cut], self.table)
                self._tail = rows[cut:]
            yield rows

    def end(self) -> None:
        """Before rows the guard lexed, or the block's end: the packed ones are whole."""
        if self._inflater is not None:
            self._inflater.finish()
            self._inflater = None
        if self._tail:
            raise BadRows(f"the rows of {self.table} end in the middle of a line")


_BLANK = re.compile(rb"(?:[ \t\r\n]|--[^\n]*\n)*\Z")


def blank(text: bytes) -> bool:
    """Only whitespace and -- comments (cut at a statement start): nothing to run."""
    return _BLANK.match(text) is not None


class Spill:
    """The rest of one COPY block on disk: the main thread appends, the block's
    worker reads behind it. Unnamed (O_TMPFILE), so nothing is left after a
    crash; at most `limit` bytes, then the main thread waits for the worker."""

    def __init__(self, directory: str, limit: int, packed: bool = False):
        self.packed = packed  # compressed rows (Packed members), or rows as they are
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by close()
        self._fd = self._file.fileno()
        self._cond = threading.Condition()
        self.limit = limit
        self.written = 0
        self.read = 0
        self.weight = 0  # the scheduling weight of what was written (Pool.busy)
        self.done = False

    @classmethod
    def open(cls, directory: str | None, packed: bool) -> Spill | None:
        """A spill on `directory`'s disk, or None when it has no room to spare."""
        if not directory:
            return None
        try:
            fs = os.statvfs(directory)
            free, total = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
            limit = free - max(1 << 30, int(total * SPILL_RESERVE))
            return cls(directory, limit, packed) if limit > FLUSH else None
        except OSError:
            return None

    def room(self, size: int) -> bool:
        return self.written + size <= self.limit

    def write(self, data: bytes) -> None:  # main thread
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self.written)
            view = view[written:]
            with self._cond:
                self.written += written
                self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.done = True
            self._cond.notify_all()

    def wait_drained(self, failed) -> None:
        """Main thread: wait until the worker has read everything written."""
        with self._cond:
            while self.read < self.written and not failed():
                self._cond.wait(0.2)

    def chunks(self, failed):
        """Worker thread: the bytes in order as they are written, until finish()."""
        while True:
            with self._cond:
                while self.read >= self.written and not self.done and not failed():
                    self._cond.wait(0.2)
                end = self.written
                if failed() or (self.done and self.read >= end):
                    return
            while self.read < end:
                data = os.pread(self._fd, min(1 << 20, end - self.read), self.read)
                with self._cond:
                    self.read += len(data)
                    self._cond.notify_all()
                yield data

    def drained(self) -> bool:
        """Finished and read to the end: nobody writes or reads it any more."""
        with self._cond:
            return self.done and self.read >= self.written

    def close(self) -> None:
        self._file.close()


class Pool:
    """Worker connections fed by queues; the first failure stops everyone."""

    def __init__(self, conns: list, spill_dir: str | None = None):
        jobs = len(conns)
        self.error: BaseException | None = None
        self.spill_dir = spill_dir
        self.spills: list[Spill | None] = [None] * jobs  # the COPY being spilled, per worker
        self.tables = [""] * jobs  # the table each worker's COPY loads (for the log)
        self.rows: dict[str, int] = {}  # packed rows loaded per table (the guard counts the rest)
        self._opened: list[Spill] = []
        self._lock = threading.Lock()
        self._conns = conns
        self.queues: list[queue.Queue] = []
        self.busy = [0] * jobs  # bytes queued per worker, to pick the least busy
        self.threads = []
        for i, conn in enumerate(self._conns):
            q: queue.Queue = queue.Queue(QUEUE_DEPTH)
            self.queues.append(q)
            thread = threading.Thread(target=self._work, args=(i, conn, q), daemon=True)
            thread.start()
            self.threads.append(thread)
        self.main = None  # the main connection, cancelled too when a worker fails

    # ------------------------------------------------------------ main thread

    def put(self, worker: int, item: tuple, size: int = 0) -> None:
        self.check()
        self.busy[worker] += size
        self.queues[worker].put(item)

    def put_data(self, worker: int, data: bytes | compress.Packed) -> None:
        """COPY data for `worker`: queued, or spilled once the worker is behind."""
        packed = isinstance(data, compress.Packed)
        weight = data.size if packed else len(data)
        data = data.data if packed else data
        spill = self.spills[worker]
        full = spill is not None and not spill.room(len(data))
        if full or (spill is not None and spill.packed != packed):
            spill.finish()
            if full:  # the disk's share is used: let the worker catch up, then queue again
                spill.wait_drained(lambda: self.error is not None)
            self.spills[worker] = spill = None
        if spill is None and not full and self.busy[worker] >= SPILL_AFTER:
            spill = Spill.open(self.spill_dir, packed)
            if spill is not None:
                log.info(
                    "loading %s: its connection is behind the stream, so the rest of the "
                    "table waits in a spill file and the next table starts meanwhile",
                    self.tables[worker],
                )
                self._opened.append(spill)
                self.put(worker, ("spill", spill))
                self.spills[worker] = spill
        if spill is None:
            self.put(worker, ("packed" if packed else "data", data, weight), weight)
            return
        self.check()
        self.busy[worker] += weight
        spill.weight += weight
        spill.write(data)

    def end_copy(self, worker: int) -> None:
        if self.spills[worker] is not None:
            self.spills[worker].finish()
            self.spills[worker] = None
        self.put(worker, ("end",))

    def least_busy(self) -> int:
        return min(range(len(self.busy)), key=self.busy.__getitem__)

    def barrier(self) -> None:
        """Wait until every worker has finished everything queued."""
        for q in self.queues:
            q.join()
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise Stop() from None

    def fail(self, exc: BaseException) -> None:
        """Record the first failure and cancel what every connection is running."""
        with self._lock:
            if self.error is not None:
                return
            self.error = exc
        for conn in [*self._conns, self.main]:
            if conn is not None:
                with contextlib.suppress(Exception):  # best effort: it may be gone
                    conn.cancel_safe(timeout=5)

    def close(self) -> None:
        """Stop the workers (aborting any COPY in progress) and close their connections."""
        for spill in self.spills:
            if spill is not None:
                spill.finish()
        for q in self.queues:
            q.put(None)
        for thread in self.threads:
            thread.join()
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.close()
        for spill in self._opened:  # the ones a failure left open
            spill.close()

    # ------------------------------------------------------------ worker threads

    def _work(self, index: int, conn, q: queue.Queue) -> None:
        applied = None  # the session prefix this connection has run
        while True:
            item = q.get()
            try:
                if item is None:
                    return
                if self.error is not None:
                    continue  # drain: the restore has failed
                kind, prefix = item[0], item[1]
                if prefix != applied:
                    conn.execute(prefix)
                    applied = prefix
                if kind == "sql":
                    self._sql(conn, item[2])
                    self.busy[index] -= len(item[2])
                else:  # "copy": the data follows as data/packed/spill items, then ("end",)
                    self._copy(index, conn, q, item[2], item[3])
            except _Closed:
                return
            except BaseException as exc:  # handed to the main thread
                self.fail(exc)
            finally:
                q.task_done()

    def _sql(self, conn, text: bytes) -> None:
        for attempt in range(5):
            try:
                conn.execute(text)
                return
            except Exception as exc:
                # Two foreign keys may lock the same two tables in opposite orders.
                if getattr(exc, "sqlstate", None) != DEADLOCK or attempt == 4:
                    raise

    def _copy(self, index: int, conn, q: queue.Queue, statement: bytes, table: str) -> None:
        block = _Block(self, index, Rows(table))
        with conn.cursor() as cur, cur.copy(statement) as copy:
            block.copy = copy
            while True:
                item = q.get()
                try:
                    if item is None:
                        raise _Closed()
                    if item[0] == "end":
                        block.send(b"", False)  # the packed rows, if any, must be whole
                        break
                    if item[0] == "spill":
                        self._copy_spill(block, item[1])
                        continue
                    block.send(item[1], item[0] == "packed")
                    self.busy[index] -= item[2]
                finally:
                    q.task_done()
            # Raised inside the block, so the COPY is aborted, never committed half-done.
            if block.failed is not None:
                raise block.failed
            if self.error is not None:
                raise Stop()
        with self._lock:
            self.rows[table] = self.rows.get(table, 0) + block.rows.count
        self.busy[index] -= 1 << 20

    def _copy_spill(self, block: _Block, spill: Spill) -> None:
        """The spilled part of a COPY, read as the main thread writes it."""
        taken = 0
        for data in spill.chunks(lambda: self.error is not None):
            block.send(data, spill.packed)
            weight = int(len(data) * spill.weight / max(spill.written, 1))
            self.busy[block.index] -= weight
            taken += weight
        self.busy[block.index] -= spill.weight - taken
        if spill.drained():  # the main thread is done with it: free its disk space now
            spill.close()


class _Block:
    """One COPY on a worker: rows as they are, or packed ones inflated first.
    The first failure is kept and stops the restore; the rest is drained."""

    def __init__(self, pool: Pool, index: int, rows: Rows):
        self.pool = pool
        self.index = index
        self.rows = rows
        self.copy = None
        self.failed: BaseException | None = None
        self._packed = False

    def send(self, data: bytes, packed: bool) -> None:
        if self.failed is not None or self.pool.error is not None:
            return
        try:
            if self._packed and not packed:
                self.rows.end()
            self._packed = packed
            if packed:
                for rows in self.rows.unpack(data):
                    self.copy.write(rows)
            elif data:
                self.copy.write(data)
        except BaseException as exc:
            self.failed = exc
            self.pool.fail(exc)  # stops the main thread, and the others


class Splitter:
    """Cuts the cleared stream into entries and runs them (see the module doc).

    `feed` takes cleared bytes in order; the guard's marks up to them are
    known. `finish` runs what is left, waits for the workers and leaves the
    main connection's last transaction open for the caller to commit."""

    def __init__(self, guard: sqlguard.PsqlGuard, main, pool: Pool):
        self.guard = guard
        self.marks = guard.marks
        self.main = main
        self.pool = pool
        pool.main = main
        self.buf = b""
        self.base = 0  # stream offset of buf[0]
        self.next_mark = 0
        self.kind: bytes | None = None  # TOC type of the entry being read (None: header)
        self.parts: list[bytes] = []
        self.size = 0  # bytes in parts
        self.parts_at = 0  # stream offset of parts[0], or -1 once a line was cut out
        self.header = b""
        self.sets: dict[bytes, bytes] = {}
        self.prefix = b""  # header + session SETs: what a worker runs before an entry
        self.main_prefix = None
        self.main_entries = 0  # run on main since its last commit
        self.main_whole = True  # main ran no part of an entry it has not finished
        self.running: int | None = None  # class of work queued on the workers
        self.copy_worker: int | None = None
        self.held: tuple[int, bytes] | None = None  # a parallel entry, waiting for COMMENTs

    # ------------------------------------------------------------ cutting

    def feed(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        end = self.base + len(self.buf)
        marks = self.marks
        while True:
            mark = marks[self.next_mark] if self.next_mark < len(marks) else None
            if self.copy_worker is not None:
                stop = end if mark is None else min(end, mark[1])
                self._copy_data(stop)
                if mark is None or mark[2] > end:
                    break
                self._take(mark[2])  # the terminator
                self.parts_at = self.base
                self.pool.end_copy(self.copy_worker)
                self.copy_worker = None
                self.next_mark += 1
                continue
            if mark is None or mark[1] > end:
                self._part(end)
                break
            self._part(mark[1])
            tag = mark[0]
            if tag == sqlguard.TOC:
                self._entry_done()
                self.kind = mark[2]
            elif tag == sqlguard.META:
                if mark[2] > end:
                    break
                self._take(mark[2])  # psql-only lines: nothing for the server
                self.parts_at = -1
            elif tag == sqlguard.COPY_START:
                if mark[2] > end:
                    break
                self._copy_start(self._take(mark[2]), mark[3])
            self.next_mark += 1
        if self.next_mark > 4096:
            del marks[: self.next_mark]
            self.next_mark = 0

    def feed_packed(self, rows: compress.Packed) -> None:
        """Rows of the COPY block being read, still compressed: the guard found
        the stream between two of its rows, everything before them fed."""
        if self.copy_worker is None or self.buf:
            raise RuntimeError("packed rows outside a COPY block (a lifeboat bug)")
        self.pool.put_data(self.copy_worker, rows)

    def finish(self) -> None:
        self._entry_done()
        self._release()
        self.pool.barrier()

    def _part(self, stop: int) -> None:
        if stop > self.base:
            part = self._take(stop)
            self.parts.append(part)
            self.size += len(part)
            if self.size > FLUSH:
                self._flush()

    def _flush(self) -> None:
        """Run the complete statements of a long entry (large objects, INSERTs)
        on main now, so memory stays bounded, as psql would."""
        cls = self._class()
        cut = self.guard.stmt_end - self.parts_at
        if self.kind is None or cls in (INDEXES, FOREIGN_KEYS) or self.parts_at < 0:
            return
        if cut <= 0 or self.guard.stmt_end > self.base:
            return
        text = b"".join(self.parts)
        self._release()
        self._main(text[:cut], cls)
        self.main_whole = False  # no commit before the rest (large-object descriptors)
        self.parts = [text[cut:]]
        self.size = len(self.parts[0])
        self.parts_at += cut

    def _class(self) -> int:
        return _PARALLEL.get(self.kind, ALONGSIDE if self.kind in _ALONGSIDE else SERIAL)

    def _take(self, stop: int) -> bytes:
        cut = stop - self.base
        taken, self.buf = self.buf[:cut], self.buf[cut:]
        self.base = stop
        return taken

    # ------------------------------------------------------------ scheduling

    def _entry_done(self) -> None:
        text = b"".join(self.parts)
        self.parts = []
        self.size = 0
        self.parts_at = self.base
        if self.kind is None:  # the header: its SET statements every connection runs
            self.header = _SETTINGS.match(text).group()
            self.prefix = self.header
            self._main(text, SERIAL)
            self.kind = b""  # what follows before a TOC comment: run in order
            return
        found = _SESSION_SET.search(text)
        while found:  # SETs for the entries that follow, not for this one
            text = text[: found.start() + 1]
            self.sets[found.group(2)] = found.group(1)
            found = _SESSION_SET.search(text)
        if self.kind == b"COMMENT" and self.held is not None:
            self.held = (self.held[0], self.held[1] + text)  # a comment on the held index
        else:
            cls = self._class()
            if cls in (INDEXES, FOREIGN_KEYS):
                self._release()
                self.held = (cls, text)
            elif not blank(text):
                self._release()
                self._main(text, cls)
        self.main_whole = True
        self.prefix = self.header + b"".join(self.sets.values())

    def _release(self) -> None:
        """Send the held parallel entry (with any comments on it) to a worker."""
        if self.held is None:
            return
        cls, text = self.held
        self.held = None
        self._start(cls)
        worker = self.pool.least_busy()
        self.pool.put(worker, ("sql", self.prefix, text), len(text))

    def _start(self, cls: int) -> None:
        """Workers may take work of class `cls`: wait for other work, commit main."""
        if self.running not in (None, cls):
            self.pool.barrier()
        self.running = cls
        if self.main.info.transaction_status != 0:  # not idle: make its work visible
            self.main.commit()

    def _main(self, text: bytes, cls: int) -> None:
        # Only data-section entries run next to the COPYs; anything else waits.
        if self.running is not None and not (cls == ALONGSIDE and self.running == COPY):
            self.pool.barrier()
            self.running = None
        self.pool.check()
        if self.main_whole and self.main_entries >= MAIN_BATCH:
            if self.main.info.transaction_status != 0:
                self.main.commit()
            self.main_entries = 0
        self.main_entries += 1
        if self.prefix != self.main_prefix and self.kind is not None:
            self.main.execute(self.prefix)
        self.main_prefix = self.prefix
        self.main.execute(text)

    def _copy_start(self, statement: bytes, key: str) -> None:
        if self.kind is None:  # a COPY before any TOC comment: the header ends here
            self._entry_done()
        before = b"".join(self.parts)
        self.parts = []
        self.size = 0
        self._release()
        if not blank(before):  # not what pg_dump writes, but psql would run it first
            self._main(before, SERIAL)
        self._start(COPY)
        self.copy_worker = self.pool.least_busy()
        table = statement[5:].rsplit(b" FROM stdin", 1)[0]
        table = table.rsplit(b" (", 1)[0] if table.endswith(b")") else table
        self.pool.tables[self.copy_worker] = table.decode("utf-8", "replace")
        self.pool.put(self.copy_worker, ("copy", self.prefix, statement, key), 1 << 20)

    def _copy_data(self, stop: int) -> None:
        if stop > self.base:
            data = self._take(stop)
            self.pool.put_data(self.copy_worker, data)
