"""Verification agrees with reality: exact row counts in every format, partitioned
tables included, and archives read whole before anything is touched."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import run_cli
from realistic_restore import databases, files, manifest_of, restorable_by_owner, superuser_url


def test_every_format_of_a_partitioned_database_verifies_with_equal_counts(
    realistic_db, backup_dir, lifeboat_env
):
    counted = {}
    with restorable_by_owner(realistic_db) as db:
        for fmt in ("plain", "custom", "directory"):
            env = dict(lifeboat_env, DATABASE_URL=superuser_url(db), LIFEBOAT_FORMAT=fmt)
            run_cli(["backup"], env, check=True)
            dump = files(backup_dir, "daily")[-1]
            manifest = manifest_of(dump)
            assert manifest["format"] == fmt and manifest["rows_exact"], manifest
            counted[fmt] = (manifest["table_count"], manifest["tables"])
            # Cheap: the file alone; deep: a drill, as the owner.
            owner_env = dict(env, DATABASE_URL=db.url)
            proc = run_cli(["verify", str(dump)], owner_env)
            assert proc.returncode == 0, f"{fmt} cheap: {proc.stdout}{proc.stderr}"
            assert "row counts of 10 tables match the manifest" in proc.stdout
            proc = run_cli(["verify", str(dump), "--deep"], owner_env)
            assert proc.returncode == 0, f"{fmt} deep: {proc.stdout}{proc.stderr}"
            assert "table count 10 matches the manifest" in proc.stdout
            assert "exact row counts of 10 tables match the manifest" in proc.stdout
    # Leaf partitions hold the rows; partitioned parents hold none and are not counted.
    assert counted["plain"] == counted["custom"] == counted["directory"]
    count, tables = counted["plain"]
    assert count == len(tables) == 10
    assert "sales.payment" not in tables and tables["sales.payment_2025"] == 8760
    assert all(n >= 0 for n in tables.values())


def _flip_in_data(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * 0.75)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_stock_custom_dump_with_a_flipped_data_byte_is_refused_before_anything(
    app_db, pg, tmp_path, backup_dir, lifeboat_env
):
    dump = tmp_path / "stock.dump"
    subprocess.run(["pg_dump", "-Fc", "-d", app_db.url, "-f", str(dump)], check=True)
    _flip_in_data(dump)
    # The table of contents is intact (listing it finds nothing); the data is not.
    assert subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True).returncode == 0
    assert (
        subprocess.run(["pg_restore", "-f", "/dev/null", str(dump)], capture_output=True).returncode
        != 0
    )
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)

    proc = run_cli(["verify", str(dump)], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pg_restore cannot read the whole archive" in proc.stdout + proc.stderr
    assert "could not uncompress data" in proc.stdout + proc.stderr

    before = databases(pg)
    proc = run_cli(["restore", "--file", str(dump), "--confirm"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not a usable PostgreSQL dump" in proc.stdout
    assert databases(pg) == before  # no scratch database was ever created
    assert files(backup_dir, "pre-restore") == [] and not (backup_dir / "pre-restore").exists()
