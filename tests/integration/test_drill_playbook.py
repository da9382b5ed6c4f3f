"""`ansible-playbook playbooks/verify.yml` on the local inventory, as a user runs it."""

from __future__ import annotations

import json
import subprocess

from conftest import OWNER_PASSWORD, ROOT, fingerprint, run_cli


def playbook(env: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", "playbooks/verify.yml", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_playbook_drills_checks_and_reports(app_db, pg, backup_dir, lifeboat_env, tmp_path):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup", "--type", "weekly"], env, check=True)
    before = fingerprint(app_db)
    where = ("-e", f"lifeboat_backup_dir={backup_dir}")
    drills = f"SELECT count(*) FROM pg_database WHERE datname LIKE '{app_db.name}\\_\\_lifeboat%'"

    # --check: the cheap checks only, nothing created.
    proc = playbook(env, *where, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(cheap)" in proc.stdout and "check mode: cheap checks only" in proc.stdout

    queries = json.dumps({"lifeboat_verify_queries": ["SELECT count(*) = 2000 FROM plots"]})
    proc = playbook(env, *where, "-e", "verify_type=weekly", "-e", queries)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "weekly (deep)" in proc.stdout and "(RTO)" in proc.stdout
    assert "1 user check(s) passed" in proc.stdout and "changed=0" in proc.stdout
    assert pg.psql(drills) == "0" and fingerprint(app_db) == before
    state = json.loads((backup_dir / ".state" / f"{app_db.name}-weekly.json").read_text())
    assert state["last_verify_result"] == "success" and state["last_verify_rto_seconds"] > 0

    # A failing user check fails the play with the reason; the scratch is gone.
    queries = json.dumps({"lifeboat_verify_queries": ["SELECT count(*) > 5000 FROM plots"]})
    proc = playbook(env, *where, "-e", queries)
    assert proc.returncode != 0
    assert "returned false" in proc.stdout and "1 of 1 verifications failed" in proc.stdout
    assert pg.psql(drills) == "0" and fingerprint(app_db) == before

    # One file, cheap only.
    [dump] = (backup_dir / "weekly").glob("*.sql.gz")
    proc = playbook(env, *where, "-e", f"verify_file={dump}", "-e", "verify_deep=false")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(cheap)" in proc.stdout and "size and sha256 match the manifest" in proc.stdout

    encoded = app_db.url.split(":")[2].split("@")[0]
    out = proc.stdout + proc.stderr
    assert OWNER_PASSWORD not in out and encoded not in out
