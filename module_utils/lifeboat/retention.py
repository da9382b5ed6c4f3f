"""Retention: a pure function from (backups, policy, now) to what to delete.

Rules, in order of precedence:
- only complete backups (manifest present) that lifeboat named are considered;
- the newest complete backup of each database and type is always kept;
- scheduled types keep an age window: daily N days, weekly N weeks, monthly
  N calendar months; pre-restore backups keep the newest N.
The caller deletes; listing failures must stop the caller before it gets here.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import ConfigError

DEFAULT_POLICY = {"daily": 7, "weekly": 4, "monthly": 12, "pre-restore": 5}


@dataclass(frozen=True)
class Candidate:
    """What retention needs to know about one stored backup."""

    key: str  # unique id in its store (relative path)
    label: str  # database label
    type: str
    created: datetime
    complete: bool
    seq: int = 0  # `-1`, `-2` ...: later backups from the same second


def check_policy(policy: dict | None) -> dict[str, int]:
    merged = dict(DEFAULT_POLICY)
    for key, value in (policy or {}).items():
        if key not in DEFAULT_POLICY:
            raise ConfigError(
                f"Unknown retention type {key!r}.", f"Use {', '.join(DEFAULT_POLICY)}."
            )
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"Retention for {key} must be a whole number of at least 1.",
                "Example: {daily: 7, weekly: 4, monthly: 12}.",
            )
        merged[key] = value
    return merged


def subtract_months(moment: datetime, months: int) -> datetime:
    year, month = divmod(moment.year * 12 + moment.month - 1 - months, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def cutoff(backup_type: str, amount: int, now: datetime) -> datetime | None:
    """Backups created before this are out of the window (None: count-based)."""
    if backup_type == "daily":
        return now - timedelta(days=amount)
    if backup_type == "weekly":
        return now - timedelta(weeks=amount)
    if backup_type == "monthly":
        return subtract_months(now, amount)
    return None


def plan(
    backups: Iterable[Candidate],
    policy: dict[str, int],
    now: datetime,
    types: Iterable[str] | None = None,
) -> list[Candidate]:
    """The backups to delete, oldest first. Deletes nothing itself."""
    wanted = set(types) if types is not None else set(policy)
    groups: dict[tuple[str, str], list[Candidate]] = {}
    for backup in backups:
        if backup.complete and backup.type in wanted:
            groups.setdefault((backup.label, backup.type), []).append(backup)
    doomed = []
    for (_, backup_type), members in groups.items():
        members.sort(key=lambda b: (b.created, b.seq, b.key), reverse=True)
        amount = policy[backup_type]
        limit = cutoff(backup_type, amount, now)
        for index, backup in enumerate(members[1:], start=1):  # [0], the newest, stays
            expired = backup.created < limit if limit is not None else index >= amount
            if expired:
                doomed.append(backup)
    return sorted(doomed, key=lambda b: (b.created, b.seq, b.key))
