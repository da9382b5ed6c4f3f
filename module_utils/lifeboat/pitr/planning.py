"""What a restore to a time needs, checked before anything is touched."""

from __future__ import annotations

from datetime import datetime, timedelta

from .. import units
from ..errors import RestoreRefused
from . import backrest, instance
from .config import parse_target

WAL_HEADROOM = 256 * 1024 * 1024  # pg_wal of the temporary instance while it replays
FUTURE_SLACK = timedelta(seconds=5)
SYSTEM_DATABASES = ("postgres", "template0", "template1")


def check_time(when: datetime, repo: backrest.Repo, now: datetime, settings) -> backrest.BaseBackup:
    """The base backup to start from; refuses a time in the future or before the oldest."""
    shown = when.isoformat(sep=" ")
    if when > now + FUTURE_SLACK:
        raise RestoreRefused(
            f"Failed to restore to {shown}: that time is in the future (now is "
            f"{now.isoformat(sep=' ')}).",
            "Give a time in the past, with its UTC offset (e.g. +00).",
        )
    base = repo.base_for(when)
    if repo.oldest is None:  # no window at all: no time would do (e.g. the repository is gone)
        said = f" (pgBackRest: {repo.status})" if repo.status and repo.status != "ok" else ""
        raise RestoreRefused(
            f"Failed to restore to {shown}: stanza {settings.pitr_stanza} has no base "
            f"backup yet{said}.",
            f"Check the repository (`pgbackrest --config={settings.pitr_config} "
            f"--stanza={settings.pitr_stanza} info` as {settings.pitr_os_user}) and take a "
            "full base backup; until then restore a dump backup (`lifeboat list`).",
        )
    if base is None:
        oldest = repo.oldest
        raise RestoreRefused(
            f"Failed to restore to {shown}: the time is before the recoverable window: the "
            f"oldest base backup ({oldest.label}) finished at {oldest.stopped.isoformat(sep=' ')}.",
            "Pick a later time (`lifeboat status` shows the window) or restore a dump backup "
            "from before it (`lifeboat list`).",
        )
    return base


def space_needed(db, database: str) -> int:
    """Bytes the temporary instance and the dump of `database` need, at most."""
    names = (database, *SYSTEM_DATABASES)
    # pg_database_size needs CONNECT: a database the role may not reach counts as empty.
    size, system = db.execute(
        "SELECT coalesce(sum(s) FILTER (WHERE datname = %s), 0),"
        " coalesce(sum(s) FILTER (WHERE datname <> %s), 0) FROM ("
        "  SELECT datname, CASE WHEN has_database_privilege(datname, 'CONNECT')"
        "   THEN pg_database_size(datname) ELSE 0 END AS s"
        "  FROM pg_database WHERE datname = ANY(%s)) d",
        (database, database, list(names)),
    ).fetchone()
    # The database twice: its files in the instance, then its dump (at most as large).
    return int(size) * 2 + int(system) + WAL_HEADROOM


def plan_for(settings, database: str, when: datetime, now: datetime, db) -> dict:
    """Base backup, WAL range and disk space; raises RestoreRefused / DiskFull."""
    repo = backrest.info(settings)
    base = check_time(when, repo, now, settings)
    needed = space_needed(db, database)
    free = instance.check_space(settings, needed)
    return {
        "time": when.isoformat(sep=" "),
        "stanza": settings.pitr_stanza,
        "base_backup": base.as_dict(),
        "wal_from": base.wal_start,
        "wal_to": repo.wal_max,
        "pg_version": repo.pg_version,
        "space_needed": needed,
        "space_free": free,
        "work_dir": settings.pitr_work_dir,
        "leftovers": instance.leftovers(settings),
        "repo": repo,
    }


def plan(settings, target, request, now: datetime) -> dict:
    """A dry run's view of a restore to a time (restore/planning.py shows it)."""
    from .. import pg

    when = parse_target(request.time)
    with pg.connect(target.conn) as db:
        planned = plan_for(settings, target.conn.dbname, when, now, db)
    planned.pop("repo")
    return planned


def describe_plan(item: dict) -> list[str]:
    pitr = item["pitr"]
    base = pitr["base_backup"]
    lines = [
        f"{item['database']}: would restore to {pitr['time']} from pgBackRest stanza "
        f"{pitr['stanza']}",
        f"  base backup: {base['label']} ({base['type']}, finished {base['stopped']}, "
        f"{units.human_size(base['size'])} cluster)",
        f"  WAL: from {pitr['wal_from']} up to at most {pitr['wal_to']} (replayed until the time)",
        f"  temporary instance in {pitr['work_dir']}: needs about "
        f"{units.human_size(pitr['space_needed'])}, {units.human_size(pitr['space_free'])} free",
    ]
    lines += [f"  would remove leftover instance {path}" for path in pitr["leftovers"]]
    return lines
