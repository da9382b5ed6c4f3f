"""Restore drills: prove a backup restores, and measure how long it takes.

A drill is `lifeboat verify --deep`: the cheap checks of verify.py first,
then the backup is restored with the restore package's own loader into a scratch
database `<db>__lifeboat_drill_<time>` on the same server (or on
`drill_server`, so production does not carry the load), compared with the
manifest (table count, exact per-table rows), put through the user's checks
(`verify_queries`: SQL that must return true), and dropped. The original
database is never touched: the drill only creates and drops its scratch.

The measured restore time (fetch + checks + load + verify + ANALYZE) is the
recovery time objective (RTO) a real restore of this backup needs, minus the
pre-restore backup and the swap.

A killed drill leaves its scratch database behind; the next drill drops it.
Each drill holds a session advisory lock named after its scratch database
while it lives, so cleanup never drops the scratch of a drill still running
(on this host or another sharing a drill server), and a dead drill's lock is
gone with its session.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime

from . import (
    backup,
    dbprops,
    eventlog,
    lock,
    manifest_key,
    monitor,
    naming,
    notify,
    pg,
    restore,
    storefs,
    units,
)
from .conninfo import ConnInfo, redact
from .errors import ConfigError, LifeboatError, LockTimeout, VerificationFailed
from .settings import Settings, Target

log = logging.getLogger("lifeboat")

DRILL_TAG = "__lifeboat_drill_"
_ANY_DRILL = r"__lifeboat_drill_[0-9]{14}$"
LOCK_PREFIX = "lifeboat-drill:"
QUERY_TIMEOUT = "5min"
DRILL_HINT = (
    "Do not rely on this backup: find the cause above and take a new backup "
    "(`lifeboat backup`). The drill's scratch database was dropped; the original "
    "database was not touched."
)


@dataclass
class Request:
    """What to verify: one file, or the newest complete backup of each database."""

    file: str | None = None
    latest: bool = False
    backup_type: str | None = None  # with latest: None = newest daily/weekly/monthly
    deep: bool = True

    def check(self) -> None:
        if bool(self.file) == bool(self.latest):
            raise ConfigError(
                "Choose what to verify: a backup PATH or --latest.",
                "e.g. `lifeboat verify --latest --deep` (playbook: -e verify_file=PATH "
                "to check one file).",
            )
        if self.backup_type is not None:
            naming.check_type(self.backup_type)


@dataclass
class DrillResult:
    """The outcome for one database; `error`/`hint` say why when not ok."""

    database: str
    deep: bool = True
    type: str = ""
    ok: bool = False
    changed: bool = False
    source: str = ""
    file: str = ""
    size: int = 0
    backup_created: str = ""
    backup_age_seconds: float | None = None
    server: str = ""
    scratch: str = ""
    scratch_dropped: bool = False
    checks: list[str] = field(default_factory=list)
    tables: int = 0
    rows: int = 0
    rows_exact: bool = False  # per-table rows compared exactly (plain dumps' manifests)
    table_rows: dict[str, int] = field(default_factory=dict)
    queries: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    rto_seconds: float | None = None
    duration: float = 0.0
    cleaned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    hint: str = ""
    error_type: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        what = " ".join(filter(None, [self.database, self.type]))
        level = "deep" if self.deep else "cheap"
        if not self.ok:
            return f"FAILED {what} ({level}): {self.source}: {self.error} {self.hint}".strip()
        age = ""
        if self.backup_age_seconds is not None:
            age = f", {_age(self.backup_age_seconds)} old"
        if not self.deep:
            return f"OK {what} (cheap): {self.source}{age}: {len(self.checks)} checks passed"
        passed = f", {len(self.queries)} user check(s) passed" if self.queries else ""
        counts = (
            f"{self.tables} tables and {self.rows} rows match the manifest"
            if self.rows_exact
            else f"{self.tables} tables match the manifest, {self.rows} rows restored"
        )
        dropped = "dropped" if self.scratch_dropped else "left (see the warning)"
        return (
            f"OK {what} (deep): {self.source}{age}: restored on {self.server} in "
            f"{self.rto_seconds:.1f}s (RTO), {counts}{passed}, scratch database {dropped}"
        )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400 * 2:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


# --------------------------------------------------------------------------- entry point


def run(
    settings: Settings, request: Request, now: datetime | None = None, record: bool = True
) -> list[DrillResult]:
    """Verify every selected backup; one result per database, never raises for one failure.

    `record`: log the outcome, save it in the run state (status, metrics) and
    notify, as a backup does.
    """
    request.check()
    results = []
    # The backup log gets every recorded run, as it does a backup's.
    with eventlog.attached(settings) if record else contextlib.nullcontext():
        for target, source_path in _selection(settings, request):
            result = DrillResult(target.label, deep=request.deep)
            started = time.monotonic()
            try:
                try:
                    drill_one(settings, target, request, result, source_path, now=now)
                except restore.psycopg_lib().Error as exc:
                    error = pg.classify(str(exc), _server(settings, target), "run the drill on")
                    raise error from None
                result.ok = True
            except LifeboatError as exc:
                result.error, result.hint, result.error_type = (
                    exc.message,
                    exc.hint,
                    type(exc).__name__,
                )
                if isinstance(exc, VerificationFailed) and request.deep and result.scratch:
                    result.hint = DRILL_HINT
            except Exception as exc:
                # A bug must still reach the log and the on-call person, not just a traceback.
                log.exception("unexpected error verifying %s", target.label)
                result.error = f"Unexpected error: {type(exc).__name__}: {exc}."
                result.hint = "This is a lifeboat bug; the traceback is in the log."
                result.error_type = "InternalError"
            result.duration = time.monotonic() - started
            secrets = notify.secrets_of(settings)
            result.error = redact(result.error, *secrets)
            result.hint = redact(result.hint, *secrets)
            if record:
                result.warnings += monitor.record(settings, _event(result, now), result.summary())
            elif result.ok:
                log.info("verify ok: %s", result.summary())
            else:
                log.error("verify failed: %s", result.summary())
            results.append(result)
    return results


def _selection(settings: Settings, request: Request) -> list[tuple[Target, str | None]]:
    if request.latest:
        return [(t, None) for t in settings.targets]
    return [(_target_for_file(settings, request.file), request.file)]


def _target_for_file(settings: Settings, path: str) -> Target:
    """The configured database a file belongs to (its server hosts the scratch restore)."""
    if len(settings.targets) == 1:
        return settings.targets[0]
    parsed = naming.parse(os.path.basename(path))
    for target in settings.targets:
        if parsed is not None and parsed.label == target.label:
            return target
    names = ", ".join(t.label for t in settings.targets)
    raise ConfigError(
        f"Several databases are configured ({names}) and {path} names none of them.",
        "Pick the one whose server should host the scratch restore with --database NAME.",
    )


def _event(result: DrillResult, now: datetime | None) -> notify.Event:
    details: dict = {"level": "deep" if result.deep else "cheap"}
    if result.server:
        details["server"] = result.server
    # Numbers go into the run state and metrics: only what a success proved.
    if result.ok and result.deep:
        details["rto_seconds"] = round(result.rto_seconds, 3)
        details["tables"] = result.tables
        details["rows"] = result.rows
    if result.ok and result.backup_created:
        details["backup_timestamp"] = backup_timestamp(result.backup_created)
        details["backup_age_seconds"] = round(result.backup_age_seconds or 0)
    event = notify.Event.from_result("verify", result, details=details)
    if now is not None:
        event.time = units.iso(now)
    return event


def backup_timestamp(created: str) -> float:
    return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()


def _server(settings: Settings, target: Target) -> ConnInfo:
    """Where the scratch database goes: the drill server, else the database's own."""
    if settings.drill_server:
        return ConnInfo.from_url(settings.drill_server)
    return target.conn


# --------------------------------------------------------------------------- one database


def drill_one(
    settings: Settings,
    target: Target,
    request: Request,
    result: DrillResult,
    path: str | None,
    now: datetime | None = None,
) -> None:
    now = now or backup.utcnow()
    store = backup.store_for(settings)
    timings = result.timings
    if path and path.startswith("s3://"):
        source = restore.source.s3_source(settings, path)
    elif path:
        source = restore.file_source(path)
    else:
        source = restore.latest_source(settings, target, request.backup_type, now)
    result.source = result.file = source.location
    result.warnings += source.warnings
    parsed = naming.parse(os.path.basename(source.location))
    result.type = parsed.type if parsed else ""
    result.size = source.size
    if source.created is not None:
        result.backup_created = units.iso(source.created)
        result.backup_age_seconds = max(0.0, (now - source.created).total_seconds())
    work_dir = os.path.join(store.root, ".drill", target.label)  # downloads from S3
    with lock.hold(store.lock_dir(), f"{target.label}.drill"), _cleaned(source, work_dir):
        # A swap a killed restore left half done is repaired first (unless one is running).
        for line in restore.journal.heal(target.conn, store.lock_dir()):
            log.warning("repaired: %s", line)
            result.warnings.append(f"repaired: {line}")
        clock = time.monotonic()
        source.pin()  # retention leaves a backup being drilled alone
        source.fetch(work_dir, settings.encrypt_identity_file)
        timings["fetch"] = round(time.monotonic() - clock, 3)
        mark = time.monotonic()
        report = restore.check_source(
            source,
            settings.pg_bin_dir,
            identity=settings.encrypt_identity_file,
            trust=manifest_key.trust_for(settings),
        )
        result.checks += report.checks
        if request.deep:  # an encrypted backup needs its key before a scratch exists
            restore.check_decryptable(source, settings)
        timings["check"] = round(time.monotonic() - mark, 3)
        if not request.deep:
            return
        server = _server(settings, target)
        result.server = where_server(server)
        name = (source.manifest or {}).get("database") or target.conn.dbname
        queries = queries_for(settings, target.label)
        with restore.admin(server, set()) as db:
            result.cleaned = cleanup(db, settings.lock_timeout)
            for line in result.cleaned:
                log.warning("cleanup: %s", line)
            result.changed = bool(result.cleaned)
            scratch = scratch_name(name, now)
            # Claimed before it exists: a concurrent cleanup must leave it alone.
            db.execute("SELECT pg_advisory_lock(hashtext(%s))", (LOCK_PREFIX + scratch,))
            like = None if settings.drill_server else dbprops.read(db, name)
            if like is None and not settings.drill_server:  # the original is gone
                like = dbprops.DbProps.from_dict((source.manifest or {}).get("database_properties"))
            # Owner, encoding and locale only, and closed: a drill needs no settings
            # or comment, and its copy of the data must be no more open than the
            # original, so nobody but its owner (and superusers) may connect.
            like = (like or dbprops.DbProps()).closed()
            mark = time.monotonic()
            result.scratch = scratch
            try:
                result.warnings += restore.scratch.create_like(db, scratch, like, server)
                log.info("drill: restoring %s into %s", source.location, scratch)
                loaded = restore.load.load(source, server.with_dbname(scratch), settings)
                timings["restore"] = round(time.monotonic() - mark, 3)
                mark = time.monotonic()
                with pg.connect(server, scratch) as sdb:
                    census = restore.verification.Census(
                        sdb, server.with_dbname(scratch), restore.load.jobs_for(source, settings)
                    )
                    _, _, warnings = restore.verification.verify_restored(
                        sdb, source, loaded, census
                    )
                    result.warnings += warnings
                    result.checks += compare_manifest(sdb, source.manifest, result, census)
                    census.analyze()  # a real restore does it before the swap
                    timings["verify"] = round(time.monotonic() - mark, 3)
                    # What a real restore needs before its swap (not the lock wait or cleanup).
                    result.rto_seconds = round(
                        sum(timings[k] for k in ("fetch", "check", "restore", "verify")), 3
                    )
                    mark = time.monotonic()
                    result.queries = run_queries(sdb, queries)
                    timings["queries"] = round(time.monotonic() - mark, 3)
                failed = [q for q in result.queries if not q["ok"]]
                if failed:
                    raise VerificationFailed(
                        f"{len(failed)} of {len(result.queries)} user check(s) failed on the "
                        f"restored backup: "
                        + "; ".join(f"`{q['sql']}` {q['outcome']}" for q in failed[:3])
                        + ".",
                        DRILL_HINT,
                    )
                if result.queries:
                    result.checks.append(f"{len(result.queries)} user check(s) returned true")
            finally:
                mark = time.monotonic()
                result.scratch_dropped = _drop_scratch(db, scratch, result, settings.lock_timeout)
                timings["cleanup"] = round(time.monotonic() - mark, 3)
                with contextlib.suppress(Exception):
                    db.execute("SELECT pg_advisory_unlock(hashtext(%s))", (LOCK_PREFIX + scratch,))


@contextlib.contextmanager
def _cleaned(source, work_dir: str):
    """Remove downloads a killed drill left (we hold the lock), and ours afterwards."""
    storefs.check_not_link(os.path.dirname(work_dir), "drill work directory")
    storefs.check_not_link(work_dir, "drill work directory")
    if os.path.isdir(work_dir):
        for name in os.listdir(work_dir):
            with contextlib.suppress(OSError):
                storefs.remove(os.path.join(work_dir, name))  # a file, or an unpacked tar
    try:
        yield
    finally:
        source.cleanup()


def where_server(conn: ConnInfo) -> str:
    host = conn.host or "local socket"
    return f"{host}:{conn.port}" if conn.port else host


def scratch_name(dbname: str, now: datetime) -> str:
    return f"{restore.names.base(dbname)}{DRILL_TAG}{now.strftime(restore.names.STAMP)}"


def _drop_scratch(db, scratch: str, result: DrillResult, wait: float) -> bool:
    try:
        restore.drop(db, scratch, wait)
        gone = not db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (scratch,)).fetchone()
    except LockTimeout as exc:  # it names the session in the way, and what to do
        gone = False
        result.warnings.append(str(exc))
    except restore.psycopg_lib().Error as exc:
        gone = False
        text = " ".join(str(exc).split())
        result.warnings.append(
            f"Failed to drop the scratch database {scratch}: {text}; the next drill drops it "
            f'(or `DROP DATABASE "{scratch}"` by hand).'
        )
    return gone


def cleanup(db, wait: float = 60) -> list[str]:
    """Drop scratch databases of drills that died (no session holds their lock)."""
    done = []
    rows = db.execute(
        "SELECT datname FROM pg_database WHERE datname ~ %s AND pg_has_role(datdba, 'MEMBER')"
        " ORDER BY 1",
        (_ANY_DRILL,),
    ).fetchall()
    for (name,) in rows:
        key = LOCK_PREFIX + name
        if not db.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()[0]:
            continue  # a live drill owns it
        try:
            restore.drop(db, name, wait)
            done.append(f"dropped scratch database {name} of an interrupted drill")
        except (restore.psycopg_lib().Error, LockTimeout) as exc:
            log.warning("could not drop %s: %s", name, " ".join(str(exc).split()))
        finally:
            db.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
    return done


# --------------------------------------------------------------------------- checks


def compare_manifest(db, manifest: dict | None, result: DrillResult, census) -> list[str]:
    """Table count and per-table rows of the restored database against the manifest."""
    # Archives' manifests from before exact counts listed partitioned parents too.
    legacy = bool(manifest) and not manifest.get("rows_exact")
    present = sorted(pg.table_estimates(db, partitioned=legacy))
    counts = census.counts(present)
    result.tables, result.rows, result.table_rows = len(present), sum(counts.values()), counts
    if not manifest:
        return [f"restored {len(present)} tables, {result.rows} rows (no manifest to compare)"]
    listed = manifest.get("tables") or {}
    wanted = manifest.get("table_count", len(listed))
    if len(present) != wanted:
        raise VerificationFailed(
            f"The restored backup has {len(present)} tables, its manifest says {wanted}.",
            DRILL_HINT,
        )
    missing = sorted(set(listed) - set(present))
    if missing:
        raise VerificationFailed(
            f"The restored backup lacks table(s) its manifest lists: {', '.join(missing[:5])}.",
            DRILL_HINT,
        )
    checks = [f"table count {len(present)} matches the manifest"]
    if manifest.get("rows_exact"):
        wrong = [
            f"{t}: {counts.get(t, 0)} rows, manifest says {n}"
            for t, n in sorted(listed.items())
            if counts.get(t, 0) != n
        ]
        if wrong:
            raise VerificationFailed(
                f"Restored row counts differ from the manifest: {'; '.join(wrong[:5])}.",
                DRILL_HINT,
            )
        checks.append(f"exact row counts of {len(listed)} tables match the manifest")
        result.rows_exact = True
    else:
        checks.append(f"{result.rows} rows restored (the manifest has estimates only)")
    return checks


def queries_for(settings: Settings, label: str) -> tuple[str, ...]:
    queries = settings.verify_queries or {}
    return tuple(queries.get("*", ())) + tuple(queries.get(label, ()))


def run_queries(db, queries) -> list[dict]:
    """Each user check in its own read-only transaction; all run, each reported."""
    psycopg = restore.psycopg_lib()
    outcomes = []
    for sql in queries:
        item = {"sql": sql, "ok": False, "outcome": ""}
        try:
            with db.transaction():
                db.execute("SET TRANSACTION READ ONLY")
                db.execute(f"SET LOCAL statement_timeout = '{QUERY_TIMEOUT}'")
                cursor = db.execute(sql)
                row = cursor.fetchone() if cursor.description else None
        except psycopg.Error as exc:
            item["outcome"] = f"failed: {' '.join(str(exc).split())}"
        else:
            value = row[0] if row else None
            item["ok"] = value is True
            if value is False:
                item["outcome"] = "returned false"
            elif not item["ok"]:
                item["outcome"] = f"must return one boolean, returned {value!r}"
            else:
                item["outcome"] = "returned true"
        outcomes.append(item)
    return outcomes


def describe(result: DrillResult) -> list[str]:
    """A result as lines for people: the summary, then each check."""
    lines = [result.summary()]
    lines += [f"  - {check}" for check in result.checks]
    if result.deep and result.timings:
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
        lines.append(f"  - timings: {parts}")
    lines += [f"  - {line}" for line in result.cleaned]
    lines += [f"  warning: {w}" for w in result.warnings]
    return lines
