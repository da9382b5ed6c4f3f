"""Cluster globals: the roles and tablespaces a database dump does not carry.

`pg_dump` saves one database; its objects' owners and grantees are roles that
live in the cluster. With `globals: true` each backup also saves
`pg_dumpall --globals-only` beside the dump as `<backup name>.globals.sql`
(0600, recorded in the manifest), so a lost server can be rebuilt:
`lifeboat restore ... --with-globals` applies it first, leaving roles that
exist as they are.

Role passwords are left out unless `globals_passwords: true`: reading them
(pg_authid) takes a superuser, and a file of password hashes is one more
secret to guard.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import subprocess

from . import naming, pg, sqlguard, storefs
from .conninfo import ConnInfo, client_env, redact
from .errors import LifeboatError, PermissionDenied, RestoreFailed, RestoreRefused

log = logging.getLogger("lifeboat")

SUFFIX = naming.GLOBALS_SUFFIX
FILE_MODE = 0o600
# Errors that mean "it is there already": the restore keeps what exists.
_EXISTS = re.compile(r'^(role|tablespace) "[^"]*" already exists')
_ERROR = re.compile(r"^psql:[^\n]*?ERROR:\s+(.*)$", re.MULTILINE)


def path_for(backup_path: str) -> str:
    return backup_path + SUFFIX


def save(conn: ConnInfo, backup_path: str, passwords: bool, bin_dir: str | None) -> dict:
    """Write the globals file beside `backup_path`; returns its manifest entry.

    Raises PermissionDenied (with what to do) when the role may not read them.
    """
    pg_dumpall = pg.find_tool("pg_dumpall", bin_dir)
    final = path_for(backup_path)
    tmp = final + naming.PARTIAL_SUFFIX
    argv = [pg_dumpall, "--globals-only", "--no-password", f"--dbname={conn.conninfo()}"]
    if not passwords:
        argv.append("--no-role-passwords")
    fd = storefs.create_exclusive(tmp, "globals file", FILE_MODE)  # never through a link
    try:
        with os.fdopen(fd, "wb") as out, client_env(conn) as child:
            proc = subprocess.run(
                argv, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, **child
            )
            out.flush()
            os.fsync(out.fileno())
        stderr = redact(proc.stderr.decode("utf-8", "replace"), conn.password).strip()
        if proc.returncode != 0:
            raise _save_error(stderr, conn, passwords)
        with open(tmp, "rb") as fh:
            data = fh.read()
        if b"PostgreSQL database cluster dump complete" not in data[-512:]:
            raise LifeboatError(
                f"pg_dumpall --globals-only produced incomplete output: {stderr}",
                "Run the backup again; check the server log.",
            )
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return {
        "file": os.path.basename(final),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "role_passwords": passwords,
    }


def _save_error(stderr: str, conn: ConnInfo, passwords: bool) -> LifeboatError:
    text = " ".join(stderr.split())
    user = conn.user or "the backup role"
    if "pg_authid" in text and "permission denied" in text:
        return PermissionDenied(
            f"Failed to save cluster globals with role passwords as {user}: {text}",
            "Role passwords can only be read by a superuser: set lifeboat_globals_passwords: "
            "false (roles are saved without passwords) or back up as a superuser.",
        )
    explained = pg.explain(text, conn, "save cluster globals from")
    if explained is not None:
        return explained
    return LifeboatError(
        f"Failed to save cluster globals (pg_dumpall --globals-only): {text}",
        "Check the server log, or set lifeboat_globals: false.",
    )


def for_backup(settings, target, backup_path: str, warnings: list[str]) -> dict | None:
    """The backup's globals entry; a failure is a warning: the dump itself is good."""
    try:
        return save(target.conn, backup_path, settings.globals_passwords, settings.pg_bin_dir)
    except LifeboatError as exc:
        warning = f"Cluster globals not saved: {exc}"
        log.warning("%s", warning)
        warnings.append(warning)
        return None


def discard(backup_path: str) -> None:
    """Remove the globals file of a backup that was not kept."""
    for path in (path_for(backup_path), path_for(backup_path) + naming.PARTIAL_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def locate(source) -> tuple[str, bytes]:
    """The checked globals file of a restore source and its bytes; RestoreRefused when
    there is none. psql gets these bytes, not the path: they cannot change in between."""
    info = (source.manifest or {}).get("globals")
    if not info:
        raise RestoreRefused(
            f"Backup {source.location} has no cluster globals file.",
            "Take backups with lifeboat_globals: true (globals: true in lifeboat.yml), or "
            "restore without --with-globals once the roles exist.",
        )
    if getattr(source, "entry", None) is not None or source.location.startswith("s3://"):
        raise RestoreRefused(
            f"The globals file of {source.location} is kept in the local store only.",
            "Restore from the local copy (--latest or --file), or create the roles first "
            "and restore without --with-globals.",
        )
    path = os.path.join(os.path.dirname(source.location), os.path.basename(str(info["file"])))
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise RestoreRefused(
            f"Cannot read the globals file {path}: {exc.strerror or exc}.",
            "It sits beside the backup; copy it back, or restore without --with-globals.",
        ) from None
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise RestoreRefused(
            f"The globals file {path} does not match its manifest (sha256).",
            "It was changed or damaged: restore without --with-globals and create the "
            "roles by hand.",
        )
    guard = sqlguard.PsqlGuard()  # pg_dumpall's output: nothing else may reach psql
    try:
        guard.feed(data)
        guard.finish()
    except sqlguard.Refused as exc:
        raise sqlguard.refused(path, exc) from None
    return path, data


def apply(source, conn: ConnInfo, bin_dir: str | None) -> str:
    """Apply a backup's globals on the server of `conn`; returns what was done (logged).

    Roles and tablespaces that exist are not created again ("already exists" is
    expected on any server that is not empty; they get the backup's attributes,
    and keep their passwords unless the file has them); any other error fails.
    """
    path, data = locate(source)
    psql = pg.find_tool("psql", bin_dir)
    admin = conn.with_dbname("postgres")
    argv = [psql, "-X", "-q", "--no-password", f"--dbname={admin.conninfo()}", "-f", "-"]
    with client_env(admin) as child:
        proc = subprocess.run(argv, capture_output=True, input=data, **child)
    stderr = redact(proc.stderr.decode("utf-8", "replace"), conn.password)
    errors = [m.group(1) for m in _ERROR.finditer(stderr)]
    existing = [e for e in errors if _EXISTS.match(e)]
    other = [e for e in errors if e not in existing]
    if proc.returncode != 0 and not errors:
        explained = pg.explain(stderr, admin, "apply cluster globals on")
        raise explained or RestoreFailed(
            f"psql failed applying the globals file {path}: {' '.join(stderr.split())}",
            "Nothing was restored. Fix the cause and run the restore again.",
        )
    if other:
        user = conn.user or "this role"
        hint = (
            f"Creating roles needs a superuser or CREATEROLE, which {user} lacks: restore "
            "with a superuser URL, or create the roles first and restore without "
            "--with-globals. Nothing was restored."
            if any("permission denied" in e or "must be superuser" in e for e in other)
            else "Nothing was restored. Fix the cause above and run the restore again."
        )
        cls = PermissionDenied if "superuser" in hint else RestoreFailed
        raise cls(f"Failed to apply cluster globals from {path}: {'; '.join(other[:3])}.", hint)
    line = f"applied cluster globals from {os.path.basename(path)}"
    if existing:
        line += f" ({len(existing)} role(s)/tablespace(s) existed already)"
    log.info("%s", line)
    return line
