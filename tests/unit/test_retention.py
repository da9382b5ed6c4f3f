from datetime import datetime, timedelta, timezone

import pytest

from lifeboat import retention
from lifeboat.errors import ConfigError
from lifeboat.retention import Candidate, plan, subtract_months

NOW = datetime(2025, 3, 31, 2, 0, tzinfo=timezone.utc)
POLICY = retention.check_policy({})


def make(type_, created, label="app", complete=True):
    return Candidate(f"{type_}/{label}-{created.isoformat()}", label, type_, created, complete)


def days_ago(n, type_="daily", **kw):
    return make(type_, NOW - timedelta(days=n), **kw)


def test_daily_keeps_seven_days():
    backups = [days_ago(n) for n in range(12)]
    doomed = plan(backups, POLICY, NOW)
    assert sorted(NOW - b.created for b in doomed) == [timedelta(days=n) for n in range(8, 12)]


def test_boundary_backup_exactly_at_cutoff_is_kept():
    backups = [days_ago(0), days_ago(7)]
    assert plan(backups, POLICY, NOW) == []


def test_newest_complete_backup_is_never_deleted_even_when_expired():
    backups = [days_ago(30), days_ago(40)]
    doomed = plan(backups, POLICY, NOW)
    assert doomed == [backups[1]]


def test_incomplete_backups_are_neither_deleted_nor_counted_as_newest():
    newest_incomplete = days_ago(0, complete=False)
    old_complete = days_ago(20)
    older_complete = days_ago(21)
    doomed = plan([newest_incomplete, old_complete, older_complete], POLICY, NOW)
    assert doomed == [older_complete]


def test_types_and_databases_are_independent():
    backups = [
        days_ago(20, label="a"),
        days_ago(20, label="b"),
        days_ago(100, "weekly"),
        days_ago(200, "monthly"),
    ]
    assert plan(backups, POLICY, NOW) == []


def test_weekly_keeps_four_weeks():
    backups = [make("weekly", NOW - timedelta(weeks=n)) for n in range(7)]
    doomed = plan(backups, POLICY, NOW)
    assert len(doomed) == 2


def test_monthly_uses_calendar_months():
    # 2025-03-31 minus 12 months is 2024-03-31; Feb 29 2024 is older.
    keep = make("monthly", datetime(2024, 3, 31, 2, 0, tzinfo=timezone.utc))
    drop = make("monthly", datetime(2024, 2, 29, 2, 0, tzinfo=timezone.utc))
    newest = make("monthly", datetime(2025, 3, 1, 4, 0, tzinfo=timezone.utc))
    assert plan([keep, drop, newest], POLICY, NOW) == [drop]


def test_subtract_months_clamps_day():
    assert subtract_months(datetime(2025, 3, 31), 1) == datetime(2025, 2, 28)
    assert subtract_months(datetime(2025, 1, 15), 13) == datetime(2023, 12, 15)


def test_pre_restore_keeps_last_five_by_count():
    backups = [days_ago(n, "pre-restore") for n in range(8)]
    doomed = plan(backups, POLICY, NOW)
    assert len(doomed) == 3 and all(NOW - b.created >= timedelta(days=5) for b in doomed)


def test_types_filter_limits_the_plan():
    backups = [days_ago(n) for n in range(12)] + [
        make("weekly", NOW - timedelta(weeks=n)) for n in range(8)
    ]
    assert {b.type for b in plan(backups, POLICY, NOW, ["weekly"])} == {"weekly"}


def test_simulated_calendar_daily_runs_keep_a_week():
    kept = []
    for day in range(60):
        now = datetime(2025, 1, 1, 2, 0, tzinfo=timezone.utc) + timedelta(days=day)
        kept.append(make("daily", now))
        doomed = {b.key for b in plan(kept, POLICY, now, ["daily"])}
        kept = [b for b in kept if b.key not in doomed]
        assert 1 <= len(kept) <= 8
    assert len(kept) == 8  # today plus the seven before it


@pytest.mark.parametrize("policy", [{"daily": 0}, {"hourly": 3}, {"weekly": "4"}])
def test_bad_policy_is_refused(policy):
    with pytest.raises(ConfigError):
        retention.check_policy(policy)
