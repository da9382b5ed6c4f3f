"""A point-in-time drill: the database as it was N minutes ago, restored through the
real path (temporary instance, dump, scratch database, verification) into a drill
database beside it, measured, then dropped. The live database is never touched.

Recovery point: how old the newest archived WAL is (what a crash now would lose).
RTO: the wall time of the whole restore to a time."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timedelta, timezone

from .. import drill as dump_drill
from .. import pg, restore
from ..errors import ConfigError, LifeboatError
from ..units import iso
from .report import report


def run(settings, minutes: float, now: datetime | None = None) -> dict:
    """Drill one configured database; returns what was measured (ok False on failure)."""
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
    }
    point = report(settings, target.conn, now)
    found["recovery_point_seconds"] = point.get("wal_age_seconds")
    request = restore.Request(time=iso(when), target_db=scratch, skip_pre_backup=True, confirm=True)
    result = restore.RestoreResult(scratch)
    started = time.monotonic()
    with restore.admin(target.conn, {scratch}) as db:
        db.execute("SELECT pg_advisory_lock(hashtext(%s))", (dump_drill.LOCK_PREFIX + scratch,))
        try:
            restore.restore_one(settings, target, request, result, now=now)
            found.update(
                ok=True,
                rto_seconds=round(time.monotonic() - started, 1),
                tables=result.tables,
                rows=result.rows,
                recovered_to=result.recovered_to,
                source=result.source,
            )
        except LifeboatError as exc:
            found.update(error=exc.message, hint=exc.hint)
        finally:
            with contextlib.suppress(Exception):
                restore.drop(db, scratch)
            found["scratch_dropped"] = not db.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (scratch,)
            ).fetchone()
            with contextlib.suppress(pg._psycopg().Error):
                db.execute(
                    "SELECT pg_advisory_unlock(hashtext(%s))", (dump_drill.LOCK_PREFIX + scratch,)
                )
    found["warnings"] = result.warnings
    return found


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
