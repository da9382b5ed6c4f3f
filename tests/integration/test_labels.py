"""One database, one label: look-alike names never share backups or generated databases.

Databases whose names reduce to the same ASCII (`my-db` / `my_db`, two
all-Cyrillic names) are backed up into one store; each `restore --latest`
must bring back its own data. Two 63-byte names with a common 50-byte
prefix restored at the same second must not touch each other's databases.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from conftest import fingerprint, make_db, run_cli

from lifeboat import backup, naming, restore, settings


def env_for(lifeboat_env: dict, db) -> dict:
    return dict(lifeboat_env, DATABASE_URL=db.url)


def mark(db, text: str) -> None:
    """Make the database's data its own: a row no other database has."""
    db.sql(f"CREATE TABLE IF NOT EXISTS marker (what text); INSERT INTO marker VALUES ('{text}')")


def backups_of(backup_dir: Path, label: str) -> list[Path]:
    return sorted(
        p
        for p in (backup_dir / "daily").iterdir()
        if (parsed := naming.parse(p.name)) and parsed.label == label
    )


def test_look_alike_names_each_restore_their_own_backup(pg, backup_dir, lifeboat_env):
    names = ["my-db", "my_db", "база", "данные"]
    dbs = [make_db(pg, name) for name in names]
    labels = {naming.safe_label(name) for name in names}
    assert len(labels) == 4, labels
    assert naming.safe_label("my_db") == "my_db"  # safe names keep their label
    expected = {}
    for db in dbs:
        mark(db, f"data of {db.name}")
        run_cli(["backup"], env_for(lifeboat_env, db), check=True)
        expected[db.name] = fingerprint(db)
    for db in dbs:  # each database changes after its backup
        db.sql("DELETE FROM marker; INSERT INTO marker VALUES ('changed')")
    # Restore in reverse order: the last backup written must not win for the others.
    for db in reversed(dbs):
        proc = run_cli(["restore", "--latest", "--confirm"], env_for(lifeboat_env, db))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert fingerprint(db) == expected[db.name], db.name
        assert db.sql("SELECT what FROM marker") == f"data of {db.name}"
    for db in dbs:  # every backup file and manifest names its own database
        for path in backups_of(backup_dir, naming.safe_label(db.name)):
            if path.name.endswith(naming.MANIFEST_SUFFIX):
                assert json.loads(path.read_text())["database"] == db.name


def test_latest_passes_over_another_databases_backup_under_its_label(pg, backup_dir, lifeboat_env):
    """A file of `other` placed under `mine`'s label (a lossy label of an earlier
    version, a copied file) is never restored by --latest; --file still can."""
    mine, other = make_db(pg, "lbl-mine"), make_db(pg, "lbl_other")
    mark(mine, "mine")
    mark(other, "other")
    run_cli(["backup"], env_for(lifeboat_env, mine), check=True)
    run_cli(["backup"], env_for(lifeboat_env, other), check=True)
    expected = fingerprint(mine)
    [theirs] = [p for p in backups_of(backup_dir, "lbl_other") if p.suffix == ".gz"]
    label = naming.safe_label(mine.name)
    later = naming.BackupName(
        datetime.now(timezone.utc).replace(microsecond=0), 7, label, "daily", ".sql.gz"
    )
    planted = backup_dir / later.path
    shutil.copy(theirs, planted)
    shutil.copy(str(theirs) + naming.MANIFEST_SUFFIX, str(planted) + naming.MANIFEST_SUFFIX)

    mine.sql("DELETE FROM marker")
    proc = run_cli(["restore", "--latest", "--confirm"], env_for(lifeboat_env, mine))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(mine) == expected
    assert "is a backup of database 'lbl_other', not 'lbl-mine'" in proc.stdout
    assert planted.name in proc.stdout

    # Named explicitly, it is restored (copying data between databases), and said.
    proc = run_cli(["restore", "--file", str(planted), "--confirm"], env_for(lifeboat_env, mine))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert mine.sql("SELECT what FROM marker") == "other"
    assert "restoring it because it was named explicitly" in proc.stdout


def test_long_names_with_a_common_prefix_keep_their_own_copies(pg, backup_dir):
    prefix = "p" * 50
    first, second = (make_db(pg, prefix + tail * 13) for tail in "ab")
    assert len(first.name.encode()) == len(second.name.encode()) == 63
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    kept = []
    for db in (first, second):
        mark(db, f"before {db.name[-1]}")
        config = settings.resolve({"database_url": db.url, "backup_dir": str(backup_dir)})
        [made] = backup.run(config, now=now)
        assert made.ok, made.error
        mark(db, f"after {db.name[-1]}")
        [result] = restore.run(
            config, restore.Request(latest=True, confirm=True, keep_replaced=True), now=now
        )
        assert result.ok, f"{result.error} {result.hint}"
        assert result.replaced
        kept.append(result.replaced)
    # Same second, same prefix: still two different generated names, both still there.
    assert kept[0] != kept[1]
    assert all(len(name.encode()) <= 63 for name in kept)
    present = pg.psql("SELECT string_agg(datname, ',') FROM pg_database").split(",")
    assert set(kept) <= set(present), (kept, present)
    for db, name in zip((first, second), kept):
        tail = db.name[-1]
        assert db.sql("SELECT string_agg(what, ',' ORDER BY what) FROM marker") == (
            f"before {tail}"
        )
        copy = type(db)(name, db.url_for(name), db.cluster)
        # The kept copy is this database's own pre-restore state, not the other's.
        assert copy.sql("SELECT string_agg(what, ',' ORDER BY what) FROM marker") == (
            f"after {tail},before {tail}"
        )
    for name in kept:
        pg.psql(f'DROP DATABASE "{name}"')
