"""The whole restore: the steps in order, for each selected database."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from datetime import datetime

from .. import (
    backup,
    cluster_globals,
    dbprops,
    encrypt,
    eventlog,
    lock,
    manifest_key,
    monitor,
    naming,
    notify,
    pg,
    pglocks,
)
from ..dbprops import DbProps
from ..errors import (
    ConfigError,
    LifeboatError,
    RestoreRefused,
)
from ..settings import Settings, Target
from .database import admin, check_no_prepared, db_info, drop, psycopg_lib
from .journal import find, journal_path, recover, remove
from .load import jobs_for, load
from .names import replaced_name, scratch_name
from .request import CONFIRM_HINT, Request, RestoreResult
from .scratch import create_like, finish_like
from .source import check_decryptable, check_source, resolve_source
from .swap import Guard, swap
from .verification import Census, verify_restored

log = logging.getLogger("lifeboat")


def settings_for(settings: Settings, target: Target) -> Settings:
    return type(settings)(**{**settings.__dict__, "targets": (target,)})


def targets_for(settings: Settings, request: Request) -> list[Target]:
    targets = list(settings.targets)
    if (request.file or request.from_s3 or request.target_db or request.time) and len(targets) > 1:
        names = ", ".join(t.label for t in targets)
        raise ConfigError(
            f"Several databases are configured ({names}); a file, an S3 URL, a time or a "
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
    log_warnings: list[str] = []  # the backup log could not be opened
    with eventlog.attached(settings, log_warnings):
        for target in targets_for(settings, request):
            results.append(restore_recorded(settings, target, request, now, log_warnings))
    return results


def restore_recorded(
    settings: Settings, target: Target, request: Request, now: datetime | None, warnings: list[str]
) -> RestoreResult:
    """One database's restore, recorded like a backup whatever happens."""
    result = RestoreResult(request.target_db or target.conn.dbname)
    result.warnings += warnings
    started = time.monotonic()
    try:
        try:
            restore_one(settings, target, request, result, now=now)
        except psycopg_lib().Error as exc:
            # Lost the server mid-way (before the swap, which reports its own errors).
            error = pg.classify(str(exc), target.conn.with_dbname(result.database), "restore")
            error.hint += " The original database is untouched."
            raise error from None
        result.ok = True
    except LifeboatError as exc:
        result.error, result.hint, result.error_type = exc.message, exc.hint, type(exc).__name__
    except Exception as exc:
        # A bug (or an OS error no step translated) must still reach the log, the
        # run state and the on-call person, not just a traceback.
        log.exception("unexpected error restoring %s", result.database)
        result.error = notify.clean(
            f"Unexpected error: {type(exc).__name__}: {exc}.", notify.secrets_of(settings)
        )
        result.hint = (
            "This is a lifeboat bug; the traceback is in the log. The original database "
            "is replaced only by a verified copy: check it, then retry."
        )
        result.error_type = "InternalError"
    result.duration = time.monotonic() - started
    for warning in result.warnings:
        log.warning("%s: %s", result.database, warning)
    # Log, run state (<db>-restore.json), metrics and notifications (never raises,
    # never hides a failure).
    details = {}
    if request.time:  # a point-in-time restore says so, and from which stanza
        details = {"point_in_time": request.time, "stanza": settings.pitr_stanza}
        if result.recovered_to:
            details["recovered_to"] = result.recovered_to
    event = notify.Event.from_result(
        "restore", result, file=result.source, type="restore", details=details
    )
    result.warnings += monitor.record(settings, event, result.summary())
    return result


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
    source = resolve_source(settings, target, request, now)
    result.source = getattr(source, "described", "") or source.location  # pitr: the stanza
    result.recovered_to = getattr(source, "recovered_to", "")  # a point-in-time source
    result.warnings += source.warnings
    try:
        # Retention (ours: the pre-restore backup below; or another run's) never deletes
        # the file being restored, e.g. when undoing with a pre-restore backup.
        source.pin()
        trust = manifest_key.trust_for(settings)  # checked with the source, before any psql
        if source.encrypted:  # no key, no restore: refused before anything happens
            encrypt.check_identity_file(settings.encrypt_identity_file, source.location)
        if source.path and not source.archive:  # a local file is checked before anything else
            log.info("checking %s", source.location)
            check_source(source, settings.pg_bin_dir, full=False, trust=trust)
            check_decryptable(source, settings)
        elif source.archive:  # a tar (dirtar.py): its manifest and key now, its bytes unpacked
            trust.check(source.manifest, source.location)
            check_decryptable(source, settings)
        if not request.skip_pre_backup:  # else a read-only store will do (lock.user_dir)
            store.prepare("pre-restore")
        # Locked by the database's identity (server and name), whatever its label.
        with lock.hold_database(store.lock_dir(), conn) as lock_dir, admin(conn, {name}) as db:
            # No statement of ours waits forever behind another session's lock.
            db.execute(
                "SELECT set_config('lock_timeout', %s, false)",
                (pglocks.setting(settings.lock_timeout),),
            )
            journal = journal_path(lock_dir, conn)
            for line in recover(
                db, name, find(store.lock_dir(), conn), work_dir, settings.lock_timeout
            ):
                result.warnings.append(f"cleanup: {line}")
            # Before any long step: the swap could never happen.
            check_no_prepared(db, name, f"restore {name}", tail="Nothing was changed.")
            if not source.path or source.archive:
                log.info("%s %s", "unpacking" if source.archive else "downloading", source.location)
                source.fetch(work_dir, settings.encrypt_identity_file)
                check_source(source, settings.pg_bin_dir, full=False, trust=trust)
                check_decryptable(source, settings)
            if request.with_globals:  # roles first: the dump's owners and grants need them
                cluster_globals.apply(source, conn, settings.pg_bin_dir)
            original = db_info(db, name)
            if other_target and original is not None and is_template(db, name):
                raise RestoreRefused(
                    f"Failed to restore into {name}: it is a template database "
                    "(new databases are copied from it).",
                    "Pick another name with --target-db (target_database).",
                )
            like, why = creation_props(db, name, target, source, original is not None)
            if why:
                result.warnings.append(why)
            # Writes after the pre-restore snapshot: watched (and refused with
            # --block-writes) until the swap; see writes.py.
            guard = Guard(
                db,
                conn,
                name,
                journal,
                block=request.block_writes and original is not None,
                watch=original is not None and not request.skip_pre_backup,
            )
            if original is not None and not request.skip_pre_backup:
                # A --target-db that exists is replaced too: it gets the same safety copy.
                replaced = target if not other_target else Target(label, conn)
                pre = backup.Result(replaced.label, "pre-restore")
                log.info("pre-restore backup of %s", name)
                try:
                    mark = time.monotonic()
                    backup.backup_one(
                        settings,
                        replaced,
                        "pre-restore",
                        pre,
                        now=now,
                        locked=True,
                        before_dump=guard.start,
                    )
                except BaseException as exc:  # no way back: stop before touching anything
                    with contextlib.suppress(Exception):
                        guard.undo()
                    if not isinstance(exc, LifeboatError):
                        raise
                    exc.message = f"Failed to take the pre-restore backup of {name}: {exc.message}"
                    exc.hint += (
                        " The restore stopped before changing anything. Fix that and run it "
                        "again (--skip-pre-backup restores without a way back)."
                    )
                    raise
                result.timings["pre_restore_backup"] = _since(mark)
                result.pre_restore_backup = pre.file
                result.warnings += pre.warnings
            elif original is None:
                log.info("database %s does not exist: it will be created", name)
            else:  # --skip-pre-backup: only --block-writes has work to do
                try:
                    guard.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        guard.undo()
                    raise
            result.block_writes = guard.blocked is not None
            result.sessions_ended_at_block = guard.sessions_ended
            scratch = scratch_name(name, now)
            result.scratch = scratch
            try:
                result.warnings += create_like(db, scratch, like, conn, final=name)
                result.changed = True
                log.info("restoring %s into %s", source.location, scratch)
                mark = time.monotonic()
                loaded = load(source, conn.with_dbname(scratch), settings)
                result.timings["load"] = _since(mark)
                with pg.connect(conn, scratch) as sdb:
                    census = Census(sdb, conn.with_dbname(scratch), jobs_for(source, settings))
                    mark = time.monotonic()
                    tables, rows, warnings = verify_restored(sdb, source, loaded, census)
                    result.timings["verify"] = _since(mark)
                    # Planner statistics before the swap: the application's first queries
                    # after it get good plans (a drill measures this step too).
                    mark = time.monotonic()
                    census.analyze()
                    result.timings["analyze"] = _since(mark)
                result.warnings += finish_like(db, scratch, like, name)
                guard.fix_copy(scratch)
                result.tables, result.rows = tables, rows
                result.warnings += warnings
                mark = time.monotonic()
                swapped = swap(
                    db,
                    name,
                    scratch,
                    replaced_name(name, now),
                    journal,
                    conn,
                    request.keep_replaced,
                    watch=guard.watch,
                    blocked=guard.blocked,
                    lock_timeout=settings.lock_timeout,
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    drop(db, scratch, settings.lock_timeout)
                with contextlib.suppress(Exception):
                    guard.undo()  # if this fails, the journal stays for the next run
                raise
            result.timings["swap"] = _since(mark)
            log.info("timings: %s", ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
            remove([journal])
            result.swap_ms = swapped.window_ms
            result.created = not swapped.existed
            result.sessions_ended = swapped.sessions_ended
            result.open_transactions = swapped.open_transactions
            result.writes_after_snapshot = swapped.writes
            if swapped.existed and swapped.kept:
                result.replaced = replaced_name(name, now)
            if swapped.writes and result.replaced:
                result.warnings.append(
                    f"{name} was written to after the pre-restore backup's snapshot "
                    f"({'; '.join(swapped.writes[:5])}): those writes are in neither the "
                    f"restored data nor the pre-restore backup, so the replaced database is "
                    f"KEPT as {result.replaced} instead of dropped. Copy what you need from "
                    f"it, then DROP DATABASE it (--block-writes refuses writes during a restore)."
                )
    finally:
        source.cleanup()


def _since(mark: float) -> float:
    return round(time.monotonic() - mark, 3)


def creation_props(
    db, name: str, target: Target, source, exists: bool
) -> tuple[DbProps | None, str]:
    """How to create the scratch database: like the database it replaces, else like
    the configured database (a new --target-db), else as the backup recorded it
    (a lost database). Returns the properties and a warning when there are none."""
    like = dbprops.read(db, name) if exists else None
    if like is None and name != target.conn.dbname:
        like = dbprops.read(db, target.conn.dbname)
    if like is None:
        like = DbProps.from_dict((source.manifest or {}).get("database_properties"))
    if like is None:
        return None, (
            f"database {name} does not exist and the backup records no database properties "
            "(a stock dump or an older lifeboat backup): it is created with the server's "
            "defaults, owned by the restoring role; set owner, grants and settings by hand."
        )
    return like, ""


def is_template(db, name: str) -> bool:
    row = db.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return bool(row and row[0])
