"""--target-db never destroys what lifeboat did not create: system databases are
refused, and an existing target is protected like any database being replaced."""

from __future__ import annotations

import pytest
from conftest import OWNER, fingerprint, make_db, run_cli
from realistic_restore import databases, files, manifest_of

from lifeboat import naming


@pytest.mark.parametrize("system", ["postgres", "template0", "template1"])
def test_system_database_is_refused(system, app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    before = databases(pg)
    template1 = pg.psql("SELECT count(*) FROM pg_class", db="template1")
    for extra in ([], ["--dry-run"]):
        proc = run_cli(["restore", "--latest", "--target-db", system, "--confirm", *extra], env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"Failed to restore into {system}: it is a system database" in proc.stderr
    assert databases(pg) == before
    assert pg.psql("SELECT count(*) FROM pg_class", db="template1") == template1
    assert files(backup_dir, "pre-restore") == []


def test_existing_target_is_backed_up_first_and_recoverable(app_db, pg, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    source_rows = fingerprint(app_db)
    # Someone's database that happens to carry the name given to --target-db.
    other = make_db(pg)
    other.sql("DELETE FROM plots WHERE id % 3 = 0; UPDATE users SET name = 'theirs'")
    theirs = fingerprint(other)
    assert theirs != source_rows

    proc = run_cli(["restore", "--latest", "--target-db", other.name, "--confirm"], env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(other) == source_rows
    [pre] = files(backup_dir, "pre-restore")
    assert str(pre) in proc.stdout
    manifest = manifest_of(pre)
    assert manifest["database"] == other.name
    assert naming.parse(pre.name).label == naming.safe_label(other.name)
    # Their data comes back from that safety copy.
    proc = run_cli(
        ["restore", "--file", str(pre), "--target-db", other.name, "--confirm"],
        env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(other) == theirs
    assert fingerprint(app_db) == source_rows  # the configured database was never touched
    owner = pg.psql(
        f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{other.name}'"
    )
    assert owner == OWNER
