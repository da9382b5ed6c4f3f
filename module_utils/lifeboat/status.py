"""Backup status: is every database's newest backup recent enough?

`report` looks at each store once (one listing per store, no per-file round
trips) plus the run state `backup.run` leaves in `<backup_dir>/.state/`, and
gives per database and backup type: the newest complete backup, its age and
size, where it is (local, S3), the last failure when it is newer than the
last success, and a state:

  OK       newest complete backup within the type's age limit
  STALE    newest complete backup older than the limit
  FAILED   the last attempt failed (newer than the last success)
  MISSING  no complete backup of that type, and its first scheduled run
           should have happened (see `first_due`); before that the row is
           OK, saying when the first one is due
  FUTURE   a backup is dated in the future (clock skew): it would pass for
           the newest forever; age and `restore --latest` use the newest
           sane one, and this row stays NOT OK until the file is dealt with

`fleet` merges the reports of many hosts (the status playbook) and
`render` prints either as one table.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, time, timedelta, timezone

from .errors import ConfigError, LifeboatError
from .store import Entry
from .units import human_size, iso

STATES = ("OK", "STALE", "FAILED", "MISSING", "FUTURE")
# A backup dated further past this host's clock than this is future-dated (clock skew).
FUTURE_SLACK = timedelta(minutes=5)
# Hours; daily backups run once a day, so 26 h leaves two hours of slack.
DEFAULT_MAX_AGE_HOURS = {"daily": 26, "weekly": 8 * 24, "monthly": 32 * 24}
PLACEHOLDER_URL = "postgresql://localhost/lifeboat-status"
# Written by the lifeboat role when it provisions a host (<backup_dir>/.state/):
# when backups start being expected. Without it, a database's first backup.
PROVISIONED_FILE = "provisioned_at"
# The guide's schedule: weekly on Sunday (weekday 6), monthly on the 1st.
SCHEDULE_WEEKDAY, SCHEDULE_MONTHDAY = 6, 1
# What the daily limit allows beyond a day (26 h): a late or jittered run still counts.
SLACK = timedelta(hours=2)


def check_max_age(value) -> dict:
    """Thresholds per type in hours; missing types keep the defaults, 0 stops checking one."""
    if value in (None, ""):
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"status_max_age_hours must be a mapping of type to hours, got {value!r}.",
            "Example: {daily: 26, weekly: 192, monthly: 768}.",
        )
    limits = dict(DEFAULT_MAX_AGE_HOURS)
    for key, hours in value.items():
        if key not in DEFAULT_MAX_AGE_HOURS:
            raise ConfigError(
                f"status_max_age_hours has an unknown backup type {key!r}.",
                "Use daily, weekly and monthly.",
            )
        try:
            hours = float(hours or 0)
        except (TypeError, ValueError):
            raise ConfigError(
                f"status_max_age_hours.{key} must be a number of hours, got {hours!r}.",
                "Example: 26 for daily; 0 to stop checking that type.",
            ) from None
        if hours < 0:
            raise ConfigError(f"status_max_age_hours.{key} is negative.", "Use 0 or more.")
        limits[key] = hours
    return limits


def load(*layers: dict):
    """Settings for a status check, where databases are optional.

    Returns (settings, labels): labels are the configured databases' names, or
    None when none is configured (then every database found in the store counts).
    """
    from .settings import resolve  # settings imports this module

    configured = any(
        (layer or {}).get("database_url") or (layer or {}).get("databases") for layer in layers
    )
    settings = resolve({"database_url": PLACEHOLDER_URL}, *layers)
    labels = [t.label for t in settings.targets] if configured else None
    return settings, labels


def stores_for(settings) -> list:
    """The local store, plus S3 when a bucket is configured."""
    from .store import LocalStore

    stores = [LocalStore(settings.backup_dir)]
    if getattr(settings, "s3_bucket", None):
        from .s3 import S3Store  # boto3 only when S3 is configured

        stores.append(S3Store.from_settings(settings))
    return stores


def provisioned_at(backup_dir: str) -> datetime | None:
    """The anchor the lifeboat role wrote, or None (not provisioned by it, unreadable)."""
    from . import storefs
    from .monitor import STATE_DIR

    try:
        text = storefs.read(os.path.join(backup_dir, STATE_DIR, PROVISIONED_FILE), "stamp")
    except (OSError, LifeboatError):
        return None
    return parse_time(text.decode("utf-8", "replace").strip())


def first_due(backup_type: str, anchor: datetime, max_age_hours: float) -> datetime:
    """By when the first scheduled run of a type after `anchor` should have happened.

    The end of the first scheduled day after the anchor's day (in the host's local
    time, as cron counts days) plus SLACK: daily the next day, weekly the first
    Sunday, monthly the first 1st. Never later than the type's age limit after the
    anchor, which is what a backup taken at the anchor would be held to.
    """
    local = anchor.astimezone()
    day = local.date() + timedelta(days=1)
    if backup_type == "weekly":
        day += timedelta(days=(SCHEDULE_WEEKDAY - day.weekday()) % 7)
    elif backup_type == "monthly" and day.day != SCHEDULE_MONTHDAY:
        day = (day.replace(day=1) + timedelta(days=32)).replace(day=SCHEDULE_MONTHDAY)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=local.tzinfo) + SLACK
    return min(end.astimezone(timezone.utc), anchor + timedelta(hours=max_age_hours))


def parse_time(value) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return None


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m"


def human_hours(hours: float) -> str:
    return f"{hours / 24:g}d" if hours >= 48 and hours % 24 == 0 else f"{hours:g}h"


def evaluate(
    database: str,
    backup_type: str,
    newest,
    present: dict,
    state: dict,
    max_age_hours: float,
    now: datetime,
    future=None,
    due: datetime | None = None,
) -> dict:
    """One row: pure, so the rules are unit-tested without a store.

    `newest` is the newest complete Entry (or None) not dated in the future,
    `future` the newest future-dated one (or None), `present` maps a store kind
    to whether it holds that backup (None: not known), `state` the run state,
    `due` when the first backup of this type is due (None: already).
    """
    row = {
        "database": database,
        "type": backup_type,
        "state": "OK",
        "reason": "",
        "newest": "",
        "newest_at": "",
        "age_seconds": None,
        "age": "",
        "size": None,
        "local": present.get("local"),
        "s3": present.get("s3"),
        "last_failure_at": "",
        "last_error": "",
        "last_hint": "",
        "last_attempt_at": state.get("last_attempt_at", ""),
        "max_age_hours": max_age_hours,
        "future": "",
        "due_at": iso(due) if due else "",
    }
    created = None
    if newest is not None:
        created = newest.name.created
        age = (now - created).total_seconds()
        row.update(
            newest=newest.name.name,
            newest_at=iso(created),
            age_seconds=int(age),
            age=human_age(age),
            size=newest.size,
        )
    success = max(filter(None, [created, parse_time(state.get("last_success_at"))]), default=None)
    failure = parse_time(state.get("last_failure_at"))
    if failure is not None and (success is None or failure > success):
        row.update(
            state="FAILED",
            last_failure_at=iso(failure),
            last_error=state.get("last_error", ""),
            last_hint=state.get("last_hint", ""),
            reason=f"last attempt failed at {iso(failure)}: "
            f"{state.get('last_error') or 'unknown error'}",
        )
    elif future is not None:
        ahead = human_age((future.name.created - now).total_seconds())
        row.update(
            state="FUTURE",
            future=future.name.name,
            reason=f"{future.name.name} is dated {ahead} in the future (clock skew?); "
            "it would pass for the newest backup: fix the clock of the host that wrote it, "
            "then move the file away",
        )
    elif newest is None and due is not None and now < due:
        row.update(reason=f"no {backup_type} backup yet; the first is due by {iso(due)}")
    elif newest is None:
        since = f" (the first was due by {iso(due)})" if due else ""
        row.update(state="MISSING", reason=f"no complete {backup_type} backup{since}")
    elif row["age_seconds"] > max_age_hours * 3600:
        row.update(
            state="STALE",
            reason=f"newest {backup_type} backup is {row['age']} old "
            f"(limit {human_hours(max_age_hours)})",
        )
    return row


def report(
    settings,
    stores: list | None = None,
    labels: list[str] | None = None,
    now: datetime | None = None,
    host: str | None = None,
) -> dict:
    """Status of every (database, type) on this host; never raises for a store error."""
    from .monitor import read_states

    now = now or datetime.now(timezone.utc)
    stores = stores_for(settings) if stores is None else stores
    limits = {t: h for t, h in check_max_age(settings.status_max_age_hours).items() if h > 0}
    errors = []
    listed = {}  # store kind -> {path: Entry} of complete backups
    for store in stores:
        try:
            listed[store.kind] = {e.path: e for e in store.list() if e.complete}
        except LifeboatError as exc:
            errors.append(str(exc))
    states = read_states(settings.backup_dir)
    if labels is not None:  # configured databases: what a killed restore left on them
        errors += interrupted_restores(settings)
    if labels is None:
        labels = sorted(
            {
                e.name.label
                for found in listed.values()
                for e in found.values()
                if e.name.type in limits
            }
            | {db for db, t in states if t in limits}
        )
        if not labels and not errors:
            # Nothing configured and nothing found is not "all OK".
            errors.append(
                f"No backups in {settings.backup_dir} and no database configured. "
                "Set DATABASE_URL (or lifeboat_database_url) so missing backups are reported, "
                "or check lifeboat_backup_dir."
            )
    kinds = [store.kind for store in stores]
    newest_of: dict[tuple[str, str], Entry] = {}  # one pass over every listing
    future_of: dict[tuple[str, str], Entry] = {}  # dated past the clock: never "newest"
    first_of: dict[str, datetime] = {}  # a database's oldest backup of any type
    for found in listed.values():
        for e in found.values():
            key = (e.name.label, e.name.type)
            into = future_of if e.name.created > now + FUTURE_SLACK else newest_of
            if key not in into or e.name > into[key].name:
                into[key] = e
            if into is newest_of:
                first_of[e.name.label] = min(first_of.get(e.name.label, now), e.name.created)
    provisioned = provisioned_at(settings.backup_dir)
    rows = []
    for label in labels:
        # Backups are expected from provisioning, or this database's first backup if later.
        anchor = max(filter(None, [provisioned, first_of.get(label)]), default=None)
        for backup_type, hours in limits.items():
            newest = newest_of.get((label, backup_type))
            present = {}
            for kind in kinds:
                if kind not in listed:
                    present[kind] = None  # could not look
                else:
                    present[kind] = newest is not None and newest.path in listed[kind]
            if "local" in present and newest is not None and "local" in listed:
                local = listed["local"].get(newest.path)
                newest = local or newest
            rows.append(
                evaluate(
                    label,
                    backup_type,
                    newest,
                    present,
                    states.get((label, backup_type), {}),
                    hours,
                    now,
                    future_of.get((label, backup_type)),
                    first_due(backup_type, anchor, hours) if anchor else None,
                )
            )
    if getattr(settings, "pitr", False):  # the cluster's WAL archive (pgBackRest)
        rows.append(pitr_row(settings, labels, now))
    return summarize(rows, errors, host or socket.gethostname(), now)


def pitr_row(settings, labels, now: datetime) -> dict:
    """One row for point-in-time recovery: newest archived WAL (its age is the
    recovery point), newest base backup, recoverable window; FAILED when archiving
    is stale or failing (pitr/report.py)."""
    from .conninfo import ConnInfo
    from .pitr.report import report as pitr_report

    if settings.targets and labels:
        conn = settings.targets[0].conn
    else:  # no database configured: the cluster's own socket, as this OS user
        conn = ConnInfo.parse(
            f"host={settings.pitr_pg_socket_dir} port={settings.pitr_pg_port} dbname=postgres"
        )
    found = pitr_report(settings, conn, now)
    base = found.get("newest_base_backup")
    age = found.get("wal_age_seconds")
    reason = (
        f"base backup {base['label']} ({base['type']}, {base['stopped']})" if base else "no base"
    ) + f"; window {found.get('window_from') or '-'} .. {found.get('window_to') or '-'}"
    if found["problems"]:
        reason = "; ".join(found["problems"]) + "; " + reason
    return {
        "database": f"stanza {found['stanza']}",
        "type": "pitr",
        "state": found["state"],
        "reason": reason,
        "newest": found.get("last_archived_wal") or "",
        "newest_at": found.get("last_archived_time") or "",
        "age_seconds": int(age) if age is not None else None,
        "age": human_age(age) if age is not None else "",
        "size": None,
        "last_hint": " ".join(found.get("hints", [])),  # what to do (shown after the reason)
        "pitr": found,
    }


def interrupted_restores(settings) -> list[str]:
    """Per configured database with a restore journal: its state and what to run.

    Connects only where a journal exists; repairs nothing (backup, restore and
    verify do).
    """
    from .lock import any_journal
    from .store import LocalStore

    lock_dir = LocalStore(settings.backup_dir).lock_dir()
    if not any_journal(lock_dir):
        return []
    from .restore.journal import state  # the engine's restore package, only when needed

    found = []
    for target in settings.targets:
        try:
            line = state(target.conn, lock_dir)
        except (LifeboatError, OSError) as exc:
            line = f"{target.label}: could not check for an interrupted restore: {exc}"
        if line:
            found.append(line)
    return found


def summarize(rows: list[dict], errors: list[str], host: str, now: datetime) -> dict:
    counts = {state: 0 for state in STATES}
    for row in rows:
        row["host"] = row.get("host") or host
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return {
        "host": host,
        "checked_at": iso(now),
        "ok": not errors and all(row["state"] == "OK" for row in rows),
        "counts": counts,
        "rows": rows,
        "errors": errors,
    }


def fleet(hosts: dict, now: datetime | None = None) -> dict:
    """Merge per-host results ({host: this module's registered result}) into one report.

    A host without rows (unreachable, failed) becomes an UNKNOWN row: silence
    is never taken for OK.
    """
    rows, errors = [], []
    for host, found in hosts.items():
        found = found or {}
        if found.get("rows") is None or found.get("failed") or found.get("unreachable"):
            why = found.get("msg") or "no status returned (host skipped or failed)"
            rows.append(
                {"host": host, "database": "", "type": "", "state": "UNKNOWN", "reason": why}
            )
            errors.append(f"{host}: {why}")
            continue
        rows += [dict(row, host=host) for row in found["rows"]]
        errors += [f"{host}: {error}" for error in found.get("errors", [])]
    merged = summarize(rows, errors, "", now or datetime.now(timezone.utc))
    merged["hosts"] = len(hosts)
    del merged["host"]
    return merged


def _where(row: dict) -> str:
    return "+".join(kind for kind in ("local", "s3") if row.get(kind)) or "-"


def render(result: dict, show_host: bool = True) -> list[str]:
    """A report (or a fleet report) as a table plus a one-line summary."""
    header = ["HOST"] if show_host else []
    header += ["DATABASE", "TYPE", "STATE", "NEWEST (UTC)", "AGE", "SIZE", "WHERE", "DETAIL"]
    table = [header]
    for row in result["rows"]:
        cells = [row.get("host", "")] if show_host else []
        size = row.get("size")
        detail = ""
        if row["state"] != "OK" or row.get("reason"):  # an OK row may say when one is due
            detail = row.get("reason", "")
            if row.get("last_hint"):
                detail += f" -> {row['last_hint']}"
        cells += [
            row.get("database", ""),
            row.get("type", ""),
            row["state"],
            row.get("newest_at", "").replace("T", " ").replace("Z", ""),
            row.get("age", ""),
            human_size(size) if size is not None else "",
            _where(row) if row.get("newest") else "-",
            detail,
        ]
        table.append(cells)
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header) - 1)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + str(r[-1]) for r in table
    ]
    lines = [line.rstrip() for line in lines]
    lines.append(summary_line(result))
    lines += [f"error: {error}" for error in result.get("errors", [])]
    return lines


def summary_line(result: dict) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in result["counts"].items() if n)
    verdict = "all OK" if result["ok"] else "NOT OK"
    return f"{len(result['rows'])} checked: {counts or 'nothing configured'}; {verdict}"
