"""Backups end to end: preflight, dump, publish, verify, retention.

`run` backs up every configured database independently (one failing does
not stop the others) and returns one result per database. `plan` answers
the same question without touching anything (check mode, --dry-run).
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from . import (
    cluster_globals,
    compress,
    dbprops,
    dirtar,
    dump,
    encrypt,
    eventlog,
    lock,
    manifest_key,
    monitor,
    naming,
    notify,
    pg,
    retention,
    storefs,
    verify,
)
from . import manifest as manifests
from . import store as store_module
from .errors import BackupInUse, LifeboatError, UploadFailed, VersionMismatch
from .s3 import S3Store, Tee
from .settings import Settings, Target
from .store import Entry, LocalStore
from .units import human_size, iso

log = logging.getLogger("lifeboat")


@dataclass
class Result:
    """The outcome for one database; `error`/`hint` are set when it failed."""

    database: str
    type: str
    ok: bool = False
    file: str = ""
    size: int = 0
    sha256: str = ""
    duration: float = 0.0
    deleted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    hint: str = ""
    error_type: str = ""
    s3_key: str = ""  # s3:// URL of the off-site copy, when one was made
    s3_error: str = ""  # the S3 failure; the local copy in `file` is still good

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if not self.ok and self.file and self.s3_error:
            return (
                f"{self.database} {self.type}: local backup OK: {self.file} "
                f"({human_size(self.size)}); S3 copy FAILED: {self.s3_error}"
            )
        if not self.ok:
            return f"{self.database} {self.type}: FAILED: {self.error} {self.hint}".strip()
        pruned = f", retention deleted {len(self.deleted)}" if self.deleted else ""
        offsite = f", copied to {self.s3_key}" if self.s3_key else ""
        return (
            f"{self.database} {self.type}: {self.file} ({human_size(self.size)}, "
            f"{self.duration:.1f}s{offsite}{pruned})"
        )


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def store_for(settings: Settings) -> LocalStore:
    return LocalStore(settings.backup_dir)


def s3_store_for(settings: Settings) -> S3Store | None:
    """The off-site store when a bucket is configured (boto3 is imported on first use)."""
    return S3Store.from_settings(settings)


def dump_options(settings: Settings) -> dump.DumpOptions:
    level = settings.compression_level
    if settings.format == "plain" and not (settings.compression == "gzip" and level is None):
        level = compress.check(settings.compression, level)  # gzip unset: chosen while dumping
    return dump.DumpOptions(
        fmt=settings.format,
        compression=settings.compression,
        level=level,
        jobs=settings.jobs,
        threads=settings.threads,
        pg_bin_dir=settings.pg_bin_dir,
        extra_args=settings.pg_dump_args,
        recipients=settings.encrypt_recipients,
        lock_timeout=settings.lock_timeout,
    )


def run(
    settings: Settings, backup_type: str = "daily", now: datetime | None = None, progress=None
) -> list[Result]:
    """Back up every configured database; never raises for one database's failure."""
    naming.check_type(backup_type)
    results = []
    log_warnings: list[str] = []
    with eventlog.attached(settings, log_warnings):
        for target in settings.targets:
            result = Result(target.label, backup_type, warnings=list(log_warnings))
            started = time.monotonic()
            try:
                backup_one(settings, target, backup_type, result, now=now, progress=progress)
                result.ok = True
            except LifeboatError as exc:
                result.error, result.hint = exc.message, exc.hint
                result.error_type = type(exc).__name__
            except OSError as exc:
                # An OS error no step translated (e.g. the lock file on a full disk).
                error = store_module._storage_error("back up", settings.backup_dir, exc)
                result.error, result.hint = error.message, error.hint
                result.error_type = type(error).__name__
            except Exception as exc:
                # A bug must still reach the log and the on-call person, not just a traceback.
                log.exception("unexpected error backing up %s", target.label)
                result.error = notify.clean(
                    f"Unexpected error: {type(exc).__name__}: {exc}.", notify.secrets_of(settings)
                )
                result.hint = "This is a lifeboat bug; the traceback is in the backup log."
                result.error_type = "InternalError"
            result.duration = time.monotonic() - started
            # Log, run state, metrics, notifications: never turns the result around.
            event = notify.Event.from_result(
                "backup", result, details={"s3": result.s3_key} if result.s3_key else {}
            )
            if now is not None:
                event.time = iso(now)
            result.warnings += monitor.record(settings, event, result.summary())
            results.append(result)
    return results


def backup_one(
    settings: Settings,
    target: Target,
    backup_type: str,
    result: Result,
    now: datetime | None = None,
    progress=None,
    locked: bool = False,
    before_dump=None,
) -> None:
    """Dump one database into the store; fills `result`; raises LifeboatError.

    `locked`: the caller (a restore) already holds this database's lock.
    `before_dump`: called right before pg_dump starts (a restore marks its
    write watch there, so the mark is as close to the dump's snapshot as can be).
    """
    store = store_for(settings)
    opts = dump_options(settings)
    pg_dump = pg.find_tool("pg_dump", settings.pg_bin_dir)
    trust = manifest_key.trust_for(settings)  # a bad key file fails before pg_dump runs
    store.prepare(backup_type)
    # Locked by the database's identity, not its label: a restore of the same
    # database under another name (a bare URL) waits for this backup, and vice versa.
    held = contextlib.nullcontext() if locked else lock.hold_database(store.lock_dir(), target.conn)
    with held:
        for leftover in store.remove_partials(target.label):
            log.warning("removed leftover of an interrupted run: %s", leftover)
        if not locked:  # a swap a killed restore left half done: repaired first
            from .restore.journal import heal

            for line in heal(target.conn, store.lock_dir(), held=True):
                log.warning("repaired: %s", line)
                result.warnings.append(f"repaired: {line}")
        with pg.connect(target.conn) as db:
            server_version = pg.server_version(db)
            estimates = pg.table_estimates(db)
            # Owner, locale, grants, settings, comment: what a lost database needs back.
            props = dbprops.read(db, target.conn.dbname)
        client_version = pg.tool_version(pg_dump)
        if pg.major(client_version) < pg.major(server_version):
            raise VersionMismatch(
                f"pg_dump {client_version} is older than the server ({server_version}) "
                f"of {target.conn.where()}.",
                "Install postgresql-client of the server's major version or newer, "
                "or set lifeboat_pg_bin_dir.",
            )
        encryption = None
        if opts.recipients:  # a bad key fails here, before pg_dump runs
            encryption = encrypt.describe(opts.recipients)
            encrypt.check_recipients(opts.recipients)
        started = now or utcnow()
        archive = archived(settings, backup_type)
        bname = store.unique_name(
            naming.build(
                target.label,
                backup_type,
                started,
                naming.extension(opts.fmt, opts.compression, bool(opts.recipients), archive),
            )
        )
        log.info("backup started: %s -> %s", target.conn.where(), store.abspath(bname.path))
        upload = store.begin(bname)
        # pg_dump's folder when it becomes a tar; a leftover is removed like a .partial.
        work = upload.final + naming.WORK_SUFFIX + naming.PARTIAL_SUFFIX if archive else None
        # Pre-restore safety copies stay local: an S3 outage must not block a restore.
        offsite = s3_store_for(settings) if backup_type != "pre-restore" else None
        remote = offsite.begin(bname) if offsite else None
        if remote:
            remote.start()
            if remote.error is None:
                for stale in offsite.abort_stale(target.label, keep=remote.upload_id):
                    log.warning("aborted an unfinished S3 upload: %s", stale)
        try:
            if before_dump is not None:
                before_dump()
            archive_rows = None
            if archive:
                produced, tar_fields, archive_rows = archive_dump(
                    settings, target, opts, upload, remote, work
                )
            elif opts.fmt == "directory":
                produced = dump.directory_dump(target.conn, opts, upload.directory())
            else:
                sink = upload.open_file()
                # One pipeline feeds both copies: the file is never read a second time.
                sink = Tee(sink, remote) if remote else sink
                produced = dump.stream_dump(target.conn, opts, sink, progress)
            finished = utcnow() if now is None else started
            rows_exact = produced.rows is not None
            manifest = manifests.build(
                file=bname.name,
                database=target.conn.dbname,
                label=target.label,
                url=target.conn.conninfo(),
                backup_type=backup_type,
                fmt=opts.fmt,
                compression=opts.compression,
                level=produced.level if produced.level is not None else opts.level,
                dump=produced,
                server_version=server_version,
                started=started,
                finished=finished,
                tables=produced.rows if rows_exact else estimates,
                rows_exact=rows_exact,
                encryption=encryption,
                database_properties=props.as_dict() if props else None,
            )
            if archive:  # one tar of the folder pg_restore read whole (archive_dump)
                manifest.update(tar_fields)
                manifests.set_rows(manifest, archive_rows)
            elif opts.fmt != "plain":
                # Archives are read whole by pg_restore before they count; the rows of
                # every table's data come from that read, exact, as for plain dumps.
                report = verify.verify_file(upload.partial, manifest, settings.pg_bin_dir)
                if report.rows is not None:
                    manifests.set_rows(manifest, report.rows)
            if settings.globals:  # roles and tablespaces beside the dump (cluster_globals.py)
                manifest["globals"] = cluster_globals.for_backup(
                    settings, target, store.abspath(bname.path), result.warnings
                )
            upload.commit(trust.seal(manifest))
        except BaseException:
            upload.abort()
            if work:
                storefs.remove(work)
            cluster_globals.discard(store.abspath(bname.path))
            if remote:
                remote.abort()
            raise
        if work:
            storefs.remove(work)
        result.file = store.abspath(bname.path)
        result.size = produced.size
        result.sha256 = produced.sha256
        prune_after_backup(store, settings, backup_type, target.label, now, result)
        if remote:
            finish_offsite(offsite, remote, manifest, settings, backup_type, target, result, now)


def archived(settings: Settings, backup_type: str) -> bool:
    """A directory dump becomes one tar (dirtar.py) when it is encrypted or copied to S3.

    Pre-restore copies stay local: unencrypted, they stay a folder pg_restore reads as is.
    """
    offsite = bool(settings.s3_bucket) and backup_type != "pre-restore"
    return settings.format == "directory" and bool(settings.encrypt_recipients or offsite)


def archive_dump(settings, target, opts, upload, remote, work):
    """pg_dump -Fd -j N into `work`, then one tar [through age] into the local file and S3.

    Returns (the object's DumpResult, the manifest's tar fields, exact rows).
    While the tar streams, pg_restore reads the folder whole (every data block
    decompressed, every table's rows counted) on the other core: a dump that
    does not read back never becomes a backup.
    """
    produced = dump.directory_dump(target.conn, opts, work, digest=False)
    started = time.monotonic()
    with ThreadPoolExecutor(1, thread_name_prefix="lifeboat-verify") as pool:
        checked = pool.submit(verify.verify_file, work, None, settings.pg_bin_dir)
        sink = upload.open_file()
        tree, hasher = dirtar.write(work, Tee(sink, remote) if remote else sink, opts.recipients)
        report = checked.result()
    produced.size, produced.sha256 = hasher.size, hasher.sha256.hexdigest()
    produced.uncompressed_size, produced.files = tree.uncompressed_size, tree.files
    archived_in = time.monotonic() - started
    produced.duration += archived_in
    log.info(
        "archived %d files (%s) in %.1fs", len(tree.files), human_size(produced.size), archived_in
    )
    fields = {
        "container": dirtar.CONTAINER,
        "directory_sha256": tree.sha256,  # the files' digest (dump.tree_digest), once unpacked
        "archive_seconds": round(archived_in, 3),  # of duration_seconds: tar, age, upload
    }
    return produced, fields, report.rows


def finish_offsite(offsite, remote, manifest, settings, backup_type, target, result, now) -> None:
    """Publish the S3 copy (manifest last), then apply retention there; raises UploadFailed."""
    remote_manifest = dict(manifest, s3={"url": remote.location, **(offsite.encryption() or {})})
    try:
        remote.commit(manifest_key.trust_for(settings).seal(remote_manifest))
    except UploadFailed as exc:
        result.s3_error = str(exc)
        raise
    result.s3_key = remote.location
    log.info("uploaded %s", remote.location)
    prune_after_backup(offsite, settings, backup_type, target.label, now, result)


def prune_after_backup(store, settings, backup_type, label, now, result) -> None:
    """Retention for one type and database after a good backup, in one store."""
    try:
        result.deleted += prune(
            store, store.list(), settings.retention, now or utcnow(), [backup_type], label
        )
    except LifeboatError as exc:
        # The new backup is good; an old one lingering is the lesser harm.
        where = "S3 retention" if store.kind == "s3" else "Retention"
        result.warnings.append(f"{where} skipped: {exc}")
        log.warning("%s skipped for %s: %s", where, label, exc)


def candidates(entries: list[Entry]) -> list[retention.Candidate]:
    return [
        retention.Candidate(
            e.key, e.name.label, e.name.type, e.name.created, e.complete, e.name.seq
        )
        for e in entries
    ]


def prune(
    store,
    entries: list[Entry],
    policy: dict,
    now: datetime,
    types: list[str] | None = None,
    label: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Apply retention to listed entries; returns what was (or would be) deleted."""
    scoped = [e for e in entries if label is None or e.name.label == label]
    doomed = {c.key for c in retention.plan(candidates(scoped), policy, now, types)}
    deleted = []
    for entry in scoped:
        if entry.key in doomed:
            if not dry_run:
                try:
                    store.delete(entry)
                except BackupInUse as exc:  # a restore or drill is reading it: next time
                    log.warning("%s", exc)
                    continue
                log.info("retention deleted %s", entry.location)
            deleted.append(entry.location)
    return deleted


def plan(settings: Settings, backup_type: str = "daily", now: datetime | None = None) -> list[dict]:
    """What `run` would do, touching nothing: the file per database and what retention drops."""
    naming.check_type(backup_type)
    manifest_key.trust_for(settings)  # a key file the run would refuse fails the plan too
    store = store_for(settings)
    now = now or utcnow()
    entries = store.list()
    offsite = s3_store_for(settings)
    remote_entries, remote_error = [], ""
    if offsite:
        try:
            remote_entries = offsite.list()
        except LifeboatError as exc:
            remote_error = str(exc)  # the real run would skip S3 retention too
    planned = []
    for target in settings.targets:
        bname = store.unique_name(
            naming.build(
                target.label,
                backup_type,
                now,
                naming.extension(
                    settings.format,
                    settings.compression,
                    bool(settings.encrypt_recipients),
                    archived(settings, backup_type),
                ),
            )
        )
        pending = retention.Candidate("new", target.label, backup_type, now, True)
        would_delete = []
        for found in (entries, remote_entries):  # each store keeps its own newest
            scoped = [e for e in found if e.name.label == target.label]
            doomed = {
                c.key
                for c in retention.plan(
                    [*candidates(scoped), pending], settings.retention, now, [backup_type]
                )
            }
            would_delete += [e.location for e in scoped if e.key in doomed]
        item = {
            "database": target.label,
            "type": backup_type,
            "file": store.abspath(bname.path),
            "would_delete": would_delete,
        }
        if offsite:
            item["s3_key"] = offsite.url(bname.path)
            item["s3_error"] = remote_error
        planned.append(item)
    return planned
