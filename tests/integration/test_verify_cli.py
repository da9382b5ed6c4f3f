"""`lifeboat verify` and the dump output checks: what is not complete is not a backup."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import run_cli, shared_backup

REAL_PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"


@pytest.fixture(scope="module")
def shared(pg, tmp_path_factory):
    """One database and one backup of it for the whole module: these tests only read
    the database, and each gets its own copy of the store to damage (good_backup)."""
    return shared_backup(pg, tmp_path_factory.mktemp("shared"))


@pytest.fixture
def app_db(shared):
    return shared[0]


@pytest.fixture
def good_backup(shared, backup_dir, lifeboat_env) -> tuple[Path, dict]:
    db, store = shared
    shutil.copytree(store, backup_dir)
    [dump] = (backup_dir / "daily").glob("*.sql.gz")
    return dump, dict(lifeboat_env, DATABASE_URL=db.url)


def test_good_backup_verifies(good_backup):
    dump, env = good_backup
    proc = run_cli(["verify", str(dump)], env, check=True)
    assert "size and sha256 match the manifest" in proc.stdout
    assert "row counts of 2 tables match the manifest" in proc.stdout


def test_flipped_byte_is_caught(good_backup):
    dump, env = good_backup
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    proc = run_cli(["verify", str(dump)], env)
    assert proc.returncode == 1
    assert "Backup verification failed" in proc.stderr and "take a new backup" in proc.stderr


def test_truncated_file_is_caught_even_without_a_manifest(good_backup):
    dump, env = good_backup
    Path(f"{dump}.manifest.json").unlink()
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    proc = run_cli(["verify", str(dump)], env)
    assert proc.returncode == 1
    assert "corrupt or truncated" in proc.stderr


def test_manifest_that_lies_about_rows_is_caught(good_backup):
    import json

    dump, env = good_backup
    side = Path(f"{dump}.manifest.json")
    manifest = json.loads(side.read_text())
    manifest["tables"]["public.users"] += 1
    side.write_text(json.dumps(manifest))
    proc = run_cli(["verify", str(dump)], env)
    assert proc.returncode == 1 and "row counts" in proc.stderr


def test_stock_sql_gz_without_manifest_verifies(tmp_path, good_backup):
    dump, env = good_backup
    plain = tmp_path / "stock.sql.gz"
    with gzip.open(dump) as src, gzip.open(plain, "wb") as out:
        out.write(src.read())
    proc = run_cli(["verify", str(plain)], env, check=True)
    assert "no manifest" in proc.stdout


def fake_pg_dump(tmp_path: Path, body: str) -> Path:
    """A pg_dump that misbehaves the way real ones do (exit 0 after a bad dump)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "pg_dump"
    script.write_text(
        f'#!/bin/bash\nif [[ $1 == --version ]]; then exec {REAL_PG_DUMP} "$@"; fi\n{body}\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


@pytest.mark.parametrize(
    "body,why",
    [
        (f'{REAL_PG_DUMP} "$@" | head -c 3000; exit 0', "truncated"),
        ("exit 0", "it is empty"),
        ("echo 'hello'; exit 0", "header"),
    ],
)
def test_pg_dump_exiting_zero_with_bad_output_keeps_nothing(
    app_db, backup_dir, lifeboat_env, tmp_path, body, why
):
    env = dict(
        lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_PG_BIN_DIR=str(fake_pg_dump(tmp_path, body))
    )
    proc = run_cli(["backup"], env)
    assert proc.returncode == 1, proc.stdout
    assert why in proc.stdout and "Nothing was kept" in proc.stdout
    assert os.listdir(backup_dir / "daily") == []
