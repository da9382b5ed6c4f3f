"""Safe restores: plan, then act, never leaving less than there was.

The guide drops the live database and replays the dump into it; a replay
failing halfway leaves the user with less than they had. Here every step
keeps its intent, made safe:

1. validate the source (checksum, full decompression, trailer, row counts)
   before anything is touched;
2. take a pre-restore backup of the current database (type `pre-restore`);
3. restore into a scratch database `<db>__lifeboat_restore_<ts>` created like
   the original (owner, encoding, collation, settings, grants), streaming and
   decompressing on the fly into psql (ON_ERROR_STOP, one transaction) or
   pg_restore -j;
4. verify the scratch database (exact row counts against the dump's);
5. swap: block new connections, terminate the old ones, rename the original
   aside and the scratch database into its name in ONE transaction (so a
   crash leaves either the old or the new database under the name, never
   none), then drop the replaced one unless asked to keep it;
6. clean up leftovers of crashed restores at the start of the next one.

The restoring role needs what a managed-PostgreSQL owner has: CREATEDB and
ownership of the database (pg_signal_backend only to end other roles'
sessions). Sources are a local file, a store entry (`--latest`) or an S3 URL;
see `resolve_source`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from . import (
    backup,
    cluster_globals,
    compress,
    dump,
    encrypt,
    lock,
    monitor,
    naming,
    notify,
    pg,
    units,
    verify,
)
from .conninfo import ConnInfo, client_env, redact
from .errors import (
    ConfigError,
    ConnectionFailed,
    LifeboatError,
    PermissionDenied,
    RestoreFailed,
    RestoreRefused,
    VerificationFailed,
)
from .settings import Settings, Target

log = logging.getLogger("lifeboat")

SCRATCH_TAG = "__lifeboat_restore_"
REPLACED_TAG = "__lifeboat_replaced_"
STAMP = "%Y%m%d%H%M%S"
# PostgreSQL names are at most 63 bytes: leave room for the longest tag and stamp.
_BASE_BYTES = 63 - len(REPLACED_TAG) - len("20250101000000")
MAINTENANCE_DBS = ("postgres", "template1")
CONFIRM_HINT = (
    "Add --confirm (CLI) or -e confirm=true (playbook) to go ahead; "
    "see the plan first with --dry-run (or --check)."
)
# GUCs whose stored value is a list of separately quoted items (as pg_dumpall knows).
_LIST_GUCS = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
}


# --------------------------------------------------------------------------- requests


@dataclass
class Request:
    """What the operator asked for; exactly one of latest / file / from_s3."""

    latest: bool = False
    file: str | None = None
    from_s3: str | None = None
    backup_type: str | None = None  # for --latest: None = newest scheduled backup
    target_db: str | None = None
    skip_pre_backup: bool = False
    keep_replaced: bool = False
    confirm: bool = False
    with_globals: bool = False  # apply the backup's cluster globals first (cluster_globals.py)

    def check(self) -> None:
        chosen = [bool(self.latest), bool(self.file), bool(self.from_s3)]
        if sum(chosen) != 1:
            raise ConfigError(
                "Choose exactly one source: --latest, --file PATH or --from-s3 URL.",
                "Playbook: -e restore_latest=true, -e restore_file=PATH or "
                "-e restore_from_s3=s3://BUCKET/KEY.",
            )
        if self.backup_type is not None:
            naming.check_type(self.backup_type)
        if self.target_db is not None and (
            not self.target_db or "\0" in self.target_db or len(self.target_db.encode()) > 63
        ):
            raise ConfigError(
                f"Invalid target database name {self.target_db!r}.",
                "Use a PostgreSQL database name of at most 63 bytes.",
            )


@dataclass
class RestoreResult:
    """The outcome for one database; `error`/`hint` are set when it failed."""

    database: str
    source: str = ""
    ok: bool = False
    changed: bool = False
    pre_restore_backup: str = ""
    scratch: str = ""
    replaced: str = ""  # name of the kept replaced database, if kept
    created: bool = False  # the database did not exist before
    swap_ms: float = 0.0
    duration: float = 0.0
    tables: int = 0
    rows: int = 0
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    hint: str = ""
    error_type: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if not self.ok:
            return f"{self.database} restore: FAILED: {self.error} {self.hint}".strip()
        what = "created" if self.created else "replaced"
        pre = f", pre-restore backup {self.pre_restore_backup}" if self.pre_restore_backup else ""
        kept = f", previous kept as {self.replaced}" if self.replaced else ""
        return (
            f"{self.database} restored from {self.source} ({self.tables} tables, "
            f"{self.rows} rows verified, {what}, swap window {self.swap_ms:.0f} ms, "
            f"{self.duration:.1f}s{pre}{kept})"
        )


# --------------------------------------------------------------------------- sources


@dataclass
class Source:
    """A backup to restore from, available as a local path once `fetch`ed."""

    location: str  # for people: a path or s3:// URL
    path: str = ""  # local file or directory archive
    manifest: dict | None = None
    fmt: str = "plain"
    compression: str = "none"
    size: int = 0
    created: datetime | None = None
    store: object | None = None  # a store with open(entry) for remote entries
    entry: object | None = None
    temporary: bool = False  # `path` is a downloaded copy, removed by cleanup()

    def fetch(self, work_dir: str) -> None:
        """Make the backup a local file (download remote entries, checking size and sha256)."""
        if self.path:
            return
        os.makedirs(work_dir, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="restore-", suffix=self.entry.name.ext, dir=work_dir)
        self.path, self.temporary = path, True
        if hasattr(self.store, "download"):  # S3Store checks size and sha256 as it downloads
            os.close(fd)
            self.manifest = self.store.download(self.entry, path, self.manifest)
            return
        with os.fdopen(fd, "wb") as out, self.store.open(self.entry) as src:
            shutil.copyfileobj(src, out, dump.CHUNK)

    @property
    def encrypted(self) -> bool:
        """The manifest says the file is age-encrypted (refuses unknown methods)."""
        return encrypt.method_of(self.manifest) is not None

    def cleanup(self) -> None:
        if self.temporary and self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            with contextlib.suppress(OSError):  # the per-database folder, when empty
                os.rmdir(os.path.dirname(self.path))

    def describe(self, now: datetime) -> dict:
        age = ""
        if self.created:
            age = _age(now - self.created)
        return {
            "location": self.location,
            "format": self.fmt,
            "compression": self.compression,
            "size": self.size,
            "created": self.created.isoformat() if self.created else "",
            "age": age,
            "manifest": self.manifest is not None,
            "sha256": (self.manifest or {}).get("sha256", ""),
        }


def _age(delta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400 * 2:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def resolve_source(settings: Settings, target: Target, request: Request) -> Source:
    """The backup a request points at, for one target; raises RestoreRefused when none."""
    if request.from_s3:
        return _s3_source(settings, request.from_s3)
    if request.file:
        return file_source(request.file)
    return latest_source(settings, target, request.backup_type)


def _s3_source(settings: Settings, url: str) -> Source:
    """Hook for the S3 store: `s3.entry_for_url(settings, url) -> (store, entry)`.

    The store has LocalStore's interface (read_manifest, open(entry) streaming);
    the entry is downloaded into the backup directory, checked and restored.
    """
    if not url.startswith("s3://") or len(url) <= len("s3://"):
        raise ConfigError(f"{url!r} is not an S3 URL.", "Use s3://BUCKET/backups/<type>/<file>.")
    try:
        from . import s3

        entry_for_url = s3.entry_for_url
    except (ImportError, AttributeError):
        raise RestoreRefused(
            f"Cannot restore from {url}: S3 support is not configured in this lifeboat.",
            "Download the file and its .manifest.json and use --file, or "
            "install lifeboat with S3 support.",
        ) from None
    store, entry = entry_for_url(settings, url)
    manifest = store.read_manifest(entry) if entry.complete else None
    fmt, compression = naming.format_of(entry.name.ext)
    return Source(
        location=url,
        manifest=manifest,
        fmt=fmt,
        compression=compression,
        size=entry.size,
        created=entry.name.created,
        store=store,
        entry=entry,
    )


def file_source(path: str) -> Source:
    """A local file or directory archive: a lifeboat backup or a stock pg_dump output."""
    path = os.path.abspath(path)
    hint = "Check the path; `lifeboat list` shows the backups in the store."
    if not os.path.exists(path):
        raise RestoreRefused(f"Backup file {path} does not exist.", hint)
    if path.endswith(naming.PARTIAL_SUFFIX):
        raise RestoreRefused(
            f"{path} is an unfinished backup (.partial): it was interrupted.",
            "Restore a complete backup instead (`lifeboat list`).",
        )
    parsed = naming.parse(os.path.basename(path))
    manifest = verify.find_manifest(path)
    if parsed is not None and manifest is None:
        raise RestoreRefused(
            f"{path} has no manifest: the backup was interrupted or damaged.",
            "Restore a complete backup instead (`lifeboat list`).",
        )
    if manifest is not None:
        fmt, compression = manifest["format"], manifest["compression"]
    elif os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "toc.dat")):
            raise RestoreRefused(
                f"{path} is a directory but not a pg_dump directory archive (no toc.dat).", hint
            )
        fmt, compression = "directory", "none"
    elif os.path.isfile(path):
        fmt, compression = verify.detect(path)
    else:
        raise RestoreRefused(f"{path} is not a regular file.", hint)
    created = (
        parsed.created if parsed else datetime.fromtimestamp(os.path.getmtime(path), timezone.utc)
    )
    return Source(
        location=path,
        path=path,
        manifest=manifest,
        fmt=fmt,
        compression=compression,
        size=_disk_size(path),
        created=created,
    )


def latest_source(settings: Settings, target: Target, backup_type: str | None) -> Source:
    store = backup.store_for(settings)
    types = [backup_type] if backup_type else list(naming.SCHEDULED_TYPES)
    entries = [
        e
        for e in store.list()
        if e.complete and e.name.label == target.label and e.name.type in types
    ]
    if not entries:
        from . import s3  # the local copy is gone: fall back to the newest one in S3

        found = s3.latest_entry(settings, target.label, types)
        if found is not None:
            return _s3_source(settings, found[1].location)
        kind = backup_type or "daily/weekly/monthly"
        raise RestoreRefused(
            f"No complete {kind} backup of {target.label} in {store.describe()}.",
            "Take one with `lifeboat backup`, pass --file PATH, or pick another "
            "type with --type (restore_type).",
        )
    entry = max(entries, key=lambda e: e.name.created)
    source = file_source(entry.location)
    source.manifest = store.read_manifest(entry)
    return source


def _disk_size(path: str) -> int:
    if os.path.isdir(path):
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    return os.path.getsize(path)


def check_source(
    source: Source, bin_dir: str | None, full: bool = True, identity: str | None = None
) -> verify.Report:
    """Checks before anything is touched; a stock file that fails is 'not a backup'.

    With a manifest, `full=False` checks size and sha256 only: the file is then
    byte for byte what was verified when it was written, and the restore stream
    re-checks the trailer and every table's row count before psql commits.
    """
    if not full and source.manifest is not None:
        return _checksum(source)
    try:
        return verify.verify_file(source.path, source.manifest, bin_dir, identity=identity)
    except VerificationFailed as exc:
        if source.manifest is None:
            raise RestoreRefused(
                f"{source.location} is not a usable PostgreSQL dump: {exc.message}",
                "Pass a lifeboat backup (`lifeboat list`) or a pg_dump .sql, .sql.gz or "
                "custom-format file.",
            ) from None
        raise


def check_decryptable(source: Source, settings: Settings) -> str | None:
    """For an encrypted source: the identity file, proven to open it (when fetched).

    Runs before the database is touched: no identity file, or one that does
    not match the recipients, refuses the restore here.
    """
    if not source.encrypted:
        return None
    identity = encrypt.check_identity_file(settings.encrypt_identity_file, source.location)
    if source.path:
        encrypt.probe(source.path, identity, source.location)
    return identity


def _checksum(source: Source) -> verify.Report:
    report = verify.Report(source.path, manifest=source.manifest)
    manifest = source.manifest
    if os.path.isdir(source.path):
        sha, size, _ = dump.tree_digest(source.path)
    else:
        digest, size = hashlib.sha256(), 0
        with open(source.path, "rb") as fh:
            while block := fh.read(dump.CHUNK):
                digest.update(block)
                size += len(block)
        sha = digest.hexdigest()
    if size != manifest["size"]:
        raise VerificationFailed(
            f"Backup verification failed for {source.location}: size is {size} bytes, "
            f"manifest says {manifest['size']} (truncated or corrupt).",
            verify.REMEDY,
        )
    if sha != manifest["sha256"]:
        raise VerificationFailed(
            f"Backup verification failed for {source.location}: sha256 does not match the "
            "manifest (the file is corrupt).",
            verify.REMEDY,
        )
    report.checks.append("size and sha256 match the manifest")
    return report


# --------------------------------------------------------------------------- names


def _base(dbname: str) -> str:
    raw = dbname.encode()[:_BASE_BYTES]
    return raw.decode("utf-8", "ignore")


def scratch_name(dbname: str, now: datetime) -> str:
    return f"{_base(dbname)}{SCRATCH_TAG}{now.strftime(STAMP)}"


def replaced_name(dbname: str, now: datetime) -> str:
    return f"{_base(dbname)}{REPLACED_TAG}{now.strftime(STAMP)}"


def _leftover(dbname: str, tag: str) -> re.Pattern:
    return re.compile(re.escape(_base(dbname) + tag) + r"\d{14}$")


# --------------------------------------------------------------------------- database facts


@dataclass
class DbInfo:
    name: str
    owner: str
    encoding: str
    collate: str
    ctype: str
    provider: str
    icu_locale: str | None
    connlimit: int
    allowconn: bool
    comment: str | None
    has_acl: bool


def _db_info(db, name: str) -> DbInfo | None:
    version = db.info.server_version
    icu = "daticulocale" if version >= 150000 else "NULL"
    icu = "datlocale" if version >= 170000 else icu
    provider = "datlocprovider::text" if version >= 150000 else "'c'"
    row = db.execute(
        f"SELECT datname, pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate,"
        f" datctype, {provider}, {icu}, datconnlimit, datallowconn,"
        f" shobj_description(oid, 'pg_database'), datacl IS NOT NULL"
        f" FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    return DbInfo(*row) if row else None


def _databases(db) -> list[str]:
    return [r[0] for r in db.execute("SELECT datname FROM pg_database").fetchall()]


def _sql():
    from psycopg import sql

    return sql


def _ident(name: str):
    return _sql().Identifier(name)


def _psycopg_errors():
    import psycopg

    return psycopg


def _admin(conn: ConnInfo, avoid: set[str]):
    """A connection to a maintenance database (never one we rename or drop)."""
    last = None
    for dbname in MAINTENANCE_DBS:
        if dbname in avoid:
            continue
        try:
            return pg.connect(conn, dbname)
        except ConnectionFailed as exc:
            last = exc
    raise ConnectionFailed(
        f"Failed to connect to a maintenance database (postgres or template1) on "
        f"{conn.host or 'local socket'} as {conn.user or 'the current user'}: {last.message}",
        "A restore renames databases, which must be done from another database: "
        "GRANT CONNECT ON DATABASE postgres to the role.",
    )


def _run_sql(
    db,
    statement,
    params=None,
    action: str = "restore",
    conn: ConnInfo | None = None,
    hint: str = "",
):
    psycopg = _psycopg_errors()
    try:
        return db.execute(statement, params)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied(
            f"Failed to {action}: {' '.join(str(exc).split())}.",
            hint or _privilege_hint(str(exc), conn),
        ) from None
    except psycopg.Error as exc:
        raise RestoreFailed(
            f"Failed to {action}: {' '.join(str(exc).split())}.",
            hint
            or "The original database is untouched. Check the server "
            "log, then run the restore again.",
        ) from None


def _privilege_hint(text: str, conn: ConnInfo | None) -> str:
    user = (conn.user if conn else "") or "the restoring role"
    lowered = text.lower()
    if "create database" in lowered:
        return (
            f"The role needs CREATEDB: `ALTER ROLE {user} CREATEDB;` (managed PostgreSQL "
            "owner roles normally have it). The original database is untouched."
        )
    if "member of role" in lowered or "set role" in lowered:
        return (
            f"Restore as the database owner, or `GRANT <owner> TO {user};`. "
            "The original database is untouched."
        )
    if "terminate" in lowered or "signal" in lowered:
        return (
            f"`GRANT pg_signal_backend TO {user};` lets it end other roles' sessions "
            "(superuser sessions must be ended by a superuser). The original database is "
            "untouched."
        )
    return "Restore as the database owner. The original database is untouched."


# --------------------------------------------------------------------------- crash recovery


def _journal_path(store, label: str) -> str:
    return os.path.join(store.lock_dir(), f"{label}.restore.json")


def _write_journal(path: str, data: dict) -> None:
    tmp = path + ".partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _drop(db, name: str) -> None:
    force = " WITH (FORCE)" if db.info.server_version >= 130000 else ""
    db.execute(_sql().SQL("DROP DATABASE IF EXISTS {}" + force).format(_ident(name)))


def recover(db, dbname: str, journal: str, work_dir: str) -> list[str]:
    """Undo what a crashed restore of `dbname` left behind; returns what was done."""
    done = []
    names = _databases(db)
    state = {}
    if os.path.exists(journal):
        with contextlib.suppress(OSError, ValueError), open(journal) as fh:
            state = json.load(fh)
    replaced = sorted(n for n in names if _leftover(dbname, REPLACED_TAG).match(n))
    if dbname not in names and replaced:
        # Cannot happen with the one-transaction swap, but a database must
        # never be left without its name: put the newest replaced one back.
        back = replaced.pop()
        db.execute(
            _sql().SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(back), _ident(dbname))
        )
        done.append(f"renamed {back} back to {dbname} (a swap was interrupted)")
    if state.get("database") == dbname and state.get("allow_connections"):
        info = _db_info(db, dbname)
        if info and not info.allowconn:
            db.execute(
                _sql().SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(_ident(dbname))
            )
            done.append(f"re-allowed connections to {dbname} (a swap was interrupted)")
    for name in names:
        if _leftover(dbname, SCRATCH_TAG).match(name):
            _drop(db, name)
            done.append(f"dropped scratch database {name} of an interrupted restore")
    for name in replaced:
        log.warning(
            "database %s is left from an earlier restore of %s; drop it "
            "(DROP DATABASE) when it is no longer needed",
            name,
            dbname,
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    if os.path.isdir(work_dir):
        for name in os.listdir(work_dir):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(work_dir, name))
                done.append(f"removed temporary file {name}")
    return done


# --------------------------------------------------------------------------- create + load


def _list_value(value: str) -> str:
    """A stored list GUC value ('"$user", public') as SQL literals, one per item."""
    items, current, quoted = [], "", False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append(current.strip())
            current = ""
            continue
        current += ch
    items.append(current.strip())
    return ", ".join(
        _sql().Literal(i[1:-1] if i.startswith('"') and i.endswith('"') else i).as_string(None)
        for i in items
        if i
    )


def _create_like(db, new: str, like: DbInfo | None, conn: ConnInfo) -> list[str]:
    """CREATE DATABASE `new` mirroring `like` (owner, locale, settings, grants)."""
    sql = _sql()
    warnings = []
    if like is None:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(_ident(new))
    else:
        parts = [
            sql.SQL(
                "CREATE DATABASE {} WITH OWNER {} TEMPLATE template0 ENCODING {} "
                "LC_COLLATE {} LC_CTYPE {}"
            ).format(
                _ident(new),
                _ident(like.owner),
                sql.Literal(like.encoding),
                sql.Literal(like.collate),
                sql.Literal(like.ctype),
            )
        ]
        if like.provider == "i":
            parts.append(
                sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(like.icu_locale))
            )
        if like.connlimit != -1:
            parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(like.connlimit)))
        statement = sql.SQL(" ").join(parts)
    _run_sql(db, statement, action=f"create database {new}", conn=conn)
    if like is None:
        return warnings
    # Database-level settings (ALTER DATABASE ... SET) and per-role ones.
    rows = db.execute(
        "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,"
        " unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d"
        " ON d.oid = s.setdatabase WHERE d.datname = %s",
        (like.name,),
    ).fetchall()
    for role, item in rows:
        name, _, value = item.partition("=")
        literal = (
            _list_value(value) if name.lower() in _LIST_GUCS else sql.Literal(value).as_string(None)
        )
        prefix = (
            sql.SQL("ALTER ROLE {} IN DATABASE {}").format(_ident(role), _ident(new))
            if role
            else sql.SQL("ALTER DATABASE {}").format(_ident(new))
        )
        statement = sql.SQL("{} SET {} TO " + literal.replace("{", "{{").replace("}", "}}"))
        try:
            db.execute(statement.format(prefix, _ident(name)))
        except _psycopg_errors().Error as exc:
            # E.g. a superuser-only setting: never worth blocking an emergency restore.
            where = f"ROLE {role} IN DATABASE" if role else "DATABASE"
            warnings.append(
                f"setting {name} of {like.name} not copied ({' '.join(str(exc).split())}); "
                f"have a superuser run: ALTER {where} {like.name} SET {name} TO {literal}"
            )
    if like.comment is not None:
        db.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(_ident(new), sql.Literal(like.comment))
        )
    if like.has_acl:
        grants = db.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,"
            " a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a"
            " WHERE d.datname = %s AND a.grantee <> d.datdba",
            (like.name,),
        ).fetchall()
        db.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(_ident(new)))
        for grantee, privilege, grantable in grants:
            who = _ident(grantee) if grantee else sql.SQL("PUBLIC")
            option = sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")
            try:
                db.execute(
                    sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                        sql.SQL(privilege), _ident(new), who, option
                    )
                )
            except _psycopg_errors().Error as exc:
                warnings.append(
                    f"grant of {privilege} to {grantee or 'PUBLIC'} not copied: "
                    f"{' '.join(str(exc).split())}"
                )
    return warnings


def _die_with_parent() -> None:
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
        return _load_plain(source, conn, settings.pg_bin_dir, settings.encrypt_identity_file)
    return _load_archive(source, conn, settings)


def _load_plain(
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
            preexec_fn=_die_with_parent,
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
        raise _load_error("psql", returncode, stderr, conn)
    return Loaded(rows=watch.rows)


def _load_archive(source: Source, conn: ConnInfo, settings: Settings) -> Loaded:
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
            preexec_fn=_die_with_parent,
        )
    stderr = redact(proc.stderr.decode("utf-8", "replace"), conn.password)
    if proc.returncode != 0:
        raise _load_error("pg_restore", proc.returncode, stderr, conn)
    return Loaded(data_tables=data_tables)


def _load_error(tool: str, returncode: int, stderr: str, conn: ConnInfo) -> LifeboatError:
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


# --------------------------------------------------------------------------- verify


def _extension_table(db, table: str) -> bool:
    row = db.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_depend WHERE classid = 'pg_class'::regclass"
        " AND objid = to_regclass(%s) AND deptype = 'e')",
        (table,),
    ).fetchone()
    return bool(row[0])


def verify_restored(db, source: Source, loaded: Loaded) -> tuple[int, int, list[str]]:
    """Compare the scratch database with what the dump holds; returns (tables, rows, warnings)."""
    present = pg.table_estimates(db)
    warnings = []
    expected = loaded.rows
    manifest = source.manifest or {}
    if expected is None and manifest.get("rows_exact"):
        expected = manifest.get("tables") or {}
    if expected is not None:
        # Extension config tables (pg_extension_config_dump) hold the extension's own
        # rows plus the dumped ones: they must exist and hold at least the dump's rows.
        config = {t for t in set(expected) - set(present) if _extension_table(db, t)}
        missing = sorted(set(expected) - set(present) - config)
        if missing:
            raise VerificationFailed(
                f"Restored database lacks {len(missing)} table(s) of the "
                f"backup: {', '.join(missing[:5])}.",
                "The original database is untouched.",
            )
        counts = pg.exact_counts(db, list(expected))
        wrong = [
            f"{t}: {counts[t]} rows, backup has {n}"
            for t, n in expected.items()
            if (counts[t] < n if t in config else counts[t] != n)
        ]
        if wrong:
            raise VerificationFailed(
                f"Restored row counts differ from the backup: {'; '.join(wrong[:5])}.",
                "The original database is untouched.",
            )
        if (
            manifest.get("rows_exact")
            and loaded.rows is not None
            and loaded.rows != manifest.get("tables")
        ):
            raise VerificationFailed(
                "Row counts in the dump differ from its manifest.", verify.REMEDY
            )
        return len(present), sum(counts.values()), warnings
    counts = pg.exact_counts(db, list(present))
    if manifest:
        wanted = manifest.get("tables") or {}
        missing = sorted(set(wanted) - set(present))
        if missing or len(present) != manifest.get("table_count", len(wanted)):
            raise VerificationFailed(
                f"Restored database has {len(present)} tables, the backup's manifest "
                f"{manifest.get('table_count', len(wanted))}"
                + (f" (missing {', '.join(missing[:5])})" if missing else "")
                + ".",
                "The original database is untouched.",
            )
        for table, estimate in wanted.items():
            actual = counts.get(table, 0)
            if estimate > 1000 and not estimate / 10 <= actual <= estimate * 10:
                warnings.append(f"{table}: {actual} rows, the backup estimated {estimate}")
    elif loaded.data_tables and not present:
        raise VerificationFailed(
            "The restore produced no tables although the dump has table data.",
            "The original database is untouched.",
        )
    return len(present), sum(counts.values()), warnings


# --------------------------------------------------------------------------- swap


def _terminate(db, name: str, conn: ConnInfo, timeout: float = 10.0) -> None:
    psycopg = _psycopg_errors()
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            user = conn.user or "the restoring role"
            raise PermissionDenied(
                f"Failed to end other sessions on {name}: {' '.join(str(exc).split())}.",
                f"`GRANT pg_signal_backend TO {user};` lets it end other roles' sessions "
                "(superuser sessions must be ended by a superuser). Nothing was replaced.",
            ) from None
        left = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()[0]
        if not left:
            return
        if time.monotonic() > deadline:
            raise RestoreFailed(
                f"{left} session(s) on {name} did not end within {timeout:.0f}s.",
                "Nothing was replaced. Stop the clients and run the restore again.",
            )
        time.sleep(0.02)


def swap(
    db, name: str, scratch: str, replaced: str, journal: str, conn: ConnInfo, keep: bool
) -> tuple[float, bool]:
    """Put `scratch` under `name`; returns (window in ms, whether `name` existed)."""
    sql = _sql()
    info = _db_info(db, name)
    started = time.perf_counter()
    if info is None:
        # Complete database loss: nothing to replace, one rename.
        _run_sql(
            db,
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(scratch), _ident(name)),
            action=f"rename {scratch} to {name}",
            conn=conn,
        )
        return (time.perf_counter() - started) * 1000, False
    _write_journal(
        journal,
        {
            "database": name,
            "allow_connections": info.allowconn,
            "scratch": scratch,
            "replaced": replaced,
        },
    )
    if info.allowconn:
        _run_sql(
            db,
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(_ident(name)),
            action=f"block new connections to {name}",
            conn=conn,
        )
    try:
        for attempt in range(5):
            _terminate(db, name, conn)
            try:
                with db.transaction():
                    # One transaction: a crash leaves the old or the new database, never none.
                    db.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            _ident(name), _ident(replaced)
                        )
                    )
                    db.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            _ident(scratch), _ident(name)
                        )
                    )
                break
            except _psycopg_errors().errors.ObjectInUse:
                if attempt == 4:
                    raise
        window = (time.perf_counter() - started) * 1000
    except BaseException as exc:
        with contextlib.suppress(Exception):
            if info.allowconn:
                db.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(_ident(name))
                )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal)
        psycopg = _psycopg_errors()
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            raise PermissionDenied(
                f"Failed to swap {scratch} into {name}: {' '.join(str(exc).split())}.",
                _privilege_hint(str(exc), conn),
            ) from None
        if isinstance(exc, psycopg.Error):
            raise RestoreFailed(
                f"Failed to swap {scratch} into {name}: {' '.join(str(exc).split())}.",
                "Nothing was replaced. Run the restore again.",
            ) from None
        raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    if keep:
        if info.allowconn:
            db.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(_ident(replaced))
            )
    else:
        try:
            _drop(db, replaced)
        except _psycopg_errors().Error as exc:
            # The restore is done; a lingering old copy is the lesser harm.
            log.warning(
                "could not drop the replaced database %s: %s; drop it by hand",
                replaced,
                " ".join(str(exc).split()),
            )
    return window, True


# --------------------------------------------------------------------------- the whole restore


def _settings_for(settings: Settings, target: Target) -> Settings:
    return type(settings)(**{**settings.__dict__, "targets": (target,)})


def _targets(settings: Settings, request: Request) -> list[Target]:
    targets = list(settings.targets)
    if (request.file or request.from_s3 or request.target_db) and len(targets) > 1:
        names = ", ".join(t.label for t in targets)
        raise ConfigError(
            f"Several databases are configured ({names}); a file, an S3 URL or a "
            "target database applies to one.",
            "Pick one with --database NAME (playbook: lifeboat_databases with one entry).",
        )
    return targets


def run(settings: Settings, request: Request, now: datetime | None = None) -> list[RestoreResult]:
    """Restore every selected database; refuses at once without confirmation."""
    request.check()
    if not request.confirm:
        raise RestoreRefused("A restore replaces a database and needs confirmation.", CONFIRM_HINT)
    results = []
    for target in _targets(settings, request):
        result = RestoreResult(request.target_db or target.conn.dbname)
        started = time.monotonic()
        try:
            try:
                restore_one(settings, target, request, result, now=now)
            except _psycopg_errors().Error as exc:
                # Lost the server mid-way (before the swap, which reports its own errors).
                error = pg.classify(str(exc), target.conn.with_dbname(result.database), "restore")
                error.hint += " The original database is untouched."
                raise error from None
            result.ok = True
        except LifeboatError as exc:
            result.error, result.hint, result.error_type = exc.message, exc.hint, type(exc).__name__
        result.duration = time.monotonic() - started
        for warning in result.warnings:
            log.warning("%s: %s", result.database, warning)
        # Log, metrics and notifications (never raises, never hides a failure).
        event = notify.Event.from_result("restore", result, file=result.source)
        result.warnings += monitor.record(settings, event, result.summary())
        results.append(result)
    return results


def restore_one(
    settings: Settings,
    target: Target,
    request: Request,
    result: RestoreResult,
    now: datetime | None = None,
) -> None:
    now = now or backup.utcnow()
    name = request.target_db or target.conn.dbname
    other_target = name != target.conn.dbname
    conn = target.conn.with_dbname(name)
    store = backup.store_for(settings)
    label = naming.safe_label(name)
    work_dir = os.path.join(store.root, ".restore", label)  # downloads, one folder per database
    source = resolve_source(settings, target, request)
    result.source = source.location
    try:
        if source.encrypted:  # no key, no restore: refused before anything happens
            encrypt.check_identity_file(settings.encrypt_identity_file, source.location)
        if source.path:  # a local file is checked before anything else happens
            log.info("checking %s", source.location)
            check_source(source, settings.pg_bin_dir, full=False)
            check_decryptable(source, settings)
        store.prepare("pre-restore")
        with lock.hold(store.lock_dir(), label), _admin(conn, {name}) as db:
            for line in recover(db, name, _journal_path(store, label), work_dir):
                result.warnings.append(f"cleanup: {line}")
            if not source.path:
                log.info("downloading %s", source.location)
                source.fetch(work_dir)
                check_source(source, settings.pg_bin_dir, full=False)
                check_decryptable(source, settings)
            if request.with_globals:  # roles first: the dump's owners and grants need them
                cluster_globals.apply(source, conn, settings.pg_bin_dir)
            original = _db_info(db, name)
            like = original or (_db_info(db, target.conn.dbname) if other_target else None)
            if original is not None and not other_target and not request.skip_pre_backup:
                pre = backup.Result(target.label, "pre-restore")
                log.info("pre-restore backup of %s", name)
                backup.backup_one(settings, target, "pre-restore", pre, now=now, locked=True)
                result.pre_restore_backup = pre.file
                result.warnings += pre.warnings
            elif original is None:
                log.info("database %s does not exist: it will be created", name)
            scratch = scratch_name(name, now)
            result.scratch = scratch
            try:
                result.warnings += _create_like(db, scratch, like, conn)
                result.changed = True
                log.info("restoring %s into %s", source.location, scratch)
                loaded = load(source, conn.with_dbname(scratch), settings)
                with pg.connect(conn, scratch) as sdb:
                    tables, rows, warnings = verify_restored(sdb, source, loaded)
                result.tables, result.rows = tables, rows
                result.warnings += warnings
                window, existed = swap(
                    db,
                    name,
                    scratch,
                    replaced_name(name, now),
                    _journal_path(store, label),
                    conn,
                    request.keep_replaced,
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    _drop(db, scratch)
                raise
            result.swap_ms = window
            result.created = not existed
            if existed and request.keep_replaced:
                result.replaced = replaced_name(name, now)
    finally:
        source.cleanup()


def plan(settings: Settings, request: Request, now: datetime | None = None) -> list[dict]:
    """What `run` would do, touching nothing (dry run, check mode)."""
    request.check()
    now = now or backup.utcnow()
    planned = []
    store = backup.store_for(settings)
    for target in _targets(settings, request):
        name = request.target_db or target.conn.dbname
        item = {"database": name, "ok": True, "error": "", "hint": ""}
        try:
            source = resolve_source(settings, target, request)
            item["source"] = source.describe(now)
            check_decryptable(source, settings)
            if source.path:
                report = check_source(
                    source, settings.pg_bin_dir, identity=settings.encrypt_identity_file
                )
                item["checks"] = report.checks
            else:
                item["checks"] = ["remote backup: checked after download"]
            conn = target.conn.with_dbname(name)
            with _admin(conn, {name}) as db:
                info = _db_info(db, name)
                size = (
                    db.execute("SELECT pg_database_size(%s)", (name,)).fetchone()[0] if info else 0
                )
            item["exists"] = info is not None
            item["replaces"] = (
                f"{name} ({units.human_size(size)}, owner {info.owner})" if info else ""
            )
            item["scratch"] = scratch_name(name, now)
            item["keep_replaced_as"] = replaced_name(name, now) if request.keep_replaced else ""
            pre = ""
            if info and name == target.conn.dbname and not request.skip_pre_backup:
                bname = store.unique_name(
                    naming.build(
                        target.label,
                        "pre-restore",
                        now,
                        naming.extension(
                            settings.format,
                            settings.compression,
                            bool(settings.encrypt_recipients),
                        ),
                    )
                )
                pre = store.abspath(bname.path)
            item["pre_restore_backup"] = pre
        except LifeboatError as exc:
            item.update(ok=False, error=exc.message, hint=exc.hint)
        planned.append(item)
    return planned


def describe_plan(item: dict) -> list[str]:
    """The plan of one database as lines for people."""
    if not item["ok"]:
        return [f"{item['database']}: cannot restore: {item['error']} {item['hint']}".strip()]
    src = item["source"]
    lines = [
        f"{item['database']}: would restore {src['location']}",
        f"  backup: {src['format']}/{src['compression']}, "
        f"{units.human_size(src['size'])}, taken {src['created']} ({src['age']} ago), "
        + ("manifest sha256 " + src["sha256"][:12] if src["manifest"] else "no manifest"),
    ]
    lines += [f"  check: {c}" for c in item["checks"]]
    if item["exists"]:
        lines.append(
            f"  would replace: {item['replaces']}"
            + (
                f", kept as {item['keep_replaced_as']}"
                if item["keep_replaced_as"]
                else ", then drop it"
            )
        )
    else:
        lines.append(f"  would create {item['database']} (it does not exist)")
    lines.append(f"  pre-restore backup: {item['pre_restore_backup'] or 'none'}")
    lines.append(f"  via scratch database {item['scratch']}")
    return lines
