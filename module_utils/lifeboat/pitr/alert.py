"""Telling people when point-in-time recovery breaks, without a mail every five minutes.

`lifeboat pitr status` runs from cron every five minutes (lifeboat_pitr role).
Each run compares its state with the last one recorded in the run state
(`<backup_dir>/.state/stanza <name>-pitr.json`) and records only a change,
through the same path as a failed backup (monitor.record: backup log, run
state, notifications on every configured channel, notify_on):

- OK -> FAILED (or FAILED on the first check): a failure naming every cause
  and what to do;
- FAILED -> OK: a success ("recovered"), sent when notify_on has success;
- still FAILED a day after the last message: the same failure again, the
  cadence of a daily backup that keeps failing.

The first check that finds everything OK only saves the state (no mail).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

from .. import monitor, notify, storefs
from ..errors import LifeboatError
from ..status import parse_time
from ..units import iso

log = logging.getLogger("lifeboat")

KIND = "pitr"  # event kind and run-state type
REMIND_AFTER = timedelta(hours=24)


def database(settings) -> str:
    """What the event and run state are filed under: the status row's name."""
    return f"stanza {settings.pitr_stanza}"


def event(settings, found: dict, now: datetime) -> notify.Event:
    """The status as an event: every problem and what to do about it."""
    base = found.get("newest_base_backup") or {}
    details = {
        "stanza": found["stanza"],
        "newest_base_backup": f"{base['label']} ({base['type']}, finished {base['stopped']})"
        if base
        else "none",
        "newest_archived_wal": " at ".join(
            filter(None, [found.get("last_archived_wal"), found.get("last_archived_time")])
        )
        or "none",
        "recoverable_window": f"{found.get('window_from') or '-'} .. "
        f"{found.get('window_to') or '-'}",
    }
    if found.get("wal_age_seconds") is not None:  # numeric: kept in the run state too
        details["wal_age_seconds"] = round(found["wal_age_seconds"])
    return notify.Event(
        kind=KIND,
        database=database(settings),
        type=KIND,
        ok=found["ok"],
        error="; ".join(found["problems"]),
        hint=" ".join(found.get("hints", [])),
        error_type="" if found["ok"] else "PitrFailed",
        time=iso(now),
        details=details,
    )


def previous(settings) -> dict:
    """The last recorded PITR state ({} when none or unreadable)."""
    path = monitor.state_path(settings.backup_dir, database(settings), KIND)
    try:
        return json.loads(storefs.read(path, "state file"))
    except (OSError, ValueError, LifeboatError):
        return {}


def watch(settings, found: dict, now: datetime | None = None) -> list[str]:
    """Record and notify a change of the PITR state; returns warnings, never raises."""
    now = now or datetime.now(timezone.utc)
    if not getattr(settings, "backup_dir", None):
        return []
    try:
        last = previous(settings)
        happened = event(settings, found, now)
        result = last.get("last_pitr_result")
        if result is None and happened.ok:
            monitor.save_state(settings.backup_dir, happened)  # the baseline: nothing to say
            return []
        if result == happened.outcome:
            told = parse_time(last.get("last_pitr_at"))
            if happened.ok or (told is not None and now - told < REMIND_AFTER):
                return []  # no change, and no reminder due
            since = last.get("last_pitr_since") or last.get("last_pitr_at")
            happened.details["failing_since"] = since
        elif happened.ok and result == "failure":
            happened.details["recovered"] = "archiving and base backups are OK again"
        return monitor.record(settings, happened)
    except Exception as exc:  # the status itself must still be shown and exit right
        warning = notify.clean(
            f"Failed to record the PITR state: {exc}.", notify.secrets_of(settings)
        )
        log.warning("%s", warning)
        return [warning]
