"""`lifeboat restore` end to end against a real server: round trips and faults.

Every fault test checks the same promise: the original database is left
exactly as it was (same rows, same sequences, same settings) and nothing
is left behind that would stop the next restore.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import OWNER, OWNER_PASSWORD, ROOT, fingerprint, make_db, run_cli
from pressure import child_pid

from lifeboat import naming

RICH = r"""
CREATE EXTENSION pgcrypto;
CREATE EXTENSION citext;
CREATE SCHEMA "Sales Ünï";
CREATE SCHEMA audit;
CREATE TYPE audit.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE "Sales Ünï"."Order Items" (
    id serial PRIMARY KEY, "Qty" int, mood audit.mood, email citext, note text,
    blob bytea, doc jsonb, token text DEFAULT encode(gen_random_bytes(4), 'hex'));
INSERT INTO "Sales Ünï"."Order Items" ("Qty", mood, email, note, blob, doc) VALUES
    (1, 'happy', 'A@Example.com', E'tab\there back\\slash', '\x00ff10', '{"a": [1, "x"]}'),
    (NULL, NULL, NULL, NULL, NULL, NULL),
    (3, 'sad', 'ünï@cødé.dk', E'line\nbreak and \\. dot', '', 'null'),
    (4, 'ok', 'b@example.com', '\.', '\x5c2e', '{"ü": "✓"}');
CREATE SEQUENCE audit.ticket_seq START 100;
SELECT nextval('audit.ticket_seq') FROM generate_series(1, 3);
CREATE TABLE audit.log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, what text);
INSERT INTO audit.log (what) SELECT 'event ' || g FROM generate_series(1, 50) g;
CREATE TABLE public."MixedCase" ("Value" numeric, t timestamptz);
INSERT INTO public."MixedCase" VALUES (1.5, '2025-01-15 14:30:00+00');
CREATE TABLE audit.empty (x int);
CREATE FUNCTION audit.double(i int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT i * 2';
CREATE VIEW audit.happy AS SELECT id, email FROM "Sales Ünï"."Order Items" WHERE mood = 'happy';
CREATE MATERIALIZED VIEW audit.totals AS SELECT count(*) AS n, audit.double(count(*)::int) AS d
    FROM audit.log;
"""


def seed_rich(db) -> None:
    db.sql(RICH)
    db.sql(
        f"ALTER DATABASE \"{db.name}\" SET work_mem TO '8MB';"
        f'ALTER DATABASE "{db.name}" SET search_path TO "$user", public, audit'
    )


def state(db) -> dict:
    """Everything a restore must bring back: rows, sequences, views, settings, owner."""
    result = {"tables": fingerprint(db)}
    result["sequences"] = db.sql(
        "SELECT string_agg(format('%I.%I', schemaname, sequencename) || '=' "
        "|| coalesce(last_value::text, 'null'), ',' ORDER BY schemaname, sequencename) "
        "FROM pg_sequences"
    )
    if db.sql("SELECT to_regclass('audit.totals') IS NOT NULL") == "t":
        result["matview"] = db.sql("SELECT n || '/' || d FROM audit.totals")
    if db.sql("SELECT to_regclass('audit.happy') IS NOT NULL") == "t":
        result["view"] = db.sql("SELECT string_agg(email::text, ',' ORDER BY id) FROM audit.happy")
        result["function"] = db.sql("SELECT audit.double(21)")
    result["settings"] = db.sql(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d "
        f"ON d.oid = s.setdatabase WHERE d.datname = '{db.name}' AND s.setrole = 0",
        superuser=True,
    )
    result["owner"] = db.sql(
        f"SELECT pg_get_userbyid(datdba) || encoding || datcollate "
        f"FROM pg_database WHERE datname = '{db.name}'",
        superuser=True,
    )
    return result


def leftovers(pg, name: str) -> list[str]:
    rows = pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{name}\\_\\_lifeboat%'")
    return rows.split()


def backups(backup_dir: Path, type_: str) -> list[Path]:
    folder = backup_dir / type_
    return sorted(p for p in folder.iterdir() if naming.parse(p.name)) if folder.exists() else []


@pytest.fixture
def rich(app_db):
    seed_rich(app_db)
    return app_db


def test_round_trip_rich_dataset(rich, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=rich.url)
    run_cli(["backup"], env, check=True)
    before = state(rich)
    assert before["sequences"] and "audit.ticket_seq=102" in before["sequences"]
    # Damage it: the restore must bring back every row and the sequence values.
    rich.sql(
        'DELETE FROM audit.log; UPDATE "Sales Ünï"."Order Items" SET note = \'x\';'
        "SELECT setval('audit.ticket_seq', 5000); DROP VIEW audit.happy;"
    )
    damaged = state(rich)
    assert damaged != before
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "swap window" in proc.stdout and "replaced" in proc.stdout
    assert state(rich) == before
    assert leftovers(pg, rich.name) == []
    # The safety backup holds the damaged state, under its own type.
    [pre] = backups(backup_dir, "pre-restore")
    assert str(pre) in proc.stdout
    manifest = json.loads(Path(f"{pre}.manifest.json").read_text())
    assert manifest["type"] == "pre-restore" and manifest["tables"]["audit.log"] == 0
    assert OWNER_PASSWORD not in proc.stdout + proc.stderr


def test_restore_without_confirm_changes_nothing(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    app_db.sql("DELETE FROM plots")
    before = fingerprint(app_db)
    proc = run_cli(["restore", "--latest"], env)
    assert proc.returncode == 2  # a usage error, like the others
    assert "--confirm" in proc.stderr and "needs confirmation" in proc.stderr
    assert fingerprint(app_db) == before
    assert not (backup_dir / "pre-restore").exists()


def test_dry_run_prints_the_plan_and_changes_nothing(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    app_db.sql("DELETE FROM plots")
    before = fingerprint(app_db)
    proc = run_cli(["restore", "--latest", "--dry-run"], env, check=True)
    out = proc.stdout
    assert "would restore" in out and "size and sha256 match the manifest" in out
    assert f"would replace: {app_db.name}" in out and "owner app_owner" in out
    assert "pre-restore backup: " + str(backup_dir / "pre-restore") in out
    assert fingerprint(app_db) == before and leftovers(pg, app_db.name) == []
    assert not (backup_dir / "pre-restore").exists()


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_checksum(path: Path) -> None:
    side = Path(f"{path}.manifest.json")
    manifest = json.loads(side.read_text())
    manifest["sha256"] = "0" * 64
    side.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "fault,expected",
    [
        (_corrupt, "corrupt"),
        (_truncate, "truncated"),
        (_wrong_checksum, "sha256 does not match"),
    ],
)
def test_bad_backup_is_refused_before_anything_is_touched(
    fault, expected, app_db, pg, backup_dir, lifeboat_env
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    [dump] = backups(backup_dir, "daily")
    fault(dump)
    app_db.sql("DELETE FROM plots WHERE id > 1000")
    before = fingerprint(app_db)
    proc = run_cli(["restore", "--file", str(dump), "--confirm"], env)
    assert proc.returncode == 1
    assert expected in proc.stdout, proc.stdout
    assert "Do not restore from it" in proc.stdout
    assert fingerprint(app_db) == before and leftovers(pg, app_db.name) == []
    assert backups(backup_dir, "pre-restore") == []


@pytest.mark.parametrize("kind", ["text", "random", "missing", "partial", "dir"])
def test_path_that_is_not_a_backup_is_refused(kind, app_db, pg, tmp_path, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    path = tmp_path / "notes.sql.gz"
    if kind == "text":
        path.write_text("hello, this is not SQL\n")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "partial":
        path = tmp_path / f"{app_db.name}-daily-backup-2025-01-15T14-30-00.sql.gz.partial"
        path.write_bytes(gzip.compress(b"-- PostgreSQL database dump\n"))
    elif kind == "dir":
        path = tmp_path / "somedir"
        path.mkdir()
    before = fingerprint(app_db)
    proc = run_cli(["restore", "--file", str(path), "--confirm"], env)
    assert proc.returncode == 1, proc.stdout
    message = {
        "text": "not a usable PostgreSQL dump",
        "random": "not a usable PostgreSQL dump",
        "missing": "does not exist",
        "partial": "unfinished backup",
        "dir": "not a pg_dump directory archive",
    }[kind]
    assert message in proc.stdout
    assert fingerprint(app_db) == before and leftovers(pg, app_db.name) == []
    assert backups(backup_dir, "pre-restore") == []


def test_stock_dumps_restore_and_are_verified(app_db, pg, tmp_path, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    plain = tmp_path / "stock.sql"
    custom = tmp_path / "stock.dump"
    subprocess.run(["pg_dump", "-d", app_db.url, "-f", str(plain)], check=True)
    subprocess.run(f"pg_dump -d '{app_db.url}' | gzip > {plain}.gz", shell=True, check=True)
    subprocess.run(["pg_dump", "-Fc", "-d", app_db.url, "-f", str(custom)], check=True)
    expected = fingerprint(app_db)
    for path in (plain, Path(f"{plain}.gz"), custom):
        target = f"{app_db.name}_copy"
        proc = run_cli(["restore", "--file", str(path), "--target-db", target, "--confirm"], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "2500 rows verified" in proc.stdout, proc.stdout
        copy = type(app_db)(target, app_db.url_for(target), pg)
        assert fingerprint(copy) == expected
    assert fingerprint(app_db) == expected
    pg.psql(f'DROP DATABASE "{app_db.name}_copy"')


@pytest.mark.parametrize("fmt", ["custom", "directory"])
def test_archive_formats_restore_in_parallel(fmt, rich, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=rich.url, LIFEBOAT_FORMAT=fmt, LIFEBOAT_JOBS="2")
    run_cli(["backup"], env, check=True)
    before = state(rich)
    rich.sql("TRUNCATE audit.log")
    proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert state(rich) == before
    assert backups(backup_dir, "pre-restore") == []


def test_target_db_leaves_the_original_alone(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    expected = fingerprint(app_db)
    app_db.sql("DELETE FROM plots")
    changed = fingerprint(app_db)
    test_db = f"{app_db.name}_test"
    for _ in range(2):  # creates it, then replaces it the same safe way
        proc = run_cli(["restore", "--latest", "--target-db", test_db, "--confirm"], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        copy = type(app_db)(test_db, app_db.url_for(test_db), pg)
        assert fingerprint(copy) == expected
    assert fingerprint(app_db) == changed
    # The second run replaced an existing database: it took a safety copy of it.
    [pre] = backups(backup_dir, "pre-restore")
    assert pre.name.startswith(f"{test_db}-pre-restore-")
    assert (
        pg.psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{test_db}'")
        == OWNER
    )
    pg.psql(f'DROP DATABASE "{test_db}"')


def test_complete_database_loss_recreates_it(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    expected = fingerprint(app_db)
    pg.psql(f'DROP DATABASE "{app_db.name}"')
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "created" in proc.stdout
    assert fingerprint(app_db) == expected


def test_keep_replaced_keeps_the_old_database(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    expected = fingerprint(app_db)
    app_db.sql("DELETE FROM plots")
    damaged = fingerprint(app_db)
    proc = run_cli(["restore", "--latest", "--confirm", "--keep-replaced"], env)
    assert proc.returncode == 0, proc.stdout
    [kept] = leftovers(pg, app_db.name)
    assert "__lifeboat_replaced_" in kept and kept in proc.stdout
    assert fingerprint(app_db) == expected
    assert fingerprint(type(app_db)(kept, app_db.url_for(kept), pg)) == damaged
    pg.psql(f'DROP DATABASE "{kept}"')


def test_open_client_connection_is_ended_and_sees_new_data_after(
    app_db, pg, backup_dir, lifeboat_env
):
    import psycopg

    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    app_db.sql("DELETE FROM plots")
    client = psycopg.connect(app_db.url, autocommit=True)
    client.execute("SELECT count(*) FROM plots")
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with pytest.raises(psycopg.OperationalError):
        client.execute("SELECT 1")
    with psycopg.connect(app_db.url) as again:
        assert again.execute("SELECT count(*) FROM plots").fetchone()[0] == 2000


def test_other_roles_session_needs_pg_signal_backend(app_db, pg, backup_dir, lifeboat_env):
    import psycopg

    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    pg.psql(
        "DO $$ BEGIN CREATE ROLE other_app LOGIN PASSWORD 'other'; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    other_url = app_db.url.replace(app_db.url.split("//")[1].split("@")[0], "other_app:other")
    app_db.sql("DELETE FROM plots WHERE id > 1000")
    before = fingerprint(app_db)
    with psycopg.connect(other_url, autocommit=True) as other:
        proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
        assert proc.returncode == 1
        assert "GRANT pg_signal_backend TO app_owner" in proc.stdout, proc.stdout
        other.execute("SELECT 1")  # still connected: nothing was replaced
    assert fingerprint(app_db) == before and leftovers(pg, app_db.name) == []
    assert pg.psql(f"SELECT datallowconn FROM pg_database WHERE datname = '{app_db.name}'") == "t"


def test_role_without_createdb_is_told_which_privilege(pg, tmp_path, lifeboat_env):
    pg.psql(
        "DO $$ BEGIN CREATE ROLE weak LOGIN PASSWORD 'weak'; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    pg.psql("CREATE DATABASE weakdb OWNER weak")
    pg.psql("CREATE TABLE t AS SELECT 1 AS x", db="weakdb")
    pg.psql("ALTER TABLE t OWNER TO weak", db="weakdb")
    url = pg.url("weak", "weak", "weakdb")
    env = dict(lifeboat_env, DATABASE_URL=url)
    run_cli(["backup"], env, check=True)
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 1
    assert "ALTER ROLE weak CREATEDB" in proc.stdout, proc.stdout
    assert pg.psql("SELECT count(*) FROM t", db="weakdb") == "1"
    assert leftovers(pg, "weakdb") == []
    pg.psql("DROP DATABASE weakdb")


def _big(pg):
    # The kill windows are held open by SIGSTOPping psql as soon as it starts; the
    # rows only need to outlast that (a few ms), not the whole test.
    db = make_db(pg)
    db.sql("CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g")
    return db


def test_sigkill_mid_restore_leaves_original_and_next_restore_works(pg, backup_dir, lifeboat_env):
    db = _big(pg)
    # jobs=1: the psql load, whose psql this test catches
    env = dict(lifeboat_env, DATABASE_URL=db.url, LIFEBOAT_PLAIN_JOBS="1")  # its psql is caught
    run_cli(["backup"], env, check=True)
    expected = fingerprint(db)
    db.sql("DELETE FROM big WHERE g % 2 = 0")
    damaged = fingerprint(db)
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/lifeboat"), "restore", "--latest", "--confirm", "--skip-pre-backup"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    psql = child_pid(proc.pid, "psql", timeout=30)
    os.kill(psql, signal.SIGSTOP)  # freeze it mid-stream, so the kill lands mid-restore
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{psql}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # psql dies with its parent (PR_SET_PDEATHSIG)
    assert not Path(f"/proc/{psql}").exists()
    assert fingerprint(db) == damaged
    proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(db) == expected
    assert leftovers(pg, db.name) == []


def test_server_stopped_mid_restore_leaves_original(pg_tmp, backup_dir, lifeboat_env):
    import pgcluster

    cluster = pgcluster.Cluster(pg_tmp / "stopper", pgcluster.free_port())
    cluster.init()
    cluster.start()
    try:
        secret = OWNER_PASSWORD.replace("'", "''")
        cluster.psql(f"CREATE ROLE {OWNER} LOGIN CREATEDB PASSWORD '{secret}'")
        db = _big(cluster)
        # jobs=1: the psql load, whose psql this test catches
        env = dict(lifeboat_env, DATABASE_URL=db.url, LIFEBOAT_PLAIN_JOBS="1")  # its psql is caught
        run_cli(["backup"], env, check=True)
        expected = fingerprint(db)
        db.sql("DELETE FROM big WHERE g % 3 = 0")
        damaged = fingerprint(db)
        proc = subprocess.Popen(
            [
                str(ROOT / ".venv/bin/lifeboat"),
                "restore",
                "--latest",
                "--confirm",
                "--skip-pre-backup",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        psql = child_pid(proc.pid, "psql", timeout=30)
        os.kill(psql, signal.SIGSTOP)  # hold it mid-stream while the server goes away
        cluster.stop("immediate")
        os.kill(psql, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert "untouched" in out, out + err
        cluster.start()
        assert fingerprint(db) == damaged
        run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env, check=True)
        assert fingerprint(db) == expected
        assert leftovers(cluster, db.name) == []
    finally:
        cluster.stop("immediate")


def test_interrupted_swap_is_repaired_by_the_next_restore(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    expected = fingerprint(app_db)
    # As if killed mid-swap: connections blocked (journal says they were allowed), a
    # stale scratch copy, and the original renamed aside with nothing in its place.
    stale = f"{app_db.name}__lifeboat_restore_20250101000000"
    pg.psql(f'CREATE DATABASE "{stale}" OWNER {OWNER}')
    aside = f"{app_db.name}__lifeboat_replaced_20250101000000"
    pg.psql(f'ALTER DATABASE "{app_db.name}" WITH ALLOW_CONNECTIONS false')
    pg.psql(f'ALTER DATABASE "{app_db.name}" RENAME TO "{aside}"')
    from lifeboat.conninfo import ConnInfo
    from lifeboat.restore.journal import journal_path

    locks = backup_dir / ".locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    # Journals are named after the database's identity (server and name), not its label.
    Path(journal_path(str(locks), ConnInfo.from_url(app_db.url))).write_text(
        json.dumps({"database": app_db.name, "allow_connections": True})
    )
    proc = run_cli(["restore", "--latest", "--confirm", "--dry-run"], env)
    assert "would create" in proc.stdout  # dry run repairs nothing
    proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"renamed {aside} back" in proc.stderr
    assert f"dropped scratch database {stale}" in proc.stderr
    assert fingerprint(app_db) == expected
    assert leftovers(pg, app_db.name) == []


def test_lock_keeps_backup_and_restore_apart(app_db, backup_dir, lifeboat_env):
    from lifeboat import lock

    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    before = fingerprint(app_db)
    from lifeboat.conninfo import ConnInfo

    with lock.hold_database(str(backup_dir / ".locks"), ConnInfo.from_url(app_db.url)):
        proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 1 and "in progress" in proc.stdout
    assert fingerprint(app_db) == before


def test_database_grants_kept_and_superuser_setting_is_a_warning(
    app_db, pg, backup_dir, lifeboat_env
):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    pg.psql(
        "DO $$ BEGIN CREATE ROLE other_app LOGIN PASSWORD 'other'; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    pg.psql(
        f'REVOKE CONNECT, TEMPORARY ON DATABASE "{app_db.name}" FROM PUBLIC;'
        f'GRANT CONNECT ON DATABASE "{app_db.name}" TO other_app;'
        f"ALTER DATABASE \"{app_db.name}\" SET log_statement = 'all';"
        f"COMMENT ON DATABASE \"{app_db.name}\" IS 'the app'"
    )
    query = (
        f"SELECT datacl::text[]::text || shobj_description(oid, 'pg_database') "
        f"FROM pg_database WHERE datname = '{app_db.name}'"
    )
    acl = pg.psql(query)
    run_cli(["backup"], env, check=True)
    proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pg.psql(query) == acl
    assert (
        "setting log_statement" in proc.stderr
        and "have a superuser run: ALTER DATABASE" in proc.stderr
    )


def test_undo_a_restore_with_the_pre_restore_backup(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    app_db.sql("DELETE FROM plots WHERE id > 10")
    work_since_backup = fingerprint(app_db)
    run_cli(["restore", "--latest", "--confirm"], env, check=True)
    assert fingerprint(app_db) != work_since_backup
    proc = run_cli(
        ["restore", "--latest", "--type", "pre-restore", "--confirm", "--skip-pre-backup"], env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == work_since_backup


def test_password_never_in_any_argv_during_restore(app_db, backup_dir, lifeboat_env):
    # jobs=1: the psql load, whose psql this test catches
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_PLAIN_JOBS="1")
    run_cli(["backup"], env, check=True)
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/lifeboat"), "restore", "--latest", "--confirm"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    while proc.poll() is None:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                with contextlib.suppress(OSError):
                    seen.append(Path(f"/proc/{pid}/cmdline").read_bytes())
    out, err = proc.communicate()
    assert proc.returncode == 0, out + err
    assert any(b"psql" in cmd for cmd in seen)  # the scan did see the restore's children
    encoded = app_db.url.split(":")[2].split("@")[0]
    for blob in [out, err, *(c.decode(errors="replace") for c in seen)]:
        assert OWNER_PASSWORD not in blob and encoded not in blob


def test_latest_restores_each_configured_database(app_db, pg, backup_dir, lifeboat_env, tmp_path):
    second = make_db(pg)
    config = tmp_path / "lifeboat.yml"
    config.write_text(json.dumps({"databases": [app_db.url, second.url]}))
    run_cli(["backup", "--config", str(config)], lifeboat_env, check=True)
    expected = [fingerprint(app_db), fingerprint(second)]
    app_db.sql("DELETE FROM plots")
    second.sql("DELETE FROM plots WHERE id < 100")
    proc = run_cli(["restore", "--config", str(config), "--latest", "--confirm"], lifeboat_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [fingerprint(app_db), fingerprint(second)] == expected
    one_file = run_cli(
        ["restore", "--config", str(config), "--file", "x.sql", "--confirm"], lifeboat_env
    )
    assert one_file.returncode == 2 and "--database NAME" in one_file.stderr
