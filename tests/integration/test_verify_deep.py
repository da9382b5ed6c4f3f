"""`lifeboat verify --deep`: restore drills into a scratch database on a real server."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, fingerprint, run_cli, shared_backup

DRILL_DBS = "SELECT datname FROM pg_database WHERE datname LIKE '%\\_\\_lifeboat\\_drill\\_%'"


@pytest.fixture(scope="module")
def shared(pg, tmp_path_factory):
    """One database and one backup of it for the whole module: drills only read the
    database, and each test gets its own copy of the store to damage (drill)."""
    return shared_backup(pg, tmp_path_factory.mktemp("shared"))


@pytest.fixture
def app_db(shared):
    return shared[0]


@pytest.fixture
def drill(shared, backup_dir, lifeboat_env) -> tuple[Path, dict]:
    """A daily backup of app_db (a copy of the module's) and the environment to drill it."""
    db, store = shared
    shutil.copytree(store, backup_dir)
    [dump] = (backup_dir / "daily").glob("*.sql.gz")
    return dump, dict(lifeboat_env, DATABASE_URL=db.url)


def scratch_dbs(app_db) -> list[str]:
    return app_db.cluster.psql(DRILL_DBS).split()


def assert_failed_cleanly(proc, app_db, before: dict, why: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout and why in proc.stdout, proc.stdout
    assert scratch_dbs(app_db) == [], proc.stdout + proc.stderr
    assert fingerprint(app_db) == before


def test_good_backup_passes_with_counts_rto_state_and_metrics(drill, app_db, backup_dir, tmp_path):
    dump, env = drill
    env = dict(
        env,
        LIFEBOAT_METRICS_DIR=str(tmp_path / "metrics"),
        LIFEBOAT_VERIFY_QUERIES="SELECT count(*) = 500 FROM users",
    )
    before = fingerprint(app_db)
    proc = run_cli(["verify", "--latest", "--deep", "--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = json.loads(proc.stdout)
    assert result["ok"] and result["source"] == str(dump) and result["type"] == "daily"
    assert result["tables"] == 2 and result["rows"] == 2500
    assert result["table_rows"] == {"public.plots": 2000, "public.users": 500}
    assert "table count 2 matches the manifest" in result["checks"]
    assert "exact row counts of 2 tables match the manifest" in result["checks"]
    assert result["queries"] == [
        {"sql": "SELECT count(*) = 500 FROM users", "ok": True, "outcome": "returned true"}
    ]
    assert 0 < result["rto_seconds"] < 60 and result["scratch_dropped"]
    assert result["scratch"].startswith(f"{app_db.name}__lifeboat_drill_")
    assert scratch_dbs(app_db) == []
    assert fingerprint(app_db) == before  # the original is never touched

    state = json.loads((backup_dir / ".state" / f"{app_db.name}-daily.json").read_text())
    assert state["last_verify_result"] == "success"
    assert state["last_verify_rto_seconds"] == pytest.approx(result["rto_seconds"], abs=0.01)
    prom = (tmp_path / "metrics" / "lifeboat.prom").read_text()
    assert f'lifeboat_verify_last_rto_seconds{{database="{app_db.name}",type="daily"}}' in prom
    assert "lifeboat_verify_last_backup_timestamp_seconds{" in prom
    assert 'lifeboat_verify_last_ok{database="' in prom

    # The human output names the level, the RTO and the counts.
    proc = run_cli(["verify", str(dump), "--deep"], env, check=True)
    assert "(RTO)" in proc.stdout and "2 tables and 2500 rows match the manifest" in proc.stdout


def test_flipped_byte_is_caught_before_any_restore(drill, app_db):
    dump, env = drill
    before = fingerprint(app_db)
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    proc = run_cli(["verify", "--latest", "--deep"], env)
    assert_failed_cleanly(proc, app_db, before, "Backup verification failed")
    assert "take a new backup" in proc.stdout


def test_truncated_backup_is_caught(drill, app_db):
    dump, env = drill
    before = fingerprint(app_db)
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    proc = run_cli(["verify", str(dump), "--deep"], env)
    assert_failed_cleanly(proc, app_db, before, "corrupt or truncated")


def test_manifest_lying_about_table_count_is_caught_by_the_restore(drill, app_db):
    dump, env = drill
    before = fingerprint(app_db)
    side = Path(f"{dump}.manifest.json")
    manifest = json.loads(side.read_text())
    manifest["table_count"] = 3
    side.write_text(json.dumps(manifest))
    assert run_cli(["verify", str(dump)], env).returncode == 0  # cheap checks cannot see it
    proc = run_cli(["verify", str(dump), "--deep"], env)
    assert_failed_cleanly(proc, app_db, before, "has 2 tables, its manifest says 3")
    assert "scratch database was dropped" in proc.stdout


def test_failing_user_checks_are_caught_and_reported_each(drill, app_db, tmp_path):
    _, env = drill
    before = fingerprint(app_db)
    config = tmp_path / "lifeboat.yml"
    config.write_text(
        "verify_queries:\n"
        "  - SELECT count(*) > 0 FROM users\n"
        "  - SELECT count(*) > 10000 FROM plots\n"
        "  - SELECT count(*) FROM no_such_table\n"
        "  - SELECT 42\n"
    )
    env = dict(env, LIFEBOAT_CONFIG=str(config))
    proc = run_cli(["verify", "--latest", "--deep", "--json"], env)
    assert proc.returncode == 1
    [result] = json.loads(proc.stdout)
    assert not result["ok"] and result["error_type"] == "VerificationFailed"
    assert [q["ok"] for q in result["queries"]] == [True, False, False, False]
    assert "3 of 4 user check(s) failed" in result["error"]
    assert "`SELECT count(*) > 10000 FROM plots` returned false" in result["error"]
    assert 'relation "no_such_table" does not exist' in result["error"]
    assert "must return one boolean, returned 42" in result["error"]
    assert result["scratch_dropped"] and scratch_dbs(app_db) == []
    assert fingerprint(app_db) == before


def test_failed_drill_notifies_without_secrets(drill, app_db):
    _, env = drill
    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = dict(
            env,
            LIFEBOAT_WEBHOOK_URL=f"http://127.0.0.1:{server.server_port}/hook",
            LIFEBOAT_VERIFY_QUERIES="SELECT false",
        )
        proc = run_cli(["verify", "--latest", "--deep"], env)
    finally:
        server.shutdown()
    assert proc.returncode == 1
    [event] = received
    assert event["kind"] == "verify" and event["result"] == "failure"
    assert "`SELECT false` returned false" in event["error"]
    text = json.dumps(event) + proc.stdout + proc.stderr
    assert OWNER_PASSWORD not in text
    assert app_db.url.split(":")[2].split("@")[0] not in text  # the URL-encoded password


def test_usage_errors_exit_2_with_a_hint(drill):
    dump, env = drill
    proc = run_cli(["verify"], env)
    assert proc.returncode == 2 and "a backup PATH or --latest" in proc.stderr
    proc = run_cli(["verify", str(dump), "--latest", "--deep"], env)
    assert proc.returncode == 2 and "not both" in proc.stderr
    config = dump.parent.parent / "bad.yml"
    config.write_text("verify_queries: 42\n")
    proc = run_cli(["verify", "--latest", "--deep"], dict(env, LIFEBOAT_CONFIG=str(config)))
    assert proc.returncode == 2 and "verify_queries has the wrong shape" in proc.stderr
    assert "SELECT count(*) > 0 FROM users" in proc.stderr  # the hint shows the shape
    config.write_text("globals: maybe\n")
    proc = run_cli(["backup"], dict(env, LIFEBOAT_CONFIG=str(config)))
    assert (
        proc.returncode == 2
        and "Failed to read globals" in proc.stderr
        and "true or false, got 'maybe'" in proc.stderr
    )


def test_no_backup_yet_fails_clearly(app_db, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    proc = run_cli(["verify", "--latest", "--deep"], env)
    assert proc.returncode == 1
    assert "No complete" in proc.stdout and "lifeboat backup" in proc.stdout


def test_unreachable_drill_server_fails_clearly_without_its_password(drill, app_db):
    _, env = drill
    secret = "drill-s3cret/pw"
    server = app_db.url_for("postgres").replace(
        app_db.url.split(":")[2].split("@")[0], "drill-s3cret%2Fpw"
    )
    proc = run_cli(["verify", "--latest", "--deep"], dict(env, LIFEBOAT_DRILL_SERVER=server))
    assert proc.returncode == 1
    assert "authentication failed" in proc.stdout
    assert secret not in proc.stdout + proc.stderr
    assert "drill-s3cret%2Fpw" not in proc.stdout + proc.stderr
    assert scratch_dbs(app_db) == []


def test_drill_from_s3_when_the_local_copy_is_gone(app_db, backup_dir, lifeboat_env, s3):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    run_cli(["backup"], env, check=True)
    for path in (backup_dir / "daily").iterdir():
        path.unlink()
    proc = run_cli(["verify", "--latest", "--deep", "--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = json.loads(proc.stdout)
    assert result["source"].startswith(f"s3://{s3.bucket}/backups/daily/")
    assert result["rows"] == 2500 and result["timings"]["fetch"] >= 0
    downloads = backup_dir / ".drill" / app_db.name
    assert not downloads.exists() or list(downloads.iterdir()) == []  # download removed
    assert scratch_dbs(app_db) == []
    text = proc.stdout + proc.stderr
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in text
