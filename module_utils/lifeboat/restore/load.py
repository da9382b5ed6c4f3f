"""Step 4: stream the backup into the scratch database."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import tempfile
from dataclasses import dataclass

from .. import (
    compress,
    dump,
    encrypt,
    pg,
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
from .source import Source


def die_with_parent() -> None:
    # If lifeboat is killed, its psql/pg_restore must not run on unsupervised.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Loaded:
    rows: dict[str, int] | None = None  # exact rows per table from the stream, if plain
    data_tables: int | None = None  # TABLE DATA entries of an archive


def load(source: Source, conn: ConnInfo, settings: Settings) -> Loaded:
    """Restore the source into the (empty) database of `conn`."""
    if source.fmt == "plain":
        return load_plain(source, conn, settings.pg_bin_dir, settings.encrypt_identity_file)
    return load_archive(source, conn, settings)


def load_plain(
    source: Source, conn: ConnInfo, bin_dir: str | None, identity: str | None = None
) -> Loaded:
    psql = pg.find_tool("psql", bin_dir)
    argv = [
        psql,
        "-X",
        "-q",
        "--no-password",
        "-v",
        "ON_ERROR_STOP=1",
        "--single-transaction",
        f"--dbname={conn.url()}",
        "-f",
        "-",
    ]
    watch = dump.StreamWatch("plain")
    with (
        client_env(conn) as env,
        tempfile.TemporaryFile() as errfile,
        open(source.path, "rb") as raw,
    ):
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errfile,
            env=env,
            preexec_fn=die_with_parent,
        )
        dump._grow_pipe(proc.stdin)
        broken = False
        plain = None
        try:
            tap = dump.HashingReader(raw)
            if source.encrypted:  # age -d -i IDENTITY, checked to its authenticated end
                plain = encrypt.Decryptor(
                    tap, encrypt.check_identity_file(identity, source.location), source.location
                )
            reader = compress.decompressor(plain or tap, source.compression)
            try:
                while chunk := reader.read(dump.CHUNK):
                    watch.feed(chunk)
                    proc.stdin.write(chunk)
                if plain is not None:
                    plain.finish()
            except BrokenPipeError:
                broken = True
            except (OSError, EOFError, ValueError) as exc:
                raise VerificationFailed(
                    f"Backup {source.location} is corrupt or truncated ({exc}).", verify.REMEDY
                ) from None
            if not broken:
                # Check before psql commits: closing stdin ends the transaction.
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
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            returncode = proc.wait()
        except BaseException:
            dump._kill(proc)
            raise
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            if plain is not None:
                plain.close()
        errfile.seek(0)
        stderr = redact(errfile.read().decode("utf-8", "replace"), conn.password)
    if returncode != 0 or broken:
        raise load_error("psql", returncode, stderr, conn)
    return Loaded(rows=watch.rows)


def load_archive(source: Source, conn: ConnInfo, settings: Settings) -> Loaded:
    pg_restore = pg.find_tool("pg_restore", settings.pg_bin_dir)
    listing = subprocess.run(
        [pg_restore, "--list", source.path], capture_output=True, text=True, check=False
    )
    data_tables = sum(
        1
        for line in listing.stdout.splitlines()
        if not line.startswith(";") and " TABLE DATA " in line
    )
    argv = [pg_restore, "--no-password", "--exit-on-error", f"--dbname={conn.url()}"]
    jobs = max(1, settings.jobs)
    argv += [f"--jobs={jobs}"] if jobs > 1 else ["--single-transaction"]
    argv.append(source.path)
    with client_env(conn) as env:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            check=False,
            preexec_fn=die_with_parent,
        )
    stderr = redact(proc.stderr.decode("utf-8", "replace"), conn.password)
    if proc.returncode != 0:
        raise load_error("pg_restore", proc.returncode, stderr, conn)
    return Loaded(data_tables=data_tables)


def load_error(tool: str, returncode: int, stderr: str, conn: ConnInfo) -> LifeboatError:
    text = " ".join(stderr.split())[-2000:]
    if returncode < 0:
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
    return RestoreFailed(
        f"{tool} failed (exit {returncode}): {text}",
        "The original database is untouched. Fix the cause above and run the restore again.",
    )
