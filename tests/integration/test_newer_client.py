"""Dumps from a newer pg_dump / pg_restore load into an older server.

pg_dump and pg_restore 17 (Debian 13's client) write `SET transaction_timeout
= 0;` whatever the server's version, and PostgreSQL 15 rejects it: a host
with Debian 13's client tools could back up a PostgreSQL 15 server but not
restore or drill it. Debian 12 has PostgreSQL 15 only, so the newer tool is
the real one with what 17 writes added: the dump's line itself, and a
pg_restore wrapper that reports 17.12.
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest
from conftest import fingerprint, run_cli

BIN = Path("/usr/lib/postgresql/15/bin")
NEWER = "SET transaction_timeout = 0;"
NEWER_LINE = NEWER.encode() + b"\n"


def pg17_style_dump(db, path: Path) -> None:
    """A stock plain dump with the line pg_dump 17 writes after lock_timeout."""
    sql = subprocess.run(
        [str(BIN / "pg_dump"), "--dbname", db.url], capture_output=True, check=True
    ).stdout
    anchor = b"SET lock_timeout = 0;\n"
    assert anchor in sql
    path.write_bytes(gzip.compress(sql.replace(anchor, anchor + NEWER_LINE, 1)))


@pytest.mark.parametrize("plain_jobs", ["1", "3"])
def test_plain_dump_of_a_newer_pg_dump_restores(app_db, tmp_path, lifeboat_env, plain_jobs):
    before = fingerprint(app_db)
    dump = tmp_path / "from-pg17.sql.gz"
    pg17_style_dump(app_db, dump)
    # The line really is refused by this server: what the fix is for.
    refused = subprocess.run(
        [str(BIN / "psql"), "-X", "-d", app_db.url, "-c", NEWER_LINE.decode()],
        capture_output=True,
        text=True,
    )
    assert 'unrecognized configuration parameter "transaction_timeout"' in refused.stderr
    app_db.sql("DELETE FROM plots WHERE id % 3 = 0")
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_PLAIN_JOBS=plain_jobs)
    proc = run_cli(["restore", "--file", str(dump), "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == before


def test_archive_of_a_newer_pg_restore_loads_through_its_script(app_db, tmp_path, lifeboat_env):
    before = fingerprint(app_db)
    calls = tmp_path / "pg_restore.calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # pg_restore "17": reports 17.12, and its script carries the line 17 writes.
    (bin_dir / "pg_restore").write_text(
        "#!/bin/sh\n"
        '[ "$1" = --version ] && { echo "pg_restore (PostgreSQL) 17.12"; exit 0; }\n'
        f'echo "$@" >> {calls}\n'
        'case "$1" in --file=-) '
        f"{BIN}/pg_restore \"$@\" | sed 's/^SET lock_timeout = 0;$/&\\n{NEWER}/'"
        "; exit $? ;; esac\n"
        f'exec {BIN}/pg_restore "$@"\n'
    )
    (bin_dir / "pg_restore").chmod(0o755)
    for tool in ("psql", "pg_dump", "pg_dumpall"):
        (bin_dir / tool).symlink_to(BIN / tool)
    env = dict(
        lifeboat_env,
        DATABASE_URL=app_db.url,
        LIFEBOAT_FORMAT="custom",
        LIFEBOAT_PG_BIN_DIR=str(bin_dir),
    )
    run_cli(["backup"], env, check=True)
    app_db.sql("DELETE FROM plots WHERE id % 3 = 0")
    proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == before
    # It went through the script (guard and all), never pg_restore --dbname.
    lines = calls.read_text().splitlines()
    assert any(line.startswith("--file=-") for line in lines), lines
    assert not any("--dbname" in line for line in lines), lines
