"""A lost database comes back whole: owner, locale, limits, grants, comment and
settings recorded at backup time are reapplied when the database is recreated;
what the restoring role may not reapply is a warning with the statement to run.
Drill copies are no more open than the original."""

from __future__ import annotations

import re

import pytest
from conftest import OWNER, REPORTING, fingerprint, run_cli
from realistic_restore import files, manifest_of, restorable_by_owner, superuser_url


@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_dropped_database_is_recreated_with_its_properties(
    fmt, realistic_db, pg, backup_dir, lifeboat_env
):
    with restorable_by_owner(realistic_db) as db:
        env = dict(lifeboat_env, DATABASE_URL=db.url, LIFEBOAT_FORMAT=fmt)
        run_cli(["backup"], dict(env, DATABASE_URL=superuser_url(db)), check=True)
        [dump] = files(backup_dir, "daily")
        props = manifest_of(dump)["database_properties"]
        assert props["owner"] == OWNER and props["icu_locale"] == "de-DE"
        assert props["connlimit"] == 40 and props["acl"] and props["settings"]
        before = fingerprint(db, superuser=True)
        pg.psql(f'DROP DATABASE "{db.name}"')

        proc = run_cli(["restore", "--latest", "--confirm"], env)

        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "created" in proc.stdout
        # app_owner may not set another role's defaults: said, with the exact statement.
        found = re.search(
            r"setting work_mem for role app_reporting of database \S+ not reapplied "
            r"\((.+?)\); have a superuser run: (ALTER ROLE .+?;)$",
            proc.stderr,
            re.M,
        )
        assert found, proc.stderr
        assert "permission denied" in found.group(1)
        after = fingerprint(db, superuser=True)
        assert after != before  # only the per-role setting is missing ...
        assert {k for k in before if before[k] != after[k]} == {"database"}
        pg.psql(found.group(2))  # ... and the statement given puts it back
        assert fingerprint(db, superuser=True) == before
        assert files(backup_dir, "pre-restore") == []  # nothing existed to protect


def test_ungrantable_grant_is_a_warning_with_the_statement(
    realistic_db, pg, backup_dir, lifeboat_env
):
    """A grant to a role that does not exist where the database is recreated cannot be
    reapplied; the restore succeeds, says so with the statement, and the rest comes back."""
    with restorable_by_owner(realistic_db) as db:
        pg.psql(
            "DO $$ BEGIN CREATE ROLE lost_grantee NOLOGIN; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        pg.psql(f'GRANT TEMPORARY ON DATABASE "{db.name}" TO lost_grantee')
        env = dict(lifeboat_env, DATABASE_URL=db.url)
        run_cli(["backup"], dict(env, DATABASE_URL=superuser_url(db)), check=True)
        pg.psql(f'DROP DATABASE "{db.name}"')
        pg.psql("DROP ROLE lost_grantee")  # gone on the server restored to

        proc = run_cli(["restore", "--latest", "--confirm"], env)

        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert re.search(
            r"grant of TEMPORARY to lost_grantee of database \S+ not reapplied \(role "
            r'"lost_grantee" does not exist\); have a superuser run: GRANT TEMPORARY ON '
            rf'DATABASE "{db.name}" TO "lost_grantee";',
            proc.stderr,
        ), proc.stderr
        acl = pg.psql(f"SELECT datacl FROM pg_database WHERE datname = '{db.name}'")
        assert acl == f"{{{OWNER}=CTc/{OWNER},{REPORTING}=c/{OWNER}}}"


def test_drill_copy_is_no_more_open_than_the_original(realistic_db, pg, backup_dir, lifeboat_env):
    with restorable_by_owner(realistic_db) as db:
        run_cli(["backup"], dict(lifeboat_env, DATABASE_URL=superuser_url(db)), check=True)
        # Checked inside the drill's own scratch database while it exists.
        closed = (
            "SELECT current_database() LIKE '%\\_\\_lifeboat\\_drill\\_%'"
            " AND NOT has_database_privilege('public', current_database(), 'CONNECT')"
            f" AND NOT has_database_privilege('{REPORTING}', current_database(), 'CONNECT')"
            " AND NOT has_database_privilege('public', current_database(), 'TEMPORARY')"
        )
        # The check can fail: the original itself lets app_reporting connect.
        assert (
            pg.psql(f"SELECT has_database_privilege('{REPORTING}', '{db.name}', 'CONNECT')") == "t"
        )
        env = dict(lifeboat_env, DATABASE_URL=db.url, LIFEBOAT_VERIFY_QUERIES=closed)
        proc = run_cli(["verify", "--latest", "--deep"], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 user check(s) passed" in proc.stdout
