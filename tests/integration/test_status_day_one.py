"""Green on day one: right after provisioning, weekly and monthly backups are not
MISSING until their first scheduled run should have happened.

The lifeboat role writes <backup_dir>/.state/provisioned_at; the clock is faked
for the whole `lifeboat` process with faketime (2025-01-15 is a Wednesday).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timezone

import pytest
from conftest import ROOT

from lifeboat import status

pytestmark = pytest.mark.skipif(
    not shutil.which("faketime"), reason="faketime (Debian package) not installed"
)
LIFEBOAT = str(ROOT / ".venv" / "bin" / "lifeboat")


@pytest.fixture
def provisioned(app_db, backup_dir, lifeboat_env):
    """A host provisioned on Wednesday 2025-01-15 01:30 UTC, its first daily run at 02:00."""
    state = backup_dir / ".state"
    state.mkdir(parents=True, mode=0o700)
    (state / "provisioned_at").write_text("2025-01-15T01:30:00Z\n")  # as the role writes it
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, TZ="UTC", FAKETIME_DONT_FAKE_MONOTONIC="1")

    def at(moment: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["faketime", "-f", f"@{moment}", LIFEBOAT, *args],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip

    proc = at("2025-01-15 02:00:00", "backup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return at


def rows(proc) -> dict[str, dict]:
    return {row["type"]: row for row in json.loads(proc.stdout)["rows"]}


def test_wednesday_after_provisioning_is_all_ok(provisioned):
    proc = provisioned("2025-01-15 10:00:00", "status", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = rows(proc)
    assert {t: r["state"] for t, r in found.items()} == {
        "daily": "OK",
        "weekly": "OK",
        "monthly": "OK",
    }
    assert found["weekly"]["due_at"] == "2025-01-20T02:00:00Z"  # the end of Sunday, + slack
    assert found["monthly"]["due_at"] == "2025-02-02T02:00:00Z"
    assert "the first is due by 2025-01-20T02:00:00Z" in found["weekly"]["reason"]
    table = provisioned("2025-01-15 10:00:00", "status")
    assert table.returncode == 0 and "3 checked: 3 OK; all OK" in table.stdout
    assert "the first is due by 2025-01-20T02:00:00Z" in table.stdout


def test_sunday_evening_the_weekly_is_still_not_due(provisioned):
    proc = provisioned("2025-01-19 23:00:00", "backup")  # the dailies keep running
    assert proc.returncode == 0, proc.stderr
    found = rows(provisioned("2025-01-19 23:30:00", "status", "--json"))
    assert found["weekly"]["state"] == "OK"


def test_missing_once_the_first_sunday_passed_without_a_weekly(provisioned):
    assert provisioned("2025-01-20 01:00:00", "backup").returncode == 0
    proc = provisioned("2025-01-20 03:00:00", "status", "--json")
    assert proc.returncode == 1
    found = rows(proc)
    assert found["daily"]["state"] == "OK"
    assert found["weekly"]["state"] == "MISSING"
    assert "the first was due by 2025-01-20T02:00:00Z" in found["weekly"]["reason"]
    assert found["monthly"]["state"] == "OK"  # its first run is February 1st


def test_a_weekly_taken_on_sunday_keeps_it_ok(provisioned):
    assert provisioned("2025-01-19 03:00:00", "backup", "--type", "weekly").returncode == 0
    assert provisioned("2025-01-20 01:00:00", "backup").returncode == 0
    found = rows(provisioned("2025-01-20 03:00:00", "status", "--json"))
    assert found["weekly"]["state"] == "OK" and found["weekly"]["newest"]


def test_without_a_stamp_the_first_backup_is_the_anchor(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, TZ="UTC", FAKETIME_DONT_FAKE_MONOTONIC="1")

    def at(moment, *args):
        return subprocess.run(
            ["faketime", "-f", f"@{moment}", LIFEBOAT, *args],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip

    # Nothing at all: MISSING everywhere (nothing configured ran yet, nothing to anchor).
    assert at("2025-01-15 01:00:00", "status").returncode == 1
    assert at("2025-01-15 02:00:00", "backup").returncode == 0
    assert at("2025-01-15 03:00:00", "status").returncode == 0
    found = rows(at("2025-02-03 03:00:00", "status", "--json"))
    assert found["weekly"]["state"] == "MISSING" and found["monthly"]["state"] == "MISSING"


@pytest.mark.parametrize(
    ("kind", "anchor", "due"),
    [
        ("daily", "2025-01-15T01:30:00", "2025-01-16T03:30:00"),  # the 26 h limit comes first
        ("weekly", "2025-01-15T01:30:00", "2025-01-20T02:00:00"),
        ("weekly", "2025-01-19T12:00:00", "2025-01-27T02:00:00"),  # after Sunday's run
        ("weekly", "2025-01-19T00:30:00", "2025-01-27T00:30:00"),  # the 8-day limit
        ("monthly", "2025-01-15T01:30:00", "2025-02-02T02:00:00"),
        ("monthly", "2025-01-31T23:00:00", "2025-02-02T02:00:00"),
        ("monthly", "2025-12-01T05:00:00", "2026-01-02T02:00:00"),
    ],
)
def test_first_due(kind, anchor, due, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    anchor = datetime.fromisoformat(anchor).replace(tzinfo=timezone.utc)
    limits = status.DEFAULT_MAX_AGE_HOURS
    assert status.first_due(kind, anchor, limits[kind]) == datetime.fromisoformat(due).replace(
        tzinfo=timezone.utc
    )
