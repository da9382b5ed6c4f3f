"""What `lifeboat status` and `lifeboat pitr status` show about PITR on one host:
the newest base backup, the newest archived WAL and its age (the recovery point),
the recoverable window, and FAILED when archiving is stale or failing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .. import pg
from ..errors import LifeboatError
from ..units import iso
from . import archiving, backrest

BASE_MAX_AGE = timedelta(days=8)  # a full backup weekly, a differential daily
LONG_PAGE_HEADER = 40  # bytes at the start of a segment nothing has written past


def _segment(name: str, per_log: int) -> int:
    return int(name[8:16], 16) * per_log + int(name[16:24], 16)


def pending_writes(db, state: archiving.Archiver) -> bool:
    """WAL was written that is not archived yet (not just an empty segment begun)."""
    if not state.current_wal or not state.last_archived_wal:
        return bool(state.current_wal)
    size = db.execute("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
    per_log = 0x100000000 // int(size.fetchone()[0])
    ahead = _segment(state.current_wal, per_log) - _segment(state.last_archived_wal, per_log)
    return ahead > 1 or (ahead == 1 and state.current_offset > LONG_PAGE_HEADER)


def report(settings, conn, now: datetime | None = None) -> dict:
    """PITR state of the cluster `conn` reaches; never raises for a failed check."""
    now = now or datetime.now(timezone.utc)
    found: dict = {
        "stanza": settings.pitr_stanza, "state": "OK", "ok": True, "problems": [], "hints": []
    }  # fmt: skip
    problems, hints = found["problems"], found["hints"]
    fix = fixes(settings)

    def problem(text: str, hint: str) -> None:
        problems.append(text)
        if hint and hint not in hints:  # what to do, once per cause (notifications, status)
            hints.append(hint)

    try:
        repo = backrest.info(settings)
    except LifeboatError as exc:
        repo = None
        problem(exc.message, exc.hint)
    try:
        with pg.connect(conn) as db:
            state = archiving.archiver(db)
            pending = pending_writes(db, state) if not db.execute(
                "SELECT pg_is_in_recovery()").fetchone()[0] else False  # fmt: skip
    except LifeboatError as exc:
        state, pending = None, False
        problem(exc.message, exc.hint)
    if repo is not None:
        newest = repo.newest
        found["newest_base_backup"] = newest.as_dict() if newest else None
        found["base_backups"] = len(repo.backups)
        found["wal_newest"] = repo.wal_max
        if newest is None:
            problem(f"stanza {settings.pitr_stanza} has no base backup", fix["base"])
        elif now - newest.stopped > BASE_MAX_AGE:
            problem(
                f"newest base backup {newest.label} is {(now - newest.stopped).days} days old",
                fix["base"],
            )
        found["window_from"] = iso(repo.oldest.stopped) if repo.oldest else None
    if state is not None:
        found.update(
            archive_mode=state.archive_mode,
            last_archived_wal=state.last_archived_wal,
            last_archived_time=iso(state.last_archived_time) if state.last_archived_time else None,
            failed_count=state.failed_count,
            last_failed_wal=state.last_failed_wal,
            last_failed_time=iso(state.last_failed_time) if state.last_failed_time else None,
            pending_writes=pending,
        )
        age = (now - state.last_archived_time).total_seconds() if state.last_archived_time else None
        found["wal_age_seconds"] = age
        # Recoverable to the newest archived WAL (a quiet server: to now).
        found["window_to"] = iso(now if not pending else state.last_archived_time or now)
        limit = settings.pitr_max_wal_age_minutes * 60
        if state.archive_mode == "off":
            problem(
                "archive_mode is off (the server needs a restart after provisioning)",
                fix["restart"],
            )
        if state.failing:
            problem(
                f"archive_command fails: {state.failed_count} failure(s), last on "
                f"{state.last_failed_wal} at {iso(state.last_failed_time)}",
                fix["archive"],
            )
        if pending and (age is None or age > limit):
            problem(
                "no WAL archived for "
                + (f"{age / 60:.0f} min" if age is not None else "ever")
                + " although the server writes",
                fix["archive"],
            )
    if repo is None or found.get("window_from") is None:
        found["window_to"] = None
    if problems:
        found.update(state="FAILED", ok=False)
    return found


def fixes(settings) -> dict[str, str]:
    """What to do about each kind of problem, with this host's own commands."""
    pgbackrest = f"pgbackrest --config={settings.pitr_config} --stanza={settings.pitr_stanza}"
    who = f"as {settings.pitr_os_user}"
    return {
        "base": f"Check the base backup cron job (lifeboat_pitr role) and the pgBackRest log in "
        f"{settings.pitr_log_path}; take one now with `{pgbackrest} --type=full backup` {who}.",
        "restart": "Restart PostgreSQL in a quiet moment (archive_mode applies only after a "
        "restart), or provision with -e lifeboat_pitr_allow_restart=true.",
        "archive": f"Run `{pgbackrest} check` {who} and read the PostgreSQL server log for "
        "archive_command errors (repository full, unreachable or not writable); until it "
        "works, nothing after the newest archived WAL can be recovered and WAL piles up in "
        "pg_wal.",
    }


def report_lines(found: dict) -> list[str]:
    base = found.get("newest_base_backup")
    age = found.get("wal_age_seconds")
    wal = found.get("last_archived_wal") or found.get("wal_newest") or "none"
    if age is not None:
        wal += f" at {found['last_archived_time']} ({age / 60:.1f} min ago)"
    window = f"{found.get('window_from') or '-'} .. {found.get('window_to') or '-'}"
    lines = [
        f"PITR stanza {found['stanza']}: {found['state']}",
        "  newest base backup: "
        + (f"{base['label']} ({base['type']}, finished {base['stopped']})" if base else "none"),
        f"  newest archived WAL: {wal}",
        f"  recoverable window: {window}",
    ]
    lines += [f"  problem: {p}" for p in found["problems"]]
    lines += [f"  what to do: {h}" for h in found.get("hints", [])]
    return lines


METRICS_FILE = "lifeboat_pitr.prom"


def metrics_body(found: dict) -> str:
    """Gauges for node_exporter's textfile collector, labelled by stanza."""
    from ..metrics import _label, timestamp

    base = found.get("newest_base_backup") or {}

    def when(value):
        return timestamp(value) if value else None

    series = (
        ("lifeboat_pitr_ok", "1 when archiving and base backups are OK.",
         1.0 if found["ok"] else 0.0),
        ("lifeboat_pitr_wal_age_seconds", "Age of the newest archived WAL (the recovery point).",
         found.get("wal_age_seconds")),
        ("lifeboat_pitr_last_archived_timestamp_seconds", "Unix time of the newest archived WAL.",
         when(found.get("last_archived_time"))),
        ("lifeboat_pitr_archive_failed_count", "archive_command failures (pg_stat_archiver).",
         found.get("failed_count")),
        ("lifeboat_pitr_newest_base_backup_timestamp_seconds",
         "Unix time the newest base backup finished.", when(base.get("stopped"))),
        ("lifeboat_pitr_window_start_timestamp_seconds", "Unix time the recoverable window starts.",
         when(found.get("window_from"))),
    )  # fmt: skip
    label = f'stanza="{_label(found["stanza"])}"'
    lines = []
    for name, help_text, value in series:
        if value is not None:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines.append(f"{name}{{{label}}} {float(value):.17g}")
    return "\n".join(lines) + "\n"


def write_metrics(metrics_dir: str, found: dict) -> str:
    from ..metrics import write_file

    return write_file(metrics_dir, METRICS_FILE, metrics_body(found))
