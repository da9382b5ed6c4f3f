"""Step 4: stream the backup into the scratch database."""

from __future__ import annotations

import contextlib
import ctypes
import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from .. import (
    children,
    compress,
    dump,
    encrypt,
    pg,
    sqlguard,
    verify,
)
from ..conninfo import ConnInfo, client_env, redact
from ..errors import (
    LifeboatError,
    PermissionDenied,
    RestoreFailed,
    VerificationFailed,
)
from ..settings import Settings
from . import parallel
from .source import Source


def die_with_parent() -> None:
    # If lifeboat is killed, its psql/pg_restore must not run on unsupervised.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Loaded:
    rows: dict[str, int] | None = None  # exact rows per table from the stream, if plain
    data_tables: int | None = None  # TABLE DATA entries of an archive


def jobs_for(source: Source, settings: Settings) -> int:
    """Connections the restore of `source` may use: the plain loader's or pg_restore's."""
    return settings.plain_jobs if source.fmt == "plain" else settings.jobs


def load(source: Source, conn: ConnInfo, settings: Settings) -> Loaded:
    """Restore the source into the (empty) database of `conn`."""
    with pg.connect(conn) as db:
        server = db.info.server_version
    if source.fmt == "plain":
        return load_plain(
            source,
            conn,
            settings.pg_bin_dir,
            settings.encrypt_identity_file,
            settings.plain_jobs,
            server,
            settings.backup_dir,
        )
    pg_restore = pg.find_tool("pg_restore", settings.pg_bin_dir)
    if pg.major(pg.tool_version(pg_restore)) * 10000 > server and older_server_fix(server):
        # pg_restore 17 sends `SET transaction_timeout` to any server: load its
        # script output through the plain path, which leaves that line out.
        return load_script(source, pg_restore, conn, settings, server)
    return load_archive(source, conn, settings, server)


# SET lines that a newer pg_dump / pg_restore writes whatever the server's
# version, and that an older server rejects ("unrecognized configuration
# parameter"): (first server version that has it, its name).
NEWER_SETTINGS = ((170000, b"transaction_timeout"),)
HEADER_BYTES = 1 << 20  # where they are looked for when no TOC entry comes first


def older_server_fix(server: int):
    """A function turning such SET lines into comments of the same length (the
    guard's offsets still hold), or None when the server knows them all."""
    names = [name for since, name in NEWER_SETTINGS if server < since]
    if not names:
        return None
    line = re.compile(rb"(?m)^SET (?:" + b"|".join(names) + rb") = [^\n;']*;$")
    seen = 0  # pg_dump writes them once, in its header, before the first TOC entry

    def fix(data: bytes) -> bytes:
        # Only the header is rewritten: a regex over every COPY block of a
        # large dump costs more CPU than all the restore's checks together.
        nonlocal seen
        if seen < 0:
            return data
        end = data.find(b"\n-- Name: ")
        seen = -1 if end >= 0 or seen + len(data) > HEADER_BYTES else seen + len(data)
        end = len(data) if end < 0 else end
        return line.sub(lambda m: b"-- " + m.group(0)[3:], data[:end]) + data[end:]

    return fix


def load_plain(
    source: Source,
    conn: ConnInfo,
    bin_dir: str | None,
    identity: str | None = None,
    jobs: int = 1,
    server: int | None = None,
    spill_dir: str | None = None,
) -> Loaded:
    """A plain dump through psql (jobs=1) or over `jobs` connections (parallel.py)."""
    conns = loaders(conn, jobs)
    try:
        watch = dump.StreamWatch("plain", guard=True, marks=bool(conns))
        fix = older_server_fix(server) if server else None
        stream = read_plain(source, identity, watch, fix, packed=bool(conns))
    except BaseException:
        close_all(conns)
        raise
    try:
        return load_stream(stream, watch, conn, bin_dir, conns, spill_dir)
    except sqlguard.Refused as exc:  # packed rows, checked on a worker
        raise sqlguard.refused(source.location, exc) from None
    except (compress.Corrupt, parallel.BadRows) as exc:
        raise VerificationFailed(
            f"Backup {source.location} is corrupt or truncated ({exc}).", verify.REMEDY
        ) from None


def loaders(conn: ConnInfo, jobs: int) -> list:
    """The parallel load's connections, main first: up to jobs + 1, fewer when the
    role's or the server's connection limit leaves no more. None (one psql) for
    jobs 1, or when a worker cannot open beside the main connection."""
    if jobs < 2:
        return []
    conns = pg.connect_some(conn, jobs + 1, "loading")
    if len(conns) < 2:
        close_all(conns)  # psql's one connection takes its place
        return []
    return conns


def add_options(env: dict, *options: str) -> None:
    """Server settings for a client program's sessions, after the user's PGOPTIONS."""
    env["PGOPTIONS"] = " ".join(filter(None, [env.get("PGOPTIONS"), *options]))


def close_all(conns: list) -> None:
    for db in conns:
        with contextlib.suppress(Exception):
            db.close()


def load_stream(
    stream, watch: dump.StreamWatch, conn: ConnInfo, bin_dir, conns: list, spill_dir=None
) -> Loaded:
    """Through psql when `conns` is empty, else over them (loaders())."""
    try:
        if conns:
            packed = load_parallel(stream, watch.counter, conn, conns, spill_dir)
            for table, rows in packed.items():  # the rows the guard did not count itself
                watch.counter.rows[table] = watch.counter.rows.get(table, 0) + rows
        else:
            load_psql(stream, conn, bin_dir)
    finally:
        stream.close()
    return Loaded(rows=watch.rows)


def read_plain(
    source: Source, identity: str | None, watch: dump.StreamWatch, fix=None, packed=False
) -> Iterator[bytes | compress.Packed]:
    """The dump's SQL, decrypted and decompressed, in pieces the guard has cleared.

    Nothing is yielded that the guard (sqlguard.py) has not checked: whole lines
    only, so no connection ever holds a line the guard has not seen; with
    `packed`, also COPY rows still compressed where the guard is between rows
    (see `cleared`). After the last piece, before the generator ends, the
    sha256 of the file and the dump's trailer are checked: a consumer commits
    only once it is exhausted."""
    with open(source.path, "rb") as raw:
        tap = dump.HashingReader(raw)
        plain = None
        try:
            try:
                if source.encrypted:  # age -d -i IDENTITY, checked to its authenticated end
                    plain = encrypt.Decryptor(
                        tap, encrypt.check_identity_file(identity, source.location), source.location
                    )
                if packed and source.compression == "gzip":
                    pieces = compress.members(plain or tap, dump.CHUNK)
                else:
                    reader = compress.decompressor(plain or tap, source.compression)
                    pieces = compress.chunks(reader, dump.CHUNK)
                yield from cleared(pieces, watch, fix)
                if plain is not None:
                    plain.finish()
            except sqlguard.Refused as exc:
                raise sqlguard.refused(source.location, exc) from None
            except compress.data_errors() as exc:
                raise VerificationFailed(
                    f"Backup {source.location} is corrupt or truncated ({exc}).", verify.REMEDY
                ) from None
            sha = tap.sha256.hexdigest()
            if source.manifest is not None and sha != source.manifest["sha256"]:
                raise VerificationFailed(
                    f"Backup {source.location} changed while it was "
                    "restored: sha256 no longer matches the manifest.",
                    verify.REMEDY,
                )
            fault = watch.fault()
            if fault:
                raise VerificationFailed(
                    f"Backup {source.location} cannot be restored: {fault}.", verify.REMEDY
                )
        finally:
            if plain is not None:
                plain.close()


def cleared(pieces, watch: dump.StreamWatch, fix=None) -> Iterator[bytes | compress.Packed]:
    """The stream in whole lines the guard has checked; the rest when it ends.

    A Packed piece (COPY rows still compressed) goes on as it is when the guard
    is between rows of a COPY block and everything before it went out: the
    loader inflates it on a worker and checks the rows (parallel.Rows), the
    guard resumes at the line after them. Anywhere else it is inflated here
    and checked like the rest."""
    guard = watch.counter
    pending, written = b"", 0
    for piece in pieces:
        if isinstance(piece, compress.Packed):
            if not pending and guard.between_rows():
                yield piece
                continue
            inflated = compress.inflate(piece.data, dump.CHUNK)
        else:
            inflated = (piece,)
        for chunk in inflated:
            watch.feed(chunk)
            pending = pending + chunk if pending else chunk
            if guard.cleared > written:
                out = pending[: guard.cleared - written]
                pending = pending[guard.cleared - written :]
                written = guard.cleared
                yield fix(out) if fix else out
    watch.finish()
    if pending:
        yield fix(pending) if fix else pending


def load_script(
    source: Source, pg_restore: str, conn: ConnInfo, settings: Settings, server: int
) -> Loaded:
    """An archive as `pg_restore -f -` writes it, through the plain path (guard included)."""
    conns = loaders(conn, settings.plain_jobs)
    watch = dump.StreamWatch("plain", guard=True, marks=bool(conns))
    with contextlib.ExitStack() as opened, tempfile.TemporaryFile() as errfile:
        opened.callback(close_all, conns)  # closed already once the load has run
        proc = subprocess.Popen(
            [pg_restore, "--file=-", source.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errfile,
            env=children.environment(),
            preexec_fn=die_with_parent,
        )
        try:
            try:
                script = compress.chunks(proc.stdout, dump.CHUNK)
                stream = cleared(script, watch, older_server_fix(server))
                loaded = load_stream(
                    stream, watch, conn, settings.pg_bin_dir, conns, settings.backup_dir
                )
            except sqlguard.Refused as exc:
                raise sqlguard.refused(source.location, exc) from None
            returncode = proc.wait()
        except BaseException:
            dump._kill(proc)
            raise
        finally:
            proc.stdout.close()
        errfile.seek(0)
        stderr = errfile.read().decode("utf-8", "replace")
    if returncode != 0:
        raise load_error("pg_restore", returncode, stderr, conn)
    fault = watch.fault()
    if fault:
        raise VerificationFailed(
            f"Backup {source.location} cannot be restored: {fault}.", verify.REMEDY
        )
    return loaded


def load_psql(stream: Iterator[bytes], conn: ConnInfo, bin_dir: str | None) -> None:
    """One connection: psql, a statement per transaction as `gunzip | psql` does.

    Not --single-transaction: one transaction holds a lock on every table it
    creates, and a database of thousands of tables overflows the server's lock
    table (max_locks_per_transaction) where its own creation and a plain psql did
    not. A failed or refused load leaves nothing behind anyway: the scratch
    database is dropped. Commits do not wait for the disk (synchronous_commit off):
    the swap's commit flushes the WAL before it, so the data is durable by then."""
    psql = pg.find_tool("psql", bin_dir)
    argv = [
        psql,
        "-X",
        "-q",
        "--no-password",
        "-v",
        "ON_ERROR_STOP=1",
        f"--dbname={conn.conninfo()}",
        "-f",
        "-",
    ]
    with client_env(conn) as child, tempfile.TemporaryFile() as errfile:
        add_options(child["env"], "-c synchronous_commit=off")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errfile,
            preexec_fn=die_with_parent,
            **child,
        )
        dump._grow_pipe(proc.stdin)
        broken = False
        try:
            try:
                for data in stream:
                    proc.stdin.write(data)
            except BrokenPipeError:
                broken = True  # psql stopped: its error follows
            if not broken:
                # Only now, the stream checked, may psql end: closing stdin ends it.
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            returncode = proc.wait()
        except BaseException:
            dump._kill(proc)
            raise
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        errfile.seek(0)
        stderr = redact(errfile.read().decode("utf-8", "replace"), conn.password)
    if returncode != 0 or broken:
        raise load_error("psql", returncode, stderr, conn)


def load_parallel(
    stream: Iterator[bytes | compress.Packed],
    guard,
    conn: ConnInfo,
    conns: list,
    spill_dir: str | None = None,
) -> dict[str, int]:
    """A main connection and workers, `conns` (parallel.py); any failure stops them all.
    A table whose worker falls behind the stream is spilled to `spill_dir` (parallel.Spill).
    Returns the packed rows loaded per table, which the guard did not count."""
    import psycopg  # the host venv has it (requirements/host.txt); psql needs nothing

    main, workers = conns[0], conns[1:]
    main.autocommit = False
    pool = None
    try:
        pool = parallel.Pool(workers, spill_dir)
        splitter = parallel.Splitter(guard, main, pool)
        for data in stream:
            if isinstance(data, compress.Packed):
                splitter.feed_packed(data)
            else:
                splitter.feed(data)
        splitter.finish()
        main.commit()  # the last commit: the stream has checked out
        return pool.rows
    except BaseException as exc:
        first = pool.error if pool is not None else None
        if pool is not None and first is None:
            pool.fail(exc)  # stop the workers too
        first = first or exc
        if isinstance(first, psycopg.Error):
            raise connection_error(first, conn) from None
        if isinstance(exc, (parallel.Stop, psycopg.Error)) and first is not exc:
            raise first from None
        raise
    finally:
        if pool is not None:
            pool.close()
        close_all(conns)


def connection_error(exc, conn: ConnInfo) -> LifeboatError:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc)
    detail = getattr(diag, "message_detail", None)
    text = f"ERROR:  {primary}" + (f" DETAIL: {detail}" if detail else "")
    return load_error("the parallel load", None, redact(text, conn.password), conn)


def load_archive(source: Source, conn: ConnInfo, settings: Settings, server: int) -> Loaded:
    pg_restore = pg.find_tool("pg_restore", settings.pg_bin_dir)
    listing = subprocess.run(
        [pg_restore, "--list", source.path],
        capture_output=True,
        text=True,
        check=False,
        env=children.environment(),
    )
    data_tables = sum(
        1
        for line in listing.stdout.splitlines()
        if not line.startswith(";") and " TABLE DATA " in line
    )
    argv = [pg_restore, "--no-password", "--exit-on-error", f"--dbname={conn.conninfo()}"]
    jobs = max(1, settings.jobs)
    if jobs > 1:  # as many as the connection limits leave: pg_restore -j stops otherwise
        probe = pg.connect_some(conn, jobs, "pg_restore")
        jobs = len(probe)
        close_all(probe)
    if jobs > 1:  # else one statement per transaction, as load_psql says why
        argv.append(f"--jobs={jobs}")
    argv.append(source.path)
    with client_env(conn) as child:
        add_options(child["env"], pg.timeouts_off(server), "-c synchronous_commit=off")
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
            preexec_fn=die_with_parent,
            **child,
        )
    stderr = redact(proc.stderr.decode("utf-8", "replace"), conn.password)
    if proc.returncode != 0:
        raise load_error("pg_restore", proc.returncode, stderr, conn)
    return Loaded(data_tables=data_tables)


def load_error(tool: str, returncode: int | None, stderr: str, conn: ConnInfo) -> LifeboatError:
    text = " ".join(stderr.split())[-2000:]
    if returncode is not None and returncode < 0:
        return RestoreFailed(
            f"{tool} was killed by signal {-returncode} while restoring.",
            "The original database is untouched. Run the restore again.",
        )
    lowered = text.lower()
    if (
        "must be owner" in lowered
        or "permission denied" in lowered
        or "must be member of role" in lowered
        or "must be superuser" in lowered
        or "must be able to set role" in lowered
    ):
        return PermissionDenied(
            f"{tool} could not restore into a scratch copy as {conn.user or 'this role'}: {text}",
            "The dump needs a privilege this role lacks (above). Restore as the role that owns "
            "the objects, grant the missing privilege, or for extensions that need a superuser, "
            "have one create the extension first. The original database is untouched.",
        )
    explained = pg.explain(text, conn, "restore into")
    if explained is not None:
        explained.hint += " The original database is untouched."
        return explained
    exit = f" (exit {returncode})" if returncode is not None else ""
    return RestoreFailed(
        f"{tool} failed{exit}: {text}",
        "The original database is untouched. Fix the cause above and run the restore again.",
    )
