"""Symlinks in the store never redirect a write, a truncate or a chmod.

The store belongs to the backup user; root runs lifeboat in it (become,
`sudo lifeboat restore`). The backup user plants links to files and
folders only root may change; every run must refuse, say what to remove,
and leave the victim exactly as it was (content and mode).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from pathlib import Path

import pytest
from conftest import fingerprint, run_cli

from lifeboat import naming

BACKUP_USER = "postgres"  # any user but root owns the store


def chown_tree(root: Path, user: str) -> None:
    ids = pwd.getpwnam(user)
    for folder, dirs, files in os.walk(root):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.lchown(name, ids.pw_uid, ids.pw_gid)


def snapshot(path: Path) -> tuple:
    """What must not change: mode, owner and content (of every file, for a folder)."""
    info = path.lstat()
    if path.is_dir():
        inside = sorted((p.name, p.read_bytes(), p.stat().st_mode) for p in path.iterdir())
        return stat.S_IMODE(info.st_mode), info.st_uid, inside
    return stat.S_IMODE(info.st_mode), info.st_uid, path.read_bytes()


@pytest.fixture
def victims(tmp_path):
    """A root-owned file and folder the backup user must not be able to reach through lifeboat."""
    victim = tmp_path / "victim" / "precious.conf"
    victim.parent.mkdir()
    victim.parent.chmod(0o755)
    victim.write_text("root's precious content\n")
    victim.chmod(0o644)
    folder = tmp_path / "victim-dir"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "keep.txt").write_text("keep me\n")
    (folder / "keep.txt").chmod(0o644)
    return victim, folder


@pytest.fixture
def used_store(app_db, backup_dir, lifeboat_env):
    """A store after a backup and a restore (every lock name exists), owned by the backup user."""
    assert os.geteuid() == 0, "these tests play root working in another user's store"
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    run_cli(["restore", "--latest", "--confirm"], env, check=True)
    chown_tree(backup_dir, BACKUP_USER)
    return env


def lock_names(backup_dir: Path) -> list[str]:
    names = [p.name[: -len(".lock")] for p in (backup_dir / ".locks").glob("*.lock")]
    assert names, "a backup and a restore leave their lock files"
    return names


def replace_with_link(path: Path, target: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.move(str(path), str(path) + ".moved-aside")
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)
    os.lchown(path, pwd.getpwnam(BACKUP_USER).pw_uid, -1)


def plant(case: str, backup_dir: Path, victim: Path, folder: Path, app_db) -> list[Path]:
    """Plant the links of one case; returns them."""
    locks = backup_dir / ".locks"
    if case == "lock file":
        links = [locks / f"{name}.lock" for name in lock_names(backup_dir)]
        targets = [victim] * len(links)
    elif case == "journal":
        links = [locks / f"{name}.restore.json" for name in lock_names(backup_dir)]
        targets = [victim] * len(links)
    elif case == "type directory":
        links, targets = [backup_dir / "pre-restore"], [folder]
    elif case == ".state":
        links, targets = [backup_dir / ".state"], [folder]
    elif case == ".locks":
        links, targets = [locks], [folder]
    elif case == "restore work directory":
        work = backup_dir / ".restore" / naming.safe_label(app_db.name)
        work.parent.mkdir(exist_ok=True)
        links, targets = [work], [folder]
    for link, target in zip(links, targets):
        replace_with_link(link, target)
    return links


# Which command meets the link first: a restore for the journal and its work folder.
CASES = {
    "lock file": ["backup"],
    "journal": ["restore", "--latest", "--confirm"],
    "type directory": ["restore", "--latest", "--confirm"],
    ".state": ["backup"],
    ".locks": ["backup"],
    "restore work directory": ["restore", "--latest", "--confirm"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_planted_link_is_refused_and_the_victim_untouched(
    case, used_store, app_db, backup_dir, victims
):
    victim, folder = victims
    before = snapshot(victim), snapshot(folder)
    data = fingerprint(app_db)
    links = plant(case, backup_dir, victim, folder, app_db)

    proc = run_cli(CASES[case], used_store)
    output = proc.stdout + proc.stderr
    assert (snapshot(victim), snapshot(folder)) == before, output
    assert proc.returncode != 0, output
    assert "is a symbolic link" in output, output
    assert any(f"rm {link}" in output for link in links), output
    assert "Traceback" not in output
    assert fingerprint(app_db) == data  # a refused restore replaced nothing
    for link in links:  # lifeboat refused; it did not "fix" the link either
        assert link.is_symlink()


def test_backup_through_root_into_a_clean_store_still_works(used_store, backup_dir, app_db):
    """The checks refuse links only: a normal store owned by another user still works."""
    proc = run_cli(["backup"], used_store)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert stat.S_IMODE((backup_dir / "daily").stat().st_mode) == 0o700


def test_planted_temporary_journal_is_replaced_not_written_through(
    used_store, app_db, backup_dir, victims
):
    """The swap writes its journal to `<journal>.partial` first: a link planted
    there is removed and a new file created exclusively; the victim keeps its
    content and the restore goes on."""
    victim, _ = victims
    before = snapshot(victim)
    links = [
        backup_dir / ".locks" / f"{name}.restore.json.partial" for name in lock_names(backup_dir)
    ]
    for link in links:
        replace_with_link(link, victim)
    app_db.sql("CREATE TABLE after_backup (x int)")  # the restore must really swap

    proc = run_cli(["restore", "--latest", "--confirm"], used_store)
    assert snapshot(victim) == before, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert app_db.sql("SELECT to_regclass('after_backup') IS NULL") == "t"  # swapped
    assert not any(link.is_symlink() for link in links)
