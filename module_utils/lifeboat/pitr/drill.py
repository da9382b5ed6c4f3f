"""A point-in-time drill: the database as it was N minutes ago, restored through the
real path (temporary instance, dump, scratch database, verification) into a drill
database beside it, measured, then dropped. The live database is never touched.

Recovery point: how old the newest archived WAL is (what a crash now would lose).
RTO: the wall time of the whole restore to a time."""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timedelta, timezone

from .. import drill as dump_drill
from .. import eventlog, monitor, notify, pg, restore
from ..conninfo import redact
from ..errors import ConfigError, LifeboatError
from ..units import iso
from .report import report

log = logging.getLogger("lifeboat")
RECORD_TYPE = "pitr"  # run state <db>-pitr.json, metrics type="pitr" (a dump drill: its type)


def run(settings, minutes: float, now: datetime | None = None) -> dict:
    """Drill one configured database; returns what was measured (ok False on failure).

    Recorded like a dump drill (kind verify): the backup log, the run state,
    the metrics and the notifications, whatever the outcome.
    """
    if len(settings.targets) != 1:
        raise ConfigError(
            "A point-in-time drill restores one database.",
            "Pick it with --database NAME.",
        )
    target = settings.targets[0]
    now = now or datetime.now(timezone.utc).replace(microsecond=0)
    when = now - timedelta(minutes=minutes)
    # The dump drills' tag and lock: their cleanup drops what a killed drill left,
    # never the scratch of a drill still holding its lock.
    scratch = dump_drill.scratch_name(target.conn.dbname, now)
    found = {
        "database": target.conn.dbname,
        "time": iso(when),
        "scratch": scratch,
        "ok": False,
        "error": "",
        "hint": "",
        "error_type": "",
        "warnings": [],
    }
    started = time.monotonic()
    with eventlog.attached(settings, found["warnings"]):
        try:
            try:
                drill_one(settings, target, when, now, found)
            except restore.psycopg_lib().Error as exc:  # the server went away mid-way
                raise pg.classify(str(exc), target.conn, "run the drill on") from None
            found["ok"] = True
        except LifeboatError as exc:
            found.update(error=exc.message, hint=exc.hint, error_type=type(exc).__name__)
        except Exception as exc:
            # A bug must still reach the log and the on-call person, not just a traceback.
            log.exception("unexpected error in the point-in-time drill of %s", target.label)
            found.update(
                error=f"Unexpected error: {type(exc).__name__}: {exc}.",
                hint="This is a lifeboat bug; the traceback is in the log. The live database "
                "was not touched.",
                error_type="InternalError",
            )
        found["duration"] = round(time.monotonic() - started, 3)
        secrets = notify.secrets_of(settings)
        found["error"] = redact(found["error"], *secrets)
        found["hint"] = redact(found["hint"], *secrets)
        found["warnings"] += monitor.record(
            settings, _event(target.label, found, now), describe(found)[0]
        )
    return found


def drill_one(settings, target, when: datetime, now: datetime, found: dict) -> None:
    """Restore `target` as it was at `when` into the drill database, measure, drop it."""
    scratch = found["scratch"]
    point = report(settings, target.conn, now)
    found["recovery_point_seconds"] = point.get("wal_age_seconds")
    request = restore.Request(time=iso(when), target_db=scratch, skip_pre_backup=True, confirm=True)
    result = restore.RestoreResult(scratch)
    started = time.monotonic()
    try:
        with restore.admin(target.conn, {scratch}) as db:
            lock = dump_drill.LOCK_PREFIX + scratch
            db.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock,))
            try:
                restore.restore_one(settings, target, request, result, now=now)
                found.update(
                    rto_seconds=round(time.monotonic() - started, 1),
                    tables=result.tables,
                    rows=result.rows,
                    recovered_to=result.recovered_to,
                    source=result.source,
                )
            finally:
                with contextlib.suppress(Exception):
                    restore.drop(db, scratch, settings.lock_timeout)
                with contextlib.suppress(Exception):
                    found["scratch_dropped"] = not db.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (scratch,)
                    ).fetchone()
                with contextlib.suppress(pg._psycopg().Error):
                    db.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))
    finally:
        found["warnings"] += result.warnings


def _event(label: str, found: dict, now: datetime) -> notify.Event:
    details: dict = {"level": "point-in-time", "target_time": found["time"]}
    if found["ok"]:  # numbers go into the run state and metrics: only what a success proved
        details.update(
            rto_seconds=found["rto_seconds"],
            tables=found["tables"],
            rows=found["rows"],
            recovered_to=found["recovered_to"] or "-",
        )
        if found.get("recovery_point_seconds") is not None:
            details["recovery_point_seconds"] = round(found["recovery_point_seconds"])
    return notify.Event(
        kind="verify",
        database=label,
        type=RECORD_TYPE,
        ok=found["ok"],
        file=found.get("source", ""),
        duration=found["duration"],
        error=found["error"],
        hint=found["hint"],
        error_type=found["error_type"],
        warnings=list(found["warnings"]),
        time=iso(now),
        details=details,
    )


def describe(found: dict) -> list[str]:
    if not found["ok"]:
        return [f"FAILED point-in-time drill of {found['database']} to {found['time']}: "
                f"{found['error']} {found['hint']}".strip()]  # fmt: skip
    point = found.get("recovery_point_seconds")
    point = f"{point:.0f}s (age of the newest archived WAL)" if point is not None else "unknown"
    return [
        f"OK point-in-time drill of {found['database']} to {found['time']}: restored in "
        f"{found['rto_seconds']:.1f}s (RTO), {found['tables']} tables and {found['rows']} rows "
        f"verified, last transaction recovered committed at {found['recovered_to'] or '-'}, "
        f"recovery point now {point}, drill database dropped"
    ]
