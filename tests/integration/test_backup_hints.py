"""Hints name the real cause: the schema and privilege the server denied."""

from __future__ import annotations

from conftest import run_cli


def test_denied_schema_is_named_in_the_hint(realistic_db, backup_dir, lifeboat_env):
    # app_owner owns the database but not the schema `reporting` (app_reporting does).
    proc = run_cli(["backup"], dict(lifeboat_env, DATABASE_URL=realistic_db.url))
    assert proc.returncode == 1
    assert "permission denied for schema reporting" in proc.stdout
    assert "lacks USAGE on schema reporting" in proc.stdout
    assert "GRANT USAGE ON SCHEMA reporting TO app_owner" in proc.stdout
    assert "IN SCHEMA public" not in proc.stdout and "as the database owner" not in proc.stdout
