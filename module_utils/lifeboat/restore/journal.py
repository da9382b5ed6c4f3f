"""Crash recovery: the swap journal, and undoing what a killed restore left behind."""

from __future__ import annotations

import contextlib
import json
import logging
import os

from .database import databases, db_info, drop, ident, sql_lib
from .names import REPLACED_TAG, SCRATCH_TAG, leftover

log = logging.getLogger("lifeboat")


def journal_path(store, label: str) -> str:
    return os.path.join(store.lock_dir(), f"{label}.restore.json")


def write_journal(path: str, data: dict) -> None:
    tmp = path + ".partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def recover(db, dbname: str, journal: str, work_dir: str) -> list[str]:
    """Undo what a crashed restore of `dbname` left behind; returns what was done."""
    done = []
    names = databases(db)
    state = {}
    if os.path.exists(journal):
        with contextlib.suppress(OSError, ValueError), open(journal) as fh:
            state = json.load(fh)
    replaced = sorted(n for n in names if leftover(dbname, REPLACED_TAG).match(n))
    if dbname not in names and replaced:
        # Cannot happen with the one-transaction swap, but a database must
        # never be left without its name: put the newest replaced one back.
        back = replaced.pop()
        db.execute(
            sql_lib().SQL("ALTER DATABASE {} RENAME TO {}").format(ident(back), ident(dbname))
        )
        done.append(f"renamed {back} back to {dbname} (a swap was interrupted)")
    if state.get("database") == dbname and state.get("allow_connections"):
        info = db_info(db, dbname)
        if info and not info.allowconn:
            db.execute(
                sql_lib().SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(dbname))
            )
            done.append(f"re-allowed connections to {dbname} (a swap was interrupted)")
    for name in names:
        if leftover(dbname, SCRATCH_TAG).match(name):
            drop(db, name)
            done.append(f"dropped scratch database {name} of an interrupted restore")
    for name in replaced:
        log.warning(
            "database %s is left from an earlier restore of %s; drop it "
            "(DROP DATABASE) when it is no longer needed",
            name,
            dbname,
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    if os.path.isdir(work_dir):
        for name in os.listdir(work_dir):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(work_dir, name))
                done.append(f"removed temporary file {name}")
    return done
