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
    encrypt,
    lock,
    monitor,
    naming,
    notify,
    pg,
)
from ..errors import (
    ConfigError,
    LifeboatError,
    RestoreRefused,
)
from ..settings import Settings, Target
from .database import admin, db_info, drop, psycopg_lib
from .journal import journal_path, recover
from .load import load
from .names import replaced_name, scratch_name
from .request import CONFIRM_HINT, Request, RestoreResult
from .scratch import create_like
from .source import check_decryptable, check_source, resolve_source
from .swap import swap
from .verification import verify_restored

log = logging.getLogger("lifeboat")


def settings_for(settings: Settings, target: Target) -> Settings:
    return type(settings)(**{**settings.__dict__, "targets": (target,)})


def targets_for(settings: Settings, request: Request) -> list[Target]:
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
    for target in targets_for(settings, request):
        result = RestoreResult(request.target_db or target.conn.dbname)
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
        with lock.hold(store.lock_dir(), label), admin(conn, {name}) as db:
            for line in recover(db, name, journal_path(store, label), work_dir):
                result.warnings.append(f"cleanup: {line}")
            if not source.path:
                log.info("downloading %s", source.location)
                source.fetch(work_dir)
                check_source(source, settings.pg_bin_dir, full=False)
                check_decryptable(source, settings)
            if request.with_globals:  # roles first: the dump's owners and grants need them
                cluster_globals.apply(source, conn, settings.pg_bin_dir)
            original = db_info(db, name)
            like = original or (db_info(db, target.conn.dbname) if other_target else None)
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
                result.warnings += create_like(db, scratch, like, conn)
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
                    journal_path(store, label),
                    conn,
                    request.keep_replaced,
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    drop(db, scratch)
                raise
            result.swap_ms = window
            result.created = not existed
            if existed and request.keep_replaced:
                result.replaced = replaced_name(name, now)
    finally:
        source.cleanup()
