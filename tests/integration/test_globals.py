"""Cluster globals saved beside backups and applied on an empty server; drills elsewhere."""

from __future__ import annotations

import json
import stat
import subprocess

import pgcluster
import pytest
from conftest import OWNER, ROOT, AppDB, fingerprint, run_cli


@pytest.fixture(scope="module")
def server2(pg_tmp):
    """A second, empty server: a lost server's replacement, or a drill server."""
    cluster = pgcluster.Cluster(pg_tmp / "server2", pgcluster.free_port())
    cluster.init()
    cluster.start()
    yield cluster
    cluster.stop("immediate")


def superuser_url(cluster, dbname: str) -> str:
    return f"postgresql:///{dbname}?host={cluster.datadir}&port={cluster.port}&user=postgres"


def globals_backup(app_db, backup_dir, env) -> tuple:
    run_cli(["backup"], dict(env, LIFEBOAT_GLOBALS="true"), check=True)
    [dump] = (backup_dir / "daily").glob("*.sql.gz")
    manifest = json.loads((dump.parent / f"{dump.name}.manifest.json").read_text())
    return dump, manifest


def test_backup_saves_globals_without_passwords(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    dump, manifest = globals_backup(app_db, backup_dir, env)
    side = dump.parent / f"{dump.name}.globals.sql"
    assert stat.S_IMODE(side.stat().st_mode) == 0o600
    text = side.read_text()
    assert f"CREATE ROLE {OWNER};" in text and "PASSWORD" not in text
    assert manifest["globals"]["file"] == side.name
    assert manifest["globals"]["role_passwords"] is False
    assert manifest["globals"]["size"] == side.stat().st_size
    # A store listing does not mistake it for a backup.
    listing = json.loads(run_cli(["list", "--json"], env, check=True).stdout)
    assert [row["path"] for row in listing] == [str(dump)]


def test_passwords_need_a_superuser_and_say_so(app_db, backup_dir, lifeboat_env):
    env = dict(
        lifeboat_env,
        DATABASE_URL=app_db.url,
        LIFEBOAT_GLOBALS="true",
        LIFEBOAT_GLOBALS_PASSWORDS="true",
    )
    proc = run_cli(["backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the dump itself is good
    assert "Cluster globals not saved" in proc.stderr
    assert "lifeboat_globals_passwords: false" in proc.stderr
    [dump] = (backup_dir / "daily").glob("*.sql.gz")
    assert not (dump.parent / f"{dump.name}.globals.sql").exists()
    manifest = json.loads((dump.parent / f"{dump.name}.manifest.json").read_text())
    assert manifest["globals"] is None


def test_restore_with_globals_rebuilds_a_lost_server(
    app_db, pg, server2, backup_dir, lifeboat_env, tmp_path
):
    reader = f"reader_{app_db.name}"
    pg.psql(f"CREATE ROLE {reader} NOLOGIN")
    app_db.sql(f"GRANT SELECT ON users TO {reader}", superuser=True)
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    dump, _ = globals_backup(app_db, backup_dir, env)

    # The replacement server has none of the roles: without globals the restore fails clearly.
    target = dict(
        lifeboat_env,
        DATABASE_URL=superuser_url(server2, app_db.name),
        LIFEBOAT_BACKUP_DIR=str(tmp_path / "store2"),
    )
    proc = run_cli(["restore", "--file", str(dump), "--confirm"], target)
    assert proc.returncode == 1 and "does not exist" in proc.stdout, proc.stdout + proc.stderr

    proc = run_cli(["restore", "--file", str(dump), "--confirm", "--with-globals"], target)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    restored = AppDB(app_db.name, app_db.url, server2)
    assert fingerprint(restored) == fingerprint(app_db)
    owner = server2.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'users'", app_db.name)
    assert owner == OWNER
    grant = f"SELECT has_table_privilege('{reader}', 'public.users', 'SELECT')"
    assert server2.psql(grant, app_db.name) == "t"

    # Applying again on a server that has the roles: "already exists" is fine.
    again = f"{app_db.name}_again"
    proc = run_cli(
        ["restore", "--file", str(dump), "--confirm", "--with-globals", "--target-db", again],
        target,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    server2.psql(f'DROP DATABASE "{again}"')


def test_applying_globals_as_a_non_superuser_fails_clearly(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    dump, _ = globals_backup(app_db, backup_dir, env)
    before = fingerprint(app_db)
    proc = run_cli(["restore", "--file", str(dump), "--confirm", "--with-globals"], env)
    assert proc.returncode == 1
    assert "Failed to apply cluster globals" in proc.stdout
    assert "superuser" in proc.stdout and "Nothing was restored" in proc.stdout
    assert fingerprint(app_db) == before


def test_backup_without_globals_refuses_with_globals(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    app_db.sql("DELETE FROM plots WHERE id < 10")
    before = fingerprint(app_db)
    proc = run_cli(["restore", "--latest", "--confirm", "--with-globals"], env)
    assert proc.returncode == 1 and "has no cluster globals file" in proc.stdout
    assert "lifeboat_globals: true" in proc.stdout
    assert fingerprint(app_db) == before  # refused: nothing restored over it


def test_drill_on_a_drill_server_leaves_production_alone(
    app_db, pg, server2, backup_dir, lifeboat_env
):
    server2.psql(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER}') "
        f"THEN CREATE ROLE {OWNER}; END IF; END $$"
    )
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    [dump] = (backup_dir / "daily").glob("*.sql.gz")
    drill_env = dict(env, LIFEBOAT_DRILL_SERVER=superuser_url(server2, "postgres"))
    proc = run_cli(["verify", "--latest", "--deep", "--json"], drill_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = json.loads(proc.stdout)
    assert result["server"].endswith(f":{server2.port}") and result["rows"] == 2500
    assert result["scratch_dropped"]
    leftovers = "SELECT count(*) FROM pg_database WHERE datname LIKE '%lifeboat_drill%'"
    assert server2.psql(leftovers) == "0" and pg.psql(leftovers) == "0"

    # A file can be drilled on the drill server with no database configured at all.
    bare = dict(drill_env)
    bare.pop("DATABASE_URL")
    proc = run_cli(["verify", str(dump), "--deep"], bare)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f":{server2.port} in" in proc.stdout


def test_playbooks_save_and_apply_globals(app_db, server2, backup_dir, lifeboat_env, tmp_path):
    env = dict(
        lifeboat_env,
        DATABASE_URL=app_db.url,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
    )

    def play(name: str, *args: str, **extra) -> subprocess.CompletedProcess:
        where = f"lifeboat_backup_dir={backup_dir}"
        return subprocess.run(
            ["ansible-playbook", f"playbooks/{name}", "-e", where, *args],
            cwd=ROOT,
            env=dict(env, **extra),
            capture_output=True,
            text=True,
        )

    proc = play("backup.yml", "-e", "lifeboat_globals=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [side] = (backup_dir / "daily").glob("*.globals.sql")
    assert stat.S_IMODE(side.stat().st_mode) == 0o600

    name = f"{app_db.name}_pb"
    proc = play(
        "restore.yml",
        "-e",
        "restore_latest=true",
        "-e",
        "restore_globals=true",
        "-e",
        "confirm=true",
        "-e",
        f"target_database={name}",
        DATABASE_URL=superuser_url(server2, app_db.name),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stdout + proc.stderr
    restored = AppDB(name, app_db.url, server2)
    assert fingerprint(restored) == fingerprint(app_db)
    server2.psql(f'DROP DATABASE "{name}"')
