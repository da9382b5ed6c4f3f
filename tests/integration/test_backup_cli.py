"""`lifeboat backup` end to end against a real server, as cron runs it."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, fingerprint, make_db, run_cli

from lifeboat import lock, naming


def backups_of(backup_dir: Path, type_="daily") -> list[Path]:
    folder = backup_dir / type_
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if naming.parse(p.name))


def test_backup_restores_with_stock_psql_and_data_is_identical(
    app_db, pg, backup_dir, lifeboat_env
):
    app_db.sql(
        "CREATE TABLE odd (id int, t text, b bytea, j jsonb);"
        "INSERT INTO odd VALUES (1, E'tab\\there back\\\\slash', '\\x00ff', '{\"a\": [1]}'),"
        "(2, NULL, NULL, NULL), (3, 'ünïcødé ✓', '', 'null');"
    )
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    proc = run_cli(["backup"], env, check=True)
    [dump] = backups_of(backup_dir)
    assert dump.name.startswith(f"{app_db.name}-daily-backup-") and dump.name.endswith(".sql.gz")
    assert str(dump) in proc.stdout

    # Permissions: files 0600, directories 0700.
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert stat.S_IMODE((backup_dir / "daily").stat().st_mode) == 0o700
    manifest = json.loads(Path(f"{dump}.manifest.json").read_text())
    assert stat.S_IMODE(Path(f"{dump}.manifest.json").stat().st_mode) == 0o600
    assert manifest["tables"] == {"public.odd": 3, "public.plots": 2000, "public.users": 500}
    assert manifest["rows_exact"] and manifest["table_count"] == 3
    assert manifest["size"] == dump.stat().st_size

    # The guide's check: the header is there for `gunzip -c | head`.
    with gzip.open(dump, "rt") as fh:
        assert "PostgreSQL database dump" in fh.read(200)

    # Restore with stock tools only, into a new database; compare every row.
    copy = make_db(pg, seed=False)
    subprocess.run(
        f"gunzip -c {dump} | psql -X -q -v ON_ERROR_STOP=1 -d '{copy.url}'",
        shell=True,
        check=True,
        capture_output=True,
    )
    assert fingerprint(copy) == fingerprint(app_db)


def test_secrets_never_reach_output_manifest_or_argv(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    proc = subprocess.Popen(
        [str(Path(env["PATH"].split(":")[0]) / "lifeboat"), "backup"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen_argv = []
    own_dump = False  # the scan saw this backup's own pg_dump (other jobs share the machine)
    while proc.poll() is None:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    seen_argv.append(cmdline)
                    if cmdline.split(b"\0")[0].endswith(b"pg_dump"):
                        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
                        own_dump = own_dump or ppid == str(proc.pid)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert own_dump, "the scan never saw the backup's pg_dump: it proved nothing"
    encoded = app_db.url.split(":")[2].split("@")[0]
    blobs = [out, err, *(b.decode(errors="replace") for b in seen_argv)]
    [dump] = backups_of(backup_dir)
    blobs.append(Path(f"{dump}.manifest.json").read_text())
    for blob in blobs:
        assert OWNER_PASSWORD not in blob and encoded not in blob


def test_formats_and_codecs_restore_with_stock_tools(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    cases = {
        "zstd": (
            ["LIFEBOAT_COMPRESSION=zstd"],
            ".sql.zst",
            "zstd -dc {f} | psql -X -q -v ON_ERROR_STOP=1 -d '{u}'",
        ),
        "custom": (["LIFEBOAT_FORMAT=custom"], ".dump", "pg_restore --no-owner -d '{u}' {f}"),
        "directory": (
            ["LIFEBOAT_FORMAT=directory", "LIFEBOAT_JOBS=2"],
            ".dir",
            "pg_restore --no-owner -j 2 -d '{u}' {f}",
        ),
    }
    for label, (settings, ext, restore_cmd) in cases.items():
        case_env = dict(env, **dict(s.split("=") for s in settings))
        run_cli(["backup", "--type", "weekly"], case_env, check=True)
        [dump] = [p for p in backups_of(backup_dir, "weekly") if p.name.endswith(ext)]
        verified = run_cli(["verify", str(dump)], case_env, check=True)
        assert verified.stdout.startswith("OK"), label
        # `make test` installs the zstd CLI (Makefile TEST_SYSTEM_DEPS): no silent skip.
        assert label != "zstd" or shutil.which("zstd"), "zstd missing: run make setup-test"
        copy = make_db(pg, seed=False)
        subprocess.run(
            restore_cmd.format(f=dump, u=copy.url),
            shell=True,
            check=True,
            capture_output=True,
        )
        assert fingerprint(copy) == fingerprint(app_db), label


def test_several_databases_one_failing_does_not_stop_the_others(
    app_db, pg, backup_dir, lifeboat_env, tmp_path
):
    second = make_db(pg)
    bad = app_db.url.replace("%40", "%41", 1)  # wrong password
    config = tmp_path / "lifeboat.yml"
    config.write_text(
        json.dumps({"databases": [{"url": app_db.url}, {"url": bad, "name": "broken"}, second.url]})
    )
    proc = run_cli(["backup", "--config", str(config)], lifeboat_env)
    assert proc.returncode == 1
    assert "broken daily: FAILED" in proc.stdout and "authentication failed" in proc.stdout
    labels = {naming.parse(p.name).label for p in backups_of(backup_dir)}
    assert labels == {app_db.name, second.name}
    assert OWNER_PASSWORD not in proc.stdout + proc.stderr


def test_server_down_is_a_clear_error_and_leaves_nothing(pg_tmp, backup_dir, lifeboat_env):
    import pgcluster

    down = pgcluster.Cluster(pg_tmp / "down", pgcluster.free_port())
    env = dict(lifeboat_env, DATABASE_URL=f"postgresql://u:pw@127.0.0.1:{down.port}/db")
    proc = run_cli(["backup"], env)
    assert proc.returncode == 1
    assert "Connection refused" in proc.stdout and "systemctl status postgresql" in proc.stdout
    assert backups_of(backup_dir) == []


def test_permission_denied_names_the_grant(app_db, pg, backup_dir, lifeboat_env):
    pg.psql(
        "DO $$ BEGIN CREATE ROLE reader LOGIN PASSWORD 'reader'; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    app_db.sql("REVOKE ALL ON TABLE users FROM PUBLIC")
    url = app_db.url.replace(app_db.url.split("//")[1].split("@")[0], "reader:reader")
    proc = run_cli(["backup"], dict(lifeboat_env, DATABASE_URL=url))
    assert proc.returncode == 1
    assert "permission denied" in proc.stdout and "GRANT" in proc.stdout
    assert list((backup_dir / "daily").iterdir()) == []


def test_missing_pg_dump_says_how_to_install(app_db, tmp_path, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_PG_BIN_DIR=str(tmp_path))
    proc = run_cli(["backup"], env)
    assert proc.returncode == 1
    assert "pg_dump: command not found" in proc.stdout
    assert "apt-get install postgresql-client" in proc.stdout


def test_unknown_type_is_refused_before_anything_runs(app_db, backup_dir, lifeboat_env):
    proc = run_cli(["backup", "--type", "hourly"], dict(lifeboat_env, DATABASE_URL=app_db.url))
    assert proc.returncode == 2 and "invalid choice: 'hourly'" in proc.stderr
    assert not backup_dir.exists()


def test_concurrent_run_is_refused_by_the_lock(app_db, backup_dir, lifeboat_env):
    from lifeboat.conninfo import ConnInfo

    # Backups lock the database by its identity (server and name), not its label.
    with lock.hold_database(str(backup_dir / ".locks"), ConnInfo.from_url(app_db.url)):
        proc = run_cli(["backup"], dict(lifeboat_env, DATABASE_URL=app_db.url))
    assert proc.returncode == 1 and "in progress" in proc.stdout
    run_cli(["backup"], dict(lifeboat_env, DATABASE_URL=app_db.url), check=True)


def test_dry_run_changes_nothing(app_db, backup_dir, lifeboat_env):
    proc = run_cli(["backup", "--dry-run"], dict(lifeboat_env, DATABASE_URL=app_db.url), check=True)
    assert "would write" in proc.stdout
    assert not (backup_dir / "daily").exists() or backups_of(backup_dir) == []


def test_list_shows_a_table(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    (backup_dir / "daily" / "foreign-file.sql.gz").write_bytes(b"x")
    listing = run_cli(["list"], lifeboat_env, check=True).stdout
    assert listing.splitlines()[0].split()[:3] == ["TYPE", "DATABASE", "CREATED"]
    assert "complete" in listing and "foreign-file" not in listing
    rows = json.loads(run_cli(["list", "--json"], lifeboat_env, check=True).stdout)
    assert rows[0]["database"] == app_db.name and len(rows[0]["sha256"]) == 64


@pytest.mark.parametrize("target", ["pg_dump", "lifeboat"])
def test_killed_mid_stream_keeps_nothing_and_next_run_cleans_up(
    target, pg, backup_dir, lifeboat_env
):
    db = make_db(pg, seed=False)
    db.sql("CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 400000) g")
    env = dict(lifeboat_env, DATABASE_URL=db.url)
    proc = subprocess.Popen(
        [str(Path(env["PATH"].split(":")[0]) / "lifeboat"), "backup"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = _wait_for_child(proc.pid, "pg_dump")
    os.kill(victim if target == "pg_dump" else proc.pid, 19)  # SIGSTOP: freeze mid-stream
    os.kill(victim if target == "pg_dump" else proc.pid, 9)
    if target == "lifeboat":
        os.kill(victim, 9)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert [p for p in backups_of(backup_dir) if not p.name.endswith(".partial")] == []
    if target == "pg_dump":
        assert "killed by signal 9" in out
        assert list((backup_dir / "daily").iterdir()) == []
    else:
        assert any(p.name.endswith(".partial") for p in (backup_dir / "daily").iterdir())
    run_cli(["backup"], env, check=True)
    names = [p.name for p in (backup_dir / "daily").iterdir()]
    assert not any(n.endswith(".partial") for n in names) and len(names) == 2


def _wait_for_child(parent: int, name: str, timeout: float = 20.0) -> int:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            if fields.get("Name", "").strip() != name or fields.get("PPid", "").strip() != str(
                parent
            ):
                continue
            with contextlib.suppress(OSError):
                if b"--dbname" in Path(f"/proc/{pid}/cmdline").read_bytes():  # the dump itself
                    return int(pid)
        time.sleep(0.002)
    raise AssertionError(f"{name} never started under {parent}")
