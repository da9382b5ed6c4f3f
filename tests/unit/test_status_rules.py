"""Status rules, metrics rendering, run state and notification settings: pure logic."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from lifeboat import metrics, monitor, naming, notify, settings, status
from lifeboat.errors import ConfigError
from lifeboat.store import Entry

NOW = datetime(2025, 1, 15, 12, 0, tzinfo=timezone.utc)


def entry(label: str, type_: str, created: datetime, size: int = 1000) -> Entry:
    bname = naming.build(label, type_, created, ".sql.gz")
    return Entry("local", bname.path, bname, size, True, f"/b/{bname.path}")


def iso(moment: datetime) -> str:
    return notify.iso(moment)


def evaluate(newest=None, state=None, hours=26, type_="daily"):
    return status.evaluate("app", type_, newest, {"local": newest is not None}, state or {},
                           hours, NOW)  # fmt: skip


def test_fresh_backup_is_ok_with_age_and_size():
    row = evaluate(entry("app", "daily", NOW - timedelta(hours=3, minutes=5), 2048))
    assert row["state"] == "OK" and row["reason"] == ""
    assert row["age"] == "3h05m" and row["age_seconds"] == 3 * 3600 + 300
    assert row["size"] == 2048 and row["newest_at"] == "2025-01-15T08:55:00Z"


def test_old_backup_is_stale_past_the_types_limit():
    assert evaluate(entry("app", "daily", NOW - timedelta(hours=25)))["state"] == "OK"
    row = evaluate(entry("app", "daily", NOW - timedelta(hours=27)))
    assert row["state"] == "STALE" and "limit 26h" in row["reason"]
    weekly = evaluate(entry("app", "weekly", NOW - timedelta(days=9)), hours=192, type_="weekly")
    assert weekly["state"] == "STALE" and "limit 8d" in weekly["reason"]


def test_failure_newer_than_the_last_success_is_failed():
    newest = entry("app", "daily", NOW - timedelta(hours=2))
    state = {"last_success_at": iso(NOW - timedelta(hours=2)),
             "last_failure_at": iso(NOW - timedelta(minutes=5)),
             "last_error": "Failed to connect", "last_hint": "Check PostgreSQL."}  # fmt: skip
    row = evaluate(newest, state)
    assert row["state"] == "FAILED" and row["last_error"] == "Failed to connect"
    assert row["last_hint"] == "Check PostgreSQL." and row["newest"]  # the good one is still shown


def test_failure_older_than_the_last_success_is_forgotten():
    newest = entry("app", "daily", NOW - timedelta(hours=1))
    state = {"last_failure_at": iso(NOW - timedelta(hours=5)), "last_error": "old"}
    row = evaluate(newest, state)
    assert row["state"] == "OK" and row["last_failure_at"] == ""


def test_no_backup_is_missing_and_a_failure_without_one_is_failed():
    assert evaluate()["state"] == "MISSING"
    assert evaluate(state={"last_failure_at": iso(NOW), "last_error": "x"})["state"] == "FAILED"


def test_max_age_defaults_overrides_and_errors():
    assert status.check_max_age(None) == {"daily": 26, "weekly": 192, "monthly": 768}
    assert status.check_max_age({"weekly": 0})["weekly"] == 0
    with pytest.raises(ConfigError, match="unknown backup type 'hourly'"):
        status.check_max_age({"hourly": 1})
    with pytest.raises(ConfigError, match="number of hours"):
        status.check_max_age({"daily": "soon"})
    with pytest.raises(ConfigError, match="mapping"):
        status.check_max_age("26")


def test_fleet_marks_silent_hosts_unknown_and_renders_one_table():
    rows = [evaluate(entry("app", "daily", NOW - timedelta(hours=1)))]
    merged = status.fleet({
        "db1": {"rows": rows, "errors": []},
        "db2": {"unreachable": True, "msg": "Failed to connect to the host via ssh"},
    }, now=NOW)  # fmt: skip
    assert merged["hosts"] == 2 and not merged["ok"]
    assert [(r["host"], r["state"]) for r in merged["rows"]] == [("db1", "OK"), ("db2", "UNKNOWN")]
    lines = status.render(merged)
    assert lines[0].split() == ["HOST", "DATABASE", "TYPE", "STATE", "NEWEST", "(UTC)", "AGE",
                                "SIZE", "WHERE", "DETAIL"]  # fmt: skip
    assert lines[1].split()[:4] == ["db1", "app", "daily", "OK"]
    assert "Failed to connect to the host via ssh" in lines[2]
    assert lines[3] == "2 checked: 1 OK, 1 UNKNOWN; NOT OK"


def test_state_follows_backups_and_keeps_room_for_drills():
    ok = notify.Event("backup", "app", True, "daily", file="/b/f", size=10, duration=1.23456,
                      time="2025-01-15T02:00:00Z")  # fmt: skip
    bad = notify.Event("backup", "app", False, "daily", error="boom", hint="fix it",
                       error_type="DumpFailed", time="2025-01-16T02:00:00Z")  # fmt: skip
    drill = notify.Event("restore", "app", True, "daily", time="2025-01-16T03:00:00Z",
                         details={"rto_seconds": 42.5, "target": "scratch"})  # fmt: skip
    state = monitor.update_state(monitor.update_state(monitor.update_state({}, ok), bad), drill)
    assert state["last_success_at"] == "2025-01-15T02:00:00Z" and state["last_success_size"] == 10
    assert state["last_failure_at"] == "2025-01-16T02:00:00Z" and state["last_result"] == "failure"
    assert state["last_duration"] == 0 and state["last_error"] == "boom"
    assert state["last_restore_success_at"] == "2025-01-16T03:00:00Z"
    assert state["last_restore_rto_seconds"] == 42.5 and "last_restore_target" not in state
    prom = metrics.render({("app", "daily"): state})
    assert 'lifeboat_restore_last_rto_seconds{database="app",type="daily"} 42.5' in prom
    assert 'lifeboat_backup_last_ok{database="app",type="daily"} 0' in prom
    assert (
        'lifeboat_backup_last_success_timestamp_seconds{database="app",type="daily"} '
        "1736906400" in prom
    )


def test_metric_labels_are_escaped():
    prom = metrics.render({('we"ird\\db', "daily"): {"last_result": "success"}})
    assert 'database="we\\"ird\\\\db"' in prom


def base(**extra) -> dict:
    return {"database_url": "postgresql://u@h/db", **extra}


def test_notification_settings_from_strings_and_their_errors():
    s = settings.resolve(base(notify_email="a@example.com, b@example.com", notify_on="failure",
                              smtp_security="starttls"))  # fmt: skip
    assert s.notify_email == ("a@example.com", "b@example.com")
    assert s.notify_on == ("failure",) and s.smtp_port == 587
    assert settings.resolve(base(smtp_security="tls")).smtp_port == 465
    with pytest.raises(ConfigError, match="not an email address"):
        settings.resolve(base(notify_email="oncall"))
    with pytest.raises(ConfigError, match="notify_on"):
        settings.resolve(base(notify_on=["sometimes"]))
    with pytest.raises(ConfigError, match="http"):
        settings.resolve(base(webhook_url="ftp://example.com/hook"))
    with pytest.raises(ConfigError, match="log_format"):
        settings.resolve(base(log_format="xml"))


def test_guide_environment_variables_set_the_channels():
    found = settings.from_environment(
        {
            "BACKUP_NOTIFICATION_EMAIL": "admin@plotzed.com",
            "SLACK_WEBHOOK_URL": "https://hooks.slack.com/x",
        }
    )
    assert found == {"notify_email": "admin@plotzed.com",
                     "slack_webhook_url": "https://hooks.slack.com/x"}  # fmt: skip


def test_secrets_never_show_in_settings_repr():
    s = settings.resolve(base(smtp_password="hunter2hunter2", webhook_url="https://x/T0KEN-abc",
                              slack_webhook_url="https://hooks.slack.com/S3CRET"))  # fmt: skip
    text = repr(s)
    assert "hunter2hunter2" not in text and "T0KEN-abc" not in text and "S3CRET" not in text


def test_an_empty_store_without_configured_databases_is_not_ok(tmp_path):
    config, labels = status.load({"backup_dir": str(tmp_path)})
    assert labels is None
    result = status.report(config, labels=labels, now=NOW)
    assert not result["ok"] and result["rows"] == []
    assert "no database configured" in result["errors"][0]
    configured, labels = status.load(
        {"backup_dir": str(tmp_path), "database_url": "postgresql://u@h/app"}
    )
    result = status.report(configured, labels=labels, now=NOW)
    assert [(r["database"], r["state"]) for r in result["rows"]] == [
        ("app", "MISSING"), ("app", "MISSING"), ("app", "MISSING")]  # fmt: skip
