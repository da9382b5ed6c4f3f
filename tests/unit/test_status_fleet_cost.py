"""Fleet status cost: a host's status run reads its store without importing psycopg
or the restore package (0.1 s each, paid by every host; bench/bench_status.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from lifeboat import ansible_args, lock

URL = "postgresql://app:s3cret@db.example:5433/app"

# A fresh interpreter: what a status module run on a host imports. Its own user
# directory for locks and journals: other tests' restores may leave journals in the real one.
PROBE = """
import json, sys
from lifeboat import lock, status
lock.user_dir = lambda: sys.argv[3]
settings, labels = status.load({"database_url": sys.argv[1], "backup_dir": sys.argv[2]})
result = status.report(settings, labels=labels)
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m.split(".")[0] == "psycopg"
                      or m.startswith("lifeboat.restore")),
    "states": sorted({row["state"] for row in result["rows"]}),
    "errors": result["errors"],
}))
"""


def probe(backup_dir) -> dict:
    user_dir = backup_dir.parent / "user-state"
    user_dir.mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, URL, str(backup_dir), str(user_dir)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout)


def test_status_of_a_host_imports_neither_psycopg_nor_restore(tmp_path):
    found = probe(tmp_path / "store")
    assert found["modules"] == []
    assert found["states"] == ["MISSING"] and found["errors"] == []


def test_a_restore_journal_still_brings_the_restore_check(tmp_path):
    store = tmp_path / "store"
    (store / ".locks").mkdir(parents=True)
    (store / ".locks" / f"other.0123456789ab{lock.JOURNAL_SUFFIX}").write_text("{}")
    # Another database's journal: looked at per database, which loads the restore package.
    found = probe(store)
    assert "lifeboat.restore.journal" in found["modules"]
    assert found["states"] == ["MISSING"] and found["errors"] == []  # not this database's


def test_any_journal_looks_in_the_store_and_the_user_directory(tmp_path, monkeypatch):
    store_locks, user = tmp_path / "store" / ".locks", tmp_path / "user"
    store_locks.mkdir(parents=True)
    user.mkdir()
    monkeypatch.setattr(lock, "user_dir", lambda: str(user))
    (store_locks / "app.0123456789ab.lock").write_text("")  # a lock is not a journal
    assert not lock.any_journal(str(store_locks))
    assert not lock.any_journal(str(tmp_path / "no-store-yet" / ".locks"))
    (user / f"app.0123456789ab{lock.JOURNAL_SUFFIX}").write_text("{}")
    assert lock.any_journal(str(store_locks))


def test_password_masked_without_psycopg():
    assert ansible_args._password("postgresql://u:p%40ss@h/db") == "p@ss"
    assert ansible_args._password("host=h password='a b' dbname=d") == "a b"
    assert ansible_args._password("dbname=d") is None
    assert ansible_args._password("not a = valid 'string") is None
