"""`lifeboat status` and playbooks/status.yml against real backups.

Every host of the test inventory is the control node itself
(ansible_connection=local) with its own database and backup directory:
OK, STALE, FAILED and MISSING, read in one play.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from conftest import OWNER_PASSWORD, ROOT, make_db, run_cli

from lifeboat import backup, settings

DAILY_ONLY = {"daily": 26, "weekly": 0, "monthly": 0}


def run_backup(url: str, backup_dir, label: str, backup_type="daily", ago=None):
    config = settings.resolve(
        {"databases": [{"url": url, "name": label}], "backup_dir": str(backup_dir)}
    )
    now = backup.utcnow() - ago if ago is not None else None
    return backup.run(config, backup_type, now=now)


def test_cli_status_reports_each_type_and_exits_non_zero(app_db, backup_dir, lifeboat_env):
    # Backed up for 40 days (the oldest backup is the anchor without a provisioning
    # stamp), so the first monthly backup was due long ago whatever today's date.
    run_backup(app_db.url, backup_dir, app_db.name, "pre-restore", ago=timedelta(days=40))
    run_backup(app_db.url, backup_dir, app_db.name)
    run_backup(app_db.url, backup_dir, app_db.name, "weekly", ago=timedelta(days=9))
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)

    proc = run_cli(["status"], env)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["DATABASE", "TYPE", "STATE"]
    states = {line.split()[1]: line.split()[2] for line in lines[1:4]}
    assert states == {"daily": "OK", "weekly": "STALE", "monthly": "MISSING"}
    assert "newest weekly backup is 9d0h old (limit 8d)" in proc.stdout
    assert lines[4] == "3 checked: 1 OK, 1 STALE, 1 MISSING; NOT OK"

    report = json.loads(run_cli(["status", "--json"], env).stdout)
    [daily] = [r for r in report["rows"] if r["type"] == "daily"]
    assert daily["local"] is True and daily["s3"] is None and daily["size"] > 0
    assert daily["newest"].startswith(f"{app_db.name}-daily-backup-")
    assert report["counts"] == {"OK": 1, "STALE": 1, "FAILED": 0, "MISSING": 1, "FUTURE": 0}

    # Only daily checked: all OK, exit 0. No credentials needed: the store names the databases.
    env = lifeboat_env
    config = backup_dir / "lifeboat.yml"
    config.write_text(json.dumps({"lifeboat_status_max_age_hours": DAILY_ONLY}))
    proc = run_cli(["status", "--config", str(config)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "1 checked: 1 OK; all OK"


def write_inventory(path, hosts: dict[str, dict], **common) -> None:
    """A YAML (JSON) inventory: every host is this machine, with its own variables."""
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "lifeboat_status_max_age_hours": DAILY_ONLY,
        **common,
    }
    path.write_text(json.dumps({"databases": {"hosts": hosts, "vars": common}}))


def status_playbook(inventory, *args: str, env: dict) -> subprocess.CompletedProcess:
    env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory), "playbooks/status.yml", *args],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip


def test_fleet_status_one_table_for_ok_stale_failed_and_missing(pg, tmp_path, lifeboat_env):
    hosts = {}
    for name in ("ok-host", "stale-host", "failed-host", "missing-host"):
        db = make_db(pg, seed=False)
        db.sql("CREATE TABLE t AS SELECT 1 AS x")
        hosts[name] = {"lifeboat_database_url": db.url, "lifeboat_backup_dir": str(tmp_path / name)}
        label = db.name
        if name == "ok-host":
            assert run_backup(db.url, tmp_path / name, label)[0].ok
        elif name == "stale-host":
            assert run_backup(db.url, tmp_path / name, label, ago=timedelta(hours=30))[0].ok
        elif name == "failed-host":
            assert run_backup(db.url, tmp_path / name, label, ago=timedelta(hours=2))[0].ok
            gone = db.url.replace(f":{pg.port}/", ":1/")  # the server "went away" since
            assert not run_backup(gone, tmp_path / name, label)[0].ok
    inventory = tmp_path / "fleet.yml"
    write_inventory(inventory, hosts)

    proc = status_playbook(inventory, "-f", "4", env=lifeboat_env)
    out = proc.stdout
    assert proc.returncode == 2, out + proc.stderr
    rows = [line.split() for line in out.splitlines()]
    assert sum(parts[:2] == ["HOST", "DATABASE"] for parts in rows) == 1  # printed once
    table = {
        parts[0]: parts[3] for parts in rows if parts and parts[0] in hosts and parts[1] != ":"
    }
    assert table == {"ok-host": "OK", "stale-host": "STALE", "failed-host": "FAILED",
                     "missing-host": "MISSING"}  # fmt: skip
    assert "4 checked: 1 OK, 1 STALE, 1 FAILED, 1 MISSING; NOT OK" in out
    assert "last attempt failed at" in out and "Failed to connect" in out
    assert "Backups are not OK: 4 checked" in out
    assert OWNER_PASSWORD not in out + proc.stderr

    # The healthy host alone passes; check mode reads the same (the module only reads).
    proc = status_playbook(inventory, "--limit", "ok-host", "--check", env=lifeboat_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 checked: 1 OK; all OK" in proc.stdout


def test_status_shows_local_and_s3_presence(app_db, backup_dir, s3, lifeboat_env):
    """With a bucket, each newest backup is looked up in S3 too (one listing per store)."""
    config = settings.resolve(
        {"database_url": app_db.url, "backup_dir": str(backup_dir), "s3_bucket": s3.bucket,
         "status_max_age_hours": DAILY_ONLY}
    )  # fmt: skip
    [result] = backup.run(config)
    assert result.ok and result.s3_key, result.summary()
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env,
               LIFEBOAT_CONFIG=str(backup_dir / "status.yml"))  # fmt: skip
    (backup_dir / "status.yml").write_text(json.dumps({"status_max_age_hours": DAILY_ONLY}))
    report = json.loads(run_cli(["status", "--json"], env, check=True).stdout)
    [row] = report["rows"]
    assert row["local"] is True and row["s3"] is True and row["state"] == "OK"
    assert "  local+s3" in run_cli(["status"], env).stdout

    # Gone from the local disk, still in S3: shown as such, and still OK.
    Path(result.file).unlink()
    Path(result.file + ".manifest.json").unlink()
    report = json.loads(run_cli(["status", "--json"], env, check=True).stdout)
    [row] = report["rows"]
    assert (row["local"], row["s3"], row["state"]) == (False, True, "OK")

    # S3 unreachable: the local view stays, and the report is not OK.
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:1"
    proc = run_cli(["status", "--json"], dict(env, LIFEBOAT_S3_MAX_ATTEMPTS="1"))
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["errors"] and report["rows"][0]["s3"] is None
